/* test_loraplus.c: LoRA+ (optim_loraplus) against a torch transcription of LLaMA-Factory's
 * _create_loraplus_optimizer (tests/fixtures/loraplus/loraplus.safetensors from
 * tests/gen_lora_variant_fixtures.py): a lora_A (lr), a lora_B (lr * 16, decay), a 1-D
 * magnitude vector (lr * 16, no decay) and trainable token rows (lr), one block end to end as a
 * LoRA run lays them out, five AdamW steps of a cosine schedule with weight decay 0.01, on the
 * ref and cpu backends: every parameter within 1e-5 of torch's. */
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/optim.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

enum { NT = 4 };
static const char *const names[NT] = {"base_model.model.layers.0.q_proj.lora_A.weight",
                                      "base_model.model.layers.0.q_proj.lora_B.weight",
                                      "base_model.model.layers.0.q_proj.lora_magnitude_vector",
                                      "trainable_tokens"};
static const int ndims[NT] = {2, 2, 1, 2};

int main(void) {
    const char *fx = "tests/fixtures/loraplus/loraplus.safetensors";
    TunaErr err = {0};
    SafeTensors *st = NULL;
    struct stat sb;
    if (stat(fx, &sb) || safetensors_open(fx, &st, &err)) {
        CHECK(0, "%s: %s", fx, err.msg);
        return test_report("test_loraplus");
    }
    char key[128];
#define T(...) (snprintf(key, sizeof key, __VA_ARGS__), safetensors_find(st, key))
    size_t len[NT], off[NT], total = 0;
    for (int i = 0; i < NT; i++) {
        len[i] = st_tensor_numel(T("p0.%s", names[i]));
        off[i] = total;
        total += len[i];
    }
    const StTensor *lrs = T("lrs");
    int steps = (int)lrs->shape[0];
    Sched cosine;
    CHECK(sched_init(&cosine, "cosine", "", 2e-3, 2, steps, &err) == 0, "%s", err.msg);
    for (int be_i = 0; be_i < 2; be_i++) {
        Backend *be = backend_init(be_i ? "cpu" : "ref", 2, &err);
        float *p = be->ops->alloc(be, total * 4), *g = be->ops->alloc(be, total * 4);
        TrainParam tp[NT];
        for (int i = 0; i < NT; i++) {
            tp[i] = (TrainParam){.data = p + off[i],
                                 .grad = g + off[i],
                                 .n = len[i],
                                 .ndim = ndims[i],
                                 .decay = ndims[i] == 2};
            snprintf(tp[i].name, sizeof tp[i].name, "%s", names[i]);
            be->ops->upload(be, p + off[i], T("p0.%s", names[i])->data, len[i] * 4);
        }
        Optim o;
        CHECK(optim_init(&o, be, tp, NT, 0.9f, 0.999f, 1e-8f, 0.01f, &err) == 0, "%s", err.msg);
        CHECK(optim_loraplus(&o, tp, NT, 0.0f, &err) == TUNA_EINVAL, "ratio 0 refused");
        {
            Optim a_only;
            CHECK(optim_init(&a_only, be, tp, 1, 0.9f, 0.999f, 1e-8f, 0.01f, &err) == 0, "%s",
                  err.msg);
            CHECK(optim_loraplus(&a_only, tp, 1, 16.0f, &err) == TUNA_EINVAL &&
                          strstr(err.msg, "B matrix"),
                  "no B matrix refused: %s", err.msg);
            optim_free(&a_only);
        }
        CHECK(optim_loraplus(&o, tp, NT, 16.0f, &err) == 0, "%s", err.msg);
        /* A | B | magnitude (no decay) | tokens: four passes, lr multipliers 1, 16, 16, 1 */
        CHECK(o.n_spans == 4 && o.spans[0].lr_mult == 1.0f && o.spans[1].lr_mult == 16.0f &&
                      o.spans[2].lr_mult == 16.0f && !o.spans[2].decay &&
                      o.spans[3].lr_mult == 1.0f,
              "spans by lr multiplier and decay (got %d)", o.n_spans);
        for (int k = 0; k < steps; k++) {
            for (int i = 0; i < NT; i++)
                be->ops->upload(be, g + off[i],
                                (const float *)T("G.%s", names[i])->data + (size_t)k * len[i],
                                len[i] * 4);
            double lr = 2e-3 * sched_factor(&cosine, k);
            CHECK(fabs(lr - (double)((const float *)lrs->data)[k]) <= 1e-9, "lr of step %d", k);
            optim_step(&o, tp, NT, (float)lr, 1.0f);
        }
        float *host = xmalloc(total * 4);
        be->ops->download(be, host, p, total * 4);
        for (int i = 0; i < NT; i++) {
            double d = test_max_abs_diff(host + off[i], T("P.%s", names[i])->data, len[i]);
            CHECK(d <= 1e-5, "[%s] %s after %d steps: max diff %.3g", be->ops->name, names[i],
                  steps, d);
            printf("  [%s] %-56s max |dp| %.2e\n", be->ops->name, names[i], d);
        }
        free(host);
        optim_free(&o);
        be->ops->release(be, p);
        be->ops->release(be, g);
        backend_free(be);
    }
    safetensors_free(st);
    return test_report("test_loraplus");
}
