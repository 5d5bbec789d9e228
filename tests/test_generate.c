/* test_generate.c: `tuna generate` end to end on the bundled stories260K.
 * - The four greedy cases of llama2.c's run.c (tests/fixtures/stories260K_reference_greedy.json,
 *   copied from ../shared/models/stories260K): identical ids and text, stopping where run.c
 *   stops (before a sampled BOS: this model's generation_config has eos [2, 1]).
 * - Sampling is reproducible for a seed and differs across seeds; stop strings cut the text;
 *   bad options fail with one line on stderr. Runs ./tuna from the repo root.
 * - generate_batch: several prompts decoded together give each the ids, text and stop reason
 *   of generate_run alone (stories260K with and without a prefix, GPT-2, Qwen3, Mistral). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/generate.h"
#include "src/model.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"

#define MODEL "models/stories260K"

/* The binary under test: $TUNA_BIN (make test-san sets the sanitizer build), else ./tuna. */
static const char *tuna_bin(void) {
    const char *b = getenv("TUNA_BIN");
    return b && *b ? b : "./tuna";
}

/* The ids and text fields of a --json output, without the timing (which varies run to run). */
static char *ids_text(const char *json) {
    cJSON *j = cJSON_Parse(json ? json : "");
    if (!j) return xstrdup("(unparsable)");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "ids", cJSON_Duplicate(cJSON_GetObjectItem(j, "ids"), 1));
    cJSON_AddItemToObject(o, "text", cJSON_Duplicate(cJSON_GetObjectItem(j, "text"), 1));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    cJSON_Delete(j);
    return s;
}

/* Runs cmd, returns its stdout (malloc'd) and exit status; stderr goes to /tmp file err_path. */
static char *run(const char *cmd0, int *status) {
    /* every command starts with "./tuna": substitute the binary under test */
    char cmd[16384];
    if (!strncmp(cmd0, "./tuna", 6))
        snprintf(cmd, sizeof cmd, "%s%s", tuna_bin(), cmd0 + 6);
    else
        snprintf(cmd, sizeof cmd, "%s", cmd0);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 >= cap) buf = xrealloc(buf, cap *= 2);
    }
    buf[n] = '\0';
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return buf;
}

/* Shell-quotes s into a static buffer (single quotes). */
static const char *q(const char *s) {
    static char buf[4][4096];
    static int k;
    char *o = buf[k++ % 4];
    size_t j = 0;
    o[j++] = '\'';
    for (; *s && j < 4000; s++) {
        if (*s == '\'') {
            memcpy(o + j, "'\\''", 4);
            j += 4;
        } else
            o[j++] = *s;
    }
    o[j++] = '\'';
    o[j] = '\0';
    return o;
}

static void test_reference_greedy(void) {
    char *text = xread_file("tests/fixtures/stories260K_reference_greedy.json", NULL);
    CHECK(text != NULL, "missing tests/fixtures/stories260K_reference_greedy.json");
    if (!text) return;
    cJSON *root = cJSON_Parse(text);
    cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *prompt = cJSON_GetObjectItem(c, "prompt")->valuestring;
        int steps = cJSON_GetObjectItem(c, "steps")->valueint;
        cJSON *pids = cJSON_GetObjectItem(c, "prompt_ids"), *ids = cJSON_GetObjectItem(c, "ids");
        const char *want_text = cJSON_GetObjectItem(c, "text")->valuestring;
        int n_prompt = cJSON_GetArraySize(pids);
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "./tuna generate " MODEL " --prompt %s --max-new-tokens %d --temperature 0 --json "
                 "--quiet",
                 q(prompt), steps - n_prompt + 1);
        int st;
        char *out = run(cmd, &st);
        CHECK(st == 0, "generate exited %d for prompt \"%s\"", st, prompt);
        cJSON *got = cJSON_Parse(out ? out : "");
        CHECK(got != NULL, "unparsable output for \"%s\": %.200s", prompt, out ? out : "");
        if (got) {
            // the reference ids are the prompt (without BOS) then each generated id
            cJSON *gp = cJSON_GetObjectItem(got, "prompt_ids"),
                  *gi = cJSON_GetObjectItem(got, "ids");
            int same = cJSON_GetArraySize(gp) == n_prompt;
            for (int i = 0; same && i < n_prompt; i++)
                same = cJSON_GetArrayItem(gp, i)->valueint == cJSON_GetArrayItem(pids, i)->valueint;
            CHECK(same, "prompt ids differ for \"%s\"", prompt);
            int n_ref = cJSON_GetArraySize(ids), n_got = cJSON_GetArraySize(gi);
            int want_gen = n_ref - (n_prompt - 1);
            same = n_got == want_gen;
            int first_diff = -1;
            for (int i = 0; i < want_gen && i < n_got && first_diff < 0; i++)
                if (cJSON_GetArrayItem(gi, i)->valueint !=
                    cJSON_GetArrayItem(ids, i + n_prompt - 1)->valueint)
                    first_diff = i;
            CHECK(same && first_diff < 0,
                  "\"%s\": %d generated ids vs run.c's %d, first difference at %d", prompt, n_got,
                  want_gen, first_diff);
            // text: run.c prints the prompt and the continuation
            const char *gt = cJSON_GetObjectItem(got, "text")->valuestring;
            char *pt = NULL;
            {
                char c2[8192];
                snprintf(c2, sizeof c2,
                         "./tuna generate " MODEL
                         " --prompt %s --max-new-tokens %d --temperature 0 "
                         "--quiet",
                         q(prompt), steps - n_prompt + 1);
                int st2;
                pt = run(c2, &st2);
                size_t l = strlen(pt);
                if (l && pt[l - 1] == '\n') pt[l - 1] = '\0';
            }
            CHECK(!strcmp(pt, want_text),
                  "\"%s\": streamed text differs from run.c's:\n%s\n---\n%s", prompt, pt,
                  want_text);
            CHECK(strlen(gt) > 0, "\"%s\": empty JSON text", prompt);
            free(pt);
            cJSON_Delete(got);
        }
        free(out);
        n_cases++;
    }
    CHECK(n_cases == 4, "expected 4 reference cases, found %d", n_cases);
    cJSON_Delete(root);
    free(text);
}

static void test_sampling(void) {
    int st;
    const char *base = "./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 40 "
                       "--temperature 0.9 --top-p 0.9 --json --quiet";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --seed 7", base);
    char *out = run(cmd, &st), *a = ids_text(out);
    free(out);
    CHECK(st == 0, "sampled generate failed");
    out = run(cmd, &st);
    char *b = ids_text(out);
    free(out);
    CHECK(!strcmp(a, b), "same seed gave different outputs");
    snprintf(cmd, sizeof cmd, "%s --seed 8", base);
    out = run(cmd, &st);
    char *c = ids_text(out);
    free(out);
    CHECK(strcmp(a, c), "different seeds gave the same output");
    free(a);
    free(b);
    free(c);
    snprintf(cmd, sizeof cmd, "%s --seed 7 --top-k 1", base);
    a = run(cmd, &st);
    b = run("./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 40 "
            "--temperature 0 --json --quiet",
            &st);
    cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b);
    char *ia = cJSON_PrintUnformatted(cJSON_GetObjectItem(ja, "ids"));
    char *ib = cJSON_PrintUnformatted(cJSON_GetObjectItem(jb, "ids"));
    CHECK(!strcmp(ia, ib), "top-k 1 sampling should equal greedy: %s vs %s", ia, ib);
    free(ia);
    free(ib);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    free(a);
    free(b);
    // repetition penalty changes greedy output of a repetitive model
    out = run("./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 60 "
              "--temperature 0 --repetition-penalty 1.5 --json --quiet",
              &st);
    a = ids_text(out);
    free(out);
    out = run("./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 60 "
              "--temperature 0 --json --quiet",
              &st);
    b = ids_text(out);
    free(out);
    CHECK(st == 0 && strcmp(a, b), "repetition penalty had no effect");
    free(a);
    free(b);
}

/* argmax_first against the plain loop it replaces, on sizes around its 16-lane and 64-block
 * steps, with ties, NaNs (first, inside, all), infinities and signed zeros. */
static int argmax_loop(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void test_argmax(void) {
    static float x[1100];
    uint64_t r = 12345;
    int bad = 0, cases = 0;
    for (int n = 1; n <= 1100; n += n < 140 ? 1 : 37)
        for (int kind = 0; kind < 8; kind++) {
            for (int i = 0; i < n; i++) {
                r = r * 6364136223846793005ULL + 1442695040888963407ULL;
                int v = (int)(r >> 58); /* 0..63: many ties */
                x[i] = kind == 1 ? (float)(v % 3) : (float)v - 40.0f;
            }
            if (kind == 2) x[0] = NAN;
            if (kind == 3) x[n / 2] = NAN, x[n - 1] = NAN;
            if (kind == 4)
                for (int i = 0; i < n; i++)
                    x[i] = NAN;
            if (kind == 5) x[n - 1] = INFINITY, x[n / 3] = INFINITY;
            if (kind == 6)
                for (int i = 0; i < n; i++)
                    x[i] = (i % 2) ? 0.0f : -0.0f;
            if (kind == 7)
                for (int i = 0; i < n; i++)
                    x[i] = -INFINITY;
            int a = argmax_first(x, n), b = argmax_loop(x, n);
            cases++;
            if (a != b && bad++ < 5)
                fprintf(stderr, "argmax n=%d kind=%d: %d, loop %d\n", n, kind, a, b);
        }
    CHECK(bad == 0, "argmax_first differs from the plain loop in %d of %d cases", bad, cases);
}

static void test_stop_strings(void) {
    int st;
    char *full = run("./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 100 "
                     "--temperature 0 --no-echo --quiet",
                     &st);
    CHECK(st == 0, "generate failed");
    // stop at the first occurrence of " the": the printed text must end right before it
    char *cut = run("./tuna generate " MODEL " --prompt 'Once upon a time' --max-new-tokens 100 "
                    "--temperature 0 --no-echo --quiet --stop ' the'",
                    &st);
    CHECK(st == 0, "generate --stop failed");
    const char *at = strstr(full, " the");
    CHECK(at != NULL, "expected \" the\" in the greedy continuation");
    if (at) {
        size_t n = (size_t)(at - full);
        size_t lc = strlen(cut);
        if (lc && cut[lc - 1] == '\n') cut[--lc] = '\0';
        CHECK(lc == n && !strncmp(cut, full, n), "stop string: got \"%s\", want \"%.*s\"", cut,
              (int)n, full);
    }
    free(full);
    free(cut);
}

/* The one stop set (stopset_init) of chat, eval, generate, the Chat screen and training samples,
 * on stories260K (EOS ids 2 and 1 in generation_config.json, "</s>" = 2). */
/* chat_prompt, the context policy of tuna chat and the TUI's Chat: the system prompt stays, the
 * oldest exchanges after it go until prompt + reply fit, the reply is clipped to the room left,
 * and a newest message that leaves no room is one line. */
static void test_chat_prompt(const Tokenizer *tok, const Template *chatml) {
    ChatMessage msgs[] = {{"system", "You are terse."},           {"user", "Once upon a time"},
                          {"assistant", "there was a cat"},       {"user", "and then"},
                          {"assistant", "it slept all day long"}, {"user", "The end?"}};
    int32_t *full = NULL, *want = NULL, *ids = NULL;
    size_t n_full = 0, n_want = 0, n = 0;
    TunaErr err = {0};
    ChatMessage later[] = {msgs[0], msgs[3], msgs[4], msgs[5]}, last[] = {msgs[0], msgs[5]};
    int dropped = -1, max_new = -1;
    if (template_encode_prompt(chatml, tok, msgs, 6, &full, &n_full, &err) ||
        template_encode_prompt(chatml, tok, later, 4, &want, &n_want, &err)) {
        CHECK(0, "chat_prompt setup: %s", err.msg);
        goto done;
    }
    /* room for everything: nothing left out, the reply as asked */
    CHECK(!chat_prompt(chatml, tok, msgs, 6, 1, (int)n_full + 10, 10, &ids, &n, &dropped, &max_new,
                       &err) &&
                  n == n_full && !memcmp(ids, full, n * sizeof *ids) && dropped == 0 &&
                  max_new == 10,
          "chat_prompt fits: %zu of %zu ids, dropped %d, max_new %d (%s)", n, n_full, dropped,
          max_new, err.msg);
    free(ids);
    /* one token short: the oldest exchange goes, the system prompt stays */
    CHECK(!chat_prompt(chatml, tok, msgs, 6, 1, (int)n_full + 9, 10, &ids, &n, &dropped, &max_new,
                       &err) &&
                  n == n_want && !memcmp(ids, want, n * sizeof *ids) && dropped == 2 &&
                  max_new == 10,
          "chat_prompt drops one exchange: %zu ids (want %zu), dropped %d (%s)", n, n_want, dropped,
          err.msg);
    free(ids);
    /* nothing left to drop but the newest message: the reply is clipped to the room left */
    free(want);
    want = NULL;
    if (template_encode_prompt(chatml, tok, last, 2, &want, &n_want, &err)) {
        CHECK(0, "chat_prompt setup: %s", err.msg);
        goto done;
    }
    CHECK(!chat_prompt(chatml, tok, msgs, 6, 1, (int)n_want + 3, 10, &ids, &n, &dropped, &max_new,
                       &err) &&
                  n == n_want && dropped == 4 && max_new == 3,
          "chat_prompt clips the reply: %zu ids, dropped %d, max_new %d (%s)", n, dropped, max_new,
          err.msg);
    free(ids);
    /* no room at all: one line, nothing returned */
    ids = NULL;
    int rc = chat_prompt(chatml, tok, msgs, 6, 1, (int)n_want, 10, &ids, &n, &dropped, &max_new,
                         &err);
    CHECK(rc && !ids && n == 0 && strstr(err.msg, "the model's context is") &&
                  !strchr(err.msg, '\n'),
          "chat_prompt with no room: rc %d, \"%s\"", rc, err.msg);
done:
    free(full);
    free(want);
}

static void test_stop_set(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Template *chatml = NULL, *llama2 = NULL;
    if (!be || model_load(MODEL, be, &m, &err) || tokenizer_load(MODEL, &tok, &err) ||
        template_load("templates", "chatml", &chatml, &err) ||
        template_load("templates", "llama2", &llama2, &err)) {
        CHECK(0, "stop set: %s", err.msg);
        goto done;
    }
    StopSet st;
    stopset_init(&st, m, tok, NULL); /* plain generation: the model's EOS ids, no strings */
    CHECK(st.n_eos == 2 && st.eos[0] == 2 && st.eos[1] == 1 && st.n_stops == 0,
          "no template: %d eos (%d), %d stops", st.n_eos, st.eos[0], st.n_stops);
    /* llama2: no stop words; its EOS is the tokenizer's (2, not repeated), its text a stop */
    stopset_init(&st, m, tok, llama2);
    CHECK(st.n_eos == 2 && st.n_stops == 1 && !strcmp(st.stops[0], "</s>"),
          "llama2: %d eos, %d stops (%s)", st.n_eos, st.n_stops, st.n_stops ? st.stops[0] : "");
    /* chatml: its two stop words (<|im_end|> is no single token here, so EOS stays 2), then </s> */
    stopset_init(&st, m, tok, chatml);
    CHECK(st.n_eos == 2 && st.n_stops == 3 && !strcmp(st.stops[0], "<|im_end|>") &&
                  !strcmp(st.stops[1], "<|im_start|>") && !strcmp(st.stops[2], "</s>"),
          "chatml: %d eos, %d stops", st.n_eos, st.n_stops);
    GenerateOptions o = {.max_new_tokens = 4};
    stopset_apply(&st, &o);
    CHECK(o.eos_ids == st.eos && o.n_eos == 2 && o.stops == st.stops && o.n_stops == 3,
          "stopset_apply");
    char text[] = "Paris.<|im_start|>user</s><|im_end|>";
    stopset_cut(text, &st); /* at the first of any stop string */
    CHECK(!strcmp(text, "Paris."), "stopset_cut: \"%s\"", text);
    test_chat_prompt(tok, chatml);
done:
    template_free(chatml);
    template_free(llama2);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
}

/* A 2-thread cpu backend with model_dir's model and tok_dir's tokenizer: 0, or -1 after a failed
 * CHECK (what was opened is left in *be, *m, *tok for the caller to free). */
static int open_case(const char *model_dir, const char *tok_dir, Backend **be, Model **m,
                     Tokenizer **tok) {
    TunaErr err = {0};
    *be = backend_init("cpu", 2, &err);
    if (!*be || model_load(model_dir, *be, m, &err) || tokenizer_load(tok_dir, tok, &err)) {
        CHECK(0, "%s: %s", model_dir, err.msg);
        return -1;
    }
    return 0;
}

/* A P-tuning prefix of P virtual tokens with fixed pseudo-random key/value rows. */
static void set_test_prefix(Model *m, int P) {
    TunaErr err = {0};
    size_t PW = (size_t)m->cfg.L * 2 * m->cfg.KVH * m->cfg.HS;
    float *pf = xmalloc(sizeof(float) * (size_t)P * PW);
    for (size_t i = 0; i < (size_t)P * PW; i++)
        pf[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    CHECK(model_set_prefix(m, pf, P, &err) == 0, "prefix: %s", err.msg);
    free(pf);
}

/* The streamed text is built incrementally (a window of the last ids): it must equal, at the
 * end, both the --json text and an independent decode(prompt + ids) minus decode(prompt).
 * Sampled at a high temperature so that byte tokens split UTF-8 characters, on stories260K
 * (SentencePiece, byte fallback) and on the random GPT-2 fixture with GPT-2's real
 * byte-level tokenizer from ../shared (skipped without it). */
static void test_incremental_text(void) {
    char tmp[] = "/tmp/tuna_gen_XXXXXX", gdir[256], cmd[2048];
    const char *models[2] = {MODEL, NULL};
    if (mkdtemp(tmp)) {
        snprintf(gdir, sizeof gdir, "%s/gpt2", tmp);
        snprintf(cmd, sizeof cmd,
                 "mkdir -p %s && cp tests/fixtures/gpt2/* %s/ && cp ../shared/tokenizers/gpt2/* "
                 "%s/ 2>/dev/null",
                 gdir, gdir, gdir);
        int st;
        char *o = run(cmd, &st);
        free(o);
        if (st == 0)
            models[1] = gdir;
        else
            SKIP("../shared/tokenizers/gpt2 missing: byte-level case skipped");
    }
    int cases = 0;
    for (int mi = 0; mi < 2 && models[mi]; mi++) {
        TunaErr err = {0};
        Tokenizer *tok = NULL;
        if (tokenizer_load(models[mi], &tok, &err)) {
            CHECK(0, "%s: %s", models[mi], err.msg);
            continue;
        }
        for (int seed = 1; seed <= 6; seed++) {
            int st;
            snprintf(cmd, sizeof cmd,
                     "./tuna generate %s --prompt '!' --max-new-tokens 80 --temperature 1.3 "
                     "--seed %d --ignore-eos --quiet",
                     models[mi], seed);
            char js[2100];
            snprintf(js, sizeof js, "%s --json", cmd);
            char ne[2100];
            snprintf(ne, sizeof ne, "%s --no-echo", cmd);
            char *jout = run(js, &st), *sout = run(ne, &st);
            cJSON *j = cJSON_Parse(jout);
            const cJSON *pid = cJSON_GetObjectItem(j, "prompt_ids"),
                        *ids = cJSON_GetObjectItem(j, "ids"),
                        *text = cJSON_GetObjectItem(j, "text");
            CHECK(j && cJSON_IsArray(pid) && cJSON_IsArray(ids) && cJSON_IsString(text),
                  "%s seed %d: bad --json: %s", models[mi], seed, jout);
            if (j && cJSON_IsArray(pid) && cJSON_IsArray(ids) && cJSON_IsString(text)) {
                int np = cJSON_GetArraySize(pid), ni = cJSON_GetArraySize(ids);
                int32_t *all = xmalloc(sizeof(int32_t) * (size_t)(np + ni + 1));
                for (int i = 0; i < np; i++)
                    all[i] = cJSON_GetArrayItem(pid, i)->valueint;
                for (int i = 0; i < ni; i++)
                    all[np + i] = cJSON_GetArrayItem(ids, i)->valueint;
                char *pt = tokenizer_decode(tok, all, (size_t)np, 1),
                     *full = tokenizer_decode(tok, all, (size_t)(np + ni), 1);
                size_t pl = strlen(pt);
                const char *want = strncmp(full, pt, pl) ? full : full + pl;
                CHECK(!strcmp(text->valuestring, want),
                      "%s seed %d: --json text differs from decode(ids)", models[mi], seed);
                size_t sl = strlen(sout);
                if (sl && sout[sl - 1] == '\n') sout[--sl] = '\0';
                CHECK(!strcmp(sout, want), "%s seed %d: streamed text differs from decode(ids)",
                      models[mi], seed);
                free(pt);
                free(full);
                free(all);
                cases++;
            }
            cJSON_Delete(j);
            free(jout);
            free(sout);
        }
        tokenizer_free(tok);
    }
    printf("  incremental text: %d sampled cases equal decode(prompt + ids) - decode(prompt)\n",
           cases);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    int st;
    free(run(cmd, &st));
}

// --- batched decoding equals one sequence at a time

static void batch_case(const char *model_dir, const char *tok_dir, int prefix, int B, WType kv) {
    TunaErr err = {0};
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    if (open_case(model_dir, tok_dir, &be, &m, &tok)) goto out;
    CHECK(model_set_kv_type(m, kv, &err) == 0, "kv cache %s: %s", wtype_info[kv].name, err.msg);
    if (prefix) set_test_prefix(m, 3); /* a P-tuning prefix: every slot starts with it */
    static const char *texts[] = {"Once upon a time",
                                  "The",
                                  "Lily and Tom went to the park to play with a big red ball.",
                                  "Hi",
                                  "A dog named Max",
                                  "One day, the sun",
                                  "Tim",
                                  "She said"};
    int32_t *ids[8];
    size_t n[8];
    for (int i = 0; i < B; i++) {
        ids[i] = NULL;
        tokenizer_encode(tok, texts[i], strlen(texts[i]), 1, &ids[i], &n[i], &err);
        if (n[i] == 0) { /* no BOS in this tokenizer: start from token 1 */
            free(ids[i]);
            ids[i] = xmalloc(sizeof(int32_t));
            ids[i][0] = 1;
            n[i] = 1;
        }
        for (size_t k = 0; k < n[i]; k++)
            ids[i][k] %= m->cfg.V; /* the fixtures have 256 ids */
    }
    const char *stops[] = {"\n\n", "was"};
    GenerateOptions opt = {.max_new_tokens = 40,
                           .eos_ids = m->cfg.eos_ids,
                           .n_eos = m->cfg.n_eos,
                           .stops = stops,
                           .n_stops = 2};
    Sampler s;
    sampler_init(&s, m->cfg.V, 1, 0, 0, 1, 1);
    GenerateResult one[8], all[8];
    for (int i = 0; i < B; i++)
        CHECK(generate_run(m, tok, &s, ids[i], n[i], &opt, &one[i], &err) == 0, "%s run %d: %s",
              model_dir, i, err.msg);
    CHECK(generate_batch(m, tok, &s, (const int32_t *const *)ids, n, B, &opt, all, &err) == 0,
          "%s batch: %s", model_dir, err.msg);
    /* one decoding step of all B slots: each row bit-identical to that sequence's own step */
    int V = m->cfg.V, bit_same = 0;
    float *lb = xmalloc(sizeof(float) * (size_t)V * (size_t)B),
          *l1 = xmalloc(sizeof(float) * (size_t)V);
    int slots[8];
    int32_t first[8];
    CHECK(model_reserve_slots(m, B, 64, 64, &err) == 0, "reserve slots: %s", err.msg);
    for (int i = 0; i < B; i++) {
        model_use_slot(m, i);
        model_reset(m);
        CHECK(model_forward(m, ids[i], (int)n[i], l1, 0, &err) == 0, "slot prefill: %s", err.msg);
        slots[i] = i;
        first[i] = (int32_t)((i * 37 + 11) % V);
    }
    CHECK(model_decode_slots(m, B, slots, first, lb, &err) == 0, "decode slots: %s", err.msg);
    for (int i = 0; i < B; i++) {
        model_reserve(m, 64, 64, &err);
        model_forward(m, ids[i], (int)n[i], l1, 0, &err);
        model_forward(m, &first[i], 1, l1, 0, &err);
        bit_same += !memcmp(l1, lb + (size_t)i * V, sizeof(float) * (size_t)V);
    }
    CHECK(bit_same == B, "%s: %d of %d rows of a batched step are bit-identical to decoding alone",
          model_dir, bit_same, B);
    free(lb);
    free(l1);
    int same = 0, tokens = 0, stopped[5] = {0};
    for (int i = 0; i < B; i++) {
        int eq = one[i].n_ids == all[i].n_ids &&
                 !memcmp(one[i].ids, all[i].ids, sizeof(int32_t) * one[i].n_ids) &&
                 !strcmp(one[i].text, all[i].text) && one[i].stopped_by == all[i].stopped_by;
        CHECK(eq,
              "%s%s B=%d, prompt %d: alone %zu ids (stop %d) \"%.40s\", batched %zu ids (stop %d) "
              "\"%.40s\"",
              model_dir, prefix ? " + prefix" : "", B, i, one[i].n_ids, one[i].stopped_by,
              one[i].text, all[i].n_ids, all[i].stopped_by, all[i].text);
        same += eq;
        tokens += (int)one[i].n_ids;
        stopped[one[i].stopped_by]++;
        generate_result_free(&one[i]);
        generate_result_free(&all[i]);
        free(ids[i]);
    }
    printf("  generate_batch %s%s%s B=%d: %d/%d sequences identical, %d tokens (ended by max %d, "
           "eos %d, stop string %d)\n",
           model_dir, prefix ? " + prefix" : "",
           kv == WT_F32   ? ""
           : kv == WT_F16 ? " f16 cache"
                          : " q8_0 cache",
           B, same, B, tokens, stopped[0], stopped[1], stopped[2]);
    sampler_free(&s);
out:
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
}

static void test_batch(void) {
    batch_case(MODEL, MODEL, 0, 8, WT_F32);
    batch_case(MODEL, MODEL, 0, 1, WT_F32);
    batch_case(MODEL, MODEL, 1, 5, WT_F32);
    batch_case(MODEL, MODEL, 0, 8, WT_F16); /* typed caches: the same agreements */
    batch_case(MODEL, MODEL, 1, 5, WT_F16);
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("../shared not found: batched decoding checked on stories260K only");
        return;
    }
    static const char *pairs[][2] = {{"tests/fixtures/gpt2", "gpt2"},
                                     {"tests/fixtures/qwen3", "qwen3"},
                                     {"tests/fixtures/mistral", "mistral-7b-v0.1"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char tdir[512];
        snprintf(tdir, sizeof tdir, "%s/tokenizers/%s", shared, pairs[i][1]);
        batch_case(pairs[i][0], tdir, 0, 6, WT_F32);
        batch_case(pairs[i][0], tdir, 0, 6, WT_F16);
        if (i == 1) batch_case(pairs[i][0], tdir, 0, 6, WT_Q8_0); /* heads of 32 */
    }
}

/* Lookup decoding gives the ids, text and stop reason of plain greedy decoding: with and without
 * stop strings and EOS, with a repetition penalty, up to a full context (the GPT-2 fixture's 64 positions),
 * with a P-tuning prefix, for draft lengths 1, 8 and 15; and drafts are taken (accepted tokens
 * are passes saved). */
static void lookup_case(const char *model_dir, const char *tok_dir, int prefix, WType kv) {
    TunaErr err = {0};
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    if (open_case(model_dir, tok_dir, &be, &m, &tok)) goto out;
    CHECK(model_set_kv_type(m, kv, &err) == 0, "kv cache %s: %s", wtype_info[kv].name, err.msg);
    if (prefix) set_test_prefix(m, 2);
    static const char *texts[] = {"Once upon a time",
                                  "Lily and Tom went to the park. Lily and Tom went to the",
                                  "The cat sat. The cat sat. The cat", "Hi"};
    const char *stops[] = {"\n\n", "was"};
    int same = 0, cases = 0, full = 0;
    size_t accepted = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int variant = 0; variant < 4; variant++) {
            int32_t *ids = NULL;
            size_t n = 0;
            tokenizer_encode(tok, texts[ti], strlen(texts[ti]), 1, &ids, &n, &err);
            if (n == 0) {
                free(ids);
                ids = xmalloc(sizeof(int32_t));
                ids[0] = 1;
                n = 1;
            }
            for (size_t k = 0; k < n; k++)
                ids[k] %= m->cfg.V;
            GenerateOptions opt = {.max_new_tokens = variant == 3 ? 200 : 60,
                                   .eos_ids = m->cfg.eos_ids,
                                   .n_eos = m->cfg.n_eos,
                                   .ignore_eos = variant == 1,
                                   .stops = stops,
                                   .n_stops = variant == 0 ? 2 : 0};
            Sampler s;
            sampler_init(&s, m->cfg.V, 1, 0, 0, 1, variant == 2 ? 1.3f : 1.0f);
            GenerateResult a, b;
            CHECK(generate_run(m, tok, &s, ids, n, &opt, &a, &err) == 0, "%s plain: %s", model_dir,
                  err.msg);
            full += a.stopped_by == 4;
            for (int look = 1; look <= LOOKUP_MAX; look += 7) {
                opt.lookup = look;
                CHECK(generate_run(m, tok, &s, ids, n, &opt, &b, &err) == 0, "%s lookup: %s",
                      model_dir, err.msg);
                cases++;
                int ok = a.n_ids == b.n_ids && a.stopped_by == b.stopped_by &&
                         !strcmp(a.text, b.text) &&
                         !memcmp(a.ids, b.ids, sizeof(int32_t) * a.n_ids);
                same += ok;
                accepted += b.n_accepted;
                if (!ok)
                    fprintf(stderr,
                            "lookup %s text %d variant %d lookup %d: %zu ids (stop %d) vs %zu "
                            "(stop %d)\n",
                            model_dir, ti, variant, look, a.n_ids, a.stopped_by, b.n_ids,
                            b.stopped_by);
                generate_result_free(&b);
            }
            generate_result_free(&a);
            sampler_free(&s);
            free(ids);
        }
    CHECK(same == cases, "%s: lookup decoding matched plain greedy in %d of %d runs", model_dir,
          same, cases);
    CHECK(accepted > 0, "%s: no draft token was ever accepted", model_dir);
    printf("  lookup %s%s%s: %d/%d runs identical to plain greedy, %zu draft tokens kept, %d "
           "ended by a full context\n",
           model_dir, prefix ? " +prefix" : "",
           kv == WT_F32   ? ""
           : kv == WT_F16 ? " f16 cache"
                          : " q8_0 cache",
           same, cases, accepted, full);
out:
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
}

static void test_lookup(void) {
    lookup_case(MODEL, MODEL, 0, WT_F32);
    lookup_case(MODEL, MODEL, 1, WT_F32);
    lookup_case(MODEL, MODEL, 1, WT_F16); /* a typed cache: drafts checked against it too */
    const char *shared = test_shared_dir();
    if (!shared) {
        SKIP("../shared not found: lookup decoding checked on stories260K only");
        return;
    }
    char tdir[512];
    snprintf(tdir, sizeof tdir, "%s/tokenizers/qwen3", shared);
    lookup_case("tests/fixtures/qwen3", tdir, 0, WT_F32);
    lookup_case("tests/fixtures/qwen3", tdir, 0, WT_Q8_0);
    snprintf(tdir, sizeof tdir, "%s/tokenizers/gpt2", shared);
    lookup_case("tests/fixtures/gpt2", tdir, 0, WT_F32);
}

/* GenerateOptions.top_logprobs: each sampled token's record holds the log-softmax of the
 * model's own logits (the sequence replayed token by token recomputes them), with a
 * repetition penalty that changes what the sampler sees; the top N sorted, the greedy token
 * first; lookup decoding and generate_batch give the same records bit for bit; and
 * `tuna generate --logprobs` prints them (only with --json). */
static void test_logprobs(void) {
    TunaErr err = {0};
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    if (open_case(MODEL, MODEL, &be, &m, &tok)) goto out;
    const char *text = "Lily and Tom went to the park. Lily and Tom went to the";
    int32_t *ids = NULL;
    size_t n = 0;
    tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err);
    int V = m->cfg.V, K = 5;
    GenerateOptions opt = {.max_new_tokens = 40,
                           .eos_ids = m->cfg.eos_ids,
                           .n_eos = m->cfg.n_eos,
                           .top_logprobs = K};
    Sampler s;
    sampler_init(&s, V, 1, 0, 0, 1, 1.3f);
    GenerateResult a = {0}, b = {0}, c[2] = {{0}};
    CHECK(generate_run(m, tok, &s, ids, n, &opt, &a, &err) == 0, "logprobs run: %s", err.msg);
    CHECK(a.n_lp == a.n_ids + (a.stopped_by == 1) && a.n_lp > 10,
          "%zu records for %zu ids (stop %d)", a.n_lp, a.n_ids, a.stopped_by);
    /* the reference: the sequence replayed one token at a time (the logits generate_run saw,
     * bit for bit, on the cpu backend), its log-softmax in double */
    float *r = xmalloc(sizeof(float) * (size_t)V);
    model_reset(m);
    CHECK(model_forward(m, ids, (int)n, r, 0, &err) == 0, "replay: %s", err.msg);
    double worst = 0;
    int ids_ok = 1, order_ok = 1, greedy_top = 0, penalized = 0;
    for (size_t i = 0; i < a.n_lp && !err.msg[0]; i++) {
        if (i && model_forward(m, &a.lp[i - 1].id, 1, r, 0, &err)) break;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++)
            mx = (double)r[v] > mx ? (double)r[v] : mx;
        for (int v = 0; v < V; v++)
            sum += exp((double)r[v] - mx);
        double lse = mx + log(sum);
        const GenLogprob *e = &a.lp[i];
        ids_ok &= i >= a.n_ids || e->id == a.ids[i];
        /* the records are floats: within their rounding (a relative 6e-8) of the double values */
        double want = (double)r[e->id] - lse;
        worst = fmax(worst, fabs((double)e->logprob - want) / fmax(1, fabs(want)));
        order_ok &= e->n == K;
        for (int j = 0; j < e->n; j++) {
            want = (double)r[e->top_id[j]] - lse;
            worst = fmax(worst, fabs((double)e->top_logprob[j] - want) / fmax(1, fabs(want)));
            if (j) order_ok &= e->top_logprob[j] <= e->top_logprob[j - 1];
            int above = 0; /* exactly j tokens more likely than the j-th (ties: lower ids) */
            for (int v = 0; v < V; v++)
                above += r[v] > r[e->top_id[j]] || (r[v] == r[e->top_id[j]] && v < e->top_id[j]);
            order_ok &= above == j;
        }
        greedy_top += e->id == e->top_id[0];
        penalized += e->id != e->top_id[0]; /* the penalty picked another than the model's top */
    }
    CHECK(!err.msg[0], "replay: %s", err.msg);
    CHECK(ids_ok, "the records' ids are the generated ids");
    CHECK(worst < 1e-6, "log-probabilities off the replayed log-softmax by %.3g (relative)", worst);
    CHECK(order_ok, "the top %d are not the %d most likely tokens, in order", K, K);
    CHECK(penalized > 0 && greedy_top > 0,
          "the repetition penalty should move some picks off the model's top token: %d moved, "
          "%d kept",
          penalized, greedy_top);
    printf("  logprobs: %zu records within %.2g (relative) of the replayed log-softmax; %d picks "
           "moved "
           "off the model's top token by the penalty\n",
           a.n_lp, worst, penalized);
    /* lookup decoding and batched decoding: the same records, bit for bit */
    opt.lookup = 8;
    CHECK(generate_run(m, tok, &s, ids, n, &opt, &b, &err) == 0, "lookup: %s", err.msg);
    CHECK(b.n_lp == a.n_lp && b.n_accepted > 0 && !memcmp(a.lp, b.lp, sizeof(GenLogprob) * a.n_lp),
          "lookup decoding: %zu records (%zu drafted tokens kept) vs %zu plain", b.n_lp,
          b.n_accepted, a.n_lp);
    opt.lookup = 0;
    const int32_t *pp[2] = {ids, ids};
    size_t pn[2] = {n, n};
    CHECK(generate_batch(m, tok, &s, pp, pn, 2, &opt, c, &err) == 0, "batch: %s", err.msg);
    for (int i = 0; i < 2; i++)
        CHECK(c[i].n_lp == a.n_lp && !memcmp(a.lp, c[i].lp, sizeof(GenLogprob) * a.n_lp),
              "generate_batch sequence %d: %zu records vs %zu alone", i, c[i].n_lp, a.n_lp);
    generate_result_free(&a);
    generate_result_free(&b);
    generate_result_free(&c[0]);
    generate_result_free(&c[1]);
    CHECK(a.lp == NULL && a.n_lp == 0, "generate_result_free leaves no records");
    sampler_free(&s);
    free(r);
    free(ids);
    /* the CLI: a JSON array of one record per sampled token */
    int st;
    char *o = run("./tuna generate " MODEL " --prompt 'Once upon a time' --temperature 0 "
                  "--max-new-tokens 12 --json --logprobs 3 --quiet",
                  &st);
    cJSON *j = cJSON_Parse(o ? o : "");
    cJSON *lp = cJSON_GetObjectItem(j, "logprobs"), *gi = cJSON_GetObjectItem(j, "ids");
    int nrec = cJSON_GetArraySize(lp), nids = cJSON_GetArraySize(gi), shape = nrec > 0;
    for (int i = 0; i < nrec; i++) {
        cJSON *e = cJSON_GetArrayItem(lp, i), *top = cJSON_GetObjectItem(e, "top");
        int id = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(e, "id"));
        shape &= cJSON_GetArraySize(top) == 3 &&
                 (i >= nids || id == (int)cJSON_GetNumberValue(cJSON_GetArrayItem(gi, i))) &&
                 id == (int)cJSON_GetNumberValue(cJSON_GetArrayItem(cJSON_GetArrayItem(top, 0), 0));
    }
    CHECK(st == 0 && shape && (nrec == nids || nrec == nids + 1),
          "--json --logprobs 3: exit %d, %d records for %d ids: %.200s", st, nrec, nids, o);
    cJSON_Delete(j);
    free(o);
    o = run("./tuna generate " MODEL " --logprobs 3 2>&1 >/dev/null", &st);
    CHECK(st == 2 && strstr(o, "--json"), "--logprobs without --json: exit %d: %s", st, o);
    free(o);
    o = run("./tuna generate " MODEL " --json --logprobs 21 2>&1 >/dev/null", &st);
    CHECK(st == 2 && strstr(o, "logprobs"), "--logprobs 21: exit %d: %s", st, o);
    free(o);
out:
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
}

/* The logits of ids[0 .. T) fed as a prefill of P then one token at a time (P 0: all one at a
 * time): those after each of the last `last` tokens, into out (last, V). 0 or -1. */
static int kv_run(Model *m, const int32_t *ids, int T, int P, int last, float *out) {
    TunaErr err = {0};
    int V = m->cfg.V;
    float *l = xmalloc(sizeof(float) * (size_t)V);
    int rc = model_reserve(m, 128, 64, &err);
    if (!rc && P) rc = model_forward(m, ids, P, l, 0, &err);
    for (int t = P; !rc && t < T; t++) {
        rc = model_forward(m, ids + t, 1, l, 0, &err);
        if (!rc && t >= T - last) memcpy(out + (size_t)(t - (T - last)) * V, l, sizeof(float) * V);
    }
    CHECK(rc == 0, "kv_run: %s", err.msg);
    free(l);
    return rc ? -1 : 0;
}

/* max |a - b| / max |b| over n (infinite where either holds a NaN or an infinity) */
static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        if (fabs((double)a[i] - (double)b[i]) > d) d = fabs((double)a[i] - (double)b[i]);
        if (fabs((double)b[i]) > s) s = fabs((double)b[i]);
    }
    return s > 0 ? d / s : d;
}

/* The typed KV caches (--cache-type f16, q8_0), f16 on stories260K (heads of 8) and both on the
 * Qwen3 fixture (GQA, q/k norms, heads of 32): the logits of 16 decoded tokens after a 40-token
 * prefill (Tq >= 32: the dequantized rows through the matrix products) within the type's bound
 * of the fp32 cache's (f16: 11 significant bits; Q8_0: 8 bits a block of 32), near the same tokens fed one at a time (the halves read
 * directly) and the ref backend's (the ref's two runs within 1e-6); a P-tuning prompt
 * (model_set_prompt downloads the cache as the prefix, widened) the same way; a backend without
 * the ops refused in one line; the CLI's --cache-type. */
static void test_kv_typed(void) {
    static const struct {
        const char *dir;
        WType t;
        double bound;
    } cases[] = {{MODEL, WT_F16, 5e-3},
                 {"tests/fixtures/qwen3", WT_F16, 5e-3},
                 {"tests/fixtures/qwen3", WT_Q8_0, 5e-2}};
    for (size_t d = 0; d < sizeof cases / sizeof cases[0]; d++) {
        const char *dir = cases[d].dir;
        WType kt = cases[d].t;
        const char *tn = wtype_info[kt].name;
        TunaErr err = {0};
        Backend *be = backend_init("cpu", 2, &err), *rb = backend_init("ref", 1, &err);
        Model *m32 = NULL, *m16 = NULL, *r16 = NULL;
        if (!be || !rb || model_load(dir, be, &m32, &err) || model_load(dir, be, &m16, &err) ||
            model_load(dir, rb, &r16, &err)) {
            CHECK(0, "%s: %s", dir, err.msg);
            goto next;
        }
        CHECK(model_set_kv_type(m16, kt, &err) == 0 && model_set_kv_type(r16, kt, &err) == 0,
              "%s: kv %s: %s", dir, tn, err.msg);
        int V = m32->cfg.V, T = 56, last = 16;
        int32_t ids[56];
        for (int t = 0; t < T; t++)
            ids[t] = (int32_t)((t * 7919 + 13) % V);
        size_t n = (size_t)last * V;
        float *a = xmalloc(sizeof(float) * n), *b = xmalloc(sizeof(float) * n),
              *c = xmalloc(sizeof(float) * n), *r = xmalloc(sizeof(float) * n),
              *e = xmalloc(sizeof(float) * n);
        if (!kv_run(m32, ids, T, 40, last, a) && !kv_run(m16, ids, T, 40, last, b) &&
            !kv_run(m16, ids, T, 0, last, c) && !kv_run(r16, ids, T, 40, last, r) &&
            !kv_run(r16, ids, T, 0, last, e)) {
            double d32 = rel_diff(b, a, n), d1 = rel_diff(c, b, n), dr = rel_diff(r, b, n),
                   e1 = rel_diff(e, r, n);
            printf("  %s cache %s: against fp32 %.3g; prefill against token by token %.3g "
                   "(ref: %.3g), against ref %.3g\n",
                   tn, dir, d32, d1, e1, dr);
            CHECK(d32 > 0 && d32 < cases[d].bound, "%s: %s cache against fp32: %g", dir, tn, d32);
            /* the ref's products give a row the same bits in a chunk as alone: its two runs
             * round the same keys and values */
            CHECK(e1 < 1e-6, "%s: ref, %s cache, prefill against token by token: %g", dir, tn, e1);
            /* the cpu's chunked and one-at-a-time products part in fp32 rounding (7e-7 of the
             * logits with an fp32 cache), which moves the few keys and values next to a rounding
             * boundary a whole f16 step: up to 2e-4 seen (without AVX-512), 2e-3 allowed; a
             * misplaced or stale row of the cache moves them by tenths */
            CHECK(d1 < 0.4 * cases[d].bound, "%s: %s cache, prefill against token by token: %g",
                  dir, tn, d1);
            CHECK(dr < 0.4 * cases[d].bound, "%s: %s cache, cpu against ref: %g", dir, tn, dr);
        }
        /* a P-tuning prompt: its keys and values computed, downloaded and set as the prefix */
        int P = 4, C = m32->cfg.C;
        float *emb = xmalloc(sizeof(float) * (size_t)P * C);
        for (int i = 0; i < P * C; i++)
            emb[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        if (model_set_prompt(m32, emb, P, &err) || model_set_prompt(m16, emb, P, &err))
            CHECK(0, "%s: set_prompt: %s", dir, err.msg);
        else if (!kv_run(m32, ids, 24, 8, last, a) && !kv_run(m16, ids, 24, 8, last, b)) {
            double dp = rel_diff(b, a, n);
            CHECK(dp > 0 && dp < cases[d].bound, "%s: %s cache with a prompt against fp32: %g", dir,
                  tn, dp);
        }
        free(emb);
        free(a);
        free(b);
        free(c);
        free(r);
        free(e);
        if (d == 0) { /* a backend without the ops */
            BackendOps no = *be->ops;
            const BackendOps *own = be->ops;
            no.attention_fwd_kv = NULL;
            be->ops = &no;
            int rc = model_set_kv_type(m32, WT_F16, &err);
            be->ops = own;
            CHECK(rc && strstr(err.msg, "--cache-type f16") && strstr(err.msg, "attention_fwd_kv"),
                  "no attention_fwd_kv: rc %d \"%s\"", rc, err.msg);
            rc = model_set_kv_type(m32, WT_Q8_0, &err); /* heads of 8: not whole blocks */
            CHECK(rc && strstr(err.msg, "--cache-type q8_0") && strstr(err.msg, "heads of 8"),
                  "q8_0 on heads of 8: rc %d \"%s\"", rc, err.msg);
        }
    next:
        model_free(m32);
        model_free(m16);
        model_free(r16);
        backend_free(be);
        backend_free(rb);
    }
    int st;
    /* --json reports the cache: its type, positions and bytes (f16: half of fp32's) */
    double bytes[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        char *o = run(k ? "./tuna generate " MODEL " --prompt 'Once upon' --max-new-tokens 8 "
                          "--temperature 0 --cache-type f16 --json"
                        : "./tuna generate " MODEL " --prompt 'Once upon' --max-new-tokens 8 "
                          "--temperature 0 --json",
                      &st);
        cJSON *j = cJSON_Parse(o), *kv = cJSON_GetObjectItemCaseSensitive(j, "kv_cache");
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(kv, "type"),
                    *b = cJSON_GetObjectItemCaseSensitive(kv, "bytes");
        CHECK(st == 0 && cJSON_IsString(ty) && !strcmp(ty->valuestring, k ? "f16" : "f32") &&
                      cJSON_IsNumber(b),
              "--cache-type %s --json: exit %d: %.300s", k ? "f16" : "f32", st, o);
        bytes[k] = cJSON_IsNumber(b) ? b->valuedouble : 0;
        cJSON_Delete(j);
        free(o);
    }
    CHECK(bytes[0] > 0 && bytes[1] * 2 == bytes[0], "kv_cache bytes: f32 %.0f, f16 %.0f", bytes[0],
          bytes[1]);
    char *o = run("./tuna generate " MODEL " --prompt hi --cache-type q8_0 2>&1 >/dev/null", &st);
    CHECK(st != 0 && strstr(o, "heads of 8 are not whole blocks"),
          "q8_0 on heads of 8: exit %d: %s", st, o);
    free(o);
    o = run("./tuna generate " MODEL " --cache-type f8 2>&1 >/dev/null", &st);
    CHECK(st == 2 && strstr(o, "--cache-type: expected f32, f16 or q8_0"),
          "--cache-type f8: exit %d: %s", st, o);
    free(o);
}

static void test_bad_options(void) {
    const char *cmds[] = {
            "./tuna generate " MODEL " --temperature abc 2>&1 >/dev/null",
            "./tuna generate " MODEL " --top-p 2 2>&1 >/dev/null",
            "./tuna generate /nonexistent/model 2>&1 >/dev/null",
            "./tuna generate " MODEL " --backend nope 2>&1 >/dev/null",
            "./tuna generate 2>&1 >/dev/null",
            "./tuna frobnicate 2>&1 >/dev/null | head -1",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        int st;
        char *out = run(cmds[i], &st);
        size_t nl = 0;
        for (char *p = out; *p; p++)
            nl += *p == '\n';
        CHECK(i == 5 || st != 0, "%s: exit status 0", cmds[i]);
        CHECK(nl == 1 && strlen(out) > 10, "%s: want one line on stderr, got: %s", cmds[i], out);
        free(out);
    }
}

int main(void) {
    FILE *f = fopen(tuna_bin(), "rb");
    if (!f) {
        CHECK(0, "%s is not built (run from the repo root after make)", tuna_bin());
        return test_report("test_generate");
    }
    fclose(f);
    test_reference_greedy();
    test_sampling();
    test_argmax();
    test_stop_strings();
    test_stop_set();
    test_incremental_text();
    test_batch();
    test_lookup();
    test_logprobs();
    test_kv_typed();
    test_bad_options();
    return test_report("test_generate");
}
