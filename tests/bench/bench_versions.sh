#!/bin/sh
# bench_versions.sh: an old tuna against the new one, paired, on generation and training.
#   sh tests/bench/bench_versions.sh            (from the repo root; ./tuna or build/tuna built)
# OLD (a git revision; default d6528ad, the last commit before the engine reshape) is built from
# `git archive` into build/bench/old-REV. Each round runs both binaries on each case, the order
# alternating between rounds, so that a change of machine load hits both; the ratio new/old of
# each round is printed, then their mean. Cases, on MODEL (SmolLM2 when scripts/get_smollm2.sh
# finds it, else stories260K), THREADS threads (1):
#   generate  greedy decoding of GEN_TOKENS (64) tokens: tokens/s as `tuna generate --json` says
#   train     LoRA on identity, TRAIN_STEPS (4) steps of batch 4, the same batches in both: the
#             wall time of steps 2.. (metrics.jsonl's elapsed; step 1 warms up), and the CPU
#             seconds (user) of the whole run, which machine load changes less than wall time.
#             Ratios are speed-ups: old time / new time (above 1: the new one is faster)
# The new binary trains with NEW_TRAIN_ARGS (default --pad-to max: the fixed rows an old binary
# without per-batch padding uses), so that both do the same work and the ratio is the engine's.
# Variables: OLD, NEW_TRAIN_ARGS, MODEL, TEMPLATE (auto for SmolLM2, vanilla otherwise), ROUNDS (3), THREADS,
# GEN_TOKENS, TRAIN_STEPS, NEW (the new binary: build/tuna).
set -u
cd "$(dirname "$0")/../.." || exit 1
OLD=${OLD:-d6528ad}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
GEN_TOKENS=${GEN_TOKENS:-64}
TRAIN_STEPS=${TRAIN_STEPS:-4}
NEW=${NEW:-build/tuna}
NEW_TRAIN_ARGS=${NEW_TRAIN_ARGS---pad-to max}
if [ -z "${MODEL:-}" ]; then
	if MODEL=$(sh scripts/get_smollm2.sh 2>/dev/null); then TEMPLATE=${TEMPLATE:-auto}; else MODEL=models/stories260K; fi
fi
TEMPLATE=${TEMPLATE:-vanilla}
DATASET_DIR=../shared/datasets
[ -f "$DATASET_DIR/dataset_info.json" ] || DATASET_DIR=datasets
out=build/bench/versions
src=build/bench/old-$OLD
mkdir -p "$out"
[ -x "$NEW" ] || { echo "bench_versions: $NEW is not built"; exit 1; }
if [ ! -x "$src/build/tuna" ]; then
	rm -rf "$src" && mkdir -p "$src" &&
		git archive "$OLD" | tar -x -C "$src" &&
		(cd "$src" && make build/tuna) >"$src.log" 2>&1 ||
		{ echo "bench_versions: cannot build $OLD (see $src.log)"; exit 1; }
fi
OLDBIN=$src/build/tuna

gen_tps() { # binary -> tokens/s
	"$1" generate "$MODEL" --prompt "Once upon a time" --max-new-tokens "$GEN_TOKENS" \
		--temperature 0 --ignore-eos --threads "$THREADS" --json 2>/dev/null |
		tr ',' '\n' | sed -n 's/.*"tokens_per_s": *\([0-9.eE+-]*\).*/\1/p' | head -1
}

train_run() { # binary dir [extra args] -> "seconds_of_steps_2.. cpu_user_s"
	/usr/bin/time -f "%U" -o "$2.time" "$1" train --model "$MODEL" --template "$TEMPLATE" \
		--dataset identity --dataset-dir "$DATASET_DIR" --vars name=Tuna,author=Ann \
		--method lora --max-steps "$TRAIN_STEPS" --batch-size 4 --val-size 0 --save-steps 0 \
		--sample-prompts '' --threads "$THREADS" --quiet --output "$2" --overwrite ${3:-} \
		>/dev/null 2>"$2.err" || { echo "nan nan"; return; }
	tps=$(awk '/"type": *"step"/ {
		el = $0; sub(/.*"elapsed": */, "", el); sub(/[,}].*/, "", el)
		if (++n == 1) t0 = el + 0; else t1 = el + 0 }
		END { if (t1 > t0) printf "%.2f", t1 - t0; else printf "nan" }' "$2/metrics.jsonl")
	echo "$tps $(tail -1 "$2.time")"
}

echo "old $OLD ($OLDBIN) vs new ($NEW): $MODEL, $THREADS thread(s), $ROUNDS rounds"
: >"$out/ratios"
r=1
while [ "$r" -le "$ROUNDS" ]; do
	if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
	for who in $order; do
		[ "$who" = old ] && bin=$OLDBIN || bin=$NEW
		g=$(gen_tps "$bin")
		extra=
		[ "$who" = new ] && extra=$NEW_TRAIN_ARGS
		t=$(train_run "$bin" "$out/train-$who" "$extra")
		eval "g_$who=\${g:-nan}; t_$who=\"\$t\""
	done
	set -- $t_old
	to=$1 co=$2
	set -- $t_new
	tn=$1 cn=$2
	awk -v r="$r" -v go="$g_old" -v gn="$g_new" -v to="$to" -v tn="$tn" -v co="$co" -v cn="$cn" 'BEGIN {
		printf "round %d  generate %8.1f -> %8.1f tok/s (%.3fx)   train steps 2..: %7.2f -> %7.2f s (%.3fx), cpu %6.1f -> %6.1f s (%.3fx)\n",
			r, go, gn, gn / go, to, tn, to / tn, co, cn, co / cn
		printf "%f %f %f\n", gn / go, to / tn, co / cn >> "'"$out/ratios"'" }'
	r=$((r + 1))
done
awk '{ g += $1; t += $2; c += $3; n++ }
	END { if (n) printf "mean of %d rounds, speed-up of new over old: generate %.3fx, train %.3fx (wall), %.3fx (cpu)\n", n, g / n, t / n, c / n }' "$out/ratios"
