/* value_head.c: the reward model's value head and its pairwise loss (value_head.h). */
#include "value_head.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "safetensors.h"
#include "xalloc.h"

static const char *const vh_names[2] = {"v_head.summary.weight", "v_head.summary.bias"};

int vhead_init(ValueHead *vh, Backend *be, int C, uint64_t seed, TunaErr *err) {
    memset(vh, 0, sizeof *vh);
    vh->be = be;
    vh->C = C;
    size_t n[2] = {(size_t)C, 1};
    for (int k = 0; k < 2; k++) {
        TrainParam *t = &vh->tp[k];
        snprintf(t->name, sizeof t->name, "%s", vh_names[k]);
        t->n = n[k];
        t->ndim = k ? 1 : 2;
        t->shape[0] = k ? 1 : 1;
        t->shape[1] = k ? 0 : C;
        t->decay = !k;
        void *d = be->ops->alloc(be, n[k] * sizeof(float));
        void *g = d ? be->ops->alloc(be, n[k] * sizeof(float)) : NULL;
        if (!d || !g) {
            be->ops->release(be, d);
            vhead_free(vh);
            return tuna_errf(err, TUNA_ENOMEM, "value head: out of memory");
        }
        t->data = d;
        t->grad = g;
    }
    float *w = xmalloc(sizeof(float) * (size_t)C), b = 0;
    double bound = 1.0 / sqrt((double)C);
    uint64_t s = seed ^ 0x7668656164ull; /* "vhead" */
    for (int i = 0; i <= C; i++) {
        double u = (double)(rng_splitmix64(&s) >> 11) * 0x1.0p-53; /* [0, 1) */
        float x = (float)((2 * u - 1) * bound);
        if (i < C)
            w[i] = x;
        else
            b = x;
    }
    vhead_set(vh, w, b);
    free(w);
    vhead_zero_grad(vh);
    return 0;
}

void vhead_free(ValueHead *vh) {
    if (!vh || !vh->be) return;
    for (int k = 0; k < 2; k++) {
        if (vh->tp[k].data) vh->be->ops->release(vh->be, vh->tp[k].data);
        if (vh->tp[k].grad) vh->be->ops->release(vh->be, vh->tp[k].grad);
    }
    memset(vh, 0, sizeof *vh);
}

void vhead_zero_grad(ValueHead *vh) {
    float *z = xcalloc((size_t)vh->C, sizeof(float));
    vh->be->ops->upload(vh->be, vh->tp[0].grad, z, sizeof(float) * (size_t)vh->C);
    vh->be->ops->upload(vh->be, vh->tp[1].grad, z, sizeof(float));
    free(z);
}

void vhead_get(const ValueHead *vh, float *w, float *b) {
    vh->be->ops->download(vh->be, w, vh->tp[0].data, sizeof(float) * (size_t)vh->C);
    vh->be->ops->download(vh->be, b, vh->tp[1].data, sizeof(float));
}

void vhead_set(ValueHead *vh, const float *w, float b) {
    vh->be->ops->upload(vh->be, vh->tp[0].data, w, sizeof(float) * (size_t)vh->C);
    vh->be->ops->upload(vh->be, vh->tp[1].data, &b, sizeof(float));
}

int vhead_load(ValueHead *vh, const char *dir, TunaErr *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, VHEAD_FILE);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    float *w = xmalloc(sizeof(float) * ((size_t)vh->C + 1)), b = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        const StTensor *t = safetensors_find(st, vh_names[k]);
        size_t want = k ? 1 : (size_t)vh->C, numel = 1;
        for (int d = 0; t && d < t->ndim; d++)
            numel *= (size_t)t->shape[d];
        if (!t)
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: no tensor %s", path, vh_names[k]);
        else if (numel != want)
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: %s has %zu values, the model's hidden size is %d", path,
                           vh_names[k], numel, vh->C);
        else
            rc = st_tensor_to_f32(t, k ? &b : w, want, err);
    }
    if (!rc) vhead_set(vh, w, b);
    free(w);
    safetensors_free(st);
    return rc;
}

int vhead_save(const ValueHead *vh, const char *dir, TunaErr *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, VHEAD_FILE);
    float *w = xmalloc(sizeof(float) * (size_t)vh->C), b;
    vhead_get(vh, w, &b);
    StWriteTensor t[2] = {
            {.name = vh_names[0], .dtype = ST_F32, .ndim = 2, .shape = {1, vh->C}, .data = w},
            {.name = vh_names[1], .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = &b}};
    const char *meta[] = {"format", "pt"}; /* as LLaMA-Factory's fix_valuehead_checkpoint */
    int rc = safetensors_write(path, t, 2, meta, 1, err);
    free(w);
    return rc;
}

void rm_last_positions(const int32_t *targets, int B, int T, int *last) {
    for (int b = 0; b < B; b++) {
        last[b] = -1;
        for (int t = T - 1; t >= 0; t--)
            if (targets[(size_t)b * T + t] != -100) {
                last[b] = t + 1 < T ? t + 1 : T - 1;
                break;
            }
    }
}

/* log(sigmoid(x)) without overflow */
static double logsig(double x) {
    return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
}

float rm_drop_scale(uint64_t seed, int b, int i, double p) {
    uint64_t key = tuna_dropout_key(seed ^ (uint64_t)(b + 1) * 0xD6E8FEB86659FD93ULL);
    return tuna_dropout_u(key, (uint64_t)i) >= (float)p ? (float)(1.0 / (1.0 - p)) : 0.0f;
}

/* h (C) *= the dropout factors of row b (f, C: kept for the backward) */
static void drop_row(const RmBatch *rb, int b, float *h, float *f, int C) {
    for (int i = 0; i < C; i++) {
        f[i] = rb->drop_p > 0 ? rm_drop_scale(rb->drop_seed, b, i, rb->drop_p) : 1.0f;
        h[i] *= f[i];
    }
}

void rm_hidden(void *ctx, Backend *be, const float *hidden, float *dhidden, int B, int T, int C) {
    RmBatch *rb = ctx;
    ValueHead *vh = rb->vh;
    int P = rb->pairs;
    if (B < 2 * P) return;
    float *w = xmalloc(sizeof(float) * (size_t)C), bias;
    float *hc = xmalloc(sizeof(float) * (size_t)C), *hr = xmalloc(sizeof(float) * (size_t)C);
    float *gw = xmalloc(sizeof(float) * (size_t)C), *dh = xmalloc(sizeof(float) * (size_t)C);
    float *fc = xmalloc(sizeof(float) * (size_t)C), *fr = xmalloc(sizeof(float) * (size_t)C);
    double *acc = xcalloc((size_t)C, sizeof(double));
    vhead_get(vh, w, &bias);
    int any = 0;
    for (int p = 0; p < P; p++) {
        int lc = rb->last[p], lr = rb->last[P + p];
        if (lc < 0 || lr < 0) continue;
        be->ops->download(be, hc, hidden + ((size_t)p * T + lc) * C, sizeof(float) * (size_t)C);
        be->ops->download(be, hr, hidden + ((size_t)(P + p) * T + lr) * C,
                          sizeof(float) * (size_t)C);
        drop_row(rb, p, hc, fc, C); /* the head reads dropout(h) */
        drop_row(rb, P + p, hr, fr, C);
        double sc = bias, sr = bias;
        for (int i = 0; i < C; i++) {
            sc += (double)w[i] * (double)hc[i];
            sr += (double)w[i] * (double)hr[i];
        }
        double z = sc - sr;
        rb->sums.loss += -logsig(z);
        rb->sums.accuracy += sc > sr;
        rb->sums.chosen += sc;
        rb->sums.rejected += sr;
        rb->sums.n++;
        if (!dhidden) continue;
        /* d(-logsigmoid(z))/dz = -sigmoid(-z); the bias cancels in z (no gradient) */
        double dz = -(z >= 0 ? exp(-z) / (1 + exp(-z)) : 1 / (1 + exp(z))) * rb->scale;
        for (int i = 0; i < C; i++) {
            acc[i] += dz * ((double)hc[i] - (double)hr[i]);
            dh[i] = (float)(dz * (double)w[i]) * fc[i];
        }
        be->ops->upload(be, dhidden + ((size_t)p * T + lc) * C, dh, sizeof(float) * (size_t)C);
        for (int i = 0; i < C; i++)
            dh[i] = -(float)(dz * (double)w[i]) * fr[i];
        be->ops->upload(be, dhidden + ((size_t)(P + p) * T + lr) * C, dh,
                        sizeof(float) * (size_t)C);
        any = 1;
    }
    if (any) { /* the value head's gradient accumulates (+=) */
        be->ops->download(be, gw, vh->tp[0].grad, sizeof(float) * (size_t)C);
        for (int i = 0; i < C; i++)
            gw[i] = (float)((double)gw[i] + acc[i]);
        be->ops->upload(be, vh->tp[0].grad, gw, sizeof(float) * (size_t)C);
    }
    free(w);
    free(hc);
    free(hr);
    free(gw);
    free(dh);
    free(fc);
    free(fr);
    free(acc);
}
