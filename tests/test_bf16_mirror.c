/* test_bf16_mirror: the cpu backend's packed copies of trainable weights (Backend.weight_track;
 * kernels/cpu/gemm_bf16.c). Under mm_bf16 the AdamW pass over a tracked fp32 matrix writes its
 * bf16 panels as it updates it, and the products read them instead of packing the matrix again.
 * A copy changes no bit, and a stale one is never read:
 * - backend: products (matmul_fwd, matmul_acc, matmul_bwd's input gradient) on a tracked matrix
 *   equal, bit for bit, those of a second backend that tracks nothing, over odd shapes (rows
 *   past a K block of 256, odd rows, columns past 256), after an AdamW pass over it and the
 *   values around it (the copy is then read: state 2), after an upload into part of it, a
 *   weights_written report and an AdamW pass over half of it (the copy is stale: state 1, and
 *   the products pack the values as they are), and once another pass has made it whole again;
 *   untracking and freeing the memory drop the copy; on each fast path (amx, avx512bf16
 *   forced) and on the plain one (which keeps none);
 * - matmul_bwd_dw (a step's first write of a weight gradient: overwritten, on the AMX tiles or
 *   vdpbf16ps in one product with its lines streamed) equals zeroing the gradient and
 *   matmul_bwd's +=, bit for bit, from a gradient full of NaN, over shapes of one and several K
 *   blocks and groups and K slices;
 * - engine: full fine-tuning (tiny tied LLaMA and GPT-2 of tests/fixtures) and freeze, three
 *   optimizer steps of two micro-batches each under mm_bf16: the losses, grad norms, gradients
 *   and updated weights equal those of a run whose backend has no room for copies (pack budget
 *   0), on 1 and 2 threads, and those of the guard backend (the cpu kernels with neither copies
 *   nor matmul_bwd_dw: every gradient zeroed up front, then accumulated); the copies are in use
 *   (state 2) after a step; the Setup screen's estimate (train_estimate) counts the copies the
 *   run keeps. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/optim.h"
#include "src/train.h"
#include "src/xalloc.h"

/* matmul_bwd_dw's Σ dw² against a plain sum in double: the AMX tiles' sum takes fp32 partials of
 * 32 squares a lane before double, vdpbf16ps's of 24 (within 32 x 2^-24 = 2e-6 relative; about
 * 1e-9 seen) */
#define SS_RTOL 2e-6

static uint64_t rng = 0x243F6A8885A308D3ULL;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 40) / 16777216.0 * 2.0 - 1.0);
}

/* The products on W (rows N, cols K) of a and b, compared bit for bit */
static void same_products(Backend *a, Backend *b, const float *Wa, const float *Wb, int N, int K,
                          const char *what) {
    const int M = 40;
    size_t nin = (size_t)M * K, nout = (size_t)M * N;
    float *in = malloc(sizeof(float) * nin), *dout = malloc(sizeof(float) * nout);
    float *o[2], *d[2];
    for (size_t i = 0; i < nin; i++)
        in[i] = frand();
    for (size_t i = 0; i < nout; i++)
        dout[i] = frand();
    Backend *be[2] = {a, b};
    const float *W[2] = {Wa, Wb};
    for (int j = 0; j < 2; j++) {
        o[j] = malloc(sizeof(float) * nout);
        d[j] = calloc(nin, sizeof(float));
        be[j]->ops->matmul_fwd(be[j], o[j], in, W[j], NULL, M, K, N);
        be[j]->ops->matmul_acc(be[j], o[j], in, W[j], M, K, N); /* beta 1 onto the first */
        be[j]->ops->matmul_bwd(be[j], d[j], NULL, NULL, dout, in, W[j], M, K, N);
    }
    CHECK(!memcmp(o[0], o[1], sizeof(float) * nout),
          "%s (%d x %d): forward differs from the untracked backend's (max diff %g)", what, N, K,
          test_max_abs_diff(o[0], o[1], nout));
    CHECK(!memcmp(d[0], d[1], sizeof(float) * nin),
          "%s (%d x %d): input gradient differs from the untracked backend's (max diff %g)", what,
          N, K, test_max_abs_diff(d[0], d[1], nin));
    for (int j = 0; j < 2; j++) {
        free(o[j]);
        free(d[j]);
    }
    free(in);
    free(dout);
}

typedef struct Side {
    Backend *be;
    float *p, *g, *m, *v; /* gap, W, gap */
} Side;

/* The AdamW pass over p[0, n) on both sides (the same values: the copy changes none) */
static void adamw_both(Side *s, size_t n, const char *path) {
    float bc1 = 1.0f - 0.729f, bc2 = 1.0f - 0.997f; /* any step's: both sides the same */
    for (int j = 0; j < 2; j++)
        s[j].be->ops->adamw(s[j].be, s[j].p, s[j].g, 0.5f, s[j].m, s[j].v, n, 1e-2f, 0.9f, 0.999f,
                            1e-8f, 0.01f, bc1, bc2);
    CHECK(!memcmp(s[0].p, s[1].p, sizeof(float) * n), "%s: AdamW's values differ", path);
}

/* The tracked side's copy of W (at gap) in state `want`, and its products equal the other's */
static void expect(const Side *s, size_t gap, int N, int K, int want, const char *path,
                   const char *when) {
    int got = cpu_weight_copy_state(s[0].be, s[0].p + gap);
    CHECK(got == want, "%s, %s: copy state %d, expected %d", path, when, got, want);
    char what[128];
    snprintf(what, sizeof what, "%s, %s", path, when);
    same_products(s[0].be, s[1].be, s[0].p + gap, s[1].p + gap, N, K, what);
}

static void test_backend(const char *path, int fast) {
    static const int shapes[][2] = {{96, 288}, {70, 300}, {33, 513}, {293, 64}, {512, 40}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int N = shapes[si][0], K = shapes[si][1];
        size_t gap = 37, nw = (size_t)N * K, n = gap + nw + 53;
        TunaErr err = {0};
        Side s[2];
        for (int j = 0; j < 2; j++) {
            s[j].be = backend_init("cpu", 2, &err);
            s[j].be->mm_bf16 = 1;
            s[j].p = s[j].be->ops->alloc(s[j].be, sizeof(float) * n);
            s[j].g = malloc(sizeof(float) * n);
            s[j].m = calloc(n, sizeof(float));
            s[j].v = calloc(n, sizeof(float));
        }
        for (size_t i = 0; i < n; i++) {
            s[0].p[i] = s[1].p[i] = frand();
            s[0].g[i] = s[1].g[i] = frand();
        }
        float *Wa = s[0].p + gap, *Wb = s[1].p + gap;
        Backend *a = s[0].be, *b = s[1].be;
        int want = fast ? 2 : 0, stale = fast ? 1 : 0;
        a->ops->weight_track(a, Wa, N, K);
        expect(s, gap, N, K, stale, path, "tracked, before any AdamW pass");
        adamw_both(s, n, path); /* the pass over it all, twice */
        expect(s, gap, N, K, want, path, "after an AdamW pass");
        adamw_both(s, n, path);
        expect(s, gap, N, K, want, path, "after a second AdamW pass");
        float row[513]; /* an upload into a row in the middle: stale */
        for (int k = 0; k < K; k++)
            row[k] = frand();
        size_t r = (size_t)N / 2 * K;
        a->ops->upload(a, Wa + r, row, sizeof(float) * K);
        b->ops->upload(b, Wb + r, row, sizeof(float) * K);
        expect(s, gap, N, K, stale, path, "after an upload into it");
        adamw_both(s, n, path);
        expect(s, gap, N, K, want, path, "whole again");
        adamw_both(s, gap + nw / 2, path); /* half of it (a sharded optimizer's slice): stale */
        expect(s, gap, N, K, stale, path, "after a pass over half of it");
        adamw_both(s, n, path);
        Wa[nw - 1] = Wb[nw - 1] = 0.25f; /* written by someone else (a collective) */
        a->ops->weights_written(a, Wa + nw - 1, 1);
        expect(s, gap, N, K, stale, path, "after weights_written");
        adamw_both(s, n, path);
        a->ops->zero(a, s[0].m, sizeof(float) * n); /* other memory: the copy stays */
        expect(s, gap, N, K, want, path, "after zeroing other memory");
        a->ops->weight_track(a, Wa, 0, 0);
        CHECK(cpu_weight_copy_state(a, Wa) == 0, "%s: untracked: state %d", path,
              cpu_weight_copy_state(a, Wa));
        a->ops->weight_track(a, Wa, N, K); /* and freed with its memory */
        a->ops->release(a, s[0].p);
        CHECK(cpu_weight_copy_state(a, Wa) == 0, "%s: memory freed: state %d", path,
              cpu_weight_copy_state(a, Wa));
        b->ops->release(b, s[1].p);
        for (int j = 0; j < 2; j++) {
            free(s[j].g);
            free(s[j].m);
            free(s[j].v);
            backend_free(s[j].be);
        }
    }
}

/* matmul_bwd_dw with an input gradient: din += dout · w and dw = doutᵀ · in in one call (on the
 * AMX tiles dw's op(A) comes from the dout packed for din) against matmul_bwd's din and dw onto
 * zeros, bit for bit; din starts from values (+=), dw from NaN */
static void bwd_dw_din(Backend *be, const char *path, int M, int K, int N) {
    size_t nw = (size_t)N * K, ni = (size_t)M * K;
    float *dout = malloc(sizeof(float) * (size_t)M * N), *in = malloc(sizeof(float) * ni),
          *w = malloc(sizeof(float) * nw), *d0 = malloc(sizeof(float) * ni);
    float *a = be->ops->alloc(be, sizeof(float) * nw), *b = be->ops->alloc(be, sizeof(float) * nw),
          *da = be->ops->alloc(be, sizeof(float) * ni),
          *db = be->ops->alloc(be, sizeof(float) * ni);
    for (size_t i = 0; i < (size_t)M * N; i++)
        dout[i] = frand();
    for (size_t i = 0; i < ni; i++)
        in[i] = frand(), d0[i] = frand();
    for (size_t i = 0; i < nw; i++)
        w[i] = frand(), a[i] = __builtin_nanf("");
    memcpy(da, d0, sizeof(float) * ni);
    memcpy(db, d0, sizeof(float) * ni);
    double ss = 0;
    be->ops->matmul_bwd_dw(be, da, a, dout, in, w, M, K, N, &ss);
    be->ops->zero(be, b, sizeof(float) * nw);
    be->ops->matmul_bwd(be, db, b, NULL, dout, in, w, M, K, N);
    CHECK(!memcmp(a, b, sizeof(float) * nw) && !memcmp(da, db, sizeof(float) * ni),
          "%s: matmul_bwd_dw with din (%d x %d x %d) differs from matmul_bwd: dw max diff %g, din "
          "%g",
          path, M, K, N, test_max_abs_diff(a, b, nw), test_max_abs_diff(da, db, ni));
    be->ops->release(be, a);
    be->ops->release(be, b);
    be->ops->release(be, da);
    be->ops->release(be, db);
    free(dout);
    free(in);
    free(w);
    free(d0);
}

/* matmul_bwd_dw (dw overwritten: one product on a fast path, its lines streamed) against zeroing
 * dw and matmul_bwd's dw +=, bit for bit; dw starts as NaN, so a read of it would show */
static void test_bwd_dw(const char *path) {
    static const int shapes[][3] = {{256, 768, 96},  {512, 200, 333}, {77, 64, 1000},
                                    {1100, 96, 130}, {3000, 33, 40},  {64, 17, 17},
                                    {240, 40, 9},    {250, 16, 50257}};
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    be->mm_bf16 = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        size_t nw = (size_t)N * K;
        float *dout = malloc(sizeof(float) * (size_t)M * N), *in = malloc(sizeof(float) * M * K);
        float *a = be->ops->alloc(be, sizeof(float) * nw),
              *b = be->ops->alloc(be, sizeof(float) * nw);
        for (size_t i = 0; i < (size_t)M * N; i++)
            dout[i] = frand();
        for (size_t i = 0; i < (size_t)M * K; i++)
            in[i] = frand();
        for (size_t i = 0; i < nw; i++)
            a[i] = b[i] = __builtin_nanf("");
        be->ops->matmul_bwd_dw(be, NULL, a, dout, in, NULL, M, K, N, NULL);
        be->ops->zero(be, b, sizeof(float) * nw);
        be->ops->matmul_bwd(be, NULL, b, NULL, dout, in, NULL, M, K, N);
        CHECK(!memcmp(a, b, sizeof(float) * nw),
              "%s: matmul_bwd_dw (%d x %d x %d) differs from zeroing and matmul_bwd (max diff %g)",
              path, M, K, N, test_max_abs_diff(a, b, nw));
        /* with Σ dw²: the same dw, the sum within SS_RTOL of a plain one in double, and the same
         * bits on 1 and 2 threads */
        double ss[2], ref = 0;
        for (int nth = 1; nth <= 2; nth++) {
            backend_set_threads(be, nth);
            for (size_t i = 0; i < nw; i++)
                a[i] = __builtin_nanf("");
            be->ops->matmul_bwd_dw(be, NULL, a, dout, in, NULL, M, K, N, &ss[nth - 1]);
            CHECK(!memcmp(a, b, sizeof(float) * nw), "%s: matmul_bwd_dw with its Σ dw² differs",
                  path);
        }
        for (size_t i = 0; i < nw; i++)
            ref += (double)b[i] * (double)b[i];
        CHECK(fabs(ss[1] - ref) <= SS_RTOL * ref && !memcmp(&ss[0], &ss[1], sizeof(double)),
              "%s: matmul_bwd_dw (%d x %d x %d): Σ dw² %.17g (1 thread %.17g), summed %.17g", path,
              M, K, N, ss[1], ss[0], ref);
        be->ops->release(be, a);
        be->ops->release(be, b);
        free(dout);
        free(in);
        for (int nth = 1; nth <= 2; nth++) {
            backend_set_threads(be, nth);
            bwd_dw_din(be, path, M, K, N);
        }
    }
    /* dout too large to keep packed (A_CHUNK_WORDS): dw's op(A) packed from dout itself */
    bwd_dw_din(be, path, 1040, 24, 16400);
    backend_free(be);
}

// --- the engine

#define STEPS 3

typedef struct Trace {
    double loss[STEPS], gnorm[STEPS];
    float *grads, *weights; /* the last step's gradients, the weights at the end */
    size_t n;
    int ok, copies;            /* copies: the last layer's q weight in use as a copy after a step */
    size_t est_extra, tracked; /* bytes: the estimate's for --bf16, the copies' tracked */
} Trace;

static float *gather(Backend *be, const TrainParam *tp, int np, size_t total, int data) {
    float *out = xmalloc(sizeof(float) * total), *o = out;
    for (int i = 0; i < np; i++) {
        be->ops->download(be, o, data ? tp[i].data : tp[i].grad, sizeof(float) * tp[i].n);
        o += tp[i].n;
    }
    return out;
}

/* pack_mb < 0: the guard backend (the cpu kernels behind it, with neither copies nor
 * matmul_bwd_dw: every gradient zeroed up front and accumulated) */
static void run(const char *model, TrainMethod method, int nth, long pack_mb, Trace *tr) {
    memset(tr, 0, sizeof *tr);
    TunaErr err = {0};
    int guard = pack_mb < 0;
    Backend *be = backend_init(guard ? "guard" : "cpu", nth, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    Optim opt = {0};
    enum { B = 4, T = 48 };
    int32_t ids[B * T], tg[B * T];
    TrainSetup setup = {.method = method, .freeze_layers = 1, .seed = 7};
    if (!be) {
        CHECK(0, "%s: %s", model, err.msg);
        return;
    }
    be->mm_bf16 = 1;
    if (!guard) cpu_backend_set_pack_mb(be, pack_mb);
    if (model_load(model, be, &m, &err) || train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s: %s", model, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    for (int i = 0; i < np; i++)
        tr->n += tp[i].n;
    /* the bytes of the copies tracked, against the estimate's --bf16 share */
    size_t tracked = 0;
    const ModelConfig *mc = &m->cfg;
    for (int l = 0; l < mc->L; l++) {
        const LayerWeights *w = &m->layers[l];
        const float *mats[] = {w->wq, w->wk, w->wv, w->wo, w->w_gate, w->w_up, w->w_down};
        int dims[][2] = {
                {mc->NH * mc->HS, mc->C}, {mc->KVH * mc->HS, mc->C}, {mc->KVH * mc->HS, mc->C},
                {mc->C, mc->NH * mc->HS}, {mc->FF, mc->C},           {mc->FF, mc->C},
                {mc->C, mc->FF}};
        for (int i = 0; i < 7; i++)
            if (mats[i] && !guard && cpu_weight_copy_state(be, mats[i]))
                tracked += (size_t)dims[i][0] * dims[i][1];
    }
    if (!guard && cpu_weight_copy_state(be, m->lm_head)) tracked += (size_t)mc->V * mc->C;
    TrainConfig cfg;
    train_config_defaults(&cfg);
    snprintf(cfg.model, sizeof cfg.model, "%s", model);
    snprintf(cfg.method, sizeof cfg.method, "%s", method == METHOD_FULL ? "full" : "freeze");
    cfg.freeze_layers = 1;
    cfg.batch_size = B;
    cfg.cutoff_len = T;
    TrainEstimate e32, e16;
    int erc = train_estimate(mc, &cfg, &e32, &err);
    cfg.bf16 = 1;
    erc = erc || train_estimate(mc, &cfg, &e16, &err);
    CHECK(!erc, "%s: estimate: %s", model, err.msg);
    tr->est_extra = erc ? 0 : e16.weight_bytes - e32.weight_bytes;
    tr->tracked = tracked * 4; /* bf16, in two layouts */
    if (optim_init(&opt, be, tp, np, 0.9f, 0.999f, 1e-8f, 0.01f, &err)) {
        CHECK(0, "%s: %s", model, err.msg);
        goto done;
    }
    uint64_t r = 12345;
    int V = m->cfg.V;
    for (int step = 0; step < STEPS; step++) {
        int n_t = 0;
        for (int i = 0; i < B * T; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = (int32_t)(3 + (r >> 33) % (uint64_t)(V - 3));
            tg[i] = i % T < 6 ? -100 : (int32_t)((r >> 20) % (uint64_t)V);
            n_t += tg[i] >= 0;
        }
        train_zero_grad(ts);
        train_set_step_seed(ts, (uint64_t)step);
        int c;
        /* two micro-batches (the halves of the batch): the first writes the gradients, the
         * second accumulates */
        double half;
        if (train_step_fb(ts, ids, tg, B / 2, 1.0f / (float)n_t, 1, &tr->loss[step], &c, &err) ||
            train_step_fb(ts, ids + B / 2 * T, tg + B / 2 * T, B - B / 2, 1.0f / (float)n_t, 1,
                          &half, &c, &err)) {
            CHECK(0, "%s: %s", model, err.msg);
            goto done;
        }
        tr->loss[step] += half;
        float gscale;
        tr->gnorm[step] = optim_clip(be, tp, np, 1.0f, &gscale, NULL);
        if (step == STEPS - 1) tr->grads = gather(be, tp, np, tr->n, 0);
        optim_step(&opt, tp, np, 1e-2f, gscale);
        if (step == 0 && !guard) tr->copies = cpu_weight_copy_state(be, m->layers[m->cfg.L - 1].wq);
    }
    tr->weights = gather(be, tp, np, tr->n, 1);
    tr->ok = be->err.code == 0;
    CHECK(tr->ok, "%s: %s", model, be->err.msg);
done:
    optim_free(&opt);
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

static void same_trace(const char *what, const Trace *ref, const Trace *got) {
    if (!ref->ok || !got->ok || ref->n != got->n) {
        CHECK(0, "%s: runs failed or differ in size (%zu, %zu)", what, ref->n, got->n);
        return;
    }
    for (int s = 0; s < STEPS; s++) {
        CHECK(!memcmp(&ref->loss[s], &got->loss[s], sizeof(double)),
              "%s: step %d loss %.17g, without copies %.17g", what, s + 1, got->loss[s],
              ref->loss[s]);
        CHECK(!memcmp(&ref->gnorm[s], &got->gnorm[s], sizeof(double)),
              "%s: step %d grad norm %.17g, without copies %.17g", what, s + 1, got->gnorm[s],
              ref->gnorm[s]);
    }
    CHECK(!memcmp(ref->grads, got->grads, sizeof(float) * ref->n),
          "%s: last gradients differ (max diff %g)", what,
          test_max_abs_diff(ref->grads, got->grads, ref->n));
    CHECK(!memcmp(ref->weights, got->weights, sizeof(float) * ref->n),
          "%s: weights differ (max diff %g)", what,
          test_max_abs_diff(ref->weights, got->weights, ref->n));
}

/* The gradient norm's parts that the backward knows (train_grad_sumsq): a trained matrix's Σ g²
 * from its weight gradient's product, where one product wrote the gradient this step and nothing
 * else since, and a tied head's, which the embedding's backward then adds to (embed_bwd_wte).
 * Each known part equals the sum of its gradient within double rounding; the norms' and biases'
 * are not known; none after a second micro-batch (accumulated) or with a gradient hook; and the
 * step's norm and clipping factor are those without them. */
static void hook_none(void *ctx, int layer) {
    (void)ctx, (void)layer;
}

static void test_known(const char *model, TrainMethod method, const char *name, int tied) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    enum { B = 2, T = 40 };
    int32_t ids[B * T], tg[B * T];
    TrainSetup setup = {.method = method, .freeze_layers = 1, .seed = 7};
    be->mm_bf16 = 1;
    if (model_load(model, be, &m, &err) || train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s: %s", model, err.msg);
        goto done;
    }
    for (int i = 0; i < B * T; i++) {
        ids[i] = 3 + (i * 7919) % (m->cfg.V - 3);
        tg[i] = i % T < 4 ? -100 : (i * 104729) % m->cfg.V;
    }
    int np, c;
    double loss;
    const TrainParam *tp = train_params(ts, &np);
    double *known = xmalloc(sizeof(double) * (size_t)np);
    for (int pass = 0; pass < 3; pass++) { /* one micro-batch; two; one with a hook */
        train_zero_grad(ts);
        train_set_grad_hook(ts, pass == 2 ? hook_none : NULL, NULL);
        for (int mb = 0; mb < (pass == 1 ? 2 : 1); mb++)
            if (train_step_fb(ts, ids, tg, B, 0.01f, 1, &loss, &c, &err)) {
                CHECK(0, "%s: %s", name, err.msg);
                goto out;
            }
        train_set_grad_hook(ts, NULL, NULL);
        train_grad_sumsq(ts, tp, np, known);
        int n_known = 0, bad = 0, head_known = 0, head_trained = 0;
        for (int i = 0; i < np; i++) {
            head_trained |= tp[i].data == m->lm_head;
            if (known[i] < 0) continue;
            n_known++;
            double s = be->ops->sumsq(be, tp[i].grad, tp[i].n);
            bad += !(fabs(known[i] - s) <= SS_RTOL * s);
            head_known |= tp[i].data == m->lm_head;
        }
        CHECK(!bad, "%s: %d known part(s) of the norm differ from their gradients' sums", name,
              bad);
        if (pass == 0) {
            CHECK(n_known >= 4 * (method == METHOD_FREEZE ? 1 : m->cfg.L) && n_known < np,
                  "%s: %d of %d tensors' Σ g² known", name, n_known, np);
            CHECK(head_known == head_trained, "%s: the %shead's Σ g² %sknown", name,
                  tied ? "tied " : "", head_known ? "" : "not ");
            float g1, g2;
            double n1 = optim_clip(be, tp, np, 0.5f, &g1, known),
                   n2 = optim_clip(be, tp, np, 0.5f, &g2, NULL);
            CHECK(fabs(n1 - n2) <= SS_RTOL * n2 && fabsf(g1 - g2) <= (float)SS_RTOL * g2,
                  "%s: norm %.17g (factor %.9g) with the known parts, %.17g (%.9g) without", name,
                  n1, (double)g1, n2, (double)g2);
        } else {
            CHECK(n_known == 0, "%s: %d tensors' Σ g² known after %s", name, n_known,
                  pass == 1 ? "a second micro-batch" : "a gradient hook");
        }
    }
out:
    free(known);
done:
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

static void test_engine(int fast) {
    struct {
        const char *model;
        TrainMethod method;
        const char *name;
    } runs[] = {{"tests/fixtures/llama_tied", METHOD_FULL, "llama_tied full"},
                {"tests/fixtures/llama_tied", METHOD_FREEZE, "llama_tied freeze"},
                {"tests/fixtures/gpt2", METHOD_FULL, "gpt2 full"}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        Trace none, with1, with2;
        Trace plain;
        run(runs[i].model, runs[i].method, 2, -1, &plain);
        run(runs[i].model, runs[i].method, 2, 0, &none);
        run(runs[i].model, runs[i].method, 1, CPU_PACK_MB, &with1);
        run(runs[i].model, runs[i].method, 2, CPU_PACK_MB, &with2);
        char what[96];
        snprintf(what, sizeof what, "%s, guard backend (gradients zeroed up front)", runs[i].name);
        same_trace(what, &plain, &none);
        snprintf(what, sizeof what, "%s, copies, 1 thread", runs[i].name);
        same_trace(what, &none, &with1);
        snprintf(what, sizeof what, "%s, copies, 2 threads", runs[i].name);
        same_trace(what, &none, &with2);
        CHECK(none.copies == 0, "%s: a copy without a budget (state %d)", runs[i].name,
              none.copies);
        CHECK(with2.copies == (fast ? 2 : 0), "%s: the last layer's q weight: copy state %d",
              runs[i].name, with2.copies);
        CHECK(with2.est_extra == with2.tracked && (with2.tracked > 0) == fast,
              "%s: the estimate counts %zu bytes of copies, the run tracks %zu", runs[i].name,
              with2.est_extra, with2.tracked);
        Trace *t[] = {&none, &with1, &with2, &plain};
        for (int j = 0; j < 4; j++) {
            free(t[j]->grads);
            free(t[j]->weights);
        }
    }
}

int main(void) {
    unsetenv("TUNA_BF16");
    unsetenv("TUNA_PACK_MB");
    const char *fast = cpu_bf16_path();
    int forced = 0;
    if (!strcmp(fast, "plain")) { /* the kernel where the CPU has it but defaults to plain */
        setenv("TUNA_BF16", "avx512bf16", 1);
        fast = cpu_bf16_path();
        forced = strcmp(fast, "plain") != 0;
        if (!forced) unsetenv("TUNA_BF16");
    }
    printf("bf16 path here: %s%s\n", fast, forced ? " (forced: the CPU's default is plain)" : "");
    if (strcmp(fast, "plain")) {
        test_backend(fast, 1);
        test_bwd_dw(fast);
        test_engine(1);
        test_known("tests/fixtures/llama_tied", METHOD_FULL, "llama_tied full", 1);
        test_known("tests/fixtures/llama_tied", METHOD_FREEZE, "llama_tied freeze", 1);
        test_known("tests/fixtures/gpt2", METHOD_FULL, "gpt2 full", 1);
        if (!strcmp(fast, "amx")) {
            setenv("TUNA_BF16", "avx512bf16", 1);
            test_backend("avx512bf16", 1);
            test_bwd_dw("avx512bf16");
            unsetenv("TUNA_BF16");
        }
        unsetenv("TUNA_BF16");
    } else {
        SKIP("no AVX512-BF16 on this CPU: the plain path keeps no copies");
    }
    setenv("TUNA_BF16", "plain", 1);
    test_backend("plain", 0);
    test_bwd_dw("plain");
    test_engine(0);
    test_known("tests/fixtures/gpt2", METHOD_FULL, "gpt2 full, plain", 1);
    unsetenv("TUNA_BF16");
    return test_report("test_bf16_mirror");
}
