#!/bin/sh
# test_mpi_faults.sh: a data-parallel job whose rank dies or hangs ends, says so in one line, and
# resumes. On models/stories260K with `tuna train --nproc 2`, batch 2 per rank, a checkpoint
# every 5 steps:
#  - SIGKILL of rank 1 after a checkpoint: the job ends within 30 s, non-zero, with exactly one
#    line on stderr naming rank 1, and a done event with status "error" in metrics.jsonl;
#  - an interrupted checkpoint write (a checkpoint-N.tmp-PID of a dead process, as a kill during
#    the write leaves it) does not hide the last good checkpoint;
#  - --resume with 2 ranks, and with 1 process at batch 4, gives the uninterrupted run's losses
#    for every step (within 1e-5 relative);
#  - SIGSTOP of rank 1 (a hang): rank 0's watchdog ends the job after --dist-timeout 4 s, with
#    one line naming rank 0, the collective and the step.
# Skips, with a message, when ./tuna (or $TUNA_BIN) is built without MPI or mpirun is missing.
# Run from the repo root. Prints "test_mpi_faults: N passed, N failed, N skipped"; exits
# non-zero on any failure.
set -u
NAME=test_mpi_faults
. tests/mpi_lib.sh
mpi_required
W=$(mktemp -d /tmp/tuna_mpi_faults.XXXXXX)
STOPPED=""
# a rank left stopped by a failed check is woken and ended (by its pid, nothing broader)
trap '[ -n "$STOPPED" ] && kill -CONT $STOPPED 2>/dev/null && kill -KILL $STOPPED 2>/dev/null; rm -rf "$W"' EXIT
# the pid of rank R of the job whose argv holds $2 (its environment says its rank)
rank_pid() {
    for p in $(pgrep -f -- "$2"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && echo "$p"
    done | head -1
}
now() { date +%s.%N; }
# wait_for FILE PATTERN: up to 60 s, until FILE holds a line matching PATTERN
wait_for() {
    i=0
    while [ $i -lt 600 ] && ! grep -q "$2" "$1" 2>/dev/null; do
        sleep 0.1; i=$((i + 1))
    done
}
N=30
COMMON="--model models/stories260K --dataset identity --vars name=Tuna,author=Tuna-devs
        --template vanilla --max-steps $N --val-size 0 --logging-steps 1 --save-steps 5
        --lr 1e-3 --threads 1 --quiet"

# run2 NAME [FLAGS]: the 2-rank run into $W/NAME (stdout NAME.out, stderr NAME.err)
run2() {
    name=$1; shift
    # shellcheck disable=SC2086
    timeout -k 10 120 "$BIN" train --nproc 2 $COMMON --batch-size 2 "$@" --output "$W/$name" \
        >"$W/$name.out" 2>"$W/$name.err"
}

# the uninterrupted run
run2 ref \
    || { bad "uninterrupted run failed: $(tail -3 "$W/ref.err")"; done_; }
losses "$W/ref/metrics.jsonl" >"$W/ref.loss"
[ "$(wc -l <"$W/ref.loss")" -eq $N ] && ok || bad "uninterrupted run: $(wc -l <"$W/ref.loss") step events, not $N"

# SIGKILL of rank 1 once checkpoint-10 is written
run2 kill &
job=$!
wait_for "$W/kill/metrics.jsonl" '"type":"checkpoint","step":10'
p1=$(rank_pid 1 "--output $W/kill")
if [ -z "$p1" ]; then
    bad "SIGKILL: no rank 1 found (the job ended before checkpoint-10?)"; wait $job
else
    t0=$(now)
    kill -KILL "$p1"
    wait $job; rc=$?
    took=$(echo "$(now) $t0" | awk '{printf "%.1f", $1 - $2}')
    last=$(losses "$W/kill/metrics.jsonl" | wc -l)
    echo "test_mpi_faults: SIGKILL of rank 1 after step 10: the job ended in $took s, exit $rc, last step $last:"
    cat "$W/kill.err"
    awk -v t="$took" 'BEGIN {exit !(t < 30)}' && ok || bad "SIGKILL: the job took $took s to end"
    [ "$rc" -ne 0 ] && ok || bad "SIGKILL: exit status 0"
    [ "$(wc -l <"$W/kill.err")" -eq 1 ] && grep -q "rank 1 of 2 died (signal 9" "$W/kill.err" && ok \
        || bad "SIGKILL: not one line naming rank 1 on stderr: $(cat "$W/kill.err")"
    tail -1 "$W/kill/metrics.jsonl" | grep -q '"type":"done".*"status":"error".*rank 1' && ok \
        || bad "SIGKILL: no done event with status error in metrics.jsonl: $(tail -1 "$W/kill/metrics.jsonl")"
    [ "$last" -lt $N ] && ok || bad "SIGKILL: the run finished all $N steps before the kill"
    # a kill during a checkpoint write leaves checkpoint-N.tmp-PID (PID gone) beside the last
    # good one: a newer half-written one must not hide it
    ls -d "$W/kill/checkpoint-"* | sort -V >"$W/ckpts"
    mkdir "$W/kill/checkpoint-$((N - 1)).tmp-999999" && echo "{" >"$W/kill/checkpoint-$((N - 1)).tmp-999999/trainer_state.json"
    cp -a "$W/kill" "$W/kill1"
    # shellcheck disable=SC2086
    timeout -k 10 120 "$BIN" train --nproc 2 --resume "$W/kill" --quiet >"$W/res2.log" 2>&1 \
        && ok || bad "--resume with 2 ranks failed: $(tail -3 "$W/res2.log")"
    [ ! -e "$W/kill/checkpoint-$((N - 1)).tmp-999999" ] && ok || bad "the interrupted write's folder is still there"
    losses "$W/kill/metrics.jsonl" >"$W/res2.loss"
    w=$(worst "$W/ref.loss" "$W/res2.loss")
    echo "test_mpi_faults: resume with 2 ranks from $(tail -1 "$W/ckpts" | sed 's|.*/||'): worst relative loss difference over $N steps $w"
    [ "$(wc -l <"$W/res2.loss")" -eq $N ] && awk -v w="$w" 'BEGIN {exit !(w <= 1e-5)}' && ok \
        || bad "resume with 2 ranks: $(wc -l <"$W/res2.loss") steps, worst difference $w"
    # one process with the global batch (2 ranks x 2 rows)
    # shellcheck disable=SC2086
    timeout -k 10 120 "$BIN" train --resume "$W/kill1" --batch-size 4 --allow-changes --quiet >"$W/res1.log" 2>&1 \
        && ok || bad "--resume with 1 process failed: $(tail -3 "$W/res1.log")"
    losses "$W/kill1/metrics.jsonl" >"$W/res1.loss"
    w=$(worst "$W/ref.loss" "$W/res1.loss")
    echo "test_mpi_faults: resume with 1 process x 4 rows: worst relative loss difference over $N steps $w"
    [ "$(wc -l <"$W/res1.loss")" -eq $N ] && awk -v w="$w" 'BEGIN {exit !(w <= 1e-5)}' && ok \
        || bad "resume with 1 process: $(wc -l <"$W/res1.loss") steps, worst difference $w"
fi

# SIGSTOP of rank 1 (a hang): rank 0's watchdog ends the job
run2 hang --dist-timeout 4 &
job=$!
wait_for "$W/hang/metrics.jsonl" '"type":"step","step":3,'
p1=$(rank_pid 1 "--output $W/hang")
if [ -z "$p1" ]; then
    bad "SIGSTOP: no rank 1 found"; wait $job
else
    STOPPED=$p1
    t0=$(now)
    kill -STOP "$p1"
    wait $job; rc=$?
    took=$(echo "$(now) $t0" | awk '{printf "%.1f", $1 - $2}')
    echo "test_mpi_faults: SIGSTOP of rank 1: the job ended in $took s (dist_timeout 4), exit $rc:"
    cat "$W/hang.err"
    awk -v t="$took" 'BEGIN {exit !(t < 20)}' && ok || bad "SIGSTOP: the job took $took s to end"
    [ "$rc" -ne 0 ] && ok || bad "SIGSTOP: exit status 0"
    [ "$(wc -l <"$W/hang.err")" -eq 1 ] && grep -q "rank 0 of 2: MPI_.* waited .* at step" "$W/hang.err" && ok \
        || bad "SIGSTOP: not one line naming rank 0 and the collective: $(cat "$W/hang.err")"
    # mpirun's SIGKILL may land just after it exits: gone (or a zombie) within 5 s
    i=0
    while [ $i -lt 50 ] && [ -e "/proc/$p1" ] && ! grep -q '^State:.*Z' "/proc/$p1/status" 2>/dev/null; do
        sleep 0.1; i=$((i + 1))
    done
    if [ $i -ge 50 ]; then bad "SIGSTOP: rank 1 (pid $p1, $(grep State "/proc/$p1/status")) outlived the job"; else ok; STOPPED=""; fi
fi
done_
