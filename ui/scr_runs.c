/* scr_runs.c: the Runs screen: every run in the runs folder with status, method, best eval loss
 * and last step; Enter opens one in the Train screen. Rescans every 2 s while shown. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "widgets.h"

static void rescan(App *app) {
    char keep[4096] = "";
    if (app->runs_sel < app->runs.n)
        snprintf(keep, sizeof keep, "%s", app->runs.runs[app->runs_sel].dir);
    runs_scan(app->runs_dir, &app->runs);
    app->runs_sel = 0;
    for (int i = 0; i < app->runs.n; i++)
        if (!strcmp(app->runs.runs[i].dir, keep)) app->runs_sel = i;
}

static void runs_enter(App *app) {
    rescan(app);
    app->runs_scanned_at = ui_now();
}

static int runs_tick(App *app) {
    if (app->screen != SCREEN_RUNS) return 0;
    if (ui_now() - app->runs_scanned_at < 2.0) return 0;
    app->runs_scanned_at = ui_now();
    rescan(app);
    return UI_REDRAW;
}

static int runs_action(App *app, Action a) {
    int n = app->runs.n;
    switch (a) {
    case ACT_UP:
        if (app->runs_sel > 0) app->runs_sel--;
        return UI_REDRAW;
    case ACT_DOWN:
        if (app->runs_sel < n - 1) app->runs_sel++;
        return UI_REDRAW;
    case ACT_PGUP:
        app->runs_sel -= 10;
        if (app->runs_sel < 0) app->runs_sel = 0;
        return UI_REDRAW;
    case ACT_PGDN:
        app->runs_sel += 10;
        if (app->runs_sel > n - 1) app->runs_sel = n > 0 ? n - 1 : 0;
        return UI_REDRAW;
    case ACT_HOME: app->runs_sel = 0; return UI_REDRAW;
    case ACT_END: app->runs_sel = n > 0 ? n - 1 : 0; return UI_REDRAW;
    case ACT_REFRESH:
        rescan(app);
        app_status(app, ROLE_NORMAL, "%d runs in %s", app->runs.n, app->runs_dir);
        return UI_REDRAW;
    case ACT_OPEN:
        if (app->runs_sel < n) app_open_run(app, app->runs.runs[app->runs_sel].dir);
        return UI_REDRAW;
    default: return 0;
    }
}

static Role status_role(const char *s) {
    if (!strcmp(s, "running") || !strcmp(s, "finished")) return ROLE_OK;
    if (!strcmp(s, "error")) return ROLE_ERROR;
    return ROLE_WARN;
}

/* A label and its value wrapped under the value column (paths break anywhere); returns the
 * rows used, drawing only those above ymax. */
static int detail_row(int y, int ymax, int x, int w, const char *label, Role role, const char *v) {
    int lw = 11, vw = w - lw;
    if (vw < 8) vw = 8;
    WrapLine wl[16];
    int n = wrap_text(v, vw, wl, 16);
    if (n > 16) n = 16;
    for (int i = 0; i < n && y + i < ymax; i++) {
        if (!i) ui_str(y, x, lw, ROLE_LABEL, label);
        ui_text(y + i, x + lw, vw, role, v + wl[i].off, wl[i].len);
    }
    return n;
}

static void runs_draw(App *app) {
    SplitLayout L;
    layout_runs(app->rows, app->cols, app->runs.n, &L);
    app_draw_header(app, L.header.y, L.header.w);
    char title[4200];
    snprintf(title, sizeof title, "runs in %s (%d)", app->runs_dir, app->runs.n);
    ui_frame(L.list, title, 1);
    Rect in = ui_inner(L.list);
    if (!app->runs.n) {
        ui_str(in.y, in.x + 2, in.w - 2, ROLE_DIM, "no runs yet: start one from Setup (1),");
        if (in.h > 1)
            ui_str(in.y + 1, in.x + 2, in.w - 2, ROLE_DIM,
                   "or `tuna train ... --output runs/NAME`.");
    } else {
        /* the name column takes what the others leave, 18 to 40 columns */
        int nw = in.w - 1 - 39;
        if (nw < 18) nw = 18;
        if (nw > 40) nw = 40;
        ui_printf(in.y, in.x + 1, in.w - 1, ROLE_TITLE, "%-*s %-8s %-7s %9s %9s", nw, "run",
                  "status", "method", "best eval", "step");
        int rows = in.h - 1;
        if (app->runs_sel < app->runs_top) app->runs_top = app->runs_sel;
        if (app->runs_sel >= app->runs_top + rows) app->runs_top = app->runs_sel - rows + 1;
        for (int k = 0; k < rows && app->runs_top + k < app->runs.n; k++) {
            int i = app->runs_top + k;
            const RunInfo *r = &app->runs.runs[i];
            int y = in.y + 1 + k;
            int sel = i == app->runs_sel;
            if (sel) ui_fill((Rect){y, in.x, 1, in.w}, ROLE_SELECTED);
            Role base = sel ? ROLE_SELECTED : ROLE_NORMAL;
            char be[32] = "--", st[48] = "--";
            if (isfinite(r->best_eval)) snprintf(be, sizeof be, "%.4f", r->best_eval);
            if (r->last_step >= 0 && r->total_steps > 0)
                snprintf(st, sizeof st, "%ld/%ld", r->last_step, r->total_steps);
            else if (r->last_step >= 0)
                snprintf(st, sizeof st, "%ld", r->last_step);
            int x = in.x + 1;
            x += ui_printf(y, x, nw + 1, base, "%-*.*s ", nw, nw, r->name);
            x += ui_printf(y, x, 9, sel ? base : status_role(r->status), "%-8s ", r->status);
            ui_printf(y, x, in.x + in.w - x, base, "%-7.7s %9s %9s",
                      r->method[0] ? r->method : "--", be, st);
        }
    }
    // --- detail: every value in full, wrapped under its label
    ui_frame(L.detail, "details", 0);
    Rect d = ui_inner(L.detail);
    if (app->runs_sel < app->runs.n && d.w > 4) {
        const RunInfo *r = &app->runs.runs[app->runs_sel];
        int y = d.y, ymax = d.y + d.h, x = d.x + 1, w = d.w - 2;
        char when[64] = "", be[64] = "--", st[64] = "--", ll[32] = "--";
        time_t t = (time_t)r->mtime;
        struct tm tm;
        if (localtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        if (isfinite(r->best_eval)) snprintf(be, sizeof be, "%.4f", r->best_eval);
        if (r->last_step >= 0 && r->total_steps > 0)
            snprintf(st, sizeof st, "%ld of %ld", r->last_step, r->total_steps);
        else if (r->last_step >= 0)
            snprintf(st, sizeof st, "%ld", r->last_step);
        if (isfinite(r->last_loss)) snprintf(ll, sizeof ll, "%.4f", r->last_loss);
        const char *labels[] = {"folder",    "model", "dataset",   "method", "status",
                                "best eval", "step",  "last loss", "updated"};
        const char *vals[] = {r->dir,
                              r->model[0] ? r->model : "--",
                              r->dataset[0] ? r->dataset : "--",
                              r->method[0] ? r->method : "--",
                              r->status,
                              be,
                              st,
                              ll,
                              when};
        for (int i = 0; i < 9 && y < ymax; i++)
            y += detail_row(y, ymax, x, w, labels[i], i == 4 ? status_role(r->status) : ROLE_VALUE,
                            vals[i]);
        if (y < ymax) ui_str(ymax - 1, x, w, ROLE_DIM, "Enter: open in Train");
    }
    ui_help_line(L.help, SCR_RUNS, 0);
}

const Screen screen_runs = {"Runs", SCR_RUNS,  NULL,      runs_enter, runs_action,
                            NULL,   runs_tick, runs_draw, NULL,       NULL};
