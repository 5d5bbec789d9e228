/* train_fixture.h: what the training tests against peft/TRL fixtures share (header-only, after
 * harness.h): the logits of rows through a Model, the fixture's labels as next-token targets,
 * and the round trip of a peft adapter folder (merged logits, tuna's save of it, reloaded). */
#ifndef TUNA_TESTS_TRAIN_FIXTURE_H
#define TUNA_TESTS_TRAIN_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/peft.h"
#include "src/pref.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

/* The largest |logit - ref| over B rows of T ids, each row from an empty cache; 1e30 when a
 * forward fails. ref is (B, T, V). */
static inline double test_logits_diff(Model *m, const int32_t *ids, const float *ref, int B,
                                      int T) {
    TunaErr err = {0};
    int V = m->cfg.V;
    float *got = xmalloc(sizeof(float) * (size_t)T * V);
    double worst = 0;
    if (model_reserve(m, T, T, &err)) worst = 1e30;
    for (int b = 0; b < B && worst < 1e30; b++) {
        model_reset(m);
        if (model_forward(m, ids + (size_t)b * T, T, got, 1, &err)) {
            worst = 1e30;
            break;
        }
        worst = fmax(worst, test_max_abs_diff(got, ref + (size_t)b * T * V, (size_t)T * V));
    }
    free(got);
    return worst;
}

/* A fixture case's file, backend and model: a SKIP and 1 when fpath is missing (gen: the
 * script that makes it); -1 and a failed CHECK when the file or the checkpoint in mdir does not
 * open on the backend; 0 when all three are open. What opened is in *be, *fx, *m either way
 * (free them). */
static inline int test_fx_open(const char *fpath, const char *gen, const char *mdir,
                               const char *backend, Backend **be, SafeTensors **fx, Model **m) {
    struct stat sb;
    *be = NULL;
    *fx = NULL;
    *m = NULL;
    if (stat(fpath, &sb)) {
        SKIP("%s missing (%s makes it)", fpath, gen);
        return 1;
    }
    TunaErr err = {0};
    *be = backend_init(backend, 2, &err);
    if (!*be || safetensors_open(fpath, fx, &err) || model_load(mdir, *be, m, &err)) {
        CHECK(0, "%s: %s", fpath, err.msg);
        return -1;
    }
    return 0;
}

/* The fixture's labels (B, T) as targets: shifted left by one, -100 where nothing is learnt;
 * *n_targets counts the rest. Free the result. */
static inline int32_t *test_next_targets(const int32_t *labels, int B, int T, int *n_targets) {
    int32_t *tg = xmalloc(sizeof(int32_t) * (size_t)B * T);
    *n_targets = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int32_t y = t + 1 < T ? labels[b * T + t + 1] : -100;
            tg[b * T + t] = y;
            *n_targets += y != -100;
        }
    return tg;
}

/* The model's parameter named name (HF's name), or NULL. */
static inline const ParamInfo *test_param_named(const Model *m, const char *name) {
    for (int i = 0; i < m->n_pinfo; i++)
        if (!strcmp(m->pinfo[i].name, name)) return &m->pinfo[i];
    return NULL;
}

/* A number from the fixture's metadata; 0 when absent. */
static inline double test_fx_number(const SafeTensors *fx, const char *key) {
    const char *s = safetensors_metadata(fx, key);
    return s ? atof(s) : 0;
}

/* TRL's targets: the next token where it is a completion token (its shifted completion mask
 * cm, (B, T)); -100 elsewhere. Free the result. */
static inline int32_t *test_completion_targets(const int32_t *ids, const int32_t *cm, int B,
                                               int T) {
    int32_t *tg = xmalloc(sizeof(int32_t) * (size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            tg[b * T + t] = t + 1 < T && cm[b * T + t + 1] ? ids[b * T + t + 1] : -100;
    return tg;
}

/* The fixture's "adapter.NAME" tensors into the trainable tensors tp[0..np) (each must be there). */
/* TRL's logit metrics of the policy's step just run on ts (rows rows; tags or P as
 * pref_logit_sums takes them; acc: mean_token_accuracy too) against the fixture's
 * logit_metrics, want of them, each within 1e-4 relative + 1e-5 */
static inline void test_fx_logit_metrics(const SafeTensors *fx, const char *fpath,
                                         const TrainState *ts, int rows, const int32_t *tags, int P,
                                         int acc, int want) {
    const StTensor *lm_t = safetensors_find(fx, "logit_metrics");
    CHECK(lm_t && lm_t->shape[0] == want, "%s: logit_metrics missing", fpath);
    if (!lm_t) return;
    LogitSums lg = {0};
    pref_logit_sums(train_row_stats(ts), rows, tags, P, &lg);
    const char *ln[4];
    double lv[4];
    int nl = pref_logit_metrics(&lg, 0, acc, ln, lv);
    CHECK(nl == want, "%s: %d logit metrics", fpath, nl);
    for (int k = 0; k < nl && k < want; k++) {
        double w = ((const float *)lm_t->data)[k], d = fabs(lv[k] - w);
        CHECK(d <= 1e-4 * fabs(w) + 1e-5, "%s: %s %.7g vs TRL's %.7g", fpath, ln[k], lv[k], w);
    }
}

static inline void test_fx_upload_adapter(Backend *be, const SafeTensors *fx, const char *fpath,
                                          const TrainParam *tp, int np) {
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "adapter.%s", tp[i].name);
        const StTensor *a = safetensors_find(fx, nm);
        CHECK(a != NULL, "%s: %s missing", fpath, nm);
        if (a) be->ops->upload(be, tp[i].data, a->data, tp[i].n * sizeof(float));
    }
}

/* The gradient of tp against the fixture's "grad.NAME": the largest |tuna - ref| over the
 * largest |ref| (1e-12 at least); -1 (and a failed CHECK) when it is missing or of another size. */
static inline double test_fx_grad_rel_diff(Backend *be, const SafeTensors *fx, const char *fpath,
                                           const TrainParam *tp) {
    char nm[200];
    snprintf(nm, sizeof nm, "grad.%s", tp->name);
    const StTensor *g = safetensors_find(fx, nm);
    CHECK(g && st_tensor_numel(g) == tp->n, "%s: %s missing or of another size", fpath, nm);
    if (!g || st_tensor_numel(g) != tp->n) return -1;
    float *got = xmalloc(sizeof(float) * tp->n);
    be->ops->download(be, got, tp->grad, sizeof(float) * tp->n);
    const float *ref = g->data;
    double mx = 0;
    for (size_t k = 0; k < tp->n; k++)
        mx = fmax(mx, fabs((double)ref[k]));
    double d = test_max_abs_diff(got, ref, tp->n) / fmax(mx, 1e-12);
    free(got);
    return d;
}

/* Full fine-tuning fixtures move the policy's final norm off the reference's: the fixture's
 * policy.model.norm.weight into m. 0, or -1 when it is missing. */
static inline int test_fx_policy_norm(Backend *be, Model *m, const SafeTensors *fx,
                                      const char *fpath) {
    const StTensor *w = safetensors_find(fx, "policy.model.norm.weight");
    const ParamInfo *pi = test_param_named(m, "model.norm.weight");
    CHECK(w && pi && pi->n == (size_t)w->shape[0], "%s: policy norm", fpath);
    if (!w || !pi) return -1;
    be->ops->upload(be, m->params + pi->off, w->data, pi->n * sizeof(float));
    return 0;
}

/* A peft adapter folder adir over tests/fixtures/llama against fx (input_ids, logits from
 * peft): loaded and merged, its logits within 1e-4; read as a training start
 * (adapter_read_config must set the flag is_set checks), saved by tuna (its adapter_config.json
 * must contain needle), loaded again: the same logits. what names the variant in messages. */
typedef struct AdapterRoundTrip {
    const char *what, *fx, *adir, *needle;
    int (*is_set)(const TrainSetup *s);
    int pissa_convert; /* also adapter_save_pissa_converted: a plain LoRA of the base, the same */
} AdapterRoundTrip;

static inline void test_adapter_round_trip(const AdapterRoundTrip *c) {
    const char *base = "tests/fixtures/llama";
    struct stat sb;
    if (stat(c->fx, &sb)) {
        SKIP("%s missing", c->fx);
        return;
    }
    TunaErr err = {0};
    SafeTensors *st = NULL;
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL, *m2 = NULL;
    TrainState *ts = NULL;
    CHECK(safetensors_open(c->fx, &st, &err) == 0, "%s", err.msg);
    const StTensor *ids = st ? safetensors_find(st, "input_ids") : NULL,
                   *lg = st ? safetensors_find(st, "logits") : NULL;
    CHECK(ids && lg, "%s: input_ids/logits missing", c->fx);
    if (!ids || !lg) goto done;
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    CHECK(model_load(base, be, &m, &err) == 0, "%s", err.msg);
    CHECK(m && adapter_load(m, c->adir, &err) == 0, "%s", err.msg);
    double d = m ? test_logits_diff(m, ids->data, lg->data, B, T) : 1e30;
    CHECK(d <= 1e-4, "peft %s adapter over llama: max |dlogit| %.3g", c->what, d);
    printf("  peft %s adapter over llama: max |dlogit| vs peft %.2e\n", c->what, d);
    TrainSetup s;
    char targets[512], tokens[64];
    CHECK(adapter_read_config(c->adir, &s, targets, sizeof targets, tokens, sizeof tokens, &err) ==
                          0 &&
                  c->is_set(&s),
          "adapter_read_config reads %s: %s", c->what, err.msg);
    s.lora_targets = targets;
    CHECK(model_load(base, be, &m2, &err) == 0, "%s", err.msg);
    if (!m2 || train_state_init(m2, &s, 1, 4, &ts, &err)) {
        CHECK(0, "%s", err.msg);
        goto done;
    }
    CHECK(adapter_init_train(ts, c->adir, base, &err) == 0, "%s", err.msg);
    char tmpl[] = "/tmp/tuna_adapter_rt_XXXXXX";
    char *tmp = mkdtemp(tmpl), out[256], cfg[300];
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) goto done;
    snprintf(out, sizeof out, "%s/adapter", tmp);
    CHECK(adapter_save(ts, out, base, &err) == 0, "%s", err.msg);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", out);
    char *text = xread_file(cfg, NULL);
    CHECK(text && strstr(text, c->needle), "tuna's adapter_config.json has %s", c->needle);
    free(text);
    model_free(m);
    m = NULL;
    CHECK(model_load(base, be, &m, &err) == 0, "%s", err.msg);
    CHECK(m && adapter_load(m, out, &err) == 0, "%s", err.msg);
    d = m ? test_logits_diff(m, ids->data, lg->data, B, T) : 1e30;
    CHECK(d <= 1e-4, "tuna's save of it, reloaded: max |dlogit| %.3g", d);
    printf("  tuna's save of that %s state, reloaded: max |dlogit| vs peft %.2e\n", c->what, d);
    if (c->pissa_convert) { /* rank 2r, no SVD on load: the original base plus it, the same */
        snprintf(out, sizeof out, "%s/converted", tmp);
        CHECK(adapter_save_pissa_converted(ts, out, base, &err) == 0, "%s", err.msg);
        TrainSetup cs;
        char ct[512], ck[64];
        CHECK(adapter_read_config(out, &cs, ct, sizeof ct, ck, sizeof ck, &err) == 0 &&
                      !cs.lora_pissa && cs.lora_rank == 2 * s.lora_rank &&
                      cs.lora_alpha == 2 * s.lora_alpha,
              "converted: %s pissa %d, r %d, alpha %g", err.msg, cs.lora_pissa, cs.lora_rank,
              (double)cs.lora_alpha);
        model_free(m);
        m = NULL;
        CHECK(model_load(base, be, &m, &err) == 0, "%s", err.msg);
        CHECK(m && adapter_load(m, out, &err) == 0, "%s", err.msg);
        d = m ? test_logits_diff(m, ids->data, lg->data, B, T) : 1e30;
        CHECK(d <= 1e-4, "converted to plain LoRA, over the original base: max |dlogit| %.3g", d);
        printf("  converted to a plain LoRA of rank %d, over the original base: max |dlogit| vs "
               "peft %.2e\n",
               cs.lora_rank, d);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "rm");
done:
    train_state_free(ts);
    model_free(m);
    model_free(m2);
    safetensors_free(st);
    backend_free(be);
}

#endif
