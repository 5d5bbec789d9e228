/* test_fuzz_regress.c: one case per defect the libFuzzer targets (tests/fuzz/, make fuzz) found,
 * replayed in the normal gcc suite (and under ASan/UBSan in make test-san), plus the limit
 * messages of the loaders. Each case names its fuzz target and what went wrong before the fix.
 * Inputs are written into a temporary directory at run time. */
#include "harness.h"

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/config.h"
#include "../src/dataset.h"
#include "../src/safetensors.h"
#include "../src/template.h"
#include "../src/tokenizer.h"
#include "../ui/source.h"

static char base[] = "/tmp/tuna_test_fuzz_regress_XXXXXX";

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* base/name/, created fresh. Returns a static buffer. */
static const char *mkcase(const char *name) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    mkdir(dir, 0700);
    return dir;
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        CHECK(0, "cannot create %s", p);
        return;
    }
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *dir, const char *name, const char *s) {
    write_file(dir, name, s, strlen(s));
}

// --- metrics.jsonl reader (fuzz_metrics) ------------------------------------------------------

/* fuzz_metrics: a run with an empty metrics.jsonl (no metrics yet): follow_poll called
 * memmove(NULL, NULL + 0, 0) (ui/source.c), UB reported by clang's UBSan. */
static void test_metrics_empty_file(void) {
    const char *dir = mkcase("metrics_empty");
    write_text(dir, "metrics.jsonl", "");
    EventSource *src = source_file_open(dir);
    UiEvent ev[4];
    CHECK(source_poll(src, ev, 4) == 0, "empty metrics.jsonl gives no events");
    CHECK(source_poll(src, ev, 4) == 0, "twice");
    write_text(dir, "metrics.jsonl", "{\"type\":\"step\",\"step\":3,\"loss\":1.5}\n");
    CHECK(source_poll(src, ev, 4) == 1 && ev[0].type == EV_STEP && ev[0].step == 3,
          "the first line after the empty start is read");
    source_free(src);
    /* a run folder whose metrics.jsonl does not exist yet */
    src = source_file_open(mkcase("metrics_missing"));
    CHECK(source_poll(src, ev, 4) == 0, "missing metrics.jsonl gives no events");
    source_free(src);
}

/* fuzz_metrics: "step": 1e300 was cast to long (UB: float-cast-overflow). Out-of-range steps now
 * read as -1 (unknown), as NaN and missing ones do. */
static void test_metrics_huge_numbers(void) {
    static const char *lines[] = {"{\"type\":\"step\",\"step\":1e300,\"total_steps\":-1e300}",
                                  "{\"type\":\"eval\",\"step\":9.3e18,\"eval_loss\":1e308}",
                                  "{\"type\":\"checkpoint\",\"step\":-9.3e18,\"path\":\"x\"}"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        UiEvent ev;
        CHECK(ui_event_parse(lines[i], strlen(lines[i]), &ev) == 0, "line %zu parses", i);
        CHECK(ev.step == -1, "line %zu: out-of-range step reads as -1, got %ld", i, ev.step);
    }
    UiEvent ev;
    const char *ok = "{\"type\":\"step\",\"step\":12,\"total_steps\":40}";
    CHECK(ui_event_parse(ok, strlen(ok), &ev) == 0 && ev.step == 12 && ev.total_steps == 40,
          "in-range steps are kept");
}

int main(void) {
    if (!mkdtemp(base)) {
        perror("mkdtemp");
        return 1;
    }
    test_metrics_empty_file();
    test_metrics_huge_numbers();
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report("test_fuzz_regress");
}
