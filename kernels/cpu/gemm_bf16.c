/* gemm_bf16.c: the cpu backend's matrix products under Backend.mm_bf16: both operands rounded to
 * bf16 (to nearest even, as wtype_f32_to_bf16), products summed in fp32, outputs fp32.
 *
 * Two paths, chosen on every call (cpu_bf16_path):
 * - "avx512bf16": a kernel of our own on vdpbf16ps. Each block of KC elements of K packs op(A)
 *   into panels of MR rows and op(B) into panels of NR columns, both as bf16 pairs along K
 *   (the rounding happens in the packing; a bf16 weight is copied as is). A 12 x 32 tile of C
 *   is 24 zmm accumulators, zeroed per block and added to C at its end.
 * - "plain": blocks of the operands rounded to bf16 values held in fp32, then cpu_sgemm. The
 *   products are the same (a product of two bf16 numbers is exact in fp32); the sums go in
 *   OpenBLAS's order. TUNA_BF16=plain forces it, and a CPU without AVX512-BF16 takes it.
 * No AMX path: neither the kernel nor OpenBLAS 0.3.21's sbgemm uses AMX tiles (README).
 *
 * The bits do not depend on the thread count: the K blocks are fixed (KC), each tile of C is
 * computed by one thread over the whole of K in block order, and cpu_sgemm is thread-invariant.
 * Only the summation order (and vdpbf16ps' flushing of denormals to zero) separates the paths. */
#include <stdlib.h>
#include <string.h>

#include "../wtype.h"
#include "cpu_backend.h"
#include "cpu_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BF16_X86 1
#endif

#define MR 12  /* rows of a tile of C */
#define NR 32  /* columns of a tile of C (two zmm of fp32) */
#define KC 256 /* elements of K per block (even) */
#define MC 96  /* rows of C per task (a multiple of MR) */
#define NC 512 /* columns of C per task (a multiple of NR) */
/* floats of each operand block the plain path rounds at once */
#define PLAIN_BLOCK (1u << 22)

/* An operand seen as rows of K: element (r, k) is p[r * ld + k], or p[k * ld + r] when kmajor;
 * fp32 at f or bf16 at h (one of them). op(A) is (M, K); op(B) is seen as its transpose (N, K). */
typedef struct View {
    const float *f;
    const uint16_t *h;
    size_t ld;
    int kmajor;
} View;

static inline uint16_t bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static inline uint16_t view_at(const View *v, size_t r, size_t k) {
    size_t i = v->kmajor ? k * v->ld + r : r * v->ld + k;
    return v->h ? v->h[i] : bf16_round(v->f[i]);
}

const char *cpu_bf16_path(void) {
#ifdef BF16_X86
    static int cpu = -1;
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512bf16");
    const char *e = getenv("TUNA_BF16");
    if (cpu && !(e && !strcmp(e, "plain"))) return "avx512bf16";
#endif
    return "plain";
}

// --- the plain path: rounded fp32 copies and cpu_sgemm -----------------------------------------

/* dst (rn, K) = rows r0 .. r0+rn-1 of v, rounded to bf16 and held in fp32 */
static void view_rows_f32(const View *v, size_t r0, size_t K, float *dst, size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; r++)
        for (size_t k = 0; k < K; k++)
            dst[r * K + k] = bf16_value(view_at(v, r0 + r, k));
}

static int gemm_plain(int nth, const View *a, const View *b, int M, int N, int K, float beta,
                      float *C, int ldc) {
    size_t mb = PLAIN_BLOCK / (size_t)K, nb = mb;
    if (mb > (size_t)M) mb = (size_t)M;
    if (nb > (size_t)N) nb = (size_t)N;
    if (!mb) mb = 1;
    if (!nb) nb = 1;
    float *ab = malloc(mb * (size_t)K * sizeof(float)),
          *bb = malloc(nb * (size_t)K * sizeof(float));
    if (!ab || !bb) {
        free(ab);
        free(bb);
        return -1;
    }
    for (size_t n0 = 0; n0 < (size_t)N; n0 += nb) {
        size_t nn = (size_t)N - n0 < nb ? (size_t)N - n0 : nb;
        CPU_PAR_RANGE(nth, nn, view_rows_f32(b, n0, (size_t)K, bb, lo, hi));
        for (size_t m0 = 0; m0 < (size_t)M; m0 += mb) {
            size_t mm = (size_t)M - m0 < mb ? (size_t)M - m0 : mb;
            CPU_PAR_RANGE(nth, mm, view_rows_f32(a, m0, (size_t)K, ab, lo, hi));
            cpu_sgemm(nth, 0, 1, (int)mm, (int)nn, K, 1.0f, ab, K, bb, K, beta,
                      C + m0 * (size_t)ldc + n0, ldc);
        }
    }
    free(ab);
    free(bb);
    return 0;
}

// --- the AVX512-BF16 path ------------------------------------------------------------------------

/* dst [(kn + 1) / 2][P][2] = rows r0 .. r0+rn-1 (rn <= P) and elements k0 .. k0+kn-1 of v as bf16
 * pairs along K; rows past rn and the odd element past kn are zero. */
static void pack_panel(const View *v, size_t r0, int rn, size_t k0, int kn, int P, uint16_t *dst) {
    int kp = (kn + 1) / 2;
    if (rn < P || kn % 2) memset(dst, 0, (size_t)kp * (size_t)P * 2 * sizeof *dst);
    if (!v->kmajor && !v->h) {
        for (int r = 0; r < rn; r++) {
            const float *row = v->f + (r0 + (size_t)r) * v->ld + k0;
            uint16_t *d = dst + 2 * r;
            for (int k = 0; k < kn; k++)
                d[(size_t)(k >> 1) * P * 2 + (k & 1)] = bf16_round(row[k]);
        }
        return;
    }
    if (v->kmajor && !v->h) {
        for (int k = 0; k < kn; k++) {
            const float *col = v->f + (k0 + (size_t)k) * v->ld + r0;
            uint16_t *d = dst + (size_t)(k >> 1) * P * 2 + (k & 1);
            for (int r = 0; r < rn; r++)
                d[2 * r] = bf16_round(col[r]);
        }
        return;
    }
    for (int r = 0; r < rn; r++)
        for (int k = 0; k < kn; k++)
            dst[((size_t)(k >> 1) * P + (size_t)r) * 2 + (size_t)(k & 1)] =
                    view_at(v, r0 + (size_t)r, k0 + (size_t)k);
}

#ifdef BF16_X86
/* c (mr, nr) (+)= the (MR, NR) tile of a (kp pairs of MR rows) and b (kp pairs of NR columns);
 * add: whether c's old values are kept */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
kernel_tile(int kp, const uint16_t *a, const uint16_t *b, float *c, size_t ldc, int mr, int nr,
            int add) {
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR * 2);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR * 2 + 32);
        const uint16_t *ap = a + (size_t)p * MR * 2;
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            int32_t pair;
            memcpy(&pair, ap + 2 * i, sizeof pair);
            __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    for (int i = 0; i < mr; i++) {
        float *ci = c + (size_t)i * ldc;
        __m512 v0 = acc[i][0], v1 = acc[i][1];
        if (add) {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), v1);
        }
        _mm512_mask_storeu_ps(ci, m0, v0);
        _mm512_mask_storeu_ps(ci + 16, m1, v1);
    }
}

/* one task: rows [m0, m0 + MC) and columns [n0, n0 + NC) of C, from the packed block */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
gemm_task(const uint16_t *ap, const uint16_t *bp, int kp, int M, int N, size_t m0, size_t n0,
          float *C, size_t ldc, int add) {
    size_t m1 = m0 + MC < (size_t)M ? m0 + MC : (size_t)M;
    size_t n1 = n0 + NC < (size_t)N ? n0 + NC : (size_t)N;
    for (size_t n = n0; n < n1; n += NR) {
        const uint16_t *b = bp + (n / NR) * (size_t)kp * NR * 2;
        int nr = n1 - n < NR ? (int)(n1 - n) : NR;
        for (size_t m = m0; m < m1; m += MR) {
            const uint16_t *a = ap + (m / MR) * (size_t)kp * MR * 2;
            int mr = m1 - m < MR ? (int)(m1 - m) : MR;
            kernel_tile(kp, a, b, C + m * ldc + n, ldc, mr, nr, add);
        }
    }
}

static int gemm_x(int nth, const View *a, const View *b, int M, int N, int K, float beta, float *C,
                  int ldc) {
    size_t npa = ((size_t)M + MR - 1) / MR, npb = ((size_t)N + NR - 1) / NR;
    size_t kcp = KC / 2; /* pairs per block */
    uint16_t *ap = malloc(npa * kcp * MR * 2 * sizeof *ap);
    uint16_t *bp = malloc(npb * kcp * NR * 2 * sizeof *bp);
    if (!ap || !bp) {
        free(ap);
        free(bp);
        return -1;
    }
    size_t tm = ((size_t)M + MC - 1) / MC, tn = ((size_t)N + NC - 1) / NC;
    long ntasks = (long)(tm * tn), npanels = (long)(npa + npb);
#pragma omp parallel num_threads(nth) if (nth > 1)
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kn = K - k0 < KC ? K - k0 : KC, kp = (kn + 1) / 2;
#pragma omp for schedule(dynamic, 4)
        for (long p = 0; p < npanels; p++) {
            if ((size_t)p < npa) {
                size_t r0 = (size_t)p * MR;
                int rn = (size_t)M - r0 < MR ? (int)((size_t)M - r0) : MR;
                pack_panel(a, r0, rn, (size_t)k0, kn, MR, ap + (size_t)p * kp * MR * 2);
            } else {
                size_t q = (size_t)p - npa, r0 = q * NR;
                int rn = (size_t)N - r0 < NR ? (int)((size_t)N - r0) : NR;
                pack_panel(b, r0, rn, (size_t)k0, kn, NR, bp + q * kp * NR * 2);
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < ntasks; t++)
            gemm_task(ap, bp, kp, M, N, (size_t)t / tn * MC, (size_t)t % tn * NC, C, (size_t)ldc,
                      k0 > 0 || beta != 0.0f);
    }
    free(ap);
    free(bp);
    return 0;
}
#endif

// --- the entry points ----------------------------------------------------------------------------

/* C (M, N) = beta C + op(A) op(B) (beta 0 or 1) in bf16 with fp32 sums; A, B as views */
static int gemm_views(int nth, const View *a, const View *b, int M, int N, int K, float beta,
                      float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int m = 0; m < M; m++)
                memset(C + (size_t)m * ldc, 0, (size_t)N * sizeof *C);
        return 0;
    }
#ifdef BF16_X86
    if (!strcmp(cpu_bf16_path(), "avx512bf16")) return gemm_x(nth, a, b, M, N, K, beta, C, ldc);
#endif
    return gemm_plain(nth, a, b, M, N, K, beta, C, ldc);
}

int cpu_gemm_bf16(int nth, int ta, int tb, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    View a = {A, NULL, (size_t)lda, ta}, b = {B, NULL, (size_t)ldb, !tb};
    return gemm_views(nth, &a, &b, M, N, K, beta, C, ldc);
}

static void oom(Backend *be, const char *what, int M, int N, int K) {
    if (!be->err.code)
        tuna_errf(&be->err, TUNA_ENOMEM, "cpu: out of memory for a bf16 %s (%d x %d x %d)", what, M,
                  K, N);
}

static int threads_of(Backend *be, int M, int K, int N) {
    return (size_t)M * (size_t)K * (size_t)N >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
}

static void bias_add(float *out, const float *bias, int N, size_t ldo, size_t lo, size_t hi) {
    for (size_t m = lo; m < hi; m++)
        for (int n = 0; n < N; n++)
            out[m * ldo + (size_t)n] += bias[n];
}

void cpu_matmul_bf16(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N) {
    int nth = threads_of(be, M, K, N);
    if (cpu_gemm_bf16(nth, 0, 1, M, N, K, in, K, w, K, 0.0f, out, N)) {
        oom(be, "matmul", M, N, K);
        return;
    }
    if (bias) CPU_PAR_RANGE(nth, (size_t)M, bias_add(out, bias, N, (size_t)N, lo, hi));
}

void cpu_matmul_bwd_bf16(Backend *be, float *din, float *dw, const float *dout, const float *in,
                         const float *w, int M, int K, int N) {
    int nth = threads_of(be, M, K, N);
    if (din && cpu_gemm_bf16(nth, 0, 0, M, K, N, dout, N, w, K, 1.0f, din, K)) {
        oom(be, "matmul_bwd", M, N, K);
        return;
    }
    if (dw && cpu_gemm_bf16(nth, 1, 0, N, K, M, dout, N, in, K, 1.0f, dw, K)) {
        oom(be, "matmul_bwd", M, N, K);
        return;
    }
}

/* Rows of a typed weight other than BF16 go through an fp32 tile of about 16 MiB. */
static int typed_tile_rows(int K, int N) {
    int t = (int)(PLAIN_BLOCK / (size_t)(K > 0 ? K : 1)) / NR * NR;
    if (t < NR) t = NR;
    return t < N ? t : N;
}

void cpu_matmul_w_bf16_fwd(Backend *be, float *out, const float *in, const Weight *w,
                           const float *bias, int M) {
    int K = w->cols, N = w->rows, nth = threads_of(be, M, K, N);
    if (w->type == WT_F32) {
        cpu_matmul_bf16(be, out, in, w->data, bias, M, K, N);
        return;
    }
    View a = {in, NULL, (size_t)K, 0};
    if (w->type == WT_BF16) { /* its stored rows, as they are */
        View b = {NULL, w->data, (size_t)K, 0};
        if (gemm_views(nth, &a, &b, M, N, K, 0.0f, out, N)) {
            oom(be, "matmul_w", M, N, K);
            return;
        }
    } else {
        int tn = typed_tile_rows(K, N);
        float *buf = malloc((size_t)tn * (size_t)K * sizeof *buf);
        if (!buf) {
            oom(be, "matmul_w", M, N, K);
            return;
        }
        for (int n0 = 0; n0 < N; n0 += tn) {
            int nn = N - n0 < tn ? N - n0 : tn;
            CPU_PAR_RANGE(
                    nth, (size_t)nn,
                    weight_dequantize_rows(w, n0 + (int)lo, (int)(hi - lo), buf + lo * (size_t)K));
            View b = {buf, NULL, (size_t)K, 0};
            if (gemm_views(nth, &a, &b, M, nn, K, 0.0f, out + n0, N)) {
                free(buf);
                {
                    oom(be, "matmul_w", M, N, K);
                    return;
                }
            }
        }
        free(buf);
    }
    if (bias) CPU_PAR_RANGE(nth, (size_t)M, bias_add(out, bias, N, (size_t)N, lo, hi));
}

void cpu_matmul_w_bf16_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M) {
    int K = w->cols, N = w->rows, nth = threads_of(be, M, K, N);
    if (w->type == WT_F32) {
        cpu_matmul_bwd_bf16(be, din, NULL, dout, NULL, w->data, M, K, N);
        return;
    }
    if (w->type == WT_BF16) { /* din (M, K) += dout (M, N) W (N, K), W's bf16 rows as they are */
        View a = {dout, NULL, (size_t)N, 0}, b = {NULL, w->data, (size_t)K, 1};
        if (gemm_views(nth, &a, &b, M, K, N, 1.0f, din, K)) oom(be, "matmul_w_bwd_in", M, N, K);
        return;
    }
    int tn = typed_tile_rows(K, N);
    float *buf = malloc((size_t)tn * (size_t)K * sizeof *buf);
    if (!buf) {
        oom(be, "matmul_w_bwd_in", M, N, K);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += tn) { /* din += dout[:, tile] tile, tiles in order */
        int nn = N - n0 < tn ? N - n0 : tn;
        CPU_PAR_RANGE(
                nth, (size_t)nn,
                weight_dequantize_rows(w, n0 + (int)lo, (int)(hi - lo), buf + lo * (size_t)K));
        View a = {dout + n0, NULL, (size_t)N, 0}, b = {buf, NULL, (size_t)K, 1};
        if (gemm_views(nth, &a, &b, M, K, nn, 1.0f, din, K)) {
            oom(be, "matmul_w_bwd_in", M, N, K);
            break;
        }
    }
    free(buf);
}
