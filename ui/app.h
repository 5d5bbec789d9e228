/* app.h: state shared by app.c and the screens (scr_*.c), private to ui/. The App is owned by
 * the UI thread; screens read the History and their own state when drawing and change state only
 * in their action/key/tick/event functions, which return UI_* flags (htop's HandlerResult). */
#ifndef TUNA_UI_APP_H
#define TUNA_UI_APP_H

#include <stddef.h>

#include "history.h"
#include "keys.h"
#include "runs.h"
#include "source.h"
#include "theme.h"

enum {
    UI_HANDLED = 1 << 0,
    UI_REDRAW = 1 << 1,
    UI_QUIT = 1 << 2,
};

typedef enum ScreenId {
    SCREEN_SETUP,
    SCREEN_TRAIN,
    SCREEN_CHAT,
    SCREEN_RUNS,
    SCREEN_COUNT
} ScreenId;

typedef struct App App;
typedef struct ChatState ChatState;
typedef struct SetupState SetupState;

typedef struct Screen {
    const char *name;
    unsigned bit;                /* SCR_* for the key table */
    int (*text_input)(App *app); /* 1 while a text field has the keyboard; may be NULL */
    void (*enter)(App *app);     /* on switching to it; may be NULL */
    int (*action)(App *app, Action a);
    int (*key)(App *app, int ch); /* keys the table did not bind; may be NULL */
    int (*tick)(App *app);        /* every loop turn (~100 ms); may be NULL */
    void (*draw)(App *app);
    void (*free)(App *app);   /* at exit: frees the screen's state; may be NULL */
    int (*wake_fd)(App *app); /* a descriptor whose input wakes the loop, or -1; may be NULL */
} Screen;

typedef struct TrainView {
    int zoom_all; /* 0: last zoom_n steps, 1: all */
    int zoom_n;
    int log_y;
    int focus;                     /* 0 samples, 1 log */
    int sample_scroll, log_scroll; /* lines up from the newest (0 = follow) */
    unsigned long drawn_version;
    double last_event_time; /* monotonic seconds of the last event */
    int pause_requested;
    double stop_armed_until; /* x pressed once: a second x within 3 s stops */
    double last_live_draw;
} TrainView;

struct App {
    int rows, cols;
    ScreenId screen;
    int help_open;
    int help_scroll; /* first help line shown */
    int dirty;
    char run_dir[4096];
    char runs_dir[4096];
    char model_dir[4096]; /* Chat base model / Setup default */
    char tuned_dir[4096]; /* Chat tuned model (a merged/full run dir); "" = none */
    char template_name[128];
    int template_given;     /* --template: Chat uses it over the run's own */
    char config_path[4096]; /* Setup: config file to load/save */
    EventSource *src;
    History *hist;
    TrainView tv;
    RunsList runs;
    int runs_sel, runs_top;
    double runs_scanned_at;
    ChatState *chat;
    SetupState *setup;
    char status[512];
    Role status_role;
    double status_until;
    int status_below;    /* the status did not fit the header: draw() puts it on the last line */
    char self_exe[4096]; /* for launching `tuna train` */
};

/* Shows a message in the header for a few seconds (and in the log pane). */
void app_status(App *app, Role role, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Follows run_dir (replacing the current source) and switches to the Train screen. */
void app_open_run(App *app, const char *run_dir);
/* Draws the header (tabs, run, status message). */
void app_draw_header(App *app, int y, int w);

extern const Screen screen_train, screen_runs, screen_chat, screen_setup;

double ui_now(void); /* monotonic seconds */

#endif
