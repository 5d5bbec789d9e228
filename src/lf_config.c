/* lf_config.c: a LLaMA-Factory training YAML as a TrainConfig (see lf_config.h). The file is
 * read with libyaml (flat `key: value` pairs, as LLaMA-Factory's examples are; a list of
 * plain values joins with commas, as LLaMA-Factory splits them), each key is looked up in
 * lf_keys[] (LLaMA-Factory's hparams: model_args.py, data_args.py, finetuning_args.py,
 * training_args.py and Hugging Face's Seq2SeqTrainingArguments, at LLaMA-Factory ff6d4d12e),
 * then in tuna's own options, and the values go through train_config_set, so every range and
 * choice is checked where a flag's is. */
#include "lf_config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <yaml.h>

#include "xalloc.h"

#define LF_MAX_BYTES (1 << 20) /* a training config is a few hundred bytes */
#define LF_MAX_KEYS  512

typedef enum {
    LF_TO,      /* LLaMA-Factory's argument, tuna's option `arg` (its value as it is; with a
                   `why`, an empty value is refused with it) */
    LF_IGNORE,  /* changes nothing that is trained: accepted, listed in the notes */
    LF_ONLY,    /* accepted with a value in `arg` ("a|b", LLaMA-Factory's default or what tuna
                   does) or null; any other value is refused with `why` */
    LF_SPECIAL, /* read by lf_apply below */
} LfKind;

typedef struct LfKey {
    const char *key;
    LfKind kind;
    const char *arg;
    const char *why;
} LfKey;

#define NOT_IMPL(k, ok, why)                                                                       \
    { k, LF_ONLY, ok, why }
static const LfKey lf_keys[] = {
        /* --- model_args.py */
        {"model_name_or_path", LF_TO, "model", NULL},
        {"adapter_name_or_path", LF_SPECIAL, NULL, NULL},
        {"quantization_bit", LF_SPECIAL, NULL, NULL},
        {"quantization_type", LF_TO, "quantization_type", NULL},
        {"double_quantization", LF_TO, "double_quantization", NULL},
        NOT_IMPL("quantization_method", "bnb",
                 "tuna quantizes as bitsandbytes does (bnb); hqq, eetq and the others are not "
                 "implemented"),
        {"quantization_device_map", LF_IGNORE, NULL, NULL},
        {"disable_gradient_checkpointing", LF_SPECIAL, NULL, NULL},
        {"use_reentrant_gc", LF_IGNORE, NULL, NULL},
        {"flash_attn", LF_IGNORE, NULL, NULL},
        {"use_unsloth", LF_IGNORE, NULL, NULL},
        {"use_unsloth_gc", LF_IGNORE, NULL, NULL},
        {"enable_liger_kernel", LF_IGNORE, NULL, NULL},
        {"use_v1_kernels", LF_IGNORE, NULL, NULL}, /* fused kernels of the same math */
        {"trust_remote_code", LF_IGNORE, NULL, NULL},
        {"low_cpu_mem_usage", LF_IGNORE, NULL, NULL},
        {"cache_dir", LF_IGNORE, NULL, NULL},
        {"hf_hub_token", LF_IGNORE, NULL, NULL},
        {"ms_hub_token", LF_IGNORE, NULL, NULL},
        {"om_hub_token", LF_IGNORE, NULL, NULL},
        {"print_param_status", LF_IGNORE, NULL, NULL},
        {"infer_backend", LF_IGNORE, NULL, NULL},
        {"infer_dtype", LF_IGNORE, NULL, NULL},
        NOT_IMPL("model_revision", "main", "tuna reads the model folder as it is"),
        NOT_IMPL("use_fast_tokenizer", "true", "tuna's tokenizer is the fast one's"),
        NOT_IMPL("split_special_tokens", "false", "special tokens are always kept whole"),
        NOT_IMPL("resize_vocab", "false", "the vocabulary is not resized"),
        NOT_IMPL("add_tokens", "", "adding tokens is not implemented"),
        NOT_IMPL("add_special_tokens", "", "adding tokens is not implemented"),
        NOT_IMPL("rope_scaling", "", "RoPE scaling is the model's config.json's"),
        NOT_IMPL("shift_attn", "false", "LongLoRA's shift short attention is not implemented"),
        /* what upcasting gives, tuna always does: norm weights and logits are fp32 */
        {"upcast_layernorm", LF_IGNORE, NULL, NULL},
        {"upcast_lmhead_output", LF_IGNORE, NULL, NULL},
        NOT_IMPL("train_from_scratch", "false", "training starts from the model's weights"),
        NOT_IMPL("moe_aux_loss_coef", "", "mixture-of-experts models are not supported"),
        NOT_IMPL("mixture_of_depths", "", "mixture of depths is not implemented"),
        /* --- data_args.py */
        {"template", LF_TO, "template", NULL},
        {"dataset", LF_TO, "dataset", NULL},
        {"dataset_dir", LF_TO, "dataset_dir", NULL},
        {"cutoff_len", LF_TO, "cutoff_len", NULL},
        {"train_on_prompt", LF_TO, "train_on_prompt", NULL},
        {"mask_history", LF_TO, "mask_history", NULL},
        {"max_samples", LF_TO, "max_samples", NULL},
        {"val_size", LF_TO, "val_size", NULL},
        {"packing", LF_SPECIAL, NULL, NULL},
        {"neat_packing", LF_SPECIAL, NULL, NULL},
        {"overwrite_cache", LF_IGNORE, NULL, NULL},
        {"preprocessing_num_workers", LF_IGNORE, NULL, NULL},
        {"preprocessing_batch_size", LF_IGNORE, NULL, NULL},
        {"buffer_size", LF_IGNORE, NULL, NULL},
        {"eval_on_each_dataset", LF_IGNORE, NULL, NULL},
        {"eval_dataset", LF_SPECIAL, NULL, NULL},
        {"mix_strategy", LF_TO, "mix_strategy", NULL},
        {"interleave_probs", LF_TO, "interleave_probs", NULL},
        NOT_IMPL("streaming", "false", "streaming datasets are not implemented"),
        NOT_IMPL("tokenized_path", "", "pre-tokenized datasets are not read"),
        NOT_IMPL("ignore_pad_token_for_loss", "true", "pad tokens never train"),
        /* the why of an LF_TO row: its empty value is refused with it */
        {"default_system", LF_TO, "default_system",
         "an empty default_system (no system prompt where the template has one) is not "
         "implemented: tuna reads \"\" as the template's own; drop the key"},
        NOT_IMPL("enable_thinking", "true",
                 "reasoning templates are not implemented (tuna has no template that adds or "
                 "strips <think> blocks)"),
        NOT_IMPL("tool_format", "", "tool formats are the template's own"),
        NOT_IMPL("media_dir", "", "multimodal data is not supported"),
        /* --- finetuning_args.py */
        {"stage", LF_TO, "stage", NULL},
        {"finetuning_type", LF_SPECIAL, NULL, NULL},
        {"lora_rank", LF_TO, "lora_rank", NULL},
        {"lora_alpha", LF_SPECIAL, NULL, NULL},
        {"lora_dropout", LF_TO, "lora_dropout", NULL},
        {"lora_target", LF_TO, "lora_target", NULL},
        {"use_rslora", LF_TO, "use_rslora", NULL},
        {"use_dora", LF_TO, "use_dora", NULL},
        {"loraplus_lr_ratio", LF_TO, "loraplus_lr_ratio", NULL},
        {"pissa_init", LF_SPECIAL, NULL, NULL},
        {"pissa_iter", LF_SPECIAL, NULL, NULL},
        {"freeze_trainable_layers", LF_SPECIAL, NULL, NULL},
        {"pref_beta", LF_TO, "pref_beta", NULL},
        {"pref_ftx", LF_TO, "pref_ftx", NULL},
        {"pref_loss", LF_TO, "pref_loss", NULL},
        {"dpo_label_smoothing", LF_TO, "dpo_label_smoothing", NULL},
        {"simpo_gamma", LF_TO, "simpo_gamma", NULL},
        {"kto_chosen_weight", LF_TO, "kto_chosen_weight", NULL},
        {"kto_rejected_weight", LF_TO, "kto_rejected_weight", NULL},
        {"plot_loss", LF_IGNORE, NULL, NULL},
        {"compute_accuracy", LF_TO, "compute_accuracy", NULL},
        {"freeze_vision_tower", LF_IGNORE, NULL, NULL},
        {"freeze_multi_modal_projector", LF_IGNORE, NULL, NULL},
        NOT_IMPL("freeze_language_model", "false", "multimodal models are not supported"),
        {"freeze_trainable_modules", LF_TO, "freeze_trainable_modules", NULL},
        NOT_IMPL("freeze_extra_modules", "",
                 "training modules outside the layers is not implemented"),
        NOT_IMPL("additional_target", "", "modules_to_save is not implemented"),
        NOT_IMPL("create_new_adapter", "false",
                 "an adapter always continues training (adapter_name_or_path)"),
        {"pissa_convert", LF_TO, "pissa_convert", NULL},
        NOT_IMPL("pure_bf16", "false",
                 "bf16 without fp32 master weights is not implemented; bf16: true keeps them"),
        NOT_IMPL("use_llama_pro", "false", "LLaMA Pro is not implemented"),
        NOT_IMPL("use_galore", "false", "GaLore is not implemented"),
        NOT_IMPL("use_apollo", "false", "APOLLO is not implemented"),
        NOT_IMPL("use_badam", "false", "BAdam is not implemented"),
        NOT_IMPL("use_adam_mini", "false", "Adam-mini is not implemented"),
        NOT_IMPL("use_muon", "false", "Muon is not implemented"),
        {"use_dft_loss", LF_TO, "use_dft_loss", NULL},
        NOT_IMPL("use_asft_loss", "false", "the ASFT loss is not implemented"),
        {"use_eaft_loss", LF_TO, "use_eaft_loss", NULL},
        {"eaft_alpha", LF_TO, "eaft_alpha", NULL},
        {"disable_shuffling", LF_TO, "disable_shuffling", NULL},
        {"early_stopping_steps", LF_TO, "early_stopping_steps", NULL},
        NOT_IMPL("pref_bco_weight", "0|0.0", "the BCO term is not implemented"),
        NOT_IMPL("ld_alpha", "", "LD-DPO is not implemented"),
        NOT_IMPL("ref_model", "",
                 "the reference is the base (adapter off) or a frozen copy; another model is not "
                 "implemented"),
        NOT_IMPL("ref_model_adapters", "", "the reference is the base (adapter off)"),
        NOT_IMPL("ref_model_quantization_bit", "", "the reference is the base as loaded"),
        NOT_IMPL("reward_model", "", "PPO is not implemented"),
        /* --- training_args.py and Hugging Face's Seq2SeqTrainingArguments */
        {"output_dir", LF_TO, "output", NULL},
        {"per_device_train_batch_size", LF_TO, "batch_size", NULL},
        {"gradient_accumulation_steps", LF_TO, "grad_accum", NULL},
        {"learning_rate", LF_TO, "lr", NULL},
        {"num_train_epochs", LF_TO, "epochs", NULL},
        {"lr_scheduler_type", LF_TO, "lr_scheduler", NULL},
        {"max_steps", LF_SPECIAL, NULL, NULL},
        {"warmup_steps", LF_SPECIAL, NULL, NULL},
        {"warmup_ratio", LF_TO, "warmup_ratio", NULL},
        {"weight_decay", LF_TO, "weight_decay", NULL},
        {"max_grad_norm", LF_TO, "max_grad_norm", NULL},
        {"seed", LF_TO, "seed", NULL},
        {"bf16", LF_TO, "bf16", NULL},
        {"group_by_length", LF_TO, "group_by_length", NULL},
        {"eval_strategy", LF_SPECIAL, NULL, NULL},
        {"evaluation_strategy", LF_SPECIAL, NULL, NULL},
        {"eval_steps", LF_SPECIAL, NULL, NULL},
        {"save_strategy", LF_SPECIAL, NULL, NULL},
        {"save_steps", LF_TO, "save_steps", NULL},
        {"save_total_limit", LF_TO, "save_total_limit", NULL},
        {"logging_steps", LF_TO, "logging_steps", NULL},
        {"do_train", LF_ONLY, "true", "tuna train trains (do_train: true)"},
        {"do_eval", LF_IGNORE, NULL, NULL},
        NOT_IMPL("do_predict", "false", "predictions are `tuna eval`'s"),
        NOT_IMPL("predict_with_generate", "false", "predictions are `tuna eval`'s"),
        {"resume_from_checkpoint", LF_SPECIAL, NULL, NULL}, /* lf_config_resume */
        NOT_IMPL("fp16", "false", "fp16 mixed precision is not implemented; use bf16: true"),
        NOT_IMPL("fp8", "false",
                 "FP8 training is not implemented; bf16: true is tuna's mixed "
                 "precision"),
        NOT_IMPL("optim", "adamw_torch|adamw_torch_fused|adamw_hf",
                 "the optimizer is AdamW (adamw_torch)"),
        {"adam_beta1", LF_TO, "adam_beta1", NULL},
        {"adam_beta2", LF_TO, "adam_beta2", NULL},
        {"adam_epsilon", LF_TO, "adam_epsilon", NULL},
        {"lr_scheduler_kwargs", LF_TO, "lr_scheduler_kwargs", NULL},
        {"label_smoothing_factor", LF_TO, "label_smoothing_factor", NULL},
        {"neftune_noise_alpha", LF_TO, "neftune_noise_alpha", NULL},
        {"data_seed", LF_TO, "data_seed", NULL},
        {"load_best_model_at_end", LF_TO, "load_best_model_at_end", NULL},
        NOT_IMPL("average_tokens_across_devices", "true",
                 "the loss is normalised over every process's tokens"),
        {"dataloader_drop_last", LF_TO, "dataloader_drop_last", NULL},
        NOT_IMPL("push_to_hub", "false", "tuna does not upload"),
        {"overwrite_output_dir", LF_SPECIAL, NULL, NULL}, /* lf_config_overwrite */
        {"report_to", LF_IGNORE, NULL, NULL},
        {"logging_dir", LF_IGNORE, NULL, NULL},
        {"logging_strategy", LF_IGNORE, NULL, NULL},
        {"logging_first_step", LF_IGNORE, NULL, NULL},
        {"run_name", LF_IGNORE, NULL, NULL},
        {"ddp_timeout", LF_IGNORE, NULL, NULL},
        {"ddp_find_unused_parameters", LF_IGNORE, NULL, NULL},
        {"deepspeed", LF_IGNORE, NULL, NULL},
        {"fsdp", LF_IGNORE, NULL, NULL},
        {"save_only_model", LF_IGNORE, NULL, NULL},
        {"save_safetensors", LF_IGNORE, NULL, NULL},
        {"per_device_eval_batch_size", LF_IGNORE, NULL, NULL},
        {"dataloader_num_workers", LF_IGNORE, NULL, NULL},
        {"dataloader_pin_memory", LF_IGNORE, NULL, NULL},
        {"include_num_input_tokens_seen", LF_IGNORE, NULL, NULL},
        {"remove_unused_columns", LF_IGNORE, NULL, NULL},
        {"metric_for_best_model", LF_ONLY, "loss|eval_loss",
         "the best model is the one with the lowest eval loss (metric_for_best_model loss)"},
        {"greater_is_better", LF_ONLY, "false",
         "the best model is the one with the lowest eval loss (greater_is_better false)"},
        {"disable_tqdm", LF_IGNORE, NULL, NULL},
        {"log_level", LF_IGNORE, NULL, NULL},
        {"tf32", LF_IGNORE, NULL, NULL},
        {"torch_compile", LF_IGNORE, NULL, NULL},
        {"gradient_checkpointing", LF_IGNORE, NULL, NULL}, /* LLaMA-Factory turns it on itself */
};
#define N_LF_KEYS ((int)(sizeof lf_keys / sizeof lf_keys[0]))

static const LfKey *lf_find(const char *key) {
    for (int i = 0; i < N_LF_KEYS; i++)
        if (!strcmp(lf_keys[i].key, key)) return &lf_keys[i];
    return NULL;
}

/* The arguments of LLaMA-Factory features tuna does not implement, by prefix. */
static const char *const lf_unimpl_prefixes[][2] = {
        {"galore_", "GaLore"},
        {"apollo_", "APOLLO"},
        {"badam_", "BAdam"},
        {"ppo_", "PPO"},
        {"reward_model_", "PPO"},
        {"oft_", "OFT"},
        {"asft_", "the ASFT loss"},
        {"eaft_", "the EAFT loss"},
        {"kt_", "KTransformers"},
        {"image_", "multimodal data"},
        {"video_", "multimodal data"},
        {"audio_", "multimodal data"},
        {"ray_", "Ray"},
        {"export_", "llamafactory-cli export (use tuna export)"},
        {"fp8_", "FP8 training"},
        /* Megatron Bridge (megatron_bridge_args.py) */
        {"tensor_model_parallel", "Megatron's model parallelism"},
        {"pipeline_model_parallel", "Megatron's model parallelism"},
        {"virtual_pipeline_model_parallel", "Megatron's model parallelism"},
        {"expert_model_parallel", "Megatron's model parallelism"},
        {"context_parallel", "Megatron's model parallelism"},
        {"megatron_", "Megatron"},
};

static const char *lf_unimpl(const char *key) {
    for (size_t i = 0; i < sizeof lf_unimpl_prefixes / sizeof *lf_unimpl_prefixes; i++)
        if (!strncmp(key, lf_unimpl_prefixes[i][0], strlen(lf_unimpl_prefixes[i][0])))
            return lf_unimpl_prefixes[i][1];
    return NULL;
}

// --- the file: flat key: value pairs

typedef struct Pair {
    char *key, *val; /* val NULL: null (the key left at its default) */
    int line;
} Pair;

typedef struct Doc {
    const char *path;
    Pair *p;
    int n;
} Doc;

/* A plain scalar as YAML 1.1 reads it (PyYAML, OmegaConf): null and the boolean spellings.
 * Quoted scalars are strings as they are. */
static char *scalar_value(const yaml_event_t *e) {
    const char *s = (const char *)e->data.scalar.value;
    if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return xstrdup(s);
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes",
                                      "YES",  "on",   "On",   "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No",
                                     "NO",    "off",   "Off",   "OFF"};
    for (size_t i = 0; i < sizeof nulls / sizeof *nulls; i++)
        if (!strcmp(s, nulls[i])) return NULL;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!strcmp(s, yes[i])) return xstrdup("true");
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (!strcmp(s, no[i])) return xstrdup("false");
    return xstrdup(s);
}

static void doc_free(Doc *d) {
    for (int i = 0; i < d->n; i++) {
        free(d->p[i].key);
        free(d->p[i].val);
    }
    free(d->p);
}

/* The next event, or an error naming the file, line and column of libyaml's complaint. */
static int next_event(yaml_parser_t *y, yaml_event_t *e, const char *path, TunaErr *err) {
    if (yaml_parser_parse(y, e)) return 0;
    return tuna_errf(err, TUNA_EFORMAT, "%s:%zu:%zu: YAML: %s%s%s", path, y->problem_mark.line + 1,
                     y->problem_mark.column + 1, y->problem ? y->problem : "malformed",
                     y->context ? " " : "", y->context ? y->context : "");
}

static int at(TunaErr *err, const char *path, const yaml_event_t *e, const char *what) {
    return tuna_errf(err, TUNA_EFORMAT, "%s:%zu:%zu: %s", path, e->start_mark.line + 1,
                     e->start_mark.column + 1, what);
}

/* A mapping of plain values (after its start event) as a JSON object's text: numbers, true,
 * false and null as such, everything else a string (lr_scheduler_kwargs, which Hugging Face
 * takes as a dict or as its JSON text). */
static int read_json_map(yaml_parser_t *y, Doc *d, const char *key, char **out, TunaErr *err) {
    cJSON *obj = cJSON_CreateObject();
    char msg[300];
    int rc = 0;
    for (;;) {
        yaml_event_t k, v;
        if ((rc = next_event(y, &k, d->path, err))) break;
        if (k.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&k);
            break;
        }
        if (k.type != YAML_SCALAR_EVENT || (rc = next_event(y, &v, d->path, err))) {
            if (!rc) {
                snprintf(msg, sizeof msg, "%s: a key of plain text", key);
                rc = at(err, d->path, &k, msg);
            }
            yaml_event_delete(&k);
            break;
        }
        const char *name = (const char *)k.data.scalar.value;
        if (v.type != YAML_SCALAR_EVENT || v.data.scalar.tag) {
            snprintf(msg, sizeof msg, "%s: %s: a plain value (a number or a word)", key, name);
            rc = at(err, d->path, &v, msg);
        } else {
            char *val = scalar_value(&v), *end = NULL;
            double num = val ? strtod(val, &end) : 0;
            int plain = v.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            cJSON *item = !val                                      ? cJSON_CreateNull()
                          : plain && !strcmp(val, "true")           ? cJSON_CreateTrue()
                          : plain && !strcmp(val, "false")          ? cJSON_CreateFalse()
                          : plain && *val && !*end && isfinite(num) ? cJSON_CreateNumber(num)
                                                                    : cJSON_CreateString(val);
            cJSON_AddItemToObject(obj, name, item);
            free(val);
        }
        yaml_event_delete(&k);
        yaml_event_delete(&v);
        if (rc) break;
    }
    if (!rc) *out = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    return rc;
}

/* A value: a scalar, or a list of scalars joined with commas (LLaMA-Factory splits dataset,
 * lora_target, ... at commas). *out NULL for null. */
static int read_value(yaml_parser_t *y, Doc *d, const char *key, char **out, TunaErr *err) {
    yaml_event_t e;
    *out = NULL;
    if (next_event(y, &e, d->path, err)) return TUNA_EFORMAT;
    int rc = 0;
    char msg[300];
    if (e.type == YAML_SCALAR_EVENT) {
        if (e.data.scalar.tag)
            rc = at(err, d->path, &e, "explicit YAML tags (!!...) are not read");
        else
            *out = scalar_value(&e);
    } else if (e.type == YAML_SEQUENCE_START_EVENT) {
        size_t len = 0, cap = 64;
        char *s = xmalloc(cap);
        s[0] = '\0';
        for (;;) {
            yaml_event_t v;
            if ((rc = next_event(y, &v, d->path, err))) break;
            if (v.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&v);
                break;
            }
            if (v.type != YAML_SCALAR_EVENT || v.data.scalar.tag) {
                snprintf(msg, sizeof msg, "%s: a list holds plain values only", key);
                rc = at(err, d->path, &v, msg);
                yaml_event_delete(&v);
                break;
            }
            const char *t = (const char *)v.data.scalar.value;
            size_t tl = strlen(t);
            while (len + tl + 2 > cap)
                s = xrealloc(s, cap *= 2);
            if (len) s[len++] = ',';
            memcpy(s + len, t, tl + 1);
            len += tl;
            yaml_event_delete(&v);
        }
        if (rc)
            free(s);
        else
            *out = s;
    } else if (e.type == YAML_MAPPING_START_EVENT && !strcmp(key, "lr_scheduler_kwargs")) {
        rc = read_json_map(y, d, key, out, err);
    } else if (e.type == YAML_ALIAS_EVENT) {
        snprintf(msg, sizeof msg, "%s: YAML aliases (*name) are not read", key);
        rc = at(err, d->path, &e, msg);
    } else {
        snprintf(msg, sizeof msg,
                 "%s: a nested mapping is not read (LLaMA-Factory's files are flat key: value)",
                 key);
        rc = at(err, d->path, &e, msg);
    }
    yaml_event_delete(&e);
    return rc;
}

static int read_doc(const char *path, Doc *d, TunaErr *err) {
    size_t len = 0;
    char *text = xread_file(path, &len);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    if (len > LF_MAX_BYTES) {
        free(text);
        return tuna_errf(err, TUNA_EFORMAT, "%s: %zu bytes: a training config is at most %d", path,
                         len, LF_MAX_BYTES);
    }
    yaml_parser_t y;
    yaml_parser_initialize(&y);
    yaml_parser_set_input_string(&y, (const unsigned char *)text, len);
    d->path = path;
    int rc = 0, state = 0; /* 0 before the mapping, 1 in it, 2 after it */
    for (;;) {
        yaml_event_t e;
        if ((rc = next_event(&y, &e, path, err))) break;
        yaml_event_type_t t = e.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&e);
            if (state == 0) rc = tuna_errf(err, TUNA_EFORMAT, "%s: no settings in the file", path);
            break;
        }
        if (t == YAML_STREAM_START_EVENT || t == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&e);
            continue;
        }
        if (t == YAML_DOCUMENT_START_EVENT) {
            if (state == 2) rc = at(err, path, &e, "a second YAML document (---): one only");
            yaml_event_delete(&e);
            if (rc) break;
            continue;
        }
        if (state == 0) {
            if (t != YAML_MAPPING_START_EVENT)
                rc = at(err, path, &e, "the file must be a mapping of key: value lines");
            state = 1;
        } else if (state == 1 && t == YAML_MAPPING_END_EVENT) {
            state = 2;
        } else if (state == 1 && t == YAML_SCALAR_EVENT && !e.data.scalar.tag &&
                   e.data.scalar.length > 0) {
            if (d->n == LF_MAX_KEYS) {
                rc = at(err, path, &e, "too many keys");
            } else {
                char *key = xstrdup((const char *)e.data.scalar.value), *val = NULL;
                int line = (int)e.start_mark.line + 1;
                for (int i = 0; i < d->n && !rc; i++)
                    if (!strcmp(d->p[i].key, key))
                        rc = tuna_errf(err, TUNA_EFORMAT, "%s:%d: %s: set twice (line %d too)",
                                       path, line, key, d->p[i].line);
                if (!rc) rc = read_value(&y, d, key, &val, err);
                if (rc) {
                    free(key);
                } else {
                    if (!d->p) d->p = xmalloc(sizeof *d->p * LF_MAX_KEYS);
                    d->p[d->n++] = (Pair){key, val, line};
                }
            }
        } else {
            rc = at(err, path, &e, "expected a key: value line");
        }
        yaml_event_delete(&e);
        if (rc) break;
    }
    yaml_parser_delete(&y);
    free(text);
    return rc;
}

// --- the settings

typedef struct Set {
    const char *opt; /* tuna's option */
    char *val;
    int line;         /* the file's line, 0 for a LLaMA-Factory default */
    const char *from; /* the file's key */
} Set;

typedef struct Apply {
    const char *path;
    Set s[LF_MAX_KEYS + 32];
    int n;
    char *notes;
    size_t cap;
} Apply;

/* "what (why); " onto the notes */
static void note(Apply *a, const char *what, const char *why) {
    if (!a->notes || !a->cap) return;
    size_t len = strlen(a->notes);
    if (len + 1 >= a->cap) return;
    snprintf(a->notes + len, a->cap - len, "%s (%s); ", what, why);
}

static Set *find_set(Apply *a, const char *opt) {
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->s[i].opt, opt)) return &a->s[i];
    return NULL;
}

/* opt = val from the file's key at line (two keys giving one option: refused) */
static int put(Apply *a, const char *opt, const char *val, const Pair *p, TunaErr *err) {
    Set *s = find_set(a, opt);
    if (s && s->line)
        return tuna_errf(err, TUNA_EINVAL, "%s:%d: %s: sets %s, as %s on line %d does", a->path,
                         p->line, p->key, opt, s->from, s->line);
    if (!s) s = &a->s[a->n++];
    free(s->val);
    *s = (Set){opt, xstrdup(val), p ? p->line : 0, p ? p->key : NULL};
    return 0;
}

/* A LLaMA-Factory default where tuna's differs, unless the file set the option. */
static void assume(Apply *a, const char *opt, const char *val, const char *why) {
    if (find_set(a, opt)) return;
    a->s[a->n++] = (Set){opt, xstrdup(val), 0, NULL};
    char buf[160];
    snprintf(buf, sizeof buf, "%s %s", opt, val);
    note(a, buf, why);
}

static const Pair *pair_of(const Doc *d, const char *key) {
    for (int i = 0; i < d->n; i++)
        if (!strcmp(d->p[i].key, key)) return d->p[i].val ? &d->p[i] : NULL;
    return NULL;
}

static int bad(const Apply *a, const Pair *p, TunaErr *err, const char *why) {
    return tuna_errf(err, TUNA_EUNSUP, "%s:%d: %s %s: %s", a->path, p->line, p->key, p->val, why);
}

/* v one of "a|b|c" (case-insensitive); "" accepts nothing (only null, which never gets here) */
static int val_in(const char *v, const char *list) {
    size_t n = strlen(v);
    for (const char *q = list; *q;) {
        size_t m = strcspn(q, "|");
        if (m == n && !strncasecmp(q, v, n)) return 1;
        q += m + (q[m] == '|');
    }
    return 0;
}

/* p's value as an integer within +-1e9 into *v; 0 when it is not one (tuna's own check of
 * the option then says why, with the line) */
static int int_of(const Pair *p, long *v) {
    char *end;
    errno = 0;
    *v = strtol(p->val, &end, 10);
    return end != p->val && !*end && !errno && *v >= -1000000000L && *v <= 1000000000L;
}

static int is_true(const Pair *p) {
    return p && !strcmp(p->val, "true");
}

static int num_of(const Apply *a, const Pair *p, double *v, TunaErr *err) {
    char *end;
    errno = 0;
    *v = strtod(p->val, &end);
    if (end == p->val || *end || errno)
        return tuna_errf(err, TUNA_EINVAL, "%s:%d: %s: \"%s\" is not a number", a->path, p->line,
                         p->key, p->val);
    return 0;
}

/* tuna's choices for options whose value is a name (checked here, where the line is known) */
static const char *const lf_choices[][3] = {
        {"stage", "sft|pt|dpo|kto|rm",
         "tuna's stages are sft, pt, dpo, kto and rm (PPO is not implemented)"},
        {"lr_scheduler",
         "constant|constant_with_warmup|linear|cosine|cosine_with_restarts|polynomial|"
         "inverse_sqrt|cosine_with_min_lr|cosine_warmup_with_min_lr|warmup_stable_decay|"
         "reduce_lr_on_plateau",
         "the greedy schedule is not implemented"},
        {"pref_loss", "sigmoid|hinge|ipo|orpo|simpo",
         "tuna's dpo losses are sigmoid, hinge, ipo, orpo and simpo"},
        {"quantization_type", "nf4|fp4|q4_0|q4_1|q8_0",
         "tuna's 4-bit types are nf4 and fp4 (bitsandbytes'), q4_0 and q4_1 (GGUF's)"},
};

static int check_choice(const Apply *a, const Pair *p, const char *opt, TunaErr *err) {
    for (size_t i = 0; i < sizeof lf_choices / sizeof *lf_choices; i++)
        if (!strcmp(lf_choices[i][0], opt) && !val_in(p->val, lf_choices[i][1]))
            return bad(a, p, err, lf_choices[i][2]);
    return 0;
}

/* quantization_bit 8 is bitsandbytes' LLM.int8 in LLaMA-Factory: refused unless the file asks
 * for tuna's Q8_0 (quantization_type q8_0). *dq: double quantization by LLaMA-Factory's default
 * (4 bits in nf4 or fp4). */
static int lf_quant(const Apply *a, const Pair *qb, const Pair *qt, int *dq, TunaErr *err) {
    *dq = qb && !strcmp(qb->val, "4") && (!qt || val_in(qt->val, "nf4|fp4"));
    if (qb && !strcmp(qb->val, "8") && (!qt || strcasecmp(qt->val, "q8_0")))
        return bad(a, qb, err,
                   "in LLaMA-Factory that is bitsandbytes' LLM.int8, which tuna does not "
                   "implement; tuna's 8-bit base is GGUF's Q8_0 (blocks of 32 with a scale): "
                   "add quantization_type: q8_0 to use that");
    return 0;
}

/* A key neither table holds: an argument of a feature tuna lacks, or unknown (what: where
 * its own options are listed) */
static int lf_unknown(const Apply *a, const Pair *p, const char *what, TunaErr *err) {
    const char *feature = lf_unimpl(p->key);
    if (feature)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s:%d: %s: an argument of %s, which tuna does not implement", a->path,
                         p->line, p->key, feature);
    return tuna_errf(err, TUNA_EINVAL, "%s:%d: %s: not %s", a->path, p->line, p->key, what);
}

/* "a; b; " -> "a; b" */
static void notes_end(char *notes, size_t cap) {
    if (!notes || !cap) return;
    size_t n = strlen(notes);
    while (n && (notes[n - 1] == ' ' || notes[n - 1] == ';'))
        notes[--n] = '\0';
}

/* The keys read together (LF_SPECIAL), then LLaMA-Factory's defaults where tuna's differ. */
static int lf_special(Apply *a, const Doc *d, TunaErr *err) {
    const Pair *p;
    char buf[64];
    int rc = 0;
    if ((p = pair_of(d, "finetuning_type"))) {
        if (!val_in(p->val, "lora|freeze|full"))
            return bad(a, p, err, "tuna implements lora, freeze and full (oft is not)");
        if ((rc = put(a, "method", p->val, p, err))) return rc;
    }
    if ((p = pair_of(d, "adapter_name_or_path"))) {
        if (strchr(p->val, ','))
            return bad(a, p, err,
                       "several adapters (all but the last merged first) are not implemented");
        if ((rc = put(a, "adapter", p->val, p, err))) return rc;
    }
    const Pair *qb = pair_of(d, "quantization_bit"), *qt = pair_of(d, "quantization_type");
    int dq;
    if ((rc = lf_quant(a, qb, qt, &dq, err))) return rc;
    if (qb && !strcmp(qb->val, "8")) /* quantization_type q8_0 is what bit 8 means: dropped */
        find_set(a, "quantization_type")->opt = "quantization_type_q8";
    if (qb && (rc = put(a, "quantization_bit", qb->val, qb, err))) return rc;
    if (dq) assume(a, "double_quantization", "true", "LLaMA-Factory's default with 4 bits");
    if ((p = pair_of(d, "disable_gradient_checkpointing")) &&
        (rc = put(a, "gradient_checkpointing", is_true(p) ? "false" : "true", p, err)))
        return rc;
    assume(a, "gradient_checkpointing", "true", "LLaMA-Factory turns it on: the same numbers");
    if ((p = pair_of(d, "lora_alpha"))) { /* `lora_alpha or lora_rank * 2`: 0 is unset */
        double v;
        if ((rc = num_of(a, p, &v, err)) || (v != 0 && (rc = put(a, "lora_alpha", p->val, p, err))))
            return rc;
    }
    const Pair *rk = pair_of(d, "lora_rank");
    long rank = 8;
    if (!rk || int_of(rk, &rank)) { /* a rank that is no number is refused with its line */
        snprintf(buf, sizeof buf, "%ld", 2 * rank);
        assume(a, "lora_alpha", buf, "lora_rank x 2, LLaMA-Factory's default");
    }
    if ((p = pair_of(d, "pissa_init")) && is_true(p)) {
        const Pair *it = pair_of(d, "pissa_iter");
        if (!it || strcmp(it->val, "-1"))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s:%d: pissa_init: LLaMA-Factory runs peft's fast SVD "
                             "(pissa_niter_%s), which tuna does not implement; pissa_iter: -1 "
                             "asks for the exact SVD that tuna computes",
                             a->path, p->line, it ? it->val : "16");
        if ((rc = put(a, "init_lora_weights", "pissa", p, err))) return rc;
    }
    if ((p = pair_of(d, "freeze_trainable_layers"))) {
        if (p->val[0] == '-')
            return bad(a, p, err,
                       "LLaMA-Factory trains the first layers then; tuna's freeze trains the last "
                       "ones (a positive count)");
        if ((rc = put(a, "freeze_layers", p->val, p, err))) return rc;
    }
    const Pair *pk = pair_of(d, "packing"), *np = pair_of(d, "neat_packing");
    int packed = is_true(pk) || is_true(np);
    if (is_true(np)) {
        if ((rc = put(a, "packing", "neat", np, err))) return rc;
    } else if (pk && (rc = put(a, "packing", pk->val, pk, err))) {
        return rc;
    }
    if ((p = pair_of(d, "max_steps")) &&
        (rc = put(a, "max_steps", strcmp(p->val, "-1") ? p->val : "0", p, err)))
        return rc;
    if ((p = pair_of(d, "warmup_steps"))) { /* transformers 5: below 1, a ratio */
        double v;
        if ((rc = num_of(a, p, &v, err))) return rc;
        if (v > 0 && v < 1)
            rc = put(a, "warmup_ratio", p->val, p, err);
        else
            rc = put(a, "warmup_steps", p->val, p, err);
        if (rc) return rc;
    }
    if ((p = pair_of(d, "eval_dataset"))) { /* LLaMA-Factory refuses it beside a val_size */
        const Pair *vs = pair_of(d, "val_size");
        if (vs && strtod(vs->val, NULL) > 1e-6)
            return tuna_errf(err, TUNA_EINVAL,
                             "%s:%d: eval_dataset and val_size (line %d) both choose the eval "
                             "set; keep one",
                             a->path, p->line, vs->line);
        if ((rc = put(a, "eval_dataset", p->val, p, err))) return rc;
    }
    const Pair *es = pair_of(d, "eval_strategy");
    if (!es) es = pair_of(d, "evaluation_strategy");
    if (es && val_in(es->val, "steps")) {
        const Pair *st = pair_of(d, "eval_steps");
        if (!st) st = pair_of(d, "logging_steps");
        if ((rc = put(a, "eval_steps", st ? st->val : "500", st ? st : es, err))) return rc;
    } else if (es && val_in(es->val, "epoch")) {
        if ((rc = put(a, "eval_strategy", "epoch", es, err))) return rc;
    } else if (es && !val_in(es->val, "no|false")) { /* a plain no is YAML 1.1's false */
        return bad(a, es, err, "eval_strategy: must be no, steps or epoch");
    }
    assume(a, "eval_steps", "0", "eval_strategy no: evaluated at the end only");
    if ((p = pair_of(d, "save_strategy"))) {
        if (val_in(p->val, "no|false")) { /* save_steps does not count then */
            Set *s = find_set(a, "save_steps");
            if (s) {
                free(s->val);
                s->val = xstrdup("0");
            } else if ((rc = put(a, "save_steps", "0", p, err))) {
                return rc;
            }
        } else if (val_in(p->val, "epoch")) {
            if ((rc = put(a, "save_strategy", "epoch", p, err))) return rc;
        } else if (val_in(p->val, "best")) {
            if ((rc = put(a, "save_strategy", "best", p, err))) return rc;
        } else if (!val_in(p->val, "steps")) {
            return bad(a, p, err, "save_strategy: must be no, steps, epoch or best");
        }
    }
    assume(a, "save_steps", "500", "Hugging Face's default");
    assume(a, "lr", "5e-5", "Hugging Face's default learning_rate");
    assume(a, "lr_scheduler", "linear", "Hugging Face's default lr_scheduler_type");
    assume(a, "val_size", "0", "LLaMA-Factory's default");
    struct stat st; /* LLaMA-Factory's dataset_dir is data, where a checkout keeps it */
    if (!stat("data/dataset_info.json", &st))
        assume(a, "dataset_dir", "data", "LLaMA-Factory's default, found here");
    assume(a, "template", "auto:empty",
           "unset: the model's chat template, or LLaMA-Factory's empty template without one");
    const Pair *cl = pair_of(d, "cutoff_len");
    if (packed) { /* DataArguments.__post_init__: cutoff_len -= 1 when packing is set */
        Set *s = find_set(a, "cutoff_len");
        long len = 2048;
        if (cl && !int_of(cl, &len)) return 0; /* refused with its line when set */
        snprintf(buf, sizeof buf, "%ld", len - 1);
        if (s) {
            free(s->val);
            s->val = xstrdup(buf);
        } else {
            a->s[a->n++] = (Set){"cutoff_len", xstrdup(buf), 0, NULL};
        }
        char what[96];
        snprintf(what, sizeof what, "cutoff_len %s", buf);
        note(a, what, "LLaMA-Factory shortens it by one when packing");
    } else {
        assume(a, "cutoff_len", "2048", "LLaMA-Factory's default");
    }
    return 0;
}

static int lf_apply(Apply *a, const Doc *d, TunaErr *err) {
    char ignored[1024] = "";
    for (int i = 0; i < d->n; i++) {
        const Pair *p = &d->p[i];
        const LfKey *k = lf_find(p->key);
        int rc = 0;
        if (!k && (lf_unimpl(p->key) || !train_option_find(p->key)))
            return lf_unknown(a, p,
                              "a LLaMA-Factory training argument tuna knows, nor a tuna option "
                              "(tuna train --help)",
                              err);
        if (!k) {
            if (p->val) rc = put(a, p->key, p->val, p, err);
        } else if (k->kind == LF_TO) {
            if (p->val && !*p->val && k->why) return bad(a, p, err, k->why);
            if (p->val && !(rc = check_choice(a, p, k->arg, err)))
                rc = put(a, k->arg, p->val, p, err);
        } else if (k->kind == LF_ONLY) {
            if (p->val && !val_in(p->val, k->arg)) return bad(a, p, err, k->why);
        } else if (k->kind == LF_IGNORE) {
            size_t len = strlen(ignored);
            snprintf(ignored + len, sizeof ignored - len, "%s%s", len ? ", " : "", p->key);
        }
        if (rc) return rc;
    }
    int rc = lf_special(a, d, err);
    if (!rc && ignored[0]) note(a, ignored, "ignored: they change nothing that trains");
    return rc;
}

int lf_config_is_yaml(const char *path) {
    size_t n = path ? strlen(path) : 0;
    return (n > 5 && !strcasecmp(path + n - 5, ".yaml")) ||
           (n > 4 && !strcasecmp(path + n - 4, ".yml"));
}

int lf_config_load(TrainConfig *c, const char *path, char *notes, size_t cap, TunaErr *err) {
    Doc d = {0};
    Apply *a = xcalloc(1, sizeof *a);
    a->path = path;
    a->notes = notes;
    a->cap = cap;
    if (notes && cap) notes[0] = '\0';
    int rc = read_doc(path, &d, err);
    if (!rc) rc = lf_apply(a, &d, err);
    for (int i = 0; !rc && i < a->n; i++) {
        const Set *s = &a->s[i];
        if (!strcmp(s->opt, "quantization_type_q8")) continue; /* quantization_bit 8 says it */
        TunaErr e = {0};
        if (!train_config_set(c, s->opt, s->val, &e)) continue;
        if (s->line)
            rc = tuna_errf(err, e.code, "%s:%d: %s: %s", path, s->line, s->from, e.msg);
        else
            rc = tuna_errf(err, e.code, "%s: LLaMA-Factory's default %s %s: %s", path, s->opt,
                           s->val, e.msg);
    }
    for (int i = 0; i < a->n; i++)
        free(a->s[i].val);
    free(a);
    doc_free(&d);
    notes_end(notes, cap);
    return rc;
}

int lf_config_run_dir(const char *path, int *overwrite, int *resume, char *out, size_t cap,
                      TunaErr *err) {
    Doc d = {0};
    int rc = read_doc(path, &d, err);
    *overwrite = !rc && is_true(pair_of(&d, "overwrite_output_dir"));
    *resume = 0;
    const Pair *p = rc ? NULL : pair_of(&d, "resume_from_checkpoint");
    if (p && p->val && strcmp(p->val, "false")) {
        snprintf(out, cap, "%s", strcmp(p->val, "true") ? p->val : "");
        *resume = 1;
    }
    doc_free(&d);
    return rc;
}

// --- llamafactory-cli export and chat files, as tuna export / tuna chat flags

static const LfKey lf_export_keys[] = {
        {"model_name_or_path", LF_TO, "--model", NULL},
        {"adapter_name_or_path", LF_SPECIAL, NULL, NULL},
        {"export_dir", LF_TO, "--out", NULL},
        {"export_size", LF_TO, "--export-size", NULL},
        {"infer_dtype", LF_SPECIAL, NULL, NULL},
        {"template", LF_IGNORE, NULL, NULL},
        {"export_device", LF_IGNORE, NULL, NULL},
        {"trust_remote_code", LF_IGNORE, NULL, NULL},
        {"finetuning_type", LF_IGNORE, NULL, NULL},
        NOT_IMPL("export_legacy_format", "false", ".bin files are not written (safetensors)"),
        NOT_IMPL("export_quantization_bit", "",
                 "GPTQ quantization of the export is not implemented (tuna export --format gguf "
                 "--quant q4_k quantizes for llama.cpp)"),
        NOT_IMPL("export_quantization_dataset", "", "GPTQ quantization is not implemented"),
        NOT_IMPL("export_quantization_nsamples", "128", "GPTQ quantization is not implemented"),
        NOT_IMPL("export_quantization_maxlen", "1024", "GPTQ quantization is not implemented"),
        NOT_IMPL("export_hub_model_id", "", "tuna does not upload"),
        NOT_IMPL("quantization_bit", "",
                 "merging into a quantized model is refused by LLaMA-Factory too; drop it"),
        NOT_IMPL("stage", "sft|pt|dpo|kto", "a reward model's value head is not exported"),
};

static const LfKey lf_chat_keys[] = {
        {"model_name_or_path", LF_SPECIAL, NULL, NULL},
        {"adapter_name_or_path", LF_SPECIAL, NULL, NULL},
        {"template", LF_SPECIAL, NULL, NULL},
        {"default_system", LF_TO, "--system", NULL},
        {"infer_dtype", LF_SPECIAL, NULL, NULL},
        {"do_sample", LF_SPECIAL, NULL, NULL},
        {"temperature", LF_SPECIAL, NULL, NULL},
        {"top_p", LF_SPECIAL, NULL, NULL},
        {"top_k", LF_SPECIAL, NULL, NULL},
        {"max_new_tokens", LF_TO, "--max-new-tokens", NULL},
        {"quantization_bit", LF_SPECIAL, NULL, NULL},
        {"quantization_type", LF_SPECIAL, NULL, NULL},
        {"double_quantization", LF_SPECIAL, NULL, NULL},
        {"infer_backend", LF_IGNORE, NULL, NULL},
        {"trust_remote_code", LF_IGNORE, NULL, NULL},
        {"finetuning_type", LF_IGNORE, NULL, NULL},
        {"max_length", LF_IGNORE, NULL, NULL},
        {"length_penalty", LF_IGNORE, NULL, NULL},
        {"flash_attn", LF_IGNORE, NULL, NULL},
        {"vllm_maxlen", LF_IGNORE, NULL, NULL},
        {"vllm_gpu_util", LF_IGNORE, NULL, NULL},
        {"vllm_enforce_eager", LF_IGNORE, NULL, NULL},
        {"vllm_max_lora_rank", LF_IGNORE, NULL, NULL},
        NOT_IMPL("repetition_penalty", "1|1.0", "tuna chat has no repetition penalty"),
        NOT_IMPL("num_beams", "1", "beam search is not implemented"),
        NOT_IMPL("skip_special_tokens", "true", "special tokens are not shown"),
        NOT_IMPL("enable_thinking", "true",
                 "reasoning templates are not implemented (no template adds or strips <think>)"),
        NOT_IMPL("quantization_method", "bnb", "tuna quantizes as bitsandbytes does (bnb)"),
};

typedef struct ArgList {
    char **v;
    int n, cap;
} ArgList;

static void arg_add(ArgList *l, const char *flag, const char *val) {
    if (l->n + 2 > l->cap) l->v = xrealloc(l->v, sizeof *l->v * (size_t)(l->cap = l->cap * 2 + 8));
    l->v[l->n++] = xstrdup(flag);
    if (val) l->v[l->n++] = xstrdup(val);
}

void lf_config_args_free(char **argv, int argc) {
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
}

/* infer_dtype's names to tuna's (export: --export-dtype, chat: --dtype) */
static int lf_dtype(const Apply *a, const Pair *p, LfCommand cmd, ArgList *l, TunaErr *err) {
    static const char *const map[][2] = {
            {"auto", "auto"}, {"float32", "fp32"}, {"bfloat16", "bf16"}, {"float16", "f16"}};
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
        if (strcmp(p->val, map[i][0])) continue;
        if (cmd == LF_CMD_EXPORT) {
            arg_add(l, "--export-dtype", map[i][1]);
        } else if (i == 3) {
            return bad(a, p, err, "an f16 copy of the model is not implemented (bfloat16 is)");
        } else if (i > 0) {
            arg_add(l, "--dtype", map[i][1]);
        }
        return 0;
    }
    return bad(a, p, err, "expected auto, float32, bfloat16 or float16");
}

/* The chat's keys read together: the model as the operand, sampling with LLaMA-Factory's
 * defaults, a 4- or 8-bit base, the template. */
static int lf_chat_special(Apply *a, const Doc *d, ArgList *l, TunaErr *err) {
    const Pair *p;
    if ((p = pair_of(d, "template")))
        arg_add(l, "--template", p->val);
    else {
        arg_add(l, "--template", "auto:empty");
        note(a, "template auto:empty",
             "unset: the model's chat template, or LLaMA-Factory's empty");
    }
    if ((p = pair_of(d, "do_sample")) && !is_true(p)) {
        arg_add(l, "--temperature", "0"); /* greedy: temperature, top_p, top_k unused */
    } else {
        static const char *const samp[][4] = {{"temperature", "--temperature", "0.95"},
                                              {"top_p", "--top-p", "0.7"},
                                              {"top_k", "--top-k", "50"}};
        for (int i = 0; i < 3; i++) {
            p = pair_of(d, samp[i][0]);
            arg_add(l, samp[i][1], p ? p->val : samp[i][2]);
            if (!p) {
                char what[64];
                snprintf(what, sizeof what, "%s %s", samp[i][0], samp[i][2]);
                note(a, what, "LLaMA-Factory's default");
            }
        }
    }
    if (!pair_of(d, "max_new_tokens")) {
        arg_add(l, "--max-new-tokens", "1024");
        note(a, "max_new_tokens 1024", "LLaMA-Factory's default");
    }
    const Pair *qb = pair_of(d, "quantization_bit"), *qt = pair_of(d, "quantization_type"),
               *dq = pair_of(d, "double_quantization");
    int nf, rc = lf_quant(a, qb, qt, &nf, err);
    if (rc) return rc;
    if (qb) arg_add(l, "--quantization-bit", qb->val);
    if (qb && qt && strcmp(qb->val, "8")) arg_add(l, "--quantization-type", qt->val);
    if (nf && (!dq || is_true(dq))) arg_add(l, "--double-quantization", NULL);
    return 0;
}

int lf_config_args(const char *path, LfCommand cmd, char ***argv, int *argc, char *notes,
                   size_t cap, TunaErr *err) {
    const LfKey *tab = cmd == LF_CMD_EXPORT ? lf_export_keys : lf_chat_keys;
    int ntab = cmd == LF_CMD_EXPORT ? (int)(sizeof lf_export_keys / sizeof *lf_export_keys)
                                    : (int)(sizeof lf_chat_keys / sizeof *lf_chat_keys);
    const char *what =
            cmd == LF_CMD_EXPORT
                    ? "an argument of llamafactory-cli export that tuna knows (tuna export --help)"
                    : "an argument of llamafactory-cli chat that tuna knows (tuna chat --help)";
    Doc d = {0};
    Apply *a = xcalloc(1, sizeof *a);
    a->path = path;
    a->notes = notes;
    a->cap = cap;
    if (notes && cap) notes[0] = '\0';
    ArgList l = {0};
    char ignored[1024] = "";
    int rc = read_doc(path, &d, err);
    for (int i = 0; !rc && i < d.n; i++) {
        const Pair *p = &d.p[i];
        const LfKey *k = NULL;
        for (int j = 0; j < ntab && !k; j++)
            if (!strcmp(tab[j].key, p->key)) k = &tab[j];
        if (!k) {
            rc = lf_unknown(a, p, what, err);
        } else if (k->kind == LF_TO && p->val) {
            arg_add(&l, k->arg, p->val);
        } else if (k->kind == LF_ONLY && p->val && !val_in(p->val, k->arg)) {
            rc = bad(a, p, err, k->why);
        } else if (k->kind == LF_IGNORE) {
            size_t len = strlen(ignored);
            snprintf(ignored + len, sizeof ignored - len, "%s%s", len ? ", " : "", p->key);
        }
    }
    const Pair *p;
    if (!rc && (p = pair_of(&d, "adapter_name_or_path"))) {
        if (strchr(p->val, ','))
            rc = bad(a, p, err,
                     "several adapters (all but the last merged first) are not implemented");
        else
            arg_add(&l, "--adapter", p->val);
    }
    if (!rc && (p = pair_of(&d, "infer_dtype"))) rc = lf_dtype(a, p, cmd, &l, err);
    if (!rc && cmd == LF_CMD_CHAT) rc = lf_chat_special(a, &d, &l, err);
    const Pair *model = pair_of(&d, "model_name_or_path");
    if (!rc && !model) rc = tuna_errf(err, TUNA_EINVAL, "%s: model_name_or_path is missing", path);
    if (!rc && ignored[0]) note(a, ignored, "ignored: they change nothing in the result");
    if (!rc) {
        int off = cmd == LF_CMD_CHAT; /* the chat's model is its operand */
        *argv = xmalloc(sizeof **argv * (size_t)(l.n + off + 1));
        if (off) (*argv)[0] = xstrdup(model->val);
        for (int i = 0; i < l.n; i++)
            (*argv)[off + i] = l.v[i];
        (*argv)[l.n + off] = NULL;
        *argc = l.n + off;
        free(l.v);
    } else {
        lf_config_args_free(l.v, l.n);
    }
    free(a);
    doc_free(&d);
    notes_end(notes, cap);
    return rc;
}
