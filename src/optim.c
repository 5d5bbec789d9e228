#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* The AdamW passes: runs of tensors end to end in values, gradients and moments that share the
 * weight-decay flag and the lr multiplier. */
static void build_spans(Optim *o, const TrainParam *tp) {
    o->n_spans = 0;
    for (int i = 0; i < o->n; i++) {
        OptimSpan *last = o->n_spans ? &o->spans[o->n_spans - 1] : NULL;
        if (last && last->p + last->n == tp[i].data && last->g + last->n == tp[i].grad &&
            last->decay == tp[i].decay && last->lr_mult == o->lr_mult[i]) {
            last->n += tp[i].n; /* m and v are end to end by construction */
            continue;
        }
        o->spans[o->n_spans++] = (OptimSpan){tp[i].data, tp[i].grad,  o->m[i],      o->v[i],
                                             tp[i].n,    tp[i].decay, o->lr_mult[i]};
    }
}

int optim_init(Optim *o, Backend *be, const TrainParam *tp, int np, float b1, float b2, float eps,
               float wd, TunaErr *err) {
    memset(o, 0, sizeof *o);
    o->b1 = b1;
    o->b2 = b2;
    o->eps = eps;
    o->wd = wd;
    o->n = np;
    o->be = be;
    o->m = xcalloc((size_t)np, sizeof *o->m);
    o->v = xcalloc((size_t)np, sizeof *o->v);
    o->len = xcalloc((size_t)np, sizeof *o->len);
    size_t total = 0;
    for (int i = 0; i < np; i++)
        total += tp[i].n;
    o->block_len = total;
    /* one block for each moment (a slice per tensor), zeroed: two allocations, and a layout
     * that a sharded optimizer (each rank a range of the block) can split */
    o->m_block = be->ops->alloc(be, sizeof(float) * (total ? total : 1));
    o->v_block = be->ops->alloc(be, sizeof(float) * (total ? total : 1));
    if (!o->m_block || !o->v_block) {
        optim_free(o);
        return tuna_errf(err, TUNA_ENOMEM, "cannot allocate the optimizer state (%.1f MiB)",
                         2.0 * (double)total * sizeof(float) / (1 << 20));
    }
    size_t zn = 1 << 16;
    float *z = xcalloc(zn, sizeof(float));
    for (size_t off = 0; off < total; off += zn) {
        size_t k = total - off < zn ? total - off : zn;
        be->ops->upload(be, o->m_block + off, z, sizeof(float) * k);
        be->ops->upload(be, o->v_block + off, z, sizeof(float) * k);
    }
    free(z);
    o->lr_mult = xcalloc((size_t)(np ? np : 1), sizeof *o->lr_mult);
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        o->len[i] = tp[i].n;
        o->m[i] = o->m_block + off;
        o->v[i] = o->v_block + off;
        o->lr_mult[i] = 1.0f;
        off += tp[i].n;
    }
    o->spans = xcalloc((size_t)(np ? np : 1), sizeof *o->spans);
    build_spans(o, tp);
    return 0;
}

void optim_free(Optim *o) {
    if (!o || !o->be) return;
    o->be->ops->release(o->be, o->m_block);
    o->be->ops->release(o->be, o->v_block);
    free(o->m);
    free(o->v);
    free(o->len);
    free(o->spans);
    free(o->lr_mult);
    memset(o, 0, sizeof *o);
}

double optim_clip(Backend *be, const TrainParam *tp, int np, float max_norm, float *gscale) {
    double ss = 0;
    for (int i = 0; i < np; i++)
        ss += be->ops->sumsq(be, tp[i].grad, tp[i].n);
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
    TUNA_ASSERT(np == o->n && (np == 0 || tp[0].data == o->spans[0].p));
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
        o->be->ops->download(o->be, m[i], o->m[i], sizeof(float) * o->len[i]);
        o->be->ops->download(o->be, v[i], o->v[i], sizeof(float) * o->len[i]);
    }
}

void optim_upload(Optim *o, float *const *m, float *const *v) {
    for (int i = 0; i < o->n; i++) {
        o->be->ops->upload(o->be, o->m[i], m[i], sizeof(float) * o->len[i]);
        o->be->ops->upload(o->be, o->v[i], v[i], sizeof(float) * o->len[i]);
    }
}
