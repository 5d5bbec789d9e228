/* matmul.cu: out (M,N) = in (M,K) · w (N,K)ᵀ + bias (N) through cublasSgemm.
 *
 * cuBLAS is column-major. A row-major (R,C) matrix is the column-major (C,R) matrix with the
 * same leading dimension C, so the row-major product is computed as its transpose:
 *   outᵀ (N,M) = w (N,K) · inᵀ (K,M)
 * where w is the column-major (K,N) matrix read transposed (OP_T, lda K), inᵀ is the
 * column-major (K,M) matrix read as is (OP_N, ldb K), and outᵀ is column-major (N,M), ldc N. */
#include "kernels/cuda/common.cuh"

#define BIAS_THREADS 256

/* out (M,N) += bias (N), row by row. */
__global__ static void bias_add_kernel(float *out, const float *bias, size_t MN, int N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < MN;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] += bias[i % (size_t)N];
    }
}

void cuda_matmul_fwd(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || M <= 0 || N <= 0 || cuda_refuse_bf16(be, K, N, "matmul_fwd")) return;
    size_t MN = (size_t)M * N;
    if (K <= 0) { /* an empty sum: cuBLAS would leave out untouched */
        if (CUDA_TRY(be, cudaMemsetAsync(out, 0, MN * sizeof(float), ctx->stream))) return;
    } else {
        const float one = 1.0f, zero = 0.0f;
        if (CUBLAS_TRY(be, cublasSgemm(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w, K,
                                       in, K, &zero, out, N))) {
            return;
        }
    }
    if (bias) {
        bias_add_kernel<<<cuda_grid_1d(MN, BIAS_THREADS), BIAS_THREADS, 0, ctx->stream>>>(out, bias,
                                                                                          MN, N);
        CUDA_TRY_LAUNCH(be, bias_add_kernel);
    }
}
