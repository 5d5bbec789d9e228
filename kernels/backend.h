/* backend.h: the one interface between the engine and its compute kernels.
 *
 * A Backend is a table of ops (BackendOps) plus a private context. Three implementations:
 * "ref" (kernels/ref: plain loops, the test oracle), "cpu" (kernels/cpu: OpenBLAS + OpenMP)
 * and "cuda" (kernels/cuda: cuBLAS, compiled when nvcc is present, usable when a device is).
 * Buffers passed to ops are backend memory from ->alloc; host data enters and leaves only
 * through ->upload / ->download. All tensors are float32, row-major, contiguous.
 * Ops return void and overwrite their output (=) unless their comment says (+=); a backend
 * that fails (device error) latches the first error in be->err, reported by ->sync.
 * A Backend is used by one thread at a time (the worker that owns the model). */
#ifndef TUNA_KERNELS_BACKEND_H
#define TUNA_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../src/err.h"
#include "wtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct Backend Backend;

/* A per-row weight of the cross-entropy loss (xent_fwd_bwd), held constant in the gradient. */
typedef enum { XENT_W_NONE, XENT_W_DFT, XENT_W_EAFT } XentWeightKind;
typedef struct XentWeight {
    XentWeightKind kind;
    float alpha; /* XENT_W_EAFT's power */
} XentWeight;
#define XENT_PLAIN ((XentWeight){XENT_W_NONE, 0.0f})

typedef struct BackendOps {
    const char *name;
    int host_memory; /* 1: buffers are plain host memory that the engine may also write directly */

    // --- memory
    void *(*alloc)(Backend *be, size_t bytes); /* NULL on failure; 64-byte aligned */
    void (*release)(Backend *be, void *p);     /* NULL-safe */
    void (*upload)(Backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(Backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(Backend *be, void *dst, const void *src, size_t bytes); /* device to device */
    /* bytes of dst set to zero (the gradients that the backward ops accumulate into). Training
     * needs it; inference does not. */
    void (*zero)(Backend *be, void *dst, size_t bytes);
    int (*sync)(Backend *be);      /* waits for queued work; returns 0 or the latched error code */
    void (*shutdown)(Backend *be); /* optional (NULL): frees be->ctx; backend_free frees be */

    // --- forward ops
    /* out (M,N) = in (M,K) · w (N,K)ᵀ + bias (N) (bias may be NULL). HF Linear layout. */
    void (*matmul_fwd)(Backend *be, float *out, const float *in, const float *w, const float *bias,
                       int M, int K, int N);
    /* out (M,N) += in (M,K) · w (N,K)ᵀ: matmul_fwd into scratch and add_fwd, as one product
     * (a LoRA adapter's u·Bᵀ onto the base layer's output: no scratch pass, no add pass).
     * Optional: NULL where a backend has none, and callers then do the two ops. */
    void (*matmul_acc)(Backend *be, float *out, const float *in, const float *w, int M, int K,
                       int N);
    /* out (R,C) = in (R,C) / rms(in row) * w (C). out may alias in. */
    void (*rmsnorm_fwd)(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                        int C);
    /* out (R,C) = (in - mean) / std * w (C) + b (C). out may alias in. */
    void (*layernorm_fwd)(Backend *be, float *out, const float *in, const float *w, const float *b,
                          float eps, int R, int C);
    /* In place on x (T, NH, HS): rotary embedding in HF's rotate_half layout over the first
     * rot_dim dims of each head; token t has position pos[t]; inv_freq (rot_dim/2). */
    void (*rope_fwd)(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T,
                     int NH, int HS, int rot_dim);
    /* Causal grouped-query attention. q (B,Tq,NH,HS), k and v (B,Tk,KVH,HS), out (B,Tq,NH,HS).
     * Query t of a batch row is at position Tk-Tq+t and attends to keys 0..that position
     * (and, if window > 0, only to the last `window` of them). Scale 1/sqrt(HS).
     * kv_stride is the distance in floats between batch rows of k and v (>= Tk*KVH*HS), so a
     * KV cache larger than Tk can be passed in place. kv_lo (B*Tq, host memory) or NULL: query
     * t of row b also sees no key before kv_lo[b*Tq+t] (neat packing keeps each example of a
     * packed row to itself); kernels/ref/attn_span.h is the rule every backend applies. */
    void (*attention_fwd)(Backend *be, float *out, const float *q, const float *k, const float *v,
                          int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                          int window, const int32_t *kv_lo);
    /* out (n) = silu(gate) * up. out may alias gate or up. */
    void (*swiglu_fwd)(Backend *be, float *out, const float *gate, const float *up, size_t n);
    /* out (n) = gelu(in): tanh approximation when approx (GPT-2's gelu_new), erf otherwise.
     * out may alias in. */
    void (*gelu_fwd)(Backend *be, float *out, const float *in, size_t n, int approx);
    /* out (n) = a + b. out may alias a or b. */
    void (*add_fwd)(Backend *be, float *out, const float *a, const float *b, size_t n);
    /* out (T,C) = table (V,C) rows ids (T). ids are host memory, already range-checked. */
    void (*embed_fwd)(Backend *be, float *out, const int32_t *ids, const float *table, int T,
                      int C);

    // --- backward ops. Every gradient output ACCUMULATES (+=); the caller zeroes it first. An op
    // with an `acc` argument overwrites its input gradients instead when acc is 0 (=: what
    // was there is not read), for the first of a buffer's writers (a zeroing pass saved).
    // A gradient pointer may be NULL when that gradient is not needed (frozen weights, the
    // input of the first layer); the op then skips that work.
    /* Of matmul_fwd: din (M,K) += dout (M,N) · w (N,K); dw (N,K) += doutᵀ · in;
     * dbias (N) += column sums of dout. */
    void (*matmul_bwd)(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                       const float *in, const float *w, int M, int K, int N);
    /* Of rmsnorm_fwd: din (R,C) +=, dw (C) +=, recomputing the row statistics from in. */
    void (*rmsnorm_bwd)(Backend *be, float *din, float *dw, const float *dout, const float *in,
                        const float *w, float eps, int R, int C);
    /* Of layernorm_fwd: din (R,C) +=, dw (C) +=, db (C) +=. */
    void (*layernorm_bwd)(Backend *be, float *din, float *dw, float *db, const float *dout,
                          const float *in, const float *w, float eps, int R, int C);
    /* Of rope_fwd, in place on dx (T,NH,HS): rotates by the opposite angle (= is fine here:
     * the op maps the gradient w.r.t. its output to the gradient w.r.t. its input). */
    void (*rope_bwd)(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T,
                     int NH, int HS, int rot_dim);
    /* Of attention_fwd (same shapes, kv_stride, window and kv_lo; the probabilities are
     * recomputed from q, k): dq (B,Tq,NH,HS) +=, dk and dv (B,Tk,KVH,HS, rows kv_stride
     * apart) +=. */
    void (*attention_bwd)(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                          const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                          size_t kv_stride, int NH, int KVH, int HS, int window,
                          const int32_t *kv_lo);
    /* Of swiglu_fwd: dgate (n) +=, dup (n) += (acc 0: =). */
    void (*swiglu_bwd)(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                       const float *up, size_t n, int acc);
    /* Of gelu_fwd: din (n) +=. */
    void (*gelu_bwd)(Backend *be, float *din, const float *dout, const float *in, size_t n,
                     int approx);
    /* Of embed_fwd: dtable rows ids (T) += dout (T,C). ids are host memory. */
    void (*embed_bwd)(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                      int C);

    // --- loss and optimizer
    /* Softmax cross-entropy over logits (R,V) with targets (R) (host memory; -100 = ignore).
     * losses (R, host memory) = -log p[target] (0 for ignored rows). If dlogits is not NULL it
     * is OVERWRITTEN (=) with (softmax - onehot(target)) * scale (0 rows for ignored targets);
     * dlogits may alias logits. smooth e > 0 is Hugging Face's label smoothing (LabelSmoother):
     * losses = (1 - e) (-log p[target]) + e (-Σ log p) / V, dlogits = (softmax - (1 - e)
     * onehot - e / V) * scale; e = 0 is the plain loss, bit for bit. wt (with e = 0): a weight
     * w of each row, held constant: losses = w (-log p[target]), dlogits = w (softmax - onehot)
     * * scale; LLaMA-Factory's DFT loss (XENT_W_DFT): w = p[target]; its EAFT loss
     * (XENT_W_EAFT): w = (H / 3)^alpha, H the entropy of the softmax over the row's 20 largest
     * logits (V >= 20; optional: a backend without it latches TUNA_EUNSUP); XENT_PLAIN is the
     * plain loss, bit for bit. */
    void (*xent_fwd_bwd)(Backend *be, float *dlogits, float *losses, const float *logits,
                         const int32_t *targets, int R, int V, float scale, float smooth,
                         XentWeight wt);
    /* Statistics of each row of logits (R,V) with targets (R, host memory), for the metrics
     * TRL's preference trainers log: stats (R x 3, HOST memory) = the row's mean logit
     * (Σ z / V), its softmax's entropy (log Σ e^z - Σ softmax(z)·z) and 1 when the target is the
     * first index of the row's largest logit (TRL's is_top1), else 0; a target outside [0, V)
     * gives {0, 0, 0}. Optional: NULL, and the engine logs no such metric. */
    void (*logit_stats)(Backend *be, float *stats, const float *logits, const int32_t *targets,
                        int R, int V);
    /* Sum of squares of x (n), returned to the host (for the global grad norm). */
    double (*sumsq)(Backend *be, const float *x, size_t n);
    /* x (n) *= s. */
    void (*scale)(Backend *be, float *x, size_t n, float s);
    /* Per-column scale and shift of R rows of N (DoRA's magnitude, then the layer's bias):
     * out[t,o] = a[o] * in[t,o] + b[o]; b NULL: + 0. a, b (N): backend memory. out may alias
     * in. */
    void (*col_scale)(Backend *be, float *out, const float *in, const float *a, const float *b,
                      int R, int N);
    /* Per-column dot products over R rows of N: acc[o] (N, HOST memory) += Σ_t x[t,o]·y[t,o],
     * each column summed in double in row order (the same bits whatever the threads). */
    void (*col_dot)(Backend *be, double *acc, const float *x, const float *y, int R, int N);
    /* out (n) = in * mask / (1 - p), where mask[i] = hash(seed, i) >= p: the same seed gives the
     * same mask, so the backward applies this very op to the gradient. out may alias in. */
    void (*dropout)(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed);
    /* x (n) += (2u - 1) * mag, with u = tuna_dropout_u(tuna_dropout_key(seed), i): uniform noise
     * on [-mag, mag) (NEFTune's, on the token embeddings while training), the same for a seed on
     * every backend: 2u - 1 is exact, then one rounded product and one rounded sum
     * (kernels/ref/ops_hash.h: tuna_noise). */
    void (*noise_add)(Backend *be, float *x, size_t n, float mag, uint64_t seed);
    /* AdamW step on n parameters (PyTorch semantics, decoupled weight decay), on the gradient
     * g * gscale (the global-norm clip factor, 1 for none; g itself is not written):
     * p -= lr * wd * p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g²;
     * p -= lr * (m / bc1) / (sqrt(v / bc2) + eps), with bc1 = 1 - b1^t, bc2 = 1 - b2^t. */
    void (*adamw)(Backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
                  float lr, float b1, float b2, float eps, float wd, float bc1, float bc2);

    // --- typed weights (kernels/wtype.h): a frozen weight in any WType, host memory for now.
    // Optional until the engine uses them (BACKEND_NEED_WTYPES); the cuda backend leaves them NULL.
    /* out (M, w->rows) = in (M, w->cols) · Wᵀ + bias (w->rows) (bias may be NULL). */
    void (*matmul_w_fwd)(Backend *be, float *out, const float *in, const Weight *w,
                         const float *bias, int M);
    /* Of matmul_w_fwd, the input gradient only (W is frozen): din (M, w->cols) += dout
     * (M, w->rows) · W (acc 0: =). */
    void (*matmul_w_bwd_in)(Backend *be, float *din, const float *dout, const Weight *w, int M,
                            int acc);
    /* out (T, table->cols) = rows ids (T, host memory) of the typed table, in fp32 (each row
     * exactly weight_dequantize_rows's). A frozen token embedding kept in its stored type. */
    void (*embed_w_fwd)(Backend *be, float *out, const int32_t *ids, const Weight *table, int T);
    /* matmul_w_fwd of n weights (their cols equal) over one input, outs[i] from ws[i] and
     * biases[i] (biases or an entry NULL: none): the same values as n matmul_w_fwd calls in
     * order, for a backend that shares the work on the input (a layer's q, k and v). Optional:
     * backend_matmul_w_fwd_n loops where it is NULL. */
    void (*matmul_w_fwd_n)(Backend *be, int n, float *const *outs, const float *in,
                           const Weight *const *ws, const float *const *biases, int M);

    /* A typed KV cache (--cache-type f16 | q8_0: half or 34/128 of fp32's bytes; llama.cpp's
     * cache types), t one of kv_type_ok's. Positions (element counts: kv_stride, rows) are in
     * elements; an element e of a cache starts at byte wtype_row_bytes(t, e), so they are whole
     * blocks (Q8_0: HS a multiple of 32).
     * kv_store: dst (n, a multiple of the block) = src in t's blocks, wtype_info[t].quant_row's
     * bits; a value past t's range (f16: |x| >= 65520; Q8_0's f16 scales: |x| >= 65520 * 127)
     * sets be->err (backend_kv_range).
     * attention_fwd_kv: attention_fwd with k and v (B, Tk, KVH, HS; kv_stride apart) of type t:
     * the results of attention_fwd over k and v dequantized to fp32 (dequant_row's values:
     * backend_attention_kv_widened does just that). Optional (BACKEND_NEED_KV_TYPED); the cuda
     * backend leaves them NULL. */
    void (*kv_store)(Backend *be, WType t, void *dst, const float *src, size_t n);
    void (*attention_fwd_kv)(Backend *be, WType t, float *out, const float *q, const void *k,
                             const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                             int KVH, int HS, int window, const int32_t *kv_lo);

    /* matmul_bwd's weight gradient, overwriting: dw (N,K) = doutᵀ · in, the bits of zeroing dw
     * and matmul_bwd's dw += (a gradient a step has not written yet: no zeroing pass, and the
     * product need not read dw); and din (or NULL) += dout · w (N,K) as matmul_bwd's, in the same
     * call so that a backend may share the work on dout (the cpu's AMX path packs it once).
     * sumsq (or NULL): *sumsq = Σ dw², in double or from fp32 partials of at most 32 squares
     * (within 2e-6 relative of an exact sum), summed in an order that depends on the shape alone
     * (a part of the gradient norm without a pass over dw later). Optional (NULL: the engine zeroes dw and runs matmul_bwd). */
    void (*matmul_bwd_dw)(Backend *be, float *din, float *dw, const float *dout, const float *in,
                          const float *w, int M, int K, int N, double *sumsq);

    // --- optional: copies of trainable weights in the products' form (NULL where a backend
    // keeps none; the products then read the weights as they are)
    /* w (rows x cols, backend memory) is a trainable matrix of matmul_fwd / matmul_bwd products
     * (as their w, N = rows, K = cols), written from now on only by adamw passes that each
     * cover it whole, by this backend's upload, copy and zero, or else reported with
     * weights_written. The backend may keep a copy of it in the form its products read (the
     * cpu backend under mm_bf16: bf16 panels), which each adamw pass over w refreshes as it
     * writes w; products read a copy only while it holds w's values, so the results are those
     * without it, bit for bit. rows 0: w is no longer tracked, its copy freed (before w is). */
    void (*weight_track)(Backend *be, const float *w, int rows, int cols);
    /* p[0..n) was written other than by adamw and this backend's memory ops (a collective, the
     * host): copies of tracked weights there are stale until the next adamw pass over them. */
    void (*weights_written)(Backend *be, const float *p, size_t n);

    // --- optional
    /* Resolves n_threads as backend_init does (N, 0, BACKEND_THREADS_IDLE) into be->n_threads.
     * NULL: the backend has no host threads to size. */
    void (*set_threads)(Backend *be, int n_threads);
} BackendOps;

struct Backend {
    const BackendOps *ops;
    void *ctx;
    int n_threads;
    /* Matrix-product precision, torch.autocast's: 0 fp32; 1 bf16, where matmul_fwd, matmul_bwd,
     * matmul_w_fwd and matmul_w_bwd_in round both operands to bf16 (to nearest even) and
     * accumulate in fp32 (outputs stay fp32; LoRA rank-side products excepted: MM_BF16_MIN_SIDE).
     * attention_fwd and attention_bwd then run their products in bf16 as torch's bf16 SDPA does
     * (q, k, v, dout and the probabilities and score gradients rounded; fp32 sums and softmax;
     * kernels/ref ref_attention_fwd_bf16 is the rule; the cuda backend does not read the flag yet).
     * The engine sets it (a --bf16 run); a backend
     * without bf16 kernels rounds and runs its fp32 ones, which gives the same products. */
    int mm_bf16;
    TunaErr err;
};

/* Under mm_bf16, a matmul_fwd / matmul_bwd whose K or N is at most MM_BF16_MIN_SIDE runs in fp32
 * all the same: that is LoRA's rank side (x·Aᵀ, its gradients, and the products into the rank),
 * where rounding the long operand to bf16 costs more than the product itself (6% of a SmolLM2
 * LoRA --bf16 step) and fp32 is the more exact. Every backend applies this one rule. */
#define MM_BF16_MIN_SIDE 16
static inline int backend_mm_bf16(const Backend *be, int K, int N) {
    return be->mm_bf16 && K > MM_BF16_MIN_SIDE && N > MM_BF16_MIN_SIDE;
}

/* n_threads for backend_init: the cores that other processes are not keeping busy right now
 * (at least one). For generation next to a running `tuna train`: two OpenMP teams spinning on
 * the same cores made decoding 100x slower, while one thread beside the run keeps most of
 * its speed. Decoding gives the same result for any thread count. */
#define BACKEND_THREADS_IDLE (-1)

/* Returns a backend by name: "ref", "cpu" or "cuda". n_threads 0 means all cores,
 * BACKEND_THREADS_IDLE the idle ones (the cpu backend; the others ignore it).
 * The caller owns it and frees it with backend_free. NULL and err set when the name is
 * unknown or the backend cannot start here (no CUDA device, say). */
Backend *backend_init(const char *name, int n_threads, TunaErr *err);
void backend_free(Backend *be);

/* out (M,N) += in (M,K) · w (N,K)ᵀ: the backend's matmul_acc, or where it has none matmul_fwd
 * into scratch (M x N floats of backend memory, not out) and add_fwd */
void backend_matmul_acc(Backend *be, float *out, const float *in, const float *w, int M, int K,
                        int N, float *scratch);

/* The backend's matmul_w_fwd_n, or n matmul_w_fwd calls where it has none */
void backend_matmul_w_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                            const Weight *const *ws, const float *const *biases, int M);

/* The KV cache types (--cache-type): F32, F16 and Q8_0; 1 when t is one, for heads of HS (its
 * blocks whole in a head), else 0 */
int kv_type_ok(WType t, int HS);
/* --cache-type's name of a KV cache type ("f32", "f16", "q8_0"; "?" for others), and back (-1
 * for a name that is none of them) */
const char *kv_type_name(WType t);
int kv_type_by_name(const char *name);

/* attention_fwd_kv for a backend in host memory: k and v's rows 0 .. Tk-1 of each batch row
 * dequantized to fp32 (by widen: n elements of type t from src, whole blocks, exactly
 * dequant_row's values; NULL: wtype_info[t].dequant_row), then be's attention_fwd over them.
 * Sets be->err when out of memory. */
void backend_attention_kv_widened(Backend *be, WType t, float *out, const float *q, const void *k,
                                  const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                                  int KVH, int HS, int window, const int32_t *kv_lo,
                                  void (*widen)(float *dst, const void *src, size_t n, WType t));

/* kv_store's range check over the n values of src it stored in type t: where one is past t's
 * range (infinite once stored), be->err names it (unless be->err is already set) */
void backend_kv_range(Backend *be, WType t, const float *src, size_t n);

/* Bytes the backend called name keeps beside bf16_bytes of frozen BF16 weights when mm_bf16
 * runs their products (the cpu backend's packed copies: cpu_backend.h, CPU_PACK_MB), for
 * memory estimates. 0 for the others. */
size_t backend_bf16_extra_bytes(const char *name, size_t bf16_bytes);

/* Re-decides be's thread count (n_threads as for backend_init). A long-lived session calls it
 * before each piece of work: a chat asks for BACKEND_THREADS_IDLE before every reply, as a
 * training run may have started or ended since the last one. */
void backend_set_threads(Backend *be, int n_threads);

/* What a command needs of a backend: the slots inference uses (memory, every forward op), and
 * those training adds (every backward op, cross-entropy, sum of squares, scale, dropout,
 * AdamW). */
#define BACKEND_NEED_INFER 1u
#define BACKEND_NEED_TRAIN 2u
/* The typed-weight ops (matmul_w_fwd, matmul_w_bwd_in, embed_w_fwd). */
#define BACKEND_NEED_WTYPES 4u
/* A typed KV cache (kv_store, attention_fwd_kv). */
#define BACKEND_NEED_KV_TYPED 8u
/* The name of the first slot that `need` uses and ops leaves NULL, or NULL when all are there. */
const char *backend_missing(const BackendOps *ops, unsigned need);

/* Names of the backends compiled into this binary, comma-separated. */
const char *backend_list(void);

#ifdef __cplusplus
}
#endif

#endif
