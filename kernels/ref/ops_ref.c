#include "ops_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "attn_span.h"
#include "ops_hash.h"

// --- memory: host malloc, 64-byte aligned

/* Buffers of 4 MiB and more are 2 MiB aligned and advised to use transparent huge pages:
 * decoding streams every weight once per token, and with 4 KiB pages the TLB misses cost
 * measurable bandwidth. */
#define HUGE_MIN   ((size_t)4 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)

void *host_alloc(Backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (n >= HUGE_MIN) {
        n = (n + HUGE_ALIGN - 1) & ~(HUGE_ALIGN - 1);
        if (posix_memalign(&p, HUGE_ALIGN, n)) return NULL;
        madvise(p, n, MADV_HUGEPAGE);
        return p;
    }
    if (posix_memalign(&p, 64, n ? n : 64)) return NULL;
    return p;
}

void host_release(Backend *be, void *p) {
    (void)be;
    free(p);
}

void host_memcpy(Backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

void host_zero(Backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

int host_sync(Backend *be) {
    return be->err.code;
}

// --- forward ops

void ref_matmul_fwd(float *out, const float *in, const float *w, const float *bias, int M, int K,
                    int N) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = bias ? (double)bias[n] : 0.0;
            const float *a = in + (size_t)m * K, *b = w + (size_t)n * K;
            for (int k = 0; k < K; k++)
                s += (double)a[k] * (double)b[k];
            out[(size_t)m * N + n] = (float)s;
        }
}

void ref_rmsnorm_fwd(float *out, const float *in, const float *w, float eps, int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C;
        float *y = out + (size_t)r * C;
        double ss = 0;
        for (int c = 0; c < C; c++)
            ss += (double)x[c] * (double)x[c];
        float inv = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int c = 0; c < C; c++)
            y[c] = x[c] * inv * w[c];
    }
}

void ref_layernorm_fwd(float *out, const float *in, const float *w, const float *b, float eps,
                       int R, int C) {
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C;
        float *y = out + (size_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++)
            mean += (double)x[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += ((double)x[c] - mean) * ((double)x[c] - mean);
        var /= C;
        double inv = 1.0 / sqrt(var + (double)eps);
        for (int c = 0; c < C; c++)
            y[c] = (float)(((double)x[c] - mean) * inv) * w[c] + b[c];
    }
}

void ref_rope_fwd(float *x, const int32_t *pos, const float *inv_freq, int T, int NH, int HS,
                  int rot_dim) {
    int half = rot_dim / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            float *v = x + ((size_t)t * NH + h) * HS;
            for (int i = 0; i < half; i++) {
                float ang = (float)pos[t] * inv_freq[i];
                float c = cosf(ang), s = sinf(ang);
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

/* bf16 as wtype rounds it (to nearest even), held in a double */
static double ref_r16(double x) {
    return (double)wtype_bf16_to_f32(wtype_f32_to_bf16((float)x));
}

/* ref_attention_fwd, and with bf16 ref_attention_fwd_bf16: P normalised, then rounded to bf16,
 * before the product with v (an fp32 P: (float)p is what is rounded). */
static void attention_fwd(float *out, const float *q, const float *k, const float *v, int B, int Tq,
                          int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                          const int32_t *kv_lo, int bf16) {
    float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH;
    double *sc = malloc(sizeof(double) * (size_t)(Tk > 0 ? Tk : 1));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++)
            for (int h = 0; h < NH; h++) {
                const float *qv = q + (((size_t)b * Tq + t) * NH + h) * HS;
                float *o = out + (((size_t)b * Tq + t) * NH + h) * HS;
                int p = Tk - Tq + t; /* this query's position */
                int lo = tuna_attn_lo(kv_lo, (size_t)b * Tq + t, p, window);
                double mx = -INFINITY;
                for (int j = lo; j <= p; j++) {
                    const float *kv = k + b * kv_stride + ((size_t)j * KVH + h / grp) * HS;
                    double s = 0;
                    for (int i = 0; i < HS; i++)
                        s += (double)qv[i] * (double)kv[i];
                    sc[j] = s * (double)scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                double sum = 0;
                for (int j = lo; j <= p; j++)
                    sum += (sc[j] = exp(sc[j] - mx));
                if (bf16) { /* normalise and round P; acc / 1 below is acc */
                    for (int j = lo; j <= p; j++)
                        sc[j] = ref_r16(sc[j] / sum);
                    sum = 1;
                }
                for (int i = 0; i < HS; i++) {
                    double acc = 0;
                    for (int j = lo; j <= p; j++)
                        acc += sc[j] *
                               (double)v[b * kv_stride + ((size_t)j * KVH + h / grp) * HS + i];
                    o[i] = (float)(acc / sum);
                }
            }
    free(sc);
}

void ref_attention_fwd(float *out, const float *q, const float *k, const float *v, int B, int Tq,
                       int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                       const int32_t *kv_lo) {
    attention_fwd(out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, 0);
}

void ref_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void ref_gelu_fwd(float *out, const float *in, size_t n, int approx) {
    for (size_t i = 0; i < n; i++) {
        double x = in[i];
        if (approx)
            out[i] = (float)(0.5 * x *
                             (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))));
        else
            out[i] = (float)(0.5 * x * (1.0 + erf(x * 0.7071067811865476)));
    }
}

void ref_add_fwd(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void ref_embed_fwd(float *out, const int32_t *ids, const float *table, int T, int C) {
    for (int t = 0; t < T; t++)
        memcpy(out + (size_t)t * C, table + (size_t)ids[t] * C, sizeof(float) * (size_t)C);
}

void ref_embed_w_fwd(float *out, const int32_t *ids, const Weight *table, int T) {
    for (int t = 0; t < T; t++)
        weight_dequantize_rows(table, ids[t], 1, out + (size_t)t * table->cols);
}

// --- backward ops (every gradient +=; NULL gradients are skipped)

void ref_matmul_bwd(float *din, float *dw, float *dbias, const float *dout, const float *in,
                    const float *w, int M, int K, int N) {
    if (din)
        for (int m = 0; m < M; m++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int n = 0; n < N; n++)
                    s += (double)dout[(size_t)m * N + n] * (double)w[(size_t)n * K + k];
                din[(size_t)m * K + k] += (float)s;
            }
    if (dw)
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) {
                double s = 0;
                for (int m = 0; m < M; m++)
                    s += (double)dout[(size_t)m * N + n] * (double)in[(size_t)m * K + k];
                dw[(size_t)n * K + k] += (float)s;
            }
    if (dbias)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int m = 0; m < M; m++)
                s += (double)dout[(size_t)m * N + n];
            dbias[n] += (float)s;
        }
}

/* y = x * inv * w with inv = 1/sqrt(mean(x²) + eps):
 * dx = inv * (dy*w) - x * inv³ / C * sum(dy*w*x);  dw += dy * x * inv. */
void ref_rmsnorm_bwd(float *din, float *dw, const float *dout, const float *in, const float *w,
                     float eps, int R, int C) {
    double *dwacc = dw ? calloc((size_t)C, sizeof(double)) : NULL;
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C, *dy = dout + (size_t)r * C;
        double ss = 0, dot = 0;
        for (int c = 0; c < C; c++) {
            ss += (double)x[c] * (double)x[c];
            dot += (double)dy[c] * (double)w[c] * (double)x[c];
        }
        double inv = 1.0 / sqrt(ss / C + (double)eps);
        if (din) {
            float *dx = din + (size_t)r * C;
            double k = inv * inv * inv * dot / C;
            for (int c = 0; c < C; c++)
                dx[c] += (float)(inv * (double)dy[c] * (double)w[c] - k * (double)x[c]);
        }
        if (dwacc)
            for (int c = 0; c < C; c++)
                dwacc[c] += (double)dy[c] * (double)x[c] * inv;
    }
    if (dwacc) {
        for (int c = 0; c < C; c++)
            dw[c] += (float)dwacc[c];
        free(dwacc);
    }
}

/* xhat = (x - mean) * rstd, y = xhat * w + b, g = dy * w:
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat));  dw += dy * xhat;  db += dy. */
void ref_layernorm_bwd(float *din, float *dw, float *db, const float *dout, const float *in,
                       const float *w, float eps, int R, int C) {
    double *dwacc = dw ? calloc((size_t)C, sizeof(double)) : NULL;
    double *dbacc = db ? calloc((size_t)C, sizeof(double)) : NULL;
    for (int r = 0; r < R; r++) {
        const float *x = in + (size_t)r * C, *dy = dout + (size_t)r * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++)
            mean += (double)x[c];
        mean /= C;
        for (int c = 0; c < C; c++)
            var += ((double)x[c] - mean) * ((double)x[c] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + (double)eps);
        if (din) {
            double mg = 0, mgx = 0;
            for (int c = 0; c < C; c++) {
                double g = (double)dy[c] * (double)w[c];
                mg += g;
                mgx += g * ((double)x[c] - mean) * rstd;
            }
            mg /= C;
            mgx /= C;
            float *dx = din + (size_t)r * C;
            for (int c = 0; c < C; c++) {
                double xh = ((double)x[c] - mean) * rstd;
                dx[c] += (float)(rstd * ((double)dy[c] * (double)w[c] - mg - xh * mgx));
            }
        }
        for (int c = 0; c < C; c++) {
            if (dwacc) dwacc[c] += (double)dy[c] * ((double)x[c] - mean) * rstd;
            if (dbacc) dbacc[c] += (double)dy[c];
        }
    }
    for (int c = 0; c < C; c++) {
        if (dwacc) dw[c] += (float)dwacc[c];
        if (dbacc) db[c] += (float)dbacc[c];
    }
    free(dwacc);
    free(dbacc);
}

/* The transpose of the rotation in ref_rope_fwd (same float angles). */
void ref_rope_bwd(float *dx, const int32_t *pos, const float *inv_freq, int T, int NH, int HS,
                  int rot_dim) {
    int half = rot_dim / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++) {
            float *g = dx + ((size_t)t * NH + h) * HS;
            for (int i = 0; i < half; i++) {
                float ang = (float)pos[t] * inv_freq[i];
                float c = cosf(ang), s = sinf(ang);
                float a = g[i], b = g[i + half];
                g[i] = a * c + b * s;
                g[i + half] = b * c - a * s;
            }
        }
}

/* Per (b, t, h): p = softmax(scale * q·k), o = p·v. With dp_j = do·v_j and D = sum_j p_j dp_j,
 * ds_j = p_j (dp_j - D); dq += scale * sum_j ds_j k_j; dk_j += scale * ds_j q; dv_j += p_j do.
 * dk and dv are summed over queries in double buffers and added once at the end. */
static void attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, int B, int Tq, int Tk, size_t kv_stride,
                          int NH, int KVH, int HS, int window, const int32_t *kv_lo, int bf16) {
    double scale = (double)(1.0f / sqrtf((float)HS));
    int grp = NH / KVH;
    size_t nkv = (size_t)B * Tk * KVH * HS;
    size_t tk = (size_t)(Tk > 0 ? Tk : 1);
    double *pr = malloc(sizeof(double) * tk), *dp = malloc(sizeof(double) * tk);
    double *acc = malloc(sizeof(double) * (size_t)(HS > 0 ? HS : 1));
    double *dka = dk ? calloc(nkv ? nkv : 1, sizeof(double)) : NULL;
    double *dva = dv ? calloc(nkv ? nkv : 1, sizeof(double)) : NULL;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tq; t++)
            for (int h = 0; h < NH; h++) {
                size_t qo = (((size_t)b * Tq + t) * NH + h) * HS;
                const float *qv = q + qo, *dov = dout + qo;
                int p = Tk - Tq + t;
                int lo = tuna_attn_lo(kv_lo, (size_t)b * Tq + t, p, window);
                double mx = -INFINITY, sum = 0, D = 0;
                for (int j = lo; j <= p; j++) {
                    size_t ko = b * kv_stride + ((size_t)j * KVH + h / grp) * HS;
                    double s = 0, d = 0;
                    for (int i = 0; i < HS; i++) {
                        s += (double)qv[i] * (double)k[ko + i];
                        d += (double)dov[i] * (double)v[ko + i];
                    }
                    pr[j] = s * scale;
                    dp[j] = d;
                    if (pr[j] > mx) mx = pr[j];
                }
                for (int j = lo; j <= p; j++)
                    sum += (pr[j] = exp(pr[j] - mx));
                for (int j = lo; j <= p; j++) {
                    pr[j] /= sum;
                    D += pr[j] * dp[j];
                }
                for (int i = 0; i < HS; i++)
                    acc[i] = 0;
                for (int j = lo; j <= p; j++) {
                    size_t ko = b * kv_stride + ((size_t)j * KVH + h / grp) * HS;
                    size_t ao = (((size_t)b * Tk + j) * KVH + h / grp) * HS;
                    double ds = pr[j] * (dp[j] - D) * scale, pj = pr[j];
                    if (bf16) /* the scaled dS and P rounded */
                        ds = ref_r16(scale * pr[j] * (dp[j] - D)), pj = ref_r16(pr[j]);
                    for (int i = 0; i < HS; i++) {
                        acc[i] += ds * (double)k[ko + i];
                        if (dka) dka[ao + i] += ds * (double)qv[i];
                        if (dva) dva[ao + i] += pj * (double)dov[i];
                    }
                }
                if (dq)
                    for (int i = 0; i < HS; i++)
                        dq[qo + i] += (float)acc[i];
            }
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < (size_t)Tk * KVH * HS; i++) {
            size_t ao = (size_t)b * Tk * KVH * HS + i;
            if (dka) dk[b * kv_stride + i] += (float)dka[ao];
            if (dva) dv[b * kv_stride + i] += (float)dva[ao];
        }
    free(pr);
    free(dp);
    free(acc);
    free(dka);
    free(dva);
}

void ref_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, int B, int Tq, int Tk, size_t kv_stride,
                       int NH, int KVH, int HS, int window, const int32_t *kv_lo) {
    attention_bwd(dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, 0);
}

/* Attention under Backend.mm_bf16, torch's bf16 SDPA on the CPU: the four (forward) and six
 * (backward, with the recomputed scores) matrix products take bf16 operands and sum exactly
 * (here in double); the softmax and everything between the products is not rounded to bf16.
 * q, k, v and dout come in already rounded to bf16 (r_attention*: ref_bf16_copy). Per (b, t, h):
 *   s_j = scale * q·k_j, p = softmax(s) (an fp32 P: (float)p is what is rounded),
 *   o = sum_j bf16(P_j) v_j;
 *   dp_j = do·v_j, D = sum_j p_j dp_j, ds_j = bf16(scale * p_j (dp_j - D)) (the scaled fp32
 *   value is what is rounded), dq += sum_j ds_j k_j, dk_j += ds_j q, dv_j += bf16(P_j) do. */
void ref_attention_fwd_bf16(float *out, const float *q, const float *k, const float *v, int B,
                            int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS, int window,
                            const int32_t *kv_lo) {
    attention_fwd(out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, 1);
}

void ref_attention_bwd_bf16(float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, int B, int Tq, int Tk, size_t kv_stride,
                            int NH, int KVH, int HS, int window, const int32_t *kv_lo) {
    attention_bwd(dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo, 1);
}

/* out = silu(g) * u, silu(g) = g * sig(g): dg += dout * u * sig * (1 + g * (1 - sig));
 * du += dout * silu(g). */
void ref_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                    size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], sg = 1.0 / (1.0 + exp(-g)), d = dout[i];
        if (dgate) dgate[i] += (float)(d * (double)up[i] * sg * (1.0 + g * (1.0 - sg)));
        if (dup) dup[i] += (float)(d * g * sg);
    }
}

void ref_gelu_bwd(float *din, const float *dout, const float *in, size_t n, int approx) {
    if (!din) return;
    for (size_t i = 0; i < n; i++) {
        double x = in[i], d;
        if (approx) {
            double kk = 0.7978845608028654, u = kk * (x + 0.044715 * x * x * x), th = tanh(u);
            d = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * kk * (1.0 + 3.0 * 0.044715 * x * x);
        } else {
            d = 0.5 * (1.0 + erf(x * 0.7071067811865476)) +
                x * exp(-0.5 * x * x) * 0.3989422804014327;
        }
        din[i] += (float)((double)dout[i] * d);
    }
}

void ref_embed_bwd(float *dtable, const float *dout, const int32_t *ids, int T, int C) {
    if (!dtable) return;
    for (int t = 0; t < T; t++) {
        float *row = dtable + (size_t)ids[t] * C;
        const float *g = dout + (size_t)t * C;
        for (int c = 0; c < C; c++)
            row[c] += g[c];
    }
}

// --- loss and optimizer

/* EAFT's entropy: of the softmax over the row's 20 largest logits (all when V < 20), picked by
 * repeated selection */
static double ref_top20_entropy(const float *x, int V) {
    int k = V < 20 ? V : 20;
    double top[20];
    unsigned char *used = calloc((size_t)V, 1);
    for (int j = 0; j < k; j++) {
        int bi = -1;
        for (int i = 0; i < V; i++)
            if (!used[i] && (bi < 0 || x[i] > x[bi])) bi = i;
        used[bi] = 1;
        top[j] = x[bi];
    }
    free(used);
    double s = 0, h = 0;
    for (int j = 0; j < k; j++)
        s += exp(top[j] - top[0]);
    double lse = top[0] + log(s);
    for (int j = 0; j < k; j++)
        h -= exp(top[j] - lse) * (top[j] - lse);
    return h;
}

int ref_xent_fwd_bwd(float *dlogits, float *losses, const float *logits, const int32_t *targets,
                     int R, int V, float scale, float smooth, XentWeight wt) {
    int bad = 0;
    for (int r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        float *dx = dlogits ? dlogits + (size_t)r * V : NULL;
        int32_t tg = targets[r];
        if (tg < 0 || tg >= V) {
            bad += tg != -100;
            losses[r] = 0;
            if (dx) memset(dx, 0, sizeof(float) * (size_t)V);
            continue;
        }
        double mx = -INFINITY, sum = 0, xt = x[tg];
        for (int i = 0; i < V; i++)
            if ((double)x[i] > mx) mx = x[i];
        for (int i = 0; i < V; i++)
            sum += exp((double)x[i] - mx);
        double lse = mx + log(sum);
        if (smooth > 0) { /* (1 - e) nll + e mean(-log p), as Hugging Face's LabelSmoother */
            double sx = 0, e = smooth;
            for (int i = 0; i < V; i++)
                sx += (double)x[i];
            losses[r] = (float)((1 - e) * (lse - xt) + e * (lse - sx / V));
            if (dx) {
                for (int i = 0; i < V; i++)
                    dx[i] = (float)((exp((double)x[i] - lse) - e / V) * (double)scale);
                dx[tg] = (float)((double)dx[tg] - (1 - e) * (double)scale);
            }
            continue;
        }
        /* DFT: the row times its target's probability; EAFT: times (H / 3)^alpha; a constant
         * for the gradient */
        double w = wt.kind == XENT_W_DFT    ? exp(xt - lse)
                   : wt.kind == XENT_W_EAFT ? pow(ref_top20_entropy(x, V) / 3.0, (double)wt.alpha)
                                            : 1.0;
        double ws = w * (double)scale;
        losses[r] = (float)(w * (lse - xt));
        if (dx) {
            for (int i = 0; i < V; i++)
                dx[i] = (float)(exp((double)x[i] - lse) * ws);
            dx[tg] = (float)((double)dx[tg] - ws); /* dx[tg] was just written */
        }
    }
    return bad;
}

void ref_logit_stats(float *stats, const float *logits, const int32_t *targets, int R, int V) {
    for (int r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        float *st = stats + (size_t)r * 3;
        int32_t tg = targets[r];
        st[0] = st[1] = st[2] = 0;
        if (tg < 0 || tg >= V) continue;
        double mx = -INFINITY, before = -INFINITY, sz = 0, se = 0, sez = 0;
        for (int i = 0; i < V; i++) {
            if ((double)x[i] > mx) mx = x[i];
            if (i < tg && (double)x[i] > before) before = x[i];
        }
        for (int i = 0; i < V; i++) {
            double e = exp((double)x[i] - mx);
            sz += (double)x[i];
            se += e;
            sez += e * ((double)x[i] - mx); /* the entropy from z - max: no cancellation */
        }
        st[0] = (float)(sz / V);
        st[1] = (float)(log(se) - sez / se);
        st[2] = (double)x[tg] >= mx && (double)x[tg] > before ? 1.0f : 0.0f;
    }
}

double ref_sumsq(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * (double)x[i];
    return s;
}

void ref_scale(float *x, size_t n, float s) {
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

void ref_col_scale(float *out, const float *in, const float *a, const float *b, int R, int N) {
    for (int t = 0; t < R; t++)
        for (int o = 0; o < N; o++) {
            size_t i = (size_t)t * N + o;
            out[i] = a[o] * in[i] + (b ? b[o] : 0.0f);
        }
}

void ref_col_dot(double *acc, const float *x, const float *y, int R, int N) {
    for (int t = 0; t < R; t++)
        for (int o = 0; o < N; o++) {
            size_t i = (size_t)t * N + o;
            acc[o] += (double)x[i] * (double)y[i];
        }
}

/* p <= 0 copies, p >= 1 zeroes (instead of 0 * inf). */
void ref_dropout(float *out, const float *in, size_t n, float p, uint64_t seed) {
    uint64_t key = tuna_dropout_key(seed);
    float keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    for (size_t i = 0; i < n; i++) {
        if (p >= 1.0f)
            out[i] = 0;
        else
            out[i] = tuna_dropout_u(key, i) >= p ? in[i] * keep : 0.0f;
    }
}

void ref_noise_add(float *x, size_t n, float mag, uint64_t seed) {
    uint64_t key = tuna_dropout_key(seed);
    for (size_t i = 0; i < n; i++)
        x[i] += tuna_noise(key, i, mag);
}

void ref_adamw(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr,
               float b1, float b2, float eps, float wd, float bc1, float bc2) {
    double dlr = lr, db1 = b1, db2 = b2;
    for (size_t i = 0; i < n; i++) {
        double pi = p[i], gi = g[i] * gscale; /* the float product, as if g had been scaled */
        double mi = db1 * (double)m[i] + (1.0 - db1) * gi;
        double vi = db2 * (double)v[i] + (1.0 - db2) * gi * gi;
        pi -= dlr * (double)wd * pi;
        pi -= dlr * (mi / (double)bc1) / (sqrt(vi / (double)bc2) + (double)eps);
        p[i] = (float)pi;
        m[i] = (float)mi;
        v[i] = (float)vi;
    }
}

// --- the backend table

/* Backend.mm_bf16: the operands rounded to bf16 (to nearest even) into fp32 scratch copies, for
 * the plain loops below; NULL (and the error latched) when there is no memory. A NULL src gives
 * a NULL copy. Release with free. */
static float *ref_bf16_copy(Backend *be, const float *src, size_t n) {
    if (!src) return NULL;
    float *d = malloc((n ? n : 1) * sizeof(float));
    if (!d) {
        if (!be->err.code)
            tuna_errf(&be->err, TUNA_ENOMEM, "ref: out of memory for a bf16 copy of %zu floats", n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        d[i] = wtype_bf16_to_f32(wtype_f32_to_bf16(src[i]));
    return d;
}

/* floats spanned by k or v (B rows kv_stride apart, each Tk x KVH x HS) */
static size_t kv_extent(int B, int Tk, size_t kv_stride, int KVH, int HS) {
    return B > 0 ? (size_t)(B - 1) * kv_stride + (size_t)Tk * KVH * HS : 0;
}

static void r_matmul(Backend *be, float *out, const float *in, const float *w, const float *bias,
                     int M, int K, int N) {
    if (!backend_mm_bf16(be, K, N)) {
        ref_matmul_fwd(out, in, w, bias, M, K, N);
        return;
    }
    float *a = ref_bf16_copy(be, in, (size_t)M * K), *b = ref_bf16_copy(be, w, (size_t)N * K);
    if (a && b) ref_matmul_fwd(out, a, b, bias, M, K, N);
    free(a);
    free(b);
}

/* the slot's definition: the product into scratch, then added */
static void r_matmul_acc(Backend *be, float *out, const float *in, const float *w, int M, int K,
                         int N) {
    size_t n = (size_t)M * N;
    float *t = malloc(sizeof(float) * (n ? n : 1));
    if (!t) {
        if (!be->err.code) tuna_errf(&be->err, TUNA_ENOMEM, "ref: out of memory (matmul_acc)");
        return;
    }
    r_matmul(be, t, in, w, NULL, M, K, N);
    for (size_t i = 0; i < n; i++)
        out[i] += t[i];
    free(t);
}
static void r_rmsnorm(Backend *be, float *out, const float *in, const float *w, float eps, int R,
                      int C) {
    (void)be;
    ref_rmsnorm_fwd(out, in, w, eps, R, C);
}
static void r_layernorm(Backend *be, float *out, const float *in, const float *w, const float *b,
                        float eps, int R, int C) {
    (void)be;
    ref_layernorm_fwd(out, in, w, b, eps, R, C);
}
static void r_rope(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T, int NH,
                   int HS, int rot_dim) {
    (void)be;
    ref_rope_fwd(x, pos, inv_freq, T, NH, HS, rot_dim);
}
static void r_attention(Backend *be, float *out, const float *q, const float *k, const float *v,
                        int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                        int window, const int32_t *kv_lo) {
    if (!be->mm_bf16) {
        ref_attention_fwd(out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo);
        return;
    }
    size_t nq = (size_t)B * Tq * NH * HS, nkv = kv_extent(B, Tk, kv_stride, KVH, HS);
    float *q16 = ref_bf16_copy(be, q, nq), *k16 = ref_bf16_copy(be, k, nkv),
          *v16 = ref_bf16_copy(be, v, nkv);
    if (q16 && k16 && v16)
        ref_attention_fwd_bf16(out, q16, k16, v16, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                               kv_lo);
    free(q16);
    free(k16);
    free(v16);
}
static void r_kv_store(Backend *be, WType t, void *dst, const float *src, size_t n) {
    if (n) wtype_info[t].quant_row(src, dst, (int64_t)n, NULL);
    backend_kv_range(be, t, src, n);
}
static void r_attention_kv(Backend *be, WType t, float *out, const float *q, const void *k,
                           const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH,
                           int HS, int window, const int32_t *kv_lo) {
    backend_attention_kv_widened(be, t, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                                 kv_lo, NULL);
}
static void r_swiglu(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    (void)be;
    ref_swiglu_fwd(out, gate, up, n);
}
static void r_gelu(Backend *be, float *out, const float *in, size_t n, int approx) {
    (void)be;
    ref_gelu_fwd(out, in, n, approx);
}
static void r_add(Backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    ref_add_fwd(out, a, b, n);
}
static void r_embed(Backend *be, float *out, const int32_t *ids, const float *table, int T, int C) {
    (void)be;
    ref_embed_fwd(out, ids, table, T, C);
}

static void r_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                         const float *in, const float *w, int M, int K, int N) {
    if (!backend_mm_bf16(be, K, N) || (!din && !dw)) {
        ref_matmul_bwd(din, dw, dbias, dout, in, w, M, K, N);
        return;
    }
    /* dbias sums dout in fp32 (it is no matrix product) */
    float *d = ref_bf16_copy(be, dout, (size_t)M * N);
    float *x = dw ? ref_bf16_copy(be, in, (size_t)M * K) : NULL;
    float *v = din ? ref_bf16_copy(be, w, (size_t)N * K) : NULL;
    if (d && (!dw || x) && (!din || v)) {
        ref_matmul_bwd(din, dw, NULL, d, x, v, M, K, N);
        if (dbias) ref_matmul_bwd(NULL, NULL, dbias, dout, NULL, NULL, M, K, N);
    }
    free(d);
    free(x);
    free(v);
}
static void r_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                          const float *w, float eps, int R, int C) {
    (void)be;
    ref_rmsnorm_bwd(din, dw, dout, in, w, eps, R, C);
}
static void r_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                            const float *in, const float *w, float eps, int R, int C) {
    (void)be;
    ref_layernorm_bwd(din, dw, db, dout, in, w, eps, R, C);
}
static void r_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T,
                       int NH, int HS, int rot_dim) {
    (void)be;
    ref_rope_bwd(dx, pos, inv_freq, T, NH, HS, rot_dim);
}
static void r_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                            size_t kv_stride, int NH, int KVH, int HS, int window,
                            const int32_t *kv_lo) {
    if (!be->mm_bf16) {
        ref_attention_bwd(dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                          kv_lo);
        return;
    }
    size_t nq = (size_t)B * Tq * NH * HS, nkv = kv_extent(B, Tk, kv_stride, KVH, HS);
    float *q16 = ref_bf16_copy(be, q, nq), *k16 = ref_bf16_copy(be, k, nkv),
          *v16 = ref_bf16_copy(be, v, nkv), *d16 = ref_bf16_copy(be, dout, nq);
    if (q16 && k16 && v16 && d16)
        ref_attention_bwd_bf16(dq, dk, dv, d16, q16, k16, v16, B, Tq, Tk, kv_stride, NH, KVH, HS,
                               window, kv_lo);
    free(q16);
    free(k16);
    free(v16);
    free(d16);
}
static void r_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n, int acc) {
    (void)be;
    if (!acc && dgate) memset(dgate, 0, sizeof(float) * n);
    if (!acc && dup) memset(dup, 0, sizeof(float) * n);
    ref_swiglu_bwd(dgate, dup, dout, gate, up, n);
}
static void r_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                       int approx) {
    (void)be;
    ref_gelu_bwd(din, dout, in, n, approx);
}
static void r_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                        int C) {
    (void)be;
    ref_embed_bwd(dtable, dout, ids, T, C);
}
static void r_xent(Backend *be, float *dlogits, float *losses, const float *logits,
                   const int32_t *targets, int R, int V, float scale, float smooth, XentWeight wt) {
    int bad = ref_xent_fwd_bwd(dlogits, losses, logits, targets, R, V, scale, smooth, wt);
    if (bad && !be->err.code)
        tuna_errf(&be->err, TUNA_EINVAL, "xent: %d target(s) outside [0, %d) and not -100", bad, V);
}
static void r_logit_stats(Backend *be, float *stats, const float *logits, const int32_t *targets,
                          int R, int V) {
    (void)be;
    ref_logit_stats(stats, logits, targets, R, V);
}
static double r_sumsq(Backend *be, const float *x, size_t n) {
    (void)be;
    return ref_sumsq(x, n);
}
static void r_scale(Backend *be, float *x, size_t n, float s) {
    (void)be;
    ref_scale(x, n, s);
}
static void r_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed) {
    (void)be;
    ref_dropout(out, in, n, p, seed);
}
static void r_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed) {
    (void)be;
    ref_noise_add(x, n, mag, seed);
}
static void r_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b,
                        int R, int N) {
    (void)be;
    ref_col_scale(out, in, a, b, R, N);
}
static void r_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N) {
    (void)be;
    ref_col_dot(acc, x, y, R, N);
}
static void r_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v,
                    size_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                    float bc2) {
    (void)be;
    ref_adamw(p, g, gscale, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
}

/* The typed weights: W dequantized to fp32 (then rounded to bf16 under mm_bf16), then the
 * plain loops above (the oracle). */
static float *ref_dequant(Backend *be, const Weight *w) {
    float *f = malloc((size_t)w->rows * (size_t)w->cols * sizeof(float));
    if (!f) {
        if (!be->err.code)
            tuna_errf(&be->err, TUNA_ENOMEM, "ref: out of memory dequantizing a (%d, %d) %s",
                      w->rows, w->cols, wtype_info[w->type].name);
        return NULL;
    }
    weight_dequantize(w, f);
    if (be->mm_bf16)
        for (size_t i = 0; i < (size_t)w->rows * (size_t)w->cols; i++)
            f[i] = wtype_bf16_to_f32(wtype_f32_to_bf16(f[i]));
    return f;
}

static void r_matmul_w(Backend *be, float *out, const float *in, const Weight *w, const float *bias,
                       int M) {
    float *f = ref_dequant(be, w);
    float *a = be->mm_bf16 ? ref_bf16_copy(be, in, (size_t)M * (size_t)w->cols) : NULL;
    if (f && (a || !be->mm_bf16)) ref_matmul_fwd(out, a ? a : in, f, bias, M, w->cols, w->rows);
    free(f);
    free(a);
}

static void r_embed_w(Backend *be, float *out, const int32_t *ids, const Weight *table, int T) {
    (void)be;
    ref_embed_w_fwd(out, ids, table, T);
}

static void r_matmul_w_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                              int acc) {
    if (!acc) memset(din, 0, sizeof(float) * (size_t)M * (size_t)w->cols);
    float *f = ref_dequant(be, w);
    float *d = be->mm_bf16 ? ref_bf16_copy(be, dout, (size_t)M * (size_t)w->rows) : NULL;
    if (f && (d || !be->mm_bf16))
        ref_matmul_bwd(din, NULL, NULL, d ? d : dout, NULL, f, M, w->cols, w->rows);
    free(f);
    free(d);
}

static const BackendOps ref_ops = {
        .name = "ref",
        .host_memory = 1,
        .alloc = host_alloc,
        .release = host_release,
        .upload = host_memcpy,
        .download = host_memcpy,
        .copy = host_memcpy,
        .zero = host_zero,
        .sync = host_sync,
        .matmul_fwd = r_matmul,
        .matmul_acc = r_matmul_acc,
        .rmsnorm_fwd = r_rmsnorm,
        .layernorm_fwd = r_layernorm,
        .rope_fwd = r_rope,
        .attention_fwd = r_attention,
        .swiglu_fwd = r_swiglu,
        .gelu_fwd = r_gelu,
        .add_fwd = r_add,
        .embed_fwd = r_embed,
        .matmul_bwd = r_matmul_bwd,
        .matmul_w_fwd = r_matmul_w,
        .matmul_w_bwd_in = r_matmul_w_bwd_in,
        .embed_w_fwd = r_embed_w,
        .kv_store = r_kv_store,
        .attention_fwd_kv = r_attention_kv,
        .rmsnorm_bwd = r_rmsnorm_bwd,
        .layernorm_bwd = r_layernorm_bwd,
        .rope_bwd = r_rope_bwd,
        .attention_bwd = r_attention_bwd,
        .swiglu_bwd = r_swiglu_bwd,
        .gelu_bwd = r_gelu_bwd,
        .embed_bwd = r_embed_bwd,
        .xent_fwd_bwd = r_xent,
        .logit_stats = r_logit_stats,
        .sumsq = r_sumsq,
        .scale = r_scale,
        .col_scale = r_col_scale,
        .col_dot = r_col_dot,
        .dropout = r_dropout,
        .noise_add = r_noise_add,
        .adamw = r_adamw,
};

Backend *ref_backend_init(int n_threads, TunaErr *err) {
    (void)err;
    Backend *be = calloc(1, sizeof *be);
    if (!be) return NULL;
    be->ops = &ref_ops;
    be->n_threads = n_threads > 0 ? n_threads : 1;
    return be;
}
