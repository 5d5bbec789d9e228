/* elementwise.cu: swiglu, gelu, add and embedding forward.
 *
 * Grid-stride loops over size_t n; each element is read and written by one thread, so out
 * may alias an input where backend.h allows it. */
#include "kernels/cuda/common.cuh"

#define EW_THREADS 256

#define EW_LOOP(i, n)                                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

/* out (n) = silu(gate) * up, silu(g) = g / (1 + e^-g). */
__global__ static void swiglu_fwd_kernel(float *out, const float *gate, const float *up, size_t n) {
    EW_LOOP(i, n) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* out (n) = gelu(in): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))) when approx (gelu_new),
 * else 0.5 x (1 + erf(x / sqrt(2))). */
__global__ static void gelu_fwd_kernel(float *out, const float *in, size_t n, int approx) {
    const float sqrt_2_over_pi = 0.7978845608028654f, inv_sqrt2 = 0.7071067811865476f;
    EW_LOOP(i, n) {
        const float x = in[i];
        out[i] = approx ? 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)))
                        : 0.5f * x * (1.0f + erff(x * inv_sqrt2));
    }
}

__global__ static void add_fwd_kernel(float *out, const float *a, const float *b, size_t n) {
    EW_LOOP(i, n) out[i] = a[i] + b[i];
}

/* out (T,C) = table rows ids (T); n = T*C. */
__global__ static void embed_fwd_kernel(float *out, const int32_t *ids, const float *table,
                                        size_t n, int C) {
    EW_LOOP(i, n) {
        const size_t t = i / (size_t)C, c = i % (size_t)C;
        out[i] = table[(size_t)ids[t] * C + c];
    }
}

void cuda_swiglu_fwd(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    swiglu_fwd_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, ctx->stream>>>(out, gate, up,
                                                                                   n);
    CUDA_TRY_LAUNCH(be, swiglu_fwd_kernel);
}

void cuda_gelu_fwd(Backend *be, float *out, const float *in, size_t n, int approx) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    gelu_fwd_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, ctx->stream>>>(out, in, n,
                                                                                 approx);
    CUDA_TRY_LAUNCH(be, gelu_fwd_kernel);
}

void cuda_add_fwd(Backend *be, float *out, const float *a, const float *b, size_t n) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || n == 0) return;
    add_fwd_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, ctx->stream>>>(out, a, b, n);
    CUDA_TRY_LAUNCH(be, add_fwd_kernel);
}

void cuda_embed_fwd(Backend *be, float *out, const int32_t *ids, const float *table, int T, int C) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || T <= 0 || C <= 0) return;
    const int32_t *ids_d = cuda_upload_i32(be, ctx, ids, (size_t)T);
    if (!ids_d) return;
    const size_t n = (size_t)T * C;
    embed_fwd_kernel<<<cuda_grid_1d(n, EW_THREADS), EW_THREADS, 0, ctx->stream>>>(out, ids_d, table,
                                                                                  n, C);
    CUDA_TRY_LAUNCH(be, embed_fwd_kernel);
}
