/* fuzz_lfyaml.c: a LLaMA-Factory training YAML (`tuna train FILE.yaml`): the bytes written as
 * FILE.yaml and read by lf_config_load over tuna's defaults; an error is one line naming the
 * file, and a config that loads passes train_config_check's ranges or says why in one line. */
#include "fuzz_common.h"

#include "../../src/lf_config.h"
#include "../../src/train.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("t.yaml", data, size);
    TrainConfig c;
    train_config_defaults(&c);
    TunaErr err = {0};
    char notes[2048];
    int rc = lf_config_load(&c, path, notes, sizeof notes, &err);
    if (rc != 0 && (!err.msg[0] || strchr(err.msg, '\n') || !strstr(err.msg, "t.yaml"))) abort();
    if (rc == 0 && strchr(notes, '\n')) abort();
    if (rc == 0) {
        TunaErr e2 = {0};
        if (train_config_check(&c, &e2) && (!e2.msg[0] || strchr(e2.msg, '\n'))) abort();
    }
    return 0;
}
