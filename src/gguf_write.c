#include "gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/wtype.h"
#include "xalloc.h"

typedef struct WTensor {
    char *name;
    int type, ndim;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
    int own;
} WTensor;

struct GgufWriter {
    uint8_t *kv; /* the metadata section as it will be written */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    uint32_t align;
    WTensor *t;
    int n_t, cap_t;
};

GgufWriter *gguf_writer_new(void) {
    GgufWriter *w = xcalloc(1, sizeof *w);
    w->align = 32;
    return w;
}

void gguf_writer_free(GgufWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        if (w->t[i].own) free((void *)w->t[i].data);
    }
    free(w->t);
    free(w->kv);
    free(w);
}

// --- metadata bytes ------------------------------------------------------------------------

static void put(GgufWriter *w, const void *p, size_t n) {
    if (w->kv_len + n > w->kv_cap) {
        w->kv_cap = (w->kv_len + n) * 2 + 256;
        w->kv = xrealloc(w->kv, w->kv_cap);
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void put_u32(GgufWriter *w, uint32_t v) {
    put(w, &v, 4); /* little-endian hosts only, as the reader */
}

static void put_u64(GgufWriter *w, uint64_t v) {
    put(w, &v, 8);
}

static void put_str(GgufWriter *w, const char *s, size_t n) {
    put_u64(w, n);
    put(w, s, n);
}

static void put_key(GgufWriter *w, const char *key, GgufType type) {
    put_str(w, key, strlen(key));
    put_u32(w, (uint32_t)type);
    w->n_kv++;
}

static size_t scalar_size(GgufType t) {
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return (unsigned)t < sizeof sz / sizeof sz[0] ? sz[t] : 0;
}

void gguf_w_scalar(GgufWriter *w, const char *key, GgufType type, uint64_t bits) {
    TUNA_ASSERT(scalar_size(type) > 0);
    put_key(w, key, type);
    put(w, &bits, scalar_size(type)); /* the low bytes of the value */
    if (type == GGUF_U32 && !strcmp(key, "general.alignment") && bits && !(bits & (bits - 1)))
        w->align = (uint32_t)bits;
}

void gguf_w_u32(GgufWriter *w, const char *key, uint32_t v) {
    gguf_w_scalar(w, key, GGUF_U32, v);
}

void gguf_w_i32(GgufWriter *w, const char *key, int32_t v) {
    gguf_w_scalar(w, key, GGUF_I32, (uint32_t)v);
}

void gguf_w_u64(GgufWriter *w, const char *key, uint64_t v) {
    gguf_w_scalar(w, key, GGUF_U64, v);
}

void gguf_w_f32(GgufWriter *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    gguf_w_scalar(w, key, GGUF_F32, b);
}

void gguf_w_bool(GgufWriter *w, const char *key, int v) {
    gguf_w_scalar(w, key, GGUF_BOOL, v != 0);
}

void gguf_w_strn(GgufWriter *w, const char *key, const char *s, size_t len) {
    put_key(w, key, GGUF_STRING);
    put_str(w, s, len);
}

void gguf_w_str(GgufWriter *w, const char *key, const char *s) {
    gguf_w_strn(w, key, s, strlen(s));
}

void gguf_w_arr(GgufWriter *w, const char *key, GgufType elem, const void *data, uint64_t n) {
    TUNA_ASSERT(scalar_size(elem) > 0);
    put_key(w, key, GGUF_ARRAY);
    put_u32(w, (uint32_t)elem);
    put_u64(w, n);
    put(w, data, (size_t)n * scalar_size(elem));
}

void gguf_w_arr_str(GgufWriter *w, const char *key, const char *const *s, const size_t *lens,
                    uint64_t n) {
    put_key(w, key, GGUF_ARRAY);
    put_u32(w, GGUF_STRING);
    put_u64(w, n);
    for (uint64_t i = 0; i < n; i++)
        put_str(w, s[i], lens ? lens[i] : strlen(s[i]));
}

void gguf_w_copy(GgufWriter *w, const char *key, const GgufKV *kv) {
    if (!key) key = kv->key;
    if (kv->type == GGUF_STRING) {
        gguf_w_strn(w, key, kv->v.str.s, kv->v.str.len);
    } else if (kv->type == GGUF_ARRAY && kv->v.arr.elem_type == GGUF_STRING) {
        const GgufArr *a = &kv->v.arr;
        put_key(w, key, GGUF_ARRAY);
        put_u32(w, GGUF_STRING);
        put_u64(w, a->n);
        for (uint64_t i = 0; i < a->n; i++)
            put_str(w, a->strs[i].s, a->strs[i].len);
    } else if (kv->type == GGUF_ARRAY) {
        gguf_w_arr(w, key, kv->v.arr.elem_type, kv->v.arr.data, kv->v.arr.n);
    } else if (kv->type == GGUF_F32) {
        gguf_w_f32(w, key, (float)kv->v.f);
    } else if (kv->type == GGUF_F64) {
        uint64_t b;
        memcpy(&b, &kv->v.f, 8);
        gguf_w_scalar(w, key, GGUF_F64, b);
    } else {
        gguf_w_scalar(w, key, kv->type, kv->v.u); /* i and u share the bits */
    }
}

// --- tensors -------------------------------------------------------------------------------

size_t ggml_row_size(int type, int64_t n) {
    int t = wtype_by_ggml(type);
    if (t < 0 || n <= 0) return 0;
    return wtype_row_bytes((WType)t, n);
}

int gguf_w_tensor(GgufWriter *w, const char *name, int type, int ndim, const int64_t *ne,
                  const void *data, size_t nbytes, int own, TunaErr *err) {
    int rc = 0;
    size_t rows = 1;
    for (int d = 1; d < ndim; d++)
        rows *= (size_t)ne[d];
    size_t rb = ndim >= 1 && ndim <= GGUF_MAX_DIMS ? ggml_row_size(type, ne[0]) : 0;
    if (!rb || rb * rows != nbytes)
        rc = tuna_errf(err, TUNA_EINVAL,
                       "tensor \"%s\": %zu bytes do not fit type %s with %d dims (row of %lld)",
                       name, nbytes, ggml_type_name(type), ndim, ndim > 0 ? (long long)ne[0] : 0);
    for (int i = 0; !rc && i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name))
            rc = tuna_errf(err, TUNA_EINVAL, "tensor \"%s\" is added twice", name);
    if (rc) {
        if (own) free((void *)data);
        return rc;
    }
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t * 2 + 16;
        w->t = xrealloc(w->t, sizeof *w->t * (size_t)w->cap_t);
    }
    WTensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->type = type;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->ne[d] = ne[d];
    t->data = data;
    t->nbytes = nbytes;
    t->own = own;
    return 0;
}

// --- the file ------------------------------------------------------------------------------

static size_t pad_to(size_t x, size_t a) {
    return (x + a - 1) / a * a;
}

/* Writes n bytes, retrying short writes; 0 or errno. */
static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? errno : EIO;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_zeros(int fd, size_t n) {
    static const char z[64];
    int e = 0;
    while (n && !e) {
        size_t k = n < sizeof z ? n : sizeof z;
        e = write_all(fd, z, k);
        n -= k;
    }
    return e;
}

/* The bytes of tensor i: its own, or fill's into scratch (*buf, grown to the largest). 0, an
 * errno, or -1 when fill failed (err set by it). */
static int tensor_bytes(GgufWriter *w, int i, GgufFill fill, void *ctx, void **buf, size_t *cap,
                        const void **out, TunaErr *err) {
    WTensor *t = &w->t[i];
    *out = t->data;
    if (t->data || !t->nbytes) return 0;
    if (!fill) {
        tuna_errf(err, TUNA_EINVAL, "tensor \"%s\" has no data and no fill", t->name);
        return -1;
    }
    if (t->nbytes > *cap) {
        free(*buf);
        *buf = malloc(t->nbytes);
        *cap = *buf ? t->nbytes : 0;
        if (!*buf) return ENOMEM;
    }
    if (fill(ctx, i, *buf, t->nbytes, err)) return -1;
    *out = *buf;
    return 0;
}

static int write_file(GgufWriter *w, int fd, GgufFill fill, void *ctx, TunaErr *err) {
    GgufWriter h = {0}; /* reuses the byte buffer helpers for the header and tensor infos */
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)w->n_t);
    put_u64(&h, w->n_kv);
    int e = write_all(fd, h.kv, h.kv_len);
    size_t off = h.kv_len;
    h.kv_len = 0;
    if (!e) e = write_all(fd, w->kv, w->kv_len);
    off += w->kv_len;
    size_t data_off = 0;
    for (int i = 0; i < w->n_t; i++) {
        WTensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_u32(&h, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++)
            put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, (uint32_t)t->type);
        put_u64(&h, data_off);
        data_off = pad_to(data_off + t->nbytes, w->align);
    }
    if (!e) e = write_all(fd, h.kv, h.kv_len);
    off += h.kv_len;
    if (!e) e = write_zeros(fd, pad_to(off, w->align) - off);
    data_off = 0;
    void *buf = NULL; /* one tensor's bytes at a time, for those fill makes */
    size_t cap = 0;
    for (int i = 0; i < w->n_t && !e; i++) {
        WTensor *t = &w->t[i];
        const void *data;
        e = tensor_bytes(w, i, fill, ctx, &buf, &cap, &data, err);
        if (!e) e = write_all(fd, data, t->nbytes);
        size_t end = data_off + t->nbytes;
        if (!e && i + 1 < w->n_t) e = write_zeros(fd, pad_to(end, w->align) - end);
        data_off = pad_to(end, w->align);
    }
    free(buf);
    free(h.kv);
    return e;
}

int gguf_writer_save(GgufWriter *w, const char *path, TunaErr *err) {
    return gguf_writer_save_fill(w, path, NULL, NULL, err);
}

int gguf_writer_save_fill(GgufWriter *w, const char *path, GgufFill fill, void *ctx, TunaErr *err) {
    struct stat sb;
    if (!stat(path, &sb) && !S_ISREG(sb.st_mode))
        return tuna_errf(err, TUNA_EIO, "%s: exists and is not a regular file", path);
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp)
        return tuna_errf(err, TUNA_EIO, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    /* a file-size limit would kill the process with SIGXFSZ: get EFBIG instead */
    struct sigaction ign = {0}, old;
    ign.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &ign, &old);
    TunaErr ferr = {0};
    int e = write_file(w, fd, fill, ctx, &ferr);
    if (!e && fsync(fd)) e = errno;
    if (close(fd) && !e) e = errno;
    sigaction(SIGXFSZ, &old, NULL);
    if (!e && rename(tmp, path)) e = errno;
    if (e) {
        unlink(tmp);
        if (e < 0) { /* fill's own error */
            if (err) *err = ferr;
            return ferr.code ? ferr.code : TUNA_EINVAL;
        }
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(e));
    }
    /* the rename itself reaches the disk with the folder (best effort) */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
