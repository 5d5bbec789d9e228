/* fuzz_common.h: helpers shared by the libFuzzer targets in tests/fuzz/ (built by `make fuzz`
 * with clang -fsanitize=fuzzer,address,undefined,float-cast-overflow).
 *
 * Loaders that take paths get their input through a per-process scratch directory under
 * /dev/shm (/tmp when /dev/shm is missing), created on first use and removed at exit. The
 * tokenizer and template some targets need come from ../shared or the source tree; the
 * working directory is the repository root (make fuzz runs from there). */
#ifndef TUNA_TESTS_FUZZ_COMMON_H
#define TUNA_TESTS_FUZZ_COMMON_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char fuzz_dir[256];

static inline void fuzz_cleanup(void) {
    if (!fuzz_dir[0]) return;
    DIR *d = opendir(fuzz_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[600];
            snprintf(p, sizeof p, "%s/%s", fuzz_dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(fuzz_dir);
}

/* The scratch directory, created on first call. The pid is printed at a fixed width so that
 * the path, and every error message naming it, has the same length in every run (make fuzz-ci
 * repeats its executions exactly). */
static inline const char *fuzz_scratch(void) {
    if (fuzz_dir[0]) return fuzz_dir;
    struct stat st;
    const char *root = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/tuna_fuzz_%010ld", root, (long)getpid());
    mkdir(fuzz_dir, 0700);
    atexit(fuzz_cleanup);
    return fuzz_dir;
}

/* Writes n bytes to scratch/name (replacing it); returns the path (static buffer per slot). */
static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t n) {
    static char paths[4][600];
    static int slot;
    char *p = paths[slot++ & 3];
    snprintf(p, 600, "%s/%s", fuzz_scratch(), name);
    FILE *f = fopen(p, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
    return p;
}

static inline void fuzz_remove(const char *name) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", fuzz_scratch(), name);
    unlink(p);
}

/* A NUL-terminated malloc'd copy of data. */
static inline char *fuzz_cstr(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* Splits data at the first NUL byte: *a = [0, i), *b = (i, n). Returns 0 when there is none
 * (then *a is everything and *b empty). */
static inline int fuzz_split(const uint8_t *data, size_t n, const uint8_t **b, size_t *na,
                             size_t *nb) {
    const uint8_t *z = n ? memchr(data, 0, n) : NULL;
    if (!z) {
        *na = n, *b = data + n, *nb = 0;
        return 0;
    }
    *na = (size_t)(z - data);
    *b = z + 1;
    *nb = n - *na - 1;
    return 1;
}

/* The first of ../shared/models/stories260K, ../../shared/... holding tokenizer.json; NULL if
 * none. */
static inline const char *fuzz_stories_dir(void) {
    static const char *dirs[] = {"../shared/models/stories260K", "../../shared/models/stories260K"};
    const char *env = getenv("TUNA_FUZZ_TOKENIZER");
    if (env) return env;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char p[300];
        struct stat st;
        snprintf(p, sizeof p, "%s/tokenizer.json", dirs[i]);
        if (stat(p, &st) == 0) return dirs[i];
    }
    return NULL;
}

#ifdef TUNA_FUZZ_NEED_TOKENIZER
#include "../../src/tokenizer.h"

/* A loaded tokenizer for the targets that encode: stories260K's (SentencePiece-style BPE with
 * byte fallback) when ../shared is there, else a tiny built-in BPE. Loaded once, never freed. */
static inline const Tokenizer *fuzz_tokenizer(void) {
    static Tokenizer *tok;
    if (tok) return tok;
    TunaErr err = {0};
    const char *dir = fuzz_stories_dir();
    if (!dir) {
        static const char tiny[] =
                "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":4,\"content\":\"</s>\","
                "\"special\":true}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,"
                "\"b\":1,\"ab\":2,\"c\":3},\"merges\":[\"a b\"]}}";
        fuzz_write("tokenizer.json", (const uint8_t *)tiny, sizeof tiny - 1);
        dir = fuzz_scratch();
    }
    if (tokenizer_load(dir, &tok, &err) != 0) {
        fprintf(stderr, "fuzz: cannot load the fixed tokenizer: %s\n", err.msg);
        abort();
    }
    if (!getenv("TUNA_FUZZ_TOKENIZER") && dir == fuzz_scratch()) fuzz_remove("tokenizer.json");
    return tok;
}
#endif

#endif
