/* test_lora_unmerged.c: the inference forward with a LoRA adapter applied unmerged
 * (model_set_lora with train_lora_view, what sampling during a LoRA run uses) against the same
 * adapter merged into the base (train_lora_merge, what export and chat did):
 * - prefill logits of every position agree (max |Δ| <= 1e-4 of logits of about 1..10);
 * - batched decoding (model_decode_slots, two sequences) agrees with the unmerged prefill;
 * - the base is untouched: after model_set_lora(NULL) the logits are bit-identical to before;
 * on llama (RoPE, all seven sites), gpt2 (the fused c_attn sliced into q, k, v) and qwen3; and
 * DoRA (its g applied after the product by the backend's col_scale) on llama, gpt2 and qwen2
 * (q/k/v biases). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/xalloc.h"

#define T 10

static uint64_t rng(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static int prefill(Model *m, const int32_t *ids, float *logits, TunaErr *err) {
    int rc = model_reserve(m, 32, 32, err);
    if (!rc) rc = model_forward(m, ids, T, logits, 1, err);
    return rc;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

static void check_model(const char *dir, int dora) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    if (!be || model_load(dir, be, &m, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        backend_free(be);
        return;
    }
    int V = m->cfg.V;
    TrainSetup setup = {
            .method = METHOD_LORA, .lora_rank = 4, .lora_alpha = 8, .seed = 1, .lora_dora = dora};
    TrainState *ts = NULL;
    if (train_state_init(m, &setup, 1, 16, &ts, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        model_free(m);
        backend_free(be);
        return;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    uint64_t s = 5;
    for (int i = 0; i < np; i++) { /* B is zero at init: random A and B (DoRA: magnitude) */
        float *h = xmalloc(sizeof(float) * tp[i].n);
        int mag = strstr(tp[i].name, "magnitude") != NULL;
        for (size_t j = 0; j < tp[i].n; j++)
            h[j] = mag ? 0.5f + (float)(rng(&s) % 2000) / 2000.0f
                       : ((float)(rng(&s) % 2000) / 2000.0f - 0.5f) * 0.4f;
        be->ops->upload(be, tp[i].data, h, sizeof(float) * tp[i].n);
        free(h);
    }
    int32_t ids[T], ids2[T];
    for (int t = 0; t < T; t++) {
        ids[t] = (int32_t)(1 + rng(&s) % (uint64_t)(V - 1));
        ids2[t] = (int32_t)(1 + rng(&s) % (uint64_t)(V - 1));
    }
    size_t n = (size_t)T * V;
    float *base = xmalloc(sizeof(float) * n), *unm = xmalloc(sizeof(float) * n);
    float *unm2 = xmalloc(sizeof(float) * n), *again = xmalloc(sizeof(float) * n);
    float *mrg = xmalloc(sizeof(float) * n), *dec = xmalloc(sizeof(float) * 2 * (size_t)V);
    ModelLora view;
    int rc = prefill(m, ids, base, &err);
    if (!rc) rc = train_lora_view(ts, &view, &err);
    if (!rc) rc = model_set_lora(m, &view, &err);
    if (!rc) rc = prefill(m, ids, unm, &err);
    if (!rc) rc = prefill(m, ids2, unm2, &err);
    /* two sequences decoded together, the last token of each from its first T-1 */
    double dd = 0;
    if (!rc) rc = model_reserve_slots(m, 2, 32, 32, &err);
    for (int sl = 0; sl < 2 && !rc; sl++) {
        model_use_slot(m, sl);
        rc = model_forward(m, sl ? ids2 : ids, T - 1, NULL, 0, &err);
    }
    if (!rc) {
        int slots[2] = {0, 1};
        int32_t last[2] = {ids[T - 1], ids2[T - 1]};
        rc = model_decode_slots(m, 2, slots, last, dec, &err);
        dd = fmax(max_diff(dec, unm + (size_t)(T - 1) * V, (size_t)V),
                  max_diff(dec + V, unm2 + (size_t)(T - 1) * V, (size_t)V));
    }
    if (!rc) rc = model_set_lora(m, NULL, &err);
    if (!rc) rc = prefill(m, ids, again, &err);
    if (!rc) rc = train_lora_merge(ts, &err);
    if (!rc) rc = prefill(m, ids, mrg, &err);
    CHECK(rc == 0, "%s: %s", dir, err.msg);
    if (!rc) {
        double dm = max_diff(unm, mrg, n), db = max_diff(unm, base, n), big = 0;
        for (size_t i = 0; i < n; i++)
            big = fmax(big, fabs((double)mrg[i]));
        CHECK(db > 1e-2, "%s: the adapter changes the logits (%.3g)", dir, db);
        CHECK(dm <= 1e-4 * fmax(1.0, big), "%s: unmerged vs merged logits differ by %.3g (of %.3g)",
              dir, dm, big);
        CHECK(dd <= 1e-5 * fmax(1.0, big), "%s: batched decode vs prefill differ by %.3g", dir, dd);
        CHECK(memcmp(base, again, sizeof(float) * n) == 0,
              "%s: the base is unchanged after model_set_lora(NULL)", dir);
        printf("  %-24s %s unmerged vs merged %.1e, decode vs prefill %.1e (adapter moves "
               "%.2g)\n",
               dir, dora ? "DoRA" : "LoRA", dm, dd, db);
    }
    free(base), free(unm), free(unm2), free(again), free(mrg), free(dec);
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

int main(void) {
    check_model("tests/fixtures/llama", 0);
    check_model("tests/fixtures/gpt2", 0);
    check_model("tests/fixtures/qwen3", 0);
    check_model("models/stories260K", 0);
    check_model("tests/fixtures/llama", 1);
    check_model("tests/fixtures/gpt2", 1);
    check_model("tests/fixtures/qwen2", 1);
    return test_report("test_lora_unmerged");
}
