/* layout.h: the screen layouts as pure functions of the terminal size (rows x cols -> named
 * rectangles), in the manner of nvtop's compute_sizes_from_layout. No curses: the rectangles are
 * plain values, and tests/test_ui_layout.c checks every size from 20x10 to 300x100 for overlaps
 * and for rectangles leaving the screen. A rectangle with h == 0 or w == 0 is hidden.
 * Below LAYOUT_MIN_ROWS x LAYOUT_MIN_COLS every function returns LAYOUT_TOO_SMALL and the caller
 * draws the "terminal too small" screen. Any thread. */
#ifndef TUNA_UI_LAYOUT_H
#define TUNA_UI_LAYOUT_H

#define LAYOUT_MIN_ROWS  18
#define LAYOUT_MIN_COLS  60
#define LAYOUT_TOO_SMALL (-1)

typedef struct Rect {
    int y, x, h, w;
} Rect;

/* Every screen: a header line with the tabs, a body, a key help line at the bottom. */
typedef struct FrameLayout {
    Rect header, body, help;
} FrameLayout;

/* Train: progress line, loss plot beside a stats box (and, when tall enough, lr and grad-norm
 * plots under it), then samples beside the log. */
typedef struct TrainLayout {
    Rect header, progress, plot, stats, lr_plot, gn_plot, samples, log, help;
} TrainLayout;

/* Chat: a settings line, one transcript (or two side by side), the input box. */
typedef struct ChatLayout {
    Rect header, settings, left, right, input, help;
} ChatLayout;

/* Runs and Setup: a list (or form) beside a detail pane. */
typedef struct SplitLayout {
    Rect header, list, detail, help;
} SplitLayout;

int layout_frame(int rows, int cols, FrameLayout *out);
int layout_train(int rows, int cols, TrainLayout *out);
/* A preference run's second plot (the reward margin) beside the loss plot: *plot keeps the left
 * part and *second gets the right one when plot is at least 70 columns wide, else the lower half
 * when it is at least 14 rows high; otherwise *second is hidden (h 0) and *plot is unchanged.
 * Each part keeps room for a frame and a plot (6 rows, 30 columns). */
void layout_split_plot(Rect *plot, Rect *second);
int layout_chat(int rows, int cols, int side_by_side, ChatLayout *out);
int layout_split(int rows, int cols, int list_min_w, SplitLayout *out);
/* Runs: the list beside the details from LAYOUT_RUNS_SIDE_COLS columns on; narrower, the list
 * on top (as tall as n_runs needs, at most half the body, at least 5 rows) over the details at
 * the full width, so that a run's folder and model read in full at 80x24. */
#define LAYOUT_RUNS_SIDE_COLS 120
int layout_runs(int rows, int cols, int n_runs, SplitLayout *out);

/* 1 when the two rectangles share a cell (hidden rectangles share none). */
int rect_overlap(Rect a, Rect b);
/* 1 when r is hidden or lies inside rows x cols. */
int rect_inside(Rect r, int rows, int cols);

#endif
