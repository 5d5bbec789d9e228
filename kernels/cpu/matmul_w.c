/* matmul_w.c: the cpu backend's matrix products with a typed weight (kernels/wtype.h).
 *
 * No fp32 copy of the whole matrix is made:
 * - M > WDIRECT_MAX_M (prefill, training): W is dequantized a tile of rows at a time into a
 *   per-thread fp32 buffer of about 256 KiB (L2), and OpenBLAS multiplies each tile on one
 *   thread; OpenMP runs the tiles. Tile edges do not depend on the thread count, so neither
 *   do the bits.
 * - M <= WDIRECT_MAX_M (decoding): each thread walks its rows of W a chunk of blocks at a time,
 *   dequantizes the chunk into an L1 buffer and takes its dot products with the M inputs at
 *   once. Q8_0, Q4_0 and Q4_1 have a fused AVX-512 kernel that dequantizes in registers (chosen
 *   at run time with __builtin_cpu_supports; TUNA_WTYPE_PLAIN=1 forces the plain path).
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

static int tile_rows(int K, int N) {
    int t = (int)(65536 / (K > 0 ? K : 1)); /* 256 KiB of fp32 */
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
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static inline float
h2f_x(const uint8_t *p) {
    return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8)));
}

/* 32 4-bit codes of a Q4_0/Q4_1 block as two vectors of 16 floats: elements 0..15 (low
 * nibbles) and 16..31 (high nibbles) */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static inline void
nibbles_x(const uint8_t *qs, __m512 *lo, __m512 *hi) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m)));
}

/* rows [lo, hi) of out (M, N) for Q8_0, Q4_0, Q4_1: per block, each input row's dot with the
 * block's codes, times the scale (Q4_1: plus min times the inputs' block sum) */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) static void
direct_x(float *out, const float *in, const Weight *w, const float *bias, int M, size_t lo,
         size_t hi) {
    int K = w->cols, N = w->rows, nb = K / 32;
    const WTypeInfo *ti = &wtype_info[w->type];
    size_t rb = (size_t)nb * (size_t)ti->block_bytes;
    for (size_t n = lo; n < hi; n++) {
        const uint8_t *b = (const uint8_t *)w->data + n * rb;
        __m512 acc[WDIRECT_MAX_M];
        for (int m = 0; m < M; m++)
            acc[m] = _mm512_setzero_ps();
        for (int j = 0; j < nb; j++, b += ti->block_bytes) {
            __m512 c0, c1, dv = _mm512_set1_ps(h2f_x(b)), mv = _mm512_setzero_ps();
            if (w->type == WT_Q8_0) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
                c0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
                c1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
            } else if (w->type == WT_Q4_0) {
                nibbles_x(b + 2, &c0, &c1);
                c0 = _mm512_sub_ps(c0, _mm512_set1_ps(8.0f));
                c1 = _mm512_sub_ps(c1, _mm512_set1_ps(8.0f));
            } else { /* Q4_1 */
                nibbles_x(b + 4, &c0, &c1);
                mv = _mm512_set1_ps(h2f_x(b + 2));
            }
            /* the block's weights, in registers */
            __m512 w0 = _mm512_fmadd_ps(c0, dv, mv), w1 = _mm512_fmadd_ps(c1, dv, mv);
            for (int m = 0; m < M; m++) {
                const float *x = in + (size_t)m * K + (size_t)j * 32;
                acc[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[m]);
                acc[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[m]);
            }
        }
        for (int m = 0; m < M; m++)
            out[(size_t)m * N + n] = _mm512_reduce_add_ps(acc[m]) + (bias ? bias[n] : 0.0f);
    }
}

static int use_avx512(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("TUNA_WTYPE_PLAIN");
        v = !(e && *e && *e != '0') && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("f16c");
    }
    return v;
}
#endif

const char *cpu_matmul_w_path(WType t, int M) {
    if (M > WDIRECT_MAX_M) return "tiles+sgemm";
#ifdef WTYPE_X86
    if (use_avx512() && (t == WT_Q8_0 || t == WT_Q4_0 || t == WT_Q4_1)) return "direct avx512";
#endif
    (void)t;
    return "direct plain";
}

// --- the tiled path -------------------------------------------------------------------------------

static void tiles_fwd(float *out, const float *in, const Weight *w, const float *bias, int M,
                      int tn, float *buf, size_t lo, size_t hi) {
    int K = w->cols, N = w->rows;
    for (size_t t = lo; t < hi; t++) {
        int n0 = (int)t * tn, nn = N - n0 < tn ? N - n0 : tn;
        weight_dequantize_rows(w, n0, nn, buf);
        cpu_sgemm(1, 0, 1, M, nn, K, 1.0f, in, K, buf, K, 0.0f, out + n0, N);
        if (bias)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < nn; n++)
                    out[(size_t)m * N + n0 + n] += bias[n0 + n];
    }
}

void cpu_matmul_w_fwd(Backend *be, float *out, const float *in, const Weight *w, const float *bias,
                      int M) {
    int K = w->cols, N = w->rows;
    if (M <= 0 || N <= 0) return;
    if (w->type == WT_F32) {
        be->ops->matmul_fwd(be, out, in, w->data, bias, M, K, N);
        return;
    }
    size_t work = (size_t)M * K * N;
    int nth = work >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
    if (M <= WDIRECT_MAX_M) {
        nth = (size_t)K * N >= 16384 ? be->n_threads : 1;
#ifdef WTYPE_X86
        if (use_avx512() && (w->type == WT_Q8_0 || w->type == WT_Q4_0 || w->type == WT_Q4_1)) {
            CPU_PAR_RANGE(nth, (size_t)N, direct_x(out, in, w, bias, M, lo, hi));
            return;
        }
#endif
        CPU_PAR_RANGE(nth, (size_t)N, direct_plain(out, in, w, bias, M, lo, hi));
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

void cpu_matmul_w_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M) {
    int K = w->cols, N = w->rows;
    if (M <= 0 || N <= 0) return;
    if (w->type == WT_F32) {
        be->ops->matmul_bwd(be, din, NULL, NULL, dout, NULL, w->data, M, K, N);
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
        CPU_PAR_RANGE(
                nth, (size_t)nn,
                weight_dequantize_rows(w, n0 + (int)lo, (int)(hi - lo), buf + lo * (size_t)K));
        cpu_sgemm(nth, 0, 0, M, K, nn, 1.0f, dout + n0, N, buf, K, 1.0f, din, K);
    }
    free(buf);
}
