/* peft.h: adapters in Hugging Face PEFT's format, and Hugging Face checkpoints out.
 *
 * adapter_load reads adapter_config.json + adapter_model.safetensors (LoRA: r, lora_alpha,
 * target_modules, use_rslora, fan_in_fan_out, trainable_token_indices) and merges the adapter into the model's base
 * weights (W += scale * B·A), so every inference path (generate, chat, eval) sees it; a typed
 * (quantized or bf16) base is not merged into: the model keeps the adapter and applies it
 * unmerged (model_set_lora), as peft does over a bitsandbytes base.
 * adapter_save writes a trainer's LoRA tensors with PEFT's names and config fields.
 * model_save_hf writes the model's current weights as a HF checkpoint (config.json,
 * model.safetensors in the checkpoint's original tensor layout, tokenizer files copied from
 * the model's folder). All are atomic: written to DIR.tmp-XXXX, then renamed. */
#ifndef TUNA_SRC_PEFT_H
#define TUNA_SRC_PEFT_H

#include "atomic_dir.h" /* dir_begin, dir_commit, dir_remove: train.c takes them from here */
#include "err.h"
#include "model.h"
#include "model_train.h"
#include "safetensors.h"
#include "train.h"

/* Merges the PEFT LoRA adapter in dir into m (a typed base: applies it unmerged). */
int adapter_load(Model *m, const char *dir, TunaErr *err);

/* Reads dir/adapter_config.json into a TrainSetup (method LORA); targets and tokens are filled
 * with the comma lists of target_modules and trainable_token_indices and must outlive the
 * setup. */
int adapter_read_config(const char *dir, TrainSetup *setup, char *targets, size_t cap, char *tokens,
                        size_t tcap, TunaErr *err);

/* Writes ts's LoRA tensors and config to dir (created). base is recorded as
 * base_model_name_or_path. */
int adapter_save(const TrainState *ts, const char *dir, const char *base, TunaErr *err);

/* Writes m as a Hugging Face checkpoint in dir (created). */
int model_save_hf(const Model *m, const char *dir, TunaErr *err);

/* A trained PiSSA adapter (ts: LoRA with lora_pissa) written to dir as peft's conversion to a
 * plain LoRA of the original base (LLaMA-Factory's pissa_convert, its pissa_converted folder):
 * rank 2r, the SVD factors it started from subtracted (peft.c lora_write). TUNA_EUNSUP with
 * DoRA or trainable tokens, which the conversion would drop. */
int adapter_save_pissa_converted(const TrainState *ts, const char *dir, const char *base,
                                 TunaErr *err);

/* The same two, writing into an existing folder (no rename): for checkpoints. */
int adapter_write(const TrainState *ts, const char *dir, const char *base, TunaErr *err);
int model_write_hf(const Model *m, const char *dir, TunaErr *err);
/* model_write_hf with the tensors in dtype (ST_F32, ST_BF16 or ST_F16; rounded to nearest even)
 * and the weights cut into shards of at most shard_bytes (0: one file) as transformers'
 * save_pretrained does (model-0000i-of-0000n.safetensors and model.safetensors.index.json; one
 * model.safetensors when they fit in one); config.json's torch_dtype says dtype. Each tensor is
 * made (dequantized, an unmerged LoRA added in) as it is written: the model is never held twice.
 * progress (or NULL): after each tensor, the tensors done and their count.
 * model_write_hf: fp32, shards of HF_SHARD_BYTES (transformers' and LLaMA-Factory's 5 GB), the
 * model's own chat template. */
#define HF_SHARD_BYTES 5000000000ull
typedef struct HfWriteOpts {
    StDtype dtype;
    uint64_t shard_bytes;
    void (*progress)(void *ctx, int done, int total);
    void *progress_ctx;
    /* or NULL: the tokenizer's chat template (tokenizer_config.json's "chat_template", and
     * chat_template.jinja where the model has one); NULL keeps the model's own */
    const char *chat_template;
} HfWriteOpts;
int model_write_hf_as(const Model *m, const char *dir, const HfWriteOpts *o, TunaErr *err);
/* "float32", "bfloat16" or "float16": config.json's name of a writer dtype */
const char *hf_dtype_name(StDtype dtype);
/* ... and back: bfloat16 and float16 their types, anything else (float32, none) ST_F32 */
StDtype hf_dtype_by_name(const char *torch_dtype);
/* m's weights as the HF checkpoint holds them, one tensor at a time (names, shapes, fp32; typed
 * weights dequantized, an unmerged LoRA added in): model_hf_tensor_list gives the entries
 * (name, ndim, shape; data NULL) in the checkpoint's order, freed with free(*wt);
 * model_hf_tensor_fill writes the tensor of that name (shape[0] x shape[1] floats) into dst. */
int model_hf_tensor_list(const Model *m, StWriteTensor **wt, int *n);
void model_hf_tensor_fill(const Model *m, const char *name, float *dst);

/* tuna train --adapter DIR (LLaMA-Factory's adapter_name_or_path): a new run that starts from
 * a LoRA or P-tuning adapter, a PEFT save or an earlier run (not --resume: the optimizer and the
 * schedule start fresh).
 * adapter_train_config: c with the adapter's method and shape settings (LoRA r, lora_alpha,
 * use_rslora, target_modules, trainable_token_indices; P-tuning: num_virtual_tokens) into out.
 * A setting given away from its default that differs from the adapter's is a one-line error
 * naming both. */
int adapter_train_config(const TrainConfig *c, TrainConfig *out, TunaErr *err);
/* adapter_init_train: the adapter's tensors into ts's trainable tensors, bit for bit (ts made
 * by train_state_init from that config). A tensor missing, of another shape, or left over is
 * a one-line error: the adapter belongs to another base model than `model`. */
int adapter_init_train(TrainState *ts, const char *dir, const char *model, TunaErr *err);

#endif
