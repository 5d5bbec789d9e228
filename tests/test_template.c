/* test_template.c: the 8 shipped templates render a 2-turn conversation with a system prompt to
 * the exact LLaMA-Factory strings (byte-level tokenizers from ../shared, so decode is lossless),
 * and the trained positions decode to exactly the assistant replies plus their end markers.
 * With the bundled stories260K tokenizer (always present): exact ids segment by segment, auto
 * BOS, prompts, cutoff (infer_seqlen), efficient_eos, user-added and malformed template files,
 * and the `tuna template` CLI. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/cli/cli.h"
#include "src/template.h"
#include "src/xalloc.h"
#include "tests/harness.h"

#define TDIR    "templates"
#define STORIES "models/stories260K"

static const char *const SYS = "You are kind.", *const Q1 = "Hi there",
                         *const A1 = "Hello! How can I help?", *const Q2 = "Tell me a joke.",
                         *const A2 = "Why did the chicken cross the road?";

static void conv2(ChatMessage m[5]) {
    m[0] = (ChatMessage){"system", SYS};
    m[1] = (ChatMessage){"user", Q1};
    m[2] = (ChatMessage){"assistant", A1};
    m[3] = (ChatMessage){"user", Q2};
    m[4] = (ChatMessage){"assistant", A2};
}

static Template *load_t(const char *dir, const char *name) {
    Template *t = NULL;
    TunaErr err = {0};
    int rc = template_load(dir, name, &t, &err);
    CHECK(rc == 0 && t, "template_load %s: %s", name, err.msg);
    return t;
}

static Tokenizer *load_tok(const char *dir) {
    Tokenizer *tok = NULL;
    TunaErr err = {0};
    int rc = tokenizer_load(dir, &tok, &err);
    CHECK(rc == 0, "tokenizer_load %s: %s", dir, err.msg);
    return tok;
}

/* Decodes ids[i] for positions whose label trains (train=1) or all (train=-1). */
static char *decode_sel(const Tokenizer *tok, const int32_t *ids, const int32_t *labels, size_t n,
                        int train) {
    int32_t *sel = xmalloc((n ? n : 1) * sizeof *sel);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (train < 0 || (labels[i] != TEMPLATE_IGNORE) == train) sel[k++] = ids[i];
    char *s = tokenizer_decode(tok, sel, k, 0);
    free(sel);
    return s;
}

static int32_t *enc(const Tokenizer *tok, const char *s, size_t *n) {
    int32_t *ids = NULL;
    TunaErr err = {0};
    int rc = tokenizer_encode(tok, s, strlen(s), 0, &ids, n, &err);
    CHECK(rc == 0, "encode: %s", err.msg);
    return ids;
}

// --- exact strings on the shared byte-level tokenizers

typedef struct Case {
    const char *tpl, *tok, *full, *trained;
} Case;

static const Case CASES[] = {
        {"vanilla", "llama3",
         "You are kind.Hi thereHello! How can I help?<|end_of_text|>Tell me a joke.Why did the "
         "chicken cross the road?<|end_of_text|>",
         "Hello! How can I help?<|end_of_text|>Why did the chicken cross the road?<|end_of_text|>"},
        {"default", "llama3",
         "System: You are kind.<|end_of_text|>\nHuman: Hi there<|end_of_text|>\nAssistant:Hello! "
         "How can I help?<|end_of_text|>\nHuman: Tell me a joke.<|end_of_text|>\nAssistant:Why "
         "did the chicken cross the road?<|end_of_text|>\n",
         "Hello! How can I help?<|end_of_text|>\nWhy did the chicken cross the road?"
         "<|end_of_text|>\n"},
        {"alpaca", "llama3",
         "You are kind.### Instruction:\nHi there\n\n### Response:\nHello! How can I help?"
         "<|end_of_text|>\n\n### Instruction:\nTell me a joke.\n\n### Response:\nWhy did the "
         "chicken cross the road?<|end_of_text|>\n\n",
         "Hello! How can I help?<|end_of_text|>\n\nWhy did the chicken cross the road?"
         "<|end_of_text|>\n\n"},
        {"chatml", "qwen3",
         "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
         "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a "
         "joke.<|im_end|>\n<|im_start|>assistant\nWhy did the chicken cross the road?<|im_end|>\n",
         "Hello! How can I help?<|im_end|>\nWhy did the chicken cross the road?<|im_end|>\n"},
        {"qwen", "qwen3",
         "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
         "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a "
         "joke.<|im_end|>\n<|im_start|>assistant\nWhy did the chicken cross the road?<|im_end|>\n",
         "Hello! How can I help?<|im_end|>\nWhy did the chicken cross the road?<|im_end|>\n"},
        /* LLaMA-Factory's qwen3_nothink: qwen's formats without its default system prompt */
        {"qwen3_nothink", "qwen3",
         "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
         "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a "
         "joke.<|im_end|>\n<|im_start|>assistant\nWhy did the chicken cross the road?<|im_end|>\n",
         "Hello! How can I help?<|im_end|>\nWhy did the chicken cross the road?<|im_end|>\n"},
        {"llama2", "llama3",
         "<|begin_of_text|>[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi there [/INST]Hello! How "
         "can I help?<|end_of_text|><|begin_of_text|>[INST] Tell me a joke. [/INST]Why did the "
         "chicken cross the road?<|end_of_text|>",
         "Hello! How can I help?<|end_of_text|>Why did the chicken cross the road?<|end_of_text|>"},
        {"llama3", "llama3",
         "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are kind.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>"
         "assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nTell me a joke.<|eot_id|><|start_header_id|>assistant"
         "<|end_header_id|>\n\nWhy did the chicken cross the road?<|eot_id|>",
         "Hello! How can I help?<|eot_id|>Why did the chicken cross the road?<|eot_id|>"},
        {"mistral", "llama3",
         "<|begin_of_text|>[INST] You are kind.\n\nHi there[/INST] Hello! How can I help?"
         "<|end_of_text|>[INST] Tell me a joke.[/INST] Why did the chicken cross the road?"
         "<|end_of_text|>",
         " Hello! How can I help?<|end_of_text|> Why did the chicken cross the road?"
         "<|end_of_text|>"},
};

static void test_exact_strings(const char *shared) {
    if (!shared) {
        SKIP("../shared not found: exact template strings on llama3/qwen3 tokenizers skipped");
        return;
    }
    ChatMessage m[5];
    conv2(m);
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        const Case *k = &CASES[c];
        char dir[512];
        snprintf(dir, sizeof dir, "%s/tokenizers/%s", shared, k->tok);
        Tokenizer *tok = load_tok(dir);
        Template *t = load_t(TDIR, k->tpl);
        if (!tok || !t) {
            tokenizer_free(tok);
            template_free(t);
            continue;
        }
        int32_t *ids = NULL, *labels = NULL;
        size_t n = 0;
        TunaErr err = {0};
        int rc = template_encode_train(t, tok, m, 5, 0, 0, &ids, &labels, &n, &err);
        CHECK(rc == 0 && n > 0, "%s: encode: %s", k->tpl, err.msg);
        char *full = decode_sel(tok, ids, labels, n, -1);
        char *tr = decode_sel(tok, ids, labels, n, 1);
        CHECK(!strcmp(full, k->full), "%s/%s full:\n  got  [%s]\n  want [%s]", k->tpl, k->tok, full,
              k->full);
        CHECK(!strcmp(tr, k->trained), "%s/%s trained:\n  got  [%s]\n  want [%s]", k->tpl, k->tok,
              tr, k->trained);
        /* labels are ids or -100, and exactly two trained runs (one per assistant turn) */
        int runs = 0, ok = 1;
        for (size_t i = 0; i < n; i++) {
            if (labels[i] != TEMPLATE_IGNORE && labels[i] != ids[i]) ok = 0;
            if (labels[i] != TEMPLATE_IGNORE && (i == 0 || labels[i - 1] == TEMPLATE_IGNORE))
                runs++;
        }
        CHECK(ok && runs == 2, "%s: labels != ids or %d trained runs", k->tpl, runs);
        /* the generation prompt for the first turn is exactly the masked prefix */
        int32_t *pids = NULL;
        size_t pn = 0;
        rc = template_encode_prompt(t, tok, m, 2, &pids, &pn, &err);
        size_t first_train = 0;
        while (first_train < n && labels[first_train] == TEMPLATE_IGNORE)
            first_train++;
        CHECK(rc == 0 && pn == first_train && !memcmp(pids, ids, pn * sizeof *ids),
              "%s: prompt (%zu ids) is not the masked prefix (%zu)", k->tpl, pn, first_train);
        free(pids);
        free(full);
        free(tr);
        free(ids);
        free(labels);
        template_free(t);
        tokenizer_free(tok);
    }

    /* EOS / stop words with the model's own tokenizer */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tokenizers/llama3", shared);
    Tokenizer *l3 = load_tok(dir);
    snprintf(dir, sizeof dir, "%s/tokenizers/qwen3", shared);
    Tokenizer *q3 = load_tok(dir);
    Template *tl3 = load_t(TDIR, "llama3"), *tq = load_t(TDIR, "qwen"),
             *td = load_t(TDIR, "default");
    if (l3 && q3 && tl3 && tq && td) {
        CHECK(template_eos_id(tl3, l3) == tokenizer_token_id(l3, "<|eot_id|>"), "llama3 eos");
        CHECK(template_eos_id(td, l3) == tokenizer_eos_id(l3), "default keeps tokenizer eos");
        CHECK(template_eos_id(tq, q3) == tokenizer_token_id(q3, "<|im_end|>"), "qwen eos");
        /* qwen's default system when the conversation has none */
        ChatMessage m2[2] = {{"user", "Hi"}, {"assistant", "Yo"}};
        int32_t *ids = NULL, *labels = NULL;
        size_t n = 0;
        TunaErr err = {0};
        template_encode_train(tq, q3, m2, 2, 0, 0, &ids, &labels, &n, &err);
        char *full = decode_sel(q3, ids, labels, n, -1);
        CHECK(!strcmp(full, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                            "helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                            "<|im_start|>assistant\nYo<|im_end|>\n"),
              "qwen default system: [%s]", full);
        free(full);
        free(ids);
        free(labels);
        /* tools and function/observation turns (qwen) */
        ChatMessage m3[6] = {{"tools", "[{\"name\": \"f\"}]"},
                             {"user", "Call f"},
                             {"function", "{\"name\": \"f\", \"arguments\": {}}"},
                             {"observation", "42"},
                             {"assistant", "It is 42."}};
        int rc = template_encode_train(tq, q3, m3, 5, 0, 0, &ids, &labels, &n, &err);
        CHECK(rc == 0, "tools conversation: %s", err.msg);
        char *tr = decode_sel(q3, ids, labels, n, 1);
        full = decode_sel(q3, ids, labels, n, -1);
        CHECK(!strcmp(tr, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"
                          "<|im_end|>\nIt is 42.<|im_end|>\n"),
              "qwen function turn trained: [%s]", tr);
        CHECK(strstr(full, "<tools>\n[{\"name\": \"f\"}]\n</tools>") != NULL &&
                      strstr(full, "<tool_response>\n42\n</tool_response>") != NULL,
              "qwen tools/observation: [%s]", full);
        free(tr);
        free(full);
        free(ids);
        free(labels);
    }
    template_free(tl3);
    template_free(tq);
    template_free(td);
    tokenizer_free(l3);
    tokenizer_free(q3);
}

// --- exact ids on the bundled stories260K tokenizer

/* Appends src to dst. */
static size_t cat(int32_t *dst, size_t at, const int32_t *src, size_t n) {
    memcpy(dst + at, src, n * sizeof *src);
    return at + n;
}

static void test_stories_ids(void) {
    Tokenizer *tok = load_tok(STORIES);
    Template *van = load_t(TDIR, "vanilla"), *chat = load_t(TDIR, "chatml");
    if (!tok || !van || !chat) goto out;
    ChatMessage m[5];
    conv2(m);
    size_t ns, nq1, na1, nq2, na2;
    int32_t *s = enc(tok, SYS, &ns), *q1 = enc(tok, Q1, &nq1), *a1 = enc(tok, A1, &na1),
            *q2 = enc(tok, Q2, &nq2), *a2 = enc(tok, A2, &na2);
    int32_t want[512], wlab[512];
    size_t w = 0;
    /* vanilla: BOS (auto: the tokenizer's post-processor adds it) SYS Q1 | A1 EOS | Q2 | A2 EOS,
     * each piece encoded on its own */
    want[w++] = 1;
    w = cat(want, w, s, ns);
    w = cat(want, w, q1, nq1);
    size_t t1 = w;
    w = cat(want, w, a1, na1);
    want[w++] = 2;
    size_t u2 = w;
    w = cat(want, w, q2, nq2);
    size_t t2 = w;
    w = cat(want, w, a2, na2);
    want[w++] = 2;
    for (size_t i = 0; i < w; i++)
        wlab[i] = (i >= t1 && i < u2) || i >= t2 ? want[i] : TEMPLATE_IGNORE;
    int32_t *ids = NULL, *labels = NULL;
    size_t n = 0;
    TunaErr err = {0};
    int rc = template_encode_train(van, tok, m, 5, 0, 0, &ids, &labels, &n, &err);
    CHECK(rc == 0 && n == w, "vanilla n=%zu want %zu (%s)", n, w, err.msg);
    CHECK(n == w && !memcmp(ids, want, n * sizeof *ids), "vanilla ids differ");
    CHECK(n == w && !memcmp(labels, wlab, n * sizeof *ids), "vanilla labels differ");
    free(ids);
    free(labels);
    /* LLaMA-Factory's empty: vanilla without the EOS after each reply */
    Template *emp = load_t(TDIR, "empty");
    if (emp) {
        int32_t we[512], wle[512];
        size_t m2 = 0;
        for (size_t i = 0; i < w; i++)
            if (!(want[i] == 2 && (i + 1 == u2 || i + 1 == w))) {
                we[m2] = want[i];
                wle[m2++] = wlab[i];
            }
        rc = template_encode_train(emp, tok, m, 5, 0, 0, &ids, &labels, &n, &err);
        CHECK(rc == 0 && n == m2 && n + 2 == w && !memcmp(ids, we, n * sizeof *ids) &&
                      !memcmp(labels, wle, n * sizeof *ids),
              "empty: n=%zu want %zu (%s)", n, m2, err.msg);
        free(ids);
        free(labels);
        template_free(emp);
    }

    /* LLaMA-Factory's train_on_prompt and mask_history: the same ids, other labels */
    static const struct {
        int flags;
        const char *what;
    } fl[] = {{TEMPLATE_TRAIN_ON_PROMPT, "train_on_prompt"},
              {TEMPLATE_MASK_HISTORY, "mask_history"},
              {TEMPLATE_TRAIN_ON_PROMPT | TEMPLATE_MASK_HISTORY, "both"}};
    for (size_t f = 0; f < sizeof fl / sizeof fl[0]; f++) {
        int top = fl[f].flags & TEMPLATE_TRAIN_ON_PROMPT,
            hist = fl[f].flags & TEMPLATE_MASK_HISTORY;
        for (size_t i = 0; i < w; i++) {
            int reply1 = i >= t1 && i < u2, reply2 = i >= t2;
            int trains = reply2 || (reply1 && !hist) || (!reply1 && top);
            wlab[i] = trains ? want[i] : TEMPLATE_IGNORE;
        }
        rc = template_encode_train(van, tok, m, 5, 0, fl[f].flags, &ids, &labels, &n, &err);
        CHECK(rc == 0 && n == w && !memcmp(ids, want, n * sizeof *ids),
              "%s: ids differ (n %zu, want %zu)", fl[f].what, n, w);
        CHECK(n == w && !memcmp(labels, wlab, n * sizeof *ids), "%s: labels differ", fl[f].what);
        free(ids);
        free(labels);
        /* a budget of exactly the second turn: mask_history keeps the last turn, else the first */
        rc = template_encode_train(van, tok, m, 5, (int)(w - u2), fl[f].flags, &ids, &labels, &n,
                                   &err);
        /* (the first turn is longer: infer_seqlen cuts its prompt and reply) */
        CHECK(rc == 0 && n == w - u2 &&
                      (hist ? !memcmp(ids, want + u2, n * sizeof *ids) : ids[0] == want[0]),
              "%s with cutoff %zu: n %zu, kept the %s turn?", fl[f].what, w - u2, n,
              hist ? "last" : "first");
        if (rc == 0 && n == w - u2 && hist) {
            int ok = 1;
            for (size_t i = 0; i < n; i++)
                ok &= labels[i] == (u2 + i >= t2 || top ? want[u2 + i] : TEMPLATE_IGNORE);
            CHECK(ok, "%s with cutoff: the kept last turn's labels", fl[f].what);
        }
        free(ids);
        free(labels);
    }

    /* chatml with a tokenizer that lacks <|im_end|>: the markers are text, and the trained part of
     * each turn is exactly encode("A<|im_end|>\n") */
    rc = template_encode_train(chat, tok, m, 5, 0, 0, &ids, &labels, &n, &err);
    CHECK(rc == 0 && n > 0, "chatml: %s", err.msg);
    size_t nt1, nt2;
    int32_t *e1 = enc(tok, "Hello! How can I help?<|im_end|>\n", &nt1);
    int32_t *e2 = enc(tok, "Why did the chicken cross the road?<|im_end|>\n", &nt2);
    int32_t tr[512];
    size_t k = 0;
    for (size_t i = 0; i < n && k < 512; i++)
        if (labels[i] != TEMPLATE_IGNORE) tr[k++] = labels[i];
    CHECK(k == nt1 + nt2 && !memcmp(tr, e1, nt1 * sizeof *tr) &&
                  !memcmp(tr + nt1, e2, nt2 * sizeof *tr),
          "chatml trained ids are not the two replies (%zu vs %zu)", k, nt1 + nt2);
    CHECK(ids[0] == 1, "chatml auto BOS");
    free(e1);
    free(e2);
    free(ids);
    free(labels);

    /* cutoff: LLaMA-Factory infer_seqlen keeps the reply and truncates the long prompt */
    char longq[2000] = "";
    for (int i = 0; i < 60; i++)
        strcat(longq, "The cat sat on the mat. ");
    ChatMessage ml[2] = {{"user", longq}, {"assistant", "Yes."}};
    size_t nyes;
    int32_t *yes = enc(tok, "Yes.", &nyes);
    rc = template_encode_train(van, tok, ml, 2, 20, 0, &ids, &labels, &n, &err);
    int trained = 0;
    for (size_t i = 0; i < n; i++)
        trained += labels[i] != TEMPLATE_IGNORE;
    CHECK(rc == 0 && n == 20 && trained == (int)nyes + 1, "cutoff 20: n=%zu trained=%d", n,
          trained);
    CHECK(n == 20 && ids[19] == 2 && !memcmp(ids + 19 - nyes, yes, nyes * sizeof *ids),
          "cutoff keeps the reply at the end");
    free(ids);
    free(labels);
    /* nothing trainable left -> n == 0, success */
    rc = template_encode_train(van, tok, ml, 2, 1, 0, &ids, &labels, &n, &err);
    CHECK(rc == 0 && n == 0 && ids && labels, "cutoff 1: n=%zu", n);
    free(ids);
    free(labels);
    /* multi-turn: the second turn is cut when the first fills the budget */
    rc = template_encode_train(van, tok, m, 5, (int)(t1 + na1 + 1), 0, &ids, &labels, &n, &err);
    CHECK(rc == 0 && n == t1 + na1 + 1 && !memcmp(ids, want, n * sizeof *ids),
          "cutoff at the first turn: n=%zu", n);
    free(ids);
    free(labels);
    free(yes);

    /* role errors */
    ChatMessage bad1[2] = {{"assistant", "x"}, {"user", "y"}};
    ChatMessage bad2[3] = {{"user", "x"}, {"assistant", "y"}, {"user", "z"}};
    ChatMessage bad3[2] = {{"user", "x"}, {"robot", "y"}};
    CHECK(template_encode_train(van, tok, bad1, 2, 0, 0, &ids, &labels, &n, &err) == TUNA_EINVAL &&
                  strstr(err.msg, "role \"assistant\""),
          "assistant first: %s", err.msg);
    CHECK(template_encode_train(van, tok, bad2, 3, 0, 0, &ids, &labels, &n, &err) == TUNA_EINVAL,
          "ends with user: %s", err.msg);
    CHECK(template_encode_train(van, tok, bad3, 2, 0, 0, &ids, &labels, &n, &err) == TUNA_EINVAL,
          "unknown role: %s", err.msg);
    CHECK(template_encode_prompt(van, tok, bad2, 2, &ids, &n, &err) == TUNA_EINVAL,
          "prompt ending with assistant: %s", err.msg);
    CHECK(template_encode_train(van, tok, m, 1, 0, 0, &ids, &labels, &n, &err) == TUNA_EINVAL,
          "system only: %s", err.msg);

    free(s);
    free(q1);
    free(a1);
    free(q2);
    free(a2);
out:
    template_free(van);
    template_free(chat);
    tokenizer_free(tok);
}

// --- files: list, user templates, malformed ones

static void write_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL, "cannot write %s", p);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_files(void) {
    char **names = NULL;
    int n = 0;
    TunaErr err = {0};
    int rc = template_list(TDIR, &names, &n, &err);
    const char *want[] = {"alpaca",  "chatml", "default",       "empty",  "llama2", "llama3",
                          "mistral", "qwen",   "qwen3_nothink", "smollm", "vanilla"};
    CHECK(rc == 0 && n == 11, "template_list: rc %d n %d (%s)", rc, n, err.msg);
    for (int i = 0; i < n && i < 11; i++)
        CHECK(!strcmp(names[i], want[i]), "list[%d] = %s, want %s", i, names[i], want[i]);
    template_list_free(names, n);
    template_list_free(NULL, 0);
    template_free(NULL);

    Template *t = NULL;
    rc = template_load(TDIR, "nosuch", &t, &err);
    CHECK(rc == TUNA_ENOTFOUND && strstr(err.msg, "nosuch.json") && strstr(err.msg, "chatml"),
          "missing template: %s", err.msg);
    rc = template_load(TDIR, "../etc/passwd", &t, &err);
    CHECK(rc == TUNA_EINVAL && !t, "path in name: %s", err.msg);

    const char *const *sw;
    t = load_t(TDIR, "chatml");
    CHECK(t && template_stop_words(t, &sw) == 2 && !strcmp(sw[0], "<|im_end|>") &&
                  !strcmp(sw[1], "<|im_start|>"),
          "chatml stop words");
    CHECK(t && !strcmp(template_name(t), "chatml"), "name");
    template_free(t);
    t = load_t(TDIR, "alpaca");
    CHECK(t && !strncmp(template_default_system(t), "Below is an instruction", 23),
          "alpaca system");
    template_free(t);
    /* qwen3_nothink: qwen without its default system prompt (LLaMA-Factory's), the same stops */
    t = load_t(TDIR, "qwen3_nothink");
    CHECK(t && !*template_default_system(t) && template_stop_words(t, &sw) == 1 &&
                  !strcmp(sw[0], "<|im_end|>"),
          "qwen3_nothink: no default system, stop <|im_end|>");
    template_free(t);

    char dir[] = "/tmp/tuna_tpl_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    write_file(dir, "bad_json.json", "{\"format_user\": ");
    write_file(dir, "bad_key.json", "{\"format_usr\": \"{{content}}\"}");
    write_file(dir, "bad_type.json", "{\"format_user\": 3}");
    write_file(dir, "no_content.json", "{\"format_assistant\": \"hi\"}");
    write_file(dir, "bad_eos.json", "{\"replace_eos\": true}");
    write_file(dir, "bad_stop.json", "{\"stop_words\": [1]}");
    write_file(dir, "eff.json",
               "{\"format_user\": \"U: {{content}}\\n\", \"format_assistant\": "
               "\"{{content}}\\n\", \"efficient_eos\": true, \"auto_bos\": false}");
    write_file(dir, "mine.json",
               "{\"format_user\": [\"<u>\", \"{{content}}\", \"</u>\"], "
               "\"format_separator\": \"||\", \"auto_bos\": false}");
    struct {
        const char *name, *needle;
    } bad[] = {{"bad_json", "not a JSON object"},       {"bad_key", "unknown key \"format_usr\""},
               {"bad_type", "\"format_user\" must be"}, {"no_content", "has no {{content}}"},
               {"bad_eos", "needs at least one stop"},  {"bad_stop", "\"stop_words\"[0]"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = template_load(dir, bad[i].name, &t, &err);
        CHECK(rc == TUNA_EFORMAT && !t && strstr(err.msg, bad[i].name) &&
                      strstr(err.msg, bad[i].needle),
              "%s: rc %d: %s", bad[i].name, rc, err.msg);
    }

    Tokenizer *tok = load_tok(STORIES);
    Template *eff = load_t(dir, "eff"), *mine = load_t(dir, "mine");
    if (tok && eff && mine) {
        ChatMessage m[4] = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}};
        int32_t *ids = NULL, *labels = NULL;
        size_t nn = 0;
        rc = template_encode_train(eff, tok, m, 4, 0, 0, &ids, &labels, &nn, &err);
        /* efficient_eos: no EOS per reply; the first token of turn 2's prompt is labelled EOS and
         * one EOS closes the conversation (LLaMA-Factory supervised.py) */
        size_t nu, nb;
        int32_t *u = enc(tok, "U: a\n", &nu), *bb = enc(tok, "b\n", &nb);
        CHECK(rc == 0 && nn > nu + nb + 1, "eff encode: %s", err.msg);
        if (rc == 0 && nn > nu + nb + 1) {
            CHECK(!memcmp(ids, u, nu * sizeof *ids) && labels[0] == TEMPLATE_IGNORE,
                  "eff prompt masked");
            CHECK(labels[nu + nb] == 2 && ids[nu + nb] != 2,
                  "eff: turn-2 prompt starts with EOS label");
            CHECK(ids[nn - 1] == 2 && labels[nn - 1] == 2, "eff: final EOS trains");
            int c2 = 0;
            for (size_t i = 0; i < nn; i++)
                c2 += ids[i] == 2;
            CHECK(c2 == 1, "eff: a single EOS id, got %d", c2);
        }
        free(u);
        free(bb);
        free(ids);
        free(labels);
        /* array slots and the separator before the second user turn */
        rc = template_encode_train(mine, tok, m, 4, 0, 0, &ids, &labels, &nn, &err);
        char *full = decode_sel(tok, ids, labels, nn, -1);
        CHECK(rc == 0 && full && !strcmp(full, "<u> a </u> b</s> || <u> c </u> d</s>"),
              "user template: [%s]", full ? full : "");
        free(full);
        free(ids);
        free(labels);
    }
    template_free(eff);
    template_free(mine);
    tokenizer_free(tok);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

// --- CLI

/* Runs cmd_template with stdout captured to a file; returns its exit code, *out the text. */
static int run_cli(int argc, const char **argv, char **out) {
    char path[] = "/tmp/tuna_tcli_XXXXXX";
    int fd = mkstemp(path);
    fflush(stdout);
    int saved = dup(1), saved_err = dup(2);
    dup2(fd, 1);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 2);
    int rc = cmd_template(argc, (char **)argv);
    fflush(stdout);
    fflush(stderr);
    dup2(saved, 1);
    dup2(saved_err, 2);
    close(saved);
    close(saved_err);
    close(devnull);
    close(fd);
    *out = xread_file(path, NULL);
    unlink(path);
    return rc;
}

static void test_cli(void) {
    char *out = NULL;
    const char *a1[] = {"template", "list"};
    int rc = run_cli(2, a1, &out);
    CHECK(rc == 0 && out && strstr(out, "chatml") && strstr(out, "vanilla"), "list: %d", rc);
    /* every template has a description: each name line goes on past its name */
    for (const char *l = out; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        if (*l != ' ')
            CHECK(n > 14 && !memmem(l, n, "no \"description\"", 16),
                  "list line without a "
                  "description: %.*s",
                  (int)n, l);
        l = e ? e + 1 : l + n;
    }
    CHECK(out && strstr(out, "chatml      ChatML (<|im_start|>"), "list:\n%s", out ? out : "");
    free(out);
    const char *a2[] = {"template",
                        "show",
                        "chatml",
                        "--dataset",
                        "identity",
                        "--vars",
                        "name=Tuna,author=Ann",
                        "--no-color",
                        "--index",
                        "2"};
    rc = run_cli(10, a2, &out);
    CHECK(rc == 0 && out, "show rc %d", rc);
    if (out) {
        CHECK(strstr(out, "«") && strstr(out, "[masked]") && strstr(out, "[train]") &&
                      strstr(out, "tokens: ") &&
                      strstr(out, "I am Tuna, an AI assistant developed "
                                  "by Ann."),
              "show output:\n%s", out);
        CHECK(!strstr(out, "\033["), "no ANSI with --no-color");
    }
    free(out);
    const char *a3[] = {"template", "show", "chatml", "--dataset", "identity", "--color"};
    rc = run_cli(6, a3, &out);
    CHECK(rc == 0 && out && strstr(out, "\033[2m"), "--color dims masked text");
    free(out);
    /* without --dataset: the built-in system + user + assistant conversation, the answer trains */
    const char *a4[] = {"template", "show", "chatml", "--no-color"};
    rc = run_cli(4, a4, &out);
    CHECK(rc == 0 && out && strstr(out, "example: built-in") &&
                  strstr(out, "«<s> <|im_start|>system\\n") && strstr(out, "[train]") &&
                  strstr(out, "\"The capital of France is Paris.<|im_end|>\\n\""),
          "show without --dataset: rc %d\n%s", rc, out ? out : "");
    free(out);
    const char *a4b[] = {"template", "show", "chatml", "--stage", "pt"};
    rc = run_cli(5, a4b, &out);
    CHECK(rc == 2, "show --stage pt without --dataset: %d", rc);
    free(out);
    const char *a5[] = {"template", "show", "nosuch", "--dataset", "identity"};
    rc = run_cli(5, a5, &out);
    CHECK(rc == 1, "unknown template: %d", rc);
    free(out);
    const char *a6[] = {"template", "frobnicate"};
    rc = run_cli(2, a6, &out);
    CHECK(rc == 2, "unknown subcommand: %d", rc);
    free(out);
    const char *a7[] = {"template", "show", "vanilla", "--dataset", "identity", "--index", "5000"};
    rc = run_cli(7, a7, &out);
    CHECK(rc == 1, "index out of range: %d", rc);
    free(out);
}

int main(void) {
    test_exact_strings(test_shared_dir());
    test_stories_ids();
    test_files();
    test_cli();
    return test_report("test_template");
}
