#!/bin/sh
# test_ui_chat_tmux.sh: the Chat screen's keys and the F1 help at 80x24, on the real binary in
# tmux (a private server, send-keys, capture-pane), against a run trained here for 2 steps with
# --template chatml:
#   - F1 on each screen shows every help line (q, Left/Right ...) and scrolls to the last one;
#   - in Chat, typing 1 q ? goes into the message box; Esc leaves it, and then 1/2 switch
#     screens and q quits (exit 0); F2-F5 switch while typing, and the tabs say so;
#   - Chat's template is the run's (chatml), --template overrides it, Left/Right change it, ^E
#     sets the system prompt; a status too long for the header is shown whole on the bottom line;
#   - the KV cache setting (f32, f16, q8_0) reaches the worker, and each reply's tag names it.
# Every wait polls the screen for the text it expects, with a timeout (no fixed sleeps), so a
# busy machine only makes it slower. Run from the repo root.
# Prints "test_ui_chat_tmux: N passed, N failed, N skipped"; exits non-zero on any failure.
set -u
pass=0; fail=0; skip=0
ok()   { pass=$((pass + 1)); }
bad()  { fail=$((fail + 1)); echo "FAIL test_ui_chat_tmux: $*"; [ -n "${TUNA_UI_DEBUG:-}" ] && cap; }
chk()  { if eval "$1"; then ok; else bad "$2"; fi; }
SOCK=tuna_ui_chat_$$   # a private tmux server: other sessions (and their kill-server) stay apart
T=tuna_ui_chat_$$
W=$(mktemp -d /tmp/tuna_ui_chat.XXXXXX)
cleanup() {
    tmux -L "$SOCK" kill-server 2>/dev/null
    [ -n "${TUNA_UI_KEEP:-}" ] && { echo "test_ui_chat_tmux: kept $W"; return; }
    rm -rf "$W"
}
trap cleanup EXIT

if ! command -v tmux >/dev/null; then
    echo "SKIP test_ui_chat_tmux: tmux not installed"
    echo "test_ui_chat_tmux: 0 passed, 0 failed, 1 skipped"; exit 0
fi
BIN=${TUNA_BIN:-./tuna}
if ! "$BIN" watch --help >/dev/null 2>&1; then
    echo "FAIL test_ui_chat_tmux: $BIN has no watch command (make first)"
    echo "test_ui_chat_tmux: 0 passed, 1 failed, 0 skipped"; exit 1
fi

# a keeper session holds the private server up between sessions
tmux -L "$SOCK" new-session -d -s keeper -x 80 -y 24 "sleep 100000"
NSESS=0
# start SIZE CMD: a fresh session of that size running CMD (through sh, env allowed)
start() {
    tmux -L "$SOCK" kill-session -t $T 2>/dev/null
    NSESS=$((NSESS + 1)); T=tuna_ui_chat_$$_$NSESS   # a fresh name: kill-session is not synchronous
    rm -f "$W/rc"
    # the exit status goes to a file: tmux's #{pane_dead_status} was sometimes never set (1 run
    # in 3 on a busy machine: the pane dead, its status empty after 30 s)
    tmux -L "$SOCK" new-session -d -s $T -x "${1%x*}" -y "${1#*x}" "$2; echo \$? > $W/rc.tmp && mv $W/rc.tmp $W/rc"
    tmux -L "$SOCK" set-option -t $T remain-on-exit on >/dev/null 2>&1
}
cap()  { tmux -L "$SOCK" capture-pane -p -t $T; }
keys() { tmux -L "$SOCK" send-keys -t $T "$@"; }
# wait_for REGEX [SECONDS]: polls until the screen matches (default 10 s)
wait_for() {
    i=0; n=$(( ${2:-10} * 20 ))
    while [ $i -lt $n ]; do cap | grep -q -- "$1" && return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
# wait_gone REGEX [SECONDS]: polls until the screen no longer matches
wait_gone() {
    i=0; n=$(( ${2:-10} * 20 ))
    while [ $i -lt $n ]; do cap | grep -q -- "$1" || return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
dead()   { [ "$(tmux -L "$SOCK" display -p -t $T '#{pane_dead}' 2>/dev/null)" = 1 ]; }
# status: the exit status of the command the session ran (polled, up to 30 s; 128+N for a
# signal N, as sh reports it)
status() {
    i=0
    while [ $i -lt 600 ]; do
        [ -s "$W/rc" ] && { cat "$W/rc"; return; }
        sleep 0.05; i=$((i + 1))
    done
}
wait_dead() {
    i=0; n=$(( ${1:-10} * 20 ))
    while [ $i -lt $n ]; do dead && return 0; sleep 0.05; i=$((i + 1)); done
    return 1
}
bottom() { cap | tail -1; }

# --- the fixture: a LoRA run trained 2 steps with the chatml template
RUN=$W/runs/chatml
if ! "$BIN" train --quiet --model models/stories260K --dataset identity --vars name=Tuna,author=Ann \
        --template chatml --max-steps 2 --eval-steps 0 --output "$RUN" > "$W/train.log" 2>&1; then
    cat "$W/train.log" | tail -5
    bad "the 2-step chatml run did not train"
fi
chk 'grep -q "\"template\":[[:space:]]*\"chatml\"" $RUN/train_config.json' "the run records template chatml"
chk '[ -s $RUN/adapter_config.json ]' "the run holds its adapter"

ENV="LANG=C.UTF-8 TERM=xterm-256color"

# --- 1. F1 help on every screen at 80x24: every line, scrolled to the end
# help_pages SCREEN: pages through the open help with PgDn, checking that the windows "lines A-B
# of N" join up and end at N; writes every page to $W/help_SCREEN.txt
help_pages() {
    name=$1; out=$W/help_$1.txt; : > "$out"
    wait_for "tuna help: " 5 || { bad "$name: F1 opens the help"; return; }
    S=$(cap); echo "$S" >> "$out"
    range=$(echo "$S" | tail -1 | sed -n 's/.*lines \([0-9]*\)-\([0-9]*\) of \([0-9]*\).*/\1 \2 \3/p')
    if [ -z "$range" ]; then
        chk 'echo "$S" | head -1 | grep -q "any key closes"' "$name: the help fits one page, or says how to scroll"
        keys Down
        chk 'wait_gone "tuna help: " 5' "$name: a one-page help closes on any key (Down)"
        keys F1
        wait_for "tuna help: " 5
        return
    fi
    first=${range%% *}; rest=${range#* }; last=${rest% *}; total=${rest#* }; pages=0
    chk '[ "$first" = 1 ]' "$name: the help opens at its first line ($first)"
    while [ "$last" -lt "$total" ] && [ $pages -lt 10 ]; do
        keys PgDn
        wait_gone "lines $first-$last of" 5
        S=$(cap); echo "$S" >> "$out"
        r=$(echo "$S" | tail -1 | sed -n 's/.*lines \([0-9]*\)-\([0-9]*\) of .*/\1 \2/p')
        a=${r% *}; b=${r#* }
        chk '[ -n "$r" ] && [ "$a" -le $((last + 1)) ] && [ "$b" -gt "$last" ]' "$name: PgDn shows the next lines ($first-$last, then $r)"
        [ -n "$r" ] || break
        first=$a; last=$b; pages=$((pages + 1))
    done
    chk '[ "$last" = "$total" ]' "$name: scrolling reaches the last help line ($last of $total)"
    keys PgUp PgUp PgUp
    chk 'wait_for "lines 1-" 5' "$name: PgUp scrolls the help back to the top"
}
start 80x24 "$ENV $BIN watch $RUN"
chk 'wait_for "FINISHED" 20' "watch: the run shows as finished"
for scr in Train Setup Chat Runs; do
    case $scr in
        Setup) keys F2; wait_for "training setup" 5;;
        Train) keys F3; wait_for "loss: train" 5;;
        Chat)  keys F4; wait_for "message (" 5;;
        Runs)  keys F5; wait_for "details" 5;;
    esac
    keys F1
    help_pages $scr
    H=$(cat $W/help_$scr.txt)
    chk 'echo "$H" | grep -q "q F10 *quit (training in the background keeps running)"' "$scr help: q F10 quit, in full"
    chk 'echo "$H" | grep -q "F2 1 *Setup: model, template, method, dataset, hyperparameters"' "$scr help: F2 1 Setup, in full"
    chk 'echo "$H" | grep -q "F5 4 *Runs: every run in the runs folder with its status"' "$scr help: F5 4 Runs, in full"
    chk 'echo "$H" | grep -q "going after q\\."' "$scr help: the closing note, in full"
    case $scr in
        Setup) chk 'echo "$H" | grep -q "Left *previous choice / smaller value" && echo "$H" | grep -q "Right *next choice / larger value"' "Setup help: Left/Right in full";;
        Chat)  chk 'echo "$H" | grep -q "Left *lower the setting / previous template" && echo "$H" | grep -q "Right *raise the setting / next template"' "Chat help: Left/Right in full"
               chk 'echo "$H" | grep -q "Esc *leave the message box"' "Chat help: Esc leaves the box"
               chk 'echo "$H" | grep -q "Typing goes into the message box"' "Chat help: what typing does";;
        Train) chk 'echo "$H" | grep -q "p *pause or resume training"' "Train help: p pause";;
        Runs)  chk 'echo "$H" | grep -q "r *rescan the runs folder"' "Runs help: r rescan";;
    esac
    keys Escape
    chk 'wait_gone "tuna help: " 5' "$scr: a key closes the help"
done
echo "$(cat $W/help_Chat.txt)" > "$W/help_chat_80x24.txt"

# --- 2. Chat keys: typing goes into the box; Esc leaves it; then 1/2 switch and q quits
start 80x24 "$ENV $BIN watch $RUN"
chk 'wait_for "FINISHED" 20' "watch: the run opens"
keys 3
chk 'wait_for "params, template" 30' "3 opens Chat and the model loads"
chk 'cap | head -1 | grep -q " F2 Setup  F3 Train  F4 Chat  F5 Runs "' "chat, typing: the tabs name F2-F5"
chk 'bottom | grep -q "EnterSend EscLeave box"' "chat, typing: the key line says Enter sends, Esc leaves"
keys -l "a1q?2"
chk 'wait_for "a1q?2" 5' "chat: 1 q ? 2 type into the message box"
chk '! dead && cap | head -1 | grep -q "F4 Chat"' "chat: q typed did not quit, 1 and 2 did not switch"
keys Escape
chk 'wait_for "TabType 1-4Screen ?Help qQuit" 5' "chat: Esc leaves the box (the key line says 1-4, ?, q)"
chk 'cap | head -1 | grep -q " 1 Setup  2 Train  3 Chat  4 Runs "' "chat, outside the box: the tabs name 1-4"
keys 2
chk 'wait_for "loss: train" 5' "chat: Esc then 2 opens Train"
keys 3
chk 'wait_for "EnterSend" 5 && cap | grep -q "a1q?2"' "3 back to Chat: in the box again, the typed text kept"
keys Escape
wait_for "TabType" 5
keys 1
chk 'wait_for "training setup" 5' "chat: Esc then 1 opens Setup"
keys 3
wait_for "EnterSend" 5
keys Escape
wait_for "TabType" 5
keys Tab
chk 'wait_for "EnterSend" 5' "chat: Tab goes back into the box"
keys Escape
wait_for "TabType" 5
keys -l "b"
chk 'wait_for "a1q?2b" 5 && bottom | grep -q "EnterSend"' "chat: a letter outside the box goes back in and types"
keys F5
chk 'wait_for "details" 5' "chat: F5 opens Runs while typing"
keys F4
wait_for "EnterSend" 5
keys Escape
wait_for "TabType" 5
keys q
chk 'wait_dead 10' "chat: Esc then q quits"
st=$(status)
chk '[ "$st" = 0 ]' "chat: q exits 0 ($st)"

# --- 3. templates: the run's (chatml); --template wins; Left/Right change it; ^E system prompt
start 80x24 "$ENV $BIN watch $RUN"
wait_for "FINISHED" 20
keys 3
chk 'wait_for "params, template chatml" 30' "chat: the base pane uses the run's template (chatml)"
chk 'cap | sed -n 2p | grep -q "template chatml"' "chat: the settings line shows template chatml"
keys C-b
chk 'wait_for "tuned" 5' "chat: ^B opens side by side"
# the tuned pane (right half) on the run's adapter, with the run's template
right() { cap | sed -n '3,$p' | LC_ALL=C.UTF-8 sed -n 's/^.\{40\}//p'; }
i=0; while [ $i -lt 600 ] && ! right | grep -q "template chatml"; do sleep 0.05; i=$((i + 1)); done
chk 'right | grep -q "template chatml"' "chat: the tuned pane loads the adapter with template chatml"
chk 'right | grep -q "chatml:"' "chat: the tuned pane names the run (the end of its path)"
chk 'cap | head -1 | grep -q "\.\.\..*runs/chatml *$"' "chat: the header keeps the end of the run folder"
S=$(cap); echo "$S" > "$W/chat_side_80x24.txt"
keys -l "Who are you?"
keys Enter
i=0; while [ $i -lt 600 ] && [ "$(cap | grep -o "tok/s" | wc -l)" -lt 2 ]; do sleep 0.05; i=$((i + 1)); done
chk '[ "$(cap | grep -o "tok/s" | wc -l)" -ge 2 ]' "chat: both panes answer with the chatml prompt"
S=$(cap); echo "$S" > "$W/chat_reply_80x24.txt"
# ^K: the status names the model whole, on the bottom line when the header is too narrow
keys C-k
chk 'wait_for "tuned: " 10' "chat: ^K reports the tuned model"
chk 'cap | grep -qF "tuned: $RUN"' "chat: the ^K status shows the whole path at 80 columns"
S=$(cap); echo "$S" > "$W/chat_status_80x24.txt"
# the template setting: Up twice from temperature (system, then template); Right: the next file
keys Up Up
keys Right
chk 'wait_for "template default" 5' "chat: Right picks the next template (default)"
chk 'wait_for "params, template default" 10' "chat: the model reloads the picked template"
keys Left
chk 'wait_for "params, template chatml" 10' "chat: Left goes back to chatml"
# ^E: the box edits the system prompt
keys C-e
chk 'wait_for "system prompt (Enter sets" 5' "chat: ^E edits the system prompt"
keys -l "Be brief."
keys Enter
chk 'wait_for "system: Be brief\\." 5' "chat: the settings line shows the system prompt"
chk 'wait_for "message (Enter sends" 5' "chat: Enter sets it and the box is the message again"
S=$(cap); echo "$S" > "$W/chat_system_80x24.txt"
# a prompt longer than the line is cut with "...", and ^E shows it whole in the box
keys C-e
wait_for "system prompt (Enter sets" 5
keys -l " Answer every question in one word."
keys Enter
chk 'wait_for "system: Be brief\\. A.*\\.\\.\\.$" 5' "chat: a long system prompt is cut with ..."
keys C-e
chk 'wait_for "Be brief\\. Answer every question in one word\\." 5' "chat: ^E shows the whole system prompt"
keys Escape
chk 'wait_for "message (Enter sends" 5' "chat: Esc cancels the system prompt edit"
keys F10
chk 'wait_dead 10' "chat: F10 quits while typing"

# --- 3b. the KV cache's type: Down three times from temperature, Right: f16; each reply's tag
# says which cache it used; Left twice from f16: q8_0, which stories260K's heads of 8 cannot take
start 80x24 "$ENV $BIN ui --model models/stories260K"
wait_for "Setup" 20
keys 3
chk 'wait_for "params, template" 30' "chat (KV cache): the model loads"
keys Escape
keys Down Down Down
keys Right
chk 'wait_for "KV f16  template" 5' "chat: Right on the KV cache setting picks f16"
keys Tab
keys -l "Once upon a time"
keys Enter
chk 'wait_for "tok/s, KV f16)" 60' "chat: the reply says it used the f16 KV cache"
keys Escape
keys Left Left
chk 'wait_for "KV q8_0  template" 5' "chat: Left twice from f16 picks q8_0"
keys Tab
keys -l "Hi"
keys Enter
chk 'wait_for "KV f16 (no q8_0: heads of 8, not of 32)" 60' "chat: q8_0 on heads of 8 keeps f16 and says why"
S=$(cap); echo "$S" > "$W/chat_kv_80x24.txt"
keys F10
chk 'wait_dead 10' "chat (KV cache): F10 quits"

# --- 4. --template overrides the run's template
start 80x24 "$ENV $BIN watch $RUN --template vanilla"
wait_for "FINISHED" 20
keys 3
chk 'wait_for "params, template vanilla" 30' "chat: --template vanilla wins over the run's chatml"
keys F10
wait_dead 10

# --- 5. tuna ui --tuned RUN: the tuned run's template without an open run
start 80x24 "$ENV $BIN ui --screen chat --tuned $RUN"
chk 'wait_for "params, template chatml" 30' "ui --tuned RUN: Chat uses that run's template"
keys F10
wait_dead 10
# a run trained with --default-system: Chat's system prompt is the run's
RUN2=$W/runs/sys
"$BIN" train --quiet --model models/stories260K --dataset identity --template chatml \
    --default-system "Swim fast." --max-steps 1 --eval-steps 0 --output "$RUN2" > "$W/train2.log" 2>&1
start 80x24 "$ENV $BIN ui --screen chat --tuned $RUN2"
chk 'wait_for "system: Swim fast\\." 30' "ui --tuned RUN: the run's default_system is Chat's system prompt"
keys F10
wait_dead 10

# --- 6. headless interactive `tuna chat` on a terminal: Ctrl-D ends it with 0, Ctrl-C at the
# prompt with 130 (the exit status of a SIGINT, as the README's exit codes say)
start 80x24 "$ENV $BIN chat models/stories260K --template vanilla"
chk 'wait_for "^>" 30' "tuna chat: the prompt on a terminal"
keys C-d
chk 'wait_dead 10' "tuna chat: Ctrl-D at the prompt ends it"
st=$(status)
chk '[ "$st" = 0 ]' "tuna chat: Ctrl-D exits 0 ($st)"
start 80x24 "$ENV $BIN chat models/stories260K --template vanilla"
wait_for "^>" 30
keys C-c
chk 'wait_dead 10' "tuna chat: Ctrl-C at the prompt ends it"
st=$(status)
chk '[ "$st" = 130 ]' "tuna chat: Ctrl-C at the prompt exits 130 ($st)"

for f in $W/help_chat_80x24.txt $W/chat_side_80x24.txt $W/chat_reply_80x24.txt $W/chat_status_80x24.txt \
         $W/chat_system_80x24.txt $W/chat_kv_80x24.txt; do
    [ -n "${TUNA_UI_SHOW:-}" ] && [ -f $f ] && { echo "=== $(basename $f)"; cat $f; }
done
echo "test_ui_chat_tmux: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
