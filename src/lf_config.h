/* lf_config.h: a LLaMA-Factory training YAML (what `llamafactory-cli train FILE.yaml` reads)
 * as a TrainConfig, so that `tuna train FILE.yaml` runs what LLaMA-Factory would.
 *
 * Every key of the file is one of:
 *   - a LLaMA-Factory argument tuna implements, under its own name or tuna's
 *     (learning_rate -> lr, finetuning_type -> method, neat_packing -> packing neat, ...);
 *   - one that does not change what is trained (report_to, preprocessing_num_workers,
 *     flash_attn, ...): accepted and listed in the notes;
 *   - one that changes the math and tuna does not implement (neftune_noise_alpha, use_galore,
 *     quantization_bit 8 as bitsandbytes' LLM.int8, ...), or a value of it other than the
 *     default: refused with one line naming the file, the line and the key;
 *   - a tuna option under its own name (threads, sample_prompts, ...);
 *   - anything else: refused as unknown, as LLaMA-Factory refuses it.
 * Where LLaMA-Factory's or Hugging Face's default differs from tuna's, the file gets theirs
 * (learning_rate 5e-5, lr_scheduler_type linear, cutoff_len 2048, val_size 0, lora_alpha
 * 2 x lora_rank, gradient checkpointing on, double quantization on, an unset template read
 * from the model's chat template or else "empty"), and its packing quirk (an explicit packing
 * or neat_packing shortens cutoff_len by one). The notes say what was mapped and assumed. */
#ifndef TUNA_SRC_LF_CONFIG_H
#define TUNA_SRC_LF_CONFIG_H

#include <stddef.h>

#include "err.h"
#include "train.h"

/* Fills c (already holding tuna's defaults) from the YAML file at path. notes (cap bytes, may
 * be NULL): lines for the user (what was ignored, which defaults were LLaMA-Factory's). On
 * error c may be partly set; err says "FILE:LINE: key: why" (or FILE:LINE:COLUMN for the YAML
 * itself). */
int lf_config_load(TrainConfig *c, const char *path, char *notes, size_t cap, TunaErr *err);

/* Whether path names a YAML file (.yaml or .yml). */
int lf_config_is_yaml(const char *path);

#endif
