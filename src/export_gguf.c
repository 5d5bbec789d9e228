#include "export_gguf.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../kernels/wtype.h"
#include "gguf.h"
#include "gguf_model.h"
#include "gguf_write.h"
#include "peft.h"
#include "safetensors.h"
#include "xalloc.h"

int export_gguf_quant(const char *name) {
    static const struct {
        const char *name;
        int t;
    } q[] = {{"f32", WT_F32},   {"f16", WT_F16},   {"bf16", WT_BF16}, {"q8_0", WT_Q8_0},
             {"q4_0", WT_Q4_0}, {"q4_1", WT_Q4_1}, {"q4_k", WT_Q4_K}};
    for (size_t i = 0; name && i < sizeof q / sizeof q[0]; i++)
        if (!strcasecmp(name, q[i].name)) return q[i].t;
    return -1;
}

/* llama.cpp's general.file_type (enum llama_ftype) for the main type. */
static uint32_t file_type(int wt) {
    switch (wt) {
    case WT_F32: return 0;
    case WT_F16: return 1;
    case WT_Q4_0: return 2;
    case WT_Q4_1: return 3;
    case WT_Q8_0: return 7;
    case WT_Q4_K: return 14; /* Q4_K_S: every matrix Q4_K */
    default: return 32;      /* BF16 */
    }
}

static const char *arch_name(ModelArch a) {
    /* llama.cpp converts Mistral (v0.1-style) checkpoints as "llama" */
    return a == ARCH_QWEN2   ? "qwen2"
           : a == ARCH_QWEN3 ? "qwen3"
           : a == ARCH_GPT2  ? "gpt2"
                             : "llama";
}

// --- architecture metadata -----------------------------------------------------------------

static void put_arch(GgufWriter *w, const ModelConfig *c) {
    const char *a = arch_name(c->arch);
    char k[160];
#define KEY(s) (snprintf(k, sizeof k, "%s." s, a), k)
    gguf_w_u32(w, KEY("context_length"), (uint32_t)c->max_pos);
    gguf_w_u32(w, KEY("embedding_length"), (uint32_t)c->C);
    gguf_w_u32(w, KEY("feed_forward_length"), (uint32_t)c->FF);
    gguf_w_u32(w, KEY("block_count"), (uint32_t)c->L);
    gguf_w_u32(w, KEY("attention.head_count"), (uint32_t)c->NH);
    if (c->arch == ARCH_GPT2) {
        gguf_w_f32(w, KEY("attention.layer_norm_epsilon"), c->norm_eps);
        return;
    }
    gguf_w_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->KVH);
    gguf_w_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->norm_eps);
    gguf_w_f32(w, KEY("rope.freq_base"), c->rope_theta);
    gguf_w_u32(w, KEY("rope.dimension_count"), (uint32_t)c->HS);
    if (c->HS * c->NH != c->C || c->arch == ARCH_QWEN3) {
        gguf_w_u32(w, KEY("attention.key_length"), (uint32_t)c->HS);
        gguf_w_u32(w, KEY("attention.value_length"), (uint32_t)c->HS);
    }
    if (c->rope_type == ROPE_LINEAR) {
        gguf_w_str(w, KEY("rope.scaling.type"), "linear");
        gguf_w_f32(w, KEY("rope.scaling.factor"), c->rope_factor);
    }
#undef KEY
}

// --- tokenizer -----------------------------------------------------------------------------

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* tokenizer.ggml.* copied from a GGUF source, the chat template aside. */
static int tok_from_gguf(GgufWriter *w, const char *path, const char *tpl, TunaErr *err) {
    Gguf *g;
    int rc = gguf_open(path, &g, err);
    if (rc) return rc;
    const GgufKV *ct = gguf_find_kv(g, "tokenizer.chat_template");
    for (int i = 0; i < gguf_kv_count(g); i++) {
        const GgufKV *kv = gguf_kv_at(g, i);
        if (!strncmp(kv->key, "tokenizer.ggml.", 15)) gguf_w_copy(w, NULL, kv);
    }
    if (tpl)
        gguf_w_str(w, "tokenizer.chat_template", tpl);
    else if (ct && ct->type == GGUF_STRING)
        gguf_w_copy(w, NULL, ct);
    gguf_free(g);
    return 0;
}

static const cJSON *jget(const cJSON *o, const char *k) {
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* The name of a token field of tokenizer_config.json ("<s>" or {"content": "<s>"}). */
static const char *cfg_token(const cJSON *cfg, const char *key) {
    const cJSON *v = jget(cfg, key);
    if (cJSON_IsObject(v)) v = jget(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Does the tokenizer.json's JSON (pre-tokenizer or decoder) name this type anywhere? */
static int json_has_type(const cJSON *j, const char *type) {
    if (!j) return 0;
    const cJSON *t = jget(j, "type");
    if (cJSON_IsString(t) && !strcmp(t->valuestring, type)) return 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, j) {
        if ((cJSON_IsObject(it) || cJSON_IsArray(it)) && json_has_type(it, type)) return 1;
    }
    return 0;
}

/* The regex of a Split pre-tokenizer, or NULL. */
static const char *split_regex(const cJSON *j) {
    if (!j) return NULL;
    const cJSON *t = jget(j, "type"), *p = jget(j, "pattern");
    if (cJSON_IsString(t) && !strcmp(t->valuestring, "Split") && p) {
        const cJSON *r = jget(p, "Regex");
        if (cJSON_IsString(r)) return r->valuestring;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, j) {
        const char *s = (cJSON_IsObject(it) || cJSON_IsArray(it)) ? split_regex(it) : NULL;
        if (s) return s;
    }
    return NULL;
}

/* llama.cpp's tokenizer.ggml.pre for a byte-level tokenizer.json (by its pre-tokenizer), or
 * NULL when tuna cannot tell. */
static const char *bytelevel_pre(const cJSON *pt) {
    const char *re = split_regex(pt);
    if (!re) return json_has_type(pt, "Digits") ? "smollm" : "gpt-2";
    if (strstr(re, "\\p{N}{1,3}")) return "llama-bpe";
    if (strstr(re, "(?i:'s|'t|'re|'ve|'m|'ll|'d)") && strstr(re, "\\p{N}|")) return "qwen2";
    return NULL;
}

/* tokenizer.json's merges as "a b" strings (*k of them); with spm, a piece's score is minus the
 * rank of the merge that makes it (score[id], n ids; a merge without its space scores nothing). */
static char **read_merges(const cJSON *merges, const cJSON *vocab, int spm, int n, float *score,
                          int *k_out) {
    const cJSON *it;
    int nm = cJSON_GetArraySize(merges), k = 0;
    char **ms = xcalloc((size_t)(nm ? nm : 1), sizeof *ms);
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) {
            ms[k] = xstrdup(it->valuestring);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2) {
            const char *a = cJSON_GetArrayItem(it, 0)->valuestring,
                       *b = cJSON_GetArrayItem(it, 1)->valuestring;
            if (!a || !b) continue;
            ms[k] = xmalloc(strlen(a) + strlen(b) + 2);
            sprintf(ms[k], "%s %s", a, b);
        } else {
            continue;
        }
        if (spm && strchr(ms[k], ' ')) { /* a merge without its space scores nothing */
            char *sp = strchr(ms[k], ' ');
            char *joined = xmalloc(strlen(ms[k]) + 1);
            memcpy(joined, ms[k], (size_t)(sp - ms[k]));
            strcpy(joined + (sp - ms[k]), sp + 1);
            const cJSON *id = jget(vocab, joined);
            if (cJSON_IsNumber(id) && id->valueint >= 0 && id->valueint < n &&
                score[id->valueint] == 0)
                score[id->valueint] = -(float)(k + 1);
            free(joined);
        }
        k++;
    }
    *k_out = k;
    return ms;
}

/* tokenizer.ggml's special ids and flags and the chat template, from dir/tokenizer_config.json,
 * tokenizer.json (root: its unk_token and post-processor) and the model config; tok/tt: the
 * n tokens and their types as written. */
static void tok_specials(GgufWriter *w, const char *dir, const cJSON *root, const ModelConfig *c,
                         const char *tpl, char *const *tok, const int32_t *tt, int n, int spm) {
    char path[4200];
    size_t len;
    const cJSON *unk = jget(jget(root, "model"), "unk_token");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *txt = xread_file(path, &len);
    cJSON *cfg = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    free(txt);
    const char *names[3] = {cfg_token(cfg, "bos_token"), cfg_token(cfg, "eos_token"),
                            cfg_token(cfg, "pad_token")};
    int ids[3] = {c->bos_id, c->n_eos ? c->eos_ids[0] : -1, -1};
    for (int s = 0; s < 3; s++)
        for (int i = 0; names[s] && i < n; i++)
            if (!strcmp(tok[i], names[s])) {
                ids[s] = i;
                break;
            }
    static const char *const keys[3] = {"tokenizer.ggml.bos_token_id",
                                        "tokenizer.ggml.eos_token_id",
                                        "tokenizer.ggml.padding_token_id"};
    for (int s = 0; s < 3; s++)
        if (ids[s] >= 0) gguf_w_u32(w, keys[s], (uint32_t)ids[s]);
    for (int i = 0; cJSON_IsString(unk) && i < n; i++)
        if (tt[i] == TT_UNKNOWN) {
            gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)i);
            break;
        }
    const cJSON *ab = jget(cfg, "add_bos_token");
    int add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : spm;
    /* a Template post-processor that starts with the BOS adds it */
    const cJSON *pp = jget(root, "post_processor");
    if (!cJSON_IsBool(ab) && pp && ids[0] >= 0) {
        char *pps = cJSON_PrintUnformatted(pp);
        add_bos = pps && strstr(pps, "\"single\":[{\"SpecialToken\":{\"id\":") &&
                  strstr(pps, tok[ids[0]]);
        free(pps);
    }
    gguf_w_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
    const cJSON *ae = jget(cfg, "add_eos_token");
    gguf_w_bool(w, "tokenizer.ggml.add_eos_token", cJSON_IsTrue(ae));
    const char *own_tpl = NULL;
    const cJSON *ct = jget(cfg, "chat_template");
    if (cJSON_IsString(ct)) own_tpl = ct->valuestring;
    if (tpl || own_tpl) gguf_w_str(w, "tokenizer.chat_template", tpl ? tpl : own_tpl);
    cJSON_Delete(cfg);
}

/* tokenizer.ggml.* built from dir/tokenizer.json (+ tokenizer_config.json), as
 * convert_hf_to_gguf.py does: "gpt2" for byte-level BPE, "llama" for SentencePiece-style BPE
 * (byte fallback; scores ranked by merge order); vocabulary padded to V with [PAD{i}]. */
static int tok_from_hf(GgufWriter *w, const char *dir, const ModelConfig *c, const char *tpl,
                       TunaErr *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    size_t len;
    char *txt = xread_file(path, &len);
    if (!txt) return tuna_errf(err, TUNA_EIO, "%s: cannot read", path);
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    int rc = 0;
    const cJSON *model = jget(root, "model"), *vocab = jget(model, "vocab"),
                *merges = jget(model, "merges"), *type = jget(model, "type");
    if (!root || !cJSON_IsObject(vocab) || !cJSON_IsString(type) ||
        strcmp(type->valuestring, "BPE")) {
        rc = tuna_errf(err, TUNA_EUNSUP,
                       "%s: only BPE tokenizers (model.type \"BPE\" with a vocab) can be exported "
                       "to GGUF",
                       path);
        goto out;
    }
    int n = c->V;
    char **tok = xcalloc((size_t)n, sizeof *tok);
    int32_t *tt = xcalloc((size_t)n, sizeof *tt);
    float *score = xcalloc((size_t)n, sizeof *score);
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int id = cJSON_IsNumber(it) ? it->valueint : -1;
        if (id >= 0 && id < n && !tok[id]) {
            tok[id] = xstrdup(it->string);
            tt[id] = TT_NORMAL;
        }
    }
    cJSON_ArrayForEach(it, jget(root, "added_tokens")) {
        const cJSON *id = jget(it, "id"), *ct = jget(it, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(ct) || id->valueint < 0 || id->valueint >= n)
            continue;
        free(tok[id->valueint]);
        tok[id->valueint] = xstrdup(ct->valuestring);
        tt[id->valueint] = cJSON_IsTrue(jget(it, "special")) ? TT_CONTROL : TT_USER;
    }
    int spm = cJSON_IsTrue(jget(model, "byte_fallback")) ||
              json_has_type(jget(root, "pre_tokenizer"), "Metaspace") ||
              json_has_type(jget(root, "decoder"), "Metaspace");
    const char *pre = spm ? NULL : bytelevel_pre(jget(root, "pre_tokenizer"));
    if (!spm && !pre) {
        rc = tuna_errf(err, TUNA_EUNSUP,
                       "%s: the pre-tokenizer regex is not one llama.cpp names (gpt2, llama-bpe, "
                       "qwen2, smollm); this tokenizer cannot be exported to GGUF",
                       path);
        goto free_vocab;
    }
    const cJSON *unk = jget(model, "unk_token");
    int k;
    char **ms = read_merges(merges, vocab, spm, n, score, &k);
    for (int i = 0; i < n; i++) {
        if (!tok[i]) {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            tok[i] = xstrdup(pad);
            tt[i] = TT_UNUSED;
        } else if (spm && tt[i] == TT_NORMAL && strlen(tok[i]) == 6 && !strncmp(tok[i], "<0x", 3) &&
                   tok[i][5] == '>') {
            tt[i] = TT_BYTE;
        }
        if (cJSON_IsString(unk) && !strcmp(tok[i], unk->valuestring)) tt[i] = TT_UNKNOWN;
    }
    gguf_w_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!spm)
        gguf_w_str(w, "tokenizer.ggml.pre", pre);
    else
        gguf_w_str(w, "tokenizer.ggml.pre", "default");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, NULL, (uint64_t)n);
    if (spm) gguf_w_arr(w, "tokenizer.ggml.scores", GGUF_F32, score, (uint64_t)n);
    gguf_w_arr(w, "tokenizer.ggml.token_type", GGUF_I32, tt, (uint64_t)n);
    gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)ms, NULL, (uint64_t)k);
    tok_specials(w, dir, root, c, tpl, tok, tt, n, spm);
    for (int i = 0; i < k; i++)
        free(ms[i]);
    free(ms);
free_vocab:
    for (int i = 0; i < n; i++)
        free(tok[i]);
    free(tok);
    free(tt);
    free(score);
out:
    cJSON_Delete(root);
    return rc;
}

// --- Q4_K ---------------------------------------------------------------------------------

/* Q4_K: x ~ d*sc*q - dmin*m per sub-block of 32 (q 0..15, sc and m 6-bit). Each sub-block's
 * (scale, min) is fitted by least squares over 21 candidate grids (the min kept <= 0, as the
 * format needs); the super-block's d and dmin are the largest of them over 63. Not the gguf
 * package's (it has no Q4_K quantizer) nor byte-identical to llama.cpp's search. */
static void fit_q4_sub(const float *x, float *scale, float *neg_min) {
    float lo = 0, hi = x[0];
    for (int i = 0; i < 32; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    *scale = 0;
    *neg_min = -lo;
    if (!(hi > lo)) return;
    double best = INFINITY;
    for (int is = 0; is <= 20; is++) {
        float iscale = (15.0f - 1.0f + 0.1f * (float)is) / (hi - lo);
        double sq = 0, sx = 0, sqq = 0, sqx = 0;
        int q[32];
        for (int i = 0; i < 32; i++) {
            int v = (int)lrintf(iscale * (x[i] - lo));
            q[i] = v < 0 ? 0 : v > 15 ? 15 : v;
            sq += q[i];
            sx += (double)x[i];
            sqq += (double)q[i] * q[i];
            sqx += (double)q[i] * (double)x[i];
        }
        double det = 32 * sqq - sq * sq, a, b; /* x ~ a*q + b */
        if (det <= 0) continue;
        a = (32 * sqx - sq * sx) / det;
        b = (sx - a * sq) / 32;
        if (b > 0) { /* the offset must be <= 0 */
            b = 0;
            a = sqq > 0 ? sqx / sqq : 0;
        }
        double err = 0;
        for (int i = 0; i < 32; i++) {
            double e = a * q[i] + b - (double)x[i];
            err += e * e;
        }
        if (err < best && a > 0) {
            best = err;
            *scale = (float)a;
            *neg_min = (float)-b;
        }
    }
}

void export_gguf_q4_k_row(const float *src, void *dst, int64_t n) {
    uint8_t *b = dst;
    for (int64_t k = 0; k < n; k += 256, b += 144, src += 256) {
        float sc[8], mn[8], max_sc = 0, max_mn = 0;
        for (int j = 0; j < 8; j++) {
            fit_q4_sub(src + 32 * j, &sc[j], &mn[j]);
            max_sc = fmaxf(max_sc, sc[j]);
            max_mn = fmaxf(max_mn, mn[j]);
        }
        uint16_t hd = wtype_f32_to_f16(max_sc / 63.0f), hm = wtype_f32_to_f16(max_mn / 63.0f);
        float d = wtype_f16_to_f32(hd), dmin = wtype_f16_to_f32(hm);
        memcpy(b, &hd, 2); /* little-endian, as the reader */
        memcpy(b + 2, &hm, 2);
        uint8_t *scales = b + 4, *qs = b + 16;
        memset(scales, 0, 12);
        int isc[8], imn[8];
        for (int j = 0; j < 8; j++) {
            int a = d > 0 ? (int)lrintf(sc[j] / d) : 0,
                c = dmin > 0 ? (int)lrintf(mn[j] / dmin) : 0;
            isc[j] = a < 0 ? 0 : a > 63 ? 63 : a;
            imn[j] = c < 0 ? 0 : c > 63 ? 63 : c;
            if (j < 4) {
                scales[j] |= (uint8_t)isc[j];
                scales[j + 4] |= (uint8_t)imn[j];
            } else {
                scales[j + 4] = (uint8_t)((isc[j] & 0xF) | ((imn[j] & 0xF) << 4));
                scales[j - 4] |= (uint8_t)((isc[j] >> 4) << 6);
                scales[j] |= (uint8_t)((imn[j] >> 4) << 6);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int q2[2];
                for (int h = 0; h < 2; h++) {
                    int j = 2 * c + h;
                    float ds = d * (float)isc[j], dm = dmin * (float)imn[j];
                    int v = ds > 0 ? (int)lrintf((src[32 * j + l] + dm) / ds) : 0;
                    q2[h] = v < 0 ? 0 : v > 15 ? 15 : v;
                }
                qs[32 * c + l] = (uint8_t)(q2[0] | (q2[1] << 4));
            }
    }
}

// --- tensors -------------------------------------------------------------------------------

/* llama.cpp's q/k row order: GGUF row h*hs + 2i + j holds HF row h*hs + j*hs/2 + i. */
static void permute_rows(float *dst, const float *src, int heads, size_t rows, size_t cols) {
    size_t hs = rows / (size_t)heads, half = hs / 2;
    for (size_t h = 0; h < (size_t)heads; h++)
        for (size_t i = 0; i < half; i++)
            for (size_t j = 0; j < 2; j++)
                memcpy(dst + (h * hs + 2 * i + j) * cols, src + (h * hs + j * half + i) * cols,
                       cols * sizeof(float));
}

/* The stored type of a matrix with rows of cols: the asked one, F16 where the rows are not
 * whole blocks of it, Q8_0 for the output head under a 4-bit type. */
static int matrix_type(int want, const char *gname, int tied, int64_t cols) {
    int four = want == WT_Q4_0 || want == WT_Q4_1 || want == WT_Q4_K;
    int head = !strcmp(gname, "output.weight") || (tied && !strcmp(gname, "token_embd.weight"));
    int t = four && head ? WT_Q8_0 : want;
    if (cols % wtype_info[t].block) t = WT_F16;
    return t;
}

/* One tensor of the merged export: where it comes from and how it is stored. */
typedef struct Planned {
    const char *hf; /* model_hf_tensor_fill's name */
    GgufXform x;
    int heads, ndim, type;
    size_t rows, cols; /* as stored: rows of cols (a 1-D tensor: 1 row of n) */
} Planned;

typedef struct Stream {
    const Model *m;
    const Planned *p;
    int n;
    float *f32, *tmp; /* one tensor as the model holds it, and permuted or transposed */
    const GgufExportOpts *o;
} Stream;

/* GgufFill: tensor i merged (model_hf_tensor_fill), permuted or transposed as llama.cpp lays it
 * out, and quantized row by row into dst. */
static int fill_tensor(void *ctx, int i, void *dst, size_t nbytes, TunaErr *err) {
    Stream *s = ctx;
    const Planned *p = &s->p[i];
    size_t rows = p->rows, cols = p->cols;
    model_hf_tensor_fill(s->m, p->hf, s->f32);
    const float *src = s->f32;
    if (p->x == GGUF_X_UNPERMUTE) { /* a 1-D tensor (a bias) is rows of one */
        permute_rows(s->tmp, src, p->heads, p->ndim == 1 ? cols : rows, p->ndim == 1 ? 1 : cols);
        src = s->tmp;
    } else if (p->x == GGUF_X_TRANSPOSE && p->ndim == 2) { /* Conv1D (in, out) -> rows of in */
        for (size_t r = 0; r < cols; r++)
            for (size_t k = 0; k < rows; k++)
                s->tmp[k * cols + r] = src[r * rows + k];
        src = s->tmp;
    }
    size_t rb = wtype_row_bytes((WType)p->type, (int64_t)cols);
    if (rb * rows != nbytes)
        return tuna_errf(err, TUNA_EINVAL, "tensor \"%s\": %zu bytes planned, %zu made", p->hf,
                         nbytes, rb * rows);
    for (size_t r = 0; r < rows; r++) {
        uint8_t *d = (uint8_t *)dst + r * rb;
        if (p->type == WT_Q4_K) { /* wtype.c reads Q4_K only: its quantizer is the export's */
            export_gguf_q4_k_row(src + r * cols, d, (int64_t)cols);
        } else { /* weight_quantize's rows, without its copy of the whole matrix */
            WAux aux = {0};
            wtype_info[p->type].quant_row(src + r * cols, d, (int64_t)cols, &aux);
        }
    }
    if (s->o->progress) s->o->progress(s->o->progress_ctx, i + 1, s->n);
    return 0;
}

/* Plans every tensor (name, type, size: the header needs them all first), then writes the file
 * making one tensor at a time: the peak is the model plus one tensor (fp32, its permuted copy
 * and its stored bytes). */
static int write_tensors(GgufWriter *w, const Model *m, const GgufExportOpts *o, const char *out,
                         int verbose, TunaErr *err) {
    int want = o->wtype;
    const ModelConfig *c = &m->cfg;
    StWriteTensor *wt;
    int n, rc = 0, n_f16 = 0;
    model_hf_tensor_list(m, &wt, &n);
    Planned *plan = xcalloc((size_t)(n ? n : 1), sizeof *plan);
    size_t most = 0, most_tmp = 0;
    for (int i = 0; i < n && !rc; i++) {
        char gname[160];
        Planned *p = &plan[i];
        const char *hf = wt[i].name;
        if (!strncmp(hf, "transformer.", 12)) hf += 12; /* GPT-2's prefix */
        if (gguf_name_for(c, hf, gname, sizeof gname, &p->x, &p->heads)) {
            rc = tuna_errf(err, TUNA_EUNSUP, "tensor \"%s\" has no llama.cpp name", wt[i].name);
            break;
        }
        p->hf = wt[i].name;
        p->ndim = wt[i].ndim;
        size_t rows = (size_t)wt[i].shape[0], cols = wt[i].ndim == 2 ? (size_t)wt[i].shape[1] : 1;
        if (p->x == GGUF_X_TRANSPOSE && wt[i].ndim == 2) {
            size_t t = rows;
            rows = cols;
            cols = t;
        }
        if (p->x == GGUF_X_UNPERMUTE || (p->x == GGUF_X_TRANSPOSE && wt[i].ndim == 2))
            most_tmp = rows * cols > most_tmp ? rows * cols : most_tmp;
        most = rows * cols > most ? rows * cols : most;
        int64_t ne[2] = {(int64_t)cols, (int64_t)rows};
        if (wt[i].ndim == 1) ne[0] = (int64_t)rows;
        p->type = wt[i].ndim == 1 ? WT_F32 : matrix_type(want, gname, c->tie_embeddings, ne[0]);
        if (wt[i].ndim == 2 && p->type != want) n_f16 += p->type == WT_F16;
        p->rows = wt[i].ndim == 1 ? 1 : rows;
        p->cols = wt[i].ndim == 1 ? rows : cols;
        if (p->type != WT_Q4_K && !wtype_info[p->type].quant_row)
            rc = tuna_errf(err, TUNA_EUNSUP, "tensor \"%s\": tuna does not make %s", wt[i].name,
                           wtype_info[p->type].name);
        if (!rc)
            rc = gguf_w_tensor(w, gname, wtype_info[p->type].ggml, wt[i].ndim, ne, NULL,
                               wtype_row_bytes((WType)p->type, (int64_t)p->cols) * p->rows, 0, err);
    }
    if (!rc && verbose && n_f16)
        fprintf(stderr,
                "tuna: %d matrices kept in F16: their rows are not whole %s blocks (as "
                "llama.cpp's convert script does)\n",
                n_f16, wtype_info[want].name);
    if (!rc) {
        Stream s = {.m = m, .p = plan, .n = n, .o = o};
        s.f32 = xmalloc(sizeof(float) * (most ? most : 1));
        s.tmp = most_tmp ? xmalloc(sizeof(float) * most_tmp) : NULL;
        rc = gguf_writer_save_fill(w, out, fill_tensor, &s, err);
        free(s.f32);
        free(s.tmp);
    }
    free(plan);
    free(wt);
    return rc;
}

int export_gguf(const Model *m, const GgufExportOpts *o, const char *out, int verbose,
                TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    int want = o->wtype;
    if (want < 0 || want >= WT_COUNT)
        return tuna_errf(err, TUNA_EINVAL, "quant type %d is not a weight type", want);
    if (m->prefix_len)
        return tuna_errf(err, TUNA_EUNSUP,
                         "a P-tuning prefix cannot be folded into GGUF weights (llama.cpp has "
                         "no prefix input); export the run as HF instead");
    int blk = wtype_info[want].block;
    if (c->C % blk)
        return tuna_errf(err, TUNA_EUNSUP,
                         "--quant %s needs a hidden size that is a multiple of %d; this %s model's "
                         "is %d (try q8_0 or f16)",
                         wtype_info[want].name, blk, config_arch_name(c->arch), c->C);
    if (!wtype_info[want].quant_row && want != WT_Q4_K)
        return tuna_errf(err, TUNA_EUNSUP,
                         "--quant %s: tuna has no %s quantizer yet (q4_0, "
                         "q4_1 and q8_0 are bit-identical to the gguf package's)",
                         wtype_info[want].name, wtype_info[want].name);
    GgufWriter *w = gguf_writer_new();
    gguf_w_str(w, "general.architecture", arch_name(c->arch));
    gguf_w_str(w, "general.type", "model");
    const char *base = strrchr(m->dir, '/');
    gguf_w_str(w, "general.name", o->name ? o->name : base ? base + 1 : m->dir);
    gguf_w_u32(w, "general.file_type", file_type(want));
    gguf_w_u32(w, "general.quantization_version", 2);
    put_arch(w, c);
    char vk[64];
    snprintf(vk, sizeof vk, "%s.vocab_size", arch_name(c->arch));
    gguf_w_u32(w, vk, (uint32_t)c->V);
    size_t dl = strlen(m->dir);
    int rc = dl > 5 && !strcasecmp(m->dir + dl - 5, ".gguf")
                     ? tok_from_gguf(w, m->dir, o->chat_template, err)
                     : tok_from_hf(w, m->dir, c, o->chat_template, err);
    if (!rc) rc = write_tensors(w, m, o, out, verbose, err);
    gguf_writer_free(w);
    return rc;
}

// --- LoRA adapter --------------------------------------------------------------------------

int export_gguf_lora(const ModelConfig *cfg, const char *adapter_dir, const char *out,
                     TunaErr *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter_dir);
    size_t len;
    char *txt = xread_file(path, &len);
    if (!txt) return tuna_errf(err, TUNA_EIO, "%s: cannot read", path);
    cJSON *ac = cJSON_ParseWithLength(txt, len);
    free(txt);
    const cJSON *pt = jget(ac, "peft_type"), *r = jget(ac, "r"), *al = jget(ac, "lora_alpha");
    int rc = 0;
    if (!ac || !cJSON_IsString(pt) || strcmp(pt->valuestring, "LORA") || !cJSON_IsNumber(r) ||
        r->valueint < 1 || !cJSON_IsNumber(al)) {
        rc = tuna_errf(err, TUNA_EUNSUP,
                       "%s: not a LoRA adapter (peft_type \"LORA\" with r and lora_alpha); "
                       "llama.cpp's adapters are LoRA only",
                       path);
        cJSON_Delete(ac);
        return rc;
    }
    int rank = r->valueint;
    double alpha = al->valuedouble;
    if (cJSON_IsTrue(jget(ac, "use_rslora"))) alpha *= sqrt((double)rank); /* = scale * r */
    int patterns = cJSON_GetArraySize(jget(ac, "rank_pattern")) +
                   cJSON_GetArraySize(jget(ac, "alpha_pattern"));
    cJSON_Delete(ac);
    if (patterns)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: rank_pattern/alpha_pattern: llama.cpp's adapter has one alpha", path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter_dir);
    SafeTensors *st;
    if ((rc = safetensors_open(path, &st, err))) return rc;
    GgufWriter *w = gguf_writer_new();
    gguf_w_str(w, "general.architecture", arch_name(cfg->arch));
    gguf_w_str(w, "general.type", "adapter");
    gguf_w_str(w, "adapter.type", "lora");
    gguf_w_f32(w, "adapter.lora.alpha", (float)alpha);
    int n_pairs = 0;
    for (int i = 0; i < safetensors_count(st) && !rc; i++) {
        const StTensor *t = safetensors_at(st, i);
        const char *nm = t->name, *p;
        int is_a = (p = strstr(nm, ".lora_A.weight")) != NULL;
        if (!is_a && !(p = strstr(nm, ".lora_B.weight"))) {
            rc = tuna_errf(err, TUNA_EUNSUP,
                           "%s: tensor \"%s\" is not a LoRA A/B matrix; llama.cpp's adapter "
                           "cannot carry it",
                           path, nm);
            break;
        }
        const char *hf = nm;
        if (!strncmp(hf, "base_model.model.", 17)) hf += 17;
        char base[300], gname[200];
        snprintf(base, sizeof base, "%.*s.weight", (int)(p - hf), hf);
        GgufXform x;
        int heads;
        if (gguf_name_for(cfg, base, gname, sizeof gname, &x, &heads) || t->ndim != 2) {
            rc = tuna_errf(err, TUNA_EUNSUP, "%s: tensor \"%s\" has no llama.cpp base tensor", path,
                           nm);
            break;
        }
        size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1], nel = rows * cols;
        float *f = xmalloc(sizeof(float) * nel);
        if ((rc = st_tensor_to_f32(t, f, nel, err))) {
            free(f);
            break;
        }
        if (!is_a && x == GGUF_X_UNPERMUTE) { /* B's rows are the base's q/k rows */
            float *g = xmalloc(sizeof(float) * nel);
            permute_rows(g, f, heads, rows, cols);
            free(f);
            f = g;
        }
        char tname[220];
        snprintf(tname, sizeof tname, "%s.%s", gname, is_a ? "lora_a" : "lora_b");
        int64_t ne[2] = {(int64_t)cols, (int64_t)rows};
        rc = gguf_w_tensor(w, tname, GGML_F32, 2, ne, f, sizeof(float) * nel, 1, err);
        n_pairs += is_a;
    }
    if (!rc && !n_pairs) rc = tuna_errf(err, TUNA_EFORMAT, "%s: no LoRA tensors", path);
    if (!rc) rc = gguf_writer_save(w, out, err);
    gguf_writer_free(w);
    safetensors_free(st);
    return rc;
}
