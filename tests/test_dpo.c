/* test_dpo.c: the preference stage's loss, TRL's reward metrics and every gradient against
 * tests/gen_dpo_fixtures.py (TRL's DPOTrainer for sigmoid, hinge and ipo; LLaMA-Factory's
 * formulas for label smoothing, pref_ftx, orpo and simpo), on the tiny llama with LoRA and
 * P-tuning (the reference: the same Model through a METHOD_NONE state, the adapter off, no copy)
 * and full fine-tuning (the reference: a second, frozen Model). One batch of two pairs. Tolerances: the
 * loss and each gradient tensor within 1e-3 relative (per tensor, of max |ref|); the metrics
 * within 1e-3 relative + 1e-5 (rewards are beta times differences of fp32 log-prob sums). Also
 * on the head in chunks of 3 rows, and on the ref backend. */
#include <stdint.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/pref.h"
#include "src/safetensors.h"
#include "src/xalloc.h"
#include "train_fixture.h"

#define RTOL 1e-3

static const char *metric_names[6] = {"rewards/chosen",  "rewards/rejected", "rewards/accuracies",
                                      "rewards/margins", "logps/chosen",     "logps/rejected"};

static const ParamInfo *pinfo_at(const Model *m, const float *data) {
    for (int i = 0; i < m->n_pinfo; i++)
        if (m->params + m->pinfo[i].off == data) return &m->pinfo[i];
    return NULL;
}

static void run_case(const char *backend, const char *method, const char *kind) {
    char fpath[256];
    snprintf(fpath, sizeof fpath, "tests/fixtures/train/dpo_%s_%s.safetensors", method, kind);
    struct stat sb;
    if (stat(fpath, &sb)) {
        SKIP("%s missing (tests/gen_dpo_fixtures.py makes it)", fpath);
        return;
    }
    int lora = !strcmp(method, "lora"), ptuning = !strcmp(method, "ptuning"),
        adapter = lora || ptuning;
    TunaErr err = {0};
    SafeTensors *fx = NULL;
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL, *mref = NULL;
    TrainState *ts = NULL, *rs = NULL;
    int32_t *targets = NULL;
    double *ref = NULL;
    if (!be || safetensors_open(fpath, &fx, &err) ||
        model_load("tests/fixtures/llama", be, &m, &err) ||
        (!adapter && model_load("tests/fixtures/llama", be, &mref, &err))) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *cm_t = safetensors_find(fx, "completion_mask"),
                   *loss_t = safetensors_find(fx, "loss"), *met_t = safetensors_find(fx, "metrics");
    CHECK(ids_t && cm_t && loss_t && met_t, "%s: tensors missing", fpath);
    if (!ids_t || !cm_t || !loss_t || !met_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], P = B / 2;
    PrefConfig pc = {.beta = test_fx_number(fx, "beta"),
                     .simpo_gamma = test_fx_number(fx, "simpo_gamma"),
                     .label_smoothing = test_fx_number(fx, "label_smoothing"),
                     .ftx = test_fx_number(fx, "ftx")};
    const char *lt = safetensors_metadata(fx, "loss_type");
    CHECK(lt && pref_loss_parse(lt, &pc.type) == 0, "%s: loss_type %s", fpath, lt ? lt : "?");
    TrainSetup setup = {.method = lora      ? METHOD_LORA
                                  : ptuning ? METHOD_PTUNING
                                            : METHOD_FULL,
                        .seed = 1};
    if (ptuning) {
        setup.prefix_tokens = 3;
    } else if (lora) {
        setup.lora_rank = 4;
        setup.lora_alpha = 8;
        setup.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    } else { /* the policy's final norm differs from the reference's */
        if (test_fx_policy_norm(be, m, fx, fpath)) goto done;
    }
    TrainSetup none = {.method = METHOD_NONE};
    if (train_state_init(m, &setup, B, T, &ts, &err) ||
        train_state_init(adapter ? m : mref, &none, B, T, &rs, &err)) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    if (adapter) test_fx_upload_adapter(be, fx, fpath, tp, np);
    /* targets: the next token where it is an answer token (TRL's shifted completion mask) */
    const int32_t *ids = ids_t->data, *cm = cm_t->data;
    targets = test_completion_targets(ids, cm, B, T);
    ref = xmalloc(sizeof(double) * (size_t)B);
    int rc = pref_uses_ref(pc.type)
                     ? train_step_rows(rs, ids, targets, B, NULL, NULL, ref, NULL, &err)
                     : 0;
    CHECK(rc == 0, "%s: reference: %s", fpath, err.msg);
    PrefBatch pb = {
            .c = &pc, .pairs = P, .ref = pref_uses_ref(pc.type) ? ref : NULL, .scale = 1.0 / P};
    train_zero_grad(ts);
    CHECK(train_set_logit_stats(ts, 1) == 1, "%s: no logit_stats on %s", fpath, backend);
    rc = train_step_rows(ts, ids, targets, B, pref_row_scales, &pb, NULL, NULL, &err);
    CHECK(rc == 0 && pb.sums.n == P, "%s: %s", fpath, err.msg);
    /* TRL's logits/chosen, logits/rejected, entropy, mean_token_accuracy (token means) */
    test_fx_logit_metrics(fx, fpath, ts, B, NULL, P, 1, 4);
    double loss = pb.sums.loss / P, want = ((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= RTOL * fabs(want), "%s: loss %.7f vs %.7f", fpath, loss, want);
    double got_m[6] = {pb.sums.rewards_chosen, pb.sums.rewards_rejected, pb.sums.accuracies,
                       pb.sums.margins,        pb.sums.logps_chosen,     pb.sums.logps_rejected};
    double worst_m = 0;
    for (int k = 0; k < 6; k++) {
        double g = got_m[k] / P, w = ((const float *)met_t->data)[k], d = fabs(g - w);
        CHECK(d <= RTOL * fabs(w) + 1e-5, "%s: %s %.7g vs %.7g", fpath, metric_names[k], g, w);
        if (fabs(w) > 1e-3 && d / fabs(w) > worst_m) worst_m = d / fabs(w);
    }
    double worst = 0;
    int compared = 0;
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "grad.%s", tp[i].name);
        const StTensor *g = safetensors_find(fx, nm);
        CHECK(g != NULL, "%s: %s missing", fpath, nm);
        if (!g) continue;
        const ParamInfo *pi = adapter ? NULL : pinfo_at(m, tp[i].data);
        CHECK(adapter || (pi && pi->mode == 0), "%s: %s layout", fpath, tp[i].name);
        float *got = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, got, tp[i].grad, tp[i].n * sizeof(float));
        const float *rf = g->data;
        double mx = 0, d = test_max_abs_diff(got, rf, tp[i].n);
        for (size_t j = 0; j < tp[i].n; j++)
            mx = fmax(mx, fabs((double)rf[j]));
        CHECK(d <= RTOL * mx + 1e-7, "%s: %s rel err %.3g (max|ref| %.3g)", fpath, tp[i].name,
              d / (mx > 0 ? mx : 1e-30), mx);
        if (mx > 1e-6 && d / mx > worst) worst = d / mx;
        compared++;
        free(got);
    }
    printf("  %-4s %-4s %-11s loss %.6f (ref %.6f)  metrics worst rel %.1e  %2d grads worst rel "
           "%.1e\n",
           backend, method, kind, loss, want, worst_m, compared, worst);
done:
    free(targets);
    free(ref);
    train_state_free(ts);
    train_state_free(rs);
    model_free(m);
    model_free(mref);
    backend_free(be);
    safetensors_free(fx);
}

/* The loss arithmetic alone: derivatives against central differences of pref_pairs. */
static void test_derivatives(void) {
    double pc[2] = {-3.1, -5.0}, pr[2] = {-2.7, -6.5}, rc[2] = {-3.0, -5.2}, rr[2] = {-2.9, -6.1};
    int nc[2] = {3, 5}, nr[2] = {4, 6};
    for (int t = PREF_SIGMOID; t <= PREF_SIMPO; t++) {
        PrefConfig c = {(PrefLossType)t, 0.1, 0.5, t == PREF_SIGMOID ? 0.1 : 0, 0.3};
        double gc[2], gr[2], worst = 0;
        PrefSums s = {0};
        pref_pairs(&c, 2, pc, pr, nc, nr, rc, rr, gc, gr, &s);
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 2; k++) {
                double h = 1e-5, *x = k ? &pr[i] : &pc[i], x0 = *x, dg[2], lo, hi;
                PrefSums a = {0}, b = {0};
                *x = x0 + h;
                pref_pairs(&c, 2, pc, pr, nc, nr, rc, rr, dg, dg, &a);
                *x = x0 - h;
                pref_pairs(&c, 2, pc, pr, nc, nr, rc, rr, dg, dg, &b);
                *x = x0;
                hi = a.loss, lo = b.loss;
                double fd = (hi - lo) / (2 * h), an = k ? gr[i] : gc[i];
                worst = fmax(worst, fabs(fd - an) / fmax(fabs(fd), 1e-3));
            }
        CHECK(worst < 1e-5, "pref loss %d: derivative vs central difference rel %.2g", t, worst);
    }
}

/* The policy's own preference accuracy: summed and per-token mean log-probs compared. */
static void test_logp_wins(void) {
    double pc[3] = {-3.0, -8.0, -4.0}, pr[3] = {-4.0, -6.0, -9.0}, g[3];
    int nc[3] = {3, 16, 2}, nr[3] = {2, 3, 9};
    PrefConfig c = {PREF_SIMPO, 0.1, 0.5, 0, 0};
    PrefSums s = {0};
    pref_pairs(&c, 3, pc, pr, nc, nr, NULL, NULL, g, g, &s);
    /* sums: -3 > -4 yes, -8 > -6 no, -4 > -9 yes; means: -1 > -2 yes, -0.5 > -2 yes, -2 > -1 no */
    CHECK(s.n == 3 && s.logp_wins == 2 && s.mean_logp_wins == 2,
          "logp wins %g, mean logp wins %g of %d", s.logp_wins, s.mean_logp_wins, s.n);
}

int main(void) {
    test_derivatives();
    test_logp_wins();
    const char *lora_cases[] = {"sigmoid",     "hinge", "ipo",  "sigmoid_ls",
                                "sigmoid_ftx", "orpo",  "simpo"};
    const char *full_cases[] = {"sigmoid", "hinge", "ipo", "sigmoid_ls"};
    for (size_t i = 0; i < sizeof lora_cases / sizeof lora_cases[0]; i++)
        run_case("cpu", "lora", lora_cases[i]);
    for (size_t i = 0; i < sizeof full_cases / sizeof full_cases[0]; i++)
        run_case("cpu", "full", full_cases[i]);
    run_case("cpu", "ptuning", "sigmoid");
    run_case("cpu", "ptuning", "ipo");
    run_case("ref", "lora", "sigmoid");
    run_case("ref", "full", "ipo");
    setenv("TUNA_HEAD_ROWS", "3", 1); /* the two passes of the head in chunks of 3 rows */
    printf("  with the LM head in chunks of 3 rows:\n");
    run_case("cpu", "lora", "sigmoid_ls");
    run_case("cpu", "full", "hinge");
    unsetenv("TUNA_HEAD_ROWS");
    return test_report("test_dpo");
}
