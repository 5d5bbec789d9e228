/* cpu_backend.c: the CPU backend. OpenBLAS sgemm for matrix products with M > 16, OpenMP +
 * SIMD matrix-vector products for decoding (M <= 16), and OpenMP loops elsewhere.
 * Small ops run on one thread: at stories260K's sizes a parallel region costs more than
 * the work. The backward, loss and optimizer ops live in backward.c. Every op has the
 * semantics of its BackendOps slot in kernels/backend.h and is compared against kernels/ref
 * by tests/test_kernels.c (forward) and tests/test_grad_ops.c (the rest). */
#include "cpu_backend.h"

#include <dirent.h>
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../ref/ops_ref.h"
#include "cpu_internal.h"

// --- matrix products

static inline float dot(const float *a, const float *b, int K) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < K; k++)
        s += a[k] * b[k];
    return s;
}

/* One weight row at a time, streamed front to back: measured 3-4x faster than interleaving
 * four rows (the hardware prefetcher follows one stream per row far better; 35 vs 10 GB/s
 * for a 32000x288 matrix on one core here). */
static inline float dot_row(const float *in, const float *w, int K) {
    int k = 0;
#ifdef __AVX512F__
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(in + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(in + k + 16), a1);
    }
    for (; k + 16 <= K; k += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(in + k), a0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(__AVX2__) && defined(__FMA__) /* AVX2 (an AMD Zen 3): stories260K greedy decoding on
                                            * one core 2.5-3.0k -> 5.4-5.7k tok/s */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(in + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(in + k + 8), a1);
    }
    float s = cpu_hsum8(_mm256_add_ps(a0, a1));
#else
    float s = 0;
#endif
    for (; k < K; k++)
        s += w[k] * in[k];
    return s;
}

/* out (M,N) columns [lo,hi) of in (M,K) · w (N,K)ᵀ + bias for a few rows M (decoding: one
 * token, or a batch of sequences): each weight row is read once for all M inputs, and every
 * output is the same dot_row whatever M is, so a sequence decoded in a batch gets the logits
 * it would get alone. */
static void matvecs_rows(float *out, const float *in, const float *w, const float *bias, int M,
                         int K, int N, size_t lo, size_t hi) {
    for (size_t n = lo; n < hi; n++) {
        const float *wr = w + n * K;
        for (int m = 0; m < M; m++)
            out[(size_t)m * N + n] = dot_row(in + (size_t)m * K, wr, K) + (bias ? bias[n] : 0.0f);
    }
}

/* cblas_sgemm with OpenBLAS on nth threads, with bits that do not depend on nth. OpenBLAS
 * blocks the inner dimension K by GEMM_Q and cuts a remainder r between Q and 2Q in two: its
 * one-thread driver (level3.c) at r/2 rounded up to the kernel's unroll U, its threaded one
 * (level3_thread.c) at (r+1)/2. One product with K > Q gave different bits on 1 and on 2 threads
 * (0.3.21, SkylakeX, Q = 448: every K > 448 not near a multiple of 32, measured). The cuts agree
 * when r is a multiple of 2U, and a K of at most Q is one block for both. So the product goes
 * as one call for the multiple of 32 in K and one for the rest (< 32) where Q is a multiple of
 * 32 and U <= 16 (the cores of sgemm_q), and elsewhere in slices of at most 192 (as even as
 * can be), each slice a call that accumulates into C. Each call is a fork and join of
 * OpenBLAS's threads, about 10 us here. */
static int sgemm_q(void) {
    /* sgemm's Q on these x86-64 cores in OpenBLAS's param.h (fixed, not sized from the cache;
     * every one a multiple of 64, with U <= 16); 0 for the others */
    static const struct {
        const char *core;
        int q;
    } qs[] = {{"SkylakeX", 448}, {"Sandybridge", 384}, {"Haswell", 320},
              {"Zen", 320},      {"Cooperlake", 320},  {"SapphireRapids", 320}};
    const char *core = openblas_get_corename();
    for (size_t i = 0; core && i < sizeof qs / sizeof qs[0]; i++)
        if (!strcmp(core, qs[i].core)) return qs[i].q;
    return 0;
}

static void sgemm_call(int ta, int tb, int M, int N, int k0, int kn, float alpha, const float *A,
                       int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    const float *a = ta ? A + (size_t)k0 * lda : A + k0; /* op(A) (M,K) */
    const float *b = tb ? B + k0 : B + (size_t)k0 * ldb; /* op(B) (K,N) */
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                kn, alpha, a, lda, b, ldb, beta, C, ldc);
}

/* cpu_sgemm on OpenBLAS's threads as set: K cut as sgemm_q says */
static void sgemm_k(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    if (K <= 32) {
        sgemm_call(ta, tb, M, N, 0, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (sgemm_q()) {
        int main_k = K - K % 32;
        sgemm_call(ta, tb, M, N, 0, main_k, alpha, A, lda, B, ldb, beta, C, ldc);
        if (main_k < K)
            sgemm_call(ta, tb, M, N, main_k, K - main_k, alpha, A, lda, B, ldb, 1.0f, C, ldc);
        return;
    }
    int ns = (K + 191) / 192, kc = (K + ns - 1) / ns;
    for (int k0 = 0; k0 < K; k0 += kc)
        sgemm_call(ta, tb, M, N, k0, K - k0 < kc ? K - k0 : kc, alpha, A, lda, B, ldb,
                   k0 ? 1.0f : beta, C, ldc);
}

/* Rows of C that OpenBLAS's sgemm kernel computes as one group, on the cores where a row's bits
 * depend on where it falls in a call; 0 where they do not (the AVX-512 cores, as called before).
 * Measured (0.3.21, core "Zen" on an AMD Zen 3, AVX2; "Haswell" runs the same kernels): a call's
 * rows in whole groups of 12 come out the same whatever the call, its last M % 12 rows are
 * summed in another order, and a column's bits change with the call's N (its last columns). So
 * OpenBLAS's own threads, which cut both, gave other bits on 2 threads than on 1 (test_bf16,
 * test_bf16_mirror, test_threads), and a batch of 4 rows other bits in the same rows than two
 * ranks' batches of 2 (test_mpi_zero). There the threads take whole groups of 12 rows, with all
 * of N (sgemm_rows), and a call's last M % 12 rows go through a group of 12 of their own, zeros
 * below them (sgemm_one): each row of C is a whole group's row whatever M and the threads. */
static int sgemm_row_unit(void) {
    const char *core = openblas_get_corename();
    return core && (!strcmp(core, "Zen") || !strcmp(core, "Haswell")) ? 12 : 0;
}

int cpu_sgemm_rows_padded(void) {
    return sgemm_row_unit() != 0;
}

const char *cpu_blas_name(char *buf, size_t n) {
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    const char *was = getenv("TUNA_BLAS_CORE_WAS");
    if (was)
        snprintf(buf, n, "%s (core %s, set by tuna: OpenBLAS took this CPU for a %s)",
                 cfg ? cfg : "OpenBLAS", core ? core : "?", was);
    else
        snprintf(buf, n, "%s (core %s)", cfg ? cfg : "OpenBLAS", core ? core : "?");
    return buf;
}

/* 3: an AVX-512 core of OpenBLAS's, 2: an AVX2 + FMA one, 0: older (or not x86-64's) */
static int blas_core_class(const char *core) {
    static const char *const avx512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    static const char *const avx2[] = {"Haswell", "Zen"};
    for (size_t i = 0; core && i < sizeof avx512 / sizeof avx512[0]; i++)
        if (!strcmp(core, avx512[i])) return 3;
    for (size_t i = 0; core && i < sizeof avx2 / sizeof avx2[0]; i++)
        if (!strcmp(core, avx2[i])) return 2;
    return 0;
}

const char *cpu_blas_core_wanted(const char **picked) {
    const char *core = openblas_get_corename();
    if (picked) *picked = core ? core : "?";
#if defined(__x86_64__)
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
        want = __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = __builtin_cpu_is("amd") ? "Zen" : "Haswell";
    return want && blas_core_class(core) < blas_core_class(want) ? want : NULL;
#else
    return NULL;
#endif
}

void cpu_blas_core_reexec(char **argv) {
    const char *was = NULL;
    const char *want = getenv("OPENBLAS_CORETYPE") ? NULL : cpu_blas_core_wanted(&was);
    if (!want || !argv) return;
    if (setenv("TUNA_BLAS_CORE_WAS", was, 1) || setenv("OPENBLAS_CORETYPE", want, 1)) return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("TUNA_BLAS_CORE_WAS");
}

/* 1 if the S x S product of the first S rows of a and b has the bits of the top-left S x S of
 * the M x M one (K deep, fixed operands), 0 if not or out of memory */
static int probe_shape(int M, int S, int K) {
    float *a = malloc(sizeof(float) * 2 * (size_t)M * K), *c1 = malloc(sizeof(float) * M * M),
          *c2 = malloc(sizeof(float) * S * S);
    int v = 0;
    if (a && c1 && c2) {
        float *b = a + (size_t)M * K;
        for (int i = 0; i < M * K; i++) {
            a[i] = (float)((int64_t)i * 7919 % 1000 - 500) / 317.0f; /* 64 bits: no overflow */
            b[i] = (float)((int64_t)i * 104729 % 1000 - 500) / 413.0f;
        }
        cpu_sgemm(1, 0, 1, M, M, K, 1.0f, a, K, b, K, 0.0f, c1, M);
        cpu_sgemm(1, 0, 1, S, S, K, 1.0f, a, K, b, K, 0.0f, c2, S);
        v = 1;
        for (int i = 0; i < S; i++)
            v &= !memcmp(c2 + (size_t)i * S, c1 + (size_t)i * M, sizeof(float) * S);
    }
    free(a);
    free(c1);
    free(c2);
    return v;
}

int cpu_sgemm_shape_invariant(void) {
    static int ok = -1;
    int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    v = probe_shape(40, 32, 64);
    if (!v && !sgemm_row_unit()) v = probe_shape(150, 120, 256) ? 2 : 0;
    __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
    return v;
}

/* C (M,N) = alpha op(A) op(B) + beta C on this thread: the rows in whole groups of u (u 0: one
 * call), the rest padded to a group. Without memory for the padding the rest is one call of its
 * own: the same sums, in bits that may depend on M. */
static void sgemm_one(int u, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    int whole = u ? M / u * u : M, rest = M - whole;
    if (whole) sgemm_k(ta, tb, whole, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (!rest) return;
    const float *ar = ta ? A + whole : A + (size_t)whole * lda; /* op(A)'s last rows */
    float *cr = C + (size_t)whole * ldc;
    float *a = calloc((size_t)u * K, sizeof(float)), *c = calloc((size_t)u * N, sizeof(float));
    if (!a || !c) {
        free(a);
        free(c);
        sgemm_k(ta, tb, rest, N, K, alpha, ar, lda, B, ldb, beta, cr, ldc);
        return;
    }
    for (int i = 0; i < rest; i++) /* op(A)'s rows, in its own layout (k-major: u apart) */
        if (ta)
            for (int k = 0; k < K; k++)
                a[(size_t)k * u + i] = ar[(size_t)k * lda + i];
        else
            memcpy(a + (size_t)i * K, ar + (size_t)i * lda, sizeof(float) * (size_t)K);
    if (beta != 0.0f)
        for (int i = 0; i < rest; i++)
            memcpy(c + (size_t)i * N, cr + (size_t)i * ldc, sizeof(float) * (size_t)N);
    sgemm_k(ta, tb, u, N, K, alpha, a, ta ? u : K, B, ldb, beta, c, N);
    for (int i = 0; i < rest; i++)
        memcpy(cr + (size_t)i * ldc, c + (size_t)i * N, sizeof(float) * (size_t)N);
    free(a);
    free(c);
}

/* cpu_sgemm on such a core: nth threads take whole groups of u rows (the last one the rest) */
static void sgemm_rows(int nth, int u, int ta, int tb, int M, int N, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc) {
    int groups = M / u, np = groups < nth ? groups : nth;
    if (np < 1) np = 1;
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(np) schedule(static) if (np > 1)
    for (int p = 0; p < np; p++) {
        int m0 = groups * p / np * u, m1 = p + 1 < np ? groups * (p + 1) / np * u : M;
        sgemm_one(u, ta, tb, m1 - m0, N, K, alpha, ta ? A + m0 : A + (size_t)m0 * lda, lda, B, ldb,
                  beta, C + (size_t)m0 * ldc, ldc);
    }
}

/* A product with a side of at most SGEMM_SPLIT_MAX (a LoRA adapter's rank side) and more than
 * SGEMM_BLOCK rows or columns goes to skinny.c's loops (cpu_skinny: 1.2-2x OpenBLAS's calls
 * below on one thread at a SmolLM2 adapter's shapes); what those do not take (alpha other than 1,
 * beta other than 0 or 1, the transposes no LoRA op has) runs as follows: with more than
 * SGEMM_BLOCK rows of C (or columns, when there are more of those): one-thread sgemm calls on
 * SGEMM_PARTS blocks of its rows (columns) of nearly equal size (bounds multiples of 8), spread
 * over the threads. OpenBLAS's own threads cost such products more than they gave (2 threads:
 * 1.34x over one on a SmolLM2 LoRA step's rank side, perf: sched_yield 3.7% of the step; 1.8x
 * this way). The blocks are the same on any thread count, so are the bits (OpenBLAS picks its
 * kernel by the shape of a call: a split by threads changed them). Blocks of at least 128 rows
 * (as before 2026-12-05) cut 456 rows into 128, 128, 128 and 72 and 192 into 128 and 64: one of
 * two threads idle a fifth to a third of those products. */
#define SGEMM_SPLIT_MAX SKINNY_MAX
#define SGEMM_BLOCK     128 /* more rows (columns) than this: split */
#define SGEMM_PARTS     4   /* blocks */
static void sgemm_blocks(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    int rows = M >= N, len = rows ? M : N, nb = SGEMM_PARTS, u = sgemm_row_unit();
    int unit = rows && u ? u : 8; /* the blocks' bounds a multiple of this */
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int b = 0; b < nb; b++) {
        size_t lo = (size_t)len * b / nb / unit * unit;
        int n = (b + 1 < nb ? (int)((size_t)len * (b + 1) / nb / unit * unit) : len) - (int)lo;
        if (n <= 0) continue;
        if (rows)
            sgemm_one(u, ta, tb, n, N, K, alpha, ta ? A + lo : A + lo * (size_t)lda, lda, B, ldb,
                      beta, C + lo * (size_t)ldc, ldc);
        else
            sgemm_one(u, ta, tb, M, n, K, alpha, A, lda, tb ? B + lo * (size_t)ldb : B + lo, ldb,
                      beta, C + lo, ldc);
    }
}

void cpu_sgemm(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if ((M <= SGEMM_SPLIT_MAX || N <= SGEMM_SPLIT_MAX || K <= SGEMM_SPLIT_MAX) &&
        (M > SGEMM_BLOCK || N > SGEMM_BLOCK)) {
        int n = omp_in_parallel() ? 1 : nth;
        if (cpu_skinny(n, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
            sgemm_blocks(n, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int u = sgemm_row_unit();
    if (u) {
        sgemm_rows(nth, u, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    openblas_set_num_threads(nth);
    sgemm_k(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void bias_rows(float *out, const float *bias, int N, size_t lo, size_t hi) {
    for (size_t m = lo; m < hi; m++) {
        float *o = out + m * N;
        for (int n = 0; n < N; n++)
            o[n] += bias[n];
    }
}

static void c_matmul(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N) {
    if (backend_mm_bf16(be, K, N)) {
        cpu_matmul_bf16(be, out, in, w, bias, M, K, N, 0.0f);
        return;
    }
    size_t work = (size_t)M * K * N;
    int nth = work >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
    if (M <= MATVECS_MAX_M) { /* bandwidth-bound: worth two threads from 64 KiB of weights */
        CPU_PAR_RANGE((size_t)K * N >= 16384 ? be->n_threads : 1, (size_t)N,
                      matvecs_rows(out, in, w, bias, M, K, N, lo, hi));
        return;
    }
    cpu_sgemm(nth, 0, 1, M, N, K, 1.0f, in, K, w, K, 0.0f, out, N);
    if (bias) CPU_PAR_RANGE(nth, (size_t)M, bias_rows(out, bias, N, lo, hi));
}

/* The memory ops that write: a tracked weight written here has a stale copy (gemm_bf16.c) */
static void c_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    cpu_mirrors_written(be, dst, bytes);
    host_memcpy(be, dst, src, bytes);
}

/* Memory freed with tracked weights in it (an owner that did not untrack them): their copies
 * go with it, so that a later allocation at the same place never finds one */
static void c_release(Backend *be, void *p) {
    if (p) cpu_mirrors_released(be, p, malloc_usable_size(p));
    host_release(be, p);
}

/* memset by all threads: the backward zeroes about 8 MB a SmolLM2 layer (its gradient buffers),
 * which as a copy from a buffer of zeros on one thread was 2.7% of a LoRA step on two */
static void c_zero(Backend *be, void *dst, size_t bytes) {
    cpu_mirrors_written(be, dst, bytes);
    CPU_PAR_RANGE(bytes >= (size_t)PAR_MIN_WORK * 16 ? be->n_threads : 1, bytes,
                  memset((char *)dst + lo, 0, hi - lo));
}

/* out += in · wᵀ: the product with beta 1 (the same sums as matmul_fwd's, then one add) */
static void c_matmul_acc(Backend *be, float *out, const float *in, const float *w, int M, int K,
                         int N) {
    if (M <= 0 || N <= 0) return;
    if (backend_mm_bf16(be, K, N)) {
        cpu_matmul_bf16(be, out, in, w, NULL, M, K, N, 1.0f);
        return;
    }
    size_t work = (size_t)M * K * N;
    cpu_sgemm(work >= PAR_MIN_WORK * 4 ? be->n_threads : 1, 0, 1, M, N, K, 1.0f, in, K, w, K, 1.0f,
              out, N);
}

// --- normalization

static void rmsnorm_rows(float *out, const float *in, const float *w, float eps, int C, size_t lo,
                         size_t hi) {
    for (size_t r = lo; r < hi; r++) {
        const float *x = in + r * C;
        float *y = out + r * C;
        float ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++)
            ss += x[c] * x[c];
        float inv = 1.0f / sqrtf(ss / (float)C + eps);
        for (int c = 0; c < C; c++)
            y[c] = x[c] * inv * w[c];
    }
}

static void c_rmsnorm(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                      int C) {
    int nth = (size_t)R * C >= PAR_MIN_WORK ? be->n_threads : 1;
    CPU_PAR_RANGE(nth, (size_t)R, rmsnorm_rows(out, in, w, eps, C, lo, hi));
}

static void layernorm_rows(float *out, const float *in, const float *w, const float *b, float eps,
                           int C, size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++) {
        const float *x = in + r * C;
        float *y = out + r * C;
        float mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
        for (int c = 0; c < C; c++)
            mean += x[c];
        mean /= (float)C;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++)
            var += (x[c] - mean) * (x[c] - mean);
        var /= (float)C;
        float inv = 1.0f / sqrtf(var + eps);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - mean) * inv * w[c] + b[c];
    }
}

static void c_layernorm(Backend *be, float *out, const float *in, const float *w, const float *b,
                        float eps, int R, int C) {
    int nth = (size_t)R * C >= PAR_MIN_WORK ? be->n_threads : 1;
    CPU_PAR_RANGE(nth, (size_t)R, layernorm_rows(out, in, w, b, eps, C, lo, hi));
}

// --- rotary embedding and attention

static void c_rope(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim) {
    cpu_rope_rotate(be, x, pos, inv_freq, T, NH, HS, rot_dim, 1.0f);
}

/* Head-sized vector kernels over a KV cache row of fp32, or (T, a constant at each call: the
 * --cache-type cache) of f16 or Q8_0 blocks dequantized as they are loaded, exactly as
 * wtype_info's dequant_row makes them. Heads are short (8 to 256): AVX-512 with a masked tail, so
 * a head of 8 is one masked load instead of a scalar loop (measured 40% of decode time on
 * stories260K, head_dim 8, before this). Q8_0 rows are whole blocks (kv_type_ok), so its loads
 * start at 0 or 16 of a block of 32 (8 and 24 too on AVX2). */
enum { KV_F32, KV_F16, KV_Q8 };

/* bytes before element i of a row (a block boundary for Q8_0) */
__attribute__((always_inline)) static inline size_t kv_off(size_t i, int T) {
    return T == KV_F32 ? 4 * i : T == KV_F16 ? 2 * i : i / 32 * 34;
}
__attribute__((always_inline)) static inline const void *kv_row(const void *p, size_t i, int T) {
    return (const char *)p + kv_off(i, T);
}
/* the f16 scale of the Q8_0 block holding element i */
__attribute__((always_inline)) static inline float kv_q8_scale(const void *p, size_t i) {
    const uint8_t *b = (const uint8_t *)p + i / 32 * 34;
#ifdef __F16C__
    return _cvtsh_ss((unsigned short)(b[0] | b[1] << 8)); /* exact, as wtype_f16_to_f32 */
#else
    return wtype_f16_to_f32((uint16_t)(b[0] | b[1] << 8));
#endif
}
/* the int8 code of element i of a Q8_0 row (after its block's 2-byte scale) */
__attribute__((always_inline)) static inline const int8_t *kv_q8_code(const void *p, size_t i) {
    return (const int8_t *)p + i / 32 * 34 + 2 + i % 32;
}
__attribute__((always_inline)) static inline float kv_at(const void *p, size_t i, int T) {
    if (T == KV_Q8) return (float)*kv_q8_code(p, i) * kv_q8_scale(p, i);
    return T == KV_F16 ? wtype_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

#ifdef __AVX512F__
/* elements i .. i+15 of a row as floats, lanes past n (from i) zero */
__attribute__((always_inline)) static inline __m512 kv_load16(const void *p, size_t i, int n,
                                                              int T) {
    if (T == KV_F32)
        return n >= 16 ? _mm512_loadu_ps((const float *)p + i)
                       : _mm512_maskz_loadu_ps(cpu_lanes16(n), (const float *)p + i);
    if (T == KV_Q8) { /* n >= 16: whole blocks */
        const int8_t *q = kv_q8_code(p, i);
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
        return _mm512_mul_ps(x, _mm512_set1_ps(kv_q8_scale(p, i)));
    }
    if (n >= 16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
    uint16_t t[16] = {0};
    memcpy(t, (const uint16_t *)p + i, sizeof(uint16_t) * (size_t)(n > 0 ? n : 0));
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)t));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
/* elements i .. i+7 of a row as floats */
__attribute__((always_inline)) static inline __m256 kv_load8(const void *p, size_t i, int T) {
    if (T == KV_Q8) {
        const int8_t *q = kv_q8_code(p, i);
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
        return _mm256_mul_ps(x, _mm256_set1_ps(kv_q8_scale(p, i)));
    }
    if (T == KV_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}
#define KV_AVX2 1
#endif

__attribute__((always_inline)) static inline float head_dot(const float *a, const void *b, int n,
                                                            int T) {
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), kv_load16(b, (size_t)i, 16, T), acc);
    if (i < n)
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(cpu_lanes16(n - i), a + i),
                              kv_load16(b, (size_t)i, n - i, T), acc);
    return _mm512_reduce_add_ps(acc);
#elif defined(KV_AVX2) /* AVX2: the decode's attention (SmolLM2, 2 threads, 128 tokens: 13% of a
                        * token in the scalar loops) */
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), kv_load8(b, (size_t)i, T), acc);
    float s = cpu_hsum8(acc);
    for (; i < n; i++)
        s += a[i] * kv_at(b, (size_t)i, T);
    return s;
#else
    float s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * kv_at(b, (size_t)i, T);
    return s;
#endif
}

/* out (HS) = sum_j p[j] * v[j*rs .. +HS] */
__attribute__((always_inline)) static inline void
head_weighted_sum(float *out, const float *p, const void *v, size_t rs, int n, int HS, int T) {
#ifdef __AVX512F__
    for (int i = 0; i < HS; i += 16) {
        __mmask16 m = cpu_lanes16(HS - i);
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < n; j++)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), kv_load16(v, j * rs + i, HS - i, T), acc);
        _mm512_mask_storeu_ps(out + i, m, acc);
    }
#elif defined(KV_AVX2)
    int i = 0;
    for (; i + 8 <= HS; i += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < n; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), kv_load8(v, j * rs + i, T), acc);
        _mm256_storeu_ps(out + i, acc);
    }
    for (; i < HS; i++) {
        float a = 0;
        for (int j = 0; j < n; j++)
            a += p[j] * kv_at(v, j * rs + i, T);
        out[i] = a;
    }
#else
    for (int i = 0; i < HS; i++)
        out[i] = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < HS; i++)
            out[i] += p[j] * kv_at(v, j * rs + i, T);
#endif
}

#define WSUM_PF 8 /* K and V rows fetched ahead (a row of a kv head: HS floats, every rs) */
/* a row's cache lines fetched ahead (HS elements) */
__attribute__((always_inline)) static inline void kv_prefetch(const void *row, int HS, int T) {
    for (size_t o = 0, end = kv_off((size_t)HS, T); o < end; o += 64)
        __builtin_prefetch((const char *)row + o, 0, 3);
}

#ifdef __AVX512F__
/* heads_weighted_sum for NH heads of NC full 16-float chunks (HS = 16 NC), constants after
 * inlining: NH x NC accumulators in registers, each V row read once for all the heads, the
 * next rows prefetched; every output element is still one fma chain over j in order, the bits
 * of head_weighted_sum. */
__attribute__((always_inline)) static inline void
wsum_tile(float *out, const float *p, const void *v, size_t rs, int n, int NH, int NC, int T) {
    __m512 acc[4][8];
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            acc[h][c] = _mm512_setzero_ps();
    for (int j = 0; j < n; j++) {
        const void *vr = kv_row(v, (size_t)j * rs, T);
        if (j + WSUM_PF < n) kv_prefetch(kv_row(vr, WSUM_PF * rs, T), 16 * NC, T);
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            __m512 x = kv_load16(vr, (size_t)(16 * c), 16, T);
#pragma GCC unroll 4
            for (int h = 0; h < NH; h++)
                acc[h][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[(size_t)h * n + j]), x, acc[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            _mm512_storeu_ps(out + (size_t)h * 16 * NC + 16 * c, acc[h][c]);
}
#endif

/* out rows h (HS apart) = sum_j p[h*n + j] * v[j*rs .. +HS] for nh heads over the same rows:
 * head_weighted_sum's values, bit for bit; head sizes 64 and 128 with the rows read once
 * for up to 4 (64) or 2 (128) heads, in order (SmolLM2 decoding at 1.5k tokens: 28% of the
 * attention's samples were one head at a time, one chunk per pass, a chain each) */
__attribute__((always_inline)) static inline void heads_weighted_sum(float *out, const float *p,
                                                                     const void *v, size_t rs,
                                                                     int n, int HS, int nh, int T) {
#ifdef __AVX512F__
    if (HS == 64 || HS == 128) {
        int tile = HS == 64 ? 4 : 2;
        for (int h = 0; h < nh; h += tile) {
            int m = nh - h < tile ? nh - h : tile;
            float *o = out + (size_t)h * HS;
            const float *ph = p + (size_t)h * n;
            if (HS == 64) {
                if (m == 4)
                    wsum_tile(o, ph, v, rs, n, 4, 4, T);
                else if (m == 3)
                    wsum_tile(o, ph, v, rs, n, 3, 4, T);
                else if (m == 2)
                    wsum_tile(o, ph, v, rs, n, 2, 4, T);
                else
                    wsum_tile(o, ph, v, rs, n, 1, 4, T);
            } else {
                if (m == 2)
                    wsum_tile(o, ph, v, rs, n, 2, 8, T);
                else
                    wsum_tile(o, ph, v, rs, n, 1, 8, T);
            }
        }
        return;
    }
#elif defined(KV_AVX2)
    if (HS % 64 == 0) { /* a head at a time, 64 floats (8 accumulators) a pass */
        for (int h = 0; h < nh; h++)
            for (int c0 = 0; c0 < HS; c0 += 64) {
                const float *ph = p + (size_t)h * n;
                const void *vc = kv_row(v, (size_t)c0, T);
                __m256 acc[8];
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++)
                    acc[c] = _mm256_setzero_ps();
                for (int j = 0; j < n; j++) {
                    const void *vr = kv_row(vc, (size_t)j * rs, T);
                    if (j + WSUM_PF < n) kv_prefetch(kv_row(vr, WSUM_PF * rs, T), 64, T);
                    __m256 pj = _mm256_set1_ps(ph[j]);
#pragma GCC unroll 8
                    for (int c = 0; c < 8; c++)
                        acc[c] = _mm256_fmadd_ps(pj, kv_load8(vr, (size_t)(8 * c), T), acc[c]);
                }
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++)
                    _mm256_storeu_ps(out + (size_t)h * HS + c0 + 8 * c, acc[c]);
            }
        return;
    }
#endif
    for (int h = 0; h < nh; h++)
        head_weighted_sum(out + (size_t)h * HS, p + (size_t)h * n, v, rs, n, HS, T);
}

/* Items [lo,hi) of (batch row, query, kv head, part): the query heads that share a kv head
 * (`grp` of them, in `parts` parts of about grp / parts) are scored together, so each key and
 * value row is loaded once for all of them. Scores go to a scratch row, then softmax, then the
 * weighted sum of values; each head's sums are its own, so the parts change no bit. k and v in
 * fp32, or with T in halves. */
__attribute__((always_inline)) static inline void
attention_items(float *out, const float *q, const void *k, const void *v, int Tq, int Tk,
                size_t kv_stride, int NH, int KVH, int HS, int window, const int32_t *kv_lo,
                int parts, size_t lo, size_t hi, TunaErr *err, int T) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, per = (grp + parts - 1) / parts;
    size_t rs = (size_t)KVH * HS;
    /* decode scores fit on the stack (malloc + free per call was ~4% of a stories260K token) */
    float stack_sc[8192];
    size_t need = (size_t)grp * (size_t)(Tk > 0 ? Tk : 1);
    float *sc = need <= 8192 ? stack_sc : malloc(sizeof(float) * need);
    if (!sc) {
#pragma omp critical
        tuna_errf(err, TUNA_ENOMEM, "attention: out of memory for %zu scores", need);
        return;
    }
    for (size_t it = lo; it < hi; it++) {
        size_t idx = it / (size_t)parts;
        int part = (int)(it % (size_t)parts), h0 = part * per;
        int nh = grp - h0 < per ? grp - h0 : per; /* this item's heads: h0 .. h0 + nh - 1 */
        if (nh <= 0) continue;
        int g = (int)(idx % KVH), t = (int)(idx / KVH % Tq), b = (int)(idx / ((size_t)KVH * Tq));
        size_t qrow = ((size_t)b * Tq + t) * NH + (size_t)g * grp + (size_t)h0; /* first head */
        const float *qv = q + qrow * HS;
        float *o = out + qrow * HS;
        int p = Tk - Tq + t;
        int lo_k = tuna_attn_lo(kv_lo, (size_t)b * Tq + t, p, window);
        int n = p - lo_k + 1;
        size_t first = b * kv_stride + (size_t)g * HS + (size_t)lo_k * rs;
        const void *kb = kv_row(k, first, T), *vb = kv_row(v, first, T);
        for (int j = 0; j < n; j++) {
            const void *kr = kv_row(kb, (size_t)j * rs, T);
            if (j + WSUM_PF < n) /* the rows' first touch: the scores waited on the loads */
                kv_prefetch(kv_row(kr, WSUM_PF * rs, T), HS, T);
            for (int h = 0; h < nh; h++)
                sc[(size_t)h * n + j] = head_dot(qv + (size_t)h * HS, kr, HS, T) * scale;
        }
        for (int h = 0; h < nh; h++) /* softmax (vexpf, about 1 ulp) */
            cpu_softmax_row(sc + (size_t)h * n, n, 1.0f);
        /* out = probs · V, accumulated in registers across keys: a masked store and reload
         * of `o` per key stalls store forwarding */
        heads_weighted_sum(o, sc, vb, rs, n, HS, nh, T);
    }
    if (sc != stack_sc) free(sc);
}

/* attention_items for the cache type T (known here only at run time): one call of the inlined
 * kernels per type, each with its T a constant */
static void attention_items_t(int T, float *out, const float *q, const void *k, const void *v,
                              int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                              const int32_t *kv_lo, int parts, size_t lo, size_t hi, TunaErr *err) {
    if (T == KV_F16)
        attention_items(out, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, parts, lo, hi,
                        err, KV_F16);
    else if (T == KV_Q8)
        attention_items(out, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, parts, lo, hi,
                        err, KV_Q8);
    else
        attention_items(out, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, parts, lo, hi,
                        err, KV_F32);
}

/* A decode-sized attention over a cache of type T: attention_items' items (x parts) on the
 * threads */
static void attention_decode(Backend *be, int T, float *out, const float *q, const void *k,
                             const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                             int KVH, int HS, int window, const int32_t *kv_lo) {
    /* a quarter of the usual threshold: each score also costs a reduction and an exp
     * (stories260K decode, 2 threads: +12% at 256 tokens, +26% at 512) */
    size_t work = (size_t)B * Tq * NH * (size_t)Tk * HS, items = (size_t)B * Tq * KVH;
    int nth = work >= PAR_MIN_WORK / 4 ? be->n_threads : 1;
    /* few items that the threads do not share evenly (decoding SmolLM2: 3 kv heads on 2
     * threads, one thread did 2 of them): each kv head's query heads in nth parts */
    int grp = NH / KVH;
    int parts =
            nth > 1 && items < 4 * (size_t)nth && items % (size_t)nth ? (grp < nth ? grp : nth) : 1;
    CPU_PAR_RANGE(nth, items * (size_t)parts,
                  attention_items_t(T, out, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo,
                                    parts, lo, hi, &be->err));
}

static void c_attention(Backend *be, float *out, const float *q, const float *k, const float *v,
                        int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                        int window, const int32_t *kv_lo) {
    /* training and long prefills as matrix products; under mm_bf16 every shape (bf16 products) */
    if (Tq >= ATTN_GEMM_MIN_TQ || be->mm_bf16) {
        if (cpu_attention_gemm_fwd(be, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                                   kv_lo))
            tuna_errf(&be->err, TUNA_ENOMEM, "attention: out of memory for %d x %d scores", Tq, Tk);
        return;
    }
    attention_decode(be, KV_F32, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo);
}

// --- the typed KV cache (--cache-type)

/* dst = src in t's blocks (quant_row's bits; f16 by VCVTPS2PH, the same bits), and the range
 * check (backend_kv_range) where a value may be past t's range */
static void c_kv_store(Backend *be, WType t, void *dst, const float *src, size_t n) {
    if (t != WT_F16) {
        if (n) wtype_info[t].quant_row(src, dst, (int64_t)n, NULL);
        if (t != WT_F32) backend_kv_range(be, t, src, n);
        return;
    }
    uint16_t *h = dst;
    size_t i = 0;
    int big = 0;
#ifdef __AVX512F__
    const __m512 lim = _mm512_set1_ps(65520.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(src + i);
        big |= _mm512_cmp_ps_mask(_mm512_abs_ps(x), lim, _CMP_GE_OQ) != 0;
        _mm256_storeu_si256((__m256i *)(h + i), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#elif defined(KV_AVX2)
    const __m256 lim = _mm256_set1_ps(65520.0f), sgn = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        big |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sgn, x), lim, _CMP_GE_OQ)) != 0;
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    }
#endif
    for (; i < n; i++) {
        h[i] = wtype_f32_to_f16(src[i]);
        big |= fabsf(src[i]) >= 65520.0f;
    }
    if (big) backend_kv_range(be, t, src, n);
}

/* dst (n) = n elements of a typed cache dequantized, 16 (8) at a time with the decode kernels'
 * loads (dequant_row's values; n whole blocks) */
static void kv_widen(float *dst, const void *src, size_t n, WType t) {
    int T = t == WT_F16 ? KV_F16 : KV_Q8;
    size_t i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, kv_load16(src, i, 16, T));
#elif defined(KV_AVX2)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, kv_load8(src, i, T));
#endif
    for (; i < n; i++)
        dst[i] = kv_at(src, i, T);
}

/* Decoding reads the cache's blocks as it goes (f16: half the bytes of an fp32 cache; after 1.5k
 * tokens SmolLM2's cache is as many bytes a token as its Q4_1 weights); prefills and bf16
 * products dequantize the rows into fp32 and take c_attention's matrix products. */
static void c_attention_kv(Backend *be, WType t, float *out, const float *q, const void *k,
                           const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH,
                           int HS, int window, const int32_t *kv_lo) {
    if (t == WT_F32) {
        c_attention(be, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo);
        return;
    }
    if (Tq >= ATTN_GEMM_MIN_TQ || be->mm_bf16) {
        backend_attention_kv_widened(be, t, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                                     kv_lo, kv_widen);
        return;
    }
    attention_decode(be, t == WT_F16 ? KV_F16 : KV_Q8, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH,
                     HS, window, kv_lo);
}

// --- elementwise

static void swiglu_range(float *out, const float *gate, const float *up, size_t lo, size_t hi) {
#pragma omp simd
    for (size_t i = lo; i < hi; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + vexpf(-g)) * up[i];
    }
}

static void c_swiglu(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    CPU_PAR_RANGE(n >= PAR_MIN_WORK ? be->n_threads : 1, n, swiglu_range(out, gate, up, lo, hi));
}

static void gelu_range(float *out, const float *in, int approx, size_t lo, size_t hi) {
    if (approx) { /* gelu_th, 16 lanes at a time where AVX-512 is (the backward's too) */
        size_t i = lo;
#ifdef __AVX512F__
        const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
        for (; i + 16 <= hi; i += 16) {
            if (!(i & 63) && i + GELU_PF < hi)
                _mm_prefetch((const char *)(in + i + GELU_PF), _MM_HINT_T0);
            __m512 x = _mm512_loadu_ps(in + i);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(half, x),
                                                    _mm512_add_ps(one, gelu_th16(x))));
        }
#endif
#pragma omp simd /* the rest; all of it without AVX-512 */
        for (size_t j = i; j < hi; j++)
            out[j] = 0.5f * in[j] * (1.0f + gelu_th(in[j]));
    } else {
        for (size_t i = lo; i < hi; i++)
            out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * 0.70710678f));
    }
}

static void c_gelu(Backend *be, float *out, const float *in, size_t n, int approx) {
    CPU_PAR_RANGE(n >= PAR_MIN_WORK ? be->n_threads : 1, n, gelu_range(out, in, approx, lo, hi));
}

static void add_range(float *out, const float *a, const float *b, size_t lo, size_t hi) {
#pragma omp simd
    for (size_t i = lo; i < hi; i++)
        out[i] = a[i] + b[i];
}

/* The residual adds (two a layer in the forward): on one thread they kept the other idle about
 * 0.6% of a SmolLM2 LoRA step */
static void c_add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    CPU_PAR_RANGE(n >= PAR_MIN_WORK ? be->n_threads : 1, n, add_range(out, a, b, lo, hi));
}

static void c_embed(Backend *be, float *out, const int32_t *ids, const float *table, int T, int C) {
    (void)be;
    ref_embed_fwd(out, ids, table, T, C);
}

/* Rows are independent and each is weight_dequantize_rows's exactly: bit-identical to ref. */
static void c_embed_w(Backend *be, float *out, const int32_t *ids, const Weight *table, int T) {
    (void)be;
#pragma omp parallel for schedule(static) if (T > 16)
    for (int t = 0; t < T; t++)
        weight_dequantize_rows(table, ids[t], 1, out + (size_t)t * table->cols);
}

static void c_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                            size_t kv_stride, int NH, int KVH, int HS, int window,
                            const int32_t *kv_lo) {
    if (Tq < ATTN_GEMM_MIN_TQ && !be->mm_bf16) {
        cpu_attention_bwd(be, dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                          kv_lo);
        return;
    }
    if (cpu_attention_gemm_bwd(be, dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS,
                               window, kv_lo))
        tuna_errf(&be->err, TUNA_ENOMEM, "attention_bwd: out of memory for %d x %d scores", Tq, Tk);
}

static void c_set_threads(Backend *be, int n_threads);

static void c_shutdown(Backend *be) {
    cpu_mirrors_free(be); /* be->ctx is inside be's own allocation: backend_free frees it */
}

static const BackendOps cpu_ops = {
        .name = "cpu",
        .host_memory = 1,
        .alloc = host_alloc,
        .release = c_release,
        .upload = c_upload,
        .download = host_memcpy,
        .copy = c_upload,
        .zero = c_zero,
        .sync = host_sync,
        .matmul_fwd = c_matmul,
        .matmul_acc = c_matmul_acc,
        .rmsnorm_fwd = c_rmsnorm,
        .layernorm_fwd = c_layernorm,
        .rope_fwd = c_rope,
        .attention_fwd = c_attention,
        .kv_store = c_kv_store,
        .attention_fwd_kv = c_attention_kv,
        .swiglu_fwd = c_swiglu,
        .gelu_fwd = c_gelu,
        .add_fwd = c_add,
        .embed_fwd = c_embed,
        .matmul_bwd = cpu_matmul_bwd,
        .matmul_w_fwd = cpu_matmul_w_fwd,
        .matmul_w_fwd_n = cpu_matmul_w_fwd_n,
        .embed_w_fwd = c_embed_w,
        .matmul_w_bwd_in = cpu_matmul_w_bwd_in,
        .rmsnorm_bwd = cpu_rmsnorm_bwd,
        .layernorm_bwd = cpu_layernorm_bwd,
        .rope_bwd = cpu_rope_bwd,
        .attention_bwd = c_attention_bwd,
        .swiglu_bwd = cpu_swiglu_bwd,
        .gelu_bwd = cpu_gelu_bwd,
        .embed_bwd = cpu_embed_bwd,
        .xent_fwd_bwd = cpu_xent_fwd_bwd,
        .logit_stats = cpu_logit_stats,
        .sumsq = cpu_sumsq,
        .scale = cpu_scale,
        .col_scale = cpu_col_scale,
        .col_dot = cpu_col_dot,
        .dropout = cpu_dropout,
        .noise_add = cpu_noise_add,
        .adamw = cpu_adamw,
        .set_threads = c_set_threads,
        .matmul_bwd_dw = cpu_matmul_bwd_dw,
        .weight_track = cpu_weight_track,
        .weights_written = cpu_weights_written,
        .shutdown = c_shutdown,
};

/* This process's threads that are running or runnable now (state R in /proc/self/task/N/stat):
 * the reading thread, and OpenMP workers still spinning after a parallel region. 1 when it
 * cannot be read. */
int cpu_own_running(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return 1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *rp = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
        if (rp && rp[1] == ' ' && rp[2] == 'R') n++;
    }
    closedir(d);
    return n ? n : 1;
}

/* Of n cores, those that other processes are not running on: procs_running in /proc/stat
 * counts the runnable threads of the machine, ours included, so ours (own_running) are taken
 * off; the median of three reads 250 us apart (a training run's OpenMP threads stay runnable
 * between its regions, so they show in every read; five reads 1 ms apart doubled `tuna
 * generate`'s start-up). n when /proc/stat cannot be read. */
static int idle_cores(int n) {
    int v[3], k = 0;
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen("/proc/stat", "r");
        if (!f) break;
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "procs_running %d", &v[k]) == 1) {
                v[k] -= cpu_own_running();
                k++;
                break;
            }
        fclose(f);
        if (i < 2) nanosleep(&(struct timespec){0, 250000}, NULL);
    }
    return cpu_idle_from_counts(n, v, k);
}

int cpu_idle_from_counts(int n, const int *others, int k) {
    if (k <= 0) return n;
    int v[3];
    k = k > 3 ? 3 : k;
    memcpy(v, others, sizeof(int) * (size_t)k);
    for (int i = 1; i < k; i++) /* insertion sort of at most 3 */
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            int t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    int busy = v[k / 2] < 0 ? 0 : v[k / 2];
    int free_cores = n - busy;
    return free_cores < 1 ? 1 : free_cores > n ? n : free_cores;
}

static void c_set_threads(Backend *be, int n_threads) {
    int cores = omp_get_num_procs();
    be->n_threads = n_threads > 0                       ? n_threads
                    : n_threads == BACKEND_THREADS_IDLE ? idle_cores(cores)
                                                        : cores;
}

static size_t pack_mb_bytes(long mb) {
    return mb > 0 ? (size_t)mb << 20 : 0;
}

static long pack_mb_env(void) {
    const char *e = getenv("TUNA_PACK_MB");
    return e && *e ? atol(e) : CPU_PACK_MB;
}

/* The backend and its state (be->ctx): Backend first, so that backend_free frees both. */
typedef struct CpuBackend {
    Backend be;
    CpuPackBudget pack;
} CpuBackend;

Backend *cpu_backend_init(int n_threads, TunaErr *err) {
    (void)err;
    CpuBackend *cb = calloc(1, sizeof *cb);
    if (!cb) return NULL;
    Backend *be = &cb->be;
    be->ops = &cpu_ops;
    be->ctx = &cb->pack;
    cpu_backend_set_pack_mb(be, pack_mb_env());
    c_set_threads(be, n_threads);
    return be;
}

void cpu_backend_set_pack_mb(Backend *be, long mb) {
    CpuPackBudget *b = be->ctx;
    b->cap = pack_mb_bytes(mb);
}

size_t cpu_pack_bytes(size_t bf16_bytes) {
    size_t cap = pack_mb_bytes(pack_mb_env());
    if (!strcmp(cpu_bf16_path(), "plain")) return 0;
    return 2 * bf16_bytes < cap ? 2 * bf16_bytes : cap; /* the forward's and the input gradient's */
}
