/* train.c: a training run (train.h): its setup (backend, model, tokenizer, template, data,
 * method, optimizer), the step loop with its commands, evals and samples, and the objectives
 * the step calls. What the run writes is src/train_out.c's; the options are
 * src/train_config.c's; the shared Run is in train_run.h. */
#include "train_run.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/backend.h"
#include "control.h"
#include "dataset.h"
#include "dist.h"
#include "evalloss.h"
#include "events.h"
#include "generate.h"
#include "model.h"
#include "model_train.h"
#include "optim.h"
#include "peft.h"
#include "pref.h"
#include "rng.h"
#include "template.h"
#include "tokenizer.h"
#include "xalloc.h"

typedef struct Objective Objective;
static const Objective *objective_for(const char *stage);

/* A test hook (tests/test_threads.c): TUNA_THREADS_SCHEDULE="1,2,3" runs step N on the N-th
 * count of the list (cycling), whatever --threads says, to show that a run's numbers do not
 * depend on the thread count nor on a change of it mid-run. Logged once; returns 0 when unset
 * or not a list of counts from 1 to 4096. */
static int threads_schedule(Run *r) {
    const char *s = getenv("TUNA_THREADS_SCHEDULE");
    int v[64], n = 0;
    while (s && *s && n < 64) {
        char *end;
        long t = strtol(s, &end, 10);
        if (end == s || t < 1 || t > 4096 || (*end && *end != ',')) return 0;
        v[n++] = (int)t;
        s = *end ? end + 1 : end;
    }
    if (!n) return 0;
    if (r->cores_seen != -1) { /* follow_free_cores's field, unused while the hook rules */
        r->cores_seen = -1;
        char msg[160];
        snprintf(msg, sizeof msg, "test hook TUNA_THREADS_SCHEDULE=%.60s: threads set step by step",
                 getenv("TUNA_THREADS_SCHEDULE"));
        emit_log(r, "info", msg);
    }
    backend_set_threads(r->be, v[r->step % n]);
    return 1;
}

/* With threads 0, training uses the cores other processes leave free, checked at most every
 * half second between steps; a change needs two checks in a row that agree. An OpenMP team that
 * shares a core with another busy thread waits at every barrier for its descheduled member:
 * beside a one-thread `tuna generate` (a chat in the workbench) training ran 3x slower on two
 * threads here than it does alone, and slowed the chat too. */
static void follow_free_cores(Run *r) {
    if (threads_schedule(r)) return;
    double now = time_now();
    if (r->cfg->threads || r->world > 1 || now - r->cores_checked < 0.5) return;
    r->cores_checked = now;
    int cur = r->be->n_threads;
    backend_set_threads(r->be, BACKEND_THREADS_IDLE);
    int free_now = r->be->n_threads;
    if (free_now == cur || free_now != r->cores_seen) { /* no change, or not confirmed yet */
        r->cores_seen = free_now;
        backend_set_threads(r->be, cur);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "threads %d -> %d (%s)", cur, r->be->n_threads,
             free_now < cur ? "other processes are busy on this machine" : "cores free again");
    emit_log(r, "info", msg);
}

// --- evaluation and samples

static int run_eval(Run *r, double *loss, TunaErr *err);

/* --sample-prompts are answered together in one generate_batch (train_run refuses more). */
#define MAX_SAMPLE_PROMPTS 16

static int run_samples(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc0;
    if (!c->sample_prompts[0]) return 0;
    Model *m = r->m;
    int lora = train_setup(r->ts)->method == METHOD_LORA;
    float *pre;
    int P = train_prefix(r->ts, &pre);
    if (P && (rc0 = model_set_prefix(m, pre, P, err))) return rc0;
    if (!P && (P = train_prompt(r->ts, &pre)) && (rc0 = model_set_prompt(m, pre, P, err)))
        return rc0;
    ModelLora view; /* the adapter runs unmerged: the base is neither copied nor changed */
    if (lora &&
        ((rc0 = train_lora_view(r->ts, &view, err)) || (rc0 = model_set_lora(m, &view, err)))) {
        if (P) model_set_prefix(m, NULL, 0, NULL);
        return rc0;
    }
    StopSet stop;
    stopset_init(&stop, m, r->tok, r->tpl);
    /* the prompts are answered together (greedy: each gets the answer it would get alone) */
    char *list = xstrdup(c->sample_prompts), *save = NULL, *text[MAX_SAMPLE_PROMPTS];
    int32_t *ids[MAX_SAMPLE_PROMPTS];
    size_t n[MAX_SAMPLE_PROMPTS];
    int k = 0, rc = 0;
    for (char *p = strtok_r(list, "|", &save); p && !rc && k < MAX_SAMPLE_PROMPTS;
         p = strtok_r(NULL, "|", &save)) {
        ChatMessage msg = {"user", p};
        text[k] = p;
        ids[k] = NULL;
        rc = template_encode_prompt(r->tpl, r->tok, &msg, 1, &ids[k], &n[k], err);
        k++;
    }
    if (!rc && k) {
        Sampler s;
        sampler_init(&s, m->cfg.V, (uint64_t)c->seed, 0, 0, 1, 1);
        GenerateOptions o = {.max_new_tokens = c->sample_max_tokens};
        stopset_apply(&stop, &o);
        GenerateResult res[MAX_SAMPLE_PROMPTS];
        double t_gen = time_now();
        rc = generate_batch(m, r->tok, &s, (const int32_t *const *)ids, n, k, &o, res, err);
        t_gen = time_now() - t_gen;
        for (int i = 0; i < k; i++) {
            if (!rc) {
                static Event e;
                event_clear(&e, EV_SAMPLE);
                e.step = r->step;
                event_str(e.name, sizeof e.name, text[i]);
                event_str(e.text, sizeof e.text, res[i].text);
                e.seconds = t_gen; /* the k prompts together */
                emit(r, &e);
                char one[200];
                snprintf(one, sizeof one, "%s", res[i].text);
                for (char *q = one; *q; q++)
                    if (*q == '\n' || *q == '\r' || *q == '\t') *q = ' ';
                say(r, "sample step %d: %.60s -> %s", r->step, text[i], one);
            }
            generate_result_free(&res[i]);
        }
        sampler_free(&s);
    }
    for (int i = 0; i < k; i++)
        free(ids[i]);
    free(list);
    if (lora) model_set_lora(m, NULL, NULL);
    if (P) model_set_prefix(m, NULL, 0, NULL);
    return rc;
}

static int stop_requested(const Run *r) {
    return r->hooks && r->hooks->stop && *r->hooks->stop;
}

/* Data parallel (dist.h): the control bits (RUN/control, the stop flag) and a failed write as
 * rank 0 sees them, the same on every rank so that all pause, save and stop together. */
static int shared_control(Run *r) {
    int ctl = r->rank ? 0 : read_control(r) | (stop_requested(r) ? CTL_STOP : 0);
    if (r->world == 1) return ctl;
    long v[2] = {ctl, r->rank ? 0 : r->write_errno};
    if (dist_sum_longs(v, 2, NULL)) return CTL_STOP;
    if (v[1] && !r->write_errno) r->write_errno = (int)v[1];
    return (int)v[0];
}

/* Data parallel: the gradients summed over the ranks, in place, before the norm, the clip and
 * the step (every rank then takes the same step). With buckets (grad_sync below) this is only
 * the fallback of TUNA_BUCKET_MB=0: one blocking allreduce per tensor after the whole backward. */
static int sum_grads(Run *r, TunaErr *err) {
    int np, rc = r->be->ops->sync(r->be);
    if (rc) return tuna_errf(err, rc, "%s", r->be->err.msg);
    const TrainParam *tp = train_params(r->ts, &np);
    for (int i = 0; i < np && !rc; i++) {
        if (r->be->ops->host_memory) {
            rc = dist_sum_floats(tp[i].grad, tp[i].n, err);
            continue;
        }
        if (tp[i].n > r->dist_cap) {
            free(r->dist_buf);
            r->dist_buf = xmalloc(sizeof(float) * tp[i].n);
            r->dist_cap = tp[i].n;
        }
        r->be->ops->download(r->be, r->dist_buf, tp[i].grad, sizeof(float) * tp[i].n);
        rc = dist_sum_floats(r->dist_buf, tp[i].n, err);
        if (!rc) r->be->ops->upload(r->be, tp[i].grad, r->dist_buf, sizeof(float) * tp[i].n);
    }
    return rc;
}

// --- gradient buckets overlapped with the backward

/* A bucket: one contiguous range of gradient memory (consecutive layers' tensors, about
 * TUNA_BUCKET_MB), summed by one non-blocking allreduce started as soon as the backward has
 * finished its lowest layer (train_set_grad_hook); layer -1: after the whole backward (the
 * embeddings, final norm and head, which go last). */
typedef struct GradBucket {
    float *grad; /* backend memory */
    size_t n;
    size_t off; /* device backends: where its host copy lies in GradSync.host */
    int layer;
} GradBucket;

typedef struct GradSync {
    Run *r;
    GradBucket *b;
    int nb, next; /* next: the first bucket not started in this step */
    float *host;  /* device backends: the buckets' host copies (download, sum, upload) */
    DistPending pend;
    int rc; /* the first failure inside the hook, reported after the backward */
    TunaErr err;
    double t_comm; /* seconds this rank spent in communication calls (not hidden by compute) */
    double t_step; /* seconds of the steps' forward, backward and sums */
    long steps;
} GradSync;

/* A contiguous run of gradient memory of one layer (or -1), while the buckets are built. */
typedef struct GradSeg {
    float *p;
    size_t n;
    int layer;
} GradSeg;

static int seg_cmp(const void *a, const void *b) {
    const GradSeg *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < 0 ? 1 : y->layer < 0 ? -1 : y->layer - x->layer;
    return x->p > y->p ? -1 : x->p < y->p; /* falling addresses: the layers lie in rising order */
}

/* The buckets of r's trainable tensors: their gradients by layer, last layer first (the order
 * the backward finishes them), layer -1 last, each layer's from its highest address down (full
 * fine-tuning's gradient block and LoRA's adapter block both hold the layers in rising order);
 * neighbours in memory merged into one bucket up to cap bytes (a bucket is closed once it holds
 * cap bytes or more). Tensors that are not neighbours make buckets of their own. */
static GradSync *grad_sync_init(Run *r, size_t cap) {
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    GradSeg *s = xmalloc(sizeof(GradSeg) * (size_t)(np ? np : 1));
    int ns = 0;
    for (int i = 0; i < np; i++)
        if (tp[i].n) s[ns++] = (GradSeg){tp[i].grad, tp[i].n, tp[i].layer};
    qsort(s, (size_t)ns, sizeof *s, seg_cmp);
    GradSync *g = xcalloc(1, sizeof *g);
    g->r = r;
    g->b = xmalloc(sizeof(GradBucket) * (size_t)(np ? np : 1));
    size_t off = 0;
    for (int i = 0; i < ns; i++) {
        GradBucket *cur = g->nb ? &g->b[g->nb - 1] : NULL;
        int below = cur && s[i].p + s[i].n == cur->grad; /* the layer before, just below */
        int above = cur && cur->grad + cur->n == s[i].p;
        if (cur && (below || above) && cur->n * sizeof(float) < cap) {
            if (below) cur->grad = s[i].p;
            cur->n += s[i].n;
            cur->layer = s[i].layer; /* the segments come in falling layer order, -1 last */
        } else {
            g->b[g->nb++] = (GradBucket){s[i].p, s[i].n, 0, s[i].layer};
        }
    }
    for (int i = 0; i < g->nb; i++) {
        g->b[i].off = off;
        off += g->b[i].n;
    }
    if (!r->be->ops->host_memory) g->host = xmalloc(sizeof(float) * (off ? off : 1));
    free(s);
    return g;
}

static void grad_sync_free(GradSync *g) {
    if (!g) return;
    dist_pending_free(&g->pend);
    free(g->host);
    free(g->b);
    free(g);
}

/* The hook (train_set_grad_hook) on the step's last micro-batch: starts every bucket whose layers
 * the backward has finished (all at layer -1), then drives the started ones on (MPI_Test). */
static void grad_ready(void *ctx, int layer) {
    GradSync *g = ctx;
    Backend *be = g->r->be;
    double t0 = time_now();
    if (g->rc) return;
    if (g->next < g->nb && (layer < 0 || g->b[g->next].layer >= layer)) {
        int rc = be->ops->sync(be); /* the layer's work done (a no-op on the cpu backend) */
        if (rc) g->rc = tuna_errf(&g->err, rc, "%s", be->err.msg);
    }
    while (!g->rc && g->next < g->nb && (layer < 0 || g->b[g->next].layer >= layer)) {
        GradBucket *b = &g->b[g->next++];
        float *x = b->grad;
        if (!be->ops->host_memory) { /* device memory: summed through a host copy */
            x = g->host + b->off;
            be->ops->download(be, x, b->grad, sizeof(float) * b->n);
        }
        g->rc = dist_isum_floats(&g->pend, x, b->n, &g->err);
    }
    dist_test(&g->pend);
    g->t_comm += time_now() - t0;
}

/* After the backward: waits for the step's sums (device backends: the sums uploaded back). */
static int grad_sync_wait(GradSync *g, TunaErr *err) {
    Backend *be = g->r->be;
    double t0 = time_now();
    int rc = g->rc;
    g->rc = 0;
    if (rc) {
        if (err) *err = g->err;
        return rc;
    }
    if (g->next != g->nb) return tuna_errf(err, TUNA_EINVAL, "gradient buckets left unsent");
    g->next = 0;
    rc = dist_wait(&g->pend, err);
    for (int i = 0; !rc && !be->ops->host_memory && i < g->nb; i++)
        be->ops->upload(be, g->b[i].grad, g->host + g->b[i].off, sizeof(float) * g->b[i].n);
    g->t_comm += time_now() - t0;
    return rc;
}

/* TUNA_BUCKET_MB: the bucket size (default 25 MB, as PyTorch DDP); 0 turns the buckets off (one
 * blocking allreduce per tensor after the backward). */
static double bucket_mb(void) {
    const char *e = getenv("TUNA_BUCKET_MB");
    double v = e && *e ? atof(e) : 25.0;
    return v < 0 ? 0 : v;
}

/* The log line on how much of the step communication took, not hidden by the backward. */
static void grad_sync_report(Run *r) {
    GradSync *g = r->gsync;
    if (!g || !g->steps) return;
    double mb = bucket_mb();
    char msg[300];
    snprintf(msg, sizeof msg,
             "data parallel: gradient sums %s: %.1f ms per step not hidden by compute, of %.1f ms "
             "per step (forward, backward, sums) over %ld steps (rank %d)",
             mb > 0 ? "in buckets" : "after the backward", 1e3 * g->t_comm / (double)g->steps,
             1e3 * g->t_step / (double)g->steps, g->steps, r->rank);
    if (mb > 0) {
        size_t n = 0;
        for (int i = 0; i < g->nb; i++)
            n += g->b[i].n;
        size_t len = strlen(msg);
        snprintf(msg + len, sizeof msg - len, "; %d buckets (cut at %.3g MB), %.2f MB in all",
                 g->nb, mb, (double)n * 4.0 / 1e6);
    }
    emit_log(r, "info", msg);
}

/* Data parallel with --threads 0: this rank's share of the cores it may run on (the cores over
 * the ranks on this host, or the cores mpirun bound it to). */
static void dist_threads(Run *r) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    int mine = sched_getaffinity(0, sizeof set, &set) ? (int)online : CPU_COUNT(&set);
    int n = r->cfg->threads;
    if (!n) {
        n = mine >= online ? mine / dist_local_world() : mine;
        backend_set_threads(r->be, n < 1 ? 1 : n);
    }
    char msg[200];
    snprintf(msg, sizeof msg, "data parallel: %d processes (%d on this host), %d threads each",
             r->world, dist_local_world(), r->be->n_threads);
    emit_log(r, "info", msg);
}

static void run_close(Run *r) {
    free(r->dist_buf);
    grad_sync_free(r->gsync);
    if (r->have_opt) optim_free(&r->opt);
    if (r->have_vh) {
        optim_free(&r->vh_opt);
        vhead_free(&r->vh);
    }
    train_state_free(r->ts);
    train_state_free(r->ref_ts);
    model_free(r->ref_m);
    if (r->have_batcher) batcher_free(&r->batcher);
    dataset_free(r->train);
    dataset_free(r->val);
    dataset_free(r->all);
    template_free(r->tpl);
    free(r->hf_template);
    tokenizer_free(r->tok);
    model_free(r->m);
    backend_free(r->be);
    run_files_close(r);
}

/* --lora-trainable-tokens: a comma list of ids, token strings or "eos" -> a comma list of ids. */
static int resolve_tokens(Run *r, const char *spec, char *out, size_t cap, TunaErr *err) {
    char *list = xstrdup(spec), *save = NULL;
    int rc = 0;
    out[0] = '\0';
    for (char *t = strtok_r(list, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long id = strtol(t, &end, 10);
        if (end == t || *end) {
            if (!strcmp(t, "eos")) {
                id = template_eos_id(r->tpl, r->tok);
                if (id < 0) id = r->m->cfg.n_eos ? r->m->cfg.eos_ids[0] : -1;
            } else {
                id = tokenizer_token_id(r->tok, t);
            }
        }
        if (id < 0 || id >= r->m->cfg.V) {
            rc = tuna_errf(err, TUNA_EINVAL, "--lora-trainable-tokens: \"%s\" is not a token of %s",
                           t, r->cfg->model);
            break;
        }
        size_t o = strlen(out);
        if (o + 16 >= cap) {
            rc = tuna_errf(err, TUNA_EINVAL, "--lora-trainable-tokens: too many tokens");
            break;
        }
        snprintf(out + o, cap - o, "%s%ld", o ? "," : "", id);
    }
    free(list);
    return rc;
}

/* --lr auto: the peak learning rate for a method and a model of n parameters. At 100M and
 * above, the usual values for real models (LLaMA-Factory's LoRA examples use 1e-4; full
 * fine-tuning uses 1e-5 to 5e-5; P-tuning v2 and PEFT's prefix examples 1e-2); at 1M and
 * below, the values that learn on the bundled stories260K with 3 epochs of identity
 * (measured: LoRA 1e-3 leaves the eval loss at 12.3, 1e-2 takes it to 5.4; full 2e-3 to 4;
 * P-tuning 3e-2 to 5.9); log-linear in the parameter count in between. */
static double auto_lr(TrainMethod method, size_t n_params) {
    double big, small; /* at >= 100M and <= 1M parameters */
    switch (method) {
    case METHOD_FULL:
    case METHOD_FREEZE: big = 2e-5, small = 2e-3; break;
    case METHOD_PTUNING:
    case METHOD_PROMPT:
    case METHOD_PTUNING_V1: big = 1e-2, small = 3e-2; break;
    default: big = 1e-4, small = 1e-2; break;
    }
    double t = (log10((double)(n_params ? n_params : 1)) - 6.0) / 2.0;
    if (t <= 0) return small;
    if (t >= 1) return big;
    return exp(log(small) + t * (log(big) - log(small)));
}

/* What the load kept typed: one line in the log and on the terminal. */
static void log_typed_base(Run *r, const ModelLoadOptions *lo) {
    const Model *m = r->m;
    char skipped[96] = "", msg[768];
    if (m->n_qskipped)
        snprintf(skipped, sizeof skipped,
                 " (%d linear layer%s left fp32: rows not whole blocks of %d)", m->n_qskipped,
                 m->n_qskipped == 1 ? "" : "s", wtype_info[lo->qtype].block);
    /* the embedding and head: in the layers' type, or one of their own (a GGUF's stored type
     * or bf16 under a --quantization-bit: the line once said NF4 for a head kept in Q4_1) */
    const Weight *h = m->head_q ? m->head_q : m->wte_q;
    char head[64] = "";
    if (h && (lo->qtype == WT_F32 || h->type == lo->qtype))
        snprintf(head, sizeof head, ", embedding and head");
    const char *in = lo->qtype == WT_F32 ? "the file's stored types" : wtype_info[lo->qtype].name;
    char lin[96];
    snprintf(lin, sizeof lin, "%s%s", in, lo->double_quant ? " + 8-bit scales" : "");
    if (h && !head[0])
        snprintf(msg, sizeof msg,
                 "base: %zu frozen weights (linear layers in %s; embedding and head in %s) "
                 "(%.1f MiB), %zu in fp32%s",
                 m->n_qparams, lin, wtype_info[h->type].name, (double)m->n_qbytes / (1 << 20),
                 m->n_params, skipped);
    else
        snprintf(msg, sizeof msg,
                 "base: %zu frozen weights (linear layers%s) in %s (%.1f MiB), %zu in fp32%s",
                 m->n_qparams, head, lin, (double)m->n_qbytes / (1 << 20), m->n_params, skipped);
    emit_log(r, "info", msg);
}

/* eval_strategy / save_strategy: 0 steps, 1 epoch, 2 no, 3 best (save_strategy's only); -1 for
 * another word */
static int strategy_parse(const char *s) {
    return !strcmp(s, "steps")   ? 0
           : !strcmp(s, "epoch") ? 1
           : !strcmp(s, "no")    ? 2
           : !strcmp(s, "best")  ? 3
                                 : -1;
}

/* The steps between evals or checkpoints under a strategy (0: at the end only). */
static int every(const char *strategy, int steps, int steps_per_epoch) {
    int s = strategy_parse(strategy);
    return s == 0 ? steps : s == 1 ? steps_per_epoch : 0;
}

/* --method and the options that go with it, the scheduler, the strategies, --pad-to: *method
 * set. */
static int run_check_method(Run *r, TrainMethod *out, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    TrainMethod method;
    if (!strcmp(c->method, "full"))
        method = METHOD_FULL;
    else if (!strcmp(c->method, "freeze"))
        method = METHOD_FREEZE;
    else if (!strcmp(c->method, "lora"))
        method = METHOD_LORA;
    else if (!strcmp(c->method, "ptuning"))
        method = METHOD_PTUNING;
    else if (!strcmp(c->method, "prompt"))
        method = METHOD_PROMPT;
    else if (!strcmp(c->method, "ptuning-v1"))
        method = METHOD_PTUNING_V1;
    else
        return tuna_errf(err, TUNA_EINVAL,
                         "--method must be full, freeze, lora, ptuning, prompt or ptuning-v1, got "
                         "\"%s\"",
                         c->method);
    if (method == METHOD_PTUNING_V1 && strcmp(c->prompt_encoder, "mlp") &&
        strcmp(c->prompt_encoder, "lstm"))
        return tuna_errf(err, TUNA_EINVAL, "--prompt-encoder: must be mlp or lstm, got \"%s\"",
                         c->prompt_encoder);
    /* the schedule and its arguments, checked now (the lr and step counts are set later) */
    int rc = sched_init(&r->sched, c->lr_scheduler, c->lr_scheduler_kwargs, c->lr > 0 ? c->lr : 1.0,
                        0, 1, err);
    if (rc) return rc;
    if (strcmp(c->init_lora_weights, "default") && strcmp(c->init_lora_weights, "pissa"))
        return tuna_errf(err, TUNA_EINVAL,
                         "--init-lora-weights: must be default or pissa, got \"%s\"",
                         c->init_lora_weights);
    if (c->pissa_convert &&
        (strcmp(c->init_lora_weights, "pissa") || c->use_dora || c->lora_trainable_tokens[0]))
        return tuna_errf(
                err, TUNA_EINVAL,
                "--pissa-convert: for --init-lora-weights pissa, without DoRA or trainable "
                "tokens (the converted LoRA holds A and B alone)");
    if (method != METHOD_LORA &&
        (c->loraplus_lr_ratio > 0 || strcmp(c->init_lora_weights, "default") || c->use_dora))
        return tuna_errf(err, TUNA_EINVAL,
                         "--use-dora, --loraplus-lr-ratio and --init-lora-weights are for --method "
                         "lora");
    const char *strategies[] = {c->eval_strategy, c->save_strategy};
    for (int k = 0; k < 2; k++)
        if (strategy_parse(strategies[k]) < 0 || (!k && strategy_parse(strategies[k]) == 3))
            return tuna_errf(err, TUNA_EINVAL,
                             "--%s-strategy: must be steps, epoch%s or no, got \"%s\"",
                             k ? "save" : "eval", k ? ", best" : "", strategies[k]);
    int es = strategy_parse(c->eval_strategy), ss = strategy_parse(c->save_strategy);
    if (ss == 3 && es == 2)
        return tuna_errf(err, TUNA_EINVAL,
                         "--save-strategy best: saves at the evals, and --eval-strategy is no");
    /* EarlyStoppingCallback's asserts */
    if (c->early_stopping_steps > 0 && (!c->load_best_model_at_end || es == 2))
        return tuna_errf(err, TUNA_EINVAL,
                         "--early-stopping-steps: needs --load-best-model-at-end and evals (an "
                         "--eval-strategy other than no), as Hugging Face's EarlyStoppingCallback");
    /* as Hugging Face's TrainingArguments checks it */
    if (c->load_best_model_at_end && ss != 3) {
        if (es == 0 && c->eval_steps <= 0) es = 2; /* eval_steps 0: at the end only */
        if (es != ss)
            return tuna_errf(err, TUNA_EINVAL,
                             "--load-best-model-at-end: the eval and save strategies must match "
                             "(or --save-strategy best), got %s%s and %s",
                             es == 2 ? "no" : c->eval_strategy,
                             es == 2 && strcmp(c->eval_strategy, "no") ? " (eval_steps 0)" : "",
                             c->save_strategy);
        if (es == 0 && c->save_steps % c->eval_steps)
            return tuna_errf(err, TUNA_EINVAL,
                             "--load-best-model-at-end: --save-steps (%d) must be a multiple of "
                             "--eval-steps (%d, above 0)",
                             c->save_steps, c->eval_steps);
    }
    if (strcmp(c->pad_to, "batch") && strcmp(c->pad_to, "max"))
        return tuna_errf(err, TUNA_EINVAL, "--pad-to: must be batch or max, got \"%s\"", c->pad_to);
    *out = method;
    return 0;
}

/* --stage: the objective and what each preference stage refuses. */
static int run_check_stage(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    if (!(r->obj = objective_for(c->stage))) /* the stages are the rows of objectives[] */
        return tuna_errf(err, TUNA_EINVAL, "--stage: must be sft, pt, dpo, kto or rm, got \"%s\"",
                         c->stage);
    if ((r->rm_on = !strcmp(c->stage, "rm"))) {
        if (c->packing || c->group_by_length)
            return tuna_errf(err, TUNA_EUNSUP,
                             "--stage rm: pairs are neither packed nor grouped by length (turn "
                             "off --packing and --group-by-length)");
        if (c->pref_ftx > 0)
            return tuna_errf(err, TUNA_EUNSUP, "--pref-ftx: dpo only, not with --stage rm");
    } else if (c->summary_dropout_prob != 0.1) {
        return tuna_errf(err, TUNA_EINVAL,
                         "--summary-dropout-prob: the value head's dropout, for --stage rm only");
    }
    /* the Trainer's own loss only, sft and pt: transformers adds NEFTune's noise to every forward
     * of the module in training mode (TRL's reference passes through it too: not reproduced
     * here), and TRL's preference trainers and the reward model compute their losses without
     * the label smoothing */
    const struct {
        double on;
        const char *flag, *more;
    } xent_only[] = {{c->neftune_noise_alpha, "--neftune-noise-alpha", " (NEFTune)"},
                     {c->label_smoothing_factor, "--label-smoothing-factor",
                      " (dpo's own is --dpo-label-smoothing)"}};
    for (int k = 0; k < 2; k++)
        if (xent_only[k].on > 0 && strcmp(c->stage, "sft") && strcmp(c->stage, "pt"))
            return tuna_errf(err, TUNA_EUNSUP, "%s: for --stage sft and pt, not %s%s",
                             xent_only[k].flag, c->stage, xent_only[k].more);
    /* LLaMA-Factory's DFT loss: its sft trainer's compute_loss_func, which transformers runs in
     * place of the label smoother */
    const char *weighted = c->use_dft_loss ? "--use-dft-loss" : "--use-eaft-loss";
    if ((c->use_dft_loss || c->use_eaft_loss) && strcmp(c->stage, "sft"))
        return tuna_errf(err, TUNA_EUNSUP, "%s: for --stage sft, not %s", weighted, c->stage);
    if ((c->use_dft_loss || c->use_eaft_loss) && c->label_smoothing_factor > 0)
        return tuna_errf(err, TUNA_EINVAL,
                         "%s and --label-smoothing-factor: transformers runs LLaMA-Factory's loss "
                         "in place of the label smoother; keep one",
                         weighted);
    if (c->use_dft_loss && c->use_eaft_loss)
        return tuna_errf(err, TUNA_EINVAL,
                         "--use-dft-loss and --use-eaft-loss: LLaMA-Factory runs the DFT loss "
                         "alone then; keep one");
    r->kto_on = !strcmp(c->stage, "kto");
    if (r->kto_on) {
        r->kto = (KtoConfig){.beta = c->pref_beta,
                             .desirable_weight = c->kto_chosen_weight,
                             .undesirable_weight = c->kto_rejected_weight};
        /* TRL: with one example a batch the KL estimate is the example's own log-ratio */
        if (c->batch_size < 2)
            return tuna_errf(err, TUNA_EINVAL,
                             "--stage kto: --batch-size must be at least 2 (the KL term pairs "
                             "each prompt with another example's answer in the batch)");
        if (c->pref_ftx > 0)
            return tuna_errf(err, TUNA_EUNSUP, "--pref-ftx: dpo only, not with --stage kto");
        if (c->packing || c->group_by_length)
            return tuna_errf(err, TUNA_EUNSUP,
                             "--stage kto: examples are neither packed nor grouped by length "
                             "(turn off --packing and --group-by-length)");
        if (c->lora_trainable_tokens[0])
            return tuna_errf(err, TUNA_EUNSUP,
                             "--stage kto: not with --lora-trainable-tokens (the reference, the "
                             "base with the adapter off, would see the trained rows)");
    }
    if ((r->pref_on = !strcmp(c->stage, "dpo"))) {
        r->pref = (PrefConfig){.beta = c->pref_beta,
                               .simpo_gamma = c->simpo_gamma,
                               .label_smoothing = c->dpo_label_smoothing,
                               .ftx = c->pref_ftx};
        if (pref_loss_parse(c->pref_loss, &r->pref.type))
            return tuna_errf(err, TUNA_EINVAL,
                             "--pref-loss: must be sigmoid, hinge, ipo, orpo or simpo, got \"%s\"",
                             c->pref_loss);
        if (c->dpo_label_smoothing > 0 && r->pref.type != PREF_SIGMOID)
            return tuna_errf(err, TUNA_EINVAL,
                             "--dpo-label-smoothing: only with --pref-loss sigmoid (conservative "
                             "DPO)");
        if (c->packing || c->group_by_length)
            return tuna_errf(err, TUNA_EUNSUP,
                             "--stage dpo: pairs are neither packed nor grouped by length (turn "
                             "off --packing and --group-by-length)");
        if (c->lora_trainable_tokens[0])
            return tuna_errf(err, TUNA_EUNSUP,
                             "--stage dpo: not with --lora-trainable-tokens (the reference, the "
                             "base with the adapter off, would see the trained rows)");
    }
    return 0;
}

/* --mix-strategy and --interleave-probs into r->mix and r->mix_probs, checked as LLaMA-Factory's
 * DataArguments checks them */
static int mix_parse(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    static const char *const names[] = {"concat", "interleave_under", "interleave_over"};
    r->mix = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(c->mix_strategy, names[i])) r->mix = i;
    if (r->mix < 0)
        return tuna_errf(err, TUNA_EINVAL,
                         "--mix-strategy \"%s\": concat, interleave_under or interleave_over",
                         c->mix_strategy);
    int n_ds = 1;
    for (const char *q = c->dataset; *q; q++)
        n_ds += *q == ',';
    r->n_mix_probs = 0;
    double sum = 0;
    for (const char *q = c->interleave_probs; *q && r->n_mix_probs < 64;) {
        char *end;
        double p = strtod(q, &end);
        if (end == q || !isfinite(p) || p < 0 || (*end && *end != ','))
            return tuna_errf(err, TUNA_EINVAL,
                             "--interleave-probs \"%s\": probabilities (numbers from 0), "
                             "comma-separated",
                             c->interleave_probs);
        r->mix_probs[r->n_mix_probs++] = p;
        sum += p;
        q = *end ? end + 1 : end;
    }
    if (r->n_mix_probs && r->mix == DATASET_MIX_CONCAT)
        return tuna_errf(err, TUNA_EINVAL,
                         "--interleave-probs: for --mix-strategy interleave_under or "
                         "interleave_over, not concat");
    if (r->n_mix_probs && (r->n_mix_probs != n_ds || fabs(sum - 1) > 1e-6))
        return tuna_errf(err, TUNA_EINVAL,
                         "--interleave-probs: %d probabilities summing to %g for %d datasets "
                         "(one a dataset, summing to 1)",
                         r->n_mix_probs, sum, n_ds);
    return 0;
}

/* The tokenizer, the template, the dataset and its split, the batcher and the step counts. */
static int run_open_data(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc = mix_parse(r, err);
    if (rc) return rc;
    if ((rc = tokenizer_load(c->model, &r->tok, err))) return rc;
    if ((rc = template_load(c->templates_dir, c->template_name, &r->tpl, err))) return rc;
    if (c->default_system[0]) template_set_default_system(r->tpl, c->default_system);
    char ph[80];
    if (template_unknown_placeholder(r->tpl, ph, sizeof ph)) {
        if (c->strict)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s/%s.json: %s is not a placeholder tuna fills ({{content}}, "
                             "{{bos_token}}, {{eos_token}}); a misspelling?",
                             c->templates_dir, c->template_name, ph);
        char msg[2200];
        snprintf(msg, sizeof msg,
                 "%s/%s.json: %s is not a placeholder tuna fills and stays as text "
                 "(--strict refuses it)",
                 c->templates_dir, c->template_name, ph);
        emit_log(r, "warn", msg);
    }
    DatasetOptions dopt = {.names = c->dataset,
                           .dataset_dir = c->dataset_dir,
                           .vars = c->vars,
                           .cutoff_len = c->cutoff_len,
                           .max_samples = c->max_samples,
                           .strict = c->strict,
                           .stage_pt = !strcmp(c->stage, "pt"),
                           .ranking = r->pref_on || r->rm_on,
                           .kto = r->kto_on,
                           .template_flags = (c->train_on_prompt ? TEMPLATE_TRAIN_ON_PROMPT : 0) |
                                             (c->mask_history ? TEMPLATE_MASK_HISTORY : 0),
                           .mix = r->mix,
                           .probs = r->mix_probs,
                           .n_probs = r->n_mix_probs,
                           .mix_seed = (uint64_t)c->seed};
    if ((rc = dataset_load(&dopt, r->tok, r->tpl, &r->all, err))) return rc;
    if (r->all->n_skipped) {
        char msg[700];
        snprintf(msg, sizeof msg, "skipped %zu bad rows (first: %s)", r->all->n_skipped,
                 r->all->n_msgs ? r->all->msgs[0] : "?");
        emit_log(r, "warn", msg);
    }
    if (r->all->n_unfilled) {
        char msg[700];
        snprintf(msg, sizeof msg,
                 "%zu rows keep an unfilled {{placeholder}} (first: %s); fill it with --vars "
                 "NAME=VALUE, or --strict to refuse",
                 r->all->n_unfilled, r->all->unfilled);
        emit_log(r, "warn", msg);
    }
    int eval_ds = c->eval_dataset[0] != '\0';
    if ((rc = dataset_split(r->all, eval_ds ? 0 : c->val_size, (uint64_t)c->seed, &r->train,
                            &r->val, err)))
        return rc;
    if (eval_ds) { /* --eval-dataset: its rows as the training data's, in place of a split */
        DatasetOptions eopt = dopt;
        eopt.names = c->eval_dataset;
        Dataset *ev = NULL;
        if ((rc = dataset_load(&eopt, r->tok, r->tpl, &ev, err))) return rc;
        dataset_free(r->val);
        r->val = ev;
        char msg[900];
        if (ev->n_skipped) {
            snprintf(msg, sizeof msg, "eval dataset: skipped %zu bad rows (first: %s)",
                     ev->n_skipped, ev->n_msgs ? ev->msgs[0] : "?");
            emit_log(r, "warn", msg);
        }
        if (c->val_size > 0) {
            snprintf(msg, sizeof msg,
                     "val_size %g not used: the eval set is --eval-dataset %s (%zu examples)",
                     c->val_size, c->eval_dataset, ev->n);
            emit_note(r, "info", msg);
        }
    }
    if (r->train->n == 0)
        return tuna_errf(err, TUNA_EINVAL, "%s: no training examples left", c->dataset);
    // rows are as long as the longest example (up to cutoff_len): no padding to a fixed cutoff
    int maxlen = 2;
    for (size_t i = 0; i < r->train->n; i++)
        maxlen = r->train->ex[i].n > maxlen ? r->train->ex[i].n : maxlen;
    for (size_t i = 0; i < r->val->n; i++)
        maxlen = r->val->ex[i].n > maxlen ? r->val->ex[i].n : maxlen;
    r->B = c->batch_size;
    /* pairs (dpo, rm): chosen then rejected; kto: the examples, then their KL rows */
    r->rows = r->pref_on || r->kto_on || r->rm_on ? 2 * r->B : r->B;
    r->T = c->packing ? c->cutoff_len : (maxlen < c->cutoff_len ? maxlen : c->cutoff_len);
    int flags = (c->packing == 2 ? BATCH_PACK_NEAT
                 : c->packing    ? BATCH_PACK
                                 : 0) |
                (c->group_by_length && !c->disable_shuffling ? BATCH_GROUP_BY_LENGTH : 0) |
                (c->disable_shuffling ? BATCH_NO_SHUFFLE : 0) |
                (c->dataloader_drop_last ? BATCH_DROP_LAST : 0);
    /* data parallel: every rank reads the global micro-batch (world x B rows, one process's
     * order) and trains on its slice of B rows (xent_step) */
    uint64_t data_seed = (uint64_t)(c->data_seed >= 0 ? c->data_seed : c->seed);
    if ((rc = batcher_init(&r->batcher, r->train, r->B * r->world, r->T, flags, data_seed, err)))
        return rc;
    r->have_batcher = 1;
    /* --pad-to batch: a batch's rows as long as its longest row (a multiple of 8, at most T);
     * the same rows in the same order as max, so the losses are the same. Packed rows too: they
     * hold whole examples while the next fits, so they end short of T (alpaca_en_demo at 512:
     * 159 to 481 tokens), and the pads after the last example change nothing before them */
    r->pad_multiple = !strcmp(c->pad_to, "batch") ? 8 : 0;
    r->batcher.pad_multiple = r->pad_multiple;
    size_t bpe = batcher_batches_per_epoch(&r->batcher);
    r->steps_per_epoch = (int)((bpe + (size_t)c->grad_accum - 1) / (size_t)c->grad_accum);
    double want = c->max_steps > 0 ? c->max_steps : ceil(c->epochs * r->steps_per_epoch - 1e-9);
    if (want > 1e9)
        return tuna_errf(err, TUNA_EINVAL, "--epochs: %g epochs of %d steps is too many steps",
                         c->epochs, r->steps_per_epoch);
    r->total = (int)want;
    if (r->total < 1) return tuna_errf(err, TUNA_EINVAL, "nothing to train: 0 steps");
    r->warmup = c->warmup_steps > 0 ? c->warmup_steps : (int)ceil(c->warmup_ratio * r->total);
    r->eval_every = every(c->eval_strategy, c->eval_steps, r->steps_per_epoch);
    r->save_every = every(c->save_strategy, c->save_steps, r->steps_per_epoch);
    r->save_best = strategy_parse(c->save_strategy) == 3;
    if ((c->load_best_model_at_end || r->save_best) && !r->val->n)
        return tuna_errf(err, TUNA_EINVAL,
                         "--%s: there is no eval set (val_size 0 and no eval_dataset)",
                         r->save_best ? "save-strategy best" : "load-best-model-at-end");
    if (r->sched.type == SCHED_PLATEAU && (!r->val->n || !r->eval_every))
        return tuna_errf(err, TUNA_EINVAL,
                         "--lr-scheduler reduce_lr_on_plateau: the evals step it, and there are "
                         "none during training (an eval set and --eval-steps or --eval-strategy "
                         "epoch)");
    if (r->sched.type == SCHED_PLATEAU && r->world > 1)
        return tuna_errf(err, TUNA_EINVAL,
                         "--lr-scheduler reduce_lr_on_plateau is not implemented over several "
                         "processes (rank 0 alone evaluates)");
    if ((r->save_best || c->early_stopping_steps > 0) && r->world > 1)
        return tuna_errf(err, TUNA_EINVAL,
                         "--%s is not implemented over several processes (rank 0 alone "
                         "evaluates)",
                         r->save_best ? "save-strategy best" : "early-stopping-steps");
    return 0;
}

/* The trainable state of the method (train_state_init), the preference stages' reference, the
 * optimizer (sharded with --zero 1) and rm's value head. lo: the model's load options (the
 * reference of a full or freeze run is a second load). */
static int run_open_training(Run *r, TrainMethod method, const ModelLoadOptions *lo, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc;
    TrainSetup setup = {.method = method,
                        .freeze_layers = c->freeze_layers,
                        .freeze_modules = c->freeze_trainable_modules,
                        .lora_rank = c->lora_rank,
                        .lora_alpha = (float)c->lora_alpha,
                        .lora_dropout = (float)c->lora_dropout,
                        .neftune_alpha = (float)c->neftune_noise_alpha,
                        .label_smoothing = (float)c->label_smoothing_factor,
                        .dft = c->use_dft_loss,
                        .eaft = c->use_eaft_loss,
                        .eaft_alpha = (float)c->eaft_alpha,
                        .lora_rslora = c->use_rslora,
                        .lora_pissa = !strcmp(c->init_lora_weights, "pissa"),
                        .lora_dora = c->use_dora,
                        .lora_targets = c->lora_target,
                        .seed = (uint64_t)c->seed,
                        .prefix_tokens = c->prefix_tokens,
                        .prefix_projection = c->prefix_projection,
                        .prefix_hidden = c->prefix_hidden,
                        .prompt_lstm = !strcmp(c->prompt_encoder, "lstm"),
                        .prompt_layers = c->prompt_encoder_layers,
                        .grad_checkpoint = c->gradient_checkpointing};
    char toks[1024];
    int32_t *init_ids = NULL; /* --prompt-init-text: tokenized as PEFT does (tokenizer(text)) */
    size_t n_init = 0;
    if (method == METHOD_PROMPT && c->prompt_init_text[0]) {
        if ((rc = tokenizer_encode(r->tok, c->prompt_init_text, strlen(c->prompt_init_text), 1,
                                   &init_ids, &n_init, err)))
            return rc;
        if (!n_init) {
            free(init_ids);
            return tuna_errf(err, TUNA_EINVAL, "--prompt-init-text: \"%s\" makes no tokens",
                             c->prompt_init_text);
        }
        setup.prompt_init_ids = init_ids;
        setup.prompt_init_n = (int)n_init;
    }
    if (method == METHOD_LORA && c->lora_trainable_tokens[0]) {
        if ((rc = resolve_tokens(r, c->lora_trainable_tokens, toks, sizeof toks, err))) return rc;
        setup.lora_tokens = toks;
    }
    rc = train_state_init(r->m, &setup, r->rows, r->T, &r->ts, err);
    free(init_ids);
    if (rc) return rc;
    if (r->pref_on || r->kto_on) train_set_logit_stats(r->ts, 1); /* TRL's logits/... metrics */
    if ((r->pref_on && pref_uses_ref(r->pref.type)) || r->kto_on) {
        /* the reference: LoRA and P-tuning leave the Model's weights alone, so it is the same
         * Model without the adapter; full and freeze train them in place: a frozen copy. A run
         * from --adapter (a LoRA or P-tuning SFT, say) has that adapter as it starts, frozen (a
         * second copy of the adapter only, without dropout: TRL's reference when re-training
         * an adapter), filled in run_prepare */
        TrainSetup none = {.method = METHOD_NONE, .seed = setup.seed};
        if (c->adapter[0]) {
            none = setup;
            none.lora_dropout = 0;
            none.lora_pissa = 0; /* the base already holds the residual: no second SVD */
        }
        Model *base = r->m;
        if (method == METHOD_FULL || method == METHOD_FREEZE) {
            if ((rc = model_load_opts(c->model, r->be, lo, &r->ref_m, err))) return rc;
            base = r->ref_m;
        }
        if ((rc = train_state_init(base, &none, r->rows, r->T, &r->ref_ts, err))) return rc;
    }
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    /* --zero 1: each rank the AdamW state of its slice of the trainable values (ZeRO stage 1) */
    int shard = c->zero && r->world > 1;
    if (c->zero && r->world == 1)
        emit_log(r, "info", "--zero 1: one process, nothing to shard (the state stays whole)");
    float b1 = (float)c->adam_beta1, b2 = (float)c->adam_beta2, eps = (float)c->adam_epsilon;
    if ((rc = optim_init_shard(&r->opt, r->be, tp, np, b1, b2, eps, (float)c->weight_decay,
                               shard ? r->rank : 0, shard ? r->world : 1, err)))
        return rc;
    if (shard) train_track_weights(r->ts, 0); /* AdamW writes this rank's slice only */
    r->have_opt = 1;
    if (c->loraplus_lr_ratio > 0 &&
        (rc = optim_loraplus(&r->opt, tp, np, (float)c->loraplus_lr_ratio, err)))
        return rc;
    if (r->rm_on) { /* the value head, trained beside the model with the same AdamW settings */
        if ((rc = vhead_init(&r->vh, r->be, r->m->cfg.C, (uint64_t)c->seed, err))) return rc;
        r->have_vh = 1;
        if ((rc = optim_init(&r->vh_opt, r->be, r->vh.tp, 2, b1, b2, eps, (float)c->weight_decay,
                             err))) {
            vhead_free(&r->vh);
            r->have_vh = 0;
            return rc;
        }
    }
    return 0;
}

/* Checks and loads everything the run needs; touches no file. */
static int run_open(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc;
    TrainMethod method = METHOD_NONE;
    if ((rc = train_config_check(c, err)) || (rc = run_check_method(r, &method, err)) ||
        (rc = run_check_stage(r, err)))
        return rc;
    if (c->packing == 2 &&
        (method == METHOD_PTUNING || method == METHOD_PROMPT || method == METHOD_PTUNING_V1))
        return tuna_errf(err, TUNA_EUNSUP,
                         "--packing neat: not with --method %s (each packed example would need "
                         "the virtual tokens of its own); use --packing true or none",
                         c->method);
    int n_prompts = c->sample_prompts[0] ? 1 : 0;
    for (const char *p = c->sample_prompts; *p; p++)
        n_prompts += *p == '|';
    if (n_prompts > MAX_SAMPLE_PROMPTS)
        return tuna_errf(err, TUNA_EINVAL, "--sample-prompts: %d prompts, at most %d", n_prompts,
                         MAX_SAMPLE_PROMPTS);
    if (!(r->be = backend_init(c->backend, c->threads, err))) return err ? err->code : TUNA_EINVAL;
    r->be->mm_bf16 = c->bf16;
    if (c->use_eaft_loss && !strcmp(r->be->ops->name, "cuda"))
        return tuna_errf(err, TUNA_EUNSUP,
                         "--use-eaft-loss: its top-20 entropy is not implemented on the cuda "
                         "backend yet (cpu and ref have it)");
    if (r->world > 1) dist_threads(r);
    ModelLoadOptions lo;
    if ((rc = train_load_options(c, method, &lo, err))) return rc;
    if ((rc = model_load_opts(c->model, r->be, &lo, &r->m, err))) return rc;
    if (r->m->n_qbytes) log_typed_base(r, &lo);
    r->lr = c->lr > 0 ? c->lr : auto_lr(method, r->m->n_params + r->m->n_qparams);
    if ((rc = run_open_data(r, err)) ||
        (rc = sched_init(&r->sched, c->lr_scheduler, c->lr_scheduler_kwargs, r->lr, r->warmup,
                         r->total, err)) ||
        (rc = run_open_training(r, method, &lo, err)))
        return rc;
    r->best_eval = (double)INFINITY;
    return 0;
}

/* The state of the step loop that lives beside Run: the micro-batch copies, the clocks, the
 * skipped-step counters and where the last checkpoint is. */
enum { WIN = 16 };

typedef struct Loop {
    int GA, B, T;
    int32_t *ids, *tg, *sg; /* (GA, B, T) the step's micro-batches; sg: neat spans or NULL */
    int *Ts;                /* (GA) each micro-batch's row length */
    double *known;          /* (the trained tensors) train_grad_sumsq's, for optim_clip */
    const char *status;     /* "finished" or "stopped" */
    int early_stop;         /* early_stopping_steps evals without a lower loss: the end */
    double t_last, paused_at, paused_total, last_line;
    double win[WIN]; /* the last steps' times, for the ETA (not the first: warm-up) */
    int n_win, bad_row, bad_total, start_step, paused, saved_at;
} Loop;

/* What a step gives the loop: the loss it optimizes, the tokens with a target (n_t) and the
 * non-pad tokens (n_tok) it saw, and the objective's own metrics for the step event (none for
 * sft and pt; a preference stage's rewards and log-probabilities). */
#define STEP_MAX_METRICS 16
typedef struct StepOut {
    double loss;
    int n_t, n_tok;
    int n_metrics;
    const char *names[STEP_MAX_METRICS];
    double values[STEP_MAX_METRICS];
} StepOut;

/* What training optimizes, chosen by the stage: step runs the forward and backward of one
 * optimizer step's micro-batches into the gradients; eval gives the loss on the validation set.
 * sft and pt share the token-level cross-entropy (the batcher's targets say which tokens
 * train). A new stage (dpo, kto, rm) is a row here with its own step and eval. */
struct Objective {
    const char *stage;
    int (*step)(Run *r, Loop *lp, StepOut *out, TunaErr *err);
    int (*eval)(Run *r, double *loss, TunaErr *err);
};

static int xent_step(Run *r, Loop *lp, StepOut *out, TunaErr *err);
static int xent_eval(Run *r, double *loss, TunaErr *err);
static int pref_step(Run *r, Loop *lp, StepOut *out, TunaErr *err);
static int pref_eval(Run *r, double *loss, TunaErr *err);
static int kto_step(Run *r, Loop *lp, StepOut *out, TunaErr *err);
static int kto_eval(Run *r, double *loss, TunaErr *err);
static int rm_step(Run *r, Loop *lp, StepOut *out, TunaErr *err);
static int rm_eval(Run *r, double *loss, TunaErr *err);

static const Objective objectives[] = {
        {"sft", xent_step, xent_eval}, {"pt", xent_step, xent_eval}, {"dpo", pref_step, pref_eval},
        {"kto", kto_step, kto_eval},   {"rm", rm_step, rm_eval},
};

static const Objective *objective_for(const char *stage) {
    for (size_t i = 0; i < sizeof objectives / sizeof objectives[0]; i++)
        if (!strcmp(objectives[i].stage, stage)) return &objectives[i];
    return NULL;
}

/* The run folder's name, --template auto resolved, --adapter's shape, then everything opened
 * and checked before the folder is touched (a failed resume changes nothing). *resolved and
 * *adapted are the caller's: r->cfg may point at them. */
static int run_prepare(Run *r, int resume, TrainConfig *resolved, TrainConfig *adapted,
                       TunaErr *err) {
    const TrainConfig *cfg = r->cfg;
    if (cfg->output[0])
        snprintf(r->dir, sizeof r->dir, "%s", cfg->output);
    else
        snprintf(r->dir, sizeof r->dir, "runs/%s-%s", cfg->dataset, cfg->method);
    size_t dl = strlen(r->dir);
    while (dl > 1 && r->dir[dl - 1] == '/') /* runs/x/ is runs/x */
        r->dir[--dl] = '\0';
    /* --template auto (the default): the built-in matching the model's own chat template,
     * resolved here so train_config.json records the name */
    const char *fallback = template_auto_fallback(cfg->template_name);
    if (fallback) {
        TunaErr e = {0};
        TemplateAuto tauto = {0};
        if (template_auto(cfg->templates_dir, cfg->model, fallback, &tauto, &e))
            return tuna_errf(err, e.code, "--template auto: %s", e.msg);
        *resolved = *cfg;
        snprintf(resolved->template_name, sizeof resolved->template_name, "%s", tauto.name);
        r->cfg = cfg = resolved;
        char note[1200];
        snprintf(note, sizeof note, "template %s (auto: %s)", tauto.name, tauto.why);
        if (tauto.has_model_template && !tauto.matched) {
            emit_log(r, "warn", note);
        } else { /* recorded in metrics.jsonl, not printed */
            emit_note(r, "info", note);
        }
    }
    /* --adapter: the method and LoRA/prefix shape from the adapter, then its tensors as the
     * start (a resume has them in the checkpoint, and its saved config resolved already) */
    int from_adapter = cfg->adapter[0] && !resume;
    int rc = from_adapter ? adapter_train_config(cfg, adapted, err) : 0;
    if (!rc && from_adapter) r->cfg = cfg = adapted;
    if (!rc) rc = run_open(r, err);
    if (!rc && r->m->cfg.dropout_keys[0]) { /* GPT-2's resid_pdrop, embd_pdrop, attn_pdrop */
        char msg[400];
        snprintf(msg, sizeof msg,
                 "config.json: %s: tuna trains without the model's own dropout (transformers' "
                 "Trainer applies it in training, llm.c does not)",
                 r->m->cfg.dropout_keys);
        emit_log(r, "warn", msg);
    }
    if (!rc && cfg->compute_accuracy) { /* a metric: said where it is not logged, not refused */
        int xent = r->obj->eval == xent_eval;
        if (!xent || !r->be->ops->logit_stats)
            emit_log(r, "warn",
                     xent ? "compute_accuracy: this backend has no logit_stats; the evals log no "
                            "eval_accuracy"
                          : "compute_accuracy: for stages sft and pt (LLaMA-Factory's sft); this "
                            "stage's evals log their own accuracies");
    }
    if (!rc && from_adapter) rc = adapter_init_train(r->ts, cfg->adapter, cfg->model, err);
    if (!rc && r->ref_ts && cfg->adapter[0]) /* the reference: the adapter as it starts */
        rc = adapter_init_train(r->ref_ts, cfg->adapter, cfg->model, err);
    if (!rc && !r->rank) rc = run_claim(r, resume, err); /* the folder is rank 0's */
    if (!rc && resume) rc = resume_pick(r, err);
    if (!rc && !r->rank) rc = run_files_open(r, resume, err);
    if (r->world > 1) { /* all ranks start, or none */
        long bad = rc != 0;
        if (dist_sum_longs(&bad, 1, NULL) || (bad && !rc))
            rc = tuna_errf(err, TUNA_EINVAL, "another rank failed to start (rank 0 says why)");
    }
    if (rc && !r->rank) run_files_failed(r, resume, err);
    return rc;
}

enum { CMD_RUN, CMD_WAIT, CMD_STOP };

/* The commands between steps: the control file (pause, resume, save, stop) and the stop flag.
 * CMD_WAIT while paused; *rc is set when a save fails. */
static int loop_commands(Run *r, Loop *lp, int ctl, int *rc, TunaErr *err) {
    if ((ctl & CTL_PAUSE) && !lp->paused) {
        lp->paused = 1;
        lp->paused_at = time_now();
        emit_state(r, 1);
    } else if ((ctl & CTL_RESUME) && lp->paused) {
        lp->paused = 0;
        lp->paused_total += time_now() - lp->paused_at;
        emit_state(r, 0);
        lp->t_last = time_now();
    }
    if ((ctl & CTL_SAVE) && r->step > lp->saved_at) { /* every rank (save_checkpoint) */
        if ((*rc = save_checkpoint(r, err))) return CMD_STOP;
        lp->saved_at = r->step;
    }
    if (ctl & CTL_STOP) {
        lp->status = "stopped";
        return CMD_STOP;
    }
    return lp->paused ? CMD_WAIT : CMD_RUN;
}

/* sft and pt: forward and backward of the step's GA micro-batches into the gradients; the loss
 * is the mean cross-entropy over all targets of the step. */
static int xent_step(Run *r, Loop *lp, StepOut *out, TunaErr *err) {
    int GA = lp->GA, B = lp->B, T = lp->T, rc = 0;
    size_t slot = (size_t)B * T;
    int *n_t = &out->n_t, *n_tok = &out->n_tok;
    *n_t = *n_tok = 0;
    out->n_metrics = 0;
    for (int a = 0; a < GA; a++) {
        Batch b;
        batcher_next(&r->batcher, &b);
        lp->Ts[a] = b.T; /* each micro-batch its own row length; its slot stays B*T */
        size_t mine = (size_t)r->rank * B * b.T; /* this rank's rows of the global batch */
        memcpy(lp->ids + a * slot, b.ids + mine, sizeof(int32_t) * (size_t)B * b.T);
        memcpy(lp->tg + a * slot, b.targets + mine, sizeof(int32_t) * (size_t)B * b.T);
        if (lp->sg)
            memcpy(lp->sg + a * slot, b.seg_start + mine, sizeof(int32_t) * (size_t)B * b.T);
        *n_t += b.n_targets; /* the global batch's: one process's normalisation */
        *n_tok += b.n_tokens;
    }
    train_zero_grad(r->ts);
    /* each rank its own dropout masks (the same seed as before in one process) */
    train_set_step_seed(r->ts, (uint64_t)r->step * (uint64_t)r->world + (uint64_t)r->rank);
    double mb = r->world > 1 ? bucket_mb() : 0, t0 = time_now();
    if (r->world > 1 && !r->gsync) r->gsync = grad_sync_init(r, (size_t)(mb * 1e6));
    GradSync *g = mb > 0 ? r->gsync : NULL;
    double loss_sum = 0;
    for (int a = 0; a < GA && !rc; a++) {
        double s;
        int c;
        rc = train_set_seq_len(r->ts, lp->Ts[a], err);
        if (!rc && lp->sg) rc = train_set_spans(r->ts, lp->sg + a * slot, err);
        if (rc) break;
        train_set_micro_batch(r->ts, a); /* its own dropout masks and NEFTune noise */
        /* the buckets start during the last micro-batch's backward (the others accumulate) */
        train_set_grad_hook(r->ts, g && a == GA - 1 ? grad_ready : NULL, g);
        rc = train_step_fb(r->ts, lp->ids + a * slot, lp->tg + a * slot, B,
                           *n_t ? 1.0f / (float)*n_t : 0.0f, 1, &s, &c, err);
        loss_sum += s;
    }
    train_set_grad_hook(r->ts, NULL, NULL);
    if (!rc && r->world > 1) { /* the ranks' gradients and losses summed */
        double t1 = time_now();
        rc = g ? grad_sync_wait(g, err) : sum_grads(r, err);
        if (!g) r->gsync->t_comm += time_now() - t1;
        if (!rc) rc = dist_sum_doubles(&loss_sum, 1, err);
        r->gsync->t_step += time_now() - t0;
        r->gsync->steps++;
    }
    out->loss = *n_t ? loss_sum / *n_t : 0;
    return rc;
}

static int xent_eval(Run *r, double *loss, TunaErr *err) {
    long cnt;
    r->eval_acc = (double)NAN;
    return evalloss_run(r->ts, r->val, r->B, r->T, r->pad_multiple, NULL, NULL, loss, &cnt,
                        r->cfg->compute_accuracy ? &r->eval_acc : NULL, err);
}

/* dpo: one batch of pairs (rows 0..P-1 chosen, P..2P-1 rejected) of row length T: the
 * reference's sums, then the policy's forward (and with backward its gradients, the loss scaled
 * by `scale`), the pairs' loss and metrics added to pb->sums. */
static int pref_batch(Run *r, const int32_t *ids, const int32_t *tg, int T, int backward,
                      PrefBatch *pb, double *ref, TunaErr *err) {
    int rows = r->rows, rc;
    if ((rc = train_set_seq_len(r->ts, T, err))) return rc;
    if (r->ref_ts) {
        if ((rc = train_set_seq_len(r->ref_ts, T, err)) ||
            (rc = train_step_rows(r->ref_ts, ids, tg, rows, NULL, NULL, ref, NULL, err)))
            return rc;
    }
    pb->ref = r->ref_ts ? ref : NULL;
    if (backward) {
        rc = train_step_rows(r->ts, ids, tg, rows, pref_row_scales, pb, NULL, NULL, err);
        if (!rc) pref_logit_sums(train_row_stats(r->ts), rows, NULL, rows / 2, &pb->sums.lg);
        return rc;
    }
    double *logp = xmalloc(sizeof(double) * (size_t)rows);
    int *n = xmalloc(sizeof(int) * (size_t)rows);
    float *scale = xmalloc(sizeof(float) * (size_t)rows);
    rc = train_step_rows(r->ts, ids, tg, rows, NULL, NULL, logp, n, err);
    if (!rc) pref_row_scales(pb, logp, n, rows, scale);
    if (!rc) pref_logit_sums(train_row_stats(r->ts), rows, NULL, rows / 2, &pb->sums.lg);
    free(logp);
    free(n);
    free(scale);
    return rc;
}

/* The pairs of a batch with an answer (a short last batch is padded with empty rows). */
static int pref_count(const int32_t *tg, int P, int T) {
    int n = 0;
    for (int p = 0; p < P; p++) {
        int any = 0;
        for (int t = 0; t < T && !any; t++)
            any = tg[(size_t)p * T + t] != TEMPLATE_IGNORE;
        n += any;
    }
    return n;
}

/* dpo and rm: the step's GA micro-batches of pairs copied into the Loop's slots (their row
 * lengths in lp->Ts, token counts in out); returns the pairs with an answer. Data parallel:
 * every rank reads the global micro-batch of world x P pairs (chosen rows, then rejected) and
 * takes its P pairs, chosen then rejected; the counts are the global batch's (one process's
 * normalisation). */
static int gather_pairs(Run *r, Loop *lp, StepOut *out) {
    int rows = lp->B, P = rows / 2, PG = P * r->world, pairs = 0;
    size_t slot = (size_t)rows * lp->T;
    out->n_t = out->n_tok = 0;
    for (int a = 0; a < lp->GA; a++) {
        Batch b;
        batcher_next(&r->batcher, &b);
        lp->Ts[a] = b.T;
        size_t half = (size_t)P * b.T, mine = (size_t)r->rank * half, rej = (size_t)PG * b.T;
        for (int k = 0; k < 2; k++) { /* chosen, rejected */
            memcpy(lp->ids + a * slot + k * half, b.ids + k * rej + mine, sizeof(int32_t) * half);
            memcpy(lp->tg + a * slot + k * half, b.targets + k * rej + mine,
                   sizeof(int32_t) * half);
        }
        out->n_t += b.n_targets;
        out->n_tok += b.n_tokens;
        pairs += pref_count(b.targets, PG, b.T);
    }
    return pairs;
}

/* dpo: the step's GA micro-batches of pairs into the gradients; the loss is the mean over the
 * step's pairs, and the step event carries TRL's metrics (means over the pairs). */
static int pref_step(Run *r, Loop *lp, StepOut *out, TunaErr *err) {
    int GA = lp->GA, rows = lp->B, P = rows / 2, T = lp->T, rc = 0;
    size_t slot = (size_t)rows * T;
    int pairs = gather_pairs(r, lp, out);
    train_zero_grad(r->ts);
    /* each rank its own dropout masks (the same seed as before in one process) */
    train_set_step_seed(r->ts, (uint64_t)r->step * (uint64_t)r->world + (uint64_t)r->rank);
    PrefBatch pb = {.c = &r->pref, .pairs = P, .scale = pairs ? 1.0 / pairs : 0};
    double *ref = xmalloc(sizeof(double) * (size_t)rows);
    for (int a = 0; a < GA && !rc; a++) {
        train_set_micro_batch(r->ts, a);
        rc = pref_batch(r, lp->ids + a * slot, lp->tg + a * slot, lp->Ts[a], 1, &pb, ref, err);
    }
    free(ref);
    PrefSums *s = &pb.sums;
    if (!rc && r->world > 1) { /* the ranks' gradients and sums */
        double v[] = {s->loss,
                      s->rewards_chosen,
                      s->rewards_rejected,
                      s->accuracies,
                      s->margins,
                      s->logps_chosen,
                      s->logps_rejected,
                      s->logp_wins,
                      s->mean_logp_wins,
                      s->n,
                      s->lg.logits_chosen,
                      s->lg.logits_rejected,
                      s->lg.entropy,
                      s->lg.top1_chosen,
                      s->lg.tok_chosen,
                      s->lg.tok_rejected};
        if (!(rc = sum_grads(r, err)) && !(rc = dist_sum_doubles(v, 16, err)))
            *s = (PrefSums){.loss = v[0],
                            .rewards_chosen = v[1],
                            .rewards_rejected = v[2],
                            .accuracies = v[3],
                            .margins = v[4],
                            .logps_chosen = v[5],
                            .logps_rejected = v[6],
                            .logp_wins = v[7],
                            .mean_logp_wins = v[8],
                            .n = (int)v[9],
                            .lg = {v[10], v[11], v[12], v[13], v[14], v[15]}};
    }
    double n = s->n ? s->n : 1;
    out->loss = s->loss / n;
    static const char *const names[] = {"rewards/chosen",  "rewards/rejected", "rewards/accuracies",
                                        "rewards/margins", "logps/chosen",     "logps/rejected"};
    double v[] = {s->rewards_chosen, s->rewards_rejected, s->accuracies,
                  s->margins,        s->logps_chosen,     s->logps_rejected};
    out->n_metrics = 6;
    for (int k = 0; k < 6; k++) {
        out->names[k] = names[k];
        out->values[k] = v[k] / n;
    }
    out->n_metrics += pref_logit_metrics(&s->lg, 0, 1, out->names + 6, out->values + 6);
    return rc;
}

/* dpo: the mean preference loss over the validation pairs (forward only). */
static int pref_eval(Run *r, double *loss, TunaErr *err) {
    Batcher vb;
    int rc = batcher_init(&vb, r->val, r->B, r->T, 0, 0, err);
    if (rc) return rc;
    vb.pad_multiple = r->pad_multiple;
    PrefBatch pb = {.c = &r->pref, .pairs = r->B, .scale = 0};
    double *ref = xmalloc(sizeof(double) * (size_t)r->rows);
    size_t nb = batcher_batches_per_epoch(&vb);
    for (size_t i = 0; i < nb && !rc; i++) {
        Batch b;
        batcher_next(&vb, &b);
        rc = pref_batch(r, b.ids, b.targets, b.T, 0, &pb, ref, err);
    }
    free(ref);
    batcher_free(&vb);
    *loss = pb.sums.n ? pb.sums.loss / pb.sums.n : 0;
    r->eval_pref = pb.sums; /* the eval event's eval_rewards/... (train_out.c emit_eval) */
    return rc;
}

/* kto: one micro-batch (rows 0..B-1 the examples, B..2B-1 their KL sequences, row length T):
 * the KL rows forward only through the reference and the policy give the batch's kl (TRL:
 * detached, clamped at 0), the reference's sums of the examples, then the policy's forward
 * (and with backward its gradients, the loss scaled by kb->scale); adds to kb->sums. */
static int kto_batch(Run *r, const int32_t *ids, const int32_t *tg, const int32_t *tags, int T,
                     int backward, KtoBatch *kb, TunaErr *err) {
    int B = r->B, rc, stats = train_row_stats(r->ts) != NULL;
    size_t half = (size_t)B * T;
    double *buf = xmalloc(sizeof(double) * 3 * (size_t)B);
    double *pkl = buf, *rkl = buf + B, *ref = buf + 2 * B;
    int *cnt = xmalloc(sizeof(int) * (size_t)B);
    float *scale = xmalloc(sizeof(float) * (size_t)B);
    if ((rc = train_set_seq_len(r->ts, T, err)) || (rc = train_set_seq_len(r->ref_ts, T, err)) ||
        (rc = train_step_rows(r->ref_ts, ids + half, tg + half, B, NULL, NULL, rkl, NULL, err)))
        goto out;
    /* the policy's KL rows without the logit statistics (the examples' below are the metrics) */
    train_set_logit_stats(r->ts, 0);
    rc = train_step_rows(r->ts, ids + half, tg + half, B, NULL, NULL, pkl, cnt, err);
    train_set_logit_stats(r->ts, stats);
    if (rc || (rc = train_step_rows(r->ref_ts, ids, tg, B, NULL, NULL, ref, NULL, err))) goto out;
    kb->kl = kto_kl(B, pkl, rkl, cnt);
    if (backward && r->world > 1) { /* data parallel: kto_kl over the global micro-batch */
        double v[2] = {0, 0};
        for (int i = 0; i < B; i++)
            if (cnt[i] > 0) v[0] += pkl[i] - rkl[i], v[1]++;
        if ((rc = dist_sum_doubles(v, 2, err))) goto out;
        kb->kl = v[1] > 0 && v[0] > 0 ? v[0] / v[1] : 0; /* TRL: .clamp(min=0) */
    }
    kb->sums.kl_sum += kb->kl;
    kb->sums.n_kl++;
    kb->ref = ref;
    kb->tag = tags;
    if (backward) {
        rc = train_step_rows(r->ts, ids, tg, B, kto_row_scales, kb, NULL, NULL, err);
    } else if (!(rc = train_step_rows(r->ts, ids, tg, B, NULL, NULL, pkl, cnt, err))) {
        kto_row_scales(kb, pkl, cnt, B, scale);
    }
    if (!rc) pref_logit_sums(train_row_stats(r->ts), B, tags, 0, &kb->sums.lg);
out:
    free(buf);
    free(cnt);
    free(scale);
    return rc;
}

/* kto: the examples of a batch (a short last batch has empty rows, tag -1). */
static int kto_count(const int32_t *tags, int B) {
    int n = 0;
    for (int b = 0; b < B; b++)
        n += tags[b] >= 0;
    return n;
}

/* kto: TRL's metrics of a step's (or an eval's) sums; names prefixed by pre ("" or "eval_"). */
static int kto_metrics(const KtoSums *s, int eval, const char **names, double *v) {
    static const char *const train_names[] = {"kl",
                                              "rewards/chosen",
                                              "logps/chosen",
                                              "rewards/rejected",
                                              "logps/rejected",
                                              "rewards/margins"};
    static const char *const eval_names[] = {"eval_kl",
                                             "eval_rewards/chosen",
                                             "eval_logps/chosen",
                                             "eval_rewards/rejected",
                                             "eval_logps/rejected",
                                             "eval_rewards/margins"};
    const char *const *nm = eval ? eval_names : train_names;
    int k = 0;
    names[k] = nm[0];
    v[k++] = s->n_kl ? s->kl_sum / s->n_kl : 0;
    if (s->n_chosen) { /* TRL logs each side only when the batch has it */
        names[k] = nm[1];
        v[k++] = s->rewards_chosen / s->n_chosen;
        names[k] = nm[2];
        v[k++] = s->logps_chosen / s->n_chosen;
    }
    if (s->n_rejected) {
        names[k] = nm[3];
        v[k++] = s->rewards_rejected / s->n_rejected;
        names[k] = nm[4];
        v[k++] = s->logps_rejected / s->n_rejected;
    }
    if (s->n_chosen && s->n_rejected) {
        names[k] = nm[5];
        v[k++] = s->rewards_chosen / s->n_chosen - s->rewards_rejected / s->n_rejected;
    }
    return k;
}

/* kto: the step's GA micro-batches into the gradients; the loss is the mean over the step's
 * examples (TRL's mean of the weighted losses), the step event carries TRL's metrics. */
static int kto_step(Run *r, Loop *lp, StepOut *out, TunaErr *err) {
    int GA = lp->GA, rows = lp->B, B = rows / 2, T = lp->T, rc = 0, n_ex = 0;
    size_t slot = (size_t)rows * T;
    int32_t *tags = xmalloc(sizeof(int32_t) * (size_t)GA * B);
    out->n_t = out->n_tok = 0;
    for (int a = 0; a < GA; a++) {
        Batch b;
        batcher_next(&r->batcher, &b);
        lp->Ts[a] = b.T;
        /* the KL rows follow the examples at B * b.T in the slot. Data parallel: the global
         * micro-batch has world x B examples, then their KL rows; this rank takes its B of each
         * (a KL row stays beside its example) and the global counts */
        int BG = B * r->world;
        size_t half = (size_t)B * b.T, mine = (size_t)r->rank * half, kl = (size_t)BG * b.T;
        for (int k = 0; k < 2; k++) { /* the examples, their KL rows */
            memcpy(lp->ids + a * slot + k * half, b.ids + k * kl + mine, sizeof(int32_t) * half);
            memcpy(lp->tg + a * slot + k * half, b.targets + k * kl + mine, sizeof(int32_t) * half);
        }
        memcpy(tags + (size_t)a * B, b.tags + (size_t)r->rank * B, sizeof(int32_t) * (size_t)B);
        out->n_t += b.n_targets;
        out->n_tok += b.n_tokens;
        n_ex += kto_count(b.tags, BG);
    }
    train_zero_grad(r->ts);
    train_set_step_seed(r->ts, (uint64_t)r->step * (uint64_t)r->world + (uint64_t)r->rank);
    KtoBatch kb = {.c = &r->kto, .scale = n_ex ? 1.0 / n_ex : 0};
    for (int a = 0; a < GA && !rc; a++) {
        train_set_micro_batch(r->ts, a);
        rc = kto_batch(r, lp->ids + a * slot, lp->tg + a * slot, tags + (size_t)a * B, lp->Ts[a], 1,
                       &kb, err);
    }
    free(tags);
    KtoSums *s = &kb.sums;
    if (!rc && r->world > 1) { /* the ranks' gradients and sums (kl: already the global one) */
        double v[] = {s->loss,           s->rewards_chosen,   s->rewards_rejected,
                      s->logps_chosen,   s->logps_rejected,   s->n_chosen,
                      s->n_rejected,     s->lg.logits_chosen, s->lg.logits_rejected,
                      s->lg.entropy,     s->lg.top1_chosen,   s->lg.tok_chosen,
                      s->lg.tok_rejected};
        if (!(rc = sum_grads(r, err)) && !(rc = dist_sum_doubles(v, 13, err))) {
            s->loss = v[0], s->rewards_chosen = v[1], s->rewards_rejected = v[2];
            s->logps_chosen = v[3], s->logps_rejected = v[4];
            s->n_chosen = (int)v[5], s->n_rejected = (int)v[6];
            s->lg = (LogitSums){v[7], v[8], v[9], v[10], v[11], v[12]};
        }
    }
    out->loss = n_ex ? kb.sums.loss / n_ex : 0;
    out->n_metrics = kto_metrics(&kb.sums, 0, out->names, out->values);
    out->n_metrics += pref_logit_metrics(&kb.sums.lg, 0, 0, out->names + out->n_metrics,
                                         out->values + out->n_metrics);
    return rc;
}

/* kto: the mean loss over the validation examples (forward only). */
static int kto_eval(Run *r, double *loss, TunaErr *err) {
    Batcher vb;
    int rc = batcher_init(&vb, r->val, r->B, r->T, 0, 0, err);
    if (rc) return rc;
    vb.pad_multiple = r->pad_multiple;
    KtoBatch kb = {.c = &r->kto, .scale = 0};
    size_t nb = batcher_batches_per_epoch(&vb);
    int n_ex = 0;
    for (size_t i = 0; i < nb && !rc; i++) {
        Batch b;
        batcher_next(&vb, &b);
        n_ex += kto_count(b.tags, r->B);
        rc = kto_batch(r, b.ids, b.targets, b.tags, b.T, 0, &kb, err);
    }
    batcher_free(&vb);
    *loss = n_ex ? kb.sums.loss / n_ex : 0;
    r->eval_kto = kb.sums; /* the eval event's eval_kl, eval_rewards/... (emit_eval) */
    return rc;
}

/* Data parallel, rm: the value head's gradients summed over the ranks (its 2 tensors; through
 * a host copy where the backend's memory is not the host's). */
static int sum_vhead_grads(Run *r, TunaErr *err) {
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        const TrainParam *t = &r->vh.tp[i];
        if (r->be->ops->host_memory) {
            rc = dist_sum_floats(t->grad, t->n, err);
            continue;
        }
        float *h = xmalloc(sizeof(float) * t->n);
        r->be->ops->download(r->be, h, t->grad, sizeof(float) * t->n);
        rc = dist_sum_floats(h, t->n, err);
        if (!rc) r->be->ops->upload(r->be, t->grad, h, sizeof(float) * t->n);
        free(h);
    }
    return rc;
}

/* rm: one micro-batch of pairs (rows 0..P-1 chosen, P..2P-1 rejected) through the model and
 * the value head (with backward: the gradients, the loss scaled by rb->scale). */
static int rm_batch(Run *r, const int32_t *ids, const int32_t *tg, int T, int backward, RmBatch *rb,
                    TunaErr *err) {
    int rows = r->rows, rc;
    int *last = xmalloc(sizeof(int) * (size_t)rows);
    rm_last_positions(tg, rows, T, last);
    rb->last = last;
    rc = train_set_seq_len(r->ts, T, err);
    if (!rc) rc = train_step_hidden(r->ts, ids, rows, rm_hidden, rb, backward, err);
    free(last);
    return rc;
}

/* rm: the metrics of a step's (or an eval's) sums: accuracy (chosen scored above rejected),
 * the mean scores and their margin. */
static int rm_metrics(const RmSums *s, int eval, const char **names, double *v) {
    static const char *const tn[] = {"accuracy", "rewards/chosen", "rewards/rejected",
                                     "rewards/margins"};
    static const char *const en[] = {"eval_accuracy", "eval_rewards/chosen",
                                     "eval_rewards/rejected", "eval_rewards/margins"};
    if (!s->n) return 0;
    double x[] = {s->accuracy, s->chosen, s->rejected, s->chosen - s->rejected};
    for (int k = 0; k < 4; k++) {
        names[k] = eval ? en[k] : tn[k];
        v[k] = x[k] / s->n;
    }
    return 4;
}

/* rm: the step's GA micro-batches of pairs into the gradients (the model's and the value
 * head's); the loss is the mean over the step's pairs. */
static int rm_step(Run *r, Loop *lp, StepOut *out, TunaErr *err) {
    int GA = lp->GA, rows = lp->B, P = rows / 2, T = lp->T, rc = 0;
    size_t slot = (size_t)rows * T;
    int pairs = gather_pairs(r, lp, out);
    train_zero_grad(r->ts);
    vhead_zero_grad(&r->vh);
    train_set_step_seed(r->ts, (uint64_t)r->step * (uint64_t)r->world + (uint64_t)r->rank);
    RmBatch rb = {.vh = &r->vh,
                  .pairs = P,
                  .scale = pairs ? 1.0 / pairs : 0,
                  .drop_p = r->cfg->summary_dropout_prob};
    /* the summary dropout's masks: this step, rank and micro-batch's (as LoRA's dropout) */
    uint64_t s0 =
            ((uint64_t)r->cfg->seed * 0x100000001B3ULL) ^
            ((uint64_t)r->step * (uint64_t)r->world + (uint64_t)r->rank) * 0x9E3779B97F4A7C15ULL;
    for (int a = 0; a < GA && !rc; a++) {
        rb.drop_seed = tuna_splitmix64(s0 + (uint64_t)a);
        train_set_micro_batch(r->ts, a);
        rc = rm_batch(r, lp->ids + a * slot, lp->tg + a * slot, lp->Ts[a], 1, &rb, err);
    }
    if (!rc && r->world > 1) { /* the ranks' gradients (the model's, the head's) and sums */
        RmSums *s = &rb.sums;
        double v[] = {s->loss, s->accuracy, s->chosen, s->rejected, s->n};
        if (!(rc = sum_grads(r, err)) && !(rc = sum_vhead_grads(r, err)) &&
            !(rc = dist_sum_doubles(v, 5, err)))
            *s = (RmSums){.loss = v[0],
                          .accuracy = v[1],
                          .chosen = v[2],
                          .rejected = v[3],
                          .n = (int)v[4]};
    }
    out->loss = rb.sums.n ? rb.sums.loss / rb.sums.n : 0;
    out->n_metrics = rm_metrics(&rb.sums, 0, out->names, out->values);
    return rc;
}

/* rm: the mean loss over the validation pairs (forward only). */
static int rm_eval(Run *r, double *loss, TunaErr *err) {
    Batcher vb;
    int rc = batcher_init(&vb, r->val, r->B, r->T, 0, 0, err);
    if (rc) return rc;
    vb.pad_multiple = r->pad_multiple;
    RmBatch rb = {.vh = &r->vh, .pairs = r->B};
    size_t nb = batcher_batches_per_epoch(&vb);
    for (size_t i = 0; i < nb && !rc; i++) {
        Batch b;
        batcher_next(&vb, &b);
        rc = rm_batch(r, b.ids, b.targets, b.T, 0, &rb, err);
    }
    batcher_free(&vb);
    *loss = rb.sums.n ? rb.sums.loss / rb.sums.n : 0;
    r->eval_rm = rb.sums;
    return rc;
}

/* The eval metrics of the stage (kto's TRL names, rm's accuracy and scores, with
 * LLaMA-Factory's eval_ prefix). */
int run_eval_metrics(const Run *r, const char **names, double *v) {
    if (r->rm_on) return rm_metrics(&r->eval_rm, 1, names, v);
    if (r->obj->eval == xent_eval) { /* sft, pt: LLaMA-Factory's compute_accuracy */
        if (!isfinite(r->eval_acc)) return 0;
        names[0] = "eval_accuracy";
        v[0] = r->eval_acc;
        return 1;
    }
    if (r->pref_on) /* the rewards are emit_eval's; the policy's logit statistics here */
        return r->eval_pref.n ? pref_logit_metrics(&r->eval_pref.lg, 1, 1, names, v) : 0;
    if (!r->kto_on || !(r->eval_kto.n_chosen + r->eval_kto.n_rejected)) return 0;
    int k = kto_metrics(&r->eval_kto, 1, names, v);
    return k + pref_logit_metrics(&r->eval_kto.lg, 1, 0, names + k, v + k);
}

static int run_eval(Run *r, double *loss, TunaErr *err) {
    return r->obj->eval(r, loss, err);
}

/* A step with a non-finite loss or gradient was skipped: logged and counted; after
 * max_bad_steps in a row the run stops with an error naming the checkpoint that is kept. */
static int bad_step(Run *r, Loop *lp, double loss, double gnorm, TunaErr *err) {
    char msg[300];
    lp->bad_row++;
    lp->bad_total++;
    snprintf(msg, sizeof msg,
             "step %d skipped: loss %g, gradient norm %g are not finite (%d in a row, %d in all)",
             r->step, loss, gnorm, lp->bad_row, lp->bad_total);
    emit_log(r, "warn", msg);
    if (lp->bad_row < r->cfg->max_bad_steps) return 0;
    /* a checkpoint this run saved just before the first bad step holds the weights that gave
     * it: set aside (renamed, not deleted); the one before it is kept */
    char keep[300] = "";
    int first_bad = r->step - lp->bad_row + 1;
    if (!r->rank)
        ckpt_set_aside(r,
                       lp->saved_at == first_bad - 1 && lp->saved_at > lp->start_step ? lp->saved_at
                                                                                      : -1,
                       keep, sizeof keep);
    return tuna_errf(err, TUNA_EINVAL,
                     "stopped at step %d: %d steps in a row with a non-finite loss or gradient (lr "
                     "%.3g too high?); %s",
                     r->step, lp->bad_row, r->lr, keep);
}

/* The step event, its trainer_log.jsonl line and the progress line of a finished step; gives
 * the step's epoch, the elapsed time and the ETA (-1 while unknown). */
static void log_step(Run *r, Loop *lp, const StepOut *so, double lr, double gnorm, double *epoch,
                     double *elapsed, double *eta) {
    const TrainConfig *cfg = r->cfg;
    double loss = so->loss;
    int n_t = so->n_t, n_tok = so->n_tok;
    double now = time_now(), dt = now - lp->t_last;
    lp->t_last = now;
    double tok_window = dt > 0 ? n_tok / dt : 0;
    double real_window = dt > 0 ? n_t / dt : 0; /* tokens with a target: what trains */
    if (r->step - lp->start_step > 1) lp->win[lp->n_win++ % WIN] = dt; /* the first: warm-up */
    *elapsed = now - r->t0 - lp->paused_total;
    *eta = -1;
    if (lp->n_win >= 3) {
        int k = lp->n_win < WIN ? lp->n_win : WIN;
        double sum = 0;
        for (int i = 0; i < k; i++)
            sum += lp->win[i];
        *eta = sum / k * (r->total - r->step);
    }
    *epoch = (double)r->step / r->steps_per_epoch;
    if (r->step % (cfg->logging_steps > 0 ? cfg->logging_steps : 1) == 0 || r->step == r->total) {
        static Event e;
        event_clear(&e, EV_STEP);
        e.step = r->step;
        e.total_steps = r->total;
        e.epoch = *epoch;
        e.loss = loss;
        e.lr = lr;
        e.grad_norm = gnorm;
        e.tokens_per_s = tok_window;
        e.real_tok_s = real_window;
        e.real_tokens = n_t;
        e.tokens = n_tok;
        e.elapsed = *elapsed;
        if (*eta >= 0) e.eta = *eta;
        if (lp->bad_total) e.skipped_steps = lp->bad_total;
        for (int i = 0; i < so->n_metrics; i++) /* the objective's own (rewards/margins...) */
            event_metric(&e, so->names[i], so->values[i]);
        emit(r, &e);
        tlog_step(r, loss, lr, *epoch, *elapsed, *eta);
    }
    progress(r, loss, lr, tok_window, real_window, *eta, &lp->last_line);
}

/* After a step: the eval, the samples and the checkpoint that fall on it. */
static int after_step(Run *r, Loop *lp, double epoch, double elapsed, double eta, TunaErr *err) {
    const TrainConfig *cfg = r->cfg;
    int rc;
    int save = r->save_every > 0 && r->step % r->save_every == 0 && r->step < r->total;
    if (r->rank) { /* eval and samples: rank 0's; a checkpoint: every rank (save_checkpoint) */
        if (!save) return 0;
        if ((rc = save_checkpoint(r, err))) return rc;
        lp->saved_at = r->step;
        return 0;
    }
    int do_eval = (r->eval_every > 0 && r->step % r->eval_every == 0) || r->step == r->total;
    if (do_eval && r->val->n) {
        double el;
        if ((rc = run_eval(r, &el, err))) return rc;
        sched_eval(&r->sched, el); /* reduce_lr_on_plateau: Trainer steps it with eval_loss */
        if (el < r->best_eval) {
            r->best_eval = el;
            r->best_step = r->step;
            r->es_evals = 0;
            save |= r->save_best && r->step < r->total; /* save_strategy best */
        } else if (cfg->early_stopping_steps > 0 && ++r->es_evals >= cfg->early_stopping_steps &&
                   r->step < r->total) { /* Hugging Face's EarlyStoppingCallback */
            lp->early_stop = 1;
        }
        emit_eval(r, el, epoch, elapsed, eta, 1);
        say(r, "eval step %d: loss %.4f (best %.4f)", r->step, el, r->best_eval);
    }
    int do_sample = cfg->sample_steps > 0 ? r->step % cfg->sample_steps == 0 || r->step == r->total
                                          : do_eval;
    if (do_sample && (rc = run_samples(r, err))) return rc;
    /* after a failed write the loop's check says it; save_checkpoint writes nothing then */
    if (save) {
        if ((rc = save_checkpoint(r, err))) return rc;
        if (!r->write_errno) lp->saved_at = r->step;
    }
    return 0;
}

/* The steps, from r->step to r->total or a stop. */
static int run_loop(Run *r, Loop *lp, TunaErr *err) {
    int np, rc = 0;
    const TrainParam *tp = train_params(r->ts, &np);
    if (r->step == 0 && r->val->n && !r->rank) { /* the starting point of the eval curve */
        double el;
        rc = run_eval(r, &el, err);
        if (!rc) {
            emit_eval(r, el, 0, 0, 0, 0);
            say(r, "eval step 0: loss %.4f (before training)", el);
        }
    }
    while (r->step < r->total && !rc) {
        dist_set_step(r->step + 1); /* the step under way, as the step events count */
        int ctl = shared_control(r);
        if (r->write_errno) return write_error(r, err);
        int cmd = loop_commands(r, lp, ctl, &rc, err);
        if (cmd == CMD_STOP) break;
        if (cmd == CMD_WAIT) {
            usleep(100000);
            continue;
        }
        follow_free_cores(r);
        StepOut so;
        if ((rc = r->obj->step(r, lp, &so, err))) break;
        double loss = so.loss;
        float gscale;
        /* the parts of the norm the backward knows (one process: no sum of the ranks' after) */
        if (r->world == 1) train_grad_sumsq(r->ts, tp, np, lp->known);
        const double *known = r->world == 1 ? lp->known : NULL;
        double gnorm = optim_clip(r->be, tp, np, (float)r->cfg->max_grad_norm, &gscale, known);
        if (r->have_vh) { /* rm: one norm over the model's and the value head's gradients */
            float g2;
            double n1 = gnorm, /* the model's part, just summed */
                    n2 = optim_clip(r->be, r->vh.tp, 2, 0, &g2, NULL);
            double mx = r->cfg->max_grad_norm;
            gnorm = sqrt(n1 * n1 + n2 * n2);
            gscale = mx > 0 && gnorm > mx ? (float)(mx / (gnorm + 1e-6)) : 1.0f;
        }
        double lr = sched_lr(&r->sched, r->step);
        /* a non-finite loss or gradient: no update, the step is skipped, logged and counted */
        int bad = !isfinite(loss) || !isfinite(gnorm);
        if (!bad) optim_step(&r->opt, tp, np, (float)lr, gscale);
        /* --zero 1: each rank updated its slice; every rank gets the others' */
        if (!bad && (rc = optim_share_params(&r->opt, tp, np, err))) break;
        if (!bad && r->have_vh) optim_step(&r->vh_opt, r->vh.tp, 2, (float)lr, gscale);
        r->step++;
        if (bad) {
            rc = bad_step(r, lp, loss, gnorm, err);
            continue;
        }
        lp->bad_row = 0;
        double epoch, elapsed, eta;
        log_step(r, lp, &so, lr, gnorm, &epoch, &elapsed, &eta);
        if ((rc = after_step(r, lp, epoch, elapsed, eta, err))) break;
        if (lp->early_stop) {
            char msg[300];
            snprintf(msg, sizeof msg,
                     "early stopping: %d evals in a row without a lower eval loss than %.6g "
                     "(step %d); the run ends at step %d of %d",
                     r->es_evals, r->best_eval, r->best_step, r->step, r->total);
            emit_log(r, "info", msg);
            break;
        }
        if (r->write_errno && r->world == 1)
            break; /* said below; no more steps (ranks: at the
                                                     * next shared_control, all together) */
    }
    if (!rc && r->write_errno) rc = write_error(r, err);
    return rc;
}

/* The end: a checkpoint when stopped, the final adapter or model when finished, the done event
 * and the summary lines. */
static int run_finish(Run *r, Loop *lp, int rc, TunaErr *err) {
    const char *status = lp->status;
    /* every rank (save_checkpoint: the slices of a sharded optimizer); rank 0 writes it */
    if (!rc && !strcmp(status, "stopped") && r->step > lp->saved_at) rc = save_checkpoint(r, err);
    if (r->rank) return rc; /* rank 0 writes the result */
    TrainMethod mt = train_setup(r->ts)->method;
    int adapter = train_method_adapter(mt);
    if (!rc && !strcmp(status, "finished") && r->cfg->load_best_model_at_end)
        rc = load_best_result(r, err);
    if (!rc && !strcmp(status, "finished")) rc = write_result(r, adapter, err);
    emit_done(r, rc ? "error" : status, rc && err ? err->msg : "",
              isfinite(r->best_eval) ? r->best_eval : (double)NAN, lp->bad_total);
    if (!rc) { /* the summary: where the result went, best eval loss, time */
        char t[32], best[96] = "";
        fmt_secs(time_now() - r->t0 - lp->paused_total, t, sizeof t);
        if (isfinite(r->best_eval))
            snprintf(best, sizeof best, "; best eval loss %.4f%s", r->best_eval, "");
        if (!strcmp(status, "finished"))
            say(r, "tuna: finished %d steps in %s%s; %s in %s/", r->step, t, best,
                adapter ? "adapter" : "model", r->dir);
        else
            say(r, "tuna: stopped at step %d of %d after %s%s", r->step, r->total, t, best);
        if (lp->bad_total)
            say(r, "tuna: %d steps skipped for a non-finite loss or gradient", lp->bad_total);
    }
    return rc;
}

int train_run(const TrainConfig *cfg, int resume, const TrainHooks *hooks, TunaErr *err) {
    Run r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.hooks = hooks;
    r.lock_fd = -1;
    r.t0 = time_now();
    if (hooks && hooks->stopped) *hooks->stopped = 0;
    int drc = dist_init(err);
    if (drc) return drc;
    dist_set_timeout(cfg->dist_timeout);
    r.rank = dist_rank();
    r.world = dist_world();
    TrainConfig resolved, adapted;
    int rc = run_prepare(&r, resume, &resolved, &adapted, err);
    if (rc) {
        run_close(&r);
        return rc;
    }
    emit_start(&r);
    dist_note_run(r.dir);
    Loop lp = {.GA = r.cfg->grad_accum, .B = r.rows, .T = r.T, .status = "finished"};
    size_t n = (size_t)lp.GA * lp.B * lp.T;
    lp.ids = xmalloc(sizeof(int32_t) * n);
    lp.tg = xmalloc(sizeof(int32_t) * n);
    lp.sg = r.batcher.seg_start ? xmalloc(sizeof(int32_t) * n) : NULL;
    lp.Ts = xmalloc(sizeof(int) * (size_t)lp.GA);
    int ntp;
    train_params(r.ts, &ntp);
    lp.known = xmalloc(sizeof(double) * (size_t)(ntp > 0 ? ntp : 1));
    lp.t_last = time_now();
    lp.start_step = lp.saved_at = r.step;
    rc = run_loop(&r, &lp, err);
    grad_sync_report(&r);
    rc = run_finish(&r, &lp, rc, err);
    if (hooks && hooks->stopped) *hooks->stopped = !rc && !strcmp(lp.status, "stopped");
    free(lp.ids);
    free(lp.tg);
    free(lp.sg);
    free(lp.Ts);
    free(lp.known);
    run_close(&r);
    return rc;
}
