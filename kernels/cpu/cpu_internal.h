/* cpu_internal.h: what the CPU backend's files share: the parallel threshold and the
 * backward, loss and optimizer ops of kernels/cpu/backward.c, which cpu_backend.c puts into
 * its BackendOps table. Each op has the semantics of its slot in kernels/backend.h.
 * Not part of the backend interface; include only from the files in kernels/cpu. */
#ifndef TUNA_KERNELS_CPU_CPU_INTERNAL_H
#define TUNA_KERNELS_CPU_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"

/* Below this many multiply-adds an op stays on the calling thread. */
#define PAR_MIN_WORK 32768

void cpu_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                    const float *in, const float *w, int M, int K, int N);
void cpu_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                     const float *w, float eps, int R, int C);
void cpu_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                       const float *in, const float *w, float eps, int R, int C);
void cpu_rope_rotate(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T,
                     int NH, int HS, int rot_dim, float sign);
void cpu_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T, int NH,
                  int HS, int rot_dim);
void cpu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                       const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                       size_t kv_stride, int NH, int KVH, int HS, int window);
void cpu_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n);
void cpu_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                  int approx);
void cpu_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T, int C);
void cpu_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                      const int32_t *targets, int R, int V, float scale);
double cpu_sumsq(Backend *be, const float *x, size_t n);
void cpu_scale(Backend *be, float *x, size_t n, float s);
void cpu_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed);
void cpu_adamw(Backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
               float b1, float b2, float eps, float wd, float bc1, float bc2);

/* attention_gemm.c: the sgemm path for query blocks of at least ATTN_GEMM_MIN_TQ rows.
 * Return 0, or -1 when scratch memory could not be had (nothing is written then... except
 * by threads that did get theirs: the caller latches TUNA_ENOMEM). */
#define ATTN_GEMM_MIN_TQ 32
int cpu_attention_gemm_fwd(Backend *be, float *out, const float *q, const float *k,
                           const float *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                           int KVH, int HS, int window);
int cpu_attention_gemm_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                           size_t kv_stride, int NH, int KVH, int HS, int window);

#endif
