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
        if ((rc = (x)) != 0) goto fail;                                                            \
    } while (0)

static int parse_rope_scaling(const cJSON *root, ModelConfig *cfg, const char *path, TunaErr *err) {
    int rc = 0;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) return 0;
    if (!cJSON_IsObject(rs))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"rope_scaling\" must be an object or null", path);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "";
    if (!strcmp(type, "default")) return 0;
    if (!strcmp(type, "llama3")) {
        cfg->rope_type = ROPE_LLAMA3;
        TRY(get_float(rs, "factor", 8.0f, &cfg->rope_factor, path, err));
        TRY(get_float(rs, "low_freq_factor", 1.0f, &cfg->rope_low_freq_factor, path, err));
        TRY(get_float(rs, "high_freq_factor", 4.0f, &cfg->rope_high_freq_factor, path, err));
        TRY(get_int(rs, "original_max_position_embeddings", 8192, 0, &cfg->rope_orig_max_pos, path,
                    err));
        if (cfg->rope_factor <= 0 || cfg->rope_low_freq_factor <= 0 ||
            cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor || cfg->rope_orig_max_pos <= 0)
            return tuna_errf(err, TUNA_EFORMAT, "%s: \"rope_scaling\" has invalid llama3 values",
                             path);
        return 0;
    }
    if (!strcmp(type, "linear")) {
        cfg->rope_type = ROPE_LINEAR;
        TRY(get_float(rs, "factor", 1.0f, &cfg->rope_factor, path, err));
        if (cfg->rope_factor <= 0)
            return tuna_errf(err, TUNA_EFORMAT, "%s: rope_scaling factor must be > 0", path);
        return 0;
    }
    return tuna_errf(err, TUNA_EUNSUP,
                     "%s: rope_scaling type \"%s\" is not supported (supported: default, llama3, "
                     "linear)",
                     path, type);
fail:
    return rc;
}

int config_parse(const char *json, const char *path, ModelConfig *cfg, TunaErr *err) {
    int rc = 0;
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json ? (long)(at - json) : -1;
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON near byte %ld", path, off);
    }
    if (!cJSON_IsObject(root)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: top level must be a JSON object", path);
        goto fail;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: missing \"model_type\" (expected one of llama, "
                       "mistral, qwen2, qwen3, gpt2)",
                       path);
        goto fail;
    }
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
    else {
        rc = tuna_errf(err, TUNA_EUNSUP,
                       "%s: model_type \"%s\" is not supported (expected one of llama, mistral, "
                       "qwen2, qwen3, gpt2)",
                       path, t);
        goto fail;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (!cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(root, "dtype");
    if (cJSON_IsString(dt))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dt->valuestring);

    cfg->bos_id = -1;
    TRY(get_int(root, "vocab_size", 0, 1, &cfg->V, path, err));
    TRY(get_int(root, "bos_token_id", -1, 0, &cfg->bos_id, path, err));
    TRY(get_eos(root, cfg, path, err));
    if (cfg->arch == ARCH_GPT2) {
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
        else {
            rc = tuna_errf(err, TUNA_EUNSUP, "%s: activation_function \"%s\" is not supported",
                           path, a);
            goto fail;
        }
        if (cfg->NH > 0 && cfg->C % cfg->NH) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: n_embd %d is not divisible by n_head %d", path,
                           cfg->C, cfg->NH);
            goto fail;
        }
    } else {
        TRY(get_int(root, "hidden_size", 0, 1, &cfg->C, path, err));
        TRY(get_int(root, "intermediate_size", 0, 1, &cfg->FF, path, err));
        TRY(get_int(root, "num_hidden_layers", 0, 1, &cfg->L, path, err));
        TRY(get_int(root, "num_attention_heads", 0, 1, &cfg->NH, path, err));
        TRY(get_int(root, "num_key_value_heads", cfg->NH, 0, &cfg->KVH, path, err));
        if (cfg->NH <= 0) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: num_attention_heads must be > 0, got %d", path,
                           cfg->NH);
            goto fail;
        }
        int def_hs = cfg->C / cfg->NH;
        TRY(get_int(root, "head_dim", def_hs, 0, &cfg->HS, path, err));
        if (cfg->arch != ARCH_QWEN3 && cfg->HS == def_hs && cfg->C % cfg->NH) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: hidden_size %d is not divisible by num_attention_heads %d", path,
                           cfg->C, cfg->NH);
            goto fail;
        }
        TRY(get_int(root, "max_position_embeddings", 2048, 0, &cfg->max_pos, path, err));
        TRY(get_float(root, "rms_norm_eps", 1e-6f, &cfg->norm_eps, path, err));
        TRY(get_float(root, "rope_theta", 10000.0f, &cfg->rope_theta, path, err));
        TRY(get_bool(root, "tie_word_embeddings", 0, &cfg->tie_embeddings, path, err));
        int attn_bias = 0;
        TRY(get_bool(root, "attention_bias", 0, &attn_bias, path, err));
        TRY(get_bool(root, "mlp_bias", 0, &cfg->mlp_bias, path, err));
        cfg->qkv_bias = attn_bias || cfg->arch == ARCH_QWEN2;
        cfg->o_bias = cfg->arch == ARCH_QWEN2 ? 0 : attn_bias;
        cfg->qk_norm = cfg->arch == ARCH_QWEN3;
        cfg->norm = NORM_RMS;
        cfg->rope_type = ROPE_DEFAULT;
        const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
        const char *a = cJSON_IsString(act) ? act->valuestring : "silu";
        if (strcmp(a, "silu") && strcmp(a, "swish")) {
            rc = tuna_errf(err, TUNA_EUNSUP, "%s: hidden_act \"%s\" is not supported (silu)", path,
                           a);
            goto fail;
        }
        cfg->act = ACT_SILU;
        int use_sw = cfg->arch == ARCH_MISTRAL;
        if (cfg->arch == ARCH_QWEN2 || cfg->arch == ARCH_QWEN3)
            TRY(get_bool(root, "use_sliding_window", 0, &use_sw, path, err));
        if (use_sw) TRY(get_int(root, "sliding_window", 0, 0, &cfg->sliding_window, path, err));
        if (cfg->sliding_window < 0) cfg->sliding_window = 0;
        TRY(parse_rope_scaling(root, cfg, path, err));
        if (cfg->rope_theta <= 0) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: rope_theta must be > 0", path);
            goto fail;
        }
    }
    // --- sanity limits, checked before anything is sized from them
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
        if (lim[i].v < lim[i].lo || lim[i].v > lim[i].hi) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" = %d is out of range [%d, %d]", path,
                           lim[i].name, lim[i].v, lim[i].lo, lim[i].hi);
            goto fail;
        }
    if (cfg->NH % cfg->KVH) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, cfg->NH, cfg->KVH);
        goto fail;
    }
    if (cfg->HS % 2 && !cfg->learned_pos) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: head_dim %d must be even for RoPE", path, cfg->HS);
        goto fail;
    }
    if (!(cfg->norm_eps > 0)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: norm epsilon must be > 0", path);
        goto fail;
    }
fail:
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
