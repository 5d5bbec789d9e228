#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "gguf.h"
#include "gguf_model.h"
#include "safetensors.h"
#include "xalloc.h"

// --- the parameter table: every tensor an architecture needs, by its HF name

typedef enum {
    LOAD_COPY,      /* file shape == our shape */
    LOAD_TRANSPOSE, /* GPT-2 Conv1D: file (in, out), ours (out, in) */
    LOAD_SPLIT3_T,  /* GPT-2 c_attn weight (C, 3C): part `part` of the columns, transposed */
    LOAD_SPLIT3     /* GPT-2 c_attn bias (3C): part `part` */
} LoadMode;

typedef struct ParamSpec {
    char name[128];
    int ndim;
    int64_t shape[2]; /* as stored in the file */
    float **dst;
    size_t n; /* floats at dst */
    LoadMode mode;
    int part;
    int typed;  /* kept as a typed Weight (ModelLoadOptions), not in params */
    WType qt;   /* its type */
    int stored; /* 1: the GGUF tensor's own bytes (type qt as stored), 0: quantized from fp32 */
    int layer, site;
} ParamSpec;

typedef struct SpecList {
    ParamSpec *v;
    int n, cap;
} SpecList;

static void spec_add(SpecList *l, const char *name, int ndim, int64_t d0, int64_t d1, float **dst,
                     size_t n, LoadMode mode, int part) {
    if (l->n == l->cap)
        l->v = xrealloc(l->v, sizeof(ParamSpec) * (size_t)(l->cap = l->cap * 2 + 16));
    ParamSpec *s = &l->v[l->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = d1;
    s->dst = dst;
    s->n = n;
    s->mode = mode;
    s->part = part;
}

static void specs_llama(Model *m, SpecList *l) {
    const ModelConfig *c = &m->cfg;
    size_t C = (size_t)c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS,
           FF = (size_t)c->FF, V = (size_t)c->V;
    char nm[128];
    spec_add(l, "model.embed_tokens.weight", 2, (int64_t)V, (int64_t)C, &m->wte, V * C, LOAD_COPY,
             0);
    for (int i = 0; i < c->L; i++) {
        LayerWeights *w = &m->layers[i];
#define P(suffix, nd, d0, d1, field)                                                               \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", i, suffix);                                      \
    spec_add(l, nm, nd, (int64_t)(d0), (int64_t)(d1), &w->field,                                   \
             (size_t)(d0) * ((nd) == 2 ? (size_t)(d1) : 1), LOAD_COPY, 0)
        P("input_layernorm.weight", 1, C, 0, ln1_w);
        P("self_attn.q_proj.weight", 2, QD, C, wq);
        P("self_attn.k_proj.weight", 2, KD, C, wk);
        P("self_attn.v_proj.weight", 2, KD, C, wv);
        P("self_attn.o_proj.weight", 2, C, QD, wo);
        if (c->qkv_bias) {
            P("self_attn.q_proj.bias", 1, QD, 0, bq);
            P("self_attn.k_proj.bias", 1, KD, 0, bk);
            P("self_attn.v_proj.bias", 1, KD, 0, bv);
        }
        if (c->o_bias) { P("self_attn.o_proj.bias", 1, C, 0, bo); }
        if (c->qk_norm) {
            P("self_attn.q_norm.weight", 1, c->HS, 0, q_norm);
            P("self_attn.k_norm.weight", 1, c->HS, 0, k_norm);
        }
        P("post_attention_layernorm.weight", 1, C, 0, ln2_w);
        P("mlp.gate_proj.weight", 2, FF, C, w_gate);
        P("mlp.up_proj.weight", 2, FF, C, w_up);
        P("mlp.down_proj.weight", 2, C, FF, w_down);
        if (c->mlp_bias) {
            P("mlp.gate_proj.bias", 1, FF, 0, b_gate);
            P("mlp.up_proj.bias", 1, FF, 0, b_up);
            P("mlp.down_proj.bias", 1, C, 0, b_down);
        }
#undef P
    }
    spec_add(l, "model.norm.weight", 1, (int64_t)C, 0, &m->lnf_w, C, LOAD_COPY, 0);
    if (!c->tie_embeddings)
        spec_add(l, "lm_head.weight", 2, (int64_t)V, (int64_t)C, &m->lm_head, V * C, LOAD_COPY, 0);
}

static void specs_gpt2(Model *m, SpecList *l, const char *pre) {
    const ModelConfig *c = &m->cfg;
    size_t C = (size_t)c->C, FF = (size_t)c->FF, V = (size_t)c->V, NP = (size_t)c->max_pos;
    char nm[128];
    snprintf(nm, sizeof nm, "%swte.weight", pre);
    spec_add(l, nm, 2, (int64_t)V, (int64_t)C, &m->wte, V * C, LOAD_COPY, 0);
    snprintf(nm, sizeof nm, "%swpe.weight", pre);
    spec_add(l, nm, 2, (int64_t)NP, (int64_t)C, &m->wpe, NP * C, LOAD_COPY, 0);
    for (int i = 0; i < c->L; i++) {
        LayerWeights *w = &m->layers[i];
#define P(suffix, nd, d0, d1, field, n, mode, part)                                                \
    snprintf(nm, sizeof nm, "%sh.%d.%s", pre, i, suffix);                                          \
    spec_add(l, nm, nd, (int64_t)(d0), (int64_t)(d1), &w->field, n, mode, part)
        P("ln_1.weight", 1, C, 0, ln1_w, C, LOAD_COPY, 0);
        P("ln_1.bias", 1, C, 0, ln1_b, C, LOAD_COPY, 0);
        P("attn.c_attn.weight", 2, C, 3 * C, wq, C * C, LOAD_SPLIT3_T, 0);
        P("attn.c_attn.weight", 2, C, 3 * C, wk, C * C, LOAD_SPLIT3_T, 1);
        P("attn.c_attn.weight", 2, C, 3 * C, wv, C * C, LOAD_SPLIT3_T, 2);
        P("attn.c_attn.bias", 1, 3 * C, 0, bq, C, LOAD_SPLIT3, 0);
        P("attn.c_attn.bias", 1, 3 * C, 0, bk, C, LOAD_SPLIT3, 1);
        P("attn.c_attn.bias", 1, 3 * C, 0, bv, C, LOAD_SPLIT3, 2);
        P("attn.c_proj.weight", 2, C, C, wo, C * C, LOAD_TRANSPOSE, 0);
        P("attn.c_proj.bias", 1, C, 0, bo, C, LOAD_COPY, 0);
        P("ln_2.weight", 1, C, 0, ln2_w, C, LOAD_COPY, 0);
        P("ln_2.bias", 1, C, 0, ln2_b, C, LOAD_COPY, 0);
        P("mlp.c_fc.weight", 2, C, FF, w_up, C * FF, LOAD_TRANSPOSE, 0);
        P("mlp.c_fc.bias", 1, FF, 0, b_up, FF, LOAD_COPY, 0);
        P("mlp.c_proj.weight", 2, FF, C, w_down, C * FF, LOAD_TRANSPOSE, 0);
        P("mlp.c_proj.bias", 1, C, 0, b_down, C, LOAD_COPY, 0);
#undef P
    }
    snprintf(nm, sizeof nm, "%sln_f.weight", pre);
    spec_add(l, nm, 1, (int64_t)C, 0, &m->lnf_w, C, LOAD_COPY, 0);
    snprintf(nm, sizeof nm, "%sln_f.bias", pre);
    spec_add(l, nm, 1, (int64_t)C, 0, &m->lnf_b, C, LOAD_COPY, 0);
    if (!c->tie_embeddings)
        spec_add(l, "lm_head.weight", 2, (int64_t)V, (int64_t)C, &m->lm_head, V * C, LOAD_COPY, 0);
}

int model_param_in_modules(const char *name, int layer, const char *modules) {
    for (const char *q = modules; layer >= 0 && *q;) {
        size_t n = strcspn(q, ",");
        char pat[96];
        snprintf(pat, sizeof pat, ".%d.%.*s", layer, (int)(n < 64 ? n : 64), q);
        if (n && strstr(name, pat)) return 1;
        q += n + (q[n] == ',');
    }
    return 0;
}

/* The parameters of the table model_load allocates by, on a model that is never filled (its
 * pointers only say which tensors are the first layer's): all of them, returned, and *layer0
 * those of the first layer (in modules, unless NULL). */
static size_t count_specs(const ModelConfig *c, const char *modules, size_t *layer0) {
    Model m;
    memset(&m, 0, sizeof m);
    m.cfg = *c;
    m.layers = xcalloc(c->L > 0 ? (size_t)c->L : 1, sizeof *m.layers);
    SpecList l = {0};
    if (c->arch == ARCH_GPT2)
        specs_gpt2(&m, &l, "");
    else
        specs_llama(&m, &l);
    size_t total = 0, layer = 0;
    for (int i = 0; i < l.n; i++) {
        total += l.v[i].n;
        const char *d = (const char *)l.v[i].dst;
        if (d >= (const char *)&m.layers[0] && d < (const char *)(&m.layers[0] + 1) &&
            (!modules || model_param_in_modules(l.v[i].name, 0, modules)))
            layer += l.v[i].n;
    }
    free(l.v);
    free(m.layers);
    if (layer0) *layer0 = layer;
    return total;
}

size_t model_param_count_for(const ModelConfig *c, size_t *per_layer) {
    return count_specs(c, NULL, per_layer);
}

size_t model_param_count_modules(const ModelConfig *c, const char *modules) {
    size_t n;
    count_specs(c, modules, &n);
    return n;
}

/* The (layer, LoraSite) of a linear layer's weight spec, or -1 (norms, biases, embeddings). */
float **layer_site_weight(LayerWeights *w, LoraSite k) {
    switch (k) {
    case LORA_Q: return &w->wq;
    case LORA_K: return &w->wk;
    case LORA_V: return &w->wv;
    case LORA_O: return &w->wo;
    case LORA_GATE: return &w->w_gate;
    case LORA_UP: return &w->w_up;
    default: return &w->w_down;
    }
}

static int spec_site(const Model *m, const ParamSpec *s, int *layer) {
    for (int l = 0; l < m->cfg.L; l++)
        for (int k = 0; k < LORA_N_SITES; k++)
            if (s->dst == layer_site_weight(&m->layers[l], (LoraSite)k)) {
                *layer = l;
                return k;
            }
    return -1;
}

/* The input width of a linear spec as the model holds it (out, in). */
static int spec_in_dim(const ParamSpec *s) {
    return (int)(s->mode == LOAD_COPY ? s->shape[1] : s->shape[0]);
}

/* Bytes of an (N, K) weight in type t (its scales included), 0 when its rows are not whole
 * blocks (it then stays fp32). */
static size_t typed_bytes(WType t, int dq, size_t N, size_t K) {
    if (K % (size_t)wtype_info[t].block) return 0;
    Weight shape = {.type = t, .rows = (int)N, .cols = (int)K, .double_quant = dq};
    return weight_bytes(&shape);
}

size_t model_typed_bytes_for(const ModelConfig *c, const ModelLoadOptions *o, size_t *n_typed) {
    *n_typed = 0;
    if (!o || o->qtype == WT_F32) return 0;
    size_t C = (size_t)c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS,
           FF = (size_t)c->FF;
    int gpt2 = c->arch == ARCH_GPT2;
    size_t dims[LORA_N_SITES][2] = {{gpt2 ? C : QD, C},
                                    {gpt2 ? C : KD, C},
                                    {gpt2 ? C : KD, C},
                                    {C, gpt2 ? C : QD},
                                    {gpt2 ? 0 : FF, C},
                                    {FF, C},
                                    {C, FF}};
    int from = o->fp32_from_layer < 0 ? c->L + o->fp32_from_layer : o->fp32_from_layer;
    size_t bytes = 0;
    for (int l = 0; l < c->L && l < from; l++)
        for (int k = 0; k < LORA_N_SITES; k++) {
            size_t b = typed_bytes(o->qtype, o->double_quant, dims[k][0], dims[k][1]);
            if (!b || !dims[k][0]) continue;
            bytes += b;
            *n_typed += dims[k][0] * dims[k][1];
        }
    if (o->typed_head && o->head_bf16) { /* the embedding, and an untied head, in bf16 */
        size_t heads = c->tie_embeddings ? 1 : 2, V = (size_t)c->V;
        bytes += heads * typed_bytes(WT_BF16, 0, V, C);
        *n_typed += heads * V * C;
    }
    return bytes;
}

static void weight_release(Backend *be, Weight *d) {
    if (!d) return;
    void *p[4];
    size_t bytes[4];
    for (int i = 0, n = weight_arrays(d, p, bytes); i < n; i++)
        be->ops->release(be, p[i]);
    be->ops->release(be, d->pack);
    be->ops->release(be, d->pack_t);
    free(d);
}

/* A host Weight copied into backend memory (a new Weight whose arrays the backend owns). */
static Weight *weight_to_backend(Backend *be, const Weight *h, TunaErr *err) {
    void *src[4], *dst[4] = {NULL, NULL, NULL, NULL};
    size_t bytes[4];
    int n = weight_arrays(h, src, bytes), fail = 0;
    for (int i = 0; i < n && !fail; i++)
        if (!(fail = !(dst[i] = be->ops->alloc(be, bytes[i] ? bytes[i] : 1))))
            be->ops->upload(be, dst[i], src[i], bytes[i]);
    if (fail) {
        tuna_errf(err, TUNA_ENOMEM, "cannot allocate %.1f MiB for a %s weight",
                  (double)weight_bytes(h) / (1 << 20), wtype_info[h->type].name);
        for (int i = 0; i < n; i++)
            be->ops->release(be, dst[i]);
        return NULL;
    }
    Weight *d = xmalloc(sizeof *d);
    *d = *h;
    d->pack = d->pack_t = NULL;
    weight_set_arrays(d, dst);
    return d;
}

void weight_download_f32(Backend *be, const Weight *d, float *dst) {
    void *src[4], *host[4];
    size_t bytes[4];
    int n = weight_arrays(d, src, bytes);
    for (int i = 0; i < n; i++) {
        host[i] = xmalloc(bytes[i] ? bytes[i] : 1);
        be->ops->download(be, host[i], src[i], bytes[i]);
    }
    Weight h = *d;
    weight_set_arrays(&h, host);
    weight_dequantize(&h, dst);
    for (int i = 0; i < n; i++)
        free(host[i]);
}

// --- where the weights come from: a safetensors checkpoint or a GGUF file

/* One open checkpoint: exactly one of st and gg. */
typedef struct WSrc {
    SafeTensors *st;
    Gguf *gg;
    const ModelConfig *cfg;
    char file[4096]; /* for messages */
} WSrc;

/* A checkpoint tensor as model.c sees it: its HF shape, and how to read it. */
typedef struct WTensor {
    const StTensor *st;
    const GgufTensor *gt;
    GgufXform x;
    int heads;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} WTensor;

/* 1 and *t when the checkpoint holds the HF-named tensor, else 0. */
static int ws_find(const WSrc *w, const char *name, WTensor *t) {
    memset(t, 0, sizeof *t);
    if (w->st) {
        t->st = safetensors_find(w->st, name);
        if (!t->st) return 0;
        t->ndim = t->st->ndim;
        memcpy(t->shape, t->st->shape, sizeof t->st->shape);
        return 1;
    }
    char gname[160];
    if (gguf_name_for(w->cfg, name, gname, sizeof gname, &t->x, &t->heads)) return 0;
    t->gt = gguf_find_tensor(w->gg, gname);
    if (!t->gt) return 0;
    /* GGUF dims are innermost first: ne = [C, V] is HF's [V, C]; a transposed one as stored */
    t->ndim = t->gt->ndim;
    for (int d = 0; d < t->ndim; d++)
        t->shape[d] = t->x == GGUF_X_TRANSPOSE ? t->gt->ne[d] : t->gt->ne[t->ndim - 1 - d];
    return 1;
}

static const char *ws_name(const WTensor *t) {
    return t->st ? t->st->name : t->gt->name;
}

/* TUNA_EUNSUP when the tensor's storage type cannot be read. */
static int ws_check_type(const WSrc *w, const WTensor *t, TunaErr *err) {
    if (t->st) {
        if (t->st->dtype != ST_F32 && t->st->dtype != ST_F16 && t->st->dtype != ST_BF16)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: tensor \"%s\" has dtype %s (supported: F32, F16, BF16)", w->file,
                             t->st->name, st_dtype_name(t->st->dtype));
        return 0;
    }
    if (!ggml_type_supported(t->gt->type))
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: tensor \"%s\" has type %s (supported: F32, F16, BF16, Q8_0, Q4_0, "
                         "Q4_1, Q4_K, Q5_K, Q6_K)",
                         w->file, t->gt->name, ggml_type_name(t->gt->type));
    return 0;
}

/* The tensor as float32 in its HF layout (xscratch: n floats, for GGUF's reordered ones). */
static int ws_to_f32(const WSrc *w, const WTensor *t, float *dst, float *xscratch, size_t n,
                     TunaErr *err) {
    if (t->st) return st_tensor_to_f32(t->st, dst, n, err);
    return gguf_tensor_to_hf(w->gg, t->gt, t->x, t->heads, dst, xscratch, n, err);
}

static void ws_release(const WTensor *t) {
    if (t->st)
        st_tensor_release(t->st);
    else
        gguf_tensor_release(t->gt);
}

/* Converts one file tensor into host float32 laid out as the spec wants. */
static int spec_fill(const WSrc *w, const ParamSpec *s, const WTensor *t, float *host,
                     float *scratch, float *xscratch, TunaErr *err) {
    size_t fn = 1;
    for (int d = 0; d < s->ndim; d++)
        fn *= (size_t)s->shape[d];
    if (s->mode == LOAD_COPY) return ws_to_f32(w, t, host, xscratch, fn, err);
    int rc = ws_to_f32(w, t, scratch, xscratch, fn, err);
    if (rc) return rc;
    size_t R = (size_t)s->shape[0], Cn = s->ndim == 2 ? (size_t)s->shape[1] : 1;
    if (s->mode == LOAD_TRANSPOSE) {
        for (size_t r = 0; r < R; r++)
            for (size_t c = 0; c < Cn; c++)
                host[c * R + r] = scratch[r * Cn + c];
    } else if (s->mode == LOAD_SPLIT3_T) {
        size_t W = Cn / 3, off = (size_t)s->part * W; /* file (C, 3C) -> ours (C_out=W, C_in=R) */
        for (size_t r = 0; r < R; r++)
            for (size_t c = 0; c < W; c++)
                host[c * R + r] = scratch[r * Cn + off + c];
    } else {
        size_t W = R / 3;
        memcpy(host, scratch + (size_t)s->part * W, W * sizeof(float));
    }
    return 0;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static void rope_freqs(const ModelConfig *c, float *f) {
    int half = c->HS / 2;
    for (int i = 0; i < half; i++) {
        /* as HF: 1 / theta^(2i/d), computed in float32 */
        float inv = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->HS);
        if (c->rope_type == ROPE_LINEAR) inv /= c->rope_factor;
        if (c->rope_type == ROPE_LLAMA3) {
            float low_wl = (float)c->rope_orig_max_pos / c->rope_low_freq_factor;
            float high_wl = (float)c->rope_orig_max_pos / c->rope_high_freq_factor;
            float wl = 2.0f * (float)M_PI / inv;
            if (wl > low_wl)
                inv = inv / c->rope_factor;
            else if (wl >= high_wl) {
                float smooth = ((float)c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                inv = (1.0f - smooth) * inv / c->rope_factor + smooth * inv;
            }
        }
        f[i] = inv;
    }
}

/* Opens the weights of dir (a GGUF file, or model.safetensors) into w; m->dir names them. */
static int open_weights(const char *dir, Model *m, WSrc *w, TunaErr *err) {
    int rc = gguf_model_path(dir, w->file, sizeof w->file, err);
    if (rc < 0) return rc;
    if (rc == 1) {
        rc = gguf_open(w->file, &w->gg, err);
        if (rc) return rc;
        if (strlen(w->file) >= sizeof m->dir)
            return tuna_errf(err, TUNA_EINVAL, "%s: path too long", w->file);
        memcpy(m->dir, w->file, strlen(w->file) + 1);
        return 0;
    }
    rc = safetensors_open(dir, &w->st, err);
    if (rc) return rc;
    snprintf(w->file, sizeof w->file, "%s/model.safetensors", dir);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    return 0;
}

/* The token embedding's or the LM head's spec. */
static int spec_is_head(const ParamSpec *s) {
    size_t n = strlen(s->name);
    return !strcmp(s->name, "model.embed_tokens.weight") || !strcmp(s->name, "lm_head.weight") ||
           (n >= 10 && !strcmp(s->name + n - 10, "wte.weight")); /* GPT-2 */
}

/* Which specs load as typed weights: the linear layers below o->fp32_from_layer, quantized to
 * o->qtype; with o->keep_stored, the frozen embedding and head (typed_head), and the linear
 * layers when there is no qtype, in the checkpoint tensor's own type where tuna has it: a GGUF
 * type, or a safetensors BF16 / F16 (F32 stays fp32, and so does GPT-2's transposed Conv1D,
 * whose rows are not the file's). */
static void mark_typed(Model *m, const WSrc *w, SpecList *specs, const ModelLoadOptions *o,
                       int has_w_ops) {
    int keep = o && o->keep_stored && (w->gg || w->st) && has_w_ops;
    for (int i = 0; i < specs->n; i++) {
        ParamSpec *s = &specs->v[i];
        s->typed = s->stored = 0;
        s->qt = WT_F32;
        s->site = s->layer = -1;
        if (!o || (o->qtype == WT_F32 && !keep)) continue; /* no search on a plain load */
        s->site = spec_site(m, s, &s->layer);
        int from = o->fp32_from_layer < 0 ? m->cfg.L + o->fp32_from_layer : o->fp32_from_layer;
        int head = o->typed_head && (keep || o->head_bf16) && spec_is_head(s);
        if (!head && (s->site < 0 || s->layer >= from)) continue;
        if (head && !keep) { /* --dtype bf16: the frozen embedding and head converted */
            s->typed = 1;
            s->qt = WT_BF16;
            continue;
        }
        /* the linear layers in qtype when one is asked for; the embedding and head (and, with
         * no qtype, the linear layers too) as stored */
        if (head || o->qtype == WT_F32) {
            WTensor t;
            if (s->mode != LOAD_COPY || !ws_find(w, s->name, &t) || t.x == GGUF_X_TRANSPOSE)
                continue;
            int wt = t.st ? (t.st->dtype == ST_BF16  ? WT_BF16
                             : t.st->dtype == ST_F16 ? WT_F16
                                                     : -1)
                          : wtype_by_ggml((int)t.gt->type);
            if (wt <= WT_F32 || !wtype_row_bytes((WType)wt, spec_in_dim(s))) continue;
            s->typed = s->stored = 1;
            s->qt = (WType)wt;
            continue;
        }
        s->typed = 1;
        s->qt = o->qtype;
        /* a row that is not whole blocks stays fp32 (as llama.cpp's quantize falls back) */
        if (spec_in_dim(s) % wtype_info[o->qtype].block) {
            s->typed = 0;
            m->n_qskipped++;
        }
    }
}

ModelLoadOptions model_load_frozen(int fp32_from_layer, int embed_trains) {
    return (ModelLoadOptions){.qtype = WT_F32,
                              .fp32_from_layer = fp32_from_layer,
                              .keep_stored = 1,
                              .typed_head = !embed_trains};
}

size_t model_typed_bytes_file(const char *dir, const ModelConfig *c, const ModelLoadOptions *o,
                              size_t *n_typed) {
    if (!o || !o->keep_stored) return model_typed_bytes_for(c, o, n_typed);
    *n_typed = 0;
    WSrc w = {.cfg = c};
    Model m = {.cfg = *c};
    if (open_weights(dir, &m, &w, NULL)) {
        safetensors_free(w.st);
        gguf_free(w.gg);
        return 0;
    }
    SpecList specs = {0};
    m.layers = xcalloc((size_t)c->L, sizeof *m.layers);
    if (c->arch == ARCH_GPT2)
        specs_gpt2(&m, &specs,
                   w.st && safetensors_find(w.st, "transformer.wte.weight") ? "transformer." : "");
    else
        specs_llama(&m, &specs);
    mark_typed(&m, &w, &specs, o, 1);
    size_t bytes = 0;
    for (int i = 0; i < specs.n; i++) {
        const ParamSpec *s = &specs.v[i];
        if (!s->typed) continue;
        size_t K = (size_t)spec_in_dim(s);
        bytes += s->stored ? wtype_row_bytes(s->qt, (int64_t)K) * (s->n / K)
                           : typed_bytes(s->qt, o->double_quant, s->n / K, K);
        *n_typed += s->n;
    }
    free(specs.v);
    free(m.layers);
    gguf_free(w.gg);
    safetensors_free(w.st);
    return bytes;
}

/* Checks every tensor before anything is allocated: present, shaped and typed as the specs
 * want, and no GGUF tensor left over. Sums the sizes; biggest is the largest tensor in floats,
 * xform whether any GGUF tensor needs reordering. */
static int check_tensors(const WSrc *w, const SpecList *specs, size_t *total, size_t *biggest,
                         int *xform, TunaErr *err) {
    const ModelConfig *c = w->cfg;
    char missing[1024] = "";
    int n_missing = 0, n_gt = w->gg ? gguf_tensor_count(w->gg) : 0, rc = 0;
    char *used = w->gg ? xcalloc((size_t)n_gt + 1, 1) : NULL;
    *total = *biggest = 0;
    *xform = 0;
    for (int i = 0; i < specs->n; i++) {
        const ParamSpec *s = &specs->v[i];
        WTensor t;
        if (!ws_find(w, s->name, &t)) {
            if (n_missing++ < 4 && (i == 0 || strcmp(specs->v[i - 1].name, s->name))) {
                size_t o = strlen(missing);
                snprintf(missing + o, sizeof missing - o, "%s%s", o ? ", " : "", s->name);
            }
            continue;
        }
        int same = t.ndim == s->ndim;
        for (int d = 0; same && d < s->ndim; d++)
            same = t.shape[d] == s->shape[d];
        if (!same) {
            char want[64], got[64];
            shape_str(want, sizeof want, s->ndim, s->shape);
            shape_str(got, sizeof got, t.ndim, t.shape);
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: tensor \"%s\" has shape %s, expected %s for this %s", w->file,
                           ws_name(&t), got, want, w->gg ? "file's metadata" : "config.json");
            goto out;
        }
        if ((rc = ws_check_type(w, &t, err))) goto out;
        if (t.gt) used[t.gt - gguf_tensor_at(w->gg, 0)] = 1;
        *xform |= t.x != GGUF_X_NONE;
        if (!s->typed) *total += s->n;
        size_t fn = (size_t)s->shape[0] * (s->ndim == 2 ? (size_t)s->shape[1] : 1);
        if (fn > *biggest) *biggest = fn;
    }
    if (n_missing) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: %d tensor%s missing for %s with %d layers: %s%s",
                       w->file, n_missing, n_missing > 1 ? "s" : "", config_arch_name(c->arch),
                       c->L, missing, n_missing > 4 ? ", ..." : "");
        goto out;
    }
    /* a GGUF tensor tuna has no place for would change the computation if it were dropped */
    for (int i = 0; i < n_gt; i++)
        if (!used[i]) {
            rc = tuna_errf(err, TUNA_EUNSUP,
                           "%s: tensor \"%s\" is not part of tuna's %s (it would be ignored)",
                           w->file, gguf_tensor_at(w->gg, i)->name, config_arch_name(c->arch));
            goto out;
        }
out:
    free(used);
    return rc;
}

/* One backend allocation for every weight (m->params, m->pinfo), filled tensor by tensor
 * through a host staging buffer. */
/* A linear weight kept typed (ParamSpec.qt): the GGUF tensor's own rows of blocks (q and k rows
 * put back in HF's order), or the host fp32 (the model's (out, in) layout) quantized. */
static int fill_typed(Model *m, const ParamSpec *s, const WTensor *t, const WSrc *w,
                      const float *host, const ModelLoadOptions *o, TunaErr *err) {
    int K = spec_in_dim(s), N = (int)(s->n / (size_t)K);
    Weight h;
    int rc;
    if (s->stored) {
        h = (Weight){.type = s->qt, .rows = N, .cols = K};
        size_t nb = t->st ? t->st->nbytes : t->gt->nbytes;
        h.data = malloc(nb);
        if (!h.data)
            return tuna_errf(err, TUNA_ENOMEM, "%s: cannot allocate %zu bytes", s->name, nb);
        if (t->st) { /* safetensors bf16 / f16 rows are the Linear layout already */
            memcpy(h.data, t->st->data, nb);
            rc = 0;
        } else {
            rc = gguf_tensor_rows_to_hf(w->gg, t->gt, t->x, t->heads, h.data, err);
        }
    } else {
        rc = weight_quantize(&h, host, N, K, s->qt, o->double_quant, err);
    }
    if (rc) {
        if (s->stored) free(h.data);
        return tuna_errf(err, rc, "%s: %s", s->name, err ? err->msg : "");
    }
    Weight *d = weight_to_backend(m->be, &h, err);
    weight_free(&h);
    if (!d) return TUNA_ENOMEM;
    if (s->site < 0 && !strcmp(s->name, "lm_head.weight"))
        m->head_q = d;
    else if (s->site < 0)
        m->wte_q = d;
    else
        m->layers[s->layer].qw[s->site] = d;
    m->n_qbytes += weight_bytes(d);
    m->n_qparams += s->n;
    return 0;
}

static int fill_params(Model *m, const WSrc *w, const SpecList *specs, size_t total, size_t biggest,
                       int xform, const ModelLoadOptions *o, const char *dir, TunaErr *err) {
    Backend *be = m->be;
    float *scratch = NULL, *host = NULL, *xscratch = NULL;
    int rc = 0;
    m->n_params = total;
    m->params = be->ops->alloc(be, total * sizeof(float));
    if (!m->params)
        return tuna_errf(err, TUNA_ENOMEM, "%s: cannot allocate %.1f MiB for the weights", dir,
                         (double)total * 4 / (1 << 20));
    /* host backends are filled in place (no staging copy); scratch only for the transposed and
     * split GPT-2 tensors, xscratch for GGUF's reordered ones */
    int direct = be->ops->host_memory, reshaped = 0;
    for (int i = 0; i < specs->n; i++)
        reshaped |= specs->v[i].mode != LOAD_COPY;
    if (reshaped) scratch = malloc(biggest * sizeof(float));
    if (!direct) host = malloc(biggest * sizeof(float));
    if (xform) xscratch = malloc(biggest * sizeof(float));
    int typed = 0;
    for (int i = 0; i < specs->n; i++)
        typed |= specs->v[i].typed && !specs->v[i].stored;
    if (direct && typed) host = malloc(biggest * sizeof(float)); /* quantized from the host */
    if ((reshaped && !scratch) || ((!direct || typed) && !host) || (xform && !xscratch)) {
        rc = tuna_errf(err, TUNA_ENOMEM, "%s: cannot allocate staging buffers", dir);
        goto out;
    }
    size_t off = 0;
    m->pinfo = xcalloc((size_t)specs->n, sizeof *m->pinfo);
    m->n_pinfo = specs->n;
    for (int i = 0; i < specs->n; i++) {
        const ParamSpec *s = &specs->v[i];
        ParamInfo *pi = &m->pinfo[i];
        snprintf(pi->name, sizeof pi->name, "%s", s->name);
        pi->off = off;
        pi->n = s->n;
        pi->ndim = s->ndim;
        pi->shape[0] = s->shape[0];
        pi->shape[1] = s->shape[1];
        pi->mode = (int)s->mode;
        pi->part = s->part;
        pi->layer = s->layer;
        pi->site = s->site;
        WTensor t;
        ws_find(w, s->name, &t);
        if (s->typed) {
            pi->off = 0;
            *s->dst = NULL;
            if (!s->stored && (rc = spec_fill(w, s, &t, host, scratch, xscratch, err))) goto out;
            if ((rc = fill_typed(m, s, &t, w, host, o, err))) goto out;
            pi->q = s->site < 0 ? (s->name[0] == 'l' ? m->head_q : m->wte_q)
                                : m->layers[s->layer].qw[s->site];
            if (i + 1 == specs->n || strcmp(specs->v[i + 1].name, s->name)) ws_release(&t);
            continue;
        }
        *s->dst = m->params + off;
        rc = spec_fill(w, s, &t, direct ? *s->dst : host, scratch, xscratch, err);
        if (rc) goto out;
        if (!direct) be->ops->upload(be, *s->dst, host, s->n * sizeof(float));
        /* the file's pages are not needed once converted: peak memory is the weights plus one
         * tensor, not twice the weights (a split tensor, after its last part) */
        if (i + 1 == specs->n || strcmp(specs->v[i + 1].name, s->name)) ws_release(&t);
        off += s->n;
    }
out:
    free(scratch);
    free(host);
    free(xscratch);
    return rc;
}

int model_load(const char *dir, Backend *be, Model **out, TunaErr *err) {
    return model_load_opts(dir, be, NULL, out, err);
}

int model_load_opts(const char *dir, Backend *be, const ModelLoadOptions *o, Model **out,
                    TunaErr *err) {
    *out = NULL;
    if (o && o->qtype != WT_F32 && !be->ops->matmul_w_fwd)
        return tuna_errf(err, TUNA_EUNSUP,
                         "backend \"%s\" cannot run %s weights: it has no matmul_w_fwd op",
                         be->ops->name, wtype_info[o->qtype].name);
    const char *missing = backend_missing(be->ops, BACKEND_NEED_INFER);
    if (missing)
        return tuna_errf(err, TUNA_EUNSUP, "backend \"%s\" cannot run a model: it has no %s op",
                         be->ops->name, missing);
    Model *m = xcalloc(1, sizeof *m);
    m->be = be;
    WSrc w = {0};
    SpecList specs = {0};
    int rc = config_load(dir, &m->cfg, err);
    if (rc) goto fail;
    const ModelConfig *c = &m->cfg;
    w.cfg = c;
    if ((rc = open_weights(dir, m, &w, err))) goto fail;
    m->layers = xcalloc((size_t)c->L, sizeof *m->layers);
    if (c->arch == ARCH_GPT2)
        specs_gpt2(m, &specs,
                   w.st && safetensors_find(w.st, "transformer.wte.weight") ? "transformer." : "");
    else
        specs_llama(m, &specs);
    size_t total, biggest;
    int xform;
    mark_typed(m, &w, &specs, o, be->ops->matmul_w_fwd && be->ops->embed_w_fwd);
    if ((rc = check_tensors(&w, &specs, &total, &biggest, &xform, err))) goto fail;
    if ((rc = fill_params(m, &w, &specs, total, biggest, xform, o, dir, err))) goto fail;
    if (c->tie_embeddings) m->lm_head = m->wte, m->head_q = m->wte_q;
    if (!c->learned_pos) {
        float f[512];
        rope_freqs(c, f);
        m->inv_freq = be->ops->alloc(be, sizeof(float) * (size_t)(c->HS / 2));
        if (!m->inv_freq) {
            rc = tuna_errf(err, TUNA_ENOMEM, "out of memory");
            goto fail;
        }
        be->ops->upload(be, m->inv_freq, f, sizeof(float) * (size_t)(c->HS / 2));
    }
    rc = be->ops->sync(be);
    if (rc) {
        rc = tuna_errf(err, rc, "%s: %s", dir, be->err.msg);
        goto fail;
    }
    rc = 0;
    goto done;
fail:
    model_free(m);
    m = NULL;
done:
    free(specs.v);
    safetensors_free(w.st);
    gguf_free(w.gg);
    *out = m;
    return rc;
}

/* Bytes of the first n elements of a KV cache (n whole blocks of its type) */
static size_t kv_bytes(const Model *m, size_t n) {
    return n ? wtype_row_bytes(m->kv_type, (int64_t)n) : 0;
}

static void free_state(Model *m) {
    Backend *be = m->be;
    float **bufs[] = {&m->k_new, &m->v_new, &m->x,   &m->xb,     &m->xb2,    &m->q,
                      &m->att,   &m->hb,    &m->hb2, &m->logits, &m->lora_u, &m->lora_t};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        be->ops->release(be, *bufs[i]);
        *bufs[i] = NULL;
    }
    be->ops->release(be, m->k_cache);
    be->ops->release(be, m->v_cache);
    m->k_cache = m->v_cache = NULL;
    free(m->pos);
    free(m->slot_past);
    m->pos = NULL;
    m->slot_past = NULL;
    m->cache_T = m->act_T = m->n_past = m->n_slots = m->slot = m->lora_rank_cap = 0;
}

/* The scratch of an unmerged LoRA for act_T rows (none without a LoRA or before reserve). */
static int lora_scratch(Model *m, TunaErr *err) {
    if (!m->lora || !m->act_T || m->lora_rank_cap >= m->lora->rank) return 0;
    const ModelConfig *c = &m->cfg;
    Backend *be = m->be;
    size_t wide = (size_t)c->FF;
    if ((size_t)c->NH * c->HS > wide) wide = (size_t)c->NH * c->HS;
    if ((size_t)c->C > wide) wide = (size_t)c->C;
    be->ops->release(be, m->lora_u);
    be->ops->release(be, m->lora_t);
    m->lora_u = be->ops->alloc(be, sizeof(float) * (size_t)m->act_T * (size_t)m->lora->rank);
    m->lora_t = be->ops->alloc(be, sizeof(float) * (size_t)m->act_T * wide);
    if (!m->lora_u || !m->lora_t) {
        m->lora_rank_cap = 0;
        return tuna_errf(err, TUNA_ENOMEM, "cannot allocate the LoRA scratch for %d rows",
                         m->act_T);
    }
    m->lora_rank_cap = m->lora->rank;
    return 0;
}

int model_set_lora(Model *m, const ModelLora *lora, TunaErr *err) {
    if (lora && lora->rank < 1)
        return tuna_errf(err, TUNA_EINVAL, "model_set_lora: rank %d", lora->rank);
    if (lora && (!m->be->ops->scale || (lora->G && !m->be->ops->col_scale)))
        return tuna_errf(err, TUNA_EUNSUP,
                         "backend \"%s\" cannot run an unmerged adapter: it has no %s op",
                         m->be->ops->name, m->be->ops->scale ? "col_scale" : "scale");
    m->lora = lora;
    int rc = lora_scratch(m, err);
    if (rc) m->lora = NULL;
    return rc;
}

void model_base_linear(const Model *m, int l, LoraSite site, float *out, const float *in,
                       const float *W, const float *bias, int M, int K, int N) {
    const Weight *q = m->layers[l].qw[site];
    if (q)
        m->be->ops->matmul_w_fwd(m->be, out, in, q, bias, M);
    else
        m->be->ops->matmul_fwd(m->be, out, in, W, bias, M, K, N);
}

void model_base_linear_n(const Model *m, int l, int n, const LoraSite *sites, float *const *outs,
                         const float *in, const float *const *Ws, const float *const *biases, int M,
                         int K, const int *Ns) {
    const Weight *q[LORA_N_SITES];
    int typed = n <= LORA_N_SITES;
    for (int i = 0; typed && i < n; i++)
        typed = (q[i] = m->layers[l].qw[sites[i]]) != NULL;
    if (typed) {
        backend_matmul_w_fwd_n(m->be, n, outs, in, q, biases, M);
        return;
    }
    for (int i = 0; i < n; i++)
        model_base_linear(m, l, sites[i], outs[i], in, Ws[i], biases[i], M, K, Ns[i]);
}

void model_embed(const Model *m, float *out, const int32_t *ids, int T) {
    if (m->wte_q)
        m->be->ops->embed_w_fwd(m->be, out, ids, m->wte_q, T);
    else
        m->be->ops->embed_fwd(m->be, out, ids, m->wte, T, m->cfg.C);
}

void model_head(const Model *m, float *logits, const float *xn, int M) {
    if (m->head_q)
        m->be->ops->matmul_w_fwd(m->be, logits, xn, m->head_q, NULL, M);
    else
        m->be->ops->matmul_fwd(m->be, logits, xn, m->lm_head, NULL, M, m->cfg.C, m->cfg.V);
}

void model_head_bwd_in(const Model *m, float *dxn, const float *dlogits, int M) {
    m->be->ops->matmul_w_bwd_in(m->be, dxn, dlogits, m->head_q, M, 1);
}

int model_base_linear_bwd_typed(const Model *m, int l, LoraSite site, float *din, const float *dout,
                                int M, int acc) {
    const Weight *q = m->layers[l].qw[site];
    if (!q) return 0;
    if (din) m->be->ops->matmul_w_bwd_in(m->be, din, dout, q, M, acc);
    return 1;
}

/* out (R, N) = in (R, K) · Wᵀ + bias, plus the unmerged LoRA of (layer l, site), if any. */
static void linear(Model *m, int l, LoraSite site, float *out, const float *in, const float *W,
                   const float *bias, int R, int K, int N) {
    Backend *be = m->be;
    const BackendOps *op = be->ops;
    const ModelLora *lo = m->lora;
    int dora = lo && lo->A[l][site] && lo->G && lo->G[l][site];
    /* DoRA scales W·x + s·B·A·x, then adds the bias: the product without it */
    model_base_linear(m, l, site, out, in, W, dora ? NULL : bias, R, K, N);
    if (!lo || !lo->A[l][site]) return;
    /* u = s · in · Aᵀ, then out += u · Bᵀ: the scale on the rank's r columns, as the trainer's
     * forward applies it (model_train.c lora_u_fwd), so that a chat with the adapter unmerged
     * computes what training computed */
    op->matmul_fwd(be, m->lora_u, in, lo->A[l][site], NULL, R, K, lo->rank);
    op->scale(be, m->lora_u, (size_t)R * lo->rank, lo->scale);
    backend_matmul_acc(be, out, m->lora_u, lo->B[l][site], R, lo->rank, N, m->lora_t);
    if (dora) op->col_scale(be, out, out, lo->G[l][site], bias, R, N); /* g ⊙ out + bias */
}

void model_free(Model *m) {
    if (!m) return;
    if (m->lora_owner_free) m->lora_owner_free(m->lora_owner);
    if (m->be) {
        free_state(m);
        for (int l = 0; m->layers && l < m->cfg.L; l++)
            for (int k = 0; k < LORA_N_SITES; k++)
                weight_release(m->be, m->layers[l].qw[k]);
        if (m->head_q != m->wte_q) weight_release(m->be, m->head_q);
        weight_release(m->be, m->wte_q);
        m->be->ops->release(m->be, m->params);
        m->be->ops->release(m->be, m->inv_freq);
    }
    free(m->layers);
    free(m->pinfo);
    free(m->prefix);
    free(m);
}

size_t model_param_count(const Model *m) {
    return m->n_params;
}

/* Empties every slot (the prefix, if any, goes back in each) and makes slot 0 current. */
static void reset_slots(Model *m) {
    for (int s = m->n_slots - 1; s >= 0; s--) {
        model_use_slot(m, s);
        model_reset(m);
    }
}

int model_reserve(Model *m, int cache_T, int act_T, TunaErr *err) {
    return model_reserve_slots(m, 1, cache_T, act_T, err);
}

int model_reserve_slots(Model *m, int n_slots, int cache_T, int act_T, TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    cache_T += m->prefix_len;
    if (c->learned_pos && cache_T > c->max_pos) cache_T = c->max_pos;
    if (cache_T < 1) cache_T = 1;
    if (n_slots < 1) n_slots = 1;
    if (act_T < n_slots) act_T = n_slots; /* a decoding step has a row per slot */
    if (act_T > cache_T && act_T > n_slots) act_T = cache_T > n_slots ? cache_T : n_slots;
    if (m->cache_T >= cache_T && m->act_T >= act_T && m->n_slots == n_slots) {
        reset_slots(m);
        return 0;
    }
    free_state(m);
    Backend *be = m->be;
    size_t KD = (size_t)c->KVH * c->HS, QD = (size_t)c->NH * c->HS;
    size_t kv = kv_bytes(m, (size_t)c->L * n_slots * cache_T * KD);
    size_t T = (size_t)act_T,
           nk = (size_t)(m->kv_type != WT_F32 && act_T > n_slots ? act_T : n_slots) * KD;
    struct {
        void **p;
        size_t bytes;
    } want[] = {{&m->k_cache, kv},
                {&m->v_cache, kv},
                {(void **)&m->x, T * c->C * 4},
                {(void **)&m->xb, T * c->C * 4},
                {(void **)&m->xb2, T * c->C * 4},
                {(void **)&m->q, T * QD * 4},
                {(void **)&m->att, T * QD * 4},
                {(void **)&m->hb, T * c->FF * 4},
                {(void **)&m->hb2, T * c->FF * 4},
                {(void **)&m->logits, T * c->V * 4},
                {(void **)&m->k_new, nk * 4},
                {(void **)&m->v_new, nk * 4}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].p = be->ops->alloc(be, want[i].bytes);
        if (!*want[i].p) {
            free_state(m);
            return tuna_errf(err, TUNA_ENOMEM,
                             "cannot allocate %.1f MiB for the KV cache and activations",
                             (double)want[i].bytes / (1 << 20));
        }
    }
    m->pos = xmalloc(sizeof(int32_t) * T);
    m->slot_past = xcalloc((size_t)n_slots, sizeof *m->slot_past);
    m->cache_T = cache_T;
    m->act_T = act_T;
    m->n_slots = n_slots;
    reset_slots(m);
    return lora_scratch(m, err);
}

void model_use_slot(Model *m, int s) {
    if (s < 0 || s >= m->n_slots || s == m->slot) return;
    m->slot_past[m->slot] = m->n_past;
    m->slot = s;
    m->n_past = m->slot_past[s];
}

int model_slot_past(const Model *m, int s) {
    return s == m->slot ? m->n_past : m->slot_past[s];
}

/* Where layer l's keys (or values) of the current slot start, in elements of the cache. */
static size_t slot_layer_off(const Model *m, int l, int slot) {
    return ((size_t)l * m->n_slots + (size_t)slot) * m->cache_T * m->cfg.KVH * m->cfg.HS;
}

/* Element `at` of the k or v cache (a block boundary: whole rows of KVH*HS). */
static void *kv_at(const Model *m, void *cache, size_t at) {
    return (char *)cache + kv_bytes(m, at);
}

/* n fp32 values of backend memory into the cache from element at (in its type) */
static void kv_store(Model *m, void *cache, size_t at, const float *src, size_t n) {
    if (m->kv_type != WT_F32)
        m->be->ops->kv_store(m->be, m->kv_type, kv_at(m, cache, at), src, n);
    else
        m->be->ops->copy(m->be, kv_at(m, cache, at), src, n * sizeof(float));
}

/* n fp32 values of host memory into the cache (through k_new when typed) */
static void kv_upload(Model *m, void *cache, size_t at, const float *src, size_t n) {
    if (m->kv_type == WT_F32) {
        m->be->ops->upload(m->be, kv_at(m, cache, at), src, n * sizeof(float));
        return;
    }
    m->be->ops->upload(m->be, m->k_new, src, n * sizeof(float));
    kv_store(m, cache, at, m->k_new, n);
}

/* n values of the cache from element at into host memory, as fp32 (dequantized) */
static void kv_download(Model *m, float *dst, void *cache, size_t at, size_t n) {
    if (m->kv_type == WT_F32) {
        m->be->ops->download(m->be, dst, kv_at(m, cache, at), n * sizeof(float));
        return;
    }
    size_t bytes = kv_bytes(m, n);
    void *h = xmalloc(bytes);
    m->be->ops->download(m->be, h, kv_at(m, cache, at), bytes);
    m->be->ops->sync(m->be);
    wtype_info[m->kv_type].dequant_row(h, dst, (int64_t)n, NULL);
    free(h);
}

/* attention_fwd of Tq queries over the cache from element base (Tk positions of a slot) */
static void kv_attention(Model *m, float *out, const float *q, size_t base, int Tq, int Tk) {
    const ModelConfig *c = &m->cfg;
    Backend *be = m->be;
    size_t stride = (size_t)m->cache_T * c->KVH * c->HS;
    if (m->kv_type != WT_F32)
        be->ops->attention_fwd_kv(be, m->kv_type, out, q, kv_at(m, m->k_cache, base),
                                  kv_at(m, m->v_cache, base), 1, Tq, Tk, stride, c->NH, c->KVH,
                                  c->HS, c->sliding_window, NULL);
    else
        be->ops->attention_fwd(be, out, q, kv_at(m, m->k_cache, base), kv_at(m, m->v_cache, base),
                               1, Tq, Tk, stride, c->NH, c->KVH, c->HS, c->sliding_window, NULL);
}

size_t model_kv_bytes(const Model *m) {
    if (!m->k_cache) return 0;
    return 2 * kv_bytes(m, (size_t)m->cfg.L * m->n_slots * m->cache_T * m->cfg.KVH * m->cfg.HS);
}

int model_set_kv_type(Model *m, WType t, TunaErr *err) {
    const char *name = kv_type_name(t);
    if (!kv_type_ok(t, m->cfg.HS)) {
        if (t == WT_Q8_0)
            return tuna_errf(err, TUNA_EUNSUP,
                             "--cache-type q8_0: this model's heads of %d are not whole blocks "
                             "of 32; use f16",
                             m->cfg.HS);
        return tuna_errf(err, TUNA_EINVAL, "--cache-type: f32, f16 or q8_0, not type %d", (int)t);
    }
    if (t != WT_F32 && backend_missing(m->be->ops, BACKEND_NEED_KV_TYPED))
        return tuna_errf(err, TUNA_EUNSUP,
                         "--cache-type %s: the %s backend keeps its KV cache in fp32 only (it "
                         "has no %s op)",
                         name, m->be->ops->name,
                         backend_missing(m->be->ops, BACKEND_NEED_KV_TYPED));
    if (t != m->kv_type) {
        free_state(m);
        m->kv_type = t;
    }
    return 0;
}

void model_reset(Model *m) {
    m->n_past = 0;
    if (!m->prefix_len || !m->k_cache) return;
    const ModelConfig *c = &m->cfg;
    size_t KD = (size_t)c->KVH * c->HS, PW = (size_t)c->L * 2 * KD;
    for (int l = 0; l < c->L; l++)
        for (int p = 0; p < m->prefix_len; p++) {
            const float *src = m->prefix + p * PW + (size_t)l * 2 * KD;
            size_t at = slot_layer_off(m, l, m->slot) + (size_t)p * KD;
            kv_upload(m, m->k_cache, at, src, KD);
            kv_upload(m, m->v_cache, at, src + KD, KD);
        }
    m->n_past = m->prefix_len;
}

int model_set_prefix(Model *m, const float *prefix, int P, TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    if (P < 0 || P > 4096) return tuna_errf(err, TUNA_EINVAL, "prefix of %d tokens", P);
    free(m->prefix);
    m->prefix = NULL;
    m->prefix_len = 0;
    if (P) {
        size_t n = (size_t)P * c->L * 2 * c->KVH * c->HS;
        m->prefix = xmalloc(sizeof(float) * n);
        memcpy(m->prefix, prefix, sizeof(float) * n);
        m->prefix_len = P;
    }
    free_state(m); /* the cache must be re-reserved with room for the prefix */
    return 0;
}

// --- forward

static void norm_rows(Model *m, float *out, const float *in, const float *w, const float *b,
                      int R) {
    decoder_norm(m, out, in, w, b, R);
}

/* The decoder core's linear layers for inference: linear() with the model's unmerged LoRA. */
static void infer_linear(void *ctx, int l, LoraSite site, float *out, const float *in,
                         const float *W, const float *bias, int M, int K, int N) {
    linear(ctx, l, site, out, in, W, bias, M, K, N);
}

/* A layer's first half for R rows of m->x (decoder_qkv): q into m->q, k and v into kd and vd
 * (rows KVH*HS apart), q/k norms in place, and RoPE at the positions m->pos. */
static void qkv_fwd(Model *m, const LayerWeights *w, int R, float *kd, float *vd) {
    Decoder d = {.m = m, .linear = infer_linear, .ctx = m};
    DecoderQKV o = {
            .xn = m->xb, .q_raw = m->q, .q = m->q, .k_raw = kd, .k = kd, .v = vd, .pos = m->pos};
    decoder_qkv(&d, (int)(w - m->layers), R, m->x, &o);
}

/* A layer's second half for R rows (decoder_out_mlp), from the attention output in m->att,
 * the residual stream m->x updated in place. */
static void out_mlp_fwd(Model *m, const LayerWeights *w, int R) {
    Decoder d = {.m = m, .linear = infer_linear, .ctx = m};
    DecoderMLP o = {.att = m->att,
                    .x_in = m->x,
                    .x_mid = m->x,
                    .xn = m->xb,
                    .gate = m->hb,
                    .up = m->hb2,
                    .act = m->hb,
                    .tmp = m->xb2,
                    .x_out = m->x};
    decoder_out_mlp(&d, (int)(w - m->layers), R, &o);
}

/* One chunk of T <= act_T tokens: ids, or with emb (T, C host) those input embeddings. */
static void forward_chunk_in(Model *m, const int32_t *ids, const float *emb, int T, float *logits,
                             int all_logits) {
    const ModelConfig *c = &m->cfg;
    Backend *be = m->be;
    const BackendOps *op = be->ops;
    int C = c->C, KD = c->KVH * c->HS;
    int p0 = m->n_past, Tk = p0 + T;

    if (emb)
        op->upload(be, m->x, emb, sizeof(float) * (size_t)T * C);
    else
        model_embed(m, m->x, ids, T);
    if (c->learned_pos) op->add_fwd(be, m->x, m->x, m->wpe + (size_t)p0 * C, (size_t)T * C);
    for (int t = 0; t < T; t++)
        m->pos[t] = p0 + t;

    for (int l = 0; l < c->L; l++) {
        const LayerWeights *w = &m->layers[l];
        size_t base = slot_layer_off(m, l, m->slot), at = base + (size_t)p0 * KD;
        if (m->kv_type != WT_F32) { /* the new keys and values stored in the cache's type */
            qkv_fwd(m, w, T, m->k_new, m->v_new);
            kv_store(m, m->k_cache, at, m->k_new, (size_t)T * KD);
            kv_store(m, m->v_cache, at, m->v_new, (size_t)T * KD);
        } else /* straight into the cache */
            qkv_fwd(m, w, T, kv_at(m, m->k_cache, at), kv_at(m, m->v_cache, at));
        kv_attention(m, m->att, m->q, base, T, Tk);
        out_mlp_fwd(m, w, T);
    }
    if (!logits && !all_logits) {
        m->n_past = Tk;
        return;
    }
    int R = all_logits ? T : 1;
    const float *xin = m->x + (size_t)(T - R) * C;
    norm_rows(m, m->xb, xin, m->lnf_w, m->lnf_b, R);
    model_head(m, m->logits, m->xb, R);
    if (logits) op->download(be, logits, m->logits, sizeof(float) * (size_t)R * c->V);
    m->n_past = Tk;
}

static void forward_chunk(Model *m, const int32_t *ids, int T, float *logits, int all_logits) {
    forward_chunk_in(m, ids, NULL, T, logits, all_logits);
}

int model_set_prompt(Model *m, const float *emb, int P, TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    int rc = model_set_prefix(m, NULL, 0, err);
    if (rc || !P) return rc;
    if (P < 0 || P > 4096) return tuna_errf(err, TUNA_EINVAL, "%d virtual tokens", P);
    if ((rc = model_reserve(m, P, P, err))) return rc;
    if (m->cache_T < P)
        return tuna_errf(err, TUNA_EINVAL, "%d virtual tokens exceed the model's %d positions", P,
                         m->cache_T);
    forward_chunk_in(m, NULL, emb, P, NULL, 0); /* their keys and values into the cache */
    size_t KD = (size_t)c->KVH * c->HS, PW = (size_t)c->L * 2 * KD;
    float *pre = xmalloc(sizeof(float) * (size_t)P * PW);
    for (int l = 0; l < c->L; l++)
        for (int p = 0; p < P; p++) {
            size_t at = slot_layer_off(m, l, 0) + (size_t)p * KD;
            float *dst = pre + (size_t)p * PW + (size_t)l * 2 * KD;
            kv_download(m, dst, m->k_cache, at, KD);
            kv_download(m, dst + KD, m->v_cache, at, KD);
        }
    rc = m->be->ops->sync(m->be);
    if (rc)
        rc = tuna_errf(err, rc, "%s", m->be->err.msg);
    else
        rc = model_set_prefix(m, pre, P, err);
    free(pre);
    return rc;
}

int model_forward(Model *m, const int32_t *ids, int T, float *logits, int all_logits,
                  TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    if (!m->cache_T) return tuna_errf(err, TUNA_EINVAL, "model_forward: call model_reserve first");
    if (T <= 0) return tuna_errf(err, TUNA_EINVAL, "model_forward: no tokens");
    if (m->n_past + T > m->cache_T)
        return tuna_errf(err, TUNA_EINVAL,
                         "sequence of %d tokens does not fit the context of %d positions",
                         m->n_past + T, m->cache_T);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= c->V)
            return tuna_errf(err, TUNA_EINVAL,
                             "token id %d at position %d is outside the vocabulary (%d)", ids[t],
                             m->n_past + t, c->V);
    for (int done = 0; done < T;) {
        int n = T - done < m->act_T ? T - done : m->act_T;
        int last = done + n == T;
        float *dst = all_logits ? (logits ? logits + (size_t)done * c->V : NULL)
                                : (last ? logits : NULL);
        forward_chunk(m, ids + done, n, dst, all_logits);
        done += n;
    }
    int rc = m->be->ops->sync(m->be);
    if (rc) return tuna_errf(err, rc, "%s", m->be->err.msg);
    return 0;
}

/* One token for each of n slots (see model.h). Row r of every activation buffer is sequence r;
 * the per-token ops (norms, RoPE, attention, elementwise) run on each row as model_forward would,
 * and the matrix products take all n rows at once. */
int model_decode_slots(Model *m, int n, const int *slots, const int32_t *ids, float *logits,
                       TunaErr *err) {
    const ModelConfig *c = &m->cfg;
    Backend *be = m->be;
    const BackendOps *op = be->ops;
    if (!m->n_slots)
        return tuna_errf(err, TUNA_EINVAL, "model_decode_slots: call model_reserve_slots first");
    if (n < 1 || n > m->act_T || n > m->n_slots)
        return tuna_errf(err, TUNA_EINVAL, "model_decode_slots: %d sequences for %d slots", n,
                         m->n_slots);
    m->slot_past[m->slot] = m->n_past;
    for (int r = 0; r < n; r++) {
        int s = slots[r];
        if (s < 0 || s >= m->n_slots)
            return tuna_errf(err, TUNA_EINVAL, "model_decode_slots: no slot %d", s);
        for (int q = 0; q < r; q++)
            if (slots[q] == s)
                return tuna_errf(err, TUNA_EINVAL, "model_decode_slots: slot %d twice", s);
        if (ids[r] < 0 || ids[r] >= c->V)
            return tuna_errf(err, TUNA_EINVAL, "token id %d is outside the vocabulary (%d)", ids[r],
                             c->V);
        if (m->slot_past[s] >= m->cache_T)
            return tuna_errf(err, TUNA_EINVAL,
                             "sequence in slot %d fills the context of %d positions", s,
                             m->cache_T);
        m->pos[r] = m->slot_past[s];
    }
    int C = c->C, HS = c->HS, NH = c->NH, KVH = c->KVH, QD = NH * HS, KD = KVH * HS;
    model_embed(m, m->x, ids, n);
    if (c->learned_pos)
        for (int r = 0; r < n; r++)
            op->add_fwd(be, m->x + (size_t)r * C, m->x + (size_t)r * C,
                        m->wpe + (size_t)m->pos[r] * C, (size_t)C);
    for (int l = 0; l < c->L; l++) {
        const LayerWeights *w = &m->layers[l];
        qkv_fwd(m, w, n, m->k_new, m->v_new);
        for (int r = 0; r < n; r++) {
            size_t base = slot_layer_off(m, l, slots[r]), at = base + (size_t)m->pos[r] * KD;
            kv_store(m, m->k_cache, at, m->k_new + (size_t)r * KD, (size_t)KD);
            kv_store(m, m->v_cache, at, m->v_new + (size_t)r * KD, (size_t)KD);
            kv_attention(m, m->att + (size_t)r * QD, m->q + (size_t)r * QD, base, 1, m->pos[r] + 1);
        }
        out_mlp_fwd(m, w, n);
    }
    norm_rows(m, m->xb, m->x, m->lnf_w, m->lnf_b, n);
    model_head(m, m->logits, m->xb, n);
    op->download(be, logits, m->logits, sizeof(float) * (size_t)n * c->V);
    for (int r = 0; r < n; r++)
        m->slot_past[slots[r]]++;
    m->n_past = m->slot_past[m->slot];
    int rc = op->sync(be);
    if (rc) return tuna_errf(err, rc, "%s", be->err.msg);
    return 0;
}
