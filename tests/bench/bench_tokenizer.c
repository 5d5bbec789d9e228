/* bench_tokenizer.c: encode throughput (MB/s of UTF-8 input, one core) of every shared
 * tokenizer on English text: shared/datasets/tinyshakespeare.txt and
 * tinystories_valid_slice.txt. Each file is encoded line by line (as a dataset loader does)
 * and as one whole string; the best of 3 runs is reported. Target: >= 1 MB/s everywhere.
 *
 *   cc -O2 -I. tests/bench/bench_tokenizer.c build/libtuna.a -lcjson -lpcre2-8 -lm
 *   ./a.out [SHARED_DIR]   (default ../shared, or $TUNA_SHARED) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "src/tokenizer.h"
#include "src/xalloc.h"

/* Seconds to encode text, line by line (by_line) or whole; *ntok gets the token count. */
static double run(const Tokenizer *t, const char *text, size_t len, int by_line, size_t *ntok) {
    double t0 = now();
    size_t total = 0;
    size_t i = 0;
    while (i < len) {
        size_t e = len;
        if (by_line) {
            const char *nl = memchr(text + i, '\n', len - i);
            e = nl ? (size_t)(nl - text) + 1 : len;
        }
        int32_t *ids;
        size_t n;
        TunaErr err;
        if (tokenizer_encode(t, text + i, e - i, 0, &ids, &n, &err)) {
            fprintf(stderr, "encode failed: %s\n", err.msg);
            exit(1);
        }
        total += n;
        free(ids);
        i = e;
    }
    *ntok = total;
    return now() - t0;
}

int main(int argc, char **argv) {
    const char *shared = argc > 1 ? argv[1] : getenv("TUNA_SHARED");
    if (!shared) shared = "../shared";
    static const char *const names[] = {"gpt2",   "llama2", "mistral-7b-v0.1",
                                        "llama3", "qwen3",  "stories260K"};
    static const char *const files[] = {"tinyshakespeare.txt", "tinystories_valid_slice.txt"};
    char *text[2];
    size_t len[2];
    for (int f = 0; f < 2; f++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/datasets/%s", shared, files[f]);
        text[f] = xread_file(path, &len[f]);
        if (!text[f]) {
            fprintf(stderr, "bench_tokenizer: cannot read %s\n", path);
            return 1;
        }
    }
    int worst_fail = 0;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char dir[1024];
        if (!strcmp(names[k], "stories260K"))
            snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
        else
            snprintf(dir, sizeof dir, "%s/tokenizers/%s", shared, names[k]);
        Tokenizer *t;
        TunaErr err;
        double t0 = now();
        if (tokenizer_load(dir, &t, &err)) {
            fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
            return 1;
        }
        double load = now() - t0;
        double mbs[2][2];
        size_t ntok[2] = {0, 0};
        for (int f = 0; f < 2; f++) {
            for (int mode = 0; mode < 2; mode++) {
                double best = 1e30;
                for (int r = 0; r < 3; r++) {
                    double s = run(t, text[f], len[f], mode == 0, &ntok[f]);
                    if (s < best) best = s;
                }
                mbs[f][mode] = (double)len[f] / 1e6 / best;
                if (mbs[f][mode] < 1.0) worst_fail = 1;
            }
        }
        printf("tokenizer %-16s encode MB/s: shakespeare %6.2f (lines) %6.2f (whole), "
               "tinystories %6.2f (lines) %6.2f (whole); %zu+%zu tokens; load %.2f s\n",
               names[k], mbs[0][0], mbs[0][1], mbs[1][0], mbs[1][1], ntok[0], ntok[1], load);
        tokenizer_free(t);
    }
    free(text[0]);
    free(text[1]);
    return worst_fail;
}
