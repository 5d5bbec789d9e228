#include "safetensors.h"

#include "../kernels/wtype.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xalloc.h"

// --- types and small helpers -------------------------------------------------------------

typedef struct StShard {
    char *path;
    void *map; /* NULL when the file is empty of mappable bytes (never: files are >= 8 bytes) */
    size_t size;
} StShard;

struct SafeTensors {
    StShard *shards;
    int n_shards;
    StTensor *tensors;
    int n, cap;
    const StTensor **by_name; /* (n) sorted by name, for safetensors_find */
    char **meta;              /* (2 * n_meta) key, value, key, value, ... */
    int n_meta;
};

/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

static const struct {
    const char *name;
    StDtype dtype;
    size_t size;
} dtype_table[] = {
        {"F32", ST_F32, 4}, {"F16", ST_F16, 2},   {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
        {"I64", ST_I64, 8}, {"I32", ST_I32, 4},   {"I16", ST_I16, 2},   {"I8", ST_I8, 1},
        {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};
#define N_DTYPES (sizeof dtype_table / sizeof dtype_table[0])

/* Valid in the format but not handled by tuna: reported as TUNA_EUNSUP, not as garbage. */
static const char *const dtype_unsupported[] = {"U16",     "U32", "U64",     "F8_E4M3", "F8_E5M2",
                                                "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};

const char *st_dtype_name(StDtype d) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtype_table[i].dtype == d) return dtype_table[i].name;
    return "?";
}

size_t st_dtype_size(StDtype d) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtype_table[i].dtype == d) return dtype_table[i].size;
    return 0;
}

size_t st_tensor_numel(const StTensor *t) {
    size_t es = st_dtype_size(t->dtype);
    return es ? t->nbytes / es : 0;
}

/* A printable, bounded copy of a name from a file, for one-line messages: control bytes
 * become '?', long names are cut with "...". */
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

static const char *json_type_name(const cJSON *j) {
    if (!j) return "nothing";
    if (cJSON_IsObject(j)) return "object";
    if (cJSON_IsArray(j)) return "array";
    if (cJSON_IsString(j)) return "string";
    if (cJSON_IsNumber(j)) return "number";
    if (cJSON_IsBool(j)) return "boolean";
    if (cJSON_IsNull(j)) return "null";
    return "invalid";
}

/* A JSON number that is a non-negative integer exactly representable; 0 on success. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0.0) || d > ST_MAX_JSON_INT || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

/* Describes a JSON value for "found ..." in messages. */
static const char *json_found(const cJSON *j, char *buf, size_t cap) {
    if (cJSON_IsNumber(j)) {
        snprintf(buf, cap, "%.17g", j->valuedouble);
        return buf;
    }
    if (cJSON_IsString(j)) {
        char tmp[48];
        snprintf(buf, cap, "string \"%s\"", show(j->valuestring, tmp, sizeof tmp));
        return buf;
    }
    return json_type_name(j);
}

// --- reader --------------------------------------------------------------------------------

static void st_push_tensor(SafeTensors *st, const StTensor *t) {
    if (st->n == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 64;
        st->tensors = xrealloc(st->tensors, (size_t)st->cap * sizeof *st->tensors);
    }
    st->tensors[st->n++] = *t;
}

static const char *st_meta_get(const SafeTensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[2 * i], key) == 0) return st->meta[2 * i + 1];
    return NULL;
}

/* Maps path read-only as a new shard; returns its index or a negative TUNA_E*. */
static int st_map_file(SafeTensors *st, const char *path, const char *what, TunaErr *err) {
    void *map;
    size_t size;
    int rc = xmap_readonly(path, 8, "the header length", what, &map, &size, err);
    if (rc) return rc;
    st->shards = xrealloc(st->shards, (size_t)(st->n_shards + 1) * sizeof *st->shards);
    st->shards[st->n_shards] = (StShard){xstrdup(path), map, size};
    return st->n_shards++;
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

/* Parses one tensor entry of the header into *t (name and data filled by the caller). */
static int st_parse_entry(const char *path, const cJSON *e, uint64_t data_size, StTensor *t,
                          uint64_t *b_out, uint64_t *e_out, TunaErr *err) {
    char nb[SHOWBUF], fb[SHOWBUF];
    const char *name = show(e->string, nb, sizeof nb);
    if (!cJSON_IsObject(e))
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\": expected an object, found %s", path,
                         name, json_type_name(e));

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!jd)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\": missing \"dtype\"", path, name);
    if (!cJSON_IsString(jd))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": \"dtype\" must be a string, found %s", path, name,
                         json_found(jd, fb, sizeof fb));
    int found = 0;
    for (size_t i = 0; i < N_DTYPES; i++) {
        if (strcmp(jd->valuestring, dtype_table[i].name) == 0) {
            t->dtype = dtype_table[i].dtype;
            found = 1;
        }
    }
    if (!found) {
        for (size_t i = 0; i < sizeof dtype_unsupported / sizeof dtype_unsupported[0]; i++)
            if (strcmp(jd->valuestring, dtype_unsupported[i]) == 0)
                return tuna_errf(err, TUNA_EUNSUP,
                                 "%s: tensor \"%s\": dtype %s is not supported (supported: F32, "
                                 "F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)",
                                 path, name, dtype_unsupported[i]);
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": unknown dtype \"%s\" (expected one of F32, F16, "
                         "BF16, F64, I64, I32, I16, I8, U8, BOOL)",
                         path, name, show(jd->valuestring, fb, 40));
    }

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!js)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\": missing \"shape\"", path, name);
    if (!cJSON_IsArray(js))
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": \"shape\" must be an array, found %s", path, name,
                         json_found(js, fb, sizeof fb));
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: tensor \"%s\": shape has %d dimensions, at most %d supported", path,
                         name, nd, ST_MAX_DIMS);
    uint64_t numel = 1;
    int overflow = 0, k = 0;
    for (const cJSON *d = js->child; d; d = d->next, k++) {
        uint64_t v;
        if (json_u64(d, &v) != 0)
            return tuna_errf(
                    err, TUNA_EFORMAT,
                    "%s: tensor \"%s\": shape[%d] must be a non-negative integer, found %s", path,
                    name, k, json_found(d, fb, sizeof fb));
        t->shape[k] = (int64_t)v;
        if (__builtin_mul_overflow(numel, v, &numel)) overflow = 1;
    }
    t->ndim = nd;
    uint64_t need;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &need))
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\": shape product overflows 64 bits",
                         path, name);

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!jo)
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\": missing \"data_offsets\"", path,
                         name);
    uint64_t b = 0, en = 0;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_u64(jo->child, &b) != 0 ||
        json_u64(jo->child->next, &en) != 0) {
        if (cJSON_IsArray(jo) && cJSON_GetArraySize(jo) != 2)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s: tensor \"%s\": \"data_offsets\" must be [begin, end], found %d "
                             "elements",
                             path, name, cJSON_GetArraySize(jo));
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": \"data_offsets\" must be two non-negative integers "
                         "[begin, end]",
                         path, name);
    }
    if (b > en)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                         "] has begin > end",
                         path, name, b, en);
    if (en > data_size)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64
                         "] end beyond the data section of %" PRIu64 " bytes",
                         path, name, b, en, data_size);
    if (en - b != need)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: tensor \"%s\": shape (%" PRIu64 " elements) x %s (%zu bytes) needs "
                         "%" PRIu64 " bytes but data_offsets [%" PRIu64 ", %" PRIu64
                         "] span %" PRIu64,
                         path, name, numel, st_dtype_name(t->dtype), st_dtype_size(t->dtype), need,
                         b, en, en - b);
    t->nbytes = (size_t)need; /* need <= data_size <= file size <= SIZE_MAX */
    *b_out = b;
    *e_out = en;
    return 0;
}

/* Maps one .safetensors file, validates its header and appends its tensors and metadata. */
static int st_load_file(SafeTensors *st, const char *path, TunaErr *err) {
    int shard = st_map_file(st, path, "safetensors file", err);
    if (shard < 0) return shard;
    const unsigned char *base = st->shards[shard].map;
    size_t size = st->shards[shard].size;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen > ST_MAX_HEADER)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: header length %" PRIu64 " is larger than the %u-byte limit "
                         "(not a safetensors file?)",
                         path, hlen, ST_MAX_HEADER);
    if (hlen > size - 8)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: header length %" PRIu64 " exceeds the %zu bytes after the length "
                         "(file truncated?)",
                         path, hlen, size - 8);
    const char *hdr = (const char *)base + 8;
    if (memchr(hdr, '\0', (size_t)hlen))
        return tuna_errf(err, TUNA_EFORMAT, "%s: header contains a NUL byte at offset %zu", path,
                         (size_t)((const char *)memchr(hdr, '\0', (size_t)hlen) - hdr) + 8);

    /* cJSON wants a NUL-terminated buffer; the header is at most ST_MAX_HEADER bytes. */
    char *text = xstrndup(hdr, (size_t)hlen);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    int rc = 0;
    if (!root) {
        size_t at = end ? (size_t)(end - text) : 0;
        rc = tuna_errf(err, TUNA_EFORMAT,
                       "%s: header is not valid JSON (error at header byte %zu of %" PRIu64 ")",
                       path, at, hlen);
        goto fail;
    }
    for (const char *p = end; *p; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: header has trailing bytes after the JSON object at header byte %zu",
                           path, (size_t)(p - text));
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: header must be a JSON object, found %s", path,
                       json_type_name(root));
        goto fail;
    }

    uint64_t data_size = (uint64_t)size - 8 - hlen;
    const unsigned char *data = base + 8 + hlen;
    int first = st->n, n_meta_seen = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        char nb[SHOWBUF], fb[SHOWBUF];
        if (strcmp(e->string, "__metadata__") == 0) {
            if (n_meta_seen++) {
                rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"__metadata__\" appears twice", path);
                goto fail;
            }
            if (!cJSON_IsObject(e)) {
                rc = tuna_errf(err, TUNA_EFORMAT,
                               "%s: \"__metadata__\" must be an object of strings, found %s", path,
                               json_type_name(e));
                goto fail;
            }
            for (const cJSON *m = e->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    rc = tuna_errf(err, TUNA_EFORMAT,
                                   "%s: \"__metadata__\".\"%s\" must be a string, found %s", path,
                                   show(m->string, nb, sizeof nb), json_found(m, fb, sizeof fb));
                    goto fail;
                }
                if (st_meta_get(st, m->string)) continue; /* first shard wins */
                st->meta = xrealloc(st->meta, (size_t)(st->n_meta + 1) * 2 * sizeof *st->meta);
                st->meta[2 * st->n_meta] = xstrdup(m->string);
                st->meta[2 * st->n_meta + 1] = xstrdup(m->valuestring);
                st->n_meta++;
            }
            continue;
        }
        if (st->n >= ST_MAX_TENSORS) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: more than %d tensors (limit)", path,
                           ST_MAX_TENSORS);
            goto fail;
        }
        StTensor t = {0};
        uint64_t b = 0, en = 0;
        rc = st_parse_entry(path, e, data_size, &t, &b, &en, err);
        if (rc) goto fail;
        t.name = xstrdup(e->string);
        t.data = data + b;
        t.shard = shard;
        st_push_tensor(st, &t);
    }

    /* No two non-empty tensors of this file may share bytes. */
    int nt = st->n - first;
    if (nt > 1) {
        Span *sp = xmalloc((size_t)nt * sizeof *sp);
        int ns = 0;
        for (int i = first; i < st->n; i++) {
            const StTensor *t = &st->tensors[i];
            if (!t->nbytes) continue;
            uint64_t b = (uint64_t)((const unsigned char *)t->data - data);
            sp[ns++] = (Span){b, b + t->nbytes, t->name};
        }
        qsort(sp, (size_t)ns, sizeof *sp, span_cmp);
        for (int i = 1; i < ns; i++) {
            if (sp[i].begin < sp[i - 1].end) {
                char n1[SHOWBUF], n2[SHOWBUF];
                rc = tuna_errf(err, TUNA_EFORMAT,
                               "%s: tensors \"%s\" [%" PRIu64 ", %" PRIu64 ") and \"%s\" [%" PRIu64
                               ", %" PRIu64 ") overlap",
                               path, show(sp[i - 1].name, n1, sizeof n1), sp[i - 1].begin,
                               sp[i - 1].end, show(sp[i].name, n2, sizeof n2), sp[i].begin,
                               sp[i].end);
                break;
            }
        }
        free(sp);
        if (rc) goto fail;
    }

fail:
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int by_name_cmp(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Builds the sorted name index and rejects duplicate names. */
static int st_index_names(SafeTensors *st, TunaErr *err) {
    st->by_name = xmalloc((size_t)(st->n ? st->n : 1) * sizeof *st->by_name);
    for (int i = 0; i < st->n; i++)
        st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, by_name_cmp);
    for (int i = 1; i < st->n; i++) {
        const StTensor *a = st->by_name[i - 1], *b = st->by_name[i];
        if (strcmp(a->name, b->name) != 0) continue;
        char nb[SHOWBUF];
        if (a->shard == b->shard)
            return tuna_errf(err, TUNA_EFORMAT, "%s: duplicate tensor name \"%s\"",
                             st->shards[a->shard].path, show(a->name, nb, sizeof nb));
        return tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\" is also in %s",
                         st->shards[b->shard].path, show(a->name, nb, sizeof nb),
                         st->shards[a->shard].path);
    }
    return 0;
}

/* A shard name from an index is a relative path that stays inside the model directory:
 * not empty, not absolute, and no ".." component. (Symlinks are followed on purpose: the
 * Hugging Face cache links snapshot files to blobs elsewhere.) */
static int shard_name_ok(const char *s) {
    if (!s[0] || s[0] == '/') return 0;
    for (const char *p = s; *p;) {
        const char *q = strchr(p, '/');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!q) break;
        p = q + 1;
    }
    return 1;
}

static int st_load_index(SafeTensors *st, const char *index_path, const char *dir, TunaErr *err) {
    char nb[SHOWBUF], fb[SHOWBUF];
    struct stat sb;
    if (stat(index_path, &sb) != 0)
        return tuna_errf(err, errno == ENOENT ? TUNA_ENOTFOUND : TUNA_EIO, "%s: cannot stat: %s",
                         index_path, strerror(errno));
    if (!S_ISREG(sb.st_mode) || sb.st_size > (off_t)ST_MAX_HEADER)
        return tuna_errf(err, TUNA_EFORMAT,
                         "%s: expected a regular file of at most %u bytes, found %lld bytes",
                         index_path, ST_MAX_HEADER, (long long)sb.st_size);
    size_t len = 0;
    char *text = xread_file(index_path, &len);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", index_path, strerror(errno));
    int rc = 0;
    char **shards = NULL;
    int n_sh = 0;
    char *shard_path = NULL;
    const char *end = NULL;
    cJSON *root = NULL;
    if (memchr(text, '\0', len)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: contains a NUL byte", index_path);
        goto fail;
    }
    root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: not valid JSON (error at byte %zu)", index_path,
                       end ? (size_t)(end - text) : (size_t)0);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: expected a JSON object, found %s", index_path,
                       json_type_name(root));
        goto fail;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"weight_map\" must be an object, found %s",
                       index_path, json_type_name(wm));
        goto fail;
    }
    if (!wm->child) {
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"weight_map\" is empty", index_path);
        goto fail;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: weight_map[\"%s\"] must be a file name string, found %s",
                           index_path, show(e->string, nb, sizeof nb),
                           json_found(e, fb, sizeof fb));
            goto fail;
        }
        if (!shard_name_ok(e->valuestring)) {
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: weight_map[\"%s\"] = \"%s\" must be a file inside the model "
                           "directory (relative, no \"..\")",
                           index_path, show(e->string, nb, sizeof nb),
                           show(e->valuestring, fb, sizeof fb));
            goto fail;
        }
        int seen = 0;
        for (int i = 0; i < n_sh && !seen; i++)
            seen = strcmp(shards[i], e->valuestring) == 0;
        if (!seen) {
            shards = xrealloc(shards, (size_t)(n_sh + 1) * sizeof *shards);
            shards[n_sh++] = e->valuestring; /* borrowed from root */
        }
    }
    for (int i = 0; i < n_sh; i++) {
        size_t pl = strlen(dir) + 1 + strlen(shards[i]) + 1;
        shard_path = xmalloc(pl);
        snprintf(shard_path, pl, "%s/%s", dir, shards[i]);
        if (access(shard_path, F_OK) != 0) {
            rc = tuna_errf(err, TUNA_ENOTFOUND, "%s: shard \"%s\" not found (expected %s)",
                           index_path, show(shards[i], nb, sizeof nb), shard_path);
            goto fail;
        }
        rc = st_load_file(st, shard_path, err);
        if (rc) goto fail;
        free(shard_path);
        shard_path = NULL;
    }
    rc = st_index_names(st, err);
    if (rc) goto fail;
    for (const cJSON *e = wm->child; e; e = e->next) {
        const StTensor *t = safetensors_find(st, e->string);
        if (!t || strcmp(shards[t->shard], e->valuestring) != 0) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: tensor \"%s\" is listed in shard \"%s\" but %s",
                           index_path, show(e->string, nb, sizeof nb),
                           show(e->valuestring, fb, sizeof fb),
                           t ? "is stored in another shard" : "that file does not contain it");
            goto fail;
        }
    }

fail:
    free(shard_path);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int safetensors_open(const char *path, SafeTensors **out, TunaErr *err) {
    if (out) *out = NULL;
    if (!path || !out) return tuna_errf(err, TUNA_EINVAL, "safetensors_open: NULL argument");
    SafeTensors *st = xcalloc(1, sizeof *st);
    char *buf = NULL;
    int rc;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        rc = tuna_errf(err, e == ENOENT ? TUNA_ENOTFOUND : TUNA_EIO, "%s: %s", path, strerror(e));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        size_t pl = strlen(path) + 64;
        buf = xmalloc(pl);
        snprintf(buf, pl, "%s/model.safetensors", path);
        if (access(buf, F_OK) == 0) {
            rc = st_load_file(st, buf, err);
            if (!rc) rc = st_index_names(st, err);
        } else {
            snprintf(buf, pl, "%s/model.safetensors.index.json", path);
            if (access(buf, F_OK) != 0) {
                rc = tuna_errf(err, TUNA_ENOTFOUND,
                               "%s: no model.safetensors or model.safetensors.index.json", path);
                goto fail;
            }
            rc = st_load_index(st, buf, path, err);
        }
    } else if (ends_with(path, ".index.json")) {
        buf = xstrdup(path);
        char *slash = strrchr(buf, '/');
        if (slash) *slash = '\0';
        rc = st_load_index(st, path, slash ? (buf[0] ? buf : "/") : ".", err);
    } else {
        rc = st_load_file(st, path, err);
        if (!rc) rc = st_index_names(st, err);
    }
    if (rc) goto fail;
    free(buf);
    *out = st;
    return 0;

fail:
    free(buf);
    safetensors_free(st);
    return rc;
}

void safetensors_free(SafeTensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_shards; i++) {
        munmap(st->shards[i].map, st->shards[i].size);
        free(st->shards[i].path);
    }
    for (int i = 0; i < st->n; i++)
        free((char *)st->tensors[i].name);
    for (int i = 0; i < 2 * st->n_meta; i++)
        free(st->meta[i]);
    free(st->meta);
    free(st->shards);
    free(st->tensors);
    free(st->by_name);
    free(st);
}

int safetensors_count(const SafeTensors *st) {
    return st ? st->n : 0;
}

const StTensor *safetensors_at(const SafeTensors *st, int i) {
    return st && i >= 0 && i < st->n ? &st->tensors[i] : NULL;
}

const StTensor *safetensors_find(const SafeTensors *st, const char *name) {
    if (!st || !name || !st->by_name) return NULL;
    StTensor key = {.name = name};
    const StTensor *kp = &key;
    const StTensor *const *hit =
            bsearch(&kp, st->by_name, (size_t)st->n, sizeof *st->by_name, by_name_cmp);
    return hit ? *hit : NULL;
}

const char *safetensors_metadata(const SafeTensors *st, const char *key) {
    return st && key ? st_meta_get(st, key) : NULL;
}

int safetensors_shard_count(const SafeTensors *st) {
    return st ? st->n_shards : 0;
}

const char *safetensors_shard_path(const SafeTensors *st, int shard) {
    return st && shard >= 0 && shard < st->n_shards ? st->shards[shard].path : NULL;
}

// --- conversions ---------------------------------------------------------------------------

float st_bf16_to_f32(uint16_t b) {
    return wtype_bf16_to_f32(b);
}

float st_f16_to_f32(uint16_t h) {
    return wtype_f16_to_f32(h);
}

uint16_t st_f32_to_bf16(float f) {
    return wtype_f32_to_bf16(f);
}

uint16_t st_f32_to_f16(float f) {
    return wtype_f32_to_f16(f);
}

void st_tensor_release(const StTensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !t->nbytes) return;
    uintptr_t a = (uintptr_t)t->data, e = a + t->nbytes, ps = (uintptr_t)page;
    a = (a + ps - 1) / ps * ps;
    e = e / ps * ps;
    if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
}

int st_tensor_to_f32(const StTensor *t, float *dst, size_t n, TunaErr *err) {
    if (!t) return tuna_errf(err, TUNA_EINVAL, "st_tensor_to_f32: NULL tensor");
    char nb[SHOWBUF];
    size_t numel = st_tensor_numel(t);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return tuna_errf(err, TUNA_EUNSUP,
                         "tensor \"%s\": dtype %s cannot be converted to float32 (expected F32, "
                         "F16 or BF16)",
                         show(t->name, nb, sizeof nb), st_dtype_name(t->dtype));
    if (n != numel)
        return tuna_errf(err, TUNA_EINVAL,
                         "tensor \"%s\": destination holds %zu floats, tensor has %zu elements",
                         show(t->name, nb, sizeof nb), n, numel);
    if (n && !dst)
        return tuna_errf(err, TUNA_EINVAL, "tensor \"%s\": NULL destination",
                         show(t->name, nb, sizeof nb));
    const unsigned char *src = t->data;
    if (t->dtype == ST_F32) {
        if (n) memcpy(dst, src, n * sizeof(float));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
    }
    return 0;
}

// --- writer --------------------------------------------------------------------------------

typedef struct Buf {
    char *p;
    size_t n, cap;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap)
            b->cap = b->cap ? b->cap * 2 : 1024;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_str(Buf *b, const char *s) {
    buf_put(b, s, strlen(s));
}

/* A JSON string literal, escaped as serde_json does (", \, control characters). */
static void buf_json_str(Buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': buf_put(b, "\\\"", 2); break;
        case '\\': buf_put(b, "\\\\", 2); break;
        case '\n': buf_put(b, "\\n", 2); break;
        case '\r': buf_put(b, "\\r", 2); break;
        case '\t': buf_put(b, "\\t", 2); break;
        case '\b': buf_put(b, "\\b", 2); break;
        case '\f': buf_put(b, "\\f", 2); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                buf_str(b, esc);
            } else {
                buf_put(b, (const char *)&c, 1);
            }
        }
    }
    buf_put(b, "\"", 1);
}

/* HF's serializer orders by dtype descending (its enum runs ... F16 < BF16 < ... < F32), then
 * by name, so wider elements come first and stay aligned. */
static int write_rank(StDtype d) {
    switch (d) {
    case ST_F32: return 0;
    case ST_BF16: return 1;
    case ST_F16: return 2;
    default: return 3;
    }
}

static int write_order_cmp(const void *a, const void *b) {
    const StWriteTensor *x = *(const StWriteTensor *const *)a,
                        *y = *(const StWriteTensor *const *)b;
    int ra = write_rank(x->dtype), rb = write_rank(y->dtype);
    if (ra != rb) return ra < rb ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int name_order_cmp(const void *a, const void *b) {
    const StWriteTensor *x = *(const StWriteTensor *const *)a,
                        *y = *(const StWriteTensor *const *)b;
    return strcmp(x->name, y->name);
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* numel floats of data written as dtype (F32 as they are; F16/BF16 rounded to nearest even) */
static int write_tensor_data(int fd, StDtype dtype, const float *data, size_t numel) {
    if (dtype == ST_F32) return numel ? write_all(fd, data, numel * sizeof(float)) : 0;
    enum { CHUNK = 8192 };
    uint16_t tmp[CHUNK];
    for (size_t i = 0; i < numel; i += CHUNK) {
        size_t m = numel - i < CHUNK ? numel - i : CHUNK;
        for (size_t j = 0; j < m; j++)
            tmp[j] = dtype == ST_F16 ? st_f32_to_f16(data[i + j]) : st_f32_to_bf16(data[i + j]);
        if (write_all(fd, tmp, m * sizeof(uint16_t))) return -1;
    }
    return 0;
}

/* Checks tensor i for writing (name, dtype, rank, shape, data) and gives its element count. */
static int write_check(const char *path, const StWriteTensor *t, int i, int fill, size_t *numel,
                       TunaErr *err) {
    char nb[SHOWBUF];
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
        return tuna_errf(err, TUNA_EINVAL, "%s: tensor %d has an empty or reserved name", path, i);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return tuna_errf(err, TUNA_EUNSUP,
                         "%s: tensor \"%s\": cannot write dtype %s (expected F32, F16 or BF16)",
                         path, show(t->name, nb, sizeof nb), st_dtype_name(t->dtype));
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return tuna_errf(err, TUNA_EINVAL, "%s: tensor \"%s\": ndim %d outside 0..%d", path,
                         show(t->name, nb, sizeof nb), t->ndim, ST_MAX_DIMS);
    *numel = 1;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || __builtin_mul_overflow(*numel, (uint64_t)t->shape[d], numel))
            return tuna_errf(err, TUNA_EINVAL, "%s: tensor \"%s\": bad shape[%d] = %" PRId64, path,
                             show(t->name, nb, sizeof nb), d, t->shape[d]);
    if (*numel > SIZE_MAX / 8 || (*numel && !t->data && !fill))
        return tuna_errf(err, TUNA_EINVAL, "%s: tensor \"%s\": %s", path,
                         show(t->name, nb, sizeof nb),
                         *numel > SIZE_MAX / 8 ? "too many elements" : "NULL data");
    return 0;
}

/* The JSON header into h: metadata (checked for NULL strings and duplicate keys), then the
 * tensors in write order with their data offsets, padded with spaces to a multiple of 8. */
static int write_header(Buf *h, const char *path, const StWriteTensor *ts,
                        const StWriteTensor **order, const size_t *numels, int n,
                        const char *const *meta_kv, int n_meta, TunaErr *err) {
    char nb[SHOWBUF];
    buf_str(h, "{");
    if (n_meta) {
        buf_str(h, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (!meta_kv[2 * i] || !meta_kv[2 * i + 1])
                return tuna_errf(err, TUNA_EINVAL, "%s: metadata pair %d has a NULL string", path,
                                 i);
            for (int j = 0; j < i; j++)
                if (strcmp(meta_kv[2 * j], meta_kv[2 * i]) == 0)
                    return tuna_errf(err, TUNA_EINVAL, "%s: duplicate metadata key \"%s\"", path,
                                     show(meta_kv[2 * i], nb, sizeof nb));
            if (i) buf_str(h, ",");
            buf_json_str(h, meta_kv[2 * i]);
            buf_str(h, ":");
            buf_json_str(h, meta_kv[2 * i + 1]);
        }
        buf_str(h, "}");
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const StWriteTensor *t = order[i];
        uint64_t nbytes = (uint64_t)numels[t - ts] * st_dtype_size(t->dtype);
        char num[64];
        if (n_meta || i) buf_str(h, ",");
        buf_json_str(h, t->name);
        buf_str(h, ":{\"dtype\":\"");
        buf_str(h, st_dtype_name(t->dtype));
        buf_str(h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t->shape[d]);
            buf_str(h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off,
                 off + nbytes);
        buf_str(h, num);
        off += nbytes;
    }
    buf_str(h, "}");
    while (h->n % 8)
        buf_str(h, " ");
    return 0;
}

/* Writes the file through PATH.tmp: length, header, data in write order, fsync, rename into
 * place, then (best effort) fsync of the folder. A tensor without data is made by fill into one
 * buffer of the largest of them, just before it is written. A failure leaves no .tmp behind. */
static int write_file(const char *path, const Buf *h, const StWriteTensor *ts,
                      const StWriteTensor **order, const size_t *numels, int n, StFill fill,
                      void *ctx, TunaErr *err) {
    int rc = 0;
    size_t most = 0;
    for (int i = 0; i < n; i++)
        if (!ts[i].data && numels[i] > most) most = numels[i];
    float *buf = most ? malloc(most * sizeof(float)) : NULL;
    if (most && !buf)
        return tuna_errf(err, TUNA_EIO, "%s: out of memory for a tensor of %zu floats", path, most);
    size_t pl = strlen(path) + 5;
    char *tmp = xmalloc(pl);
    snprintf(tmp, pl, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(buf);
        return rc;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)h->n >> (8 * i));
    int bad = write_all(fd, len8, 8) || write_all(fd, h->p, h->n);
    for (int i = 0; i < n && !bad; i++) {
        const StWriteTensor *t = order[i];
        size_t k = (size_t)(t - ts), numel = numels[k];
        const float *data = t->data;
        if (!data && numel) {
            fill(ctx, (int)k, buf);
            data = buf;
        }
        bad = write_tensor_data(fd, t->dtype, data, numel);
    }
    if (bad || fsync(fd) != 0) {
        rc = tuna_errf(err, TUNA_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto fail;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = tuna_errf(err, TUNA_EIO, "%s: close failed: %s", tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot rename %s into place: %s", path, tmp,
                       strerror(errno));
        goto fail;
    }
    /* Make the rename durable too (best effort: some filesystems refuse fsync on a dir). */
    char *slash = strrchr(tmp, '/');
    if (slash) *slash = '\0';
    int dfd = open(slash ? (tmp[0] ? tmp : "/") : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(tmp);
    free(buf);
    return 0;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    free(buf);
    return rc;
}

int safetensors_write(const char *path, const StWriteTensor *ts, int n, const char *const *meta_kv,
                      int n_meta, TunaErr *err) {
    return safetensors_write_fill(path, ts, n, meta_kv, n_meta, NULL, NULL, err);
}

int safetensors_write_fill(const char *path, const StWriteTensor *ts, int n,
                           const char *const *meta_kv, int n_meta, StFill fill, void *ctx,
                           TunaErr *err) {
    if (!path || n < 0 || (n && !ts) || n_meta < 0 || (n_meta && !meta_kv))
        return tuna_errf(err, TUNA_EINVAL, "safetensors_write: bad arguments");
    char nb[SHOWBUF];
    int rc = 0;
    Buf h = {0};
    const StWriteTensor **order = xmalloc((size_t)(n ? n : 1) * sizeof *order);
    size_t *numels = xmalloc((size_t)(n ? n : 1) * sizeof *numels);
    for (int i = 0; i < n && !rc; i++) {
        order[i] = &ts[i];
        rc = write_check(path, &ts[i], i, fill != NULL, &numels[i], err);
    }
    if (rc) goto done;
    qsort(order, (size_t)n, sizeof *order, name_order_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            rc = tuna_errf(err, TUNA_EINVAL, "%s: duplicate tensor name \"%s\"", path,
                           show(order[i]->name, nb, sizeof nb));
            goto done;
        }
    qsort(order, (size_t)n, sizeof *order, write_order_cmp);
    rc = write_header(&h, path, ts, order, numels, n, meta_kv, n_meta, err);
    if (!rc) rc = write_file(path, &h, ts, order, numels, n, fill, ctx, err);
done:
    free(h.p);
    free(order);
    free(numels);
    return rc;
}
