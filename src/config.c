#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_model.h"
#include "xalloc.h"

// --- typed field readers: every error names the file and the key

static int get_int(const cJSON *root, const char *key, int def, int required, int *out,
                   const char *path, TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        if (required) return tuna_errf(err, TUNA_EFORMAT, "%s: missing \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
        fabs(it->valuedouble) > 2147483647.0)
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be an integer, got %s", path, key,
                         cJSON_IsString(it)                     ? "a string"
                         : !cJSON_IsNumber(it)                  ? "another type"
                         : fabs(it->valuedouble) > 2147483647.0 ? "a number out of range"
                                                                : "a fraction");
    *out = (int)it->valuedouble;
    return 0;
}

static int get_float(const cJSON *root, const char *key, float def, float *out, const char *path,
                     TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(it))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be a number", path, key);
    /* a float cast of a double beyond FLT_MAX (1e300) is undefined */
    if (!(fabs(it->valuedouble) <= (double)FLT_MAX))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" = %g is out of range for a float", path,
                         key, it->valuedouble);
    *out = (float)it->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, int def, int *out, const char *path,
                    TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(it);
    return 0;
}

/* A token id: an integer in [0, CONFIG_MAX_ID] (cJSON's valueint would saturate 1e300). */
#define CONFIG_MAX_ID ((1 << 22) - 1)
static int eos_ok(const cJSON *e) {
    double d = e->valuedouble;
    return d >= 0 && d <= CONFIG_MAX_ID && d == floor(d);
}

static int eos_bad(const char *path, const cJSON *e, TunaErr *err) {
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s: \"eos_token_id\" must be a token id in [0, %d], got %g", path,
                     CONFIG_MAX_ID, e->valuedouble);
}

/* eos_token_id may be an integer or a list of integers. */
static int get_eos(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!it || cJSON_IsNull(it)) return 0;
    if (cJSON_IsNumber(it)) {
        if (!eos_ok(it)) return eos_bad(path, it, err);
        cfg->eos_ids[0] = (int)it->valuedouble;
        cfg->n_eos = 1;
        return 0;
    }
    if (!cJSON_IsArray(it))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"eos_token_id\" must be an integer or a list",
                         path);
    cfg->n_eos = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsNumber(e))
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"eos_token_id\" entries must be integers",
                             path);
        if (!eos_ok(e)) return eos_bad(path, e, err);
        if (cfg->n_eos < CONFIG_MAX_EOS) cfg->eos_ids[cfg->n_eos++] = (int)e->valuedouble;
    }
    return 0;
}

const char *config_arch_name(ModelArch arch) {
    switch (arch) {
    case ARCH_LLAMA: return "llama";
    case ARCH_MISTRAL: return "mistral";
    case ARCH_QWEN2: return "qwen2";
    case ARCH_QWEN3: return "qwen3";
    case ARCH_GPT2: return "gpt2";
    }
    return "?";
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_ != 0) return rc_;                                                                  \
    } while (0)

// --- RoPE. transformers 4.x writes a top-level "rope_theta" and "rope_scaling" ({"type" or
// "rope_type": default|linear|llama3|dynamic|yarn|longrope|..., "factor", ...}); transformers 5
// writes "rope_parameters" ({"rope_type", "rope_theta", "factor", ...}), some 5.x versions both.
// transformers 5 reads rope_scaling, else rope_parameters, and fills rope_theta and
// partial_rotary_factor from the top level when the dict lacks them (modeling_rope_utils.py,
// convert_rope_params_to_dict). A field given in two places must agree: which one wins has
// changed between versions, so a disagreement is refused rather than guessed.

enum { RF_THETA, RF_FACTOR, RF_LOW, RF_HIGH, RF_ORIG, RF_PRF, RF_N };

/* The RoPE fields one source gives; has[] marks what it sets. */
typedef struct {
    int has_type;
    RopeType type;
    const char *type_name;
    int has[RF_N];
    double v[RF_N];
} RopeSpec;

/* The numeric keys, in RF_ order. */
static const char *const rope_num_keys[RF_N] = {"rope_theta",
                                                "factor",
                                                "low_freq_factor",
                                                "high_freq_factor",
                                                "original_max_position_embeddings",
                                                "partial_rotary_factor"};

/* d[name] as a finite float-sized number (absent or null: not set). */
static int rope_num(const cJSON *d, const char *dict, int f, RopeSpec *s, const char *path,
                    TunaErr *err) {
    const char *name = rope_num_keys[f];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, name);
    if (!v || cJSON_IsNull(v)) return 0;
    double x = cJSON_IsNumber(v) ? v->valuedouble : (double)NAN;
    if (!(fabs(x) <= (double)FLT_MAX))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" %s must be a number%s", path, dict, name,
                         cJSON_IsNumber(v) ? " (out of range for a float)" : "");
    if (f == RF_ORIG && !(x == floor(x) && x >= 1 && x <= (double)(1 << 24)))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" %s must be an integer in [1, %d], got %g",
                         path, dict, name, 1 << 24, x);
    s->v[f] = x;
    s->has[f] = 1;
    return 0;
}

static int parse_rope_dict(const cJSON *d, const char *dict, RopeSpec *s, const char *path,
                           TunaErr *err) {
    int rc = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "rope_type");
    if (!t || cJSON_IsNull(t)) t = cJSON_GetObjectItemCaseSensitive(d, "type");
    if (t && !cJSON_IsNull(t)) {
        if (!cJSON_IsString(t))
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" rope_type must be a string", path,
                             dict);
        const char *n = t->valuestring;
        if (!strcmp(n, "default"))
            s->type = ROPE_DEFAULT, s->type_name = "default";
        else if (!strcmp(n, "linear"))
            s->type = ROPE_LINEAR, s->type_name = "linear";
        else if (!strcmp(n, "llama3"))
            s->type = ROPE_LLAMA3, s->type_name = "llama3";
        else
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" rope_type \"%.40s\" is not supported (tuna implements "
                             "default, linear, llama3)",
                             path, dict, n);
        s->has_type = 1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, d) {
        int known = !strcmp(it->string, "rope_type") || !strcmp(it->string, "type");
        for (int f = 0; f < RF_N && !known; f++)
            known = !strcmp(it->string, rope_num_keys[f]);
        if (!known && !cJSON_IsNull(it))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" key \"%.40s\" is not supported (it belongs to a RoPE "
                             "variant tuna does not implement; tuna implements default, linear, "
                             "llama3)",
                             path, dict, it->string);
    }
    for (int f = 0; f < RF_N; f++)
        if ((rc = rope_num(d, dict, f, s, path, err))) return rc;
    return 0;
}

/* The dict at root[key] (absent, null or {}: *present = 0). Models with per-layer RoPE write
 * rope_parameters keyed by layer type ({"full_attention": {...}, "sliding_attention": {...}});
 * the rotary embedding of transformers' llama, mistral, qwen2 and qwen3 reads one flat dict
 * (it fails on a keyed one), and so does tuna: a keyed dict is refused. */
static int rope_source(const cJSON *root, const char *key, RopeSpec *s, int *present,
                       const char *path, TunaErr *err) {
    *present = 0;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!d || cJSON_IsNull(d)) return 0;
    if (!cJSON_IsObject(d))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be an object or null", path, key);
    if (!d->child) return 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, d) {
        if (cJSON_IsObject(it))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" is keyed by layer type (\"%.40s\"); tuna, like "
                             "transformers for this model_type, takes one RoPE dict for all "
                             "layers",
                             path, key, it->string);
    }
    *present = 1;
    return parse_rope_dict(d, key, s, path, err);
}

/* Reads every RoPE source into cfg (rope_type, theta, factors); fields given twice must agree.
 * Defaults as transformers 5: theta 10000, llama3's original_max_position_embeddings =
 * max_position_embeddings; linear needs factor, llama3 its three factors. */
static int parse_rope(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    int rc = 0, has_s = 0, has_p = 0;
    RopeSpec src[3];
    memset(src, 0, sizeof src);
    if ((rc = rope_num(root, "config", RF_THETA, &src[0], path, err)) ||
        (rc = rope_num(root, "config", RF_PRF, &src[0], path, err)) ||
        (rc = rope_source(root, "rope_scaling", &src[1], &has_s, path, err)) ||
        (rc = rope_source(root, "rope_parameters", &src[2], &has_p, path, err)))
        return rc;
    const char *name[3] = {"top level", "rope_scaling", "rope_parameters"};
    RopeSpec m = {0};
    const char *from[RF_N + 1] = {0};
    for (int i = 0; i < 3; i++) {
        const RopeSpec *r = &src[i];
        for (int f = 0; f < RF_N; f++) {
            if (!r->has[f]) continue;
            if (m.has[f] && m.v[f] != r->v[f])
                return tuna_errf(err, TUNA_EFORMAT,
                                 "%s: %s and \"%s\" disagree on %s (%g vs %g); keep one", path,
                                 from[f], name[i], rope_num_keys[f], m.v[f], r->v[f]);
            m.v[f] = r->v[f];
            m.has[f] = 1;
            from[f] = i ? (i == 1 ? "\"rope_scaling\"" : "\"rope_parameters\"") : "\"rope_theta\"";
            if (f == RF_PRF && !i) from[f] = "\"partial_rotary_factor\"";
        }
        if (r->has_type) {
            if (m.has_type && m.type != r->type)
                return tuna_errf(err, TUNA_EFORMAT,
                                 "%s: \"rope_scaling\" and \"rope_parameters\" disagree on "
                                 "rope_type (%s vs %s); keep one",
                                 path, m.type_name, r->type_name);
            m.type = r->type;
            m.type_name = r->type_name;
            m.has_type = 1;
        }
    }
    if (m.has[RF_PRF] && m.v[RF_PRF] != 1.0)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"partial_rotary_factor\" = %g is not supported (tuna rotates the "
                         "whole head)",
                         path, m.v[RF_PRF]);
    cfg->rope_type = m.has_type ? m.type : ROPE_DEFAULT;
    cfg->rope_theta = m.has[RF_THETA] ? (float)m.v[RF_THETA] : 10000.0f;
    if (!(cfg->rope_theta > 0))
        return tuna_errf(err, TUNA_EFORMAT, "%s: rope_theta must be > 0, got %g", path,
                         (double)cfg->rope_theta);
    const char *dict = has_s ? "rope_scaling" : "rope_parameters";
    if (cfg->rope_type == ROPE_LINEAR || cfg->rope_type == ROPE_LLAMA3) {
        int need[3] = {RF_FACTOR, RF_LOW, RF_HIGH};
        for (int k = 0; k < (cfg->rope_type == ROPE_LLAMA3 ? 3 : 1); k++)
            if (!m.has[need[k]])
                return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" rope_type %s needs \"%s\"", path,
                                 dict, m.type_name, rope_num_keys[need[k]]);
        cfg->rope_factor = (float)m.v[RF_FACTOR];
        if (!(cfg->rope_factor > 0))
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" factor must be > 0, got %g", path, dict,
                             m.v[RF_FACTOR]);
    }
    if (cfg->rope_type == ROPE_LLAMA3) {
        cfg->rope_low_freq_factor = (float)m.v[RF_LOW];
        cfg->rope_high_freq_factor = (float)m.v[RF_HIGH];
        cfg->rope_orig_max_pos = m.has[RF_ORIG] ? (int)m.v[RF_ORIG] : cfg->max_pos;
        if (!(cfg->rope_low_freq_factor > 0) ||
            !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: \"%s\" llama3 needs 0 < low_freq_factor < high_freq_factor, got "
                             "%g and %g",
                             path, dict, m.v[RF_LOW], m.v[RF_HIGH]);
    }
    return 0;
}

// --- attention layout: biases, sliding windows, per-layer types

/* Reads a JSON boolean key (absent/null: def); *given says whether it was there. */
static int get_bool_given(const cJSON *root, const char *key, int def, int *out, int *given,
                          const char *path, TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    *given = it && !cJSON_IsNull(it);
    return get_bool(root, key, def, out, path, err);
}

/* Which projections have biases, as transformers' modeling_<arch>.py builds them: LLaMA honours
 * attention_bias (q, k, v, o) and mlp_bias; Qwen3 honours attention_bias (q, k, v, o); Qwen2
 * always has q, k, v biases and no others; Mistral has none. A bias key asking for what the
 * architecture does not have is refused: transformers would ignore it and load a different
 * model than the file describes. */
static int parse_biases(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    int rc, attn = 0, mlp = 0, given;
    if ((rc = get_bool_given(root, "attention_bias", 0, &attn, &given, path, err))) return rc;
    if ((rc = get_bool(root, "mlp_bias", 0, &mlp, path, err))) return rc;
    const char *arch = config_arch_name(cfg->arch);
    if (attn && (cfg->arch == ARCH_MISTRAL || cfg->arch == ARCH_QWEN2))
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"attention_bias\": true is not supported for %s (its attention "
                         "has %s)",
                         path, arch,
                         cfg->arch == ARCH_QWEN2 ? "q, k, v biases and none on o_proj"
                                                 : "no biases");
    if (mlp && cfg->arch != ARCH_LLAMA)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"mlp_bias\": true is not supported for %s (its MLP has no biases)",
                         path, arch);
    cfg->qkv_bias = attn || cfg->arch == ARCH_QWEN2;
    cfg->o_bias = attn;
    cfg->mlp_bias = mlp;
    return 0;
}

/* The attention of each layer, as transformers runs it. tuna applies one sliding window (or
 * none) to every layer, so a per-layer mix is refused.
 * - LLaMA: full attention everywhere (LlamaModel ignores sliding_window).
 * - Mistral: sliding_window (default 4096, null = none) on every layer.
 * - Qwen2/Qwen3: the window (use_sliding_window ? sliding_window : none) on the layers whose
 *   layer_types entry is "sliding_attention"; without layer_types, those from
 *   max_window_layers (default 28) on. */
static int parse_layout(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    int rc = 0;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    int n_slide = 0, n_lt = 0;
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt))
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"layer_types\" must be a list", path);
        const cJSON *e;
        cJSON_ArrayForEach(e, lt) {
            const char *s = cJSON_IsString(e) ? e->valuestring : "";
            if (!strcmp(s, "sliding_attention"))
                n_slide++;
            else if (strcmp(s, "full_attention"))
                return tuna_errf(err, TUNA_EUNSUP,
                                 "%s: \"layer_types\" entry %d \"%.40s\" is not supported (tuna "
                                 "runs full_attention layers)",
                                 path, n_lt, s);
            n_lt++;
        }
        if (n_lt != cfg->L)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: \"layer_types\" has %d entries for num_hidden_layers %d", path,
                             n_lt, cfg->L);
    }
    int window = 0;
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (cfg->arch == ARCH_MISTRAL || cfg->arch == ARCH_QWEN2 || cfg->arch == ARCH_QWEN3) {
        int use = 1;
        if (cfg->arch != ARCH_MISTRAL &&
            (rc = get_bool(root, "use_sliding_window", 0, &use, path, err)))
            return rc;
        if (use && !(sw && cJSON_IsNull(sw))) {
            if ((rc = get_int(root, "sliding_window", 4096, 0, &window, path, err))) return rc;
            if (window < 1)
                return tuna_errf(err, TUNA_EFORMAT, "%s: \"sliding_window\" must be >= 1, got %d",
                                 path, window);
        }
    }
    if (cfg->arch == ARCH_MISTRAL) {
        /* MistralModel ignores layer_types: only the same rule on every layer is consistent */
        if (n_lt && n_slide != (window ? cfg->L : 0))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"layer_types\" mixes sliding and full attention, which "
                             "Mistral does not (it applies sliding_window to every layer)",
                             path);
        cfg->sliding_window = window;
        return 0;
    }
    if (cfg->arch == ARCH_QWEN2 || cfg->arch == ARCH_QWEN3) {
        const char *key = "layer_types";
        if (!n_lt) {
            int mwl = 28;
            if ((rc = get_int(root, "max_window_layers", 28, 0, &mwl, path, err))) return rc;
            n_slide = window ? (mwl < 0 ? cfg->L : mwl >= cfg->L ? 0 : cfg->L - mwl) : 0;
            key = "max_window_layers";
        } else if (n_slide && !window)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"layer_types\" has sliding_attention layers but "
                             "use_sliding_window is false or sliding_window null",
                             path);
        if (n_slide && n_slide != cfg->L)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" gives %d of %d layers a sliding window; tuna applies "
                             "one window to every layer or to none",
                             path, key, n_slide, cfg->L);
        cfg->sliding_window = n_slide ? window : 0;
        return 0;
    }
    /* LLaMA, GPT-2: no sliding window in transformers; a file that asks for one per layer is
     * not one of these models */
    if (n_slide)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"layer_types\" has sliding_attention layers, which %s does not "
                         "have",
                         path, config_arch_name(cfg->arch));
    cfg->sliding_window = 0;
    return 0;
}

// --- keys of other architectures that change the computation: accepted only at their neutral
// value, so a converted or hand-edited file of another model is refused instead of run wrong.
// Keys that do not change the math (use_cache, initializer_range, architectures,
// transformers_version, pad_token_id, pretraining_tp: transformers 4.x split the same matmul
// into slices, 5.x ignores it) pass; the dropouts, which change training only, are noted
// (note_dropouts) and said when a run starts.

typedef enum { NEUTRAL_NULL, NEUTRAL_FALSE, NEUTRAL_ZERO } Neutral;

static const struct {
    const char *key;
    Neutral neutral;
    const char *what;
} foreign_keys[] = {
        {"quantization_config", NEUTRAL_NULL, "a quantized checkpoint; tuna reads f32/f16/bf16"},
        {"attn_logit_softcapping", NEUTRAL_NULL, "attention logit softcapping"},
        {"final_logit_softcapping", NEUTRAL_NULL, "final logit softcapping"},
        {"query_pre_attn_scalar", NEUTRAL_NULL, "a custom attention scale"},
        {"attention_multiplier", NEUTRAL_NULL, "a custom attention scale"},
        {"embedding_multiplier", NEUTRAL_NULL, "scaled embeddings"},
        {"residual_multiplier", NEUTRAL_NULL, "scaled residuals"},
        {"logits_scaling", NEUTRAL_NULL, "scaled logits"},
        {"logit_scale", NEUTRAL_NULL, "scaled logits"},
        {"use_qk_norm", NEUTRAL_FALSE, "q/k norms"},
        {"num_experts", NEUTRAL_ZERO, "a mixture of experts"},
        {"num_local_experts", NEUTRAL_ZERO, "a mixture of experts"},
        {"n_routed_experts", NEUTRAL_ZERO, "a mixture of experts"},
        {"num_experts_per_tok", NEUTRAL_ZERO, "a mixture of experts"},
};

/* The model's own dropout probabilities, where non-zero, into cfg->dropout_keys: they change
 * nothing at inference; training goes without them and says so (train.c) */
static void note_dropouts(const cJSON *root, ModelConfig *cfg) {
    static const char *const keys[] = {"attention_dropout",   "hidden_dropout",
                                       "resid_pdrop",         "embd_pdrop",
                                       "attn_pdrop",          "dropout",
                                       "hidden_dropout_prob", "attention_probs_dropout_prob"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        if (!cJSON_IsNumber(it) || !(it->valuedouble > 0)) continue;
        int w = snprintf(cfg->dropout_keys + n, sizeof cfg->dropout_keys - n, "%s%s %g",
                         n ? ", " : "", keys[i], it->valuedouble);
        if (w < 0 || (size_t)w >= sizeof cfg->dropout_keys - n) break;
        n += (size_t)w;
    }
}

static int check_foreign_keys(const cJSON *root, const char *path, TunaErr *err) {
    for (size_t i = 0; i < sizeof foreign_keys / sizeof foreign_keys[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, foreign_keys[i].key);
        if (!it || cJSON_IsNull(it)) continue;
        Neutral n = foreign_keys[i].neutral;
        if (n == NEUTRAL_FALSE && cJSON_IsFalse(it)) continue;
        if (n == NEUTRAL_ZERO && cJSON_IsNumber(it) && it->valuedouble == 0) continue;
        char val[32];
        if (cJSON_IsNumber(it))
            snprintf(val, sizeof val, "%g", it->valuedouble);
        else
            snprintf(val, sizeof val, "%s",
                     cJSON_IsTrue(it)     ? "true"
                     : cJSON_IsFalse(it)  ? "false"
                     : cJSON_IsString(it) ? "a string"
                     : cJSON_IsObject(it) ? "an object"
                                          : "a list");
        return tuna_errf(err, TUNA_EUNSUP, "%s: \"%s\" = %s is not supported (%s)", path,
                         foreign_keys[i].key, val, foreign_keys[i].what);
    }
    return 0;
}

/* model_type (one of the five architectures) and torch_dtype / dtype. */
static int parse_model_type(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: missing \"model_type\" (expected one of llama, "
                         "mistral, qwen2, qwen3, gpt2)",
                         path);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt->valuestring);
    const char *t = mt->valuestring;
    if (!strcmp(t, "llama"))
        cfg->arch = ARCH_LLAMA;
    else if (!strcmp(t, "mistral"))
        cfg->arch = ARCH_MISTRAL;
    else if (!strcmp(t, "qwen2"))
        cfg->arch = ARCH_QWEN2;
    else if (!strcmp(t, "qwen3"))
        cfg->arch = ARCH_QWEN3;
    else if (!strcmp(t, "gpt2"))
        cfg->arch = ARCH_GPT2;
    else
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: model_type \"%s\" is not supported (expected one of llama, mistral, "
                         "qwen2, qwen3, gpt2)",
                         path, t);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (!cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (cJSON_IsString(dt))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dt->valuestring);
    return 0;
}

/* GPT2Config: n_embd, n_layer, ..., layer norm, learned positions, biases, GELU. */
static int parse_gpt2(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    TRY(get_int(root, "n_embd", 0, 1, &cfg->C, path, err));
    TRY(get_int(root, "n_layer", 0, 1, &cfg->L, path, err));
    TRY(get_int(root, "n_head", 0, 1, &cfg->NH, path, err));
    /* 4 * n_embd overflows an int for n_embd > 2^29: the limits below reject those */
    TRY(get_int(root, "n_inner", cfg->C <= (1 << 20) ? 4 * cfg->C : 0, 0, &cfg->FF, path, err));
    TRY(get_int(root, "n_positions", 1024, 0, &cfg->max_pos, path, err));
    TRY(get_float(root, "layer_norm_epsilon", 1e-5f, &cfg->norm_eps, path, err));
    TRY(get_bool(root, "tie_word_embeddings", 1, &cfg->tie_embeddings, path, err));
    cfg->KVH = cfg->NH;
    cfg->HS = cfg->NH > 0 ? cfg->C / cfg->NH : 0;
    cfg->norm = NORM_LAYER;
    cfg->learned_pos = 1;
    cfg->rope_type = ROPE_NONE;
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = 1;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    const char *a = cJSON_IsString(act) ? act->valuestring : "gelu_new";
    if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh") || !strcmp(a, "gelu_fast"))
        cfg->act = ACT_GELU_TANH;
    else if (!strcmp(a, "gelu"))
        cfg->act = ACT_GELU;
    else
        return tuna_errf(err, TUNA_EUNSUP, "%s: activation_function \"%s\" is not supported", path,
                         a);
    if (cfg->NH > 0 && cfg->C % cfg->NH)
        return tuna_errf(err, TUNA_EFORMAT, "%s: n_embd %d is not divisible by n_head %d", path,
                         cfg->C, cfg->NH);
    /* GPT2Attention: scores scaled by 1/sqrt(head_dim) only when scale_attn_weights, and
     * also by 1/(layer+1) when scale_attn_by_inverse_layer_idx; tuna does the first */
    int scale_w = 1, scale_inv = 0;
    TRY(get_bool(root, "scale_attn_weights", 1, &scale_w, path, err));
    TRY(get_bool(root, "scale_attn_by_inverse_layer_idx", 0, &scale_inv, path, err));
    if (!scale_w || scale_inv)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"%s\": %s is not supported (tuna scales "
                         "attention scores by 1/sqrt(head_dim) only)",
                         path, scale_w ? "scale_attn_by_inverse_layer_idx" : "scale_attn_weights",
                         scale_w ? "true" : "false");
    return 0;
}

/* LlamaConfig and kin: sizes, head_dim, positions, RMS norm, biases, SiLU, RoPE. */
static int parse_llama_like(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    TRY(get_int(root, "hidden_size", 0, 1, &cfg->C, path, err));
    TRY(get_int(root, "intermediate_size", 0, 1, &cfg->FF, path, err));
    TRY(get_int(root, "num_hidden_layers", 0, 1, &cfg->L, path, err));
    TRY(get_int(root, "num_attention_heads", 0, 1, &cfg->NH, path, err));
    TRY(get_int(root, "num_key_value_heads", cfg->NH, 0, &cfg->KVH, path, err));
    if (cfg->NH <= 0)
        return tuna_errf(err, TUNA_EFORMAT, "%s: num_attention_heads must be > 0, got %d", path,
                         cfg->NH);
    /* Qwen3Config's head_dim defaults to 128, the others' to hidden_size / heads */
    int def_hs = cfg->arch == ARCH_QWEN3 ? 128 : cfg->C / cfg->NH;
    TRY(get_int(root, "head_dim", def_hs, 0, &cfg->HS, path, err));
    if (cfg->arch != ARCH_QWEN3 && cfg->HS == cfg->C / cfg->NH && cfg->C % cfg->NH)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: hidden_size %d is not divisible by num_attention_heads %d", path,
                         cfg->C, cfg->NH);
    /* the config classes' defaults: LlamaConfig 2048, MistralConfig 131072, Qwen 32768 */
    int def_pos = cfg->arch == ARCH_LLAMA ? 2048 : cfg->arch == ARCH_MISTRAL ? 131072 : 32768;
    TRY(get_int(root, "max_position_embeddings", def_pos, 0, &cfg->max_pos, path, err));
    TRY(get_float(root, "rms_norm_eps", 1e-6f, &cfg->norm_eps, path, err));
    TRY(get_bool(root, "tie_word_embeddings", 0, &cfg->tie_embeddings, path, err));
    TRY(parse_biases(root, cfg, path, err));
    cfg->qk_norm = cfg->arch == ARCH_QWEN3;
    cfg->norm = NORM_RMS;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    const char *a = cJSON_IsString(act) ? act->valuestring : "silu";
    if (strcmp(a, "silu") && strcmp(a, "swish"))
        return tuna_errf(err, TUNA_EUNSUP, "%s: hidden_act \"%s\" is not supported (silu)", path,
                         a);
    cfg->act = ACT_SILU;
    TRY(parse_rope(root, cfg, path, err));
    return 0;
}

/* Sanity limits, checked before anything is sized from them, and the shape rules. */
static int check_limits(const ModelConfig *cfg, const char *path, TunaErr *err) {
    struct {
        const char *name;
        int v, lo, hi;
    } lim[] = {{"vocab_size", cfg->V, 1, 1 << 22},
               {"hidden_size", cfg->C, 1, 1 << 16},
               {"intermediate_size", cfg->FF, 1, 1 << 18},
               {"num_hidden_layers", cfg->L, 1, 1024},
               {"num_attention_heads", cfg->NH, 1, 1024},
               {"num_key_value_heads", cfg->KVH, 1, 1024},
               {"head_dim", cfg->HS, 2, 1024},
               {"max_position_embeddings", cfg->max_pos, 1, 1 << 24}};
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].v < lim[i].lo || lim[i].v > lim[i].hi)
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" = %d is out of range [%d, %d]", path,
                             lim[i].name, lim[i].v, lim[i].lo, lim[i].hi);
    if (cfg->NH % cfg->KVH)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                         path, cfg->NH, cfg->KVH);
    if (cfg->HS % 2 && !cfg->learned_pos)
        return tuna_errf(err, TUNA_EFORMAT, "%s: head_dim %d must be even for RoPE", path, cfg->HS);
    if (!(cfg->norm_eps > 0))
        return tuna_errf(err, TUNA_EFORMAT, "%s: norm epsilon must be > 0", path);
    return 0;
}

/* The parsed config.json object into cfg. */
static int parse_root(const cJSON *root, const char *path, ModelConfig *cfg, TunaErr *err) {
    if (!cJSON_IsObject(root))
        return tuna_errf(err, TUNA_EFORMAT, "%s: top level must be a JSON object", path);
    TRY(parse_model_type(root, cfg, path, err));
    cfg->bos_id = -1;
    TRY(get_int(root, "vocab_size", 0, 1, &cfg->V, path, err));
    TRY(get_int(root, "bos_token_id", -1, 0, &cfg->bos_id, path, err));
    TRY(get_eos(root, cfg, path, err));
    if (cfg->arch == ARCH_GPT2)
        TRY(parse_gpt2(root, cfg, path, err));
    else
        TRY(parse_llama_like(root, cfg, path, err));
    TRY(parse_layout(root, cfg, path, err));
    TRY(check_foreign_keys(root, path, err));
    note_dropouts(root, cfg);
    return check_limits(cfg, path, err);
}

int config_parse(const char *json, const char *path, ModelConfig *cfg, TunaErr *err) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json ? (long)(at - json) : -1;
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON near byte %ld", path, off);
    }
    int rc = parse_root(root, path, cfg, err);
    cJSON_Delete(root);
    return rc;
}

/* config.json and generation_config.json are a few KB: a larger file is refused before it is
 * read. Returns 0 when path is small enough (or missing: the read reports that). */
#define CONFIG_MAX_FILE (1 << 20)
static int check_size(const char *path, TunaErr *err) {
    struct stat sb;
    if (stat(path, &sb) == 0 && sb.st_size > CONFIG_MAX_FILE)
        return tuna_errf(err, TUNA_EFORMAT, "%s: file too large (%lld bytes, limit %d)", path,
                         (long long)sb.st_size, CONFIG_MAX_FILE);
    return 0;
}

int config_load(const char *dir, ModelConfig *cfg, TunaErr *err) {
    char path[4096];
    int g = gguf_model_path(dir, path, sizeof path, err); /* a .gguf file, or a folder of one */
    if (g < 0) return g;
    if (g == 1) return gguf_config_load(path, cfg, err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    int rc0 = check_size(path, err);
    if (rc0) return rc0;
    char *text = xread_file(path, &len);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: cannot read (no such file?)", path);
    int rc = config_parse(text, path, cfg, err);
    free(text);
    if (rc) return rc;
    cfg->gen_temperature = 1.0f;
    cfg->gen_top_k = 50;
    cfg->gen_top_p = 1.0f;
    cfg->gen_repetition_penalty = 1.0f;
    // generation_config.json overrides eos/bos when present (stories260K: eos [2, 1])
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if ((rc = check_size(path, err))) return rc;
    text = xread_file(path, &len);
    if (!text) return 0;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON", path);
    }
    ModelConfig gen = *cfg;
    rc = get_eos(root, &gen, path, err);
    if (!rc) rc = get_int(root, "bos_token_id", cfg->bos_id, 0, &gen.bos_id, path, err);
    if (!rc) rc = get_bool(root, "do_sample", 0, &gen.gen_do_sample, path, err);
    if (!rc) rc = get_float(root, "temperature", 1.0f, &gen.gen_temperature, path, err);
    if (!rc) rc = get_int(root, "top_k", 50, 0, &gen.gen_top_k, path, err);
    if (!rc) rc = get_float(root, "top_p", 1.0f, &gen.gen_top_p, path, err);
    if (!rc)
        rc = get_float(root, "repetition_penalty", 1.0f, &gen.gen_repetition_penalty, path, err);
    cJSON_Delete(root);
    if (rc) return rc;
    *cfg = gen;
    return 0;
}
