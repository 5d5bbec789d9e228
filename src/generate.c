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

int sampler_sample(Sampler *s, float *logits, const int32_t *history, size_t n_history) {
    int V = s->V;
    if (s->repetition_penalty != 1.0f && s->repetition_penalty > 0)
        for (size_t i = 0; i < n_history; i++) {
            int id = history[i];
            if (id < 0 || id >= V) continue;
            /* each id once: HF gathers the logits, penalizes, scatters back */
            if (logits[id] != logits[id]) continue;
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++) seen = history[j] == id;
            if (seen) continue;
            logits[id] = logits[id] > 0 ? logits[id] / s->repetition_penalty
                                        : logits[id] * s->repetition_penalty;
        }
    if (s->temperature <= 0) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) {
        logits[i] /= s->temperature;
        if (logits[i] > mx) mx = logits[i];
    }
    double sum = 0;
    for (int i = 0; i < V; i++) sum += (double)(s->probs[i] = expf(logits[i] - mx));
    for (int i = 0; i < V; i++) s->probs[i] = (float)((double)s->probs[i] / sum);
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
        for (int i = 0; i < n; i++) tot += (double)s->probs[s->idx[i]];
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

int generate_run(Model *m, const Tokenizer *tok, Sampler *s, const int32_t *prompt,
                 size_t n_prompt, const GenerateOptions *opt, GenerateResult *res, TunaErr *err) {
    memset(res, 0, sizeof *res);
    int V = m->cfg.V;
    if (n_prompt == 0) return tuna_errf(err, TUNA_EINVAL, "empty prompt (no tokens)");
    int want = (int)n_prompt + opt->max_new_tokens;
    if (m->cache_T - m->prefix_len < want || m->act_T < (int)n_prompt) {
        int rc = model_reserve(m, want, (int)n_prompt < 512 ? (int)n_prompt : 512, err);
        if (rc) return rc;
    }
    model_reset(m);
    if ((int)n_prompt + m->prefix_len > m->cache_T)
        return tuna_errf(err, TUNA_EINVAL, "prompt of %zu tokens exceeds the model's context (%d)",
                         n_prompt, m->cache_T);
    size_t cap = n_prompt + (size_t)opt->max_new_tokens + 1;
    int32_t *all = xmalloc(sizeof(int32_t) * cap);
    memcpy(all, prompt, sizeof(int32_t) * n_prompt);
    size_t n_all = n_prompt;
    float *logits = xmalloc(sizeof(float) * (size_t)V);
    char *prompt_text = tokenizer_decode(tok, prompt, n_prompt, 1);
    size_t prompt_len = strlen(prompt_text), emitted = 0;
    char *gen_text = xstrdup("");
    size_t gen_len = 0;
    double t0 = time_now(), t1 = t0;
    int rc = model_forward(m, prompt, (int)n_prompt, logits, 0, err);
    while (!rc) {
        if ((int)res->n_ids >= opt->max_new_tokens) {
            res->stopped_by = 0;
            break;
        }
        int next = sampler_sample(s, logits, all, n_all);
        if (res->n_ids == 0) t1 = time_now();
        int is_eos = 0;
        for (int i = 0; i < opt->n_eos && !opt->ignore_eos; i++) is_eos |= next == opt->eos_ids[i];
        if (is_eos) {
            res->stopped_by = 1;
            break;
        }
        all[n_all++] = next;
        res->n_ids++;
        // text so far = decode(prompt + generated) minus the prompt's text
        free(gen_text);
        char *full = tokenizer_decode(tok, all, n_all, 1);
        size_t fl = strlen(full);
        size_t skip = fl >= prompt_len && !memcmp(full, prompt_text, prompt_len) ? prompt_len : 0;
        gen_text = xstrdup(full + skip);
        gen_len = fl - skip;
        free(full);
        size_t stop_at = gen_len;
        int hit = 0;
        for (int i = 0; i < opt->n_stops; i++) {
            const char *f = strstr(gen_text + (emitted > 64 ? emitted - 64 : 0), opt->stops[i]);
            if (f && (size_t)(f - gen_text) < stop_at) {
                stop_at = (size_t)(f - gen_text);
                hit = 1;
            }
        }
        size_t ready = stop_at;
        if (!hit) {
            ready -= stop_holdback(gen_text, gen_len, opt);
            if (ends_with_replacement(gen_text, ready)) ready -= 3;
        }
        if (ready > emitted && opt->on_text) {
            if (opt->on_text(opt->user, gen_text + emitted, ready - emitted)) {
                emitted = ready;
                res->stopped_by = 3;
                break;
            }
        }
        if (ready > emitted) emitted = ready;
        if (hit) {
            gen_text[stop_at] = '\0';
            gen_len = stop_at;
            res->stopped_by = 2;
            break;
        }
        if ((int)res->n_ids >= opt->max_new_tokens) {
            res->stopped_by = 0;
            break;
        }
        if (m->n_past >= m->cache_T) {
            res->stopped_by = 4;
            break;
        }
        rc = model_forward(m, &all[n_all - 1], 1, logits, 0, err);
    }
    double t2 = time_now();
    if (!rc && res->stopped_by != 2 && gen_len > emitted && opt->on_text)
        opt->on_text(opt->user, gen_text + emitted, gen_len - emitted);
    res->prefill_s = t1 - t0;
    res->decode_s = t2 - t1;
    res->ids = xmalloc(sizeof(int32_t) * (res->n_ids ? res->n_ids : 1));
    memcpy(res->ids, all + n_prompt, sizeof(int32_t) * res->n_ids);
    res->text = gen_text;
    free(all);
    free(logits);
    free(prompt_text);
    return rc;
}

void generate_result_free(GenerateResult *res) {
    if (!res) return;
    free(res->ids);
    free(res->text);
    res->ids = NULL;
    res->text = NULL;
}
