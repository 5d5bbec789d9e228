/* tokenizer.c: HF `tokenizers`-compatible BPE: tokenizer.json loading, encode, decode.
 *
 * DESIGN. Encoding follows HF's pipeline step by step on plain byte strings (no offsets):
 *   1. split out added tokens that are matched on the raw text (normalized=false),
 *   2. normalize each remaining segment, then split out normalized added tokens,
 *   3. run the pre-tokenizer steps over the pieces (regexes run by PCRE2 with JIT),
 *   4. BPE each piece with a linked list of symbols and a binary heap of candidate merges
 *      ordered by (rank, position), exactly as HF's Word::merge_all,
 *   5. apply the post-processor template when add_special is set.
 * Regex semantics follow onig's find_iter (HF's engine): an empty match right after the
 * previous match is skipped by advancing one character. The vocabulary and merge tables are
 * open-addressing hash maps; a direct table maps single codepoints < U+10000 to ids. */
#include "tokenizer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>

#include "gguf.h"
#include "xalloc.h"

#define TOK_MAX_IDS   (1 << 24)  /* largest vocabulary accepted (ids are < this) */
#define TOK_MAX_FILE  (1u << 30) /* largest tokenizer.json accepted */
#define TOK_MAX_STEPS 64         /* normalizer/pre-tokenizer/decoder steps after flattening */

// --- growable buffers

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static void buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_add(Buf *b, const void *s, size_t n) {
    buf_reserve(b, n);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

typedef struct {
    int32_t *p;
    size_t n, cap;
} IdVec;

static void ids_push(IdVec *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->p = xrealloc(v->p, v->cap * sizeof *v->p);
    }
    v->p[v->n++] = id;
}

// --- UTF-8

/* Length of the valid UTF-8 sequence at s[i] (1..4), or 0 if invalid. On invalid, *bad gets
 * the length of the maximal subpart to replace with one U+FFFD (>= 1), as Rust's
 * from_utf8_lossy and the Unicode "maximal subpart" practice do. */
static size_t utf8_seq(const unsigned char *s, size_t i, size_t len, size_t *bad) {
    unsigned c = s[i];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c == 0xE0)
        need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        need = 2;
    else if (c == 0xED)
        need = 2, hi = 0x9F;
    else if (c == 0xF0)
        need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        need = 3;
    else if (c == 0xF4)
        need = 3, hi = 0x8F;
    else {
        *bad = 1;
        return 0;
    }
    for (size_t k = 1; k <= need; k++) {
        if (i + k >= len) {
            *bad = k;
            return 0;
        }
        unsigned d = s[i + k];
        if (d < lo || d > hi) {
            *bad = k;
            return 0;
        }
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

static int utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, bad;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(u, i, len, &bad);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

/* Appends s to b, replacing invalid sequences by U+FFFD (Rust from_utf8_lossy). */
static void utf8_lossy(Buf *b, const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, start = 0, bad;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(u, i, len, &bad);
        if (k) {
            i += k;
            continue;
        }
        buf_add(b, s + start, i - start);
        buf_add(b, "\xEF\xBF\xBD", 3);
        i += bad;
        start = i;
    }
    buf_add(b, s + start, len - start);
}

static size_t utf8_len1(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Length of the character at s[i] (i < len) by its lead byte, never past len: vocab strings,
 * added tokens and decoder pieces may hold a truncated sequence. */
static size_t utf8_at(const char *s, size_t i, size_t len) {
    size_t k = utf8_len1((unsigned char)s[i]);
    return k < len - i ? k : len - i;
}

static uint32_t utf8_cp(const unsigned char *s, size_t n) {
    switch (n) {
    case 0: return 0;
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

/* Rust char::is_whitespace (Unicode White_Space). */
static int is_ws(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Codepoint ending at s[end) (valid UTF-8, end > 0); *start gets its first byte. */
static uint32_t utf8_prev(const char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    *start = i;
    return utf8_cp((const unsigned char *)s + i, end - i);
}

// --- byte-level (GPT-2) byte <-> char table

static void bytelevel_table(uint32_t b2c[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
            b2c[b] = (uint32_t)b;
        else
            b2c[b] = (uint32_t)(256 + n++);
    }
}

// --- hash maps

static uint32_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

typedef struct {
    const char *s;
    uint32_t len;
    int32_t id;
} VocabEnt;

/* String -> id over an entries array; slots hold entry index + 1 (0 = empty). */
typedef struct {
    uint32_t *slot;
    uint32_t *hash;
    size_t mask;
    const VocabEnt *ent;
} StrMap;

static void strmap_init(StrMap *m, const VocabEnt *ent, size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    m->slot = xcalloc(cap, sizeof *m->slot);
    m->hash = xcalloc(cap, sizeof *m->hash);
    m->mask = cap - 1;
    m->ent = ent;
    for (size_t i = 0; i < n; i++) {
        uint32_t h = hash_bytes(ent[i].s, ent[i].len);
        size_t j = h & m->mask;
        for (;;) {
            uint32_t e = m->slot[j];
            if (!e) break;
            const VocabEnt *v = &ent[e - 1];
            if (m->hash[j] == h && v->len == ent[i].len && !memcmp(v->s, ent[i].s, v->len)) break;
            j = (j + 1) & m->mask;
        }
        m->slot[j] = (uint32_t)i + 1; /* a later duplicate key wins, as in a JSON map */
        m->hash[j] = h;
    }
}

static int32_t strmap_get(const StrMap *m, const char *s, size_t n) {
    if (!m->slot) return -1;
    uint32_t h = hash_bytes(s, n);
    size_t j = h & m->mask;
    for (;;) {
        uint32_t e = m->slot[j];
        if (!e) return -1;
        const VocabEnt *v = &m->ent[e - 1];
        if (m->hash[j] == h && v->len == n && !memcmp(v->s, s, n)) return v->id;
        j = (j + 1) & m->mask;
    }
}

static void strmap_free(StrMap *m) {
    free(m->slot);
    free(m->hash);
}

/* (left id, right id) -> (rank, merged id). */
typedef struct {
    uint64_t *key; /* UINT64_MAX = empty */
    uint32_t *rank;
    int32_t *new_id;
    size_t mask;
} MergeMap;

static size_t merge_slot(const MergeMap *m, uint64_t key) {
    size_t j = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    while (m->key[j] != UINT64_MAX && m->key[j] != key)
        j = (j + 1) & m->mask;
    return j;
}

static inline int merge_get(const MergeMap *m, int32_t a, int32_t b, uint32_t *rank,
                            int32_t *new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t j = merge_slot(m, key);
    if (m->key[j] == UINT64_MAX) return 0;
    *rank = m->rank[j];
    *new_id = m->new_id[j];
    return 1;
}

// --- patterns (literal string or PCRE2 regex)

typedef struct {
    char *lit; /* literal pattern when re == NULL */
    size_t lit_len;
    pcre2_code *re;
} Pattern;

typedef struct {
    size_t s, e;
    int match;
} Span;

typedef struct {
    Span *p;
    size_t n, cap;
} Spans;

static void spans_push(Spans *v, size_t s, size_t e, int match) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->p = xrealloc(v->p, v->cap * sizeof *v->p);
    }
    v->p[v->n++] = (Span){s, e, match};
}

/* Per-call matching state (one per encode call, so a Tokenizer stays shareable). */
typedef struct {
    pcre2_match_data *md;
} MatchCtx;

static void matchctx_init(MatchCtx *mc) {
    mc->md = pcre2_match_data_create(4, NULL);
    if (!mc->md) tuna_panic(__FILE__, __LINE__, "pcre2 out of memory");
}

static void matchctx_free(MatchCtx *mc) {
    pcre2_match_data_free(mc->md);
}

/* JIT first (32 KiB machine stack); if that runs out, the interpreter, which uses the heap. */
static int re_match(const pcre2_code *re, const char *s, size_t len, size_t pos, MatchCtx *mc) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, mc->md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, mc->md,
                         NULL);
    return rc;
}

/* HF Pattern::find_matches: covers s with spans flagged match / non-match. */
static int pattern_find(const Pattern *pat, const char *s, size_t len, MatchCtx *mc, Spans *out,
                        TunaErr *err) {
    out->n = 0;
    if (len == 0) {
        spans_push(out, 0, 0, 0);
        return 0;
    }
    size_t prev = 0;
    if (!pat->re) {
        if (pat->lit_len == 0) {
            spans_push(out, 0, len, 0);
            return 0;
        }
        size_t i = 0;
        while (i + pat->lit_len <= len) {
            const char *f = memmem(s + i, len - i, pat->lit, pat->lit_len);
            if (!f) break;
            size_t st = (size_t)(f - s);
            if (st > prev) spans_push(out, prev, st, 0);
            spans_push(out, st, st + pat->lit_len, 1);
            prev = i = st + pat->lit_len;
        }
    } else {
        size_t pos = 0;
        long last_end = -1;
        while (pos <= len) {
            int rc = re_match(pat->re, s, len, pos, mc);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[120];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return tuna_errf(err, TUNA_EINVAL, "tokenizer: regex match failed: %s", msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mc->md);
            size_t st = ov[0], en = ov[1];
            if (st == en && last_end == (long)en) { /* onig: no empty match right after one */
                pos += pos < len ? utf8_at(s, pos, len) : 1;
                continue;
            }
            pos = en;
            last_end = (long)en;
            if (st > prev) spans_push(out, prev, st, 0);
            spans_push(out, st, en, 1);
            prev = en;
        }
    }
    if (prev < len) spans_push(out, prev, len, 0);
    return 0;
}

// --- pipeline step types

enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_STRIP } NormKind;
typedef struct {
    NormKind kind;
    Pattern pat; /* REPLACE */
    char *str;   /* PREPEND: prefix; REPLACE: content */
    size_t str_len;
    int left, right; /* STRIP */
} NormStep;

typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS } PreKind;
typedef struct {
    PreKind kind;
    Pattern pat; /* SPLIT; BYTELEVEL with use_regex (GPT-2 regex) */
    int behavior, invert;
    int add_prefix_space, use_regex; /* BYTELEVEL */
    char repl[8];                    /* METASPACE replacement char (UTF-8) */
    size_t repl_len;
    int prepend_scheme, split; /* METASPACE */
    int individual;            /* DIGITS */
} PreStep;

typedef enum {
    DEC_REPLACE,
    DEC_BYTEFALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_BYTELEVEL,
    DEC_METASPACE
} DecKind;
typedef struct {
    DecKind kind;
    Pattern pat; /* REPLACE */
    char *content;
    size_t content_len;
    uint32_t strip_char; /* STRIP */
    size_t start, stop;
    uint32_t repl;      /* METASPACE */
    int prepend_scheme; /* METASPACE */
} DecStep;

typedef struct {
    int is_seq;   /* the sequence A */
    int32_t *ids; /* special token ids otherwise */
    size_t n;
} TplItem;

typedef struct {
    TplItem *items;
    size_t n;
} Template;

typedef struct {
    const char *s; /* content to match (normalized content for normalized tokens) */
    size_t len;
    int32_t id;
    uint8_t lstrip, rstrip, single_word, normalized;
} AddedPat;

typedef struct {
    AddedPat *p; /* sorted by first byte, then longest first */
    size_t n;
    uint32_t first[257]; /* patterns starting with byte b are p[first[b] .. first[b+1]) */
} AddedSet;

struct Tokenizer {
    char *path; /* dir/tokenizer.json, for messages */
    /* model vocabulary */
    VocabEnt *vocab;
    size_t n_vocab;
    char *pool; /* vocab and added-token strings */
    StrMap vocab_map;
    int32_t *cp_id;       /* (65536) single-codepoint token ids, -1 absent */
    int32_t byte_id[256]; /* <0xXX> ids for byte fallback, -1 absent */
    MergeMap merges;
    int32_t unk_id;
    int byte_fallback, fuse_unk, ignore_merges;
    int split_meta; /* no token has "▁" after another char: words may be cut before "▁" */
    char *prefix, *suffix; /* continuing_subword_prefix / end_of_word_suffix, NULL if none */
    size_t prefix_len, suffix_len;
    /* ids */
    int n_ids;            /* max id + 1 */
    const char **id_str;  /* (n_ids) model vocab string, else added content; NULL for holes */
    uint32_t *id_len;     /* (n_ids) */
    const char **dec_str; /* (n_ids) string used by decode: added content first */
    uint32_t *dec_len;
    uint8_t *special; /* (n_ids) */
    /* added tokens */
    VocabEnt *added;
    uint8_t *added_special; /* (n_added) */
    size_t n_added;
    StrMap added_map;
    AddedSet raw_set, norm_set;
    size_t n_norm_owned; /* norm_set.p[0..n) own their s (normalized copies) */
    pcre2_code *word_re; /* \w for single_word tokens */
    /* pipeline */
    NormStep norm[TOK_MAX_STEPS];
    size_t n_norm;
    PreStep pre[TOK_MAX_STEPS];
    size_t n_pre;
    Template post[TOK_MAX_STEPS];
    size_t n_post;
    DecStep dec[TOK_MAX_STEPS];
    size_t n_dec;
    int has_decoder;
    uint32_t b2c[256];
    int16_t c2b[324]; /* byte-level char -> byte, -1 if not a byte char (chars < 324) */
    int bos_id, eos_id, pad_id;
    char *chat_template;    /* NULL when none */
    const char *merges_key; /* "model.merges" or "tokenizer.ggml.merges", for messages */
};

// --- JSON helpers

static const char *jtype(const cJSON *j) {
    if (!j) return "nothing";
    if (cJSON_IsString(j)) return "string";
    if (cJSON_IsNumber(j)) return "number";
    if (cJSON_IsArray(j)) return "array";
    if (cJSON_IsObject(j)) return "object";
    if (cJSON_IsBool(j)) return "bool";
    if (cJSON_IsNull(j)) return "null";
    return "invalid";
}

static const cJSON *jget(const cJSON *o, const char *k) {
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
}

/* Optional bool: absent/null -> def. Returns -1 (with err) on a wrong type. */
static int jbool(const Tokenizer *t, const cJSON *o, const char *k, int def, const char *where,
                 int *out, TunaErr *err) {
    const cJSON *v = jget(o, k);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s.%s must be a bool, got %s", t->path, where, k,
                         jtype(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Required (or optional with allow_null) string. */
static int jstr(const Tokenizer *t, const cJSON *o, const char *k, int allow_null,
                const char *where, const char **out, TunaErr *err) {
    const cJSON *v = jget(o, k);
    if (allow_null && (!v || cJSON_IsNull(v))) {
        *out = NULL;
        return 0;
    }
    if (!cJSON_IsString(v))
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s.%s must be a string, got %s", t->path, where, k,
                         jtype(v));
    *out = v->valuestring;
    return 0;
}

static int jint(const Tokenizer *t, const cJSON *v, const char *where, long lo, long hi, long *out,
                TunaErr *err) {
    if (!cJSON_IsNumber(v))
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s must be an integer, got %s", t->path, where,
                         jtype(v));
    double d = v->valuedouble;
    /* range first: casting an out-of-range double (1e300) to long is undefined */
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(long)d)
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s must be an integer in [%ld, %ld], got %g",
                         t->path, where, lo, hi, d);
    *out = (long)d;
    return 0;
}

/* Onig's (HF's) \s is Unicode White_Space; PCRE2's \s with UCP also matches U+180E. The
 * explicit set for \s and \S plus U+180E keep the two engines in step. */
#define WS_SET                                                                                     \
    "\\t\\n\\x0b\\f\\r\\x20\\x85\\xa0\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"      \
    "\\x{205f}\\x{3000}"

static char *onig_to_pcre2(const char *src) {
    Buf b = {0};
    int in_class = 0;
    for (size_t i = 0; src[i]; i++) {
        char ch = src[i];
        if (ch == '\\' && src[i + 1]) {
            char nx = src[++i];
            if (nx == 's') {
                const char *r = in_class ? WS_SET : "[" WS_SET "]";
                buf_add(&b, r, strlen(r));
            } else if (nx == 'S') {
                const char *r = in_class ? "\\S\\x{180e}" : "[\\S\\x{180e}]";
                buf_add(&b, r, strlen(r));
            } else {
                buf_add(&b, &ch, 1);
                buf_add(&b, &nx, 1);
            }
            continue;
        }
        if (ch == '[' && !in_class) {
            in_class = 1;
            buf_add(&b, &ch, 1);
            if (src[i + 1] == '^') buf_add(&b, &src[++i], 1);
            if (src[i + 1] == ']') buf_add(&b, &src[++i], 1); /* literal ']' first in a class */
            continue;
        }
        if (ch == ']' && in_class) in_class = 0;
        buf_add(&b, &ch, 1);
    }
    if (!b.p) b.p = xstrdup("");
    return b.p;
}

static int compile_re(const Tokenizer *t, const char *onig_src, const char *where, pcre2_code **out,
                      TunaErr *err) {
    int ec;
    PCRE2_SIZE eo;
    char *src = onig_to_pcre2(onig_src);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &ec, &eo, NULL);
    free(src);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s: bad regex at offset %zu: %s", t->path, where,
                         (size_t)eo, msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter on failure */
    *out = re;
    return 0;
}

/* {"String": s} or {"Regex": r}. */
static int parse_pattern(const Tokenizer *t, const cJSON *p, const char *where, Pattern *out,
                         TunaErr *err) {
    const cJSON *s = jget(p, "String"), *r = jget(p, "Regex");
    if (cJSON_IsString(s)) {
        out->lit = xstrdup(s->valuestring);
        out->lit_len = strlen(out->lit);
        return 0;
    }
    if (cJSON_IsString(r)) return compile_re(t, r->valuestring, where, &out->re, err);
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s: %s.pattern must be {\"String\": ...} or "
                     "{\"Regex\": ...}, got %s",
                     t->path, where, jtype(p));
}

static void pattern_free(Pattern *p) {
    free(p->lit);
    pcre2_code_free(p->re);
}

static uint32_t first_cp(const char *s) {
    size_t n = strnlen(s, 4);
    return utf8_cp((const unsigned char *)s, n ? utf8_at(s, 0, n) : 0);
}

// --- loading: model

/* model.vocab into one string pool, t->vocab and t->vocab_map; n_ids from the largest id. */
static int load_vocab(Tokenizer *t, const cJSON *vocab, TunaErr *err) {
    size_t n = 0, bytes = 0;
    int rc;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        char where[64];
        long id;
        snprintf(where, sizeof where, "model.vocab entry %zu", n);
        if ((rc = jint(t, c, where, 0, TOK_MAX_IDS - 1, &id, err))) return rc;
        if (id >= t->n_ids) t->n_ids = (int)id + 1;
        bytes += strlen(c->string) + 1;
        n++;
    }
    t->pool = xmalloc(bytes + 1);
    t->vocab = xmalloc((n ? n : 1) * sizeof *t->vocab);
    size_t off = 0, i = 0;
    for (const cJSON *c = vocab->child; c; c = c->next, i++) {
        size_t len = strlen(c->string);
        memcpy(t->pool + off, c->string, len + 1);
        t->vocab[i] = (VocabEnt){t->pool + off, (uint32_t)len, (int32_t)c->valuedouble};
        off += len + 1;
    }
    t->n_vocab = n;
    strmap_init(&t->vocab_map, t->vocab, n);
    return 0;
}

/* Lookups derived from the vocab: single code points (cp_id), <0xXX> byte tokens and
 * split_meta (see bpe_word). */
static void index_vocab(Tokenizer *t) {
    size_t n = t->n_vocab;
    t->cp_id = xmalloc(65536 * sizeof *t->cp_id);
    for (size_t k = 0; k < 65536; k++)
        t->cp_id[k] = -1;
    for (size_t k = 0; k < n; k++) {
        const VocabEnt *v = &t->vocab[k];
        if (v->len == 0 || utf8_len1((unsigned char)v->s[0]) != v->len || v->len > 3) continue;
        uint32_t cp = utf8_cp((const unsigned char *)v->s, v->len);
        if (strmap_get(&t->vocab_map, v->s, v->len) == v->id) t->cp_id[cp] = v->id;
    }
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vocab_map, s, 6);
    }

    /* split_meta: see bpe_word */
    t->split_meta = !t->prefix && !t->suffix && strmap_get(&t->vocab_map, "\xE2\x96\x81", 3) >= 0;
    for (size_t k = 0; k < n && t->split_meta; k++) {
        const VocabEnt *v = &t->vocab[k];
        for (size_t p = 1; p + 3 <= v->len; p++)
            if (!memcmp(v->s + p, "\xE2\x96\x81", 3) &&
                (p < 3 || memcmp(v->s + p - 3, "\xE2\x96\x81", 3))) {
                t->split_meta = 0;
                break;
            }
    }
}

/* One merge ("a b" or ["a", "b"]) of the given rank into t->merges; tmp is scratch. */
static int add_merge(Tokenizer *t, const cJSON *m, uint32_t rank, Buf *tmp, TunaErr *err) {
    const char *a, *b;
    size_t la, lb;
    if (cJSON_IsString(m)) {
        const char *sp = strchr(m->valuestring, ' ');
        if (!sp)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: %s[%u]: expected \"a b\", "
                             "got \"%.40s\" (no space)",
                             t->path, t->merges_key, rank, m->valuestring);
        a = m->valuestring, la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
               cJSON_IsString(m->child->next)) {
        a = m->child->valuestring, la = strlen(a);
        b = m->child->next->valuestring, lb = strlen(b);
    } else {
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: %s[%u]: expected \"a b\" or "
                         "[\"a\", \"b\"], got %s",
                         t->path, t->merges_key, rank, jtype(m));
    }
    int32_t ia = strmap_get(&t->vocab_map, a, la), ib = strmap_get(&t->vocab_map, b, lb);
    if (ia < 0 || ib < 0)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: %s[%u]: token \"%.*s\" is not in "
                         "the vocab",
                         t->path, t->merges_key, rank, ia < 0 ? (int)la : (int)lb, ia < 0 ? a : b);
    size_t skip = t->prefix_len && lb >= t->prefix_len && !memcmp(b, t->prefix, t->prefix_len)
                          ? t->prefix_len
                          : 0;
    tmp->len = 0;
    buf_add(tmp, a, la);
    buf_add(tmp, b + skip, lb - skip);
    int32_t nid = strmap_get(&t->vocab_map, tmp->p, tmp->len);
    if (nid < 0)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: %s[%u]: merged token \"%.*s\" is "
                         "not in the vocab",
                         t->path, t->merges_key, rank, (int)tmp->len, tmp->p);
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t j = merge_slot(&t->merges, key);
    t->merges.key[j] = key;
    t->merges.rank[j] = rank;
    t->merges.new_id[j] = nid;
    return 0;
}

/* merges: "a b" strings or ["a", "b"] pairs; rank = index, a later duplicate wins */
static int load_merges(Tokenizer *t, const cJSON *merges, TunaErr *err) {
    size_t nm = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < nm * 2)
        cap *= 2;
    t->merges.key = xmalloc(cap * sizeof *t->merges.key);
    memset(t->merges.key, 0xFF, cap * sizeof *t->merges.key);
    t->merges.rank = xmalloc(cap * sizeof *t->merges.rank);
    t->merges.new_id = xmalloc(cap * sizeof *t->merges.new_id);
    t->merges.mask = cap - 1;
    Buf tmp = {0};
    uint32_t rank = 0;
    int rc = 0;
    for (const cJSON *m = merges->child; m && !rc; m = m->next, rank++)
        rc = add_merge(t, m, rank, &tmp, err);
    free(tmp.p);
    return rc;
}

static int load_model(Tokenizer *t, const cJSON *model, TunaErr *err) {
    const cJSON *type = jget(model, "type");
    if (!cJSON_IsObject(model))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"model\" must be an object, got %s", t->path,
                         jtype(model));
    if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE")))
        return tuna_errf(err, TUNA_EUNSUP, "%s: model.type %s%s%s is not supported (only BPE)",
                         t->path, cJSON_IsString(type) ? "\"" : "",
                         cJSON_IsString(type) ? type->valuestring : jtype(type),
                         cJSON_IsString(type) ? "\"" : "");
    const cJSON *vocab = jget(model, "vocab"), *merges = jget(model, "merges");
    if (!cJSON_IsObject(vocab))
        return tuna_errf(err, TUNA_EFORMAT, "%s: model.vocab must be an object, got %s", t->path,
                         jtype(vocab));
    if (!cJSON_IsArray(merges))
        return tuna_errf(err, TUNA_EFORMAT, "%s: model.merges must be an array, got %s", t->path,
                         jtype(merges));
    int rc;
    if ((rc = jbool(t, model, "byte_fallback", 0, "model", &t->byte_fallback, err))) return rc;
    if ((rc = jbool(t, model, "fuse_unk", 0, "model", &t->fuse_unk, err))) return rc;
    if ((rc = jbool(t, model, "ignore_merges", 0, "model", &t->ignore_merges, err))) return rc;
    const cJSON *dropout = jget(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) &&
        !(cJSON_IsNumber(dropout) && (dropout->valuedouble == 0.0)))
        return tuna_errf(err, TUNA_EUNSUP, "%s: model.dropout is not supported", t->path);
    const char *pre, *suf, *unk;
    if ((rc = jstr(t, model, "continuing_subword_prefix", 1, "model", &pre, err))) return rc;
    if ((rc = jstr(t, model, "end_of_word_suffix", 1, "model", &suf, err))) return rc;
    if ((rc = jstr(t, model, "unk_token", 1, "model", &unk, err))) return rc;
    if (pre && *pre) t->prefix = xstrdup(pre), t->prefix_len = strlen(pre);
    if (suf && *suf) t->suffix = xstrdup(suf), t->suffix_len = strlen(suf);
    if ((rc = load_vocab(t, vocab, err))) return rc;
    t->unk_id = unk ? strmap_get(&t->vocab_map, unk, strlen(unk)) : -1;
    index_vocab(t);
    return load_merges(t, merges, err);
}

// --- loading: added tokens

static int cmp_added(const void *x, const void *y) {
    const AddedPat *a = x, *b = y;
    unsigned char fa = (unsigned char)a->s[0], fb = (unsigned char)b->s[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static void addedset_build(AddedSet *set) {
    if (set->n) qsort(set->p, set->n, sizeof *set->p, cmp_added);
    size_t k = 0;
    for (int b = 0; b < 256; b++) {
        set->first[b] = (uint32_t)k;
        while (k < set->n && (unsigned char)set->p[k].s[0] == b)
            k++;
    }
    set->first[256] = (uint32_t)set->n;
}

static int normalize_str(const Tokenizer *t, const char *s, size_t len, Buf *out, MatchCtx *mc,
                         TunaErr *err);

static int load_added(Tokenizer *t, const cJSON *arr, TunaErr *err) {
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr))
        return tuna_errf(err, TUNA_EFORMAT, "%s: added_tokens must be an array, got %s", t->path,
                         jtype(arr));
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    t->added = xcalloc(n ? n : 1, sizeof *t->added);
    t->added_special = xcalloc(n ? n : 1, 1);
    AddedPat *pats = xcalloc(n ? n : 1, sizeof *pats);
    int rc = 0;
    for (const cJSON *a = arr->child; a; a = a->next, i++) {
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!cJSON_IsObject(a)) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: %s must be an object, got %s", t->path, where,
                           jtype(a));
            goto fail;
        }
        long id;
        const char *content;
        int lstrip, rstrip, single, normalized, special;
        char w2[64];
        snprintf(w2, sizeof w2, "%s.id", where);
        if ((rc = jint(t, jget(a, "id"), w2, 0, TOK_MAX_IDS - 1, &id, err))) goto fail;
        if ((rc = jstr(t, a, "content", 0, where, &content, err))) goto fail;
        if ((rc = jbool(t, a, "lstrip", 0, where, &lstrip, err))) goto fail;
        if ((rc = jbool(t, a, "rstrip", 0, where, &rstrip, err))) goto fail;
        if ((rc = jbool(t, a, "single_word", 0, where, &single, err))) goto fail;
        if ((rc = jbool(t, a, "special", 0, where, &special, err))) goto fail;
        if ((rc = jbool(t, a, "normalized", !special, where, &normalized, err))) goto fail;
        if (!*content) continue; /* HF ignores empty added tokens */
        /* HF gives an added token that is already in the model vocab the model's id */
        int32_t mid = strmap_get(&t->vocab_map, content, strlen(content));
        if (mid >= 0) id = mid;
        if (!utf8_valid(content, strlen(content))) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: %s.content is not valid UTF-8", t->path, where);
            goto fail;
        }
        if (id >= t->n_ids) t->n_ids = (int)id + 1;
        t->added[t->n_added] = (VocabEnt){xstrdup(content), (uint32_t)strlen(content), (int32_t)id};
        pats[t->n_added] =
                (AddedPat){t->added[t->n_added].s, t->added[t->n_added].len, (int32_t)id,
                           (uint8_t)lstrip,        (uint8_t)rstrip,          (uint8_t)single,
                           (uint8_t)normalized};
        t->added_special[t->n_added] = (uint8_t)special;
        t->n_added++;
    }
    strmap_init(&t->added_map, t->added, t->n_added);
    /* split into the raw and normalized matching sets */
    t->raw_set.p = xcalloc(t->n_added ? t->n_added : 1, sizeof(AddedPat));
    t->norm_set.p = xcalloc(t->n_added ? t->n_added : 1, sizeof(AddedPat));
    int need_word = 0;
    for (size_t k = 0; k < t->n_added; k++) {
        AddedPat p = pats[k];
        need_word |= p.single_word;
        if (!p.normalized) {
            t->raw_set.p[t->raw_set.n++] = p;
        } else {
            t->norm_set.p[t->norm_set.n++] = p; /* content normalized after the pipeline loads */
        }
    }
    addedset_build(&t->raw_set);
    if (need_word && (rc = compile_re(t, "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]",
                                      "single_word", &t->word_re, err)))
        goto fail;
fail:
    free(pats);
    return rc;
}

/* Normalized added tokens are matched against their normalized content (HF). */
static int finish_norm_set(Tokenizer *t, TunaErr *err) {
    if (!t->norm_set.n) return 0;
    MatchCtx mc;
    matchctx_init(&mc);
    int rc = 0;
    for (size_t k = 0; k < t->norm_set.n; k++) {
        Buf b = {0};
        if ((rc = normalize_str(t, t->norm_set.p[k].s, t->norm_set.p[k].len, &b, &mc, err))) {
            free(b.p);
            break;
        }
        if (!b.len) buf_add(&b, t->norm_set.p[k].s, t->norm_set.p[k].len);
        t->norm_set.p[k].s = b.p; /* owned: freed in tokenizer_free */
        t->norm_set.p[k].len = b.len;
        t->n_norm_owned = k + 1;
    }
    matchctx_free(&mc);
    addedset_build(&t->norm_set);
    return rc;
}

// --- loading: normalizer, pre-tokenizer, post-processor, decoder

static int load_normalizer(Tokenizer *t, const cJSON *n, const char *where, TunaErr *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type;
    int rc;
    if ((rc = jstr(t, n, "type", 0, where, &type, err))) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = jget(n, "normalizers");
        if (!cJSON_IsArray(arr))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.normalizers must be an array, got %s",
                             t->path, where, jtype(arr));
        for (const cJSON *c = arr->child; c; c = c->next)
            if ((rc = load_normalizer(t, c, where, err))) return rc;
        return 0;
    }
    if (t->n_norm == TOK_MAX_STEPS)
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s: too many steps", t->path, where);
    NormStep *s = &t->norm[t->n_norm];
    memset(s, 0, sizeof *s);
    const char *str;
    if (!strcmp(type, "Prepend")) {
        if ((rc = jstr(t, n, "prepend", 0, where, &str, err))) return rc;
        s->kind = NORM_PREPEND;
        s->str = xstrdup(str);
        s->str_len = strlen(str);
    } else if (!strcmp(type, "Replace")) {
        if ((rc = jstr(t, n, "content", 0, where, &str, err))) return rc;
        if ((rc = parse_pattern(t, jget(n, "pattern"), where, &s->pat, err))) return rc;
        s->kind = NORM_REPLACE;
        s->str = xstrdup(str);
        s->str_len = strlen(str);
    } else if (!strcmp(type, "NFC")) {
        s->kind = NORM_NFC;
    } else if (!strcmp(type, "Strip")) {
        s->kind = NORM_STRIP;
        if ((rc = jbool(t, n, "strip_left", 1, where, &s->left, err))) return rc;
        if ((rc = jbool(t, n, "strip_right", 1, where, &s->right, err))) return rc;
    } else {
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s type \"%s\" is not supported", t->path, where,
                         type);
    }
    t->n_norm++;
    return 0;
}

static const char GPT2_RE[] =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_prepend_scheme(const Tokenizer *t, const cJSON *n, const char *where, int *out,
                                TunaErr *err) {
    const cJSON *ps = jget(n, "prepend_scheme");
    if (cJSON_IsString(ps)) {
        if (!strcmp(ps->valuestring, "always"))
            *out = PREPEND_ALWAYS;
        else if (!strcmp(ps->valuestring, "first"))
            *out = PREPEND_FIRST;
        else if (!strcmp(ps->valuestring, "never"))
            *out = PREPEND_NEVER;
        else
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: %s.prepend_scheme \"%s\" is not one of "
                             "always/first/never",
                             t->path, where, ps->valuestring);
        return 0;
    }
    int aps;
    int rc = jbool(t, n, "add_prefix_space", 1, where, &aps, err);
    *out = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
    return rc;
}

/* s is exactly one valid UTF-8 character (serde's char). */
static int one_char(const char *s) {
    size_t l = strlen(s);
    return l > 0 && l <= 4 && utf8_len1((unsigned char)s[0]) == l && utf8_valid(s, l);
}

static int parse_repl_char(const Tokenizer *t, const cJSON *n, const char *where, char *buf,
                           size_t *len, TunaErr *err) {
    const char *r;
    int rc = jstr(t, n, "replacement", 1, where, &r, err);
    if (rc) return rc;
    if (!r) r = "\xE2\x96\x81";
    size_t l = strlen(r);
    if (!one_char(r))
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s.replacement must be one character", t->path,
                         where);
    memcpy(buf, r, l);
    buf[l] = '\0';
    *len = l;
    return 0;
}

static int load_pretok(Tokenizer *t, const cJSON *n, const char *where, TunaErr *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type;
    int rc;
    if ((rc = jstr(t, n, "type", 0, where, &type, err))) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = jget(n, "pretokenizers");
        if (!cJSON_IsArray(arr))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.pretokenizers must be an array, got %s",
                             t->path, where, jtype(arr));
        for (const cJSON *c = arr->child; c; c = c->next)
            if ((rc = load_pretok(t, c, where, err))) return rc;
        return 0;
    }
    if (t->n_pre == TOK_MAX_STEPS)
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s: too many steps", t->path, where);
    PreStep *s = &t->pre[t->n_pre];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "Split")) {
        const char *beh;
        s->kind = PRE_SPLIT;
        if ((rc = parse_pattern(t, jget(n, "pattern"), where, &s->pat, err))) return rc;
        t->n_pre++; /* owns the pattern from here on */
        if ((rc = jstr(t, n, "behavior", 0, where, &beh, err))) return rc;
        if ((rc = jbool(t, n, "invert", 0, where, &s->invert, err))) return rc;
        if (!strcmp(beh, "Removed"))
            s->behavior = SPLIT_REMOVED;
        else if (!strcmp(beh, "Isolated"))
            s->behavior = SPLIT_ISOLATED;
        else if (!strcmp(beh, "MergedWithPrevious"))
            s->behavior = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext"))
            s->behavior = SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous"))
            s->behavior = SPLIT_CONTIGUOUS;
        else
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.behavior \"%s\" is not a split behavior",
                             t->path, where, beh);
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        s->kind = PRE_BYTELEVEL;
        if ((rc = jbool(t, n, "add_prefix_space", 1, where, &s->add_prefix_space, err))) return rc;
        if ((rc = jbool(t, n, "use_regex", 1, where, &s->use_regex, err))) return rc;
        if (s->use_regex && (rc = compile_re(t, GPT2_RE, where, &s->pat.re, err))) return rc;
    } else if (!strcmp(type, "Metaspace")) {
        s->kind = PRE_METASPACE;
        if ((rc = parse_repl_char(t, n, where, s->repl, &s->repl_len, err))) return rc;
        if ((rc = parse_prepend_scheme(t, n, where, &s->prepend_scheme, err))) return rc;
        if ((rc = jbool(t, n, "split", 1, where, &s->split, err))) return rc;
    } else if (!strcmp(type, "Digits")) {
        s->kind = PRE_DIGITS;
        if ((rc = jbool(t, n, "individual_digits", 0, where, &s->individual, err))) return rc;
        if ((rc = compile_re(t, "\\p{N}", where, &s->pat.re, err))) return rc;
    } else {
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s type \"%s\" is not supported", t->path, where,
                         type);
    }
    t->n_pre++;
    return 0;
}

static int32_t token_id_any(const Tokenizer *t, const char *s) {
    int32_t id = strmap_get(&t->added_map, s, strlen(s));
    return id >= 0 ? id : strmap_get(&t->vocab_map, s, strlen(s));
}

static int add_template(Tokenizer *t, Template *tp, const cJSON *single, const cJSON *specials,
                        const char *where, TunaErr *err) {
    if (!cJSON_IsArray(single))
        return tuna_errf(err, TUNA_EFORMAT, "%s: %s.single must be an array, got %s", t->path,
                         where, jtype(single));
    size_t n = (size_t)cJSON_GetArraySize(single), i = 0;
    tp->items = xcalloc(n ? n : 1, sizeof *tp->items);
    for (const cJSON *it = single->child; it; it = it->next, i++) {
        const cJSON *sp = jget(it, "SpecialToken");
        TplItem *item = &tp->items[tp->n];
        if (jget(it, "Sequence")) {
            const char *sid;
            int rc = jstr(t, jget(it, "Sequence"), "id", 0, where, &sid, err);
            if (rc) return rc;
            if (strcmp(sid, "A")) continue; /* only single sequences are encoded */
            item->is_seq = 1;
            tp->n++;
        } else if (sp) {
            const char *name;
            int rc = jstr(t, sp, "id", 0, where, &name, err);
            if (rc) return rc;
            const cJSON *st = jget(specials, name);
            const cJSON *ids = jget(st, "ids");
            if (!cJSON_IsArray(ids))
                return tuna_errf(err, TUNA_EFORMAT,
                                 "%s: %s.special_tokens[\"%s\"].ids must be an "
                                 "array, got %s",
                                 t->path, where, name, jtype(ids));
            item->n = (size_t)cJSON_GetArraySize(ids);
            item->ids = xcalloc(item->n ? item->n : 1, sizeof *item->ids);
            tp->n++;
            size_t k = 0;
            for (const cJSON *x = ids->child; x; x = x->next, k++) {
                long v;
                if ((rc = jint(t, x, "post_processor special token id", 0, TOK_MAX_IDS - 1, &v,
                               err)))
                    return rc;
                item->ids[k] = (int32_t)v;
                if (v >= t->n_ids) t->n_ids = (int)v + 1;
            }
        } else {
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: %s.single[%zu] must have \"Sequence\" or "
                             "\"SpecialToken\"",
                             t->path, where, i);
        }
    }
    return 0;
}

/* [first] A [last] as a template (Bert/Roberta processors). */
static int add_pair_template(Tokenizer *t, const cJSON *n, const char *first_key,
                             const char *last_key, const char *where, TunaErr *err) {
    Template *tp = &t->post[t->n_post++];
    tp->items = xcalloc(3, sizeof *tp->items);
    const char *keys[2] = {first_key, last_key};
    for (int k = 0; k < 2; k++) {
        const cJSON *pair = jget(n, keys[k]);
        if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 ||
            !cJSON_IsNumber(pair->child->next))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.%s must be [token, id], got %s", t->path,
                             where, keys[k], jtype(pair));
        long v;
        int rc = jint(t, pair->child->next, keys[k], 0, TOK_MAX_IDS - 1, &v, err);
        if (rc) return rc;
        TplItem *it = &tp->items[k == 0 ? 0 : 2];
        it->ids = xmalloc(sizeof *it->ids);
        it->ids[0] = (int32_t)v;
        it->n = 1;
    }
    tp->items[1].is_seq = 1;
    tp->n = 3;
    return 0;
}

static int load_post(Tokenizer *t, const cJSON *n, const char *where, TunaErr *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type;
    int rc;
    if ((rc = jstr(t, n, "type", 0, where, &type, err))) return rc;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = jget(n, "processors");
        if (!cJSON_IsArray(arr))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.processors must be an array, got %s",
                             t->path, where, jtype(arr));
        for (const cJSON *c = arr->child; c; c = c->next)
            if ((rc = load_post(t, c, where, err))) return rc;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* only trims offsets */
    if (t->n_post == TOK_MAX_STEPS)
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s: too many steps", t->path, where);
    if (!strcmp(type, "TemplateProcessing"))
        return add_template(t, &t->post[t->n_post++], jget(n, "single"), jget(n, "special_tokens"),
                            where, err);
    if (!strcmp(type, "BertProcessing")) return add_pair_template(t, n, "cls", "sep", where, err);
    if (!strcmp(type, "RobertaProcessing"))
        return add_pair_template(t, n, "cls", "sep", where, err);
    return tuna_errf(err, TUNA_EUNSUP, "%s: %s type \"%s\" is not supported", t->path, where, type);
}

static int load_decoder(Tokenizer *t, const cJSON *n, const char *where, TunaErr *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type;
    int rc;
    if ((rc = jstr(t, n, "type", 0, where, &type, err))) return rc;
    t->has_decoder = 1;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = jget(n, "decoders");
        if (!cJSON_IsArray(arr))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s.decoders must be an array, got %s", t->path,
                             where, jtype(arr));
        for (const cJSON *c = arr->child; c; c = c->next)
            if ((rc = load_decoder(t, c, where, err))) return rc;
        return 0;
    }
    if (t->n_dec == TOK_MAX_STEPS)
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s: too many steps", t->path, where);
    DecStep *s = &t->dec[t->n_dec];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "Replace")) {
        const char *content;
        if ((rc = jstr(t, n, "content", 0, where, &content, err))) return rc;
        if ((rc = parse_pattern(t, jget(n, "pattern"), where, &s->pat, err))) return rc;
        s->kind = DEC_REPLACE;
        s->content = xstrdup(content);
        s->content_len = strlen(content);
    } else if (!strcmp(type, "ByteFallback")) {
        s->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        s->kind = DEC_FUSE;
    } else if (!strcmp(type, "Strip")) {
        const char *content;
        long start, stop;
        if ((rc = jstr(t, n, "content", 0, where, &content, err))) return rc;
        if ((rc = jint(t, jget(n, "start"), "decoder Strip.start", 0, 1 << 20, &start, err)))
            return rc;
        if ((rc = jint(t, jget(n, "stop"), "decoder Strip.stop", 0, 1 << 20, &stop, err)))
            return rc;
        if (!one_char(content))
            return tuna_errf(err, TUNA_EFORMAT, "%s: %s Strip.content must be one character",
                             t->path, where);
        s->kind = DEC_STRIP;
        s->strip_char = first_cp(content);
        s->start = (size_t)start;
        s->stop = (size_t)stop;
    } else if (!strcmp(type, "ByteLevel")) {
        s->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "Metaspace")) {
        char r[8];
        size_t rl;
        s->kind = DEC_METASPACE;
        if ((rc = parse_repl_char(t, n, where, r, &rl, err))) return rc;
        s->repl = utf8_cp((const unsigned char *)r, rl);
        if ((rc = parse_prepend_scheme(t, n, where, &s->prepend_scheme, err))) return rc;
    } else {
        return tuna_errf(err, TUNA_EUNSUP, "%s: %s type \"%s\" is not supported", t->path, where,
                         type);
    }
    t->n_dec++;
    return 0;
}

/* bos_token / eos_token / pad_token: a string, {"content": ...} or null. */
static int config_token(Tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = jget(cfg, key);
    if (cJSON_IsObject(v)) v = jget(v, "content");
    if (!cJSON_IsString(v)) return -1;
    return token_id_any(t, v->valuestring);
}

/* chat_template: a string, or a list of {"name", "template"} of which "default" is taken. */
static int config_template(Tokenizer *t, const cJSON *cfg, const char *path, TunaErr *err) {
    const cJSON *v = jget(cfg, "chat_template");
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        t->chat_template = xstrdup(v->valuestring);
        return 0;
    }
    if (cJSON_IsArray(v)) {
        for (const cJSON *c = v->child; c; c = c->next) {
            const cJSON *name = jget(c, "name"), *tpl = jget(c, "template");
            if (cJSON_IsString(name) && !strcmp(name->valuestring, "default")) {
                if (!cJSON_IsString(tpl))
                    return tuna_errf(err, TUNA_EFORMAT,
                                     "%s: chat_template \"default\" entry has no string "
                                     "\"template\"",
                                     path);
                t->chat_template = xstrdup(tpl->valuestring);
                return 0;
            }
        }
        return 0; /* named templates only: none is the default */
    }
    return tuna_errf(err, TUNA_EFORMAT, "%s: chat_template must be a string or a list, got %s",
                     path, jtype(v));
}

static int load_config(Tokenizer *t, const char *dir, TunaErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    size_t len;
    char *text = xread_file(path, &len);
    if (!text) {
        if (errno == ENOENT) return 0;
        return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    }
    const char *end = NULL;
    cJSON *cfg = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!cJSON_IsObject(cfg)) {
        size_t at = end ? (size_t)(end - text) : 0;
        cJSON_Delete(cfg);
        free(text);
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON near byte %zu (expected an object)",
                         path, at);
    }
    t->bos_id = config_token(t, cfg, "bos_token");
    t->eos_id = config_token(t, cfg, "eos_token");
    t->pad_id = config_token(t, cfg, "pad_token");
    int rc = config_template(t, cfg, path, err);
    cJSON_Delete(cfg);
    free(text);
    return rc;
}

static Tokenizer *tok_new(const char *path) {
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    t->path = xstrdup(path);
    t->merges_key = "model.merges";
    bytelevel_table(t->b2c);
    for (int c = 0; c < 324; c++)
        t->c2b[c] = -1;
    for (int b = 0; b < 256; b++)
        t->c2b[t->b2c[b]] = (int16_t)b;
    return t;
}

/* Builds everything a tokenizer.json document describes into t. */
static int tok_build(Tokenizer *t, const cJSON *root, TunaErr *err) {
    int rc;
    if (!cJSON_IsObject(root))
        return tuna_errf(err, TUNA_EFORMAT, "%s: top level must be an object, got %s", t->path,
                         jtype(root));
    if (!jget(root, "model")) return tuna_errf(err, TUNA_EFORMAT, "%s: missing \"model\"", t->path);
    if ((rc = load_model(t, jget(root, "model"), err))) return rc;
    if ((rc = load_added(t, jget(root, "added_tokens"), err))) return rc;
    if ((rc = load_normalizer(t, jget(root, "normalizer"), "normalizer", err))) return rc;
    if ((rc = load_pretok(t, jget(root, "pre_tokenizer"), "pre_tokenizer", err))) return rc;
    if ((rc = load_post(t, jget(root, "post_processor"), "post_processor", err))) return rc;
    if ((rc = load_decoder(t, jget(root, "decoder"), "decoder", err))) return rc;
    if ((rc = finish_norm_set(t, err))) return rc;

    /* id tables: sized by the largest id, so refuse ids far beyond the number of tokens (one
     * entry with id 16777215 would otherwise allocate ~400 MB) */
    if ((size_t)t->n_ids > 2 * (t->n_vocab + t->n_added) + 1024)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: token ids are too sparse: largest id %d for %zu tokens (limit: "
                         "twice the token count + 1024)",
                         t->path, t->n_ids - 1, t->n_vocab + t->n_added);
    if (t->n_ids == 0) t->n_ids = 1;
    size_t n = (size_t)t->n_ids;
    t->id_str = xcalloc(n, sizeof *t->id_str);
    t->id_len = xcalloc(n, sizeof *t->id_len);
    t->dec_str = xcalloc(n, sizeof *t->dec_str);
    t->dec_len = xcalloc(n, sizeof *t->dec_len);
    t->special = xcalloc(n, 1);
    for (size_t k = 0; k < t->n_vocab; k++) {
        const VocabEnt *v = &t->vocab[k];
        if (strmap_get(&t->vocab_map, v->s, v->len) != v->id) continue; /* shadowed duplicate */
        t->id_str[v->id] = t->dec_str[v->id] = v->s;
        t->id_len[v->id] = t->dec_len[v->id] = v->len;
    }
    for (size_t k = 0; k < t->n_added; k++) {
        const VocabEnt *a = &t->added[k];
        if (!t->id_str[a->id]) t->id_str[a->id] = a->s, t->id_len[a->id] = a->len;
        t->dec_str[a->id] = a->s;
        t->dec_len[a->id] = a->len;
        t->special[a->id] = t->added_special[k];
    }
    return 0;
}

int tokenizer_from_json(const char *path, const cJSON *root, const TokMeta *meta, Tokenizer **out,
                        TunaErr *err) {
    *out = NULL;
    Tokenizer *t = tok_new(path);
    if (meta && meta->merges_key) t->merges_key = meta->merges_key;
    int rc = tok_build(t, root, err);
    if (!rc && meta) {
        int ids[3] = {meta->bos_id, meta->eos_id, meta->pad_id};
        static const char *const names[3] = {"bos", "eos", "pad"};
        for (int k = 0; k < 3 && !rc; k++)
            if (ids[k] >= t->n_ids || (ids[k] >= 0 && !t->id_str[ids[k]]))
                rc = tuna_errf(err, TUNA_EFORMAT, "%s: %s token id %d is not a token (%d ids)",
                               t->path, names[k], ids[k], t->n_ids);
        t->bos_id = meta->bos_id;
        t->eos_id = meta->eos_id;
        t->pad_id = meta->pad_id;
        if (meta->chat_template) t->chat_template = xstrdup(meta->chat_template);
    }
    if (rc) {
        tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int tokenizer_load(const char *dir, Tokenizer **out, TunaErr *err) {
    *out = NULL;
    char gpath[4096];
    int g = gguf_model_path(dir, gpath, sizeof gpath, err);
    if (g < 0) return g;
    if (g == 1) return tokenizer_load_gguf_file(gpath, out, err);
    size_t plen = strlen(dir) + 32;
    char *path = xmalloc(plen);
    snprintf(path, plen, "%s/tokenizer.json", dir);
    Tokenizer *t = tok_new(path);
    free(path);

    int rc = 0;
    cJSON *root = NULL;
    size_t len;
    char *text = NULL;
    struct stat sb;
    if (stat(t->path, &sb) == 0 && sb.st_size > (off_t)TOK_MAX_FILE) { /* before reading it */
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: file too large (%lld bytes, limit %u)", t->path,
                       (long long)sb.st_size, TOK_MAX_FILE);
        goto fail;
    }
    text = xread_file(t->path, &len);
    if (!text) {
        rc = tuna_errf(err, errno == ENOENT ? TUNA_ENOTFOUND : TUNA_EIO, "%s: cannot read: %s",
                       t->path, strerror(errno));
        goto fail;
    }
    if (len > TOK_MAX_FILE) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: file too large (%zu bytes)", t->path, len);
        goto fail;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - text) : len;
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: invalid or truncated JSON near byte %zu of %zu",
                       t->path, at, len);
        goto fail;
    }
    free(text);
    text = NULL;
    if ((rc = tok_build(t, root, err))) goto fail;
    cJSON_Delete(root);
    root = NULL;
    if ((rc = load_config(t, dir, err))) goto fail;
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    free(text);
    tokenizer_free(t);
    return rc;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->path);
    free(t->chat_template);
    free(t->vocab);
    free(t->pool);
    strmap_free(&t->vocab_map);
    free(t->cp_id);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.new_id);
    free(t->prefix);
    free(t->suffix);
    free((void *)t->id_str);
    free(t->id_len);
    free((void *)t->dec_str);
    free(t->dec_len);
    free(t->special);
    for (size_t k = 0; k < t->n_added; k++)
        free((void *)t->added[k].s);
    free(t->added);
    free(t->added_special);
    strmap_free(&t->added_map);
    free(t->raw_set.p);
    /* until finish_norm_set replaced them, the entries borrow t->added's strings: a load that
     * failed between load_added and finish_norm_set freed those twice */
    for (size_t k = 0; k < t->n_norm_owned; k++)
        free((void *)t->norm_set.p[k].s);
    free(t->norm_set.p);
    pcre2_code_free(t->word_re);
    for (size_t k = 0; k < t->n_norm; k++) {
        pattern_free(&t->norm[k].pat);
        free(t->norm[k].str);
    }
    for (size_t k = 0; k < t->n_pre; k++)
        pattern_free(&t->pre[k].pat);
    for (size_t k = 0; k < t->n_post; k++) {
        for (size_t i = 0; i < t->post[k].n; i++)
            free(t->post[k].items[i].ids);
        free(t->post[k].items);
    }
    for (size_t k = 0; k < t->n_dec; k++) {
        pattern_free(&t->dec[k].pat);
        free(t->dec[k].content);
    }
    free(t);
}

// --- encode: pieces

typedef struct {
    size_t off, len;
    int32_t id;      /* >= 0: an added token, already final */
    uint8_t origin0; /* starts at offset 0 of the input (Metaspace prepend_scheme "first") */
} Piece;

typedef struct {
    Buf b;
    Piece *p;
    size_t n, cap;
} Pieces;

static Piece *pieces_new(Pieces *ps) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 64;
        ps->p = xrealloc(ps->p, ps->cap * sizeof *ps->p);
    }
    return &ps->p[ps->n++];
}

static void pieces_text(Pieces *ps, const char *s, size_t len, int origin0) {
    if (!len) return; /* HF drops empty splits */
    Piece *p = pieces_new(ps);
    *p = (Piece){ps->b.len, len, -1, (uint8_t)origin0};
    buf_add(&ps->b, s, len);
}

static void pieces_token(Pieces *ps, int32_t id) {
    Piece *p = pieces_new(ps);
    *p = (Piece){ps->b.len, 0, id, 0};
}

static void pieces_free(Pieces *ps) {
    free(ps->b.p);
    free(ps->p);
}

typedef struct {
    MatchCtx mc;
    Spans spans, spans2;
    Buf t1, t2, t3;
    /* BPE */
    struct Sym {
        int32_t id, prev, next;
        uint32_t len; /* bytes; 0 = merged away */
    } * sym;
    size_t cap_sym;
    struct HeapEnt {
        uint32_t rank, pos;
        int32_t new_id;
    } * heap;
    size_t n_heap, cap_heap;
} EncCtx;

static void encctx_free(EncCtx *c) {
    matchctx_free(&c->mc);
    free(c->spans.p);
    free(c->spans2.p);
    free(c->t1.p);
    free(c->t2.p);
    free(c->t3.p);
    free(c->sym);
    free(c->heap);
}

static int is_word_char(const Tokenizer *t, uint32_t cp, MatchCtx *mc) {
    char b[4];
    size_t n = tokenizer_utf8_put(cp, b);
    return pcre2_match(t->word_re, (PCRE2_SPTR)b, n, 0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, mc->md,
                       NULL) >= 0;
}

/* HF AddedVocabulary::find_matches + split_with_indices. */
static void split_added(const Tokenizer *t, const AddedSet *set, const char *s, size_t len,
                        int origin0, MatchCtx *mc, Pieces *out) {
    if (!set->n) {
        pieces_text(out, s, len, origin0);
        return;
    }
    size_t start_off = 0, i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        const AddedPat *m = NULL;
        for (uint32_t k = set->first[c]; k < set->first[c + 1]; k++) {
            const AddedPat *p = &set->p[k];
            if (p->len <= len - i && !memcmp(s + i, p->s, p->len)) {
                m = p;
                break;
            }
        }
        if (!m) {
            i++;
            continue;
        }
        size_t st = i, en = i + m->len, ps;
        i = en;
        if (m->single_word) {
            int before = st > 0 && is_word_char(t, utf8_prev(s, st, &ps), mc);
            int after = en < len &&
                        is_word_char(t, utf8_cp((const unsigned char *)s + en, utf8_at(s, en, len)),
                                     mc);
            if (before || after) continue;
        }
        if (m->lstrip) {
            size_t ns = st;
            while (ns > 0) {
                uint32_t cp = utf8_prev(s, ns, &ps);
                if (!is_ws(cp)) break;
                ns = ps;
            }
            st = ns > start_off ? ns : start_off;
        }
        if (m->rstrip) {
            while (en < len) {
                size_t k = utf8_at(s, en, len);
                if (!is_ws(utf8_cp((const unsigned char *)s + en, k))) break;
                en += k;
            }
        }
        if (st < start_off) st = start_off; /* an earlier rstrip already took these bytes */
        if (start_off < st)
            pieces_text(out, s + start_off, st - start_off, origin0 && start_off == 0);
        pieces_token(out, m->id);
        start_off = en;
        if (i < en) i = en;
    }
    if (start_off < len) pieces_text(out, s + start_off, len - start_off, origin0 && !start_off);
}

// --- encode: normalizers

static int normalize_str(const Tokenizer *t, const char *s, size_t len, Buf *out, MatchCtx *mc,
                         TunaErr *err) {
    Buf a = {0}, b = {0};
    Spans sp = {0};
    int rc = 0;
    buf_add(&a, s, len);
    for (size_t k = 0; k < t->n_norm; k++) {
        const NormStep *st = &t->norm[k];
        b.len = 0;
        switch (st->kind) {
        case NORM_PREPEND:
            if (!a.len) continue;
            buf_add(&b, st->str, st->str_len);
            buf_add(&b, a.p, a.len);
            break;
        case NORM_REPLACE:
            if ((rc = pattern_find(&st->pat, a.p, a.len, mc, &sp, err))) goto done;
            for (size_t i = 0; i < sp.n; i++) {
                if (sp.p[i].match)
                    buf_add(&b, st->str, st->str_len);
                else
                    buf_add(&b, a.p + sp.p[i].s, sp.p[i].e - sp.p[i].s);
            }
            break;
        case NORM_NFC:
            if (!tokenizer_nfc_needed(a.p, a.len)) continue;
            {
                size_t nl;
                char *nf = tokenizer_nfc(a.p, a.len, &nl);
                buf_add(&b, nf, nl);
                free(nf);
            }
            break;
        case NORM_STRIP: {
            size_t st0 = 0, en = a.len, ps;
            if (st->left)
                while (st0 < en) {
                    size_t n = utf8_at(a.p, st0, en);
                    if (!is_ws(utf8_cp((const unsigned char *)a.p + st0, n))) break;
                    st0 += n;
                }
            if (st->right)
                while (en > st0) {
                    if (!is_ws(utf8_prev(a.p, en, &ps))) break;
                    en = ps;
                }
            buf_add(&b, a.p + st0, en - st0);
            break;
        }
        }
        Buf tmp = a;
        a = b;
        b = tmp;
    }
    out->len = 0;
    buf_add(out, a.p, a.len);
done:
    free(a.p);
    free(b.p);
    free(sp.p);
    return rc;
}

// --- encode: pre-tokenizers

/* HF NormalizedString::split with a behavior, over spans from pattern_find. */
static void split_spans(const Spans *in, int behavior, int invert, Spans *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        Span sp = in->p[i];
        int m = invert ? !sp.match : sp.match;
        switch (behavior) {
        case SPLIT_ISOLATED: spans_push(out, sp.s, sp.e, 0); break;
        case SPLIT_REMOVED: spans_push(out, sp.s, sp.e, m); break; /* flag = remove */
        case SPLIT_CONTIGUOUS:
            if (i > 0 && m == (invert ? !in->p[i - 1].match : in->p[i - 1].match) && out->n)
                out->p[out->n - 1].e = sp.e;
            else
                spans_push(out, sp.s, sp.e, 0);
            break;
        case SPLIT_MERGED_PREV: {
            int prev_m = i > 0 && (invert ? !in->p[i - 1].match : in->p[i - 1].match);
            if (m && !prev_m && out->n)
                out->p[out->n - 1].e = sp.e;
            else
                spans_push(out, sp.s, sp.e, 0);
            break;
        }
        default: break;
        }
    }
    if (behavior == SPLIT_MERGED_NEXT) { /* fold from the right */
        int prev_m = 0;
        for (size_t r = in->n; r-- > 0;) {
            Span sp = in->p[r];
            int m = invert ? !sp.match : sp.match;
            if (m && !prev_m && out->n)
                out->p[out->n - 1].s = sp.s;
            else
                spans_push(out, sp.s, sp.e, 0);
            prev_m = m;
        }
        for (size_t a = 0, b = out->n ? out->n - 1 : 0; a < b; a++, b--) {
            Span x = out->p[a];
            out->p[a] = out->p[b];
            out->p[b] = x;
        }
    }
}

static int pretok_piece(const Tokenizer *t, const PreStep *st, const char *s, size_t len,
                        int origin0, EncCtx *c, Pieces *out, TunaErr *err) {
    int rc;
    switch (st->kind) {
    case PRE_SPLIT:
    case PRE_DIGITS: {
        int beh = st->kind == PRE_DIGITS ? (st->individual ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS)
                                         : st->behavior;
        if ((rc = pattern_find(&st->pat, s, len, &c->mc, &c->spans, err))) return rc;
        split_spans(&c->spans, beh, st->kind == PRE_SPLIT && st->invert, &c->spans2);
        for (size_t i = 0; i < c->spans2.n; i++) {
            const Span *sp = &c->spans2.p[i];
            if (!sp->match) pieces_text(out, s + sp->s, sp->e - sp->s, origin0 && sp->s == 0);
        }
        return 0;
    }
    case PRE_BYTELEVEL: {
        const char *w = s;
        size_t wl = len;
        if (st->add_prefix_space && (len == 0 || s[0] != ' ')) {
            c->t3.len = 0;
            buf_add(&c->t3, " ", 1);
            buf_add(&c->t3, s, len);
            w = c->t3.p, wl = c->t3.len;
        }
        size_t nsp = 1;
        if (st->use_regex) {
            if ((rc = pattern_find(&st->pat, w, wl, &c->mc, &c->spans, err))) return rc;
            nsp = c->spans.n;
        }
        for (size_t i = 0; i < nsp; i++) {
            size_t a = st->use_regex ? c->spans.p[i].s : 0,
                   e = st->use_regex ? c->spans.p[i].e : wl;
            if (a == e) continue;
            Piece *p = pieces_new(out);
            *p = (Piece){out->b.len, 0, -1, (uint8_t)(origin0 && a == 0)};
            buf_reserve(&out->b, (e - a) * 2);
            char *o = out->b.p + out->b.len;
            for (size_t k = a; k < e; k++)
                o += tokenizer_utf8_put(t->b2c[(unsigned char)w[k]], o);
            p->len = (size_t)(o - (out->b.p + out->b.len));
            out->b.len += p->len;
            out->b.p[out->b.len] = '\0';
        }
        return 0;
    }
    case PRE_METASPACE: {
        Buf *b = &c->t3;
        b->len = 0;
        for (size_t k = 0; k < len; k++) { /* ' ' -> replacement, then the prepend check */
            if (s[k] == ' ')
                buf_add(b, st->repl, st->repl_len);
            else
                buf_add(b, s + k, 1);
        }
        int starts = b->len >= st->repl_len && !memcmp(b->p, st->repl, st->repl_len);
        if (!starts && (st->prepend_scheme == PREPEND_ALWAYS ||
                        (st->prepend_scheme == PREPEND_FIRST && origin0))) {
            Buf nb = {0};
            buf_add(&nb, st->repl, st->repl_len);
            buf_add(&nb, b->p, b->len);
            free(b->p);
            *b = nb;
        }
        if (!st->split) {
            pieces_text(out, b->p, b->len, origin0);
            return 0;
        }
        Pattern lit = {(char *)st->repl, st->repl_len, NULL};
        if ((rc = pattern_find(&lit, b->p, b->len, &c->mc, &c->spans, err))) return rc;
        split_spans(&c->spans, SPLIT_MERGED_NEXT, 0, &c->spans2);
        for (size_t i = 0; i < c->spans2.n; i++) {
            const Span *sp = &c->spans2.p[i];
            pieces_text(out, b->p + sp->s, sp->e - sp->s, origin0 && sp->s == 0);
        }
        return 0;
    }
    }
    return 0;
}

// --- encode: BPE

static void heap_push(EncCtx *c, uint32_t rank, uint32_t pos, int32_t new_id) {
    if (c->n_heap == c->cap_heap) {
        c->cap_heap = c->cap_heap ? c->cap_heap * 2 : 64;
        c->heap = xrealloc(c->heap, c->cap_heap * sizeof *c->heap);
    }
    size_t i = c->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        struct HeapEnt *h = &c->heap[p];
        if (h->rank < rank || (h->rank == rank && h->pos < pos)) break;
        c->heap[i] = *h;
        i = p;
    }
    c->heap[i] = (struct HeapEnt){rank, pos, new_id};
}

static struct HeapEnt heap_pop(EncCtx *c) {
    struct HeapEnt top = c->heap[0], last = c->heap[--c->n_heap];
    size_t i = 0, n = c->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct HeapEnt *best = &last;
        if (l < n && (c->heap[l].rank < best->rank ||
                      (c->heap[l].rank == best->rank && c->heap[l].pos < best->pos)))
            m = l, best = &c->heap[l];
        if (r < n && (c->heap[r].rank < best->rank ||
                      (c->heap[r].rank == best->rank && c->heap[r].pos < best->pos)))
            m = r, best = &c->heap[r];
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = last;
    return top;
}

static void sym_add(EncCtx *c, size_t *n, int32_t id, uint32_t len) {
    if (*n == c->cap_sym) {
        c->cap_sym = c->cap_sym ? c->cap_sym * 2 : 256;
        c->sym = xrealloc(c->sym, c->cap_sym * sizeof *c->sym);
    }
    c->sym[*n] = (struct Sym){id, (int32_t)*n - 1, (int32_t)*n + 1, len};
    (*n)++;
}

/* HF BPE::merge_word + Word::merge_all on one chunk of a word. */
static void bpe_chunk(const Tokenizer *t, const char *w, size_t len, EncCtx *c, IdVec *out) {
    size_t n = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = utf8_at(w, i, len), e = i + cl;
        int32_t id;
        const char *piece = w + i;
        size_t plen = cl;
        if (!t->prefix && !t->suffix) {
            id = cl <= 3 ? t->cp_id[utf8_cp((const unsigned char *)w + i, cl)]
                         : strmap_get(&t->vocab_map, w + i, cl);
        } else {
            Buf *b = &c->t3;
            b->len = 0;
            if (i > 0 && t->prefix) buf_add(b, t->prefix, t->prefix_len);
            buf_add(b, w + i, cl);
            if (e == len && t->suffix) buf_add(b, t->suffix, t->suffix_len);
            piece = b->p, plen = b->len;
            id = strmap_get(&t->vocab_map, piece, plen);
        }
        if (id >= 0) {
            if (unk_id >= 0) sym_add(c, &n, unk_id, unk_len), unk_id = -1;
            sym_add(c, &n, id, (uint32_t)cl);
        } else {
            int done = 0;
            if (t->byte_fallback) {
                size_t k = 0;
                while (k < plen && t->byte_id[(unsigned char)piece[k]] >= 0)
                    k++;
                if (k == plen) {
                    for (k = 0; k < plen; k++)
                        sym_add(c, &n, t->byte_id[(unsigned char)piece[k]], 1);
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_id >= 0 && t->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk_id >= 0) sym_add(c, &n, unk_id, unk_len);
                    unk_id = t->unk_id, unk_len = (uint32_t)cl;
                }
            }
        }
        i = e;
    }
    if (unk_id >= 0) sym_add(c, &n, unk_id, unk_len);
    if (!n) return;
    c->sym[n - 1].next = -1;

    c->n_heap = 0;
    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < n; i++)
        if (merge_get(&t->merges, c->sym[i].id, c->sym[i + 1].id, &rank, &nid))
            heap_push(c, rank, (uint32_t)i, nid);
    while (c->n_heap) {
        struct HeapEnt top = heap_pop(c);
        struct Sym *s = &c->sym[top.pos];
        if (s->len == 0 || s->next == -1) continue;
        struct Sym *r = &c->sym[s->next];
        if (!merge_get(&t->merges, s->id, r->id, &rank, &nid) || nid != top.new_id) continue;
        s->id = top.new_id;
        s->len += r->len;
        s->next = r->next;
        r->len = 0;
        if (s->next >= 0 && (size_t)s->next < n) c->sym[s->next].prev = (int32_t)top.pos;
        if (s->prev >= 0 && merge_get(&t->merges, c->sym[s->prev].id, s->id, &rank, &nid))
            heap_push(c, rank, (uint32_t)s->prev, nid);
        if (s->next >= 0 && merge_get(&t->merges, s->id, c->sym[s->next].id, &rank, &nid))
            heap_push(c, rank, top.pos, nid);
    }
    for (size_t i = 0; i < n; i++)
        if (c->sym[i].len) ids_push(out, c->sym[i].id);
}

#define META "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* HF BPE::tokenize for one pre-token. With split_meta (see tokenizer_load), a merge can
 * never cross the start of a "▁" that follows another character, so the word is cut there
 * first: same result, but SentencePiece-style input (one word per segment) stays fast. */
static void bpe_word(const Tokenizer *t, const char *w, size_t len, EncCtx *c, IdVec *out) {
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->vocab_map, w, len);
        if (id >= 0) {
            ids_push(out, id);
            return;
        }
    }
    if (!t->split_meta) {
        bpe_chunk(t, w, len, c, out);
        return;
    }
    size_t start = 0, p = 1;
    for (;;) {
        const char *f = p + 3 <= len ? memmem(w + p, len - p, META, 3) : NULL;
        if (!f) break;
        p = (size_t)(f - w);
        if (p >= 3 && !memcmp(w + p - 3, META, 3)) {
            p += 3;
            continue;
        }
        bpe_chunk(t, w + start, p - start, c, out);
        start = p;
        p += 3;
    }
    bpe_chunk(t, w + start, len - start, c, out);
}

// --- encode

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_special,
                     int32_t **ids_out, size_t *n_out, TunaErr *err) {
    *ids_out = NULL;
    *n_out = 0;
    EncCtx c;
    memset(&c, 0, sizeof c);
    matchctx_init(&c.mc);
    Pieces a = {0}, b = {0};
    IdVec ids = {0};
    Buf clean = {0}, norm = {0};
    int rc = 0;
    if (!text) text = "";
    if (!utf8_valid(text, len)) {
        utf8_lossy(&clean, text, len);
        text = clean.p;
        len = clean.len;
    }
    /* 1. added tokens matched on the raw text */
    split_added(t, &t->raw_set, text, len, 1, &c.mc, &a);
    /* 2. normalize each segment, then split out normalized added tokens */
    for (size_t i = 0; i < a.n; i++) {
        const Piece *p = &a.p[i];
        if (p->id >= 0) {
            pieces_token(&b, p->id);
            continue;
        }
        if (t->n_norm) {
            if ((rc = normalize_str(t, a.b.p + p->off, p->len, &norm, &c.mc, err))) goto fail;
            split_added(t, &t->norm_set, norm.p, norm.len, p->origin0, &c.mc, &b);
        } else {
            split_added(t, &t->norm_set, a.b.p + p->off, p->len, p->origin0, &c.mc, &b);
        }
    }
    /* 3. pre-tokenizers */
    for (size_t k = 0; k < t->n_pre; k++) {
        Pieces *in = k % 2 ? &a : &b, *out = k % 2 ? &b : &a;
        out->n = 0;
        out->b.len = 0;
        for (size_t i = 0; i < in->n; i++) {
            const Piece *p = &in->p[i];
            if (p->id >= 0)
                pieces_token(out, p->id);
            else if ((rc = pretok_piece(t, &t->pre[k], in->b.p + p->off, p->len, p->origin0, &c,
                                        out, err)))
                goto fail;
        }
    }
    /* 4. model */
    {
        const Pieces *fin = t->n_pre % 2 ? &a : &b;
        for (size_t i = 0; i < fin->n; i++) {
            const Piece *p = &fin->p[i];
            if (p->id >= 0)
                ids_push(&ids, p->id);
            else
                bpe_word(t, fin->b.p + p->off, p->len, &c, &ids);
        }
    }
    /* 5. post-processor */
    if (add_special) {
        for (size_t k = 0; k < t->n_post; k++) {
            IdVec nv = {0};
            for (size_t i = 0; i < t->post[k].n; i++) {
                const TplItem *it = &t->post[k].items[i];
                if (it->is_seq)
                    for (size_t j = 0; j < ids.n; j++)
                        ids_push(&nv, ids.p[j]);
                else
                    for (size_t j = 0; j < it->n; j++)
                        ids_push(&nv, it->ids[j]);
            }
            free(ids.p);
            ids = nv;
        }
    }
    if (!ids.p) ids.p = xmalloc(sizeof *ids.p);
    *ids_out = ids.p;
    *n_out = ids.n;
    ids.p = NULL;
fail:
    free(ids.p);
    pieces_free(&a);
    pieces_free(&b);
    free(clean.p);
    free(norm.p);
    encctx_free(&c);
    return rc;
}

// --- decode

typedef struct {
    Buf b;
    size_t *off, *len;
    size_t n, cap;
} TokList;

static void tl_add(TokList *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->off = xrealloc(l->off, l->cap * sizeof *l->off);
        l->len = xrealloc(l->len, l->cap * sizeof *l->len);
    }
    l->off[l->n] = l->b.len;
    l->len[l->n] = n;
    l->n++;
    buf_add(&l->b, s, n);
}

static void tl_free(TokList *l) {
    free(l->b.p);
    free(l->off);
    free(l->len);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* "<0xHH>" -> byte (Rust u8::from_str_radix on the two chars, which accepts a leading '+'). */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    if (s[3] == '+') return hexval(s[4]);
    int h = hexval(s[3]), l = hexval(s[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

static void decode_step(const Tokenizer *t, const DecStep *st, const TokList *in, TokList *out,
                        MatchCtx *mc) {
    Buf tmp = {0};
    switch (st->kind) {
    case DEC_REPLACE: {
        Spans sp = {0};
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->b.p + in->off[i];
            tmp.len = 0;
            if (pattern_find(&st->pat, s, in->len[i], mc, &sp, NULL)) {
                buf_add(&tmp, s, in->len[i]);
            } else {
                for (size_t k = 0; k < sp.n; k++) {
                    if (sp.p[k].match)
                        buf_add(&tmp, st->content, st->content_len);
                    else
                        buf_add(&tmp, s + sp.p[k].s, sp.p[k].e - sp.p[k].s);
                }
            }
            tl_add(out, tmp.p ? tmp.p : "", tmp.len);
        }
        free(sp.p);
        break;
    }
    case DEC_BYTEFALLBACK: {
        Buf bytes = {0};
        for (size_t i = 0; i <= in->n; i++) {
            int bv = i < in->n ? byte_token(in->b.p + in->off[i], in->len[i]) : -1;
            if (bv >= 0) {
                char ch = (char)bv;
                buf_add(&bytes, &ch, 1);
                continue;
            }
            if (bytes.len) {
                if (utf8_valid(bytes.p, bytes.len))
                    tl_add(out, bytes.p, bytes.len);
                else
                    for (size_t k = 0; k < bytes.len; k++)
                        tl_add(out, "\xEF\xBF\xBD", 3);
                bytes.len = 0;
            }
            if (i < in->n) tl_add(out, in->b.p + in->off[i], in->len[i]);
        }
        free(bytes.p);
        break;
    }
    case DEC_FUSE:
        tl_add(out, in->b.p ? in->b.p : "", in->b.len); /* tokens are stored back to back */
        break;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->b.p + in->off[i];
            size_t a = 0, e = in->len[i], ps;
            for (size_t k = 0; k < st->start && a < e; k++) {
                size_t cl = utf8_at(s, a, e);
                if (utf8_cp((const unsigned char *)s + a, cl) != st->strip_char) break;
                a += cl;
            }
            for (size_t k = 0; k < st->stop && e > a; k++) {
                if (utf8_prev(s, e, &ps) != st->strip_char) break;
                e = ps;
            }
            tl_add(out, s + a, e - a);
        }
        break;
    case DEC_BYTELEVEL:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->b.p + in->off[i];
            size_t n = in->len[i], k = 0, start = tmp.len;
            while (k < n) {
                size_t cl = utf8_at(s, k, n);
                uint32_t cp = utf8_cp((const unsigned char *)s + k, cl);
                if (cp >= 324 || t->c2b[cp] < 0) break;
                char ch = (char)t->c2b[cp];
                buf_add(&tmp, &ch, 1);
                k += cl;
            }
            if (k < n) { /* a char outside the byte map: the token's own bytes */
                tmp.len = start;
                buf_add(&tmp, s, n);
            }
        }
        {
            Buf lossy = {0};
            utf8_lossy(&lossy, tmp.p ? tmp.p : "", tmp.len);
            tl_add(out, lossy.p ? lossy.p : "", lossy.len);
            free(lossy.p);
        }
        break;
    case DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->b.p + in->off[i];
            tmp.len = 0;
            for (size_t k = 0; k < in->len[i];) {
                size_t cl = utf8_at(s, k, in->len[i]);
                if (utf8_cp((const unsigned char *)s + k, cl) == st->repl) {
                    if (!(i == 0 && st->prepend_scheme != PREPEND_NEVER)) buf_add(&tmp, " ", 1);
                } else {
                    buf_add(&tmp, s + k, cl);
                }
                k += cl;
            }
            tl_add(out, tmp.p ? tmp.p : "", tmp.len);
        }
        break;
    }
    free(tmp.p);
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special) {
    return tokenizer_decode_len(t, ids, n, skip_special, NULL);
}

char *tokenizer_decode_len(const Tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                           size_t *len) {
    TokList a = {0}, b = {0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->dec_str[id]) continue;
        if (skip_special && t->special[id]) continue;
        tl_add(&a, t->dec_str[id], t->dec_len[id]);
    }
    Buf out = {0};
    if (!t->has_decoder) {
        for (size_t i = 0; i < a.n; i++) {
            if (i) buf_add(&out, " ", 1);
            buf_add(&out, a.b.p + a.off[i], a.len[i]);
        }
    } else {
        MatchCtx mc;
        matchctx_init(&mc);
        for (size_t k = 0; k < t->n_dec; k++) {
            b.n = 0;
            b.b.len = 0;
            decode_step(t, &t->dec[k], &a, &b, &mc);
            TokList x = a;
            a = b;
            b = x;
        }
        matchctx_free(&mc);
        for (size_t i = 0; i < a.n; i++)
            buf_add(&out, a.b.p + a.off[i], a.len[i]);
    }
    tl_free(&a);
    tl_free(&b);
    if (!out.p) out.p = xstrdup("");
    if (len) *len = out.len;
    return out.p;
}

// --- accessors

int tokenizer_vocab_size(const Tokenizer *t) {
    return t->n_ids;
}

int tokenizer_token_id(const Tokenizer *t, const char *piece) {
    return piece ? token_id_any(t, piece) : -1;
}

const char *tokenizer_token_str(const Tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids ? t->id_str[id] : NULL;
}

int tokenizer_bos_id(const Tokenizer *t) {
    return t->bos_id;
}

int tokenizer_eos_id(const Tokenizer *t) {
    return t->eos_id;
}

int tokenizer_pad_id(const Tokenizer *t) {
    return t->pad_id;
}

const char *tokenizer_chat_template(const Tokenizer *t) {
    return t->chat_template;
}

int tokenizer_is_special(const Tokenizer *t, int id) {
    return id >= 0 && id < t->n_ids && t->special[id];
}
