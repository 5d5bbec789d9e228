/* test_evalloss.c: the eval loop (src/evalloss.c) against the inference forward, example by
 * example: on the tiny llama checkpoint, 7 examples of 5 to 17 tokens with a masked prompt, whose
 * answers continue greedily in about half of their positions (so the accuracy is neither 0 nor
 * 1 and differs between examples). evalloss_run's loss is the mean token cross-entropy
 * (1e-5 relative) and its accuracy LLaMA-Factory's compute_accuracy: per example the share of
 * its target tokens whose first largest logit is the target, averaged over the examples, to
 * the last bit but for positions whose top two logits lie within 1e-3 (a tie the two forwards
 * may break apart: each such position may move its example's share by one token). The same
 * with batches of 1 and 3, padded to 8 or to the longest. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/dataset.h"
#include "src/evalloss.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/xalloc.h"

#define NEX  7
#define TMAX 17

/* The first index of the largest of v (n), and the gap to the second largest. */
static int argmax_gap(const float *v, int n, double *gap) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    double second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && (double)v[i] > second) second = v[i];
    *gap = (double)v[best] - second;
    return best;
}

int main(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    if (!be || model_load("tests/fixtures/llama", be, &m, &err)) {
        CHECK(0, "tiny llama: %s", err.msg);
        return test_report("test_evalloss");
    }
    int V = m->cfg.V;
    CHECK(model_reserve(m, TMAX, TMAX, &err) == 0, "reserve: %s", err.msg);
    float *logits = xmalloc(sizeof(float) * (size_t)TMAX * V);
    Dataset d = {0};
    d.ex = xcalloc(NEX, sizeof(Example));
    d.n = d.cap = NEX;
    d.pairs = 0;
    uint64_t rng = 12345;
    double want_loss = 0, want_acc = 0, slack = 0;
    long want_n = 0;
    for (int e = 0; e < NEX; e++) {
        Example *x = &d.ex[e];
        x->n = 5 + 2 * e;
        x->tag = -1;
        x->ids = xmalloc(sizeof(int32_t) * (size_t)x->n);
        x->labels = xmalloc(sizeof(int32_t) * (size_t)x->n);
        int prompt = 2 + e % 3;
        for (int t = 0; t < x->n; t++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            int32_t id = (int32_t)((rng >> 33) % (uint64_t)V);
            if (t >= prompt && (rng >> 20) & 1) { /* the greedy token after the prefix */
                model_reset(m);
                CHECK(model_forward(m, x->ids, t, logits, 0, &err) == 0, "forward: %s", err.msg);
                double g;
                id = argmax_gap(logits, V, &g);
            }
            x->ids[t] = id;
            x->labels[t] = t >= prompt ? id : -100;
        }
        /* the example through the inference forward: its loss and its share of top-1 targets */
        model_reset(m);
        CHECK(model_forward(m, x->ids, x->n, logits, 1, &err) == 0, "forward: %s", err.msg);
        int hit = 0, n = 0, near = 0;
        for (int t = 0; t + 1 < x->n; t++) {
            int32_t y = x->labels[t + 1];
            if (y < 0) continue;
            const float *z = logits + (size_t)t * V;
            double mx = -INFINITY, s = 0, g;
            for (int i = 0; i < V; i++)
                mx = fmax(mx, (double)z[i]);
            for (int i = 0; i < V; i++)
                s += exp((double)z[i] - mx);
            want_loss += mx + log(s) - (double)z[y];
            hit += argmax_gap(z, V, &g) == y;
            near += g < 1e-3;
            n++;
        }
        want_n += n;
        want_acc += (double)hit / n;
        slack += (double)near / n;
        printf("  example %d: %d tokens, %d targets, %d top-1\n", e, x->n, n, hit);
    }
    want_loss /= (double)want_n;
    want_acc /= NEX;
    slack /= NEX;
    CHECK(want_acc > 0.1 && want_acc < 0.9, "the examples' accuracy %.3f is not in between",
          want_acc);
    int Bs[] = {1, 3, 3}, pads[] = {0, 8, 0};
    for (int k = 0; k < 3; k++) {
        TrainSetup setup = {.method = METHOD_NONE};
        TrainState *ts = NULL;
        if (train_state_init(m, &setup, Bs[k], TMAX, &ts, &err)) {
            CHECK(0, "state: %s", err.msg);
            continue;
        }
        double loss = 0, acc = -1, acc_none = -1;
        long n = 0;
        int rc = evalloss_run(ts, &d, Bs[k], TMAX, pads[k], NULL, NULL, &loss, &n, &acc, &err);
        CHECK(rc == 0, "evalloss_run: %s", err.msg);
        CHECK(n == want_n && fabs(loss - want_loss) <= 1e-5 * want_loss,
              "B %d pad %d: loss %.7f over %ld tokens, the inference forward's %.7f over %ld",
              Bs[k], pads[k], loss, n, want_loss, want_n);
        CHECK(fabs(acc - want_acc) <= slack + 1e-12,
              "B %d pad %d: accuracy %.9f, the inference forward's %.9f (slack %.3g)", Bs[k],
              pads[k], acc, want_acc, slack);
        /* without acc the loop runs as before: the statistics are off again afterwards */
        rc = evalloss_run(ts, &d, Bs[k], TMAX, pads[k], NULL, NULL, &acc_none, &n, NULL, &err);
        CHECK(rc == 0 && acc_none == loss && train_row_stats(ts) == NULL,
              "B %d pad %d: without accuracy: loss %.9f vs %.9f, stats left on", Bs[k], pads[k],
              acc_none, loss);
        printf("  B %d pad %d: loss %.7f (%.7f), accuracy %.6f (%.6f)\n", Bs[k], pads[k], loss,
               want_loss, acc, want_acc);
        train_state_free(ts);
    }
    free(logits);
    for (int e = 0; e < NEX; e++) {
        free(d.ex[e].ids);
        free(d.ex[e].labels);
    }
    free(d.ex);
    model_free(m);
    backend_free(be);
    return test_report("test_evalloss");
}
