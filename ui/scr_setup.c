/* scr_setup.c: the Setup screen: a form over the `tuna train` options (keys = flag names with
 * dashes turned into underscores), with the picked model's architecture/size/dtype, the dataset
 * and an estimate of trainable parameters and memory beside it. ^S saves the form as the JSON
 * that `tuna train --config` reads, ^O loads it, ^T writes it into runs/NAME/ and starts
 * `tuna train --config` in the background, then follows the run in the Train screen.
 * Left/Right cycle choices and step numbers; Enter edits a value as text (refused with the
 * reason when invalid). */
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

#include "../src/config.h"
#include "../src/template.h"
#include "../src/xalloc.h"
#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "widgets.h"

#define MAX_CHOICES 64

typedef enum FieldKind { F_CHOICE, F_INT, F_FLOAT, F_TEXT } FieldKind;
enum { M_FULL = 1, M_LORA = 2, M_FREEZE = 4, M_PT = 8, M_ALL = 15 };

typedef struct Field {
    const char *key;   /* config key */
    const char *label;
    FieldKind kind;
    unsigned methods;  /* shown for these methods */
    double v, step, lo, hi;
    char text[512];    /* F_TEXT / F_CHOICE value */
    char **choices;    /* F_CHOICE, owned */
    int n_choices;
} Field;

struct SetupState {
    Field *f;
    int n, sel, top;
    int editing;
    char edit[512];
    size_t edit_len;
    ModelConfig cfg;
    int cfg_ok;
    char cfg_err[512];
    char cfg_for[512];
};

static const char *method_names[] = {"full", "lora", "freeze", "ptuning"};

static void add_choice(Field *f, const char *s) {
    if (f->n_choices == MAX_CHOICES) return;
    f->choices = xrealloc(f->choices, (size_t)(f->n_choices + 1) * sizeof(char *));
    f->choices[f->n_choices++] = xstrdup(s);
}

static void scan_models(Field *f, const char *root) {
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4200];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/config.json", root, e->d_name);
        if (stat(p, &st) == 0) {
            snprintf(p, sizeof p, "%s/%s", root, e->d_name);
            add_choice(f, p);
        }
    }
    closedir(d);
}

static Field *field(SetupState *s, const char *key) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->f[i].key, key)) return &s->f[i];
    return NULL;
}

static unsigned method_bit(SetupState *s) {
    const char *m = field(s, "method")->text;
    for (int i = 0; i < 4; i++)
        if (!strcmp(m, method_names[i])) return 1u << i;
    return M_FULL;
}

static SetupState *setup_get(App *app) {
    if (app->setup) return app->setup;
    SetupState *s = xcalloc(1, sizeof *s);
    static const Field defs[] = {
            {"model", "model", F_CHOICE, M_ALL, 0, 0, 0, 0, "", NULL, 0},
            {"template", "template", F_CHOICE, M_ALL, 0, 0, 0, 0, "vanilla", NULL, 0},
            {"dataset", "dataset", F_CHOICE, M_ALL, 0, 0, 0, 0, "identity", NULL, 0},
            {"vars", "dataset vars", F_TEXT, M_ALL, 0, 0, 0, 0, "name=Tuna,author=the tuna team", NULL, 0},
            {"method", "method", F_CHOICE, M_ALL, 0, 0, 0, 0, "lora", NULL, 0},
            {"lora_rank", "lora rank", F_INT, M_LORA, 8, 1, 1, 1024, "", NULL, 0},
            {"lora_alpha", "lora alpha", F_INT, M_LORA, 16, 1, 1, 4096, "", NULL, 0},
            {"lora_dropout", "lora dropout", F_FLOAT, M_LORA, 0, 0.05, 0, 0.9, "", NULL, 0},
            {"lora_target", "lora target", F_TEXT, M_LORA, 0, 0, 0, 0, "q_proj,v_proj", NULL, 0},
            {"freeze_layers", "trainable layers", F_INT, M_FREEZE, 2, 1, 1, 1000, "", NULL, 0},
            {"num_virtual_tokens", "virtual tokens", F_INT, M_PT, 16, 1, 1, 1024, "", NULL, 0},
            {"epochs", "epochs", F_FLOAT, M_ALL, 3, 1, 0.1, 1000, "", NULL, 0},
            {"lr", "learning rate", F_FLOAT, M_ALL, 1e-3, 0, 1e-7, 1, "", NULL, 0},
            {"batch_size", "batch size", F_INT, M_ALL, 8, 1, 1, 4096, "", NULL, 0},
            {"grad_accum", "grad accum", F_INT, M_ALL, 1, 1, 1, 1024, "", NULL, 0},
            {"cutoff_len", "cutoff len", F_INT, M_ALL, 256, 32, 8, 131072, "", NULL, 0},
            {"val_size", "val size", F_FLOAT, M_ALL, 0.1, 0.05, 0, 0.9, "", NULL, 0},
            {"eval_steps", "eval steps", F_INT, M_ALL, 20, 5, 1, 1000000, "", NULL, 0},
            {"save_steps", "save steps", F_INT, M_ALL, 50, 10, 1, 1000000, "", NULL, 0},
            {"seed", "seed", F_INT, M_ALL, 42, 1, 0, 2147483647, "", NULL, 0},
            {"output", "output", F_TEXT, M_ALL, 0, 0, 0, 0, "runs/identity-lora", NULL, 0},
    };
    s->n = (int)(sizeof defs / sizeof defs[0]);
    s->f = xmalloc(sizeof defs);
    memcpy(s->f, defs, sizeof defs);
    Field *m = field(s, "model");
    snprintf(m->text, sizeof m->text, "%.500s", app->model_dir);
    add_choice(m, app->model_dir);
    scan_models(m, "models");
    scan_models(m, "../shared/models");
    Field *t = field(s, "template");
    char **names = NULL;
    int nn = 0;
    if (template_list("templates", &names, &nn, NULL) == 0) {
        for (int i = 0; i < nn; i++) add_choice(t, names[i]);
        template_list_free(names, nn);
    }
    if (!t->n_choices) add_choice(t, "vanilla");
    snprintf(t->text, sizeof t->text, "%s", app->template_name);
    Field *mm = field(s, "method");
    for (int i = 0; i < 4; i++) add_choice(mm, method_names[i]);
    Field *ds = field(s, "dataset");
    char *info = xread_file("datasets/dataset_info.json", NULL);
    cJSON *root = info ? cJSON_Parse(info) : NULL;
    for (cJSON *it = root ? root->child : NULL; it; it = it->next) add_choice(ds, it->string);
    cJSON_Delete(root);
    free(info);
    if (!ds->n_choices) add_choice(ds, "identity");
    app->setup = s;
    return s;
}

void setup_free(SetupState *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        for (int k = 0; k < s->f[i].n_choices; k++) free(s->f[i].choices[k]);
        free(s->f[i].choices);
    }
    free(s->f);
    free(s);
}

// --- config JSON

static cJSON *setup_json(SetupState *s) {
    cJSON *o = cJSON_CreateObject();
    unsigned mb = method_bit(s);
    cJSON_AddStringToObject(o, "dataset_dir", "datasets");
    for (int i = 0; i < s->n; i++) {
        Field *f = &s->f[i];
        if (!(f->methods & mb)) continue;
        if (f->kind == F_INT) cJSON_AddNumberToObject(o, f->key, (double)(long)f->v);
        else if (f->kind == F_FLOAT) cJSON_AddNumberToObject(o, f->key, f->v);
        else cJSON_AddStringToObject(o, f->key, f->text);
    }
    return o;
}

static int write_json(SetupState *s, const char *path, char *err, size_t n) {
    cJSON *o = setup_json(s);
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

static int load_json(SetupState *s, const char *path, char *err, size_t n) {
    char *txt = xread_file(path, NULL);
    if (!txt) {
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
        if ((f->kind == F_INT || f->kind == F_FLOAT) && cJSON_IsNumber(it)) f->v = it->valuedouble;
        else if (cJSON_IsString(it)) snprintf(f->text, sizeof f->text, "%s", it->valuestring);
    }
    cJSON_Delete(o);
    return 0;
}

// --- estimates

static void refresh_model(SetupState *s) {
    const char *dir = field(s, "model")->text;
    if (!strcmp(dir, s->cfg_for)) return;
    snprintf(s->cfg_for, sizeof s->cfg_for, "%s", dir);
    TunaErr e = {0};
    s->cfg_ok = config_load(dir, &s->cfg, &e) == 0;
    snprintf(s->cfg_err, sizeof s->cfg_err, "%s", e.msg);
}

static int target_on(const char *targets, const char *name) {
    if (!strcmp(targets, "all")) return 1;
    const char *p = strstr(targets, name);
    size_t n = strlen(name);
    return p && (p == targets || p[-1] == ',') && (p[n] == 0 || p[n] == ',');
}

/* Parameters: total and trainable for the chosen method. */
static void estimate(SetupState *s, double *total, double *trainable) {
    const ModelConfig *c = &s->cfg;
    double C = c->C, Q = (double)c->NH * c->HS, KV = (double)c->KVH * c->HS, FF = c->FF;
    double mlp = c->act == ACT_SILU ? 3 * C * FF : 2 * C * FF;
    double layer = C * Q + 2 * C * KV + Q * C + mlp + 2 * C;
    double emb = (double)c->V * C * (c->tie_embeddings ? 1 : 2);
    *total = emb + c->L * layer + C;
    unsigned mb = method_bit(s);
    if (mb == M_FULL) *trainable = *total;
    else if (mb == M_FREEZE) {
        double n = field(s, "freeze_layers")->v;
        *trainable = (n < c->L ? n : c->L) * layer;
    } else if (mb == M_PT) {
        *trainable = field(s, "num_virtual_tokens")->v * c->L * 2 * KV;
    } else {
        double r = field(s, "lora_rank")->v;
        const char *t = field(s, "lora_target")->text;
        double per = 0;
        if (target_on(t, "q_proj")) per += r * (C + Q);
        if (target_on(t, "k_proj")) per += r * (C + KV);
        if (target_on(t, "v_proj")) per += r * (C + KV);
        if (target_on(t, "o_proj")) per += r * (Q + C);
        if (target_on(t, "gate_proj")) per += r * (C + FF);
        if (target_on(t, "up_proj")) per += r * (C + FF);
        if (target_on(t, "down_proj")) per += r * (FF + C);
        *trainable = per * c->L;
    }
}

static void fmt_count(double v, char *b, size_t n) {
    if (v >= 1e9) snprintf(b, n, "%.2fB", v / 1e9);
    else if (v >= 1e6) snprintf(b, n, "%.2fM", v / 1e6);
    else if (v >= 1e3) snprintf(b, n, "%.1fK", v / 1e3);
    else snprintf(b, n, "%.0f", v);
}

static void fmt_bytes(double v, char *b, size_t n) {
    if (v >= 1 << 30) snprintf(b, n, "%.2f GiB", v / (1 << 30));
    else if (v >= 1 << 20) snprintf(b, n, "%.1f MiB", v / (1 << 20));
    else snprintf(b, n, "%.0f KiB", v / 1024);
}

// --- actions

static void visible(SetupState *s, int *idx, int *n) {
    unsigned mb = method_bit(s);
    *n = 0;
    for (int i = 0; i < s->n; i++)
        if (s->f[i].methods & mb) idx[(*n)++] = i;
}

static Field *selected(SetupState *s) {
    int idx[64], n;
    visible(s, idx, &n);
    if (s->sel >= n) s->sel = n - 1;
    return &s->f[idx[s->sel]];
}

static void fmt_value(const Field *f, char *b, size_t n) {
    if (f->kind == F_INT) snprintf(b, n, "%ld", (long)f->v);
    else if (f->kind == F_FLOAT) snprintf(b, n, "%g", f->v);
    else snprintf(b, n, "%s", f->text);
}

static int commit_edit(App *app, SetupState *s) {
    Field *f = selected(s);
    s->editing = 0;
    if (f->kind == F_TEXT || f->kind == F_CHOICE) {
        snprintf(f->text, sizeof f->text, "%s", s->edit);
        return UI_REDRAW;
    }
    char *end;
    errno = 0;
    double v = strtod(s->edit, &end);
    if (errno || end == s->edit || *end || !isfinite(v) || v < f->lo || v > f->hi ||
        (f->kind == F_INT && v != floor(v))) {
        app_status(app, ROLE_ERROR, "%s: expected %s in [%g, %g], got \"%s\"", f->key,
                   f->kind == F_INT ? "an integer" : "a number", f->lo, f->hi, s->edit);
        return UI_REDRAW;
    }
    f->v = v;
    return UI_REDRAW;
}

static int start_training(App *app, SetupState *s) {
    const char *out = field(s, "output")->text;
    char err[600] = "", cfg[4200], log[4200], pidf[4200];
    mkdir("runs", 0755);
    if (mkdir(out, 0755) && errno != EEXIST) {
        app_status(app, ROLE_ERROR, "%s: %s", out, strerror(errno));
        return UI_REDRAW;
    }
    snprintf(cfg, sizeof cfg, "%s/setup_config.json", out);
    if (write_json(s, cfg, err, sizeof err)) {
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
        const char *exe = el >= 5 && !strcmp(app->self_exe + el - 5, "/tuna") ? app->self_exe : "./tuna";
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

static int setup_action(App *app, Action a) {
    SetupState *s = setup_get(app);
    int idx[64], n;
    visible(s, idx, &n);
    Field *f = selected(s);
    char err[600] = "";
    if (s->editing && a != ACT_OPEN) return 0;
    switch (a) {
    case ACT_UP: if (s->sel > 0) s->sel--; return UI_REDRAW;
    case ACT_DOWN: if (s->sel < n - 1) s->sel++; return UI_REDRAW;
    case ACT_HOME: s->sel = 0; return UI_REDRAW;
    case ACT_END: s->sel = n - 1; return UI_REDRAW;
    case ACT_LEFT:
    case ACT_RIGHT: {
        int d = a == ACT_RIGHT ? 1 : -1;
        if (f->kind == F_CHOICE && f->n_choices) {
            int cur = 0;
            for (int i = 0; i < f->n_choices; i++)
                if (!strcmp(f->choices[i], f->text)) cur = i;
            cur = (cur + d + f->n_choices) % f->n_choices;
            snprintf(f->text, sizeof f->text, "%s", f->choices[cur]);
        } else if (f->kind == F_INT || f->kind == F_FLOAT) {
            if (f->step > 0) f->v += d * f->step;
            else f->v *= d > 0 ? 2 : 0.5; /* learning rate: factors of two */
            if (f->v < f->lo) f->v = f->lo;
            if (f->v > f->hi) f->v = f->hi;
        }
        return UI_REDRAW;
    }
    case ACT_OPEN:
        if (s->editing) return commit_edit(app, s);
        s->editing = 1;
        fmt_value(f, s->edit, sizeof s->edit);
        s->edit_len = strlen(s->edit);
        return UI_REDRAW;
    case ACT_CFG_SAVE:
        if (write_json(s, app->config_path, err, sizeof err)) app_status(app, ROLE_ERROR, "%s", err);
        else app_status(app, ROLE_NORMAL, "saved %s", app->config_path);
        return UI_REDRAW;
    case ACT_CFG_LOAD:
        if (load_json(s, app->config_path, err, sizeof err)) app_status(app, ROLE_ERROR, "%s", err);
        else app_status(app, ROLE_NORMAL, "loaded %s", app->config_path);
        return UI_REDRAW;
    case ACT_START: return start_training(app, s);
    default: return 0;
    }
}

static int setup_text_input(App *app) {
    return app->setup && app->setup->editing;
}

static int setup_key(App *app, int ch) {
    SetupState *s = setup_get(app);
    if (!s->editing) return 0;
    if (ch == 27) {
        s->editing = 0;
        return UI_REDRAW;
    }
    if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        if (s->edit_len) s->edit[--s->edit_len] = 0;
        return UI_REDRAW;
    }
    if (ch >= 32 && ch < 256 && ch != 127 && s->edit_len < sizeof s->edit - 1) {
        s->edit[s->edit_len++] = (char)ch;
        s->edit[s->edit_len] = 0;
        return UI_REDRAW;
    }
    return 0;
}

static void setup_draw(App *app) {
    SetupState *s = setup_get(app);
    SplitLayout L;
    layout_split(app->rows, app->cols, 46, &L);
    app_draw_header(app, L.header.y, L.header.w);
    ui_frame(L.list, "training setup", 1);
    Rect in = ui_inner(L.list);
    int idx[64], n;
    visible(s, idx, &n);
    if (s->sel >= n) s->sel = n - 1;
    if (s->sel < s->top) s->top = s->sel;
    if (s->sel >= s->top + in.h) s->top = s->sel - in.h + 1;
    for (int k = 0; k < in.h && s->top + k < n; k++) {
        int i = s->top + k, y = in.y + k;
        Field *f = &s->f[idx[i]];
        int sel = i == s->sel;
        ui_str(y, in.x + 1, 17, sel ? ROLE_SELECTED : ROLE_LABEL, f->label);
        char v[600];
        if (sel && s->editing) snprintf(v, sizeof v, "%s_", s->edit);
        else {
            fmt_value(f, v, sizeof v);
            if (f->kind == F_CHOICE && sel) {
                char t[620];
                snprintf(t, sizeof t, "< %s >", v);
                snprintf(v, sizeof v, "%.599s", t);
            }
        }
        ui_str(y, in.x + 19, in.w - 20, sel ? ROLE_SELECTED : ROLE_VALUE, v);
    }
    // --- details: model, estimate, config path
    refresh_model(s);
    ui_frame(L.detail, "model and estimate", 0);
    Rect d = ui_inner(L.detail);
    int y = d.y;
    if (!s->cfg_ok) {
        ui_str(y++, d.x + 1, d.w - 1, ROLE_ERROR, s->cfg_err[0] ? s->cfg_err : "no model");
    } else {
        const ModelConfig *c = &s->cfg;
        double total, trainable;
        estimate(s, &total, &trainable);
        char a[32], b[32], mem[32];
        fmt_count(total, a, sizeof a);
        fmt_count(trainable, b, sizeof b);
        /* fp32 weights + grads and AdamW m, v of the trainable part + activations (rough) */
        double act = field(s, "batch_size")->v * field(s, "cutoff_len")->v * c->L * (c->C * 16.0 + c->FF * 3.0) * 4;
        fmt_bytes(total * 4 + trainable * 12 + act, mem, sizeof mem);
        ui_printf(y++, d.x + 1, d.w - 1, ROLE_VALUE, "%s, %s", c->model_type, c->torch_dtype[0] ? c->torch_dtype : "dtype ?");
        ui_printf(y++, d.x + 1, d.w - 1, ROLE_LABEL, "L=%d C=%d heads=%d/%d FF=%d V=%d", c->L, c->C, c->NH, c->KVH, c->FF, c->V);
        ui_printf(y++, d.x + 1, d.w - 1, ROLE_LABEL, "parameters  %s", a);
        ui_printf(y++, d.x + 1, d.w - 1, ROLE_OK, "trainable   %s (%.2f%%)", b, total > 0 ? 100 * trainable / total : 0);
        ui_printf(y++, d.x + 1, d.w - 1, ROLE_LABEL, "memory      ~%s", mem);
    }
    y++;
    ui_printf(y++, d.x + 1, d.w - 1, ROLE_DIM, "config file: %s", app->config_path);
    ui_str(y++, d.x + 1, d.w - 1, ROLE_DIM, "^S save  ^O load  ^T start training");
    ui_str(y++, d.x + 1, d.w - 1, ROLE_DIM, "Left/Right change, Enter types a value");
    ui_help_line(L.help, SCR_SETUP, s->editing);
}

const Screen screen_setup = {"Setup", SCR_SETUP, setup_text_input, NULL, setup_action, setup_key, NULL, setup_draw};
