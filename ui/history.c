/* history.c: UI-owned rings fed from drained events (see history.h). */
#include "history.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/xalloc.h"

// --- rings

static void ring_init(Ring *r, size_t cap) {
    r->v = xcalloc(cap, sizeof(double));
    r->cap = cap;
    r->head = r->n = 0;
}

static void ring_push(Ring *r, double v) {
    r->v[r->head] = v;
    r->head = (r->head + 1) % r->cap;
    if (r->n < r->cap) r->n++;
}

double ring_at(const Ring *r, size_t i) {
    size_t start = (r->head + r->cap - r->n) % r->cap;
    return r->v[(start + i) % r->cap];
}

double ring_last(const Ring *r) {
    return r->n ? r->v[(r->head + r->cap - 1) % r->cap] : (double)NAN;
}

void ring_linear(const Ring *r, double *out) {
    for (size_t i = 0; i < r->n; i++)
        out[i] = ring_at(r, i);
}

// --- history

static void clear_scalars(History *h) {
    h->run[0] = h->model[0] = h->method[0] = h->dataset[0] = 0;
    h->total_steps = -1;
    h->step = -1;
    h->world_size = 1;
    h->epochs = h->epoch = h->loss = h->lr = h->grad_norm = h->tokens_per_s = h->real_tok_s =
            (double)NAN;
    h->elapsed = h->eta = h->eval_loss = h->perplexity = h->best_eval = (double)NAN;
    h->best_eval_step = -1;
    h->reward_acc = h->reward_margin = h->eval_reward_acc = h->eval_reward_margin = (double)NAN;
    h->status = RUN_WAITING;
    h->done_msg[0] = h->last_checkpoint[0] = 0;
}

History *history_new(void) {
    History *h = xcalloc(1, sizeof *h);
    ring_init(&h->step_x, HIST_STEPS);
    ring_init(&h->loss_y, HIST_STEPS);
    ring_init(&h->lr_y, HIST_STEPS);
    ring_init(&h->gn_y, HIST_STEPS);
    ring_init(&h->tps_y, HIST_STEPS);
    ring_init(&h->eval_x, HIST_EVALS);
    ring_init(&h->eval_y, HIST_EVALS);
    ring_init(&h->margin_x, HIST_STEPS);
    ring_init(&h->margin_y, HIST_STEPS);
    ring_init(&h->emargin_x, HIST_EVALS);
    ring_init(&h->emargin_y, HIST_EVALS);
    clear_scalars(h);
    return h;
}

void history_free(History *h) {
    if (!h) return;
    Ring *rings[] = {&h->step_x,   &h->loss_y,    &h->lr_y,     &h->gn_y,
                     &h->tps_y,    &h->eval_x,    &h->eval_y,   &h->margin_x,
                     &h->margin_y, &h->emargin_x, &h->emargin_y};
    for (size_t i = 0; i < sizeof rings / sizeof rings[0]; i++)
        free(rings[i]->v);
    free(h);
}

void history_reset(History *h) {
    Ring *rings[] = {&h->step_x,   &h->loss_y,    &h->lr_y,     &h->gn_y,
                     &h->tps_y,    &h->eval_x,    &h->eval_y,   &h->margin_x,
                     &h->margin_y, &h->emargin_x, &h->emargin_y};
    for (size_t i = 0; i < sizeof rings / sizeof rings[0]; i++)
        rings[i]->head = rings[i]->n = 0;
    h->samples_head = h->samples_n = 0;
    h->logs_head = h->logs_n = 0;
    clear_scalars(h);
    h->version++;
}

static void set_if(double *dst, double v) {
    if (isfinite(v)) *dst = v;
}

void history_note(History *h, int level, const char *text) {
    HistLog *l = &h->logs[h->logs_head];
    l->level = level;
    event_str(l->text, sizeof l->text, text);
    h->logs_head = (h->logs_head + 1) % HIST_LOGS;
    if (h->logs_n < HIST_LOGS) h->logs_n++;
    h->version++;
}

/* The event's metric called name (an objective's own: rewards/margins...), NaN when absent. */
static double metric_of(const Event *ev, const char *name) {
    for (int i = 0; i < ev->n_metrics && i < EVENT_MAX_METRICS; i++)
        if (!strcmp(ev->metric_name[i], name)) return ev->metric[i];
    return (double)NAN;
}

void history_apply(History *h, const Event *ev) {
    if (ev->total_steps > 0) h->total_steps = ev->total_steps;
    if (ev->step > h->step) h->step = ev->step;
    set_if(&h->epoch, ev->epoch);
    switch (ev->type) {
    case EV_RESET: history_reset(h); return;
    case EV_START:
        event_str(h->run, sizeof h->run, ev->run);
        event_str(h->model, sizeof h->model, ev->model);
        event_str(h->method, sizeof h->method, ev->method);
        event_str(h->dataset, sizeof h->dataset, ev->dataset);
        set_if(&h->epochs, ev->epochs);
        double ws = metric_of(ev, "world_size");
        h->world_size = isfinite(ws) && ws >= 1 ? (int)ws : 1;
        if (h->status == RUN_WAITING) h->status = RUN_RUNNING;
        break;
    case EV_STEP:
        ring_push(&h->step_x, (double)ev->step);
        ring_push(&h->loss_y, ev->loss);
        ring_push(&h->lr_y, ev->lr);
        ring_push(&h->gn_y, ev->grad_norm);
        ring_push(&h->tps_y, ev->tokens_per_s);
        set_if(&h->loss, ev->loss);
        set_if(&h->lr, ev->lr);
        set_if(&h->grad_norm, ev->grad_norm);
        set_if(&h->tokens_per_s, ev->tokens_per_s);
        set_if(&h->real_tok_s, ev->real_tok_s);
        set_if(&h->elapsed, ev->elapsed);
        set_if(&h->eta, ev->eta);
        if (h->status == RUN_WAITING) h->status = RUN_RUNNING;
        if (isfinite(metric_of(ev, "rewards/margins"))) {
            ring_push(&h->margin_x, (double)ev->step);
            ring_push(&h->margin_y, metric_of(ev, "rewards/margins"));
            h->reward_margin = metric_of(ev, "rewards/margins");
            set_if(&h->reward_acc, metric_of(ev, "rewards/accuracies"));
            set_if(&h->reward_acc, metric_of(ev, "accuracy")); /* rm's pairwise accuracy */
        }
        break;
    case EV_EVAL:
        ring_push(&h->eval_x, (double)ev->step);
        ring_push(&h->eval_y, ev->eval_loss);
        set_if(&h->eval_loss, ev->eval_loss);
        set_if(&h->perplexity, ev->perplexity);
        if (isfinite(ev->eval_loss) && !(ev->eval_loss >= h->best_eval)) {
            h->best_eval = ev->eval_loss;
            h->best_eval_step = ev->step;
        }
        if (isfinite(metric_of(ev, "eval_rewards/margins"))) {
            ring_push(&h->emargin_x, (double)ev->step);
            ring_push(&h->emargin_y, metric_of(ev, "eval_rewards/margins"));
            h->eval_reward_margin = metric_of(ev, "eval_rewards/margins");
            set_if(&h->eval_reward_acc, metric_of(ev, "eval_rewards/accuracies"));
            set_if(&h->eval_reward_acc, metric_of(ev, "eval_accuracy"));
        }
        break;
    case EV_SAMPLE: {
        HistSample *s = &h->samples[h->samples_head];
        s->step = ev->step;
        event_str(s->prompt, sizeof s->prompt, ev->name);
        event_str(s->text, sizeof s->text, ev->text);
        h->samples_head = (h->samples_head + 1) % HIST_SAMPLES;
        if (h->samples_n < HIST_SAMPLES) h->samples_n++;
        break;
    }
    case EV_LOG: history_note(h, ev->level, ev->text); break;
    case EV_CHECKPOINT: {
        event_str(h->last_checkpoint, sizeof h->last_checkpoint, ev->name);
        char msg[UI_NAME_MAX + 64];
        snprintf(msg, sizeof msg, "checkpoint saved at step %ld: %.200s", ev->step, ev->name);
        history_note(h, 0, msg);
        break;
    }
    case EV_STATE:
        if (h->status == RUN_RUNNING || h->status == RUN_PAUSED || h->status == RUN_WAITING)
            h->status = ev->paused ? RUN_PAUSED : RUN_RUNNING;
        history_note(h, 0, ev->paused ? "training paused" : "training resumed");
        break;
    case EV_DONE: {
        h->status = !strcmp(ev->name, "error")     ? RUN_ERROR
                    : !strcmp(ev->name, "stopped") ? RUN_STOPPED
                                                   : RUN_FINISHED;
        event_str(h->done_msg, sizeof h->done_msg, ev->text);
        char msg[UI_TEXT_MAX];
        snprintf(msg, sizeof msg, "run %.32s at step %ld%s%.1900s", ev->name, ev->step,
                 ev->text[0] ? ": " : "", ev->text);
        history_note(h, h->status == RUN_ERROR ? 2 : 0, msg);
        break;
    }
    case EV_NONE: break;
    }
    h->version++;
}

const HistSample *history_sample(const History *h, size_t i) {
    if (i >= h->samples_n) return NULL;
    return &h->samples[(h->samples_head + HIST_SAMPLES - 1 - i) % HIST_SAMPLES];
}

const HistLog *history_log(const History *h, size_t i) {
    if (i >= h->logs_n) return NULL;
    return &h->logs[(h->logs_head + HIST_LOGS - 1 - i) % HIST_LOGS];
}

const char *run_status_name(RunStatus s) {
    static const char *names[] = {"waiting", "running", "paused", "finished", "stopped", "error"};
    return names[s];
}
