/* source.h: where the UI's training events come from and where its commands go.
 *
 * An EventSource is a small vtable (ggml-backend style) so that other producers can be added;
 * today there is one: source_file_open(RUN_DIR) follows RUN_DIR/metrics.jsonl, both for
 * `tuna watch` and for the Train screen (which forks `tuna train` and follows its run folder).
 * No inotify: each source_poll re-reads the bytes appended since the last call, parses
 * complete lines and keeps a partial last line for the next call. A file that shrinks (a new
 * run written over the old one) restarts from the top with an EV_RESET event.
 *
 * metrics.jsonl: one JSON object a line, the Event of src/events.h, which the trainer writes and
 * event_parse reads back with one table (unknown types and keys are ignored).
 *
 * CONTROL FILE (file-follow mode): source_command appends one line to RUN_DIR/control, opened
 * O_APPEND|O_CREAT: "pause\n", "resume\n", "save\n" or "stop\n". The trainer should, between
 * steps, read the bytes of RUN_DIR/control past the offset it last read (start at the size it
 * finds when the run starts, or truncate it), act on each complete line in order, and answer
 * with a {"type":"state","state":"paused"|"running"}, {"type":"checkpoint",...} or
 * {"type":"done","status":"stopped"} line in metrics.jsonl. Unknown lines are ignored.
 *
 * Ownership: the creator frees with source_free (NULL-safe). Threads: the UI thread only. */
#ifndef TUNA_UI_SOURCE_H
#define TUNA_UI_SOURCE_H

#include <stddef.h>

#include "../src/events.h"

#define UI_TEXT_MAX 2048 /* what the UI keeps of a text */
#define UI_NAME_MAX 256

typedef enum UiCommand { CMD_PAUSE, CMD_RESUME, CMD_SAVE, CMD_STOP } UiCommand;

typedef struct EventSource EventSource;

typedef struct EventSourceOps {
    /* Copies up to max pending events into out; returns how many (0 = none now). */
    int (*poll)(EventSource *src, Event *out, int max);
    /* An fd that becomes readable when events are pending (the UI polls it), or -1: the UI then
     * calls poll on its ~100 ms tick. The UI reads and discards its bytes. */
    int (*wake_fd)(EventSource *src);
    /* Sends a command; 0 or a negative TUNA_E* with a message in err (msg[512]). */
    int (*command)(EventSource *src, UiCommand cmd, char *err, size_t err_len);
    /* 1 when the producer is alive (pid file), 0 when gone, -1 unknown. */
    int (*alive)(EventSource *src);
    void (*close)(EventSource *src); /* frees ctx */
} EventSourceOps;

struct EventSource {
    const EventSourceOps *ops;
    void *ctx;
    char desc[UI_NAME_MAX]; /* shown in the header: the run folder */
};

/* Follows run_dir/metrics.jsonl (the file need not exist yet). Never fails except on OOM. */
EventSource *source_file_open(const char *run_dir);

static inline int source_poll(EventSource *s, Event *out, int max) {
    return s ? s->ops->poll(s, out, max) : 0;
}
static inline int source_wake_fd(EventSource *s) {
    return s && s->ops->wake_fd ? s->ops->wake_fd(s) : -1;
}
int source_command(EventSource *s, UiCommand cmd, char *err, size_t err_len);
/* For tests: source_command (file-follow mode) calls it with RUN_DIR/control's path after each
 * write of its line and before it checks that the file it wrote is still RUN_DIR/control (the
 * trainer takes the file by renaming it, at any moment). NULL in the program. */
extern void (*source_test_after_write)(const char *control_path);
int source_alive(EventSource *s);
void source_free(EventSource *s); /* NULL-safe */

/* The command's control-file word ("pause", ...). */
const char *ui_command_name(UiCommand cmd);

#endif
