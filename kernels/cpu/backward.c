/* backward.c: the CPU backend's backward, loss and optimizer ops (declared in cpu_internal.h,
 * tabled in cpu_backend.c). OpenBLAS sgemm with beta = 1 for the matmul gradients, OpenMP
 * over rows for the row-wise ops, partial sums over fixed blocks of rows for parameter
 * gradients that every row touches (norm weights), and a two-pass attention backward that
 * needs no atomics: pass 1 over queries (dq, row statistics), pass 2 over keys (dk, dv).
 * Every sum runs in an order that does not depend on the thread count: a run gives the same
 * bits on 1 thread or 8, and when its thread count changes between steps.
 * Gradients accumulate (+=) and NULL gradients are skipped, as backend.h specifies.
 * A scratch allocation that fails latches TUNA_ENOMEM in be->err and the op does nothing. */
#include "cpu_internal.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "../ref/ops_hash.h"

/* Latches the first error only, as backend.h asks. */
static void latch_nomem(Backend *be, const char *op, size_t bytes) {
    if (!be->err.code)
        tuna_errf(&be->err, TUNA_ENOMEM, "%s: cannot allocate %zu bytes of scratch", op, bytes);
}

static int threads_for(const Backend *be, size_t work) {
    return work >= PAR_MIN_WORK ? be->n_threads : 1;
}

// --- matrix products

/* din (M,K) += dout · w (din NULL: none) and dw (N,K) = doutᵀ · in: matmul_bwd's din, dw zeroed
 * and matmul_bwd's, or on the AMX tiles sharing dout's packing; sumsq: Σ dw², from the tiles
 * there, else by a pass over dw right after */
void cpu_matmul_bwd_dw(Backend *be, float *din, float *dw, const float *dout, const float *in,
                       const float *w, int M, int K, int N, double *sumsq) {
    if (backend_mm_bf16(be, K, N) &&
        cpu_matmul_bwd_dw_bf16(be, din, dw, dout, in, w, M, K, N, sumsq))
        return;
    if (din) cpu_matmul_bwd(be, din, NULL, NULL, dout, in, w, M, K, N);
    size_t n = (size_t)(N > 0 ? N : 0) * (size_t)(K > 0 ? K : 0);
    be->ops->zero(be, dw, sizeof(float) * n);
    cpu_matmul_bwd(be, NULL, dw, NULL, dout, in, NULL, M, K, N);
    if (sumsq) *sumsq = cpu_sumsq(be, dw, n);
}

/* din (M,K) += dout (M,N) · w (N,K);  dw (N,K) += doutᵀ · in (M,K);  dbias (N) += Σ_m dout. */
void cpu_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                    const float *in, const float *w, int M, int K, int N) {
    if (M <= 0 || K <= 0 || N <= 0) return;
    if (backend_mm_bf16(be, K, N) && (din || dw)) { /* dbias stays a sum of fp32 below */
        cpu_matmul_bwd_bf16(be, din, dw, dout, in, w, M, K, N);
        din = dw = NULL;
    }
    size_t work = (size_t)M * K * N;
    int nth = work >= PAR_MIN_WORK * 4 ? be->n_threads : 1;
    if (din && dw && !cpu_skinny_bwd(omp_in_parallel() ? 1 : nth, M, K, N, dout, in, w, din, dw))
        din = dw = NULL; /* both in one pass over dout */
    if (din) cpu_sgemm(nth, 0, 0, M, K, N, 1.0f, dout, N, w, K, 1.0f, din, K);
    if (dw) cpu_sgemm(nth, 1, 0, N, K, M, 1.0f, dout, N, in, K, 1.0f, dw, K);
    if (dbias) {
        /* Column sums in blocks of 64 columns: each thread owns its columns, rows stream. */
        int nblk = (N + 63) / 64;
        int nb = threads_for(be, (size_t)M * N);
#pragma omp parallel for num_threads(nb) schedule(static) if (nb > 1)
        for (int blk = 0; blk < nblk; blk++) {
            int n0 = blk * 64, w0 = N - n0 < 64 ? N - n0 : 64;
            float acc[64] = {0};
            for (int m = 0; m < M; m++) {
                const float *d = dout + (size_t)m * N + n0;
#pragma omp simd
                for (int i = 0; i < w0; i++)
                    acc[i] += d[i];
            }
            for (int i = 0; i < w0; i++)
                dbias[n0 + i] += acc[i];
        }
    }
}

// --- normalization

/* The norm weight gradients are sums over every row. Their order is fixed whatever the thread
 * count (a run on 1 thread and on 2, or one whose thread count changes as it goes, gets the same
 * bits): the rows go in at most NORM_MAX_BLOCKS blocks of at least 16 rows (how many depends on
 * R alone), each block sums its rows in order into its own partial row, and the partial rows
 * are added in block order. Threads take whole blocks. */
#define NORM_MAX_BLOCKS 64

static int norm_block_rows(int R) {
    int rb = (R + NORM_MAX_BLOCKS - 1) / NORM_MAX_BLOCKS;
    return rb < 16 ? 16 : rb;
}

/* dst[c] += Σ_k part[k * C + c] for columns [lo, hi), k = 0..nblk-1 in order (part's first row
 * is overwritten). */
static void reduce_blocks(float *dst, float *part, int nblk, int C, size_t lo, size_t hi) {
    for (int k = 1; k < nblk; k++) {
        const float *pk = part + (size_t)k * C;
#pragma omp simd
        for (size_t c = lo; c < hi; c++)
            part[c] += pk[c];
    }
#pragma omp simd
    for (size_t c = lo; c < hi; c++)
        dst[c] += part[c];
}

/* Row blocks [lo, hi) of the RMSNorm backward; pw: the partial rows of dw (or NULL). */
static void rmsnorm_bwd_blocks(float *din, float *pw, const float *dout, const float *in,
                               const float *w, float eps, int R, int C, size_t rb, size_t lo,
                               size_t hi) {
    for (size_t blk = lo; blk < hi; blk++) {
        float *p = pw ? pw + blk * C : NULL;
        if (p) memset(p, 0, sizeof(float) * (size_t)C);
        size_t r1 = (blk + 1) * rb < (size_t)R ? (blk + 1) * rb : (size_t)R;
        for (size_t r = blk * rb; r < r1; r++) {
            const float *x = in + r * C, *dy = dout + r * C;
            float ss = 0, dot = 0;
#pragma omp simd reduction(+ : ss, dot)
            for (int c = 0; c < C; c++) {
                ss += x[c] * x[c];
                dot += dy[c] * w[c] * x[c];
            }
            float inv = 1.0f / sqrtf(ss / (float)C + eps);
            if (din) {
                float *dx = din + r * C, kk = inv * inv * inv * dot / (float)C;
#pragma omp simd
                for (int c = 0; c < C; c++)
                    dx[c] += inv * dy[c] * w[c] - kk * x[c];
            }
            if (p) {
#pragma omp simd
                for (int c = 0; c < C; c++)
                    p[c] += dy[c] * x[c] * inv;
            }
        }
    }
}

/* y = x * inv * w, inv = 1/sqrt(mean(x²) + eps):
 * dx += inv * dy * w - x * inv³/C * Σ dy*w*x;  dw += Σ_rows dy * x * inv. */
void cpu_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                     const float *w, float eps, int R, int C) {
    if (R <= 0 || C <= 0 || (!din && !dw)) return;
    int nth = threads_for(be, (size_t)R * C);
    int rb = norm_block_rows(R), nblk = (R + rb - 1) / rb;
    float *part = NULL;
    if (dw) {
        size_t bytes = sizeof(float) * (size_t)nblk * C;
        if (!(part = malloc(bytes))) {
            latch_nomem(be, "rmsnorm_bwd", bytes);
            return;
        }
    }
    CPU_PAR_RANGE(nth, (size_t)nblk,
                  rmsnorm_bwd_blocks(din, part, dout, in, w, eps, R, C, (size_t)rb, lo, hi));
    if (dw) CPU_PAR_RANGE(nth, (size_t)C, reduce_blocks(dw, part, nblk, C, lo, hi));
    free(part);
}

/* Row blocks [lo, hi) of the LayerNorm backward; pw, pb: the partial rows of dw, db (or NULL). */
static void layernorm_bwd_blocks(float *din, float *pw, float *pb, const float *dout,
                                 const float *in, const float *w, float eps, int R, int C,
                                 size_t rb, size_t lo, size_t hi) {
    for (size_t blk = lo; blk < hi; blk++) {
        float *qw = pw ? pw + blk * C : NULL, *qb = pb ? pb + blk * C : NULL;
        if (qw) memset(qw, 0, sizeof(float) * (size_t)C);
        if (qb) memset(qb, 0, sizeof(float) * (size_t)C);
        size_t r1 = (blk + 1) * rb < (size_t)R ? (blk + 1) * rb : (size_t)R;
        for (size_t r = blk * rb; r < r1; r++) {
            const float *x = in + r * C, *dy = dout + r * C;
            float mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
            for (int c = 0; c < C; c++)
                mean += x[c];
            mean /= (float)C;
#pragma omp simd reduction(+ : var)
            for (int c = 0; c < C; c++)
                var += (x[c] - mean) * (x[c] - mean);
            var /= (float)C;
            float rstd = 1.0f / sqrtf(var + eps);
            if (din) {
                float mg = 0, mgx = 0;
#pragma omp simd reduction(+ : mg, mgx)
                for (int c = 0; c < C; c++) {
                    float g = dy[c] * w[c];
                    mg += g;
                    mgx += g * (x[c] - mean) * rstd;
                }
                mg /= (float)C;
                mgx /= (float)C;
                float *dx = din + r * C;
#pragma omp simd
                for (int c = 0; c < C; c++)
                    dx[c] += rstd * (dy[c] * w[c] - mg - (x[c] - mean) * rstd * mgx);
            }
            if (qw) {
#pragma omp simd
                for (int c = 0; c < C; c++)
                    qw[c] += dy[c] * (x[c] - mean) * rstd;
            }
            if (qb) {
#pragma omp simd
                for (int c = 0; c < C; c++)
                    qb[c] += dy[c];
            }
        }
    }
}

/* xhat = (x - mean) * rstd, g = dy * w:
 * dx += rstd * (g - mean(g) - xhat * mean(g*xhat));  dw += Σ dy*xhat;  db += Σ dy. */
void cpu_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                       const float *in, const float *w, float eps, int R, int C) {
    if (R <= 0 || C <= 0 || (!din && !dw && !db)) return;
    int nth = threads_for(be, (size_t)R * C);
    int rb = norm_block_rows(R), nblk = (R + rb - 1) / rb;
    int np = (dw != NULL) + (db != NULL);
    float *part = NULL;
    if (np) {
        size_t bytes = sizeof(float) * (size_t)nblk * C * np;
        if (!(part = malloc(bytes))) {
            latch_nomem(be, "layernorm_bwd", bytes);
            return;
        }
    }
    float *pw = dw ? part : NULL, *pb = db ? part + (dw ? (size_t)nblk * C : 0) : NULL;
    CPU_PAR_RANGE(nth, (size_t)nblk,
                  layernorm_bwd_blocks(din, pw, pb, dout, in, w, eps, R, C, (size_t)rb, lo, hi));
    if (dw) CPU_PAR_RANGE(nth, (size_t)C, reduce_blocks(dw, pw, nblk, C, lo, hi));
    if (db) CPU_PAR_RANGE(nth, (size_t)C, reduce_blocks(db, pb, nblk, C, lo, hi));
    free(part);
}

// --- rotary embedding and attention

/* Rotates each head of x (T,NH,HS) in place by +angle (sign 1: rope_fwd) or -angle (sign -1:
 * rope_bwd, the transpose), HF rotate_half layout, with the same float angles both ways. */
static void rope_rows(float *x, const int32_t *pos, const float *inv_freq, int NH, int HS,
                      int rot_dim, float sign, size_t lo, size_t hi) {
    int half = rot_dim / 2;
    for (size_t t = lo; t < hi; t++) {
        float cs[512], sn[512]; /* half <= 512: head_dim <= 1024 by config limits */
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[t] * inv_freq[i];
            cs[i] = cosf(ang);
            sn[i] = sign * sinf(ang);
        }
        for (int h = 0; h < NH; h++) {
            float *g = x + ((size_t)t * NH + h) * HS;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = g[i], b = g[i + half];
                g[i] = a * cs[i] - b * sn[i];
                g[i + half] = b * cs[i] + a * sn[i];
            }
        }
    }
}

void cpu_rope_rotate(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T,
                     int NH, int HS, int rot_dim, float sign) {
    CPU_PAR_RANGE(threads_for(be, (size_t)T * NH * HS), (size_t)T,
                  rope_rows(x, pos, inv_freq, NH, HS, rot_dim, sign, lo, hi));
}

void cpu_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T, int NH,
                  int HS, int rot_dim) {
    cpu_rope_rotate(be, dx, pos, inv_freq, T, NH, HS, rot_dim, -1.0f);
}

/* fmaf, not a * x + y: -std=c11 turns off FMA contraction, and separate multiplies and adds
 * halve the throughput of these loops. GCC vectorizes fmaf into vfmadd. */
static inline void axpyf(float *y, float a, const float *x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

/* y (n) += mul * Σ_r a[r] x[r * xs + 0..n): a small matrix-vector product (rows of x spread
 * xs apart), four rows per sweep so each load and store of y feeds four FMAs. */
static void gaxpy(float *restrict y, const float *a, const float *x, size_t xs, int rows, int n,
                  float mul) {
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
        float a0 = a[r] * mul, a1 = a[r + 1] * mul, a2 = a[r + 2] * mul, a3 = a[r + 3] * mul;
        const float *x0 = x + (size_t)r * xs, *x1 = x0 + xs, *x2 = x1 + xs, *x3 = x2 + xs;
#pragma omp simd
        for (int j = 0; j < n; j++)
            y[j] = fmaf(a3, x3[j], fmaf(a2, x2[j], fmaf(a1, x1[j], fmaf(a0, x0[j], y[j]))));
    }
    for (; r < rows; r++)
        axpyf(y, a[r] * mul, x + (size_t)r * xs, n);
}

/* dst (rows of HS spread `rs` apart) -> dst block (HS, n): dst[i * n + j] = src[j * rs + i]. */
static void transpose_rows(float *dst, const float *src, size_t rs, int n, int HS) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < HS; i++)
            dst[(size_t)i * n + j] = src[(size_t)j * rs + i];
}

/* Per (b, t, h) with p = softmax(scale q·k), dp_j = do·v_j, D = Σ_j p_j dp_j and
 * ds_j = p_j (dp_j - D):  dq += scale Σ_j ds_j k_j;  dk_j += scale Σ ds_j q;  dv_j += Σ p_j do.
 * Pass 1, parallel over (b, t, kv head) like the forward: recomputes p for the grp query
 * heads of the kv head, writes dq (rows private to the item) and keeps lse = log Σ exp and D
 * per (b, h, t). Pass 2, parallel over (b, kv head, key j): recomputes p = exp(s - lse) for
 * every query that sees key j and sums dk_j and dv_j locally. No two items write the same
 * row, so there are no races and the result does not depend on the thread count.
 * Scores are computed against transposed copies (K, V per (b, kv head) for pass 1; Q, dO per
 * (b, head) for pass 2) so every inner loop is an axpy over keys or queries.
 * Causal offset, window and kv_lo exactly as attention_fwd (tuna_attn_lo): query t sits at
 * p = Tk-Tq+t and sees keys lo..p. */
/* The shapes and buffers of one attention backward (cpu_attention_bwd), shared by its passes. */
typedef struct AttnBwd {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    const int32_t *kv_lo;
    int B, Tq, Tk, NH, KVH, HS, window, grp, off;
    size_t kv_stride, rs, qs; /* row strides of k/v and q/dout */
    float scale;
    float *lse, *dsum; /* (B, NH, Tq) */
    float *kt, *vt;    /* (B, KVH, HS, Tk) */
    float *qt, *dot_;  /* (B, NH, HS, Tq) */
} AttnBwd;

/* Pass 1 for query row t of batch row b and kv head g (all grp query heads that share it): the
 * row statistics (lse, dsum) and dq. pr and dp: scratch of grp * Tk floats each. */
static void attn_bwd_row(const AttnBwd *a, int b, int t, int g, float *pr, float *dp) {
    int grp = a->grp, HS = a->HS, Tk = a->Tk;
    size_t qrow = ((size_t)b * a->Tq + t) * a->NH + (size_t)g * grp; /* first query head */
    const float *qv = a->q + qrow * HS, *dov = a->dout + qrow * HS;
    int p = a->off + t;
    int lo = tuna_attn_lo(a->kv_lo, (size_t)b * a->Tq + t, p, a->window);
    int n = p - lo + 1;
    const float *ktb = a->kt + ((size_t)b * a->KVH + g) * HS * Tk + lo;
    const float *vtb = a->vt + ((size_t)b * a->KVH + g) * HS * Tk + lo;
    memset(pr, 0, sizeof(float) * (size_t)grp * n);
    memset(dp, 0, sizeof(float) * (size_t)grp * n);
    for (int h = 0; h < grp; h++) {
        gaxpy(pr + (size_t)h * n, qv + (size_t)h * HS, ktb, (size_t)Tk, HS, n, a->scale);
        gaxpy(dp + (size_t)h * n, dov + (size_t)h * HS, vtb, (size_t)Tk, HS, n, 1.0f);
    }
    for (int h = 0; h < grp; h++) {
        float *ph = pr + (size_t)h * n, *dph = dp + (size_t)h * n;
        float mx = -INFINITY, sum = 0, D = 0, scale = a->scale;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < n; j++)
            mx = ph[j] > mx ? ph[j] : mx;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++)
            sum += (ph[j] = vexpf(ph[j] - mx));
        float inv = 1.0f / sum;
#pragma omp simd reduction(+ : D)
        for (int j = 0; j < n; j++) {
            ph[j] *= inv;
            D += ph[j] * dph[j];
        }
        size_t st = ((size_t)b * a->NH + (size_t)g * grp + h) * a->Tq + t;
        a->lse[st] = mx + logf(sum);
        a->dsum[st] = D;
#pragma omp simd
        for (int j = 0; j < n; j++)
            dph[j] = ph[j] * (dph[j] - D) * scale; /* ds */
    }
    if (a->dq) {
        float *dqv = a->dq + qrow * HS;
        const float *kb = a->k + b * a->kv_stride + (size_t)g * HS + (size_t)lo * a->rs;
        for (int h = 0; h < grp; h++)
            gaxpy(dqv + (size_t)h * HS, dp + (size_t)h * n, kb, a->rs, n, HS, 1.0f);
    }
}

/* Pass 2 for key row j of kv head g of batch row b: its dk and dv rows. acc: scratch of
 * 2 * HS + 2 * Tq floats. */
static void attn_bwd_key(const AttnBwd *a, int b, int g, int j, float *acc) {
    int HS = a->HS, Tq = a->Tq, off = a->off, window = a->window;
    /* queries that see key j: p(t) >= j and, with a window, p(t) - window < j */
    int t0 = j - off > 0 ? j - off : 0;
    int t1 = Tq - 1;
    if (window > 0 && j + window - 1 - off < t1) t1 = j + window - 1 - off;
    /* kv_lo: queries at the end whose span starts after j drop out; any left inside t0..t1 are
     * masked below */
    const int32_t *klo = a->kv_lo ? a->kv_lo + (size_t)b * Tq : NULL;
    while (klo && t1 >= t0 && tuna_attn_lo(klo, (size_t)t1, off + t1, window) > j)
        t1--;
    if (t0 > t1) return;
    int m = t1 - t0 + 1;
    size_t ko = b * a->kv_stride + (size_t)j * a->rs + (size_t)g * HS;
    const float *kr = a->k + ko, *vr = a->v + ko;
    float *ak = acc, *av = acc + HS, *s = av + HS, *dpp = s + Tq;
    memset(ak, 0, sizeof(float) * 2 * (size_t)HS);
    for (int h = g * a->grp; h < (g + 1) * a->grp; h++) {
        size_t bh = (size_t)b * a->NH + h;
        const float *qtb = a->qt + bh * HS * Tq + t0, *dtb = a->dot_ + bh * HS * Tq + t0;
        const float *ls = a->lse + bh * Tq + t0, *Ds = a->dsum + bh * Tq + t0;
        float scale = a->scale;
        memset(s, 0, sizeof(float) * (size_t)m);
        memset(dpp, 0, sizeof(float) * (size_t)m);
        gaxpy(s, kr, qtb, (size_t)Tq, HS, m, scale);
        if (a->dk) gaxpy(dpp, vr, dtb, (size_t)Tq, HS, m, 1.0f);
#pragma omp simd
        for (int tt = 0; tt < m; tt++) {
            s[tt] = vexpf(s[tt] - ls[tt]);                /* p */
            dpp[tt] = s[tt] * (dpp[tt] - Ds[tt]) * scale; /* ds (unused without dk) */
        }
        if (klo)
            for (int tt = 0; tt < m; tt++)
                if (tuna_attn_lo(klo, (size_t)(t0 + tt), off + t0 + tt, window) > j)
                    s[tt] = dpp[tt] = 0;
        const float *qr = a->q + (((size_t)b * Tq + t0) * a->NH + h) * HS;
        const float *dr = a->dout + (((size_t)b * Tq + t0) * a->NH + h) * HS;
        if (a->dk) gaxpy(ak, dpp, qr, a->qs, m, HS, 1.0f);
        if (a->dv) gaxpy(av, s, dr, a->qs, m, HS, 1.0f);
    }
    if (a->dk) axpyf(a->dk + ko, 1.0f, ak, HS);
    if (a->dv) axpyf(a->dv + ko, 1.0f, av, HS);
}

/* k and v (and for pass 2 q and dout) transposed per head, so that the passes read keys
 * (queries) contiguously. */
static void attn_bwd_transpose(const AttnBwd *a, int nth, int pass2) {
    int B = a->B, KVH = a->KVH, NH = a->NH, HS = a->HS, Tk = a->Tk, Tq = a->Tq;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int g = 0; g < KVH; g++) {
                size_t o = ((size_t)b * KVH + g) * HS * Tk;
                transpose_rows(a->kt + o, a->k + b * a->kv_stride + (size_t)g * HS, a->rs, Tk, HS);
                transpose_rows(a->vt + o, a->v + b * a->kv_stride + (size_t)g * HS, a->rs, Tk, HS);
            }
        if (pass2) {
#pragma omp for collapse(2) schedule(static) nowait
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++) {
                    size_t o = ((size_t)b * NH + h) * HS * Tq,
                           src = (size_t)b * Tq * a->qs + (size_t)h * HS;
                    transpose_rows(a->qt + o, a->q + src, a->qs, Tq, HS);
                    transpose_rows(a->dot_ + o, a->dout + src, a->qs, Tq, HS);
                }
        }
    }
}

void cpu_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                       const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                       size_t kv_stride, int NH, int KVH, int HS, int window,
                       const int32_t *kv_lo) {
    if (B <= 0 || Tq <= 0 || Tk <= 0 || (!dq && !dk && !dv)) return;
    AttnBwd a = {.dq = dq,
                 .dk = dk,
                 .dv = dv,
                 .dout = dout,
                 .q = q,
                 .k = k,
                 .v = v,
                 .kv_lo = kv_lo,
                 .B = B,
                 .Tq = Tq,
                 .Tk = Tk,
                 .NH = NH,
                 .KVH = KVH,
                 .HS = HS,
                 .window = window,
                 .grp = NH / KVH,
                 .off = Tk - Tq,
                 .kv_stride = kv_stride,
                 .rs = (size_t)KVH * HS,
                 .qs = (size_t)NH * HS,
                 .scale = 1.0f / sqrtf((float)HS)};
    int grp = a.grp;
    size_t nstat = (size_t)B * NH * Tq, nkv = (size_t)B * KVH * HS * Tk;
    size_t nq = (size_t)B * NH * HS * Tq;
    int pass2 = dk || dv;
    size_t bytes = sizeof(float) * (2 * nstat + 2 * nkv + (pass2 ? 2 * nq : 0));
    float *scratch = malloc(bytes);
    if (!scratch) {
        latch_nomem(be, "attention_bwd", bytes);
        return;
    }
    a.lse = scratch, a.dsum = a.lse + nstat;
    a.kt = a.dsum + nstat, a.vt = a.kt + nkv;
    a.qt = a.vt + nkv, a.dot_ = a.qt + nq;
    size_t work = (size_t)B * Tq * NH * (size_t)Tk * HS;
    int nth = threads_for(be, work);
    int fail = 0;
    attn_bwd_transpose(&a, nth, pass2);

    // pass 1: row statistics and dq
    int total1 = B * Tq * KVH;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        float *pr = malloc(sizeof(float) * 2 * (size_t)grp * (size_t)Tk);
        if (!pr) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 4)
        for (int idx = 0; idx < total1; idx++) {
            if (!pr) continue;
            attn_bwd_row(&a, idx / (KVH * Tq), (idx / KVH) % Tq, idx % KVH, pr,
                         pr + (size_t)grp * Tk);
        }
        free(pr);
    }

    // pass 2: dk and dv, one key row of one kv head per item
    if (pass2 && !fail) {
        int total2 = B * KVH * Tk;
#pragma omp parallel num_threads(nth) if (nth > 1)
        {
            float *acc = malloc(sizeof(float) * (2 * (size_t)HS + 2 * (size_t)Tq));
            if (!acc) {
#pragma omp atomic write
                fail = 1;
            }
#pragma omp for schedule(dynamic, 8)
            for (int idx = 0; idx < total2; idx++) {
                if (!acc) continue;
                attn_bwd_key(&a, idx / (Tk * KVH), (idx / Tk) % KVH, idx % Tk, acc);
            }
            free(acc);
        }
    }
    if (fail) latch_nomem(be, "attention_bwd", sizeof(float) * 2 * (size_t)(grp * Tk + HS + Tq));
    free(scratch);
}

// --- elementwise

/* One range of the SwiGLU backward; separate loops per NULL pattern (a conditional store keeps
 * GCC from vectorizing), each a plain `omp simd` loop: the earlier `parallel for simd` form ran
 * scalar (vexpf's clamps unvectorized), 8% of a SmolLM2 LoRA step. ACC (a constant at each
 * call): += (1) or = (0, the gradients not read). */
#define SWIGLU_PUT(ACC, d, i, x) ((d)[i] = (ACC) ? (d)[i] + (x) : (x))
__attribute__((always_inline)) static inline void swiglu_bwd_at(int ACC, float *dgate, float *dup,
                                                                const float *dout,
                                                                const float *gate, const float *up,
                                                                size_t lo, size_t hi) {
    if (dgate && dup) {
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float g = gate[i], sg = 1.0f / (1.0f + vexpf(-g)), d = dout[i];
            SWIGLU_PUT(ACC, dgate, i, d * up[i] * sg * (1.0f + g * (1.0f - sg)));
            SWIGLU_PUT(ACC, dup, i, d * g * sg);
        }
    } else if (dgate) {
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float g = gate[i], sg = 1.0f / (1.0f + vexpf(-g));
            SWIGLU_PUT(ACC, dgate, i, dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg)));
        }
    } else if (dup) {
#pragma omp simd
        for (size_t i = lo; i < hi; i++) {
            float g = gate[i];
            SWIGLU_PUT(ACC, dup, i, dout[i] * g / (1.0f + vexpf(-g)));
        }
    }
}
#undef SWIGLU_PUT

static void swiglu_bwd_range(float *dgate, float *dup, const float *dout, const float *gate,
                             const float *up, size_t lo, size_t hi, int acc) {
    if (acc)
        swiglu_bwd_at(1, dgate, dup, dout, gate, up, lo, hi);
    else
        swiglu_bwd_at(0, dgate, dup, dout, gate, up, lo, hi);
}

void cpu_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n, int acc) {
    CPU_PAR_RANGE(threads_for(be, n), n, swiglu_bwd_range(dgate, dup, dout, gate, up, lo, hi, acc));
}

/* din[lo, hi) += dout · GELU'(in), tanh's approximation (tanh(u) = 1 - 2 / (1 + exp(2u))). A
 * range of its own, so the loop is vectorized on one thread too (the parallel-for form ran it
 * scalar there: 7.1 against 1.1 ns an element); 16 lanes where AVX-512 is (vexpf16: the bits of
 * the scalar form below, which takes the rest), its streams fetched ahead. */
static void gelu_bwd_tanh(float *din, const float *dout, const float *restrict in, size_t lo,
                          size_t hi) {
    size_t i = lo;
#ifdef __AVX512F__ /* gelu_d on 16 lanes */
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f),
                 vk = _mm512_set1_ps(GELU_K), v3c3 = _mm512_set1_ps(3.0f * GELU_C3);
    for (; i + 16 <= hi; i += 16) {
        if (!(i & 63) && i + GELU_PF < hi) {
            _mm_prefetch((const char *)(in + i + GELU_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(dout + i + GELU_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(din + i + GELU_PF), _MM_HINT_T0);
        }
        __m512 x = _mm512_loadu_ps(in + i), th = gelu_th16(x);
        __m512 d = _mm512_add_ps(
                _mm512_mul_ps(half, _mm512_add_ps(one, th)),
                _mm512_mul_ps(
                        _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(half, x),
                                                    _mm512_sub_ps(one, _mm512_mul_ps(th, th))),
                                      vk),
                        _mm512_add_ps(one, _mm512_mul_ps(_mm512_mul_ps(v3c3, x), x))));
        _mm512_storeu_ps(din + i, _mm512_add_ps(_mm512_loadu_ps(din + i),
                                                _mm512_mul_ps(_mm512_loadu_ps(dout + i), d)));
    }
#endif
#pragma omp simd /* the rest; all of it without AVX-512 */
    for (size_t j = i; j < hi; j++)
        din[j] += dout[j] * gelu_d(in[j], gelu_th(in[j]));
}

void cpu_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                  int approx) {
    if (!din) return;
    int nth = threads_for(be, n);
    if (approx) {
        CPU_PAR_RANGE(nth, n, gelu_bwd_tanh(din, dout, in, lo, hi));
    } else {
#pragma omp parallel for num_threads(nth) if (nth > 1)
        for (size_t i = 0; i < n; i++) {
            float x = in[i];
            float d = 0.5f * (1.0f + erff(x * 0.70710678f)) + x * expf(-0.5f * x * x) * 0.39894228f;
            din[i] += dout[i] * d;
        }
    }
}

/* Repeated ids add into the same table row, so threads split the columns, not the tokens. */
void cpu_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                   int C) {
    if (!dtable || T <= 0 || C <= 0) return;
    int nblk = (C + 63) / 64;
    int nth = threads_for(be, (size_t)T * C);
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int t = 0; t < T; t++) {
            float *row = dtable + (size_t)ids[t] * C;
            const float *g = dout + (size_t)t * C;
#pragma omp simd
            for (int c = c0; c < c1; c++)
                row[c] += g[c];
        }
    }
}

// --- loss and optimizer

/* Per row: max-subtracted log-sum-exp; the exponentials go straight into dlogits (which may
 * alias logits, so the target's logit is read first) and are then scaled. */
/* EAFT's entropy: of the softmax over the row's 20 largest logits (all when V < 20), kept
 * sorted as the row is read (most values fall below the smallest kept at once) */
static double top20_entropy(const float *x, int V) {
    float top[20];
    int n = 0, k = V < 20 ? V : 20;
    for (int i = 0; i < V; i++) {
        float v = x[i];
        if (n == k && v <= top[k - 1]) continue;
        int j = n < k ? n++ : k - 1;
        for (; j > 0 && top[j - 1] < v; j--)
            top[j] = top[j - 1];
        top[j] = v;
    }
    double s = 0, h = 0;
    for (int j = 0; j < k; j++)
        s += exp((double)top[j] - (double)top[0]);
    double lse = (double)top[0] + log(s);
    for (int j = 0; j < k; j++)
        h -= exp((double)top[j] - lse) * ((double)top[j] - lse);
    return h;
}

void cpu_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                      const int32_t *targets, int R, int V, float scale, float smooth,
                      XentWeight wt) {
    if (R <= 0) return;
    int nth = threads_for(be, (size_t)R * V);
    int bad = 0;
#pragma omp parallel for num_threads(nth) reduction(+ : bad) if (nth > 1)
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
        float xt = x[tg], mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int i = 0; i < V; i++)
            mx = x[i] > mx ? x[i] : mx;
        float sum = 0;
        /* EAFT's weight, from the logits before dx (which may alias them) is written */
        double w_eaft =
                wt.kind == XENT_W_EAFT ? pow(top20_entropy(x, V) / 3.0, (double)wt.alpha) : 1.0;
        if (smooth > 0) { /* Hugging Face's label smoothing: its own loop, the plain one as is */
            float sx = 0;
#pragma omp simd reduction(+ : sum, sx)
            for (int i = 0; i < V; i++) {
                float d = x[i] - mx, e = vexpf(d); /* read before dx[i] (it may alias x) */
                if (dx) dx[i] = e;
                sum += e;
                sx += d; /* shifted: no cancellation against lse */
            }
            double lse_m = log((double)sum), e = smooth; /* lse - mx */
            if (dx) {
                float f = scale / sum, u = (float)(e / V) * scale;
#pragma omp simd
                for (int i = 0; i < V; i++)
                    dx[i] = dx[i] * f - u;
                dx[tg] -= (float)(1 - e) * scale;
            }
            losses[r] = (float)((1 - e) * (lse_m - ((double)xt - (double)mx)) +
                                e * (lse_m - (double)sx / V));
            continue;
        }
        if (dx) {
#pragma omp simd reduction(+ : sum)
            for (int i = 0; i < V; i++) {
                float e = vexpf(x[i] - mx);
                dx[i] = e; /* same index as the read: fine when dx aliases x */
                sum += e;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int i = 0; i < V; i++)
                sum += vexpf(x[i] - mx);
        }
        double nll = (double)mx + log((double)sum) - (double)xt;
        /* DFT: the row times its target's probability; EAFT: times (H / 3)^alpha; a constant
         * for the gradient */
        double w = wt.kind == XENT_W_DFT ? exp(-nll) : w_eaft;
        float ws = wt.kind != XENT_W_NONE ? (float)(w * (double)scale) : scale;
        if (dx) {
            float f = ws / sum;
#pragma omp simd
            for (int i = 0; i < V; i++)
                dx[i] *= f;
            dx[tg] -= ws;
        }
        losses[r] = (float)(w * nll);
    }
    if (bad && !be->err.code)
        tuna_errf(&be->err, TUNA_EINVAL, "xent: %d target(s) outside [0, %d) and not -100", bad, V);
}

/* Per row, three passes of 16 lanes: the largest logit (and the largest before the target), then
 * Σ z, Σ e^(z - max) and Σ e^(z - max)·(z - max) (the entropy without cancellation). */
void cpu_logit_stats(Backend *be, float *stats, const float *logits, const int32_t *targets, int R,
                     int V) {
    if (R <= 0) return;
    int nth = threads_for(be, (size_t)R * V);
#pragma omp parallel for num_threads(nth) if (nth > 1)
    for (int r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        float *st = stats + (size_t)r * 3;
        int32_t tg = targets[r];
        st[0] = st[1] = st[2] = 0;
        if (tg < 0 || tg >= V) continue;
        float before = -INFINITY, mx = -INFINITY;
#pragma omp simd reduction(max : before)
        for (int i = 0; i < tg; i++)
            before = x[i] > before ? x[i] : before;
#pragma omp simd reduction(max : mx)
        for (int i = tg; i < V; i++)
            mx = x[i] > mx ? x[i] : mx;
        mx = before > mx ? before : mx;
        float sz = 0, se = 0, sez = 0;
#pragma omp simd reduction(+ : sz, se, sez)
        for (int i = 0; i < V; i++) {
            float d = x[i] - mx, e = vexpf(d);
            sz += x[i];
            se += e;
            sez += e * d;
        }
        st[0] = sz / (float)V;
        st[1] = (float)(log((double)se) - (double)sez / (double)se);
        st[2] = x[tg] >= mx && x[tg] > before ? 1.0f : 0.0f;
    }
}

/* Σ x² in chunks whose size depends on n alone (at least 4096 elements, at most 256 chunks),
 * each summed in order, and the chunk sums added in order: the same bits on any thread count. */
#define SUMSQ_MAX_CHUNKS 256

static void sumsq_chunks(double *part, const float *x, size_t n, size_t chunk, size_t lo,
                         size_t hi) {
    for (size_t k = lo; k < hi; k++) {
        size_t i0 = k * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++)
            s += (double)x[i] * (double)x[i];
        part[k] = s;
    }
}

double cpu_sumsq(Backend *be, const float *x, size_t n) {
    if (!n) return 0;
    size_t chunk = (n + SUMSQ_MAX_CHUNKS - 1) / SUMSQ_MAX_CHUNKS;
    if (chunk < 4096) chunk = 4096;
    size_t nchunk = (n + chunk - 1) / chunk;
    double part[SUMSQ_MAX_CHUNKS];
    CPU_PAR_RANGE(threads_for(be, n * 8), nchunk, sumsq_chunks(part, x, n, chunk, lo, hi));
    double s = 0;
    for (size_t k = 0; k < nchunk; k++)
        s += part[k];
    return s;
}

void cpu_scale(Backend *be, float *x, size_t n, float s) {
    int nth = threads_for(be, n * 8);
#pragma omp parallel for simd num_threads(nth) if (nth > 1)
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* ref_col_scale's expression, rows in parallel (a row at a time, the columns vectorized) */
void cpu_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b, int R,
                   int N) {
    int nth = threads_for(be, (size_t)R * N * 8);
#pragma omp parallel for num_threads(nth) if (nth > 1)
    for (int t = 0; t < R; t++) {
        float *y = out + (size_t)t * N;
        const float *x = in + (size_t)t * N;
        if (b) {
#pragma omp simd
            for (int o = 0; o < N; o++)
                y[o] = a[o] * x[o] + b[o];
        } else {
#pragma omp simd
            for (int o = 0; o < N; o++)
                y[o] = a[o] * x[o];
        }
    }
}

/* Columns in parallel, each thread a range of them over every row in row order: the double
 * sums of ref_col_dot, term for term (a float product is exact in double). */
static void col_dot_range(double *acc, const float *x, const float *y, int R, int N, size_t lo,
                          size_t hi) {
    for (int t = 0; t < R; t++) {
        const float *xr = x + (size_t)t * N, *yr = y + (size_t)t * N;
#pragma omp simd
        for (size_t o = lo; o < hi; o++)
            acc[o] += (double)xr[o] * (double)yr[o];
    }
}

void cpu_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N) {
    int nth = threads_for(be, (size_t)R * N * 8);
    if (nth > N / 16) nth = N / 16 > 1 ? N / 16 : 1; /* at least 16 columns a thread */
    CPU_PAR_RANGE(nth, (size_t)N, col_dot_range(acc, x, y, R, N, lo, hi));
}

/* The mask comes from ops_hash.h, so it is the one ref_dropout (and any backend) draws. */
void cpu_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed) {
    int nth = threads_for(be, n * 4);
    if (p >= 1.0f) {
#pragma omp parallel for simd num_threads(nth) if (nth > 1)
        for (size_t i = 0; i < n; i++)
            out[i] = 0;
        return;
    }
    uint64_t key = tuna_dropout_key(seed);
    float keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
#pragma omp parallel for simd num_threads(nth) if (nth > 1)
    for (size_t i = 0; i < n; i++)
        out[i] = tuna_dropout_u(key, i) >= p ? in[i] * keep : 0.0f;
}

/* ops_hash.h's noise, as ref_noise_add */
void cpu_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed) {
    int nth = threads_for(be, n * 4);
    uint64_t key = tuna_dropout_key(seed);
#pragma omp parallel for simd num_threads(nth) if (nth > 1)
    for (size_t i = 0; i < n; i++)
        x[i] += tuna_noise(key, i, mag);
}

/* AdamW on p[i0..i1): one fused pass (the clip factor, decoupled decay, both moments, the
 * bias-corrected step). With AVX-512 the body is written with intrinsics: GCC keeps sqrtf's
 * errno branch unless the whole file is built with -fno-math-errno (the optimize attribute
 * does not do it), and that branch stops the vectorizer. */
/* floats ahead that cpu_adamw_range fetches (a 1 KB of each stream) */
#define ADAMW_PF 256

void cpu_adamw_range(float *restrict p, const float *restrict g, float *restrict m,
                     float *restrict v, size_t i0, size_t i1, const CpuAdamw *h) {
    float gscale = h->gscale, b1 = h->b1, b2 = h->b2, eps = h->eps, decay = h->decay,
          step = h->step, ib2 = h->ib2;
    float a1 = 1.0f - b1, a2 = 1.0f - b2;
    size_t i = i0;
#ifdef __AVX512F__
    __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), va1 = _mm512_set1_ps(a1),
           va2 = _mm512_set1_ps(a2), veps = _mm512_set1_ps(eps), vdec = _mm512_set1_ps(decay),
           vstep = _mm512_set1_ps(step), vib2 = _mm512_set1_ps(ib2), vgs = _mm512_set1_ps(gscale);
    for (; i + 16 <= i1; i += 16) {
        if (i + ADAMW_PF < i1) { /* four streams in, three out: the prefetcher lags (66 vs 70 ms
                                  * for GPT-2's 124M on 2 threads) */
            _mm_prefetch((const char *)(g + i + ADAMW_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(m + i + ADAMW_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(v + i + ADAMW_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(p + i + ADAMW_PF), _MM_HINT_T0);
        }
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), vgs);
        __m512 mi = _mm512_fmadd_ps(vb1, _mm512_loadu_ps(m + i), _mm512_mul_ps(va1, gi));
        __m512 vi = _mm512_fmadd_ps(vb2, _mm512_loadu_ps(v + i),
                                    _mm512_mul_ps(_mm512_mul_ps(va2, gi), gi));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vi, vib2)), veps);
        __m512 upd = _mm512_div_ps(_mm512_mul_ps(vstep, mi), den);
        _mm512_storeu_ps(p + i, _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + i), vdec), upd));
    }
#endif
#pragma omp simd
    for (size_t j = i; j < i1; j++) {
        float gj = g[j] * gscale;
#ifdef __AVX512F__ /* the body's fused multiply-adds: an element's result does not depend on
                    * where it falls in the pass (a --zero 1 slice edge, a chunk's tail) */
        float mj = fmaf(b1, m[j], a1 * gj);
        float vj = fmaf(b2, v[j], a2 * gj * gj);
#else
        float mj = b1 * m[j] + a1 * gj;
        float vj = b2 * v[j] + a2 * gj * gj;
#endif
        m[j] = mj;
        v[j] = vj;
        p[j] = p[j] * decay - step * mj / (sqrtf(vj * ib2) + eps);
    }
}

void cpu_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
               float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {
    int nth = threads_for(be, n * 8);
    CpuAdamw h = {gscale, b1, b2, eps, 1.0f - lr * wd, lr / bc1, 1.0f / bc2};
    /* with tracked weights inside, the pass that refreshes their copies as it goes */
    if (cpu_mirror_adamw(be, nth, p, g, m, v, n, &h)) return;
    size_t chunk = 16384; /* 64 KiB of each array per task */
    size_t nchunk = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (size_t c = 0; c < nchunk; c++) {
        size_t i1 = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        cpu_adamw_range(p, g, m, v, c * chunk, i1, &h);
    }
}
