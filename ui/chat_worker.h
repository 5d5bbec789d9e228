/* chat_worker.h: a generation worker thread for the Chat screen. The worker owns its Backend,
 * Model, Tokenizer and Template (the UI never touches model memory); the UI sends a whole
 * conversation with sampling settings and drains text pieces, streamed as generated, from a
 * queue; a byte on the shared wake pipe wakes the UI's poll (redis bio.c pattern).
 * Create/send/drain/cancel/free from the UI thread only. */
#ifndef TUNA_UI_CHAT_WORKER_H
#define TUNA_UI_CHAT_WORKER_H

#include <stddef.h>

typedef enum ChatMsgKind { CHATMSG_READY, CHATMSG_TEXT, CHATMSG_DONE, CHATMSG_ERROR } ChatMsgKind;

typedef struct ChatOut {
    ChatMsgKind kind;
    char text[1024]; /* READY: model description; TEXT: a piece; DONE: stats; ERROR: message */
} ChatOut;

typedef struct ChatSettings {
    float temperature; /* 0 = greedy */
    float top_p;
    int max_new_tokens;
    unsigned long long seed;
    int share; /* replies generated at the same time (side by side: 2): each takes its share of
                  the idle cores (0 or 1: all of them) */
    char system[1024]; /* system prompt; "" = the template's default_system */
    char kv_cache[8];  /* the KV cache's type, --cache-type's names: "f32" (or ""), "f16",
                          "q8_0"; one the model cannot take keeps the last (the reply says so) */
} ChatSettings;

typedef struct ChatWorker ChatWorker;

/* Starts a thread that loads model_dir (and templates/template_name.json when it exists; else
 * the prompt is the plain text of the last user message). wake_fd: write end of a pipe, or -1.
 * Loading errors arrive as a CHATMSG_ERROR. Returns NULL only if the thread cannot start. */
ChatWorker *chat_worker_start(const char *model_dir, const char *template_name, int wake_fd);
/* Switches to templates/template_name.json ("" or a missing file: plain text) before the next
 * reply; a CHATMSG_READY with the new description follows. */
void chat_worker_set_template(ChatWorker *w, const char *template_name);
/* Queues a generation for the conversation (roles "user"/"assistant", the last one "user");
 * strings are copied. Returns -1 while a reply is still being generated. */
int chat_worker_send(ChatWorker *w, const char *const *roles, const char *const *contents, int n,
                     const ChatSettings *s);
/* Copies up to max pending outputs; returns the count. */
int chat_worker_drain(ChatWorker *w, ChatOut *out, int max);
/* Stops the current reply at the next token. */
void chat_worker_cancel(ChatWorker *w);
/* Cancels, joins and frees everything the worker owns. NULL-safe. */
void chat_worker_free(ChatWorker *w);

#endif
