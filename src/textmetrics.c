/* textmetrics.c: BLEU-4 (NLTK sentence_bleu + method3), ROUGE-L (rouge_chinese) and exact match,
 * the way LLaMA-Factory's ComputeSimilarity scores a prediction against its label. */
#include "textmetrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

// --- UTF-8 and character classes

/* Decodes the code point at s[*i] and advances *i; an invalid or truncated sequence reads as
 * U+FFFD and advances one byte (as a lossy decode would). */
static uint32_t utf8_next(const unsigned char *s, size_t *i) {
    unsigned c = s[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 1) {
        (*i)++;
        return c;
    }
    if (!len) {
        (*i)++;
        return 0xFFFD;
    }
    uint32_t cp = c & (0x7Fu >> len);
    for (int k = 1; k < len; k++) {
        unsigned b = s[*i + (size_t)k];
        if ((b & 0xC0) != 0x80) { /* also stops at the NUL */
            (*i)++;
            return 0xFFFD;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        (*i)++;
        return 0xFFFD;
    }
    *i += (size_t)len;
    return cp;
}

/* Python's str.isspace() set (what str.split() splits on). */
static int is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int is_alnum_ascii(uint32_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* jieba's re_han_default minus the Chinese range: what it keeps together in one block. */
static int is_block_ascii(uint32_t c) {
    return is_alnum_ascii(c) || c == '+' || c == '#' || c == '&' || c == '.' || c == '_' ||
           c == '%' || c == '-';
}

// --- words (jieba-style for non-Chinese text)

typedef struct Spans {
    size_t *v; /* (2 * n) offset, length */
    size_t n, cap;
} Spans;

static void spans_add(Spans *sp, size_t off, size_t len) {
    if (sp->n == sp->cap) {
        sp->cap = sp->cap ? 2 * sp->cap : 16;
        sp->v = xrealloc(sp->v, sizeof(size_t) * 2 * sp->cap);
    }
    sp->v[2 * sp->n] = off;
    sp->v[2 * sp->n + 1] = len;
    sp->n++;
}

/* A run of [A-Za-z0-9+#&._%-] in [b, e): jieba's finalseg splits it with
 * ([a-zA-Z0-9]+(?:\.\d+)?%?) and keeps the pieces between matches whole. */
static void split_ascii_block(const char *s, size_t b, size_t e, Spans *sp) {
    size_t i = b;
    while (i < e) {
        size_t j = i;
        if (is_alnum_ascii((unsigned char)s[i])) {
            while (j < e && is_alnum_ascii((unsigned char)s[j]))
                j++;
            if (j + 1 < e && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                j++;
                while (j < e && s[j] >= '0' && s[j] <= '9')
                    j++;
            }
            if (j < e && s[j] == '%') j++;
        } else {
            while (j < e && !is_alnum_ascii((unsigned char)s[j]))
                j++;
        }
        spans_add(sp, i, j - i);
        i = j;
    }
}

void textmetrics_words(const char *s, size_t **out, size_t *n_out) {
    Spans sp = {0};
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (u[i]) {
        size_t start = i;
        uint32_t c = utf8_next(u, &i);
        if (is_space_cp(c)) continue;
        if (c < 0x80 && is_block_ascii(c)) {
            while (u[i] < 0x80 && u[i] && is_block_ascii(u[i]))
                i++;
            split_ascii_block(s, start, i, &sp);
        } else {
            spans_add(&sp, start, i - start); /* punctuation, CJK, any other character */
        }
    }
    *out = sp.v ? sp.v : xmalloc(sizeof(size_t) * 2);
    *n_out = sp.n;
}

typedef struct Word {
    const char *p;
    size_t len;
    size_t idx; /* position in the combined hyp + ref list */
} Word;

static int word_cmp(const void *a, const void *b) {
    const Word *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Words of a and b as ids (equal words, equal ids): *ids = (na + nb), a's first. */
static void words_to_ids(const char *a, const char *b, uint32_t **ids, size_t *na, size_t *nb) {
    size_t *wa, *wb;
    textmetrics_words(a, &wa, na);
    textmetrics_words(b, &wb, nb);
    size_t n = *na + *nb;
    Word *w = xmalloc(sizeof(Word) * (n ? n : 1));
    for (size_t i = 0; i < *na; i++)
        w[i] = (Word){a + wa[2 * i], wa[2 * i + 1], i};
    for (size_t i = 0; i < *nb; i++)
        w[*na + i] = (Word){b + wb[2 * i], wb[2 * i + 1], *na + i};
    qsort(w, n, sizeof(Word), word_cmp);
    *ids = xmalloc(sizeof(uint32_t) * (n ? n : 1));
    uint32_t id = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && word_cmp(&w[i - 1], &w[i])) id++;
        (*ids)[w[i].idx] = id;
    }
    free(w);
    free(wa);
    free(wb);
}

/* Code points of s: *cp (malloc'd, n). */
static uint32_t *chars_of(const char *s, size_t *n) {
    size_t len = strlen(s), i = 0, k = 0;
    uint32_t *cp = xmalloc(sizeof(uint32_t) * (len ? len : 1));
    while (i < len)
        cp[k++] = utf8_next((const unsigned char *)s, &i);
    *n = k;
    return cp;
}

// --- BLEU-4

typedef struct Gram {
    uint64_t a, b; /* up to 4 tokens, 32 bits each */
} Gram;

static int gram_cmp(const void *x, const void *y) {
    const Gram *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    if (p->b != q->b) return p->b < q->b ? -1 : 1;
    return 0;
}

/* Sorted n-grams of t (len - n + 1 of them, or none). */
static Gram *grams_of(const uint32_t *t, size_t len, int n, size_t *count) {
    size_t c = len >= (size_t)n ? len - (size_t)n + 1 : 0;
    Gram *g = xmalloc(sizeof(Gram) * (c ? c : 1));
    for (size_t i = 0; i < c; i++) {
        uint64_t k[4] = {0, 0, 0, 0};
        for (int j = 0; j < n; j++)
            k[j] = t[i + (size_t)j];
        g[i] = (Gram){k[0] << 32 | k[1], k[2] << 32 | k[3]};
    }
    qsort(g, c, sizeof(Gram), gram_cmp);
    *count = c;
    return g;
}

/* NLTK modified_precision: matches of hyp's n-grams clipped by their count in ref. */
static size_t clipped_matches(const Gram *h, size_t nh, const Gram *r, size_t nr) {
    size_t i = 0, j = 0, m = 0;
    while (i < nh) {
        size_t i2 = i;
        while (i2 < nh && !gram_cmp(&h[i], &h[i2]))
            i2++;
        while (j < nr && gram_cmp(&r[j], &h[i]) < 0)
            j++;
        size_t j2 = j;
        while (j2 < nr && !gram_cmp(&r[j2], &h[i]))
            j2++;
        size_t ch = i2 - i, cr = j2 - j;
        m += ch < cr ? ch : cr;
        i = i2;
        j = j2;
    }
    return m;
}

double textmetrics_bleu4_tokens(const uint32_t *hyp, size_t n_hyp, const uint32_t *ref,
                                size_t n_ref) {
    double num[4], den[4];
    for (int n = 1; n <= 4; n++) {
        size_t ch, cr;
        Gram *h = grams_of(hyp, n_hyp, n, &ch), *r = grams_of(ref, n_ref, n, &cr);
        num[n - 1] = (double)clipped_matches(h, ch, r, cr);
        den[n - 1] = (double)(ch > 1 ? ch : 1); /* NLTK: max(1, hyp n-grams) */
        free(h);
        free(r);
    }
    if (num[0] == 0) return 0; /* also covers an empty hypothesis */
    double bp = n_hyp > n_ref ? 1.0 : exp(1.0 - (double)n_ref / (double)n_hyp);
    double s = 0, k = 1; /* method3: the k-th zero precision becomes 1 / (2^k * denominator) */
    for (int n = 0; n < 4; n++) {
        double p = num[n] / den[n];
        if (num[n] == 0) {
            k *= 2;
            p = 1.0 / (k * den[n]);
        }
        s += 0.25 * log(p);
    }
    return bp * exp(s);
}

// --- ROUGE-L

double textmetrics_rouge_l_tokens(const uint32_t *hyp, size_t n_hyp, const uint32_t *ref,
                                  size_t n_ref) {
    if (!n_hyp || !n_ref) return 0;
    size_t *prev = xcalloc(n_hyp + 1, sizeof(size_t)), *cur = xcalloc(n_hyp + 1, sizeof(size_t));
    for (size_t i = 1; i <= n_ref; i++) {
        for (size_t j = 1; j <= n_hyp; j++) {
            if (ref[i - 1] == hyp[j - 1])
                cur[j] = prev[j - 1] + 1;
            else
                cur[j] = prev[j] > cur[j - 1] ? prev[j] : cur[j - 1];
        }
        size_t *t = prev;
        prev = cur;
        cur = t;
    }
    double lcs = (double)prev[n_hyp];
    free(prev);
    free(cur);
    double r = lcs / (double)n_ref, p = lcs / (double)n_hyp;
    return 2.0 * ((p * r) / (p + r + 1e-8));
}

// --- the string-level scores

static double round4(double x) {
    return round(x * 1e4) / 1e4;
}

double textmetrics_bleu4(const char *pred, const char *ref) {
    size_t nh, nr;
    uint32_t *h = chars_of(pred, &nh), *r = chars_of(ref, &nr);
    double s = textmetrics_bleu4_tokens(h, nh, r, nr);
    free(h);
    free(r);
    return round4(s * 100);
}

double textmetrics_rouge_l(const char *pred, const char *ref) {
    uint32_t *ids;
    size_t nh, nr;
    words_to_ids(pred, ref, &ids, &nh, &nr);
    double s = textmetrics_rouge_l_tokens(ids, nh, ids + nh, nr);
    free(ids);
    return round4(s * 100);
}

static void trim_span(const char *s, size_t *b, size_t *e) {
    *b = 0;
    *e = strlen(s);
    while (*b < *e && strchr(" \t\n\r\v\f", s[*b]))
        (*b)++;
    while (*e > *b && strchr(" \t\n\r\v\f", s[*e - 1]))
        (*e)--;
}

static int lower_ascii(int c) {
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

int textmetrics_exact_match(const char *pred, const char *ref) {
    size_t pb, pe, rb, re;
    trim_span(pred, &pb, &pe);
    trim_span(ref, &rb, &re);
    if (pe - pb != re - rb) return 0;
    for (size_t i = 0; i < pe - pb; i++)
        if (lower_ascii((unsigned char)pred[pb + i]) != lower_ascii((unsigned char)ref[rb + i]))
            return 0;
    return 1;
}
