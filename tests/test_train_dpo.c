/* test_train_dpo.c: `tuna train --stage dpo` end to end on the bundled stories260K with
 * ../shared/datasets/dpo_en_demo.json (skipped without it): LoRA (the reference: the base with
 * the adapter off, so the first step's loss is ln 2 and its rewards 0; 4 pairs seen 5 times are
 * learnt, accuracy 1), full (a frozen copy), orpo (no reference) and P-tuning runs finish, a
 * run from an SFT adapter (--adapter) has that adapter as its reference (and resumes after a
 * SIGKILL with the same losses, bit for bit), metrics.jsonl's step
 * events carry TRL's six metrics and the eval events the eval_ ones, the adapter is written,
 * and bad combinations fail with one line. Runs ./tuna (or $TUNA_BIN) from the repo root. */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/xalloc.h"

#define BASE                                                                                       \
    "--model models/stories260K --dataset dpo_en_demo --dataset-dir ../shared/datasets "           \
    "--stage dpo --batch-size 2 --cutoff-len 96 --val-size 8 --eval-steps 4 --sample-prompts '' "  \
    "--seed 3 --quiet --threads 2 "

static const char *metric_keys[6] = {"rewards/chosen",  "rewards/rejected", "rewards/accuracies",
                                     "rewards/margins", "logps/chosen",     "logps/rejected"};

/* TRL's logits/chosen, logits/rejected, entropy and mean_token_accuracy (prefix "" or "eval_"):
 * all there, the entropy within (0, log V], the accuracy a fraction */
static int logit_keys(const cJSON *j, const char *prefix) {
    static const char *const k[] = {"logits/chosen", "logits/rejected", "entropy",
                                    "mean_token_accuracy"};
    double v[4];
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s%s", prefix, k[i]);
        const cJSON *x = cJSON_GetObjectItem(j, key);
        if (!cJSON_IsNumber(x)) return 0;
        v[i] = cJSON_GetNumberValue(x);
    }
    return v[2] > 0 && v[2] <= log(512) && v[3] >= 0 && v[3] <= 1; /* stories260K: V 512 */
}

typedef struct Seen {
    int steps, evals, with_metrics, evals_with_metrics;
    double loss1, margin1, acc1, eval0, margin_last, acc_last;
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
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "step")) {
            s->steps++;
            int all = 1;
            for (int k = 0; k < 6; k++)
                all &= cJSON_IsNumber(cJSON_GetObjectItem(j, metric_keys[k]));
            s->with_metrics += all && logit_keys(j, "");
            double margin = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "rewards/margins"));
            if (step == 1) {
                s->loss1 = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
                s->margin1 = margin;
                s->acc1 = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "rewards/accuracies"));
            }
            s->margin_last = margin;
            s->acc_last = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "rewards/accuracies"));
        }
        if (t && !strcmp(t, "eval")) {
            if (step == 0) s->eval0 = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
            s->evals++;
            int all = 1;
            for (int k = 0; k < 6; k++) {
                char key[64];
                snprintf(key, sizeof key, "eval_%s", metric_keys[k]);
                all &= cJSON_IsNumber(cJSON_GetObjectItem(j, key));
            }
            /* the policy's own preference accuracy, a fraction of the pairs */
            for (int k = 0; k < 2; k++) {
                cJSON *a = cJSON_GetObjectItem(j, k ? "eval_logps/mean_accuracies"
                                                    : "eval_logps/accuracies");
                double v = cJSON_GetNumberValue(a);
                all &= cJSON_IsNumber(a) && v >= 0 && v <= 1;
            }
            s->evals_with_metrics += all && logit_keys(j, "eval_");
        }
        cJSON_Delete(j);
    }
    free(text);
}

/* Step losses (index = step) from metrics.jsonl. */
static void read_losses(const char *dir, double *loss, int cap) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    for (int i = 0; i < cap; i++)
        loss[i] = -1;
    char *text = xread_file(path, NULL);
    char *save = NULL;
    for (char *l = text ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "step") && step >= 0 && step < cap)
            loss[step] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
        cJSON_Delete(j);
    }
    free(text);
}

/* Killed (SIGKILL) after its checkpoint at step 3 and resumed: the same loss at every step as
 * the run left alone, bit for bit (the pairs' order, the reference from --adapter). */
static void test_resume(const char *tmp, const char *adapter) {
    char args[1500], cmd[4096], u[300], k[300];
    snprintf(args, sizeof args,
             "--model models/stories260K --dataset dpo_en_demo --dataset-dir ../shared/datasets "
             "--stage dpo --batch-size 2 --cutoff-len 64 --max-samples 40 --val-size 4 "
             "--eval-steps 0 --save-steps 3 --sample-prompts '' --quiet --threads 1 --adapter %s "
             "--max-steps 40",
             adapter);
    snprintf(u, sizeof u, "%s/resume_u", tmp);
    snprintf(k, sizeof k, "%s/resume_k", tmp);
    snprintf(cmd, sizeof cmd, "%s train %s --output %s 2>/dev/null", test_tuna_bin(), args, u);
    CHECK(test_system(cmd) == 0, "resume: the uninterrupted run");
    snprintf(cmd, sizeof cmd,
             "%s train %s --output %s 2>/dev/null & P=$!; for i in $(seq 600); do grep -q "
             "'\"step\":5,' %s/metrics.jsonl 2>/dev/null && break; sleep 0.02; done; kill -9 $P; "
             "wait $P 2>/dev/null; grep -q '\"type\":\"done\"' %s/metrics.jsonl && exit 9; "
             "%s train --resume %s --quiet 2>/dev/null",
             test_tuna_bin(), args, k, k, k, test_tuna_bin(), k);
    int rc = test_system(cmd);
    CHECK(rc == 0, "resume: killed mid-run, then --resume: exit %d (9: it had finished)", rc);
    double a[48], b[48];
    read_losses(u, a, 48);
    read_losses(k, b, 48);
    int same = 1;
    for (int i = 1; i <= 40; i++)
        same &= a[i] >= 0 && a[i] == b[i];
    CHECK(same, "resume: the losses of steps 1..40 equal the uninterrupted run's, bit for bit");
}

static void run(const char *tmp, const char *name, const char *args, int steps, Seen *s) {
    char out[300], cmd[2048];
    snprintf(out, sizeof out, "%s/%s", tmp, name);
    snprintf(cmd, sizeof cmd, "%s train " BASE "%s --max-steps %d --output %s 2>%s.err",
             test_tuna_bin(), args, steps, out, out);
    int rc = test_system(cmd);
    CHECK(rc == 0, "%s: tuna train exited %d", name, rc);
    read_metrics(out, s);
    CHECK(s->steps == steps && s->with_metrics == steps,
          "%s: %d step events, %d with the six metrics (want %d)", name, s->steps, s->with_metrics,
          steps);
    CHECK(s->evals >= 2 && s->evals_with_metrics == s->evals,
          "%s: %d eval events, %d with eval_rewards/... (all expected)", name, s->evals,
          s->evals_with_metrics);
}

int main(void) {
    if (access("../shared/datasets/dpo_en_demo.json", R_OK)) {
        SKIP("../shared/datasets/dpo_en_demo.json is not here");
        return test_report("test_train_dpo");
    }
    char tmpl[] = "/tmp/tuna_dpo_XXXXXX";
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return test_report("test_train_dpo");
    Seen s;
    /* 4 training pairs (2 held out), 5 epochs: the policy learns to prefer the chosen answers */
    run(tmp, "lora", "--method lora --lr 1e-2 --max-samples 6 --val-size 2", 10, &s);
    /* LoRA's B starts at 0: the policy is the reference, so every pair's loss is ln 2 */
    CHECK(fabs(s.loss1 - log(2.0)) < 1e-6 && fabs(s.margin1) < 1e-6 && s.acc1 == 0 &&
                  fabs(s.eval0 - log(2.0)) < 1e-6,
          "lora: step 1 loss %.7f margin %.3g accuracy %g, eval 0 %.7f (ln 2 and 0 expected)",
          s.loss1, s.margin1, s.acc1, s.eval0);
    CHECK(s.margin_last > 1 && s.acc_last == 1,
          "lora: 4 pairs learnt: margin %.4f, accuracy %g at the last step", s.margin_last,
          s.acc_last);
    char path[400];
    struct stat sb;
    snprintf(path, sizeof path, "%s/lora/adapter_model.safetensors", tmp);
    CHECK(stat(path, &sb) == 0, "lora: %s written", path);
    printf("  lora: step 1 loss %.4f (ln 2), step 10 margin %.3f, accuracy %g\n", s.loss1,
           s.margin_last, s.acc_last);
    run(tmp, "full", "--method full --lr 2e-3", 4, &s);
    CHECK(fabs(s.loss1 - log(2.0)) < 1e-6, "full: step 1 loss %.7f (the policy is the frozen copy)",
          s.loss1);
    run(tmp, "orpo", "--method lora --pref-loss orpo --pref-ftx 0.1", 4, &s);
    CHECK(isfinite(s.loss1) && s.loss1 > 0, "orpo: loss %g", s.loss1);
    run(tmp, "ptuning", "--method ptuning --prefix-tokens 4 --pref-loss ipo", 4, &s);
    CHECK(isfinite(s.loss1), "ptuning ipo: loss %g", s.loss1);
    /* from an SFT adapter: the reference is that adapter as it starts (TRL's re-training case),
     * so the first step is ln 2 again although the adapter is not zero */
    char cmd0[1200];
    snprintf(cmd0, sizeof cmd0,
             "%s train --model models/stories260K --dataset identity --dataset-dir datasets "
             "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --max-steps 4 "
             "--sample-prompts '' --quiet --threads 2 --output %s/sft 2>/dev/null",
             test_tuna_bin(), tmp);
    CHECK(test_system(cmd0) == 0, "the SFT run for --adapter");
    char args[400];
    snprintf(args, sizeof args, "--adapter %s/sft", tmp);
    run(tmp, "from_sft", args, 2, &s);
    CHECK(fabs(s.loss1 - log(2.0)) < 1e-6 && fabs(s.margin1) < 1e-6,
          "from an SFT adapter: step 1 loss %.7f, margin %.3g (ln 2 and 0: the reference is the "
          "adapter as it starts)",
          s.loss1, s.margin1);
    test_resume(tmp, args + strlen("--adapter "));
    test_train_refused(tmp, BASE, "--pref-loss dpo",
                       "--pref-loss: must be sigmoid, hinge, ipo, orpo or simpo");
    test_train_refused(tmp, BASE, "--packing true", "pairs are neither packed nor grouped");
    test_train_refused(tmp, BASE, "--pref-loss hinge --dpo-label-smoothing 0.1",
                       "only with --pref-loss sigmoid");
    test_train_refused(tmp, BASE, "--dataset identity --dataset-dir datasets",
                       "\"identity\" is not a ranking dataset");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_train_dpo");
}
