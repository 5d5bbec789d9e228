/* cli_fixture.h: running the tuna binary from a test (header-only, after harness.h): which
 * binary, its exit status, its captured output, and a training that must be refused. */
#ifndef TUNA_TESTS_CLI_FIXTURE_H
#define TUNA_TESTS_CLI_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

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

/* The number after "key": in JSON text (a report, a metrics line); NaN when text is NULL or has
 * no such key. */
static inline double test_json_number(const char *text, const char *key) {
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = text ? strstr(text, pat) : NULL;
    return p ? atof(p + strlen(pat)) : (double)NAN;
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

#endif
