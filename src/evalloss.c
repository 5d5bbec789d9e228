/* evalloss.c: the eval loss of a dataset (evalloss.h). */
#include "evalloss.h"

#include <math.h>

int evalloss_run(TrainState *ts, const Dataset *d, int B, int T, int pad_multiple,
                 EvalLossProgress progress, void *ctx, double *loss, long *n_targets,
                 TunaErr *err) {
    Batcher bt;
    int rc = batcher_init(&bt, d, B, T, 0, 1, err);
    if (rc) return rc;
    bt.pad_multiple = pad_multiple;
    double sum = 0;
    long cnt = 0;
    size_t nb = batcher_batches_per_epoch(&bt);
    for (size_t i = 0; i < nb; i++) {
        Batch b;
        batcher_next(&bt, &b);
        double s;
        int c;
        rc = train_set_seq_len(ts, b.T, err);
        if (!rc) rc = train_step_fb(ts, b.ids, b.targets, b.B, 1.0f, 0, &s, &c, err);
        if (rc) break;
        sum += s;
        cnt += c;
        if (progress) progress(ctx, i + 1, nb);
    }
    batcher_free(&bt);
    *loss = cnt ? sum / (double)cnt : (double)NAN;
    *n_targets = cnt;
    return rc;
}
