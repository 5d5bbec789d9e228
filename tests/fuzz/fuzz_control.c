/* fuzz_control.c: RUN/control's command parser (src/control.c), which a training run applies
 * to whatever a user or a script wrote into the file. Checks, beyond the sanitizers: only the
 * four command bits, never pause and resume together, the unknown line shown printable and
 * short, and the text parsed line by line gives the same bits as a whole (pause/resume: the last
 * wins). */
#include "fuzz_common.h"

#include "../../src/control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char first[48];
    int bad = -1;
    int bits = control_parse((const char *)data, size, first, sizeof first, &bad);
    if (bits & ~(CTL_PAUSE | CTL_RESUME | CTL_SAVE | CTL_STOP)) abort();
    if ((bits & CTL_PAUSE) && (bits & CTL_RESUME)) abort();
    if (bad < 0 || strlen(first) > 40 || (bad && !first[0]) || (!bad && first[0])) abort();
    for (const char *p = first; *p; p++)
        if (*p < 0x20 || *p > 0x7e) abort();
    int acc = 0, acc_bad = 0;
    size_t pos = 0;
    while (pos < size) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t ll = nl ? (size_t)(nl - (data + pos)) : size - pos;
        int nb = 0, b = control_parse((const char *)data + pos, ll, NULL, 0, &nb);
        if (b & (CTL_PAUSE | CTL_RESUME)) acc &= ~(CTL_PAUSE | CTL_RESUME);
        acc |= b;
        acc_bad += nb;
        pos += ll + 1;
    }
    if (acc != bits || acc_bad != bad) abort();
    return 0;
}
