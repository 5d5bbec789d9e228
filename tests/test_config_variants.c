/* test_config_variants: config.json as transformers 4.x and 5.x write it, read right or refused.
 *
 * tests/fixtures/config_variants/ (made by tests/gen_config_fixtures.py) holds one NAME.json
 * per variant and cases.txt, one line each:
 *   NAME ok ROPE THETA FACTOR LOW HIGH ORIG HS QKV_BIAS O_BIAS MLP_BIAS WINDOW TIE MAXPOS EOS
 *   NAME refuse KEY
 * The "ok" fields are what transformers itself builds from the file (its config class and the
 * modules of the model built from it); a "refuse" variant must fail with one line that names
 * the file and KEY. Then every config.json of the repo's model fixtures must still load. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "src/config.h"
#include "src/xalloc.h"

#define DIR "tests/fixtures/config_variants"

static const char *rope_name(RopeType t) {
    switch (t) {
    case ROPE_NONE: return "none";
    case ROPE_DEFAULT: return "default";
    case ROPE_LINEAR: return "linear";
    case ROPE_LLAMA3: return "llama3";
    }
    return "?";
}

static int n_ok, n_refused, n_cases;

static void check_ok(const char *name, const ModelConfig *c, const char *rest) {
    char rope[16];
    double theta, factor, low, high;
    int orig, hs, qkv, ob, mb, win, tie, maxpos, eos;
    if (sscanf(rest, "%15s %lf %lf %lf %lf %d %d %d %d %d %d %d %d %d", rope, &theta, &factor, &low,
               &high, &orig, &hs, &qkv, &ob, &mb, &win, &tie, &maxpos, &eos) != 14) {
        CHECK(0, "%s: bad cases.txt line: %s", name, rest);
        return;
    }
    int eos0 = c->n_eos ? c->eos_ids[0] : -1;
    int good = !strcmp(rope, rope_name(c->rope_type)) && c->HS == hs && c->qkv_bias == qkv &&
               c->o_bias == ob && c->mlp_bias == mb && c->sliding_window == win &&
               c->tie_embeddings == tie && c->max_pos == maxpos && eos0 == eos;
    if (c->rope_type != ROPE_NONE) good = good && c->rope_theta == (float)theta;
    if (c->rope_type == ROPE_LINEAR || c->rope_type == ROPE_LLAMA3)
        good = good && c->rope_factor == (float)factor;
    if (c->rope_type == ROPE_LLAMA3)
        good = good && c->rope_low_freq_factor == (float)low &&
               c->rope_high_freq_factor == (float)high && c->rope_orig_max_pos == orig;
    CHECK(good,
          "%s: tuna read rope %s theta %g factor %g low %g high %g orig %d hs %d bias %d/%d/%d "
          "window %d tie %d max_pos %d eos %d; transformers: %s",
          name, rope_name(c->rope_type), (double)c->rope_theta, (double)c->rope_factor,
          (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor, c->rope_orig_max_pos,
          c->HS, c->qkv_bias, c->o_bias, c->mlp_bias, c->sliding_window, c->tie_embeddings,
          c->max_pos, eos0, rest);
    n_ok += good;
}

static void run_case(const char *line) {
    char name[96], kind[16];
    int off = 0;
    if (sscanf(line, "%95s %15s %n", name, kind, &off) != 2) return;
    char path[256];
    snprintf(path, sizeof path, "%s/%s.json", DIR, name);
    size_t len;
    char *text = xread_file(path, &len);
    CHECK(text != NULL, "cannot read %s", path);
    if (!text) return;
    n_cases++;
    ModelConfig cfg;
    TunaErr err = {0};
    int rc = config_parse(text, path, &cfg, &err);
    free(text);
    if (!strcmp(kind, "ok")) {
        CHECK(rc == 0, "%s must load: %s", name, err.msg);
        if (rc == 0) check_ok(name, &cfg, line + off);
        return;
    }
    char key[64] = "";
    sscanf(line + off, "%63s", key);
    /* the file, then the key after it (a key in the file name does not count) */
    const char *at = strstr(err.msg, path);
    int good = rc != 0 && !strchr(err.msg, '\n') && at && strstr(at + strlen(path), key);
    CHECK(good, "%s must be refused in one line naming %s and \"%s\": rc %d, \"%s\"", name, path,
          key, rc, err.msg);
    if (good) {
        n_refused++;
        if (getenv("TUNA_TEST_VERBOSE")) printf("  %s -> %s\n", name, err.msg);
    }
}

static void test_variants(void) {
    size_t len;
    char *cases = xread_file(DIR "/cases.txt", &len);
    CHECK(cases != NULL, "cannot read %s/cases.txt", DIR);
    if (!cases) return;
    for (char *save = NULL, *line = strtok_r(cases, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save))
        if (line[0] != '#') run_case(line);
    free(cases);
    CHECK(n_cases >= 60, "only %d variants", n_cases);
    printf("config variants: %d cases, %d loaded as transformers reads them, %d refused in one "
           "line\n",
           n_cases, n_ok, n_refused);
}

/* The model fixtures (written by transformers 5.23 with rope_parameters, rope_scaling and
 * rope_theta all present) and the bundled model keep loading. */
static void test_repo_models(void) {
    const char *dirs[] = {"models/stories260K",     "tests/fixtures/llama",
                          "tests/fixtures/llama3",  "tests/fixtures/llama_tied",
                          "tests/fixtures/mistral", "tests/fixtures/qwen2",
                          "tests/fixtures/qwen3",   "tests/fixtures/gpt2"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        ModelConfig cfg;
        TunaErr err = {0};
        CHECK(config_load(dirs[i], &cfg, &err) == 0, "%s: %s", dirs[i], err.msg);
    }
    ModelConfig cfg;
    TunaErr err = {0};
    if (config_load("tests/fixtures/llama3", &cfg, &err) == 0)
        CHECK(cfg.rope_type == ROPE_LLAMA3 && cfg.rope_theta == 500000.0f &&
                      cfg.rope_orig_max_pos == 64 && cfg.rope_factor == 8.0f,
              "llama3 fixture: rope %d theta %g", cfg.rope_type, (double)cfg.rope_theta);
    if (config_load("tests/fixtures/qwen2", &cfg, &err) == 0)
        CHECK(cfg.rope_theta == 1e6f && cfg.qkv_bias && !cfg.o_bias && !cfg.sliding_window,
              "qwen2 fixture");
    if (config_load("tests/fixtures/mistral", &cfg, &err) == 0)
        CHECK(cfg.sliding_window == 4096, "mistral fixture window %d", cfg.sliding_window);
    /* the model's own dropouts, which training says it goes without: GPT-2's three, and none
     * where attention_dropout is 0 */
    if (config_load("tests/fixtures/gpt2", &cfg, &err) == 0)
        CHECK(!strcmp(cfg.dropout_keys, "resid_pdrop 0.1, embd_pdrop 0.1, attn_pdrop 0.1"),
              "gpt2 fixture dropouts: \"%s\"", cfg.dropout_keys);
    if (config_load("tests/fixtures/qwen2", &cfg, &err) == 0)
        CHECK(!cfg.dropout_keys[0], "qwen2 fixture dropouts: \"%s\"", cfg.dropout_keys);
    ModelConfig d;
    CHECK(config_parse("{\"model_type\": \"llama\", \"vocab_size\": 32, \"hidden_size\": 16, "
                       "\"intermediate_size\": 32, \"num_hidden_layers\": 1, "
                       "\"num_attention_heads\": 2, \"attention_dropout\": 0.05}",
                       "t.json", &d, &err) == 0 &&
                  !strcmp(d.dropout_keys, "attention_dropout 0.05"),
          "attention_dropout 0.05: \"%s\" %s", d.dropout_keys, err.msg);
}

int main(void) {
    test_variants();
    test_repo_models();
    return test_report("test_config_variants");
}
