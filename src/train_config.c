/* train_config.c: the training options, one table (TrainOption rows: key, type, default, range,
 * help, the methods each applies to) behind getopt, the config file, --help, validation and
 * the Setup screen's form (see train.h). */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "xalloc.h"

// --- the options table: one row per flag / JSON key (train.h: TrainOption)

#define OFF(k) offsetof(TrainConfig, k)
#define SZ(k)  sizeof(((TrainConfig *)0)->k)
/* ranges: lo..hi; ABOVE: > lo; FROM: >= lo; OPEN: > lo and <= hi; NONE: any integer / finite number */
#define RANGE(lo, hi) 1, lo, hi, 0
#define ABOVE(lo)     1, lo, HUGE_VAL, 1
#define FROM(lo)      1, lo, HUGE_VAL, 0
#define OPEN(lo, hi)  1, lo, hi, 1
#define NONE          0, 0, 0, 0
#define S(k, m, d, h)                                                                              \
    { #k, TRAIN_OPT_STR, OFF(k), SZ(k), d, h, NULL, m, NONE, 0 }
#define I(k, m, rg, d, h)                                                                          \
    { #k, TRAIN_OPT_INT, OFF(k), sizeof(int), d, h, NULL, m, rg, 0 }
#define D(k, m, rg, d, h)                                                                          \
    { #k, TRAIN_OPT_DBL, OFF(k), sizeof(double), d, h, NULL, m, rg, 0 }
#define B(k, m, d, h)                                                                              \
    { #k, TRAIN_OPT_BOOL, OFF(k), sizeof(int), d, h, NULL, m, NONE, 0 }
#define B3(k, alt, m, d, h)                                                                        \
    { #k, TRAIN_OPT_BOOL, OFF(k), sizeof(int), d, h, alt, m, NONE, 0 }
#define ALL         TRAIN_M_ALL
#define LORA        TRAIN_M_LORA
#define VIRT        (TRAIN_M_PTUNING | TRAIN_M_PROMPT | TRAIN_M_PTUNING_V1)
#define FROZEN_BASE (LORA | VIRT | TRAIN_M_FREEZE)
#define BIG         1e9

static const TrainOption fields[] = {
        S(model, ALL, "models/stories260K",
          "model folder (config.json, model.safetensors, tokenizer.json)"),
        S(dataset, ALL, "identity", "dataset name(s) from dataset_info.json, comma-separated"),
        S(mix_strategy, ALL, "concat",
          "several datasets: concat (in order) | interleave_under (in turn, until the first runs "
          "out) | interleave_over (until every one has run out once) (LLaMA-Factory's "
          "mix_strategy)"),
        S(interleave_probs, ALL, "",
          "interleave: the probability of each dataset, comma-separated (drawn from --seed; "
          "none: in turn)"),
        S(dataset_dir, ALL, "datasets", "folder holding dataset_info.json"),
        S(eval_dataset, ALL, "",
          "evaluate on these datasets (comma-separated, prepared as the training data) instead "
          "of a val_size split of it (LLaMA-Factory's eval_dataset)"),
        {"template", TRAIN_OPT_STR, OFF(template_name), SZ(template_name), "auto",
         "prompt template (templates/NAME.json), or auto: the one matching the model's own "
         "(auto:NAME: NAME when the model has none; vanilla otherwise)",
         NULL, ALL, NONE, 0},
        S(default_system, ALL, "",
          "system prompt of the conversations that have none, in place of the template's, in "
          "training and in the run's chat, eval and exports (LLaMA-Factory's default_system)"),
        S(templates_dir, ALL, "templates", "folder of template files"),
        S(method, ALL, "lora",
          "full | freeze | lora | ptuning (P-tuning v2: trainable key/value prefixes) | prompt "
          "(prompt tuning: trainable virtual tokens at the input) | ptuning-v1 (P-tuning: "
          "virtual tokens made by a prompt encoder, an MLP or LSTM)"),
        S(stage, ALL, "sft",
          "sft (supervised) | pt (plain text, every token trains) | dpo (preference pairs from "
          "ranking datasets, against a reference: the base, adapter off, or a frozen copy) | kto "
          "(answers tagged desirable or undesirable, kto_tag datasets, against a reference) | rm "
          "(a reward model: a value head on the last token, trained on ranking pairs)"),
        S(pref_loss, ALL, "sigmoid",
          "dpo: sigmoid (DPO) | hinge | ipo | orpo | simpo (the last two without a reference)"),
        D(pref_beta, ALL, OPEN(0, BIG), "0.1",
          "dpo, kto: beta, the strength of the reference's pull"),
        D(simpo_gamma, ALL, FROM(0), "0.5", "dpo, simpo: the target reward margin gamma"),
        D(dpo_label_smoothing, ALL, RANGE(0, 0.5), "0",
          "dpo, sigmoid: the label smoothing of conservative DPO (robust to noisy preferences)"),
        D(pref_ftx, ALL, FROM(0), "0",
          "dpo: weight of an SFT loss on the chosen answer added to the preference loss"),
        D(kto_chosen_weight, ALL, OPEN(0, BIG), "1",
          "kto: weight of the desirable examples' losses (TRL's desirable_weight)"),
        D(kto_rejected_weight, ALL, OPEN(0, BIG), "1",
          "kto: weight of the undesirable examples' losses (TRL's undesirable_weight)"),
        D(summary_dropout_prob, ALL, RANGE(0, 0.99), "0.1",
          "rm: dropout on the value head's input while training (TRL's ValueHead "
          "summary_dropout_prob, 0.1 in LLaMA-Factory's reward model; 0: none)"),
        I(lora_rank, LORA, RANGE(1, 4096), "8", "LoRA rank r"),
        D(lora_alpha, LORA, OPEN(0, BIG), "16", "LoRA alpha (scale alpha/r)"),
        D(lora_dropout, LORA, RANGE(0, 0.99), "0", "LoRA dropout"),
        S(lora_target, LORA, "all",
          "LoRA target modules, comma-separated (q_proj,v_proj; GPT-2 c_attn), or all: every "
          "linear layer of the blocks (LLaMA-Factory's default)"),
        B(use_rslora, LORA, "false", "rank-stabilized LoRA (scale alpha/sqrt(r))"),
        B(use_dora, LORA, "false",
          "DoRA: a trainable magnitude per output row over the norm of W + scale*B*A (fp32 base, "
          "no dropout)"),
        D(loraplus_lr_ratio, LORA, FROM(0), "0",
          "LoRA+: the B matrices (and 1-D tensors) train at lr times this, e.g. 16 (0 = off)"),
        S(init_lora_weights, LORA, "default",
          "default (A random, B 0) | pissa (A, B from the top-r SVD of each weight, which keeps "
          "the residual; fp32 base only)"),
        B(pissa_convert, LORA, "false",
          "init_lora_weights pissa: the result also as a plain LoRA of the original base, rank "
          "2r, in RUN/pissa_converted (LLaMA-Factory's pissa_convert; peft's conversion)"),
        S(lora_trainable_tokens, LORA, "",
          "LoRA: also train these tokens' embedding rows (PEFT trainable_token_indices): ids, "
          "token "
          "strings, or eos (the token the template ends answers with); needed when the base never "
          "learned that token"),
        I(freeze_layers, TRAIN_M_FREEZE, RANGE(1, 100000), "2",
          "freeze: how many last layers train"),
        S(freeze_trainable_modules, TRAIN_M_FREEZE, "all",
          "freeze: the modules of the trained layers that train, comma-separated (self_attn, mlp, "
          "input_layernorm, ...; GPT-2: attn, mlp, ln_1, ln_2), or all (LLaMA-Factory's "
          "freeze_trainable_modules)"),
        I(prefix_tokens, VIRT, RANGE(1, 1024), "16",
          "ptuning, prompt, ptuning-v1: virtual tokens (num_virtual_tokens)"),
        B(prefix_projection, TRAIN_M_PTUNING, "false",
          "ptuning: reparameterize the prefix through an MLP"),
        I(prefix_hidden, TRAIN_M_PTUNING | TRAIN_M_PTUNING_V1, RANGE(1, 65536), "64",
          "ptuning: hidden size of that MLP; ptuning-v1: of the prompt encoder "
          "(encoder_hidden_size)"),
        S(prompt_init_text, TRAIN_M_PROMPT, "",
          "prompt: start the virtual tokens from this text's token embeddings, repeated to fill "
          "them (PEFT prompt_tuning_init TEXT); empty: random N(0, 1)"),
        S(prompt_encoder, TRAIN_M_PTUNING_V1, "mlp",
          "ptuning-v1: the prompt encoder, mlp | lstm (PEFT encoder_reparameterization_type)"),
        I(prompt_encoder_layers, TRAIN_M_PTUNING_V1, RANGE(1, 4), "2",
          "ptuning-v1, lstm: the bidirectional LSTM's layers (encoder_num_layers)"),
        D(epochs, ALL, RANGE(0, 100000), "3",
          "passes over the training data (fractional allowed, e.g. 1.5)"),
        I(max_steps, ALL, RANGE(0, BIG), "0",
          "stop after this many optimizer steps (0 = from epochs)"),
        {"lr", TRAIN_OPT_DBL, OFF(lr), sizeof(double), "auto",
         "peak learning rate, or auto: by method and model size, 1e-4 (lora), 2e-5 (full, "
         "freeze), 1e-2 (ptuning, prompt, ptuning-v1) at 100M+ parameters, rising log-linearly to "
         "1e-2, 2e-3, 3e-2 "
         "at 1M and below",
         NULL, ALL, ABOVE(0), 1},
        S(lr_scheduler, ALL, "cosine",
          "constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial | "
          "inverse_sqrt | cosine_with_min_lr | cosine_warmup_with_min_lr | warmup_stable_decay | "
          "reduce_lr_on_plateau (transformers' schedules; the last stepped by the evals)"),
        S(lr_scheduler_kwargs, ALL, "",
          "the schedule's arguments as a JSON object, transformers' lr_scheduler_kwargs: "
          "num_cycles, min_lr, min_lr_rate, lr_end, power, timescale, num_decay_steps, ..."),
        I(warmup_steps, ALL, RANGE(0, BIG), "0", "warmup steps"),
        D(warmup_ratio, ALL, RANGE(0, 1), "0",
          "warmup as a fraction of all steps (if warmup_steps is 0)"),
        D(weight_decay, ALL, FROM(0), "0", "AdamW weight decay (not on norms and biases)"),
        D(adam_beta1, ALL, RANGE(0, 0.9999999999), "0.9",
          "AdamW's beta1 (Hugging Face's adam_beta1)"),
        D(adam_beta2, ALL, RANGE(0, 0.9999999999), "0.999",
          "AdamW's beta2 (Hugging Face's adam_beta2)"),
        D(adam_epsilon, ALL, FROM(0), "1e-8", "AdamW's epsilon (Hugging Face's adam_epsilon)"),
        D(max_grad_norm, ALL, FROM(0), "1.0", "clip the global gradient norm (0 = off)"),
        D(neftune_noise_alpha, ALL, RANGE(0, 1e6), "0",
          "NEFTune (sft, pt): uniform noise on the token embeddings while training, on [-m, m) "
          "with m = alpha / sqrt(row length x hidden size), e.g. 5 (Hugging Face's "
          "neftune_noise_alpha; 0 = off)"),
        D(label_smoothing_factor, ALL, RANGE(0, 0.999), "0",
          "sft, pt: label smoothing e: each target's loss is (1 - e) (-log p) + e (mean over the "
          "vocabulary of -log p), in training and the evals (Hugging Face's "
          "label_smoothing_factor; 0 = off)"),
        B(use_dft_loss, ALL, "false",
          "sft: LLaMA-Factory's DFT loss: each target token's loss times its probability (held "
          "constant in the gradient), in training and the evals"),
        B(use_eaft_loss, ALL, "false",
          "sft: LLaMA-Factory's EAFT loss: each target token's loss times (H / 3)^eaft_alpha, H "
          "the entropy of the softmax over its 20 largest logits (held constant in the "
          "gradient), in training and the evals"),
        D(eaft_alpha, ALL, RANGE(0, 1e6), "1",
          "the EAFT loss's power (LLaMA-Factory's eaft_alpha)"),
        B(compute_accuracy, ALL, "false",
          "sft, pt: each eval also logs eval_accuracy: per example the share of its target "
          "tokens whose most likely token is the target, averaged over the examples "
          "(LLaMA-Factory's compute_accuracy)"),
        I(batch_size, ALL, RANGE(1, 65536), "8", "sequences per micro-batch"),
        I(grad_accum, ALL, RANGE(1, 65536), "1", "micro-batches per optimizer step"),
        I(cutoff_len, ALL, RANGE(2, 1048576), "256", "maximum tokens per example"),
        B(gradient_checkpointing, ALL, "false",
          "recompute activations in the backward: less memory, ~1/3 more time"),
        D(val_size, ALL, RANGE(0, BIG), "0.1", "validation split: fraction, or a count if >= 1"),
        I(eval_steps, ALL, RANGE(0, BIG), "20", "evaluate every N steps (0 = at the end only)"),
        I(save_steps, ALL, RANGE(0, BIG), "50", "checkpoint every N steps (0 = only at the end)"),
        S(eval_strategy, ALL, "steps",
          "steps: evaluate every eval_steps | epoch: at the end of each epoch | no: at the end "
          "only (Hugging Face's eval_strategy)"),
        S(save_strategy, ALL, "steps",
          "steps: checkpoint every save_steps | epoch: at the end of each epoch | best: at each "
          "eval with a new lowest loss | no: only the final result (Hugging Face's save_strategy)"),
        I(save_total_limit, ALL, RANGE(0, 1000000), "2", "checkpoints kept"),
        I(early_stopping_steps, ALL, RANGE(0, BIG), "0",
          "stop after this many evals in a row without a lower eval loss (0 = off; Hugging Face's "
          "EarlyStoppingCallback, LLaMA-Factory's early_stopping_steps; needs "
          "--load-best-model-at-end)"),
        B(load_best_model_at_end, ALL, "false",
          "the result is the checkpoint with the lowest eval loss, kept through save_total_limit "
          "(Hugging Face's load_best_model_at_end; eval and save strategies must match, "
          "save_steps a multiple of eval_steps, or save_strategy best)"),
        I(logging_steps, ALL, RANGE(1, BIG), "1", "write a step line every N steps"),
        S(sample_prompts, ALL, "Who are you?",
          "fixed prompts for sample generations, separated by | (up to 16, answered together)"),
        I(sample_steps, ALL, RANGE(0, BIG), "0",
          "generate samples every N steps (0 = with each eval)"),
        I(sample_max_tokens, ALL, RANGE(0, 65536), "48", "tokens per sample"),
        S(vars, ALL, "", "dataset placeholders, e.g. name=Tuna,author=Ann"),
        I(max_samples, ALL, RANGE(0, BIG), "0", "use at most N rows per dataset (0 = all)"),
        B(strict, ALL, "false",
          "a bad dataset row or an unfilled {{placeholder}} is fatal (default: skipped or "
          "warned)"),
        B3(packing, "neat", ALL, "false",
           "pack short examples into full rows of cutoff_len: true (they attend to each other, "
           "LLaMA-Factory packing) or neat (positions restart and attention stays inside each "
           "example: neat_packing; the losses equal unpacked training)"),
        B(group_by_length, ALL, "false",
          "batches of examples of similar length (Hugging Face group_by_length): less padding"),
        B(disable_shuffling, ALL, "false",
          "the examples in dataset order, every epoch (LLaMA-Factory's disable_shuffling)"),
        B(dataloader_drop_last, ALL, "false",
          "drop each epoch's last partial batch (Hugging Face's dataloader_drop_last)"),
        I(data_seed, ALL, RANGE(-1, BIG), "-1",
          "seed of the data order (-1: --seed's; Hugging Face's data_seed)"),
        S(pad_to, ALL, "batch",
          "batch: each batch padded to its own longest example or packed row (rounded up to 8); "
          "max: every batch to the longest example of the data, or to cutoff_len when packing "
          "(the fixed rows of earlier versions)"),
        B(train_on_prompt, ALL, "false", "sft: the prompt tokens train too, not only the replies"),
        B(mask_history, ALL, "false",
          "sft: only the last reply of a conversation trains (truncation keeps the last turns)"),
        I(seed, ALL, NONE, "42", "seed for data order, LoRA init, dropout and sampling"),
        I(max_bad_steps, ALL, RANGE(1, 1000000), "5",
          "steps with a non-finite loss or gradient are skipped; stop after this many in a row"),
        S(adapter, LORA | TRAIN_M_PTUNING | TRAIN_M_PROMPT, "",
          "start a new run from this LoRA, ptuning or prompt adapter (a P_TUNING one continues "
          "as prompt): a PEFT folder or an earlier run "
          "(LLaMA-Factory's adapter_name_or_path); its method, rank, alpha and targets are "
          "kept, optimizer and schedule start fresh (not --resume)"),
        I(quantization_bit, FROZEN_BASE, RANGE(0, 8), "0",
          "keep the frozen base's linear layers in 8 or 4 bits (QLoRA; 0 = fp32); 8 is q8_0"),
        S(quantization_type, FROZEN_BASE, "nf4",
          "4 bits: nf4 | fp4 (bitsandbytes' blocks of 64) | q4_0 | q4_1 (GGUF's of 32)"),
        B(double_quantization, FROZEN_BASE, "false",
          "nf4/fp4: the block scales in 8 bits too (bitsandbytes compress_statistics)"),
        S(dtype, FROZEN_BASE, "auto",
          "auto | fp32 | bf16: the frozen base when not quantized; auto keeps it as the "
          "checkpoint stores it (a bf16 or f16 checkpoint's linear layers, embedding and head "
          "in bf16 / f16, a GGUF file's types), bf16 converts it (half the memory of fp32); "
          "products accumulate in fp32"),
        B(bf16, ALL, "false",
          "mixed precision as torch.autocast: the matrix products of the forward and backward "
          "in bf16 with fp32 accumulation; weights, gradients and optimizer state stay fp32"),
        S(output, ALL, "", "run folder (default runs/DATASET-METHOD)"),
        S(backend, ALL, "cpu", "cpu | ref | cuda"),
        I(threads, ALL, RANGE(0, 4096), "0",
          "CPU threads (0 = the cores other processes leave free, followed as it runs)"),
        D(dist_timeout, ALL, ABOVE(0), "300",
          "data parallel (mpirun, --nproc): seconds a collective may wait for the other ranks "
          "before the job ends as hung (more than rank 0's longest eval, samples and checkpoint)"),
        I(zero, ALL, RANGE(0, 1), "0",
          "data parallel (--nproc, mpirun): 1 shards the AdamW state over the processes, each "
          "keeping and updating its slice (ZeRO stage 1; the same numbers, 1/N of the state per "
          "process); nothing changes in one process"),
};
#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

int train_option_count(void) {
    return N_FIELDS;
}

const TrainOption *train_option(int i) {
    return i >= 0 && i < N_FIELDS ? &fields[i] : NULL;
}

const TrainOption *train_option_find(const char *key) {
    char k[64];
    snprintf(k, sizeof k, "%s", key);
    for (char *q = k; *q; q++)
        if (*q == '-') *q = '_';
    for (int i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].key, k)) return &fields[i];
    return NULL;
}

unsigned train_method_bit(const char *method) {
    static const char *const names[] = {"full",    "freeze", "lora",
                                        "ptuning", "prompt", "ptuning-v1"};
    for (unsigned i = 0; i < 6; i++)
        if (!strcmp(method, names[i])) return 1u << i;
    return 0;
}

const char *train_config_key(int i, int *is_bool, const char **help) {
    if (i < 0 || i >= N_FIELDS) return NULL;
    if (is_bool) *is_bool = fields[i].type == TRAIN_OPT_BOOL;
    if (help) *help = fields[i].help;
    return fields[i].key;
}

/* "--lr: must be a number > 0, got -1" (where "--": the flag; else "FILE: " and the key). */
static int range_err(const TrainOption *f, const char *raw, const char *where, TunaErr *err) {
    char name[80], what[120];
    snprintf(name, sizeof name, "%s%s", where, f->key);
    if (!strcmp(where, "--"))
        for (char *q = name + 2; *q; q++)
            if (*q == '_') *q = '-';
    const char *kind = f->type == TRAIN_OPT_INT ? "an integer" : "a number";
    if (!f->ranged)
        snprintf(what, sizeof what, "%s", kind);
    else if (f->hi == HUGE_VAL)
        snprintf(what, sizeof what, "%s %s %.10g%s", kind, f->lo_open ? ">" : ">=", f->lo,
                 f->is_auto ? " or auto" : "");
    else
        snprintf(what, sizeof what, "%s from %.10g to %.10g", kind, f->lo, f->hi);
    return tuna_errf(err, TUNA_EINVAL, "%s: must be %s, got %s", name, what, raw);
}

static int in_range(const TrainOption *f, double x) {
    return !f->ranged || ((f->lo_open ? x > f->lo : x >= f->lo) && x <= f->hi);
}

static int field_set(TrainConfig *c, const TrainOption *f, const char *v, const char *where,
                     TunaErr *err) {
    char *p = (char *)c + f->off, *end;
    errno = 0;
    switch (f->type) {
    case TRAIN_OPT_STR:
        if (strlen(v) >= f->size)
            return tuna_errf(err, TUNA_EINVAL, "%s%s: value too long", where, f->key);
        memcpy(p, v, strlen(v) + 1);
        return 0;
    case TRAIN_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < -1000000000L || x > 1000000000L ||
            !in_range(f, (double)x))
            return range_err(f, v, where, err);
        *(int *)p = (int)x;
        return 0;
    }
    case TRAIN_OPT_DBL: {
        if (f->is_auto && !strcmp(v, "auto")) {
            *(double *)p = 0; /* 0 stands for auto: the value is chosen when the run starts */
            return 0;
        }
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || !in_range(f, x))
            return range_err(f, v, where, err);
        *(double *)p = x;
        return 0;
    }
    case TRAIN_OPT_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1"))
            *(int *)p = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0"))
            *(int *)p = 0;
        else if (f->alt && !strcmp(v, f->alt))
            *(int *)p = 2;
        else if (f->alt)
            return tuna_errf(err, TUNA_EINVAL, "%s%s: expected true, false or %s, got \"%s\"",
                             where, f->key, f->alt, v);
        else
            return tuna_errf(err, TUNA_EINVAL, "%s%s: expected true or false, got \"%s\"", where,
                             f->key, v);
        return 0;
    }
    return 0;
}

int train_config_check(const TrainConfig *c, TunaErr *err) {
    for (int i = 0; i < N_FIELDS; i++) {
        const TrainOption *f = &fields[i];
        if (!f->ranged || (f->type != TRAIN_OPT_INT && f->type != TRAIN_OPT_DBL)) continue;
        const char *p = (const char *)c + f->off;
        double x = f->type == TRAIN_OPT_INT ? (double)*(const int *)p : *(const double *)p;
        if (f->is_auto && x == 0) continue;
        char raw[64];
        snprintf(raw, sizeof raw, "%.17g", x);
        if (!isfinite(x) || !in_range(f, x)) return range_err(f, raw, "--", err);
    }
    return 0;
}

/* One field's value as text (for diffs). */
static void field_text(const TrainConfig *c, const TrainOption *f, char *out, size_t cap) {
    const char *p = (const char *)c + f->off;
    switch (f->type) {
    case TRAIN_OPT_STR: snprintf(out, cap, "\"%s\"", p); break;
    case TRAIN_OPT_INT: snprintf(out, cap, "%d", *(const int *)p); break;
    case TRAIN_OPT_DBL:
        if (f->is_auto && *(const double *)p == 0)
            snprintf(out, cap, "auto");
        else
            snprintf(out, cap, "%.15g", *(const double *)p);
        break;
    case TRAIN_OPT_BOOL:
        snprintf(out, cap, "%s",
                 *(const int *)p == 2 && f->alt ? f->alt
                 : *(const int *)p              ? "true"
                                                : "false");
        break;
    }
}

int train_config_diff(const TrainConfig *a, const TrainConfig *b, char *out, size_t cap) {
    int n = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < N_FIELDS; i++) {
        const TrainOption *f = &fields[i];
        if (!strcmp(f->key, "output") || !strcmp(f->key, "threads") ||
            !strcmp(f->key, "dist_timeout") || !strcmp(f->key, "zero"))
            continue; /* zero: the same numbers; a checkpoint resumes with it or without */
        char x[1100], y[1100];
        field_text(a, f, x, sizeof x);
        field_text(b, f, y, sizeof y);
        if (!strcmp(x, y)) continue;
        size_t o = strlen(out);
        if (o < cap) snprintf(out + o, cap - o, "%s%s %.60s -> %.60s", n ? ", " : "", f->key, x, y);
        n++;
    }
    return n;
}

void train_config_defaults(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_FIELDS; i++)
        field_set(c, &fields[i], fields[i].def, "", NULL);
}

int train_config_set(TrainConfig *c, const char *key, const char *value, TunaErr *err) {
    const TrainOption *f = train_option_find(key);
    if (!f) return tuna_errf(err, TUNA_EINVAL, "unknown option \"%s\"", key);
    return field_set(c, f, value, "--", err);
}

int train_config_load(TrainConfig *c, const char *path, TunaErr *err) {
    char *text = xread_file(path, NULL);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    cJSON *root = cJSON_Parse(text);
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON near byte %ld", path,
                       at && root == NULL ? (long)(at - text) : 0L);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if (!strcmp(it->string, "history")) continue; /* changes made on resume (a record) */
        const TrainOption *f = train_option_find(it->string);
        if (!f) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: unknown key \"%s\"", path, it->string);
            goto done;
        }
        char buf[64], where[1100];
        const char *v = buf;
        snprintf(where, sizeof where, "%s: ", path);
        if (cJSON_IsString(it))
            v = it->valuestring;
        else if (cJSON_IsBool(it))
            v = cJSON_IsTrue(it) ? "true" : "false";
        else if (cJSON_IsNumber(it)) {
            if (f->type == TRAIN_OPT_INT && it->valuedouble == floor(it->valuedouble))
                snprintf(buf, sizeof buf, "%.0f", it->valuedouble);
            else
                snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
        } else {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" has the wrong type", path, it->string);
            goto done;
        }
        if ((rc = field_set(c, f, v, where, err))) goto done;
    }
done:
    cJSON_Delete(root);
    free(text);
    return rc;
}

char *train_config_json(const TrainConfig *c) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < N_FIELDS; i++) {
        const char *p = (const char *)c + fields[i].off;
        switch (fields[i].type) {
        case TRAIN_OPT_STR: cJSON_AddStringToObject(o, fields[i].key, p); break;
        case TRAIN_OPT_INT: cJSON_AddNumberToObject(o, fields[i].key, *(const int *)p); break;
        case TRAIN_OPT_DBL:
            if (fields[i].is_auto && *(const double *)p == 0)
                cJSON_AddStringToObject(o, fields[i].key, "auto");
            else
                cJSON_AddNumberToObject(o, fields[i].key, *(const double *)p);
            break;
        case TRAIN_OPT_BOOL:
            if (*(const int *)p == 2 && fields[i].alt)
                cJSON_AddStringToObject(o, fields[i].key, fields[i].alt);
            else
                cJSON_AddBoolToObject(o, fields[i].key, *(const int *)p);
            break;
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

void train_config_help(FILE *f) {
    for (int i = 0; i < N_FIELDS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s", fields[i].key);
        for (char *q = left + 2; *q; q++)
            if (*q == '_') *q = '-';
        fprintf(f, "  %-24s %s%s%s%s\n", left, fields[i].help, *fields[i].def ? " [" : "",
                fields[i].def, *fields[i].def ? "]" : "");
    }
}
