/* test_train_kto.c: `tuna train --stage kto` end to end on the bundled stories260K with
 * ../shared/datasets/kto_en_demo.json (skipped without it): LoRA (the reference: the base with
 * the adapter off, so the first step's rewards and kl are 0 and every example's loss is
 * 1 - sigmoid(0) = 0.5 times its weight; a few examples seen again are learnt: the desirable
 * ones' rewards rise above the undesirable ones') and full (a frozen copy) runs finish,
 * metrics.jsonl's step events carry TRL's KTO metrics and the eval events the eval_ ones, the
 * adapter is written, and bad combinations fail with one line. Runs ./tuna (or $TUNA_BIN)
 * from the repo root. */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/xalloc.h"

#define BASE                                                                                       \
    "--model models/stories260K --dataset kto_en_demo --dataset-dir ../shared/datasets "           \
    "--stage kto --batch-size 4 --cutoff-len 96 --val-size 8 --eval-steps 4 --sample-prompts '' "  \
    "--seed 3 --quiet --threads 2 "

static const char *metric_keys[6] = {"kl",           "rewards/chosen", "rewards/rejected",
                                     "logps/chosen", "logps/rejected", "rewards/margins"};

typedef struct Seen {
    int steps, evals, with_metrics, evals_with_metrics;
    double loss1, kl1, margin1, eval0, margin_sum_late;
} Seen;

static void read_metrics(const char *dir, int steps, Seen *s) {
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
            /* kl always; each side's rewards and logps when the batch has it */
            int all = cJSON_IsNumber(cJSON_GetObjectItem(j, "kl"));
            for (int k = 1; k < 6; k++)
                all &= cJSON_IsNumber(cJSON_GetObjectItem(j, metric_keys[k])) ||
                       !cJSON_GetObjectItem(j, metric_keys[k]);
            all &= cJSON_IsNumber(cJSON_GetObjectItem(j, "rewards/chosen")) ||
                   cJSON_IsNumber(cJSON_GetObjectItem(j, "rewards/rejected"));
            /* TRL's logits/chosen and logits/rejected with the side's rewards, and the entropy
             * (within (0, log V], stories260K's V 512) */
            for (int k = 0; k < 2; k++)
                all &= !cJSON_IsNumber(
                               cJSON_GetObjectItem(j, k ? "rewards/rejected" : "rewards/chosen")) ||
                       cJSON_IsNumber(
                               cJSON_GetObjectItem(j, k ? "logits/rejected" : "logits/chosen"));
            double ent = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "entropy"));
            all &= ent > 0 && ent <= log(512);
            s->with_metrics += all;
            double margin = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "rewards/margins"));
            if (step == 1) {
                s->loss1 = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
                s->kl1 = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "kl"));
                s->margin1 = isnan(margin) ? 0 : margin;
            }
            if (step > steps / 2 && !isnan(margin)) s->margin_sum_late += margin;
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
            all &= cJSON_IsNumber(cJSON_GetObjectItem(j, "eval_logits/chosen")) &&
                   cJSON_IsNumber(cJSON_GetObjectItem(j, "eval_logits/rejected")) &&
                   cJSON_IsNumber(cJSON_GetObjectItem(j, "eval_entropy"));
            s->evals_with_metrics += all;
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
    read_metrics(out, steps, s);
    CHECK(s->steps == steps && s->with_metrics == steps,
          "%s: %d step events, %d with TRL's kto metrics (want %d)", name, s->steps,
          s->with_metrics, steps);
    CHECK(s->evals >= 2 && s->evals_with_metrics == s->evals,
          "%s: %d eval events, %d with eval_kl, eval_rewards/... (all expected)", name, s->evals,
          s->evals_with_metrics);
}

int main(void) {
    if (access("../shared/datasets/kto_en_demo.json", R_OK)) {
        SKIP("../shared/datasets/kto_en_demo.json is not here");
        return test_report("test_train_kto");
    }
    char tmpl[] = "/tmp/tuna_kto_XXXXXX";
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return test_report("test_train_kto");
    Seen s;
    /* 8 training examples (4 held out), 5 epochs */
    run(tmp, "lora", "--method lora --lr 1e-2 --max-samples 12 --val-size 4", 10, &s);
    CHECK(fabs(s.loss1 - 0.5) < 1e-6 && s.kl1 == 0 && fabs(s.margin1) < 1e-6 &&
                  fabs(s.eval0 - 0.5) < 1e-6,
          "lora: step 1 loss %.7f kl %g margin %.3g, eval 0 %.7f (0.5, 0, 0, 0.5 expected)",
          s.loss1, s.kl1, s.margin1, s.eval0);
    CHECK(s.margin_sum_late > 0,
          "lora: the desirable answers' rewards rise above the others' "
          "(margins summed over the last 5 steps %.4f)",
          s.margin_sum_late);
    char path[400];
    struct stat sb;
    snprintf(path, sizeof path, "%s/lora/adapter_model.safetensors", tmp);
    CHECK(stat(path, &sb) == 0, "lora: %s written", path);
    printf("  lora: step 1 loss %.4f, late margins summed %.3f\n", s.loss1, s.margin_sum_late);
    /* weights: the first step's loss is 0.5 times the batch's mean weight */
    run(tmp, "full", "--method full --lr 2e-3 --kto-chosen-weight 2 --kto-rejected-weight 2", 4,
        &s);
    CHECK(fabs(s.loss1 - 1.0) < 1e-6, "full, weights 2: step 1 loss %.7f (1 expected)", s.loss1);
    test_train_refused(tmp, BASE, "--batch-size 1", "--batch-size must be at least 2");
    test_train_refused(tmp, BASE, "--packing true", "examples are neither packed nor grouped");
    test_train_refused(tmp, BASE, "--pref-ftx 0.1", "--pref-ftx: dpo only");
    test_train_refused(tmp, BASE, "--dataset identity --dataset-dir datasets",
                       "has no columns.kto_tag");
    test_train_refused(tmp, BASE, "--stage sft", "only for --stage kto");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_train_kto");
}
