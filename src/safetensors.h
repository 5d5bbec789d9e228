/* safetensors.h: read (mmap, validated) and write Hugging Face .safetensors files.
 *
 * Format: u64 little-endian N, then N bytes of JSON header
 *   {"__metadata__":{"k":"v",...}, "name":{"dtype":"F32","shape":[2,3],"data_offsets":[b,e]},...}
 * padded with spaces, then the data section; [b,e) are byte offsets into the data section.
 * A model directory holds model.safetensors, or model.safetensors.index.json whose
 * "weight_map" maps each tensor name to a shard file in the same directory.
 * The reader checks every header field against the file before exposing a pointer (tensors
 * may not overlap; unused gaps in the data section are tolerated, unlike the HF reader); tensors
 * point into read-only private mappings owned by the SafeTensors (valid until
 * safetensors_free). Data is little-endian; `data` is aligned to the element size only when
 * the writer padded the header (HF and safetensors_write do), so read it via memcpy or
 * st_tensor_to_f32 if unsure. Not thread-safe to free while others read; reads are.
 */
#ifndef TUNA_SRC_SAFETENSORS_H
#define TUNA_SRC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define ST_MAX_DIMS    8
#define ST_MAX_HEADER  (100u * 1000u * 1000u) /* same limit as the HF reader */
#define ST_MAX_TENSORS (1 << 18) /* tensors in one model (all shards); DeepSeek-V3 has ~92k */

typedef enum {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL
} StDtype;

typedef struct StTensor {
    const char *name; /* owned by the SafeTensors */
    StDtype dtype;
    int ndim; /* 0..ST_MAX_DIMS; 0 is a scalar */
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* nbytes bytes inside the mapping (read-only) */
    size_t nbytes;    /* = numel * st_dtype_size(dtype), checked */
    int shard;        /* index of the file it came from (0 for a single file) */
} StTensor;

typedef struct SafeTensors SafeTensors;

/* path is a model directory (uses model.safetensors, else model.safetensors.index.json and its
 * shards), a .safetensors file, or an .index.json file. Files are mmapped read-only. On success
 * *out owns the mappings; on failure *out is NULL and err says what is wrong (file, field,
 * expected vs found). Returns 0, TUNA_EIO, TUNA_EFORMAT, TUNA_EUNSUP or TUNA_ENOTFOUND. */
int safetensors_open(const char *path, SafeTensors **out, TunaErr *err);
void safetensors_free(SafeTensors *st); /* NULL-safe, unmaps */

/* Tensors in header order, shard by shard. Borrowed pointers, valid until safetensors_free. */
int safetensors_count(const SafeTensors *st);
const StTensor *safetensors_at(const SafeTensors *st, int i); /* NULL if i is out of range */
const StTensor *safetensors_find(const SafeTensors *st,
                                 const char *name); /* NULL if absent; O(log n) */
/* A "__metadata__" value (first shard that has the key wins) or NULL. Borrowed. */
const char *safetensors_metadata(const SafeTensors *st, const char *key);
int safetensors_shard_count(const SafeTensors *st);
const char *safetensors_shard_path(const SafeTensors *st, int shard); /* NULL if out of range */

const char *st_dtype_name(StDtype d); /* "F32", "BF16", ... as in the format; "?" if invalid */
size_t st_dtype_size(StDtype d);      /* bytes per element; 0 if invalid */
size_t st_tensor_numel(const StTensor *t);

/* Converts a F32/F16/BF16 tensor to float32 into dst (n = element count, must equal the
 * tensor's). Exact (subnormals, inf, nan). Returns 0, or TUNA_EUNSUP (other dtypes) /
 * TUNA_EINVAL (n mismatch) with a message naming the tensor. */
int st_tensor_to_f32(const StTensor *t, float *dst, size_t n, TunaErr *err);

/* Hands the tensor's pages back to the kernel (madvise DONTNEED on the whole pages inside it):
 * a loader that has converted it stops paying for it in resident memory. The data stay
 * readable (read again from the file on the next access). */
void st_tensor_release(const StTensor *t);

/* Writer input: host float32 data converted to dtype (F32, F16 or BF16; round to nearest even).
 * data may be NULL only when the tensor has no elements (or, with safetensors_write_fill, is
 * filled as it is written). */
typedef struct StWriteTensor {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const float *data; /* (numel) */
} StWriteTensor;

/* Writes ts[0..n) with optional metadata (meta_kv = {key0, value0, key1, value1, ...}, n_meta
 * pairs) atomically: path.tmp is written, fsynced and renamed over path. Tensors are ordered as
 * the HF writer does (dtype size descending, then name), the header is compact JSON padded to
 * a multiple of 8 bytes with spaces. Borrows everything. Returns 0, TUNA_EINVAL, TUNA_EUNSUP
 * or TUNA_EIO. */
int safetensors_write(const char *path, const StWriteTensor *ts, int n, const char *const *meta_kv,
                      int n_meta, TunaErr *err);

/* safetensors_write with tensors made as they are written: a tensor whose data is NULL (and has
 * elements) is filled by fill(ctx, i, dst), i its index in ts, into a buffer of the largest such
 * tensor's floats, just before its bytes go out; so a model's export holds one tensor at a time,
 * not a second copy of the model. The same file, byte for byte, as with the data given. */
typedef void (*StFill)(void *ctx, int i, float *dst);
int safetensors_write_fill(const char *path, const StWriteTensor *ts, int n,
                           const char *const *meta_kv, int n_meta, StFill fill, void *ctx,
                           TunaErr *err);

/* f16/bf16 <-> f32 scalars; exact in the widening direction, round-to-nearest-even narrowing
 * (overflow gives inf, NaN stays NaN with its sign). */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);
uint16_t st_f32_to_bf16(float f);
uint16_t st_f32_to_f16(float f);

#endif
