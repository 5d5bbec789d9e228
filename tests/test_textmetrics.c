/* test_textmetrics.c: BLEU-4, ROUGE-L and exact match against LLaMA-Factory's scoring.
 * The expected numbers come from LLaMA-Factory's own recipe run in Python (nltk 3.10.4
 * sentence_bleu([list(label)], list(pred), SmoothingFunction().method3); rouge_chinese 1.0.3
 * Rouge().get_scores(" ".join(jieba.cut(pred)), " ".join(jieba.cut(label))) "rouge-l" "f";
 * both x100 and round(., 4)), or by hand where marked. */
#include <stdint.h>

#include "harness.h"
#include "src/textmetrics.h"

#define NEAR(a, b) (fabs((a) - (b)) <= 1e-4)

typedef struct Case {
    const char *pred, *ref;
    double bleu, rouge;
} Case;

static const Case cases[] = {
        /* identical: 100 / 100 */
        {"the cat sat on the mat", "the cat sat on the mat", 100.0, 100.0},
        /* disjoint characters: no unigram match -> 0; no common word -> 0 */
        {"abc", "xyz", 0.0, 0.0},
        {"neg", "pos", 0.0, 0.0},
        /* partial overlaps (nltk / rouge_chinese) */
        {"the cat sat on the mat", "the cat is on the mat", 78.392, 83.3333},
        {"neg.", "neg", 59.4604, 66.6667}, /* jieba: "neg" "." -> LCS 1, P 1/2, R 1 */
        {"pos", "positive", 15.8825, 0.0},
        {"Hello! I am Tuna, an AI assistant developed by Ann.",
         "Hello! I am Tuna, an AI assistant developed by Ann. How can I assist you today?", 57.7516,
         78.7879},
        {"I am an assistant", "I am Tuna, an AI assistant", 52.2409, 72.7273},
        {"it's 3.14 e-mail", "it is 3.14 email", 64.1387, 36.3636},
        /* identical but shorter than 4 characters: method3 smooths the missing 3/4-grams, so
         * BLEU is not 100 ("a": exp((log 1 + log 1/2 + log 1/4 + log 1/8) / 4) = 2^-1.5) */
        {"a", "a", 35.3553, 100.0},
        {"ab", "ab", 59.4604, 100.0},
        /* empty prediction */
        {"", "neg", 0.0, 0.0},
        /* Chinese: BLEU is per character in both. ROUGE-L: here one word per character, LCS 4
         * of 6 and 4 -> F = 2*(2/3)/(5/3) = 80 (by hand); jieba's dictionary gives 85.7143. */
        {"我是一个学生", "我是学生", 22.9575, 80.0},
};

static void test_cases(void) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const Case *c = &cases[i];
        double b = textmetrics_bleu4(c->pred, c->ref), r = textmetrics_rouge_l(c->pred, c->ref);
        CHECK(NEAR(b, c->bleu), "bleu(\"%s\", \"%s\") = %.4f, want %.4f", c->pred, c->ref, b,
              c->bleu);
        CHECK(NEAR(r, c->rouge), "rouge(\"%s\", \"%s\") = %.4f, want %.4f", c->pred, c->ref, r,
              c->rouge);
    }
}

/* Hand-computed BLEU on integer tokens: hyp = 1 2 3 4 5, ref = 1 2 3 4 6.
 * p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, BP = 1 (equal lengths):
 * BLEU = (4/5 * 3/4 * 2/3 * 1/2)^(1/4) = (1/5)^(1/4) = 0.668740305. */
static void test_tokens(void) {
    const uint32_t h[] = {1, 2, 3, 4, 5}, r[] = {1, 2, 3, 4, 6};
    double b = textmetrics_bleu4_tokens(h, 5, r, 5);
    CHECK(fabs(b - 0.668740305) < 1e-8, "bleu tokens %.9f", b);
    /* clipping: hyp "7 7 7 7" vs ref "7": p1 = 1/4, the rest smoothed: p2 = 1/(2*3),
     * p3 = 1/(4*2), p4 = 1/(8*1); BP = 1 -> (1/4 * 1/6 * 1/8 * 1/8)^(1/4) = 1536^(-1/4) */
    const uint32_t h2[] = {7, 7, 7, 7}, r2[] = {7};
    b = textmetrics_bleu4_tokens(h2, 4, r2, 1);
    CHECK(fabs(b - pow(1536.0, -0.25)) < 1e-12, "bleu clipping %.9f", b);
    /* brevity: hyp "1 2 3 4" vs ref "1 2 3 4 5 6 7 8": all precisions 1, BP = exp(1 - 8/4) */
    const uint32_t h3[] = {1, 2, 3, 4}, r3[] = {1, 2, 3, 4, 5, 6, 7, 8};
    b = textmetrics_bleu4_tokens(h3, 4, r3, 8);
    CHECK(fabs(b - exp(-1.0)) < 1e-12, "bleu brevity %.9f", b);
    /* ROUGE-L: LCS of 1 2 3 4 5 and 1 3 5 6 is 3: P = 3/5, R = 3/4, F = 2PR/(P+R) = 2/3 */
    const uint32_t r4[] = {1, 3, 5, 6};
    double f = textmetrics_rouge_l_tokens(h, 5, r4, 4);
    CHECK(fabs(f - 2.0 / 3.0) < 1e-7, "rouge tokens %.9f", f);
    CHECK(textmetrics_rouge_l_tokens(h, 0, r4, 4) == 0, "empty hyp");
}

static void test_words(void) {
    /* jieba.cut on this gives: it ' s 3.14 e - mail C++ 10% v1.2 a a -- b (and spaces); jieba
     * keeps "C++" whole because its dictionary has it: here "C" "++". */
    const char *s = "it's 3.14 e-mail C++ 10% v1.2a a--b\t中文";
    const char *want[] = {"it",  "'",    "s", "3.14", "e",  "-", "mail", "C", "++",
                          "10%", "v1.2", "a", "a",    "--", "b", "中",   "文"};
    size_t *w, n;
    textmetrics_words(s, &w, &n);
    size_t nw = sizeof want / sizeof want[0];
    CHECK(n == nw, "%zu words, want %zu", n, nw);
    for (size_t i = 0; i < n && i < nw; i++)
        CHECK(w[2 * i + 1] == strlen(want[i]) && !memcmp(s + w[2 * i], want[i], strlen(want[i])),
              "word %zu = \"%.*s\", want \"%s\"", i, (int)w[2 * i + 1], s + w[2 * i], want[i]);
    free(w);
    textmetrics_words("  \n ", &w, &n);
    CHECK(n == 0, "blank has no words");
    free(w);
    /* invalid UTF-8 reads as U+FFFD, one word per bad byte */
    textmetrics_words("a\xff\xfe", &w, &n);
    CHECK(n == 3, "invalid bytes: %zu words", n);
    free(w);
}

static void test_exact(void) {
    CHECK(textmetrics_exact_match("  Neg\n", "neg") == 1, "trim + lowercase");
    CHECK(textmetrics_exact_match("neg", "neg.") == 0, "punctuation differs");
    CHECK(textmetrics_exact_match("", "  ") == 1, "both empty");
    CHECK(textmetrics_exact_match("pos", "") == 0, "one empty");
    CHECK(textmetrics_exact_match("POS itive", "pos Itive") == 1, "inner case");
}

int main(void) {
    test_cases();
    test_tokens();
    test_words();
    test_exact();
    return test_report("test_textmetrics");
}
