/* tokenizer_gguf.c: the tokenizer described by a GGUF file's tokenizer.ggml.* metadata.
 *
 * DESIGN. A GGUF carries no tokenizer.json, only the vocabulary, merges, scores, token types and
 * special ids under llama.cpp's keys. This file writes the tokenizer.json document the model's
 * own tokenizer would have (as transformers' GGUF converter and llama.cpp's vocab loader read the
 * same keys) and hands it to tokenizer_from_json, so the one BPE engine in tokenizer.c runs it:
 *   - "gpt2" (byte-level BPE): tokens not spelled in the byte alphabet are respelled byte by
 *     byte; the pre-tokenizer comes from tokenizer.ggml.pre: default/gpt2 = GPT-2's regex,
 *     llama-bpe/llama3 = the Llama 3 split (with ignore_merges, as llama.cpp and Llama 3's
 *     tokenizer.json do), qwen2 = Qwen2's split, smollm = digits one by one, then GPT-2's regex
 *     (SmolLM's tokenizer.json; llama.cpp's "smollm"). Any other name is refused.
 *   - "llama" (SentencePiece BPE): byte fallback (<0xNN>), unknown pieces fused; spaces become
 *     U+2581 and one is prepended when tokenizer.ggml.add_space_prefix (default true), as the
 *     legacy Llama tokenizer.json and llama.cpp do; merges from the file, or derived from the
 *     scores as transformers' generate_merges does (pairs of vocabulary pieces that join into a
 *     piece, best score first, then the longer left and right piece, then vocabulary order).
 * token_type 3 (control) makes a special added token, 4 (user-defined) a plain added token,
 * both matched on the raw text. bos/eos/unk/pad tokens are special as well. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "gguf.h"
#include "gguf_model.h"
#include "tokenizer.h"
#include "xalloc.h"

#define GT_MAX_TOKENS (1 << 24)

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static const char META[] = "\xE2\x96\x81"; /* U+2581 */

static const char LLAMA3_RE[] =
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_RE[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// --- small helpers

static uint32_t gt_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

/* token string -> last index holding it (as a Python dict built in order) */
typedef struct {
    int32_t *slot; /* index + 1, 0 = empty */
    size_t mask;
    const GgufStr *tok;
} TokMap;

static void tokmap_init(TokMap *m, const GgufStr *tok, size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    m->slot = xcalloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    m->tok = tok;
    for (size_t i = 0; i < n; i++) {
        size_t j = gt_hash(tok[i].s, tok[i].len) & m->mask;
        while (m->slot[j]) {
            const GgufStr *o = &tok[m->slot[j] - 1];
            if (o->len == tok[i].len && (!o->len || !memcmp(o->s, tok[i].s, o->len))) break;
            j = (j + 1) & m->mask;
        }
        m->slot[j] = (int32_t)i + 1;
    }
}

static int32_t tokmap_get(const TokMap *m, const char *s, size_t n) {
    size_t j = gt_hash(s, n) & m->mask;
    while (m->slot[j]) {
        const GgufStr *o = &m->tok[m->slot[j] - 1];
        if (o->len == n && (!n || !memcmp(o->s, s, n))) return m->slot[j] - 1;
        j = (j + 1) & m->mask;
    }
    return -1;
}

/* GPT-2's byte -> code point table (the byte alphabet). */
static void byte_alphabet(uint32_t b2c[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2c[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

/* Decodes one UTF-8 sequence at s[i] (valid sequences only); returns its length, 0 if invalid. */
static size_t utf8_next(const unsigned char *s, size_t i, size_t len, uint32_t *cp) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || i + n > len) return 0;
    uint32_t v = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k < n; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    *cp = v;
    return n;
}

/* 1 when every character of s is one of the byte alphabet's */
static int in_alphabet(const GgufStr *s, const uint8_t *is_byte_cp) {
    const unsigned char *p = (const unsigned char *)s->s;
    for (size_t i = 0; i < s->len;) {
        uint32_t cp;
        size_t n = utf8_next(p, i, s->len, &cp);
        if (!n || cp >= 324 || !is_byte_cp[cp]) return 0;
        i += n;
    }
    return 1;
}

static char *str_dup_n(const char *s, size_t n) {
    char *r = xmalloc(n + 1);
    if (n) memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

// --- merges derived from SentencePiece scores (transformers' generate_merges)

typedef struct {
    int32_t l, r; /* token indices */
    double score;
    uint32_t lcp, rcp; /* lengths in code points */
    size_t seq;
} DMerge;

static int cmp_local(const void *x, const void *y) {
    const DMerge *a = x, *b = y;
    if (a->l != b->l) return a->l < b->l ? -1 : 1;
    return (a->r > b->r) - (a->r < b->r);
}

static int cmp_global(const void *x, const void *y) {
    const DMerge *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->lcp != b->lcp) return a->lcp > b->lcp ? -1 : 1;
    if (a->rcp != b->rcp) return a->rcp > b->rcp ? -1 : 1;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

static uint32_t cp_count(const char *s, size_t n) {
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static void derive_merges(const GgufStr *tok, size_t n, const GgufArr *scores, const TokMap *map,
                          cJSON *out) {
    DMerge *m = NULL;
    size_t nm = 0, cap = 0;
    for (size_t i = 0; i < n; i++) {
        if (tokmap_get(map, tok[i].s, tok[i].len) != (int32_t)i) {
            /* a duplicate: the dict keeps the first position with the last score; visit the
             * token once, at its first occurrence */
            int first = 1;
            for (size_t k = 0; k < i && first; k++)
                first = !(tok[k].len == tok[i].len &&
                          (!tok[i].len || !memcmp(tok[k].s, tok[i].s, tok[i].len)));
            if (!first) continue;
        }
        int32_t last = tokmap_get(map, tok[i].s, tok[i].len);
        double score = gguf_arr_float(scores, (uint64_t)last);
        size_t start = nm;
        const char *s = tok[i].s;
        for (size_t p = 1; p < tok[i].len; p++) {
            if (((unsigned char)s[p] & 0xC0) == 0x80) continue; /* code point boundaries only */
            int32_t l = tokmap_get(map, s, p), r = tokmap_get(map, s + p, tok[i].len - p);
            if (l < 0 || r < 0) continue;
            if (nm == cap) {
                cap = cap ? cap * 2 : 1024;
                m = xrealloc(m, cap * sizeof *m);
            }
            m[nm++] = (DMerge){l, r, score, cp_count(s, p), cp_count(s + p, tok[i].len - p), 0};
        }
        if (nm > start) qsort(m + start, nm - start, sizeof *m, cmp_local);
    }
    for (size_t k = 0; k < nm; k++)
        m[k].seq = k;
    if (nm) qsort(m, nm, sizeof *m, cmp_global);
    for (size_t k = 0; k < nm; k++) {
        cJSON *pair = cJSON_CreateArray();
        char *a = str_dup_n(tok[m[k].l].s, tok[m[k].l].len);
        char *b = str_dup_n(tok[m[k].r].s, tok[m[k].r].len);
        cJSON_AddItemToArray(pair, cJSON_CreateString(a));
        cJSON_AddItemToArray(pair, cJSON_CreateString(b));
        cJSON_AddItemToArray(out, pair);
        free(a);
        free(b);
    }
    free(m);
}

// --- metadata readers

/* an optional id key: -1 when absent; out of [0, n) is an error */
static int get_id(const Gguf *g, const char *key, size_t n, int *out, TunaErr *err) {
    int64_t v;
    int rc = gguf_get_int(g, key, &v, err);
    *out = -1;
    if (rc < 0) return rc;
    if (rc == 0) return 0;
    if (v < 0 || (uint64_t)v >= n)
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s %lld is out of range (%zu tokens)",
                         gguf_path(g), key, (long long)v, n);
    *out = (int)v;
    return 0;
}

static int get_flag(const Gguf *g, const char *key, int def, int *out, TunaErr *err) {
    int rc = gguf_get_bool(g, key, out, err);
    if (rc < 0) return rc;
    if (rc == 0) *out = def;
    return 0;
}

/* an optional array of n numbers */
static int get_num_arr(const Gguf *g, const char *key, size_t n, const GgufArr **out,
                       TunaErr *err) {
    int rc = gguf_get_arr(g, key, out, err);
    if (rc < 0) return rc;
    if (rc == 0) {
        *out = NULL;
        return 0;
    }
    GgufType t = (*out)->elem_type;
    if (t == GGUF_STRING || t == GGUF_ARRAY || t == GGUF_BOOL)
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s must be an array of numbers", gguf_path(g),
                         key);
    if ((*out)->n != n)
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s has %llu entries for %zu tokens", gguf_path(g),
                         key, (unsigned long long)(*out)->n, n);
    return 0;
}

// --- the document

static cJSON *added_token(int id, const GgufStr *s, int special) {
    cJSON *a = cJSON_CreateObject();
    char *c = str_dup_n(s->s, s->len);
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", c);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", special);
    free(c);
    return a;
}

static cJSON *split_step(const char *re) {
    cJSON *s = cJSON_CreateObject(), *p = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", "Split");
    cJSON_AddStringToObject(p, "Regex", re);
    cJSON_AddItemToObject(s, "pattern", p);
    cJSON_AddStringToObject(s, "behavior", "Isolated");
    cJSON_AddBoolToObject(s, "invert", 0);
    return s;
}

static cJSON *bytelevel_step(int use_regex) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", "ByteLevel");
    cJSON_AddBoolToObject(s, "add_prefix_space", 0);
    cJSON_AddBoolToObject(s, "use_regex", use_regex);
    return s;
}

static cJSON *seq(const char *type, const char *key, cJSON *a, cJSON *b) {
    cJSON *s = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    cJSON_AddStringToObject(s, "type", type);
    cJSON_AddItemToArray(arr, a);
    if (b) cJSON_AddItemToArray(arr, b);
    cJSON_AddItemToObject(s, key, arr);
    return s;
}

static cJSON *replace_step(const char *from, const char *to) {
    cJSON *s = cJSON_CreateObject(), *p = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", "Replace");
    cJSON_AddStringToObject(p, "String", from);
    cJSON_AddItemToObject(s, "pattern", p);
    cJSON_AddStringToObject(s, "content", to);
    return s;
}

/* pre-tokenizer for a byte-level vocabulary; NULL (with err) for an unknown name */
static cJSON *bytelevel_pretok(const Gguf *g, const GgufStr *pre, int *ignore_merges,
                               TunaErr *err) {
    char name[64] = "default";
    if (pre) {
        if (pre->len >= sizeof name) {
            tuna_errf(err, TUNA_EUNSUP, "%s: tokenizer.ggml.pre \"%.40s...\" is not supported",
                      gguf_path(g), pre->s);
            return NULL;
        }
        memcpy(name, pre->s, pre->len);
        name[pre->len] = '\0';
    }
    *ignore_merges = 0;
    if (!strcmp(name, "default") || !strcmp(name, "gpt2") || !strcmp(name, "gpt-2"))
        return bytelevel_step(1);
    if (!strcmp(name, "llama-bpe") || !strcmp(name, "llama3") || !strcmp(name, "llama-v3")) {
        *ignore_merges = 1;
        return seq("Sequence", "pretokenizers", split_step(LLAMA3_RE), bytelevel_step(0));
    }
    if (!strcmp(name, "qwen2"))
        return seq("Sequence", "pretokenizers", split_step(QWEN2_RE), bytelevel_step(0));
    if (!strcmp(name, "smollm")) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "type", "Digits");
        cJSON_AddBoolToObject(d, "individual_digits", 1);
        return seq("Sequence", "pretokenizers", d, bytelevel_step(1));
    }
    tuna_errf(err, TUNA_EUNSUP,
              "%s: tokenizer.ggml.pre \"%s\" is not supported (supported: default, gpt2, "
              "llama-bpe, llama3, qwen2, smollm)",
              gguf_path(g), name);
    return NULL;
}

static void add_special_item(cJSON *single, cJSON *specials, const char *name, int id,
                             const GgufStr *tok) {
    cJSON *it = cJSON_CreateObject(), *sp = cJSON_CreateObject();
    cJSON_AddStringToObject(sp, "id", name);
    cJSON_AddNumberToObject(sp, "type_id", 0);
    cJSON_AddItemToObject(it, "SpecialToken", sp);
    cJSON_AddItemToArray(single, it);
    cJSON *st = cJSON_CreateObject(), *ids = cJSON_CreateArray(), *toks = cJSON_CreateArray();
    char *c = str_dup_n(tok->s, tok->len);
    cJSON_AddStringToObject(st, "id", name);
    cJSON_AddItemToArray(ids, cJSON_CreateNumber(id));
    cJSON_AddItemToObject(st, "ids", ids);
    cJSON_AddItemToArray(toks, cJSON_CreateString(c));
    cJSON_AddItemToObject(st, "tokens", toks);
    cJSON_AddItemToObject(specials, name, st);
    free(c);
}

/* The tokenizer.* metadata of a GGUF file, checked. */
typedef struct {
    const char *path;
    int spm; /* tokenizer.ggml.model "llama" (sentencepiece); else "gpt2" (byte level) */
    const GgufStr *tok;
    size_t n;
    const GgufArr *types, *scores, *merges;
    int bos, eos, unk, pad, add_bos, add_eos, add_space;
    int has_pre, has_tpl;
    GgufStr pre, tpl;
} GgufTok;

/* Model kind, tokens, types, scores and merges, refusing what tuna cannot read. */
static int read_vocab_arrays(const Gguf *g, GgufTok *t, TunaErr *err) {
    const char *path = t->path;
    GgufStr model;
    const GgufArr *tokens;
    int rc;
    if ((rc = gguf_get_str(g, "tokenizer.ggml.model", &model, err)) < 0) return rc;
    if (rc == 0)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: no tokenizer.ggml.model: the file carries no tokenizer", path);
    t->spm = model.len == 5 && !memcmp(model.s, "llama", 5);
    if (!t->spm && !(model.len == 4 && !memcmp(model.s, "gpt2", 4)))
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: tokenizer.ggml.model \"%.*s\" is not supported (gpt2 or llama)", path,
                         (int)(model.len > 40 ? 40 : model.len), model.s);
    if ((rc = gguf_get_arr(g, "tokenizer.ggml.tokens", &tokens, err)) < 0) return rc;
    if (rc == 0) return tuna_errf(err, TUNA_EFORMAT, "%s: no tokenizer.ggml.tokens", path);
    if (tokens->elem_type != GGUF_STRING)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tokenizer.ggml.tokens must be an array of strings",
                         path);
    size_t n = t->n = (size_t)tokens->n;
    if (n == 0 || n >= GT_MAX_TOKENS)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tokenizer.ggml.tokens has %zu entries (1 to %d)",
                         path, n, GT_MAX_TOKENS - 1);
    const GgufStr *tok = t->tok = tokens->strs;
    for (size_t i = 0; i < n; i++)
        if (tok[i].len && memchr(tok[i].s, '\0', tok[i].len))
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: tokenizer.ggml.tokens[%zu] contains a NUL byte", path, i);
    if ((rc = get_num_arr(g, "tokenizer.ggml.token_type", n, &t->types, err))) return rc;
    if ((rc = get_num_arr(g, "tokenizer.ggml.scores", n, &t->scores, err))) return rc;
    if ((rc = gguf_get_arr(g, "tokenizer.ggml.merges", &t->merges, err)) < 0) return rc;
    if (rc == 0) t->merges = NULL;
    if (t->merges && t->merges->elem_type != GGUF_STRING)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tokenizer.ggml.merges must be an array of strings",
                         path);
    if (!t->spm && !t->merges)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tokenizer.ggml.model \"gpt2\" needs tokenizer.ggml.merges", path);
    if (t->spm && !t->merges && !t->scores)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tokenizer.ggml.model \"llama\" needs tokenizer.ggml.scores or "
                         "tokenizer.ggml.merges",
                         path);
    if (t->types)
        for (size_t i = 0; i < n; i++) {
            int64_t v = gguf_arr_int(t->types, i);
            if (v < 0 || v > 6)
                return tuna_errf(err, TUNA_EFORMAT,
                                 "%s: tokenizer.ggml.token_type[%zu] is %lld (0 to 6)", path, i,
                                 (long long)v);
        }
    return 0;
}

/* Everything tokenizer_load_gguf needs: the arrays, special ids, flags, pre and template. */
static int read_gguf_tok(const Gguf *g, GgufTok *t, TunaErr *err) {
    memset(t, 0, sizeof *t);
    t->path = gguf_path(g);
    int rc;
    if ((rc = read_vocab_arrays(g, t, err))) return rc;
    size_t n = t->n;
    if ((rc = get_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos, err))) return rc;
    if ((rc = get_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos, err))) return rc;
    if ((rc = get_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk, err))) return rc;
    if ((rc = get_id(g, "tokenizer.ggml.padding_token_id", n, &t->pad, err))) return rc;
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", t->spm, &t->add_bos, err))) return rc;
    if ((rc = get_flag(g, "tokenizer.ggml.add_eos_token", 0, &t->add_eos, err))) return rc;
    if ((rc = get_flag(g, "tokenizer.ggml.add_space_prefix", 1, &t->add_space, err))) return rc;
    if ((t->has_pre = gguf_get_str(g, "tokenizer.ggml.pre", &t->pre, err)) < 0) return t->has_pre;
    if ((t->has_tpl = gguf_get_str(g, "tokenizer.chat_template", &t->tpl, err)) < 0)
        return t->has_tpl;
    return 0;
}

/* model.vocab: each token spelled as is (spm, or already in the byte alphabet) or mapped
 * byte by byte into it; spelled[i] records which. */
static void add_vocab(const GgufTok *t, cJSON *vocab, uint8_t *spelled) {
    const GgufStr *tok = t->tok;
    uint32_t b2c[256];
    uint8_t is_byte_cp[324] = {0};
    byte_alphabet(b2c);
    for (int b = 0; b < 256; b++)
        is_byte_cp[b2c[b]] = 1;
    char *buf = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < t->n; i++) {
        spelled[i] = t->spm || in_alphabet(&tok[i], is_byte_cp);
        size_t need = spelled[i] ? tok[i].len + 1 : tok[i].len * 2 + 1;
        if (need > cap) buf = xrealloc(buf, cap = need * 2);
        size_t o = 0;
        if (spelled[i]) {
            if (tok[i].len) memcpy(buf, tok[i].s, tok[i].len);
            o = tok[i].len;
        } else {
            for (size_t k = 0; k < tok[i].len; k++) {
                uint32_t c = b2c[(unsigned char)tok[i].s[k]];
                if (c < 0x80) {
                    buf[o++] = (char)c;
                } else {
                    buf[o++] = (char)(0xC0 | (c >> 6));
                    buf[o++] = (char)(0x80 | (c & 0x3F));
                }
            }
        }
        buf[o] = '\0';
        cJSON_AddItemToObject(vocab, buf, cJSON_CreateNumber((double)i));
    }
    free(buf);
}

/* added tokens: control (special), then user-defined (plain), then the named specials */
static void add_added_tokens(const GgufTok *t, cJSON *added, const uint8_t *spelled) {
    const GgufStr *tok = t->tok;
    uint8_t *is_added = xcalloc(t->n, 1);
    for (int pass = 0; pass < 2 && t->types; pass++)
        for (size_t i = 0; i < t->n; i++) {
            int64_t ty = gguf_arr_int(t->types, i);
            if (ty != (pass == 0 ? TT_CONTROL : TT_USER) || !spelled[i] || !tok[i].len) continue;
            cJSON_AddItemToArray(added, added_token((int)i, &tok[i], pass == 0));
            is_added[i] = 1;
        }
    int named[4] = {t->bos, t->eos, t->unk, t->pad};
    for (int k = 0; k < 4; k++) {
        int id = named[k];
        if (id < 0 || is_added[id] || !spelled[id] || !tok[id].len) continue;
        cJSON_AddItemToArray(added, added_token(id, &tok[id], 1));
        is_added[id] = 1;
    }
    free(is_added);
}

/* model.merges: the stored ones, or derived from the scores (sentencepiece). */
static void add_merges(const GgufTok *t, cJSON *jm) {
    TokMap map;
    tokmap_init(&map, t->tok, t->n);
    if (t->merges) {
        for (uint64_t i = 0; i < t->merges->n; i++) {
            char *s = str_dup_n(t->merges->strs[i].s, t->merges->strs[i].len);
            cJSON_AddItemToArray(jm, cJSON_CreateString(s));
            free(s);
        }
    } else {
        derive_merges(t->tok, t->n, t->scores, &map, jm);
    }
    free(map.slot);
}

/* sentencepiece: byte fallback, unk token, ▁ normalizer (with a space prefix) and decoder. */
static void add_spm_parts(const GgufTok *t, cJSON *root, cJSON *m) {
    cJSON_AddBoolToObject(m, "byte_fallback", 1);
    cJSON_AddBoolToObject(m, "fuse_unk", 1);
    if (t->unk >= 0) {
        char *u = str_dup_n(t->tok[t->unk].s, t->tok[t->unk].len);
        cJSON_AddStringToObject(m, "unk_token", u);
        free(u);
    }
    cJSON *pre_n = cJSON_CreateObject();
    cJSON_AddStringToObject(pre_n, "type", "Prepend");
    cJSON_AddStringToObject(pre_n, "prepend", META);
    cJSON_AddItemToObject(root, "normalizer",
                          t->add_space
                                  ? seq("Sequence", "normalizers", pre_n, replace_step(" ", META))
                                  : (cJSON_Delete(pre_n), replace_step(" ", META)));
    cJSON *dec = seq("Sequence", "decoders", replace_step(META, " "), NULL);
    cJSON *arr = cJSON_GetObjectItemCaseSensitive(dec, "decoders");
    cJSON *bf = cJSON_CreateObject(), *fu = cJSON_CreateObject();
    cJSON_AddStringToObject(bf, "type", "ByteFallback");
    cJSON_AddStringToObject(fu, "type", "Fuse");
    cJSON_AddItemToArray(arr, bf);
    cJSON_AddItemToArray(arr, fu);
    if (t->add_space) {
        cJSON *st = cJSON_CreateObject();
        cJSON_AddStringToObject(st, "type", "Strip");
        cJSON_AddStringToObject(st, "content", " ");
        cJSON_AddNumberToObject(st, "start", 1);
        cJSON_AddNumberToObject(st, "stop", 0);
        cJSON_AddItemToArray(arr, st);
    }
    cJSON_AddItemToObject(root, "decoder", dec);
}

/* post_processor: [bos] A [eos], as add_bos_token / add_eos_token ask. */
static void add_post_processor(const GgufTok *t, cJSON *root) {
    cJSON *post = cJSON_CreateObject(), *single = cJSON_CreateArray();
    cJSON *specials = cJSON_CreateObject(), *a = cJSON_CreateObject();
    cJSON *sq = cJSON_CreateObject();
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    if (t->add_bos && t->bos >= 0)
        add_special_item(single, specials, "bos", t->bos, &t->tok[t->bos]);
    cJSON_AddStringToObject(sq, "id", "A");
    cJSON_AddNumberToObject(sq, "type_id", 0);
    cJSON_AddItemToObject(a, "Sequence", sq);
    cJSON_AddItemToArray(single, a);
    if (t->add_eos && t->eos >= 0)
        add_special_item(single, specials, "eos", t->eos, &t->tok[t->eos]);
    cJSON_AddItemToObject(post, "single", single);
    cJSON_AddItemToObject(post, "special_tokens", specials);
    cJSON_AddItemToObject(root, "post_processor", post);
}

/* The tokenizer.json document of t (*root), or an error (the pre-tokenizer tuna cannot read) */
static int gguf_tok_json(const Gguf *g, const GgufTok *t, cJSON **root_out, TunaErr *err) {
    int rc = 0;
    cJSON *root = cJSON_CreateObject(), *m = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *jm = cJSON_CreateArray(), *added = cJSON_CreateArray();
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddItemToObject(root, "model", m);
    cJSON_AddItemToObject(m, "vocab", vocab);
    cJSON_AddItemToObject(m, "merges", jm);
    cJSON_AddItemToObject(root, "added_tokens", added);
    uint8_t *spelled = xmalloc(t->n); /* byte level: token is in the byte alphabet */
    add_vocab(t, vocab, spelled);
    add_added_tokens(t, added, spelled);
    add_merges(t, jm);

    if (t->spm) {
        add_spm_parts(t, root, m);
    } else {
        int ignore_merges;
        cJSON *pt = bytelevel_pretok(g, t->has_pre ? &t->pre : NULL, &ignore_merges, err);
        if (!pt) {
            rc = TUNA_EUNSUP;
        } else {
            cJSON_AddItemToObject(root, "pre_tokenizer", pt);
            cJSON_AddBoolToObject(m, "ignore_merges", ignore_merges);
            cJSON *dec = cJSON_CreateObject();
            cJSON_AddStringToObject(dec, "type", "ByteLevel");
            cJSON_AddItemToObject(root, "decoder", dec);
        }
    }
    if (!rc) add_post_processor(t, root);
    free(spelled);
    if (rc) {
        cJSON_Delete(root);
        root = NULL;
    }
    *root_out = root;
    return rc;
}

int tokenizer_load_gguf(const Gguf *g, Tokenizer **out, TunaErr *err) {
    *out = NULL;
    GgufTok t;
    cJSON *root = NULL;
    int rc = read_gguf_tok(g, &t, err);
    if (!rc) rc = gguf_tok_json(g, &t, &root, err);
    if (!rc) {
        char *tpl_s = t.has_tpl ? str_dup_n(t.tpl.s, t.tpl.len) : NULL;
        TokMeta meta = {t.bos, t.eos, t.pad, tpl_s, "tokenizer.ggml.merges"};
        rc = tokenizer_from_json(t.path, root, &meta, out, err);
        free(tpl_s);
    }
    cJSON_Delete(root);
    return rc;
}

/* a token's text, or JSON null (id -1) */
static cJSON *token_or_null(const GgufTok *t, int id) {
    if (id < 0 || (size_t)id >= t->n) return cJSON_CreateNull();
    char *s = str_dup_n(t->tok[id].s, t->tok[id].len);
    cJSON *v = cJSON_CreateString(s);
    free(s);
    return v;
}

/* o[key] = v where o has no key (v freed otherwise) */
static void put_default(cJSON *o, const char *key, cJSON *v) {
    if (cJSON_HasObjectItem(o, key))
        cJSON_Delete(v);
    else
        cJSON_AddItemToObject(o, key, v);
}

/* The fields Hugging Face's tokenizers library requires that tuna's reader leaves to their
 * defaults: ByteLevel's add_prefix_space / trim_offsets / use_regex, a BPE model's dropout,
 * unk_token, subword affixes, fuse_unk and byte_fallback, the template's pair, and the top
 * level's version, truncation, padding and normalizer */
static void hf_complete(cJSON *o) {
    if (cJSON_IsArray(o)) {
        cJSON *e;
        cJSON_ArrayForEach(e, o) hf_complete(e);
        return;
    }
    if (!cJSON_IsObject(o)) return;
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "type"));
    if (type && !strcmp(type, "ByteLevel")) {
        put_default(o, "add_prefix_space", cJSON_CreateFalse());
        put_default(o, "trim_offsets", cJSON_CreateTrue());
        put_default(o, "use_regex", cJSON_CreateTrue());
    }
    if (type && !strcmp(type, "BPE")) {
        put_default(o, "dropout", cJSON_CreateNull());
        put_default(o, "unk_token", cJSON_CreateNull());
        put_default(o, "continuing_subword_prefix", cJSON_CreateNull());
        put_default(o, "end_of_word_suffix", cJSON_CreateNull());
        put_default(o, "fuse_unk", cJSON_CreateFalse());
        put_default(o, "byte_fallback", cJSON_CreateFalse());
    }
    if (type && !strcmp(type, "TemplateProcessing") && !cJSON_HasObjectItem(o, "pair")) {
        cJSON *pair = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(o, "single"), 1);
        cJSON *b = cJSON_CreateObject(), *seq = cJSON_CreateObject();
        cJSON_AddStringToObject(seq, "id", "B");
        cJSON_AddNumberToObject(seq, "type_id", 1);
        cJSON_AddItemToObject(b, "Sequence", seq);
        cJSON_AddItemToArray(pair, b);
        cJSON_AddItemToObject(o, "pair", pair);
    }
    for (cJSON *c = o->child; c; c = c->next)
        if (strcmp(c->string ? c->string : "", "vocab") &&
            strcmp(c->string ? c->string : "", "merges"))
            hf_complete(c);
}

int tokenizer_gguf_write_hf(const char *path, const char *dir, TunaErr *err) {
    Gguf *g;
    int rc = gguf_open(path, &g, err);
    if (rc) return rc;
    if (!gguf_find_kv(g, "tokenizer.ggml.model")) { /* a file with no tokenizer: none to write */
        gguf_free(g);
        return 0;
    }
    GgufTok t;
    cJSON *root = NULL;
    rc = read_gguf_tok(g, &t, err);
    if (!rc) rc = gguf_tok_json(g, &t, &root, err);
    if (!rc) {
        hf_complete(root);
        cJSON *top = cJSON_CreateObject(); /* the keys in the order transformers writes them */
        cJSON_AddStringToObject(top, "version", "1.0");
        cJSON_AddNullToObject(top, "truncation");
        cJSON_AddNullToObject(top, "padding");
        const char *keys[] = {"added_tokens",   "normalizer", "pre_tokenizer",
                              "post_processor", "decoder",    "model"};
        for (int k = 0; k < 6; k++) {
            cJSON *v = cJSON_DetachItemFromObjectCaseSensitive(root, keys[k]);
            cJSON_AddItemToObject(top, keys[k], v ? v : cJSON_CreateNull());
        }
        cJSON_Delete(root);
        root = top;
        rc = hf_write_json(root, 0, dir, "tokenizer.json", err);
        root = NULL;
    }
    if (!rc) { /* the special tokens and the chat template, as transformers reads them */
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
        cJSON_AddItemToObject(c, "bos_token", token_or_null(&t, t.bos));
        cJSON_AddItemToObject(c, "eos_token", token_or_null(&t, t.eos));
        cJSON_AddItemToObject(c, "unk_token", token_or_null(&t, t.unk));
        cJSON_AddItemToObject(c, "pad_token", token_or_null(&t, t.pad));
        cJSON_AddBoolToObject(c, "add_bos_token", t.add_bos);
        cJSON_AddBoolToObject(c, "add_eos_token", t.add_eos);
        if (t.has_tpl) {
            char *tpl = str_dup_n(t.tpl.s, t.tpl.len);
            cJSON_AddStringToObject(c, "chat_template", tpl);
            free(tpl);
        }
        rc = hf_write_json(c, 1, dir, "tokenizer_config.json", err);
    }
    cJSON_Delete(root);
    gguf_free(g);
    return rc;
}

int tokenizer_load_gguf_file(const char *path, Tokenizer **out, TunaErr *err) {
    Gguf *g;
    *out = NULL;
    int rc = gguf_open(path, &g, err);
    if (rc) return rc;
    rc = tokenizer_load_gguf(g, out, err);
    gguf_free(g);
    return rc;
}
