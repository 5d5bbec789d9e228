#!/bin/sh
# bench_mpi.sh: data-parallel scaling on this machine (issue 17). Tokens/s of one process with
# 2 threads against 2 processes (mpirun, `tuna train --nproc 2`) with 1 thread each, at the same
# global batch, for
#   (1) LoRA r8 on the real SmolLM2-135M-Instruct (scripts/get_smollm2.sh; fp32), packed
#       alpaca_en_demo rows of 512 tokens, global batch 2 (1 x 2 rows, or 2 ranks x 1 row);
#   (2) full fine-tuning of a random GPT-2 124M (bench_train.py's model, made once with torch
#       in $TUNA_BENCH_MODELS), tinystories rows of 64 tokens, global batch 4.
# The 2-process layout runs twice: with gradient buckets overlapped with the backward (the
# default, TUNA_BUCKET_MB=25) and with TUNA_BUCKET_MB=0 (one allreduce per tensor after the
# backward), and each prints its communication time per step not hidden by compute (rank 0's
# log line). The layouts alternate within a round, over ROUNDS rounds (default 2); each round
# prints the ratio 2x1 / 1x2. tokens/s are those of steps 3..STEPS (2 warm-up steps).
# Skips, with a message, when ./tuna is built without MPI or mpirun is missing.
#   sh tests/bench/bench_mpi.sh [VENV]          (STEPS=6 ROUNDS=2 ONLY="lora gpt2")
set -u
cd "$(dirname "$0")/../.." || exit 1
VENV=${1:-/opt/tuna-venv}
BIN=${TUNA_BIN:-./tuna}
STEPS=${STEPS:-6}
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-lora gpt2}
CACHE=${TUNA_BENCH_MODELS:-/tmp/tuna-bench-models}
if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$BIN" 2>/dev/null | grep -q libmpi; then
    echo "SKIP bench_mpi: $BIN is built without MPI or mpirun is missing (make MPI=1; libopenmpi-dev openmpi-bin)"
    exit 0
fi
W=$(mktemp -d /tmp/tuna_bench_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT

# tokens/s of steps 3.. of a metrics.jsonl (each step's tokens = its tokens_per_s x its duration)
tok_s() {
    grep '^{"type":"step"' "$1" | sed -E 's/.*"tokens_per_s":([^,}]*).*"elapsed":([^,}]*).*/\1 \2/' |
        awk '{dt = $2 - prev; prev = $2; if (NR > 2) {tok += $1 * dt; sec += dt}}
             END {if (sec > 0) printf "%.1f", tok / sec; else printf "0"}'
}
# rank 0's "not hidden by compute" figure (ms per step) and the step time
exposed() {
    sed -nE 's/.*gradient sums [^:]*: ([0-9.]+) ms per step not hidden by compute, of ([0-9.]+) ms.*/\1 \2/p' "$1" | head -1
}

CASES=""
for c in $ONLY; do
    case $c in
    lora)
        if smol=$(sh scripts/get_smollm2.sh 2>/dev/null); then
            gg=$(ls "$smol"/*.gguf | head -1)
            echo "$gg" >"$W/lora.model"
            CASES="$CASES lora"
        else
            echo "bench_mpi: SmolLM2-135M not found (scripts/get_smollm2.sh); skipping LoRA"
        fi ;;
    gpt2)
        if g2=$("$VENV/bin/python" -c "import sys; sys.path.insert(0, 'tests/bench')
import bench_train as bt; print(bt.make_model('$CACHE', bt.CASES['b']))" 2>"$W/gpt2.err"); then
            echo "$g2" | tail -n 1 >"$W/gpt2.model" # make_model says "creating ..." first
            CASES="$CASES gpt2"
        else
            echo "bench_mpi: no random GPT-2 124M in $CACHE and none could be made with $VENV ($(tail -1 "$W/gpt2.err")); skipping GPT-2"
        fi ;;
    esac
done

# run CASE LAYOUT OUT: one training run; LAYOUT 1x2 | 2x1 | 2x1-flat
run() {
    model=$(cat "$W/$1.model")
    if [ "$1" = lora ]; then
        G=2
        set -- "$@" --model "$model" --dtype fp32 --dataset alpaca_en_demo --cutoff-len 512 \
            --method lora --lora-rank 8 --lora-alpha 16 --lora-dropout 0 \
            --lora-target q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
    else
        G=4
        set -- "$@" --model "$model" --stage pt --dataset tinystories_valid_slice --cutoff-len 64 \
            --method full
    fi
    lay=$2 out=$3
    shift 3
    set -- "$@" --packing true --grad-accum 1 --max-steps "$STEPS" --eval-steps 0 --save-steps 0 \
        --val-size 0 --sample-prompts "" --lr 1e-4 --quiet --output "$out"
    case $lay in
    1x2) timeout 1200 "$BIN" train "$@" --threads 2 --batch-size $G ;;
    2x1) TUNA_BUCKET_MB=25 timeout 1200 "$BIN" train --nproc 2 "$@" --threads 1 --batch-size $((G / 2)) ;;
    2x1-flat) TUNA_BUCKET_MB=0 timeout 1200 "$BIN" train --nproc 2 "$@" --threads 1 --batch-size $((G / 2)) ;;
    esac >"$out.log" 2>&1
}

status=0
for c in $CASES; do
    [ $c = lora ] && echo "--- SmolLM2-135M LoRA r8 fp32, 512-token rows, global batch 2, $STEPS steps (2 warm-up)"
    [ $c = gpt2 ] && echo "--- GPT-2 124M full fine-tuning fp32, 64-token rows, global batch 4, $STEPS steps (2 warm-up)"
    r=1
    while [ $r -le "$ROUNDS" ]; do
        line="round $r:"
        for lay in 1x2 2x1 2x1-flat; do
            out="$W/$c-$lay-$r"
            if ! run $c $lay "$out" || [ ! -f "$out/metrics.jsonl" ]; then
                echo "bench_mpi: $c $lay failed: $(tail -3 "$out.log")"
                status=1
                eval "t_$(echo $lay | tr - _)=0"
                continue
            fi
            t=$(tok_s "$out/metrics.jsonl")
            eval "t_$(echo $lay | tr - _)=$t"
            line="$line  $lay $t tok/s"
            e=$(exposed "$out/metrics.jsonl")
            [ -n "$e" ] && line="$line (comm not hidden $(echo "$e" | awk '{printf "%.0f of %.0f ms/step", $1, $2}'))"
        done
        echo "$line"
        echo "round $r: 2 processes x 1 thread / 1 process x 2 threads: $(awk -v a="$t_2x1" -v b="$t_1x2" 'BEGIN {printf (b > 0 ? "%.2fx" : "-"), a / b}') with buckets, $(awk -v a="$t_2x1_flat" -v b="$t_1x2" 'BEGIN {printf (b > 0 ? "%.2fx" : "-"), a / b}') without"
        r=$((r + 1))
    done
done
exit $status
