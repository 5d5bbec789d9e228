#!/bin/sh
# shellcheck disable=SC2086 # CPUS, ARGS, FLAGS and the env words are split on purpose
# ab_pair.sh: two tuna builds, A and B, on one training case, run at the same time: one thread
# each, each pinned to a CPU of its own, the CPUs swapped every round.
#   sh tests/bench/ab_pair.sh A_BINARY B_BINARY [lora|gpt2]      (from anywhere)
# Why: on the shared 2-vCPU machines each vCPU runs at full or about half speed for stretches of
# seconds, on its own; a build's two-thread runs alternated with another's moved 10-15% from run
# to run, so a 2% change took many rounds to see. Run at once, A and B meet the same stretches
# (swapping the CPUs evens out the two vCPUs), and B/A held within about 1% from round to round.
# This compares builds (or flags) of the same work; it is not a figure for make bench's ratios
# between different work (bf16 against fp32 share the memory bus unequally).
# Cases, as tests/bench/bench_precision.py runs them:
#   lora  LoRA r8 on the real SmolLM2-135M (scripts/get_smollm2.sh), packed alpaca_en_demo rows
#         of 512 tokens, batch 1
#   gpt2  full fine-tuning of GPT-2 124M, batch 4 x 64 (the random model bench_precision writes
#         to $TUNA_BENCH_MODELS, default /tmp/tuna-bench-models: run it once first)
# Variables: ROUNDS (4), STEPS (10; tokens/s over steps 3..), FLAGS (more `tuna train` flags for
# both, e.g. "--dtype bf16 --bf16"), A_ENV and B_ENV (VAR=value words for each side), CPUS ("0 1").
# Prints each run's tok/s (all its steps from the third, and the faster half of them), the
# losses of its first 3 steps (equal for builds meant to change no bit), then the means and B/A.
set -u
[ $# -ge 2 ] || { sed -n '3,5p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2") CASE=${3:-lora}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
ROUNDS=${ROUNDS:-4} STEPS=${STEPS:-10} FLAGS=${FLAGS:-} CPUS=${CPUS:-0 1}
A_ENV=${A_ENV:-} B_ENV=${B_ENV:-}
set -- $CPUS
C0=$1 C1=$2
case $CASE in
lora)
	MODEL=$(sh scripts/get_smollm2.sh) || { echo "ab_pair: SmolLM2 not found"; exit 1; }
	ARGS="--dataset alpaca_en_demo --packing true --cutoff-len 512 --batch-size 1 --method lora
	      --lora-rank 8 --lora-alpha 16
	      --lora-target q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" ;;
gpt2)
	MODEL=${TUNA_BENCH_MODELS:-/tmp/tuna-bench-models}/train-gpt2-124M
	[ -d "$MODEL" ] || { echo "ab_pair: $MODEL missing (run bench_precision.py --only gpt2)"; exit 1; }
	ARGS="--stage pt --dataset tinystories_valid_slice --packing --cutoff-len 64 --batch-size 4
	      --method full" ;;
*) echo "ab_pair: case $CASE: lora or gpt2"; exit 2 ;;
esac
OUT=$(mktemp -d /tmp/tuna-ab-pair.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

run() { # side binary cpu env -> "tok/s fast-half-tok/s loss1 loss2 loss3" (or "failed: why")
	d=$OUT/$1
	rm -rf "$d"
	env $4 taskset -c "$3" "$2" train --model "$MODEL" $ARGS --dataset-dir "$ROOT/datasets" \
		--templates-dir "$ROOT/templates" --grad-accum 1 --max-steps "$STEPS" --eval-steps 0 \
		--save-steps 0 --val-size 0 --sample-prompts "" --threads 1 --lr 1e-4 --output "$d" \
		--quiet $FLAGS >/dev/null 2>"$d.err" || { echo "failed: $(tail -1 "$d.err")"; return; }
	awk -F'[,:}]' '/"type":"step"/ {
		for (i = 1; i < NF; i++) {
			if ($i == "\"loss\"") loss = $(i + 1)
			if ($i == "\"tokens\"") tok = $(i + 1)
			if ($i == "\"elapsed\"") el = $(i + 1)
		}
		n++
		if (n <= 3) losses = losses " " loss
		if (n >= 3) { r[n] = tok / (el - prev); T += tok; S += el - prev }
		prev = el
	}
	END {
		if (n < 4) { print "failed"; exit }
		m = 0
		for (i = 3; i <= n; i++) v[++m] = r[i]
		for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j] < v[j - 1]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
		h = 0; k = 0
		for (i = int(m / 2) + 1; i <= m; i++) { h += v[i]; k++ }
		printf "%.1f %.1f%s\n", T / S, h / k, losses
	}' "$d/metrics.jsonl"
}

for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then ca=$C0 cb=$C1; else ca=$C1 cb=$C0; fi
	run a "$A" "$ca" "$A_ENV" >"$OUT/a.res" &
	run b "$B" "$cb" "$B_ENV" >"$OUT/b.res" &
	wait
	echo "A cpu$ca $(cat "$OUT/a.res")"
	echo "B cpu$cb $(cat "$OUT/b.res")"
done | tee "$OUT/all"
awk '$3 ~ /^failed/ { bad = 1 }
	$1 == "A" { a += $3; a2 += $4; n++ } $1 == "B" { b += $3; b2 += $4 }
	END {
		if (bad || !n || !a) { print "ab_pair: a run failed"; exit 1 }
		printf "A %.1f tok/s (faster half %.1f), B %.1f (%.1f): B/A %.4f (%.4f), %d rounds\n",
			a / n, a2 / n, b / n, b2 / n, b / a, b2 / a2, n
	}' "$OUT/all"
