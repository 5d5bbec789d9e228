#!/bin/sh
# tests/fuzz/run.sh SECONDS BUILD_DIR TARGET...: runs each libFuzzer target for SECONDS
# (make fuzz). Seeds: tests/fuzz/corpus/TARGET (small, committed) plus seeds made here from
# tests/fixtures, templates/, datasets/ and ../shared (when present) into BUILD_DIR/seeds/TARGET.
# New inputs go to BUILD_DIR/corpus/TARGET, crashes to BUILD_DIR/crashes/TARGET/. Prints one
# line per target (executions, cov, ft) and closes with "fuzz: N passed, N failed".
# FUZZ_MODE=ci (make fuzz-ci, what CI runs): the same for a given commit on every run: a fixed
# seed, a fixed number of executions per target (SECONDS is then only a cap, generous for a
# 2-core machine), and an empty corpus folder, so that a pass or a crash is reproducible and a
# CI run never fails on what a previous one happened not to reach. make fuzz explores instead:
# a random seed, for SECONDS, growing BUILD_DIR/corpus.
secs=$1
out=$2
shift 2
shared=../shared
[ -d "$shared" ] || shared=
pass=0
fail=0

seed() { # seed TARGET NAME: stdin -> BUILD_DIR/seeds/TARGET/NAME
    cat > "$out/seeds/$1/$2"
}
# seed_pfx TARGET NAME BYTE FILE [BYTES]: the selector byte (octal) then the file's head
seed_pfx() {
    [ -f "$4" ] || return 0
    { printf "\\$3"; head -c "${5:-6000}" "$4"; } | seed "$1" "$2"
}

make_seeds() {
    t=$1
    rm -rf "$out/seeds/$t"
    mkdir -p "$out/seeds/$t" "$out/corpus/$t" "$out/crashes/$t"
    case $t in
    fuzz_safetensors)
        for f in tests/fixtures/llama/reference.safetensors tests/fixtures/train/llama_lora_tokens.safetensors \
                 tests/fixtures/train/gpt2_lora_tokens.safetensors tests/fixtures/train/llama_prefix.safetensors \
                 tests/fixtures/qwen3_bf16/reference.safetensors tests/fixtures/llama_f16/reference.safetensors; do
            [ -f "$f" ] && cp "$f" "$out/seeds/$t/$(echo "$f" | tr / _)"
        done ;;
    fuzz_config)
        for f in tests/fixtures/*/config.json ${shared:+$shared/models/*/config.json}; do
            [ -f "$f" ] && cp "$f" "$out/seeds/$t/$(echo "$f" | tr / _)"
        done
        for d in tests/fixtures/llama tests/fixtures/gpt2 tests/fixtures/qwen3 ${shared:+$shared/models/*}; do
            [ -f "$d/generation_config.json" ] &&
                { cat "$d/config.json"; printf '\000'; cat "$d/generation_config.json"; } |
                seed $t "pair_$(echo "$d" | tr / _)"
        done ;;
    fuzz_tokenizer)
        if [ -n "$shared" ]; then
            d=$shared/models/stories260K
            cp "$d/tokenizer.json" "$out/seeds/$t/stories260K"
            { cat "$d/tokenizer.json"; printf '\000'; cat "$d/tokenizer_config.json"; } | seed $t stories260K_cfg
            for d in "$shared"/tokenizers/*/; do
                n=$(basename "$d")
                seed $t "cfg_$n" < "$d/tokenizer_config.json" 2>/dev/null
            done
        fi ;;
    fuzz_dataset)
        ds=datasets
        seed_pfx $t identity 000 $ds/identity.json
        seed_pfx $t alpaca_en 000 $ds/alpaca_en_demo.json
        seed_pfx $t rotten_jsonl 001 $ds/rotten_tomatoes_validation.jsonl
        seed_pfx $t fastchat 002 $ds/fastchat_dummy_conversation.json
        seed_pfx $t glaive_jsonl 003 $ds/glaive_toolcall_en_demo.json
        seed_pfx $t glaive_strict_cut 033 $ds/glaive_toolcall_en_demo.json
        seed_pfx $t c4_pt 007 $ds/c4_demo.jsonl 3000
        seed_pfx $t stories_pt 006 $ds/tinystories_valid_slice.txt 3000
        if [ -n "$shared" ]; then
            seed_pfx $t alpaca_zh 100 "$shared/datasets/alpaca_zh_demo.json"
            seed_pfx $t belle_jsonl 121 "$shared/datasets/belle_eval_zh.jsonl" 4000
            seed_pfx $t dialogsum 141 "$shared/datasets/dialogsum_validation.jsonl" 4000
        fi ;;
    fuzz_template)
        for f in templates/*.json; do cp "$f" "$out/seeds/$t/"; done ;;
    fuzz_metrics)
        cp tests/fixtures/ui/run_demo/metrics.jsonl "$out/seeds/$t/run_demo" ;;
    fuzz_gguf)
        cp tests/fixtures/gguf/dequant.gguf "$out/seeds/$t/" ;;
    fuzz_jinja)
        for f in tests/fixtures/jinja/*.jinja; do [ -f "$f" ] && cp "$f" "$out/seeds/$t/"; done ;;
    fuzz_lfyaml)
        for f in tests/fixtures/lf/*.yaml; do [ -f "$f" ] && cp "$f" "$out/seeds/$t/"; done ;;
    esac
}

for t in "$@"; do
    make_seeds "$t"
    case $t in
    fuzz_safetensors) maxlen=32768 ;;
    fuzz_gguf) maxlen=65536 ;;
    fuzz_tokenizer) maxlen=24576 ;;
    fuzz_dataset | fuzz_metrics) maxlen=8192 ;;
    fuzz_jinja) maxlen=8192 ;;
    *) maxlen=4096 ;;
    esac
    # executions in ci mode: about 30 s of each on a 2-core Zen 4 (a third to a half of what
    # 60 s reached in CI)
    case $t in
    fuzz_config) runs=1000000 ;;
    fuzz_control) runs=3000000 ;;
    fuzz_dataset) runs=20000 ;;
    fuzz_gguf) runs=1000000 ;;
    fuzz_jinja) runs=350000 ;;
    fuzz_lfyaml) runs=150000 ;;
    fuzz_metrics) runs=100000 ;;
    fuzz_safetensors) runs=400000 ;;
    fuzz_template) runs=60000 ;;
    fuzz_tokenizer) runs=70000 ;;
    *) runs=50000 ;;
    esac
    corpus=$out/corpus/$t
    mode=
    if [ "$FUZZ_MODE" = ci ]; then
        corpus=$out/ci-corpus/$t
        rm -rf "$corpus"
        mkdir -p "$corpus"
        mode="-seed=1 -runs=$runs -reload=0"
    fi
    # ci: -reload=0 (rereading the corpus folder each second made the walk depend on timing) and
    # no address randomization (libFuzzer learns from the operands of compares, -fsanitize=
    # fuzzer's trace-cmp, and pointer compares differed from run to run)
    # and a fixed, minimal environment: its size moves the stack, and stack addresses are
    # compared too (a 3000-byte variable more changed fuzz_config's walk)
    norand=
    [ -n "$mode" ] && setarch "$(uname -m)" -R true 2>/dev/null && norand="setarch $(uname -m) -R"
    [ -n "$mode" ] && norand="env -i PATH=/usr/local/bin:/usr/bin:/bin $norand"
    dict=tests/fuzz/json.dict
    [ "$t" = fuzz_jinja ] && dict=tests/fuzz/jinja.dict
    log=$out/$t.log
    dirs="$corpus $out/seeds/$t"
    [ -d "tests/fuzz/corpus/$t" ] && dirs="$dirs tests/fuzz/corpus/$t"
    # shellcheck disable=SC2086
    $norand "$out/$t" $mode -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=$maxlen \
        -timeout=20 -print_final_stats=1 -dict=$dict -artifact_prefix="$out/crashes/$t/" \
        $dirs > "$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    if [ $rc -eq 0 ]; then
        pass=$((pass + 1))
        cap=
        [ -n "$mode" ] && [ "${execs:-0}" -lt "$runs" ] && cap=" (stopped at the ${secs} s cap)"
        echo "$t: ok, ${execs:-?} executions, cov ${cov:-?}, ft ${ft:-?}$cap"
    else
        fail=$((fail + 1))
        echo "$t: FAILED (exit $rc) after ${execs:-?} executions, cov ${cov:-?}, ft ${ft:-?}; log $log"
        grep -aE '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)' "$log" | head -n 8
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ $fail -eq 0 ]
