/* test_train_run.c: `tuna train` end to end on the bundled stories260K and identity data.
 * - eval loss goes down (LoRA and full), the run folder has what it promises;
 * - interrupting (SIGINT, which checkpoints, and SIGKILL between checkpoints) and then
 *   --resume gives the same loss at every step as the uninterrupted run, bit for bit;
 * - --config replays a run from its train_config.json with identical losses;
 * - with --threads 0 (the default) a run beside a busy process gives up a core;
 * - bad options fail with one line. Runs ./tuna (or $TUNA_BIN) from the repo root. */
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "src/optim.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

#define BASE                                                                                       \
    "--model models/stories260K --dataset identity --dataset-dir datasets "                        \
    "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --quiet "

/* From metrics.jsonl: the losses per step (index = step, below cap) and the count of step lines
 * (returned), the first and last eval losses, and (evs, up to ev_cap) the eval events' steps,
 * their count in *n_ev, and the last step in *last_step; NULL for what is not wanted. */
static int read_metrics(const char *dir, double *loss, int cap, double *eval0, double *eval_last,
                        int *evs, int ev_cap, int *n_ev, int *last_step) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL);
    if (!text) return -1;
    int n = 0, ne = 0;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "step")) {
            if (loss && step < cap)
                loss[step] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
            if (last_step) *last_step = step;
            n++;
        }
        if (t && !strcmp(t, "eval")) {
            double e = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
            if (step == 0 && eval0) *eval0 = e;
            if (eval_last) *eval_last = e;
            if (evs && ne < ev_cap) evs[ne] = step;
            ne++;
        }
        cJSON_Delete(j);
    }
    if (n_ev) *n_ev = ne;
    free(text);
    return n;
}

/* Losses per step (index = step) from metrics.jsonl; returns the count of step lines. */
static int read_losses(const char *dir, double *loss, int cap, double *eval0, double *eval_last) {
    return read_metrics(dir, loss, cap, eval0, eval_last, NULL, 0, NULL, NULL);
}

/* Starts a training in the background; returns its pid. */
static pid_t spawn(const char *args, const char *out) {
    pid_t p = fork();
    if (p == 0) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "exec %s train " BASE "%s --output %s 2>/dev/null",
                 test_tuna_bin(), args, out);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return p;
}

/* Waits until metrics.jsonl of dir shows step >= s (or 60 s). */
static void wait_step(const char *dir, int s) {
    double l[256];
    for (int i = 0; i < 6000; i++) {
        for (int k = 0; k < 256; k++)
            l[k] = -1;
        read_losses(dir, l, 256, NULL, NULL);
        if (l[s] >= 0) return;
        usleep(10000);
    }
}

static void compare(const char *what, const double *a, const double *b, int n) {
    int same = 1, first = -1;
    for (int i = 1; i <= n; i++)
        if (a[i] != b[i] && first < 0) {
            same = 0;
            first = i;
        }
    CHECK(same, "%s: losses differ from the uninterrupted run at step %d (%.9g vs %.9g)", what,
          first, first > 0 ? a[first] : 0, first > 0 ? b[first] : 0);
}

/* The eval events of dir's metrics.jsonl past step 0 (steps and losses, up to cap); returns
 * their count. *msg: the first log line that holds needle (malloc'd, NULL when none). */
static int read_evals(const char *dir, int *steps, double *loss, int cap, const char *needle,
                      char **msg) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL), *save = NULL;
    int n = 0;
    if (msg) *msg = NULL;
    for (char *l = text ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "msg"));
        int step = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "step"));
        if (t && !strcmp(t, "eval") && step > 0 && n < cap) {
            steps[n] = step;
            loss[n++] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
        }
        if (msg && !*msg && m && strstr(m, needle)) *msg = xstrdup(m);
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

/* Whether files a and b hold the same bytes. */
static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = xread_file(a, &na), *y = xread_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

/* reduce_lr_on_plateau (patience 0, factor 0.5): each step's logged lr is the schedule's after
 * the evals before it (the schedule's math: test_optim against torch) */
static void test_plateau_run(const char *tmp) {
    char d[400], cmd[2048], path[500];
    const char *kw = "{\"patience\": 0, \"factor\": 0.5}";
    snprintf(d, sizeof d, "%s/plateau", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --lr 3e-2 --lr-scheduler reduce_lr_on_plateau "
             "--lr-scheduler-kwargs '%s' --max-steps 12 --eval-steps 2 --save-steps 0 "
             "--val-size 0 --eval-dataset alpaca_en_demo --max-samples 16 --output %s",
             test_tuna_bin(), kw, d);
    int rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/metrics.jsonl", d);
    char *text = xread_file(path, NULL), *save = NULL;
    Sched s;
    TunaErr err = {0};
    int ok = rc == 0 && text && !sched_init(&s, "reduce_lr_on_plateau", kw, 3e-2, 0, 12, &err);
    int steps = 0, bad = 0, drops = 0;
    double last = 3e-2;
    for (char *l = ok ? strtok_r(text, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        double lr = test_json_number(l, "lr"), step = test_json_number(l, "step");
        if (!strncmp(l, "{\"type\":\"step\"", 14)) {
            bad += lr != sched_lr(&s, (int)step);
            drops += lr < last;
            last = lr;
            steps++;
        } else if (!strncmp(l, "{\"type\":\"eval\"", 14) && step > 0) {
            sched_eval(&s, test_json_number(l, "eval_loss"));
        }
    }
    CHECK(ok && steps == 12 && !bad && drops >= 1,
          "reduce_lr_on_plateau run: exit %d, %d steps, %d lrs off the schedule, %d drops", rc,
          steps, bad, drops);
    printf("  reduce_lr_on_plateau: 12 steps, the lr dropped %d times, after the evals as "
           "torch's\n",
           drops);
    free(text);
    test_train_refused(tmp, BASE, "--lr-scheduler reduce_lr_on_plateau --eval-steps 0",
                       "the evals step it");
}

/* freeze_trainable_modules mlp on the last 2 of stories260K's 5 layers: the result's mlp
 * weights of layers 3 and 4 moved, every other tensor is the base's, byte for byte */
static void test_freeze_modules(const char *tmp) {
    char d[400], cmd[2048], path[500];
    snprintf(d, sizeof d, "%s/freeze-mlp", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method freeze --freeze-layers 2 --freeze-trainable-modules mlp "
             "--lr 1e-2 --max-steps 3 --eval-steps 0 --save-steps 0 --output %s",
             test_tuna_bin(), d);
    int rc = test_system(cmd);
    snprintf(path, sizeof path, "%s/model.safetensors", d);
    SafeTensors *a = NULL, *b = NULL;
    TunaErr err = {0};
    int ok = rc == 0 && !safetensors_open("models/stories260K/model.safetensors", &a, &err) &&
             !safetensors_open(path, &b, &err);
    int moved = 0, kept = 0, wrong = 0;
    for (int i = 0; ok && i < safetensors_count(a); i++) {
        const StTensor *x = safetensors_at(a, i), *y = safetensors_find(b, x->name);
        if (!y || y->nbytes != x->nbytes) {
            wrong++;
            continue;
        }
        int same = !memcmp(x->data, y->data, x->nbytes);
        int want_move = (strstr(x->name, ".3.mlp.") || strstr(x->name, ".4.mlp.")) != 0;
        if (same == want_move) wrong++;
        moved += !same;
        kept += same;
    }
    CHECK(ok && moved == 6 && !wrong, "freeze mlp: exit %d, %d tensors moved, %d kept, %d wrong",
          rc, moved, kept, wrong);
    safetensors_free(a);
    safetensors_free(b);
}

/* Hugging Face's load_best_model_at_end and save_strategy best. A LoRA run on identity at a
 * constant lr too high for it, evaluated on alpaca_en_demo: its eval loss bottoms out before the
 * end. The result is the best checkpoint's adapter
 * byte for byte, and `tuna eval` of the run gives the best eval loss; save_total_limit 1 keeps
 * that checkpoint beside the newest, as transformers' rotate_checkpoints does. save_strategy
 * best: a checkpoint at each eval that lowered the loss, none other. The strategies' checks. */
static void test_load_best(const char *tmp) {
    char d[400], cmd[2048], p[600], q[600];
    snprintf(d, sizeof d, "%s/best", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --lr 3e-2 --lr-scheduler constant --max-steps 12 "
             "--eval-steps 2 --save-steps 2 --save-total-limit 1 --load-best-model-at-end "
             "--val-size 0 --eval-dataset alpaca_en_demo --max-samples 16 --output %s",
             test_tuna_bin(), d);
    int rc = test_system(cmd);
    int st[16], n, b = 0;
    double el[16], best = (double)INFINITY;
    char *msg = NULL;
    n = read_evals(d, st, el, 16, "load_best_model_at_end", &msg);
    for (int i = 0; i < n; i++)
        if (el[i] < best) best = el[i], b = st[i];
    CHECK(rc == 0 && n == 6 && b > 0 && b < 12, "load_best: exit %d, %d evals, best at step %d", rc,
          n, b);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    snprintf(q, sizeof q, "%s/checkpoint-%d/adapter_model.safetensors", d, b);
    CHECK(same_file(p, q), "load_best: the result is not checkpoint-%d's adapter", b);
    for (int s = 2; s < 12; s += 2) { /* kept: the best and the newest (10) */
        snprintf(p, sizeof p, "%s/checkpoint-%d", d, s);
        int want = s == b || s == 10;
        CHECK((access(p, F_OK) == 0) == want, "load_best: checkpoint-%d %s", s,
              want ? "deleted" : "kept");
    }
    char want_msg[64];
    snprintf(want_msg, sizeof want_msg, "the result is checkpoint-%d's", b);
    CHECK(msg && strstr(msg, want_msg), "load_best: the log says %s", msg ? msg : "nothing");
    char *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd,
             "eval --model %s --dataset alpaca_en_demo --max-samples 16 --cutoff-len 256 "
             "--template vanilla "
             "--no-generate --batch-size 4",
             d);
    int erc = test_run_tuna(tmp, cmd, NULL, &out, &errs);
    double got = test_json_number(out, "eval_loss");
    CHECK(erc == 0 && fabs(got - best) <= 1e-5 * fabs(best),
          "load_best: tuna eval of the result %.9g, the best eval %.9g (exit %d: %s)", got, best,
          erc, errs);
    printf("  load_best_model_at_end: evals");
    for (int i = 0; i < n; i++)
        printf(" %d:%.4f", st[i], el[i]);
    printf("; the result is checkpoint-%d's, tuna eval %.6f\n", b, got);
    free(out);
    free(errs);
    free(msg);
    /* save_strategy best: checkpoints exactly at the evals that lowered the loss */
    snprintf(d, sizeof d, "%s/save-best", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --lr 1e-1 --lr-scheduler constant --max-steps 12 "
             "--eval-steps 2 --save-strategy best --save-total-limit 0 --val-size 0 "
             "--eval-dataset alpaca_en_demo --max-samples 16 --output %s",
             test_tuna_bin(), d);
    rc = test_system(cmd);
    n = read_evals(d, st, el, 16, "", NULL);
    best = (double)INFINITY;
    int saved = 0;
    for (int i = 0; i < n; i++) {
        int want = el[i] < best && st[i] < 12;
        if (el[i] < best) best = el[i];
        snprintf(p, sizeof p, "%s/checkpoint-%d", d, st[i]);
        CHECK((access(p, F_OK) == 0) == want, "save_strategy best: checkpoint-%d %s", st[i],
              want ? "missing" : "written");
        saved += want;
    }
    CHECK(rc == 0 && n == 6 && saved >= 1 && saved < 5,
          "save_strategy best: exit %d, %d evals, %d saved", rc, n, saved);
    /* early_stopping_steps 2 (EarlyStoppingCallback's patience) on the first run: the evals at 4
     * and 6 do not beat step 2's, so the run ends at step 6 with checkpoint-2's adapter */
    snprintf(d, sizeof d, "%s/early", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --lr 3e-2 --lr-scheduler constant --max-steps 12 "
             "--eval-steps 2 --save-steps 2 --load-best-model-at-end --early-stopping-steps 2 "
             "--val-size 0 --eval-dataset alpaca_en_demo --max-samples 16 --output %s",
             test_tuna_bin(), d);
    rc = test_system(cmd);
    int last = 0;
    read_metrics(d, NULL, 0, NULL, NULL, NULL, 0, NULL, &last);
    n = read_evals(d, st, el, 16, "early stopping", &msg);
    CHECK(rc == 0 && last == 6 && n == 3 && msg && strstr(msg, "ends at step 6 of 12"),
          "early stopping: exit %d, last step %d, %d evals, said %s", rc, last, n,
          msg ? msg : "nothing");
    free(msg);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", d);
    snprintf(q, sizeof q, "%s/checkpoint-2/adapter_model.safetensors", d);
    CHECK(same_file(p, q), "early stopping: the result is not checkpoint-2's adapter");
    /* data_seed: the data order alone (the LoRA init and the split are seed's): the same
     * eval before training, another first batch; data_seed = seed is the default order */
    double l3[4] = {0}, l3b[4] = {0}, l4[4] = {0}, e3 = 0, e3b = 0, e4 = 0;
    const char *ds[3] = {"", "--data-seed 3", "--data-seed 4"};
    double *ls[3] = {l3, l3b, l4}, *es[3] = {&e3, &e3b, &e4};
    for (int i = 0; i < 3; i++) {
        snprintf(d, sizeof d, "%s/ds%d", tmp, i);
        snprintf(cmd, sizeof cmd,
                 "%s train " BASE "--method lora --max-steps 2 --eval-steps 0 --save-steps 0 %s "
                 "--output %s",
                 test_tuna_bin(), ds[i], d);
        CHECK(test_system(cmd) == 0, "data_seed run %d", i);
        read_losses(d, ls[i], 4, es[i], NULL);
    }
    CHECK(l3[1] == l3b[1] && l3[2] == l3b[2] && e3 == e3b,
          "data_seed 3 with seed 3: %.9g %.9g vs the default order's %.9g %.9g", l3b[1], l3b[2],
          l3[1], l3[2]);
    CHECK(e4 == e3 && l4[1] != l3[1],
          "data_seed 4: eval before training %.9g (%.9g), step 1 %.9g (%.9g)", e4, e3, l4[1],
          l3[1]);
    test_train_refused(tmp, BASE, "--early-stopping-steps 2", "needs --load-best-model-at-end");
    /* what transformers' TrainingArguments refuses, and what needs an eval set */
    test_train_refused(tmp, BASE, "--load-best-model-at-end --eval-steps 3 --save-steps 4",
                       "must be a multiple of --eval-steps");
    test_train_refused(tmp, BASE, "--load-best-model-at-end --eval-strategy epoch",
                       "the eval and save strategies must match");
    test_train_refused(tmp, BASE, "--load-best-model-at-end --eval-steps 0",
                       "got no (eval_steps 0) and steps");
    test_train_refused(tmp, BASE, "--save-strategy best --val-size 0", "there is no eval set");
    test_train_refused(tmp, BASE, "--save-strategy best --eval-strategy no",
                       "--eval-strategy is no");
    test_train_refused(tmp, BASE, "--eval-strategy best", "--eval-strategy: must be");
}

int main(void) {
    if (access(test_tuna_bin(), X_OK)) {
        CHECK(0, "%s not built", test_tuna_bin());
        return test_report("test_train_run");
    }
    char tmpl[] = "/tmp/tuna_train_XXXXXX", d[512], d2[512];
    char *tmp = mkdtemp(tmpl);
    const int N = 24;
    const char *args = "--method lora --lora-target all --lr 5e-3 --max-steps 24 --eval-steps 12 "
                       "--save-steps 6 --save-total-limit 10 --lora-dropout 0.1 --grad-accum 2";
    // --- the reference run
    snprintf(d, sizeof d, "%s/ref", tmp);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s train " BASE "%s --output %s", test_tuna_bin(), args, d);
    CHECK(test_system(cmd) == 0, "reference training failed");
    double ref[64] = {0}, e0 = 0, e1 = 0;
    CHECK(read_losses(d, ref, 64, &e0, &e1) == N, "expected %d step lines", N);
    CHECK(e1 < e0, "LoRA: eval loss did not go down: %.4f -> %.4f", e0, e1);
    printf("  lora: eval loss %.4f -> %.4f over %d steps\n", e0, e1, N);
    char p[600];
    const char *files[] = {"train_config.json",
                           "trainer_log.jsonl",
                           "adapter_config.json",
                           "adapter_model.safetensors",
                           "checkpoint-18/trainer_state.json",
                           "checkpoint-18/adapter_model.safetensors",
                           "checkpoint-18/optimizer.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", d, files[i]);
        CHECK(access(p, R_OK) == 0, "run folder lacks %s", files[i]);
    }
    // --- SIGINT in the middle: checkpoint, clean exit, resume
    snprintf(d2, sizeof d2, "%s/int", tmp);
    pid_t pid = spawn(args, d2);
    wait_step(d2, 9);
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130,
          "SIGINT: trainer did not exit with 130 after its checkpoint (status %d)", st);
    double got[64] = {0};
    snprintf(cmd, sizeof cmd, "%s train --resume %s --quiet", test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "resume after SIGINT failed");
    CHECK(read_losses(d2, got, 64, NULL, NULL) == N, "resumed run: expected %d step lines", N);
    compare("SIGINT + resume", ref, got, N);
    // --- SIGKILL between checkpoints: resume from the last checkpoint, redo the lost steps
    snprintf(d2, sizeof d2, "%s/kill", tmp);
    pid = spawn(args, d2);
    wait_step(d2, 15);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    snprintf(cmd, sizeof cmd, "%s train --resume %s --quiet", test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "resume after SIGKILL failed");
    memset(got, 0, sizeof got);
    CHECK(read_losses(d2, got, 64, NULL, NULL) == N,
          "resumed run after SIGKILL: expected %d step lines", N);
    compare("SIGKILL + resume", ref, got, N);
    // --- the saved config replays the same run
    snprintf(d2, sizeof d2, "%s/replay", tmp);
    snprintf(p, sizeof p, "%s/train_config.json", d);
    snprintf(cmd, sizeof cmd, "%s train --config %s --quiet --output %s", test_tuna_bin(), p, d2);
    CHECK(test_system(cmd) == 0, "--config replay failed");
    memset(got, 0, sizeof got);
    read_losses(d2, got, 64, NULL, NULL);
    compare("--config replay", ref, got, N);
    // --- full fine-tuning lowers eval loss too
    snprintf(d2, sizeof d2, "%s/full", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE
             "--method full --lr 3e-3 --max-steps 20 --eval-steps 20 --save-steps 0 --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "full training failed");
    read_losses(d2, got, 64, &e0, &e1);
    CHECK(e1 < e0, "full: eval loss did not go down: %.4f -> %.4f", e0, e1);
    printf("  full: eval loss %.4f -> %.4f over 20 steps\n", e0, e1);
    snprintf(p, sizeof p, "%s/model.safetensors", d2);
    CHECK(access(p, R_OK) == 0, "full run lacks model.safetensors");
    // --- freeze
    snprintf(d2, sizeof d2, "%s/freeze", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method freeze --freeze-layers 2 --lr 3e-3 --max-steps 10 "
             "--eval-steps 10 --save-steps 0 --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "freeze training failed");
    read_losses(d2, got, 64, &e0, &e1);
    CHECK(e1 < e0, "freeze: eval loss did not go down: %.4f -> %.4f", e0, e1);
    printf("  freeze: eval loss %.4f -> %.4f over 10 steps\n", e0, e1);
    // --- ptuning
    snprintf(d2, sizeof d2, "%s/pt", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method ptuning --prefix-tokens 8 --lr 3e-2 --max-steps 10 "
             "--eval-steps 10 --save-steps 0 --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "ptuning training failed");
    read_losses(d2, got, 64, &e0, &e1);
    CHECK(e1 < e0, "ptuning: eval loss did not go down: %.4f -> %.4f", e0, e1);
    snprintf(p, sizeof p, "%s/adapter_config.json", d2);
    char *ac = xread_file(p, NULL);
    CHECK(ac && strstr(ac, "PREFIX_TUNING"),
          "ptuning run lacks a PREFIX_TUNING adapter_config.json");
    free(ac);
    // --- Hugging Face's epoch strategies: an eval and a checkpoint at the end of each epoch
    // (2 epochs: the eval before training, at the first epoch's end and at the end; one
    // checkpoint, the end's being the result), whatever eval_steps and save_steps say
    snprintf(d2, sizeof d2, "%s/epochs", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --lr 1e-2 --epochs 2 --grad-accum 4 --eval-steps 1 "
             "--save-steps 1 --eval-strategy epoch --save-strategy epoch --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "epoch strategies: training failed");
    int ev[16], last = 0, nev = 0;
    read_metrics(d2, NULL, 0, NULL, NULL, ev, 16, &nev, &last);
    CHECK(last > 0 && last % 2 == 0 && nev == 3 && ev[0] == 0 && ev[1] == last / 2 && ev[2] == last,
          "epoch strategies: %d evals (%d %d %d) over %d steps, want 0, %d, %d", nev, ev[0], ev[1],
          ev[2], last, last / 2, last);
    for (int s = 1; s <= last; s++) {
        snprintf(p, sizeof p, "%s/checkpoint-%d", d2, s);
        int want = s == last / 2;
        CHECK((access(p, F_OK) == 0) == want, "epoch strategies: checkpoint-%d %s", s,
              want ? "missing" : "written");
    }
    printf("  epoch strategies: evals at steps 0, %d, %d; checkpoint-%d only\n", last / 2, last,
           last / 2);
    // --- eval_strategy no: the end only (eval_steps 1 ignored)
    snprintf(d2, sizeof d2, "%s/no-eval", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train " BASE "--method lora --max-steps 4 --eval-steps 1 --save-steps 0 "
             "--eval-strategy no --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "eval_strategy no: training failed");
    read_metrics(d2, NULL, 0, NULL, NULL, ev, 16, &nev, &last);
    CHECK(nev == 2 && ev[0] == 0 && ev[1] == 4, "eval_strategy no: %d evals (%d %d)", nev, ev[0],
          ev[1]);
    test_load_best(tmp);
    test_freeze_modules(tmp);
    test_plateau_run(tmp);
    // --- threads 0 follows the cores other processes leave free: a busy process beside the run
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        SKIP("one core: no other core for the run to give up");
    } else {
        pid_t hog = fork();
        if (hog == 0) {
            alarm(120);
            volatile unsigned spin = 0;
            for (;;)
                spin++;
        }
        snprintf(d2, sizeof d2, "%s/follow", tmp);
        snprintf(cmd, sizeof cmd,
                 "%s train --model models/stories260K --dataset alpaca_en_demo --dataset-dir "
                 "datasets "
                 "--template vanilla --method full --max-steps 30 --eval-steps 0 --save-steps 0 "
                 "--quiet "
                 "--output %s",
                 test_tuna_bin(), d2);
        int rc = test_system(cmd);
        kill(hog, SIGKILL);
        waitpid(hog, NULL, 0);
        snprintf(p, sizeof p, "%s/metrics.jsonl", d2);
        char *mj = xread_file(p, NULL);
        const char *msg = mj ? strstr(mj, "\"msg\":\"threads ") : NULL;
        CHECK(rc == 0 && msg && strstr(msg, "other processes are busy"),
              "training beside a busy process did not give up a core (exit %d)", rc);
        if (msg) printf("  beside a busy process: %.60s\n", msg + 7);
        free(mj);
    }
    // --- the defaults learn: LoRA on all linear layers at lr auto (1e-2 for 260K parameters);
    // the former defaults (q_proj,v_proj at 1e-3) ended its 3 epochs at eval loss 12.3
    snprintf(d2, sizeof d2, "%s/defaults", tmp);
    snprintf(cmd, sizeof cmd,
             "%s train --model models/stories260K --dataset identity --dataset-dir datasets "
             "--vars name=Tuna,author=Ann --quiet --output %s",
             test_tuna_bin(), d2);
    CHECK(test_system(cmd) == 0, "training with the defaults failed");
    e0 = e1 = 0;
    read_losses(d2, got, 64, &e0, &e1);
    CHECK(e1 < 8, "defaults: eval loss %.4f -> %.4f, want below 8", e0, e1);
    printf("  defaults: eval loss %.4f -> %.4f\n", e0, e1);
    snprintf(p, sizeof p, "%s/metrics.jsonl", d2);
    char *mj = xread_file(p, NULL);
    CHECK(mj && strstr(mj, "\"lr\":\"auto\"") && strstr(mj, "\"lora_target\":\"all\"") &&
                  strstr(mj, "lr 0.01 (auto)"),
          "defaults: the start event lacks lr auto (0.01) and lora_target all");
    free(mj);
    // --- bad input: one line, non-zero
    const char *bad[] = {"--method nope",
                         "--lr abc",
                         "--dataset no_such_dataset",
                         "--lora-target wq",
                         "--eval-strategy epochs",
                         "--stage kto --neftune-noise-alpha 5",
                         "--stage rm --label-smoothing-factor 0.1",
                         "--stage pt --use-dft-loss",
                         "--use-dft-loss --label-smoothing-factor 0.1",
                         "--use-dft-loss --use-eaft-loss",
                         "--mix-strategy mixed",
                         "--interleave-probs 0.5,0.5",
                         "--dataset identity,alpaca_en_demo --mix-strategy interleave_under "
                         "--interleave-probs 0.3",
                         "--stage pt --dataset c4_demo,tinystories_valid_slice --mix-strategy "
                         "interleave_over",
                         "--stage dpo --use-eaft-loss",
                         "--model /nonexistent",
                         "--sample-prompts 'a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p|q'"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char c2[1024], ef[600];
        snprintf(ef, sizeof ef, "%s/err.txt", tmp);
        snprintf(c2, sizeof c2, "%s train " BASE "%s --output %s/bad 2>%s", test_tuna_bin(), bad[i],
                 tmp, ef);
        int s2 = system(c2);
        char *e = xread_file(ef, NULL);
        int lines = 0;
        for (char *q = e; q && *q; q++)
            lines += *q == '\n';
        CHECK(WIFEXITED(s2) && WEXITSTATUS(s2) != 0, "%s: exit 0", bad[i]);
        CHECK(lines == 1, "%s: want one line on stderr, got %d: %s", bad[i], lines, e ? e : "");
        free(e);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_train_run");
}
