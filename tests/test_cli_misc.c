/* test_cli_misc.c: the headless CLI as a new user meets it (issue 10, section 3), end to end on
 * the bundled stories260K:
 *   - `tuna --OPTION` is the workbench's option (no `ui` needed);
 *   - chat, eval, generate and tokenize follow a LoRA run folder to its base model, take the run's
 *     template by default (--template overrides), and say in one line (file and key) when the
 *     base is gone;
 *   - generate stops at max_position_embeddings and says so; a prompt past it is refused;
 *   - scripted chat labels the turns (user: / assistant:), --plain prints the replies alone;
 *     on a terminal (tmux) a line is edited in place and Up recalls it (libedit);
 *   - a hub id or a file as the model gets the same one line from every command (chat,
 *     generate, eval, train, export, tokenize);
 *   - watch refuses a folder that does not exist.
 * Runs ./tuna (or $TUNA_BIN) from the repo root; trains two 2-step runs (a few seconds). */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/cpu/cpu_backend.h"
#include "src/train.h"
#include "src/xalloc.h"

static char tmpdir[64];

static int n_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* A failure of `tuna args`: exit code rc_want, one line on stderr holding want (and want2). */
static void check_one_line(const char *args, int rc_want, const char *want, const char *want2) {
    char *out, *err;
    int rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == rc_want, "`tuna %s`: exit %d, want %d (stderr %s)", args, rc, rc_want, err);
    CHECK(n_lines(err) == 1 && strstr(err, want) && (!want2 || strstr(err, want2)),
          "`tuna %s`: stderr is not the one line with \"%s\": \"%s\"", args, want, err);
    CHECK(!*out, "`tuna %s`: stdout \"%s\"", args, out);
    free(out);
    free(err);
}

// --- tuna --OPTION

static void test_ui_options(void) {
    char *out, *err;
    int rc = test_run_tuna(tmpdir, "--no-color --help", NULL, &out, &err);
    CHECK(rc == 0 && strstr(out, "tuna ui [options]"), "tuna --no-color --help: %d %s%s", rc, out,
          err);
    free(out);
    free(err);
    /* --screen is parsed as the workbench's option: a bad value names the choices */
    check_one_line("--screen bogus", 2, "--screen: expected setup|train|chat|runs", NULL);
    check_one_line("--no-color --screen nope", 2, "--screen: expected", NULL);
    check_one_line("--frobnicate", 2, "unknown option", "--frobnicate");
}

// --- run folders

static char lora[128], lora_van[128];

static int train(const char *out, const char *tpl) {
    char args[512], *o, *e;
    snprintf(args, sizeof args,
             "train --model models/stories260K --dataset identity --dataset-dir datasets "
             "--vars name=Tuna,author=Ann --method lora --template %s --max-steps 2 --quiet "
             "--output %s",
             tpl, out);
    int rc = test_run_tuna(tmpdir, args, NULL, &o, &e);
    CHECK(rc == 0, "train %s: exit %d: %s", out, rc, e);
    free(o);
    free(e);
    return rc;
}

/* The "template" of the JSON eval prints for ARGS (a static buffer, "" on failure). */
static const char *eval_template(const char *args) {
    static char name[64];
    char cmd[1024], *out, *err;
    snprintf(cmd, sizeof cmd,
             "eval %s --dataset identity --dataset-dir datasets --vars name=Tuna,author=Ann "
             "--max-samples 2 --no-generate --quiet",
             args);
    int rc = test_run_tuna(tmpdir, cmd, NULL, &out, &err);
    cJSON *j = cJSON_Parse(out);
    const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "template"));
    snprintf(name, sizeof name, "%s", rc == 0 && t ? t : "");
    CHECK(rc == 0 && t, "`tuna %s`: exit %d: %s", cmd, rc, err);
    cJSON_Delete(j);
    free(out);
    free(err);
    return name;
}

static void test_runs(void) {
    snprintf(lora, sizeof lora, "%s/lora-chatml", tmpdir);
    snprintf(lora_van, sizeof lora_van, "%s/lora-vanilla", tmpdir);
    if (train(lora, "chatml") || train(lora_van, "vanilla")) return;
    char args[1024], *out, *err, *out2, *err2;

    /* chat RUN: the base model with the run's adapter and template */
    snprintf(args, sizeof args, "chat %s --message Hi --max-new-tokens 8 --temperature 0", lora);
    int rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == 0 && !strstr(err, "cannot read"), "chat RUN: exit %d: %s", rc, err);
    snprintf(args, sizeof args,
             "chat models/stories260K --adapter %s --template chatml --message Hi "
             "--max-new-tokens 8 --temperature 0",
             lora);
    int rc2 = test_run_tuna(tmpdir, args, NULL, &out2, &err2);
    CHECK(rc2 == 0 && !strcmp(out, out2),
          "chat RUN differs from chat BASE --adapter RUN --template chatml:\n%s\nvs\n%s", out,
          out2);
    free(out);
    free(err);
    free(out2);
    free(err2);

    /* generate RUN */
    snprintf(args, sizeof args, "generate %s --prompt Once --max-new-tokens 4 --quiet", lora);
    rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == 0 && !strncmp(out, "Once", 4), "generate RUN: exit %d: %s%s", rc, out, err);
    free(out);
    free(err);

    /* tokenize RUN: the base model's tokenizer */
    char in[128];
    snprintf(in, sizeof in, "%s/text.jsonl", tmpdir);
    FILE *f = fopen(in, "w");
    fputs("{\"text\": \"Once upon a time\"}\n", f);
    fclose(f);
    snprintf(args, sizeof args, "tokenize %s", lora);
    rc = test_run_tuna(tmpdir, args, in, &out, &err);
    rc2 = test_run_tuna(tmpdir, "tokenize models/stories260K", in, &out2, &err2);
    CHECK(rc == 0 && rc2 == 0 && strstr(out, "\"ids\"") && !strcmp(out, out2),
          "tokenize RUN: exit %d: %s%s", rc, out, err);
    free(out);
    free(err);
    free(out2);
    free(err2);

    /* the default template is the run's; --template overrides; no run: vanilla */
    snprintf(args, sizeof args, "--model %s", lora);
    CHECK(!strcmp(eval_template(args), "chatml"), "eval --model RUN: template %s",
          eval_template(args));
    /* ... and its report names the base model and the run as the adapter */
    snprintf(args, sizeof args,
             "eval --model %s --dataset identity --dataset-dir datasets --max-samples 1 "
             "--no-generate --quiet",
             lora);
    rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    cJSON *j = cJSON_Parse(out);
    const char *jm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "model"));
    const char *ja = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "adapter"));
    CHECK(rc == 0 && jm && ja && !strcmp(jm, "models/stories260K") && !strcmp(ja, lora),
          "eval --model RUN reports model %s adapter %s", jm, ja);
    cJSON_Delete(j);
    free(out);
    free(err);
    snprintf(args, sizeof args, "--model models/stories260K --adapter %s", lora);
    CHECK(!strcmp(eval_template(args), "chatml"), "eval --adapter RUN: template %s",
          eval_template(args));
    snprintf(args, sizeof args, "--model %s --template alpaca", lora);
    CHECK(!strcmp(eval_template(args), "alpaca"), "--template overrides the run's: %s",
          eval_template(args));
    snprintf(args, sizeof args, "--model %s", lora_van);
    CHECK(!strcmp(eval_template(args), "vanilla"), "vanilla run: %s", eval_template(args));
    CHECK(!strcmp(eval_template("--model models/stories260K"), "vanilla"), "no run: %s",
          eval_template("--model models/stories260K"));

    /* export --model RUN: the same merged checkpoint as --model BASE --adapter RUN */
    char e1[160], e2[160], cmp[512];
    snprintf(e1, sizeof e1, "%s/export-run", tmpdir);
    snprintf(e2, sizeof e2, "%s/export-base", tmpdir);
    snprintf(args, sizeof args, "export --model %s --out %s", lora, e1);
    rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == 0, "export --model RUN: exit %d: %s", rc, err);
    free(out);
    free(err);
    snprintf(args, sizeof args, "export --model models/stories260K --adapter %s --out %s", lora,
             e2);
    rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == 0, "export --model BASE --adapter RUN: exit %d: %s", rc, err);
    free(out);
    free(err);
    snprintf(cmp, sizeof cmp, "cmp -s %s/model.safetensors %s/model.safetensors", e1, e2);
    CHECK(system(cmp) == 0, "export --model RUN and --model BASE --adapter RUN differ");
    snprintf(args, sizeof args, "export --model %s --adapter %s --out %s/e3", lora, lora_van,
             tmpdir);
    check_one_line(args, 2, "is an adapter run", "give a base model folder");

    /* a run and --adapter: one line */
    snprintf(args, sizeof args, "chat %s --adapter %s --message hi", lora, lora_van);
    check_one_line(args, 1, "is an adapter run", "give a base model folder");

    /* the base has gone: one line naming the file and the key */
    char moved[160], cmd[1024];
    snprintf(moved, sizeof moved, "%s/moved", tmpdir);
    snprintf(cmd, sizeof cmd,
             "cp -r %s %s && sed -i 's|models/stories260K|models/gone|' %s/adapter_config.json "
             "%s/train_config.json",
             lora, moved, moved, moved);
    CHECK(system(cmd) == 0, "copy the run");
    snprintf(args, sizeof args, "chat %s --message hi", moved);
    check_one_line(args, 1, "moved/adapter_config.json: base_model_name_or_path \"models/gone\"",
                   "--adapter");
    snprintf(args, sizeof args, "generate %s", moved);
    check_one_line(args, 1, "adapter_config.json: base_model_name_or_path", NULL);
    /* ... unless the run's train_config.json still names a base that is here */
    snprintf(cmd, sizeof cmd, "sed -i 's|models/gone|models/stories260K|' %s/train_config.json",
             moved);
    CHECK(system(cmd) == 0, "edit train_config.json");
    snprintf(args, sizeof args, "generate %s --max-new-tokens 2 --quiet", moved);
    rc = test_run_tuna(tmpdir, args, NULL, &out, &err);
    CHECK(rc == 0, "base from train_config.json: exit %d: %s", rc, err);
    free(out);
    free(err);
}

// --- the context limit

static void test_context(void) {
    char *out, *err;
    int rc = test_run_tuna(
            tmpdir, "generate models/stories260K --ignore-eos --max-new-tokens 600 --quiet --json",
            NULL, &out, &err);
    cJSON *j = cJSON_Parse(out);
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "prompt_ids")) +
            cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "ids"));
    const char *why = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "stopped_by"));
    /* the last token is sampled from position 511's logits and never fed */
    CHECK(rc == 0 && n == 513 && why && !strcmp(why, "context_full"),
          "generate past the context: exit %d, %d tokens, stopped by %s", rc, n, why);
    CHECK(n_lines(err) == 1 && strstr(err, "stopped at the model's context of 512 tokens"),
          "generate past the context says so in one line: \"%s\"", err);
    cJSON_Delete(j);
    free(out);
    free(err);
    rc = test_run_tuna(tmpdir,
                       "generate models/stories260K --ignore-eos --max-new-tokens 20 --quiet", NULL,
                       &out, &err);
    CHECK(rc == 0 && !*err, "within the context: exit %d, stderr \"%s\"", rc, err);
    free(out);
    free(err);
    /* chat: a reply that reaches the context says so (greedy: the same reply every time) */
    char sys_prompt[2048] = "", chat_args[2400];
    for (int i = 0; i < 48; i++)
        strcat(sys_prompt, "Once upon a time there was a cat. ");
    snprintf(chat_args, sizeof chat_args,
             "chat models/stories260K --system \"%s\" --message \"Tell me a story\" "
             "--max-new-tokens 200 --temperature 0",
             sys_prompt);
    rc = test_run_tuna(tmpdir, chat_args, NULL, &out, &err);
    CHECK(rc == 0 && n_lines(err) == 1 &&
                  strstr(err, "the reply stopped at the model's context of 512 tokens"),
          "chat at the context: exit %d, stderr \"%s\"", rc, err);
    free(out);
    free(err);
    /* a prompt longer than the context is refused */
    char path[128];
    snprintf(path, sizeof path, "%s/long.txt", tmpdir);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 400; i++)
        fputs("Once upon a time ", f);
    fclose(f);
    char args[256];
    snprintf(args, sizeof args, "generate models/stories260K --prompt-file %s", path);
    check_one_line(args, 1, "exceeds the model's context (512)", NULL);
}

// --- scripted chat

static void test_labels(void) {
    char *out, *err;
    int rc = test_run_tuna(tmpdir,
                           "chat models/stories260K --message Hi --message \"Tell me more\" "
                           "--max-new-tokens 6 --temperature 0",
                           NULL, &out, &err);
    CHECK(rc == 0 && !strncmp(out, "user: Hi\nassistant: ", 20) &&
                  strstr(out, "\nuser: Tell me more\nassistant: "),
          "scripted chat labels: exit %d:\n%s", rc, out);
    free(out);
    free(err);
    char in[128];
    snprintf(in, sizeof in, "%s/stdin", tmpdir);
    FILE *f = fopen(in, "w");
    fputs("hello\n", f);
    fclose(f);
    rc = test_run_tuna(tmpdir, "chat models/stories260K --max-new-tokens 6 --temperature 0", in,
                       &out, &err);
    CHECK(rc == 0 && !strncmp(out, "user: hello\nassistant: ", 23), "piped chat labels:\n%s", out);
    char *plain, *err2;
    rc = test_run_tuna(tmpdir, "chat models/stories260K --max-new-tokens 6 --temperature 0 --plain",
                       in, &plain, &err2);
    CHECK(rc == 0 && !strstr(plain, "user:") && !strstr(plain, "assistant:") &&
                  !strcmp(plain, out + 23),
          "--plain: the reply alone:\n%s\nvs\n%s", plain, out);
    free(out);
    free(err);
    free(plain);
    free(err2);
}

// --- interactive chat in tmux: line editing and history (libedit)

static char sock[64];

/* Polls the pane (up to 20 s, no timing assumed) until want appears count times; 1 if it did. */
static int pane_has(const char *want, int count, char **pane) {
    char cmd[256], path[128];
    snprintf(path, sizeof path, "%s/pane", tmpdir);
    snprintf(cmd, sizeof cmd, "tmux -L %s capture-pane -p -t chat > %s 2>/dev/null", sock, path);
    for (int i = 0; i < 200; i++) {
        free(*pane);
        *pane = NULL;
        if (system(cmd) == 0) *pane = xread_file(path, NULL);
        int n = 0;
        for (const char *p = *pane; p && (p = strstr(p, want)); p += strlen(want))
            n++;
        if (n >= count) return 1;
        usleep(100000);
    }
    return 0;
}

static void tmux_keys(const char *keys) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "tmux -L %s send-keys -t chat %s", sock, keys);
    CHECK(system(cmd) == 0, "tmux send-keys %s", keys);
}

static void test_interactive(void) {
#ifdef TUNA_NO_LIBEDIT
    SKIP("built without libedit (libedit-dev): no line editing to drive");
    return;
#endif
    if (system("command -v tmux >/dev/null 2>&1")) {
        SKIP("tmux not installed: interactive chat not driven");
        return;
    }
    snprintf(sock, sizeof sock, "tuna_cli_misc_%d", (int)getpid());
    char cwd[1024], cmd[2048];
    if (!getcwd(cwd, sizeof cwd)) return;
    snprintf(cmd, sizeof cmd,
             "tmux -L %s new-session -d -s chat -x 100 -y 20 -c %s \"%s chat models/stories260K "
             "--max-new-tokens 4 --temperature 0; echo EXIT=\\$?; sleep 60\"",
             sock, cwd, test_tuna_bin());
    CHECK(system(cmd) == 0, "tmux new-session");
    char *pane = NULL;
    /* capture-pane drops trailing blanks: an empty prompt line is ">" */
    CHECK(pane_has("\n>", 1, &pane), "no prompt:\n%s", pane ? pane : "");
    tmux_keys("helo Left Left l Enter"); /* edited in place: "hello" */
    CHECK(pane_has("> hello\n", 1, &pane) && pane_has("\n>", 2, &pane),
          "the edited line was not sent:\n%s", pane ? pane : "");
    tmux_keys("Up"); /* history: the line again */
    CHECK(pane_has("> hello", 2, &pane), "Up does not recall the line:\n%s", pane ? pane : "");
    tmux_keys("C-e C-u /quit Enter");
    CHECK(pane_has("EXIT=0", 1, &pane), "/quit: no exit 0:\n%s", pane ? pane : "");
    free(pane);
    snprintf(cmd, sizeof cmd, "tmux -L %s kill-server 2>/dev/null", sock);
    CHECK(system(cmd) == 0, "tmux kill-server");
}

// --- the model path, the same line from every command

static void test_model_paths(void) {
    static const struct {
        const char *pre, *post; /* the model goes between; then tmpdir/never if out */
        int out;
    } cmds[] = {
            {"chat ", " --message hi", 0},
            {"generate ", "", 0},
            {"eval --model ", " --dataset identity", 0},
            {"train --model ", " --dataset identity --output ", 1},
            {"export --model ", " --out ", 1},
            {"tokenize ", "", 0},
    };
    const char *what = "expects a local folder (or .gguf file)";
    static const char *const models[] = {"Qwen/Qwen2.5-0.5B", "README.md"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        for (int k = 0; k < 2; k++) {
            char args[512];
            snprintf(args, sizeof args, "%s%s%s%s%s", cmds[i].pre, models[k], cmds[i].post,
                     cmds[i].out ? tmpdir : "", cmds[i].out ? "/never" : "");
            check_one_line(args, 1, what,
                           k ? "this is a file" : "huggingface-cli download Qwen/Qwen2.5-0.5B");
        }
    struct stat sb;
    char never[128];
    snprintf(never, sizeof never, "%s/never", tmpdir);
    CHECK(stat(never, &sb) != 0, "a refused model made %s", never);
}

// --- the bundled templates from another working directory

static void test_templates_elsewhere(void) {
    char exe[4096], cmd[4600], path[128];
    if (!realpath(test_tuna_bin(), exe)) {
        CHECK(0, "realpath %s", test_tuna_bin());
        return;
    }
    snprintf(path, sizeof path, "%s/show", tmpdir);
    snprintf(cmd, sizeof cmd, "cd %s && %s template show chatml >%s 2>&1", tmpdir, exe, path);
    int st = system(cmd);
    char *out = xread_file(path, NULL);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && out && strstr(out, "<|im_start|>"),
          "template show chatml from %s (no templates/ there): %s", tmpdir, out ? out : "");
    free(out);
    /* tuna train's defaults (--model models/stories260K, datasets/) too */
    snprintf(path, sizeof path, "%s/train", tmpdir);
    snprintf(cmd, sizeof cmd, "cd %s && %s train --max-steps 1 --output r --threads 1 >%s 2>&1",
             tmpdir, exe, path);
    st = system(cmd);
    out = xread_file(path, NULL);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && out && strstr(out, "finished 1 step"),
          "train with the default model and dataset from %s: %s", tmpdir, out ? out : "");
    free(out);
}

// --- info

/* `tuna info` names the CPU and the kernels tuna picked on it: the same paths as the engine's
 * own choice (cpu_bf16_path, cpu_matmul_w_path); extra arguments are a usage error */
static void test_info(void) {
    char cmd[600], path[128];
    snprintf(path, sizeof path, "%s/info", tmpdir);
    snprintf(cmd, sizeof cmd, "%s info >%s 2>&1", test_tuna_bin(), path);
    int st = system(cmd);
    char *out = xread_file(path, NULL), want[128];
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && out && strstr(out, "cpu: ") &&
                  strstr(out, "fp32 products: ") && strstr(out, "(core "),
          "tuna info: %s", out ? out : "");
    snprintf(want, sizeof want, "bf16 products (--bf16): %s\n", cpu_bf16_path());
    CHECK(out && strstr(out, want), "tuna info does not say \"%s\": %s", want, out ? out : "");
    snprintf(want, sizeof want, "quantized weights, decoding: %s\n",
             cpu_matmul_w_path(WT_Q4_1, 4096, 1));
    CHECK(out && strstr(out, want), "tuna info does not say \"%s\": %s", want, out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s info --bogus >/dev/null 2>&1", test_tuna_bin());
    st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "tuna info --bogus: exit %d", WEXITSTATUS(st));
}

// --- watch

static void test_watch(void) {
    char args[256];
    snprintf(args, sizeof args, "watch %s/typo", tmpdir);
    check_one_line(args, 1, "typo: no such run folder", NULL);
    check_one_line("watch README.md", 1, "README.md: not a folder", NULL);
}

/* Every row of the engine's options table is a `tuna train` flag: the flags were once made in an
 * array of 80 that dropped the rows past it (--dist-timeout and --zero) without a word. */
static void test_train_flags(void) {
    int n = 0, unknown = 0, is_bool;
    const char *key;
    char first[80] = "";
    for (int i = 0; (key = train_config_key(i, &is_bool, NULL)); i++, n++) {
        char flag[64], cmd[600], *out = NULL, *err = NULL;
        snprintf(flag, sizeof flag, "%s", key);
        for (char *p = flag; *p; p++)
            if (*p == '_') *p = '-';
        snprintf(cmd, sizeof cmd, "train --%s%s --model /nonexistent --output %s/flags", flag,
                 is_bool ? "" : " 1", tmpdir);
        test_run_tuna(tmpdir, cmd, NULL, &out, &err);
        if (strstr(err, "unrecognized option") || strstr(err, "unknown option")) {
            if (!unknown++) snprintf(first, sizeof first, "--%s", flag);
        }
        free(out);
        free(err);
    }
    CHECK(n > 80 && !unknown, "%d of %d table rows are not tuna train flags (first: %s)", unknown,
          n, first);
    printf("  tuna train takes all %d options of the table as flags\n", n);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tuna-cli-misc-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    struct stat sb;
    if (stat("models/stories260K/model.safetensors", &sb)) {
        SKIP("run from the repo root (models/stories260K missing)");
        return test_report("test_cli_misc");
    }
    test_info();
    test_train_flags();
    test_ui_options();
    test_runs();
    test_context();
    test_labels();
    test_interactive();
    test_model_paths();
    test_watch();
    test_templates_elsewhere();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    CHECK(system(cmd) == 0, "cleanup");
    return test_report("test_cli_misc");
}
