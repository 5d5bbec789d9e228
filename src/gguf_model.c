#include "gguf_model.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

// --- metadata -> ModelConfig ---------------------------------------------------------------

/* {arch}.* keys tuna reads or knows to be harmless; any other one is refused, since it may
 * change the computation (softcapping, experts, per-layer windows, ALiBi, ...). */
static const char *const known_keys[] = {
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "attention.layer_norm_rms_epsilon",
        "attention.layer_norm_epsilon",
        "attention.key_length",
        "attention.value_length",
        "attention.causal",
        "attention.sliding_window",
        "rope.freq_base",
        "rope.dimension_count",
        "rope.scaling.type",
        "rope.scaling.factor",
        "rope.scaling.original_context_length",
        "rope.scaling.finetuned",
        "vocab_size",
        "tensor_data_layout",
        "expert_count",
        "expert_used_count",
};

typedef struct Ctx {
    const Gguf *g;
    const char *path;
    char arch[32];
    TunaErr *err;
} Ctx;

/* {arch}.suffix as an int in [lo, hi]; def when absent (required: error instead). */
static int arch_int(Ctx *c, const char *suffix, int required, int def, int lo, int hi, int *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", c->arch, suffix);
    int64_t v;
    int rc = gguf_get_int(c->g, key, &v, c->err);
    if (rc < 0) return rc;
    if (rc == 0) {
        if (required)
            return tuna_errf(c->err, TUNA_EFORMAT, "%s: missing metadata key \"%s\"", c->path, key);
        *out = def;
        return 0;
    }
    if (v < lo || v > hi)
        return tuna_errf(c->err, TUNA_EFORMAT,
                         "%s: key \"%s\" = %" PRId64 " is out of range [%d, %d]", c->path, key, v,
                         lo, hi);
    *out = (int)v;
    return 0;
}

static int arch_float(Ctx *c, const char *suffix, int required, float def, float *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", c->arch, suffix);
    double v;
    int rc = gguf_get_float(c->g, key, &v, c->err);
    if (rc < 0) return rc;
    if (rc == 0) {
        if (required)
            return tuna_errf(c->err, TUNA_EFORMAT, "%s: missing metadata key \"%s\"", c->path, key);
        *out = def;
        return 0;
    }
    if (!(v > 0) || v > (double)FLT_MAX)
        return tuna_errf(c->err, TUNA_EFORMAT, "%s: key \"%s\" = %g, expected a positive number",
                         c->path, key, v);
    *out = (float)v;
    return 0;
}

static int has_tensor(const Gguf *g, const char *name) {
    return gguf_find_tensor(g, name) != NULL;
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_ < 0) return rc_;                                                                   \
    } while (0)

/* general.architecture -> cfg->arch, c->arch and cfg->model_type; unknown ones are refused. */
static int read_arch(Ctx *c, ModelConfig *cfg) {
    GgufStr a;
    int rc = gguf_get_str(c->g, "general.architecture", &a, c->err);
    if (rc < 0) return rc;
    if (rc == 0)
        return tuna_errf(c->err, TUNA_EFORMAT, "%s: missing metadata key \"general.architecture\"",
                         c->path);
    static const struct {
        const char *name;
        ModelArch arch;
    } archs[] = {{"llama", ARCH_LLAMA},
                 {"mistral", ARCH_MISTRAL},
                 {"qwen2", ARCH_QWEN2},
                 {"qwen3", ARCH_QWEN3},
                 {"gpt2", ARCH_GPT2}};
    int found = -1;
    for (int i = 0; i < 5; i++)
        if (strlen(archs[i].name) == a.len && memcmp(archs[i].name, a.s, a.len) == 0) found = i;
    if (found < 0) {
        char shown[48];
        size_t n = a.len < 40 ? a.len : 40;
        for (size_t i = 0; i < n; i++)
            shown[i] = (a.s[i] < 0x20 || a.s[i] == 0x7f) ? '?' : a.s[i];
        shown[n] = '\0';
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: general.architecture \"%s%s\" is not supported (expected one of "
                         "llama, mistral, qwen2, qwen3, gpt2)",
                         c->path, shown, a.len > 40 ? "..." : "");
    }
    cfg->arch = archs[found].arch;
    snprintf(c->arch, sizeof c->arch, "%s", archs[found].name);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", archs[found].name);
    return 0;
}

/* Refuses {arch}.* keys tuna does not know, experts, non-causal attention and rope_freqs. */
static int check_unsupported(Ctx *c) {
    size_t al = strlen(c->arch);
    for (int i = 0; i < gguf_kv_count(c->g); i++) {
        const char *k = gguf_kv_at(c->g, i)->key;
        if (strncmp(k, c->arch, al) || k[al] != '.') continue;
        int known = 0;
        for (size_t j = 0; j < sizeof known_keys / sizeof known_keys[0]; j++)
            known |= strcmp(k + al + 1, known_keys[j]) == 0;
        if (!known)
            return tuna_errf(c->err, TUNA_EUNSUP,
                             "%s: metadata key \"%.120s\" is not implemented by tuna (it may "
                             "change the computation)",
                             c->path, k);
    }
    int v;
    TRY(arch_int(c, "expert_count", 0, 0, 0, 0, &v));
    TRY(arch_int(c, "expert_used_count", 0, 0, 0, 0, &v));
    char key[160];
    snprintf(key, sizeof key, "%s.attention.causal", c->arch);
    int causal = 1;
    TRY(gguf_get_bool(c->g, key, &causal, c->err));
    if (!causal)
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"%s\" is false; tuna runs causal decoders only", c->path, key);
    if (has_tensor(c->g, "rope_freqs.weight"))
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: tensor \"rope_freqs.weight\" (per-frequency RoPE factors, as "
                         "llama3 scaling) is not implemented by tuna",
                         c->path);
    return 0;
}

/* Width, depth, heads, context and feed-forward sizes. */
static int read_dims(Ctx *c, ModelConfig *cfg) {
    TRY(arch_int(c, "embedding_length", 1, 0, 1, 1 << 16, &cfg->C));
    TRY(arch_int(c, "block_count", 1, 0, 1, 1024, &cfg->L));
    TRY(arch_int(c, "attention.head_count", 1, 0, 1, 1024, &cfg->NH));
    TRY(arch_int(c, "context_length", 0, cfg->arch == ARCH_GPT2 ? 1024 : 2048, 1, 1 << 24,
                 &cfg->max_pos));
    int ff_def = cfg->arch == ARCH_GPT2 ? 4 * cfg->C : 0;
    TRY(arch_int(c, "feed_forward_length", cfg->arch != ARCH_GPT2, ff_def, 1, 1 << 18, &cfg->FF));
    if (cfg->C % cfg->NH && cfg->arch != ARCH_QWEN3)
        return tuna_errf(c->err, TUNA_EFORMAT,
                         "%s: %s.embedding_length %d is not divisible by %s.attention.head_count "
                         "%d",
                         c->path, c->arch, cfg->C, c->arch, cfg->NH);
    return 0;
}

/* Vocabulary size (token list or {arch}.vocab_size) and the bos/eos token ids. */
static int read_vocab(Ctx *c, ModelConfig *cfg) {
    const GgufArr *toks = NULL;
    TRY(gguf_get_arr(c->g, "tokenizer.ggml.tokens", &toks, c->err));
    int vs = 0;
    TRY(arch_int(c, "vocab_size", 0, 0, 1, 1 << 22, &vs));
    if (toks) {
        if (toks->n < 1 || toks->n > (1u << 22))
            return tuna_errf(c->err, TUNA_EFORMAT,
                             "%s: key \"tokenizer.ggml.tokens\" holds %" PRIu64
                             " tokens, expected 1 to %d",
                             c->path, toks->n, 1 << 22);
        if (vs && (uint64_t)vs != toks->n)
            return tuna_errf(c->err, TUNA_EFORMAT,
                             "%s: key \"%s.vocab_size\" = %d but tokenizer.ggml.tokens holds "
                             "%" PRIu64 " tokens",
                             c->path, c->arch, vs, toks->n);
        cfg->V = (int)toks->n;
    } else if (vs) {
        cfg->V = vs;
    } else {
        return tuna_errf(c->err, TUNA_EFORMAT,
                         "%s: no vocabulary size (neither \"tokenizer.ggml.tokens\" nor "
                         "\"%s.vocab_size\")",
                         c->path, c->arch);
    }
    int64_t id;
    cfg->bos_id = -1;
    int rc = gguf_get_int(c->g, "tokenizer.ggml.bos_token_id", &id, c->err);
    if (rc < 0) return rc;
    if (rc == 1) {
        if (id < 0 || id >= cfg->V)
            return tuna_errf(c->err, TUNA_EFORMAT,
                             "%s: key \"tokenizer.ggml.bos_token_id\" = %" PRId64
                             " is not a token id (vocabulary of %d)",
                             c->path, id, cfg->V);
        cfg->bos_id = (int)id;
    }
    static const char *const eos_keys[] = {"tokenizer.ggml.eos_token_id",
                                           "tokenizer.ggml.eot_token_id",
                                           "tokenizer.ggml.eom_token_id"};
    for (int i = 0; i < 3; i++) {
        rc = gguf_get_int(c->g, eos_keys[i], &id, c->err);
        if (rc < 0) return rc;
        if (rc == 0) continue;
        if (id < 0 || id >= cfg->V)
            return tuna_errf(c->err, TUNA_EFORMAT,
                             "%s: key \"%s\" = %" PRId64 " is not a token id (vocabulary of %d)",
                             c->path, eos_keys[i], id, cfg->V);
        int dup = 0;
        for (int j = 0; j < cfg->n_eos; j++)
            dup |= cfg->eos_ids[j] == (int)id;
        if (!dup) cfg->eos_ids[cfg->n_eos++] = (int)id;
    }
    return 0;
}

/* gpt2: layer norm, learned positions, biases everywhere, no grouped-query attention. */
static int read_gpt2(Ctx *c, ModelConfig *cfg) {
    TRY(arch_float(c, "attention.layer_norm_epsilon", 1, 0, &cfg->norm_eps));
    cfg->KVH = cfg->NH;
    cfg->HS = cfg->C / cfg->NH;
    cfg->norm = NORM_LAYER;
    cfg->learned_pos = 1;
    cfg->rope_type = ROPE_NONE;
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = 1;
    cfg->act = ACT_GELU_TANH;
    int kvh;
    TRY(arch_int(c, "attention.head_count_kv", 0, cfg->NH, 1, 1024, &kvh));
    if (kvh != cfg->NH)
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"gpt2.attention.head_count_kv\" = %d differs from the "
                         "head count %d; tuna's gpt2 has no grouped-query attention",
                         c->path, kvh, cfg->NH);
    return 0;
}

/* {arch}.rope.scaling.*: none or linear (a lone factor counts as linear, as in llama.cpp). */
static int read_rope_scaling(Ctx *c, ModelConfig *cfg) {
    char key[160];
    GgufStr st = {"none", 4};
    snprintf(key, sizeof key, "%s.rope.scaling.type", c->arch);
    int rc = gguf_get_str(c->g, key, &st, c->err);
    if (rc < 0) return rc;
    float factor = 1.0f;
    TRY(arch_float(c, "rope.scaling.factor", 0, 1.0f, &factor));
    if (st.len == 4 && !memcmp(st.s, "none", 4)) {
        if (rc == 0 && factor != 1.0f) { /* llama.cpp reads a lone factor as linear */
            cfg->rope_type = ROPE_LINEAR;
            cfg->rope_factor = factor;
        }
    } else if (st.len == 6 && !memcmp(st.s, "linear", 6)) {
        if (factor != 1.0f) {
            cfg->rope_type = ROPE_LINEAR;
            cfg->rope_factor = factor;
        }
    } else {
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"%s\" = \"%.*s\" is not implemented by tuna (none or "
                         "linear)",
                         c->path, key, (int)(st.len < 40 ? st.len : 40), st.s);
    }
    return 0;
}

/* llama family: RMS norm, SiLU, RoPE, grouped-query attention, optional biases and window. */
static int read_llama_like(Ctx *c, ModelConfig *cfg) {
    TRY(arch_int(c, "attention.head_count_kv", 0, cfg->NH, 1, 1024, &cfg->KVH));
    TRY(arch_float(c, "attention.layer_norm_rms_epsilon", 1, 0, &cfg->norm_eps));
    TRY(arch_float(c, "rope.freq_base", 0, 10000.0f, &cfg->rope_theta));
    int def_hs = cfg->C / cfg->NH, kl, vl, rd;
    TRY(arch_int(c, "attention.key_length", 0, def_hs, 2, 1024, &kl));
    TRY(arch_int(c, "attention.value_length", 0, kl, 2, 1024, &vl));
    if (vl != kl)
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"%s.attention.value_length\" = %d differs from the key "
                         "length %d; tuna needs equal head sizes",
                         c->path, c->arch, vl, kl);
    cfg->HS = kl;
    TRY(arch_int(c, "rope.dimension_count", 0, kl, 1, 1 << 16, &rd));
    if (rd != kl)
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"%s.rope.dimension_count\" = %d but the head size is %d; "
                         "tuna has no partial rotary embedding",
                         c->path, c->arch, rd, kl);
    cfg->norm = NORM_RMS;
    cfg->act = ACT_SILU;
    cfg->rope_type = ROPE_DEFAULT;
    cfg->qk_norm = cfg->arch == ARCH_QWEN3;
    cfg->qkv_bias = cfg->arch == ARCH_QWEN2 || has_tensor(c->g, "blk.0.attn_q.bias");
    cfg->o_bias = has_tensor(c->g, "blk.0.attn_output.bias");
    cfg->mlp_bias = has_tensor(c->g, "blk.0.ffn_up.bias");
    TRY(read_rope_scaling(c, cfg));
    int sw = 0;
    TRY(arch_int(c, "attention.sliding_window", 0, 0, 0, 1 << 24, &sw));
    if (sw && cfg->arch != ARCH_MISTRAL)
        return tuna_errf(c->err, TUNA_EUNSUP,
                         "%s: key \"%s.attention.sliding_window\" is not implemented by tuna "
                         "for %s",
                         c->path, c->arch, c->arch);
    cfg->sliding_window = sw;
    return 0;
}

int gguf_config_from(const Gguf *g, ModelConfig *cfg, TunaErr *err) {
    memset(cfg, 0, sizeof *cfg);
    Ctx c = {g, gguf_path(g), "", err};
    TRY(read_arch(&c, cfg));
    TRY(check_unsupported(&c));
    TRY(read_dims(&c, cfg));
    TRY(read_vocab(&c, cfg));
    cfg->tie_embeddings = !has_tensor(g, "output.weight");
    if (cfg->arch == ARCH_GPT2)
        TRY(read_gpt2(&c, cfg));
    else
        TRY(read_llama_like(&c, cfg));
    if (cfg->NH % cfg->KVH)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: %s.attention.head_count %d is not a multiple of head_count_kv %d",
                         c.path, c.arch, cfg->NH, cfg->KVH);
    if (cfg->HS < 2 || (cfg->HS % 2 && !cfg->learned_pos))
        return tuna_errf(err, TUNA_EFORMAT, "%s: head size %d must be even for RoPE", c.path,
                         cfg->HS);
    cfg->gen_temperature = 1.0f;
    cfg->gen_top_k = 50;
    cfg->gen_top_p = 1.0f;
    cfg->gen_repetition_penalty = 1.0f;
    return 0;
}

int gguf_config_load(const char *path, ModelConfig *cfg, TunaErr *err) {
    Gguf *g;
    int rc = gguf_open(path, &g, err);
    if (rc) return rc;
    rc = gguf_config_from(g, cfg, err);
    gguf_free(g);
    return rc;
}

// --- tensor names and layouts --------------------------------------------------------------

static const struct {
    const char *hf, *gguf;
} layer_names[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.o_proj.bias", "attn_output.bias"},
        {"self_attn.q_norm.weight", "attn_q_norm.weight"},
        {"self_attn.k_norm.weight", "attn_k_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.gate_proj.bias", "ffn_gate.bias"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.up_proj.bias", "ffn_up.bias"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
        {"mlp.down_proj.bias", "ffn_down.bias"},
        /* GPT-2 (names without the "transformer." prefix) */
        {"ln_1.weight", "attn_norm.weight"},
        {"ln_1.bias", "attn_norm.bias"},
        {"attn.c_attn.weight", "attn_qkv.weight"},
        {"attn.c_attn.bias", "attn_qkv.bias"},
        {"attn.c_proj.weight", "attn_output.weight"},
        {"attn.c_proj.bias", "attn_output.bias"},
        {"ln_2.weight", "ffn_norm.weight"},
        {"ln_2.bias", "ffn_norm.bias"},
        {"mlp.c_fc.weight", "ffn_up.weight"},
        {"mlp.c_fc.bias", "ffn_up.bias"},
        {"mlp.c_proj.weight", "ffn_down.weight"},
        {"mlp.c_proj.bias", "ffn_down.bias"},
};

static const struct {
    const char *hf, *gguf;
} top_names[] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
        {"wte.weight", "token_embd.weight"},
        {"wpe.weight", "position_embd.weight"},
        {"ln_f.weight", "output_norm.weight"},
        {"ln_f.bias", "output_norm.bias"},
};

int gguf_name_for(const ModelConfig *cfg, const char *hf, char *out, size_t cap, GgufXform *x,
                  int *heads) {
    *x = GGUF_X_NONE;
    *heads = 0;
    for (size_t i = 0; i < sizeof top_names / sizeof top_names[0]; i++)
        if (!strcmp(hf, top_names[i].hf)) {
            snprintf(out, cap, "%s", top_names[i].gguf);
            return 0;
        }
    int layer, n = 0;
    const char *rest;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &n) == 1 && n > 0)
        rest = hf + n;
    else if (sscanf(hf, "h.%d.%n", &layer, &n) == 1 && n > 0)
        rest = hf + n;
    else
        return -1;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(rest, layer_names[i].hf)) {
            snprintf(out, cap, "blk.%d.%s", layer, layer_names[i].gguf);
            int llama_rope = cfg->arch == ARCH_LLAMA || cfg->arch == ARCH_MISTRAL;
            if (llama_rope && !strncmp(rest, "self_attn.q_proj.", 17)) {
                *x = GGUF_X_UNPERMUTE;
                *heads = cfg->NH;
            } else if (llama_rope && !strncmp(rest, "self_attn.k_proj.", 17)) {
                *x = GGUF_X_UNPERMUTE;
                *heads = cfg->KVH;
            } else if (cfg->arch == ARCH_GPT2 && strstr(rest, ".weight") &&
                       (!strncmp(rest, "attn.c_", 7) || !strncmp(rest, "mlp.c_", 6))) {
                *x = GGUF_X_TRANSPOSE;
            }
            return 0;
        }
    return -1;
}

/* dst = the rows (row_bytes each) of src in HF's order: llama.cpp stores row h*HS + 2i + j of
 * head h for HF's row h*HS + j*HS/2 + i. A pure permutation of whole rows, so it applies to
 * the rows of blocks of a quantized tensor as well as to floats. */
static int unpermute_rows(const Gguf *g, const GgufTensor *t, int heads, void *dst, const void *src,
                          size_t rows, size_t row_bytes, TunaErr *err) {
    if (heads <= 0 || rows % (size_t)(2 * heads))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": %zu rows cannot be split into %d rotary heads",
                         gguf_path(g), t->name, rows, heads);
    size_t hs = rows / (size_t)heads, half = hs / 2;
    for (size_t h = 0; h < (size_t)heads; h++)
        for (size_t i = 0; i < half; i++)
            for (size_t j = 0; j < 2; j++)
                memcpy((char *)dst + (h * hs + j * half + i) * row_bytes,
                       (const char *)src + (h * hs + 2 * i + j) * row_bytes, row_bytes);
    return 0;
}

int gguf_tensor_to_hf(const Gguf *g, const GgufTensor *t, GgufXform x, int heads, float *dst,
                      float *scratch, size_t n, TunaErr *err) {
    if (x == GGUF_X_NONE) return gguf_tensor_to_f32(g, t, dst, n, err);
    int rc = gguf_tensor_to_f32(g, t, scratch, n, err);
    if (rc) return rc;
    size_t cols = (size_t)t->ne[0], rows = n / cols; /* GGUF: rows of ne[0] floats */
    if (t->ndim == 1) rows = n, cols = 1;
    if (x == GGUF_X_TRANSPOSE) {
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < cols; c++)
                dst[c * rows + r] = scratch[r * cols + c];
        return 0;
    }
    return unpermute_rows(g, t, heads, dst, scratch, rows, cols * sizeof(float), err);
}

int gguf_tensor_rows_to_hf(const Gguf *g, const GgufTensor *t, GgufXform x, int heads, void *dst,
                           TunaErr *err) {
    size_t rows = t->ndim == 2 ? (size_t)t->ne[1] : 1, rb = t->nbytes / (rows ? rows : 1);
    if (x == GGUF_X_TRANSPOSE || t->ndim != 2 || rb * rows != t->nbytes)
        return tuna_errf(err, TUNA_EINVAL, "%s: tensor \"%s\": not a matrix of whole rows",
                         gguf_path(g), t->name);
    if (x == GGUF_X_NONE) {
        memcpy(dst, t->data, t->nbytes);
        return 0;
    }
    return unpermute_rows(g, t, heads, dst, t->data, rows, rb, err);
}

// --- HF config.json for an exported GGUF model ---------------------------------------------

int hf_write_json(cJSON *j, int indent, const char *dir, const char *name, TunaErr *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *txt = indent ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    FILE *f = txt ? fopen(path, "w") : NULL;
    int ok = f && fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(txt);
    return ok ? 0 : tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
}

int gguf_write_hf_config(const ModelConfig *c, const char *dir, const char *torch_dtype,
                         TunaErr *err) {
    static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                        "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"};
    cJSON *j = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(archs[c->arch]));
    cJSON_AddStringToObject(j, "model_type", config_arch_name(c->arch));
    cJSON_AddStringToObject(j, "torch_dtype", torch_dtype);
    cJSON_AddNumberToObject(j, "vocab_size", c->V);
    if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    if (c->n_eos == 1) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_ids[0]);
    if (c->n_eos > 1)
        cJSON_AddItemToObject(j, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_embeddings);
    if (c->arch == ARCH_GPT2) {
        cJSON_AddNumberToObject(j, "n_embd", c->C);
        cJSON_AddNumberToObject(j, "n_layer", c->L);
        cJSON_AddNumberToObject(j, "n_head", c->NH);
        cJSON_AddNumberToObject(j, "n_inner", c->FF);
        cJSON_AddNumberToObject(j, "n_positions", c->max_pos);
        cJSON_AddNumberToObject(j, "n_ctx", c->max_pos);
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", (double)c->norm_eps);
        cJSON_AddStringToObject(j, "activation_function", "gelu_new");
    } else {
        cJSON_AddNumberToObject(j, "hidden_size", c->C);
        cJSON_AddNumberToObject(j, "intermediate_size", c->FF);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->L);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->NH);
        cJSON_AddNumberToObject(j, "num_key_value_heads", c->KVH);
        cJSON_AddNumberToObject(j, "head_dim", c->HS);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_pos);
        cJSON_AddNumberToObject(j, "rms_norm_eps", (double)c->norm_eps);
        cJSON_AddNumberToObject(j, "rope_theta", (double)c->rope_theta);
        cJSON_AddStringToObject(j, "hidden_act", "silu");
        if (c->rope_type == ROPE_LINEAR) {
            cJSON *r = cJSON_AddObjectToObject(j, "rope_scaling");
            cJSON_AddStringToObject(r, "rope_type", "linear");
            cJSON_AddNumberToObject(r, "factor", (double)c->rope_factor);
        }
        if (c->arch == ARCH_LLAMA || c->arch == ARCH_MISTRAL) {
            cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias);
            cJSON_AddBoolToObject(j, "mlp_bias", c->mlp_bias);
        }
        if (c->arch == ARCH_MISTRAL) {
            if (c->sliding_window)
                cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
            else
                cJSON_AddNullToObject(j, "sliding_window");
        }
        if (c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3)
            cJSON_AddBoolToObject(j, "use_sliding_window", 0);
    }
    int rc = hf_write_json(j, 1, dir, "config.json", err);
    if (rc) return rc;
    j = cJSON_CreateObject();
    if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    if (c->n_eos == 1) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_ids[0]);
    if (c->n_eos > 1)
        cJSON_AddItemToObject(j, "eos_token_id", cJSON_CreateIntArray(c->eos_ids, c->n_eos));
    return hf_write_json(j, 1, dir, "generation_config.json", err);
}
