/* model_train.h: the training forward and backward pass of the decoder, for the methods
 * full (every weight), freeze (the last N layers), LoRA (low-rank adapters on chosen
 * linear layers, base frozen) and P-tuning v2 (trainable key/value prefixes).
 *
 * A TrainState owns the gradient buffer, the LoRA adapter weights and grads, and the
 * activations for one micro-batch of B x T tokens, all sized once at init (no allocation
 * in the step). With grad_checkpoint it keeps each layer's input and one layer's other
 * activations only, and the backward recomputes each layer's forward from its input
 * (bit-identical results for about one more forward). Gradients accumulate across calls
 * until train_zero_grad, so gradient accumulation is just several calls. The trainable
 * tensors are listed as TrainParam entries (name, data, grad, size, weight decay or not)
 * for the optimizer and for saving.
 * One thread at a time (the worker that owns the Model). */
#ifndef TUNA_SRC_MODEL_TRAIN_H
#define TUNA_SRC_MODEL_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

/* METHOD_NONE: nothing trains (evaluation: forward and loss only, no gradient memory). */
/* METHOD_PTUNING: P-tuning v2 / prefix tuning as PEFT's PREFIX_TUNING: trainable key/value
 * prefixes of prefix_tokens positions in every layer (not rotated; the real tokens sit at
 * positions P..P+T-1), optionally produced by the reparameterization MLP. */
/* METHOD_PROMPT: prompt tuning as PEFT's PROMPT_TUNING: prefix_tokens trainable embeddings
 * prepended to every row's input embeddings (positions 0..P-1, the real tokens after them).
 * METHOD_PTUNING_V1: P-tuning v1 as PEFT's P_TUNING: the same virtual tokens, made each step by
 * a prompt encoder (an MLP, or a bidirectional LSTM and an MLP head; src/prompt_tuning.h). */
typedef enum {
    METHOD_NONE,
    METHOD_FULL,
    METHOD_FREEZE,
    METHOD_LORA,
    METHOD_PTUNING,
    METHOD_PROMPT,
    METHOD_PTUNING_V1
} TrainMethod;

/* 1 for the methods whose result is an adapter beside a frozen base (lora, ptuning, prompt,
 * ptuning-v1), 0 for those that change the model's weights (full, freeze). */
static inline int train_method_adapter(TrainMethod m) {
    return m == METHOD_LORA || m == METHOD_PTUNING || m == METHOD_PROMPT || m == METHOD_PTUNING_V1;
}

typedef struct TrainSetup {
    TrainMethod method;
    int freeze_layers; /* freeze: how many last layers train */
    /* freeze: the modules of those layers that train, comma-separated (LLaMA-Factory's
     * freeze_trainable_modules: self_attn, mlp, input_layernorm, ...; NULL, "" or "all": all) */
    const char *freeze_modules;
    int lora_rank; /* lora */
    float lora_alpha;
    float lora_dropout;
    int lora_rslora; /* scale alpha/sqrt(r) instead of alpha/r */
    int lora_dora;   /* DoRA (PEFT use_dora): each module's output rows scaled by a trainable
                       magnitude over the row norm of W + scale·B·A (detached); fp32 base, no
                       dropout */
    int lora_pissa;  /* PiSSA init (PEFT init_lora_weights="pissa"): A, B from the top-r SVD of
                       each adapted weight W, and W replaced by the residual W - scale·B·A */
    const char *lora_targets; /* comma list of HF module names, "all", or NULL for the default */
    const char *lora_tokens;  /* lora: comma list of token ids whose embedding rows also train
                                 (PEFT trainable_token_indices), or NULL */
    uint64_t seed;            /* LoRA init and dropout */
    int prefix_tokens;        /* prefix, prompt, ptuning-v1: num_virtual_tokens */
    int prefix_projection;    /* prefix: the MLP embedding -> tanh -> prefix */
    int prefix_hidden;        /* prefix, ptuning-v1: encoder_hidden_size */
    int prompt_lstm;          /* ptuning-v1: the LSTM encoder (else the MLP) */
    int prompt_layers;        /* ptuning-v1 LSTM: encoder_num_layers (0: PEFT's 2) */
    /* prompt: prompt_tuning_init TEXT: the init text's token ids (as the tokenizer gives them,
     * BOS included when it adds one), repeated and cut to prefix_tokens as PEFT does; NULL:
     * RANDOM (N(0, 1)). Borrowed during train_state_init only. */
    const int32_t *prompt_init_ids;
    int prompt_init_n;
    int grad_checkpoint; /* keep layer inputs only; recompute the rest in the backward */
    /* NEFTune (Hugging Face's neftune_noise_alpha; 0: off): while training, the token
     * embeddings of each micro-batch get uniform noise on [-m, m), m = alpha / sqrt(T C), T the
     * row length without virtual tokens; the evals and the forwards without a backward none */
    float neftune_alpha;
    /* Hugging Face's label_smoothing_factor e (0: off): each target's loss is (1 - e) (-log p)
     * + e (-Σ log p) / V, in training and in the evals (the Trainer's LabelSmoother) */
    float label_smoothing;
    /* LLaMA-Factory's use_dft_loss: each target's loss (and gradient) times its probability;
     * use_eaft_loss: times (H / 3)^eaft_alpha, H the entropy over the 20 largest logits; held
     * constant (the xent op's XentWeight), in training and the evals */
    int dft, eaft;
    float eaft_alpha;
} TrainSetup;

/* A trainable tensor: where its values and gradient live, and its name for saving. */
typedef struct TrainParam {
    char name[160]; /* HF name (full/freeze) or PEFT adapter name (lora) */
    float *data;    /* backend memory */
    float *grad;    /* backend memory */
    size_t n;
    int ndim;
    int64_t shape[2];
    int decay; /* 0 for norms and biases (no weight decay) */
    int layer; /* the decoder layer whose backward makes this gradient, -1 for none (embeddings,
                  final norm, head, prefix, prompt, trainable tokens) */
} TrainParam;

typedef struct TrainState TrainState;

int train_state_init(Model *m, const TrainSetup *setup, int B, int T, TrainState **out,
                     TunaErr *err);
void train_state_free(TrainState *ts);
/* The trainable matrices that the products read (each trained layer's linear weights, and the
 * head when it trains; not the token and position tables as such) tracked by the backend
 * (BackendOps.weight_track, which may keep them in its products' form, refreshed by its AdamW
 * passes), or no longer (on 0: a sharded optimizer writes a slice of them per pass, so no copy
 * would ever be whole). train_state_init tracks them for full and freeze fine-tuning, and
 * train_state_free untracks them. */
void train_track_weights(TrainState *ts, int on);

/* The trainable tensors (owned by ts). */
const TrainParam *train_params(const TrainState *ts, int *n);
size_t train_param_count(const TrainState *ts); /* trainable floats */
/* Bytes of activation memory the forward keeps for the backward (the layer activations, the
 * final norm and logits, LoRA's dropped-out inputs and h·Aᵀ), without the backward scratch. */
size_t train_activation_bytes(const TrainState *ts);

/* What train_state_init allocates, computed from the config alone (no weights loaded), by the
 * same rules: for a model of config c with n_params weights, layer_params of them in each
 * decoder layer (model_param_count_for), this setup and B x T. The byte counts are backend
 * memory as train_state_init asks for it; together they are all it allocates there. */
typedef struct TrainSizes {
    size_t trainable;     /* = train_param_count */
    int lora_modules;     /* lora: the adapted linear layers, over all layers */
    size_t param_bytes;   /* an adapter's own values and trainable token rows (full and freeze
                             train the model's weights in place: 0) */
    size_t grad_bytes;    /* the gradients */
    size_t act_bytes;     /* = train_activation_bytes */
    size_t scratch_bytes; /* the backward's scratch, the prefix's buffers */
} TrainSizes;

/* Refuses what train_state_init refuses of the setup (targets, freeze layers, ranks, a cutoff
 * beyond learned positions), in the same words. */
int train_state_size(const ModelConfig *c, size_t n_params, size_t layer_params,
                     const TrainSetup *setup, int B, int T, TrainSizes *out, TunaErr *err);

void train_zero_grad(TrainState *ts);
/* known[p] = Σ g² of tp[p]'s gradient where the step's backward knows it (a trained matrix, or
 * several that tile the tensor, whose gradient one product wrote since train_zero_grad and
 * nothing else since: BackendOps.matmul_bwd_dw's sumsq, without a gradient hook), else -1. For
 * optim_clip; not where anything outside the backward changes the gradients (data parallel's sum). */
void train_grad_sumsq(const TrainState *ts, const TrainParam *tp, int np, double *known);

/* Forward (and, if backward, backward) of one micro-batch: ids and targets are host
 * (B_used, T) arrays, targets -100 where no loss. The loss gradient is scaled by
 * loss_scale (e.g. 1 / targets in the whole accumulated batch). Returns the summed
 * token losses in *loss_sum and the counted targets in *n_targets. B_used <= B. */
int train_step_fb(TrainState *ts, const int32_t *ids, const int32_t *targets, int B_used,
                  float loss_scale, int backward, double *loss_sum, int *n_targets, TunaErr *err);

/* An objective of whole sequences (the preference stages): given each row's sum of target
 * log-probabilities logp[b] (minus the sum of its token cross-entropies) and target count n[b],
 * b < B rows, it puts in scale[b] the factor on the gradient of each of row b's token
 * cross-entropies (d objective / d CE = -d objective / d logp[b]). */
typedef void (*TrainRowFn)(void *ctx, const double *logp, const int *n, int B, float *scale);

/* train_step_fb for such an objective. fn NULL: the forward only, no gradient. With fn: the
 * forward, then the LM head twice: a first pass of the losses alone gives the rows' logp and n,
 * fn their scales, and the second pass (the head's usual one) scales each row's dlogits by its
 * scale before the backward, which accumulates into the gradients (an exact per-row weight for
 * one more head matmul, not another forward). Either way logp[b] and n[b] (B_used, either may be
 * NULL) are the rows' sums and counts. */
int train_step_rows(TrainState *ts, const int32_t *ids, const int32_t *targets, int B_used,
                    TrainRowFn fn, void *ctx, double *logp, int *n, TunaErr *err);

/* A head of the caller's own on the final norm's output (the rm stage's value head) instead of
 * the LM head: fn gets the backend's (B*T, C) final hidden states and, when dhidden is not NULL
 * (a backward), a zeroed (B*T, C) backend buffer for their gradient, which the backward then
 * takes through the model into the gradients. The LM head is not run. */
typedef void (*TrainHiddenFn)(void *ctx, Backend *be, const float *hidden, float *dhidden, int B,
                              int T, int C);
int train_step_hidden(TrainState *ts, const int32_t *ids, int B_used, TrainHiddenFn fn, void *ctx,
                      int backward, TunaErr *err);

/* A gradient hook: the backward of train_step_fb (and _rows, _hidden) calls fn(ctx, l) as soon
 * as the gradients of decoder layer l (the TrainParams of .layer l) are final for this call, for
 * l = L-1 down to 0, then fn(ctx, -1) when all are (those of layer -1 last). The backend may still
 * be running the work queued before: sync before reading. Data-parallel training starts a layer's
 * allreduce there while the backward goes on (src/train.c); the engine knows nothing of it.
 * fn NULL: no hook (the default). The forward-only calls never call it. */
typedef void (*TrainGradFn)(void *ctx, int layer);
void train_set_grad_hook(TrainState *ts, TrainGradFn fn, void *ctx);

/* The row length T of the next train_step_fb calls: 1 <= T <= the T of train_state_init (the
 * buffers keep their size; a shorter T only does less work). Each row's positions restart at
 * 0 (after a prefix), and every position sees the whole row before it (spans cleared). */
int train_set_seq_len(TrainState *ts, int T, TunaErr *err);

/* Neat packing, after train_set_seq_len: seg_start (B, T) host, a Batch's seg_start: the
 * position in its row where the example holding each position starts. Positions restart
 * there and attention keeps to [seg_start, t], so each packed example computes what it would
 * alone in a row. NULL clears the spans. TUNA_EUNSUP with a prefix (ptuning); TUNA_EINVAL
 * when a start lies after its position. */
int train_set_spans(TrainState *ts, const int32_t *seg_start, TunaErr *err);

/* Dropout masks (and NEFTune's noise) change every step: the caller bumps this (the step
 * number)... */
void train_set_step_seed(TrainState *ts, uint64_t step);
/* ...and within a step every micro-batch (0, 1, ... of the step's gradient accumulation; 0 after
 * train_set_step_seed): each draws its own masks. */
void train_set_micro_batch(TrainState *ts, int micro);

/* The preference stages' metrics of the policy's logits (TRL's logits/chosen, logits/rejected,
 * entropy, mean_token_accuracy) and the evals' accuracy (evalloss.h): on, each train_step_rows
 * (and train_step_fb without a backward) also sums, per row of the batch, its
 * target positions' logit_stats (mean logit, entropy, is_top1) and counts them, read with
 * train_row_stats (B x 4, valid after the step; NULL when off). Returns 1 when on, 0 when off
 * or the backend has no logit_stats (the metrics are then not logged). Turning it off and on
 * again costs nothing (a step whose rows are not wanted: kto's KL rows). */
int train_set_logit_stats(TrainState *ts, int on);
const double *train_row_stats(const TrainState *ts);

/* PiSSA (TrainSetup.lora_pissa): the values the trainable tensor tp (one of train_params')
 * started from, the SVD factors, before any training or loaded adapter (host, tp->n floats);
 * NULL without PiSSA or for a tensor that is not the adapter's. A trained PiSSA adapter becomes
 * a plain LoRA of the original base with them (peft.h adapter_save_pissa_converted). */
const float *train_pissa_init(const TrainState *ts, const TrainParam *tp);

/* LoRA: the modules targeted (comma list). */
const char *train_lora_targets(const TrainState *ts);
/* LoRA: the token ids whose embedding rows train (trainable_token_indices), n of them. */
const int32_t *train_lora_tokens(const TrainState *ts, int *n);

/* Copies every trainable tensor to host[i] (sized tp[i].n floats), in train_params order. */
void train_download_params(const TrainState *ts, float **host);
/* Uploads host[i] into every trainable tensor (resume). */
void train_upload_params(TrainState *ts, const float *const *host);
const TrainSetup *train_setup(const TrainState *ts);
Model *train_model(const TrainState *ts);

/* P-tuning: the current prefix, (P, L*2*KVH*HS) host floats (PEFT's prompt_embeddings:
 * row p viewed as [L][key|value][KVH][HS]). Returns P, 0 for other methods. */
int train_prefix(TrainState *ts, float **prefix);

/* Prompt tuning and P-tuning v1: the current virtual token embeddings, (P, C) host floats
 * (what PEFT saves as prompt_embeddings: the encoder's output). Returns P, 0 for other methods. */
int train_prompt(TrainState *ts, float **emb);

/* Merges the LoRA deltas into the base weights of m (W += scale * B·A). */
int train_lora_merge(TrainState *ts, TunaErr *err);

/* LoRA: the adapter as the inference forward applies it unmerged (model_set_lora), pointing
 * at ts's live A and B (valid while ts lives; the pointer tables are ts's). The trainable
 * token rows are written into the embedding first, as a training step does. DoRA: its g
 * (magnitude / row norm) computed now from the live weights, valid until the next step.
 * TUNA_EINVAL when the method is not LoRA. */
int train_lora_view(TrainState *ts, ModelLora *out, TunaErr *err);

#endif
