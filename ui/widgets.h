/* widgets.h: drawing helpers over stdscr (frames, clipped UTF-8 text, word wrap, progress bar,
 * plot grids, the help line). They draw UI-owned state passed in and change nothing else.
 * wrap_text is curses-free. UI thread only. */
#ifndef TUNA_UI_WIDGETS_H
#define TUNA_UI_WIDGETS_H

#include <stddef.h>

#include "layout.h"
#include "plot.h"
#include "theme.h"

typedef struct WrapLine {
    size_t off, len; /* bytes of the source text */
} WrapLine;

/* Splits text into lines of at most width display columns, breaking at spaces when it can, else
 * after a '/' (paths), and at '\n' always. Writes up to max lines (lines may be NULL to count). Returns the total. */
int wrap_text(const char *text, int width, WrapLine *lines, int max);
/* Display columns of the first len bytes of UTF-8 s. */
int text_width(const char *s, size_t len);

/* A one-line text editor (Setup's values): UTF-8 bytes, the cursor as a byte offset on a
 * character boundary, and the first byte shown (horizontal scroll). Curses-free: the screen maps
 * keys to EditOps. buf is always NUL-terminated. */
typedef struct LineEdit {
    char buf[512];
    size_t len, cur, off;
} LineEdit;

typedef enum EditOp {
    EDIT_LEFT,        /* Left, ^B */
    EDIT_RIGHT,       /* Right, ^F */
    EDIT_HOME,        /* Home, ^A */
    EDIT_END,         /* End, ^E */
    EDIT_BACKSPACE,   /* the character before the cursor */
    EDIT_DELETE,      /* Delete, ^D: the character under it */
    EDIT_KILL_BEFORE, /* ^U: everything before the cursor (all of it with the cursor at the end) */
    EDIT_KILL_AFTER,  /* ^K: everything from the cursor on */
    EDIT_KILL_WORD,   /* ^W: the word before the cursor (words end at ' ' , / =) */
} EditOp;

/* Sets the text (cut to fit) with the cursor at its end. */
void edit_set(LineEdit *e, const char *s);
/* Inserts n bytes at the cursor; -1 (nothing inserted) when they do not fit. */
int edit_insert(LineEdit *e, const char *s, size_t n);
void edit_op(LineEdit *e, EditOp op);
/* Scrolls (e->off) so that the cursor shows in a field width columns wide, keeping two columns
 * of context on each side when the text runs on; returns the cursor's column in the field. The
 * field shows from e->off; text before it or past the field's end is the caller's to mark. */
int edit_view(LineEdit *e, int width);

void ui_fill(Rect r, Role role);
/* A frame around r with a title at the top-left; focused frames use the title role. */
void ui_frame(Rect r, const char *title, int focused);
/* The inside of a frame. */
Rect ui_inner(Rect r);
/* Prints at most len bytes of s at (y, x), clipped to w columns; returns columns used. */
int ui_text(int y, int x, int w, Role role, const char *s, size_t len);
int ui_str(int y, int x, int w, Role role, const char *s);
int ui_printf(int y, int x, int w, Role role, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
/* A progress bar of width w at (y, x), frac in [0, 1]. */
void ui_bar(int y, int x, int w, double frac);
/* Draws a rasterized plot (h*w cells) at r. */
void ui_plot(Rect r, const PlotCell *cells);
/* The bottom help line built from the key table for screen (SCR_* bit). */
void ui_help_line(Rect r, unsigned screen, int text_input);
/* The full help screen from the key table. */
void ui_help_screen(int rows, int cols, unsigned screen);
/* A message too long for the header line: drawn over the bottom rows of a rows x cols screen
 * (the help line, and above it as many rows as it needs, up to rows / 3), wrapped at spaces to
 * the full width, each row filled with role. */
void ui_message(int rows, int cols, Role role, const char *msg);
/* "terminal too small" page. */
void ui_too_small(int rows, int cols);
/* Seconds as "1h02m", "3m05s", "12s"; "--" for NaN. */
void fmt_duration(double s, char *buf, size_t n);

#endif
