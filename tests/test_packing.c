/* test_packing.c: neat packing (--packing neat) and length grouping (--group-by-length).
 * - the batcher: BATCH_PACK_NEAT gives the rows of BATCH_PACK (same ids, same targets) plus
 *   seg_start, where each position's example starts (the pads: a span of their own);
 *   BATCH_GROUP_BY_LENGTH keeps every example once per epoch, sorts each mega-batch longest
 *   first, is the same for the same seed, and pads less;
 * - the model: K examples packed into one row with train_set_spans give the same summed loss
 *   and the same gradients as the K examples in K rows of their own (max |Δ| <= 1e-5 relative
 *   to the largest gradient), for full and LoRA training, on models with RoPE, learned
 *   positions (GPT-2), q/k norms (Qwen3) and a sliding window (Mistral), on the cpu and ref
 *   backends;
 * - `tuna train --packing neat` runs (train_config.json keeps "neat"), and refuses ptuning in one
 *   line. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/backend.h"
#include "src/dataset.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/xalloc.h"

// --- the batcher

static void add_example(Dataset *d, int n, int seed) {
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 16;
        d->ex = xrealloc(d->ex, d->cap * sizeof *d->ex);
    }
    Example *e = &d->ex[d->n++];
    e->n = n;
    e->ids = xmalloc(sizeof(int32_t) * (size_t)n);
    e->labels = xmalloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        e->ids[i] = 1 + (seed * 31 + i * 7) % 500;
        e->labels[i] = i < n / 3 ? -100 : e->ids[i];
    }
}

static Dataset *make_data(void) {
    Dataset *d = xcalloc(1, sizeof *d);
    for (int i = 0; i < 300; i++)
        add_example(d, 2 + (i * 37 + i / 7) % 60, i);
    return d;
}

static void test_neat_rows(void) {
    Dataset *d = make_data();
    TunaErr err = {0};
    Batcher pk, nt;
    const int B = 4, T = 128;
    CHECK(batcher_init(&pk, d, B, T, BATCH_PACK, 5, &err) == 0, "pack: %s", err.msg);
    CHECK(batcher_init(&nt, d, B, T, BATCH_PACK_NEAT, 5, &err) == 0, "neat: %s", err.msg);
    CHECK(pk.seg_start == NULL && nt.seg_start != NULL, "seg_start only with neat");
    size_t nb = batcher_batches_per_epoch(&pk);
    CHECK(nb == batcher_batches_per_epoch(&nt), "same batches per epoch: %zu vs %zu", nb,
          batcher_batches_per_epoch(&nt));
    int same = 1, spans_ok = 1, starts = 0;
    for (size_t i = 0; i < nb + 2; i++) { /* into the next epoch */
        Batch a, b;
        batcher_next(&pk, &a);
        batcher_next(&nt, &b);
        if (a.T != b.T || memcmp(a.ids, b.ids, sizeof(int32_t) * (size_t)B * a.T) ||
            memcmp(a.targets, b.targets, sizeof(int32_t) * (size_t)B * a.T))
            same = 0;
        CHECK(a.seg_start == NULL && b.seg_start == nt.seg_start, "batch %zu: seg_start", i);
        /* each row: spans start at 0, never lie after their position, and a new span starts
         * exactly where an example does (the target before it is -100: no cross-example
         * target), and a position's start is the last start at or before it */
        for (int r = 0; r < B; r++) {
            const int32_t *s = b.seg_start + (size_t)r * b.T;
            int last = 0;
            for (int t = 0; t < b.T; t++) {
                if (s[t] != last && s[t] != t) spans_ok = 0;
                if (s[t] == t && t > 0) {
                    starts++;
                    if (b.targets[(size_t)r * b.T + t - 1] != -100) spans_ok = 0;
                }
                last = s[t];
            }
        }
    }
    CHECK(same, "neat rows hold the ids and targets of plain packing");
    CHECK(spans_ok && (size_t)starts > nb, "spans follow the examples (%d starts)", starts);
    batcher_free(&pk);
    batcher_free(&nt);
    dataset_free(d);
}

/* Padding of one epoch: sum over batches of B * (longest row rounded up to 8). */
static size_t epoch_cells(Batcher *b) {
    size_t nb = batcher_batches_per_epoch(b), cells = 0;
    for (size_t i = 0; i < nb; i++) {
        Batch x;
        batcher_next(b, &x);
        cells += (size_t)x.B * (size_t)x.T;
    }
    return cells;
}

static void test_group_by_length(void) {
    Dataset *d = make_data();
    TunaErr err = {0};
    const int B = 4, T = 64;
    Batcher g, g2, plain;
    CHECK(batcher_init(&g, d, B, T, BATCH_GROUP_BY_LENGTH, 9, &err) == 0, "%s", err.msg);
    CHECK(batcher_init(&g2, d, B, T, BATCH_GROUP_BY_LENGTH, 9, &err) == 0, "%s", err.msg);
    CHECK(batcher_init(&plain, d, B, T, 0, 9, &err) == 0, "%s", err.msg);
    /* mega-batches of B * min(50, max(1, n / 4B)) = 4 * 18 = 72, each longest first */
    size_t mega = 72, n = d->n, sorted = 1;
    char *seen = xcalloc(n, 1);
    for (size_t i = 0; i < n; i++) {
        seen[g.order[i]]++;
        if (i % mega && d->ex[g.order[i]].n > d->ex[g.order[i - 1]].n) sorted = 0;
    }
    size_t once = 0;
    for (size_t i = 0; i < n; i++)
        once += seen[i] == 1;
    CHECK(once == n, "every example once per epoch: %zu of %zu", once, n);
    CHECK(sorted, "each mega-batch of %zu sorted longest first", mega);
    CHECK(memcmp(g.order, g2.order, n * sizeof *g.order) == 0, "same seed, same order");
    g.pad_multiple = plain.pad_multiple = 8;
    size_t cg = epoch_cells(&g), cp = epoch_cells(&plain);
    printf("  one epoch of B=%d: %zu cells grouped, %zu shuffled (%.2fx)\n", B, cg, cp,
           (double)cp / (double)cg);
    CHECK(cg * 10 < cp * 8, "grouping pads less: %zu vs %zu cells", cg, cp);
    /* the next epoch is grouped too, in another order */
    Batch x;
    batcher_next(&g, &x);
    CHECK(g.epoch == 1 && memcmp(g.order, g2.order, n * sizeof *g.order) != 0,
          "epoch 1 has its own order");
    batcher_free(&g2);
    CHECK(batcher_init(&g2, d, B, T, 64, 9, &err) == TUNA_EINVAL, "unknown flag refused");
    free(seen);
    batcher_free(&g);
    batcher_free(&g2);
    batcher_free(&plain);
    dataset_free(d);
}

// --- the model: packed equals unpacked

#define K 4
static const int ex_len[K] = {7, 12, 5, 9};

typedef struct Out {
    double loss;
    int cnt;
    int np;
    float **grad;
    size_t *n;
} Out;

static void out_free(Out *o) {
    for (int i = 0; i < o->np; i++)
        free(o->grad[i]);
    free(o->grad);
    free(o->n);
}

static uint64_t rng(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* One forward+backward of the K examples: packed (one row, spans) or one per row. */
static int run_fb(Model *m, TrainMethod method, int packed, Out *o, const char *what) {
    TunaErr err = {0};
    TrainSetup setup = {.method = method, .lora_rank = 4, .lora_alpha = 8, .seed = 3};
    int total = 0, longest = 0;
    for (int k = 0; k < K; k++) {
        total += ex_len[k];
        longest = ex_len[k] > longest ? ex_len[k] : longest;
    }
    int B = packed ? 1 : K, T = packed ? total + 3 : longest + 2; /* a few pads as well */
    TrainState *ts = NULL;
    memset(o, 0, sizeof *o);
    if (train_state_init(m, &setup, B, T, &ts, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return -1;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    Backend *be = m->be;
    if (method == METHOD_LORA) { /* B is zero at init: give every path a signal */
        uint64_t s = 11;
        for (int i = 0; i < np; i++) {
            float *h = xmalloc(sizeof(float) * tp[i].n);
            for (size_t j = 0; j < tp[i].n; j++)
                h[j] = ((float)(rng(&s) % 1000) / 1000.0f - 0.5f) * 0.2f;
            be->ops->upload(be, tp[i].data, h, sizeof(float) * tp[i].n);
            free(h);
        }
    }
    size_t BT = (size_t)B * T;
    int32_t *ids = xcalloc(BT, sizeof(int32_t)), *tg = xmalloc(BT * sizeof(int32_t));
    int32_t *seg = xcalloc(BT, sizeof(int32_t));
    for (size_t i = 0; i < BT; i++)
        tg[i] = -100;
    uint64_t s = 77;
    int off = 0;
    for (int k = 0; k < K; k++) {
        int32_t ex[16];
        for (int t = 0; t < ex_len[k]; t++)
            ex[t] = (int32_t)(1 + rng(&s) % (uint64_t)(m->cfg.V - 1));
        int base = packed ? off : k * T;
        for (int t = 0; t < ex_len[k]; t++) {
            ids[base + t] = ex[t];
            seg[base + t] = packed ? off : 0;
            if (t + 1 < ex_len[k] && t >= 1) tg[base + t] = ex[t + 1]; /* a 2-token prompt */
        }
        off += ex_len[k];
    }
    for (int t = off; packed && t < T; t++)
        seg[t] = off;
    int rc = train_set_seq_len(ts, T, &err);
    if (!rc && packed) rc = train_set_spans(ts, seg, &err);
    if (!rc) rc = train_step_fb(ts, ids, tg, B, 0.05f, 1, &o->loss, &o->cnt, &err);
    CHECK(rc == 0, "%s: %s", what, err.msg);
    o->np = np;
    o->grad = xcalloc((size_t)np + 1, sizeof *o->grad);
    o->n = xcalloc((size_t)np + 1, sizeof *o->n);
    for (int i = 0; i < np; i++) {
        o->n[i] = tp[i].n;
        o->grad[i] = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, o->grad[i], tp[i].grad, sizeof(float) * tp[i].n);
    }
    free(ids), free(tg), free(seg);
    train_state_free(ts);
    return rc;
}

static void packed_equals_unpacked(const char *dir, const char *backend, TrainMethod method) {
    char what[200];
    snprintf(what, sizeof what, "%s %s %s", dir, backend, method == METHOD_LORA ? "lora" : "full");
    TunaErr err = {0};
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL;
    if (!be || model_load(dir, be, &m, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        backend_free(be);
        return;
    }
    Out u, p;
    if (run_fb(m, method, 0, &u, what) == 0 && run_fb(m, method, 1, &p, what) == 0) {
        CHECK(u.cnt == p.cnt && u.cnt > 0, "%s: targets %d vs %d", what, u.cnt, p.cnt);
        double dl = fabs(u.loss - p.loss) / fabs(u.loss);
        CHECK(dl <= 1e-5, "%s: loss %.9g unpacked vs %.9g packed (rel %.2g)", what, u.loss, p.loss,
              dl);
        double gmax = 0, dmax = 0;
        for (int i = 0; i < u.np; i++)
            for (size_t j = 0; j < u.n[i]; j++) {
                gmax = fmax(gmax, fabs((double)u.grad[i][j]));
                dmax = fmax(dmax, fabs((double)u.grad[i][j] - (double)p.grad[i][j]));
            }
        CHECK(gmax > 0 && dmax <= 1e-5 * gmax, "%s: gradients differ by %.3g (largest %.3g)", what,
              dmax, gmax);
        printf("  %-44s loss rel %.1e, grad max|d| %.1e of %.2g\n", what, dl, dmax, gmax);
    }
    out_free(&u);
    out_free(&p);
    model_free(m);
    backend_free(be);
}

// --- the CLI

static void test_cli(void) {
    char tmp[] = "/tmp/tuna_packing_XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char cmd[2048], path[512];
    snprintf(cmd, sizeof cmd,
             "%s train --model models/stories260K --template vanilla --dataset identity "
             "--dataset-dir datasets --vars name=Tuna,author=Ann --method lora --packing neat "
             "--group-by-length --cutoff-len 128 --batch-size 2 --max-steps 3 --eval-steps 3 "
             "--save-steps 0 --sample-prompts '' --threads 1 --quiet --output %s/run "
             ">%s/out.txt 2>&1",
             test_tuna_bin(), tmp, tmp);
    int rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/out.txt", tmp);
    char *out = xread_file(path, NULL);
    CHECK(rc == 0, "tuna train --packing neat: exit %d: %s", rc, out ? out : "");
    free(out);
    snprintf(path, sizeof path, "%s/run/train_config.json", tmp);
    char *cfg = xread_file(path, NULL);
    CHECK(cfg && strstr(cfg, "\"packing\":\t\"neat\"") && strstr(cfg, "\"group_by_length\":\ttrue"),
          "train_config.json keeps packing neat and group_by_length");
    free(cfg);
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", tmp);
    char *mj = xread_file(path, NULL);
    CHECK(mj && strstr(mj, "\"real_tokens\"") && strstr(mj, "\"type\":\"eval\""),
          "metrics.jsonl has steps with real_tokens and an eval");
    free(mj);
    snprintf(cmd, sizeof cmd,
             "%s train --model models/stories260K --dataset identity --dataset-dir datasets "
             "--method ptuning --packing neat --max-steps 1 --output %s/p >%s/err.txt 2>&1",
             test_tuna_bin(), tmp, tmp);
    rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/err.txt", tmp);
    char *e = xread_file(path, NULL);
    CHECK(rc != 0 && e && strstr(e, "--packing neat: not with --method ptuning") &&
                  strchr(e, '\n') == e + strlen(e) - 1,
          "ptuning + neat refused in one line: exit %d: %s", rc, e ? e : "");
    free(e);
    snprintf(cmd, sizeof cmd,
             "%s train --model models/stories260K --packing=tight --max-steps 1 --output %s/q "
             ">%s/err2.txt 2>&1",
             test_tuna_bin(), tmp, tmp);
    rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/err2.txt", tmp);
    e = xread_file(path, NULL);
    CHECK(rc == 2 && e && strstr(e, "packing: expected true, false or neat, got \"tight\""),
          "a bad packing word: exit %d: %s", rc, e ? e : "");
    free(e);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    test_system(cmd);
}

int main(void) {
    test_neat_rows();
    test_group_by_length();
    static const char *dirs[] = {"tests/fixtures/llama", "tests/fixtures/gpt2",
                                 "tests/fixtures/qwen3", "tests/fixtures/mistral"};
    for (int i = 0; i < 4; i++) {
        packed_equals_unpacked(dirs[i], "cpu", METHOD_FULL);
        packed_equals_unpacked(dirs[i], "cpu", METHOD_LORA);
    }
    packed_equals_unpacked("tests/fixtures/llama", "ref", METHOD_FULL);
    packed_equals_unpacked("models/stories260K", "cpu", METHOD_FULL);
    test_cli();
    return test_report("test_packing");
}
