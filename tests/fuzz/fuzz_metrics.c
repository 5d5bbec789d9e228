/* fuzz_metrics.c: the metrics.jsonl reader of `tuna watch` and the UI (ui/source.c). Each line
 * goes through event_parse; then the file source follows a run folder whose metrics.jsonl
 * starts empty (a run with no metrics yet) and is then written in two pieces (split at the first
 * NUL, or the middle), polled with small and large event buffers. */
#include "fuzz_common.h"

#include "../../ui/source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static Event ev[16];
    size_t pos = 0;
    while (pos < size) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t ll = nl ? (size_t)(nl - (data + pos)) : size - pos;
        event_parse((const char *)data + pos, ll, &ev[0]);
        pos += ll + 1;
    }
    const uint8_t *b;
    size_t na, nb;
    if (!fuzz_split(data, size, &b, &na, &nb)) {
        na = size / 2;
        b = data + na, nb = size - na;
    }
    fuzz_write("metrics.jsonl", NULL, 0);
    EventSource *src = source_file_open(fuzz_scratch());
    source_poll(src, ev, 16); /* no metrics yet */
    fuzz_write("metrics.jsonl", data, na);
    while (source_poll(src, ev, 1) > 0) {}
    char *all = malloc(na + nb + 1);
    if (!all) abort();
    if (na) memcpy(all, data, na);
    if (nb) memcpy(all + na, b, nb);
    fuzz_write("metrics.jsonl", (const uint8_t *)all, na + nb); /* appended */
    free(all);
    for (int i = 0; i < 64 && source_poll(src, ev, 16) > 0; i++) {}
    fuzz_write("metrics.jsonl", b, nb < 3 ? nb : 3); /* shrunk: a new run */
    while (source_poll(src, ev, 16) > 0) {}
    source_alive(src);
    source_free(src);
    fuzz_remove("metrics.jsonl");
    return 0;
}
