/* setup_preview.c: the Setup screen's template preview and dataset row counts (see
 * setup_preview.h). */
#include "setup_preview.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../src/dataset.h"
#include "../src/template.h"
#include "../src/xalloc.h"

void setup_preview_clear(SetupPreview *p) {
    free(p->text);
    free(p->masked);
    tokenizer_free(p->tok);
    memset(p, 0, sizeof *p);
}

static void drop_text(SetupPreview *p) {
    free(p->text);
    free(p->masked);
    p->text = NULL;
    p->masked = NULL;
    p->len = 0;
    p->n_tokens = p->n_train = p->truncated = 0;
}

/* Appends the decoded runs of e to p->text / p->masked. */
static void render(SetupPreview *p, const Example *e) {
    size_t cap = 256;
    p->text = xmalloc(cap);
    p->masked = xmalloc(cap);
    p->len = 0;
    for (int i = 0; i < e->n;) {
        int masked = e->labels[i] == TEMPLATE_IGNORE, j = i;
        while (j < e->n && (e->labels[j] == TEMPLATE_IGNORE) == masked)
            j++;
        size_t n = 0;
        char *s = tokenizer_decode_len(p->tok, e->ids + i, (size_t)(j - i), 0, &n);
        if (s) {
            if (p->len + n + 1 > cap) {
                while (p->len + n + 1 > cap)
                    cap *= 2;
                p->text = xrealloc(p->text, cap);
                p->masked = xrealloc(p->masked, cap);
            }
            for (size_t k = 0; k < n; k++) { /* U+0000 would end the string: shown as a space */
                p->text[p->len + k] = s[k] ? s[k] : ' ';
                p->masked[p->len + k] = (unsigned char)masked;
            }
            p->len += n;
        }
        free(s);
        if (!masked) p->n_train += j - i;
        i = j;
    }
    p->text[p->len] = 0;
    p->n_tokens = e->n;
}

int setup_preview_update(SetupPreview *p, const PreviewInputs *in) {
    char key[sizeof p->key];
    snprintf(key, sizeof key, "%s\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s\x1f%d\x1f%ld", in->model_dir,
             in->templates_dir ? in->templates_dir : "templates", in->template_name,
             in->dataset_dir ? in->dataset_dir : "datasets", in->dataset, in->vars ? in->vars : "",
             in->cutoff_len, in->index);
    if (p->key[0] && !strcmp(key, p->key)) return 0;
    snprintf(p->key, sizeof p->key, "%s", key);
    drop_text(p);
    p->err[0] = 0;
    p->index = 0;
    TunaErr err = {0};
    /* the tokenizer is cached per model folder: a big tokenizer.json takes a moment to load */
    if (!p->tok || strcmp(p->tok_dir, in->model_dir)) {
        tokenizer_free(p->tok);
        p->tok = NULL;
        p->tok_err[0] = 0;
        snprintf(p->tok_dir, sizeof p->tok_dir, "%s", in->model_dir);
        if (tokenizer_load(in->model_dir, &p->tok, &err))
            snprintf(p->tok_err, sizeof p->tok_err, "tokenizer: %s", err.msg);
    }
    if (!p->tok) {
        snprintf(p->err, sizeof p->err, "%s", p->tok_err[0] ? p->tok_err : "no tokenizer");
        return 1;
    }
    Template *t = NULL;
    Dataset *d = NULL;
    const char *tname = in->template_name;
    TemplateAuto ta;
    const char *fb = template_auto_fallback(tname);
    if (fb) /* --template auto (auto:NAME): the built-in matching the model's own */
        tname = template_auto(in->templates_dir ? in->templates_dir : "templates", in->model_dir,
                              fb, &ta, NULL) == 0
                        ? ta.name
                        : fb;
    if (template_load(in->templates_dir ? in->templates_dir : "templates", tname, &t, &err)) {
        snprintf(p->err, sizeof p->err, "template: %s", err.msg);
        return 1;
    }
    if (in->default_system && *in->default_system)
        template_set_default_system(t, in->default_system);
    DatasetOptions o = {0};
    o.names = in->dataset;
    o.dataset_dir = in->dataset_dir;
    o.vars = in->vars && *in->vars ? in->vars : NULL;
    o.cutoff_len = in->cutoff_len;
    long want = in->index < 0 ? 0 : in->index;
    o.max_samples = (int)(want + 1 < 1000000 ? want + 1 : 1000000);
    int rc = dataset_load(&o, p->tok, t, &d, &err);
    if ((rc == TUNA_EFORMAT && strstr(err.msg, "no usable example")) ||
        (!rc && d->n <= (size_t)want)) {
        /* bad rows or rows with nothing to train were skipped: look a little further */
        dataset_free(d);
        d = NULL;
        o.max_samples += 64;
        rc = dataset_load(&o, p->tok, t, &d, &err);
    }
    if (rc) {
        snprintf(p->err, sizeof p->err, "dataset: %s", err.msg);
    } else {
        size_t i = d->n > (size_t)want ? (size_t)want : d->n - 1;
        p->index = (long)i;
        render(p, &d->ex[i]);
        p->truncated = in->cutoff_len > 0 && d->ex[i].n >= in->cutoff_len && d->n_truncated > 0;
    }
    dataset_free(d);
    template_free(t);
    return 1;
}

// --- dataset sizes

#define SAMPLE_ABOVE (64L << 20)
#define SAMPLE_BYTES (16L << 20)

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

long setup_count_rows(const char *path, int *approx) {
    *approx = 0;
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) return -1;
    int json = ends_with(path, ".json"),
        lines = ends_with(path, ".jsonl") || ends_with(path, ".txt");
    if (!json && !lines) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long limit = st.st_size > SAMPLE_ABOVE ? SAMPLE_BYTES : -1;
    long rows = 0, read = 0;
    int depth = 0, in_str = 0, esc = 0, first = 1, any = 0, line_has = 0;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (json && first) { /* decide between an array and JSON lines */
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
                first = 0;
                if (c != '[')
                    json = 0;
                else {
                    depth = 1;
                    continue;
                }
            }
            if (!json) { /* lines: the non-empty ones */
                if (c == '\n') {
                    rows += line_has;
                    line_has = 0;
                } else if (c != ' ' && c != '\t' && c != '\r')
                    line_has = 1;
                continue;
            }
            if (in_str) {
                if (esc)
                    esc = 0;
                else if (c == '\\')
                    esc = 1;
                else if (c == '"')
                    in_str = 0;
                continue;
            }
            if (c == '"')
                in_str = 1;
            else if (c == '[' || c == '{')
                depth++;
            else if (c == ']' || c == '}')
                depth--;
            else if (c == ',' && depth == 1)
                rows++;
            if (depth >= 1 && c != ' ' && c != '\t' && c != '\n' && c != '\r' &&
                !(depth == 1 && c == ','))
                any = 1;
        }
        read += (long)n;
        if (limit > 0 && read >= limit) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) return -1;
    if (json)
        rows += any; /* n elements = commas + 1 */
    else
        rows += line_has;
    if (limit > 0 && read < st.st_size && read > 0) {
        rows = (long)((double)rows * (double)st.st_size / (double)read);
        *approx = 1;
    }
    return rows;
}
