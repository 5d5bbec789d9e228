/* model_any.c: model_load_any (model.h), a model folder or an adapter run onto its base. */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "peft.h"
#include "xalloc.h"

int model_load_any(const char *dir, Backend *be, Model **out, char *base_dir, size_t cap,
                   TunaErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(base_dir, cap, "%s", dir);
    char *text = xread_file(path, NULL);
    if (!text) return model_load(dir, be, out, err);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const char *base = cJSON_GetStringValue(cJSON_GetObjectItem(j, "base_model_name_or_path"));
    int rc;
    if (!base || !*base)
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: no base_model_name_or_path to load the adapter onto",
                       path);
    else {
        snprintf(base_dir, cap, "%s", base);
        rc = model_load(base_dir, be, out, err);
        if (!rc && (rc = adapter_load(*out, dir, err))) {
            model_free(*out);
            *out = NULL;
        }
    }
    cJSON_Delete(j);
    return rc;
}
