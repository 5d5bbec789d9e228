/* attention_gemm.c: causal attention forward and backward for long query blocks (training,
 * prefill) as matrix products. Per (batch row, head) the scores S = scale·Q·Kᵀ (Tq, Tk), the
 * masked softmax P, and O = P·V are single-threaded sgemm calls, heads spread over the
 * OpenMP threads (OpenBLAS itself on one thread, so the result does not depend on the thread
 * count). The backward recomputes P and uses dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)),
 * dQ += scale·dS·K, dK += scale·dSᵀ·Q, dV += Pᵀ·dO; a thread owns a whole kv head (all
 * grp query heads that share it), so dK and dV have no races. Same semantics as the
 * attention_fwd / attention_bwd slots of kernels/backend.h (GQA, causal offset Tk−Tq,
 * window, kv_lo, kv_stride). The causally masked half of S is computed and discarded: at T = 512
 * the sgemm is still several times faster than the per-row loops it replaces. A neat-packed row
 * (kv_lo marks runs of positions that each see only their own run) is block diagonal: each
 * example's block is computed on its own, so the squares between examples cost nothing.
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

int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                           int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                           int window, const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, total = B * NH, fail = 0, bf = be->mm_bf16;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    openblas_set_num_threads(1); /* a team of one thread would let OpenBLAS thread (cpu_sgemm) */
#pragma omp parallel num_threads(be->n_threads)
    {
        float *S = malloc(sizeof(float) * (size_t)Tq * Tk);
        int *blk = malloc(sizeof(int) * ((size_t)Tq + 1));
        if (!S || !blk) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) {
            if (!S || !blk) continue;
            int b = idx / NH, h = idx % NH, g = h / grp;
            const int32_t *lo;
            int nb = blocks_of(kv_lo, b, Tq, Tk, blk, &lo);
            for (int i = 0; i < nb; i++) { /* block i: queries s0.., keys s0.. (see blocks_of) */
                int s0 = blk[i], lq = blk[i + 1] - s0, lk = lq + Tk - Tq;
                const float *qh = q + ((size_t)b * Tq + s0) * qs + (size_t)h * HS;
                const float *kg = k + b * kv_stride + (size_t)s0 * ks + (size_t)g * HS;
                const float *vg = v + b * kv_stride + (size_t)s0 * ks + (size_t)g * HS;
                int e = prod(bf, 0, 1, lq, lk, HS, bf ? 1.0f : scale, qh, (int)qs, kg, (int)ks,
                             0.0f, S, lk);
                if (!e) masked_softmax(S, lq, lk, bf ? scale : 1.0f, window, lo);
                if (!e)
                    e = prod(bf, 0, 0, lq, HS, lk, 1.0f, S, lk, vg, (int)ks, 0.0f,
                             out + ((size_t)b * Tq + s0) * qs + (size_t)h * HS, (int)qs);
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

/* The backward of one (block, query head): queries s0..s0+lq-1 of the head whose row starts at
 * qrow in q/dq/dout, keys s0..s0+lq+dk_off-1 of the kv head at kvo in k/v/dk/dv. P and dP are
 * scratch of lq x lk. */
static int block_bwd(int bf, float *P, float *dP, int s0, int lq, int dk_off, float scale,
                     int window, const int32_t *lo, float *dq, float *dk, float *dv,
                     const float *dout, const float *q, const float *k, const float *v, size_t kvo,
                     size_t qrow, size_t qs, size_t ks, int HS) {
    int lk = lq + dk_off;
    size_t qo = qrow + (size_t)s0 * qs, ko = kvo + (size_t)s0 * ks;
    if (prod(bf, 0, 1, lq, lk, HS, bf ? 1.0f : scale, q + qo, (int)qs, k + ko, (int)ks, 0.0f, P,
             lk))
        return -1;
    masked_softmax(P, lq, lk, bf ? scale : 1.0f, window, lo);
    if (dv && /* dV += Pᵀ·dO */
        prod(bf, 1, 0, lk, HS, lq, 1.0f, P, lk, dout + qo, (int)qs, 1.0f, dv + ko, (int)ks))
        return -1;
    if (!dq && !dk) return 0;
    /* dP = dO·Vᵀ, then dS = P∘(dP − D) in place, D_t = Σ_j P_tj dP_tj (under bf16 also times
     * scale here, before the products round it) */
    if (prod(bf, 0, 1, lq, lk, HS, 1.0f, dout + qo, (int)qs, v + ko, (int)ks, 0.0f, dP, lk))
        return -1;
    for (int t = 0; t < lq; t++) {
        float *pr = P + (size_t)t * lk, *dr = dP + (size_t)t * lk, D = 0;
        for (int j = 0; j < lk; j++)
            D += pr[j] * dr[j];
        for (int j = 0; j < lk; j++)
            dr[j] = pr[j] * (dr[j] - D);
        if (bf)
            for (int j = 0; j < lk; j++)
                dr[j] *= scale;
    }
    float a = bf ? 1.0f : scale;
    if (dq && /* dQ += scale·dS·K */
        prod(bf, 0, 0, lq, HS, lk, a, dP, lk, k + ko, (int)ks, 1.0f, dq + qo, (int)qs))
        return -1;
    if (dk && /* dK += scale·dSᵀ·Q */
        prod(bf, 1, 0, lk, HS, lq, a, dP, lk, q + qo, (int)qs, 1.0f, dk + ko, (int)ks))
        return -1;
    return 0;
}

int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window,
                           const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, total = B * KVH, fail = 0, bf = be->mm_bf16;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, n = (size_t)Tq * Tk;
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(be->n_threads)
    {
        float *P = malloc(sizeof(float) * n), *dP = malloc(sizeof(float) * n);
        int *blk = malloc(sizeof(int) * ((size_t)Tq + 1));
        if (!P || !dP || !blk) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) {
            if (!P || !dP || !blk) continue;
            int b = idx / KVH, g = idx % KVH;
            const int32_t *lo;
            int nb = blocks_of(kv_lo, b, Tq, Tk, blk, &lo);
            for (int i = 0; i < nb; i++)
                for (int h = g * grp; h < (g + 1) * grp; h++)
                    if (block_bwd(bf, P, dP, blk[i], blk[i + 1] - blk[i], Tk - Tq, scale, window,
                                  lo, dq, dk, dv, dout, q, k, v, b * kv_stride + (size_t)g * HS,
                                  (size_t)b * Tq * qs + (size_t)h * HS, qs, ks, HS)) {
#pragma omp atomic write
                        fail = 1;
                    }
        }
        free(P);
        free(dP);
        free(blk);
    }
    return fail ? -1 : 0;
}
