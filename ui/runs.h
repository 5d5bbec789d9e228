/* runs.h: the runs folder (default ./runs) summarised for the Runs screen: each subfolder with a
 * metrics.jsonl is a run; its status comes from the last lines (a "done" line gives finished /
 * stopped / error; no "done" and a live train.pid or a file written in the last 60 s give
 * running; else "stale"), plus method, best eval loss, last step. Curses-free. The creator frees
 * with runs_free. Any thread. */
#ifndef TUNA_UI_RUNS_H
#define TUNA_UI_RUNS_H

#include <stddef.h>

typedef struct RunInfo {
    char name[256];
    char dir[4096];
    char status[32]; /* running | paused | finished | stopped | error | stale | empty */
    char method[64];
    char model[256];
    char dataset[256];
    long last_step, total_steps;
    double best_eval; /* NaN when none */
    double last_loss; /* NaN when none */
    double mtime;     /* metrics.jsonl modification time (epoch seconds) */
} RunInfo;

typedef struct RunsList {
    RunInfo *runs; /* (n), newest first */
    int n;
} RunsList;

/* Scans dir; a missing dir gives an empty list (returns 0). */
int runs_scan(const char *dir, RunsList *out);
/* Summarises one run folder. Returns 0, or -1 if it has no metrics.jsonl. */
int runs_read_one(const char *run_dir, RunInfo *out);
void runs_free(RunsList *l); /* NULL-safe, leaves it empty */

/* A run folder name nothing occupies yet: base itself when no file or folder of that name
 * exists, else base-2, base-3, ... (a base that already ends in -N counts on from N+1:
 * runs/x-2 -> runs/x-3). Writes it to out; returns 0 for base itself, 1 for another name, -1
 * when none fits in n bytes or 10000 are taken (out = base). */
int runs_fresh_name(const char *base, char *out, size_t n);

#endif
