#include "prompt_tuning.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "xalloc.h"

// --- layout

static void add_t(PromptEnc *e, const char *name, int ndim, int64_t d0, int64_t d1, int decay) {
    PromptTensor *t = &e->t[e->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->off = e->n_params;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 0;
    t->n = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    t->decay = decay;
    e->n_params += t->n;
}

/* Activations: MLP z1, z2 (P, H) before their ReLUs. LSTM: per layer its input x (P, in) and per
 * direction the activated gates (P, 4H: i f g o), c and h (P, H); the output y (P, 2H) of the
 * last layer; the head's z1 (P, 2H). */
static size_t lstm_in(const PromptEnc *e, int l) {
    return l == 0 ? (size_t)e->D : 2 * (size_t)e->H;
}
static size_t lstm_layer_act(const PromptEnc *e, int l) {
    size_t P = (size_t)e->P, H = (size_t)e->H;
    return P * lstm_in(e, l) + 2 * (P * 4 * H + 2 * P * H);
}

int prompt_enc_init(PromptEnc *e, PromptEncType type, int P, int D, int H, int NL) {
    memset(e, 0, sizeof *e);
    if (P < 1 || D < 1) return -1;
    if (type != PROMPT_ENC_NONE && (H < 1 || H > 65536)) return -1;
    if (type == PROMPT_ENC_LSTM && (NL < 1 || NL > PROMPT_ENC_MAX_LAYERS)) return -1;
    e->type = type;
    e->P = P;
    e->D = D;
    e->H = H;
    e->NL = type == PROMPT_ENC_LSTM ? NL : 0;
    add_t(e, "embedding.weight", 2, P, D, 1);
    if (type == PROMPT_ENC_MLP) {
        add_t(e, "mlp_head.0.weight", 2, H, D, 1);
        add_t(e, "mlp_head.0.bias", 1, H, 0, 0);
        add_t(e, "mlp_head.2.weight", 2, H, H, 1);
        add_t(e, "mlp_head.2.bias", 1, H, 0, 0);
        add_t(e, "mlp_head.4.weight", 2, D, H, 1);
        add_t(e, "mlp_head.4.bias", 1, D, 0, 0);
        e->n_act = 2 * (size_t)P * H;
    } else if (type == PROMPT_ENC_LSTM) {
        for (int l = 0; l < NL; l++)
            for (int dir = 0; dir < 2; dir++) {
                char nm[64];
                const char *sfx = dir ? "_reverse" : "";
                snprintf(nm, sizeof nm, "lstm_head.weight_ih_l%d%s", l, sfx);
                add_t(e, nm, 2, 4 * (int64_t)H, (int64_t)lstm_in(e, l), 1);
                snprintf(nm, sizeof nm, "lstm_head.weight_hh_l%d%s", l, sfx);
                add_t(e, nm, 2, 4 * (int64_t)H, H, 1);
                snprintf(nm, sizeof nm, "lstm_head.bias_ih_l%d%s", l, sfx);
                add_t(e, nm, 1, 4 * (int64_t)H, 0, 0);
                snprintf(nm, sizeof nm, "lstm_head.bias_hh_l%d%s", l, sfx);
                add_t(e, nm, 1, 4 * (int64_t)H, 0, 0);
            }
        add_t(e, "mlp_head.0.weight", 2, 2 * (int64_t)H, 2 * (int64_t)H, 1);
        add_t(e, "mlp_head.0.bias", 1, 2 * (int64_t)H, 0, 0);
        add_t(e, "mlp_head.2.weight", 2, D, 2 * (int64_t)H, 1);
        add_t(e, "mlp_head.2.bias", 1, D, 0, 0);
        for (int l = 0; l < NL; l++)
            e->n_act += lstm_layer_act(e, l);
        e->n_act += 2 * (size_t)P * 2 * H; /* y of the last layer, z1 */
    }
    e->w = xmalloc(sizeof(float) * e->n_params);
    e->out = xmalloc(sizeof(float) * (size_t)P * D);
    e->act = xmalloc(sizeof(double) * (e->n_act ? e->n_act : 1));
    return 0;
}

void prompt_enc_free(PromptEnc *e) {
    if (!e) return;
    free(e->w);
    free(e->out);
    free(e->act);
    memset(e, 0, sizeof *e);
}

static float uniform(uint64_t *rng, float bound) {
    return ((float)(rng_splitmix64(rng) >> 40) / 16777216.0f * 2.0f - 1.0f) * bound;
}

void prompt_enc_init_params(const PromptEnc *e, float *params, uint64_t seed) {
    uint64_t rng = seed ^ 0x50524F4DULL;
    const PromptTensor *emb = &e->t[0];
    for (size_t j = 0; j < emb->n; j++) { /* nn.Embedding: N(0, 1) (Box-Muller) */
        double u1 = ((double)(rng_splitmix64(&rng) >> 11) + 1.0) / 9007199254740993.0;
        double u2 = (double)(rng_splitmix64(&rng) >> 11) / 9007199254740992.0;
        params[emb->off + j] = (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
    }
    for (int i = 1; i < e->n_t; i++) {
        const PromptTensor *t = &e->t[i];
        /* nn.Linear: bound 1/sqrt(in) for weight and bias (the bias takes its weight's in);
         * nn.LSTM: 1/sqrt(hidden) for all */
        float bound;
        if (!strncmp(t->name, "lstm_head.", 10))
            bound = 1.0f / sqrtf((float)e->H);
        else
            bound = 1.0f / sqrtf((float)(t->ndim == 2 ? t->shape[1] : e->t[i - 1].shape[1]));
        for (size_t j = 0; j < t->n; j++)
            params[t->off + j] = uniform(&rng, bound);
    }
}

// --- small dense layers on the host

/* y (P, O) = x (P, K) · Wᵀ + b. */
static void lin_fwd(double *y, const double *x, const float *W, const float *b, int P, int K,
                    int O) {
    for (int p = 0; p < P; p++)
        for (int o = 0; o < O; o++) {
            double s = b ? (double)b[o] : 0.0;
            const float *w = W + (size_t)o * K;
            const double *xp = x + (size_t)p * K;
            for (int k = 0; k < K; k++)
                s += xp[k] * (double)w[k];
            y[(size_t)p * O + o] = s;
        }
}

/* dW += dyᵀ · x, db += Σ dy, dx (if not NULL) += dy · W. */
static void lin_bwd(double *dx, float *dW, float *db, const double *dy, const double *x,
                    const float *W, int P, int K, int O) {
    for (int p = 0; p < P; p++) {
        const double *d = dy + (size_t)p * O, *xp = x + (size_t)p * K;
        for (int o = 0; o < O; o++) {
            if (db) db[o] += (float)d[o];
            float *gw = dW + (size_t)o * K;
            for (int k = 0; k < K; k++)
                gw[k] += (float)(d[o] * xp[k]);
        }
        if (!dx) continue;
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int o = 0; o < O; o++)
                s += d[o] * (double)W[(size_t)o * K + k];
            dx[(size_t)p * K + k] += s;
        }
    }
}

static double sigm(double x) {
    return 1.0 / (1.0 + exp(-x));
}

// --- forward

static const float *T_(const PromptEnc *e, const float *w, int i) {
    return w + e->t[i].off;
}

/* One direction of one LSTM layer: x (P, in) -> gates, c, h (PyTorch's gate order i, f, g, o;
 * h0 = c0 = 0; the reverse direction runs from the last token to the first). */
static void lstm_dir_fwd(const PromptEnc *e, const float *Wih, const float *Whh, const float *bih,
                         const float *bhh, const double *x, int in, int rev, double *G, double *c,
                         double *h) {
    int P = e->P, H = e->H;
    double *a = xmalloc(sizeof(double) * 4 * (size_t)H);
    for (int s = 0; s < P; s++) {
        int t = rev ? P - 1 - s : s, tp = rev ? t + 1 : t - 1;
        const double *hp = s ? h + (size_t)tp * H : NULL, *cp = s ? c + (size_t)tp * H : NULL;
        for (int r = 0; r < 4 * H; r++) {
            double v = (double)bih[r] + (double)bhh[r];
            const float *wi = Wih + (size_t)r * in, *wh = Whh + (size_t)r * H;
            for (int k = 0; k < in; k++)
                v += x[(size_t)t * in + k] * (double)wi[k];
            if (hp)
                for (int k = 0; k < H; k++)
                    v += hp[k] * (double)wh[k];
            a[r] = v;
        }
        double *g = G + (size_t)t * 4 * H;
        for (int k = 0; k < H; k++) {
            g[k] = sigm(a[k]);
            g[H + k] = sigm(a[H + k]);
            g[2 * H + k] = tanh(a[2 * H + k]);
            g[3 * H + k] = sigm(a[3 * H + k]);
            double cv = g[k] * g[2 * H + k] + (cp ? g[H + k] * cp[k] : 0.0);
            c[(size_t)t * H + k] = cv;
            h[(size_t)t * H + k] = g[3 * H + k] * tanh(cv);
        }
    }
    free(a);
}

void prompt_enc_fwd(PromptEnc *e, const float *params) {
    int P = e->P, D = e->D, H = e->H;
    memcpy(e->w, params, sizeof(float) * e->n_params);
    const float *w = e->w;
    size_t PD = (size_t)P * D;
    if (e->type == PROMPT_ENC_NONE) {
        memcpy(e->out, w, sizeof(float) * PD);
        return;
    }
    double *x0 = xmalloc(sizeof(double) * PD), *y = xmalloc(sizeof(double) * PD);
    for (size_t j = 0; j < PD; j++)
        x0[j] = (double)w[j];
    if (e->type == PROMPT_ENC_MLP) {
        double *z1 = e->act, *z2 = e->act + (size_t)P * H;
        double *a = xmalloc(sizeof(double) * (size_t)P * H);
        lin_fwd(z1, x0, T_(e, w, 1), T_(e, w, 2), P, D, H);
        for (size_t j = 0; j < (size_t)P * H; j++)
            a[j] = z1[j] > 0 ? z1[j] : 0;
        lin_fwd(z2, a, T_(e, w, 3), T_(e, w, 4), P, H, H);
        for (size_t j = 0; j < (size_t)P * H; j++)
            a[j] = z2[j] > 0 ? z2[j] : 0;
        lin_fwd(y, a, T_(e, w, 5), T_(e, w, 6), P, H, D);
        free(a);
    } else {
        double *p = e->act;
        const double *in = x0;
        for (int l = 0; l < e->NL; l++) {
            size_t K = lstm_in(e, l);
            double *x = p; /* layers after the first: their input is already there */
            if (x != in) memcpy(x, in, sizeof(double) * (size_t)P * K);
            p += (size_t)P * K;
            for (int dir = 0; dir < 2; dir++) {
                int ti = 1 + (l * 2 + dir) * 4;
                double *G = p, *c = G + (size_t)P * 4 * H, *h = c + (size_t)P * H;
                lstm_dir_fwd(e, T_(e, w, ti), T_(e, w, ti + 1), T_(e, w, ti + 2), T_(e, w, ti + 3),
                             x, (int)K, dir, G, c, h);
                p = h + (size_t)P * H;
            }
            /* the layer's output (P, 2H): forward h, then reverse h */
            double *hf = x + (size_t)P * K + (size_t)P * 4 * H + (size_t)P * H;
            double *hr = hf + (size_t)P * H + (size_t)P * 4 * H + (size_t)P * H;
            double *yl = l + 1 < e->NL ? p : e->act + e->n_act - 2 * (size_t)P * 2 * H;
            for (int t = 0; t < P; t++) {
                memcpy(yl + (size_t)t * 2 * H, hf + (size_t)t * H, sizeof(double) * H);
                memcpy(yl + (size_t)t * 2 * H + H, hr + (size_t)t * H, sizeof(double) * H);
            }
            in = yl; /* the next layer copies it into its x (at p) */
        }
        double *ylast = e->act + e->n_act - 2 * (size_t)P * 2 * H, *z1 = ylast + (size_t)P * 2 * H;
        int th = 1 + e->NL * 8;
        double *a = xmalloc(sizeof(double) * (size_t)P * 2 * H);
        lin_fwd(z1, ylast, T_(e, w, th), T_(e, w, th + 1), P, 2 * H, 2 * H);
        for (size_t j = 0; j < (size_t)P * 2 * H; j++)
            a[j] = z1[j] > 0 ? z1[j] : 0;
        lin_fwd(y, a, T_(e, w, th + 2), T_(e, w, th + 3), P, 2 * H, D);
        free(a);
    }
    for (size_t j = 0; j < PD; j++)
        e->out[j] = (float)y[j];
    free(x0);
    free(y);
}

// --- backward

static void lstm_dir_bwd(const PromptEnc *e, const float *Wih, const float *Whh, float *gWih,
                         float *gWhh, float *gbih, float *gbhh, const double *x, int in, int rev,
                         const double *G, const double *c, const double *h, const double *dy,
                         int dy_off, double *dx) {
    int P = e->P, H = e->H;
    double *dh = xcalloc((size_t)H, sizeof(double)), *dc = xcalloc((size_t)H, sizeof(double));
    double *da = xmalloc(sizeof(double) * 4 * (size_t)H);
    for (int s = P - 1; s >= 0; s--) {
        int t = rev ? P - 1 - s : s, tp = rev ? t + 1 : t - 1;
        const double *g = G + (size_t)t * 4 * H;
        const double *hp = s ? h + (size_t)tp * H : NULL, *cp = s ? c + (size_t)tp * H : NULL;
        for (int k = 0; k < H; k++) {
            double dhk = dh[k] + dy[(size_t)t * 2 * H + dy_off + k];
            double tc = tanh(c[(size_t)t * H + k]);
            double i = g[k], f = g[H + k], gg = g[2 * H + k], o = g[3 * H + k];
            double dck = dc[k] + dhk * o * (1.0 - tc * tc);
            da[k] = dck * gg * i * (1.0 - i);
            da[H + k] = cp ? dck * cp[k] * f * (1.0 - f) : 0.0;
            da[2 * H + k] = dck * i * (1.0 - gg * gg);
            da[3 * H + k] = dhk * tc * o * (1.0 - o);
            dc[k] = dck * f;
        }
        for (int k = 0; k < H; k++)
            dh[k] = 0;
        for (int r = 0; r < 4 * H; r++) {
            double d = da[r];
            gbih[r] += (float)d;
            gbhh[r] += (float)d;
            float *gi = gWih + (size_t)r * in;
            const float *wi = Wih + (size_t)r * in;
            for (int k = 0; k < in; k++) {
                gi[k] += (float)(d * x[(size_t)t * in + k]);
                dx[(size_t)t * in + k] += d * (double)wi[k];
            }
            if (!hp) continue;
            float *gh = gWhh + (size_t)r * H;
            const float *wh = Whh + (size_t)r * H;
            for (int k = 0; k < H; k++) {
                gh[k] += (float)(d * hp[k]);
                dh[k] += d * (double)wh[k];
            }
        }
    }
    free(dh);
    free(dc);
    free(da);
}

void prompt_enc_bwd(PromptEnc *e, const float *dout, float *grads) {
    int P = e->P, D = e->D, H = e->H;
    const float *w = e->w;
    size_t PD = (size_t)P * D;
    if (e->type == PROMPT_ENC_NONE) {
        for (size_t j = 0; j < PD; j++)
            grads[j] += dout[j];
        return;
    }
    double *dy = xmalloc(sizeof(double) * PD), *x0 = xmalloc(sizeof(double) * PD),
           *dx0 = xcalloc(PD, sizeof(double));
    for (size_t j = 0; j < PD; j++) {
        dy[j] = (double)dout[j];
        x0[j] = (double)w[j];
    }
#define GT(i) (grads + e->t[i].off)
    if (e->type == PROMPT_ENC_MLP) {
        size_t PH = (size_t)P * H;
        const double *z1 = e->act, *z2 = e->act + PH;
        double *a = xmalloc(sizeof(double) * PH), *da = xcalloc(PH, sizeof(double)),
               *db = xcalloc(PH, sizeof(double));
        for (size_t j = 0; j < PH; j++)
            a[j] = z2[j] > 0 ? z2[j] : 0;
        lin_bwd(da, GT(5), GT(6), dy, a, T_(e, w, 5), P, H, D);
        for (size_t j = 0; j < PH; j++) {
            da[j] = z2[j] > 0 ? da[j] : 0;
            a[j] = z1[j] > 0 ? z1[j] : 0;
        }
        lin_bwd(db, GT(3), GT(4), da, a, T_(e, w, 3), P, H, H);
        for (size_t j = 0; j < PH; j++)
            db[j] = z1[j] > 0 ? db[j] : 0;
        lin_bwd(dx0, GT(1), GT(2), db, x0, T_(e, w, 1), P, D, H);
        free(a);
        free(da);
        free(db);
    } else {
        size_t P2H = (size_t)P * 2 * H;
        double *ylast = e->act + e->n_act - 2 * P2H, *z1 = ylast + P2H;
        int th = 1 + e->NL * 8;
        double *a = xmalloc(sizeof(double) * P2H), *dz = xcalloc(P2H, sizeof(double)),
               *dyl = xcalloc(P2H, sizeof(double));
        for (size_t j = 0; j < P2H; j++)
            a[j] = z1[j] > 0 ? z1[j] : 0;
        lin_bwd(dz, GT(th + 2), GT(th + 3), dy, a, T_(e, w, th + 2), P, 2 * H, D);
        for (size_t j = 0; j < P2H; j++)
            dz[j] = z1[j] > 0 ? dz[j] : 0;
        lin_bwd(dyl, GT(th), GT(th + 1), dz, ylast, T_(e, w, th), P, 2 * H, 2 * H);
        /* the layers' activations, from the last one back */
        double *starts[PROMPT_ENC_MAX_LAYERS];
        double *p = e->act;
        for (int l = 0; l < e->NL; l++) {
            starts[l] = p;
            p += lstm_layer_act(e, l);
        }
        for (int l = e->NL - 1; l >= 0; l--) {
            size_t K = lstm_in(e, l);
            double *x = starts[l], *dx = l ? xcalloc((size_t)P * K, sizeof(double)) : dx0;
            double *q = x + (size_t)P * K;
            for (int dir = 0; dir < 2; dir++) {
                int ti = 1 + (l * 2 + dir) * 4;
                double *G = q, *c = G + (size_t)P * 4 * H, *h = c + (size_t)P * H;
                lstm_dir_bwd(e, T_(e, w, ti), T_(e, w, ti + 1), GT(ti), GT(ti + 1), GT(ti + 2),
                             GT(ti + 3), x, (int)K, dir, G, c, h, dyl, dir * H, dx);
                q = h + (size_t)P * H;
            }
            if (l) { /* dx is the gradient of the previous layer's output */
                memcpy(dyl, dx, sizeof(double) * P2H);
                free(dx);
            }
        }
        free(a);
        free(dz);
        free(dyl);
    }
    for (size_t j = 0; j < PD; j++)
        grads[j] += (float)dx0[j];
#undef GT
    free(dy);
    free(x0);
    free(dx0);
}
