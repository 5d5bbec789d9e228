/* attention_gemm.c: causal attention forward and backward for long query blocks (training,
 * prefill) as matrix products. Per (batch row, head, chunk of QB queries) the scores S =
 * scale·Q·Kᵀ over the keys the chunk's queries can see, the masked softmax P, and O = P·V are
 * single-threaded sgemm calls, the tasks spread over the OpenMP threads (OpenBLAS itself on one
 * thread, so the result does not depend on the thread count). The backward recomputes P and
 * uses dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)), dQ += scale·dS·K, dK += scale·dSᵀ·Q,
 * dV += Pᵀ·dO, a task per query head with its own partial dK and dV, summed per kv head after.
 * Same semantics as the attention_fwd / attention_bwd slots of kernels/backend.h (GQA, causal
 * offset Tk−Tq, window, kv_lo, kv_stride). Inside a chunk the masked triangle is computed and
 * discarded; above the chunks it is skipped. A neat-packed row (kv_lo marks runs of positions
 * that each see only their own run) is block diagonal: each example's block is computed on its
 * own, so the squares between examples cost nothing.
 * Under Backend.mm_bf16 the products are cpu_gemm_bf16's (bf16 operands, fp32 sums, one thread
 * each), as torch's bf16 SDPA on the CPU: S = Q·Kᵀ is scaled in the softmax (fp32), P is rounded
 * to bf16 for O = P·V and dV += Pᵀ·dO, and dS is scaled before it is rounded for dQ and dK
 * (ref_attention_fwd_bf16 is the rule). On the AVX512-BF16 path (AttnCall.x: scores_x, rows_x,
 * keys_x) the same products run on gemm_bf16.c's pieces with K and V packed once a call and
 * tiles cut at the causal edge: the same bits, 1.15x (SmolLM2's shapes at 512 tokens). One
 * driver each for the forward and the backward; fwd_chunk and bwd_chunk take the call's path. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cpu_backend.h"
#include "cpu_internal.h"

/* One product of the attention: C (M,N) = alpha op(A) op(B) + beta C, sgemm on this thread, or
 * (bf) cpu_gemm_bf16 on this thread, which takes alpha 1 only. Returns 0 or -1 (no memory). */
static int prod(int bf, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc) {
    if (bf) return cpu_gemm_bf16(1, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define ATT_X 1 /* the AVX512-BF16 path below (x_path) */
#endif

/* Softmax of each row t of scale·S (Tq, Tk) over keys lo..p (p = Tk−Tq+t, lo by tuna_attn_lo
 * with this batch row's kv_lo, or NULL), zero elsewhere. scale 1: S is already scaled (x·1 is
 * x). The scalar expf loop was 8% of a SmolLM2 LoRA step at 512 tokens (vexpf: cpu_softmax_row).
 * bf16 (the AVX512-BF16 path only): P rounded to bf16 for the products (which round it so), each
 * row's bf16 in place over the first half of its own floats (row stride 2 Tk in bf16): the last
 * pass's scaling and the rounding in one (cpu_bf16_scale_round), where a pass wrote P and the
 * product's packing read and rounded it; the zeros past a row's last key written after its
 * values, over which they lie. */
static void masked_softmax(float *S, int Tq, int Tk, float scale, int window, const int32_t *kv_lo,
                           int bf16) {
    size_t es = bf16 ? sizeof(uint16_t) : sizeof(float); /* bytes an element */
    for (int t = 0; t < Tq; t++) {
        float *s = S + (size_t)t * Tk;
        char *e = (char *)s; /* element j at e + j es */
        int p = Tk - Tq + t;
        int lo = tuna_attn_lo(kv_lo, (size_t)t, p, window);
        if (lo > 0) memset(e, 0, es * (size_t)lo); /* below s + lo either way */
#ifdef ATT_X
        if (bf16)
            cpu_bf16_scale_round(s + lo, p + 1 - lo, cpu_softmax_exp(s + lo, p + 1 - lo, scale),
                                 (uint16_t *)s + lo);
        else
#endif
            cpu_softmax_row(s + lo, p + 1 - lo, scale);
        if (p + 1 < Tk) memset(e + es * (size_t)(p + 1), 0, es * (size_t)(Tk - p - 1));
    }
}

/* dS = P∘(dP − D)·ds in place of dP (lq x lk), D_t = Σ_j P_tj dP_tj: the softmax's backward (under
 * bf16 ds is the scale, applied here before the products round dS). Reads P and dP up to each
 * query's own key p only (P is 0 past it) and writes 0 past it. D's sum as cpu_softmax_row's. */
static void grad_scores(const float *P, float *dP, int lq, int lk, float ds) {
    for (int t = 0; t < lq; t++) {
        const float *pr = P + (size_t)t * lk;
        float *dr = dP + (size_t)t * lk;
        int p = lk - lq + t, n = p + 1;
#ifdef __AVX512F__
        __m512 s0 = _mm512_setzero_ps(), s1 = s0;
        int j = 0;
        for (; j + 32 <= n; j += 32) {
            s0 = _mm512_add_ps(s0, _mm512_mul_ps(_mm512_loadu_ps(pr + j), _mm512_loadu_ps(dr + j)));
            s1 = _mm512_add_ps(
                    s1, _mm512_mul_ps(_mm512_loadu_ps(pr + j + 16), _mm512_loadu_ps(dr + j + 16)));
        }
        for (; j < n; j += 16) {
            __mmask16 k = cpu_lanes16(n - j);
            __m512 a = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, pr + j),
                                     _mm512_maskz_loadu_ps(k, dr + j));
            if (j / 16 % 2)
                s1 = _mm512_add_ps(s1, a);
            else
                s0 = _mm512_add_ps(s0, a);
        }
        const __m512 D = _mm512_set1_ps(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1))),
                     vd = _mm512_set1_ps(ds);
        for (j = 0; j < n; j += 16) {
            __mmask16 k = cpu_lanes16(n - j);
            __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dr + j), D);
            _mm512_mask_storeu_ps(
                    dr + j, k,
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, pr + j), x), vd));
        }
#else
        float D = 0;
#pragma omp simd reduction(+ : D)
        for (int j = 0; j < n; j++)
            D += pr[j] * dr[j];
#pragma omp simd
        for (int j = 0; j < n; j++)
            dr[j] = pr[j] * (dr[j] - D) * ds;
#endif
        if (n < lk) memset(dr + n, 0, sizeof(float) * (size_t)(lk - n));
    }
}

/* The examples of a row whose kv_lo (Tq == Tk) has block form: each position t has kv_lo[t] == t
 * (an example starts) or kv_lo[t] == kv_lo[t-1] (it continues). Fills start[0..n] with the
 * blocks' first positions and start[n] = T, and returns n; 0 when the row has another shape
 * (then the whole square is computed and masked by kv_lo). */
static int row_blocks(const int32_t *lo, int T, int *start) {
    int n = 0;
    for (int t = 0; t < T; t++) {
        if (lo[t] == t)
            start[n++] = t;
        else if (t == 0 || lo[t] != lo[t - 1] || lo[t] > t)
            return 0;
    }
    start[n] = T;
    return n;
}

/* The blocks of batch row b: on return blk[0..n] are their query starts (blk[n] = Tq) and *lo is
 * the kv_lo the blocks still need (NULL when the row was split into its examples, whose blocks
 * then start their keys at their own first position: key offset == query offset). One block of
 * the whole row otherwise. */
static int blocks_of(const int32_t *kv_lo, int b, int Tq, int Tk, int *blk, const int32_t **lo) {
    *lo = kv_lo ? kv_lo + (size_t)b * Tq : NULL;
    int n = *lo && Tq == Tk ? row_blocks(*lo, Tq, blk) : 0;
    if (n > 0) {
        *lo = NULL;
        return n;
    }
    blk[0] = 0;
    blk[1] = Tq;
    return 1;
}

/* Query rows a task computes at once: rows c·QB .. of a block see keys up to their last row's
 * (causal), so the masked triangle above the diagonal is computed only inside the chunk. At 512
 * tokens that skips 3/8 of the scores and of the products over them (which were a fifth of a
 * SmolLM2 LoRA step's arithmetic), and gives the threads B·NH·(Tq / QB) tasks to share. */
#define QB 128

/* The query chunk [qa, qe) of block [s0, s1) and chunk c, and the keys it sees: *lk of them from
 * the block's first key. 0 when the chunk misses the block. */
static int chunk_of(int s0, int s1, int c, int Tq, int Tk, int *qa, int *qe, int *lk) {
    *qa = c * QB > s0 ? c * QB : s0;
    *qe = (c + 1) * QB < s1 ? (c + 1) * QB : s1;
    *lk = *qe - s0 + Tk - Tq;
    return *qa < *qe;
}

/* dK, dV += the partials (pk, pv: part floats a query head and lane, nl lanes a head) of each kv
 * head's query heads, in head and lane order, for batch row b; inside a parallel region (its
 * threads share the keys) */
static void partial_sums(float *dk, float *dv, const float *pk, const float *pv, int b, int Tk,
                         size_t kv_stride, size_t ks, size_t part, int KVH, int grp, int HS,
                         int nl) {
#pragma omp for schedule(static)
    for (int j = 0; j < Tk; j++)
        for (int g = 0; g < KVH; g++) {
            size_t o = b * kv_stride + (size_t)j * ks + (size_t)g * HS;
            for (int hl = g * grp * nl; hl < (g + 1) * grp * nl; hl++) {
                size_t po = part * (size_t)hl + (size_t)j * HS;
                if (dk)
#pragma omp simd
                    for (int d = 0; d < HS; d++)
                        dk[o + d] += pk[po + d];
                if (dv)
#pragma omp simd
                    for (int d = 0; d < HS; d++)
                        dv[o + d] += pv[po + d];
            }
        }
}

/* --- bf16 on the AVX512-BF16 path: K and V packed once, tiles cut at the causal edge ---------
 * The same products as the generic path above, on gemm_bf16.c's pieces (cpu_bf16_pack_a/_b,
 * cpu_bf16_tile: the same rounding, K blocks and tiles, so the same bits): each batch row's kv
 * head is packed once per call for all of its query heads and chunks (it was packed again for
 * each product, 11% of the attention's time, with the softmax's), and a row panel's products stop
 * at its last visible key (keys past it have P = 0: the sums skip exact zeros and are unchanged),
 * where the chunks of QB queries computed the whole chunk's triangle (5/8 of the square at 512
 * tokens, now about 1/2). */
#define AX_MR      CPU_BF16_MR
#define AX_NR      CPU_BF16_NR
#define AX_KC      CPU_BF16_KC
#define AX_A_WORDS ((size_t)(AX_KC / 2) * AX_MR) /* one packed panel of op(A) */

/* whether the AVX512-BF16 path runs: the kernel is vdpbf16ps', and a head is at most one K
 * block */
static int x_path(int HS) {
#ifdef ATT_X
    return HS <= AX_KC && strcmp(cpu_bf16_path(), "plain"); /* AMX CPUs too */
#else
    (void)HS;
    return 0;
#endif
}

enum { KV_KC = 1, KV_VC = 2, KV_KP = 4, KV_VP = 8 }; /* which packings KvPack holds */

/* The pairs a packed panel of kp pairs takes: whole steps of 16 on the AMX tiles */
static int pairs_room(int kp, int amx) {
    return amx ? CPU_BF16_KPAD(kp) : kp;
}

/* One call's K and V, packed per (batch row, block of blocks_of, kv head) in up to four ways:
 * "cols" (kc, vc: the keys are op(B)'s columns, pairs along the head: panels of AX_NR keys, for
 * Q·Kᵀ and dO·Vᵀ) and "pairs" (kp, vp: the head's dims are the columns, pairs along the keys in
 * K blocks of AX_KC: for P·V and dS·K). A block of Lk keys: cols_words(Lk), pairs_words(Lk). */
typedef struct KvPack {
    int HS, KVH, Tq, Tk, want, kph, ndp; /* kph: pairs of a head; ndp: panels of AX_NR dims */
    int amx, kps;                        /* the AMX layouts (cpu_bf16_amx); pairs a cols panel */
    int *nblk, *blk;                     /* per row: its blocks, and their starts (Tq + 1 a row) */
    const int32_t **lo;                  /* per row: blocks_of's kv_lo (NULL when split) */
    size_t *off; /* (row, block) -> word offset of its kv heads (Tq a row) */
    uint32_t *w;
} KvPack;

static size_t cols_words(const KvPack *p, int Lk) {
    return (size_t)((Lk + AX_NR - 1) / AX_NR) * (size_t)p->kps * AX_NR;
}

static size_t pairs_words(const KvPack *p, int Lk) {
    return (size_t)((Lk + AX_KC - 1) / AX_KC) * (size_t)p->ndp * (AX_KC / 2) * AX_NR;
}

static size_t head_words(const KvPack *p, int Lk) {
    size_t c = cols_words(p, Lk), q = pairs_words(p, Lk);
    return (p->want & KV_KC ? c : 0) + (p->want & KV_VC ? c : 0) + (p->want & KV_KP ? q : 0) +
           (p->want & KV_VP ? q : 0);
}

/* Row b's block starts (blk[i] .. blk[i + 1] the queries of block i; blocks_of) */
static const int *kv_row(const KvPack *p, int b) {
    return p->blk + (size_t)b * ((size_t)p->Tq + 1);
}

/* The keys block i of row b sees: its own queries' keys (and Tk - Tq before them) */
static int kv_keys(const KvPack *p, int b, int i) {
    const int *blk = kv_row(p, b);
    return blk[i + 1] - blk[i] + p->Tk - p->Tq;
}

/* The packing `which` of kv head g of block i of row b */
static uint32_t *kv_at(const KvPack *p, int b, int i, int g, int which) {
    int Lk = kv_keys(p, b, i);
    uint32_t *w = p->w + p->off[(size_t)b * p->Tq + i] + (size_t)g * head_words(p, Lk);
    size_t c = cols_words(p, Lk), q = pairs_words(p, Lk);
    for (int f = KV_KC; f < which; f <<= 1)
        if (p->want & f) w += f == KV_KC || f == KV_VC ? c : q;
    return w;
}

static void kv_free(KvPack *p) {
    free(p->nblk);
    free(p->blk);
    free(p->lo);
    free(p->off);
    free(p->w);
}

#ifdef ATT_X
/* Packs the packing f (one of p->want) of kv head g of block i of row b (its keys from the
 * block's first) */
static void kv_pack_unit(KvPack *p, const float *k, const float *v, size_t kv_stride, int b, int i,
                         int g, int f) {
    int HS = p->HS, Lk = kv_keys(p, b, i);
    size_t ks = (size_t)p->KVH * HS,
           base = b * kv_stride + (size_t)kv_row(p, b)[i] * ks + (size_t)g * HS;
    const float *x = (f == KV_KC || f == KV_KP ? k : v) + base;
    uint32_t *d = kv_at(p, b, i, g, f);
    if (f == KV_KC || f == KV_VC)
        for (int n = 0; n < Lk; n += AX_NR)
            cpu_bf16_pack_b(x, ks, 0, (size_t)n, Lk - n < AX_NR ? Lk - n : AX_NR, 0, HS,
                            d + (size_t)(n / AX_NR) * p->kps * AX_NR, p->amx);
    else
        for (int k0 = 0, kb = 0; k0 < Lk; k0 += AX_KC, kb++)
            for (int n = 0; n < HS; n += AX_NR)
                cpu_bf16_pack_b(x, ks, 1, (size_t)n, HS - n < AX_NR ? HS - n : AX_NR, (size_t)k0,
                                Lk - k0 < AX_KC ? Lk - k0 : AX_KC,
                                d + ((size_t)kb * p->ndp + (size_t)(n / AX_NR)) * (AX_KC / 2) *
                                                AX_NR,
                                p->amx);
}
#endif

/* The blocks of every batch row (blocks_of), and what `want` names of k and v packed (the
 * AVX512-BF16 path only; shapes as cpu_attention_gemm_fwd's) on nth threads. Returns 0, or -1
 * with nothing held (no memory). */
static int kv_pack(KvPack *p, int nth, const float *k, const float *v, int B, int Tq, int Tk,
                   size_t kv_stride, int KVH, int HS, const int32_t *kv_lo, int want, int amx) {
    int kph = (HS + 1) / 2;
    *p = (KvPack){
            HS,   KVH,  Tq,   Tk,   want, kph, (HS + AX_NR - 1) / AX_NR, amx, pairs_room(kph, amx),
            NULL, NULL, NULL, NULL, NULL};
    size_t words = 0;
    size_t nb = (size_t)(B > 0 ? B : 1), nt = (size_t)(Tq > 0 ? Tq : 1); /* no malloc(0) */
    p->nblk = malloc(sizeof(int) * nb);
    p->blk = malloc(sizeof(int) * nb * (nt + 1));
    p->lo = malloc(sizeof(*p->lo) * nb);
    p->off = malloc(sizeof(size_t) * nb * nt);
    if (!p->nblk || !p->blk || !p->lo || !p->off) goto fail;
    for (int b = 0; b < B; b++) {
        p->nblk[b] = blocks_of(kv_lo, b, Tq, Tk, p->blk + (size_t)b * (nt + 1), &p->lo[b]);
        for (int i = 0; i < p->nblk[b]; i++) {
            p->off[(size_t)b * Tq + i] = words;
            words += (size_t)KVH * head_words(p, kv_keys(p, b, i));
        }
    }
#ifdef ATT_X
    if (want) {
        if (!(p->w = cpu_alloc64(sizeof(uint32_t) * (words ? words : 1)))) goto fail;
        int fs[4], nf = 0; /* the packings wanted */
        for (int f = KV_KC; f <= KV_VP; f <<= 1)
            if (want & f) fs[nf++] = f;
        /* a task per (row, kv head, packing), over the row's blocks (a task per (row, kv head)
         * gave SmolLM2's 3 kv heads to 2 threads as 2 and 1) */
        long nj = (long)B * KVH * nf;
#pragma omp parallel for schedule(dynamic) num_threads(nth) if (nth > 1 && nj > 1)
        for (long j = 0; j < nj; j++) {
            int b = (int)(j / (KVH * nf)), g = (int)(j / nf % KVH), f = fs[j % nf];
            for (int i = 0; i < p->nblk[b]; i++)
                kv_pack_unit(p, k, v, kv_stride, b, i, g, f);
        }
    }
#else
    (void)nth, (void)k, (void)v, (void)kv_stride;
#endif
    return 0;
fail:
    kv_free(p);
    return -1;
}

#ifdef ATT_X
/* grad_scores, then each row of dS rounded to bf16 in place as masked_softmax's bf16 P (the
 * products round it so; the row is in L1) */
static void grad_scores_x(const float *P, float *dP, int lq, int lk, float ds) {
    grad_scores(P, dP, lq, lk, ds);
    for (int t = 0; t < lq; t++)
        cpu_bf16_scale_round(dP + (size_t)t * lk, lk, 1.0f, (uint16_t *)(dP + (size_t)t * lk));
}
/* S (lq x lk, row stride lk) = X·Yᵀ for the lq rows of x (stride xs; a chunk's queries, or
 * their dO) over the lk keys packed at yc (cols: K or V), tiles of AX_NR keys up to each row
 * panel's last visible key only (the rest of S is left as it was: nothing reads it) */
static void scores_x(float *S, const float *x, size_t xs, int lq, int lk, const uint32_t *yc,
                     int HS, uint32_t *ap, int amx) {
    int kph = (HS + 1) / 2, kps = pairs_room(kph, amx); /* kv_pack's cols panels */
    for (int i0 = 0; i0 < lq; i0 += AX_MR) {
        int mr = lq - i0 < AX_MR ? lq - i0 : AX_MR, last = lk - lq + i0 + mr - 1;
        cpu_bf16_pack_a(x, xs, 0, (size_t)i0, mr, 0, HS, ap, amx);
        for (int n = 0; n <= last; n += AX_NR)
            cpu_bf16_tile(kph, ap, 0, yc + (size_t)(n / AX_NR) * kps * AX_NR,
                          S + (size_t)i0 * lk + n, (size_t)lk, mr, lk - n < AX_NR ? lk - n : AX_NR,
                          0, amx);
    }
}

/* O (lq x HS, row stride os) (= or, add, +=) P·Y: P (lq x lk, bf16, stride 2 lk: the rows
 * masked_softmax and grad_scores_x rounded in place) 0 past each row's last visible key, Y's
 * keys packed at yp (pairs: V or K); a row panel's sums stop at its last visible key */
static void rows_x(float *O, size_t os, const uint16_t *P, int lq, int lk, const uint32_t *yp,
                   int HS, int add, uint32_t *ap, int amx) {
    int ndp = (HS + AX_NR - 1) / AX_NR; /* yp's panels of dims a K block */
    for (int i0 = 0; i0 < lq; i0 += AX_MR) {
        int mr = lq - i0 < AX_MR ? lq - i0 : AX_MR, kn_all = lk - lq + i0 + mr;
        for (int k0 = 0, kb = 0; k0 < kn_all; k0 += AX_KC, kb++) {
            int kn = kn_all - k0 < AX_KC ? kn_all - k0 : AX_KC;
            cpu_bf16_pack_a_h(P, 2 * (size_t)lk, 0, (size_t)i0, mr, (size_t)k0, kn, ap, amx);
            for (int n = 0; n < HS; n += AX_NR)
                cpu_bf16_tile((kn + 1) / 2, ap, 0,
                              yp + ((size_t)kb * ndp + (size_t)(n / AX_NR)) * (AX_KC / 2) * AX_NR,
                              O + (size_t)i0 * os + n, os, mr, HS - n < AX_NR ? HS - n : AX_NR,
                              add || k0 > 0, amx);
        }
    }
}

/* D (lk x HS, stride HS) (= or, add, +=) Xᵀ·Y: X (lq x lk: P in fp32, stride lk, or Xh: dS in
 * bf16 as grad_scores_x left it, stride 2 lk) 0 past each query's last visible key; Y the chunk's
 * lq rows (stride ys: dO or Q), packed here into yp by pairs of queries; a key panel's sums start
 * at the first query that sees it (under amx at the first query: a tile step past the panel's
 * end would read the next one's pairs) */
static void keys_x(float *D, const float *X, const uint16_t *Xh, int lq, int lk, const float *y,
                   size_t ys, int HS, int add, uint32_t *ap, uint32_t *yp, int amx) {
    int kpl = (lq + 1) / 2, kps = pairs_room(kpl, amx);
    for (int n = 0; n < HS; n += AX_NR)
        cpu_bf16_pack_b(y, ys, 1, (size_t)n, HS - n < AX_NR ? HS - n : AX_NR, 0, lq,
                        yp + (size_t)(n / AX_NR) * kps * AX_NR, amx);
    for (int j0 = 0; j0 < lk; j0 += AX_MR) {
        int mr = lk - j0 < AX_MR ? lk - j0 : AX_MR, t0 = j0 - (lk - lq);
        t0 = t0 > 0 && !amx ? t0 & ~1 : 0;
        if (Xh)
            cpu_bf16_pack_a_h(Xh, 2 * (size_t)lk, 1, (size_t)j0, mr, (size_t)t0, lq - t0, ap, amx);
        else
            cpu_bf16_pack_a(X, (size_t)lk, 1, (size_t)j0, mr, (size_t)t0, lq - t0, ap, amx);
        for (int n = 0; n < HS; n += AX_NR)
            cpu_bf16_tile((lq - t0 + 1) / 2, ap, 1,
                          yp + (size_t)(n / AX_NR) * kps * AX_NR + (size_t)(t0 / 2) * AX_NR,
                          D + (size_t)j0 * HS + n, (size_t)HS, mr, HS - n < AX_NR ? HS - n : AX_NR,
                          add, amx);
    }
}

#endif

/* The backward of one chunk of one query head: lq queries (their rows at q, dq, dout) over lk
 * keys (at k, v), the chunk's last query at the last key. The keys' gradients go to the head's
 * own partial sums pk, pv (lk rows of HS; beta 0: the first chunk to reach them). P and dP are
 * scratch of lq x lk. */
static int chunk_bwd(int bf, float *P, float *dP, int lq, int lk, float scale, int window,
                     const int32_t *lo, float *dq, float *pk, float *pv, float beta,
                     const float *dout, const float *q, const float *k, const float *v, size_t qs,
                     size_t ks, int HS) {
    if (prod(bf, 0, 1, lq, lk, HS, bf ? 1.0f : scale, q, (int)qs, k, (int)ks, 0.0f, P, lk))
        return -1;
    masked_softmax(P, lq, lk, bf ? scale : 1.0f, window, lo, 0);
    if (pv && /* dV += Pᵀ·dO */
        prod(bf, 1, 0, lk, HS, lq, 1.0f, P, lk, dout, (int)qs, beta, pv, HS))
        return -1;
    if (!dq && !pk) return 0;
    /* dP = dO·Vᵀ, then dS = P∘(dP − D) in place, D_t = Σ_j P_tj dP_tj (under bf16 also times
     * scale here, before the products round it); P is 0 past the query's own key p */
    if (prod(bf, 0, 1, lq, lk, HS, 1.0f, dout, (int)qs, v, (int)ks, 0.0f, dP, lk)) return -1;
    grad_scores(P, dP, lq, lk, bf ? scale : 1.0f);
    float a = bf ? 1.0f : scale;
    if (dq && /* dQ += scale·dS·K */
        prod(bf, 0, 0, lq, HS, lk, a, dP, lk, k, (int)ks, 1.0f, dq, (int)qs))
        return -1;
    if (pk && /* dK += scale·dSᵀ·Q */
        prod(bf, 1, 0, lk, HS, lq, a, dP, lk, q, (int)qs, beta, pk, HS))
        return -1;
    return 0;
}

/* One call's operands and shapes, as its tasks see them. x: the AVX512-BF16 path (K and V
 * packed in kv); otherwise the products are prod's, bf16 or fp32 by bf. */
typedef struct AttnCall {
    float *out, *dq, *pk, *pv; /* out: the forward's; dq and dK, dV's partials: the backward's */
    const float *q, *k, *v, *dout;
    int Tq, Tk, NH, HS, window, grp, bf, x, nl; /* nl: the backward's lanes a head */
    size_t kv_stride, qs, ks, part; /* part: floats of one (head, lane)'s partial dK (or dV) */
    float scale;
    KvPack kv; /* the blocks of each row (and under x, K and V packed) */
} AttnCall;

/* A thread's scratch: S (or P) and dP, QB x Tk each; under x a packed panel of op(A) and a
 * chunk's rows packed by pairs */
typedef struct AttnScratch {
    float *P, *dP;
    uint32_t *ap, *yp;
} AttnScratch;

static int call_init(AttnCall *a, Backend *be, const float *q, const float *k, const float *v,
                     int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                     const int32_t *kv_lo, int want) {
    *a = (AttnCall){.q = q,
                    .k = k,
                    .v = v,
                    .Tq = Tq,
                    .Tk = Tk,
                    .NH = NH,
                    .HS = HS,
                    .window = window,
                    .grp = NH / KVH,
                    .bf = be->mm_bf16,
                    .x = be->mm_bf16 && x_path(HS),
                    .kv_stride = kv_stride,
                    .qs = (size_t)NH * HS,
                    .ks = (size_t)KVH * HS,
                    .part = (size_t)Tk * HS,
                    .scale = 1.0f / sqrtf((float)HS)};
    if (!a->x) openblas_set_num_threads(1); /* a team of one would let OpenBLAS thread */
    return kv_pack(&a->kv, be->n_threads, k, v, B, Tq, Tk, kv_stride, KVH, HS, kv_lo,
                   a->x ? want : 0, a->x && cpu_bf16_amx());
}

/* This thread's AMX tiles configured (on) or released, when the call runs on them */
static void tiles(const AttnCall *a, int on) {
#ifdef ATT_X
    if (a->kv.amx) cpu_bf16_tiles(on ? AX_MR : 0);
#else
    (void)a, (void)on;
#endif
}

static void scratch_free(AttnScratch *s) {
    free(s->P);
    free(s->dP);
    free(s->ap);
    free(s->yp);
}

/* 1, or 0 with nothing held and *fail set (no memory); in a parallel region */
static int scratch_init(AttnScratch *s, const AttnCall *a, int bwd, int *fail) {
    size_t mq = (size_t)(a->Tq < QB ? a->Tq : QB);
    *s = (AttnScratch){malloc(sizeof(float) * mq * a->Tk),
                       bwd ? malloc(sizeof(float) * mq * a->Tk) : NULL,
                       a->x ? cpu_alloc64(sizeof(uint32_t) * AX_A_WORDS) : NULL,
                       a->x && bwd ? cpu_alloc64(sizeof(uint32_t) * (size_t)a->kv.ndp *
                                                 CPU_BF16_KPAD(QB / 2) * AX_NR)
                                   : NULL};
    if (!s->P || (bwd && !s->dP) || (a->x && !s->ap) || (a->x && bwd && !s->yp)) {
        scratch_free(s);
#pragma omp atomic write
        *fail = 1;
        return 0;
    }
    return 1;
}

/* The forward of chunk c of query head h in block i of batch row b (nothing where the chunk
 * misses the block): 0, or -1 (no memory) */
static int fwd_chunk(const AttnCall *a, AttnScratch *s, int b, int i, int h, int c) {
    const int *blk = kv_row(&a->kv, b);
    const int32_t *lo = a->kv.lo[b];
    int s0 = blk[i], g = h / a->grp, HS = a->HS, qa, qe, lk;
    if (!chunk_of(s0, blk[i + 1], c, a->Tq, a->Tk, &qa, &qe, &lk)) return 0;
    int lq = qe - qa;
    size_t qo = ((size_t)b * a->Tq + qa) * a->qs + (size_t)h * HS;
    lo = lo ? lo + qa : NULL;
#ifdef ATT_X
    if (a->x) {
        int amx = a->kv.amx;
        scores_x(s->P, a->q + qo, a->qs, lq, lk, kv_at(&a->kv, b, i, g, KV_KC), HS, s->ap, amx);
        masked_softmax(s->P, lq, lk, a->scale, a->window, lo, 1);
        rows_x(a->out + qo, a->qs, (const uint16_t *)s->P, lq, lk, kv_at(&a->kv, b, i, g, KV_VP),
               HS, 0, s->ap, amx);
        return 0;
    }
#endif
    int bf = a->bf, ks = (int)a->ks;
    size_t ko = b * a->kv_stride + (size_t)s0 * a->ks + (size_t)g * HS;
    if (prod(bf, 0, 1, lq, lk, HS, bf ? 1.0f : a->scale, a->q + qo, (int)a->qs, a->k + ko, ks, 0.0f,
             s->P, lk))
        return -1;
    masked_softmax(s->P, lq, lk, bf ? a->scale : 1.0f, a->window, lo, 0);
    return prod(bf, 0, 0, lq, HS, lk, 1.0f, s->P, lk, a->v + ko, ks, 0.0f, a->out + qo, (int)a->qs);
}

/* Where the partial dK (or dV) of (query head h, lane) has key row `row` (floats) */
static size_t lane_at(const AttnCall *a, int h, int lane, int row) {
    return a->part * ((size_t)h * a->nl + lane) + (size_t)row * a->HS;
}

/* The backward of chunk c of query head h in block i of batch row b into dq and the partials of
 * (h, lane) (first: the first chunk to reach them, beta 0): 0, or -1 no memory. The chunk meets
 * the block (chunk_of: qa, qe, lk). */
static int bwd_chunk(const AttnCall *a, AttnScratch *s, int b, int i, int h, int lane, int qa,
                     int qe, int lk, int first) {
    const int *blk = kv_row(&a->kv, b);
    const int32_t *lo = a->kv.lo[b];
    int s0 = blk[i], g = h / a->grp, HS = a->HS;
    size_t qo = ((size_t)b * a->Tq + qa) * a->qs + (size_t)h * HS, po = lane_at(a, h, lane, s0);
    float *dq = a->dq ? a->dq + qo : NULL, *pk = a->pk ? a->pk + po : NULL,
          *pv = a->pv ? a->pv + po : NULL;
    lo = lo ? lo + qa : NULL;
#ifdef ATT_X
    if (a->x) { /* chunk_bwd's steps on the packed K and V */
        int lq = qe - qa, amx = a->kv.amx;
        const float *qc = a->q + qo, *dout = a->dout + qo;
        scores_x(s->P, qc, a->qs, lq, lk, kv_at(&a->kv, b, i, g, KV_KC), HS, s->ap, amx);
        masked_softmax(s->P, lq, lk, a->scale, a->window, lo, 0);
        if (pv) /* dV += Pᵀ·dO */
            keys_x(pv, s->P, NULL, lq, lk, dout, a->qs, HS, !first, s->ap, s->yp, amx);
        if (!dq && !pk) return 0;
        scores_x(s->dP, dout, a->qs, lq, lk, kv_at(&a->kv, b, i, g, KV_VC), HS, s->ap, amx);
        grad_scores_x(s->P, s->dP, lq, lk, a->scale);
        const uint16_t *dS = (const uint16_t *)s->dP;
        if (dq) /* dQ += dS·K */
            rows_x(dq, a->qs, dS, lq, lk, kv_at(&a->kv, b, i, g, KV_KP), HS, 1, s->ap, amx);
        if (pk) /* dK += dSᵀ·Q */
            keys_x(pk, NULL, dS, lq, lk, qc, a->qs, HS, !first, s->ap, s->yp, amx);
        return 0;
    }
#endif
    size_t ko = b * a->kv_stride + (size_t)s0 * a->ks + (size_t)g * HS;
    return chunk_bwd(a->bf, s->P, s->dP, qe - qa, lk, a->scale, a->window, lo, dq, pk, pv,
                     first ? 0.0f : 1.0f, a->dout + qo, a->q + qo, a->k + ko, a->v + ko, a->qs,
                     a->ks, HS);
}

/* The backward's lanes: a head's chunks, by descending c, go to lanes 0, 1, 1, 0, 0, 1, 1, ...,
 * two lanes of about equal causal work (at 512 tokens chunks 3 and 0, and 2 and 1). A task was a
 * head: SmolLM2's 9 heads on 2 threads left one idle a ninth of the backward. */
static int chunk_lane(int nqc, int c) {
    return (nqc - c) / 2 % 2;
}

/* Lane `lane` of query head h in block i of row b: its chunks, last first, into the lane's
 * partials (the first chunk writes them), then the rows of the block's keys that no chunk of the
 * lane reaches set to 0. 0, or -1 no memory. */
static int bwd_lane(const AttnCall *a, AttnScratch *s, int b, int i, int h, int lane, int nqc) {
    const int *blk = kv_row(&a->kv, b);
    int reach = 0, qa, qe, lk;
    for (int c = nqc - 1; c >= 0; c--) {
        if (chunk_lane(nqc, c) != lane ||
            !chunk_of(blk[i], blk[i + 1], c, a->Tq, a->Tk, &qa, &qe, &lk))
            continue;
        if (bwd_chunk(a, s, b, i, h, lane, qa, qe, lk, !reach)) return -1;
        if (!reach) reach = lk;
    }
    size_t po = lane_at(a, h, lane, blk[i]), from = (size_t)reach * a->HS,
           to = (size_t)kv_keys(&a->kv, b, i) * a->HS;
    if (a->pk && to > from) memset(a->pk + po + from, 0, sizeof(float) * (to - from));
    if (a->pv && to > from) memset(a->pv + po + from, 0, sizeof(float) * (to - from));
    return 0;
}

int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                           int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                           int window, const int32_t *kv_lo) {
    AttnCall a;
    if (B <= 0 || Tq <= 0) return 0; /* nothing to compute */
    if (call_init(&a, be, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, KV_KC | KV_VP))
        return -1;
    a.out = out;
    int nqc = (Tq + QB - 1) / QB, total = B * NH * nqc, fail = 0;
#pragma omp parallel num_threads(be->n_threads)
    {
        AttnScratch s;
        int ok = scratch_init(&s, &a, 0, &fail);
        tiles(&a, 1);
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) { /* the longest chunks (last rows) first */
            if (!ok) continue;
            int c = nqc - 1 - idx / (B * NH), b = idx % (B * NH) / NH, h = idx % NH;
            for (int i = 0; i < a.kv.nblk[b]; i++) /* block i: queries s0.., keys s0.. */
                if (fwd_chunk(&a, &s, b, i, h, c)) {
#pragma omp atomic write
                    fail = 1;
                }
        }
        tiles(&a, 0);
        if (ok) scratch_free(&s);
    }
    kv_free(&a.kv);
    return fail ? -1 : 0;
}

/* Tasks are (query head, lane) pairs: a lane's chunks (chunk_lane) run in one task, last chunk
 * first, into the lane's partial dK and dV (Tk x HS each); then dK, dV += the group's partials in
 * head and lane order. The lanes depend on the shape only, so the sums do not depend on the thread
 * count; a task per kv head (as before) left one of two threads idle a third of the time with
 * SmolLM2's 3 kv heads. One batch row at a time (partials NH x lanes x Tk x HS). */
int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window,
                           const int32_t *kv_lo) {
    if (B <= 0 || Tq <= 0) return 0; /* nothing to compute */
    int nqc = (Tq + QB - 1) / QB, nl = nqc > 1 ? 2 : 1, ntask = NH * nl, fail = 0;
    size_t part = (size_t)Tk * HS;
    float *pk = dk ? malloc(sizeof(float) * part * (size_t)ntask) : NULL,
          *pv = dv ? malloc(sizeof(float) * part * (size_t)ntask) : NULL;
    AttnCall a;
    if ((dk && !pk) || (dv && !pv) ||
        call_init(&a, be, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo,
                  KV_KC | (dq || dk ? KV_VC : 0) | (dq ? KV_KP : 0))) {
        free(pk);
        free(pv);
        return -1;
    }
    a.dq = dq, a.pk = pk, a.pv = pv, a.dout = dout, a.nl = nl;
#pragma omp parallel num_threads(be->n_threads)
    {
        AttnScratch s;
        int ok = scratch_init(&s, &a, 1, &fail);
        tiles(&a, 1);
        for (int b = 0; b < B; b++) {
#pragma omp for schedule(dynamic)
            for (int t = 0; t < ntask; t++) { /* lane 0 (each head's last chunk) first */
                if (!ok) continue;
                for (int i = 0; i < a.kv.nblk[b]; i++)
                    if (bwd_lane(&a, &s, b, i, t % NH, t / NH, nqc)) {
#pragma omp atomic write
                        fail = 1;
                    }
            }
            partial_sums(dk, dv, pk, pv, b, Tk, kv_stride, a.ks, part, KVH, a.grp, HS, nl);
        }
        tiles(&a, 0);
        if (ok) scratch_free(&s);
    }
    kv_free(&a.kv);
    free(pk);
    free(pv);
    return fail ? -1 : 0;
}
