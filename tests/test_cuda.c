/* test_cuda.c: every op of the "cuda" backend against the "ref" backend, at several shapes
 * including ones that are not multiples of 32 (warp) or 256 (block), with aliased outputs
 * where backend.h allows them. Tolerance: |x - ref| <= atol + rtol * |ref|.
 * Each buffer goes through alloc/upload/download on both backends, so the memory ops are
 * exercised too. Without a device (or without nvcc at build time) it SKIPs and passes. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>

#include "harness.h"
#include "kernels/backend.h"

typedef struct Pair {
    Backend *ref, *cu;
} Pair;

/* The same tensor on both backends. */
typedef struct Buf {
    float *r, *c;
    size_t n;
} Buf;

// --- helpers

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static float frand(float lo, float hi) { /* uniform in [lo, hi) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((double)(rng_state >> 40) / 16777216.0);
}

static float *host_rand(size_t n, float lo, float hi) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand(lo, hi);
    return p;
}

/* Uploads host (n floats) to both backends; host NULL fills the ref copy with 0 and the cuda
 * copy with NaN, so an output element the cuda op forgets to write cannot pass. */
static Buf buf_new(Pair *p, const float *host, size_t n) {
    Buf b = {p->ref->ops->alloc(p->ref, n * sizeof(float)),
             p->cu->ops->alloc(p->cu, n * sizeof(float)), n};
    CHECK(b.r && b.c, "alloc of %zu floats failed: %s", n, p->cu->err.msg);
    float *tmp = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        tmp[i] = host ? host[i] : 0.0f;
    p->ref->ops->upload(p->ref, b.r, tmp, n * sizeof(float));
    for (size_t i = 0; i < n && !host; i++)
        tmp[i] = NAN;
    p->cu->ops->upload(p->cu, b.c, tmp, n * sizeof(float));
    free(tmp);
    return b;
}

static Buf buf_rand(Pair *p, size_t n, float lo, float hi) {
    float *h = host_rand(n, lo, hi);
    Buf b = buf_new(p, h, n);
    free(h);
    return b;
}

static void buf_free(Pair *p, Buf *b) {
    p->ref->ops->release(p->ref, b->r);
    p->cu->ops->release(p->cu, b->c);
}

/* Downloads both copies of b and checks them element by element. */
static void expect_close(Pair *p, const Buf *b, float atol, float rtol, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
static void expect_close(Pair *p, const Buf *b, float atol, float rtol, const char *fmt, ...) {
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);

    float *r = malloc(sizeof(float) * (b->n ? b->n : 1)),
          *c = malloc(sizeof(float) * (b->n ? b->n : 1));
    p->ref->ops->download(p->ref, r, b->r, b->n * sizeof(float));
    p->cu->ops->download(p->cu, c, b->c, b->n * sizeof(float));
    int rc = p->cu->ops->sync(p->cu);
    CHECK(rc == 0, "%s: cuda sync returned %d: %s", what, rc, p->cu->err.msg);

    size_t bad = 0, first = 0;
    for (size_t i = 0; i < b->n; i++) {
        double d = fabs((double)c[i] - (double)r[i]);
        if (!(d <= (double)atol + (double)rtol * fabs((double)r[i]))) { /* NaN fails too */
            if (!bad) first = i;
            bad++;
        }
    }
    CHECK(bad == 0,
          "%s: %zu of %zu elements off (first [%zu]: cuda %.8g, ref %.8g; max |diff| %.3g)", what,
          bad, b->n, first, bad ? (double)c[first] : 0.0, bad ? (double)r[first] : 0.0,
          test_max_abs_diff(c, r, b->n));
    free(r);
    free(c);
}

// --- ops

static void test_matmul(Pair *p) {
    static const int shapes[][3] = {{1, 1, 1},    {1, 64, 172},  {2, 3, 4},    {7, 31, 33},
                                    {33, 65, 17}, {64, 128, 96}, {5, 257, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            Buf in = buf_rand(p, (size_t)M * K, -1, 1), w = buf_rand(p, (size_t)N * K, -1, 1);
            Buf bias = buf_rand(p, (size_t)N, -1, 1), out = buf_new(p, NULL, (size_t)M * N);
            p->ref->ops->matmul_fwd(p->ref, out.r, in.r, w.r, with_bias ? bias.r : NULL, M, K, N);
            p->cu->ops->matmul_fwd(p->cu, out.c, in.c, w.c, with_bias ? bias.c : NULL, M, K, N);
            /* fp32 sums of K products of magnitude <= 1, in a different order */
            expect_close(p, &out, 1e-5f * (float)K, 1e-4f, "matmul M=%d K=%d N=%d bias=%d", M, K, N,
                         with_bias);
            buf_free(p, &in), buf_free(p, &w), buf_free(p, &bias), buf_free(p, &out);
        }
    }
}

static void test_norms(Pair *p) {
    static const int shapes[][2] = {{1, 1}, {3, 7}, {4, 32}, {5, 33}, {2, 768}, {3, 1025}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int R = shapes[s][0], C = shapes[s][1];
        const size_t n = (size_t)R * C;
        for (int alias = 0; alias < 2; alias++) {
            Buf in = buf_rand(p, n, -2, 2), w = buf_rand(p, (size_t)C, 0.5f, 1.5f);
            Buf b = buf_rand(p, (size_t)C, -1, 1), out = buf_new(p, NULL, n);
            Buf *o = alias ? &in : &out;
            p->ref->ops->rmsnorm_fwd(p->ref, o->r, in.r, w.r, 1e-5f, R, C);
            p->cu->ops->rmsnorm_fwd(p->cu, o->c, in.c, w.c, 1e-5f, R, C);
            expect_close(p, o, 1e-5f, 1e-4f, "rmsnorm R=%d C=%d alias=%d", R, C, alias);
            buf_free(p, &in), buf_free(p, &out);

            in = buf_rand(p, n, -2, 2), out = buf_new(p, NULL, n);
            o = alias ? &in : &out;
            p->ref->ops->layernorm_fwd(p->ref, o->r, in.r, w.r, b.r, 1e-5f, R, C);
            p->cu->ops->layernorm_fwd(p->cu, o->c, in.c, w.c, b.c, 1e-5f, R, C);
            /* C = 1 normalises to exactly b; otherwise values are O(1) */
            expect_close(p, o, 1e-5f, 1e-4f, "layernorm R=%d C=%d alias=%d", R, C, alias);
            buf_free(p, &in), buf_free(p, &w), buf_free(p, &b), buf_free(p, &out);
        }
    }
}

static void test_rope(Pair *p) {
    static const int shapes[][4] = {/* T, NH, HS, rot_dim */
                                    {1, 1, 2, 2}, {5, 3, 8, 8},      {7, 2, 64, 32},
                                    {9, 4, 6, 4}, {33, 5, 128, 128}, {3, 2, 80, 20}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int T = shapes[s][0], NH = shapes[s][1], HS = shapes[s][2], rot = shapes[s][3];
        const size_t n = (size_t)T * NH * HS;
        int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
        for (int t = 0; t < T; t++)
            pos[t] = (int32_t)(frand(0, 1) * 300.0f); /* any order */
        float *f = malloc(sizeof(float) * (size_t)(rot / 2));
        for (int i = 0; i < rot / 2; i++)
            f[i] = powf(10000.0f, -2.0f * (float)i / (float)rot);
        Buf x = buf_rand(p, n, -1, 1), inv_freq = buf_new(p, f, (size_t)(rot / 2));
        p->ref->ops->rope_fwd(p->ref, x.r, pos, inv_freq.r, T, NH, HS, rot);
        p->cu->ops->rope_fwd(p->cu, x.c, pos, inv_freq.c, T, NH, HS, rot);
        /* angles up to 300 rad: cosf/sinf of the same float angle, within a few ulp */
        expect_close(p, &x, 2e-5f, 1e-4f, "rope T=%d NH=%d HS=%d rot=%d", T, NH, HS, rot);
        buf_free(p, &x), buf_free(p, &inv_freq);
        free(pos), free(f);
    }
}

static void test_attention(Pair *p) {
    static const int shapes[][9] = {
            /* B, Tq, Tk, extra (kv_stride rows beyond Tk), NH, KVH, HS, window */
            {1, 1, 1, 0, 1, 1, 1, 0},    {2, 5, 5, 0, 4, 4, 8, 0},     {2, 3, 9, 0, 4, 2, 16, 0},
            {1, 1, 40, 7, 6, 2, 64, 0},  {3, 17, 17, 5, 4, 1, 33, 0},  {2, 33, 33, 0, 8, 2, 32, 8},
            {1, 7, 20, 3, 4, 4, 33, 5},  {1, 70, 70, 0, 2, 1, 128, 0}, {2, 1, 300, 12, 4, 2, 64, 0},
            {1, 4, 4, 0, 2, 2, 256, 100}};
    /* every shape twice: plain, then with neat-packing spans (kv_lo: examples of 2.. keys) */
    const size_t n_sh = sizeof shapes / sizeof shapes[0];
    for (size_t s = 0; s < 2 * n_sh; s++) {
        const int *sh = shapes[s % n_sh];
        const int B = sh[0], Tq = sh[1], Tk = sh[2], extra = sh[3];
        const int NH = sh[4], KVH = sh[5], HS = sh[6], window = sh[7];
        int32_t *kv_lo = NULL;
        if (s >= n_sh) {
            kv_lo = (int32_t *)malloc(sizeof(int32_t) * (size_t)B * Tq);
            for (int b = 0; b < B; b++)
                for (int t = 0; t < Tq; t++) {
                    int pp = Tk - Tq + t, len = 2 + b + (int)(s % 5);
                    kv_lo[(size_t)b * Tq + t] = pp - pp % len;
                }
        }
        const size_t kv_stride = (size_t)(Tk + extra) * KVH * HS;
        Buf q = buf_rand(p, (size_t)B * Tq * NH * HS, -1, 1);
        Buf k = buf_rand(p, (size_t)B * kv_stride, -1, 1),
            v = buf_rand(p, (size_t)B * kv_stride, -1, 1);
        Buf out = buf_new(p, NULL, (size_t)B * Tq * NH * HS);
        p->ref->ops->attention_fwd(p->ref, out.r, q.r, k.r, v.r, B, Tq, Tk, kv_stride, NH, KVH, HS,
                                   window, kv_lo);
        p->cu->ops->attention_fwd(p->cu, out.c, q.c, k.c, v.c, B, Tq, Tk, kv_stride, NH, KVH, HS,
                                  window, kv_lo);
        expect_close(p, &out, 2e-5f, 1e-4f,
                     "attention B=%d Tq=%d Tk=%d kv_stride=%zu NH=%d KVH=%d HS=%d window=%d%s", B,
                     Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo ? " spans" : "");
        free(kv_lo);
        buf_free(p, &q), buf_free(p, &k), buf_free(p, &v), buf_free(p, &out);
    }
}

static void test_elementwise(Pair *p) {
    static const size_t sizes[] = {1, 31, 257, 1000, 4097, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = sizes[s];
        for (int alias = 0; alias < 3; alias++) { /* out separate, = first input, = second */
            Buf a = buf_rand(p, n, -6, 6), b = buf_rand(p, n, -3, 3), out = buf_new(p, NULL, n);
            Buf *o = alias == 0 ? &out : alias == 1 ? &a : &b;
            p->ref->ops->swiglu_fwd(p->ref, o->r, a.r, b.r, n);
            p->cu->ops->swiglu_fwd(p->cu, o->c, a.c, b.c, n);
            expect_close(p, o, 1e-6f, 1e-5f, "swiglu n=%zu alias=%d", n, alias);
            buf_free(p, &a), buf_free(p, &b);

            a = buf_rand(p, n, -6, 6), b = buf_rand(p, n, -3, 3);
            o = alias == 0 ? &out : alias == 1 ? &a : &b;
            p->ref->ops->add_fwd(p->ref, o->r, a.r, b.r, n);
            p->cu->ops->add_fwd(p->cu, o->c, a.c, b.c, n);
            expect_close(p, o, 0.0f, 0.0f, "add n=%zu alias=%d", n, alias); /* exact */
            buf_free(p, &a), buf_free(p, &b);

            for (int approx = 0; approx < 2 && alias < 2; approx++) {
                a = buf_rand(p, n, -6, 6);
                o = alias ? &a : &out;
                p->ref->ops->gelu_fwd(p->ref, o->r, a.r, n, approx);
                p->cu->ops->gelu_fwd(p->cu, o->c, a.c, n, approx);
                expect_close(p, o, 1e-6f, 1e-5f, "gelu n=%zu approx=%d alias=%d", n, approx, alias);
                buf_free(p, &a);
            }
            buf_free(p, &out);
        }
    }
}

static void test_embed(Pair *p) {
    static const int shapes[][3] = {{1, 1, 1}, {50, 33, 17}, {7, 768, 5}, {1000, 64, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int V = shapes[s][0], C = shapes[s][1], T = shapes[s][2];
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
        for (int t = 0; t < T; t++)
            ids[t] = (int32_t)(frand(0, 1) * (float)V) % V;
        Buf table = buf_rand(p, (size_t)V * C, -1, 1), out = buf_new(p, NULL, (size_t)T * C);
        p->ref->ops->embed_fwd(p->ref, out.r, ids, table.r, T, C);
        p->cu->ops->embed_fwd(p->cu, out.c, ids, table.c, T, C);
        expect_close(p, &out, 0.0f, 0.0f, "embed V=%d C=%d T=%d", V, C, T); /* a copy */
        buf_free(p, &table), buf_free(p, &out);
        free(ids);
    }
}

/* device-to-device copy and a partial upload/download round trip */
static void test_memory(Pair *p) {
    const size_t n = 1000;
    Buf a = buf_rand(p, n, -1, 1), b = buf_new(p, NULL, n);
    p->ref->ops->copy(p->ref, b.r, a.r, n * sizeof(float));
    p->cu->ops->copy(p->cu, b.c, a.c, n * sizeof(float));
    expect_close(p, &b, 0.0f, 0.0f, "copy n=%zu", n);
    buf_free(p, &a), buf_free(p, &b);
    p->cu->ops->release(p->cu, NULL); /* NULL-safe */
    CHECK(p->cu->ops->sync(p->cu) == 0, "sync after release(NULL): %s", p->cu->err.msg);
}

int main(void) {
    TunaErr err = {0, ""};
    Pair p = {NULL, NULL};
    p.cu = backend_init("cuda", 1, &err);
    if (!p.cu) {
        const char *why = err.msg; /* drop the backend's own "no CUDA device: " prefix */
        if (strncmp(why, "no CUDA device: ", 16) == 0) why += 16;
        SKIP("no CUDA device here: %s", why);
        return test_report("test_cuda");
    }
    CHECK(strcmp(p.cu->ops->name, "cuda") == 0, "name is \"%s\"", p.cu->ops->name);
    p.ref = backend_init("ref", 1, &err);
    CHECK(p.ref != NULL, "ref backend: %s", err.msg);
    if (p.ref) {
        test_memory(&p);
        test_matmul(&p);
        test_norms(&p);
        test_rope(&p);
        test_attention(&p);
        test_elementwise(&p);
        test_embed(&p);
    }
    backend_free(p.ref);
    backend_free(p.cu);
    return test_report("test_cuda");
}
