/* gguf.h: read (mmap, validated) GGUF v2/v3 files, llama.cpp's single-file model format.
 *
 * Layout (little-endian): magic "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata
 * count; the metadata key/value pairs (key: u64 length + bytes; u32 value type; the value:
 * scalars, strings as u64 length + bytes, arrays as u32 element type + u64 count + elements);
 * the tensor infos (name, u32 ndim <= 4, u64 dims innermost first, u32 ggml type, u64 offset);
 * padding to general.alignment (default 32); the data section. A tensor's offset is relative to
 * the data section and a multiple of the alignment.
 *
 * The reader checks every count, length, type, dimension product, offset and overlap against the
 * file before exposing a pointer; a bad file is one TunaErr line naming the file and the byte
 * position or key. Strings are not NUL-terminated in the file: the reader copies keys and
 * tensor names into NUL-terminated storage; string values are exposed as (pointer, length)
 * into the mapping. An open Gguf is immutable: any thread may read it; gguf_free unmaps. */
#ifndef TUNA_SRC_GGUF_H
#define TUNA_SRC_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define GGUF_MAX_DIMS 4

/* metadata value types, as numbered in the file */
typedef enum {
    GGUF_U8 = 0,
    GGUF_I8 = 1,
    GGUF_U16 = 2,
    GGUF_I16 = 3,
    GGUF_U32 = 4,
    GGUF_I32 = 5,
    GGUF_F32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_U64 = 10,
    GGUF_I64 = 11,
    GGUF_F64 = 12
} GgufType;

/* ggml tensor types, as numbered in the file (only those tuna reads are named) */
typedef enum {
    GGML_F32 = 0,
    GGML_F16 = 1,
    GGML_Q4_0 = 2,
    GGML_Q4_1 = 3,
    GGML_Q8_0 = 8,
    GGML_Q4_K = 12,
    GGML_Q5_K = 13,
    GGML_Q6_K = 14,
    GGML_BF16 = 30
} GgmlType;

typedef struct GgufStr {
    const char *s; /* not NUL-terminated; points into the mapping */
    size_t len;
} GgufStr;

/* A metadata array: n elements of elem_type. Numeric elements are packed little-endian at data
 * (read them with gguf_arr_int / gguf_arr_float); string elements are in strs. Nested arrays
 * are rejected by the reader. */
typedef struct GgufArr {
    GgufType elem_type;
    uint64_t n;
    const void *data;    /* numeric and bool elements (unaligned: read via memcpy) */
    const GgufStr *strs; /* (n) when elem_type == GGUF_STRING, owned by the Gguf */
} GgufArr;

typedef struct GgufKV {
    const char *key; /* NUL-terminated, owned by the Gguf */
    GgufType type;
    union {
        uint64_t u;  /* U8..U64, BOOL (0/1) */
        int64_t i;   /* I8..I64 */
        double f;    /* F32, F64 */
        GgufStr str; /* STRING */
        GgufArr arr; /* ARRAY */
    } v;
} GgufKV;

typedef struct GgufTensor {
    const char *name;          /* NUL-terminated, owned by the Gguf */
    int type;                  /* GgmlType value as read; supported ones are checked at load */
    int ndim;                  /* 1..GGUF_MAX_DIMS */
    int64_t ne[GGUF_MAX_DIMS]; /* dims innermost first: ne[0] is the row length */
    const void *data;          /* nbytes bytes inside the mapping (read-only) */
    size_t nbytes;
} GgufTensor;

typedef struct Gguf Gguf;

/* path is a .gguf file. On success *out owns the mapping; on failure *out is NULL and err names
 * the file and what is wrong. Returns 0, TUNA_EIO, TUNA_EFORMAT or TUNA_EUNSUP (a tensor type
 * tuna does not read is reported at gguf_tensor_to_f32, not here: a file may carry types its
 * user never loads). */
int gguf_open(const char *path, Gguf **out, TunaErr *err);
/* The same on a buffer the caller keeps alive (fuzzing, tests); name is used in messages. */
int gguf_open_mem(const void *buf, size_t len, const char *name, Gguf **out, TunaErr *err);
void gguf_free(Gguf *g); /* NULL-safe */

const char *gguf_path(const Gguf *g);
int gguf_version(const Gguf *g);

int gguf_kv_count(const Gguf *g);
const GgufKV *gguf_kv_at(const Gguf *g, int i);
const GgufKV *gguf_find_kv(const Gguf *g, const char *key); /* NULL if absent */

/* Typed getters. Return 1 and set *out when the key exists with a fitting type, 0 when it is
 * absent (out untouched), or a TunaErr code with a message naming the file and key when it has
 * the wrong type or an out-of-range value. Integers accept any integer type (and bool); floats
 * accept F32/F64 and integers. */
int gguf_get_int(const Gguf *g, const char *key, int64_t *out, TunaErr *err);
int gguf_get_float(const Gguf *g, const char *key, double *out, TunaErr *err);
int gguf_get_bool(const Gguf *g, const char *key, int *out, TunaErr *err);
int gguf_get_str(const Gguf *g, const char *key, GgufStr *out, TunaErr *err);
int gguf_get_arr(const Gguf *g, const char *key, const GgufArr **out, TunaErr *err);
int64_t gguf_arr_int(const GgufArr *a, uint64_t i);  /* integer/bool element i */
double gguf_arr_float(const GgufArr *a, uint64_t i); /* numeric element i */

int gguf_tensor_count(const Gguf *g);
const GgufTensor *gguf_tensor_at(const Gguf *g, int i);
const GgufTensor *gguf_find_tensor(const Gguf *g, const char *name); /* NULL if absent */
size_t gguf_tensor_numel(const GgufTensor *t);

const char *ggml_type_name(int type); /* "F32", "Q4_K", ...; "?" when unknown */
int ggml_type_supported(int type);    /* 1 for the GgmlType values above */

/* Dequantizes (or widens) a tensor to float32 into dst (n must equal its element count), in the
 * file's element order (row-major with ne[0] innermost). TUNA_EUNSUP names the tensor and type
 * for a type tuna does not read; TUNA_EINVAL for an n mismatch. */
int gguf_tensor_to_f32(const Gguf *g, const GgufTensor *t, float *dst, size_t n, TunaErr *err);

/* Hands the tensor's pages back to the kernel once converted (as st_tensor_release). */
void gguf_tensor_release(const GgufTensor *t);

/* Where a model path names a GGUF model: path itself ending in ".gguf" (any case), or a folder
 * holding no config.json and exactly one *.gguf file. Writes the file's path into out and
 * returns 1; 0 when path is not a GGUF model; TUNA_EFORMAT (with the names) for a folder
 * holding several .gguf files and no config.json. */
int gguf_model_path(const char *path, char *out, size_t cap, TunaErr *err);

#endif
