/* bench_wtype.c: the cpu backend's matmul_w_fwd per weight type against fp32 matmul_fwd
 * (OpenBLAS), at a decoding shape (M = 1, 576 x 576), a prefill/training shape (M = 512,
 * 1536 x 576) and an LM-head shape (M = 512, 49152 x 576; --quick: 8192 x 576). Prints the CPU's
 * features, the kernel path each row takes, ms per call and GFLOP/s (2 M N K per call), the
 * best of several runs, and for M = 512 the input gradient (matmul_w_bwd_in against fp32
 * matmul_bwd with din only); cpu on every core. Built and run by `make bench`.
 *   build/bench/bench_wtype [--quick] [--threads N]   (N 0: every core) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

static void bench_shape(Backend *be, int M, int N, int K, int reps) {
    const WType types[] = {WT_F32, WT_BF16, WT_F16, WT_Q8_0, WT_Q4_0, WT_Q4_1, WT_NF4, WT_FP4};
    size_t nw = (size_t)N * K;
    float *wf = malloc(nw * 4), *x = malloc((size_t)M * K * 4), *out = malloc((size_t)M * N * 4);
    for (size_t i = 0; i < nw; i++)
        wf[i] = frand() * 0.05f;
    for (size_t i = 0; i < (size_t)M * K; i++)
        x[i] = frand();
    double flop = 2.0 * M * N * K;
    printf("M=%d, W %d x %d:\n", M, N, K);
    /* the fp32 baseline: matmul_fwd (matvecs for M <= 16, OpenBLAS sgemm above) */
    double best = 1e30;
    be->ops->matmul_fwd(be, out, x, wf, NULL, M, K, N); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t = now();
        be->ops->matmul_fwd(be, out, x, wf, NULL, M, K, N);
        t = now() - t;
        if (t < best) best = t;
    }
    double base = best, base_bwd = 0;
    float *din = malloc((size_t)M * K * 4);
    memset(din, 0, (size_t)M * K * 4);
    if (M > 8) {
        base_bwd = 1e30;
        for (int r = 0; r < reps; r++) {
            double t = now();
            be->ops->matmul_bwd(be, din, NULL, NULL, out, x, wf, M, K, N);
            t = now() - t;
            if (t < base_bwd) base_bwd = t;
        }
        printf("  (fp32 matmul_bwd din only: %.3f ms)\n", base_bwd * 1e3);
    }
    printf("  %-10s %-14s %9.3f ms %8.1f GFLOP/s  %6.2fx   %8.1f MB\n", "fp32 c_matmul",
           "matmul_fwd", best * 1e3, flop / best * 1e-9, 1.0, (double)nw * 4 / 1e6);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        Weight w;
        TunaErr err = {0};
        for (int dq = 0; dq <= (types[ti] == WT_NF4); dq++) {
            if (weight_quantize(&w, wf, N, K, types[ti], dq, &err)) {
                printf("  %s: %s\n", wtype_info[types[ti]].name, err.msg);
                continue;
            }
            best = 1e30;
            be->ops->matmul_w_fwd(be, out, x, &w, NULL, M); /* warm-up */
            for (int r = 0; r < reps; r++) {
                double t = now();
                be->ops->matmul_w_fwd(be, out, x, &w, NULL, M);
                t = now() - t;
                if (t < best) best = t;
            }
            char nm[32];
            snprintf(nm, sizeof nm, "%s%s", wtype_info[types[ti]].name, dq ? "+dq" : "");
            printf("  %-10s    %-14s %9.3f ms %8.1f GFLOP/s  %6.2fx   %8.1f MB", nm,
                   types[ti] == WT_F32 ? "(fp32 slot)" : cpu_matmul_w_path(types[ti], K, M),
                   best * 1e3, flop / best * 1e-9, base / best, (double)weight_bytes(&w) / 1e6);
            if (M > 8) { /* the input gradient, against fp32 matmul_bwd's din */
                double bb = 1e30;
                for (int r = 0; r < reps; r++) {
                    double t = now();
                    be->ops->matmul_w_bwd_in(be, din, out, &w, M, 1);
                    t = now() - t;
                    if (t < bb) bb = t;
                }
                printf("   bwd_in %8.3f ms %6.2fx", bb * 1e3, base_bwd / bb);
            }
            printf("\n");
            weight_free(&w);
        }
    }
    free(wf);
    free(x);
    free(out);
    free(din);
}

int main(int argc, char **argv) {
    int quick = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    }
    bench_cpu_features();
    TunaErr err = {0};
    Backend *be = backend_init("cpu", threads, &err);
    if (!be) {
        fprintf(stderr, "bench_wtype: %s\n", err.msg);
        return 1;
    }
    printf("cpu backend, %d threads; columns: type, kernel, ms per call (best), GFLOP/s, speed "
           "vs fp32, weight size\n",
           be->n_threads);
    bench_shape(be, 1, 576, 576, quick ? 50 : 400);
    bench_shape(be, 1, 1536, 576, quick ? 50 : 200);
    bench_shape(be, 512, 1536, 576, quick ? 2 : 5);
    bench_shape(be, 512, quick ? 8192 : 49152, 576, quick ? 1 : 3);
    backend_free(be);
    return 0;
}
