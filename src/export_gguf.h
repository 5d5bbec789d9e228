/* export_gguf.h: a tuna model as a GGUF v3 file llama.cpp loads (`tuna export --format gguf`),
 * and a LoRA adapter in llama.cpp's adapter format (`--format gguf-lora`).
 *
 * The merged export takes the model's weights as model_hf_tensor_fill gives them (an unmerged LoRA
 * added in, typed weights dequantized), names them as llama.cpp does (gguf_name_for), applies
 * the q/k row permutation llama.cpp's convert script applies for llama/mistral, transposes
 * GPT-2's Conv1D weights, and stores them as convert_hf_to_gguf.py / llama-quantize do: 1-D
 * tensors (norms, biases) F32; matrices in the asked type, F16 where a row is not a whole
 * number of the type's blocks (the convert script's fallback); with a 4-bit type the output
 * head (the token embedding when tied) Q8_0, as llama-quantize keeps it at 6+ bits. Metadata:
 * general.*, the architecture's keys, tokenizer.ggml.* (copied from a GGUF source, or built from
 * the HF tokenizer.json), tokenizer.chat_template. The file appears whole or not at all
 * (gguf_writer_save_fill). It streams: every tensor's name, type and size is planned first (the
 * header needs them), then each is merged, quantized and written in turn, so the peak memory is
 * the loaded model plus one tensor (fp32, a permuted copy, its stored bytes). */
#ifndef TUNA_SRC_EXPORT_GGUF_H
#define TUNA_SRC_EXPORT_GGUF_H

#include <stdint.h>

#include "err.h"
#include "model.h"

typedef struct GgufExportOpts {
    int wtype;                 /* WT_F32, WT_F16, WT_BF16, WT_Q8_0, WT_Q4_0, WT_Q4_1, WT_Q4_K */
    const char *chat_template; /* Jinja source for tokenizer.chat_template; NULL: the source's */
    const char *name;          /* general.name; NULL: the model folder's name */
    /* called after each tensor (done of total), e.g. for a progress bar; NULL for none */
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
} GgufExportOpts;

/* The WType of a --quant name (f32, f16, bf16, q8_0, q4_0, q4_1, q4_k), or -1. */
int export_gguf_quant(const char *name);

/* Writes m (loaded from m->dir: an HF folder or a .gguf file, whose tokenizer is exported) to
 * out. TUNA_EUNSUP (one line) for a type the architecture's shapes cannot take (q4_k with a
 * width that is not a multiple of 256), a P-tuning prefix, or a tokenizer llama.cpp cannot be
 * told about; TUNA_EIO names out. Progress notes go to stderr when verbose. */
int export_gguf(const Model *m, const GgufExportOpts *o, const char *out, int verbose,
                TunaErr *err);

/* Writes the PEFT LoRA adapter in adapter_dir (adapter_config.json + adapter_model.safetensors)
 * for base model config cfg as llama.cpp's LoRA GGUF: general.type adapter, adapter.type lora,
 * adapter.lora.alpha (rsLoRA's alpha/sqrt(r) folded in as alpha' = scale * r, since llama.cpp
 * scales by alpha/r), tensors <base tensor>.lora_a (ne r x in... rows of in) and .lora_b, F32,
 * lora_b's rows permuted as the base's q/k rows are. */
int export_gguf_lora(const ModelConfig *cfg, const char *adapter_dir, const char *out,
                     TunaErr *err);

/* One row of n floats (n a multiple of 256) as Q4_K blocks: per sub-block of 32 a least-squares
 * (scale, min) over 21 candidate grids, 6-bit scales under the super-block's f16 d and dmin.
 * Not byte-identical to llama.cpp's search (the gguf package has no Q4_K quantizer). */
void export_gguf_q4_k_row(const float *src, void *dst, int64_t n);

#endif
