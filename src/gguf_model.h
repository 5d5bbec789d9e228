/* gguf_model.h: a GGUF file as a tuna model: its metadata read into a ModelConfig, and its
 * tensor names and layouts mapped onto the Hugging Face names model.c's parameter table uses.
 *
 * Metadata: general.architecture (llama, mistral, qwen2, qwen3, gpt2) and the {arch}.* keys.
 * A key that changes the computation and that tuna does not implement (softcapping, experts,
 * unknown rope scaling, ...) or does not know is a one-line error naming the key and file.
 * Tensors: GGUF dims are innermost first, so ne = [576, 49152] is HF's [49152, 576]; llama.cpp
 * permutes the rows of q and k for LLaMA-style RoPE (llama, mistral), which the loader undoes,
 * and stores GPT-2's Conv1D weights transposed, which the loader transposes back. */
#ifndef TUNA_SRC_GGUF_MODEL_H
#define TUNA_SRC_GGUF_MODEL_H

#include <stddef.h>

#include "config.h"
#include "err.h"
#include "gguf.h"

/* ModelConfig from an open GGUF (generation defaults as HF's). */
int gguf_config_from(const Gguf *g, ModelConfig *cfg, TunaErr *err);
/* Opens path (a .gguf file) and reads its config. */
int gguf_config_load(const char *path, ModelConfig *cfg, TunaErr *err);

/* How a GGUF tensor becomes the HF tensor: rows un-permuted for q (heads NH) or k (heads KVH),
 * or the matrix transposed (GPT-2's Conv1D weights). */
typedef enum { GGUF_X_NONE, GGUF_X_UNPERMUTE, GGUF_X_TRANSPOSE } GgufXform;

/* The GGUF tensor name for an HF tensor name of cfg's architecture, and what to do to it
 * (*heads: the head count for GGUF_X_UNPERMUTE). Returns 0, or -1 for a name with no GGUF
 * counterpart. */
int gguf_name_for(const ModelConfig *cfg, const char *hf, char *out, size_t cap, GgufXform *x,
                  int *heads);

/* Converts t to float32 in HF layout into dst (n elements), applying x; scratch holds n floats
 * when x != GGUF_X_NONE. */
int gguf_tensor_to_hf(const Gguf *g, const GgufTensor *t, GgufXform x, int heads, float *dst,
                      float *scratch, size_t n, TunaErr *err);

/* Copies a 2-d t as stored (rows of blocks, t->nbytes bytes) into dst in HF row order (x NONE
 * or UNPERMUTE: a transposed tensor cannot be kept as stored). */
int gguf_tensor_rows_to_hf(const Gguf *g, const GgufTensor *t, GgufXform x, int heads, void *dst,
                           TunaErr *err);

/* Writes cfg as a Hugging Face config.json (torch_dtype: the type the weights are written in)
 * and generation_config.json into dir, for a model loaded from GGUF and saved as a HF
 * checkpoint (tuna export). Returns 0 or TUNA_EIO. */
int gguf_write_hf_config(const ModelConfig *cfg, const char *dir, const char *torch_dtype,
                         TunaErr *err);
/* dir/name := j's JSON (indented, or on one line), then a newline; frees j. 0, or TUNA_EIO
 * naming the file. The Hugging Face files an export of a GGUF model writes. */
struct cJSON;
int hf_write_json(struct cJSON *j, int indent, const char *dir, const char *name, TunaErr *err);

#endif
