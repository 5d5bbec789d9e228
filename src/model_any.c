/* model_any.c: a model folder, a .gguf file, or an adapter run (a LoRA run folder) onto its
 * base: one convention for the CLI (src/cli) and the workbench (ui/chat_worker.c). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "peft.h"
#include "xalloc.h"

int model_run_string(const char *dir, const char *file, const char *key, char *out, size_t cap) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *text = xread_file(path, NULL);
    if (!text) return -1;
    cJSON *j = cJSON_Parse(text);
    free(text);
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, key));
    int rc = v && *v && strlen(v) < cap ? 0 : -1;
    if (!rc) snprintf(out, cap, "%s", v);
    cJSON_Delete(j);
    return rc;
}

int model_is_adapter_run(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (access(path, F_OK)) return 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    return access(path, F_OK) != 0;
}

/* 1: path is a model tuna can load as a base (a folder, or a .gguf file). */
static int is_model(const char *path) {
    struct stat sb;
    size_t n = strlen(path);
    if (stat(path, &sb) != 0) return 0;
    return S_ISDIR(sb.st_mode) ||
           (S_ISREG(sb.st_mode) && n > 5 && !strcasecmp(path + n - 5, ".gguf"));
}

int model_run_base(const char *dir, char *base, size_t cap, TunaErr *err) {
    char rec[4096] = "";
    /* PEFT's field first; a folder moved since training may still be named by the run's
     * train_config.json (the --model it was trained with) */
    if (!model_run_string(dir, "adapter_config.json", "base_model_name_or_path", rec, sizeof rec) &&
        is_model(rec)) {
        snprintf(base, cap, "%s", rec);
        return 0;
    }
    char alt[4096];
    if (!model_run_string(dir, "train_config.json", "model", alt, sizeof alt) && is_model(alt)) {
        snprintf(base, cap, "%s", alt);
        return 0;
    }
    if (!rec[0])
        return tuna_errf(err, TUNA_ENOTFOUND,
                         "%s/adapter_config.json: no base_model_name_or_path (the base model of "
                         "this adapter); give the base model and add --adapter %s",
                         dir, dir);
    return tuna_errf(err, TUNA_ENOTFOUND,
                     "%s/adapter_config.json: base_model_name_or_path \"%s\" is not a folder here; "
                     "give the base model and add --adapter %s",
                     dir, rec, dir);
}

int model_load_any(const char *dir, Backend *be, Model **out, char *base_dir, size_t cap,
                   TunaErr *err) {
    *out = NULL;
    snprintf(base_dir, cap, "%s", dir);
    ModelLoadOptions lo = model_load_frozen(1 << 30, 0); /* inference: a GGUF file as stored */
    if (!model_is_adapter_run(dir)) return model_load_opts(dir, be, &lo, out, err);
    int rc = model_run_base(dir, base_dir, cap, err);
    if (!rc) rc = model_load(base_dir, be, out, err);
    if (!rc && (rc = adapter_load(*out, dir, err))) {
        model_free(*out);
        *out = NULL;
    }
    return rc;
}
