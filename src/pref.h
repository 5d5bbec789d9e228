/* pref.h: the preference losses on per-sequence log-probabilities (the dpo and kto stages): TRL's
 * DPOTrainer sigmoid, hinge and ipo against a reference model, sigmoid with LLaMA-Factory's
 * dpo_label_smoothing (conservative DPO, as the TRL it pins computes it), and LLaMA-Factory's
 * reference-free orpo and simpo; pref_ftx adds the SFT term on the chosen answer; TRL's
 * KTOTrainer loss on unpaired examples with its KL estimate. Pure host
 * arithmetic in double: the model side gives the sums (model_train.h train_step_rows). */
#ifndef TUNA_SRC_PREF_H
#define TUNA_SRC_PREF_H

#include <stdint.h>

typedef enum { PREF_SIGMOID, PREF_HINGE, PREF_IPO, PREF_ORPO, PREF_SIMPO } PrefLossType;

typedef struct PrefConfig {
    PrefLossType type;
    double beta;            /* pref_beta (0.1) */
    double simpo_gamma;     /* simpo's target margin (0.5) */
    double label_smoothing; /* sigmoid only: dpo_label_smoothing (0) */
    double ftx;             /* pref_ftx: the weight of the chosen answer's SFT loss (0) */
} PrefConfig;

/* "sigmoid" ... "simpo" -> *out; -1 when unknown. */
int pref_loss_parse(const char *name, PrefLossType *out);
/* sigmoid, hinge and ipo compare with a reference model; orpo and simpo do not. */
int pref_uses_ref(PrefLossType t);

/* The policy's logits over the answers' tokens (TRL's logits/chosen, logits/rejected, entropy and
 * mean_token_accuracy, token-weighted): sums of each token's mean logit over the vocabulary, of
 * its entropy and (chosen answers) of its is_top1, and the tokens of the chosen (desirable) and
 * rejected (undesirable) answers; no tokens when the backend gives no logit_stats. */
typedef struct LogitSums {
    double logits_chosen, logits_rejected, entropy, top1_chosen, tok_chosen, tok_rejected;
} LogitSums;

/* Adds a batch's rows to s from st (rows x 4, train_row_stats: per row the sums of its answer
 * tokens' mean logit, entropy and is_top1, and their count): row b is a chosen answer when
 * tags[b] is 1 (kto; 0 rejected, -1 padding), or, tags NULL, when b < P (dpo: P chosen rows,
 * then P rejected). st NULL (no logit_stats on this backend) adds nothing. */
void pref_logit_sums(const double *st, int rows, const int32_t *tags, int P, LogitSums *s);

/* TRL's logits/chosen, logits/rejected, entropy and, with acc (dpo's, not kto's),
 * mean_token_accuracy of s, with the eval_ prefix when eval; a side without tokens is left out,
 * as all of them without logit_stats. Returns the count written to names and v (at most 4). */
int pref_logit_metrics(const LogitSums *s, int eval, int acc, const char **names, double *v);

/* Sums over the pairs of a batch, for the TRL metrics (divide by n). */
typedef struct PrefSums {
    double loss;
    double rewards_chosen, rewards_rejected, accuracies, margins;
    double logps_chosen, logps_rejected;
    /* the policy alone as a preference classifier (eval only; not TRL metrics): pairs whose
     * chosen answer has the higher summed log-prob, and the higher per-token mean log-prob.
     * Unlike rewards/accuracies (0 before any step: the rewards are log-ratios to the start)
     * they measure the model before training too. */
    double logp_wins, mean_logp_wins;
    LogitSums lg;
    int n; /* pairs */
} PrefSums;

/* n pairs: pc, pr the policy's sums of the chosen and rejected answers' target log-probs, nc,
 * nr their token counts, rc, rr the reference's sums (NULL for orpo and simpo). Adds each pair's
 * loss and metrics to *s and puts in gc[i], gr[i] the derivative of pair i's loss with respect
 * to pc[i] and pr[i]. A pair with an empty answer (nc or nr 0: a batch's padding) counts for
 * nothing and gets 0. orpo and simpo use the per-token mean log-probs (LLaMA-Factory), ipo the
 * per-token mean log-ratios in its loss (TRL); the rewards are beta times the log-ratios (sums),
 * or for orpo and simpo beta times the mean log-probs, as is logps/chosen there. */
void pref_pairs(const PrefConfig *c, int n, const double *pc, const double *pr, const int *nc,
                const int *nr, const double *rc, const double *rr, double *gc, double *gr,
                PrefSums *s);

/* A batch of pairs as train_step_rows sees it (model_train.h TrainRowFn): rows 0..P-1 the
 * chosen answers, P..2P-1 the rejected (the batcher's order). pref_row_scales is the row
 * callback: from the policy's sums it adds the pairs' loss and metrics to sums and gives each
 * row's gradient scale, the derivative of scale * (the pairs' summed loss) with respect to each
 * token cross-entropy of the row (so scale = 1 / pairs in the whole step gives the mean). */
typedef struct PrefBatch {
    const PrefConfig *c;
    int pairs;         /* P */
    const double *ref; /* (2P) the reference's sums, or NULL for orpo and simpo */
    double scale;      /* on the loss: 1 / the step's pairs */
    PrefSums sums;     /* added to */
} PrefBatch;

void pref_row_scales(void *ctx, const double *logp, const int *n, int B, float *scale);

// --- kto: TRL's KTOTrainer loss (loss_type "kto") on unpaired examples

typedef struct KtoConfig {
    double beta;               /* pref_beta (0.1) */
    double desirable_weight;   /* kto_chosen_weight (1) */
    double undesirable_weight; /* kto_rejected_weight (1) */
} KtoConfig;

/* Sums over a step's examples, for TRL's metrics: rewards/chosen and logps/chosen are means
 * over the desirable examples (n_chosen), the rejected ones over the undesirable, kl the mean
 * of the micro-batches' kl (kl_sum / n_kl). */
typedef struct KtoSums {
    double loss; /* the weighted losses, summed */
    double rewards_chosen, rewards_rejected, logps_chosen, logps_rejected;
    double kl_sum;
    LogitSums lg;
    int n_chosen, n_rejected, n_kl;
} KtoSums;

/* TRL's KL estimate of a micro-batch: the mean over its rows with a completion (n[i] > 0) of
 * the policy's minus the reference's log-prob sums of the mismatched (prompt, completion)
 * sequences, clamped at 0. It is detached (no gradient flows through it). 0 without rows. */
double kto_kl(int B, const double *pol, const double *ref, const int *n);

/* n examples: pol, ref the policy's and the reference's completion log-prob sums, cnt the
 * completion tokens (0: a batch's padding row, counts for nothing), tag 1 desirable, 0
 * undesirable, kl the micro-batch's kto_kl. Adds each example's weighted loss
 *   desirable:   w_d * (1 - sigmoid(beta * (pol - ref - kl)))
 *   undesirable: w_u * (1 - sigmoid(beta * (kl - (pol - ref))))
 * and its reward beta * (pol - ref) to *s, and puts in g[i] d loss_i / d pol[i]. */
void kto_rows(const KtoConfig *c, int n, const double *pol, const double *ref, const int *cnt,
              const int *tag, double kl, double *g, KtoSums *s);

/* A micro-batch as train_step_rows sees it: rows 0..B-1 the examples (their tags), the KL
 * rows already done (kl). kto_row_scales is the row callback: scale = 1 / the step's examples
 * gives TRL's mean. */
typedef struct KtoBatch {
    const KtoConfig *c;
    const int *tag;    /* (B) */
    const double *ref; /* (B) the reference's sums */
    double kl;
    double scale;
    KtoSums sums; /* added to */
} KtoBatch;

void kto_row_scales(void *ctx, const double *logp, const int *n, int B, float *scale);

#endif
