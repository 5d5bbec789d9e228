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
#include "train_fixture.h"

#define GRAD_RTOL 1e-3
#define LOSS_RTOL 1e-5

/* LoRA dropout against peft: the fixture recorded the mask of each lora_dropout call of peft's
 * forward (mask.<k>, 1 kept); this stands in for the backend's dropout op and gives the k-th
 * distinct seed tuna's trainer passes (one per module, the same in the forward, a checkpointed
 * recompute and the backward) the k-th mask, scaled as ref_dropout scales. Both forwards visit
 * the modules in the same order (q, k, v, o, gate, up, down; c_attn, c_proj, c_fc, c_proj). */
static struct {
    const SafeTensors *fx;
    const BackendOps *ops; /* the backend's own */
    uint64_t seeds[64];
    int n_seeds, bad;
} replay;

static void replay_dropout(Backend *be, float *out, const float *in, size_t n, float p,
                           uint64_t seed) {
    int k = 0;
    while (k < replay.n_seeds && replay.seeds[k] != seed)
        k++;
    if (k == replay.n_seeds && k < 64) replay.seeds[replay.n_seeds++] = seed;
    char nm[32];
    snprintf(nm, sizeof nm, "mask.%d", k);
    const StTensor *mk = safetensors_find(replay.fx, nm);
    float *h = xmalloc(sizeof(float) * n);
    replay.ops->download(be, h, in, sizeof(float) * n);
    if (!mk || mk->dtype != ST_U8 || st_tensor_numel(mk) != n) {
        replay.bad++; /* a call the fixture has no mask for: the orders differ */
        memset(h, 0, sizeof(float) * n);
    } else {
        const uint8_t *keep = mk->data;
        float scale = 1.0f / (1.0f - p);
        for (size_t i = 0; i < n; i++)
            h[i] = keep[i] ? h[i] * scale : 0.0f;
    }
    replay.ops->upload(be, out, h, sizeof(float) * n);
    free(h);
}

static void run_case(const char *arch, const char *kind, const char *targets, int rslora,
                     const char *backend, int ckpt) {
    char mdir[256], fpath[256];
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/dora/%s_%s.safetensors", arch, kind);
    TunaErr err = {0};
    Backend *be;
    SafeTensors *fx;
    Model *m;
    TrainState *ts = NULL;
    int32_t *targets_t = NULL;
    int opened =
            test_fx_open(fpath, "tests/gen_lora_variant_fixtures.py", mdir, backend, &be, &fx, &m);
    if (opened > 0) return;
    if (opened < 0) goto done;
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *lab_t = safetensors_find(fx, "labels"), *loss_t = safetensors_find(fx, "loss");
    CHECK(ids_t && lab_t && loss_t, "%s: input_ids/labels/loss missing", fpath);
    if (!ids_t || !lab_t || !loss_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    int dora = strncmp(kind, "lora", 4) != 0, dropout = strstr(kind, "dropout") != NULL;
    TrainSetup setup = {.method = METHOD_LORA,
                        .lora_rank = 4,
                        .lora_alpha = 8,
                        .lora_rslora = rslora,
                        .lora_dora = dora,
                        .lora_dropout = dropout ? 0.25f : 0.0f,
                        .lora_targets = targets,
                        .seed = 1,
                        .grad_checkpoint = ckpt};
    static BackendOps hooked;
    if (dropout) {
        memset(&replay, 0, sizeof replay);
        replay.fx = fx;
        replay.ops = be->ops;
        hooked = *be->ops;
        hooked.dropout = replay_dropout;
        be->ops = &hooked;
    }
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
    if (dora)
        CHECK(n_mag > 0 && n_mag * 3 == np, "%s: a magnitude per module (%d of %d tensors)", arch,
              n_mag, np);
    const int32_t *ids = ids_t->data;
    int n_t;
    targets_t = test_next_targets(lab_t->data, B, T, &n_t);
    double loss_sum;
    int cnt;
    train_zero_grad(ts);
    int rc = train_step_fb(ts, ids, targets_t, B, 1.0f / (float)n_t, 1, &loss_sum, &cnt, &err);
    CHECK(rc == 0, "%s: %s", arch, err.msg);
    double loss = loss_sum / cnt, want = (double)((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= LOSS_RTOL * fabs(want), "%s %s: loss %.7f vs peft %.7f", arch, kind,
          loss, want);
    if (dropout) { /* every mask used, none missing: one per module */
        char nm[32];
        snprintf(nm, sizeof nm, "mask.%d", replay.n_seeds);
        CHECK(replay.bad == 0 && replay.n_seeds == np / (dora ? 3 : 2) && !safetensors_find(fx, nm),
              "%s %s: %d dropout seeds for %d modules, %d calls without a mask", arch, kind,
              replay.n_seeds, np / (dora ? 3 : 2), replay.bad);
    }
    double worst[3] = {0, 0, 0}; /* A, B, magnitude */
    for (int i = 0; i < np; i++) {
        double d = test_fx_grad_rel_diff(be, fx, fpath, &tp[i]);
        if (d < 0) continue;
        int kind_i = strstr(tp[i].name, "lora_A") ? 0 : strstr(tp[i].name, "lora_B") ? 1 : 2;
        worst[kind_i] = fmax(worst[kind_i], d);
        CHECK(d <= GRAD_RTOL, "%s %s [%s%s]: %s grad rel diff %.3g", arch, kind, backend,
              ckpt ? " ckpt" : "", tp[i].name, d);
    }
    printf("  %s %s [%s%s]: loss %.7f (peft %.7f), grad rel diff A %.2e B %.2e magnitude %.2e\n",
           arch, kind, backend, ckpt ? " ckpt" : "", loss, want, worst[0], worst[1], worst[2]);
done:
    free(targets_t);
    train_state_free(ts);
    model_free(m);
    safetensors_free(fx);
    if (be && be->ops == &hooked) be->ops = replay.ops;
    backend_free(be);
}

static int lora_dora_set(const TrainSetup *s) {
    return s->lora_dora;
}

static void test_adapter(void) {
    test_adapter_round_trip(
            &(AdapterRoundTrip){.what = "DoRA",
                                .fx = "tests/fixtures/dora/llama_dora_logits.safetensors",
                                .adir = "tests/fixtures/dora/llama_dora_adapter",
                                .needle = "\"use_dora\":\ttrue",
                                .is_set = lora_dora_set});
}

int main(void) {
    const char *ll = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    run_case("llama", "dora", ll, 0, "ref", 0);
    run_case("llama", "dora", ll, 0, "cpu", 0);
    run_case("llama", "dora", ll, 0, "cpu", 1);
    run_case("llama", "dora_rslora", ll, 1, "cpu", 0);
    run_case("gpt2", "dora", "c_attn,c_proj,c_fc", 0, "ref", 0);
    run_case("gpt2", "dora", "c_attn,c_proj,c_fc", 0, "cpu", 1);
    /* lora_dropout 0.25, peft's masks replayed */
    run_case("llama", "dora_dropout", ll, 0, "ref", 0);
    run_case("llama", "dora_dropout", ll, 0, "cpu", 0);
    run_case("llama", "dora_dropout", ll, 0, "cpu", 1);
    run_case("gpt2", "dora_dropout", "c_attn,c_proj,c_fc", 0, "ref", 0);
    run_case("gpt2", "dora_dropout", "c_attn,c_proj,c_fc", 0, "cpu", 0);
    run_case("gpt2", "dora_dropout", "c_attn,c_proj,c_fc", 0, "cpu", 1);
    run_case("llama", "lora_dropout", ll, 0, "cpu", 0);
    run_case("llama", "lora_dropout", ll, 0, "cpu", 1);
    test_adapter();
    return test_report("test_dora");
}
