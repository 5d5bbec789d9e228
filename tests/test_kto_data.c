/* test_kto_data.c: kto datasets as LLaMA-Factory reads them (columns.kto_tag, a boolean): each
 * row one Example, the prompt (every message before the last) masked, the last reply trained,
 * its tag 1 (true, desirable) or 0 (false); a tag that is not a boolean is a bad row named
 * FILE:LINE; stages that refuse the other kind of dataset; the split keeps the tags; the
 * batcher's rows: the examples, then each one's KL sequence (its prompt and the previous
 * example's completion, cycled, TRL's KTOTrainer). The stories260K tokenizer, the vanilla
 * template, temp files, and ../shared/datasets/kto_en_demo.json when present. */
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
static Template *van;
static char tmpdir[64];

static Dataset *load(const char *names, const char *dir, int cutoff, int strict, int kto, int *rc,
                     TunaErr *err) {
    DatasetOptions o = {
            .names = names, .dataset_dir = dir, .cutoff_len = cutoff, .strict = strict, .kto = kto};
    Dataset *d = NULL;
    *rc = dataset_load(&o, tok, van, &d, err);
    return d;
}

static void test_rows(void) {
    test_put_file(
            tmpdir, "dataset_info.json",
            "{\"ks\": {\"file_name\": \"ks.json\", \"formatting\": \"sharegpt\", \"columns\": "
            "{\"messages\": \"messages\", \"kto_tag\": \"label\"}, \"tags\": {\"role_tag\": "
            "\"role\", "
            "\"content_tag\": \"content\", \"user_tag\": \"user\", \"assistant_tag\": "
            "\"assistant\"}},\n"
            " \"ka\": {\"file_name\": \"ka.jsonl\", \"columns\": {\"prompt\": \"instruction\", "
            "\"response\": \"output\", \"kto_tag\": \"good\"}},\n"
            " \"plain\": {\"file_name\": \"plain.json\"}}\n");
    test_put_file(
            tmpdir, "ks.json",
            "[\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Lily saw a cat.\"}, {\"role\": "
            "\"assistant\", \"content\": \"She smiled.\"}], \"label\": true},\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Tom ran.\"}, {\"role\": "
            "\"assistant\", \"content\": \"The sky.\"}], \"label\": false},\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Tom ran.\"}, {\"role\": "
            "\"assistant\", \"content\": \"He was fast.\"}], \"label\": \"yes\"},\n"
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Tom ran.\"}], \"label\": true}\n"
            "]\n");
    test_put_file(tmpdir, "ka.jsonl",
                  "{\"instruction\": \"Tom ran.\", \"output\": \"He was fast.\", \"good\": "
                  "false}\n"
                  "{\"instruction\": \"Tom ran.\", \"output\": \"He was fast.\"}\n");
    test_put_file(tmpdir, "plain.json", "[{\"instruction\": \"a\", \"output\": \"b\"}]\n");
    TunaErr err = {0};
    int rc;
    Dataset *d = load("ks", tmpdir, 0, 0, 1, &rc, &err);
    CHECK(rc == 0 && d && d->kto && d->n == 2 && d->n_skipped == 2,
          "sharegpt kto: rc %d n %zu skipped %zu: %s", rc, d ? d->n : 0, d ? d->n_skipped : 0,
          err.msg);
    if (d && d->n == 2) {
        CHECK(test_is_example(tok, &d->ex[0], "Lily saw a cat.", "She smiled.") &&
                      d->ex[0].tag == 1,
              "desirable: BOS prompt answer EOS, prompt masked, tag 1");
        CHECK(test_is_example(tok, &d->ex[1], "Tom ran.", "The sky.") && d->ex[1].tag == 0,
              "undesirable: tag 0");
        char want[300];
        snprintf(want, sizeof want,
                 "%s/ks.json:4: \"label\" (kto_tag) must be true or false, got string", tmpdir);
        CHECK(d->n_msgs >= 1 && !strcmp(d->msgs[0], want), "bad tag: %s", d->msgs[0]);
        CHECK(d->n_msgs >= 2 && strstr(d->msgs[1], "ks.json:5:") &&
                      strstr(d->msgs[1], "end with an assistant reply"),
              "no reply: %s", d->msgs[1]);
    }
    dataset_free(d);
    d = load("ks", tmpdir, 0, 1, 1, &rc, &err);
    CHECK(rc == TUNA_EFORMAT && !d && strstr(err.msg, "ks.json:4: \"label\" (kto_tag) must be"),
          "strict: the first bad row is fatal, named: %s", err.msg);
    d = load("ka", tmpdir, 0, 0, 1, &rc, &err);
    CHECK(rc == 0 && d && d->n == 1 && d->n_skipped == 1 && d->ex[0].tag == 0 &&
                  test_is_example(tok, &d->ex[0], "Tom ran.", "He was fast."),
          "alpaca kto: rc %d n %zu: %s", rc, d ? d->n : 0, err.msg);
    if (d && d->n_msgs)
        CHECK(strstr(d->msgs[0], "ka.jsonl:2: \"good\" (kto_tag) must be true or false, got "
                                 "nothing") != NULL,
              "missing tag: %s", d->msgs[0]);
    dataset_free(d);
    d = load("ks", tmpdir, 0, 0, 0, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "only for --stage kto"), "sft refuses: %s",
          err.msg);
    d = load("plain", tmpdir, 0, 0, 1, &rc, &err);
    CHECK(rc == TUNA_EUNSUP && !d && strstr(err.msg, "no columns.kto_tag"), "kto refuses: %s",
          err.msg);
    /* the cutoff: infer_seqlen of prompt and reply */
    d = load("ks", tmpdir, 6, 0, 1, &rc, &err);
    CHECK(rc == 0 && d && d->n == 2 && d->ex[0].n <= 6 && d->ex[1].n <= 6 && d->n_truncated == 2 &&
                  test_prompt_len(&d->ex[0]) > 0 && test_prompt_len(&d->ex[0]) < d->ex[0].n,
          "cutoff 6: both kept, both parts in, n %d %d", d ? d->ex[0].n : 0, d ? d->ex[1].n : 0);
    dataset_free(d);
}

/* The batcher's KL rows against a direct construction from the examples. */
static void check_batch(const Dataset *d, const Batch *bt, const size_t *order_ex, int nr, int B) {
    int ok = 1, n_t = 0;
    for (int r = 0; r < nr; r++) {
        const Example *e = &d->ex[order_ex[r]], *o = &d->ex[order_ex[(r + nr - 1) % nr]];
        int pe = test_prompt_len(e), po = test_prompt_len(o), m = pe + o->n - po, ne = e->n;
        if (m > bt->T) m = bt->T; /* rows are cut at T */
        if (ne > bt->T) ne = bt->T;
        const int32_t *ki = bt->ids + (size_t)(B + r) * bt->T,
                      *kt = bt->targets + (size_t)(B + r) * bt->T;
        ok &= bt->tags[r] == e->tag && !memcmp(bt->ids + (size_t)r * bt->T, e->ids, (size_t)ne * 4);
        for (int t = 0; t < m; t++) {
            int32_t id = t < pe ? e->ids[t] : o->ids[po + t - pe];
            int32_t want = t + 1 >= m   ? TEMPLATE_IGNORE
                           : t + 1 < pe ? TEMPLATE_IGNORE
                                        : o->ids[po + t + 1 - pe];
            ok &= ki[t] == id && kt[t] == want;
        }
    }
    for (int r = nr; r < B; r++)
        ok &= bt->tags[r] == -1;
    for (int i = 0; i < B * bt->T; i++)
        n_t += bt->targets[i] != TEMPLATE_IGNORE;
    CHECK(ok, "rows 0..B-1 the examples, B + r row r's prompt + row r-1's completion");
    CHECK(n_t == bt->n_targets, "n_targets %d vs %d (the examples' rows)", bt->n_targets, n_t);
}

static void test_demo_split_batch(void) {
    TunaErr err = {0};
    int rc;
    Dataset *d = load("kto_en_demo", "../shared/datasets", 0, 1, 1, &rc, &err);
    if (rc == TUNA_EIO || rc == TUNA_ENOTFOUND) {
        SKIP("../shared/datasets/kto_en_demo.json: %s", err.msg);
        return;
    }
    CHECK(rc == 0 && d && d->n == 300, "kto_en_demo: rc %d n %zu: %s", rc, d ? d->n : 0, err.msg);
    if (!d) return;
    int good = 0;
    for (size_t i = 0; i < d->n; i++)
        good += d->ex[i].tag == 1;
    CHECK(good == 150, "150 desirable, got %d", good);
    Dataset *tr = NULL, *va = NULL;
    rc = dataset_split(d, 0.1, 3, &tr, &va, &err);
    int g2 = 0;
    for (size_t i = 0; tr && i < tr->n; i++)
        g2 += tr->ex[i].tag == 1;
    for (size_t i = 0; va && i < va->n; i++)
        g2 += va->ex[i].tag == 1;
    CHECK(rc == 0 && tr->kto && va->kto && tr->n == 270 && va->n == 30 && g2 == 150,
          "split keeps the tags: %s", err.msg);
    Batcher b;
    rc = batcher_init(&b, va, 4, 512, 0, 7, &err);
    CHECK(rc == 0, "batcher: %s", err.msg);
    if (!rc) {
        b.pad_multiple = 8;
        for (int k = 0; k < 8; k++) { /* 30 = 7 * 4 + 2: the last batch has 2 examples */
            size_t order_ex[4];
            int nr = 0;
            for (int r = 0; r < 4; r++) {
                size_t row = b.cursor * 4 + (size_t)r;
                if (row < b.n_rows) order_ex[nr++] = b.order[b.row_start[row]];
            }
            Batch bt;
            batcher_next(&b, &bt);
            CHECK(bt.B == 8 && bt.T % 8 == 0 && bt.tags, "2B rows (%d), T %d", bt.B, bt.T);
            check_batch(va, &bt, order_ex, nr, 4);
        }
        batcher_free(&b);
        CHECK(batcher_init(&b, va, 3, 256, BATCH_PACK, 7, &err) == TUNA_EUNSUP,
              "no packing of kto examples");
        batcher_init(&b, va, 3, 16, 0, 7, &err); /* rows longer than T are cut at T */
        Batch bt;
        batcher_next(&b, &bt);
        CHECK(bt.T == 16 && bt.B == 6, "T 16: %d", bt.T);
        batcher_free(&b);
    }
    dataset_free(tr);
    dataset_free(va);
    dataset_free(d);
}

int main(void) {
    TunaErr err = {0};
    if (tokenizer_load("models/stories260K", &tok, &err) ||
        template_load("templates", "vanilla", &van, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    strcpy(tmpdir, "/tmp/tuna_kto_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "FAIL: mkdtemp\n");
        return 1;
    }
    test_rows();
    test_demo_split_batch();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    template_free(van);
    tokenizer_free(tok);
    return test_report("test_kto_data");
}
