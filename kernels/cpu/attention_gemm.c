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
 * (ref_attention_fwd_bf16 is the rule). The fp32 path is unchanged. */
#include <math.h>
#include <stdlib.h>

#include <cblas.h>

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

/* Softmax of each row t of scale·S (Tq, Tk) over keys lo..p (p = Tk−Tq+t, lo by tuna_attn_lo
 * with this batch row's kv_lo, or NULL), zero elsewhere. scale 1: S is already scaled. */
static void masked_softmax(float *S, int Tq, int Tk, float scale, int window,
                           const int32_t *kv_lo) {
    for (int t = 0; t < Tq; t++) {
        float *s = S + (size_t)t * Tk;
        int p = Tk - Tq + t;
        int lo = tuna_attn_lo(kv_lo, (size_t)t, p, window);
        float mx = -INFINITY, sum = 0;
        if (scale != 1.0f)
#pragma omp simd
            for (int j = lo; j <= p; j++)
                s[j] *= scale;
                /* vectorized (omp simd reductions, vexpf): the scalar expf loop was 8% of a SmolLM2
         * LoRA step at 512 tokens; the order is fixed per row, so the thread count cannot
         * change the bits */
#pragma omp simd reduction(max : mx)
        for (int j = lo; j <= p; j++)
            mx = s[j] > mx ? s[j] : mx;
        for (int j = 0; j < lo; j++)
            s[j] = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = lo; j <= p; j++) {
            float e = vexpf(s[j] - mx);
            s[j] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = lo; j <= p; j++)
            s[j] *= inv;
        for (int j = p + 1; j < Tk; j++)
            s[j] = 0;
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

int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                           int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                           int window, const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, nqc = (Tq + QB - 1) / QB, total = B * NH * nqc, fail = 0, bf = be->mm_bf16;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, mq = (size_t)(Tq < QB ? Tq : QB);
    openblas_set_num_threads(1); /* a team of one thread would let OpenBLAS thread (cpu_sgemm) */
#pragma omp parallel num_threads(be->n_threads)
    {
        float *S = malloc(sizeof(float) * mq * Tk);
        int *blk = malloc(sizeof(int) * ((size_t)Tq + 1));
        if (!S || !blk) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) { /* the longest chunks (last rows) first */
            if (!S || !blk) continue;
            int c = nqc - 1 - idx / (B * NH), b = idx % (B * NH) / NH, h = idx % NH, g = h / grp;
            const int32_t *lo;
            int nb = blocks_of(kv_lo, b, Tq, Tk, blk, &lo), qa, qe, lk;
            for (int i = 0; i < nb; i++) { /* block i: queries s0.., keys s0.. (see blocks_of) */
                int s0 = blk[i];
                if (!chunk_of(s0, blk[i + 1], c, Tq, Tk, &qa, &qe, &lk)) continue;
                int lq = qe - qa;
                const float *qh = q + ((size_t)b * Tq + qa) * qs + (size_t)h * HS;
                const float *kg = k + b * kv_stride + (size_t)s0 * ks + (size_t)g * HS;
                const float *vg = v + b * kv_stride + (size_t)s0 * ks + (size_t)g * HS;
                int e = prod(bf, 0, 1, lq, lk, HS, bf ? 1.0f : scale, qh, (int)qs, kg, (int)ks,
                             0.0f, S, lk);
                if (!e) masked_softmax(S, lq, lk, bf ? scale : 1.0f, window, lo ? lo + qa : NULL);
                if (!e)
                    e = prod(bf, 0, 0, lq, HS, lk, 1.0f, S, lk, vg, (int)ks, 0.0f,
                             out + ((size_t)b * Tq + qa) * qs + (size_t)h * HS, (int)qs);
                if (e) {
#pragma omp atomic write
                    fail = 1;
                }
            }
        }
        free(S);
        free(blk);
    }
    return fail ? -1 : 0;
}

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
    masked_softmax(P, lq, lk, bf ? scale : 1.0f, window, lo);
    if (pv && /* dV += Pᵀ·dO */
        prod(bf, 1, 0, lk, HS, lq, 1.0f, P, lk, dout, (int)qs, beta, pv, HS))
        return -1;
    if (!dq && !pk) return 0;
    /* dP = dO·Vᵀ, then dS = P∘(dP − D) in place, D_t = Σ_j P_tj dP_tj (under bf16 also times
     * scale here, before the products round it); P is 0 past the query's own key p */
    if (prod(bf, 0, 1, lq, lk, HS, 1.0f, dout, (int)qs, v, (int)ks, 0.0f, dP, lk)) return -1;
    float ds = bf ? scale : 1.0f;
    for (int t = 0; t < lq; t++) {
        float *pr = P + (size_t)t * lk, *dr = dP + (size_t)t * lk, D = 0;
        int p = lk - lq + t;
#pragma omp simd reduction(+ : D)
        for (int j = 0; j <= p; j++)
            D += pr[j] * dr[j];
#pragma omp simd
        for (int j = 0; j <= p; j++)
            dr[j] = pr[j] * (dr[j] - D) * ds;
        for (int j = p + 1; j < lk; j++)
            dr[j] = 0;
    }
    float a = bf ? 1.0f : scale;
    if (dq && /* dQ += scale·dS·K */
        prod(bf, 0, 0, lq, HS, lk, a, dP, lk, k, (int)ks, 1.0f, dq, (int)qs))
        return -1;
    if (pk && /* dK += scale·dSᵀ·Q */
        prod(bf, 1, 0, lk, HS, lq, a, dP, lk, q, (int)qs, beta, pk, HS))
        return -1;
    return 0;
}

/* Tasks are (query head, chunk) pairs' worth of work per head: a head's chunks run in one task,
 * last chunk first (it reaches all of its block's keys: beta 0 there), into the head's partial
 * dK and dV (Tk x HS each); then dK, dV += the group's partials in head order. The sums do not
 * depend on the thread count; a task per kv head (as before) left one of two threads idle a
 * third of the time with SmolLM2's 3 kv heads. One batch row at a time (partials NH x Tk x HS). */
int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window,
                           const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, nqc = (Tq + QB - 1) / QB, fail = 0, bf = be->mm_bf16;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, mq = (size_t)(Tq < QB ? Tq : QB);
    size_t part = (size_t)Tk * HS; /* floats of one head's partial dK (or dV) */
    float *pk = dk ? malloc(sizeof(float) * part * NH) : NULL,
          *pv = dv ? malloc(sizeof(float) * part * NH) : NULL;
    if ((dk && !pk) || (dv && !pv)) {
        free(pk);
        free(pv);
        return -1;
    }
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(be->n_threads)
    {
        float *P = malloc(sizeof(float) * mq * Tk), *dP = malloc(sizeof(float) * mq * Tk);
        int *blk = malloc(sizeof(int) * ((size_t)Tq + 1));
        if (!P || !dP || !blk) {
#pragma omp atomic write
            fail = 1;
        }
        for (int b = 0; b < B; b++) {
#pragma omp for schedule(dynamic)
            for (int h = 0; h < NH; h++) {
                if (!P || !dP || !blk) continue;
                const int32_t *lo;
                int nb = blocks_of(kv_lo, b, Tq, Tk, blk, &lo), g = h / grp, qa, qe, lk;
                for (int i = 0; i < nb; i++) {
                    int s0 = blk[i], first = 1;
                    for (int c = nqc - 1; c >= 0; c--) {
                        if (!chunk_of(s0, blk[i + 1], c, Tq, Tk, &qa, &qe, &lk)) continue;
                        size_t qo = ((size_t)b * Tq + qa) * qs + (size_t)h * HS,
                               ko = b * kv_stride + (size_t)s0 * ks + (size_t)g * HS,
                               po = part * h + (size_t)s0 * HS;
                        if (chunk_bwd(bf, P, dP, qe - qa, lk, scale, window, lo ? lo + qa : NULL,
                                      dq ? dq + qo : NULL, pk ? pk + po : NULL, pv ? pv + po : NULL,
                                      first ? 0.0f : 1.0f, dout + qo, q + qo, k + ko, v + ko, qs,
                                      ks, HS)) {
#pragma omp atomic write
                            fail = 1;
                        }
                        first = 0;
                    }
                }
            }
            /* dK, dV += the partials of each kv head's query heads, in head order */
#pragma omp for schedule(static)
            for (int j = 0; j < Tk; j++)
                for (int g = 0; g < KVH; g++) {
                    size_t o = b * kv_stride + (size_t)j * ks + (size_t)g * HS;
                    for (int h = g * grp; h < (g + 1) * grp; h++) {
                        size_t po = part * h + (size_t)j * HS;
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
        free(P);
        free(dP);
        free(blk);
    }
    free(pk);
    free(pv);
    return fail ? -1 : 0;
}
