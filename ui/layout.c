/* layout.c: pure size -> rectangles functions (see layout.h). */
#include "layout.h"

#include <string.h>

static Rect rect(int y, int x, int h, int w) {
    Rect r = {y, x, h > 0 ? h : 0, w > 0 ? w : 0};
    if (!r.h || !r.w) r.h = r.w = 0;
    return r;
}

int rect_overlap(Rect a, Rect b) {
    if (!a.h || !a.w || !b.h || !b.w) return 0;
    return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

int rect_inside(Rect r, int rows, int cols) {
    if (!r.h || !r.w) return 1;
    return r.y >= 0 && r.x >= 0 && r.y + r.h <= rows && r.x + r.w <= cols;
}

static int too_small(int rows, int cols) {
    return rows < LAYOUT_MIN_ROWS || cols < LAYOUT_MIN_COLS;
}

int layout_frame(int rows, int cols, FrameLayout *out) {
    memset(out, 0, sizeof *out);
    if (too_small(rows, cols)) return LAYOUT_TOO_SMALL;
    out->header = rect(0, 0, 1, cols);
    out->body = rect(1, 0, rows - 2, cols);
    out->help = rect(rows - 1, 0, 1, cols);
    return 0;
}

int layout_train(int rows, int cols, TrainLayout *out) {
    memset(out, 0, sizeof *out);
    if (too_small(rows, cols)) return LAYOUT_TOO_SMALL;
    out->header = rect(0, 0, 1, cols);
    out->progress = rect(1, 0, 1, cols);
    out->help = rect(rows - 1, 0, 1, cols);
    int top = 2, bh = rows - 3;
    /* The plot gets a bit more than half; the lower panes keep at least 6 rows (4 lines). */
    int upper = bh * 58 / 100;
    if (bh - upper < 6) upper = bh - 6;
    int lower = bh - upper;
    int sw = cols >= 160 ? 40 : cols >= 110 ? 32 : 26;
    out->plot = rect(top, 0, upper, cols - sw);
    int stats_h = upper < 9 ? upper : 9;
    out->stats = rect(top, cols - sw, stats_h, sw);
    int rest = upper - stats_h;
    if (rest >= 14) {
        out->lr_plot = rect(top + stats_h, cols - sw, rest / 2, sw);
        out->gn_plot = rect(top + stats_h + rest / 2, cols - sw, rest - rest / 2, sw);
    } else if (rest >= 7) {
        out->lr_plot = rect(top + stats_h, cols - sw, rest, sw);
    } else {
        out->stats.h = upper; /* too little room for a plot: the stats box takes it */
    }
    int y2 = top + upper;
    int samples_w = cols * 55 / 100;
    out->samples = rect(y2, 0, lower, samples_w);
    out->log = rect(y2, samples_w, lower, cols - samples_w);
    return 0;
}

void layout_split_plot(Rect *plot, Rect *second) {
    Rect p = *plot;
    memset(second, 0, sizeof *second);
    if (p.w >= 70) {
        int lw = p.w * 55 / 100;
        *plot = rect(p.y, p.x, p.h, lw);
        *second = rect(p.y, p.x + lw, p.h, p.w - lw);
    } else if (p.h >= 14) {
        *plot = rect(p.y, p.x, p.h / 2, p.w);
        *second = rect(p.y + p.h / 2, p.x, p.h - p.h / 2, p.w);
    }
}

int layout_chat(int rows, int cols, int side_by_side, ChatLayout *out) {
    memset(out, 0, sizeof *out);
    if (too_small(rows, cols)) return LAYOUT_TOO_SMALL;
    out->header = rect(0, 0, 1, cols);
    out->settings = rect(1, 0, 1, cols);
    out->help = rect(rows - 1, 0, 1, cols);
    int input_h = rows >= 40 ? 5 : 3;
    out->input = rect(rows - 1 - input_h, 0, input_h, cols);
    int th = rows - 3 - input_h;
    if (side_by_side) {
        out->left = rect(2, 0, th, cols / 2);
        out->right = rect(2, cols / 2, th, cols - cols / 2);
    } else {
        out->left = rect(2, 0, th, cols);
    }
    return 0;
}

int layout_split(int rows, int cols, int list_min_w, SplitLayout *out) {
    memset(out, 0, sizeof *out);
    if (too_small(rows, cols)) return LAYOUT_TOO_SMALL;
    out->header = rect(0, 0, 1, cols);
    out->help = rect(rows - 1, 0, 1, cols);
    int lw = cols * 55 / 100;
    if (lw < list_min_w) lw = list_min_w;
    if (lw > cols - 20) lw = cols - 20;
    out->list = rect(1, 0, rows - 2, lw);
    out->detail = rect(1, lw, rows - 2, cols - lw);
    return 0;
}

int layout_runs(int rows, int cols, int n_runs, SplitLayout *out) {
    if (cols >= LAYOUT_RUNS_SIDE_COLS) return layout_split(rows, cols, 58, out);
    memset(out, 0, sizeof *out);
    if (too_small(rows, cols)) return LAYOUT_TOO_SMALL;
    out->header = rect(0, 0, 1, cols);
    out->help = rect(rows - 1, 0, 1, cols);
    int body = rows - 2, lh = n_runs + 3; /* frame, column titles, one row per run */
    if (lh > body / 2) lh = body / 2;
    if (lh < 5) lh = 5;
    out->list = rect(1, 0, lh, cols);
    out->detail = rect(1 + lh, 0, body - lh, cols);
    return 0;
}
