/* theme.c: role -> colour pair tables per scheme, mono fallback, glyphs by locale. */
#include "theme.h"

#include <langinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "curses_wrap.h"
#include <ncursesw/term.h> /* setupterm: after curses.h, and its macros stay in this file */

typedef struct RoleStyle {
    short fg, bg;     /* -1 = terminal default */
    unsigned long at; /* extra attributes */
} RoleStyle;

// --- schemes: designated initializers by role, as htop's CRT_colorSchemes

static const RoleStyle scheme_default[ROLE_COUNT] = {
        [ROLE_NORMAL] = {-1, -1, 0},
        [ROLE_HEADER] = {COLOR_BLACK, COLOR_CYAN, 0},
        [ROLE_TAB] = {COLOR_BLACK, COLOR_CYAN, 0},
        [ROLE_TAB_ACTIVE] = {COLOR_WHITE, COLOR_BLUE, A_BOLD},
        [ROLE_BORDER] = {COLOR_BLUE, -1, 0},
        [ROLE_TITLE] = {COLOR_CYAN, -1, A_BOLD},
        [ROLE_LABEL] = {-1, -1, 0},
        [ROLE_VALUE] = {COLOR_WHITE, -1, A_BOLD},
        [ROLE_DIM] = {-1, -1, A_DIM},
        [ROLE_AXIS] = {COLOR_BLUE, -1, 0},
        [ROLE_SERIES_1] = {COLOR_GREEN, -1, 0},
        [ROLE_SERIES_2] = {COLOR_YELLOW, -1, A_BOLD},
        [ROLE_SERIES_3] = {COLOR_MAGENTA, -1, 0},
        [ROLE_BAR_DONE] = {COLOR_BLACK, COLOR_GREEN, 0},
        [ROLE_BAR_TODO] = {COLOR_BLUE, -1, A_DIM},
        [ROLE_OK] = {COLOR_GREEN, -1, A_BOLD},
        [ROLE_WARN] = {COLOR_YELLOW, -1, A_BOLD},
        [ROLE_ERROR] = {COLOR_RED, -1, A_BOLD},
        [ROLE_KEY] = {COLOR_BLACK, COLOR_CYAN, 0},
        [ROLE_KEY_LABEL] = {-1, -1, 0},
        [ROLE_SELECTED] = {COLOR_BLACK, COLOR_CYAN, 0},
        [ROLE_USER] = {COLOR_CYAN, -1, A_BOLD},
        [ROLE_ASSISTANT] = {-1, -1, 0},
};

static const RoleStyle scheme_light[ROLE_COUNT] = {
        [ROLE_NORMAL] = {COLOR_BLACK, COLOR_WHITE, 0},
        [ROLE_HEADER] = {COLOR_WHITE, COLOR_BLUE, 0},
        [ROLE_TAB] = {COLOR_WHITE, COLOR_BLUE, 0},
        [ROLE_TAB_ACTIVE] = {COLOR_BLACK, COLOR_YELLOW, A_BOLD},
        [ROLE_BORDER] = {COLOR_BLUE, COLOR_WHITE, 0},
        [ROLE_TITLE] = {COLOR_BLUE, COLOR_WHITE, A_BOLD},
        [ROLE_LABEL] = {COLOR_BLACK, COLOR_WHITE, 0},
        [ROLE_VALUE] = {COLOR_BLACK, COLOR_WHITE, A_BOLD},
        [ROLE_DIM] = {COLOR_BLACK, COLOR_WHITE, A_DIM},
        [ROLE_AXIS] = {COLOR_BLUE, COLOR_WHITE, 0},
        [ROLE_SERIES_1] = {COLOR_GREEN, COLOR_WHITE, A_BOLD},
        [ROLE_SERIES_2] = {COLOR_RED, COLOR_WHITE, A_BOLD},
        [ROLE_SERIES_3] = {COLOR_MAGENTA, COLOR_WHITE, 0},
        [ROLE_BAR_DONE] = {COLOR_WHITE, COLOR_GREEN, 0},
        [ROLE_BAR_TODO] = {COLOR_BLUE, COLOR_WHITE, 0},
        [ROLE_OK] = {COLOR_GREEN, COLOR_WHITE, A_BOLD},
        [ROLE_WARN] = {COLOR_MAGENTA, COLOR_WHITE, A_BOLD},
        [ROLE_ERROR] = {COLOR_RED, COLOR_WHITE, A_BOLD},
        [ROLE_KEY] = {COLOR_WHITE, COLOR_BLUE, 0},
        [ROLE_KEY_LABEL] = {COLOR_BLACK, COLOR_WHITE, 0},
        [ROLE_SELECTED] = {COLOR_WHITE, COLOR_BLUE, 0},
        [ROLE_USER] = {COLOR_BLUE, COLOR_WHITE, A_BOLD},
        [ROLE_ASSISTANT] = {COLOR_BLACK, COLOR_WHITE, 0},
};

/* Mono: readable on a vt100 with attributes alone. */
static const unsigned long mono_attrs[ROLE_COUNT] = {
        [ROLE_HEADER] = A_REVERSE,
        [ROLE_TAB] = A_REVERSE,
        [ROLE_TAB_ACTIVE] = A_BOLD,
        [ROLE_TITLE] = A_BOLD,
        [ROLE_VALUE] = A_BOLD,
        [ROLE_DIM] = A_DIM,
        [ROLE_SERIES_2] = A_BOLD,
        [ROLE_BAR_DONE] = A_REVERSE,
        [ROLE_OK] = A_BOLD,
        [ROLE_WARN] = A_BOLD,
        [ROLE_ERROR] = A_BOLD | A_UNDERLINE,
        [ROLE_KEY] = A_REVERSE,
        [ROLE_SELECTED] = A_REVERSE,
        [ROLE_USER] = A_BOLD,
};

static unsigned long role_attr[ROLE_COUNT];
static int color_on;

static const Glyphs glyphs_utf8 = {
        1, "\xe2\x96\x88", "\xe2\x96\x91", "\xe2\x80\xa2", "\xe2\x80\xa6", "\xe2\x80\xa2"};
static const Glyphs glyphs_ascii = {0, "#", ".", "o", "~", "*"};
static const Glyphs *glyphs = &glyphs_ascii;

int theme_locale_utf8(void) {
    const char *force = getenv("TUNA_ASCII");
    if (force && *force && strcmp(force, "0")) return 0;
    const char *cs = nl_langinfo(CODESET);
    return cs && (!strcmp(cs, "UTF-8") || !strcmp(cs, "utf8"));
}

int theme_term_check(char *why, unsigned long n) {
    const char *t = getenv("TERM");
    if (!t || !*t) {
        snprintf(why, n, "TERM is not set: the workbench needs one, e.g. TERM=xterm-256color");
        return -1;
    }
    int err = 0;
    TERMINAL *prev = cur_term;
    if (setupterm(t, STDOUT_FILENO, &err) != OK) {
        snprintf(why, n, "TERM=%.100s: unknown terminal type; try TERM=xterm-256color", t);
        return -1;
    }
    const char *cup = tigetstr("cup"), *clr = tigetstr("clear");
    int hard = tigetflag("hc") > 0 || tigetflag("gn") > 0; /* hard copy / generic */
    int ok = cup && cup != (char *)-1 && clr && clr != (char *)-1 && !hard;
    del_curterm(cur_term);
    set_curterm(prev);
    if (!ok) {
        snprintf(why, n,
                 "TERM=%.100s cannot move the cursor: run the workbench in a terminal such as "
                 "xterm-256color",
                 t);
        return -1;
    }
    return 0;
}

void theme_init(int want_color) {
    /* Home and End as other terminals send them (under tmux with TERM=xterm-256color, say) */
    static const struct {
        const char *seq;
        int key;
    } keys[] = {{"\033[1~", KEY_HOME}, {"\033[4~", KEY_END}, {"\033[7~", KEY_HOME},
                {"\033[8~", KEY_END},  {"\033[H", KEY_HOME}, {"\033[F", KEY_END},
                {"\033OH", KEY_HOME},  {"\033OF", KEY_END}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (key_defined(keys[i].seq) == 0) define_key(keys[i].seq, keys[i].key);
    const char *nc = getenv("NO_COLOR");
    if (nc && *nc) want_color = 0;
    color_on = want_color && has_colors();
    glyphs = theme_locale_utf8() ? &glyphs_utf8 : &glyphs_ascii;
    if (!color_on) {
        for (int r = 0; r < ROLE_COUNT; r++)
            role_attr[r] = mono_attrs[r];
        return;
    }
    start_color();
    use_default_colors();
    const char *t = getenv("TUNA_THEME");
    const RoleStyle *s = t && !strcmp(t, "light") ? scheme_light : scheme_default;
    for (int r = 0; r < ROLE_COUNT; r++) {
        short pair = (short)(r + 1);
        if (pair >= COLOR_PAIRS) {
            role_attr[r] = mono_attrs[r];
            continue;
        }
        init_pair(pair, s[r].fg, s[r].bg);
        role_attr[r] = COLOR_PAIR(pair) | s[r].at;
    }
}

unsigned long theme_attr(Role role) {
    return role >= 0 && role < ROLE_COUNT ? role_attr[role] : 0;
}

int theme_has_color(void) {
    return color_on;
}

const Glyphs *theme_glyphs(void) {
    return glyphs;
}
