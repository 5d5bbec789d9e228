/* err.h: error values returned by the engine, and TUNA_ASSERT for bugs.
 *
 * Anything that can fail on input, I/O or resources returns int (0 or a negative TUNA_E*)
 * and takes `TunaErr *err` last (NULL allowed). The message is one line that names the file,
 * the position, what was expected and what was found. Asserts are for invariants only, never
 * for file or user data. Any thread may call these. */
#ifndef TUNA_SRC_ERR_H
#define TUNA_SRC_ERR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    TUNA_OK = 0,
    TUNA_EIO = -1,      /* open/read/write/mmap failed */
    TUNA_EFORMAT = -2,  /* file content is malformed */
    TUNA_EINVAL = -3,   /* bad argument or option value */
    TUNA_ENOMEM = -4,   /* a tensor-sized allocation failed */
    TUNA_EUNSUP = -5,   /* valid but not supported (dtype, architecture, ...) */
    TUNA_ENOTFOUND = -6 /* a named thing (tensor, file, template) is missing */
};

#define TUNA_ERR_LEN 512

typedef struct TunaErr {
    int code;
    char msg[TUNA_ERR_LEN];
} TunaErr;

/* Formats the message into err (if not NULL) and returns code, so callers can write
 * `return tuna_errf(err, TUNA_EFORMAT, "%s: ...", path);`. */
int tuna_errf(TunaErr *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Clears err (NULL-safe). */
void tuna_err_clear(TunaErr *err);

/* Called by TUNA_ASSERT before abort(): the UI installs one that restores the terminal. */
typedef void (*TunaPanicHook)(void);
void tuna_set_panic_hook(TunaPanicHook hook);
void tuna_panic(const char *file, int line, const char *what) __attribute__((noreturn));

#define TUNA_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) tuna_panic(__FILE__, __LINE__, #cond);                                        \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
