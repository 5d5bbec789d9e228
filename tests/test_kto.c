/* test_kto.c: the kto stage's loss, TRL's metrics (kl, rewards and logps of the desirable and
 * undesirable examples) and every gradient against tests/gen_kto_rm_fixtures.py (TRL's
 * KTOTrainer.compute_loss), on the tiny llama with LoRA (the reference: the same Model through a
 * METHOD_NONE state, the adapter off) and full fine-tuning (a second, frozen Model). One batch
 * of five examples with their mismatched KL sequences, as the kto stage runs it: the KL rows
 * forward only (policy and reference), then the examples with the kl. Tolerances as test_dpo:
 * the loss and each gradient tensor within 1e-3 relative (per tensor, of max |ref|), the
 * metrics within 1e-3 relative + 1e-5. Also the ref backend and the head in chunks of 3 rows. */
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

static const char *metric_names[6] = {
        "kl",           "rewards/chosen", "rewards/rejected", "rewards/margins",
        "logps/chosen", "logps/rejected"};

static void run_case(const char *backend, const char *method, const char *kind) {
    char fpath[256];
    snprintf(fpath, sizeof fpath, "tests/fixtures/train/kto_%s_%s.safetensors", method, kind);
    struct stat sb;
    if (stat(fpath, &sb)) {
        SKIP("%s missing (tests/gen_kto_rm_fixtures.py makes it)", fpath);
        return;
    }
    int lora = !strcmp(method, "lora");
    TunaErr err = {0};
    SafeTensors *fx = NULL;
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL, *mref = NULL;
    TrainState *ts = NULL, *rs = NULL;
    int32_t *tg = NULL, *ktg = NULL;
    double *buf = NULL;
    int *cnt = NULL, *tag = NULL;
    if (!be || safetensors_open(fpath, &fx, &err) ||
        model_load("tests/fixtures/llama", be, &m, &err) ||
        (!lora && model_load("tests/fixtures/llama", be, &mref, &err))) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *cm_t = safetensors_find(fx, "completion_mask"),
                   *kids_t = safetensors_find(fx, "KL_input_ids"),
                   *kcm_t = safetensors_find(fx, "KL_completion_mask"),
                   *lab_t = safetensors_find(fx, "label"), *loss_t = safetensors_find(fx, "loss"),
                   *met_t = safetensors_find(fx, "metrics");
    CHECK(ids_t && cm_t && kids_t && kcm_t && lab_t && loss_t && met_t, "%s: tensors missing",
          fpath);
    if (!ids_t || !cm_t || !kids_t || !kcm_t || !lab_t || !loss_t || !met_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], T2 = (int)kids_t->shape[1];
    int Tmax = T > T2 ? T : T2;
    KtoConfig kc = {.beta = test_fx_number(fx, "beta"),
                    .desirable_weight = test_fx_number(fx, "desirable_weight"),
                    .undesirable_weight = test_fx_number(fx, "undesirable_weight")};
    TrainSetup setup = {.method = lora ? METHOD_LORA : METHOD_FULL, .seed = 1};
    if (lora) {
        setup.lora_rank = 4;
        setup.lora_alpha = 8;
        setup.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    } else { /* the policy's final norm differs from the reference's */
        if (test_fx_policy_norm(be, m, fx, fpath)) goto done;
    }
    TrainSetup none = {.method = METHOD_NONE};
    if (train_state_init(m, &setup, B, Tmax, &ts, &err) ||
        train_state_init(lora ? m : mref, &none, B, Tmax, &rs, &err)) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    if (lora) test_fx_upload_adapter(be, fx, fpath, tp, np);
    tg = test_completion_targets(ids_t->data, cm_t->data, B, T);
    ktg = test_completion_targets(kids_t->data, kcm_t->data, B, T2);
    buf = xmalloc(sizeof(double) * 3 * (size_t)B);
    double *pkl = buf, *rkl = buf + B, *ref = buf + 2 * B;
    cnt = xmalloc(sizeof(int) * (size_t)B);
    tag = xmalloc(sizeof(int) * (size_t)B);
    for (int b = 0; b < B; b++)
        tag[b] = ((const int32_t *)lab_t->data)[b];
    /* the KL rows, forward only: the reference, then the policy */
    int rc = train_set_seq_len(rs, T2, &err) || train_set_seq_len(ts, T2, &err) ||
             train_step_rows(rs, kids_t->data, ktg, B, NULL, NULL, rkl, NULL, &err) ||
             train_step_rows(ts, kids_t->data, ktg, B, NULL, NULL, pkl, cnt, &err);
    CHECK(rc == 0, "%s: KL rows: %s", fpath, err.msg);
    double kl = kto_kl(B, pkl, rkl, cnt);
    rc = train_set_seq_len(rs, T, &err) || train_set_seq_len(ts, T, &err) ||
         train_step_rows(rs, ids_t->data, tg, B, NULL, NULL, ref, NULL, &err);
    CHECK(rc == 0, "%s: reference: %s", fpath, err.msg);
    KtoBatch kb = {.c = &kc, .tag = tag, .ref = ref, .kl = kl, .scale = 1.0 / B};
    train_zero_grad(ts);
    CHECK(train_set_logit_stats(ts, 1) == 1, "%s: no logit_stats on %s", fpath, backend);
    rc = train_step_rows(ts, ids_t->data, tg, B, kto_row_scales, &kb, NULL, NULL, &err);
    const KtoSums *s = &kb.sums;
    /* TRL's logits/chosen, logits/rejected (desirable, undesirable), entropy */
    if (rc == 0) test_fx_logit_metrics(fx, fpath, ts, B, lab_t->data, 0, 0, 3);
    CHECK(rc == 0 && s->n_chosen + s->n_rejected == B, "%s: %s", fpath, err.msg);
    double loss = s->loss / B, want = ((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= RTOL * fabs(want), "%s: loss %.7f vs %.7f", fpath, loss, want);
    double nc = s->n_chosen ? s->n_chosen : 1, nr = s->n_rejected ? s->n_rejected : 1;
    double got_m[6] = {kl,
                       s->rewards_chosen / nc,
                       s->rewards_rejected / nr,
                       s->rewards_chosen / nc - s->rewards_rejected / nr,
                       s->logps_chosen / nc,
                       s->logps_rejected / nr};
    double worst_m = 0;
    for (int k = 0; k < 6; k++) {
        double g = got_m[k], w = ((const float *)met_t->data)[k], d = fabs(g - w);
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
    printf("  %-4s %-4s %-8s loss %.6f (ref %.6f)  kl %.5f  metrics worst rel %.1e  %2d grads "
           "worst rel %.1e\n",
           backend, method, kind, loss, want, kl, worst_m, compared, worst);
done:
    free(tg);
    free(ktg);
    free(buf);
    free(cnt);
    free(tag);
    train_state_free(ts);
    train_state_free(rs);
    model_free(m);
    model_free(mref);
    backend_free(be);
    safetensors_free(fx);
}

/* The loss arithmetic alone: derivatives against central differences of kto_rows; the kl
 * clamp and padding rows. */
static void test_derivatives(void) {
    double pol[4] = {-3.1, -5.0, -2.7, -6.5}, ref[4] = {-3.0, -5.2, -2.9, -6.1};
    int cnt[4] = {3, 5, 0, 6}, tag[4] = {1, 0, 1, 0};
    KtoConfig c = {0.1, 1.33, 0.7};
    double g[4], worst = 0;
    KtoSums s = {0};
    kto_rows(&c, 4, pol, ref, cnt, tag, 0.05, g, &s);
    CHECK(s.n_chosen == 1 && s.n_rejected == 2 && g[2] == 0, "kto: the padding row counts");
    for (int i = 0; i < 4; i++) {
        double h = 1e-5, x0 = pol[i], dg[4];
        KtoSums a = {0}, b = {0};
        pol[i] = x0 + h;
        kto_rows(&c, 4, pol, ref, cnt, tag, 0.05, dg, &a);
        pol[i] = x0 - h;
        kto_rows(&c, 4, pol, ref, cnt, tag, 0.05, dg, &b);
        pol[i] = x0;
        double fd = (a.loss - b.loss) / (2 * h);
        worst = fmax(worst, fabs(fd - g[i]) / fmax(fabs(fd), 1e-3));
    }
    CHECK(worst < 1e-5, "kto loss: derivative vs central difference rel %.2g", worst);
    double p2[3] = {-1, -2, -3}, r2[3] = {-1.5, -1, -3}, p3[2] = {-1, -1}, r3[2] = {-0.5, -0.7};
    int n2[3] = {2, 2, 0}, n3[2] = {1, 1};
    CHECK(fabs(kto_kl(3, p2, r2, n2) - 0) < 1e-12, "kto_kl: mean of 0.5 and -1 clamps to 0");
    p2[1] = -0.5; /* (0.5 + 0.5) / 2 over the two rows with a completion */
    CHECK(fabs(kto_kl(3, p2, r2, n2) - 0.5) < 1e-12, "kto_kl %g", kto_kl(3, p2, r2, n2));
    CHECK(kto_kl(2, p3, r3, n3) == 0, "kto_kl negative");
}

int main(void) {
    test_derivatives();
    run_case("cpu", "lora", "base");
    run_case("cpu", "lora", "weights");
    run_case("cpu", "full", "base");
    run_case("cpu", "full", "weights");
    run_case("ref", "lora", "weights");
    run_case("ref", "full", "base");
    setenv("TUNA_HEAD_ROWS", "3", 1); /* the two passes of the head in chunks of 3 rows */
    printf("  with the LM head in chunks of 3 rows:\n");
    run_case("cpu", "lora", "base");
    run_case("cpu", "full", "weights");
    unsetenv("TUNA_HEAD_ROWS");
    return test_report("test_kto");
}
