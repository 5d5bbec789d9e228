/* events.h: a training run's events, the one struct the trainer writes to metrics.jsonl and the
 * workbench (ui/source.c, ui/runs.c) and `tuna watch` read back.
 *
 * metrics.jsonl holds one JSON object a line: {"type": "start" | "step" | "eval" | "sample" |
 * "log" | "checkpoint" | "state" | "done", ...fields}. Which fields a type carries, their JSON
 * keys and their order are one table in events.c, used by both event_json (the writer) and
 * event_parse (the reader), so the two cannot disagree. A number the line does not carry is
 * NaN (doubles) or -1 (counts); a string it does not carry is "". A step's or an eval's further
 * numbers (an objective's own metrics, such as DPO's rewards/margins, eval_rewards/margins) ride
 * in metric[]; the reader puts any numeric key it does not know there, so a new objective needs
 * no new field.
 * Pure functions; any thread. */
#ifndef TUNA_SRC_EVENTS_H
#define TUNA_SRC_EVENTS_H

#include <stddef.h>

typedef enum EventType {
    EV_NONE,
    EV_START,      /* run, model, method, dataset, total_steps, epochs, the setup's sizes, lr */
    EV_STEP,       /* step, total_steps, epoch, loss, lr, grad_norm, throughput, elapsed, eta */
    EV_EVAL,       /* step, epoch, eval_loss, perplexity */
    EV_SAMPLE,     /* step, name = the prompt, text, seconds */
    EV_LOG,        /* level (0 info, 1 warn, 2 error), text */
    EV_CHECKPOINT, /* step, name = the checkpoint's folder */
    EV_STATE,      /* paused */
    EV_DONE,       /* step, name = finished | stopped | error, text, best_eval_loss */
    EV_RESET       /* not in files: a reader restarted from the top (the UI clears its history) */
} EventType;

#define EVENT_NAME_MAX    1024
#define EVENT_TEXT_MAX    8192 /* a longer sample text or message is cut (at a UTF-8 boundary) */
#define EVENT_MAX_METRICS 16

typedef struct Event {
    EventType type;
    long step, total_steps;
    double time, epoch;
    // start
    char run[EVENT_NAME_MAX], model[EVENT_NAME_MAX], method[64], dataset[EVENT_NAME_MAX];
    double epochs, lr;
    long start_step, train_examples, val_examples, trainable_params, total_params, seq_len;
    const char *config; /* start: the resolved config, a JSON object's text; written only (the
                           reader leaves it NULL) */
    // step
    double loss, grad_norm, tokens_per_s, real_tok_s, elapsed, eta;
    long real_tokens, tokens, skipped_steps; /* tokens: the step's non-pad tokens */
    int n_metrics;
    char metric_name[EVENT_MAX_METRICS][48];
    double metric[EVENT_MAX_METRICS];
    // eval, done
    double eval_loss, perplexity, best_eval_loss;
    // sample, checkpoint, done, log
    char name[EVENT_NAME_MAX]; /* sample: the prompt; checkpoint: its folder; done: status */
    char text[EVENT_TEXT_MAX]; /* sample: the generated text; log and done: the message */
    double seconds;            /* sample: generation time of the step's prompts together */
    int level;                 /* log */
    int paused;                /* state */
} Event;

/* Empties ev and sets its type: every field absent. */
void event_clear(Event *ev, EventType type);
/* Copies s into the string field dst of capacity cap, cut at a UTF-8 boundary. */
void event_str(char *dst, size_t cap, const char *s);
/* Adds a step's or an eval's named metric (ignored past EVENT_MAX_METRICS). */
void event_metric(Event *ev, const char *name, double value);

/* The line for ev (no newline), malloc'ed; NULL only for an EV_NONE or EV_RESET event. */
char *event_json(const Event *ev);
/* Parses one metrics.jsonl line into *ev (an unknown type gives EV_NONE). Returns 0, or -1
 * when the line is not a JSON object. */
int event_parse(const char *line, size_t len, Event *ev);

#endif
