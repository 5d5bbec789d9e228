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

/* What the file says of output_dir's run, read once: *overwrite 1 for overwrite_output_dir true
 * (the run there is replaced, as `tuna train --overwrite` does; LLaMA-Factory's trainer writes
 * over it), 0 for false or absent (a run with a checkpoint there is resumed from it, as
 * LLaMA-Factory does; one without is refused, as tuna and LLaMA-Factory refuse it); *resume 1
 * with out (cap bytes) the checkpoint folder resume_from_checkpoint names ("" for true: output_dir's
 * newest), 0 when absent, null or false (src/cli/cmd_train.c does both). Returns 0 or an error
 * code. */
int lf_config_run_dir(const char *path, int *overwrite, int *resume, char *out, size_t cap,
                      TunaErr *err);

/* LLaMA-Factory's other YAML files: `llamafactory-cli export` (merge_lora: model, adapter,
 * export_dir, export_size, infer_dtype) and `llamafactory-cli chat` (inference: model, adapter,
 * template, default_system, the generation arguments with LLaMA-Factory's defaults: sampling at
 * temperature 0.95, top_p 0.7, top_k 50, up to 1024 new tokens). */
typedef enum { LF_CMD_EXPORT, LF_CMD_CHAT } LfCommand;

/* The file at path as `tuna export` or `tuna chat` flags: *argv (malloc'd strings, *argc of
 * them; the chat's model first, as its operand). The same refusals and notes as
 * lf_config_load. */
int lf_config_args(const char *path, LfCommand cmd, char ***argv, int *argc, char *notes,
                   size_t cap, TunaErr *err);
void lf_config_args_free(char **argv, int argc);

/* Whether path names a YAML file (.yaml or .yml). */
int lf_config_is_yaml(const char *path);

#endif
