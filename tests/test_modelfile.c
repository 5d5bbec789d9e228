/* test_modelfile.c: the Ollama Modelfile (src/modelfile.c). For every template in templates/,
 * the Modelfile's TEMPLATE rendered by Go's own text/template (tests/gotmpl, built into
 * BUILD/gotmpl/gotmpl by the Makefile where `go` is installed; scripts/deps.sh installs
 * golang-go) equals template_render_text byte for byte on six conversations: user only, system +
 * user, multi-turn, system + multi-turn with quotes, braces and newlines in the text, a tool
 * result last, and a default-system one. The BOS that starts tuna's text is llama.cpp's to add
 * (add_bos_token), so the comparison is on the text after it. Also: stop words, SYSTEM, the
 * atomic write and its one-line errors. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "src/modelfile.h"
#include "src/template.h"
#include "src/xalloc.h"

typedef struct Conv {
    int n;
    ChatMessage m[6];
} Conv;

static const Conv CONVS[] = {
        {1, {{"user", "Hello there"}}},
        {2, {{"system", "You are terse."}, {"user", "What is 2+2?"}}},
        {5,
         {{"user", "Hi"},
          {"assistant", "Hello! How can I help?"},
          {"user", "Tell me a joke"},
          {"assistant", "Why did the chicken cross the road?"},
          {"user", "Another one"}}},
        {4,
         {{"system", "Be \"kind\"\n{{ .Content }} \"\"\" {{end}}"},
          {"user", "multi\nline {{x}} \\ \t tab"},
          {"assistant", "ok }} {{"},
          {"user", "last <s> </s>"}}},
        {3, {{"user", "run it"}, {"assistant", "calling"}, {"observation", "{\"result\": 4}"}}},
        {3, {{"user", "a"}, {"assistant", "b"}, {"user", "c"}}},
};
#define N_CONVS ((int)(sizeof CONVS / sizeof CONVS[0]))

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = xmalloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(s, f);
    fclose(f);
}

/* The conversations as gotmpl reads them (observation is Ollama's "tool"). */
static char *convs_json(void) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < N_CONVS; i++) {
        cJSON *c = cJSON_CreateArray();
        for (int k = 0; k < CONVS[i].n; k++) {
            cJSON *m = cJSON_CreateObject();
            const char *r = CONVS[i].m[k].role;
            cJSON_AddStringToObject(m, "role", strcmp(r, "observation") ? r : "tool");
            cJSON_AddStringToObject(m, "content", CONVS[i].m[k].content);
            cJSON_AddItemToArray(c, m);
        }
        cJSON_AddItemToArray(a, c);
    }
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

static int count_lines(const char *s, const char *start) {
    int n = 0;
    size_t k = strlen(start);
    for (const char *p = s; p; p = strchr(p, '\n')) {
        if (*p == '\n') p++;
        if (!strncmp(p, start, k)) n++;
    }
    return n;
}

static void check_template(const char *name, const char *gotmpl, const char *dir) {
    TunaErr err = {0};
    Template *t = NULL;
    int rc = template_load("templates", name, &t, &err);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    if (rc) return;
    const char *bos = "<s>", *eos = "</s>";
    char *mf = NULL;
    rc = modelfile_render(t, "model.gguf", NULL, bos, eos, &mf, &err);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    if (rc) {
        template_free(t);
        return;
    }
    const char *const *stops;
    int ns = template_stop_words(t, &stops);
    CHECK(count_lines(mf, "PARAMETER stop ") == ns, "%s: %d stop words", name, ns);
    CHECK(count_lines(mf, "SYSTEM ") == (template_default_system(t)[0] != 0), "%s: SYSTEM", name);
    CHECK(count_lines(mf, "FROM model.gguf") == 1 && count_lines(mf, "ADAPTER") == 0, "%s", name);
    if (!gotmpl) {
        free(mf);
        template_free(t);
        return;
    }
    char mpath[512], cpath[512], opath[512], cmd[4096];
    snprintf(mpath, sizeof mpath, "%s/Modelfile.%s", dir, name);
    snprintf(cpath, sizeof cpath, "%s/convs.json", dir);
    snprintf(opath, sizeof opath, "%s/out.%s.json", dir, name);
    write_file(mpath, mf);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' > '%s'", gotmpl, mpath, cpath, opath);
    rc = system(cmd);
    CHECK(rc == 0, "%s: gotmpl failed (%d); Modelfile in %s", name, rc, mpath);
    char *js = read_all(opath);
    cJSON *out = js ? cJSON_Parse(js) : NULL;
    CHECK(cJSON_GetArraySize(out) == N_CONVS, "%s: gotmpl output %s", name, js ? js : "(none)");
    int starts_bos = template_starts_with_bos(t);
    for (int i = 0; i < N_CONVS && cJSON_GetArraySize(out) == N_CONVS; i++) {
        char *want = NULL;
        rc = template_render_text(t, CONVS[i].m, CONVS[i].n, bos, eos, &want, &err);
        CHECK(rc == 0, "%s conv %d: %s", name, i, err.msg);
        if (rc) continue;
        const char *w = want;
        if (starts_bos) {
            CHECK(!strncmp(w, bos, strlen(bos)), "%s conv %d starts with BOS", name, i);
            w += strlen(bos);
        }
        const char *got = cJSON_GetStringValue(cJSON_GetArrayItem(out, i));
        CHECK(got && !strcmp(got, w), "%s conv %d:\n--- tuna (after BOS):\n%s\n--- go:\n%s", name,
              i, w, got ? got : "(null)");
        free(want);
    }
    cJSON_Delete(out);
    free(js);
    free(mf);
    template_free(t);
}

static void check_bad(const char *dir) {
    /* Stop words and system prompts a Modelfile cannot carry: one-line errors. */
    const char *bad[] = {
            "{\"stop_words\": [\"a\\u0001b\"]}",
            "{\"stop_words\": [\"x\\\"\\\"\\\"y\"]}",
            "{\"default_system\": \"one \\\"\\\"\\\" two\"}",
    };
    for (int i = 0; i < 3; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/bad%d.json", dir, i);
        write_file(p, bad[i]);
        char nm[16];
        snprintf(nm, sizeof nm, "bad%d", i);
        Template *t = NULL;
        TunaErr err = {0};
        int rc = template_load(dir, nm, &t, &err);
        CHECK(rc == 0, "%s: %s", nm, err.msg);
        if (rc) continue;
        char *mf = NULL;
        rc = modelfile_render(t, "m.gguf", NULL, "<s>", "</s>", &mf, &err);
        CHECK(rc == TUNA_EINVAL && mf == NULL && err.msg[0] && !strchr(err.msg, '\n'),
              "%s: rc %d \"%s\"", nm, rc, err.msg);
        template_free(t);
    }
}

static void check_write(const char *dir) {
    Template *t = NULL;
    TunaErr err = {0};
    CHECK(template_load("templates", "chatml", &t, &err) == 0, "%s", err.msg);
    const char *gg = "tests/fixtures/gguf/dequant.gguf";
    char path[512], from[512];
    snprintf(path, sizeof path, "%s/Modelfile", dir);
    snprintf(from, sizeof from, "%s/model.gguf", dir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", gg, from);
    CHECK(system(cmd) == 0, "cp");
    int rc = modelfile_write(path, t, from, from, &err);
    CHECK(rc == 0, "%s", err.msg);
    char *s = read_all(path);
    CHECK(s && strstr(s, "\nFROM ./model.gguf\nADAPTER ./model.gguf\nTEMPLATE \"\"\""), "%s",
          s ? s : "(none)");
    free(s);
    /* Not writable, a missing GGUF: one line, nothing left behind. */
    snprintf(path, sizeof path, "%s/no/such/dir/Modelfile", dir);
    rc = modelfile_write(path, t, from, NULL, &err);
    CHECK(rc == TUNA_EIO && !strchr(err.msg, '\n'), "rc %d %s", rc, err.msg);
    snprintf(path, sizeof path, "%s/Modelfile2", dir);
    rc = modelfile_write(path, t, "/nonexistent.gguf", NULL, &err);
    CHECK(rc != 0 && !strchr(err.msg, '\n') && access(path, F_OK) != 0, "rc %d %s", rc, err.msg);
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -c tmp- > /dev/null", dir);
    CHECK(system(cmd) != 0, "a temporary file was left in %s", dir);
    template_free(t);
}

int main(int argc, char **argv) {
    (void)argc;
    char dir[] = "/tmp/tuna_modelfile_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    /* BUILD/tests/test_modelfile -> BUILD/gotmpl/gotmpl */
    char self[1024], gotmpl[1100];
    snprintf(self, sizeof self, "%s", argv[0]);
    char *tests_dir = dirname(self);
    snprintf(gotmpl, sizeof gotmpl, "%s/../gotmpl/gotmpl", tests_dir);
    const char *g = access(gotmpl, X_OK) == 0 ? gotmpl : NULL;
    if (!g)
        SKIP("%s not built (Go absent: scripts/deps.sh installs golang-go); the Go half of the "
             "template check is skipped",
             gotmpl);
    char cpath[512];
    snprintf(cpath, sizeof cpath, "%s/convs.json", dir);
    char *cj = convs_json();
    write_file(cpath, cj);
    free(cj);
    char **names = NULL;
    int n = 0;
    TunaErr err = {0};
    CHECK(template_list("templates", &names, &n, &err) == 0 && n >= 9, "%s", err.msg);
    for (int i = 0; i < n; i++)
        check_template(names[i], g, dir);
    template_list_free(names, n);

    Template *t = NULL;
    const char *with_bos[] = {"llama2", "llama3", "mistral"}, *without[] = {"chatml", "smollm"};
    for (int i = 0; i < 3; i++) {
        CHECK(template_load("templates", with_bos[i], &t, &err) == 0, "%s", err.msg);
        CHECK(template_starts_with_bos(t) == 1, "%s starts with BOS", with_bos[i]);
        template_free(t);
    }
    for (int i = 0; i < 2; i++) {
        CHECK(template_load("templates", without[i], &t, &err) == 0, "%s", err.msg);
        CHECK(template_starts_with_bos(t) == 0, "%s: no BOS", without[i]);
        template_free(t);
    }
    check_bad(dir);
    check_write(dir);
    /* tuna template NAME --modelfile prints modelfile_render's text (BOS/EOS from --model). */
    const char *bin = getenv("TUNA_BIN");
    char binbuf[1200], cmd1[2600], outp[600];
    snprintf(binbuf, sizeof binbuf, "%s/../tuna", tests_dir);
    if (!bin) bin = binbuf;
    snprintf(outp, sizeof outp, "%s/cli.txt", dir);
    snprintf(cmd1, sizeof cmd1, "'%s' template smollm --modelfile --from a.gguf > '%s'", bin, outp);
    if (access(bin, X_OK) == 0) {
        CHECK(system(cmd1) == 0, "%s", cmd1);
        char *cli = read_all(outp), *want = NULL;
        CHECK(template_load("templates", "smollm", &t, &err) == 0, "%s", err.msg);
        CHECK(modelfile_render(t, "a.gguf", NULL, "<s>", "</s>", &want, &err) == 0, "%s", err.msg);
        CHECK(cli && want && !strcmp(cli, want), "cli:\n%s", cli ? cli : "(none)");
        free(cli);
        free(want);
        template_free(t);
        snprintf(cmd1, sizeof cmd1, "'%s' template nosuch --modelfile 2>/dev/null >&2", bin);
        CHECK(system(cmd1) != 0, "unknown template");
    } else {
        SKIP("%s not built", bin);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) {}
    return test_report("test_modelfile");
}
