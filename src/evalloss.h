/* evalloss.h: the eval loss of a dataset, the one loop behind `tuna eval` and a training run's
 * eval (train.c): the mean cross-entropy of the trained (assistant) tokens under teacher
 * forcing, forward only, with the current weights of a TrainState. */
#ifndef TUNA_SRC_EVALLOSS_H
#define TUNA_SRC_EVALLOSS_H

#include <stddef.h>

#include "dataset.h"
#include "err.h"
#include "model_train.h"

/* Called after each batch with the batches done and their total (an epoch of the Batcher). */
typedef void (*EvalLossProgress)(void *ctx, size_t done, size_t total);

/* Scores d in its order (no shuffle, no packing): batches of B rows, each row one example
 * truncated to T tokens (B and T at most those ts was made for). pad_multiple 0: every row
 * has T tokens; > 0: each batch only its longest row, rounded up to a multiple of
 * pad_multiple (Batcher.pad_multiple). Pads and untrained tokens do not count, so the loss
 * does not depend on the padding. *loss = the summed token losses / *n_targets (NaN when no
 * token counts). acc (NULL: not computed) = LLaMA-Factory's compute_accuracy: per example the
 * share of its target tokens whose most likely token (the first of the largest logits) is the
 * target, averaged over the examples that have targets; NaN where the backend has no
 * logit_stats. progress may be NULL. Leaves ts's row length at the last batch's: a caller
 * that trains on sets it again (train_set_seq_len). */
int evalloss_run(TrainState *ts, const Dataset *d, int B, int T, int pad_multiple,
                 EvalLossProgress progress, void *ctx, double *loss, long *n_targets, double *acc,
                 TunaErr *err);

#endif
