/* test_dataset.c: the registry and loaders on the shipped datasets (alpaca JSON array, JSONL,
 * sharegpt, tools, pt text), {{var}} substitution, malformed temp files (FILE:LINE messages, skip
 * counts, strict), ranking rejection for sft (tests/test_pref_data.c loads them), cutoff, the
 * deterministic split, and the batcher (determinism, resume, epoch wrap, target shift, packing). Uses the bundled stories260K
 * tokenizer and the shipped datasets/ and templates/. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/dataset.h"
#include "src/xalloc.h"
#include "tests/harness.h"

static Tokenizer *tok;
static Template *van, *chatml;

static Dataset *load(const char *names, const char *dir, const char *vars, int cutoff, int max,
                     int strict, int pt, const Template *t, int *rc_out, TunaErr *err) {
    DatasetOptions o = {.names = names,
                        .dataset_dir = dir,
                        .vars = vars,
                        .cutoff_len = cutoff,
                        .max_samples = max,
                        .strict = strict,
                        .stage_pt = pt};
    Dataset *d = NULL;
    int rc = dataset_load(&o, tok, t, &d, err);
    if (rc_out) *rc_out = rc;
    return d;
}

static Dataset *load_ok(const char *names, int cutoff, int max, int pt, const Template *t) {
    TunaErr err = {0};
    int rc;
    Dataset *d = load(names, "datasets", NULL, cutoff, max, 0, pt, t, &rc, &err);
    CHECK(rc == 0 && d, "load %s: %s", names, err.msg);
    return d;
}

static int32_t *enc(const char *s, size_t *n) {
    int32_t *ids = NULL;
    tokenizer_encode(tok, s, strlen(s), 0, &ids, n, NULL);
    return ids;
}

/* The trained ids of e (labels != -100). */
static size_t trained(const Example *e, int32_t *out, size_t cap) {
    size_t k = 0;
    for (int i = 0; i < e->n && k < cap; i++)
        if (e->labels[i] != TEMPLATE_IGNORE) out[k++] = e->labels[i];
    return k;
}

// --- shipped datasets

static void test_identity(void) {
    TunaErr err = {0};
    int rc;
    Dataset *d = load("identity", "datasets", "name=Tuna,author=Ann", 0, 0, 1, 0, van, &rc, &err);
    CHECK(rc == 0 && d && d->n == 91 && d->n_skipped == 0, "identity: %s", err.msg);
    if (!d) return;
    /* row 0: {"instruction": "hi", "input": "", "output": "Hello! I am {{name}}, ..."} */
    size_t nq, na;
    int32_t *q = enc("hi", &nq);
    int32_t *a = enc("Hello! I am Tuna, an AI assistant developed by Ann. How can I assist you "
                     "today?",
                     &na);
    const Example *e = &d->ex[0];
    CHECK((size_t)e->n == 1 + nq + na + 1, "identity[0] n=%d", e->n);
    if ((size_t)e->n == 1 + nq + na + 1) {
        CHECK(e->ids[0] == 1 && !memcmp(e->ids + 1, q, nq * 4) &&
                      !memcmp(e->ids + 1 + nq, a, na * 4) && e->ids[e->n - 1] == 2,
              "identity[0] ids");
        int ok = 1;
        for (int i = 0; i < e->n; i++)
            ok &= e->labels[i] == (i < (int)(1 + nq) ? TEMPLATE_IGNORE : e->ids[i]);
        CHECK(ok, "identity[0] labels: prompt masked, reply + EOS trained");
    }
    free(q);
    free(a);
    CHECK(d->n_tokens > 0 && d->n_train_tokens > 0 && d->n_train_tokens < d->n_tokens, "counters");
    /* no placeholder survives anywhere */
    int left = 0, named = 0;
    for (size_t i = 0; i < d->n; i++) {
        char *s = tokenizer_decode(tok, d->ex[i].ids, (size_t)d->ex[i].n, 0);
        left += strstr(s, "{{") != NULL;
        named += strstr(s, "Tuna") != NULL;
        free(s);
    }
    /* 77 of the 91 rows contain {{name}} (grep -c) */
    CHECK(left == 0 && named == 77, "%d identity examples keep {{...}}, %d named", left, named);
    dataset_free(d);
    /* without vars the placeholders stay */
    d = load_ok("identity", 0, 1, 0, van);
    if (d) {
        char *s = tokenizer_decode(tok, d->ex[0].ids, (size_t)d->ex[0].n, 0);
        CHECK(strstr(s, "{{name}}") != NULL, "no vars: %s", s);
        free(s);
    }
    dataset_free(d);
    rc = 0;
    d = load("identity", "datasets", "name", 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EINVAL && !d && strstr(err.msg, "key=value"), "bad vars: %s", err.msg);
}

static void test_alpaca_demo(void) {
    Dataset *d = load_ok("alpaca_en_demo", 0, 0, 0, van);
    CHECK(d && d->n == 999 && d->n_skipped == 0 && d->n_rows == 999, "alpaca_en_demo n");
    /* prompt = instruction + "\n" + input, checked on the first rows with an input */
    size_t len;
    char *text = xread_file("datasets/alpaca_en_demo.json", &len);
    cJSON *arr = text ? cJSON_Parse(text) : NULL;
    int checked = 0;
    for (int i = 0; d && arr && i < 999 && checked < 3; i++) {
        cJSON *row = cJSON_GetArrayItem(arr, i);
        const char *ins = cJSON_GetObjectItem(row, "instruction")->valuestring;
        const char *inp = cJSON_GetObjectItem(row, "input")->valuestring;
        const char *out = cJSON_GetObjectItem(row, "output")->valuestring;
        if (!*inp) continue;
        char *user = xmalloc(strlen(ins) + strlen(inp) + 2);
        sprintf(user, "%s\n%s", ins, inp);
        size_t nu, no;
        int32_t *u = enc(user, &nu), *o = enc(out, &no);
        const Example *e = &d->ex[i];
        int ok = (size_t)e->n == 1 + nu + no + 1 && !memcmp(e->ids + 1, u, nu * 4) &&
                 !memcmp(e->ids + 1 + nu, o, no * 4) && e->labels[nu] == TEMPLATE_IGNORE &&
                 e->labels[nu + 1] == e->ids[nu + 1];
        CHECK(ok, "alpaca row %d: instruction\\ninput | output", i);
        free(u);
        free(o);
        free(user);
        checked++;
    }
    CHECK(checked == 3, "found rows with input");
    cJSON_Delete(arr);
    free(text);
    dataset_free(d);
    /* max_samples, mixing */
    d = load_ok("alpaca_en_demo", 0, 10, 0, van);
    CHECK(d && d->n == 10, "max_samples 10");
    dataset_free(d);
    d = load_ok("identity, alpaca_en_demo", 0, 0, 0, van);
    CHECK(d && d->n == 91 + 999, "mixed identity,alpaca_en_demo: %zu", d ? d->n : 0);
    dataset_free(d);
}

static void test_jsonl_sharegpt_tools(void) {
    Dataset *d = load_ok("rotten_tomatoes_train", 0, 0, 0, van);
    CHECK(d && d->n == 8530 && d->n_skipped == 0, "rotten_tomatoes_train n=%zu", d ? d->n : 0);
    if (d) {
        int32_t tr[64];
        size_t k = trained(&d->ex[0], tr, 64);
        char *s = tokenizer_decode(tok, tr, k, 0);
        CHECK(!strcmp(s, "neg</s>"), "rt[0] trains on \"neg</s>\": [%s]", s);
        free(s);
    }
    dataset_free(d);
    d = load_ok("rotten_tomatoes_validation,rotten_tomatoes_test", 0, 0, 0, van);
    CHECK(d && d->n == 1066 * 2, "rt val+test");
    dataset_free(d);

    d = load_ok("fastchat_dummy_conversation", 0, 0, 0, van);
    CHECK(d && d->n + d->n_skipped == 500 && d->n_skipped == 0, "fastchat n=%zu skipped=%zu",
          d ? d->n : 0, d ? d->n_skipped : 0);
    if (d) { /* identity_0: two assistant turns, each with EOS */
        int32_t tr[256];
        size_t k = trained(&d->ex[0], tr, 256);
        size_t n1, n2;
        int32_t *a1 = enc("I am Vicuna, a language model trained by researchers from Large Model "
                          "Systems Organization (LMSYS).",
                          &n1);
        int32_t *a2 = enc("You too!", &n2);
        CHECK(k == n1 + n2 + 2 && !memcmp(tr, a1, n1 * 4) && tr[n1] == 2 &&
                      !memcmp(tr + n1 + 1, a2, n2 * 4) && tr[k - 1] == 2,
              "fastchat[0] trained = A1 EOS A2 EOS");
        /* the template flags reach the encoder: mask_history trains A2 EOS only,
         * train_on_prompt every token */
        DatasetOptions o = {.names = "fastchat_dummy_conversation",
                            .dataset_dir = "datasets",
                            .max_samples = 1,
                            .template_flags = TEMPLATE_MASK_HISTORY};
        Dataset *dh = NULL;
        TunaErr err = {0};
        CHECK(dataset_load(&o, tok, van, &dh, &err) == 0 && dh && dh->n == 1, "mask_history: %s",
              err.msg);
        if (dh && dh->n == 1) {
            k = trained(&dh->ex[0], tr, 256);
            CHECK(k == n2 + 1 && !memcmp(tr, a2, n2 * 4) && tr[k - 1] == 2 &&
                          dh->ex[0].n == d->ex[0].n,
                  "fastchat[0] with mask_history trains A2 EOS only (%zu)", k);
        }
        dataset_free(dh);
        o.template_flags = TEMPLATE_TRAIN_ON_PROMPT;
        CHECK(dataset_load(&o, tok, van, &dh, &err) == 0 && dh && dh->n == 1 &&
                      trained(&dh->ex[0], tr, 256) == (size_t)dh->ex[0].n,
              "fastchat[0] with train_on_prompt trains every token");
        dataset_free(dh);
        free(a1);
        free(a2);
    }
    dataset_free(d);

    d = load_ok("glaive_toolcall_en_demo", 0, 0, 0, chatml);
    CHECK(d && d->n > 250 && d->n_skipped < 10, "glaive n=%zu skipped=%zu", d ? d->n : 0,
          d ? d->n_skipped : 0);
    if (d) {
        char *s = tokenizer_decode(tok, d->ex[0].ids, (size_t)d->ex[0].n, 0);
        CHECK(strstr(s, "search_recipes") && strstr(s, "<|im_start|>tool"),
              "glaive[0] has tools and an observation turn");
        free(s);
    }
    dataset_free(d);
}

static void test_pt(void) {
    Dataset *d = load_ok("c4_demo", 128, 0, 1, NULL);
    CHECK(d && d->n > 100, "c4 pt blocks");
    int ok = 1;
    for (size_t i = 0; d && i < d->n; i++) {
        const Example *e = &d->ex[i];
        ok &= (e->n == 128 || i == d->n - 1) && e->ids[0] == 1 &&
              !memcmp(e->ids, e->labels, (size_t)e->n * 4);
    }
    CHECK(ok, "pt blocks: 128 tokens, BOS first, every token trains");
    dataset_free(d);
    d = load_ok("tinystories_valid_slice", 256, 0, 1, van);
    CHECK(d && d->n > 100 && d->n_skipped == 0, "tinystories pt");
    if (d) {
        int eos = 0;
        for (size_t i = 0; i < d->n; i++)
            for (int j = 0; j < d->ex[i].n; j++)
                eos += d->ex[i].ids[j] == 2;
        /* a block's first token is overwritten by BOS (LLaMA-Factory), which may hit an EOS */
        CHECK((size_t)eos + d->n >= d->n_rows && (size_t)eos <= d->n_rows,
              "one EOS per line: %d vs %zu", eos, d->n_rows);
    }
    dataset_free(d);
    /* no packing: one example per row, BOS text EOS */
    d = load_ok("tinystories_valid_slice", 0, 3, 1, NULL);
    CHECK(d && d->n == 3 && d->ex[0].ids[0] == 1 && d->ex[0].ids[d->ex[0].n - 1] == 2, "pt rows");
    dataset_free(d);
    /* plain text is refused for sft */
    TunaErr err = {0};
    int rc;
    d = load("tinystories_valid_slice", "datasets", NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "pre-training"), "txt for sft: %s", err.msg);
    d = load("c4_demo", "datasets", NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d, "c4 for sft: %s", err.msg);
    d = load("identity", "datasets", NULL, 0, 0, 0, 0, NULL, &rc, &err);
    CHECK(rc == TUNA_EINVAL && !d, "sft without template: %s", err.msg);
    d = load("nosuch", "datasets", NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_ENOTFOUND && !d && strstr(err.msg, "dataset_info.json") &&
                  strstr(err.msg, "identity"),
          "unknown dataset: %s", err.msg);
}

static void test_cutoff(void) {
    Dataset *d = load_ok("alpaca_en_demo", 32, 0, 0, van);
    int ok = 1;
    for (size_t i = 0; d && i < d->n; i++) {
        int any = 0;
        for (int j = 0; j < d->ex[i].n; j++)
            any |= d->ex[i].labels[j] != TEMPLATE_IGNORE;
        ok &= d->ex[i].n <= 32 && any;
    }
    CHECK(d && ok && d->n_truncated > 500 && d->n + d->n_dropped == 999,
          "cutoff 32: n=%zu truncated=%zu dropped=%zu", d ? d->n : 0, d ? d->n_truncated : 0,
          d ? d->n_dropped : 0);
    dataset_free(d);
}

// --- malformed files

static char tmpdir[64];

static void put(const char *name, const char *text) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static int has_msg(const Dataset *d, const char *needle) {
    for (int i = 0; i < d->n_msgs; i++)
        if (strstr(d->msgs[i], needle)) return 1;
    return 0;
}

static void test_malformed(void) {
    strcpy(tmpdir, "/tmp/tuna_ds_XXXXXX");
    CHECK(mkdtemp(tmpdir) != NULL, "mkdtemp");
    put("dataset_info.json",
        "{\"arr\": {\"file_name\": \"arr.json\"},\n"
        " \"lines\": {\"file_name\": \"lines.jsonl\", \"columns\": {\"prompt\": \"instruction\", "
        "\"query\": \"input\", \"response\": \"output\", \"system\": \"sys\", \"history\": "
        "\"hist\"}},\n"
        " \"chat\": {\"file_name\": \"chat.json\", \"formatting\": \"sharegpt\", \"columns\": "
        "{\"messages\": \"messages\"}, \"tags\": {\"role_tag\": \"role\", \"content_tag\": "
        "\"content\", \"user_tag\": \"user\", \"assistant_tag\": \"assistant\", \"system_tag\": "
        "\"system\"}},\n"
        " \"cut\": {\"file_name\": \"cut.json\"},\n"
        " \"objlines\": {\"file_name\": \"objlines.json\"},\n"
        " \"dpo\": {\"file_name\": \"arr.json\", \"ranking\": true},\n"
        " \"kto\": {\"file_name\": \"arr.json\", \"formatting\": \"sharegpt\", \"columns\": "
        "{\"messages\": \"m\", \"kto_tag\": \"label\"}},\n"
        " \"hub\": {\"hf_hub_url\": \"x/y\"},\n"
        " \"csv\": {\"file_name\": \"a.csv\"}}\n");
    put("arr.json", "[\n"
                    "  {\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n" /* 2 ok */
                    "  [1, 2],\n"                                                       /* 3 */
                    "  {\"instruction\": \"x\"},\n"                                     /* 4 */
                    "  {\"instruction\": \"x\", \"output\": 7},\n"                      /* 5 */
                    "  {\"instruction\": \"q\\\"}{\", \"output\": \"]\"},\n"            /* 6 ok */
                    "  {\"instruction\": ,},\n"                                         /* 7 */
                    "  \"text\",\n"                                                     /* 8 */
                    "  {\"instruction\": \"c\",\n   \"output\": \"d\"}\n"               /* 9 ok */
                    "]\n");
    put("lines.jsonl", "{\"instruction\": \"a\", \"output\": \"b\", \"sys\": \"S\", \"hist\": "
                       "[[\"h1\", \"r1\"]]}\n"
                       "\n"
                       "{not json\n"
                       "{\"instruction\": \"a\", \"output\": \"b\", \"hist\": [[\"h1\"]]}\n"
                       "{\"instruction\": \"a\", \"output\": \"b\", \"sys\": 3}\n"
                       "{\"instruction\": \"a\", \"input\": \"i\", \"output\": \"b\"}\n");
    put("chat.json",
        "[{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", "
        "\"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]},\n"
        " {\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"user\", "
        "\"content\": \"u2\"}]},\n"
        " {\"messages\": [{\"role\": \"user\", \"content\": \"u\"}]},\n"
        " {\"messages\": \"hello\"},\n"
        " {\"messages\": []}]\n");
    put("cut.json", "[{\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\"");
    put("objlines.json", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", "
                         "\"output\": \"d\"}\n");
    TunaErr err = {0};
    int rc;
    Dataset *d = load("arr", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == 0 && d && d->n == 3 && d->n_skipped == 5 && d->n_rows == 8,
          "arr: rc %d n %zu skipped %zu (%s)", rc, d ? d->n : 0, d ? d->n_skipped : 0, err.msg);
    if (d) {
        CHECK(has_msg(d, "arr.json:3: a row must be a JSON object, got array"), "msg line 3: %s",
              d->msgs[0]);
        CHECK(has_msg(d, "arr.json:4: \"output\" must be a string, got nothing"), "msg line 4");
        CHECK(has_msg(d, "arr.json:5: \"output\" must be a string, got number"), "msg line 5");
        CHECK(has_msg(d, "arr.json:7: invalid JSON"), "msg line 7");
        CHECK(d->n_msgs == DATASET_MAX_MSGS, "first %d messages kept", DATASET_MAX_MSGS);
        char *s = tokenizer_decode(tok, d->ex[1].ids, (size_t)d->ex[1].n, 0);
        CHECK(strstr(s, "q\"}{") && strstr(s, "]"), "strings with brackets: [%s]", s);
        free(s);
    }
    dataset_free(d);
    d = load("arr", tmpdir, NULL, 0, 0, 1, 0, van, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && !d && strstr(err.msg, "arr.json:3: "), "strict: %s", err.msg);

    d = load("lines", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == 0 && d && d->n == 2 && d->n_skipped == 3, "jsonl: n %zu skipped %zu", d ? d->n : 0,
          d ? d->n_skipped : 0);
    if (d) {
        CHECK(has_msg(d, "lines.jsonl:3: invalid JSON"), "jsonl line 3 (blank line counted)");
        CHECK(has_msg(d, "lines.jsonl:4: \"hist\"[0] must be a [query, response] pair"),
              "jsonl line 4");
        CHECK(has_msg(d, "lines.jsonl:5: \"sys\" must be a string, got number"), "jsonl line 5");
        /* row 1: system S, history h1/r1, then a/b: two trained turns */
        char *s = tokenizer_decode(tok, d->ex[0].ids, (size_t)d->ex[0].n, 0);
        CHECK(!strcmp(s, "<s> Sh1 r1</s> a b</s>") || strstr(s, "r1</s>"), "history: [%s]", s);
        free(s);
        int runs = 0;
        for (int i = 0; i < d->ex[0].n; i++)
            runs += d->ex[0].labels[i] != TEMPLATE_IGNORE &&
                    (i == 0 || d->ex[0].labels[i - 1] == TEMPLATE_IGNORE);
        CHECK(runs == 2, "history turn trains too (%d runs)", runs);
    }
    dataset_free(d);

    d = load("chat", tmpdir, NULL, 0, 0, 0, 0, chatml, &rc, &err);
    CHECK(rc == 0 && d && d->n == 1 && d->n_skipped == 4, "sharegpt: n %zu skipped %zu",
          d ? d->n : 0, d ? d->n_skipped : 0);
    if (d) {
        CHECK(has_msg(d, "chat.json:2: \"messages\"[1]: role \"user\" where assistant was "
                         "expected"),
              "alternation: %s", d->msgs[0]);
        CHECK(has_msg(d, "chat.json:3: \"messages\" has 1 messages"), "odd count");
        CHECK(has_msg(d, "chat.json:4: \"messages\" must be an array, got string"), "type");
        CHECK(has_msg(d, "chat.json:5: \"messages\" has no messages"), "empty");
        char *s = tokenizer_decode(tok, d->ex[0].ids, (size_t)d->ex[0].n, 0);
        CHECK(strstr(s, "<|im_start|>system\nS<|im_end|>") != NULL, "leading system message: [%s]",
              s);
        free(s);
    }
    dataset_free(d);

    d = load("cut", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && !d && strstr(err.msg, "cut.json:2: unexpected end of file"),
          "truncated array is fatal: %s", err.msg);
    d = load("objlines", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == 0 && d && d->n == 2, "a .json of JSON lines: %s", err.msg);
    dataset_free(d);
    d = load("dpo", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "not supported for sft"), "dpo: %s", err.msg);
    d = load("kto", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "only for --stage kto"), "kto: %s", err.msg);
    d = load("hub", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "file_name"), "hub: %s", err.msg);
    d = load("csv", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc != 0 && !d && strstr(err.msg, "a.csv"), "csv: %s", err.msg);
    put("dataset_info.json", "[1]");
    d = load("arr", tmpdir, NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && !d && strstr(err.msg, "dataset_info.json"), "bad registry: %s",
          err.msg);
    d = load("arr", "/nonexistent/dir", NULL, 0, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EIO && !d, "missing dir: %s", err.msg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    CHECK(system(cmd) == 0, "cleanup");
}

// --- split and batcher

static void test_split(void) {
    Dataset *a = load_ok("identity", 0, 0, 0, van), *b = load_ok("identity", 0, 0, 0, van);
    if (!a || !b) return;
    Dataset *tr1, *va1, *tr2, *va2;
    TunaErr err = {0};
    CHECK(dataset_split(a, 0.1, 42, &tr1, &va1, &err) == 0, "split: %s", err.msg);
    CHECK(dataset_split(b, 0.1, 42, &tr2, &va2, &err) == 0, "split: %s", err.msg);
    CHECK(va1->n == 9 && tr1->n == 82 && a->n == 0, "sizes %zu/%zu", tr1->n, va1->n);
    int same = va1->n == va2->n;
    for (size_t i = 0; same && i < va1->n; i++)
        same = va1->ex[i].n == va2->ex[i].n &&
               !memcmp(va1->ex[i].ids, va2->ex[i].ids, (size_t)va1->ex[i].n * 4);
    CHECK(same, "same seed, same split");
    CHECK(tr1->n_tokens + va1->n_tokens == b->n_tokens, "tokens conserved");
    dataset_free(tr2);
    dataset_free(va2);
    dataset_free(b);
    b = load_ok("identity", 0, 0, 0, van);
    CHECK(dataset_split(b, 9, 7, &tr2, &va2, &err) == 0 && va2->n == 9, "val_size 9 rows");
    int diff = 0;
    for (size_t i = 0; i < 9 && i < va2->n; i++)
        diff |= va1->ex[i].n != va2->ex[i].n ||
                memcmp(va1->ex[i].ids, va2->ex[i].ids, (size_t)va1->ex[i].n * 4);
    CHECK(diff, "another seed, another split");
    Dataset *x, *y;
    CHECK(dataset_split(tr1, 1000, 1, &x, &y, &err) == TUNA_EINVAL, "val_size too large");
    CHECK(dataset_split(tr1, -0.5, 1, &x, &y, &err) == TUNA_EINVAL, "val_size < 0");
    dataset_free(tr1);
    dataset_free(va1);
    dataset_free(tr2);
    dataset_free(va2);
    dataset_free(a);
    dataset_free(b);
    dataset_free(NULL);
}

static int batch_eq(const Batch *x, const Batch *y) {
    size_t n = (size_t)x->B * (size_t)x->T;
    return x->B == y->B && x->T == y->T && !memcmp(x->ids, y->ids, n * 4) &&
           !memcmp(x->targets, y->targets, n * 4) && x->n_targets == y->n_targets &&
           x->n_tokens == y->n_tokens;
}

static void test_batcher(void) {
    Dataset *d = load_ok("identity", 0, 0, 0, van);
    if (!d) return;
    TunaErr err = {0};
    Batcher b1, b2;
    const int B = 4, T = 48;
    CHECK(batcher_init(&b1, d, B, T, 0, 1234, &err) == 0, "init: %s", err.msg);
    CHECK(batcher_init(&b2, d, B, T, 0, 1234, &err) == 0, "init: %s", err.msg);
    size_t per = batcher_batches_per_epoch(&b1);
    CHECK(per == (91 + B - 1) / B, "batches per epoch %zu", per);
    Batch x, y;
    int same = 1, wraps = 0, shift_ok = 1;
    size_t tok_epoch0 = 0, want_tok = 0;
    for (size_t i = 0; i < d->n; i++)
        want_tok += (size_t)(d->ex[i].n < T ? d->ex[i].n : T);
    for (size_t s = 0; s < per + 3; s++) {
        int w1 = batcher_next(&b1, &x);
        int w2 = batcher_next(&b2, &y);
        same &= w1 == w2 && batch_eq(&x, &y);
        wraps += w1;
        if (s < per) tok_epoch0 += (size_t)x.n_tokens;
        if (w1) CHECK(s == per && b1.epoch == 1, "wrap at %zu", s);
        /* each row: targets[t] = labels[t+1] of the example in it, -100 at its end and pads */
        for (int r = 0; r < B; r++) {
            const int32_t *ids = x.ids + r * T, *tg = x.targets + r * T;
            const Example *e = NULL;
            for (size_t k = 0; k < d->n && !e; k++)
                if (d->ex[k].n >= 2 &&
                    !memcmp(d->ex[k].ids, ids, (size_t)(d->ex[k].n < T ? d->ex[k].n : T) * 4))
                    e = &d->ex[k];
            if (!e) continue; /* an empty padding row */
            int m = e->n < T ? e->n : T;
            for (int t = 0; t < T; t++) {
                int32_t want = t + 1 < m ? e->labels[t + 1] : TEMPLATE_IGNORE;
                shift_ok &= tg[t] == want && (t < m || ids[t] == 0);
            }
        }
    }
    CHECK(same, "same seed, same batches");
    CHECK(wraps == 1, "one wrap in per+3 steps (%d)", wraps);
    CHECK(tok_epoch0 == want_tok, "an epoch sees every example once (%zu vs %zu)", tok_epoch0,
          want_tok);
    CHECK(shift_ok, "targets are labels shifted left, -100 at ends and pads");
    /* resume: a fresh batcher seeked to (epoch, cursor) gives the same next batch */
    int ep = b1.epoch;
    size_t cur = b1.cursor;
    batcher_next(&b1, &x);
    Batcher b3;
    CHECK(batcher_init(&b3, d, B, T, 0, 1234, &err) == 0 && batcher_seek(&b3, ep, cur, &err) == 0,
          "seek: %s", err.msg);
    batcher_next(&b3, &y);
    CHECK(batch_eq(&x, &y), "resume gives the same batch");
    /* the epoch permutation differs from epoch 0's */
    Batcher b4;
    batcher_init(&b4, d, B, T, 0, 1234, &err);
    batcher_next(&b4, &y);
    batcher_seek(&b3, 1, 0, &err);
    batcher_next(&b3, &x);
    CHECK(!batch_eq(&x, &y), "epoch 1 is shuffled differently");
    CHECK(batcher_seek(&b3, 0, per + 1, &err) == TUNA_EINVAL, "seek past the end");
    batcher_free(&b1);
    batcher_free(&b2);
    batcher_free(&b3);
    batcher_free(&b4);

    /* disable_shuffling and drop_last: batch k holds examples kB .. kB + B - 1 in dataset order,
     * every epoch; 91 examples in batches of 4: 22 batches, the 3 left over dropped */
    Batcher ns;
    CHECK(batcher_init(&ns, d, B, T, BATCH_NO_SHUFFLE | BATCH_DROP_LAST, 1234, &err) == 0,
          "no-shuffle init: %s", err.msg);
    size_t per_ns = batcher_batches_per_epoch(&ns);
    CHECK(per_ns == 91 / B, "drop_last: %zu batches an epoch, want %d", per_ns, 91 / B);
    int in_order = 1, wrap_at = -1;
    for (size_t s = 0; s < 2 * per_ns; s++) {
        if (batcher_next(&ns, &x) && wrap_at < 0) wrap_at = (int)s;
        for (int r = 0; r < B; r++) {
            const Example *e = &d->ex[(s % per_ns) * (size_t)B + (size_t)r];
            int m = e->n < T ? e->n : T;
            in_order &= !memcmp(e->ids, x.ids + r * T, (size_t)m * 4);
        }
    }
    CHECK(in_order, "disable_shuffling: the examples in dataset order, every epoch");
    CHECK(wrap_at == (int)per_ns, "drop_last: the epoch wraps after %zu full batches (at %d)",
          per_ns, wrap_at);
    batcher_free(&ns);

    /* packing: fewer rows, every example still once, boundaries not predicted */
    Batcher p;
    CHECK(batcher_init(&p, d, B, 256, 1, 99, &err) == 0, "pack init");
    size_t pper = batcher_batches_per_epoch(&p), ptok = 0, want = 0;
    int ptargets = 0, want_targets = 0, multi = 0;
    for (size_t i = 0; i < d->n; i++) {
        int m = d->ex[i].n < 256 ? d->ex[i].n : 256; /* longer examples are cut to T */
        want += (size_t)m;
        for (int t = 0; t + 1 < m; t++)
            want_targets += d->ex[i].labels[t + 1] != -100;
    }
    for (size_t s = 0; s < pper; s++) {
        batcher_next(&p, &x);
        ptok += (size_t)x.n_tokens;
        ptargets += x.n_targets;
        for (int r = 0; r < B; r++) {
            int bos = 0;
            for (int t = 0; t < 256; t++)
                bos += x.ids[r * 256 + t] == 1;
            multi |= bos > 1;
        }
    }
    CHECK(pper < per && ptok == want && ptargets == want_targets && multi,
          "packing: %zu batches (vs %zu), %zu tokens (want %zu), %d targets (want %d)", pper, per,
          ptok, want, ptargets, want_targets);
    batcher_free(&p);
    batcher_free(NULL);
    Batcher bad;
    CHECK(batcher_init(&bad, d, 0, 16, 0, 1, &err) == TUNA_EINVAL, "B=0 rejected");
    dataset_free(d);
}

static int ex_eq(const Example *a, const Example *b) {
    return a->n == b->n && !memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n) &&
           !memcmp(a->labels, b->labels, sizeof(int32_t) * (size_t)a->n);
}

/* mix_strategy interleave, as datasets.interleave_datasets orders a map-style dataset: identity
 * (i examples) and alpaca_en_demo (a) in turn, until the first runs out (2 min) or until both
 * have (2 max, identity starting over); with probabilities, each source's examples in order,
 * the one that ran out whole and the other a prefix (under), or both whole at least once
 * (over) */
static void test_mix(void) {
    TunaErr err = {0};
    DatasetOptions o = {.names = "identity,alpaca_en_demo", .dataset_dir = "datasets"};
    Dataset *cat = NULL, *mx = NULL;
    CHECK(dataset_load(&o, tok, van, &cat, &err) == 0, "concat: %s", err.msg);
    if (!cat) return;
    Dataset *id = load_ok("identity", 0, 0, 0, van);
    size_t ni = id ? id->n : 0, na = cat->n - ni;
    const Example *I = cat->ex, *A = cat->ex + ni;
    CHECK(ni == 91 && na > ni, "identity %zu, alpaca %zu examples", ni, na);
    for (int over = 0; over < 2; over++) {
        o.mix = over ? DATASET_MIX_OVER : DATASET_MIX_UNDER;
        CHECK(dataset_load(&o, tok, van, &mx, &err) == 0, "interleave: %s", err.msg);
        size_t rounds = over ? na : ni, bad = 0;
        CHECK(mx && mx->n == 2 * rounds, "interleave %s: %zu examples, want %zu",
              over ? "over" : "under", mx ? mx->n : 0, 2 * rounds);
        for (size_t k = 0; mx && k < rounds && 2 * k + 1 < mx->n; k++)
            bad += !ex_eq(&mx->ex[2 * k], &I[k % ni]) + !ex_eq(&mx->ex[2 * k + 1], &A[k]);
        CHECK(!bad, "interleave %s: %zu examples out of turn", over ? "over" : "under", bad);
        dataset_free(mx);
        mx = NULL;
    }
    double probs[2] = {0.25, 0.75};
    o.probs = probs;
    o.n_probs = 2;
    o.mix_seed = 7;
    for (int over = 0; over < 2; over++) {
        o.mix = over ? DATASET_MIX_OVER : DATASET_MIX_UNDER;
        CHECK(dataset_load(&o, tok, van, &mx, &err) == 0, "interleave probs: %s", err.msg);
        size_t ki = 0, ka = 0, bad = 0;
        for (size_t j = 0; mx && j < mx->n; j++) {
            if (ex_eq(&mx->ex[j], &I[ki % ni]))
                ki++;
            else if (ex_eq(&mx->ex[j], &A[ka % na]))
                ka++;
            else
                bad++;
        }
        int ok = over ? ki >= ni && ka >= na && (ki % ni == 0 || ka % na == 0)
                      : (ki == ni && ka < na) || (ka == na && ki < ni);
        CHECK(mx && !bad && ok, "interleave %s with 0.25/0.75: %zu identity, %zu alpaca, %zu other",
              over ? "over" : "under", ki, ka, bad);
        printf("  interleave %s, probabilities 0.25/0.75: %zu identity, %zu alpaca examples\n",
               over ? "over" : "under", ki, ka);
        dataset_free(mx);
        mx = NULL;
    }
    dataset_free(id);
    dataset_free(cat);
}

int main(void) {
    TunaErr err = {0};
    if (tokenizer_load("models/stories260K", &tok, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    if (template_load("templates", "vanilla", &van, &err) ||
        template_load("templates", "chatml", &chatml, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    test_identity();
    test_alpaca_demo();
    test_jsonl_sharegpt_tools();
    test_pt();
    test_cutoff();
    test_malformed();
    test_split();
    test_batcher();
    test_mix();
    template_free(van);
    template_free(chatml);
    tokenizer_free(tok);
    return test_report("test_dataset");
}
