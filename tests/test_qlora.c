/* test_qlora.c: training and inference over a quantized base (model_load_opts). For each
 * fixture architecture and weight type (nf4 with and without double quantization, fp4, q4_0,
 * q4_1, q8_0, and the 16-bit bf16 / f16 of --dtype), a model loaded with typed linear layers is compared with an fp32 model whose
 * linear layers hold the very values the typed ones dequantize to:
 *  - LoRA and DoRA (all targets), P-tuning (v2, and prompt tuning / v1 on nf4) and freeze (frozen layers typed, trained ones fp32): the loss
 *    and every trainable gradient of one step agree to 1e-4 relative. tuna's fp32 LoRA equals
 *    peft's (test_train_grad), so this is QLoRA's "peft over the dequantized weights";
 *  - the logits of a forward pass (prefill and one-row decoding) agree to 1e-4;
 *  - the typed weights are really typed (fewer fp32 parameters, bytes as the type says);
 *  - full fine-tuning refuses a quantized base in one line; a merge in place refuses too. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/backend.h"
#include "../src/model.h"
#include "../src/model_train.h"
#include "../src/train.h"
#include "../src/xalloc.h"
#include "harness.h"

/* mf's fp32 linear weights := what mq's typed ones dequantize to; the count of typed ones. */
static int copy_dequantized(Backend *be, Model *mq, Model *mf) {
    int n = 0;
    for (int l = 0; l < mq->cfg.L; l++)
        for (int k = 0; k < LORA_N_SITES; k++) {
            const Weight *q = mq->layers[l].qw[k];
            if (!q) continue;
            float *h = xmalloc(sizeof(float) * (size_t)q->rows * q->cols);
            weight_download_f32(be, q, h);
            be->ops->upload(be, *layer_site_weight(&mf->layers[l], (LoraSite)k), h,
                            sizeof(float) * (size_t)q->rows * q->cols);
            free(h);
            n++;
        }
    return n;
}

/* One step on both models; the loss and every gradient compared. */
static void step_case(const char *arch, Model *mq, Model *mf, Backend *be, TrainSetup setup,
                      const char *what) {
    TunaErr err = {0};
    int B = 2, T = 12, V = mf->cfg.V;
    TrainState *tq = NULL, *tf = NULL;
    if (train_state_init(mq, &setup, B, T, &tq, &err) ||
        train_state_init(mf, &setup, B, T, &tf, &err)) {
        CHECK(0, "%s %s: %s", arch, what, err.msg);
        train_state_free(tq);
        return;
    }
    int32_t ids[24], tg[24];
    uint64_t x = 12345;
    for (int i = 0; i < B * T; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)V);
    }
    for (int i = 0; i < B * T; i++)
        tg[i] = (i + 1) % T ? ids[i + 1] : -100;
    double lq, lf;
    int cq, cf;
    int rc = train_step_fb(tq, ids, tg, B, 1.0f / 22, 1, &lq, &cq, &err) ||
             train_step_fb(tf, ids, tg, B, 1.0f / 22, 1, &lf, &cf, &err);
    CHECK(!rc, "%s %s: %s", arch, what, err.msg);
    CHECK(fabs(lq - lf) <= 1e-4 * fabs(lf), "%s %s: loss %.7f vs %.7f over the dequantized base",
          arch, what, lq / cq, lf / cf);
    int nq, nf;
    const TrainParam *pq = train_params(tq, &nq), *pf = train_params(tf, &nf);
    CHECK(nq == nf && nq > 0, "%s %s: %d vs %d trainable tensors", arch, what, nq, nf);
    double worst = 0;
    for (int i = 0; i < nq && i < nf; i++) {
        float *a = xmalloc(sizeof(float) * pq[i].n), *b = xmalloc(sizeof(float) * pf[i].n);
        be->ops->download(be, a, pq[i].grad, sizeof(float) * pq[i].n);
        be->ops->download(be, b, pf[i].grad, sizeof(float) * pf[i].n);
        double mx = 0, d = 0;
        for (size_t j = 0; j < pq[i].n; j++) {
            mx = fmax(mx, fabs((double)b[j]));
            d = fmax(d, fabs((double)a[j] - (double)b[j]));
        }
        if (mx > 0) worst = fmax(worst, d / mx);
        free(a);
        free(b);
    }
    CHECK(worst <= 1e-4, "%s %s: gradients differ by %.3g of their largest", arch, what, worst);
    printf("  %-7s %-22s loss %.6f (dequantized fp32 %.6f), %d gradients within %.2g\n", arch, what,
           lq / cq, lf / cf, nq, worst);
    train_state_free(tq);
    train_state_free(tf);
}

static void logits_case(const char *arch, Model *mq, Model *mf, const char *what) {
    TunaErr err = {0};
    int T = 9, V = mf->cfg.V;
    int32_t ids[9] = {1, 5, 9, 2, 7, 3, 11, 4, 6};
    float *a = xmalloc(sizeof(float) * (size_t)T * V), *b = xmalloc(sizeof(float) * (size_t)T * V);
    int rc = model_reserve(mq, 16, 16, &err) || model_reserve(mf, 16, 16, &err) ||
             model_forward(mq, ids, T, a, 1, &err) || model_forward(mf, ids, T, b, 1, &err);
    CHECK(!rc, "%s %s: %s", arch, what, err.msg);
    double d = rc ? 1 : test_max_abs_diff(a, b, (size_t)T * V);
    /* one more token: the decoding path (M = 1) */
    int32_t nxt = 8;
    rc = model_forward(mq, &nxt, 1, a, 0, &err) || model_forward(mf, &nxt, 1, b, 0, &err);
    CHECK(!rc, "%s %s: %s", arch, what, err.msg);
    double d1 = rc ? 1 : test_max_abs_diff(a, b, (size_t)V);
    CHECK(d <= 1e-4 && d1 <= 1e-4, "%s %s: logits differ by %.3g (prefill), %.3g (decoding)", arch,
          what, d, d1);
    free(a);
    free(b);
}

static void type_case(const char *arch, WType t, int dq) {
    char dir[128], what[64];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", arch);
    snprintf(what, sizeof what, "%s%s", wtype_info[t].name, dq ? "+dq" : "");
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    ModelLoadOptions o = {.qtype = t, .double_quant = dq, .fp32_from_layer = 1 << 30};
    Model *mq = NULL, *mf = NULL;
    if (model_load_opts(dir, be, &o, &mq, &err) || model_load(dir, be, &mf, &err)) {
        CHECK(0, "%s %s: %s", arch, what, err.msg);
        goto done;
    }
    int n = copy_dequantized(be, mq, mf);
    CHECK(n == 7 * mq->cfg.L - (mq->cfg.arch == ARCH_GPT2 ? mq->cfg.L : 0),
          "%s %s: %d typed linear layers", arch, what, n);
    CHECK(mq->n_params + mq->n_qparams == mf->n_params && mq->n_qbytes > 0,
          "%s %s: %zu fp32 + %zu typed weights vs %zu", arch, what, mq->n_params, mq->n_qparams,
          mf->n_params);
    size_t nt, tb = model_typed_bytes_for(&mq->cfg, &o, &nt);
    CHECK(tb == mq->n_qbytes && nt == mq->n_qparams,
          "%s %s: the estimate from config.json (%zu bytes, %zu weights) is what loads (%zu, %zu)",
          arch, what, tb, nt, mq->n_qbytes, mq->n_qparams);
    logits_case(arch, mq, mf, what);
    char w2[96];
    snprintf(w2, sizeof w2, "%s lora", what);
    step_case(arch, mq, mf, be,
              (TrainSetup){.method = METHOD_LORA,
                           .lora_rank = 4,
                           .lora_alpha = 8,
                           .lora_targets = "all",
                           .seed = 3},
              w2);
    /* DoRA (QDoRA over 4 bits): the magnitude and the row norms of the dequantized weight */
    snprintf(w2, sizeof w2, "%s dora", what);
    step_case(arch, mq, mf, be,
              (TrainSetup){.method = METHOD_LORA,
                           .lora_rank = 4,
                           .lora_alpha = 8,
                           .lora_targets = "all",
                           .lora_dora = 1,
                           .seed = 3},
              w2);
    /* and with LoRA dropout: the base product of the dropped-out input, its (g - 1) gradient
     * through the typed kernel (the same masks on both sides: the same seeds) */
    snprintf(w2, sizeof w2, "%s dora dropout", what);
    step_case(arch, mq, mf, be,
              (TrainSetup){.method = METHOD_LORA,
                           .lora_rank = 4,
                           .lora_alpha = 8,
                           .lora_targets = "all",
                           .lora_dora = 1,
                           .lora_dropout = 0.25f,
                           .seed = 3},
              w2);
    if (t == WT_NF4 && !dq) {
        snprintf(w2, sizeof w2, "%s ptuning", what);
        step_case(arch, mq, mf, be,
                  (TrainSetup){.method = METHOD_PTUNING, .prefix_tokens = 3, .seed = 3}, w2);
        /* prompt tuning and P-tuning v1 (MLP, LSTM): virtual tokens at the input */
        snprintf(w2, sizeof w2, "%s prompt", what);
        step_case(arch, mq, mf, be,
                  (TrainSetup){.method = METHOD_PROMPT, .prefix_tokens = 3, .seed = 3}, w2);
        snprintf(w2, sizeof w2, "%s ptuning-v1 mlp", what);
        step_case(arch, mq, mf, be,
                  (TrainSetup){.method = METHOD_PTUNING_V1,
                               .prefix_tokens = 3,
                               .prefix_hidden = 8,
                               .seed = 3},
                  w2);
        snprintf(w2, sizeof w2, "%s ptuning-v1 lstm", what);
        step_case(arch, mq, mf, be,
                  (TrainSetup){.method = METHOD_PTUNING_V1,
                               .prefix_tokens = 3,
                               .prefix_hidden = 6,
                               .prompt_lstm = 1,
                               .seed = 3},
                  w2);
        TrainState *ts = NULL;
        TrainSetup full = {.method = METHOD_FULL, .seed = 1};
        int rc = train_state_init(mq, &full, 1, 8, &ts, &err);
        CHECK(rc && strstr(err.msg, "full fine-tuning of a quantized base"),
              "%s: full fine-tuning of a quantized base refused: %s", arch, err.msg);
        train_state_free(ts);
    }
done:
    model_free(mq);
    model_free(mf);
    backend_free(be);
}

/* freeze: the last layer trains in fp32, the first is typed. */
static void freeze_case(const char *arch) {
    TunaErr err = {0};
    char dir[128];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", arch);
    Backend *be = backend_init("cpu", 2, &err);
    ModelLoadOptions o = {.qtype = WT_NF4, .fp32_from_layer = -1};
    Model *mq = NULL, *mf = NULL;
    if (model_load_opts(dir, be, &o, &mq, &err) || model_load(dir, be, &mf, &err)) {
        CHECK(0, "%s freeze: %s", arch, err.msg);
    } else {
        int L = mq->cfg.L, typed_last = 0;
        for (int k = 0; k < LORA_N_SITES; k++)
            typed_last |= mq->layers[L - 1].qw[k] != NULL;
        CHECK(!typed_last && mq->layers[0].qw[LORA_UP], "%s freeze: layer 0 typed, layer %d fp32",
              arch, L - 1);
        copy_dequantized(be, mq, mf);
        step_case(arch, mq, mf, be,
                  (TrainSetup){.method = METHOD_FREEZE, .freeze_layers = 1, .seed = 3},
                  "NF4 freeze (last layer)");
    }
    model_free(mq);
    model_free(mf);
    backend_free(be);
}

/* stories260K: its down projections (K = 172) are not whole blocks and stay fp32; the
 * estimate knows it. */
static void fallback_case(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    ModelLoadOptions o = {.qtype = WT_Q4_0, .fp32_from_layer = 1 << 30};
    Model *m = NULL;
    if (model_load_opts("models/stories260K", be, &o, &m, &err)) {
        CHECK(0, "stories260K Q4_0: %s", err.msg);
    } else {
        size_t nt, tb = model_typed_bytes_for(&m->cfg, &o, &nt);
        CHECK(m->n_qskipped == m->cfg.L && !m->layers[0].qw[LORA_DOWN] && m->layers[0].w_down &&
                      m->layers[0].qw[LORA_UP],
              "stories260K: %d down projections left fp32", m->n_qskipped);
        CHECK(tb == m->n_qbytes && nt == m->n_qparams, "stories260K: estimate %zu vs %zu bytes", tb,
              m->n_qbytes);
    }
    model_free(m);
    backend_free(be);
}

/* train_estimate (the Setup screen's memory figure) follows --quantization-bit. */
static void estimate_case(void) {
    TunaErr err = {0};
    ModelConfig mc;
    CHECK(config_load("tests/fixtures/llama", &mc, &err) == 0, "%s", err.msg);
    TrainConfig c;
    train_config_defaults(&c);
    snprintf(c.method, sizeof c.method, "lora");
    TrainEstimate e32, e4;
    CHECK(train_estimate(&mc, &c, &e32, &err) == 0, "%s", err.msg);
    c.quantization_bit = 4;
    CHECK(train_estimate(&mc, &c, &e4, &err) == 0, "%s", err.msg);
    ModelLoadOptions o = {.qtype = WT_NF4, .fp32_from_layer = 1 << 30};
    size_t nt, tb = model_typed_bytes_for(&mc, &o, &nt);
    CHECK(e32.weight_bytes - e4.weight_bytes == nt * sizeof(float) - tb && nt > 0,
          "estimate: 4-bit base saves %zu bytes, expected %zu", e32.weight_bytes - e4.weight_bytes,
          nt * sizeof(float) - tb);
    snprintf(c.method, sizeof c.method, "full");
    CHECK(train_estimate(&mc, &c, &e4, &err) != 0 && strstr(err.msg, "full fine-tuning"),
          "estimate: full + 4-bit refused: %s", err.msg);
    /* --dtype bf16: the frozen linear layers, token embedding and head at 2 bytes a weight */
    snprintf(c.method, sizeof c.method, "lora");
    c.quantization_bit = 0;
    snprintf(c.dtype, sizeof c.dtype, "bf16");
    CHECK(train_estimate(&mc, &c, &e4, &err) == 0, "%s", err.msg);
    size_t heads = (mc.tie_embeddings ? 1 : 2) * (size_t)mc.V * (size_t)mc.C;
    CHECK(e32.weight_bytes - e4.weight_bytes == (nt + heads) * 2,
          "estimate: a bf16 base saves %zu bytes, expected %zu", e32.weight_bytes - e4.weight_bytes,
          (nt + heads) * 2);
    /* with trainable token rows the embedding and head stay fp32: the linear layers alone */
    TrainEstimate t32;
    snprintf(c.lora_trainable_tokens, sizeof c.lora_trainable_tokens, "3");
    CHECK(train_estimate(&mc, &c, &e4, &err) == 0, "%s", err.msg);
    snprintf(c.dtype, sizeof c.dtype, "auto");
    CHECK(train_estimate(&mc, &c, &t32, &err) == 0, "%s", err.msg);
    c.lora_trainable_tokens[0] = 0;
    snprintf(c.dtype, sizeof c.dtype, "bf16");
    CHECK(t32.weight_bytes - e4.weight_bytes == nt * 2,
          "estimate: bf16 base with trainable tokens saves %zu bytes, expected %zu",
          t32.weight_bytes - e4.weight_bytes, nt * 2);
    snprintf(c.dtype, sizeof c.dtype, "fp16");
    CHECK(train_estimate(&mc, &c, &e4, &err) != 0 && strstr(err.msg, "--dtype must be"),
          "estimate: --dtype fp16 refused: %s", err.msg);
}

/* A bf16 checkpoint kept in bf16 (--dtype bf16) loses nothing: the same step as its fp32 load,
 * with no copying of weights between the two. */
static void bf16_checkpoint_case(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    ModelLoadOptions o = {.qtype = WT_BF16, .fp32_from_layer = 1 << 30};
    Model *mq = NULL, *mf = NULL;
    if (model_load_opts("tests/fixtures/llama_bf16", be, &o, &mq, &err) ||
        model_load("tests/fixtures/llama_bf16", be, &mf, &err)) {
        CHECK(0, "llama_bf16: %s", err.msg);
    } else {
        CHECK(mq->n_qparams > 0, "llama_bf16: linear layers kept in bf16");
        logits_case("llama_bf16", mq, mf, "bf16 checkpoint");
        step_case("llama_bf16", mq, mf, be,
                  (TrainSetup){.method = METHOD_LORA, .lora_rank = 4, .lora_alpha = 8, .seed = 3},
                  "bf16 file kept bf16");
    }
    model_free(mq);
    model_free(mf);
    backend_free(be);
}

int main(void) {
    fallback_case();
    bf16_checkpoint_case();
    estimate_case();
    const char *archs[] = {"llama", "qwen3", "gpt2", "mistral", "llama_tied"};
    const struct {
        WType t;
        int dq;
    } types[] = {{WT_NF4, 0},  {WT_NF4, 1},  {WT_FP4, 0},  {WT_Q4_0, 0},
                 {WT_Q4_1, 0}, {WT_Q8_0, 0}, {WT_BF16, 0}, {WT_F16, 0}};
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++)
        for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
            type_case(archs[a], types[k].t, types[k].dq);
    freeze_case("llama");
    freeze_case("gpt2");
    return test_report("test_qlora");
}
