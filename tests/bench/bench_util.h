/* bench_util.h: what the C micro-benchmarks share: a monotonic clock, a seeded xorshift
 * source of floats in [-1, 1) and the CPU's features. Header-only; each benchmark is one translation unit. */
#ifndef TUNA_BENCH_UTIL_H
#define TUNA_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_backend.h"

/* The OpenBLAS core tuna runs with (cpu_blas_core_reexec), for the products measured here */
__attribute__((constructor)) static void bench_blas_core(int argc, char **argv, char **envp) {
    (void)argc;
    (void)envp;
    cpu_blas_core_reexec(argv);
}

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t bench_rng = 0x2545F4914F6CDD1DULL;
static inline float frand(void) {
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (float)((bench_rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}

/* The CPU's model and the features its kernels are chosen by (from /proc/cpuinfo). */
static inline void bench_cpu_features(void) {
    static const char *const flags[] = {"avx2",        "fma",      "f16c",
                                        "avx512f",     "avx512bw", "avx512_vnni",
                                        "avx512_bf16", "amx_bf16", "amx_tile"};
    char line[8192];
    FILE *f = fopen("/proc/cpuinfo", "r");
    char model[256] = "?", have[512] = "";
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10) && model[0] == '?') {
            char *c = strchr(line, ':');
            if (c) snprintf(model, sizeof model, "%s", c + 2);
            model[strcspn(model, "\n")] = '\0';
        }
        if (!strncmp(line, "flags", 5)) {
            for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
                char pat[64];
                snprintf(pat, sizeof pat, " %s", flags[i]);
                char *p = strstr(line, pat);
                size_t n = strlen(pat);
                if (p && (p[n] == ' ' || p[n] == '\n')) {
                    strcat(have, flags[i]);
                    strcat(have, " ");
                }
            }
            break;
        }
    }
    if (f) fclose(f);
    printf("cpu: %s; features: %s\n", model, have[0] ? have : "(none of interest)");
}

#endif
