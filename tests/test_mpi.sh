#!/bin/sh
# test_mpi.sh: data-parallel training over MPI gives one process's curve. For full, LoRA and
# P-tuning on models/stories260K: `tuna train --nproc 2` (mpirun -np 2) with batch B per rank
# against one process with batch 2B (and 3 ranks on packed rows), 20 steps, fp32: every step's
# loss within 1e-5 relative (the worst printed); rank 0 alone writes the run (one metrics.jsonl,
# world_size N in its start event). Skips, with a message, when ./tuna (or $TUNA_BIN) is built
# without MPI (make MPI=1) or mpirun is missing. Run from the repo root.
# Prints "test_mpi: N passed, N failed, N skipped"; exits non-zero on any failure.
set -u
NAME=test_mpi
. tests/mpi_lib.sh
if ! ldd "$BIN" 2>/dev/null | grep -q libmpi; then # a plain build says so for --nproc 2
    out=$("$BIN" train --nproc 2 --model models/stories260K --dataset identity 2>&1)
    [ $? -eq 2 ] && echo "$out" | grep -q "built without MPI" && ok || bad "--nproc 2 without MPI: $out"
fi
mpi_required
W=$(mktemp -d /tmp/tuna_mpi.XXXXXX)
trap 'rm -rf "$W"' EXIT
COMMON="--model models/stories260K --dataset identity --vars name=Tuna,author=Tuna-devs
        --template vanilla --max-steps 20 --val-size 0 --logging-steps 1 --save-steps 0
        --lr 1e-3 --threads 1 --quiet"
# full, LoRA (over 2 accumulated micro-batches), P-tuning: 2 ranks x 2 rows against 1 x 4; and
# LoRA on packed rows with 3 ranks x 1 row against 1 x 3 (an odd world, more ranks than cores)
for m in full lora ptuning packed prompt ptuning-v1 dora; do
    extra=""; np=2; b=2; method=$m
    [ "$m" = lora ] && extra="--grad-accum 2"
    [ "$m" = packed ] && { extra="--packing true"; np=3; b=1; method=lora; }
    [ "$m" = dora ] && { extra="--use-dora"; method=lora; }
    # shellcheck disable=SC2086
    timeout 300 "$BIN" train $COMMON $extra --method $method --batch-size $((np * b)) --output "$W/$m-1" \
        >"$W/$m-1.log" 2>&1 || { bad "$m: one process failed: $(tail -3 "$W/$m-1.log")"; continue; }
    # shellcheck disable=SC2086
    timeout -k 10 300 "$BIN" train --nproc $np $COMMON $extra --method $method --batch-size $b --output "$W/$m-2" \
        >"$W/$m-2.log" 2>&1 || { bad "$m: --nproc $np failed: $(tail -5 "$W/$m-2.log")"; continue; }
    losses "$W/$m-1/metrics.jsonl" >"$W/a"
    losses "$W/$m-2/metrics.jsonl" >"$W/b"
    n=$(wc -l <"$W/a")
    [ "$n" -eq 20 ] && [ "$(wc -l <"$W/b")" -eq 20 ] && ok || bad "$m: $n and $(wc -l <"$W/b") step events, not 20"
    worst=$(paste "$W/a" "$W/b" | awk '{d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1;
        r = a > 0 ? d / a : d; if (r > w) w = r} END {printf "%.3g", w + 0}')
    echo "test_mpi: $m: worst relative loss difference over 20 steps $worst ($np ranks x $b vs 1 x $((np * b)))"
    awk -v w="$worst" 'BEGIN {exit !(w <= 1e-5)}' && ok || bad "$m: worst relative difference $worst > 1e-5"
    grep -q "\"world_size\":$np" "$W/$m-2/metrics.jsonl" && ok || bad "$m: no world_size $np in the start event"
    [ "$(grep -c '^{"type":"start"' "$W/$m-2/metrics.jsonl")" -eq 1 ] && ok \
        || bad "$m: not exactly one start event (ranks other than 0 wrote?)"
    [ "$(grep -c '^{"type":"done"' "$W/$m-2/metrics.jsonl")" -eq 1 ] && ok || bad "$m: not one done event"
done
# what rank 0 alone decides (its evals) is refused over several ranks, in one line
for f in "--save-strategy best" "--early-stopping-steps 2 --load-best-model-at-end"; do
    # shellcheck disable=SC2086
    out=$(timeout 120 "$BIN" train --nproc 2 $COMMON --val-size 0.1 --eval-steps 5 --save-steps 5 \
        $f --method lora --batch-size 2 --output "$W/refused" 2>&1)
    rc=$?
    [ $rc -ne 0 ] && echo "$out" | grep -q "not implemented over several processes" && ok \
        || bad "$f over 2 ranks: exit $rc: $out"
done
done_
