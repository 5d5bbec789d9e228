/* history.h: UI-owned history of a run (nvtop's interface_ring_buffer): fixed-size rings that
 * overwrite the oldest entry, fed by history_apply from drained events. Drawing only reads
 * (ring_linear copies out for plotting), so the data a frame shows never changes under it. The
 * creator frees with history_free (NULL-safe). UI thread only. */
#ifndef TUNA_UI_HISTORY_H
#define TUNA_UI_HISTORY_H

#include <stddef.h>

#include "source.h"

#define HIST_STEPS   65536 /* step points kept (older ones drop off the "all" view) */
#define HIST_EVALS   4096
#define HIST_SAMPLES 64
#define HIST_LOGS    512

typedef struct Ring {
    double *v;           /* (cap) */
    size_t cap, head, n; /* head: next write index */
} Ring;

/* The i-th oldest value (0 <= i < n). */
double ring_at(const Ring *r, size_t i);
/* The newest value, NaN when empty. */
double ring_last(const Ring *r);
/* Copies the values oldest-first into out (r->n entries). */
void ring_linear(const Ring *r, double *out);

typedef struct HistSample {
    long step;
    char prompt[UI_NAME_MAX];
    char text[UI_TEXT_MAX];
} HistSample;

typedef struct HistLog {
    int level; /* 0 info, 1 warn, 2 error */
    char text[UI_TEXT_MAX];
} HistLog;

typedef enum RunStatus {
    RUN_WAITING,
    RUN_RUNNING,
    RUN_PAUSED,
    RUN_FINISHED,
    RUN_STOPPED,
    RUN_ERROR
} RunStatus;

typedef struct History {
    // --- from "start"
    char run[UI_NAME_MAX], model[UI_NAME_MAX], method[64], dataset[UI_NAME_MAX];
    long total_steps;
    double epochs;
    int world_size; /* the processes of a data-parallel run (MPI ranks); 1 alone */
    // --- latest values
    long step;
    double epoch, loss, lr, grad_norm, tokens_per_s, elapsed, eta;
    double real_tok_s; /* tokens with a target per second, NaN before a step that has it */
    double eval_loss, perplexity, best_eval;
    long best_eval_step;
    /* preference stages (their step and eval events carry rewards/margins and
     * rewards/accuracies, TRL's names): NaN until seen */
    double reward_acc, reward_margin, eval_reward_acc, eval_reward_margin;
    RunStatus status;
    char done_msg[UI_TEXT_MAX];
    char last_checkpoint[UI_NAME_MAX];
    // --- series
    Ring step_x, loss_y, lr_y, gn_y, tps_y; /* one entry per step event */
    Ring eval_x, eval_y;
    Ring margin_x, margin_y;          /* steps that carried rewards/margins */
    Ring emargin_x, emargin_y;        /* evals that carried eval_rewards/margins */
    HistSample samples[HIST_SAMPLES]; /* ring */
    size_t samples_head, samples_n;
    HistLog logs[HIST_LOGS]; /* ring */
    size_t logs_head, logs_n;
    unsigned long version; /* bumped by every change: the screen redraws when it moves */
} History;

History *history_new(void);
void history_free(History *h);
void history_reset(History *h);
/* Folds one event into the history. */
void history_apply(History *h, const Event *ev);
/* i-th newest sample / log line (0 = newest); NULL past the end. */
const HistSample *history_sample(const History *h, size_t i);
const HistLog *history_log(const History *h, size_t i);
/* Adds a line to the log ring from the UI itself (command acks, errors). */
void history_note(History *h, int level, const char *text);
const char *run_status_name(RunStatus s);

#endif
