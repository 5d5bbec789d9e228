/* test_ui_layout.c: the UI's pure parts without a terminal: every layout over 20x10 .. 300x100
 * (nothing overlaps, nothing leaves the screen, "too small" below the minimum), the plot
 * rasterizer into a cell grid (braille and ASCII, axes, log scale, zoom, markers), the
 * metrics.jsonl parser, the History rings, file-follow with partial lines and truncation, the
 * control file, text wrapping and the runs summary. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../ui/history.h"
#include "../ui/keys.h"
#include "../ui/layout.h"
#include "../ui/plot.h"
#include "../ui/runs.h"
#include "../ui/source.h"
#include "../ui/widgets.h"
#include "harness.h"

// --- layouts

static int check_rects(const Rect *r, int n, int rows, int cols, const char *what) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if (!rect_inside(r[i], rows, cols)) {
            fprintf(stderr, "%s %dx%d: rect %d (%d,%d %dx%d) leaves the screen\n", what, cols, rows,
                    i, r[i].x, r[i].y, r[i].w, r[i].h);
            bad++;
        }
        for (int j = i + 1; j < n; j++)
            if (rect_overlap(r[i], r[j])) {
                fprintf(stderr, "%s %dx%d: rects %d and %d overlap\n", what, cols, rows, i, j);
                bad++;
            }
    }
    return bad;
}

static void test_layouts(void) {
    int bad = 0, small = 0, ok = 0, sizes = 0;
    for (int rows = 10; rows <= 100; rows++)
        for (int cols = 20; cols <= 300; cols++) {
            sizes++;
            int too_small = rows < LAYOUT_MIN_ROWS || cols < LAYOUT_MIN_COLS;
            TrainLayout t;
            int rc = layout_train(rows, cols, &t);
            if (too_small) {
                small += rc == LAYOUT_TOO_SMALL;
                continue;
            }
            ok += rc == 0;
            Rect tr[] = {t.header,  t.progress, t.plot, t.stats, t.lr_plot,
                         t.gn_plot, t.samples,  t.log,  t.help};
            bad += check_rects(tr, 9, rows, cols, "train");
            /* the panels the screen needs are never hidden and keep room for a frame + content */
            if (t.plot.h < 6 || t.plot.w < 30 || t.samples.h < 4 || t.log.h < 4 || t.stats.h < 4) {
                fprintf(stderr, "train %dx%d: a panel is too small\n", cols, rows);
                bad++;
            }
            /* the body is covered: header + progress + upper + lower + help == rows */
            if (t.plot.h + t.samples.h + 3 != rows) bad++;
            /* a preference run's reward-margin plot beside (or under) the loss plot */
            Rect lp = t.plot, mp;
            layout_split_plot(&lp, &mp);
            Rect pr[] = {t.header,  t.progress, lp,        mp,    t.stats,
                         t.lr_plot, t.gn_plot,  t.samples, t.log, t.help};
            bad += check_rects(pr, 10, rows, cols, "train+margin");
            if (mp.h && (lp.h < 6 || lp.w < 30 || mp.h < 6 || mp.w < 30 ||
                         lp.h * lp.w + mp.h * mp.w != t.plot.h * t.plot.w)) {
                fprintf(stderr, "train %dx%d: margin split leaves a plot too small\n", cols, rows);
                bad++;
            }
            if (!mp.h && memcmp(&lp, &t.plot, sizeof lp)) bad++;
            for (int sbs = 0; sbs < 2; sbs++) {
                ChatLayout c;
                layout_chat(rows, cols, sbs, &c);
                Rect cr[] = {c.header, c.settings, c.left, c.right, c.input, c.help};
                bad += check_rects(cr, 6, rows, cols, "chat");
                if (c.left.h < 4 || (sbs && c.right.w < 20)) bad++;
            }
            SplitLayout s;
            layout_split(rows, cols, 58, &s);
            Rect sr[] = {s.header, s.list, s.detail, s.help};
            bad += check_rects(sr, 4, rows, cols, "split");
            for (int nr = 0; nr <= 60; nr += 30) {
                layout_runs(rows, cols, nr, &s);
                Rect rr[] = {s.header, s.list, s.detail, s.help};
                bad += check_rects(rr, 4, rows, cols, "runs");
                /* the details keep room for a frame and the six labelled lines */
                if (s.detail.h < 8 || s.detail.w < 20 || s.list.h < 5) {
                    fprintf(stderr, "runs %dx%d (%d runs): a pane is too small\n", cols, rows, nr);
                    bad++;
                }
                if (cols < LAYOUT_RUNS_SIDE_COLS && s.detail.w != cols) bad++;
            }
            FrameLayout f;
            layout_frame(rows, cols, &f);
            Rect fr[] = {f.header, f.body, f.help};
            bad += check_rects(fr, 3, rows, cols, "frame");
        }
    CHECK(bad == 0, "%d layout problems over %d sizes", bad, sizes);
    CHECK(small > 0 && ok > 0, "small %d ok %d", small, ok);
    TrainLayout t;
    CHECK(layout_train(24, 80, &t) == 0, "80x24 must fit");
    CHECK(layout_train(LAYOUT_MIN_ROWS - 1, 80, &t) == LAYOUT_TOO_SMALL, "too small");
    CHECK(layout_train(60, 200, &t) == 0 && t.lr_plot.h > 0 && t.gn_plot.h > 0,
          "200x60 shows lr and grad-norm plots");
    CHECK(rect_overlap((Rect){0, 0, 2, 2}, (Rect){1, 1, 2, 2}) &&
                  !rect_overlap((Rect){0, 0, 2, 2}, (Rect){0, 2, 2, 2}),
          "rect_overlap");
}

// --- plot

static int count_cells(const PlotCell *c, int n, uint32_t lo, uint32_t hi) {
    int k = 0;
    for (int i = 0; i < n; i++)
        k += c[i].ch >= lo && c[i].ch <= hi;
    return k;
}

static void grid_row(const PlotCell *c, int w, int row, char *out) {
    for (int x = 0; x < w; x++)
        out[x] = c[row * w + x].ch < 128 ? (char)c[row * w + x].ch : '#';
    out[w] = 0;
}

static void test_plot(void) {
    enum { N = 100, H = 12, W = 50 };
    double x[N], y[N], ex[5], ey[5];
    for (int i = 0; i < N; i++)
        x[i] = i + 1, y[i] = 3.0 * exp(-i / 20.0) + 0.2;
    for (int i = 0; i < 5; i++)
        ex[i] = 20.0 * (i + 1), ey[i] = y[(int)ex[i] - 1] + 0.1;
    PlotSeries s[2] = {{x, y, N, 10, 0}, {ex, ey, 5, 11, 1}};
    PlotCell cells[H * W];
    PlotSpec sp = {s, 2, 0, 0, 0, 1, 1, 9, 9, "o"};
    int drawn = plot_raster(&sp, cells, H, W);
    CHECK(drawn == N + 5, "drawn %d", drawn);
    int braille = count_cells(cells, H * W, 0x2801, 0x28FF);
    CHECK(braille >= 40, "braille cells %d", braille);
    CHECK(count_cells(cells, H * W, 'o', 'o') >= 4, "eval markers");
    /* a decreasing curve: the first data column is high, the last low */
    int first_row = -1, last_row = -1;
    for (int r = 0; r < H - 2; r++) {
        if (first_row < 0 && cells[r * W + 7].ch >= 0x2800 && cells[r * W + 7].ch != ' ')
            first_row = r;
        if (cells[r * W + W - 2].ch > 0x2800 && cells[r * W + W - 2].ch <= 0x28FF) last_row = r;
    }
    CHECK(first_row >= 0 && last_row > first_row, "curve goes down: first %d last %d", first_row,
          last_row);
    /* axes: a label on the top row, step labels on the bottom row */
    char row[W + 1];
    grid_row(cells, W, H - 1, row);
    CHECK(strstr(row, "1") && strstr(row, "100"), "x labels: \"%s\"", row);
    grid_row(cells, W, 0, row);
    CHECK(strchr(row, '.') != NULL, "y label on top row: \"%s\"", row);
    // ASCII
    sp.utf8 = 0;
    plot_raster(&sp, cells, H, W);
    CHECK(count_cells(cells, H * W, 0x80, 0xFFFFFFFF) == 0, "ASCII plot has only ASCII");
    CHECK(count_cells(cells, H * W, '_', '_') + count_cells(cells, H * W, '-', '-') > 20,
          "ASCII line drawn");
    // zoom: only the last 10 steps -> x labels 90..100
    sp.utf8 = 1;
    sp.x_min = 90;
    sp.x_max = 100;
    drawn = plot_raster(&sp, cells, H, W);
    CHECK(drawn == 11 + 1, "zoom draws 11 steps + 1 eval, got %d", drawn);
    grid_row(cells, W, H - 1, row);
    CHECK(strstr(row, "90") && strstr(row, "100"), "zoom labels: \"%s\"", row);
    // log scale ignores non-positive values and labels real values
    y[3] = -1;
    y[4] = NAN;
    sp.x_min = sp.x_max = 0;
    sp.log_y = 1;
    drawn = plot_raster(&sp, cells, H, W);
    CHECK(drawn == N - 2 + 5, "log drawn %d", drawn);
    // tiny and empty grids do not crash; no data shows a message
    CHECK(plot_raster(&sp, cells, 1, 1) >= 0, "1x1");
    sp.n_series = 0;
    plot_raster(&sp, cells, H, W);
    int found = 0;
    for (int r = 0; r < H; r++) {
        grid_row(cells, W, r, row);
        if (strstr(row, "waiting")) found = 1;
    }
    CHECK(found, "empty plot says waiting");
    char b[32];
    plot_format_value(0.0012, b, sizeof b, 6);
    CHECK(strlen(b) <= 6, "format %s", b);
    plot_format_value(5400.2, b, sizeof b, 6);
    CHECK(!strcmp(b, "5400"), "format %s", b);
}

// --- events, history, file follow

static void write_str(const char *path, const char *mode, const char *s) {
    FILE *f = fopen(path, mode);
    fputs(s, f);
    fclose(f);
}

/* Every type written by event_json reads back with event_parse to the same fields (the table
 * is one for both), absent fields stay absent, a step's unknown numbers become metrics and a
 * long text is cut at a UTF-8 boundary. */
static void test_event_roundtrip(void) {
    static Event e, back;
    for (int t = EV_START; t <= EV_DONE; t++) {
        event_clear(&e, (EventType)t);
        e.step = 7 + t;
        e.epoch = 0.25 * t;
        if (t == EV_START) {
            e.step = -1;
            e.time = 1700000000;
            event_str(e.run, sizeof e.run, "run-a");
            event_str(e.model, sizeof e.model, "models/x");
            event_str(e.method, sizeof e.method, "lora");
            e.total_steps = 40;
            e.epochs = 3;
            e.trainable_params = 123456789012L;
            e.lr = 2e-4;
            e.config = "{\"lr\":0.0002}";
        }
        if (t == EV_STEP) {
            e.loss = 2.5;
            e.lr = 1e-3;
            e.grad_norm = 0.5;
            e.real_tokens = 99;
            e.tokens = 123;
            event_metric(&e, "rewards/margins", 0.125);
        }
        if (t == EV_EVAL) e.eval_loss = 1.75;
        if (t == EV_SAMPLE || t == EV_CHECKPOINT || t == EV_DONE)
            event_str(e.name, sizeof e.name, t == EV_DONE ? "stopped" : "name \"q\"");
        if (t == EV_SAMPLE || t == EV_LOG || t == EV_DONE)
            event_str(e.text, sizeof e.text, "line one\nline two \xc3\xa9");
        if (t == EV_LOG) e.level = 1;
        if (t == EV_STATE) e.paused = 1;
        if (t == EV_DONE) e.best_eval_loss = 1.5;
        char *line = event_json(&e);
        CHECK(line && event_parse(line, strlen(line), &back) == 0, "type %d: written and read", t);
        if (!line) continue;
        CHECK(back.type == (EventType)t && back.step == e.step && back.epoch == e.epoch &&
                      (back.time == e.time || (isnan(back.time) && isnan(e.time))),
              "type %d: common fields (%s)", t, line);
        CHECK(!strcmp(back.name, e.name) && !strcmp(back.text, e.text) &&
                      !strcmp(back.run, e.run) && !strcmp(back.model, e.model),
              "type %d: strings (%s)", t, line);
        CHECK(back.loss == e.loss || (isnan(back.loss) && isnan(e.loss)), "type %d: loss", t);
        CHECK(back.lr == e.lr || (isnan(back.lr) && isnan(e.lr)), "type %d: lr", t);
        CHECK(back.level == e.level && back.paused == e.paused &&
                      back.trainable_params == e.trainable_params &&
                      back.real_tokens == e.real_tokens && back.tokens == e.tokens,
              "type %d: counts and flags (%s)", t, line);
        CHECK(back.n_metrics == e.n_metrics &&
                      (!e.n_metrics || (!strcmp(back.metric_name[0], "rewards/margins") &&
                                        back.metric[0] == 0.125)),
              "type %d: metrics (%s)", t, line);
        CHECK(t != EV_START || strstr(line, "\"config\":{\"lr\":0.0002}"), "start: config object");
        CHECK(t != EV_STEP || !strstr(line, "\"eta\""), "step: absent eta not written");
        free(line);
    }
    event_clear(&e, EV_NONE);
    CHECK(event_json(&e) == NULL, "EV_NONE is not written");
    char big[EVENT_TEXT_MAX + 8];
    memset(big, 'a', sizeof big);
    memcpy(big + EVENT_TEXT_MAX - 2, "\xc3\xa9\xc3\xa9", 4); /* a 2-byte character across the cut */
    big[sizeof big - 1] = '\0';
    event_str(e.text, sizeof e.text, big);
    CHECK(strlen(e.text) == EVENT_TEXT_MAX - 2, "long text cut before a split character (%zu)",
          strlen(e.text));
}

/* source_test_after_write: the trainer's read_control (rename, read, unlink), `takes` times */
static int takes;
static void take_control(const char *path) {
    if (takes <= 0) return;
    takes--;
    char taken[300];
    snprintf(taken, sizeof taken, "%s.reading", path);
    if (rename(path, taken) == 0) unlink(taken);
}

static void test_events(void) {
    Event ev;
    const char *step =
            "{\"type\":\"step\",\"step\":12,\"total_steps\":300,\"epoch\":0.12,\"loss\":2.3141,"
            "\"lr\":0.001,\"grad_norm\":0.93,\"tokens_per_s\":5400.2,\"elapsed\":12.3,\"eta\":288."
            "1}";
    CHECK(event_parse(step, strlen(step), &ev) == 0 && ev.type == EV_STEP, "parse step");
    CHECK(ev.step == 12 && ev.total_steps == 300 && fabs(ev.loss - 2.3141) < 1e-9 &&
                  fabs(ev.eta - 288.1) < 1e-9,
          "step fields");
    const char *done =
            "{\"type\":\"done\",\"step\":300,\"status\":\"stopped\",\"msg\":\"by user\"}";
    CHECK(event_parse(done, strlen(done), &ev) == 0 && ev.type == EV_DONE &&
                  !strcmp(ev.name, "stopped") && !strcmp(ev.text, "by user"),
          "parse done");
    CHECK(event_parse("{\"type\":\"x\"}", 12, &ev) == 0 && ev.type == EV_NONE, "unknown type");
    CHECK(event_parse("{\"type\":", 8, &ev) == -1, "partial line is not JSON");
    test_event_roundtrip();

    History *h = history_new();
    CHECK(h->world_size == 1, "one process until a start says more");
    { /* a data-parallel run's start carries its world size (the stats panel shows it) */
        const char *ws = "{\"type\":\"start\",\"run\":\"r\",\"method\":\"lora\",\"world_size\":4}";
        Event e;
        CHECK(event_parse(ws, strlen(ws), &e) == 0 && e.type == EV_START, "parse start");
        history_apply(h, &e);
        CHECK(h->world_size == 4, "start: world_size %d, not 4", h->world_size);
    }
    for (int i = 1; i <= HIST_STEPS + 10; i++) {
        Event e = {0};
        e.type = EV_STEP;
        e.step = i;
        e.total_steps = -1;
        e.loss = 1.0 / i;
        e.lr = e.grad_norm = e.tokens_per_s = e.elapsed = e.eta = e.epoch = NAN;
        history_apply(h, &e);
    }
    CHECK(h->step_x.n == HIST_STEPS && ring_at(&h->step_x, 0) == 11 &&
                  ring_last(&h->step_x) == HIST_STEPS + 10,
          "ring overwrites the oldest");
    for (int i = 0; i < HIST_SAMPLES + 3; i++) {
        Event e = {0};
        e.type = EV_SAMPLE;
        e.step = i;
        e.total_steps = -1;
        e.epoch = NAN;
        snprintf(e.text, sizeof e.text, "sample %d", i);
        history_apply(h, &e);
    }
    CHECK(h->margin_x.n == 0 && isnan(h->reward_acc), "an sft run has no reward margins");
    for (int i = 1; i <= 3; i++) { /* a dpo run: steps and evals carry TRL's reward metrics */
        Event e;
        event_clear(&e, i == 2 ? EV_EVAL : EV_STEP);
        e.step = i;
        e.loss = e.eval_loss = 0.6;
        event_metric(&e, i == 2 ? "eval_rewards/accuracies" : "rewards/accuracies", 0.25 * i);
        event_metric(&e, i == 2 ? "eval_rewards/margins" : "rewards/margins", 0.1 * i);
        history_apply(h, &e);
    }
    CHECK(h->margin_x.n == 2 && ring_last(&h->margin_x) == 3 &&
                  ring_last(&h->margin_y) == 0.1 * 3 && h->emargin_x.n == 1 &&
                  ring_last(&h->emargin_y) == 0.1 * 2 && h->reward_acc == 0.75 &&
                  h->eval_reward_acc == 0.5 && h->eval_reward_margin == 0.1 * 2,
          "reward margins: %zu steps, %zu evals, acc %g eval %g", h->margin_x.n, h->emargin_x.n,
          h->reward_acc, h->eval_reward_acc);
    CHECK(h->samples_n == HIST_SAMPLES && history_sample(h, 0)->step == HIST_SAMPLES + 2 &&
                  history_sample(h, HIST_SAMPLES) == NULL,
          "samples ring newest first");
    history_free(h);

    // file follow: partial lines, appends, truncation, control file
    char dir[] = "/tmp/tuna_ui_test_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    EventSource *src = source_file_open(dir);
    Event out[8];
    CHECK(source_poll(src, out, 8) == 0, "no file yet");
    write_str(path, "w",
              "{\"type\":\"start\",\"run\":\"r\",\"method\":\"lora\",\"total_steps\":3}\n{\"type\":"
              "\"step\",\"st");
    int n = source_poll(src, out, 8);
    CHECK(n == 1 && out[0].type == EV_START && !strcmp(out[0].method, "lora"),
          "start then partial: %d", n);
    write_str(path, "a", "ep\":1,\"loss\":2.5}\n");
    n = source_poll(src, out, 8);
    CHECK(n == 1 && out[0].type == EV_STEP && out[0].step == 1 && out[0].loss == 2.5,
          "partial completed: %d", n);
    CHECK(source_poll(src, out, 8) == 0, "nothing new");
    write_str(path, "w", "{\"type\":\"step\",\"step\":1,\"loss\":9}\n");
    n = source_poll(src, out, 8);
    CHECK(n == 2 && out[0].type == EV_RESET && out[1].type == EV_STEP && out[1].loss == 9,
          "rewrite resets: %d", n);
    char err[512];
    CHECK(source_command(src, CMD_PAUSE, err, sizeof err) == 0 &&
                  source_command(src, CMD_STOP, err, sizeof err) == 0,
          "commands");
    char cpath[256];
    snprintf(cpath, sizeof cpath, "%s/control", dir);
    FILE *cf = fopen(cpath, "r");
    char cbuf[64] = "";
    size_t cl = cf ? fread(cbuf, 1, sizeof cbuf - 1, cf) : 0;
    if (cf) fclose(cf);
    cbuf[cl] = 0;
    CHECK(!strcmp(cbuf, "pause\nstop\n"), "control file: \"%s\"", cbuf);
    /* the trainer takes RUN/control (renames it, reads it, unlinks it) between the UI's open and
     * the UI's write: the line went into a file already read, so the UI writes it again into a
     * new RUN/control (a lost "resume" once left a run paused in CI) */
    unlink(cpath);
    takes = 1;
    source_test_after_write = take_control;
    CHECK(source_command(src, CMD_RESUME, err, sizeof err) == 0, "resume: %s", err);
    source_test_after_write = NULL;
    cf = fopen(cpath, "r");
    cl = cf ? fread(cbuf, 1, sizeof cbuf - 1, cf) : 0;
    if (cf) fclose(cf);
    cbuf[cl] = 0;
    CHECK(takes == 0 && !strcmp(cbuf, "resume\n"),
          "a line written into a control file taken meanwhile is written again: \"%s\"", cbuf);
    CHECK(source_alive(src) == -1, "no pid file: unknown");
    source_free(src);
    // runs summary
    write_str(path, "a",
              "{\"type\":\"eval\",\"step\":1,\"eval_loss\":1.5}\n{\"type\":\"eval\",\"step\":2,"
              "\"eval_loss\":1.2}\n"
              "{\"type\":\"done\",\"step\":2,\"status\":\"error\",\"msg\":\"nan\"}\n");
    RunInfo ri;
    CHECK(runs_read_one(dir, &ri) == 0 && !strcmp(ri.status, "error") &&
                  fabs(ri.best_eval - 1.2) < 1e-12 && ri.last_step == 2,
          "runs_read_one: %s", ri.status);
    unlink(path);
    unlink(cpath);
    rmdir(dir);
    RunsList rl = {0};
    CHECK(runs_scan("tests/fixtures/ui", &rl) == 0 && rl.n >= 1, "runs_scan fixtures: %d", rl.n);
    int demo = 0;
    for (int i = 0; i < rl.n; i++)
        if (!strcmp(rl.runs[i].name, "run_demo"))
            demo = !strcmp(rl.runs[i].status, "finished") && rl.runs[i].last_step == 60 &&
                   !strcmp(rl.runs[i].method, "lora");
    CHECK(demo, "run_demo summary");
    runs_free(&rl);
}

// --- misc: wrapping, key table

static void test_misc(void) {
    WrapLine wl[16];
    int n = wrap_text("I am Tuna, an AI assistant developed by Ann.", 12, wl, 16);
    CHECK(n == 5, "wrap lines %d", n); /* "I am Tuna," "an AI" "assistant" "developed by" "Ann." */
    for (int i = 0; i < n && i < 16; i++)
        CHECK(wl[i].len <= 12, "line %d len %zu", i, wl[i].len);
    CHECK(wrap_text("a\nb", 10, wl, 16) == 2, "newline splits");
    CHECK(wrap_text("", 10, wl, 16) == 1, "empty is one line");
    CHECK(wrap_text("abcdefghij", 3, wl, 16) == 4, "hard break");
    const char *path = "/tmp/tuna/runs/identity-lora-2";
    n = wrap_text(path, 12, wl, 16); /* "/tmp/tuna/" "runs/" "identity-lor" "a-2" */
    CHECK(n == 4 && wl[0].len == 10 && wl[1].off == 10 && wl[1].len == 5 && wl[2].len == 12,
          "a path breaks after slashes: %d lines", n);
    n = wrap_text("output: /tmp/x/runs already exists", 16, wl, 16);
    CHECK(n == 3 && wl[0].len == 7, "spaces first: %d lines, first %zu", n, wl[0].len);
    /* every action reachable from the table is bound once per screen for a given key */
    const KeyBinding *t = keys_table();
    int dup = 0;
    for (int i = 0; t[i].key; i++)
        for (int j = i + 1; t[j].key; j++)
            if (t[i].key == t[j].key && (t[i].screens & t[j].screens)) dup++;
    CHECK(dup == 0, "%d duplicate key bindings", dup);
    CHECK(keys_lookup(SCR_TRAIN, 'p', 0) == ACT_PAUSE &&
                  keys_lookup(SCR_CHAT, 'q', 1) == ACT_NONE &&
                  keys_lookup(SCR_CHAT, 'q', 0) == ACT_QUIT,
          "lookup respects text input");
}

// --- the line editor (Setup's values)

static void test_edit(void) {
    LineEdit e;
    edit_set(&e, "q_proj,v_proj");
    CHECK(e.cur == 13 && e.len == 13, "edit_set puts the cursor at the end (%zu)", e.cur);
    edit_op(&e, EDIT_HOME);
    edit_op(&e, EDIT_RIGHT);
    edit_insert(&e, "X", 1);
    CHECK(!strcmp(e.buf, "qX_proj,v_proj") && e.cur == 2, "insert at the cursor: %s", e.buf);
    edit_op(&e, EDIT_BACKSPACE);
    edit_op(&e, EDIT_DELETE);
    CHECK(!strcmp(e.buf, "qproj,v_proj") && e.cur == 1, "Backspace and Delete: %s", e.buf);
    edit_op(&e, EDIT_END);
    edit_op(&e, EDIT_KILL_WORD);
    CHECK(!strcmp(e.buf, "qproj,"), "^W kills the word before the cursor: %s", e.buf);
    edit_op(&e, EDIT_LEFT);
    edit_op(&e, EDIT_KILL_AFTER);
    CHECK(!strcmp(e.buf, "qproj") && e.cur == 5, "^K kills to the end: %s", e.buf);
    edit_op(&e, EDIT_LEFT);
    edit_op(&e, EDIT_KILL_BEFORE);
    CHECK(!strcmp(e.buf, "j") && e.cur == 0, "^U kills before the cursor: %s", e.buf);
    edit_op(&e, EDIT_END);
    edit_op(&e, EDIT_KILL_BEFORE);
    CHECK(!strcmp(e.buf, "") && e.len == 0 && e.cur == 0, "^U at the end clears the line");
    edit_op(&e, EDIT_LEFT);
    edit_op(&e, EDIT_BACKSPACE);
    edit_op(&e, EDIT_DELETE);
    CHECK(e.len == 0 && e.cur == 0, "keys on an empty line do nothing");
    /* UTF-8: the cursor moves by characters, Backspace removes a whole one */
    edit_set(&e, "a\xc3\xa9"
                 "b"); /* a, e-acute, b */
    edit_op(&e, EDIT_LEFT);
    CHECK(e.cur == 3, "Left steps over b (%zu)", e.cur);
    edit_op(&e, EDIT_LEFT);
    CHECK(e.cur == 1, "Left steps over a 2-byte character (%zu)", e.cur);
    edit_op(&e, EDIT_RIGHT);
    edit_op(&e, EDIT_BACKSPACE);
    CHECK(!strcmp(e.buf, "ab") && e.cur == 1, "Backspace removes the whole character");
    /* full: an insert that does not fit changes nothing */
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    edit_set(&e, big);
    CHECK(e.len == sizeof e.buf - 1 && e.buf[e.len] == 0, "edit_set cuts to fit (%zu)", e.len);
    CHECK(edit_insert(&e, "y", 1) == -1 && e.len == sizeof e.buf - 1, "a full line refuses");
    /* horizontal scroll: the cursor stays in the field, with context on both sides */
    edit_set(&e, "runs/a-very-long-folder-name/that-goes-on-and-on/identity-lora");
    int w = 20, col = edit_view(&e, w);
    CHECK(col >= 0 && col <= w - 1 && e.off > 0, "at the end: col %d off %zu", col, e.off);
    CHECK(e.len - e.off <= (size_t)w - 1, "at the end the field shows the tail (off %zu)", e.off);
    edit_op(&e, EDIT_HOME);
    col = edit_view(&e, w);
    CHECK(col == 0 && e.off == 0, "Home scrolls back to the start (col %d off %zu)", col, e.off);
    for (int i = 0; i < 25; i++)
        edit_op(&e, EDIT_RIGHT);
    col = edit_view(&e, w);
    CHECK(col >= 2 && col <= w - 3 && e.off > 0, "mid-line: context both sides (col %d)", col);
    CHECK(e.off + (size_t)col == e.cur, "col = cursor - off for ASCII (%zu + %d != %zu)", e.off,
          col, e.cur);
    for (int i = 0; i < 22; i++)
        edit_op(&e, EDIT_LEFT);
    col = edit_view(&e, w);
    CHECK(e.cur == 3 && e.off <= 1 && col >= 2, "moving left scrolls back (off %zu col %d)", e.off,
          col);
    edit_set(&e, "short");
    col = edit_view(&e, w);
    CHECK(col == 5 && e.off == 0, "a short value does not scroll");
}

// --- a fresh run folder name

static void test_fresh_name(void) {
    char dir[] = "/tmp/tuna_ui_fresh_XXXXXX", base[256], out[256], p[300];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(base, sizeof base, "%s/identity-lora", dir);
    CHECK(runs_fresh_name(base, out, sizeof out) == 0 && !strcmp(out, base), "free: %s", out);
    mkdir(base, 0755);
    CHECK(runs_fresh_name(base, out, sizeof out) == 1 &&
                  !strcmp(out + strlen(dir), "/identity-lora-2"),
          "taken -> -2: %s", out);
    snprintf(p, sizeof p, "%s-2", base);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s-3", base);
    FILE *f = fopen(p, "w"); /* a file takes the name too */
    if (f) fclose(f);
    CHECK(runs_fresh_name(base, out, sizeof out) == 1 &&
                  !strcmp(out + strlen(dir), "/identity-lora-4"),
          "-2 and -3 taken -> -4: %s", out);
    snprintf(p, sizeof p, "%s-2", base);
    CHECK(runs_fresh_name(p, out, sizeof out) == 1 &&
                  !strcmp(out + strlen(dir), "/identity-lora-4"),
          "from -2 counts on: %s", out);
    CHECK(runs_fresh_name(base, out, 8) == -1, "too long for the buffer");
    snprintf(p, sizeof p, "%s/x/y", dir);
    CHECK(runs_fresh_name(p, out, sizeof out) == 0, "a missing parent folder is free");
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    CHECK(system(p) == 0, "cleanup");
}

int main(void) {
    test_layouts();
    test_plot();
    test_events();
    test_misc();
    test_edit();
    test_fresh_name();
    return test_report("test_ui_layout");
}
