/* common.cuh: what the CUDA backend's translation units share (private to kernels/cuda).
 *
 * CudaCtx (device, stream, cuBLAS handle, an int32 scratch buffer), the CUDA_TRY / CUBLAS_TRY
 * macros that latch the first failure into be->err with file:line and never exit, the
 * per-op entry check cuda_begin, and the op entry points that fill the BackendOps table.
 * Ops do nothing once an error is latched; ->sync reports it. One thread at a time. */
#ifndef TUNA_KERNELS_CUDA_COMMON_CUH
#define TUNA_KERNELS_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "src/err.h"

typedef struct CudaCtx {
    int device;            /* current device at init; re-selected by every op (any thread) */
    cudaStream_t stream;   /* every copy, kernel and cuBLAS call goes here, in order */
    cublasHandle_t cublas; /* bound to stream */
    int32_t *scratch_i32;  /* device copy of host int32 arrays (rope pos, embed ids) */
    size_t scratch_cap;    /* capacity of scratch_i32, in elements */
    float *scratch_f;      /* per-row statistics of the backward ops, cross-entropy's losses */
    size_t scratch_f_cap;  /* capacity of scratch_f, in floats */
    double *partial;       /* sumsq's per-block sums (device), and their host copy */
    double *partial_host;
} CudaCtx;

// --- error latching

/* Latch a failed CUDA / cuBLAS call into be->err (the first failure wins; later ones are
 * dropped). Return 0 on success, else the latched code, so callers write
 * `if (CUDA_TRY(be, cudaMemcpyAsync(...))) return;`. */
int cuda_check(Backend *be, cudaError_t e, const char *expr, const char *file, int line);
int cublas_check(Backend *be, cublasStatus_t s, const char *expr, const char *file, int line);

#define CUDA_TRY(be, call)   cuda_check((be), (call), #call, __FILE__, __LINE__)
#define CUBLAS_TRY(be, call) cublas_check((be), (call), #call, __FILE__, __LINE__)
/* After a <<<...>>> launch: reports a bad configuration now, a fault at the next sync. */
#define CUDA_TRY_LAUNCH(be, kernel)                                                                \
    cuda_check((be), cudaGetLastError(), #kernel, __FILE__, __LINE__)

/* Start of every op: the context with its device made current on this thread, or NULL when
 * an error is already latched (the op must then do nothing). */
CudaCtx *cuda_begin(Backend *be);

/* Copies n host int32s to the backend's device scratch (grown as needed) and returns it, or
 * NULL with the error latched. The host array may be reused as soon as this returns. The
 * scratch is valid for work queued until the next call. */
const int32_t *cuda_upload_i32(Backend *be, CudaCtx *ctx, const int32_t *host, size_t n);

/* A device float buffer of at least n elements, the backend's own (grown as needed), or NULL
 * with the error latched. Valid for work queued until the next call. */
float *cuda_scratch_f(Backend *be, CudaCtx *ctx, size_t n);

/* Latches "not implemented" when be->mm_bf16 asks the products of a K x N weight for bf16
 * operands (backend_mm_bf16; K = N = 0: attention's, whenever mm_bf16 is set): the cuda
 * backend runs fp32 products only, and a --bf16 run must not silently get other math.
 * Returns non-zero when the op must do nothing. */
int cuda_refuse_bf16(Backend *be, int K, int N, const char *op);

/* Blocks for a grid-stride loop over n elements with `threads` per block (n > 0). */
static inline unsigned cuda_grid_1d(size_t n, unsigned threads) {
    size_t blocks = (n + threads - 1) / threads;
    return blocks > 65535u * 16u ? 65535u * 16u : (unsigned)blocks;
}

// --- reductions (every lane / thread gets the result)

static __device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024). All threads must call it. */
static __device__ __forceinline__ float block_sum(float x) {
    __shared__ float part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    x = warp_sum(x);
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : 0.0f;
    x = warp_sum(x); /* every warp reduces the partials itself: no second broadcast */
    __syncthreads(); /* part[] may be reused by the next call */
    return x;
}

/* A row's mean and 1/sqrt(biased variance + eps) over the block, the variance around the mean
 * (two passes) for accuracy: the layernorm forward's and backward's one definition. */
static __device__ __forceinline__ void block_mean_rstd(const float *x, int C, float eps,
                                                       float *mean, float *rstd) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        s += x[i];
    const float mu = block_sum(s) / (float)C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float d = x[i] - mu;
        v += d * d;
    }
    *mean = mu;
    *rstd = 1.0f / sqrtf(block_sum(v) / (float)C + eps);
}

/* Maximum over the block, as block_sum. */
static __device__ __forceinline__ float block_max(float x) {
    __shared__ float part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    __syncthreads();
    return x;
}

// --- ops (the BackendOps slots; semantics in kernels/backend.h)

// matmul.cu
void cuda_matmul_fwd(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N);
// norm.cu
void cuda_rmsnorm_fwd(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                      int C);
void cuda_layernorm_fwd(Backend *be, float *out, const float *in, const float *w, const float *b,
                        float eps, int R, int C);
// attention.cu
void cuda_rope_fwd(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim);
void cuda_attention_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                        int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                        int window, const int32_t *kv_lo);
// elementwise.cu
void cuda_swiglu_fwd(Backend *be, float *out, const float *gate, const float *up, size_t n);
void cuda_gelu_fwd(Backend *be, float *out, const float *in, size_t n, int approx);
void cuda_add_fwd(Backend *be, float *out, const float *a, const float *b, size_t n);
void cuda_embed_fwd(Backend *be, float *out, const int32_t *ids, const float *table, int T, int C);
// backward.cu
void cuda_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                     const float *in, const float *w, int M, int K, int N);
void cuda_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                      const float *w, float eps, int R, int C);
void cuda_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                        const float *in, const float *w, float eps, int R, int C);
void cuda_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n, int acc);
void cuda_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                   int approx);
void cuda_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                    int C);
void cuda_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                       const int32_t *targets, int R, int V, float scale, float smooth,
                       XentWeight wt);
double cuda_sumsq(Backend *be, const float *x, size_t n);
void cuda_scale(Backend *be, float *x, size_t n, float s);
void cuda_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b, int R,
                    int N);
void cuda_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N);
void cuda_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed);
void cuda_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed);
void cuda_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
                float lr, float b1, float b2, float eps, float wd, float bc1, float bc2);
// attention.cu (backward)
void cuda_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim);
void cuda_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                        size_t kv_stride, int NH, int KVH, int HS, int window,
                        const int32_t *kv_lo);

#endif
