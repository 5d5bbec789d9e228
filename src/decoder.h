/* decoder.h: one decoder block, used by inference (src/model.c: prefill, batched decoding) and
 * training (src/model_train.c: the forward that keeps activations, and its recompute under
 * gradient checkpointing). The block is norm -> q/k/v projections -> q/k-norm (Qwen3) -> RoPE,
 * then (after the caller's attention, which reads a KV cache or a training batch) the output
 * projection, residual, norm, SwiGLU or GELU MLP and residual. Each linear layer goes through
 * the caller's DecoderLinear, which adds an unmerged adapter where one sits (inference's
 * ModelLora, training's LoRA modules with dropout) and, later, takes typed weights. The caller
 * says where every intermediate goes (DecoderQKV, DecoderMLP): inference reuses a few scratch
 * rows in place, training keeps each for the backward. Same ops in the same order either way,
 * so both compute bit-identical values from the same inputs. */
#ifndef TUNA_DECODER_H
#define TUNA_DECODER_H

#include <stdint.h>

#include "model.h"

/* out (M, N) = in (M, K) · Wᵀ + bias (bias may be NULL), plus the adapter at (layer l, site). */
typedef void (*DecoderLinear)(void *ctx, int l, LoraSite site, float *out, const float *in,
                              const float *W, const float *bias, int M, int K, int N);

/* The linear layers at sites[0..n) over one input (a layer's q, k and v; Ws, biases, Ns as
 * DecoderLinear's, per site): the same values as n DecoderLinear calls in order, for a caller
 * that shares work between them. */
typedef void (*DecoderLinearN)(void *ctx, int l, int n, const LoraSite *sites, float *const *outs,
                               const float *in, const float *const *Ws, const float *const *biases,
                               int M, int K, const int *Ns);

typedef struct Decoder {
    const Model *m; /* config, layer weights, RoPE frequencies, backend */
    DecoderLinear linear;
    DecoderLinearN linear_n; /* NULL: linear for each */
    void *ctx;               /* for linear and linear_n */
} Decoder;

/* Where the attention input of M rows goes. xn: norm(x_in). With q/k-norm the projections go to
 * q_raw and k_raw and their norms to q and k (q_raw == q, k_raw == k: in place); without, the
 * projections go to q and k directly (q_raw, k_raw unused). q and k are then rotated at pos (no
 * RoPE with learned positions). */
typedef struct DecoderQKV {
    float *xn, *q_raw, *q, *k_raw, *k, *v;
    const int32_t *pos;
} DecoderQKV;

void decoder_qkv(const Decoder *d, int l, int M, const float *x_in, const DecoderQKV *o);

/* The rest of the block from the attention output att: x_mid = x_in + att · Woᵀ, xn =
 * norm(x_mid), act = swiglu(gate, up) or gelu(up), x_out = x_mid + act · Wdownᵀ. tmp: M rows of
 * max(C) scratch. Buffers may alias where each value is dead before its buffer is rewritten
 * (inference: x_in == x_mid == x_out, act == gate). x_out NULL: stop after act (the recompute
 * of a checkpointed layer needs no more). */
typedef struct DecoderMLP {
    const float *att, *x_in;
    float *x_mid, *xn, *gate, *up, *act, *tmp, *x_out;
} DecoderMLP;

void decoder_out_mlp(const Decoder *d, int l, int M, const DecoderMLP *o);

/* out = RMSNorm or LayerNorm of in (R rows of C), with the model's norm and epsilon. */
void decoder_norm(const Model *m, float *out, const float *in, const float *w, const float *b,
                  int R);

#endif
