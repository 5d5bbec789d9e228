/* fuzz_config.c: config.json parsing. Input without a NUL goes to config_parse; with one, the
 * part before is written as config.json and the rest as generation_config.json for
 * config_load. */
#include "fuzz_common.h"

#include "../../src/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ModelConfig cfg;
    TunaErr err = {0};
    const uint8_t *b;
    size_t na, nb;
    int rc;
    if (!fuzz_split(data, size, &b, &na, &nb)) {
        char *s = fuzz_cstr(data, size);
        rc = config_parse(s, "config.json", &cfg, &err);
        free(s);
    } else {
        fuzz_write("config.json", data, na);
        fuzz_write("generation_config.json", b, nb);
        rc = config_load(fuzz_scratch(), &cfg, &err);
    }
    if (rc != 0 && (!err.msg[0] || strchr(err.msg, '\n'))) abort();
    if (rc == 0 && (cfg.V <= 0 || cfg.C <= 0 || cfg.L <= 0 || cfg.NH <= 0)) abort();
    return 0;
}
