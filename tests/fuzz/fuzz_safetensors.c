/* fuzz_safetensors.c: safetensors_open on one file, or (input starting with '{') on an
 * index.json whose shards are all the bytes after the first NUL, written as s.safetensors.
 * Every tensor is looked up and small float tensors are converted. */
#include "fuzz_common.h"

#include "../../src/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path;
    if (size && data[0] == '{') {
        const uint8_t *b;
        size_t na, nb;
        fuzz_split(data, size, &b, &na, &nb);
        fuzz_write("s.safetensors", b, nb);
        path = fuzz_write("model.safetensors.index.json", data, na);
    } else {
        path = fuzz_write("x.safetensors", data, size);
    }
    SafeTensors *st = NULL;
    TunaErr err = {0};
    if (safetensors_open(path, &st, &err) == 0) {
        int n = safetensors_count(st);
        for (int i = 0; i < n; i++) {
            const StTensor *t = safetensors_at(st, i);
            if (safetensors_find(st, t->name) == NULL) abort();
            size_t numel = st_tensor_numel(t);
            if (numel * st_dtype_size(t->dtype) != t->nbytes) abort();
            if (numel <= 4096 &&
                (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16)) {
                float buf[4096];
                st_tensor_to_f32(t, buf, numel, &err);
            }
        }
        safetensors_metadata(st, "format");
        safetensors_shard_path(st, safetensors_shard_count(st) - 1);
        safetensors_free(st);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort(); /* every failure has a one-line message */
    }
    return 0;
}
