/* attention_gemm.c: causal attention forward and backward for long query blocks (training,
 * prefill) as matrix products. Per (batch row, head) the scores S = scale·Q·Kᵀ (Tq, Tk), the
 * masked softmax P, and O = P·V are single-threaded sgemm calls, heads spread over the
 * OpenMP threads (OpenBLAS itself on one thread, so the result does not depend on the thread
 * count). The backward recomputes P and uses dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)),
 * dQ += scale·dS·K, dK += scale·dSᵀ·Q, dV += Pᵀ·dO; a thread owns a whole kv head (all
 * grp query heads that share it), so dK and dV have no races. Same semantics as the
 * attention_fwd / attention_bwd slots of kernels/backend.h (GQA, causal offset Tk−Tq,
 * window, kv_lo, kv_stride). The masked half of S is computed and discarded: at T = 512 the sgemm
 * is still several times faster than the per-row loops it replaces. */
#include <math.h>
#include <stdlib.h>

#include <cblas.h>

#include "cpu_internal.h"

/* Softmax of each row t of S (Tq, Tk) over keys lo..p (p = Tk−Tq+t, lo by tuna_attn_lo with
 * this batch row's kv_lo, or NULL), zero elsewhere. */
static void masked_softmax(float *S, int Tq, int Tk, int window, const int32_t *kv_lo) {
    for (int t = 0; t < Tq; t++) {
        float *s = S + (size_t)t * Tk;
        int p = Tk - Tq + t;
        int lo = tuna_attn_lo(kv_lo, (size_t)t, p, window);
        float mx = -INFINITY, sum = 0;
        for (int j = lo; j <= p; j++)
            mx = s[j] > mx ? s[j] : mx;
        for (int j = 0; j < lo; j++)
            s[j] = 0;
        for (int j = lo; j <= p; j++)
            sum += (s[j] = expf(s[j] - mx));
        float inv = 1.0f / sum;
        for (int j = lo; j <= p; j++)
            s[j] *= inv;
        for (int j = p + 1; j < Tk; j++)
            s[j] = 0;
    }
}

int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                           int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                           int window, const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, total = B * NH, fail = 0;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    openblas_set_num_threads(1); /* a team of one thread would let OpenBLAS thread (cpu_sgemm) */
#pragma omp parallel num_threads(be->n_threads)
    {
        float *S = malloc(sizeof(float) * (size_t)Tq * Tk);
        if (!S) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) {
            if (!S) continue;
            int b = idx / NH, h = idx % NH, g = h / grp;
            const float *qh = q + (size_t)b * Tq * qs + (size_t)h * HS;
            const float *kg = k + b * kv_stride + (size_t)g * HS;
            const float *vg = v + b * kv_stride + (size_t)g * HS;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, HS, scale, qh, (int)qs, kg,
                        (int)ks, 0.0f, S, Tk);
            masked_softmax(S, Tq, Tk, window, kv_lo ? kv_lo + (size_t)b * Tq : NULL);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, HS, Tk, 1.0f, S, Tk, vg,
                        (int)ks, 0.0f, out + (size_t)b * Tq * qs + (size_t)h * HS, (int)qs);
        }
        free(S);
    }
    return fail ? -1 : 0;
}

int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window,
                           const int32_t *kv_lo) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH, total = B * KVH, fail = 0;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, n = (size_t)Tq * Tk;
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(be->n_threads)
    {
        float *P = malloc(sizeof(float) * n), *dP = malloc(sizeof(float) * n);
        if (!P || !dP) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic)
        for (int idx = 0; idx < total; idx++) {
            if (!P || !dP) continue;
            int b = idx / KVH, g = idx % KVH;
            const float *kg = k + b * kv_stride + (size_t)g * HS;
            const float *vg = v + b * kv_stride + (size_t)g * HS;
            for (int h = g * grp; h < (g + 1) * grp; h++) {
                size_t qo = (size_t)b * Tq * qs + (size_t)h * HS;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, HS, scale, q + qo,
                            (int)qs, kg, (int)ks, 0.0f, P, Tk);
                masked_softmax(P, Tq, Tk, window, kv_lo ? kv_lo + (size_t)b * Tq : NULL);
                if (dv) /* dV += Pᵀ·dO */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, HS, Tq, 1.0f, P, Tk,
                                dout + qo, (int)qs, 1.0f, dv + b * kv_stride + (size_t)g * HS,
                                (int)ks);
                if (!dq && !dk) continue;
                /* dP = dO·Vᵀ, then dS = P∘(dP − D) in place, D_t = Σ_j P_tj dP_tj */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, HS, 1.0f, dout + qo,
                            (int)qs, vg, (int)ks, 0.0f, dP, Tk);
                for (int t = 0; t < Tq; t++) {
                    float *pr = P + (size_t)t * Tk, *dr = dP + (size_t)t * Tk, D = 0;
                    for (int j = 0; j < Tk; j++)
                        D += pr[j] * dr[j];
                    for (int j = 0; j < Tk; j++)
                        dr[j] = pr[j] * (dr[j] - D);
                }
                if (dq) /* dQ += scale·dS·K */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, HS, Tk, scale, dP,
                                Tk, kg, (int)ks, 1.0f, dq + qo, (int)qs);
                if (dk) /* dK += scale·dSᵀ·Q */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, HS, Tq, scale, dP, Tk,
                                q + qo, (int)qs, 1.0f, dk + b * kv_stride + (size_t)g * HS,
                                (int)ks);
            }
        }
        free(P);
        free(dP);
    }
    return fail ? -1 : 0;
}
