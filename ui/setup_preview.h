/* setup_preview.h: the curses-free half of the Setup screen: one dataset example rendered through
 * a template as `tuna template show` prints it (the decoded text of each run of masked / trained
 * tokens, a flag per byte), and cheap row counts of dataset files. It calls the engine's
 * tokenizer, template and dataset loaders (small and fast for one example) and never touches
 * model weights. UI thread only. */
#ifndef TUNA_UI_SETUP_PREVIEW_H
#define TUNA_UI_SETUP_PREVIEW_H

#include <stddef.h>

#include "../src/tokenizer.h"

typedef struct SetupPreview {
    char key[6000];        /* the inputs it was built from ("" = never built) */
    char *text;            /* decoded example: the runs concatenated, NUL-terminated */
    unsigned char *masked; /* (len) 1 where the byte belongs to a masked (no loss) run */
    size_t len;
    int n_tokens, n_train; /* of the example */
    int truncated;         /* cutoff_len shortened it */
    long index;            /* example index shown (may be below the one asked for) */
    char err[640];         /* non-empty: why there is no preview */
    Tokenizer *tok;        /* cached for tok_dir */
    char tok_dir[4096];
    char tok_err[600];
} SetupPreview;

typedef struct PreviewInputs {
    const char *model_dir;     /* tokenizer.json here */
    const char *templates_dir; /* NULL -> "templates" */
    const char *template_name;
    const char *dataset_dir; /* NULL -> "datasets" */
    const char *dataset;     /* dataset_info.json key(s); the first example is shown */
    const char *vars;
    int cutoff_len;
    long index;                 /* example to show (from 0); past the end shows the last one */
    const char *default_system; /* the config's default_system (NULL or "": the template's) */
} PreviewInputs;

/* Rebuilds p when the inputs differ from the last build; returns 1 when it rebuilt. Errors end up
 * in p->err (and p->len = 0). */
int setup_preview_update(SetupPreview *p, const PreviewInputs *in);
/* Frees what p holds (not p) and zeroes it. */
void setup_preview_clear(SetupPreview *p);

/* Rows in a dataset file: lines of .jsonl/.txt (non-empty), elements of a .json array (a .json
 * that starts with '{' is JSON lines). Files over 64 MiB are sampled (first 16 MiB) and the count
 * extrapolated: *approx = 1. Returns -1 when the file cannot be read or the type is unknown. */
long setup_count_rows(const char *path, int *approx);

#endif
