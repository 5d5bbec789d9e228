/* test_grad_hook.c: the backward's gradient hook (train_set_grad_hook), which data-parallel
 * training uses to start each layer's allreduce while the backward goes on (src/train.c). For
 * full, freeze, LoRA (and DoRA) and P-tuning on tiny models of three architectures: the hook
 * comes once per layer from the last down to 0, then once with -1; when it comes for layer l
 * the gradients of the TrainParams of .layer l already hold their final values (equal, bit for
 * bit, to those after the step), and those of layer -1 when it comes with -1; every TrainParam
 * names its layer (its HF or PEFT name holds "layers.l." or "h.l.", or none for -1); and the
 * step gives the same gradients with and without the hook. */
#include <stdint.h>
#include <stdio.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/xalloc.h"

typedef struct Seen {
    TrainState *ts;
    Backend *be;
    int calls[64 + 1]; /* per layer, [64] for -1 */
    int order_ok, last;
    float **snap; /* (n_tp) each gradient as the hook saw it */
} Seen;

static void hook(void *ctx, int l) {
    Seen *s = ctx;
    int np;
    const TrainParam *tp = train_params(s->ts, &np);
    /* order: L-1, ..., 0, then -1 */
    if (!(l < s->last || (l == -1 && s->last == 0) || (l == -1 && s->last == 64))) s->order_ok = 0;
    s->last = l;
    s->calls[l < 0 ? 64 : l]++;
    s->be->ops->sync(s->be);
    for (int i = 0; i < np; i++)
        if (tp[i].layer == l) {
            s->snap[i] = xmalloc(sizeof(float) * tp[i].n);
            s->be->ops->download(s->be, s->snap[i], tp[i].grad, sizeof(float) * tp[i].n);
        }
}

/* the layer a TrainParam's name says: "layers.N." or "h.N.", else -1 */
static int name_layer(const char *name) {
    const char *keys[] = {"layers.", "h."};
    for (int k = 0; k < 2; k++)
        for (const char *p = strstr(name, keys[k]); p; p = strstr(p + 1, keys[k])) {
            if (p != name && p[-1] != '.') continue;
            const char *d = p + strlen(keys[k]);
            char *end;
            long v = strtol(d, &end, 10);
            if (end != d && *end == '.') return (int)v;
        }
    return -1;
}

static void run_case(Backend *be, const char *arch, const char *label, TrainSetup setup) {
    TunaErr err = {0};
    char dir[128];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", arch);
    Model *m = NULL;
    TrainState *ts = NULL;
    if (model_load(dir, be, &m, &err)) {
        SKIP("%s: %s", dir, err.msg);
        return;
    }
    int B = 2, T = 7, L = m->cfg.L;
    CHECK(train_state_init(m, &setup, B, T, &ts, &err) == 0, "%s %s: %s", arch, label, err.msg);
    if (!ts) {
        model_free(m);
        return;
    }
    int32_t ids[14], tg[14];
    uint64_t x = 12345;
    for (int i = 0; i < B * T; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)m->cfg.V);
        tg[i] = i % 5 == 0 ? -100 : (int32_t)((x >> 17) % (uint64_t)m->cfg.V);
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    int names_ok = 1;
    for (int i = 0; i < np; i++)
        if (name_layer(tp[i].name) != tp[i].layer) {
            names_ok = 0;
            fprintf(stderr, "  %s: layer %d\n", tp[i].name, tp[i].layer);
        }
    CHECK(names_ok, "%s %s: a TrainParam's layer is not the one its name says", arch, label);
    Seen s = {.ts = ts, .be = be, .order_ok = 1, .last = 64};
    s.snap = xcalloc((size_t)np, sizeof *s.snap);
    double loss;
    int nt;
    /* without the hook, then with it, from zeroed gradients each time */
    float **ref = xcalloc((size_t)np, sizeof *ref);
    train_zero_grad(ts);
    CHECK(train_step_fb(ts, ids, tg, B, 0.1f, 1, &loss, &nt, &err) == 0, "%s", err.msg);
    for (int i = 0; i < np; i++) {
        ref[i] = xmalloc(sizeof(float) * tp[i].n);
        be->ops->download(be, ref[i], tp[i].grad, sizeof(float) * tp[i].n);
    }
    train_zero_grad(ts);
    train_set_grad_hook(ts, hook, &s);
    CHECK(train_step_fb(ts, ids, tg, B, 0.1f, 1, &loss, &nt, &err) == 0, "%s", err.msg);
    train_set_grad_hook(ts, NULL, NULL);
    int calls_ok = s.calls[64] == 1;
    for (int l = 0; l < L; l++)
        calls_ok &= s.calls[l] == 1;
    CHECK(calls_ok && s.order_ok, "%s %s: the hook's calls are not L-1 .. 0, -1 once each", arch,
          label);
    int final_ok = 1, same_ok = 1, seen = 0;
    float *g = NULL;
    for (int i = 0; i < np; i++) {
        g = xrealloc(g, sizeof(float) * tp[i].n);
        be->ops->download(be, g, tp[i].grad, sizeof(float) * tp[i].n);
        seen += s.snap[i] != NULL;
        if (s.snap[i] && memcmp(s.snap[i], g, sizeof(float) * tp[i].n)) {
            final_ok = 0;
            fprintf(stderr, "  %s (layer %d) changed after its hook\n", tp[i].name, tp[i].layer);
        }
        if (memcmp(ref[i], g, sizeof(float) * tp[i].n)) same_ok = 0;
        free(s.snap[i]);
        free(ref[i]);
    }
    CHECK(seen == np, "%s %s: %d of %d gradients seen by the hook", arch, label, seen, np);
    CHECK(final_ok, "%s %s: a gradient changed after its layer's hook", arch, label);
    CHECK(same_ok, "%s %s: the hook changed the gradients", arch, label);
    printf("test_grad_hook: %s %s: %d tensors over %d layers, final at their layer's hook\n", arch,
           label, np, L);
    free(g);
    free(ref);
    free(s.snap);
    train_state_free(ts);
    model_free(m);
}

int main(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    CHECK(be != NULL, "%s", err.msg);
    if (!be) return test_report("test_grad_hook");
    const char *archs[] = {"llama", "gpt2", "qwen3"};
    TrainSetup full = {.method = METHOD_FULL, .seed = 1};
    TrainSetup freeze = {.method = METHOD_FREEZE, .freeze_layers = 1, .seed = 1};
    TrainSetup lora = {.method = METHOD_LORA,
                       .lora_rank = 4,
                       .lora_alpha = 8,
                       .seed = 1,
                       .lora_targets = "all"};
    TrainSetup dora = lora;
    dora.lora_dora = 1;
    TrainSetup pre = {.method = METHOD_PTUNING, .prefix_tokens = 3, .seed = 1};
    for (int a = 0; a < 3; a++) {
        run_case(be, archs[a], "full", full);
        run_case(be, archs[a], "freeze", freeze);
        run_case(be, archs[a], "lora", lora);
        run_case(be, archs[a], "dora", dora);
        run_case(be, archs[a], "ptuning", pre);
    }
    backend_free(be);
    return test_report("test_grad_hook");
}
