#!/bin/sh
# test_mpi_pref.sh: the preference stages over MPI give one process's curve. On
# models/stories260K, LoRA, 20 steps, fp32, --threads 1: dpo (with an eval every 10 steps), dpo
# with --zero 1, rm (datasets/dpo_en_demo.json) and kto (../shared/datasets/kto_en_demo.json,
# skipped without it): `--nproc 2` with B pairs (kto: examples) per rank against one process
# with 2B, every step's loss within 1e-5 relative (the worst printed); each rank takes its share
# of the global batch's pairs and the loss is normalised by the global batch's pairs, as in one
# process (kto: its KL estimate is the global micro-batch's). dpo 2 x B also against one process
# of B with --grad-accum 2, the same sums in the same order but for the ranks' addition: within
# 1e-12. Skips, with a message, when ./tuna (or $TUNA_BIN) is built without MPI (make MPI=1) or
# mpirun is missing. Run from the repo root.
# Prints "test_mpi_pref: N passed, N failed, N skipped"; exits non-zero on any failure.
set -u
NAME=test_mpi_pref
. tests/mpi_lib.sh
mpi_required
W=$(mktemp -d /tmp/tuna_mpi_pref.XXXXXX)
trap 'rm -rf "$W"' EXIT
COMMON="--model models/stories260K --template vanilla --method lora --cutoff-len 64
        --max-samples 40 --max-steps 20 --logging-steps 1 --save-steps 0 --lr 1e-3 --threads 1
        --quiet"
for c in dpo dpo-zero rm kto; do
    stage=${c%-zero}; extra="--dataset dpo_en_demo --val-size 0"
    [ "$c" = dpo ] && extra="--dataset dpo_en_demo --val-size 4 --eval-steps 10"
    [ "$c" = dpo-zero ] && extra="$extra --zero 1"
    # the value head's dropout masks are each rank's (as LoRA dropout's): off for the comparison
    [ "$c" = rm ] && extra="$extra --summary-dropout-prob 0"
    if [ "$c" = kto ]; then
        if [ ! -f ../shared/datasets/kto_en_demo.json ]; then
            echo "SKIP test_mpi_pref: kto: ../shared/datasets/kto_en_demo.json is not here"
            skip=$((skip + 1)); continue
        fi
        extra="--dataset kto_en_demo --dataset-dir ../shared/datasets --val-size 0"
    fi
    # shellcheck disable=SC2086
    timeout 300 "$BIN" train $COMMON $extra --stage $stage --batch-size 4 --output "$W/$c-1" \
        >"$W/$c-1.log" 2>&1 || { bad "$c: one process failed: $(tail -3 "$W/$c-1.log")"; continue; }
    # shellcheck disable=SC2086
    timeout -k 10 300 "$BIN" train --nproc 2 $COMMON $extra --stage $stage --batch-size 2 \
        --output "$W/$c-2" >"$W/$c-2.log" 2>&1 \
        || { bad "$c: --nproc 2 failed: $(tail -5 "$W/$c-2.log")"; continue; }
    losses "$W/$c-1/metrics.jsonl" >"$W/a"
    losses "$W/$c-2/metrics.jsonl" >"$W/b"
    n=$(wc -l <"$W/a")
    [ "$n" -eq 20 ] && [ "$(wc -l <"$W/b")" -eq 20 ] && ok || bad "$c: $n and $(wc -l <"$W/b") step events, not 20"
    w=$(worst "$W/a" "$W/b")
    echo "test_mpi_pref: $c: worst relative loss difference over 20 steps $w (2 ranks x 2 vs 1 x 4)"
    within "$w" 1e-5 && ok || bad "$c: worst relative difference $w > 1e-5"
    [ "$(grep -c '^{"type":"start"' "$W/$c-2/metrics.jsonl")" -eq 1 ] && ok \
        || bad "$c: not exactly one start event (ranks other than 0 wrote?)"
    if [ "$c" = dpo ]; then
        losses "$W/$c-1/metrics.jsonl" eval eval_loss >"$W/a"
        losses "$W/$c-2/metrics.jsonl" eval eval_loss >"$W/b"
        w=$(worst "$W/a" "$W/b")
        echo "test_mpi_pref: dpo: eval losses ($(wc -l <"$W/b") evals) worst relative difference $w"
        [ "$(wc -l <"$W/b")" -ge 3 ] && within "$w" 1e-5 && ok || bad "dpo: evals differ: $w"
        # shellcheck disable=SC2086
        timeout 300 "$BIN" train $COMMON $extra --stage dpo --batch-size 2 --grad-accum 2 \
            --output "$W/dpo-ga" >"$W/dpo-ga.log" 2>&1 || { bad "dpo: --grad-accum 2 failed"; continue; }
        losses "$W/dpo-ga/metrics.jsonl" >"$W/a"
        losses "$W/$c-2/metrics.jsonl" >"$W/b"
        w=$(worst "$W/a" "$W/b")
        echo "test_mpi_pref: dpo: 2 ranks x 2 vs 1 x 2 with --grad-accum 2: worst relative difference $w"
        within "$w" 1e-12 && ok || bad "dpo: 2 x 2 against 1 x 2 x grad-accum 2: $w > 1e-12"
    fi
done
done_
