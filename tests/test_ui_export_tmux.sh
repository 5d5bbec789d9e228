#!/bin/sh
# test_ui_export_tmux.sh: the Runs screen's Export (e) in tmux, as test_ui_tmux.sh drives the
# real binary: a 2-step LoRA run of the bundled model is exported to hf in bf16 from the form (the
# progress box, then "export done" and the folder), and an export that cannot work (the
# recorded fixture run has no adapter) ends with its one-line error. Needs tmux and ./tuna.
set -u
pass=0; fail=0; skip=0
ok()   { pass=$((pass + 1)); }
bad()  { fail=$((fail + 1)); echo "FAIL test_ui_export_tmux: $*"; }
chk()  { if eval "$1"; then ok; else bad "$2"; fi; }
SOCK=tuna_ui_export_$$
T=x
W=$(mktemp -d /tmp/tuna_ui_export.XXXXXX)
cleanup() { tmux -L "$SOCK" kill-server 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
BIN=${TUNA_BIN:-./tuna}
if ! command -v tmux >/dev/null || ! "$BIN" watch --help >/dev/null 2>&1; then
    echo "SKIP test_ui_export_tmux: tmux or $BIN missing"
    echo "test_ui_export_tmux: 0 passed, 0 failed, 1 skipped"; exit 0
fi
NS=0
tmux -L "$SOCK" new-session -d -s keeper -x 80 -y 24 "sleep 100000"
start() {
    NS=$((NS + 1)); T=tuna_ui_export_$$_$NS
    tmux -L "$SOCK" new-session -d -s $T -x "${1%x*}" -y "${1#*x}" "$2"
    tmux -L "$SOCK" set-option -t $T remain-on-exit on >/dev/null 2>&1
}
cap() { tmux -L "$SOCK" capture-pane -p -t $T; }
wait_for() {
    i=0; n=$(( ${2:-20} * 20 ))
    while [ $i -lt $n ]; do cap | grep -q -- "$1" && return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
keys() { for k in "$@"; do tmux -L "$SOCK" send-keys -t $T "$k"; sleep 0.1; done; }

mkdir -p "$W/runs"
"$BIN" train --model models/stories260K --dataset identity --method lora --max-steps 2 \
    --output "$W/runs/r1" > "$W/train.log" 2>&1
chk '[ -f "$W/runs/r1/adapter_model.safetensors" ]' "a 2-step LoRA run to export ($(tail -1 $W/train.log))"

start 100x30 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --runs $W/runs"
chk 'wait_for "r1"' "Runs lists the run"
chk 'cap | grep -q "eExport"' "the help line names e Export"
keys e
chk 'wait_for "format"' "e opens the export form"
chk 'cap | grep -q "\[hf\]"' "hf is the first format"
chk 'cap | grep -q "r1-hf_"' "the output path defaults to RUN-hf"
keys Right Right
chk 'wait_for "\[gguf\]"' "Right moves to gguf"
chk 'cap | grep -q "r1-f16.gguf"' "gguf's path names the quant"
keys Down
chk 'wait_for "bf16"' "Down picks the next quant"
keys Left Left
chk 'wait_for "\[hf\]"' "Left back to hf"
chk 'cap | grep -q "dtype.*auto (the base"' "hf's type row: --export-dtype, auto by default"
keys Down Down
chk 'wait_for "dtype  *bf16"' "Down picks hf's bf16"
keys BSpace BSpace x 2
chk 'wait_for "r1-x2_"' "typing edits the output path"
keys Enter
chk 'wait_for "export done" 60' "the hf export finishes and says so ($(cap | head -1))"
chk '[ -f "$W/runs/r1-x2/model.safetensors" ] && [ -f "$W/runs/r1-x2/config.json" ]' \
    "the exported folder has the merged model"
chk 'head -c 400 "$W/runs/r1-x2/model.safetensors" | grep -q "BF16" &&
     ! head -c 400 "$W/runs/r1-x2/model.safetensors" | grep -q "F32" &&
     grep -q "\"torch_dtype\":[[:space:]]*\"bfloat16\"" "$W/runs/r1-x2/config.json"' \
    "the form's bf16 reached tuna export (--export-dtype bf16: BF16 tensors, config says so)"

# an export that fails: the recorded fixture run has no adapter or model
start 100x30 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --runs tests/fixtures/ui"
chk 'wait_for "run_demo"' "Runs lists the fixture"
keys e
chk 'wait_for "format"' "e opens the form"
keys BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace BSpace
tmux -L "$SOCK" send-keys -t $T -l "$W/bad-out"
keys Enter
chk 'wait_for "export failed" 60' "a failing export shows its error ($(cap | head -1))"
chk '! [ -e "$W/bad-out" ]' "and leaves nothing behind"
keys e Escape
chk 'wait_for "r1\|run_demo" && ! cap | grep -q "format "' "Esc closes the form"
echo "test_ui_export_tmux: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
