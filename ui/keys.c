/* keys.c: the key table (see keys.h). Order is the order of the help line and help screen. */
#include "keys.h"

#include <stdio.h>
#include <string.h>

#include "curses_wrap.h"

#define CTRL(c)      ((c)&0x1f)
#define SCR_NOT_CHAT (SCR_SETUP | SCR_TRAIN | SCR_RUNS)

static const KeyBinding table[] = {
        {KEY_F(1), "F1", "Help", "this help (Up/Down/PgUp/PgDn scroll it, other keys close it)",
         SCR_ALL, 0, ACT_HELP},
        {'?', "?", NULL, "this help", SCR_ALL, 1, ACT_HELP},
        {KEY_F(2), "F2", NULL, "Setup: model, template, method, dataset, hyperparameters", SCR_ALL,
         0, ACT_SCR_SETUP},
        {'1', "1", NULL, "Setup screen", SCR_ALL, 1, ACT_SCR_SETUP},
        {KEY_F(3), "F3", NULL, "Train: live loss plot, samples and log of the open run", SCR_ALL, 0,
         ACT_SCR_TRAIN},
        {'2', "2", NULL, "Train screen", SCR_ALL, 1, ACT_SCR_TRAIN},
        {KEY_F(4), "F4", NULL, "Chat with the base model, or base and tuned side by side", SCR_ALL,
         0, ACT_SCR_CHAT},
        {'3', "3", NULL, "Chat screen", SCR_ALL, 1, ACT_SCR_CHAT},
        {KEY_F(5), "F5", NULL, "Runs: every run in the runs folder with its status", SCR_ALL, 0,
         ACT_SCR_RUNS},
        {'4', "4", NULL, "Runs screen", SCR_ALL, 1, ACT_SCR_RUNS},
        // --- train
        {'p', "p", "Pause", "pause or resume training (between steps)", SCR_TRAIN, 1, ACT_PAUSE},
        {'s', "s", "Save", "save a checkpoint now", SCR_TRAIN, 1, ACT_SAVE},
        {'x', "x", "Stop", "stop training (a checkpoint is saved first)", SCR_TRAIN, 1, ACT_STOP},
        {'z', "z", "Zoom", "loss plot: last 50 steps / all steps", SCR_TRAIN, 1, ACT_ZOOM},
        {'l', "l", "Log", "loss plot: log scale on/off", SCR_TRAIN, 1, ACT_LOGSCALE},
        {'\t', "Tab", "Pane", "move the focus between samples and log (arrows scroll it)",
         SCR_TRAIN, 0, ACT_FOCUS},
        // --- runs
        {'\r', "Enter", "Open", "open the run in the Train screen", SCR_RUNS, 0, ACT_OPEN},
        {'\r', "Enter", "Send", "send the message (to both models side by side)", SCR_CHAT, 0,
         ACT_OPEN},
        {'\r', "Enter", "Edit", "edit the field / finish editing", SCR_SETUP, 0, ACT_OPEN},
        {'\n', "Enter", NULL, "same as Enter", SCR_RUNS | SCR_CHAT | SCR_SETUP, 0, ACT_OPEN},
        {KEY_ENTER, "Enter", NULL, "same as Enter", SCR_RUNS | SCR_CHAT | SCR_SETUP, 0, ACT_OPEN},
        {'r', "r", "Rescan", "rescan the runs folder", SCR_RUNS, 1, ACT_REFRESH},
        // --- runs: export (scr_runs.c's key function; in the form Left/Right pick the format,
        // Up/Down the quant, typing edits the output path, Enter starts, Esc closes)
        {'e', "e", "Export", "export the run: hf, peft, gguf or gguf-lora, with a progress bar",
         SCR_RUNS, 1, ACT_NONE},
        {KEY_LEFT, "Left", NULL, "export form: previous format", SCR_RUNS, 0, ACT_LEFT},
        {KEY_RIGHT, "Right", NULL, "export form: next format", SCR_RUNS, 0, ACT_RIGHT},
        {27, "Esc", "Close", "close the export form", SCR_RUNS, 0, ACT_NONE},
        // --- chat (Esc: scr_chat.c's key function)
        {27, "Esc", NULL,
         "leave the message box (then 1-4, q and ? are keys); outside it, stop a streaming reply",
         SCR_CHAT, 0, ACT_NONE},
        {'\t', "Tab", NULL, "back into the message box (so do Enter and any other letter)",
         SCR_CHAT, 0, ACT_FOCUS},
        {CTRL('b'), "^B", "Side", "side by side: base | tuned on/off", SCR_CHAT, 0, ACT_SIDE},
        {CTRL('l'), "^L", "Clear", "start a new conversation", SCR_CHAT, 0, ACT_CLEAR},
        {CTRL('k'), "^K", "Ckpt", "tuned pane on the run's next model: final, checkpoint-N ...",
         SCR_CHAT, 0, ACT_CKPT},
        {CTRL('e'), "^E", "System",
         "edit the system prompt (Enter sets, Esc cancels; empty: template's)", SCR_CHAT, 0,
         ACT_SYSTEM},
        {KEY_UP, "Up", NULL, "pick a setting: temperature, top-p, max tokens, template, system",
         SCR_CHAT, 0, ACT_UP},
        {KEY_DOWN, "Down", NULL, "pick the next setting", SCR_CHAT, 0, ACT_DOWN},
        {KEY_LEFT, "Left", NULL, "lower the setting / previous template", SCR_CHAT, 0, ACT_LEFT},
        {KEY_RIGHT, "Right", NULL, "raise the setting / next template (templates/*.json)", SCR_CHAT,
         0, ACT_RIGHT},
        {KEY_PPAGE, "PgUp", NULL, "scroll the conversation up", SCR_CHAT, 0, ACT_PGUP},
        {KEY_NPAGE, "PgDn", NULL, "scroll the conversation down", SCR_CHAT, 0, ACT_PGDN},
        {KEY_HOME, "Home", NULL, "to the start of the conversation", SCR_CHAT, 0, ACT_HOME},
        {KEY_END, "End", NULL, "to the newest lines", SCR_CHAT, 0, ACT_END},
        // --- setup (Esc and Tab: scr_setup.c's key function)
        {CTRL('s'), "^S", "SaveCfg", "save the configuration as JSON", SCR_SETUP, 0, ACT_CFG_SAVE},
        {CTRL('o'), "^O", "LoadCfg", "load a configuration JSON", SCR_SETUP, 0, ACT_CFG_LOAD},
        {CTRL('t'), "^T", "Start", "start training with this configuration", SCR_SETUP, 0,
         ACT_START},
        {27, "Esc", NULL, "cancel the edit / close the folder browser", SCR_SETUP, 0, ACT_NONE},
        {'\t', "Tab", NULL, "on the model field: browse for a model folder", SCR_SETUP, 0,
         ACT_NONE},
        {KEY_LEFT, "Left", NULL, "previous choice / smaller value", SCR_SETUP, 0, ACT_LEFT},
        {KEY_RIGHT, "Right", NULL, "next choice / larger value", SCR_SETUP, 0, ACT_RIGHT},
        // --- movement (Setup, Train, Runs)
        {KEY_UP, "Up", NULL, "move up / scroll up", SCR_NOT_CHAT, 0, ACT_UP},
        {KEY_DOWN, "Down", NULL, "move down / scroll down", SCR_NOT_CHAT, 0, ACT_DOWN},
        {'k', "k", NULL, "move up", SCR_RUNS | SCR_TRAIN, 1, ACT_UP},
        {'j', "j", NULL, "move down", SCR_RUNS | SCR_TRAIN, 1, ACT_DOWN},
        {KEY_PPAGE, "PgUp", NULL, "page up", SCR_NOT_CHAT, 0, ACT_PGUP},
        {KEY_NPAGE, "PgDn", NULL, "page down", SCR_NOT_CHAT, 0, ACT_PGDN},
        {KEY_HOME, "Home", NULL, "to the top", SCR_NOT_CHAT, 0, ACT_HOME},
        {KEY_END, "End", NULL, "to the bottom (follow new lines)", SCR_NOT_CHAT, 0, ACT_END},
        {'q', "q", "Quit", "quit (training in the background keeps running)", SCR_ALL, 1, ACT_QUIT},
        {KEY_F(10), "F10", NULL, "quit", SCR_ALL, 0, ACT_QUIT},
        {0, NULL, NULL, NULL, 0, 0, ACT_NONE},
};

const KeyBinding *keys_table(void) {
    return table;
}

Action keys_lookup(unsigned screen, int key, int text_input) {
    for (const KeyBinding *b = table; b->key; b++) {
        if (b->key != key || !(b->screens & screen)) continue;
        if (text_input && b->printable) return ACT_NONE;
        return b->action;
    }
    return ACT_NONE;
}

// --- the help screen's text

#define HELP_KEY_COL 12 /* the sentence column: two spaces, the keys, a space */

/* Typing on screens with text fields, and the note at the end. */
static const char *help_intro(unsigned screen) {
    if (screen & SCR_CHAT)
        return "Typing goes into the message box. Esc leaves the box: then 1-4, q and ? are keys "
               "as on the other screens, and Tab, Enter or any other letter goes back in. F1-F5 "
               "and F10 work everywhere.";
    if (screen & SCR_SETUP)
        return "Enter edits the selected field (or flips an on/off one): while editing, typing "
               "goes into it, Enter keeps the value and Esc cancels. In the folder browser (Tab "
               "on the model field) a letter jumps to a folder. F1-F5 and F10 work everywhere.";
    return NULL;
}

static const char help_note[] = "Commands go to the trainer through RUN_DIR/control; a "
                                "background run keeps going after q.";

/* Appends line (at most width bytes) to out; returns the new count. */
static int put_line(char (*out)[KEYS_HELP_COLS], int n, int max, const char *line) {
    if (out && n < max) snprintf(out[n], KEYS_HELP_COLS, "%s", line);
    return n + 1;
}

/* Wraps text at spaces into lines of width columns, the first starting with head (indent
 * columns wide, as every following line's indent). */
static int put_wrapped(char (*out)[KEYS_HELP_COLS], int n, int max, const char *head, int indent,
                       const char *text, int width) {
    int room = width - indent;
    const char *p = text;
    int first = 1;
    while (first || *p) {
        size_t len = strlen(p);
        if ((int)len > room) {
            len = (size_t)room;
            while (len > 0 && p[len] != ' ')
                len--;
            if (!len) len = (size_t)room; /* a word longer than the line: cut it */
        }
        char line[KEYS_HELP_COLS];
        snprintf(line, sizeof line, "%-*.*s%.*s", indent, indent, first ? head : "", (int)len, p);
        n = put_line(out, n, max, line);
        p += len;
        while (*p == ' ')
            p++;
        first = 0;
    }
    return n;
}

int keys_help_lines(unsigned screen, int width, char (*out)[KEYS_HELP_COLS], int max) {
    if (width < 30) width = 30;
    if (width > KEYS_HELP_COLS - 1) width = KEYS_HELP_COLS - 1;
    int n = 0;
    const char *intro = help_intro(screen);
    if (intro) {
        n = put_wrapped(out, n, max, "", 0, intro, width);
        n = put_line(out, n, max, "");
    }
    int done[ACT_COUNT] = {0};
    for (const KeyBinding *b = table; b->key; b++) {
        if (!(b->screens & screen)) continue;
        if (b->action != ACT_NONE) {
            if (done[b->action]) continue;
            done[b->action] = 1;
        }
        /* every key of this action on this screen, each name once ("F2 1", "q F10") */
        char keys[64] = "";
        for (const KeyBinding *k = b; k->key; k++) {
            if (!(k->screens & screen) || k->action != b->action) continue;
            if (k != b && b->action == ACT_NONE) break;
            size_t kl = strlen(keys), nl = strlen(k->name);
            int dup = 0;
            for (const char *q = strstr(keys, k->name); q; q = strstr(q + 1, k->name))
                if ((q == keys || q[-1] == ' ') && (q[nl] == ' ' || !q[nl])) dup = 1;
            if (dup || kl + (kl ? 1 : 0) + nl > HELP_KEY_COL - 3) continue;
            snprintf(keys + kl, sizeof keys - kl, "%s%s", kl ? " " : "", k->name);
        }
        char head[72]; /* "  " and keys (at most HELP_KEY_COL - 3 bytes, but 64 to the compiler) */
        snprintf(head, sizeof head, "  %s", keys);
        n = put_wrapped(out, n, max, head, HELP_KEY_COL, b->help, width);
    }
    n = put_line(out, n, max, "");
    return put_wrapped(out, n, max, "", 0, help_note, width);
}
