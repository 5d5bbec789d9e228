/* test_train_grad.c: loss and every gradient of a training step against PyTorch.
 * Fixtures from tests/gen_train_fixtures.py (transformers + peft): for tiny random models of
 * each architecture, full fine-tuning grads of every parameter, and LoRA grads of A and B
 * (peft, with B set non-zero). Tolerance: per tensor, max |g - g_ref| <= 1e-3 * max |g_ref|
 * (fp32 with different summation orders), and the loss within 1e-5 relative. */
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

#define GRAD_RTOL 1e-3
#define LOSS_RTOL 1e-5
#define GRAD_ATOL 1e-7

/* The fixture tensor as tuna lays it out (GPT-2 Conv1D transposed, c_attn split). */
static float *to_ours(const StTensor *t, const ParamInfo *pi) {
    size_t fn = 1;
    for (int d = 0; d < t->ndim; d++)
        fn *= (size_t)t->shape[d];
    float *src = xmalloc(sizeof(float) * fn), *dst = xmalloc(sizeof(float) * (pi ? pi->n : fn));
    st_tensor_to_f32(t, src, fn, NULL);
    if (!pi || pi->mode == 0) {
        memcpy(dst, src, sizeof(float) * fn);
    } else {
        size_t R = (size_t)pi->shape[0], Cn = pi->ndim == 2 ? (size_t)pi->shape[1] : 1;
        if (pi->mode == 1) {
            for (size_t r = 0; r < R; r++)
                for (size_t c = 0; c < Cn; c++)
                    dst[c * R + r] = src[r * Cn + c];
        } else if (pi->mode == 2) {
            size_t W = Cn / 3, off = (size_t)pi->part * W;
            for (size_t r = 0; r < R; r++)
                for (size_t c = 0; c < W; c++)
                    dst[c * R + r] = src[r * Cn + off + c];
        } else {
            memcpy(dst, src + (size_t)pi->part * (R / 3), sizeof(float) * (R / 3));
        }
    }
    free(src);
    return dst;
}

static const ParamInfo *find_pinfo(const Model *m, const float *data) {
    for (int i = 0; i < m->n_pinfo; i++)
        if (m->params + m->pinfo[i].off == data) return &m->pinfo[i];
    return NULL;
}
static void run_case(const char *arch, const char *kind, TrainSetup setup) {
    char mdir[256], fpath[256];
    snprintf(mdir, sizeof mdir, "tests/fixtures/%s", arch);
    snprintf(fpath, sizeof fpath, "tests/fixtures/train/%s_%s.safetensors", arch, kind);
    TunaErr err = {0};
    Backend *be;
    SafeTensors *fx;
    Model *m;
    TrainState *ts = NULL;
    int opened = test_fx_open(fpath, "tests/gen_train_fixtures.py", mdir, "cpu", &be, &fx, &m);
    if (opened > 0) return;
    if (opened < 0) goto done;
    const StTensor *ids_t = safetensors_find(fx, "input_ids"),
                   *lab_t = safetensors_find(fx, "labels"), *loss_t = safetensors_find(fx, "loss");
    CHECK(ids_t && lab_t && loss_t, "%s: input_ids/labels/loss missing", fpath);
    if (!ids_t || !lab_t || !loss_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    /* metadata holds peft's target_modules as a JSON list: make it a comma list */
    char tlist[256] = "";
    const char *md = safetensors_metadata(fx, "target_modules");
    if (md && setup.method == METHOD_LORA) {
        size_t j = 0;
        for (const char *c = md; *c && j + 1 < sizeof tlist; c++)
            if (*c != 0x5b && *c != 0x5d && *c != 0x22 && *c != 0x20) tlist[j++] = *c;
        tlist[j] = 0;
        setup.lora_targets = tlist;
    }
    const char *toks = safetensors_metadata(fx, "trainable_token_indices");
    if (toks && setup.method == METHOD_LORA) setup.lora_tokens = toks;
    if (train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s %s: %s", arch, kind, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    // adapter weights from the fixture (peft's names)
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "adapter.%s", tp[i].name);
        const StTensor *a = safetensors_find(fx, nm);
        if (setup.method == METHOD_LORA) CHECK(a != NULL, "%s: %s missing", fpath, nm);
        if (a) {
            float *h = to_ours(a, NULL);
            be->ops->upload(be, tp[i].data, h, tp[i].n * sizeof(float));
            free(h);
        }
    }
    const int32_t *ids = ids_t->data;
    int n_t;
    int32_t *targets = test_next_targets(lab_t->data, B, T, &n_t);
    double loss_sum;
    int cnt;
    int rc = train_step_fb(ts, ids, targets, B, 1.0f / (float)n_t, 1, &loss_sum, &cnt, &err);
    CHECK(rc == 0, "%s: %s", arch, err.msg);
    double loss = loss_sum / cnt, want = (double)((const float *)loss_t->data)[0];
    CHECK(fabs(loss - want) <= LOSS_RTOL * fabs(want), "%s %s: loss %.7f vs torch %.7f", arch, kind,
          loss, want);
    double worst = 0;
    int compared = 0;
    for (int i = 0; i < np; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "grad.%s", tp[i].name);
        const StTensor *g = safetensors_find(fx, nm);
        CHECK(g != NULL, "%s: %s missing", fpath, nm);
        if (!g) continue;
        const ParamInfo *pi = setup.method == METHOD_LORA ? NULL : find_pinfo(m, tp[i].data);
        float *ref = to_ours(g, pi), *got = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, got, tp[i].grad, tp[i].n * sizeof(float));
        double mref = 0, d = test_max_abs_diff(got, ref, tp[i].n);
        for (size_t j = 0; j < tp[i].n; j++)
            mref = fmax(mref, fabs((double)ref[j]));
        /* GRAD_ATOL: a gradient that is zero in exact arithmetic (GPT-2's key bias: a constant
         * added to every score of a query cancels in the softmax) is float noise on both sides */
        double rel = d / (mref > 0 ? mref : 1e-30);
        CHECK(d <= GRAD_RTOL * mref + GRAD_ATOL,
              "%s %s: %s (part %d): rel err %.3g (max|ref| %.3g)", arch, kind, tp[i].name,
              pi ? pi->part : 0, rel, mref);
        if (mref > 1e-6 && rel > worst) worst = rel;
        compared++;
        free(ref);
        free(got);
    }
    printf("  %-10s %-13s loss %.6f (torch %.6f)  %3d grad tensors, worst rel err %.2e\n", arch,
           kind, loss, want, compared, worst);
    if (setup.method == METHOD_PTUNING) { /* the inference path: prefix in the KV cache */
        float *pre;
        int P = train_prefix(ts, &pre);
        const StTensor *lg = safetensors_find(fx, "logits");
        CHECK(P == 3 && lg, "%s: prefix or logits missing", fpath);
        if (P == 3 && lg && model_set_prefix(m, pre, P, &err) == 0) {
            double d = test_logits_diff(m, ids, lg->data, B, T);
            CHECK(d <= 1e-4, "%s prefix inference: max |dlogit| %.3g", arch, d);
            printf("  %-10s %-13s generation path with the prefix in the KV cache: max |dlogit| "
                   "%.2e\n",
                   arch, kind, d);
        }
    }
    free(targets);
done:
    train_state_free(ts);
    model_free(m);
    backend_free(be);
    safetensors_free(fx);
}

/* A real PEFT adapter (saved by peft) loads and gives peft's logits; tuna's own adapter and
 * HF checkpoint round-trip through adapter_save / model_save_hf. */
static void test_peft_interop(void) {
    const char *fx = "tests/fixtures/train/llama_lora_logits.safetensors";
    struct stat sb;
    if (stat(fx, &sb)) {
        SKIP("%s missing", fx);
        return;
    }
    TunaErr err = {0};
    SafeTensors *st = NULL;
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    CHECK(safetensors_open(fx, &st, &err) == 0, "%s", err.msg);
    const StTensor *ids = safetensors_find(st, "input_ids"), *lg = safetensors_find(st, "logits");
    CHECK(ids && lg, "%s: input_ids/logits missing", fx);
    if (!ids || !lg) goto done;
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    CHECK(model_load("tests/fixtures/llama", be, &m, &err) == 0, "%s", err.msg);
    CHECK(adapter_load(m, "tests/fixtures/train/llama_lora_adapter", &err) == 0, "%s", err.msg);
    double d = test_logits_diff(m, ids->data, lg->data, B, T);
    CHECK(d <= 1e-4, "peft adapter: max |dlogit| %.3g", d);
    printf("  peft adapter (saved by peft) merged into llama: max |dlogit| vs peft %.2e\n", d);
    // tuna's HF export of the merged model reloads to the same logits
    char tmpl[] = "/tmp/tuna_peft_XXXXXX";
    char *tmp = mkdtemp(tmpl), out[256];
    snprintf(out, sizeof out, "%s/merged", tmp);
    CHECK(model_save_hf(m, out, &err) == 0, "%s", err.msg);
    Model *m2 = NULL;
    CHECK(model_load(out, be, &m2, &err) == 0, "%s", err.msg);
    if (m2) {
        d = test_logits_diff(m2, ids->data, lg->data, B, T);
        CHECK(d <= 1e-4, "merged export: max |dlogit| %.3g", d);
        printf("  merged HF export reloaded: max |dlogit| vs peft %.2e\n", d);
    }
    model_free(m2);
    // gpt2: the fused, transposed c_attn survives a save/load round trip bit for bit
    Model *g = NULL, *g2 = NULL;
    snprintf(out, sizeof out, "%s/gpt2", tmp);
    CHECK(model_load("tests/fixtures/gpt2", be, &g, &err) == 0, "%s", err.msg);
    CHECK(g && model_save_hf(g, out, &err) == 0, "%s", err.msg);
    CHECK(model_load(out, be, &g2, &err) == 0, "%s", err.msg);
    if (g && g2)
        CHECK(!memcmp(g->params, g2->params, sizeof(float) * g->n_params),
              "gpt2 round trip differs");
    model_free(g);
    model_free(g2);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
done:
    model_free(m);
    backend_free(be);
    safetensors_free(st);
}

/* freeze with freeze_trainable_modules (LLaMA-Factory's): only those modules of the trained
 * layers train, by its ".{layer}.{module}" match; a module the layers lack is refused naming the
 * ones they have */
static void test_freeze_modules(void) {
    static const struct {
        const char *arch, *mods;
        int layers, want;
    } cases[] = {{"llama", "mlp,input_layernorm", 2, 8},
                 {"gpt2", "attn", 1, 8}}; /* c_attn: q, k, v apart */
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        TunaErr err = {0};
        Backend *be = backend_init("cpu", 2, &err);
        Model *m = NULL;
        char dir[128];
        snprintf(dir, sizeof dir, "tests/fixtures/%s", cases[k].arch);
        CHECK(model_load(dir, be, &m, &err) == 0, "%s", err.msg);
        TrainSetup s = {.method = METHOD_FREEZE,
                        .freeze_layers = cases[k].layers,
                        .freeze_modules = cases[k].mods,
                        .seed = 1};
        TrainState *ts = NULL;
        int ok = m && train_state_init(m, &s, 1, 8, &ts, &err) == 0, np = 0, good = 0;
        const TrainParam *tp = ok ? train_params(ts, &np) : NULL;
        for (int i = 0; i < np; i++) {
            int hit = 0;
            for (int l = m->cfg.L - cases[k].layers; l < m->cfg.L; l++)
                for (const char *q = cases[k].mods; *q;) {
                    size_t n = strcspn(q, ",");
                    char pat[96];
                    snprintf(pat, sizeof pat, ".%d.%.*s.", l, (int)n, q);
                    hit |= strstr(tp[i].name, pat) != NULL;
                    q += n + (q[n] == ',');
                }
            good += hit;
        }
        CHECK(ok && np == cases[k].want && good == np,
              "%s freeze %s: %d tensors train (%d of them those modules), want %d: %s",
              cases[k].arch, cases[k].mods, np, good, cases[k].want, err.msg);
        train_state_free(ts);
        s.freeze_modules = "self_attention";
        ts = NULL;
        int rc = m ? train_state_init(m, &s, 1, 8, &ts, &err) : -1;
        CHECK(rc != 0 && strstr(err.msg, "\"self_attention\" is not a module") &&
                      strstr(err.msg, "mlp"),
              "%s: an unknown module: %s", cases[k].arch, err.msg);
        train_state_free(ts);
        model_free(m);
        backend_free(be);
    }
}

int main(void) {
    test_peft_interop();
    const char *archs[] = {"llama", "llama_tied", "llama3", "mistral", "qwen2", "qwen3", "gpt2"};
    TrainSetup full = {.method = METHOD_FULL, .seed = 1};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        run_case(archs[i], "full", full);
    /* freeze_trainable_modules: their gradients are full fine-tuning's (a tensor's gradient
     * does not depend on which others train) */
    test_freeze_modules();
    TrainSetup fm = {.method = METHOD_FREEZE,
                     .freeze_layers = 2,
                     .freeze_modules = "mlp,input_layernorm",
                     .seed = 1};
    run_case("llama", "full", fm);
    fm.freeze_modules = "attn,ln_2";
    run_case("gpt2", "full", fm);
    TrainSetup lora = {.method = METHOD_LORA, .lora_rank = 4, .lora_alpha = 8, .seed = 1};
    const char *lora_archs[] = {"llama", "qwen2", "qwen3", "gpt2"};
    for (size_t i = 0; i < 4; i++)
        run_case(lora_archs[i], "lora", lora);
    TrainSetup rs = lora;
    rs.lora_rslora = 1;
    run_case("llama", "lora_rslora", rs);
    /* LoRA + peft's trainable_token_indices: untied (embedding only) and tied (embedding and
     * LM head share the rows) */
    const char *tok_archs[] = {"llama", "llama_tied", "gpt2"};
    for (size_t i = 0; i < 3; i++)
        run_case(tok_archs[i], "lora_tokens", lora);
    TrainSetup pre = {.method = METHOD_PTUNING, .prefix_tokens = 3, .seed = 1};
    run_case("llama", "prefix", pre);
    run_case("qwen2", "prefix", pre);
    pre.prefix_projection = 1;
    pre.prefix_hidden = 16;
    run_case("llama", "prefix_proj", pre);
    /* the LM head and loss a chunk of 3 rows at a time (the default takes every row of these
     * tiny vocabularies at once): the same losses and gradients as torch's */
    setenv("TUNA_HEAD_ROWS", "3", 1);
    printf("  with the LM head in chunks of 3 rows:\n");
    run_case("llama_tied", "full", full);
    run_case("gpt2", "full", full);
    run_case("qwen2", "lora", lora);
    run_case("llama_tied", "lora_tokens", lora);
    unsetenv("TUNA_HEAD_ROWS");
    return test_report("test_train_grad");
}
