/* skinny.c: fp32 products with one side of at most SKINNY_MAX (a LoRA adapter's rank side: its
 * u = h·Aᵀ, out += u·Bᵀ, and their gradients), in AVX-512 loops of our own where cpu_sgemm had
 * OpenBLAS's (one-thread calls on blocks of rows: about half of the fp32 peak on these shapes,
 * its copies of the operands included; 1.9 ms a SmolLM2 layer for the seven adapters). Three
 * forms, each element of C summed by one task in a fixed order (so the bits do not depend on the
 * thread count):
 * - inner: C (M,N) (+)= op(A) (M,r) · op(B) (r,N), r small: a row's 16 columns at a time,
 *   C + a_0·b_0 + a_1·b_1 + ... in fused multiply-adds, op(B) copied r-major first when it is
 *   given transposed;
 * - dots: C (M,n) (+)= A (M,K) · op(B) (K,n), n small: each element a dot product over K in 16
 *   lanes (lane l takes k = l mod 16, in order), the lanes then summed in a fixed tree
 *   (sums8), op(B) copied column-major first when it is given by rows;
 * - outer: D (p,Q) (+)= Xᵀ (p,K) · Y (K,Q), p small: 16 or 32 columns of D at a time over K in
 *   order, each step a broadcast of X's row times Y's, K in chunks of rows that a thread walks
 *   across all its columns; C = Aᵀ·B with M small is D = C, with
 *   N small it is Cᵀ = Bᵀ·A (D written transposed).
 * cpu_skinny returns -1 for any other product (cpu_sgemm then takes OpenBLAS's). cpu_skinny_bwd
 * runs an adapter's B side, a dots and an outer product over the same dout, chunk by chunk in
 * one pass. */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

#ifdef __AVX512F__
#include <immintrin.h>

/* the sums of the 16 lanes of a0 .. a7, in order: halves added, then pairs, in one order (by
 * value: an array's address taken kept the callers' accumulators in memory) */
__attribute__((always_inline)) static inline __m256
sums8(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 a4, __m512 a5, __m512 a6, __m512 a7) {
#define HALVES(x)                                                                                  \
    _mm256_add_ps(_mm512_castps512_ps256(x),                                                       \
                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)))
    __m256 t0 = _mm256_hadd_ps(HALVES(a0), HALVES(a1)), t1 = _mm256_hadd_ps(HALVES(a2), HALVES(a3)),
           t2 = _mm256_hadd_ps(HALVES(a4), HALVES(a5)), t3 = _mm256_hadd_ps(HALVES(a6), HALVES(a7));
#undef HALVES
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* RM rows (a constant) at m of the inner form: A's element (m, j) at A + m·sam + j·saj, Bt (r, N)
 * r-major (rows sb apart) */
__attribute__((always_inline)) static inline void inner_at(int RM, int m, int N, int r,
                                                           const float *A, size_t sam, size_t saj,
                                                           const float *Bt, size_t sb, float beta,
                                                           float *C, int ldc) {
    for (int n = 0; n < N; n += 16) {
        __mmask16 k = cpu_lanes16(N - n);
        __m512 acc[4];
#pragma GCC unroll 4
        for (int i = 0; i < RM; i++)
            acc[i] = beta != 0.0f ? _mm512_maskz_loadu_ps(k, C + (size_t)(m + i) * ldc + n)
                                  : _mm512_setzero_ps();
        for (int j = 0; j < r; j++) {
            __m512 b = _mm512_maskz_loadu_ps(k, Bt + (size_t)j * sb + n);
#pragma GCC unroll 4
            for (int i = 0; i < RM; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(A[(size_t)(m + i) * sam + (size_t)j * saj]),
                                         b, acc[i]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RM; i++)
            _mm512_mask_storeu_ps(C + (size_t)(m + i) * ldc + n, k, acc[i]);
    }
}

static void inner_rows(int m0, int m1, int N, int r, const float *A, size_t sam, size_t saj,
                       const float *Bt, size_t sb, float beta, float *C, int ldc) {
    int m = m0;
    for (; m + 4 <= m1; m += 4)
        inner_at(4, m, N, r, A, sam, saj, Bt, sb, beta, C, ldc);
    for (; m < m1; m++)
        inner_at(1, m, N, r, A, sam, saj, Bt, sb, beta, C, ldc);
}

/* rows [m0, m1) of the dots form: A (M,K) rows lda apart, Bt (n8, K) column-major (rows ldb
 * apart, n8 = n rounded up to 8, the columns past n zero) */
static void dots_rows(int m0, int m1, int n, int K, const float *A, int lda, const float *Bt,
                      size_t ldb, float beta, float *C, int ldc) {
    for (int m = m0; m < m1; m += 2) {
        const float *a0p = A + (size_t)m * lda, *a1p = m + 1 < m1 ? a0p + lda : a0p;
        for (int j0 = 0; j0 < n; j0 += 8) {
            const float *bt = Bt + (size_t)j0 * ldb;
            __m512 acc0[8], acc1[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                acc0[j] = acc1[j] = _mm512_setzero_ps();
            for (int k = 0; k < K; k += 16) {
                __mmask16 mk = cpu_lanes16(K - k);
                __m512 a0 = _mm512_maskz_loadu_ps(mk, a0p + k),
                       a1 = _mm512_maskz_loadu_ps(mk, a1p + k);
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++) {
                    __m512 b = _mm512_maskz_loadu_ps(mk, bt + (size_t)j * ldb + k);
                    acc0[j] = _mm512_fmadd_ps(a0, b, acc0[j]);
                    acc1[j] = _mm512_fmadd_ps(a1, b, acc1[j]);
                }
            }
            int nj = n - j0 < 8 ? n - j0 : 8;
            float s[2][8];
            _mm256_storeu_ps(s[0], sums8(acc0[0], acc0[1], acc0[2], acc0[3], acc0[4], acc0[5],
                                         acc0[6], acc0[7]));
            _mm256_storeu_ps(s[1], sums8(acc1[0], acc1[1], acc1[2], acc1[3], acc1[4], acc1[5],
                                         acc1[6], acc1[7]));
            for (int i = 0; i < 2 && m + i < m1; i++) {
                float *c = C + (size_t)(m + i) * ldc + j0;
                for (int j = 0; j < nj; j++)
                    c[j] = beta != 0.0f ? c[j] + s[i][j] : s[i][j];
            }
        }
    }
}

/* Rows of Y a chunk of the outer form: a task walks a chunk of its columns strip by strip (the
 * strips' sums kept in memory between chunks, exactly as in registers), fetching the next
 * chunk's lines into L2 meanwhile. Each strip walked down all of K in turn had read one or two
 * lines of each row 2.3-6 KB apart, at the rate its few misses in flight allowed (about 12 GB/s
 * for the SmolLM2 adapters' gradients, 41% of the FMA rate). */
#define OUTER_KB 32
/* columns of D a strip of the outer form covers, for P rows (8 or 16) */
#define OUTER_W(P) ((P) == 8 ? 32 : 16)

/* P (8 or 16, a constant) rows of D, strip by strip (16 * NC columns each, NC = 2 for P 8, 1 for
 * 16), for strips [s0, s1) of the outer form: D (P, Q) (+)= Xᵀ·Y, X (K, P) rows P apart (padded
 * with zeros past p), Y (K, Q) rows ldy apart; D's element (j, q) at D + j·sj + q·sq, for j < p.
 * S: the strips' sums, strip s at S + (s - s0)·P·16·NC. Each element of D is summed from zero
 * over k in order in fused multiply-adds (outer_chunk: the chunk of rows [k0, k1), chunk after
 * chunk; the next chunk's rows, up to knext, fetched meanwhile), then added to D (beta 1) or
 * stored (outer_store). */
__attribute__((always_inline)) static inline void outer_chunk(int P, int s0, int s1, int Q, int k0,
                                                              int k1, int knext, const float *X,
                                                              const float *Y, int ldy, float *S) {
    const int W = OUTER_W(P), NC = W / 16;
    for (int s = s0; s < s1; s++) {
        int q0 = s * W;
        float *st = S + (size_t)(s - s0) * P * W;
        __m512 acc[16][2];
        __mmask16 mk[2] = {cpu_lanes16(Q - q0), cpu_lanes16(Q - q0 - 16)};
#pragma GCC unroll 16
        for (int j = 0; j < P; j++) {
            acc[j][0] = k0 ? _mm512_load_ps(st + j * W) : _mm512_setzero_ps();
            if (NC > 1) acc[j][1] = k0 ? _mm512_load_ps(st + j * W + 16) : _mm512_setzero_ps();
        }
        /* the next chunk's rows of this strip, spread over this chunk's rows */
        int nf = knext - k1, per = (nf + (k1 - k0) - 1) / (k1 - k0);
        for (int k = k0, f = k1; k < k1; k++) {
            for (int i = 0; i < per && f < knext; i++, f++) {
                const char *y = (const char *)(Y + (size_t)f * ldy + q0);
                _mm_prefetch(y, _MM_HINT_T1);
                if (NC > 1) _mm_prefetch(y + 64, _MM_HINT_T1);
            }
            const float *y = Y + (size_t)k * ldy + q0, *x = X + (size_t)k * P;
            __m512 y0 = _mm512_maskz_loadu_ps(mk[0], y),
                   y1 = NC > 1 ? _mm512_maskz_loadu_ps(mk[1], y + 16) : y0;
#pragma GCC unroll 16
            for (int j = 0; j < P; j++) {
                __m512 b = _mm512_set1_ps(x[j]);
                acc[j][0] = _mm512_fmadd_ps(b, y0, acc[j][0]);
                if (NC > 1) acc[j][1] = _mm512_fmadd_ps(b, y1, acc[j][1]);
            }
        }
#pragma GCC unroll 16
        for (int j = 0; j < P; j++) {
            _mm512_store_ps(st + j * W, acc[j][0]);
            if (NC > 1) _mm512_store_ps(st + j * W + 16, acc[j][1]);
        }
    }
}

static void outer_store(int P, int s0, int s1, int Q, int p, float beta, float *D, size_t sj,
                        size_t sq, const float *S) {
    const int W = OUTER_W(P);
    for (int s = s0; s < s1; s++) {
        int q0 = s * W, nq = Q - q0 < W ? Q - q0 : W;
        const float *st = S + (size_t)(s - s0) * P * W;
        for (int j = 0; j < p; j++)
            for (int l = 0; l < nq; l++) {
                float *d = D + (size_t)j * sj + (size_t)(q0 + l) * sq;
                *d = beta != 0.0f ? *d + st[j * W + l] : st[j * W + l];
            }
    }
}

/* the chunk after [k0, k1) of K rows: its end */
static int outer_next(int k1, int K) {
    return K - k1 < OUTER_KB ? K : k1 + OUTER_KB;
}

/* outer_chunk of the chunk of K rows from k0, for P (8 or 16) at run time; returns its end */
static int outer_step(int P, int s0, int s1, int Q, int k0, int K, const float *X, const float *Y,
                      int ldy, float *S) {
    int k1 = outer_next(k0, K);
    if (P == 8)
        outer_chunk(8, s0, s1, Q, k0, k1, outer_next(k1, K), X, Y, ldy, S);
    else
        outer_chunk(16, s0, s1, Q, k0, k1, outer_next(k1, K), X, Y, ldy, S);
    return k1;
}

/* The strips of Q columns (*ns) and the threads that take runs of them (*nw, at most nth; thread
 * t takes strips [ns t / nw, ns (t + 1) / nw): an element's sum is the same whichever), and the
 * strips' sums (P x OUTER_W(P) floats each), or NULL (no memory) */
static float *outer_plan(int P, int Q, int nth, int *ns, int *nw) {
    *ns = (Q + OUTER_W(P) - 1) / OUTER_W(P);
    *nw = nth < *ns ? (nth < 1 ? 1 : nth) : *ns;
    return aligned_alloc(64, sizeof(float) * (size_t)P * (size_t)*ns * (size_t)OUTER_W(P));
}

/* thread t's run of strips (outer_plan) */
static int run_start(int ns, int nw, int t) {
    return (int)((long)ns * t / nw);
}

/* The outer form on the nw threads of outer_plan (ns strips, S their sums), chunk by chunk of
 * K; with bt (cpu_skinny_bwd) also the dots form over Y's rows, C2 (K, n) += Y · btᵀ (bt: n8 rows
 * of Q), each chunk's rows shared among the threads before their strips of the chunk read them
 * again */
static void outer_run(int P, int Q, int p, int K, const float *X, const float *Y, int ldy,
                      float beta, float *D, size_t sj, size_t sq, float *S, int ns, int nw,
                      const float *bt, int n, float *C2) {
#pragma omp parallel for num_threads(nw) schedule(static) if (nw > 1)
    for (int t = 0; t < nw; t++) {
        int s0 = run_start(ns, nw, t), s1 = run_start(ns, nw, t + 1);
        float *St = S + (size_t)s0 * P * OUTER_W(P);
        for (int k0 = 0; k0 < K;) {
            int k1 = outer_next(k0, K), r0 = k0 + (k1 - k0) * t / nw,
                r1 = k0 + (k1 - k0) * (t + 1) / nw;
            if (bt && r0 < r1) dots_rows(r0, r1, n, Q, Y, ldy, bt, (size_t)Q, 1.0f, C2, n);
            k0 = outer_step(P, s0, s1, Q, k0, K, X, Y, ldy, St);
        }
        outer_store(P, s0, s1, Q, p, beta, D, sj, sq, St);
    }
}

/* (pcols, rows) = src (rows, cols; rows ld apart) transposed, the rows past cols zero (pcols >=
 * cols) */
static float *transposed(const float *src, int rows, int cols, int ld, int pcols) {
    float *t = calloc((size_t)rows * (size_t)pcols + 16, sizeof(float));
    if (!t) return NULL;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            t[(size_t)j * rows + i] = src[(size_t)i * ld + j];
    return t;
}

/* src (rows, cols; rows ld apart) as (prows, pcols) with rows pcols apart, zero past rows and
 * cols: src itself where it is so already (*own NULL), else a copy in *own (NULL: no memory) */
static const float *padded(const float *src, int rows, int cols, int ld, int prows, int pcols,
                           float **own) {
    *own = NULL;
    if (rows == prows && cols == pcols && ld == pcols) return src;
    if (!(*own = calloc((size_t)prows * (size_t)pcols + 16, sizeof(float)))) return NULL;
    for (int i = 0; i < rows; i++)
        memcpy(*own + (size_t)i * pcols, src + (size_t)i * ld, sizeof(float) * (size_t)cols);
    return *own;
}

int cpu_skinny(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    if (alpha != 1.0f || (beta != 0.0f && beta != 1.0f) || M <= 0 || N <= 0 || K <= 0) return -1;
    if (nth < 1) nth = 1;
    if (K <= SKINNY_MAX && K < M && K < N) {                 /* inner */
        float *bt = tb ? transposed(B, N, K, ldb, K) : NULL; /* B (N, K) -> (K, N) */
        if (tb && !bt) return -1;
        const float *Bt = tb ? bt : B;
        size_t sb = tb ? (size_t)N : (size_t)ldb;
        int nt = (M + 15) / 16;
#pragma omp parallel for num_threads(nth) schedule(dynamic) if (nth > 1 && nt > 1)
        for (int t = 0; t < nt; t++)
            inner_rows(16 * t, 16 * t + 16 < M ? 16 * t + 16 : M, N, K, A, ta ? 1 : (size_t)lda,
                       ta ? (size_t)lda : 1, Bt, sb, beta, C, ldc);
        free(bt);
        return 0;
    }
    if (N <= SKINNY_MAX && !ta && N < M) { /* dots */
        /* op(B) column-major (rows K apart), zero columns up to a whole group of 8 */
        int n8 = (N + 7) / 8 * 8;
        float *bt = NULL;
        const float *Bt =
                tb ? padded(B, N, K, ldb, n8, K, &bt) : (bt = transposed(B, K, N, ldb, n8));
        if (!Bt) return -1;
        size_t sb = (size_t)K;
        int nt = (M + 7) / 8;
#pragma omp parallel for num_threads(nth) schedule(dynamic) if (nth > 1 && nt > 1)
        for (int t = 0; t < nt; t++)
            dots_rows(8 * t, 8 * t + 8 < M ? 8 * t + 8 : M, N, K, A, lda, Bt, sb, beta, C, ldc);
        free(bt);
        return 0;
    }
    if (ta && !tb && (M <= SKINNY_MAX || N <= SKINNY_MAX)) { /* outer */
        int small_m = M <= N, p = small_m ? M : N, Q = small_m ? N : M, P = p <= 8 ? 8 : 16;
        const float *Y = small_m ? B : A;
        int ldy = small_m ? ldb : lda;
        float *own;
        const float *X =
                padded(small_m ? A : B, K, p, small_m ? lda : ldb, K, P, &own); /* (K, P) */
        if (!X) return -1;
        size_t sj = small_m ? (size_t)ldc : 1, sq = small_m ? 1 : (size_t)ldc;
        int ns, nw;
        float *S = outer_plan(P, Q, nth, &ns, &nw);
        if (!S) {
            free(own);
            return -1;
        }
        outer_run(P, Q, p, K, X, Y, ldy, beta, C, sj, sq, S, ns, nw, NULL, 0, NULL);
        free(S);
        free(own);
        return 0;
    }
    return -1;
}

int cpu_skinny_bwd(int nth, int M, int K, int N, const float *dout, const float *in, const float *w,
                   float *din, float *dw) {
    if (!(K <= SKINNY_MAX && K < M && K < N && M > 128 && N > 128)) return -1;
    int n8 = (K + 7) / 8 * 8, P = K <= 8 ? 8 : 16, ns = 0, nw = 1;
    float *bt = transposed(w, N, K, K, n8), *own = NULL, *S = NULL; /* the dots' w, (n8, N) */
    const float *X = bt ? padded(in, M, K, K, M, P, &own) : NULL;   /* the outer's in, (M, P) */
    if (X) S = outer_plan(P, N, nth, &ns, &nw);
    if (!S) {
        free(bt);
        free(own);
        return -1;
    }
    /* dw = Dᵀ, D (K, N) += inᵀ · dout; din (M, K) += dout · w */
    outer_run(P, N, K, M, X, dout, N, 1.0f, dw, 1, (size_t)K, S, ns, nw, bt, K, din);
    free(S);
    free(bt);
    free(own);
    return 0;
}
#else
int cpu_skinny_bwd(int nth, int M, int K, int N, const float *dout, const float *in, const float *w,
                   float *din, float *dw) {
    (void)nth, (void)M, (void)K, (void)N, (void)dout, (void)in, (void)w, (void)din, (void)dw;
    return -1;
}
int cpu_skinny(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    (void)nth, (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
    (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    return -1;
}
#endif
