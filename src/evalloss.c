/* evalloss.c: the eval loss of a dataset (evalloss.h). */
#include "evalloss.h"

#include <math.h>

int evalloss_run(TrainState *ts, const Dataset *d, int B, int T, int pad_multiple,
                 EvalLossProgress progress, void *ctx, double *loss, long *n_targets, double *acc,
                 TunaErr *err) {
    Batcher bt;
    int rc = batcher_init(&bt, d, B, T, 0, 1, err);
    if (rc) return rc;
    bt.pad_multiple = pad_multiple;
    double sum = 0, acc_sum = 0;
    long cnt = 0, n_ex = 0;
    int stats = acc && train_set_logit_stats(ts, 1);
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
        const double *st = stats ? train_row_stats(ts) : NULL;
        for (int k = 0; st && k < b.B; k++) /* per row: Σ mean logit, Σ entropy, Σ top1, count */
            if (st[(size_t)k * 4 + 3] > 0) {
                acc_sum += st[(size_t)k * 4 + 2] / st[(size_t)k * 4 + 3];
                n_ex++;
            }
        if (progress) progress(ctx, i + 1, nb);
    }
    batcher_free(&bt);
    if (acc) {
        train_set_logit_stats(ts, 0);
        *acc = stats && n_ex ? acc_sum / (double)n_ex : (double)NAN;
    }
    *loss = cnt ? sum / (double)cnt : (double)NAN;
    *n_targets = cnt;
    return rc;
}
