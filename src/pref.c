/* pref.c: the preference losses and their derivatives (pref.h). */
#include "pref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static const char *const names[] = {"sigmoid", "hinge", "ipo", "orpo", "simpo"};

int pref_loss_parse(const char *name, PrefLossType *out) {
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (!strcmp(name, names[i])) {
            *out = (PrefLossType)i;
            return 0;
        }
    return -1;
}

int pref_uses_ref(PrefLossType t) {
    return t == PREF_SIGMOID || t == PREF_HINGE || t == PREF_IPO;
}

/* log(sigmoid(x)) without overflow */
static double logsig(double x) {
    return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
}

static double sigm(double x) {
    return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x));
}

void pref_pairs(const PrefConfig *c, int n, const double *pc, const double *pr, const int *nc,
                const int *nr, const double *rc, const double *rr, double *gc, double *gr,
                PrefSums *s) {
    double beta = c->beta, eps = c->label_smoothing;
    for (int i = 0; i < n; i++) {
        gc[i] = gr[i] = 0;
        if (nc[i] <= 0 || nr[i] <= 0) continue;
        double lc = nc[i], lr = nr[i], loss, dc, dr; /* dc, dr: d loss / d pc, pr */
        double rew_c, rew_r, lp_c = pc[i], lp_r = pr[i];
        if (pref_uses_ref(c->type)) {
            double xc = pc[i] - rc[i], xr = pr[i] - rr[i]; /* the log-ratios */
            rew_c = beta * xc;
            rew_r = beta * xr;
            if (c->type == PREF_IPO) { /* TRL: the ratios' per-token means */
                double z = xc / lc - xr / lr, d = z - 1 / (2 * beta);
                loss = d * d;
                dc = 2 * d / lc;
                dr = -2 * d / lr;
            } else if (c->type == PREF_HINGE) {
                double z = xc - xr, h = 1 - beta * z;
                loss = h > 0 ? h : 0;
                dc = h > 0 ? -beta : 0;
                dr = -dc;
            } else { /* sigmoid, with conservative DPO's label smoothing */
                double z = beta * (xc - xr);
                loss = -logsig(z) * (1 - eps) - logsig(-z) * eps;
                double dz = -(1 - eps) * sigm(-z) + eps * sigm(z);
                dc = beta * dz;
                dr = -dc;
            }
        } else { /* LLaMA-Factory's orpo and simpo on the per-token means */
            double mc = pc[i] / lc, mr = pr[i] / lr, dmc, dmr;
            lp_c = mc;
            lp_r = mr;
            rew_c = beta * mc;
            rew_r = beta * mr;
            if (c->type == PREF_ORPO) {
                /* log_odds = (mc - mr) - (log1p(-exp(mc)) - log1p(-exp(mr))) */
                double u = (mc - mr) - (log1p(-exp(mc)) - log1p(-exp(mr)));
                loss = -mc - beta * logsig(u);
                double su = sigm(-u); /* d(-logsig(u))/du = -su */
                dmc = -1 - beta * su / (1 - exp(mc));
                dmr = beta * su / (1 - exp(mr));
            } else { /* simpo: -logsigmoid(beta * (mc - mr - gamma / beta)) */
                double z = beta * (mc - mr) - c->simpo_gamma;
                loss = -logsig(z);
                dmc = -beta * sigm(-z);
                dmr = -dmc;
            }
            dc = dmc / lc;
            dr = dmr / lr;
        }
        if (c->ftx > 0) { /* + ftx * (-(pc / nc)) */
            loss += c->ftx * (-pc[i] / lc);
            dc += -c->ftx / lc;
        }
        gc[i] = dc;
        gr[i] = dr;
        s->loss += loss;
        s->rewards_chosen += rew_c;
        s->rewards_rejected += rew_r;
        s->accuracies += rew_c > rew_r ? 1 : 0;
        s->margins += rew_c - rew_r;
        s->logps_chosen += lp_c;
        s->logps_rejected += lp_r;
        s->logp_wins += pc[i] > pr[i] ? 1 : 0;
        s->mean_logp_wins += pc[i] / lc > pr[i] / lr ? 1 : 0;
        s->n++;
    }
}

void pref_row_scales(void *ctx, const double *logp, const int *n, int B, float *scale) {
    PrefBatch *pb = ctx;
    int P = pb->pairs;
    for (int b = 0; b < B; b++)
        scale[b] = 0;
    if (B < 2 * P) return; /* not a batch of P pairs: no gradient */
    double *g = xmalloc(sizeof(double) * 2 * (size_t)P);
    pref_pairs(pb->c, P, logp, logp + P, n, n + P, pb->ref, pb->ref ? pb->ref + P : NULL, g, g + P,
               &pb->sums);
    for (int b = 0; b < 2 * P; b++) /* logp = -sum CE: d/dCE = -d/dlogp */
        scale[b] = (float)(-g[b] * pb->scale);
    free(g);
}

// --- kto

double kto_kl(int B, const double *pol, const double *ref, const int *n) {
    double sum = 0;
    int k = 0;
    for (int i = 0; i < B; i++)
        if (n[i] > 0) {
            sum += pol[i] - ref[i];
            k++;
        }
    double kl = k ? sum / k : 0;
    return kl > 0 ? kl : 0; /* TRL: .clamp(min=0) */
}

void kto_rows(const KtoConfig *c, int n, const double *pol, const double *ref, const int *cnt,
              const int *tag, double kl, double *g, KtoSums *s) {
    double beta = c->beta;
    for (int i = 0; i < n; i++) {
        g[i] = 0;
        if (cnt[i] <= 0) continue;
        double x = pol[i] - ref[i], rew = beta * x;
        if (tag[i]) { /* 1 - sigmoid(z), z = beta (x - kl): d/dx = -beta s (1 - s) */
            double w = c->desirable_weight, sg = sigm(beta * (x - kl));
            s->loss += w * (1 - sg);
            g[i] = -w * beta * sg * (1 - sg);
            s->rewards_chosen += rew;
            s->logps_chosen += pol[i];
            s->n_chosen++;
        } else { /* 1 - sigmoid(z), z = beta (kl - x): d/dx = +beta s (1 - s) */
            double w = c->undesirable_weight, sg = sigm(beta * (kl - x));
            s->loss += w * (1 - sg);
            g[i] = w * beta * sg * (1 - sg);
            s->rewards_rejected += rew;
            s->logps_rejected += pol[i];
            s->n_rejected++;
        }
    }
}

void kto_row_scales(void *ctx, const double *logp, const int *n, int B, float *scale) {
    KtoBatch *kb = ctx;
    double *g = xmalloc(sizeof(double) * (size_t)(B > 0 ? B : 1));
    kto_rows(kb->c, B, logp, kb->ref, n, kb->tag, kb->kl, g, &kb->sums);
    for (int b = 0; b < B; b++) /* logp = -sum CE: d/dCE = -d/dlogp */
        scale[b] = (float)(-g[b] * kb->scale);
    free(g);
}

// --- the policy's logits (TRL's logits/chosen, logits/rejected, entropy, accuracy)

void pref_logit_sums(const double *st, int rows, const int32_t *tags, int P, LogitSums *s) {
    for (int b = 0; st && b < rows; b++) {
        const double *x = st + (size_t)b * 4;
        int chosen = tags ? tags[b] == 1 : b < P, rejected = tags ? tags[b] == 0 : b >= P;
        if (chosen) {
            s->logits_chosen += x[0];
            s->top1_chosen += x[2];
            s->tok_chosen += x[3];
        } else if (rejected) {
            s->logits_rejected += x[0];
            s->tok_rejected += x[3];
        }
        if (chosen || rejected) s->entropy += x[1];
    }
}

int pref_logit_metrics(const LogitSums *s, int eval, int acc, const char **out, double *v) {
    static const char *const nm[2][4] = {
            {"logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy"},
            {"eval_logits/chosen", "eval_logits/rejected", "eval_entropy",
             "eval_mean_token_accuracy"}};
    int k = 0;
    if (s->tok_chosen > 0) {
        out[k] = nm[eval][0];
        v[k++] = s->logits_chosen / s->tok_chosen;
    }
    if (s->tok_rejected > 0) {
        out[k] = nm[eval][1];
        v[k++] = s->logits_rejected / s->tok_rejected;
    }
    if (s->tok_chosen + s->tok_rejected > 0) {
        out[k] = nm[eval][2];
        v[k++] = s->entropy / (s->tok_chosen + s->tok_rejected);
    }
    if (acc && s->tok_chosen > 0) {
        out[k] = nm[eval][3];
        v[k++] = s->top1_chosen / s->tok_chosen;
    }
    return k;
}
