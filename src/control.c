/* control.c: RUN/control's commands (control.h). */
#include "control.h"

#include <string.h>

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static int word_is(const char *w, size_t len, const char *cmd) {
    return strlen(cmd) == len && !memcmp(w, cmd, len);
}

int control_parse(const char *text, size_t n, char *unknown, size_t cap, int *n_unknown) {
    int bits = 0, bad = 0;
    if (unknown && cap) unknown[0] = '\0';
    size_t pos = 0;
    while (text && pos < n) {
        const char *nl = memchr(text + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - text) : n, a = pos, b = end;
        pos = end + 1;
        while (a < b && is_space(text[a]))
            a++;
        while (b > a && is_space(text[b - 1]))
            b--;
        if (a == b) continue;
        const char *w = text + a;
        size_t len = b - a;
        if (word_is(w, len, "pause"))
            bits = (bits & ~CTL_RESUME) | CTL_PAUSE;
        else if (word_is(w, len, "resume"))
            bits = (bits & ~CTL_PAUSE) | CTL_RESUME;
        else if (word_is(w, len, "save"))
            bits |= CTL_SAVE;
        else if (word_is(w, len, "stop"))
            bits |= CTL_STOP;
        else {
            if (!bad && unknown && cap) {
                size_t k = 0;
                for (; k < len && k < 40 && k + 1 < cap; k++)
                    unknown[k] = w[k] >= 0x20 && w[k] < 0x7f ? w[k] : '?';
                unknown[k] = '\0';
            }
            bad++;
        }
    }
    if (n_unknown) *n_unknown = bad;
    return bits;
}
