/* generate.h: decoding with a KV cache. A Sampler (its own RNG, temperature, top-k, top-p,
 * repetition penalty) picks each next token; generate_run feeds the prompt, samples until
 * max_new tokens, an EOS id or a stop string, and streams the text through a callback.
 * One thread at a time per Model. */
#ifndef TUNA_SRC_GENERATE_H
#define TUNA_SRC_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "template.h"
#include "tokenizer.h"

typedef struct Sampler {
    uint64_t rng;             /* xorshift64* state; seeded by sampler_init */
    float temperature;        /* 0 = greedy */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float repetition_penalty; /* 1 = off (HF semantics: divide positive logits, multiply negative) */
    float *probs;             /* (V) scratch */
    int32_t *idx;             /* (V) scratch */
    int V;
} Sampler;

void sampler_init(Sampler *s, int V, uint64_t seed, float temperature, int top_k, float top_p,
                  float repetition_penalty);
void sampler_free(Sampler *s);
/* Picks a token from logits (V), which it may modify; history are the tokens so far (for the
 * repetition penalty). */
int sampler_sample(Sampler *s, float *logits, const int32_t *history, size_t n_history);
/* The first index of the largest of x[0..n) (NaN never wins; 0 when x[0] is NaN). */
int argmax_first(const float *x, int n);
/* Uniform float in [0,1) from the sampler's RNG. */
float sampler_uniform(Sampler *s);

typedef struct GenerateOptions {
    int max_new_tokens;
    int ignore_eos;         /* keep going past EOS ids */
    const int32_t *eos_ids; /* stop ids (model's generation_config) */
    int n_eos;
    const char *const *stops; /* stop strings: generation ends where one appears, text cut there */
    int n_stops;
    /* Called with each new piece of text (UTF-8, may be several tokens' worth); return
     * non-zero to stop. May be NULL. */
    int (*on_text)(void *user, const char *text, size_t len);
    void *user;
    /* Greedy decoding only (ignored when sampling): up to this many draft tokens, taken from
     * what followed the last earlier occurrence of the newest n-gram (prompt lookup), are run
     * through the model in one pass and kept while they equal its own greedy choice. The ids
     * are those of plain decoding (on the cpu backend, where a few rows at once compute each
     * row exactly as one); 0 = off, at most LOOKUP_MAX. */
    int lookup;
    /* 0 = off; else GenerateResult.lp gets, for each sampled token, its log-probability and
     * the top_logprobs most likely tokens' (at most GEN_LOGPROBS_MAX) under the model's own
     * distribution: the log-softmax of its logits, before temperature, repetition penalty,
     * top-k and top-p. */
    int top_logprobs;
} GenerateOptions;

#define LOOKUP_MAX       15
#define GEN_LOGPROBS_MAX 20

/* One sampled token's log-probabilities (GenerateOptions.top_logprobs). */
typedef struct GenLogprob {
    int32_t id;    /* the sampled token */
    float logprob; /* its log-probability */
    int n;         /* entries in top: the most likely first (ties: the lower id first) */
    int32_t top_id[GEN_LOGPROBS_MAX];
    float top_logprob[GEN_LOGPROBS_MAX];
} GenLogprob;

/* When a reply ends: the one stop set of chat, eval, generate, the Chat screen and a training
 * run's samples. eos: the model's EOS ids (generation_config.json / config.json), else the
 * tokenizer's EOS, plus the template's EOS id (template_eos_id) when not among them. stops:
 * the template's non-empty stop words (at most STOPSET_MAX_WORDS), plus the text of the
 * template's EOS token when not among them. Strings are borrowed from tpl and tok. */
#define STOPSET_MAX_WORDS 16
typedef struct StopSet {
    int32_t eos[CONFIG_MAX_EOS + 1];
    int n_eos;
    const char *stops[STOPSET_MAX_WORDS + 1];
    int n_stops;
} StopSet;

/* tpl may be NULL (plain text generation): then only the EOS ids, no stop strings. */
void stopset_init(StopSet *st, const Model *m, const Tokenizer *tok, const Template *tpl);
/* Points o's eos_ids, n_eos, stops and n_stops at st (which must outlive o's use). */
void stopset_apply(const StopSet *st, GenerateOptions *o);
/* Cuts s (in place) where the first of st's stop strings starts. */
void stopset_cut(char *s, const StopSet *st);

/* The context policy of a chat reply, one for `tuna chat` and the TUI's Chat: msgs[0..n)
 * (the newest a user message) encoded with tpl for a reply of up to max_new tokens within a
 * context of ctx tokens (0: no limit). While prompt + max_new does not fit and the messages
 * after the first n_keep (the system prompt, which is always kept) hold more than the newest
 * exchange, the oldest user/assistant pair after them is left out. On success *ids (malloc'd)
 * and *n_ids are the prompt, *dropped the number of messages left out (from index n_keep: the
 * caller may forget them) and *max_new_out max_new clipped to what the context leaves. A prompt
 * that leaves no room for a reply is a one-line error. */
int chat_prompt(const Template *tpl, const Tokenizer *tok, const ChatMessage *msgs, int n,
                int n_keep, int ctx, int max_new, int32_t **ids, size_t *n_ids, int *dropped,
                int *max_new_out, TunaErr *err);

typedef struct GenerateResult {
    int32_t *ids; /* generated ids (malloc'd, caller frees), EOS not included */
    size_t n_ids;
    char *text;       /* decoded generated text (malloc'd), cut at a stop string */
    int stopped_by;   /* 0 = max tokens, 1 = EOS, 2 = stop string, 3 = callback, 4 = context full
                       (max_position_embeddings reached) */
    size_t n_drafted; /* lookup decoding: draft tokens checked, and those kept */
    size_t n_accepted;
    GenLogprob *lp; /* top_logprobs: one per sampled token, in order (malloc'd); a final EOS
                         id, not in ids, has one too */
    size_t n_lp;
    double prefill_s; /* seconds for the prompt */
    double decode_s;  /* seconds for tokens after the first */
} GenerateResult;

/* Runs the prompt ids through the model (from an empty cache) and generates. The model must
 * have been reserved for prompt + max_new_tokens positions (generate_run reserves if not). */
int generate_run(Model *m, const Tokenizer *tok, Sampler *s, const int32_t *prompt, size_t n_prompt,
                 const GenerateOptions *opt, GenerateResult *res, TunaErr *err);

/* Generates for B prompts at once, each in its own KV cache slot (model_reserve_slots, then
 * model_decode_slots: the weights are read once per step for all of them). res (B) are filled
 * as generate_run fills them, with the batch's prefill and decode seconds in res[0]. With a
 * greedy sampler on the cpu backend and B <= 16 every sequence gets exactly the ids
 * generate_run gives it alone; a sampling sampler draws for the sequences in turn.
 * opt->on_text is called per sequence as it would be alone (pieces of different sequences
 * interleave). */
int generate_batch(Model *m, const Tokenizer *tok, Sampler *s, const int32_t *const *prompts,
                   const size_t *n_prompts, int B, const GenerateOptions *opt, GenerateResult *res,
                   TunaErr *err);
void generate_result_free(GenerateResult *res);

/* Monotonic seconds. */
double time_now(void);

#endif
