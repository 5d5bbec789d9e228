/* gguf_write.h: write GGUF v3 files (the layout gguf.h describes).
 *
 * A GgufWriter collects metadata (every value type, arrays of numbers or strings) and tensors
 * (name, ggml type, dims innermost first, bytes) in memory, then gguf_writer_save writes the
 * file at once: header, metadata in the order added, tensor infos, padding to the alignment
 * (general.alignment when set as a u32, else 32), each tensor's data at an aligned offset. The
 * bytes go to PATH.tmp-PID beside the target, are fsync'd, and renamed over PATH: a reader
 * sees the old file or the whole new one; on any error (ENOSPC, EACCES, a short write) the
 * temporary is removed and the error is one line naming the file. Not thread-safe; one writer
 * per thread. */
#ifndef TUNA_SRC_GGUF_WRITE_H
#define TUNA_SRC_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

typedef struct GgufWriter GgufWriter;

GgufWriter *gguf_writer_new(void);
void gguf_writer_free(GgufWriter *w); /* NULL-safe; frees the tensors' owned data */

/* Scalars (a key added twice is written twice: callers add each key once). */
void gguf_w_u32(GgufWriter *w, const char *key, uint32_t v);
void gguf_w_i32(GgufWriter *w, const char *key, int32_t v);
void gguf_w_u64(GgufWriter *w, const char *key, uint64_t v);
void gguf_w_f32(GgufWriter *w, const char *key, float v);
void gguf_w_bool(GgufWriter *w, const char *key, int v);
void gguf_w_str(GgufWriter *w, const char *key, const char *s);
void gguf_w_strn(GgufWriter *w, const char *key, const char *s, size_t len);
/* Any scalar type from a 64-bit value (type U8..I64, F32, F64, BOOL). */
void gguf_w_scalar(GgufWriter *w, const char *key, GgufType type, uint64_t bits);
/* A numeric or bool array: n elements of elem, packed little-endian at data. */
void gguf_w_arr(GgufWriter *w, const char *key, GgufType elem, const void *data, uint64_t n);
/* A string array; lens may be NULL (NUL-terminated strings). */
void gguf_w_arr_str(GgufWriter *w, const char *key, const char *const *s, const size_t *lens,
                    uint64_t n);
/* A copy of a reader's key/value (any type, arrays included), under key (NULL: its own). */
void gguf_w_copy(GgufWriter *w, const char *key, const GgufKV *kv);

/* A tensor of type (a GgmlType value), ndim dims ne (innermost first), nbytes at data. own: the
 * writer frees data (malloc'd) with itself; else data must outlive gguf_writer_save. data NULL
 * (nbytes still the tensor's size): the bytes come from gguf_writer_save_fill's fill when the
 * file is written, so that a big model is never whole in memory. Refuses (TUNA_EINVAL) a size
 * that does not match the type's blocks, or a repeated name. */
int gguf_w_tensor(GgufWriter *w, const char *name, int type, int ndim, const int64_t *ne,
                  const void *data, size_t nbytes, int own, TunaErr *err);

/* Writes the file (see above). Returns 0 or TUNA_EIO with one line naming path. */
int gguf_writer_save(GgufWriter *w, const char *path, TunaErr *err);

/* Makes the bytes of tensor i (added with data NULL): nbytes into dst. 0, or an error code with
 * err set (the file is then not written and the error returned as fill gave it). */
typedef int (*GgufFill)(void *ctx, int i, void *dst, size_t nbytes, TunaErr *err);

/* gguf_writer_save, each data-less tensor's bytes made by fill(ctx, i, ...) as it is written, in
 * the order added, into one buffer of the largest such tensor's size. */
int gguf_writer_save_fill(GgufWriter *w, const char *path, GgufFill fill, void *ctx, TunaErr *err);

/* Bytes of one row of n elements of ggml type t (0 when n is not a whole number of blocks or
 * the type is unknown). */
size_t ggml_row_size(int type, int64_t n);

#endif
