#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xalloc.h"

double time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// --- sampler

static uint64_t rng_next(uint64_t *s) {
    /* xorshift64* (as llama2.c's random_u32, kept 64-bit) */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

float sampler_uniform(Sampler *s) {
    return (float)(rng_next(&s->rng) >> 40) / 16777216.0f;
}

void sampler_init(Sampler *s, int V, uint64_t seed, float temperature, int top_k, float top_p,
                  float repetition_penalty) {
    memset(s, 0, sizeof *s);
    s->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    s->temperature = temperature;
    s->top_k = top_k;
    s->top_p = top_p;
    s->repetition_penalty = repetition_penalty;
    s->V = V;
    s->probs = xmalloc(sizeof(float) * (size_t)V);
    s->idx = xmalloc(sizeof(int32_t) * (size_t)V);
}

void sampler_free(Sampler *s) {
    if (!s) return;
    free(s->probs);
    free(s->idx);
    s->probs = NULL;
    s->idx = NULL;
}

static const float *cmp_base;
static int cmp_desc(const void *a, const void *b) {
    float x = cmp_base[*(const int32_t *)a], y = cmp_base[*(const int32_t *)b];
    if (x != y) return x < y ? 1 : -1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* The first index of the largest value (NaN never wins; all-NaN or a NaN first value gives 0):
 * the loop `if (x[i] > x[best]) best = i`, done as a lane-wise maximum the compiler vectorizes
 * and a blockwise search for its first occurrence. The scalar loop took 3-6% of a stories15M
 * decode token, the other thread waiting meanwhile. */
int argmax_first(const float *x, int n) {
    enum { W = 16, BLK = 64 };
    if (n <= 0) return 0;
    float lane[W], m = x[0];
    for (int l = 0; l < W; l++)
        lane[l] = m;
    int i = 0;
    for (; i + W <= n; i += W)
        for (int l = 0; l < W; l++)
            lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    for (int l = 0; l < W; l++)
        m = lane[l] > m ? lane[l] : m;
    for (i = 0; i + BLK <= n; i += BLK) {
        int hit = 0;
        for (int l = 0; l < BLK; l++)
            hit |= x[i + l] == m;
        if (hit) break;
    }
    for (; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

int sampler_sample(Sampler *s, float *logits, const int32_t *history, size_t n_history) {
    int V = s->V;
    if (s->repetition_penalty != 1.0f && s->repetition_penalty > 0)
        for (size_t i = 0; i < n_history; i++) {
            int id = history[i];
            if (id < 0 || id >= V) continue;
            /* each id once: HF gathers the logits, penalizes, scatters back */
            if (logits[id] != logits[id]) continue;
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++)
                seen = history[j] == id;
            if (seen) continue;
            logits[id] = logits[id] > 0 ? logits[id] / s->repetition_penalty
                                        : logits[id] * s->repetition_penalty;
        }
    if (s->temperature <= 0) return argmax_first(logits, V);
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        logits[i] /= s->temperature;
        if (logits[i] > mx) mx = logits[i];
    }
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += (double)(s->probs[i] = expf(logits[i] - mx));
    for (int i = 0; i < V; i++)
        s->probs[i] = (float)((double)s->probs[i] / sum);
    int n = V;
    int need_sort = (s->top_k > 0 && s->top_k < V) || (s->top_p > 0 && s->top_p < 1);
    if (need_sort) {
        /* keep candidates above a floor before sorting (llama2.c's trick): with top-p, a token
         * below (1 - top_p) / (V - 1) can never be in the nucleus */
        float floor_p = s->top_p > 0 && s->top_p < 1 ? (1.0f - s->top_p) / (float)(V - 1) : 0;
        n = 0;
        for (int i = 0; i < V; i++)
            if (s->probs[i] >= floor_p) s->idx[n++] = i;
        cmp_base = s->probs;
        qsort(s->idx, (size_t)n, sizeof(int32_t), cmp_desc);
        if (s->top_k > 0 && s->top_k < n) n = s->top_k;
        if (s->top_p > 0 && s->top_p < 1) {
            double cum = 0;
            int keep = n;
            for (int i = 0; i < n; i++) {
                cum += (double)s->probs[s->idx[i]];
                if (cum >= (double)s->top_p) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        }
        double tot = 0;
        for (int i = 0; i < n; i++)
            tot += (double)s->probs[s->idx[i]];
        double r = (double)sampler_uniform(s) * tot, cdf = 0;
        for (int i = 0; i < n; i++) {
            cdf += (double)s->probs[s->idx[i]];
            if (r < cdf) return s->idx[i];
        }
        return s->idx[n - 1];
    }
    double r = (double)sampler_uniform(s), cdf = 0;
    for (int i = 0; i < V; i++) {
        cdf += (double)s->probs[i];
        if (r < cdf) return i;
    }
    return V - 1;
}

// --- generation loop

/* Length of the longest suffix of text[0..len) that is a proper prefix of a stop string:
 * that much text is held back until we know it is not the start of a stop string. */
static size_t stop_holdback(const char *text, size_t len, const GenerateOptions *o) {
    size_t hold = 0;
    for (int i = 0; i < o->n_stops; i++) {
        size_t sl = strlen(o->stops[i]);
        for (size_t k = sl > 1 ? sl - 1 : 0; k > hold; k--)
            if (k <= len && !memcmp(text + len - k, o->stops[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* An incomplete UTF-8 sequence decodes to U+FFFD: hold it back until the next token. */
static int ends_with_replacement(const char *t, size_t n) {
    return n >= 3 && (unsigned char)t[n - 3] == 0xEF && (unsigned char)t[n - 2] == 0xBF &&
           (unsigned char)t[n - 1] == 0xBD;
}

/* The generated text, kept incrementally. Decoding all ids again for every new token made a
 * token cost O(length): 20-25% of a stories260K token at 250 tokens. Instead, a window of
 * the last few ids is decoded, and what it adds beyond the previous window's text is
 * appended (HF's prefix/read offsets).
 * The result equals the old whole-sequence text at every step:
 * - the window starts a few ids back, so decoders that treat the first token specially
 *   (SentencePiece's leading-space strip) see the same start in both decodes;
 * - a trailing U+FFFD (a character still incomplete) is kept as a pending tail, replaced by
 *   the next step;
 * - when the window's text is not an extension of the previous one, the whole sequence is
 *   decoded again;
 * - a decoded NUL byte freezes the text, as the whole-sequence C string did. */
typedef struct TextWindow {
    size_t start; /* first id of the window */
    char *text;   /* decode(window) without a trailing U+FFFD */
    size_t len;
    size_t done; /* bytes of the generated text that are final (no pending U+FFFD tail) */
    int frozen;  /* a NUL was decoded: the text no longer changes */
} TextWindow;

static int ends_with_replacement(const char *t, size_t n);

/* decode(ids) as a C string; *nul set when the bytes held a NUL (the string stops there) */
static char *decode_c(const Tokenizer *tok, const int32_t *ids, size_t n, size_t *len, int *nul) {
    size_t full = 0;
    char *t = tokenizer_decode_len(tok, ids, n, 1, &full);
    *len = strlen(t);
    *nul = *len < full;
    return t;
}

static void text_set(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (n + 1 > *cap) {
        *cap = 2 * (n + 1);
        *buf = xrealloc(*buf, *cap);
    }
    memmove(*buf, s, n);
    (*buf)[n] = '\0';
    *len = n;
}

/* The window ends at n: its text, and how much of gen is final. */
static void window_at(TextWindow *w, const Tokenizer *tok, const int32_t *all, size_t n,
                      size_t gen_len) {
    int nul;
    free(w->text);
    w->start = n > 4 ? n - 4 : 0;
    w->text = decode_c(tok, all + w->start, n - w->start, &w->len, &nul);
    if (nul) w->frozen = 1;
    int tail = ends_with_replacement(w->text, w->len);
    if (tail) w->len -= 3;
    w->done = tail && gen_len >= 3 ? gen_len - 3 : gen_len;
}

/* gen = decode(all) minus the prompt's text (the whole text when it does not start with it),
 * as a C string: the old per-token computation. */
static void text_full(TextWindow *w, const Tokenizer *tok, const int32_t *all, size_t n,
                      const char *prompt_text, size_t prompt_len, char **gen, size_t *len,
                      size_t *cap) {
    size_t fl;
    int nul;
    char *full = decode_c(tok, all, n, &fl, &nul);
    size_t skip = fl >= prompt_len && !memcmp(full, prompt_text, prompt_len) ? prompt_len : 0;
    text_set(gen, len, cap, full + skip, fl - skip);
    free(full);
    if (nul) w->frozen = 1;
}

static void text_advance(TextWindow *w, const Tokenizer *tok, const int32_t *all, size_t n,
                         const char *prompt_text, size_t prompt_len, char **gen, size_t *len,
                         size_t *cap) {
    if (w->frozen) return;
    size_t tl;
    int nul;
    char *t = decode_c(tok, all + w->start, n - w->start, &tl, &nul);
    if (nul || tl < w->len || memcmp(t, w->text, w->len)) {
        free(t);
        text_full(w, tok, all, n, prompt_text, prompt_len, gen, len, cap);
        if (!w->frozen) window_at(w, tok, all, n, *len);
        return;
    }
    int tail = ends_with_replacement(t, tl);
    size_t body = tail ? tl - 3 : tl; /* final bytes of the window text */
    size_t add = body - w->len;
    size_t want = w->done + add + (tail ? 3 : 0);
    if (want + 1 > *cap) {
        *cap = 2 * (want + 1);
        *gen = xrealloc(*gen, *cap);
    }
    memcpy(*gen + w->done, t + w->len, add + (tail ? 3 : 0));
    w->done += add;
    *len = want;
    (*gen)[*len] = '\0';
    if (n - w->start > 32) {
        free(t);
        window_at(w, tok, all, n, *len);
    } else {
        free(w->text);
        w->text = t;
        w->len = body;
    }
}

/* One sequence being generated: its ids, its text so far and what has been streamed. */
typedef struct GenSeq {
    int32_t *all; /* prompt + generated ids */
    size_t n_all, n_prompt;
    char *prompt_text, *gen_text;
    size_t prompt_len, gen_len, gen_cap, emitted;
    TextWindow tw;
    GenerateResult *res;
    float *lp_row; /* top_logprobs: the logits as the model gave them (the sampler edits them) */
    size_t lp_cap;
} GenSeq;

static void seq_begin(GenSeq *q, const Tokenizer *tok, const int32_t *prompt, size_t n_prompt,
                      const GenerateOptions *opt, GenerateResult *res) {
    memset(q, 0, sizeof *q);
    memset(res, 0, sizeof *res);
    q->res = res;
    size_t cap = n_prompt + (size_t)opt->max_new_tokens + 1;
    q->all = xmalloc(sizeof(int32_t) * cap);
    memcpy(q->all, prompt, sizeof(int32_t) * n_prompt);
    q->n_all = q->n_prompt = n_prompt;
    q->prompt_text = tokenizer_decode(tok, prompt, n_prompt, 1);
    q->prompt_len = strlen(q->prompt_text);
    q->gen_text = xstrdup("");
    q->gen_cap = 1;
    /* the prompt's own text, as the whole-sequence decode saw it (a NUL freezes it) */
    text_full(&q->tw, tok, q->all, q->n_all, q->prompt_text, q->prompt_len, &q->gen_text,
              &q->gen_len, &q->gen_cap);
    if (!q->tw.frozen) window_at(&q->tw, tok, q->all, q->n_all, q->gen_len);
}

/* The next token from row (V logits, which the sampler may change); with opt->top_logprobs it
 * also appends the token's log-probabilities under the model's own distribution to q->res. */
static int seq_sample(GenSeq *q, Sampler *s, float *row, const GenerateOptions *opt) {
    int k = opt->top_logprobs < GEN_LOGPROBS_MAX ? opt->top_logprobs : GEN_LOGPROBS_MAX;
    if (k <= 0) return sampler_sample(s, row, q->all, q->n_all);
    int V = s->V;
    if (!q->lp_row) q->lp_row = xmalloc(sizeof(float) * (size_t)V);
    memcpy(q->lp_row, row, sizeof(float) * (size_t)V);
    int t = sampler_sample(s, row, q->all, q->n_all);
    const float *x = q->lp_row;
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if ((double)x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)x[i] - mx);
    double lse = mx + log(sum);
    GenerateResult *res = q->res;
    if (res->n_lp == q->lp_cap) {
        q->lp_cap = q->lp_cap ? 2 * q->lp_cap : 64;
        res->lp = xrealloc(res->lp, sizeof(GenLogprob) * q->lp_cap);
    }
    GenLogprob *e = &res->lp[res->n_lp++];
    memset(e, 0, sizeof *e);
    e->id = t;
    e->logprob = (float)((double)x[t] - lse);
    for (int i = 0; i < V; i++) { /* the k largest, by insertion; NaN never enters */
        if (!(x[i] == x[i]) || (e->n == k && !(x[i] > e->top_logprob[k - 1]))) continue;
        int j = e->n < k ? e->n++ : k - 1;
        for (; j > 0 && x[i] > e->top_logprob[j - 1]; j--) {
            e->top_logprob[j] = e->top_logprob[j - 1];
            e->top_id[j] = e->top_id[j - 1];
        }
        e->top_logprob[j] = x[i];
        e->top_id[j] = i;
    }
    for (int j = 0; j < e->n; j++)
        e->top_logprob[j] = (float)((double)e->top_logprob[j] - lse);
    return t;
}

/* Takes the sampled token: 1 when the sequence has ended (res->stopped_by set), else 0 (the
 * token is appended and the caller runs it through the model). */
static int seq_step(GenSeq *q, const Tokenizer *tok, int next, const GenerateOptions *opt) {
    GenerateResult *res = q->res;
    int is_eos = 0;
    for (int i = 0; i < opt->n_eos && !opt->ignore_eos; i++)
        is_eos |= next == opt->eos_ids[i];
    if (is_eos) {
        res->stopped_by = 1;
        return 1;
    }
    q->all[q->n_all++] = next;
    res->n_ids++;
    // text so far = decode(prompt + generated) minus the prompt's text, kept incrementally
    text_advance(&q->tw, tok, q->all, q->n_all, q->prompt_text, q->prompt_len, &q->gen_text,
                 &q->gen_len, &q->gen_cap);
    size_t stop_at = q->gen_len;
    int hit = 0;
    for (int i = 0; i < opt->n_stops; i++) {
        const char *f =
                strstr(q->gen_text + (q->emitted > 64 ? q->emitted - 64 : 0), opt->stops[i]);
        if (f && (size_t)(f - q->gen_text) < stop_at) {
            stop_at = (size_t)(f - q->gen_text);
            hit = 1;
        }
    }
    size_t ready = stop_at;
    if (!hit) {
        ready -= stop_holdback(q->gen_text, q->gen_len, opt);
        if (ends_with_replacement(q->gen_text, ready)) ready -= 3;
    }
    if (ready > q->emitted && opt->on_text) {
        if (opt->on_text(opt->user, q->gen_text + q->emitted, ready - q->emitted)) {
            q->emitted = ready;
            res->stopped_by = 3;
            return 1;
        }
    }
    if (ready > q->emitted) q->emitted = ready;
    if (hit) {
        q->gen_text[stop_at] = '\0';
        q->gen_len = stop_at;
        res->stopped_by = 2;
        return 1;
    }
    if ((int)res->n_ids >= opt->max_new_tokens) {
        res->stopped_by = 0;
        return 1;
    }
    return 0;
}

/* Streams what is left (unless a stop string cut it) and hands the ids and text to res. */
static void seq_end(GenSeq *q, const GenerateOptions *opt, int ok) {
    GenerateResult *res = q->res;
    free(q->tw.text);
    free(q->lp_row);
    if (ok && res->stopped_by != 2 && q->gen_len > q->emitted && opt->on_text)
        opt->on_text(opt->user, q->gen_text + q->emitted, q->gen_len - q->emitted);
    res->ids = xmalloc(sizeof(int32_t) * (res->n_ids ? res->n_ids : 1));
    memcpy(res->ids, q->all + q->n_prompt, sizeof(int32_t) * res->n_ids);
    res->text = q->gen_text;
    free(q->all);
    free(q->prompt_text);
}

/* Lookup decoding (GenerateOptions.lookup): the draft is what followed the most recent earlier
 * occurrence of the sequence's last LOOKUP_NGRAM tokens (then of fewer), up to max tokens;
 * returns its length (0: no match). */
#define LOOKUP_NGRAM 3
static int lookup_draft(const int32_t *all, size_t n, int max, int32_t *draft) {
    if (max <= 0) return 0;
    for (int g = LOOKUP_NGRAM; g >= 1; g--) {
        if (n < (size_t)g + 1) continue;
        const int32_t *tail = all + n - g;
        for (size_t at = n - g; at-- > 0;) { /* newest first; the match may overlap the tail */
            if (all[at] != tail[0] || memcmp(all + at, tail, sizeof(int32_t) * (size_t)g)) continue;
            size_t from = at + (size_t)g;
            int d = 0;
            while (d < max && from + (size_t)d < n) {
                draft[d] = all[from + (size_t)d];
                d++;
            }
            return d;
        }
    }
    return 0;
}

/* Cache positions a sequence may fill: the cache, and never past max_position_embeddings
 * (RoPE models would go on at positions they were never trained on). */
static int ctx_limit(const Model *m) {
    int lim = m->cache_T;
    if (m->cfg.max_pos > 0 && m->cfg.max_pos < lim) lim = m->cfg.max_pos;
    return lim;
}

/* The cache a prompt of n tokens plus max_new wants, at most the model's context. */
static int ctx_want(const Model *m, int n, int max_new) {
    long want = (long)n + max_new;
    long most = m->cfg.max_pos > 0 ? (long)m->cfg.max_pos - m->prefix_len : want;
    if (want > most) want = most > n ? most : n; /* a prompt too long is refused below */
    return (int)want;
}

/* The draft length generate_run uses: opt->lookup for greedy decoding, at most LOOKUP_MAX; 0
 * when sampling (a draft checked against sampled tokens would change their distribution). */
static int lookup_len(const Sampler *s, const GenerateOptions *opt) {
    if (opt->lookup <= 0 || s->temperature > 0) return 0;
    return opt->lookup < LOOKUP_MAX ? opt->lookup : LOOKUP_MAX;
}

int generate_run(Model *m, const Tokenizer *tok, Sampler *s, const int32_t *prompt, size_t n_prompt,
                 const GenerateOptions *opt, GenerateResult *res, TunaErr *err) {
    memset(res, 0, sizeof *res);
    int V = m->cfg.V;
    if (n_prompt == 0) return tuna_errf(err, TUNA_EINVAL, "empty prompt (no tokens)");
    int want = ctx_want(m, (int)n_prompt, opt->max_new_tokens), look = lookup_len(s, opt);
    int act = (int)n_prompt < 512 ? (int)n_prompt : 512;
    if (act < look + 1) act = look + 1; /* a draft runs as look + 1 rows */
    if (m->cache_T - m->prefix_len < want || m->act_T < act) {
        int rc = model_reserve(m, want, act, err);
        if (rc) return rc;
    }
    model_reset(m);
    int lim = ctx_limit(m);
    if ((int)n_prompt + m->prefix_len > lim)
        return tuna_errf(err, TUNA_EINVAL, "prompt of %zu tokens exceeds the model's context (%d)",
                         n_prompt, lim - m->prefix_len);
    float *logits = xmalloc(sizeof(float) * (size_t)V * (size_t)(look + 1));
    int32_t feed[LOOKUP_MAX + 1];
    GenSeq q;
    seq_begin(&q, tok, prompt, n_prompt, opt, res);
    double t0 = time_now(), t1 = t0;
    int rc = model_forward(m, prompt, (int)n_prompt, logits, 0, err), pending = -1;
    while (!rc) {
        if ((int)res->n_ids >= opt->max_new_tokens) {
            res->stopped_by = 0;
            break;
        }
        int next = pending >= 0 ? pending : seq_sample(&q, s, logits, opt);
        pending = -1;
        if (res->n_ids == 0) t1 = time_now();
        if (seq_step(&q, tok, next, opt)) break;
        if (m->n_past >= lim) {
            res->stopped_by = 4;
            break;
        }
        /* lookup decoding: the tokens that followed the last occurrence of the newest n-gram,
         * checked in one pass; the model's own greedy token decides at each position */
        int most = look, room = lim - m->n_past - 1;
        int left = opt->max_new_tokens - (int)res->n_ids - 1;
        if (room < most) most = room;
        if (left < most) most = left;
        int d = lookup_draft(q.all, q.n_all, most, feed + 1);
        if (!d) {
            rc = model_forward(m, &q.all[q.n_all - 1], 1, logits, 0, err);
            continue;
        }
        feed[0] = q.all[q.n_all - 1];
        res->n_drafted += (size_t)d;
        int base = m->n_past, stop = 0, j = 0;
        rc = model_forward(m, feed, d + 1, logits, 1, err);
        if (rc) break;
        for (; j < d; j++) { /* row j predicts the token after feed[j] */
            int t = seq_sample(&q, s, logits + (size_t)j * V, opt);
            if (t != feed[j + 1]) {
                pending = t; /* the model's own token here: the next one */
                break;
            }
            res->n_accepted++;
            if ((stop = seq_step(&q, tok, t, opt))) break;
        }
        if (stop) break;
        /* the cache keeps feed[0..j], the tokens the model agreed with; the rest is dropped */
        m->n_past = base + j + 1;
        if (j == d) memcpy(logits, logits + (size_t)d * V, sizeof(float) * (size_t)V);
    }
    double t2 = time_now();
    seq_end(&q, opt, !rc);
    res->prefill_s = t1 - t0;
    res->decode_s = t2 - t1;
    free(logits);
    return rc;
}

int generate_batch(Model *m, const Tokenizer *tok, Sampler *s, const int32_t *const *prompts,
                   const size_t *n_prompts, int B, const GenerateOptions *opt, GenerateResult *res,
                   TunaErr *err) {
    for (int i = 0; i < B; i++)
        memset(&res[i], 0, sizeof res[i]);
    if (B < 1) return 0;
    int V = m->cfg.V, longest = 0, max_prompt = 0;
    for (int i = 0; i < B; i++) {
        if (n_prompts[i] == 0)
            return tuna_errf(err, TUNA_EINVAL, "prompt %d is empty (no tokens)", i);
        int w = ctx_want(m, (int)n_prompts[i], opt->max_new_tokens);
        longest = w > longest ? w : longest;
        max_prompt = (int)n_prompts[i] > max_prompt ? (int)n_prompts[i] : max_prompt;
    }
    int act = max_prompt < 512 ? max_prompt : 512;
    int rc = model_reserve_slots(m, B, longest, act > B ? act : B, err);
    if (rc) return rc;
    int lim = ctx_limit(m);
    for (int i = 0; i < B; i++)
        if ((int)n_prompts[i] + m->prefix_len > lim)
            return tuna_errf(err, TUNA_EINVAL,
                             "prompt of %zu tokens exceeds the model's context (%d)", n_prompts[i],
                             lim - m->prefix_len);
    float *logits = xmalloc(sizeof(float) * (size_t)V * (size_t)B);
    GenSeq *q = xcalloc((size_t)B, sizeof *q);
    int *active = xmalloc(sizeof(int) * (size_t)B);
    int32_t *next = xmalloc(sizeof(int32_t) * (size_t)B);
    double t0 = time_now();
    int n_active = 0;
    for (int i = 0; i < B && !rc; i++) {
        seq_begin(&q[i], tok, prompts[i], n_prompts[i], opt, &res[i]);
        model_use_slot(m, i);
        model_reset(m);
        rc = model_forward(m, prompts[i], (int)n_prompts[i], logits + (size_t)i * V, 0, err);
        if (!rc) active[n_active++] = i;
    }
    double t1 = time_now();
    /* row r of logits belongs to sequence active[r] (after the prompts, active[r] == r) */
    while (!rc && n_active) {
        int n = 0;
        for (int r = 0; r < n_active; r++) {
            int i = active[r];
            GenSeq *qi = &q[i];
            float *li = logits + (size_t)r * V;
            if ((int)res[i].n_ids >= opt->max_new_tokens) {
                res[i].stopped_by = 0;
                continue;
            }
            int tkn = seq_sample(qi, s, li, opt);
            if (seq_step(qi, tok, tkn, opt)) continue;
            if (model_slot_past(m, i) >= lim) {
                res[i].stopped_by = 4;
                continue;
            }
            active[n] = i; /* compacted in place: n <= r */
            next[n] = tkn;
            n++;
        }
        n_active = n;
        if (n) rc = model_decode_slots(m, n, active, next, logits, err);
    }
    double t2 = time_now();
    for (int i = 0; i < B; i++) {
        if (!q[i].res) continue; /* not begun (an earlier prompt failed) */
        seq_end(&q[i], opt, !rc);
    }
    res[0].prefill_s = t1 - t0;
    res[0].decode_s = t2 - t1;
    free(logits);
    free(q);
    free(active);
    free(next);
    model_use_slot(m, 0);
    return rc;
}

void generate_result_free(GenerateResult *res) {
    if (!res) return;
    free(res->ids);
    free(res->text);
    free(res->lp);
    res->ids = NULL;
    res->text = NULL;
    res->lp = NULL;
    res->n_lp = 0;
}

// --- the stop set

void stopset_init(StopSet *st, const Model *m, const Tokenizer *tok, const Template *tpl) {
    memset(st, 0, sizeof *st);
    for (int i = 0; i < m->cfg.n_eos && i < CONFIG_MAX_EOS; i++)
        st->eos[st->n_eos++] = m->cfg.eos_ids[i];
    if (!st->n_eos && tokenizer_eos_id(tok) >= 0) st->eos[st->n_eos++] = tokenizer_eos_id(tok);
    if (!tpl) return;
    int teos = template_eos_id(tpl, tok);
    int have = 0;
    for (int i = 0; i < st->n_eos; i++)
        have |= st->eos[i] == teos;
    if (teos >= 0 && !have) st->eos[st->n_eos++] = teos;
    const char *const *words;
    int n = template_stop_words(tpl, &words);
    for (int i = 0; i < n && st->n_stops < STOPSET_MAX_WORDS; i++)
        if (words[i][0]) st->stops[st->n_stops++] = words[i];
    const char *etext = teos >= 0 ? tokenizer_token_str(tok, teos) : NULL;
    int dup = 0;
    for (int i = 0; i < st->n_stops && etext; i++)
        dup |= !strcmp(st->stops[i], etext);
    if (etext && etext[0] && !dup) st->stops[st->n_stops++] = etext;
}

void stopset_apply(const StopSet *st, GenerateOptions *o) {
    o->eos_ids = st->eos;
    o->n_eos = st->n_eos;
    o->stops = st->stops;
    o->n_stops = st->n_stops;
}

int chat_prompt(const Template *tpl, const Tokenizer *tok, const ChatMessage *msgs, int n,
                int n_keep, int ctx, int max_new, int32_t **ids, size_t *n_ids, int *dropped,
                int *max_new_out, TunaErr *err) {
    ChatMessage *use = xmalloc(sizeof(ChatMessage) * (size_t)(n > 0 ? n : 1));
    int drop = 0, m, rc;
    *ids = NULL;
    *n_ids = 0;
    for (;;) {
        m = 0;
        for (int i = 0; i < n; i++)
            if (i < n_keep || i >= n_keep + drop) use[m++] = msgs[i];
        free(*ids);
        *ids = NULL;
        if ((rc = template_encode_prompt(tpl, tok, use, m, ids, n_ids, err))) break;
        if (ctx <= 0 || (int64_t)*n_ids + max_new <= ctx || m - n_keep < 3) break;
        drop += 2; /* the history no longer fits: leave out the oldest exchange */
    }
    free(use);
    if (!rc && ctx > 0 && (int64_t)*n_ids >= ctx)
        rc = tuna_errf(err, TUNA_EINVAL,
                       "the conversation is %zu tokens, the model's context is %d", *n_ids, ctx);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
        return rc;
    }
    *dropped = drop;
    *max_new_out = ctx > 0 && (int64_t)*n_ids + max_new > ctx ? ctx - (int)*n_ids : max_new;
    return 0;
}

void stopset_cut(char *s, const StopSet *st) {
    char *cut = NULL;
    for (int i = 0; i < st->n_stops; i++) {
        char *f = strstr(s, st->stops[i]);
        if (f && (!cut || f < cut)) cut = f;
    }
    if (cut) *cut = '\0';
}
