#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../kernels/backend.h"
#include "control.h"
#include "dataset.h"
#include "evalloss.h"
#include "events.h"
#include "generate.h"
#include "model.h"
#include "model_train.h"
#include "optim.h"
#include "peft.h"
#include "safetensors.h"
#include "template.h"
#include "tokenizer.h"
#include "xalloc.h"

// --- the options table: one row per flag / JSON key (train.h: TrainOption)

#define OFF(k) offsetof(TrainConfig, k)
#define SZ(k)  sizeof(((TrainConfig *)0)->k)
/* ranges: lo..hi; ABOVE: > lo; FROM: >= lo; OPEN: > lo and <= hi; NONE: any integer / finite number */
#define RANGE(lo, hi) 1, lo, hi, 0
#define ABOVE(lo)     1, lo, HUGE_VAL, 1
#define FROM(lo)      1, lo, HUGE_VAL, 0
#define OPEN(lo, hi)  1, lo, hi, 1
#define NONE          0, 0, 0, 0
#define S(k, m, d, h)                                                                              \
    { #k, TRAIN_OPT_STR, OFF(k), SZ(k), d, h, NULL, m, NONE, 0 }
#define I(k, m, rg, d, h)                                                                          \
    { #k, TRAIN_OPT_INT, OFF(k), sizeof(int), d, h, NULL, m, rg, 0 }
#define D(k, m, rg, d, h)                                                                          \
    { #k, TRAIN_OPT_DBL, OFF(k), sizeof(double), d, h, NULL, m, rg, 0 }
#define B(k, m, d, h)                                                                              \
    { #k, TRAIN_OPT_BOOL, OFF(k), sizeof(int), d, h, NULL, m, NONE, 0 }
#define B3(k, alt, m, d, h)                                                                        \
    { #k, TRAIN_OPT_BOOL, OFF(k), sizeof(int), d, h, alt, m, NONE, 0 }
#define ALL  TRAIN_M_ALL
#define LORA TRAIN_M_LORA
#define BIG  1e9

static const TrainOption fields[] = {
        S(model, ALL, "models/stories260K",
          "model folder (config.json, model.safetensors, tokenizer.json)"),
        S(dataset, ALL, "identity", "dataset name(s) from dataset_info.json, comma-separated"),
        S(dataset_dir, ALL, "datasets", "folder holding dataset_info.json"),
        {"template", TRAIN_OPT_STR, OFF(template_name), SZ(template_name), "auto",
         "prompt template (templates/NAME.json), or auto: the one matching the model's own", NULL,
         ALL, NONE, 0},
        S(templates_dir, ALL, "templates", "folder of template files"),
        S(method, ALL, "lora",
          "full | freeze | lora | ptuning (P-tuning v2: trainable key/value prefixes)"),
        S(stage, ALL, "sft", "sft (supervised) | pt (plain text, every token trains)"),
        I(lora_rank, LORA, RANGE(1, 4096), "8", "LoRA rank r"),
        D(lora_alpha, LORA, OPEN(0, BIG), "16", "LoRA alpha (scale alpha/r)"),
        D(lora_dropout, LORA, RANGE(0, 0.99), "0", "LoRA dropout"),
        S(lora_target, LORA, "all",
          "LoRA target modules, comma-separated (q_proj,v_proj; GPT-2 c_attn), or all: every "
          "linear layer of the blocks (LLaMA-Factory's default)"),
        B(use_rslora, LORA, "false", "rank-stabilized LoRA (scale alpha/sqrt(r))"),
        S(lora_trainable_tokens, LORA, "",
          "LoRA: also train these tokens' embedding rows (PEFT trainable_token_indices): ids, "
          "token "
          "strings, or eos (the token the template ends answers with); needed when the base never "
          "learned that token"),
        I(freeze_layers, TRAIN_M_FREEZE, RANGE(1, 100000), "2",
          "freeze: how many last layers train"),
        I(prefix_tokens, TRAIN_M_PTUNING, RANGE(1, 1024), "16",
          "ptuning: virtual tokens (num_virtual_tokens)"),
        B(prefix_projection, TRAIN_M_PTUNING, "false",
          "ptuning: reparameterize the prefix through an MLP"),
        I(prefix_hidden, TRAIN_M_PTUNING, RANGE(1, 65536), "64",
          "ptuning: hidden size of that MLP (encoder_hidden_size)"),
        D(epochs, ALL, RANGE(0, 100000), "3",
          "passes over the training data (fractional allowed, e.g. 1.5)"),
        I(max_steps, ALL, RANGE(0, BIG), "0",
          "stop after this many optimizer steps (0 = from epochs)"),
        {"lr", TRAIN_OPT_DBL, OFF(lr), sizeof(double), "auto",
         "peak learning rate, or auto: by method and model size, 1e-4 (lora), 2e-5 (full, "
         "freeze), 1e-2 (ptuning) at 100M+ parameters, rising log-linearly to 1e-2, 2e-3, 3e-2 "
         "at 1M and below",
         NULL, ALL, ABOVE(0), 1},
        S(lr_scheduler, ALL, "cosine", "constant | constant_with_warmup | linear | cosine"),
        I(warmup_steps, ALL, RANGE(0, BIG), "0", "warmup steps"),
        D(warmup_ratio, ALL, RANGE(0, 1), "0",
          "warmup as a fraction of all steps (if warmup_steps is 0)"),
        D(weight_decay, ALL, FROM(0), "0", "AdamW weight decay (not on norms and biases)"),
        D(max_grad_norm, ALL, FROM(0), "1.0", "clip the global gradient norm (0 = off)"),
        I(batch_size, ALL, RANGE(1, 65536), "8", "sequences per micro-batch"),
        I(grad_accum, ALL, RANGE(1, 65536), "1", "micro-batches per optimizer step"),
        I(cutoff_len, ALL, RANGE(2, 1048576), "256", "maximum tokens per example"),
        B(gradient_checkpointing, ALL, "false",
          "recompute activations in the backward: less memory, ~1/3 more time"),
        D(val_size, ALL, RANGE(0, BIG), "0.1", "validation split: fraction, or a count if >= 1"),
        I(eval_steps, ALL, RANGE(0, BIG), "20", "evaluate every N steps (0 = at the end only)"),
        I(save_steps, ALL, RANGE(0, BIG), "50", "checkpoint every N steps (0 = only at the end)"),
        I(save_total_limit, ALL, RANGE(0, 1000000), "2", "checkpoints kept"),
        I(logging_steps, ALL, RANGE(1, BIG), "1", "write a step line every N steps"),
        S(sample_prompts, ALL, "Who are you?",
          "fixed prompts for sample generations, separated by | (up to 16, answered together)"),
        I(sample_steps, ALL, RANGE(0, BIG), "0",
          "generate samples every N steps (0 = with each eval)"),
        I(sample_max_tokens, ALL, RANGE(0, 65536), "48", "tokens per sample"),
        S(vars, ALL, "", "dataset placeholders, e.g. name=Tuna,author=Ann"),
        I(max_samples, ALL, RANGE(0, BIG), "0", "use at most N rows per dataset (0 = all)"),
        B(strict, ALL, "false",
          "a bad dataset row or an unfilled {{placeholder}} is fatal (default: skipped or "
          "warned)"),
        B3(packing, "neat", ALL, "false",
           "pack short examples into full rows of cutoff_len: true (they attend to each other, "
           "LLaMA-Factory packing) or neat (positions restart and attention stays inside each "
           "example: neat_packing; the losses equal unpacked training)"),
        B(group_by_length, ALL, "false",
          "batches of examples of similar length (Hugging Face group_by_length): less padding"),
        S(pad_to, ALL, "batch",
          "batch: each batch padded to its own longest example (rounded up to 8); max: every "
          "batch to the longest example of the data (the fixed rows of earlier versions)"),
        B(train_on_prompt, ALL, "false", "sft: the prompt tokens train too, not only the replies"),
        B(mask_history, ALL, "false",
          "sft: only the last reply of a conversation trains (truncation keeps the last turns)"),
        I(seed, ALL, NONE, "42", "seed for data order, LoRA init, dropout and sampling"),
        I(max_bad_steps, ALL, RANGE(1, 1000000), "5",
          "steps with a non-finite loss or gradient are skipped; stop after this many in a row"),
        S(adapter, LORA | TRAIN_M_PTUNING, "",
          "start a new run from this LoRA or ptuning adapter: a PEFT folder or an earlier run "
          "(LLaMA-Factory's adapter_name_or_path); its method, rank, alpha and targets are "
          "kept, optimizer and schedule start fresh (not --resume)"),
        S(output, ALL, "", "run folder (default runs/DATASET-METHOD)"),
        S(backend, ALL, "cpu", "cpu | ref | cuda"),
        I(threads, ALL, RANGE(0, 4096), "0",
          "CPU threads (0 = the cores other processes leave free, followed as it runs)"),
};
#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

int train_option_count(void) {
    return N_FIELDS;
}

const TrainOption *train_option(int i) {
    return i >= 0 && i < N_FIELDS ? &fields[i] : NULL;
}

const TrainOption *train_option_find(const char *key) {
    char k[64];
    snprintf(k, sizeof k, "%s", key);
    for (char *q = k; *q; q++)
        if (*q == '-') *q = '_';
    for (int i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].key, k)) return &fields[i];
    return NULL;
}

unsigned train_method_bit(const char *method) {
    static const char *const names[] = {"full", "freeze", "lora", "ptuning"};
    for (unsigned i = 0; i < 4; i++)
        if (!strcmp(method, names[i])) return 1u << i;
    return 0;
}

const char *train_config_key(int i, int *is_bool, const char **help) {
    if (i < 0 || i >= N_FIELDS) return NULL;
    if (is_bool) *is_bool = fields[i].type == TRAIN_OPT_BOOL;
    if (help) *help = fields[i].help;
    return fields[i].key;
}

/* "--lr: must be a number > 0, got -1" (where "--": the flag; else "FILE: " and the key). */
static int range_err(const TrainOption *f, const char *raw, const char *where, TunaErr *err) {
    char name[80], what[120];
    snprintf(name, sizeof name, "%s%s", where, f->key);
    if (!strcmp(where, "--"))
        for (char *q = name + 2; *q; q++)
            if (*q == '_') *q = '-';
    const char *kind = f->type == TRAIN_OPT_INT ? "an integer" : "a number";
    if (!f->ranged)
        snprintf(what, sizeof what, "%s", kind);
    else if (f->hi == HUGE_VAL)
        snprintf(what, sizeof what, "%s %s %.10g%s", kind, f->lo_open ? ">" : ">=", f->lo,
                 f->is_auto ? " or auto" : "");
    else
        snprintf(what, sizeof what, "%s from %.10g to %.10g", kind, f->lo, f->hi);
    return tuna_errf(err, TUNA_EINVAL, "%s: must be %s, got %s", name, what, raw);
}

static int in_range(const TrainOption *f, double x) {
    return !f->ranged || ((f->lo_open ? x > f->lo : x >= f->lo) && x <= f->hi);
}

static int field_set(TrainConfig *c, const TrainOption *f, const char *v, const char *where,
                     TunaErr *err) {
    char *p = (char *)c + f->off, *end;
    errno = 0;
    switch (f->type) {
    case TRAIN_OPT_STR:
        if (strlen(v) >= f->size)
            return tuna_errf(err, TUNA_EINVAL, "%s%s: value too long", where, f->key);
        memcpy(p, v, strlen(v) + 1);
        return 0;
    case TRAIN_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < -1000000000L || x > 1000000000L ||
            !in_range(f, (double)x))
            return range_err(f, v, where, err);
        *(int *)p = (int)x;
        return 0;
    }
    case TRAIN_OPT_DBL: {
        if (f->is_auto && !strcmp(v, "auto")) {
            *(double *)p = 0; /* 0 stands for auto: the value is chosen when the run starts */
            return 0;
        }
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || !in_range(f, x))
            return range_err(f, v, where, err);
        *(double *)p = x;
        return 0;
    }
    case TRAIN_OPT_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1"))
            *(int *)p = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0"))
            *(int *)p = 0;
        else if (f->alt && !strcmp(v, f->alt))
            *(int *)p = 2;
        else if (f->alt)
            return tuna_errf(err, TUNA_EINVAL, "%s%s: expected true, false or %s, got \"%s\"",
                             where, f->key, f->alt, v);
        else
            return tuna_errf(err, TUNA_EINVAL, "%s%s: expected true or false, got \"%s\"", where,
                             f->key, v);
        return 0;
    }
    return 0;
}

int train_config_check(const TrainConfig *c, TunaErr *err) {
    for (int i = 0; i < N_FIELDS; i++) {
        const TrainOption *f = &fields[i];
        if (!f->ranged || (f->type != TRAIN_OPT_INT && f->type != TRAIN_OPT_DBL)) continue;
        const char *p = (const char *)c + f->off;
        double x = f->type == TRAIN_OPT_INT ? (double)*(const int *)p : *(const double *)p;
        if (f->is_auto && x == 0) continue;
        char raw[64];
        snprintf(raw, sizeof raw, "%.17g", x);
        if (!isfinite(x) || !in_range(f, x)) return range_err(f, raw, "--", err);
    }
    return 0;
}

/* One field's value as text (for diffs). */
static void field_text(const TrainConfig *c, const TrainOption *f, char *out, size_t cap) {
    const char *p = (const char *)c + f->off;
    switch (f->type) {
    case TRAIN_OPT_STR: snprintf(out, cap, "\"%s\"", p); break;
    case TRAIN_OPT_INT: snprintf(out, cap, "%d", *(const int *)p); break;
    case TRAIN_OPT_DBL:
        if (f->is_auto && *(const double *)p == 0)
            snprintf(out, cap, "auto");
        else
            snprintf(out, cap, "%.15g", *(const double *)p);
        break;
    case TRAIN_OPT_BOOL:
        snprintf(out, cap, "%s",
                 *(const int *)p == 2 && f->alt ? f->alt
                 : *(const int *)p              ? "true"
                                                : "false");
        break;
    }
}

int train_config_diff(const TrainConfig *a, const TrainConfig *b, char *out, size_t cap) {
    int n = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < N_FIELDS; i++) {
        const TrainOption *f = &fields[i];
        if (!strcmp(f->key, "output") || !strcmp(f->key, "threads")) continue;
        char x[1100], y[1100];
        field_text(a, f, x, sizeof x);
        field_text(b, f, y, sizeof y);
        if (!strcmp(x, y)) continue;
        size_t o = strlen(out);
        if (o < cap) snprintf(out + o, cap - o, "%s%s %.60s -> %.60s", n ? ", " : "", f->key, x, y);
        n++;
    }
    return n;
}

void train_config_defaults(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_FIELDS; i++)
        field_set(c, &fields[i], fields[i].def, "", NULL);
}

int train_config_set(TrainConfig *c, const char *key, const char *value, TunaErr *err) {
    const TrainOption *f = train_option_find(key);
    if (!f) return tuna_errf(err, TUNA_EINVAL, "unknown option \"%s\"", key);
    return field_set(c, f, value, "--", err);
}

int train_config_load(TrainConfig *c, const char *path, TunaErr *err) {
    char *text = xread_file(path, NULL);
    if (!text) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    cJSON *root = cJSON_Parse(text);
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON near byte %ld", path,
                       at && root == NULL ? (long)(at - text) : 0L);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if (!strcmp(it->string, "history")) continue; /* changes made on resume (a record) */
        const TrainOption *f = train_option_find(it->string);
        if (!f) {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: unknown key \"%s\"", path, it->string);
            goto done;
        }
        char buf[64], where[1100];
        const char *v = buf;
        snprintf(where, sizeof where, "%s: ", path);
        if (cJSON_IsString(it))
            v = it->valuestring;
        else if (cJSON_IsBool(it))
            v = cJSON_IsTrue(it) ? "true" : "false";
        else if (cJSON_IsNumber(it)) {
            if (f->type == TRAIN_OPT_INT && it->valuedouble == floor(it->valuedouble))
                snprintf(buf, sizeof buf, "%.0f", it->valuedouble);
            else
                snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
        } else {
            rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" has the wrong type", path, it->string);
            goto done;
        }
        if ((rc = field_set(c, f, v, where, err))) goto done;
    }
done:
    cJSON_Delete(root);
    free(text);
    return rc;
}

char *train_config_json(const TrainConfig *c) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < N_FIELDS; i++) {
        const char *p = (const char *)c + fields[i].off;
        switch (fields[i].type) {
        case TRAIN_OPT_STR: cJSON_AddStringToObject(o, fields[i].key, p); break;
        case TRAIN_OPT_INT: cJSON_AddNumberToObject(o, fields[i].key, *(const int *)p); break;
        case TRAIN_OPT_DBL:
            if (fields[i].is_auto && *(const double *)p == 0)
                cJSON_AddStringToObject(o, fields[i].key, "auto");
            else
                cJSON_AddNumberToObject(o, fields[i].key, *(const double *)p);
            break;
        case TRAIN_OPT_BOOL:
            if (*(const int *)p == 2 && fields[i].alt)
                cJSON_AddStringToObject(o, fields[i].key, fields[i].alt);
            else
                cJSON_AddBoolToObject(o, fields[i].key, *(const int *)p);
            break;
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

void train_config_help(FILE *f) {
    for (int i = 0; i < N_FIELDS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s", fields[i].key);
        for (char *q = left + 2; *q; q++)
            if (*q == '_') *q = '-';
        fprintf(f, "  %-24s %s%s%s%s\n", left, fields[i].help, *fields[i].def ? " [" : "",
                fields[i].def, *fields[i].def ? "]" : "");
    }
}

// --- the run

typedef struct Run {
    const TrainConfig *cfg;
    const TrainHooks *hooks;
    char dir[1024];
    FILE *metrics, *tlog;
    double t0;
    Backend *be;
    Model *m;
    Tokenizer *tok;
    Template *tpl;
    Dataset *all, *train, *val;
    Batcher batcher;
    int have_batcher;
    TrainState *ts;
    Optim opt;
    int have_opt;
    int B, T, total, warmup, steps_per_epoch, step;
    int pad_multiple; /* --pad-to batch: rows of each batch's longest, rounded up to this */
    SchedType sched;
    double lr; /* the peak learning rate: cfg->lr, or what auto chose */
    double best_eval;
    int best_step;
    double cores_checked; /* follow_free_cores: time of the last check */
    int cores_seen;       /* the free cores that check found (a change needs two in a row) */
    int lock_fd;          /* RUN/.lock, flock'ed while the run writes the folder (-1: none) */
    char **pending;       /* events from before metrics.jsonl is open (the folder untouched) */
    int n_pending;
    int write_errno; /* first failed write of metrics.jsonl / trainer_log.jsonl */
    const char *write_file_name;
    int bar_shown;               /* a progress bar without its newline is on the terminal */
    const struct Objective *obj; /* the stage's step and eval (objectives[]) */
} Run;

typedef struct Objective Objective;
static const Objective *objective_for(const char *stage);

/* Notes the first failed write of a run file: the loop stops the run on it. */
static void note_write(Run *r, FILE *f, const char *name, int ok) {
    if (ok && fflush(f) == 0) return;
    if (!r->write_errno) {
        r->write_errno = errno ? errno : EIO;
        r->write_file_name = name;
    }
}

/* Appends one event to metrics.jsonl (flushed: watchers follow the file) and the hook. */
static void emit(Run *r, const Event *ev) {
    char *line = event_json(ev);
    if (!line) return;
    if (r->metrics) {
        errno = 0;
        note_write(r, r->metrics, "metrics.jsonl", fprintf(r->metrics, "%s\n", line) >= 0);
    } else if (r->n_pending < 256) {
        r->pending = xrealloc(r->pending, sizeof *r->pending * (size_t)(r->n_pending + 1));
        r->pending[r->n_pending++] = xstrdup(line);
    }
    if (r->hooks && r->hooks->on_line) r->hooks->on_line(r->hooks->user, line);
    free(line);
}

static int quiet(const Run *r) {
    return r->hooks && r->hooks->quiet;
}

/* One line on stderr, never inside a progress bar. */
static void say(Run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(Run *r, const char *fmt, ...) {
    if (quiet(r)) return;
    if (r->bar_shown) fputs("\r\033[K", stderr);
    r->bar_shown = 0;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The last event of a run: status finished | stopped | error, the error's message, the best
 * eval loss (NaN: none) and the steps skipped. */
static void emit_done(Run *r, const char *status, const char *msg, double best, int skipped) {
    static Event e;
    event_clear(&e, EV_DONE);
    e.step = r->step;
    event_str(e.name, sizeof e.name, status);
    event_str(e.text, sizeof e.text, msg);
    e.best_eval_loss = best;
    if (skipped) e.skipped_steps = skipped;
    emit(r, &e);
}

/* A log event: level "info" or "warn". */
static void emit_log(Run *r, const char *level, const char *msg) {
    static Event e; /* one run per process at a time; 13 KB off the stack */
    event_clear(&e, EV_LOG);
    e.level = !strcmp(level, "warn");
    event_str(e.text, sizeof e.text, msg);
    emit(r, &e);
    say(r, "tuna: %s", msg);
}

/* A test hook (tests/test_threads.c): TUNA_THREADS_SCHEDULE="1,2,3" runs step N on the N-th
 * count of the list (cycling), whatever --threads says, to show that a run's numbers do not
 * depend on the thread count nor on a change of it mid-run. Logged once; returns 0 when unset
 * or not a list of counts from 1 to 4096. */
static int threads_schedule(Run *r) {
    const char *s = getenv("TUNA_THREADS_SCHEDULE");
    int v[64], n = 0;
    while (s && *s && n < 64) {
        char *end;
        long t = strtol(s, &end, 10);
        if (end == s || t < 1 || t > 4096 || (*end && *end != ',')) return 0;
        v[n++] = (int)t;
        s = *end ? end + 1 : end;
    }
    if (!n) return 0;
    if (r->cores_seen != -1) { /* follow_free_cores's field, unused while the hook rules */
        r->cores_seen = -1;
        char msg[160];
        snprintf(msg, sizeof msg, "test hook TUNA_THREADS_SCHEDULE=%.60s: threads set step by step",
                 getenv("TUNA_THREADS_SCHEDULE"));
        emit_log(r, "info", msg);
    }
    backend_set_threads(r->be, v[r->step % n]);
    return 1;
}

/* With threads 0, training uses the cores other processes leave free, checked at most every
 * half second between steps; a change needs two checks in a row that agree. An OpenMP team that
 * shares a core with another busy thread waits at every barrier for its descheduled member:
 * beside a one-thread `tuna generate` (a chat in the workbench) training ran 3x slower on two
 * threads here than it does alone, and slowed the chat too. */
static void follow_free_cores(Run *r) {
    if (threads_schedule(r)) return;
    double now = time_now();
    if (r->cfg->threads || now - r->cores_checked < 0.5) return;
    r->cores_checked = now;
    int cur = r->be->n_threads;
    backend_set_threads(r->be, BACKEND_THREADS_IDLE);
    int free_now = r->be->n_threads;
    if (free_now == cur || free_now != r->cores_seen) { /* no change, or not confirmed yet */
        r->cores_seen = free_now;
        backend_set_threads(r->be, cur);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "threads %d -> %d (%s)", cur, r->be->n_threads,
             free_now < cur ? "other processes are busy on this machine" : "cores free again");
    emit_log(r, "info", msg);
}

static int mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

static int write_file(const char *path, const char *text) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    ok &= fclose(f) == 0;
    return ok && !rename(tmp, path) ? 0 : -1;
}

// --- evaluation and samples

static int run_eval(Run *r, double *loss, TunaErr *err);

/* --sample-prompts are answered together in one generate_batch (train_run refuses more). */
#define MAX_SAMPLE_PROMPTS 16

static int run_samples(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc0;
    if (!c->sample_prompts[0]) return 0;
    Model *m = r->m;
    int lora = train_setup(r->ts)->method == METHOD_LORA;
    float *pre;
    int P = train_prefix(r->ts, &pre);
    if (P && (rc0 = model_set_prefix(m, pre, P, err))) return rc0;
    ModelLora view; /* the adapter runs unmerged: the base is neither copied nor changed */
    if (lora &&
        ((rc0 = train_lora_view(r->ts, &view, err)) || (rc0 = model_set_lora(m, &view, err)))) {
        if (P) model_set_prefix(m, NULL, 0, NULL);
        return rc0;
    }
    StopSet stop;
    stopset_init(&stop, m, r->tok, r->tpl);
    /* the prompts are answered together (greedy: each gets the answer it would get alone) */
    char *list = xstrdup(c->sample_prompts), *save = NULL, *text[MAX_SAMPLE_PROMPTS];
    int32_t *ids[MAX_SAMPLE_PROMPTS];
    size_t n[MAX_SAMPLE_PROMPTS];
    int k = 0, rc = 0;
    for (char *p = strtok_r(list, "|", &save); p && !rc && k < MAX_SAMPLE_PROMPTS;
         p = strtok_r(NULL, "|", &save)) {
        ChatMessage msg = {"user", p};
        text[k] = p;
        ids[k] = NULL;
        rc = template_encode_prompt(r->tpl, r->tok, &msg, 1, &ids[k], &n[k], err);
        k++;
    }
    if (!rc && k) {
        Sampler s;
        sampler_init(&s, m->cfg.V, (uint64_t)c->seed, 0, 0, 1, 1);
        GenerateOptions o = {.max_new_tokens = c->sample_max_tokens};
        stopset_apply(&stop, &o);
        GenerateResult res[MAX_SAMPLE_PROMPTS];
        double t_gen = time_now();
        rc = generate_batch(m, r->tok, &s, (const int32_t *const *)ids, n, k, &o, res, err);
        t_gen = time_now() - t_gen;
        for (int i = 0; i < k; i++) {
            if (!rc) {
                static Event e;
                event_clear(&e, EV_SAMPLE);
                e.step = r->step;
                event_str(e.name, sizeof e.name, text[i]);
                event_str(e.text, sizeof e.text, res[i].text);
                e.seconds = t_gen; /* the k prompts together */
                emit(r, &e);
                char one[200];
                snprintf(one, sizeof one, "%s", res[i].text);
                for (char *q = one; *q; q++)
                    if (*q == '\n' || *q == '\r' || *q == '\t') *q = ' ';
                say(r, "sample step %d: %.60s -> %s", r->step, text[i], one);
            }
            generate_result_free(&res[i]);
        }
        sampler_free(&s);
    }
    for (int i = 0; i < k; i++)
        free(ids[i]);
    free(list);
    if (lora) model_set_lora(m, NULL, NULL);
    if (P) model_set_prefix(m, NULL, 0, NULL);
    return rc;
}

// --- checkpoints: trainable tensors + optimizer moments + trainer state, atomically

static int save_tensors(const char *path, const TrainParam *tp, int np, float **data,
                        const char *prefix, TunaErr *err) {
    StWriteTensor *wt = xcalloc((size_t)np, sizeof *wt);
    char(*names)[200] = xcalloc((size_t)np, sizeof *names);
    for (int i = 0; i < np; i++) {
        snprintf(names[i], sizeof names[i], "%s%s#%d", prefix, tp[i].name,
                 i); /* GPT-2 parts share a name */
        wt[i].name = names[i];
        wt[i].dtype = ST_F32;
        wt[i].ndim = 1;
        wt[i].shape[0] = (int64_t)tp[i].n;
        wt[i].data = data[i];
    }
    int rc = safetensors_write(path, wt, np, NULL, 0, err);
    free(wt);
    free(names);
    return rc;
}

static int load_tensors(const char *path, const TrainParam *tp, int np, float **data,
                        const char *prefix, TunaErr *err) {
    SafeTensors *st = NULL;
    int rc = safetensors_open(path, &st, err);
    for (int i = 0; i < np && !rc; i++) {
        char nm[220];
        snprintf(nm, sizeof nm, "%s%s#%d", prefix, tp[i].name, i);
        const StTensor *t = safetensors_find(st, nm);
        if (!t || st_tensor_numel(t) != tp[i].n)
            rc = tuna_errf(err, TUNA_EFORMAT,
                           "%s: \"%s\" missing or of the wrong size (another method or model?)",
                           path, nm);
        else
            rc = st_tensor_to_f32(t, data[i], tp[i].n, err);
    }
    safetensors_free(st);
    return rc;
}

static float **host_bufs(const TrainParam *tp, int np) {
    float **h = xcalloc((size_t)np, sizeof *h);
    for (int i = 0; i < np; i++)
        h[i] = xmalloc(sizeof(float) * (tp[i].n ? tp[i].n : 1));
    return h;
}

static void free_bufs(float **h, int np) {
    if (!h) return;
    for (int i = 0; i < np; i++)
        free(h[i]);
    free(h);
}

static int cmp_ckpt(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Steps of the checkpoint-N folders in dir, ascending. */
static int list_ckpts(const char *dir, int *steps, int cap) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        int s;
        char tail;
        if (sscanf(e->d_name, "checkpoint-%d%c", &s, &tail) == 1) steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_ckpt);
    return n;
}

static int save_checkpoint(Run *r, TunaErr *err) {
    char dir[1200], tmp[1300], path[1400];
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, r->step);
    int rc = dir_begin(dir, tmp, sizeof tmp, err);
    if (rc) return rc;
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    float **p = host_bufs(tp, np), **mm = host_bufs(tp, np), **vv = host_bufs(tp, np);
    train_download_params(r->ts, p);
    optim_download(&r->opt, mm, vv);
    snprintf(path, sizeof path, "%s/trainable.safetensors", tmp);
    rc = save_tensors(path, tp, np, p, "", err);
    if (!rc) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        StWriteTensor *wt = xcalloc((size_t)np * 2, sizeof *wt);
        char(*nm)[210] = xcalloc((size_t)np * 2, sizeof *nm);
        for (int i = 0; i < 2 * np; i++) {
            snprintf(nm[i], sizeof nm[i], "%s%s#%d", i < np ? "m." : "v.", tp[i % np].name, i % np);
            wt[i] = (StWriteTensor){.name = nm[i],
                                    .dtype = ST_F32,
                                    .ndim = 1,
                                    .shape = {(int64_t)tp[i % np].n},
                                    .data = i < np ? mm[i] : vv[i - np]};
        }
        rc = safetensors_write(path, wt, 2 * np, NULL, 0, err);
        free(wt);
        free(nm);
    }
    free_bufs(p, np);
    free_bufs(mm, np);
    free_bufs(vv, np);
    if (!rc) { /* a usable artifact in every checkpoint: the adapter, or the HF checkpoint */
        TrainMethod mt = train_setup(r->ts)->method;
        if (mt == METHOD_LORA || mt == METHOD_PTUNING)
            rc = adapter_write(r->ts, tmp, r->cfg->model, err);
        else
            rc = model_write_hf(r->m, tmp, err);
    }
    if (!rc) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "global_step", r->step);
        cJSON_AddNumberToObject(s, "epoch", r->batcher.epoch);
        cJSON_AddNumberToObject(s, "cursor", (double)r->batcher.cursor);
        cJSON_AddNumberToObject(s, "optimizer_t", r->opt.t);
        cJSON_AddNumberToObject(s, "best_eval_loss", isfinite(r->best_eval) ? r->best_eval : -1);
        cJSON_AddNumberToObject(s, "total_steps", r->total);
        cJSON_AddNumberToObject(s, "elapsed", time_now() - r->t0);
        char *txt = cJSON_Print(s);
        cJSON_Delete(s);
        snprintf(path, sizeof path, "%s/trainer_state.json", tmp);
        if (write_file(path, txt)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write", path);
        free(txt);
    }
    if (!rc) rc = dir_commit(tmp, dir, err);
    if (rc) {
        dir_remove(tmp);
        return rc;
    }
    /* rotation counts this run's checkpoints only: a checkpoint-N past the current step is
     * another run's (or a stray folder) and is neither counted nor deleted */
    int steps[4096], n = list_ckpts(r->dir, steps, 4096);
    while (n > 0 && steps[n - 1] > r->step)
        n--;
    for (int i = 0; i + r->cfg->save_total_limit < n && r->cfg->save_total_limit > 0; i++) {
        snprintf(path, sizeof path, "%s/checkpoint-%d", r->dir, steps[i]);
        dir_remove(path);
    }
    static Event e;
    event_clear(&e, EV_CHECKPOINT);
    e.step = r->step;
    snprintf(e.name, sizeof e.name, "checkpoint-%d", r->step);
    emit(r, &e);
    return 0;
}

/* One number of trainer_state.json, range-checked; integer: a whole number. */
static int state_num(const cJSON *s, const char *key, double lo, double hi, int integer,
                     double *out, const char *path, TunaErr *err) {
    const cJSON *v = cJSON_GetObjectItem(s, key);
    if (!cJSON_IsNumber(v)) return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" is missing", path, key);
    double x = v->valuedouble;
    if (!isfinite(x) || x < lo || x > hi || (integer && x != floor(x)))
        return tuna_errf(err, TUNA_EFORMAT, "%s: \"%s\" must be %s from %g to %g, got %g", path,
                         key, integer ? "an integer" : "a number", lo, hi, x);
    *out = x;
    return 0;
}

/* Loads checkpoint-STEP after checking every field of its trainer_state.json; on an error
 * the run's step, optimizer count and clock are left as they were. */
static int load_checkpoint(Run *r, int step, TunaErr *err) {
    char dir[1200], path[1400];
    snprintf(dir, sizeof dir, "%s/checkpoint-%d", r->dir, step);
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    char *txt = xread_file(path, NULL);
    if (!txt) return tuna_errf(err, TUNA_EIO, "%s: cannot read: %s", path, strerror(errno));
    cJSON *s = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsObject(s)) {
        cJSON_Delete(s);
        return tuna_errf(err, TUNA_EFORMAT, "%s: invalid JSON", path);
    }
    double gs = 0, ep = 0, cu = 0, ot = 0, be = -1, el = 0, ts = 0;
    double bpe = (double)batcher_batches_per_epoch(&r->batcher);
    int rc = state_num(s, "global_step", 1, 1e9, 1, &gs, path, err);
    if (!rc && gs != step)
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"global_step\" is %.0f in checkpoint-%d", path, gs,
                       step);
    if (!rc) rc = state_num(s, "epoch", 0, 1e6, 1, &ep, path, err);
    if (!rc) rc = state_num(s, "cursor", 0, bpe, 1, &cu, path, err);
    if (!rc) rc = state_num(s, "optimizer_t", 0, gs, 1, &ot, path, err);
    if (!rc && cJSON_GetObjectItem(s, "best_eval_loss"))
        rc = state_num(s, "best_eval_loss", -1, 1e30, 0, &be, path, err);
    if (!rc && cJSON_GetObjectItem(s, "elapsed"))
        rc = state_num(s, "elapsed", 0, 1e10, 0, &el, path, err);
    if (!rc && cJSON_GetObjectItem(s, "total_steps"))
        rc = state_num(s, "total_steps", 1, 1e9, 1, &ts, path, err);
    /* the epoch the cursor says it is in: at most one epoch past what the steps can reach */
    if (!rc && bpe > 0 && ep > floor(gs * r->cfg->grad_accum / bpe) + 1)
        rc = tuna_errf(err, TUNA_EFORMAT, "%s: \"epoch\" %.0f is past what %.0f steps reach", path,
                       ep, gs);
    cJSON_Delete(s);
    if (rc) return rc;
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    float **p = host_bufs(tp, np), **mm = host_bufs(tp, np), **vv = host_bufs(tp, np);
    snprintf(path, sizeof path, "%s/trainable.safetensors", dir);
    rc = load_tensors(path, tp, np, p, "", err);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (!rc) rc = load_tensors(path, tp, np, mm, "m.", err);
    if (!rc) rc = load_tensors(path, tp, np, vv, "v.", err);
    if (!rc) rc = batcher_seek(&r->batcher, (int)ep, (size_t)cu, err);
    if (!rc) {
        train_upload_params(r->ts, p);
        optim_upload(&r->opt, mm, vv);
        r->step = (int)gs;
        r->opt.t = (int)ot;
        r->best_eval = be >= 0 ? be : (double)INFINITY;
        r->t0 -= el;
    }
    free_bufs(p, np);
    free_bufs(mm, np);
    free_bufs(vv, np);
    return rc;
}

/* Resume: the newest checkpoint-N that validates, older ones when it does not (each skip
 * is said and logged). Nothing on disk changes here. */
static int resume_pick(Run *r, TunaErr *err) {
    int steps[4096], n = list_ckpts(r->dir, steps, 4096);
    char first[700] = "", msg[900];
    for (int i = n - 1; i >= 0; i--) {
        TunaErr e = {0};
        if (!load_checkpoint(r, steps[i], &e)) {
            if (first[0]) {
                snprintf(msg, sizeof msg, "resumed from checkpoint-%d, the newest that validates",
                         steps[i]);
                emit_log(r, "warn", msg);
            } else {
                snprintf(msg, sizeof msg, "resumed from checkpoint-%d", r->step);
                emit_log(r, "info", msg);
            }
            return 0;
        }
        snprintf(msg, sizeof msg, "checkpoint-%d skipped: %s", steps[i], e.msg);
        emit_log(r, "warn", msg);
        if (!first[0]) snprintf(first, sizeof first, "%s", e.msg);
    }
    if (!n)
        return tuna_errf(err, TUNA_ENOTFOUND,
                         "%s: no checkpoint-N folder to resume from; nothing was changed", r->dir);
    return tuna_errf(err, TUNA_EFORMAT,
                     "%s: no checkpoint validates (newest: %s); nothing was changed", r->dir,
                     first);
}

/* On resume, metrics past the checkpoint came from the interrupted run: drop them. */
static int metrics_truncate(const char *path, int step, TunaErr *err) {
    char *text = xread_file(path, NULL);
    if (!text) return 0;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(text);
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", tmp, strerror(errno));
    }
    int ok = 1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItem(j, "step"), *t = cJSON_GetObjectItem(j, "type");
        int keep = j && (!cJSON_IsNumber(s) || s->valueint <= step);
        if (cJSON_IsString(t) && !strcmp(t->valuestring, "done")) keep = 0;
        if (keep && fprintf(f, "%s\n", line) < 0) ok = 0;
        cJSON_Delete(j);
    }
    if (fclose(f)) ok = 0;
    free(text);
    if (!ok || rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

/* Takes every command written to RUN/control since the last call: the file is renamed first,
 * so a writer appending meanwhile starts a new one and nothing is lost. Returns CTL_* bits
 * (control_parse); lines it does not know are one warning. */
static int read_control(Run *r) {
    char path[1200], taken[1300];
    snprintf(path, sizeof path, "%s/control", r->dir);
    snprintf(taken, sizeof taken, "%s/control.reading", r->dir);
    if (rename(path, taken)) return 0;
    FILE *f = fopen(taken, "r");
    int bits = 0;
    if (f) {
        static char text[CONTROL_MAX_BYTES];
        size_t n = fread(text, 1, sizeof text, f);
        int more = fgetc(f) != EOF, bad = 0;
        fclose(f);
        char first[48];
        bits = control_parse(text, n, first, sizeof first, &bad);
        if (bad || more) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "control: %d unknown command%s (first: \"%s\"; pause, resume, save, stop)%s",
                     bad, bad == 1 ? "" : "s", first,
                     more ? "; past 64 KiB of the file was ignored" : "");
            emit_log(r, "warn", msg);
        }
    }
    unlink(taken);
    return bits;
}

static int stop_requested(const Run *r) {
    return r->hooks && r->hooks->stop && *r->hooks->stop;
}

/* Seconds as "42s", "3m05s" or "1h02m". */
static void fmt_secs(double t, char *out, size_t cap) {
    if (!(t >= 0) || !isfinite(t)) {
        snprintf(out, cap, "?");
        return;
    }
    long x = (long)(t + 0.5);
    if (x < 60)
        snprintf(out, cap, "%lds", x);
    else if (x < 3600)
        snprintf(out, cap, "%ldm%02lds", x / 60, x % 60);
    else
        snprintf(out, cap, "%ldh%02ldm", x / 3600, x / 60 % 60);
}

/* The bar on a terminal; without one a line every progress_every seconds (and the last). */
static void progress(Run *r, double loss, double lr_now, double tps, double real_tps, double eta,
                     double *last_line) {
    if (quiet(r)) return;
    char e[32];
    fmt_secs(eta, e, sizeof e);
    if (isatty(2)) {
        int w = 30, done = r->total ? (int)((double)w * r->step / r->total) : w;
        char bar[64];
        for (int i = 0; i < w; i++)
            bar[i] = i < done ? '#' : '.';
        bar[w] = '\0';
        fprintf(stderr, "\r[%s] %d/%d loss %.4f  %.0f tok/s (%.0f real)  eta %s\033[K", bar,
                r->step, r->total, loss, tps, real_tps, e);
        r->bar_shown = 1;
        if (r->step == r->total) {
            fputc('\n', stderr);
            r->bar_shown = 0;
        }
        return;
    }
    double every = r->hooks && r->hooks->progress_every > 0 ? r->hooks->progress_every : 10,
           now = time_now();
    if (now - *last_line < every && r->step != r->total && *last_line > 0) return;
    *last_line = now;
    say(r, "step %d/%d loss %.4f lr %.3g %.0f tok/s (%.0f real) eta %s", r->step, r->total, loss,
        lr_now, tps, real_tps, e);
}

/* Moves every file of tmp into dir (each rename is atomic). */
static int publish_files(const char *tmp, const char *dir, TunaErr *err) {
    DIR *d = opendir(tmp);
    if (!d) return tuna_errf(err, TUNA_EIO, "%s: cannot read", tmp);
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && !rc) {
        if (e->d_name[0] == '.') continue;
        char a[1600], b[1600];
        snprintf(a, sizeof a, "%s/%s", tmp, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dir, e->d_name);
        if (rename(a, b)) rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", b, strerror(errno));
    }
    closedir(d);
    return rc;
}

static void run_close(Run *r) {
    if (r->have_opt) optim_free(&r->opt);
    train_state_free(r->ts);
    if (r->have_batcher) batcher_free(&r->batcher);
    dataset_free(r->train);
    dataset_free(r->val);
    dataset_free(r->all);
    template_free(r->tpl);
    tokenizer_free(r->tok);
    model_free(r->m);
    backend_free(r->be);
    if (r->metrics) fclose(r->metrics);
    if (r->tlog) fclose(r->tlog);
    for (int i = 0; i < r->n_pending; i++)
        free(r->pending[i]);
    free(r->pending);
    if (r->lock_fd >= 0) { /* the folder was ours: train.pid too */
        char path[1200];
        snprintf(path, sizeof path, "%s/train.pid", r->dir);
        unlink(path);
        close(r->lock_fd); /* releases the flock; the file stays (unlinking it would race) */
    }
}

/* --lora-trainable-tokens: a comma list of ids, token strings or "eos" -> a comma list of ids. */
static int resolve_tokens(Run *r, const char *spec, char *out, size_t cap, TunaErr *err) {
    char *list = xstrdup(spec), *save = NULL;
    int rc = 0;
    out[0] = '\0';
    for (char *t = strtok_r(list, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long id = strtol(t, &end, 10);
        if (end == t || *end) {
            if (!strcmp(t, "eos")) {
                id = template_eos_id(r->tpl, r->tok);
                if (id < 0) id = r->m->cfg.n_eos ? r->m->cfg.eos_ids[0] : -1;
            } else {
                id = tokenizer_token_id(r->tok, t);
            }
        }
        if (id < 0 || id >= r->m->cfg.V) {
            rc = tuna_errf(err, TUNA_EINVAL, "--lora-trainable-tokens: \"%s\" is not a token of %s",
                           t, r->cfg->model);
            break;
        }
        size_t o = strlen(out);
        if (o + 16 >= cap) {
            rc = tuna_errf(err, TUNA_EINVAL, "--lora-trainable-tokens: too many tokens");
            break;
        }
        snprintf(out + o, cap - o, "%s%ld", o ? "," : "", id);
    }
    free(list);
    return rc;
}

/* --lr auto: the peak learning rate for a method and a model of n parameters. At 100M and
 * above, the usual values for real models (LLaMA-Factory's LoRA examples use 1e-4; full
 * fine-tuning uses 1e-5 to 5e-5; P-tuning v2 and PEFT's prefix examples 1e-2); at 1M and
 * below, the values that learn on the bundled stories260K with 3 epochs of identity
 * (measured: LoRA 1e-3 leaves the eval loss at 12.3, 1e-2 takes it to 5.4; full 2e-3 to 4;
 * P-tuning 3e-2 to 5.9); log-linear in the parameter count in between. */
static double auto_lr(TrainMethod method, size_t n_params) {
    double big, small; /* at >= 100M and <= 1M parameters */
    switch (method) {
    case METHOD_FULL:
    case METHOD_FREEZE: big = 2e-5, small = 2e-3; break;
    case METHOD_PTUNING: big = 1e-2, small = 3e-2; break;
    default: big = 1e-4, small = 1e-2; break;
    }
    double t = (log10((double)(n_params ? n_params : 1)) - 6.0) / 2.0;
    if (t <= 0) return small;
    if (t >= 1) return big;
    return exp(log(small) + t * (log(big) - log(small)));
}

/* Checks and loads everything the run needs; touches no file. */
static int run_open(Run *r, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    int rc;
    if ((rc = train_config_check(c, err))) return rc;
    TrainMethod method;
    if (!strcmp(c->method, "full"))
        method = METHOD_FULL;
    else if (!strcmp(c->method, "freeze"))
        method = METHOD_FREEZE;
    else if (!strcmp(c->method, "lora"))
        method = METHOD_LORA;
    else if (!strcmp(c->method, "ptuning"))
        method = METHOD_PTUNING;
    else
        return tuna_errf(err, TUNA_EINVAL,
                         "--method must be full, freeze, lora or ptuning, got \"%s\"", c->method);
    if (sched_parse(c->lr_scheduler) < 0)
        return tuna_errf(err, TUNA_EINVAL,
                         "--lr-scheduler must be constant, constant_with_warmup, linear or cosine");
    r->sched = (SchedType)sched_parse(c->lr_scheduler);
    if (strcmp(c->pad_to, "batch") && strcmp(c->pad_to, "max"))
        return tuna_errf(err, TUNA_EINVAL, "--pad-to: must be batch or max, got \"%s\"", c->pad_to);
    if (!(r->obj = objective_for(c->stage))) /* the stages are the rows of objectives[] */
        return tuna_errf(err, TUNA_EINVAL, "--stage: must be sft or pt, got \"%s\"", c->stage);
    if (c->packing == 2 && method == METHOD_PTUNING)
        return tuna_errf(err, TUNA_EUNSUP,
                         "--packing neat: not with --method ptuning (each packed example would "
                         "need the prefix of its own); use --packing true or none");
    int n_prompts = c->sample_prompts[0] ? 1 : 0;
    for (const char *p = c->sample_prompts; *p; p++)
        n_prompts += *p == '|';
    if (n_prompts > MAX_SAMPLE_PROMPTS)
        return tuna_errf(err, TUNA_EINVAL, "--sample-prompts: %d prompts, at most %d", n_prompts,
                         MAX_SAMPLE_PROMPTS);
    if (!(r->be = backend_init(c->backend, c->threads, err))) return err ? err->code : TUNA_EINVAL;
    if ((rc = model_load(c->model, r->be, &r->m, err))) return rc;
    if ((rc = tokenizer_load(c->model, &r->tok, err))) return rc;
    r->lr = c->lr > 0 ? c->lr : auto_lr(method, r->m->n_params);
    if ((rc = template_load(c->templates_dir, c->template_name, &r->tpl, err))) return rc;
    char ph[80];
    if (template_unknown_placeholder(r->tpl, ph, sizeof ph)) {
        if (c->strict)
            return tuna_errf(err, TUNA_EFORMAT,
                             "%s/%s.json: %s is not a placeholder tuna fills ({{content}}, "
                             "{{bos_token}}, {{eos_token}}); a misspelling?",
                             c->templates_dir, c->template_name, ph);
        char msg[2200];
        snprintf(msg, sizeof msg,
                 "%s/%s.json: %s is not a placeholder tuna fills and stays as text "
                 "(--strict refuses it)",
                 c->templates_dir, c->template_name, ph);
        emit_log(r, "warn", msg);
    }
    DatasetOptions dopt = {.names = c->dataset,
                           .dataset_dir = c->dataset_dir,
                           .vars = c->vars,
                           .cutoff_len = c->cutoff_len,
                           .max_samples = c->max_samples,
                           .strict = c->strict,
                           .stage_pt = !strcmp(c->stage, "pt"),
                           .template_flags = (c->train_on_prompt ? TEMPLATE_TRAIN_ON_PROMPT : 0) |
                                             (c->mask_history ? TEMPLATE_MASK_HISTORY : 0)};
    if ((rc = dataset_load(&dopt, r->tok, r->tpl, &r->all, err))) return rc;
    if (r->all->n_skipped) {
        char msg[700];
        snprintf(msg, sizeof msg, "skipped %zu bad rows (first: %s)", r->all->n_skipped,
                 r->all->n_msgs ? r->all->msgs[0] : "?");
        emit_log(r, "warn", msg);
    }
    if (r->all->n_unfilled) {
        char msg[700];
        snprintf(msg, sizeof msg,
                 "%zu rows keep an unfilled {{placeholder}} (first: %s); fill it with --vars "
                 "NAME=VALUE, or --strict to refuse",
                 r->all->n_unfilled, r->all->unfilled);
        emit_log(r, "warn", msg);
    }
    if ((rc = dataset_split(r->all, c->val_size, (uint64_t)c->seed, &r->train, &r->val, err)))
        return rc;
    if (r->train->n == 0)
        return tuna_errf(err, TUNA_EINVAL, "%s: no training examples left", c->dataset);
    // rows are as long as the longest example (up to cutoff_len): no padding to a fixed cutoff
    int maxlen = 2;
    for (size_t i = 0; i < r->train->n; i++)
        maxlen = r->train->ex[i].n > maxlen ? r->train->ex[i].n : maxlen;
    for (size_t i = 0; i < r->val->n; i++)
        maxlen = r->val->ex[i].n > maxlen ? r->val->ex[i].n : maxlen;
    r->B = c->batch_size;
    r->T = c->packing ? c->cutoff_len : (maxlen < c->cutoff_len ? maxlen : c->cutoff_len);
    int flags = (c->packing == 2 ? BATCH_PACK_NEAT
                 : c->packing    ? BATCH_PACK
                                 : 0) |
                (c->group_by_length ? BATCH_GROUP_BY_LENGTH : 0);
    if ((rc = batcher_init(&r->batcher, r->train, r->B, r->T, flags, (uint64_t)c->seed, err)))
        return rc;
    r->have_batcher = 1;
    /* --pad-to batch: a batch's rows as long as its longest example (a multiple of 8, at most T);
     * the same rows in the same order as max, so the losses are the same (packed rows are full) */
    r->pad_multiple = !c->packing && !strcmp(c->pad_to, "batch") ? 8 : 0;
    r->batcher.pad_multiple = r->pad_multiple;
    size_t bpe = batcher_batches_per_epoch(&r->batcher);
    r->steps_per_epoch = (int)((bpe + (size_t)c->grad_accum - 1) / (size_t)c->grad_accum);
    double want = c->max_steps > 0 ? c->max_steps : ceil(c->epochs * r->steps_per_epoch - 1e-9);
    if (want > 1e9)
        return tuna_errf(err, TUNA_EINVAL, "--epochs: %g epochs of %d steps is too many steps",
                         c->epochs, r->steps_per_epoch);
    r->total = (int)want;
    if (r->total < 1) return tuna_errf(err, TUNA_EINVAL, "nothing to train: 0 steps");
    r->warmup = c->warmup_steps > 0 ? c->warmup_steps : (int)ceil(c->warmup_ratio * r->total);
    TrainSetup setup = {.method = method,
                        .freeze_layers = c->freeze_layers,
                        .lora_rank = c->lora_rank,
                        .lora_alpha = (float)c->lora_alpha,
                        .lora_dropout = (float)c->lora_dropout,
                        .lora_rslora = c->use_rslora,
                        .lora_targets = c->lora_target,
                        .seed = (uint64_t)c->seed,
                        .prefix_tokens = c->prefix_tokens,
                        .prefix_projection = c->prefix_projection,
                        .prefix_hidden = c->prefix_hidden,
                        .grad_checkpoint = c->gradient_checkpointing};
    char toks[1024];
    if (method == METHOD_LORA && c->lora_trainable_tokens[0]) {
        if ((rc = resolve_tokens(r, c->lora_trainable_tokens, toks, sizeof toks, err))) return rc;
        setup.lora_tokens = toks;
    }
    if ((rc = train_state_init(r->m, &setup, r->B, r->T, &r->ts, err))) return rc;
    int np;
    const TrainParam *tp = train_params(r->ts, &np);
    if ((rc = optim_init(&r->opt, r->be, tp, np, 0.9f, 0.999f, 1e-8f, (float)c->weight_decay, err)))
        return rc;
    r->have_opt = 1;
    r->best_eval = (double)INFINITY;
    return 0;
}

/* Files that make a folder a run of ours (setup_config.json / train.log / train.pid, which the
 * workbench writes before it starts the trainer, do not). */
static const char *const run_files[] = {"train_config.json",         "metrics.jsonl",
                                        "trainer_log.jsonl",         "adapter_config.json",
                                        "adapter_model.safetensors", "model.safetensors"};

static int holds_run(const char *dir) {
    char path[1400];
    for (size_t i = 0; i < sizeof run_files / sizeof run_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, run_files[i]);
        if (access(path, F_OK) == 0) return 1;
    }
    int steps[4];
    return list_ckpts(dir, steps, 4) > 0;
}

/* "NAME.tmp-PID" (or, with tag ".old-", NAME.old-PID) whose process is gone: an interrupted
 * atomic write. */
static int stale_tagged(const char *name, const char *tag) {
    const char *t = strstr(name, tag);
    if (!t) return 0;
    char *end;
    long pid = strtol(t + 5, &end, 10);
    if (end == t + 5 || *end || pid <= 0) return 0;
    return pid != (long)getpid() && kill((pid_t)pid, 0) && errno == ESRCH;
}

static int stale_tmp(const char *name) {
    return stale_tagged(name, ".tmp-");
}

/* Removes checkpoint-N.tmp-PID (and the like) left in dir by a trainer that died, and
 * RUN.tmp-PID beside it. */
static void clean_stale(Run *r) {
    char path[1600], msg[1700];
    DIR *d = opendir(r->dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (stale_tmp(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
            dir_remove(path);
            snprintf(msg, sizeof msg, "removed %s (left by an interrupted write)", e->d_name);
            emit_log(r, "info", msg);
        } else if (stale_tagged(e->d_name, ".old-")) {
            /* checkpoint-N.old-PID: the replaced copy; when the new one never arrived it is
             * the checkpoint, so it goes back under its name */
            char base[1600];
            snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
            snprintf(base, sizeof base, "%s", path);
            *strstr(base + strlen(r->dir), ".old-") = '\0';
            if (access(base, F_OK) && !rename(path, base)) {
                snprintf(msg, sizeof msg, "restored %s (a replacement was interrupted)",
                         base + strlen(r->dir) + 1);
            } else {
                dir_remove(path);
                snprintf(msg, sizeof msg, "removed %s (left by an interrupted write)", e->d_name);
            }
            emit_log(r, "info", msg);
        }
    if (d) closedir(d);
    char parent[1100];
    snprintf(parent, sizeof parent, "%s", r->dir);
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof parent, ".");
    size_t bl = strlen(base);
    char b2[1100];
    snprintf(b2, sizeof b2, "%s", base);
    d = opendir(slash && !parent[0] ? "/" : parent);
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, b2, bl) && !strncmp(e->d_name + bl, ".tmp-", 5) &&
            stale_tmp(e->d_name)) {
            snprintf(path, sizeof path, "%s/%s", slash && !parent[0] ? "" : parent, e->d_name);
            dir_remove(path);
        }
    if (d) closedir(d);
}

/* Reads the pid in a held lock file (0 if none). */
static long lock_holder(int fd) {
    char buf[32] = "";
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return strtol(buf, NULL, 10);
}

static int lock_busy(Run *r, int fd, TunaErr *err) {
    long pid = lock_holder(fd);
    close(fd);
    r->lock_fd = -1;
    return tuna_errf(err, TUNA_EINVAL, "another tuna train (pid %ld) is writing %s", pid, r->dir);
}

/* Takes the run folder: refuses a folder another trainer holds, and one that holds a run
 * unless resuming or overwriting; creates it, locks RUN/.lock, cleans stale temporaries. */
static int run_claim(Run *r, int resume, TunaErr *err) {
    char path[1200];
    struct stat sb;
    int exists = stat(r->dir, &sb) == 0;
    if (exists && !S_ISDIR(sb.st_mode))
        return tuna_errf(err, TUNA_EINVAL, "%s: exists and is not a folder", r->dir);
    if (resume && !exists)
        return tuna_errf(err, TUNA_ENOTFOUND, "%s: no such run folder to resume", r->dir);
    snprintf(path, sizeof path, "%s/.lock", r->dir);
    r->lock_fd = -1;
    if (exists) { /* a held lock first: that answer is the one that helps */
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) && errno == EWOULDBLOCK)
            return lock_busy(r, fd, err);
        r->lock_fd = fd;
    }
    int overwrite = r->hooks && r->hooks->overwrite;
    if (exists && !resume && !overwrite && holds_run(r->dir)) {
        if (r->lock_fd >= 0) close(r->lock_fd);
        r->lock_fd = -1;
        return tuna_errf(err, TUNA_EINVAL,
                         "%s already holds a run: continue it with --resume %s, or replace it "
                         "with --overwrite",
                         r->dir, r->dir);
    }
    if (!exists && mkdir_p(r->dir))
        return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", r->dir, strerror(errno));
    if (r->lock_fd < 0) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB)) {
            if (errno == EWOULDBLOCK) return lock_busy(r, fd, err);
            emit_log(r, "warn",
                     "this file system does not lock files: nothing stops a second "
                     "trainer writing this run");
        }
        r->lock_fd = fd;
    }
    char pid[32];
    int pl = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(r->lock_fd, 0) || pwrite(r->lock_fd, pid, (size_t)pl, 0) != pl) {
        /* the lock holds without the pid; only the message loses it */
    }
    clean_stale(r);
    if (overwrite && !resume && exists) { /* the old run's files and checkpoints, not others */
        static const char *const more[] = {"config.json",     "generation_config.json",
                                           "tokenizer.json",  "tokenizer_config.json",
                                           "tokenizer.model", "control"};
        for (size_t i = 0; i < sizeof run_files / sizeof run_files[0] + 6; i++) {
            const char *f = i < sizeof run_files / sizeof run_files[0]
                                    ? run_files[i]
                                    : more[i - sizeof run_files / sizeof run_files[0]];
            snprintf(path, sizeof path, "%s/%s", r->dir, f);
            unlink(path);
        }
        int steps[4096], n = list_ckpts(r->dir, steps, 4096);
        for (int i = 0; i < n; i++) {
            snprintf(path, sizeof path, "%s/checkpoint-%d", r->dir, steps[i]);
            dir_remove(path);
        }
        if (n) {
            char msg[1300];
            snprintf(msg, sizeof msg, "--overwrite: replaced the run in %s (%d old checkpoints)",
                     r->dir, n);
            emit_log(r, "info", msg);
        }
    }
    return 0;
}

/* Writes train_config.json (on resume keeping its history, plus this resume's changes) and
 * opens the metrics files; the events held back until now go first. */
static int run_files_open(Run *r, int resume, TunaErr *err) {
    const TrainConfig *c = r->cfg;
    char path[1200];
    int rc = 0;
    snprintf(path, sizeof path, "%s/train.pid", r->dir);
    char pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    write_file(path, pid);
    snprintf(path, sizeof path, "%s/train_config.json", r->dir);
    cJSON *hist = NULL;
    if (resume) {
        char *old = xread_file(path, NULL);
        cJSON *o = old ? cJSON_Parse(old) : NULL;
        hist = cJSON_DetachItemFromObject(o, "history");
        cJSON_Delete(o);
        free(old);
    }
    const char *changes = r->hooks ? r->hooks->changes : NULL;
    char *cj = train_config_json(c);
    cJSON *conf = cJSON_Parse(cj);
    free(cj);
    if (changes && *changes) {
        if (!cJSON_IsArray(hist)) {
            cJSON_Delete(hist);
            hist = cJSON_CreateArray();
        }
        cJSON *h = cJSON_CreateObject();
        cJSON_AddNumberToObject(h, "time", (double)time(NULL));
        cJSON_AddNumberToObject(h, "step", r->step);
        cJSON_AddStringToObject(h, "changes", changes);
        cJSON_AddItemToArray(hist, h);
    }
    if (hist) cJSON_AddItemToObject(conf, "history", hist);
    char *json = cJSON_Print(conf);
    cJSON_Delete(conf);
    if (write_file(path, json))
        rc = tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    free(json);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    if (resume && (rc = metrics_truncate(path, r->step, err))) return rc;
    if (!resume) unlink(path);
    if (!(r->metrics = fopen(path, "a")))
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    snprintf(path, sizeof path, "%s/trainer_log.jsonl", r->dir);
    if (resume && (rc = metrics_truncate(path, r->step, err))) return rc;
    if (!resume) unlink(path);
    if (!(r->tlog = fopen(path, "a")))
        return tuna_errf(err, TUNA_EIO, "%s: cannot write: %s", path, strerror(errno));
    for (int i = 0; i < r->n_pending; i++) {
        errno = 0;
        note_write(r, r->metrics, "metrics.jsonl", fprintf(r->metrics, "%s\n", r->pending[i]) >= 0);
        free(r->pending[i]);
    }
    r->n_pending = 0;
    if (changes && *changes) {
        char msg[1300];
        snprintf(msg, sizeof msg, "resumed with changed settings (--allow-changes): %.1200s",
                 changes);
        emit_log(r, "warn", msg);
    }
    return 0;
}

static int write_error(Run *r, TunaErr *err) {
    return tuna_errf(err, TUNA_EIO,
                     "%s/%s: cannot write: %s; the run stopped (its last "
                     "checkpoint is kept)",
                     r->dir, r->write_file_name, strerror(r->write_errno));
}

/* The state of the step loop that lives beside Run: the micro-batch copies, the clocks, the
 * skipped-step counters and where the last checkpoint is. */
enum { WIN = 16 };

typedef struct Loop {
    int GA, B, T;
    int32_t *ids, *tg, *sg; /* (GA, B, T) the step's micro-batches; sg: neat spans or NULL */
    int *Ts;                /* (GA) each micro-batch's row length */
    const char *status;     /* "finished" or "stopped" */
    double t_last, paused_at, paused_total, last_line;
    double win[WIN]; /* the last steps' times, for the ETA (not the first: warm-up) */
    int n_win, bad_row, bad_total, start_step, paused, saved_at;
} Loop;

/* What a step gives the loop: the loss it optimizes, the tokens with a target (n_t) and the
 * non-pad tokens (n_tok) it saw, and the objective's own metrics for the step event (none for
 * sft and pt; a preference stage's rewards and log-probabilities). */
#define STEP_MAX_METRICS 8
typedef struct StepOut {
    double loss;
    int n_t, n_tok;
    int n_metrics;
    const char *names[STEP_MAX_METRICS];
    double values[STEP_MAX_METRICS];
} StepOut;

/* What training optimizes, chosen by the stage: step runs the forward and backward of one
 * optimizer step's micro-batches into the gradients; eval gives the loss on the validation set.
 * sft and pt share the token-level cross-entropy (the batcher's targets say which tokens
 * train). A new stage (dpo, kto, rm) is a row here with its own step and eval. */
struct Objective {
    const char *stage;
    int (*step)(Run *r, Loop *lp, StepOut *out, TunaErr *err);
    int (*eval)(Run *r, double *loss, TunaErr *err);
};

static int xent_step(Run *r, Loop *lp, StepOut *out, TunaErr *err);
static int xent_eval(Run *r, double *loss, TunaErr *err);

static const Objective objectives[] = {
        {"sft", xent_step, xent_eval},
        {"pt", xent_step, xent_eval},
};

static const Objective *objective_for(const char *stage) {
    for (size_t i = 0; i < sizeof objectives / sizeof objectives[0]; i++)
        if (!strcmp(objectives[i].stage, stage)) return &objectives[i];
    return NULL;
}

/* The run folder's name, --template auto resolved, --adapter's shape, then everything opened
 * and checked before the folder is touched (a failed resume changes nothing). *resolved and
 * *adapted are the caller's: r->cfg may point at them. */
static int run_prepare(Run *r, int resume, TrainConfig *resolved, TrainConfig *adapted,
                       TunaErr *err) {
    const TrainConfig *cfg = r->cfg;
    if (cfg->output[0])
        snprintf(r->dir, sizeof r->dir, "%s", cfg->output);
    else
        snprintf(r->dir, sizeof r->dir, "runs/%s-%s", cfg->dataset, cfg->method);
    size_t dl = strlen(r->dir);
    while (dl > 1 && r->dir[dl - 1] == '/') /* runs/x/ is runs/x */
        r->dir[--dl] = '\0';
    /* --template auto (the default): the built-in matching the model's own chat template,
     * resolved here so train_config.json records the name */
    if (!strcmp(cfg->template_name, "auto")) {
        TunaErr e = {0};
        TemplateAuto tauto = {0};
        if (template_auto(cfg->templates_dir, cfg->model, "vanilla", &tauto, &e))
            return tuna_errf(err, e.code, "--template auto: %s", e.msg);
        *resolved = *cfg;
        snprintf(resolved->template_name, sizeof resolved->template_name, "%s", tauto.name);
        r->cfg = cfg = resolved;
        char note[1200];
        snprintf(note, sizeof note, "template %s (auto: %s)", tauto.name, tauto.why);
        if (tauto.has_model_template && !tauto.matched) {
            emit_log(r, "warn", note);
        } else { /* recorded in metrics.jsonl, not printed */
            emit_log(r, "info", note);
        }
    }
    /* --adapter: the method and LoRA/prefix shape from the adapter, then its tensors as the
     * start (a resume has them in the checkpoint, and its saved config resolved already) */
    int from_adapter = cfg->adapter[0] && !resume;
    int rc = from_adapter ? adapter_train_config(cfg, adapted, err) : 0;
    if (!rc && from_adapter) r->cfg = cfg = adapted;
    if (!rc) rc = run_open(r, err);
    if (!rc && from_adapter) rc = adapter_init_train(r->ts, cfg->adapter, cfg->model, err);
    if (!rc) rc = run_claim(r, resume, err);
    if (!rc && resume) rc = resume_pick(r, err);
    if (!rc) rc = run_files_open(r, resume, err);
    if (rc && !r->metrics && !resume) { /* the workbench's fresh folder waits for the error */
        char path[1200];
        snprintf(path, sizeof path, "%s/setup_config.json", r->dir);
        if (access(path, F_OK) == 0 && !holds_run(r->dir)) {
            snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
            r->metrics = fopen(path, "w");
            for (int i = 0; r->metrics && i < r->n_pending; i++)
                fprintf(r->metrics, "%s\n", r->pending[i]);
        }
    }
    if (rc && r->metrics) { emit_done(r, "error", err ? err->msg : "", (double)NAN, 0); }
    return rc;
}

/* The start event (with the resolved config) and the one-line summary of the setup. */
static void emit_start(Run *r) {
    const TrainConfig *cfg = r->cfg;
    static Event e;
    event_clear(&e, EV_START);
    e.time = (double)time(NULL);
    const char *slash = strrchr(r->dir, '/');
    event_str(e.run, sizeof e.run, slash ? slash + 1 : r->dir);
    event_str(e.model, sizeof e.model, cfg->model);
    event_str(e.method, sizeof e.method, cfg->method);
    event_str(e.dataset, sizeof e.dataset, cfg->dataset);
    e.total_steps = r->total;
    e.epochs = cfg->epochs;
    e.start_step = r->step;
    e.train_examples = (long)r->train->n;
    e.val_examples = (long)r->val->n;
    e.trainable_params = (long)train_param_count(r->ts);
    e.total_params = (long)r->m->n_params;
    e.seq_len = r->T;
    e.lr = r->lr; /* the peak: config's "auto" resolved */
    char *cj = train_config_json(cfg);
    e.config = cj;
    emit(r, &e);
    free(cj);
    char msg[600];
    snprintf(
            msg, sizeof msg,
            "%s: %zu train / %zu val examples, %d steps, %zu trainable of %zu params, rows of %s%d "
            "tokens%s, lr %.3g%s",
            cfg->method, r->train->n, r->val->n, r->total, train_param_count(r->ts), r->m->n_params,
            r->pad_multiple ? "up to " : "", r->T,
            r->pad_multiple ? " (each batch padded to its longest, a multiple of 8)" : "", r->lr,
            cfg->lr > 0 ? "" : " (auto)");
    emit_log(r, "info", msg);
}

/* An eval event (and its trainer_log.jsonl line when tlog_too). */
static void emit_eval(Run *r, double el, double epoch, double elapsed, double eta, int tlog_too) {
    static Event e;
    event_clear(&e, EV_EVAL);
    e.step = r->step;
    e.epoch = epoch;
    e.eval_loss = el;
    e.perplexity = exp(el);
    emit(r, &e);
    if (!tlog_too) return;
    errno = 0;
    note_write(r, r->tlog, "trainer_log.jsonl",
               fprintf(r->tlog,
                       "{\"current_steps\": %d, \"total_steps\": %d, \"eval_loss\": "
                       "%.6g, \"epoch\": %.4f, \"percentage\": %.2f, \"elapsed_time\": "
                       "\"%.0fs\", \"remaining_time\": \"%.0fs\"}\n",
                       r->step, r->total, el, epoch, 100.0 * r->step / r->total, elapsed,
                       eta > 0 ? eta : 0) >= 0);
}

enum { CMD_RUN, CMD_WAIT, CMD_STOP };

static void emit_state(Run *r, int paused) {
    static Event e;
    event_clear(&e, EV_STATE);
    e.paused = paused;
    emit(r, &e);
}

/* The commands between steps: the control file (pause, resume, save, stop) and the stop flag.
 * CMD_WAIT while paused; *rc is set when a save fails. */
static int loop_commands(Run *r, Loop *lp, int *rc, TunaErr *err) {
    int ctl = read_control(r);
    if ((ctl & CTL_PAUSE) && !lp->paused) {
        lp->paused = 1;
        lp->paused_at = time_now();
        emit_state(r, 1);
    } else if ((ctl & CTL_RESUME) && lp->paused) {
        lp->paused = 0;
        lp->paused_total += time_now() - lp->paused_at;
        emit_state(r, 0);
        lp->t_last = time_now();
    }
    if ((ctl & CTL_SAVE) && r->step > lp->saved_at) {
        if ((*rc = save_checkpoint(r, err))) return CMD_STOP;
        lp->saved_at = r->step;
    }
    if ((ctl & CTL_STOP) || stop_requested(r)) {
        lp->status = "stopped";
        return CMD_STOP;
    }
    return lp->paused ? CMD_WAIT : CMD_RUN;
}

/* sft and pt: forward and backward of the step's GA micro-batches into the gradients; the loss
 * is the mean cross-entropy over all targets of the step. */
static int xent_step(Run *r, Loop *lp, StepOut *out, TunaErr *err) {
    int GA = lp->GA, B = lp->B, T = lp->T, rc = 0;
    size_t slot = (size_t)B * T;
    int *n_t = &out->n_t, *n_tok = &out->n_tok;
    *n_t = *n_tok = 0;
    out->n_metrics = 0;
    for (int a = 0; a < GA; a++) {
        Batch b;
        batcher_next(&r->batcher, &b);
        lp->Ts[a] = b.T; /* each micro-batch its own row length; its slot stays B*T */
        memcpy(lp->ids + a * slot, b.ids, sizeof(int32_t) * (size_t)B * b.T);
        memcpy(lp->tg + a * slot, b.targets, sizeof(int32_t) * (size_t)B * b.T);
        if (lp->sg) memcpy(lp->sg + a * slot, b.seg_start, sizeof(int32_t) * (size_t)B * b.T);
        *n_t += b.n_targets;
        *n_tok += b.n_tokens;
    }
    train_zero_grad(r->ts);
    train_set_step_seed(r->ts, (uint64_t)r->step);
    double loss_sum = 0;
    for (int a = 0; a < GA && !rc; a++) {
        double s;
        int c;
        rc = train_set_seq_len(r->ts, lp->Ts[a], err);
        if (!rc && lp->sg) rc = train_set_spans(r->ts, lp->sg + a * slot, err);
        if (rc) break;
        rc = train_step_fb(r->ts, lp->ids + a * slot, lp->tg + a * slot, B,
                           *n_t ? 1.0f / (float)*n_t : 0.0f, 1, &s, &c, err);
        loss_sum += s;
    }
    out->loss = *n_t ? loss_sum / *n_t : 0;
    return rc;
}

static int xent_eval(Run *r, double *loss, TunaErr *err) {
    long cnt;
    return evalloss_run(r->ts, r->val, r->B, r->T, r->pad_multiple, NULL, NULL, loss, &cnt, err);
}

static int run_eval(Run *r, double *loss, TunaErr *err) {
    return r->obj->eval(r, loss, err);
}

/* A step with a non-finite loss or gradient was skipped: logged and counted; after
 * max_bad_steps in a row the run stops with an error naming the checkpoint that is kept. */
static int bad_step(Run *r, Loop *lp, double loss, double gnorm, TunaErr *err) {
    char msg[300];
    lp->bad_row++;
    lp->bad_total++;
    snprintf(msg, sizeof msg,
             "step %d skipped: loss %g, gradient norm %g are not finite (%d in a row, %d in all)",
             r->step, loss, gnorm, lp->bad_row, lp->bad_total);
    emit_log(r, "warn", msg);
    if (lp->bad_row < r->cfg->max_bad_steps) return 0;
    /* a checkpoint this run saved just before the first bad step holds the weights that gave
     * it: set aside (renamed, not deleted); the one before it is kept */
    char keep[200] = "no checkpoint was saved", set_aside[80] = "";
    int first_bad = r->step - lp->bad_row + 1;
    if (lp->saved_at == first_bad - 1 && lp->saved_at > lp->start_step) {
        char a[1200], b2[1300];
        snprintf(a, sizeof a, "%s/checkpoint-%d", r->dir, lp->saved_at);
        snprintf(b2, sizeof b2, "%s.nonfinite", a);
        if (!rename(a, b2))
            snprintf(set_aside, sizeof set_aside,
                     " (checkpoint-%d, just before, is now checkpoint-%d.nonfinite)", lp->saved_at,
                     lp->saved_at);
    }
    int cks[4096], nck = list_ckpts(r->dir, cks, 4096);
    while (nck > 0 && cks[nck - 1] > r->step)
        nck--;
    if (nck > 0) snprintf(keep, sizeof keep, "checkpoint-%d is kept%s", cks[nck - 1], set_aside);
    return tuna_errf(err, TUNA_EINVAL,
                     "stopped at step %d: %d steps in a row with a non-finite loss or gradient (lr "
                     "%.3g too high?); %s",
                     r->step, lp->bad_row, r->lr, keep);
}

/* The step event, its trainer_log.jsonl line and the progress line of a finished step; gives
 * the step's epoch, the elapsed time and the ETA (-1 while unknown). */
static void log_step(Run *r, Loop *lp, const StepOut *so, double lr, double gnorm, double *epoch,
                     double *elapsed, double *eta) {
    const TrainConfig *cfg = r->cfg;
    double loss = so->loss;
    int n_t = so->n_t, n_tok = so->n_tok;
    double now = time_now(), dt = now - lp->t_last;
    lp->t_last = now;
    double tok_window = dt > 0 ? n_tok / dt : 0;
    double real_window = dt > 0 ? n_t / dt : 0; /* tokens with a target: what trains */
    if (r->step - lp->start_step > 1) lp->win[lp->n_win++ % WIN] = dt; /* the first: warm-up */
    *elapsed = now - r->t0 - lp->paused_total;
    *eta = -1;
    if (lp->n_win >= 3) {
        int k = lp->n_win < WIN ? lp->n_win : WIN;
        double sum = 0;
        for (int i = 0; i < k; i++)
            sum += lp->win[i];
        *eta = sum / k * (r->total - r->step);
    }
    *epoch = (double)r->step / r->steps_per_epoch;
    if (r->step % (cfg->logging_steps > 0 ? cfg->logging_steps : 1) == 0 || r->step == r->total) {
        static Event e;
        event_clear(&e, EV_STEP);
        e.step = r->step;
        e.total_steps = r->total;
        e.epoch = *epoch;
        e.loss = loss;
        e.lr = lr;
        e.grad_norm = gnorm;
        e.tokens_per_s = tok_window;
        e.real_tok_s = real_window;
        e.real_tokens = n_t;
        e.elapsed = *elapsed;
        if (*eta >= 0) e.eta = *eta;
        if (lp->bad_total) e.skipped_steps = lp->bad_total;
        for (int i = 0; i < so->n_metrics; i++) /* the objective's own (rewards/margins...) */
            event_metric(&e, so->names[i], so->values[i]);
        emit(r, &e);
        // LLaMA-Factory's trainer_log.jsonl
        errno = 0;
        note_write(r, r->tlog, "trainer_log.jsonl",
                   fprintf(r->tlog,
                           "{\"current_steps\": %d, \"total_steps\": %d, \"loss\": %.6g, "
                           "\"lr\": %.6g, \"epoch\": %.4f, \"percentage\": %.2f, "
                           "\"elapsed_time\": \"%.0fs\", \"remaining_time\": \"%.0fs\"}\n",
                           r->step, r->total, loss, lr, *epoch, 100.0 * r->step / r->total,
                           *elapsed, *eta > 0 ? *eta : 0) >= 0);
    }
    progress(r, loss, lr, tok_window, real_window, *eta, &lp->last_line);
}

/* After a step: the eval, the samples and the checkpoint that fall on it. */
static int after_step(Run *r, Loop *lp, double epoch, double elapsed, double eta, TunaErr *err) {
    const TrainConfig *cfg = r->cfg;
    int rc;
    int do_eval = (cfg->eval_steps > 0 && r->step % cfg->eval_steps == 0) || r->step == r->total;
    if (do_eval && r->val->n) {
        double el;
        if ((rc = run_eval(r, &el, err))) return rc;
        if (el < r->best_eval) {
            r->best_eval = el;
            r->best_step = r->step;
        }
        emit_eval(r, el, epoch, elapsed, eta, 1);
        say(r, "eval step %d: loss %.4f (best %.4f)", r->step, el, r->best_eval);
    }
    int do_sample = cfg->sample_steps > 0 ? r->step % cfg->sample_steps == 0 || r->step == r->total
                                          : do_eval;
    if (do_sample && (rc = run_samples(r, err))) return rc;
    if (r->write_errno) return 0; /* the loop's check says it; no checkpoint after it */
    if (cfg->save_steps > 0 && r->step % cfg->save_steps == 0 && r->step < r->total) {
        if ((rc = save_checkpoint(r, err))) return rc;
        lp->saved_at = r->step;
    }
    return 0;
}

/* The steps, from r->step to r->total or a stop. */
static int run_loop(Run *r, Loop *lp, TunaErr *err) {
    int np, rc = 0;
    const TrainParam *tp = train_params(r->ts, &np);
    if (r->step == 0 && r->val->n) { /* the starting point of the eval curve */
        double el;
        rc = run_eval(r, &el, err);
        if (!rc) {
            emit_eval(r, el, 0, 0, 0, 0);
            say(r, "eval step 0: loss %.4f (before training)", el);
        }
    }
    while (r->step < r->total && !rc) {
        if (r->write_errno) return write_error(r, err);
        int cmd = loop_commands(r, lp, &rc, err);
        if (cmd == CMD_STOP) break;
        if (cmd == CMD_WAIT) {
            usleep(100000);
            continue;
        }
        follow_free_cores(r);
        StepOut so;
        if ((rc = r->obj->step(r, lp, &so, err))) break;
        double loss = so.loss;
        float gscale;
        double gnorm = optim_clip(r->be, tp, np, (float)r->cfg->max_grad_norm, &gscale);
        double lr = r->lr * sched_factor(r->sched, r->step, r->warmup, r->total);
        /* a non-finite loss or gradient: no update, the step is skipped, logged and counted */
        int bad = !isfinite(loss) || !isfinite(gnorm);
        if (!bad) optim_step(&r->opt, tp, np, (float)lr, gscale);
        r->step++;
        if (bad) {
            rc = bad_step(r, lp, loss, gnorm, err);
            continue;
        }
        lp->bad_row = 0;
        double epoch, elapsed, eta;
        log_step(r, lp, &so, lr, gnorm, &epoch, &elapsed, &eta);
        if ((rc = after_step(r, lp, epoch, elapsed, eta, err))) break;
        if (r->write_errno) break; /* said below; no more steps */
    }
    if (!rc && r->write_errno) rc = write_error(r, err);
    return rc;
}

/* The end: a checkpoint when stopped, the final adapter or model when finished, the done event
 * and the summary lines. */
static int run_finish(Run *r, Loop *lp, int rc, TunaErr *err) {
    const char *status = lp->status;
    if (!rc && !strcmp(status, "stopped") && r->step > lp->saved_at) rc = save_checkpoint(r, err);
    TrainMethod mt = train_setup(r->ts)->method;
    int adapter = mt == METHOD_LORA || mt == METHOD_PTUNING;
    if (!rc && !strcmp(status, "finished")) { /* final artifacts at the root of the run */
        char tmp[1300];
        rc = dir_begin(r->dir, tmp, sizeof tmp, err);
        if (!rc)
            rc = adapter ? adapter_write(r->ts, tmp, r->cfg->model, err)
                         : model_write_hf(r->m, tmp, err);
        if (!rc) rc = publish_files(tmp, r->dir, err);
        dir_remove(tmp);
    }
    emit_done(r, rc ? "error" : status, rc && err ? err->msg : "",
              isfinite(r->best_eval) ? r->best_eval : (double)NAN, lp->bad_total);
    if (!rc) { /* the summary: where the result went, best eval loss, time */
        char t[32], best[96] = "";
        fmt_secs(time_now() - r->t0 - lp->paused_total, t, sizeof t);
        if (isfinite(r->best_eval))
            snprintf(best, sizeof best, "; best eval loss %.4f%s", r->best_eval, "");
        if (!strcmp(status, "finished"))
            say(r, "tuna: finished %d steps in %s%s; %s in %s/", r->step, t, best,
                adapter ? "adapter" : "model", r->dir);
        else
            say(r, "tuna: stopped at step %d of %d after %s%s", r->step, r->total, t, best);
        if (lp->bad_total)
            say(r, "tuna: %d steps skipped for a non-finite loss or gradient", lp->bad_total);
    }
    return rc;
}

int train_run(const TrainConfig *cfg, int resume, const TrainHooks *hooks, TunaErr *err) {
    Run r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.hooks = hooks;
    r.lock_fd = -1;
    r.t0 = time_now();
    if (hooks && hooks->stopped) *hooks->stopped = 0;
    TrainConfig resolved, adapted;
    int rc = run_prepare(&r, resume, &resolved, &adapted, err);
    if (rc) {
        run_close(&r);
        return rc;
    }
    emit_start(&r);
    Loop lp = {.GA = r.cfg->grad_accum, .B = r.B, .T = r.T, .status = "finished"};
    size_t n = (size_t)lp.GA * lp.B * lp.T;
    lp.ids = xmalloc(sizeof(int32_t) * n);
    lp.tg = xmalloc(sizeof(int32_t) * n);
    lp.sg = r.batcher.seg_start ? xmalloc(sizeof(int32_t) * n) : NULL;
    lp.Ts = xmalloc(sizeof(int) * (size_t)lp.GA);
    lp.t_last = time_now();
    lp.start_step = lp.saved_at = r.step;
    rc = run_loop(&r, &lp, err);
    rc = run_finish(&r, &lp, rc, err);
    if (hooks && hooks->stopped) *hooks->stopped = !rc && !strcmp(lp.status, "stopped");
    free(lp.ids);
    free(lp.tg);
    free(lp.sg);
    free(lp.Ts);
    run_close(&r);
    return rc;
}
