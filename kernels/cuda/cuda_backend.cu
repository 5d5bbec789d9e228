/* cuda_backend.cu: device, stream, cuBLAS handle, error latching, memory ops and the vtable.
 * The ops themselves live in matmul.cu, norm.cu, attention.cu and elementwise.cu. */

#include "kernels/cuda/cuda_backend.h"

#include "kernels/cuda/common.cuh"

#include <stdlib.h>
#include <string.h>

// --- error latching

static int cuda_code_of(cudaError_t e) {
    return e == cudaErrorMemoryAllocation ? TUNA_ENOMEM : TUNA_EIO;
}

/* Keeps the failing call's name (up to its '(') so the message stays one short line. */
static int cuda_latch(Backend *be, int code, const char *expr, const char *file, int line,
                      const char *what, const char *detail) {
    if (be->err.code == 0) {
        tuna_errf(&be->err, code, "%s:%d: %.*s failed: %s (%s)", file, line,
                  (int)strcspn(expr, "("), expr, what, detail);
    }
    return be->err.code;
}

int cuda_check(Backend *be, cudaError_t e, const char *expr, const char *file, int line) {
    if (e == cudaSuccess) return 0;
    (void)cudaGetLastError(); /* clear a non-sticky error so it is not reported twice */
    return cuda_latch(be, cuda_code_of(e), expr, file, line, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

int cublas_check(Backend *be, cublasStatus_t s, const char *expr, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    return cuda_latch(be, s == CUBLAS_STATUS_ALLOC_FAILED ? TUNA_ENOMEM : TUNA_EIO, expr, file,
                      line, cublasGetStatusName(s), cublasGetStatusString(s));
}

CudaCtx *cuda_begin(Backend *be) {
    if (be->err.code != 0) return NULL;
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    /* The current device is per host thread, and init may run on another thread. */
    if (CUDA_TRY(be, cudaSetDevice(ctx->device))) return NULL;
    return ctx;
}

const int32_t *cuda_upload_i32(Backend *be, CudaCtx *ctx, const int32_t *host, size_t n) {
    if (n > ctx->scratch_cap) {
        size_t cap = n > 2 * ctx->scratch_cap ? n : 2 * ctx->scratch_cap;
        /* Earlier kernels may still read the old buffer. */
        if (CUDA_TRY(be, cudaStreamSynchronize(ctx->stream))) return NULL;
        if (CUDA_TRY(be, cudaFree(ctx->scratch_i32))) return NULL;
        ctx->scratch_i32 = NULL;
        ctx->scratch_cap = 0;
        if (CUDA_TRY(be, cudaMalloc((void **)&ctx->scratch_i32, cap * sizeof(int32_t)))) {
            return NULL;
        }
        ctx->scratch_cap = cap;
    }
    /* Stream order keeps earlier readers of the scratch ahead of this copy; the sync makes
     * the host array reusable on return whether it is pageable or pinned. */
    if (CUDA_TRY(be, cudaMemcpyAsync(ctx->scratch_i32, host, n * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, ctx->stream))) {
        return NULL;
    }
    if (CUDA_TRY(be, cudaStreamSynchronize(ctx->stream))) return NULL;
    return ctx->scratch_i32;
}

float *cuda_scratch_f(Backend *be, CudaCtx *ctx, size_t n) {
    if (n > ctx->scratch_f_cap) {
        size_t cap = n > 2 * ctx->scratch_f_cap ? n : 2 * ctx->scratch_f_cap;
        if (CUDA_TRY(be, cudaStreamSynchronize(ctx->stream))) return NULL; /* old readers */
        if (CUDA_TRY(be, cudaFree(ctx->scratch_f))) return NULL;
        ctx->scratch_f = NULL;
        ctx->scratch_f_cap = 0;
        if (CUDA_TRY(be, cudaMalloc((void **)&ctx->scratch_f, cap * sizeof(float)))) return NULL;
        ctx->scratch_f_cap = cap;
    }
    return ctx->scratch_f;
}

int cuda_refuse_bf16(Backend *be, int K, int N, const char *op) {
    if (!(K == 0 && N == 0 ? be->mm_bf16 : backend_mm_bf16(be, K, N))) return 0;
    if (!be->err.code)
        tuna_errf(&be->err, TUNA_EUNSUP,
                  "cuda: %s: bf16 products (--bf16) are not implemented on the cuda backend yet; "
                  "run without --bf16",
                  op);
    return 1;
}

// --- memory ops

/* cudaMalloc memory is at least 256-byte aligned. An out-of-memory failure returns NULL
 * without latching (the caller reports the size and may try something smaller); any other
 * failure is latched. */
static void *cuda_alloc(Backend *be, size_t bytes) {
    if (!cuda_begin(be)) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return NULL;
    }
    if (CUDA_TRY(be, e)) return NULL;
    return p;
}

static void cuda_release(Backend *be, void *p) {
    if (!p) return;
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    /* Free even after a latched error, so memory is not leaked; wait for readers first. */
    if (cudaSetDevice(ctx->device) != cudaSuccess) return;
    CUDA_TRY(be, cudaStreamSynchronize(ctx->stream));
    CUDA_TRY(be, cudaFree(p));
}

static void cuda_upload(Backend *be, void *dst, const void *host_src, size_t bytes) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || bytes == 0) return;
    if (CUDA_TRY(be, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx->stream))) {
        return;
    }
    /* The caller may free or rewrite host_src as soon as we return. */
    CUDA_TRY(be, cudaStreamSynchronize(ctx->stream));
}

static void cuda_download(Backend *be, void *host_dst, const void *src, size_t bytes) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || bytes == 0) return;
    if (CUDA_TRY(be, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream))) {
        return;
    }
    CUDA_TRY(be, cudaStreamSynchronize(ctx->stream));
}

static void cuda_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || bytes == 0 || dst == src) return;
    CUDA_TRY(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream));
}

static void cuda_zero(Backend *be, void *dst, size_t bytes) {
    CudaCtx *ctx = cuda_begin(be);
    if (!ctx || !bytes) return;
    CUDA_TRY(be, cudaMemsetAsync(dst, 0, bytes, ctx->stream));
}

static int cuda_sync(Backend *be) {
    CudaCtx *ctx = cuda_begin(be);
    if (ctx) CUDA_TRY(be, cudaStreamSynchronize(ctx->stream));
    return be->err.code;
}

// --- vtable

static void cuda_shutdown(Backend *be);

static const BackendOps cuda_ops = {
        .name = "cuda",
        .host_memory = 0,
        .alloc = cuda_alloc,
        .release = cuda_release,
        .upload = cuda_upload,
        .download = cuda_download,
        .copy = cuda_copy,
        .zero = cuda_zero,
        .sync = cuda_sync,
        .shutdown = cuda_shutdown,
        .matmul_fwd = cuda_matmul_fwd,
        .matmul_acc = nullptr, /* optional: callers do matmul_fwd + add_fwd */
        .rmsnorm_fwd = cuda_rmsnorm_fwd,
        .layernorm_fwd = cuda_layernorm_fwd,
        .rope_fwd = cuda_rope_fwd,
        .attention_fwd = cuda_attention_fwd,
        .swiglu_fwd = cuda_swiglu_fwd,
        .gelu_fwd = cuda_gelu_fwd,
        .add_fwd = cuda_add_fwd,
        .embed_fwd = cuda_embed_fwd,
        /* training (fp32; NOT YET RUN ON A DEVICE: scripts/gpu-check.sh checks them) */
        .matmul_bwd = cuda_matmul_bwd,
        .rmsnorm_bwd = cuda_rmsnorm_bwd,
        .layernorm_bwd = cuda_layernorm_bwd,
        .rope_bwd = cuda_rope_bwd,
        .attention_bwd = cuda_attention_bwd,
        .swiglu_bwd = cuda_swiglu_bwd,
        .gelu_bwd = cuda_gelu_bwd,
        .embed_bwd = cuda_embed_bwd,
        .xent_fwd_bwd = cuda_xent_fwd_bwd,
        .logit_stats = nullptr, /* optional: no logits/entropy metrics on this backend yet */
        .sumsq = cuda_sumsq,
        .scale = cuda_scale,
        .col_scale = cuda_col_scale,
        .col_dot = cuda_col_dot,
        .dropout = cuda_dropout,
        .noise_add = cuda_noise_add,
        .adamw = cuda_adamw,
        .matmul_w_fwd = nullptr, /* typed weights: issue 14 */
        .matmul_w_bwd_in = nullptr,
        .embed_w_fwd = nullptr,
        .matmul_w_fwd_n = nullptr, /* the engine loops matmul_w_fwd */
        .kv_store = nullptr,       /* --cache-type f16 / q8_0: refused on cuda in one line */
        .attention_fwd_kv = nullptr,
        .matmul_bwd_dw = nullptr,   /* the engine zeroes and accumulates */
        .weight_track = nullptr,    /* products read the weights as they are */
        .weights_written = nullptr, /* nor copies to mark stale */
        .set_threads = nullptr,     /* no host threads do work here */
};

// --- lifetime

extern "C" Backend *cuda_backend_init(int n_threads, TunaErr *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        /* With no driver at all, CUDA also says "insufficient driver": name both causes. */
        const char *hint = e == cudaErrorInsufficientDriver
                                   ? "; no NVIDIA driver, or one older than this CUDA runtime"
                                   : "";
        tuna_errf(err, TUNA_EUNSUP, "no CUDA device: cudaGetDeviceCount returned %s (%s%s)",
                  cudaGetErrorName(e), cudaGetErrorString(e), hint);
        return NULL;
    }
    if (n == 0) {
        tuna_errf(err, TUNA_EUNSUP, "no CUDA device: cudaGetDeviceCount returned 0 devices");
        return NULL;
    }

    Backend *be = (Backend *)calloc(1, sizeof *be);
    CudaCtx *ctx = (CudaCtx *)calloc(1, sizeof *ctx);
    if (!be || !ctx) {
        free(be);
        free(ctx);
        tuna_errf(err, TUNA_ENOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    be->ops = &cuda_ops;
    be->ctx = ctx;
    be->n_threads = n_threads;

    /* The device current on this thread (0 unless the caller chose; CUDA_VISIBLE_DEVICES
     * picks among physical ones). */
    if (CUDA_TRY(be, cudaGetDevice(&ctx->device))) goto fail;
    if (CUDA_TRY(be, cudaSetDevice(ctx->device))) goto fail;
    if (CUDA_TRY(be, cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking))) goto fail;
    if (CUBLAS_TRY(be, cublasCreate(&ctx->cublas))) goto fail;
    if (CUBLAS_TRY(be, cublasSetStream(ctx->cublas, ctx->stream))) goto fail;
    /* Full fp32 sgemm: the default math mode, stated so that TF32 is a deliberate choice. */
    if (CUBLAS_TRY(be, cublasSetMathMode(ctx->cublas, CUBLAS_DEFAULT_MATH))) goto fail;
    return be;

fail:
    if (err) *err = be->err;
    cuda_shutdown(be);
    free(be);
    return NULL;
}

/* The shutdown slot: frees the device resources and the context; backend_free frees be. */
static void cuda_shutdown(Backend *be) {
    CudaCtx *ctx = (CudaCtx *)be->ctx;
    if (!ctx) return;
    /* Best effort: frees never fail, and errors here have nowhere to go. */
    if (cudaSetDevice(ctx->device) == cudaSuccess) {
        if (ctx->stream) (void)cudaStreamSynchronize(ctx->stream);
        if (ctx->scratch_i32) (void)cudaFree(ctx->scratch_i32);
        if (ctx->scratch_f) (void)cudaFree(ctx->scratch_f);
        if (ctx->partial) (void)cudaFree(ctx->partial);
        if (ctx->partial_host) (void)cudaFreeHost(ctx->partial_host);
        if (ctx->cublas) (void)cublasDestroy(ctx->cublas);
        if (ctx->stream) (void)cudaStreamDestroy(ctx->stream);
    }
    (void)cudaGetLastError();
    free(ctx);
    be->ctx = NULL;
}
