#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist.h"
#include "xalloc.h"

static const char *sched_names[] = {"constant", "constant_with_warmup", "linear", "cosine"};

int sched_parse(const char *name) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, sched_names[i])) return i;
    return -1;
}

double sched_factor(SchedType s, int step, int warmup, int total) {
    if (s == SCHED_CONSTANT) return 1.0;
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (s == SCHED_CONSTANT_WARMUP) return 1.0;
    double rest = (double)(total - warmup > 1 ? total - warmup : 1);
    if (s == SCHED_LINEAR) {
        double f = (double)(total - step) / rest;
        return f > 0 ? f : 0;
    }
    double progress = (double)(step - warmup) / rest;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
    return f > 0 ? f : 0;
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
