/* test_rm.c: the reward model (the rm stage) against tests/gen_kto_rm_fixtures.py, a direct
 * transcription of LLaMA-Factory's PairwiseTrainer with TRL's value head: the pairs' scores
 * (v_head.summary on the last hidden state at each row's last token), the Bradley-Terry loss,
 * the accuracy, and every gradient (the model's or the adapter's, and the value head's) on the
 * tiny llama with LoRA and full fine-tuning; one batch of two pairs, right-padded. The rows'
 * last tokens come from the targets (rm_last_positions) and must be attention_mask.sum - 1.
 * Tolerances: loss, scores and each gradient tensor within 1e-3 relative (per tensor, of
 * max |ref|). Also the ref backend, and value_head.safetensors written and read back. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/safetensors.h"
#include "src/value_head.h"
#include "src/xalloc.h"
#include "train_fixture.h"

#define RTOL 1e-3

static void check_grad(const char *fpath, Backend *be, const SafeTensors *fx, const TrainParam *t,
                       double *worst, int *compared) {
    char nm[200];
    snprintf(nm, sizeof nm, "grad.%s", t->name);
    const StTensor *g = safetensors_find(fx, nm);
    CHECK(g != NULL, "%s: %s missing", fpath, nm);
    if (!g) return;
    float *got = xmalloc(sizeof(float) * t->n);
    be->ops->download(be, got, t->grad, t->n * sizeof(float));
    const float *rf = g->data;
    double mx = 0, d = test_max_abs_diff(got, rf, t->n);
    for (size_t j = 0; j < t->n; j++)
        mx = fmax(mx, fabs((double)rf[j]));
    CHECK(d <= RTOL * mx + 1e-7, "%s: %s rel err %.3g (max|ref| %.3g)", fpath, t->name,
          d / (mx > 0 ? mx : 1e-30), mx);
    if (mx > 1e-6 && d / mx > *worst) *worst = d / mx;
    (*compared)++;
    free(got);
}

static void run_case(const char *backend, const char *method) {
    char fpath[256];
    snprintf(fpath, sizeof fpath, "tests/fixtures/train/rm_%s.safetensors", method);
    struct stat sb;
    if (stat(fpath, &sb)) {
        SKIP("%s missing (tests/gen_kto_rm_fixtures.py makes it)", fpath);
        return;
    }
    int lora = !strcmp(method, "lora");
    TunaErr err = {0};
    SafeTensors *fx = NULL;
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    ValueHead vh = {0};
    int32_t *tg = NULL;
    int *last = NULL;
    if (!be || safetensors_open(fpath, &fx, &err) ||
        model_load("tests/fixtures/llama", be, &m, &err)) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *am_t = safetensors_find(fx, "attention_mask"),
                   *cm_t = safetensors_find(fx, "completion_mask"),
                   *loss_t = safetensors_find(fx, "loss"), *sc_t = safetensors_find(fx, "scores"),
                   *acc_t = safetensors_find(fx, "accuracy"),
                   *vw_t = safetensors_find(fx, "v_head.summary.weight"),
                   *vb_t = safetensors_find(fx, "v_head.summary.bias");
    CHECK(ids_t && am_t && cm_t && loss_t && sc_t && acc_t && vw_t && vb_t, "%s: tensors", fpath);
    if (!ids_t || !am_t || !cm_t || !loss_t || !sc_t || !acc_t || !vw_t || !vb_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], P = B / 2, C = m->cfg.C;
    TrainSetup setup = {.method = lora ? METHOD_LORA : METHOD_FULL, .seed = 1};
    if (lora) {
        setup.lora_rank = 4;
        setup.lora_alpha = 8;
        setup.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    } else {
        if (test_fx_policy_norm(be, m, fx, fpath)) goto done;
    }
    if (train_state_init(m, &setup, B, T, &ts, &err) || vhead_init(&vh, be, C, 1, &err)) {
        CHECK(0, "%s: %s", fpath, err.msg);
        goto done;
    }
    vhead_set(&vh, vw_t->data, ((const float *)vb_t->data)[0]);
    int np;
    const TrainParam *tp = train_params(ts, &np);
    if (lora) test_fx_upload_adapter(be, fx, fpath, tp, np);
    /* the batch's targets (the answers trained), then each row's last token from them */
    const int32_t *ids = ids_t->data, *cm = cm_t->data, *am = am_t->data;
    tg = test_completion_targets(ids, cm, B, T);
    last = xmalloc(sizeof(int) * (size_t)B);
    rm_last_positions(tg, B, T, last);
    int ok = 1;
    for (int b = 0; b < B; b++) {
        int s = 0;
        for (int t = 0; t < T; t++)
            s += am[b * T + t];
        ok &= last[b] == s - 1;
    }
    CHECK(ok, "%s: the last tokens are attention_mask.sum - 1", fpath);
    RmBatch rb = {.vh = &vh, .pairs = P, .last = last, .scale = 1.0 / P};
    train_zero_grad(ts);
    vhead_zero_grad(&vh);
    int rc = train_step_hidden(ts, ids, B, rm_hidden, &rb, 1, &err);
    CHECK(rc == 0 && rb.sums.n == P, "%s: %s", fpath, err.msg);
    double loss = rb.sums.loss / P, want = ((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= RTOL * fabs(want), "%s: loss %.7f vs %.7f", fpath, loss, want);
    const float *sc = sc_t->data;
    double sum_c = 0, sum_r = 0;
    for (int p = 0; p < P; p++) {
        sum_c += (double)sc[p];
        sum_r += (double)sc[P + p];
    }
    CHECK(fabs(rb.sums.chosen - sum_c) <= RTOL * fabs(sum_c) + 1e-5 &&
                  fabs(rb.sums.rejected - sum_r) <= RTOL * fabs(sum_r) + 1e-5,
          "%s: scores %.6g %.6g vs %.6g %.6g", fpath, rb.sums.chosen, rb.sums.rejected, sum_c,
          sum_r);
    CHECK(fabs(rb.sums.accuracy / P - (double)((const float *)acc_t->data)[0]) < 1e-9,
          "%s: accuracy", fpath);
    double worst = 0;
    int compared = 0;
    for (int i = 0; i < np; i++)
        check_grad(fpath, be, fx, &tp[i], &worst, &compared);
    for (int k = 0; k < 2; k++)
        check_grad(fpath, be, fx, &vh.tp[k], &worst, &compared);
    /* forward only: the same scores, no gradient */
    RmBatch r2 = {.vh = &vh, .pairs = P, .last = last};
    rc = train_step_hidden(ts, ids, B, rm_hidden, &r2, 0, &err);
    CHECK(rc == 0 && fabs(r2.sums.loss - rb.sums.loss) < 1e-9, "%s: forward only", fpath);
    printf("  %-4s %-4s loss %.6f (ref %.6f)  %2d grads worst rel %.1e\n", backend, method, loss,
           want, compared, worst);
    /* value_head.safetensors: written, read back into a fresh head */
    char dir[] = "/tmp/tuna_vhead_XXXXXX";
    if (mkdtemp(dir)) {
        ValueHead v2 = {0};
        float *w1 = xmalloc(sizeof(float) * (size_t)C), *w2 = xmalloc(sizeof(float) * (size_t)C),
              b1, b2;
        int rc2 = vhead_save(&vh, dir, &err) || vhead_init(&v2, be, C, 9, &err) ||
                  vhead_load(&v2, dir, &err);
        CHECK(!rc2, "value head save/load: %s", err.msg);
        vhead_get(&vh, w1, &b1);
        vhead_get(&v2, w2, &b2);
        CHECK(!rc2 && !memcmp(w1, w2, sizeof(float) * (size_t)C) && b1 == b2,
              "value head read back equal");
        ValueHead v3 = {0};
        rc2 = vhead_init(&v3, be, C + 1, 9, &err) || vhead_load(&v3, dir, &err);
        CHECK(rc2 && strstr(err.msg, "hidden size"), "a head of another size: %s", err.msg);
        vhead_free(&v2);
        vhead_free(&v3);
        free(w1);
        free(w2);
        char cmd[100];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd)) fprintf(stderr, "warning: %s left\n", dir);
    }
done:
    free(tg);
    free(last);
    vhead_free(&vh);
    train_state_free(ts);
    model_free(m);
    backend_free(be);
    safetensors_free(fx);
}

/* TRL's summary dropout (RmBatch.drop_p): rm_hidden on hidden states of 2 pairs against a
 * transcription in double of ValueHead.forward on dropout(h) = h * mask / (1 - p), the masks
 * rm_drop_scale's: the loss, the head's weight gradient and each row's input gradient; about p
 * of the values dropped; p 0 leaves every value as it is */
static void dropout_case(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    const int P = 2, B = 2 * P, T = 3, C = 256;
    const double p = 0.25;
    ValueHead vh;
    CHECK(vhead_init(&vh, be, C, 7, &err) == 0, "vhead_init: %s", err.msg);
    float *h = xmalloc(sizeof(float) * (size_t)B * T * C), *dh = xcalloc((size_t)B * T * C, 4);
    uint64_t x = 99;
    for (size_t i = 0; i < (size_t)B * T * C; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (float)((double)(x >> 40) / 16777216.0 * 2 - 1);
    }
    int last[4] = {2, 1, 0, 2};
    vhead_zero_grad(&vh);
    RmBatch rb = {.vh = &vh, .pairs = P, .last = last, .scale = 0.5, .drop_p = p, .drop_seed = 5};
    rm_hidden(&rb, be, h, dh, B, T, C);
    float *w = xmalloc(sizeof(float) * (size_t)C), b, *gw = xmalloc(sizeof(float) * (size_t)C);
    vhead_get(&vh, w, &b);
    be->ops->download(be, gw, vh.tp[0].grad, sizeof(float) * (size_t)C);
    double loss = 0, worst = 0, *gref = calloc((size_t)C, sizeof(double));
    int dropped = 0;
    for (int q = 0; q < P; q++) {
        double s[2] = {b, b};
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < C; i++) {
                int row = q + k * P;
                double f = rm_drop_scale(5, row, i, p);
                dropped += f == 0;
                s[k] += (double)w[i] * (double)h[((size_t)row * T + last[row]) * C + i] * f;
            }
        double z = s[0] - s[1], sig = 1 / (1 + exp(z)); /* d(-logsigmoid z)/dz = -sigmoid(-z) */
        loss += log1p(exp(-z));
        for (int k = 0; k < 2; k++) {
            int row = q + k * P;
            for (int i = 0; i < C; i++) {
                double f = rm_drop_scale(5, row, i, p);
                /* ds: the loss's derivative in this row's score (scale 0.5) */
                double ds = (k ? 1 : -1) * sig * 0.5, hv = h[((size_t)row * T + last[row]) * C + i];
                gref[i] += ds * hv * f;
                double want = ds * (double)w[i] * f,
                       got = dh[((size_t)row * T + last[row]) * C + i];
                worst = fmax(worst, fabs(want - got));
            }
        }
    }
    double gw_worst = 0;
    for (int i = 0; i < C; i++)
        gw_worst = fmax(gw_worst, fabs(gref[i] - (double)gw[i]));
    CHECK(fabs(rb.sums.loss - loss) <= 1e-6 * loss, "dropout: loss %.9g vs %.9g", rb.sums.loss,
          loss);
    CHECK(worst <= 1e-6 && gw_worst <= 1e-6,
          "dropout: input gradients within %.3g, the head's weight gradient within %.3g", worst,
          gw_worst);
    CHECK(dropped > 0.18 * 4 * C && dropped < 0.32 * 4 * C, "dropout: %d of %d values dropped",
          dropped, 4 * C);
    int kept = 1;
    for (int i = 0; i < C; i++)
        kept &= rm_drop_scale(5, 0, i, 0.0) == 1.0f;
    CHECK(kept, "p 0 keeps every value");
    printf("  summary dropout p %.2f: %d of %d dropped, loss %.6f, gradients within %.2g\n", p,
           dropped, 4 * C, loss / P, fmax(worst, gw_worst));
    free(gref);
    free(w);
    free(gw);
    free(h);
    free(dh);
    vhead_free(&vh);
    backend_free(be);
}

int main(void) {
    dropout_case();
    run_case("cpu", "lora");
    run_case("cpu", "full");
    run_case("ref", "lora");
    run_case("ref", "full");
    return test_report("test_rm");
}
