/* attention.cu: rotary embedding and causal grouped-query attention, forward and backward.
 *
 * attention_fwd_kernel runs one block per (batch row, query, head). Each warp takes every
 * nwarps-th allowed key, computes the score with a warp reduction and folds the key into its
 * own online softmax (running max m, running sum l, accumulator acc (HS) in shared memory).
 * The warps' partial results are then merged by rescaling to the common max. Any Tk works
 * with O(HS) shared memory; speed is left to later (flash-style tiling). */
#include "kernels/cuda/common.cuh"
#include "kernels/ref/attn_span.h"

#include <math.h>

#define ROPE_THREADS 256
#define ATTN_WARPS   4
#define ATTN_THREADS (32 * ATTN_WARPS)

// --- rope

/* In place on x (T, NH, HS), HF rotate_half layout over the first rot_dim dims of each head:
 * for i < half = rot_dim/2 and angle a = pos[t] * inv_freq[i],
 *   x[i]      <- x[i] cos a - x[i+half] sin a
 *   x[i+half] <- x[i+half] cos a + x[i] sin a                                          */
__global__ static void rope_fwd_kernel(float *x, const int32_t *pos, const float *inv_freq,
                                       size_t n, int NH, int HS, int half, float sgn) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % (size_t)half);
        const size_t th = idx / (size_t)half; /* t * NH + h */
        const size_t t = th / (size_t)NH;
        float *xh = x + th * HS;
        float s, c;
        sincosf((float)pos[t] * inv_freq[i], &s, &c);
        s *= sgn; /* -1: the backward, the transpose of the rotation */
        const float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
    }
}

static void rope(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                 int HS, int rot_dim, float sgn) {
    CudaCtx *ctx = cuda_begin(be);
    const int half = rot_dim / 2;
    if (!ctx || T <= 0 || NH <= 0 || half <= 0) return;
    const int32_t *pos_d = cuda_upload_i32(be, ctx, pos, (size_t)T);
    if (!pos_d) return;
    const size_t n = (size_t)T * NH * half;
    rope_fwd_kernel<<<cuda_grid_1d(n, ROPE_THREADS), ROPE_THREADS, 0, ctx->stream>>>(
            x, pos_d, inv_freq, n, NH, HS, half, sgn);
    CUDA_TRY_LAUNCH(be, rope_fwd_kernel);
}

void cuda_rope_fwd(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim) {
    rope(be, x, pos, inv_freq, T, NH, HS, rot_dim, 1.0f);
}

void cuda_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim) {
    rope(be, dx, pos, inv_freq, T, NH, HS, rot_dim, -1.0f);
}

// --- attention

/* q (B,Tq,NH,HS), k and v (B,Tk,KVH,HS) with batch rows kv_stride floats apart,
 * out (B,Tq,NH,HS), kv_lo (B*Tq, device memory) or NULL. Block index = (b * Tq + t) * NH + h.
 * Dynamic shared memory:
 * q_s (HS) | acc (ATTN_WARPS, HS) | m_s (ATTN_WARPS) | l_s (ATTN_WARPS). */
__global__ static void attention_fwd_kernel(float *out, const float *q, const float *k,
                                            const float *v, int Tq, int Tk, size_t kv_stride,
                                            int NH, int KVH, int HS, int window,
                                            const int32_t *kv_lo, float scale) {
    extern __shared__ float smem[];
    float *q_s = smem;
    float *m_s = smem + (size_t)(ATTN_WARPS + 1) * HS;
    float *l_s = m_s + ATTN_WARPS;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float *acc = smem + (size_t)(warp + 1) * HS; /* this warp's accumulator */

    const size_t bth = blockIdx.x; /* (b * Tq + t) * NH + h */
    const int h = (int)(bth % (size_t)NH);
    const int t = (int)((bth / (size_t)NH) % (size_t)Tq);
    const size_t b = bth / ((size_t)NH * Tq);
    const int kvh = h / (NH / KVH); /* HF repeat_kv: query head h reads kv head h / n_rep */
    const float *kb = k + b * kv_stride + (size_t)kvh * HS; /* key j at kb + j * KVH * HS */
    const float *vb = v + b * kv_stride + (size_t)kvh * HS;
    const size_t krow = (size_t)KVH * HS;

    /* Query t sits at position Tk - Tq + t and sees keys j0..j1 (inclusive). */
    const int j1 = Tk - Tq + t;
    const int j0 = tuna_attn_lo(kv_lo, b * Tq + t, j1, window);

    for (int d = threadIdx.x; d < HS; d += blockDim.x)
        q_s[d] = q[bth * HS + d];
    for (int d = lane; d < HS; d += 32)
        acc[d] = 0.0f;
    __syncthreads();

    float m = -INFINITY, l = 0.0f;
    for (int j = j0 + warp; j <= j1; j += ATTN_WARPS) {
        const float *kj = kb + (size_t)j * krow;
        const float *vj = vb + (size_t)j * krow;
        float dot = 0.0f;
        for (int d = lane; d < HS; d += 32)
            dot += q_s[d] * kj[d];
        const float s = warp_sum(dot) * scale; /* same value in every lane */
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new); /* 0 on the first key (m = -inf) */
        const float p = expf(s - m_new);
        l = l * corr + p;
        for (int d = lane; d < HS; d += 32)
            acc[d] = acc[d] * corr + p * vj[d];
        m = m_new;
    }
    if (lane == 0) {
        m_s[warp] = m;
        l_s[warp] = l;
    }
    __syncthreads();

    /* Merge the warps: rescale each to the overall max. A warp that saw no key has m = -inf
     * and weight 0. No key at all (only if Tq > Tk) gives zeros, not NaN. */
    float mx = -INFINITY;
    for (int w = 0; w < ATTN_WARPS; w++)
        mx = fmaxf(mx, m_s[w]);
    float den = 0.0f, wgt[ATTN_WARPS];
    for (int w = 0; w < ATTN_WARPS; w++) {
        wgt[w] = mx == -INFINITY ? 0.0f : expf(m_s[w] - mx);
        den += l_s[w] * wgt[w];
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float num = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++)
            num += smem[(size_t)(w + 1) * HS + d] * wgt[w];
        out[bth * HS + d] = num * inv;
    }
}

/* What both attention ops check and stage before their launch: --bf16 refused, NH a multiple
 * of KVH, the dynamic shared memory (extra_rows of HS floats besides the warps' accumulators,
 * and 2 ATTN_WARPS floats) within 48 KiB, kv_lo uploaded. Returns the shared memory bytes, or
 * 0 when the op must do nothing (an error latched). */
static size_t attention_begin(Backend *be, CudaCtx *ctx, const char *op, int B, int Tq, int NH,
                              int KVH, int HS, int extra_rows, const int32_t *kv_lo,
                              const int32_t **kv_lo_d) {
    if (cuda_refuse_bf16(be, 0, 0, op)) return 0;
    if (KVH <= 0 || NH % KVH != 0) {
        tuna_errf(&be->err, TUNA_EINVAL, "%s:%d: %s: NH %d is not a multiple of KVH %d", __FILE__,
                  __LINE__, op, NH, KVH);
        return 0;
    }
    const size_t smem = ((size_t)(ATTN_WARPS + extra_rows) * HS + 2 * ATTN_WARPS) * sizeof(float);
    if (smem > 48 * 1024) {
        tuna_errf(&be->err, TUNA_EUNSUP,
                  "%s:%d: %s: head size %d needs %zu bytes of shared memory (max 48 KiB)", __FILE__,
                  __LINE__, op, HS, smem);
        return 0;
    }
    *kv_lo_d = NULL;
    if (kv_lo && !(*kv_lo_d = cuda_upload_i32(be, ctx, kv_lo, (size_t)B * Tq))) return 0;
    return smem;
}

void cuda_attention_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                        int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                        int window, const int32_t *kv_lo) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || B <= 0 || Tq <= 0 || NH <= 0 || HS <= 0) return;
    const int32_t *kv_lo_d;
    const size_t smem =
            attention_begin(be, ctx, "attention_fwd", B, Tq, NH, KVH, HS, 1, kv_lo, &kv_lo_d);
    if (!smem) return;
    const unsigned blocks = (unsigned)((size_t)B * Tq * NH);
    const float scale = 1.0f / sqrtf((float)HS);
    attention_fwd_kernel<<<blocks, ATTN_THREADS, smem, ctx->stream>>>(
            out, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo_d, scale);
    CUDA_TRY_LAUNCH(be, attention_fwd_kernel);
}

/* The backward, one block per (b, t, h) as the forward, three passes over the allowed keys
 * (each warp every ATTN_WARPS-th key), the probabilities recomputed from q and k:
 *   1. the scores' log-sum-exp (online max and sum per warp, merged);
 *   2. D = sum_j p_j dp_j with dp_j = dout . v_j;
 *   3. ds_j = p_j (dp_j - D) scale: dq += sum_j ds_j k_j (a per-warp accumulator), and
 *      dk_j += ds_j q, dv_j += p_j dout by atomicAdd (the other queries add there too).
 * Direct rather than fast (every score computed three times, HS atomics per key): flash-style
 * tiles come later. Dynamic shared memory: q_s (HS) | do_s (HS) | acc (ATTN_WARPS, HS) |
 * red (2 ATTN_WARPS). */
__global__ static void attention_bwd_kernel(float *dq, float *dk, float *dv, const float *dout,
                                            const float *q, const float *k, const float *v, int Tq,
                                            int Tk, size_t kv_stride, int NH, int KVH, int HS,
                                            int window, const int32_t *kv_lo, float scale) {
    extern __shared__ float smem[];
    float *q_s = smem, *do_s = smem + HS, *red = smem + (size_t)(ATTN_WARPS + 2) * HS;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float *acc = smem + (size_t)(warp + 2) * HS;

    const size_t bth = blockIdx.x; /* (b * Tq + t) * NH + h */
    const int h = (int)(bth % (size_t)NH);
    const int t = (int)((bth / (size_t)NH) % (size_t)Tq);
    const size_t b = bth / ((size_t)NH * Tq);
    const int kvh = h / (NH / KVH);
    const size_t kvo = b * kv_stride + (size_t)kvh * HS; /* key j at kvo + j * krow */
    const size_t krow = (size_t)KVH * HS;
    const int j1 = Tk - Tq + t;
    const int j0 = tuna_attn_lo(kv_lo, b * Tq + t, j1, window);

    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        q_s[d] = q[bth * HS + d];
        do_s[d] = dout[bth * HS + d];
    }
    for (int d = lane; d < HS; d += 32)
        acc[d] = 0.0f;
    __syncthreads();

    float m = -INFINITY, l = 0.0f; /* 1. */
    for (int j = j0 + warp; j <= j1; j += ATTN_WARPS) {
        const float *kj = k + kvo + (size_t)j * krow;
        float dot = 0.0f;
        for (int d = lane; d < HS; d += 32)
            dot += q_s[d] * kj[d];
        const float s = warp_sum(dot) * scale, m_new = fmaxf(m, s);
        l = l * expf(m - m_new) + expf(s - m_new);
        m = m_new;
    }
    if (lane == 0) {
        red[warp] = m;
        red[ATTN_WARPS + warp] = l;
    }
    __syncthreads();
    float mx = -INFINITY, den = 0.0f;
    for (int w = 0; w < ATTN_WARPS; w++)
        mx = fmaxf(mx, red[w]);
    for (int w = 0; w < ATTN_WARPS; w++)
        den += red[w] == -INFINITY ? 0.0f : red[ATTN_WARPS + w] * expf(red[w] - mx);
    if (!(den > 0.0f)) return; /* no key (only if Tq > Tk): nothing flows back; the whole block */
    const float lse = mx + logf(den);
    __syncthreads(); /* red is rewritten below */

    float dsum = 0.0f; /* 2. */
    for (int j = j0 + warp; j <= j1; j += ATTN_WARPS) {
        const float *kj = k + kvo + (size_t)j * krow, *vj = v + kvo + (size_t)j * krow;
        float dot = 0.0f, dp = 0.0f;
        for (int d = lane; d < HS; d += 32) {
            dot += q_s[d] * kj[d];
            dp += do_s[d] * vj[d];
        }
        dsum += expf(warp_sum(dot) * scale - lse) * warp_sum(dp);
    }
    if (lane == 0) red[warp] = dsum;
    __syncthreads();
    float D = 0.0f;
    for (int w = 0; w < ATTN_WARPS; w++)
        D += red[w];

    for (int j = j0 + warp; j <= j1; j += ATTN_WARPS) { /* 3. */
        const size_t o = kvo + (size_t)j * krow;
        const float *kj = k + o, *vj = v + o;
        float dot = 0.0f, dp = 0.0f;
        for (int d = lane; d < HS; d += 32) {
            dot += q_s[d] * kj[d];
            dp += do_s[d] * vj[d];
        }
        const float p = expf(warp_sum(dot) * scale - lse);
        const float ds = p * (warp_sum(dp) - D) * scale;
        for (int d = lane; d < HS; d += 32) {
            acc[d] += ds * kj[d];
            if (dk) atomicAdd(dk + o + d, ds * q_s[d]);
            if (dv) atomicAdd(dv + o + d, p * do_s[d]);
        }
    }
    __syncthreads();
    if (!dq) return;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++)
            s += smem[(size_t)(w + 2) * HS + d];
        dq[bth * HS + d] += s;
    }
}

void cuda_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                        size_t kv_stride, int NH, int KVH, int HS, int window,
                        const int32_t *kv_lo) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || B <= 0 || Tq <= 0 || NH <= 0 || HS <= 0 || (!dq && !dk && !dv)) return;
    const int32_t *kv_lo_d;
    const size_t smem =
            attention_begin(be, ctx, "attention_bwd", B, Tq, NH, KVH, HS, 2, kv_lo, &kv_lo_d);
    if (!smem) return;
    const unsigned blocks = (unsigned)((size_t)B * Tq * NH);
    const float scale = 1.0f / sqrtf((float)HS);
    attention_bwd_kernel<<<blocks, ATTN_THREADS, smem, ctx->stream>>>(
            dq, dk, dv, dout, q, k, v, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo_d, scale);
    CUDA_TRY_LAUNCH(be, attention_bwd_kernel);
}
