/* app.c: curses setup and teardown, the main loop, signal flags, stderr capture, and the
 * `tuna watch` / `tuna ui` entry points. The only file in ui/ that may end the process.
 *
 * Loop (htop's collect -> update -> draw, nvtop's timed getch):
 *   poll(stdin, wake fds, 100 ms) -> drain events into the History -> keys through the key
 *   table to screen actions (which return UI_* flags) -> tick -> draw if dirty.
 * Signal handlers only set flags; crash signals restore the terminal with async-signal-safe
 * calls (tcsetattr, write) and re-raise. */
#include "ui.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../src/err.h"
#include "../src/xalloc.h"
#include "app.h"
#include "curses_wrap.h"
#include "layout.h"
#include "widgets.h"

#define TICK_MS         100
#define EVENTS_PER_TURN 64

// --- process-wide terminal state. These are the only globals in ui/: signal handlers and the
// panic hook have no other way to reach them (nvtop's flag-only handlers).

static volatile sig_atomic_t sig_quit, sig_winch, sig_cont;
static struct termios tty_saved;
static int tty_saved_ok;
static int stderr_saved = -1, stderr_cap = -1;
static char tty_reset_seq[256]; /* rmcup + cnorm + sgr0, captured after initscr */
static size_t tty_reset_len;
static int curses_up;

double ui_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_quit_signal(int sig) {
    (void)sig;
    sig_quit = 1;
}

static void on_winch(int sig) {
    (void)sig;
    sig_winch = 1;
}

static void on_cont(int sig) {
    (void)sig;
    sig_cont = 1;
}

/* Writes the captured stderr to the real one. Async-signal-safe (read/write/lseek only). */
static void stderr_flush_capture(void) {
    if (stderr_cap < 0 || stderr_saved < 0) return;
    char buf[4096];
    ssize_t k;
    lseek(stderr_cap, 0, SEEK_SET);
    while ((k = read(stderr_cap, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < k) {
            ssize_t w = write(stderr_saved, buf + off, (size_t)(k - off));
            if (w <= 0) break;
            off += w;
        }
    }
}

static void on_crash(int sig) {
    if (curses_up) {
        if (tty_reset_len) {
            ssize_t w = write(STDOUT_FILENO, tty_reset_seq, tty_reset_len);
            (void)w;
        }
        if (tty_saved_ok) tcsetattr(STDIN_FILENO, TCSANOW, &tty_saved);
        if (stderr_saved >= 0) {
            dup2(stderr_saved, STDERR_FILENO);
            stderr_flush_capture();
        }
        static const char msg[] = "tuna: crashed; the terminal was restored\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void stderr_capture_begin(void) {
    fflush(stderr);
    int fd = memfd_create("tuna-stderr", MFD_CLOEXEC);
    if (fd < 0) {
        char tmpl[] = "/tmp/tuna-stderr-XXXXXX";
        fd = mkstemp(tmpl);
        if (fd >= 0) unlink(tmpl);
    }
    if (fd < 0) return;
    stderr_saved = dup(STDERR_FILENO);
    if (stderr_saved < 0) {
        close(fd);
        return;
    }
    stderr_cap = fd;
    dup2(fd, STDERR_FILENO);
}

static void stderr_capture_end(void) {
    if (stderr_cap < 0) return;
    fflush(stderr);
    dup2(stderr_saved, STDERR_FILENO);
    stderr_flush_capture();
    close(stderr_cap);
    close(stderr_saved);
    stderr_cap = stderr_saved = -1;
}

static void append_cap(const char *name) {
    const char *s = tigetstr(name);
    if (!s || s == (char *)-1) return;
    size_t n = strlen(s);
    if (tty_reset_len + n < sizeof tty_reset_seq) {
        memcpy(tty_reset_seq + tty_reset_len, s, n);
        tty_reset_len += n;
    }
}

static void terminal_restore(void) {
    if (!curses_up) return;
    endwin();
    curses_up = 0;
    stderr_capture_end();
}

static void panic_hook(void) {
    terminal_restore();
}

static int terminal_init(int want_color) {
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "tuna: the workbench needs a terminal (stdin and stdout)\n");
        return -1;
    }
    char why[400]; /* TERM=dumb and the like: one line and exit 1, not a blank screen */
    if (theme_term_check(why, sizeof why)) {
        fprintf(stderr, "tuna: %s\n", why);
        return -1;
    }
    if (tcgetattr(STDIN_FILENO, &tty_saved) == 0) tty_saved_ok = 1;
    stderr_capture_begin();
    if (!getenv("ESCDELAY"))
        set_escdelay(100); /* long enough for F-key sequences over a slow link */
    if (!initscr()) {
        stderr_capture_end();
        fprintf(stderr, "tuna: cannot initialise the terminal (TERM=%s)\n",
                getenv("TERM") ? getenv("TERM") : "");
        return -1;
    }
    curses_up = 1;
    tuna_set_panic_hook(panic_hook);
    append_cap("rmcup");
    append_cap("cnorm");
    append_cap("sgr0");
    cbreak();
    /* ^S/^Q are keys here (save config), not XON/XOFF flow control; endwin restores the shell's
       modes saved by initscr */
    struct termios t;
    if (tcgetattr(STDIN_FILENO, &t) == 0) {
        t.c_iflag &= ~(tcflag_t)(IXON | IXOFF);
        tcsetattr(STDIN_FILENO, TCSANOW, &t);
        def_prog_mode();
    }
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    curs_set(0);
    theme_init(want_color);
    // signals: flags only (installed after initscr so ours win over ncurses' SIGWINCH)
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_quit_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
    sa.sa_handler = on_cont;
    sigaction(SIGCONT, &sa, NULL);
    sa.sa_handler = on_crash;
    sa.sa_flags = SA_RESETHAND;
    int crash[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof crash / sizeof crash[0]; i++)
        sigaction(crash[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

// --- App helpers used by the screens

void app_status(App *app, Role role, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(app->status, sizeof app->status, fmt, ap);
    va_end(ap);
    app->status_role = role;
    app->status_until = ui_now() + 5;
    history_note(app->hist, role == ROLE_ERROR ? 2 : role == ROLE_WARN ? 1 : 0, app->status);
    app->dirty = 1;
}

void app_open_run(App *app, const char *run_dir) {
    source_free(app->src);
    history_reset(app->hist);
    app->tv.sample_scroll = app->tv.log_scroll = 0;
    app->tv.pause_requested = 0;
    snprintf(app->run_dir, sizeof app->run_dir, "%s", run_dir);
    app->src = source_file_open(run_dir);
    app->tv.last_event_time = 0;
    app->screen = SCREEN_TRAIN;
    app->dirty = 1;
}

static const Screen *screens[SCREEN_COUNT] = {&screen_setup, &screen_train, &screen_chat,
                                              &screen_runs};

/* 1 while the screen's text field has the keyboard (digits and q type, F2-F5 and F10 still act). */
static int app_text_input(App *app) {
    const Screen *s = screens[app->screen];
    return s->text_input ? s->text_input(app) : 0;
}

void app_draw_header(App *app, int y, int w) {
    Rect r = {y, 0, 1, w};
    ui_fill(r, ROLE_HEADER);
    int x = ui_str(y, 0, w, ROLE_HEADER, " tuna ");
    /* the tabs name the keys that switch now: 1-4, or F2-F5 while a field takes the typing */
    int text = app_text_input(app);
    for (int i = 0; i < SCREEN_COUNT; i++) {
        char t[32];
        snprintf(t, sizeof t, text ? " F%d %s " : " %d %s ", text ? i + 2 : i + 1,
                 screens[i]->name);
        x += ui_str(y, x, w - x, i == (int)app->screen ? ROLE_TAB_ACTIVE : ROLE_TAB, t);
    }
    char right[4200] = "";
    Role rr = ROLE_HEADER;
    int status = app->status[0] && ui_now() < app->status_until;
    app->status_below = 0;
    if (status) {
        snprintf(right, sizeof right, " %s ", app->status);
        rr = app->status_role == ROLE_ERROR  ? ROLE_ERROR
             : app->status_role == ROLE_WARN ? ROLE_WARN
                                             : ROLE_HEADER;
        if (rr != ROLE_HEADER && !theme_has_color()) rr = ROLE_HEADER;
    } else if (app->run_dir[0]) {
        snprintf(right, sizeof right, " %s ", app->run_dir);
    }
    int rw = text_width(right, strlen(right));
    if (x + 1 + rw > w) {
        if (status) { /* a message is never cut: it goes on the bottom line (draw_status_below) */
            app->status_below = 1;
            return;
        }
        /* a long run folder keeps its end (the run's name) after "..." */
        rw = w - x - 1;
        const char *tail = right;
        while (*tail && text_width(tail, strlen(tail)) > rw - 3)
            tail++;
        if (rw > 4) {
            ui_str(y, w - rw, 3, ROLE_HEADER, "...");
            ui_str(y, w - rw + 3, rw - 3, ROLE_HEADER, tail);
        }
        return;
    }
    if (rw > 0) ui_text(y, w - rw, rw, rr == ROLE_HEADER ? ROLE_HEADER : rr, right, strlen(right));
}

/* A status message too long for the header, in full over the bottom rows (ui_message). */
static void draw_status_below(App *app) {
    if (!app->status_below) return;
    Role role = app->status_role == ROLE_ERROR  ? ROLE_ERROR
                : app->status_role == ROLE_WARN ? ROLE_WARN
                                                : ROLE_HEADER;
    if (!theme_has_color()) role = ROLE_HEADER;
    ui_message(app->rows, app->cols, role, app->status);
}

// --- the help screen (F1, ?): the key table's lines for this screen, scrolled by Up/Down/PgUp/
// PgDn/Home/End; any other key closes it

#define HELP_LINES_MAX 96

static int help_lines(App *app, char (*lines)[KEYS_HELP_COLS]) {
    int n = keys_help_lines(screens[app->screen]->bit, app->cols - 4, lines, HELP_LINES_MAX);
    return n < HELP_LINES_MAX ? n : HELP_LINES_MAX;
}

static void draw_help(App *app) {
    static char lines[HELP_LINES_MAX][KEYS_HELP_COLS]; /* UI thread only */
    int n = help_lines(app, lines);
    int body = app->rows - 2;
    if (app->help_scroll > n - body) app->help_scroll = n - body > 0 ? n - body : 0;
    if (app->help_scroll < 0) app->help_scroll = 0;
    char title[128];
    snprintf(title, sizeof title, "tuna help: %s%s", screens[app->screen]->name,
             n > body ? " (Up/Down/PgUp/PgDn scroll, other keys close)" : " (any key closes)");
    ui_frame((Rect){0, 0, app->rows, app->cols}, title, 1);
    for (int i = 0; i < body && app->help_scroll + i < n; i++) {
        const char *l = lines[app->help_scroll + i];
        /* a key line ("  F2 1      Setup: ..."): the keys in the key colour */
        if (l[0] == ' ' && l[1] == ' ' && l[2] && l[2] != ' ' && strlen(l) > 12) {
            ui_text(1 + i, 2, 11, ROLE_KEY, l, 11);
            ui_str(1 + i, 13, app->cols - 15, ROLE_NORMAL, l + 11);
        } else {
            ui_str(1 + i, 2, app->cols - 4, ROLE_NORMAL, l);
        }
    }
    if (n > body) {
        char more[64];
        snprintf(more, sizeof more, " lines %d-%d of %d ", app->help_scroll + 1,
                 app->help_scroll + body < n ? app->help_scroll + body : n, n);
        int mw = (int)strlen(more);
        ui_str(app->rows - 1, app->cols - mw - 2, mw, ROLE_DIM, more);
    }
}

static int help_key(App *app, int ch) {
    int body = app->rows - 2;
    int n = keys_help_lines(screens[app->screen]->bit, app->cols - 4, NULL, 0);
    if (n <= body) ch = 0; /* one page: any key closes it, as its title says */
    switch (ch) {
    case KEY_UP: app->help_scroll--; break;
    case KEY_DOWN: app->help_scroll++; break;
    case KEY_PPAGE: app->help_scroll -= body - 1; break;
    case KEY_NPAGE: app->help_scroll += body - 1; break;
    case KEY_HOME: app->help_scroll = 0; break;
    case KEY_END: app->help_scroll = HELP_LINES_MAX; break;
    default: app->help_open = 0; break;
    }
    return UI_REDRAW; /* draw_help clamps the scroll */
}

// --- the loop

static void handle_resize(App *app) {
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0)
        resizeterm(ws.ws_row, ws.ws_col);
    app->rows = LINES;
    app->cols = COLS;
    app->dirty = 1;
}

static void draw(App *app) {
    erase();
    if (app->rows < LAYOUT_MIN_ROWS || app->cols < LAYOUT_MIN_COLS) {
        ui_too_small(app->rows, app->cols);
    } else if (app->help_open) {
        draw_help(app);
    } else {
        screens[app->screen]->draw(app);
        draw_status_below(app);
    }
    refresh();
}

static void switch_screen(App *app, ScreenId id) {
    if (app->screen == id) return;
    app->screen = id;
    if (screens[id]->enter) screens[id]->enter(app);
    app->dirty = 1;
}

static int handle_key(App *app, int ch) {
    if (ch == KEY_RESIZE) {
        app->rows = LINES;
        app->cols = COLS;
        return UI_REDRAW;
    }
    if (app->help_open) return help_key(app, ch);
    const Screen *s = screens[app->screen];
    Action a = keys_lookup(s->bit, ch, app_text_input(app));
    switch (a) {
    case ACT_QUIT: return UI_QUIT;
    case ACT_HELP:
        app->help_open = 1;
        app->help_scroll = 0;
        return UI_REDRAW;
    case ACT_SCR_SETUP: switch_screen(app, SCREEN_SETUP); return UI_REDRAW;
    case ACT_SCR_TRAIN: switch_screen(app, SCREEN_TRAIN); return UI_REDRAW;
    case ACT_SCR_CHAT: switch_screen(app, SCREEN_CHAT); return UI_REDRAW;
    case ACT_SCR_RUNS: switch_screen(app, SCREEN_RUNS); return UI_REDRAW;
    case ACT_NONE: return s->key ? s->key(app, ch) : 0;
    default: return s->action(app, a);
    }
}

static int drain_events(App *app) {
    static Event evs[EVENTS_PER_TURN]; /* ~0.9 MB: static, off the stack; UI thread only */
    int any = 0, n;
    RunStatus was = app->hist->status;
    /* at most a few batches per turn so a long backlog never delays keys */
    for (int round = 0; round < 32 && (n = source_poll(app->src, evs, EVENTS_PER_TURN)) > 0;
         round++) {
        for (int i = 0; i < n; i++)
            history_apply(app->hist, &evs[i]);
        any = 1;
        if (n < EVENTS_PER_TURN) break;
    }
    if (any) app->tv.last_event_time = ui_now();
    /* a run that ends in an error (a failed start included) says so in the header too */
    if (app->hist->status == RUN_ERROR && was != RUN_ERROR)
        app_status(app, ROLE_ERROR, "training failed: %s",
                   app->hist->done_msg[0] ? app->hist->done_msg : "see the log");
    return any;
}

static int run_loop(App *app) {
    app->rows = LINES;
    app->cols = COLS;
    app->dirty = 1;
    if (screens[app->screen]->enter) screens[app->screen]->enter(app);
    int status_shown = 0;
    while (!sig_quit) {
        if (sig_winch || sig_cont) {
            sig_winch = sig_cont = 0;
            handle_resize(app);
        }
        drain_events(app);
        for (int i = 0; i < SCREEN_COUNT; i++)
            if (screens[i]->tick && screens[i]->tick(app) & UI_REDRAW && (int)app->screen == i)
                app->dirty = 1;
        int showing = app->status[0] && ui_now() < app->status_until;
        if (showing != status_shown) app->dirty = 1;
        status_shown = showing;
        if (app->dirty) {
            draw(app);
            app->dirty = 0;
        }
        struct pollfd pf[2 + SCREEN_COUNT];
        int nf = 0;
        pf[nf++] = (struct pollfd){STDIN_FILENO, POLLIN, 0};
        int wfd = source_wake_fd(app->src);
        if (wfd >= 0) pf[nf++] = (struct pollfd){wfd, POLLIN, 0};
        for (int i = 0; i < SCREEN_COUNT; i++) { /* a screen's worker (Chat's replies) */
            int sfd = screens[i]->wake_fd ? screens[i]->wake_fd(app) : -1;
            if (sfd >= 0 && nf < (int)(sizeof pf / sizeof pf[0]))
                pf[nf++] = (struct pollfd){sfd, POLLIN, 0};
        }
        int r = poll(pf, (nfds_t)nf, TICK_MS);
        if (r < 0 && errno != EINTR) break;
        for (int i = 1; i < nf; i++)
            if (pf[i].revents & POLLIN) {
                char buf[256];
                ssize_t k = read(pf[i].fd, buf, sizeof buf);
                (void)k;
            }
        int ch, quit = 0;
        while ((ch = getch()) != ERR) {
            int fl = handle_key(app, ch);
            if (fl & UI_QUIT) quit = 1;
            if (fl & (UI_REDRAW | UI_HANDLED)) app->dirty = 1;
            if (quit) break;
        }
        if (quit) break;
    }
    return 0;
}

// --- entry points

static App *app_new(void) {
    App *app = xcalloc(1, sizeof *app);
    app->hist = history_new();
    app->tv.zoom_n = 50;
    snprintf(app->runs_dir, sizeof app->runs_dir, "runs");
    snprintf(app->model_dir, sizeof app->model_dir, "models/stories260K");
    snprintf(app->template_name, sizeof app->template_name, "auto");
    snprintf(app->config_path, sizeof app->config_path, "tuna_config.json");
    ssize_t k = readlink("/proc/self/exe", app->self_exe, sizeof app->self_exe - 1);
    if (k > 0)
        app->self_exe[k] = 0;
    else
        snprintf(app->self_exe, sizeof app->self_exe, "./tuna");
    return app;
}

static void app_free(App *app) {
    if (!app) return;
    for (int i = 0; i < SCREEN_COUNT; i++)
        if (screens[i]->free) screens[i]->free(app);
    source_free(app->src);
    history_free(app->hist);
    runs_free(&app->runs);
    free(app);
}

static int app_run(App *app, int want_color) {
    setlocale(LC_ALL, "");
    if (terminal_init(want_color)) return 1;
    int rc = run_loop(app);
    terminal_restore();
    return rc;
}

enum {
    OPT_NO_COLOR = 256,
    OPT_ASCII,
    OPT_RUNS,
    OPT_MODEL,
    OPT_TUNED,
    OPT_TEMPLATE,
    OPT_CONFIG,
    OPT_SCREEN,
    OPT_HELP
};

static const struct option ui_longopts[] = {
        {"no-color", no_argument, NULL, OPT_NO_COLOR},
        {"ascii", no_argument, NULL, OPT_ASCII},
        {"runs", required_argument, NULL, OPT_RUNS},
        {"model", required_argument, NULL, OPT_MODEL},
        {"tuned", required_argument, NULL, OPT_TUNED},
        {"template", required_argument, NULL, OPT_TEMPLATE},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"screen", required_argument, NULL, OPT_SCREEN},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
};

static const char *ui_help_text =
        "usage: tuna watch RUN_DIR [options]     follow a run (a background `tuna train`)\n"
        "       tuna ui [options]                the workbench: Setup, Train, Chat, Runs\n\n"
        "options:\n"
        "  --no-color          no colours (also NO_COLOR=1)\n"
        "  --ascii             ASCII plots and bars (also TUNA_ASCII=1; default by locale)\n"
        "  --runs DIR          runs folder (default runs)\n"
        "  --model DIR         model for Setup and Chat (default models/stories260K)\n"
        "  --tuned DIR         second model for side-by-side chat (a checkpoint, or a run folder\n"
        "                      with a LoRA adapter; default: the open run's folder if it has one)\n"
        "  --template NAME     chat template (default: the run's own, else vanilla)\n"
        "  --config FILE       Setup: configuration JSON to load and save\n"
        "  --screen NAME       ui: open setup|train|chat|runs first\n"
        "  --help              show this help\n"
        "keys: F1 or ? inside the UI. Pause/save/stop reach a background trainer through\n"
        "RUN_DIR/control (one word a line: pause, resume, save, stop).\n";

/* Parses the shared options; returns 0, 1 for --help, 2 on a usage error. */
static int parse_opts(int argc, char **argv, App *app, int *color, const char **screen) {
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", ui_longopts, NULL)) != -1) {
        switch (c) {
        case OPT_NO_COLOR: *color = 0; break;
        case OPT_ASCII: setenv("TUNA_ASCII", "1", 1); break;
        case OPT_RUNS: snprintf(app->runs_dir, sizeof app->runs_dir, "%s", optarg); break;
        case OPT_MODEL: snprintf(app->model_dir, sizeof app->model_dir, "%s", optarg); break;
        case OPT_TUNED: snprintf(app->tuned_dir, sizeof app->tuned_dir, "%s", optarg); break;
        case OPT_TEMPLATE:
            snprintf(app->template_name, sizeof app->template_name, "%s", optarg);
            app->template_given = 1;
            break;
        case OPT_CONFIG: snprintf(app->config_path, sizeof app->config_path, "%s", optarg); break;
        case OPT_SCREEN: *screen = optarg; break;
        case OPT_HELP: fputs(ui_help_text, stdout); return 1;
        default:
            fprintf(stderr, "tuna %s: unknown option \"%s\" (see --help)\n", argv[0],
                    argv[optind - 1]);
            return 2;
        }
    }
    return 0;
}

int cmd_watch(int argc, char **argv) {
    App *app = app_new();
    int color = 1, rc;
    const char *screen = NULL;
    rc = parse_opts(argc, argv, app, &color, &screen);
    if (rc) {
        app_free(app);
        return rc == 1 ? 0 : 2;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tuna watch: expected one RUN_DIR (see --help)\n");
        app_free(app);
        return 2;
    }
    /* a typo must not wait forever: the folder exists, or one line and exit 1 */
    const char *run = argv[optind];
    struct stat sb;
    int missing = stat(run, &sb) != 0;
    if (missing || !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "tuna watch: %s: %s\n", run,
                !missing          ? "not a folder (a run folder holds metrics.jsonl)"
                : errno == ENOENT ? "no such run folder"
                                  : strerror(errno));
        app_free(app);
        return 1;
    }
    char metrics[4200];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run);
    if (access(metrics, F_OK)) fprintf(stderr, "tuna watch: waiting for %s\n", metrics);
    app_open_run(app, run);
    rc = app_run(app, color);
    app_free(app);
    return rc;
}

int cmd_ui(int argc, char **argv) {
    App *app = app_new();
    int color = 1, rc;
    const char *screen = NULL;
    rc = parse_opts(argc, argv, app, &color, &screen);
    if (rc) {
        app_free(app);
        return rc == 1 ? 0 : 2;
    }
    if (optind < argc) {
        fprintf(stderr, "tuna ui: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        app_free(app);
        return 2;
    }
    runs_scan(app->runs_dir, &app->runs);
    app->screen = app->runs.n ? SCREEN_RUNS : SCREEN_SETUP;
    if (screen) {
        static const char *names[] = {"setup", "train", "chat", "runs"};
        int found = 0;
        for (int i = 0; i < SCREEN_COUNT; i++)
            if (!strcmp(screen, names[i])) app->screen = (ScreenId)i, found = 1;
        if (!found) {
            fprintf(stderr, "tuna ui: --screen: expected setup|train|chat|runs, got \"%s\"\n",
                    screen);
            app_free(app);
            return 2;
        }
    }
    rc = app_run(app, color);
    app_free(app);
    return rc;
}

#ifdef TUNA_UI_STANDALONE
/* A test binary until main.c wires the commands: cc ... -DTUNA_UI_STANDALONE ui/app.c ... */
int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "watch")) return cmd_watch(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "ui")) return cmd_ui(argc - 1, argv + 1);
    if (argc == 1) {
        char *args[] = {(char *)"ui", NULL};
        return cmd_ui(1, args);
    }
    fprintf(stderr, "usage: %s watch RUN_DIR | ui [options]\n", argv[0]);
    return 2;
}
#endif
