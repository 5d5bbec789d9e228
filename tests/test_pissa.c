/* test_pissa.c: PiSSA initialisation (TrainSetup.lora_pissa) against peft's pissa_init
 * (tests/fixtures/pissa/ from tests/gen_lora_variant_fixtures.py) on the tiny fp32 llama and
 * GPT-2 (fused c_attn, Conv1D) checkpoints, r=4 alpha=8 (and rsLoRA): every lora_A, lora_B and
 * the residual base weight within 1e-4 (max abs, relative to the tensor's largest entry).
 * LAPACK and torch may pick opposite signs for a singular pair (u, v) -> (-u, -v): each pair's
 * sign is aligned with peft's before comparing (B[:,j]·A[j,:] does not change). Then peft's
 * saved PiSSA adapter (init_lora_weights "pissa") loads over the original base to peft's
 * logits (1e-4), and tuna's own save of a PiSSA state records "pissa" and round-trips. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/peft.h"
#include "src/safetensors.h"
#include "src/xalloc.h"
#include "train_fixture.h"

#define TOL 1e-4

/* max |got - ref| / max(1, max |ref|) over n */
static double rel_diff(const float *got, const float *ref, size_t n) {
    double mx = 1, d = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs((double)ref[i]));
        d = fmax(d, fabs((double)got[i] - (double)ref[i]));
    }
    return d / mx;
}

/* The base weight rows [row0, row0 + rows) of the module named by key (peft's path) in m. */
static int module_weights(const Model *m, const char *key, float *W[3], int rows[3]) {
    const ModelConfig *c = &m->cfg;
    const char *p = strstr(key, ".layers.");
    if (!p) p = strstr(key, ".h.");
    if (!p) return 0;
    int l = atoi(strchr(p + 1, '.') + 1);
    const LayerWeights *w = &m->layers[l];
    int QD = c->NH * c->HS, KD = c->KVH * c->HS;
    static const struct {
        const char *suffix;
        size_t off;
    } one[] = {{"q_proj", offsetof(LayerWeights, wq)},
               {"k_proj", offsetof(LayerWeights, wk)},
               {"v_proj", offsetof(LayerWeights, wv)},
               {"o_proj", offsetof(LayerWeights, wo)},
               {"gate_proj", offsetof(LayerWeights, w_gate)},
               {"up_proj", offsetof(LayerWeights, w_up)},
               {"down_proj", offsetof(LayerWeights, w_down)},
               {"attn.c_proj", offsetof(LayerWeights, wo)},
               {"c_fc", offsetof(LayerWeights, w_up)},
               {"mlp.c_proj", offsetof(LayerWeights, w_down)}};
    if (strstr(key, "c_attn")) {
        W[0] = w->wq, W[1] = w->wk, W[2] = w->wv;
        rows[0] = QD, rows[1] = KD, rows[2] = KD;
        return 3;
    }
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        size_t ls = strlen(one[i].suffix), lk = strlen(key);
        if (lk >= ls && !strcmp(key + lk - ls, one[i].suffix)) {
            W[0] = *(float *const *)((const char *)w + one[i].off);
            return 1;
        }
    }
    return 0;
}

static void run_case(const char *arch, const char *targets, int rslora) {
    char mdir[256], fpath[256];
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/pissa/%s_pissa%s.safetensors", arch,
             rslora ? "_rslora" : "");
    TunaErr err = {0};
    Backend *be;
    SafeTensors *fx;
    Model *m;
    TrainState *ts = NULL;
    int opened =
            test_fx_open(fpath, "tests/gen_lora_variant_fixtures.py", mdir, "cpu", &be, &fx, &m);
    if (opened > 0) return;
    if (opened < 0) goto done;
    TrainSetup setup = {.method = METHOD_LORA,
                        .lora_rank = 4,
                        .lora_alpha = 8,
                        .lora_rslora = rslora,
                        .lora_pissa = 1,
                        .lora_targets = targets,
                        .seed = 1};
    if (train_state_init(m, &setup, 1, 4, &ts, &err)) {
        CHECK(0, "%s: %s", arch, err.msg);
        goto done;
    }
    int np, r = 4;
    const TrainParam *tp = train_params(ts, &np);
    double worst_ab = 0, worst_w = 0;
    int n_mod = 0, flipped = 0;
    for (int i = 0; i + 1 < np; i += 2) { /* lora_A, lora_B of one module */
        const StTensor *ra = safetensors_find(fx, tp[i].name),
                       *rb = safetensors_find(fx, tp[i + 1].name);
        CHECK(ra && rb && st_tensor_numel(ra) == tp[i].n && st_tensor_numel(rb) == tp[i + 1].n,
              "%s: %s in the fixture", arch, tp[i].name);
        if (!ra || !rb || st_tensor_numel(ra) != tp[i].n || st_tensor_numel(rb) != tp[i + 1].n)
            continue;
        int in = (int)tp[i].shape[1], out = (int)tp[i + 1].shape[0];
        float *A = xmalloc(sizeof(float) * tp[i].n), *B = xmalloc(sizeof(float) * tp[i + 1].n);
        be->ops->download(be, A, tp[i].data, sizeof(float) * tp[i].n);
        be->ops->download(be, B, tp[i + 1].data, sizeof(float) * tp[i + 1].n);
        const float *RA = ra->data, *RB = rb->data;
        for (int j = 0; j < r; j++) { /* align each singular pair's sign with peft's */
            double dot = 0;
            for (int k = 0; k < in; k++)
                dot += (double)A[(size_t)j * in + k] * (double)RA[(size_t)j * in + k];
            if (dot >= 0) continue;
            flipped++;
            for (int k = 0; k < in; k++)
                A[(size_t)j * in + k] = -A[(size_t)j * in + k];
            for (int o = 0; o < out; o++)
                B[(size_t)o * r + j] = -B[(size_t)o * r + j];
        }
        worst_ab = fmax(worst_ab, rel_diff(A, RA, tp[i].n));
        worst_ab = fmax(worst_ab, rel_diff(B, RB, tp[i + 1].n));
        free(A);
        free(B);
        // the residual base weight
        char key[200];
        snprintf(key, sizeof key, "residual.%.*s",
                 (int)(strlen(tp[i].name) - strlen(".lora_A.weight")), tp[i].name);
        const StTensor *rw = safetensors_find(fx, key);
        float *W[3] = {0};
        int rows[3] = {out, 0, 0};
        int nw = module_weights(m, key, W, rows);
        CHECK(rw && nw, "%s: %s", arch, key);
        if (!rw || !nw) continue;
        float *got = xmalloc(sizeof(float) * (size_t)out * in);
        for (int q = 0, row0 = 0; q < nw; row0 += rows[q], q++)
            be->ops->download(be, got + (size_t)row0 * in, W[q],
                              sizeof(float) * (size_t)rows[q] * in);
        worst_w = fmax(worst_w, rel_diff(got, rw->data, (size_t)out * in));
        free(got);
        n_mod++;
    }
    CHECK(n_mod > 0 && worst_ab <= TOL, "%s%s: lora_A/lora_B vs peft: max rel diff %.3g", arch,
          rslora ? " rslora" : "", worst_ab);
    CHECK(n_mod > 0 && worst_w <= TOL, "%s%s: residual W vs peft: max rel diff %.3g", arch,
          rslora ? " rslora" : "", worst_w);
    printf("  %s%s: %d modules, A,B max rel diff %.2e (%d pairs sign-flipped), residual W %.2e\n",
           arch, rslora ? " rslora" : "", n_mod, worst_ab, flipped, worst_w);
done:
    train_state_free(ts);
    model_free(m);
    safetensors_free(fx);
    backend_free(be);
}
/* peft's saved PiSSA adapter over the original base: the SVD again, the residual kept, then the
 * saved A and B merged: peft's logits. tuna's save of that state says "pissa" and reloads the
 * same way. */
static int lora_pissa_set(const TrainSetup *s) {
    return s->lora_pissa;
}

static void test_adapter(void) {
    test_adapter_round_trip(
            &(AdapterRoundTrip){.what = "PiSSA",
                                .fx = "tests/fixtures/pissa/llama_pissa_logits.safetensors",
                                .adir = "tests/fixtures/pissa/llama_pissa_adapter",
                                .needle = "\"init_lora_weights\":\t\"pissa\"",
                                .is_set = lora_pissa_set,
                                .pissa_convert = 1});
}

/* The eval loss `tuna eval ARGS --no-generate` prints; NaN when it fails. */
static double eval_loss_of(const char *tmp, const char *args) {
    char cmd[1024], *out = NULL, *er = NULL;
    snprintf(cmd, sizeof cmd,
             "eval %s --dataset identity --vars name=Tuna,author=Ann --template vanilla "
             "--no-generate --threads 1 --quiet",
             args);
    int rc = test_run_tuna(tmp, cmd, NULL, &out, &er);
    double v = rc == 0 ? test_json_number(out, "eval_loss") : (double)NAN;
    CHECK(isfinite(v), "tuna %s: exit %d: %s", cmd, rc, er ? er : "");
    free(out);
    free(er);
    return v;
}

/* `tuna train --init-lora-weights pissa --pissa-convert` (LLaMA-Factory's pissa_convert): the
 * run's PiSSA adapter (the SVD again on load) and RUN/pissa_converted over the original base
 * (rank 2r, no SVD) score the same; without pissa, --pissa-convert is refused in one line. */
static void test_cli_convert(void) {
    char tmpl[] = "/tmp/tuna_pissa_cli_XXXXXX", cmd[1024], path[300];
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return;
    const char *base = "--model models/stories260K --dataset identity --dataset-dir datasets "
                       "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 "
                       "--quiet --threads 1 ";
    snprintf(cmd, sizeof cmd,
             "%s train %s--init-lora-weights pissa --pissa-convert true --lora-rank 4 --lr 1e-2 "
             "--max-steps 6 --eval-steps 0 --save-steps 0 --output %s/run",
             test_tuna_bin(), base, tmp);
    CHECK(test_system(cmd) == 0, "pissa_convert training failed");
    snprintf(path, sizeof path, "%s/run/pissa_converted/adapter_config.json", tmp);
    char *cfg = xread_file(path, NULL);
    CHECK(cfg && strstr(cfg, "\"r\":\t8") && strstr(cfg, "\"init_lora_weights\":\ttrue"),
          "%s: rank 8, init_lora_weights true", path);
    free(cfg);
    char a1[400], a2[400];
    snprintf(a1, sizeof a1, "--model %s/run", tmp);
    snprintf(a2, sizeof a2, "--model models/stories260K --adapter %s/run/pissa_converted", tmp);
    double l1 = eval_loss_of(tmp, a1), l2 = eval_loss_of(tmp, a2),
           l0 = eval_loss_of(tmp, "--model models/stories260K");
    CHECK(fabs(l1 - l2) <= 1e-5 * fabs(l1) && fabs(l1 - l0) > 1e-3,
          "the PiSSA run %.7f, its conversion over the base %.7f (the base alone %.7f)", l1, l2,
          l0);
    printf("  tuna train --pissa-convert: eval loss of the run %.7f, of pissa_converted over the "
           "base %.7f (base %.7f)\n",
           l1, l2, l0);
    test_train_refused(tmp, base, "--pissa-convert true", "--pissa-convert");
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "rm");
}

/* PiSSA needs an fp32 base, as peft's pissa_init. */
static void test_refusals(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    ModelLoadOptions lo = {0};
    lo.qtype = WT_Q8_0;
    lo.fp32_from_layer = 1 << 20; /* every layer typed */
    if (model_load_opts("tests/fixtures/llama", be, &lo, &m, &err)) {
        SKIP("quantized load: %s", err.msg);
    } else {
        TrainSetup s = {.method = METHOD_LORA, .lora_rank = 4, .lora_alpha = 8, .lora_pissa = 1};
        TrainState *ts = NULL;
        int rc = train_state_init(m, &s, 1, 4, &ts, &err);
        CHECK(rc == TUNA_EUNSUP && strstr(err.msg, "PiSSA"), "quantized base refused: %s", err.msg);
        train_state_free(ts);
    }
    model_free(m);
    backend_free(be);
}

int main(void) {
    run_case("llama", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 0);
    run_case("llama", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", 1);
    run_case("gpt2", "c_attn,c_proj,c_fc", 0);
    test_adapter();
    test_cli_convert();
    test_refusals();
    return test_report("test_pissa");
}
