/* test_estimate.c: train_estimate (what the Setup screen shows) against what the engine really
 * allocates. For the fixture models of each architecture (llama, tied llama, gpt2, qwen3 with
 * its q/k norms, mistral) and stories260K, and the methods full, freeze, LoRA (every target,
 * dropout and trainable tokens; PEFT's default targets with checkpointing; DoRA with and
 * without dropout) and P-tuning v2
 * (with and without the MLP, with checkpointing), the estimate from config.json alone gives:
 *   total params     = the loaded model's n_params
 *   trainable params = train_param_count of a real TrainState
 *   activation bytes = train_activation_bytes
 *   weight extra + gradients + activations + scratch = every byte train_state_init asks the
 *                      backend for, and optimizer bytes = every byte optim_init asks for
 *                      (a backend whose alloc counts).
 * Stages dpo, kto and rm (2 B rows; the dpo and kto reference's state, and a frozen copy for
 * full; rm's value head) likewise.
 * Then the refusals: a cutoff past GPT-2's positions, a target the architecture lacks, more freeze
 * layers than it has, an unknown method. */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/config.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/optim.h"
#include "src/train.h"

#define BATCH  3
#define CUTOFF 7

/* A backend whose alloc adds up the bytes asked for. */
static const BackendOps *real_ops;
static size_t counted;

static void *count_alloc(Backend *be, size_t bytes) {
    counted += bytes;
    return real_ops->alloc(be, bytes);
}

typedef struct Case {
    const char *name;
    const char *method;
    int freeze_layers; /* 0: the model's L */
    int rank;
    double dropout;
    const char *targets; /* NULL: the architecture's every linear layer ("all") */
    const char *tokens;
    int prefix_tokens, projection, hidden;
    int ckpt;
    int dora;
} Case;

static const Case cases[] = {
        {"full", "full", 0, 0, 0, NULL, "", 0, 0, 0, 0, 0},
        {"full ckpt", "full", 0, 0, 0, NULL, "", 0, 0, 0, 1, 0},
        {"freeze 1", "freeze", 1, 0, 0, NULL, "", 0, 0, 0, 0, 0},
        {"freeze all", "freeze", 0, 0, 0, NULL, "", 0, 0, 0, 0, 0},
        {"lora all r4 dropout tokens", "lora", 0, 4, 0.1, "all", "3,5", 0, 0, 0, 0, 0},
        {"lora default r2 ckpt", "lora", 0, 2, 0, "", "", 0, 0, 0, 1, 0},
        {"lora all r3 dropout ckpt", "lora", 0, 3, 0.05, "all", "", 0, 0, 0, 1, 0},
        /* DoRA: the magnitudes, and its scratch (one more buffer with dropout) */
        {"dora all r4", "lora", 0, 4, 0, "all", "", 0, 0, 0, 0, 1},
        {"dora all r4 dropout ckpt", "lora", 0, 4, 0.1, "all", "", 0, 0, 0, 1, 1},
        {"ptuning 4", "ptuning", 0, 0, 0, NULL, "", 4, 0, 0, 0, 0},
        {"ptuning 3 mlp 8", "ptuning", 0, 0, 0, NULL, "", 3, 1, 8, 0, 0},
        {"ptuning 2 ckpt", "ptuning", 0, 0, 0, NULL, "", 2, 0, 0, 1, 0},
        /* prompt tuning, P-tuning v1 (projection 1: the LSTM encoder) */
        {"prompt 4", "prompt", 0, 0, 0, NULL, "", 4, 0, 0, 0, 0},
        {"prompt 3 ckpt", "prompt", 0, 0, 0, NULL, "", 3, 0, 0, 1, 0},
        {"ptuning-v1 3 mlp 8", "ptuning-v1", 0, 0, 0, NULL, "", 3, 0, 8, 0, 0},
        {"ptuning-v1 2 lstm 6 ckpt", "ptuning-v1", 0, 0, 0, NULL, "", 2, 1, 6, 1, 0},
};

static TrainMethod method_of(const char *m) {
    return !strcmp(m, "full")         ? METHOD_FULL
           : !strcmp(m, "freeze")     ? METHOD_FREEZE
           : !strcmp(m, "lora")       ? METHOD_LORA
           : !strcmp(m, "prompt")     ? METHOD_PROMPT
           : !strcmp(m, "ptuning-v1") ? METHOD_PTUNING_V1
                                      : METHOD_PTUNING;
}

/* The estimate from config.json alone, as the Setup screen makes it, for the test's batch and
 * cutoff; 0, or non-zero with the failure checked and named by what */
static int estimate_of(const char *dir, TrainConfig *cfg, TrainEstimate *est, const char *what) {
    cfg->batch_size = BATCH;
    cfg->cutoff_len = CUTOFF;
    ModelConfig mc;
    TunaErr err = {0};
    int rc = config_load(dir, &mc, &err) || train_estimate(&mc, cfg, est, &err);
    CHECK(!rc, "%s: %s", what, err.msg);
    return rc;
}

static void one_case(Model *m, const char *dir, const Case *k) {
    char what[200];
    snprintf(what, sizeof what, "%s %s", dir, k->name);
    TrainConfig cfg;
    train_config_defaults(&cfg);
    snprintf(cfg.method, sizeof cfg.method, "%s", k->method);
    cfg.freeze_layers = k->freeze_layers ? k->freeze_layers : m->cfg.L;
    if (k->rank) cfg.lora_rank = k->rank;
    cfg.lora_dropout = k->dropout;
    if (k->targets) snprintf(cfg.lora_target, sizeof cfg.lora_target, "%s", k->targets);
    snprintf(cfg.lora_trainable_tokens, sizeof cfg.lora_trainable_tokens, "%s", k->tokens);
    if (k->prefix_tokens) cfg.prefix_tokens = k->prefix_tokens;
    int v1 = !strcmp(k->method, "ptuning-v1");
    cfg.prefix_projection = v1 ? 0 : k->projection;
    if (v1 && k->projection) snprintf(cfg.prompt_encoder, sizeof cfg.prompt_encoder, "lstm");
    if (k->hidden) cfg.prefix_hidden = k->hidden;
    cfg.gradient_checkpointing = k->ckpt;
    cfg.use_dora = k->dora;
    TunaErr err = {0};
    TrainEstimate est;
    if (estimate_of(dir, &cfg, &est, what)) return;

    /* the state train_run would build (trainable tokens already ids here) */
    TrainSetup setup = {.method = method_of(k->method),
                        .freeze_layers = cfg.freeze_layers,
                        .lora_rank = cfg.lora_rank,
                        .lora_alpha = (float)cfg.lora_alpha,
                        .lora_dropout = (float)cfg.lora_dropout,
                        .lora_dora = cfg.use_dora,
                        .lora_targets = cfg.lora_target,
                        .lora_tokens =
                                cfg.lora_trainable_tokens[0] ? cfg.lora_trainable_tokens : NULL,
                        .seed = 42,
                        .prefix_tokens = cfg.prefix_tokens,
                        .prompt_lstm = !strcmp(cfg.prompt_encoder, "lstm"),
                        .prompt_layers = cfg.prompt_encoder_layers,
                        .prefix_projection = cfg.prefix_projection,
                        .prefix_hidden = cfg.prefix_hidden,
                        .grad_checkpoint = cfg.gradient_checkpointing};
    TrainState *ts = NULL;
    counted = 0;
    if (train_state_init(m, &setup, BATCH, CUTOFF, &ts, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return;
    }
    size_t state_bytes = counted;
    int np;
    const TrainParam *tp = train_params(ts, &np);
    Optim opt;
    counted = 0;
    if (optim_init(&opt, m->be, tp, np, 0.9f, 0.999f, 1e-8f, 0, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        train_state_free(ts);
        return;
    }
    size_t optim_bytes = counted;
    size_t state_est = est.weight_bytes - m->n_params * sizeof(float) + est.grad_bytes +
                       est.act_bytes + est.scratch_bytes;
    CHECK(est.total_params == m->n_params, "%s: total params %zu, the model has %zu", what,
          est.total_params, m->n_params);
    CHECK(est.trainable_params == train_param_count(ts), "%s: trainable %zu, the state has %zu",
          what, est.trainable_params, train_param_count(ts));
    CHECK(est.act_bytes == train_activation_bytes(ts), "%s: activations %zu, the state has %zu",
          what, est.act_bytes, train_activation_bytes(ts));
    CHECK(state_est == state_bytes, "%s: state %zu bytes estimated, train_state_init took %zu",
          what, state_est, state_bytes);
    CHECK(est.optim_bytes == optim_bytes, "%s: optimizer %zu bytes estimated, optim_init took %zu",
          what, est.optim_bytes, optim_bytes);
    CHECK(est.total_bytes == m->n_params * sizeof(float) + state_bytes + optim_bytes,
          "%s: total %zu", what, est.total_bytes);
    printf("  %-40s total %8zu trainable %8zu act %9zu state %9zu optim %8zu bytes\n", what,
           est.total_params, est.trainable_params, est.act_bytes, state_bytes, optim_bytes);
    optim_free(&opt);
    train_state_free(ts);
}

/* Stages dpo, kto, rm: rows are pairs or an example and its KL row (2 B), and the reference
 * train_run builds for dpo and kto (a state without training over the same Model for LoRA, over
 * a frozen copy of the weights for full) is counted in ref_bytes; orpo and rm have none; rm adds
 * its value head (C + 1 values, their gradient and AdamW state). */
static void pref_case(Model *m, const char *dir, const char *method, const char *stage,
                      const char *loss) {
    char what[200];
    snprintf(what, sizeof what, "%s %s %s %s", dir, stage, method, loss);
    TrainConfig cfg;
    train_config_defaults(&cfg);
    snprintf(cfg.method, sizeof cfg.method, "%s", method);
    snprintf(cfg.stage, sizeof cfg.stage, "%s", stage);
    snprintf(cfg.pref_loss, sizeof cfg.pref_loss, "%s", loss);
    int rm = !strcmp(stage, "rm");
    size_t vh = rm ? ((size_t)m->cfg.C + 1) * sizeof(float) : 0; /* the value head */
    TunaErr err = {0};
    TrainEstimate est;
    if (estimate_of(dir, &cfg, &est, what)) return;
    TrainSetup setup = {.method = method_of(method),
                        .lora_rank = cfg.lora_rank,
                        .lora_alpha = (float)cfg.lora_alpha,
                        .lora_dropout = (float)cfg.lora_dropout,
                        .lora_targets = cfg.lora_target,
                        .seed = 42};
    TrainState *ts = NULL, *rs = NULL;
    counted = 0;
    if (train_state_init(m, &setup, 2 * BATCH, CUTOFF, &ts, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return;
    }
    size_t state_bytes = counted;
    size_t ref_bytes = 0;
    if (!rm && strcmp(loss, "orpo")) {
        TrainSetup none = {.method = METHOD_NONE, .seed = 42};
        counted = 0;
        if (train_state_init(m, &none, 2 * BATCH, CUTOFF, &rs, &err)) {
            CHECK(0, "%s: %s", what, err.msg);
            train_state_free(ts);
            return;
        }
        ref_bytes = counted;
        if (setup.method == METHOD_FULL) ref_bytes += m->n_params * sizeof(float); /* the copy */
    }
    size_t state_est = est.weight_bytes - m->n_params * sizeof(float) + est.grad_bytes +
                       est.act_bytes + est.scratch_bytes;
    CHECK(state_est == state_bytes + 2 * vh && est.act_bytes == train_activation_bytes(ts),
          "%s: policy state %zu bytes estimated, train_state_init(2B rows) took %zu", what,
          state_est, state_bytes);
    CHECK(est.optim_bytes == 2 * (train_param_count(ts) * sizeof(float) + vh),
          "%s: optimizer %zu bytes estimated", what, est.optim_bytes);
    CHECK(est.ref_bytes == ref_bytes, "%s: reference %zu bytes estimated, %zu allocated", what,
          est.ref_bytes, ref_bytes);
    CHECK(est.total_bytes == est.weight_bytes + est.grad_bytes + est.optim_bytes + est.act_bytes +
                                     est.scratch_bytes + est.ref_bytes,
          "%s: total", what);
    printf("  %-40s state %9zu reference %9zu bytes\n", what, state_bytes, ref_bytes);
    train_state_free(rs);
    train_state_free(ts);
}

/* freeze with freeze_trainable_modules: the trainable count and the optimizer are those modules'
 * (the gradient buffer still spans the layers), as train_state_init registers them */
static void freeze_modules_case(Model *m, const char *dir) {
    const char *mods = m->cfg.arch == ARCH_GPT2 ? "attn,ln_2" : "mlp,input_layernorm";
    char what[200];
    snprintf(what, sizeof what, "%s freeze 2 layers, %s", dir, mods);
    TrainConfig cfg;
    train_config_defaults(&cfg);
    snprintf(cfg.method, sizeof cfg.method, "freeze");
    cfg.freeze_layers = 2;
    snprintf(cfg.freeze_trainable_modules, sizeof cfg.freeze_trainable_modules, "%s", mods);
    TunaErr err = {0};
    TrainEstimate est;
    if (estimate_of(dir, &cfg, &est, what)) return;
    TrainSetup setup = {
            .method = METHOD_FREEZE, .freeze_layers = 2, .freeze_modules = mods, .seed = 42};
    TrainState *ts = NULL;
    if (train_state_init(m, &setup, BATCH, CUTOFF, &ts, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return;
    }
    CHECK(est.trainable_params == train_param_count(ts) &&
                  est.optim_bytes == 2 * train_param_count(ts) * sizeof(float) &&
                  train_param_count(ts) > 0,
          "%s: trainable %zu estimated, the state has %zu", what, est.trainable_params,
          train_param_count(ts));
    printf("  %-40s trainable %8zu\n", what, est.trainable_params);
    train_state_free(ts);
}

static void one_model(const char *dir) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    Model *m = NULL;
    if (!be || model_load(dir, be, &m, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        backend_free(be);
        return;
    }
    BackendOps ops = *be->ops;
    real_ops = be->ops;
    ops.alloc = count_alloc;
    be->ops = &ops;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        one_case(m, dir, &cases[i]);
    pref_case(m, dir, "lora", "dpo", "sigmoid");
    pref_case(m, dir, "full", "dpo", "sigmoid");
    pref_case(m, dir, "lora", "dpo", "orpo");
    pref_case(m, dir, "lora", "kto", "sigmoid");
    pref_case(m, dir, "full", "kto", "sigmoid");
    pref_case(m, dir, "lora", "rm", "sigmoid");
    freeze_modules_case(m, dir);
    be->ops = real_ops;
    model_free(m);
    backend_free(be);
}

/* What a run would refuse, the estimate refuses in the same words. */
static void refusals(void) {
    ModelConfig mc;
    TunaErr err = {0};
    TrainConfig cfg;
    TrainEstimate est;
    if (config_load("tests/fixtures/gpt2", &mc, &err)) {
        CHECK(0, "gpt2: %s", err.msg);
        return;
    }
    train_config_defaults(&cfg);
    cfg.cutoff_len = mc.max_pos + 1; /* learned positions: no more than the model has */
    CHECK(train_estimate(&mc, &cfg, &est, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "exceeds the model's"),
          "gpt2 cutoff past its positions: %s", err.msg);
    cfg.cutoff_len = mc.max_pos;
    snprintf(cfg.lora_target, sizeof cfg.lora_target, "q_proj");
    CHECK(train_estimate(&mc, &cfg, &est, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "\"q_proj\" is not a linear layer of gpt2"),
          "gpt2 q_proj: %s", err.msg);
    snprintf(cfg.method, sizeof cfg.method, "freeze");
    cfg.freeze_layers = mc.L + 1;
    CHECK(train_estimate(&mc, &cfg, &est, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "--freeze-layers must be in [1, "),
          "freeze L+1: %s", err.msg);
    snprintf(cfg.method, sizeof cfg.method, "adapter");
    CHECK(train_estimate(&mc, &cfg, &est, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "--method must be full, freeze, lora, ptuning, prompt or "
                                  "ptuning-v1"),
          "method adapter: %s", err.msg);
    /* the virtual tokens count against a model's learned positions */
    snprintf(cfg.method, sizeof cfg.method, "prompt");
    CHECK(train_estimate(&mc, &cfg, &est, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "virtual tokens exceed the model's"),
          "method prompt over the positions: %s", err.msg);
}

int main(void) {
    static const char *const dirs[] = {"tests/fixtures/llama",   "tests/fixtures/llama_tied",
                                       "tests/fixtures/gpt2",    "tests/fixtures/qwen3",
                                       "tests/fixtures/mistral", "models/stories260K"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        one_model(dirs[i]);
    refusals();
    return test_report("test_estimate");
}
