/* test_train_adapter.c: `tuna train --adapter DIR`, a new run that starts from an adapter.
 * - LoRA on stories260K for a few steps, then a new run with --adapter from its folder: the new
 *   run's step-0 eval loss equals the first run's final eval loss (the same validation rows,
 *   the same weights), its schedule starts at step 1, and its settings come from the adapter;
 * - the same from a ptuning (prefix) run;
 * - in the library: the trainable tensors at the start equal the adapter file bit for bit and
 *   the optimizer moments are zero, for a tuna run and for a PEFT-saved fixture;
 * - refusals in one line: a missing folder, an adapter of another base model, conflicting
 *   --lora-rank / --lora-target / --method / --prefix-tokens.
 * Runs ./tuna (or $TUNA_BIN) from the repo root. */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/optim.h"
#include "src/peft.h"
#include "src/safetensors.h"
#include "src/train.h"
#include "src/xalloc.h"

#define BASE                                                                                       \
    "--model models/stories260K --dataset identity --dataset-dir datasets "                        \
    "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --quiet "              \
    "--threads 2 --sample-prompts '' --eval-steps 0 --save-steps 0 "

static char tmpdir[256];

/* Runs `tuna train BASE args`; stderr into *msg (the last line, if msg). Returns the status. */
static int train(const char *args, char *msg, size_t cap) {
    char cmd[2048], errf[300];
    snprintf(errf, sizeof errf, "%s/stderr.txt", tmpdir);
    snprintf(cmd, sizeof cmd, "%s train " BASE "%s 2>%s", test_tuna_bin(), args, errf);
    int st = system(cmd);
    if (msg) {
        char *t = xread_file(errf, NULL);
        snprintf(msg, cap, "%s", t ? t : "");
        free(t);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* From metrics.jsonl: the first and last eval loss, the start event's start_step, and the
 * first step line's step. */
static void read_run(const char *dir, double *eval0, double *eval_last, int *start_step,
                     int *first_step) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    *eval0 = *eval_last = -1;
    *start_step = *first_step = -1;
    char *text = xread_file(path, NULL);
    if (!text) return;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "eval")) {
            double e = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
            if (*eval0 < 0) *eval0 = e;
            *eval_last = e;
        }
        if (t && !strcmp(t, "start"))
            *start_step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "start_step"));
        if (t && !strcmp(t, "step") && *first_step < 0) *first_step = step;
        cJSON_Delete(j);
    }
    free(text);
}

/* A JSON key of DIR/train_config.json as text. */
static void config_value(const char *dir, const char *key, char *out, size_t cap) {
    char path[512];
    snprintf(path, sizeof path, "%s/train_config.json", dir);
    char *text = xread_file(path, NULL);
    cJSON *j = cJSON_Parse(text ? text : "{}");
    free(text);
    const cJSON *v = cJSON_GetObjectItem(j, key);
    if (cJSON_IsString(v))
        snprintf(out, cap, "%s", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(out, cap, "%g", v->valuedouble);
    else
        snprintf(out, cap, "?");
    cJSON_Delete(j);
}

static void test_continue_lora(void) {
    char r1[400], r2[400], args[1200], msg[1024];
    snprintf(r1, sizeof r1, "%s/lora1", tmpdir);
    snprintf(r2, sizeof r2, "%s/lora2", tmpdir);
    snprintf(args, sizeof args,
             "--lora-rank 4 --lora-alpha 8 --lora-target q_proj,v_proj --max-steps 4 --output %s",
             r1);
    CHECK(train(args, msg, sizeof msg) == 0, "first LoRA run: %s", msg);
    /* the new run starts from r1: rank, alpha, targets from its adapter_config.json */
    snprintf(args, sizeof args, "--adapter %s --max-steps 2 --output %s", r1, r2);
    CHECK(train(args, msg, sizeof msg) == 0, "--adapter run: %s", msg);
    double a0, a_last, b0, b_last;
    int s1, f1, s2, f2;
    read_run(r1, &a0, &a_last, &s1, &f1);
    read_run(r2, &b0, &b_last, &s2, &f2);
    CHECK(a_last > 0 && b0 == a_last,
          "step-0 eval of the --adapter run %.17g must equal the first run's final eval %.17g", b0,
          a_last);
    CHECK(a0 != a_last, "the first run changed the adapter (eval %.17g -> %.17g)", a0, a_last);
    CHECK(s2 == 0 && f2 == 1, "the schedule starts fresh: start_step %d, first step %d", s2, f2);
    char v[64];
    config_value(r2, "lora_rank", v, sizeof v);
    CHECK(!strcmp(v, "4"), "lora_rank from the adapter: %s", v);
    config_value(r2, "lora_alpha", v, sizeof v);
    CHECK(!strcmp(v, "8"), "lora_alpha from the adapter: %s", v);
    config_value(r2, "lora_target", v, sizeof v);
    CHECK(!strcmp(v, "q_proj,v_proj"), "lora_target from the adapter: %s", v);
    config_value(r2, "adapter", v, sizeof v);
    CHECK(strstr(v, "lora1") != NULL, "adapter recorded in train_config.json: %s", v);
    /* an explicit flag equal to the adapter's is no conflict */
    snprintf(args, sizeof args,
             "--adapter %s --lora-rank 4 --lora-target v_proj,q_proj --max-steps 1 --output "
             "%s/lora3",
             r1, tmpdir);
    CHECK(train(args, msg, sizeof msg) == 0, "flags that agree with the adapter: %s", msg);
}

static void test_continue_prefix(void) {
    char p1[400], p2[400], args[1200], msg[1024];
    snprintf(p1, sizeof p1, "%s/prefix1", tmpdir);
    snprintf(p2, sizeof p2, "%s/prefix2", tmpdir);
    snprintf(args, sizeof args, "--method ptuning --prefix-tokens 4 --max-steps 3 --output %s", p1);
    CHECK(train(args, msg, sizeof msg) == 0, "ptuning run: %s", msg);
    snprintf(args, sizeof args, "--adapter %s --max-steps 1 --output %s", p1, p2);
    CHECK(train(args, msg, sizeof msg) == 0, "--adapter from a ptuning run: %s", msg);
    double a0, a_last, b0, b_last;
    int s, f;
    read_run(p1, &a0, &a_last, &s, &f);
    read_run(p2, &b0, &b_last, &s, &f);
    CHECK(a_last > 0 && b0 == a_last, "prefix: step-0 eval %.17g vs final eval %.17g", b0, a_last);
    char v[64];
    config_value(p2, "method", v, sizeof v);
    CHECK(!strcmp(v, "ptuning"), "method from the adapter: %s", v);
    config_value(p2, "prefix_tokens", v, sizeof v);
    CHECK(!strcmp(v, "4"), "prefix_tokens from the adapter: %s", v);
}

/* In the library: the trainable tensors after adapter_init_train equal the file's, bit for
 * bit, and a fresh optimizer's moments are zero (what run_open does next). */
static void check_start(const char *model_dir, const char *adapter, int want_tensors) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    Model *m = NULL;
    CHECK(be && model_load(model_dir, be, &m, &err) == 0, "%s: %s", model_dir, err.msg);
    if (!m) {
        backend_free(be);
        return;
    }
    TrainConfig c, a;
    train_config_defaults(&c);
    snprintf(c.adapter, sizeof c.adapter, "%s", adapter);
    snprintf(c.model, sizeof c.model, "%s", model_dir);
    int rc = adapter_train_config(&c, &a, &err);
    CHECK(rc == 0, "adapter_train_config %s: %s", adapter, err.msg);
    TrainSetup setup = {.method = !strcmp(a.method, "ptuning") ? METHOD_PTUNING : METHOD_LORA,
                        .lora_rank = a.lora_rank,
                        .lora_alpha = (float)a.lora_alpha,
                        .lora_rslora = a.use_rslora,
                        .lora_targets = a.lora_target,
                        .lora_tokens = a.lora_trainable_tokens[0] ? a.lora_trainable_tokens : NULL,
                        .seed = 7,
                        .prefix_tokens = a.prefix_tokens};
    TrainState *ts = NULL;
    if (!rc) rc = train_state_init(m, &setup, 1, 8, &ts, &err);
    if (!rc) rc = adapter_init_train(ts, adapter, model_dir, &err);
    CHECK(rc == 0, "%s on %s: %s", adapter, model_dir, err.msg);
    if (!rc) {
        int np;
        const TrainParam *tp = train_params(ts, &np);
        CHECK(np == want_tensors, "%s: %d trainable tensors, want %d", adapter, np, want_tensors);
        float **host = xcalloc((size_t)np, sizeof *host);
        for (int i = 0; i < np; i++)
            host[i] = xmalloc(sizeof(float) * tp[i].n);
        train_download_params(ts, host);
        char path[600];
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter);
        SafeTensors *st = NULL;
        CHECK(safetensors_open(path, &st, &err) == 0, "%s", err.msg);
        int same = st != NULL;
        for (int i = 0; i < np && same; i++) {
            const StTensor *t = safetensors_find(st, tp[i].name);
            float *f = xmalloc(sizeof(float) * tp[i].n);
            same = t && st_tensor_to_f32(t, f, tp[i].n, &err) == 0 &&
                   !memcmp(f, host[i], sizeof(float) * tp[i].n);
            if (!same) CHECK(0, "%s: tensor %s differs from the file", adapter, tp[i].name);
            free(f);
        }
        CHECK(same, "%s: the trainable tensors equal the adapter file bit for bit", adapter);
        safetensors_free(st);
        Optim o;
        CHECK(optim_init(&o, be, tp, np, 0.9f, 0.999f, 1e-8f, 0.0f, &err) == 0, "%s", err.msg);
        float **mm = xcalloc((size_t)np, sizeof *mm), **vv = xcalloc((size_t)np, sizeof *vv);
        for (int i = 0; i < np; i++) {
            mm[i] = xmalloc(sizeof(float) * tp[i].n);
            vv[i] = xmalloc(sizeof(float) * tp[i].n);
        }
        optim_download(&o, mm, vv);
        int zero = o.t == 0;
        for (int i = 0; i < np; i++)
            for (size_t k = 0; k < tp[i].n && zero; k++)
                zero = mm[i][k] == 0 && vv[i][k] == 0;
        CHECK(zero, "%s: the optimizer starts at zero (t %d)", adapter, o.t);
        for (int i = 0; i < np; i++) {
            free(mm[i]);
            free(vv[i]);
            free(host[i]);
        }
        free(mm);
        free(vv);
        free(host);
        optim_free(&o);
    }
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

static void test_library_start(void) {
    char p[400];
    snprintf(p, sizeof p, "%s/lora1", tmpdir);
    check_start("models/stories260K", p, 5 * 2 * 2); /* 5 layers x q,v x A,B */
    snprintf(p, sizeof p, "%s/prefix1", tmpdir);
    check_start("models/stories260K", p, 1);
    /* saved by peft 0.21 (tests/fixtures/train/README.md): 2 layers x 7 modules x A,B */
    check_start("tests/fixtures/llama", "tests/fixtures/train/llama_lora_adapter", 28);
}

/* status 1 and one line on stderr holding every needle */
static void refuse(const char *label, const char *args, const char *n1, const char *n2) {
    char full[1200], msg[1024];
    snprintf(full, sizeof full, "%s --max-steps 1 --output %s/refused", args, tmpdir);
    int st = train(full, msg, sizeof msg);
    size_t len = strlen(msg);
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += msg[i] == '\n';
    CHECK(st == 1 && lines == 1 && strstr(msg, n1) && (!n2 || strstr(msg, n2)),
          "%s: want status 1 and one line naming \"%s\"%s%s, got %d: %s", label, n1,
          n2 ? " and " : "", n2 ? n2 : "", st, msg);
    char path[400];
    snprintf(path, sizeof path, "%s/refused", tmpdir);
    struct stat sb;
    CHECK(stat(path, &sb) != 0, "%s: the run folder must not be created", label);
}

static void test_refusals(void) {
    char a[1200], lora1[400], prefix1[400];
    snprintf(lora1, sizeof lora1, "%s/lora1", tmpdir);
    snprintf(prefix1, sizeof prefix1, "%s/prefix1", tmpdir);
    snprintf(a, sizeof a, "--adapter %s/nope", tmpdir);
    refuse("missing folder", a, "--adapter", "no such folder");
    refuse("a model, not an adapter", "--adapter models/stories260K", "no adapter_config.json",
           "--model");
    refuse("another base model", "--adapter tests/fixtures/train/llama_lora_adapter",
           "does not fit --model models/stories260K", "another base model");
    /* a DoRA config (use_dora) over a plain LoRA file: its magnitude vectors are missing */
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/dora && sed 's/\"use_dora\": false/\"use_dora\": true/' "
             "tests/fixtures/train/llama_lora_adapter/adapter_config.json > "
             "%s/dora/adapter_config.json && cp "
             "tests/fixtures/train/llama_lora_adapter/adapter_model.safetensors %s/dora/",
             tmpdir, tmpdir, tmpdir);
    CHECK(system(cmd) == 0, "%s", cmd);
    snprintf(a, sizeof a, "--adapter %s/dora", tmpdir);
    refuse("DoRA adapter", a, "lora_magnitude_vector\" is missing", "needs [64]");
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/mts && sed 's/\"modules_to_save\": null/\"modules_to_save\": "
             "[\"lm_head\"]/' tests/fixtures/train/llama_lora_adapter/adapter_config.json > "
             "%s/mts/adapter_config.json && cp "
             "tests/fixtures/train/llama_lora_adapter/adapter_model.safetensors %s/mts/",
             tmpdir, tmpdir, tmpdir);
    CHECK(system(cmd) == 0, "%s", cmd);
    snprintf(a, sizeof a, "--adapter %s/mts", tmpdir);
    refuse("modules_to_save", a, "adapter_config.json", "\"modules_to_save\" is not supported");
    snprintf(a, sizeof a, "--adapter %s --lora-rank 16", lora1);
    refuse("conflicting rank", a, "--lora-rank 16", "(r 4)");
    snprintf(a, sizeof a, "--adapter %s --lora-alpha 32", lora1);
    refuse("conflicting alpha", a, "--lora-alpha 32", "lora_alpha 8");
    snprintf(a, sizeof a, "--adapter %s --lora-target k_proj", lora1);
    refuse("conflicting targets", a, "--lora-target k_proj", "q_proj,v_proj");
    snprintf(a, sizeof a, "--adapter %s --method full", lora1);
    refuse("conflicting method", a, "--method full", "lora adapter");
    snprintf(a, sizeof a, "--adapter %s --prefix-tokens 8", prefix1);
    refuse("conflicting prefix tokens", a, "--prefix-tokens 8", "4 virtual tokens");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tuna_test_adapter_%d", (int)getpid());
    mkdir(tmpdir, 0755);
    test_continue_lora();
    test_continue_prefix();
    test_library_start();
    test_refusals();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (!test_failed) (void)!system(cmd);
    return test_report("test_train_adapter");
}
