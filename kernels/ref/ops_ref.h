/* ops_ref.h: the plain-loop reference of every op (the test oracle, and `--backend ref`).
 * Each function has the semantics documented at its BackendOps slot in kernels/backend.h,
 * without the Backend argument, single-threaded, with double accumulators where a sum
 * spans a row. The CPU backend falls back to these for shapes it does not special-case. */
#ifndef TUNA_KERNELS_REF_OPS_REF_H
#define TUNA_KERNELS_REF_OPS_REF_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"

void ref_matmul_fwd(float *out, const float *in, const float *w, const float *bias, int M, int K,
                    int N);
void ref_rmsnorm_fwd(float *out, const float *in, const float *w, float eps, int R, int C);
void ref_layernorm_fwd(float *out, const float *in, const float *w, const float *b, float eps,
                       int R, int C);
void ref_rope_fwd(float *x, const int32_t *pos, const float *inv_freq, int T, int NH, int HS,
                  int rot_dim);
void ref_attention_fwd(float *out, const float *q, const float *k, const float *v, int B, int Tq,
                       int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                       const int32_t *kv_lo);
void ref_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void ref_gelu_fwd(float *out, const float *in, size_t n, int approx);
void ref_add_fwd(float *out, const float *a, const float *b, size_t n);
void ref_embed_fwd(float *out, const int32_t *ids, const float *table, int T, int C);
/* out (T, table->cols) = rows ids of the typed table in fp32 (weight_dequantize_rows). */
void ref_embed_w_fwd(float *out, const int32_t *ids, const Weight *table, int T);

/* Backward ops: every gradient output accumulates (+=); a NULL gradient pointer skips it. */
void ref_matmul_bwd(float *din, float *dw, float *dbias, const float *dout, const float *in,
                    const float *w, int M, int K, int N);
void ref_rmsnorm_bwd(float *din, float *dw, const float *dout, const float *in, const float *w,
                     float eps, int R, int C);
void ref_layernorm_bwd(float *din, float *dw, float *db, const float *dout, const float *in,
                       const float *w, float eps, int R, int C);
void ref_rope_bwd(float *dx, const int32_t *pos, const float *inv_freq, int T, int NH, int HS,
                  int rot_dim);
void ref_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, int B, int Tq, int Tk, size_t kv_stride,
                       int NH, int KVH, int HS, int window, const int32_t *kv_lo);
/* Attention as under Backend.mm_bf16 (torch's bf16 SDPA): q, k, v (and dout) already rounded to
 * bf16 by the caller; the probabilities P and the score gradients (scaled by 1/sqrt(HS)) are
 * rounded to bf16 before their products; sums exact (double), softmax unrounded. Shapes and
 * semantics otherwise as ref_attention_fwd / ref_attention_bwd. */
void ref_attention_fwd_bf16(float *out, const float *q, const float *k, const float *v, int B,
                            int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                            const int32_t *kv_lo);
void ref_attention_bwd_bf16(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, int B, int Tq, int Tk, size_t kv_stride,
                            int NH, int KVH, int HS, int window, const int32_t *kv_lo);
void ref_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                    size_t n);
void ref_gelu_bwd(float *din, const float *dout, const float *in, size_t n, int approx);
void ref_embed_bwd(float *dtable, const float *dout, const int32_t *ids, int T, int C);

/* Loss and optimizer. ref_xent_fwd_bwd returns the number of rows whose target is neither
 * -100 nor in [0, V): those rows are treated as ignored, and the backend latches TUNA_EINVAL. */
int ref_xent_fwd_bwd(float *dlogits, float *losses, const float *logits, const int32_t *targets,
                     int R, int V, float scale, float smooth, XentWeight wt);
double ref_sumsq(const float *x, size_t n);
void ref_scale(float *x, size_t n, float s);
void ref_col_scale(float *out, const float *in, const float *a, const float *b, int R, int N);
void ref_col_dot(double *acc, const float *x, const float *y, int R, int N);
void ref_logit_stats(float *stats, const float *logits, const int32_t *targets, int R, int V);
void ref_dropout(float *out, const float *in, size_t n, float p, uint64_t seed);
void ref_noise_add(float *x, size_t n, float mag, uint64_t seed);
void ref_adamw(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr,
               float b1, float b2, float eps, float wd, float bc1, float bc2);

Backend *ref_backend_init(int n_threads, TunaErr *err);
/* Host-memory helpers shared by the ref and CPU backends. */
void *host_alloc(Backend *be, size_t bytes);
void host_release(Backend *be, void *p);
void host_memcpy(Backend *be, void *dst, const void *src, size_t bytes);
void host_zero(Backend *be, void *dst, size_t bytes);
int host_sync(Backend *be);

#endif
