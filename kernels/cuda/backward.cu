/* backward.cu: the backward, loss and optimizer ops (fp32), small and direct: each one the
 * plain transcription of its kernels/ref version, checked against it by tests/test_grad_ops
 * (and the end-to-end runs of scripts/gpu-check.sh) where a device exists.
 *
 * Column sums (a norm's dw and db, a bias gradient) run as a second kernel with one thread per
 * column over the rows, so they do not depend on scheduling; the gradients that many rows add
 * into one place (embedding rows, attention's dk and dv) use atomicAdd, whose order varies
 * from run to run within fp32 rounding. */
#include "kernels/cuda/common.cuh"
#include "kernels/ref/ops_hash.h"

#define BW_THREADS     256
#define SUMSQ_BLOCKS   256
#define XENT_THREADS   512
#define COLSUM_THREADS 128

#define EW_LOOP(i, n)                                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

// --- matmul

/* dbias (N) += column sums of dout (M, N) */
__global__ static void colsum_kernel(float *dbias, const float *dout, int M, int N) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float s = 0.0f;
    for (int m = 0; m < M; m++)
        s += dout[(size_t)m * N + n];
    dbias[n] += s;
}

/* Row-major products as column-major transposes (matmul.cu's convention):
 *   din (M,K) += dout (M,N) · w (N,K):   dinᵀ (K,M) += w' (K,N) · doutᵀ (N,M)
 *   dw (N,K) += doutᵀ · in (M,K):         dwᵀ (K,N) += inᵀ (K,M) · dout' (M,N)      */
void cuda_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                     const float *in, const float *w, int M, int K, int N) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || M <= 0 || N <= 0 || cuda_refuse_bf16(be, K, N, "matmul_bwd")) return;
    const float one = 1.0f;
    if (din && K > 0 &&
        CUBLAS_TRY(be, cublasSgemm(ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, &one, w, K, dout,
                                   N, &one, din, K)))
        return;
    if (dw && K > 0 &&
        CUBLAS_TRY(be, cublasSgemm(ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, &one, in, K,
                                   dout, N, &one, dw, K)))
        return;
    if (dbias) {
        colsum_kernel<<<(N + COLSUM_THREADS - 1) / COLSUM_THREADS, COLSUM_THREADS, 0,
                        ctx->stream>>>(dbias, dout, M, N);
        CUDA_TRY_LAUNCH(be, colsum_kernel);
    }
}

// --- norms

/* One block per row: inv = 1/sqrt(mean(x²) + eps) into st[r];
 * din += inv * dy * w - x * inv³ / C * Σ dy w x */
__global__ static void rmsnorm_bwd_rows(float *din, float *st, const float *dout, const float *in,
                                        const float *w, float eps, int C) {
    const size_t r = blockIdx.x;
    const float *x = in + r * C, *dy = dout + r * C;
    float ss = 0.0f, dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        ss += x[c] * x[c];
        dot += dy[c] * w[c] * x[c];
    }
    ss = block_sum(ss);
    dot = block_sum(dot);
    const float inv = 1.0f / sqrtf(ss / (float)C + eps);
    if (threadIdx.x == 0) st[r] = inv;
    if (!din) return;
    const float kk = inv * inv * inv * dot / (float)C;
    float *dx = din + r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] += inv * dy[c] * w[c] - kk * x[c];
}

/* dw (C) += Σ_r dy x inv_r */
__global__ static void rmsnorm_bwd_cols(float *dw, const float *st, const float *dout,
                                        const float *in, int R, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int r = 0; r < R; r++)
        s += dout[(size_t)r * C + c] * in[(size_t)r * C + c] * st[r];
    dw[c] += s;
}

void cuda_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                      const float *w, float eps, int R, int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || R <= 0 || C <= 0 || (!din && !dw)) return;
    float *st = cuda_scratch_f(be, ctx, (size_t)R);
    if (!st) return;
    rmsnorm_bwd_rows<<<R, BW_THREADS, 0, ctx->stream>>>(din, st, dout, in, w, eps, C);
    if (CUDA_TRY_LAUNCH(be, rmsnorm_bwd_rows) || !dw) return;
    rmsnorm_bwd_cols<<<(C + COLSUM_THREADS - 1) / COLSUM_THREADS, COLSUM_THREADS, 0, ctx->stream>>>(
            dw, st, dout, in, R, C);
    CUDA_TRY_LAUNCH(be, rmsnorm_bwd_cols);
}

/* One block per row: mean and rstd into st[2r], st[2r+1]; with g = dy w and xhat = (x-mean)
 * rstd: din += rstd (g - mean(g) - xhat mean(g xhat)) */
__global__ static void layernorm_bwd_rows(float *din, float *st, const float *dout, const float *in,
                                          const float *w, float eps, int C) {
    const size_t r = blockIdx.x;
    const float *x = in + r * C, *dy = dout + r * C;
    float mean, rstd;
    block_mean_rstd(x, C, eps, &mean, &rstd); /* the forward's own statistics */
    if (threadIdx.x == 0) {
        st[2 * r] = mean;
        st[2 * r + 1] = rstd;
    }
    if (!din) return;
    float mg = 0.0f, mgx = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float g = dy[c] * w[c];
        mg += g;
        mgx += g * (x[c] - mean) * rstd;
    }
    mg = block_sum(mg) / (float)C;
    mgx = block_sum(mgx) / (float)C;
    float *dx = din + r * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dx[c] += rstd * (dy[c] * w[c] - mg - (x[c] - mean) * rstd * mgx);
}

/* dw (C) += Σ_r dy xhat; db (C) += Σ_r dy (either may be NULL) */
__global__ static void layernorm_bwd_cols(float *dw, float *db, const float *st, const float *dout,
                                          const float *in, int R, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sw = 0.0f, sb = 0.0f;
    for (int r = 0; r < R; r++) {
        const float dy = dout[(size_t)r * C + c];
        sw += dy * (in[(size_t)r * C + c] - st[2 * r]) * st[2 * r + 1];
        sb += dy;
    }
    if (dw) dw[c] += sw;
    if (db) db[c] += sb;
}

void cuda_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                        const float *in, const float *w, float eps, int R, int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || R <= 0 || C <= 0 || (!din && !dw && !db)) return;
    float *st = cuda_scratch_f(be, ctx, 2 * (size_t)R);
    if (!st) return;
    layernorm_bwd_rows<<<R, BW_THREADS, 0, ctx->stream>>>(din, st, dout, in, w, eps, C);
    if (CUDA_TRY_LAUNCH(be, layernorm_bwd_rows) || (!dw && !db)) return;
    layernorm_bwd_cols<<<(C + COLSUM_THREADS - 1) / COLSUM_THREADS, COLSUM_THREADS, 0,
                         ctx->stream>>>(dw, db, st, dout, in, R, C);
    CUDA_TRY_LAUNCH(be, layernorm_bwd_cols);
}

// --- elementwise

/* dgate += d up sg (1 + g (1 - sg)), dup += d g sg; acc 0: = */
__global__ static void swiglu_bwd_kernel(float *dgate, float *dup, const float *dout,
                                         const float *gate, const float *up, size_t n, int acc) {
    EW_LOOP(i, n) {
        const float g = gate[i], d = dout[i], sg = 1.0f / (1.0f + expf(-g));
        if (dgate) {
            const float x = d * up[i] * sg * (1.0f + g * (1.0f - sg));
            dgate[i] = acc ? dgate[i] + x : x;
        }
        if (dup) {
            const float x = d * g * sg;
            dup[i] = acc ? dup[i] + x : x;
        }
    }
}

void cuda_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n, int acc) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0 || (!dgate && !dup)) return;
    swiglu_bwd_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(
            dgate, dup, dout, gate, up, n, acc);
    CUDA_TRY_LAUNCH(be, swiglu_bwd_kernel);
}

/* din += dout gelu'(in), tanh form (approx) or erf form */
__global__ static void gelu_bwd_kernel(float *din, const float *dout, const float *in, size_t n,
                                       int approx) {
    const float kk = 0.7978845608028654f;
    EW_LOOP(i, n) {
        const float x = in[i];
        float d;
        if (approx) {
            const float th = tanhf(kk * (x + 0.044715f * x * x * x));
            d = 0.5f * (1.0f + th) +
                0.5f * x * (1.0f - th * th) * kk * (1.0f + 3.0f * 0.044715f * x * x);
        } else {
            d = 0.5f * (1.0f + erff(x * 0.7071067811865476f)) +
                x * expf(-0.5f * x * x) * 0.3989422804014327f;
        }
        din[i] += dout[i] * d;
    }
}

void cuda_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                   int approx) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0 || !din) return;
    gelu_bwd_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(din, dout, in, n,
                                                                                 approx);
    CUDA_TRY_LAUNCH(be, gelu_bwd_kernel);
}

/* dtable rows ids (T) += dout (T, C); repeated ids meet in atomicAdd */
__global__ static void embed_bwd_kernel(float *dtable, const float *dout, const int32_t *ids,
                                        size_t n, int C) {
    EW_LOOP(i, n) {
        const size_t t = i / (size_t)C, c = i % (size_t)C;
        atomicAdd(dtable + (size_t)ids[t] * C + c, dout[i]);
    }
}

void cuda_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                    int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || !dtable || T <= 0 || C <= 0) return;
    const int32_t *ids_d = cuda_upload_i32(be, ctx, ids, (size_t)T);
    if (!ids_d) return;
    const size_t n = (size_t)T * C;
    embed_bwd_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(dtable, dout,
                                                                                  ids_d, n, C);
    CUDA_TRY_LAUNCH(be, embed_bwd_kernel);
}

// --- loss

/* One block per row of logits (V): loss[r] = logsumexp - x[target]; dlogits (may alias
 * logits, may be NULL) = (softmax - onehot) * scale; an ignored row (target outside [0, V):
 * the host has checked it is -100) gets loss 0 and zero gradients. Every read of the row
 * happens before the block_sum barrier that precedes the first write. */
__global__ static void xent_kernel(float *dlogits, float *loss, const float *logits,
                                   const int32_t *targets, int V, float scale, float smooth,
                                   int dft) {
    const size_t r = blockIdx.x;
    const float *x = logits + r * V;
    float *dx = dlogits ? dlogits + r * V : NULL;
    const int tg = targets[r];
    if (tg < 0 || tg >= V) {
        if (threadIdx.x == 0) loss[r] = 0.0f;
        if (dx)
            for (int i = threadIdx.x; i < V; i += blockDim.x)
                dx[i] = 0.0f;
        return;
    }
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        mx = fmaxf(mx, x[i]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        s += expf(x[i] - mx);
    const float xt = x[tg]; /* read by every thread before the barrier in block_sum */
    float sx = 0.0f;        /* label smoothing: Σ (x - max), read before the barriers too */
    if (smooth > 0.0f)
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            sx += x[i] - mx;
    const float lse = mx + logf(block_sum(s));
    if (smooth > 0.0f) {
        sx = block_sum(sx);
        const float e = smooth, lse_m = lse - mx;
        if (threadIdx.x == 0) loss[r] = (1.0f - e) * (lse - xt) + e * (lse_m - sx / (float)V);
        if (!dx) return;
        const float u = e / (float)V * scale, t = (1.0f - e) * scale;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float p = expf(x[i] - lse) * scale - u;
            dx[i] = i == tg ? p - t : p;
        }
        return;
    }
    /* DFT: the row times its target's probability, a constant for the gradient */
    const float w = dft ? expf(xt - lse) : 1.0f, ws = dft ? w * scale : scale;
    if (threadIdx.x == 0) loss[r] = dft ? w * (lse - xt) : lse - xt; /* DFT: times p[target] */
    if (!dx) return;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = expf(x[i] - lse) * ws;
        dx[i] = i == tg ? p - ws : p;
    }
}

void cuda_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                       const int32_t *targets, int R, int V, float scale, float smooth,
                       XentWeight wt) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || R <= 0) return;
    if (wt.kind == XENT_W_EAFT) { /* its top-20 per row: not on this backend yet */
        tuna_errf(&be->err, TUNA_EUNSUP, "xent: the EAFT loss is not implemented on cuda");
        return;
    }
    int bad = 0;
    for (int r = 0; r < R; r++) /* targets are host memory: checked here, as ref does */
        bad += (targets[r] < 0 || targets[r] >= V) && targets[r] != -100;
    if (bad) {
        tuna_errf(&be->err, TUNA_EINVAL, "xent: %d target(s) outside [0, %d) and not -100", bad, V);
        return;
    }
    const int32_t *tg_d = cuda_upload_i32(be, ctx, targets, (size_t)R);
    float *loss_d = tg_d ? cuda_scratch_f(be, ctx, (size_t)R) : NULL;
    if (!loss_d) return;
    xent_kernel<<<R, XENT_THREADS, 0, ctx->stream>>>(dlogits, loss_d, logits, tg_d, V, scale,
                                                     smooth, wt.kind == XENT_W_DFT);
    if (CUDA_TRY_LAUNCH(be, xent_kernel)) return;
    if (CUDA_TRY(be, cudaMemcpyAsync(losses, loss_d, (size_t)R * sizeof(float),
                                     cudaMemcpyDeviceToHost, ctx->stream)))
        return;
    CUDA_TRY(be, cudaStreamSynchronize(ctx->stream)); /* losses are host memory, read next */
}

// --- reductions, scale, dropout, AdamW

/* Per block, a double sum of squares over a grid-stride share into part[blockIdx.x]. */
__global__ static void sumsq_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[BW_THREADS];
    double s = 0.0;
    EW_LOOP(i, n) s += (double)x[i] * (double)x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

/* The per-block sums summed on the host in block order: the same value for the same n every
 * time (the grid depends on n alone). */
double cuda_sumsq(Backend *be, const float *x, size_t n) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return 0.0;
    if (!ctx->partial) {
        if (CUDA_TRY(be, cudaMalloc((void **)&ctx->partial, SUMSQ_BLOCKS * sizeof(double))))
            return 0.0;
        if (CUDA_TRY(be,
                     cudaMallocHost((void **)&ctx->partial_host, SUMSQ_BLOCKS * sizeof(double))))
            return 0.0;
    }
    unsigned blocks = cuda_grid_1d(n, BW_THREADS);
    if (blocks > SUMSQ_BLOCKS) blocks = SUMSQ_BLOCKS;
    sumsq_kernel<<<blocks, BW_THREADS, 0, ctx->stream>>>(ctx->partial, x, n);
    if (CUDA_TRY_LAUNCH(be, sumsq_kernel)) return 0.0;
    if (CUDA_TRY(be, cudaMemcpyAsync(ctx->partial_host, ctx->partial, blocks * sizeof(double),
                                     cudaMemcpyDeviceToHost, ctx->stream)))
        return 0.0;
    if (CUDA_TRY(be, cudaStreamSynchronize(ctx->stream))) return 0.0;
    double s = 0.0;
    for (unsigned b = 0; b < blocks; b++)
        s += ctx->partial_host[b];
    return s;
}

__global__ static void scale_kernel(float *x, size_t n, float s) {
    EW_LOOP(i, n) x[i] *= s;
}

void cuda_scale(Backend *be, float *x, size_t n, float s) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    scale_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(x, n, s);
    CUDA_TRY_LAUNCH(be, scale_kernel);
}

__global__ static void col_scale_kernel(float *out, const float *in, const float *a, const float *b,
                                        size_t n, int N) {
    EW_LOOP(i, n) {
        int o = (int)(i % (size_t)N);
        out[i] = a[o] * in[i] + (b ? b[o] : 0.0f);
    }
}

void cuda_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b, int R,
                    int N) {
    CudaCtx *ctx = cuda_begin(be);
    size_t n = (size_t)R * N;
    if (!ctx || n == 0) return;
    col_scale_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(out, in, a, b, n,
                                                                                  N);
    CUDA_TRY_LAUNCH(be, col_scale_kernel);
}

/* a thread per column, its rows in order in double: ref_col_dot's sums term for term */
__global__ static void col_dot_kernel(double *sums, const float *x, const float *y, int R, int N) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= N) return;
    double s = 0.0;
    for (int t = 0; t < R; t++) {
        size_t i = (size_t)t * N + o;
        s += (double)x[i] * (double)y[i];
    }
    sums[o] = s;
}

void cuda_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || N <= 0) return;
    double *sums = (double *)cuda_scratch_f(be, ctx, 2 * (size_t)N); /* N doubles */
    double *host = (double *)malloc(sizeof(double) * (size_t)N);
    if (!sums || !host) {
        free(host);
        if (sums) cuda_check(be, cudaErrorMemoryAllocation, "col_dot host", __FILE__, __LINE__);
        return;
    }
    col_dot_kernel<<<cuda_grid_1d((size_t)N, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(sums, x, y,
                                                                                        R, N);
    if (!CUDA_TRY_LAUNCH(be, col_dot_kernel) &&
        !CUDA_TRY(be, cudaMemcpyAsync(host, sums, sizeof(double) * (size_t)N,
                                      cudaMemcpyDeviceToHost, ctx->stream)) &&
        !CUDA_TRY(be, cudaStreamSynchronize(ctx->stream)))
        for (int o = 0; o < N; o++)
            acc[o] += host[o];
    free(host);
}

/* ops_hash.h's mask, as every backend: kept iff tuna_dropout_u(key, i) >= p */
__global__ static void dropout_kernel(float *out, const float *in, size_t n, float p, uint64_t key,
                                      float keep) {
    EW_LOOP(i, n) {
        if (p >= 1.0f)
            out[i] = 0.0f;
        else
            out[i] = tuna_dropout_u(key, i) >= p ? in[i] * keep : 0.0f;
    }
}

void cuda_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    const float keep = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    dropout_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(
            out, in, n, p, tuna_dropout_key(seed), keep);
    CUDA_TRY_LAUNCH(be, dropout_kernel);
}

/* ops_hash.h's noise, as ref_noise_add (the sum rounded apart from its product) */
__global__ static void noise_add_kernel(float *x, size_t n, float mag, uint64_t key) {
    EW_LOOP(i, n) x[i] = __fadd_rn(x[i], tuna_noise(key, i, mag));
}

void cuda_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    noise_add_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(
            x, n, mag, tuna_dropout_key(seed));
    CUDA_TRY_LAUNCH(be, noise_add_kernel);
}

/* PyTorch's AdamW, one fused pass: decay = 1 - lr wd, step = lr / bc1, ib2 = 1 / bc2 */
__global__ static void adamw_kernel(float *p, const float *g, float gscale, float *m, float *v,
                                    size_t n, float b1, float b2, float eps, float decay,
                                    float step, float ib2) {
    EW_LOOP(i, n) {
        const float gi = g[i] * gscale;
        const float mi = b1 * m[i] + (1.0f - b1) * gi;
        const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (sqrtf(vi * ib2) + eps);
    }
}

void cuda_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
                float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    adamw_kernel<<<cuda_grid_1d(n, BW_THREADS), BW_THREADS, 0, ctx->stream>>>(
            p, g, gscale, m, v, n, b1, b2, eps, 1.0f - lr * wd, lr / bc1, 1.0f / bc2);
    CUDA_TRY_LAUNCH(be, adamw_kernel);
}
