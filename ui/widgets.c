/* widgets.c: curses drawing helpers (see widgets.h). */
#include "widgets.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

#include "curses_wrap.h"
#include "keys.h"

// --- UTF-8 text measure and wrap (curses-free)

static size_t next_char(const char *s, size_t len, int *width) {
    mbstate_t st;
    memset(&st, 0, sizeof st);
    wchar_t wc;
    size_t k = mbrtowc(&wc, s, len, &st);
    if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
        *width = 1;
        return 1;
    }
    int cw = wcwidth(wc);
    *width = cw < 0 ? 1 : cw;
    return k;
}

int text_width(const char *s, size_t len) {
    int w = 0;
    for (size_t i = 0; i < len;) {
        int cw;
        i += next_char(s + i, len - i, &cw);
        w += cw;
    }
    return w;
}

int wrap_text(const char *text, int width, WrapLine *lines, int max) {
    if (width < 1) width = 1;
    int n = 0;
    size_t len = strlen(text), i = 0;
    while (i < len || (i == len && n == 0)) {
        size_t start = i, brk = 0, slash = 0;
        int col = 0, have_brk = 0;
        while (i < len && text[i] != '\n') {
            int cw;
            size_t k = next_char(text + i, len - i, &cw);
            if (col + cw > width) break;
            if (text[i] == ' ') brk = i, have_brk = 1;
            if (text[i] == '/') slash = i + 1; /* a path breaks after a slash */
            col += cw;
            i += k;
        }
        size_t end = i;
        if (i < len && text[i] != '\n' && have_brk && brk > start)
            end = brk, i = brk + 1;
        else if (i < len && text[i] != '\n' && text[i] != ' ' && slash > start && slash < i)
            end = i = slash;
        else if (i < len && text[i] == '\n')
            i++;
        if (end == start && i == start) i += 1; /* a char wider than width */
        if (lines && n < max) lines[n] = (WrapLine){start, end - start};
        n++;
        if (i >= len) break;
    }
    return n;
}

// --- the line editor (curses-free)

static size_t prev_boundary(const char *s, size_t i) {
    if (!i) return 0;
    i--;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

static size_t next_boundary(const char *s, size_t len, size_t i) {
    if (i >= len) return len;
    i++;
    while (i < len && ((unsigned char)s[i] & 0xC0) == 0x80)
        i++;
    return i;
}

static void edit_cut(LineEdit *e, size_t a, size_t b) { /* removes bytes [a, b) */
    if (b <= a) return;
    memmove(e->buf + a, e->buf + b, e->len - b + 1);
    e->len -= b - a;
    if (e->cur > b)
        e->cur -= b - a;
    else if (e->cur > a)
        e->cur = a;
    if (e->off > e->len) e->off = e->len;
}

void edit_set(LineEdit *e, const char *s) {
    size_t n = strlen(s);
    if (n > sizeof e->buf - 1) {
        n = sizeof e->buf - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) /* not inside a character */
            n--;
    }
    memcpy(e->buf, s, n);
    e->buf[n] = 0;
    e->len = e->cur = n;
    e->off = 0;
}

int edit_insert(LineEdit *e, const char *s, size_t n) {
    if (e->len + n > sizeof e->buf - 1) return -1;
    memmove(e->buf + e->cur + n, e->buf + e->cur, e->len - e->cur + 1);
    memcpy(e->buf + e->cur, s, n);
    e->len += n;
    e->cur += n;
    return 0;
}

static int word_sep(char c) {
    return c == ' ' || c == ',' || c == '/' || c == '=';
}

void edit_op(LineEdit *e, EditOp op) {
    size_t i;
    switch (op) {
    case EDIT_LEFT: e->cur = prev_boundary(e->buf, e->cur); break;
    case EDIT_RIGHT: e->cur = next_boundary(e->buf, e->len, e->cur); break;
    case EDIT_HOME: e->cur = 0; break;
    case EDIT_END: e->cur = e->len; break;
    case EDIT_BACKSPACE: edit_cut(e, prev_boundary(e->buf, e->cur), e->cur); break;
    case EDIT_DELETE: edit_cut(e, e->cur, next_boundary(e->buf, e->len, e->cur)); break;
    case EDIT_KILL_BEFORE: edit_cut(e, 0, e->cur); break;
    case EDIT_KILL_AFTER: edit_cut(e, e->cur, e->len); break;
    case EDIT_KILL_WORD:
        i = e->cur;
        while (i > 0 && word_sep(e->buf[i - 1]))
            i--;
        while (i > 0 && !word_sep(e->buf[i - 1]))
            i--;
        edit_cut(e, i, e->cur);
        break;
    }
}

int edit_view(LineEdit *e, int width) {
    if (width < 2) width = 2;
    int m = width >= 8 ? 2 : 0; /* context columns kept beside the cursor */
    if (e->off > e->cur) e->off = e->cur;
    while (e->off > 0 && text_width(e->buf + e->off, e->cur - e->off) < m)
        e->off = prev_boundary(e->buf, e->off);
    int limit = width - 1 - (e->cur < e->len ? m : 0);
    while (e->off < e->cur && text_width(e->buf + e->off, e->cur - e->off) > limit)
        e->off = next_boundary(e->buf, e->len, e->off);
    while (e->off > 0) { /* the tail fits from further left: show more of it */
        size_t p = prev_boundary(e->buf, e->off);
        if (text_width(e->buf + p, e->len - p) + 1 > width) break;
        e->off = p;
    }
    return text_width(e->buf + e->off, e->cur - e->off);
}

// --- drawing

static void set_role(Role r) {
    attrset((attr_t)theme_attr(r));
}

void ui_fill(Rect r, Role role) {
    set_role(role);
    for (int y = r.y; y < r.y + r.h; y++) {
        move(y, r.x);
        for (int x = 0; x < r.w; x++)
            addch(' ');
    }
}

Rect ui_inner(Rect r) {
    Rect i = {r.y + 1, r.x + 1, r.h - 2, r.w - 2};
    if (i.h < 0) i.h = 0;
    if (i.w < 0) i.w = 0;
    return i;
}

void ui_frame(Rect r, const char *title, int focused) {
    if (r.h < 2 || r.w < 2) return;
    ui_fill(ui_inner(r), ROLE_NORMAL);
    set_role(ROLE_BORDER);
    /* UTF-8: the line-drawing set; otherwise plain ASCII, which every terminal shows */
    int u = theme_glyphs()->utf8;
    chtype ul = u ? ACS_ULCORNER : '+', ur = u ? ACS_URCORNER : '+', ll = u ? ACS_LLCORNER : '+';
    chtype lr = u ? ACS_LRCORNER : '+', hl = u ? ACS_HLINE : '-', vl = u ? ACS_VLINE : '|';
    mvaddch(r.y, r.x, ul);
    mvaddch(r.y, r.x + r.w - 1, ur);
    mvaddch(r.y + r.h - 1, r.x, ll);
    mvaddch(r.y + r.h - 1, r.x + r.w - 1, lr);
    mvhline(r.y, r.x + 1, hl, r.w - 2);
    mvhline(r.y + r.h - 1, r.x + 1, hl, r.w - 2);
    mvvline(r.y + 1, r.x, vl, r.h - 2);
    mvvline(r.y + 1, r.x + r.w - 1, vl, r.h - 2);
    if (title && r.w > 6) {
        char t[256];
        snprintf(t, sizeof t, focused ? "[%s]" : " %s ", title);
        ui_str(r.y, r.x + 2, r.w - 4, focused ? ROLE_TAB_ACTIVE : ROLE_TITLE, t);
    }
}

int ui_text(int y, int x, int w, Role role, const char *s, size_t len) {
    if (w <= 0) return 0;
    set_role(role);
    int col = 0;
    size_t i = 0;
    while (i < len && s[i]) {
        int cw;
        size_t k = next_char(s + i, len - i, &cw);
        if (col + cw > w) break;
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) {
            mvaddch(y, x + col, ' ');
        } else {
            mvaddnstr(y, x + col, s + i, (int)k);
        }
        col += cw;
        i += k;
    }
    return col;
}

int ui_str(int y, int x, int w, Role role, const char *s) {
    return ui_text(y, x, w, role, s, strlen(s));
}

int ui_printf(int y, int x, int w, Role role, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return ui_str(y, x, w, role, buf);
}

void ui_bar(int y, int x, int w, double frac) {
    if (w <= 0) return;
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    const Glyphs *g = theme_glyphs();
    int done = (int)lround(frac * w);
    for (int i = 0; i < w; i++) {
        int d = i < done;
        set_role(d ? ROLE_BAR_DONE : ROLE_BAR_TODO);
        /* with colour the filled part is a coloured background; mono and ASCII show glyphs */
        const char *glyph = d ? (theme_has_color() ? " " : g->bar_done) : g->bar_todo;
        mvaddstr(y, x + i, glyph);
    }
}

static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

void ui_plot(Rect r, const PlotCell *cells) {
    for (int y = 0; y < r.h; y++) {
        move(r.y + y, r.x);
        for (int x = 0; x < r.w; x++) {
            const PlotCell *c = &cells[y * r.w + x];
            char u[8];
            int k = utf8_encode(c->ch, u);
            u[k] = 0;
            set_role((Role)c->role);
            addstr(u);
        }
    }
}

void ui_help_line(Rect r, unsigned screen, int text_input) {
    ui_fill(r, ROLE_KEY_LABEL);
    const char *skipped[ACT_COUNT] = {0};
    int shown[ACT_COUNT] = {0};
    int x = r.x;
    for (const KeyBinding *b = keys_table(); b->key; b++) {
        if (!(b->screens & screen)) continue;
        if (text_input && b->printable) {
            if (b->label) skipped[b->action] = b->label;
            continue;
        }
        const char *label = b->label ? b->label : skipped[b->action];
        if (!label || shown[b->action]) continue;
        int need = (int)strlen(b->name) + (int)strlen(label) + 1;
        if (x + need > r.x + r.w) break;
        shown[b->action] = 1;
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY, b->name);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, label);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, " ");
    }
}

void ui_help_screen(int rows, int cols, unsigned screen) {
    Rect all = {0, 0, rows, cols};
    ui_frame(all, "tuna help: keys (press any key to close)", 1);
    int y = 2;
    for (const KeyBinding *b = keys_table(); b->key && y < rows - 2; b++) {
        if (!(b->screens & screen)) continue;
        if (!b->label && b->key != '?' && b->action != ACT_UP && b->action != ACT_DOWN &&
            b->action != ACT_LEFT && b->action != ACT_RIGHT && b->action != ACT_PGUP &&
            b->action != ACT_PGDN && b->action != ACT_HOME && b->action != ACT_END &&
            b->key != '1' && b->key != '2' && b->key != '3' && b->key != '4')
            continue;
        ui_printf(y, 3, 10, ROLE_KEY, " %-7s ", b->name);
        ui_str(y, 14, cols - 17, ROLE_NORMAL, b->help);
        y++;
    }
    ui_str(rows - 2, 3, cols - 6, ROLE_DIM,
           "Commands go to the trainer through RUN_DIR/control; a background run keeps going after "
           "q.");
}

void ui_message(int rows, int cols, Role role, const char *msg) {
    int w = cols - 2, max = rows / 3;
    if (w < 1 || max < 1) return;
    WrapLine wl[64];
    int n = wrap_text(msg, w, wl, 64);
    if (n > max) n = max;
    if (n > 64) n = 64;
    for (int i = 0; i < n; i++) {
        int y = rows - n + i;
        ui_fill((Rect){y, 0, 1, cols}, role);
        ui_text(y, 1, w, role, msg + wl[i].off, wl[i].len);
    }
}

void ui_too_small(int rows, int cols) {
    erase();
    char msg[128];
    snprintf(msg, sizeof msg, "terminal too small: %dx%d, tuna needs %dx%d", cols, rows,
             LAYOUT_MIN_COLS, LAYOUT_MIN_ROWS);
    int len = (int)strlen(msg);
    int y = rows / 2, x = cols > len ? (cols - len) / 2 : 0;
    ui_str(y, x, cols - x, ROLE_WARN, msg);
    if (y + 1 < rows) ui_str(y + 1, cols > 10 ? (cols - 10) / 2 : 0, cols, ROLE_DIM, "q to quit");
}

void fmt_duration(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "--");
        return;
    }
    long t = lround(s);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, n, "%lds", t);
}
