#include "model_train.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "pissa.h"
#include "prompt_tuning.h"
#include "rng.h"
#include "xalloc.h"

// --- LoRA sites: the linear layers an adapter can sit on

typedef enum {
    SITE_Q,
    SITE_K,
    SITE_V,
    SITE_QKV,
    SITE_O,
    SITE_GATE,
    SITE_UP,
    SITE_DOWN,
    N_SITES
} Site;

typedef struct LoraMod {
    int layer, site;
    int in, out;  /* out = 3C for GPT-2's fused c_attn */
    float *A, *B; // (r, in), (out, r)
    float *dA, *dB;
    float *h; // (N, in) the dropped-out input, NULL when dropout is 0
    float *u; // (N, r) s · h · Aᵀ, the LoRA scale s folded in on the rank side
    /* DoRA: the magnitude (out) and its grad, in the adapter block after B; on the host, the
     * step's row norms ||W + s·B·A|| (detached) and g = magnitude / norm; in backend memory g
     * and, with dropout, g - 1 (slices of TrainState.dora_g) */
    float *mag, *dmag;
    double *wn, *wsq; /* wsq: ||W[o,:]||², once (the base is frozen) */
    float *g;
    float *g_dev, *gm1_dev;
    /* DoRA with checkpointing: z = W·h + s·B·A·h of the layer last run (the forward, then each
     * recompute), (N, out), kept for dora_bwd instead of its base product; every site's but
     * the down projection's (the recompute stops before it). Aliased as h and u are. */
    float *zk;
    /* with checkpointing, h and u of the layers after the first alias the first layer's
     * module at the same site: only the layer being recomputed needs them */
} LoraMod;

/* One layer's activations. With checkpointing every layer has its own x_in and all layers
 * share the rest (one layer's worth, filled again by the recompute in the backward). */
typedef struct LayerActs {
    float *x_in;              // (N, C) residual stream into the layer
    float *xn1, *x_mid, *xn2; // (N, C)
    float *qraw, *kraw;       // (N, QD), (N, KD) before q/k norm (Qwen3 only)
    float *q, *k, *v;         // (N, QD), (N, KD), (N, KD) as attention sees them
    float *att;               // (N, QD)
    float *gate, *up, *act;   // (N, FF)
} LayerActs;

struct TrainState {
    Model *m;
    Backend *be;
    TrainSetup setup;
    int B, T;
    int T_cap; /* the T the buffers are sized for; T (train_set_seq_len) is at most this */
    size_t N;  /* B*T_cap */
    // full / freeze: gradients of params[g0, g1)
    float *grads;
    size_t g0, g1;
    /* the trained matrices' gradients (by address): train_zero_grad leaves them pending, and a
     * step's first write of each overwrites it (lazy_take) */
    struct LazyGrad {
        float *g;
        size_t n;
        int layer, pending;
        double ss; /* Σ g², valid when ss_ok: since the step's overwrite, nothing else wrote g */
        int ss_ok;
    } * lazy;
    int n_lazy;
    // lora
    float *ad, *ad_grad;
    size_t n_ad;
    LoraMod *mods;
    int n_mods;
    int (*site_mod)[N_SITES]; /* (L, N_SITES) index into mods or -1 */
    const float *(*view_A)[LORA_N_SITES], *(*view_B)[LORA_N_SITES]; /* train_lora_view's */
    const float *(*view_G)[LORA_N_SITES];                           /* and DoRA's g */
    float lora_scale;
    /* DoRA: backend (N, widest module output) scratch for the recomputed pre-scale output and
     * the scaled output gradient; with LoRA dropout also (g - 1) ⊙ dy, the gradient of the
     * dropped-out base product (dora_dy2); every module's g (and g - 1) in dora_g; a host
     * scratch for dora_norms' chunks (dora_h1) */
    float *dora_z, *dora_dy, *dora_dy2, *dora_g, *dora_h1;
    size_t dora_cap; /* floats of dora_z and dora_h1 (dora_norms' products too): dora_cap_of */
    char targets[256];
    /* LoRA + trainable tokens (PEFT TrainableTokens): the values of n_tok embedding rows
     * (n_tok, C) replace those rows of wte (and so of a tied LM head) */
    int n_tok;
    int32_t *tok_idx;
    float *tok_val, *tok_grad;
    // trainable list
    TrainParam *tp;
    int n_tp;
    size_t n_trainable;
    // activations
    int ckpt;        /* gradient checkpointing: see LayerActs */
    int recompute;   /* layer_bwd is running a checkpointed layer's forward again */
    LayerActs *acts; /* (L) */
    float *x_L, *xnf, *logits;
    float *act_block;
    size_t act_bytes; /* act_block plus the LoRA h and u buffers */
    // scratch
    float *dx, *dxn, *dq, *dk, *dv, *datt, *dgate, *dup, *dact, *tmp, *dys, *du, *dh;
    float *losses;                     /* (N) host */
    int32_t *head_rows, *head_targets; /* (N) host: the positions that have a target, and it */
    int32_t *pos;                      /* (N) host */
    int32_t *kv_lo;                    /* (N) host: train_set_spans' first keys */
    int spans;                         /* kv_lo is in force (neat packing) */
    uint64_t step_seed;
    int micro;     /* the micro-batch of the step (train_set_micro_batch) */
    float *pissa0; /* PiSSA: the adapter tensors at init (host, laid out as ad), or NULL */
    /* train_step_rows: its callback and context (NULL: forward only), and the rows' (B) sums of
     * target log-probs, target counts and gradient scales, host */
    int rows_on;
    TrainRowFn row_fn;
    TrainHiddenFn hidden_fn; /* train_step_hidden: the caller's head instead of the LM head */
    TrainGradFn grad_fn;     /* train_set_grad_hook's, or NULL */
    void *grad_ctx;
    void *hidden_ctx;
    void *row_ctx;
    double *row_logp;
    int *row_n;
    float *row_scale;
    /* train_set_logit_stats: each target row's logit_stats (N x 3, host), and their sums per
     * row of the batch (B x 4: mean logit, entropy, is_top1, the count); allocated when first
     * turned on, kept while off (stats_on 0) */
    float *head_stats;
    double *row_stat;
    int stats_on;
    // P-tuning: P virtual tokens; pre (P, L*2*KD) the prefix, built on the host each step
    int P;
    size_t PW;                                /* L*2*KD */
    float *pre, *pre_grad;                    /* host (P, PW) */
    float *pre_dev, *pre_grad_dev;            /* backend copies */
    float *p_emb, *p_w1, *p_b1, *p_w2, *p_b2; /* params (backend): E (P,PW) or the MLP */
    float *g_emb, *g_w1, *g_b1, *g_w2, *g_b2; /* their grads */
    float *p_h;                               /* host (P, H) tanh activations */
    float *dkf, *dvf; /* (B, P+T, KD) attention grads incl. the prefix rows */
    int pre_frozen;   /* METHOD_NONE over a model with a prefix installed: pre is the model's */
    /* prompt tuning, P-tuning v1: VT virtual tokens open every row, and T counts them (the
     * caller's rows are T - VT long); the encoder's parameters are ad (ad_grad their grads) */
    int VT;
    PromptEnc enc;
    float *vt_dev;          /* (VT, C) backend: the virtual token embeddings of this step */
    float *vt_grad, *enc_g; /* host (VT, C) their gradient, (n_ad) the encoder's */
    float *vt_dx;           /* host (VT, C) one row's share of vt_grad */
    int32_t *x_ids, *x_tg;  /* host (B, T): the rows with the virtual tokens' slots */
};

static const char *site_hf(const ModelConfig *c, int site) {
    int g = c->arch == ARCH_GPT2;
    switch (site) {
    case SITE_Q: return "q_proj";
    case SITE_K: return "k_proj";
    case SITE_V: return "v_proj";
    case SITE_QKV: return "c_attn";
    case SITE_O: return g ? "c_proj" : "o_proj";
    case SITE_GATE: return "gate_proj";
    case SITE_UP: return g ? "c_fc" : "up_proj";
    case SITE_DOWN: return g ? "c_proj" : "down_proj";
    }
    return "?";
}

/* HF module path of a site in layer l, e.g. model.layers.3.self_attn.q_proj */
static void site_path(const Model *m, int l, int site, char *buf, size_t cap) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == ARCH_GPT2) {
        const char *pre = !strncmp(m->pinfo[0].name, "transformer.", 12) ? "transformer." : "";
        const char *blk = site == SITE_QKV || site == SITE_O ? "attn" : "mlp";
        snprintf(buf, cap, "%sh.%d.%s.%s", pre, l, blk, site_hf(c, site));
    } else {
        const char *blk = site <= SITE_O ? "self_attn" : "mlp";
        snprintf(buf, cap, "model.layers.%d.%s.%s", l, blk, site_hf(c, site));
    }
}

/* Which sites a target list selects. "all" = every linear layer of the architecture. */
static int parse_targets(const ModelConfig *c, const char *list, int want[N_SITES], char *norm,
                         size_t cap, TunaErr *err) {
    memset(want, 0, sizeof(int) * N_SITES);
    int g = c->arch == ARCH_GPT2;
    if (!list || !*list) list = g ? "c_attn" : "q_proj,v_proj"; /* PEFT's defaults */
    if (!strcmp(list, "all"))
        list = g ? "c_attn,c_proj,c_fc" : "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    snprintf(norm, cap, "%s", list);
    char *dup = xstrdup(list), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        int hit = 0;
        for (int s = 0; s < N_SITES; s++) {
            if (g ? (s == SITE_Q || s == SITE_K || s == SITE_V || s == SITE_GATE) : s == SITE_QKV)
                continue;
            if (!strcmp(t, site_hf(c, s))) {
                want[s] = 1;
                hit = 1;
            }
        }
        if (!hit) {
            tuna_errf(err, TUNA_EINVAL,
                      "--lora-target: \"%s\" is not a linear layer of %s (use %s, or all)", t,
                      config_arch_name(c->arch),
                      g ? "c_attn, c_proj, c_fc"
                        : "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
            free(dup);
            return TUNA_EINVAL;
        }
    }
    free(dup);
    return 0;
}

static void site_dims(const ModelConfig *c, int site, int *in, int *out) {
    int QD = c->NH * c->HS, KD = c->KVH * c->HS;
    switch (site) {
    case SITE_Q:
        *in = c->C;
        *out = QD;
        break;
    case SITE_K:
    case SITE_V:
        *in = c->C;
        *out = KD;
        break;
    case SITE_QKV:
        *in = c->C;
        *out = QD + 2 * KD;
        break;
    case SITE_O:
        *in = QD;
        *out = c->C;
        break;
    case SITE_GATE:
    case SITE_UP:
        *in = c->C;
        *out = c->FF;
        break;
    default:
        *in = c->FF;
        *out = c->C;
        break;
    }
}

// --- setup

/* n rounded up to 16 floats (64 bytes). */
static size_t pad16(size_t n) {
    return (n + 15) & ~(size_t)15;
}

/* Bytes of one balloc of n floats. */
static size_t bsize(size_t n) {
    return (n ? n : 1) * sizeof(float);
}

/* DoRA's dora_z scratch (and its host twin dora_h1), in floats: the (N, widest output)
 * recomputed product, or dora_norms' A·Wᵀ (r, out), B·A·Aᵀ (out, r) and A·Aᵀ (r, r) (on the
 * host A·Wᵀ, B·A·Aᵀ and B) */
static size_t dora_cap_of(size_t N, int widest, int r) {
    size_t z = N * (size_t)widest, norms = 3 * (size_t)r * (size_t)widest + (size_t)r * (size_t)r;
    return z > norms ? z : norms;
}

/* Rows of logits the head computes at once. The (R, V) logits of a long batch would be the
 * biggest activation of all (Qwen2.5's 151936 columns: 311 MB for 512 rows, more than its
 * 4-bit layers' share of a QLoRA run), so the head runs a chunk of rows at a time with its
 * backward right after: up to 64 MiB of logits, at least 64 rows for the GEMM, the chunks of
 * a batch as even as whole steps of 16 rows make them. Each chunk reads the whole head again
 * (with a trained head, its gradient too): at 32 MiB, GPT-2's 256 rows ran as 166 + 90, and
 * one chunk was 9.5% faster a --bf16 step (5% in fp32); SmolLM2's 512 rows as 341 + 171,
 * and 256 + 256 was 5.5% faster a LoRA step. */
static size_t head_chunk(size_t N, size_t V) {
    size_t r = ((size_t)16 << 20) / (V ? V : 1);
    if (r < 64) r = 64;
    if (r < N) { /* n chunks of about equal rows */
        size_t n = (N + r - 1) / r, e = ((N + n - 1) / n + 15) / 16 * 16;
        if (e < r) r = e;
    }
    /* tests force a few rows to run many chunks on the tiny models */
    const char *e = getenv("TUNA_HEAD_ROWS");
    if (e && atoi(e) > 0) r = (size_t)atoi(e);
    return r < N ? r : N;
}

/* The activation block (init_activations): per layer with a set of its own 3 rows of C,
 * q and att, k and v with the prefix rows, gate/up/act, and q/k before their norms (Qwen3); the
 * layer inputs, the final norm's input and output and the logits. In floats, each buffer
 * padded to 64 bytes. */
typedef struct ActPlan {
    size_t kvn;       /* k and v of one layer, with the prefix rows */
    size_t per_layer; /* one layer's set but x_in */
    size_t n_full;    /* layers with a set of their own (1 with checkpointing) */
    size_t total;
} ActPlan;

static ActPlan act_plan(const ModelConfig *c, int B, int T, int P, int ckpt) {
    size_t N = (size_t)B * T, C = (size_t)c->C, QD = (size_t)c->NH * c->HS,
           KD = (size_t)c->KVH * c->HS, FF = (size_t)c->FF, V = (size_t)c->V;
    ActPlan a;
    a.kvn = (size_t)B * (size_t)(T + P) * KD;
    a.per_layer = pad16(N * C) * 3 + pad16(N * QD) * 2 + pad16(a.kvn) * 2 + pad16(N * FF) * 3 +
                  (c->qk_norm ? pad16(N * QD) + pad16(N * KD) : 0);
    a.n_full = ckpt ? 1 : (size_t)c->L;
    a.total = pad16(N * C) * ((size_t)c->L + 2) + a.per_layer * a.n_full +
              pad16(head_chunk(N, V) * V);
    return a;
}

/* The backward's scratch (init_scratch), in floats and in allocation order: dx, dxn, dq, dk, dv,
 * datt, dgate, dup, dact, tmp, dys, du, dh. rank: LoRA's (1 otherwise). */
enum { N_SCRATCH = 13 };
static void scratch_plan(const ModelConfig *c, size_t N, int rank, size_t n[N_SCRATCH]) {
    size_t C = (size_t)c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS,
           FF = (size_t)c->FF;
    size_t mx = C > QD ? C : QD;
    if (FF > mx) mx = FF;
    size_t mx_out = mx > QD + 2 * KD ? mx : QD + 2 * KD;
    size_t plan[N_SCRATCH] = {N * C,      N * mx,           N * QD, N * KD, N * KD,
                              N * QD,     N * FF,           N * FF, N * FF, N * mx_out,
                              N * mx_out, N * (size_t)rank, N * mx};
    for (int i = 0; i < N_SCRATCH; i++)
        n[i] = plan[i];
}

/* The encoder of a prompt method: none (prompt tuning), the MLP or the LSTM (P-tuning v1). */
static PromptEncType prompt_enc_type(const TrainSetup *s) {
    if (s->method != METHOD_PTUNING_V1) return PROMPT_ENC_NONE;
    return s->prompt_lstm ? PROMPT_ENC_LSTM : PROMPT_ENC_MLP;
}

/* What train_state_init allocates: the activation block and the backward's scratch from the
 * plans both use (act_plan, scratch_plan); the method's own tensors (init_full, init_lora,
 * init_prefix) mirrored term by term. tests/test_estimate.c checks the two against each other
 * on every method and fixture model. */
int train_state_size(const ModelConfig *c, size_t n_params, size_t layer_params,
                     const TrainSetup *setup, int B, int T, TrainSizes *out, TunaErr *err) {
    memset(out, 0, sizeof *out);
    if (T > c->max_pos && c->learned_pos)
        return tuna_errf(err, TUNA_EINVAL, "cutoff %d exceeds the model's %d positions", T,
                         c->max_pos);
    int VT = 0;
    if (setup->method == METHOD_PROMPT || setup->method == METHOD_PTUNING_V1) {
        VT = setup->prefix_tokens;
        if (VT < 1 || VT > 1024)
            return tuna_errf(err, TUNA_EINVAL, "--prefix-tokens must be in [1, 1024], got %d", VT);
        T += VT;
        if (T > c->max_pos && c->learned_pos)
            return tuna_errf(err, TUNA_EINVAL,
                             "cutoff %d and %d virtual tokens exceed the model's %d positions",
                             T - VT, VT, c->max_pos);
    }
    size_t N = (size_t)B * T, C = (size_t)c->C, KD = (size_t)c->KVH * c->HS;
    int ckpt = setup->grad_checkpoint != 0, P = 0;
    size_t lora_act = 0;
    if (setup->method == METHOD_FULL || setup->method == METHOD_FREEZE) {
        size_t n = n_params;
        if (setup->method == METHOD_FREEZE) {
            int nl = setup->freeze_layers;
            if (nl < 1 || nl > c->L)
                return tuna_errf(err, TUNA_EINVAL, "--freeze-layers must be in [1, %d], got %d",
                                 c->L, nl);
            n = (size_t)nl * layer_params; /* the layers lie one after another in params */
        }
        out->trainable = n;
        out->grad_bytes = bsize(n); /* the layers' range, freeze_trainable_modules or not */
        const char *mods = setup->method == METHOD_FREEZE ? setup->freeze_modules : NULL;
        if (mods && *mods && strcmp(mods, "all"))
            out->trainable = (size_t)setup->freeze_layers * model_param_count_modules(c, mods);
    } else if (setup->method == METHOD_LORA) {
        int want[N_SITES];
        char norm[256];
        int rc = parse_targets(c, setup->lora_targets, want, norm, sizeof norm, err);
        if (rc) return rc;
        int r = setup->lora_rank;
        if (r < 1 || r > 4096)
            return tuna_errf(err, TUNA_EINVAL, "--lora-rank must be in [1, 4096], got %d", r);
        size_t total = 0;
        for (int s = 0; s < N_SITES; s++) {
            if (!want[s]) continue;
            int in, o;
            site_dims(c, s, &in, &o);
            total += (size_t)c->L * ((size_t)r * (size_t)(in + o) + (setup->lora_dora ? o : 0));
            out->lora_modules += c->L;
            /* h and u: every layer's, or with checkpointing the first layer's only (and DoRA's
             * z then, but at the down projection) */
            size_t per = (setup->lora_dropout > 0 ? N * (size_t)in : 0) + N * (size_t)r;
            if (ckpt && setup->lora_dora && s != SITE_DOWN) per += N * (size_t)o;
            lora_act += per * (ckpt ? 1 : (size_t)c->L) * sizeof(float);
        }
        out->trainable = total;
        out->param_bytes = bsize(total);
        out->grad_bytes = bsize(total);
        if (setup->lora_dora) { /* dora_z, dora_dy (and dora_dy2 with dropout), dora_g */
            int widest = 0;
            size_t outs = 0;
            for (int s2 = 0; s2 < N_SITES; s2++) {
                int in, o;
                site_dims(c, s2, &in, &o);
                if (want[s2] && o > widest) widest = o;
                if (want[s2]) outs += (size_t)c->L * (size_t)o;
            }
            int drop = setup->lora_dropout > 0;
            out->scratch_bytes += bsize(dora_cap_of(N, widest, r));
            out->scratch_bytes += (drop ? 2 : 1) * bsize(N * (size_t)widest);
            out->scratch_bytes += bsize((drop ? 2 : 1) * outs);
        }
        int n_tok = 0; /* trainable tokens: one embedding row each */
        for (const char *q = setup->lora_tokens; q && *q; q++)
            if (*q != ',' && (q == setup->lora_tokens || q[-1] == ',')) n_tok++;
        if (n_tok) {
            size_t n = (size_t)n_tok * C;
            out->trainable += n;
            out->param_bytes += bsize(n);
            out->grad_bytes += bsize(n + (size_t)C); /* + tokens_grad_embed's sink row */
        }
    } else if (setup->method == METHOD_PTUNING) {
        int H = setup->prefix_hidden, pj = setup->prefix_projection != 0;
        P = setup->prefix_tokens;
        if (P < 1 || P > 1024)
            return tuna_errf(err, TUNA_EINVAL, "--prefix-tokens must be in [1, 1024], got %d", P);
        if (pj && (H < 1 || H > 65536))
            return tuna_errf(err, TUNA_EINVAL, "--prefix-hidden must be in [1, 65536], got %d", H);
        size_t PW = (size_t)c->L * 2 * KD, D = pj ? KD : PW;
        size_t total = (size_t)P * D + (pj ? (size_t)H * D + (size_t)H + PW * H + PW : 0);
        out->trainable = total;
        out->param_bytes = bsize(total);
        out->grad_bytes = bsize(total);
        out->scratch_bytes = bsize((size_t)P * PW) + 2 * bsize((size_t)B * (size_t)(P + T) * KD);
    } else if (VT) {
        PromptEnc e;
        if (prompt_enc_init(&e, prompt_enc_type(setup), VT, (int)C, setup->prefix_hidden,
                            setup->prompt_layers ? setup->prompt_layers : 2))
            return tuna_errf(err, TUNA_EINVAL,
                             "--prefix-hidden must be in [1, 65536] and the LSTM layers in [1, %d]",
                             PROMPT_ENC_MAX_LAYERS);
        out->trainable = e.n_params;
        out->param_bytes = bsize(e.n_params);
        out->grad_bytes = bsize(e.n_params);
        out->scratch_bytes = bsize((size_t)VT * C);
        prompt_enc_free(&e);
    }
    /* the activation block and the backward's scratch: the plans train_state_init allocates */
    ActPlan ap = act_plan(c, B, T, P, ckpt);
    out->act_bytes = ap.total * sizeof(float) + lora_act;
    size_t sn[N_SCRATCH];
    scratch_plan(c, N, setup->method == METHOD_LORA ? setup->lora_rank : 1, sn);
    for (int i = 0; i < N_SCRATCH; i++)
        out->scratch_bytes += bsize(sn[i]);
    return 0;
}

static float *balloc(TrainState *ts, size_t n, int *fail) {
    float *p = ts->be->ops->alloc(ts->be, (n ? n : 1) * sizeof(float));
    if (!p) *fail = 1;
    return p;
}

static void zero(TrainState *ts, float *p, size_t n) {
    ts->be->ops->zero(ts->be, p, n * sizeof(float));
}

static void add_tp(TrainState *ts, const char *name, float *data, float *grad, size_t n, int ndim,
                   int64_t d0, int64_t d1, int decay) {
    ts->tp = xrealloc(ts->tp, sizeof(TrainParam) * (size_t)(ts->n_tp + 1));
    TrainParam *p = &ts->tp[ts->n_tp++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->data = data;
    p->grad = grad;
    p->n = n;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->decay = decay;
    p->layer = -1; /* the callers that know better set it */
    ts->n_trainable += n;
}

/* First and one-past-last float of layer l's tensors in params. */
static void layer_range(const Model *m, int l, size_t *lo, size_t *hi) {
    char a[32], b[32];
    snprintf(a, sizeof a, "layers.%d.", l);
    snprintf(b, sizeof b, "h.%d.", l);
    *lo = (size_t)-1;
    *hi = 0;
    for (int i = 0; i < m->n_pinfo; i++) {
        const ParamInfo *p = &m->pinfo[i];
        if (!strstr(p->name, a) && strncmp(p->name, b, strlen(b)) && !strstr(p->name, b)) continue;
        /* "h.1." must not match "h.11.": check the digit boundary */
        const char *at = strstr(p->name, a) ? strstr(p->name, a) : strstr(p->name, b);
        if (at != p->name && at[-1] != '.') continue;
        if (p->off < *lo) *lo = p->off;
        if (p->off + p->n > *hi) *hi = p->off + p->n;
    }
}

/* Trainable tokens: parse the id list, start the values from the base rows (as PEFT does). */
static int tokens_init(TrainState *ts, const char *list, TunaErr *err) {
    const Model *m = ts->m;
    int V = m->cfg.V, C = m->cfg.C;
    for (const char *q = list; *q;) {
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || (*end && *end != ',') || v < 0 || v >= V)
            return tuna_errf(err, TUNA_EINVAL,
                             "trainable tokens \"%s\": want token ids in [0, %d), comma-separated",
                             list, V);
        for (int j = 0; j < ts->n_tok; j++)
            if (ts->tok_idx[j] == (int32_t)v)
                return tuna_errf(err, TUNA_EINVAL, "trainable tokens \"%s\": id %ld twice", list,
                                 v);
        ts->tok_idx = xrealloc(ts->tok_idx, sizeof(int32_t) * (size_t)(ts->n_tok + 1));
        ts->tok_idx[ts->n_tok++] = (int32_t)v;
        q = *end ? end + 1 : end;
    }
    size_t n = (size_t)ts->n_tok * C;
    int fail = 0;
    ts->tok_val = balloc(ts, n, &fail);
    ts->tok_grad = balloc(ts, n + (size_t)C, &fail); /* + the sink row of tokens_grad_embed */
    if (fail) return tuna_errf(err, TUNA_ENOMEM, "cannot allocate the trainable token rows");
    for (int j = 0; j < ts->n_tok; j++)
        ts->be->ops->copy(ts->be, ts->tok_val + (size_t)j * C, m->wte + (size_t)ts->tok_idx[j] * C,
                          sizeof(float) * (size_t)C);
    char name[200];
    const char *emb =
            m->cfg.arch == ARCH_GPT2
                    ? (!strncmp(m->pinfo[0].name, "transformer.", 12) ? "transformer.wte" : "wte")
                    : "model.embed_tokens";
    snprintf(name, sizeof name, "base_model.model.%s.token_adapter.trainable_tokens_delta", emb);
    add_tp(ts, name, ts->tok_val, ts->tok_grad, n, 2, ts->n_tok, C, 1);
    return 0;
}

/* The trainable rows into wte (a tied LM head is the same memory). */
static void tokens_sync(TrainState *ts) {
    int C = ts->m->cfg.C;
    for (int j = 0; j < ts->n_tok; j++)
        ts->be->ops->copy(ts->be, ts->m->wte + (size_t)ts->tok_idx[j] * C,
                          ts->tok_val + (size_t)j * C, sizeof(float) * (size_t)C);
}

/* Gradient of the trainable rows through a tied LM head: dlogits[:, id]ᵀ · xnf. The few
 * columns and xnf come to the host through download, the rows' gradient goes back through
 * upload (n_tok is a handful of rows; no host loop reads backend memory). Same additions in
 * the same order as an in-place loop, so the result is bit-identical to one. */
static void tokens_grad_head(TrainState *ts, const float *dlogits, const float *xnf, int M) {
    const Model *m = ts->m;
    if (m->lm_head != m->wte || !m->wte || M <= 0) return;
    const BackendOps *op = ts->be->ops;
    int C = m->cfg.C, V = m->cfg.V;
    size_t n = (size_t)ts->n_tok * C;
    float *x = xmalloc(sizeof(float) * (size_t)M * C), *d = xmalloc(sizeof(float) * (size_t)M);
    float *g = xmalloc(sizeof(float) * n);
    op->download(ts->be, x, xnf, sizeof(float) * (size_t)M * C);
    op->download(ts->be, g, ts->tok_grad, sizeof(float) * n);
    for (int j = 0; j < ts->n_tok; j++) {
        size_t col = (size_t)ts->tok_idx[j];
        for (int r = 0; r < M; r++)
            op->download(ts->be, d + r, dlogits + (size_t)r * V + col, sizeof(float));
        float *gj = g + (size_t)j * C;
        for (int r = 0; r < M; r++) {
            if (d[r] == 0.0f) continue;
            const float *xr = x + (size_t)r * C;
            for (int k = 0; k < C; k++)
                gj[k] += d[r] * xr[k];
        }
    }
    op->upload(ts->be, ts->tok_grad, g, sizeof(float) * n);
    free(x);
    free(d);
    free(g);
}

/* Gradient of the trainable rows through the embedding lookup: the residual gradient of every
 * position holding the id, by the backend's embed_bwd over ids mapped to the rows (other
 * positions to the sink row after them, which nothing reads). */
static void tokens_grad_embed(TrainState *ts, const float *dx, const int32_t *ids, int M) {
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)(M > 0 ? M : 1));
    for (int t = 0; t < M; t++) {
        map[t] = ts->n_tok;
        for (int j = 0; j < ts->n_tok; j++)
            if (ids[t] == ts->tok_idx[j]) map[t] = j;
    }
    ts->be->ops->embed_bwd(ts->be, ts->tok_grad, dx, map, M, ts->m->cfg.C);
    free(map);
}

/* Each part of train_state_init returns 0, TS_NOMEM when an allocation failed (the caller
 * says it in one line), or a TunaErr code already set. */
#define TS_NOMEM (-1)

/* full / freeze: the gradient block over the trained weights (all, or the last layers). */
/* Every module named must be one of layer 0's (the word after ".0." in its parameters' names),
 * as LLaMA-Factory checks freeze_trainable_modules. */
static int check_freeze_modules(const Model *m, const char *mods, TunaErr *err) {
    char have[256] = "";
    for (int i = 0; i < m->n_pinfo; i++) {
        const char *at = strstr(m->pinfo[i].name, ".0.");
        if (!at) continue;
        char word[64];
        snprintf(word, sizeof word, "%.*s", (int)strcspn(at + 3, "."), at + 3);
        char key[70];
        snprintf(key, sizeof key, ",%s,", word);
        char hay[260];
        snprintf(hay, sizeof hay, ",%s,", have);
        if (strstr(hay, key)) continue;
        size_t len = strlen(have);
        snprintf(have + len, sizeof have - len, "%s%s", len ? "," : "", word);
    }
    for (const char *q = mods; *q;) {
        size_t n = strcspn(q, ",");
        char key[70], hay[260];
        snprintf(key, sizeof key, ",%.*s,", (int)(n < 64 ? n : 64), q);
        snprintf(hay, sizeof hay, ",%s,", have);
        if (!n || !strstr(hay, key))
            return tuna_errf(err, TUNA_EINVAL,
                             "--freeze-trainable-modules: \"%.*s\" is not a module of this "
                             "model's layers (%s, or all)",
                             (int)n, q, have);
        q += n + (q[n] == ',');
    }
    return 0;
}

static int init_full(TrainState *ts, TunaErr *err) {
    const Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    int fail = 0;
    if (m->n_qbytes && ts->setup.method == METHOD_FULL)
        return tuna_errf(err, TUNA_EUNSUP,
                         "full fine-tuning of a quantized base: every weight trains in fp32; "
                         "load it without quantization, or use lora, ptuning or freeze");
    ts->g0 = 0;
    ts->g1 = m->n_params;
    if (ts->setup.method == METHOD_FREEZE) {
        int nl = ts->setup.freeze_layers;
        if (nl < 1 || nl > c->L)
            return tuna_errf(err, TUNA_EINVAL, "--freeze-layers must be in [1, %d], got %d", c->L,
                             nl);
        size_t lo, hi, lo2, hi2;
        layer_range(m, c->L - nl, &lo, &hi);
        layer_range(m, c->L - 1, &lo2, &hi2);
        ts->g0 = lo;
        ts->g1 = hi2;
    }
    ts->grads = balloc(ts, ts->g1 - ts->g0, &fail);
    if (fail) return TS_NOMEM;
    size_t *lo = xmalloc(sizeof(size_t) * 2 * (size_t)c->L), *hi = lo + c->L;
    for (int l = 0; l < c->L; l++)
        layer_range(m, l, &lo[l], &hi[l]);
    const char *mods = ts->setup.method == METHOD_FREEZE ? ts->setup.freeze_modules : NULL;
    if (mods && (!*mods || !strcmp(mods, "all"))) mods = NULL;
    int rc = mods ? check_freeze_modules(m, mods, err) : 0;
    for (int i = 0; !rc && i < m->n_pinfo; i++) {
        const ParamInfo *p = &m->pinfo[i];
        if (p->off < ts->g0 || p->off + p->n > ts->g1) continue;
        int layer = -1;
        for (int l = 0; l < c->L; l++)
            if (p->off >= lo[l] && p->off + p->n <= hi[l]) layer = l;
        /* freeze_trainable_modules: the others keep their gradient buffer (the backward writes
         * it) but are not trained, clipped or saved */
        if (mods && !model_param_in_modules(p->name, layer, mods)) continue;
        add_tp(ts, p->name, m->params + p->off, ts->grads + (p->off - ts->g0), p->n, p->ndim,
               p->shape[0], p->shape[1], p->ndim == 2);
        ts->tp[ts->n_tp - 1].layer = layer;
    }
    free(lo);
    return rc;
}

/* The trained matrices that the products read: each trained layer's linear weights, and the
 * head when it trains (not the token and position tables as such); fn(ts, p, rows, cols, layer,
 * arg) for each (layer -1: the head) */
typedef void (*MatFn)(TrainState *ts, const float *p, int rows, int cols, int layer, int arg);

/* rows x cols of a layer's weight at LoraSite k (layer_site_weight): its product's out x in */
static void lora_site_shape(const ModelConfig *c, int k, int *rows, int *cols) {
    int Q = c->NH * c->HS, KV = c->KVH * c->HS;
    *rows = k == LORA_Q                      ? Q
            : k == LORA_K || k == LORA_V     ? KV
            : k == LORA_GATE || k == LORA_UP ? c->FF
                                             : c->C;
    *cols = k == LORA_O ? Q : k == LORA_DOWN ? c->FF : c->C;
}

static void trained_matrices(TrainState *ts, MatFn fn, int arg) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    const float *lo = m->params + ts->g0, *hi = m->params + ts->g1;
    for (int l = 0; l <= c->L; l++)
        for (int k = 0; k < (l < c->L ? LORA_N_SITES : 1); k++) {
            int rows = c->V, cols = c->C; /* past the layers: the head */
            const float *p = m->lm_head;
            if (l < c->L) {
                p = *layer_site_weight(&m->layers[l], (LoraSite)k);
                lora_site_shape(c, k, &rows, &cols);
            }
            if (p && p >= lo && p + (size_t)rows * cols <= hi)
                fn(ts, p, rows, cols, l < c->L ? l : -1, arg);
        }
}

static void track_one(TrainState *ts, const float *p, int rows, int cols, int layer, int on) {
    (void)layer;
    ts->be->ops->weight_track(ts->be, p, on ? rows : 0, cols);
}

void train_track_weights(TrainState *ts, int on) {
    int full = ts->setup.method == METHOD_FULL || ts->setup.method == METHOD_FREEZE;
    if (ts->be->ops->weight_track && full && ts->grads) trained_matrices(ts, track_one, on);
}

static float *G(const TrainState *ts, const float *p);

static void lazy_add(TrainState *ts, const float *p, int rows, int cols, int layer, int arg) {
    (void)arg;
    ts->lazy[ts->n_lazy++] =
            (struct LazyGrad){G(ts, p), (size_t)rows * (size_t)cols, layer, 0, 0, 0};
}

/* The lazily written gradients: the trained matrices', by address (full and freeze) */
static void lazy_init(TrainState *ts) {
    ts->lazy = xcalloc((size_t)ts->m->cfg.L * LORA_N_SITES + 1, sizeof *ts->lazy);
    trained_matrices(ts, lazy_add, 0);
    for (int i = 1; i < ts->n_lazy; i++)
        for (int j = i; j > 0 && ts->lazy[j].g < ts->lazy[j - 1].g; j--) {
            struct LazyGrad t = ts->lazy[j];
            ts->lazy[j] = ts->lazy[j - 1];
            ts->lazy[j - 1] = t;
        }
}

/* The model's linear layer (LoraSite) of an adapter site and slice of the fused c_attn. */
/* The adapter site of each of the model's linear layers (GPT-2's q, k, v: slices of SITE_QKV). */
static const Site site_of[LORA_N_SITES] = {
        [LORA_Q] = SITE_Q,       [LORA_K] = SITE_K,   [LORA_V] = SITE_V,      [LORA_O] = SITE_O,
        [LORA_GATE] = SITE_GATE, [LORA_UP] = SITE_UP, [LORA_DOWN] = SITE_DOWN};

/* The other way: the model's linear layer of an adapter site (and slice of the fused c_attn). */
static LoraSite base_site(int site, int slice) {
    if (site == SITE_QKV) return (LoraSite)(LORA_Q + slice);
    int k = 0;
    while (k + 1 < LORA_N_SITES && site_of[k] != (Site)site)
        k++;
    return (LoraSite)k;
}

/* A module's base weight as the model stores it: one matrix, or GPT-2's fused c_attn as the
 * three matrices q, k, v, each rows of the module's output from row0. An fp32 weight only
 * (W NULL where the layer is typed). */
typedef struct MergePart {
    float *W;
    int row0, rows;
} MergePart;

static int mod_parts(const Model *m, const LoraMod *lm, MergePart parts[3]) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[lm->layer];
    switch (lm->site) {
    case SITE_Q: parts[0] = (MergePart){w->wq, 0, lm->out}; return 1;
    case SITE_K: parts[0] = (MergePart){w->wk, 0, lm->out}; return 1;
    case SITE_V: parts[0] = (MergePart){w->wv, 0, lm->out}; return 1;
    case SITE_O: parts[0] = (MergePart){w->wo, 0, lm->out}; return 1;
    case SITE_GATE: parts[0] = (MergePart){w->w_gate, 0, lm->out}; return 1;
    case SITE_UP: parts[0] = (MergePart){w->w_up, 0, lm->out}; return 1;
    case SITE_DOWN: parts[0] = (MergePart){w->w_down, 0, lm->out}; return 1;
    default: {
        int QD = c->NH * c->HS, KD = c->KVH * c->HS;
        parts[0] = (MergePart){w->wq, 0, QD};
        parts[1] = (MergePart){w->wk, QD, KD};
        parts[2] = (MergePart){w->wv, QD + KD, KD};
        return 3;
    }
    }
}

/* The module's base weight (out x in) into host W, fp32: its parts downloaded, or dequantized
 * where the base is typed (a QLoRA, bf16 or GGUF base: the values the products use) */
static void mod_weight(const TrainState *ts, const LoraMod *lm, float *W) {
    Backend *be = ts->be;
    MergePart parts[3];
    int np = mod_parts(ts->m, lm, parts);
    for (int pi = 0; pi < np; pi++) {
        const Weight *q = ts->m->layers[lm->layer].qw[base_site(lm->site, pi)];
        float *dst = W + (size_t)parts[pi].row0 * lm->in;
        if (q)
            weight_download_f32(be, q, dst);
        else
            be->ops->download(be, dst, parts[pi].W,
                              sizeof(float) * (size_t)parts[pi].rows * lm->in);
    }
}

/* PiSSA: A and B (host, the module's slices) from the top-r SVD of the module's base weight,
 * and the base weight replaced by the residual (pissa.h), as PEFT's pissa_init. */
static int pissa_mod(TrainState *ts, const LoraMod *lm, float *A, float *B, TunaErr *err) {
    Backend *be = ts->be;
    MergePart parts[3];
    int np = mod_parts(ts->m, lm, parts);
    float *W = xmalloc(sizeof(float) * (size_t)lm->out * lm->in);
    for (int pi = 0; pi < np; pi++)
        be->ops->download(be, W + (size_t)parts[pi].row0 * lm->in, parts[pi].W,
                          sizeof(float) * (size_t)parts[pi].rows * lm->in);
    int rc = pissa_factor(W, lm->out, lm->in, ts->setup.lora_rank, ts->lora_scale, A, B, err);
    if (!rc)
        for (int pi = 0; pi < np; pi++)
            be->ops->upload(be, parts[pi].W, W + (size_t)parts[pi].row0 * lm->in,
                            sizeof(float) * (size_t)parts[pi].rows * lm->in);
    free(W);
    return rc;
}

/* DoRA: wn[o] = ||W[o,:] + s·(B·A)[o,:]|| over the module's output rows (peft's
 * get_weight_norm; no gradient flows here), expanded so that neither W nor B·A is formed:
 *   wn[o]² = ||W[o,:]||² + 2s·B[o,:]·(A·W[o,:]ᵀ) + s²·B[o,:]·(A·Aᵀ)·B[o,:]ᵀ,
 * ||W[o,:]||² once at init (lm->wsq, from the dequantized weight: the values the products
 * use, as peft dequantizes a bitsandbytes one), A·Wᵀ (r, out) by the base layer's own product
 * with A's rows as its input (a typed base's kernel, one pass over the weight), A·Aᵀ and
 * B·(A·Aᵀ) by the backend, all in fp32 (mm_bf16 off: a norm of the weights, whatever the
 * products' precision); the r-long dot products and the sum in double on the host. (Forming
 * B·A and the dequantized W every step wrote two module-sized matrices: 12% of a SmolLM2 DoRA
 * step.) */
static void dora_norms(TrainState *ts, const LoraMod *lm, double *wn) {
    Backend *be = ts->be;
    int r = ts->setup.lora_rank, in = lm->in, out = lm->out;
    double s = (double)ts->lora_scale;
    float *Q = ts->dora_z, *BG = Q + (size_t)r * out, *G = BG + (size_t)out * r;
    int mb = be->mm_bf16;
    be->mm_bf16 = 0;
    MergePart parts[3];
    int np = mod_parts(ts->m, lm, parts);
    for (int pi = 0; pi < np; pi++) /* part pi: (r, rows) from r·row0 */
        model_base_linear(ts->m, lm->layer, base_site(lm->site, pi), Q + (size_t)r * parts[pi].row0,
                          lm->A, parts[pi].W, NULL, r, in, parts[pi].rows);
    be->ops->matmul_fwd(be, G, lm->A, lm->A, NULL, r, in, r); /* G[k,l] = A[k,:]·A[l,:] */
    be->ops->matmul_fwd(be, BG, lm->B, G, NULL, out, r, r);   /* BG[o,l] = B[o,:]·G[l,:] */
    be->mm_bf16 = mb;
    float *hq = ts->dora_h1, *hbg = hq + (size_t)r * out, *hb = hbg + (size_t)out * r;
    be->ops->download(be, hq, Q, sizeof(float) * (size_t)r * out);
    be->ops->download(be, hbg, BG, sizeof(float) * (size_t)out * r);
    be->ops->download(be, hb, lm->B, sizeof(float) * (size_t)out * r);
    for (int pi = 0; pi < np; pi++) {
        const float *q = hq + (size_t)r * parts[pi].row0;
        for (int j = 0; j < parts[pi].rows; j++) {
            int o = parts[pi].row0 + j;
            const float *b = hb + (size_t)o * r, *bg = hbg + (size_t)o * r;
            double cross = 0, bgb = 0;
            for (int k = 0; k < r; k++) {
                cross += (double)b[k] * (double)q[(size_t)k * parts[pi].rows + j];
                bgb += (double)b[k] * (double)bg[k];
            }
            double sq = lm->wsq[o] + 2 * s * cross + s * s * bgb;
            wn[o] = sqrt(sq > 0 ? sq : 0);
        }
    }
}

/* DoRA, at the start of a module's forward: the row norms from the live A and B, and
 * g = magnitude / norm (host, and g_dev; gm1_dev = g - 1 with dropout). */
static void dora_prepare(TrainState *ts, LoraMod *lm) {
    Backend *be = ts->be;
    size_t bytes = sizeof(float) * (size_t)lm->out;
    dora_norms(ts, lm, lm->wn);
    be->ops->download(be, lm->g, lm->mag, bytes);
    for (int o = 0; o < lm->out; o++)
        lm->g[o] = (float)((double)lm->g[o] / lm->wn[o]);
    be->ops->upload(be, lm->g_dev, lm->g, bytes);
    if (lm->gm1_dev) {
        float *gm1 = ts->dora_h1; /* free between dora_norms' chunks */
        for (int o = 0; o < lm->out; o++)
            gm1[o] = lm->g[o] - 1.0f;
        be->ops->upload(be, lm->gm1_dev, gm1, bytes);
    }
}

/* LoRA: a module per (layer, targeted site), A and B initialised as PEFT does, their saved
 * activations, and the trainable token rows. */
static int init_lora(TrainState *ts, TunaErr *err) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    const TrainSetup *setup = &ts->setup;
    size_t N = ts->N;
    int fail = 0;
    int want[N_SITES];
    int rc = parse_targets(c, setup->lora_targets, want, ts->targets, sizeof ts->targets, err);
    if (rc) return rc;
    int r = setup->lora_rank;
    if (r < 1 || r > 4096)
        return tuna_errf(err, TUNA_EINVAL, "--lora-rank must be in [1, 4096], got %d", r);
    ts->lora_scale =
            setup->lora_rslora ? setup->lora_alpha / sqrtf((float)r) : setup->lora_alpha / (float)r;
    if (setup->lora_pissa && m->n_qbytes)
        return tuna_errf(err, TUNA_EUNSUP,
                         "PiSSA needs an fp32 base (as peft: init under fp32, then quantize the "
                         "residual); load the model without quantization or bf16");
    ts->site_mod = xmalloc(sizeof *ts->site_mod * (size_t)c->L);
    ts->mods = xcalloc((size_t)c->L * N_SITES, sizeof *ts->mods);
    size_t total = 0;
    for (int l = 0; l < c->L; l++)
        for (int s = 0; s < N_SITES; s++) {
            ts->site_mod[l][s] = -1;
            if (!want[s]) continue;
            LoraMod *lm = &ts->mods[ts->n_mods];
            lm->layer = l;
            lm->site = s;
            site_dims(c, s, &lm->in, &lm->out);
            total += (size_t)r * (size_t)(lm->in + lm->out) + (setup->lora_dora ? lm->out : 0);
            ts->site_mod[l][s] = ts->n_mods++;
        }
    ts->n_ad = total;
    ts->ad = balloc(ts, total, &fail);
    ts->ad_grad = balloc(ts, total, &fail);
    if (fail) return TS_NOMEM;
    // init as PEFT: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0
    float *host = xmalloc(sizeof(float) * total);
    uint64_t rng = setup->seed ^ 0x4C6F5241ULL;
    size_t off = 0;
    for (int i = 0; i < ts->n_mods && !fail; i++) {
        LoraMod *lm = &ts->mods[i];
        size_t na = (size_t)r * lm->in, nb = (size_t)lm->out * r;
        float bound = 1.0f / sqrtf((float)lm->in);
        for (size_t j = 0; j < na; j++)
            host[off + j] =
                    ((float)(rng_splitmix64(&rng) >> 40) / 16777216.0f * 2.0f - 1.0f) * bound;
        memset(host + off + na, 0, nb * sizeof(float));
        if (setup->lora_pissa && (rc = pissa_mod(ts, lm, host + off, host + off + na, err))) {
            free(host);
            return rc;
        }
        lm->A = ts->ad + off;
        lm->dA = ts->ad_grad + off;
        lm->B = ts->ad + off + na;
        lm->dB = ts->ad_grad + off + na;
        size_t nm = 0;
        if (setup->lora_dora) { /* magnitude = ||W + s·B·A|| at init (peft's update_layer) */
            nm = (size_t)lm->out;
            lm->mag = ts->ad + off + na + nb;
            lm->dmag = ts->ad_grad + off + na + nb;
            lm->wn = xmalloc(sizeof(double) * nm);
            lm->g = xmalloc(sizeof(float) * nm); /* the magnitude: below, once A, B are up */
            memset(host + off + na + nb, 0, nm * sizeof(float));
        }
        char path[160], name[200];
        site_path(m, lm->layer, lm->site, path, sizeof path);
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", path);
        add_tp(ts, name, lm->A, lm->dA, na, 2, r, lm->in, 1);
        ts->tp[ts->n_tp - 1].layer = lm->layer;
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", path);
        add_tp(ts, name, lm->B, lm->dB, nb, 2, lm->out, r, 1);
        ts->tp[ts->n_tp - 1].layer = lm->layer;
        if (nm) { /* 1-D but decayed, as transformers' get_decay_parameter_names has it */
            snprintf(name, sizeof name, "base_model.model.%s.lora_magnitude_vector", path);
            add_tp(ts, name, lm->mag, lm->dmag, nm, 1, lm->out, 0, 1);
            ts->tp[ts->n_tp - 1].layer = lm->layer;
        }
        off += na + nb + nm;
        if (ts->ckpt && lm->layer > 0) { /* every layer has the same sites */
            const LoraMod *first = &ts->mods[i % (ts->n_mods / c->L)];
            lm->h = first->h;
            lm->u = first->u;
            lm->zk = first->zk;
            continue;
        }
        if (ts->ckpt && setup->lora_dora && lm->site != SITE_DOWN) {
            lm->zk = balloc(ts, N * (size_t)lm->out, &fail);
            ts->act_bytes += N * (size_t)lm->out * sizeof(float);
        }
        if (setup->lora_dropout > 0) {
            lm->h = balloc(ts, N * (size_t)lm->in, &fail);
            ts->act_bytes += N * (size_t)lm->in * sizeof(float);
        }
        lm->u = balloc(ts, N * (size_t)r, &fail);
        ts->act_bytes += N * (size_t)r * sizeof(float);
    }
    if (!fail) ts->be->ops->upload(ts->be, ts->ad, host, sizeof(float) * total);
    if (setup->lora_pissa) /* kept: a trained adapter converts to plain LoRA against them */
        ts->pissa0 = host;
    else
        free(host);
    if (!fail && setup->lora_dora) {
        int widest = 0;
        for (int i = 0; i < ts->n_mods; i++)
            if (ts->mods[i].out > widest) widest = ts->mods[i].out;
        ts->dora_cap = dora_cap_of(N, widest, setup->lora_rank);
        ts->dora_z = balloc(ts, ts->dora_cap, &fail);
        ts->dora_dy = balloc(ts, N * (size_t)widest, &fail);
        int drop = setup->lora_dropout > 0;
        if (drop) ts->dora_dy2 = balloc(ts, N * (size_t)widest, &fail);
        size_t outs = 0;
        for (int i = 0; i < ts->n_mods; i++)
            outs += (size_t)ts->mods[i].out;
        ts->dora_g = balloc(ts, (drop ? 2 : 1) * outs, &fail);
        for (int i = 0, go = 0; i < ts->n_mods && !fail; go += ts->mods[i].out, i++) {
            ts->mods[i].g_dev = ts->dora_g + go;
            if (drop) ts->mods[i].gm1_dev = ts->dora_g + outs + go;
        }
        ts->dora_h1 = xmalloc(sizeof(float) * ts->dora_cap);
        /* ||W[o,:]||² once, then the magnitude = ||W + s·B·A|| at init (peft's update_layer) */
        for (int i = 0; i < ts->n_mods && !fail; i++) {
            LoraMod *lm = &ts->mods[i];
            float *W = xmalloc(sizeof(float) * (size_t)lm->out * lm->in);
            mod_weight(ts, lm, W);
            lm->wsq = xmalloc(sizeof(double) * (size_t)lm->out);
            for (int o = 0; o < lm->out; o++) {
                const float *w = W + (size_t)o * lm->in;
                double ss = 0;
                for (int k = 0; k < lm->in; k++)
                    ss += (double)w[k] * (double)w[k];
                lm->wsq[o] = ss;
            }
            free(W);
            dora_norms(ts, lm, lm->wn);
            for (int o = 0; o < lm->out; o++)
                lm->g[o] = (float)lm->wn[o];
            ts->be->ops->upload(ts->be, lm->mag, lm->g, sizeof(float) * (size_t)lm->out);
        }
    }
    if (fail) return TS_NOMEM;
    return 0;
}

/* P-tuning v2: the prefix embedding (and its MLP), initialised as PyTorch does. */
static int init_prefix(TrainState *ts, TunaErr *err) {
    const ModelConfig *c = &ts->m->cfg;
    const TrainSetup *setup = &ts->setup;
    size_t KD = (size_t)c->KVH * c->HS;
    int fail = 0, P = setup->prefix_tokens, H = setup->prefix_hidden;
    if (P < 1 || P > 1024)
        return tuna_errf(err, TUNA_EINVAL, "--prefix-tokens must be in [1, 1024], got %d", P);
    if (setup->prefix_projection && (H < 1 || H > 65536))
        return tuna_errf(err, TUNA_EINVAL, "--prefix-hidden must be in [1, 65536], got %d", H);
    ts->P = P;
    ts->PW = (size_t)c->L * 2 * KD;
    size_t D = setup->prefix_projection ? KD : ts->PW; /* PEFT: token_dim = KVH*HS */
    size_t n_emb = (size_t)P * D, n_w1 = setup->prefix_projection ? (size_t)H * D : 0,
           n_b1 = setup->prefix_projection ? (size_t)H : 0,
           n_w2 = setup->prefix_projection ? ts->PW * H : 0,
           n_b2 = setup->prefix_projection ? ts->PW : 0;
    size_t total = n_emb + n_w1 + n_b1 + n_w2 + n_b2;
    ts->n_ad = total;
    ts->ad = balloc(ts, total, &fail);
    ts->ad_grad = balloc(ts, total, &fail);
    ts->pre_dev = balloc(ts, (size_t)P * ts->PW, &fail);
    size_t kvf = (size_t)ts->B * (size_t)(P + ts->T) * KD;
    ts->dkf = balloc(ts, kvf, &fail);
    ts->dvf = balloc(ts, kvf, &fail);
    if (fail) return TS_NOMEM;
    ts->pre = xcalloc((size_t)P * ts->PW, sizeof(float));
    ts->pre_grad = xcalloc((size_t)P * ts->PW, sizeof(float));
    ts->p_h = xcalloc((size_t)P * (H > 0 ? (size_t)H : 1), sizeof(float));
    float *host = xmalloc(sizeof(float) * total);
    uint64_t rng = setup->seed ^ 0x50524546ULL;
    /* nn.Embedding: N(0, 1); nn.Linear: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias */
    for (size_t j = 0; j < n_emb; j++) {
        double u1 = ((double)(rng_splitmix64(&rng) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(rng_splitmix64(&rng) >> 11) / 9007199254740992.0;
        host[j] = (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
    size_t o = n_emb;
    float bnd1 = 1.0f / sqrtf((float)D), bnd2 = H > 0 ? 1.0f / sqrtf((float)H) : 0;
    for (size_t j = 0; j < n_w1 + n_b1; j++)
        host[o + j] = ((float)(rng_splitmix64(&rng) >> 40) / 16777216.0f * 2 - 1) * bnd1;
    o += n_w1 + n_b1;
    for (size_t j = 0; j < n_w2 + n_b2; j++)
        host[o + j] = ((float)(rng_splitmix64(&rng) >> 40) / 16777216.0f * 2 - 1) * bnd2;
    ts->be->ops->upload(ts->be, ts->ad, host, sizeof(float) * total);
    free(host);
    float *pp = ts->ad, *gg = ts->ad_grad;
    ts->p_emb = pp;
    ts->g_emb = gg;
    if (!setup->prefix_projection) {
        add_tp(ts, "prompt_embeddings", ts->p_emb, ts->g_emb, n_emb, 2, P, (int64_t)ts->PW, 1);
        return 0;
    }
    pp += n_emb;
    gg += n_emb;
    ts->p_w1 = pp;
    ts->g_w1 = gg;
    pp += n_w1;
    gg += n_w1;
    ts->p_b1 = pp;
    ts->g_b1 = gg;
    pp += n_b1;
    gg += n_b1;
    ts->p_w2 = pp;
    ts->g_w2 = gg;
    pp += n_w2;
    gg += n_w2;
    ts->p_b2 = pp;
    ts->g_b2 = gg;
    add_tp(ts, "prompt_encoder.default.embedding.weight", ts->p_emb, ts->g_emb, n_emb, 2, P,
           (int64_t)D, 1);
    add_tp(ts, "prompt_encoder.default.transform.0.weight", ts->p_w1, ts->g_w1, n_w1, 2, H,
           (int64_t)D, 1);
    add_tp(ts, "prompt_encoder.default.transform.0.bias", ts->p_b1, ts->g_b1, n_b1, 1, H, 0, 0);
    add_tp(ts, "prompt_encoder.default.transform.2.weight", ts->p_w2, ts->g_w2, n_w2, 2,
           (int64_t)ts->PW, H, 1);
    add_tp(ts, "prompt_encoder.default.transform.2.bias", ts->p_b2, ts->g_b2, n_b2, 1,
           (int64_t)ts->PW, 0, 0);
    return 0;
}

/* METHOD_NONE (evaluation, a reference) over a model with a prefix installed (model_set_prefix:
 * a PREFIX_TUNING adapter, or the virtual tokens of a PROMPT_TUNING / P_TUNING one run into it):
 * the forward sees it as the inference path does, the real tokens at positions P.., nothing
 * trains. */
static int init_model_prefix(TrainState *ts) {
    const Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    size_t KD = (size_t)c->KVH * c->HS;
    int fail = 0, P = m->prefix_len;
    ts->P = P;
    ts->PW = (size_t)c->L * 2 * KD;
    ts->pre_frozen = 1;
    ts->pre_dev = balloc(ts, (size_t)P * ts->PW, &fail);
    size_t kvf = (size_t)ts->B * (size_t)(P + ts->T) * KD;
    ts->dkf = balloc(ts, kvf, &fail);
    ts->dvf = balloc(ts, kvf, &fail);
    if (fail) return TS_NOMEM;
    ts->pre = xcalloc((size_t)P * ts->PW, sizeof(float));
    ts->pre_grad = xcalloc((size_t)P * ts->PW, sizeof(float));
    memcpy(ts->pre, m->prefix, sizeof(float) * (size_t)P * ts->PW);
    ts->be->ops->upload(ts->be, ts->pre_dev, ts->pre, sizeof(float) * (size_t)P * ts->PW);
    return 0;
}

/* Prompt tuning and P-tuning v1: the encoder's parameters (PyTorch's init; prompt tuning's TEXT
 * init: the embedding rows of the init text's ids, repeated and cut to P as PEFT does), the
 * virtual tokens' buffers and the host rows with their slots. ts->T already counts them. */
static int init_prompt(TrainState *ts, TunaErr *err) {
    Model *m = ts->m;
    const TrainSetup *setup = &ts->setup;
    int VT = ts->VT, C = m->cfg.C, fail = 0;
    if (prompt_enc_init(&ts->enc, prompt_enc_type(setup), VT, C, setup->prefix_hidden,
                        setup->prompt_layers ? setup->prompt_layers : 2))
        return tuna_errf(err, TUNA_EINVAL,
                         "--prefix-hidden must be in [1, 65536] and the LSTM layers in [1, %d]",
                         PROMPT_ENC_MAX_LAYERS);
    size_t n = ts->enc.n_params;
    ts->n_ad = n;
    ts->ad = balloc(ts, n, &fail);
    ts->ad_grad = balloc(ts, n, &fail);
    ts->vt_dev = balloc(ts, (size_t)VT * C, &fail);
    if (fail) return TS_NOMEM;
    float *host = xmalloc(sizeof(float) * n);
    prompt_enc_init_params(&ts->enc, host, setup->seed);
    if (setup->method == METHOD_PROMPT && setup->prompt_init_ids && setup->prompt_init_n > 0) {
        int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)VT);
        for (int p = 0; p < VT; p++) {
            ids[p] = setup->prompt_init_ids[p % setup->prompt_init_n];
            if (ids[p] < 0 || ids[p] >= m->cfg.V) {
                int bad = (int)ids[p];
                free(ids);
                free(host);
                return tuna_errf(err, TUNA_EINVAL,
                                 "--prompt-init-text: token id %d outside the vocabulary (%d)", bad,
                                 m->cfg.V);
            }
        }
        model_embed(m, ts->vt_dev, ids, VT);
        ts->be->ops->download(ts->be, host, ts->vt_dev, sizeof(float) * (size_t)VT * C);
        free(ids);
    }
    ts->be->ops->upload(ts->be, ts->ad, host, sizeof(float) * n);
    free(host);
    for (int i = 0; i < ts->enc.n_t; i++) {
        const PromptTensor *t = &ts->enc.t[i];
        char name[160];
        snprintf(name, sizeof name, "prompt_encoder.default.%s", t->name);
        add_tp(ts, name, ts->ad + t->off, ts->ad_grad + t->off, t->n, t->ndim, t->shape[0],
               t->shape[1], t->decay);
    }
    ts->vt_grad = xmalloc(sizeof(float) * (size_t)VT * C);
    ts->vt_dx = xmalloc(sizeof(float) * (size_t)VT * C);
    ts->enc_g = xmalloc(sizeof(float) * n);
    ts->x_ids = xmalloc(sizeof(int32_t) * ts->N);
    ts->x_tg = xmalloc(sizeof(int32_t) * ts->N);
    return 0;
}

/* The activations the backward needs: one block, pointers into it. Every buffer starts on 64
 * bytes, so a layer recomputed into the shared set sees the alignment it had in the forward. */
static int init_activations(TrainState *ts) {
    const ModelConfig *c = &ts->m->cfg;
    size_t N = ts->N, C = (size_t)c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS,
           FF = (size_t)c->FF, V = (size_t)c->V;
    int fail = 0;
    ActPlan ap = act_plan(c, ts->B, ts->T, ts->P, ts->ckpt);
    size_t kvn = ap.kvn, total_act = ap.total;
    ts->act_block = balloc(ts, total_act, &fail);
    if (fail) return TS_NOMEM;
    ts->act_bytes += total_act * sizeof(float);
    ts->acts = xcalloc((size_t)c->L, sizeof *ts->acts);
    float *p = ts->act_block;
#define TAKE(field, n) (field = p, p += pad16(n))
    for (int l = 0; l < c->L; l++) {
        LayerActs *a = &ts->acts[l];
        TAKE(a->x_in, N * C);
        if (ts->ckpt && l > 0) {
            float *x_in = a->x_in;
            *a = ts->acts[0];
            a->x_in = x_in;
            continue;
        }
        TAKE(a->xn1, N * C);
        TAKE(a->x_mid, N * C);
        TAKE(a->xn2, N * C);
        if (c->qk_norm) {
            TAKE(a->qraw, N * QD);
            TAKE(a->kraw, N * KD);
        }
        TAKE(a->q, N * QD);
        TAKE(a->k, kvn);
        TAKE(a->v, kvn);
        TAKE(a->att, N * QD);
        TAKE(a->gate, N * FF);
        TAKE(a->up, N * FF);
        TAKE(a->act, N * FF);
    }
    TAKE(ts->x_L, N * C);
    TAKE(ts->xnf, N * C);
    TAKE(ts->logits, head_chunk(N, V) * V);
#undef TAKE
    TUNA_ASSERT(p == ts->act_block + total_act);
    return 0;
}

/* The backward's scratch and the host arrays of a micro-batch. */
static int init_scratch(TrainState *ts) {
    const ModelConfig *c = &ts->m->cfg;
    size_t N = ts->N;
    int fail = 0;
    size_t n[N_SCRATCH];
    scratch_plan(c, N, ts->setup.method == METHOD_LORA ? ts->setup.lora_rank : 1, n);
    float **dst[N_SCRATCH] = {&ts->dx,   &ts->dxn,   &ts->dq,  &ts->dk,   &ts->dv,
                              &ts->datt, &ts->dgate, &ts->dup, &ts->dact, &ts->tmp,
                              &ts->dys,  &ts->du,    &ts->dh};
    for (int i = 0; i < N_SCRATCH; i++)
        *dst[i] = balloc(ts, n[i], &fail);
    if (fail) return TS_NOMEM;
    ts->losses = xmalloc(sizeof(float) * N);
    ts->head_rows = xmalloc(sizeof(int32_t) * N);
    ts->head_targets = xmalloc(sizeof(int32_t) * N);
    ts->row_logp = xmalloc(sizeof(double) * (size_t)ts->B);
    ts->row_n = xmalloc(sizeof(int) * (size_t)ts->B);
    ts->row_scale = xmalloc(sizeof(float) * (size_t)ts->B);
    ts->pos = xmalloc(sizeof(int32_t) * N);
    ts->kv_lo = xmalloc(sizeof(int32_t) * N);
    for (int b = 0; b < ts->B; b++)
        for (int t = 0; t < ts->T; t++)
            ts->pos[(size_t)b * ts->T + t] = ts->P + t;
    return 0;
}

int train_state_init(Model *m, const TrainSetup *setup, int B, int T, TrainState **out,
                     TunaErr *err) {
    *out = NULL;
    Backend *be = m->be;
    const BackendOps *op = be->ops;
    const char *missing = backend_missing(op, BACKEND_NEED_TRAIN);
    if (missing)
        return tuna_errf(err, TUNA_EUNSUP, "backend \"%s\" cannot train yet: it has no %s op",
                         op->name, missing);
    const ModelConfig *c = &m->cfg;
    if (T > c->max_pos && c->learned_pos)
        return tuna_errf(err, TUNA_EINVAL, "cutoff %d exceeds the model's %d positions", T,
                         c->max_pos);
    int VT = setup->method == METHOD_PROMPT || setup->method == METHOD_PTUNING_V1
                     ? setup->prefix_tokens
                     : 0;
    if (VT) {
        if (VT < 1 || VT > 1024)
            return tuna_errf(err, TUNA_EINVAL, "--prefix-tokens must be in [1, 1024], got %d", VT);
        if (T + VT > c->max_pos && c->learned_pos)
            return tuna_errf(err, TUNA_EINVAL,
                             "cutoff %d and %d virtual tokens exceed the model's %d positions", T,
                             VT, c->max_pos);
        T += VT; /* the rows inside hold the virtual tokens too */
    }
    TrainState *ts = xcalloc(1, sizeof *ts);
    ts->VT = VT;
    ts->m = m;
    ts->be = be;
    ts->setup = *setup;
    ts->setup.lora_tokens =
            NULL; /* parsed into tok_idx (train_lora_tokens): the string may not outlive ts */
    ts->setup.prompt_init_ids = NULL; /* used by init_prompt below only */
    ts->setup.prompt_init_n = 0;
    ts->B = B;
    ts->T = T;
    ts->T_cap = T;
    ts->N = (size_t)B * T;
    ts->ckpt = setup->grad_checkpoint != 0;
    int rc = 0;
    // --- what trains, then what the backward keeps and needs
    if (setup->method == METHOD_FULL || setup->method == METHOD_FREEZE) {
        rc = init_full(ts, err);
        if (!rc) lazy_init(ts);
    } else if (setup->method == METHOD_LORA) {
        rc = init_lora(ts, err);
        if (!rc && setup->lora_tokens && setup->lora_tokens[0])
            rc = tokens_init(ts, setup->lora_tokens, err);
    } else if (setup->method == METHOD_PTUNING)
        rc = init_prefix(ts, err);
    else if (setup->method == METHOD_NONE && m->prefix_len)
        rc = init_model_prefix(ts);
    else if (VT) {
        TrainSetup keep = ts->setup; /* init_prompt reads the init text's ids */
        ts->setup.prompt_init_ids = setup->prompt_init_ids;
        ts->setup.prompt_init_n = setup->prompt_init_n;
        rc = init_prompt(ts, err);
        ts->setup = keep;
    }
    if (!rc) rc = init_activations(ts);
    if (!rc) rc = init_scratch(ts);
    if (rc == TS_NOMEM)
        rc = tuna_errf(err, TUNA_ENOMEM,
                       "cannot allocate training memory for batch %d x %d tokens (try a smaller "
                       "--batch-size or --cutoff-len, or LoRA)",
                       B, T);
    if (rc) {
        train_state_free(ts);
        return rc;
    }
    train_zero_grad(ts);
    train_track_weights(ts, 1);
    *out = ts;
    return 0;
}

void train_state_free(TrainState *ts) {
    if (!ts) return;
    Backend *be = ts->be;
    train_track_weights(ts, 0);
    float *bufs[] = {ts->grads, ts->ad,  ts->ad_grad, ts->act_block, ts->dx,    ts->dxn,
                     ts->dq,    ts->dk,  ts->dv,      ts->datt,      ts->dgate, ts->dup,
                     ts->dact,  ts->tmp, ts->dys,     ts->du,        ts->dh};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        be->ops->release(be, bufs[i]);
    be->ops->release(be, ts->dora_z);
    be->ops->release(be, ts->dora_dy);
    be->ops->release(be, ts->dora_dy2);
    be->ops->release(be, ts->dora_g);
    free(ts->dora_h1);
    for (int i = 0; i < ts->n_mods; i++) {
        free(ts->mods[i].wn);
        free(ts->mods[i].wsq);
        free(ts->mods[i].g);
        if (ts->ckpt && ts->mods[i].layer > 0) continue; /* aliases of the first layer's */
        be->ops->release(be, ts->mods[i].h);
        be->ops->release(be, ts->mods[i].u);
        be->ops->release(be, ts->mods[i].zk);
    }
    be->ops->release(be, ts->pre_dev);
    be->ops->release(be, ts->tok_val);
    be->ops->release(be, ts->tok_grad);
    free(ts->tok_idx);
    free(ts->pissa0);
    be->ops->release(be, ts->dkf);
    be->ops->release(be, ts->dvf);
    be->ops->release(be, ts->vt_dev);
    prompt_enc_free(&ts->enc);
    free(ts->vt_grad);
    free(ts->vt_dx);
    free(ts->enc_g);
    free(ts->x_ids);
    free(ts->x_tg);
    free(ts->pre);
    free(ts->pre_grad);
    free(ts->p_h);
    free(ts->mods);
    free(ts->site_mod);
    free(ts->view_A);
    free(ts->view_B);
    free(ts->view_G);
    free(ts->tp);
    free(ts->lazy);
    free(ts->acts);
    free(ts->losses);
    free(ts->head_rows);
    free(ts->head_targets);
    free(ts->row_logp);
    free(ts->row_n);
    free(ts->row_scale);
    free(ts->head_stats);
    free(ts->row_stat);
    free(ts->pos);
    free(ts->kv_lo);
    free(ts);
}

const TrainParam *train_params(const TrainState *ts, int *n) {
    *n = ts->n_tp;
    return ts->tp;
}

size_t train_param_count(const TrainState *ts) {
    return ts->n_trainable;
}

size_t train_activation_bytes(const TrainState *ts) {
    return ts->act_bytes;
}

const char *train_lora_targets(const TrainState *ts) {
    return ts->targets;
}

const int32_t *train_lora_tokens(const TrainState *ts, int *n) {
    *n = ts->n_tok;
    return ts->tok_idx;
}

void train_download_params(const TrainState *ts, float **host) {
    for (int i = 0; i < ts->n_tp; i++)
        ts->be->ops->download(ts->be, host[i], ts->tp[i].data, sizeof(float) * ts->tp[i].n);
}

void train_upload_params(TrainState *ts, const float *const *host) {
    for (int i = 0; i < ts->n_tp; i++)
        ts->be->ops->upload(ts->be, ts->tp[i].data, host[i], sizeof(float) * ts->tp[i].n);
}

const TrainSetup *train_setup(const TrainState *ts) {
    return &ts->setup;
}

Model *train_model(const TrainState *ts) {
    return ts->m;
}

int train_set_seq_len(TrainState *ts, int T, TunaErr *err) {
    if (T < 1 || T > ts->T_cap - ts->VT)
        return tuna_errf(err, TUNA_EINVAL, "rows of %d tokens for a state sized for 1 to %d", T,
                         ts->T_cap - ts->VT);
    T += ts->VT; /* the virtual tokens open every row */
    if (T == ts->T && !ts->spans) return 0;
    ts->T = T;
    ts->spans = 0;
    for (int b = 0; b < ts->B; b++)
        for (int t = 0; t < T; t++)
            ts->pos[(size_t)b * T + t] = ts->P + t;
    return 0;
}

int train_set_spans(TrainState *ts, const int32_t *seg_start, TunaErr *err) {
    int T = ts->T;
    if (!seg_start) return train_set_seq_len(ts, T - ts->VT, err);
    if (ts->VT)
        return tuna_errf(err, TUNA_EUNSUP,
                         "neat packing: not with virtual tokens (prompt, ptuning-v1): each example "
                         "would need its own");
    if (ts->P)
        return tuna_errf(err, TUNA_EUNSUP,
                         "neat packing: not with a prefix (ptuning): each example would need its "
                         "own");
    for (size_t i = 0; i < (size_t)ts->B * T; i++) {
        int t = (int)(i % (size_t)T);
        if (seg_start[i] < 0 || seg_start[i] > t)
            return tuna_errf(err, TUNA_EINVAL,
                             "neat packing: row %zu position %d starts its example at %d",
                             i / (size_t)T, t, (int)seg_start[i]);
        ts->pos[i] = t - seg_start[i];
        ts->kv_lo[i] = seg_start[i];
    }
    ts->spans = 1;
    return 0;
}

void train_set_step_seed(TrainState *ts, uint64_t step) {
    ts->step_seed = step;
    ts->micro = 0;
}

void train_set_micro_batch(TrainState *ts, int micro) {
    ts->micro = micro;
}

int train_set_logit_stats(TrainState *ts, int on) {
    ts->stats_on = on && ts->be->ops->logit_stats;
    if (ts->stats_on && !ts->head_stats) {
        ts->head_stats = xmalloc(sizeof(float) * 3 * ts->N);
        ts->row_stat = xcalloc((size_t)ts->B * 4, sizeof(double));
    }
    return ts->stats_on;
}

const float *train_pissa_init(const TrainState *ts, const TrainParam *tp) {
    if (!ts->pissa0 || tp->data < ts->ad || tp->data >= ts->ad + ts->n_ad) return NULL;
    return ts->pissa0 + (tp->data - ts->ad);
}

const double *train_row_stats(const TrainState *ts) {
    return ts->stats_on ? ts->row_stat : NULL;
}

void train_set_grad_hook(TrainState *ts, TrainGradFn fn, void *ctx) {
    ts->grad_fn = fn;
    ts->grad_ctx = ctx;
}

/* The trained matrices' gradients are not zeroed up front (498 MB for GPT-2, a pass to DRAM that
 * the weight gradient's product then read back): a step's first write of one overwrites it
 * (BackendOps.matmul_bwd_dw, or the zeroing right before where a backend has none), and a
 * backward ends with none pending (lazy_flush), so whoever reads the gradients finds what zeroing
 * them up front would have left, bit for bit. */
static int lazy_find(const TrainState *ts, const float *g) {
    for (int i = 0; g && i < ts->n_lazy; i++)
        if (ts->lazy[i].g == g) return i;
    return -1;
}

/* g about to be accumulated into: zeroed first if it is pending; its Σ g² no longer known */
static void lazy_take(TrainState *ts, const float *g) {
    int i = lazy_find(ts, g);
    if (i >= 0 && ts->lazy[i].pending) zero(ts, ts->lazy[i].g, ts->lazy[i].n);
    if (i >= 0) ts->lazy[i].pending = ts->lazy[i].ss_ok = 0;
}

/* z's gradient written this step, overwritten whole, Σ g² = ss: known to the norm unless a
 * gradient hook may change it afterwards */
static void lazy_written(const TrainState *ts, struct LazyGrad *z, double ss) {
    z->pending = 0;
    z->ss = ss;
    z->ss_ok = !ts->grad_fn;
}

/* the pending ones of layer l (INT_MIN: all) zeroed: nothing wrote them this step (Σ g² = 0) */
static void lazy_flush(TrainState *ts, int l) {
    for (int i = 0; i < ts->n_lazy; i++)
        if (ts->lazy[i].pending && (l == INT_MIN || ts->lazy[i].layer == l)) {
            zero(ts, ts->lazy[i].g, ts->lazy[i].n);
            lazy_written(ts, &ts->lazy[i], 0);
        }
}

static int cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The embedding's backward into wte's gradient. A tied head's product wrote that gradient this
 * step (pending otherwise: zeroed first, as lazy_take does, when no head ran: hidden_fn) with its
 * Σ g², which stays known: the rows of the batch's tokens are the only ones the embedding adds
 * to, and their sums before and after it move it (the LM head's 38.6M gradients for GPT-2 are
 * not read again for the norm). */
static void embed_bwd_wte(TrainState *ts, const int32_t *ids, int M) {
    float *g = G(ts, ts->m->wte);
    if (!g) return;
    const BackendOps *op = ts->be->ops;
    int C = ts->m->cfg.C, V = ts->m->cfg.V, i = lazy_find(ts, g), n = 0;
    int32_t *rows = NULL;
    if (i >= 0 && !ts->lazy[i].pending && ts->lazy[i].ss_ok && M > 0) {
        rows = xmalloc(sizeof *rows * (size_t)M);
        memcpy(rows, ids, sizeof *rows * (size_t)M);
        qsort(rows, (size_t)M, sizeof *rows, cmp_int32);
        for (int j = 0; j < M; j++)
            if (!n || rows[j] != rows[n - 1]) rows[n++] = rows[j];
        if (rows[0] < 0 || rows[n - 1] >= V) n = 0; /* not rows of wte: summed again later */
    }
    if (!n) {
        lazy_take(ts, g);
        op->embed_bwd(ts->be, g, ts->dx, ids, M, C);
        free(rows);
        return;
    }
    double before = 0, after = 0;
    for (int j = 0; j < n; j++)
        before += op->sumsq(ts->be, g + (size_t)rows[j] * C, (size_t)C);
    op->embed_bwd(ts->be, g, ts->dx, ids, M, C);
    for (int j = 0; j < n; j++)
        after += op->sumsq(ts->be, g + (size_t)rows[j] * C, (size_t)C);
    ts->lazy[i].ss += after - before;
    free(rows);
}

/* matmul_bwd of a trained matrix W whose gradient dw may be pending: din and dbias accumulated,
 * and dw overwritten when pending (matmul_bwd_dw, which also gives Σ dw² unless a gradient hook
 * may change dw afterwards), accumulated otherwise */
static void matmul_bwd_lazy(TrainState *ts, float *din, float *dw, float *dbias, const float *dout,
                            const float *in, const float *W, int M, int K, int N) {
    const BackendOps *op = ts->be->ops;
    int i = lazy_find(ts, dw);
    if (i >= 0 && ts->lazy[i].pending && op->matmul_bwd_dw) {
        double ss = 0;
        if (dbias) op->matmul_bwd(ts->be, NULL, NULL, dbias, dout, in, W, M, K, N);
        op->matmul_bwd_dw(ts->be, din, dw, dout, in, W, M, K, N, ts->grad_fn ? NULL : &ss);
        lazy_written(ts, &ts->lazy[i], ss);
        return;
    }
    lazy_take(ts, dw);
    op->matmul_bwd(ts->be, din, dw, dbias, dout, in, W, M, K, N);
}

void train_zero_grad(TrainState *ts) {
    if (ts->grads) { /* all but the trained matrices', which are pending from here */
        float *at = ts->grads, *end = ts->grads + (ts->g1 - ts->g0);
        for (int i = 0; i < ts->n_lazy; i++) {
            zero(ts, at, (size_t)(ts->lazy[i].g - at));
            at = ts->lazy[i].g + ts->lazy[i].n;
            ts->lazy[i].pending = 1;
            ts->lazy[i].ss_ok = 0;
        }
        zero(ts, at, (size_t)(end - at));
    }
    if (ts->ad_grad) zero(ts, ts->ad_grad, ts->n_ad);
    if (ts->tok_grad) zero(ts, ts->tok_grad, (size_t)(ts->n_tok + 1) * ts->m->cfg.C);
}

void train_grad_sumsq(const TrainState *ts, const TrainParam *tp, int np, double *known) {
    for (int p = 0; p < np; p++) {
        known[p] = -1;
        const float *at = tp[p].grad, *end = at + tp[p].n;
        double s = 0;
        for (int i = 0; at && i < ts->n_lazy && at < end; i++) { /* by address */
            const struct LazyGrad *z = &ts->lazy[i];
            if (z->g + z->n <= at) continue;
            if (z->g != at || !z->ss_ok) break;
            s += z->ss;
            at += z->n;
        }
        if (tp[p].grad && at == end) known[p] = s;
    }
}

/* Gradient buffer of a base weight, or NULL when it is frozen. */
static float *G(const TrainState *ts, const float *p) {
    if (!p || !ts->grads) return NULL;
    const float *base = ts->m->params;
    if (p < base + ts->g0 || p >= base + ts->g1) return NULL;
    return ts->grads + (p - base - ts->g0);
}

// --- linear layers with an optional LoRA adapter

/* The step's and micro-batch's seed (the first micro-batch's is the step's alone) */
static uint64_t step_key(const TrainState *ts) {
    return ts->setup.seed * 0x100000001B3ULL ^ ts->step_seed * 0x9E3779B97F4A7C15ULL ^
           (uint64_t)ts->micro * 0xA24BAED4963EE407ULL;
}

static uint64_t drop_seed(const TrainState *ts, const LoraMod *lm) {
    return step_key(ts) ^ ((uint64_t)lm->layer << 8 | (uint64_t)lm->site) * 0xD6E8FEB86659FD93ULL;
}

/* First row of B that a slice of the fused c_attn uses (0 for every other site). */
static int slice_row(const TrainState *ts, int site, int slice) {
    const ModelConfig *c = &ts->m->cfg;
    if (site != SITE_QKV) return 0;
    return slice * c->NH * c->HS; /* GPT-2: q, k, v are C rows each */
}

/* The adapter's input side: h = dropout(in) (when dropout is on), u (M, r) = s · h · Aᵀ. The
 * scale s is applied here, to r columns, rather than to the n_out columns of the adapter's output
 * and of its gradient (three passes over (M, n_out) a site; the same bits when s is a power of
 * two, as alpha 16 over rank 8). */
static void lora_u_fwd(TrainState *ts, LoraMod *lm, const float *in, int M, int K) {
    Backend *be = ts->be;
    const float *h = in;
    if (lm->h) {
        be->ops->dropout(be, lm->h, in, (size_t)M * K, ts->setup.lora_dropout, drop_seed(ts, lm));
        h = lm->h;
    }
    be->ops->matmul_fwd(be, lm->u, h, lm->A, NULL, M, K, ts->setup.lora_rank);
    be->ops->scale(be, lm->u, (size_t)M * (size_t)ts->setup.lora_rank, ts->lora_scale);
}

/* DoRA forward (peft's DoraLinearVariant.forward), on rows [row0, row0 + n_out) of the module,
 * g = magnitude / norm (dora_prepare). Without dropout out = W·x + bias + s·B·A·x becomes
 * g ⊙ (W·x + s·B·A·x) + bias (col_scale). With dropout, h = dropout(x) (lm->h), peft
 * adds (g - 1) ⊙ W·h + g ⊙ s·B·A·h to the base's W·x + bias: out (which holds W·x + bias +
 * s·B·A·h) += (g - 1) ⊙ z, z = W·h + s·B·A·h, the base product of h in the dora_z scratch (W:
 * the slice's weight, as the base layer's product ran; Bs: its rows of B). */
static void dora_fwd(TrainState *ts, const LoraMod *lm, int row0, LoraSite ls, float *out,
                     const float *bias, const float *W, const float *Bs, int M, int K, int n_out) {
    Backend *be = ts->be;
    size_t n = (size_t)M * n_out;
    /* this slice's block of the kept z: filled where dora_bwd reads it next, by a recompute or
     * the forward of the last layer (the only one not recomputed); the forward's copies of the
     * other layers would be overwritten unread */
    float *zk = lm->zk && (ts->recompute || lm->layer == ts->m->cfg.L - 1)
                        ? lm->zk + (size_t)row0 * M
                        : NULL;
    if (!lm->h) { /* out holds z = W·x + s·B·A·x (the base's product without its bias) */
        if (zk) be->ops->copy(be, zk, out, sizeof(float) * n);
        be->ops->col_scale(be, out, out, lm->g_dev + row0, bias, M, n_out); /* as model.c's */
        return;
    }
    model_base_linear(ts->m, lm->layer, ls, ts->dora_z, lm->h, W, NULL, M, K, n_out);
    backend_matmul_acc(be, ts->dora_z, lm->u, Bs, M, ts->setup.lora_rank, n_out, ts->dys);
    if (zk) be->ops->copy(be, zk, ts->dora_z, sizeof(float) * n);
    /* out (W·x + s·B·A·h) += (g - 1) ⊙ z + bias */
    be->ops->col_scale(be, ts->dora_z, ts->dora_z, lm->gm1_dev + row0, bias, M, n_out);
    be->ops->add_fwd(be, out, out, ts->dora_z, n);
}

/* DoRA backward on rows [row0, row0 + n_out): with h = x (no dropout) or dropout(x) (lm->h),
 * z = W·h + s·B·A·h (recomputed) and the norm detached: dmagnitude[o] += Σ_t dy[t,o]·z[t,o] /
 * norm[o]; returns g ⊙ dy (ts->dora_dy), the gradient the adapter sees, and without dropout the
 * base too (y = g ⊙ z + bias). With dropout the base's W·x takes dy itself and *dy_h is set to
 * (g - 1) ⊙ dy (ts->dora_dy2), the gradient of the dropped-out base product W·h. */
static const float *dora_bwd(TrainState *ts, LoraMod *lm, int row0, LoraSite ls, const float *dout,
                             const float *in, const float *W, int M, int K, int n_out,
                             const float **dy_h) {
    Backend *be = ts->be;
    int r = ts->setup.lora_rank;
    const float *z = ts->dora_z;
    if (lm->zk) { /* checkpointing: the forward or the recompute just ran this layer */
        z = lm->zk + (size_t)row0 * M;
    } else { /* the base product again, as the forward ran it (a typed base's own kernel) */
        model_base_linear(ts->m, lm->layer, ls, ts->dora_z, lm->h ? lm->h : in, W, NULL, M, K,
                          n_out);
        /* + s·B·A·h as dora_fwd added it (the same op: the same bits as lm->zk's) */
        backend_matmul_acc(be, ts->dora_z, lm->u, lm->B + (size_t)row0 * r, M, r, n_out, ts->dys);
    }
    double *acc = xcalloc((size_t)n_out, sizeof(double));
    be->ops->col_dot(be, acc, dout, z, M, n_out);
    be->ops->col_scale(be, ts->dora_dy, dout, lm->g_dev + row0, NULL, M, n_out);
    *dy_h = NULL;
    if (lm->h) {
        be->ops->col_scale(be, ts->dora_dy2, dout, lm->gm1_dev + row0, NULL, M, n_out);
        *dy_h = ts->dora_dy2;
    }
    float *dm = xmalloc(sizeof(float) * (size_t)n_out);
    be->ops->download(be, dm, lm->dmag + row0, sizeof(float) * (size_t)n_out);
    for (int o = 0; o < n_out; o++)
        dm[o] += (float)(acc[o] / lm->wn[row0 + o]);
    be->ops->upload(be, lm->dmag + row0, dm, sizeof(float) * (size_t)n_out);
    free(dm);
    free(acc);
    return ts->dora_dy;
}

/* Whether a DoRA module sits at (l, site): its base product is made without the bias, which
 * dora_fwd adds after the scaling. */
static int is_dora(const TrainState *ts, int l, int site) {
    int mi = ts->site_mod ? ts->site_mod[l][site] : -1;
    return mi >= 0 && ts->mods[mi].mag != NULL;
}

/* out (M, n_out), the base layer's in · Wᵀ + bias, += scale · (dropout(in) · Aᵀ) ·
 * B[row0 : row0+n_out]ᵀ where an adapter sits at (l, site) (DoRA: out arrives without the bias,
 * which dora_fwd adds after the magnitude's scaling) */
static void adapter_fwd(TrainState *ts, int l, int site, int slice, float *out, const float *in,
                        const float *W, const float *bias, int M, int K, int n_out) {
    Backend *be = ts->be;
    int mi = ts->site_mod ? ts->site_mod[l][site] : -1;
    if (mi < 0) return;
    LoraMod *lm = &ts->mods[mi];
    int r = ts->setup.lora_rank;
    if (slice == 0) lora_u_fwd(ts, lm, in, M, K); /* the fused c_attn: once for three slices */
    if (slice == 0 && lm->mag) dora_prepare(ts, lm);
    const float *Bs = lm->B + (size_t)slice_row(ts, site, slice) * r;
    /* out += u · Bᵀ (the scratch, without matmul_acc: dys, backward scratch, free during the
     * forward; out may be ts->tmp) */
    backend_matmul_acc(be, out, lm->u, Bs, M, r, n_out, ts->dys);
    if (lm->mag)
        dora_fwd(ts, lm, slice_row(ts, site, slice), base_site(site, slice), out, bias, W, Bs, M, K,
                 n_out);
}

/* out (M, n_out) = in · Wᵀ + bias, plus scale · (dropout(in) · Aᵀ) · B[row0 : row0+n_out]ᵀ. */
static void linear_fwd(TrainState *ts, int l, int site, int slice, float *out, const float *in,
                       const float *W, const float *bias, int M, int K, int n_out) {
    model_base_linear(ts->m, l, base_site(site, slice), out, in, W,
                      is_dora(ts, l, site) ? NULL : bias, M, K, n_out);
    adapter_fwd(ts, l, site, slice, out, in, W, bias, M, K, n_out);
}

/* Backward of linear_fwd: din (M,K) += dout · W (+ the adapter's path), dW and dbias when
 * the base trains, dA and dB when an adapter sits here. last_slice: the fused c_attn
 * finishes its A gradient after the third slice. acc 0: din's first writer, its old values not
 * read (a typed base's product overwrites it, else it is zeroed here first). */
static void linear_bwd(TrainState *ts, int l, int site, int slice, int last_slice, int acc,
                       float *din, const float *dout, const float *in, const float *W,
                       const float *bias, int M, int K, int n_out) {
    Backend *be = ts->be;
    int mi = ts->site_mod ? ts->site_mod[l][site] : -1;
    LoraSite ls = base_site(site, slice);
    /* DoRA: the magnitude's gradient, and dout scaled by g for the adapter (and, without
     * dropout, the base); with dropout, dy_h = (g - 1) ⊙ dy for the base product of h */
    const float *dy_ad = dout, *dy_h = NULL;
    if (mi >= 0 && ts->mods[mi].mag) {
        dy_ad = dora_bwd(ts, &ts->mods[mi], slice_row(ts, site, slice), ls, dout, in, W, M, K,
                         n_out, &dy_h);
        if (!dy_h) dout = dy_ad;
    }
    if (!model_base_linear_bwd_typed(ts->m, l, ls, din, dout, M, acc)) {
        if (din && !acc) zero(ts, din, (size_t)M * K);
        matmul_bwd_lazy(ts, din, G(ts, W), G(ts, bias), dout, in, W, M, K, n_out);
    }
    if (mi < 0) return;
    LoraMod *lm = &ts->mods[mi];
    int r = ts->setup.lora_rank;
    size_t row = (size_t)slice_row(ts, site, slice);
    if (slice == 0) zero(ts, ts->du, (size_t)M * r);
    /* DoRA with dropout: dh += Wᵀ · ((g - 1) ⊙ dy), slice by slice (the fused c_attn's three
     * add up before the dropout's backward at the last) */
    int dh_open = dy_h && din;
    if (dh_open && !model_base_linear_bwd_typed(ts->m, l, ls, ts->dh, dy_h, M, slice > 0)) {
        if (slice == 0) zero(ts, ts->dh, (size_t)M * K);
        be->ops->matmul_bwd(be, ts->dh, NULL, NULL, dy_h, NULL, W, M, K, n_out);
    }
    // y += u · Bᵀ (u = s · h · Aᵀ)  =>  du += dy · B,  dB += dyᵀ · u
    be->ops->matmul_bwd(be, ts->du, lm->dB + row * r, NULL, dy_ad, lm->u, lm->B + row * r, M, r,
                        n_out);
    if (!last_slice) return;
    // u = s · h · Aᵀ  =>  dh += s · du · A,  dA += s · duᵀ · h (du scaled first: r columns)
    be->ops->scale(be, ts->du, (size_t)M * r, ts->lora_scale);
    if (lm->h) {
        if (!dh_open) zero(ts, ts->dh, (size_t)M * K);
        be->ops->matmul_bwd(be, ts->dh, lm->dA, NULL, ts->du, lm->h, lm->A, M, K, r);
        if (din) {
            be->ops->dropout(be, ts->dh, ts->dh, (size_t)M * K, ts->setup.lora_dropout,
                             drop_seed(ts, lm));
            be->ops->add_fwd(be, din, din, ts->dh, (size_t)M * K);
        }
    } else {
        be->ops->matmul_bwd(be, din, lm->dA, NULL, ts->du, in, lm->A, M, K, r);
    }
}

static void norm_bwd(TrainState *ts, float *din, const float *dout, const float *in, const float *w,
                     const float *b, int R) {
    const ModelConfig *c = &ts->m->cfg;
    if (c->norm == NORM_RMS)
        ts->be->ops->rmsnorm_bwd(ts->be, din, G(ts, w), dout, in, w, c->norm_eps, R, c->C);
    else
        ts->be->ops->layernorm_bwd(ts->be, din, G(ts, w), G(ts, b), dout, in, w, c->norm_eps, R,
                                   c->C);
}

// --- P-tuning: the prefix is tiny (P rows), built and differentiated on the host

static void host_get(TrainState *ts, float *dst, const float *src, size_t n) {
    ts->be->ops->download(ts->be, dst, src, n * sizeof(float));
}

/* pre = E, or tanh(E·W1ᵀ + b1)·W2ᵀ + b2 (PEFT's PrefixEncoder with prefix_projection). */
static void prefix_build(TrainState *ts) {
    int P = ts->P, H = ts->setup.prefix_hidden;
    size_t PW = ts->PW;
    if (ts->pre_frozen) return; /* the model's own, uploaded once */
    if (!ts->setup.prefix_projection) {
        host_get(ts, ts->pre, ts->p_emb, (size_t)P * PW);
    } else {
        size_t D = (size_t)ts->m->cfg.KVH * ts->m->cfg.HS;
        float *E = xmalloc(sizeof(float) * P * D), *W1 = xmalloc(sizeof(float) * H * D),
              *b1 = xmalloc(sizeof(float) * H), *W2 = xmalloc(sizeof(float) * PW * H),
              *b2 = xmalloc(sizeof(float) * PW);
        host_get(ts, E, ts->p_emb, (size_t)P * D);
        host_get(ts, W1, ts->p_w1, (size_t)H * D);
        host_get(ts, b1, ts->p_b1, (size_t)H);
        host_get(ts, W2, ts->p_w2, PW * H);
        host_get(ts, b2, ts->p_b2, PW);
        for (int p = 0; p < P; p++) {
            for (int h = 0; h < H; h++) {
                double z = b1[h];
                for (size_t d = 0; d < D; d++)
                    z += (double)E[p * D + d] * (double)W1[h * D + d];
                ts->p_h[(size_t)p * H + h] = (float)tanh(z);
            }
            for (size_t o = 0; o < PW; o++) {
                double y = b2[o];
                for (int h = 0; h < H; h++)
                    y += (double)ts->p_h[(size_t)p * H + h] * (double)W2[o * H + h];
                ts->pre[p * PW + o] = (float)y;
            }
        }
        free(E);
        free(W1);
        free(b1);
        free(W2);
        free(b2);
    }
    ts->be->ops->upload(ts->be, ts->pre_dev, ts->pre, sizeof(float) * (size_t)P * PW);
}

/* Adds n host floats g into the backend gradient buffer dst. */
static void grad_add(TrainState *ts, float *dst, const float *g, size_t n) {
    float *h = xmalloc(sizeof(float) * n);
    host_get(ts, h, dst, n);
    for (size_t i = 0; i < n; i++)
        h[i] += g[i];
    ts->be->ops->upload(ts->be, dst, h, sizeof(float) * n);
    free(h);
}

/* Gradients of the prefix parameters from d(pre) (pre_grad, host). */
static void prefix_backward(TrainState *ts) {
    int P = ts->P, H = ts->setup.prefix_hidden;
    size_t PW = ts->PW;
    if (!ts->setup.prefix_projection) {
        grad_add(ts, ts->g_emb, ts->pre_grad, (size_t)P * PW);
        return;
    }
    size_t D = (size_t)ts->m->cfg.KVH * ts->m->cfg.HS;
    float *E = xmalloc(sizeof(float) * P * D), *W1 = xmalloc(sizeof(float) * H * D),
          *W2 = xmalloc(sizeof(float) * PW * H);
    host_get(ts, E, ts->p_emb, (size_t)P * D);
    host_get(ts, W1, ts->p_w1, (size_t)H * D);
    host_get(ts, W2, ts->p_w2, PW * H);
    float *gE = xcalloc((size_t)P * D, sizeof(float)), *gW1 = xcalloc((size_t)H * D, sizeof(float)),
          *gb1 = xcalloc((size_t)H, sizeof(float)), *gW2 = xcalloc(PW * H, sizeof(float)),
          *gb2 = xcalloc(PW, sizeof(float)), *dz = xmalloc(sizeof(float) * H);
    for (int p = 0; p < P; p++) {
        const float *dy = ts->pre_grad + p * PW, *hh = ts->p_h + (size_t)p * H;
        for (size_t o = 0; o < PW; o++) {
            gb2[o] += dy[o];
            for (int h = 0; h < H; h++)
                gW2[o * H + h] += dy[o] * hh[h];
        }
        for (int h = 0; h < H; h++) {
            double dh = 0;
            for (size_t o = 0; o < PW; o++)
                dh += (double)dy[o] * (double)W2[o * H + h];
            dz[h] = (float)(dh * (1.0 - (double)hh[h] * (double)hh[h]));
            gb1[h] += dz[h];
            for (size_t d = 0; d < D; d++) {
                gW1[h * D + d] += dz[h] * E[p * D + d];
                gE[p * D + d] += dz[h] * W1[h * D + d];
            }
        }
    }
    grad_add(ts, ts->g_emb, gE, (size_t)P * D);
    grad_add(ts, ts->g_w1, gW1, (size_t)H * D);
    grad_add(ts, ts->g_b1, gb1, (size_t)H);
    grad_add(ts, ts->g_w2, gW2, PW * H);
    grad_add(ts, ts->g_b2, gb2, PW);
    free(E);
    free(W1);
    free(W2);
    free(gE);
    free(gW1);
    free(gb1);
    free(gW2);
    free(gb2);
    free(dz);
}

/* k_full, v_full (B, P+T, KD): the prefix rows of layer l, then the new rows kn, vn (B*T, KD). */
static void prefix_scatter(TrainState *ts, int l, float *kf, float *vf, const float *kn,
                           const float *vn, int Bn, int T) {
    const BackendOps *op = ts->be->ops;
    size_t KD = (size_t)ts->m->cfg.KVH * ts->m->cfg.HS, P = (size_t)ts->P, rowb = (P + T) * KD;
    for (int b = 0; b < Bn; b++) {
        for (size_t p = 0; p < P; p++) {
            const float *src = ts->pre_dev + p * ts->PW + (size_t)l * 2 * KD;
            op->copy(ts->be, kf + b * rowb + p * KD, src, KD * sizeof(float));
            op->copy(ts->be, vf + b * rowb + p * KD, src + KD, KD * sizeof(float));
        }
        op->copy(ts->be, kf + b * rowb + P * KD, kn + (size_t)b * T * KD,
                 (size_t)T * KD * sizeof(float));
        op->copy(ts->be, vf + b * rowb + P * KD, vn + (size_t)b * T * KD,
                 (size_t)T * KD * sizeof(float));
    }
}

/* The reverse: dk, dv (B*T, KD) from dkf, dvf; the prefix rows summed over the batch into
 * pre_grad (host). */
static void prefix_gather(TrainState *ts, int l, float *dk, float *dv, int Bn, int T) {
    size_t KD = (size_t)ts->m->cfg.KVH * ts->m->cfg.HS, P = (size_t)ts->P, rowb = (P + T) * KD;
    float *h = xmalloc(sizeof(float) * P * KD * 2);
    for (int b = 0; b < Bn; b++) {
        ts->be->ops->copy(ts->be, dk + (size_t)b * T * KD, ts->dkf + b * rowb + P * KD,
                          (size_t)T * KD * sizeof(float));
        ts->be->ops->copy(ts->be, dv + (size_t)b * T * KD, ts->dvf + b * rowb + P * KD,
                          (size_t)T * KD * sizeof(float));
        host_get(ts, h, ts->dkf + b * rowb, P * KD);
        host_get(ts, h + P * KD, ts->dvf + b * rowb, P * KD);
        for (size_t p = 0; p < P; p++) {
            float *g = ts->pre_grad + p * ts->PW + (size_t)l * 2 * KD;
            for (size_t i = 0; i < KD; i++) {
                g[i] += h[p * KD + i];
                g[KD + i] += h[P * KD + p * KD + i];
            }
        }
    }
    free(h);
}

// --- prompt tuning, P-tuning v1: the virtual tokens open every row's input embeddings

/* The encoder's output from its current parameters into vt_dev (and ts->enc.out, host). */
static void prompt_build(TrainState *ts) {
    host_get(ts, ts->enc_g, ts->ad, ts->n_ad); /* enc_g: free until the backward */
    prompt_enc_fwd(&ts->enc, ts->enc_g);
    ts->be->ops->upload(ts->be, ts->vt_dev, ts->enc.out,
                        sizeof(float) * (size_t)ts->VT * ts->m->cfg.C);
}

/* The caller's (Bn, T - VT) ids and targets into the rows with the virtual tokens' slots (their
 * ids a placeholder the embedding overwrites, their targets none). */
static void prompt_rows(TrainState *ts, const int32_t *ids, const int32_t *targets, int Bn) {
    int T = ts->T, VT = ts->VT, Tu = T - VT;
    for (int b = 0; b < Bn; b++) {
        for (int p = 0; p < VT; p++) {
            ts->x_ids[(size_t)b * T + p] = 0;
            ts->x_tg[(size_t)b * T + p] = -100;
        }
        memcpy(ts->x_ids + (size_t)b * T + VT, ids + (size_t)b * Tu, sizeof(int32_t) * Tu);
        memcpy(ts->x_tg + (size_t)b * T + VT, targets + (size_t)b * Tu, sizeof(int32_t) * Tu);
    }
}

/* The gradient of the virtual tokens, summed over the rows of dx, through the encoder. */
static void prompt_backward(TrainState *ts, int Bn) {
    size_t n = (size_t)ts->VT * ts->m->cfg.C;
    memset(ts->vt_grad, 0, sizeof(float) * n);
    for (int b = 0; b < Bn; b++) {
        host_get(ts, ts->vt_dx, ts->dx + (size_t)b * ts->T * ts->m->cfg.C, n);
        for (size_t i = 0; i < n; i++)
            ts->vt_grad[i] += ts->vt_dx[i];
    }
    memset(ts->enc_g, 0, sizeof(float) * ts->n_ad);
    prompt_enc_bwd(&ts->enc, ts->vt_grad, ts->enc_g);
    grad_add(ts, ts->ad_grad, ts->enc_g, ts->n_ad);
}

int train_prompt(TrainState *ts, float **emb) {
    if (!ts->VT) return 0;
    prompt_build(ts);
    *emb = ts->enc.out;
    return ts->VT;
}

int train_prefix(TrainState *ts, float **prefix) {
    if (!ts->P) return 0;
    prefix_build(ts);
    *prefix = ts->pre;
    return ts->P;
}

// --- the step

/* The decoder core's linear layers for training: linear_fwd with the run's LoRA modules (GPT-2's
 * fused c_attn: the q, k and v slices of one module). */
/* The adapter site and slice of the model's linear layer s (GPT-2's q, k, v: slices of c_attn) */
static int adapter_site(const TrainState *ts, LoraSite s, int *slice) {
    int fused = ts->m->cfg.arch == ARCH_GPT2 && s <= LORA_V;
    *slice = fused ? (int)s - LORA_Q : 0;
    return fused ? SITE_QKV : (int)site_of[s];
}

static void train_linear(void *ctx, int l, LoraSite site, float *out, const float *in,
                         const float *W, const float *bias, int M, int K, int N) {
    TrainState *ts = ctx;
    int slice, as = adapter_site(ts, site, &slice);
    linear_fwd(ts, l, as, slice, out, in, W, bias, M, K, N);
}

/* train_linear at several sites over one input (the decoder's q, k and v): the base layers in
 * one model_base_linear_n (the backend may pack the input once for all), then each adapter. The
 * same ops on each output in the same order as train_linear's. */
static void train_linear_n(void *ctx, int l, int n, const LoraSite *sites, float *const *outs,
                           const float *in, const float *const *Ws, const float *const *biases,
                           int M, int K, const int *Ns) {
    TrainState *ts = ctx;
    TUNA_ASSERT(n <= 8);
    const float *base_b[8] = {0}; /* DoRA adds the bias after its scaling: products without */
    for (int i = 0; i < n && i < 8; i++) {
        int slice, as = adapter_site(ts, sites[i], &slice);
        base_b[i] = is_dora(ts, l, as) ? NULL : biases[i];
    }
    model_base_linear_n(ts->m, l, n, sites, outs, in, Ws, base_b, M, K, Ns);
    for (int i = 0; i < n; i++) {
        int slice, as = adapter_site(ts, sites[i], &slice);
        adapter_fwd(ts, l, as, slice, outs[i], in, Ws[i], biases[i], M, K, Ns[i]);
    }
}

/* Forward of layer l of a micro-batch of Bn rows, from a->x_in into a's activations and the
 * layer's output into xout. xout NULL: the recompute of a checkpointed layer in the backward,
 * which stops at what the backward reads (of the down projection only the adapter's u and h,
 * no residual add). The same ops on the same inputs as the forward: bit-identical values. */
static void layer_fwd(TrainState *ts, int l, LayerActs *a, float *xout, int Bn) {
    const Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    int T = ts->T, M = Bn * T, KD = c->KVH * c->HS;
    Decoder d = {.m = m, .linear = train_linear, .linear_n = train_linear_n, .ctx = ts};
    /* with a prefix, new k and v go to scratch (dk, dv are free in the forward) and are
     * then placed after the prefix rows of each batch row */
    float *kk = ts->P ? ts->dk : a->k, *vd = ts->P ? ts->dv : a->v;
    DecoderQKV qkv = {.xn = a->xn1,
                      .q_raw = a->qraw,
                      .q = a->q,
                      .k_raw = a->kraw,
                      .k = kk,
                      .v = vd,
                      .pos = ts->pos};
    decoder_qkv(&d, l, M, a->x_in, &qkv);
    if (ts->P) prefix_scatter(ts, l, a->k, a->v, kk, vd, Bn, T);
    int Tk = T + ts->P;
    ts->be->ops->attention_fwd(ts->be, a->att, a->q, a->k, a->v, Bn, T, Tk, (size_t)Tk * KD, c->NH,
                               c->KVH, c->HS, c->sliding_window, ts->spans ? ts->kv_lo : NULL);
    DecoderMLP mlp = {.att = a->att,
                      .x_in = a->x_in,
                      .x_mid = a->x_mid,
                      .xn = a->xn2,
                      .gate = a->gate,
                      .up = a->up,
                      .act = a->act,
                      .tmp = ts->tmp,
                      .x_out = xout};
    decoder_out_mlp(&d, l, M, &mlp);
    if (!xout && ts->site_mod && ts->site_mod[l][SITE_DOWN] >= 0)
        lora_u_fwd(ts, &ts->mods[ts->site_mod[l][SITE_DOWN]], a->act, M, c->FF);
}

/* The token embeddings of ids (M = Bn * T rows) plus GPT-2's learned positions into x; noise:
 * NEFTune's on the token embeddings (as transformers' hook on the input embedding module: before
 * the positions; the virtual tokens' slots are overwritten after it) */
static void embed_fwd(TrainState *ts, float *x, const int32_t *ids, int Bn, int noise) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    const BackendOps *op = ts->be->ops;
    int T = ts->T, M = Bn * T, C = c->C;
    model_embed(m, x, ids, M);
    if (noise && ts->setup.neftune_alpha > 0) { /* torch: alpha / sqrt(dims), in float */
        float mag = ts->setup.neftune_alpha / sqrtf((float)((T - ts->VT) * C));
        op->noise_add(ts->be, x, (size_t)M * C, mag, step_key(ts) ^ 0x4E4546544E4F4953ULL);
    }
    for (int b = 0; ts->VT && b < Bn; b++) /* the virtual tokens, before GPT-2's positions */
        op->copy(ts->be, x + (size_t)b * T * C, ts->vt_dev, sizeof(float) * (size_t)ts->VT * C);
    if (c->learned_pos && ts->spans) { /* positions restart inside the row: gather them */
        op->embed_fwd(ts->be, ts->tmp, ts->pos, m->wpe, M, C);
        op->add_fwd(ts->be, x, x, ts->tmp, (size_t)M * C);
    } else if (c->learned_pos) {
        for (int b = 0; b < Bn; b++)
            op->add_fwd(ts->be, x + (size_t)b * T * C, x + (size_t)b * T * C,
                        m->wpe + (size_t)ts->P * C, (size_t)T * C);
    }
}

/* The LM head and cross-entropy on the R positions that have a target (SFT masks the prompts):
 * the head is most of a small model's work (stories15M: 9.2M of 15M multiply-adds per token).
 * Their rows of xnf move to the front (row by row, never onto an unread row); each row's
 * logits, loss and gradient are the same computation as on all M rows. A chunk of rows at a
 * time (head_chunk): logits, loss, and with backward at once their dlogits' share of dxn (the R
 * rows back in their places afterwards) and of the head's gradient. Returns R; *loss_sum the
 * summed loss. */
/* train_step_rows: each row's sum of target log-probs (minus its losses) and target count. */
static void head_row_sums(TrainState *ts, int R, int M) {
    int Bn = M / ts->T;
    for (int b = 0; b < Bn; b++) {
        ts->row_logp[b] = 0;
        ts->row_n[b] = 0;
    }
    for (int r = 0; r < R; r++) {
        int b = ts->head_rows[r] / ts->T;
        ts->row_logp[b] -= (double)ts->losses[r];
        ts->row_n[b]++;
    }
    if (!ts->stats_on) return;
    memset(ts->row_stat, 0, sizeof(double) * 4 * (size_t)Bn);
    for (int r = 0; r < R; r++) {
        double *st = ts->row_stat + (size_t)(ts->head_rows[r] / ts->T) * 4;
        for (int k = 0; k < 3; k++)
            st[k] += (double)ts->head_stats[(size_t)r * 3 + k];
        st[3] += 1;
    }
}

static int head_fwd_bwd(TrainState *ts, const int32_t *targets, int M, float loss_scale,
                        int backward, double *loss_sum) {
    Model *m = ts->m;
    const BackendOps *op = ts->be->ops;
    int C = m->cfg.C, V = m->cfg.V, R = 0;
    for (int i = 0; i < M; i++)
        if (targets[i] != -100) {
            ts->head_rows[R] = i;
            ts->head_targets[R++] = targets[i];
        }
    if (R < M)
        for (int r = 0; r < R; r++)
            if (ts->head_rows[r] != r)
                op->copy(ts->be, ts->xnf + (size_t)r * C, ts->xnf + (size_t)ts->head_rows[r] * C,
                         sizeof(float) * (size_t)C);
    float *dxr = R < M ? ts->tmp : ts->dxn; /* the R rows' gradient, then back in place */
    if (backward) {
        zero(ts, ts->dxn, (size_t)M * C);
        if (R && R < M) zero(ts, dxr, (size_t)R * C);
    }
    int hc = (int)head_chunk(ts->N, (size_t)V);
    double sum = 0;
    /* train_step_rows with a callback: a first pass of the losses alone gives each row's
     * log-prob, the callback its scale, and the pass below scales each row's dlogits by it */
    int two = ts->rows_on && backward;
    for (int r0 = 0; two && r0 < R; r0 += hc) {
        int rc = R - r0 < hc ? R - r0 : hc;
        model_head(m, ts->logits, ts->xnf + (size_t)r0 * C, rc);
        op->xent_fwd_bwd(ts->be, NULL, ts->losses + r0, ts->logits, ts->head_targets + r0, rc, V,
                         1.0f, 0.0f, XENT_PLAIN);
        if (ts->stats_on)
            op->logit_stats(ts->be, ts->head_stats + (size_t)r0 * 3, ts->logits,
                            ts->head_targets + r0, rc, V);
    }
    if (two) {
        head_row_sums(ts, R, M);
        ts->row_fn(ts->row_ctx, ts->row_logp, ts->row_n, M / ts->T, ts->row_scale);
    }
    for (int r0 = 0; r0 < R; r0 += hc) {
        int rc = R - r0 < hc ? R - r0 : hc;
        const float *xr = ts->xnf + (size_t)r0 * C;
        model_head(m, ts->logits, xr, rc);
        if (ts->stats_on && !two) /* before the gradient overwrites the logits */
            op->logit_stats(ts->be, ts->head_stats + (size_t)r0 * 3, ts->logits,
                            ts->head_targets + r0, rc, V);
        /* label smoothing: the objectives that take the plain loss (sft, pt); the preference
         * stages' log-probs (train_step_rows) are the plain ones */
        float smooth = ts->rows_on ? 0.0f : ts->setup.label_smoothing;
        XentWeight wt = XENT_PLAIN;
        if (!ts->rows_on && ts->setup.dft) wt.kind = XENT_W_DFT;
        if (!ts->rows_on && ts->setup.eaft) wt = (XentWeight){XENT_W_EAFT, ts->setup.eaft_alpha};
        op->xent_fwd_bwd(ts->be, backward ? ts->logits : NULL, ts->losses + r0, ts->logits,
                         ts->head_targets + r0, rc, V, loss_scale, smooth, wt);
        for (int a = 0, e; two && a < rc; a = e) { /* the runs of one row's positions */
            int row = ts->head_rows[r0 + a] / ts->T;
            for (e = a + 1; e < rc && ts->head_rows[r0 + e] / ts->T == row; e++)
                ;
            op->scale(ts->be, ts->logits + (size_t)a * V, (size_t)(e - a) * V, ts->row_scale[row]);
        }
        if (backward) {
            if (m->head_q) /* a typed head is frozen: the input gradient only */
                model_head_bwd_in(m, dxr + (size_t)r0 * C, ts->logits, rc);
            else
                matmul_bwd_lazy(ts, dxr + (size_t)r0 * C, G(ts, m->lm_head), NULL, ts->logits, xr,
                                m->lm_head, rc, C, V);
            if (ts->n_tok) tokens_grad_head(ts, ts->logits, xr, rc);
        }
    }
    for (int r = 0; r < R; r++)
        sum += (double)ts->losses[r];
    if ((ts->rows_on || ts->stats_on) && !two) head_row_sums(ts, R, M);
    if (backward && R < M)
        for (int r = 0; r < R; r++)
            op->copy(ts->be, ts->dxn + (size_t)ts->head_rows[r] * C, dxr + (size_t)r * C,
                     sizeof(float) * (size_t)C);
    *loss_sum = sum;
    return R;
}

/* Attention's backward of layer l from datt to dq, dk and dv (through the prefix's keys and
 * values with P-tuning, RoPE and q/k-norm). *dqin and *dkin: where the q and k projections'
 * output gradients are afterwards (dq and dk, or scratch after q/k-norm). */
static void attn_bwd(TrainState *ts, int l, const LayerActs *a, int Bn, float **dqin,
                     float **dkin) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    Backend *be = ts->be;
    const BackendOps *op = be->ops;
    int T = ts->T, M = Bn * T, HS = c->HS, NH = c->NH, KVH = c->KVH, QD = NH * HS, KD = KVH * HS;
    zero(ts, ts->dq, (size_t)M * QD);
    if (ts->P) {
        int Tk = T + ts->P;
        zero(ts, ts->dkf, (size_t)Bn * Tk * KD);
        zero(ts, ts->dvf, (size_t)Bn * Tk * KD);
        op->attention_bwd(be, ts->dq, ts->dkf, ts->dvf, ts->datt, a->q, a->k, a->v, Bn, T, Tk,
                          (size_t)Tk * KD, NH, KVH, HS, c->sliding_window, NULL);
        prefix_gather(ts, l, ts->dk, ts->dv, Bn, T);
    } else {
        zero(ts, ts->dk, (size_t)M * KD);
        zero(ts, ts->dv, (size_t)M * KD);
        op->attention_bwd(be, ts->dq, ts->dk, ts->dv, ts->datt, a->q, a->k, a->v, Bn, T, T,
                          (size_t)T * KD, NH, KVH, HS, c->sliding_window,
                          ts->spans ? ts->kv_lo : NULL);
    }
    if (!c->learned_pos) {
        op->rope_bwd(be, ts->dq, ts->pos, m->inv_freq, M, NH, HS, HS);
        op->rope_bwd(be, ts->dk, ts->pos, m->inv_freq, M, KVH, HS, HS);
    }
    *dqin = ts->dq, *dkin = ts->dk;
    if (c->qk_norm) { /* through the per-head RMSNorm: reuse datt and tmp as scratch */
        zero(ts, ts->datt, (size_t)M * QD);
        op->rmsnorm_bwd(be, ts->datt, G(ts, w->q_norm), ts->dq, a->qraw, w->q_norm, c->norm_eps,
                        M * NH, HS);
        zero(ts, ts->tmp, (size_t)M * KD);
        op->rmsnorm_bwd(be, ts->tmp, G(ts, w->k_norm), ts->dk, a->kraw, w->k_norm, c->norm_eps,
                        M * KVH, HS);
        *dqin = ts->datt;
        *dkin = ts->tmp;
    }
}

/* The backward of layer l, the mirror of layer_fwd: ts->dx holds the gradient of the layer's
 * output on entry and of its input on return. */
static void layer_bwd(TrainState *ts, int l, int Bn) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    const BackendOps *op = ts->be->ops;
    LayerActs *a = &ts->acts[l];
    const LayerWeights *w = &m->layers[l];
    int M = Bn * ts->T, C = c->C, QD = c->NH * c->HS, KD = c->KVH * c->HS, FF = c->FF;
    int fused = c->arch == ARCH_GPT2;
    /* checkpointed: the layer's activations again from its input (dx stays; the recompute
     * writes only the shared set, tmp, dys and, with a prefix, dk and dv). The last layer's
     * are still there from the forward. */
    if (ts->ckpt && l < c->L - 1) {
        ts->recompute = 1;
        layer_fwd(ts, l, a, NULL, Bn);
        ts->recompute = 0;
    }
    // MLP (each gradient buffer's first writer overwrites it: acc 0, no zeroing pass)
    linear_bwd(ts, l, SITE_DOWN, 0, 1, 0, ts->dact, ts->dx, a->act, w->w_down, w->b_down, M, FF, C);
    int silu = c->act == ACT_SILU;
    if (silu) {
        op->swiglu_bwd(ts->be, ts->dgate, ts->dup, ts->dact, a->gate, a->up, (size_t)M * FF, 0);
        linear_bwd(ts, l, SITE_GATE, 0, 1, 0, ts->dxn, ts->dgate, a->xn2, w->w_gate, w->b_gate, M,
                   C, FF);
    } else {
        zero(ts, ts->dup, (size_t)M * FF);
        op->gelu_bwd(ts->be, ts->dup, ts->dact, a->up, (size_t)M * FF, c->act == ACT_GELU_TANH);
    }
    linear_bwd(ts, l, SITE_UP, 0, 1, silu, ts->dxn, ts->dup, a->xn2, w->w_up, w->b_up, M, C, FF);
    norm_bwd(ts, ts->dx, ts->dxn, a->x_mid, w->ln2_w, w->ln2_b, M);
    // attention
    linear_bwd(ts, l, SITE_O, 0, 1, 0, ts->datt, ts->dx, a->att, w->wo, w->bo, M, QD, C);
    float *dqin, *dkin;
    attn_bwd(ts, l, a, Bn, &dqin, &dkin);
    linear_bwd(ts, l, fused ? SITE_QKV : SITE_Q, 0, !fused, 0, ts->dxn, dqin, a->xn1, w->wq, w->bq,
               M, C, QD);
    linear_bwd(ts, l, fused ? SITE_QKV : SITE_K, fused ? 1 : 0, !fused, 1, ts->dxn, dkin, a->xn1,
               w->wk, w->bk, M, C, KD);
    linear_bwd(ts, l, fused ? SITE_QKV : SITE_V, fused ? 2 : 0, 1, 1, ts->dxn, ts->dv, a->xn1,
               w->wv, w->bv, M, C, KD);
    norm_bwd(ts, ts->dx, ts->dxn, a->x_in, w->ln1_w, w->ln1_b, M);
}

int train_step_fb(TrainState *ts, const int32_t *ids, const int32_t *targets, int B_used,
                  float loss_scale, int backward, double *loss_sum, int *n_targets, TunaErr *err) {
    Model *m = ts->m;
    const ModelConfig *c = &m->cfg;
    Backend *be = ts->be;
    const BackendOps *op = be->ops;
    if (B_used < 1 || B_used > ts->B)
        return tuna_errf(err, TUNA_EINVAL, "batch of %d rows for a state sized for %d", B_used,
                         ts->B);
    int Bn = B_used, M = Bn * ts->T, C = c->C;
    for (int i = 0; i < Bn * (ts->T - ts->VT); i++)
        if (ids[i] < 0 || ids[i] >= c->V)
            return tuna_errf(err, TUNA_EINVAL, "token id %d outside the vocabulary (%d)", ids[i],
                             c->V);
    if (ts->VT) { /* the rows with the virtual tokens' slots from here on */
        prompt_build(ts);
        prompt_rows(ts, ids, targets, Bn);
        ids = ts->x_ids;
        targets = ts->x_tg;
    }

    // --- forward
    if (ts->P) {
        prefix_build(ts);
        memset(ts->pre_grad, 0, sizeof(float) * (size_t)ts->P * ts->PW);
    }
    if (ts->n_tok) tokens_sync(ts);
    embed_fwd(ts, ts->acts[0].x_in, ids, Bn, backward);
    for (int l = 0; l < c->L; l++)
        layer_fwd(ts, l, &ts->acts[l], l + 1 < c->L ? ts->acts[l + 1].x_in : ts->x_L, Bn);
    decoder_norm(m, ts->xnf, ts->x_L, m->lnf_w, m->lnf_b, M);
    if (ts->hidden_fn) {
        if (backward) zero(ts, ts->dxn, (size_t)M * C);
        ts->hidden_fn(ts->hidden_ctx, be, ts->xnf, backward ? ts->dxn : NULL, Bn, ts->T, C);
        *n_targets = 0;
        *loss_sum = 0;
    } else {
        *n_targets = head_fwd_bwd(ts, targets, M, loss_scale, backward, loss_sum);
    }

    // --- backward (the head's is done: dxn holds the final norm's output gradient)
    if (backward) {
        zero(ts, ts->dx, (size_t)M * C);
        norm_bwd(ts, ts->dx, ts->dxn, ts->x_L, m->lnf_w, m->lnf_b, M);
        for (int l = c->L - 1; l >= 0; l--) {
            layer_bwd(ts, l, Bn);
            lazy_flush(ts, l); /* the layer's gradients are final: none left pending */
            if (ts->grad_fn) ts->grad_fn(ts->grad_ctx, l);
        }
        embed_bwd_wte(ts, ids, M);
        if (ts->n_tok) tokens_grad_embed(ts, ts->dx, ids, M);
        if (c->learned_pos && G(ts, m->wpe))
            op->embed_bwd(be, G(ts, m->wpe), ts->dx, ts->pos, M, C);
        if (ts->P && !ts->pre_frozen) prefix_backward(ts);
        if (ts->VT) prompt_backward(ts, Bn);
        lazy_flush(ts, INT_MIN);
        if (ts->grad_fn) ts->grad_fn(ts->grad_ctx, -1);
    }
    lazy_flush(ts, INT_MIN); /* after a forward alone too: the gradients read as zeroed */
    int rc = op->sync(be);
    if (rc) return tuna_errf(err, rc, "%s", be->err.msg);
    return 0;
}

int train_step_rows(TrainState *ts, const int32_t *ids, const int32_t *targets, int B_used,
                    TrainRowFn fn, void *ctx, double *logp, int *n, TunaErr *err) {
    if (B_used < 1 || B_used > ts->B)
        return tuna_errf(err, TUNA_EINVAL, "batch of %d rows for a state sized for %d", B_used,
                         ts->B);
    ts->rows_on = 1;
    ts->row_fn = fn;
    ts->row_ctx = ctx;
    double loss;
    int nt;
    int rc = train_step_fb(ts, ids, targets, B_used, 1.0f, fn != NULL, &loss, &nt, err);
    ts->rows_on = 0;
    ts->row_fn = NULL;
    ts->row_ctx = NULL;
    if (rc) return rc;
    for (int b = 0; b < B_used; b++) {
        if (logp) logp[b] = ts->row_logp[b];
        if (n) n[b] = ts->row_n[b];
    }
    return 0;
}

int train_step_hidden(TrainState *ts, const int32_t *ids, int B_used, TrainHiddenFn fn, void *ctx,
                      int backward, TunaErr *err) {
    ts->hidden_fn = fn;
    ts->hidden_ctx = ctx;
    double loss;
    int nt;
    int rc = train_step_fb(ts, ids, NULL, B_used, 1.0f, backward, &loss, &nt, err);
    ts->hidden_fn = NULL;
    ts->hidden_ctx = NULL;
    return rc;
}

// --- merge

int train_lora_view(TrainState *ts, ModelLora *out, TunaErr *err) {
    if (ts->setup.method != METHOD_LORA)
        return tuna_errf(err, TUNA_EINVAL, "train_lora_view: the method is not LoRA");
    int L = ts->m->cfg.L, r = ts->setup.lora_rank, dora = ts->setup.lora_dora;
    if (!ts->view_A) {
        ts->view_A = xcalloc((size_t)L, sizeof *ts->view_A);
        ts->view_B = xcalloc((size_t)L, sizeof *ts->view_B);
        if (dora) ts->view_G = xcalloc((size_t)L, sizeof *ts->view_G);
    }
    static const LoraSite to_model[N_SITES] = {
            [SITE_Q] = LORA_Q,   [SITE_K] = LORA_K,      [SITE_V] = LORA_V,
            [SITE_QKV] = LORA_Q, [SITE_O] = LORA_O,      [SITE_GATE] = LORA_GATE,
            [SITE_UP] = LORA_UP, [SITE_DOWN] = LORA_DOWN};
    for (int i = 0; i < ts->n_mods; i++) {
        LoraMod *lm = &ts->mods[i];
        int slices = lm->site == SITE_QKV ? 3 : 1; /* GPT-2's c_attn: q, k, v share A */
        for (int s = 0; s < slices; s++) {
            LoraSite ms = (LoraSite)(to_model[lm->site] + s);
            ts->view_A[lm->layer][ms] = lm->A;
            ts->view_B[lm->layer][ms] = lm->B + (size_t)slice_row(ts, lm->site, s) * r;
            if (dora) ts->view_G[lm->layer][ms] = lm->g_dev + slice_row(ts, lm->site, s);
        }
        if (dora) dora_prepare(ts, lm); /* g from the live A, B and magnitude */
    }
    if (ts->n_tok) tokens_sync(ts);
    *out = (ModelLora){.rank = r,
                       .scale = ts->lora_scale,
                       .A = ts->view_A,
                       .B = ts->view_B,
                       .G = dora ? ts->view_G : NULL};
    return 0;
}

int train_lora_merge(TrainState *ts, TunaErr *err) {
    Model *m = ts->m;
    Backend *be = ts->be;
    int r = ts->setup.lora_rank;
    if (m->n_qbytes)
        return tuna_errf(err, TUNA_EUNSUP,
                         "cannot merge a LoRA adapter into a quantized base in place; export the "
                         "merged model (tuna export dequantizes the base) or keep the adapter");
    if (ts->n_tok) tokens_sync(ts);
    for (int i = 0; i < ts->n_mods; i++) {
        LoraMod *lm = &ts->mods[i];
        size_t na = (size_t)r * lm->in, nb = (size_t)lm->out * r;
        float *A = xmalloc(sizeof(float) * na), *B = xmalloc(sizeof(float) * nb);
        be->ops->download(be, A, lm->A, na * sizeof(float));
        be->ops->download(be, B, lm->B, nb * sizeof(float));
        MergePart parts[3];
        int np = mod_parts(m, lm, parts);
        float *mag = NULL; /* DoRA: W ← magnitude / ||W + s·B·A|| ⊙ (W + s·B·A), row by row */
        if (lm->mag) {
            mag = xmalloc(sizeof(float) * (size_t)lm->out);
            be->ops->download(be, mag, lm->mag, sizeof(float) * (size_t)lm->out);
        }
        for (int pi = 0; pi < np; pi++) {
            size_t n = (size_t)parts[pi].rows * lm->in;
            float *W = xmalloc(sizeof(float) * n);
            be->ops->download(be, W, parts[pi].W, n * sizeof(float));
            for (int o = 0; o < parts[pi].rows; o++)
                for (int k = 0; k < lm->in; k++) {
                    double s = 0;
                    for (int j = 0; j < r; j++)
                        s += (double)B[(size_t)(parts[pi].row0 + o) * r + j] *
                             (double)A[(size_t)j * lm->in + k];
                    W[(size_t)o * lm->in + k] += (float)(s * (double)ts->lora_scale);
                }
            for (int o = 0; mag && o < parts[pi].rows; o++) {
                float *w = W + (size_t)o * lm->in;
                double ss = 0;
                for (int k = 0; k < lm->in; k++)
                    ss += (double)w[k] * (double)w[k];
                double f = (double)mag[parts[pi].row0 + o] / sqrt(ss);
                for (int k = 0; k < lm->in; k++)
                    w[k] = (float)((double)w[k] * f);
            }
            be->ops->upload(be, parts[pi].W, W, n * sizeof(float));
            free(W);
        }
        free(A);
        free(B);
        free(mag);
    }
    int rc = be->ops->sync(be);
    if (rc) return tuna_errf(err, rc, "%s", be->err.msg);
    return 0;
}
