/* test_pref_data.c: preference (ranking) datasets as LLaMA-Factory reads them: alpaca rows with
 * chosen/rejected strings and sharegpt rows with chosen/rejected messages become pairs of
 * Examples (chosen, rejected) that share the masked prompt; the pairwise truncation
 * (infer_seqlen of the prompt and the longer answer); bad rows named FILE:LINE; stages that
 * refuse the other kind of dataset; the split by pairs and the batcher's chosen-then-rejected
 * rows. The stories260K tokenizer, the vanilla template (prompt, then answer + EOS), temp files,
 * and the shipped datasets/dpo_en_demo.json (LLaMA-Factory's demo). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/dataset.h"
#include "src/xalloc.h"
#include "tests/data_fixture.h"
#include "tests/harness.h"

static Tokenizer *tok;
static Template *van, *chatml;
static char tmpdir[64];

static Dataset *load(const char *names, const char *dir, int cutoff, int strict, int ranking,
                     const Template *t, int *rc, TunaErr *err) {
    DatasetOptions o = {.names = names,
                        .dataset_dir = dir,
                        .cutoff_len = cutoff,
                        .strict = strict,
                        .ranking = ranking};
    Dataset *d = NULL;
    *rc = dataset_load(&o, tok, t, &d, err);
    return d;
}

static void test_alpaca_sharegpt(void) {
    test_put_file(
            tmpdir, "dataset_info.json",
            "{\"pa\": {\"file_name\": \"pa.json\", \"ranking\": true, \"columns\": {\"prompt\": "
            "\"instruction\", \"query\": \"input\", \"chosen\": \"chosen\", \"rejected\": "
            "\"rejected\"}},\n"
            " \"ps\": {\"file_name\": \"ps.jsonl\", \"formatting\": \"sharegpt\", \"ranking\": "
            "true, "
            "\"columns\": {\"messages\": \"conversations\", \"chosen\": \"chosen\", \"rejected\": "
            "\"rejected\"}},\n"
            " \"nocol\": {\"file_name\": \"pa.json\", \"ranking\": true},\n"
            " \"plain\": {\"file_name\": \"plain.json\"},\n"
            " \"cut\": {\"file_name\": \"cut.json\", \"ranking\": true, \"columns\": {\"prompt\": "
            "\"instruction\", \"chosen\": \"chosen\", \"rejected\": \"rejected\"}}}\n");
    test_put_file(tmpdir, "pa.json",
                  "[\n"
                  "{\"instruction\": \"Lily saw a cat.\", \"input\": \"What did she do?\",\n"
                  " \"chosen\": \"She smiled.\", \"rejected\": \"The sky was big and blue.\"},\n"
                  "{\"instruction\": \"Tom ran.\", \"chosen\": 7, \"rejected\": \"no\"},\n"
                  "{\"instruction\": \"Tom ran.\", \"chosen\": \"He was fast.\"}\n"
                  "]\n");
    test_put_file(
            tmpdir, "ps.jsonl",
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi.\"}, {\"from\": \"gpt\", "
            "\"value\": \"Hello.\"}, {\"from\": \"human\", \"value\": \"A story?\"}], \"chosen\": "
            "{\"from\": \"gpt\", \"value\": \"Once upon a time.\"}, \"rejected\": {\"from\": "
            "\"gpt\", "
            "\"value\": \"No.\"}}\n"
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi.\"}, {\"from\": \"gpt\", "
            "\"value\": \"Hello.\"}], \"chosen\": {\"from\": \"gpt\", \"value\": \"a\"}, "
            "\"rejected\": "
            "{\"from\": \"gpt\", \"value\": \"b\"}}\n"
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi.\"}], \"chosen\": "
            "{\"from\": "
            "\"human\", \"value\": \"a\"}, \"rejected\": {\"from\": \"gpt\", \"value\": \"b\"}}\n");
    test_put_file(tmpdir, "plain.json", "[{\"instruction\": \"a\", \"output\": \"b\"}]\n");
    TunaErr err = {0};
    int rc;
    Dataset *d = load("pa", tmpdir, 0, 0, 1, van, &rc, &err);
    CHECK(rc == 0 && d && d->pairs && d->n == 2 && d->n_rows == 3 && d->n_skipped == 2,
          "alpaca pairs: rc %d n %zu skipped %zu: %s", rc, d ? d->n : 0, d ? d->n_skipped : 0,
          err.msg);
    if (d && d->n == 2) {
        /* prompt = instruction + "\n" + input; both answers after the same masked prompt */
        CHECK(test_is_example(tok, &d->ex[0], "Lily saw a cat.\nWhat did she do?", "She smiled."),
              "chosen: BOS prompt answer EOS, prompt masked");
        CHECK(test_is_example(tok, &d->ex[1], "Lily saw a cat.\nWhat did she do?",
                              "The sky was big and blue."),
              "rejected: the same prompt, its own answer");
        char want[300];
        snprintf(want, sizeof want, "%s/pa.json:4: \"chosen\" must be a string, got number",
                 tmpdir);
        CHECK(d->n_msgs >= 1 && !strcmp(d->msgs[0], want), "bad chosen: %s", d->msgs[0]);
        snprintf(want, sizeof want, "%s/pa.json:5: \"rejected\" must be a string, got nothing",
                 tmpdir);
        CHECK(d->n_msgs >= 2 && !strcmp(d->msgs[1], want), "no rejected: %s", d->msgs[1]);
    }
    dataset_free(d);
    d = load("pa", tmpdir, 0, 1, 1, van, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && !d && strstr(err.msg, "pa.json:4: \"chosen\" must be a string"),
          "strict: the first bad row is fatal, named: %s", err.msg);

    d = load("ps", tmpdir, 0, 0, 1, van, &rc, &err);
    CHECK(rc == 0 && d && d->n == 2 && d->n_skipped == 2, "sharegpt pairs: rc %d n %zu: %s", rc,
          d ? d->n : 0, err.msg);
    if (d && d->n == 2) {
        /* the history is part of the masked prompt: user, assistant + EOS, user */
        size_t n1, n2, n3;
        int32_t *a = test_encode(tok, "Hi.", &n1), *b = test_encode(tok, "Hello.", &n2),
                *c = test_encode(tok, "A story?", &n3);
        int p = test_prompt_len(&d->ex[0]);
        CHECK(p == (int)(1 + n1 + n2 + 1 + n3) && p == test_prompt_len(&d->ex[1]) &&
                      !memcmp(d->ex[0].ids, d->ex[1].ids, (size_t)p * 4) &&
                      d->ex[0].ids[1 + n1 + n2] == 2,
              "sharegpt: the prompt holds the history, masked, shared (p=%d)", p);
        free(a);
        free(b);
        free(c);
        size_t na, nb;
        int32_t *x = test_encode(tok, "Once upon a time.", &na), *y = test_encode(tok, "No.", &nb);
        CHECK(d->ex[0].n == p + (int)na + 1 && !memcmp(d->ex[0].ids + p, x, na * 4) &&
                      d->ex[1].n == p + (int)nb + 1 && !memcmp(d->ex[1].ids + p, y, nb * 4),
              "sharegpt answers");
        free(x);
        free(y);
        CHECK(d->n_msgs == 2 && strstr(d->msgs[0], "ps.jsonl:2: \"conversations\" must end with a "
                                                   "user message"),
              "an even prompt: %s", d->n_msgs ? d->msgs[0] : "");
        CHECK(d->n_msgs == 2 && strstr(d->msgs[1], "ps.jsonl:3: \"chosen\": role \"human\" where "
                                                   "gpt was expected"),
              "a chosen answer from the user: %s", d->n_msgs > 1 ? d->msgs[1] : "");
    }
    dataset_free(d);

    /* the stages refuse the other kind of dataset, naming it */
    d = load("pa", tmpdir, 0, 0, 0, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && strstr(err.msg, "\"pa\" is a ranking"), "sft refuses: %s", err.msg);
    d = load("plain", tmpdir, 0, 0, 1, van, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && strstr(err.msg, "\"plain\" is not a ranking dataset"),
          "dpo refuses plain data: %s", err.msg);
    d = load("nocol", tmpdir, 0, 0, 1, van, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && strstr(err.msg, "needs columns.chosen and columns.rejected"),
          "ranking without columns: %s", err.msg);
}

/* LLaMA-Factory's infer_seqlen on the prompt and the longer answer: both answers get the same
 * budget, the prompt keeps its start. */
static void test_cutoff(void) {
    const char *P = "One day a little girl named Lily went to the park with her mom and dad.";
    const char *C = "She played on the swings and the slide and had a very happy day.";
    const char *R = "Bad.";
    char row[600];
    snprintf(row, sizeof row,
             "[{\"instruction\": \"%s\", \"chosen\": \"%s\", \"rejected\": \"%s\"}]\n", P, C, R);
    test_put_file(tmpdir, "cut.json", row);
    size_t np, nc, nr;
    int32_t *p = test_encode(tok, P, &np), *c = test_encode(tok, C, &nc),
            *r = test_encode(tok, R, &nr);
    size_t S = 1 + np, Tc = nc + 1, Tr = nr + 1; /* BOS + prompt; answer + EOS */
    int cuts[] = {0, 24, 2 * (int)Tc + 2, (int)(S + Tc), 9};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        int cut = cuts[k];
        size_t s = S, t = Tc;
        if (cut > 0) { /* infer_seqlen, transcribed */
            size_t mt = t * 2 < (size_t)cut ? (size_t)cut
                        : S * 2 < (size_t)cut
                                ? (size_t)cut - S
                                : (size_t)((double)cut * ((double)Tc / (double)(S + Tc)));
            t = Tc < mt ? Tc : mt;
            size_t ms = (size_t)cut > t ? (size_t)cut - t : 0;
            s = S < ms ? S : ms;
        }
        TunaErr err = {0};
        int rc;
        Dataset *d = load("cut", tmpdir, cut, 1, 1, van, &rc, &err);
        CHECK(rc == 0 && d && d->n == 2, "cutoff %d: %s", cut, err.msg);
        if (d && d->n == 2) {
            size_t tr = Tr < t ? Tr : t;
            CHECK((size_t)d->ex[0].n == s + t && (size_t)d->ex[1].n == s + tr &&
                          test_prompt_len(&d->ex[0]) == (int)s &&
                          test_prompt_len(&d->ex[1]) == (int)s &&
                          !memcmp(d->ex[0].ids + 1, p, (s - 1) * 4) &&
                          !memcmp(d->ex[0].ids + s, c, (t < nc ? t : nc) * 4) &&
                          !memcmp(d->ex[1].ids + s, r, (tr < nr ? tr : nr) * 4),
                  "cutoff %d: prompt %zu, answers %zu and %zu (got %d, %d)", cut, s, t, tr,
                  d->ex[0].n, d->ex[1].n);
            CHECK((cut > 0 && (size_t)cut < S + Tc) == (d->n_truncated == 1),
                  "cutoff %d: truncated counted", cut);
        }
        dataset_free(d);
    }
    free(p);
    free(c);
    free(r);
}

/* The shipped demo (300 sharegpt pairs): every pair shares its masked prompt; the split keeps
 * pairs; a batch is B chosen rows then the B rejected of the same pairs. */
static void test_demo_split_batch(void) {
    TunaErr err = {0};
    int rc;
    Dataset *d = load("dpo_en_demo", "datasets", 256, 1, 1, chatml, &rc, &err);
    CHECK(rc == 0 && d && d->pairs && d->n_rows == 300 && d->n == 2 * (300 - d->n_dropped),
          "dpo_en_demo: rc %d n %zu rows %zu: %s", rc, d ? d->n : 0, d ? d->n_rows : 0, err.msg);
    if (!d) return;
    int shared = 1, bounded = 1;
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const Example *c = &d->ex[i], *r = &d->ex[i + 1];
        int p = test_prompt_len(c);
        shared &= p == test_prompt_len(r) && p > 0 && p < c->n && p < r->n &&
                  !memcmp(c->ids, r->ids, (size_t)p * 4);
        bounded &= c->n <= 256 && r->n <= 256;
    }
    CHECK(shared, "every pair shares its masked prompt");
    CHECK(bounded && d->n_truncated > 0, "cutoff 256 (%zu truncated)", d->n_truncated);
    Dataset *tr = NULL, *va = NULL;
    size_t pairs = d->n / 2;
    rc = dataset_split(d, 0.1, 42, &tr, &va, &err);
    CHECK(rc == 0 && tr && va && tr->pairs && va->pairs &&
                  va->n == 2 * (size_t)(pairs / 10.0 + 0.5) && tr->n + va->n == 2 * pairs,
          "split by pairs: %zu + %zu", tr ? tr->n : 0, va ? va->n : 0);
    int kept = 1;
    for (size_t i = 0; tr && i + 1 < tr->n; i += 2)
        kept &= test_prompt_len(&tr->ex[i]) == test_prompt_len(&tr->ex[i + 1]) &&
                !memcmp(tr->ex[i].ids, tr->ex[i + 1].ids, (size_t)test_prompt_len(&tr->ex[i]) * 4);
    CHECK(kept, "the split keeps each pair together, chosen first");
    Batcher b;
    rc = tr ? batcher_init(&b, tr, 3, 256, 0, 7, &err) : -1;
    CHECK(rc == 0, "batcher: %s", err.msg);
    if (!rc) {
        b.pad_multiple = 8;
        Batch bt;
        batcher_next(&b, &bt);
        CHECK(bt.B == 6 && bt.T % 8 == 0 && bt.T <= 256, "2B rows (%d), T %d", bt.B, bt.T);
        int ok = 1, n_t = 0;
        for (int r = 0; r < 3; r++) {
            const int32_t *ci = bt.ids + (size_t)r * bt.T, *ri = bt.ids + (size_t)(3 + r) * bt.T;
            int p = 0; /* the shared prompt: the first target is the first answer token */
            while (p < bt.T && bt.targets[(size_t)r * bt.T + p] == TEMPLATE_IGNORE)
                p++;
            ok &= p < bt.T && bt.targets[(size_t)(3 + r) * bt.T + p] != TEMPLATE_IGNORE &&
                  (p == 0 || bt.targets[(size_t)(3 + r) * bt.T + p - 1] == TEMPLATE_IGNORE) &&
                  !memcmp(ci, ri, (size_t)(p + 1) * 4);
        }
        for (int i = 0; i < bt.B * bt.T; i++)
            n_t += bt.targets[i] != TEMPLATE_IGNORE;
        CHECK(ok, "row r and row B + r are one pair (same prompt, answers after it)");
        CHECK(n_t == bt.n_targets, "n_targets %d", bt.n_targets);
        batcher_free(&b);
        CHECK(batcher_init(&b, tr, 3, 256, BATCH_PACK, 7, &err) == TUNA_EUNSUP,
              "no packing of pairs");
    }
    dataset_free(tr);
    dataset_free(va);
    dataset_free(d);
}

int main(void) {
    TunaErr err = {0};
    if (tokenizer_load("models/stories260K", &tok, &err) ||
        template_load("templates", "vanilla", &van, &err) ||
        template_load("templates", "chatml", &chatml, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    strcpy(tmpdir, "/tmp/tuna_pref_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "FAIL: mkdtemp\n");
        return 1;
    }
    test_alpaca_sharegpt();
    test_cutoff();
    test_demo_split_batch();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    template_free(van);
    template_free(chatml);
    tokenizer_free(tok);
    return test_report("test_pref_data");
}
