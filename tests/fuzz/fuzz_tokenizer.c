/* fuzz_tokenizer.c: tokenizer.json (+ tokenizer_config.json after the first NUL) loading, then
 * encode (with and without special tokens) of a fixed text and of the input's tail, and decode
 * of the ids, of every id once and of out-of-range ids. */
#include "fuzz_common.h"

#include "../../src/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *b;
    size_t na, nb;
    fuzz_split(data, size, &b, &na, &nb);
    fuzz_write("tokenizer.json", data, na);
    if (nb)
        fuzz_write("tokenizer_config.json", b, nb);
    else
        fuzz_remove("tokenizer_config.json");
    Tokenizer *tok = NULL;
    TunaErr err = {0};
    if (tokenizer_load(fuzz_scratch(), &tok, &err) != 0) {
        if (tok || !err.msg[0] || strchr(err.msg, '\n')) abort();
        return 0;
    }
    static const char fixed[] =
            "Hello, world! 12345  tabs\tand\nnewlines ü é 漢字 \xff\xfe <s></s>";
    const char *texts[2] = {fixed, (const char *)data};
    size_t lens[2] = {sizeof fixed - 1, na < 256 ? na : 256};
    for (int k = 0; k < 2; k++) {
        for (int special = 0; special < 2; special++) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(tok, texts[k], lens[k], special, &ids, &n, &err) == 0) {
                size_t len = 0;
                free(tokenizer_decode_len(tok, ids, n, special, &len));
                free(ids);
            }
        }
    }
    int V = tokenizer_vocab_size(tok);
    int32_t all[512];
    size_t n_all = 0;
    for (int id = -2; id < V + 2 && n_all < 512; id++)
        all[n_all++] = id;
    free(tokenizer_decode(tok, all, n_all, 0));
    free(tokenizer_decode(tok, all, n_all, 1));
    for (int id = 0; id < V && id < 64; id++) {
        const char *s = tokenizer_token_str(tok, id);
        if (s) tokenizer_token_id(tok, s);
        tokenizer_is_special(tok, id);
    }
    tokenizer_bos_id(tok);
    tokenizer_eos_id(tok);
    tokenizer_free(tok);
    return 0;
}
