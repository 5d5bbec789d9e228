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
