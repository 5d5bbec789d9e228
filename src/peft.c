#include "peft.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gguf_model.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "xalloc.h"

// --- files and folders

static int copy_file(const char *src, const char *dst) {
    size_t n;
    char *buf = xread_file(src, &n);
    if (!buf) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(buf, 1, n, f) == n;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    if (fclose(f)) ok = 0;
    return ok ? 0 : -1;
}

// --- adapters

/* trainable_token_indices: a list of ids, or {"embed_tokens": [ids]} (one embedding here). */
static int read_token_indices(const cJSON *ti, char *tokens, size_t cap, const char *path,
                              TunaErr *err) {
    tokens[0] = '\0';
    if (!ti || cJSON_IsNull(ti)) return 0;
    if (cJSON_IsObject(ti)) {
        if (cJSON_GetArraySize(ti) != 1)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"trainable_token_indices\" for more than one embedding", path);
        ti = ti->child;
    }
    if (!cJSON_IsArray(ti))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: \"trainable_token_indices\" must be a list of token ids", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, ti) {
        size_t o = strlen(tokens);
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || o + 16 >= cap)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: \"trainable_token_indices\" must be a list of token ids", path);
        snprintf(tokens + o, cap - o, "%s%d", o ? "," : "", e->valueint);
    }
    return 0;
}

int adapter_read_config(const char *dir, TrainSetup *setup, char *targets, size_t cap, char *tokens,
                        size_t tcap, TunaErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = xread_file(path, NULL);
    if (!text)
        return tuna_errf(err, TUNA_EIO, "%s: cannot read (is %s a PEFT adapter folder?)", path,
                         dir);
    cJSON *root = cJSON_Parse(text);
    free(text);
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON", path);
        goto done;
    }
    const cJSON *pt = cJSON_GetObjectItem(root, "peft_type");
    if (!cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA")) {
        rc = tuna_errf(err, TUNA_EUNSUP, "%s: peft_type %s is not supported here (LORA)", path,
                       cJSON_IsString(pt) ? pt->valuestring : "(missing)");
        goto done;
    }
    /* what would change the adapter's math or shapes and tuna does not do: refused */
    const cJSON *dora = cJSON_GetObjectItem(root, "use_dora"),
                *ltt = cJSON_GetObjectItem(root, "layers_to_transform"),
                *rp = cJSON_GetObjectItem(root, "rank_pattern"),
                *ap = cJSON_GetObjectItem(root, "alpha_pattern"),
                *mts = cJSON_GetObjectItem(root, "modules_to_save"),
                *bias = cJSON_GetObjectItem(root, "bias");
    const char *bad = NULL;
    if (ltt && !cJSON_IsNull(ltt))
        bad = "layers_to_transform";
    else if (cJSON_IsObject(rp) && rp->child)
        bad = "rank_pattern";
    else if (cJSON_IsObject(ap) && ap->child)
        bad = "alpha_pattern";
    else if (cJSON_IsArray(mts) && mts->child)
        bad = "modules_to_save";
    else if (cJSON_IsString(bias) && strcmp(bias->valuestring, "none"))
        bad = "bias";
    if (bad) {
        rc = tuna_errf(err, TUNA_EUNSUP,
                       "%s: \"%s\" is not supported (tuna's LoRA: one rank and alpha, every "
                       "layer, no trained biases or modules_to_save)",
                       path, bad);
        goto done;
    }
    memset(setup, 0, sizeof *setup);
    setup->method = METHOD_LORA;
    const cJSON *r = cJSON_GetObjectItem(root, "r"), *a = cJSON_GetObjectItem(root, "lora_alpha");
    if (!cJSON_IsNumber(r) || r->valueint < 1 || !cJSON_IsNumber(a)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"r\" and \"lora_alpha\" must be numbers", path);
        goto done;
    }
    setup->lora_rank = r->valueint;
    setup->lora_alpha = (float)a->valuedouble;
    setup->lora_rslora = cJSON_IsTrue(cJSON_GetObjectItem(root, "use_rslora"));
    setup->lora_dora = cJSON_IsTrue(dora);
    /* PiSSA (init_lora_weights "pissa"): as peft does on load, the base gets the residual of the
     * top-r SVD (train_state_init), then the adapter's A and B; the other inits that change the
     * base are refused */
    const cJSON *ilw = cJSON_GetObjectItem(root, "init_lora_weights");
    if (cJSON_IsString(ilw)) {
        const char *v = ilw->valuestring;
        if (!strcmp(v, "pissa"))
            setup->lora_pissa = 1;
        else if (!strncmp(v, "pissa_niter", 11) || !strcmp(v, "olora") || !strcmp(v, "corda") ||
                 !strcmp(v, "loftq") || !strcmp(v, "lora_ga")) {
            rc = tuna_errf(err, TUNA_EUNSUP,
                           "%s: init_lora_weights \"%s\" is not supported (it changes the base "
                           "weights; tuna does pissa); convert the adapter to plain LoRA in peft",
                           path, v);
            goto done;
        }
    }
    const cJSON *t = cJSON_GetObjectItem(root, "target_modules"), *e;
    targets[0] = '\0';
    if (cJSON_IsString(t))
        snprintf(targets, cap, "%s", t->valuestring);
    else if (cJSON_IsArray(t)) {
        cJSON_ArrayForEach(e, t) {
            if (!cJSON_IsString(e)) continue;
            size_t o = strlen(targets);
            snprintf(targets + o, cap - o, "%s%s", o ? "," : "", e->valuestring);
        }
    } else {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"target_modules\" must be a list", path);
        goto done;
    }
    setup->lora_targets = targets;
    if ((rc = read_token_indices(cJSON_GetObjectItem(root, "trainable_token_indices"), tokens, tcap,
                                 path, err)))
        goto done;
    setup->lora_tokens = tokens[0] ? tokens : NULL;
done:
    cJSON_Delete(root);
    return rc;
}

/* A PREFIX_TUNING adapter: prompt_embeddings into the model's KV-cache prefix. */
static int prefix_load(Model *m, const char *dir, TunaErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    const ModelConfig *c = &m->cfg;
    int64_t PW = (int64_t)c->L * 2 * c->KVH * c->HS;
    const StTensor *t = safetensors_find(st, "prompt_embeddings");
    if (!t || t->ndim != 2 || t->shape[1] != PW || t->shape[0] < 1 || t->shape[0] > 4096) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: needs \"prompt_embeddings\" of shape [P, %lld] (layers x 2 x kv heads "
                       "x head dim)",
                       path, (long long)PW);
    } else {
        size_t n = (size_t)t->shape[0] * (size_t)PW;
        float *h = xmalloc(sizeof(float) * n);
        rc = st_tensor_to_f32(t, h, n, err);
        if (!rc) rc = model_set_prefix(m, h, (int)t->shape[0], err);
        free(h);
    }
    safetensors_free(st);
    return rc;
}

/* A PROMPT_TUNING or P_TUNING adapter: prompt_embeddings (P, C), the virtual tokens PEFT prepends
 * to the input (for P_TUNING the encoder's output, which is all save_pretrained keeps), run once
 * into the model's KV-cache prefix. */
static int prompt_load(Model *m, const char *dir, TunaErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    int64_t C = m->cfg.C;
    const StTensor *t = safetensors_find(st, "prompt_embeddings");
    if (!t || t->ndim != 2 || t->shape[1] != C || t->shape[0] < 1 || t->shape[0] > 4096) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: needs \"prompt_embeddings\" of shape [P, %lld] (the hidden size)", path,
                       (long long)C);
    } else {
        size_t n = (size_t)t->shape[0] * (size_t)C;
        float *h = xmalloc(sizeof(float) * n);
        rc = st_tensor_to_f32(t, h, n, err);
        if (!rc) rc = model_set_prompt(m, h, (int)t->shape[0], err);
        free(h);
    }
    safetensors_free(st);
    return rc;
}

/* An adapter tensor by tuna's name; PEFT also writes names with the adapter name ("default")
 * in some versions. Prompt tuning's embedding is saved as prompt_embeddings. */
static const StTensor *adapter_find(const SafeTensors *st, const char *name) {
    const StTensor *t = safetensors_find(st, name);
    if (t) return t;
    if (!strcmp(name, "prompt_encoder.default.embedding.weight"))
        return safetensors_find(st, "prompt_embeddings");
    char alt[256];
    const char *dot = strstr(name, ".weight");
    if (dot)
        snprintf(alt, sizeof alt, "%.*s.default.weight", (int)(dot - name), name);
    else
        snprintf(alt, sizeof alt, "%s.default", name);
    return safetensors_find(st, alt);
}

static void free_adapter_state(void *ts) {
    train_state_free(ts);
}

int adapter_load(Model *m, const char *dir, TunaErr *err) {
    TrainSetup setup;
    char targets[512], tokens[4096];
    {
        char path[4096];
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        char *text = xread_file(path, NULL);
        int is_prefix = text && strstr(text, "\"PREFIX_TUNING\"") != NULL;
        int is_prompt = text && (strstr(text, "\"PROMPT_TUNING\"") || strstr(text, "\"P_TUNING\""));
        free(text);
        if (is_prefix) return prefix_load(m, dir, err);
        if (is_prompt) return prompt_load(m, dir, err);
    }
    int rc = adapter_read_config(dir, &setup, targets, sizeof targets, tokens, sizeof tokens, err);
    if (rc) return rc;
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafeTensors *st = NULL;
    rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    TrainState *ts = NULL;
    rc = train_state_init(m, &setup, 1, 1, &ts, err);
    if (rc) goto done;
    int np;
    const TrainParam *tp = train_params(ts, &np);
    for (int i = 0; i < np; i++) {
        const StTensor *t = adapter_find(st, tp[i].name);
        if (!t) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\" missing (r=%d, targets %s)", path,
                           tp[i].name, setup.lora_rank, targets);
            goto done;
        }
        if (t->ndim != tp[i].ndim || t->shape[0] != tp[i].shape[0] ||
            (t->ndim == 2 && t->shape[1] != tp[i].shape[1])) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: tensor \"%s\" has the wrong shape for this model", path,
                           tp[i].name);
            goto done;
        }
        float *h = xmalloc(sizeof(float) * tp[i].n);
        rc = st_tensor_to_f32(t, h, tp[i].n, err);
        if (!rc) m->be->ops->upload(m->be, tp[i].data, h, sizeof(float) * tp[i].n);
        free(h);
        if (rc) goto done;
    }
    if (m->n_qbytes) { /* a typed base is not merged into: the adapter runs unmerged */
        rc = train_lora_view(ts, &m->own_lora, err);
        if (!rc) rc = model_set_lora(m, &m->own_lora, err);
        if (!rc) {
            m->lora_owner = ts;
            m->lora_owner_free = free_adapter_state;
            ts = NULL;
        }
    } else {
        rc = train_lora_merge(ts, err);
    }
done:
    train_state_free(ts);
    safetensors_free(st);
    return rc;
}

int adapter_save(const TrainState *ts, const char *dir, const char *base, TunaErr *err) {
    char tmp[4200];
    int rc = dir_begin(dir, tmp, sizeof tmp, err);
    if (!rc) rc = adapter_write(ts, tmp, base, err);
    if (!rc) rc = dir_commit(tmp, dir, err);
    return rc;
}

/* PEFT's PREFIX_TUNING adapter: prompt_embeddings (P, L*2*KVH*HS) and its config. */
static int prefix_write(const TrainState *ts, const char *tmp, const char *base, TunaErr *err) {
    char path[4400];
    float *pre;
    int P = train_prefix((TrainState *)ts, &pre);
    const ModelConfig *c = &train_model(ts)->cfg;
    const TrainSetup *s = train_setup(ts);
    int KD = c->KVH * c->HS;
    StWriteTensor wt = {.name = "prompt_embeddings",
                        .dtype = ST_F32,
                        .ndim = 2,
                        .shape = {P, (int64_t)c->L * 2 * KD},
                        .data = pre};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    const char *meta[] = {"format", "pt"};
    int rc = safetensors_write(path, &wt, 1, meta, 1, err);
    if (rc) return rc;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "peft_type", "PREFIX_TUNING");
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(j, "base_model_name_or_path", base ? base : "");
    cJSON_AddNumberToObject(j, "num_virtual_tokens", P);
    cJSON_AddNumberToObject(j, "token_dim", KD);
    cJSON_AddNumberToObject(j, "num_transformer_submodules", 1);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->KVH);
    cJSON_AddNumberToObject(j, "num_layers", c->L);
    cJSON_AddNumberToObject(j, "encoder_hidden_size", s->prefix_projection ? s->prefix_hidden : KD);
    cJSON_AddBoolToObject(j, "prefix_projection", s->prefix_projection);
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    rc = write_text(path, txt) ? tuna_errf(err, TUNA_EIO, "%s: cannot write", path) : 0;
    free(txt);
    return rc;
}

/* PEFT's PROMPT_TUNING or P_TUNING adapter: prompt_embeddings (P, C), the virtual tokens as the
 * encoder makes them now (PEFT's save_pretrained writes the same for both: for P_TUNING the
 * encoder's output, not the MLP or LSTM), and the config. */
static int prompt_write(const TrainState *ts, const char *tmp, const char *base, TunaErr *err) {
    char path[4400];
    float *emb;
    int P = train_prompt((TrainState *)ts, &emb);
    const ModelConfig *c = &train_model(ts)->cfg;
    const TrainSetup *s = train_setup(ts);
    StWriteTensor wt = {.name = "prompt_embeddings",
                        .dtype = ST_F32,
                        .ndim = 2,
                        .shape = {P, c->C},
                        .data = emb};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    const char *meta[] = {"format", "pt"};
    int rc = safetensors_write(path, &wt, 1, meta, 1, err);
    if (rc) return rc;
    int v1 = s->method == METHOD_PTUNING_V1;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "peft_type", v1 ? "P_TUNING" : "PROMPT_TUNING");
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(j, "base_model_name_or_path", base ? base : "");
    cJSON_AddNumberToObject(j, "num_virtual_tokens", P);
    cJSON_AddNumberToObject(j, "token_dim", c->C);
    cJSON_AddNumberToObject(j, "num_transformer_submodules", 1);
    cJSON_AddNumberToObject(j, "num_attention_heads", c->NH);
    cJSON_AddNumberToObject(j, "num_layers", c->L);
    if (v1) {
        cJSON_AddStringToObject(j, "encoder_reparameterization_type",
                                s->prompt_lstm ? "LSTM" : "MLP");
        cJSON_AddNumberToObject(j, "encoder_hidden_size", s->prefix_hidden);
        cJSON_AddNumberToObject(j, "encoder_num_layers", s->prompt_layers ? s->prompt_layers : 2);
        cJSON_AddNumberToObject(j, "encoder_dropout", 0.0);
    } else {
        /* how it started matters to a fresh PEFT model only; a loaded one takes the tensor */
        cJSON_AddStringToObject(j, "prompt_tuning_init", "RANDOM");
    }
    cJSON_AddBoolToObject(j, "inference_mode", 1);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    rc = write_text(path, txt) ? tuna_errf(err, TUNA_EIO, "%s: cannot write", path) : 0;
    free(txt);
    return rc;
}

/* The LoRA adapter's tensors and config. convert: a PiSSA adapter as the plain LoRA of the
 * original base that peft's save_pretrained(path_initial_model_for_weight_conversion=...) writes:
 * W + s'·B'·A' = W_res + s·B·A with A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r), r' = 2r
 * and alpha' = 2 alpha (rsLoRA: sqrt(2) alpha), so s' = s; A0, B0 the SVD factors it started
 * from (train_pissa_init). */
static int lora_write(const TrainState *ts, const char *tmp, const char *base, int convert,
                      TunaErr *err) {
    char path[4400];
    int rc;
    int np;
    const TrainParam *tp = train_params(ts, &np);
    StWriteTensor *wt = xcalloc((size_t)np, sizeof *wt);
    float **host = xcalloc((size_t)np, sizeof *host);
    Backend *be = NULL;
    for (int i = 0; i < np; i++) {
        host[i] = xmalloc(sizeof(float) * tp[i].n);
        (void)be;
        wt[i].name = tp[i].name;
        wt[i].dtype = ST_F32;
        wt[i].ndim = tp[i].ndim;
        wt[i].shape[0] = tp[i].shape[0];
        wt[i].shape[1] = tp[i].shape[1];
        wt[i].data = host[i];
    }
    train_download_params(ts, host);
    for (int i = 0; convert && i < np; i++) {
        const float *z = train_pissa_init(ts, &tp[i]);
        int is_a = strstr(tp[i].name, ".lora_A.") != NULL;
        int rows = (int)tp[i].shape[0], cols = (int)tp[i].shape[1];
        float *w = xmalloc(sizeof(float) * 2 * tp[i].n);
        if (is_a) { /* (r, in): the rows of A, then A0's */
            memcpy(w, host[i], sizeof(float) * tp[i].n);
            memcpy(w + tp[i].n, z, sizeof(float) * tp[i].n);
            wt[i].shape[0] = 2 * rows;
        } else { /* (out, r): each row of B, then of -B0 */
            for (int o = 0; o < rows; o++)
                for (int k = 0; k < cols; k++) {
                    w[(size_t)o * 2 * cols + k] = host[i][(size_t)o * cols + k];
                    w[(size_t)o * 2 * cols + cols + k] = -z[(size_t)o * cols + k];
                }
            wt[i].shape[1] = 2 * cols;
        }
        free(host[i]);
        host[i] = w;
        wt[i].data = w;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    const char *meta[] = {"format", "pt"};
    rc = safetensors_write(path, wt, np, meta, 1, err);
    for (int i = 0; i < np; i++)
        free(host[i]);
    free(host);
    free(wt);
    if (rc) return rc;
    // adapter_config.json with PEFT's field names
    const TrainSetup *s = train_setup(ts);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(c, "base_model_name_or_path", base ? base : "");
    double alpha = (double)s->lora_alpha * (!convert ? 1 : s->lora_rslora ? sqrt(2.0) : 2);
    cJSON_AddNumberToObject(c, "r", s->lora_rank * (convert ? 2 : 1));
    cJSON_AddNumberToObject(c, "lora_alpha", alpha);
    cJSON_AddNumberToObject(c, "lora_dropout", (double)s->lora_dropout);
    cJSON *tm = cJSON_AddArrayToObject(c, "target_modules");
    char *list = xstrdup(train_lora_targets(ts)), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        cJSON_AddItemToArray(tm, cJSON_CreateString(t));
    free(list);
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", train_model(ts)->cfg.arch == ARCH_GPT2);
    cJSON_AddBoolToObject(c, "use_rslora", s->lora_rslora);
    cJSON_AddBoolToObject(c, "use_dora", s->lora_dora);
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    /* PiSSA: peft (and tuna) loading it runs the same SVD on the original base, leaving the
     * residual there, then sets the saved A and B: the base stays the original model's */
    if (s->lora_pissa && !convert)
        cJSON_AddStringToObject(c, "init_lora_weights", "pissa");
    else
        cJSON_AddBoolToObject(c, "init_lora_weights", 1);
    cJSON_AddNullToObject(c, "modules_to_save");
    int n_tok;
    const int32_t *tok = train_lora_tokens(ts, &n_tok);
    if (n_tok) {
        cJSON *ti = cJSON_AddArrayToObject(c, "trainable_token_indices");
        for (int i = 0; i < n_tok; i++)
            cJSON_AddItemToArray(ti, cJSON_CreateNumber(tok[i]));
    }
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddNullToObject(c, "layers_pattern");
    cJSON_AddItemToObject(c, "rank_pattern", cJSON_CreateObject());
    cJSON_AddItemToObject(c, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddStringToObject(c, "revision", "");
    char *txt = cJSON_Print(c);
    cJSON_Delete(c);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    rc = write_text(path, txt) ? tuna_errf(err, TUNA_EIO, "%s: cannot write", path) : 0;
    free(txt);
    return rc;
}

int adapter_write(const TrainState *ts, const char *tmp, const char *base, TunaErr *err) {
    if (train_setup(ts)->method == METHOD_PTUNING) return prefix_write(ts, tmp, base, err);
    if (train_setup(ts)->method == METHOD_PROMPT || train_setup(ts)->method == METHOD_PTUNING_V1)
        return prompt_write(ts, tmp, base, err);
    return lora_write(ts, tmp, base, 0, err);
}

int adapter_save_pissa_converted(const TrainState *ts, const char *dir, const char *base,
                                 TunaErr *err) {
    const TrainSetup *s = train_setup(ts);
    int n_tok;
    train_lora_tokens(ts, &n_tok);
    if (s->method != METHOD_LORA || !s->lora_pissa)
        return tuna_errf(err, TUNA_EINVAL, "pissa_convert: the run is not a PiSSA LoRA");
    if (s->lora_dora || n_tok) /* peft's conversion keeps lora_A and lora_B alone */
        return tuna_errf(err, TUNA_EUNSUP,
                         "pissa_convert: not with %s (the converted LoRA holds A and B alone)",
                         s->lora_dora ? "DoRA" : "trainable tokens");
    char tmp[4200];
    int rc = dir_begin(dir, tmp, sizeof tmp, err);
    if (!rc) rc = lora_write(ts, tmp, base, 1, err);
    if (!rc) rc = dir_commit(tmp, dir, err);
    return rc;
}

// --- Hugging Face checkpoint

int model_save_hf(const Model *m, const char *dir, TunaErr *err) {
    char tmp[4200];
    int rc = dir_begin(dir, tmp, sizeof tmp, err);
    if (!rc) rc = model_write_hf(m, tmp, err);
    if (!rc) rc = dir_commit(tmp, dir, err);
    return rc;
}

/* An unmerged adapter's W += scale * B·A at p's (layer, site), W (out, in) as the model holds it,
 * and for DoRA each row then times its g = magnitude / ||W + scale·B·A|| (peft's merge): the
 * adapter an export of a typed base merges into the dequantized weight. */
static void add_lora_delta(const Model *m, const ParamInfo *p, float *W) {
    const ModelLora *lo = m->lora;
    const float *Ad = lo->A[p->layer][p->site], *Bd = lo->B[p->layer][p->site];
    if (!Ad || !Bd) return;
    int r = lo->rank, in = (int)(p->mode == 0 ? p->shape[1] : p->shape[0]);
    int out = (int)(p->n / (size_t)in);
    float *A = xmalloc(sizeof(float) * (size_t)r * in),
          *B = xmalloc(sizeof(float) * (size_t)out * r);
    m->be->ops->download(m->be, A, Ad, sizeof(float) * (size_t)r * in);
    m->be->ops->download(m->be, B, Bd, sizeof(float) * (size_t)out * r);
    const float *g = lo->G ? lo->G[p->layer][p->site] : NULL; /* DoRA: rows times magnitude/norm */
    for (int o = 0; o < out; o++)                             /* train_lora_merge's arithmetic */
        for (int i = 0; i < in; i++) {
            double s = 0;
            for (int k = 0; k < r; k++)
                s += (double)B[(size_t)o * r + k] * (double)A[(size_t)k * in + i];
            W[(size_t)o * in + i] += (float)(s * (double)lo->scale);
            if (g) W[(size_t)o * in + i] *= g[o];
        }
    free(A);
    free(B);
}

int model_hf_tensor_list(const Model *m, StWriteTensor **wt_out, int *n_out) {
    StWriteTensor *wt = xcalloc((size_t)m->n_pinfo, sizeof *wt);
    int n = 0;
    for (int i = 0; i < m->n_pinfo; i++) {
        const ParamInfo *p = &m->pinfo[i];
        int j = n;
        if (p->part > 0) /* later parts of GPT-2's c_attn go into the tensor already started */
            for (j = 0; j < n && strcmp(wt[j].name, p->name); j++) {}
        if (j < n) continue;
        wt[n].name = p->name;
        wt[n].dtype = ST_F32;
        wt[n].ndim = p->ndim;
        wt[n].shape[0] = p->shape[0];
        wt[n].shape[1] = p->shape[1];
        n++;
    }
    *wt_out = wt;
    *n_out = n;
    return 0;
}

void model_hf_tensor_fill(const Model *m, const char *name, float *dst) {
    Backend *be = m->be;
    int started = 0;
    for (int i = 0; i < m->n_pinfo; i++) {
        const ParamInfo *p = &m->pinfo[i];
        if (strcmp(p->name, name)) continue;
        size_t fn = (size_t)p->shape[0] * (p->ndim == 2 ? (size_t)p->shape[1] : 1);
        if (!started) memset(dst, 0, sizeof(float) * fn);
        started = 1;
        /* the checkpoint's layout as it is (mode 0): straight into dst, no second buffer of the
         * tensor's size (an 8B model's embedding is 2.1 GB in fp32) */
        float *part = p->mode == 0 ? dst : xmalloc(sizeof(float) * p->n);
        if (p->q) /* a typed base weight: dequantized, as peft merges into a 4/8-bit base */
            weight_download_f32(be, p->q, part);
        else
            be->ops->download(be, part, m->params + p->off, sizeof(float) * p->n);
        if (m->lora && p->site >= 0) add_lora_delta(m, p, part);
        size_t R = (size_t)p->shape[0], Cn = p->ndim == 2 ? (size_t)p->shape[1] : 1;
        if (p->mode == 1) { /* mode 0 is in place */
            for (size_t r = 0; r < R; r++)
                for (size_t c = 0; c < Cn; c++)
                    dst[r * Cn + c] = part[c * R + r];
        } else if (p->mode == 2) {
            size_t W = Cn / 3, off = (size_t)p->part * W;
            for (size_t r = 0; r < R; r++)
                for (size_t c = 0; c < W; c++)
                    dst[r * Cn + off + c] = part[c * R + r];
        } else if (p->mode == 3) {
            memcpy(dst + (size_t)p->part * (R / 3), part, sizeof(float) * (R / 3));
        }
        if (part != dst) free(part);
    }
}

/* model_hf_tensor_fill for safetensors_write_fill, over one file's entries */
typedef struct HfFill {
    const Model *m;
    const StWriteTensor *wt;
    const HfWriteOpts *o;
    int *done, total; /* the tensors made so far, of all the files' */
} HfFill;

static void hf_fill(void *ctx, int i, float *dst) {
    const HfFill *f = ctx;
    model_hf_tensor_fill(f->m, f->wt[i].name, dst);
    if (f->o->progress) f->o->progress(f->o->progress_ctx, ++*f->done, f->total);
}

const char *hf_dtype_name(StDtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

StDtype hf_dtype_by_name(const char *torch_dtype) {
    return !strcmp(torch_dtype, "bfloat16")  ? ST_BF16
           : !strcmp(torch_dtype, "float16") ? ST_F16
                                             : ST_F32;
}

/* config.json (copied from the base, or written for a GGUF one) saying the dtype the tensors are
 * written in: its torch_dtype and transformers 5's dtype, whichever it has (torch_dtype added
 * when it has neither). Rewritten only when it says otherwise, so a base's file is copied as it
 * is (one that does not parse is left so: the base loaded from it). */
static int hf_config_dtype(const char *path, StDtype dt, TunaErr *err) {
    size_t n;
    char *text = xread_file(path, &n);
    cJSON *j = text ? cJSON_ParseWithLength(text, n) : NULL;
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return 0;
    }
    const char *want = hf_dtype_name(dt), *keys[] = {"torch_dtype", "dtype"};
    int has[2], changed = 0;
    for (int k = 0; k < 2; k++)
        has[k] = cJSON_HasObjectItem(j, keys[k]);
    for (int k = 0; k < 2; k++) {
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, keys[k]));
        if ((has[k] || (k == 0 && !has[1])) && !(v && !strcmp(v, want))) {
            cJSON *s = cJSON_CreateString(want);
            if (has[k])
                cJSON_ReplaceItemInObjectCaseSensitive(j, keys[k], s);
            else
                cJSON_AddItemToObject(j, keys[k], s);
            changed = 1;
        }
    }
    char *out = changed ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    int rc = out && write_text(path, out) ? tuna_errf(err, TUNA_EIO, "%s: cannot write", path) : 0;
    free(out);
    return rc;
}

/* shard s of ns's file name: model.safetensors alone, else transformers' model-0000i-of-0000n */
static void shard_name(char *dst, size_t cap, int s, int ns) {
    if (ns > 1)
        snprintf(dst, cap, "model-%05d-of-%05d.safetensors", s + 1, ns);
    else
        snprintf(dst, cap, "model.safetensors");
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const StWriteTensor *const *)a)->name,
                  (*(const StWriteTensor *const *)b)->name);
}

/* The weight files: model.safetensors, or shards of at most shard_bytes each (a tensor larger
 * than that alone in its own) in the tensors' order, model-0000i-of-0000n.safetensors with
 * model.safetensors.index.json, as transformers' save_pretrained cuts them. Each tensor is made
 * (merged, dequantized) as it is written. */
static int write_weights(const Model *m, const char *dir, const HfWriteOpts *o, TunaErr *err) {
    StDtype dt = o->dtype;
    uint64_t shard_bytes = o->shard_bytes;
    StWriteTensor *wt;
    int n;
    model_hf_tensor_list(m, &wt, &n);
    int *shard = xcalloc((size_t)(n ? n : 1), sizeof *shard), ns = n ? 1 : 0;
    uint64_t cur = 0, total = 0;
    for (int i = 0; i < n; i++) {
        wt[i].dtype = dt;
        uint64_t b = (uint64_t)wt[i].shape[0] * (uint64_t)(wt[i].ndim == 2 ? wt[i].shape[1] : 1) *
                     st_dtype_size(dt);
        if (cur && shard_bytes && cur + b > shard_bytes) ns++, cur = 0;
        shard[i] = ns - 1;
        cur += b;
        total += b;
    }
    const char *meta[] = {"format", "pt"};
    char path[4400], file[64];
    int rc = 0, done = 0;
    for (int s = 0, i0 = 0; s < ns && !rc; s++) {
        int i1 = i0;
        while (i1 < n && shard[i1] == s)
            i1++;
        shard_name(file, sizeof file, s, ns);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        HfFill f = {m, wt + i0, o, &done, n};
        rc = safetensors_write_fill(path, wt + i0, i1 - i0, meta, 1, hf_fill, &f, err);
        i0 = i1;
    }
    if (!rc && ns > 1) { /* the index: every tensor's file, in name order as transformers has it */
        const StWriteTensor **by = xcalloc((size_t)n, sizeof *by);
        for (int i = 0; i < n; i++)
            by[i] = &wt[i];
        qsort(by, (size_t)n, sizeof *by, by_name);
        cJSON *idx = cJSON_CreateObject();
        cJSON *md = cJSON_AddObjectToObject(idx, "metadata");
        cJSON_AddNumberToObject(md, "total_size", (double)total);
        cJSON *map = cJSON_AddObjectToObject(idx, "weight_map");
        for (int k = 0; k < n; k++) {
            shard_name(file, sizeof file, shard[by[k] - wt], ns);
            cJSON_AddStringToObject(map, by[k]->name, file);
        }
        char *text = cJSON_Print(idx);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (write_text(path, text)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
        free(text);
        cJSON_Delete(idx);
        free(by);
    }
    free(shard);
    free(wt);
    return rc;
}

/* dir's tokenizer carries the chat template jinja: tokenizer_config.json's "chat_template"
 * (the file made when there is none), and chat_template.jinja where the folder has one
 * (transformers reads that file before the key) */
static int hf_chat_template(const char *dir, const char *jinja, TunaErr *err) {
    char path[4400];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    size_t n = 0;
    char *text = xread_file(path, &n);
    cJSON *j = text ? cJSON_ParseWithLength(text, n) : cJSON_CreateObject();
    free(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return tuna_errf(err, TUNA_EFORMAT, "%s: not a JSON object; cannot set its chat_template",
                         path);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "chat_template");
    cJSON_AddStringToObject(j, "chat_template", jinja);
    char *out = cJSON_Print(j);
    cJSON_Delete(j);
    int rc = !out || write_text(path, out) ? tuna_errf(err, TUNA_EIO, "%s: cannot write", path) : 0;
    free(out);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (!rc && !access(path, F_OK) && write_text(path, jinja))
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
    return rc;
}

int model_write_hf_as(const Model *m, const char *tmp, const HfWriteOpts *o, TunaErr *err) {
    char path[4400], src[4400];
    int rc = write_weights(m, tmp, o, err);
    if (rc) return rc;
    /* the tokenizer's files as save_pretrained writes them (a slow tokenizer's too) */
    const char *files[] = {"config.json",         "generation_config.json",
                           "tokenizer.json",      "tokenizer_config.json",
                           "tokenizer.model",     "special_tokens_map.json",
                           "chat_template.jinja", "added_tokens.json",
                           "vocab.json",          "merges.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(src, sizeof src, "%s/%s", m->dir, files[i]);
        snprintf(path, sizeof path, "%s/%s", tmp, files[i]);
        if (access(src, R_OK)) continue;
        if (copy_file(src, path)) return tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
    }
    /* a model loaded from GGUF has no config.json to copy: write one from its config (in the
     * written dtype), and its tokenizer's files; a copied config.json is set to that dtype */
    size_t dl = strlen(m->dir);
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if (dl > 5 && !strcasecmp(m->dir + dl - 5, ".gguf")) {
        rc = gguf_write_hf_config(&m->cfg, tmp, hf_dtype_name(o->dtype), err);
        if (!rc) rc = tokenizer_gguf_write_hf(m->dir, tmp, err);
    } else if (!access(path, F_OK)) {
        rc = hf_config_dtype(path, o->dtype, err);
    }
    if (!rc && o->chat_template) rc = hf_chat_template(tmp, o->chat_template, err);
    return rc;
}

int model_write_hf(const Model *m, const char *tmp, TunaErr *err) {
    HfWriteOpts o = {ST_F32, HF_SHARD_BYTES, NULL, NULL, NULL};
    return model_write_hf_as(m, tmp, &o, err);
}

// --- tuna train --adapter DIR: a new run that starts from an adapter

/* Items of a comma list, in any order, equal those of another. */
static int same_list(const char *a, const char *b) {
    int na = 0, nb = 0;
    char item[128];
    for (const char *p = a; *p;) {
        size_t n = strcspn(p, ",");
        snprintf(item, sizeof item, ",%.*s,", (int)(n < 120 ? n : 120), p);
        char wrapped[600];
        snprintf(wrapped, sizeof wrapped, ",%s,", b);
        if (n && !strstr(wrapped, item)) return 0;
        na += n > 0;
        p += n + (p[n] == ',');
    }
    for (const char *p = b; *p;) {
        size_t n = strcspn(p, ",");
        nb += n > 0;
        p += n + (p[n] == ',');
    }
    return na == nb;
}

/* The virtual tokens P of a prompt or prefix adapter in dir (its prompt_embeddings, at most
 * max_p rows, shape names the expected shape in the error); --prefix-tokens, when given
 * (not def_tokens), must agree. */
static int adapter_virtual_tokens(const char *dir, const TrainConfig *c, int def_tokens, int max_p,
                                  const char *shape, int *P, TunaErr *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    const StTensor *t = safetensors_find(st, "prompt_embeddings");
    *P = t && t->ndim == 2 && t->shape[0] >= 1 && t->shape[0] <= max_p ? (int)t->shape[0] : 0;
    safetensors_free(st);
    if (!*P)
        return tuna_errf(err, TUNA_EFORMAT, "%s: needs \"prompt_embeddings\" of shape %s", path,
                         shape);
    if (c->prefix_tokens != def_tokens && c->prefix_tokens != *P)
        return tuna_errf(err, TUNA_EINVAL,
                         "--prefix-tokens %d conflicts with --adapter %s (%d virtual tokens); "
                         "drop --prefix-tokens",
                         c->prefix_tokens, dir, *P);
    return 0;
}

int adapter_train_config(const TrainConfig *c, TrainConfig *out, TunaErr *err) {
    const char *dir = c->adapter;
    char path[1200];
    struct stat sb;
    *out = *c;
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
        return tuna_errf(err, TUNA_ENOTFOUND,
                         "--adapter %s: no such folder (a PEFT adapter or a tuna run folder)", dir);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text = xread_file(path, NULL);
    if (!text) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        return tuna_errf(err, TUNA_ENOTFOUND,
                         "--adapter %s: no adapter_config.json there (%s; a run that did not "
                         "finish keeps its adapter in checkpoint-N/)",
                         dir,
                         access(path, F_OK) == 0
                                 ? "a full or freeze run is a model: give it as --model"
                                 : "not a LoRA or ptuning adapter");
    }
    cJSON *j = cJSON_Parse(text);
    free(text);
    const char *pt = cJSON_GetStringValue(cJSON_GetObjectItem(j, "peft_type"));
    int prefix = pt && !strcmp(pt, "PREFIX_TUNING");
    /* PROMPT_TUNING, and P_TUNING, whose save keeps the virtual tokens but not the encoder that
     * made them: either continues as prompt tuning from its prompt_embeddings */
    int prompt = pt && (!strcmp(pt, "PROMPT_TUNING") || !strcmp(pt, "P_TUNING"));
    cJSON_Delete(j);
    TrainConfig def;
    train_config_defaults(&def);
    const char *method = prefix ? "ptuning" : prompt ? "prompt" : "lora";
    if (strcmp(c->method, def.method) && strcmp(c->method, method))
        return tuna_errf(err, TUNA_EINVAL,
                         "--method %s conflicts with --adapter %s (a %s adapter); drop --method",
                         c->method, dir, method);
    snprintf(out->method, sizeof out->method, "%s", method);
    if (prompt || prefix) {
        /* prompt: [P, C]; prefix: the prefix itself, [P, layers*2*kv heads*head dim] (a
         * projection's MLP is not kept) */
        int P, rc = adapter_virtual_tokens(dir, c, def.prefix_tokens, prompt ? 1024 : 4096,
                                           prompt ? "[P, C]" : "[P, N]", &P, err);
        if (rc) return rc;
        if (prompt && c->prompt_init_text[0])
            return tuna_errf(
                    err, TUNA_EINVAL,
                    "--prompt-init-text conflicts with --adapter %s (the adapter's virtual "
                    "tokens are the start); drop --prompt-init-text",
                    dir);
        if (prefix && c->prefix_projection)
            return tuna_errf(err, TUNA_EINVAL,
                             "--prefix-projection conflicts with --adapter %s (the adapter keeps "
                             "the prefix, not the MLP that made it); drop --prefix-projection",
                             dir);
        out->prefix_tokens = P;
        return 0;
    }
    TrainSetup s;
    char targets[512], tokens[4096];
    int rc = adapter_read_config(dir, &s, targets, sizeof targets, tokens, sizeof tokens, err);
    if (rc) return rc;
    if (c->lora_rank != def.lora_rank && c->lora_rank != s.lora_rank)
        return tuna_errf(err, TUNA_EINVAL,
                         "--lora-rank %d conflicts with --adapter %s (r %d); drop --lora-rank",
                         c->lora_rank, dir, s.lora_rank);
    if (c->lora_alpha != def.lora_alpha && (float)c->lora_alpha != s.lora_alpha)
        return tuna_errf(err, TUNA_EINVAL,
                         "--lora-alpha %g conflicts with --adapter %s (lora_alpha %g); drop "
                         "--lora-alpha",
                         c->lora_alpha, dir, (double)s.lora_alpha);
    if (c->use_rslora != def.use_rslora && c->use_rslora != s.lora_rslora)
        return tuna_errf(err, TUNA_EINVAL,
                         "--use-rslora conflicts with --adapter %s (use_rslora false); drop it",
                         dir);
    if (strcmp(c->lora_target, def.lora_target) && !same_list(c->lora_target, targets))
        return tuna_errf(err, TUNA_EINVAL,
                         "--lora-target %s conflicts with --adapter %s (target_modules %s); drop "
                         "--lora-target",
                         c->lora_target, dir, targets);
    if (c->lora_trainable_tokens[0] && !same_list(c->lora_trainable_tokens, tokens))
        return tuna_errf(err, TUNA_EINVAL,
                         "--lora-trainable-tokens %s conflicts with --adapter %s "
                         "(trainable_token_indices %s); drop --lora-trainable-tokens",
                         c->lora_trainable_tokens, dir, tokens[0] ? tokens : "none");
    out->lora_rank = s.lora_rank;
    out->lora_alpha = (double)s.lora_alpha;
    out->use_rslora = s.lora_rslora;
    if (c->use_dora != def.use_dora && c->use_dora != s.lora_dora)
        return tuna_errf(err, TUNA_EINVAL,
                         "--use-dora conflicts with --adapter %s (use_dora %s); drop it", dir,
                         s.lora_dora ? "true" : "false");
    out->use_dora = s.lora_dora;
    if (strcmp(c->init_lora_weights, def.init_lora_weights) && !s.lora_pissa)
        return tuna_errf(
                err, TUNA_EINVAL,
                "--init-lora-weights %s conflicts with --adapter %s (not a PiSSA adapter); "
                "drop it",
                c->init_lora_weights, dir);
    snprintf(out->init_lora_weights, sizeof out->init_lora_weights, "%s",
             s.lora_pissa ? "pissa" : "default");
    if (strlen(targets) >= sizeof out->lora_target ||
        strlen(tokens) >= sizeof out->lora_trainable_tokens)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s/adapter_config.json: target_modules or "
                         "trainable_token_indices too long",
                         dir);
    memcpy(out->lora_target, targets, strlen(targets) + 1); /* lengths checked above */
    memcpy(out->lora_trainable_tokens, tokens, strlen(tokens) + 1);
    return 0;
}

int adapter_init_train(TrainState *ts, const char *dir, const char *model, TunaErr *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    if (rc) return rc;
    int np;
    const TrainParam *tp = train_params(ts, &np);
    float **host = xcalloc((size_t)np, sizeof *host);
    for (int i = 0; i < np && !rc; i++) {
        const StTensor *t = adapter_find(st, tp[i].name);
        int64_t s1 = tp[i].ndim == 2 ? tp[i].shape[1] : 1;
        if (!t || t->ndim != tp[i].ndim || t->shape[0] != tp[i].shape[0] ||
            (t->ndim == 2 && t->shape[1] != s1)) {
            char have[48] = "missing";
            if (t && t->ndim == 2)
                snprintf(have, sizeof have, "[%lld, %lld]", (long long)t->shape[0],
                         (long long)t->shape[1]);
            else if (t)
                snprintf(have, sizeof have, "%d-dimensional", t->ndim);
            char need[48];
            if (tp[i].ndim == 2)
                snprintf(need, sizeof need, "[%lld, %lld]", (long long)tp[i].shape[0],
                         (long long)s1);
            else
                snprintf(need, sizeof need, "[%lld]", (long long)tp[i].shape[0]);
            rc = tuna_errf(err, TUNA_EINVAL,
                           "--adapter %s does not fit --model %s: tensor \"%s\" is %s, the model "
                           "needs %s (an adapter of another base model)",
                           dir, model, tp[i].name, have, need);
            break;
        }
        host[i] = xmalloc(sizeof(float) * tp[i].n);
        rc = st_tensor_to_f32(t, host[i], tp[i].n, err);
    }
    /* a tensor the model has no place for (more layers, other modules): another base model */
    if (!rc && safetensors_count(st) > np)
        rc = tuna_errf(err, TUNA_EINVAL,
                       "--adapter %s does not fit --model %s: the adapter holds %d tensors, the "
                       "model takes %d (an adapter of another base model)",
                       dir, model, safetensors_count(st), np);
    if (!rc) train_upload_params(ts, (const float *const *)host);
    for (int i = 0; i < np; i++)
        free(host[i]);
    free(host);
    safetensors_free(st);
    return rc;
}
