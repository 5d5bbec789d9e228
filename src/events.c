/* events.c: the event table, its writer and its reader (see events.h). */
#include "events.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

static const char *const type_names[] = {
        [EV_START] = "start",   [EV_STEP] = "step", [EV_EVAL] = "eval",
        [EV_SAMPLE] = "sample", [EV_LOG] = "log",   [EV_CHECKPOINT] = "checkpoint",
        [EV_STATE] = "state",   [EV_DONE] = "done",
};
#define N_TYPES ((int)(sizeof type_names / sizeof type_names[0]))

typedef enum { F_LONG, F_DBL, F_STR, F_LEVEL, F_STATE, F_METRICS, F_RAW } FieldKind;

/* One JSON key of one or more event types. types: where the key belongs (read and written);
 * always: where it is written even when absent ("" strings). In the order of the lines. */
typedef struct EventField {
    const char *key;
    FieldKind kind;
    size_t off, cap;
    unsigned types, always;
} EventField;

#define T(x) (1u << EV_##x)
#define ALL  (~0u)
#define NUM(k, kind, f, types)                                                                     \
    { k, kind, offsetof(Event, f), 0, types, 0 }
#define STR(k, f, types)                                                                           \
    { k, F_STR, offsetof(Event, f), sizeof(((Event *)0)->f), types, types }

static const EventField fields[] = {
        NUM("time", F_DBL, time, ALL),
        STR("run", run, T(START)),
        STR("model", model, T(START)),
        STR("method", method, T(START)),
        STR("dataset", dataset, T(START)),
        NUM("step", F_LONG, step, ALL),
        NUM("total_steps", F_LONG, total_steps, ALL),
        NUM("epochs", F_DBL, epochs, T(START)),
        NUM("start_step", F_LONG, start_step, T(START)),
        NUM("train_examples", F_LONG, train_examples, T(START)),
        NUM("val_examples", F_LONG, val_examples, T(START)),
        NUM("trainable_params", F_LONG, trainable_params, T(START)),
        NUM("total_params", F_LONG, total_params, T(START)),
        NUM("seq_len", F_LONG, seq_len, T(START)),
        NUM("epoch", F_DBL, epoch, ALL),
        NUM("eval_loss", F_DBL, eval_loss, T(EVAL)),
        NUM("perplexity", F_DBL, perplexity, T(EVAL)),
        NUM("loss", F_DBL, loss, T(STEP)),
        NUM("lr", F_DBL, lr, T(START) | T(STEP)),
        NUM("grad_norm", F_DBL, grad_norm, T(STEP)),
        NUM("tokens_per_s", F_DBL, tokens_per_s, T(STEP)),
        NUM("real_tok_s", F_DBL, real_tok_s, T(STEP)),
        NUM("real_tokens", F_LONG, real_tokens, T(STEP)),
        NUM("tokens", F_LONG, tokens, T(STEP)),
        NUM("elapsed", F_DBL, elapsed, T(STEP)),
        NUM("eta", F_DBL, eta, T(STEP)),
        NUM("", F_METRICS, n_metrics, T(STEP) | T(EVAL) | T(START)),
        STR("prompt", name, T(SAMPLE)),
        STR("text", text, T(SAMPLE)),
        NUM("seconds", F_DBL, seconds, T(SAMPLE)),
        STR("path", name, T(CHECKPOINT)),
        NUM("state", F_STATE, paused, T(STATE)),
        NUM("level", F_LEVEL, level, T(LOG)),
        STR("status", name, T(DONE)),
        STR("msg", text, T(LOG) | T(DONE)),
        NUM("best_eval_loss", F_DBL, best_eval_loss, T(DONE)),
        NUM("skipped_steps", F_LONG, skipped_steps, T(STEP) | T(DONE)),
        NUM("config", F_RAW, config, T(START)),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

void event_clear(Event *ev, EventType type) {
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    for (size_t i = 0; i < N_FIELDS; i++) {
        char *p = (char *)ev + fields[i].off;
        if (fields[i].kind == F_LONG) *(long *)p = -1;
        if (fields[i].kind == F_DBL) *(double *)p = (double)NAN;
    }
}

void event_str(char *dst, size_t cap, const char *s) {
    size_t n = strlen(s);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) /* s[n] continues a character */
            n--;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

void event_metric(Event *ev, const char *name, double value) {
    if (ev->n_metrics >= EVENT_MAX_METRICS) return;
    event_str(ev->metric_name[ev->n_metrics], sizeof ev->metric_name[0], name);
    ev->metric[ev->n_metrics++] = value;
}

static const char *const level_names[] = {"info", "warn", "error"};

char *event_json(const Event *ev) {
    if (ev->type <= EV_NONE || ev->type >= N_TYPES) return NULL;
    unsigned bit = 1u << ev->type;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type_names[ev->type]);
    for (size_t i = 0; i < N_FIELDS; i++) {
        const EventField *f = &fields[i];
        if (!(f->types & bit)) continue;
        const char *p = (const char *)ev + f->off;
        switch (f->kind) {
        case F_LONG:
            if (*(const long *)p >= 0) cJSON_AddNumberToObject(o, f->key, (double)*(const long *)p);
            break;
        case F_DBL:
            if (!isnan(*(const double *)p)) cJSON_AddNumberToObject(o, f->key, *(const double *)p);
            break;
        case F_STR:
            if (*p || (f->always & bit)) cJSON_AddStringToObject(o, f->key, p);
            break;
        case F_LEVEL: {
            int lv = *(const int *)p;
            cJSON_AddStringToObject(o, f->key, level_names[lv < 0 ? 0 : lv > 2 ? 2 : lv]);
            break;
        }
        case F_STATE:
            cJSON_AddStringToObject(o, f->key, *(const int *)p ? "paused" : "running");
            break;
        case F_METRICS:
            for (int k = 0; k < ev->n_metrics && k < EVENT_MAX_METRICS; k++)
                cJSON_AddNumberToObject(o, ev->metric_name[k], ev->metric[k]);
            break;
        case F_RAW: {
            const char *text = *(const char *const *)p;
            cJSON *j = text ? cJSON_Parse(text) : NULL;
            if (j) cJSON_AddItemToObject(o, f->key, j);
            break;
        }
        }
    }
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return line;
}

/* The field of ev's type named key, or NULL. */
static const EventField *field_of(unsigned bit, const char *key) {
    for (size_t i = 0; i < N_FIELDS; i++)
        if ((fields[i].types & bit) && !strcmp(fields[i].key, key)) return &fields[i];
    return NULL;
}

static void parse_field(Event *ev, const EventField *f, const cJSON *it) {
    char *p = (char *)ev + f->off;
    switch (f->kind) {
    case F_LONG:
        if (cJSON_IsNumber(it) && it->valuedouble > -1e15 && it->valuedouble < 1e15)
            *(long *)p = (long)it->valuedouble; /* NaN, inf and 1e300 stay -1: no UB cast */
        break;
    case F_DBL:
        if (cJSON_IsNumber(it)) *(double *)p = it->valuedouble;
        break;
    case F_STR:
        if (cJSON_IsString(it) && it->valuestring) event_str(p, f->cap, it->valuestring);
        break;
    case F_LEVEL: {
        const char *lv = cJSON_IsString(it) && it->valuestring ? it->valuestring : "info";
        *(int *)p = !strcmp(lv, "error")                            ? 2
                    : !strcmp(lv, "warn") || !strcmp(lv, "warning") ? 1
                                                                    : 0;
        break;
    }
    case F_STATE:
        *(int *)p = cJSON_IsString(it) && it->valuestring && !strcmp(it->valuestring, "paused");
        break;
    case F_METRICS:
    case F_RAW: break;
    }
}

int event_parse(const char *line, size_t len, Event *ev) {
    event_clear(ev, EV_NONE);
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return -1;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    for (int i = 1; i < N_TYPES && cJSON_IsString(t) && t->valuestring; i++)
        if (type_names[i] && !strcmp(t->valuestring, type_names[i])) ev->type = (EventType)i;
    unsigned bit = 1u << ev->type;
    if (ev->type == EV_DONE) snprintf(ev->name, sizeof ev->name, "finished");
    for (const cJSON *it = o->child; it; it = it->next) {
        if (!it->string || !strcmp(it->string, "type")) continue;
        const EventField *f = field_of(bit, it->string);
        if (f)
            parse_field(ev, f, it);
        else if ((ev->type == EV_STEP || ev->type == EV_EVAL || ev->type == EV_START) &&
                 cJSON_IsNumber(it)) /* start: world_size */
            event_metric(ev, it->string, it->valuedouble);
    }
    cJSON_Delete(o);
    return 0;
}
