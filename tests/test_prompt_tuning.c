/* test_prompt_tuning.c: prompt tuning (PEFT PROMPT_TUNING) and P-tuning v1 (PEFT P_TUNING, MLP and
 * LSTM encoders) against peft. Fixtures from tests/gen_prompt_fixtures.py on the tiny random
 * models (llama, qwen2, gpt2): the loss and every trainable gradient of one step (max |g - ref|
 * <= 1e-3 * max |ref|), the virtual tokens PEFT saves (prompt_embeddings), and the logits of the
 * inference path (the virtual tokens run once into the KV cache) against peft's training
 * forward (<= 1e-4). Adapters saved by peft load in tuna with peft's logits, and tuna's saved
 * adapters reload to the same logits (tests/interop loads them in peft). Also: text init,
 * shorter rows, the refusals. */
#include <stdint.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/peft.h"
#include "src/safetensors.h"
#include "src/xalloc.h"
#include "train_fixture.h"

#define GRAD_RTOL  1e-3
#define LOSS_RTOL  1e-5
#define LOGIT_ATOL 1e-4
/* The mean loss of a forward-only METHOD_NONE state on m as it is (its prefix included). */
static double none_loss(Model *m, const int32_t *ids, const int32_t *targets, int B, int T) {
    TunaErr err = {0};
    TrainSetup none = {.method = METHOD_NONE};
    TrainState *ts = NULL;
    double sum = 0;
    int cnt = 0;
    if (train_state_init(m, &none, B, T, &ts, &err) ||
        train_step_fb(ts, ids, targets, B, 1.0f, 0, &sum, &cnt, &err))
        CHECK(0, "METHOD_NONE: %s", err.msg);
    train_state_free(ts);
    return cnt ? sum / cnt : 1e30;
}

/* P-tuning v2's prefix, loaded as an adapter, is seen by evaluation too. */
static void prefix_eval_case(void) {
    const char *fx = "tests/fixtures/train/llama_prefix.safetensors";
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    SafeTensors *st = NULL;
    Model *m = NULL;
    if (safetensors_open(fx, &st, &err) || model_load("tests/fixtures/llama", be, &m, &err)) {
        CHECK(0, "%s: %s", fx, err.msg);
    } else {
        const StTensor *ids = safetensors_find(st, "input_ids"),
                       *lab = safetensors_find(st, "labels"), *loss = safetensors_find(st, "loss"),
                       *pe = safetensors_find(st, "adapter.prompt_embeddings");
        int B = (int)ids->shape[0], T = (int)ids->shape[1], n_t;
        int32_t *tg = test_next_targets(lab->data, B, T, &n_t);
        CHECK(model_set_prefix(m, pe->data, (int)pe->shape[0], &err) == 0, "%s", err.msg);
        double le = none_loss(m, ids->data, tg, B, T), want = ((const float *)loss->data)[0];
        CHECK(fabs(le - want) <= LOSS_RTOL * fabs(want), "prefix eval loss %.7f vs peft %.7f", le,
              want);
        printf("  llama  prefix     evaluation (METHOD_NONE) over the installed prefix: loss %.6f "
               "(peft %.6f)\n",
               le, want);
        free(tg);
    }
    model_free(m);
    backend_free(be);
    safetensors_free(st);
}

static void run_case(const char *arch, const char *kind, TrainSetup setup, int T_extra) {
    char mdir[256], fpath[256];
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/prompt/%s_%s.safetensors", arch, kind);
    TunaErr err = {0};
    SafeTensors *fx = NULL;
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    int32_t *targets = NULL;
    if (safetensors_open(fpath, &fx, &err) || model_load(mdir, be, &m, &err)) {
        CHECK(0, "%s %s: %s", arch, kind, err.msg);
        goto done;
    }
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *lab_t = safetensors_find(fx, "labels"), *loss_t = safetensors_find(fx, "loss"),
                   *lg_t = safetensors_find(fx, "logits"),
                   *pe_t = safetensors_find(fx, "prompt_embeddings");
    CHECK(ids_t && lab_t && loss_t && lg_t && pe_t, "%s: tensors missing", fpath);
    if (!ids_t || !lab_t || !loss_t || !lg_t || !pe_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    /* T_extra: a state sized for longer rows, run at T (train_set_seq_len) */
    if (train_state_init(m, &setup, B, T + T_extra, &ts, &err) ||
        (T_extra && train_set_seq_len(ts, T, &err))) {
        CHECK(0, "%s %s: %s", arch, kind, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "adapter.%s", tp[i].name);
        const StTensor *a = safetensors_find(fx, nm);
        CHECK(a && (size_t)a->shape[0] * (a->ndim == 2 ? (size_t)a->shape[1] : 1) == tp[i].n,
              "%s: %s missing or of another size", fpath, nm);
        if (!a) continue;
        be->ops->upload(be, tp[i].data, a->data, tp[i].n * sizeof(float));
    }
    int n_t;
    targets = test_next_targets(lab_t->data, B, T, &n_t);
    double loss_sum;
    int cnt;
    int rc =
            train_step_fb(ts, ids_t->data, targets, B, 1.0f / (float)n_t, 1, &loss_sum, &cnt, &err);
    CHECK(rc == 0, "%s %s: %s", arch, kind, err.msg);
    double loss = loss_sum / cnt, want = (double)((const float *)loss_t->data)[0];
    CHECK(cnt == n_t && fabs(loss - want) <= LOSS_RTOL * fabs(want),
          "%s %s: loss %.7f vs peft %.7f (%d targets)", arch, kind, loss, want, cnt);
    double worst = 0;
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "grad.%s", tp[i].name);
        const StTensor *g = safetensors_find(fx, nm);
        CHECK(g != NULL, "%s: %s missing", fpath, nm);
        if (!g) continue;
        const float *ref = g->data;
        float *got = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, got, tp[i].grad, tp[i].n * sizeof(float));
        double mref = 0, d = test_max_abs_diff(got, ref, tp[i].n);
        for (size_t j = 0; j < tp[i].n; j++)
            mref = fmax(mref, fabs((double)ref[j]));
        double rel = d / (mref > 0 ? mref : 1e-30);
        CHECK(d <= GRAD_RTOL * mref, "%s %s: %s: rel err %.3g (max|ref| %.3g)", arch, kind,
              tp[i].name, rel, mref);
        if (rel > worst) worst = rel;
        free(got);
    }
    /* what PEFT saves: the encoder's output */
    float *emb;
    int P = train_prompt(ts, &emb);
    double de = P == (int)pe_t->shape[0]
                        ? test_max_abs_diff(emb, pe_t->data, (size_t)P * (size_t)m->cfg.C)
                        : 1e30;
    CHECK(de <= 1e-5, "%s %s: prompt_embeddings differ by %.3g", arch, kind, de);
    /* the inference path: the virtual tokens once into the cache, then the real tokens */
    double dl = 1e30;
    if (P && model_set_prompt(m, emb, P, &err) == 0)
        dl = test_logits_diff(m, ids_t->data, lg_t->data, B, T);
    CHECK(dl <= LOGIT_ATOL, "%s %s inference: max |dlogit| %.3g (%s)", arch, kind, dl, err.msg);
    /* evaluation (tuna eval's loss: a METHOD_NONE state) over the model with them installed */
    double le = none_loss(m, ids_t->data, targets, B, T);
    CHECK(fabs(le - want) <= LOSS_RTOL * fabs(want), "%s %s: eval loss %.7f vs peft %.7f", arch,
          kind, le, want);
    printf("  %-6s %-10s%s loss %.6f (peft %.6f), %2d grad tensors, worst rel err %.2e; "
           "inference max |dlogit| %.2e\n",
           arch, kind, T_extra ? " (rows of T within T+3)" : "", loss, want, np, worst, dl);
    /* tuna's save, loaded back: the same logits */
    if (!T_extra && !strcmp(arch, "llama")) {
        char tmpl[] = "/tmp/tuna_prompt_XXXXXX";
        char *tmp = mkdtemp(tmpl), out[256], cmd[300];
        snprintf(out, sizeof out, "%s/adapter", tmp);
        CHECK(adapter_save(ts, out, mdir, &err) == 0, "%s", err.msg);
        Model *m2 = NULL;
        CHECK(model_load(mdir, be, &m2, &err) == 0 && adapter_load(m2, out, &err) == 0, "%s",
              err.msg);
        double d2 = m2 ? test_logits_diff(m2, ids_t->data, lg_t->data, B, T) : 1e30;
        CHECK(d2 <= LOGIT_ATOL, "%s %s: tuna's adapter reloaded: max |dlogit| %.3g", arch, kind,
              d2);
        printf("  %-6s %-10s tuna's adapter saved and loaded: max |dlogit| vs peft %.2e\n", arch,
               kind, d2);
        model_free(m2);
        snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
        CHECK(system(cmd) == 0, "cleanup");
    }
done:
    free(targets);
    train_state_free(ts);
    model_free(m);
    backend_free(be);
    safetensors_free(fx);
}

/* An adapter saved by peft's save_pretrained loads in tuna with peft's logits. */
static void peft_adapter_case(const char *adapter, const char *fixture) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    SafeTensors *fx = NULL;
    Model *m = NULL;
    if (safetensors_open(fixture, &fx, &err) || model_load("tests/fixtures/llama", be, &m, &err) ||
        adapter_load(m, adapter, &err)) {
        CHECK(0, "%s: %s", adapter, err.msg);
    } else {
        const StTensor *ids = safetensors_find(fx, "input_ids"),
                       *lg = safetensors_find(fx, "logits");
        double d = test_logits_diff(m, ids->data, lg->data, (int)ids->shape[0], (int)ids->shape[1]);
        CHECK(d <= LOGIT_ATOL, "%s: max |dlogit| %.3g", adapter, d);
        printf("  peft's %s loaded in tuna: max |dlogit| vs peft %.2e\n", adapter, d);
    }
    model_free(m);
    backend_free(be);
    safetensors_free(fx);
}

/* Text init: the init text's ids repeated and cut to P, their embedding rows (PEFT's TEXT). */
static void text_init_case(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    int32_t ids[3] = {5, 7, 9};
    TrainSetup s = {.method = METHOD_PROMPT,
                    .prefix_tokens = 5,
                    .seed = 1,
                    .prompt_init_ids = ids,
                    .prompt_init_n = 3};
    if (model_load("tests/fixtures/llama", be, &m, &err) ||
        train_state_init(m, &s, 1, 4, &ts, &err)) {
        CHECK(0, "text init: %s", err.msg);
        goto done;
    }
    int C = m->cfg.C, want[5] = {5, 7, 9, 5, 7}, same = 1;
    float *emb, *row = xmalloc(sizeof(float) * (size_t)C);
    int P = train_prompt(ts, &emb);
    for (int p = 0; p < P; p++) {
        be->ops->download(be, row, m->wte + (size_t)want[p] * C, sizeof(float) * (size_t)C);
        same &= !memcmp(row, emb + (size_t)p * C, sizeof(float) * (size_t)C);
    }
    CHECK(P == 5 && same, "text init: virtual tokens are the rows of ids 5 7 9 5 7");
    free(row);
    /* out-of-vocabulary ids refuse; neat packing refuses */
    train_state_free(ts);
    ts = NULL;
    ids[1] = 1 << 20;
    CHECK(train_state_init(m, &s, 1, 4, &ts, &err) != 0 && strstr(err.msg, "vocabulary"),
          "text init out of the vocabulary refused: %s", err.msg);
    s.prompt_init_ids = NULL;
    CHECK(train_state_init(m, &s, 2, 4, &ts, &err) == 0, "%s", err.msg);
    int32_t seg[8] = {0, 0, 2, 2, 0, 1, 1, 1};
    CHECK(ts && train_set_spans(ts, seg, &err) == TUNA_EUNSUP && strstr(err.msg, "virtual"),
          "neat packing refused: %s", err.msg);
    CHECK(ts && train_set_seq_len(ts, 5, &err) != 0, "rows longer than the state refused");
    TrainSetup bad = {.method = METHOD_PTUNING_V1, .prefix_tokens = 2, .prefix_hidden = 0};
    TrainState *t2 = NULL;
    CHECK(train_state_init(m, &bad, 1, 4, &t2, &err) != 0, "ptuning-v1 without a hidden size");
    train_state_free(t2);
done:
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

int main(void) {
    struct stat sb;
    if (stat("tests/fixtures/prompt/llama_prompt.safetensors", &sb)) {
        SKIP("tests/fixtures/prompt missing (tests/gen_prompt_fixtures.py makes it)");
        return test_report("test_prompt_tuning");
    }
    TrainSetup prompt = {.method = METHOD_PROMPT, .prefix_tokens = 4, .seed = 1};
    run_case("llama", "prompt", prompt, 0);
    run_case("qwen2", "prompt", prompt, 0);
    run_case("gpt2", "prompt", prompt, 0);
    TrainSetup mlp = {
            .method = METHOD_PTUNING_V1, .prefix_tokens = 4, .prefix_hidden = 8, .seed = 1};
    run_case("llama", "ptv1_mlp", mlp, 0);
    run_case("gpt2", "ptv1_mlp", mlp, 0);
    TrainSetup lstm = {.method = METHOD_PTUNING_V1,
                       .prefix_tokens = 4,
                       .prefix_hidden = 6,
                       .prompt_lstm = 1,
                       .prompt_layers = 2,
                       .seed = 1};
    run_case("llama", "ptv1_lstm", lstm, 0);
    /* rows shorter than the state, gradient checkpointing, the LM head in chunks of 3 rows */
    prompt.grad_checkpoint = 1;
    setenv("TUNA_HEAD_ROWS", "3", 1);
    run_case("gpt2", "prompt", prompt, 3);
    unsetenv("TUNA_HEAD_ROWS");
    lstm.grad_checkpoint = 1;
    run_case("llama", "ptv1_lstm", lstm, 3);
    peft_adapter_case("tests/fixtures/prompt/llama_prompt_adapter",
                      "tests/fixtures/prompt/llama_prompt.safetensors");
    peft_adapter_case("tests/fixtures/prompt/llama_ptv1_adapter",
                      "tests/fixtures/prompt/llama_ptv1_mlp.safetensors");
    text_init_case();
    prefix_eval_case();
    return test_report("test_prompt_tuning");
}
