/* test_batching.c: batches padded to their own longest example or packed row (--pad-to batch,
 * the default) against the fixed rows of the longest example in the data (--pad-to max).
 * - the batcher: each batch's rows are its longest row rounded up to a multiple of 8 (at most
 *   T), holding the same ids and targets as the fixed rows, in the same order;
 * - `tuna train` on stories260K + identity: the per-step losses and eval losses of the two modes
 *   are the same (plain LoRA, with grad accumulation and gradient checkpointing, and ptuning):
 *   within 1e-6, and bit for bit before any update where the fp32 products compute an element
 *   alike whatever the product's shape (cpu_sgemm_shape_invariant: OpenBLAS's AVX-512 cores
 *   past their small-matrix kernel, not its AVX2 ones);
 * - metrics.jsonl's step events carry real_tok_s and real_tokens, and over one epoch the real
 *   tokens add up to the labels != -100 of the data (each example's first label never trains).
 * Runs ./tuna (or $TUNA_BIN) from the repo root. */
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/cpu/cpu_backend.h"
#include "src/dataset.h"
#include "src/xalloc.h"

// --- the batcher on a hand-made dataset

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
        e->labels[i] = i < n / 3 ? -100 : e->ids[i]; /* a prompt, then the reply */
    }
}

/* Rows of a batcher with pad_multiple 8 against the fixed rows of T, over two epochs: flags 0
 * (examples), or packed rows (which end where their last example does). */
static void check_rows(const Dataset *d, int B, int T, int flags) {
    TunaErr err = {0};
    Batcher fx, pb;
    CHECK(batcher_init(&fx, d, B, T, flags, 7, &err) == 0, "init: %s", err.msg);
    CHECK(batcher_init(&pb, d, B, T, flags, 7, &err) == 0, "init: %s", err.msg);
    pb.pad_multiple = 8;
    size_t nb = batcher_batches_per_epoch(&pb);
    int shorter = 0, bad_len = 0, bad_rows = 0, bad_count = 0;
    for (size_t k = 0; k < 2 * nb; k++) { /* two epochs: the wrap re-plans both alike */
        Batch a, b;
        int wa = batcher_next(&fx, &a), wb = batcher_next(&pb, &b);
        CHECK(wa == wb && a.B == b.B && a.T == T, "batch %zu: wrap %d/%d, T %d", k, wa, wb, a.T);
        int longest = 1, nt = 0;
        for (int r = 0; r < B; r++) {
            int len = 0;
            for (int t = 0; t < T; t++)
                if (a.ids[r * T + t] != 0) len = t + 1;
            longest = len > longest ? len : longest;
        }
        int want = (longest + 7) / 8 * 8;
        if (want > T) want = T;
        if (b.T != want || (b.T % 8 != 0 && b.T != T)) bad_len++;
        shorter += b.T < T;
        for (int r = 0; r < B; r++)
            for (int t = 0; t < T; t++) {
                int32_t id = t < b.T ? b.ids[r * b.T + t] : 0;
                int32_t tg = t < b.T ? b.targets[r * b.T + t] : -100;
                if (id != a.ids[r * T + t] || tg != a.targets[r * T + t]) bad_rows++;
                nt += t < b.T && b.targets[r * b.T + t] != -100;
            }
        if (nt != b.n_targets || a.n_targets != b.n_targets || a.n_tokens != b.n_tokens)
            bad_count++;
    }
    CHECK(bad_len == 0, "flags %d: %d batches with rows not the longest rounded up to 8", flags,
          bad_len);
    CHECK(bad_rows == 0, "flags %d: %d positions differ from the fixed rows", flags, bad_rows);
    CHECK(bad_count == 0, "flags %d: %d batches with n_targets/n_tokens not as counted", flags,
          bad_count);
    CHECK(shorter > 0, "flags %d: no batch was shorter than the fixed rows", flags);
    batcher_free(&fx);
    batcher_free(&pb);
}

static void test_batcher(void) {
    Dataset *d = xcalloc(1, sizeof *d);
    static const int lens[] = {5, 9, 17, 3, 40, 64, 12, 8, 7, 33, 2, 90, 15, 16, 24, 1, 50, 6};
    int nl = (int)(sizeof lens / sizeof lens[0]);
    for (int i = 0; i < nl; i++)
        add_example(d, lens[i], i);
    const int B = 3, T = 72; /* 90 is cut to 72: a batch holding it has rows of 72, not 80 */
    TunaErr err = {0};
    check_rows(d, B, T, 0);
    check_rows(d, B, T, BATCH_PACK);
    check_rows(d, 1, 100, BATCH_PACK);
    check_rows(d, 2, 100, BATCH_PACK_NEAT);
    /* resume: seeking gives the same batches */
    Batcher sk;
    CHECK(batcher_init(&sk, d, B, T, 0, 7, &err) == 0 && batcher_seek(&sk, 1, 2, &err) == 0,
          "seek: %s", err.msg);
    sk.pad_multiple = 8;
    Batcher ref;
    batcher_init(&ref, d, B, T, 0, 7, &err);
    ref.pad_multiple = 8;
    Batch x, y;
    size_t nb = batcher_batches_per_epoch(&ref);
    for (size_t k = 0; k < nb + 3; k++) /* epoch 1, batch 2 */
        batcher_next(&ref, &x);
    batcher_next(&sk, &y);
    CHECK(x.T == y.T && !memcmp(x.ids, y.ids, sizeof(int32_t) * (size_t)B * x.T) &&
                  !memcmp(x.targets, y.targets, sizeof(int32_t) * (size_t)B * x.T),
          "a seeked batcher gives the same per-batch rows (T %d vs %d)", x.T, y.T);
    batcher_free(&sk);
    batcher_free(&ref);
    dataset_free(d);
}

// --- end to end

#define BASE                                                                                       \
    "--model models/stories260K --dataset identity --dataset-dir datasets "                        \
    "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --quiet "              \
    "--save-steps 0 --sample-steps 0 --sample-prompts '' --threads 1 "

typedef struct Steps {
    double loss[64], eval[64], real_s[64], tok_s[64];
    long real[64];
    int n, n_eval, has_real;
} Steps;

static int read_steps(const char *dir, Steps *s) {
    memset(s, 0, sizeof *s);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL);
    if (!text) return -1;
    char *save = NULL;
    s->has_real = 1;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        if (t && !strcmp(t, "step") && s->n < 64) {
            const cJSON *rs = cJSON_GetObjectItem(j, "real_tok_s"),
                        *rt = cJSON_GetObjectItem(j, "real_tokens");
            if (!cJSON_IsNumber(rs) || !cJSON_IsNumber(rt)) s->has_real = 0;
            s->loss[s->n] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
            s->tok_s[s->n] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "tokens_per_s"));
            s->real_s[s->n] = cJSON_GetNumberValue(rs);
            s->real[s->n++] = (long)cJSON_GetNumberValue(rt);
        }
        if (t && !strcmp(t, "eval") && s->n_eval < 64)
            s->eval[s->n_eval++] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
        cJSON_Delete(j);
    }
    free(text);
    return s->n;
}

static int train(const char *args, const char *dir) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s train " BASE "%s --output %s --overwrite 2>%s.err",
             test_tuna_bin(), args, dir, dir);
    return test_system(cmd);
}

/* The same run with --pad-to max and --pad-to batch: equal losses at every step and eval. */
static void same_losses(const char *what, const char *args, const char *tmp) {
    char dmax[300], dbat[300], a[1024];
    snprintf(dmax, sizeof dmax, "%s/max", tmp);
    snprintf(dbat, sizeof dbat, "%s/batch", tmp);
    snprintf(a, sizeof a, "%s --pad-to max", args);
    int r1 = train(a, dmax);
    snprintf(a, sizeof a, "%s --pad-to batch", args);
    int r2 = train(a, dbat);
    CHECK(r1 == 0 && r2 == 0, "%s: train exit %d / %d (see %s.err)", what, r1, r2, dbat);
    Steps m, b;
    int nm = read_steps(dmax, &m), nb = read_steps(dbat, &b);
    CHECK(nm > 0 && nm == nb && m.n_eval == b.n_eval && m.n_eval > 0,
          "%s: %d/%d steps, %d/%d evals", what, nm, nb, m.n_eval, b.n_eval);
    double worst = 0;
    int same = 1, first_diff = -1;
    for (int i = 0; i < nm && i < nb; i++) {
        double dd = fabs(m.loss[i] - b.loss[i]) / (fabs(m.loss[i]) > 1 ? fabs(m.loss[i]) : 1);
        worst = dd > worst || dd != dd ? dd : worst;
        same &= m.loss[i] == b.loss[i] && m.real[i] == b.real[i];
        if (m.loss[i] != b.loss[i] && first_diff < 0) first_diff = i + 1;
    }
    /* the forward is row-independent: before any update (eval at step 0, step 1's loss) the
     * two modes agree bit for bit; the weight gradients sum over all B*T rows, where the pad
     * rows add exact zeros but change how the sum is blocked, so later steps may differ in the
     * last bits */
    if (cpu_sgemm_shape_invariant())
        CHECK(m.eval[0] == b.eval[0] && m.loss[0] == b.loss[0],
              "%s: before any update the losses differ (eval %.17g / %.17g, step 1 %.17g / %.17g)",
              what, m.eval[0], b.eval[0], m.loss[0], b.loss[0]);
    else
        printf("%s: this BLAS sums a product's last columns in other orders (tuna info): equal "
               "within 1e-6 only\n",
               what);
    for (int i = 0; i < m.n_eval && i < b.n_eval; i++) {
        double dd = fabs(m.eval[i] - b.eval[i]) / (fabs(m.eval[i]) > 1 ? fabs(m.eval[i]) : 1);
        worst = dd > worst || dd != dd ? dd : worst;
        same &= m.eval[i] == b.eval[i];
    }
    CHECK(worst <= 1e-6, "%s: losses differ by %.3g between --pad-to max and batch", what, worst);
    printf("%s: %d steps, %d evals, losses %s (largest relative difference %.3g, first "
           "differing step %d)\n",
           what, nm, m.n_eval, same ? "bit-identical" : "close", worst, first_diff);
    CHECK(m.has_real && b.has_real, "%s: step events without real_tok_s / real_tokens", what);
}

static void test_real_tokens(const char *tmp) {
    /* one epoch, no validation split: the real tokens of all steps are the data's targets */
    char dir[300];
    snprintf(dir, sizeof dir, "%s/real", tmp);
    int rc = train("--val-size 0 --epochs 1 --eval-steps 0", dir);
    CHECK(rc == 0, "train exit %d", rc);
    Steps s;
    int n = read_steps(dir, &s);
    long sum = 0;
    int ok_rate = 1;
    for (int i = 0; i < n; i++) {
        sum += s.real[i];
        ok_rate &= s.real_s[i] >= 0 && s.real_s[i] <= s.tok_s[i] &&
                   (s.real[i] > 0) == (s.real_s[i] > 0);
    }
    CHECK(s.has_real && ok_rate, "real_tok_s missing or above tokens_per_s");
    TunaErr err = {0};
    Tokenizer *tok = NULL;
    Template *tpl = NULL;
    Dataset *d = NULL;
    DatasetOptions o = {.names = "identity",
                        .dataset_dir = "datasets",
                        .vars = "name=Tuna,author=Ann",
                        .cutoff_len = 256};
    if (tokenizer_load("models/stories260K", &tok, &err) ||
        template_load("templates", "vanilla", &tpl, &err) || dataset_load(&o, tok, tpl, &d, &err)) {
        CHECK(0, "load: %s", err.msg);
    } else {
        long want = 0;
        for (size_t i = 0; i < d->n; i++)
            for (int t = 1; t < d->ex[i].n; t++)
                want += d->ex[i].labels[t] != -100;
        CHECK(sum == want, "real tokens over one epoch %ld, labels != -100 (after the first) %ld",
              sum, want);
        printf("one epoch: %d steps, %ld real tokens = the data's trained labels\n", n, sum);
    }
    dataset_free(d);
    template_free(tpl);
    tokenizer_free(tok);
}

/* batcher_set_rank: the shares of ranks 0..world-1, in order, are one process's batch (rows,
 * row length, seg_start), their counts sum to its counts, and each carries the global counts;
 * over packing, neat packing, length grouping and per-batch rows. */
static void test_rank_shares(void) {
    Dataset *d = xcalloc(1, sizeof *d);
    static const int lens[] = {5, 9,  17, 3,  40, 64, 12, 8, 7,  33,
                               2, 90, 15, 16, 24, 1,  50, 6, 11, 29};
    int nl = (int)(sizeof lens / sizeof lens[0]);
    for (int i = 0; i < nl; i++)
        add_example(d, lens[i], i);
    const int B = 6, T = 72;
    int flags_list[] = {0, BATCH_PACK, BATCH_PACK_NEAT, BATCH_GROUP_BY_LENGTH};
    TunaErr err = {0};
    for (int fi = 0; fi < 4; fi++)
        for (int pm = 0; pm <= 8; pm += 8)
            for (int world = 2; world <= 3; world++) {
                Batcher one, rk[3];
                int ok = batcher_init(&one, d, B, T, flags_list[fi], 5, &err) == 0;
                one.pad_multiple = pm;
                for (int r = 0; r < world && ok; r++) {
                    ok = batcher_init(&rk[r], d, B, T, flags_list[fi], 5, &err) == 0 &&
                         batcher_set_rank(&rk[r], r, world, &err) == 0;
                    rk[r].pad_multiple = pm;
                }
                if (!ok) {
                    CHECK(0, "rank shares: %s", err.msg);
                    continue;
                }
                int bad = 0, batches = 2 * (int)batcher_batches_per_epoch(&one);
                for (int k = 0; k < batches; k++) {
                    Batch a, s;
                    batcher_next(&one, &a);
                    int nt = 0, ntok = 0, share = B / world;
                    for (int r = 0; r < world; r++) {
                        batcher_next(&rk[r], &s);
                        size_t off = (size_t)r * share * a.T, n = (size_t)share * a.T;
                        bad += s.B != share || s.T != a.T || s.n_targets_global != a.n_targets ||
                               s.n_tokens_global != a.n_tokens;
                        bad += memcmp(s.ids, a.ids + off, n * sizeof *s.ids) != 0 ||
                               memcmp(s.targets, a.targets + off, n * sizeof *s.ids) != 0 ||
                               (a.seg_start &&
                                memcmp(s.seg_start, a.seg_start + off, n * sizeof *s.ids) != 0);
                        nt += s.n_targets;
                        ntok += s.n_tokens;
                    }
                    bad += nt != a.n_targets || ntok != a.n_tokens;
                }
                CHECK(bad == 0, "flags %d, pad_multiple %d, %d ranks: %d mismatches in %d batches",
                      flags_list[fi], pm, world, bad, batches);
                batcher_free(&one);
                for (int r = 0; r < world; r++)
                    batcher_free(&rk[r]);
            }
    Batcher b;
    CHECK(batcher_init(&b, d, B, T, 0, 5, &err) == 0, "init: %s", err.msg);
    int rc = batcher_set_rank(&b, 0, 4, &err);
    CHECK(rc && strstr(err.msg, "6 rows must split evenly"), "6 rows over 4 ranks: \"%s\"",
          err.msg);
    CHECK(batcher_set_rank(&b, 2, 2, &err) != 0, "rank 2 of 2 accepted");
    batcher_free(&b);
    dataset_free(d);
}

int main(void) {
    test_batcher();
    test_rank_shares();
    if (access(test_tuna_bin(), X_OK) != 0 || access("models/stories260K/config.json", R_OK) != 0) {
        SKIP("no %s or models/stories260K: the end-to-end part is skipped", test_tuna_bin());
        return test_report("test_batching");
    }
    char tmp[] = "/tmp/tuna_batching_XXXXXX";
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return test_report("test_batching");
    }
    same_losses("lora", "--max-steps 6 --eval-steps 3", tmp);
    same_losses("lora, grad-accum 2, checkpointing",
                "--max-steps 4 --eval-steps 2 --grad-accum 2 --gradient-checkpointing", tmp);
    same_losses("ptuning", "--method ptuning --prefix-tokens 4 --max-steps 4 --eval-steps 2", tmp);
    same_losses("full", "--method full --max-steps 3 --eval-steps 3", tmp);
    /* packed rows end where their last example does, short of --cutoff-len */
    same_losses("lora, packed", "--packing true --cutoff-len 200 --max-steps 4 --eval-steps 2",
                tmp);
    same_losses("lora, neat packing",
                "--packing neat --cutoff-len 200 --max-steps 4 --eval-steps 2", tmp);
    test_real_tokens(tmp);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    test_system(cmd);
    return test_report("test_batching");
}
