/* chat_worker.c: generation on a worker thread (see chat_worker.h). */
#include "chat_worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/backend.h"
#include "../src/err.h"
#include "../src/generate.h"
#include "../src/model.h"
#include "../src/template.h"
#include "../src/tokenizer.h"
#include "../src/xalloc.h"

#define CHAT_MAX_TURNS 64

struct ChatWorker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake_fd;
    char model_dir[4096];
    char template_name[128];
    // --- request (under mu; template_name too)
    int have_req, quit, busy, dead, tpl_req;
    atomic_int cancel;
    char *roles[CHAT_MAX_TURNS], *contents[CHAT_MAX_TURNS];
    int n_turns;
    ChatSettings settings;
    // --- output queue (under mu)
    ChatOut *out;
    size_t n_out, cap_out;
};

static void push_out(ChatWorker *w, ChatMsgKind kind, const char *text, size_t len) {
    pthread_mutex_lock(&w->mu);
    ChatOut *last = w->n_out ? &w->out[w->n_out - 1] : NULL;
    if (kind == CHATMSG_TEXT && last && last->kind == CHATMSG_TEXT &&
        strlen(last->text) + len < sizeof last->text) {
        strncat(last->text, text, len);
    } else {
        if (w->n_out == w->cap_out) {
            w->cap_out = w->cap_out ? 2 * w->cap_out : 16;
            w->out = xrealloc(w->out, w->cap_out * sizeof *w->out);
        }
        ChatOut *o = &w->out[w->n_out++];
        o->kind = kind;
        size_t k = len < sizeof o->text - 1 ? len : sizeof o->text - 1;
        memcpy(o->text, text, k);
        o->text[k] = 0;
    }
    pthread_mutex_unlock(&w->mu);
    if (w->wake_fd >= 0) {
        ssize_t r = write(w->wake_fd, "x", 1);
        (void)r;
    }
}

static int on_text(void *user, const char *text, size_t len) {
    ChatWorker *w = user;
    /* long pieces are split so each fits an output slot */
    while (len) {
        size_t k = len > 900 ? 900 : len;
        push_out(w, CHATMSG_TEXT, text, k);
        text += k;
        len -= k;
    }
    return w->cancel;
}

/* Loads the template named in w (under mu) in place of *tpl and says so with a READY. */
static void load_template(ChatWorker *w, const Model *m, Template **tpl) {
    char name[128];
    pthread_mutex_lock(&w->mu);
    snprintf(name, sizeof name, "%s", w->template_name);
    w->tpl_req = 0;
    pthread_mutex_unlock(&w->mu);
    template_free(*tpl);
    *tpl = NULL;
    TunaErr terr = {0};
    TemplateAuto ta;
    char fb[sizeof name];
    if (template_auto_fallback(name)) { /* the model's own (auto:NAME: NAME without one) */
        snprintf(fb, sizeof fb, "%s", template_auto_fallback(name)); /* name is written below */
        snprintf(name, sizeof name, "%s",
                 template_auto("templates", w->model_dir, fb, &ta, NULL) == 0 ? ta.name : fb);
    }
    if (name[0] && template_load("templates", name, tpl, &terr)) *tpl = NULL;
    char desc[1024];
    snprintf(desc, sizeof desc, "%.600s: %s, %.2fM params, template %.100s", w->model_dir,
             config_arch_name(m->cfg.arch), (double)model_param_count(m) / 1e6,
             *tpl ? template_name(*tpl) : "none (plain text)");
    push_out(w, CHATMSG_READY, desc, strlen(desc));
}

static void *worker_main(void *arg) {
    ChatWorker *w = arg;
    TunaErr err = {0};
    Backend *be = NULL;
    Model *m = NULL;
    Tokenizer *tok = NULL;
    Template *tpl = NULL;
    /* the idle cores: a run started from Setup trains in its own process beside this one */
    be = backend_init("cpu", BACKEND_THREADS_IDLE, &err);
    char base_dir[1024];
    /* a run folder with an adapter loads its base model and applies the adapter */
    if (!be || model_load_any(w->model_dir, be, &m, base_dir, sizeof base_dir, &err) ||
        tokenizer_load(base_dir, &tok, &err)) {
        push_out(w, CHATMSG_ERROR, err.msg, strlen(err.msg));
        pthread_mutex_lock(&w->mu);
        w->dead = 1;
        pthread_mutex_unlock(&w->mu);
        goto done;
    }
    load_template(w, m, &tpl);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->have_req && !w->quit && !w->tpl_req)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        if (w->tpl_req) {
            pthread_mutex_unlock(&w->mu);
            load_template(w, m, &tpl);
            continue;
        }
        ChatSettings s = w->settings;
        ChatMessage msgs[CHAT_MAX_TURNS + 1];
        int n = 0;
        if (tpl && s.system[0]) msgs[n++] = (ChatMessage){"system", s.system};
        for (int i = 0; i < w->n_turns; i++)
            msgs[n++] = (ChatMessage){w->roles[i], w->contents[i]};
        w->have_req = 0;
        w->cancel = 0;
        pthread_mutex_unlock(&w->mu);

        /* a run may have started or ended since the last reply; side by side, the two
         * replies split the idle cores (two 2-thread teams on 2 cores decode ~4x slower) */
        backend_set_threads(be, BACKEND_THREADS_IDLE);
        if (s.share > 1)
            backend_set_threads(be, be->n_threads / s.share > 1 ? be->n_threads / s.share : 1);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        GenerateResult res = {0};
        Sampler smp = {0};
        TunaErr e = {0};
        /* the KV cache's type: a change empties the cache (this reply prefills anew) */
        int kn = kv_type_by_name(s.kv_cache);
        WType kv = kn < 0 ? WT_F32 : (WType)kn;
        char kv_note[160] = "";
        if (kv != m->kv_type && model_set_kv_type(m, kv, &e)) { /* the reply's tag says why */
            if (kv == WT_Q8_0 && m->cfg.HS % 32)
                snprintf(kv_note, sizeof kv_note, " (no q8_0: heads of %d, not of 32)", m->cfg.HS);
            else
                snprintf(kv_note, sizeof kv_note, " (no %s: %.100s)", s.kv_cache, e.msg);
            e = (TunaErr){0};
        }
        StopSet stop;
        stopset_init(&stop, m, tok, tpl);
        int rc, max_new = s.max_new_tokens, dropped = 0;
        if (tpl) { /* the engine's context policy: the system prompt stays, old exchanges go */
            rc = chat_prompt(tpl, tok, msgs, n, s.system[0] ? 1 : 0, m->cfg.max_pos,
                             s.max_new_tokens, &ids, &n_ids, &dropped, &max_new, &e);
        } else { /* plain text: the newest tokens that leave room for the reply */
            const char *last = msgs[n - 1].content;
            rc = tokenizer_encode(tok, last, strlen(last), 1, &ids, &n_ids, &e);
            size_t keep = (size_t)m->cfg.max_pos > (size_t)s.max_new_tokens + 1
                                  ? (size_t)m->cfg.max_pos - (size_t)s.max_new_tokens
                                  : 1;
            if (!rc && n_ids > keep) {
                memmove(ids, ids + (n_ids - keep), keep * sizeof *ids);
                n_ids = keep;
            }
        }
        if (!rc) {
            sampler_init(&smp, m->cfg.V, s.seed, s.temperature, 0, s.top_p, 1.0f);
            GenerateOptions opt = {.max_new_tokens = max_new, .on_text = on_text, .user = w};
            stopset_apply(&stop, &opt);
            rc = generate_run(m, tok, &smp, ids, n_ids, &opt, &res, &e);
        }
        if (rc) {
            push_out(w, CHATMSG_ERROR, e.msg, strlen(e.msg));
        } else {
            char st[512];
            double tps =
                    res.n_ids > 1 && res.decode_s > 0 ? (double)(res.n_ids - 1) / res.decode_s : 0;
            char left[64] = "";
            if (dropped) /* the context policy left the oldest exchanges out of the prompt */
                snprintf(left, sizeof left, ", %d old message%s left out", dropped,
                         dropped == 1 ? "" : "s");
            snprintf(st, sizeof st, "%zu tokens, %.0f tok/s, KV %s%s%s%s", res.n_ids, tps,
                     kv_type_name(m->kv_type), kv_note, left,
                     res.stopped_by == 3 ? ", cancelled" : "");
            push_out(w, CHATMSG_DONE, st, strlen(st));
        }
        generate_result_free(&res);
        sampler_free(&smp);
        free(ids);
        pthread_mutex_lock(&w->mu);
        w->busy = 0;
        pthread_mutex_unlock(&w->mu);
    }
done:
    template_free(tpl);
    tokenizer_free(tok);
    model_free(m);
    backend_free(be);
    return NULL;
}

ChatWorker *chat_worker_start(const char *model_dir, const char *template_name, int wake_fd) {
    ChatWorker *w = xcalloc(1, sizeof *w);
    snprintf(w->model_dir, sizeof w->model_dir, "%s", model_dir);
    snprintf(w->template_name, sizeof w->template_name, "%s", template_name ? template_name : "");
    w->wake_fd = wake_fd;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, w)) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return NULL;
    }
    return w;
}

static void free_turns(ChatWorker *w) {
    for (int i = 0; i < w->n_turns; i++) {
        free(w->roles[i]);
        free(w->contents[i]);
    }
    w->n_turns = 0;
}

void chat_worker_set_template(ChatWorker *w, const char *template_name) {
    pthread_mutex_lock(&w->mu);
    snprintf(w->template_name, sizeof w->template_name, "%s", template_name ? template_name : "");
    w->tpl_req = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

int chat_worker_send(ChatWorker *w, const char *const *roles, const char *const *contents, int n,
                     const ChatSettings *s) {
    pthread_mutex_lock(&w->mu);
    if (w->busy || w->dead) {
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    free_turns(w);
    int first = n > CHAT_MAX_TURNS ? n - CHAT_MAX_TURNS : 0;
    if ((n - first) % 2 == 0 && first < n - 1) first++; /* start at a user turn */
    for (int i = first; i < n; i++) {
        w->roles[w->n_turns] = xstrdup(roles[i]);
        w->contents[w->n_turns] = xstrdup(contents[i]);
        w->n_turns++;
    }
    w->settings = *s;
    w->have_req = 1;
    w->busy = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int chat_worker_drain(ChatWorker *w, ChatOut *out, int max) {
    pthread_mutex_lock(&w->mu);
    int n = (int)w->n_out < max ? (int)w->n_out : max;
    memcpy(out, w->out, (size_t)n * sizeof *out);
    memmove(w->out, w->out + n, (w->n_out - (size_t)n) * sizeof *out);
    w->n_out -= (size_t)n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void chat_worker_cancel(ChatWorker *w) {
    if (w) w->cancel = 1;
}

void chat_worker_free(ChatWorker *w) {
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    w->cancel = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    free_turns(w);
    free(w->out);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
