/* harness.h: a tiny test harness. Each test binary includes it once, calls CHECK* and SKIP,
 * and ends main with `return test_report("name");`, which prints
 * "name: N passed, N failed, N skipped" and returns non-zero on any failure.
 * tests/run_tests.sh adds the counts of every binary into one closing line. */
#ifndef TUNA_TESTS_HARNESS_H
#define TUNA_TESTS_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_backend.h"

static int test_passed, test_failed, test_skipped;

/* stdout line by line, so that a FAIL on stderr never lands inside a half-written line of
 * stdout, nor of a child that system() starts after buffered text (tests/run_tests.sh finds
 * FAIL lines by their start). */
__attribute__((constructor)) static void test_line_buffered(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
}

/* The OpenBLAS core tuna runs with (kernels/cpu/cpu_backend.h: cpu_blas_core_reexec), for the
 * kernels a test calls in its own process: glibc passes a constructor argc, argv and envp. */
__attribute__((constructor)) static void harness_blas_core(int argc, char **argv, char **envp) {
    (void)argc;
    (void)envp;
    cpu_blas_core_reexec(argv);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            test_passed++;                                                                         \
        } else {                                                                                   \
            test_failed++;                                                                         \
            fflush(stdout);                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define SKIP(...)                                                                                  \
    do {                                                                                           \
        test_skipped++;                                                                            \
        fflush(stdout);                                                                            \
        fprintf(stderr, "SKIP %s:%d: ", __FILE__, __LINE__);                                       \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
    } while (0)

static inline int test_report(const char *name) {
    printf("%s: %d passed, %d failed, %d skipped\n", name, test_passed, test_failed, test_skipped);
    return test_failed ? 1 : 0;
}

/* Largest |a-b| over n floats. */
/* 1 when files a and b both exist and hold the same bytes. */
static inline int test_same_file(const char *a, const char *b) {
    FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
    int same = x && y;
    while (same) {
        int c = fgetc(x), d = fgetc(y);
        if (c != d) same = 0;
        if (c == EOF || d == EOF) break;
    }
    if (x) fclose(x);
    if (y) fclose(y);
    return same;
}

static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

/* 1 if every |x - ref| <= atol + rtol*|ref| (NaN fails); *worst gets the largest |x - ref|. */
static inline int test_close_enough(const float *x, const float *ref, size_t n, float atol,
                                    float rtol, double *worst) {
    int ok = 1;
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - (double)ref[i]);
        double lim = (double)atol + (double)rtol * fabs((double)ref[i]);
        if (d > *worst || d != d) *worst = d;
        if (!(d <= lim)) ok = 0;
    }
    return ok;
}

/* Where tests find ../shared (the read-only data beside the checkout); NULL when absent. */
static inline const char *test_shared_dir(void) {
    static const char *dirs[] = {"../shared", "../../shared"};
    const char *env = getenv("TUNA_SHARED");
    if (env) return env;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/README.md", dirs[i]);
        FILE *f = fopen(p, "r");
        if (f) {
            fclose(f);
            return dirs[i];
        }
    }
    return NULL;
}

#endif
