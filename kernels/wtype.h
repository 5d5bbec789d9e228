/* wtype.h: weight types. One table (wtype_info) holds every storage format a frozen weight
 * may have: its name, its block and the two row functions that convert it from and to fp32.
 * Adding a format is one table row and its two functions; callers only see WType and Weight.
 *
 * A Weight is a (rows, cols) matrix in HF Linear layout (N, K): each row of K elements is a
 * whole number of blocks, rows follow each other in `data`. The GGUF types (Q8_0, Q4_0, Q4_1,
 * Q4_K, Q5_K, Q6_K) use ggml's block layouts, equal bit for bit to the `gguf` Python package;
 * NF4 and FP4 use bitsandbytes' layout: blocks of 64 over the flattened tensor, two 4-bit codes
 * a byte (the first element in the high nibble), an fp32 absmax per block kept beside the codes,
 * optionally double-quantized (bnb compress_statistics: absmax - mean in 8 bits with bnb's
 * dynamic map, in blocks of 256 with an fp32 absmax each). */
#ifndef TUNA_KERNELS_WTYPE_H
#define TUNA_KERNELS_WTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "../src/err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum WType {
    WT_F32,
    WT_BF16,
    WT_F16,
    WT_Q8_0,
    WT_Q4_0,
    WT_Q4_1,
    WT_Q4_K,
    WT_Q5_K,
    WT_Q6_K,
    WT_NF4,
    WT_FP4,
    WT_COUNT
} WType;

/* The block scales of a bnb 4-bit row (NF4, FP4); NULL for every other type. Block b of the
 * row is block block0 + b of the tensor. Plain: absmax[block]. Double-quantized (absmax_q not
 * NULL): dynamic8[absmax_q[block]] * absmax2[block / 256] + offset. */
typedef struct WAux {
    float *absmax;           /* (blocks) fp32; written by quant_row; NULL when double-quantized */
    const uint8_t *absmax_q; /* (blocks) 8-bit codes, or NULL */
    const float *absmax2;    /* (ceil(blocks / 256)) */
    float offset;
    int64_t block0;
} WAux;

/* dst (n) = the n elements at src (n a multiple of the block). */
typedef void (*WDequantRow)(const void *src, float *dst, int64_t n, const WAux *aux);
/* dst = src (n elements, a multiple of the block) in the type's blocks; NF4/FP4 also write
 * their fp32 absmax to aux->absmax[aux->block0 ...]. */
typedef void (*WQuantRow)(const float *src, void *dst, int64_t n, WAux *aux);

typedef struct WTypeInfo {
    const char *name; /* GGUF's spelling (F32, BF16, Q4_0, ...); NF4, FP4 */
    int block;        /* elements per block */
    int block_bytes;  /* bytes per block in the row (NF4/FP4: the codes only) */
    int ggml;         /* the GGUF type id, -1 for none */
    WDequantRow dequant_row;
    WQuantRow quant_row; /* NULL: tuna does not make this type (it only reads it) */
} WTypeInfo;

extern const WTypeInfo wtype_info[WT_COUNT];

/* IEEE half and bfloat16 to and from fp32, round-to-nearest-even (NaN stays NaN). */
float wtype_f16_to_f32(uint16_t h);
float wtype_bf16_to_f32(uint16_t b);
uint16_t wtype_f32_to_f16(float f);
uint16_t wtype_f32_to_bf16(float f);

/* The type named s (case-insensitive; also fp32/float32, bf16/bfloat16, fp16/float16), or -1. */
int wtype_by_name(const char *s);
/* The type of GGUF type id t, or -1. */
int wtype_by_ggml(int t);
/* Bytes of one row of cols elements (cols a multiple of the block), 0 when it is not. */
size_t wtype_row_bytes(WType t, int64_t cols);

/* NF4/FP4: the fp32 absmax of block blk (aux as for a row; blk counted over the tensor), and
 * the 16 values of the codes (t WT_NF4 or WT_FP4). For fused kernels. */
float wtype_bnb_absmax(const WAux *aux, int64_t blk);
void wtype_code4(WType t, float code[16]);

typedef struct Weight {
    WType type;
    int rows, cols;
    void *data; /* rows * wtype_row_bytes(type, cols) bytes */
    /* NF4/FP4 only: rows * cols / 64 blocks; absmax, or (double_quant) absmax_q, absmax2, offset */
    int double_quant;
    float *absmax;
    uint8_t *absmax_q;
    float *absmax2;
    float offset;
    int borrowed; /* 1: data is someone else's (weight_wrap); weight_free leaves it */
    /* A backend's own copy of the weight, laid out for its products (the cpu backend: a BF16
     * weight's panels for the forward under mm_bf16, gemm_bf16.c weight_pack), made on first
     * use within the backend's budget; NULL until then. Released with the arrays: ops->release
     * for a backend Weight (model.c), weight_free for a host one (the cpu backend's is host
     * memory). */
    void *pack;
    void *pack_t; /* the same for the products of the input gradient (its op(B) is the weight) */
} Weight;

/* w = src (rows, cols) quantized to type (host memory, owned by w: weight_free). Refuses a cols
 * that is not a whole number of blocks. double_quant: NF4/FP4 with compressed statistics. */
int weight_quantize(Weight *w, const float *src, int rows, int cols, WType type, int double_quant,
                    TunaErr *err);
/* w = a view of rows x cols elements of type at data (not NF4/FP4, whose scales live apart),
 * e.g. a GGUF tensor in its mapping (ne[0] = cols); weight_free does not free data. Refuses a
 * cols that is not a whole number of blocks. */
int weight_wrap(Weight *w, const void *data, int rows, int cols, WType type, TunaErr *err);
/* dst (rows, cols) = w in fp32. */
void weight_dequantize(const Weight *w, float *dst);
/* dst (n_rows, cols) = rows r0 .. r0+n_rows-1 of w in fp32. */
void weight_dequantize_rows(const Weight *w, int r0, int n_rows, float *dst);
/* The arrays w holds, for moving it as a whole (to a backend and back): p[i] and bytes[i] for
 * data, then absmax (NF4/FP4), or absmax_q and absmax2 (double-quantized); returns how many.
 * Only type, rows, cols and double_quant decide which. weight_set_arrays puts p back in the
 * same order. */
int weight_arrays(const Weight *w, void *p[4], size_t bytes[4]);
void weight_set_arrays(Weight *w, void *const p[4]);
/* Bytes the weight holds (codes and scales). */
size_t weight_bytes(const Weight *w);
/* Row r's bytes, and aux filled for it (zeroed for types without scales). */
const void *weight_row(const Weight *w, int r, WAux *aux);
void weight_free(Weight *w);

#ifdef __cplusplus
}
#endif

#endif
