/* matmul_w.c: the cpu backend's matrix products with a typed weight (kernels/wtype.h).
 *
 * No fp32 copy of the whole matrix is made:
 * - M > WDIRECT_MAX_M (prefill, training): W is dequantized a tile of rows at a time into a
 *   per-thread fp32 buffer of about 1 MiB (256 KiB and 4 MiB measured the same), and OpenBLAS
 *   multiplies each tile on one thread; OpenMP runs the tiles. Tile edges do not depend on the thread count, so neither
 *   do the bits.
 * - M <= WDIRECT_MAX_M (decoding): each thread walks its rows of W a chunk of blocks at a time,
 *   dequantizes the chunk into an L1 buffer and takes its dot products with the M inputs at
 *   once. Every type (rows of a multiple of 32 and of its block) has fused AVX-512 and AVX2
 *   kernels that dequantize in registers (chosen at run time with __builtin_cpu_supports;
 *   TUNA_WTYPE_PLAIN=1 forces the plain path, TUNA_WTYPE_AVX2=1 the AVX2 one).
 *   TUNA_WTYPE_Q8ACT=1 takes Q8_0, Q4_0 and Q4_1 with 8-bit activations and AVX2 integer dot
 *   products instead (direct_q8: off by default, it changes the math: see its comment).
 * - The input gradient goes a tile of rows of W at a time through threaded OpenBLAS
 *   (din += dout[:, tile] · tile), tiles in order, so the bits do not depend on threads. */
#include <stdlib.h>

#include "../wtype.h"
#include "cpu_backend.h"
#include "cpu_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WTYPE_X86 1
#endif

/* At most this many input rows take the direct (GEMV-like) path. */
#define WDIRECT_MAX_M 8
/* Elements of a row dequantized at once in the direct path (a multiple of every block). */
#define WCHUNK 512
/* The longest row the AVX-512 direct kernel takes (its NF4/FP4 scales are on the stack). */
#define DIRECT_X_MAX_K 65536

static int tile_rows(int K, int N) {
    int t = (int)(262144 / (K > 0 ? K : 1)); /* 1 MiB of fp32 */
    t = t / 16 * 16;
    if (t < 16) t = 16;
    return t < N ? t : N;
}

/* the bytes and aux of elements [k0, ...) of row r (k0 a multiple of the block) */
static const uint8_t *row_at(const Weight *w, int r, int k0, WAux *aux) {
    const uint8_t *p = weight_row(w, r, aux);
    const WTypeInfo *ti = &wtype_info[w->type];
    aux->block0 += k0 / 64; /* used by NF4/FP4 only, whose block is 64 */
    return p + (size_t)(k0 / ti->block) * (size_t)ti->block_bytes;
}

// --- the direct path: plain (any type) ---------------------------------------------------------

static void direct_plain(float *out, const float *in, const Weight *w, const float *bias, int M,
                         size_t lo, size_t hi) {
    const WTypeInfo *ti = &wtype_info[w->type];
    int K = w->cols, N = w->rows;
    float buf[WCHUNK] __attribute__((aligned(64)));
    for (size_t n = lo; n < hi; n++) {
        float acc[WDIRECT_MAX_M] = {0};
        for (int k0 = 0; k0 < K; k0 += WCHUNK) {
            int kn = K - k0 < WCHUNK ? K - k0 : WCHUNK;
            WAux aux;
            const uint8_t *src = row_at(w, (int)n, k0, &aux);
            ti->dequant_row(src, buf, kn, &aux);
            for (int m = 0; m < M; m++) {
                const float *x = in + (size_t)m * K + k0;
                float s = 0.0f;
#pragma omp simd reduction(+ : s)
                for (int k = 0; k < kn; k++)
                    s += buf[k] * x[k];
                acc[m] += s;
            }
        }
        for (int m = 0; m < M; m++)
            out[(size_t)m * N + n] = acc[m] + (bias ? bias[n] : 0.0f);
    }
}

// --- the direct path: AVX-512 kernels that dequantize in registers -----------------------------

#ifdef WTYPE_X86
/* the little-endian f16 at p as a float (one helper for the AVX-512, AVX2 and 8-bit kernels) */
__attribute__((target("f16c"), always_inline)) static inline float h2f(const uint8_t *p) {
    return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8)));
}

/* 32 4-bit codes of a Q4_0/Q4_1 block as two vectors of 16 floats: elements 0..15 (low
 * nibbles) and 16..31 (high nibbles) */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static inline void
nibbles_x(const uint8_t *qs, __m512 *lo, __m512 *hi) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m)));
}

/* 32 bnb 4-bit codes (16 bytes; element 2i in the high nibble of byte i, 2i+1 in the low) as
 * two vectors of 16 code values: elements 0..15 and 16..31 */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static inline void
codes4_x(const uint8_t *qs, __m512 lut, __m512 *lo, __m512 *hi) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i h = _mm_and_si128(_mm_srli_epi16(q, 4), m), l = _mm_and_si128(q, m);
    *lo = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(h, l)), lut);
    *hi = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(h, l)), lut);
}

/* 32 bytes as two vectors of 16 int32: bytes 0..15 and 16..31 */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static inline void
bytes32_x(__m256i v, __m512i *lo, __m512i *hi) {
    *lo = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(v));
    *hi = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1));
}

/* The K types' group j (32 elements) of a row in registers, from the scales row_scales_x made:
 * Q4_K, Q5_K: code * sc[j] - mn[j] (one 6-bit scale and min per 32); Q6_K: (code - 32) times
 * sc[2j] (elements 0..15) and sc[2j + 1] (16..31). The codes are read as in wtype.c's
 * deq_q*_k_block: a super-block of 256 holds 8 groups. */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"), always_inline)) static inline void
group_k_x(WType t, int block_bytes, const uint8_t *row, const float *sc, const float *mn, int j,
          __m512 *w0, __m512 *w1) {
    const uint8_t *b = row + (size_t)(j / 8) * (size_t)block_bytes;
    int g8 = j % 8;
    __m256i m4 = _mm256_set1_epi8(0x0F), q;
    if (t == WT_Q6_K) {
        int h = g8 / 4, g = g8 % 4;
        __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (g & 1)));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
        ql = _mm256_and_si256(_mm256_srli_epi16(ql, g >= 2 ? 4 : 0), m4);
        qh = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), _mm256_set1_epi8(3));
        q = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
        __m512i a, c;
        bytes32_x(q, &a, &c);
        __m512 off = _mm512_set1_ps(32.0f);
        *w0 = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(a), off), _mm512_set1_ps(sc[2 * j]));
        *w1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(c), off),
                            _mm512_set1_ps(sc[2 * j + 1]));
        return;
    }
    int p = g8 / 2, hi = g8 % 2;
    const uint8_t *qs = b + (t == WT_Q4_K ? 16 : 48) + 32 * p;
    q = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs), 4 * hi), m4);
    if (t == WT_Q5_K) {
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
        qh = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * p + hi), _mm256_set1_epi8(1));
        q = _mm256_or_si256(q, _mm256_slli_epi16(qh, 4));
    }
    __m512i a, c;
    bytes32_x(q, &a, &c);
    __m512 s = _mm512_set1_ps(sc[j]), m = _mm512_set1_ps(mn[j]);
    /* a product then a difference, as deq_q4_k_block rounds them: dequant_rows_x is exact */
    *w0 = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), s), m);
    *w1 = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(c), s), m);
}

static int is_k_type(WType t) {
    return t == WT_Q4_K || t == WT_Q5_K || t == WT_Q6_K;
}

/* A row's block scales, made before its loop (a call inside it would spill every zmm
 * register): NF4/FP4 the absmax of each block of 64 into sc; Q4_K/Q5_K d * scale and
 * dmin * min of each group of 32 into sc and mn; Q6_K d * scale of each 16 into sc. */
static void row_scales_x(WType t, const uint8_t *row, int K, const WAux *aux, float *sc,
                         float *mn) {
    if (t == WT_NF4 || t == WT_FP4) {
        for (int b = 0; b < K / 64; b++)
            sc[b] = wtype_bnb_absmax(aux, aux->block0 + b);
        return;
    }
    if (!is_k_type(t)) return;
    int bb = wtype_info[t].block_bytes;
    for (int s = 0; s < K / 256; s++) {
        const uint8_t *b = row + (size_t)s * (size_t)bb;
        if (t == WT_Q6_K) {
            float d = wtype_f16_to_f32((uint16_t)(b[208] | (b[209] << 8)));
            for (int i = 0; i < 16; i++)
                sc[s * 16 + i] = d * (float)(int8_t)b[192 + i];
            continue;
        }
        float d = wtype_f16_to_f32((uint16_t)(b[0] | (b[1] << 8)));
        float dmin = wtype_f16_to_f32((uint16_t)(b[2] | (b[3] << 8)));
        const uint8_t *q = b + 4;
        for (int j = 0; j < 8; j++) {
            int c, m;
            if (j < 4) {
                c = q[j] & 63;
                m = q[j + 4] & 63;
            } else {
                c = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
                m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
            }
            sc[s * 8 + j] = d * (float)c;
            mn[s * 8 + j] = dmin * (float)m;
        }
    }
}

/* the 32 weights of group j (elements 32j .. 32j+31) of a row, in two registers: Q8_0, Q4_0,
 * Q4_1: code * d (+ m); BF16, F16: widened; NF4, FP4: the code's value by a 16-entry permute,
 * times the block's absmax; the K types: group_k_x. exact (a constant at each call): as the
 * type's dequant_row rounds, for callers that promise weight_dequantize_rows's bits: the product
 * alone for Q8_0 and Q4_0 (a fused multiply-add of 0 turns a -0, from a negative scale, into +0),
 * the product then the sum for Q4_1; else one fused multiply-add. */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"), always_inline)) static inline void
group_x(WType t, int block_bytes, const uint8_t *row, const float *sc, const float *mn, __m512 lut,
        int j, __m512 *w0, __m512 *w1, int exact) {
    if (is_k_type(t)) {
        group_k_x(t, block_bytes, row, sc, mn, j, w0, w1);
    } else if (t == WT_BF16 || t == WT_F16) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(row + (size_t)j * 64));
        __m256i b = _mm256_loadu_si256((const __m256i *)(row + (size_t)j * 64 + 32));
        if (t == WT_F16) {
            *w0 = _mm512_cvtph_ps(a);
            *w1 = _mm512_cvtph_ps(b);
        } else {
            *w0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
            *w1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
        }
    } else if (t == WT_NF4 || t == WT_FP4) {
        __m512 s = _mm512_set1_ps(sc[j / 2]);
        codes4_x(row + (size_t)j * 16, lut, w0, w1);
        *w0 = _mm512_mul_ps(*w0, s);
        *w1 = _mm512_mul_ps(*w1, s);
    } else {
        const uint8_t *b = row + (size_t)j * (size_t)block_bytes;
        __m512 c0, c1, dv = _mm512_set1_ps(h2f(b)), mv = _mm512_setzero_ps();
        if (t == WT_Q8_0) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
            c0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
            c1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
        } else if (t == WT_Q4_0) {
            nibbles_x(b + 2, &c0, &c1);
            c0 = _mm512_sub_ps(c0, _mm512_set1_ps(8.0f));
            c1 = _mm512_sub_ps(c1, _mm512_set1_ps(8.0f));
        } else { /* Q4_1 */
            nibbles_x(b + 4, &c0, &c1);
            mv = _mm512_set1_ps(h2f(b + 2));
        }
        if (exact) {
            *w0 = _mm512_mul_ps(c0, dv);
            *w1 = _mm512_mul_ps(c1, dv);
            if (t == WT_Q4_1) {
                *w0 = _mm512_add_ps(*w0, mv);
                *w1 = _mm512_add_ps(*w1, mv);
            }
            return;
        }
        *w0 = _mm512_fmadd_ps(c0, dv, mv);
        *w1 = _mm512_fmadd_ps(c1, dv, mv);
    }
}

/* direct_x prefetches the row this many ahead (the hardware's prefetch alone left decoding
 * waiting on each block's first load: SmolLM2 Q4_1, 2 threads, Xeon, 128 tokens greedy, 98 ->
 * 151 tok/s, the same ids; 1 row ahead 127, 2: 140-145, 8: 149-151, 16: 146-150) */
#define PREFETCH_ROWS 4

/* row n of w (its aux into *aux), the row PREFETCH_ROWS ahead (before hi, rbytes long: the
 * type's row bytes) on its way into L1. Rows lie rbytes apart (weight_row's layout); only
 * bitsandbytes' types have aux to fill, so the others skip weight_row's call and its two
 * divisions, twice a row (weight_row was 3.4% of a SmolLM2 token with 8-bit activations). */
static inline const uint8_t *row_ahead(const Weight *w, size_t n, size_t hi, size_t rbytes,
                                       WAux *aux) {
    const uint8_t *data = w->data;
    if (n + PREFETCH_ROWS < hi)
        for (size_t b = 0; b < rbytes; b += 64)
            _mm_prefetch((const char *)data + (n + PREFETCH_ROWS) * rbytes + b, _MM_HINT_T0);
    if (w->type == WT_NF4 || w->type == WT_FP4) return weight_row(w, (int)n, aux);
    memset(aux, 0, sizeof *aux);
    return data + n * rbytes;
}

/* the types direct_x takes, for a row of K */
static int direct_x_takes(WType t, int K) {
    return t != WT_F32 && K % wtype_info[t].block == 0 && K % 32 == 0 && K <= DIRECT_X_MAX_K;
}

/* rows [lo, hi) of out (M, N), input rows two at a time: each group's weights are made once
 * per pair of input rows and kept in registers, with four independent accumulators per input
 * row (two groups in flight) */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static void
direct_x(float *out, const float *in, const Weight *w, const float *bias, int M, size_t lo,
         size_t hi) {
    int K = w->cols, N = w->rows, ng = K / 32;
    WType t = w->type;
    int bb = wtype_info[t].block_bytes;
    float code[16];
    if (t == WT_NF4 || t == WT_FP4)
        wtype_code4(t, code);
    else
        memset(code, 0, sizeof code);
    __m512 lut = _mm512_loadu_ps(code);
    float sc[DIRECT_X_MAX_K / 16], mn[DIRECT_X_MAX_K / 32]; /* row_scales_x */
    size_t rbytes = (size_t)(K / wtype_info[t].block) * (size_t)bb;
    for (size_t n = lo; n < hi; n++) {
        WAux aux;
        const uint8_t *row = row_ahead(w, n, hi, rbytes, &aux);
        row_scales_x(t, row, K, &aux, sc, mn);
        for (int m0 = 0; m0 < M; m0 += 2) {
            int two = m0 + 1 < M;
            const float *x0 = in + (size_t)m0 * K, *x1 = two ? x0 + K : x0;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            int j = 0;
            for (; j + 1 < ng; j += 2) {
                __m512 w0, w1, w2, w3;
                group_x(t, bb, row, sc, mn, lut, j, &w0, &w1, 0);
                group_x(t, bb, row, sc, mn, lut, j + 1, &w2, &w3, 0);
                const float *p = x0 + (size_t)j * 32, *q = x1 + (size_t)j * 32;
                a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), a0);
                a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p + 16), a1);
                a2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(p + 32), a2);
                a3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(p + 48), a3);
                if (two) {
                    b0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(q), b0);
                    b1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(q + 16), b1);
                    b2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(q + 32), b2);
                    b3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(q + 48), b3);
                }
            }
            if (j < ng) {
                __m512 w0, w1;
                group_x(t, bb, row, sc, mn, lut, j, &w0, &w1, 0);
                const float *p = x0 + (size_t)j * 32, *q = x1 + (size_t)j * 32;
                a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), a0);
                a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p + 16), a1);
                b0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(q), b0);
                b1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(q + 16), b1);
            }
            float bn = bias ? bias[n] : 0.0f;
            __m512 sa = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            out[(size_t)m0 * N + n] = _mm512_reduce_add_ps(sa) + bn;
            if (two) {
                __m512 sb = _mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3));
                out[(size_t)(m0 + 1) * N + n] = _mm512_reduce_add_ps(sb) + bn;
            }
        }
    }
}

// --- the direct path with 8-bit activations (TUNA_WTYPE_Q8ACT=1): Q8_0, Q4_0, Q4_1 -----------
//
// Each input row is quantized per block of 32: dx = max|x| / 127 (0 for a block of zeros),
// qx = rint(x / dx) (ties to even, |qx| <= 127), and its exact fp32 block sum sx = sum x (in
// element order). A block of weights then costs one integer dot product of unsigned codes and
// signed qx (vpmaddubsw, then vpmaddwd by ones: 8 lanes of 4 products each; a pair of products
// is at most 2 * 128 * 127, so the 16-bit sums never saturate and every lane is exact, the
// value AVX512-VNNI's vpdpbusd gives; the VNNI kernel this replaced was no faster on a Zen 4):
// Q8_0 d dx sum(q qx) (Q8_0's signed q by its magnitude, qx by q's sign); Q4_1
// d dx sum(q qx) + m sx; Q4_0 d (dx sum(q qx) - 8 sx). Even and odd blocks go to two
// accumulators (8 lanes, fma with the block's scale d dx; the scalar terms alike), added at the
// end, in a fixed order, so the bits depend on neither the thread count nor the CPU (AVX2 and
// AVX-512 machines alike; test_wtype checks them against a scalar transcription). The type is a
// constant in each instantiation (1.20x the decoding speed of the loop that tested it per
// block, one accumulator for the scalar terms). The fp32 path stays the oracle: this one
// differs from it by the activation's rounding (|x - dx qx| <= dx/2 per element), within 1/127
// of sum |x w| per block.

#define Q8ACT_MAX (8 * 8192) /* M * K this path takes (its buffers are on the stack) */
#define XQ        __attribute__((target("avx2,fma,f16c")))

static int q8act_on(void) {
    const char *e = getenv("TUNA_WTYPE_Q8ACT");
    return e && *e && *e != '0';
}

static int direct_q8_takes(WType t, int K, int M) {
    static int cpu = -1;
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
    return cpu && (t == WT_Q8_0 || t == WT_Q4_0 || t == WT_Q4_1) && K % 32 == 0 &&
           (size_t)M * (size_t)K <= Q8ACT_MAX && q8act_on();
}

/* x (K) in blocks of 32 into qx, dx, sx as above */
XQ static void quant_x8(const float *x, int K, int8_t *qx, float *dx, float *sx) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / 32; b++) {
        const float *p = x + (size_t)b * 32;
        __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16),
               v3 = _mm256_loadu_ps(p + 24);
        __m256 mx = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        float s = 0.0f;
        for (int i = 0; i < 32; i++)
            s += p[i];
        sx[b] = s;
        dx[b] = amax / 127.0f;
        __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)); /* rint: ties to even */
        __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
        __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv));
        __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        /* packs work within 128-bit halves: dwords come out q0lo q1lo q2lo q3lo q0hi .. q3hi */
        __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        _mm256_storeu_si256((__m256i *)(qx + (size_t)b * 32),
                            _mm256_permutevar8x32_epi32(q8, order));
    }
}

/* block b of a row against block b of an input row: acc += the 8 integer lanes times d dx,
 * *accs += Q4_1's m sx or Q4_0's -8 d sx (t a constant in each caller) */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
q8_block(WType t, int bb, const uint8_t *row, const int8_t *q, const float *dm, const float *sm,
         int b, __m256 *acc, float *accs) {
    const uint8_t *blk = row + (size_t)b * (size_t)bb;
    __m256i xv = _mm256_loadu_si256((const __m256i *)(q + (size_t)b * 32)), u;
    float d = h2f(blk);
    if (t == WT_Q8_0) {
        __m256i wq = _mm256_loadu_si256((const __m256i *)(blk + 2));
        u = _mm256_sign_epi8(wq, wq);
        xv = _mm256_sign_epi8(xv, wq);
    } else {
        const __m128i m4 = _mm_set1_epi8(0x0F);
        __m128i c = _mm_loadu_si128((const __m128i *)(blk + (t == WT_Q4_1 ? 4 : 2)));
        u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(c, 4), m4), _mm_and_si128(c, m4));
    }
    __m256i isum = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), _mm256_set1_epi16(1));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * dm[b]), *acc);
    if (t == WT_Q4_1)
        *accs += h2f(blk + 2) * sm[b];
    else if (t == WT_Q4_0)
        *accs -= 8.0f * d * sm[b];
}

/* rows [lo, hi) of out (M, N) for weights of type t (a constant in each of direct_q8's calls)
 * and M quantized input rows: even blocks into one accumulator, odd into another (vector and
 * scalar alike), added at the end */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
direct_q8_t(WType t, float *out, const int8_t *qx, const float *dx, const float *sx,
            const Weight *w, const float *bias, int M, size_t lo, size_t hi) {
    int K = w->cols, N = w->rows, nb = K / 32, bb = wtype_info[t].block_bytes;
    for (size_t n = lo; n < hi; n++) {
        WAux aux;
        const uint8_t *row = row_ahead(w, n, hi, (size_t)nb * (size_t)bb, &aux);
        for (int m = 0; m < M; m++) {
            const int8_t *q = qx + (size_t)m * K;
            const float *dm = dx + (size_t)m * nb, *sm = sx + (size_t)m * nb;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
            float accs0 = 0.0f, accs1 = 0.0f;
            int b = 0;
            for (; b + 1 < nb; b += 2) {
                q8_block(t, bb, row, q, dm, sm, b, &acc0, &accs0);
                q8_block(t, bb, row, q, dm, sm, b + 1, &acc1, &accs1);
            }
            if (b < nb) q8_block(t, bb, row, q, dm, sm, b, &acc0, &accs0);
            out[(size_t)m * N + n] = cpu_hsum8(_mm256_add_ps(acc0, acc1)) + (accs0 + accs1) +
                                     (bias ? bias[n] : 0.0f);
        }
    }
}

/* rows [lo, hi) of out (M, N) with M <= 8 input rows of 8-bit activations */
XQ static void direct_q8(float *out, const float *in, const Weight *w, const float *bias, int M,
                         size_t lo, size_t hi) {
    int K = w->cols, nb = K / 32;
    int8_t qx[Q8ACT_MAX] __attribute__((aligned(64)));
    float dx[Q8ACT_MAX / 32], sx[Q8ACT_MAX / 32];
    for (int m = 0; m < M; m++)
        quant_x8(in + (size_t)m * K, K, qx + (size_t)m * K, dx + (size_t)m * nb,
                 sx + (size_t)m * nb);
    if (w->type == WT_Q8_0)
        direct_q8_t(WT_Q8_0, out, qx, dx, sx, w, bias, M, lo, hi);
    else if (w->type == WT_Q4_1)
        direct_q8_t(WT_Q4_1, out, qx, dx, sx, w, bias, M, lo, hi);
    else
        direct_q8_t(WT_Q4_0, out, qx, dx, sx, w, bias, M, lo, hi);
}

/* rows n0 .. n0+nn-1 of w in fp32 into dst (nn, K), 32 weights at a time in registers */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static void
dequant_rows_x(const Weight *w, int n0, int nn, float *dst) {
    int K = w->cols, ng = K / 32;
    WType t = w->type;
    int bb = wtype_info[t].block_bytes;
    float code[16], sc[DIRECT_X_MAX_K / 16], mn[DIRECT_X_MAX_K / 32];
    if (t == WT_NF4 || t == WT_FP4)
        wtype_code4(t, code);
    else
        memset(code, 0, sizeof code);
    __m512 lut = _mm512_loadu_ps(code);
    for (int n = n0; n < n0 + nn; n++) {
        WAux aux;
        const uint8_t *row = weight_row(w, n, &aux);
        float *d = dst + (size_t)(n - n0) * K;
        row_scales_x(t, row, K, &aux, sc, mn);
        for (int j = 0; j < ng; j++) {
            __m512 w0, w1;
            group_x(t, bb, row, sc, mn, lut, j, &w0, &w1, 1);
            _mm512_storeu_ps(d + (size_t)j * 32, w0);
            _mm512_storeu_ps(d + (size_t)j * 32 + 16, w1);
        }
    }
}

// --- the direct path and the dequantization on AVX2 (a CPU without AVX-512) --------------------
//
// The same kernels on 8 lanes (an AMD Zen 3 has AVX2, FMA and F16C and no AVX-512): a group of
// 32 weights is four ymm. The dequantization is exact as group_x's (dequant_rows_2: the bits of
// weight_dequantize_rows); direct_2's sums run in its own order (four accumulators of 8 lanes
// an input row), each output on one thread, an input row's sums not depending on its pair.

#define X2 __attribute__((target("avx2,fma,f16c")))

/* 8 bytes at p as 8 int32, unsigned or signed */
X2 static inline __m256i u8x8_2(__m128i v) {
    return _mm256_cvtepu8_epi32(v);
}

/* the 16 bytes of v as two vectors of 8 floats (bytes 0..7 and 8..15) */
X2 static inline void u8x16_2(__m128i v, __m256 *a, __m256 *b) {
    *a = _mm256_cvtepi32_ps(u8x8_2(v));
    *b = _mm256_cvtepi32_ps(u8x8_2(_mm_srli_si128(v, 8)));
}

/* 16 of the 16-entry table's values, by the codes in the 16 bytes of v */
X2 static inline void lut16_2(__m128i v, __m256 lo8, __m256 hi8, __m256 *a, __m256 *b) {
    __m256i i0 = u8x8_2(v), i1 = u8x8_2(_mm_srli_si128(v, 8));
    /* permutevar8x32 reads an index's low 3 bits; bit 3 (moved to the sign) picks the half */
    *a = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, i0), _mm256_permutevar8x32_ps(hi8, i0),
                          _mm256_castsi256_ps(_mm256_slli_epi32(i0, 28)));
    *b = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, i1), _mm256_permutevar8x32_ps(hi8, i1),
                          _mm256_castsi256_ps(_mm256_slli_epi32(i1, 28)));
}

/* group j of a row (elements 32j .. 32j+31) in w[0..3], as group_x makes it (exact alike) */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
group_2(WType t, int block_bytes, const uint8_t *row, const float *sc, const float *mn,
        __m256 lut_lo, __m256 lut_hi, int j, __m256 w[4], int exact) {
    __m128i m4 = _mm_set1_epi8(0x0F);
    if (is_k_type(t)) {
        const uint8_t *b = row + (size_t)(j / 8) * (size_t)block_bytes;
        int g8 = j % 8;
        __m256i q;
        if (t == WT_Q6_K) {
            __m256i m4y = _mm256_set1_epi8(0x0F);
            int h = g8 / 4, g = g8 % 4;
            __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (g & 1)));
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            ql = _mm256_and_si256(_mm256_srli_epi16(ql, g >= 2 ? 4 : 0), m4y);
            qh = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * g), _mm256_set1_epi8(3));
            q = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
        } else {
            int p = g8 / 2, hi = g8 % 2;
            const uint8_t *qs = b + (t == WT_Q4_K ? 16 : 48) + 32 * p;
            q = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs), 4 * hi),
                                 _mm256_set1_epi8(0x0F));
            if (t == WT_Q5_K) {
                __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
                qh = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * p + hi), _mm256_set1_epi8(1));
                q = _mm256_or_si256(q, _mm256_slli_epi16(qh, 4));
            }
        }
        u8x16_2(_mm256_castsi256_si128(q), &w[0], &w[1]);
        u8x16_2(_mm256_extracti128_si256(q, 1), &w[2], &w[3]);
        if (t == WT_Q6_K) {
            __m256 off = _mm256_set1_ps(32.0f);
            __m256 s0 = _mm256_set1_ps(sc[2 * j]), s1 = _mm256_set1_ps(sc[2 * j + 1]);
            w[0] = _mm256_mul_ps(_mm256_sub_ps(w[0], off), s0);
            w[1] = _mm256_mul_ps(_mm256_sub_ps(w[1], off), s0);
            w[2] = _mm256_mul_ps(_mm256_sub_ps(w[2], off), s1);
            w[3] = _mm256_mul_ps(_mm256_sub_ps(w[3], off), s1);
            return;
        }
        __m256 s = _mm256_set1_ps(sc[j]), m = _mm256_set1_ps(mn[j]);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) /* a product then a difference, as deq_q4_k_block */
            w[i] = _mm256_sub_ps(_mm256_mul_ps(w[i], s), m);
    } else if (t == WT_BF16 || t == WT_F16) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m128i h = _mm_loadu_si128((const __m128i *)(row + (size_t)j * 64 + 16 * i));
            w[i] = t == WT_F16
                           ? _mm256_cvtph_ps(h)
                           : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        }
    } else if (t == WT_NF4 || t == WT_FP4) {
        __m128i q = _mm_loadu_si128((const __m128i *)(row + (size_t)j * 16));
        __m128i h = _mm_and_si128(_mm_srli_epi16(q, 4), m4), l = _mm_and_si128(q, m4);
        lut16_2(_mm_unpacklo_epi8(h, l), lut_lo, lut_hi, &w[0], &w[1]);
        lut16_2(_mm_unpackhi_epi8(h, l), lut_lo, lut_hi, &w[2], &w[3]);
        __m256 s = _mm256_set1_ps(sc[j / 2]);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_mul_ps(w[i], s);
    } else {
        const uint8_t *b = row + (size_t)j * (size_t)block_bytes;
        __m256 dv = _mm256_set1_ps(h2f(b));
        __m256 mv = _mm256_setzero_ps();
        if (t == WT_Q8_0) {
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                w[i] = _mm256_cvtepi32_ps(
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i))));
        } else {
            __m128i q = _mm_loadu_si128((const __m128i *)(b + (t == WT_Q4_1 ? 4 : 2)));
            u8x16_2(_mm_and_si128(q, m4), &w[0], &w[1]);
            u8x16_2(_mm_and_si128(_mm_srli_epi16(q, 4), m4), &w[2], &w[3]);
            if (t == WT_Q4_0)
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    w[i] = _mm256_sub_ps(w[i], _mm256_set1_ps(8.0f));
            else
                mv = _mm256_set1_ps(h2f(b + 2));
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            if (t != WT_Q4_1)
                w[i] = _mm256_mul_ps(w[i], dv);
            else if (exact)
                w[i] = _mm256_add_ps(_mm256_mul_ps(w[i], dv), mv);
            else
                w[i] = _mm256_fmadd_ps(w[i], dv, mv);
    }
}

/* the table of NF4/FP4's codes in two halves (zeros for the other types) */
X2 static void lut_2(WType t, __m256 *lo, __m256 *hi) {
    float code[16] = {0};
    if (t == WT_NF4 || t == WT_FP4) wtype_code4(t, code);
    *lo = _mm256_loadu_ps(code);
    *hi = _mm256_loadu_ps(code + 8);
}

/* direct_x on AVX2: rows [lo, hi) of out (M, N), input rows two at a time; for one type t (a
 * constant in each of direct_2's calls: the type's tests out of the loop) */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
direct_2_t(WType t, float *out, const float *in, const Weight *w, const float *bias, int M,
           size_t lo, size_t hi) {
    int K = w->cols, N = w->rows, ng = K / 32;
    int bb = wtype_info[t].block_bytes;
    __m256 lut_lo, lut_hi;
    lut_2(t, &lut_lo, &lut_hi);
    float sc[DIRECT_X_MAX_K / 16], mn[DIRECT_X_MAX_K / 32]; /* row_scales_x */
    size_t rbytes = (size_t)(K / wtype_info[t].block) * (size_t)bb;
    for (size_t n = lo; n < hi; n++) {
        WAux aux;
        const uint8_t *row = row_ahead(w, n, hi, rbytes, &aux);
        row_scales_x(t, row, K, &aux, sc, mn);
        for (int m0 = 0; m0 < M; m0 += 2) {
            int two = m0 + 1 < M;
            const float *x0 = in + (size_t)m0 * K, *x1 = two ? x0 + K : x0;
            __m256 a[4], b[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                a[i] = b[i] = _mm256_setzero_ps();
            for (int j = 0; j < ng; j++) {
                __m256 wv[4];
                group_2(t, bb, row, sc, mn, lut_lo, lut_hi, j, wv, 0);
                const float *p = x0 + (size_t)j * 32, *q = x1 + (size_t)j * 32;
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    a[i] = _mm256_fmadd_ps(wv[i], _mm256_loadu_ps(p + 8 * i), a[i]);
                if (two)
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++)
                        b[i] = _mm256_fmadd_ps(wv[i], _mm256_loadu_ps(q + 8 * i), b[i]);
            }
            float bn = bias ? bias[n] : 0.0f;
            out[(size_t)m0 * N + n] =
                    cpu_hsum8(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))) +
                    bn;
            if (two)
                out[(size_t)(m0 + 1) * N + n] =
                        cpu_hsum8(_mm256_add_ps(_mm256_add_ps(b[0], b[1]),
                                                _mm256_add_ps(b[2], b[3]))) +
                        bn;
        }
    }
}

X2 static void direct_2(float *out, const float *in, const Weight *w, const float *bias, int M,
                        size_t lo, size_t hi) {
    switch (w->type) {
#define DIRECT_2_CASE(T)                                                                           \
    case T: direct_2_t(T, out, in, w, bias, M, lo, hi); break;
        DIRECT_2_CASE(WT_Q8_0)
        DIRECT_2_CASE(WT_Q4_0)
        DIRECT_2_CASE(WT_Q4_1)
        DIRECT_2_CASE(WT_NF4)
        DIRECT_2_CASE(WT_FP4)
        DIRECT_2_CASE(WT_BF16)
        DIRECT_2_CASE(WT_F16)
        DIRECT_2_CASE(WT_Q4_K)
        DIRECT_2_CASE(WT_Q5_K)
        DIRECT_2_CASE(WT_Q6_K)
#undef DIRECT_2_CASE
    default: direct_2_t(w->type, out, in, w, bias, M, lo, hi);
    }
}

/* dequant_rows_x on AVX2 */
X2 static void dequant_rows_2(const Weight *w, int n0, int nn, float *dst) {
    int K = w->cols, ng = K / 32;
    WType t = w->type;
    int bb = wtype_info[t].block_bytes;
    __m256 lut_lo, lut_hi;
    lut_2(t, &lut_lo, &lut_hi);
    float sc[DIRECT_X_MAX_K / 16], mn[DIRECT_X_MAX_K / 32];
    for (int n = n0; n < n0 + nn; n++) {
        WAux aux;
        const uint8_t *row = weight_row(w, n, &aux);
        float *d = dst + (size_t)(n - n0) * K;
        row_scales_x(t, row, K, &aux, sc, mn);
        for (int j = 0; j < ng; j++) {
            __m256 wv[4];
            group_2(t, bb, row, sc, mn, lut_lo, lut_hi, j, wv, 1);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                _mm256_storeu_ps(d + (size_t)j * 32 + 8 * i, wv[i]);
        }
    }
}

/* The fused kernels this CPU runs, read on every call (a getenv, next to a matmul) so that a test
 * can switch paths: 2 AVX-512, 1 AVX2 (TUNA_WTYPE_AVX2=1 forces it on an AVX-512 CPU), 0 none
 * (TUNA_WTYPE_PLAIN=1 forces that) */
static int fused_isa(void) {
    static int cpu = -1;
    if (cpu < 0) {
        int x2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                 __builtin_cpu_supports("f16c");
        cpu = x2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                              __builtin_cpu_supports("avx512vl")
                      ? 2
                      : x2;
    }
    const char *e = getenv("TUNA_WTYPE_PLAIN"), *a = getenv("TUNA_WTYPE_AVX2");
    if (e && *e && *e != '0') return 0;
    return cpu == 2 && a && *a && *a != '0' ? 1 : cpu;
}
#endif

/* The direct path's kernel for type t, rows of K and M input rows: 0 plain, 1 AVX2, 2 AVX-512,
 * 3 8-bit activations (direct_q8) */
static int direct_kind(WType t, int K, int M) {
#ifdef WTYPE_X86
    if (direct_q8_takes(t, K, M)) return 3;
    return direct_x_takes(t, K) ? fused_isa() : 0;
#else
    (void)t, (void)K, (void)M;
    return 0;
#endif
}

const char *cpu_matmul_w_path(WType t, int K, int M) {
    static const char *const names[] = {"direct plain", "direct avx2", "direct avx512",
                                        "direct avx2 q8 activations"};
    return M > WDIRECT_MAX_M ? "tiles+sgemm" : names[direct_kind(t, K, M)];
}

/* rows n0 .. n0+nn-1 of w in fp32 (the fused kernel where it applies, else the table's): the
 * bits of weight_dequantize_rows */
void cpu_dequant_rows(const Weight *w, int n0, int nn, float *dst) {
#ifdef WTYPE_X86
    if (direct_x_takes(w->type, w->cols)) {
        int isa = fused_isa();
        if (isa == 2) dequant_rows_x(w, n0, nn, dst);
        if (isa == 1) dequant_rows_2(w, n0, nn, dst);
        if (isa) return;
    }
#endif
    weight_dequantize_rows(w, n0, nn, dst);
}

// --- the tiled path -------------------------------------------------------------------------------

static void tiles_fwd(float *out, const float *in, const Weight *w, const float *bias, int M,
                      int tn, float *buf, size_t lo, size_t hi) {
    int K = w->cols, N = w->rows;
    for (size_t t = lo; t < hi; t++) {
        int n0 = (int)t * tn, nn = N - n0 < tn ? N - n0 : tn;
        cpu_dequant_rows(w, n0, nn, buf);
        cpu_sgemm(1, 0, 1, M, nn, K, 1.0f, in, K, buf, K, 0.0f, out + n0, N);
        if (bias)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < nn; n++)
                    out[(size_t)m * N + n0 + n] += bias[n0 + n];
    }
}

/* rows [lo, hi) of out (M, N) on the direct path's kernel `kind` */
static void direct_rows(int kind, float *out, const float *in, const Weight *w, const float *bias,
                        int M, size_t lo, size_t hi) {
#ifdef WTYPE_X86
    if (kind == 3)
        direct_q8(out, in, w, bias, M, lo, hi);
    else if (kind == 2)
        direct_x(out, in, w, bias, M, lo, hi);
    else if (kind == 1)
        direct_2(out, in, w, bias, M, lo, hi);
    else
#else
    (void)kind;
#endif
        direct_plain(out, in, w, bias, M, lo, hi);
}

/* rows [lo, hi) of n products' outputs laid end to end (weight i's rows from off[i]) */
static void direct_span(int n, float *const *outs, const float *in, const Weight *const *ws,
                        const float *const *biases, const int *kinds, const size_t *off, int M,
                        size_t lo, size_t hi) {
    for (int i = 0; i < n; i++) {
        size_t a = lo > off[i] ? lo : off[i], b = hi < off[i + 1] ? hi : off[i + 1];
        if (a < b)
            direct_rows(kinds[i], outs[i], in, ws[i], biases ? biases[i] : NULL, M, a - off[i],
                        b - off[i]);
    }
}

void cpu_matmul_w_fwd(Backend *be, float *out, const float *in, const Weight *w, const float *bias,
                      int M) {
    int K = w->cols, N = w->rows;
    if (M <= 0 || N <= 0) return;
    if (be->mm_bf16) { /* gemm_bf16.c */
        cpu_matmul_w_bf16_fwd(be, out, in, w, bias, M);
        return;
    }
    if (w->type == WT_F32) {
        be->ops->matmul_fwd(be, out, in, w->data, bias, M, K, N);
        return;
    }
    size_t work = (size_t)M * K * N;
    int nth = work >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
    if (M <= WDIRECT_MAX_M) {
        nth = (size_t)K * N >= 16384 ? be->n_threads : 1;
        int kind = direct_kind(w->type, K, M);
        CPU_PAR_RANGE(nth, (size_t)N, direct_rows(kind, out, in, w, bias, M, lo, hi));
        return;
    }
    int tn = tile_rows(K, N), ntiles = (N + tn - 1) / tn;
    if (nth > ntiles) nth = ntiles;
    size_t per = (size_t)tn * (size_t)K;
    float *bufs = malloc(per * (size_t)(nth > 0 ? nth : 1) * sizeof(float));
    if (!bufs) {
        if (!be->err.code)
            tuna_errf(&be->err, TUNA_ENOMEM, "cpu: out of memory for a %d x %d weight tile", tn, K);
        return;
    }
    if (nth <= 1) {
        tiles_fwd(out, in, w, bias, M, tn, bufs, 0, (size_t)ntiles);
    } else {
#pragma omp parallel num_threads(nth)
        {
            float *buf = bufs + per * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
            for (int t = 0; t < ntiles; t++)
                tiles_fwd(out, in, w, bias, M, tn, buf, (size_t)t, (size_t)t + 1);
        }
    }
    free(bufs);
}

void cpu_matmul_w_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                        const Weight *const *ws, const float *const *biases, int M) {
    if (be->mm_bf16 && cpu_matmul_w_bf16_fwd_n(be, n, outs, in, ws, biases, M))
        return; /* gemm_bf16.c: one product */
    /* decoding (q, k, v; gate, up): the weights' rows end to end in one parallel region, where
     * each product had its own (OpenMP's waits were 15% of a SmolLM2 Q4_1 token on 2 threads);
     * each output computed by the same kernel as alone, so the same bits */
    int same = n > 1 && n <= 8 && M > 0 && M <= WDIRECT_MAX_M && !be->mm_bf16, kinds[8];
    size_t off[9] = {0};
    for (int i = 0; same && i < n; i++) {
        same = ws[i]->type != WT_F32 && ws[i]->cols == ws[0]->cols && ws[i]->rows > 0;
        kinds[i] = same ? direct_kind(ws[i]->type, ws[i]->cols, M) : 0;
        off[i + 1] = off[i] + (size_t)(same ? ws[i]->rows : 0);
    }
    if (same) {
        int nth = (size_t)ws[0]->cols * off[n] >= 16384 ? be->n_threads : 1;
        CPU_PAR_RANGE(nth, off[n], direct_span(n, outs, in, ws, biases, kinds, off, M, lo, hi));
        return;
    }
    for (int i = 0; i < n; i++)
        cpu_matmul_w_fwd(be, outs[i], in, ws[i], biases ? biases[i] : NULL, M);
}

void cpu_matmul_w_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                         int acc) {
    int K = w->cols, N = w->rows;
    if (M <= 0) return;
    if (N <= 0 || w->type == WT_F32) { /* the accumulating products, din zeroed first for acc 0 */
        if (!acc) memset(din, 0, sizeof(float) * (size_t)M * (size_t)K);
        if (N > 0 && be->mm_bf16)
            cpu_matmul_bwd_bf16(be, din, NULL, dout, NULL, w->data, M, K, N);
        else if (N > 0)
            be->ops->matmul_bwd(be, din, NULL, NULL, dout, NULL, w->data, M, K, N);
        return;
    }
    if (be->mm_bf16) { /* gemm_bf16.c */
        cpu_matmul_w_bf16_bwd_in(be, din, dout, w, M, acc);
        return;
    }
    size_t work = (size_t)M * K * N;
    int nth = work >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
    int tn = 4 * tile_rows(K, N);
    if (tn > N) tn = N;
    float *buf = malloc((size_t)tn * (size_t)K * sizeof(float));
    if (!buf) {
        if (!be->err.code)
            tuna_errf(&be->err, TUNA_ENOMEM, "cpu: out of memory for a %d x %d weight tile", tn, K);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += tn) {
        int nn = N - n0 < tn ? N - n0 : tn;
        CPU_PAR_RANGE(nth, (size_t)nn,
                      cpu_dequant_rows(w, n0 + (int)lo, (int)(hi - lo), buf + lo * (size_t)K));
        cpu_sgemm(nth, 0, 0, M, K, nn, 1.0f, dout + n0, N, buf, K, acc || n0 ? 1.0f : 0.0f, din, K);
    }
    free(buf);
}
