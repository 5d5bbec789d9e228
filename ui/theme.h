/* theme.h: colours by semantic role (htop's ColorElements) and the glyph set. Three schemes:
 * default (terminal background), light (TUNA_THEME=light) and mono, chosen when the terminal has
 * no colours, NO_COLOR is set or --no-color was given; mono uses bold/reverse/dim only. Glyphs are
 * UTF-8 (braille plots, block progress bars) in a UTF-8 locale and ASCII otherwise (TUNA_ASCII=1
 * forces ASCII). The role enum is curses-free so the plot rasterizer can use it; theme_init and
 * theme_attr need curses to be up. UI thread only. */
#ifndef TUNA_UI_THEME_H
#define TUNA_UI_THEME_H

typedef enum Role {
    ROLE_NORMAL,
    ROLE_HEADER,     /* top line background */
    ROLE_TAB,        /* inactive screen tab */
    ROLE_TAB_ACTIVE, /* the screen being shown */
    ROLE_BORDER,     /* panel frames */
    ROLE_TITLE,      /* panel titles */
    ROLE_LABEL,      /* "loss", "lr" ... */
    ROLE_VALUE,      /* numbers next to labels */
    ROLE_DIM,        /* secondary text, masked tokens */
    ROLE_AXIS,       /* plot axes and tick labels */
    ROLE_SERIES_1,   /* train loss */
    ROLE_SERIES_2,   /* eval loss */
    ROLE_SERIES_3,   /* lr / grad norm */
    ROLE_BAR_DONE,   /* progress bar, done part */
    ROLE_BAR_TODO,   /* progress bar, remaining part */
    ROLE_OK,         /* running / finished */
    ROLE_WARN,       /* paused / stopped / warnings */
    ROLE_ERROR,      /* errors */
    ROLE_KEY,        /* key name in the help line */
    ROLE_KEY_LABEL,  /* what the key does */
    ROLE_SELECTED,   /* cursor row in lists and forms */
    ROLE_USER,       /* chat: the user's messages */
    ROLE_ASSISTANT,  /* chat: the model's messages */
    ROLE_COUNT
} Role;

typedef struct Glyphs {
    int utf8;             /* braille plots and block bars allowed */
    const char *bar_done; /* one cell of a filled progress bar */
    const char *bar_todo; /* one cell of an empty one */
    const char *marker;   /* eval points in plots */
    const char *ellipsis; /* truncated text */
    const char *bullet;   /* list bullet */
} Glyphs;

/* 0 when TERM names a terminal curses can draw the workbench on (it can move the cursor and
 * clear the screen); else -1 and why, one line ("TERM=dumb cannot move the cursor ..."). Before
 * initscr(), which would exit on an unknown TERM or draw blank on a dumb one. */
int theme_term_check(char *why, unsigned long n);
/* Starts colours (if want_color and the terminal can) and picks glyphs. After initscr(). Also
 * teaches curses the Home/End sequences terminals send under another TERM (tmux's ESC[1~, ESC[4~,
 * xterm's ESC[H, ESC[F), which would otherwise arrive as Esc and letters. */
void theme_init(int want_color);
/* The curses attributes (colour pair + bold/dim/reverse) for a role. */
unsigned long theme_attr(Role role);
int theme_has_color(void);
const Glyphs *theme_glyphs(void);
/* 1 when the current locale's codeset is UTF-8 (and TUNA_ASCII is not set). Curses-free. */
int theme_locale_utf8(void);

#endif
