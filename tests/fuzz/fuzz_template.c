/* fuzz_template.c: a template file (templates/NAME.json) through template_load, then a fixed
 * conversation encoded for training (plain, masked history, cut off) and as a prompt. */
#define TUNA_FUZZ_NEED_TOKENIZER
#include "fuzz_common.h"

#include "../../src/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const Tokenizer *tok = fuzz_tokenizer();
    fuzz_write("t.json", data, size);
    Template *t = NULL;
    TunaErr err = {0};
    if (template_load(fuzz_scratch(), "t", &t, &err) != 0) {
        if (t || !err.msg[0] || strchr(err.msg, '\n')) abort();
        return 0;
    }
    static const ChatMessage conv[] = {
            {"system", "Be brief."}, {"tools", "[{\"name\":\"f\"}]"},
            {"user", "Hi {{name}}"}, {"assistant", "Hello."},
            {"user", "Call f"},      {"function", "{\"f\":1}"},
            {"observation", "ok"},   {"assistant", "Done."},
    };
    static const int n_conv = (int)(sizeof conv / sizeof conv[0]);
    static const int flags[3] = {0, TEMPLATE_MASK_HISTORY, TEMPLATE_TRAIN_ON_PROMPT};
    for (int k = 0; k < 3; k++) {
        int32_t *ids = NULL, *labels = NULL;
        size_t n = 0;
        if (template_encode_train(t, tok, conv, n_conv, k == 1 ? 7 : 0, flags[k], &ids, &labels, &n,
                                  &err) == 0) {
            free(ids);
            free(labels);
        }
        /* without system/tools */
        if (template_encode_train(t, tok, conv + 2, 2, 0, flags[k], &ids, &labels, &n, &err) == 0) {
            free(ids);
            free(labels);
        }
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (template_encode_prompt(t, tok, conv, 5, &ids, &n, &err) == 0) free(ids);
    const char *const *words;
    template_stop_words(t, &words);
    template_eos_id(t, tok);
    template_name(t);
    template_default_system(t);
    template_free(t);
    return 0;
}
