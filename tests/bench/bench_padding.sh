#!/bin/sh
# bench_padding.sh: real tokens/s (tokens with a target) of LoRA training with every batch
# padded to the longest example of the data (--pad-to max, the fixed rows of before) against
# each batch padded to its own longest example (--pad-to batch), side by side in one run:
# ROUNDS rounds of (max, batch) alternated, so that a change in machine load hits both.
#   sh tests/bench/bench_padding.sh                      (from the repo root; ./tuna built)
#   MODEL=../shared/models/smollm2-135m-instruct TEMPLATE=auto sh tests/bench/bench_padding.sh
# Variables: MODEL (models/stories260K), TEMPLATE (vanilla), DATASET_DIR (../shared/datasets,
# else datasets), DATASETS ("identity alpaca_en_demo"), STEPS (20), BATCH (8), THREADS (1),
# ROUNDS (3), TUNA (./tuna). Real tokens/s of a run: the real_tokens of its steps after the
# first (warm-up) over the time they took (metrics.jsonl's elapsed).
set -u
cd "$(dirname "$0")/../.." || exit 1
MODEL=${MODEL:-models/stories260K}
TEMPLATE=${TEMPLATE:-vanilla}
DATASET_DIR=${DATASET_DIR:-../shared/datasets}
[ -f "$DATASET_DIR/dataset_info.json" ] || DATASET_DIR=datasets
DATASETS=${DATASETS:-identity alpaca_en_demo}
STEPS=${STEPS:-20}
BATCH=${BATCH:-8}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
TUNA=${TUNA:-./tuna}
OUT=build/bench/padding
mkdir -p "$OUT"

# real tokens/s of the run in $1 (steps 2..last)
real_tps() {
	awk '/"type": *"step"/ {
		rt = $0; sub(/.*"real_tokens": */, "", rt); sub(/[,}].*/, "", rt)
		el = $0; sub(/.*"elapsed": */, "", el); sub(/[,}].*/, "", el)
		n++
		if (n == 1) { t0 = el; next }
		sum += rt; t1 = el
	}
	END { if (t1 > t0) printf "%.1f", sum / (t1 - t0); else printf "nan" }' "$1/metrics.jsonl"
}

# the "rows of ..." line of the run's log
rows_of() {
	grep -o 'rows of [^,]*' "$1/metrics.jsonl" | head -1 | sed 's/ (each batch.*//'
}

echo "model $MODEL, template $TEMPLATE, data $DATASET_DIR, LoRA, $STEPS steps of batch $BATCH, $THREADS thread(s), $ROUNDS rounds"
status=0
for ds in $DATASETS; do
	tm=0
	tb=0
	for r in $(seq 1 "$ROUNDS"); do
		for mode in max batch; do
			dir="$OUT/$ds-$mode"
			if ! nice -n 15 "$TUNA" train --model "$MODEL" --template "$TEMPLATE" --dataset "$ds" \
				--dataset-dir "$DATASET_DIR" --vars name=Tuna,author=Ann --method lora \
				--batch-size "$BATCH" --max-steps "$STEPS" --val-size 0 --save-steps 0 \
				--sample-prompts '' --threads "$THREADS" --pad-to "$mode" --quiet \
				--output "$dir" --overwrite 2>"$dir.err"; then
				echo "bench_padding: $ds --pad-to $mode failed: $(tail -1 "$dir.err")"
				status=1
				continue
			fi
			tps=$(real_tps "$dir")
			printf '  %-16s round %d  --pad-to %-5s  %10s real tok/s  (%s)\n' "$ds" "$r" "$mode" \
				"$tps" "$(rows_of "$dir")"
			if [ "$mode" = max ]; then tm="$tm $tps"; else tb="$tb $tps"; fi
		done
	done
	echo "$tm|$tb" | awk -F'|' -v ds="$ds" '{
		nm = split($1, a, " "); nb = split($2, b, " "); sm = 0; sb = 0
		for (i = 2; i <= nm; i++) sm += a[i]
		for (i = 2; i <= nb; i++) sb += b[i]
		if (nm > 1 && nb > 1 && sm > 0)
			printf "%s: --pad-to batch %.1f vs max %.1f real tok/s (mean of %d rounds): %.2fx\n",
				ds, sb / (nb - 1), sm / (nm - 1), nm - 1, (sb / (nb - 1)) / (sm / (nm - 1))
	}'
done
exit $status
