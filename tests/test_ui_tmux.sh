#!/bin/sh
# test_ui_tmux.sh: drives the real binary in tmux (send-keys, capture-pane) against the recorded
# run tests/fixtures/ui/run_demo and a live run appended by a shell loop: the plot is present,
# the step counter advances, 80x24 and 200x60, colour and NO_COLOR/TERM=vt100/ASCII, quitting
# (q, Ctrl-C, SIGTERM, a crash signal) leaves `stty -a` as it was, the key response time (printed,
# not asserted), and at 80x24: Setup's refusal reasons and the status line in full, the Runs
# details, the line editor, a fresh run name when runs/identity-lora exists, TERM=dumb refused.
# No fixed sleep before an assertion: every check polls for what it expects with a generous
# timeout, so a busy machine (a core held by another process, an ASan build) only makes it slower.
# Run from the repo root. Uses ./tuna when it has `watch`, else builds /tmp/tuna_ui_test from
# ui/*.c (TUNA_UI_STANDALONE) and build/libtuna.a.
# Prints "test_ui_tmux: N passed, N failed, N skipped"; exits non-zero on any failure.
set -u
pass=0; fail=0; skip=0
ok()   { pass=$((pass + 1)); }
bad()  { fail=$((fail + 1)); echo "FAIL test_ui_tmux: $*"; [ -n "${TUNA_UI_DEBUG:-}" ] && { tmux -L "$SOCK" ls; tmux -L "$SOCK" capture-pane -p -t $T | head -5; }; }
chk()  { if eval "$1"; then ok; else bad "$2"; fi; }
T=tuna_ui_test_$$
SOCK=tuna_ui_test_$$   # a private tmux server: other sessions (and their kill-server) stay apart
W=$(mktemp -d /tmp/tuna_ui_tmux.XXXXXX)
FIX=tests/fixtures/ui/run_demo
cleanup() {
    tmux -L "$SOCK" kill-server 2>/dev/null
    [ -n "${LIVE_PID:-}" ] && kill "$LIVE_PID" 2>/dev/null
    [ -n "${HL_PID:-}" ] && kill "$HL_PID" 2>/dev/null
    # trainers started from Setup run in their own session: stop them by their pid files
    for f in "$W"/runs/*/train.pid; do
        p=$(cat "$f" 2>/dev/null); [ -n "$p" ] && grep -q "train" /proc/$p/cmdline 2>/dev/null && kill "$p"
    done
    [ -n "${TUNA_UI_KEEP:-}" ] && { echo "test_ui_tmux: kept $W"; return; }
    rm -rf "$W"
}
trap cleanup EXIT

if ! command -v tmux >/dev/null; then
    echo "SKIP test_ui_tmux: tmux not installed"; echo "test_ui_tmux: 0 passed, 0 failed, 1 skipped"; exit 0
fi
BIN=${TUNA_BIN:-./tuna}
if ! "$BIN" watch --help >/dev/null 2>&1; then
    BIN=/tmp/tuna_ui_test
    CF="-std=c11 -g -O2 -fopenmp -D_GNU_SOURCE -I."
    LIBS="-L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lcjson -lpcre2-8 -lncursesw -lpthread -lm"
    CU=$(ls build/kernels/cuda/*.o 2>/dev/null)
    [ -n "$CU" ] && LIBS="$LIBS -L/usr/local/cuda/lib64 -Wl,-rpath,/usr/local/cuda/lib64 -lcublas -lcudart -lstdc++"
    if ! cc $CF -DTUNA_UI_STANDALONE -o $BIN ui/*.c build/libtuna.a $CU $LIBS 2>"$W/cc.log"; then
        cat "$W/cc.log" | head -20
        bad "cannot build a standalone UI binary"; echo "test_ui_tmux: $pass passed, $fail failed, $skip skipped"; exit 1
    fi
    echo "test_ui_tmux: ./tuna has no watch command yet; using $BIN"
fi

# start SIZE CMD...: a fresh session of that size running CMD (through sh, env allowed)
NSESS=0
# a keeper session holds the private server up: killing the last session ends the server, and a
# new-session racing with that exit fails with "server exited unexpectedly"
tmux -L "$SOCK" new-session -d -s keeper -x 80 -y 24 "sleep 100000"
start() {
    tmux -L "$SOCK" kill-session -t $T 2>/dev/null
    NSESS=$((NSESS + 1)); T=tuna_ui_test_$$_$NSESS   # a fresh name: kill-session is not synchronous
    tmux -L "$SOCK" new-session -d -s $T -x "${1%x*}" -y "${1#*x}" "$2"
    tmux -L "$SOCK" set-option -t $T remain-on-exit on >/dev/null 2>&1
}
cap() { tmux -L "$SOCK" capture-pane -p -t $T; }
has_braille() { LC_ALL=C grep -q "$(printf '\342[\240-\243]')"; }
# wait_for TEXT [SECONDS]: until the screen shows TEXT (a grep pattern); 20 s unless told
wait_for() {
    i=0; n=$(( ${2:-20} * 20 ))
    while [ $i -lt $n ]; do cap | grep -q -- "$1" && return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
# wait_gone TEXT [SECONDS]: until the screen no longer shows TEXT
wait_gone() {
    i=0; n=$(( ${2:-20} * 20 ))
    while [ $i -lt $n ]; do cap | grep -q -- "$1" || return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
# until_ok 'COMMAND' [SECONDS]: until COMMAND succeeds (a file written by the UI, say)
until_ok() {
    i=0; n=$(( ${2:-20} * 20 ))
    while [ $i -lt $n ]; do eval "$1" && return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
# step: the step counter of the progress line on the screen now ("" when none)
step() { cap | sed -n 's/.* step \([0-9][0-9]*\)\/[0-9][0-9]* .*/\1/p' | head -1; }
# wait_step_gt N SECONDS: until the step counter passes N; prints the new value
wait_step_gt() {
    i=0; n=$(( $2 * 10 ))
    while [ $i -lt $n ]; do
        v=$(step); [ -n "$v" ] && [ "$v" -gt "$1" ] && { echo $v; return 0; }
        sleep 0.1; i=$((i + 1))
    done
    echo "${v:-}"; return 1
}
# joined FROM TO: columns FROM..TO-1 of the screen (a pane's inside), its lines joined by single
# spaces: text wrapped over several rows reads as one line
joined() {
    cap | LC_ALL=C.UTF-8 sed -n "s/^.\{$1\}\(.\{1,$(($2 - $1))\}\).*/\1/p" | tr '\n' ' ' | tr -s ' '
}
# banner: the bottom rows (where a status too long for the header shows), joined
banner() { cap | tail -4 | tr '\n' ' ' | tr -s ' '; }

# --- 1. recorded run, 80x24, colour, UTF-8
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN watch $FIX"
wait_for "step 60/60"; S=$(cap)
chk 'echo "$S" | grep -q "step 60/60"' "80x24: step counter"
chk 'echo "$S" | grep -q "loss: train"' "80x24: loss plot title"
chk 'echo "$S" | has_braille' "80x24: braille plot present"
chk 'echo "$S" | grep -q "FINISHED"' "80x24: finished status"
chk 'echo "$S" | grep -q "I am Tuna"' "80x24: latest sample"
chk 'echo "$S" | grep -q "qQuit"' "80x24: help line"
chk '[ $(echo "$S" | wc -l) -eq 24 ]' "80x24: 24 lines"
echo "$S" > "$W/demo_80x24.txt"
tmux -L "$SOCK" send-keys -t $T z
chk 'wait_for "all steps"' "z zooms to all steps"
tmux -L "$SOCK" send-keys -t $T l
chk 'wait_for "| log"' "l toggles log scale"
tmux -L "$SOCK" send-keys -t $T F1
chk 'wait_for "tuna help"' "F1 opens help"
tmux -L "$SOCK" send-keys -t $T Escape
chk 'wait_for "step 60/60"' "a key closes help"
tmux -L "$SOCK" send-keys -t $T p
chk 'wait_for "cannot pause"' "pause on a finished run is refused with a reason"

# --- 2. 200x60: lr and grad-norm plots appear
start 200x60 "LANG=C.UTF-8 TERM=xterm-256color $BIN watch $FIX"
wait_for "step 60/60"; S=$(cap)
chk 'echo "$S" | grep -q "learning rate"' "200x60: lr plot"
chk 'echo "$S" | grep -q "grad norm"' "200x60: grad-norm plot"
chk 'echo "$S" | has_braille' "200x60: braille"
chk '[ $(echo "$S" | wc -l) -eq 60 ]' "200x60: 60 lines"
echo "$S" > "$W/demo_200x60.txt"
# resize: shrink to too small and back
tmux -L "$SOCK" resize-window -t $T -x 50 -y 12 2>/dev/null
chk 'wait_for "terminal too small"' "resize to 50x12 shows too small"
tmux -L "$SOCK" resize-window -t $T -x 100 -y 30 2>/dev/null
chk 'wait_for "step 60/60"' "resize back redraws"

# --- 3. no colour, vt100, C locale: ASCII only
for envs in "NO_COLOR=1 LANG=C.UTF-8 TERM=xterm" "TERM=vt100 LANG=C LC_ALL=C" "LANG=C.UTF-8 TERM=xterm-256color TUNA_ASCII=1"; do
    start 80x24 "env $envs $BIN watch $FIX --no-color"
    wait_for "step 60/60"; S=$(cap)
    chk 'echo "$S" | grep -q "step 60/60"' "[$envs] step counter"
    chk 'echo "$S" | grep -q "loss: train"' "[$envs] plot"
    case "$envs" in *vt100*|*ASCII*)
        chk '! echo "$S" | LC_ALL=C grep -q "[^ -~]"' "[$envs] ASCII only"
        chk 'echo "$S" | grep -q "[_|-]"' "[$envs] ASCII plot strokes";;
    esac
done

# --- 4. a live run: a shell loop appends steps while watch shows them
LIVE=$W/live
mkdir -p $LIVE
# (5000 steps, 20 a second at most: it outlasts the sections that watch it on a slow machine)
echo '{"type":"start","run":"live","model":"models/stories260K","method":"lora","dataset":"identity","total_steps":5000,"epochs":1}' > $LIVE/metrics.jsonl
( s=1; while [ $s -le 5000 ]; do
      printf '{"type":"step","step":%d,"total_steps":5000,"epoch":%s,"loss":%s,"lr":0.001,"grad_norm":0.9,"tokens_per_s":5000,"elapsed":%d,"eta":%d}\n' \
          $s "0.$((s * 2))" "$(awk "BEGIN{print 0.3 + 3*exp(-$s/40)}")" $s $((5000 - s)) >> $LIVE/metrics.jsonl
      if [ $((s % 10)) -eq 0 ]; then
          printf '{"type":"eval","step":%d,"eval_loss":%s}\n' $s "$(awk "BEGIN{print 0.4 + 3*exp(-$s/40)}")" >> $LIVE/metrics.jsonl
          printf '{"type":"sample","step":%d,"prompt":"Who are you?","text":"I am Tuna at step %d"}\n' $s $s >> $LIVE/metrics.jsonl
      fi
      s=$((s + 1)); sleep 0.05
  done ) &
LIVE_PID=$!
echo $LIVE_PID > $LIVE/train.pid
for size in 80x24 200x60; do
    start $size "LANG=C.UTF-8 TERM=xterm-256color $BIN watch $LIVE"
    wait_for "RUNNING"
    a=$(wait_step_gt 0 20); b=$(wait_step_gt "${a:-0}" 20)
    chk '[ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ]' "live $size: the step counter advances within 20 s ($a -> $b)"
    chk 'until_ok "cap | has_braille"' "live $size: plot present"
done
chk 'wait_for "I am Tuna at step"' "live: samples arrive"
tmux -L "$SOCK" send-keys -t $T p
chk 'until_ok "grep -qs \"^pause$\" $LIVE/control"' "p writes pause to RUN_DIR/control"
tmux -L "$SOCK" send-keys -t $T s
chk 'until_ok "grep -qs \"^save$\" $LIVE/control"' "s writes save"
tmux -L "$SOCK" send-keys -t $T x
chk 'wait_for "press x again" && ! grep -q "^stop$" $LIVE/control' "x asks for confirmation"
tmux -L "$SOCK" send-keys -t $T x
chk 'until_ok "grep -qs \"^stop$\" $LIVE/control"' "x x writes stop"

# --- 5. key response: how long a keypress takes to change the screen (median of 20), while the
# live run keeps appending; printed for the record, not asserted (it measures the machine)
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN watch $LIVE"
wait_for "RUNNING"
times=""
i=0
while [ $i -lt 20 ]; do
    before=$(cap | head -3 | tail -1 | grep -c "all steps")
    t0=$(date +%s%N)
    tmux -L "$SOCK" send-keys -t $T z
    while :; do
        now=$(cap | head -3 | tail -1 | grep -c "all steps")
        [ "$now" != "$before" ] && break
        [ $(( ($(date +%s%N) - t0) / 1000000 )) -gt 2000 ] && break
    done
    times="$times $(( ($(date +%s%N) - t0) / 1000000 ))"
    i=$((i + 1))
done
median=$(echo $times | tr ' ' '\n' | sort -n | sed -n 10p)
echo "test_ui_tmux: key response ms:$times (median $median; not asserted)"
kill $LIVE_PID 2>/dev/null; LIVE_PID=

# --- 6. the terminal is restored: q (every screen), Ctrl-C, SIGTERM, SIGSEGV
stty_case() { # name keys-or-signal
    rm -f $W/before $W/after $W/rc
    start 80x24 "sh -c 'trap \"\" INT; stty -a > $W/before; LANG=C.UTF-8 sh -c \"echo \\\$\\\$ > $W/pid; exec $BIN $3\"; echo \$? > $W/rc; stty -a > $W/after; sleep 30'"
    wait_for " tuna "
    case "$2" in
        SIG*) kill -s ${2#SIG} $(cat $W/pid);;
        *) for k in $2; do tmux -L "$SOCK" send-keys -t $T "$k"; done;;
    esac
    until_ok '[ -s $W/after ]' 30
    chk '[ -s $W/after ] && cmp -s $W/before $W/after' "$1: stty -a differs after exit (rc $(cat $W/rc 2>/dev/null))"
    chk '[ "$(cat $W/rc 2>/dev/null)" != 1 ]' "$1: the UI did not start (rc 1)"
}
stty_case "q on Train" "q" "watch $FIX"
stty_case "q on Runs" "4 q" "watch $FIX"
stty_case "F10 on Chat" "3 F10" "watch $FIX"
stty_case "q on Setup" "1 q" "watch $FIX"
stty_case "Ctrl-C" "C-c" "watch $FIX"
stty_case "SIGTERM" "SIGTERM" "watch $FIX"
stty_case "SIGSEGV" "SIGSEGV" "watch $FIX"
chk '[ "$(cat $W/rc)" = 139 ]' "SIGSEGV is re-raised (rc $(cat $W/rc))"
stty_case "ui Runs q" "q" "ui --runs tests/fixtures/ui"

# --- 7. Runs screen: lists the fixture, Enter opens it in Train
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --runs tests/fixtures/ui"
wait_for "run_demo"
chk 'cap | grep "run_demo" | grep -q "finished"' "Runs lists run_demo as finished"
chk 'cap | grep "run_demo" | grep -q "0.4958"' "Runs shows the best eval loss"
tmux -L "$SOCK" send-keys -t $T Enter
chk 'wait_for "step 60/60"' "Enter opens the run in Train"

# --- 7b. Chat: stream a reply from the bundled model; side by side base | tuned
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --screen chat --tuned models/stories260K"
chk 'wait_for "params, template" 30' "chat: the worker loads the model"
tmux -L "$SOCK" send-keys -t $T "Once upon a time" Enter
chk 'wait_for "tok/s" 30' "chat: a reply streams and finishes"
chk 'cap | grep -A3 "model" | grep -q "[a-z]"' "chat: reply text shown"
tmux -L "$SOCK" send-keys -t $T C-b
chk 'wait_for "tuned" 30' "chat: ^B opens side by side"
tmux -L "$SOCK" send-keys -t $T "Who are you?" Enter
# (both tags on one line, or on two: one poll for either, never a timeout before the other)
both_answered() { cap | grep -q "tok/s.*tok/s" || [ "$(cap | grep -c "tok/s")" -ge 2 ]; }
chk 'until_ok both_answered 30' "chat: both panes answer"
start 200x60 "LANG=C.UTF-8 TERM=xterm-256color NO_COLOR=1 $BIN ui --screen chat"
chk 'wait_for "params, template" 30' "chat 200x60 no colour: loads"
tmux -L "$SOCK" send-keys -t $T C-b
chk 'wait_for "no tuned model" 30' "chat: side by side without a tuned model says why"

# --- 7c. Setup: change a value, refuse a bad one, save the config JSON
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --screen setup --config $W/cfg.json"
chk 'wait_for "trainable" 30' "setup: trainable estimate shown"
tmux -L "$SOCK" send-keys -t $T Down Down Down Down Down Right Right
tmux -L "$SOCK" send-keys -t $T Down Enter BSpace BSpace x Enter
chk 'wait_for "must be a number"' "setup: an invalid value is refused with the engine's reason"
tmux -L "$SOCK" send-keys -t $T C-s
chk 'until_ok "grep -qs \"lora_rank.:[[:space:]]*10\" $W/cfg.json"' "setup: ^S saves lora_rank (flag name with underscores)"
chk 'grep -q "\"lora_alpha\":[[:space:]]*16" $W/cfg.json' "setup: the refused value kept the old one"

# --- 7d. Setup: ^O loads a LLaMA-Factory YAML (the engine's reading of it); ^T starts it with its
# settings outside the form too (lr_scheduler, warmup, max_steps); ^S will not write JSON over it
cat > $W/lf.yaml <<EOF
model_name_or_path: models/stories260K
dataset: identity
template: vanilla
finetuning_type: lora
lora_rank: 4
learning_rate: 2.0e-3
lr_scheduler_type: linear
warmup_ratio: 0.2
max_steps: 2
per_device_train_batch_size: 2
cutoff_len: 64
output_dir: $W/lfrun
report_to: none
EOF
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --screen setup --config $W/lf.yaml"
chk 'wait_for "trainable" 30' "setup lf.yaml: opens"
tmux -L "$SOCK" send-keys -t $T C-o
chk 'wait_for "LLaMA-Factory"' "setup: ^O loads a LLaMA-Factory YAML"
tmux -L "$SOCK" send-keys -t $T C-s
chk 'wait_for "writes JSON"' "setup: ^S does not write JSON over the YAML"
tmux -L "$SOCK" send-keys -t $T C-t
chk 'until_ok "[ -s $W/lfrun/setup_config.json ]" 30' "setup lf.yaml ^T: the run starts in its output_dir"
for kv in '"lr_scheduler":[[:space:]]*"linear"' '"warmup_ratio":[[:space:]]*0.2' \
          '"max_steps":[[:space:]]*2' '"lora_rank":[[:space:]]*4' '"lr":[[:space:]]*0.002' \
          '"gradient_checkpointing":[[:space:]]*true' '"val_size":[[:space:]]*0'; do
    chk "grep -q '$kv' $W/lfrun/setup_config.json" "setup lf.yaml ^T: the config has $kv"
done
chk 'until_ok "grep -qs type.:.done $W/lfrun/metrics.jsonl" 60' "setup lf.yaml ^T: the 2-step run finishes"

# --- 8. watch on a missing folder (a typo): one line, exit 1; a run folder with no metrics yet
# says so once and waits
out=$("$BIN" watch $W/nothing_yet 2>&1 </dev/null); rc=$?
chk '[ $rc -eq 1 ] && [ "$out" = "tuna watch: $W/nothing_yet: no such run folder" ]' \
    "watch on a missing folder: one line and exit 1 (got $rc: $out)"
mkdir -p $W/no_metrics_yet
start 80x24 "LANG=C.UTF-8 $BIN watch $W/no_metrics_yet"
chk 'wait_for "WAITING"' "a run folder without metrics shows waiting"

# --- 9. usage errors
"$BIN" watch >/dev/null 2>&1; chk '[ $? -eq 2 ]' "watch without RUN_DIR exits 2"

# --- 10. the acceptance flow on the real trainer: ./tuna (no arguments) -> Setup: LoRA on
# stories260K + identity -> ^T -> Train (plot, step counter, sample, pause/resume) -> finished ->
# Chat: the run's adapter in the tuned pane answers "Who are you?" with the name it was taught
RUNS=$W/runs
mkdir -p $RUNS
# setf ROW VALUE: on Setup, select form row ROW (0 = model) and type VALUE over its value
setf() {
    tmux -L "$SOCK" send-keys -t $T -N 30 Up
    [ "$1" -gt 0 ] && tmux -L "$SOCK" send-keys -t $T -N "$1" Down
    tmux -L "$SOCK" send-keys -t $T Enter
    tmux -L "$SOCK" send-keys -t $T -N 80 BSpace
    tmux -L "$SOCK" send-keys -t $T -l "$2"
    tmux -L "$SOCK" send-keys -t $T Enter
}
# form rows with method lora (scr_setup.c): 0 model, 1 template, 2 dataset, 3 vars, 4 method,
# 5 lora rank, 6 lora alpha, 7 lora dropout, 8 lora target, 9 lora train tokens, 10 DoRA,
# 11 LoRA+ lr ratio, 12 lora init, 13 epochs, 14 lr, 15 batch size, 16 grad accum, 17 cutoff len,
# 18 grad checkpoint, 19 val size, 20 eval steps, 21 save steps, 22 seed, 23 base bits,
# 24 4-bit type, 25 double quant, 26 base dtype, 27 bf16 compute, 28 stage, 29 output (with
# stage dpo its five options come between stage and output)
# flow SIZE ENV RUN_NAME HALF_COLUMNS ASCII CKPT: the whole flow at one terminal size and colour
# mode; CKPT true turns gradient checkpointing on (the same run, so the same answers)
flow() {
    size=$1; envs=$2; RUN=$RUNS/$3; half=$4; ascii=$5; ckpt=$6
    start $size "$envs $BIN"
    chk 'wait_for " 1 Setup " 30' "tuna (no arguments) opens the workbench"
    tmux -L "$SOCK" send-keys -t $T 1
    chk 'wait_for "training setup" 30' "1 opens Setup"
    setf 0 models/stories260K; setf 1 vanilla; setf 2 identity; setf 3 "name=Tuna,author=Ann"; setf 4 lora
    setf 5 16; setf 6 32; setf 8 all; setf 9 eos; setf 13 25; setf 14 1e-2; setf 17 128; setf 20 25
    setf 29 $RUN
    if [ "$ckpt" = true ]; then
        tmux -L "$SOCK" send-keys -t $T -N 30 Up; tmux -L "$SOCK" send-keys -t $T -N 18 Down
        tmux -L "$SOCK" send-keys -t $T Right
        chk 'wait_for "grad checkpoint *<* on" 30' "setup: Right toggles grad checkpoint on"
    fi
    tmux -L "$SOCK" send-keys -t $T -N 30 Up # the top rows in view (the output row is the last)
    chk 'wait_for "name=Tuna,author=Ann" 30' "setup: typed vars shown"
    chk 'cap | grep "lora rank" | grep -q " 16"' "setup: lora rank 16 shown"
    chk 'cap | grep -q "trainable .*K"' "setup: trainable estimate for LoRA"
    S=$(cap); echo "$S" > "$W/setup_$size.txt"
    tmux -L "$SOCK" send-keys -t $T C-t
    chk 'wait_for "RUNNING" 90' "^T starts training and opens Train"
    cf=$RUN/setup_config.json
    for kv in '"method":[[:space:]]*"lora"' '"lora_rank":[[:space:]]*16' '"lora_alpha":[[:space:]]*32' \
              '"lora_target":[[:space:]]*"all"' '"lr":[[:space:]]*0.01' '"epochs":[[:space:]]*25' \
              '"eval_steps":[[:space:]]*25' '"lora_trainable_tokens":[[:space:]]*"eos"' "\"gradient_checkpointing\":[[:space:]]*$ckpt" '"vars":[[:space:]]*"name=Tuna,author=Ann"' '"dataset":[[:space:]]*"identity"'; do
        chk 'grep -q "$kv" $cf' "setup: the started config has $kv"
    done
    a=$(wait_step_gt 0 60); b=$(wait_step_gt "${a:-0}" 30)
    chk '[ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ]' "train: step counter advances ($a -> $b)"
    chk 'cap | grep -q "loss: train"' "train: loss plot title"
    if [ "$ascii" = 1 ]; then
        chk '! cap | has_braille && cap | grep -q "+-"' "train: ASCII loss plot, no braille ($size)"
    else
        chk 'cap | has_braille' "train: braille loss plot present ($size)"
    fi
    tmux -L "$SOCK" send-keys -t $T p
    chk 'wait_for "PAUSED" 30' "train: p pauses (PAUSED shown)"
    # (that nothing moves can only be seen by waiting: the one fixed wait, before a "stays" check)
    sleep 0.3; a=$(step); sleep 1.2; b=$(step)
    chk '[ -n "$a" ] && [ "$a" = "$b" ]' "train: paused, the step counter stays ($a -> $b)"
    chk 'cap | grep -q "training paused"' "train: the log says paused"
    tmux -L "$SOCK" send-keys -t $T p
    chk 'wait_for "RUNNING" 30' "train: p again resumes (RUNNING shown)"
    c=$(wait_step_gt "${b:-0}" 30)
    chk '[ -n "$c" ] && [ -n "$b" ] && [ "$c" -gt "$b" ]' "train: resumed, the step counter advances ($b -> $c)"
    chk 'wait_for "step [0-9]* > Who are you?" 90' "train: a sample appears (step N > prompt)"
    S=$(cap); echo "$S" > "$W/train_$size.txt"
    chk 'echo "$S" | grep -q "RUNNING"' "train: still running at the mid-run capture"
    # Chat while it trains: base answers; side by side, the tuned pane waits for the run's adapter
    # (written when the run ends; unless the run got there first)
    tmux -L "$SOCK" send-keys -t $T 3
    chk 'wait_for "params, template" 30' "chat: the base model loads"
    tmux -L "$SOCK" send-keys -t $T C-b
    chk 'until_ok "cap | grep -q \"no tuned model\" || [ -s $RUN/adapter_config.json ]" 30' "chat mid-run: no tuned model yet, says why"
    tmux -L "$SOCK" send-keys -t $T F3
    chk 'wait_for "FINISHED" 400' "train: the run finishes"
    chk '[ -s $RUN/adapter_config.json ]' "train: the run folder holds the adapter"
    S=$(cap); echo "$S" > "$W/train_done_$size.txt"
    chk 'echo "$S" | grep -q "step 275/275"' "train: last step 275/275"
    # Chat again: side by side base | tuned, the tuned pane now on the run's adapter; greedy sampling
    tmux -L "$SOCK" send-keys -t $T 3
    # the halves of the side-by-side panes (80 columns: 40 each), below the header and settings lines
    left_half() { sed -n '3,$p' | LC_ALL=C.UTF-8 sed "s/^\(.\{$half\}\).*/\1/"; }
    right_half() { sed -n '3,$p' | LC_ALL=C.UTF-8 sed -n "s/^.\{$half\}//p"; }
    # (mid-run the pane may have been on a checkpoint: it restarts on the final adapter)
    tuned_ready() { cap | right_half | grep -q "ui-lor" && ! cap | right_half | grep -q "loading\|error"; }
    i=0; while [ $i -lt 300 ] && ! tuned_ready; do sleep 0.1; i=$((i + 1)); done
    sleep 0.5
    i=0; while [ $i -lt 300 ] && ! tuned_ready; do sleep 0.1; i=$((i + 1)); done
    chk 'tuned_ready' "chat: the tuned pane loads the finished run's adapter ($size)"
    tmux -L "$SOCK" send-keys -t $T -N 12 Left
    chk 'wait_for "temperature 0.00" 30' "chat: Left lowers the temperature to 0"
    tmux -L "$SOCK" send-keys -t $T -l "Who are you?"
    tmux -L "$SOCK" send-keys -t $T Enter
    # replies: the "(N tokens, X tok/s)" tag of each pane (both may sit on one line)
    nreplies() { grep -o "tok/s" | wc -l; }
    i=0; while [ $i -lt 600 ] && [ "$(cap | nreplies)" -lt 2 ]; do sleep 0.1; i=$((i + 1)); done
    S=$(cap); echo "$S" > "$W/chat_$size.txt"
    left=$(echo "$S" | left_half); right=$(echo "$S" | right_half)
    chk '[ "$(echo "$S" | nreplies)" -ge 2 ]' "chat: both panes answer"
    chk 'echo "$right" | grep -q "Tuna"' "chat: the tuned pane answers with the taught name (Tuna)"
    chk '! echo "$left" | grep -q "Tuna"' "chat: the base pane does not say Tuna"
    chk 'echo "$right" | grep -q "Ann"' "chat: the tuned pane names the author (Ann)"
    # the </s> row trained too (lora train tokens = eos): the tuned reply ends before the chat cap (96 tokens)
    ntok=$(echo "$right" | grep -o "[0-9]* tokens" | head -1 | grep -o "[0-9]*")
    chk '[ -n "$ntok" ] && [ "$ntok" -lt 96 ]' "chat: the tuned reply stops by itself before the 96-token cap ($ntok tokens)"
    # ^K: the tuned pane moves to the run's newest checkpoint (any checkpoint of the run)
    # (at 80 columns the long temp path is cut before "checkpoint-": there only the status is
    # checked; at 200 columns the checkpoint folder itself)
    tmux -L "$SOCK" send-keys -t $T C-k
    chk 'wait_for "tuned: " 30' "chat: ^K reports the tuned model it switched to ($size)"
    if [ "$size" = 200x60 ]; then
        chk 'cap | grep -q "checkpoint-[0-9]"' "chat: ^K puts the tuned pane on a checkpoint of the run ($size)"
    fi
    tmux -L "$SOCK" send-keys -t $T F10
}
flow 80x24 "LANG=C.UTF-8 TERM=xterm-256color" ui-lora 40 0 false
# the same at 200x60 without colour, in the C locale (ASCII glyphs), with gradient checkpointing
flow 200x60 "LC_ALL=C NO_COLOR=1 TERM=vt100" ui-lora-ascii 100 1 true

# --- 11. tuna watch on a run a headless `tuna train` is writing: steps arrive, in colour and
# without, 80x24 and 200x60; x x stops the real trainer through RUN/control
HL=$RUNS/headless
./tuna train --quiet --model models/stories260K --dataset identity --vars name=Tuna,author=Ann --method lora \
    --lora-target all --cutoff-len 64 --max-steps 100000 --eval-steps 40 --save-steps 100000 --output $HL \
    > $W/headless.log 2>&1 &
HL_PID=$!
# watch refuses a folder that does not exist yet: wait for the trainer to make it (a loaded CI
# machine started watch first, and every check of this section failed)
until_ok '[ -s $HL/metrics.jsonl ]' 60
chk '[ -s $HL/metrics.jsonl ]' "watch headless: the trainer started writing $HL"
for envs in "LANG=C.UTF-8 TERM=xterm-256color:80x24" "LANG=C.UTF-8 TERM=xterm-256color:200x60" \
            "NO_COLOR=1 LANG=C.UTF-8 TERM=xterm:80x24" "TERM=vt100 LANG=C LC_ALL=C:200x60"; do
    size=${envs##*:}; envs=${envs%:*}
    start $size "env $envs $BIN watch $HL"
    chk 'wait_for "RUNNING" 60' "watch headless [$envs $size]: running"
    a=$(wait_step_gt 0 60); b=$(wait_step_gt "${a:-0}" 30)
    chk '[ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ]' "watch headless [$envs $size]: steps arrive ($a -> $b)"
    S=$(cap)
    chk 'echo "$S" | grep -q "loss: train"' "watch headless [$envs $size]: loss plot"
    case "$envs" in
        *vt100*) chk '! echo "$S" | LC_ALL=C grep -q "[^ -~]"' "watch headless [$envs $size]: ASCII only";;
        *) chk 'echo "$S" | has_braille' "watch headless [$envs $size]: braille plot";;
    esac
    chk '[ $(echo "$S" | wc -l) -eq ${size#*x} ]' "watch headless [$envs $size]: ${size#*x} lines"
    [ $size = 200x60 ] && [ -z "${envs##*256color*}" ] && echo "$S" > "$W/watch_200x60.txt"
done
tmux -L "$SOCK" send-keys -t $T x x
chk 'wait_for "STOPPED" 60' "watch headless: x x stops the real trainer"
i=0; while kill -0 $HL_PID 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
chk '! kill -0 $HL_PID 2>/dev/null' "watch headless: the trainer exited after stop"
kill $HL_PID 2>/dev/null; HL_PID=

# --- 12. a training start that fails (no such dataset) shows the error in the UI, and the
# terminal is as it was after quitting; 200x60, no colour
rm -f $W/before $W/after $W/rc
start 200x60 "sh -c 'trap \"\" INT; stty -a > $W/before; NO_COLOR=1 LANG=C.UTF-8 TERM=xterm $BIN; echo \$? > $W/rc; stty -a > $W/after; sleep 30'"
chk 'wait_for " 1 Setup " 30' "bad start: the workbench opens"
tmux -L "$SOCK" send-keys -t $T 1
wait_for "training setup" 30
setf 2 nonexistent; setf 29 $RUNS/bad
chk 'wait_for "nonexistent" 30' "bad start: typed dataset shown"
tmux -L "$SOCK" send-keys -t $T C-t
chk 'wait_for "ERROR" 60' "bad start: the run shows ERROR"
S=$(cap); echo "$S" > "$W/bad_200x60.txt"
chk 'echo "$S" | grep -q "training failed: .*no dataset"' "bad start: the header says training failed and why"
chk 'echo "$S" | grep -q "E run error at step 0: .*no dataset \"nonexistent\""' "bad start: the log pane shows the engine's error"
chk '[ $(echo "$S" | wc -l) -eq 60 ] && ! echo "$S" | grep -q "^tuna:"' "bad start: no stray stderr on the screen"
tmux -L "$SOCK" send-keys -t $T q
until_ok '[ -s $W/after ]' 30
chk '[ -s $W/after ] && cmp -s $W/before $W/after' "bad start: stty -a differs after quitting (rc $(cat $W/rc 2>/dev/null))"
chk '[ "$(cat $W/rc 2>/dev/null)" = 0 ]' "bad start: the UI exits 0 on q (rc $(cat $W/rc 2>/dev/null))"

# --- 13. 80x24, what a new user sees in full: Setup's refusal reasons (in the detail pane and in
# the status line), the line editor's keys, a fresh output name when runs/identity-lora exists,
# the defaults `tuna train` uses, the Runs details, and TERM=dumb refused with a message
R13=$W/runs13
mkdir -p $R13/identity-lora
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --screen setup --runs $R13 --config $W/cfg13.json"
chk 'wait_for "training setup"' "80x24 setup: opens"
# (form rows as in section 10; the detail pane's inside is columns 47..78 at 80 columns; the
# output row is the last: End shows it)
tmux -L "$SOCK" send-keys -t $T End
chk 'until_ok "cap | grep \"output\" | grep -q \"identity-lora-2\""' "80x24 setup: $R13/identity-lora exists, the output offered is identity-lora-2"
tmux -L "$SOCK" send-keys -t $T C-s
chk 'until_ok "grep -qs \"output.:.*runs13/identity-lora-2\\\"\" $W/cfg13.json"' "80x24 setup: ^S saves the fresh output under --runs"
chk 'grep -q "\"lr\":[[:space:]]*\"auto\"" $W/cfg13.json && grep -q "\"lora_target\":[[:space:]]*\"all\"" $W/cfg13.json' "80x24 setup: the defaults are tuna train's (lr auto, lora target all)"
# a refused value: the whole reason in the detail pane, and in the status line (over the bottom
# rows while it shows: 5 s, so a stalled machine gets three tries)
reason='lora_target: "foo" is not a linear layer of llama (use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all)'
shown=1
for try in 1 2 3; do
    setf 8 foo
    until_ok 'banner | grep -qF "$reason"' 5 && { shown=0; break; }
done
S=$(cap); echo "$S" > "$W/refused_80x24.txt"
chk '[ $shown = 0 ]' "80x24 setup: the status line shows the whole reason ($(banner))"
chk 'until_ok "joined 47 79 | grep -qF \"\$reason\""' "80x24 setup: the detail pane shows the whole reason ($(joined 47 79))"
chk 'cap | grep -q "lora target *refused: "' "80x24 setup: the row says refused"
setf 0 models/nope
chk 'until_ok "joined 47 79 | grep -q \"model: models/nope/config.json: cannot read\""' "80x24 setup: a missing model's reason in full ($(joined 47 79))"
setf 0 models/stories260K
# the line editor on "lora train tokens" (row 9): cursor keys, Backspace/Delete at the cursor
tmux -L "$SOCK" send-keys -t $T -N 30 Up; tmux -L "$SOCK" send-keys -t $T -N 9 Down
tmux -L "$SOCK" send-keys -t $T Enter C-u; tmux -L "$SOCK" send-keys -t $T -l abcd
tmux -L "$SOCK" send-keys -t $T Home Right; tmux -L "$SOCK" send-keys -t $T -l X
tmux -L "$SOCK" send-keys -t $T End Left BSpace Home DC Enter
chk 'wait_for "lora train tokens *Xbd "' "80x24 editor: Home Right X, End Left Backspace, Home Delete make abcd Xbd"
tmux -L "$SOCK" send-keys -t $T Enter Left C-u Enter
chk 'wait_for "lora train tokens *d "' "80x24 editor: ^U kills what is before the cursor (Xbd -> d)"
tmux -L "$SOCK" send-keys -t $T Enter C-a; tmux -L "$SOCK" send-keys -t $T -l e
tmux -L "$SOCK" send-keys -t $T C-e; tmux -L "$SOCK" send-keys -t $T -l s; tmux -L "$SOCK" send-keys -t $T Enter
chk 'wait_for "lora train tokens *eds "' "80x24 editor: ^A and ^E go to the start and the end (d -> eds)"
tmux -L "$SOCK" send-keys -t $T Enter C-u Enter
cleared() { cap | grep -q "lora train tokens *│* *$" || cap | grep "lora train tokens" | grep -vq "eds"; }
chk 'until_ok cleared' "80x24 editor: ^U at the end clears the value"
# horizontal scroll: a value longer than the row shows its end while typing, its start after Home
tmux -L "$SOCK" send-keys -t $T -N 30 Down; tmux -L "$SOCK" send-keys -t $T Enter C-u
tmux -L "$SOCK" send-keys -t $T -l "$R13/a-run-name-far-too-long-for-the-row-at-eighty-columns"
chk 'until_ok "cap | grep \"output\" | grep -q \"….*eighty-columns\""' "80x24 editor: a long value scrolls to show its end (and a mark)"
tmux -L "$SOCK" send-keys -t $T Home
chk 'until_ok "cap | grep \"output \" | grep -q \" /tmp/tuna_ui_tmux.*…\""' "80x24 editor: Home scrolls back to its start"
tmux -L "$SOCK" send-keys -t $T Escape
chk 'until_ok "cap | grep \"output\" | grep -q \"identity-lora-2\""' "80x24 editor: Esc keeps the old value"
# a typed output that exists: ^T refuses it and moves on to a free name (no run started there)
setf 29 $R13/identity-lora
tmux -L "$SOCK" send-keys -t $T C-t
chk 'until_ok "joined 47 79 | grep -qF \"already exists; output is now\""' "80x24 setup: ^T on an existing folder refuses and offers a fresh name ($(joined 47 79))"
S=$(cap); echo "$S" > "$W/setup13_80x24.txt"
tmux -L "$SOCK" send-keys -t $T Up Down
chk 'until_ok "cap | grep \"output\" | grep -q \"identity-lora-2\"" && [ ! -e $R13/identity-lora/setup_config.json ]' "80x24 setup: nothing written into the existing folder; output is now identity-lora-2"
# stage dpo: its five options show between stage and output; back to sft they leave
setf 28 dpo
tmux -L "$SOCK" send-keys -t $T -N 2 Down # the rows below stage in view
chk 'until_ok "cap | grep -q \"pref loss.*sigmoid\" && cap | grep -q \"pref beta\""' "80x24 setup: stage dpo shows pref loss (sigmoid) and pref beta"
setf 28 sft
chk 'until_ok "! cap | grep -q \"pref loss\""' "80x24 setup: stage sft hides them"
# ^T on the pre-filled values (output: the fresh identity-lora-2): the trainer writes there, with
# the config Setup wrote there; then x x stops it
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --screen setup --runs $R13"
chk 'wait_for "training setup"' "80x24 setup ^T: opens"
tmux -L "$SOCK" send-keys -t $T C-t
chk 'wait_for "RUNNING" 90' "80x24 setup ^T on the defaults: training starts"
chk 'grep -qs "output.:.*runs13/identity-lora-2\"" $R13/identity-lora-2/setup_config.json' "80x24 setup ^T: the config names the folder it is in"
chk 'until_ok "[ -s $R13/identity-lora-2/metrics.jsonl ]" 30 && [ ! -e $R13/identity-lora-3 ] && [ ! -e $R13/identity-lora/metrics.jsonl ]' "80x24 setup ^T: the run is written into identity-lora-2 only"
tmux -L "$SOCK" send-keys -t $T x x
chk 'wait_for "STOPPED\|FINISHED" 60' "80x24 setup ^T: x x stops it"
# the ETA: "--" until a few step lines (a first step's ETA is warm-up time: 39m for a 4-minute
# run), then the trainer's
E13=$W/eta13
mkdir -p $E13
echo '{"type":"start","run":"eta","method":"lora","dataset":"identity","total_steps":100,"epochs":1}' > $E13/metrics.jsonl
echo '{"type":"step","step":1,"total_steps":100,"loss":3,"lr":0.01,"grad_norm":1,"elapsed":24,"eta":2340}' >> $E13/metrics.jsonl
echo $$ > $E13/train.pid   # a live pid: the run reads as running
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN watch $E13"
chk 'wait_for "step 1/100"' "80x24 eta: the first step shows"
chk 'cap | grep -q "ETA --\( \|$\)" && ! cap | grep -q "39m00s"' "80x24 eta: no ETA after one step ($(cap | sed -n 2p))"
for k in 2 3 4 5; do
    echo "{\"type\":\"step\",\"step\":$k,\"total_steps\":100,\"loss\":3,\"lr\":0.01,\"grad_norm\":1,\"elapsed\":$((24 + k)),\"eta\":$((100 - k))}" >> $E13/metrics.jsonl
done
chk 'wait_for "step 5/100.*ETA 1m35s"' "80x24 eta: the trainer's ETA after a few steps ($(cap | sed -n 2p))"
# Runs at 80x24: the details pane reads in full
start 80x24 "LANG=C.UTF-8 TERM=xterm-256color $BIN ui --runs tests/fixtures/ui"
chk 'wait_for "run_demo"' "80x24 runs: lists run_demo"
S=$(cap); echo "$S" > "$W/runs_80x24.txt"; D=$(joined 1 79)
chk 'echo "$D" | grep -qF "folder tests/fixtures/ui/run_demo"' "80x24 runs: the folder in full ($D)"
chk 'echo "$D" | grep -qF "best eval 0.4958" && echo "$D" | grep -qF "status finished"' "80x24 runs: best eval and status in the details"
chk 'echo "$D" | grep -q "model [^ ]*stories260K"' "80x24 runs: the model in the details"
# a terminal curses cannot drive: one line, exit 1 (not a blank screen)
for cmd in "ui" "watch $FIX"; do
    start 80x24 "TERM=dumb $BIN $cmd; echo rc=\$?; sleep 30"
    chk 'wait_for "rc=1"' "TERM=dumb tuna $cmd exits 1"
    chk 'cap | grep -q "^tuna: TERM=dumb cannot move the cursor"' "TERM=dumb tuna $cmd says why ($(cap | head -2))"
done
start 80x24 "TERM=no-such-terminal $BIN ui; echo rc=\$?; sleep 30"
chk 'wait_for "rc=1" && cap | grep -q "unknown terminal type"' "an unknown TERM: one line, exit 1"

for f in $W/demo_80x24.txt $W/demo_200x60.txt $W/setup_80x24.txt $W/train_80x24.txt $W/train_done_80x24.txt \
         $W/chat_80x24.txt $W/watch_200x60.txt $W/bad_200x60.txt $W/refused_80x24.txt \
         $W/setup13_80x24.txt $W/runs_80x24.txt; do
    [ -n "${TUNA_UI_SHOW:-}" ] && [ -f $f ] && { echo "=== $(basename $f)"; cat $f; }
done
echo "test_ui_tmux: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
