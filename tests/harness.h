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
#include <sys/wait.h>

static int test_passed, test_failed, test_skipped;

/* stdout line by line, so that a FAIL on stderr never lands inside a half-written line of
 * stdout, nor of a child that system() starts after buffered text (tests/run_tests.sh finds
 * FAIL lines by their start). */
__attribute__((constructor)) static void test_line_buffered(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
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

/* The tuna binary a test runs: $TUNA_BIN (make test-san sets the ASan build's), else ./tuna. */
static inline const char *test_tuna_bin(void) {
    const char *b = getenv("TUNA_BIN");
    return b && *b ? b : "./tuna";
}

/* system(cmd)'s exit status; 128 when the shell did not exit normally. */
static inline int test_system(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* `tuna train BASE ARGS --max-steps 1` in tmp must fail: a non-zero exit, and its stderr says
 * needle (the one-line error naming the problem). */
static inline void test_train_refused(const char *tmp, const char *base, const char *args,
                                      const char *needle) {
    char cmd[4096], errf[300], text[4096] = "";
    snprintf(errf, sizeof errf, "%s/refused.err", tmp);
    snprintf(cmd, sizeof cmd, "%s train %s%s --max-steps 1 --output %s/refused 2>%s",
             test_tuna_bin(), base, args, tmp, errf);
    int rc = test_system(cmd);
    FILE *f = fopen(errf, "r");
    if (f) {
        text[fread(text, 1, sizeof text - 1, f)] = 0;
        fclose(f);
    }
    CHECK(rc != 0 && strstr(text, needle), "%s: exit %d, said: %s", args, rc,
          *text ? text : "(nothing)");
}

/* `tuna args` with stdin from in_file (else /dev/null), its stdout and stderr captured in dir;
 * returns the exit status and both texts (malloc'd, "" when empty). */
static inline int test_run_tuna(const char *dir, const char *args, const char *in_file, char **out,
                                char **err) {
    char cmd[4096], p[2][300];
    char **dst[2] = {out, err};
    snprintf(p[0], sizeof p[0], "%s/stdout", dir);
    snprintf(p[1], sizeof p[1], "%s/stderr", dir);
    snprintf(cmd, sizeof cmd, "%s %s <%s >%s 2>%s", test_tuna_bin(), args,
             in_file ? in_file : "/dev/null", p[0], p[1]);
    int rc = test_system(cmd);
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(p[k], "rb");
        long n = 0;
        if (f && !fseek(f, 0, SEEK_END)) n = ftell(f);
        char *s = malloc((size_t)(n > 0 ? n : 0) + 1);
        size_t got = 0;
        if (f && n > 0 && !fseek(f, 0, SEEK_SET)) got = fread(s, 1, (size_t)n, f);
        s[got] = 0;
        if (f) fclose(f);
        *dst[k] = s;
    }
    return rc;
}

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
