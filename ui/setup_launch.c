/* setup_launch.c: the Setup form as the JSON that `tuna train --config` reads (^S saves, ^O
 * loads) and the launch (^T: written into runs/NAME/, `tuna train --config` started in the
 * background, followed in the Train screen). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../src/lf_config.h"
#include "../src/model.h"
#include "../src/template.h"
#include "../src/train.h"
#include "../src/xalloc.h"
#include "curses_wrap.h"
#include "layout.h"
#include "setup_internal.h"

// --- config JSON

static cJSON *setup_json(SetupState *s) {
    /* the loaded config's other settings, then the form's rows over them */
    cJSON *o = s->extra ? cJSON_Duplicate(s->extra, 1) : cJSON_CreateObject();
    unsigned mb = setup_method_bit(s);
    if (!cJSON_GetObjectItemCaseSensitive(o, "dataset_dir"))
        cJSON_AddStringToObject(o, "dataset_dir", "datasets");
    for (int i = 0; i < s->n; i++) {
        Field *f = &s->f[i];
        if (!(f->methods & mb)) continue;
        cJSON_DeleteItemFromObjectCaseSensitive(o, f->key);
        if (setup_is_auto(f))
            cJSON_AddStringToObject(o, f->key, "auto");
        else if (f->kind == F_INT)
            cJSON_AddNumberToObject(o, f->key, (double)(long)f->v);
        else if (f->kind == F_FLOAT)
            cJSON_AddNumberToObject(o, f->key, f->v);
        else if (f->kind == F_BOOL)
            cJSON_AddBoolToObject(o, f->key, f->v != 0);
        else
            cJSON_AddStringToObject(o, f->key, f->text);
    }
    return o;
}

/* Writes the form as JSON to path; output: the run folder to name (^T: the one it just created,
 * which auto_output would now pass over as taken), or NULL for the form's own. */
int setup_write_json(App *app, SetupState *s, const char *path, const char *output, char *err,
                     size_t n) {
    setup_auto_output(app, s);
    cJSON *o = setup_json(s);
    if (output) cJSON_ReplaceItemInObject(o, "output", cJSON_CreateString(output));
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0) {
        snprintf(err, n, "%.400s: %s", path, strerror(errno));
        rc = -1;
    }
    if (f && fclose(f)) rc = -1;
    free(txt);
    return rc;
}

/* A train_config.json, or a LLaMA-Factory YAML read by the engine's lf_config_load (over tuna's
 * defaults, as `tuna train FILE.yaml` does): the form's rows take its values and the rest is kept
 * in s->extra, so that ^S and ^T write the whole config. */
int setup_load_json(SetupState *s, const char *path, char *err, size_t n) {
    char *txt = NULL;
    if (lf_config_is_yaml(path)) {
        TrainConfig c;
        TunaErr e = {0};
        train_config_defaults(&c);
        if (lf_config_load(&c, path, NULL, 0, &e)) {
            snprintf(err, n, "%s", e.msg);
            return -1;
        }
        txt = train_config_json(&c);
    } else if (!(txt = xread_file(path, NULL))) {
        snprintf(err, n, "%.400s: %s", path, strerror(errno));
        return -1;
    }
    cJSON *o = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(o)) {
        snprintf(err, n, "%.400s: not a JSON object", path);
        cJSON_Delete(o);
        return -1;
    }
    for (int i = 0; i < s->n; i++) {
        Field *f = &s->f[i];
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, f->key);
        if (!it) continue;
        if (f->kind == F_BOOL && cJSON_IsBool(it))
            f->v = cJSON_IsTrue(it);
        else if (f->auto_ok && cJSON_IsString(it) && !strcmp(it->valuestring, "auto"))
            f->v = 0;
        else if ((f->kind == F_INT || f->kind == F_FLOAT || f->kind == F_BOOL) &&
                 cJSON_IsNumber(it))
            f->v = f->kind == F_BOOL ? it->valuedouble != 0 : it->valuedouble;
        else if ((f->kind == F_TEXT || f->kind == F_CHOICE) && cJSON_IsString(it)) {
            snprintf(f->text, sizeof f->text, "%s", it->valuestring);
            if (!strcmp(f->key, "output")) s->output_typed = 1;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(o, f->key);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(o, "history"); /* a resumed run's record */
    cJSON_Delete(s->extra);
    s->extra = o;
    return 0;
}

/* mkdir -p for the parents of path (not path itself). */
static void mkdir_parents(const char *path) {
    char p[PATH_MAX];
    setup_copy_str(p, sizeof p, path);
    for (char *q = p + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(p, 0755);
            *q = '/';
        }
}

int setup_start_training(App *app, SetupState *s) {
    setup_auto_output(app, s);
    Field *of = setup_field(s, "output");
    char out[sizeof of->text];
    setup_copy_str(out, sizeof out, of->text);
    char err[600] = "", cfg[4200], log[4200], pidf[4200];
    mkdir_parents(out);
    /* a new folder only: an existing run would be refused by tuna train, and Setup's own files
       must not land in it; a typed name that is taken moves on to a free one */
    if (mkdir(out, 0755)) {
        int e = errno;
        char fresh[sizeof of->text];
        if (e == EEXIST && runs_fresh_name(out, fresh, sizeof fresh) > 0) {
            setup_copy_str(of->text, sizeof of->text, fresh);
            char why[sizeof s->refused];
            snprintf(why, sizeof why, "%.200s already exists; output is now %.200s: ^T again", out,
                     fresh);
            return setup_refuse(app, s, of, why);
        }
        app_status(app, ROLE_ERROR, "%s: %s", out, strerror(e));
        return UI_REDRAW;
    }
    snprintf(cfg, sizeof cfg, "%s/setup_config.json", out);
    if (setup_write_json(app, s, cfg, out, err, sizeof err)) {
        app_status(app, ROLE_ERROR, "%s", err);
        return UI_REDRAW;
    }
    snprintf(log, sizeof log, "%s/train.log", out);
    snprintf(pidf, sizeof pidf, "%s/train.pid", out);
    pid_t pid = fork();
    if (pid == 0) {
        /* child: a headless trainer in its own session; stdout/stderr to the run's log */
        setsid();
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        if (nul >= 0) dup2(nul, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        /* the running binary when it is tuna, else ./tuna (a standalone UI test build) */
        size_t el = strlen(app->self_exe);
        const char *exe =
                el >= 5 && !strcmp(app->self_exe + el - 5, "/tuna") ? app->self_exe : "./tuna";
        execl(exe, exe, "train", "--config", cfg, (char *)NULL);
        _exit(127);
    }
    if (pid < 0) {
        app_status(app, ROLE_ERROR, "cannot start tuna train: %s", strerror(errno));
        return UI_REDRAW;
    }
    FILE *f = fopen(pidf, "w");
    if (f) fprintf(f, "%ld\n", (long)pid), fclose(f);
    app_open_run(app, out);
    app_status(app, ROLE_NORMAL, "started tuna train (pid %ld); its output: %s", (long)pid, log);
    return UI_REDRAW;
}
