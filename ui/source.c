/* source.c: the EventSource that follows a run's metrics.jsonl, and the parsing of its lines
 * (see source.h). */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/err.h"
#include "../src/xalloc.h"

const char *ui_command_name(UiCommand cmd) {
    switch (cmd) {
    case CMD_PAUSE: return "pause";
    case CMD_RESUME: return "resume";
    case CMD_SAVE: return "save";
    case CMD_STOP: return "stop";
    }
    return "?";
}

// --- file follow

#define FOLLOW_READ_MAX (1 << 20) /* bytes read per poll: keeps a huge backlog from stalling keys */

typedef struct FileFollow {
    char dir[4096];
    char path[4096];
    int fd;
    dev_t dev;
    ino_t ino;
    off_t offset; /* bytes consumed from the file */
    char *buf;    /* unparsed bytes (a partial last line at most, plus backlog) */
    size_t len, cap;
    int reset_pending;
} FileFollow;

static void follow_reopen(FileFollow *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
    f->offset = 0;
    f->len = 0;
    if (f->fd >= 0) {
        struct stat st;
        if (fstat(f->fd, &st) == 0) f->dev = st.st_dev, f->ino = st.st_ino;
    }
}

static void follow_read(FileFollow *f) {
    struct stat st;
    if (f->fd < 0) {
        follow_reopen(f);
        if (f->fd < 0) return;
    } else if (stat(f->path, &st) == 0 && (st.st_dev != f->dev || st.st_ino != f->ino)) {
        follow_reopen(f); /* replaced by a new file */
        f->reset_pending = 1;
        if (f->fd < 0) return;
    }
    if (fstat(f->fd, &st) != 0) return;
    if (st.st_size < f->offset) { /* truncated: a new run over the old one */
        f->offset = 0;
        f->len = 0;
        f->reset_pending = 1;
    }
    size_t want = (size_t)(st.st_size - f->offset);
    if (!want) return;
    if (want > FOLLOW_READ_MAX) want = FOLLOW_READ_MAX;
    if (f->len + want + 1 > f->cap) {
        f->cap = f->len + want + 1;
        f->buf = xrealloc(f->buf, f->cap);
    }
    ssize_t got = pread(f->fd, f->buf + f->len, want, f->offset);
    if (got > 0) {
        f->len += (size_t)got;
        f->offset += got;
    }
}

static int follow_poll(EventSource *src, Event *out, int max) {
    FileFollow *f = src->ctx;
    int n = 0;
    if (max <= 0) return 0;
    if (!memchr(f->buf ? f->buf : "", '\n', f->buf ? f->len : 0)) follow_read(f);
    if (f->reset_pending) {
        event_clear(&out[n++], EV_RESET);
        f->reset_pending = 0;
    }
    size_t pos = 0;
    while (n < max && pos < f->len) {
        char *nl = memchr(f->buf + pos, '\n', f->len - pos);
        if (!nl) break; /* partial last line: keep for the next tick */
        size_t ll = (size_t)(nl - (f->buf + pos));
        if (ll && event_parse(f->buf + pos, ll, &out[n]) == 0 && out[n].type != EV_NONE) n++;
        pos += ll + 1;
    }
    if (pos) { /* pos == 0 when nothing was read yet: buf may still be NULL */
        memmove(f->buf, f->buf + pos, f->len - pos);
        f->len -= pos;
    }
    return n;
}

/* Appends the command to RUN/control. The trainer takes the file by renaming it (read_control),
 * so a line written between this open and the trainer's read of the renamed file would be lost
 * (seen once in CI: a resume lost, the run left paused). When the file this wrote to is no
 * longer RUN/control, the line goes again into the new one: the commands are idempotent (pause,
 * resume and stop set a state; save skips a step already saved), so one taken twice is
 * harmless. */
void (*source_test_after_write)(const char *control_path);

static int follow_command(EventSource *src, UiCommand cmd, char *err, size_t err_len) {
    FileFollow *f = src->ctx;
    char path[4200], line[32];
    snprintf(path, sizeof path, "%s/control", f->dir);
    int len = snprintf(line, sizeof line, "%s\n", ui_command_name(cmd));
    for (int tries = 0; tries < 8; tries++) {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            if (err) snprintf(err, err_len, "%s: %s", path, strerror(errno));
            return TUNA_EIO;
        }
        ssize_t w = write(fd, line, (size_t)len);
        int e = errno;
        if (source_test_after_write) source_test_after_write(path);
        struct stat mine, now;
        int same = fstat(fd, &mine) == 0 && stat(path, &now) == 0 && mine.st_ino == now.st_ino &&
                   mine.st_dev == now.st_dev;
        close(fd);
        if (w != len) {
            if (err) snprintf(err, err_len, "%s: %s", path, strerror(e));
            return TUNA_EIO;
        }
        if (same) break; /* still the file the trainer will take next */
    }
    return 0;
}

static int follow_alive(EventSource *src) {
    FileFollow *f = src->ctx;
    char path[4200];
    snprintf(path, sizeof path, "%s/train.pid", f->dir);
    FILE *fp = fopen(path, "r");
    if (!fp) return -1;
    long pid = 0;
    int ok = fscanf(fp, "%ld", &pid) == 1 && pid > 0;
    fclose(fp);
    if (!ok) return -1;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static void follow_close(EventSource *src) {
    FileFollow *f = src->ctx;
    if (f->fd >= 0) close(f->fd);
    free(f->buf);
    free(f);
}

static const EventSourceOps follow_ops = {follow_poll, NULL, follow_command, follow_alive,
                                          follow_close};

EventSource *source_file_open(const char *run_dir) {
    FileFollow *f = xcalloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s", run_dir);
    snprintf(f->path, sizeof f->path, "%s/metrics.jsonl", run_dir);
    f->fd = -1;
    EventSource *s = xcalloc(1, sizeof *s);
    s->ops = &follow_ops;
    s->ctx = f;
    snprintf(s->desc, sizeof s->desc, "%s", run_dir);
    return s;
}

// --- common

int source_command(EventSource *s, UiCommand cmd, char *err, size_t err_len) {
    if (!s) {
        if (err) snprintf(err, err_len, "no run attached");
        return TUNA_EINVAL;
    }
    return s->ops->command(s, cmd, err, err_len);
}

int source_alive(EventSource *s) {
    return s && s->ops->alive ? s->ops->alive(s) : -1;
}

void source_free(EventSource *s) {
    if (!s) return;
    if (s->ops->close) s->ops->close(s);
    free(s);
}
