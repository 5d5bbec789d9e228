#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static TunaPanicHook panic_hook;

int tuna_errf(TunaErr *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        /* messages are one line: control characters from file content become '?' */
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
        err->code = code;
    }
    return code;
}

void tuna_err_clear(TunaErr *err) {
    if (!err) return;
    err->code = 0;
    err->msg[0] = '\0';
}

void tuna_set_panic_hook(TunaPanicHook hook) {
    panic_hook = hook;
}

void tuna_panic(const char *file, int line, const char *what) {
    if (panic_hook) panic_hook();
    fprintf(stderr, "tuna: internal error at %s:%d: assertion failed: %s\n", file, line, what);
    abort();
}
