# mpi_lib.sh: what the test_mpi*.sh scripts share, sourced after setting NAME (the test's name):
# the pass/fail/skip counters (ok, bad, done_), BIN (./tuna or $TUNA_BIN), mpi_required (skips
# the rest, with a message, when BIN is built without MPI or mpirun is missing), and the loss
# helpers: losses FILE [TYPE [KEY]] (the step losses of a metrics.jsonl, one a line, as written:
# %.17g, so equal text is equal bits), worst A B (the largest relative difference of two such
# files, line by line), within W [T] (W <= T, 1e-5 by default).
pass=0; fail=0; skip=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $NAME: $*"; }
BIN=${TUNA_BIN:-./tuna}
done_() { echo "$NAME: $pass passed, $fail failed, $skip skipped"; [ "$fail" -eq 0 ]; exit $?; }
mpi_required() {
    if ! command -v mpirun >/dev/null 2>&1 || ! ldd "$BIN" 2>/dev/null | grep -q libmpi; then
        echo "SKIP $NAME: $BIN is built without MPI or mpirun is missing (make MPI=1; libopenmpi-dev openmpi-bin)"
        skip=$((skip + 1)); done_
    fi
}
losses() { grep "^{\"type\":\"${2:-step}\"" "$1" | sed -E "s/.*\"${3:-loss}\":([^,}]*).*/\1/"; }
worst() { paste "$1" "$2" | awk '{d = $1 - $2; if (d < 0) d = -d; a = $1 < 0 ? -$1 : $1;
    r = a > 0 ? d / a : d; if (r > w) w = r} END {printf "%.3g", w + 0}'; }
within() { awk -v w="$1" -v t="${2:-1e-5}" 'BEGIN {exit !(w <= t)}'; }
