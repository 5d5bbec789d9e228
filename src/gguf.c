#include "gguf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/wtype.h"
#include "safetensors.h"
#include "xalloc.h"

// --- types and small helpers -------------------------------------------------------------

struct Gguf {
    char *path;
    const uint8_t *buf;
    size_t len;
    void *map; /* owned mapping (gguf_open), NULL for gguf_open_mem */
    int version;
    GgufKV *kv;
    int n_kv;
    GgufTensor *t;
    int n_t;
    const GgufTensor **by_name; /* (n_t) sorted by name */
    size_t data_off;            /* start of the data section */
};

/* Every ggml type of the format with its block size and bytes per block (gguf-py's
 * GGML_QUANT_SIZES): a file's tensor sizes are checked for all of them; only the ones with
 * `read` set are converted. */
static const struct {
    int type;
    const char *name;
    int block;
    int bytes;
    int read;
} ggml_types[] = {
        {0, "F32", 1, 4, 1},         {1, "F16", 1, 2, 1},         {2, "Q4_0", 32, 18, 1},
        {3, "Q4_1", 32, 20, 1},      {6, "Q5_0", 32, 22, 0},      {7, "Q5_1", 32, 24, 0},
        {8, "Q8_0", 32, 34, 1},      {9, "Q8_1", 32, 40, 0},      {10, "Q2_K", 256, 84, 0},
        {11, "Q3_K", 256, 110, 0},   {12, "Q4_K", 256, 144, 1},   {13, "Q5_K", 256, 176, 1},
        {14, "Q6_K", 256, 210, 1},   {15, "Q8_K", 256, 292, 0},   {16, "IQ2_XXS", 256, 66, 0},
        {17, "IQ2_XS", 256, 74, 0},  {18, "IQ3_XXS", 256, 98, 0}, {19, "IQ1_S", 256, 50, 0},
        {20, "IQ4_NL", 32, 18, 0},   {21, "IQ3_S", 256, 110, 0},  {22, "IQ2_S", 256, 82, 0},
        {23, "IQ4_XS", 256, 136, 0}, {24, "I8", 1, 1, 0},         {25, "I16", 1, 2, 0},
        {26, "I32", 1, 4, 0},        {27, "I64", 1, 8, 0},        {28, "F64", 1, 8, 0},
        {29, "IQ1_M", 256, 56, 0},   {30, "BF16", 1, 2, 1},       {34, "TQ1_0", 256, 54, 0},
        {35, "TQ2_0", 256, 66, 0},   {39, "MXFP4", 32, 17, 0},    {40, "NVFP4", 64, 36, 0},
        {41, "Q1_0", 128, 18, 0},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

static int type_index(int type) {
    for (size_t i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].type == type) return (int)i;
    return -1;
}

const char *ggml_type_name(int type) {
    int i = type_index(type);
    return i < 0 ? "?" : ggml_types[i].name;
}

int ggml_type_supported(int type) {
    int i = type_index(type);
    return i >= 0 && ggml_types[i].read;
}

static const char *const value_type_names[] = {"u8",  "i8",  "u16",  "i16",    "u32",
                                               "i32", "f32", "bool", "string", "array",
                                               "u64", "i64", "f64"};

static const char *vtype_name(int t) {
    return t >= 0 && t <= GGUF_F64 ? value_type_names[t] : "?";
}

/* bytes of one scalar value of type t; 0 for string/array/unknown */
static size_t vtype_size(int t) {
    switch (t) {
    case GGUF_U8:
    case GGUF_I8:
    case GGUF_BOOL: return 1;
    case GGUF_U16:
    case GGUF_I16: return 2;
    case GGUF_U32:
    case GGUF_I32:
    case GGUF_F32: return 4;
    case GGUF_U64:
    case GGUF_I64:
    case GGUF_F64: return 8;
    default: return 0;
    }
}

/* A printable, bounded copy of a name from a file, for one-line messages. */
static const char *show(const char *s, char *buf, size_t cap) {
    size_t i = 0, j = 0;
    if (!s) s = "(null)";
    while (s[i] && j + 4 < cap) {
        unsigned char c = (unsigned char)s[i++];
        buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[i]) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j] = '\0';
    return buf;
}
#define SHOWBUF 96

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

// --- reader --------------------------------------------------------------------------------

typedef struct Rd {
    const uint8_t *p;
    size_t len, pos;
    const char *name;
    TunaErr *err;
} Rd;

static int need(Rd *r, size_t n, const char *what) {
    if (r->len - r->pos < n)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: file ends inside %s (%zu bytes needed, %zu left)",
                         r->name, r->pos, what, n, r->len - r->pos);
    return 0;
}

static int get_u32(Rd *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc) return rc;
    *v = rd32(r->p + r->pos);
    r->pos += 4;
    return 0;
}

static int get_u64(Rd *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc) return rc;
    *v = rd64(r->p + r->pos);
    r->pos += 8;
    return 0;
}

/* A length-prefixed string; *s points into the buffer. */
static int get_str(Rd *r, GgufStr *s, const char *what) {
    uint64_t n;
    size_t at = r->pos;
    int rc = get_u64(r, &n, what);
    if (rc) return rc;
    if (n > r->len - r->pos)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: %s of %" PRIu64 " bytes runs past the end of the file "
                         "(%zu bytes left)",
                         r->name, at, what, n, r->len - r->pos);
    s->s = (const char *)r->p + r->pos;
    s->len = (size_t)n;
    r->pos += (size_t)n;
    return 0;
}

/* A key or tensor name: non-empty, no NUL byte, copied NUL-terminated. */
static int get_name(Rd *r, char **out, const char *what) {
    size_t at = r->pos;
    GgufStr s;
    int rc = get_str(r, &s, what);
    if (rc) return rc;
    if (s.len == 0)
        return tuna_errf(r->err, TUNA_EFORMAT, "%s: at byte %zu: empty %s", r->name, at, what);
    if (s.len > 65535)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: %s of %zu bytes, expected at most 65535", r->name, at,
                         what, s.len);
    if (memchr(s.s, 0, s.len))
        return tuna_errf(r->err, TUNA_EFORMAT, "%s: at byte %zu: %s holds a NUL byte", r->name, at,
                         what);
    *out = xstrndup(s.s, s.len);
    return 0;
}

static int read_scalar(Rd *r, int type, GgufKV *kv, const char *key) {
    size_t sz = vtype_size(type), at = r->pos;
    int rc = need(r, sz, "a metadata value");
    if (rc) return rc;
    const uint8_t *p = r->p + r->pos;
    switch (type) {
    case GGUF_U8: kv->v.u = p[0]; break;
    case GGUF_I8: kv->v.i = (int8_t)p[0]; break;
    case GGUF_U16: kv->v.u = rd16(p); break;
    case GGUF_I16: kv->v.i = (int16_t)rd16(p); break;
    case GGUF_U32: kv->v.u = rd32(p); break;
    case GGUF_I32: kv->v.i = (int32_t)rd32(p); break;
    case GGUF_U64: kv->v.u = rd64(p); break;
    case GGUF_I64: kv->v.i = (int64_t)rd64(p); break;
    case GGUF_F32: {
        uint32_t b = rd32(p);
        float f;
        memcpy(&f, &b, 4);
        kv->v.f = (double)f;
        break;
    }
    case GGUF_F64: {
        uint64_t b = rd64(p);
        memcpy(&kv->v.f, &b, 8);
        break;
    }
    case GGUF_BOOL:
        if (p[0] > 1)
            return tuna_errf(r->err, TUNA_EFORMAT,
                             "%s: at byte %zu: key \"%s\": bool value %u, expected 0 or 1", r->name,
                             at, key, p[0]);
        kv->v.u = p[0];
        break;
    default: break;
    }
    r->pos += sz;
    return 0;
}

static int read_value(Rd *r, uint32_t type, GgufKV *kv, const char *key) {
    char kb[SHOWBUF];
    if (type > GGUF_F64)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: key \"%s\": unknown value type %u (expected 0..12)",
                         r->name, r->pos - 4, show(key, kb, sizeof kb), type);
    kv->type = (GgufType)type;
    if (type == GGUF_STRING) return get_str(r, &kv->v.str, "a string value");
    if (type != GGUF_ARRAY) return read_scalar(r, (int)type, kv, show(key, kb, sizeof kb));

    uint32_t et;
    uint64_t n;
    size_t at = r->pos;
    int rc = get_u32(r, &et, "an array element type");
    if (!rc) rc = get_u64(r, &n, "an array length");
    if (rc) return rc;
    if (et == GGUF_ARRAY)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: key \"%s\": nested arrays are not allowed", r->name, at,
                         show(key, kb, sizeof kb));
    if (et > GGUF_F64)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: key \"%s\": unknown array element type %u "
                         "(expected 0..12)",
                         r->name, at, show(key, kb, sizeof kb), et);
    GgufArr *a = &kv->v.arr;
    a->elem_type = (GgufType)et;
    size_t left = r->len - r->pos;
    size_t esz = et == GGUF_STRING ? 8 : vtype_size((int)et); /* strings: at least their length */
    if (n > left / esz)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: key \"%s\": array of %" PRIu64 " %s elements cannot fit "
                         "in the %zu bytes left",
                         r->name, at, show(key, kb, sizeof kb), n, vtype_name((int)et), left);
    a->n = n;
    a->data = r->p + r->pos;
    if (et != GGUF_STRING) {
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (r->p[r->pos + i] > 1)
                    return tuna_errf(r->err, TUNA_EFORMAT,
                                     "%s: at byte %zu: key \"%s\": bool element %" PRIu64
                                     " is %u, expected 0 or 1",
                                     r->name, r->pos + (size_t)i, show(key, kb, sizeof kb), i,
                                     r->p[r->pos + i]);
        r->pos += (size_t)n * esz;
        return 0;
    }
    GgufStr *strs = xmalloc((size_t)(n ? n : 1) * sizeof *strs);
    a->strs = strs;
    for (uint64_t i = 0; i < n; i++) {
        rc = get_str(r, &strs[i], "an array string");
        if (rc) return rc;
    }
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    const GgufTensor *x = *(const GgufTensor *const *)a, *y = *(const GgufTensor *const *)b;
    return strcmp(x->name, y->name);
}

typedef struct Span {
    uint64_t begin, end;
    const char *name;
} Span;

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int kv_cmp(const void *a, const void *b) {
    return strcmp((*(const GgufKV *const *)a)->key, (*(const GgufKV *const *)b)->key);
}

/* Size in bytes of a tensor of type ti with dims ne, or an error naming it. */
static int tensor_size(Rd *r, size_t at, const GgufTensor *t, size_t *nbytes) {
    char nb[SHOWBUF];
    int ti = type_index(t->type);
    if (ti < 0)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: tensor \"%s\": unknown ggml type %d", r->name, at,
                         show(t->name, nb, sizeof nb), t->type);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t v = (uint64_t)t->ne[d];
        if (numel > (uint64_t)INT64_MAX / v)
            return tuna_errf(r->err, TUNA_EFORMAT,
                             "%s: at byte %zu: tensor \"%s\": element count overflows", r->name, at,
                             show(t->name, nb, sizeof nb));
        numel *= v;
    }
    uint64_t blk = (uint64_t)ggml_types[ti].block;
    if ((uint64_t)t->ne[0] % blk)
        return tuna_errf(r->err, TUNA_EFORMAT,
                         "%s: at byte %zu: tensor \"%s\": row length %" PRId64
                         " is not a multiple of the %s block size %d",
                         r->name, at, show(t->name, nb, sizeof nb), t->ne[0], ggml_types[ti].name,
                         ggml_types[ti].block);
    uint64_t blocks = numel / blk, bytes = (uint64_t)ggml_types[ti].bytes;
    if (blocks > (uint64_t)SIZE_MAX / bytes)
        return tuna_errf(r->err, TUNA_EFORMAT, "%s: at byte %zu: tensor \"%s\": size overflows",
                         r->name, at, show(t->name, nb, sizeof nb));
    *nbytes = (size_t)(blocks * bytes);
    return 0;
}

/* Magic, version, tensor and metadata counts, the counts checked against the bytes left. */
static int parse_header(Rd *r, Gguf *g, uint64_t *n_t, uint64_t *n_kv) {
    TunaErr *err = r->err;
    int rc;
    if (g->len < 4 || memcmp(g->buf, "GGUF", 4) != 0) {
        if (g->len >= 4 && memcmp(g->buf, "FUGG", 4) == 0)
            return tuna_errf(err, TUNA_EUNSUP,
                             "%s: a big-endian GGUF file; tuna reads little-endian ones", g->path);
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte 0: not a GGUF file (expected the magic \"GGUF\")", g->path);
    }
    r->pos = 4;
    uint32_t version;
    if ((rc = get_u32(r, &version, "the version"))) return rc;
    if (version != 2 && version != 3)
        return tuna_errf(err, version == 1 ? TUNA_EUNSUP : TUNA_EFORMAT,
                         "%s: at byte 4: GGUF version %u, tuna reads versions 2 and 3", g->path,
                         version);
    g->version = (int)version;
    if ((rc = get_u64(r, n_t, "the tensor count"))) return rc;
    if ((rc = get_u64(r, n_kv, "the metadata count"))) return rc;
    /* the smallest metadata pair is 13 bytes (1-byte key, type, u8), a tensor info 33 */
    size_t left = r->len - r->pos;
    if (*n_kv > left / 13 || *n_kv > INT_MAX)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte 16: metadata count %" PRIu64
                         " cannot fit in the %zu bytes left",
                         g->path, *n_kv, left);
    if (*n_t > left / 33 || *n_t > INT_MAX)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte 8: tensor count %" PRIu64 " cannot fit in the %zu bytes left",
                         g->path, *n_t, left);
    return 0;
}

/* The n_kv metadata pairs into g->kv; a key given twice is an error. */
static int parse_kvs(Rd *r, Gguf *g, uint64_t n_kv) {
    char nb[SHOWBUF];
    int rc;
    g->kv = xcalloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        GgufKV *kv = &g->kv[i];
        char *key = NULL;
        if ((rc = get_name(r, &key, "metadata key"))) return rc;
        kv->key = key;
        g->n_kv++;
        uint32_t type;
        if ((rc = get_u32(r, &type, "a metadata value type"))) return rc;
        if ((rc = read_value(r, type, kv, key))) return rc;
    }
    if (n_kv > 1) {
        const GgufKV **s = xmalloc((size_t)n_kv * sizeof *s);
        for (int i = 0; i < g->n_kv; i++)
            s[i] = &g->kv[i];
        qsort(s, (size_t)g->n_kv, sizeof *s, kv_cmp);
        for (int i = 1; i < g->n_kv; i++)
            if (strcmp(s[i - 1]->key, s[i]->key) == 0) {
                rc = tuna_errf(r->err, TUNA_EFORMAT, "%s: metadata key \"%s\" appears twice",
                               g->path, show(s[i]->key, nb, sizeof nb));
                free(s);
                return rc;
            }
        free(s);
    }
    return 0;
}

/* general.alignment (a power-of-two u32), 32 when absent. */
static int get_alignment(const Gguf *g, uint64_t *align, TunaErr *err) {
    *align = 32;
    const GgufKV *ak = gguf_find_kv(g, "general.alignment");
    if (ak) {
        if (ak->type != GGUF_U32)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: key \"general.alignment\": expected a u32, found %s", g->path,
                             vtype_name(ak->type));
        *align = ak->v.u;
        if (*align == 0 || (*align & (*align - 1)))
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: key \"general.alignment\": %" PRIu64 ", expected a power of two",
                             g->path, *align);
    }
    return 0;
}

/* One tensor info (name, dims, type, offset) into t, counted in g->n_t once named. */
static int parse_tensor_info(Rd *r, Gguf *g, GgufTensor *t, uint64_t align, uint64_t *off) {
    TunaErr *err = r->err;
    char nb[SHOWBUF];
    int rc;
    size_t at = r->pos;
    char *name = NULL;
    if ((rc = get_name(r, &name, "tensor name"))) return rc;
    t->name = name;
    g->n_t++;
    uint32_t nd;
    if ((rc = get_u32(r, &nd, "a tensor's dimension count"))) return rc;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte %zu: tensor \"%s\": %u dimensions, expected 1 to %d", g->path,
                         r->pos - 4, show(name, nb, sizeof nb), nd, GGUF_MAX_DIMS);
    t->ndim = (int)nd;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        if ((rc = get_u64(r, &v, "a tensor dimension"))) return rc;
        if (v == 0 || v > (uint64_t)INT64_MAX)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: at byte %zu: tensor \"%s\": dimension %u is %" PRIu64
                             ", expected 1 to 2^63-1",
                             g->path, r->pos - 8, show(name, nb, sizeof nb), d, v);
        t->ne[d] = (int64_t)v;
    }
    uint32_t type;
    if ((rc = get_u32(r, &type, "a tensor type"))) return rc;
    t->type = type > INT_MAX ? -1 : (int)type;
    if (type > INT_MAX || type_index((int)type) < 0)
        return tuna_errf(err, TUNA_EFORMAT, "%s: at byte %zu: tensor \"%s\": unknown ggml type %u",
                         g->path, r->pos - 4, show(name, nb, sizeof nb), type);
    if ((rc = tensor_size(r, at, t, &t->nbytes))) return rc;
    if ((rc = get_u64(r, off, "a tensor offset"))) return rc;
    if (*off % align)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte %zu: tensor \"%s\": offset %" PRIu64
                         " is not a multiple of the alignment %" PRIu64,
                         g->path, r->pos - 8, show(name, nb, sizeof nb), *off, align);
    return 0;
}

/* Points each tensor into the data section (aligned after the infos); tensors must lie
 * inside it and not overlap. */
static int place_tensors(Rd *r, Gguf *g, const uint64_t *offs, uint64_t align) {
    TunaErr *err = r->err;
    char nb[SHOWBUF];
    int rc = 0;
    /* the data section starts at the next multiple of the alignment */
    size_t data = r->pos + (size_t)((align - r->pos % align) % align);
    if (g->n_t > 0 && (r->pos > r->len || data > r->len || data < r->pos))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: at byte %zu: file ends before the data section (%zu bytes expected)",
                         g->path, r->pos, data);
    g->data_off = data;
    size_t dsize = data <= r->len ? r->len - data : 0;
    Span *sp = xmalloc((size_t)(g->n_t ? g->n_t : 1) * sizeof *sp);
    for (int i = 0; i < g->n_t; i++) {
        GgufTensor *t = &g->t[i];
        if (offs[i] > dsize || t->nbytes > dsize - offs[i]) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: tensor \"%s\": bytes [%" PRIu64 ", %" PRIu64
                           ") of the data section run past its end (%zu bytes)",
                           g->path, show(t->name, nb, sizeof nb), offs[i],
                           offs[i] + (uint64_t)t->nbytes, dsize);
            free(sp);
            return rc;
        }
        t->data = g->buf + data + offs[i];
        sp[i] = (Span){offs[i], offs[i] + t->nbytes, t->name};
    }
    qsort(sp, (size_t)g->n_t, sizeof *sp, span_cmp);
    for (int i = 1; i < g->n_t && !rc; i++)
        if (sp[i].begin < sp[i - 1].end) {
            char nb2[SHOWBUF];
            rc = tuna_errf(
                    err, TUNA_EFORMAT,
                    "%s: tensors \"%s\" and \"%s\" overlap in the data section (bytes %" PRIu64
                    " and %" PRIu64 ")",
                    g->path, show(sp[i - 1].name, nb, sizeof nb), show(sp[i].name, nb2, sizeof nb2),
                    sp[i - 1].begin, sp[i].begin);
        }
    free(sp);
    return rc;
}

/* g->by_name, the tensors sorted by name; a name given twice is an error. */
static int index_tensor_names(Gguf *g, TunaErr *err) {
    char nb[SHOWBUF];
    g->by_name = xmalloc((size_t)(g->n_t ? g->n_t : 1) * sizeof *g->by_name);
    for (int i = 0; i < g->n_t; i++)
        g->by_name[i] = &g->t[i];
    qsort(g->by_name, (size_t)g->n_t, sizeof *g->by_name, name_cmp);
    for (int i = 1; i < g->n_t; i++)
        if (strcmp(g->by_name[i - 1]->name, g->by_name[i]->name) == 0)
            return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\" appears twice", g->path,
                             show(g->by_name[i]->name, nb, sizeof nb));
    return 0;
}

static int parse(Gguf *g, TunaErr *err) {
    Rd r = {g->buf, g->len, 0, g->path, err};
    uint64_t n_t, n_kv, align;
    int rc;
    if ((rc = parse_header(&r, g, &n_t, &n_kv))) return rc;
    if ((rc = parse_kvs(&r, g, n_kv))) return rc;
    if ((rc = get_alignment(g, &align, err))) return rc;
    g->t = xcalloc((size_t)(n_t ? n_t : 1), sizeof *g->t);
    uint64_t *offs = xcalloc((size_t)(n_t ? n_t : 1), sizeof *offs);
    for (uint64_t i = 0; i < n_t && !rc; i++)
        rc = parse_tensor_info(&r, g, &g->t[i], align, &offs[i]);
    if (!rc) rc = place_tensors(&r, g, offs, align);
    if (!rc) rc = index_tensor_names(g, err);
    free(offs);
    return rc;
}

static int open_buf(Gguf *g, Gguf **out, TunaErr *err) {
    int rc = parse(g, err);
    if (rc) {
        gguf_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int gguf_open_mem(const void *buf, size_t len, const char *name, Gguf **out, TunaErr *err) {
    *out = NULL;
    Gguf *g = xcalloc(1, sizeof *g);
    g->path = xstrdup(name ? name : "(memory)");
    g->buf = buf ? buf : (const uint8_t *)"";
    g->len = buf ? len : 0;
    return open_buf(g, out, err);
}

int gguf_open(const char *path, Gguf **out, TunaErr *err) {
    *out = NULL;
    void *map;
    size_t size;
    int rc = xmap_readonly(path, 24, "the GGUF header", NULL, &map, &size, err);
    if (rc) return rc;
    Gguf *g = xcalloc(1, sizeof *g);
    g->path = xstrdup(path);
    g->map = map;
    g->buf = map;
    g->len = size;
    return open_buf(g, out, err);
}

void gguf_free(Gguf *g) {
    if (!g) return;
    for (int i = 0; i < g->n_kv; i++) {
        free((char *)g->kv[i].key);
        if (g->kv[i].type == GGUF_ARRAY) free((GgufStr *)g->kv[i].v.arr.strs);
    }
    free(g->kv);
    for (int i = 0; i < g->n_t; i++)
        free((char *)g->t[i].name);
    free(g->t);
    free(g->by_name);
    if (g->map) munmap(g->map, g->len);
    free(g->path);
    free(g);
}

const char *gguf_path(const Gguf *g) {
    return g->path;
}
int gguf_version(const Gguf *g) {
    return g->version;
}
int gguf_kv_count(const Gguf *g) {
    return g->n_kv;
}
const GgufKV *gguf_kv_at(const Gguf *g, int i) {
    return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

const GgufKV *gguf_find_kv(const Gguf *g, const char *key) {
    for (int i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

int gguf_tensor_count(const Gguf *g) {
    return g->n_t;
}
const GgufTensor *gguf_tensor_at(const Gguf *g, int i) {
    return i >= 0 && i < g->n_t ? &g->t[i] : NULL;
}

const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name) {
    int lo = 0, hi = g->n_t - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(g->by_name[mid]->name, name);
        if (c == 0) return g->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

size_t gguf_tensor_numel(const GgufTensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->ne[d];
    return n;
}

// --- typed getters -------------------------------------------------------------------------

static int is_int_type(int t) {
    return t == GGUF_U8 || t == GGUF_I8 || t == GGUF_U16 || t == GGUF_I16 || t == GGUF_U32 ||
           t == GGUF_I32 || t == GGUF_U64 || t == GGUF_I64 || t == GGUF_BOOL;
}
static int is_unsigned(int t) {
    return t == GGUF_U8 || t == GGUF_U16 || t == GGUF_U32 || t == GGUF_U64 || t == GGUF_BOOL;
}

static int wrong_type(const Gguf *g, const char *key, const char *expected, int found,
                      TunaErr *err) {
    char kb[SHOWBUF];
    return tuna_errf(err, TUNA_EFORMAT, "%s: key \"%s\": expected %s, found %s", g->path,
                     show(key, kb, sizeof kb), expected, vtype_name(found));
}

int gguf_get_int(const Gguf *g, const char *key, int64_t *out, TunaErr *err) {
    const GgufKV *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    if (!is_int_type(kv->type)) return wrong_type(g, key, "an integer", kv->type, err);
    if (is_unsigned(kv->type)) {
        if (kv->v.u > (uint64_t)INT64_MAX) {
            char kb[SHOWBUF];
            return tuna_errf(err, TUNA_EFORMAT, "%s: key \"%s\": %" PRIu64 " is out of range",
                             g->path, show(key, kb, sizeof kb), kv->v.u);
        }
        *out = (int64_t)kv->v.u;
    } else {
        *out = kv->v.i;
    }
    return 1;
}

int gguf_get_float(const Gguf *g, const char *key, double *out, TunaErr *err) {
    const GgufKV *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type == GGUF_F32 || kv->type == GGUF_F64)
        *out = kv->v.f;
    else if (is_int_type(kv->type))
        *out = is_unsigned(kv->type) ? (double)kv->v.u : (double)kv->v.i;
    else
        return wrong_type(g, key, "a number", kv->type, err);
    return 1;
}

int gguf_get_bool(const Gguf *g, const char *key, int *out, TunaErr *err) {
    const GgufKV *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_BOOL) return wrong_type(g, key, "a bool", kv->type, err);
    *out = (int)kv->v.u;
    return 1;
}

int gguf_get_str(const Gguf *g, const char *key, GgufStr *out, TunaErr *err) {
    const GgufKV *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_STRING) return wrong_type(g, key, "a string", kv->type, err);
    *out = kv->v.str;
    return 1;
}

int gguf_get_arr(const Gguf *g, const char *key, const GgufArr **out, TunaErr *err) {
    const GgufKV *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_ARRAY) return wrong_type(g, key, "an array", kv->type, err);
    *out = &kv->v.arr;
    return 1;
}

int64_t gguf_arr_int(const GgufArr *a, uint64_t i) {
    if (i >= a->n) return 0;
    const uint8_t *p = (const uint8_t *)a->data + i * vtype_size(a->elem_type);
    switch (a->elem_type) {
    case GGUF_U8:
    case GGUF_BOOL: return p[0];
    case GGUF_I8: return (int8_t)p[0];
    case GGUF_U16: return rd16(p);
    case GGUF_I16: return (int16_t)rd16(p);
    case GGUF_U32: return rd32(p);
    case GGUF_I32: return (int32_t)rd32(p);
    case GGUF_U64: return (int64_t)rd64(p);
    case GGUF_I64: return (int64_t)rd64(p);
    default: return 0;
    }
}

double gguf_arr_float(const GgufArr *a, uint64_t i) {
    if (i >= a->n) return 0.0;
    const uint8_t *p = (const uint8_t *)a->data + i * vtype_size(a->elem_type);
    if (a->elem_type == GGUF_F32) {
        uint32_t b = rd32(p);
        float f;
        memcpy(&f, &b, 4);
        return (double)f;
    }
    if (a->elem_type == GGUF_F64) {
        uint64_t b = rd64(p);
        double d;
        memcpy(&d, &b, 8);
        return d;
    }
    if (a->elem_type == GGUF_U64) return (double)rd64(p);
    return (double)gguf_arr_int(a, i);
}

// --- conversion to f32: the dequantizers are kernels/wtype.c's table ---------------------

int gguf_tensor_to_f32(const Gguf *g, const GgufTensor *t, float *dst, size_t n, TunaErr *err) {
    char nb[SHOWBUF];
    if (!t) return tuna_errf(err, TUNA_EINVAL, "gguf_tensor_to_f32: NULL tensor");
    const char *path = g ? g->path : "(gguf)";
    if (!ggml_type_supported(t->type))
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: tensor \"%s\": type %s cannot be read (tuna reads F32, F16, BF16, "
                         "Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K)",
                         path, show(t->name, nb, sizeof nb), ggml_type_name(t->type));
    size_t numel = gguf_tensor_numel(t);
    if (n != numel)
        return tuna_errf(err, TUNA_EINVAL, "%s: tensor \"%s\": %zu elements, %zu requested", path,
                         show(t->name, nb, sizeof nb), numel, n);
    int wt = wtype_by_ggml(t->type);
    if (wt < 0)
        return tuna_errf(err, TUNA_EUNSUP, "%s: tensor \"%s\": type %s has no converter", path,
                         show(t->name, nb, sizeof nb), ggml_type_name(t->type));
    wtype_info[wt].dequant_row(t->data, dst, (int64_t)numel, NULL);
    return 0;
}

void gguf_tensor_release(const GgufTensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !t || !t->nbytes) return;
    uintptr_t a = (uintptr_t)t->data, e = a + t->nbytes, ps = (uintptr_t)page;
    a = (a + ps - 1) / ps * ps;
    e = e / ps * ps;
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

// --- model paths ---------------------------------------------------------------------------

static int ends_gguf(const char *s) {
    size_t n = strlen(s);
    return n >= 5 && strcasecmp(s + n - 5, ".gguf") == 0;
}

int gguf_model_path(const char *path, char *out, size_t cap, TunaErr *err) {
    struct stat sb;
    if (ends_gguf(path) && !(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))) {
        if ((size_t)snprintf(out, cap, "%s", path) >= cap)
            return tuna_errf(err, TUNA_EINVAL, "%s: path too long", path);
        return 1;
    }
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return 0;
    char cfg[4096];
    if ((size_t)snprintf(cfg, sizeof cfg, "%s/config.json", path) >= sizeof cfg) return 0;
    if (access(cfg, F_OK) == 0) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    char first[256] = "", second[256] = "";
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !ends_gguf(de->d_name)) continue;
        char full[4096];
        if ((size_t)snprintf(full, sizeof full, "%s/%s", path, de->d_name) >= sizeof full) continue;
        if (stat(full, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (count == 0)
            snprintf(first, sizeof first, "%s", de->d_name);
        else if (count == 1)
            snprintf(second, sizeof second, "%s", de->d_name);
        count++;
    }
    closedir(d);
    if (count == 0) return 0;
    if (count > 1)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: holds %d .gguf files (%s, %s%s) and no config.json; name the file "
                         "to use",
                         path, count, first, second, count > 2 ? ", ..." : "");
    if ((size_t)snprintf(out, cap, "%s/%s", path, first) >= cap)
        return tuna_errf(err, TUNA_EINVAL, "%s: path too long", path);
    return 1;
}
