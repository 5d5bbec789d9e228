/* test_grad_ops.c: the backward, loss and optimizer ops (and DoRA's per-column col_scale, col_dot).
 *  1. Finite differences: each ref backward op against central differences (h = 1e-5) of a
 *     double-precision forward written here, on the random projection L = <r, f(x)>
 *     (for xent, L = scale * Σ losses), for every gradient input; the double forwards are
 *     first checked against the float ref forwards, so they are the same functions. The ref
 *     ops are also checked to accumulate (+=) into pre-filled gradients.
 *  2. Every op of every available backend against kernels/ref at several shapes (M = 1,
 *     sizes that are not multiples of 16, sizes above the parallel threshold), with
 *     gradients pre-filled with random values (the += contract) and with NULL gradients.
 *     Tolerance |x - ref| <= atol + rtol * |ref|.
 *  3. AdamW against a plain double loop for 5 steps; dropout masks identical across
 *     backends, with about p of the elements zeroed. */
#include <math.h>
#include <stdint.h>

#include "harness.h"
#include "kernels/backend.h"
#include "kernels/ref/ops_hash.h"
#include "kernels/ref/ops_ref.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}
static float *rand_buf(size_t n, float scale) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}
static float *zeros(size_t n) {
    return calloc(n ? n : 1, sizeof(float));
}
static float *dup_buf(const float *src, size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    memcpy(p, src, sizeof(float) * n);
    return p;
}
static double *to_double(const float *src, size_t n) {
    double *p = malloc(sizeof(double) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = (double)src[i];
    return p;
}

// --- 1. finite differences of the ref backward ops

enum {
    OP_MATMUL,
    OP_RMSNORM,
    OP_LAYERNORM,
    OP_ROPE,
    OP_ATTN,
    OP_SWIGLU,
    OP_GELU,
    OP_EMBED,
    OP_XENT,
    OP_SUMSQ,
    OP_SCALE,
    OP_DROPOUT,
    OP_ADAMW,
    OP_COL_SCALE,
    OP_COL_DOT,
    OP_LOGIT_STATS,
    OP_NOISE,
    N_OPS
};
static const char *op_names[N_OPS] = {
        "matmul_bwd", "rmsnorm_bwd", "layernorm_bwd", "rope_bwd",    "attention_bwd", "swiglu_bwd",
        "gelu_bwd",   "embed_bwd",   "xent_fwd_bwd",  "sumsq",       "scale",         "dropout",
        "adamw",      "col_scale",   "col_dot",       "logit_stats", "noise_add"};
static double fd_worst[N_OPS]; /* max |g - fd| / max(1, max |fd|) */

/* Inputs of one finite-difference case, in double (perturbed) with the int parameters. */
typedef struct FdCase {
    int op;
    int M, K, N;                        /* matmul; R = M, C = K for norms; T, NH, HS */
    int B, Tq, Tk, NH, KVH, HS, window; /* attention (and rope: Tq = T, rot = window) */
    size_t kv_stride, n;
    const int32_t *kv_lo; /* attention: first key per query (neat packing), or NULL */
    double *a, *b, *c;    /* the op's inputs, in signature order */
    double *r;            /* projection weights (the "dout") */
    const int32_t *ids;   /* embed ids, rope positions, xent targets */
    const float *inv_freq;
    double eps, scale;
    double smooth; /* xent: label smoothing */
    int approx;
} FdCase;

static double gelu_d(double x, int approx) {
    if (approx) return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
}

/* Double forward of a row-wise norm: y for row x (C). */
static void norm_row_d(double *y, const double *x, const double *w, const double *b, double eps,
                       int C, int layer) {
    double mean = 0, var = 0;
    if (layer) {
        for (int c = 0; c < C; c++)
            mean += x[c];
        mean /= C;
    }
    for (int c = 0; c < C; c++)
        var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    double inv = 1.0 / sqrt(var + eps);
    for (int c = 0; c < C; c++)
        y[c] = (x[c] - mean) * inv * w[c] + (layer ? b[c] : 0.0);
}

/* Double forward of attention into out (B,Tq,NH,HS). */
static void attention_d(double *out, const FdCase *f) {
    int grp = f->NH / f->KVH;
    double scale = (double)(1.0f / sqrtf((float)f->HS));
    double sc[64];
    for (int b = 0; b < f->B; b++)
        for (int t = 0; t < f->Tq; t++)
            for (int h = 0; h < f->NH; h++) {
                const double *qv = f->a + (((size_t)b * f->Tq + t) * f->NH + h) * f->HS;
                double *o = out + (((size_t)b * f->Tq + t) * f->NH + h) * f->HS;
                int p = f->Tk - f->Tq + t;
                int lo = f->window > 0 && p - f->window + 1 > 0 ? p - f->window + 1 : 0;
                if (f->kv_lo && f->kv_lo[(size_t)b * f->Tq + t] > lo)
                    lo = f->kv_lo[(size_t)b * f->Tq + t];
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= p; j++) {
                    const double *kv =
                            f->b + b * f->kv_stride + ((size_t)j * f->KVH + h / grp) * f->HS;
                    double s = 0;
                    for (int i = 0; i < f->HS; i++)
                        s += qv[i] * kv[i];
                    sc[j] = s * scale;
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = lo; j <= p; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < f->HS; i++) {
                    double acc = 0;
                    for (int j = lo; j <= p; j++)
                        acc += sc[j] *
                               f->c[b * f->kv_stride + ((size_t)j * f->KVH + h / grp) * f->HS + i];
                    o[i] = acc / sum;
                }
            }
}

/* out (n_out) = the op's forward in double; returns n_out. xent writes scale * loss per row. */
static size_t forward_d(double *out, const FdCase *f) {
    switch (f->op) {
    case OP_MATMUL:
        for (int m = 0; m < f->M; m++)
            for (int n = 0; n < f->N; n++) {
                double s = f->c ? f->c[n] : 0.0;
                for (int k = 0; k < f->K; k++)
                    s += f->a[(size_t)m * f->K + k] * f->b[(size_t)n * f->K + k];
                out[(size_t)m * f->N + n] = s;
            }
        return (size_t)f->M * f->N;
    case OP_RMSNORM:
    case OP_LAYERNORM:
        for (int r = 0; r < f->M; r++)
            norm_row_d(out + (size_t)r * f->K, f->a + (size_t)r * f->K, f->b, f->c, f->eps, f->K,
                       f->op == OP_LAYERNORM);
        return (size_t)f->M * f->K;
    case OP_ROPE: {
        int half = f->window / 2;
        size_t n = (size_t)f->Tq * f->NH * f->HS;
        memcpy(out, f->a, sizeof(double) * n);
        for (int t = 0; t < f->Tq; t++)
            for (int h = 0; h < f->NH; h++) {
                const double *x = f->a + ((size_t)t * f->NH + h) * f->HS;
                double *y = out + ((size_t)t * f->NH + h) * f->HS;
                for (int i = 0; i < half; i++) {
                    float ang = (float)f->ids[t] * f->inv_freq[i];
                    double c = (double)cosf(ang), s = (double)sinf(ang);
                    y[i] = x[i] * c - x[i + half] * s;
                    y[i + half] = x[i + half] * c + x[i] * s;
                }
            }
        return n;
    }
    case OP_ATTN: attention_d(out, f); return (size_t)f->B * f->Tq * f->NH * f->HS;
    case OP_SWIGLU:
        for (size_t i = 0; i < f->n; i++)
            out[i] = f->a[i] / (1.0 + exp(-f->a[i])) * f->b[i];
        return f->n;
    case OP_GELU:
        for (size_t i = 0; i < f->n; i++)
            out[i] = gelu_d(f->a[i], f->approx);
        return f->n;
    case OP_EMBED:
        for (int t = 0; t < f->Tq; t++)
            for (int c = 0; c < f->K; c++)
                out[(size_t)t * f->K + c] = f->a[(size_t)f->ids[t] * f->K + c];
        return (size_t)f->Tq * f->K;
    case OP_XENT:
        for (int r = 0; r < f->M; r++) {
            const double *x = f->a + (size_t)r * f->N;
            int32_t tg = f->ids[r];
            double mx = -INFINITY, sum = 0;
            for (int i = 0; i < f->N; i++)
                mx = x[i] > mx ? x[i] : mx;
            double sx = 0; /* the definition: (1 - e) (-log p_t) + e mean(-log p) */
            for (int i = 0; i < f->N; i++)
                sum += exp(x[i] - mx), sx += x[i];
            double lse = mx + log(sum), e = f->smooth;
            out[r] = tg < 0 ? 0.0 : ((1 - e) * (lse - x[tg]) + e * (lse - sx / f->N)) * f->scale;
        }
        return (size_t)f->M;
    }
    return 0;
}

/* L = <r, f(x)> (xent: r = 1). */
static double proj(const FdCase *f, double *scratch) {
    size_t n = forward_d(scratch, f);
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (f->r ? f->r[i] : 1.0) * scratch[i];
    return s;
}

/* Compares g (n) with central differences of proj over x (n, one of f's inputs). */
static void fd_compare(FdCase *f, double *x, const float *g, size_t n, const char *what) {
    const double h = 1e-5;
    double *scratch = malloc(sizeof(double) * 4096);
    double maxerr = 0, maxfd = 0;
    for (size_t i = 0; i < n; i++) {
        double save = x[i];
        x[i] = save + h;
        double lp = proj(f, scratch);
        x[i] = save - h;
        double lm = proj(f, scratch);
        x[i] = save;
        double fd = (lp - lm) / (2 * h);
        double e = fabs(fd - (double)g[i]);
        if (e > maxerr || e != e) maxerr = e;
        if (fabs(fd) > maxfd) maxfd = fabs(fd);
    }
    double rel = maxerr / (maxfd > 1 ? maxfd : 1);
    if (rel > fd_worst[f->op]) fd_worst[f->op] = rel;
    CHECK(rel <= 1e-6 && maxfd > 0, "fd %s %s: max |g - fd| %g (max |fd| %g)", op_names[f->op],
          what, maxerr, maxfd);
    free(scratch);
}

/* The double forward is the float ref forward up to float rounding. */
static void check_forward_d(const FdCase *f, const float *ref_out, size_t n) {
    double *y = malloc(sizeof(double) * n);
    forward_d(y, f);
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(y[i] - (double)ref_out[i]) / (1 + fabs(y[i]));
        e = d > e || d != d ? d : e;
    }
    CHECK(e < 2e-6, "fd %s: the double forward differs from ref's by %g", op_names[f->op], e);
    free(y);
}

/* acc (n) - g0 must equal fresh (n): the op accumulated into a pre-filled gradient. */
static void check_accumulated(int op, const float *acc, const float *g0, const float *fresh,
                              size_t n, const char *what) {
    double e = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(((double)acc[i] - (double)g0[i]) - (double)fresh[i]);
        e = d > e || d != d ? d : e;
    }
    CHECK(e <= 1e-5, "%s %s: did not accumulate into the pre-filled gradient (err %g)",
          op_names[op], what, e);
}

static void fd_matmul(int M, int K, int N) {
    size_t nin = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
    float *in = rand_buf(nin, 1), *w = rand_buf(nw, 1), *b = rand_buf((size_t)N, 1);
    float *r = rand_buf(no, 1), *y = zeros(no);
    float *din = zeros(nin), *dw = zeros(nw), *db = zeros((size_t)N);
    FdCase f = {.op = OP_MATMUL, .M = M, .K = K, .N = N};
    f.a = to_double(in, nin), f.b = to_double(w, nw), f.c = to_double(b, (size_t)N);
    f.r = to_double(r, no);
    ref_matmul_fwd(y, in, w, b, M, K, N);
    check_forward_d(&f, y, no);
    ref_matmul_bwd(din, dw, db, r, in, w, M, K, N);
    fd_compare(&f, f.a, din, nin, "din");
    fd_compare(&f, f.b, dw, nw, "dw");
    fd_compare(&f, f.c, db, (size_t)N, "dbias");
    float *g0a = rand_buf(nin, 1), *g0b = rand_buf(nw, 1), *g0c = rand_buf((size_t)N, 1);
    float *a1 = dup_buf(g0a, nin), *a2 = dup_buf(g0b, nw), *a3 = dup_buf(g0c, (size_t)N);
    ref_matmul_bwd(a1, a2, a3, r, in, w, M, K, N);
    check_accumulated(OP_MATMUL, a1, g0a, din, nin, "din");
    check_accumulated(OP_MATMUL, a2, g0b, dw, nw, "dw");
    check_accumulated(OP_MATMUL, a3, g0c, db, (size_t)N, "dbias");
    ref_matmul_bwd(NULL, NULL, NULL, r, in, w, M, K, N); /* NULL everywhere: a no-op */
    free(in), free(w), free(b), free(r), free(y), free(din), free(dw), free(db);
    free(f.a), free(f.b), free(f.c), free(f.r);
    free(g0a), free(g0b), free(g0c), free(a1), free(a2), free(a3);
}

static void fd_norm(int layer, int R, int C) {
    int op = layer ? OP_LAYERNORM : OP_RMSNORM;
    size_t n = (size_t)R * C;
    float *in = rand_buf(n, 2), *w = rand_buf((size_t)C, 1), *b = rand_buf((size_t)C, 1);
    float *r = rand_buf(n, 1), *y = zeros(n);
    float *din = zeros(n), *dw = zeros((size_t)C), *db = zeros((size_t)C);
    FdCase f = {.op = op, .M = R, .K = C, .eps = (double)1e-5f};
    f.a = to_double(in, n), f.b = to_double(w, (size_t)C), f.c = to_double(b, (size_t)C);
    f.r = to_double(r, n);
    float *g0a = rand_buf(n, 1), *g0b = rand_buf((size_t)C, 1), *g0c = rand_buf((size_t)C, 1);
    float *a1 = dup_buf(g0a, n), *a2 = dup_buf(g0b, (size_t)C), *a3 = dup_buf(g0c, (size_t)C);
    if (layer) {
        ref_layernorm_fwd(y, in, w, b, 1e-5f, R, C);
        ref_layernorm_bwd(din, dw, db, r, in, w, 1e-5f, R, C);
        ref_layernorm_bwd(a1, a2, a3, r, in, w, 1e-5f, R, C);
    } else {
        ref_rmsnorm_fwd(y, in, w, 1e-5f, R, C);
        ref_rmsnorm_bwd(din, dw, r, in, w, 1e-5f, R, C);
        ref_rmsnorm_bwd(a1, a2, r, in, w, 1e-5f, R, C);
    }
    check_forward_d(&f, y, n);
    fd_compare(&f, f.a, din, n, "din");
    fd_compare(&f, f.b, dw, (size_t)C, "dw");
    check_accumulated(op, a1, g0a, din, n, "din");
    check_accumulated(op, a2, g0b, dw, (size_t)C, "dw");
    if (layer) {
        fd_compare(&f, f.c, db, (size_t)C, "db");
        check_accumulated(op, a3, g0c, db, (size_t)C, "db");
    }
    free(in), free(w), free(b), free(r), free(y), free(din), free(dw), free(db);
    free(f.a), free(f.b), free(f.c), free(f.r);
    free(g0a), free(g0b), free(g0c), free(a1), free(a2), free(a3);
}

static void fd_rope(int T, int NH, int HS, int rot) {
    size_t n = (size_t)T * NH * HS;
    float *x = rand_buf(n, 1), *r = rand_buf(n, 1), *y = dup_buf(x, n), *g = dup_buf(r, n);
    float fr[64];
    for (int i = 0; i < rot / 2; i++)
        fr[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
    int32_t pos[64];
    for (int t = 0; t < T; t++)
        pos[t] = 7 + 5 * t;
    FdCase f = {
            .op = OP_ROPE, .Tq = T, .NH = NH, .HS = HS, .window = rot, .ids = pos, .inv_freq = fr};
    f.a = to_double(x, n), f.r = to_double(r, n);
    ref_rope_fwd(y, pos, fr, T, NH, HS, rot);
    check_forward_d(&f, y, n);
    ref_rope_bwd(g, pos, fr, T, NH, HS, rot);
    char what[64];
    snprintf(what, sizeof what, "dx (rot_dim %d of %d)", rot, HS);
    fd_compare(&f, f.a, g, n, what);
    free(x), free(r), free(y), free(g), free(f.a), free(f.r);
}

/* kv_lo (B*Tq) of neat packing: the key positions 0..Tk-1 of each row cut into examples of
 * 1..maxlen keys (from seed); query t (at position Tk-Tq+t) starts where its example does. */
static int32_t *make_spans(int B, int Tq, int Tk, int maxlen, uint32_t seed) {
    int32_t *lo = malloc(sizeof(int32_t) * (size_t)B * Tq);
    for (int b = 0; b < B; b++) {
        int start = 0, end = 0;
        for (int p = 0; p < Tk; p++) {
            if (p == end) {
                seed = seed * 1664525u + 1013904223u;
                start = p;
                end = p + 1 + (int)((seed >> 16) % (uint32_t)maxlen);
            }
            int t = p - (Tk - Tq);
            if (t >= 0) lo[(size_t)b * Tq + t] = start;
        }
    }
    return lo;
}

/* a kv_lo of no example shape: query t (at position p) sees keys p/2..p */
static int32_t *make_half_lo(int B, int Tq, int Tk) {
    int32_t *lo = malloc(sizeof(int32_t) * (size_t)B * Tq);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++)
            lo[(size_t)b * Tq + t] = (Tk - Tq + t) / 2;
    return lo;
}

static void fd_attention(int B, int Tq, int Tk, int NH, int KVH, int HS, int window,
                         const int32_t *kv_lo) {
    size_t stride = (size_t)(Tk + 2) * KVH * HS; /* padded rows: their gradient stays 0 */
    size_t nq = (size_t)B * Tq * NH * HS, nkv = (size_t)B * stride;
    float *q = rand_buf(nq, 1), *k = rand_buf(nkv, 1), *v = rand_buf(nkv, 1);
    float *r = rand_buf(nq, 1), *y = zeros(nq);
    float *dq = zeros(nq), *dk = zeros(nkv), *dv = zeros(nkv);
    FdCase f = {.op = OP_ATTN,
                .B = B,
                .Tq = Tq,
                .Tk = Tk,
                .NH = NH,
                .KVH = KVH,
                .HS = HS,
                .window = window,
                .kv_stride = stride,
                .kv_lo = kv_lo};
    f.a = to_double(q, nq), f.b = to_double(k, nkv), f.c = to_double(v, nkv);
    f.r = to_double(r, nq);
    ref_attention_fwd(y, q, k, v, B, Tq, Tk, stride, NH, KVH, HS, window, kv_lo);
    check_forward_d(&f, y, nq);
    ref_attention_bwd(dq, dk, dv, r, q, k, v, B, Tq, Tk, stride, NH, KVH, HS, window, kv_lo);
    char what[96];
    snprintf(what, sizeof what, "B=%d Tq=%d Tk=%d NH=%d KVH=%d HS=%d win=%d%s", B, Tq, Tk, NH, KVH,
             HS, window, kv_lo ? " spans" : "");
    fd_compare(&f, f.a, dq, nq, what);
    fd_compare(&f, f.b, dk, nkv, what);
    fd_compare(&f, f.c, dv, nkv, what);
    float *g0 = rand_buf(nkv, 1), *acc = dup_buf(g0, nkv);
    ref_attention_bwd(NULL, acc, NULL, r, q, k, v, B, Tq, Tk, stride, NH, KVH, HS, window, kv_lo);
    check_accumulated(OP_ATTN, acc, g0, dk, nkv, "dk (dq, dv NULL)");
    free(q), free(k), free(v), free(r), free(y), free(dq), free(dk), free(dv);
    free(f.a), free(f.b), free(f.c), free(f.r), free(g0), free(acc);
}

static void fd_elementwise(void) {
    size_t n = 37;
    float *a = rand_buf(n, 4), *b = rand_buf(n, 2), *r = rand_buf(n, 1), *y = zeros(n);
    float *ga = zeros(n), *gb = zeros(n);
    FdCase f = {.op = OP_SWIGLU, .n = n};
    f.a = to_double(a, n), f.b = to_double(b, n), f.r = to_double(r, n);
    ref_swiglu_fwd(y, a, b, n);
    check_forward_d(&f, y, n);
    ref_swiglu_bwd(ga, gb, r, a, b, n);
    fd_compare(&f, f.a, ga, n, "dgate");
    fd_compare(&f, f.b, gb, n, "dup");
    float *g0 = rand_buf(n, 1), *acc = dup_buf(g0, n);
    ref_swiglu_bwd(NULL, acc, r, a, b, n);
    check_accumulated(OP_SWIGLU, acc, g0, gb, n, "dup (dgate NULL)");
    for (int approx = 0; approx < 2; approx++) {
        FdCase fg = {.op = OP_GELU, .n = n, .approx = approx, .a = f.a, .r = f.r};
        ref_gelu_fwd(y, a, n, approx);
        check_forward_d(&fg, y, n);
        memset(ga, 0, sizeof(float) * n);
        ref_gelu_bwd(ga, r, a, n, approx);
        fd_compare(&fg, fg.a, ga, n, approx ? "din (tanh)" : "din (erf)");
        memcpy(acc, g0, sizeof(float) * n);
        ref_gelu_bwd(acc, r, a, n, approx);
        check_accumulated(OP_GELU, acc, g0, ga, n, "din");
    }
    free(a), free(b), free(r), free(y), free(ga), free(gb), free(g0), free(acc);
    free(f.a), free(f.b), free(f.r);
}

static void fd_embed(void) {
    int V = 6, C = 5, T = 7;
    int32_t ids[7] = {1, 4, 1, 0, 1, 5, 4}; /* repeated ids add up; row 2 and 3 stay 0 */
    float *tab = rand_buf((size_t)V * C, 1), *r = rand_buf((size_t)T * C, 1);
    float *y = zeros((size_t)T * C), *g = zeros((size_t)V * C);
    FdCase f = {.op = OP_EMBED, .Tq = T, .K = C, .ids = ids};
    f.a = to_double(tab, (size_t)V * C), f.r = to_double(r, (size_t)T * C);
    ref_embed_fwd(y, ids, tab, T, C);
    check_forward_d(&f, y, (size_t)T * C);
    ref_embed_bwd(g, r, ids, T, C);
    fd_compare(&f, f.a, g, (size_t)V * C, "dtable (repeated ids)");
    free(tab), free(r), free(y), free(g), free(f.a), free(f.r);
}

static void fd_xent(float smooth) {
    int R = 6, V = 11;
    int32_t tg[6] = {3, -100, 0, 10, -100, 3};
    float scale = 0.37f;
    float *x = rand_buf((size_t)R * V, 3), *d = zeros((size_t)R * V), *loss = zeros((size_t)R);
    FdCase f = {.op = OP_XENT,
                .M = R,
                .N = V,
                .ids = tg,
                .scale = (double)scale,
                .smooth = (double)smooth};
    f.a = to_double(x, (size_t)R * V);
    int bad = ref_xent_fwd_bwd(d, loss, x, tg, R, V, scale, smooth, XENT_PLAIN);
    CHECK(bad == 0, "fd xent: %d bad targets reported", bad);
    for (int r = 0; r < R; r++)
        loss[r] *= scale; /* forward_d reports scale * loss */
    check_forward_d(&f, loss, (size_t)R);
    CHECK(loss[1] == 0 && loss[4] == 0, "fd xent: ignored rows have a loss");
    fd_compare(&f, f.a, d, (size_t)R * V, "dlogits (targets -100 ignored)");
    /* dlogits aliasing logits gives the same */
    float *al = dup_buf(x, (size_t)R * V), *l2 = zeros((size_t)R);
    ref_xent_fwd_bwd(al, l2, al, tg, R, V, scale, smooth, XENT_PLAIN);
    double e;
    CHECK(test_close_enough(al, d, (size_t)R * V, 0, 0, &e), "fd xent: aliased dlogits differ: %g",
          e);
    free(x), free(d), free(loss), free(f.a), free(al), free(l2);
}

static int desc_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The weighted losses (LLaMA-Factory's _dft_cross_entropy and _eaft_cross_entropy) are not
 * gradients of their losses (the weight is held constant), so against their definitions: each
 * row's plain loss and dlogits times w, in double: DFT w = p[target] = exp(-loss); EAFT w =
 * (H / 3)^alpha, H the entropy of the softmax over the row's 20 largest logits (sorted here) */
static void weight_definition(int V, XentWeight wt) {
    int R = 6;
    int32_t tg[6] = {3, -100, 0, 10, -100, 3};
    float scale = 0.37f;
    float *x = rand_buf((size_t)R * V, 3), *d = zeros((size_t)R * V), *loss = zeros((size_t)R);
    float *dd = zeros((size_t)R * V), *ld = zeros((size_t)R), *srt = zeros((size_t)V);
    ref_xent_fwd_bwd(d, loss, x, tg, R, V, scale, 0, XENT_PLAIN);
    ref_xent_fwd_bwd(dd, ld, x, tg, R, V, scale, 0, wt);
    double worst = 0;
    for (int r = 0; r < R; r++) {
        double w = exp(-(double)loss[r]);
        if (wt.kind == XENT_W_EAFT) {
            memcpy(srt, x + (size_t)r * V, sizeof(float) * (size_t)V);
            qsort(srt, (size_t)V, sizeof(float), desc_float);
            int k = V < 20 ? V : 20;
            double s = 0, h = 0;
            for (int j = 0; j < k; j++)
                s += exp((double)srt[j]);
            for (int j = 0; j < k; j++)
                h -= exp((double)srt[j]) / s * ((double)srt[j] - log(s));
            w = pow(h / 3.0, (double)wt.alpha);
        }
        double want_l = w * (double)loss[r];
        worst = fmax(worst, fabs((double)ld[r] - want_l) / fmax(1e-30, want_l));
        for (int i = 0; i < V; i++) {
            double want = w * (double)d[(size_t)r * V + i];
            worst = fmax(worst,
                         fabs((double)dd[(size_t)r * V + i] - want) / fmax(1e-6, fabs(want)));
        }
    }
    CHECK(worst <= 1e-5 && ld[1] == 0 && ld[4] == 0,
          "%s (V %d): the loss and dlogits are not the plain ones times w: rel %.3g",
          wt.kind == XENT_W_DFT ? "DFT" : "EAFT", V, worst);
    free(x), free(d), free(loss), free(dd), free(ld), free(srt);
}

// --- 2. every backend against ref

#define MAX_BK 6
typedef struct Bk {
    Backend *be;
    char label[24];
} Bk;
static Bk bks[MAX_BK];
static int nbk;
static double be_worst[N_OPS][MAX_BK]; /* max |x - ref| per op and backend */

static float *up(Backend *be, const float *h, size_t n) {
    if (!h) return NULL;
    float *d = be->ops->alloc(be, (n ? n : 1) * sizeof(float));
    be->ops->upload(be, d, h, n * sizeof(float));
    return d;
}
static void down(Backend *be, float *h, const float *d, size_t n) {
    be->ops->download(be, h, d, n * sizeof(float));
    be->ops->sync(be);
}
static void rel(Backend *be, float *d) {
    be->ops->release(be, d);
}

/* Checks got against want and records the error under (op, backend). */
static void cmp(int op, int bi, const char *what, const float *got, const float *want, size_t n,
                float atol, float rtol) {
    double w;
    int ok = test_close_enough(got, want, n, atol, rtol, &w);
    CHECK(ok, "%s %s %s: max err %g", bks[bi].label, op_names[op], what, w);
    if (w > be_worst[op][bi]) be_worst[op][bi] = w;
}

static int op_present(const BackendOps *o, int op) {
    switch (op) {
    case OP_MATMUL: return o->matmul_bwd != NULL;
    case OP_RMSNORM: return o->rmsnorm_bwd != NULL;
    case OP_LAYERNORM: return o->layernorm_bwd != NULL;
    case OP_ROPE: return o->rope_bwd != NULL;
    case OP_ATTN: return o->attention_bwd != NULL;
    case OP_SWIGLU: return o->swiglu_bwd != NULL;
    case OP_GELU: return o->gelu_bwd != NULL;
    case OP_EMBED: return o->embed_bwd != NULL;
    case OP_XENT: return o->xent_fwd_bwd != NULL;
    case OP_SUMSQ: return o->sumsq != NULL;
    case OP_SCALE: return o->scale != NULL;
    case OP_DROPOUT: return o->dropout != NULL;
    case OP_ADAMW: return o->adamw != NULL;
    case OP_COL_SCALE: return o->col_scale != NULL;
    case OP_COL_DOT: return o->col_dot != NULL;
    case OP_LOGIT_STATS: return o->logit_stats != NULL;
    case OP_NOISE: return o->noise_add != NULL;
    }
    return 0;
}

/* Skips (once per backend and op) an op a backend does not implement yet. */
static int has_op(int bi, int op) {
    static unsigned char said[MAX_BK][N_OPS];
    if (op_present(bks[bi].be->ops, op)) return 1;
    if (!said[bi][op]) SKIP("%s has no %s yet", bks[bi].label, op_names[op]);
    said[bi][op] = 1;
    return 0;
}

/* Runs one set of up to 3 gradients on backend bi: grads pre-filled with g0[i] (or NULL
 * when g0[i] is NULL), then compares with want[i]. `call` runs the op on device buffers. */
typedef void (*GradCall)(Backend *be, float **grads, const float **ins, const void *args);
static void run_grads(int op, int bi, const char *what, GradCall call, const void *args,
                      const float **ins_h, const size_t *nins, int nin, float **g0, float **want,
                      const size_t *ng, int ngr, float atol, float rtol) {
    Backend *be = bks[bi].be;
    const float *ins[6] = {0};
    float *gd[3] = {0};
    for (int i = 0; i < nin; i++)
        ins[i] = up(be, ins_h[i], nins[i]);
    for (int i = 0; i < ngr; i++)
        gd[i] = g0[i] ? up(be, g0[i], ng[i]) : NULL;
    call(be, gd, ins, args);
    for (int i = 0; i < ngr; i++) {
        if (!gd[i]) continue;
        float *got = malloc(sizeof(float) * ng[i]);
        down(be, got, gd[i], ng[i]);
        char w2[160];
        snprintf(w2, sizeof w2, "%s grad %d%s", what, i, g0[(i + 1) % ngr] ? "" : " (others NULL)");
        cmp(op, bi, w2, got, want[i], ng[i], atol, rtol);
        free(got);
        rel(be, gd[i]);
    }
    for (int i = 0; i < nin; i++)
        rel(be, (float *)ins[i]);
}

/* Runs the op with all gradients, then with each gradient alone (the rest NULL). */
static void run_all_subsets(int op, const char *what, GradCall call, const void *args,
                            const float **ins_h, const size_t *nins, int nin, float **g0,
                            float **want, const size_t *ng, int ngr, float atol, float rtol) {
    for (int bi = 0; bi < nbk; bi++) {
        if (!has_op(bi, op)) continue;
        run_grads(op, bi, what, call, args, ins_h, nins, nin, g0, want, ng, ngr, atol, rtol);
        if (ngr == 1) continue;
        for (int only = 0; only < ngr; only++) {
            float *g1[3] = {0};
            g1[only] = g0[only];
            run_grads(op, bi, what, call, args, ins_h, nins, nin, g1, want, ng, ngr, atol, rtol);
        }
    }
}

typedef struct Args {
    int M, K, N, B, Tq, Tk, NH, KVH, HS, window, approx;
    int set; /* an op with an acc argument: called with acc 0 (its gradients overwritten) */
    size_t n, kv_stride;
    float eps;
    const int32_t *ids;
    const int32_t *kv_lo; /* attention: neat-packing spans, or NULL */
} Args;

static void call_matmul(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->matmul_bwd(be, g[0], g[1], g[2], in[0], in[1], in[2], a->M, a->K, a->N);
}
static void call_rmsnorm(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->rmsnorm_bwd(be, g[0], g[1], in[0], in[1], in[2], a->eps, a->M, a->K);
}
static void call_layernorm(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->layernorm_bwd(be, g[0], g[1], g[2], in[0], in[1], in[2], a->eps, a->M, a->K);
}
static void call_attention(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->attention_bwd(be, g[0], g[1], g[2], in[0], in[1], in[2], in[3], a->B, a->Tq, a->Tk,
                           a->kv_stride, a->NH, a->KVH, a->HS, a->window, a->kv_lo);
}
static void call_swiglu(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->swiglu_bwd(be, g[0], g[1], in[0], in[1], in[2], a->n, !a->set);
}
static void call_gelu(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->gelu_bwd(be, g[0], in[0], in[1], a->n, a->approx);
}
static void call_embed(Backend *be, float **g, const float **in, const void *vp) {
    const Args *a = vp;
    be->ops->embed_bwd(be, g[0], in[0], a->ids, a->Tq, a->K);
}

static void be_matmul(void) {
    int shapes[][3] = {{1, 64, 172},  {1, 7, 5},     {3, 17, 29},
                       {12, 64, 256}, {33, 100, 77}, {64, 576, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Args a = {.M = shapes[s][0], .K = shapes[s][1], .N = shapes[s][2]};
        size_t nin = (size_t)a.M * a.K, nw = (size_t)a.N * a.K, no = (size_t)a.M * a.N;
        float *dout = rand_buf(no, 1), *in = rand_buf(nin, 1), *w = rand_buf(nw, 0.5f);
        float *g0[3] = {rand_buf(nin, 1), rand_buf(nw, 1), rand_buf((size_t)a.N, 1)};
        float *want[3] = {dup_buf(g0[0], nin), dup_buf(g0[1], nw), dup_buf(g0[2], (size_t)a.N)};
        ref_matmul_bwd(want[0], want[1], want[2], dout, in, w, a.M, a.K, a.N);
        const float *ins[3] = {dout, in, w};
        size_t nins[3] = {no, nin, nw}, ng[3] = {nin, nw, (size_t)a.N};
        char what[64];
        snprintf(what, sizeof what, "M=%d K=%d N=%d", a.M, a.K, a.N);
        run_all_subsets(OP_MATMUL, what, call_matmul, &a, ins, nins, 3, g0, want, ng, 3, 1e-4f,
                        1e-4f);
        free(dout), free(in), free(w);
        for (int i = 0; i < 3; i++)
            free(g0[i]), free(want[i]);
    }
}

static void be_norms(void) {
    int shapes[][2] = {{1, 64}, {5, 288}, {7, 13}, {64, 576}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int layer = 0; layer < 2; layer++) {
            Args a = {.M = shapes[s][0], .K = shapes[s][1], .eps = 1e-5f};
            size_t n = (size_t)a.M * a.K, C = (size_t)a.K;
            float *dout = rand_buf(n, 1), *in = rand_buf(n, 2), *w = rand_buf(C, 1);
            float *g0[3] = {rand_buf(n, 1), rand_buf(C, 1), rand_buf(C, 1)};
            float *want[3] = {dup_buf(g0[0], n), dup_buf(g0[1], C), dup_buf(g0[2], C)};
            if (layer)
                ref_layernorm_bwd(want[0], want[1], want[2], dout, in, w, a.eps, a.M, a.K);
            else
                ref_rmsnorm_bwd(want[0], want[1], dout, in, w, a.eps, a.M, a.K);
            const float *ins[3] = {dout, in, w};
            size_t nins[3] = {n, n, C}, ng[3] = {n, C, C};
            char what[64];
            snprintf(what, sizeof what, "R=%d C=%d", a.M, a.K);
            run_all_subsets(layer ? OP_LAYERNORM : OP_RMSNORM, what,
                            layer ? call_layernorm : call_rmsnorm, &a, ins, nins, 3, g0, want, ng,
                            layer ? 3 : 2, 2e-5f, 1e-4f);
            free(dout), free(in), free(w);
            for (int i = 0; i < 3; i++)
                free(g0[i]), free(want[i]);
        }
    }
}

static void be_rope(void) {
    int shapes[][4] = {{9, 3, 16, 16}, {5, 2, 12, 8}, {64, 9, 64, 64}, {1, 4, 10, 6}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], NH = shapes[s][1], HS = shapes[s][2], rot = shapes[s][3];
        size_t n = (size_t)T * NH * HS;
        float fr[32];
        for (int i = 0; i < rot / 2; i++)
            fr[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
        int32_t pos[64];
        for (int t = 0; t < T; t++)
            pos[t] = 100 + 3 * t;
        float *g = rand_buf(n, 1), *want = dup_buf(g, n), *got = zeros(n);
        ref_rope_bwd(want, pos, fr, T, NH, HS, rot);
        char what[64];
        snprintf(what, sizeof what, "T=%d NH=%d HS=%d rot=%d", T, NH, HS, rot);
        for (int bi = 0; bi < nbk; bi++) {
            if (!has_op(bi, OP_ROPE)) continue;
            Backend *be = bks[bi].be;
            float *dg = up(be, g, n), *df = up(be, fr, (size_t)rot / 2);
            be->ops->rope_bwd(be, dg, pos, df, T, NH, HS, rot);
            down(be, got, dg, n);
            cmp(OP_ROPE, bi, what, got, want, n, 1e-6f, 1e-5f);
            rel(be, dg), rel(be, df);
        }
        free(g), free(want), free(got);
    }
}

static void be_attention(void) {
    /* B, Tq, Tk, NH, KVH, HS, window; the last two: several query chunks of the sgemm path (QB
     * 128), a key offset */
    int shapes[][7] = {{1, 5, 5, 4, 2, 8, 0},      {1, 1, 37, 8, 4, 8, 0},
                       {2, 7, 7, 6, 6, 16, 0},     {1, 4, 20, 4, 1, 12, 0},
                       {1, 9, 9, 2, 2, 8, 3},      {2, 3, 11, 9, 3, 64, 0},
                       {1, 33, 40, 6, 2, 17, 7},   {2, 64, 64, 9, 3, 64, 0},
                       {2, 300, 300, 6, 2, 16, 0}, {1, 200, 230, 4, 2, 8, 50}};
    int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    /* each shape again with neat-packing spans (examples of 1..9 keys): the loop path for
     * short query blocks and the sgemm path (Tq >= 32), which computes such rows example by
     * example; then with a kv_lo of no example shape (each query sees the later half of its
     * keys), which the sgemm path computes as a whole masked square */
    for (int s = 0; s < 3 * n_shapes; s++) {
        const int *sh = shapes[s % n_shapes];
        Args a = {.B = sh[0],
                  .Tq = sh[1],
                  .Tk = sh[2],
                  .NH = sh[3],
                  .KVH = sh[4],
                  .HS = sh[5],
                  .window = sh[6]};
        int32_t *spans = s >= 2 * n_shapes ? make_half_lo(a.B, a.Tq, a.Tk)
                         : s >= n_shapes   ? make_spans(a.B, a.Tq, a.Tk, 9, (uint32_t)s)
                                           : NULL;
        a.kv_lo = spans;
        a.kv_stride = (size_t)(a.Tk + 3) * a.KVH * a.HS; /* a cache longer than Tk */
        size_t nq = (size_t)a.B * a.Tq * a.NH * a.HS, nkv = (size_t)a.B * a.kv_stride;
        float *dout = rand_buf(nq, 1), *q = rand_buf(nq, 1), *k = rand_buf(nkv, 1),
              *v = rand_buf(nkv, 1);
        float *g0[3] = {rand_buf(nq, 1), rand_buf(nkv, 1), rand_buf(nkv, 1)};
        float *want[3] = {dup_buf(g0[0], nq), dup_buf(g0[1], nkv), dup_buf(g0[2], nkv)};
        ref_attention_bwd(want[0], want[1], want[2], dout, q, k, v, a.B, a.Tq, a.Tk, a.kv_stride,
                          a.NH, a.KVH, a.HS, a.window, a.kv_lo);
        const float *ins[4] = {dout, q, k, v};
        size_t nins[4] = {nq, nq, nkv, nkv}, ng[3] = {nq, nkv, nkv};
        char what[96];
        snprintf(what, sizeof what, "B=%d Tq=%d Tk=%d NH=%d KVH=%d HS=%d win=%d%s", a.B, a.Tq, a.Tk,
                 a.NH, a.KVH, a.HS, a.window,
                 s >= 2 * n_shapes ? " half"
                 : spans           ? " spans"
                                   : "");
        run_all_subsets(OP_ATTN, what, call_attention, &a, ins, nins, 4, g0, want, ng, 3, 2e-5f,
                        2e-4f);
        free(dout), free(q), free(k), free(v), free(spans);
        for (int i = 0; i < 3; i++)
            free(g0[i]), free(want[i]);
    }
}

static void be_elementwise(void) {
    size_t sizes[] = {7, 40003};
    for (size_t s = 0; s < 2; s++) {
        Args a = {.n = sizes[s]};
        size_t n = a.n;
        float *dout = rand_buf(n, 1), *x = rand_buf(n, 4), *u = rand_buf(n, 2);
        float *g0[2] = {rand_buf(n, 1), rand_buf(n, 1)};
        float *want[2] = {dup_buf(g0[0], n), dup_buf(g0[1], n)};
        ref_swiglu_bwd(want[0], want[1], dout, x, u, n);
        const float *ins[3] = {dout, x, u};
        size_t nins[3] = {n, n, n}, ng[2] = {n, n};
        char what[64];
        snprintf(what, sizeof what, "n=%zu", n);
        run_all_subsets(OP_SWIGLU, what, call_swiglu, &a, ins, nins, 3, g0, want, ng, 2, 1e-6f,
                        1e-5f);
        /* acc 0: the gradients overwritten, the NaNs they held never read */
        float *nan0[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
        float *wz[2] = {calloc(n, sizeof(float)), calloc(n, sizeof(float))};
        for (size_t i = 0; i < n; i++)
            nan0[0][i] = nan0[1][i] = NAN;
        ref_swiglu_bwd(wz[0], wz[1], dout, x, u, n);
        a.set = 1;
        snprintf(what, sizeof what, "n=%zu acc 0", n);
        run_all_subsets(OP_SWIGLU, what, call_swiglu, &a, ins, nins, 3, nan0, wz, ng, 2, 1e-6f,
                        1e-5f);
        a.set = 0;
        for (int i = 0; i < 2; i++)
            free(nan0[i]), free(wz[i]);
        for (int approx = 0; approx < 2; approx++) {
            a.approx = approx;
            memcpy(want[0], g0[0], sizeof(float) * n);
            ref_gelu_bwd(want[0], dout, x, n, approx);
            snprintf(what, sizeof what, "n=%zu approx=%d", n, approx);
            run_all_subsets(OP_GELU, what, call_gelu, &a, ins, nins, 2, g0, want, ng, 1, 1e-6f,
                            1e-5f);
        }
        free(dout), free(x), free(u);
        for (int i = 0; i < 2; i++)
            free(g0[i]), free(want[i]);
    }
}

static void be_embed(void) {
    int shapes[][3] = {{5, 100, 10}, {300, 200, 50}, {1, 3, 2}}; /* T, C, V */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Args a = {.Tq = shapes[s][0], .K = shapes[s][1]};
        int V = shapes[s][2];
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)a.Tq);
        for (int t = 0; t < a.Tq; t++)
            ids[t] = (int32_t)((frand() + 1.0f) * 0.5f * (float)V) % V;
        if (a.Tq > 3) ids[3] = ids[0]; /* a repeat for sure */
        a.ids = ids;
        size_t no = (size_t)a.Tq * a.K, nt = (size_t)V * a.K;
        float *dout = rand_buf(no, 1), *g0[1] = {rand_buf(nt, 1)}, *want[1] = {dup_buf(g0[0], nt)};
        ref_embed_bwd(want[0], dout, ids, a.Tq, a.K);
        const float *ins[1] = {dout};
        size_t nins[1] = {no}, ng[1] = {nt};
        char what[64];
        snprintf(what, sizeof what, "T=%d C=%d V=%d", a.Tq, a.K, V);
        run_all_subsets(OP_EMBED, what, call_embed, &a, ins, nins, 1, g0, want, ng, 1, 1e-6f,
                        1e-6f);
        for (int bi = 0; bi < nbk; bi++) /* NULL dtable: nothing to do, nothing to crash */
            if (has_op(bi, OP_EMBED))
                bks[bi].be->ops->embed_bwd(bks[bi].be, NULL, dout, ids, a.Tq, a.K);
        free(ids), free(dout), free(g0[0]), free(want[0]);
    }
}

static void be_xent(float smooth, XentWeight wt) {
    int shapes[][2] = {{1, 7}, {37, 1000}, {64, 1031}, {3, 50000}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int R = shapes[s][0], V = shapes[s][1];
        size_t n = (size_t)R * V;
        float xs = s == 2 ? 30.0f : 3.0f; /* large logits: the max-subtract matters */
        float *x = rand_buf(n, xs), *want = zeros(n), *wl = zeros((size_t)R);
        float *got = zeros(n), *gl = zeros((size_t)R);
        int32_t *tg = malloc(sizeof(int32_t) * (size_t)R);
        for (int r = 0; r < R; r++)
            tg[r] = r % 5 == 1 ? -100 : (int32_t)(((size_t)r * 7919) % (size_t)V);
        float scale = 1.0f / (float)R;
        ref_xent_fwd_bwd(want, wl, x, tg, R, V, scale, smooth, wt);
        char what[80];
        for (int bi = 0; bi < nbk; bi++) {
            if (!has_op(bi, OP_XENT)) continue;
            Backend *be = bks[bi].be;
            if (wt.kind == XENT_W_EAFT && strstr(bks[bi].label, "cuda")) continue; /* not there */
            float *dx = up(be, x, n), *dd = be->ops->alloc(be, n * sizeof(float));
            for (int mode = 0; mode < 3; mode++) { /* separate, aliased, loss only */
                float *dl = mode == 0 ? dd : mode == 1 ? dx : NULL;
                be->ops->upload(be, dx, x, n * sizeof(float)); /* mode 1 overwrote it */
                memset(gl, 0xff, sizeof(float) * (size_t)R);
                be->ops->xent_fwd_bwd(be, dl, gl, dx, tg, R, V, scale, smooth, wt);
                snprintf(what, sizeof what, "R=%d V=%d e=%g%s %s losses", R, V, (double)smooth,
                         wt.kind == XENT_W_DFT ? " dft"
                         : wt.kind             ? " eaft"
                                               : "",
                         mode == 0   ? "separate"
                         : mode == 1 ? "aliased"
                                     : "loss-only");
                cmp(OP_XENT, bi, what, gl, wl, (size_t)R, 1e-5f, 1e-5f);
                if (dl) {
                    down(be, got, dl, n);
                    snprintf(what, sizeof what, "R=%d V=%d e=%g%s %s dlogits", R, V, (double)smooth,
                             wt.kind == XENT_W_DFT ? " dft"
                             : wt.kind             ? " eaft"
                                                   : "",
                             mode == 0 ? "separate" : "aliased");
                    cmp(OP_XENT, bi, what, got, want, n, 1e-7f, 1e-4f);
                }
            }
            /* a target that is neither -100 nor a token id latches an error, and no crash */
            int32_t bad = V + 5;
            be->ops->xent_fwd_bwd(be, dd, gl, dd, &bad, 1, V, 1.0f, smooth, wt);
            CHECK(be->ops->sync(be) == TUNA_EINVAL, "%s xent: a bad target is not reported",
                  bks[bi].label);
            tuna_err_clear(&be->err);
            rel(be, dx), rel(be, dd);
        }
        free(x), free(want), free(wl), free(got), free(gl), free(tg);
    }
}

/* logit_stats: ref against the definitions in plain double (the mean, -Σ p log p, the first
 * index of the largest logit), with ties at the maximum placed before, at and after the target;
 * every backend against ref */
static void be_logit_stats(void) {
    int shapes[][2] = {{1, 7}, {37, 1000}, {64, 1031}, {3, 50000}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int R = shapes[s][0], V = shapes[s][1];
        size_t n = (size_t)R * V;
        float xs = s == 2 ? 30.0f : 3.0f;
        float *x = rand_buf(n, xs), *want = zeros((size_t)R * 3), *got = zeros((size_t)R * 3);
        int32_t *tg = malloc(sizeof(int32_t) * (size_t)R);
        for (int r = 0; r < R; r++) {
            tg[r] = r % 5 == 1 ? -100 : (int32_t)(((size_t)r * 7919) % (size_t)V);
            float *row = x + (size_t)r * V;
            if (tg[r] < 0) continue;
            int t = tg[r];
            if (r % 4 == 0) row[t] = 100;                           /* the target the largest */
            if (r % 4 == 2 && t > 0) row[t] = row[t - 1] = 100;     /* tied with one before it */
            if (r % 4 == 3 && t + 1 < V) row[t] = row[t + 1] = 100; /* and one after it */
        }
        ref_logit_stats(want, x, tg, R, V);
        int bad = 0;
        for (int r = 0; r < R; r++) {
            const float *row = x + (size_t)r * V;
            double e[3] = {0, 0, 0};
            if (tg[r] >= 0) {
                int first = 0;
                for (int i = 1; i < V; i++)
                    if (row[i] > row[first]) first = i;
                double mx = row[first], se = 0, sz = 0, h = 0;
                for (int i = 0; i < V; i++)
                    se += exp((double)row[i] - mx), sz += (double)row[i];
                for (int i = 0; i < V; i++) {
                    double p = exp((double)row[i] - mx) / se;
                    if (p > 0) h -= p * log(p);
                }
                e[0] = sz / V, e[1] = h, e[2] = first == tg[r];
            }
            for (int k = 0; k < 3; k++)
                bad += fabs(e[k] - (double)want[(size_t)r * 3 + k]) > 1e-5 * fmax(1, fabs(e[k]));
        }
        CHECK(bad == 0, "ref logit_stats R=%d V=%d: %d values off the definitions", R, V, bad);
        for (int bi = 0; bi < nbk; bi++) {
            if (!has_op(bi, OP_LOGIT_STATS)) continue;
            Backend *be = bks[bi].be;
            float *dx = up(be, x, n);
            memset(got, 0xff, sizeof(float) * (size_t)R * 3);
            be->ops->logit_stats(be, got, dx, tg, R, V);
            char what[64];
            snprintf(what, sizeof what, "R=%d V=%d", R, V);
            cmp(OP_LOGIT_STATS, bi, what, got, want, (size_t)R * 3, 1e-5f, 1e-5f);
            rel(be, dx);
        }
        free(x), free(want), free(got), free(tg);
    }
}

static void be_reductions(void) {
    size_t sizes[] = {1, 7, 40003, 1000003};
    for (size_t s = 0; s < 4; s++) {
        size_t n = sizes[s];
        float *x = rand_buf(n, 3), *want = dup_buf(x, n), *got = zeros(n);
        double ss = ref_sumsq(x, n);
        ref_scale(want, n, 0.3f);
        for (int bi = 0; bi < nbk; bi++) {
            Backend *be = bks[bi].be;
            float *dx = up(be, x, n);
            if (has_op(bi, OP_SUMSQ)) {
                double got_ss = be->ops->sumsq(be, dx, n), e = fabs(got_ss - ss) / ss;
                CHECK(e <= 1e-6, "%s sumsq n=%zu: %.17g vs %.17g", bks[bi].label, n, got_ss, ss);
                if (e > be_worst[OP_SUMSQ][bi]) be_worst[OP_SUMSQ][bi] = e;
            }
            if (has_op(bi, OP_SCALE)) {
                be->ops->scale(be, dx, n, 0.3f);
                down(be, got, dx, n);
                char what[32];
                snprintf(what, sizeof what, "n=%zu", n);
                cmp(OP_SCALE, bi, what, got, want, n, 0, 0);
            }
            rel(be, dx);
        }
        free(x), free(want), free(got);
    }
}

/* DoRA's per-column ops: col_scale with and without a bias, in place and not; col_dot's double
 * sums (ref's against a sum written here, every backend's against ref's, bit for bit: a float
 * product is exact in double and each column is summed in row order) */
static void be_col_ops(void) {
    int shapes[][2] = {{1, 7}, {2, 1}, {5, 33}, {300, 517}, {64, 1536}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int R = shapes[s][0], N = shapes[s][1];
        size_t n = (size_t)R * N;
        float *x = rand_buf(n, 2), *y = rand_buf(n, 1), *a = rand_buf((size_t)N, 1.5f),
              *b = rand_buf((size_t)N, 0.5f), *want = zeros(n), *got = zeros(n);
        double *dw = calloc((size_t)N, sizeof(double)), *dg = calloc((size_t)N, sizeof(double));
        ref_col_dot(dw, x, y, R, N);
        double worst = 0;
        for (int o = 0; o < N; o++) {
            double d = 0;
            for (int t = 0; t < R; t++)
                d += (double)x[(size_t)t * N + o] * (double)y[(size_t)t * N + o];
            worst = fmax(worst, fabs(d - dw[o]));
        }
        CHECK(worst == 0, "ref col_dot %dx%d: %g from the plain sum", R, N, worst);
        for (int bi = 0; bi < nbk; bi++) {
            Backend *be = bks[bi].be;
            char what[64];
            float *dx = up(be, x, n), *dy = up(be, y, n), *da = up(be, a, (size_t)N),
                  *db = up(be, b, (size_t)N), *dout = up(be, got, n);
            if (has_op(bi, OP_COL_SCALE))
                for (int mode = 0; mode < 3; mode++) { /* bias; none; bias in place */
                    const float *bb = mode == 1 ? NULL : b;
                    ref_col_scale(want, x, a, bb, R, N);
                    if (mode == 2) {
                        be->ops->col_scale(be, dx, dx, da, db, R, N);
                        down(be, got, dx, n);
                        be->ops->upload(be, dx, x, n * sizeof(float));
                    } else {
                        be->ops->col_scale(be, dout, dx, da, mode == 1 ? NULL : db, R, N);
                        down(be, got, dout, n);
                    }
                    snprintf(what, sizeof what, "%dx%d %s", R, N,
                             mode == 0   ? "bias"
                             : mode == 1 ? "no bias"
                                         : "bias in place");
                    cmp(OP_COL_SCALE, bi, what, got, want, n, 1e-7f, 1e-6f);
                }
            if (has_op(bi, OP_COL_DOT)) {
                double *pre = malloc(sizeof(double) * (size_t)N);
                for (int o = 0; o < N; o++)
                    dg[o] = pre[o] = 0.25 * o; /* += onto what is there */
                ref_col_dot(pre, x, y, R, N);
                be->ops->col_dot(be, dg, dx, dy, R, N);
                be->ops->sync(be);
                double e = 0;
                for (int o = 0; o < N; o++)
                    e = fmax(e, fabs(dg[o] - pre[o]));
                free(pre);
                CHECK(e == 0, "%s col_dot %dx%d: %g from ref", bks[bi].label, R, N, e);
                if (e > be_worst[OP_COL_DOT][bi]) be_worst[OP_COL_DOT][bi] = e;
            }
            rel(be, dx), rel(be, dy), rel(be, da), rel(be, db), rel(be, dout);
        }
        free(x), free(y), free(a), free(b), free(want), free(got), free(dw), free(dg);
    }
}

// --- 3. dropout and AdamW

static void be_dropout(void) {
    size_t n = 100003;
    float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
    float *x = rand_buf(n, 1), *want = zeros(n), *got = zeros(n);
    for (size_t s = 0; s < sizeof ps / sizeof ps[0]; s++) {
        float p = ps[s];
        uint64_t seed = 1234 + s;
        ref_dropout(want, x, n, p, seed);
        size_t zero = 0, kept_ok = 0;
        for (size_t i = 0; i < n; i++) {
            if (want[i] == 0)
                zero++;
            else if (fabsf(want[i] - x[i] / (1.0f - p)) <= 1e-6f * fabsf(want[i]))
                kept_ok++;
        }
        double frac = (double)zero / (double)n, sd = sqrt((double)p * (1 - (double)p) / (double)n);
        CHECK(fabs(frac - (double)p) <= 5 * sd + 1e-9, "dropout p=%g: %g zeroed", (double)p, frac);
        CHECK(kept_ok + zero == n, "dropout p=%g: kept elements are not x/(1-p)", (double)p);
        char what[48];
        for (int bi = 0; bi < nbk; bi++) {
            if (!has_op(bi, OP_DROPOUT)) continue;
            Backend *be = bks[bi].be;
            float *dx = up(be, x, n), *dy = be->ops->alloc(be, n * sizeof(float));
            be->ops->dropout(be, dy, dx, n, p, seed);
            down(be, got, dy, n);
            snprintf(what, sizeof what, "p=%g mask", (double)p);
            cmp(OP_DROPOUT, bi, what, got, want, n, 0, 0);
            be->ops->dropout(be, dx, dx, n, p, seed); /* in place */
            down(be, got, dx, n);
            snprintf(what, sizeof what, "p=%g in place", (double)p);
            cmp(OP_DROPOUT, bi, what, got, want, n, 0, 0);
            rel(be, dx), rel(be, dy);
        }
    }
    /* another seed gives another mask; the hash is what backends share */
    ref_dropout(got, x, n, 0.5f, 99);
    ref_dropout(want, x, n, 0.5f, 100);
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += (got[i] == 0) == (want[i] == 0);
    CHECK(fabs((double)same / (double)n - 0.5) < 0.02,
          "dropout: seeds 99 and 100 agree on %zu of %zu", same, n);
    CHECK(tuna_dropout_u(tuna_dropout_key(1), 0) != tuna_dropout_u(tuna_dropout_key(2), 0),
          "dropout hash ignores the seed");
    free(x), free(want), free(got);
}

/* NEFTune's noise: x + (2u - 1) m with ops_hash.h's u, uniform on [-m, m) (mean 0, variance
 * m^2 / 3 within 5 standard errors), the same bits on every backend, another for another seed. */
static void be_noise(void) {
    size_t n = 100003;
    float mag = 0.37f;
    float *x = rand_buf(n, 1), *want = zeros(n), *got = zeros(n);
    memcpy(want, x, sizeof(float) * n);
    ref_noise_add(want, n, mag, 77);
    double s = 0, s2 = 0, lo = 0, hi = 0;
    size_t exact = 0;
    uint64_t key = tuna_dropout_key(77);
    for (size_t i = 0; i < n; i++) {
        double e = (double)(tuna_dropout_u(key, i) * 2.0f - 1.0f) * (double)mag;
        exact += want[i] == (float)((double)x[i] + (double)(float)e);
        s += e, s2 += e * e;
        lo = fmin(lo, e), hi = fmax(hi, e);
    }
    double mean = s / (double)n, var = s2 / (double)n - mean * mean, m2 = (double)mag * (double)mag;
    CHECK(exact == n, "noise: %zu of %zu elements are x + (2u - 1) m", exact, n);
    CHECK(fabs(mean) <= 5 * sqrt(m2 / 3 / (double)n), "noise: mean %.3g", mean);
    CHECK(fabs(var - m2 / 3) <= 5 * m2 * sqrt(4.0 / 45 / (double)n),
          "noise: variance %.5g, want %.5g", var, m2 / 3);
    CHECK(lo >= -(double)mag && hi < (double)mag && lo < -0.99 * (double)mag &&
                  hi > 0.99 * (double)mag,
          "noise: range [%.4g, %.4g] for m %.4g", lo, hi, (double)mag);
    for (int bi = 0; bi < nbk; bi++) {
        if (!has_op(bi, OP_NOISE)) continue;
        Backend *be = bks[bi].be;
        for (size_t len = 1; len <= n; len = len == n   ? n + 1
                                             : len < 64 ? len + 13
                                                        : n) { /* odd, all */
            float *dx = up(be, x, len);
            be->ops->noise_add(be, dx, len, mag, 77);
            down(be, got, dx, len);
            char what[48];
            snprintf(what, sizeof what, "n=%zu", len);
            cmp(OP_NOISE, bi, what, got, want, len, 0, 0);
            rel(be, dx);
        }
    }
    memcpy(got, x, sizeof(float) * n);
    ref_noise_add(got, n, mag, 78);
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += got[i] == want[i];
    CHECK(same < n / 100, "noise: seeds 77 and 78 agree on %zu of %zu", same, n);
    free(x), free(want), free(got);
}

/* Every backend's AdamW over 5 steps against a plain double loop (and ref). */
static void be_adamw(void) {
    size_t sizes[] = {7, 40003};
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    for (size_t s = 0; s < 2; s++) {
        size_t n = sizes[s];
        float *p0 = rand_buf(n, 1), *grads[5];
        for (int t = 0; t < 5; t++)
            grads[t] = rand_buf(n, t == 2 ? 1e-3f : 1.0f);
        /* the double loop */
        double *pd = to_double(p0, n), *md = calloc(n, sizeof(double)),
               *vd = calloc(n, sizeof(double));
        for (int t = 1; t <= 5; t++) {
            double bc1 = 1 - pow((double)b1, t), bc2 = 1 - pow((double)b2, t);
            for (size_t i = 0; i < n; i++) {
                double g = (double)grads[t - 1][i];
                pd[i] *= 1 - (double)lr * (double)wd;
                md[i] = (double)b1 * md[i] + (1 - (double)b1) * g;
                vd[i] = (double)b2 * vd[i] + (1 - (double)b2) * g * g;
                pd[i] -= (double)lr * (md[i] / bc1) / (sqrt(vd[i] / bc2) + (double)eps);
            }
        }
        float *want = malloc(sizeof(float) * n), *wm = malloc(sizeof(float) * n),
              *wv = malloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++)
            want[i] = (float)pd[i], wm[i] = (float)md[i], wv[i] = (float)vd[i];
        float *got = zeros(n), *zero = zeros(n);
        for (int bi = 0; bi < nbk; bi++) {
            if (!has_op(bi, OP_ADAMW)) continue;
            Backend *be = bks[bi].be;
            float *dp = up(be, p0, n), *dm = up(be, zero, n), *dv = up(be, zero, n);
            for (int t = 1; t <= 5; t++) {
                float *dg = up(be, grads[t - 1], n);
                float bc1 = (float)(1 - pow((double)b1, t)), bc2 = (float)(1 - pow((double)b2, t));
                be->ops->adamw(be, dp, dg, 1.0f, dm, dv, n, lr, b1, b2, eps, wd, bc1, bc2);
                rel(be, dg);
            }
            char what[48];
            snprintf(what, sizeof what, "n=%zu p after 5 steps", n);
            down(be, got, dp, n);
            cmp(OP_ADAMW, bi, what, got, want, n, 2e-6f, 1e-5f);
            snprintf(what, sizeof what, "n=%zu m", n);
            down(be, got, dm, n);
            cmp(OP_ADAMW, bi, what, got, wm, n, 1e-7f, 1e-5f);
            snprintf(what, sizeof what, "n=%zu v", n);
            down(be, got, dv, n);
            cmp(OP_ADAMW, bi, what, got, wv, n, 1e-9f, 1e-5f);
            rel(be, dp), rel(be, dm), rel(be, dv);
        }
        free(p0), free(pd), free(md), free(vd), free(want), free(wm), free(wv), free(got),
                free(zero);
        for (int t = 0; t < 5; t++)
            free(grads[t]);
    }
}

int main(void) {
    // 1. finite differences of ref
    fd_matmul(3, 5, 4);
    fd_matmul(1, 6, 3);
    fd_norm(0, 3, 7);
    fd_norm(1, 3, 7);
    fd_norm(1, 1, 16);
    fd_rope(4, 2, 8, 8);
    fd_rope(3, 3, 10, 6);                    /* partial rotary: dims 6..9 pass through */
    fd_attention(2, 3, 5, 4, 2, 4, 0, NULL); /* GQA, Tq < Tk, B > 1 */
    fd_attention(1, 4, 6, 3, 1, 5, 3, NULL); /* MQA with a window */
    fd_attention(1, 5, 5, 2, 2, 3, 2, NULL); /* Tq == Tk, window 2 */
    {                                        /* neat packing: examples kept to themselves */
        int32_t *s1 = make_spans(2, 7, 7, 3, 11), *s2 = make_spans(1, 4, 9, 4, 5);
        fd_attention(2, 7, 7, 4, 2, 4, 0, s1);
        fd_attention(1, 4, 9, 3, 1, 5, 0, s2); /* Tq < Tk */
        fd_attention(2, 7, 7, 2, 2, 3, 2, s1); /* with a window */
        free(s1), free(s2);
    }
    fd_elementwise();
    fd_embed();
    fd_xent(0);
    fd_xent(0.1f);
    weight_definition(11, (XentWeight){XENT_W_DFT, 0});
    weight_definition(11, (XentWeight){XENT_W_EAFT, 1.0f});
    weight_definition(300, (XentWeight){XENT_W_EAFT, 0.5f});

    // 2. + 3. every backend against ref
    const char *names[] = {"ref", "cpu", "cuda"};
    for (size_t i = 0; i < 3; i++)
        for (int th = 1; th <= 2 && nbk < MAX_BK; th++) {
            TunaErr err = {0};
            Backend *be = backend_init(names[i], th, &err);
            if (!be) {
                if (th == 1) SKIP("backend %s not available here: %s", names[i], err.msg);
                break;
            }
            bks[nbk].be = be;
            snprintf(bks[nbk].label, sizeof bks[nbk].label, "%s/%dt", names[i], th);
            nbk++;
            if (!strcmp(names[i], "ref")) break; /* ref ignores the thread count */
        }
    be_matmul();
    be_norms();
    be_rope();
    be_attention();
    be_elementwise();
    be_embed();
    be_xent(0, XENT_PLAIN);
    be_xent(0.1f, XENT_PLAIN);
    be_xent(0, (XentWeight){XENT_W_DFT, 0});
    be_xent(0, (XentWeight){XENT_W_EAFT, 1.0f});
    be_logit_stats();
    be_reductions();
    be_col_ops();
    be_dropout();
    be_noise();
    be_adamw();
    for (int bi = 0; bi < nbk; bi++) {
        CHECK(bks[bi].be->ops->sync(bks[bi].be) == 0, "%s: latched error: %s", bks[bi].label,
              bks[bi].be->err.msg);
        backend_free(bks[bi].be);
    }

    printf("%-14s %12s", "op", "fd rel err");
    for (int bi = 0; bi < nbk; bi++)
        printf(" %12s", bks[bi].label);
    printf("   (max |x - ref|; sumsq: relative)\n");
    for (int op = 0; op < N_OPS; op++) {
        printf("%-14s %12.2e", op_names[op], fd_worst[op]);
        for (int bi = 0; bi < nbk; bi++)
            printf(" %12.2e", be_worst[op][bi]);
        printf("\n");
    }
    return test_report("test_grad_ops");
}
