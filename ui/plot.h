/* plot.h: line plots of one or more series into a character cell grid, without curses (nvtop's
 * nvtop_line_plot, split in two: plot_raster here is pure and unit-tested; widgets.c draws the
 * grid). Braille (2x4 dots a cell) when utf8, else ASCII with three sub-rows a cell. Each
 * series is x/y arrays (borrowed, x ascending, e.g. steps); points outside [x_min, x_max] and
 * non-finite values (or <= 0 on a log scale) are skipped. Axes: y tick labels on the left, step
 * labels under the plot, when the grid is big enough. Any thread. */
#ifndef TUNA_UI_PLOT_H
#define TUNA_UI_PLOT_H

#include <stddef.h>
#include <stdint.h>

typedef struct PlotCell {
    uint32_t ch;  /* Unicode code point; ' ' for blank */
    uint8_t role; /* theme Role */
} PlotCell;

typedef struct PlotSeries {
    const double *x, *y; /* (n) each, borrowed */
    size_t n;
    int role;    /* theme Role of its dots */
    int markers; /* also mark every point (sparse series such as eval loss) */
} PlotSeries;

typedef struct PlotSpec {
    const PlotSeries *series;
    int n_series;
    double x_min, x_max; /* visible x range; x_max <= x_min: taken from the data */
    int log_y;           /* log10 y axis (labels show the values) */
    int utf8;            /* braille; else ASCII */
    int axes;            /* draw tick labels (needs h >= 4, w >= 16) */
    int axis_role, label_role;
    const char *marker; /* UTF-8 (or ASCII) marker glyph, one cell; NULL = 'o' */
} PlotSpec;

/* Rasterizes into cells (h*w, row-major). Returns the number of points drawn. */
int plot_raster(const PlotSpec *spec, PlotCell *cells, int h, int w);

/* Formats a tick value into at most width chars ("2.31", "1e-03", "12.3k"). */
void plot_format_value(double v, char *buf, size_t n, int width);

#endif
