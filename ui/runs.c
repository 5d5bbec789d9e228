/* runs.c: scan a runs folder and summarise each run from its metrics.jsonl (see runs.h). */
#include "runs.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../src/xalloc.h"
#include "source.h"

static int pid_alive(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/train.pid", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long pid = 0;
    int ok = fscanf(f, "%ld", &pid) == 1 && pid > 0;
    fclose(f);
    if (!ok) return -1;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

int runs_read_one(const char *run_dir, RunInfo *out) {
    memset(out, 0, sizeof *out);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", run_dir);
    size_t tl = strlen(tmp);
    while (tl > 1 && tmp[tl - 1] == '/')
        tmp[--tl] = 0;
    const char *slash = strrchr(tmp, '/');
    snprintf(out->name, sizeof out->name, "%.255s", slash ? slash + 1 : tmp);
    snprintf(out->dir, sizeof out->dir, "%s", run_dir);
    out->last_step = out->total_steps = -1;
    out->best_eval = out->last_loss = (double)NAN;
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    out->mtime = (double)st.st_mtime;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    Event *ev = xmalloc(sizeof *ev);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int done = 0, paused = 0, any = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (event_parse(line, (size_t)len, ev) != 0) continue;
        any = 1;
        if (ev->step > out->last_step) out->last_step = ev->step;
        if (ev->total_steps > 0) out->total_steps = ev->total_steps;
        switch (ev->type) {
        case EV_START:
            event_str(out->method, sizeof out->method, ev->method);
            event_str(out->model, sizeof out->model, ev->model);
            event_str(out->dataset, sizeof out->dataset, ev->dataset);
            done = 0; /* a resumed run appends a new start */
            break;
        case EV_STEP:
            if (isfinite(ev->loss)) out->last_loss = ev->loss;
            break;
        case EV_EVAL:
            if (isfinite(ev->eval_loss) && !(ev->eval_loss >= out->best_eval))
                out->best_eval = ev->eval_loss;
            break;
        case EV_STATE: paused = ev->paused; break;
        case EV_DONE:
            done = 1;
            snprintf(out->status, sizeof out->status, "%.20s", ev->name);
            break;
        default: break;
        }
    }
    free(line);
    free(ev);
    fclose(f);
    if (!any)
        snprintf(out->status, sizeof out->status, "empty");
    else if (!done) {
        int alive = pid_alive(run_dir);
        int fresh = difftime(time(NULL), (time_t)out->mtime) < 60;
        if (alive == 1 || (alive == -1 && fresh))
            snprintf(out->status, sizeof out->status, "%s", paused ? "paused" : "running");
        else
            snprintf(out->status, sizeof out->status, "stale");
    }
    return 0;
}

static int by_mtime_desc(const void *a, const void *b) {
    const RunInfo *x = a, *y = b;
    if (x->mtime != y->mtime) return x->mtime < y->mtime ? 1 : -1;
    return strcmp(x->name, y->name);
}

int runs_scan(const char *dir, RunsList *out) {
    runs_free(out);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 16;
            out->runs = xrealloc(out->runs, (size_t)cap * sizeof *out->runs);
        }
        if (runs_read_one(path, &out->runs[out->n]) == 0) out->n++;
    }
    closedir(d);
    if (out->n) qsort(out->runs, (size_t)out->n, sizeof *out->runs, by_mtime_desc);
    return 0;
}

void runs_free(RunsList *l) {
    if (!l) return;
    free(l->runs);
    l->runs = NULL;
    l->n = 0;
}

static int path_taken(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0 || errno != ENOENT;
}

int runs_fresh_name(const char *base, char *out, size_t n) {
    size_t bl = strlen(base);
    if (!n) return -1;
    snprintf(out, n, "%s", base);
    if (bl >= n) return -1;
    if (!path_taken(base)) return 0;
    /* the stem: base without a trailing "-N" (and without trailing slashes) */
    size_t sl = bl;
    while (sl > 1 && base[sl - 1] == '/')
        sl--;
    size_t d = sl;
    while (d > 0 && base[d - 1] >= '0' && base[d - 1] <= '9')
        d--;
    long from = 2;
    if (d < sl && d > 1 && base[d - 1] == '-' && base[d - 2] != '/' && sl - d < 9) {
        from = strtol(base + d, NULL, 10) + 1;
        sl = d - 1;
    }
    char *cand = xmalloc(n);
    int rc = -1;
    for (long k = from; k < from + 10000; k++) {
        int w = snprintf(cand, n, "%.*s-%ld", (int)sl, base, k);
        if (w < 0 || (size_t)w >= n) break;
        if (!path_taken(cand)) {
            memcpy(out, cand, (size_t)w + 1);
            rc = 1;
            break;
        }
    }
    free(cand);
    return rc;
}
