/* scr_chat.c: the Chat screen. One transcript (base model), or two side by side (base | tuned)
 * that get the same message. Each pane has its own ChatWorker (thread owning its model); replies
 * stream in through the workers' queues and one wake pipe. Up/Down pick a sampling setting,
 * Left/Right change it; Enter sends; Esc cancels a reply. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

struct ChatState {
    ChatPane pane[2];
    int side_by_side;
    int wake[2];
    char input[INPUT_MAX + 1];
    size_t input_len;
    int setting; /* 0 temperature, 1 top-p, 2 max tokens */
    ChatSettings s;
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

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

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
    int steps[64], ns = 0;
    DIR *d = opendir(r);
    struct dirent *e;
    while (d && (e = readdir(d)) && ns < 64) {
        int st;
        char tail;
        if (sscanf(e->d_name, "checkpoint-%d%c", &st, &tail) == 1) steps[ns++] = st;
    }
    if (d) closedir(d);
    qsort(steps, (size_t)ns, sizeof *steps, cmp_int);
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
        pane_start(c, 1, t, app->template_name);
        return;
    }
    c->pane[1].error = 1;
    snprintf(c->pane[1].desc, sizeof c->pane[1].desc,
             "no tuned model: start with --tuned DIR (a checkpoint or a run folder with an "
             "adapter), or open a finished run whose folder holds one");
}

static ChatState *chat_get(App *app) {
    if (app->chat) return app->chat;
    ChatState *c = xcalloc(1, sizeof *c);
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK)) c->wake[0] = c->wake[1] = -1;
    c->s = (ChatSettings){0.7f, 0.9f, 96, 42, 1};
    const char *base = app->hist->model[0] && is_model_dir(app->hist->model) ? app->hist->model
                                                                             : app->model_dir;
    pane_start(c, 0, base, app->template_name);
    app->chat = c;
    return c;
}

void chat_free(ChatState *c) {
    if (!c) return;
    for (int i = 0; i < 2; i++) {
        chat_worker_free(c->pane[i].w);
        pane_clear(&c->pane[i]);
    }
    if (c->wake[0] >= 0) close(c->wake[0]), close(c->wake[1]);
    free(c);
}

int chat_wake_fd(App *app) {
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
    tuned_refresh(app, chat_get(app));
}

static int chat_text_input(App *app) {
    (void)app;
    return 1;
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
    case ACT_OPEN: return chat_send(app);
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
    case ACT_UP: c->setting = (c->setting + 2) % 3; return UI_REDRAW;
    case ACT_DOWN: c->setting = (c->setting + 1) % 3; return UI_REDRAW;
    case ACT_LEFT:
    case ACT_RIGHT: {
        int d = a == ACT_RIGHT ? 1 : -1;
        if (c->setting == 0) c->s.temperature += 0.1f * (float)d;
        if (c->setting == 1) c->s.top_p += 0.05f * (float)d;
        if (c->setting == 2) c->s.max_new_tokens += 16 * d;
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
    case ACT_END:
        for (int i = 0; i < 2; i++)
            c->pane[i].scroll = 0;
        return UI_REDRAW;
    default: return 0;
    }
}

static int chat_key(App *app, int ch) {
    ChatState *c = chat_get(app);
    if (ch == 27) { /* Esc: cancel the replies */
        for (int i = 0; i < 2; i++)
            chat_worker_cancel(c->pane[i].w);
        return UI_REDRAW;
    }
    if (ch == KEY_BACKSPACE || ch == 127 || ch == 8) {
        while (c->input_len && ((unsigned char)c->input[c->input_len - 1] & 0xC0) == 0x80)
            c->input_len--;
        if (c->input_len) c->input_len--;
        c->input[c->input_len] = 0;
        return UI_REDRAW;
    }
    if ((ch >= 32 && ch < 127) || (ch >= 128 && ch < 256)) {
        if (c->input_len < INPUT_MAX) {
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

static void draw_pane(ChatPane *p, Rect r, const char *title) {
    ui_frame(r, title, 0);
    Rect in = ui_inner(r);
    if (in.h <= 0 || in.w <= 4) return;
    ui_str(in.y, in.x + 1, in.w - 1, p->error ? ROLE_ERROR : ROLE_DIM, p->desc);
    /* transcript lines, bottom-aligned */
    int body = in.h - 1;
    int total = 0;
    for (int i = 0; i < p->n; i++)
        total += 1 + wrap_text(p->texts[i], in.w - 3, NULL, 0);
    if (p->scroll > total - body) p->scroll = total - body > 0 ? total - body : 0;
    int first = total - body - p->scroll; /* virtual line at the top row */
    int line = 0;
    WrapLine wl[512];
    for (int i = 0; i < p->n; i++) {
        int user = !strcmp(p->roles[i], "user");
        int y = in.y + 1 + line - first;
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
            y = in.y + 1 + line - first;
            if (line < first || y >= in.y + in.h) continue;
            ui_text(y, in.x + 3, in.w - 3, user ? ROLE_USER : ROLE_ASSISTANT,
                    p->texts[i] + wl[k].off, wl[k].len);
        }
    }
}

static void chat_draw(App *app) {
    ChatState *c = chat_get(app);
    ChatLayout L;
    layout_chat(app->rows, app->cols, c->side_by_side, &L);
    app_draw_header(app, L.header.y, L.header.w);
    // --- settings line
    ui_fill(L.settings, ROLE_NORMAL);
    char v[3][48];
    snprintf(v[0], sizeof v[0], "temperature %.2f", (double)c->s.temperature);
    snprintf(v[1], sizeof v[1], "top-p %.2f", (double)c->s.top_p);
    snprintf(v[2], sizeof v[2], "max tokens %d", c->s.max_new_tokens);
    int x = ui_str(L.settings.y, 1, L.settings.w - 1, ROLE_LABEL, "sampling: ") + 1;
    for (int i = 0; i < 3; i++) {
        x += ui_str(L.settings.y, x, L.settings.w - x, i == c->setting ? ROLE_SELECTED : ROLE_VALUE,
                    v[i]);
        x += ui_str(L.settings.y, x, L.settings.w - x, ROLE_DIM, "  ");
    }
    ui_str(L.settings.y, x, L.settings.w - x, ROLE_DIM, "(Up/Down pick, Left/Right change)");
    draw_pane(&c->pane[0], L.left, c->side_by_side ? "base" : "chat");
    if (c->side_by_side) draw_pane(&c->pane[1], L.right, "tuned");
    // --- input
    ui_frame(L.input, "message (Enter sends, Esc cancels a reply)", 1);
    Rect in = ui_inner(L.input);
    const char *shown = c->input;
    int w = text_width(c->input, c->input_len);
    while (w > in.w - 3 && *shown) { /* keep the end of a long line visible */
        shown++;
        while ((*shown & 0xC0) == 0x80)
            shown++;
        w = text_width(shown, strlen(shown));
    }
    int cx = in.x + 1 + ui_str(in.y, in.x + 1, in.w - 2, ROLE_NORMAL, shown);
    ui_str(in.y, cx, 1, ROLE_SELECTED, " ");
    ui_help_line(L.help, SCR_CHAT, 1);
}

const Screen screen_chat = {"Chat",      SCR_CHAT, chat_text_input, chat_enter,
                            chat_action, chat_key, chat_tick,       chat_draw};
