/* pref.h: the preference losses on per-sequence log-probabilities (the dpo stage): TRL's
 * DPOTrainer sigmoid, hinge and ipo against a reference model, sigmoid with LLaMA-Factory's
 * dpo_label_smoothing (conservative DPO, as the TRL it pins computes it), and LLaMA-Factory's
 * reference-free orpo and simpo; pref_ftx adds the SFT term on the chosen answer. Pure host
 * arithmetic in double: the model side gives the sums (model_train.h train_step_rows). */
#ifndef TUNA_SRC_PREF_H
#define TUNA_SRC_PREF_H

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

#endif
