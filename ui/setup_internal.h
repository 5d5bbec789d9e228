/* setup_internal.h: what the Setup screen's files share (private to ui/): the form's fields,
 * the folder browser, the screen's state, and the functions one file calls in another.
 *   scr_setup.c      the form: fields, editing, checks, estimates, drawing, the screen's table
 *   setup_browser.c  the folder browser for the model (Tab on the model row)
 *   setup_launch.c   the form as `tuna train --config` JSON (^S, ^O) and the launch (^T) */
#ifndef TUNA_UI_SETUP_INTERNAL_H
#define TUNA_UI_SETUP_INTERNAL_H

#include <limits.h>

#include "../src/config.h"
#include "app.h"
#include "setup_preview.h"
#include "widgets.h"

#define MAX_CHOICES 64
#define CTRL(c)     ((c)&0x1f)
#define MAX_BROWSE  5000

typedef enum FieldKind { F_CHOICE, F_INT, F_FLOAT, F_TEXT, F_BOOL } FieldKind;

/* A row of the form. Its type, default, range and the methods it applies to are the engine's
 * (src/train.h, TrainOption); the label, the step and the order are the screen's. */
typedef struct Field {
    const char *key; /* config key: the `tuna train` flag with '-' -> '_' */
    const char *label;
    FieldKind kind;
    unsigned methods; /* shown for these methods (TRAIN_M_*) */
    double v, step;   /* step 0: Left/Right halve and double (lr) */
    double lo, hi;    /* the engine's range (lo excluded when lo_open) */
    int lo_open, auto_ok;
    char text[512]; /* F_TEXT / F_CHOICE value */
    char **choices; /* F_CHOICE, owned */
    int n_choices;
} Field;

/* The folder browser for the model (Tab on the model row). */
typedef struct Browser {
    int open;
    char dir[PATH_MAX]; /* absolute */
    char **names;       /* "..", "." (when dir is a model) and the subfolders, sorted */
    unsigned char *is_model;
    int n, sel, top;
    ModelConfig cfg; /* of the highlighted folder */
    int cfg_ok;
    char cfg_err[512];
    char cfg_for[PATH_MAX + 8];
} Browser;

struct SetupState {
    Field *f;
    int n, sel, top;
    int editing;
    LineEdit ed;       /* the value being typed */
    char refused[512]; /* why the last typed value was refused (shown in its row) */
    int refused_field;
    int output_typed; /* 0: output follows runs/DATASET-METHOD */
    long pv_index;    /* example shown in the preview (PgUp/PgDn) */
    ModelConfig cfg;
    int cfg_ok;
    char cfg_err[512];
    char cfg_for[512];
    double disk_bytes; /* *.safetensors of the model folder */
    /* datasets: parallel to the dataset field's choices */
    char **ds_file;       /* dataset_dir/file_name or NULL */
    long *ds_rows;        /* -1 unknown */
    signed char *ds_done; /* 0 not counted yet, 1 exact, 2 approximate, -1 unknown */
    Browser br;
    SetupPreview pv;
    /* the loaded config's settings that are not rows of the form (a LLaMA-Factory YAML's
     * lr_scheduler, warmup, logging, ...): written back with the form's (a cJSON object) */
    struct cJSON *extra;
};

// scr_setup.c: the form's helpers
void setup_add_choice(Field *f, const char *s);
int setup_has_choice(const Field *f, const char *s);
int setup_join_path(char *out, size_t n, const char *dir, const char *name);
void setup_copy_str(char *out, size_t n, const char *s);
int setup_is_model_dir(const char *dir);
Field *setup_field(SetupState *s, const char *key);
unsigned setup_method_bit(SetupState *s);
void setup_browser_clear(Browser *b);
int setup_is_auto(const Field *f);
void setup_auto_output(App *app, SetupState *s);
void setup_refresh_model(SetupState *s);
int setup_refuse(App *app, SetupState *s, const Field *f, const char *why);
// setup_browser.c
void setup_browser_open(App *app, SetupState *s);
void setup_browser_refresh_cfg(Browser *b);
int setup_browser_action(App *app, SetupState *s, Action a);
int setup_browser_key(App *app, SetupState *s, int ch);
void setup_draw_browser(App *app, SetupState *s, Rect list);
void setup_browse_help(Rect r);
// setup_launch.c: the form as `tuna train --config` JSON, and ^T
int setup_write_json(App *app, SetupState *s, const char *path, const char *output, char *err,
                     size_t n);
int setup_load_json(SetupState *s, const char *path, char *err, size_t n);
int setup_start_training(App *app, SetupState *s);

#endif
