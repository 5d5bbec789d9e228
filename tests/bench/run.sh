#!/bin/sh
# make bench: side-by-side benchmarks, tuna vs the PyTorch reference.
#   sh tests/bench/run.sh [VENV]        (VENV defaults to /opt/tuna-venv)
# Runs from the repo root. The Makefile builds ./tuna before calling this.
set -u
cd "$(dirname "$0")/../.." || exit 1
VENV=${1:-/opt/tuna-venv}
PY="$VENV/bin/python"
mkdir -p build/bench

[ -x ./tuna ] || make tuna || echo "run.sh: ./tuna could not be built; benchmarking the PyTorch side only"

TORCH_FLAG=
if ! "$PY" -c 'import torch, transformers' >/dev/null 2>&1; then
	echo "run.sh: no torch/transformers in $VENV ($PY); skipping the PyTorch side"
	echo "        (create it, or pass another venv: make bench VENV=/path/to/venv)"
	TORCH_FLAG=--no-torch
	[ -x "$PY" ] || PY=python3
fi

status=0
echo "=== this machine: the CPU, its features and the kernels tuna picks on it ==="
./tuna info || echo "run.sh: ./tuna info failed"

# LLAMA2C (a llama2.c checkout, from the environment or `make bench LLAMA2C=...`) adds its
# run.c to the generation benchmark, side by side; otherwise its fixed figures are shown.
echo "=== generation speed: tuna vs PyTorch${LLAMA2C:+ and llama2.c run.c} ==="
"$PY" tests/bench/bench_generate.py $TORCH_FLAG || status=1

echo "=== training throughput: tuna vs PyTorch, llm.c, llama.cpp ==="
"$PY" tests/bench/bench_train.py $TORCH_FLAG || status=1

# on the real chat model where it can be had (scripts/get_smollm2.sh), else stories260K
echo "=== real tokens/s of LoRA: fixed rows (max) vs per-batch padding, length grouping, neat packing ==="
if smol=$(sh scripts/get_smollm2.sh 2>/dev/null); then
	MODEL=$smol TEMPLATE=auto STEPS=${PAD_STEPS:-8} ROUNDS=${PAD_ROUNDS:-2} \
		sh tests/bench/bench_padding.sh || status=1
else
	sh tests/bench/bench_padding.sh || status=1
fi

# the real SmolLM2 Q4_1 GGUF decoded by tuna (weights kept as stored) and by llama.cpp
echo "=== SmolLM2 Q4_1 GGUF: tuna generate vs llama.cpp (llama-cpp-python), paired rounds ==="
"$PY" tests/bench/bench_gguf_llamacpp.py || status=1
echo "=== the same after a 1521-token prompt (the KV cache's reads weigh as much as the weights) ==="
"$PY" tests/bench/bench_gguf_llamacpp.py --long --rounds 3 || status=1

# low-precision training (issue 13): the CPU's features, then SmolLM2 LoRA fp32 / bf16 / 4-bit
# against torch+peft fp32 and bf16 autocast, and GPT-2 full --bf16 against fp32, alternated
echo "=== low-precision training speed: tuna fp32/bf16/4-bit vs torch+peft fp32/autocast ==="
# torch's bf16 autocast without bf16 arithmetic (no AVX512-BF16: an AMD Zen 3) runs a few tok/s,
# 12 minutes a round: skipped there
AUTOCAST_FLAG=
grep -qw avx512_bf16 /proc/cpuinfo 2>/dev/null || AUTOCAST_FLAG=--no-autocast
"$PY" tests/bench/bench_precision.py $TORCH_FLAG $AUTOCAST_FLAG || status=1

# peak memory of LoRA over a bf16 / 8-bit / 4-bit base on real shapes (BENCH_8B=0 skips the
# Llama-3-8B-shaped run, several minutes)
echo "=== peak memory: Qwen2.5-1.5B-shaped and Llama-3-8B-shaped LoRA over low-precision bases ==="
sh tests/bench/bench_memory.sh "$VENV" || status=1

# the engine reshape must not cost speed: the binary before it against this one, paired
echo "=== old vs new tuna (OLD=${OLD:-d6528ad}): generation and LoRA training ==="
sh tests/bench/bench_versions.sh || status=1

# data parallel (issue 17): 1 process x 2 threads vs 2 processes x 1 thread (skips without MPI)
echo "=== data-parallel scaling: 1 x 2 threads vs 2 MPI processes x 1 thread (SmolLM2 LoRA, GPT-2 full) ===" && sh tests/bench/bench_mpi.sh "$VENV" || status=1

# --- C micro-benchmarks (build/bench/bench_*, built by `make bench`) -------------------------
for b in build/bench/bench_*; do
	[ -f "$b" ] && [ -x "$b" ] || continue
	echo "=== $b ==="
	"$b" || status=1
done

exit $status
