#!/bin/sh
# gpu-check.sh: issue 14's checks on a machine with an NVIDIA GPU, in one go, one summary line
# per check (PASS / FAIL / SKIP), logs in $OUT (default /tmp/gpu-check).
#
#   sh scripts/gpu-check.sh --bundle   here, on the build machine: a portable build
#                                      (-march=x86-64-v3) of tuna, libtuna_cuda.so and the CUDA
#                                      test binaries, with the shared libraries a bare CUDA
#                                      image lacks (OpenBLAS, cJSON, PCRE2, ncurses, libedit),
#                                      into .gpu/ (git-ignored; about 20 MB)
#   sh scripts/gpu-check.sh            on the GPU machine, from the repo root (.gpu carried
#                                      there: the device tool's `carry: [".gpu"]`), or on any
#                                      machine with a GPU and a normal build (./tuna)
#
# The checks: the CUDA op tests against the ref backend (test_cuda: forward; test_grad_ops:
# every backward, loss and optimizer op, fp32; test_kernels' cuda rows); 30 training steps of
# full, freeze, LoRA, P-tuning and prompt tuning on stories260K, cuda against cpu, every
# step's loss within 1e-4 relative; greedy ids of `tuna generate` equal to the cpu's; QLoRA and
# --bf16 refused with one line (not implemented on cuda yet). The real SmolLM2 checks need
# ../shared (100 MB: more than the device tool carries) and skip without it.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

if [ "${1:-}" = "--bundle" ]; then
	set -e
	SRC=$(mktemp -d /tmp/tuna-gpu-build.XXXXXX)
	git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$SRC"
	(cd "$SRC" && make -j"$(nproc)" OPT="-O2 -march=x86-64-v3" build/tuna \
		build/tests/test_cuda build/tests/test_grad_ops build/tests/test_kernels >"$SRC/make.log" 2>&1) ||
		{ tail -20 "$SRC/make.log"; exit 1; }
	[ -f "$SRC/build/libtuna_cuda.so" ] || { echo "gpu-check: no nvcc here: libtuna_cuda.so was not built"; exit 1; }
	rm -rf .gpu
	mkdir -p .gpu/tests .gpu/lib
	cp "$SRC/build/tuna" "$SRC/build/libtuna_cuda.so" .gpu/
	cp "$SRC/build/tests/test_cuda" "$SRC/build/tests/test_grad_ops" "$SRC/build/tests/test_kernels" .gpu/tests/
	strip .gpu/tuna .gpu/tests/*
	for l in $(ldd .gpu/tuna | awk '/=> \// {print $3}'); do
		case $(basename "$l") in
		libc.so* | libm.so* | libgcc_s* | libpthread* | libdl* | ld-linux*) ;;
		*) cp -L "$l" .gpu/lib/ ;;
		esac
	done
	tar -C .gpu -cJf .gpu/lib.tar.xz lib && rm -rf .gpu/lib
	grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
	rm -rf "$SRC"
	du -sh .gpu
	exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
T0=$(date +%s)
npass=0 nfail=0 nskip=0
say() { # STATUS NAME DETAIL
	echo "$1  $2${3:+  ($3)}" | tee -a "$OUT/summary.txt"
	case $1 in PASS) npass=$((npass + 1)) ;; FAIL) nfail=$((nfail + 1)) ;; *) nskip=$((nskip + 1)) ;; esac
}

# the binaries: the carried bundle, else this checkout's build
if [ -f .gpu/tuna ]; then
	mkdir -p /tmp/tuna-gpu-lib
	tar -C /tmp/tuna-gpu-lib -xJf .gpu/lib.tar.xz
	export LD_LIBRARY_PATH="/tmp/tuna-gpu-lib/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
	export TUNA_CUDA_LIB="$ROOT/.gpu/libtuna_cuda.so"
	TUNA=$ROOT/.gpu/tuna TESTS=$ROOT/.gpu/tests
else
	TUNA=$ROOT/build/tuna TESTS=$ROOT/build/tests
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
	[ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
export TUNA_BIN="$TUNA"
nvidia-smi -L >"$OUT/nvidia-smi.txt" 2>&1 && say INFO "device" "$(head -1 "$OUT/nvidia-smi.txt")"
"$TUNA" info >"$OUT/info.txt" 2>&1 && say INFO "host" "$(head -1 "$OUT/info.txt")"

# 1. the op tests (each SKIPs its cuda rows without a device: a SKIP line here is a failure)
for t in test_cuda test_grad_ops test_kernels; do
	timeout 300 "$TESTS/$t" >"$OUT/$t.log" 2>&1
	line=$(grep -E "^$t: [0-9]+ passed" "$OUT/$t.log" | tail -1)
	cuda_skip=$(grep -c "SKIP.*cuda" "$OUT/$t.log")
	if echo "$line" | grep -q " 0 failed" && [ "$cuda_skip" -eq 0 ]; then
		say PASS "$t" "$line"
	else
		say FAIL "$t" "${line:-crashed}; $cuda_skip cuda SKIP lines; see $OUT/$t.log"
	fi
done
grep -E "^(op|[a-z_]+ +[0-9.e+-]+ )" "$OUT/test_grad_ops.log" >"$OUT/grad_ops_table.txt" 2>/dev/null

# 2. training: every step's loss on cuda within 1e-4 relative of the cpu's
train() { # NAME BACKEND FLAGS...
	name=$1 be=$2
	shift 2
	rm -rf "$OUT/run-$name-$be"
	"$TUNA" train --model models/stories260K --dataset identity --dataset-dir datasets \
		--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --quiet \
		--max-steps 30 --eval-steps 0 --save-steps 0 --sample-prompts "" --backend "$be" \
		--output "$OUT/run-$name-$be" "$@" >"$OUT/run-$name-$be.log" 2>&1
}
losses() { grep '"type":"step"' "$1/metrics.jsonl" 2>/dev/null | grep -o '"loss":[^,}]*' | cut -d: -f2; }
for spec in "full:--method full" "freeze:--method freeze --freeze-layers 2" \
	"lora:--method lora --lora-target all" "ptuning:--method ptuning --prefix-tokens 4" \
	"prompt:--method prompt --prefix-tokens 4"; do
	name=${spec%%:*} flags=${spec#*:}
	# shellcheck disable=SC2086 # flags are words
	train "$name" cpu $flags && train "$name" cuda $flags
	losses "$OUT/run-$name-cpu" >"$OUT/loss-$name-cpu.txt"
	losses "$OUT/run-$name-cuda" >"$OUT/loss-$name-cuda.txt"
	res=$(paste "$OUT/loss-$name-cpu.txt" "$OUT/loss-$name-cuda.txt" | awk '
		NF == 2 { n++; d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > w) w = r }
		END { printf "%d %.3g", n, w }')
	n=${res%% *} worst=${res#* }
	if [ "$n" -eq 30 ] && awk "BEGIN { exit !($worst <= 1e-4) }"; then
		say PASS "train $name, 30 steps: cuda losses == cpu's within 1e-4 relative" "worst $worst"
	else
		say FAIL "train $name, 30 steps: cuda losses == cpu's within 1e-4 relative" \
			"$n steps compared, worst $worst; $(tail -1 "$OUT/run-$name-cuda.log")"
	fi
done

# 3. what cuda does not do yet must say so in one line, not run other math
refuse() { # NAME EXPECTED_PATTERN FLAGS...
	name=$1 pat=$2
	shift 2
	train "$name" cuda "$@"
	rc=$?
	if [ "$rc" -ne 0 ] && grep -q "$pat" "$OUT/run-$name-cuda.log"; then
		say PASS "$name on cuda: refused in one line" "$(grep -m1 "$pat" "$OUT/run-$name-cuda.log")"
	else
		say FAIL "$name on cuda: refused in one line" "exit $rc; $(tail -1 "$OUT/run-$name-cuda.log")"
	fi
}
refuse qlora "matmul_w_fwd" --method lora --quantization-bit 4
refuse bf16 "not implemented on the cuda backend" --method lora --bf16

# 4. generation: greedy ids on cuda == cpu's
gen() { "$TUNA" generate models/stories260K --prompt "Once upon a time" --temperature 0 \
	--max-new-tokens 64 --json --quiet --backend "$1" 2>"$OUT/gen-$1.err" |
	grep -o '"ids": \[[^]]*\]'; }
a=$(gen cpu) b=$(gen cuda)
if [ -n "$a" ] && [ "$a" = "$b" ]; then
	say PASS "generate stories260K greedy: cuda ids == cpu ids" "64 tokens"
else
	say FAIL "generate stories260K greedy: cuda ids == cpu ids" "cpu $a | cuda $b $(cat "$OUT/gen-cuda.err")"
fi
SM=$(find ../shared/models/smollm2-135m-instruct shared/models/smollm2-135m-instruct -name "*.gguf" 2>/dev/null | head -1)
if [ -n "$SM" ]; then
	g() { "$TUNA" chat "$SM" --temperature 0 --max-new-tokens 48 --plain --message "$2" --backend "$1" 2>&1; }
	same=0
	for p in "What is the capital of France?" "Who are you?" "Write a haiku about the sea."; do
		[ "$(g cpu "$p")" = "$(g cuda "$p")" ] && same=$((same + 1))
	done
	# the cpu keeps the GGUF's Q4_1 as stored, cuda loads it dequantized to fp32: the same
	# weights, products summed in another order (near ties may part; see tests/interop)
	[ "$same" -eq 3 ] && st=PASS || st=FAIL
	say "$st" "chat SmolLM2-135M greedy: cuda replies == cpu replies" "$same/3"
else
	say SKIP "SmolLM2 checks" "the model is not here (../shared)"
fi

say INFO "time" "$(($(date +%s) - T0)) s"
echo "gpu-check: $npass passed, $nfail failed, $nskip skipped or info" | tee -a "$OUT/summary.txt"
[ "$nfail" -eq 0 ]
