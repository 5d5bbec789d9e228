/* control.h: the commands a user writes into RUN/control to steer a background run (pause,
 * resume, save, stop), one per line. The parsing is pure (no files) so that tests and the fuzzer
 * drive it; src/train.c reads the file and acts on the bits. */
#ifndef TUNA_SRC_CONTROL_H
#define TUNA_SRC_CONTROL_H

#include <stddef.h>

enum { CTL_PAUSE = 1, CTL_RESUME = 2, CTL_SAVE = 4, CTL_STOP = 8 };

/* The longest RUN/control text read at once; more is left for the next read's warning. */
#define CONTROL_MAX_BYTES 65536

/* CTL_* bits of the commands in text[0..n) (NULs and any bytes allowed): one command per line,
 * spaces and tabs around it ignored, a line of anything else counted in *n_unknown (may be NULL)
 * with the first one copied into unknown (cap bytes, printable ASCII, others as '?', cut at 40
 * characters; may be NULL). Of pause and resume only the last one written counts. */
int control_parse(const char *text, size_t n, char *unknown, size_t cap, int *n_unknown);

#endif
