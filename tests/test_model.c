/* test_model.c: logit parity with Hugging Face transformers. For every fixture made by
 * tests/gen_fixtures.py (tiny random models of each architecture, fp32/bf16/f16 checkpoints),
 * the logits of two sequences must match transformers' within 1e-4 (fp32 math; bf16 and f16
 * weights upcast), on the CPU and ref backends, and 20 greedy tokens through the KV cache
 * must equal model.generate's. */
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/safetensors.h"

#define LOGIT_ATOL 1e-4 /* the bound, fp32 */

static const StTensor *need(const SafeTensors *st, const char *name, StDtype dt) {
    const StTensor *t = safetensors_find(st, name);
    if (!t || t->dtype != dt) return NULL;
    return t;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void check_fixture(const char *dir, const char *backend) {
    char path[1024];
    TunaErr err = {0};
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    SafeTensors *ref = NULL;
    if (safetensors_open(path, &ref, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL;
    CHECK(be != NULL, "%s", err.msg);
    if (!be || model_load(dir, be, &m, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        goto done;
    }
    const StTensor *ids_t = need(ref, "input_ids", ST_I32), *lg_t = need(ref, "logits", ST_F32);
    const StTensor *gp_t = need(ref, "greedy_prompt", ST_I32),
                   *gi_t = need(ref, "greedy_ids", ST_I32);
    CHECK(ids_t && lg_t && gp_t && gi_t, "%s: reference tensors missing or of the wrong dtype",
          path);
    if (!ids_t || !lg_t || !gp_t || !gi_t) goto done;
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1], V = m->cfg.V;
    CHECK(lg_t->shape[2] == V, "%s: vocab %d vs logits %lld", dir, V, (long long)lg_t->shape[2]);
    const int32_t *ids = ids_t->data;
    const float *want = lg_t->data;
    float *got = malloc(sizeof(float) * (size_t)T * V);
    CHECK(model_reserve(m, 64, 16, &err) == 0, "%s", err.msg);
    for (int b = 0; b < B; b++) {
        model_reset(m);
        int rc = model_forward(m, ids + (size_t)b * T, T, got, 1, &err);
        CHECK(rc == 0, "%s: %s", dir, err.msg);
        double d = test_max_abs_diff(got, want + (size_t)b * T * V, (size_t)T * V);
        CHECK(d <= LOGIT_ATOL, "%s [%s] row %d: max |dlogit| = %.3g > %g", dir, backend, b, d,
              LOGIT_ATOL);
        if (b == 0) printf("  %-28s %-4s max |dlogit| %.2e\n", dir + 15, backend, d);
        // the same row fed one token at a time through the KV cache
        model_reset(m);
        double dc = 0;
        for (int t = 0; t < T && !rc; t++) {
            rc = model_forward(m, ids + (size_t)b * T + t, 1, got, 0, &err);
            double e = test_max_abs_diff(got, want + ((size_t)b * T + t) * V, (size_t)V);
            if (e > dc) dc = e;
        }
        CHECK(rc == 0 && dc <= LOGIT_ATOL, "%s [%s] row %d via KV cache: max |dlogit| = %.3g", dir,
              backend, b, dc);
    }
    // greedy decoding through the cache vs model.generate
    int np = (int)gp_t->shape[0], ng = (int)gi_t->shape[0];
    const int32_t *gp = gp_t->data, *gi = gi_t->data;
    model_reset(m);
    int rc = model_forward(m, gp, np, got, 0, &err);
    int same = 1;
    for (int i = 0; i < ng && !rc; i++) {
        int32_t next = argmax(got, V);
        if (next != gi[i]) {
            same = 0;
            break;
        }
        rc = model_forward(m, &next, 1, got, 0, &err);
    }
    CHECK(rc == 0 && same, "%s [%s]: greedy ids differ from transformers' generate", dir, backend);
    free(got);
done:
    model_free(m);
    backend_free(be);
    safetensors_free(ref);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A backend without one slot is refused in one line naming the slot: by model_load for a slot
 * inference uses, by train_state_init for one only training uses. The real backends have all. */
static void check_capabilities(void) {
    TunaErr err = {0};
    const char *names[] = {"cpu", "ref"};
    for (int i = 0; i < 2; i++) {
        Backend *be = backend_init(names[i], 1, &err);
        if (!be) {
            CHECK(0, "%s: %s", names[i], err.msg);
            continue;
        }
        CHECK(!backend_missing(be->ops, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
              "%s backend lacks %s", names[i],
              backend_missing(be->ops, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN));
        BackendOps ops = *be->ops;
        const BackendOps *real = be->ops;
        be->ops = &ops;
        Model *m = NULL;
        ops.rope_fwd = NULL;
        int rc = model_load("tests/fixtures/llama", be, &m, &err);
        CHECK(rc && !m && strstr(err.msg, "no rope_fwd op") && !strchr(err.msg, '\n'),
              "%s without rope_fwd: rc %d, \"%s\"", names[i], rc, err.msg);
        ops.rope_fwd = real->rope_fwd;
        ops.layernorm_bwd = NULL;
        CHECK(!strcmp(backend_missing(&ops, BACKEND_NEED_TRAIN), "layernorm_bwd") &&
                      !backend_missing(&ops, BACKEND_NEED_INFER),
              "%s: layernorm_bwd is a training slot only", names[i]);
        TrainState *ts = NULL;
        TrainSetup setup = {.method = METHOD_FULL};
        if (model_load("tests/fixtures/llama", be, &m, &err)) {
            CHECK(0, "%s: %s", names[i], err.msg);
        } else {
            rc = train_state_init(m, &setup, 1, 8, &ts, &err);
            CHECK(rc && !ts && strstr(err.msg, "no layernorm_bwd op"),
                  "%s training without layernorm_bwd: rc %d, \"%s\"", names[i], rc, err.msg);
        }
        train_state_free(ts);
        model_free(m);
        be->ops = real;
        backend_free(be);
    }
}

/* One convention for a model argument (src/model_any.c), the CLI's and the workbench's: an
 * adapter run loads onto the base its adapter_config.json names, or, that base gone, onto the
 * --model of its train_config.json; with neither, one line saying what to give instead. */
static void check_adapter_runs(void) {
    char tmp[] = "/tmp/tuna_model_any_XXXXXX", cmd[1024], base[4096];
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return;
    }
    const char *src = "tests/fixtures/train/llama_lora_adapter";
    snprintf(cmd, sizeof cmd,
             "cp %s/adapter_model.safetensors %s/ && sed "
             "'s|\"tests/fixtures/llama\"|\"/gone/llama\"|' "
             "%s/adapter_config.json > %s/adapter_config.json",
             src, tmp, src, tmp);
    CHECK(system(cmd) == 0, "%s", cmd);
    TunaErr err = {0};
    CHECK(model_is_adapter_run(src) && !model_is_adapter_run("tests/fixtures/llama"),
          "model_is_adapter_run");
    int rc = model_run_base(tmp, base, sizeof base, &err);
    CHECK(rc && strstr(err.msg, "\"/gone/llama\" is not a folder here") &&
                  strstr(err.msg, "add --adapter") && !strchr(err.msg, '\n'),
          "gone base: rc %d, \"%s\"", rc, err.msg);
    snprintf(cmd, sizeof cmd, "%s/train_config.json", tmp);
    FILE *f = fopen(cmd, "w");
    if (f) fputs("{\"model\": \"tests/fixtures/llama\"}\n", f), fclose(f);
    Backend *be = backend_init("cpu", 1, &err);
    Model *m = NULL;
    rc = be ? model_load_any(tmp, be, &m, base, sizeof base, &err) : -1;
    CHECK(!rc && m && !strcmp(base, "tests/fixtures/llama"),
          "the run's train_config.json model as the base: rc %d, base %s (%s)", rc, base, err.msg);
    CHECK(!rc && m && !m->n_qparams && be && !be->mm_bf16, "an fp32 run: an fp32 base");
    model_free(m);
    m = NULL;
    /* a run trained on an 8-bit base with bf16 products opens as it was trained, as `tuna chat`
     * opens it (model_run_precision, the one rule) */
    f = fopen(cmd, "w");
    if (f)
        fputs("{\"model\": \"tests/fixtures/llama\", \"quantization_bit\": 8, \"bf16\": true}\n",
              f),
                fclose(f);
    rc = be ? model_load_any(tmp, be, &m, base, sizeof base, &err) : -1;
    CHECK(!rc && m && m->n_qparams > 0 && be->mm_bf16,
          "an 8-bit bf16 run: base typed (%zu values) and bf16 products (%d): rc %d (%s)",
          m ? m->n_qparams : 0, be ? be->mm_bf16 : -1, rc, err.msg);
    ModelPrecision p = MODEL_PRECISION_INIT;
    model_run_precision(tmp, &p);
    CHECK(p.bits == 8 && p.bf16 && !strcmp(p.qtype, "nf4") && !strcmp(p.dtype, "auto"),
          "model_run_precision: %d %d %s %s", p.bits, p.bf16, p.qtype, p.dtype);
    if (be) be->mm_bf16 = 0;
    model_free(m);
    m = NULL;
    rc = be ? model_load_any("tests/fixtures/llama", be, &m, base, sizeof base, &err) : -1;
    CHECK(!rc && m && !strcmp(base, "tests/fixtures/llama"), "a model folder: rc %d (%s)", rc,
          err.msg);
    model_free(m);
    backend_free(be);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "%s", cmd);
}

int main(void) {
    check_capabilities();
    check_adapter_runs();
    const char *root = "tests/fixtures";
    DIR *d = opendir(root);
    if (!d) {
        CHECK(0, "%s: cannot open (run from the repo root)", root);
        return test_report("test_model");
    }
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        char p[1024];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s/reference.safetensors", root, e->d_name);
        if (e->d_name[0] != '.' && stat(p, &sb) == 0) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    CHECK(n >= 21, "expected fixtures for 7 architectures x 3 dtypes, found %d", n);
    for (int i = 0; i < n; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        check_fixture(dir, "cpu");
        check_fixture(dir, "ref");
        free(names[i]);
    }
    return test_report("test_model");
}
