/* cli.c: what every command checks the same way before it loads a model: the model path (a
 * local folder or a .gguf file, not a hub id), and a run folder followed to its base model and
 * to the template it was trained with. */
#include "cli.h"
#include "../template.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../xalloc.h"

/* 1: s looks like a Hugging Face hub id ("owner/name": one slash, no leading . or /). */
static int hub_id_like(const char *s) {
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/') || s[0] == '.') return 0;
    for (const char *p = s; *p; p++)
        if (p != slash && !isalnum((unsigned char)*p) && !strchr("-_.", *p)) return 0;
    return 1;
}

int cli_model_path_ok(const char *cmd, const char *flag, const char *model) {
    struct stat sb;
    const char *what = "expects a local folder (or .gguf file) holding config.json, "
                       "model.safetensors and tokenizer.json";
    size_t n = strlen(model);
    char name[4200];
    snprintf(name, sizeof name, "%s%s%s", flag ? flag : "", flag ? " " : "", model);
    if (stat(model, &sb) == 0) {
        if (S_ISDIR(sb.st_mode) || (n > 5 && !strcasecmp(model + n - 5, ".gguf"))) return 1;
        fprintf(stderr, "tuna %s: %s: %s; this is a file\n", cmd, name, what);
    } else if (hub_id_like(model)) {
        fprintf(stderr,
                "tuna %s: %s: %s; no such file or folder (a Hugging Face hub id? download "
                "it first: huggingface-cli download %s --local-dir models/%s)\n",
                cmd, name, what, model, strchr(model, '/') + 1);
    } else {
        fprintf(stderr, "tuna %s: %s: %s; no such file or folder\n", cmd, name, what);
    }
    return 0;
}

static int is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The run folder a model (and adapter) came from: adapter_dir, else model_dir, the first whose
 * train_config.json records a template (its name into name); NULL for none. */
static const char *run_dir_of(const char *model_dir, const char *adapter_dir, char *name,
                              size_t cap) {
    const char *dirs[2] = {adapter_dir, model_dir};
    for (int i = 0; i < 2; i++)
        if (dirs[i] && !model_run_string(dirs[i], "train_config.json", "template", name, cap))
            return dirs[i];
    return NULL;
}

int cli_run_template(const char *model_dir, const char *adapter_dir, char *name, size_t cap,
                     char *tdir, size_t tcap) {
    const char *run = run_dir_of(model_dir, adapter_dir, name, cap);
    if (!run) return 0;
    if (model_run_string(run, "train_config.json", "templates_dir", tdir, tcap) || !is_dir(tdir))
        tdir[0] = '\0';
    return 1;
}

const char *cli_run_system(const char *model_dir, const char *adapter_dir, char *buf, size_t cap) {
    char name[256];
    const char *run = run_dir_of(model_dir, adapter_dir, name, sizeof name);
    return run && !model_run_string(run, "train_config.json", "default_system", buf, cap) ? buf
                                                                                          : NULL;
}

int cli_default_template(const char *model_dir, const char *adapter_dir, const char **tname,
                         const char **tdir, char *nbuf, size_t ncap, char *dbuf, size_t dcap) {
    int from_run = 0;
    if (!*tname && cli_run_template(model_dir, adapter_dir, nbuf, ncap, dbuf, dcap)) {
        *tname = nbuf;
        if (!*tdir && dbuf[0]) *tdir = dbuf;
        from_run = 1;
    }
    if (!*tdir) *tdir = "templates";
    char fallback[64] = "vanilla"; /* a copy: *tname may be nbuf, written below */
    const char *fb = *tname ? template_auto_fallback(*tname) : "vanilla";
    if (fb) snprintf(fallback, sizeof fallback, "%s", fb);
    if (fb) { /* --template auto, the default (or auto:NAME, another fallback) */
        TemplateAuto a;
        TunaErr e = {0};
        if (template_auto(*tdir, model_dir, fallback, &a, &e) == 0) {
            snprintf(nbuf, ncap, "%s", a.name);
            /* a match, or no template at all (today's default), is quiet: `tuna template show
             * auto --model M` says why; a template that matches no built-in is a warning */
            if (a.has_model_template && !a.matched)
                fprintf(stderr, "tuna: warning: template %s (auto: %s)\n", a.name, a.why);
        } else {
            snprintf(nbuf, ncap, "%s", fallback);
            fprintf(stderr, "tuna: warning: template %s (auto: %s)\n", fallback, e.msg);
        }
        *tname = nbuf;
    }
    return from_run;
}
