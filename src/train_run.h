/* train_run.h: the parts of a training run, shared by src/train.c (setup, the step loop, the
 * objectives) and src/train_out.c (everything the run puts out: the run folder's files, the
 * events, checkpoints, the terminal lines). Internal to those two files; front ends use
 * train.h. Every file a run writes is written by a function of train_out.c, so that a run
 * whose process should not write (a data-parallel rank other than 0) is one condition there. */
#ifndef TUNA_SRC_TRAIN_RUN_H
#define TUNA_SRC_TRAIN_RUN_H

#include <stddef.h>
#include <stdio.h>

#include "../kernels/backend.h"
#include "dataset.h"
#include "events.h"
#include "model.h"
#include "model_train.h"
#include "optim.h"
#include "pref.h"
#include "template.h"
#include "tokenizer.h"
#include "train.h"
#include "value_head.h"

typedef struct Run {
    const TrainConfig *cfg;
    const TrainHooks *hooks;
    char dir[1024];
    FILE *metrics, *tlog;
    double t0;
    Backend *be;
    Model *m;
    Tokenizer *tok;
    Template *tpl;
    /* full and freeze: the chat template the run's HF checkpoints carry (template_export_jinja,
     * made at the first save; NULL: the model's own) */
    char *hf_template;
    int hf_template_made;
    Dataset *all, *train, *val;
    Batcher batcher;
    int have_batcher;
    TrainState *ts;
    Optim opt;
    int have_opt;
    int B, T, total, warmup, steps_per_epoch, step;
    int eval_every, save_every; /* steps between evals / checkpoints (0: at the end only) */
    int save_best;              /* save_strategy best: a checkpoint at each new lowest eval loss */
    int mix;                    /* DATASET_MIX_* of --mix-strategy */
    double mix_probs[64];       /* --interleave-probs */
    int n_mix_probs;
    int pad_multiple; /* --pad-to batch: rows of each batch's longest, rounded up to this */
    Sched sched;      /* the lr schedule (its warmup and total are those above) */
    double lr;        /* the peak learning rate: cfg->lr, or what auto chose */
    double best_eval;
    int best_step;         /* the step of the lowest eval loss (Hugging Face's best_global_step) */
    int best_ckpt;         /* load_best_model_at_end: checkpoint-N of it when saved (0: none yet) */
    double best_ckpt_eval; /* its eval loss */
    int es_evals;          /* early stopping: evals in a row without a lower eval loss */
    double cores_checked;  /* follow_free_cores: time of the last check */
    int cores_seen;        /* the free cores that check found (a change needs two in a row) */
    int lock_fd;           /* RUN/.lock, flock'ed while the run writes the folder (-1: none) */
    char **pending;        /* events from before metrics.jsonl is open (the folder untouched) */
    int n_pending;
    int write_errno; /* first failed write of metrics.jsonl / trainer_log.jsonl */
    const char *write_file_name;
    int bar_shown;               /* a progress bar without its newline is on the terminal */
    const struct Objective *obj; /* the stage's step and eval (objectives[]) */
    int rows; /* rows of a micro-batch: B, or 2B for pairs (chosen, then rejected) */
    /* stage dpo: the loss, and the reference: a METHOD_NONE state over the trained Model (LoRA,
     * P-tuning: the adapter off) or over ref_m, a frozen copy (full, freeze); NULL for orpo and
     * simpo */
    int pref_on;
    PrefConfig pref;
    Model *ref_m;
    TrainState *ref_ts;
    PrefSums eval_pref; /* the last eval's sums over the validation pairs */
    /* stage kto: the loss (the reference as for dpo: ref_ts, ref_m) and the last eval's sums */
    int kto_on;
    KtoConfig kto;
    KtoSums eval_kto;
    double eval_acc; /* sft, pt with compute_accuracy: the last eval's accuracy (NaN: none) */
    /* stage rm: the value head and its own AdamW (one clipping norm over both), the last
     * eval's sums */
    int rm_on, have_vh;
    ValueHead vh;
    Optim vh_opt;
    RmSums eval_rm;
    int rank, world; /* data parallel (dist.h): rank 0 alone writes files, events and lines */
    float *dist_buf; /* sum_grads' host copy of a device gradient */
    size_t dist_cap;
    struct GradSync *gsync; /* the gradient buckets (src/train.c); NULL in one process */
} Run;

// --- src/train_out.c: events (metrics.jsonl and the hook)

/* Appends one event to metrics.jsonl (flushed: watchers follow the file) and the hook; before
 * the file is open, keeps it for run_files_open. */
void emit(Run *r, const Event *ev);
/* The start event (with the resolved config) and the one-line summary of the setup. */
void emit_start(Run *r);
/* The last eval's metrics for emit_eval (names, values; at most 10): rm's, kto's, and the
 * policy's logits/chosen, logits/rejected, entropy (and dpo's mean_token_accuracy) where the
 * backend measured them, with LLaMA-Factory's eval_ prefix: src/train.c. */
int run_eval_metrics(const Run *r, const char **names, double *v);
/* A log event: level "info" or "warn", also said on the terminal. */
void emit_log(Run *r, const char *level, const char *msg);
/* The same, recorded in metrics.jsonl only. */
void emit_note(Run *r, const char *level, const char *msg);
/* An eval event (and its trainer_log.jsonl line when tlog_too). */
void emit_eval(Run *r, double el, double epoch, double elapsed, double eta, int tlog_too);
void emit_state(Run *r, int paused);
/* The last event: status finished | stopped | error, the message, the best eval loss (NaN:
 * none), the steps skipped. */
void emit_done(Run *r, const char *status, const char *msg, double best, int skipped);
/* A step's line of LLaMA-Factory's trainer_log.jsonl. */
void tlog_step(Run *r, double loss, double lr, double epoch, double elapsed, double eta);

// --- the terminal

/* One line on stderr, never inside a progress bar (nothing when the hooks ask for quiet). */
void say(Run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The bar on a terminal; without one a line every progress_every seconds (and the last). */
void progress(Run *r, double loss, double lr_now, double tps, double real_tps, double eta,
              double *last_line);
/* Seconds as "42s", "3m05s" or "1h02m". */
void fmt_secs(double t, char *out, size_t cap);

// --- the run folder

/* Takes the folder (creates it, locks it, cleans what a dead trainer left), refusing one that
 * another trainer holds or that holds another run (unless resuming). */
int run_claim(Run *r, int resume, TunaErr *err);
/* train.pid, train_config.json (with its history of --allow-changes), metrics.jsonl and
 * trainer_log.jsonl (truncated to the resumed step), and the events kept so far. */
int run_files_open(Run *r, int resume, TunaErr *err);
/* The setup failed: see train_out.c. */
void run_files_failed(Run *r, int resume, const TunaErr *err);
void run_files_close(Run *r);
/* The error for the first failed write of metrics.jsonl / trainer_log.jsonl. */
int write_error(Run *r, TunaErr *err);
/* Takes the commands written to RUN/control since the last call (CTL_* bits). */
int read_control(Run *r);
/* The finished run's adapter or model at the root of its folder. */
int write_result(Run *r, int adapter, TunaErr *err);

// --- checkpoints

/* checkpoint-STEP, written by rank 0. Every rank calls it at the same step: with --zero 1 over
 * several ranks each sends its slice of the optimizer state to rank 0 first (the others return
 * at once otherwise). Writes nothing after a failed write of the run's files (write_errno). */
int save_checkpoint(Run *r, TunaErr *err);
/* load_best_model_at_end, as the run finishes: the trainable tensors (and rm's value head) of
 * the best checkpoint (Hugging Face's best_model_checkpoint: checkpoint-best_step when it was
 * saved, else the best one saved before), said in a log line; nothing when the last step is the
 * best or no checkpoint holds a best. */
int load_best_result(Run *r, TunaErr *err);
/* --resume: the latest complete checkpoint, loaded into the run (step, optimizer, data order). */
int resume_pick(Run *r, TunaErr *err);
/* After too many non-finite steps: sets aside a suspect checkpoint (-1: none), and says in
 * keep which checkpoint the run leaves to resume from. */
void ckpt_set_aside(Run *r, int suspect, char *keep, size_t cap);

#endif
