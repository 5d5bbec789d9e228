/* ui.h: the terminal workbench's entry points (the lead adds them to main.c's command table).
 * Both take over the terminal with curses and always give it back: on return, on Ctrl-C/SIGTERM
 * and on crash signals. They return the process exit code (0 ok, 1 error, 2 usage). Engine errors
 * show inside the UI; stderr written while curses is up is printed after the screen is restored.
 * Main thread only. */
#ifndef TUNA_UI_UI_H
#define TUNA_UI_UI_H

/* `tuna watch RUN_DIR [--no-color] [--ascii]`: follows RUN_DIR/metrics.jsonl (a headless
 * `tuna train` writing it now, or a finished run) in the Train screen. argv[0] is "watch". */
int cmd_watch(int argc, char **argv);

/* `tuna ui [--runs DIR] [--model DIR] [--tuned DIR] [--template NAME] [--config FILE]
 * [--screen setup|train|chat|runs] [--no-color] [--ascii]`, and `tuna` with no arguments:
 * opens Runs when the runs folder holds runs, else Setup. argv[0] is "ui". */
int cmd_ui(int argc, char **argv);

#endif
