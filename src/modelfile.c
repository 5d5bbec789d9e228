/* modelfile.c: an Ollama Modelfile whose TEMPLATE renders as tuna's chat template (modelfile.h).
 * The Go template is built from the template's formats rendered with sentinels in place of the
 * message text (CONTENT), the system text (SYSTEM) and the BOS token (BOS), so that every format
 * is the same text template_render_text writes. Literal text goes into the template as it is
 * when Go and the Modelfile parser read it back unchanged, else as a quoted Go string action. */
#include "modelfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "xalloc.h"

#define CONTENT "\x01"
#define SYSTEM  "\x03"
#define BOS     "\x02"

typedef struct Buf {
    char *s;
    size_t n, cap;
    int last_action; /* the last thing written was a {{ }} action */
    int brk;         /* a layout line break is wanted before the next action */
} Buf;

static void buf_addn(Buf *b, const char *s, size_t k) {
    if (b->n + k + 1 > b->cap) {
        b->cap = (b->n + k + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, k);
    b->n += k;
    b->s[b->n] = 0;
}

static void buf_add(Buf *b, const char *s) {
    buf_addn(b, s, strlen(s));
}

/* {{ body }}. A layout break is a newline between two actions, trimmed by "{{-", so it never
 * trims the template's own text. */
static void action(Buf *b, const char *body) {
    buf_add(b, b->brk && b->last_action ? "\n{{- " : "{{ ");
    buf_add(b, body);
    buf_add(b, " }}");
    b->last_action = 1;
    b->brk = 0;
}

static int plain_byte(unsigned char c) {
    return c >= 0x20 && c != 0x7f && c != '"';
}

/* Literal text: as it is, or {{ "quoted" }} when it holds "{{", a quote (the Modelfile's """
 * delimiter) or a control character other than newline and tab (the Modelfile parser drops
 * those). */
static void text(Buf *b, const char *s, size_t n) {
    if (!n) return;
    int plain = 1;
    for (size_t i = 0; i < n && plain; i++) {
        unsigned char c = (unsigned char)s[i];
        plain = plain_byte(c) || c == '\n' || c == '\t';
        if (c == '{' && i + 1 < n && s[i + 1] == '{') plain = 0;
    }
    if (plain) {
        buf_addn(b, s, n);
        b->last_action = 0;
        return;
    }
    Buf q = {0};
    buf_add(&q, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '"' || c == '\\')
            snprintf(e, sizeof e, "\\%c", c);
        else if (c == '\n')
            snprintf(e, sizeof e, "\\n");
        else if (c == '\t')
            snprintf(e, sizeof e, "\\t");
        else if (c < 0x20 || c == 0x7f)
            snprintf(e, sizeof e, "\\x%02x", c);
        else
            snprintf(e, sizeof e, "%c", c);
        buf_add(&q, e);
    }
    buf_add(&q, "\"");
    action(b, q.s);
    free(q.s);
}

/* One rendered format: CONTENT becomes {{ .Content }}, SYSTEM {{ $.System }}, BOS the BOS text
 * (left out when strip_bos and it starts the piece). */
static void piece(Buf *b, const char *p, const char *bos, int strip_bos) {
    Buf lit = {0};
    buf_add(&lit, "");
    for (size_t i = 0; p[i]; i++) {
        char c = p[i];
        if (c == CONTENT[0] || c == SYSTEM[0]) {
            text(b, lit.s, lit.n);
            lit.n = 0;
            action(b, c == CONTENT[0] ? ".Content" : "$.System");
        } else if (c == BOS[0]) {
            if (!(strip_bos && i == 0)) buf_add(&lit, bos);
        } else {
            buf_addn(&lit, &c, 1);
        }
    }
    text(b, lit.s, lit.n);
    free(lit.s);
}

static char *fmt_text(const Template *t, int fmt, const char *content, const char *eos) {
    char *s = template_format_text(t, fmt, content, BOS, eos);
    return s ? s : xstrdup("");
}

/* A user or tool turn: the first one carries the merged system text (merge_system_into_user)
 * and may start the conversation (then its leading BOS is llama.cpp's); later ones follow the
 * separator. */
static int needs_first(const Template *t, int prefix_empty, const char *eos) {
    char *sep = fmt_text(t, TEMPLATE_FMT_SEPARATOR, "", eos);
    char *u = fmt_text(t, TEMPLATE_FMT_USER, CONTENT, eos);
    char *o = fmt_text(t, TEMPLATE_FMT_OBSERVATION, CONTENT, eos);
    int r = template_merges_system(t) || sep[0] ||
            (prefix_empty && (u[0] == BOS[0] || o[0] == BOS[0]));
    free(sep);
    free(u);
    free(o);
    return r;
}

static void turn(Buf *b, const Template *t, int fmt, int prefix_empty, const char *bos,
                 const char *eos) {
    char *plain = fmt_text(t, fmt, CONTENT, eos);
    if (!needs_first(t, prefix_empty, eos)) { /* every turn is the same */
        piece(b, plain, bos, 0);
        free(plain);
        return;
    }
    char *sep = fmt_text(t, TEMPLATE_FMT_SEPARATOR, "", eos);
    action(b, "if $first");
    if (template_merges_system(t)) {
        char *ms = fmt_text(t, TEMPLATE_FMT_SYSTEM_MERGED, SYSTEM, eos);
        size_t k = strlen(ms);
        ms = xrealloc(ms, k + 2);
        memcpy(ms + k, CONTENT, 2);
        char *merged = fmt_text(t, fmt, ms, eos);
        action(b, "if $.System");
        piece(b, merged, bos, prefix_empty);
        action(b, "else");
        piece(b, plain, bos, prefix_empty);
        action(b, "end");
        free(merged);
        free(ms);
    } else if (prefix_empty && plain[0] == BOS[0]) {
        action(b, "if $.System");
        piece(b, plain, bos, 0);
        action(b, "else");
        piece(b, plain, bos, 1);
        action(b, "end");
    } else {
        piece(b, plain, bos, 0);
    }
    action(b, "else");
    piece(b, sep, bos, 0);
    piece(b, plain, bos, 0);
    action(b, "end");
    action(b, "$first = false");
    free(sep);
    free(plain);
}

static char *go_template(const Template *t, const char *bos, const char *eos) {
    Buf b = {0};
    buf_add(&b, "");
    char *prefix = fmt_text(t, TEMPLATE_FMT_PREFIX, "", eos);
    int prefix_empty = !prefix[0];
    piece(&b, prefix, bos, 1);
    free(prefix);
    if (!template_merges_system(t)) {
        char *sys = fmt_text(t, TEMPLATE_FMT_SYSTEM, SYSTEM, eos);
        action(&b, "if .System");
        piece(&b, sys, bos, prefix_empty);
        action(&b, "end");
        free(sys);
    }
    b.brk = 1;
    if (needs_first(t, prefix_empty, eos)) {
        action(&b, "$first := true");
        b.brk = 1;
    }
    action(&b, "range .Messages");
    b.brk = 1;
    action(&b, "if eq .Role \"user\"");
    turn(&b, t, TEMPLATE_FMT_USER, prefix_empty, bos, eos);
    b.brk = 1;
    action(&b, "else if eq .Role \"assistant\"");
    char *a = fmt_text(t, TEMPLATE_FMT_ASSISTANT, CONTENT, eos);
    piece(&b, a, bos, 0);
    free(a);
    b.brk = 1;
    action(&b, "else if eq .Role \"tool\"");
    turn(&b, t, TEMPLATE_FMT_OBSERVATION, prefix_empty, bos, eos);
    b.brk = 1;
    action(&b, "end");
    b.brk = 1;
    action(&b, "end");
    return b.s;
}

/* A Modelfile value: "..." or """...""" as Ollama's parser reads them back (it keeps newlines
 * and tabs in quotes, drops other control characters, and ends a """ value at the first """
 * followed by a space or newline). triple: 0 "...", 1 """...""", 2 bare when it can be (paths). */
static int value(Buf *b, const char *what, const char *v, int triple, TunaErr *err) {
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\n' && *p != '\t') || *p == 0x7f)
            return tuna_errf(err, TUNA_EINVAL,
                             "%s holds control character 0x%02x, which a Modelfile cannot carry",
                             what, *p);
    int bare = triple == 2 && v[0] && !strpbrk(v, " \t\n\"#");
    if (triple == 2) triple = 0;
    if (!triple && (strchr(v, '"') || strchr(v, '\n'))) triple = 1;
    if (triple && strstr(v, "\"\"\""))
        return tuna_errf(err, TUNA_EINVAL, "%s holds \"\"\", which a Modelfile cannot carry", what);
    if (bare) {
        buf_add(b, v);
        buf_add(b, "\n");
        return 0;
    }
    buf_add(b, triple ? "\"\"\"" : "\"");
    buf_add(b, v);
    buf_add(b, triple ? "\"\"\"\n" : "\"\n");
    return 0;
}

int modelfile_render(const Template *t, const char *from, const char *adapter, const char *bos,
                     const char *eos, char **out, TunaErr *err) {
    *out = NULL;
    Buf b = {0};
    buf_add(&b, "# Ollama Modelfile written by tuna (chat template \"");
    buf_add(&b, template_name(t));
    buf_add(&b, "\"). Use: ollama create NAME -f Modelfile\n");
    int rc = 0;
    buf_add(&b, "FROM ");
    rc = value(&b, "the FROM path", from, 2, err);
    if (!rc && adapter) {
        buf_add(&b, "ADAPTER ");
        rc = value(&b, "the ADAPTER path", adapter, 2, err);
    }
    if (!rc) {
        char *go = go_template(t, bos, eos);
        buf_add(&b, "TEMPLATE ");
        rc = value(&b, "the template", go, 1, err);
        free(go);
    }
    const char *sys = template_default_system(t);
    if (!rc && sys[0]) {
        buf_add(&b, "SYSTEM ");
        rc = value(&b, "the default system prompt", sys, 1, err);
    }
    const char *const *stops = NULL;
    int ns = template_stop_words(t, &stops);
    for (int i = 0; i < ns && !rc; i++) {
        char what[96];
        snprintf(what, sizeof what, "stop word %d", i + 1);
        buf_add(&b, "PARAMETER stop ");
        rc = value(&b, what, stops[i], 0, err);
    }
    if (rc) {
        free(b.s);
        return rc;
    }
    *out = b.s;
    return 0;
}

/* BOS and EOS text from the GGUF's tokenizer ("" when absent). */
static int gguf_bos_eos(const char *path, char *bos, char *eos, size_t cap, TunaErr *err) {
    bos[0] = eos[0] = 0;
    Gguf *g = NULL;
    int rc = gguf_open(path, &g, err);
    if (rc) return rc;
    const GgufArr *toks = NULL;
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &toks, NULL) == 1 &&
        toks->elem_type == GGUF_STRING) {
        const char *keys[2] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
        char *dst[2] = {bos, eos};
        for (int i = 0; i < 2; i++) {
            int64_t id;
            if (gguf_get_int(g, keys[i], &id, NULL) == 1 && id >= 0 && (uint64_t)id < toks->n)
                snprintf(dst[i], cap, "%.*s", (int)toks->strs[id].len, toks->strs[id].s);
        }
    }
    gguf_free(g);
    return 0;
}

/* p as written in a Modelfile at dir: "./NAME" when it lies in dir. */
static void rel_to(const char *dir, const char *p, char *out, size_t cap) {
    const char *slash = strrchr(p, '/');
    size_t dl = strlen(dir), pl = slash ? (size_t)(slash - p) : 0;
    if (!slash && !strcmp(dir, "."))
        snprintf(out, cap, "./%s", p);
    else if (slash && pl == dl && !strncmp(p, dir, dl))
        snprintf(out, cap, "./%s", slash + 1);
    else
        snprintf(out, cap, "%s", p);
}

int modelfile_write(const char *path, const Template *t, const char *from_gguf,
                    const char *adapter_gguf, TunaErr *err) {
    char bos[256], eos[256];
    int rc = gguf_bos_eos(from_gguf, bos, eos, sizeof bos, err);
    if (rc) return rc;
    char dir[4096], from[4200], adapter[4200];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    rel_to(dir, from_gguf, from, sizeof from);
    if (adapter_gguf) rel_to(dir, adapter_gguf, adapter, sizeof adapter);
    char *text = NULL;
    rc = modelfile_render(t, from, adapter_gguf ? adapter : NULL, bos, eos, &text, err);
    if (rc) return rc;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
        free(text);
        return rc;
    }
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fflush(f) != 0;
    bad |= fsync(fileno(f)) != 0;
    int e = errno;
    bad |= fclose(f) != 0;
    free(text);
    if (bad) {
        unlink(tmp);
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(e ? e : EIO));
    }
    if (rename(tmp, path)) {
        e = errno;
        unlink(tmp);
        return tuna_errf(err, TUNA_EIO, "%s: cannot rename into place: %s", path, strerror(e));
    }
    return 0;
}
