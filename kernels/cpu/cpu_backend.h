/* cpu_backend.h: the CPU backend (OpenBLAS + OpenMP). Host memory; see kernels/backend.h. */
#ifndef TUNA_KERNELS_CPU_CPU_BACKEND_H
#define TUNA_KERNELS_CPU_CPU_BACKEND_H

#include "../backend.h"

Backend *cpu_backend_init(int n_threads, TunaErr *err);

/* Packed copies of frozen BF16 weights for the forward's and the input gradient's products
 * under Backend.mm_bf16 (gemm_bf16.c weight_pack): the weight's panels made once, where each
 * product packed them again from its rows (the forward's: 1.04x a SmolLM2 LoRA --dtype bf16
 * --bf16 step on AMD Zen 4, 1 and 2 threads; the input gradient's: 1.075x on the AMX tiles of an
 * Intel Xeon, 840/827/844 -> 902/900/906 tok/s, peak RSS 1143 -> 1399 MiB). Each costs the
 * weight's size again, up to this many MiB a backend for all of them (first come, first packed;
 * a weight past the budget is packed per product as before; a copy counts for the backend's
 * life): TUNA_PACK_MB, else CPU_PACK_MB. 0: none. */
#define CPU_PACK_MB 1024
void cpu_backend_set_pack_mb(Backend *be, long mb);
/* The bytes a new cpu backend would pack of bf16_bytes of BF16 weights (two copies): 0 without
 * AVX512-BF16 (the plain path packs nothing), else up to the budget (TUNA_PACK_MB, else
 * CPU_PACK_MB). */
size_t cpu_pack_bytes(size_t bf16_bytes);

/* A trainable weight's packed copy (Backend.weight_track; gemm_bf16.c): 0 none kept for w, 1
 * kept but stale (written since the last AdamW pass that covered it), 2 holding w's values (the
 * products read it). For tests. */
int cpu_weight_copy_state(Backend *be, const float *w);

/* This process's threads that are running or runnable now (state R in /proc/self/task), at
 * least 1. What BACKEND_THREADS_IDLE takes off the machine's procs_running. */
int cpu_own_running(void);

/* BACKEND_THREADS_IDLE's decision from k (<= 3) reads of "other processes' runnable threads":
 * n minus their median, clamped to [1, n]; n when k is 0. Pure, so tests can drive it. */
int cpu_idle_from_counts(int n, const int *others, int k);

/* Which kernel matmul_w_fwd runs for a weight of type t, rows of K and M input rows: "tiles+sgemm",
 * "direct avx512", "direct avx2" (a CPU without AVX-512, or TUNA_WTYPE_AVX2=1) or "direct plain"
 * (TUNA_WTYPE_PLAIN=1 forces plain). For tests, benches and `tuna info`. */
const char *cpu_matmul_w_path(WType t, int K, int M);

/* weight_dequantize_rows (the same bits), on AVX-512 or AVX2 where the type and K allow (matmul_w.c):
 * what the bf16 products over a typed weight other than BF16 dequantize with */
void cpu_dequant_rows(const Weight *w, int n0, int nn, float *dst);

/* Which kernel the matrix products take under Backend.mm_bf16 now: "amx" (kernels/cpu/
 * gemm_bf16.c on AMX-BF16 tiles, where the CPU has them), "avx512bf16" (the same on vdpbf16ps,
 * where the CPU is an AMD one with AVX512-BF16; TUNA_BF16=avx512bf16 forces it on any CPU with
 * AVX512-BF16) or "plain" (bf16-rounded fp32 copies through sgemm: where the CPU lacks both, and
 * on an Intel CPU without usable AMX tiles, whose vdpbf16ps is slower than its fp32 FMAs;
 * TUNA_BF16=plain forces it). For tests and benches. */
const char *cpu_bf16_path(void);

/* The fp32 products' library, OpenBLAS's config line and "(core <its kernels>)", into buf (and
 * who set the core where tuna did: TUNA_BLAS_CORE_WAS, below) */
const char *cpu_blas_name(char *buf, size_t n);

/* The OpenBLAS core this CPU's features call for, where the one OpenBLAS picked (*picked) is of
 * an older class; NULL where its pick is fine. OpenBLAS 0.3.21 (Debian 12) takes an x86-64 CPU it does not
 * know by model, as an Emerald Rapids Xeon (family 6, model 0xCF), for a Prescott: SSE3 kernels,
 * several times slower fp32 products, whose sums change order with the thread count (seen:
 * test_threads' losses on 2 threads off 1 thread's in the 8th digit). OpenBLAS reads
 * OPENBLAS_CORETYPE once, when it loads, before main: src/cli/main.c starts tuna again with it
 * set (and TUNA_BLAS_CORE_WAS, OpenBLAS's own pick, for cpu_blas_name). */
const char *cpu_blas_core_wanted(const char **picked);

/* For a program's main (or a constructor, glibc passes argv), before anything else: where
 * cpu_blas_core_wanted names a core and the user has not set OPENBLAS_CORETYPE, starts the
 * program again (/proc/self/exe, the same argv) with it set; returns where nothing needs it or
 * the exec failed (the program goes on with OpenBLAS's pick). */
void cpu_blas_core_reexec(char **argv);

/* Whether cpu_sgemm computes each row of C alike whatever M (OpenBLAS's cores whose kernels do
 * not, padded to whole groups of rows: cpu_backend.c, sgemm_row_unit); 0 where OpenBLAS is left
 * to it (the AVX-512 cores, where it held for the batches tests make). */
int cpu_sgemm_rows_padded(void);

/* Whether the fp32 products (cpu_sgemm) give an element the same bits in products of other shapes
 * (rows and columns of the same operands, probed once), so that a row of a batch padded to
 * another length, or split across ranks, computes alike: 1 in every product (40 x 40 against
 * 32 x 32, K 64); 2 in products past OpenBLAS's small-matrix kernel (150 x 150 against 120 x 120,
 * K 256; asked only where cpu_sgemm does not pad rows), which sums products of M N K up to about
 * 1e6 with a side of up to about 12 in another order (measured on a Zen 4, core Cooperlake);
 * 0 otherwise, as on OpenBLAS's Haswell/Zen cores (AVX2), whose columns depend on N, which the
 * attention's products over a batch's keys take (their rows cpu_sgemm pads: cpu_backend.c). */
int cpu_sgemm_shape_invariant(void);

#endif
