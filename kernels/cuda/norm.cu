/* norm.cu: rmsnorm and layernorm forward, one block per row.
 *
 * Each thread strides over the row's columns, block_sum (common.cuh) reduces through warp
 * shuffles, and each thread then writes the columns it read, so out may alias in: every read
 * of the row happens before the reduction's barrier, every write after it. */
#include "kernels/cuda/common.cuh"

#define NORM_THREADS 256

/* out (R,C) = in / sqrt(mean(in²) + eps) * w (C). */
__global__ static void rmsnorm_fwd_kernel(float *out, const float *in, const float *w, float eps,
                                          int C) {
    const float *x = in + (size_t)blockIdx.x * C;
    float *y = out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        ss += x[i] * x[i];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        y[i] = x[i] * scale * w[i];
}

/* out (R,C) = (in - mean) / sqrt(var + eps) * w (C) + b (C), var the biased variance,
 * computed around the mean (two passes) for accuracy. b NULL means no shift. */
__global__ static void layernorm_fwd_kernel(float *out, const float *in, const float *w,
                                            const float *b, float eps, int C) {
    const float *x = in + (size_t)blockIdx.x * C;
    float *y = out + (size_t)blockIdx.x * C;
    float mean, rstd;
    block_mean_rstd(x, C, eps, &mean, &rstd);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        y[i] = (x[i] - mean) * rstd * w[i] + (b ? b[i] : 0.0f);
    }
}

void cuda_rmsnorm_fwd(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                      int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || R <= 0 || C <= 0) return;
    rmsnorm_fwd_kernel<<<R, NORM_THREADS, 0, ctx->stream>>>(out, in, w, eps, C);
    CUDA_TRY_LAUNCH(be, rmsnorm_fwd_kernel);
}

void cuda_layernorm_fwd(Backend *be, float *out, const float *in, const float *w, const float *b,
                        float eps, int R, int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || R <= 0 || C <= 0) return;
    layernorm_fwd_kernel<<<R, NORM_THREADS, 0, ctx->stream>>>(out, in, w, b, eps, C);
    CUDA_TRY_LAUNCH(be, layernorm_fwd_kernel);
}
