/* data_fixture.h: what the dataset tests share (header-only, after harness.h): a file written
 * into a temp folder, a text's ids, an example's masked prompt length and the check that an
 * example is BOS + prompt + answer + EOS with only the answer and EOS trained (the vanilla
 * template with the stories260K tokenizer: BOS 1, EOS 2). */
#ifndef TUNA_TESTS_DATA_FIXTURE_H
#define TUNA_TESTS_DATA_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/dataset.h"

/* dir/name with text in it (a failed write shows up as the test's load error). */
static inline void test_put_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* s's ids without BOS (malloc'd), *n of them. */
static inline int32_t *test_encode(const Tokenizer *tok, const char *s, size_t *n) {
    int32_t *ids = NULL;
    *n = 0;
    tokenizer_encode(tok, s, strlen(s), 0, &ids, n, NULL);
    return ids;
}

/* The first trained position of e (the prompt's length). */
static inline int test_prompt_len(const Example *e) {
    int p = 0;
    while (p < e->n && e->labels[p] == TEMPLATE_IGNORE)
        p++;
    return p;
}

/* e is BOS + prompt + answer + EOS, the prompt masked and the rest trained. */
static inline int test_is_example(const Tokenizer *tok, const Example *e, const char *prompt,
                                  const char *answer) {
    size_t np, na;
    int32_t *p = test_encode(tok, prompt, &np), *a = test_encode(tok, answer, &na);
    int ok = (size_t)e->n == 1 + np + na + 1 && e->ids[0] == 1 && !memcmp(e->ids + 1, p, np * 4) &&
             !memcmp(e->ids + 1 + np, a, na * 4) && e->ids[e->n - 1] == 2 &&
             test_prompt_len(e) == (int)(1 + np);
    for (int i = test_prompt_len(e); ok && i < e->n; i++)
        ok = e->labels[i] == e->ids[i];
    free(p);
    free(a);
    return ok;
}

#endif
