/* optim.h: AdamW over a TrainState's trainable tensors (PyTorch semantics: decoupled weight
 * decay, bias correction; no decay on 1-D tensors: norms and biases), the learning-rate
 * schedules of transformers (get_scheduler's, with their lr_scheduler_kwargs; warmup from 0),
 * and global-norm gradient clipping. Moments live in backend memory: one block for m and one
 * for v, the tensors' slices one after another (AdamW is elementwise: no alignment needed).
 * Data parallel with --zero 1 (ZeRO stage 1, optim_init_shard): each rank keeps the moments
 * of one contiguous slice of the tensors laid end to end, updates that slice of the values,
 * and optim_share_params gives every rank the rest (collectives over dist.h). One thread at a
 * time. */
#ifndef TUNA_SRC_OPTIM_H
#define TUNA_SRC_OPTIM_H

#include <stddef.h>

#include "err.h"
#include "model_train.h"

/* transformers' SchedulerType names, in this order (sched_names in optim.c) */
typedef enum {
    SCHED_CONSTANT,
    SCHED_CONSTANT_WARMUP,
    SCHED_LINEAR,
    SCHED_COSINE,
    SCHED_COSINE_RESTARTS, /* cosine_with_restarts: hard restarts, num_cycles of them */
    SCHED_POLYNOMIAL,      /* polynomial: to lr_end, pct_remaining ** power */
    SCHED_INVERSE_SQRT,    /* inverse_sqrt: 1 / sqrt((step + shift) / timescale) */
    SCHED_COSINE_MIN_LR,   /* cosine_with_min_lr: the cosine down to min_lr (or min_lr_rate x lr) */
    SCHED_COSINE_WARMUP_MIN_LR, /* cosine_warmup_with_min_lr: its warmup and progress run a step on */
    SCHED_WSD,                  /* warmup_stable_decay */
    SCHED_PLATEAU, /* reduce_lr_on_plateau: torch's ReduceLROnPlateau, stepped by the evals */
    SCHED_N
} SchedType;

/* A schedule with its arguments (transformers' lr_scheduler_kwargs, their defaults where
 * unset): what get_scheduler(name, ..., scheduler_specific_kwargs) builds. */
typedef struct Sched {
    SchedType type;
    int warmup, total;
    double lr;             /* the peak lr (polynomial's lr_init; min_lr's divisor) */
    double num_cycles;     /* cosine kinds, wsd's cosine decay: 0.5; restarts: 1 */
    double min_lr_rate;    /* cosine_with_min_lr and cosine_warmup_with_min_lr */
    double warmup_lr_rate; /* cosine_warmup_with_min_lr; < 0: unset */
    double lr_end, power;  /* polynomial: 1e-7, 1 */
    double timescale;      /* inverse_sqrt: the warmup, or 10000 without one */
    int num_decay_steps, num_stable_steps; /* wsd (stable: total - warmup - decay if unset) */
    int warmup_kind, decay_kind;           /* wsd: 0 linear, 1 cosine, 2 1-sqrt */
    double min_lr_ratio;                   /* wsd */
    /* reduce_lr_on_plateau's arguments (torch's defaults: min, 0.1, 10, 1e-4 rel, 0, 0, 1e-8)
     * and state: the lr now, the best metric, the bad evals and the cooldown left */
    int p_max, p_abs, p_patience, p_cooldown;
    double p_factor, p_threshold, p_min_lr, p_eps;
    double p_lr, p_best;
    int p_bad, p_cool;
} Sched;

/* The name's SchedType; -1 if it is none of transformers' that tuna runs. */
int sched_parse(const char *name);
/* The names tuna runs, "a, b, ... or z", for messages. */
const char *sched_names_list(void);
/* s from a name and kwargs (a JSON object as text, "" or "{}" for none), as transformers'
 * get_scheduler makes it for an optimizer whose lr is lr: a key the schedule does not take, a
 * value of the wrong kind or range, or a missing required one is an error naming it (as
 * transformers' TypeError / ValueError). */
int sched_init(Sched *s, const char *name, const char *kwargs, double lr, int warmup, int total,
               TunaErr *err);
/* The multiplier of the peak lr for optimizer step `step` (0-based), as the LambdaLR of
 * transformers' schedule gives it (reduce_lr_on_plateau: the lr now over the peak). */
double sched_factor(const Sched *s, int step);
/* The lr of optimizer step `step`: the peak times sched_factor, reduce_lr_on_plateau's own. */
double sched_lr(const Sched *s, int step);
/* reduce_lr_on_plateau: an eval's metric, as ReduceLROnPlateau.step(metric) takes it (the lr
 * drops by factor after more than patience evals without an improvement); nothing for the
 * other schedules. */
void sched_eval(Sched *s, double metric);

/* A stretch of consecutive tensors whose values, gradients and moments each lie end to end in
 * memory and that share the weight-decay flag: one AdamW pass covers it. A LoRA run's A and B
 * matrices (one block, src/model_train.c) are one span; full fine-tuning alternates the
 * matrices of a layer (decay) with its norms and biases (none). */
typedef struct OptimSpan {
    float *p, *g, *m, *v;
    size_t n;
    int decay;
    float lr_mult; /* the span's lr is the step's lr times this (LoRA+) */
} OptimSpan;

typedef struct Optim {
    float b1, b2, eps, wd;
    int t;          /* steps taken */
    int n;          /* tensors */
    float **m, **v; /* per tensor: the moments of its part in this rank's slice (NULL: none) */
    size_t *first;  /* per tensor: where that part starts in the tensor (0 unsharded) */
    size_t *len;    /* per tensor: that part's length (the tensor's unsharded) */
    float *lr_mult; /* per tensor: 1, or loraplus_lr_ratio for LoRA+'s B group */
    float *m_block, *v_block; /* backend memory, block_len floats each: this rank's slice */
    size_t block_len;
    OptimSpan *spans; /* the AdamW passes of a step, over this rank's slice of the tensors */
    int n_spans;
    Backend *be;
    /* the flat space: the tensors end to end in their order, total values; rank `rank` of
     * `world` keeps [bounds[rank], bounds[rank + 1]) (world near-equal ranges; one: all) */
    int rank, world;
    size_t total;
    size_t *bounds; /* (world + 1) */
    size_t *off;    /* per tensor: its offset in the flat space */
    float *p0;      /* tp[0].data: the tensors optim_step is given must be these */
    float *host;    /* a window's host copy (backends whose memory is not the host's) */
} Optim;

/* The tensors are a TrainParam array (train_params of a TrainState, or any other). */
int optim_init(Optim *o, Backend *be, const TrainParam *tp, int np, float b1, float b2, float eps,
               float wd, TunaErr *err);
/* The same as rank `rank` of `world` of a sharded optimizer (ZeRO stage 1): the moments of this
 * rank's slice only, zeroed; every rank calls it with the same tensors (shapes and order).
 * optim_init is rank 0 of 1. */
int optim_init_shard(Optim *o, Backend *be, const TrainParam *tp, int np, float b1, float b2,
                     float eps, float wd, int rank, int world, TunaErr *err);
void optim_free(Optim *o);
/* The bytes of this rank's moments (m and v). */
size_t optim_state_bytes(const Optim *o);
/* LoRA+ (Hayou et al. 2024) as LLaMA-Factory's create_loraplus_optimizer groups it: the tensors
 * whose name holds "lora_B", and any 1-D tensor, step with lr * ratio; the rest (lora_A, trainable
 * token rows) with lr. Weight decay stays per tensor (tp[i].decay), as its decay/no-decay groups;
 * the schedule scales both lrs alike (LambdaLR over every group). Call after optim_init with the
 * same tensors. LLaMA-Factory's loraplus_lr_embedding is for lora_embedding_B, which tuna does
 * not have (no LoRA on embeddings). TUNA_EINVAL when ratio <= 0 or no tensor is a B. */
int optim_loraplus(Optim *o, const TrainParam *tp, int np, float ratio, TunaErr *err);

/* Global L2 norm of all gradients and torch.nn.utils.clip_grad_norm_'s factor: if max_norm > 0
 * and the norm exceeds it, the gradients are to be scaled by max_norm / (norm + 1e-6), else 1.
 * With gscale NULL the gradients are scaled in place; otherwise the factor goes to *gscale
 * for optim_step, which applies it in the same pass (one sweep less over the gradients).
 * known (or NULL): Σ g² of tensor i where known[i] >= 0 (train_grad_sumsq), not summed again.
 * Returns the norm before clipping. */
double optim_clip(Backend *be, const TrainParam *tp, int np, float max_norm, float *gscale,
                  const double *known);
/* One AdamW step with learning rate lr on the gradients times gscale (1 for none), over the
 * tensors given to optim_init (tp and np must be those), one pass per span: sharded, over this
 * rank's slice only (every rank has the whole gradient; the step is elementwise, so each value
 * comes out as one process computes it, bit for bit, on a backend whose adamw gives an element
 * the same result wherever it falls in a pass). */
void optim_step(Optim *o, const TrainParam *tp, int np, float lr, float gscale);
/* Sharded: after optim_step, every rank fetches the values the others updated (an allgather per
 * tensor, through host copies where the backend's memory is not the host's). Collective: every
 * rank calls it after every step it takes. Unsharded: nothing. */
int optim_share_params(Optim *o, const TrainParam *tp, int np, TunaErr *err);

/* Moments to and from host: m[i], v[i] sized like the tensors; sharded, only this rank's parts
 * of them are written (download) or read (upload): a resume reads the whole moments on every
 * rank and each keeps its slice, whatever the number of ranks that saved them. */
void optim_download(const Optim *o, float **m, float **v);
void optim_upload(Optim *o, const float *const *m, const float *const *v);
/* Checkpoints: the whole moments onto rank 0's m[i], v[i] (sized like the tensors; NULL on the
 * other ranks): the layout one process has. Sharded it is collective (every rank calls it, each
 * sends its slice); unsharded it is optim_download. */
int optim_gather(Optim *o, float **m, float **v, TunaErr *err);

#endif
