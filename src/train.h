/* train.h: the training run. A TrainConfig (every `tuna train` flag; the same keys in
 * train_config.json) drives train_run, which loads model, tokenizer, template and data,
 * trains with full / freeze / LoRA, evaluates, samples from fixed prompts, checkpoints and
 * writes the run folder:
 *   train_config.json   the resolved config (tuna train --config reads it back)
 *   metrics.jsonl       one JSON event per line: start, step, eval, sample, log, checkpoint,
 *                       state, done (the TUI and `tuna watch` follow this file)
 *   trainer_log.jsonl   the same steps in LLaMA-Factory's board format
 *   checkpoint-N/       trainable tensors, optimizer moments, trainer_state.json, and the
 *                       adapter (PEFT) or HF checkpoint; written atomically, last K kept
 *   adapter_config.json + adapter_model.safetensors (LoRA) or an HF checkpoint (full,
 *                       freeze) at the root when the run finishes
 *   control             a line "pause", "resume", "save" or "stop" written here by anyone
 *                       is read (and the file removed) between steps
 *   .lock               flock'ed by the trainer writing the folder, its pid inside
 * Stale checkpoint-N.tmp-PID / .old-PID of a dead trainer are cleaned (or restored) on the
 * next start; a checkpoint-N set aside after non-finite steps is checkpoint-N.nonfinite.
 * train_run runs on the calling thread. The TUI does not call it: its Setup screen forks
 * `tuna train --config` in its own session and the Train screen follows metrics.jsonl. */
#ifndef TUNA_SRC_TRAIN_H
#define TUNA_SRC_TRAIN_H

#include <signal.h>
#include <stddef.h>
#include <stdio.h>

#include "config.h"
#include "err.h"
#include "model_train.h"

typedef struct TrainConfig {
    char model[1024], dataset[512], dataset_dir[1024], template_name[64], templates_dir[1024];
    char eval_dataset[512]; /* the eval set's datasets ("" : a val_size split of the data) */
    char method[16], stage[8], lora_target[256], output[1024], vars[512], lr_scheduler[32];
    char backend[16], sample_prompts[1024], lora_trainable_tokens[256];
    char init_lora_weights[16]; /* "default" (PEFT's init_lora_weights=True) or "pissa" */
    char pad_to[8]; /* "batch": rows as long as each batch needs; "max": all as the longest */
    /* Hugging Face's eval_strategy and save_strategy: "steps" (every eval_steps / save_steps),
     * "epoch" (at the end of each epoch) or "no" (at the end only) */
    char eval_strategy[8], save_strategy[8];
    /* transformers' lr_scheduler_kwargs: a JSON object ("" for none), as sched_init reads it */
    char lr_scheduler_kwargs[256];
    /* LLaMA-Factory's default_system: the template's system prompt in training, and in the
     * run's chat, eval and exports ("": the template's own) */
    char default_system[1024];
    int use_dora; /* DoRA (PEFT use_dora) */
    int lora_rank, use_rslora, freeze_layers, max_steps, batch_size, grad_accum, max_bad_steps;
    char freeze_trainable_modules[128]; /* freeze: the modules of its layers that train ("all") */
    /* several datasets: concat | interleave_under | interleave_over (LLaMA-Factory's
     * mix_strategy), interleave_probs one probability a dataset, comma-separated ("": none) */
    char mix_strategy[20], interleave_probs[256];
    int cutoff_len, eval_steps, save_steps, save_total_limit, logging_steps, warmup_steps;
    int seed, max_samples, strict, sample_steps, sample_max_tokens, threads;
    double dist_timeout; /* data parallel: seconds a collective may wait before the job ends */
    int packing;         /* 0, 1 (true), 2 (neat) */
    int group_by_length; /* batches of similar lengths */
    int prefix_tokens, prefix_projection, prefix_hidden, gradient_checkpointing;
    int train_on_prompt, mask_history;
    double loraplus_lr_ratio; /* LoRA+: the B matrices' lr is lr times this; 0 = off */
    double lora_alpha, lora_dropout, val_size, warmup_ratio, weight_decay, max_grad_norm;
    double neftune_noise_alpha; /* NEFTune: noise on the token embeddings while training (0: off) */
    double label_smoothing_factor; /* Hugging Face's label smoothing of the loss (0: off) */
    int use_dft_loss;              /* sft: LLaMA-Factory's DFT loss (TrainSetup.dft) */
    int use_eaft_loss;             /* sft: its EAFT loss, with eaft_alpha (TrainSetup.eaft) */
    double eaft_alpha;
    int compute_accuracy; /* sft, pt: eval_accuracy in each eval (LLaMA-Factory's) */
    /* Hugging Face's load_best_model_at_end (metric eval_loss): the result is the checkpoint
     * whose eval loss was the lowest, that checkpoint kept through save_total_limit */
    int load_best_model_at_end;
    /* Hugging Face's EarlyStoppingCallback (LLaMA-Factory's early_stopping_steps): stop after
     * this many evals in a row without a lower eval loss (0: off) */
    int early_stopping_steps;
    /* AdamW's betas and epsilon (Hugging Face's adam_beta1, adam_beta2, adam_epsilon) */
    double adam_beta1, adam_beta2, adam_epsilon;
    /* the data order: data_seed (>= 0; -1: seed's), disable_shuffling (in dataset order), and
     * dataloader_drop_last (an epoch's last partial batch dropped) */
    int data_seed, disable_shuffling, dataloader_drop_last;
    int pissa_convert; /* PiSSA: also write RUN/pissa_converted, a plain LoRA of the base */
    double lr;         /* 0: auto ("auto" in flags and JSON), chosen by method and model size */
    double epochs;     /* fractional, as LLaMA-Factory's num_train_epochs */
    /* --adapter: start from this adapter (LLaMA-Factory's adapter_name_or_path), "" for none */
    char adapter[1024];
    /* the frozen base's linear layers on load: 0 (fp32), 8 or 4 bits, in quantization_type */
    int quantization_bit, double_quantization;
    char quantization_type[8];
    char dtype[8]; /* the frozen base's linear layers without quantization: fp32 or bf16 */
    /* mixed precision: matrix products in bf16 with fp32 accumulation (Backend.mm_bf16) */
    int bf16;
    /* stage dpo (LLaMA-Factory's names): pref_loss sigmoid | hinge | ipo | orpo | simpo */
    char pref_loss[16];
    double pref_beta, simpo_gamma, dpo_label_smoothing, pref_ftx;
    /* stage kto: the weights of the desirable and undesirable examples' losses */
    double kto_chosen_weight, kto_rejected_weight;
    /* stage rm: dropout on the value head's input while training (TRL's summary_dropout_prob) */
    double summary_dropout_prob;
    /* prompt: the init text (PEFT prompt_tuning_init TEXT), "" for random; ptuning-v1: the
     * encoder, mlp | lstm, and the LSTM's layers */
    char prompt_init_text[512], prompt_encoder[8];
    int prompt_encoder_layers;
    int zero; /* data parallel: 1 shards the AdamW state over the ranks (ZeRO stage 1) */
} TrainConfig;

/* --- the options table: one row per `tuna train` flag / train_config.json key. getopt
 * (src/cli/cmd_train.c), the config file, --help, validation and the Setup screen's form all read
 * it, so a key's type, default, range and methods are written once (src/train.c, fields[]). */
typedef enum { TRAIN_OPT_STR, TRAIN_OPT_INT, TRAIN_OPT_DBL, TRAIN_OPT_BOOL } TrainOptType;

/* The methods an option applies to (TrainOption.methods), as bits. */
enum {
    TRAIN_M_FULL = 1,
    TRAIN_M_FREEZE = 2,
    TRAIN_M_LORA = 4,
    TRAIN_M_PTUNING = 8,
    TRAIN_M_PROMPT = 16,
    TRAIN_M_PTUNING_V1 = 32,
    TRAIN_M_ALL = 63
};

typedef struct TrainOption {
    const char *key; /* the flag with '-' as '_' (--lora-rank: lora_rank), the JSON key */
    TrainOptType type;
    size_t off, size; /* the field in TrainConfig (TRAIN_OPT_INT and _BOOL: an int) */
    const char *def;  /* the default as the flag's text ("auto" for lr) */
    const char *help;
    const char *alt;  /* TRAIN_OPT_BOOL: a third word, stored as 2 (packing: "neat"), or NULL */
    unsigned methods; /* TRAIN_M_*: the methods it applies to (TRAIN_M_ALL: general) */
    int ranged;       /* numbers: the value must lie in lo..hi (else any integer in +-1e9, or any
                         finite number) */
    double lo, hi;    /* hi HUGE_VAL: no upper bound */
    int lo_open;      /* lo itself is excluded ("> 0") */
    int is_auto;      /* "auto" is accepted too, kept as 0 (lr: chosen when the run starts) */
} TrainOption;

/* How many options; the i-th (NULL past the end), in --help order. */
int train_option_count(void);
const TrainOption *train_option(int i);
/* The option of a key or flag name ('-' or '_'), NULL when there is none. */
const TrainOption *train_option_find(const char *key);
/* TRAIN_M_FULL .. TRAIN_M_PTUNING_V1 for "full", "freeze", "lora", "ptuning", "prompt",
 * "ptuning-v1"; 0 for others. */
unsigned train_method_bit(const char *method);

/* What a run of a config would take, from the model's config.json alone (no weights loaded):
 * the sizes train_state_init and optim_init allocate, for batches of batch_size x cutoff_len
 * (a run sizes its rows to the longest example up to cutoff_len: this is the most). All fp32,
 * bytes of backend memory. The method's own options are read (not an --adapter's). */
typedef struct TrainEstimate {
    size_t total_params;     /* the model's weights */
    size_t trainable_params; /* = train_param_count of the run's TrainState */
    int lora_modules;        /* lora: adapted linear layers, over all layers */
    size_t weight_bytes;     /* the model's weights, plus an adapter's own values */
    size_t grad_bytes;       /* gradients of the trainable parameters */
    size_t optim_bytes;      /* AdamW's m and v */
    size_t act_bytes;        /* = train_activation_bytes */
    size_t scratch_bytes;    /* the backward's scratch (and the prefix's buffers) */
    size_t ref_bytes;        /* stages dpo and kto: the reference (its state; full and freeze: a
                                frozen copy of the weights); 0 for orpo, simpo and the rest */
    size_t total_bytes;      /* the sum */
} TrainEstimate;

/* Fails, in train_state_init's words, on what a run would refuse of the method's options (an
 * unknown method, LoRA targets the architecture lacks, more freeze layers than it has). */
int train_estimate(const ModelConfig *mc, const TrainConfig *cfg, TrainEstimate *out, TunaErr *err);

/* --quantization-bit / --quantization-type / --double-quantization as the options model_load_opts
 * takes for method (the layers it keeps frozen: all for lora and ptuning, those below the trained
 * ones for freeze); a one-line error for a value or method they do not go with. */
int train_load_options(const TrainConfig *c, TrainMethod method, ModelLoadOptions *o, TunaErr *err);

/* Defaults for every field. */
void train_config_defaults(TrainConfig *c);
/* Reads keys from a JSON file over c (unknown keys are an error naming the key). */
int train_config_load(TrainConfig *c, const char *path, TunaErr *err);
/* Writes c as JSON (caller frees). */
char *train_config_json(const TrainConfig *c);
/* Checks every numeric field's range; the message names the flag and the value, e.g.
 * "--lr: must be a number > 0 or auto, got -1". */
int train_config_check(const TrainConfig *c, TunaErr *err);
/* The keys whose values differ between a and b (output, threads and zero left out), as
 * "lr auto -> 0.05, epochs 3 -> 5" into out; returns how many. */
int train_config_diff(const TrainConfig *a, const TrainConfig *b, char *out, size_t cap);
/* Sets one field from its flag/key name and a string value. */
int train_config_set(TrainConfig *c, const char *key, const char *value, TunaErr *err);
/* Prints the flag table (name, default, help) for --help. */
void train_config_help(FILE *f);
/* Iterates the keys (for getopt tables): returns the i-th key name and whether it is a
 * boolean flag, or NULL past the end. */
const char *train_config_key(int i, int *is_bool, const char **help);

typedef struct TrainHooks {
    volatile sig_atomic_t *stop; /* set (e.g. by SIGINT): checkpoint, then return */
    void (*on_line)(void *user, const char *json_line); /* every metrics.jsonl line */
    void *user;
    int quiet;             /* no progress on stderr */
    int overwrite;         /* replace an existing run in cfg->output (else refused) */
    const char *changes;   /* resume: settings changed on purpose (logged, kept in history) */
    int *stopped;          /* out: 1 when the run stopped before finishing (stop, signal) */
    double progress_every; /* stderr not a terminal: seconds between progress lines (0: 10) */
    int resume_step;       /* resume from checkpoint-N (0: the newest that validates) */
} TrainHooks;

/* Runs training; resume: continue from the newest checkpoint in cfg->output that validates
 * (hooks->resume_step: from that one).
 * Everything is checked (options, model, data, template) before the run folder is touched;
 * a folder that holds a run is refused unless hooks->overwrite or resume; RUN/.lock keeps a
 * second trainer out. */
int train_run(const TrainConfig *cfg, int resume, const TrainHooks *hooks, TunaErr *err);

/* N when a folder's name is a run's checkpoint-N (N >= 1), else 0. */
int train_checkpoint_step(const char *name);
/* The steps of dir's checkpoint-N folders, ascending (at most cap of them); their count. */
int train_checkpoints(const char *dir, int *steps, int cap);

#endif
