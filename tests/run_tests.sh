#!/bin/sh
# Runs each test binary given, from the repo root, and prints one closing line with the sum
# of their counts: "tests: N passed, N failed, N skipped". Exits non-zero if any test failed
# or a binary crashed. Each test's line ends with its wall time in seconds.
build=$1; shift
passed=0; failed=0; skipped=0; crashed=0
for t in "$@"; do
    t0=$(date +%s)
    out=$("$t" 2>&1); rc=$?
    secs=$(( $(date +%s) - t0 ))
    # FAIL/SKIP lines, also where a child's unterminated output ran into them (from FAIL on)
    msgs=$(echo "$out" | grep -oE '(FAIL|SKIP) [^ ]+:.*')
    nfail=$(echo "$out" | grep -cE 'FAIL [^ ]+:')
    [ -n "$msgs" ] && echo "$msgs" | head -60
    [ "$nfail" -gt 60 ] && echo "... $((nfail - 60)) more FAIL lines in $t"
    line=$(echo "$out" | grep -E '^[a-z_0-9]+: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' | tail -1)
    if [ -z "$line" ]; then
        echo "$out" | tail -20
        echo "CRASH $t (exit $rc, no report line)"; crashed=$((crashed + 1)); continue
    fi
    echo "$line ($secs s)"
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -E 's/.* ([0-9]+) skipped.*/\1/')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "CRASH $t (exit $rc)"; crashed=$((crashed + 1)); fi
    # a failure counted whose FAIL line is missing: show the end of the output, never nothing
    if [ "$f" -gt 0 ] && [ "$nfail" -lt "$f" ] && [ "$nfail" -lt 60 ]; then
        echo "$t: $f failed but $nfail FAIL lines found; its last 30 lines:"
        echo "$out" | tail -30
    fi
done
failed=$((failed + crashed))
echo "$build: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
