/* bench_bf16.c: the matrix products under Backend.mm_bf16 (bf16 operands, fp32 sums) against
 * fp32, at the training shapes of SmolLM2-135M (batch 4 x seq 512: M = 2048) and GPT-2 124M
 * (M = 256): the forward out = in wᵀ, and the backward's din = dout w and dw = doutᵀ in.
 * Candidates, alternated in each round, best of the rounds:
 *   fp32      the cpu backend, mm_bf16 0 (OpenBLAS sgemm)
 *   bf16      the cpu backend, mm_bf16 1, its path (avx512bf16: kernels/cpu/gemm_bf16.c)
 *   plain     the cpu backend, mm_bf16 1, TUNA_BF16=plain (rounded copies through sgemm)
 *   sbgemm    OpenBLAS's cblas_sbgemm, where the library exports it (Debian's 0.3.21 is built
 *             without BUILD_BFLOAT16: the header declares it, the library lacks it)
 *   onednn    oneDNN's matmul primitive, bf16 x bf16 -> f32 (built in where libdnnl-dev is)
 * sbgemm and onednn take bf16 arrays: their times include rounding both fp32 operands to bf16
 * (as the engine would, whose activations and master weights are fp32); their primitive is
 * made before the clock starts. Prints the CPU's features, GFLOP/s (2 M N K per call) and
 * each candidate's ratio to fp32. Built and run by `make bench`.
 *   build/bench/bench_bf16 [--quick] [--rounds R] [--threads N] [--shape M,K,N] [--peak]
 *   (N 0: every core; --shape: that one shape only; --peak: only the ceiling below)
 * --peak (also printed first in every run): the arithmetic ceiling of this machine, a register-only
 * loop of 24 independent vdpbf16ps zmm (64 FLOP each) and of vfmadd231ps zmm (32 FLOP), on 1
 * thread and on all of them, alternated, best of the rounds; and where the bf16 path is "amx", a
 * loop of TDPBF16PS on 4 tiles (16384 FLOP each). No product can beat it; the training
 * benchmarks state their targets against it (bench_precision.py). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>
#ifdef BENCH_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

#include "bench_util.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/wtype.h"

enum { OP_FWD, OP_DIN, OP_DW };
static const char *const op_names[] = {"fwd", "din", "dw"};
enum { C_FP32, C_BF16, C_PLAIN, C_SBGEMM, C_DNNL, C_COUNT };
static const char *const cand_names[] = {"fp32", "bf16", "plain", "sbgemm", "onednn"};

/* The product of one op as a plain gemm: C (m, n) = op(A) (m, k) op(B) (k, n), row-major. */
typedef struct {
    int m, n, k, ta, tb, lda, ldb;
    const float *a, *b;
} Gemm;

static Gemm gemm_of(int op, int M, int K, int N, const float *x, const float *w, const float *d) {
    switch (op) {
    case OP_FWD: return (Gemm){M, N, K, 0, 1, K, K, x, w}; /* in (M,K) wᵀ */
    case OP_DIN: return (Gemm){M, K, N, 0, 0, N, K, d, w}; /* dout (M,N) w (N,K) */
    default: return (Gemm){N, K, M, 1, 0, N, K, d, x};     /* doutᵀ (N,M) in (M,K) */
    }
}

static void to_bf16(uint16_t *dst, const float *src, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        dst[i] = wtype_f32_to_bf16(src[i]);
}

#ifdef BENCH_DNNL
typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    dnnl_primitive_t prim;
    dnnl_memory_t am, bm, cm;
} Dnnl;

static int dnnl_make(Dnnl *d, const Gemm *g, uint16_t *a, uint16_t *b, float *c) {
    dnnl_memory_desc_t amd, bmd, cmd;
    dnnl_dims_t ad = {g->m, g->k}, bd = {g->k, g->n}, cd = {g->m, g->n};
    dnnl_dims_t as = {g->ta ? 1 : g->lda, g->ta ? g->lda : 1};
    dnnl_dims_t bs = {g->tb ? 1 : g->ldb, g->tb ? g->ldb : 1};
    dnnl_dims_t cs = {g->n, 1};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd;
    if (dnnl_engine_create(&d->eng, dnnl_cpu, 0) ||
        dnnl_stream_create(&d->st, d->eng, dnnl_stream_default_flags) ||
        dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_bf16, as) ||
        dnnl_memory_desc_init_by_strides(&bmd, 2, bd, dnnl_bf16, bs) ||
        dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs) ||
        dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &cmd) ||
        dnnl_primitive_desc_create(&pd, &md, NULL, d->eng, NULL))
        return -1;
    const char *impl = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    static int shown;
    if (!shown++)
        printf("onednn %d.%d: matmul implementation %s\n", dnnl_version()->major,
               dnnl_version()->minor, impl);
    int rc = dnnl_primitive_create(&d->prim, pd) || dnnl_memory_create(&d->am, &amd, d->eng, a) ||
             dnnl_memory_create(&d->bm, &bmd, d->eng, b) ||
             dnnl_memory_create(&d->cm, &cmd, d->eng, c);
    dnnl_primitive_desc_destroy(pd);
    return rc ? -1 : 0;
}

static void dnnl_run(Dnnl *d) {
    dnnl_exec_arg_t args[3] = {
            {DNNL_ARG_SRC, d->am}, {DNNL_ARG_WEIGHTS, d->bm}, {DNNL_ARG_DST, d->cm}};
    dnnl_primitive_execute(d->prim, d->st, 3, args);
    dnnl_stream_wait(d->st);
}

static void dnnl_free(Dnnl *d) {
    dnnl_memory_destroy(d->am);
    dnnl_memory_destroy(d->bm);
    dnnl_memory_destroy(d->cm);
    dnnl_primitive_destroy(d->prim);
    dnnl_stream_destroy(d->st);
    dnnl_engine_destroy(d->eng);
}
#endif

typedef void (*SbgemmFn)(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint,
                         blasint, blasint, float, const bfloat16 *, blasint, const bfloat16 *,
                         blasint, float, float *, blasint);
static SbgemmFn sbgemm;

static int have_cand(int c) {
    if (c == C_SBGEMM) return sbgemm != NULL;
#ifndef BENCH_DNNL
    if (c == C_DNNL) return 0;
#endif
    return c < C_COUNT;
}

static void bench_shape(Backend *be, int M, int K, int N, int rounds) {
    size_t nx = (size_t)M * K, nw = (size_t)N * K, nd = (size_t)M * N;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *d = malloc(nd * 4);
    size_t nc = nx > nw ? (nx > nd ? nx : nd) : (nw > nd ? nw : nd);
    float *c = malloc(nc * 4);
    uint16_t *a16 = malloc(nc * 2), *b16 = malloc(nc * 2);
    for (size_t i = 0; i < nx; i++)
        x[i] = frand();
    for (size_t i = 0; i < nw; i++)
        w[i] = frand() * 0.05f;
    for (size_t i = 0; i < nd; i++)
        d[i] = frand() * 0.01f;
    double flop = 2.0 * M * N * K;
    for (int op = 0; op < 3; op++) {
        Gemm g = gemm_of(op, M, K, N, x, w, d);
        size_t na = (size_t)g.m * g.k, nb = (size_t)g.k * g.n;
#ifdef BENCH_DNNL
        Dnnl dn;
        int dnnl_ok = !dnnl_make(&dn, &g, a16, b16, c);
        if (!dnnl_ok) printf("onednn: no matmul primitive for this shape\n");
#endif
        double best[C_COUNT];
        for (int i = 0; i < C_COUNT; i++)
            best[i] = 1e30;
        for (int r = 0; r < rounds + 1; r++) /* round 0 warms up */
            for (int ci = 0; ci < C_COUNT; ci++) {
                if (!have_cand(ci)) continue;
#ifdef BENCH_DNNL
                if (ci == C_DNNL && !dnnl_ok) continue;
#endif
                be->mm_bf16 = ci == C_BF16 || ci == C_PLAIN;
                if (ci == C_PLAIN) setenv("TUNA_BF16", "plain", 1);
                double t0 = now();
                if (ci <= C_PLAIN) {
                    if (op == OP_FWD) be->ops->matmul_fwd(be, c, x, w, NULL, M, K, N);
                    if (op == OP_DIN) be->ops->matmul_bwd(be, c, NULL, NULL, d, x, w, M, K, N);
                    if (op == OP_DW) be->ops->matmul_bwd(be, NULL, c, NULL, d, x, w, M, K, N);
                } else {
                    to_bf16(a16, g.a, na);
                    to_bf16(b16, g.b, nb);
                    if (ci == C_SBGEMM)
                        sbgemm(CblasRowMajor, g.ta ? CblasTrans : CblasNoTrans,
                               g.tb ? CblasTrans : CblasNoTrans, g.m, g.n, g.k, 1.0f,
                               (const bfloat16 *)a16, g.lda, (const bfloat16 *)b16, g.ldb, 0.0f, c,
                               g.n);
#ifdef BENCH_DNNL
                    if (ci == C_DNNL) dnnl_run(&dn);
#endif
                }
                double t = now() - t0;
                unsetenv("TUNA_BF16");
                be->mm_bf16 = 0;
                if (r && t < best[ci]) best[ci] = t;
            }
        printf("M %5d K %5d N %5d %-3s", M, K, N, op_names[op]);
        for (int ci = 0; ci < C_COUNT; ci++) {
            if (best[ci] >= 1e30) continue;
            printf("  %s %6.1f", cand_names[ci], flop / best[ci] * 1e-9);
            if (ci) printf(" (%.2fx)", best[C_FP32] / best[ci]);
        }
        printf("  GFLOP/s\n");
        fflush(stdout);
#ifdef BENCH_DNNL
        if (dnnl_ok) dnnl_free(&dn);
#endif
    }
    free(x), free(w), free(d), free(c), free(a16), free(b16);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* FLOP per second of n FMA-like instructions per thread on 24 accumulators (a latency of up to 24
 * cycles hidden at one instruction a cycle), on nth threads. bf16: vdpbf16ps, 32 products and 32
 * sums per zmm; else vfmadd231ps, 16 and 16. */
__attribute__((target("avx512f,avx512bf16"))) static double peak_run(int nth, int bf16) {
    const long iters = 20000000; /* of 24 instructions */
    double t0 = omp_get_wtime();
    float sink = 0;
#pragma omp parallel num_threads(nth) reduction(+ : sink)
    {
        __m512 acc[24];
#pragma GCC unroll 24
        for (int i = 0; i < 24; i++) /* distinct, or the compiler merges the 24 chains into one */
            acc[i] = _mm512_set1_ps((float)i);
        __m512i a = _mm512_set1_epi32(0x3f803f80); /* bf16 pairs (1, 1) */
        __m512 x = _mm512_set1_ps(1e-7f);
        /* unrolled, so that the 24 accumulators live in registers (checked in the disassembly:
         * 24 vdpbf16ps and 24 vfmadd in the loops; rolled, they went through the stack and the
         * loop measured half the rate) */
        if (bf16)
            for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
                for (int i = 0; i < 24; i++)
                    acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)a);
                __asm__ volatile("" : "+v"(a)); /* not hoisted */
            }
        else
            for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
                for (int i = 0; i < 24; i++)
                    acc[i] = _mm512_fmadd_ps(x, x, acc[i]);
                __asm__ volatile("" : "+v"(x));
            }
        for (int i = 0; i < 24; i++)
            sink += _mm512_reduce_add_ps(acc[i]);
    }
    double t = omp_get_wtime() - t0;
    if (sink == 42.0f) printf(" ");
    return (double)nth * (double)iters * 24.0 * (bf16 ? 64.0 : 32.0) / t;
}
#endif

/* FLOP per second of TDPBF16PS on registers (16 x 16 x 32 products: 16384 FLOP each) into 4
 * independent tiles, on nth threads; only where the cpu backend's path is "amx" (which has
 * asked Linux for the tiles), configured by cpu_bf16_tiles. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("amx-tile,amx-bf16"))) static double peak_amx(int nth) {
    const long iters = 2000000; /* of 4 instructions */
    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nth)
    {
        cpu_bf16_tiles(16); /* tiles 0-5 of 16 rows, as gemm_bf16.c configures them */
        static const uint16_t ones[16 * 32] = {0}; /* zeros: the rate does not depend on them */
        _tile_loadd(4, ones, 64);
        _tile_loadd(5, ones, 64);
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (long it = 0; it < iters; it++) {
            _tile_dpbf16ps(0, 4, 5);
            _tile_dpbf16ps(1, 4, 5);
            _tile_dpbf16ps(2, 4, 5);
            _tile_dpbf16ps(3, 4, 5);
        }
        cpu_bf16_tiles(0);
    }
    double t = omp_get_wtime() - t0;
    return (double)nth * (double)iters * 4.0 * 16384.0 / t;
}
#endif

/* The ceiling: best of rounds, 1 thread and nth threads, bf16 and fp32 alternated. */
static void peak(int nth, int rounds) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bf16")) {
        printf("peak: needs AVX512-BF16; this CPU has none\n");
        return;
    }
    double best[2][2] = {{0}}; /* [bf16][all threads] */
    for (int r = 0; r < rounds; r++)
        for (int bf = 1; bf >= 0; bf--)
            for (int all = 0; all < 2; all++) {
                double g = peak_run(all ? nth : 1, bf);
                if (g > best[bf][all]) best[bf][all] = g;
            }
    printf("peak (register-only FMA loop, best of %d): bf16 %.1f GFLOP/s on 1 thread, %.1f on %d "
           "(%.2fx); fp32 %.1f and %.1f (%.2fx)\n",
           rounds, best[1][0] / 1e9, best[1][1] / 1e9, nth, best[1][1] / best[1][0],
           best[0][0] / 1e9, best[0][1] / 1e9, best[0][1] / best[0][0]);
    if (!strcmp(cpu_bf16_path(), "amx")) {
        double amx[2] = {0};
        for (int r = 0; r < rounds; r++)
            for (int all = 0; all < 2; all++) {
                double g = peak_amx(all ? nth : 1);
                if (g > amx[all]) amx[all] = g;
            }
        printf("peak AMX (register-only TDPBF16PS loop, best of %d): %.1f GFLOP/s on 1 thread, "
               "%.1f on %d (%.2fx)\n",
               rounds, amx[0] / 1e9, amx[1] / 1e9, nth, amx[1] / amx[0]);
    }
#else
    (void)nth, (void)rounds;
    printf("peak: x86-64 only\n");
#endif
}

int main(int argc, char **argv) {
    int quick = 0, only_peak = 0, rounds = 3, threads = 0, sm = 0, sk = 0, sn = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--peak"))
            only_peak = 1;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc &&
                 (sscanf(argv[++i], "%d,%d,%d", &sm, &sk, &sn) != 3 || sm < 1 || sk < 1 ||
                  sn < 1)) {
            fprintf(stderr, "bench_bf16: --shape M,K,N\n");
            return 2;
        }
    }
    bench_cpu_features();
    TunaErr err = {0};
    Backend *be = backend_init("cpu", threads, &err);
    if (!be) {
        fprintf(stderr, "bench_bf16: %s\n", err.msg);
        return 1;
    }
    omp_set_num_threads(be->n_threads); /* the conversions and oneDNN */
    *(void **)&sbgemm = dlsym(RTLD_DEFAULT, "cblas_sbgemm");
    if (!sbgemm)
        printf("sbgemm: this OpenBLAS (%s) does not export cblas_sbgemm\n", openblas_get_config());
    printf("threads %d; OpenBLAS core %s; bf16 path %s (amx: AMX tiles; TUNA_BF16=avx512bf16 "
           "forces vdpbf16ps)\n",
           be->n_threads, openblas_get_corename(), cpu_bf16_path());
    peak(be->n_threads, rounds);
    if (only_peak) {
        backend_free(be);
        return 0;
    }
    if (sm) {
        bench_shape(be, sm, sk, sn, rounds);
        backend_free(be);
        return 0;
    }
    static const int smol[][2] = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152}};
    static const int gpt2[][2] = {{768, 2304}, {768, 3072}, {3072, 768}};
    int nsmol = quick ? 4 : 5;
    for (int i = 0; i < nsmol; i++)
        bench_shape(be, quick ? 512 : 2048, smol[i][0], smol[i][1], rounds);
    for (int i = 0; i < 3; i++)
        bench_shape(be, 256, gpt2[i][0], gpt2[i][1], rounds);
    backend_free(be);
    return 0;
}
