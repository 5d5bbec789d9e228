/* test_train_rm.c: `tuna train --stage rm` and `tuna eval --stage rm` end to end on the bundled
 * stories260K with ../shared/datasets/dpo_en_demo.json (skipped without it): a LoRA run learns
 * its 8 training pairs (the last step's accuracy 1), writes value_head.safetensors beside the
 * adapter, and its step and eval events carry accuracy and the scores; `tuna eval --stage rm`
 * on the run folder gives the pairwise accuracy and loss of the merged model that agree with
 * the run's own last eval (the 12 pairs = the 8 trained + the 4 held out); a full run finishes
 * with the head beside the model; a P-tuning run trains (eval --stage rm refuses it); bad
 * combinations fail with one line; --resume of a LoRA and a full rm run from a mid-run checkpoint
 * redoes the last steps bit for bit (the value head's AdamW moments are in the checkpoint);
 * TRL's summary dropout (0.1) is on by default, --summary-dropout-prob 0 turns it off, and the
 * option is refused outside --stage rm.
 * Runs ./tuna (or $TUNA_BIN) from the repo root. */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/xalloc.h"

#define BASE                                                                                       \
    "--model models/stories260K --dataset dpo_en_demo --dataset-dir ../shared/datasets "           \
    "--stage rm --batch-size 2 --cutoff-len 96 --max-samples 12 --val-size 4 --eval-steps 5 "      \
    "--sample-prompts '' --seed 3 --quiet --threads 2 "

typedef struct Seen {
    int steps, evals, with_metrics, evals_with_metrics;
    double acc_last, eval_loss_last, eval_acc_last;
} Seen;

static void read_metrics(const char *dir, Seen *s) {
    memset(s, 0, sizeof *s);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL);
    if (!text) return;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        if (t && !strcmp(t, "step")) {
            s->steps++;
            s->with_metrics += cJSON_IsNumber(cJSON_GetObjectItem(j, "accuracy")) &&
                               cJSON_IsNumber(cJSON_GetObjectItem(j, "rewards/margins"));
            s->acc_last = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "accuracy"));
        }
        if (t && !strcmp(t, "eval")) {
            s->evals++;
            s->evals_with_metrics += cJSON_IsNumber(cJSON_GetObjectItem(j, "eval_accuracy"));
            s->eval_loss_last = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
            s->eval_acc_last = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_accuracy"));
        }
        cJSON_Delete(j);
    }
    free(text);
}

static void run(const char *tmp, const char *name, const char *args, int steps, Seen *s) {
    char out[300], cmd[2048];
    snprintf(out, sizeof out, "%s/%s", tmp, name);
    snprintf(cmd, sizeof cmd, "%s train " BASE "%s --max-steps %d --output %s 2>%s.err",
             test_tuna_bin(), args, steps, out, out);
    int rc = test_system(cmd);
    CHECK(rc == 0, "%s: tuna train exited %d", name, rc);
    read_metrics(out, s);
    CHECK(s->steps == steps && s->with_metrics == steps, "%s: %d step events, %d with accuracy",
          name, s->steps, s->with_metrics);
    CHECK(s->evals >= 2 && s->evals_with_metrics == s->evals,
          "%s: %d eval events, %d with "
          "eval_accuracy",
          name, s->evals, s->evals_with_metrics);
    char path[400];
    struct stat sb;
    snprintf(path, sizeof path, "%s/value_head.safetensors", out);
    CHECK(stat(path, &sb) == 0, "%s: %s written", name, path);
}

/* "step loss grad_norm" lines of a run's step events, from step `from` on (a static buffer) */
static const char *step_lines(const char *dir, int from) {
    static char buf[4096];
    char path[512];
    buf[0] = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL), *save = NULL;
    for (char *l = text ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "step") && step >= from) {
            size_t o = strlen(buf);
            snprintf(buf + o, sizeof buf - o, "%d %.17g %.17g\n", step,
                     cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss")),
                     cJSON_GetNumberValue(cJSON_GetObjectItem(j, "grad_norm")));
        }
        cJSON_Delete(j);
    }
    free(text);
    return buf;
}

/* --resume of an rm run: 6 steps with a checkpoint at 3 (which holds the value head and its
 * AdamW moments), resumed from it, redoes steps 4-6 with the same losses and gradient norms bit
 * for bit, and ends with the same value head and weights */
static void resume(const char *tmp, const char *method) {
    char a[200], b[220], cmd[4096];
    snprintf(a, sizeof a, "%s/%s-6", tmp, method);
    snprintf(b, sizeof b, "%s/%s-6-resumed", tmp, method);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method %s --lr 2e-3 --max-steps 6 --save-steps 3 --output %s "
             "2>%s.err && cp -r %s %s && %s train --resume %s --quiet 2>%s.err",
             test_tuna_bin(), method, a, a, a, b, test_tuna_bin(), b, b);
    CHECK(test_system(cmd) == 0, "%s: 6 steps, then --resume from checkpoint-3", method);
    char want[4096];
    snprintf(want, sizeof want, "%s", step_lines(a, 4));
    const char *got = step_lines(b, 4);
    int lines = 0;
    for (const char *p = got; *p; p++)
        lines += *p == '\n';
    /* the resumed run's metrics.jsonl goes on from its checkpoint: steps 4-6 once */
    CHECK(lines == 3 && !strcmp(got, want), "%s: resumed steps 4-6 differ: %s vs %s", method, got,
          want);
    const char *files[] = {"value_head.safetensors", "adapter_model.safetensors",
                           "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char pa[400], pb[400];
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        if (access(pa, F_OK) && i) continue; /* LoRA: no model.safetensors; full: no adapter */
        CHECK(test_same_file(pa, pb), "%s: %s after the resume differs", method, files[i]);
    }
}

int main(void) {
    if (access("../shared/datasets/dpo_en_demo.json", R_OK)) {
        SKIP("../shared/datasets/dpo_en_demo.json is not here");
        return test_report("test_train_rm");
    }
    char tmpl[] = "/tmp/tuna_rm_XXXXXX";
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return test_report("test_train_rm");
    Seen s;
    run(tmp, "lora", "--method lora --lr 1e-2", 20, &s);
    CHECK(s.acc_last == 1, "lora: the training pairs learnt (accuracy %g)", s.acc_last);
    /* tuna eval --stage rm on the run: 12 pairs, 8 of them trained (accuracy 1) */
    char cmd[1200], outf[400];
    snprintf(outf, sizeof outf, "%s/eval.json", tmp);
    snprintf(cmd, sizeof cmd,
             "%s eval --model %s/lora --dataset dpo_en_demo --dataset-dir ../shared/datasets "
             "--max-samples 12 --cutoff-len 96 --stage rm --threads 2 --quiet --output %s "
             ">/dev/null",
             test_tuna_bin(), tmp, outf);
    CHECK(test_system(cmd) == 0, "tuna eval --stage rm");
    char *text = xread_file(outf, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    double acc = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "accuracy")),
           loss = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
    int n = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "n_pairs"));
    double want_acc = (8 + 4 * s.eval_acc_last) / 12;
    CHECK(n == 12 && fabs(acc - want_acc) < 1e-9, "eval: %d pairs, accuracy %g (%g expected)", n,
          acc, want_acc);
    /* the held-out loss over 12 pairs, plus the 8 trained ones' (near 0, at most their share) */
    CHECK(loss >= 4 * s.eval_loss_last / 12 - 1e-4 && loss < 4 * s.eval_loss_last / 12 + 0.05,
          "eval loss %g (the run's held-out %g over 4 of 12 pairs)", loss, s.eval_loss_last);
    printf("  lora: last step accuracy %g; tuna eval --stage rm: accuracy %.3f, loss %.4f\n",
           s.acc_last, acc, loss);
    cJSON_Delete(j);
    free(text);
    run(tmp, "full", "--method full --lr 2e-3", 4, &s);
    /* P-tuning trains; eval --stage rm refuses it (the scoring forward has no prefix) */
    run(tmp, "ptuning", "--method ptuning --prefix-tokens 4 --eval-steps 2", 2, &s);
    snprintf(cmd, sizeof cmd,
             "%s eval --model %s/ptuning --dataset dpo_en_demo --dataset-dir ../shared/datasets "
             "--max-samples 4 --stage rm --quiet >/dev/null 2>%s/pt.err",
             test_tuna_bin(), tmp, tmp);
    CHECK(test_system(cmd) != 0, "eval --stage rm of a P-tuning run refused");
    test_train_refused(tmp, BASE, "--packing true", "pairs are neither packed nor grouped");
    test_train_refused(tmp, BASE, "--dataset kto_en_demo", "is not a ranking dataset");
    resume(tmp, "lora");
    resume(tmp, "full");
    /* TRL's summary dropout is on by default (0.1): without it step 1 scores other values */
    char a[300], b[300];
    snprintf(a, sizeof a, "%s/drop-default", tmp);
    snprintf(b, sizeof b, "%s/drop-off", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE
             "--method lora --max-steps 1 --output %s 2>/dev/null && %s train " BASE
             "--method lora --max-steps 1 --summary-dropout-prob 0 --output %s 2>/dev/null",
             test_tuna_bin(), a, test_tuna_bin(), b);
    CHECK(test_system(cmd) == 0, "one step with and without the value head's dropout");
    char la[4096];
    snprintf(la, sizeof la, "%s", step_lines(a, 1));
    CHECK(la[0] && strcmp(la, step_lines(b, 1)),
          "the value head's dropout changes step 1: %s vs %s", la, step_lines(b, 1));
    test_train_refused(tmp,
                       "--model models/stories260K --dataset identity --stage sft "
                       "--summary-dropout-prob 0.2",
                       "", "--summary-dropout-prob: the value head's dropout, for --stage rm only");
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_train_rm");
}
