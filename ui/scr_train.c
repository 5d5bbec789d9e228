/* scr_train.c: the Train screen: progress, loss plot (train + eval), lr and grad-norm plots,
 * stats, samples and log of the open run. Reads the History only; commands go to the source. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/xalloc.h"
#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "plot.h"
#include "widgets.h"

#define ETA_MIN_STEPS 4 /* step lines seen before the ETA shows */

// --- actions

static int send_command(App *app, UiCommand cmd, const char *what) {
    History *h = app->hist;
    if (!app->src) {
        app_status(app, ROLE_WARN, "no run open: pick one in Runs (4)");
        return UI_REDRAW;
    }
    if (h->status >= RUN_FINISHED) {
        app_status(app, ROLE_WARN, "run %s: cannot %s", run_status_name(h->status), what);
        return UI_REDRAW;
    }
    char err[512] = "";
    if (source_command(app->src, cmd, err, sizeof err))
        app_status(app, ROLE_ERROR, "%s failed: %s", what, err);
    else
        app_status(app, ROLE_NORMAL, "%s requested", what);
    return UI_REDRAW;
}

static int pane_scroll(int *v, int d) {
    *v += d;
    if (*v < 0) *v = 0;
    return UI_REDRAW;
}

static int train_action(App *app, Action a) {
    TrainView *tv = &app->tv;
    int *sc = tv->focus ? &tv->log_scroll : &tv->sample_scroll;
    /* samples scroll down from the newest (top); the log scrolls up from the newest (bottom) */
    int dir = tv->focus ? -1 : 1;
    switch (a) {
    case ACT_PAUSE:
        if (app->hist->status == RUN_PAUSED) return send_command(app, CMD_RESUME, "resume");
        return send_command(app, CMD_PAUSE, "pause");
    case ACT_SAVE: return send_command(app, CMD_SAVE, "save");
    case ACT_STOP:
        if (ui_now() < tv->stop_armed_until) {
            tv->stop_armed_until = 0;
            return send_command(app, CMD_STOP, "stop");
        }
        if (!app->src || app->hist->status >= RUN_FINISHED)
            return send_command(app, CMD_STOP, "stop");
        tv->stop_armed_until = ui_now() + 3;
        app_status(app, ROLE_WARN, "press x again to stop training (it saves first)");
        return UI_REDRAW;
    case ACT_ZOOM: tv->zoom_all = !tv->zoom_all; return UI_REDRAW;
    case ACT_LOGSCALE: tv->log_y = !tv->log_y; return UI_REDRAW;
    case ACT_FOCUS: tv->focus = !tv->focus; return UI_REDRAW;
    case ACT_UP: return pane_scroll(sc, -dir);
    case ACT_DOWN: return pane_scroll(sc, dir);
    case ACT_PGUP: return pane_scroll(sc, -dir * 5);
    case ACT_PGDN: return pane_scroll(sc, dir * 5);
    case ACT_HOME: *sc = tv->focus ? 1 << 20 : 0; return UI_REDRAW;
    case ACT_END: *sc = tv->focus ? 0 : 1 << 20; return UI_REDRAW;
    default: return 0;
    }
}

static int train_tick(App *app) {
    double now = ui_now();
    if (app->hist->version != app->tv.drawn_version) return UI_REDRAW;
    /* once a second while live, so "updated Ns ago" moves */
    if (app->hist->status == RUN_RUNNING && now - app->tv.last_live_draw >= 1.0) {
        app->tv.last_live_draw = now;
        return UI_REDRAW;
    }
    return 0;
}

// --- drawing

static void draw_progress(App *app, Rect r) {
    History *h = app->hist;
    ui_fill(r, ROLE_NORMAL);
    char left[128], right[256], el[32], eta[32];
    long step = h->step < 0 ? 0 : h->step;
    if (h->total_steps > 0)
        snprintf(left, sizeof left, " step %ld/%ld ", step, h->total_steps);
    else
        snprintf(left, sizeof left, " step %ld ", step);
    fmt_duration(h->elapsed, el, sizeof el);
    /* the trainer's ETA (its window leaves out the first step and paused time); "--" until a
       few steps have shown one (a first step's ETA is compile-and-warm-up time, far too long) */
    int live = h->status == RUN_RUNNING || h->status == RUN_PAUSED;
    fmt_duration(live && h->step_x.n >= ETA_MIN_STEPS ? h->eta
                 : h->status == RUN_FINISHED          ? 0
                                                      : (double)NAN,
                 eta, sizeof eta);
    char ep[48] = "";
    if (isfinite(h->epoch))
        snprintf(ep, sizeof ep, "epoch %.2f%s", h->epoch, isfinite(h->epochs) ? "" : "");
    if (isfinite(h->epoch) && isfinite(h->epochs))
        snprintf(ep, sizeof ep, "epoch %.2f/%g", h->epoch, h->epochs);
    double frac = h->total_steps > 0 ? (double)step / (double)h->total_steps : 0;
    snprintf(right, sizeof right, " %3.0f%%  %s  elapsed %s  ETA %s ", frac * 100, ep, el, eta);
    Role sr = h->status == RUN_RUNNING || h->status == RUN_FINISHED ? ROLE_OK
              : h->status == RUN_ERROR                              ? ROLE_ERROR
                                                                    : ROLE_WARN;
    char st[32];
    snprintf(st, sizeof st, "%s", run_status_name(h->status));
    for (char *p = st; *p; p++)
        *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    int x = r.x;
    x += ui_str(r.y, x, r.w, sr, st);
    x += ui_str(r.y, x, r.w - x, ROLE_VALUE, left);
    int rw = (int)strlen(right);
    int bw = r.w - x - rw;
    if (bw < 10) {
        rw = r.w - x - 10;
        bw = 10;
    }
    if (bw > 0) ui_bar(r.y, x, bw, frac);
    if (rw > 0) ui_str(r.y, x + bw, rw, ROLE_LABEL, right);
}

static void plot_series(Rect frame, const char *title, const Ring *xs, const Ring *ys,
                        const Ring *ex, const Ring *ey, int role, double x_min, double x_max,
                        int log_y, int axes) {
    ui_frame(frame, title, 0);
    Rect in = ui_inner(frame);
    if (in.h <= 0 || in.w <= 0) return;
    size_t n = xs->n, m = ex ? ex->n : 0;
    double *buf = xmalloc((2 * n + 2 * m + 1) * sizeof(double));
    double *x = buf, *y = buf + n, *xe = buf + 2 * n, *ye = buf + 2 * n + m;
    ring_linear(xs, x);
    ring_linear(ys, y);
    if (m) {
        ring_linear(ex, xe);
        ring_linear(ey, ye);
    }
    PlotSeries s[2] = {{x, y, n, role, 0}, {xe, ye, m, ROLE_SERIES_2, 1}};
    const Glyphs *g = theme_glyphs();
    PlotSpec sp = {s,       m ? 2 : 1, x_min,     x_max,     log_y,
                   g->utf8, axes,      ROLE_AXIS, ROLE_AXIS, g->marker};
    PlotCell *cells = xmalloc((size_t)(in.h * in.w) * sizeof *cells);
    plot_raster(&sp, cells, in.h, in.w);
    ui_plot(in, cells);
    free(cells);
    free(buf);
}

static void draw_stats(App *app, Rect r) {
    History *h = app->hist;
    ui_frame(r, "stats", 0);
    Rect in = ui_inner(r);
    int lw = 11, y = in.y;
    char v[600];
#define ROW(label, ...)                                                                            \
    do {                                                                                           \
        if (y < in.y + in.h) {                                                                     \
            ui_str(y, in.x + 1, lw, ROLE_LABEL, label);                                            \
            snprintf(v, sizeof v, __VA_ARGS__);                                                    \
            ui_str(y, in.x + 1 + lw, in.w - lw - 1, ROLE_VALUE, v);                                \
            y++;                                                                                   \
        }                                                                                          \
    } while (0)
    if (isfinite(h->loss))
        ROW("loss", "%.4f", h->loss);
    else
        ROW("loss", "--");
    if (isfinite(h->eval_loss)) {
        if (h->best_eval_step >= 0 && in.w >= 30)
            ROW("eval loss", "%.4f (best %.4f @%ld)", h->eval_loss, h->best_eval,
                h->best_eval_step);
        else
            ROW("eval loss", "%.4f", h->eval_loss);
    } else
        ROW("eval loss", "--");
    if (h->margin_x.n || h->emargin_x.n) { /* a preference stage: its loss has no perplexity */
        char tr[40] = "--", ev[40] = "";
        if (isfinite(h->reward_acc)) snprintf(tr, sizeof tr, "%.3f", h->reward_acc);
        if (isfinite(h->eval_reward_acc))
            snprintf(ev, sizeof ev, " (eval %.3f)", h->eval_reward_acc);
        ROW("reward acc", "%s%s", tr, ev);
    } else if (isfinite(h->perplexity))
        ROW("perplexity", h->perplexity < 1e6 ? "%.2f" : "%.3g", h->perplexity);
    else
        ROW("perplexity", "--");
    if (isfinite(h->lr))
        ROW("lr", "%.2e", h->lr);
    else
        ROW("lr", "--");
    if (isfinite(h->grad_norm))
        ROW("grad norm", "%.3f", h->grad_norm);
    else
        ROW("grad norm", "--");
    if (isfinite(h->tokens_per_s) && isfinite(h->real_tok_s)) /* real: tokens with a target */
        ROW("tokens/s", "%.0f (%.0f real)", h->tokens_per_s, h->real_tok_s);
    else if (isfinite(h->tokens_per_s))
        ROW("tokens/s", "%.0f", h->tokens_per_s);
    else
        ROW("tokens/s", "--");
    /* "lora / identity" when it fits the row, else the method and the dataset on rows of their
     * own (at 80 columns the pair was cut) */
    char md[600];
    const char *meth = h->method[0] ? h->method : "--";
    snprintf(md, sizeof md, "%s%s%s", meth, h->dataset[0] ? " / " : "", h->dataset);
    if (text_width(md, strlen(md)) <= in.w - lw - 1) {
        ROW("method", "%s", md);
    } else {
        ROW("method", "%s", meth);
        if (h->dataset[0]) ROW("dataset", "%s", h->dataset);
    }
    if (h->world_size > 1) ROW("processes", "%d (data parallel)", h->world_size);
#undef ROW
}

static void draw_samples(App *app, Rect r) {
    History *h = app->hist;
    TrainView *tv = &app->tv;
    char title[64];
    snprintf(title, sizeof title, "samples (%zu)", h->samples_n);
    ui_frame(r, title, tv->focus == 0);
    Rect in = ui_inner(r);
    if (in.h <= 0 || in.w <= 2) return;
    if (!h->samples_n) {
        ui_str(in.y, in.x + 1, in.w - 1, ROLE_DIM, "no samples yet");
        return;
    }
    /* virtual lines: newest sample first; each = a header line + wrapped text */
    int total = 0;
    for (size_t i = 0; i < h->samples_n; i++)
        total += 1 + wrap_text(history_sample(h, i)->text, in.w - 3, NULL, 0);
    if (tv->sample_scroll > total - 1) tv->sample_scroll = total > 0 ? total - 1 : 0;
    int line = 0, y = in.y;
    WrapLine wl[256];
    for (size_t i = 0; i < h->samples_n && y < in.y + in.h; i++) {
        const HistSample *s = history_sample(h, i);
        if (line >= tv->sample_scroll) {
            char hdr[UI_NAME_MAX + 64];
            snprintf(hdr, sizeof hdr, "step %ld", s->step);
            int x = in.x + 1 + ui_str(y, in.x + 1, in.w - 1, ROLE_TITLE, hdr);
            if (s->prompt[0]) {
                x += ui_str(y, x, in.x + in.w - x, ROLE_DIM, " > ");
                ui_str(y, x, in.x + in.w - x, ROLE_DIM, s->prompt);
            }
            y++;
        }
        line++;
        int n = wrap_text(s->text, in.w - 3, wl, 256);
        for (int k = 0; k < n && k < 256 && y < in.y + in.h; k++, line++) {
            if (line < tv->sample_scroll) continue;
            ui_text(y++, in.x + 3, in.w - 3, ROLE_NORMAL, s->text + wl[k].off, wl[k].len);
        }
    }
}

static void draw_log(App *app, Rect r) {
    History *h = app->hist;
    TrainView *tv = &app->tv;
    ui_frame(r, "log", tv->focus == 1);
    Rect in = ui_inner(r);
    if (in.h <= 0 || in.w <= 4) return;
    if (tv->log_scroll > (int)h->logs_n - 1) tv->log_scroll = h->logs_n ? (int)h->logs_n - 1 : 0;
    /* newest at the bottom, each entry wrapped under its tag (an entry taller than the pane
       shows its start); scrolling moves up by entries */
    int y = in.y + in.h; /* the row above which the next (older) entry ends */
    WrapLine wl[64];
    for (int k = 0; y > in.y; k++) {
        const HistLog *l = history_log(h, (size_t)(tv->log_scroll + k));
        if (!l) break;
        Role role = l->level == 2 ? ROLE_ERROR : l->level == 1 ? ROLE_WARN : ROLE_NORMAL;
        const char *tag = l->level == 2 ? "E " : l->level == 1 ? "W " : "  ";
        int n = wrap_text(l->text, in.w - 2, wl, 64);
        if (n > 64) n = 64;
        int top = y - n;
        if (top < in.y) top = in.y;
        if (k == 0 && n > in.h) top = in.y; /* the newest alone fills the pane: its start */
        ui_str(top, in.x, 2, role, tag);
        for (int i = 0; i < n && top + i < y; i++)
            ui_text(top + i, in.x + 2, in.w - 2, role, l->text + wl[i].off, wl[i].len);
        y = top;
    }
}

static void train_draw(App *app) {
    TrainLayout L;
    layout_train(app->rows, app->cols, &L);
    History *h = app->hist;
    TrainView *tv = &app->tv;
    app_draw_header(app, L.header.y, L.header.w);
    draw_progress(app, L.progress);
    // --- visible x range
    double last = h->step_x.n ? ring_last(&h->step_x) : 0;
    double x_min = 0, x_max = 0; /* 0,0: from data */
    if (!tv->zoom_all && last > tv->zoom_n) x_min = last - tv->zoom_n, x_max = last;
    char title[160];
    const char *mk = theme_glyphs()->marker;
    snprintf(title, sizeof title, "loss: train%s, eval %s | %s%s",
             theme_glyphs()->utf8 ? "\xe2\x94\x80" : "-", mk,
             tv->zoom_all ? "all steps" : "last 50 steps", tv->log_y ? " | log" : "");
    /* a preference run (rewards/margins in its events): the reward margin is a second plot */
    Rect margin = {0};
    if (h->margin_x.n || h->emargin_x.n) layout_split_plot(&L.plot, &margin);
    if (!h->step_x.n && !app->src) {
        ui_frame(L.plot, "loss", 0);
        Rect in = ui_inner(L.plot);
        ui_str(in.y + in.h / 2, in.x + 2, in.w - 2, ROLE_DIM,
               "no run open: 4 (Runs) to pick one, or tuna watch RUN_DIR");
    } else {
        plot_series(L.plot, title, &h->step_x, &h->loss_y, &h->eval_x, &h->eval_y, ROLE_SERIES_1,
                    x_min, x_max, tv->log_y, 1);
    }
    if (margin.h) {
        snprintf(title, sizeof title, "reward margin: train%s, eval %s",
                 theme_glyphs()->utf8 ? "\xe2\x94\x80" : "-", mk);
        plot_series(margin, title, &h->margin_x, &h->margin_y, &h->emargin_x, &h->emargin_y,
                    ROLE_SERIES_1, x_min, x_max, 0, 1);
    }
    draw_stats(app, L.stats);
    if (L.lr_plot.h)
        plot_series(L.lr_plot, "learning rate", &h->step_x, &h->lr_y, NULL, NULL, ROLE_SERIES_3, 0,
                    0, 0, 1);
    if (L.gn_plot.h)
        plot_series(L.gn_plot, "grad norm", &h->step_x, &h->gn_y, NULL, NULL, ROLE_SERIES_3, x_min,
                    x_max, 0, 1);
    draw_samples(app, L.samples);
    draw_log(app, L.log);
    ui_help_line(L.help, SCR_TRAIN, 0);
    tv->drawn_version = h->version;
}

const Screen screen_train = {"Train", SCR_TRAIN,  NULL,       NULL, train_action,
                             NULL,    train_tick, train_draw, NULL, NULL};
