/* textmetrics.h: the text-similarity scores `tuna eval` reports for generated answers, computed
 * as LLaMA-Factory's ComputeSimilarity (train/sft/metric.py) does, so the numbers compare:
 *   bleu-4   NLTK sentence_bleu over the Unicode characters of the strings (LLaMA-Factory passes
 *            list(label), list(pred)), uniform weights (0.25 x 4), SmoothingFunction().method3;
 *   rouge-l  rouge_chinese's ROUGE-L F (LCS over words, 2PR / (P + R + 1e-8)) on words cut the
 *            way jieba cuts non-Chinese text: runs of [A-Za-z0-9] (with ".digits" and "%"), runs
 *            of [+#&._%-], every other non-space character alone. Chinese is one character per
 *            word here (jieba segments it with a dictionary: scores on CJK text differ a little);
 *   exact    whitespace-trimmed, ASCII-lowercased strings equal.
 * bleu-4 and rouge-l are x100 and rounded to 4 decimals, per sample, as LLaMA-Factory rounds them.
 * Pure functions on NUL-terminated UTF-8 (invalid bytes read as U+FFFD); any thread. */
#ifndef TUNA_SRC_TEXTMETRICS_H
#define TUNA_SRC_TEXTMETRICS_H

#include <stddef.h>
#include <stdint.h>

/* BLEU-4 (method3 smoothing) of hypothesis hyp (n_hyp tokens) against one reference, in [0, 1],
 * unrounded. Tokens are compared as integers. 0 when no unigram matches or hyp is empty. */
double textmetrics_bleu4_tokens(const uint32_t *hyp, size_t n_hyp, const uint32_t *ref,
                                size_t n_ref);

/* ROUGE-L F of hyp against ref in [0, 1), unrounded (LCS F1 with rouge's 1e-8 in the
 * denominator). 0 when either is empty. */
double textmetrics_rouge_l_tokens(const uint32_t *hyp, size_t n_hyp, const uint32_t *ref,
                                  size_t n_ref);

/* 100 * BLEU-4 over characters, rounded to 4 decimals (LLaMA-Factory's "bleu-4"). */
double textmetrics_bleu4(const char *pred, const char *ref);

/* 100 * ROUGE-L F over jieba-style words, rounded to 4 decimals (LLaMA-Factory's "rouge-l");
 * 0 when either side has no words. */
double textmetrics_rouge_l(const char *pred, const char *ref);

/* 1 if pred and ref are equal after trimming whitespace and lowercasing ASCII, else 0. */
int textmetrics_exact_match(const char *pred, const char *ref);

/* Splits s into the words textmetrics_rouge_l compares: *out (malloc'd, caller frees; non-NULL
 * even when empty) gets n_out {offset, length} pairs into s, 2 per word. Exposed for tests. */
void textmetrics_words(const char *s, size_t **out, size_t *n_out);

#endif
