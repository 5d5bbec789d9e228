/* test_ui_keys.c: the key table without a terminal: no key bound twice on one screen, lookup
 * while a text field has the keyboard (Chat's message box), and the help screen's lines: every
 * line fits the width (80 columns and narrower), every key of every screen is listed (q and
 * Left/Right included), and keys of one action share one line ("F2 1", "q F10"). */
#include <stdio.h>
#include <string.h>

#include "../ui/curses_wrap.h"
#include "../ui/keys.h"
#include "harness.h"

#define MAXL 128

static char lines[MAXL][KEYS_HELP_COLS];

/* The line that lists key name in its key column ("  F2 1      ..."), or -1. */
static int key_line(int n, const char *name) {
    size_t k = strlen(name);
    for (int i = 0; i < n; i++) {
        const char *l = lines[i];
        if (l[0] != ' ' || l[1] != ' ' || l[2] == ' ') continue;
        for (const char *p = l + 2; p < l + 11 && *p && *p != ' ';) {
            if (!strncmp(p, name, k) && (p[k] == ' ' || !p[k])) return i;
            p = strchr(p, ' ');
            if (!p) break;
            p++;
        }
    }
    return -1;
}

static void test_table(void) {
    const KeyBinding *t = keys_table();
    int dup = 0;
    for (int i = 0; t[i].key; i++)
        for (int j = i + 1; t[j].key; j++)
            if (t[i].key == t[j].key && (t[i].screens & t[j].screens)) dup++;
    CHECK(dup == 0, "%d keys bound twice on one screen", dup);
    /* Chat: in the box, 1-4/q/? type; out of it they act; F-keys act in both */
    CHECK(keys_lookup(SCR_CHAT, '1', 1) == ACT_NONE &&
                  keys_lookup(SCR_CHAT, '1', 0) == ACT_SCR_SETUP,
          "chat: 1 types in the box, switches outside");
    CHECK(keys_lookup(SCR_CHAT, 'q', 1) == ACT_NONE && keys_lookup(SCR_CHAT, 'q', 0) == ACT_QUIT,
          "chat: q types in the box, quits outside");
    CHECK(keys_lookup(SCR_CHAT, '?', 1) == ACT_NONE && keys_lookup(SCR_CHAT, '?', 0) == ACT_HELP,
          "chat: ? types in the box, helps outside");
    for (int f = 2; f <= 5; f++)
        CHECK((int)keys_lookup(SCR_CHAT, KEY_F(f), 1) == (int)ACT_SCR_SETUP + (f - 2),
              "chat: F%d switches screens while typing", f);
    CHECK(keys_lookup(SCR_CHAT, KEY_F(10), 1) == ACT_QUIT, "chat: F10 quits while typing");
    CHECK(keys_lookup(SCR_CHAT, 27, 1) == ACT_NONE, "chat: Esc reaches the screen");
    CHECK(keys_lookup(SCR_CHAT, '\t', 0) == ACT_FOCUS, "chat: Tab goes back into the box");
    CHECK(keys_lookup(SCR_CHAT, 5 /* ^E */, 1) == ACT_SYSTEM, "chat: ^E edits the system prompt");
    CHECK(keys_lookup(SCR_SETUP, '\t', 0) == ACT_NONE && keys_lookup(SCR_SETUP, 27, 1) == ACT_NONE,
          "setup: Tab and Esc reach the screen");
    CHECK(keys_lookup(SCR_TRAIN, KEY_UP, 0) == ACT_UP && keys_lookup(SCR_CHAT, KEY_UP, 1) == ACT_UP,
          "Up everywhere");
}

static void test_help(void) {
    static const unsigned scr[] = {SCR_SETUP, SCR_TRAIN, SCR_CHAT, SCR_RUNS};
    static const char *const names[] = {"setup", "train", "chat", "runs"};
    for (int w = 40; w <= 200; w += 4) {
        for (int s = 0; s < 4; s++) {
            int n = keys_help_lines(scr[s], w, lines, MAXL);
            CHECK(n > 5 && n <= MAXL, "%s %d: %d help lines", names[s], w, n);
            if (n > MAXL) n = MAXL;
            CHECK(keys_help_lines(scr[s], w, NULL, 0) == n, "%s %d: counting agrees", names[s], w);
            int wide = 0;
            for (int i = 0; i < n; i++)
                wide += (int)strlen(lines[i]) > w;
            CHECK(wide == 0, "%s at %d columns: %d help lines wider", names[s], w, wide);
            /* every key bound on the screen has a line */
            int missing = 0;
            for (const KeyBinding *b = keys_table(); b->key; b++)
                if ((b->screens & scr[s]) && key_line(n, b->name) < 0) {
                    if (w == 80) fprintf(stderr, "%s: %s not in the help\n", names[s], b->name);
                    missing++;
                }
            CHECK(missing == 0, "%s at %d columns: %d keys missing from the help", names[s], w,
                  missing);
            CHECK(key_line(n, "q") >= 0 && key_line(n, "q") == key_line(n, "F10"),
                  "%s %d: q and F10 on one line", names[s], w);
            CHECK(key_line(n, "F2") >= 0 && key_line(n, "F2") == key_line(n, "1"),
                  "%s %d: F2 and 1 on one line", names[s], w);
        }
    }
    int n = keys_help_lines(SCR_CHAT, 76, lines, MAXL);
    CHECK(key_line(n, "Left") >= 0 && key_line(n, "Right") >= 0 && key_line(n, "Esc") >= 0 &&
                  key_line(n, "Tab") >= 0 && key_line(n, "^E") >= 0,
          "chat help lists Left, Right, Esc, Tab and ^E");
    CHECK(strstr(lines[0], "Typing goes into the message box") != NULL,
          "chat help starts with what typing does");
    n = keys_help_lines(SCR_TRAIN, 76, lines, MAXL);
    CHECK(key_line(n, "Left") < 0 && key_line(n, "Esc") < 0,
          "train help does not promise Left/Right or Esc");
    CHECK(key_line(n, "p") >= 0 && key_line(n, "Tab") >= 0, "train help lists p and Tab");
}

int main(void) {
    test_table();
    test_help();
    return test_report("test_ui_keys");
}
