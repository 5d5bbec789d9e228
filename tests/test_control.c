/* test_control.c: RUN/control's command parser (src/control.h). */
#include "harness.h"
#include "src/control.h"

static void parse(const char *text, size_t n, int want_bits, int want_bad, const char *want_first) {
    char first[48];
    int bad = -1, bits = control_parse(text, n, first, sizeof first, &bad);
    CHECK(bits == want_bits && bad == want_bad && !strcmp(first, want_first),
          "control_parse(%.*s): bits %d unknown %d first \"%s\", want %d %d \"%s\"", (int)n, text,
          bits, bad, first, want_bits, want_bad, want_first);
}

int main(void) {
    parse("", 0, 0, 0, "");
    parse("stop\n", 5, CTL_STOP, 0, "");
    parse("  save \r\n\tstop\t", 15, CTL_SAVE | CTL_STOP, 0, "");
    parse("pause\nresume\n", 13, CTL_RESUME, 0, "");
    parse("resume\npause\n", 13, CTL_PAUSE, 0, "");
    parse("stop please\nsave\n", 17, CTL_SAVE, 1, "stop please");
    parse("STOP\n", 5, 0, 1, "STOP");
    parse("sto\0p\n", 6, 0, 1, "sto?p");
    parse("x\ny\nz\n", 6, 0, 3, "x");
    /* a long line is one unknown command, not commands cut out of it at 63 bytes (the old fgets
     * of 64 read "...stop" at the start of the second piece as a stop) */
    char longl[200];
    memset(longl, 'a', 63);
    memcpy(longl + 63, "stop\n", 6);
    parse(longl, 68, 0, 1, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    parse("\xff\xfe\n", 3, 0, 1, "??");
    int bad = 0;
    CHECK(control_parse("save", 4, NULL, 0, &bad) == CTL_SAVE && !bad, "NULL unknown buffer");
    CHECK(control_parse("bad", 3, NULL, 0, NULL) == 0, "NULL counters");
    return test_report("test_control");
}
