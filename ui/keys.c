/* keys.c: the key table (see keys.h). Order is the order of the help line and help screen. */
#include "keys.h"

#include "curses_wrap.h"

#define CTRL(c) ((c)&0x1f)

static const KeyBinding table[] = {
        {KEY_F(1), "F1", "Help", "show this help (any key closes it)", SCR_ALL, 0, ACT_HELP},
        {'?', "?", NULL, "show this help", SCR_ALL, 1, ACT_HELP},
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
        // --- chat
        {CTRL('b'), "^B", "Side", "chat: side-by-side base | tuned on/off", SCR_CHAT, 0, ACT_SIDE},
        {CTRL('l'), "^L", "Clear", "chat: start a new conversation", SCR_CHAT, 0, ACT_CLEAR},
        {CTRL('k'), "^K", "Ckpt",
         "chat: tuned pane on the next checkpoint of the run (final, checkpoint-N, ...)", SCR_CHAT,
         0, ACT_CKPT},
        // --- setup
        {CTRL('s'), "^S", "SaveCfg", "setup: save the configuration as JSON", SCR_SETUP, 0,
         ACT_CFG_SAVE},
        {CTRL('o'), "^O", "LoadCfg", "setup: load a configuration JSON", SCR_SETUP, 0,
         ACT_CFG_LOAD},
        {CTRL('t'), "^T", "Start", "setup: start training with this configuration", SCR_SETUP, 0,
         ACT_START},
        // --- movement (everywhere)
        {KEY_UP, "Up", NULL, "move up / scroll up", SCR_ALL, 0, ACT_UP},
        {KEY_DOWN, "Down", NULL, "move down / scroll down", SCR_ALL, 0, ACT_DOWN},
        {'k', "k", NULL, "move up", SCR_RUNS | SCR_TRAIN, 1, ACT_UP},
        {'j', "j", NULL, "move down", SCR_RUNS | SCR_TRAIN, 1, ACT_DOWN},
        {KEY_PPAGE, "PgUp", NULL, "page up", SCR_ALL, 0, ACT_PGUP},
        {KEY_NPAGE, "PgDn", NULL, "page down", SCR_ALL, 0, ACT_PGDN},
        {KEY_HOME, "Home", NULL, "to the top", SCR_ALL, 0, ACT_HOME},
        {KEY_END, "End", NULL, "to the bottom (follow new lines)", SCR_ALL, 0, ACT_END},
        {KEY_LEFT, "Left", NULL, "decrease / previous choice", SCR_ALL, 0, ACT_LEFT},
        {KEY_RIGHT, "Right", NULL, "increase / next choice", SCR_ALL, 0, ACT_RIGHT},
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
