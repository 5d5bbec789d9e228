/* test_skinny.c: kernels/cpu/skinny.c (the fp32 products with a side of at most SKINNY_MAX: a LoRA
 * adapter's rank side) against a plain triple loop in double, over each of its three forms
 * (inner, dots, outer: row-major and transposed operands, beta 0 and 1, row strides wider than
 * the rows, sizes that are no multiple of 16), on 1 and 2 threads with the same bits; products it
 * does not take return -1 and leave C as it was; and the cpu backend's LoRA-shaped ops (matmul_fwd,
 * matmul_acc, matmul_bwd with a rank side) against kernels/ref. Tolerance against the double loop:
 * |x - ref| <= 1e-5 + 1e-5 |ref| (fp32 sums of up to 1.6k terms of magnitude <= 1). */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ref/ops_ref.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}
static float *rand_buf(size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

/* C (M,N) = op(A) op(B) + beta C in double, rounded once */
static void naive(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = beta != 0.0f ? (double)C[(size_t)m * ldc + n] : 0.0;
            for (int k = 0; k < K; k++)
                s += (double)(ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]) *
                     (double)(tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]);
            C[(size_t)m * ldc + n] = (float)s;
        }
}

/* one product: skinny on 1 and 2 threads against naive; want: whether skinny should take it */
static void one(int ta, int tb, int M, int N, int K, int pad, float beta, int want) {
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    float *A = rand_buf(na), *B = rand_buf(nb), *C0 = rand_buf(nc),
          *ref = malloc(sizeof(float) * nc), *c1 = malloc(sizeof(float) * nc),
          *c2 = malloc(sizeof(float) * nc);
    memcpy(ref, C0, sizeof(float) * nc);
    memcpy(c1, C0, sizeof(float) * nc);
    memcpy(c2, C0, sizeof(float) * nc);
    naive(ta, tb, M, N, K, A, lda, B, ldb, beta, ref, ldc);
    int r1 = cpu_skinny(1, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, c1, ldc);
    int r2 = cpu_skinny(2, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, c2, ldc);
    CHECK(r1 == (want ? 0 : -1) && r2 == r1, "ta %d tb %d %dx%dx%d: returned %d/%d, want %d", ta,
          tb, M, N, K, r1, r2, want ? 0 : -1);
    if (!want) {
        CHECK(!memcmp(c1, C0, sizeof(float) * nc), "ta %d tb %d %dx%dx%d: C written though refused",
              ta, tb, M, N, K);
    } else {
        double worst = 0;
        int bad = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < ldc; n++) {
                size_t i = (size_t)m * ldc + n;
                if (n >= N) { /* the row's padding is not C's */
                    bad += c1[i] != C0[i];
                    continue;
                }
                double d = fabs((double)c1[i] - (double)ref[i]);
                if (d > worst) worst = d;
                bad += !(d <= 1e-5 + 1e-5 * fabs((double)ref[i]));
            }
        CHECK(!bad, "ta %d tb %d %dx%dx%d pad %d beta %g: %d elements off (worst %.3g)", ta, tb, M,
              N, K, pad, (double)beta, bad, worst);
        CHECK(!memcmp(c1, c2, sizeof(float) * nc), "ta %d tb %d %dx%dx%d: 1 and 2 threads differ",
              ta, tb, M, N, K);
    }
    free(A);
    free(B);
    free(C0);
    free(ref);
    free(c1);
    free(c2);
}

/* skinny.c's loops are AVX-512 (a build without it, as make test-san's -O1 one, declines all) */
#ifdef __AVX512F__
#define TAKES 1
#else
#define TAKES 0
#endif

static void test_forms(void) {
    if (!TAKES) SKIP("skinny.c built without AVX-512: every product declined (checked below)");
    /* inner (K small): out += u·Bᵀ, din += du·A, and transposed op(A) */
    int inner[][3] = {{456, 576, 8}, {37, 100, 3}, {200, 17, 16}, {129, 1536, 1}};
    for (size_t s = 0; s < sizeof inner / sizeof inner[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int beta = 0; beta < 2; beta++)
                    one(ta, tb, inner[s][0], inner[s][1], inner[s][2], s % 2 ? 5 : 0, (float)beta,
                        TAKES);
    /* dots (N small, op(A) by rows): u = h·Aᵀ, du += dout·B */
    int dots[][3] = {{456, 8, 576}, {131, 5, 77}, {300, 16, 1536}, {40, 1, 33}, {19, 9, 16}};
    for (size_t s = 0; s < sizeof dots / sizeof dots[0]; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int beta = 0; beta < 2; beta++)
                one(0, tb, dots[s][0], dots[s][1], dots[s][2], s % 2 ? 3 : 0, (float)beta, TAKES);
    /* outer (op(A) transposed, B by rows): dA += duᵀ·h (M small), dB += doutᵀ·u (N small) */
    int outer[][3] = {{8, 576, 456}, {3, 130, 77}, {16, 33, 200}, {576, 8, 456},
                      {131, 5, 64},  {50, 16, 9},  {9, 1000, 1}};
    for (size_t s = 0; s < sizeof outer / sizeof outer[0]; s++)
        for (int beta = 0; beta < 2; beta++)
            one(1, 0, outer[s][0], outer[s][1], outer[s][2], s % 2 ? 7 : 0, (float)beta, TAKES);
    /* what it refuses: no side small; the outer form with op(B) transposed; beta 0.5 */
    one(0, 0, 40, 40, 40, 0, 1.0f, 0);
    one(1, 1, 8, 300, 200, 0, 1.0f, 0);
    one(0, 1, 300, 8, 100, 0, 0.5f, 0);
}

/* both fp32 (the ref backend's sums too): |error| up to about K·2⁻²⁴·Σ|terms|, here 300 terms of
 * magnitude up to ~10 near a sum of ~0 */
#define ATOL 2e-4f

/* The cpu backend's ops at a LoRA site's shapes (rank 8, 300 rows, 96 -> 200) against ref */
static void test_backend_ops(void) {
    TunaErr err = {0};
    double worst;
    Backend *be = backend_init("cpu", 2, &err);
    if (!be) {
        SKIP("cpu backend: %s", err.msg);
        return;
    }
    int M = 300, K = 96, N = 200, r = 8;
    float *h = rand_buf((size_t)M * K), *A = rand_buf((size_t)r * K), *B = rand_buf((size_t)N * r),
          *out = rand_buf((size_t)M * N), *dout = rand_buf((size_t)M * N);
    float *u = malloc(sizeof(float) * M * r), *ur = malloc(sizeof(float) * M * r),
          *o2 = malloc(sizeof(float) * M * N), *o2r = malloc(sizeof(float) * M * N);
    be->ops->matmul_fwd(be, u, h, A, NULL, M, K, r);
    ref_matmul_fwd(ur, h, A, NULL, M, K, r);
    CHECK(test_close_enough(u, ur, (size_t)M * r, ATOL, 1e-5f, &worst), "matmul_fwd u = h·Aᵀ");
    memcpy(o2, out, sizeof(float) * M * N);
    memcpy(o2r, out, sizeof(float) * M * N);
    be->ops->matmul_acc(be, o2, ur, B, M, r, N);
    float *t = malloc(sizeof(float) * M * N);
    ref_matmul_fwd(t, ur, B, NULL, M, r, N);
    for (size_t i = 0; i < (size_t)M * N; i++)
        o2r[i] += t[i];
    CHECK(test_close_enough(o2, o2r, (size_t)M * N, ATOL, 1e-5f, &worst), "matmul_acc out += u·Bᵀ");
    /* du += dout·B, dB += doutᵀ·u; then din += du·A, dA += duᵀ·h */
    float *du = calloc((size_t)M * r, sizeof(float)), *dur = calloc((size_t)M * r, sizeof(float)),
          *dB = calloc((size_t)N * r, sizeof(float)), *dBr = calloc((size_t)N * r, sizeof(float)),
          *din = calloc((size_t)M * K, sizeof(float)), *dinr = calloc((size_t)M * K, sizeof(float)),
          *dA = calloc((size_t)r * K, sizeof(float)), *dAr = calloc((size_t)r * K, sizeof(float));
    be->ops->matmul_bwd(be, du, dB, NULL, dout, ur, B, M, r, N);
    ref_matmul_bwd(dur, dBr, NULL, dout, ur, B, M, r, N);
    CHECK(test_close_enough(du, dur, (size_t)M * r, ATOL, 1e-5f, &worst), "matmul_bwd du = dout·B");
    CHECK(test_close_enough(dB, dBr, (size_t)N * r, ATOL, 1e-5f, &worst),
          "matmul_bwd dB = doutᵀ·u (worst %g)", worst);
    be->ops->matmul_bwd(be, din, dA, NULL, dur, h, A, M, K, r);
    ref_matmul_bwd(dinr, dAr, NULL, dur, h, A, M, K, r);
    CHECK(test_close_enough(din, dinr, (size_t)M * K, ATOL, 1e-5f, &worst),
          "matmul_bwd din = du·A");
    CHECK(test_close_enough(dA, dAr, (size_t)r * K, ATOL, 1e-5f, &worst), "matmul_bwd dA = duᵀ·h");
    free(h), free(A), free(B), free(out), free(dout), free(u), free(ur), free(o2), free(o2r);
    free(t), free(du), free(dur), free(dB), free(dBr), free(din), free(dinr), free(dA), free(dAr);
    backend_free(be);
}

/* cpu_skinny_bwd (an adapter's B side, din += dout·w and dw += doutᵀ·in in one pass over dout)
 * against the two cpu_skinny products it stands for: the same bits, on 1 and 2 threads; shapes
 * it does not take (K over SKINNY_MAX, M or N of at most 128; every shape without AVX-512)
 * return -1 and write nothing */
static void test_bwd_pair(void) {
    if (!TAKES) SKIP("skinny.c built without AVX-512: cpu_skinny_bwd declines (checked below)");
    static const int shapes[][4] = {/* M, K, N, taken */
                                    {512, 8, 576, 1},  {456, 8, 1536, 1}, {200, 3, 333, 1},
                                    {129, 16, 150, 1}, {300, 12, 129, 1}, {257, 1, 1000, 1},
                                    {512, 17, 576, 0}, {128, 8, 576, 0},  {512, 8, 128, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2], taken = shapes[s][3] && TAKES;
        size_t nd = (size_t)M * K, nw = (size_t)N * K;
        float *dout = rand_buf((size_t)M * N), *in = rand_buf(nd), *w = rand_buf(nw),
              *din0 = rand_buf(nd), *dw0 = rand_buf(nw);
        /* what it must leave: the separate products' sums where it takes the shape, else din0, dw0 */
        float *dinr = malloc(sizeof(float) * nd), *dwr = malloc(sizeof(float) * nw);
        memcpy(dinr, din0, sizeof(float) * nd);
        memcpy(dwr, dw0, sizeof(float) * nw);
        if (taken)
            CHECK(!cpu_skinny(1, 0, 0, M, K, N, 1.0f, dout, N, w, K, 1.0f, dinr, K) &&
                          !cpu_skinny(1, 1, 0, N, K, M, 1.0f, dout, N, in, K, 1.0f, dwr, K),
                  "%dx%dx%d: the separate products declined", M, K, N);
        for (int nth = 1; nth <= 2; nth++) {
            float *din = malloc(sizeof(float) * nd), *dw = malloc(sizeof(float) * nw);
            memcpy(din, din0, sizeof(float) * nd);
            memcpy(dw, dw0, sizeof(float) * nw);
            int rc = cpu_skinny_bwd(nth, M, K, N, dout, in, w, din, dw);
            CHECK(rc == (taken ? 0 : -1), "%dx%dx%d threads %d: returned %d", M, K, N, nth, rc);
            CHECK(!memcmp(din, dinr, sizeof(float) * nd),
                  "%dx%dx%d threads %d: din differs from the dots form's (or written though "
                  "declined)",
                  M, K, N, nth);
            CHECK(!memcmp(dw, dwr, sizeof(float) * nw),
                  "%dx%dx%d threads %d: dw differs from the outer form's (or written though "
                  "declined)",
                  M, K, N, nth);
            free(din), free(dw);
        }
        free(dout), free(in), free(w), free(din0), free(dw0), free(dinr), free(dwr);
    }
}

int main(void) {
    test_forms();
    test_bwd_pair();
    test_backend_ops();
    return test_report("test_skinny");
}
