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

/* dir/file parsed (NULL when it cannot be read or parsed); the caller deletes it */
static cJSON *run_json(const char *dir, const char *file) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *text = xread_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

int model_run_string(const char *dir, const char *file, const char *key, char *out, size_t cap) {
    cJSON *j = run_json(dir, file);
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, key));
    int rc = v && *v && strlen(v) < cap ? 0 : -1;
    if (!rc) snprintf(out, cap, "%s", v);
    cJSON_Delete(j);
    return rc;
}

int model_run_number(const char *dir, const char *file, const char *key, double *out) {
    cJSON *j = run_json(dir, file);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    int rc = cJSON_IsNumber(v) || cJSON_IsBool(v) ? 0 : -1;
    if (!rc) *out = cJSON_IsBool(v) ? (double)cJSON_IsTrue(v) : v->valuedouble;
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

void model_run_precision(const char *dir, ModelPrecision *p) {
    const char *tc = "train_config.json";
    double v;
    if (!model_run_number(dir, tc, "quantization_bit", &v)) p->bits = (int)v;
    if (!model_run_number(dir, tc, "double_quantization", &v)) p->double_quant = v != 0;
    if (!model_run_number(dir, tc, "bf16", &v)) p->bf16 = v != 0;
    model_run_string(dir, tc, "quantization_type", p->qtype, sizeof p->qtype);
    model_run_string(dir, tc, "dtype", p->dtype, sizeof p->dtype);
    if (!p->bits) p->double_quant = 0;
}

int model_load_any(const char *dir, Backend *be, Model **out, char *base_dir, size_t cap,
                   TunaErr *err) {
    *out = NULL;
    snprintf(base_dir, cap, "%s", dir);
    ModelLoadOptions lo = model_load_frozen(1 << 30, 0); /* inference: a GGUF file as stored */
    if (!model_is_adapter_run(dir)) return model_load_opts(dir, be, &lo, out, err);
    ModelPrecision p = MODEL_PRECISION_INIT;
    model_run_precision(dir, &p);
    int rc = model_run_base(dir, base_dir, cap, err);
    if (!rc) rc = model_load_options(p.bits, p.qtype, p.double_quant, p.dtype, &lo, err);
    if (rc) return rc;
    be->mm_bf16 = p.bf16;
    if ((rc = model_load_opts(base_dir, be, &lo, out, err))) return rc;
    if ((rc = adapter_load(*out, dir, err))) {
        model_free(*out);
        *out = NULL;
    }
    return rc;
}

int model_load_options(int bits, const char *qtype, int double_quant, const char *dtype,
                       ModelLoadOptions *o, TunaErr *err) {
    *o = (ModelLoadOptions){.qtype = WT_F32, .fp32_from_layer = 1 << 30};
    int bf16 = !strcmp(dtype, "bf16"), autot = !strcmp(dtype, "auto");
    if (!bf16 && !autot && strcmp(dtype, "fp32"))
        return tuna_errf(err, TUNA_EINVAL, "--dtype must be auto, fp32 or bf16, got \"%s\"", dtype);
    if (!bits) { /* double_quant alone changes nothing (LLaMA-Factory's default is on) */
        if (bf16) o->qtype = WT_BF16, o->typed_head = o->head_bf16 = 1;
        if (autot) *o = model_load_frozen(1 << 30, 0);
        return 0;
    }
    if (bits != 4 && bits != 8)
        return tuna_errf(err, TUNA_EINVAL, "--quantization-bit must be 0, 4 or 8, got %d", bits);
    const char *name = bits == 8 ? "q8_0" : qtype;
    int t = wtype_by_name(name);
    int ok4 = t == WT_NF4 || t == WT_FP4 || t == WT_Q4_0 || t == WT_Q4_1;
    if (bits == 4 && !ok4)
        return tuna_errf(err, TUNA_EINVAL,
                         "--quantization-type \"%s\": want nf4, fp4, q4_0 or q4_1 with "
                         "--quantization-bit 4",
                         qtype);
    if (double_quant && t != WT_NF4 && t != WT_FP4)
        return tuna_errf(err, TUNA_EINVAL, "--double-quantization applies to nf4 and fp4, not %s",
                         name);
    if (autot) *o = model_load_frozen(1 << 30, 0); /* the embedding and head as stored */
    if (bf16) o->typed_head = o->head_bf16 = 1;    /* the embedding and head in bf16 */
    o->qtype = (WType)t;
    o->double_quant = double_quant;
    return 0;
}
