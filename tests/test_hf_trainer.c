/* test_hf_trainer.c: the two knobs of Hugging Face's Trainer on the loss it trains, against
 * transformers (tests/fixtures/hf_trainer/ from tests/gen_lora_variant_fixtures.py): LoRA r=4 on
 * the tiny llama and GPT-2 checkpoints, batch 2 x 10, the loss within 1e-5 relative and every
 * gradient within 1e-3 of the tensor's largest entry, on the ref and cpu backends and with
 * gradient checkpointing.
 * - NEFTune (TrainSetup.neftune_alpha, `--neftune-noise-alpha`), alpha 5: the fixture recorded
 *   the noise transformers' neftune_post_forward_hook drew on the input embeddings and its
 *   magnitude m = alpha / sqrt(T C); this test stands that noise in for the backend's noise_add
 *   op and checks that tuna asks for it once per training forward, over the token embeddings of
 *   the whole batch (GPT-2's before its positions are added), with the same m. A forward without
 *   a backward (the evals) adds none: its loss is the model's without the hook. With the
 *   backend's own op: the same noise for the same step and micro-batch, another for the next
 *   micro-batch and the next step.
 * - Label smoothing (TrainSetup.label_smoothing, `--label-smoothing-factor`), 0.1: the Trainer's
 *   LabelSmoother, in training and in the evals (a forward alone).
 * - LLaMA-Factory's DFT loss (TrainSetup.dft, `--use-dft-loss`): each target's loss times its
 *   probability, held constant (hf_trainer/<arch>_dft: LLaMA-Factory's _dft_cross_entropy
 *   transcribed), in training and in the evals; its EAFT loss (TrainSetup.eaft,
 *   `--use-eaft-loss`, eaft_alpha 0.5): times (H / 3)^alpha, H the entropy over the 20 largest
 *   logits (hf_trainer/<arch>_eaft). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/safetensors.h"
#include "src/xalloc.h"
#include "train_fixture.h"

#define GRAD_RTOL 1e-3
#define LOSS_RTOL 1e-5

static struct {
    const SafeTensors *fx;
    const BackendOps *ops; /* the backend's own */
    int calls, bad;
    float mag; /* what tuna asked for */
} replay;

static void replay_noise(Backend *be, float *x, size_t n, float mag, uint64_t seed) {
    (void)seed;
    replay.calls++;
    replay.mag = mag;
    const StTensor *nz = safetensors_find(replay.fx, "noise");
    if (!nz || st_tensor_numel(nz) != n) {
        replay.bad++; /* another shape than transformers' (B, T, C) */
        return;
    }
    float *h = xmalloc(sizeof(float) * n);
    replay.ops->download(be, h, x, sizeof(float) * n);
    const float *e = nz->data;
    for (size_t i = 0; i < n; i++)
        h[i] = h[i] + e[i];
    replay.ops->upload(be, x, h, sizeof(float) * n);
    free(h);
}

static double step_loss(TrainState *ts, const int32_t *ids, const int32_t *tg, int B, int n_t,
                        int backward, TunaErr *err) {
    double loss_sum;
    int cnt;
    train_zero_grad(ts);
    if (train_step_fb(ts, ids, tg, B, 1.0f / (float)n_t, backward, &loss_sum, &cnt, err))
        return NAN;
    return loss_sum / cnt;
}

/* kind: "neftune", "smooth", "dft" or "eaft" */
static void run_case(const char *arch, const char *kind, const char *targets, const char *backend,
                     int ckpt) {
    char mdir[256], fpath[256];
    int nef = !strcmp(kind, "neftune"), dft = !strcmp(kind, "dft"), eaft = !strcmp(kind, "eaft");
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/hf_trainer/%s_%s.safetensors", arch, kind);
    TunaErr err = {0};
    Backend *be;
    SafeTensors *fx;
    Model *m;
    TrainState *ts = NULL;
    int32_t *tg = NULL;
    static BackendOps hooked;
    int opened =
            test_fx_open(fpath, "tests/gen_lora_variant_fixtures.py", mdir, backend, &be, &fx, &m);
    if (opened > 0) return;
    if (opened < 0) goto done;
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *lab_t = safetensors_find(fx, "labels"), *loss_t = safetensors_find(fx, "loss"),
                   *clean_t = safetensors_find(fx, "loss_clean"),
                   *mag_t = safetensors_find(fx, "mag");
    CHECK(ids_t && lab_t && loss_t && clean_t && (mag_t || !nef), "%s: tensors missing", fpath);
    if (!ids_t || !lab_t || !loss_t || !clean_t || (!mag_t && nef)) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    TrainSetup setup = {.method = METHOD_LORA,
                        .lora_rank = 4,
                        .lora_alpha = 8,
                        .lora_targets = targets,
                        .seed = 1,
                        .grad_checkpoint = ckpt,
                        .neftune_alpha = nef ? 5.0f : 0.0f,
                        .label_smoothing = nef || dft || eaft ? 0.0f : 0.1f,
                        .dft = dft,
                        .eaft = eaft,
                        .eaft_alpha = 0.5f};
    memset(&replay, 0, sizeof replay);
    replay.fx = fx;
    replay.ops = be->ops;
    hooked = *be->ops;
    hooked.noise_add = replay_noise;
    be->ops = &hooked;
    if (train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s: %s", arch, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    test_fx_upload_adapter(be, fx, fpath, tp, np);
    const int32_t *ids = ids_t->data;
    int n_t;
    tg = test_next_targets(lab_t->data, B, T, &n_t);
    // --- a forward alone (an eval): no noise, transformers' loss in eval mode
    double clean = step_loss(ts, ids, tg, B, n_t, 0, &err);
    double want_clean = (double)((const float *)clean_t->data)[0];
    CHECK(replay.calls == 0 && fabs(clean - want_clean) <= LOSS_RTOL * fabs(want_clean),
          "%s %s [%s]: forward alone: %d noise calls, loss %.7f vs %.7f", arch, kind, backend,
          replay.calls, clean, want_clean);
    // --- the training step (NEFTune: transformers' noise, once, of transformers' magnitude)
    double loss = step_loss(ts, ids, tg, B, n_t, 1, &err);
    double want = (double)((const float *)loss_t->data)[0];
    if (nef) {
        float want_mag = ((const float *)mag_t->data)[0];
        CHECK(replay.calls == 1 && replay.bad == 0, "%s [%s]: %d noise calls, %d of another shape",
              arch, backend, replay.calls, replay.bad);
        CHECK(replay.mag == want_mag, "%s [%s]: magnitude %.9g, transformers' %.9g", arch, backend,
              (double)replay.mag, (double)want_mag);
    } else {
        CHECK(replay.calls == 0, "%s %s [%s]: %d noise calls", arch, kind, backend, replay.calls);
    }
    CHECK(fabs(loss - want) <= LOSS_RTOL * fabs(want), "%s %s [%s]: loss %.7f vs transformers %.7f",
          arch, kind, backend, loss, want);
    double worst = 0;
    for (int i = 0; i < np; i++) {
        double d = test_fx_grad_rel_diff(be, fx, fpath, &tp[i]);
        if (d < 0) continue;
        worst = fmax(worst, d);
        CHECK(d <= GRAD_RTOL, "%s %s [%s%s]: %s grad rel diff %.3g", arch, kind, backend,
              ckpt ? " ckpt" : "", tp[i].name, d);
    }
    if (nef)
        printf("  %s neftune [%s%s]: loss %.7f (transformers %.7f; %.7f without the noise), m "
               "%.6g, grad rel diff %.2e\n",
               arch, backend, ckpt ? " ckpt" : "", loss, want, clean, (double)replay.mag, worst);
    else
        printf("  %s %s [%s%s]: loss %.7f (%s %.7f), eval %.7f (%.7f), grad rel diff %.2e\n", arch,
               kind, backend, ckpt ? " ckpt" : "", loss,
               dft || eaft ? "LLaMA-Factory" : "transformers", want, clean, want_clean, worst);
    if (!nef) goto done;
    // --- the backend's own noise: the step's and micro-batch's, another for the next one
    be->ops = replay.ops;
    train_set_step_seed(ts, 3);
    double a1 = step_loss(ts, ids, tg, B, n_t, 1, &err);
    double a2 = step_loss(ts, ids, tg, B, n_t, 1, &err);
    train_set_micro_batch(ts, 1);
    double a3 = step_loss(ts, ids, tg, B, n_t, 1, &err);
    train_set_step_seed(ts, 4);
    double a4 = step_loss(ts, ids, tg, B, n_t, 1, &err);
    CHECK(isfinite(a1) && a1 == a2 && a1 != a3 && a1 != a4 && a3 != a4 && a1 != clean,
          "%s [%s]: own noise: losses %.9f %.9f (same step), %.9f (next micro-batch), %.9f (next "
          "step), %.9f (none)",
          arch, backend, a1, a2, a3, a4, clean);
done:
    free(tg);
    train_state_free(ts);
    model_free(m);
    safetensors_free(fx);
    if (be && be->ops == &hooked) be->ops = replay.ops;
    backend_free(be);
}

int main(void) {
    const char *ll = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
    const char *kinds[] = {"neftune", "smooth", "dft", "eaft"};
    for (int k = 0; k < 4; k++) {
        run_case("llama", kinds[k], ll, "ref", 0);
        run_case("llama", kinds[k], ll, "cpu", 0);
        run_case("llama", kinds[k], ll, "cpu", 1);
        run_case("gpt2", kinds[k], "c_attn,c_proj,c_fc", "ref", 0);
        run_case("gpt2", kinds[k], "c_attn,c_proj,c_fc", "cpu", 0);
    }
    return test_report("test_hf_trainer");
}
