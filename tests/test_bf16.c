/* test_bf16: the matrix products under Backend.mm_bf16 (both operands rounded to bf16, fp32
 * sums). The ref backend equals, bit for bit, a direct sum in double of the rounded operands'
 * products; the cpu backend's paths (avx512bf16 where the CPU has it, and plain, forced with
 * TUNA_BF16=plain) stay within an fp32 summation bound of it: |cpu - exact| <= (n + 2) 2^-24
 * S, where n is the number of terms and S the sum of their magnitudes (products, bias, the old
 * value of an accumulated gradient). Every path gives the same bits on 1 and on 2 threads.
 * Shapes are odd (1, 7, 33, 130, ...) and cross the kernel's tiles (12 x 32) and K blocks (256).
 * An operand that rounds to a bf16 denormal counts as zero on the fast paths, as the CPU's bf16
 * dot products read it (test_denormals).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/ref/attn_span.h"
#include "kernels/wtype.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t rnext(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) {
    return (float)((double)(rnext() >> 40) / 16777216.0 * 2.0 - 1.0);
}
static float *fill(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}
static float *rnd(size_t n) {
    return fill(malloc((n ? n : 1) * sizeof(float)), n);
}
/* rnd's values in 64-byte aligned memory, as the engine's buffers are (backend alloc): the AMX
 * products stream whole aligned lines of their outputs only */
static float *rnd64(size_t n) {
    return fill(aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) / 64 * 64), n);
}

static float *dup(const float *p, size_t n) {
    float *d = malloc((n ? n : 1) * sizeof *d);
    memcpy(d, p, n * sizeof *d);
    return d;
}
/* whether the product under test rounds its operands (MM_BF16_MIN_SIDE: a matmul_fwd/bwd with
 * K or N at most 16, LoRA's rank side, runs in fp32 under mm_bf16) */
static int rounding = 1;
static double r16(float x) {
    return rounding ? (double)wtype_bf16_to_f32(wtype_f32_to_bf16(x)) : (double)x;
}

/* The exact sums: out (M, N) = init + Σ_k A(m, k) B(k, n) with A(m, k) = a[m * sam + k * sak]
 * and B(k, n) = b[k * sbk + n * sbn], each operand rounded to bf16; the sum in double in k order
 * (the ref's order), and S the sum of the magnitudes. init: a bias (sim 0: one row for every m)
 * or the old value of an accumulated output (sim its row stride), or NULL. */
typedef struct {
    double *val, *mag; /* the exact value and S */
    float *ref;        /* the ref's float: a bias starts its double sum, an old value gets += */
} Exact;
static Exact exact(const float *a, size_t sam, size_t sak, const float *b, size_t sbk, size_t sbn,
                   const float *init, size_t sim, int M, int K, int N) {
    size_t len = (size_t)M * N + 1;
    Exact e = {malloc(sizeof(double) * len), malloc(sizeof(double) * len),
               malloc(sizeof(float) * len)};
    /* the operands rounded once, each row of op(A) and column of op(B) contiguous in k */
    double *ra = malloc(sizeof(double) * ((size_t)M * K + 1)),
           *rb = malloc(sizeof(double) * ((size_t)N * K + 1));
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++)
            ra[(size_t)m * K + k] = r16(a[m * sam + k * sak]);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            rb[(size_t)n * K + k] = r16(b[k * sbk + n * sbn]);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double i0 = init ? (double)init[m * sim + (size_t)n] : 0.0;
            double s = sim ? 0.0 : i0, g = fabs(i0);
            const double *pa = ra + (size_t)m * K, *pb = rb + (size_t)n * K;
            for (int k = 0; k < K; k++) {
                double p = pa[k] * pb[k];
                s += p;
                g += fabs(p);
            }
            size_t i = (size_t)m * N + n;
            e.val[i] = sim ? s + i0 : s;
            e.mag[i] = g;
            e.ref[i] = sim ? init[m * sim + (size_t)n] + (float)s : (float)s;
        }
    free(ra);
    free(rb);
    return e;
}
static void exact_free(Exact e) {
    free(e.val);
    free(e.mag);
    free(e.ref);
}

/* ref (float) of e bit for bit, and cpu within the summation bound; returns the worst error in
 * units of 2^-24 S */
static double check_exact(const char *what, const float *refv, const float *cpuv, Exact e, int n,
                          size_t len) {
    int same = 1;
    double worst = 0, bound = (double)(n + 2);
    for (size_t i = 0; i < len; i++) {
        if (refv && refv[i] != e.ref[i]) same = 0;
        double err = fabs((double)cpuv[i] - e.val[i]) / (e.mag[i] * 0x1p-24 + 1e-300);
        if (!(err <= worst)) worst = err;
    }
    if (refv) CHECK(same, "%s: ref differs from the direct sum of rounded operands", what);
    CHECK(worst <= bound, "%s: cpu off by %.3g x 2^-24 S (bound %g)", what, worst, bound);
    return worst;
}

static int same_bits(const float *a, const float *b, size_t n) {
    return !memcmp(a, b, n * sizeof *a);
}

static const int shapes[][3] = {{1, 1, 1},
                                {1, 7, 33},
                                {7, 33, 130},
                                {33, 130, 7},
                                {130, 7, 33},
                                {13, 257, 33},
                                {25, 513, 65},
                                {130, 300, 200},
                                {64, 576, 96},
                                {400, 520, 390},
                                /* K past 2 x 16 blocks: gemm_x's K slices (forward; din) */
                                {37, 9000, 45},
                                {13, 40, 8300},
                                /* a tall op(A) against few columns: gemm_x's row tasks, over
                                 * several K blocks (the AMX tiles' C between blocks in scratch),
                                 * a last panel of 8 columns and rows past the last whole panel */
                                {2100, 600, 40},
                                /* an output of 8 MiB (written past the caches), and din / dw
                                 * accumulated over 8 and 4 K blocks in row tasks */
                                {1024, 24, 2048},
                                /* forward outputs of 256 KiB and more, whole lines (rows of a
                                 * multiple of 16): streamed too, over 1 and 2 K blocks, the last
                                 * row panel short */
                                {256, 300, 384},
                                {100, 200, 704}};
#define N_SHAPES (int)(sizeof shapes / sizeof shapes[0])

// --- matmul_fwd and matmul_bwd -------------------------------------------------------------------

static void test_dense(Backend *ref, Backend *cpu, const char *path) {
    double worst = 0;
    for (int si = 0; si < N_SHAPES; si++) {
        int M = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
        float *x = rnd(nx), *w = rnd(nw), *bias = rnd((size_t)N), *dout = rnd(no);
        float *din0 = rnd(nx), *dw0 = rnd(nw), *db0 = rnd((size_t)N);
        char what[96];
        rounding = K > MM_BF16_MIN_SIDE && N > MM_BF16_MIN_SIDE;
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            float *o_ref = rnd(no), *o1 = rnd64(no), *o2 = rnd64(no);
            const float *bb = with_bias ? bias : NULL;
            ref->ops->matmul_fwd(ref, o_ref, x, w, bb, M, K, N);
            backend_set_threads(cpu, 1);
            cpu->ops->matmul_fwd(cpu, o1, x, w, bb, M, K, N);
            backend_set_threads(cpu, 2);
            cpu->ops->matmul_fwd(cpu, o2, x, w, bb, M, K, N);
            Exact e = exact(x, (size_t)K, 1, w, 1, (size_t)K, bb, 0, M, K, N);
            snprintf(what, sizeof what, "%s matmul_fwd %dx%dx%d bias %d", path, M, K, N, with_bias);
            worst = fmax(worst, check_exact(what, o_ref, o1, e, K + with_bias, no));
            CHECK(same_bits(o1, o2, no), "%s: 1 and 2 threads differ", what);
            exact_free(e);
            free(o_ref);
            free(o1);
            free(o2);
        }
        /* the backward: din += dout w, dw += doutᵀ x, dbias += Σ dout */
        float *di_ref = dup(din0, nx), *di1 = dup(din0, nx), *di2 = dup(din0, nx);
        float *dw_ref = dup(dw0, nw), *dw1 = dup(dw0, nw), *dw2 = dup(dw0, nw);
        float *db_ref = dup(db0, (size_t)N), *db1 = dup(db0, (size_t)N), *db2 = dup(db0, (size_t)N);
        ref->ops->matmul_bwd(ref, di_ref, dw_ref, db_ref, dout, x, w, M, K, N);
        backend_set_threads(cpu, 1);
        cpu->ops->matmul_bwd(cpu, di1, dw1, db1, dout, x, w, M, K, N);
        backend_set_threads(cpu, 2);
        cpu->ops->matmul_bwd(cpu, di2, dw2, db2, dout, x, w, M, K, N);
        Exact ei = exact(dout, (size_t)N, 1, w, (size_t)K, 1, din0, (size_t)K, M, N, K);
        Exact ew = exact(dout, 1, (size_t)N, x, (size_t)K, 1, dw0, (size_t)K, N, M, K);
        snprintf(what, sizeof what, "%s matmul_bwd din %dx%dx%d", path, M, K, N);
        worst = fmax(worst, check_exact(what, di_ref, di1, ei, N + 1, nx));
        CHECK(same_bits(di1, di2, nx), "%s: 1 and 2 threads differ", what);
        snprintf(what, sizeof what, "%s matmul_bwd dw %dx%dx%d", path, M, K, N);
        worst = fmax(worst, check_exact(what, dw_ref, dw1, ew, M + 1, nw));
        CHECK(same_bits(dw1, dw2, nw), "%s: 1 and 2 threads differ", what);
        double dbe = 0; /* dbias is an fp32 sum of dout, not rounded */
        for (int n = 0; n < N; n++) {
            double s = (double)db0[n], g = fabs(s);
            for (int m = 0; m < M; m++) {
                s += (double)dout[(size_t)m * N + n];
                g += fabs((double)dout[(size_t)m * N + n]);
            }
            dbe = fmax(dbe, fabs((double)db1[n] - s) / (g * 0x1p-24));
        }
        CHECK(dbe <= M + 2, "%s: dbias off by %.3g x 2^-24 S", what, dbe);
        CHECK(same_bits(db1, db2, (size_t)N), "%s: dbias 1 and 2 threads differ", what);
        /* din only and dw only take the same paths */
        float *di3 = dup(din0, nx), *dw3 = dup(dw0, nw);
        cpu->ops->matmul_bwd(cpu, di3, NULL, NULL, dout, x, w, M, K, N);
        cpu->ops->matmul_bwd(cpu, NULL, dw3, NULL, dout, x, w, M, K, N);
        CHECK(same_bits(di1, di3, nx) && same_bits(dw1, dw3, nw), "%s: din or dw alone differs",
              what);
        exact_free(ei);
        exact_free(ew);
        free(di_ref), free(di1), free(di2), free(di3);
        free(dw_ref), free(dw1), free(dw2), free(dw3);
        free(db_ref), free(db1), free(db2);
        free(x), free(w), free(bias), free(dout), free(din0), free(dw0), free(db0);
    }
    printf("%s: dense products, worst error %.3g x 2^-24 S\n", path, worst);
}

// --- matmul_w_fwd and matmul_w_bwd_in ------------------------------------------------------------

static void test_typed(Backend *ref, Backend *cpu, const char *path) {
    rounding = 1; /* a typed weight's products always round */
    /* 8500 rows: the input gradient's K in gemm_x's K slices; the last two only for types of
     * one-element blocks: an odd K, and K blocks whose pair count is not a multiple of 16 (the
     * cpu kernel packs a bf16 weight 16 x 16 words at a time) */
    static const int tshapes[][3] = {{1, 32, 1},    {7, 64, 33},   {33, 288, 130},
                                     {130, 96, 7},  {40, 544, 70}, {390, 64, 400},
                                     {9, 64, 8500}, {17, 301, 45}, {5, 38, 19}};
    static const WType types[] = {WT_BF16, WT_Q8_0, WT_Q4_0, WT_F32};
    double worst = 0;
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (size_t s = 0; s < sizeof tshapes / sizeof tshapes[0]; s++) {
            int M = tshapes[s][0], K = tshapes[s][1], N = tshapes[s][2];
            if (K % wtype_info[types[t]].block) continue;
            size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
            float *src = rnd(nw), *x = rnd(nx), *dout = rnd(no), *bias = rnd((size_t)N);
            float *din0 = rnd(nx), *deq = malloc(nw * sizeof *deq);
            Weight w;
            TunaErr err = {0};
            if (weight_quantize(&w, src, N, K, types[t], 0, &err)) {
                CHECK(0, "weight_quantize %s: %s", wtype_info[types[t]].name, err.msg);
                continue;
            }
            weight_dequantize(&w, deq);
            char what[96];
            snprintf(what, sizeof what, "%s matmul_w_fwd %s %dx%dx%d", path,
                     wtype_info[types[t]].name, M, K, N);
            float *o_ref = rnd(no), *o0 = rnd(no), *o1 = rnd(no), *o2 = rnd(no);
            ref->ops->matmul_w_fwd(ref, o_ref, x, &w, bias, M);
            backend_set_threads(cpu, 1);
            /* without the budget for a packed copy, then with it: a BF16 weight on the fast
             * path is packed by the second product, and the bits are the same */
            cpu_backend_set_pack_mb(cpu, 0);
            cpu->ops->matmul_w_fwd(cpu, o0, x, &w, bias, M);
            CHECK(!w.pack, "%s: packed without a budget", what);
            cpu_backend_set_pack_mb(cpu, CPU_PACK_MB);
            cpu->ops->matmul_w_fwd(cpu, o1, x, &w, bias, M);
            int packs = types[t] == WT_BF16 && strcmp(path, "plain");
            CHECK(!w.pack == !packs, "%s: packed copy %s", what, w.pack ? "made" : "missing");
            CHECK(same_bits(o0, o1, no), "%s: the packed weight changes the bits", what);
            backend_set_threads(cpu, 2);
            cpu->ops->matmul_w_fwd(cpu, o2, x, &w, bias, M);
            Exact e = exact(x, (size_t)K, 1, deq, 1, (size_t)K, bias, 0, M, K, N);
            worst = fmax(worst, check_exact(what, o_ref, o1, e, K + 1, no));
            CHECK(same_bits(o1, o2, no), "%s: 1 and 2 threads differ", what);
            exact_free(e);
            snprintf(what, sizeof what, "%s matmul_w_bwd_in %s %dx%dx%d", path,
                     wtype_info[types[t]].name, M, K, N);
            float *di_ref = dup(din0, nx), *di0 = dup(din0, nx), *di1 = dup(din0, nx),
                  *di2 = dup(din0, nx);
            ref->ops->matmul_w_bwd_in(ref, di_ref, dout, &w, M, 1);
            backend_set_threads(cpu, 1);
            /* the input gradient's packed copy (Weight.pack_t), the same way */
            cpu_backend_set_pack_mb(cpu, 0);
            cpu->ops->matmul_w_bwd_in(cpu, di0, dout, &w, M, 1);
            CHECK(!w.pack_t, "%s: packed without a budget", what);
            cpu_backend_set_pack_mb(cpu, CPU_PACK_MB);
            cpu->ops->matmul_w_bwd_in(cpu, di1, dout, &w, M, 1);
            CHECK(!w.pack_t == !packs, "%s: packed copy %s", what, w.pack_t ? "made" : "missing");
            CHECK(same_bits(di0, di1, nx), "%s: the packed weight changes the bits", what);
            backend_set_threads(cpu, 2);
            cpu->ops->matmul_w_bwd_in(cpu, di2, dout, &w, M, 1);
            Exact ei = exact(dout, (size_t)N, 1, deq, (size_t)K, 1, din0, (size_t)K, M, N, K);
            worst = fmax(worst, check_exact(what, di_ref, di1, ei, N + 1, nx));
            CHECK(same_bits(di1, di2, nx), "%s: 1 and 2 threads differ", what);
            exact_free(ei);
            /* acc 0: din overwritten (its NaNs never read), the same sums from zero */
            float *zero0 = calloc(nx, sizeof(float)), *dz_ref = malloc(nx * sizeof(float)),
                  *dz = malloc(nx * sizeof(float));
            for (size_t i = 0; i < nx; i++)
                dz_ref[i] = dz[i] = NAN;
            ref->ops->matmul_w_bwd_in(ref, dz_ref, dout, &w, M, 0);
            cpu->ops->matmul_w_bwd_in(cpu, dz, dout, &w, M, 0);
            snprintf(what, sizeof what, "%s matmul_w_bwd_in acc 0 %s %dx%dx%d", path,
                     wtype_info[types[t]].name, M, K, N);
            Exact ez = exact(dout, (size_t)N, 1, deq, (size_t)K, 1, zero0, (size_t)K, M, N, K);
            worst = fmax(worst, check_exact(what, dz_ref, dz, ez, N + 1, nx));
            exact_free(ez);
            free(zero0), free(dz_ref), free(dz);
            weight_free(&w);
            free(o_ref), free(o0), free(o1), free(o2), free(di_ref), free(di0), free(di1),
                    free(di2);
            free(src), free(x), free(dout), free(bias), free(din0), free(deq);
        }
    printf("%s: typed products, worst error %.3g x 2^-24 S\n", path, worst);
}

/* matmul_w_fwd_n (n weights over one input: one product on the fast path where all are BF16)
 * against n matmul_w_fwd calls: the same bits, on 1 and 2 threads, with and without packed
 * copies, biases on some, widths that split panels and tasks across weights (a SmolLM2 layer's
 * q, k, v: 576, 192, 192), and a weight of another type or K that sends it the slow way. */
static void test_typed_n(Backend *cpu, const char *path) {
    rounding = 1;
    static const int cases[][6] = {/* M, K, n, and the weights' rows */
                                   {456, 576, 3, 576, 192, 192},
                                   {37, 96, 3, 33, 7, 64},
                                   {130, 288, 2, 1, 400, 0},
                                   {5, 64, 3, 40, 41, 42}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int variant = 0; variant < 3; variant++) { /* all BF16; one Q8_0; budget 0 */
            int M = cases[c][0], K = cases[c][1], n = cases[c][2];
            Weight w[3];
            float *outs[3], *sep[3], *bias[3], *x = rnd((size_t)M * K);
            const Weight *ws[3];
            const float *bs[3];
            size_t no[3];
            TunaErr err = {0};
            for (int i = 0; i < n; i++) {
                int N = cases[c][3 + i];
                float *src = rnd((size_t)N * K);
                WType t = variant == 1 && i == 1 ? WT_Q8_0 : WT_BF16;
                CHECK(!weight_quantize(&w[i], src, N, K, t, 0, &err), "quantize: %s", err.msg);
                free(src);
                no[i] = (size_t)M * N;
                outs[i] = rnd(no[i]), sep[i] = rnd(no[i]);
                bias[i] = i == 1 ? NULL : rnd((size_t)N);
                ws[i] = &w[i], bs[i] = bias[i];
            }
            cpu_backend_set_pack_mb(cpu, variant == 2 ? 0 : CPU_PACK_MB);
            for (int th = 1; th <= 2; th++) {
                backend_set_threads(cpu, th);
                for (int i = 0; i < n; i++)
                    cpu->ops->matmul_w_fwd(cpu, sep[i], x, ws[i], bs[i], M);
                cpu->ops->matmul_w_fwd_n(cpu, n, outs, x, ws, bs, M);
                for (int i = 0; i < n; i++)
                    CHECK(same_bits(outs[i], sep[i], no[i]),
                          "%s matmul_w_fwd_n %dx%d weight %d of %d (variant %d, %d threads): not "
                          "the bits of matmul_w_fwd",
                          path, M, K, i, n, variant, th);
            }
            cpu_backend_set_pack_mb(cpu, CPU_PACK_MB);
            for (int i = 0; i < n; i++) {
                weight_free(&w[i]);
                free(outs[i]), free(sep[i]), free(bias[i]);
            }
            free(x);
        }
}

/* TUNA_BF16 as main chose it: unset (the CPU's own fast path), or avx512bf16 where the CPU's
 * default is plain though it has the vdpbf16ps kernel (an Intel CPU without AMX tiles) */
static const char *kernel_env;

static void kernel_on(void) {
    if (kernel_env)
        setenv("TUNA_BF16", kernel_env, 1);
    else
        unsetenv("TUNA_BF16");
}

/* The two paths sum in different orders but take the same products: close, not equal. */
static void test_paths_agree(Backend *cpu) {
    int M = 130, K = 577, N = 70;
    float *x = rnd((size_t)M * K), *w = rnd((size_t)N * K);
    float *a = malloc(sizeof(float) * (size_t)(M * N)),
          *b = malloc(sizeof(float) * (size_t)(M * N));
    kernel_on();
    cpu->ops->matmul_fwd(cpu, a, x, w, NULL, M, K, N);
    setenv("TUNA_BF16", "plain", 1);
    cpu->ops->matmul_fwd(cpu, b, x, w, NULL, M, K, N);
    kernel_on();
    Exact e = exact(x, (size_t)K, 1, w, 1, (size_t)K, NULL, 0, M, K, N);
    double d = 0;
    for (size_t i = 0; i < (size_t)(M * N); i++)
        d = fmax(d, fabs((double)a[i] - (double)b[i]) / (e.mag[i] * 0x1p-24));
    CHECK(d <= 2.0 * (K + 2), "fast and plain paths differ by %.3g x 2^-24 S", d);
    printf("fast vs plain: largest difference %.3g x 2^-24 S\n", d);
    exact_free(e);
    free(x), free(w), free(a), free(b);
}

/* Operands with fp32 denormals. TDPBF16PS and VDPBF16PS read bf16 denormals as zero (as
 * oneDNN's and so torch's bf16 products on these CPUs do), so on the fast paths an operand that
 * rounds to a bf16 denormal counts as zero, and on the plain path (sgemm on the rounded values) as
 * itself; the rounding is still bf16_round's, an fp32 denormal that rounds up to the least normal
 * included (VCVTNE2PS2BF16, which the packing uses, reads every fp32 denormal as zero: gemm_bf16.c
 * takes the slow rounding for those). "Small" entries: denormals (one in 7 rounding up to a normal)
 * and normals of the two lowest exponents, half each; every product pairs one with a "big" entry
 * (2^126 (1 + j / 8)), so each is a multiple of 2^-10 below 16 and every sum of at most 64 of them
 * is exact in fp32: the cpu backend's bits equal the ref's on the operands as the path reads
 * them. Four runs put the small entries in each operand of each product (x and dout row-major, w
 * row-major for the forward and k-major for din, dout and x k-major for dw). */
static float tiny_or_big(int big) {
    uint32_t r = (uint32_t)(rnext() >> 32);
    uint32_t sign = (r & 1u) << 31, u;
    if (big)
        u = sign | (uint32_t)(126 + 127) << 23 | (r >> 1 & 7u) << 20;
    else
        u = sign | (r >> 1 & 1u ? (1u + (r >> 2 & 1u)) << 23 : 0u) | (r >> 3 & 0x7FFFFFu);
    if (!big && r % 7 == 0) u = sign | 0x007FFFC0u; /* a denormal rounding up to 2^-126 */
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* x as a fast path reads it: zero where it rounds to a bf16 denormal */
static float *daz(const float *x, size_t n, int fast) {
    float *d = dup(x, n);
    for (size_t i = 0; i < n && fast; i++)
        if (!(wtype_f32_to_bf16(x[i]) & 0x7F80u)) d[i] = 0.0f;
    return d;
}

static void test_denormals(Backend *ref, Backend *cpu, const char *path) {
    int fast = strcmp(path, "plain") != 0;
    const int M = 40, K = 64, N = 48;
    size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
    /* which of x, w, dout are small in each run; the products each run checks */
    static const int small[4][3] = {{1, 0, 1}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1}};
    static const int checks[4][3] = {{1, 1, 0}, {1, 1, 0}, {0, 0, 1}, {0, 0, 1}};
    for (int run = 0; run < 4; run++) {
        float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w),
              *dout = malloc(no * sizeof *dout);
        for (size_t i = 0; i < nx; i++)
            x[i] = tiny_or_big(!small[run][0]);
        for (size_t i = 0; i < nw; i++)
            w[i] = tiny_or_big(!small[run][1]);
        for (size_t i = 0; i < no; i++)
            dout[i] = tiny_or_big(!small[run][2]);
        float *o[2], *di[2], *dw[2];
        float *xd = daz(x, nx, fast), *wd = daz(w, nw, fast), *dd = daz(dout, no, fast);
        for (int b = 0; b < 2; b++) {
            Backend *be = b ? cpu : ref;
            o[b] = calloc(no, sizeof(float));
            di[b] = calloc(nx, sizeof(float));
            dw[b] = calloc(nw, sizeof(float));
            be->ops->matmul_fwd(be, o[b], b ? x : xd, b ? w : wd, NULL, M, K, N);
            be->ops->matmul_bwd(be, di[b], dw[b], NULL, b ? dout : dd, b ? x : xd, b ? w : wd, M, K,
                                N);
        }
        free(xd), free(wd), free(dd);
        if (checks[run][0])
            CHECK(same_bits(o[0], o[1], no),
                  "%s: denormal operands (run %d): matmul_fwd differs "
                  "from ref",
                  path, run);
        if (checks[run][1])
            CHECK(same_bits(di[0], di[1], nx),
                  "%s: denormal operands (run %d): din differs "
                  "from ref",
                  path, run);
        if (checks[run][2])
            CHECK(same_bits(dw[0], dw[1], nw),
                  "%s: denormal operands (run %d): dw differs "
                  "from ref",
                  path, run);
        for (int b = 0; b < 2; b++)
            free(o[b]), free(di[b]), free(dw[b]);
        free(x), free(w), free(dout);
    }
}

/* mm_bf16 0 is untouched: the fp32 product differs from the bf16 one */
static void test_flag_off(Backend *cpu) {
    int M = 33, K = 64, N = 20;
    float *x = rnd((size_t)M * K), *w = rnd((size_t)N * K);
    float *a = malloc(sizeof(float) * (size_t)(M * N)),
          *b = malloc(sizeof(float) * (size_t)(M * N));
    cpu->mm_bf16 = 0;
    cpu->ops->matmul_fwd(cpu, a, x, w, NULL, M, K, N);
    cpu->mm_bf16 = 1;
    cpu->ops->matmul_fwd(cpu, b, x, w, NULL, M, K, N);
    CHECK(!same_bits(a, b, (size_t)(M * N)), "mm_bf16 changed nothing");
    /* LoRA's rank side (N = 8 here; K = 8 below) stays fp32 under mm_bf16: the same bits */
    int R = 8;
    cpu->mm_bf16 = 0;
    cpu->ops->matmul_fwd(cpu, a, x, w, NULL, M, K, R);
    cpu->mm_bf16 = 1;
    cpu->ops->matmul_fwd(cpu, b, x, w, NULL, M, K, R);
    CHECK(same_bits(a, b, (size_t)(M * R)), "mm_bf16 rounded a rank-side product (N %d)", R);
    cpu->mm_bf16 = 0;
    cpu->ops->matmul_fwd(cpu, a, x, w, NULL, M, R, N);
    cpu->mm_bf16 = 1;
    cpu->ops->matmul_fwd(cpu, b, x, w, NULL, M, R, N);
    CHECK(same_bits(a, b, (size_t)(M * N)), "mm_bf16 rounded a rank-side product (K %d)", R);
    free(x), free(w), free(a), free(b);
}

/* The guard backend passes mm_bf16 to the cpu backend it wraps. */
static void test_guard(Backend *cpu) {
    TunaErr err = {0};
    Backend *g = backend_init("guard", 1, &err);
    if (!g) {
        SKIP("no guard backend: %s", err.msg);
        return;
    }
    int M = 20, K = 40, N = 24;
    size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
    float *x = rnd(nx), *w = rnd(nw), *a = malloc(no * sizeof *a), *b = malloc(no * sizeof *b);
    float *gx = g->ops->alloc(g, nx * 4), *gw = g->ops->alloc(g, nw * 4),
          *go = g->ops->alloc(g, no * 4);
    g->ops->upload(g, gx, x, nx * 4);
    g->ops->upload(g, gw, w, nw * 4);
    g->mm_bf16 = 1;
    g->ops->matmul_fwd(g, go, gx, gw, NULL, M, K, N);
    g->ops->download(g, a, go, no * 4);
    backend_set_threads(cpu, 1);
    cpu->ops->matmul_fwd(cpu, b, x, w, NULL, M, K, N);
    CHECK(same_bits(a, b, no), "guard with mm_bf16 differs from cpu");
    backend_free(g);
    free(x), free(w), free(a), free(b);
}

// --- attention under mm_bf16 -----------------------------------------------------------------

/* One bf16 ulp at magnitude y (8 significant bits: 2^(floor(log2 y) - 7)). */
static double bf_ulp(double y) {
    int e;
    if (!(y > 0)) return 0x1p-133;
    frexp(y, &e); /* y = m 2^e, m in [0.5, 1) */
    return ldexp(1.0, e - 8);
}

/* How far apart bf16(xc) and bf16(xr) can be when both xc and xr (fp32) lie within d of x: 0
 * when no bf16 rounding boundary lies in [x - d, x + d] (both round to the same value), else
 * 2d + one ulp (a value on a boundary flips to its neighbour). */
static double flip_allow(double x, double d) {
    d = d * 1.01 + 0x1p-140;
    uint16_t lo = wtype_f32_to_bf16((float)(x - d)), hi = wtype_f32_to_bf16((float)(x + d));
    return lo == hi ? 0.0 : 2 * d + bf_ulp(fabs(x) + d);
}

typedef struct {
    int B, Tq, Tk, NH, KVH, HS, win;
    size_t stride;
    const int32_t *kv_lo;
} AShape;

/* The tolerance of the cpu backend's bf16 attention against the ref's, element by element, from
 * first principles. Both take the same bf16 operands and exact products; they differ in (1) fp32
 * sums in the cpu's products (at most (n + 2) 2^-24 of the sum of the terms' magnitudes, n terms,
 * plus an old accumulated value), (2) the cpu's fp32 scores, exp (vexpf, ~1 ulp) and softmax sums
 * against the ref's double, which move P by a relative eps_j bounded below, and (3) where P or
 * dS lies so close to a bf16 rounding boundary that the two round it to neighbouring bf16 values
 * (flip_allow: one bf16 ulp, 2^-8..2^-7 of the value; only those entries get it). A score
 * s_j = scale Σ q k has fp32 error dS_j <= (HS + 1) 2^-24 scale Σ|q k| + 2^-24 |s_j|; then
 * eps_j <= 2 dS_j + 2 max dS + (|s_j - max s| + n + 8) 2^-24 (s - max, exp, the row sum, the
 * division). The gradient: dp_j = do·v_j within E_j = (HS + 1) 2^-24 Σ|do v|; D = Σ p dp within
 * Σ (eps p |dp| + p E) + (n + 1) 2^-24 Σ p|dp|; ds_j = scale p_j (dp_j - D) within scale (eps_j
 * p_j |dp_j - D| + p_j (E_j + dD)) + 4 2^-24 |ds_j|. Everything is computed here in double. */
static void attn_tol(const AShape *a, const float *q, const float *k, const float *v,
                     const float *dout, const float *dq0, const float *dk0, const float *dv0,
                     double *to, double *tq, double *tk, double *tv) {
    int HS = a->HS, grp = a->NH / a->KVH;
    size_t nq = (size_t)a->B * a->Tq * a->NH * HS, nkv = (size_t)a->B * a->stride;
    double scale = (double)(1.0f / sqrtf((float)HS)), u = 0x1p-24;
    double *mo = calloc(nq, sizeof(double)), *mq = calloc(nq, sizeof(double)),
           *mk = calloc(nkv, sizeof(double)), *mv = calloc(nkv, sizeof(double));
    size_t tk_ = (size_t)a->Tk;
    double *s = malloc(tk_ * sizeof(double)), *dS = malloc(tk_ * sizeof(double)),
           *dp = malloc(tk_ * sizeof(double)), *E = malloc(tk_ * sizeof(double)),
           *pr = malloc(tk_ * sizeof(double)), *eps = malloc(tk_ * sizeof(double));
    for (size_t i = 0; i < nq; i++)
        to[i] = tq[i] = 0;
    for (size_t i = 0; i < nkv; i++)
        tk[i] = tv[i] = 0;
    for (int b = 0; b < a->B; b++)
        for (int t = 0; t < a->Tq; t++)
            for (int h = 0; h < a->NH; h++) {
                size_t qo = (((size_t)b * a->Tq + t) * a->NH + h) * HS;
                int p = a->Tk - a->Tq + t;
                int lo = tuna_attn_lo(a->kv_lo, (size_t)b * a->Tq + t, p, a->win), n = p - lo + 1;
                double mx = -INFINITY, dmax = 0, sum = 0;
                for (int j = lo; j <= p; j++) {
                    size_t ko = b * a->stride + ((size_t)j * a->KVH + h / grp) * HS;
                    double x = 0, m = 0, d = 0, md = 0;
                    for (int i = 0; i < HS; i++) {
                        x += r16(q[qo + i]) * r16(k[ko + i]);
                        m += fabs(r16(q[qo + i]) * r16(k[ko + i]));
                        d += r16(dout[qo + i]) * r16(v[ko + i]);
                        md += fabs(r16(dout[qo + i]) * r16(v[ko + i]));
                    }
                    s[j] = x * scale;
                    dS[j] = (HS + 1) * u * m * scale + u * fabs(s[j]);
                    dp[j] = d;
                    E[j] = (HS + 1) * u * md;
                    mx = fmax(mx, s[j]);
                    dmax = fmax(dmax, dS[j]);
                }
                for (int j = lo; j <= p; j++)
                    sum += (pr[j] = exp(s[j] - mx));
                double D = 0, dD = 0, pdp = 0;
                for (int j = lo; j <= p; j++) {
                    pr[j] /= sum;
                    eps[j] = 2 * dS[j] + 2 * dmax + (fabs(s[j] - mx) + n + 8) * u;
                    D += pr[j] * dp[j];
                    dD += eps[j] * pr[j] * fabs(dp[j]) + pr[j] * E[j];
                    pdp += pr[j] * fabs(dp[j]);
                }
                dD += (n + 1) * u * pdp;
                for (int j = lo; j <= p; j++) {
                    size_t ko = b * a->stride + ((size_t)j * a->KVH + h / grp) * HS;
                    double P16 = r16((float)pr[j]);
                    double aP = flip_allow(pr[j], (eps[j] + u) * pr[j]);
                    double ds = scale * pr[j] * (dp[j] - D);
                    double dds = scale * (eps[j] * pr[j] * fabs(dp[j] - D) + pr[j] * (E[j] + dD)) +
                                 4 * u * fabs(ds);
                    double aS = flip_allow(ds, dds), S16 = r16((float)ds);
                    for (int i = 0; i < HS; i++) {
                        double kv = r16(k[ko + i]), vv = r16(v[ko + i]);
                        double qq = r16(q[qo + i]), dd = r16(dout[qo + i]);
                        to[qo + i] += aP * fabs(vv);
                        mo[qo + i] += fabs(P16 * vv);
                        tq[qo + i] += aS * fabs(kv);
                        mq[qo + i] += fabs(S16 * kv);
                        tk[ko + i] += aS * fabs(qq);
                        mk[ko + i] += fabs(S16 * qq);
                        tv[ko + i] += aP * fabs(dd);
                        mv[ko + i] += fabs(P16 * dd);
                    }
                }
            }
    double no = (a->Tk + 2) * u, nkvt = ((double)a->Tq * grp + 2 * grp + 2) * u;
    for (size_t i = 0; i < nq; i++) {
        to[i] += no * mo[i] + 1e-30;
        tq[i] += no * (mq[i] + fabs((double)dq0[i])) + 1e-30;
    }
    for (size_t i = 0; i < nkv; i++) {
        tk[i] += nkvt * (mk[i] + fabs((double)dk0[i])) + 1e-30;
        tv[i] += nkvt * (mv[i] + fabs((double)dv0[i])) + 1e-30;
    }
    free(mo), free(mq), free(mk), free(mv);
    free(s), free(dS), free(dp), free(E), free(pr), free(eps);
}

/* the largest |x - y| / tol over n, and how many exceed 1 */
static double worst_ratio(const float *x, const float *y, const double *tol, size_t n, int *over) {
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)x[i] - (double)y[i]) / tol[i];
        if (r > 1 || r != r) (*over)++;
        if (r > w || r != r) w = r != r ? (double)INFINITY : r;
    }
    return w;
}

/* cpu attention forward and backward under mm_bf16 against the ref's (attn_tol), on random and
 * odd shapes, decode-like (Tq < Tk) ones, GQA, a window, and kv_lo of neat packing blocks and of
 * no block form; bits equal on 1 and 2 threads; and the fp32 forward would not pass (the
 * tolerance is tight enough to see operands that were not rounded). */
static void test_attention(Backend *ref, Backend *cpu, const char *path) {
    static const int sh[][7] = {
            /* B, Tq, Tk, NH, KVH, HS, window */
            {1, 5, 5, 4, 2, 8, 0},     {1, 1, 37, 8, 4, 8, 0},     {2, 7, 7, 6, 6, 16, 0},
            {1, 9, 9, 2, 2, 13, 3},    {2, 40, 40, 6, 2, 16, 0},   {1, 33, 50, 4, 4, 24, 0},
            {2, 64, 64, 9, 3, 64, 17}, {1, 300, 300, 3, 1, 64, 0}, {1, 45, 45, 2, 1, 35, 0}};
    size_t nsh = sizeof sh / sizeof sh[0];
    double worst[4] = {0};
    int fp32_over = 0;
    for (size_t c = 0; c < 3 * nsh; c++) {
        const int *x = sh[c % nsh];
        AShape a = {x[0], x[1], x[2], x[3], x[4], x[5], x[6], (size_t)(x[2] + 3) * x[4] * x[5],
                    NULL};
        int32_t *kv_lo = NULL;
        if (c >= nsh) { /* neat-packing blocks (3.. keys), then kv_lo of no block form */
            kv_lo = malloc(sizeof(int32_t) * (size_t)a.B * a.Tq);
            for (int b = 0; b < a.B; b++)
                for (int t = 0; t < a.Tq; t++) {
                    int p = a.Tk - a.Tq + t, len = 3 + 2 * b + (int)(c % 5) * 7;
                    kv_lo[(size_t)b * a.Tq + t] = c >= 2 * nsh ? p / 2 : p - p % len;
                }
            a.kv_lo = kv_lo;
        }
        size_t nq = (size_t)a.B * a.Tq * a.NH * a.HS, nkv = (size_t)a.B * a.stride;
        float *q = rnd(nq), *k = rnd(nkv), *v = rnd(nkv), *dout = rnd(nq);
        for (size_t i = 0; i < nq; i++) /* scores of a few units: a peaked softmax */
            q[i] *= 3.0f;
        float *dq0 = rnd(nq), *dk0 = rnd(nkv), *dv0 = rnd(nkv);
        float *o[3], *g[3][3]; /* ref, cpu 2 threads, cpu 1 thread */
        for (int r = 0; r < 3; r++) {
            Backend *be = r ? cpu : ref;
            if (r) backend_set_threads(cpu, r == 1 ? 2 : 1);
            o[r] = malloc(nq * sizeof(float));
            g[r][0] = dup(dq0, nq), g[r][1] = dup(dk0, nkv), g[r][2] = dup(dv0, nkv);
            be->ops->attention_fwd(be, o[r], q, k, v, a.B, a.Tq, a.Tk, a.stride, a.NH, a.KVH, a.HS,
                                   a.win, kv_lo);
            be->ops->attention_bwd(be, g[r][0], g[r][1], g[r][2], dout, q, k, v, a.B, a.Tq, a.Tk,
                                   a.stride, a.NH, a.KVH, a.HS, a.win, kv_lo);
        }
        CHECK(!ref->err.code && !cpu->err.code, "attention error: %s %s", ref->err.msg,
              cpu->err.msg);
        double *to = malloc(nq * sizeof(double)), *tq = malloc(nq * sizeof(double)),
               *tk = malloc(nkv * sizeof(double)), *tv = malloc(nkv * sizeof(double));
        attn_tol(&a, q, k, v, dout, dq0, dk0, dv0, to, tq, tk, tv);
        int over = 0;
        double w[4] = {worst_ratio(o[1], o[0], to, nq, &over),
                       worst_ratio(g[1][0], g[0][0], tq, nq, &over),
                       worst_ratio(g[1][1], g[0][1], tk, nkv, &over),
                       worst_ratio(g[1][2], g[0][2], tv, nkv, &over)};
        CHECK(over == 0,
              "%s bf16 attention B=%d Tq=%d Tk=%d NH=%d KVH=%d HS=%d win=%d%s: %d beyond the "
              "bound (out %.3g dq %.3g dk %.3g dv %.3g of it)",
              path, a.B, a.Tq, a.Tk, a.NH, a.KVH, a.HS, a.win,
              c >= 2 * nsh ? " half"
              : kv_lo      ? " blocks"
                           : "",
              over, w[0], w[1], w[2], w[3]);
        for (int i = 0; i < 4; i++)
            worst[i] = fmax(worst[i], w[i]);
        CHECK(same_bits(o[1], o[2], nq) && same_bits(g[1][0], g[2][0], nq) &&
                      same_bits(g[1][1], g[2][1], nkv) && same_bits(g[1][2], g[2][2], nkv),
              "%s bf16 attention (shape %zu): 1 and 2 threads differ", path, c);
        cpu->mm_bf16 = 0; /* the fp32 forward, against the bf16 bound */
        cpu->ops->attention_fwd(cpu, o[2], q, k, v, a.B, a.Tq, a.Tk, a.stride, a.NH, a.KVH, a.HS,
                                a.win, kv_lo);
        cpu->mm_bf16 = 1;
        worst_ratio(o[2], o[0], to, nq, &fp32_over);
        free(to), free(tq), free(tk), free(tv);
        for (int r = 0; r < 3; r++) {
            free(o[r]);
            for (int j = 0; j < 3; j++)
                free(g[r][j]);
        }
        free(q), free(k), free(v), free(dout), free(dq0), free(dk0), free(dv0), free(kv_lo);
    }
    CHECK(fp32_over > 0, "%s: the fp32 attention passes the bf16 bound: the test sees nothing",
          path);
    printf("%s: bf16 attention, worst |cpu - ref| / bound: out %.3g dq %.3g dk %.3g dv %.3g; "
           "fp32 forward beyond it in %d entries\n",
           path, worst[0], worst[1], worst[2], worst[3], fp32_over);
    backend_set_threads(cpu, 2);
}

/* On the AMX tiles C's running sums go from K block to K block through the tiles, a scratch
 * (all of a task's rows, or a few at a time per group of blocks) or C itself: the same fp32
 * values, so the same bits whichever way a product takes. TUNA_AMX_SCRATCH_KB makes the scratch
 * too small for a task's rows. */
static void test_scratch(Backend *cpu) {
    static const int sh[][3] = {{1024, 24, 2048}, {300, 2100, 200}, {2100, 1300, 40}};
    for (int si = 0; si < 3; si++) {
        int M = sh[si][0], K = sh[si][1], N = sh[si][2];
        size_t nx = (size_t)M * K, nw = (size_t)N * K, no = (size_t)M * N;
        float *x = rnd(nx), *w = rnd(nw), *dout = rnd(no), *din0 = rnd(nx), *dw0 = rnd(nw);
        for (int nth = 1; nth <= 2; nth++) {
            float *o[2], *di[2], *dw[2];
            backend_set_threads(cpu, nth);
            for (int v = 0; v < 2; v++) {
                if (v) setenv("TUNA_AMX_SCRATCH_KB", "16", 1);
                o[v] = rnd(no), di[v] = dup(din0, nx), dw[v] = dup(dw0, nw);
                cpu->ops->matmul_fwd(cpu, o[v], x, w, NULL, M, K, N);
                cpu->ops->matmul_bwd(cpu, di[v], dw[v], NULL, dout, x, w, M, K, N);
                unsetenv("TUNA_AMX_SCRATCH_KB");
            }
            CHECK(same_bits(o[0], o[1], no) && same_bits(di[0], di[1], nx) &&
                          same_bits(dw[0], dw[1], nw),
                  "amx %dx%dx%d, %d thread(s): C's sums through a small scratch give other bits", M,
                  K, N, nth);
            for (int v = 0; v < 2; v++)
                free(o[v]), free(di[v]), free(dw[v]);
        }
        free(x), free(w), free(dout), free(din0), free(dw0);
    }
    backend_set_threads(cpu, 2);
}

int main(void) {
    TunaErr err = {0};
    Backend *ref = backend_init("ref", 1, &err), *cpu = backend_init("cpu", 2, &err);
    if (!ref || !cpu) {
        fprintf(stderr, "test_bf16: no backend: %s\n", err.msg);
        return 1;
    }
    ref->mm_bf16 = cpu->mm_bf16 = 1;
    unsetenv("TUNA_BF16");
    const char *fast = cpu_bf16_path();
    if (!strcmp(fast, "plain")) { /* the kernel where the CPU has it but defaults to plain */
        setenv("TUNA_BF16", "avx512bf16", 1);
        fast = cpu_bf16_path();
        kernel_env = strcmp(fast, "plain") ? "avx512bf16" : NULL;
        kernel_on();
    }
    printf("bf16 path here: %s%s\n", fast,
           kernel_env ? " (forced: the CPU's default is plain)" : "");
    if (strcmp(fast, "plain")) {
        kernel_on();
        test_dense(ref, cpu, fast);
        test_typed(ref, cpu, fast);
        test_typed_n(cpu, fast);
        test_paths_agree(cpu);
        test_denormals(ref, cpu, fast);
        test_attention(ref, cpu, fast);
        if (!strcmp(fast, "amx")) test_scratch(cpu);
        if (!strcmp(fast, "amx")) { /* the vdpbf16ps kernel, which an AMX CPU also has */
            setenv("TUNA_BF16", "avx512bf16", 1);
            CHECK(!strcmp(cpu_bf16_path(), "avx512bf16"),
                  "TUNA_BF16=avx512bf16 did not force the vdpbf16ps path");
            test_dense(ref, cpu, "avx512bf16");
            test_denormals(ref, cpu, "avx512bf16");
            test_typed(ref, cpu, "avx512bf16");
            test_typed_n(cpu, "avx512bf16");
            unsetenv("TUNA_BF16");
        }
        kernel_env = NULL;
        kernel_on();
    } else {
        SKIP("no AVX512-BF16 on this CPU: only the plain path is tested");
    }
    setenv("TUNA_BF16", "plain", 1);
    CHECK(!strcmp(cpu_bf16_path(), "plain"), "TUNA_BF16=plain did not force the plain path");
    test_dense(ref, cpu, "plain");
    test_denormals(ref, cpu, "plain");
    test_typed(ref, cpu, "plain");
    test_typed_n(cpu, "plain");
    test_attention(ref, cpu, "plain");
    unsetenv("TUNA_BF16");
    test_flag_off(cpu);
    test_guard(cpu);
    backend_free(ref);
    backend_free(cpu);
    return test_report("test_bf16");
}
