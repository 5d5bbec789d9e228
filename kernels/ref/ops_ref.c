#include "ops_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// --- memory: host malloc, 64-byte aligned

void *host_alloc(Backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, n ? n : 64)) return NULL;
    return p;
}

void host_release(Backend *be, void *p) {
    (void)be;
    free(p);
}

void host_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

int host_sync(Backend *be) {
    return be->err.code;
}

// --- forward ops

void ref_matmul_fwd(float *out, const float *in, const float *w, const float *bias, int M, int K,
                    int N) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = bias ? (double)bias[n] : 0.0;
            const float *a = in + (size_t)m * K, *b = w + (size_t)n * K;
            for (int k = 0; k < K; k++) s += (double)a[k] * (double)b[k];
            out[(size_t)m * N + n] = (float)s;
        }
}

void ref_rmsnorm_fwd(float *out, const float *in, const float *w, float eps, int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C;
        float *y = out + (size_t)r * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * (double)x[c];
        float inv = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int c = 0; c < C; c++) y[c] = x[c] * inv * w[c];
    }
}

void ref_layernorm_fwd(float *out, const float *in, const float *w, const float *b, float eps,
                       int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C;
        float *y = out + (size_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += (double)x[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += ((double)x[c] - mean) * ((double)x[c] - mean);
        var /= C;
        double inv = 1.0 / sqrt(var + (double)eps);
        for (int c = 0; c < C; c++) y[c] = (float)(((double)x[c] - mean) * inv) * w[c] + b[c];
    }
}

void ref_rope_fwd(float *x, const int32_t *pos, const float *inv_freq, int T, int NH, int HS,
                  int rot_dim) {
    int half = rot_dim / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            float *v = x + ((size_t)t * NH + h) * HS;
            for (int i = 0; i < half; i++) {
                float ang = (float)pos[t] * inv_freq[i];
                float c = cosf(ang), s = sinf(ang);
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

void ref_attention_fwd(float *out, const float *q, const float *k, const float *v, int B, int Tq,
                       int Tk, size_t kv_stride, int NH, int KVH, int HS, int window) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH;
    double *sc = malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++)
            for (int h = 0; h < NH; h++) {
                const float *qv = q + (((size_t)b * Tq + t) * NH + h) * HS;
                float *o = out + (((size_t)b * Tq + t) * NH + h) * HS;
                int p = Tk - Tq + t; /* this query's position */
                int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
                double mx = -INFINITY;
                for (int j = lo; j <= p; j++) {
                    const float *kv = k + b * kv_stride + ((size_t)j * KVH + h / grp) * HS;
                    double s = 0;
                    for (int i = 0; i < HS; i++) s += (double)qv[i] * (double)kv[i];
                    sc[j] = s * (double)scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                double sum = 0;
                for (int j = lo; j <= p; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < HS; i++) {
                    double acc = 0;
                    for (int j = lo; j <= p; j++)
                        acc += sc[j] * (double)v[b * kv_stride + ((size_t)j * KVH + h / grp) * HS + i];
                    o[i] = (float)(acc / sum);
                }
            }
    free(sc);
}

void ref_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void ref_gelu_fwd(float *out, const float *in, size_t n, int approx) {
    for (size_t i = 0; i < n; i++) {
        double x = in[i];
        if (approx)
            out[i] = (float)(0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
        else out[i] = (float)(0.5 * x * (1.0 + erf(x * 0.7071067811865476)));
    }
}

void ref_add_fwd(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void ref_embed_fwd(float *out, const int32_t *ids, const float *table, int T, int C) {
    for (int t = 0; t < T; t++)
        memcpy(out + (size_t)t * C, table + (size_t)ids[t] * C, sizeof(float) * (size_t)C);
}

// --- the backend table

static void r_matmul(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N) {
    (void)be;
    ref_matmul_fwd(out, in, w, bias, M, K, N);
}
static void r_rmsnorm(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                      int C) {
    (void)be;
    ref_rmsnorm_fwd(out, in, w, eps, R, C);
}
static void r_layernorm(Backend *be, float *out, const float *in, const float *w, const float *b,
                        float eps, int R, int C) {
    (void)be;
    ref_layernorm_fwd(out, in, w, b, eps, R, C);
}
static void r_rope(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim) {
    (void)be;
    ref_rope_fwd(x, pos, inv_freq, T, NH, HS, rot_dim);
}
static void r_attention(Backend *be, float *out, const float *q, const float *k, const float *v,
                        int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                        int window) {
    (void)be;
    ref_attention_fwd(out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window);
}
static void r_swiglu(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    (void)be;
    ref_swiglu_fwd(out, gate, up, n);
}
static void r_gelu(Backend *be, float *out, const float *in, size_t n, int approx) {
    (void)be;
    ref_gelu_fwd(out, in, n, approx);
}
static void r_add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    ref_add_fwd(out, a, b, n);
}
static void r_embed(Backend *be, float *out, const int32_t *ids, const float *table, int T, int C) {
    (void)be;
    ref_embed_fwd(out, ids, table, T, C);
}

static const BackendOps ref_ops = {
        .name = "ref",
        .alloc = host_alloc,
        .release = host_release,
        .upload = host_memcpy,
        .download = host_memcpy,
        .copy = host_memcpy,
        .sync = host_sync,
        .matmul_fwd = r_matmul,
        .rmsnorm_fwd = r_rmsnorm,
        .layernorm_fwd = r_layernorm,
        .rope_fwd = r_rope,
        .attention_fwd = r_attention,
        .swiglu_fwd = r_swiglu,
        .gelu_fwd = r_gelu,
        .add_fwd = r_add,
        .embed_fwd = r_embed,
};

Backend *ref_backend_init(int n_threads, TunaErr *err) {
    (void)err;
    Backend *be = calloc(1, sizeof *be);
    if (!be) return NULL;
    be->ops = &ref_ops;
    be->n_threads = n_threads > 0 ? n_threads : 1;
    return be;
}
