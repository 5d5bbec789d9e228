/* test_keep_work.c: `tuna train` and `tuna export` never destroy the user's work. Runs ./tuna
 * (or $TUNA_BIN) from the repo root on the bundled stories260K and identity data:
 * - an existing run is refused (one line naming the folder, --resume and --overwrite);
 *   --overwrite replaces it, its old checkpoints too
 * - every failed check leaves an existing folder byte-identical and creates no folder
 * - RUN/.lock: a second trainer is refused with the holder's pid
 * - exit codes: stop (control file) 3, SIGINT 130, SIGTERM 143, each with a checkpoint
 * - resume: a failed one changes nothing; stray and corrupt checkpoints are skipped with a
 *   message, the newest that validates is used; every trainer_state.json field is checked;
 *   changed settings are refused unless --allow-changes, which records them
 * - metrics.jsonl write errors (a file-size limit: EFBIG) stop the run with the file's name;
 *   stale checkpoint-N.tmp-PID folders are removed on the next start
 * - NaN/Inf steps (a genuine divergence, lr 1e30) are skipped, counted, and stop the run
 *   after --max-bad-steps, the last good checkpoint kept
 * - per-option range messages; --epochs 1.5; unfilled {{placeholders}} warned / --strict
 * - headless output: eval, sample and summary lines, progress not every step, no ETA at step 1
 * - export: a non-empty foreign folder is refused, --overwrite keeps the user's files,
 *   --out merged/ and --out . work with no stray temporary folder. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "src/xalloc.h"

static char bin[PATH_MAX], tmp[256], errf[400];

#define BASE                                                                                       \
    "--model models/stories260K --dataset identity --dataset-dir datasets "                        \
    "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --seed 3 --cutoff-len 64 "      \
    "--sample-prompts '' --eval-steps 0 "

/* Runs a shell command with stderr to errf; returns the exit status (128+sig if killed). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[16384], full[17000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s 2>%s", cmd, errf);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The last stderr (static buffer). */
static const char *err_text(void) {
    static char buf[65536];
    FILE *f = fopen(errf, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = '\0';
    if (f) fclose(f);
    return buf;
}

static int lines_of(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Every file under dir (but .lock, whose pid a start rewrites) with its checksum. */
static char *snapshot(const char *dir) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "cd %s 2>/dev/null && find . -path ./.lock -prune -o -print | sort | while read f; "
             "do if [ -f \"$f\" ]; then md5sum \"$f\"; else echo \"dir $f\"; fi; done",
             dir);
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 16, n = 0;
    char *out = xmalloc(cap);
    while (p && n + 1 < cap) {
        size_t k = fread(out + n, 1, cap - 1 - n, p);
        if (!k) break;
        n += k;
    }
    out[n] = '\0';
    if (p) pclose(p);
    return out;
}

static char *read_text(const char *dir, const char *name) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return xread_file(p, NULL);
}

static int exists(const char *dir, const char *name) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Lines of metrics.jsonl of dir whose "type" is type. */
static int count_type(const char *dir, const char *type) {
    char *t = read_text(dir, "metrics.jsonl");
    int n = 0;
    char *save = NULL;
    for (char *l = t ? strtok_r(t, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *ty = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        n += ty && !strcmp(ty, type);
        cJSON_Delete(j);
    }
    free(t);
    return n;
}

/* The number field key of the first metrics line of type (NAN if none). */
static double first_num(const char *dir, const char *type, const char *key) {
    char *t = read_text(dir, "metrics.jsonl");
    double v = (double)NAN;
    char *save = NULL;
    for (char *l = t ? strtok_r(t, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *ty = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        if (ty && !strcmp(ty, type) && cJSON_IsNumber(cJSON_GetObjectItem(j, key))) {
            v = cJSON_GetObjectItem(j, key)->valuedouble;
            cJSON_Delete(j);
            break;
        }
        cJSON_Delete(j);
    }
    free(t);
    return v;
}

/* Starts `tuna train BASE args --output dir` in the background, stderr to dir.err. */
static pid_t spawn(const char *args, const char *dir) {
    pid_t p = fork();
    if (p == 0) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "exec %s train " BASE "%s --output %s 2>%s.err", bin, args, dir,
                 dir);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return p;
}

/* Waits (up to 60 s) until dir's metrics.jsonl has a step line. */
static int wait_step(const char *dir) {
    for (int i = 0; i < 6000; i++) {
        if (count_type(dir, "step") > 0) return 1;
        usleep(10000);
    }
    return 0;
}

static int wait_exit(pid_t p) {
    int st;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int has_ckpt(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += !strncmp(e->d_name, "checkpoint-", 11) && !strchr(e->d_name, '.');
    if (d) closedir(d);
    return n;
}

static void test_existing_run(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/run", tmp);
    CHECK(sh("%s train " BASE "--max-steps 6 --save-steps 2 --save-total-limit 10 --output %s", bin,
             d) == 0,
          "first run failed: %s", err_text());
    CHECK(exists(d, "checkpoint-4"), "first run: no checkpoint-4");
    char *before = snapshot(d);
    int rc = sh("%s train " BASE "--max-steps 2 --output %s", bin, d);
    const char *e = err_text();
    CHECK(rc == 1 && lines_of(e) == 1 && strstr(e, d) && strstr(e, "--resume") &&
                  strstr(e, "--overwrite"),
          "existing run: want one line naming the folder, --resume and --overwrite (exit %d): %s",
          rc, e);
    printf("  existing run: %s", e);
    char *after = snapshot(d);
    CHECK(!strcmp(before, after), "a refused train changed the existing run");
    free(after);
    // --- every failed check leaves the folder byte-identical, even with --overwrite
    const char *bad[] = {"--model /nonexistent",
                         "--dataset no_such_dataset",
                         "--template no_such",
                         "--lr -1",
                         "--batch-size 0",
                         "--lora-target wq",
                         "--method nope",
                         "--backend nope",
                         "--lora-trainable-tokens no_such_token_xyz"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = sh("%s train " BASE "--max-steps 2 %s --overwrite --output %s", bin, bad[i], d);
        e = err_text();
        CHECK(rc != 0 && lines_of(e) == 1, "%s: want one line, non-zero (exit %d): %s", bad[i], rc,
              e);
        after = snapshot(d);
        CHECK(!strcmp(before, after), "%s --overwrite: the failed start changed the run folder",
              bad[i]);
        free(after);
        char nd[500];
        snprintf(nd, sizeof nd, "%s/junk%zu", tmp, i);
        rc = sh("%s train " BASE "--max-steps 2 %s --output %s", bin, bad[i], nd);
        CHECK(rc != 0 && access(nd, F_OK) != 0, "%s: a failed start created %s", bad[i], nd);
    }
    free(before);
    // --- --overwrite replaces the run and its old checkpoints
    rc = sh("%s train " BASE "--max-steps 2 --save-steps 0 --overwrite --output %s", bin, d);
    CHECK(rc == 0, "--overwrite failed: %s", err_text());
    CHECK(!exists(d, "checkpoint-2") && !exists(d, "checkpoint-4"),
          "--overwrite left the old run's checkpoints");
    CHECK(count_type(d, "start") == 1 && count_type(d, "step") == 2,
          "--overwrite: metrics.jsonl is not the new run's alone");
}

static void test_lock_and_exits(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/lock", tmp);
    pid_t p = spawn("--max-steps 100000 --save-steps 0", d);
    CHECK(wait_step(d), "background trainer did not start");
    int rc = sh("%s train " BASE "--max-steps 2 --overwrite --output %s", bin, d);
    char want[600];
    snprintf(want, sizeof want, "another tuna train (pid %d) is writing %s", (int)p, d);
    const char *e = err_text();
    CHECK(rc == 1 && strstr(e, want), "second trainer: want \"%s\" (exit %d): %s", want, rc, e);
    printf("  lock: %s", e);
    rc = sh("%s train --resume %s", bin, d);
    CHECK(rc == 1 && strstr(err_text(), "another tuna train"), "resume while running: exit %d: %s",
          rc, err_text());
    // --- stop via the control file: exit 3, checkpoint saved
    char path[500];
    snprintf(path, sizeof path, "%s/control", d);
    FILE *f = fopen(path, "w");
    if (f) fputs("stop\n", f), fclose(f);
    rc = wait_exit(p);
    CHECK(rc == 3, "stop via control file: exit %d, want 3", rc);
    CHECK(has_ckpt(d) == 1, "stop: no checkpoint saved");
    // --- SIGINT 130, SIGTERM 143, each with a checkpoint
    const int sigs[] = {SIGINT, SIGTERM}, want_rc[] = {130, 143};
    for (int k = 0; k < 2; k++) {
        char dk[450];
        snprintf(dk, sizeof dk, "%s/sig%d", tmp, k);
        p = spawn("--max-steps 100000 --save-steps 0", dk);
        CHECK(wait_step(dk), "trainer %d did not start", k);
        kill(p, sigs[k]);
        rc = wait_exit(p);
        CHECK(rc == want_rc[k], "signal %d: exit %d, want %d", sigs[k], rc, want_rc[k]);
        CHECK(has_ckpt(dk) == 1, "signal %d: no checkpoint saved", sigs[k]);
    }
    printf("  exit codes: stop 3, SIGINT 130, SIGTERM 143 (each with a checkpoint)\n");
}

/* Writes text as checkpoint-step/trainer_state.json of dir. */
static void put_state(const char *dir, int step, const char *text) {
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoint-%d/trainer_state.json", dir, step);
    FILE *f = fopen(p, "w");
    if (f) fputs(text, f), fclose(f);
}

static void test_resume(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/res", tmp);
    CHECK(sh("%s train " BASE "--max-steps 6 --save-steps 2 --save-total-limit 10 --output %s", bin,
             d) == 0,
          "run for resume failed: %s", err_text());
    char *st2 = read_text(d, "checkpoint-2/trainer_state.json"),
         *st4 = read_text(d, "checkpoint-4/trainer_state.json");
    CHECK(st2 && st4, "no trainer_state.json");
    if (!st2 || !st4) return;
    // --- every field range-checked, naming the file and field; a failed resume changes nothing
    const char *corrupt[][2] = {
            {"{\"global_step\": 4, \"epoch\": 0, \"cursor\": 0, \"optimizer_t\": 1e12}",
             "\"optimizer_t\""},
            {"{\"global_step\": -5, \"epoch\": 0, \"cursor\": 0, \"optimizer_t\": 1}",
             "\"global_step\""},
            {"{\"global_step\": 4, \"epoch\": 1e9, \"cursor\": 0, \"optimizer_t\": 4}",
             "\"epoch\""},
            {"{\"global_step\": 4, \"epoch\": 0, \"cursor\": 99999, \"optimizer_t\": 4}",
             "\"cursor\""},
            {"{\"global_step\": 4, \"epoch\": 0, \"cursor\": 1.5, \"optimizer_t\": 4}",
             "\"cursor\""},
            {"{\"global_step\": 4, \"epoch\": 0, \"cursor\": 0, \"optimizer_t\": 4, "
             "\"elapsed\": -3}",
             "\"elapsed\""},
            {"{\"global_step\": 4, \"epoch\": 0, \"cursor\": 0, \"optimizer_t\": 4, "
             "\"best_eval_loss\": -7}",
             "\"best_eval_loss\""},
            {"{\"global_step\": 9, \"epoch\": 0, \"cursor\": 0, \"optimizer_t\": 4}",
             "\"global_step\""},
            {"not json", "invalid JSON"}};
    put_state(d, 2, "garbage");
    for (size_t i = 0; i < sizeof corrupt / sizeof corrupt[0]; i++) {
        put_state(d, 4, corrupt[i][0]);
        char *before = snapshot(d);
        int rc = sh("%s train --resume %s", bin, d);
        const char *e = err_text();
        CHECK(rc == 1 && strstr(e, "checkpoint-4/trainer_state.json") && strstr(e, corrupt[i][1]) &&
                      strstr(e, "nothing was changed"),
              "corrupt state %zu: want a message naming the file and %s (exit %d): %s", i,
              corrupt[i][1], rc, e);
        if (i == 0) printf("  corrupt state: %s", e);
        char *after = snapshot(d);
        CHECK(!strcmp(before, after), "corrupt state %zu: the failed resume changed the folder", i);
        free(before);
        free(after);
    }
    // --- fall back: checkpoint-99 (empty) and checkpoint-4 (corrupt) skipped, checkpoint-2 used
    put_state(d, 2, st2);
    put_state(d, 4, corrupt[0][0]);
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoint-99", d);
    mkdir(p, 0755);
    /* a stale checkpoint-N.tmp-PID of a process that is gone */
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    /* and checkpoint-2 caught mid-replacement: only its .old-PID copy is there */
    char c2[600], c2old[700];
    snprintf(c2, sizeof c2, "%s/checkpoint-2", d);
    snprintf(c2old, sizeof c2old, "%s.old-%d", c2, (int)dead);
    rename(c2, c2old);
    snprintf(p, sizeof p, "%s/checkpoint-5.tmp-%d", d, (int)dead);
    mkdir(p, 0755);
    int rc = sh("%s train --resume %s", bin, d);
    const char *e = err_text();
    CHECK(strstr(e, "restored checkpoint-2") && access(c2old, F_OK) != 0,
          "checkpoint-2.old-PID was not restored: %s", e);
    CHECK(rc == 0 && strstr(e, "checkpoint-99 skipped") && strstr(e, "checkpoint-4 skipped") &&
                  strstr(e, "resumed from checkpoint-2, the newest that validates"),
          "fallback resume (exit %d): %s", rc, e);
    CHECK(access(p, F_OK) != 0 && strstr(e, "left by an interrupted write"), "stale %s not removed",
          p);
    CHECK(count_type(d, "step") == 6, "resumed run: %d step lines, want 6", count_type(d, "step"));
    // --- changed settings: refused (nothing changed), or recorded with --allow-changes
    char *before = snapshot(d);
    rc = sh("%s train --resume %s --lr 5e-2", bin, d);
    e = err_text();
    CHECK(rc == 1 && strstr(e, "lr auto -> 0.05") && strstr(e, "--allow-changes"),
          "changed lr: want it refused naming the key (exit %d): %s", rc, e);
    printf("  changed settings: %s", e);
    char *after = snapshot(d);
    CHECK(!strcmp(before, after), "refused resume changed the folder");
    free(before);
    free(after);
    rc = sh("%s train --resume %s --lr 5e-2 --allow-changes", bin, d);
    CHECK(rc == 0, "--allow-changes failed: %s", err_text());
    char *cfg = read_text(d, "train_config.json"), *met = read_text(d, "metrics.jsonl");
    CHECK(cfg && strstr(cfg, "\"history\"") && strstr(cfg, "lr auto -> 0.05"),
          "train_config.json lacks the history of the change");
    CHECK(met && strstr(met, "resumed with changed settings"), "metrics.jsonl lacks the change");
    free(cfg);
    free(met);
    free(st2);
    free(st4);
}

static void test_write_error_and_nan(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/efbig", tmp);
    CHECK(sh("%s train " BASE "--max-steps 4 --save-steps 2 --output %s", bin, d) == 0,
          "run for EFBIG failed: %s", err_text());
    char *ck = read_text(d, "checkpoint-2/trainer_state.json");
    struct stat sb;
    char mp[500];
    snprintf(mp, sizeof mp, "%s/metrics.jsonl", d);
    stat(mp, &sb);
    /* a file-size limit a little past metrics.jsonl: its writes fail with EFBIG */
    pid_t p = fork();
    if (p == 0) {
        struct rlimit rl = {(rlim_t)sb.st_size + 1500, (rlim_t)sb.st_size + 1500};
        setrlimit(RLIMIT_FSIZE, &rl);
        signal(SIGXFSZ, SIG_IGN);
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "exec %s train --resume %s --max-steps 400 --save-steps 0 --allow-changes 2>%s",
                 bin, d, errf);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int rc = wait_exit(p);
    const char *e = err_text();
    CHECK(rc == 1 && strstr(e, "metrics.jsonl: cannot write: File too large"),
          "EFBIG: want a one-line error naming metrics.jsonl (exit %d): %s", rc, e);
    if (strstr(e, "metrics.jsonl: cannot write")) printf("  write error: %s", strstr(e, d));
    char *ck2 = read_text(d, "checkpoint-2/trainer_state.json");
    CHECK(ck && ck2 && !strcmp(ck, ck2), "EFBIG: the last good checkpoint was not kept");
    free(ck);
    free(ck2);
    // --- a genuine divergence: lr 1e30 makes the weights overflow; steps skipped, then a stop
    ck = read_text(d, "checkpoint-2/trainer_state.json");
    rc = sh("%s train --resume %s --method lora --lr 1e30 --max-grad-norm 0 --max-bad-steps 3 "
            "--max-steps 400 --save-steps 1 --allow-changes",
            bin, d);
    e = err_text();
    CHECK(rc == 1 && strstr(e, "3 steps in a row with a non-finite loss or gradient") &&
                  strstr(e, "checkpoint-2 is kept"),
          "divergence: want a stop after 3 bad steps keeping checkpoint-2 (exit %d): %s", rc, e);
    const char *last = strstr(e, "stopped at step");
    if (last) printf("  divergence: %s", last);
    char *met = read_text(d, "metrics.jsonl");
    int skipped = 0;
    for (const char *q = met; q && (q = strstr(q, "skipped: loss")); q++)
        skipped++;
    CHECK(skipped == 3, "divergence: %d skipped-step log lines, want 3", skipped);
    free(met);
    ck2 = read_text(d, "checkpoint-2/trainer_state.json");
    CHECK(ck && ck2 && !strcmp(ck, ck2), "divergence: checkpoint-2 changed");
    free(ck);
    free(ck2);
}

static void test_options(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/opt", tmp);
    struct {
        const char *arg, *want;
    } m[] = {
            {"--lr -1", "tuna: --lr: must be a number > 0 or auto, got -1\n"},
            {"--lr 0", "tuna: --lr: must be a number > 0 or auto, got 0\n"},
            {"--batch-size 0", "tuna: --batch-size: must be an integer from 1 to 65536, got 0\n"},
            {"--lora-dropout 1.5",
             "tuna: --lora-dropout: must be a number from 0 to 0.99, got 1.5\n"},
            {"--grad-accum x", "tuna: --grad-accum: must be an integer from 1 to 65536, got x\n"},
            {"--cutoff-len 1", "tuna: --cutoff-len: must be an integer from 2 to 1048576, got 1\n"},
            {"--warmup-ratio 2", "tuna: --warmup-ratio: must be a number from 0 to 1, got 2\n"}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        int rc = sh("%s train " BASE "%s --output %s", bin, m[i].arg, d);
        CHECK(rc == 2 && !strcmp(err_text(), m[i].want), "%s: want \"%s\", got (exit %d) \"%s\"",
              m[i].arg, m[i].want, rc, err_text());
    }
    CHECK(access(d, F_OK) != 0, "a refused option created the run folder");
    // --- fractional epochs
    char d1[450], d15[450];
    snprintf(d1, sizeof d1, "%s/ep1", tmp);
    snprintf(d15, sizeof d15, "%s/ep15", tmp);
    int r1 = sh("%s train " BASE "--batch-size 16 --epochs 1 --save-steps 0 --output %s", bin, d1);
    int r15 = sh("%s train " BASE "--batch-size 16 --epochs 1.5 --save-steps 0 --output %s", bin,
                 d15);
    double t1 = first_num(d1, "start", "total_steps"), t15 = first_num(d15, "start", "total_steps");
    CHECK(r1 == 0 && r15 == 0 && t15 == ceil(1.5 * t1) && count_type(d15, "step") == (int)t15,
          "--epochs 1.5: %g steps (1 epoch: %g), exit %d", t15, t1, r15);
    printf("  --epochs 1.5: %g steps (1 epoch: %g)\n", t15, t1);
    // --- unfilled placeholders: warned, refused with --strict
    char dp[450];
    snprintf(dp, sizeof dp, "%s/ph", tmp);
    int rc = sh("%s train --model models/stories260K --dataset identity --dataset-dir datasets "
                "--template vanilla --vars name=Tuna,autor=Ann --max-steps 1 --sample-prompts '' "
                "--output %s",
                bin, dp);
    CHECK(rc == 0 && strstr(err_text(), "unfilled {{placeholder}}") &&
                  strstr(err_text(), "{{author}}"),
          "misspelt --vars: want a warning naming {{author}} (exit %d): %s", rc, err_text());
    char dps[450];
    snprintf(dps, sizeof dps, "%s/phs", tmp);
    rc = sh("%s train --model models/stories260K --dataset identity --dataset-dir datasets "
            "--template vanilla --vars name=Tuna,autor=Ann --max-steps 1 --strict --output %s",
            bin, dps);
    CHECK(rc == 1 && strstr(err_text(), "{{author}} is not filled") && access(dps, F_OK) != 0,
          "--strict: want a refusal naming {{author}} (exit %d): %s", rc, err_text());
    printf("  --strict: %s", err_text());
    // --- a misspelt placeholder in a template file: warned, refused with --strict
    char td[450], tp[500];
    snprintf(td, sizeof td, "%s/tpl", tmp);
    mkdir(td, 0755);
    snprintf(tp, sizeof tp, "%s/bad.json", td);
    FILE *f = fopen(tp, "w");
    if (f)
        fputs("{\"format_user\": \"{{content}}\", \"format_assistant\": "
              "\"{{contnet}} {{content}}{{eos_token}}\"}\n",
              f),
                fclose(f);
    rc = sh("%s train " BASE "--templates-dir %s --template bad --max-steps 1 --output %s/t1", bin,
            td, tmp);
    CHECK(rc == 0 && strstr(err_text(), "{{contnet}} is not a placeholder tuna fills"),
          "misspelt template placeholder: want a warning (exit %d): %s", rc, err_text());
    rc = sh("%s train " BASE "--templates-dir %s --template bad --max-steps 1 --strict --output "
            "%s/t2",
            bin, td, tmp);
    snprintf(tp, sizeof tp, "%s/t2", tmp);
    CHECK(rc == 1 && strstr(err_text(), "{{contnet}}") && access(tp, F_OK) != 0,
          "misspelt template placeholder --strict: want a refusal (exit %d): %s", rc, err_text());
    printf("  template --strict: %s", err_text());
}

static void test_headless(void) {
    char d[400];
    snprintf(d, sizeof d, "%s/head", tmp);
    int rc = sh("%s train --model models/stories260K --dataset identity --dataset-dir datasets "
                "--vars name=Tuna,author=Ann --template vanilla --batch-size 4 --cutoff-len 64 "
                "--max-steps 40 --eval-steps 20 --save-steps 0 --sample-max-tokens 4 --output %s",
                bin, d);
    const char *e = err_text();
    int progress = 0;
    for (const char *q = e; (q = strstr(q, "\nstep ")); q++)
        progress++;
    const char *first = strstr(e, "\nstep 1/40");
    CHECK(rc == 0 && strstr(e, "eval step 20: loss") && strstr(e, "eval step 40: loss") &&
                  strstr(e, "sample step 20: Who are you? ->"),
          "headless: want eval and sample lines (exit %d): %s", rc, e);
    CHECK(strstr(e, "tuna: finished 40 steps in") && strstr(e, "best eval loss") &&
                  strstr(e, "adapter in"),
          "headless: want a summary line: %s", e);
    CHECK(progress >= 2 && progress < 20, "headless: %d progress lines for 40 steps", progress);
    CHECK(first && !strncmp(strchr(first, '\n') ? strstr(first, "eta ") : "", "eta ?", 5),
          "headless: the ETA at step 1 should be unknown: %s", e);
    CHECK(!strchr(e, '\r'), "headless: carriage returns on a non-terminal");
    printf("  headless: %d progress lines for 40 steps; summary: %s", progress,
           strstr(e, "tuna: finished") ? strstr(e, "tuna: finished") : "-\n");
}

static void test_export(void) {
    char user[400], cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return;
    snprintf(user, sizeof user, "%s/user", tmp);
    mkdir(user, 0755);
    char p[600];
    snprintf(p, sizeof p, "%s/notes.txt", user);
    FILE *f = fopen(p, "w");
    if (f) fputs("mine\n", f), fclose(f);
    snprintf(p, sizeof p, "%s/sub", user);
    mkdir(p, 0755);
    char adapter[450];
    snprintf(adapter, sizeof adapter, "%s/head", tmp);
    char *before = snapshot(user);
    int rc = sh("%s export --model models/stories260K --adapter %s --out %s", bin, adapter, user);
    const char *e = err_text();
    CHECK(rc == 1 && strstr(e, "not empty and not a tuna export") && strstr(e, "--overwrite"),
          "export into a user folder: want a refusal (exit %d): %s", rc, e);
    printf("  export: %s", e);
    char *after = snapshot(user);
    CHECK(!strcmp(before, after), "a refused export changed the user's folder");
    free(before);
    free(after);
    rc = sh("%s export --model models/stories260K --adapter %s --out %s --overwrite", bin, adapter,
            user);
    CHECK(rc == 0 && exists(user, "notes.txt") && exists(user, "sub") &&
                  exists(user, "model.safetensors") && exists(user, ".tuna-export"),
          "export --overwrite: want the export beside the user's files (exit %d): %s", rc,
          err_text());
    // --- --out merged/ (the README's line), twice: the second replaces the first export
    char merged[450];
    snprintf(merged, sizeof merged, "%s/merged/", tmp);
    for (int k = 0; k < 2; k++) {
        rc = sh("%s export --model models/stories260K --adapter %s --out %s", bin, adapter, merged);
        CHECK(rc == 0 && exists(merged, "model.safetensors") && exists(merged, ".tuna-export"),
              "export --out merged/ (%d): exit %d: %s", k, rc, err_text());
    }
    // --- --out . in an empty folder; no ..tmp-PID anywhere
    char here[450];
    snprintf(here, sizeof here, "%s/here", tmp);
    mkdir(here, 0755);
    rc = sh("cd %s && %s export --model %s/models/stories260K --adapter %s --out .", here, bin, cwd,
            adapter);
    CHECK(rc == 0 && exists(here, "model.safetensors"), "export --out .: exit %d: %s", rc,
          err_text());
    rc = sh("cd %s && %s export --model %s/models/stories260K --adapter %s --out .", tmp, bin, cwd,
            adapter);
    CHECK(rc == 1, "export --out . into a non-empty folder: exit %d", rc);
    DIR *d = opendir(tmp);
    struct dirent *de;
    int stray = 0;
    while (d && (de = readdir(d)))
        stray += strstr(de->d_name, ".tmp-") != NULL;
    if (d) closedir(d);
    d = opendir(here);
    while (d && (de = readdir(d)))
        stray += strstr(de->d_name, "tmp-") != NULL;
    if (d) closedir(d);
    CHECK(stray == 0, "export left %d temporary folders", stray);
}

/* A hub id or a file as --model: one line saying a local folder is expected, nothing made. */
static void test_model_path(void) {
    const char *want = "expects a local folder (or .gguf file) holding config.json, "
                       "model.safetensors and tokenizer.json";
    struct {
        const char *model, *tail;
    } m[] = {{"HuggingFaceTB/SmolLM2-135M",
              "; no such file or folder (a Hugging Face hub id? download it first: "
              "huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir "
              "models/SmolLM2-135M)\n"},
             {"models/stories260K/config.json", "; this is a file\n"},
             {"/nonexistent/model", "; no such file or folder\n"}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        const char *cmds[] = {"train", "export"};
        for (int k = 0; k < 2; k++) {
            char d[450], line[1200];
            snprintf(d, sizeof d, "%s/mp%zu%d", tmp, i, k);
            int rc = !k ? sh("%s train " BASE "--model %s --output %s", bin, m[i].model, d)
                        : sh("%s export --model %s --out %s", bin, m[i].model, d);
            snprintf(line, sizeof line, "tuna %s: --model %s: %s%s", cmds[k], m[i].model, want,
                     m[i].tail);
            CHECK(rc == 1 && !strcmp(err_text(), line),
                  "%s --model %s: want \"%s\", got (exit %d) \"%s\"", cmds[k], m[i].model, line, rc,
                  err_text());
            CHECK(access(d, F_OK) != 0, "%s --model %s created %s", cmds[k], m[i].model, d);
        }
    }
    int rc = sh("%s train " BASE "--model HuggingFaceTB/SmolLM2-135M --output %s/mp", bin, tmp);
    printf("  hub id: %s", err_text());
    CHECK(rc == 1, "hub id: exit %d", rc);
}

static void test_gitignore(void) {
    char *g = xread_file(".gitignore", NULL);
    CHECK(g && strstr(g, "tuna_config.json") && strstr(g, "merged/"),
          ".gitignore lacks tuna_config.json or merged/");
    free(g);
}

int main(void) {
    const char *b = getenv("TUNA_BIN");
    if (!realpath(b && *b ? b : "./tuna", bin)) {
        CHECK(0, "%s not built", b && *b ? b : "./tuna");
        return test_report("test_keep_work");
    }
    snprintf(tmp, sizeof tmp, "/tmp/tuna_keep_XXXXXX");
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp: %s", strerror(errno));
        return test_report("test_keep_work");
    }
    snprintf(errf, sizeof errf, "%s/stderr.txt", tmp);
    test_gitignore();
    test_options();
    test_existing_run();
    test_lock_and_exits();
    test_resume();
    test_write_error_and_nan();
    test_headless();
    test_export();
    test_model_path();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (!test_failed) CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_keep_work");
}
