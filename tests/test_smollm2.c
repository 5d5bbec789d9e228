/* test_smollm2.c: the real chat model SmolLM2-135M-Instruct (GGUF Q4_1, ../shared) against
 * transformers' own GGUF loader (tests/gen_smollm2_fixtures.py, fp32 dequantized weights):
 *   - logits of 3 prompts (chat, prose, code): the last position in full and every position at
 *     every 32nd id, max |delta| <= 1e-3;
 *   - greedy replies (64 new tokens at most, stopping at EOS) to 8 chat prompts: identical ids;
 *   - where the model's tokenizer and the smollm template load: each chat prompt's ids as
 *     transformers' apply_chat_template makes them.
 * Skips with a message where ../shared is absent. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/generate.h"
#include "src/model.h"
#include "src/safetensors.h"
#include "src/template.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"

#define LOGIT_ATOL 1e-3 /* the bound */
#define FIXTURES   "tests/fixtures/smollm2"

static int32_t *ids_of(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *v = xcalloc((size_t)*n + 1, sizeof *v);
    for (int i = 0; i < *n; i++)
        v[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return v;
}

static void check_logits(Model *m, const cJSON *ref, const SafeTensors *lg) {
    TunaErr err = {0};
    int V = m->cfg.V, stride = (int)cJSON_GetObjectItem(ref, "logit_stride")->valuedouble;
    const cJSON *p;
    int k = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(ref, "logit_prompts")) {
        int T;
        int32_t *ids = ids_of(cJSON_GetObjectItem(p, "ids"), &T);
        char nm[32];
        snprintf(nm, sizeof nm, "last_%d", k);
        const StTensor *last = safetensors_find(lg, nm);
        snprintf(nm, sizeof nm, "sub_%d", k);
        const StTensor *sub = safetensors_find(lg, nm);
        int W = (V + stride - 1) / stride;
        CHECK(last && sub && last->dtype == ST_F32 && sub->dtype == ST_F32 &&
                      st_tensor_numel(last) == (size_t)V && st_tensor_numel(sub) == (size_t)T * W,
              "%s/logits.safetensors: prompt %d's tensors are missing or misshapen", FIXTURES, k);
        float *got = xmalloc(sizeof(float) * (size_t)T * V);
        model_reset(m);
        int rc = model_forward(m, ids, T, got, 1, &err);
        CHECK(rc == 0, "forward: %s", err.msg);
        if (rc == 0 && last && sub) {
            const float *want_last = last->data, *want_sub = sub->data;
            double d_last = test_max_abs_diff(got + (size_t)(T - 1) * V, want_last, (size_t)V);
            double d_sub = 0;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < W; j++) {
                    double d = (double)got[(size_t)t * V + (size_t)j * stride] -
                               (double)want_sub[(size_t)t * W + j];
                    if (d < 0) d = -d;
                    if (d > d_sub || d != d) d_sub = d;
                }
            printf("  logits prompt %d (%d tokens): max |dlogit| last position %.2e, all "
                   "positions %.2e\n",
                   k, T, d_last, d_sub);
            CHECK(d_last <= LOGIT_ATOL && d_sub <= LOGIT_ATOL,
                  "prompt %d: max |dlogit| %.3g / %.3g > %g", k, d_last, d_sub, LOGIT_ATOL);
        }
        free(got);
        free(ids);
        k++;
    }
    CHECK(k == 3, "%s/reference.json: expected 3 logits prompts, found %d", FIXTURES, k);
}

/* Greedy decoding as transformers' generate: argmax (first of ties), stop after EOS. */
static void check_greedy(Model *m, const cJSON *ref, const Tokenizer *tok, const Template *tpl) {
    TunaErr err = {0};
    int V = m->cfg.V, k = 0, same_replies = 0, same_prompts = 0;
    float *logits = xmalloc(sizeof(float) * (size_t)V);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(ref, "chats")) {
        int np, nr;
        int32_t *prompt = ids_of(cJSON_GetObjectItem(c, "prompt_ids"), &np);
        int32_t *want = ids_of(cJSON_GetObjectItem(c, "reply_ids"), &nr);
        int32_t got[64];
        int ng = 0;
        model_reset(m);
        int rc = model_forward(m, prompt, np, logits, 0, &err);
        while (!rc && ng < 64) {
            got[ng] = argmax_first(logits, V);
            if (got[ng++] == 2) break; /* <|im_end|>, the model's EOS */
            rc = model_forward(m, &got[ng - 1], 1, logits, 0, &err);
        }
        CHECK(rc == 0, "chat %d: %s", k, err.msg);
        int same = ng == nr && !memcmp(got, want, sizeof(int32_t) * (size_t)nr);
        same_replies += same;
        CHECK(same, "chat %d: greedy reply differs from transformers' (%d vs %d tokens)", k, ng,
              nr);
        if (tok && tpl) {
            const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *mj;
            ChatMessage cm[8];
            int n = 0;
            cJSON_ArrayForEach(mj, msgs) if (n < 8) {
                cm[n].role = cJSON_GetObjectItem(mj, "role")->valuestring;
                cm[n].content = cJSON_GetObjectItem(mj, "content")->valuestring;
                n++;
            }
            int32_t *ids = NULL;
            size_t nids = 0;
            rc = template_encode_prompt(tpl, tok, cm, n, &ids, &nids, &err);
            int ok = rc == 0 && nids == (size_t)np && !memcmp(ids, prompt, sizeof *ids * nids);
            same_prompts += ok;
            CHECK(ok, "chat %d: the smollm template's prompt ids differ from apply_chat_template's",
                  k);
            free(ids);
        }
        free(prompt);
        free(want);
        k++;
    }
    printf("  greedy replies identical to transformers': %d of %d", same_replies, k);
    if (tok && tpl) printf("; prompt ids identical: %d of %d", same_prompts, k);
    printf("\n");
    CHECK(k == 8, "%s/reference.json: expected 8 chats, found %d", FIXTURES, k);
    free(logits);
}

/* `tuna chat MODEL --message ...` with the default template (auto: smollm) and greedy decoding
 * prints transformers' reply to the first chat prompt. */
static void check_cli(const char *model_dir, const cJSON *ref) {
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "chats"), 0);
    const cJSON *msg = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "messages"), 0);
    const char *want = cJSON_GetObjectItem(c, "reply")->valuestring;
    const char *bin = getenv("TUNA_BIN") ? getenv("TUNA_BIN") : "./tuna";
    char cmd[2048], out[4096] = "";
    snprintf(cmd, sizeof cmd,
             "%s chat %s --message \"%s\" --temperature 0 --threads 1 --plain 2>/dev/null", bin,
             model_dir, cJSON_GetObjectItem(msg, "content")->valuestring);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = '\0';
    int st = p ? pclose(p) : -1;
    while (n && (out[n - 1] == '\n' || out[n - 1] == ' '))
        out[--n] = '\0';
    CHECK(st == 0 && !strcmp(out, want), "%s: \"%s\", transformers: \"%s\"", cmd, out, want);
    printf("  tuna chat (template auto): \"%s\"\n", out);
}

int main(void) {
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("../shared is absent: the SmolLM2 parity tests need "
             "../shared/models/smollm2-135m-instruct");
        return test_report("test_smollm2");
    }
    char model_dir[512];
    snprintf(model_dir, sizeof model_dir, "%s/models/smollm2-135m-instruct", shared);
    TunaErr err = {0};
    size_t len;
    char *text = xread_file(FIXTURES "/reference.json", &len);
    cJSON *ref = text ? cJSON_Parse(text) : NULL;
    free(text);
    SafeTensors *lg = NULL;
    CHECK(ref != NULL, "%s/reference.json: cannot read or parse (run from the repo root)",
          FIXTURES);
    CHECK(safetensors_open(FIXTURES "/logits.safetensors", &lg, &err) == 0, "%s", err.msg);
    Backend *be = backend_init("cpu", 1, &err);
    Model *m = NULL;
    CHECK(be != NULL, "%s", err.msg);
    if (!ref || !lg || !be) goto done;
    Tokenizer *tok = NULL;
    Template *tpl = NULL;
    int tok_rc = tokenizer_load(model_dir, &tok, &err);
    CHECK(tok_rc == 0, "the GGUF tokenizer does not load: %s", err.msg);
    if (!tok_rc) {
        int tpl_rc = template_load("templates", "smollm", &tpl, &err);
        CHECK(tpl_rc == 0, "the smollm template does not load: %s", err.msg);
    }
    /* twice: dequantized to fp32 (model_load), and as inference loads it, the linear weights
     * kept Q4_1 as stored (model_load_frozen): the same bounds and the same greedy ids */
    for (int typed = 0; typed < 2; typed++) {
        ModelLoadOptions lo = model_load_frozen(1 << 30, 0);
        double t0 = time_now();
        if (model_load_opts(model_dir, be, typed ? &lo : NULL, &m, &err)) {
            CHECK(0, "%s: %s", model_dir, err.msg);
            goto done;
        }
        printf("  %s loaded %s in %.2f s: %s, %d layers, hidden %d, vocab %d, rope_theta %g; "
               "%zu weights typed (%.1f MiB), %zu fp32\n",
               model_dir, typed ? "as stored" : "in fp32", time_now() - t0,
               config_arch_name(m->cfg.arch), m->cfg.L, m->cfg.C, m->cfg.V,
               (double)m->cfg.rope_theta, m->n_qparams, (double)m->n_qbytes / (1 << 20),
               m->n_params);
        if (typed) CHECK(m->n_qparams > 0, "the stored-type load kept nothing typed");
        CHECK(model_reserve(m, 256, 64, &err) == 0, "%s", err.msg);
        check_logits(m, ref, lg);
        check_greedy(m, ref, tok, tpl);
        model_free(m);
        m = NULL;
    }
    check_cli(model_dir, ref);
    template_free(tpl);
    tokenizer_free(tok);
done:
    model_free(m);
    backend_free(be);
    safetensors_free(lg);
    cJSON_Delete(ref);
    return test_report("test_smollm2");
}
