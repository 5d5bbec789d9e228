/* prompt_tuning.h: the encoders that make the virtual token embeddings of prompt tuning (PEFT
 * PROMPT_TUNING: the embedding itself) and P-tuning v1 (PEFT P_TUNING: an embedding through an
 * MLP, or a bidirectional LSTM and an MLP head), forward and backward, on the host.
 *
 * The encoder is tiny (P virtual tokens of D floats through a hidden size H), so it runs in
 * plain loops with double accumulators; the decoder around it (model_train.c) sees only its
 * output, (P, D) embeddings prepended to every row, and hands back their gradient. Parameters
 * are one float block laid out by a table of PEFT-named tensors, in PEFT's order, so saving and
 * the optimizer walk the table. Owns its host buffers; one thread at a time. */
#ifndef TUNA_SRC_PROMPT_TUNING_H
#define TUNA_SRC_PROMPT_TUNING_H

#include <stddef.h>
#include <stdint.h>

typedef enum { PROMPT_ENC_NONE, PROMPT_ENC_MLP, PROMPT_ENC_LSTM } PromptEncType;

#define PROMPT_ENC_MAX_LAYERS  4
#define PROMPT_ENC_MAX_TENSORS (1 + 8 * PROMPT_ENC_MAX_LAYERS + 6)

/* One parameter tensor of the encoder: its PEFT name (after "prompt_encoder.default."), where it
 * lies in the parameter block, and its shape. */
typedef struct PromptTensor {
    char name[64];
    size_t off, n;
    int ndim;
    int64_t shape[2];
    int decay; /* 0 for biases */
} PromptTensor;

typedef struct PromptEnc {
    PromptEncType type;
    int P, D, H, NL; /* virtual tokens, token dim, encoder_hidden_size, LSTM layers */
    int n_t;
    PromptTensor t[PROMPT_ENC_MAX_TENSORS];
    size_t n_params;
    float *w;    /* host copy of the parameters, (n_params) */
    float *out;  /* (P, D) the last forward's output */
    double *act; /* the forward's activations the backward reads */
    size_t n_act;
} PromptEnc;

/* Lays out the tensors of an encoder of P tokens of D floats (H and NL: MLP and LSTM only) and
 * allocates the host buffers. Returns 0, or -1 for sizes out of range. */
int prompt_enc_init(PromptEnc *e, PromptEncType type, int P, int D, int H, int NL);
void prompt_enc_free(PromptEnc *e);

/* PyTorch's initialisation into params (n_params): nn.Embedding N(0, 1), nn.Linear and nn.LSTM
 * U(-1/sqrt(fan), 1/sqrt(fan)), from the seeded sequence. */
void prompt_enc_init_params(const PromptEnc *e, float *params, uint64_t seed);

/* out (P, D) = the encoder of params (n_params floats, host), keeping its activations. */
void prompt_enc_fwd(PromptEnc *e, const float *params);
/* grads (n_params, host) += d out / d params · dout (P, D), for the last forward. */
void prompt_enc_bwd(PromptEnc *e, const float *dout, float *grads);

#endif
