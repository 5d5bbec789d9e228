/* model.h: the decoder (LLaMA / Mistral / Qwen2 / Qwen3 / GPT-2 from one ModelConfig), its
 * weights loaded from safetensors into backend memory as float32, and the inference
 * forward pass with a KV cache.
 *
 * Weights are laid out by a table of named parameters (ParamSpec): every HF tensor name the
 * architecture needs, its shape and where it goes, so a missing or mis-shaped tensor is one
 * clear error. GPT-2's Conv1D weights (stored in x out) are transposed on load, and its
 * fused c_attn is split into q, k, v. The Model owns its Backend memory; the caller owns the
 * Backend. One thread at a time. */
#ifndef TUNA_SRC_MODEL_H
#define TUNA_SRC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/backend.h"
#include "../kernels/wtype.h"
#include "config.h"
#include "err.h"

/* The linear layers of a block that an unmerged LoRA adapter can sit on (GPT-2's fused c_attn
 * is its three slices q, k, v, sharing A). */
typedef enum {
    LORA_Q,
    LORA_K,
    LORA_V,
    LORA_O,
    LORA_GATE,
    LORA_UP,   /* GPT-2: c_fc */
    LORA_DOWN, /* GPT-2: c_proj */
    LORA_N_SITES
} LoraSite;

typedef struct LayerWeights {
    float *ln1_w, *ln1_b;   // (C) ; ln1_b only for LayerNorm
    float *wq, *bq;         // (NH*HS, C), (NH*HS)
    float *wk, *bk;         // (KVH*HS, C), (KVH*HS)
    float *wv, *bv;         // (KVH*HS, C), (KVH*HS)
    float *wo, *bo;         // (C, NH*HS), (C)
    float *q_norm, *k_norm; // (HS) Qwen3
    float *ln2_w, *ln2_b;   // (C)
    float *w_gate, *b_gate; // (FF, C) SwiGLU only
    float *w_up, *b_up;     // (FF, C)  GPT-2: c_fc
    float *w_down, *b_down; // (C, FF)  GPT-2: c_proj
    /* The frozen base's typed linear weights (model_load_opts with a quantization type), in
     * backend memory; NULL where the layer keeps fp32 at the float pointer above (which is then
     * NULL where this is set). */
    Weight *qw[LORA_N_SITES];
} LayerWeights;

/* An unmerged LoRA adapter that the forward applies: at every (layer, site) with an A, the
 * linear layer's output gets scale * (x · Aᵀ) · Bᵀ added, with the same ops in the same order
 * as training's forward. A (rank, in) and B (out, rank) are backend memory, borrowed. */
typedef struct ModelLora {
    int rank;
    float scale;
    const float *(*A)[LORA_N_SITES]; /* (L) rows of per-site pointers, NULL where none */
    const float *(*B)[LORA_N_SITES];
    /* DoRA (NULL when the adapter is plain LoRA, else rows as A's): per site the vector g
     * (backend memory, the site's outputs) = magnitude / ||W + s·B·A|| row by row (the backend's
     * col_scale), so that the output
     * W·x + bias + s·B·A·x becomes g ⊙ (W·x + s·B·A·x) + bias, as peft's DoRA in eval (no
     * dropout) */
    const float *(*G)[LORA_N_SITES];
} ModelLora;

/* One tensor of the checkpoint as it maps into Model.params: HF name, file shape, and where
 * its floats live (GPT-2's fused c_attn appears three times, part 0..2, mode 2/3). */
typedef struct ParamInfo {
    char name[128];
    size_t off; /* offset in floats into params */
    size_t n;   /* floats */
    int ndim;
    int64_t shape[2]; /* as stored in the file */
    int mode;         /* 0 copy, 1 transposed (Conv1D), 2 split of c_attn weight, 3 of its bias */
    int part;
    const Weight *q; /* a typed weight (not in params: off and n are 0), or NULL */
    int layer, site; /* a block's linear weight (a LoraSite) on a typed load, else -1 */
} ParamInfo;

typedef struct Model {
    ModelConfig cfg;
    Backend *be;          /* borrowed */
    float *params;        /* one backend allocation holding every weight */
    size_t n_params;      /* floats in params */
    size_t n_qbytes;      /* bytes of the typed weights (LayerWeights.qw), outside params */
    size_t n_qparams;     /* the weights they hold */
    int n_qskipped;       /* linear layers left fp32: rows not whole blocks of the type */
    float *wte;           // (V, C)
    float *wpe;           // (max_pos, C) GPT-2
    float *lnf_w, *lnf_b; // (C)
    float *lm_head;       // (V, C), == wte when tied
    /* The frozen token embedding and LM head kept typed (ModelLoadOptions.typed_head), in
     * backend memory; wte / lm_head are then NULL. Tied: head_q == wte_q, one copy. */
    Weight *wte_q, *head_q;
    LayerWeights *layers; // (L)
    ParamInfo *pinfo;     /* every checkpoint tensor, in params order */
    int n_pinfo;
    char dir[1024];  /* where it was loaded from */
    float *inv_freq; // (HS/2) RoPE frequencies, backend memory

    // --- inference state (sized by model_reserve)
    int cache_T;             /* positions the KV cache holds (per slot) */
    int n_past;              /* positions already in the current slot's cache */
    int n_slots, slot;       /* sequences the cache holds (batched decoding), current one */
    int *slot_past;          /* (n_slots) n_past of each slot; slot_past[slot] is stale */
    WType kv_type;           /* the cache's type (model_set_kv_type): F32, F16 or Q8_0 */
    void *k_cache, *v_cache; // (L, n_slots, cache_T, KVH, HS) in kv_type
    float *k_new, *v_new;    // (n_slots, KVH*HS) a decoding batch's new keys and values (typed:
                             // (max(n_slots, act_T), KVH*HS), a chunk's before they are rounded)
    int act_T;               /* rows the activation buffers hold */
    float *x, *xb, *xb2;     // (act_T, C)
    float *q, *att;          // (act_T, NH*HS)
    float *hb, *hb2;         // (act_T, FF)
    float *logits;           // (act_T, V)
    int32_t *pos;            // (act_T) host
    const ModelLora *lora;   /* model_set_lora: applied unmerged, or NULL */
    /* adapter_load onto a typed base (which cannot be merged into): the adapter's own state,
     * freed by model_free with owner_free, and its view, set as lora */
    ModelLora own_lora;
    void *lora_owner;
    void (*lora_owner_free)(void *);
    float *lora_u, *lora_t; // (act_T, rank), (act_T, max(FF, NH*HS, C)) its scratch
    int lora_rank_cap;      /* the rank lora_u is sized for */
    int prefix_len;         /* P-tuning: virtual tokens at cache positions 0..P-1 */
    float *prefix;          // (P, L*2*KVH*HS) host, PEFT's prompt_embeddings layout
} Model;

/* Loads config.json + model.safetensors (or its sharded index) from dir onto be. */
int model_load(const char *dir, Backend *be, Model **out, TunaErr *err);

/* How the frozen base is kept (LLaMA-Factory's quantization_bit / quantization_type /
 * double_quantization, applied on load): the linear layers' weights of layers below
 * fp32_from_layer in qtype (WT_F32: none), the rest of the model in fp32. */
typedef struct ModelLoadOptions {
    WType qtype;
    int double_quant;    /* NF4/FP4: absmaxes in 8 bits (bitsandbytes compress_statistics) */
    int fp32_from_layer; /* freeze trains the layers from here on: they stay fp32 (negative:
                            counted from the end, -2 for the last two) */
    int keep_stored;     /* qtype WT_F32 (--dtype auto): the linear weights below fp32_from_layer
                            keep the type the checkpoint stores them in (a GGUF type, or a
                            safetensors BF16 / F16; when the backend has matmul_w_fwd), bit for
                            bit, instead of being converted to fp32 */
    int typed_head;      /* the token embedding and LM head are frozen (no trainable tokens, not
                            full fine-tuning) and typed: with keep_stored as stored, with
                            head_bf16 in bf16 */
    int head_bf16;       /* --dtype bf16: the frozen embedding and head (typed_head) converted to
                            bf16, as a bf16 torch model holds them */
} ModelLoadOptions;

/* The one rule for a base that stays frozen under --dtype auto (LoRA, P-tuning, the frozen layers
 * of freeze below fp32_from_layer, and inference: chat, generate, eval): nothing is converted,
 * a GGUF file keeps its stored types and a bf16 / f16 checkpoint its bf16 / f16, the token
 * embedding and LM head too unless embed_trains (LoRA's trainable tokens). Full fine-tuning
 * needs the fp32 load; an explicit qtype or dtype overrides this. */
ModelLoadOptions model_load_frozen(int fp32_from_layer, int embed_trains);

int model_load_opts(const char *dir, Backend *be, const ModelLoadOptions *o, Model **out,
                    TunaErr *err);

/* Where layer w keeps the fp32 weight of a linear layer (&w->wq for LORA_Q, ...). */
float **layer_site_weight(LayerWeights *w, LoraSite k);

/* From the config alone: the bytes the typed linear weights of model_load_opts(o) take, and in
 * *n_typed the weights they hold (0 and 0 for no quantization). */
size_t model_typed_bytes_for(const ModelConfig *c, const ModelLoadOptions *o, size_t *n_typed);
/* The same for the model at dir as model_load_opts(dir, o) would keep it: with o->keep_stored
 * a GGUF file's header decides (its tensors' types); else model_typed_bytes_for. */
size_t model_typed_bytes_file(const char *dir, const ModelConfig *c, const ModelLoadOptions *o,
                              size_t *n_typed);

/* The base linear layer of (layer l, site): out (M, N) = in (M, K) · Wᵀ + bias, through the
 * typed weight where the model keeps one, else the fp32 W. */
void model_base_linear(const Model *m, int l, LoraSite site, float *out, const float *in,
                       const float *W, const float *bias, int M, int K, int N);
/* model_base_linear at sites[0..n) of layer l over one input (outs[i], Ws[i], biases[i], Ns[i]):
 * one backend call (matmul_w_fwd_n, which may share the work on the input) where every site's
 * weight is typed, else n calls. The same values either way. */
void model_base_linear_n(const Model *m, int l, int n, const LoraSite *sites, float *const *outs,
                         const float *in, const float *const *Ws, const float *const *biases, int M,
                         int K, const int *Ns);
/* dst (rows, cols) = the typed weight d (backend memory) in fp32, through download. */
void weight_download_f32(Backend *be, const Weight *d, float *dst);

/* model_base_linear's input gradient when the weight is typed (frozen): din (M, K) += dout
 * (M, N) · W (acc 0: =). Returns 0 when (l, site) is fp32 (the caller's matmul_bwd does it, with
 * dW when it trains). */
int model_base_linear_bwd_typed(const Model *m, int l, LoraSite site, float *din, const float *dout,
                                int M, int acc);
/* out (T, C) = the embedding rows of ids (host), from the typed table where the model keeps one. */
void model_embed(const Model *m, float *out, const int32_t *ids, int T);
/* logits (M, V) = xn (M, C) · LM headᵀ, through the typed head where the model keeps one. */
void model_head(const Model *m, float *logits, const float *xn, int M);
/* Its input gradient through the typed (frozen) head, m->head_q set: dxn += dlogits · head. */
void model_head_bwd_in(const Model *m, float *dxn, const float *dlogits, int M);
void model_free(Model *m); /* NULL-safe */

/* Sizes the KV cache for cache_T positions (capped at max_position_embeddings for GPT-2)
 * and the activations for chunks of up to act_T tokens. Clears the cache. */
int model_reserve(Model *m, int cache_T, int act_T, TunaErr *err);

/* model_reserve for batched decoding: n_slots sequences of up to cache_T positions each, every
 * one with its own KV cache. Slot 0 is current; all slots are empty. */
int model_reserve_slots(Model *m, int n_slots, int cache_T, int act_T, TunaErr *err);

/* The KV cache's type: WT_F32 (the default), WT_F16 (keys and values rounded to nearest even as
 * they are stored, half the bytes; llama.cpp's default) or WT_Q8_0 (blocks of 32 with an f16
 * scale, 34/128 of fp32's bytes; heads of a multiple of 32). Empties the cache: the next
 * model_reserve sizes it. A type the heads or the backend cannot take (BACKEND_NEED_KV_TYPED) is
 * a one-line error. */
int model_set_kv_type(Model *m, WType t, TunaErr *err);
/* Bytes of the KV cache as reserved (keys and values, every slot); 0 before model_reserve */
size_t model_kv_bytes(const Model *m);

/* Makes slot s current: model_forward and model_reset then work on its sequence. */
void model_use_slot(Model *m, int s);
/* Positions already in slot s's cache. */
int model_slot_past(const Model *m, int s);

/* One decoding step for n sequences at once: token ids[i] is appended to slot slots[i] (n
 * distinct slots, n <= act_T) and logits (n, V) (host memory) receive each one's next-token
 * logits. On the cpu backend each row's logits are bit-identical to decoding that sequence
 * alone with model_forward. */
int model_decode_slots(Model *m, int n, const int *slots, const int32_t *ids, float *logits,
                       TunaErr *err);

/* Forgets the cached positions of the current slot (keeps the buffers). With a prefix, the
 * cache restarts with the prefix in positions 0..P-1. */
void model_reset(Model *m);

/* Installs a P-tuning prefix (P, L*2*KVH*HS host floats, copied; row p = [L][k|v][KVH][HS],
 * not rotated): every sequence then starts after it, at position P. P = 0 removes it. */
int model_set_prefix(Model *m, const float *prefix, int P, TunaErr *err);

/* Prompt tuning and P-tuning v1 at inference (PEFT's virtual tokens, prepended once at the
 * start): emb (P, C host floats) run once through the decoder at positions 0..P-1, and the
 * keys and values they leave in the cache become the prefix (model_set_prefix) that every
 * sequence then starts after, at position P; the same attention as PEFT's single pass over
 * [virtual tokens, ids]. Like model_set_prefix, the cache must be reserved again. P = 0 removes
 * it. */
int model_set_prompt(Model *m, const float *emb, int P, TunaErr *err);

/* Applies lora (borrowed: it and its tensors must outlive its use) unmerged in every forward
 * from now on, or none (NULL). The base weights are not touched, so a training run samples
 * with its adapter without copying the base. TUNA_ENOMEM when the scratch cannot be had. */
int model_set_lora(Model *m, const ModelLora *lora, TunaErr *err);

/* Runs T new tokens (host ids) at positions n_past.., appending to the KV cache. Writes the
 * logits (host memory) of the last token, (V), or of every token, (T, V), when all_logits.
 * Chunks longer than act_T are run in pieces. Fails if ids are out of range or the cache
 * is full. */
int model_forward(Model *m, const int32_t *ids, int T, float *logits, int all_logits, TunaErr *err);

/* Total parameter count (as in the checkpoint, tied embeddings once). */
size_t model_param_count(const Model *m);
/* The floats model_load would allocate for a model of config c (the same tensor table), and
 * in *per_layer (may be NULL) those of one decoder layer. Reads no file. */
size_t model_param_count_for(const ModelConfig *c, size_t *per_layer);
/* Whether parameter `name` of layer `layer` is one of the comma-separated modules, matched as
 * LLaMA-Factory's freeze tuning matches them (".{layer}.{module}" in the name). */
int model_param_in_modules(const char *name, int layer, const char *modules);
/* The parameters of one layer that are in those modules (the freeze method's
 * freeze_trainable_modules), from the config alone. */
size_t model_param_count_modules(const ModelConfig *c, const char *modules);

/* One convention for what a model argument names (src/model_any.c), used by the CLI and the
 * workbench alike. An adapter run: a folder with an adapter_config.json and no config.json of
 * its own (a run of `tuna train --method lora|ptuning`, or any PEFT adapter). */
int model_is_adapter_run(const char *dir);
/* The string at key in dir/file (a JSON object, such as a run's train_config.json): 0, or -1
 * when the file, the key or a string that fits in cap is missing. */
int model_run_string(const char *dir, const char *file, const char *key, char *out, size_t cap);
/* The number (or boolean, as 0/1) at key in dir/file: 0, or -1 when it is missing. */
int model_run_number(const char *dir, const char *file, const char *key, double *out);
/* The base model of adapter run dir: adapter_config.json's base_model_name_or_path when it is a
 * model here (a folder or a .gguf file), else the --model of the run's train_config.json (the
 * base moved since); else a one-line error saying what is missing and what to give instead. */
int model_run_base(const char *dir, char *base, size_t cap, TunaErr *err);
/* The base's precision with `tuna train`'s names (model_load_options' arguments, and bf16:
 * Backend.mm_bf16). */
typedef struct ModelPrecision {
    int bits, double_quant, bf16;
    char qtype[32], dtype[32];
} ModelPrecision;
#define MODEL_PRECISION_INIT                                                                       \
    { 0, 0, 0, "nf4", "auto" } /* the checkpoint's own types */
/* The precision adapter run dir's base was trained in (its train_config.json: quantization_bit,
 * quantization_type, double_quantization, dtype, bf16; a QLoRA run's 4-bit base), over p: the
 * keys the run lacks leave p as it is. The one rule of chat, generate, eval and the TUI's Chat
 * for an adapter run's base when no precision is asked for. */
void model_run_precision(const char *dir, ModelPrecision *p);
/* Loads what dir holds: a model (config.json + weights, or GGUF, its own types), or an adapter
 * run's base (model_run_base) in the precision it was trained in (model_run_precision; sets
 * be->mm_bf16 as the run had it) with the adapter applied. base_dir gets the folder the
 * tokenizer comes from. */
int model_load_any(const char *dir, Backend *be, Model **out, char *base_dir, size_t cap,
                   TunaErr *err);

/* The base's precision as LLaMA-Factory names it (--quantization-bit 0|4|8,
 * --quantization-type nf4|fp4|q4_0|q4_1, --double-quantization, --dtype auto|fp32|bf16) as load
 * options for every linear layer of the blocks (auto: model_load_frozen, the checkpoint's own
 * types); a one-line error for a bad combination.
 * `tuna train` adds its method's rules (train_load_options); chat, generate and eval use it as
 * is. */
int model_load_options(int bits, const char *qtype, int double_quant, const char *dtype,
                       ModelLoadOptions *o, TunaErr *err);

#endif
