#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dist.h"
#include "xalloc.h"

static const char *const sched_names[SCHED_N] = {"constant",
                                                 "constant_with_warmup",
                                                 "linear",
                                                 "cosine",
                                                 "cosine_with_restarts",
                                                 "polynomial",
                                                 "inverse_sqrt",
                                                 "cosine_with_min_lr",
                                                 "cosine_warmup_with_min_lr",
                                                 "warmup_stable_decay",
                                                 "reduce_lr_on_plateau"};

int sched_parse(const char *name) {
    for (int i = 0; i < SCHED_N; i++)
        if (!strcmp(name, sched_names[i])) return i;
    return -1;
}

const char *sched_names_list(void) {
    return "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, "
           "inverse_sqrt, cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay or "
           "reduce_lr_on_plateau";
}

/* the keyword arguments each schedule's function takes, space-separated (transformers 5.25's
 * signatures; constant and constant_with_warmup are called without them) */
static const char *const sched_keys[SCHED_N] = {
        "",
        "",
        "",
        "num_cycles",
        "num_cycles",
        "lr_end power",
        "timescale",
        "num_cycles min_lr min_lr_rate",
        "num_cycles min_lr min_lr_rate warmup_lr_rate",
        "num_decay_steps num_stable_steps warmup_type decay_type min_lr_ratio num_cycles",
        "mode factor patience threshold threshold_mode cooldown min_lr eps"};

static int has_key(const char *list, const char *key) {
    size_t n = strlen(key);
    for (const char *p = list; (p = strstr(p, key)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return 1;
    return 0;
}

/* kwargs' number `key` into *v (unchanged when absent or null); integral: a whole number */
static int kw_num(const cJSON *kw, const char *key, int integral, double *v, int *set,
                  TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(kw, key);
    if (set) *set = 0;
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
        (integral && it->valuedouble != floor(it->valuedouble)))
        return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler-kwargs: %s must be %s", key,
                         integral ? "a whole number" : "a number");
    *v = it->valuedouble;
    if (set) *set = 1;
    return 0;
}

/* wsd's warmup_type / decay_type: 0 linear, 1 cosine, 2 1-sqrt */
static int kw_kind(const cJSON *kw, const char *key, int *v, TunaErr *err) {
    static const char *const kinds[] = {"linear", "cosine", "1-sqrt"};
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(kw, key);
    if (!it) return 0;
    for (int i = 0; cJSON_IsString(it) && i < 3; i++)
        if (!strcmp(it->valuestring, kinds[i])) return *v = i, 0;
    return tuna_errf(err, TUNA_EINVAL,
                     "--lr-scheduler-kwargs: %s must be \"linear\", \"cosine\" or \"1-sqrt\"", key);
}

/* reduce_lr_on_plateau's mode / threshold_mode: *v 0 for a, 1 for b */
static int kw_word(const cJSON *kw, const char *key, const char *a, const char *b, int *v,
                   TunaErr *err) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(kw, key);
    if (!it) return 0;
    if (cJSON_IsString(it) && (!strcmp(it->valuestring, a) || !strcmp(it->valuestring, b)))
        return *v = !strcmp(it->valuestring, b), 0;
    return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler-kwargs: %s must be \"%s\" or \"%s\"", key, a,
                     b);
}

/* torch's ReduceLROnPlateau's arguments, checked as its constructor checks them */
static int plateau_args(Sched *s, const cJSON *kw, TunaErr *err) {
    double patience = 10, cooldown = 0;
    s->p_factor = 0.1;
    s->p_threshold = 1e-4;
    s->p_eps = 1e-8;
    int rc;
    if ((rc = kw_word(kw, "mode", "min", "max", &s->p_max, err)) ||
        (rc = kw_word(kw, "threshold_mode", "rel", "abs", &s->p_abs, err)) ||
        (rc = kw_num(kw, "factor", 0, &s->p_factor, NULL, err)) ||
        (rc = kw_num(kw, "patience", 1, &patience, NULL, err)) ||
        (rc = kw_num(kw, "threshold", 0, &s->p_threshold, NULL, err)) ||
        (rc = kw_num(kw, "cooldown", 1, &cooldown, NULL, err)) ||
        (rc = kw_num(kw, "min_lr", 0, &s->p_min_lr, NULL, err)) ||
        (rc = kw_num(kw, "eps", 0, &s->p_eps, NULL, err)))
        return rc;
    if (!(s->p_factor < 1.0))
        return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler-kwargs: factor must be below 1");
    if (patience < 0 || cooldown < 0 || patience > 1e9 || cooldown > 1e9)
        return tuna_errf(err, TUNA_EINVAL,
                         "--lr-scheduler-kwargs: patience and cooldown must be 0 or more");
    s->p_patience = (int)patience;
    s->p_cooldown = (int)cooldown;
    s->p_lr = s->lr;
    s->p_best = s->p_max ? -INFINITY : INFINITY;
    return 0;
}

static int sched_args(Sched *s, const cJSON *kw, TunaErr *err) {
    const char *name = sched_names[s->type];
    for (const cJSON *it = kw ? kw->child : NULL; it; it = it->next)
        if (!has_key(sched_keys[s->type], it->string)) {
            if (!*sched_keys[s->type])
                return tuna_errf(err, TUNA_EINVAL,
                                 "--lr-scheduler-kwargs: %s takes no arguments, got \"%s\"", name,
                                 it->string);
            return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler-kwargs: %s takes %s, not \"%s\"",
                             name, sched_keys[s->type], it->string);
        }
    if (s->type == SCHED_PLATEAU) return plateau_args(s, kw, err);
    double ts = 0, min_lr = 0, stable = 0, decay = 0;
    int have_ts, have_min_lr, have_rate, have_wlr, have_stable, have_decay, rc;
    if ((rc = kw_num(kw, "num_cycles", 0, &s->num_cycles, NULL, err)) ||
        (rc = kw_num(kw, "lr_end", 0, &s->lr_end, NULL, err)) ||
        (rc = kw_num(kw, "power", 0, &s->power, NULL, err)) ||
        (rc = kw_num(kw, "timescale", 1, &ts, &have_ts, err)) ||
        (rc = kw_num(kw, "min_lr", 0, &min_lr, &have_min_lr, err)) ||
        (rc = kw_num(kw, "min_lr_rate", 0, &s->min_lr_rate, &have_rate, err)) ||
        (rc = kw_num(kw, "warmup_lr_rate", 0, &s->warmup_lr_rate, &have_wlr, err)) ||
        (rc = kw_num(kw, "num_stable_steps", 1, &stable, &have_stable, err)) ||
        (rc = kw_num(kw, "num_decay_steps", 1, &decay, &have_decay, err)) ||
        (rc = kw_num(kw, "min_lr_ratio", 0, &s->min_lr_ratio, NULL, err)) ||
        (rc = kw_kind(kw, "warmup_type", &s->warmup_kind, err)) ||
        (rc = kw_kind(kw, "decay_type", &s->decay_kind, err)))
        return rc;
    if (!have_wlr) s->warmup_lr_rate = -1;
    switch (s->type) {
    case SCHED_POLYNOMIAL:
        if (!(s->lr > s->lr_end))
            return tuna_errf(err, TUNA_EINVAL,
                             "--lr-scheduler-kwargs: polynomial: lr_end (%g) must be smaller than "
                             "the learning rate (%g)",
                             s->lr_end, s->lr);
        break;
    case SCHED_INVERSE_SQRT:
        s->timescale = have_ts ? ts : s->warmup ? s->warmup : 10000;
        if (s->timescale == 0)
            return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler-kwargs: timescale must not be 0");
        break;
    case SCHED_COSINE_MIN_LR:
    case SCHED_COSINE_WARMUP_MIN_LR:
        if (have_min_lr && have_rate)
            return tuna_errf(err, TUNA_EINVAL,
                             "--lr-scheduler-kwargs: %s: only one of min_lr or min_lr_rate", name);
        if (!have_min_lr && !have_rate)
            return tuna_errf(err, TUNA_EINVAL,
                             "--lr-scheduler-kwargs: %s needs min_lr or min_lr_rate", name);
        if (have_min_lr) s->min_lr_rate = min_lr / s->lr;
        break;
    case SCHED_WSD:
        if (!have_decay)
            return tuna_errf(err, TUNA_EINVAL,
                             "--lr-scheduler-kwargs: warmup_stable_decay needs num_decay_steps");
        s->num_decay_steps = (int)decay;
        s->num_stable_steps = have_stable ? (int)stable : s->total - s->warmup - s->num_decay_steps;
        break;
    default: break;
    }
    return 0;
}

int sched_init(Sched *s, const char *name, const char *kwargs, double lr, int warmup, int total,
               TunaErr *err) {
    int t = sched_parse(name);
    if (t < 0)
        return tuna_errf(err, TUNA_EINVAL, "--lr-scheduler \"%s\": must be %s", name,
                         sched_names_list());
    *s = (Sched){.type = (SchedType)t,
                 .warmup = warmup,
                 .total = total,
                 .lr = lr,
                 .num_cycles = t == SCHED_COSINE_RESTARTS ? 1.0 : 0.5,
                 .lr_end = 1e-7,
                 .power = 1.0,
                 .warmup_lr_rate = -1,
                 .decay_kind = 1}; /* wsd: linear warmup, cosine decay */
    cJSON *kw = NULL;
    if (kwargs && *kwargs) {
        kw = cJSON_Parse(kwargs);
        if (!cJSON_IsObject(kw)) {
            cJSON_Delete(kw);
            return tuna_errf(
                    err, TUNA_EINVAL,
                    "--lr-scheduler-kwargs: \"%s\" is not a JSON object ({\"key\": value})",
                    kwargs);
        }
    }
    int rc = sched_args(s, kw, err);
    cJSON_Delete(kw);
    return rc;
}

/* the rise over the warmup, as every schedule but wsd and cosine_warmup_with_min_lr has it */
static double warm(int step, int warmup) {
    return (double)step / (double)(warmup > 1 ? warmup : 1);
}

/* the cosine with num_cycles waves from 1 at progress 0 */
static double wave(double num_cycles, double progress) {
    return 0.5 * (1.0 + cos(M_PI * num_cycles * 2.0 * progress));
}

static double wsd_factor(const Sched *s, int step) {
    double f = 0, r = s->min_lr_ratio;
    int w = s->warmup, st = s->num_stable_steps, d = s->num_decay_steps;
    if (step < w) {
        double p = warm(step, w);
        f = s->warmup_kind == 0   ? p
            : s->warmup_kind == 1 ? 0.5 * (1.0 - cos(M_PI * p))
                                  : 1.0 - sqrt(1.0 - p);
        f = f * (1.0 - r) + r;
        return f > 0 ? f : 0;
    }
    if (step < w + st) return 1.0;
    if (step < w + st + d) {
        double p = (double)(step - w - st) / (double)(d > 1 ? d : 1);
        f = s->decay_kind == 0   ? 1.0 - p
            : s->decay_kind == 1 ? wave(s->num_cycles, p)
                                 : 1.0 - sqrt(p);
        f = f * (1.0 - r) + r;
        return f > 0 ? f : 0;
    }
    return r;
}

void sched_eval(Sched *s, double m) {
    if (s->type != SCHED_PLATEAU) return;
    /* ReduceLROnPlateau.step: _is_better, the cooldown, _reduce_lr */
    double best = s->p_best, th = s->p_threshold;
    int better = !s->p_max ? (!s->p_abs ? m < best * (1.0 - th) : m < best - th)
                           : (!s->p_abs ? m > best * (th + 1.0) : m > best + th);
    if (better) {
        s->p_best = m;
        s->p_bad = 0;
    } else {
        s->p_bad++;
    }
    if (s->p_cool > 0) {
        s->p_cool--;
        s->p_bad = 0;
    }
    if (s->p_bad > s->p_patience) {
        double old = s->p_lr, nl = old * s->p_factor;
        if (nl < s->p_min_lr) nl = s->p_min_lr;
        if (old - nl > s->p_eps) s->p_lr = nl;
        s->p_cool = s->p_cooldown;
        s->p_bad = 0;
    }
}

double sched_lr(const Sched *s, int step) {
    return s->type == SCHED_PLATEAU ? s->p_lr : s->lr * sched_factor(s, step);
}

double sched_factor(const Sched *s, int step) {
    if (s->type == SCHED_PLATEAU) return s->p_lr / s->lr;
    int w = s->warmup, total = s->total;
    double rest = (double)(total - w > 1 ? total - w : 1), progress = (double)(step - w) / rest, f;
    switch (s->type) {
    case SCHED_CONSTANT: return 1.0;
    case SCHED_WSD: return wsd_factor(s, step);
    case SCHED_COSINE_WARMUP_MIN_LR: { /* transformers' _lr_rate variant: a step further on */
        double wf = w > 1 ? w : 1;
        if (step < w)
            return s->warmup_lr_rate < 0
                           ? ((double)step + 1.0) / wf
                           : s->warmup_lr_rate + (1.0 - s->warmup_lr_rate) * (double)step /
                                                         (double)(w - 1 > 1 ? w - 1 : 1);
        f = wave(s->num_cycles, ((double)step - w + 1.0) / rest);
        f = f * (1 - s->min_lr_rate) + s->min_lr_rate;
        return f > 0 ? f : 0;
    }
    default: break;
    }
    if (step < w) return warm(step, w);
    switch (s->type) {
    case SCHED_CONSTANT_WARMUP: return 1.0;
    case SCHED_LINEAR: f = (double)(total - step) / rest; return f > 0 ? f : 0;
    case SCHED_COSINE_RESTARTS:
        if (progress >= 1.0) return 0.0;
        f = 0.5 * (1.0 + cos(M_PI * fmod(s->num_cycles * progress, 1.0)));
        return f > 0 ? f : 0;
    case SCHED_POLYNOMIAL: {
        if (step > total) return s->lr_end / s->lr;
        double pct = 1.0 - (double)(step - w) / (double)(total - w > 0 ? total - w : 1);
        return ((s->lr - s->lr_end) * pow(pct, s->power) + s->lr_end) / s->lr;
    }
    case SCHED_INVERSE_SQRT: return 1.0 / sqrt(((double)step + (s->timescale - w)) / s->timescale);
    case SCHED_COSINE_MIN_LR:
        f = wave(s->num_cycles, progress) * (1 - s->min_lr_rate) + s->min_lr_rate;
        return f > 0 ? f : 0;
    default: /* SCHED_COSINE */ f = wave(s->num_cycles, progress); return f > 0 ? f : 0;
    }
}

/* The AdamW passes: runs of tensors' parts (this rank's slice; unsharded, the whole tensors)
 * end to end in values, gradients and moments that share the weight-decay flag and the lr
 * multiplier. */
static void build_spans(Optim *o, const TrainParam *tp) {
    o->n_spans = 0;
    for (int i = 0; i < o->n; i++) {
        if (!o->len[i]) continue;
        float *p = tp[i].data + o->first[i], *g = tp[i].grad + o->first[i];
        OptimSpan *last = o->n_spans ? &o->spans[o->n_spans - 1] : NULL;
        if (last && last->p + last->n == p && last->g + last->n == g &&
            last->decay == tp[i].decay && last->lr_mult == o->lr_mult[i]) {
            last->n += o->len[i]; /* m and v are end to end by construction */
            continue;
        }
        o->spans[o->n_spans++] =
                (OptimSpan){p, g, o->m[i], o->v[i], o->len[i], tp[i].decay, o->lr_mult[i]};
    }
}

int optim_init(Optim *o, Backend *be, const TrainParam *tp, int np, float b1, float b2, float eps,
               float wd, TunaErr *err) {
    return optim_init_shard(o, be, tp, np, b1, b2, eps, wd, 0, 1, err);
}

int optim_init_shard(Optim *o, Backend *be, const TrainParam *tp, int np, float b1, float b2,
                     float eps, float wd, int rank, int world, TunaErr *err) {
    TUNA_ASSERT(world >= 1 && rank >= 0 && rank < world);
    memset(o, 0, sizeof *o);
    o->b1 = b1;
    o->b2 = b2;
    o->eps = eps;
    o->wd = wd;
    o->n = np;
    o->be = be;
    o->rank = rank;
    o->world = world;
    o->p0 = np ? tp[0].data : NULL;
    size_t nt = (size_t)(np ? np : 1);
    o->m = xcalloc(nt, sizeof *o->m);
    o->v = xcalloc(nt, sizeof *o->v);
    o->first = xcalloc(nt, sizeof *o->first);
    o->len = xcalloc(nt, sizeof *o->len);
    o->off = xcalloc(nt, sizeof *o->off);
    o->lr_mult = xcalloc(nt, sizeof *o->lr_mult);
    o->spans = xcalloc(nt, sizeof *o->spans);
    o->bounds = xcalloc((size_t)world + 1, sizeof *o->bounds);
    size_t total = 0;
    for (int i = 0; i < np; i++) {
        o->off[i] = total;
        total += tp[i].n;
    }
    o->total = total;
    /* world near-equal ranges of the flat space (edges anywhere: AdamW is elementwise) */
    for (int r = 0; r <= world; r++)
        o->bounds[r] = (size_t)((unsigned long long)total * (unsigned)r / (unsigned)world);
    size_t lo = o->bounds[rank], hi = o->bounds[rank + 1];
    o->block_len = hi - lo;
    /* one block for each moment (a part per tensor), zeroed: two allocations */
    size_t nb = o->block_len;
    o->m_block = be->ops->alloc(be, sizeof(float) * (nb ? nb : 1));
    o->v_block = be->ops->alloc(be, sizeof(float) * (nb ? nb : 1));
    if (!o->m_block || !o->v_block) {
        optim_free(o);
        return tuna_errf(err, TUNA_ENOMEM, "cannot allocate the optimizer state (%.1f MiB)",
                         2.0 * (double)nb * sizeof(float) / (1 << 20));
    }
    size_t zn = 1 << 16;
    float *z = xcalloc(zn, sizeof(float));
    for (size_t at = 0; at < nb; at += zn) {
        size_t k = nb - at < zn ? nb - at : zn;
        be->ops->upload(be, o->m_block + at, z, sizeof(float) * k);
        be->ops->upload(be, o->v_block + at, z, sizeof(float) * k);
    }
    free(z);
    for (int i = 0; i < np; i++) { /* tensor i's part of [lo, hi) */
        size_t a = o->off[i] > lo ? o->off[i] : lo;
        size_t b = o->off[i] + tp[i].n < hi ? o->off[i] + tp[i].n : hi;
        o->lr_mult[i] = 1.0f;
        if (b <= a) continue;
        o->first[i] = a - o->off[i];
        o->len[i] = b - a;
        o->m[i] = o->m_block + (a - lo);
        o->v[i] = o->v_block + (a - lo);
    }
    build_spans(o, tp);
    return 0;
}

void optim_free(Optim *o) {
    if (!o || !o->be) return;
    o->be->ops->release(o->be, o->m_block);
    o->be->ops->release(o->be, o->v_block);
    free(o->m);
    free(o->v);
    free(o->first);
    free(o->len);
    free(o->off);
    free(o->bounds);
    free(o->spans);
    free(o->lr_mult);
    free(o->host);
    memset(o, 0, sizeof *o);
}

size_t optim_state_bytes(const Optim *o) {
    return 2 * o->block_len * sizeof(float);
}

double optim_clip(Backend *be, const TrainParam *tp, int np, float max_norm, float *gscale,
                  const double *known) {
    double ss = 0;
    for (int i = 0; i < np; i++)
        ss += known && known[i] >= 0 ? known[i] : be->ops->sumsq(be, tp[i].grad, tp[i].n);
    double norm = sqrt(ss);
    float c = 1.0f;
    if (max_norm > 0 && norm > (double)max_norm) c = (float)((double)max_norm / (norm + 1e-6));
    if (gscale)
        *gscale = c;
    else if (c != 1.0f)
        for (int i = 0; i < np; i++)
            be->ops->scale(be, tp[i].grad, tp[i].n, c);
    return norm;
}

void optim_step(Optim *o, const TrainParam *tp, int np, float lr, float gscale) {
    o->t++;
    float bc1 = 1.0f - powf(o->b1, (float)o->t), bc2 = 1.0f - powf(o->b2, (float)o->t);
    TUNA_ASSERT(np == o->n && (np == 0 || tp[0].data == o->p0));
    for (int i = 0; i < o->n_spans; i++) {
        const OptimSpan *s = &o->spans[i];
        o->be->ops->adamw(o->be, s->p, s->g, gscale, s->m, s->v, s->n, lr * s->lr_mult, o->b1,
                          o->b2, o->eps, s->decay ? o->wd : 0.0f, bc1, bc2);
    }
}

int optim_loraplus(Optim *o, const TrainParam *tp, int np, float ratio, TunaErr *err) {
    if (!(ratio > 0) || !isfinite(ratio))
        return tuna_errf(err, TUNA_EINVAL, "--loraplus-lr-ratio must be > 0, got %g",
                         (double)ratio);
    TUNA_ASSERT(np == o->n);
    int n_b = 0;
    for (int i = 0; i < np; i++) {
        /* LLaMA-Factory's _create_loraplus_optimizer: "lora_B" in the name or a 1-D tensor */
        int is_b = strstr(tp[i].name, "lora_B") != NULL;
        o->lr_mult[i] = is_b || tp[i].ndim == 1 ? ratio : 1.0f;
        n_b += is_b;
    }
    if (!n_b)
        return tuna_errf(
                err, TUNA_EINVAL,
                "--loraplus-lr-ratio: no LoRA B matrix trains (use it with --method lora)");
    build_spans(o, tp);
    return 0;
}

void optim_download(const Optim *o, float **m, float **v) {
    for (int i = 0; i < o->n; i++) {
        if (!o->len[i]) continue;
        o->be->ops->download(o->be, m[i] + o->first[i], o->m[i], sizeof(float) * o->len[i]);
        o->be->ops->download(o->be, v[i] + o->first[i], o->v[i], sizeof(float) * o->len[i]);
    }
}

void optim_upload(Optim *o, const float *const *m, const float *const *v) {
    for (int i = 0; i < o->n; i++) {
        if (!o->len[i]) continue;
        o->be->ops->upload(o->be, o->m[i], m[i] + o->first[i], sizeof(float) * o->len[i]);
        o->be->ops->upload(o->be, o->v[i], v[i] + o->first[i], sizeof(float) * o->len[i]);
    }
}

// --- sharded (ZeRO stage 1): the collectives

/* Values per collective: the counts fit MPI's ints, and a host copy is at most 64 MiB. */
#define OPTIM_WINDOW ((size_t)1 << 24)

/* The ranks' parts of the flat window [a, b): counts[r] values from rank r; returns where this
 * rank's part starts (flat; meaningless when its count is 0). */
static size_t window_counts(const Optim *o, size_t a, size_t b, size_t *counts) {
    for (int r = 0; r < o->world; r++) {
        size_t lo = o->bounds[r] > a ? o->bounds[r] : a;
        size_t hi = o->bounds[r + 1] < b ? o->bounds[r + 1] : b;
        counts[r] = hi > lo ? hi - lo : 0;
    }
    return o->bounds[o->rank] > a ? o->bounds[o->rank] : a;
}

static float *host_window(Optim *o) {
    if (!o->host) o->host = xmalloc(sizeof(float) * OPTIM_WINDOW);
    return o->host;
}

int optim_share_params(Optim *o, const TrainParam *tp, int np, TunaErr *err) {
    if (o->world == 1) return 0;
    TUNA_ASSERT(np == o->n);
    Backend *be = o->be;
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)o->world);
    int rc = 0;
    /* one tensor at a time: the ranks agree on the calls without comparing memory layouts */
    for (int i = 0; i < np && !rc; i++) {
        for (size_t a = 0; a < tp[i].n && !rc; a += OPTIM_WINDOW) {
            size_t b = tp[i].n - a < OPTIM_WINDOW ? tp[i].n : a + OPTIM_WINDOW;
            size_t mine = window_counts(o, o->off[i] + a, o->off[i] + b, counts) - o->off[i];
            float *x = tp[i].data + a;
            if (be->ops->host_memory) {
                rc = dist_allgather_floats(x, counts, err);
                if (be->ops->weights_written) be->ops->weights_written(be, x, b - a);
                continue;
            }
            float *h = host_window(o);
            size_t k = counts[o->rank];
            if (k) be->ops->download(be, h + (mine - a), tp[i].data + mine, sizeof(float) * k);
            rc = dist_allgather_floats(h, counts, err);
            if (!rc) be->ops->upload(be, x, h, sizeof(float) * (b - a));
        }
    }
    free(counts);
    return rc;
}

/* One moment of tensor i onto rank 0's out (NULL elsewhere). */
static int gather_moment(Optim *o, int i, const float *part, float *out, TunaErr *err) {
    Backend *be = o->be;
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)o->world);
    size_t n = (i + 1 < o->n ? o->off[i + 1] : o->total) - o->off[i]; /* the tensor's length */
    int rc = 0;
    for (size_t a = 0; a < n && !rc; a += OPTIM_WINDOW) {
        size_t b = n - a < OPTIM_WINDOW ? n : a + OPTIM_WINDOW;
        size_t mine = window_counts(o, o->off[i] + a, o->off[i] + b, counts) - o->off[i];
        size_t k = counts[o->rank];
        const float *src = k ? part + (mine - o->first[i]) : NULL;
        if (k && !be->ops->host_memory) {
            be->ops->download(be, host_window(o), src, sizeof(float) * k);
            src = o->host;
        }
        rc = dist_gather_floats(src, out ? out + a : NULL, counts, err);
    }
    free(counts);
    return rc;
}

int optim_gather(Optim *o, float **m, float **v, TunaErr *err) {
    if (o->world == 1) {
        optim_download(o, m, v);
        return 0;
    }
    int rc = 0;
    for (int i = 0; i < o->n && !rc; i++) {
        rc = gather_moment(o, i, o->m[i], m ? m[i] : NULL, err);
        if (!rc) rc = gather_moment(o, i, o->v[i], v ? v[i] : NULL, err);
    }
    return rc;
}
