#!/bin/sh
# bench_padding.sh: real tokens/s (tokens with a target) of LoRA training, side by side in one
# run, for the ways tuna can lay examples out in a batch:
#   max    every batch padded to the longest example of the data (the fixed rows of before)
#   batch  each batch padded to its own longest example, rounded up to 8 (the default)
#   group  batch, with --group-by-length (rows of similar length together)
#   neat   --packing neat: examples packed into rows of NEAT_LEN tokens, each kept to itself
#          (NEAT_BATCH rows a step, so that a step holds about as many tokens as the others)
# ROUNDS rounds, the modes alternated within each, so that a change in machine load hits all.
#   sh tests/bench/bench_padding.sh                      (from the repo root; ./tuna built)
#   MODEL=../shared/models/smollm2-135m-instruct TEMPLATE=auto sh tests/bench/bench_padding.sh
# Variables: MODEL (models/stories260K), TEMPLATE (vanilla), DATASET_DIR (../shared/datasets,
# else datasets), DATASETS ("identity alpaca_en_demo"), MODES ("max batch group neat"),
# STEPS (20), BATCH (8), NEAT_LEN (512), NEAT_BATCH (2), THREADS (1), ROUNDS (3), TUNA (./tuna),
# NICE (15: the runs yield to other work).
# Real tokens/s of a run: the real_tokens of its steps after the first (warm-up) over the time
# they took (metrics.jsonl's elapsed). Each mode's ratio is to max's, mean over the rounds.
set -u
cd "$(dirname "$0")/../.." || exit 1
MODEL=${MODEL:-models/stories260K}
TEMPLATE=${TEMPLATE:-vanilla}
DATASET_DIR=${DATASET_DIR:-../shared/datasets}
[ -f "$DATASET_DIR/dataset_info.json" ] || DATASET_DIR=datasets
DATASETS=${DATASETS:-identity alpaca_en_demo}
MODES=${MODES:-max batch group neat}
STEPS=${STEPS:-20}
BATCH=${BATCH:-8}
NEAT_LEN=${NEAT_LEN:-512}
NEAT_BATCH=${NEAT_BATCH:-2}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
TUNA=${TUNA:-./tuna}
NICE=${NICE:-15}
OUT=build/bench/padding
mkdir -p "$OUT"

# real tokens/s of the run in $1 (steps 2..last)
real_tps() {
	awk '/"type": *"step"/ {
		rt = $0; sub(/.*"real_tokens": */, "", rt); sub(/[,}].*/, "", rt)
		el = $0; sub(/.*"elapsed": */, "", el); sub(/[,}].*/, "", el)
		n++
		if (n == 1) { t0 = el + 0; next }
		sum += rt + 0; t1 = el + 0
	}
	END { if (t1 > t0) printf "%.1f", sum / (t1 - t0); else printf "nan" }' "$1/metrics.jsonl"
}

# the "rows of ..." line of the run's log
rows_of() {
	grep -o 'rows of [^,]*' "$1/metrics.jsonl" | head -1 | sed 's/ (each batch.*//'
}

mode_args() {
	case $1 in
	max) echo "--pad-to max --batch-size $BATCH" ;;
	batch) echo "--pad-to batch --batch-size $BATCH" ;;
	group) echo "--pad-to batch --group-by-length --batch-size $BATCH" ;;
	neat) echo "--packing neat --cutoff-len $NEAT_LEN --batch-size $NEAT_BATCH" ;;
	*) echo "bench_padding: unknown mode $1" >&2; return 1 ;;
	esac
}

echo "model $MODEL, template $TEMPLATE, data $DATASET_DIR, LoRA, $STEPS steps, batch $BATCH (neat: $NEAT_BATCH rows of $NEAT_LEN), $THREADS thread(s), $ROUNDS rounds"
status=0
for ds in $DATASETS; do
	res=$OUT/$ds.results
	: >"$res"
	for r in $(seq 1 "$ROUNDS"); do
		for mode in $MODES; do
			dir="$OUT/$ds-$mode"
			args=$(mode_args "$mode") || { status=1; continue; }
			# shellcheck disable=SC2086
			if ! nice -n "$NICE" "$TUNA" train --model "$MODEL" --template "$TEMPLATE" --dataset "$ds" \
				--dataset-dir "$DATASET_DIR" --vars name=Tuna,author=Ann --method lora \
				--max-steps "$STEPS" --val-size 0 --save-steps 0 --sample-prompts '' \
				--threads "$THREADS" $args --quiet --output "$dir" --overwrite 2>"$dir.err"; then
				echo "bench_padding: $ds $mode failed: $(tail -1 "$dir.err")"
				status=1
				continue
			fi
			tps=$(real_tps "$dir")
			printf '  %-16s round %d  %-6s %10s real tok/s  (%s)\n' "$ds" "$r" "$mode" "$tps" \
				"$(rows_of "$dir")"
			echo "$mode $tps" >>"$res"
		done
	done
	awk -v ds="$ds" '{ s[$1] += $2; n[$1]++; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
	END {
		if (!n["max"] || s["max"] <= 0) exit
		base = s["max"] / n["max"]
		for (i = 1; i <= k; i++) {
			m = order[i]
			printf "%s: %-6s %8.1f real tok/s (mean of %d rounds): %.2fx max\n", ds, m, s[m] / n[m], n[m], (s[m] / n[m]) / base
		}
	}' "$res"
done
exit $status
