/* scr_chat.c: the Chat screen. One transcript (base model), or two side by side (base | tuned)
 * that get the same message. Each pane has its own ChatWorker (thread owning its model); replies
 * stream in through the workers' queues and one wake pipe.
 * Keys: typing goes into the message box and Enter sends; Esc leaves the box, and then the
 * screen keys (1-4, q, ?) act as everywhere, Esc again stops a streaming reply, and Tab, Enter or
 * any other letter goes back in. Up/Down pick a setting (temperature, top-p, max tokens, the KV
 * cache's type, template, system prompt), Left/Right change it, ^E edits the system prompt in
 * the box.
 * The template is --template, else the one the open (or --tuned) run trained with. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/template.h"
#include "../src/train.h"
#include "../src/xalloc.h"
#include "app.h"
#include "chat_worker.h"
#include "curses_wrap.h"
#include "layout.h"
#include "widgets.h"

#define CHAT_TURNS 64
#define INPUT_MAX  2000

typedef struct ChatPane {
    ChatWorker *w;
    char model[4096];
    char desc[1024]; /* READY text or the load error */
    int error;       /* the worker could not load: desc says why */
    char *roles[CHAT_TURNS], *texts[CHAT_TURNS];
    int n;
    int generating;
    char stats[256];
    int scroll; /* lines up from the bottom */
} ChatPane;

enum { SET_TEMP, SET_TOP_P, SET_MAX, SET_CACHE, SET_TEMPLATE, SET_SYSTEM, SET_COUNT };

struct ChatState {
    ChatPane pane[2];
    int side_by_side;
    int wake[2];
    char input[INPUT_MAX + 1];
    size_t input_len;
    int in_box;                /* the message box has the keyboard (else 1-4, q, ? are keys) */
    int sys_edit;              /* the box edits the system prompt (^E) */
    char saved[INPUT_MAX + 1]; /* the message typed before ^E */
    int setting;               /* SET_* */
    ChatSettings s;            /* s.system: the system prompt */
    char tpl[128];             /* template of both panes */
    int tpl_chosen;            /* picked here with Left/Right: a new run does not change it */
    int sys_set;               /* the system prompt was set here (^E): a run does not change it */
};

static int is_model_dir(const char *dir) {
    char p[4200];
    struct stat st;
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (stat(p, &st)) return 0;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (!stat(p, &st)) return 1;
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    return !stat(p, &st);
}

static void pane_clear(ChatPane *p) {
    for (int i = 0; i < p->n; i++) {
        free(p->roles[i]);
        free(p->texts[i]);
    }
    p->n = 0;
    p->scroll = 0;
    p->stats[0] = 0;
}

static void pane_push(ChatPane *p, const char *role, const char *text) {
    if (p->n == CHAT_TURNS) { /* forget the oldest exchange */
        free(p->roles[0]), free(p->texts[0]), free(p->roles[1]), free(p->texts[1]);
        memmove(p->roles, p->roles + 2, (CHAT_TURNS - 2) * sizeof(char *));
        memmove(p->texts, p->texts + 2, (CHAT_TURNS - 2) * sizeof(char *));
        p->n -= 2;
    }
    p->roles[p->n] = xstrdup(role);
    p->texts[p->n] = xstrdup(text);
    p->n++;
}

static void pane_start(ChatState *c, int i, const char *model, const char *tpl) {
    ChatPane *p = &c->pane[i];
    snprintf(p->model, sizeof p->model, "%s", model);
    snprintf(p->desc, sizeof p->desc, "loading %s ...", model);
    p->w = chat_worker_start(model, tpl, c->wake[1]);
    if (!p->w) p->error = 1, snprintf(p->desc, sizeof p->desc, "cannot start a worker thread");
}

/* A run folder holding a LoRA adapter (the worker loads its base model and applies it). */
static int is_adapter_dir(const char *dir) {
    char p[4200];
    struct stat st;
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    return !stat(p, &st);
}

static int ckpt_pick; /* ^K: which of the run's models the tuned pane uses (UI thread only) */

/* The tuned model: --tuned, else one of the open run's models: its folder when it holds a full
 * checkpoint or an adapter (written when the run ends), then each checkpoint-N, newest first;
 * ^K steps through them. */
static const char *tuned_model(App *app) {
    static char pick[4400];
    if (app->tuned_dir[0]) return app->tuned_dir;
    const char *r = app->run_dir;
    if (!r[0]) return NULL;
    char cands[65][4400];
    int n = 0;
    if (is_model_dir(r) || is_adapter_dir(r)) snprintf(cands[n++], sizeof cands[0], "%s", r);
    int steps[64], ns = train_checkpoints(r, steps, 64);
    for (int i = ns - 1; i >= 0 && n < 65; i--) {
        snprintf(cands[n], sizeof cands[0], "%.4000s/checkpoint-%d", r, steps[i]);
        if (is_model_dir(cands[n]) || is_adapter_dir(cands[n])) n++;
    }
    if (!n) return NULL;
    snprintf(pick, sizeof pick, "%s", cands[(ckpt_pick % n + n) % n]);
    return pick;
}

static void pane_reset(ChatPane *p) {
    chat_worker_free(p->w);
    pane_clear(p);
    p->w = NULL;
    p->error = 0;
    p->generating = 0;
    p->model[0] = p->desc[0] = 0;
}

/* Opens the tuned pane on the current tuned model, or says why there is none. */
static void tuned_start(App *app, ChatState *c) {
    const char *t = tuned_model(app);
    if (t) {
        pane_start(c, 1, t, c->tpl);
        return;
    }
    c->pane[1].error = 1;
    snprintf(c->pane[1].desc, sizeof c->pane[1].desc,
             "no tuned model: start with --tuned DIR (a checkpoint or a run folder with an "
             "adapter), or open a finished run whose folder holds one");
}

// --- the template: --template, else the run's own

/* The "template" a run folder recorded: train_config.json, else setup_config.json (written by
 * Setup before the trainer starts); a checkpoint-N folder asks its run. 0 when there is none.
 * sys (scap bytes): the run's default_system from the same file, "" when it set none. */
static int run_template(const char *dir, char *out, size_t cap, char *sys, size_t scap) {
    static const char *const files[] = {"train_config.json", "setup_config.json",
                                        "../train_config.json", "../setup_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        char *text = xread_file(path, NULL);
        cJSON *j = text ? cJSON_Parse(text) : NULL;
        free(text);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "template");
        const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j, "default_system");
        int ok = cJSON_IsString(t) && t->valuestring[0] && strlen(t->valuestring) < cap;
        if (ok) snprintf(out, cap, "%s", t->valuestring);
        if (ok) snprintf(sys, scap, "%s", cJSON_IsString(ds) ? ds->valuestring : "");
        cJSON_Delete(j);
        if (ok) return 1;
    }
    return 0;
}

/* The template Chat should use now: picked in Chat, --template, the --tuned model's run, the
 * open run, else the default (vanilla). sys: the run's default_system when it is the run's
 * template ("" otherwise). */
static void pick_template(App *app, const ChatState *c, char *out, size_t cap, char *sys,
                          size_t scap) {
    sys[0] = '\0';
    if (c->tpl_chosen) {
        snprintf(out, cap, "%s", c->tpl);
        return;
    }
    if (app->template_given) {
        snprintf(out, cap, "%s", app->template_name);
        return;
    }
    if (app->tuned_dir[0] && run_template(app->tuned_dir, out, cap, sys, scap)) return;
    if (app->run_dir[0] && run_template(app->run_dir, out, cap, sys, scap)) return;
    snprintf(out, cap, "%s", app->template_name);
}

/* Puts both panes on the template pick_template names, when it changed; the system prompt
 * becomes the run's default_system (LLaMA-Factory's: the run trained with it) unless it was set
 * here. */
static void sync_template(App *app, ChatState *c) {
    char t[128], sys[sizeof c->s.system];
    pick_template(app, c, t, sizeof t, sys, sizeof sys);
    if (!c->sys_set) snprintf(c->s.system, sizeof c->s.system, "%s", sys);
    if (!strcmp(t, c->tpl)) return;
    snprintf(c->tpl, sizeof c->tpl, "%s", t);
    for (int i = 0; i < 2; i++)
        if (c->pane[i].w) chat_worker_set_template(c->pane[i].w, c->tpl);
}

/* Left/Right on the template setting: the previous/next file in templates/. */
static void step_template(App *app, ChatState *c, int d) {
    char **names = NULL;
    int n = 0;
    TunaErr err = {0};
    if (template_list("templates", &names, &n, &err) || !n) {
        app_status(app, ROLE_WARN, "no templates: %s", err.msg[0] ? err.msg : "templates/ empty");
        template_list_free(names, n);
        return;
    }
    int at = -1;
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], c->tpl)) at = i;
    at = at < 0 ? 0 : ((at + d) % n + n) % n;
    snprintf(c->tpl, sizeof c->tpl, "%s", names[at]);
    template_list_free(names, n);
    c->tpl_chosen = 1;
    for (int i = 0; i < 2; i++)
        if (c->pane[i].w) chat_worker_set_template(c->pane[i].w, c->tpl);
}

static ChatState *chat_get(App *app) {
    if (app->chat) return app->chat;
    ChatState *c = xcalloc(1, sizeof *c);
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK)) c->wake[0] = c->wake[1] = -1;
    c->s = (ChatSettings){.temperature = 0.7f,
                          .top_p = 0.9f,
                          .max_new_tokens = 96,
                          .seed = 42,
                          .share = 1,
                          .kv_cache = "f32"};
    c->in_box = 1;
    pick_template(app, c, c->tpl, sizeof c->tpl, c->s.system, sizeof c->s.system);
    const char *base = app->hist->model[0] && is_model_dir(app->hist->model) ? app->hist->model
                                                                             : app->model_dir;
    pane_start(c, 0, base, c->tpl);
    app->chat = c;
    return c;
}

static void chat_free(ChatState *c) {
    if (!c) return;
    for (int i = 0; i < 2; i++) {
        chat_worker_free(c->pane[i].w);
        pane_clear(&c->pane[i]);
    }
    if (c->wake[0] >= 0) close(c->wake[0]), close(c->wake[1]);
    free(c);
}

static int chat_wake_fd(App *app) {
    return app->chat ? app->chat->wake[0] : -1;
}

/* Keeps the tuned pane on the current tuned model: when that changed (another run was opened,
 * or the open run finished and wrote its adapter) the pane starts over; side by side, it opens. */
static void tuned_refresh(App *app, ChatState *c) {
    ChatPane *p = &c->pane[1];
    const char *t = tuned_model(app);
    int same = t ? !strcmp(p->model, t) : p->error;
    if ((p->w || p->error) && !same) pane_reset(p);
    if (c->side_by_side && !p->w && !p->error) tuned_start(app, c);
}

static void chat_enter(App *app) {
    ChatState *c = chat_get(app);
    c->in_box = 1;
    sync_template(app, c);
    tuned_refresh(app, c);
}

static int chat_text_input(App *app) {
    return app->chat ? app->chat->in_box : 1;
}

static void input_set(ChatState *c, const char *text) {
    snprintf(c->input, sizeof c->input, "%s", text);
    c->input_len = strlen(c->input);
}

/* ^E: the box edits the system prompt; Enter keeps it (done = 1), Esc drops it (done = 0). */
static void system_edit(ChatState *c, int start, int done) {
    if (start) {
        snprintf(c->saved, sizeof c->saved, "%s", c->input);
        input_set(c, c->s.system);
        c->sys_edit = c->in_box = 1;
        c->setting = SET_SYSTEM;
        return;
    }
    if (done) snprintf(c->s.system, sizeof c->s.system, "%.1023s", c->input);
    if (done) c->sys_set = 1;
    input_set(c, c->saved);
    c->sys_edit = 0;
}

static int chat_send(App *app) {
    ChatState *c = chat_get(app);
    if (!c->input_len) return 0;
    int np = c->side_by_side ? 2 : 1;
    for (int i = 0; i < np; i++)
        if (c->pane[i].generating) {
            app_status(app, ROLE_WARN, "a reply is still streaming (Esc cancels it)");
            return UI_REDRAW;
        }
    ChatSettings s = c->s;
    s.share = 0;
    for (int i = 0; i < np; i++)
        s.share += c->pane[i].w && !c->pane[i].error;
    for (int i = 0; i < np; i++) {
        ChatPane *p = &c->pane[i];
        if (!p->w || p->error) continue;
        pane_push(p, "user", c->input);
        pane_push(p, "assistant", "");
        /* the conversation so far without the empty reply slot */
        if (chat_worker_send(p->w, (const char *const *)p->roles, (const char *const *)p->texts,
                             p->n - 1, &s)) {
            free(p->roles[--p->n]), free(p->texts[p->n]);
            app_status(app, ROLE_WARN, "%s is not ready", p->model);
            continue;
        }
        p->generating = 1;
        p->scroll = 0;
        p->stats[0] = 0;
    }
    c->input_len = 0;
    c->input[0] = 0;
    return UI_REDRAW;
}

static int chat_action(App *app, Action a) {
    ChatState *c = chat_get(app);
    switch (a) {
    case ACT_OPEN:
        if (c->sys_edit) {
            system_edit(c, 0, 1);
            app_status(app, ROLE_OK, "system prompt %s", c->s.system[0] ? "set" : "cleared");
            return UI_REDRAW;
        }
        c->in_box = 1;
        return chat_send(app) | UI_REDRAW;
    case ACT_FOCUS: c->in_box = 1; return UI_REDRAW;
    case ACT_SYSTEM: system_edit(c, 1, 0); return UI_REDRAW;
    case ACT_SIDE:
        c->side_by_side = !c->side_by_side;
        if (c->side_by_side) tuned_refresh(app, c);
        return UI_REDRAW;
    case ACT_CKPT:
        ckpt_pick++;
        c->side_by_side = 1;
        tuned_refresh(app, c);
        app_status(app, ROLE_OK, "tuned: %s",
                   tuned_model(app) ? tuned_model(app) : "no model in this run yet");
        return UI_REDRAW;
    case ACT_CLEAR:
        for (int i = 0; i < 2; i++) {
            chat_worker_cancel(c->pane[i].w);
            pane_clear(&c->pane[i]);
        }
        return UI_REDRAW;
    case ACT_UP: c->setting = (c->setting + SET_COUNT - 1) % SET_COUNT; return UI_REDRAW;
    case ACT_DOWN: c->setting = (c->setting + 1) % SET_COUNT; return UI_REDRAW;
    case ACT_LEFT:
    case ACT_RIGHT: {
        int d = a == ACT_RIGHT ? 1 : -1;
        if (c->setting == SET_TEMPLATE) step_template(app, c, d);
        if (c->setting == SET_SYSTEM) app_status(app, ROLE_NORMAL, "^E edits the system prompt");
        if (c->setting == 0) c->s.temperature += 0.1f * (float)d;
        if (c->setting == 1) c->s.top_p += 0.05f * (float)d;
        if (c->setting == 2) c->s.max_new_tokens += 16 * d;
        if (c->setting == SET_CACHE) { /* f32, f16, q8_0, round */
            static const char *const kinds[] = {"f32", "f16", "q8_0"};
            int k = 0;
            while (k < 3 && strcmp(c->s.kv_cache, kinds[k]))
                k++;
            snprintf(c->s.kv_cache, sizeof c->s.kv_cache, "%s", kinds[((k % 3) + 3 + d) % 3]);
        }
        if (c->s.temperature < 0.05f) c->s.temperature = 0;
        if (c->s.temperature > 2) c->s.temperature = 2;
        if (c->s.top_p < 0.05f) c->s.top_p = 0.05f;
        if (c->s.top_p > 1) c->s.top_p = 1;
        if (c->s.max_new_tokens < 16) c->s.max_new_tokens = 16;
        if (c->s.max_new_tokens > 1024) c->s.max_new_tokens = 1024;
        return UI_REDRAW;
    }
    case ACT_PGUP:
        for (int i = 0; i < 2; i++)
            c->pane[i].scroll += 5;
        return UI_REDRAW;
    case ACT_PGDN:
        for (int i = 0; i < 2; i++)
            c->pane[i].scroll = c->pane[i].scroll > 5 ? c->pane[i].scroll - 5 : 0;
        return UI_REDRAW;
    case ACT_HOME:
        for (int i = 0; i < 2; i++)
            c->pane[i].scroll = 1 << 20; /* draw_pane clamps it to the first line */
        return UI_REDRAW;
    case ACT_END:
        for (int i = 0; i < 2; i++)
            c->pane[i].scroll = 0;
        return UI_REDRAW;
    default: return 0;
    }
}

static int chat_key(App *app, int ch) {
    ChatState *c = chat_get(app);
    if (ch == 27) {
        if (c->sys_edit) { /* drop the edit, back to the message */
            system_edit(c, 0, 0);
        } else if (c->in_box) { /* leave the box: 1-4, q, ? are keys now */
            c->in_box = 0;
        } else { /* outside the box: stop the replies */
            for (int i = 0; i < 2; i++)
                if (c->pane[i].generating) chat_worker_cancel(c->pane[i].w);
        }
        return UI_REDRAW;
    }
    if (!c->in_box) { /* any other letter goes back into the box, and types */
        if (ch < 32 || ch >= 256 || ch == 127) return 0;
        c->in_box = 1;
    }
    if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        while (c->input_len && ((unsigned char)c->input[c->input_len - 1] & 0xC0) == 0x80)
            c->input_len--;
        if (c->input_len) c->input_len--;
        c->input[c->input_len] = 0;
        return UI_REDRAW;
    }
    if ((ch >= 32 && ch < 127) || (ch >= 128 && ch < 256)) {
        if (c->input_len < (c->sys_edit ? sizeof c->s.system - 1 : INPUT_MAX)) {
            c->input[c->input_len++] = (char)ch;
            c->input[c->input_len] = 0;
        }
        return UI_REDRAW;
    }
    return 0;
}

static int chat_tick(App *app) {
    ChatState *c = app->chat;
    if (!c) return 0;
    ChatOut out[32];
    int dirty = 0;
    for (int i = 0; i < 2; i++) {
        ChatPane *p = &c->pane[i];
        if (!p->w) continue;
        int n;
        while ((n = chat_worker_drain(p->w, out, 32)) > 0) {
            dirty = 1;
            for (int k = 0; k < n; k++) {
                switch (out[k].kind) {
                case CHATMSG_READY: snprintf(p->desc, sizeof p->desc, "%s", out[k].text); break;
                case CHATMSG_TEXT:
                    if (p->n && !strcmp(p->roles[p->n - 1], "assistant")) {
                        size_t a = strlen(p->texts[p->n - 1]), b = strlen(out[k].text);
                        p->texts[p->n - 1] = xrealloc(p->texts[p->n - 1], a + b + 1);
                        memcpy(p->texts[p->n - 1] + a, out[k].text, b + 1);
                    }
                    break;
                case CHATMSG_DONE:
                    p->generating = 0;
                    snprintf(p->stats, sizeof p->stats, "%s", out[k].text);
                    break;
                case CHATMSG_ERROR:
                    if (!p->generating) p->error = 1;
                    p->generating = 0;
                    snprintf(p->desc, sizeof p->desc, "error: %s", out[k].text);
                    app_status(app, ROLE_ERROR, "%s", out[k].text);
                    break;
                }
            }
        }
    }
    return dirty ? UI_REDRAW : 0;
}

/* The pane's first lines: the model it runs (and its template), or why it has none. A
 * "PATH: details" line too wide for the pane takes two, the end of the path (the run's name)
 * then the details; an error wraps. Returns the lines used. */
static int draw_desc(const ChatPane *p, Rect in) {
    Role role = p->error ? ROLE_ERROR : ROLE_DIM;
    int w = in.w - 1;
    const char *d = p->desc;
    if (text_width(d, strlen(d)) <= w) {
        ui_str(in.y, in.x + 1, w, role, d);
        return 1;
    }
    const char *sep = p->error ? NULL : strstr(d, ": ");
    if (sep && in.h > 3) {
        const char *end = sep + 1, *ps = d; /* the path with its colon */
        int cut = 0;
        while (ps < end && text_width(ps, (size_t)(end - ps)) > w - (cut ? 3 : 0)) {
            ps++, cut = 1;
            while (ps < end && (*ps & 0xC0) == 0x80)
                ps++;
        }
        int x = in.x + 1;
        if (cut) x += ui_str(in.y, x, w, role, "...");
        ui_text(in.y, x, in.x + in.w - x, role, ps, (size_t)(end - ps));
        ui_str(in.y + 1, in.x + 1, w, role, sep + 2);
        return 2;
    }
    WrapLine wl[4];
    int most = in.h / 2 < 4 ? in.h / 2 : 4, n = wrap_text(d, w, wl, 4);
    if (most < 1) most = 1;
    if (n > most) n = most;
    for (int k = 0; k < n; k++)
        ui_text(in.y + k, in.x + 1, w, role, d + wl[k].off, wl[k].len);
    return n;
}

static void draw_pane(ChatPane *p, Rect r, const char *title) {
    ui_frame(r, title, 0);
    Rect in = ui_inner(r);
    if (in.h <= 0 || in.w <= 4) return;
    int top = draw_desc(p, in);
    /* transcript lines, bottom-aligned */
    int body = in.h - top;
    int total = 0;
    for (int i = 0; i < p->n; i++)
        total += 1 + wrap_text(p->texts[i], in.w - 3, NULL, 0);
    if (p->scroll > total - body) p->scroll = total - body > 0 ? total - body : 0;
    int first = total - body - p->scroll; /* virtual line at the top row */
    int line = 0;
    WrapLine wl[512];
    for (int i = 0; i < p->n; i++) {
        int user = !strcmp(p->roles[i], "user");
        int y = in.y + top + line - first;
        if (line >= first && y < in.y + in.h) {
            const char *who = user ? "you" : "model";
            int x = in.x + 1 + ui_str(y, in.x + 1, in.w - 1, user ? ROLE_USER : ROLE_TITLE, who);
            if (!user && i == p->n - 1 && p->generating)
                ui_str(y, x, in.x + in.w - x, ROLE_DIM, "  (generating...)");
            else if (!user && i == p->n - 1 && p->stats[0]) {
                char st[300];
                snprintf(st, sizeof st, "  (%s)", p->stats);
                ui_str(y, x, in.x + in.w - x, ROLE_DIM, st);
            }
        }
        line++;
        int n = wrap_text(p->texts[i], in.w - 3, wl, 512);
        for (int k = 0; k < n && k < 512; k++, line++) {
            y = in.y + top + line - first;
            if (line < first || y >= in.y + in.h) continue;
            ui_text(y, in.x + 3, in.w - 3, user ? ROLE_USER : ROLE_ASSISTANT,
                    p->texts[i] + wl[k].off, wl[k].len);
        }
    }
}

/* The settings line: sampling, template and system prompt; the picked one highlighted. Long
 * labels and a hint when they fit, short ones at 80 columns; the system prompt takes what is
 * left. */
static void draw_settings(ChatState *c, Rect r) {
    ui_fill(r, ROLE_NORMAL);
    char v[SET_COUNT][2][64];
    snprintf(v[SET_TEMP][0], sizeof v[0][0], "temperature %.2f", (double)c->s.temperature);
    snprintf(v[SET_TEMP][1], sizeof v[0][0], "temperature %.2f", (double)c->s.temperature);
    snprintf(v[SET_TOP_P][0], sizeof v[0][0], "top-p %.2f", (double)c->s.top_p);
    snprintf(v[SET_TOP_P][1], sizeof v[0][0], "top-p %.2f", (double)c->s.top_p);
    snprintf(v[SET_MAX][0], sizeof v[0][0], "max tokens %d", c->s.max_new_tokens);
    snprintf(v[SET_MAX][1], sizeof v[0][0], "max %d", c->s.max_new_tokens);
    snprintf(v[SET_CACHE][0], sizeof v[0][0], "KV cache %s", c->s.kv_cache);
    snprintf(v[SET_CACHE][1], sizeof v[0][0], "KV %s", c->s.kv_cache);
    snprintf(v[SET_TEMPLATE][0], sizeof v[0][0], "template %.50s", c->tpl);
    snprintf(v[SET_TEMPLATE][1], sizeof v[0][0], "template %.50s", c->tpl);
    snprintf(v[SET_SYSTEM][0], sizeof v[0][0], "system: ");
    snprintf(v[SET_SYSTEM][1], sizeof v[0][0], "system: ");
    const char *sys = c->s.system[0] ? c->s.system : "(the template's)";
    const char *sys_short = c->s.system[0] ? c->s.system : "default";
    static const char hint[] = "  (Up/Down pick, Left/Right change)";
    int want = 1 + (int)strlen(sys) + (int)strlen(hint);
    for (int i = 0; i < SET_COUNT; i++)
        want += (int)strlen(v[i][0]) + 2;
    int f = want <= r.w ? 0 : 1, x = r.x + 1, end = r.x + r.w;
    if (f) sys = sys_short;
    for (int i = 0; i < SET_COUNT; i++) {
        /* at 80 columns the default KV cache (f32) shows only while it is the picked setting */
        if (f && i == SET_CACHE && i != c->setting && !strcmp(c->s.kv_cache, "f32")) continue;
        Role role = i == c->setting ? ROLE_SELECTED : ROLE_VALUE;
        x += ui_str(r.y, x, end - x, role, v[i][f]);
        if (i == SET_SYSTEM) {
            int room = end - x - (f ? 0 : (int)strlen(hint));
            int sw = text_width(sys, strlen(sys));
            if (sw > room && room > 3) { /* cut with "..." */
                x += ui_text(r.y, x, room - 3, role, sys, strlen(sys));
                x += ui_str(r.y, x, end - x, role, "...");
            } else {
                x += ui_str(r.y, x, end - x, role, sys);
            }
        } else {
            x += ui_str(r.y, x, end - x, ROLE_DIM, "  ");
        }
    }
    if (!f) ui_str(r.y, x, end - x, ROLE_DIM, hint);
}

typedef struct Hint {
    const char *key, *label;
} Hint;

/* The bottom key line of the mode Chat is in (the key table's rows, in the words of the mode). */
static void draw_keys(ChatState *c, Rect r) {
    static const Hint box[] = {{"Enter", "Send"}, {"Esc", "Leave box"}, {"^B", "Side"},
                               {"^L", "Clear"},   {"^K", "Ckpt"},       {"^E", "System"},
                               {"F1", "Help"},    {"F10", "Quit"}};
    static const Hint out[] = {{"Tab", "Type"}, {"1-4", "Screen"}, {"?", "Help"},
                               {"q", "Quit"},   {"^B", "Side"},    {"^L", "Clear"},
                               {"^K", "Ckpt"},  {"^E", "System"},  {"Esc", "Stop reply"}};
    static const Hint sys[] = {
            {"Enter", "Set system prompt"}, {"Esc", "Cancel"}, {"F1", "Help"}, {"F10", "Quit"}};
    const Hint *h = c->sys_edit ? sys : c->in_box ? box : out;
    int n = c->sys_edit ? (int)(sizeof sys / sizeof *sys)
            : c->in_box ? (int)(sizeof box / sizeof *box)
                        : (int)(sizeof out / sizeof *out);
    int streaming = c->pane[0].generating || c->pane[1].generating;
    ui_fill(r, ROLE_KEY_LABEL);
    int x = r.x;
    for (int i = 0; i < n; i++) {
        if (h == out && !strcmp(h[i].key, "Esc") && !streaming) continue;
        int need = (int)strlen(h[i].key) + (int)strlen(h[i].label) + 1;
        if (x + need > r.x + r.w) break;
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY, h[i].key);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, h[i].label);
        x += ui_str(r.y, x, r.x + r.w - x, ROLE_KEY_LABEL, " ");
    }
}

static void chat_draw(App *app) {
    ChatState *c = chat_get(app);
    ChatLayout L;
    layout_chat(app->rows, app->cols, c->side_by_side, &L);
    app_draw_header(app, L.header.y, L.header.w);
    draw_settings(c, L.settings);
    draw_pane(&c->pane[0], L.left, c->side_by_side ? "base" : "chat");
    if (c->side_by_side) draw_pane(&c->pane[1], L.right, "tuned");
    // --- input
    const char *title = c->sys_edit ? "system prompt (Enter sets it, Esc cancels; empty: the "
                                      "template's)"
                        : c->in_box
                                ? "message (Enter sends, Esc leaves the box)"
                                : "message (Tab, Enter or a letter to type; 1-4, q, ? are keys)";
    ui_frame(L.input, title, c->in_box);
    Rect in = ui_inner(L.input);
    const char *shown = c->input;
    int w = text_width(c->input, c->input_len);
    while (w > in.w - 3 && *shown) { /* keep the end of a long line visible */
        shown++;
        while ((*shown & 0xC0) == 0x80)
            shown++;
        w = text_width(shown, strlen(shown));
    }
    int cx = in.x + 1 + ui_str(in.y, in.x + 1, in.w - 2, c->in_box ? ROLE_NORMAL : ROLE_DIM, shown);
    if (c->in_box) ui_str(in.y, cx, 1, ROLE_SELECTED, " ");
    draw_keys(c, L.help);
}

static void chat_free_app(App *app) {
    chat_free(app->chat);
    app->chat = NULL;
}

const Screen screen_chat = {"Chat",   SCR_CHAT,  chat_text_input, chat_enter,    chat_action,
                            chat_key, chat_tick, chat_draw,       chat_free_app, chat_wake_fd};
