/* cpu_internal.h: what the CPU backend's files share: the parallel threshold and the
 * backward, loss and optimizer ops of kernels/cpu/backward.c, which cpu_backend.c puts into
 * its BackendOps table. Each op has the semantics of its slot in kernels/backend.h.
 * Not part of the backend interface; include only from the files in kernels/cpu. */
#ifndef TUNA_KERNELS_CPU_CPU_INTERNAL_H
#define TUNA_KERNELS_CPU_CPU_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "../backend.h"
#include "../ref/attn_span.h"

/* bytes of scratch at a 64-byte boundary (a cache line; an AMX tile row), for free(): packed
 * operands that the kernels load whole lines or tiles of. malloc's 16 bytes put every tile load
 * of a packed panel across two lines when the heap happened to lay it so: the AMX products of a
 * GPT-2 step ran 15% slower after an unrelated struct grew by 16 bytes. NULL: no memory. */
static inline void *cpu_alloc64(size_t bytes) {
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

/* Below this many multiply-adds an op stays on the calling thread. */
#define PAR_MIN_WORK 32768

/* Matrix products with at most this many rows run as matrix-vector products, bit-identical
 * per row to M == 1 (a batch of decoding sequences); more rows go to OpenBLAS sgemm. */
#define MATVECS_MAX_M 16

/* The calling thread's share [*lo, *hi) of n items in contiguous blocks (as schedule(static)),
 * inside a parallel region. */
static inline void omp_share(size_t n, size_t *lo, size_t *hi) {
    size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* Runs CALL, a call that uses `lo` and `hi`, over [0, n): on NTH threads that each take a
 * contiguous block, or directly on the calling thread when NTH <= 1. Not `#pragma omp
 * parallel ... if (0)`: for that libgomp still builds (mallocs), frees and futex-wakes a
 * one-thread team, about 0.35 us a region here, which was a third of a stories260K decode
 * token (66 such regions per token). */
#define CPU_PAR_RANGE(NTH, N, CALL)                                                                \
    do {                                                                                           \
        int par_nth_ = (NTH);                                                                      \
        size_t par_n_ = (N);                                                                       \
        if (par_nth_ <= 1) {                                                                       \
            size_t lo = 0, hi = par_n_;                                                            \
            CALL;                                                                                  \
        } else {                                                                                   \
            _Pragma("omp parallel num_threads(par_nth_)") {                                        \
                size_t lo, hi;                                                                     \
                omp_share(par_n_, &lo, &hi);                                                       \
                CALL;                                                                              \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* exp for the softmax, sigmoid and tanh loops: Cephes' expf polynomial (about 1 ulp on
 * [-87, 88], clamped outside), in a form `omp simd` vectorizes (libm's expf stays a scalar
 * call without -ffast-math, and floorf blocks GCC 12's vectorizer, so n is rounded with the
 * 1.5 * 2^23 trick). exp(-inf) gives 1.6e-38, not 0: callers never pass masked entries. */
static inline float vexpf(float xin) {
    float x = xin > -87.0f ? (xin < 88.0f ? xin : 88.0f) : -87.0f; /* NaN too: no UB cast below */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;              /* x - n ln 2 */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23); /* 2^n */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return xin == xin ? p * two_n : xin; /* NaN stays NaN (a diverged run is detected) */
}

#ifdef __AVX512F__
#include <immintrin.h>

/* vexpf on 16 lanes: the same operations in the same order (no fused multiply-adds: the C is
 * built with -std=c11, so -ffp-contract=off), hence the same bits lane by lane. `omp simd` left
 * the scalar form on 8 lanes under -march=native (GCC prefers 256-bit vectors there). */
static inline __m512 vexpf16(__m512 xin) {
    __mmask16 gt = _mm512_cmp_ps_mask(xin, _mm512_set1_ps(-87.0f), _CMP_GT_OQ),
              lt = _mm512_cmp_ps_mask(xin, _mm512_set1_ps(88.0f), _CMP_LT_OQ);
    __m512 x = _mm512_mask_blend_ps(lt, _mm512_set1_ps(88.0f), xin);
    x = _mm512_mask_blend_ps(gt, _mm512_set1_ps(-87.0f), x);
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    __m512 n = _mm512_sub_ps(
            _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
    __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                             _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
                      _mm512_set1_ps(1.0f));
    __m512i bits =
            _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(xin, xin, _CMP_EQ_OQ), xin, y);
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* the first n of 16 lanes (none for n <= 0, all for n >= 16); outside __AVX512F__ too, for the
 * functions built for AVX-512 by their own target attributes (gemm_bf16.c) */
static inline __mmask16 cpu_lanes16(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n > 0 ? (__mmask16)((1u << n) - 1) : (__mmask16)0;
}

/* the sum of a's 8 lanes: halves, then pairs, then the last two (one order for every caller:
 * the AVX2 paths, and matmul_w.c's functions built for AVX2 by their own target attributes) */
__attribute__((always_inline, target("avx"))) static inline float cpu_hsum8(__m256 a) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

/* d + the 16 floats of s in double (lanes 0-7, then 8-15): Σ x²'s fp32 partials summed on */
__attribute__((always_inline, target("avx512f"))) static inline __m512d cpu_add_pd16(__m512d d,
                                                                                     __m512 s) {
    d = _mm512_add_pd(d, _mm512_cvtps_pd(_mm512_castps512_ps256(s)));
    return _mm512_add_pd(
            d, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1))));
}
#endif

/* x (n) = softmax(scale·x) in place. On AVX-512 in intrinsics, 16 lanes (GCC vectorized the
 * loops below on 8 lanes under -march=native on the Xeons, and the softmax was a sixth of the
 * attention's time on Zen 4): the sums in two chains of 16 lanes (element j in lane j % 16 of
 * chain j / 16 % 2), then the lanes in _mm512_reduce_add_ps' order. The order depends on n only,
 * so the thread count cannot change the bits. The attention's (attention_gemm.c) and the short
 * queries' (cpu_backend.c attention_items). cpu_softmax_exp is its first two passes: x (n) =
 * exp(scale·x - max) in place, returning 1 / their sum (the last pass's factor: the caller may
 * scale and round in one, cpu_bf16_scale_round). */
static inline float cpu_softmax_exp(float *x, int n, float scale) {
#ifdef __AVX512F__
    const __m512 sc = _mm512_set1_ps(scale);
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int j = 0;
    for (; j + 32 <= n; j += 32) { /* the max of the scaled values (not stored: the pass
                                    * below scales them again, to the same bits) */
        m0 = _mm512_max_ps(m0, _mm512_mul_ps(_mm512_loadu_ps(x + j), sc));
        m1 = _mm512_max_ps(m1, _mm512_mul_ps(_mm512_loadu_ps(x + j + 16), sc));
    }
    for (; j < n; j += 16) {
        __mmask16 k = cpu_lanes16(n - j);
        m0 = _mm512_mask_max_ps(m0, k, m0, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), sc));
    }
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m0, m1)));
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (j = 0; j + 32 <= n; j += 32) { /* exp(x scale - max), and the sum */
        __m512 a = vexpf16(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j), sc), mx)),
               b = vexpf16(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j + 16), sc), mx));
        _mm512_storeu_ps(x + j, a);
        _mm512_storeu_ps(x + j + 16, b);
        s0 = _mm512_add_ps(s0, a);
        s1 = _mm512_add_ps(s1, b);
    }
    for (; j < n; j += 16) {
        __mmask16 k = cpu_lanes16(n - j);
        __m512 a = _mm512_maskz_mov_ps(
                k, vexpf16(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), sc), mx)));
        _mm512_mask_storeu_ps(x + j, k, a);
        if (j / 16 % 2)
            s1 = _mm512_add_ps(s1, a);
        else
            s0 = _mm512_add_ps(s0, a);
    }
    return 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#else
    float mx = -INFINITY, sum = 0;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) {
        x[j] *= scale;
        mx = x[j] > mx ? x[j] : mx;
    }
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        x[j] = vexpf(x[j] - mx);
        sum += x[j];
    }
    return 1.0f / sum;
#endif
}

static inline void cpu_softmax_row(float *x, int n, float scale) {
    float inv = cpu_softmax_exp(x, n, scale);
#ifdef __AVX512F__
    const __m512 vi = _mm512_set1_ps(inv);
    for (int j = 0; j < n; j += 16) {
        __mmask16 k = cpu_lanes16(n - j);
        _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), vi));
    }
#else
#pragma omp simd
    for (int j = 0; j < n; j++)
        x[j] *= inv;
#endif
}

/* GPT-2's GELU (gelu_new): tanh(u), u = √(2/π) (x + 0.044715 x³), as 1 - 2 / (1 + exp(2u)), for
 * the forward and the backward alike; scalar and on 16 lanes with the same bits */
#define GELU_K  0.7978845608f
#define GELU_C3 0.044715f
static inline float gelu_th(float x) {
    return 1.0f - 2.0f / (1.0f + vexpf(2.0f * GELU_K * (x + GELU_C3 * x * x * x)));
}
/* its derivative at x, th = gelu_th(x) */
static inline float gelu_d(float x, float th) {
    return 0.5f * (1.0f + th) +
           0.5f * x * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * GELU_C3 * x * x);
}
#ifdef __AVX512F__
static inline __m512 gelu_th16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 u = _mm512_mul_ps(
            _mm512_set1_ps(2.0f * GELU_K),
            _mm512_add_ps(
                    x,
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_C3), x), x), x)));
    return _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, vexpf16(u))));
}
#endif

/* floats ahead that the GELU loops fetch (1 KB of each stream): their input is a layer's
 * activation from the forward, long out of L2 by its backward (0.50 -> 0.26 ms for GPT-2's
 * 256 x 3072 when 12 of them take turns) */
#define GELU_PF 256

/* cblas_sgemm (row-major; ta, tb: op(A) = Aᵀ, op(B) = Bᵀ) with OpenBLAS on nth threads, and a
 * result that does not depend on nth (see cpu_backend.c). */
void cpu_sgemm(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);

/* skinny.c: C (M,N) = op(A) op(B) + beta C (alpha 1, beta 0 or 1) where a side is at most
 * SKINNY_MAX, in loops of our own (each element summed by one task in a fixed order: the bits do
 * not depend on nth); 0, or -1 for a product it does not take (and then nothing is written). */
#define SKINNY_MAX 16
int cpu_skinny(int nth, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
/* matmul_bwd's din (M,K) += dout (M,N) · w (N,K) and dw (N,K) += doutᵀ · in (M,K) with K at
 * most SKINNY_MAX (an adapter's B side), M and N over 128: the two products cpu_sgemm hands
 * cpu_skinny (the dots and the outer form), in one pass over dout, each element's sum as there
 * (the same bits); 0, or -1 when it does not take the shape (nothing written). */
int cpu_skinny_bwd(int nth, int M, int K, int N, const float *dout, const float *in, const float *w,
                   float *din, float *dw);
/* The cpu backend's budget of packed weight copies (be->ctx; cpu_backend.h, CPU_PACK_MB):
 * bytes allowed and taken (atomically: weights may be packed from two threads). */
typedef struct CpuMirror CpuMirror;
typedef struct CpuPackBudget {
    size_t cap, used;
    CpuMirror *mirrors; /* the packed copies of trainable weights (gemm_bf16.c cpu_weight_track) */
    int n_mirrors;
    /* matmul_bwd_dw's op(A) built from din's packing (cpu_matmul_bwd_dw_bf16), kept from call to
     * call: a fresh 26 MB for GPT-2's head beside din's went back to the system after each step
     * (glibc's trim threshold) and was faulted in again, 3.5% of the step */
    uint32_t *kpack;
    size_t kpack_words;
} CpuPackBudget;

/* gemm_bf16.c: the matrix products under Backend.mm_bf16 (operands rounded to bf16, fp32
 * sums; bits independent of the thread count). cpu_gemm_bf16 is C (M,N) = beta C + op(A) op(B)
 * with beta 0 or 1, and returns 0 or -1 (no memory); its path is cpu_bf16_path's
 * (cpu_backend.h). */
int cpu_gemm_bf16(int nth, int ta, int tb, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
/* The AVX512-BF16 path's pieces (x86 builds only; for callers on that path), for products
 * that pack an operand once and run it many times. A tile of C is CPU_BF16_MR x CPU_BF16_NR, and
 * the packings hold K in blocks of CPU_BF16_KC; cpu_bf16_tile sums one block from zero and adds
 * it to C (cpu_gemm_bf16 sums up to 8 blocks in its registers before it adds to C: the same bits
 * where K is one block, within fp32 rounding otherwise).
 * - cpu_bf16_pack_b: a panel of op(B): (kn + 1) / 2 words of CPU_BF16_NR, word p * NR + c the
 *   bf16 pair (elements k0 + 2p, k0 + 2p + 1) of column r0 + c; columns past rn (<= NR) and the
 *   odd element past kn zero. src's element (column r, k) is src[r * ld + k], or src[k * ld + r]
 *   when kmajor.
 * - cpu_bf16_pack_a: a panel of op(A), rows r0 .. r0+rn-1 (rn <= MR) and elements k0 .. k0+kn-1
 *   (kn <= KC) of src seen as above (rows for columns): (KC / 2) * MR words, row by row (word
 *   i * KC / 2 + p) or, when kmajor, pair by pair (word p * MR + i); rows past rn zero.
 * - cpu_bf16_tile: c (mr x nr, row stride ldc) = (add: c +) the sum over kp pairs of the A panel
 *   (packed with that kmajor) times the B panel, on this thread.
 * amx (cpu_bf16_amx(), taken once for all of a product's pieces): the AMX tiles' layouts and
 * kernel: cpu_bf16_pack_a packs by rows whatever kmajor (cpu_bf16_tile then ignores a_kmajor),
 * each row's pairs zero from (kn + 1) / 2 up to a multiple of 16; cpu_bf16_pack_b zeroes the
 * panel's pairs up to a multiple of 16 too (its room must be that); cpu_bf16_tile reads whole
 * steps of 16 pairs and adds onto c's running value (not a block's sum: gemm_task_amx's bits),
 * on tiles the thread has configured with cpu_bf16_tiles(CPU_BF16_MR) (and releases with
 * cpu_bf16_tiles(0)). cpu_bf16_tiles(rows) configures tiles 0-5 with that many rows (at most 16)
 * of 64 bytes and tiles 6-7 with 16, the layout the pieces (and bench_bf16's AMX peak) use. */
#define CPU_BF16_MR       12
#define CPU_BF16_NR       32
#define CPU_BF16_KC       256
#define CPU_BF16_KPAD(kp) (((kp) + 15) & ~15) /* the pairs an amx panel holds */
void cpu_bf16_pack_b(const float *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0, int kn,
                     uint32_t *dst, int amx);
void cpu_bf16_pack_a(const float *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0, int kn,
                     uint32_t *dst, int amx);
/* cpu_bf16_pack_a of a bf16 source (the values as they are: the packing is a copy) */
void cpu_bf16_pack_a_h(const uint16_t *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0,
                       int kn, uint32_t *dst, int amx);
/* dst (n) = x (n) · s rounded to bf16 as the packings round; dst may lie over x at or below
 * its start (in place: (uint16_t *)x), each element read before the bytes over it are written */
void cpu_bf16_scale_round(const float *x, int n, float s, uint16_t *dst);
void cpu_bf16_tile(int kp, const uint32_t *a, int a_kmajor, const uint32_t *b, float *c, size_t ldc,
                   int mr, int nr, int add, int amx);
void cpu_bf16_tiles(int rows);
int cpu_bf16_amx(void); /* whether cpu_gemm_bf16 runs on the AMX tiles now */
void cpu_matmul_bf16(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N, float beta); /* out = beta out + in wᵀ (+ bias) */
void cpu_matmul_bwd_bf16(Backend *be, float *din, float *dw, const float *dout, const float *in,
                         const float *w, int M, int K, int N);
/* matmul_bwd_dw's products on the AMX tiles or vdpbf16ps, where it takes them (returns 1; 0:
 * not here, and nothing done: the caller runs din's product, zeroes dw and accumulates): dw with
 * beta 0, C's whole lines streamed past the caches. The bits of zeroing dw and
 * cpu_matmul_bwd_bf16's dw (a tile starts from zero either way; not with K slices, whose sum onto
 * zeroed memory would turn a -0 into +0). din (or NULL): cpu_matmul_bwd_bf16's, first (on the
 * tiles dw's op(A) is then taken from the dout it packed). sumsq (or NULL): Σ dw², from the tiles
 * as they are written. */
int cpu_matmul_bwd_dw_bf16(Backend *be, float *din, float *dw, const float *dout, const float *in,
                           const float *w, int M, int K, int N, double *sumsq);
void cpu_matmul_bwd_dw(Backend *be, float *din, float *dw, const float *dout, const float *in,
                       const float *w, int M, int K, int N, double *sumsq);
void cpu_matmul_w_bf16_fwd(Backend *be, float *out, const float *in, const Weight *w,
                           const float *bias, int M);
void cpu_matmul_w_bf16_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                              int acc);
int cpu_matmul_w_bf16_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                            const Weight *const *ws, const float *const *biases, int M);
void cpu_matmul_w_fwd(Backend *be, float *out, const float *in, const Weight *w, const float *bias,
                      int M);
void cpu_matmul_w_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                        const Weight *const *ws, const float *const *biases, int M);
void cpu_matmul_w_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                         int acc);
void cpu_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                    const float *in, const float *w, int M, int K, int N);
void cpu_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                     const float *w, float eps, int R, int C);
void cpu_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                       const float *in, const float *w, float eps, int R, int C);
void cpu_rope_rotate(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T,
                     int NH, int HS, int rot_dim, float sign);
void cpu_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T, int NH,
                  int HS, int rot_dim);
void cpu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                       const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                       size_t kv_stride, int NH, int KVH, int HS, int window, const int32_t *kv_lo);
void cpu_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n, int acc);
void cpu_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                  int approx);
void cpu_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int C);
void cpu_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                      const int32_t *targets, int R, int V, float scale, float smooth,
                      XentWeight wt);
double cpu_sumsq(Backend *be, const float *x, size_t n);
void cpu_scale(Backend *be, float *x, size_t n, float s);
void cpu_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b, int R,
                   int N);
void cpu_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N);
void cpu_logit_stats(Backend *be, float *stats, const float *logits, const int32_t *targets, int R,
                     int V);
void cpu_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed);
void cpu_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed);
void cpu_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
               float lr, float b1, float b2, float eps, float wd, float bc1, float bc2);
/* AdamW on p[i0..i1) (backward.c; cpu_adamw's body): decay = 1 - lr wd, step = lr / bc1,
 * ib2 = 1 / bc2 */
typedef struct CpuAdamw {
    float gscale, b1, b2, eps, decay, step, ib2;
} CpuAdamw;
void cpu_adamw_range(float *p, const float *g, float *m, float *v, size_t i0, size_t i1,
                     const CpuAdamw *h);

/* Packed copies of trainable fp32 weights (gemm_bf16.c; Backend.weight_track and
 * weights_written): the backend's slots, and what cpu_adamw and the writes call.
 * cpu_mirror_adamw runs cpu_adamw's pass on p[0..n) when a tracked weight lies whole inside it,
 * refreshing the copies of those as it writes them (returns 1), and returns 0 when none does
 * (having marked stale the copies of any weight the pass covers in part). */
void cpu_weight_track(Backend *be, const float *w, int rows, int cols);
void cpu_weights_written(Backend *be, const float *p, size_t n);
void cpu_mirrors_written(Backend *be, const void *dst, size_t bytes);
void cpu_mirrors_released(Backend *be, const void *p, size_t bytes);
void cpu_mirrors_free(Backend *be);
int cpu_mirror_adamw(Backend *be, int nth, float *p, const float *g, float *m, float *v, size_t n,
                     const CpuAdamw *h);

/* attention_gemm.c: the sgemm path for query blocks of at least ATTN_GEMM_MIN_TQ rows.
 * Return 0, or -1 when scratch memory could not be had (nothing is written then... except
 * by threads that did get theirs: the caller latches TUNA_ENOMEM). */
#define ATTN_GEMM_MIN_TQ 32
int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                           int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                           int window, const int32_t *kv_lo);
int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window,
                           const int32_t *kv_lo);

#endif
