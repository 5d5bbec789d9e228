/* gemm_bf16.c: the cpu backend's matrix products under Backend.mm_bf16: both operands rounded to
 * bf16 (to nearest even, as wtype_f32_to_bf16), products summed in fp32, outputs fp32.
 *
 * Two paths, chosen on every call (cpu_bf16_path):
 * - "avx512bf16": a kernel of our own on vdpbf16ps. op(A) is packed once per product (in
 *   chunks of at most 32 MiB of rows) into panels of MR rows, as bf16 pairs along K in blocks of
 *   KC (row by row for a row-major op(A), pair by pair for a k-major one: pack_a_panel), by all
 *   threads (each panel's K blocks one after another); then C is cut into tasks of whole
 *   panels of columns (at most NC, at least two tasks a thread, evenly: column_tasks; row parts
 *   too when the columns are few): a task packs its columns of op(B) into panels of NR for up to
 *   X_KB blocks of K at once (the rounding, vectorized, happens in the packing; a bf16 weight is
 *   copied as is, and a frozen BF16 weight's panels may be packed once for all its products:
 *   weight_pack) and runs every tile of C over them. A 12 x 32 tile of C is 24 zmm
 *   accumulators, summed from zero over those blocks (K up to 2048) and then added to C. Threads
 *   meet twice per chunk (after the packing of A, at the end): with shared B panels, two
 *   barriers per K block cost most of the time on this shared 2-core machine (perf: 60% in
 *   libgomp waits). A long K with a small C (the LM head's input gradient) runs in slices of K
 *   into partials of C, added in slice order (k_slices).
 * - "plain": blocks of the operands rounded to bf16 values held in fp32, then cpu_sgemm. The
 *   products are the same (a product of two bf16 numbers is exact in fp32); the sums go in
 *   OpenBLAS's order. TUNA_BF16=plain forces it; a CPU without AVX512-BF16 takes it, and so
 *   does an Intel one without AMX tiles, whose vdpbf16ps runs at half the rate of its fp32
 *   FMAs (cpu_bf16_path; TUNA_BF16=avx512bf16 forces the kernel there).
 * - "amx": where the CPU has AMX-BF16 tiles (and the OS lets the process use them), the same
 *   packing and tasks with TDPBF16PS on the tiles instead of the vdpbf16ps tile of C
 *   (gemm_task_amx): op(A) packed by rows always, the panels padded to whole steps of 16 pairs,
 *   C held in 4 tiles over up to AMX_KB blocks of K, two row panels against each column panel.
 *   TUNA_BF16=avx512bf16 forces the vdpbf16ps kernel on such a CPU. The attention's products
 *   (attention_gemm.c) run on the same tiles through cpu_bf16_pack_a/_b/_tile.
 *
 * The bits do not depend on the thread count: the K blocks are fixed (KC), each tile of C is
 * computed by one thread over the whole of K in block order, and cpu_sgemm is thread-invariant.
 * Only the summation order (and vdpbf16ps' and TDPBF16PS' flushing of denormals to zero)
 * separates the paths. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ref/ops_ref.h"
#include "../wtype.h"
#include "cpu_backend.h"
#include "cpu_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BF16_X86 1
#endif

/* The tile of C: MR x NR, NV zmm of fp32 a row, MR * NV accumulators (24 of the 32 zmm).
 * Tried on one Zen 4 core (NR a multiple of 16 dividing NC): 8 x 48 (3 loads of
 * op(B) and 8 broadcasts for 24 vdpbf16ps, where 12 x 32 has 2 and 12) ran the step's 576- and
 * 1536-wide products 2-4% faster, but the attention's 64-wide ones 25% slower (64 of a panel's 96
 * columns), and a SmolLM2 LoRA step 2% slower; 6 x 64 and 9 x 48 no faster; 14 x 32 spilled.
 * The bits are the same for every tile shape: each element of C is the same sum in the same
 * order. */
#define MR          CPU_BF16_MR             /* rows of a tile of C (12) */
#define NR          CPU_BF16_NR             /* columns of a tile of C (32: two zmm of fp32) */
#define NV          (NR / 16)               /* zmm of fp32 across a tile */
#define KC          CPU_BF16_KC             /* elements of K per block (256, even) */
#define NC          384                     /* columns of C per task (a multiple of NR) */
#define PANEL_WORDS ((size_t)(KC / 2) * NR) /* a packed panel of op(B) in a whole K block */
#define KPAD(kp)    CPU_BF16_KPAD(kp)       /* pairs a packed panel holds: whole AMX steps */
#define AMX_MR      16                      /* rows of gemm_x's op(A) panels on the AMX tiles */
/* floats of each operand block the plain path rounds at once */
#define PLAIN_BLOCK (1u << 22)

/* An operand seen as rows of K: element (r, k) is p[r * ld + k], or p[k * ld + r] when kmajor;
 * fp32 at f or bf16 at h (one of them). op(A) is (M, K); op(B) is seen as its transpose (N, K). */
typedef struct View {
    const float *f;
    const uint16_t *h;
    size_t ld;
    int kmajor;
    const uint32_t *pk; /* op(B) only, or NULL: its panels packed already (weight_pack) */
} View;

static inline uint16_t bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline uint16_t view_at(const View *v, size_t r, size_t k) {
    size_t i = v->kmajor ? k * v->ld + r : r * v->ld + k;
    return v->h ? v->h[i] : bf16_round(v->f[i]);
}

#ifdef BF16_X86
/* Whether this CPU has AMX-BF16 tiles (CPUID 7.0 EDX bits 22 and 24) and the kernel lets this
 * process use them (Linux asks for it once: arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). */
static int amx_usable(void) {
    static int ok = -1;
    int v = __atomic_load_n(&ok, __ATOMIC_RELAXED);
    if (v < 0) {
        unsigned a, b, c, d;
        v = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1u) && (d >> 24 & 1u) &&
            syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        __atomic_store_n(&ok, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

const char *cpu_bf16_path(void) {
#ifdef BF16_X86
    static int cpu = -1;
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
    static int amd = -1;
    if (amd < 0) amd = __builtin_cpu_is("amd");
    const char *e = getenv("TUNA_BF16");
    int force_dp = e && !strcmp(e, "avx512bf16");
    if (cpu && !(e && !strcmp(e, "plain"))) {
        if (!force_dp && amx_usable()) return "amx";
        /* vdpbf16ps pays where it outruns fp32 FMAs: an AMD Zen 4 runs it at the rate of
         * vfmadd231ps, twice the products; an Intel Xeon without usable AMX tiles (Emerald
         * Rapids, model 0xCF, AMX hidden) at half that rate, half of fp32's products
         * (bench_bf16 --peak: 85.8 against 175.9 GFLOP/s), where the plain path ran 1.2x the
         * kernel's speed (GPT-2 --bf16 232 vs 193 tok/s, SmolLM2 LoRA --dtype bf16 --bf16 317
         * vs 254) */
        if (force_dp || amd) return "avx512bf16";
    }
#endif
    return "plain";
}

/* 0 plain, 1 the vdpbf16ps kernel, 2 the AMX tiles (both on gemm_x's packing) */
static inline int path_x(void) {
    const char *p = cpu_bf16_path();
    return !strcmp(p, "amx") ? 2 : !strcmp(p, "avx512bf16") ? 1 : 0;
}

// --- the plain path: rounded fp32 copies and cpu_sgemm -----------------------------------------

/* dst[0..n) = src rounded to bf16 (as bf16_round) and held in fp32, or the bf16 h widened: one
 * branch-free loop the compiler vectorizes (the element loop with view_at's tests was 22% of a
 * SmolLM2 LoRA --bf16 step on the plain path, AMD Zen 3) */
static void round_f32(const float *f, const uint16_t *h, size_t n, float *dst) {
    uint32_t *d = (uint32_t *)dst; /* dst's floats written as their bits */
    if (h) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            d[i] = (uint32_t)h[i] << 16;
        return;
    }
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        uint32_t x, r;
        memcpy(&x, f + i, sizeof x);
        r = (x + 0x7FFFu + ((x >> 16) & 1u)) & 0xFFFF0000u;
        d[i] = (x & 0x7FFFFFFFu) > 0x7F800000u ? (x | 0x00400000u) & 0xFFFF0000u : r; /* NaN */
    }
}

/* rows r0 .. r0+rn-1 of v (each of K) rounded to bf16 and held in fp32, in v's own layout: dst
 * (rn, K) for a row-major v, parts [lo, hi) of the rows; (K, rn) for a k-major one, parts of K */
static void view_block_f32(const View *v, size_t r0, size_t rn, size_t K, float *dst, size_t lo,
                           size_t hi) {
    for (size_t i = lo; i < hi; i++) {
        size_t at = v->kmajor ? i * v->ld + r0 : (r0 + i) * v->ld, n = v->kmajor ? rn : K;
        round_f32(v->f ? v->f + at : NULL, v->h ? v->h + at : NULL, n, dst + i * n);
    }
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
        CPU_PAR_RANGE(nth, b->kmajor ? (size_t)K : nn,
                      view_block_f32(b, n0, nn, (size_t)K, bb, lo, hi));
        for (size_t m0 = 0; m0 < (size_t)M; m0 += mb) {
            size_t mm = (size_t)M - m0 < mb ? (size_t)M - m0 : mb;
            CPU_PAR_RANGE(nth, a->kmajor ? (size_t)K : mm,
                          view_block_f32(a, m0, mm, (size_t)K, ab, lo, hi));
            /* op(A) (mm, K): ab row-major, or k-major (K, mm); op(B) (K, nn): bb's rows of K
             * transposed, or k-major (K, nn) as it is */
            cpu_sgemm(nth, a->kmajor, !b->kmajor, (int)mm, (int)nn, K, 1.0f, ab,
                      a->kmajor ? (int)mm : K, bb, b->kmajor ? (int)nn : K, beta,
                      C + m0 * (size_t)ldc + n0, ldc);
        }
    }
    free(ab);
    free(bb);
    return 0;
}

// --- the AVX512-BF16 path ------------------------------------------------------------------------

#ifdef BF16_X86
#define X_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

/* x rounded to bf16 as wtype_f32_to_bf16 does (NaN too), in the upper 16 bits of each lane */
X_TARGET static inline __m512i round_hi(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)),
                                            _mm512_set1_epi32(0x7F800000));
    return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}

/* 32 floats rounded to bf16 as bf16_round does, in order (lo's 16, then hi's): VCVTNE2PS2BF16
 * rounds to nearest even and quiets NaNs as bf16_round does, but reads denormals as zero, so a
 * vector holding one takes round_hi (checked over all 2^32 inputs: denormals the only
 * difference). One instruction where round_hi took about ten for 16 floats: the fp32 weights'
 * packing was a quarter of a GPT-2 --bf16 step. */
X_TARGET static inline __m512i bf16_pairs(__m512 lo, __m512 hi) {
    if (__builtin_expect(!_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, 0x20),
                                              _mm512_fpclass_ps_mask(hi, 0x20)),
                         0)) {
        __m256i l = _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_hi(lo), 16));
        return _mm512_inserti64x4(_mm512_castsi256_si512(l),
                                  _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_hi(hi), 16)), 1);
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* x[c] = word c of every x[i] (the 16 x 16 transpose of 32-bit words): pairs of rows interleaved
 * by words, then by 64 bits, then 128-bit lanes picked twice. */
X_TARGET static inline void transpose16(__m512i x[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]);
    }
    /* u[4g + q]: words q, q + 4, q + 8, q + 12 of rows 4g .. 4g + 3, lane by lane */
    for (int g = 0; g < 4; g++) {
        __m512i *a = t + 4 * g;
        u[4 * g + 0] = _mm512_unpacklo_epi64(a[0], a[2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a[0], a[2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(a[1], a[3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(a[1], a[3]);
    }
    for (int q = 0; q < 4; q++) { /* t reused: lanes 0, 2 (t[q]) and 1, 3 (t[q + 4]) */
        t[q] = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x88);
        t[q + 4] = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xdd);
        t[q + 8] = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x88);
        t[q + 12] = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xdd);
    }
    for (int c = 0; c < 8; c++) {
        x[c] = _mm512_shuffle_i32x4(t[c], t[c + 8], 0x88);
        x[c + 8] = _mm512_shuffle_i32x4(t[c], t[c + 8], 0xdd);
    }
}

/* The nw (<= 16) bf16 pairs of row r of a row-major view from element k, one 32-bit word each
 * (element 2j low, 2j + 1 high), the rest zero; fp32 is rounded here. */
X_TARGET static inline __m512i row_pairs(const View *v, size_t r, size_t k, int nw) {
    __mmask16 mw = cpu_lanes16(nw);
    if (v->h) return _mm512_maskz_loadu_epi32(mw, v->h + r * v->ld + k);
    const float *p = v->f + r * v->ld + k;
    int nf = 2 * nw; /* floats */
    __mmask16 m0 = cpu_lanes16(nf), m1 = cpu_lanes16(nf - 16);
    return bf16_pairs(_mm512_maskz_loadu_ps(m0, p), _mm512_maskz_loadu_ps(m1, p + 16));
}

/* 16 words (lanes m) at dst; nt: past the caches where they are a whole aligned line (the
 * copies of trainable weights, which AdamW writes and the next step's products read: streamed,
 * a GPT-2 --bf16 step ran 5% faster) */
X_TARGET static inline void store16(uint32_t *dst, __mmask16 m, __m512i x, int nt) {
    if (nt && m == 0xffff && !((uintptr_t)dst & 63))
        _mm512_stream_si512((void *)dst, x);
    else
        _mm512_mask_storeu_epi32(dst, m, x);
}

/* The bf16 pairs of a k-major fp32 view's rows r0 .. r0+rn-1 and elements k0 .. k0+kn-1 (an odd
 * last element paired with zero), in panels of P rows (panel q at dst + q * pstride, pair p's
 * word of row i at p * P + i; rows past rn zero): each pair's two rows of the view are read
 * across all the panels at once, where they are contiguous (panel by panel, a task's op(B) for
 * the weight gradients read 128 bytes of every row in turn, at a few GB/s from memory). nt:
 * store16's (the caller fences). */
__attribute__((always_inline)) X_TARGET static inline void
pack_kmajor_pairs(const View *v, size_t r0, int rn, size_t k0, int kn, int P, size_t pstride,
                  uint32_t *dst, int nt) {
    /* the two rows' 16 bf16 each, then interleaved: word i = (c0[i], c1[i]) */
    const __m512i zip = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                         8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    int npan = (rn + P - 1) / P;
    for (int k = 0; k < kn; k += 2) {
        const float *c0 = v->f + (k0 + (size_t)k) * v->ld + r0, *c1 = c0 + v->ld;
        for (int q = 0; q < npan; q++)
            for (int r = 0; r < P; r += 16) {
                int col = q * P + r, nl = P - r < 16 ? P - r : 16;
                __mmask16 m = cpu_lanes16(rn - col < nl ? rn - col : nl);
                __m512 hi = k + 1 < kn ? _mm512_maskz_loadu_ps(m, c1 + col) : _mm512_setzero_ps();
                __m512i x = bf16_pairs(_mm512_maskz_loadu_ps(m, c0 + col), hi);
                store16(dst + (size_t)q * pstride + (size_t)(k / 2) * P + (size_t)r,
                        cpu_lanes16(nl), _mm512_permutexvar_epi16(zip, x), nt);
            }
    }
}

/* dst [(kn + 1) / 2][P] words, each the bf16 pair (element 2j low, 2j + 1 high) of rows r0 ..
 * r0+rn-1 (rn <= P) and elements k0 .. k0+kn-1 of v; rows past rn and the odd element past kn
 * are zero. nt: store16's (the caller fences). */
__attribute__((always_inline)) X_TARGET static inline void
pack_panel_s(const View *v, size_t r0, int rn, size_t k0, int kn, int P, uint32_t *dst, int nt) {
    if (v->kmajor && !v->h) {
        pack_kmajor_pairs(v, r0, rn, k0, kn, P, 0, dst, nt);
        return;
    }
    int kp = (kn + 1) / 2;
    if (rn < P || kn % 2) memset(dst, 0, (size_t)kp * (size_t)P * sizeof *dst);
    uint16_t *d16 = (uint16_t *)dst;
    if (!v->kmajor) {    /* rows contiguous in k: a pair is one 32-bit word of its row */
        int np = kn / 2; /* whole pairs; an odd last element goes below */
        for (int r = 0; r < rn; r += 16) { /* 16 rows x 16 pairs, transposed in registers */
            int nrow = rn - r < 16 ? rn - r : 16;
            __mmask16 mr = cpu_lanes16(nrow);
            for (int j = 0; j < np; j += 16) {
                int nw = np - j < 16 ? np - j : 16;
                __m512i x[16];
                for (int i = 0; i < 16; i++)
                    x[i] = i < nrow ? row_pairs(v, r0 + (size_t)(r + i), k0 + 2 * (size_t)j, nw)
                                    : _mm512_setzero_si512();
                transpose16(x);
                for (int c = 0; c < nw; c++)
                    store16(dst + (size_t)(j + c) * P + (size_t)r, mr, x[c], nt);
            }
        }
        if (kn % 2)
            for (int r = 0; r < rn; r++)
                d16[((size_t)np * P + (size_t)r) * 2] =
                        view_at(v, r0 + (size_t)r, k0 + (size_t)kn - 1);
        return;
    }
    for (int k = 0; k < kn; k += 2) { /* bf16, k-major: 16 rows of a pair at once */
        uint32_t *d = dst + (size_t)(k / 2) * P;
        const uint16_t *c0 = v->h + (k0 + (size_t)k) * v->ld + r0, *c1 = c0 + v->ld;
        for (int r = 0; r < rn; r += 16) {
            __mmask16 m = cpu_lanes16(rn - r);
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, c0 + r));
            __m512i hi =
                    k + 1 < kn ? _mm512_slli_epi32(
                                         _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, c1 + r)),
                                         16)
                               : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(d + r, m, _mm512_or_si512(lo, hi));
        }
    }
}

X_TARGET static void pack_panel(const View *v, size_t r0, int rn, size_t k0, int kn, int P,
                                uint32_t *dst) {
    pack_panel_s(v, r0, rn, k0, kn, P, dst, 0);
}

/* A k-major op(A)'s panels of MR rows for vdpbf16ps, pack_kmajor_pairs across them (panel q at
 * dst + q * step): gemm_x's, which is not built for AVX-512 itself */
X_TARGET static void pack_a_kmajor_x(const View *v, size_t r0, int rn, size_t k0, int kn,
                                     uint32_t *dst, size_t step) {
    pack_kmajor_pairs(v, r0, rn, k0, kn, MR, step, dst, 0);
}

/* pack_panel's words, whole lines stored past the caches (the caller then runs _mm_sfence) */
X_TARGET static void pack_panel_nt(const View *v, size_t r0, int rn, size_t k0, int kn, int P,
                                   uint32_t *dst) {
    pack_panel_s(v, r0, rn, k0, kn, P, dst, 1);
}

/* K blocks of a tile summed in its registers (gemm_task): up to X_KB of them, K 2048, before C
 * is stored. Each block's sum added to C in memory (a round trip of C per block of 256) ran the
 * 1536-wide products and the LM head at 68-75% of the peak on one Zen 4 core. With both operands'
 * blocks laid out one after another for each panel (gemm_task, panel_at), one thread a side at
 * once (ab_pair.sh): SmolLM2 LoRA --dtype bf16 --bf16 +2.8%, GPT-2 --bf16 +2.0%. */
#define X_KB 8

/* op(A) rows [m0, m0 + mn) packed once for the whole product: panel i (MR rows) of K block kb
 * at apk + (i * nkb + kb) * A_STRIDE words (a panel's blocks one after another), in one of two
 * layouts (pack_a_panel) */
#define A_STRIDE ((size_t)(KC / 2) * MR)

/* c (mr, nr) (+)= the (MR, NR) tile of nb K blocks of a (MR rows; block j at a + j * A_STRIDE, the
 * word of row i and pair p at a[i * si + p * sp] in it) and b (block j at b + j * PANEL_WORDS, kp
 * words of NR columns; kp KC / 2 but in the last block, kp_last), summed from zero in fp32 over
 * all of them in order; add: whether c's old values are kept. si, sp are constants of the
 * two callers below: the sums are the same, in the same order, either way. bias (or NULL): its nr
 * values added to each row after the sum (a separate pass's bits). ss (or NULL): *ss = Σ x² of
 * the tile's values as stored, from fp32 partials of MR * NV = 24 squares a lane, then in double
 * (amx_sumsq2's bound); nt: whole aligned lines of c stored past the caches (the caller fences). */
__attribute__((always_inline)) X_TARGET static inline void
kernel_tile_at(int nb, int kp_last, const uint32_t *a, size_t si, size_t sp, const uint32_t *b,
               float *c, size_t ldc, int mr, int nr, int add, const float *bias, double *ss,
               int nt) {
    __m512 acc[MR][NV];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_setzero_ps();
    for (int j = 0; j < nb; j++) {
        const uint32_t *aj = a + (size_t)j * A_STRIDE, *bj = b + (size_t)j * PANEL_WORDS;
        for (int p = 0, kp = j + 1 < nb ? KC / 2 : kp_last; p < kp; p++) {
            __m512bh bv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                bv[v] = (__m512bh)_mm512_loadu_si512(bj + (size_t)p * NR + 16 * v);
            const uint32_t *ap = aj + (size_t)p * sp;
#pragma GCC unroll 12
            for (int i = 0; i < MR; i++) {
                __m512bh ai = (__m512bh)_mm512_set1_epi32((int)ap[(size_t)i * si]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
            }
        }
    }
    __mmask16 mk[NV];
    __m512 bv[NV];
    for (int v = 0; v < NV; v++) {
        mk[v] = cpu_lanes16(nr - 16 * v);
        bv[v] = bias ? _mm512_maskz_loadu_ps(mk[v], bias + 16 * v) : _mm512_setzero_ps();
    }
    __m512 sq = _mm512_setzero_ps();
    /* unrolled with constant rows: a loop to the runtime mr had GCC keep acc on the stack (24
     * stores of zero before the loop, 24 of the sums after it and their loads here) */
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *ci = c + (size_t)i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 x = acc[i][v];
            if (add) x = _mm512_add_ps(_mm512_maskz_loadu_ps(mk[v], ci + 16 * v), x);
            if (bias) x = _mm512_add_ps(x, bv[v]);
            if (nt && mk[v] == 0xffff && !((uintptr_t)(ci + 16 * v) & 63))
                _mm512_stream_ps(ci + 16 * v, x);
            else
                _mm512_mask_storeu_ps(ci + 16 * v, mk[v], x);
            if (ss) sq = _mm512_mask3_fmadd_ps(x, x, sq, mk[v]);
        }
    }
    if (ss) *ss = _mm512_reduce_add_pd(cpu_add_pd16(_mm512_setzero_pd(), sq));
}

/* A panel by pairs (pack_panel's layout: word (i, p) at p * MR + i), as a k-major op(A) packs */
X_TARGET static void kernel_tile(int nb, int kp_last, const uint32_t *a, const uint32_t *b,
                                 float *c, size_t ldc, int mr, int nr, int add, const float *bias,
                                 double *ss, int nt) {
    kernel_tile_at(nb, kp_last, a, 1, MR, b, c, ldc, mr, nr, add, bias, ss, nt);
}

/* A panel by rows (word (i, p) at i * KC / 2 + p), as a row-major op(A) packs */
X_TARGET static void kernel_tile_rows(int nb, int kp_last, const uint32_t *a, const uint32_t *b,
                                      float *c, size_t ldc, int mr, int nr, int add,
                                      const float *bias, double *ss, int nt) {
    kernel_tile_at(nb, kp_last, a, KC / 2, 1, b, c, ldc, mr, nr, add, bias, ss, nt);
}

/* One panel of op(A): rows r0 .. r0+rn-1 (rn <= MR), elements k0 .. k0+kn-1, A_STRIDE words. A
 * k-major view packs by pairs (pack_panel: 16 rows of a pair are contiguous there); a row-major
 * one by rows, where a row's pairs are contiguous: rounded 16 elements at a time and stored as
 * they are (pack_panel's layout took one scattered store per word: 7% of a SmolLM2 LoRA step).
 * Rows past rn and the odd element past kn are zero. */
/* dst (n) = src (n) (times s when SCALE, a constant at each call) rounded to bf16, to nearest
 * even (bf16_round's bits, 32 at a time); src[k .. k+31] are loaded before dst[k .. k+31] is
 * stored, so dst may lie over src at or below its start */
__attribute__((always_inline)) X_TARGET static inline void
round_row_s(const float *src, uint16_t *dst, int n, int SCALE, float s) {
    const __m512 vs = _mm512_set1_ps(s);
    for (int k = 0; k < n; k += 32) {
        __mmask16 m0 = cpu_lanes16(n - k), m1 = cpu_lanes16(n - k - 16);
        __m512 lo = _mm512_maskz_loadu_ps(m0, src + k),
               hi = _mm512_maskz_loadu_ps(m1, src + k + 16);
        if (SCALE) {
            lo = _mm512_mul_ps(lo, vs);
            hi = _mm512_mul_ps(hi, vs);
        }
        _mm512_mask_storeu_epi16(dst + k, (__mmask32)m0 | (__mmask32)m1 << 16, bf16_pairs(lo, hi));
    }
}

X_TARGET static void round_row_x(const float *src, uint16_t *dst, int n) {
    round_row_s(src, dst, n, 0, 1.0f);
}

/* Panels of op(A) for the AMX tiles from a k-major view: rows r0 .. r0+rn-1 (rn <= AMX_KGRP *
 * 16), elements k0 .. k0+kn-1, into panels of pm rows (dst, the next panel step words on), each as
 * pack_a_panel's; rows past rn and pairs from kp to KPAD(kp) zero. By pairs up to AMX_KGRP panels
 * wide, then 16 x 16 words at a time transposed (a word at a time, keys_x's packing was 4.6% of a
 * LoRA step). Several panels at once read a few lines of each row of the view together: one at a
 * time, the LM head's weight gradient (its output gradient, 256 rows of 50257, seen k-major)
 * packed at 2.6 GB/s, a line from every row in turn. */
#define AMX_KGRP 8
/* and on vdpbf16ps (gemm_x): 32 panels of MR rows, 384 columns (1.5 KB) of each row of the view
 * read at a time where 8 panels read 384 bytes (GPT-2 --bf16 on one Zen 4 core: +1.4%; 64 panels
 * no faster, 16 slower) */
#define X_KGRP 32
X_TARGET static void pack_a_kmajor_amx(const View *v, size_t r0, int rn, size_t k0, int kn,
                                       uint32_t *dst, size_t step, int pm) {
    const int W = KC / 2, kp = (kn + 1) / 2, kq = KPAD(kp), P = (rn + 15) / 16 * 16;
    uint32_t t[(KC / 2) * 16 * AMX_KGRP] __attribute__((aligned(64)));
    pack_panel(v, r0, rn, k0, kn, P, t);
    memset(t + (size_t)kp * P, 0, (size_t)(kq - kp) * P * sizeof *t);
    for (int g = 0; g < P / 16; g++) {
        uint32_t *d = dst + (size_t)g * step;
        for (int p = 0; p < kq; p += 16) {
            __m512i x[16];
            for (int i = 0; i < 16; i++)
                x[i] = _mm512_load_si512(t + (size_t)(p + i) * P + 16 * g);
            transpose16(x);
            for (int r = 0; r < pm; r++)
                _mm512_storeu_si512(d + (size_t)r * W + p, x[r]);
        }
    }
}

/* amx: the AMX tiles' layout, pm rows (at most AMX_MR) by rows whatever the view (a k-major one
 * packed by pairs, then transposed: the tiles read 16 pairs of a row at once), each row's pairs
 * from kp to KPAD(kp) zero (a tile step is 16 pairs); otherwise pm is MR. */
X_TARGET static void pack_a_panel(const View *v, size_t r0, int rn, size_t k0, int kn,
                                  uint32_t *dst, int amx, int pm) {
    const int W = KC / 2, kp = (kn + 1) / 2;
    if (v->kmajor && amx) {
        pack_a_kmajor_amx(v, r0, rn, k0, kn, dst, 0, pm);
        return;
    }
    if (v->kmajor) {
        pack_panel(v, r0, rn, k0, kn, MR, dst);
        return;
    }
    const int kz = amx ? KPAD(kp) : kp; /* words a row is written to */
    for (int r = 0; r < pm; r++) {
        uint32_t *d = dst + (size_t)r * W;
        if (r >= rn) {
            memset(d, 0, (size_t)kz * sizeof *d);
            continue;
        }
        if (kz > kp) memset(d + kp, 0, (size_t)(kz - kp) * sizeof *d);
        int k = kn & ~1; /* the whole pairs; an odd last element below */
        if (v->h)
            memcpy(d, v->h + (r0 + (size_t)r) * v->ld + k0, (size_t)(kn / 2) * sizeof *d);
        else
            round_row_x(v->f + (r0 + (size_t)r) * v->ld + k0, (uint16_t *)d, k);
        if (k < kn) d[k / 2] = view_at(v, r0 + (size_t)r, k0 + (size_t)k);
    }
}

/* The words of one column panel of op(B) packed beforehand (View.pk), K deep: each K block's
 * KPAD(kp) pairs of NR words, the pad zero (pack_b_panel); only the last block is shorter than
 * KC */
static size_t panel_words(int K) {
    size_t nkb = ((size_t)K + KC - 1) / KC;
    int kn_last = K - (int)(nkb - 1) * KC;
    return (nkb - 1) * PANEL_WORDS + (size_t)KPAD((kn_last + 1) / 2) * NR;
}

/* Where panel p of K block kb starts in op(B)'s panels packed beforehand: panel by panel, a
 * panel's K blocks one after another (a tile of gemm_task reads them as one stream: K
 * block-major, the forward of a SmolLM2 LoRA --bf16 step ran 1% slower) */
static size_t panel_at(size_t kb, size_t p, int K) {
    return p * panel_words(K) + kb * PANEL_WORDS;
}

/* A panel of op(B) as gemm_task reads it: pack_panel's, then zero pairs up to KPAD(kp) */
X_TARGET static void pack_b_panel(const View *v, size_t r0, int rn, size_t k0, int kn,
                                  uint32_t *dst) {
    int kp = (kn + 1) / 2;
    pack_panel(v, r0, rn, k0, kn, NR, dst);
    memset(dst + (size_t)kp * NR, 0, (size_t)(KPAD(kp) - kp) * NR * sizeof *dst);
}

/* A task's columns [n0, n1) of op(B) for K block k0 (kn elements), packed into bp: panel p at
 * bp + p * ps words (ps >= KPAD(kp) * NR) */
X_TARGET static void pack_task_panels(const View *b, size_t n0, size_t n1, int k0, int kn,
                                      uint32_t *bp, size_t ps) {
    int kp = (kn + 1) / 2;
    size_t kq = (size_t)KPAD(kp);
    if (b->kmajor && !b->h) { /* all the task's panels at once, then their pads */
        pack_kmajor_pairs(b, n0, (int)(n1 - n0), (size_t)k0, kn, NR, ps, bp, 0);
        for (size_t n = n0; n < n1; n += NR)
            memset(bp + (n - n0) / NR * ps + (size_t)kp * NR, 0,
                   (kq - (size_t)kp) * NR * sizeof *bp);
        return;
    }
    for (size_t n = n0; n < n1; n += NR)
        pack_b_panel(b, n, n1 - n < NR ? (int)(n1 - n) : NR, (size_t)k0, kn,
                     bp + (n - n0) / NR * ps);
}

/* The panel of op(B) at column n (of K block kb, K deep) a task reads: packed beforehand
 * (View.pk: panel_at) or by the task into bp (pack_task_panels from n0, its panels ps words
 * apart) */
static const uint32_t *task_panel(const View *b, const uint32_t *bp, size_t kb, int K, size_t n,
                                  size_t n0, size_t ps) {
    return b->pk ? b->pk + panel_at(kb, n / NR, K) : bp + (n - n0) / NR * ps;
}

/* One task: C's rows of panels [p0, p1) of the packed chunk (first row m0; A_STRIDE's layout)
 * and columns [n0, n1), over K blocks [kb0, kb1) (all of K, or a slice: gemm_x), X_KB blocks at a
 * time: the task packs its columns of op(B) for those blocks (into bp, X_KB x NC x KC of bf16, a
 * column panel's blocks PANEL_WORDS apart, as in weight_pack's layout: a tile reads each operand
 * as one stream) and runs every tile over all of them (kernel_tile_at), column panel by column
 * panel. After the last group: bias (or NULL, N values) added; stream, C's whole lines past the
 * caches; ss (or NULL), each tile's Σ x² at ss[row panel m / MR * npb + column panel n / NR]
 * (kernel_tile_at). */
X_TARGET static void gemm_task(const uint32_t *apk, size_t nkb, size_t m0, size_t m1, size_t p0,
                               size_t p1, const View *b, int N, int K, int kb0, int kb1, size_t n0,
                               size_t n1, float *C, size_t ldc, int add0, int arows, uint32_t *bp,
                               int stream, double *ss, const float *bias) {
    size_t npb = ((size_t)N + NR - 1) / NR; /* op(B)'s panels */
    for (int g = kb0; g < kb1; g += X_KB) {
        int nb = kb1 - g < X_KB ? kb1 - g : X_KB, kp_last = 0;
        size_t ps = (size_t)nb * PANEL_WORDS; /* a column panel's blocks in bp */
        for (int j = 0; j < nb; j++) {
            int k0 = (g + j) * KC, kn = K - k0 < KC ? K - k0 : KC;
            kp_last = (kn + 1) / 2;
            if (!b->pk) pack_task_panels(b, n0, n1, k0, kn, bp + (size_t)j * PANEL_WORDS, ps);
        }
        int last = g + nb == kb1;
        for (size_t n = n0; n < n1; n += NR) {
            const uint32_t *bt = task_panel(b, bp, (size_t)g, K, n, n0, ps);
            int nr = n1 - n < NR ? (int)(n1 - n) : NR;
            for (size_t i = p0; i < p1; i++) {
                size_t m = m0 + i * MR;
                (arows ? kernel_tile_rows : kernel_tile)(
                        nb, kp_last, apk + (i * nkb + (size_t)g) * A_STRIDE, bt, C + m * ldc + n,
                        ldc, m1 - m < MR ? (int)(m1 - m) : MR, nr, add0 || g > kb0,
                        bias && last ? bias + n : NULL,
                        ss && last ? ss + m / MR * npb + n / NR : NULL, stream && last);
            }
        }
    }
    if (stream) _mm_sfence(); /* the streamed lines before the threads meet */
}

// --- the AMX tiles: gemm_task's loops on TDPBF16PS ------------------------------------------------

/* Tiles: 0-3 C (tm rows of 16 fp32: rows of panel i by columns 0-15, 16-31; then panel i + 1),
 * 4-5 A (tm rows of 16 pairs), 6-7 B (16 pairs of 16 columns: a panel's two halves, as packed);
 * tm is AMX_MR for gemm_x, MR for the attention's pieces. A step is 16 pairs of K (KPAD: the
 * packings zero what is past K). */
#define AMX_TARGET                                                                                 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")))

typedef struct TileCfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileCfg;

/* tm (<= 16): rows of the A and C tiles (AMX_MR for gemm_x, MR for the attention's pieces) */
AMX_TARGET static void amx_config(int tm) {
    TileCfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = (uint8_t)(t < 6 ? tm : 16);
        c.colsb[t] = 64;
    }
    /* GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes of the config, which then
     * drops the stores of rows and colsb as dead (seen inlined: a #GP); the asm names all 64 */
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
}

/* buf (tm x 16, rows of 16) = c's (mr x nv) corner, the rest zero; and back (masked) */
X_TARGET static void c_to_buf(float *buf, const float *c, size_t ldc, int mr, int nv, int tm) {
    __mmask16 m = cpu_lanes16(nv);
    for (int i = 0; i < tm; i++)
        _mm512_storeu_ps(buf + 16 * i, i < mr ? _mm512_maskz_loadu_ps(m, c + (size_t)i * ldc)
                                              : _mm512_setzero_ps());
}

X_TARGET static void buf_to_c(const float *buf, float *c, size_t ldc, int mr, int nv) {
    __mmask16 m = cpu_lanes16(nv);
    for (int i = 0; i < mr; i++)
        _mm512_mask_storeu_ps(c + (size_t)i * ldc, m, _mm512_loadu_ps(buf + 16 * i));
}

/* C tile t (a compile-time number) from / to c (row stride ld; mr x nv of it, or the whole tile
 * when whole: a scratch of its own), directly where the tile is whole */
#define AMX_C_LOAD(t, c, ld, mr, nv, whole, bf)                                                    \
    do {                                                                                           \
        if ((whole) || ((mr) == tm && (nv) >= 16))                                                 \
            _tile_loadd(t, c, (ld) * sizeof(float));                                               \
        else {                                                                                     \
            c_to_buf(bf, c, ld, mr, nv, tm);                                                       \
            _tile_loadd(t, bf, 64);                                                                \
        }                                                                                          \
    } while (0)
#define AMX_C_STORE(t, c, ld, mr, nv, whole, bf)                                                   \
    do {                                                                                           \
        if ((whole) || ((mr) == tm && (nv) >= 16))                                                 \
            _tile_stored(t, c, (ld) * sizeof(float));                                              \
        else if ((mr) > 0 && (nv) > 0) {                                                           \
            _tile_stored(t, bf, 64);                                                               \
            buf_to_c(bf, c, ld, mr, nv);                                                           \
        }                                                                                          \
    } while (0)

/* K blocks of op(B) a task packs at once (gemm_task_amx: its columns of them, AMX_KB x NC x KC
 * bf16 at most) */
#define AMX_KB 4

/* Bytes of a thread's scratch for C's running sums over several groups of K blocks at most
 * (gemm_x, gemm_task_amx: keep); tests set TUNA_AMX_SCRATCH_KB to take the other way */
static size_t amx_scratch_bytes(void) {
    const char *e = getenv("TUNA_AMX_SCRATCH_KB");
    return e && atol(e) > 0 ? (size_t)atol(e) << 10 : (size_t)2 << 20;
}

/* Row panels of C a task runs against one K block of its columns before the next block
 * (gemm_task_amx): C's running sums for them (x NC columns, fp32: AmxC.scratch) and op(A)'s block
 * of them stay in L2 between blocks. */
#define AMX_RCH 16

/* Where the tiles of C come from and go to for one block: in (NULL: zero) and out (row strides
 * ldi, ldo); whole ones are a scratch's tiles (read and written whole), the others C's corner
 * (mr0/mr1 x nr of it); stream: out's whole lines past the caches. */
typedef struct AmxC {
    const float *in;
    float *out;
    size_t ldi, ldo;
    int in_whole, out_whole, stream;
    double *ss; /* or NULL: Σ x² of the tiles' final values, the first row panel's at ss[0], the
                 * second's at ss[ss_ld] (amx_sumsq2) */
    size_t ss_ld;
    const float *bias; /* or NULL: added to each row of the final values (nr of them) */
} AmxC;

/* Σ x² of two tiles' 512 values (a row panel's 32 columns): 4 chains of fp32 partial sums, each
 * lane 8 squares of either tile in turn, then the 64 lanes added in double in a fixed order.
 * Within 32 x 2^-24 = 2e-6 relative of an exact sum (about 1e-9 seen); in double throughout
 * (converting each value) it was 2% of a GPT-2 --bf16 step, a quarter of the weight gradients'
 * tile time. */
AMX_TARGET static double amx_sumsq2(const float *t0, const float *t1) {
    __m512 s[4];
    for (int j = 0; j < 4; j++)
        s[j] = _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 4)
        for (int j = 0; j < 4; j++) {
            __m512 x = _mm512_load_ps(t0 + 16 * (i + j)), y = _mm512_load_ps(t1 + 16 * (i + j));
            s[j] = _mm512_fmadd_ps(x, x, s[j]);
            s[j] = _mm512_fmadd_ps(y, y, s[j]);
        }
    __m512d d = _mm512_setzero_pd();
    for (int j = 0; j < 4; j++)
        d = cpu_add_pd16(d, s[j]);
    return _mm512_reduce_add_pd(d);
}

/* The tiles of C (mr0 rows, and when two mr1 below them, tm rows on; nr columns) as c says, plus
 * one K block of kp pairs of the row panel(s) of tm rows at a (the second KC / 2 * tm words after)
 * times the B panel b, on this thread's tiles (configured); meanwhile the pfn cache lines at pf go
 * to L2 (the panel the caller reads next). The tiles add each step's products onto C's running
 * value, so the sums differ from the vdpbf16ps kernel's, which adds each block's sum to C; C goes
 * from block to block in fp32 (the tiles, or a scratch: the same sums); each element is one
 * task's, over K in order and in blocks that depend on the shape only (gemm_task_amx): the bits
 * do not depend on the thread count. */
AMX_TARGET static void amx_tile(int tm, int kp, const uint32_t *a, int two, const uint32_t *b,
                                const AmxC *c, int mr0, int mr1, int nr, const char *pf, int pfn) {
    float bf[AMX_MR * 16];
    const float *ci = c->in;
    float *co = c->out;
    if (ci) {
        const float *c1 = ci + (size_t)tm * c->ldi;
        AMX_C_LOAD(0, ci, c->ldi, mr0, nr, c->in_whole, bf);
        AMX_C_LOAD(1, ci + 16, c->ldi, mr0, nr - 16, c->in_whole, bf);
        if (two) {
            AMX_C_LOAD(2, c1, c->ldi, mr1, nr, c->in_whole, bf);
            AMX_C_LOAD(3, c1 + 16, c->ldi, mr1, nr - 16, c->in_whole, bf);
        }
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    /* C's lines, to be written at the end of this block: owned by the time they are (a fresh
     * output read for ownership from memory cost the forward products a third) */
    if (!c->out_whole && !c->stream)
        for (int i = 0; i < (two ? 2 * tm : tm); i++) {
            __builtin_prefetch(co + (size_t)i * c->ldo, 1, 3);
            __builtin_prefetch(co + (size_t)i * c->ldo + 16, 1, 3);
        }
    const size_t sa = KC / 2 * sizeof(uint32_t), sb = NR * sizeof(uint32_t);
    const size_t astr = (size_t)(KC / 2) * (size_t)tm; /* the second row panel's offset */
    int ns = KPAD(kp) / 16, per = (pfn + ns - 1) / ns; /* lines to prefetch a step */
    for (int s = 0; s < ns; s++) {
        const uint32_t *bk = b + (size_t)s * 16 * NR;
        for (int l = 0; l < per && pfn > 0; l++, pfn--, pf += 64)
            _mm_prefetch(pf, _MM_HINT_T1);
        _tile_loadd(6, bk, sb);
        _tile_loadd(7, bk + 16, sb);
        _tile_loadd(4, a + 16 * s, sa);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
            _tile_loadd(5, a + astr + 16 * s, sa);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    size_t ldo = c->ldo;
    float *c1 = co + (size_t)tm * ldo;
    int lines = c->stream && mr0 == tm && (!two || mr1 == tm) && nr == NR &&
                !((uintptr_t)co & 63) && !(ldo % 16);
    if (c->ss || c->bias || lines) {
        /* through a buffer: whole lines past the caches (no read for ownership), Σ x² of the
         * values (rows and columns past C's are zero: the packed operands' pads), the bias */
        float cs[4][AMX_MR * 16] __attribute__((aligned(64)));
        _tile_stored(0, cs[0], 64);
        _tile_stored(1, cs[1], 64);
        if (two) {
            _tile_stored(2, cs[2], 64);
            _tile_stored(3, cs[3], 64);
        }
        if (c->bias) /* the product's sum, then + bias: a separate pass's bits */
            for (int t = 0; t < (two ? 4 : 2); t++) {
                __m512 bv = _mm512_maskz_loadu_ps(cpu_lanes16(nr - 16 * (t & 1)),
                                                  c->bias + 16 * (t & 1));
                for (int i = 0; i < tm; i++)
                    _mm512_store_ps(cs[t] + 16 * i,
                                    _mm512_add_ps(_mm512_load_ps(cs[t] + 16 * i), bv));
            }
        if (c->ss) {
            c->ss[0] = amx_sumsq2(cs[0], cs[1]);
            if (two) c->ss[c->ss_ld] = amx_sumsq2(cs[2], cs[3]);
        }
        if (lines) {
            for (int t = 0; t < (two ? 4 : 2); t++)
                for (int i = 0; i < tm; i++)
                    _mm512_stream_ps((t < 2 ? co : c1) + (size_t)i * ldo + 16 * (t & 1),
                                     _mm512_load_ps(cs[t] + 16 * i));
            return;
        }
        buf_to_c(cs[0], co, ldo, mr0, nr);
        buf_to_c(cs[1], co + 16, ldo, mr0, nr - 16);
        if (two) {
            buf_to_c(cs[2], c1, ldo, mr1, nr);
            buf_to_c(cs[3], c1 + 16, ldo, mr1, nr - 16);
        }
        return;
    }
    if (two) {
        AMX_C_STORE(2, c1, ldo, mr1, nr, c->out_whole, bf);
        AMX_C_STORE(3, c1 + 16, ldo, mr1, nr - 16, c->out_whole, bf);
    }
    AMX_C_STORE(0, co, ldo, mr0, nr, c->out_whole, bf);
    AMX_C_STORE(1, co + 16, ldo, mr0, nr - 16, c->out_whole, bf);
}

/* gemm_task on the AMX tiles: the same packed op(B), op(A) in panels of AMX_MR rows, the task's
 * columns of op(B) packed for AMX_KB blocks at once (bp holds AMX_KB times gemm_task's). Within
 * that, up to AMX_RCH row panels at a time run block by block, and within a block column panel
 * by column panel against each pair of row panels: the panel (KC x NR bf16, 16 KB) stays in L1
 * while the pairs go by, and the next one is fetched into L2 meanwhile. Between the blocks of a
 * group C's running sums wait in scratch (AMX_RCH x AMX_MR rows by lds, this thread's), so C
 * itself is written once a group (streamed after the last when stream: whole lines) and read
 * when add0 and after a group. (Before, a
 * pair of row panels ran over all of K against every column panel in turn, its C in the tiles:
 * both operands came from L2, 48 KB each at K 768, and a trained weight's packed copy from
 * memory with nothing fetching ahead; the LM head's forward ran 1.5 TFLOP/s on 2 threads.) */
AMX_TARGET static void gemm_task_amx(const uint32_t *apk, size_t npan, size_t m0, size_t m1,
                                     size_t p0, size_t p1, const View *b, int N, int K, int kb0,
                                     int kb1, size_t n0, size_t n1, float *C, size_t ldc, int add0,
                                     uint32_t *bp, float *scratch, size_t lds, size_t scr_panels,
                                     int stream, double *ss, const float *bias) {
    size_t npb = ((size_t)N + NR - 1) / NR, nt = (n1 - n0 + NR - 1) / NR; /* task's panels */
    const size_t astr = (size_t)(KC / 2) * AMX_MR;
    int keep = p1 - p0 <= scr_panels; /* scratch holds all the task's rows: C only at the end */
    amx_config(AMX_MR);
    for (int g = kb0; g < kb1; g += AMX_KB) {
        int nb = kb1 - g < AMX_KB ? kb1 - g : AMX_KB, klast = K - (g + nb - 1) * KC;
        int kp_last = ((klast < KC ? klast : KC) + 1) / 2;
        for (int j = 0; j < nb && !b->pk; j++) { /* block j: nt panels of KPAD(kp) pairs */
            int k0 = (g + j) * KC;
            int kn = K - k0 < KC ? K - k0 : KC;
            pack_task_panels(b, n0, n1, k0, kn, bp + (size_t)j * nt * PANEL_WORDS,
                             (size_t)KPAD((kn + 1) / 2) * NR);
        }
        for (size_t r0 = p0; r0 < p1; r0 += AMX_RCH) {
            size_t r1 = p1 - r0 < AMX_RCH ? p1 : r0 + AMX_RCH, nq = (r1 - r0 + 1) / 2;
            for (int j = 0; j < nb; j++) {
                int kb = g + j, kp = j == nb - 1 ? kp_last : KC / 2;
                const uint32_t *bj = bp + (size_t)j * nt * PANEL_WORDS;
                for (size_t n = n0; n < n1; n += NR) {
                    size_t ps = (size_t)KPAD(kp) * NR; /* pack_task_panels' panels */
                    const uint32_t *bt = task_panel(b, bj, (size_t)kb, K, n, n0, ps), *nx = NULL;
                    int nxp = 0; /* the panel after this one (pairs), fetched meanwhile */
                    if (n + NR < n1)
                        nx = task_panel(b, bj, (size_t)kb, K, n + NR, n0, ps), nxp = kp;
                    else if (j + 1 < nb)
                        nx = task_panel(b, bj + nt * PANEL_WORDS, (size_t)kb + 1, K, n0, n0, 0),
                        nxp = j + 1 == nb - 1 ? kp_last : KC / 2;
                    size_t lines = (size_t)KPAD(nxp) * NR * sizeof(uint32_t) / 64;
                    for (size_t i = r0, q = 0; i < r1; i += 2, q++) {
                        size_t m = m0 + i * AMX_MR;
                        int mr0 = m1 - m < AMX_MR ? (int)(m1 - m) : AMX_MR;
                        int mr1 = i + 1 < r1 ? (m1 - m - AMX_MR < AMX_MR ? (int)(m1 - m - AMX_MR)
                                                                         : AMX_MR)
                                             : 0;
                        float *cm = C + m * ldc + n,
                              *sm = scratch + (i - (keep ? p0 : r0)) * AMX_MR * lds + (n - n0);
                        /* C's sums from scratch after a block before (of this group unless
                         * keep), else from C (add0, or a group before); to scratch but after
                         * the last block (of the group unless keep) */
                        int from = keep ? kb > kb0 : j > 0, to = keep ? kb + 1 < kb1 : j + 1 < nb;
                        const float *cin = add0 || kb > kb0 ? cm : NULL;
                        AmxC c = {from ? sm : cin,
                                  to ? sm : cm,
                                  from ? lds : ldc,
                                  to ? lds : ldc,
                                  from,
                                  to,
                                  stream && kb + 1 == kb1,
                                  NULL,
                                  npb,
                                  NULL};
                        if (ss && kb + 1 == kb1) /* row panel m / AMX_MR, column panel n / NR */
                            c.ss = ss + m / AMX_MR * npb + n / NR;
                        if (bias && kb + 1 == kb1) c.bias = bias + n;
                        size_t l0 = lines * q / nq, l1 = lines * (q + 1) / nq;
                        amx_tile(AMX_MR, kp, apk + ((size_t)kb * npan + i) * astr, mr1 > 0, bt, &c,
                                 mr0, mr1, n1 - n < NR ? (int)(n1 - n) : NR,
                                 nx ? (const char *)nx + 64 * l0 : NULL, nx ? (int)(l1 - l0) : 0);
                    }
                }
            }
        }
    }
    if (stream) _mm_sfence(); /* the streamed lines before the threads meet */
    _tile_release();
}

/* op(A) is packed once per chunk of rows (all of it up to A_CHUNK_WORDS of packed words) by all
 * threads, then the tasks (column blocks of C, and row parts when there are too few of those)
 * share it: each tile of C is still one task's, over K in block order, so the bits do not
 * depend on the thread count or on the chunking. (Until this, each task packed its own rows of
 * A: the LM head's 49152 columns packed the same activations 128 times; pack_panel was 18% of a
 * SmolLM2 LoRA step.) */
/* 32 MiB of packed A at most: the LM head's input gradient (M = head_chunk's rows, K = V) fits
 * in one chunk (GPT-2: 166 x 50257 is 16.7 MB; at 16 MiB it ran as 156 + 10 rows, reading the
 * 50257 x 768 head twice: 98 -> 125 GFLOP/s on one thread, 190 -> 217 on two, whole) */
#define A_CHUNK_WORDS ((size_t)8 << 20)

/* The column tasks of a product of np panels of NR columns on nt threads: whole panels, at most
 * NC columns, the panels spread evenly (counts differ by one at most), at least want tasks when
 * there are that many panels; and a multiple of nt tasks of equal width where one exists (18
 * panels, 576 columns, on 2 threads: 6 tasks of 3 panels, where 4 of 160, 160, 160 and 96
 * columns kept one thread idle a sixth of the time: 1.80x over one thread, 1.9x after). */
static size_t column_tasks(size_t np, size_t nt, size_t want) {
    size_t wmax = NC / NR, least = (np + wmax - 1) / wmax; /* panels a task at most; tasks */
    if (np <= want) return np > least ? np : least;
    size_t lo = least > want ? least : want;
    for (size_t t = (lo + nt - 1) / nt * nt; t <= np && t <= 4 * lo; t += nt)
        if (np % t == 0) return t;
    return lo;
}

/* K slices: a product whose K is at least 2 x SLICE_KB blocks and whose partial sums fit in
 * SLICE_BYTES (the LM head's input gradient: K the vocabulary, 49152 x 576 by 170 rows on
 * SmolLM2) runs as ns slices of K, each into a partial of C, the partials then added to C in
 * slice order. Without them each of its few column tasks read all of packed op(A) (16.7 MB) from
 * L3 once per K block row: 212-258 GFLOP/s on 2 threads where the layers' products run at 370-390.
 * The slices depend on the shape only, so the bits do not depend on the thread count. */
#define SLICE_KB    16 /* K blocks a slice at least (4096 of K) */
#define SLICE_MAX   8
#define SLICE_BYTES ((size_t)32 << 20)

static size_t k_slices(size_t nkb, int M, int N) {
    size_t ns = nkb / SLICE_KB;
    if (ns > SLICE_MAX) ns = SLICE_MAX;
    while (ns >= 2 && ns * (size_t)M * (size_t)N * sizeof(float) > SLICE_BYTES)
        ns--;
    return ns >= 2 ? ns : 1;
}

/* C (+)= the ns partials (M x N each, rows [lo, hi)), in slice order */
static void add_slices(float *C, int ldc, float beta, const float *part, size_t ns, int M, int N,
                       size_t lo, size_t hi) {
    for (size_t m = lo; m < hi; m++) {
        float *c = C + m * (size_t)ldc;
        for (size_t s = 0; s < ns; s++) {
            const float *p = part + (s * (size_t)M + m) * (size_t)N;
            if (s == 0 && beta == 0.0f)
                memcpy(c, p, sizeof(float) * (size_t)N);
            else
#pragma omp simd
                for (int n = 0; n < N; n++)
                    c[n] += p[n];
        }
    }
}

/* Row tasks (gemm_x) take up to this many panels of columns each */
#define ROW_TASK_PANELS 32

/* Outputs of at least this many bytes are written past the caches where the AMX path can
 * (whole aligned lines: amx_tile), as the weight gradient's always are: no read for ownership of
 * lines that will not be read again before they leave the caches */
#define STREAM_MIN_BYTES ((size_t)8 << 20)

/* gemm_x's stream: its outputs' whole lines past the caches on the AMX tiles (STREAM_AMX), or on
 * both fast paths (STREAM_ALL: the weight gradients, which only AdamW reads, a step later: GPT-2
 * --bf16 on one Zen 4 core 5.6% faster streamed). The vdpbf16ps path keeps the forward outputs
 * in the caches: streamed, a GPT-2 --bf16 step ran 1% slower there and a SmolLM2 LoRA one 2.4%. */
enum { STREAM_NONE, STREAM_AMX, STREAM_ALL };

/* The forward products' outputs (matmul_fwd, matmul_acc and the typed weights' forward: a
 * layer's activations, which training keeps for the backward, each in memory of its own that
 * nothing has touched since the step before) are streamed from this size: their lines came from
 * memory for ownership, and a GPT-2 --bf16 step's forward products ran 17% faster streamed, the
 * GELU after the fc product too (its input then in no cache: 5.6 -> 3.6 ms a step, the lines it
 * writes not evicting dirty ones), the attention no slower. Below it (decoding's few rows) the
 * outputs stay in the caches. */
#define FWD_STREAM_MIN_BYTES ((size_t)256 << 10)

static int stream_out(int M, int N, size_t min_bytes) {
    return (size_t)M * (size_t)N * sizeof(float) >= min_bytes ? STREAM_AMX : STREAM_NONE;
}

/* One op(B) of a product, its N columns and where they go (C, row stride ldc) */
typedef struct XOut {
    const View *b;
    int N, ldc;
    float *C;
    const float *bias; /* or NULL: (N) added to each row of C = op(A) op(B) (beta 0 only) */
} XOut;

/* out (rows [lo, hi), row stride ldo) += bias (N) */
static void bias_add(float *restrict out, const float *restrict bias, int N, size_t ldo, size_t lo,
                     size_t hi) {
    for (size_t m = lo; m < hi; m++) {
        float *restrict o = out + m * ldo;
#pragma omp simd
        for (int n = 0; n < N; n++)
            o[n] += bias[n];
    }
}

#define X_MAX_OUTS 8

/* C_i (M, N_i) (beta 0: =, 1: +=) op(A) op(B_i) for the nb outputs o (at most X_MAX_OUTS) of
 * one op(A): A packed once for all of them, and the column tasks over their panels in order
 * (several weights over one input: a layer's q, k and v). Each tile of each C_i is one task's
 * over K in block order, as with one output: the same bits as nb separate products. K slices
 * with one output only. stream: STREAM_*; ss (or NULL, and K slices none): each tile's Σ x² of
 * C's final values, at ss[row panel * column panels + column panel], the row panels the path's
 * (AMX_MR rows on the tiles, MR otherwise). */
static int gemm_x(int nth, const View *a, int nb, const XOut *o, int M, int K, float beta,
                  int stream, double *ss, const uint32_t *apk_in, uint32_t **apk_out) {
    int amx = path_x() == 2;
    size_t poff[X_MAX_OUTS + 1] = {0}; /* the outputs' first panels in the tasks' order */
    for (int i = 0; i < nb; i++)
        poff[i + 1] = poff[i] + ((size_t)o[i].N + NR - 1) / NR;
    int N = o[0].N, ldc = o[0].ldc;
    float *C = o[0].C;
    size_t nkb = ((size_t)K + KC - 1) / KC, ns = nb == 1 ? k_slices(nkb, M, N) : 1;
    /* op(A)'s panels: pm rows, astr words a K block */
    const size_t pm = amx ? AMX_MR : MR, astr = (size_t)(KC / 2) * pm;
    size_t chunk = A_CHUNK_WORDS / (nkb * astr) * pm; /* rows per chunk, a multiple of pm */
    if (chunk < pm) chunk = pm;
    if (chunk < (size_t)M) { /* chunks of equal size: each one reads all of op(B) again */
        size_t nch = ((size_t)M + chunk - 1) / chunk;
        chunk = (((size_t)M + nch - 1) / nch + pm - 1) / pm * pm;
    }
    if (chunk > (size_t)M) chunk = (size_t)M;
    size_t npan_max = (chunk + pm - 1) / pm;
    size_t nt = (size_t)(nth > 0 ? nth : 1), want = 2 * nt, np = poff[nb];
    size_t tn = column_tasks(np, nt, want), tm = 1;
    while (tn * tm < want && npan_max >= 2 * tm) /* few columns: split the rows too */
        tm *= 2;
    /* op(A) far taller than op(B) is wide (the LM head's weight gradient: 50257 rows by 768
     * columns): tasks of rows with all the columns read op(A) once, where each column task read
     * all of it (the head's gradient 19.5 -> 17.6 ms, GPT-2's fc 1.0 -> 0.8 ms, 2 threads) */
    if (amx && ns == 1 && npan_max >= want && np <= ROW_TASK_PANELS && (size_t)M >= 4 * np * NR) {
        tn = 1;
        tm = want;
    }
    size_t tw = (np + tn - 1) / tn * NR; /* columns of a task at most */
    long ntasks = (long)(tn * tm * ns);
    if (nth > ntasks) nth = (int)ntasks;
    if (nth < 1) nth = 1;
    size_t per = (np + tn - 1) / tn * NR * KC / 2; /* words of one thread's packed columns */
    per *= amx ? AMX_KB : nkb < X_KB ? nkb : X_KB; /* a group of K blocks at once */
    /* and on the AMX tiles C's running sums between K blocks (gemm_task_amx), after them: a
     * task's rows over several groups of blocks where they fit (amx_scratch_bytes) */
    size_t scr_panels = AMX_RCH, tpan = (npan_max + tm - 1) / tm;
    if (nkb / ns > AMX_KB) {
        size_t fit = amx_scratch_bytes() / (AMX_MR * tw * sizeof(float));
        scr_panels = tpan < fit ? tpan : fit > AMX_RCH ? fit : AMX_RCH;
    }
    size_t scr = amx && nkb > ns ? scr_panels * AMX_MR * tw : 0;
    per += scr;
    /* op(A) packed already (apk_in: on the tiles, in one chunk), or handed back packed */
    int one = amx && chunk >= (size_t)M;
    if (apk_out) *apk_out = NULL;
    uint32_t *apk = apk_in && one ? (uint32_t *)apk_in
                                  : cpu_alloc64(nkb * npan_max * astr * sizeof *apk),
             *bbuf = cpu_alloc64(per * (size_t)nth * sizeof *bbuf);
    float *part = ns > 1 ? malloc(sizeof(float) * ns * (size_t)M * (size_t)N) : NULL;
    if (!apk || !bbuf || (ns > 1 && !part)) {
        if (apk != apk_in) free(apk);
        free(bbuf);
        free(part);
        return -1;
    }
    for (size_t m0 = 0; m0 < (size_t)M; m0 += chunk) {
        size_t m1 = m0 + chunk < (size_t)M ? m0 + chunk : (size_t)M;
        size_t npan = (m1 - m0 + pm - 1) / pm;
        /* a k-major fp32 op(A) packs AMX_KGRP panels at once (pack_a_kmajor_amx), or for
         * vdpbf16ps up to X_KGRP (pack_kmajor_pairs across them: a panel alone read 48 bytes of
         * every row of the view in turn, the weight gradients' doutᵀ), fewer where that would
         * leave under two groups a thread */
        size_t ag = a->kmajor && amx ? AMX_KGRP : a->kmajor && !a->h ? X_KGRP : 1;
        while (!amx && ag > AMX_KGRP && npan < ag * 2 * nt)
            ag /= 2;
        size_t ngrp = (npan + ag - 1) / ag;
        long npack = apk == apk_in ? 0 : (long)(ngrp * nkb);
#pragma omp parallel num_threads(nth) if (nth > 1)
        {
            /* panel-major: a thread packs whole rows of panels (K block-major gave one
             * thread every full block and the other the short last one: with K 576, blocks
             * of 256, 256 and 64, one thread packed twice what the other did and waited) */
#pragma omp for schedule(static)
            for (long j = 0; j < npack; j++) {
                size_t i = (size_t)j / nkb * ag, kb = (size_t)j % nkb, m = m0 + i * pm;
                int k0 = (int)kb * KC, kn = K - k0 < KC ? K - k0 : KC;
                size_t rows = m1 - m < ag * pm ? m1 - m : ag * pm;
                /* the tiles' layout: K block-major; vdpbf16ps': panel-major (gemm_task) */
                uint32_t *d = apk + (amx ? kb * npan + i : i * nkb + kb) * astr;
                if (ag > 1 && amx)
                    pack_a_kmajor_amx(a, m, (int)rows, (size_t)k0, kn, d, astr, (int)pm);
                else if (ag > 1)
                    pack_a_kmajor_x(a, m, (int)rows, (size_t)k0, kn, d, nkb * astr);
                else
                    pack_a_panel(a, m, (int)rows, (size_t)k0, kn, d, amx, (int)pm);
            }
            uint32_t *bp = bbuf + per * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
            for (long t = 0; t < ntasks; t++) {
                size_t tc = (size_t)t % tn, tr = (size_t)t / tn % tm, s = (size_t)t / (tn * tm);
                size_t q0 = np * tc / tn, q1 = np * (tc + 1) / tn; /* panels, all outputs' */
                size_t p0 = npan * tr / tm, p1 = npan * (tr + 1) / tm;
                int kb0 = (int)(nkb * s / ns), kb1 = (int)(nkb * (s + 1) / ns);
                for (int i = 0; i < nb && p0 < p1; i++) { /* the outputs the panels cover */
                    size_t lo = q0 > poff[i] ? q0 : poff[i],
                           hi = q1 < poff[i + 1] ? q1 : poff[i + 1];
                    if (lo >= hi) continue;
                    size_t n0 = (lo - poff[i]) * NR, n1 = (hi - poff[i]) * NR;
                    if (n1 > (size_t)o[i].N) n1 = (size_t)o[i].N;
                    /* into C, or slice s into its partial (row m at row m of it) */
                    float *Ci = ns > 1 ? part + s * (size_t)M * (size_t)N : o[i].C;
                    size_t ldi = ns > 1 ? (size_t)N : (size_t)o[i].ldc;
                    int add0 = ns == 1 && beta != 0.0f;
                    if (amx)
                        gemm_task_amx(apk, npan, m0, m1, p0, p1, o[i].b, o[i].N, K, kb0, kb1, n0,
                                      n1, Ci, ldi, add0, bp, (float *)(bp + per - scr), tw,
                                      scr_panels, stream && ns == 1, ss,
                                      ns == 1 ? o[i].bias : NULL);
                    else
                        gemm_task(apk, nkb, m0, m1, p0, p1, o[i].b, o[i].N, K, kb0, kb1, n0, n1, Ci,
                                  ldi, add0, !a->kmajor, bp, stream == STREAM_ALL && ns == 1,
                                  ns == 1 ? ss : NULL, ns == 1 ? o[i].bias : NULL);
                }
            }
            if (ns > 1) {
                size_t lo, hi;
                omp_share(m1 - m0, &lo, &hi);
                add_slices(C, ldc, beta, part, ns, M, N, m0 + lo, m0 + hi);
            }
            if (ns > 1) { /* the biases after the sums (else in the tiles' last block) */
                size_t lo, hi;
                omp_share(m1 - m0, &lo, &hi);
                for (int i = 0; i < nb; i++)
                    if (o[i].bias)
                        bias_add(o[i].C, o[i].bias, o[i].N, (size_t)o[i].ldc, m0 + lo, m0 + hi);
            }
        }
    }
    if (apk_out && one && apk != apk_in)
        *apk_out = apk;
    else if (apk != apk_in)
        free(apk);
    free(bbuf);
    free(part);
    return 0;
}

/* The pieces, for products that pack an operand once and run it many times (attention_gemm.c);
 * cpu_internal.h says what each does. */
void cpu_bf16_pack_b(const float *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0, int kn,
                     uint32_t *dst, int amx) {
    View v = {src, NULL, ld, kmajor, NULL};
    if (amx)
        pack_b_panel(&v, r0, rn, k0, kn, dst);
    else
        pack_panel(&v, r0, rn, k0, kn, NR, dst);
}

void cpu_bf16_pack_a(const float *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0, int kn,
                     uint32_t *dst, int amx) {
    View v = {src, NULL, ld, kmajor, NULL};
    pack_a_panel(&v, r0, rn, k0, kn, dst, amx, MR);
}

void cpu_bf16_pack_a_h(const uint16_t *src, size_t ld, int kmajor, size_t r0, int rn, size_t k0,
                       int kn, uint32_t *dst, int amx) {
    View v = {NULL, src, ld, kmajor, NULL};
    pack_a_panel(&v, r0, rn, k0, kn, dst, amx, MR);
}

X_TARGET void cpu_bf16_scale_round(const float *x, int n, float s, uint16_t *d) {
    round_row_s(x, d, n, 1, s);
}

void cpu_bf16_tile(int kp, const uint32_t *a, int a_kmajor, const uint32_t *b, float *c, size_t ldc,
                   int mr, int nr, int add, int amx) {
    if (amx) {
        AmxC cc = {add ? c : NULL, c, ldc, ldc, 0, 0, 0, NULL, 0, NULL};
        amx_tile(MR, kp, a, 0, b, &cc, mr, 0, nr, NULL, 0);
        return;
    }
    (a_kmajor ? kernel_tile : kernel_tile_rows)(1, kp, a, b, c, ldc, mr, nr, add, NULL, NULL, 0);
}

AMX_TARGET void cpu_bf16_tiles(int rows) {
    if (rows)
        amx_config(rows);
    else
        _tile_release();
}
#endif

int cpu_bf16_amx(void) {
    return path_x() == 2;
}

// --- the entry points ----------------------------------------------------------------------------

/* C (M, N) = beta C + op(A) op(B) (beta 0 or 1) in bf16 with fp32 sums (+ bias (N), or NULL, on
 * each row); A, B as views */
static int gemm_views(int nth, const View *a, const View *b, int M, int N, int K, float beta,
                      float *C, int ldc, const float *bias, size_t stream_min) {
    int rc = 0;
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int m = 0; m < M; m++)
                memset(C + (size_t)m * ldc, 0, (size_t)N * sizeof *C);
    }
#ifdef BF16_X86
    else if (path_x()) {
        XOut o = {b, N, ldc, C, beta == 0.0f ? bias : NULL};
        rc = gemm_x(nth, a, 1, &o, M, K, beta, stream_out(M, N, stream_min), NULL, NULL, NULL);
        if (rc || o.bias) return rc;
    }
#endif
    else if ((rc = gemm_plain(nth, a, b, M, N, K, beta, C, ldc)))
        return rc;
    if (bias) CPU_PAR_RANGE(nth, (size_t)M, bias_add(C, bias, N, (size_t)ldc, lo, hi));
    return 0;
}

int cpu_gemm_bf16(int nth, int ta, int tb, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    View a = {A, NULL, (size_t)lda, ta, NULL}, b = {B, NULL, (size_t)ldb, !tb, NULL};
    return gemm_views(nth, &a, &b, M, N, K, beta, C, ldc, NULL, STREAM_MIN_BYTES);
}

static void oom(Backend *be, const char *what, int M, int N, int K) {
    if (!be->err.code)
        tuna_errf(&be->err, TUNA_ENOMEM, "cpu: out of memory for a bf16 %s (%d x %d x %d)", what, M,
                  K, N);
}

static int threads_of(Backend *be, int M, int K, int N) {
    return (size_t)M * (size_t)K * (size_t)N >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
}

static const uint32_t *mirror_pack(const Backend *be, const float *w, int N, int K, int t);

void cpu_matmul_bf16(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N, float beta) {
    int nth = threads_of(be, M, K, N);
    View a = {in, NULL, (size_t)K, 0, NULL},
         b = {w, NULL, (size_t)K, 0, mirror_pack(be, w, N, K, 0)};
    if (gemm_views(nth, &a, &b, M, N, K, beta, out, N, bias, FWD_STREAM_MIN_BYTES))
        oom(be, "matmul", M, N, K);
}

/* The operands of din (M, K) += dout (M, N) w (N, K): op(A) = dout, op(B) = w, k-major (its
 * input-gradient copy where w is tracked) */
static void din_views(const Backend *be, const float *dout, const float *w, int K, int N, View *a,
                      View *b) {
    *a = (View){dout, NULL, (size_t)N, 0, NULL};
    *b = (View){w, NULL, (size_t)K, 1, mirror_pack(be, w, N, K, 1)};
}

void cpu_matmul_bwd_bf16(Backend *be, float *din, float *dw, const float *dout, const float *in,
                         const float *w, int M, int K, int N) {
    int nth = threads_of(be, M, K, N);
    if (din) {
        View a, b;
        din_views(be, dout, w, K, N, &a, &b);
        if (gemm_views(nth, &a, &b, M, K, N, 1.0f, din, K, NULL, STREAM_MIN_BYTES)) {
            oom(be, "matmul_bwd", M, N, K);
            return;
        }
    }
    if (dw && cpu_gemm_bf16(nth, 1, 0, N, K, M, dout, N, in, K, 1.0f, dw, K)) {
        oom(be, "matmul_bwd", M, N, K);
        return;
    }
}

#ifdef BF16_X86
/* The weight gradient's op(A) = doutᵀ on the AMX tiles (k-major: N rows, M deep; panels i0 .. i1
 * of npd, nkd K blocks) from the input gradient's op(A) = dout as gemm_x packed it for the tiles
 * (src: by rows, npa panels of AMX_MR rows a K block, ceil(N / KC) blocks): the bf16 values and
 * zero pads of pack_a_kmajor_amx, in its places. There the rows of a K block lie together; the
 * fp32 dout is read a line from every row in turn (the LM head's dlogits, 252 rows of 50257:
 * 5.5 ms a GPT-2 step where the input gradient had packed the same values already). */
X_TARGET static void kmajor_from_rows(const uint32_t *src, size_t npa, int M, uint32_t *dst,
                                      size_t npd, size_t nkd, size_t i0, size_t i1, int nt) {
    const size_t astr = (size_t)(KC / 2) * AMX_MR, rows = npa * AMX_MR; /* src's, pads zero */
    for (size_t i = i0; i < i1; i++) {
        size_t col = i * AMX_MR; /* dout's columns col .. col + 15: 8 words of src's rows */
        const uint32_t *sb = src + col / KC * npa * astr + col % KC / 2;
        for (size_t kb = 0; kb < nkd; kb++) {
            int kn = M - (int)(kb * KC) < KC ? M - (int)(kb * KC) : KC, kq = KPAD((kn + 1) / 2);
            uint32_t *d = dst + (kb * npd + i) * astr;
            for (int q0 = 0; q0 < kq; q0 += 16) {
                __m512i x[16];
                for (int j = 0; j < 16; j++) { /* rows t, t + 1: word c = (t, c) | (t + 1, c) */
                    size_t t = kb * KC + 2 * (size_t)(q0 + j);
                    __m256i lo = _mm256_setzero_si256(), hi = lo;
                    if (t < rows)
                        lo = _mm256_loadu_si256(
                                (const __m256i *)(sb + t / AMX_MR * astr + t % AMX_MR * (KC / 2)));
                    if (t + 1 < rows)
                        hi = _mm256_loadu_si256((const __m256i *)(sb + (t + 1) / AMX_MR * astr +
                                                                  (t + 1) % AMX_MR * (KC / 2)));
                    x[j] = _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
                }
                transpose16(x);
                for (int r = 0; r < AMX_MR; r++)
                    if (nt) /* whole lines, read once by the product well after */
                        _mm512_stream_si512((void *)(d + (size_t)r * (KC / 2) + q0), x[r]);
                    else
                        _mm512_storeu_si512(d + (size_t)r * (KC / 2) + q0, x[r]);
            }
        }
    }
    if (nt) _mm_sfence();
}
#endif

int cpu_matmul_bwd_dw_bf16(Backend *be, float *din, float *dw, const float *dout, const float *in,
                           const float *w, int M, int K, int N, double *sumsq) {
#ifdef BF16_X86
    /* dw (N, K) = op(A) op(B): op(A) = doutᵀ (k-major), op(B) seen as inᵀ (k-major), M deep */
    size_t nkb = ((size_t)M + KC - 1) / KC;
    int path = path_x();
    if (!path || M <= 0 || N <= 0 || K <= 0 || k_slices(nkb, N, K) > 1) return 0;
    int nth = threads_of(be, M, K, N);
    uint32_t *pa = NULL, *pk = NULL;
    if (din && path == 1) { /* vdpbf16ps: cpu_matmul_bwd_bf16's, op(A) packed anew for dw */
        cpu_matmul_bwd_bf16(be, din, NULL, dout, NULL, w, M, K, N);
    } else if (din) { /* cpu_matmul_bwd_bf16's input gradient, its packed dout kept for dw's */
        View a, b;
        din_views(be, dout, w, K, N, &a, &b);
        XOut od = {&b, K, K, din, NULL};
        if (gemm_x(nth, &a, 1, &od, M, N, 1.0f,
                   (size_t)M * (size_t)K * sizeof(float) >= STREAM_MIN_BYTES, NULL, NULL, &pa)) {
            oom(be, "matmul_bwd", M, N, K);
            if (sumsq) *sumsq = NAN;
            return 1;
        }
        size_t npd = ((size_t)N + AMX_MR - 1) / AMX_MR,
               words = nkb * npd * (size_t)(KC / 2) * AMX_MR;
        CpuPackBudget *bud = be->ctx;
        if (pa && words <= A_CHUNK_WORDS && bud->kpack_words < words) {
            free(bud->kpack);
            bud->kpack = cpu_alloc64(words * sizeof *pk);
            bud->kpack_words = bud->kpack ? words : 0;
        }
        if (pa && words <= bud->kpack_words) {
            pk = bud->kpack;
            CPU_PAR_RANGE(nth, npd,
                          kmajor_from_rows(pa, ((size_t)M + AMX_MR - 1) / AMX_MR, M, pk, npd, nkb,
                                           lo, hi, words * sizeof *pk >= STREAM_MIN_BYTES));
        }
        free(pa);
    }
    View a = {dout, NULL, (size_t)N, 1, NULL}, b = {in, NULL, (size_t)K, 1, NULL};
    XOut o = {&b, K, K, dw, NULL};
    /* Σ dw² by tiles: a row panel's part of a column panel each, added in order below */
    size_t pm = path == 2 ? AMX_MR : MR;
    size_t nps = sumsq ? ((size_t)N + pm - 1) / pm * (((size_t)K + NR - 1) / NR) : 0;
    double *ss = nps ? malloc(nps * sizeof *ss) : NULL;
    if ((nps && !ss) || gemm_x(nth, &a, 1, &o, N, M, 0.0f, STREAM_ALL, ss, pk, NULL)) {
        free(ss);
        oom(be, "matmul_bwd_dw", M, N, K);
        if (sumsq) *sumsq = NAN;
        return 1;
    }
    if (sumsq) {
        double t = 0;
        for (size_t i = 0; i < nps; i++)
            t += ss[i];
        *sumsq = t;
    }
    free(ss);
    return 1;
#else
    (void)be, (void)din, (void)dw, (void)dout, (void)in, (void)w, (void)M, (void)K, (void)N,
            (void)sumsq;
    return 0;
#endif
}

/* Rows [r0, r0 + nn) of a typed weight into dst (nn x K) in bf16, each row dequantized into fp32
 * scratch (cpu_dequant_rows) and rounded to nearest even, as the packing would round them: the
 * tile the products read is half the bytes of fp32 rows (an fp32 tile went through memory twice:
 * the quantized runs were the ones the machine's busy spells slowed most). 0, or -1 no memory. */
static int dequant_rows_bf16(const Weight *w, int r0, int nn, uint16_t *dst) {
    int K = w->cols;
    float *row = malloc(sizeof(float) * (size_t)K);
    if (!row) return -1;
#ifdef BF16_X86
    int x = path_x() != 0;
#endif
    for (int r = 0; r < nn; r++) {
        uint16_t *d = dst + (size_t)r * K;
        cpu_dequant_rows(w, r0 + r, 1, row);
#ifdef BF16_X86
        if (x) {
            round_row_x(row, d, K);
            continue;
        }
#endif
        for (int k = 0; k < K; k++)
            d[k] = bf16_round(row[k]);
    }
    free(row);
    return 0;
}

/* dequant_rows_bf16 of rows [n0, n0 + nn) on nth threads: 0, or -1 no memory */
static int dequant_tile_bf16(const Weight *w, int n0, int nn, uint16_t *buf, int nth) {
    int fail = 0;
    CPU_PAR_RANGE(
            nth, (size_t)nn,
            if (dequant_rows_bf16(w, n0 + (int)lo, (int)(hi - lo), buf + lo * (size_t)w->cols))
                    __atomic_store_n(&fail, 1, __ATOMIC_RELAXED));
    return fail ? -1 : 0;
}

/* Rows of a typed weight other than BF16 go through a tile of about 16 MiB of fp32 rows (held as
 * bf16: 8 MiB). */
static int typed_tile_rows(int K, int N) {
    int t = (int)(PLAIN_BLOCK / (size_t)(K > 0 ? K : 1)) / NR * NR;
    if (t < NR) t = NR;
    return t < N ? t : N;
}

#ifdef BF16_X86
/* Panels [lo, hi) of weight_pack's layout (panel j: K block j / npb, rows NR * (j % npb) ..) of
 * op(B) (N columns, K deep): t 0 the weight's rows, t 1 the weight itself (the input gradient's:
 * its columns are op(B)'s columns, pairs along its rows) */
X_TARGET static void pack_weight_panels(const Weight *w, int t, int N, int K, uint32_t *dst,
                                        size_t lo, size_t hi) {
    size_t npb = ((size_t)N + NR - 1) / NR;
    View v = {NULL, w->data, (size_t)w->cols, t, NULL};
    for (size_t j = lo; j < hi; j++) {
        size_t n = j % npb * NR;
        int k0 = (int)(j / npb) * KC, kn = K - k0 < KC ? K - k0 : KC;
        pack_b_panel(&v, n, (size_t)N - n < NR ? (int)((size_t)N - n) : NR, (size_t)k0, kn,
                     dst + panel_at(j / npb, j % npb, K));
    }
}
#endif

#ifdef BF16_X86
/* Words of weight_pack's layout for an op(B) of N columns, K deep (the last K block's panels as
 * short as it: a K of 576 in blocks of 256 wasted a third) */
static size_t panels_words(int N, int K) {
    return ((size_t)N + NR - 1) / NR * panel_words(K);
}

/* The two halves of weight_pack's layouts that a few rows fill, shared by the typed weights'
 * packing (pack_typed_units) and the trained weights' copies (mirror_pack_rows); nt: the lines
 * streamed past the caches (pack_panel_nt; the caller fences).
 * - rows_fwd: panel u of the forward's op(B) (its columns are rows r0 .. r0 + rn - 1 of v, rn <=
 *   NR), every K block of K, each block's pad pairs zeroed;
 * - rows_din: in K block kb (kn deep; K in all) of the input gradient's op(B) = v (k-major: N
 *   columns, npb panels), the pairs that v's rows k .. k + sn - 1 make (k at an even offset s of
 *   the block), 16 of every panel per 32 rows; the block's pad pairs zeroed when these rows end
 *   it. */
X_TARGET static void rows_fwd(const View *v, size_t r0, int rn, int K, size_t u, uint32_t *dst,
                              int nt) {
    for (int kb = 0, k0 = 0; k0 < K; kb++, k0 += KC) {
        int kn = K - k0 < KC ? K - k0 : KC, kp = (kn + 1) / 2;
        uint32_t *d = dst + panel_at((size_t)kb, u, K);
        (nt ? pack_panel_nt : pack_panel)(v, r0, rn, (size_t)k0, kn, NR, d);
        memset(d + (size_t)kp * NR, 0, (size_t)(KPAD(kp) - kp) * NR * sizeof *d);
    }
}

X_TARGET static void rows_din(const View *v, size_t k, int sn, int N, size_t npb, size_t kb, int s,
                              int kn, int K, uint32_t *dst, int nt) {
    int kp = (kn + 1) / 2;
    for (size_t p = 0; p < npb; p++) {
        size_t c0 = p * NR;
        uint32_t *d = dst + panel_at(kb, p, K);
        (nt ? pack_panel_nt : pack_panel)(v, c0, (size_t)N - c0 < NR ? (int)((size_t)N - c0) : NR,
                                          k, sn, NR, d + (size_t)(s / 2) * NR);
        if (s + sn == kn) /* the block's last rows: its pad pairs up to a whole AMX step */
            memset(d + (size_t)kp * NR, 0, (size_t)(KPAD(kp) - kp) * NR * sizeof *d);
    }
}

/* Units [lo, hi) of rows n0 .. n0 + nn - 1 of a typed weight packed as op(B) into dst, in
 * weight_pack's layout (panels_words(N, K) words): t 0, the forward's (those rows are op(B)'s
 * nn columns, K = w->cols; a unit is a panel's 32 rows, every K block of them), t 1 the input
 * gradient's (op(B)'s columns are w's, K = nn; a unit is a K block of 256 rows, every panel of
 * it, 32 rows at a time). Each piece is dequantized into fp32 scratch (sc: 32 rows) and packed
 * from there while it is in cache: the words of the per-task packing of dequant_tile_bf16's
 * rows (both round each value to nearest even), without that tile going through memory twice.
 * *fail = 1: no memory. */
X_TARGET static void pack_typed_units(const Weight *w, int t, int n0, int nn, uint32_t *dst,
                                      size_t lo, size_t hi, int *fail) {
    int C = w->cols, N = t ? C : nn, K = t ? nn : C;
    float *sc = malloc(sizeof(float) * 32 * (size_t)C);
    if (!sc) {
        __atomic_store_n(fail, 1, __ATOMIC_RELAXED);
        return;
    }
    size_t npb = ((size_t)N + NR - 1) / NR;
    View v = {sc, NULL, (size_t)C, t, NULL};
    for (size_t u = lo; u < hi; u++) {
        if (!t) { /* panel u: rows 32 u .. of the tile, each K block */
            int r0 = (int)u * NR, rn = nn - r0 < NR ? nn - r0 : NR;
            cpu_dequant_rows(w, n0 + r0, rn, sc);
            rows_fwd(&v, 0, rn, K, u, dst, 0);
            continue;
        }
        int k0 = (int)u * KC, kn = K - k0 < KC ? K - k0 : KC;
        for (int s = 0; s < kn; s += 32) { /* 32 rows: 16 pairs of every panel */
            int sn = kn - s < 32 ? kn - s : 32;
            cpu_dequant_rows(w, n0 + k0 + s, sn, sc);
            rows_din(&v, 0, sn, N, npb, u, s, kn, K, dst, 0);
        }
    }
    free(sc);
}

/* pack_typed_units of all units on nth threads: 0, or -1 no memory */
static int pack_typed(const Weight *w, int t, int n0, int nn, uint32_t *dst, int nth) {
    int K = t ? nn : w->cols;
    size_t units = t ? ((size_t)K + KC - 1) / KC : ((size_t)nn + NR - 1) / NR;
    int fail = 0;
    CPU_PAR_RANGE(nth, units, pack_typed_units(w, t, n0, nn, dst, lo, hi, &fail));
    return fail ? -1 : 0;
}
#endif

/* Bytes of a tile of tn rows of a typed weight as op(B) (t 0 the forward's, 1 the input
 * gradient's): packed in gemm_x's panels on its paths, bf16 rows otherwise */
static size_t typed_tile_bytes(const Weight *w, int t, int tn) {
#ifdef BF16_X86
    if (path_x()) return panels_words(t ? w->cols : tn, t ? tn : w->cols) * sizeof(uint32_t);
#endif
    (void)t;
    return (size_t)tn * (size_t)w->cols * sizeof(uint16_t);
}

/* Rows n0 .. n0 + nn - 1 of a typed weight into buf (typed_tile_bytes) as op(B), and *b the
 * view of them: packed (pack_typed) on gemm_x's paths, bf16 rows (dequant_tile_bf16)
 * otherwise; the same bits either way. 0, or -1 no memory. */
static int typed_tile(const Weight *w, int t, int n0, int nn, void *buf, int nth, View *b) {
    size_t ld = (size_t)w->cols;
#ifdef BF16_X86
    if (path_x()) {
        *b = (View){NULL, NULL, ld, t, buf};
        return pack_typed(w, t, n0, nn, buf, nth);
    }
#endif
    *b = (View){NULL, buf, ld, t, NULL};
    return dequant_tile_bf16(w, n0, nn, buf, nth);
}

/* A BF16 weight's panels for the forward (t 0: op(B) = its rows, Weight.pack) or for the input
 * gradient (t 1: op(B) = the weight, its columns the panels', Weight.pack_t), all of them as
 * gemm_task reads them: K block by K block, NR columns a panel in pairs along K (pack_panel; the
 * last panel's missing columns zero; panel_at: the last K block's panels as short as it). Made
 * once, on the first product, when the backend's budget has room (cpu_backend.h); NULL
 * otherwise, and the products pack as before. The same words as the per-product packing, so the
 * same bits. (The input gradient's packing was 7.5% of a SmolLM2 LoRA step on the AMX tiles.) */
static const uint32_t *weight_pack(Backend *be, const Weight *w, int nth, int t) {
#ifdef BF16_X86
    CpuPackBudget *bud = be->ctx;
    void *const *slot = t ? &w->pack_t : &w->pack;
    const uint32_t *pk = __atomic_load_n((uint32_t *const *)slot, __ATOMIC_ACQUIRE);
    if (pk || !bud || w->type != WT_BF16 || !path_x()) return pk;
    int N = t ? w->cols : w->rows, K = t ? w->rows : w->cols;
    size_t npb = ((size_t)N + NR - 1) / NR, nkb = ((size_t)K + KC - 1) / KC;
    size_t bytes = panels_words(N, K) * sizeof(uint32_t);
    size_t used = __atomic_add_fetch(&bud->used, bytes, __ATOMIC_RELAXED);
    if (used > bud->cap) {
        __atomic_sub_fetch(&bud->used, bytes, __ATOMIC_RELAXED);
        return NULL;
    }
    uint32_t *dst = host_alloc(be, bytes);
    if (!dst) {
        __atomic_sub_fetch(&bud->used, bytes, __ATOMIC_RELAXED);
        return NULL;
    }
    CPU_PAR_RANGE(nth, nkb * npb, pack_weight_panels(w, t, N, K, dst, lo, hi));
    void *none = NULL; /* another thread may have packed it meanwhile: theirs stays */
    if (!__atomic_compare_exchange_n((void **)slot, &none, dst, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        host_release(be, dst);
        __atomic_sub_fetch(&bud->used, bytes, __ATOMIC_RELAXED);
        return none;
    }
    return dst;
#else
    (void)be, (void)nth;
    return t ? w->pack_t : w->pack;
#endif
}

// --- packed copies of trainable fp32 weights ----------------------------------------------------

/* A trainable fp32 matrix's panels for its forward (pk[0]: op(B) = its rows) and input
 * gradient (pk[1]: op(B) = the matrix), weight_pack's layouts, that the AdamW pass writes as it
 * updates the values (cpu_mirror_adamw): the products then read them as they read a frozen
 * weight's, and the fp32 masters are not packed twice a step (the packing was 19% of a GPT-2
 * --bf16 step). The same words as the per-product packing, so the same bits. Valid only after
 * an AdamW pass that covered the whole matrix, until anything else writes it (the backend's
 * upload, copy and zero, weights_written): a stale copy is never read. */
struct CpuMirror {
    const float *w;
    int rows, cols;
    uint32_t *pk[2];
    size_t bytes;
    int valid;
};

static CpuMirror *mirror_find(const CpuPackBudget *b, const float *w) {
    for (int i = 0; i < b->n_mirrors; i++)
        if (b->mirrors[i].w == w) return &b->mirrors[i];
    return NULL;
}

static void mirror_drop(Backend *be, CpuMirror *m) {
    CpuPackBudget *b = be->ctx;
    host_release(be, m->pk[0]);
    __atomic_sub_fetch(&b->used, m->bytes, __ATOMIC_RELAXED);
    *m = b->mirrors[--b->n_mirrors];
}

void cpu_weight_track(Backend *be, const float *w, int rows, int cols) {
    CpuPackBudget *b = be->ctx;
    CpuMirror *m = mirror_find(b, w);
    if (rows <= 0 || cols <= 0) {
        if (m) mirror_drop(be, m);
        return;
    }
#ifdef BF16_X86
    if (m || !w || !be->mm_bf16 || !path_x()) return;
    size_t w0 = panels_words(rows, cols), w1 = panels_words(cols, rows);
    size_t bytes = (w0 + w1) * sizeof(uint32_t);
    /* the budget of weight_pack's copies, first come first served; past it, packed per product */
    if (__atomic_load_n(&b->used, __ATOMIC_RELAXED) + bytes > b->cap) return;
    CpuMirror *grown = realloc(b->mirrors, sizeof *grown * (size_t)(b->n_mirrors + 1));
    if (!grown) return;
    b->mirrors = grown;
    uint32_t *pk = host_alloc(be, bytes); /* w0 is whole panels: pk[1] 128-byte aligned */
    if (!pk) return;
    __atomic_add_fetch(&b->used, bytes, __ATOMIC_RELAXED);
    b->mirrors[b->n_mirrors++] = (CpuMirror){w, rows, cols, {pk, pk + w0}, bytes, 0};
#endif
}

int cpu_weight_copy_state(Backend *be, const float *w) {
    const CpuMirror *m = mirror_find(be->ctx, w);
    return m ? 1 + m->valid : 0;
}

void cpu_mirrors_written(Backend *be, const void *dst, size_t bytes) {
    CpuPackBudget *b = be->ctx;
    const char *lo = dst, *hi = lo + bytes;
    for (int i = 0; i < b->n_mirrors; i++) {
        CpuMirror *m = &b->mirrors[i];
        const char *a = (const char *)m->w, *z = (const char *)(m->w + (size_t)m->rows * m->cols);
        if (a < hi && lo < z) m->valid = 0;
    }
}

void cpu_mirrors_released(Backend *be, const void *p, size_t bytes) {
    CpuPackBudget *b = be->ctx;
    const char *lo = p, *hi = lo + bytes;
    for (int i = b->n_mirrors - 1; i >= 0; i--) /* mirror_drop moves the last into i */
        if ((const char *)b->mirrors[i].w >= lo && (const char *)b->mirrors[i].w < hi)
            mirror_drop(be, &b->mirrors[i]);
}

void cpu_weights_written(Backend *be, const float *p, size_t n) {
    cpu_mirrors_written(be, p, n * sizeof *p);
}

void cpu_mirrors_free(Backend *be) {
    CpuPackBudget *b = be->ctx;
    while (b->n_mirrors)
        mirror_drop(be, &b->mirrors[0]);
    free(b->mirrors);
    b->mirrors = NULL;
    free(b->kpack);
    b->kpack = NULL;
    b->kpack_words = 0;
}

#ifdef BF16_X86
/* The forward's panels of w's rows [r0, r0 + rn) (a whole panel: r0 a multiple of NR) and the
 * input gradient's pairs of them (16 pairs of every panel of their K block: r0 even), from w's
 * values as they are now; the unit that ends a K block zeroes its pad pairs. */
X_TARGET static void mirror_pack_rows(const CpuMirror *m, int r0, int rn) {
    int rows = m->rows, cols = m->cols, kb = r0 / KC, k0 = kb * KC;
    View v = {m->w, NULL, (size_t)cols, 0, NULL};
    rows_fwd(&v, (size_t)r0, rn, cols, (size_t)r0 / NR, m->pk[0], 1);
    v.kmajor = 1; /* op(B) = w: its columns are the panels', pairs along its rows */
    rows_din(&v, (size_t)r0, rn, cols, ((size_t)cols + NR - 1) / NR, (size_t)kb, r0 - k0,
             rows - k0 < KC ? rows - k0 : KC, rows, m->pk[1], 1);
}

/* A piece of the AdamW pass: elements [i0, i1) of p, and when m is set the rows of it from r0
 * whose panels it then packs */
typedef struct MirrorUnit {
    size_t i0, i1;
    const CpuMirror *m;
    int r0;
} MirrorUnit;

int cpu_mirror_adamw(Backend *be, int nth, float *p, const float *g, float *m, float *v, size_t n,
                     const CpuAdamw *h) {
    CpuPackBudget *b = be->ctx;
    if (!b->n_mirrors) return 0;
    const float *lo = p, *hi = p + n;
    int nin = 0;
    CpuMirror **in = malloc(sizeof *in * (size_t)b->n_mirrors);
    if (!in) { /* no refresh: none stays valid */
        cpu_mirrors_written(be, p, n * sizeof *p);
        return 0;
    }
    for (int i = 0; i < b->n_mirrors; i++) {
        CpuMirror *mi = &b->mirrors[i];
        const float *z = mi->w + (size_t)mi->rows * mi->cols;
        if (mi->w >= lo && z <= hi)
            in[nin++] = mi;
        else if (mi->w < hi && lo < z)
            mi->valid = 0; /* written in part by this pass */
    }
    for (int i = 1; i < nin; i++) /* by address */
        for (int j = i; j > 0 && in[j]->w < in[j - 1]->w; j--) {
            CpuMirror *t = in[j];
            in[j] = in[j - 1];
            in[j - 1] = t;
        }
    const size_t chunk = 16384; /* cpu_adamw's */
    size_t nu = 0, at = 0;
    for (int i = 0; i < nin; i++) { /* units: gaps in chunks, then each matrix by NR rows */
        size_t off = (size_t)(in[i]->w - p);
        nu += (off - at + chunk - 1) / chunk + ((size_t)in[i]->rows + NR - 1) / NR;
        at = off + (size_t)in[i]->rows * in[i]->cols;
    }
    nu += (n - at + chunk - 1) / chunk;
    MirrorUnit *u = nin ? malloc(sizeof *u * nu) : NULL;
    if (!u) {
        for (int i = 0; i < nin; i++)
            in[i]->valid = 0;
        free(in);
        return 0;
    }
    size_t k = 0;
    at = 0;
    for (int i = 0; i <= nin; i++) {
        size_t off = i < nin ? (size_t)(in[i]->w - p) : n;
        for (; at < off; at += chunk)
            u[k++] = (MirrorUnit){at, off - at < chunk ? off : at + chunk, NULL, 0};
        if (i == nin) break;
        size_t cols = (size_t)in[i]->cols;
        for (int r = 0; r < in[i]->rows; r += NR) {
            int rn = in[i]->rows - r < NR ? in[i]->rows - r : NR;
            u[k++] = (MirrorUnit){off + (size_t)r * cols, off + (size_t)(r + rn) * cols, in[i], r};
        }
        at = off + (size_t)in[i]->rows * cols;
    }
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1) if (nth > 1)
    for (size_t j = 0; j < k; j++) {
        cpu_adamw_range(p, g, m, v, u[j].i0, u[j].i1, h);
        if (u[j].m) {
            const CpuMirror *mu = u[j].m;
            mirror_pack_rows(mu, u[j].r0, mu->rows - u[j].r0 < NR ? mu->rows - u[j].r0 : NR);
            _mm_sfence(); /* the streamed lines before any other thread reads them */
        }
    }
    for (int i = 0; i < nin; i++)
        in[i]->valid = 1;
    free(u);
    free(in);
    return 1;
}
#else
int cpu_mirror_adamw(Backend *be, int nth, float *p, const float *g, float *m, float *v, size_t n,
                     const CpuAdamw *h) {
    (void)be, (void)nth, (void)p, (void)g, (void)m, (void)v, (void)n, (void)h;
    return 0; /* cpu_weight_track keeps none */
}
#endif

/* The panels of a tracked weight w (rows N, cols K) for the forward (t 0) or the input gradient
 * (t 1), or NULL: not tracked, or stale */
static const uint32_t *mirror_pack(const Backend *be, const float *w, int N, int K, int t) {
    const CpuPackBudget *b = be->ctx;
    if (!b->n_mirrors || !path_x()) return NULL;
    const CpuMirror *m = mirror_find(b, w);
    return m && m->valid && m->rows == N && m->cols == K ? m->pk[t] : NULL;
}

void cpu_matmul_w_bf16_fwd(Backend *be, float *out, const float *in, const Weight *w,
                           const float *bias, int M) {
    int K = w->cols, N = w->rows, nth = threads_of(be, M, K, N);
    if (w->type == WT_F32) {
        cpu_matmul_bf16(be, out, in, w->data, bias, M, K, N, 0.0f);
        return;
    }
    View a = {in, NULL, (size_t)K, 0, NULL};
    if (w->type == WT_BF16) { /* its stored rows, as they are, or packed once (weight_pack) */
        View b = {NULL, w->data, (size_t)K, 0, weight_pack(be, w, nth, 0)};
        if (gemm_views(nth, &a, &b, M, N, K, 0.0f, out, N, NULL, FWD_STREAM_MIN_BYTES)) {
            oom(be, "matmul_w", M, N, K);
            return;
        }
    } else {
        int tn = typed_tile_rows(K, N);
        void *buf = cpu_alloc64(typed_tile_bytes(w, 0, tn));
        if (!buf) {
            oom(be, "matmul_w", M, N, K);
            return;
        }
        for (int n0 = 0; n0 < N; n0 += tn) {
            int nn = N - n0 < tn ? N - n0 : tn;
            View b;
            if (typed_tile(w, 0, n0, nn, buf, nth, &b) ||
                gemm_views(nth, &a, &b, M, nn, K, 0.0f, out + n0, N, NULL, FWD_STREAM_MIN_BYTES)) {
                free(buf);
                oom(be, "matmul_w", M, N, K);
                return;
            }
        }
        free(buf);
    }
    if (bias) CPU_PAR_RANGE(nth, (size_t)M, bias_add(out, bias, N, (size_t)N, lo, hi));
}

/* cpu_matmul_w_bf16_fwd of n weights over one input as one product that packs the input once
 * (gemm_x's outputs; a SmolLM2 layer's q, k and v at 456 rows, min of 400 alternated: 1.343 ->
 * 1.213 ms on 2 threads, 2.487 -> 2.376 on 1), the bits of n separate products. Returns 1 done,
 * 0 when it does not apply (off the fast paths, an F32 weight, one of another K, or quantized
 * weights of more than one tile together: the caller runs them one by one). */
int cpu_matmul_w_bf16_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                            const Weight *const *ws, const float *const *biases, int M) {
#ifdef BF16_X86
    int K = ws[0]->cols, N = 0, Nq = 0,
        one = n >= 2 && n <= X_MAX_OUTS && M > 0 && K > 0 && path_x();
    for (int i = 0; one && i < n; i++) {
        one = ws[i]->type != WT_F32 && ws[i]->cols == K && ws[i]->rows > 0;
        N += ws[i]->rows;
        if (ws[i]->type != WT_BF16) Nq += ws[i]->rows; /* rows dequantized into one tile */
    }
    if (one && Nq > typed_tile_rows(K, Nq)) one = 0; /* more than a tile: one by one */
    if (one) {
        int nth = threads_of(be, M, K, N);
        View a = {in, NULL, (size_t)K, 0, NULL}, b[X_MAX_OUTS];
        XOut o[X_MAX_OUTS];
        /* quantized weights (QLoRA's q, k, v) dequantized into one buffer, each packed as its
         * own product would pack it (typed_tile): the same words, so the same bits */
        size_t bytes = 0;
        for (int i = 0; i < n; i++)
            if (ws[i]->type != WT_BF16) bytes += typed_tile_bytes(ws[i], 0, ws[i]->rows);
        char *buf = Nq ? cpu_alloc64(bytes) : NULL;
        int fail = Nq && !buf;
        size_t at = 0; /* bytes of buf taken */
        for (int i = 0; i < n && !fail; i++) {
            if (ws[i]->type == WT_BF16) {
                b[i] = (View){NULL, ws[i]->data, (size_t)K, 0, weight_pack(be, ws[i], nth, 0)};
            } else {
                fail = typed_tile(ws[i], 0, 0, ws[i]->rows, buf + at, nth, &b[i]) != 0;
                at += typed_tile_bytes(ws[i], 0, ws[i]->rows);
            }
            o[i] = (XOut){&b[i], ws[i]->rows, ws[i]->rows, outs[i], biases ? biases[i] : NULL};
        }
        if (fail || gemm_x(nth, &a, n, o, M, K, 0.0f, stream_out(M, N, FWD_STREAM_MIN_BYTES), NULL,
                           NULL, NULL)) {
            free(buf);
            oom(be, "matmul_w", M, N, K);
            return 1;
        }
        free(buf);
        return 1;
    }
#else
    (void)be, (void)n, (void)outs, (void)in, (void)ws, (void)biases, (void)M;
#endif
    return 0;
}

/* a typed weight's input gradient (not F32: cpu_matmul_w_bwd_in runs those as fp32 products) */
void cpu_matmul_w_bf16_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                              int acc) {
    int K = w->cols, N = w->rows, nth = threads_of(be, M, K, N);
    if (w->type == WT_BF16) { /* din (M, K) (+)= dout (M, N) W (N, K), W's bf16 rows as they are */
        View a = {dout, NULL, (size_t)N, 0, NULL},
             b = {NULL, w->data, (size_t)K, 1, weight_pack(be, w, nth, 1)};
        if (gemm_views(nth, &a, &b, M, K, N, acc ? 1.0f : 0.0f, din, K, NULL, STREAM_MIN_BYTES))
            oom(be, "matmul_w_bwd_in", M, N, K);
        return;
    }
    int tn = typed_tile_rows(K, N);
    void *buf = cpu_alloc64(typed_tile_bytes(w, 1, tn));
    if (!buf) {
        oom(be, "matmul_w_bwd_in", M, N, K);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += tn) { /* din (+)= dout[:, tile] tile, tiles in order */
        int nn = N - n0 < tn ? N - n0 : tn;
        View a = {dout + n0, NULL, (size_t)N, 0, NULL}, b;
        if (typed_tile(w, 1, n0, nn, buf, nth, &b) ||
            gemm_views(nth, &a, &b, M, K, nn, acc || n0 ? 1.0f : 0.0f, din, K, NULL,
                       STREAM_MIN_BYTES)) {
            oom(be, "matmul_w_bwd_in", M, N, K);
            break;
        }
    }
    free(buf);
}
