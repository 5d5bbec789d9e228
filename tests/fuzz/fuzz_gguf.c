/* fuzz_gguf.c: gguf_open_mem on the input, then every metadata value read through the typed
 * getters (array elements too), every tensor looked up and the small ones dequantized, and
 * the metadata read as a model config (gguf_config_from). Every failure is one line. */
#include "fuzz_common.h"

#include "../../src/gguf.h"
#include "../../src/gguf_model.h"

static float buf[1 << 14];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Gguf *g = NULL;
    TunaErr err = {0};
    if (gguf_open_mem(data, size, "fuzz.gguf", &g, &err) != 0) {
        if (g || !err.msg[0] || strchr(err.msg, '\n')) abort();
        return 0;
    }
    for (int i = 0; i < gguf_kv_count(g); i++) {
        const GgufKV *kv = gguf_kv_at(g, i);
        if (gguf_find_kv(g, kv->key) != kv) abort();
        int64_t iv;
        double dv;
        int bv;
        GgufStr sv;
        const GgufArr *av;
        gguf_get_int(g, kv->key, &iv, &err);
        gguf_get_float(g, kv->key, &dv, &err);
        gguf_get_bool(g, kv->key, &bv, &err);
        gguf_get_str(g, kv->key, &sv, &err);
        if (gguf_get_arr(g, kv->key, &av, &err) == 1) {
            uint64_t n = av->n < 64 ? av->n : 64;
            for (uint64_t k = 0; k < n; k++) {
                if (av->elem_type == GGUF_STRING) {
                    if (av->strs[k].len && av->strs[k].s[av->strs[k].len - 1] == 0x7f) bv++;
                } else {
                    /* a sum that only keeps the reads alive: unsigned, so it may wrap */
                    iv = (int64_t)((uint64_t)iv + (uint64_t)gguf_arr_int(av, k));
                    dv += gguf_arr_float(av, k);
                }
            }
        }
    }
    for (int i = 0; i < gguf_tensor_count(g); i++) {
        const GgufTensor *t = gguf_tensor_at(g, i);
        if (gguf_find_tensor(g, t->name) != t) abort();
        size_t n = gguf_tensor_numel(t);
        if (n <= sizeof buf / sizeof buf[0]) {
            int rc = gguf_tensor_to_f32(g, t, buf, n, &err);
            if (rc && (!err.msg[0] || strchr(err.msg, '\n'))) abort();
        }
    }
    ModelConfig cfg;
    memset(&err, 0, sizeof err);
    if (gguf_config_from(g, &cfg, &err) != 0 && (!err.msg[0] || strchr(err.msg, '\n'))) abort();
    gguf_free(g);
    return 0;
}
