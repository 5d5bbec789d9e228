/* keys.h: the one key table (htop's Action_setBindings, without the separate help tables): each
 * row binds a key to an Action on a set of screens with a short label and a help sentence, and
 * the same rows drive dispatch (keys_lookup), the bottom help line and the help screen.
 * Actions are carried out by app.c/scr_*.c, which return flags and never draw. UI thread. */
#ifndef TUNA_UI_KEYS_H
#define TUNA_UI_KEYS_H

typedef enum Action {
    ACT_NONE,
    ACT_QUIT,
    ACT_HELP,
    ACT_SCR_SETUP,
    ACT_SCR_TRAIN,
    ACT_SCR_CHAT,
    ACT_SCR_RUNS,
    ACT_PAUSE,    /* pause or resume */
    ACT_SAVE,     /* checkpoint now */
    ACT_STOP,     /* stop (the trainer saves first) */
    ACT_ZOOM,     /* plot: last N steps <-> all */
    ACT_LOGSCALE, /* plot: log y */
    ACT_FOCUS,    /* next pane / field group */
    ACT_UP,
    ACT_DOWN,
    ACT_PGUP,
    ACT_PGDN,
    ACT_HOME,
    ACT_END,
    ACT_LEFT,
    ACT_RIGHT,
    ACT_OPEN,     /* Enter: open run, send message, edit field */
    ACT_REFRESH,  /* rescan runs */
    ACT_SIDE,     /* chat: side-by-side on/off */
    ACT_CLEAR,    /* chat: new conversation */
    ACT_CFG_SAVE, /* setup: write the config JSON */
    ACT_CFG_LOAD, /* setup: read it back */
    ACT_START,    /* setup: start training */
    ACT_CKPT,     /* chat: tuned pane on the next checkpoint of the run */
    ACT_SYSTEM,   /* chat: edit the system prompt */
    ACT_COUNT
} Action;

/* Screen bits a binding applies to. */
enum {
    SCR_SETUP = 1 << 0,
    SCR_TRAIN = 1 << 1,
    SCR_CHAT = 1 << 2,
    SCR_RUNS = 1 << 3,
    SCR_ALL = 0xF,
};

/* A row with action ACT_NONE only documents a key that the screen's own key function handles
 * (Esc, Tab on Setup's model field): it shows in the help and dispatch passes the key on. */
typedef struct KeyBinding {
    int key;           /* curses key code */
    const char *name;  /* "p", "F2", "Enter" */
    const char *label; /* help line label; NULL = not on the help line */
    const char *help;  /* help screen sentence */
    unsigned screens;  /* SCR_* bits */
    int printable;     /* a text key: ignored while a text field has the focus */
    Action action;
} KeyBinding;

/* The table, terminated by a row with key 0. */
const KeyBinding *keys_table(void);
/* The action bound to key on screen (SCR_* bit); text_input: printable keys go to the field. */
Action keys_lookup(unsigned screen, int key, int text_input);

#define KEYS_HELP_COLS 256 /* bytes of one help line, NUL included */

/* The help screen of screen (SCR_* bit) as lines of at most width columns (ASCII, width is
 * clamped to 30 .. KEYS_HELP_COLS - 1): what typing does on screens with text fields, then one
 * entry per action with all its keys ("F2 1") and the sentence of its first key, wrapped under
 * its own column, then a closing note. Writes up to max lines into out (NULL: count only);
 * returns the total. Curses-free. */
int keys_help_lines(unsigned screen, int width, char (*out)[KEYS_HELP_COLS], int max);

#endif
