/* scr_setup.c: the Setup screen: a form over the `tuna train` options (keys = flag names with
 * dashes turned into underscores), with the picked model's architecture/size/dtype, the datasets
 * with their row counts, an estimate of trainable parameters and memory, and a live preview of
 * one dataset example rendered through the template with the loss-masked part dimmed (in «» when
 * there is no colour). Tab on the model row opens a folder browser (folders holding a
 * config.json are marked; Enter picks one or opens a folder, Backspace goes up). ^S saves the
 * form as the JSON that `tuna train --config` reads, ^O loads it, ^T writes it into runs/NAME/
 * and starts `tuna train --config` in the background, then follows the run in the Train screen.
 * Left/Right cycle choices and step numbers; Enter edits a value as text (refused in place with
 * the reason when invalid). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../src/config.h"
#include "../src/lf_config.h"
#include "../src/model.h"
#include "../src/template.h"
#include "../src/train.h"
#include "../src/xalloc.h"
#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "setup_internal.h"
#include "setup_preview.h"
#include "widgets.h"

static const char *method_names[] = {"full", "lora", "freeze", "ptuning", "prompt", "ptuning-v1"};
#define N_METHODS ((int)(sizeof method_names / sizeof method_names[0]))
static const char *prompt_encoder_names[] = {"mlp", "lstm"};
static const char *stage_names[] = {"sft", "pt", "dpo", "kto", "rm"};
#define N_STAGES ((int)(sizeof stage_names / sizeof stage_names[0]))
static const char *pref_loss_names[] = {"sigmoid", "hinge", "ipo", "orpo", "simpo"};

void setup_add_choice(Field *f, const char *s) {
    if (f->n_choices == MAX_CHOICES) return;
    f->choices = xrealloc(f->choices, (size_t)(f->n_choices + 1) * sizeof(char *));
    f->choices[f->n_choices++] = xstrdup(s);
}

int setup_has_choice(const Field *f, const char *s) {
    for (int i = 0; i < f->n_choices; i++)
        if (!strcmp(f->choices[i], s)) return 1;
    return 0;
}

/* out = dir "/" name (no snprintf: the sizes are dynamic); "" and -1 when it does not fit. */
int setup_join_path(char *out, size_t n, const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int root = a == 1 && dir[0] == '/';
    if (a + b + 2 > n) {
        if (n) out[0] = 0;
        return -1;
    }
    memcpy(out, dir, a);
    if (!root) out[a++] = '/';
    memcpy(out + a, name, b + 1);
    return 0;
}

void setup_copy_str(char *out, size_t n, const char *s) {
    if (!n) return;
    size_t l = strlen(s);
    if (l >= n) l = n - 1;
    memcpy(out, s, l);
    out[l] = 0;
}

int setup_is_model_dir(const char *dir) {
    char p[PATH_MAX + 16];
    struct stat st;
    if (setup_join_path(p, sizeof p, dir, "config.json")) return 0;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void scan_models(Field *f, const char *root) {
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[PATH_MAX];
        if (setup_join_path(p, sizeof p, root, e->d_name)) continue;
        if (setup_is_model_dir(p) && !setup_has_choice(f, p)) setup_add_choice(f, p);
    }
    closedir(d);
}

Field *setup_field(SetupState *s, const char *key) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->f[i].key, key)) return &s->f[i];
    return NULL;
}

unsigned setup_method_bit(SetupState *s) {
    unsigned b = train_method_bit(setup_field(s, "method")->text);
    return b ? b : TRAIN_M_FULL;
}

static void load_datasets(SetupState *s) {
    Field *ds = setup_field(s, "dataset");
    char *info = xread_file("datasets/dataset_info.json", NULL);
    cJSON *root = info ? cJSON_Parse(info) : NULL;
    for (cJSON *it = cJSON_IsObject(root) ? root->child : NULL; it; it = it->next) {
        if (!it->string || ds->n_choices == MAX_CHOICES) continue;
        setup_add_choice(ds, it->string);
        int k = ds->n_choices - 1;
        s->ds_file = xrealloc(s->ds_file, (size_t)(k + 1) * sizeof *s->ds_file);
        s->ds_rows = xrealloc(s->ds_rows, (size_t)(k + 1) * sizeof *s->ds_rows);
        s->ds_done = xrealloc(s->ds_done, (size_t)(k + 1) * sizeof *s->ds_done);
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(it, "file_name");
        s->ds_file[k] = NULL;
        if (cJSON_IsString(fn) && fn->valuestring[0]) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "datasets/%.3000s", fn->valuestring);
            s->ds_file[k] = xstrdup(p);
        }
        s->ds_rows[k] = -1;
        s->ds_done[k] = 0;
    }
    cJSON_Delete(root);
    free(info);
}

/* The form's rows in display order: the order with method lora is what tests/test_ui_tmux.sh
 * counts rows by. choice: Left/Right cycle the values the screen lists (models, templates,
 * datasets, methods). Every key is a row of the engine's options table. */
typedef struct FormRow {
    const char *key, *label;
    double step;
    int choice;
} FormRow;

static const FormRow form_rows[] = {
        {"model", "model", 0, 1},
        {"template", "template", 0, 1},
        {"dataset", "dataset", 0, 1},
        {"vars", "dataset vars", 0, 0},
        {"method", "method", 0, 1},
        {"lora_rank", "lora rank", 1, 0},
        {"lora_alpha", "lora alpha", 1, 0},
        {"lora_dropout", "lora dropout", 0.05, 0},
        {"lora_target", "lora target", 0, 0},
        {"lora_trainable_tokens", "lora train tokens", 0, 0},
        {"use_dora", "DoRA", 1, 0},
        {"loraplus_lr_ratio", "LoRA+ lr ratio", 1, 0},
        {"init_lora_weights", "lora init", 0, 0},
        {"freeze_layers", "trainable layers", 1, 0},
        {"prefix_tokens", "prefix tokens", 1, 0},
        {"prefix_projection", "prefix MLP", 1, 0},
        {"prefix_hidden", "prefix hidden", 16, 0},
        {"prompt_init_text", "prompt init text", 0, 0},
        {"prompt_encoder", "prompt encoder", 0, 1},
        {"prompt_encoder_layers", "encoder layers", 1, 0},
        {"epochs", "epochs", 1, 0},
        {"lr", "learning rate", 0, 0},
        {"batch_size", "batch size", 1, 0},
        {"grad_accum", "grad accum", 1, 0},
        {"cutoff_len", "cutoff len", 32, 0},
        {"gradient_checkpointing", "grad checkpoint", 1, 0},
        {"val_size", "val size", 0.05, 0},
        {"eval_steps", "eval steps", 5, 0},
        {"save_steps", "save steps", 10, 0},
        {"seed", "seed", 1, 0},
        {"quantization_bit", "base bits (0/4/8)", 4, 0},
        {"quantization_type", "4-bit type", 0, 0},
        {"double_quantization", "double quant", 1, 0},
        {"dtype", "base dtype", 0, 0},
        {"bf16", "bf16 compute", 1, 0},
        {"stage", "stage", 0, 1},
        {"pref_loss", "pref loss", 0, 1}, /* these with their stage only (stage_only()) */
        {"pref_beta", "pref beta", 0.05, 0},
        {"simpo_gamma", "simpo gamma", 0.1, 0},
        {"dpo_label_smoothing", "label smoothing", 0.05, 0},
        {"pref_ftx", "pref ftx", 0.1, 0},
        {"kto_chosen_weight", "kto desirable w", 0.1, 0},
        {"kto_rejected_weight", "kto undesirable w", 0.1, 0},
        {"output", "output", 0, 0},
};

/* A row from the engine's option: its kind, methods, range and default (from def). */
static void field_init(Field *f, const FormRow *r, const TrainConfig *def) {
    const TrainOption *o = train_option_find(r->key);
    TUNA_ASSERT(o); /* a row names a `tuna train` option */
    f->key = o->key;
    f->label = r->label;
    f->step = r->step;
    f->methods = o->methods;
    f->auto_ok = o->is_auto;
    f->lo_open = o->ranged && o->lo_open;
    f->lo = o->ranged ? o->lo : o->type == TRAIN_OPT_INT ? -1e9 : -HUGE_VAL;
    f->hi = o->ranged ? o->hi : o->type == TRAIN_OPT_INT ? 1e9 : HUGE_VAL;
    const char *p = (const char *)def + o->off;
    switch (o->type) {
    case TRAIN_OPT_STR:
        f->kind = r->choice ? F_CHOICE : F_TEXT;
        snprintf(f->text, sizeof f->text, "%s", p);
        break;
    case TRAIN_OPT_INT:
        f->kind = F_INT;
        f->v = *(const int *)p;
        break;
    case TRAIN_OPT_DBL:
        f->kind = F_FLOAT;
        f->v = *(const double *)p;
        break;
    case TRAIN_OPT_BOOL:
        f->kind = F_BOOL;
        f->v = *(const int *)p != 0;
        break;
    }
}

static SetupState *setup_get(App *app) {
    if (app->setup) return app->setup;
    SetupState *s = xcalloc(1, sizeof *s);
    s->n = (int)(sizeof form_rows / sizeof form_rows[0]);
    s->f = xcalloc((size_t)s->n, sizeof *s->f);
    /* the values start as `tuna train`'s defaults, so ^T on them trains as the CLI does: LoRA
       r8/alpha 16 on every linear layer, lr auto (chosen by method and model size) */
    TrainConfig def;
    train_config_defaults(&def);
    for (int i = 0; i < s->n; i++)
        field_init(&s->f[i], &form_rows[i], &def);
    /* the screen's own presets: the model and template it was opened with, and the names the
       identity dataset's placeholders want */
    snprintf(setup_field(s, "vars")->text, sizeof setup_field(s, "vars")->text, "%s",
             "name=Tuna,author=the tuna team");
    s->refused_field = -1;
    Field *m = setup_field(s, "model");
    snprintf(m->text, sizeof m->text, "%.500s", app->model_dir);
    setup_add_choice(m, app->model_dir);
    scan_models(m, "models");
    scan_models(m, "../shared/models");
    Field *t = setup_field(s, "template");
    setup_add_choice(t, "auto"); /* the built-in matching the model's own chat template */
    char **names = NULL;
    int nn = 0;
    if (template_list("templates", &names, &nn, NULL) == 0) {
        for (int i = 0; i < nn; i++)
            setup_add_choice(t, names[i]);
        template_list_free(names, nn);
    }
    if (!t->n_choices) setup_add_choice(t, "vanilla");
    snprintf(t->text, sizeof t->text, "%s", app->template_name);
    Field *mm = setup_field(s, "method");
    for (int i = 0; i < N_METHODS; i++)
        setup_add_choice(mm, method_names[i]);
    for (int i = 0; i < 2; i++)
        setup_add_choice(setup_field(s, "prompt_encoder"), prompt_encoder_names[i]);
    for (int i = 0; i < N_STAGES; i++)
        setup_add_choice(setup_field(s, "stage"), stage_names[i]);
    for (int i = 0; i < 5; i++)
        setup_add_choice(setup_field(s, "pref_loss"), pref_loss_names[i]);
    load_datasets(s);
    if (!setup_field(s, "dataset")->n_choices)
        setup_add_choice(setup_field(s, "dataset"), "identity");
    app->setup = s;
    return s;
}

void setup_browser_clear(Browser *b) {
    for (int i = 0; i < b->n; i++)
        free(b->names[i]);
    free(b->names);
    free(b->is_model);
    b->names = NULL;
    b->is_model = NULL;
    b->n = b->sel = b->top = 0;
}

static void setup_free(SetupState *s) {
    if (!s) return;
    Field *ds = setup_field(s, "dataset");
    for (int k = 0; ds && k < ds->n_choices && s->ds_file; k++)
        free(s->ds_file[k]);
    free(s->ds_file);
    free(s->ds_rows);
    free(s->ds_done);
    for (int i = 0; i < s->n; i++) {
        for (int k = 0; k < s->f[i].n_choices; k++)
            free(s->f[i].choices[k]);
        free(s->f[i].choices);
    }
    setup_browser_clear(&s->br);
    setup_preview_clear(&s->pv);
    cJSON_Delete(s->extra);
    free(s->f);
    free(s);
}

/* lr is "auto" (kept as 0): `tuna train` picks it by method and model size. */
int setup_is_auto(const Field *f) {
    return f->auto_ok && f->v == 0;
}

/* Until the user types an output folder it follows the dataset and method, as `tuna train`'s
 * default RUNS/DATASET-METHOD, under the runs folder (--runs), on a name no folder has yet:
 * training into an existing run is refused, so runs/identity-lora taken gives identity-lora-2. */
void setup_auto_output(App *app, SetupState *s) {
    if (s->output_typed) return;
    const char *d = setup_field(s, "dataset")->text;
    size_t k = strcspn(d, ",");
    while (k && d[k - 1] == ' ')
        k--;
    Field *o = setup_field(s, "output");
    char base[sizeof o->text];
    int rl = (int)strlen(app->runs_dir);
    while (rl > 1 && app->runs_dir[rl - 1] == '/') /* --runs DIR/ */
        rl--;
    snprintf(base, sizeof base, "%.*s/%.*s-%.20s", rl > 200 ? 200 : rl, app->runs_dir,
             (int)(k > 200 ? 200 : k), d, setup_field(s, "method")->text);
    runs_fresh_name(base, o->text, sizeof o->text);
}

// --- model, datasets, estimates

static double safetensors_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    double sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors")) continue;
        char p[PATH_MAX];
        struct stat st;
        if (!setup_join_path(p, sizeof p, dir, e->d_name) && stat(p, &st) == 0)
            sum += (double)st.st_size;
    }
    closedir(d);
    return sum;
}

void setup_refresh_model(SetupState *s) {
    const char *dir = setup_field(s, "model")->text;
    if (!strcmp(dir, s->cfg_for)) return;
    snprintf(s->cfg_for, sizeof s->cfg_for, "%s", dir);
    TunaErr e = {0};
    s->cfg_ok = config_load(dir, &s->cfg, &e) == 0;
    snprintf(s->cfg_err, sizeof s->cfg_err, "%s", e.msg);
    s->disk_bytes = s->cfg_ok ? safetensors_bytes(dir) : 0;
    if (s->cfg_ok) { /* keep the LoRA default target valid for the architecture */
        Field *t = setup_field(s, "lora_target");
        if (s->cfg.arch == ARCH_GPT2 && !strcmp(t->text, "q_proj,v_proj"))
            snprintf(t->text, sizeof t->text, "c_attn");
        if (s->cfg.arch != ARCH_GPT2 && !strcmp(t->text, "c_attn"))
            snprintf(t->text, sizeof t->text, "q_proj,v_proj");
        Field *fl = setup_field(s, "freeze_layers");
        if (fl->v > s->cfg.L) fl->v = s->cfg.L;
    }
}

/* Rows of dataset choice k, counted on first use. */
static long ds_rows_of(SetupState *s, int k, int *approx) {
    if (!s->ds_done[k]) {
        int a = 0;
        s->ds_rows[k] = s->ds_file[k] ? setup_count_rows(s->ds_file[k], &a) : -1;
        s->ds_done[k] = s->ds_rows[k] < 0 ? -1 : a ? 2 : 1;
    }
    *approx = s->ds_done[k] == 2;
    return s->ds_rows[k];
}

static void fmt_count(double v, char *b, size_t n) {
    if (v >= 1e9)
        snprintf(b, n, "%.2fB", v / 1e9);
    else if (v >= 1e6)
        snprintf(b, n, "%.2fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(b, n, "%.1fK", v / 1e3);
    else
        snprintf(b, n, "%.0f", v);
}

static void fmt_bytes(double v, char *b, size_t n) {
    if (v >= 1 << 30)
        snprintf(b, n, "%.2f GiB", v / (1 << 30));
    else if (v >= 1 << 20)
        snprintf(b, n, "%.1f MiB", v / (1 << 20));
    else
        snprintf(b, n, "%.0f KiB", v / 1024);
}

/* "91 rows", "~1.2M rows", "91+1.0K rows"; unknown names -> 1 and b = the first one. */
static int dataset_sizes(SetupState *s, const char *names, char *b, size_t n) {
    Field *ds = setup_field(s, "dataset");
    char *dup = xstrdup(names), *save = NULL;
    double total = 0;
    int parts = 0, approx = 0, unknown = 0, bad = 0;
    b[0] = 0;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t l = strlen(t);
        while (l && t[l - 1] == ' ')
            t[--l] = 0;
        if (!l) continue;
        int k = -1;
        for (int i = 0; i < ds->n_choices; i++)
            if (!strcmp(ds->choices[i], t)) k = i;
        if (k < 0 || !s->ds_rows) {
            if (!bad) snprintf(b, n, "%.200s", t);
            bad = 1;
            continue;
        }
        int a;
        long r = ds_rows_of(s, k, &a);
        if (r < 0)
            unknown = 1;
        else
            total += (double)r;
        approx |= a;
        parts++;
    }
    free(dup);
    if (bad) return 1;
    char c[32];
    fmt_count(total, c, sizeof c);
    if (!parts)
        snprintf(b, n, "no dataset");
    else if (unknown && total == 0)
        snprintf(b, n, "? rows");
    else
        snprintf(b, n, "%s%s%s rows", approx ? "~" : "", c, unknown ? "+?" : "");
    return 0;
}

static int target_on(const char *targets, const char *name) {
    if (!strcmp(targets, "all")) return 1;
    const char *p = targets;
    size_t n = strlen(name);
    while ((p = strstr(p, name))) {
        if ((p == targets || p[-1] == ',' || p[-1] == ' ') &&
            (p[n] == 0 || p[n] == ',' || p[n] == ' '))
            return 1;
        p += n;
    }
    return 0;
}

/* The form as the TrainConfig `tuna train --config` would read from it. */
static void form_config(SetupState *s, TrainConfig *c) {
    train_config_defaults(c);
    for (int i = 0; i < s->n; i++) {
        const Field *f = &s->f[i];
        const TrainOption *o = train_option_find(f->key);
        char *p = (char *)c + o->off;
        switch (o->type) {
        case TRAIN_OPT_STR: snprintf(p, o->size, "%s", f->text); break;
        case TRAIN_OPT_INT: *(int *)p = (int)f->v; break;
        case TRAIN_OPT_DBL: *(double *)p = f->v; break;
        case TRAIN_OPT_BOOL: *(int *)p = f->v != 0; break;
        }
    }
}

// --- actions

/* The preference stages' options: rows only while their stage is chosen (pref_beta: dpo and
 * kto; kto's weights: kto; the other pref_ and dpo ones: dpo). */
static int stage_shows(const char *key, const char *stage) {
    if (!strcmp(key, "pref_beta")) return !strcmp(stage, "dpo") || !strcmp(stage, "kto");
    if (!strncmp(key, "kto_", 4)) return !strcmp(stage, "kto");
    if (!strncmp(key, "pref_", 5) || !strcmp(key, "simpo_gamma") ||
        !strcmp(key, "dpo_label_smoothing"))
        return !strcmp(stage, "dpo");
    return 1;
}

static void visible(SetupState *s, int *idx, int *n) {
    unsigned mb = setup_method_bit(s);
    const char *stage = setup_field(s, "stage")->text;
    *n = 0;
    for (int i = 0; i < s->n; i++)
        if ((s->f[i].methods & mb) && stage_shows(s->f[i].key, stage)) idx[(*n)++] = i;
}

static Field *selected(SetupState *s) {
    int idx[64], n;
    visible(s, idx, &n);
    if (s->sel >= n) s->sel = n - 1;
    return &s->f[idx[s->sel]];
}

static void fmt_value(const Field *f, char *b, size_t n) {
    if (f->kind == F_INT)
        snprintf(b, n, "%ld", (long)f->v);
    else if (setup_is_auto(f))
        snprintf(b, n, "auto");
    else if (f->kind == F_FLOAT)
        snprintf(b, n, "%g", f->v);
    else if (f->kind == F_BOOL)
        snprintf(b, n, "%s", f->v ? "on" : "off");
    else
        snprintf(b, n, "%s", f->text);
}

/* Checks a typed text value; 0 ok, else why (and the value is refused). A dataset name that is
 * not in dataset_info.json is let through with a warning: `tuna train` then says so itself. */
static int check_text(SetupState *s, const Field *f, const char *v, char *why, size_t n) {
    TunaErr e = {0};
    if (!strcmp(f->key, "model")) {
        ModelConfig c;
        if (!*v) return snprintf(why, n, "name a model folder (Tab browses)"), -1;
        if (config_load(v, &c, &e)) return snprintf(why, n, "%s", e.msg), -1;
    } else if (!strcmp(f->key, "template")) {
        if (!strcmp(v, "auto")) return 0;
        Template *t = NULL;
        if (template_load("templates", v, &t, &e)) return snprintf(why, n, "%s", e.msg), -1;
        template_free(t);
    } else if (!strcmp(f->key, "method")) {
        for (int i = 0; i < N_METHODS; i++)
            if (!strcmp(v, method_names[i])) return 0;
        return snprintf(why, n,
                        "expected full, lora, freeze, ptuning, prompt or ptuning-v1, got "
                        "\"%.100s\"",
                        v),
               -1;
    } else if (!strcmp(f->key, "prompt_encoder")) {
        if (!strcmp(v, "mlp") || !strcmp(v, "lstm")) return 0;
        return snprintf(why, n, "expected mlp or lstm, got \"%.100s\"", v), -1;
    } else if (!strcmp(f->key, "stage")) {
        for (int i = 0; i < N_STAGES; i++)
            if (!strcmp(v, stage_names[i])) return 0;
        return snprintf(why, n, "expected sft, pt, dpo, kto or rm, got \"%.100s\"", v), -1;
    } else if (!strcmp(f->key, "pref_loss")) {
        for (int i = 0; i < 5; i++)
            if (!strcmp(v, pref_loss_names[i])) return 0;
        return snprintf(why, n, "expected sigmoid, hinge, ipo, orpo or simpo, got \"%.100s\"", v),
               -1;
    } else if (!strcmp(f->key, "dataset")) {
        char b[256];
        int any = 0;
        for (const char *p = v; *p; p++)
            any |= *p != ',' && *p != ' ';
        if (!any)
            return snprintf(why, n, "name at least one dataset from datasets/dataset_info.json"),
                   -1;
        if (dataset_sizes(s, v, b, sizeof b))
            return snprintf(why, n, "warn:\"%.200s\" is not in datasets/dataset_info.json", b), 1;
    } else if (!strcmp(f->key, "vars")) {
        char *dup = xstrdup(v), *save = NULL;
        int rc = 0;
        for (char *t = strtok_r(dup, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(t, '=');
            if (!eq || eq == t)
                rc = -1, snprintf(why, n, "expected KEY=VALUE,..., got \"%.100s\"", t);
        }
        free(dup);
        return rc;
    } else if (!strcmp(f->key, "lora_target")) {
        /* the engine knows the model's linear layers: its estimate refuses what a run would */
        TrainConfig tc;
        TrainEstimate est;
        if (!s->cfg_ok || !*v) return 0;
        form_config(s, &tc);
        snprintf(tc.method, sizeof tc.method, "lora");
        if (train_config_set(&tc, "lora_target", v, &e)) return snprintf(why, n, "%s", e.msg), -1;
        const char *m =
                train_estimate(&s->cfg, &tc, &est, &e) ? strstr(e.msg, "--lora-target: ") : NULL;
        if (m) return snprintf(why, n, "%s", m + strlen("--lora-target: ")), -1;
    } else if (!strcmp(f->key, "output")) {
        if (!*v) return snprintf(why, n, "name a run folder, e.g. runs/NAME"), -1;
        char fresh[512];
        if (runs_fresh_name(v, fresh, sizeof fresh) > 0)
            return snprintf(why, n, "warn:%.200s already exists (^T moves on to %.200s)", v, fresh),
                   1;
    }
    return 0;
}

static double field_hi(SetupState *s, const Field *f) {
    if (!strcmp(f->key, "freeze_layers") && s->cfg_ok) return s->cfg.L;
    return f->hi;
}

int setup_refuse(App *app, SetupState *s, const Field *f, const char *why) {
    snprintf(s->refused, sizeof s->refused, "%s", why);
    s->refused_field = (int)(f - s->f);
    app_status(app, ROLE_ERROR, "%s: %s", f->key, why);
    return UI_REDRAW;
}

static int commit_edit(App *app, SetupState *s) {
    Field *f = selected(s);
    s->editing = 0;
    char why[600] = "";
    if (f->kind == F_TEXT || f->kind == F_CHOICE) {
        int rc = check_text(s, f, s->ed.buf, why, sizeof why);
        if (rc < 0) return setup_refuse(app, s, f, why);
        snprintf(f->text, sizeof f->text, "%s", s->ed.buf);
        if (!strcmp(f->key, "output")) s->output_typed = 1;
        if (f->kind == F_CHOICE && !strcmp(f->key, "model") && !setup_has_choice(f, f->text))
            setup_add_choice(f, f->text);
        if (rc > 0) app_status(app, ROLE_WARN, "%s: %s", f->key, why + 5);
        return UI_REDRAW;
    }
    /* the engine parses and checks the value as `tuna train` would, in its words (without the
       flag's name, which the status line puts first) */
    const char *edit = s->ed.buf;
    TrainConfig tc;
    TunaErr e = {0};
    train_config_defaults(&tc);
    if (train_config_set(&tc, f->key, edit, &e)) {
        const char *m = strncmp(e.msg, "--", 2) ? NULL : strstr(e.msg, ": ");
        return setup_refuse(app, s, f, m ? m + 2 : e.msg);
    }
    const TrainOption *o = train_option_find(f->key);
    const char *p = (const char *)&tc + o->off;
    double v = f->kind == F_INT ? *(const int *)p : *(const double *)p;
    if (v > field_hi(s, f)) { /* freeze: no more layers than the model has */
        snprintf(why, sizeof why,
                 "must be an integer from %g to %g (the model's layers), got %.100s", f->lo,
                 field_hi(s, f), edit);
        return setup_refuse(app, s, f, why);
    }
    if (!strcmp(f->key, "val_size") && v >= 1 && v != floor(v))
        return setup_refuse(app, s, f, "a fraction below 1, or a whole count of examples");
    f->v = v;
    return UI_REDRAW;
}

static int setup_action(App *app, Action a) {
    SetupState *s = setup_get(app);
    if (s->br.open) return setup_browser_action(app, s, a);
    int idx[64], n;
    visible(s, idx, &n);
    Field *f = selected(s);
    char err[600] = "";
    if (s->editing) { /* the line editor's cursor keys */
        switch (a) {
        case ACT_LEFT: edit_op(&s->ed, EDIT_LEFT); return UI_REDRAW;
        case ACT_RIGHT: edit_op(&s->ed, EDIT_RIGHT); return UI_REDRAW;
        case ACT_HOME: edit_op(&s->ed, EDIT_HOME); return UI_REDRAW;
        case ACT_END: edit_op(&s->ed, EDIT_END); return UI_REDRAW;
        case ACT_OPEN: break;
        default: return 0;
        }
    }
    if (!s->editing) s->refused_field = -1;
    switch (a) {
    case ACT_UP:
        if (s->sel > 0) s->sel--;
        return UI_REDRAW;
    case ACT_DOWN:
        if (s->sel < n - 1) s->sel++;
        return UI_REDRAW;
    case ACT_HOME: s->sel = 0; return UI_REDRAW;
    case ACT_END: s->sel = n - 1; return UI_REDRAW;
    case ACT_PGDN: s->pv_index++; return UI_REDRAW; /* the preview: next / previous example */
    case ACT_PGUP:
        if (s->pv_index > 0) s->pv_index--;
        return UI_REDRAW;
    case ACT_LEFT:
    case ACT_RIGHT: {
        int d = a == ACT_RIGHT ? 1 : -1;
        if (f->kind == F_CHOICE && f->n_choices) {
            int cur = -1;
            for (int i = 0; i < f->n_choices; i++)
                if (!strcmp(f->choices[i], f->text)) cur = i;
            if (cur < 0) cur = d > 0 ? -1 : 0; /* a typed value: start from the ends */
            cur = (cur + d + f->n_choices) % f->n_choices;
            snprintf(f->text, sizeof f->text, "%s", f->choices[cur]);
        } else if (f->kind == F_BOOL) {
            f->v = !f->v;
        } else if (f->kind == F_INT || f->kind == F_FLOAT) {
            double hi = field_hi(s, f), was = f->v;
            if (setup_is_auto(f)) /* from auto: factors of two around 1e-3 */
                f->v = d > 0 ? 2e-3 : 5e-4;
            else if (f->step > 0)
                f->v += d * f->step;
            else
                f->v *= d > 0 ? 2 : 0.5; /* learning rate: factors of two */
            if (f->v < f->lo) f->v = f->lo;
            if (f->v > hi) f->v = hi;
            if (f->lo_open && f->v <= f->lo) f->v = was; /* lora alpha: above 0 */
        }
        return UI_REDRAW;
    }
    case ACT_OPEN:
        if (s->editing) return commit_edit(app, s);
        if (f->kind == F_BOOL) {
            f->v = !f->v;
            return UI_REDRAW;
        }
        s->editing = 1;
        char v[sizeof s->ed.buf];
        fmt_value(f, v, sizeof v);
        edit_set(&s->ed, v);
        return UI_REDRAW;
    case ACT_CFG_SAVE:
        if (lf_config_is_yaml(app->config_path))
            app_status(app, ROLE_ERROR,
                       "^S writes JSON, not over the YAML %s: start with --config FILE.json",
                       app->config_path);
        else if (setup_write_json(app, s, app->config_path, NULL, err, sizeof err))
            app_status(app, ROLE_ERROR, "%s", err);
        else
            app_status(app, ROLE_NORMAL, "saved %s", app->config_path);
        return UI_REDRAW;
    case ACT_CFG_LOAD:
        if (setup_load_json(s, app->config_path, err, sizeof err))
            app_status(app, ROLE_ERROR, "%s", err);
        else
            app_status(app, ROLE_NORMAL, "loaded %s%s", app->config_path,
                       lf_config_is_yaml(app->config_path) ? " (LLaMA-Factory)" : "");
        return UI_REDRAW;
    case ACT_START: return setup_start_training(app, s);
    default: return 0;
    }
}

static int setup_text_input(App *app) {
    return app->setup && (app->setup->editing || app->setup->br.open);
}

static int setup_key(App *app, int ch) {
    SetupState *s = setup_get(app);
    if (s->br.open) return setup_browser_key(app, s, ch);
    if (!s->editing) {
        if (ch == '\t' && !strcmp(selected(s)->key, "model")) {
            s->refused_field = -1;
            setup_browser_open(app, s);
            return UI_REDRAW;
        }
        return 0;
    }
    if (ch == 27) {
        s->editing = 0;
        return UI_REDRAW;
    }
    static const struct {
        int key;
        EditOp op;
    } ops[] = {
            {KEY_BACKSPACE, EDIT_BACKSPACE},
            {127, EDIT_BACKSPACE},
            {8, EDIT_BACKSPACE},
            {KEY_DC, EDIT_DELETE},
            {CTRL('d'), EDIT_DELETE},
            {CTRL('a'), EDIT_HOME},
            {CTRL('e'), EDIT_END},
            {CTRL('b'), EDIT_LEFT},
            {CTRL('f'), EDIT_RIGHT},
            {CTRL('u'), EDIT_KILL_BEFORE},
            {CTRL('k'), EDIT_KILL_AFTER},
            {CTRL('w'), EDIT_KILL_WORD},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (ch == ops[i].key) {
            edit_op(&s->ed, ops[i].op);
            return UI_REDRAW;
        }
    if (ch >= 32 && ch < 256 && ch != 127) { /* a byte of UTF-8 text */
        char c = (char)ch;
        if (edit_insert(&s->ed, &c, 1)) app_status(app, ROLE_WARN, "the value is full");
        return UI_REDRAW;
    }
    return 0;
}

// --- drawing

/* The value being typed, scrolled to its cursor (a highlighted cell), with a mark at either end
 * where the value runs on. */
static void draw_edit(LineEdit *e, int y, int x, int w) {
    if (w < 2) return;
    int col = edit_view(e, w);
    ui_fill((Rect){y, x, 1, w}, ROLE_SELECTED);
    ui_text(y, x, w, ROLE_SELECTED, e->buf + e->off, e->len - e->off);
    const char *ell = theme_glyphs()->ellipsis;
    if (e->off > 0) ui_str(y, x, 1, ROLE_DIM, ell);
    if (text_width(e->buf + e->off, e->len - e->off) > w) ui_str(y, x + w - 1, 1, ROLE_DIM, ell);
    size_t n = e->cur;
    while (n < e->len && ((unsigned char)e->buf[n + 1] & 0xC0) == 0x80)
        n++;
    if (e->cur < e->len)
        ui_text(y, x + col, w - col, ROLE_TAB_ACTIVE, e->buf + e->cur, n + 1 - e->cur);
    else
        ui_str(y, x + col, w - col, ROLE_TAB_ACTIVE, " ");
}

/* The form (left pane). */
static void draw_form(App *app, SetupState *s, Rect list) {
    (void)app;
    ui_frame(list, "training setup", 1);
    Rect in = ui_inner(list);
    int idx[64], n;
    visible(s, idx, &n);
    if (s->sel >= n) s->sel = n - 1;
    if (s->sel < s->top) s->top = s->sel;
    if (s->sel >= s->top + in.h) s->top = s->sel - in.h + 1;
    int lw = in.w >= 60 ? 20 : 17;
    for (int k = 0; k < in.h && s->top + k < n; k++) {
        int i = s->top + k, y = in.y + k;
        Field *f = &s->f[idx[i]];
        int sel = i == s->sel;
        ui_str(y, in.x + 1, lw, sel ? ROLE_SELECTED : ROLE_LABEL, f->label);
        int vx = in.x + lw + 2, vw = in.w - lw - 3;
        char v[600];
        if (idx[i] == s->refused_field && !s->editing) {
            ui_printf(y, vx, vw, ROLE_ERROR, "refused: %s", s->refused);
            continue;
        }
        if (sel && s->editing) {
            draw_edit(&s->ed, y, vx, vw);
            continue;
        }
        fmt_value(f, v, sizeof v);
        if ((f->kind == F_CHOICE || f->kind == F_BOOL) && sel) {
            char t[620];
            snprintf(t, sizeof t, "< %s >", v);
            snprintf(v, sizeof v, "%.599s", t);
        }
        Role r = sel ? ROLE_SELECTED : ROLE_VALUE;
        if (!sel && !strcmp(f->key, "prefix_hidden") && setup_method_bit(s) == TRAIN_M_PTUNING &&
            !setup_field(s, "prefix_projection")->v)
            r = ROLE_DIM; /* ptuning-v1's encoder always has it; v2's only with the MLP */
        if (!sel && !strcmp(f->key, "prompt_encoder_layers") &&
            strcmp(setup_field(s, "prompt_encoder")->text, "lstm"))
            r = ROLE_DIM;
        /* a value wider than the row: paths keep their end (the run's name), others their start,
           with a mark where it is cut; Enter shows all of it in the editor */
        int used, vwid = text_width(v, strlen(v));
        const char *ell = theme_glyphs()->ellipsis;
        if (vwid > vw && vw > 4 && (!strcmp(f->key, "output") || !strcmp(f->key, "model"))) {
            const char *t = v;
            while (*t && text_width(t, strlen(t)) > vw - 1)
                t++;
            while (((unsigned char)*t & 0xC0) == 0x80)
                t++;
            used = ui_str(y, vx, 1, ROLE_DIM, ell);
            used += ui_str(y, vx + used, vw - used, r, t);
        } else if (vwid > vw && vw > 4) {
            used = ui_str(y, vx, vw - 1, r, v);
            used += ui_str(y, vx + used, 1, ROLE_DIM, ell);
        } else
            used = ui_str(y, vx, vw, r, v);
        if (!strcmp(f->key, "dataset")) {
            char b[256];
            int bad = dataset_sizes(s, f->text, b, sizeof b);
            char t[300];
            snprintf(t, sizeof t, bad ? "  not in dataset_info" : "  %s", b);
            ui_str(y, vx + used, vw - used, bad ? ROLE_WARN : ROLE_DIM, t);
        }
    }
}

/* Model facts: "llama  float32  260.0K params  1.0 MiB". */
static void model_line(const ModelConfig *c, double disk, char *b, size_t n) {
    double total = (double)model_param_count_for(c, NULL); /* model_load's own tensor table */
    char a[32], d[32];
    fmt_count(total, a, sizeof a);
    fmt_bytes(disk, d, sizeof d);
    snprintf(b, n, "%s  %s  %s params%s%s", c->model_type,
             c->torch_dtype[0] ? c->torch_dtype : "dtype ?", a, disk > 0 ? "  on disk " : "",
             disk > 0 ? d : "");
}

/* The preview pane: one example of the dataset through the template, masked runs dimmed (and in
 * «» / {{ }} without colour). */
static void draw_preview(App *app, SetupState *s, Rect r) {
    (void)app;
    Field *tf = setup_field(s, "template"), *df = setup_field(s, "dataset");
    PreviewInputs in = {
            setup_field(s, "model")->text,
            "templates",
            tf->text,
            "datasets",
            df->text,
            setup_field(s, "vars")->text,
            (int)setup_field(s, "cutoff_len")->v,
            s->pv_index,
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s->extra, "default_system"))};
    setup_preview_update(&s->pv, &in);
    if (!s->pv.err[0]) s->pv_index = s->pv.index; /* past the end: stay on the last one */
    char title[300];
    snprintf(title, sizeof title, "preview #%ld: %.60s on %.60s", s->pv.index + 1, tf->text,
             df->text);
    if (text_width(title, strlen(title)) > r.w - 4) /* narrow (80 columns): the short form */
        snprintf(title, sizeof title, "#%ld %.60s/%.60s", s->pv.index + 1, tf->text, df->text);
    ui_frame(r, title, 0);
    Rect d = ui_inner(r);
    if (d.h <= 0 || d.w <= 2) return;
    int x = d.x + 1, w = d.w - 2, y = d.y;
    const SetupPreview *p = &s->pv;
    if (p->err[0]) {
        WrapLine wl[16];
        int nl = wrap_text(p->err, w, wl, 16);
        for (int i = 0; i < nl && i < 16 && y < d.y + d.h; i++)
            ui_text(y++, x, w, ROLE_ERROR, p->err + wl[i].off, wl[i].len);
        return;
    }
    const Glyphs *g = theme_glyphs();
    int mono = !theme_has_color();
    const char *open = g->utf8 ? "\xc2\xab" : "{{", *close = g->utf8 ? "\xc2\xbb" : "}}";
    const char *nl_mark = g->utf8 ? "\xe2\x86\xb5" : "\\n";
    ui_printf(y++, x, w, ROLE_LABEL, "%d %s: %d train, %d masked%s", p->n_tokens,
              w >= 40 ? "tokens" : "tok", p->n_train, p->n_tokens - p->n_train,
              p->truncated ? (w >= 40 ? " (cut at cutoff len)" : " (cut)") : "");
    if (y < d.y + d.h) {
        if (mono)
            ui_printf(y++, x, w, ROLE_DIM, "%smasked%s = no loss%s%s", open, close,
                      w >= 40 ? ", the rest trains" : "",
                      w >= 66 ? "   PgUp/PgDn: other examples" : "");
        else {
            int u = ui_str(y, x, w, ROLE_DIM, "dim = masked (no loss)");
            if (w >= 40) u += ui_str(y, x + u, w - u, ROLE_VALUE, ", bright = trains");
            if (w >= 66) ui_str(y, x + u, w - u, ROLE_DIM, "   PgUp/PgDn: other examples");
            y++;
        }
    }
    /* the display text: markers around masked runs, a visible mark before each newline */
    size_t cap = p->len * 2 + 64, n = 0;
    char *t = xmalloc(cap);
    unsigned char *m = xmalloc(cap);
#define PUT(str, mk)                                                                               \
    do {                                                                                           \
        const char *q_ = (str);                                                                    \
        size_t l_ = strlen(q_);                                                                    \
        if (n + l_ + 1 > cap) {                                                                    \
            cap = (n + l_ + 1) * 2;                                                                \
            t = xrealloc(t, cap);                                                                  \
            m = xrealloc(m, cap);                                                                  \
        }                                                                                          \
        memcpy(t + n, q_, l_);                                                                     \
        memset(m + n, (mk), l_);                                                                   \
        n += l_;                                                                                   \
    } while (0)
    for (size_t i = 0; i < p->len; i++) {
        int mk = p->masked[i];
        if (mono && mk && (i == 0 || !p->masked[i - 1])) PUT(open, 1);
        char c = p->text[i];
        if (c == '\n') {
            PUT(nl_mark, 2 | mk);
            PUT("\n", mk);
        } else if (c == '\t')
            PUT(" ", mk);
        else {
            char one[2] = {c, 0};
            PUT(one, mk);
        }
        if (mono && mk && (i + 1 == p->len || !p->masked[i + 1])) PUT(close, 1);
    }
    t[n] = 0;
#undef PUT
    int rows = d.y + d.h - y;
    if (rows > 0) {
        WrapLine *wl = xmalloc(sizeof *wl * (size_t)(rows + 1));
        int total = wrap_text(t, w, wl, rows + 1);
        for (int i = 0; i < total && i < rows; i++) {
            int cx = x, last = i == rows - 1 && total > rows;
            size_t a = wl[i].off, e = a + wl[i].len;
            while (a < e) { /* runs of the same mark */
                size_t b = a;
                while (b < e && m[b] == m[a])
                    b++;
                Role role = m[a] & 2 ? ROLE_DIM : m[a] & 1 ? ROLE_DIM : ROLE_VALUE;
                int lim = x + w - cx - (last ? 1 : 0);
                cx += ui_text(y + i, cx, lim, role, t + a, b - a);
                a = b;
            }
            if (last) ui_str(y + i, cx < x + w ? cx : x + w - 1, 1, ROLE_DIM, g->ellipsis);
        }
        free(wl);
    }
    free(t);
    free(m);
}

/* The top of the detail pane: the model and the estimates (or, while browsing, the highlighted
 * folder). Returns the rows it needs for the given width when draw is 0. */
static int draw_info(App *app, SetupState *s, Rect r, int draw) {
    Rect d = ui_inner(r);
    int x = d.x + 1, w = d.w - 2, y = d.y, wide = d.w >= 56;
#define LINE(role, ...)                                                                            \
    do {                                                                                           \
        if (draw && y < d.y + d.h) ui_printf(y, x, w, role, __VA_ARGS__);                          \
        y++;                                                                                       \
    } while (0)
    char buf[700];
    if (s->br.open) {
        Browser *b = &s->br;
        setup_browser_refresh_cfg(b);
        if (b->n && b->is_model[b->sel]) {
            if (b->cfg_ok) {
                model_line(&b->cfg, 0, buf, sizeof buf);
                LINE(ROLE_VALUE, "%s", buf);
                LINE(ROLE_LABEL, "L=%d C=%d H=%d/%d FF=%d V=%d", b->cfg.L, b->cfg.C, b->cfg.NH,
                     b->cfg.KVH, b->cfg.FF, b->cfg.V);
            } else
                LINE(ROLE_ERROR, "%s", b->cfg_err);
        } else
            LINE(ROLE_DIM, "not a model (no config.json)");
        LINE(ROLE_DIM, "[model]: holds a config.json");
        return y - d.y + 2;
    }
    setup_refresh_model(s);
    if (!s->cfg_ok) {
        LINE(ROLE_ERROR, "%s", s->cfg_err[0] ? s->cfg_err : "no model");
    } else {
        const ModelConfig *c = &s->cfg;
        /* the engine's estimate: what train_state_init and optim_init would allocate for
           batches of batch size x cutoff len (fp32 throughout, as it trains) */
        TrainConfig tc;
        TrainEstimate e;
        TunaErr err = {0};
        form_config(s, &tc);
        int bad = train_estimate(c, &tc, &e, &err);
        model_line(c, wide ? s->disk_bytes : 0, buf, sizeof buf);
        LINE(ROLE_VALUE, "%s", buf);
        LINE(ROLE_LABEL, "L=%d C=%d H=%d/%d FF=%d V=%d", c->L, c->C, c->NH, c->KVH, c->FF, c->V);
        if (bad)
            LINE(ROLE_WARN, "%s", err.msg);
        else {
            char b[32], mem[32], w1[32], w2[32], w3[32];
            double total = (double)e.total_params, trainable = (double)e.trainable_params;
            fmt_count(trainable, b, sizeof b);
            fmt_bytes((double)e.total_bytes, mem, sizeof mem);
            LINE(ROLE_OK, "trainable %s (%.2f%%)", b, total > 0 ? 100 * trainable / total : 0);
            LINE(ROLE_LABEL, "memory    ~%s (estimate)", mem);
            if (wide) {
                fmt_bytes((double)e.weight_bytes, w1, sizeof w1);
                fmt_bytes((double)(e.grad_bytes + e.optim_bytes), w2, sizeof w2);
                fmt_bytes((double)(e.act_bytes + e.scratch_bytes), w3, sizeof w3);
                LINE(ROLE_DIM, "  weights %s + grads/AdamW %s + activations %s (%ldx%ld tok%s)", w1,
                     w2, w3, (long)setup_field(s, "batch_size")->v,
                     (long)setup_field(s, "cutoff_len")->v,
                     strcmp(tc.stage, "dpo") ? "" : " pairs");
                if (e.ref_bytes) {
                    fmt_bytes((double)e.ref_bytes, w1, sizeof w1);
                    LINE(ROLE_DIM, "  + the reference model %s", w1);
                }
            }
        }
    }
    if (wide && app->rows >= 40) { /* room: every dataset with its size */
        Field *ds = setup_field(s, "dataset");
        y++;
        LINE(ROLE_TITLE, "datasets (datasets/dataset_info.json)");
        for (int k = 0; k < ds->n_choices && s->ds_rows; k++) {
            int a;
            long rows = ds_rows_of(s, k, &a);
            char c[32];
            fmt_count((double)(rows < 0 ? 0 : rows), c, sizeof c);
            int on = target_on(ds->text, ds->choices[k]);
            LINE(on ? ROLE_OK : ROLE_LABEL, "%s %-32s %s%s rows", on ? ">" : " ", ds->choices[k],
                 rows < 0 ? "?"
                 : a      ? "~"
                          : "",
                 rows < 0 ? "" : c);
        }
    }
    Field *sf = selected(s);
    const char *hint = !strcmp(sf->key, "model") ? "Tab browse  Enter type a path"
                       : !strcmp(sf->key, "lr")  ? "Left/Right x2  Enter type (auto: by model size)"
                       : !strcmp(sf->key, "lora_target") ? "Enter type: all, or q_proj,v_proj,..."
                       : sf->kind == F_CHOICE            ? "Left/Right choose  Enter type"
                       : sf->kind == F_BOOL              ? "Left/Right/Enter toggle"
                       : sf->kind == F_TEXT              ? "Enter type a value"
                                                         : "Left/Right step  Enter type";
    if (wide) LINE(ROLE_DIM, "config file: %s", app->config_path);
    if (s->refused_field >= 0 && !s->editing) { /* the whole reason, wrapped */
        char why[700];
        snprintf(why, sizeof why, "%s: %s", s->f[s->refused_field].key, s->refused);
        WrapLine wl[16];
        int nl = wrap_text(why, w > 4 ? w : 4, wl, 16);
        for (int i = 0; i < nl && i < 16; i++) {
            if (draw && y < d.y + d.h) ui_text(y, x, w, ROLE_ERROR, why + wl[i].off, wl[i].len);
            y++;
        }
    } else
        LINE(ROLE_DIM, "%s", hint);
#undef LINE
    return y - d.y + 2;
}

static void setup_draw(App *app) {
    SetupState *s = setup_get(app);
    SplitLayout L;
    layout_split(app->rows, app->cols, 46, &L);
    app_draw_header(app, L.header.y, L.header.w);
    setup_auto_output(app, s);
    if (s->br.open)
        setup_draw_browser(app, s, L.list);
    else
        draw_form(app, s, L.list);
    /* detail: the model and estimates on top, the template preview below */
    int need = draw_info(app, s, L.detail, 0);
    int min_preview = 6;
    if (need > L.detail.h - min_preview) need = L.detail.h - min_preview;
    if (need < 3) need = 3;
    Rect top = {L.detail.y, L.detail.x, need, L.detail.w};
    Rect bot = {L.detail.y + need, L.detail.x, L.detail.h - need, L.detail.w};
    ui_frame(top, s->br.open ? "highlighted folder" : "model and estimate", 0);
    draw_info(app, s, top, 1);
    if (bot.h >= 3) draw_preview(app, s, bot);
    if (s->br.open)
        setup_browse_help(L.help);
    else
        ui_help_line(L.help, SCR_SETUP, s->editing);
}

static void setup_free_app(App *app) {
    setup_free(app->setup);
    app->setup = NULL;
}

const Screen screen_setup = {"Setup",   SCR_SETUP, setup_text_input, NULL,           setup_action,
                             setup_key, NULL,      setup_draw,       setup_free_app, NULL};
