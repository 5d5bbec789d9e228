/* value_head.h: the reward model's value head (the rm stage), as LLaMA-Factory trains it with
 * TRL's AutoModelForCausalLMWithValueHead: v_head.summary, a Linear(C, 1) with bias on the
 * decoder's last hidden state (after the final norm), read at each sequence's last token (the
 * last non-pad position, LLaMA-Factory's PairwiseTrainer: attention_mask.sum - 1), and the
 * pairwise Bradley-Terry loss -logsigmoid(r_chosen - r_rejected), the mean over the pairs.
 * TRL's summary dropout (0.1 by default, as LLaMA-Factory's reward model has it) is applied to
 * that hidden state while training (RmBatch.drop_p). Saved as LLaMA-Factory saves it: value_head.safetensors
 * (v_head.summary.weight (1, C), v_head.summary.bias (1)) beside the adapter or model.
 * The weights live in backend memory (two TrainParam entries for the optimizer); one thread. */
#ifndef TUNA_SRC_VALUE_HEAD_H
#define TUNA_SRC_VALUE_HEAD_H

#include <stdint.h>

#include "../kernels/backend.h"
#include "err.h"
#include "model_train.h"

#define VHEAD_FILE "value_head.safetensors"
/* a checkpoint's value head optimizer state: m.NAME#i and v.NAME#i of its two tensors, as
 * optimizer.safetensors holds the model's */
#define VHEAD_OPT_FILE "value_head_optimizer.safetensors"

typedef struct ValueHead {
    Backend *be;
    int C;
    TrainParam tp[2]; /* v_head.summary.weight (1, C), v_head.summary.bias (1): backend memory */
} ValueHead;

/* torch.nn.Linear's initialisation, U(-1/sqrt(C), 1/sqrt(C)) for weight and bias, from seed. */
int vhead_init(ValueHead *vh, Backend *be, int C, uint64_t seed, TunaErr *err);
void vhead_free(ValueHead *vh); /* NULL-safe */
void vhead_zero_grad(ValueHead *vh);
/* value_head.safetensors in dir: read (shapes checked against C) or written (atomically). */
int vhead_load(ValueHead *vh, const char *dir, TunaErr *err);
int vhead_save(const ValueHead *vh, const char *dir, TunaErr *err);
/* Host copies of the weight (C) and bias (1), or uploads them. */
void vhead_get(const ValueHead *vh, float *w, float *b);
void vhead_set(ValueHead *vh, const float *w, float b);

/* A batch of pairs for train_step_hidden (rm_hidden is its TrainHiddenFn): rows 0..P-1 the
 * chosen answers, P..2P-1 the rejected; last[b] row b's last token (-1: an empty row, whose pair
 * counts for nothing). Adds each pair's loss, accuracy (r_chosen > r_rejected) and scores to
 * sums; with a backward, the gradient of scale * (the pairs' summed loss) goes into the hidden
 * states' gradient and the value head's (accumulated). */
typedef struct RmSums {
    double loss, accuracy, chosen, rejected; /* sums over the pairs */
    int n;                                   /* pairs */
} RmSums;

typedef struct RmBatch {
    ValueHead *vh;
    int pairs;
    const int *last; /* (2P) */
    double scale;
    RmSums sums;
    /* TRL's summary dropout on the hidden state the head reads, while training: each value
     * kept with probability 1 - drop_p and scaled by 1 / (1 - drop_p), row b's mask from
     * (drop_seed, b) (rm_drop_scale); drop_p 0: none (evaluation) */
    double drop_p;
    uint64_t drop_seed;
} RmBatch;

/* The dropout factor of element i of row b's head input: 0, or 1 / (1 - p) */
float rm_drop_scale(uint64_t seed, int b, int i, double p);

void rm_hidden(void *ctx, Backend *be, const float *hidden, float *dhidden, int B, int T, int C);

/* Each row's last token from a batch's targets (B, T): one past the last position with a
 * target (the answer's last token is trained), -1 for a row without one. */
void rm_last_positions(const int32_t *targets, int B, int T, int *last);

#endif
