/* jinja.c: the Jinja2 subset of jinja.h. Three stages: the lexer turns the (newline-normalized)
 * source into tokens, applying whitespace control; the parser builds a tree of nodes; the
 * renderer walks it. Every allocation of a parse or a render comes from an arena owned by that
 * stage, so an error anywhere longjmps back to the entry point, which frees the arena: nothing
 * leaks and no partial state survives. */
#include "jinja.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// --- arena

typedef struct Block {
    struct Block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} Block;

typedef struct Arena {
    Block *head;
    size_t total, limit;
} Arena;

#define ARENA_LIMIT ((size_t)256 << 20)

typedef struct Ctx {
    jmp_buf jb;
    TunaErr *err;
    int code;
    Arena *arena;
    const char *src; /* normalized source, for line:col */
    const char *name;
} Ctx;

static void fail_at(Ctx *c, size_t pos, const char *fmt, ...)
        __attribute__((noreturn, format(printf, 3, 4)));

static void pos_to_lc(const char *src, size_t pos, int *line, int *col) {
    int l = 1, k = 1;
    for (size_t i = 0; i < pos && src[i]; i++) {
        if (src[i] == '\n') {
            l++;
            k = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            k++;
        }
    }
    *line = l;
    *col = k;
}

static void fail_at(Ctx *c, size_t pos, const char *fmt, ...) {
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    int line, col;
    pos_to_lc(c->src, pos, &line, &col);
    tuna_errf(c->err, c->code ? c->code : TUNA_EFORMAT, "%s:%d:%d: %s", c->name, line, col, msg);
    longjmp(c->jb, 1);
}

static void *arena_alloc(Ctx *c, size_t n) {
    Arena *a = c->arena;
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit) {
            c->code = TUNA_EINVAL;
            fail_at(c, 0, "template needs more than %zu MB of memory", a->limit >> 20);
        }
        Block *b = malloc(sizeof(Block) + cap);
        if (!b) {
            c->code = TUNA_ENOMEM;
            fail_at(c, 0, "out of memory");
        }
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

static void arena_free(Arena *a) {
    Block *b = a->head;
    while (b) {
        Block *nx = b->next;
        free(b);
        b = nx;
    }
    a->head = NULL;
    a->total = 0;
}

static char *astrndup(Ctx *c, const char *s, size_t n) {
    char *p = arena_alloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

// --- lexer

enum {
    T_TEXT,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
    T_EOF
};

typedef struct Tok {
    int kind;
    size_t pos;
    const char *s; /* text/name/string value/op */
    size_t n;
    long long i;
    double f;
} Tok;

typedef struct Lexer {
    Ctx *c;
    const char *src;
    size_t len;
    Tok *toks;
    int n, cap;
} Lexer;

static Tok *tok_push(Lexer *L, int kind, size_t pos) {
    if (L->n == L->cap) {
        int nc = L->cap ? L->cap * 2 : 256;
        Tok *t = arena_alloc(L->c, (size_t)nc * sizeof(Tok));
        if (L->n) memcpy(t, L->toks, (size_t)L->n * sizeof(Tok));
        L->toks = t;
        L->cap = nc;
    }
    Tok *t = &L->toks[L->n++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->pos = pos;
    return t;
}

static int is_ws(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}
static int is_id0(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}
static int is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

static size_t utf8_put(char *o, unsigned long cp) {
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* A string literal starting at src[p] (the quote); Python unicode-escape rules. */
static size_t lex_string(Lexer *L, size_t p) {
    char q = L->src[p];
    size_t start = p++;
    char *o = arena_alloc(L->c, L->len - p + 1);
    size_t n = 0;
    while (p < L->len && L->src[p] != q) {
        char ch = L->src[p];
        if (ch != '\\') {
            o[n++] = ch;
            p++;
            continue;
        }
        if (p + 1 >= L->len) break;
        char e = L->src[p + 1];
        p += 2;
        switch (e) {
        case 'n': o[n++] = '\n'; break;
        case 't': o[n++] = '\t'; break;
        case 'r': o[n++] = '\r'; break;
        case '\\': o[n++] = '\\'; break;
        case '\'': o[n++] = '\''; break;
        case '"': o[n++] = '"'; break;
        case 'a': o[n++] = '\a'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'v': o[n++] = '\v'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
            int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            unsigned long cp = 0;
            for (int k = 0; k < want; k++) {
                int h = p < L->len ? hexval(L->src[p]) : -1;
                if (h < 0) fail_at(L->c, p, "bad \\%c escape in a string", e);
                cp = cp * 16 + (unsigned long)h;
                p++;
            }
            n += utf8_put(o + n, cp);
            break;
        }
        default:
            if (e >= '0' && e <= '7') {
                unsigned long cp = (unsigned long)(e - '0');
                for (int k = 0; k < 2 && p < L->len && L->src[p] >= '0' && L->src[p] <= '7'; k++)
                    cp = cp * 8 + (unsigned long)(L->src[p++] - '0');
                n += utf8_put(o + n, cp);
            } else {
                o[n++] = '\\';
                o[n++] = e;
            }
        }
    }
    if (p >= L->len) fail_at(L->c, start, "unterminated string");
    Tok *t = tok_push(L, T_STRING, start);
    t->s = o;
    t->n = n;
    return p + 1;
}

static const char *const OPS2[] = {"//", "**", "==", "!=", "<=", ">="};

/* Lexes the inside of a tag from p to its end marker; returns the position after the marker.
 * *strip_after: the end marker had '-'; *plus_after: '+' (no trim_blocks). */
static size_t lex_tag(Lexer *L, size_t p, char endch, int *strip_after, int *plus_after) {
    int depth = 0;
    size_t open = p;
    for (;;) {
        while (p < L->len && is_ws(L->src[p]))
            p++;
        if (p >= L->len) fail_at(L->c, open, "tag not closed");
        const char *s = L->src + p;
        size_t rest = L->len - p;
        if (depth == 0) {
            if ((s[0] == '-' || s[0] == '+') && rest >= 3 && s[1] == endch && s[2] == '}') {
                *strip_after = s[0] == '-';
                *plus_after = s[0] == '+';
                return p + 3;
            }
            if (rest >= 2 && s[0] == endch && s[1] == '}') return p + 2;
        }
        char ch = s[0];
        if (ch == '\'' || ch == '"') {
            p = lex_string(L, p);
        } else if (is_id0(ch)) {
            size_t q = p;
            while (q < L->len && (is_id0(L->src[q]) || is_digit(L->src[q])))
                q++;
            Tok *t = tok_push(L, T_NAME, p);
            t->s = L->src + p;
            t->n = q - p;
            p = q;
        } else if (is_digit(ch)) {
            size_t q = p;
            int isf = 0;
            char buf[64];
            size_t bn = 0;
            while (q < L->len && (is_digit(L->src[q]) || L->src[q] == '_')) {
                if (L->src[q] != '_' && bn < 60) buf[bn++] = L->src[q];
                q++;
            }
            if (q + 1 < L->len && L->src[q] == '.' && is_digit(L->src[q + 1])) {
                isf = 1;
                buf[bn++] = '.';
                q++;
                while (q < L->len && (is_digit(L->src[q]) || L->src[q] == '_')) {
                    if (L->src[q] != '_' && bn < 60) buf[bn++] = L->src[q];
                    q++;
                }
            }
            if (q < L->len && (L->src[q] == 'e' || L->src[q] == 'E')) {
                size_t r = q + 1;
                if (r < L->len && (L->src[r] == '+' || L->src[r] == '-')) r++;
                if (r < L->len && is_digit(L->src[r])) {
                    isf = 1;
                    if (bn < 60) buf[bn++] = 'e';
                    if (L->src[q + 1] == '-' && bn < 60) buf[bn++] = '-';
                    q = r;
                    while (q < L->len && is_digit(L->src[q])) {
                        if (bn < 62) buf[bn++] = L->src[q];
                        q++;
                    }
                }
            }
            buf[bn] = 0;
            Tok *t = tok_push(L, isf ? T_FLOAT : T_INT, p);
            if (isf) {
                t->f = strtod(buf, NULL);
            } else {
                unsigned long long v = strtoull(buf, NULL, 10);
                if (bn > 19 || v > (unsigned long long)INT64_MAX)
                    fail_at(L->c, p, "integer literal too large");
                t->i = (long long)v;
            }
            p = q;
        } else {
            int len = 0;
            for (size_t k = 0; k < sizeof OPS2 / sizeof OPS2[0]; k++)
                if (rest >= 2 && s[0] == OPS2[k][0] && s[1] == OPS2[k][1]) len = 2;
            if (!len && strchr("+-*/%~()[]{}.,:|=<>", ch)) len = 1;
            if (!len) fail_at(L->c, p, "unexpected character '%c' in a tag", ch);
            if (ch == '(' || ch == '[' || ch == '{') depth++;
            if ((ch == ')' || ch == ']' || ch == '}') && depth > 0) depth--;
            Tok *t = tok_push(L, T_OP, p);
            t->s = L->src + p;
            t->n = (size_t)len;
            p += (size_t)len;
        }
    }
}

static void lex(Lexer *L) {
    size_t p = 0;
    int strip_next = 0; /* previous tag ended with '-' */
    while (p <= L->len) {
        /* find the next tag start */
        size_t q = p;
        int kind = 0;
        while (q + 1 < L->len) {
            if (L->src[q] == '{' &&
                (L->src[q + 1] == '{' || L->src[q + 1] == '%' || L->src[q + 1] == '#')) {
                kind = L->src[q + 1];
                break;
            }
            q++;
        }
        if (!kind) q = L->len;
        size_t ts = p, te = q;
        if (strip_next)
            while (ts < te && is_ws(L->src[ts]))
                ts++;
        char mod = kind && q + 2 < L->len ? L->src[q + 2] : 0;
        if (kind && mod == '-') {
            while (te > ts && is_ws(L->src[te - 1]))
                te--;
        } else if (kind && kind != '{' && mod != '+') {
            /* lstrip_blocks: spaces/tabs from the line start to a block or comment tag */
            size_t l = te;
            while (l > ts && L->src[l - 1] != '\n')
                l--;
            int line_start = l > ts || (l == 0) || L->src[l - 1] == '\n';
            int all_ws = l < te;
            for (size_t k = l; k < te; k++)
                if (!is_ws(L->src[k])) all_ws = 0;
            if (line_start && all_ws) te = l;
        }
        if (te > ts) {
            Tok *t = tok_push(L, T_TEXT, ts);
            t->s = L->src + ts;
            t->n = te - ts;
        }
        if (!kind) break;
        size_t body = q + 2 + (mod == '-' || mod == '+' ? 1 : 0);
        int strip_after = 0, plus_after = 0;
        if (kind == '#') {
            size_t r = body;
            while (r + 1 < L->len && !(L->src[r] == '#' && L->src[r + 1] == '}'))
                r++;
            if (r + 1 >= L->len) fail_at(L->c, q, "comment not closed");
            strip_after = r > body && L->src[r - 1] == '-';
            plus_after = r > body && L->src[r - 1] == '+';
            p = r + 2;
        } else if (kind == '{') {
            tok_push(L, T_VAR_BEGIN, q);
            p = lex_tag(L, body, '}', &strip_after, &plus_after);
            tok_push(L, T_VAR_END, p - 2);
            plus_after = 1; /* trim_blocks is for blocks only */
        } else {
            tok_push(L, T_BLOCK_BEGIN, q);
            p = lex_tag(L, body, '%', &strip_after, &plus_after);
            tok_push(L, T_BLOCK_END, p - 2);
        }
        strip_next = strip_after;
        if (!strip_after && !plus_after && p < L->len && L->src[p] == '\n') p++;
    }
    tok_push(L, T_EOF, L->len);
}

// --- values

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_MACRO, V_LOOP };

typedef struct List List;
typedef struct Dict Dict;
typedef struct Node Node;

typedef struct Val {
    int t;
    union {
        long long i;
        double f;
        struct {
            const char *s;
            size_t n;
        } s;
        List *l;
        Dict *d;
        const Node *m;
    } u;
} Val;

struct List {
    Val *v;
    size_t n;
    int tuple; /* printed (a, b) */
};

struct Dict {
    Val *k, *v;
    size_t n, cap;
};

// --- tree

enum {
    N_TEXT,
    N_OUT,
    N_IF,
    N_FOR,
    N_SET,
    N_SETBLOCK,
    N_MACRO,
    N_BREAK,
    N_CONTINUE,
    N_BODY,
    /* expressions */
    E_LIT,
    E_NAME,
    E_ATTR,
    E_ITEM,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_BIN,
    E_NEG,
    E_POS,
    E_NOT,
    E_AND,
    E_OR,
    E_COND,
    E_LIST,
    E_DICT
};

struct Node {
    int kind;
    size_t pos;
    const char *name;  /* NUL-terminated: variable, attribute, filter, test, op, macro */
    const char *name2; /* set ns.attr: the attribute */
    Val lit;
    Node *a, *b, *c;
    Node **items;       /* args / body / list items / dict keys / if conditions */
    Node **items2;      /* kwarg values / dict values / if bodies */
    const char **names; /* kwarg names / for targets / macro params */
    int n, n2, nnames;
    int negate; /* is not */
};

typedef struct Parser {
    Ctx *c;
    Tok *t;
    int i;
    int depth;
} Parser;

static Node *node(Parser *P, int kind, size_t pos) {
    Node *n = arena_alloc(P->c, sizeof(Node));
    n->kind = kind;
    n->pos = pos;
    return n;
}

typedef struct NodeVec {
    Node **v;
    int n, cap;
} NodeVec;

static void nv_push(Ctx *c, NodeVec *v, Node *x) {
    if (v->n == v->cap) {
        int nc = v->cap ? v->cap * 2 : 4;
        Node **p = arena_alloc(c, (size_t)nc * sizeof(Node *));
        if (v->n) memcpy(p, v->v, (size_t)v->n * sizeof(Node *));
        v->v = p;
        v->cap = nc;
    }
    v->v[v->n++] = x;
}

typedef struct StrVec {
    const char **v;
    int n, cap;
} StrVec;

static void sv_push(Ctx *c, StrVec *v, const char *x) {
    if (v->n == v->cap) {
        int nc = v->cap ? v->cap * 2 : 4;
        const char **p = arena_alloc(c, (size_t)nc * sizeof(char *));
        if (v->n) memcpy(p, v->v, (size_t)v->n * sizeof(char *));
        v->v = p;
        v->cap = nc;
    }
    v->v[v->n++] = x;
}

static Tok *cur(Parser *P) {
    return &P->t[P->i];
}
static int is_op(Tok *t, const char *op) {
    return t->kind == T_OP && t->n == strlen(op) && memcmp(t->s, op, t->n) == 0;
}
static int is_name(Tok *t, const char *nm) {
    return t->kind == T_NAME && t->n == strlen(nm) && memcmp(t->s, nm, t->n) == 0;
}

static const char *tok_desc(Tok *t, char *buf, size_t cap) {
    switch (t->kind) {
    case T_NAME:
    case T_OP: snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); break;
    case T_STRING: snprintf(buf, cap, "a string"); break;
    case T_INT:
    case T_FLOAT: snprintf(buf, cap, "a number"); break;
    case T_VAR_END: snprintf(buf, cap, "'}}'"); break;
    case T_BLOCK_END: snprintf(buf, cap, "'%%}'"); break;
    case T_EOF: snprintf(buf, cap, "the end of the template"); break;
    default: snprintf(buf, cap, "text"); break;
    }
    return buf;
}

static void expect_op(Parser *P, const char *op) {
    if (!is_op(cur(P), op)) {
        char b[64];
        fail_at(P->c, cur(P)->pos, "expected '%s', found %s", op, tok_desc(cur(P), b, sizeof b));
    }
    P->i++;
}

static const char *expect_name(Parser *P) {
    Tok *t = cur(P);
    if (t->kind != T_NAME) {
        char b[64];
        fail_at(P->c, t->pos, "expected a name, found %s", tok_desc(t, b, sizeof b));
    }
    P->i++;
    return astrndup(P->c, t->s, t->n);
}

static void expect_block_end(Parser *P) {
    if (cur(P)->kind != T_BLOCK_END) {
        char b[64];
        fail_at(P->c, cur(P)->pos, "expected '%%}', found %s", tok_desc(cur(P), b, sizeof b));
    }
    P->i++;
}

static void enter(Parser *P) {
    if (++P->depth > JINJA_MAX_DEPTH)
        fail_at(P->c, cur(P)->pos, "nested deeper than %d", JINJA_MAX_DEPTH);
}

static Node *parse_expr(Parser *P);
static Node *parse_or(Parser *P);
static Node *parse_unary(Parser *P, int with_filter);

static void parse_args(Parser *P, Node *n) {
    /* after '(' : positional and name=value arguments, until ')' */
    NodeVec args = {0}, kv = {0};
    StrVec kn = {0};
    while (!is_op(cur(P), ")")) {
        if (args.n + kv.n) expect_op(P, ",");
        if (is_op(cur(P), ")")) break;
        if (cur(P)->kind == T_NAME && is_op(&P->t[P->i + 1], "=")) {
            sv_push(P->c, &kn, expect_name(P));
            P->i++;
            nv_push(P->c, &kv, parse_expr(P));
        } else {
            if (kv.n) fail_at(P->c, cur(P)->pos, "positional argument after a keyword argument");
            nv_push(P->c, &args, parse_expr(P));
        }
    }
    P->i++;
    n->items = args.v;
    n->n = args.n;
    n->items2 = kv.v;
    n->names = kn.v;
    n->nnames = kn.n;
}

static Node *parse_primary(Parser *P) {
    Tok *t = cur(P);
    enter(P);
    Node *n;
    if (t->kind == T_STRING) {
        n = node(P, E_LIT, t->pos);
        n->lit.t = V_STR;
        /* adjacent literals concatenate */
        size_t total = 0;
        int k = P->i;
        while (P->t[k].kind == T_STRING)
            total += P->t[k++].n;
        char *s = arena_alloc(P->c, total + 1);
        size_t o = 0;
        while (cur(P)->kind == T_STRING) {
            memcpy(s + o, cur(P)->s, cur(P)->n);
            o += cur(P)->n;
            P->i++;
        }
        n->lit.u.s.s = s;
        n->lit.u.s.n = total;
    } else if (t->kind == T_INT) {
        n = node(P, E_LIT, t->pos);
        n->lit.t = V_INT;
        n->lit.u.i = t->i;
        P->i++;
    } else if (t->kind == T_FLOAT) {
        n = node(P, E_LIT, t->pos);
        n->lit.t = V_FLOAT;
        n->lit.u.f = t->f;
        P->i++;
    } else if (t->kind == T_NAME) {
        P->i++;
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") ||
            is_name(t, "False")) {
            n = node(P, E_LIT, t->pos);
            n->lit.t = V_BOOL;
            n->lit.u.i = t->s[0] == 't' || t->s[0] == 'T';
        } else if (is_name(t, "none") || is_name(t, "None")) {
            n = node(P, E_LIT, t->pos);
            n->lit.t = V_NONE;
        } else {
            n = node(P, E_NAME, t->pos);
            n->name = astrndup(P->c, t->s, t->n);
        }
    } else if (is_op(t, "(")) {
        P->i++;
        if (is_op(cur(P), ")")) {
            P->i++;
            n = node(P, E_LIST, t->pos); /* () : empty tuple */
            n->negate = 1;
        } else {
            n = parse_expr(P);
            if (is_op(cur(P), ",")) { /* a tuple */
                NodeVec v = {0};
                nv_push(P->c, &v, n);
                while (is_op(cur(P), ",")) {
                    P->i++;
                    if (is_op(cur(P), ")")) break;
                    nv_push(P->c, &v, parse_expr(P));
                }
                n = node(P, E_LIST, t->pos);
                n->negate = 1; /* a tuple */
                n->items = v.v;
                n->n = v.n;
            }
            expect_op(P, ")");
        }
    } else if (is_op(t, "[")) {
        P->i++;
        NodeVec v = {0};
        while (!is_op(cur(P), "]")) {
            if (v.n) expect_op(P, ",");
            if (is_op(cur(P), "]")) break;
            nv_push(P->c, &v, parse_expr(P));
        }
        P->i++;
        n = node(P, E_LIST, t->pos);
        n->items = v.v;
        n->n = v.n;
    } else if (is_op(t, "{")) {
        P->i++;
        NodeVec k = {0}, v = {0};
        while (!is_op(cur(P), "}")) {
            if (k.n) expect_op(P, ",");
            if (is_op(cur(P), "}")) break;
            nv_push(P->c, &k, parse_expr(P));
            expect_op(P, ":");
            nv_push(P->c, &v, parse_expr(P));
        }
        P->i++;
        n = node(P, E_DICT, t->pos);
        n->items = k.v;
        n->items2 = v.v;
        n->n = k.n;
    } else {
        char b[64];
        fail_at(P->c, t->pos, "expected an expression, found %s", tok_desc(t, b, sizeof b));
    }
    P->depth--;
    return n;
}

static Node *parse_postfix(Parser *P, Node *n) {
    for (;;) {
        Tok *t = cur(P);
        if (is_op(t, ".")) {
            P->i++;
            Node *x = node(P, E_ATTR, t->pos);
            x->a = n;
            if (cur(P)->kind == T_INT) { /* x.0 */
                x->kind = E_ITEM;
                x->b = node(P, E_LIT, cur(P)->pos);
                x->b->lit.t = V_INT;
                x->b->lit.u.i = cur(P)->i;
                P->i++;
            } else {
                x->name = expect_name(P);
            }
            n = x;
        } else if (is_op(t, "[")) {
            P->i++;
            Node *parts[3] = {NULL, NULL, NULL};
            int k = 0, slice = 0;
            for (;;) {
                if (is_op(cur(P), "]")) break;
                if (is_op(cur(P), ":")) {
                    if (++k > 2) fail_at(P->c, cur(P)->pos, "too many ':' in a slice");
                    slice = 1;
                    P->i++;
                    continue;
                }
                if (parts[k]) expect_op(P, "]");
                parts[k] = parse_expr(P);
            }
            P->i++;
            Node *x = node(P, slice ? E_SLICE : E_ITEM, t->pos);
            x->a = n;
            if (!slice && !parts[0]) fail_at(P->c, t->pos, "empty subscript");
            x->b = parts[0];
            x->c = parts[1];
            if (slice) {
                x->items = arena_alloc(P->c, sizeof(Node *));
                x->items[0] = parts[2];
            }
            n = x;
        } else if (is_op(t, "(")) {
            P->i++;
            Node *x = node(P, E_CALL, t->pos);
            x->a = n;
            parse_args(P, x);
            n = x;
        } else {
            return n;
        }
    }
}

static Node *parse_filters(Parser *P, Node *n) {
    for (;;) {
        Tok *t = cur(P);
        if (is_op(t, "|")) {
            P->i++;
            Node *x = node(P, E_FILTER, cur(P)->pos);
            x->name = expect_name(P);
            while (is_op(cur(P), ".")) { /* dotted filter names are not supported: error below */
                P->i++;
                expect_name(P);
                x->name = "?";
            }
            x->a = n;
            if (is_op(cur(P), "(")) {
                P->i++;
                parse_args(P, x);
            }
            n = x;
        } else if (is_name(t, "is")) {
            P->i++;
            Node *x = node(P, E_TEST, cur(P)->pos);
            if (is_name(cur(P), "not")) {
                x->negate = 1;
                P->i++;
            }
            if (is_name(cur(P), "none") || is_name(cur(P), "true") || is_name(cur(P), "false")) {
                x->name = astrndup(P->c, cur(P)->s, cur(P)->n);
                P->i++;
            } else {
                x->name = expect_name(P);
            }
            x->a = n;
            if (is_op(cur(P), "(")) {
                P->i++;
                parse_args(P, x);
            } else {
                Tok *u = cur(P);
                /* one bare argument: `is divisibleby 3`, `is sameas none` */
                if (u->kind == T_STRING || u->kind == T_INT || u->kind == T_FLOAT ||
                    (u->kind == T_NAME && !is_name(u, "and") && !is_name(u, "or") &&
                     !is_name(u, "else") && !is_name(u, "if") && !is_name(u, "in") &&
                     !is_name(u, "not") && !is_name(u, "is"))) {
                    x->items = arena_alloc(P->c, sizeof(Node *));
                    x->items[0] = parse_primary(P);
                    x->n = 1;
                }
            }
            n = x;
        } else {
            return n;
        }
    }
}

static Node *parse_unary(Parser *P, int with_filter) {
    Tok *t = cur(P);
    enter(P);
    Node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        P->i++;
        n = node(P, is_op(t, "-") ? E_NEG : E_POS, t->pos);
        n->a = parse_unary(P, 0);
    } else {
        n = parse_postfix(P, parse_primary(P));
    }
    if (with_filter) n = parse_filters(P, n);
    P->depth--;
    return n;
}

static Node *binop(Parser *P, const char *op, size_t pos, Node *a, Node *b) {
    Node *n = node(P, E_BIN, pos);
    n->name = op;
    n->a = a;
    n->b = b;
    return n;
}

static Node *parse_pow(Parser *P) {
    Node *n = parse_unary(P, 1);
    while (is_op(cur(P), "**")) {
        size_t pos = cur(P)->pos;
        P->i++;
        n = binop(P, "**", pos, n, parse_unary(P, 1));
    }
    return n;
}

static Node *parse_math2(Parser *P) {
    Node *n = parse_pow(P);
    for (;;) {
        Tok *t = cur(P);
        const char *op = is_op(t, "*")    ? "*"
                         : is_op(t, "/")  ? "/"
                         : is_op(t, "//") ? "//"
                         : is_op(t, "%")  ? "%"
                                          : NULL;
        if (!op) return n;
        P->i++;
        n = binop(P, op, t->pos, n, parse_pow(P));
    }
}

static Node *parse_concat(Parser *P) {
    Node *n = parse_math2(P);
    while (is_op(cur(P), "~")) {
        size_t pos = cur(P)->pos;
        P->i++;
        n = binop(P, "~", pos, n, parse_math2(P));
    }
    return n;
}

static Node *parse_math1(Parser *P) {
    Node *n = parse_concat(P);
    for (;;) {
        Tok *t = cur(P);
        const char *op = is_op(t, "+") ? "+" : is_op(t, "-") ? "-" : NULL;
        if (!op) return n;
        P->i++;
        n = binop(P, op, t->pos, n, parse_concat(P));
    }
}

static Node *parse_compare(Parser *P) {
    Node *n = parse_math1(P);
    for (;;) {
        Tok *t = cur(P);
        const char *op = NULL;
        if (is_op(t, "=="))
            op = "==";
        else if (is_op(t, "!="))
            op = "!=";
        else if (is_op(t, "<"))
            op = "<";
        else if (is_op(t, ">"))
            op = ">";
        else if (is_op(t, "<="))
            op = "<=";
        else if (is_op(t, ">="))
            op = ">=";
        else if (is_name(t, "in"))
            op = "in";
        else if (is_name(t, "not") && is_name(&P->t[P->i + 1], "in")) {
            op = "not in";
            P->i++;
        }
        if (!op) return n;
        P->i++;
        n = binop(P, op, t->pos, n, parse_math1(P));
    }
}

static Node *parse_not(Parser *P) {
    if (is_name(cur(P), "not")) {
        Node *n = node(P, E_NOT, cur(P)->pos);
        P->i++;
        enter(P);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static Node *parse_and(Parser *P) {
    Node *n = parse_not(P);
    while (is_name(cur(P), "and")) {
        Node *x = node(P, E_AND, cur(P)->pos);
        P->i++;
        x->a = n;
        x->b = parse_not(P);
        n = x;
    }
    return n;
}

static Node *parse_or(Parser *P) {
    Node *n = parse_and(P);
    while (is_name(cur(P), "or")) {
        Node *x = node(P, E_OR, cur(P)->pos);
        P->i++;
        x->a = n;
        x->b = parse_and(P);
        n = x;
    }
    return n;
}

static Node *parse_expr(Parser *P) {
    enter(P);
    Node *n = parse_or(P);
    while (is_name(cur(P), "if")) {
        Node *x = node(P, E_COND, cur(P)->pos);
        P->i++;
        x->a = n;
        x->b = parse_or(P);
        if (is_name(cur(P), "else")) {
            P->i++;
            x->c = parse_expr(P);
        }
        n = x;
    }
    P->depth--;
    return n;
}

/* body until {% one-of-ends %}; leaves P at the end tag's name */
static Node *parse_body(Parser *P, const char *const *ends, int n_ends);

static int at_end_tag(Parser *P, const char *const *ends, int n_ends) {
    if (cur(P)->kind != T_BLOCK_BEGIN) return 0;
    Tok *t = &P->t[P->i + 1];
    for (int k = 0; k < n_ends; k++)
        if (is_name(t, ends[k])) return 1;
    return 0;
}

/* {% if %} ... {% elif %} ... {% else %} ... {% endif %}, the tag name at t. */
static Node *parse_if(Parser *P, Tok *t) {
    P->i++;
    Node *n = node(P, N_IF, t->pos);
    NodeVec conds = {0}, bodies = {0};
    nv_push(P->c, &conds, parse_expr(P));
    expect_block_end(P);
    static const char *const ends[] = {"elif", "else", "endif"};
    for (;;) {
        nv_push(P->c, &bodies, parse_body(P, ends, 3));
        Tok *e = cur(P);
        if (is_name(e, "elif")) {
            P->i++;
            nv_push(P->c, &conds, parse_expr(P));
            expect_block_end(P);
        } else if (is_name(e, "else")) {
            P->i++;
            expect_block_end(P);
            static const char *const ends2[] = {"endif"};
            n->a = parse_body(P, ends2, 1);
            P->i++;
            expect_block_end(P);
            break;
        } else {
            P->i++;
            expect_block_end(P);
            break;
        }
    }
    n->items = conds.v;
    n->items2 = bodies.v;
    n->n = conds.n;
    return n;
}

/* {% for a, b in expr if cond %} ... {% else %} ... {% endfor %}, the tag name at t. */
static Node *parse_for(Parser *P, Tok *t) {
    P->i++;
    Node *n = node(P, N_FOR, t->pos);
    StrVec tg = {0};
    int paren = is_op(cur(P), "(");
    if (paren) P->i++;
    sv_push(P->c, &tg, expect_name(P));
    while (is_op(cur(P), ",")) {
        P->i++;
        sv_push(P->c, &tg, expect_name(P));
    }
    if (paren) expect_op(P, ")");
    n->names = tg.v;
    n->nnames = tg.n;
    if (!is_name(cur(P), "in")) {
        char b[64];
        fail_at(P->c, cur(P)->pos, "expected 'in', found %s", tok_desc(cur(P), b, sizeof b));
    }
    P->i++;
    n->b = parse_or(P); /* the iterable; `if` here is the loop filter */
    if (is_name(cur(P), "if")) {
        P->i++;
        n->c = parse_expr(P);
    }
    if (is_name(cur(P), "recursive"))
        fail_at(P->c, cur(P)->pos, "recursive loops are not supported");
    expect_block_end(P);
    static const char *const ends[] = {"else", "endfor"};
    n->a = parse_body(P, ends, 2);
    if (is_name(cur(P), "else")) {
        P->i++;
        expect_block_end(P);
        static const char *const ends2[] = {"endfor"};
        n->items2 = arena_alloc(P->c, sizeof(Node *));
        n->items2[0] = parse_body(P, ends2, 1);
        n->n2 = 1;
    }
    P->i++;
    expect_block_end(P);
    return n;
}

/* {% set x = expr %}, {% set x.attr = expr %} or {% set x %} ... {% endset %}. */
static Node *parse_set(Parser *P, Tok *t) {
    Node *n;
    P->i++;
    const char *nm = expect_name(P);
    const char *attr = NULL;
    if (is_op(cur(P), ".")) {
        P->i++;
        attr = expect_name(P);
    }
    if (is_op(cur(P), "=")) {
        P->i++;
        n = node(P, N_SET, t->pos);
        n->name = nm;
        n->name2 = attr;
        n->a = parse_expr(P);
        if (is_op(cur(P), ",")) fail_at(P->c, cur(P)->pos, "tuple assignment is not supported");
        expect_block_end(P);
    } else {
        if (attr) fail_at(P->c, cur(P)->pos, "expected '=' after set %s.%s", nm, attr);
        expect_block_end(P);
        n = node(P, N_SETBLOCK, t->pos);
        n->name = nm;
        static const char *const ends[] = {"endset"};
        n->a = parse_body(P, ends, 1);
        P->i++;
        expect_block_end(P);
    }
    return n;
}

/* {% macro name(p, q=default) %} ... {% endmacro %}, the tag name at t. */
static Node *parse_macro(Parser *P, Tok *t) {
    P->i++;
    Node *n = node(P, N_MACRO, t->pos);
    n->name = expect_name(P);
    expect_op(P, "(");
    StrVec params = {0};
    NodeVec defs = {0};
    while (!is_op(cur(P), ")")) {
        if (params.n) expect_op(P, ",");
        if (is_op(cur(P), ")")) break;
        sv_push(P->c, &params, expect_name(P));
        Node *d = NULL;
        if (is_op(cur(P), "=")) {
            P->i++;
            d = parse_expr(P);
        }
        nv_push(P->c, &defs, d);
    }
    P->i++;
    expect_block_end(P);
    n->names = params.v;
    n->nnames = params.n;
    n->items2 = defs.v;
    static const char *const ends[] = {"endmacro"};
    n->a = parse_body(P, ends, 1);
    P->i++;
    expect_block_end(P);
    return n;
}

static Node *parse_stmt(Parser *P) {
    Tok *open = cur(P);
    P->i++; /* BLOCK_BEGIN */
    Tok *t = cur(P);
    if (t->kind != T_NAME) {
        char b[64];
        fail_at(P->c, t->pos, "expected a statement, found %s", tok_desc(t, b, sizeof b));
    }
    enter(P);
    Node *n;
    if (is_name(t, "if")) {
        n = parse_if(P, t);
    } else if (is_name(t, "for")) {
        n = parse_for(P, t);
    } else if (is_name(t, "set")) {
        n = parse_set(P, t);
    } else if (is_name(t, "macro")) {
        n = parse_macro(P, t);
    } else if (is_name(t, "break") || is_name(t, "continue")) {
        n = node(P, is_name(t, "break") ? N_BREAK : N_CONTINUE, t->pos);
        P->i++;
        expect_block_end(P);
    } else if (is_name(t, "generation")) { /* transformers' assistant-mask marker: a plain body */
        P->i++;
        expect_block_end(P);
        static const char *const ends[] = {"endgeneration"};
        n = parse_body(P, ends, 1);
        P->i++;
        expect_block_end(P);
    } else {
        fail_at(P->c, t->pos, "unknown or unsupported statement '%.*s'",
                (int)(t->n > 40 ? 40 : t->n), t->s);
    }
    (void)open;
    P->depth--;
    return n;
}

static Node *parse_body(Parser *P, const char *const *ends, int n_ends) {
    Node *body = node(P, N_BODY, cur(P)->pos);
    NodeVec v = {0};
    enter(P);
    for (;;) {
        Tok *t = cur(P);
        if (t->kind == T_EOF) {
            if (n_ends) fail_at(P->c, t->pos, "missing {%% %s %%}", ends[n_ends - 1]);
            break;
        }
        if (at_end_tag(P, ends, n_ends)) {
            P->i++;
            break;
        }
        if (t->kind == T_TEXT) {
            Node *x = node(P, N_TEXT, t->pos);
            x->lit.t = V_STR;
            x->lit.u.s.s = t->s;
            x->lit.u.s.n = t->n;
            nv_push(P->c, &v, x);
            P->i++;
        } else if (t->kind == T_VAR_BEGIN) {
            P->i++;
            Node *x = node(P, N_OUT, t->pos);
            x->a = parse_expr(P);
            if (cur(P)->kind != T_VAR_END) {
                char b[64];
                fail_at(P->c, cur(P)->pos, "expected '}}', found %s",
                        tok_desc(cur(P), b, sizeof b));
            }
            P->i++;
            nv_push(P->c, &v, x);
        } else if (t->kind == T_BLOCK_BEGIN) {
            Tok *nm = &P->t[P->i + 1];
            if (nm->kind == T_NAME &&
                (is_name(nm, "endfor") || is_name(nm, "endif") || is_name(nm, "elif") ||
                 is_name(nm, "else") || is_name(nm, "endset") || is_name(nm, "endmacro") ||
                 is_name(nm, "endgeneration")))
                fail_at(P->c, nm->pos, "unexpected '%.*s'", (int)nm->n, nm->s);
            nv_push(P->c, &v, parse_stmt(P));
        } else {
            char b[64];
            fail_at(P->c, t->pos, "unexpected %s", tok_desc(t, b, sizeof b));
        }
    }
    P->depth--;
    body->items = v.v;
    body->n = v.n;
    return body;
}

// --- parse entry

struct JinjaTemplate {
    Arena arena;
    char *src; /* normalized */
    char *name;
    Node *root;
};

int jinja_parse(const char *src, size_t len, const char *name, JinjaTemplate **out, TunaErr *err) {
    *out = NULL;
    if (!name) name = "template";
    if (len > JINJA_MAX_SOURCE)
        return tuna_errf(err, TUNA_EINVAL, "%s: template of %zu bytes is larger than %u", name, len,
                         JINJA_MAX_SOURCE);
    if (memchr(src, 0, len)) {
        size_t z = (size_t)((const char *)memchr(src, 0, len) - src);
        return tuna_errf(err, TUNA_EFORMAT, "%s: NUL byte at offset %zu", name, z);
    }
    JinjaTemplate *t = calloc(1, sizeof *t);
    char *s = malloc(len + 1);
    char *nm = strdup(name);
    if (!t || !s || !nm) {
        free(t);
        free(s);
        free(nm);
        return tuna_errf(err, TUNA_ENOMEM, "%s: out of memory", name);
    }
    /* newlines normalized to \n; one trailing newline dropped (keep_trailing_newline=False) */
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = 0;
    t->src = s;
    t->name = nm;
    t->arena.limit = ARENA_LIMIT;
    Ctx c = {0};
    c.err = err;
    c.arena = &t->arena;
    c.src = s;
    c.name = nm;
    if (setjmp(c.jb)) {
        jinja_free(t);
        return err && err->code ? err->code : TUNA_EFORMAT;
    }
    Lexer L = {.c = &c, .src = s, .len = n};
    lex(&L);
    Parser P = {.c = &c, .t = L.toks, .i = 0};
    t->root = parse_body(&P, NULL, 0);
    *out = t;
    return 0;
}

void jinja_free(JinjaTemplate *t) {
    if (!t) return;
    arena_free(&t->arena);
    free(t->src);
    free(t->name);
    free(t);
}

// --- render

typedef struct Var {
    const char *name;
    Val v;
} Var;

typedef struct R {
    Ctx *c;
    char *out;
    size_t n, cap;
    Var *vars;
    int nv, capv;
    long long iters;
    int depth;
    int brk;   /* 1 break, 2 continue */
    int scope; /* first variable of the innermost frame (a loop body, a macro call) */
} R;

static Val mk_str(const char *s, size_t n) {
    Val v = {.t = V_STR};
    v.u.s.s = s;
    v.u.s.n = n;
    return v;
}
static Val mk_int(long long i) {
    Val v = {.t = V_INT};
    v.u.i = i;
    return v;
}
static Val mk_bool(int b) {
    Val v = {.t = V_BOOL};
    v.u.i = b != 0;
    return v;
}
static Val mk_float(double f) {
    Val v = {.t = V_FLOAT};
    v.u.f = f;
    return v;
}
static Val mk_undef(void) {
    return (Val){.t = V_UNDEF};
}
static Val mk_none(void) {
    return (Val){.t = V_NONE};
}

static const char *type_name(int t) {
    static const char *const names[] = {"undefined", "none",   "bool", "int",
                                        "float",     "string", "list", "dict",
                                        "namespace", "macro",  "loop"};
    return t >= 0 && t <= V_LOOP ? names[t] : "?";
}

/* growable byte buffer inside the arena */
typedef struct Buf {
    char *s;
    size_t n, cap;
} Buf;

static void buf_add(Ctx *c, Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        while (nc < b->n + n + 1)
            nc *= 2;
        if (nc > (size_t)JINJA_MAX_OUTPUT * 4) {
            c->code = TUNA_EINVAL;
            fail_at(c, 0, "a string grew past %u bytes", JINJA_MAX_OUTPUT * 4);
        }
        char *p = arena_alloc(c, nc);
        if (b->n) memcpy(p, b->s, b->n);
        b->s = p;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void buf_puts(Ctx *c, Buf *b, const char *s) {
    buf_add(c, b, s, strlen(s));
}

static void fmt_float(double f, char *o, size_t cap) {
    if (isnan(f)) {
        snprintf(o, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(o, cap, f > 0 ? "inf" : "-inf");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(o, cap, "%.*g", p, f);
        if (strtod(o, NULL) == f) break;
    }
    /* Python repr: 1.0, 1e+16, 1.5e-07 */
    if (!strpbrk(o, ".einf")) {
        size_t l = strlen(o);
        if (l + 2 < cap) memcpy(o + l, ".0", 3);
    }
}

static void repr_str(Ctx *c, Buf *b, const char *s, size_t n) {
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    buf_add(c, b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[8];
        if (ch == '\\')
            buf_puts(c, b, "\\\\");
        else if (ch == (unsigned char)q) {
            e[0] = '\\';
            e[1] = (char)q;
            buf_add(c, b, e, 2);
        } else if (ch == '\n')
            buf_puts(c, b, "\\n");
        else if (ch == '\r')
            buf_puts(c, b, "\\r");
        else if (ch == '\t')
            buf_puts(c, b, "\\t");
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", ch);
            buf_puts(c, b, e);
        } else
            buf_add(c, b, (const char *)&ch, 1);
    }
    buf_add(c, b, &q, 1);
}

static void to_str(R *r, Buf *b, Val v, int repr);

static void list_str(R *r, Buf *b, Val v) {
    int tup = v.u.l->tuple;
    buf_puts(r->c, b, tup ? "(" : "[");
    for (size_t i = 0; i < v.u.l->n; i++) {
        if (i) buf_puts(r->c, b, ", ");
        to_str(r, b, v.u.l->v[i], 1);
    }
    buf_puts(r->c, b, tup ? (v.u.l->n == 1 ? ",)" : ")") : "]");
}

static void to_str(R *r, Buf *b, Val v, int repr) {
    char tmp[64];
    if (++r->depth > JINJA_MAX_DEPTH)
        fail_at(r->c, 0, "value nested deeper than %d", JINJA_MAX_DEPTH);
    switch (v.t) {
    case V_UNDEF: break;
    case V_NONE: buf_puts(r->c, b, "None"); break;
    case V_BOOL: buf_puts(r->c, b, v.u.i ? "True" : "False"); break;
    case V_INT:
        snprintf(tmp, sizeof tmp, "%lld", v.u.i);
        buf_puts(r->c, b, tmp);
        break;
    case V_FLOAT:
        fmt_float(v.u.f, tmp, sizeof tmp);
        buf_puts(r->c, b, tmp);
        break;
    case V_STR:
        if (repr)
            repr_str(r->c, b, v.u.s.s, v.u.s.n);
        else
            buf_add(r->c, b, v.u.s.s, v.u.s.n);
        break;
    case V_LIST: list_str(r, b, v); break;
    case V_DICT:
        buf_puts(r->c, b, "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) buf_puts(r->c, b, ", ");
            to_str(r, b, v.u.d->k[i], 1);
            buf_puts(r->c, b, ": ");
            to_str(r, b, v.u.d->v[i], 1);
        }
        buf_puts(r->c, b, "}");
        break;
    case V_NS: buf_puts(r->c, b, "<Namespace>"); break;
    case V_MACRO: buf_puts(r->c, b, "<Macro>"); break;
    default: buf_puts(r->c, b, "<LoopContext>"); break;
    }
    r->depth--;
}

static Val str_of(R *r, Val v) {
    if (v.t == V_STR) return v;
    Buf b = {0};
    to_str(r, &b, v, 0);
    return mk_str(b.s ? b.s : "", b.n);
}

static void tojson(R *r, Buf *b, Val v, int indent, int level, size_t pos) {
    Ctx *c = r->c;
    char tmp[64];
    if (++r->depth > JINJA_MAX_DEPTH)
        fail_at(c, pos, "value nested deeper than %d", JINJA_MAX_DEPTH);
    switch (v.t) {
    case V_UNDEF: fail_at(c, pos, "tojson: undefined value");
    case V_NONE: buf_puts(c, b, "null"); break;
    case V_BOOL: buf_puts(c, b, v.u.i ? "true" : "false"); break;
    case V_INT:
    case V_FLOAT: to_str(r, b, v, 0); break;
    case V_STR:
        buf_puts(c, b, "\"");
        for (size_t i = 0; i < v.u.s.n; i++) {
            unsigned char ch = (unsigned char)v.u.s.s[i];
            if (ch == '"')
                buf_puts(c, b, "\\\"");
            else if (ch == '\\')
                buf_puts(c, b, "\\\\");
            else if (ch == '\n')
                buf_puts(c, b, "\\n");
            else if (ch == '\r')
                buf_puts(c, b, "\\r");
            else if (ch == '\t')
                buf_puts(c, b, "\\t");
            else if (ch == '\b')
                buf_puts(c, b, "\\b");
            else if (ch == '\f')
                buf_puts(c, b, "\\f");
            else if (ch < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", ch);
                buf_puts(c, b, tmp);
            } else
                buf_add(c, b, (const char *)&ch, 1);
        }
        buf_puts(c, b, "\"");
        break;
    case V_LIST:
    case V_DICT: {
        int isd = v.t == V_DICT;
        size_t n = isd ? v.u.d->n : v.u.l->n;
        buf_puts(c, b, isd ? "{" : "[");
        if (n == 0) {
            buf_puts(c, b, isd ? "}" : "]");
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (i) buf_puts(c, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                buf_puts(c, b, "\n");
                for (int k = 0; k < indent * (level + 1); k++)
                    buf_puts(c, b, " ");
            }
            if (isd) {
                Val k = v.u.d->k[i];
                if (k.t != V_STR) k = str_of(r, k);
                tojson(r, b, k, indent, level + 1, pos);
                buf_puts(c, b, ": ");
                tojson(r, b, v.u.d->v[i], indent, level + 1, pos);
            } else {
                tojson(r, b, v.u.l->v[i], indent, level + 1, pos);
            }
        }
        if (indent >= 0) {
            buf_puts(c, b, "\n");
            for (int k = 0; k < indent * level; k++)
                buf_puts(c, b, " ");
        }
        buf_puts(c, b, isd ? "}" : "]");
        break;
    }
    default: fail_at(c, pos, "tojson: a %s is not JSON", type_name(v.t));
    }
    r->depth--;
}

static Val from_json(R *r, const cJSON *j) {
    if (++r->depth > JINJA_MAX_DEPTH)
        fail_at(r->c, 0, "context nested deeper than %d", JINJA_MAX_DEPTH);
    Val v = mk_none();
    if (cJSON_IsBool(j))
        v = mk_bool(cJSON_IsTrue(j));
    else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9e15)
            v = mk_int((long long)d);
        else
            v = mk_float(d);
    } else if (cJSON_IsString(j)) {
        v = mk_str(j->valuestring, strlen(j->valuestring));
    } else if (cJSON_IsArray(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j);
        List *l = arena_alloc(r->c, sizeof(List));
        l->v = arena_alloc(r->c, (n ? n : 1) * sizeof(Val));
        for (const cJSON *e = j->child; e && l->n < n; e = e->next)
            l->v[l->n++] = from_json(r, e);
        v.t = V_LIST;
        v.u.l = l;
    } else if (cJSON_IsObject(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j);
        Dict *d = arena_alloc(r->c, sizeof(Dict));
        d->k = arena_alloc(r->c, (n ? n : 1) * sizeof(Val));
        d->v = arena_alloc(r->c, (n ? n : 1) * sizeof(Val));
        d->cap = n ? n : 1;
        for (const cJSON *e = j->child; e && d->n < n; e = e->next) {
            const char *k = e->string ? e->string : "";
            d->k[d->n] = mk_str(k, strlen(k));
            d->v[d->n++] = from_json(r, e);
        }
        v.t = V_DICT;
        v.u.d = d;
    }
    r->depth--;
    return v;
}

static int truthy(Val v) {
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL:
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0;
    case V_STR: return v.u.s.n != 0;
    case V_LIST: return v.u.l->n != 0;
    case V_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int vals_equal(R *r, Val a, Val b);

static int dict_find(R *r, const Dict *d, Val k) {
    for (size_t i = 0; i < d->n; i++)
        if (vals_equal(r, d->k[i], k)) return (int)i;
    return -1;
}

static void dict_set(R *r, Dict *d, Val k, Val v) {
    int i = dict_find(r, d, k);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 4;
        Val *nk = arena_alloc(r->c, nc * sizeof(Val)), *nv = arena_alloc(r->c, nc * sizeof(Val));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(Val));
            memcpy(nv, d->v, d->n * sizeof(Val));
        }
        d->k = nk;
        d->v = nv;
        d->cap = nc;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static int is_num(Val v) {
    return v.t == V_INT || v.t == V_FLOAT || v.t == V_BOOL;
}
static double num(Val v) {
    return v.t == V_FLOAT ? v.u.f : (double)v.u.i;
}

static int vals_equal(R *r, Val a, Val b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return a.u.i == b.u.i;
        return num(a) == num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.s, b.u.s.s, a.u.s.n) == 0;
    case V_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!vals_equal(r, a.u.l->v[i], b.u.l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            int j = dict_find(r, b.u.d, a.u.d->k[i]);
            if (j < 0 || !vals_equal(r, a.u.d->v[i], b.u.d->v[j])) return 0;
        }
        return 1;
    default: return a.u.d == b.u.d;
    }
}

/* -1, 0, 1; error when not orderable */
static int vals_cmp(R *r, Val a, Val b, size_t pos) {
    if (is_num(a) && is_num(b)) {
        if (a.t != V_FLOAT && b.t != V_FLOAT) return (a.u.i > b.u.i) - (a.u.i < b.u.i);
        double x = num(a), y = num(b);
        return (x > y) - (x < y);
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int k = memcmp(a.u.s.s, b.u.s.s, n);
        if (k) return k < 0 ? -1 : 1;
        return (a.u.s.n > b.u.s.n) - (a.u.s.n < b.u.s.n);
    }
    if (a.t == V_LIST && b.t == V_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            int k = vals_cmp(r, a.u.l->v[i], b.u.l->v[i], pos);
            if (k) return k;
        }
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    fail_at(r->c, pos, "cannot compare a %s with a %s", type_name(a.t), type_name(b.t));
}

/* code points of a UTF-8 string */
static size_t u8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}
/* byte offset of code point cp (cp <= length) */
static size_t u8_off(const char *s, size_t n, size_t cp) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (k == cp) return i;
            k++;
        }
    }
    return n;
}

static size_t seq_len(R *r, Val v, size_t pos) {
    switch (v.t) {
    case V_STR: return u8_len(v.u.s.s, v.u.s.n);
    case V_LIST: return v.u.l->n;
    case V_DICT:
    case V_NS: return v.u.d->n;
    case V_UNDEF: return 0;
    default: fail_at(r->c, pos, "a %s has no length", type_name(v.t));
    }
}

static Val list_new(R *r, size_t n) {
    List *l = arena_alloc(r->c, sizeof(List));
    l->v = arena_alloc(r->c, (n ? n : 1) * sizeof(Val));
    Val v = {.t = V_LIST};
    v.u.l = l;
    return v;
}

/* a list/dict/string/undefined as a list of values (dict: keys, string: characters) */
static Val as_list(R *r, Val v, size_t pos) {
    if (v.t == V_LIST) return v;
    if (v.t == V_UNDEF) return list_new(r, 0);
    if (v.t == V_DICT) {
        Val l = list_new(r, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++)
            l.u.l->v[l.u.l->n++] = v.u.d->k[i];
        return l;
    }
    if (v.t == V_STR) {
        Val l = list_new(r, v.u.s.n);
        for (size_t i = 0; i < v.u.s.n;) {
            size_t j = i + 1;
            while (j < v.u.s.n && ((unsigned char)v.u.s.s[j] & 0xC0) == 0x80)
                j++;
            l.u.l->v[l.u.l->n++] = mk_str(v.u.s.s + i, j - i);
            i = j;
        }
        return l;
    }
    fail_at(r->c, pos, "a %s is not iterable", type_name(v.t));
}

static Val lookup(R *r, const char *name) {
    for (int i = r->nv - 1; i >= 0; i--)
        if (strcmp(r->vars[i].name, name) == 0) return r->vars[i].v;
    return mk_undef();
}

static void var_set(R *r, int base, const char *name, Val v) {
    for (int i = r->nv - 1; i >= base; i--)
        if (strcmp(r->vars[i].name, name) == 0) {
            r->vars[i].v = v;
            return;
        }
    if (r->nv == r->capv) {
        int nc = r->capv ? r->capv * 2 : 32;
        Var *p = arena_alloc(r->c, (size_t)nc * sizeof(Var));
        if (r->nv) memcpy(p, r->vars, (size_t)r->nv * sizeof(Var));
        r->vars = p;
        r->capv = nc;
    }
    r->vars[r->nv].name = name;
    r->vars[r->nv++].v = v;
}

static Val eval(R *r, const Node *n);

static Val getattr_v(R *r, Val obj, Val key, size_t pos, int item) {
    (void)item;
    switch (obj.t) {
    case V_DICT:
    case V_NS: {
        int i = dict_find(r, obj.u.d, key);
        return i >= 0 ? obj.u.d->v[i] : mk_undef();
    }
    case V_LIST:
    case V_STR: {
        if (key.t != V_INT && key.t != V_BOOL) return mk_undef();
        long long n = (long long)seq_len(r, obj, pos), k = key.u.i;
        if (k < 0) k += n;
        if (k < 0 || k >= n) return mk_undef();
        if (obj.t == V_LIST) return obj.u.l->v[k];
        size_t a = u8_off(obj.u.s.s, obj.u.s.n, (size_t)k),
               b = u8_off(obj.u.s.s, obj.u.s.n, (size_t)k + 1);
        return mk_str(obj.u.s.s + a, b - a);
    }
    case V_LOOP: return mk_undef();
    case V_UNDEF: {
        Buf b = {0};
        to_str(r, &b, key, 0);
        fail_at(r->c, pos, "'%.60s' of an undefined value", b.s ? b.s : "");
    }
    default: return mk_undef();
    }
}

static long long to_index(R *r, const Node *n, long long def) {
    if (!n) return def;
    Val v = eval(r, n);
    if (v.t == V_NONE) return def;
    if (v.t != V_INT && v.t != V_BOOL) fail_at(r->c, n->pos, "slice index must be an integer");
    return v.u.i;
}

static Val do_slice(R *r, Val obj, const Node *n) {
    long long step = to_index(r, n->items[0], 1);
    if (step == 0) fail_at(r->c, n->pos, "slice step cannot be zero");
    if (obj.t == V_UNDEF) return obj;
    if (obj.t != V_LIST && obj.t != V_STR)
        fail_at(r->c, n->pos, "cannot slice a %s", type_name(obj.t));
    long long len = (long long)seq_len(r, obj, n->pos);
    long long lo = step > 0 ? 0 : len - 1, hi = step > 0 ? len : -1;
    long long a = to_index(r, n->b, LLONG_MIN), b = to_index(r, n->c, LLONG_MIN);
    if (a != LLONG_MIN) {
        if (a < 0) a += len;
        if (step > 0)
            a = a < 0 ? 0 : a > len ? len : a;
        else
            a = a < 0 ? -1 : a >= len ? len - 1 : a;
    } else
        a = lo;
    if (b != LLONG_MIN) {
        if (b < 0) b += len;
        if (step > 0)
            b = b < 0 ? 0 : b > len ? len : b;
        else
            b = b < -1 ? -1 : b >= len ? len - 1 : b;
    } else
        b = hi;
    Val src = obj.t == V_STR ? as_list(r, obj, n->pos) : obj;
    Val out = list_new(r, (size_t)(len > 0 ? len : 1));
    for (long long i = a; step > 0 ? i < b : i > b; i += step)
        out.u.l->v[out.u.l->n++] = src.u.l->v[i];
    if (obj.t == V_STR) {
        Buf bf = {0};
        buf_add(r->c, &bf, "", 0);
        for (size_t i = 0; i < out.u.l->n; i++)
            buf_add(r->c, &bf, out.u.l->v[i].u.s.s, out.u.l->v[i].u.s.n);
        return mk_str(bf.s, bf.n);
    }
    return out;
}

/* evaluated positional args and kwargs of a call/filter/test node */
typedef struct Args {
    Val *v;
    int n;
    const char **kn;
    Val *kv;
    int nk;
    size_t pos;
} Args;

static Args eval_args(R *r, const Node *n, int skip) {
    Args a = {0};
    a.pos = n->pos;
    a.v = arena_alloc(r->c, (size_t)(n->n + 1) * sizeof(Val));
    for (int i = skip; i < n->n; i++)
        a.v[a.n++] = eval(r, n->items[i]);
    a.kv = arena_alloc(r->c, (size_t)(n->nnames + 1) * sizeof(Val));
    a.kn = n->names;
    for (int i = 0; i < n->nnames; i++)
        a.kv[a.nk++] = eval(r, n->items2[i]);
    return a;
}

/* argument i, or keyword name, or def */
static Val arg(const Args *a, int i, const char *name, Val def) {
    if (i >= 0 && i < a->n) return a->v[i];
    for (int k = 0; name && k < a->nk; k++)
        if (strcmp(a->kn[k], name) == 0) return a->kv[k];
    return def;
}

static Val need_str(R *r, Val v, size_t pos, const char *what) {
    if (v.t != V_STR) fail_at(r->c, pos, "%s needs a string, got a %s", what, type_name(v.t));
    return v;
}

static int in_set(char ch, Val chars) {
    if (chars.t != V_STR) return is_ws(ch);
    return memchr(chars.u.s.s, ch, chars.u.s.n) != NULL;
}

static Val strip(Val s, Val chars, int left, int right) {
    size_t a = 0, b = s.u.s.n;
    if (left)
        while (a < b && in_set(s.u.s.s[a], chars))
            a++;
    if (right)
        while (b > a && in_set(s.u.s.s[b - 1], chars))
            b--;
    return mk_str(s.u.s.s + a, b - a);
}

static const char *memmem_(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn == 0) return h;
    if (nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, n, nn) == 0) return h + i;
    return NULL;
}

static Val str_replace(R *r, Val s, Val old, Val new, long long count) {
    Buf b = {0};
    buf_add(r->c, &b, "", 0);
    size_t i = 0;
    long long done = 0;
    if (old.u.s.n == 0) { /* Python: insert between characters */
        Val chars = as_list(r, s, 0);
        for (size_t k = 0; k <= chars.u.l->n; k++) {
            if (count < 0 || done < count) {
                buf_add(r->c, &b, new.u.s.s, new.u.s.n);
                done++;
            }
            if (k < chars.u.l->n) buf_add(r->c, &b, chars.u.l->v[k].u.s.s, chars.u.l->v[k].u.s.n);
        }
        return mk_str(b.s, b.n);
    }
    while (i < s.u.s.n) {
        const char *f = (count < 0 || done < count)
                                ? memmem_(s.u.s.s + i, s.u.s.n - i, old.u.s.s, old.u.s.n)
                                : NULL;
        if (!f) {
            buf_add(r->c, &b, s.u.s.s + i, s.u.s.n - i);
            break;
        }
        buf_add(r->c, &b, s.u.s.s + i, (size_t)(f - (s.u.s.s + i)));
        buf_add(r->c, &b, new.u.s.s, new.u.s.n);
        i = (size_t)(f - s.u.s.s) + old.u.s.n;
        done++;
    }
    return mk_str(b.s, b.n);
}

static Val case_map(R *r, Val s, int mode) { /* 0 lower, 1 upper, 2 capitalize, 3 title (ASCII) */
    char *o = arena_alloc(r->c, s.u.s.n + 1);
    int word_start = 1;
    for (size_t i = 0; i < s.u.s.n; i++) {
        char ch = s.u.s.s[i];
        int up = mode == 1 || ((mode == 2 && i == 0) || (mode == 3 && word_start));
        if (mode == 0 || (mode >= 2 && !up))
            ch = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        else if (up)
            ch = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
        word_start = !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) ||
                       ((unsigned char)ch & 0x80));
        o[i] = ch;
    }
    return mk_str(o, s.u.s.n);
}

static Val split(R *r, Val s, Val sep, long long maxsplit, size_t pos) {
    Val l = list_new(r, s.u.s.n + 1);
    size_t i = 0;
    if (sep.t == V_NONE || sep.t == V_UNDEF) {
        while (i < s.u.s.n) {
            while (i < s.u.s.n && is_ws(s.u.s.s[i]))
                i++;
            if (i >= s.u.s.n) break;
            size_t j = i;
            if (maxsplit >= 0 && (long long)l.u.l->n >= maxsplit) {
                size_t e = s.u.s.n;
                while (e > i && is_ws(s.u.s.s[e - 1]))
                    e--;
                l.u.l->v[l.u.l->n++] = mk_str(s.u.s.s + i, e - i);
                break;
            }
            while (j < s.u.s.n && !is_ws(s.u.s.s[j]))
                j++;
            l.u.l->v[l.u.l->n++] = mk_str(s.u.s.s + i, j - i);
            i = j;
        }
        return l;
    }
    need_str(r, sep, pos, "split");
    if (sep.u.s.n == 0) fail_at(r->c, pos, "split: empty separator");
    for (;;) {
        const char *f = (maxsplit < 0 || (long long)l.u.l->n < maxsplit)
                                ? memmem_(s.u.s.s + i, s.u.s.n - i, sep.u.s.s, sep.u.s.n)
                                : NULL;
        if (!f) {
            l.u.l->v[l.u.l->n++] = mk_str(s.u.s.s + i, s.u.s.n - i);
            return l;
        }
        l.u.l->v[l.u.l->n++] = mk_str(s.u.s.s + i, (size_t)(f - (s.u.s.s + i)));
        i = (size_t)(f - s.u.s.s) + sep.u.s.n;
    }
}

static long long need_int(R *r, Val v, size_t pos, const char *what) {
    if (v.t != V_INT && v.t != V_BOOL)
        fail_at(r->c, pos, "%s needs an integer, got a %s", what, type_name(v.t));
    return v.u.i;
}

/* obj.name(args) for strings, dicts and lists */
static int call_method(R *r, Val obj, const char *name, const Args *a, Val *out) {
    size_t pos = a->pos;
    Val none = mk_none();
    if (obj.t == V_STR) {
        if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
            *out = strip(obj, arg(a, 0, "chars", none), name[0] != 'r', name[0] != 'l');
        } else if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
            Val p = arg(a, 0, NULL, none);
            Val opts = p.t == V_LIST ? p : list_new(r, 1);
            if (p.t != V_LIST) opts.u.l->v[opts.u.l->n++] = p;
            int hit = 0;
            for (size_t i = 0; i < opts.u.l->n; i++) {
                Val q = need_str(r, opts.u.l->v[i], pos, name);
                if (q.u.s.n <= obj.u.s.n &&
                    memcmp(name[0] == 's' ? obj.u.s.s : obj.u.s.s + obj.u.s.n - q.u.s.n, q.u.s.s,
                           q.u.s.n) == 0)
                    hit = 1;
            }
            *out = mk_bool(hit);
        } else if (!strcmp(name, "split")) {
            Val mx = arg(a, 1, "maxsplit", mk_int(-1));
            *out = split(r, obj, arg(a, 0, "sep", none), need_int(r, mx, pos, "split"), pos);
        } else if (!strcmp(name, "lower") || !strcmp(name, "upper") ||
                   !strcmp(name, "capitalize") || !strcmp(name, "title")) {
            *out = case_map(r, obj,
                            name[0] == 'l'   ? 0
                            : name[0] == 'u' ? 1
                            : name[0] == 'c' ? 2
                                             : 3);
        } else if (!strcmp(name, "replace")) {
            Val o = need_str(r, arg(a, 0, NULL, none), pos, "replace");
            Val nw = need_str(r, arg(a, 1, NULL, none), pos, "replace");
            *out = str_replace(r, obj, o, nw,
                               need_int(r, arg(a, 2, "count", mk_int(-1)), pos, "replace"));
        } else if (!strcmp(name, "find")) {
            Val q = need_str(r, arg(a, 0, NULL, none), pos, "find");
            const char *f = memmem_(obj.u.s.s, obj.u.s.n, q.u.s.s, q.u.s.n);
            *out = mk_int(f ? (long long)u8_len(obj.u.s.s, (size_t)(f - obj.u.s.s)) : -1);
        } else if (!strcmp(name, "count")) {
            Val q = need_str(r, arg(a, 0, NULL, none), pos, "count");
            long long k = 0;
            if (q.u.s.n == 0)
                k = (long long)u8_len(obj.u.s.s, obj.u.s.n) + 1;
            else
                for (const char *p = obj.u.s.s, *e = obj.u.s.s + obj.u.s.n;
                     (p = memmem_(p, (size_t)(e - p), q.u.s.s, q.u.s.n)) != NULL; p += q.u.s.n)
                    k++;
            *out = mk_int(k);
        } else if (!strcmp(name, "join")) {
            Val l = as_list(r, arg(a, 0, NULL, none), pos);
            Buf b = {0};
            buf_add(r->c, &b, "", 0);
            for (size_t i = 0; i < l.u.l->n; i++) {
                if (i) buf_add(r->c, &b, obj.u.s.s, obj.u.s.n);
                Val e = need_str(r, l.u.l->v[i], pos, "join");
                buf_add(r->c, &b, e.u.s.s, e.u.s.n);
            }
            *out = mk_str(b.s, b.n);
        } else if (!strcmp(name, "isdigit") || !strcmp(name, "isspace") ||
                   !strcmp(name, "isalpha")) {
            int ok = obj.u.s.n > 0;
            for (size_t i = 0; i < obj.u.s.n; i++) {
                char ch = obj.u.s.s[i];
                if (name[2] == 'd' && !is_digit(ch)) ok = 0;
                if (name[2] == 's' && !is_ws(ch)) ok = 0;
                if (name[2] == 'a' && !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
                    ok = 0;
            }
            *out = mk_bool(ok);
        } else {
            return 0;
        }
        return 1;
    }
    if (obj.t == V_DICT) {
        if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values")) {
            Val l = list_new(r, obj.u.d->n);
            for (size_t i = 0; i < obj.u.d->n; i++) {
                if (name[0] == 'i') {
                    Val p = list_new(r, 2);
                    p.u.l->tuple = 1;
                    p.u.l->v[0] = obj.u.d->k[i];
                    p.u.l->v[1] = obj.u.d->v[i];
                    p.u.l->n = 2;
                    l.u.l->v[l.u.l->n++] = p;
                } else {
                    l.u.l->v[l.u.l->n++] = name[0] == 'k' ? obj.u.d->k[i] : obj.u.d->v[i];
                }
            }
            *out = l;
            return 1;
        }
        if (!strcmp(name, "get")) {
            int i = dict_find(r, obj.u.d, arg(a, 0, NULL, none));
            *out = i >= 0 ? obj.u.d->v[i] : arg(a, 1, "default", none);
            return 1;
        }
        return 0;
    }
    if (obj.t == V_LIST &&
        (!strcmp(name, "append") || !strcmp(name, "pop") || !strcmp(name, "extend")))
        fail_at(r->c, pos, "lists cannot be changed in a chat template (%s)", name);
    return 0;
}

static Val attr_of(const char *s) {
    return mk_str(s, strlen(s));
}

/* item.attr where attr may be dotted ("a.b") or an integer */
static Val get_path(R *r, Val v, Val attr, size_t pos) {
    if (attr.t != V_STR) return getattr_v(r, v, attr, pos, 1);
    const char *s = attr.u.s.s, *e = s + attr.u.s.n;
    while (s <= e) {
        const char *d = memchr(s, '.', (size_t)(e - s));
        if (!d) d = e;
        Val k = mk_str(s, (size_t)(d - s));
        if (v.t == V_UNDEF) return v;
        v = getattr_v(r, v, k, pos, 1);
        s = d + 1;
    }
    return v;
}

static int run_test(R *r, const char *name, Val v, const Args *a);
static Val apply_filter(R *r, const char *name, Val v, const Args *a);

/* tojson(indent=None): JSON text, indent clamped to [0, 64]. */
static Val filter_tojson(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    Val none = mk_none();
    Val ind = arg(a, 0, "indent", none);
    Buf b = {0};
    buf_add(r->c, &b, "", 0);
    tojson(r, &b, v,
           ind.t == V_NONE ? -1
                           : (int)(need_int(r, ind, pos, "tojson") > 64 ? 64
                                   : ind.u.i < 0                        ? 0
                                                                        : ind.u.i),
           0, pos);
    return mk_str(b.s, b.n);
}

/* join(d="", attribute=None): the items (or their attribute) as strings, joined. */
static Val filter_join(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    Val none = mk_none();
    Val l = as_list(r, v, pos);
    Val sep = str_of(r, arg(a, 0, "d", mk_str("", 0)));
    Val attr = arg(a, 1, "attribute", none);
    Buf b = {0};
    buf_add(r->c, &b, "", 0);
    for (size_t i = 0; i < l.u.l->n; i++) {
        if (i) buf_add(r->c, &b, sep.u.s.s, sep.u.s.n);
        Val e = l.u.l->v[i];
        if (attr.t != V_NONE) e = get_path(r, e, attr, pos);
        e = str_of(r, e);
        buf_add(r->c, &b, e.u.s.s, e.u.s.n);
    }
    return mk_str(b.s, b.n);
}

/* reverse: a string reversed by character, or a sequence as a new list. */
static Val filter_reverse(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    if (v.t == V_STR) {
        Val l = as_list(r, v, pos);
        Buf b = {0};
        buf_add(r->c, &b, "", 0);
        for (size_t i = l.u.l->n; i-- > 0;)
            buf_add(r->c, &b, l.u.l->v[i].u.s.s, l.u.l->v[i].u.s.n);
        return mk_str(b.s, b.n);
    }
    Val l = as_list(r, v, pos), o = list_new(r, l.u.l->n);
    for (size_t i = l.u.l->n; i-- > 0;)
        o.u.l->v[o.u.l->n++] = l.u.l->v[i];
    return o;
}

/* int(default=0): ints, bools, floats and decimal strings; anything else gives default. */
static Val filter_int(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    if (v.t == V_INT || v.t == V_BOOL) return mk_int(v.u.i);
    if (v.t == V_FLOAT && fabs(v.u.f) < 9e18) return mk_int((long long)v.u.f);
    if (v.t == V_STR) {
        char tmp[32];
        size_t n = v.u.s.n < 31 ? v.u.s.n : 31;
        memcpy(tmp, v.u.s.s, n);
        tmp[n] = 0;
        char *end;
        long long x = strtoll(tmp, &end, 10);
        if (end != tmp && *end == 0) return mk_int(x);
    }
    return mk_int(need_int(r, arg(a, 0, "default", mk_int(0)), pos, "int"));
}

/* select / reject / selectattr / rejectattr with an optional test name and its arguments. */
static Val filter_select(R *r, const char *name, Val v, const Args *a) {
    size_t pos = a->pos;
    Val none = mk_none();
    int isattr = strstr(name, "attr") != NULL, want = name[0] == 's';
    Val l = as_list(r, v, pos), o = list_new(r, l.u.l->n);
    int ti = isattr ? 1 : 0;
    Val attr = isattr ? arg(a, 0, NULL, none) : none;
    Val test = arg(a, ti, NULL, none);
    Args targs = {.pos = pos};
    if (a->n > ti + 1) {
        targs.v = a->v + ti + 1;
        targs.n = a->n - ti - 1;
    }
    for (size_t i = 0; i < l.u.l->n; i++) {
        Val e = l.u.l->v[i];
        Val x = isattr ? get_path(r, e, attr, pos) : e;
        int ok;
        if (test.t == V_NONE)
            ok = truthy(x);
        else {
            need_str(r, test, pos, name);
            char tn[64];
            snprintf(tn, sizeof tn, "%.*s", (int)(test.u.s.n > 60 ? 60 : test.u.s.n), test.u.s.s);
            ok = run_test(r, tn, x, &targs);
        }
        if (ok == want) o.u.l->v[o.u.l->n++] = e;
    }
    return o;
}

/* map(attribute=, default=) or map(filter_name, args...) over a sequence. */
static Val filter_map(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    Val none = mk_none();
    Val l = as_list(r, v, pos), o = list_new(r, l.u.l->n);
    Val attr = arg(a, -1, "attribute", none);
    Val dflt = arg(a, -1, "default", mk_undef());
    Val fname = a->n ? a->v[0] : none;
    for (size_t i = 0; i < l.u.l->n; i++) {
        Val e = l.u.l->v[i];
        if (attr.t != V_NONE) {
            e = get_path(r, e, attr, pos);
            if (e.t == V_UNDEF) e = dflt;
        } else if (fname.t == V_STR) {
            char fn[64];
            snprintf(fn, sizeof fn, "%.*s", (int)(fname.u.s.n > 60 ? 60 : fname.u.s.n),
                     fname.u.s.s);
            Args fa = {.pos = pos};
            if (a->n > 1) {
                fa.v = a->v + 1;
                fa.n = a->n - 1;
            }
            if (++r->depth > JINJA_MAX_DEPTH)
                fail_at(r->c, pos, "nested deeper than %d", JINJA_MAX_DEPTH);
            e = apply_filter(r, fn, e, &fa);
            r->depth--;
        } else {
            fail_at(r->c, pos, "map needs a filter name or attribute=");
        }
        o.u.l->v[o.u.l->n++] = e;
    }
    return o;
}

/* unique: the first of each set of equal items, in order. */
static Val filter_unique(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    Val l = as_list(r, v, pos), o = list_new(r, l.u.l->n);
    for (size_t i = 0; i < l.u.l->n; i++) {
        int seen = 0;
        for (size_t k = 0; k < o.u.l->n && !seen; k++)
            seen = vals_equal(r, o.u.l->v[k], l.u.l->v[i]);
        if (!seen) o.u.l->v[o.u.l->n++] = l.u.l->v[i];
    }
    return o;
}

/* indent(width=4, first=False, blank=False): indents every line after the first. */
static Val filter_indent(R *r, Val v, const Args *a) {
    size_t pos = a->pos;
    Val s = str_of(r, v);
    long long w = need_int(r, arg(a, 0, "width", mk_int(4)), pos, "indent");
    if (w < 0 || w > 256) fail_at(r->c, pos, "indent width out of range");
    int first = truthy(arg(a, 1, "first", mk_bool(0)));
    int blank = truthy(arg(a, 2, "blank", mk_bool(0)));
    Buf b = {0};
    buf_add(r->c, &b, "", 0);
    size_t i = 0;
    int line = 0;
    while (i <= s.u.s.n) {
        const char *nl = memchr(s.u.s.s + i, '\n', s.u.s.n - i);
        size_t e = nl ? (size_t)(nl - s.u.s.s) : s.u.s.n;
        if ((line > 0 || first) && (blank || e > i))
            for (long long k = 0; k < w; k++)
                buf_add(r->c, &b, " ", 1);
        buf_add(r->c, &b, s.u.s.s + i, e - i);
        if (!nl) break;
        buf_add(r->c, &b, "\n", 1);
        i = e + 1;
        line++;
    }
    return mk_str(b.s, b.n);
}

static Val apply_filter(R *r, const char *name, Val v, const Args *a) {
    size_t pos = a->pos;
    Val none = mk_none();
    if (!strcmp(name, "trim")) {
        Val s = v.t == V_STR ? v : str_of(r, v);
        return strip(s, arg(a, 0, "chars", none), 1, 1);
    }
    if (!strcmp(name, "length") || !strcmp(name, "count"))
        return mk_int((long long)seq_len(r, v, pos));
    if (!strcmp(name, "string")) return str_of(r, v);
    if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape")) {
        if (name[0] == 's') return v;
        fail_at(r->c, pos, "the escape filter is not supported");
    }
    if (!strcmp(name, "tojson")) { return filter_tojson(r, v, a); }
    if (!strcmp(name, "lower") || !strcmp(name, "upper") || !strcmp(name, "capitalize") ||
        !strcmp(name, "title")) {
        Val s = str_of(r, v);
        return case_map(r, s, name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 'c' ? 2 : 3);
    }
    if (!strcmp(name, "replace")) {
        Val s = str_of(r, v);
        Val o = str_of(r, arg(a, 0, "old", none)), nw = str_of(r, arg(a, 1, "new", none));
        return str_replace(r, s, o, nw,
                           need_int(r, arg(a, 2, "count", mk_int(-1)), pos, "replace"));
    }
    if (!strcmp(name, "join")) { return filter_join(r, v, a); }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        Val l = as_list(r, v, pos);
        if (!l.u.l->n) return mk_undef();
        return l.u.l->v[name[0] == 'f' ? 0 : l.u.l->n - 1];
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        int boolean = truthy(arg(a, 1, "boolean", mk_bool(0)));
        if (v.t == V_UNDEF || (boolean && !truthy(v)))
            return arg(a, 0, "default_value", mk_str("", 0));
        return v;
    }
    if (!strcmp(name, "items")) {
        if (v.t == V_UNDEF) return list_new(r, 0);
        if (v.t != V_DICT) fail_at(r->c, pos, "items needs a dict, got a %s", type_name(v.t));
        Val out;
        Args none_args = {.pos = pos};
        call_method(r, v, "items", &none_args, &out);
        return out;
    }
    if (!strcmp(name, "list")) {
        Val l = as_list(r, v, pos);
        if (!l.u.l->tuple) return l;
        Val o = list_new(r, l.u.l->n);
        memcpy(o.u.l->v, l.u.l->v, l.u.l->n * sizeof(Val));
        o.u.l->n = l.u.l->n;
        return o;
    }
    if (!strcmp(name, "reverse")) { return filter_reverse(r, v, a); }
    if (!strcmp(name, "int")) { return filter_int(r, v, a); }
    if (!strcmp(name, "float")) {
        if (is_num(v)) return mk_float(num(v));
        return mk_float(0);
    }
    if (!strcmp(name, "abs")) {
        if (v.t == V_FLOAT) return mk_float(fabs(v.u.f));
        long long x = need_int(r, v, pos, "abs");
        if (x == LLONG_MIN) fail_at(r->c, pos, "integer overflow");
        return mk_int(x < 0 ? -x : x);
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr") || !strcmp(name, "select") ||
        !strcmp(name, "reject")) {
        return filter_select(r, name, v, a);
    }
    if (!strcmp(name, "map")) { return filter_map(r, v, a); }
    if (!strcmp(name, "unique")) { return filter_unique(r, v, a); }
    if (!strcmp(name, "indent")) { return filter_indent(r, v, a); }
    fail_at(r->c, pos, "unknown filter '%s'", name);
}

static int run_test(R *r, const char *name, Val v, const Args *a) {
    Val x = arg(a, 0, NULL, mk_undef());
    size_t pos = a->pos;
    if (!strcmp(name, "defined")) return v.t != V_UNDEF;
    if (!strcmp(name, "undefined")) return v.t == V_UNDEF;
    if (!strcmp(name, "none")) return v.t == V_NONE;
    if (!strcmp(name, "string")) return v.t == V_STR;
    if (!strcmp(name, "mapping")) return v.t == V_DICT;
    if (!strcmp(name, "sequence")) return v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
    if (!strcmp(name, "iterable")) return v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
    if (!strcmp(name, "number")) return is_num(v);
    if (!strcmp(name, "integer")) return v.t == V_INT;
    if (!strcmp(name, "float")) return v.t == V_FLOAT;
    if (!strcmp(name, "boolean")) return v.t == V_BOOL;
    if (!strcmp(name, "true")) return v.t == V_BOOL && v.u.i;
    if (!strcmp(name, "false")) return v.t == V_BOOL && !v.u.i;
    if (!strcmp(name, "callable")) return v.t == V_MACRO;
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        long long k = need_int(r, v, pos, name);
        return (int)((k % 2 != 0) == (name[0] == 'o'));
    }
    if (!strcmp(name, "divisibleby")) {
        long long d = need_int(r, x, pos, name);
        if (d == 0) fail_at(r->c, pos, "divisibleby 0");
        return need_int(r, v, pos, name) % d == 0;
    }
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "=="))
        return vals_equal(r, v, x);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !vals_equal(r, v, x);
    if (!strcmp(name, "sameas")) return v.t == x.t && vals_equal(r, v, x);
    if (!strcmp(name, "lt") || !strcmp(name, "lessthan")) return vals_cmp(r, v, x, pos) < 0;
    if (!strcmp(name, "gt") || !strcmp(name, "greaterthan")) return vals_cmp(r, v, x, pos) > 0;
    if (!strcmp(name, "le")) return vals_cmp(r, v, x, pos) <= 0;
    if (!strcmp(name, "ge")) return vals_cmp(r, v, x, pos) >= 0;
    if (!strcmp(name, "in")) {
        if (x.t == V_LIST) {
            for (size_t i = 0; i < x.u.l->n; i++)
                if (vals_equal(r, x.u.l->v[i], v)) return 1;
            return 0;
        }
        if (x.t == V_DICT) return dict_find(r, x.u.d, v) >= 0;
        if (x.t == V_STR && v.t == V_STR)
            return memmem_(x.u.s.s, x.u.s.n, v.u.s.s, v.u.s.n) != NULL;
        fail_at(r->c, pos, "'in' needs a list, dict or string");
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v.t != V_STR) return 0;
        for (size_t i = 0; i < v.u.s.n; i++) {
            char ch = v.u.s.s[i];
            if (name[0] == 'l' && ch >= 'A' && ch <= 'Z') return 0;
            if (name[0] == 'u' && ch >= 'a' && ch <= 'z') return 0;
        }
        return 1;
    }
    fail_at(r->c, pos, "unknown test '%s'", name);
}

static void emit(R *r, const char *s, size_t n, size_t pos) {
    if (r->n + n > JINJA_MAX_OUTPUT) {
        r->c->code = TUNA_EINVAL;
        fail_at(r->c, pos, "output larger than %u bytes", JINJA_MAX_OUTPUT);
    }
    if (r->n + n + 1 > r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 1024;
        while (nc < r->n + n + 1)
            nc *= 2;
        char *p = realloc(r->out, nc);
        if (!p) {
            r->c->code = TUNA_ENOMEM;
            fail_at(r->c, pos, "out of memory");
        }
        r->out = p;
        r->cap = nc;
    }
    memcpy(r->out + r->n, s, n);
    r->n += n;
    r->out[r->n] = 0;
}

static void exec_body(R *r, const Node *body);

static Val call_macro(R *r, const Node *m, const Args *a) {
    if (a->n > m->nnames)
        fail_at(r->c, a->pos, "macro %s takes %d arguments, got %d", m->name, m->nnames, a->n);
    int base = r->nv, saved_scope = r->scope;
    for (int i = 0; i < m->nnames; i++) {
        Val v = arg(a, i, m->names[i], mk_undef());
        if (v.t == V_UNDEF && m->items2[i]) v = eval(r, m->items2[i]);
        var_set(r, base, m->names[i], v);
    }
    r->scope = base;
    /* the body renders at the end of the output (keeping the size bound), then is cut off */
    size_t start = r->n;
    exec_body(r, m->a);
    r->brk = 0;
    Val res = mk_str(astrndup(r->c, r->out ? r->out + start : "", r->n - start), r->n - start);
    r->n = start;
    r->nv = base;
    r->scope = saved_scope;
    return res;
}

static Val arith(R *r, const char *op, Val a, Val b, size_t pos) {
    if (op[0] == '~') {
        Val x = str_of(r, a), y = str_of(r, b);
        Buf bf = {0};
        buf_add(r->c, &bf, x.u.s.s, x.u.s.n);
        buf_add(r->c, &bf, y.u.s.s, y.u.s.n);
        return mk_str(bf.s, bf.n);
    }
    if (op[0] == '+' && a.t == V_STR && b.t == V_STR) {
        Buf bf = {0};
        buf_add(r->c, &bf, a.u.s.s, a.u.s.n);
        buf_add(r->c, &bf, b.u.s.s, b.u.s.n);
        return mk_str(bf.s, bf.n);
    }
    if (op[0] == '+' && a.t == V_LIST && b.t == V_LIST) {
        Val l = list_new(r, a.u.l->n + b.u.l->n);
        memcpy(l.u.l->v, a.u.l->v, a.u.l->n * sizeof(Val));
        memcpy(l.u.l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(Val));
        l.u.l->n = a.u.l->n + b.u.l->n;
        return l;
    }
    if (op[0] == '*' && op[1] == 0 &&
        ((a.t == V_STR && b.t == V_INT) || (a.t == V_INT && b.t == V_STR))) {
        Val s = a.t == V_STR ? a : b;
        long long k = a.t == V_INT ? a.u.i : b.u.i;
        if (k > 0 && s.u.s.n && (unsigned long long)k > JINJA_MAX_OUTPUT / s.u.s.n)
            fail_at(r->c, pos, "string repetition too large");
        Buf bf = {0};
        buf_add(r->c, &bf, "", 0);
        for (long long i = 0; i < k; i++)
            buf_add(r->c, &bf, s.u.s.s, s.u.s.n);
        return mk_str(bf.s, bf.n);
    }
    if (!is_num(a) || !is_num(b))
        fail_at(r->c, pos, "unsupported operand types for %s: %s and %s", op, type_name(a.t),
                type_name(b.t));
    if (a.t != V_FLOAT && b.t != V_FLOAT && strcmp(op, "/") != 0) {
        long long x = a.u.i, y = b.u.i, z = 0;
        int ovf = 0;
        switch (op[0]) {
        case '+': ovf = __builtin_add_overflow(x, y, &z); break;
        case '-': ovf = __builtin_sub_overflow(x, y, &z); break;
        case '*':
            if (op[1] == '*') {
                if (y < 0) return mk_float(pow((double)x, (double)y));
                z = 1;
                for (long long i = 0; i < y && !ovf; i++)
                    ovf = __builtin_mul_overflow(z, x, &z);
            } else {
                ovf = __builtin_mul_overflow(x, y, &z);
            }
            break;
        case '/':
        case '%':
            if (y == 0) fail_at(r->c, pos, "division by zero");
            if (x == LLONG_MIN && y == -1)
                ovf = 1;
            else if (op[0] == '%') {
                z = x % y;
                if (z != 0 && ((z < 0) != (y < 0))) z += y;
            } else {
                z = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) z--;
            }
            break;
        }
        if (ovf) fail_at(r->c, pos, "integer overflow");
        return mk_int(z);
    }
    double x = num(a), y = num(b);
    switch (op[0]) {
    case '+': return mk_float(x + y);
    case '-': return mk_float(x - y);
    case '*': return mk_float(op[1] == '*' ? pow(x, y) : x * y);
    case '/':
        if (y == 0) fail_at(r->c, pos, "division by zero");
        return mk_float(op[1] == '/' ? floor(x / y) : x / y);
    default:
        if (y == 0) fail_at(r->c, pos, "division by zero");
        {
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return mk_float(m);
        }
    }
}

static Val eval_call(R *r, const Node *n) {
    const Node *fn = n->a;
    if (fn->kind == E_ATTR) {
        Val obj = eval(r, fn->a);
        Args a = eval_args(r, n, 0);
        Val out;
        if (call_method(r, obj, fn->name, &a, &out)) return out;
        if (obj.t == V_UNDEF) fail_at(r->c, fn->pos, "'%s' of an undefined value", fn->name);
        Val f = getattr_v(r, obj, attr_of(fn->name), fn->pos, 0);
        if (f.t == V_MACRO) return call_macro(r, f.u.m, &a);
        fail_at(r->c, n->pos, "a %s has no method '%s'", type_name(obj.t), fn->name);
    }
    if (fn->kind == E_NAME) {
        Val f = lookup(r, fn->name);
        Args a = eval_args(r, n, 0);
        if (f.t == V_MACRO) return call_macro(r, f.u.m, &a);
        if (f.t != V_UNDEF) fail_at(r->c, n->pos, "'%s' is not callable", fn->name);
        const char *nm = fn->name;
        if (!strcmp(nm, "raise_exception")) {
            Val m = str_of(r, arg(&a, 0, NULL, mk_str("", 0)));
            r->c->code = TUNA_EINVAL;
            fail_at(r->c, n->pos, "raise_exception: %.*s", (int)(m.u.s.n > 300 ? 300 : m.u.s.n),
                    m.u.s.s);
        }
        if (!strcmp(nm, "range")) {
            long long s = 0, e, st = 1;
            if (a.n == 1)
                e = need_int(r, a.v[0], n->pos, "range");
            else if (a.n >= 2) {
                s = need_int(r, a.v[0], n->pos, "range");
                e = need_int(r, a.v[1], n->pos, "range");
                if (a.n >= 3) st = need_int(r, a.v[2], n->pos, "range");
            } else
                fail_at(r->c, n->pos, "range needs arguments");
            if (st == 0) fail_at(r->c, n->pos, "range step cannot be zero");
            double cnt = ceil(((double)e - (double)s) / (double)st);
            if (cnt < 0) cnt = 0;
            if (cnt > 100000) fail_at(r->c, n->pos, "range of more than 100000 items");
            Val l = list_new(r, (size_t)cnt);
            for (long long i = s; st > 0 ? i < e : i > e; i += st)
                l.u.l->v[l.u.l->n++] = mk_int(i);
            return l;
        }
        if (!strcmp(nm, "namespace") || !strcmp(nm, "dict")) {
            Dict *d = arena_alloc(r->c, sizeof(Dict));
            if (a.n && a.v[0].t == V_DICT)
                for (size_t i = 0; i < a.v[0].u.d->n; i++)
                    dict_set(r, d, a.v[0].u.d->k[i], a.v[0].u.d->v[i]);
            for (int i = 0; i < a.nk; i++)
                dict_set(r, d, attr_of(a.kn[i]), a.kv[i]);
            Val v = {.t = nm[0] == 'n' ? V_NS : V_DICT};
            v.u.d = d;
            return v;
        }
        if (!strcmp(nm, "strftime_now")) {
            Val fs = need_str(r, arg(&a, 0, NULL, mk_undef()), n->pos, "strftime_now");
            char fmt[128], out[256];
            snprintf(fmt, sizeof fmt, "%.*s", (int)(fs.u.s.n > 120 ? 120 : fs.u.s.n), fs.u.s.s);
            time_t now = time(NULL);
            struct tm tmv;
            localtime_r(&now, &tmv);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            size_t k = strftime(out, sizeof out, fmt, &tmv); /* the template's own format */
#pragma GCC diagnostic pop
            return mk_str(astrndup(r->c, out, k), k);
        }
        fail_at(r->c, fn->pos, "'%s' is undefined", nm);
    }
    Val f = eval(r, fn);
    if (f.t == V_MACRO) {
        Args a = eval_args(r, n, 0);
        return call_macro(r, f.u.m, &a);
    }
    fail_at(r->c, n->pos, "a %s is not callable", type_name(f.t));
}

static Val eval(R *r, const Node *n) {
    if (++r->depth > JINJA_MAX_DEPTH)
        fail_at(r->c, n->pos, "nested deeper than %d", JINJA_MAX_DEPTH);
    Val v;
    switch (n->kind) {
    case E_LIT: v = n->lit; break;
    case E_NAME: v = lookup(r, n->name); break;
    case E_ATTR: {
        Val o = eval(r, n->a);
        if (o.t == V_LOOP) {
            /* loop.*: the loop variable is a dict in disguise */
            Val d = o;
            d.t = V_DICT;
            v = getattr_v(r, d, attr_of(n->name), n->pos, 0);
        } else {
            v = getattr_v(r, o, attr_of(n->name), n->pos, 0);
        }
        break;
    }
    case E_ITEM: {
        Val o = eval(r, n->a);
        if (o.t == V_LOOP) o.t = V_DICT;
        v = getattr_v(r, o, eval(r, n->b), n->pos, 1);
        break;
    }
    case E_SLICE: v = do_slice(r, eval(r, n->a), n); break;
    case E_CALL: v = eval_call(r, n); break;
    case E_FILTER: {
        Val x = eval(r, n->a);
        Args a = eval_args(r, n, 0);
        v = apply_filter(r, n->name, x, &a);
        break;
    }
    case E_TEST: {
        Val x = eval(r, n->a);
        Args a = eval_args(r, n, 0);
        v = mk_bool(run_test(r, n->name, x, &a) != n->negate);
        break;
    }
    case E_BIN: {
        Val a = eval(r, n->a), b = eval(r, n->b);
        const char *op = n->name;
        if (!strcmp(op, "=="))
            v = mk_bool(vals_equal(r, a, b));
        else if (!strcmp(op, "!="))
            v = mk_bool(!vals_equal(r, a, b));
        else if (!strcmp(op, "<"))
            v = mk_bool(vals_cmp(r, a, b, n->pos) < 0);
        else if (!strcmp(op, ">"))
            v = mk_bool(vals_cmp(r, a, b, n->pos) > 0);
        else if (!strcmp(op, "<="))
            v = mk_bool(vals_cmp(r, a, b, n->pos) <= 0);
        else if (!strcmp(op, ">="))
            v = mk_bool(vals_cmp(r, a, b, n->pos) >= 0);
        else if (!strcmp(op, "in") || !strcmp(op, "not in")) {
            Args t = {.pos = n->pos, .v = &b, .n = 1};
            int in = b.t == V_UNDEF ? 0 : run_test(r, "in", a, &t); /* undefined: empty */
            v = mk_bool(in != (op[0] == 'n'));
        } else
            v = arith(r, op, a, b, n->pos);
        break;
    }
    case E_NEG:
    case E_POS: {
        Val a = eval(r, n->a);
        if (!is_num(a))
            fail_at(r->c, n->pos, "bad operand type for unary %c: %s", n->kind == E_NEG ? '-' : '+',
                    type_name(a.t));
        if (n->kind == E_POS)
            v = a.t == V_BOOL ? mk_int(a.u.i) : a;
        else if (a.t == V_FLOAT)
            v = mk_float(-a.u.f);
        else if (a.u.i == LLONG_MIN)
            fail_at(r->c, n->pos, "integer overflow");
        else
            v = mk_int(-a.u.i);
        break;
    }
    case E_NOT: v = mk_bool(!truthy(eval(r, n->a))); break;
    case E_AND: {
        Val a = eval(r, n->a);
        v = truthy(a) ? eval(r, n->b) : a;
        break;
    }
    case E_OR: {
        Val a = eval(r, n->a);
        v = truthy(a) ? a : eval(r, n->b);
        break;
    }
    case E_COND:
        v = truthy(eval(r, n->b)) ? eval(r, n->a) : n->c ? eval(r, n->c) : mk_undef();
        break;
    case E_LIST: {
        v = list_new(r, (size_t)n->n);
        v.u.l->tuple = n->negate;
        for (int i = 0; i < n->n; i++)
            v.u.l->v[v.u.l->n++] = eval(r, n->items[i]);
        break;
    }
    case E_DICT: {
        Dict *d = arena_alloc(r->c, sizeof(Dict));
        for (int i = 0; i < n->n; i++) {
            Val k = eval(r, n->items[i]);
            dict_set(r, d, k, eval(r, n->items2[i]));
        }
        v.t = V_DICT;
        v.u.d = d;
        break;
    }
    default: fail_at(r->c, n->pos, "internal: not an expression");
    }
    r->depth--;
    return v;
}

/* loop.* for item i of n: one dict per loop, updated in place each iteration */
static Val loop_val(R *r, Dict *d, size_t i, size_t n, const List *items) {
    dict_set(r, d, attr_of("index"), mk_int((long long)i + 1));
    dict_set(r, d, attr_of("index0"), mk_int((long long)i));
    dict_set(r, d, attr_of("revindex"), mk_int((long long)(n - i)));
    dict_set(r, d, attr_of("revindex0"), mk_int((long long)(n - i - 1)));
    dict_set(r, d, attr_of("first"), mk_bool(i == 0));
    dict_set(r, d, attr_of("last"), mk_bool(i + 1 == n));
    dict_set(r, d, attr_of("length"), mk_int((long long)n));
    dict_set(r, d, attr_of("previtem"), i > 0 ? items->v[i - 1] : mk_undef());
    dict_set(r, d, attr_of("nextitem"), i + 1 < n ? items->v[i + 1] : mk_undef());
    Val v = {.t = V_LOOP};
    v.u.d = d;
    return v;
}

static void bind_targets(R *r, const Node *n, int base, Val item) {
    if (n->nnames == 1) {
        var_set(r, base, n->names[0], item);
        return;
    }
    Val l = as_list(r, item, n->pos);
    if ((int)l.u.l->n != n->nnames)
        fail_at(r->c, n->pos, "cannot unpack %zu values into %d names", l.u.l->n, n->nnames);
    for (int k = 0; k < n->nnames; k++)
        var_set(r, base, n->names[k], l.u.l->v[k]);
}

static void exec_for(R *r, const Node *n) {
    Val it = eval(r, n->b);
    if (it.t == V_NONE) fail_at(r->c, n->b->pos, "cannot loop over none");
    Val l = as_list(r, it, n->b->pos);
    int base = r->nv;
    if (n->c) { /* loop filter: evaluated with the target bound, before loop.* exists */
        Val f = list_new(r, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (++r->iters > JINJA_MAX_ITERS)
                fail_at(r->c, n->pos, "more than %d loop iterations", JINJA_MAX_ITERS);
            bind_targets(r, n, base, l.u.l->v[i]);
            if (truthy(eval(r, n->c))) f.u.l->v[f.u.l->n++] = l.u.l->v[i];
        }
        r->nv = base;
        l = f;
    }
    size_t cnt = l.u.l->n;
    int saved_scope = r->scope;
    r->scope = base;
    Dict *ld = arena_alloc(r->c, sizeof(Dict));
    for (size_t i = 0; i < cnt; i++) {
        if (++r->iters > JINJA_MAX_ITERS)
            fail_at(r->c, n->pos, "more than %d loop iterations", JINJA_MAX_ITERS);
        var_set(r, base, "loop", loop_val(r, ld, i, cnt, l.u.l));
        bind_targets(r, n, base, l.u.l->v[i]);
        exec_body(r, n->a);
        if (r->brk == 1) {
            r->brk = 0;
            break;
        }
        r->brk = 0;
    }
    r->nv = base;
    r->scope = saved_scope;
    if (cnt == 0 && n->n2) exec_body(r, n->items2[0]);
}

static void exec_node(R *r, const Node *n) {
    if (++r->depth > JINJA_MAX_DEPTH)
        fail_at(r->c, n->pos, "nested deeper than %d", JINJA_MAX_DEPTH);
    switch (n->kind) {
    case N_TEXT: emit(r, n->lit.u.s.s, n->lit.u.s.n, n->pos); break;
    case N_OUT: {
        Val v = eval(r, n->a);
        if (v.t == V_STR)
            emit(r, v.u.s.s, v.u.s.n, n->pos);
        else {
            Val s = str_of(r, v);
            emit(r, s.u.s.s, s.u.s.n, n->pos);
        }
        break;
    }
    case N_IF: {
        int done = 0;
        for (int i = 0; i < n->n && !done; i++)
            if (truthy(eval(r, n->items[i]))) {
                exec_body(r, n->items2[i]);
                done = 1;
            }
        if (!done && n->a) exec_body(r, n->a);
        break;
    }
    case N_FOR: exec_for(r, n); break;
    case N_SET: {
        Val v = eval(r, n->a);
        if (n->name2) {
            Val ns = lookup(r, n->name);
            if (ns.t != V_NS)
                fail_at(r->c, n->pos, "'%s' is not a namespace: cannot set %s.%s", n->name, n->name,
                        n->name2);
            dict_set(r, ns.u.d, attr_of(n->name2), v);
        } else {
            var_set(r, r->scope, n->name, v);
        }
        break;
    }
    case N_SETBLOCK: {
        size_t start = r->n;
        exec_body(r, n->a);
        Val v = mk_str(astrndup(r->c, r->out ? r->out + start : "", r->n - start), r->n - start);
        r->n = start;
        var_set(r, r->scope, n->name, v);
        break;
    }
    case N_MACRO: {
        Val v = {.t = V_MACRO};
        v.u.m = n;
        var_set(r, r->scope, n->name, v);
        break;
    }
    case N_BREAK: r->brk = 1; break;
    case N_CONTINUE: r->brk = 2; break;
    case N_BODY: exec_body(r, n); break;
    default: fail_at(r->c, n->pos, "internal: not a statement");
    }
    r->depth--;
}

static void exec_body(R *r, const Node *body) {
    for (int i = 0; i < body->n && !r->brk; i++)
        exec_node(r, body->items[i]);
}

int jinja_render(const JinjaTemplate *t, const cJSON *ctx, char **out, size_t *out_len,
                 TunaErr *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    Arena arena = {.limit = ARENA_LIMIT};
    Ctx c = {0};
    c.err = err;
    c.arena = &arena;
    c.src = t->src;
    c.name = t->name;
    R r = {0};
    r.c = &c;
    if (setjmp(c.jb)) {
        free(r.out);
        arena_free(&arena);
        return err && err->code ? err->code : TUNA_EFORMAT;
    }
    if (ctx && cJSON_IsObject(ctx))
        for (const cJSON *e = ctx->child; e; e = e->next)
            if (e->string) var_set(&r, 0, e->string, from_json(&r, e));
    r.scope = r.nv;
    exec_body(&r, t->root);
    char *res = malloc(r.n + 1);
    if (!res) {
        free(r.out);
        arena_free(&arena);
        return tuna_errf(err, TUNA_ENOMEM, "%s: out of memory", t->name);
    }
    if (r.n) memcpy(res, r.out, r.n);
    res[r.n] = 0;
    free(r.out);
    arena_free(&arena);
    *out = res;
    if (out_len) *out_len = r.n;
    return 0;
}

int jinja_render_string(const char *src, size_t len, const char *name, const cJSON *ctx, char **out,
                        size_t *out_len, TunaErr *err) {
    JinjaTemplate *t = NULL;
    *out = NULL;
    int rc = jinja_parse(src, len, name, &t, err);
    if (rc) return rc;
    rc = jinja_render(t, ctx, out, out_len, err);
    jinja_free(t);
    return rc;
}
