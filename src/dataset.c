/* dataset.c: dataset_info.json registry, streaming row readers (JSONL, JSON array, text),
 * LLaMA-Factory's alpaca/sharegpt converters, pt packing, the split and the batcher. */
#include "dataset.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "xalloc.h"

#define MAX_ELEM_BYTES ((size_t)256 << 20) /* one JSON element (row) */
#define MAX_INFO_BYTES ((size_t)16 << 20)  /* dataset_info.json */

// --- registry (LLaMA-Factory parser.py DatasetAttr)

enum { FMT_ALPACA, FMT_SHAREGPT };

typedef struct DatasetAttr {
    char *name, *path;
    int formatting;
    int ranking; /* "ranking": true: a preference dataset (chosen/rejected) */
    /* columns: NULL = unused */
    const char *prompt, *query, *response, *system, *history, *messages, *tools;
    const char *chosen, *rejected; /* ranking */
    const char *kto_tag;           /* kto: the boolean column */
    /* tags: NULL = never matches */
    const char *role_tag, *content_tag, *user_tag, *assistant_tag, *observation_tag, *function_tag,
            *system_tag;
} DatasetAttr;

static const char *get_str(const cJSON *obj, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* Fills a from the registry entry (strings borrowed from the cJSON tree `entry`). */
static int parse_attr(const char *info_path, const char *dir, const char *name, const cJSON *entry,
                      int want_ranking, int want_kto, DatasetAttr *a, TunaErr *err) {
    memset(a, 0, sizeof *a);
    if (!cJSON_IsObject(entry))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be an object", info_path, name);
    const char *file = get_str(entry, "file_name");
    if (!file) {
        if (cJSON_GetObjectItemCaseSensitive(entry, "hf_hub_url") ||
            cJSON_GetObjectItemCaseSensitive(entry, "ms_hub_url") ||
            cJSON_GetObjectItemCaseSensitive(entry, "om_hub_url") ||
            cJSON_GetObjectItemCaseSensitive(entry, "script_url"))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\": only local \"file_name\" datasets are supported, not "
                             "hub or script URLs",
                             info_path, name);
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" has no \"file_name\" string", info_path,
                         name);
    }
    const cJSON *rank = cJSON_GetObjectItemCaseSensitive(entry, "ranking");
    a->ranking = cJSON_IsTrue(rank);
    if (a->ranking && !want_ranking)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"%s\" is a ranking (preference, dpo) dataset: not supported for sft",
                         info_path, name);
    if (!a->ranking && want_ranking) /* LLaMA-Factory: "not applicable in the current stage" */
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"%s\" is not a ranking dataset: a preference stage (dpo) needs "
                         "\"ranking\": true with chosen and rejected columns",
                         info_path, name);
    const char *fmt = get_str(entry, "formatting");
    if (!fmt || !strcmp(fmt, "alpaca"))
        a->formatting = FMT_ALPACA;
    else if (!strcmp(fmt, "sharegpt"))
        a->formatting = FMT_SHAREGPT;
    else
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"%s\": formatting \"%s\" (expected alpaca or "
                         "sharegpt)",
                         info_path, name, fmt);
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(entry, "columns");
    if (cols && !cJSON_IsObject(cols))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\": \"columns\" must be an object", info_path,
                         name);
    if (cols) {
        a->kto_tag = get_str(cols, "kto_tag");
        if (a->kto_tag && !want_kto)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" is a kto dataset (columns.kto_tag): only for --stage kto",
                             info_path, name);
        if (!a->ranking && cJSON_GetObjectItemCaseSensitive(cols, "chosen"))
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: \"%s\" is a kto/preference dataset: not supported for sft",
                             info_path, name);
        a->prompt = get_str(cols, "prompt");
        a->query = get_str(cols, "query");
        a->response = get_str(cols, "response");
        a->system = get_str(cols, "system");
        a->history = get_str(cols, "history");
        a->messages = get_str(cols, "messages");
        a->tools = get_str(cols, "tools");
        a->chosen = get_str(cols, "chosen");
        a->rejected = get_str(cols, "rejected");
    } else {
        a->prompt = "instruction";
        a->query = "input";
        a->response = "output";
        a->messages = "conversations";
    }
    const cJSON *tags = cJSON_GetObjectItemCaseSensitive(entry, "tags");
    if (tags && !cJSON_IsObject(tags))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\": \"tags\" must be an object", info_path,
                         name);
    if (tags) { /* LLaMA-Factory: a "tags" object replaces all tags, missing ones become None */
        a->role_tag = get_str(tags, "role_tag");
        a->content_tag = get_str(tags, "content_tag");
        a->user_tag = get_str(tags, "user_tag");
        a->assistant_tag = get_str(tags, "assistant_tag");
        a->observation_tag = get_str(tags, "observation_tag");
        a->function_tag = get_str(tags, "function_tag");
        a->system_tag = get_str(tags, "system_tag");
    } else {
        a->role_tag = "from";
        a->content_tag = "value";
        a->user_tag = "human";
        a->assistant_tag = "gpt";
        a->observation_tag = "observation";
        a->function_tag = "function_call";
        a->system_tag = "system";
    }
    if (a->formatting == FMT_SHAREGPT && (!a->messages || !a->role_tag || !a->content_tag))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: \"%s\": sharegpt needs columns.messages and "
                         "tags role_tag/content_tag",
                         info_path, name);
    if (want_kto && !a->kto_tag) /* LLaMA-Factory: kto needs its kto_tag column */
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: \"%s\" has no columns.kto_tag: --stage kto needs a dataset whose "
                         "rows are tagged desirable (true) or undesirable (false)",
                         info_path, name);
    if (a->ranking && (!a->chosen || !a->rejected))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: \"%s\": a ranking dataset needs columns.chosen and "
                         "columns.rejected",
                         info_path, name);
    a->name = xstrdup(name);
    size_t l = strlen(dir) + strlen(file) + 2;
    a->path = xmalloc(l);
    snprintf(a->path, l, "%s/%s", dir, file);
    return 0;
}

static void attr_free(DatasetAttr *a) {
    free(a->name);
    free(a->path);
}

// --- {{var}} substitution

typedef struct Vars {
    char **key; /* "{{name}}" */
    char **val;
    int n;
} Vars;

static int vars_parse(const char *s, Vars *v, TunaErr *err) {
    memset(v, 0, sizeof *v);
    if (!s || !*s) return 0;
    const char *p = s;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (len == 0) {
            p += end ? 1 : 0;
            if (!end) break;
            continue;
        }
        if (!eq || eq == p)
            return tuna_errf(err, TUNA_EINVAL, "--vars: expected key=value, got \"%.*s\"", (int)len,
                             p);
        v->key = xrealloc(v->key, (size_t)(v->n + 1) * sizeof *v->key);
        v->val = xrealloc(v->val, (size_t)(v->n + 1) * sizeof *v->val);
        size_t kl = (size_t)(eq - p);
        v->key[v->n] = xmalloc(kl + 5);
        snprintf(v->key[v->n], kl + 5, "{{%.*s}}", (int)kl, p);
        v->val[v->n] = xstrndup(eq + 1, len - kl - 1);
        v->n++;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

static void vars_free(Vars *v) {
    for (int i = 0; i < v->n; i++) {
        free(v->key[i]);
        free(v->val[i]);
    }
    free(v->key);
    free(v->val);
}

/* Returns a malloc'd copy of s with every {{key}} replaced. */
static char *vars_apply(const Vars *v, const char *s) {
    char *cur = xstrdup(s);
    for (int i = 0; i < v->n; i++) {
        if (!strstr(cur, v->key[i])) continue;
        size_t kl = strlen(v->key[i]), vl = strlen(v->val[i]), cnt = 0;
        for (const char *q = cur; (q = strstr(q, v->key[i])); q += kl)
            cnt++;
        size_t nl = strlen(cur) - cnt * kl + cnt * vl;
        char *out = xmalloc(nl + 1), *o = out;
        const char *q = cur, *m;
        while ((m = strstr(q, v->key[i]))) {
            memcpy(o, q, (size_t)(m - q));
            o += m - q;
            memcpy(o, v->val[i], vl);
            o += vl;
            q = m + kl;
        }
        strcpy(o, q);
        free(cur);
        cur = out;
    }
    return cur;
}

// --- row readers: JSONL, JSON array (incremental scanner), text

enum { RD_JSONL, RD_ARRAY, RD_TEXT };

typedef struct Reader {
    FILE *f;
    const char *path;
    int kind;
    long line;       /* current line (1-based) of the next unread byte (array mode) */
    int array_state; /* 0: before first element, 1: after an element, 2: done */
    char *buf;       /* element / line buffer */
    size_t len, cap;
    char *lbuf; /* getline buffer */
    size_t lcap;
} Reader;

static void rd_putc(Reader *r, char c) {
    if (r->len + 1 >= r->cap) {
        r->cap = r->cap ? r->cap * 2 : 4096;
        r->buf = xrealloc(r->buf, r->cap);
    }
    r->buf[r->len++] = c;
}

static int rd_getc(Reader *r) {
    int c = getc(r->f);
    if (c == '\n') r->line++;
    return c;
}

static int skip_ws(Reader *r) {
    int c;
    do
        c = rd_getc(r);
    while (c == ' ' || c == '\t' || c == '\n' || c == '\r');
    return c;
}

static int reader_open(Reader *r, const char *path, TunaErr *err) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->line = 1;
    r->f = fopen(path, "rb");
    if (!r->f) return tuna_errf(err, TUNA_EIO, "%s: %s", path, strerror(errno));
    size_t l = strlen(path);
    if (l >= 4 && !strcmp(path + l - 4, ".txt")) {
        r->kind = RD_TEXT;
        return 0;
    }
    if (l >= 6 && !strcmp(path + l - 6, ".jsonl")) {
        r->kind = RD_JSONL;
        return 0;
    }
    if (!(l >= 5 && !strcmp(path + l - 5, ".json"))) {
        fclose(r->f);
        r->f = NULL;
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: unsupported file type (expected .json, .jsonl or "
                         ".txt)",
                         path);
    }
    /* .json: a top-level array, or JSON lines (as Hugging Face's json builder accepts). */
    unsigned char bom[3];
    size_t got = fread(bom, 1, 3, r->f);
    if (!(got == 3 && bom[0] == 0xEF && bom[1] == 0xBB && bom[2] == 0xBF)) rewind(r->f);
    int c = skip_ws(r);
    if (c == '[') {
        r->kind = RD_ARRAY;
        return 0;
    }
    if (c == '{') {
        r->kind = RD_JSONL;
        rewind(r->f);
        r->line = 1;
        return 0;
    }
    fclose(r->f);
    r->f = NULL;
    if (c == EOF) return tuna_errf(err, TUNA_EFORMAT, "%s: empty file", path);
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s:%ld: expected a JSON array '[' or JSON lines, got "
                     "'%c'",
                     path, r->line, c);
}

static void reader_close(Reader *r) {
    if (r->f) fclose(r->f);
    free(r->buf);
    free(r->lbuf);
}

/* Next line of text (RD_TEXT/RD_JSONL) into r->buf, without the line end; skips blank lines.
 * Returns 1 and *line, 0 at EOF. */
static int next_line(Reader *r, long *line) {
    for (;;) {
        ssize_t n = getline(&r->lbuf, &r->lcap, r->f);
        if (n < 0) return 0;
        long ln = r->line++;
        while (n > 0 && (r->lbuf[n - 1] == '\n' || r->lbuf[n - 1] == '\r'))
            n--;
        size_t i = 0;
        if (ln == 1 && n >= 3 && !memcmp(r->lbuf, "\xEF\xBB\xBF", 3)) i = 3;
        size_t k = i;
        while (k < (size_t)n && (r->lbuf[k] == ' ' || r->lbuf[k] == '\t'))
            k++;
        if (k == (size_t)n) continue;
        r->len = 0;
        for (; i < (size_t)n; i++)
            rd_putc(r, r->lbuf[i]);
        rd_putc(r, 0);
        r->len--;
        *line = ln;
        return 1;
    }
}

/* Next top-level array element's bytes into r->buf. Returns 1 and *line (where the element
 * starts), 0 at the closing ']', negative on a framing error (fatal: the file cannot be split). */
static int next_element(Reader *r, long *line, TunaErr *err) {
    if (r->array_state == 2) return 0;
    int c = skip_ws(r);
    if (r->array_state == 1) {
        if (c == ']') goto done;
        if (c != ',') goto bad;
        c = skip_ws(r);
    } else if (c == ']') {
        goto done;
    }
    if (c == EOF) goto eof;
    *line = r->line;
    r->len = 0;
    if (c == '{' || c == '[' || c == '"') {
        int depth = c == '"' ? 0 : 1, in_str = c == '"', esc = 0;
        rd_putc(r, (char)c);
        while (depth > 0 || in_str) {
            c = rd_getc(r);
            if (c == EOF) goto eof;
            rd_putc(r, (char)c);
            if (r->len > MAX_ELEM_BYTES)
                return tuna_errf(err, TUNA_EFORMAT, "%s:%ld: element larger than %zu MiB", r->path,
                                 *line, MAX_ELEM_BYTES >> 20);
            if (in_str) {
                if (esc)
                    esc = 0;
                else if (c == '\\')
                    esc = 1;
                else if (c == '"')
                    in_str = 0;
            } else if (c == '"') {
                in_str = 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                depth--;
            }
        }
    } else { /* a scalar: up to the next separator */
        while (c != EOF && c != ',' && c != ']' && c != ' ' && c != '\t' && c != '\n' &&
               c != '\r') {
            rd_putc(r, (char)c);
            if (r->len > 4096) break;
            c = rd_getc(r);
        }
        if (c == '\n') r->line--;
        if (c != EOF) ungetc(c, r->f);
    }
    rd_putc(r, 0);
    r->len--;
    r->array_state = 1;
    return 1;
done:
    r->array_state = 2;
    return 0;
eof:
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s:%ld: unexpected end of file inside the top-level "
                     "array",
                     r->path, r->line);
bad:
    if (c == EOF) goto eof;
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s:%ld: expected ',' or ']' between array elements, "
                     "got '%c'",
                     r->path, r->line, c);
}

// --- loading context

typedef struct Ctx {
    const DatasetOptions *opt;
    const Tokenizer *tok;
    const Template *tpl;
    Dataset *d;
    Vars vars;
    int add_bos; /* the tokenizer's post-processor adds BOS (pt) */
    int eos;     /* tokenizer EOS for pt, -1 if none */
    /* pt packing buffer */
    int32_t *pend;
    size_t n_pend, cap_pend;
} Ctx;

static void ds_push(Dataset *d, int32_t *ids, int32_t *labels, size_t n) {
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 256;
        d->ex = xrealloc(d->ex, d->cap * sizeof *d->ex);
    }
    d->ex[d->n].ids = ids;
    d->ex[d->n].labels = labels;
    d->ex[d->n].n = (int)n;
    d->ex[d->n].tag = -1;
    d->n++;
    d->n_tokens += n;
    for (size_t i = 0; i < n; i++)
        d->n_train_tokens += labels[i] != TEMPLATE_IGNORE;
}

/* A bad row: fatal with strict (returns TUNA_EFORMAT), else counted and kept for the summary. */
static int bad_row(Ctx *c, TunaErr *err, const char *path, long line, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
static int bad_row(Ctx *c, TunaErr *err, const char *path, long line, const char *fmt, ...) {
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (c->opt->strict) return tuna_errf(err, TUNA_EFORMAT, "%s:%ld: %s", path, line, what);
    c->d->n_skipped++;
    if (c->d->n_msgs < DATASET_MAX_MSGS)
        snprintf(c->d->msgs[c->d->n_msgs++], TUNA_ERR_LEN, "%s:%ld: %s", path, line, what);
    return 0;
}

/* The first {{identifier}} in s, or NULL. */
static const char *first_placeholder(const char *s) {
    for (const char *p = s; (p = strstr(p, "{{")); p += 2) {
        const char *q = p + 2;
        if (!(isalpha((unsigned char)*q) || *q == '_')) continue;
        while (isalnum((unsigned char)*q) || *q == '_')
            q++;
        if (q[0] == '}' && q[1] == '}' && q - p < 64) return p;
    }
    return NULL;
}

static const char *jtype(const cJSON *j) {
    if (!j) return "nothing";
    if (cJSON_IsNull(j)) return "null";
    if (cJSON_IsString(j)) return "string";
    if (cJSON_IsNumber(j)) return "number";
    if (cJSON_IsBool(j)) return "boolean";
    if (cJSON_IsArray(j)) return "array";
    if (cJSON_IsObject(j)) return "object";
    return "invalid";
}

/* A converted row: messages with owned contents (roles are static strings). */
typedef struct Conv {
    ChatMessage *m;
    char **own;
    int n, cap;
} Conv;

static void conv_add(Conv *cv, const char *role, const Vars *v, const char *content) {
    if (cv->n == cv->cap) {
        cv->cap = cv->cap ? cv->cap * 2 : 8;
        cv->m = xrealloc(cv->m, (size_t)cv->cap * sizeof *cv->m);
        cv->own = xrealloc(cv->own, (size_t)cv->cap * sizeof *cv->own);
    }
    cv->own[cv->n] = vars_apply(v, content);
    cv->m[cv->n].role = role;
    cv->m[cv->n].content = cv->own[cv->n];
    cv->n++;
}

static void conv_free(Conv *cv) {
    for (int i = 0; i < cv->n; i++)
        free(cv->own[i]);
    free(cv->own);
    free(cv->m);
    memset(cv, 0, sizeof *cv);
}

/* Optional string column: absent or null -> NULL (ok); other types -> *bad set. */
static const char *opt_str(const cJSON *row, const char *col, const char **bad_type) {
    if (!col) return NULL;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(row, col);
    if (!j || cJSON_IsNull(j)) return NULL;
    if (cJSON_IsString(j)) return j->valuestring;
    *bad_type = jtype(j);
    return NULL;
}

/* LLaMA-Factory AlpacaDatasetConverter. Returns 0 with *why NULL on success; on a bad row sets
 * *why (static or in whybuf). need_response: sft. */
static void convert_alpaca(const DatasetAttr *a, const cJSON *row, const Vars *v, int need_response,
                           Conv *cv, const char **why, char *whybuf, size_t whylen) {
    const char *bt = NULL;
    *why = NULL;
    const char *sys = opt_str(row, a->system, &bt);
    if (bt) {
        snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", a->system, bt);
        *why = whybuf;
        return;
    }
    if (sys && *sys) conv_add(cv, "system", v, sys);
    if (a->history) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(row, a->history);
        if (h && !cJSON_IsNull(h) && !cJSON_IsArray(h)) {
            snprintf(whybuf, whylen, "\"%s\" must be an array of [query, response] pairs, got %s",
                     a->history, jtype(h));
            *why = whybuf;
            return;
        }
        const cJSON *pair;
        int i = 0;
        cJSON_ArrayForEach(pair, h) {
            const cJSON *q = cJSON_GetArrayItem(pair, 0), *r = cJSON_GetArrayItem(pair, 1);
            if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 || !cJSON_IsString(q) ||
                !cJSON_IsString(r)) {
                snprintf(whybuf, whylen, "\"%s\"[%d] must be a [query, response] pair of strings",
                         a->history, i);
                *why = whybuf;
                return;
            }
            conv_add(cv, "user", v, q->valuestring);
            conv_add(cv, "assistant", v, r->valuestring);
            i++;
        }
    }
    const cJSON *pj = a->prompt ? cJSON_GetObjectItemCaseSensitive(row, a->prompt) : NULL;
    if (a->prompt && !cJSON_IsString(pj)) {
        snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", a->prompt, jtype(pj));
        *why = whybuf;
        return;
    }
    const char *query = opt_str(row, a->query, &bt);
    if (bt) {
        snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", a->query, bt);
        *why = whybuf;
        return;
    }
    /* prompt = instruction + "\n" + input, each only when non-empty */
    const char *p = pj ? pj->valuestring : "";
    size_t pl = strlen(p), ql = query ? strlen(query) : 0;
    char *user = xmalloc(pl + ql + 2);
    snprintf(user, pl + ql + 2, "%s%s%s", p, pl && ql ? "\n" : "", ql ? query : "");
    conv_add(cv, "user", v, user);
    free(user);
    if (!need_response) return;
    const cJSON *rj = a->response ? cJSON_GetObjectItemCaseSensitive(row, a->response) : NULL;
    if (!cJSON_IsString(rj)) {
        snprintf(whybuf, whylen, "\"%s\" must be a string, got %s",
                 a->response ? a->response : "response", jtype(rj));
        *why = whybuf;
        return;
    }
    conv_add(cv, "assistant", v, rj->valuestring);
}

static int tag_is(const char *tag, const char *s) {
    return tag && !strcmp(tag, s);
}

/* LLaMA-Factory SharegptDatasetConverter (roles from tags, odd/even alternation). */
static void convert_sharegpt(const DatasetAttr *a, const cJSON *row, const Vars *v,
                             int need_response, Conv *cv, const char **why, char *whybuf,
                             size_t whylen) {
    *why = NULL;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, a->messages);
    if (!cJSON_IsArray(msgs)) {
        snprintf(whybuf, whylen, "\"%s\" must be an array, got %s", a->messages, jtype(msgs));
        *why = whybuf;
        return;
    }
    int n = cJSON_GetArraySize(msgs), start = 0;
    const cJSON *first = cJSON_GetArrayItem(msgs, 0);
    const char *sys = NULL;
    if (a->system_tag && n > 0 && cJSON_IsObject(first) &&
        tag_is(a->system_tag, get_str(first, a->role_tag) ? get_str(first, a->role_tag) : "")) {
        sys = get_str(first, a->content_tag);
        if (!sys) {
            snprintf(whybuf, whylen, "\"%s\"[0].\"%s\" must be a string", a->messages,
                     a->content_tag);
            *why = whybuf;
            return;
        }
        start = 1;
    } else {
        const char *bt = NULL;
        sys = opt_str(row, a->system, &bt);
        if (bt) {
            snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", a->system, bt);
            *why = whybuf;
            return;
        }
    }
    if (sys && *sys) conv_add(cv, "system", v, sys);
    if (a->tools) {
        const cJSON *tj = cJSON_GetObjectItemCaseSensitive(row, a->tools);
        if (cJSON_IsString(tj) && tj->valuestring[0]) {
            conv_add(cv, "tools", v, tj->valuestring);
        } else if (cJSON_IsArray(tj) || cJSON_IsObject(tj)) {
            char *s = cJSON_PrintUnformatted(tj);
            conv_add(cv, "tools", v, s ? s : "");
            cJSON_free(s);
        } else if (tj && !cJSON_IsNull(tj) && !cJSON_IsString(tj)) {
            snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", a->tools, jtype(tj));
            *why = whybuf;
            return;
        }
    }
    if (n - start <= 0) {
        snprintf(whybuf, whylen, "\"%s\" has no messages", a->messages);
        *why = whybuf;
        return;
    }
    for (int i = start; i < n; i++) {
        const cJSON *m = cJSON_GetArrayItem(msgs, i);
        const char *role = cJSON_IsObject(m) ? get_str(m, a->role_tag) : NULL;
        const char *content = cJSON_IsObject(m) ? get_str(m, a->content_tag) : NULL;
        if (!role || !content) {
            snprintf(whybuf, whylen, "\"%s\"[%d] must be an object with string \"%s\" and \"%s\"",
                     a->messages, i, a->role_tag, a->content_tag);
            *why = whybuf;
            return;
        }
        int turn = i - start;
        const char *mapped = NULL;
        if (turn % 2 == 0) {
            if (tag_is(a->user_tag, role))
                mapped = "user";
            else if (tag_is(a->observation_tag, role))
                mapped = "observation";
        } else {
            if (tag_is(a->assistant_tag, role))
                mapped = "assistant";
            else if (tag_is(a->function_tag, role))
                mapped = "function";
        }
        if (!mapped) {
            int even = turn % 2 == 0;
            const char *t1 = even ? a->user_tag : a->assistant_tag;
            const char *t2 = even ? a->observation_tag : a->function_tag;
            snprintf(whybuf, whylen,
                     "\"%s\"[%d]: role \"%s\" where %s%s%s was expected (roles "
                     "must alternate)",
                     a->messages, i, role, t1 ? t1 : "?", t2 ? "|" : "", t2 ? t2 : "");
            *why = whybuf;
            return;
        }
        conv_add(cv, mapped, v, content);
    }
    if (need_response && (n - start) % 2 != 0) {
        snprintf(whybuf, whylen,
                 "\"%s\" has %d messages: it must end with an assistant reply "
                 "(an even count)",
                 a->messages, n - start);
        *why = whybuf;
        return;
    }
}

/* pt: appends text + EOS to the packing buffer (or emits one example when cutoff_len == 0). */
static int pt_add(Ctx *c, const char *text, int apply_vars, TunaErr *err) {
    char *s = apply_vars ? vars_apply(&c->vars, text) : xstrdup(text);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(c->tok, s, strlen(s), 0, &ids, &n, err);
    free(s);
    if (rc) return rc;
    size_t cutoff = c->opt->cutoff_len > 0 ? (size_t)c->opt->cutoff_len : 0;
    if (!cutoff) {
        size_t m = n + (c->add_bos ? 1 : 0) + (c->eos >= 0 ? 1 : 0), k = 0;
        int32_t *e = xmalloc((m ? m : 1) * sizeof *e), *l = xmalloc((m ? m : 1) * sizeof *l);
        if (c->add_bos) e[k++] = tokenizer_bos_id(c->tok);
        memcpy(e + k, ids, n * sizeof *ids);
        k += n;
        if (c->eos >= 0) e[k++] = c->eos;
        memcpy(l, e, m * sizeof *e);
        free(ids);
        if (m > (size_t)INT_MAX) {
            free(e);
            free(l);
            return tuna_errf(err, TUNA_EINVAL, "a text row of %zu tokens is too long", m);
        }
        if (m)
            ds_push(c->d, e, l, m);
        else {
            free(e);
            free(l);
        }
        return 0;
    }
    for (size_t i = 0; i <= n; i++) {
        if (i == n && c->eos < 0) break;
        if (c->n_pend == c->cap_pend) {
            c->cap_pend = c->cap_pend ? c->cap_pend * 2 : 4096;
            c->pend = xrealloc(c->pend, c->cap_pend * sizeof *c->pend);
        }
        c->pend[c->n_pend++] = i < n ? ids[i] : c->eos;
        if (c->n_pend == cutoff) {
            int32_t *e = xmalloc(cutoff * sizeof *e), *l = xmalloc(cutoff * sizeof *l);
            memcpy(e, c->pend, cutoff * sizeof *e);
            /* LLaMA-Factory packs blocks and overwrites their first token with BOS */
            if (c->add_bos) e[0] = tokenizer_bos_id(c->tok);
            memcpy(l, e, cutoff * sizeof *e);
            ds_push(c->d, e, l, cutoff);
            c->n_pend = 0;
        }
    }
    free(ids);
    return 0;
}

static void pt_flush(Ctx *c) {
    if (!c->n_pend) return;
    size_t n = c->n_pend;
    int32_t *e = xmalloc(n * sizeof *e), *l = xmalloc(n * sizeof *l);
    memcpy(e, c->pend, n * sizeof *e);
    if (c->add_bos) e[0] = tokenizer_bos_id(c->tok);
    memcpy(l, e, n * sizeof *e);
    ds_push(c->d, e, l, n);
    c->n_pend = 0;
}

/* The chosen or rejected answer of a ranking row: a string (alpaca) or a message object whose
 * role is an assistant or function tag (sharegpt). NULL and *why when it is neither. */
static const char *pair_answer(const DatasetAttr *a, const cJSON *row, const char *col,
                               char *whybuf, size_t whylen, const char **why) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(row, col);
    if (a->formatting == FMT_ALPACA) {
        if (cJSON_IsString(j)) return j->valuestring;
        snprintf(whybuf, whylen, "\"%s\" must be a string, got %s", col, jtype(j));
    } else {
        const char *role = cJSON_IsObject(j) ? get_str(j, a->role_tag) : NULL;
        const char *content = cJSON_IsObject(j) ? get_str(j, a->content_tag) : NULL;
        if (role && content && (tag_is(a->assistant_tag, role) || tag_is(a->function_tag, role)))
            return content;
        if (role && content)
            snprintf(whybuf, whylen, "\"%s\": role \"%s\" where %s was expected", col, role,
                     a->assistant_tag ? a->assistant_tag : "an assistant tag");
        else
            snprintf(whybuf, whylen, "\"%s\" must be an object with string \"%s\" and \"%s\"", col,
                     a->role_tag, a->content_tag);
    }
    *why = whybuf;
    return NULL;
}

/* Encodes cv (the prompt) + answer as LLaMA-Factory's encode_oneturn: the prompt is every token
 * before the last reply (history included), the answer that reply. *ids owns both. */
static int encode_oneturn(Ctx *c, Conv *cv, const char *role, const char *answer, int32_t **ids,
                          size_t *n, size_t *plen, TunaErr *err) {
    conv_add(cv, role, &c->vars, answer);
    int32_t *labels = NULL;
    int rc = template_encode_train(c->tpl, c->tok, cv->m, cv->n, 0, TEMPLATE_MASK_HISTORY, ids,
                                   &labels, n, err);
    free(cv->own[--cv->n]);
    if (rc) return rc;
    size_t p = 0;
    while (p < *n && labels[p] == TEMPLATE_IGNORE)
        p++;
    free(labels);
    *plen = p;
    return 0;
}

/* A ranking row: the pair (chosen, rejected) sharing the prompt cv, truncated together as
 * LLaMA-Factory's pairwise processor does (infer_seqlen of the prompt and the longer answer),
 * pushed as two consecutive examples. */
static int pair_row(Ctx *c, const DatasetAttr *a, const char *path, long line, const cJSON *row,
                    Conv *cv, TunaErr *err) {
    char whybuf[400];
    const char *why = NULL;
    const char *ch = pair_answer(a, row, a->chosen, whybuf, sizeof whybuf, &why);
    const char *rj = ch ? pair_answer(a, row, a->rejected, whybuf, sizeof whybuf, &why) : NULL;
    if (why) return bad_row(c, err, path, line, "%s", why);
    int32_t *ids[2] = {NULL, NULL};
    size_t n[2], p[2];
    TunaErr e2 = {0};
    int rc = encode_oneturn(c, cv, "assistant", ch, &ids[0], &n[0], &p[0], &e2);
    if (!rc) rc = encode_oneturn(c, cv, "assistant", rj, &ids[1], &n[1], &p[1], &e2);
    if (!rc && (p[0] != p[1] || memcmp(ids[0], ids[1], p[0] * sizeof(int32_t))))
        rc = tuna_errf(&e2, TUNA_EINVAL, "chosen and rejected do not share the prompt's tokens");
    if (rc) {
        free(ids[0]);
        free(ids[1]);
        if (rc == TUNA_EINVAL) return bad_row(c, err, path, line, "%s", e2.msg);
        if (err) *err = e2;
        return rc;
    }
    size_t s = p[0], t[2] = {n[0] - p[0], n[1] - p[1]}, tl = t[0] > t[1] ? t[0] : t[1], snew, tnew;
    if (c->opt->cutoff_len > 0) {
        template_infer_seqlen(s, tl, (size_t)c->opt->cutoff_len, &snew, &tnew);
        if (snew < s || tnew < tl) c->d->n_truncated++;
    } else {
        snew = s, tnew = tl;
    }
    if (t[0] > tnew) t[0] = tnew;
    if (t[1] > tnew) t[1] = tnew;
    if (!t[0] || !t[1] || snew + tnew > (size_t)INT_MAX) {
        c->d->n_dropped++;
        free(ids[0]);
        free(ids[1]);
        return 0;
    }
    for (int k = 0; k < 2; k++) { /* prompt[:snew] + answer[:t] */
        size_t m = snew + t[k];
        int32_t *e = xmalloc(m * sizeof *e), *l = xmalloc(m * sizeof *l);
        memcpy(e, ids[k], snew * sizeof *e);
        memcpy(e + snew, ids[k] + s, t[k] * sizeof *e);
        for (size_t i = 0; i < m; i++)
            l[i] = i < snew ? TEMPLATE_IGNORE : e[i];
        ds_push(c->d, e, l, m);
        free(ids[k]);
    }
    return 0;
}

/* A kto row: cv's last message is the reply (desirable when the kto_tag column is true), every
 * message before it the prompt, masked; truncated as LLaMA-Factory's feedback processor
 * (infer_seqlen of the prompt and the reply), pushed as one Example with its tag. */
static int kto_row(Ctx *c, const DatasetAttr *a, const char *path, long line, const cJSON *row,
                   Conv *cv, TunaErr *err) {
    const cJSON *tj = cJSON_GetObjectItemCaseSensitive(row, a->kto_tag);
    if (!cJSON_IsBool(tj))
        return bad_row(c, err, path, line, "\"%s\" (kto_tag) must be true or false, got %s",
                       a->kto_tag, jtype(tj));
    int tag = cJSON_IsTrue(tj);
    /* take the reply off the conversation: encode_oneturn puts it back as the last turn */
    char *reply = cv->own[--cv->n];
    const char *role = cv->m[cv->n].role;
    int32_t *ids = NULL;
    size_t n = 0, p = 0;
    TunaErr e2 = {0};
    int rc = encode_oneturn(c, cv, role, reply, &ids, &n, &p, &e2);
    free(reply);
    if (rc) {
        free(ids);
        if (rc == TUNA_EINVAL) return bad_row(c, err, path, line, "%s", e2.msg);
        if (err) *err = e2;
        return rc;
    }
    size_t s = p, t = n - p, snew = s, tnew = t;
    if (c->opt->cutoff_len > 0) {
        template_infer_seqlen(s, t, (size_t)c->opt->cutoff_len, &snew, &tnew);
        if (snew < s || tnew < t) c->d->n_truncated++;
    }
    if (!tnew || snew + tnew > (size_t)INT_MAX) {
        c->d->n_dropped++;
        free(ids);
        return 0;
    }
    size_t m = snew + tnew;
    int32_t *e = xmalloc(m * sizeof *e), *l = xmalloc(m * sizeof *l);
    memcpy(e, ids, snew * sizeof *e);
    memcpy(e + snew, ids + s, tnew * sizeof *e);
    for (size_t i = 0; i < m; i++)
        l[i] = i < snew ? TEMPLATE_IGNORE : e[i];
    free(ids);
    ds_push(c->d, e, l, m);
    c->d->ex[c->d->n - 1].tag = tag;
    return 0;
}

/* One JSON row. Returns 0 (also for a skipped bad row) or a fatal error. */
static int process_row(Ctx *c, const DatasetAttr *a, const char *path, long line, const char *text,
                       size_t len, TunaErr *err) {
    cJSON *row = cJSON_ParseWithLength(text, len);
    if (!row) return bad_row(c, err, path, line, "invalid JSON");
    int rc = 0;
    Conv cv = {0};
    if (!cJSON_IsObject(row)) {
        rc = bad_row(c, err, path, line, "a row must be a JSON object, got %s", jtype(row));
        goto out;
    }
    const char *why = NULL;
    char whybuf[400];
    int pt = c->opt->stage_pt, need = !pt && !a->ranking;
    if (a->formatting == FMT_ALPACA)
        convert_alpaca(a, row, &c->vars, need, &cv, &why, whybuf, sizeof whybuf);
    else
        convert_sharegpt(a, row, &c->vars, need, &cv, &why, whybuf, sizeof whybuf);
    if (!why && a->ranking && a->formatting == FMT_SHAREGPT && cv.m[cv.n - 1].role[0] != 'u' &&
        strcmp(cv.m[cv.n - 1].role, "observation")) {
        snprintf(whybuf, sizeof whybuf,
                 "\"%s\" must end with a user message (an odd count): the answers are \"%s\" "
                 "and \"%s\"",
                 a->messages, a->chosen, a->rejected);
        why = whybuf;
    }
    if (why) {
        rc = bad_row(c, err, path, line, "%s", why);
        goto out;
    }
    for (int k = 0; k < cv.n; k++) { /* a {{name}} left after --vars: unfilled or misspelt */
        const char *ph = first_placeholder(cv.m[k].content);
        if (!ph) continue;
        int pl = (int)(strstr(ph, "}}") - ph) + 2;
        if (c->opt->strict) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s:%ld: %.*s is not filled (--vars %.*s=...; a misspelling?)", path,
                           line, pl, ph, pl - 4, ph + 2);
            goto out;
        }
        if (!c->d->n_unfilled++)
            snprintf(c->d->unfilled, TUNA_ERR_LEN, "%s:%ld: %.*s", path, line, pl, ph);
        break;
    }
    if (pt) { /* LLaMA-Factory pt uses the first prompt message's content */
        int k = 0;
        while (k < cv.n && (!strcmp(cv.m[k].role, "system") || !strcmp(cv.m[k].role, "tools")))
            k++;
        rc = k < cv.n ? pt_add(c, cv.m[k].content, 0, err) : 0; /* vars already applied */
        goto out;
    }
    if (a->ranking) {
        rc = pair_row(c, a, path, line, row, &cv, err);
        goto out;
    }
    if (a->kto_tag) {
        rc = kto_row(c, a, path, line, row, &cv, err);
        goto out;
    }
    int32_t *ids = NULL, *labels = NULL;
    size_t n = 0;
    TunaErr e2 = {0};
    rc = template_encode_train(c->tpl, c->tok, cv.m, cv.n, c->opt->cutoff_len,
                               c->opt->template_flags, &ids, &labels, &n, &e2);
    if (rc == TUNA_EINVAL) {
        rc = bad_row(c, err, path, line, "%s", e2.msg);
    } else if (rc) {
        if (err) *err = e2;
    } else if (n == 0) {
        c->d->n_dropped++;
        free(ids);
        free(labels);
    } else if (n > (size_t)INT_MAX) {
        free(ids);
        free(labels);
        rc = tuna_errf(err, TUNA_EINVAL, "%s:%ld: example of %zu tokens is too long", path, line,
                       n);
    } else {
        if (c->opt->cutoff_len > 0 && n >= (size_t)c->opt->cutoff_len) {
            /* cheap check: re-encode without cutoff only when at the limit */
            int32_t *i2 = NULL, *l2 = NULL;
            size_t n2 = 0;
            if (template_encode_train(c->tpl, c->tok, cv.m, cv.n, 0, c->opt->template_flags, &i2,
                                      &l2, &n2, NULL) == 0 &&
                n2 > n)
                c->d->n_truncated++;
            free(i2);
            free(l2);
        }
        ds_push(c->d, ids, labels, n);
    }
out:
    conv_free(&cv);
    cJSON_Delete(row);
    return rc;
}

static int load_one(Ctx *c, const DatasetAttr *a, TunaErr *err) {
    Reader r;
    int rc = reader_open(&r, a->path, err);
    if (rc) return rc;
    if (!c->opt->stage_pt &&
        (r.kind == RD_TEXT || (a->formatting == FMT_ALPACA && !a->response && !a->ranking))) {
        reader_close(&r);
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: dataset \"%s\" is plain text (no response "
                         "column): use it for continued pre-training (stage pt), not sft",
                         a->path, a->name);
    }
    size_t rows = 0, max = c->opt->max_samples > 0 ? (size_t)c->opt->max_samples : (size_t)-1;
    long line = 0;
    while (rows < max) {
        int got;
        if (r.kind == RD_ARRAY) {
            got = next_element(&r, &line, err);
            if (got < 0) {
                rc = got;
                break;
            }
        } else {
            got = next_line(&r, &line);
        }
        if (!got) break;
        rows++;
        c->d->n_rows++;
        if (r.kind == RD_TEXT)
            rc = pt_add(c, r.buf, 1, err);
        else
            rc = process_row(c, a, a->path, line, r.buf, r.len, err);
        if (rc) break;
    }
    if (!rc && ferror(r.f)) rc = tuna_errf(err, TUNA_EIO, "%s: read error", a->path);
    reader_close(&r);
    return rc;
}

/* LLaMA-Factory's interleave mix_strategy, ordered as datasets.interleave_datasets orders a
 * map-style dataset's indices: round-robin (under: min(len) of each in turn; over: max(len) of
 * each in turn, the shorter ones starting over), or each next source drawn with the given
 * probabilities (from tuna's generator, not numpy's: other draws, the same rule), until the
 * first source runs out (under) or every one has run out once (over). ends[i]: the examples
 * after source i; a unit is an example, or a pair (2) for ranking data. */
static int mix_datasets(Dataset *d, const size_t *ends, int nd, const DatasetOptions *opt,
                        TunaErr *err) {
    int per = d->pairs ? 2 : 1, under = opt->mix == DATASET_MIX_UNDER;
    size_t len[64], off[64], cur[64], lo = SIZE_MAX, hi = 0;
    int done[64] = {0};
    for (int i = 0; i < nd; i++) {
        off[i] = (i ? ends[i - 1] : 0) / (size_t)per;
        len[i] = ends[i] / (size_t)per - off[i];
        cur[i] = 0;
        if (!len[i])
            return tuna_errf(err, TUNA_EINVAL,
                             "mix_strategy: dataset %d of %d has no usable example", i + 1, nd);
        lo = len[i] < lo ? len[i] : lo;
        hi = len[i] > hi ? len[i] : hi;
    }
    for (int i = 0; opt->n_probs && !under && i < nd; i++)
        if (!(opt->probs[i] > 0))
            return tuna_errf(err, TUNA_EINVAL,
                             "mix_strategy interleave_over: dataset %d's probability is 0, so it "
                             "never runs out",
                             i + 1);
    size_t n = 0, cap = opt->n_probs ? 2 * hi * (size_t)nd + 16 : (under ? lo : hi) * (size_t)nd;
    size_t *idx = xmalloc(sizeof(size_t) * cap);
    if (!opt->n_probs) {
        for (size_t k = 0; k < (under ? lo : hi); k++)
            for (int i = 0; i < nd; i++)
                idx[n++] = off[i] + k % len[i];
    } else {
        uint64_t s = opt->mix_seed ^ 0x6d6978ull; /* "mix" */
        for (;;) {
            int any = 0, all = 1;
            for (int i = 0; i < nd; i++)
                any |= done[i], all &= done[i];
            if (under ? any : all) break;
            double u = (double)(rng_splitmix64(&s) >> 11) * 0x1.0p-53, c = 0;
            int src = nd - 1;
            for (int i = 0; i < nd; i++)
                if (u < (c += opt->probs[i])) {
                    src = i;
                    break;
                }
            while (opt->probs[src] <= 0) /* past the cumulative sum's rounding */
                src--;
            if (n == cap) idx = xrealloc(idx, sizeof(size_t) * (cap *= 2));
            idx[n++] = off[src] + cur[src];
            if (++cur[src] >= len[src]) {
                done[src] = 1;
                cur[src] = 0;
            }
        }
    }
    Example *ex = xcalloc(n * (size_t)per + 1, sizeof *ex);
    for (size_t j = 0; j < n; j++)
        for (int k = 0; k < per; k++) {
            const Example *e = &d->ex[idx[j] * (size_t)per + (size_t)k];
            Example *o = &ex[j * (size_t)per + (size_t)k];
            *o = *e;
            o->ids = xmalloc(sizeof(int32_t) * (size_t)(e->n ? e->n : 1));
            o->labels = xmalloc(sizeof(int32_t) * (size_t)(e->n ? e->n : 1));
            memcpy(o->ids, e->ids, sizeof(int32_t) * (size_t)e->n);
            memcpy(o->labels, e->labels, sizeof(int32_t) * (size_t)e->n);
        }
    for (size_t i = 0; i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].labels);
    }
    free(d->ex);
    free(idx);
    d->ex = ex;
    d->n = d->cap = n * (size_t)per;
    return 0;
}

int dataset_load(const DatasetOptions *opt, const Tokenizer *tok, const Template *tpl,
                 Dataset **out, TunaErr *err) {
    *out = NULL;
    if (!opt || !opt->names || !*opt->names)
        return tuna_errf(err, TUNA_EINVAL,
                         "no dataset named (expected a comma-separated list of "
                         "dataset_info.json keys)");
    if (!opt->stage_pt && !tpl) return tuna_errf(err, TUNA_EINVAL, "sft needs a template");
    const char *dir = opt->dataset_dir ? opt->dataset_dir : "datasets";
    char info_path[4096];
    snprintf(info_path, sizeof info_path, "%s/dataset_info.json", dir);
    size_t len = 0;
    char *text = xread_file(info_path, &len);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: %s", info_path, strerror(errno));
    Ctx c = {0};
    c.opt = opt;
    c.tok = tok;
    c.tpl = tpl;
    c.eos = tokenizer_eos_id(tok);
    int bos = tokenizer_bos_id(tok);
    if (bos >= 0) {
        int32_t *ids = NULL;
        size_t n = 0;
        c.add_bos = tokenizer_encode(tok, "", 0, 1, &ids, &n, NULL) == 0 && n >= 1 && ids[0] == bos;
        free(ids);
    }
    Dataset *d = xcalloc(1, sizeof *d);
    d->pairs = opt->ranking != 0;
    d->kto = opt->kto != 0;
    c.d = d;
    int rc = 0;
    cJSON *info = NULL;
    char *names = xstrdup(opt->names);
    if (len > MAX_INFO_BYTES) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: %zu bytes is too large for a registry", info_path,
                       len);
        goto fail;
    }
    info = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(info)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: not a JSON object", info_path);
        goto fail;
    }
    if ((rc = vars_parse(opt->vars, &c.vars, err))) goto fail;
    size_t ends[64];
    int nd = 0;
    char *save = NULL;
    for (char *nm = strtok_r(names, ",", &save); nm; nm = strtok_r(NULL, ",", &save)) {
        while (*nm == ' ')
            nm++;
        size_t l = strlen(nm);
        while (l && nm[l - 1] == ' ')
            nm[--l] = 0;
        if (!l) continue;
        const cJSON *entry = cJSON_GetObjectItemCaseSensitive(info, nm);
        if (!entry) {
            char list[300] = "";
            const cJSON *it;
            cJSON_ArrayForEach(it, info) {
                size_t ll = strlen(list);
                if (ll + strlen(it->string) + 8 >= sizeof list) {
                    snprintf(list + ll, sizeof list - ll, ", ...");
                    break;
                }
                snprintf(list + ll, sizeof list - ll, "%s%s", ll ? ", " : "", it->string);
            }
            rc = tuna_errf(err, TUNA_ENOTFOUND, "%s: no dataset \"%s\" (registered: %s)", info_path,
                           nm, list);
            goto fail;
        }
        DatasetAttr a;
        if ((rc = parse_attr(info_path, dir, nm, entry, opt->ranking, opt->kto, &a, err)))
            goto fail;
        rc = load_one(&c, &a, err);
        attr_free(&a);
        if (rc) goto fail;
        if (nd < 64) ends[nd] = d->n;
        nd++;
    }
    pt_flush(&c);
    if (!rc && opt->mix != DATASET_MIX_CONCAT && nd > 1) {
        if (opt->stage_pt || nd > 64 || (opt->n_probs && opt->n_probs != nd))
            rc = tuna_errf(err, TUNA_EINVAL, "mix_strategy interleave: %s",
                           opt->stage_pt ? "not for stage pt (its text is packed as it is read)"
                           : nd > 64     ? "at most 64 datasets"
                                         : "interleave_probs needs one probability a dataset");
        else
            rc = mix_datasets(d, ends, nd, opt, err);
        if (rc) goto fail;
    }
    if (d->n == 0 && !rc) {
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: no usable example (%zu rows, %zu skipped, %zu with "
                       "nothing to train after cutoff)%s%s",
                       opt->names, d->n_rows, d->n_skipped, d->n_dropped,
                       d->n_msgs ? "; first: " : "", d->n_msgs ? d->msgs[0] : "");
        goto fail;
    }
    free(names);
    cJSON_Delete(info);
    free(text);
    vars_free(&c.vars);
    free(c.pend);
    *out = d;
    return 0;
fail:
    free(names);
    cJSON_Delete(info);
    free(text);
    vars_free(&c.vars);
    free(c.pend);
    dataset_free(d);
    return rc;
}

void dataset_free(Dataset *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].labels);
    }
    free(d->ex);
    free(d);
}

// --- split and shuffling (explicit RNG state, STYLE.md rule 14)

/* Fisher-Yates with an unbiased bounded draw. */
static void shuffle(size_t *v, size_t n, uint64_t seed) {
    uint64_t s = seed;
    for (size_t i = n; i > 1; i--) {
        uint64_t bound = (uint64_t)i, lim = UINT64_MAX - UINT64_MAX % bound, x;
        do
            x = rng_splitmix64(&s);
        while (x >= lim);
        size_t j = (size_t)(x % bound);
        size_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

static Dataset *ds_empty_like(const Dataset *src) {
    Dataset *d = xcalloc(1, sizeof *d);
    (void)src;
    return d;
}

int dataset_split(Dataset *all, double val_size, uint64_t seed, Dataset **train, Dataset **val,
                  TunaErr *err) {
    *train = *val = NULL;
    if (!(val_size >= 0))
        return tuna_errf(err, TUNA_EINVAL, "val_size must be >= 0, got %g", val_size);
    size_t k = all->pairs ? 2 : 1, n = all->n / k, /* units: examples or pairs */
            nv = val_size >= 1 ? (size_t)val_size : (size_t)llround(val_size * (double)n);
    if (nv >= n && n > 0)
        return tuna_errf(err, TUNA_EINVAL,
                         "val_size %g takes %zu of %zu examples: nothing left to "
                         "train on",
                         val_size, nv, n);
    size_t *idx = xmalloc((n ? n : 1) * sizeof *idx);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    shuffle(idx, n, seed);
    char *in_val = xcalloc(n ? n : 1, 1);
    for (size_t i = 0; i < nv; i++)
        in_val[idx[i]] = 1;
    free(idx);
    Dataset *tr = ds_empty_like(all), *va = ds_empty_like(all);
    tr->pairs = va->pairs = all->pairs;
    tr->kto = va->kto = all->kto;
    for (size_t i = 0; i < n * k; i++) {
        Example *e = &all->ex[i];
        Dataset *to = in_val[i / k] ? va : tr;
        ds_push(to, e->ids, e->labels, (size_t)e->n);
        to->ex[to->n - 1].tag = e->tag;
    }
    free(in_val);
    free(all->ex);
    all->ex = NULL;
    all->n = all->cap = 0;
    *train = tr;
    *val = va;
    return 0;
}

// --- batcher

static size_t ex_len(const Batcher *b, size_t i) {
    size_t n = (size_t)b->d->ex[i].n;
    return n < (size_t)b->T ? n : (size_t)b->T;
}

/* The batcher's units: examples, or pairs (Dataset.pairs). */
static size_t n_units(const Dataset *d) {
    return d->pairs ? d->n / 2 : d->n;
}

/* A unit's row length: a pair's is its longer answer's. */
static size_t unit_len(const Batcher *b, size_t u) {
    if (!b->d->pairs) return ex_len(b, u);
    size_t c = ex_len(b, 2 * u), r = ex_len(b, 2 * u + 1);
    return c > r ? c : r;
}

/* Mega-batches of the shuffled order, each sorted by length, longest first; equal lengths keep
 * their shuffled order (insertion sort: mega-batches are at most 50 B long). */
static void group_by_length(Batcher *b) {
    size_t n = b->d->n, B = (size_t)b->B, mult = n / (4 * B);
    size_t mega = B * (mult < 1 ? 1 : mult > 50 ? 50 : mult);
    for (size_t s = 0; s < n; s += mega) {
        size_t e = s + mega < n ? s + mega : n;
        for (size_t i = s + 1; i < e; i++) {
            size_t v = b->order[i], lv = ex_len(b, v), j = i;
            while (j > s && ex_len(b, b->order[j - 1]) < lv) {
                b->order[j] = b->order[j - 1];
                j--;
            }
            b->order[j] = v;
        }
    }
}

static void batcher_plan(Batcher *b) {
    size_t n = n_units(b->d);
    for (size_t i = 0; i < n; i++)
        b->order[i] = i;
    uint64_t s = b->seed ^ 0x74756e61ull; /* "tuna" */
    s += (uint64_t)b->epoch * TUNA_SPLITMIX64_GAMMA;
    if (!(b->pack & BATCH_NO_SHUFFLE)) shuffle(b->order, n, rng_splitmix64(&s));
    if (b->pack & BATCH_GROUP_BY_LENGTH) group_by_length(b);
    b->n_rows = 0;
    b->row_start[0] = 0;
    if (!(b->pack & (BATCH_PACK | BATCH_PACK_NEAT))) {
        for (size_t i = 0; i < n; i++)
            b->row_start[++b->n_rows] = i + 1;
        return;
    }
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = ex_len(b, b->order[i]);
        if (used > 0 && used + l > (size_t)b->T) {
            b->row_start[++b->n_rows] = i;
            used = 0;
        }
        used += l;
    }
    if (n) b->row_start[++b->n_rows] = n;
}

int batcher_init(Batcher *b, const Dataset *d, int B, int T, int flags, uint64_t seed,
                 TunaErr *err) {
    memset(b, 0, sizeof *b);
    if (!d || n_units(d) == 0) return tuna_errf(err, TUNA_EINVAL, "batcher: the dataset is empty");
    if ((d->pairs || d->kto) && (flags & (BATCH_PACK | BATCH_PACK_NEAT | BATCH_GROUP_BY_LENGTH)))
        return tuna_errf(err, TUNA_EUNSUP,
                         "batcher: pairs (a preference dataset) and kto examples are neither "
                         "packed nor grouped by length");
    if (B <= 0 || T < 2)
        return tuna_errf(err, TUNA_EINVAL, "batcher: need B >= 1 and T >= 2, got B=%d T=%d", B, T);
    b->d = d;
    b->B = B;
    b->T = T;
    if (flags & ~(BATCH_PACK | BATCH_PACK_NEAT | BATCH_GROUP_BY_LENGTH | BATCH_NO_SHUFFLE |
                  BATCH_DROP_LAST))
        return tuna_errf(err, TUNA_EINVAL, "batcher: unknown flags %#x", (unsigned)flags);
    b->pack = flags & BATCH_PACK_NEAT ? flags | BATCH_PACK : flags;
    b->seed = seed;
    size_t rows = (size_t)B * (d->pairs || d->kto ? 2 : 1);
    b->order = xmalloc(n_units(d) * sizeof *b->order);
    b->row_start = xmalloc((n_units(d) + 1) * sizeof *b->row_start);
    b->ids = xmalloc(rows * (size_t)T * sizeof *b->ids);
    b->targets = xmalloc(rows * (size_t)T * sizeof *b->targets);
    if (b->pack & BATCH_PACK_NEAT) b->seg_start = xmalloc((size_t)B * (size_t)T * sizeof(int32_t));
    if (d->kto) b->tags = xmalloc((size_t)B * sizeof(int32_t));
    batcher_plan(b);
    return 0;
}

size_t batcher_batches_per_epoch(const Batcher *b) {
    if (b->pack & BATCH_DROP_LAST) return b->n_rows / (size_t)b->B;
    return (b->n_rows + (size_t)b->B - 1) / (size_t)b->B;
}

int batcher_seek(Batcher *b, int epoch, size_t cursor, TunaErr *err) {
    if (epoch < 0) return tuna_errf(err, TUNA_EINVAL, "batcher: epoch %d < 0", epoch);
    b->epoch = epoch;
    batcher_plan(b);
    if (cursor > batcher_batches_per_epoch(b))
        return tuna_errf(err, TUNA_EINVAL, "batcher: cursor %zu past the %zu batches of epoch %d",
                         cursor, batcher_batches_per_epoch(b), epoch);
    b->cursor = cursor;
    return 0;
}

int batcher_set_rank(Batcher *b, int rank, int world, TunaErr *err) {
    if ((b->d->pairs || b->d->kto) && world != 1)
        return tuna_errf(err, TUNA_EUNSUP, "rank shares of a batch of pairs are not supported");
    if (world < 1 || rank < 0 || rank >= world || b->B % world)
        return tuna_errf(err, TUNA_EINVAL,
                         "rank %d of %d processes: the batch of %d rows must split evenly", rank,
                         world, b->B);
    b->rank = rank;
    b->world = world;
    return 0;
}

/* batcher_next's batch of pairs: pair r's chosen in row r, its rejected in row B + r. */
static int pairs_next(Batcher *b, Batch *out, size_t T, int wrapped) {
    size_t B = (size_t)b->B, BT = 2 * B * T;
    for (size_t i = 0; i < BT; i++) {
        b->ids[i] = b->pad_id;
        b->targets[i] = TEMPLATE_IGNORE;
    }
    int n_targets = 0, n_tokens = 0;
    for (size_t r = 0; r < B; r++) {
        size_t row = b->cursor * B + r;
        if (row >= b->n_rows) break;
        for (size_t k = 0; k < 2; k++) {
            size_t ex = 2 * b->order[b->row_start[row]] + k, m = ex_len(b, ex);
            const Example *e = &b->d->ex[ex];
            int32_t *ids = b->ids + (k * B + r) * T, *tg = b->targets + (k * B + r) * T;
            memcpy(ids, e->ids, m * sizeof *ids);
            for (size_t t = 0; t + 1 < m; t++) {
                tg[t] = e->labels[t + 1];
                n_targets += tg[t] != TEMPLATE_IGNORE;
            }
            n_tokens += (int)m;
        }
    }
    b->cursor++;
    out->B = (int)(2 * B);
    out->T = (int)T;
    out->ids = b->ids;
    out->targets = b->targets;
    out->seg_start = NULL;
    out->n_targets = out->n_targets_global = n_targets;
    out->n_tokens = out->n_tokens_global = n_tokens;
    return wrapped;
}

/* The first trained position of e (its prompt's length). */
static size_t ex_prompt(const Example *e) {
    size_t p = 0;
    while (p < (size_t)e->n && e->labels[p] == TEMPLATE_IGNORE)
        p++;
    return p;
}

/* batcher_next's batch of kto examples: example r in row r, its KL sequence in row B + r (row
 * r's prompt, then the completion of the previous example, cycling over the batch's examples),
 * every row truncated to the Batcher's T; the row length counts both halves. */
static int kto_next(Batcher *b, Batch *out, int wrapped) {
    size_t B = (size_t)b->B, nr = 0, *ex = xmalloc(B * sizeof *ex);
    for (size_t r = 0; r < B; r++) {
        size_t row = b->cursor * B + r;
        if (row >= b->n_rows) break;
        ex[nr++] = b->order[b->row_start[row]];
    }
    size_t Tmax = (size_t)b->T, T = Tmax, longest = 1;
    for (size_t r = 0; r < nr; r++) {
        const Example *e = &b->d->ex[ex[r]], *o = &b->d->ex[ex[(r + nr - 1) % nr]];
        size_t l1 = (size_t)e->n, l2 = ex_prompt(e) + (size_t)o->n - ex_prompt(o);
        longest = l1 > longest ? l1 : longest;
        longest = l2 > longest ? l2 : longest;
    }
    if (b->pad_multiple > 0) {
        size_t mult = (size_t)b->pad_multiple;
        longest = (longest + mult - 1) / mult * mult;
        if (longest < T) T = longest;
    }
    for (size_t i = 0; i < 2 * B * T; i++) {
        b->ids[i] = b->pad_id;
        b->targets[i] = TEMPLATE_IGNORE;
    }
    int n_targets = 0, n_tokens = 0;
    for (size_t r = 0; r < B; r++)
        b->tags[r] = r < nr ? b->d->ex[ex[r]].tag : -1;
    for (size_t r = 0; r < nr; r++) {
        const Example *e = &b->d->ex[ex[r]], *o = &b->d->ex[ex[(r + nr - 1) % nr]];
        size_t pe = ex_prompt(e), po = ex_prompt(o);
        for (size_t k = 0; k < 2; k++) {
            int32_t *ids = b->ids + (k * B + r) * T, *tg = b->targets + (k * B + r) * T;
            /* the row's tokens and labels: e whole (k 0), or e's prompt + o's completion */
            size_t m = k ? pe + (size_t)o->n - po : (size_t)e->n;
            if (m > T) m = T;
            for (size_t t = 0; t < m; t++)
                ids[t] = !k || t < pe ? e->ids[t] : o->ids[po + t - pe];
            for (size_t t = 0; t + 1 < m; t++) {
                size_t u = t + 1;
                tg[t] = !k ? e->labels[u] : u < pe ? TEMPLATE_IGNORE : o->labels[po + u - pe];
                n_targets += !k && tg[t] != TEMPLATE_IGNORE;
            }
            n_tokens += k ? 0 : (int)m;
        }
    }
    free(ex);
    b->cursor++;
    out->B = (int)(2 * B);
    out->T = (int)T;
    out->ids = b->ids;
    out->targets = b->targets;
    out->seg_start = NULL;
    out->tags = b->tags;
    out->n_targets = out->n_targets_global = n_targets;
    out->n_tokens = out->n_tokens_global = n_tokens;
    return wrapped;
}

int batcher_next(Batcher *b, Batch *out) {
    int wrapped = 0;
    if (b->cursor >= batcher_batches_per_epoch(b)) {
        b->epoch++;
        batcher_plan(b);
        b->cursor = 0;
        wrapped = 1;
    }
    /* the row length: T, or (pad_multiple > 0) this batch's longest row rounded up, capped */
    size_t T = (size_t)b->T;
    if (b->pad_multiple > 0) {
        size_t longest = 1, mult = (size_t)b->pad_multiple;
        for (size_t r = 0; r < (size_t)b->B; r++) {
            size_t row = b->cursor * (size_t)b->B + r, len = 0;
            if (row >= b->n_rows) break;
            for (size_t k = b->row_start[row]; k < b->row_start[row + 1]; k++)
                len += unit_len(b, b->order[k]);
            longest = len > longest ? len : longest;
        }
        longest = (longest + mult - 1) / mult * mult;
        if (longest < T) T = longest;
    }
    out->tags = NULL;
    if (b->d->kto) return kto_next(b, out, wrapped);
    if (b->d->pairs) return pairs_next(b, out, T, wrapped);
    size_t BT = (size_t)b->B * T;
    for (size_t i = 0; i < BT; i++) {
        b->ids[i] = b->pad_id;
        b->targets[i] = TEMPLATE_IGNORE;
        if (b->seg_start) b->seg_start[i] = 0; /* rows past the data: one span */
    }
    int n_targets = 0, n_tokens = 0, share_targets = 0, share_tokens = 0;
    size_t share = b->world > 1 ? (size_t)(b->B / b->world) : (size_t)b->B;
    size_t r0 = b->world > 1 ? (size_t)b->rank * share : 0; /* this rank's rows r0.. */
    for (size_t r = 0; r < (size_t)b->B; r++) {
        size_t row = b->cursor * (size_t)b->B + r;
        if (row >= b->n_rows) break;
        int32_t *ids = b->ids + r * T, *tg = b->targets + r * T;
        int32_t *seg = b->seg_start ? b->seg_start + r * T : NULL;
        size_t off = 0;
        for (size_t k = b->row_start[row]; k < b->row_start[row + 1]; k++) {
            const Example *e = &b->d->ex[b->order[k]];
            size_t m = ex_len(b, b->order[k]);
            if (off + m > T) m = T - off;
            memcpy(ids + off, e->ids, m * sizeof *ids);
            for (size_t t = 0; t + 1 < m; t++)
                tg[off + t] = e->labels[t + 1];
            for (size_t t = 0; seg && t < m; t++)
                seg[off + t] = (int32_t)off;
            off += m;
        }
        for (size_t t = off; seg && t < T; t++) /* the pads: a span of their own */
            seg[t] = (int32_t)off;
        int row_targets = 0;
        for (size_t t = 0; t < T; t++)
            row_targets += tg[t] != TEMPLATE_IGNORE;
        n_tokens += (int)off;
        n_targets += row_targets;
        if (r >= r0 && r < r0 + share) {
            share_tokens += (int)off;
            share_targets += row_targets;
        }
    }
    b->cursor++;
    out->T = (int)T;
    out->ids = b->ids;
    out->targets = b->targets;
    out->n_targets_global = n_targets;
    out->n_tokens_global = n_tokens;
    out->seg_start = b->seg_start;
    /* this rank's rows of the global batch (filled whole above: every rank sees the same row
     * length and global counts); all of it without a share */
    out->B = (int)share;
    out->ids += r0 * T;
    out->targets += r0 * T;
    if (out->seg_start) out->seg_start += r0 * T;
    out->n_targets = share_targets;
    out->n_tokens = share_tokens;
    return wrapped;
}

void batcher_free(Batcher *b) {
    if (!b) return;
    free(b->order);
    free(b->row_start);
    free(b->ids);
    free(b->targets);
    free(b->seg_start);
    free(b->tags);
    memset(b, 0, sizeof *b);
}
