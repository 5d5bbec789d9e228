/* config.h: a Hugging Face config.json (+ generation_config.json) read into ModelConfig.
 *
 * One decoder covers LLaMA (Llama-2/3, TinyLlama, SmolLM), Mistral, Qwen2/2.5, Qwen3 and
 * GPT-2; the differences are fields here (norm, activation, positions, biases, q/k norm).
 * config_load validates every value it uses and names config.json and the key on error.
 * It reads transformers 4.x files (rope_theta, rope_scaling) and 5.x files (rope_parameters),
 * with transformers' defaults, and refuses in one line any key that would make transformers
 * compute something tuna does not (other RoPE types, partial rotary, softcapping, per-layer
 * sliding windows, biases the architecture lacks, quantization, experts).
 * No allocation: ModelConfig is a plain value. */
#ifndef TUNA_SRC_CONFIG_H
#define TUNA_SRC_CONFIG_H

#include "err.h"

typedef enum { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3, ARCH_GPT2 } ModelArch;
typedef enum { NORM_RMS, NORM_LAYER } NormType;
typedef enum { ACT_SILU, ACT_GELU_TANH, ACT_GELU } ActType;
typedef enum { ROPE_NONE, ROPE_DEFAULT, ROPE_LLAMA3, ROPE_LINEAR } RopeType;

#define CONFIG_MAX_EOS 8

typedef struct ModelConfig {
    ModelArch arch;
    char model_type[32];  /* as written in config.json */
    char torch_dtype[16]; /* "float32", "bfloat16", ... or "" */
    int V;                /* vocab_size */
    int C;                /* hidden_size */
    int FF;               /* intermediate_size (GPT-2: n_inner or 4*C) */
    int L;                /* num_hidden_layers */
    int NH;               /* num_attention_heads */
    int KVH;              /* num_key_value_heads (GPT-2: NH) */
    int HS;               /* head_dim (default C/NH) */
    int max_pos;          /* max_position_embeddings (GPT-2: n_positions) */
    NormType norm;
    float norm_eps;
    ActType act;
    int learned_pos; /* GPT-2: wpe table instead of RoPE */
    RopeType rope_type;
    float rope_theta;
    float rope_factor;           /* llama3 / linear scaling factor */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_orig_max_pos;       /* llama3 original_max_position_embeddings (def. max_pos) */
    int qkv_bias;                /* q,k,v projections have bias (Qwen2, GPT-2, attention_bias) */
    int o_bias;                  /* o_proj has bias (GPT-2, attention_bias) */
    int mlp_bias;                /* MLP projections have bias (GPT-2, mlp_bias) */
    int qk_norm;                 /* Qwen3: RMSNorm over each head of q and k */
    int tie_embeddings;          /* lm_head shares the token embedding */
    int sliding_window;          /* 0 = none; else the same window on every layer */
    /* config.json's non-zero dropout probabilities ("resid_pdrop 0.1, embd_pdrop 0.1, ..."),
     * which transformers applies in training and tuna's training does not (as llm.c); "" none */
    char dropout_keys[160];
    int bos_id;                  /* -1 if none */
    int eos_ids[CONFIG_MAX_EOS]; /* from generation_config.json if present, else config.json */
    int n_eos;
    // --- sampling defaults from generation_config.json (HF defaults when absent)
    int gen_do_sample;            /* 0: greedy unless the user asks for sampling */
    float gen_temperature;        /* 1.0 */
    int gen_top_k;                /* 50 (HF) */
    float gen_top_p;              /* 1.0 */
    float gen_repetition_penalty; /* 1.0 */
} ModelConfig;

/* Reads dir/config.json and, if present, dir/generation_config.json. */
int config_load(const char *dir, ModelConfig *cfg, TunaErr *err);

/* Parses config.json text (path is only used in messages). */
int config_parse(const char *json, const char *path, ModelConfig *cfg, TunaErr *err);

/* Short human name: "llama", "qwen3", ... */
const char *config_arch_name(ModelArch arch);

#endif
