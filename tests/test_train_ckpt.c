/* test_train_ckpt.c: gradient checkpointing changes memory, not results.
 * For tiny models of each architecture (the fixtures, and stories260K for more layers and an
 * FF that is no multiple of 16) and the methods full, freeze, LoRA with dropout (and with
 * trainable tokens), P-tuning v2 and eval (no method), two accumulated micro-batches (the
 * second one short) give the same loss and every gradient bit for bit with and without
 * checkpointing (memcmp: the recompute runs the same ops on the same inputs), and the
 * checkpointed state keeps exactly the activations of L-1 layers fewer, minus their inputs.
 * Then `tuna train --gradient-checkpointing` writes the same metrics.jsonl numbers as the
 * run without. */
#include <stdint.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/xalloc.h"

#define B_ALLOC 3 /* rows the state is sized for */
#define T_LEN   7

/* As model_train.c lays out activations: every buffer starts on 16 floats. */
static size_t pad16(size_t n) {
    return (n + 15) & ~(size_t)15;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Bytes checkpointing should save: L-1 layers' activations without their input, and, for
 * LoRA, the dropped-out inputs and h·Aᵀ of the adapters in those layers. */
static size_t expected_saving(const Model *m, const TrainSetup *s, const TrainParam *tp, int np) {
    const ModelConfig *c = &m->cfg;
    size_t N = (size_t)B_ALLOC * T_LEN, C = (size_t)c->C, QD = (size_t)c->NH * c->HS,
           KD = (size_t)c->KVH * c->HS, FF = (size_t)c->FF;
    size_t P = s->method == METHOD_PTUNING ? (size_t)s->prefix_tokens : 0;
    size_t kvn = (size_t)B_ALLOC * (T_LEN + P) * KD;
    size_t layer = pad16(N * C) * 3 + pad16(N * QD) * 2 + pad16(kvn) * 2 + pad16(N * FF) * 3 +
                   (c->qk_norm ? pad16(N * QD) + pad16(N * KD) : 0);
    size_t lora = 0;
    for (int i = 0; i < np; i++)
        if (strstr(tp[i].name, "lora_A")) /* (r, in) */
            lora += N * (size_t)tp[i].shape[0] +
                    (s->lora_dropout > 0 ? N * (size_t)tp[i].shape[1] : 0);
    return sizeof(float) * (layer * (size_t)(c->L - 1) + lora / (size_t)c->L * (size_t)(c->L - 1));
}

typedef struct Result {
    double loss[2];
    int cnt[2];
    size_t act_bytes;
    int np;
    float **grad; /* (np) host copies */
    size_t *n;
} Result;

static void result_free(Result *r) {
    for (int i = 0; i < r->np; i++)
        free(r->grad[i]);
    free(r->grad);
    free(r->n);
    memset(r, 0, sizeof *r);
}

/* Two micro-batches (3 rows, then 2) through a fresh state; the adapter or prefix parameters
 * are set to seeded random values so that every path carries signal. */
static int run_once(Model *m, TrainSetup setup, int ckpt, const int32_t *ids, const int32_t *tg,
                    Result *r, const char *what) {
    TunaErr err = {0};
    TrainState *ts = NULL;
    setup.grad_checkpoint = ckpt;
    memset(r, 0, sizeof *r);
    if (train_state_init(m, &setup, B_ALLOC, T_LEN, &ts, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return -1;
    }
    Backend *be = m->be;
    int np;
    const TrainParam *tp = train_params(ts, &np);
    if (setup.method == METHOD_LORA || setup.method == METHOD_PTUNING) {
        uint64_t s = 0x9E3779B97F4A7C15ULL;
        for (int i = 0; i < np; i++) {
            float *h = xmalloc(sizeof(float) * tp[i].n);
            for (size_t j = 0; j < tp[i].n; j++)
                h[j] = ((float)(rng_next(&s) >> 40) / 16777216.0f - 0.5f) * 0.2f;
            be->ops->upload(be, tp[i].data, h, sizeof(float) * tp[i].n);
            free(h);
        }
    }
    train_set_step_seed(ts, 7);
    int backward = setup.method != METHOD_NONE, rc = 0;
    const int rows[2] = {B_ALLOC, 2};
    const size_t off[2] = {0, (size_t)B_ALLOC * T_LEN};
    for (int k = 0; k < 2 && !rc; k++) {
        rc = train_step_fb(ts, ids + off[k], tg + off[k], rows[k], 0.05f, backward, &r->loss[k],
                           &r->cnt[k], &err);
        CHECK(rc == 0, "%s: %s", what, err.msg);
    }
    r->act_bytes = train_activation_bytes(ts);
    r->np = np;
    r->grad = xcalloc((size_t)np + 1, sizeof *r->grad);
    r->n = xcalloc((size_t)np + 1, sizeof *r->n);
    for (int i = 0; i < np; i++) {
        r->n[i] = tp[i].n;
        r->grad[i] = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, r->grad[i], tp[i].grad, sizeof(float) * tp[i].n);
    }
    if (ckpt) {
        size_t want = expected_saving(m, &setup, tp, np);
        TrainSetup plain = setup;
        plain.grad_checkpoint = 0;
        TrainState *t2 = NULL;
        if (train_state_init(m, &plain, B_ALLOC, T_LEN, &t2, &err) == 0) {
            size_t full = train_activation_bytes(t2);
            CHECK(full - r->act_bytes == want && r->act_bytes < full,
                  "%s: activations %zu -> %zu bytes, expected a saving of %zu", what, full,
                  r->act_bytes, want);
            printf("  %-28s activations %8zu -> %8zu bytes\n", what, full, r->act_bytes);
        }
        train_state_free(t2);
    }
    train_state_free(ts);
    return rc;
}

static void run_case(const char *model_dir, const char *name, TrainSetup setup) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    Model *m = NULL;
    if (!be || model_load(model_dir, be, &m, &err)) {
        CHECK(0, "%s: %s", model_dir, err.msg);
        backend_free(be);
        return;
    }
    char what[128];
    snprintf(what, sizeof what, "%s %s", strrchr(model_dir, '/') + 1, name);
    /* 5 rows of ids: the first micro-batch takes 3, the second 2; targets -100 here and there */
    size_t n = (size_t)(B_ALLOC + 2) * T_LEN;
    int32_t *ids = xmalloc(sizeof(int32_t) * n), *tg = xmalloc(sizeof(int32_t) * n);
    uint64_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)(rng_next(&s) % (uint64_t)m->cfg.V);
        tg[i] = i % 5 == 1 ? -100 : (int32_t)(rng_next(&s) % (uint64_t)m->cfg.V);
    }
    Result a, b;
    if (run_once(m, setup, 0, ids, tg, &a, what) == 0 &&
        run_once(m, setup, 1, ids, tg, &b, what) == 0) {
        for (int k = 0; k < 2; k++)
            CHECK(a.loss[k] == b.loss[k] && a.cnt[k] == b.cnt[k],
                  "%s: micro-batch %d loss %.17g (%d) vs checkpointed %.17g (%d)", what, k,
                  a.loss[k], a.cnt[k], b.loss[k], b.cnt[k]);
        CHECK(a.np == b.np, "%s: %d vs %d trainable tensors", what, a.np, b.np);
        int same = 0;
        for (int i = 0; i < a.np && i < b.np; i++) {
            int eq = a.n[i] == b.n[i] && !memcmp(a.grad[i], b.grad[i], sizeof(float) * a.n[i]);
            CHECK(eq, "%s: gradient %d differs (max |d| %.3g)", what, i,
                  a.n[i] == b.n[i] ? test_max_abs_diff(a.grad[i], b.grad[i], a.n[i]) : -1.0);
            same += eq;
        }
        printf("  %-28s loss %.6f, %d/%d gradients bit-identical\n", what,
               (a.loss[0] + a.loss[1]) / (a.cnt[0] + a.cnt[1]), same, a.np);
    }
    result_free(&a);
    result_free(&b);
    free(ids);
    free(tg);
    model_free(m);
    backend_free(be);
}

// --- the CLI: the same run with and without --gradient-checkpointing

/* metrics.jsonl of dir with the fields that hold wall-clock time and the config removed, one
 * compact JSON line per event (caller frees); NULL when missing. "log" events are left out:
 * they report the machine (e.g. "threads 2 -> 1" when other processes got busy), not the
 * numbers this test compares, and made it fail on a loaded CI machine. */
static char *metrics_numbers(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%.500s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL);
    if (!text) return NULL;
    size_t cap = strlen(text) + 1, len = 0;
    char *out = xmalloc(cap), *save = NULL;
    out[0] = 0;
    static const char *drop[] = {"config",  "run", "tokens_per_s", "real_tok_s",
                                 "elapsed", "eta", "time",         "seconds"};
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const cJSON *ty = cJSON_GetObjectItem(j, "type");
        if (!j || (cJSON_IsString(ty) && !strcmp(ty->valuestring, "log"))) {
            cJSON_Delete(j);
            continue;
        }
        for (size_t k = 0; k < sizeof drop / sizeof drop[0]; k++)
            cJSON_DeleteItemFromObject(j, drop[k]);
        char *s = cJSON_PrintUnformatted(j);
        if (s && len + strlen(s) + 2 <= cap) {
            len += (size_t)snprintf(out + len, cap - len, "%s\n", s);
        }
        free(s);
        cJSON_Delete(j);
    }
    free(text);
    return out;
}

static void test_cli(void) {
    const char *bin = getenv("TUNA_BIN") && *getenv("TUNA_BIN") ? getenv("TUNA_BIN") : "./tuna";
    char tmpl[] = "/tmp/tuna_ckpt_XXXXXX", cmd[2048];
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return;
    char *got[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd,
                 "%s train --model models/stories260K --dataset identity --dataset-dir datasets "
                 "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --quiet "
                 "--method lora --lora-target all --lora-dropout 0.1 --max-steps 4 --eval-steps 2 "
                 "--save-steps 0 --sample-max-tokens 8 --output %s/run%d %s 2>/dev/null",
                 bin, tmp, k, k ? "--gradient-checkpointing" : "");
        int st = system(cmd);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "tuna train run %d failed", k);
        char d[512];
        snprintf(d, sizeof d, "%s/run%d", tmp, k);
        got[k] = metrics_numbers(d);
    }
    CHECK(got[0] && got[1] && strstr(got[0], "\"type\":\"step\""), "metrics.jsonl missing");
    if (got[0] && got[1]) {
        int same = !strcmp(got[0], got[1]);
        CHECK(same, "metrics differ:\n%s\nvs checkpointed:\n%s", got[0], got[1]);
        int steps = 0;
        for (const char *p = got[0]; (p = strstr(p, "\"type\":\"step\"")); p++)
            steps++;
        printf("  tuna train --gradient-checkpointing: %d step lines, losses, grad norms, evals "
               "and "
               "samples %s\n",
               steps, same ? "identical" : "DIFFER");
    }
    free(got[0]);
    free(got[1]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
}

int main(void) {
    const char *archs[] = {"llama", "llama_tied", "mistral", "qwen2", "qwen3", "gpt2"};
    TrainSetup full = {.method = METHOD_FULL, .seed = 1};
    TrainSetup freeze = {.method = METHOD_FREEZE, .freeze_layers = 1, .seed = 1};
    TrainSetup lora = {.method = METHOD_LORA,
                       .lora_rank = 4,
                       .lora_alpha = 8,
                       .lora_dropout = 0.25f,
                       .lora_targets = "all",
                       .seed = 1};
    TrainSetup lora_q = {.method = METHOD_LORA, .lora_rank = 2, .lora_alpha = 4, .seed = 2};
    TrainSetup prefix = {.method = METHOD_PTUNING, .prefix_tokens = 3, .seed = 1};
    TrainSetup prefix_mlp = {.method = METHOD_PTUNING,
                             .prefix_tokens = 2,
                             .prefix_projection = 1,
                             .prefix_hidden = 8,
                             .seed = 1};
    TrainSetup none = {.method = METHOD_NONE};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        char dir[128];
        snprintf(dir, sizeof dir, "tests/fixtures/%s", archs[i]);
        run_case(dir, "full", full);
        run_case(dir, "freeze", freeze);
        run_case(dir, "lora dropout", lora);
        run_case(dir, "prefix", prefix);
    }
    run_case("tests/fixtures/llama", "lora default targets", lora_q);
    TrainSetup lora_tok = lora;
    lora_tok.lora_tokens = "3,17";
    run_case("tests/fixtures/llama_tied", "lora + tokens", lora_tok);
    run_case("tests/fixtures/qwen2", "prefix mlp", prefix_mlp);
    run_case("tests/fixtures/llama", "eval", none);
    const char *big = "models/stories260K";
    run_case(big, "full", full);
    freeze.freeze_layers = 3;
    run_case(big, "freeze", freeze);
    run_case(big, "lora dropout", lora);
    run_case(big, "prefix", prefix);
    test_cli();
    return test_report("test_train_ckpt");
}
