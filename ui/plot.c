/* plot.c: pure rasterizer for line plots (see plot.h). */
#include "plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// --- value formatting for tick labels

void plot_format_value(double v, char *buf, size_t n, int width) {
    double a = fabs(v);
    if (v == 0)
        snprintf(buf, n, "0");
    else if (a >= 1e4 && a < 1e7)
        snprintf(buf, n, "%.*fk", a >= 1e5 ? 0 : 1, v / 1e3);
    else if (a >= 1e-2 && a < 1e4)
        snprintf(buf, n, "%.*f", a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3, v);
    else
        snprintf(buf, n, "%.0e", v);
    if ((int)strlen(buf) > width) snprintf(buf, n, "%.0e", v);
}

// --- pixel canvas: braille 2x4 per cell, ASCII 1x3 per cell

typedef struct Canvas {
    int cw, ch;    /* cells */
    int px, py;    /* pixels per cell */
    uint8_t *bits; /* (ch*cw) dot bits per cell */
    uint8_t *role; /* (ch*cw) role of the last series drawn in the cell */
} Canvas;

static const uint8_t braille_bit[4][2] = {{0x01, 0x08}, {0x02, 0x10}, {0x04, 0x20}, {0x40, 0x80}};

static void canvas_set(Canvas *c, int x, int y, int role) {
    if (x < 0 || y < 0 || x >= c->cw * c->px || y >= c->ch * c->py) return;
    int cx = x / c->px, cy = y / c->py, i = cy * c->cw + cx;
    if (c->px == 2)
        c->bits[i] |= braille_bit[y % 4][x % 2];
    else
        c->bits[i] |= (uint8_t)(1u << (y % 3));
    c->role[i] = (uint8_t)role;
}

static void canvas_line(Canvas *c, int x0, int y0, int x1, int y1, int role) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        canvas_set(c, x0, y0, role);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

static uint32_t ascii_glyph(uint8_t bits) {
    switch (bits) {
    case 1: return '\'';
    case 2: return '-';
    case 4: return '_';
    case 3:
    case 6:
    case 7:
    case 5: return '|';
    default: return ' ';
    }
}

static uint32_t utf8_decode1(const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) return u[0];
    if ((u[0] & 0xE0) == 0xC0) return (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
    if ((u[0] & 0xF0) == 0xE0)
        return (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
    return '?';
}

static int point_ok(double x, double y, double x_min, double x_max, int log_y) {
    return isfinite(x) && isfinite(y) && x >= x_min && x <= x_max && (!log_y || y > 0);
}

static void put_text(PlotCell *cells, int w, int row, int col, const char *s, int role) {
    for (int i = 0; s[i] && col + i < w; i++) {
        if (col + i < 0) continue;
        cells[row * w + col + i] = (PlotCell){(uint32_t)(unsigned char)s[i], (uint8_t)role};
    }
}

int plot_raster(const PlotSpec *sp, PlotCell *cells, int h, int w) {
    if (h <= 0 || w <= 0) return 0;
    for (int i = 0; i < h * w; i++)
        cells[i] = (PlotCell){' ', (uint8_t)sp->axis_role};
    // --- x range
    double x_min = sp->x_min, x_max = sp->x_max;
    if (!(x_max > x_min)) {
        x_min = INFINITY;
        x_max = -INFINITY;
        for (int s = 0; s < sp->n_series; s++)
            for (size_t i = 0; i < sp->series[s].n; i++) {
                double x = sp->series[s].x[i];
                if (!isfinite(x)) continue;
                if (x < x_min) x_min = x;
                if (x > x_max) x_max = x;
            }
        if (!isfinite(x_min)) x_min = 0, x_max = 1;
        if (x_max <= x_min) x_max = x_min + 1;
    }
    // --- y range over visible points
    double lo = INFINITY, hi = -INFINITY;
    int n_vis = 0;
    for (int s = 0; s < sp->n_series; s++) {
        const PlotSeries *se = &sp->series[s];
        for (size_t i = 0; i < se->n; i++) {
            if (!point_ok(se->x[i], se->y[i], x_min, x_max, sp->log_y)) continue;
            double t = sp->log_y ? log10(se->y[i]) : se->y[i];
            if (t < lo) lo = t;
            if (t > hi) hi = t;
            n_vis++;
        }
    }
    int axes = sp->axes && h >= 4 && w >= 16;
    int lw = axes ? 7 : 0;     /* y tick label width + axis column */
    int dh = axes ? h - 2 : h; /* data rows */
    int dw = w - lw;           /* data columns */
    if (dh <= 0 || dw <= 0) return 0;
    if (!n_vis) {
        const char *msg = "waiting for data";
        int len = (int)strlen(msg);
        if (len <= w) put_text(cells, w, h / 2, (w - len) / 2, msg, sp->label_role);
        return 0;
    }
    if (hi - lo < 1e-12) {
        double pad = fabs(hi) * 0.05 + (sp->log_y ? 0.05 : 1e-3);
        lo -= pad;
        hi += pad;
    } else {
        double pad = (hi - lo) * 0.04;
        lo -= pad;
        hi += pad;
    }
    // --- canvas
    Canvas c = {dw, dh, sp->utf8 ? 2 : 1, sp->utf8 ? 4 : 3, NULL, NULL};
    c.bits = calloc((size_t)(dw * dh), 1);
    c.role = calloc((size_t)(dw * dh), 1);
    if (!c.bits || !c.role) {
        free(c.bits);
        free(c.role);
        return 0;
    }
    int W = dw * c.px, H = dh * c.py;
    int drawn = 0;
    for (int s = 0; s < sp->n_series; s++) {
        const PlotSeries *se = &sp->series[s];
        int have_prev = 0, px0 = 0, py0 = 0;
        for (size_t i = 0; i < se->n; i++) {
            if (!point_ok(se->x[i], se->y[i], x_min, x_max, sp->log_y)) continue;
            double t = sp->log_y ? log10(se->y[i]) : se->y[i];
            int px = (int)lround((se->x[i] - x_min) / (x_max - x_min) * (W - 1));
            int py = (int)lround((1.0 - (t - lo) / (hi - lo)) * (H - 1));
            if (have_prev)
                canvas_line(&c, px0, py0, px, py, se->role);
            else
                canvas_set(&c, px, py, se->role);
            have_prev = 1;
            px0 = px;
            py0 = py;
            drawn++;
        }
    }
    for (int y = 0; y < dh; y++)
        for (int x = 0; x < dw; x++) {
            int i = y * dw + x;
            if (!c.bits[i]) continue;
            PlotCell *pc = &cells[y * w + lw + x];
            pc->ch = sp->utf8 ? 0x2800u + c.bits[i] : ascii_glyph(c.bits[i]);
            pc->role = c.role[i];
        }
    // --- markers on sparse series, drawn over the lines
    uint32_t mark = sp->marker ? utf8_decode1(sp->marker) : 'o';
    for (int s = 0; s < sp->n_series; s++) {
        const PlotSeries *se = &sp->series[s];
        if (!se->markers) continue;
        for (size_t i = 0; i < se->n; i++) {
            if (!point_ok(se->x[i], se->y[i], x_min, x_max, sp->log_y)) continue;
            double t = sp->log_y ? log10(se->y[i]) : se->y[i];
            int cx = (int)lround((se->x[i] - x_min) / (x_max - x_min) * (W - 1)) / c.px;
            int cy = (int)lround((1.0 - (t - lo) / (hi - lo)) * (H - 1)) / c.py;
            if (cx >= 0 && cx < dw && cy >= 0 && cy < dh)
                cells[cy * w + lw + cx] = (PlotCell){mark, (uint8_t)se->role};
        }
    }
    free(c.bits);
    free(c.role);
    if (!axes) return drawn;
    // --- axes: y ticks at top, middle, bottom (and quarters when tall), x ticks under
    uint32_t vbar = sp->utf8 ? 0x2502 : '|', hbar = sp->utf8 ? 0x2500 : '-';
    uint32_t corner = sp->utf8 ? 0x2514 : '+', tick = sp->utf8 ? 0x2524 : '+';
    for (int y = 0; y < dh; y++)
        cells[y * w + lw - 1] = (PlotCell){vbar, (uint8_t)sp->axis_role};
    for (int x = lw; x < w; x++)
        cells[dh * w + x] = (PlotCell){hbar, (uint8_t)sp->axis_role};
    cells[dh * w + lw - 1] = (PlotCell){corner, (uint8_t)sp->axis_role};
    int nt = dh >= 9 ? 5 : dh >= 3 ? 3 : 2;
    int last_row = -1;
    for (int k = 0; k < nt; k++) {
        int row = (int)lround((double)k * (dh - 1) / (nt - 1));
        if (row == last_row) continue;
        last_row = row;
        /* value at the centre of this row */
        double frac = ((double)row * c.py + (c.py - 1) / 2.0) / (H - 1);
        double t = hi - frac * (hi - lo);
        double v = sp->log_y ? pow(10, t) : t;
        char buf[32];
        plot_format_value(v, buf, sizeof buf, lw - 1);
        int len = (int)strlen(buf);
        put_text(cells, w, row, lw - 1 - len, buf, sp->label_role);
        cells[row * w + lw - 1] = (PlotCell){tick, (uint8_t)sp->axis_role};
    }
    char a[32], m[32], b[32];
    snprintf(a, sizeof a, "%.0f", x_min);
    snprintf(m, sizeof m, "%.0f", (x_min + x_max) / 2);
    snprintf(b, sizeof b, "%.0f", x_max);
    int row = dh + 1;
    put_text(cells, w, row, lw, a, sp->label_role);
    int bl = (int)strlen(b), ml = (int)strlen(m);
    int mc = lw + (dw - ml) / 2;
    if (mc > lw + (int)strlen(a) + 1 && mc + ml < w - bl - 1 && x_max - x_min >= 2)
        put_text(cells, w, row, mc, m, sp->label_role);
    if (w - bl > lw + (int)strlen(a)) put_text(cells, w, row, w - bl, b, sp->label_role);
    return drawn;
}
