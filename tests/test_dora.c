/* test_dora.c: DoRA (TrainSetup.lora_dora) against peft's use_dora=True
 * (tests/fixtures/dora/ from tests/gen_lora_variant_fixtures.py): on the tiny fp32 llama
 * (+ rsLoRA) and GPT-2 (fused c_attn, Conv1D) checkpoints, r=4 alpha=8, with B and the magnitude
 * moved off their init: the loss within 1e-5 relative and every gradient (lora_A, lora_B,
 * lora_magnitude_vector) within 1e-3 of the tensor's largest entry, on the ref and cpu backends
 * and with gradient checkpointing. Then peft's saved DoRA adapter merged into the base gives
 * peft's logits (1e-4), and tuna's save of it (use_dora, lora_magnitude_vector) reloads the same. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/peft.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

#define GRAD_RTOL 1e-3
#define LOSS_RTOL 1e-5

static void run_case(const char *arch, const char *kind, const char *targets, int rslora,
                     const char *backend, int ckpt) {
    char mdir[256], fpath[256];
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/dora/%s_%s.safetensors", arch, kind);
    struct stat sb;
    if (stat(fpath, &sb)) {
        SKIP("%s missing (tests/gen_lora_variant_fixtures.py makes it)", fpath);
        return;
    }
    TunaErr err = {0};
    SafeTensors *fx = NULL;
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    int32_t *targets_t = NULL;
    if (safetensors_open(fpath, &fx, &err) || model_load(mdir, be, &m, &err)) {
        CHECK(0, "%s: %s", arch, err.msg);
        goto done;
    }
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *lab_t = safetensors_find(fx, "labels"), *loss_t = safetensors_find(fx, "loss");
    CHECK(ids_t && lab_t && loss_t, "%s: input_ids/labels/loss missing", fpath);
    if (!ids_t || !lab_t || !loss_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    TrainSetup setup = {.method = METHOD_LORA,
                        .lora_rank = 4,
                        .lora_alpha = 8,
                        .lora_rslora = rslora,
                        .lora_dora = 1,
                        .lora_targets = targets,
                        .seed = 1,
                        .grad_checkpoint = ckpt};
    if (train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s %s: %s", arch, kind, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    int n_mag = 0;
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "adapter.%s", tp[i].name);
        const StTensor *a = safetensors_find(fx, nm);
        CHECK(a && st_tensor_numel(a) == tp[i].n, "%s: %s", fpath, nm);
        if (a && st_tensor_numel(a) == tp[i].n)
            be->ops->upload(be, tp[i].data, a->data, tp[i].n * sizeof(float));
        n_mag += strstr(tp[i].name, "lora_magnitude_vector") != NULL;
    }
    CHECK(n_mag > 0 && n_mag * 3 == np, "%s: a magnitude per module (%d of %d tensors)", arch,
          n_mag, np);
    const int32_t *ids = ids_t->data, *labels = lab_t->data;
    targets_t = xmalloc(sizeof(int32_t) * (size_t)B * T);
    int n_t = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int32_t y = t + 1 < T ? labels[b * T + t + 1] : -100;
            targets_t[b * T + t] = y;
            n_t += y != -100;
        }
    double loss_sum;
    int cnt;
    train_zero_grad(ts);
    int rc = train_step_fb(ts, ids, targets_t, B, 1.0f / (float)n_t, 1, &loss_sum, &cnt, &err);
    CHECK(rc == 0, "%s: %s", arch, err.msg);
    double loss = loss_sum / cnt, want = (double)((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= LOSS_RTOL * fabs(want), "%s %s: loss %.7f vs peft %.7f", arch, kind,
          loss, want);
    double worst[3] = {0, 0, 0}; /* A, B, magnitude */
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "grad.%s", tp[i].name);
        const StTensor *g = safetensors_find(fx, nm);
        CHECK(g && st_tensor_numel(g) == tp[i].n, "%s: %s", fpath, nm);
        if (!g || st_tensor_numel(g) != tp[i].n) continue;
        float *got = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, got, tp[i].grad, sizeof(float) * tp[i].n);
        const float *ref = g->data;
        double mx = 0;
        for (size_t k = 0; k < tp[i].n; k++)
            mx = fmax(mx, fabs((double)ref[k]));
        double d = test_max_abs_diff(got, ref, tp[i].n) / fmax(mx, 1e-12);
        int kind_i = strstr(tp[i].name, "lora_A") ? 0 : strstr(tp[i].name, "lora_B") ? 1 : 2;
        worst[kind_i] = fmax(worst[kind_i], d);
        CHECK(d <= GRAD_RTOL, "%s %s [%s%s]: %s grad rel diff %.3g", arch, kind, backend,
              ckpt ? " ckpt" : "", tp[i].name, d);
        free(got);
    }
    printf("  %s %s [%s%s]: loss %.7f (peft %.7f), grad rel diff A %.2e B %.2e magnitude %.2e\n",
           arch, kind, backend, ckpt ? " ckpt" : "", loss, want, worst[0], worst[1], worst[2]);
done:
    free(targets_t);
    train_state_free(ts);
    model_free(m);
    safetensors_free(fx);
    backend_free(be);
}

static double logits_diff(Model *m, const int32_t *ids, const float *ref, int B, int T) {
    TunaErr err = {0};
    int V = m->cfg.V;
    float *got = xmalloc(sizeof(float) * (size_t)T * V);
    double worst = 0;
    model_reserve(m, T, T, &err);
    for (int b = 0; b < B; b++) {
        model_reset(m);
        if (model_forward(m, ids + (size_t)b * T, T, got, 1, &err)) worst = 1e30;
        worst = fmax(worst, test_max_abs_diff(got, ref + (size_t)b * T * V, (size_t)T * V));
    }
    free(got);
    return worst;
}

static void test_adapter(void) {
    const char *fx = "tests/fixtures/dora/llama_dora_logits.safetensors",
               *adir = "tests/fixtures/dora/llama_dora_adapter";
    struct stat sb;
    if (stat(fx, &sb)) {
        SKIP("%s missing", fx);
        return;
    }
    TunaErr err = {0};
    SafeTensors *st = NULL;
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL, *m2 = NULL;
    TrainState *ts = NULL;
    CHECK(safetensors_open(fx, &st, &err) == 0, "%s", err.msg);
    const StTensor *ids = st ? safetensors_find(st, "input_ids") : NULL,
                   *lg = st ? safetensors_find(st, "logits") : NULL;
    CHECK(ids && lg, "%s: input_ids/logits missing", fx);
    if (!ids || !lg) goto done;
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    CHECK(model_load("tests/fixtures/llama", be, &m, &err) == 0, "%s", err.msg);
    CHECK(m && adapter_load(m, adir, &err) == 0, "%s", err.msg);
    double d = m ? logits_diff(m, ids->data, lg->data, B, T) : 1e30;
    CHECK(d <= 1e-4, "peft DoRA adapter merged: max |dlogit| %.3g", d);
    printf("  peft DoRA adapter merged into llama: max |dlogit| vs peft %.2e\n", d);
    // the same adapter as a training start, saved by tuna, loaded again
    TrainSetup s;
    char targets[512], tokens[64];
    CHECK(adapter_read_config(adir, &s, targets, sizeof targets, tokens, sizeof tokens, &err) ==
                          0 &&
                  s.lora_dora,
          "adapter_read_config reads use_dora: %s", err.msg);
    s.lora_targets = targets;
    CHECK(model_load("tests/fixtures/llama", be, &m2, &err) == 0, "%s", err.msg);
    if (!m2 || train_state_init(m2, &s, 1, 4, &ts, &err)) {
        CHECK(0, "%s", err.msg);
        goto done;
    }
    CHECK(adapter_init_train(ts, adir, "tests/fixtures/llama", &err) == 0, "%s", err.msg);
    char tmpl[] = "/tmp/tuna_dora_XXXXXX";
    char *tmp = mkdtemp(tmpl), out[256], cfg[300];
    snprintf(out, sizeof out, "%s/adapter", tmp);
    CHECK(adapter_save(ts, out, "tests/fixtures/llama", &err) == 0, "%s", err.msg);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", out);
    char *text = xread_file(cfg, NULL);
    CHECK(text && strstr(text, "\"use_dora\":\ttrue"), "tuna's adapter_config.json: use_dora true");
    free(text);
    model_free(m);
    m = NULL;
    CHECK(model_load("tests/fixtures/llama", be, &m, &err) == 0, "%s", err.msg);
    CHECK(m && adapter_load(m, out, &err) == 0, "%s", err.msg);
    d = m ? logits_diff(m, ids->data, lg->data, B, T) : 1e30;
    CHECK(d <= 1e-4, "tuna's save of it, reloaded: max |dlogit| %.3g", d);
    printf("  tuna's save of that DoRA state, reloaded: max |dlogit| vs peft %.2e\n", d);
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

/* What DoRA does not do yet is refused, not approximated. */
static void test_refusals(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    CHECK(model_load("tests/fixtures/llama", be, &m, &err) == 0, "%s", err.msg);
    if (m) {
        TrainSetup s = {.method = METHOD_LORA,
                        .lora_rank = 4,
                        .lora_alpha = 8,
                        .lora_dora = 1,
                        .lora_dropout = 0.1f};
        TrainState *ts = NULL;
        int rc = train_state_init(m, &s, 1, 4, &ts, &err);
        CHECK(rc == TUNA_EUNSUP && strstr(err.msg, "dropout"), "dropout refused: %s", err.msg);
        train_state_free(ts);
    }
    model_free(m);
    backend_free(be);
}

int main(void) {
    const char *ll = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    run_case("llama", "dora", ll, 0, "ref", 0);
    run_case("llama", "dora", ll, 0, "cpu", 0);
    run_case("llama", "dora", ll, 0, "cpu", 1);
    run_case("llama", "dora_rslora", ll, 1, "cpu", 0);
    run_case("gpt2", "dora", "c_attn,c_proj,c_fc", 0, "ref", 0);
    run_case("gpt2", "dora", "c_attn,c_proj,c_fc", 0, "cpu", 1);
    test_adapter();
    test_refusals();
    return test_report("test_dora");
}
