/* test_bf16_forward.c: the forward of a bf16 checkpoint with its linear layers kept in bf16
 * (--dtype bf16) and bf16 matrix products (--bf16, Backend.mm_bf16), against transformers.
 *
 * Every ARCH_bf16 fixture holds (tests/gen_fixtures.py, tests/gen_bf16_fixtures.py) the logits
 * of the same inputs in fp32 math on its bf16 weights, and in transformers' bf16 math (every
 * weight, activation and product in bf16). The stated tolerance: tuna's bf16 forward is at
 * least as close to the fp32-math logits as transformers' bf16 forward is (tuna rounds the
 * operands of its products to bf16 but keeps activations, norms, softmax and sums in fp32), and
 * within that same distance of transformers' bf16 logits, plus their own (that is, within
 * 2 x transformers' rounding error), and farther than 1e-3 (the products are rounded). Checked
 * on the cpu and ref backends, prefill and decoding.
 * Without --bf16 (products in fp32 on the bf16 weights), the logits are the fp32-math ones. */
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

static const float *tensor(SafeTensors *st, const char *name, size_t n) {
    const StTensor *t = safetensors_find(st, name);
    if (!t || t->dtype != ST_F32 || st_tensor_numel(t) != n) return NULL;
    return t->data;
}

static void arch_case(const char *arch, const char *backend) {
    char dir[128], path[192];
    snprintf(dir, sizeof dir, "tests/fixtures/%s_bf16", arch);
    snprintf(path, sizeof path, "%s/reference_bf16.safetensors", dir);
    struct stat sb;
    if (stat(path, &sb)) {
        SKIP("%s missing (tests/gen_bf16_fixtures.py makes it)", path);
        return;
    }
    TunaErr err = {0};
    Backend *be = backend_init(backend, 2, &err);
    Model *m = NULL;
    SafeTensors *ref = NULL, *rb = NULL;
    float *got = NULL;
    ModelLoadOptions o = {.qtype = WT_BF16, .fp32_from_layer = 1 << 30};
    char rpath[192];
    snprintf(rpath, sizeof rpath, "%s/reference.safetensors", dir);
    if (!be || model_load_opts(dir, be, &o, &m, &err) || safetensors_open(rpath, &ref, &err) ||
        safetensors_open(path, &rb, &err)) {
        CHECK(0, "%s %s: %s", arch, backend, err.msg);
        goto done;
    }
    CHECK(m->n_qparams > 0, "%s: linear layers kept in bf16", arch);
    const StTensor *ids_t = safetensors_find(ref, "input_ids");
    int B = ids_t ? (int)ids_t->shape[0] : 0, T = ids_t ? (int)ids_t->shape[1] : 0;
    int V = m->cfg.V;
    size_t n = (size_t)B * T * V;
    const float *l32 = tensor(ref, "logits", n), *l16 = tensor(rb, "logits_bf16", n);
    CHECK(ids_t && l32 && l16, "%s: fixture tensors missing or misshapen", arch);
    if (!ids_t || !l32 || !l16) goto done;
    got = xmalloc(sizeof(float) * n);
    for (int mode = 0; mode < 2; mode++) {
        be->mm_bf16 = mode;
        for (int b = 0; b < B; b++) {
            model_reset(m);
            /* the first T-1 tokens as a prefill, the last one decoded (M = 1) */
            float *row = got + (size_t)b * T * V;
            const int32_t *ids = (const int32_t *)ids_t->data + (size_t)b * T;
            int rc = model_reserve(m, T, T, &err) || model_forward(m, ids, T - 1, row, 1, &err) ||
                     model_forward(m, ids + T - 1, 1, row + (size_t)(T - 1) * V, 0, &err);
            CHECK(!rc, "%s %s: %s", arch, backend, err.msg);
            if (rc) goto done;
        }
        double d_tuna = test_max_abs_diff(got, l32, n), d_torch = test_max_abs_diff(l16, l32, n),
               d_both = test_max_abs_diff(got, l16, n);
        if (!mode) {
            CHECK(d_tuna <= 1e-4, "%s %s fp32 products on bf16 weights: max |dlogit| %.3g", arch,
                  backend, d_tuna);
        } else {
            CHECK(d_tuna > 1e-3 && d_tuna <= d_torch && d_both <= 2 * d_torch,
                  "%s %s --bf16: max |dlogit| vs fp32 math %.4f (transformers bf16: %.4f), vs "
                  "transformers bf16 %.4f",
                  arch, backend, d_tuna, d_torch, d_both);
            printf("  %-10s %-4s --bf16: max |dlogit| vs fp32 math %.4f (transformers bf16 %.4f), "
                   "vs transformers bf16 %.4f\n",
                   arch, backend, d_tuna, d_torch, d_both);
        }
    }
done:
    free(got);
    safetensors_free(ref);
    safetensors_free(rb);
    model_free(m);
    backend_free(be);
}

int main(void) {
    const char *archs[] = {"llama", "llama_tied", "llama3", "mistral", "qwen2", "qwen3", "gpt2"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        arch_case(archs[i], "cpu");
        arch_case(archs[i], "ref");
    }
    return test_report("test_bf16_forward");
}
