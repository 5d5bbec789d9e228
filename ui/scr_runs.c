/* scr_runs.c: the Runs screen: every run in the runs folder with status, method, best eval loss
 * and last step; Enter opens one in the Train screen. Rescans every 2 s while shown.
 * e: Export: a small form (format hf|peft|gguf|gguf-lora, the type: --export-dtype for hf, the
 * quant for gguf; output path) that runs `tuna export --model RUN --out OUT [--format F]
 * [--quant Q | --export-dtype D]` as a child process, shows a
 * progress bar (from "progress K/N" lines on its output, which the child is asked for with
 * TUNA_PROGRESS=1; a moving bar until one comes) and then the result or its one-line error. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "widgets.h"

// --- export (UI thread only: one form and at most one child at a time)

static const char *const EXPORT_FORMATS[] = {"hf", "peft", "gguf", "gguf-lora"};
static const char *const EXPORT_QUANTS[] = {"f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k"};
static const char *const EXPORT_DTYPES[] = {"auto", "fp32", "bf16", "f16"}; /* hf's tensors */
#define N_EXPORT_FORMATS 4
#define N_EXPORT_QUANTS  6
#define N_EXPORT_DTYPES  4

typedef struct ExportState {
    int form;              /* the form is open */
    int fmt, quant, dtype; /* indices into the tables above */
    char run[4096];        /* the run being exported */
    char out[1024];        /* output path (typed) */
    pid_t pid;             /* the running child, or 0 */
    int fd;                /* its stdout+stderr, non-blocking */
    char line[600];        /* the partial line being read */
    char last[600];        /* its last complete line (the result or the error) */
    double frac;           /* progress, < 0 until a progress line comes */
    double started;
} ExportState;

static ExportState ex = {.fd = -1, .frac = -1};

static void export_default_out(void) {
    const char *f = EXPORT_FORMATS[ex.fmt];
    size_t rl = strlen(ex.run);
    while (rl > 1 && ex.run[rl - 1] == '/')
        rl--;
    if (!strcmp(f, "gguf") || !strcmp(f, "gguf-lora"))
        snprintf(ex.out, sizeof ex.out, "%.*s-%s.gguf", (int)rl, ex.run,
                 !strcmp(f, "gguf") ? EXPORT_QUANTS[ex.quant] : "lora");
    else
        snprintf(ex.out, sizeof ex.out, "%.*s-%s", (int)rl, ex.run, f);
}

/* The argv of the export (argv[0] the exe); returns the count. */
static int export_argv(const char *exe, const char **argv) {
    int n = 0;
    argv[n++] = exe;
    argv[n++] = "export";
    argv[n++] = "--model";
    argv[n++] = ex.run;
    argv[n++] = "--out";
    argv[n++] = ex.out;
    if (ex.fmt) { /* hf is the default and what every tuna export writes */
        argv[n++] = "--format";
        argv[n++] = EXPORT_FORMATS[ex.fmt];
    }
    if (!strcmp(EXPORT_FORMATS[ex.fmt], "gguf")) {
        argv[n++] = "--quant";
        argv[n++] = EXPORT_QUANTS[ex.quant];
    }
    if (!strcmp(EXPORT_FORMATS[ex.fmt], "hf") && ex.dtype) { /* auto is the default */
        argv[n++] = "--export-dtype";
        argv[n++] = EXPORT_DTYPES[ex.dtype];
    }
    argv[n] = NULL;
    return n;
}

static int export_start(App *app) {
    int p[2];
    if (pipe(p)) {
        app_status(app, ROLE_ERROR, "cannot start tuna export: %s", strerror(errno));
        return UI_REDRAW;
    }
    size_t el = strlen(app->self_exe);
    const char *exe =
            el >= 5 && !strcmp(app->self_exe + el - 5, "/tuna") ? app->self_exe : "./tuna";
    const char *argv[16];
    export_argv(exe, argv);
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        setenv("TUNA_PROGRESS", "1", 1);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        app_status(app, ROLE_ERROR, "cannot start tuna export: %s", strerror(errno));
        return UI_REDRAW;
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    ex.pid = pid;
    ex.fd = p[0];
    ex.line[0] = ex.last[0] = 0;
    ex.frac = -1;
    ex.started = ui_now();
    ex.form = 0;
    app_status(app, ROLE_NORMAL, "exporting %s to %s (%s)", ex.run, ex.out, EXPORT_FORMATS[ex.fmt]);
    return UI_REDRAW;
}

/* One complete line of the child's output: "progress K/N" moves the bar; any other is kept as
 * the last line (the result or the error). */
static void export_line(const char *l) {
    long k, n;
    if (sscanf(l, "progress %ld/%ld", &k, &n) == 2 && n > 0 && k >= 0) {
        ex.frac = k > n ? 1.0 : (double)k / (double)n;
        return;
    }
    if (l[0]) snprintf(ex.last, sizeof ex.last, "%s", l);
}

static int export_tick(App *app) {
    if (!ex.pid) return 0;
    int redraw = 0;
    char buf[512];
    ssize_t r;
    while ((r = read(ex.fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++) {
            size_t ll = strlen(ex.line);
            if (buf[i] == '\n' || buf[i] == '\r') {
                export_line(ex.line);
                ex.line[0] = 0;
            } else if (ll + 1 < sizeof ex.line) {
                ex.line[ll] = buf[i];
                ex.line[ll + 1] = 0;
            }
        }
        redraw = UI_REDRAW;
    }
    int st;
    pid_t w = waitpid(ex.pid, &st, WNOHANG);
    if (w == ex.pid) {
        while ((r = read(ex.fd, buf, sizeof buf)) > 0) {}
        export_line(ex.line);
        ex.line[0] = 0;
        close(ex.fd);
        ex.fd = -1;
        ex.pid = 0;
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        const char *l = !strncmp(ex.last, "tuna: ", 6) ? ex.last + 6 : ex.last;
        if (ok)
            app_status(app, ROLE_OK, "export done: %s", l[0] ? l : ex.out);
        else
            app_status(app, ROLE_ERROR, "export failed: %s",
                       l[0] ? l : "tuna export ended without a message");
        return UI_REDRAW;
    }
    return redraw || ui_now() - ex.started > 0 ? UI_REDRAW : 0;
}

static int runs_text_input(App *app) {
    (void)app;
    return ex.form;
}

/* Keys the table leaves to the screen: e opens the form; in the form, typing edits the output
 * path, Esc closes it. */
static int runs_key(App *app, int ch) {
    if (!ex.form) {
        if (ch != 'e' || app->runs_sel >= app->runs.n) return 0;
        if (ex.pid) {
            app_status(app, ROLE_WARN, "an export is running: wait for it to finish");
            return UI_REDRAW;
        }
        snprintf(ex.run, sizeof ex.run, "%s", app->runs.runs[app->runs_sel].dir);
        ex.form = 1;
        export_default_out();
        return UI_REDRAW;
    }
    size_t l = strlen(ex.out);
    if (ch == 27)
        ex.form = 0;
    else if ((ch == KEY_BACKSPACE || ch == 127 || ch == 8) && l > 0)
        ex.out[l - 1] = 0;
    else if (ch >= 0x20 && ch < 0x7f && l + 1 < sizeof ex.out) {
        ex.out[l] = (char)ch;
        ex.out[l + 1] = 0;
    }
    return UI_REDRAW;
}

/* The form's arrows and Enter (the table maps them to actions). */
static int export_form_action(App *app, Action a) {
    switch (a) {
    case ACT_LEFT:
    case ACT_RIGHT:
        ex.fmt = (ex.fmt + (a == ACT_RIGHT ? 1 : N_EXPORT_FORMATS - 1)) % N_EXPORT_FORMATS;
        export_default_out();
        return UI_REDRAW;
    case ACT_UP:
    case ACT_DOWN: /* the type: gguf's quant, hf's --export-dtype */
        if (!strcmp(EXPORT_FORMATS[ex.fmt], "hf")) {
            ex.dtype = (ex.dtype + (a == ACT_DOWN ? 1 : N_EXPORT_DTYPES - 1)) % N_EXPORT_DTYPES;
            return UI_REDRAW;
        }
        if (strcmp(EXPORT_FORMATS[ex.fmt], "gguf")) return 0;
        ex.quant = (ex.quant + (a == ACT_DOWN ? 1 : N_EXPORT_QUANTS - 1)) % N_EXPORT_QUANTS;
        export_default_out();
        return UI_REDRAW;
    case ACT_OPEN:
        if (!ex.out[0]) {
            app_status(app, ROLE_ERROR, "export: give an output path");
            return UI_REDRAW;
        }
        return export_start(app);
    default: return 0;
    }
}

static void export_draw(Rect area) {
    if (!ex.form && !ex.pid) return;
    int w = area.w < 64 ? area.w : 64, h = ex.form ? 8 : 5;
    if (w < 30 || area.h < h) return;
    Rect r = {area.y + (area.h - h) / 2, area.x + (area.w - w) / 2, h, w};
    ui_fill(r, ROLE_NORMAL);
    ui_frame(r, ex.form ? "export" : "exporting", 1);
    Rect in = ui_inner(r);
    int x = in.x + 1, iw = in.w - 2, y = in.y;
    ui_printf(y++, x, iw, ROLE_VALUE, "%s", ex.run);
    if (ex.form) {
        char fl[128] = "";
        for (int i = 0; i < N_EXPORT_FORMATS; i++) {
            size_t l = strlen(fl);
            snprintf(fl + l, sizeof fl - l, i == ex.fmt ? "[%s] " : " %s  ", EXPORT_FORMATS[i]);
        }
        ui_printf(y, x, iw, ROLE_LABEL, "format ");
        ui_printf(y++, x + 8, iw - 8, ROLE_VALUE, "%s", fl);
        int gg = !strcmp(EXPORT_FORMATS[ex.fmt], "gguf"),
            hf = !strcmp(EXPORT_FORMATS[ex.fmt], "hf");
        ui_printf(y, x, iw, ROLE_LABEL, hf ? "dtype " : "quant ");
        ui_printf(y++, x + 8, iw - 8, gg || hf ? ROLE_VALUE : ROLE_DIM, "%s",
                  gg   ? EXPORT_QUANTS[ex.quant]
                  : hf ? (ex.dtype ? EXPORT_DTYPES[ex.dtype] : "auto (the base's type)")
                       : "(the adapter as trained)");
        ui_printf(y, x, iw, ROLE_LABEL, "output ");
        int ol = (int)strlen(ex.out), vw = iw - 8;
        ui_printf(y++, x + 8, vw, ROLE_VALUE, "%s_", ol + 1 > vw ? ex.out + ol + 1 - vw : ex.out);
        ui_str(y + 1, x, iw, ROLE_DIM, "<-/->: format  up/down: type  Enter: export  Esc");
        return;
    }
    double frac = ex.frac;
    if (frac < 0) { /* no progress lines: a block that moves while the child works */
        double t = ui_now() - ex.started;
        frac = fmod(t / 4.0, 1.0);
    }
    ui_bar(y++, x, iw, frac);
    ui_printf(y, x, iw, ROLE_DIM, "%.0f s  %s", ui_now() - ex.started,
              ex.frac >= 0 ? "" : "(tuna export gives no progress lines)");
}

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
    int ext = export_tick(app);
    if (app->screen != SCREEN_RUNS) return 0;
    if (ext) return UI_REDRAW;
    if (ui_now() - app->runs_scanned_at < 2.0) return 0;
    app->runs_scanned_at = ui_now();
    rescan(app);
    return UI_REDRAW;
}

static int runs_action(App *app, Action a) {
    if (ex.form) return export_form_action(app, a);
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
        if (y < ymax) ui_str(ymax - 1, x, w, ROLE_DIM, "Enter: open in Train  e: Export");
    }
    export_draw((Rect){L.header.y + 1, 0, app->rows - 2, app->cols});
    ui_help_line(L.help, SCR_RUNS, ex.form);
}

const Screen screen_runs = {"Runs",   SCR_RUNS,  runs_text_input, runs_enter, runs_action,
                            runs_key, runs_tick, runs_draw,       NULL,       NULL};
