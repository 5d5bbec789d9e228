/* test_optim.c: AdamW + schedules + clipping against torch.optim.AdamW and transformers'
 * schedulers (tests/fixtures/train/adamw.safetensors from tests/gen_train_fixtures.py):
 * 20 steps of cosine-with-warmup, two groups (weight decay 0.01 and 0), parameters within
 * 1e-5; the four schedule tables exactly (1e-6), and every schedule of transformers' that tuna
 * runs with its lr_scheduler_kwargs (schedules.json, to 1e-15); clip_grad_norm_ within 1e-6
 * relative. A sharded
 * optimizer (--zero 1), each rank of 2, 3, 4 or 7 stepping its slice, gives the unsharded values
 * and moments bit for bit (ref and cpu), slice edges anywhere. */
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "harness.h"
#include "kernels/backend.h"
#include "src/optim.h"
#include "src/safetensors.h"
#include "src/xalloc.h"

/* Tensors end to end in one block with the same decay flag are one AdamW pass (a LoRA run's
 * A and B); a change of flag or a gap starts another; the result is the per-tensor one. */
static void test_spans(void) {
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 2, &err);
    size_t n = 1000;
    float *p = be->ops->alloc(be, n * 4), *g = be->ops->alloc(be, n * 4);
    float *hp = xmalloc(n * 4), *hg = xmalloc(n * 4), *want = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) {
        hp[i] = (float)sin((double)i);
        hg[i] = (float)cos(0.3 * (double)i);
    }
    /* sizes 100, 200, 50 | 150 (no decay) | 300, gap of 100, 100 */
    size_t off[] = {0, 100, 300, 350, 500, 900}, len[] = {100, 200, 50, 150, 300, 100};
    int decay[] = {1, 1, 1, 0, 1, 1};
    TrainParam tp[6];
    for (int i = 0; i < 6; i++)
        tp[i] = (TrainParam){
                .data = p + off[i], .grad = g + off[i], .n = len[i], .decay = decay[i]};
    for (int pass = 0; pass < 2; pass++) {
        be->ops->upload(be, p, hp, n * 4);
        be->ops->upload(be, g, hg, n * 4);
        Optim o;
        CHECK(optim_init(&o, be, tp, 6, 0.9f, 0.999f, 1e-8f, 0.1f, &err) == 0, "%s", err.msg);
        if (pass == 0) {
            CHECK(o.n_spans == 4, "6 tensors in 4 spans (got %d)", o.n_spans);
            CHECK(o.n_spans == 4 && o.spans[0].n == 350 && o.spans[1].n == 150 &&
                          !o.spans[1].decay && o.spans[2].n == 300 && o.spans[3].n == 100,
                  "span sizes");
            for (int k = 0; k < 3; k++)
                optim_step(&o, tp, 6, 1e-2f, 0.5f);
            be->ops->download(be, want, p, n * 4);
        } else { /* one tensor at a time: the reference */
            for (int i = 0; i < 6; i++) {
                Optim one;
                CHECK(optim_init(&one, be, &tp[i], 1, 0.9f, 0.999f, 1e-8f, 0.1f, &err) == 0, "%s",
                      err.msg);
                for (int k = 0; k < 3; k++)
                    optim_step(&one, &tp[i], 1, 1e-2f, 0.5f);
                optim_free(&one);
            }
            be->ops->download(be, hp, p, n * 4);
            CHECK(memcmp(hp, want, n * 4) == 0, "spans give the per-tensor result bit for bit");
        }
        optim_free(&o);
    }
    free(hp);
    free(hg);
    free(want);
    be->ops->release(be, p);
    be->ops->release(be, g);
    backend_free(be);
}

/* ZeRO stage 1 without MPI: each rank's Optim (optim_init_shard) steps its own copy of the
 * values; the ranks' slices stitched together are the unsharded run's values and moments, bit
 * for bit, for edges that fall anywhere in a pass (the cpu adamw's vector body and its scalar
 * tail must agree). optim_upload of whole moments keeps the rank's slice (a resume). */
static void test_shards(const char *backend) {
    TunaErr err = {0};
    Backend *be = backend_init(backend, 2, &err);
    /* one block: 37, 1001 (decay) | 19 (none) | 4099, 3 (decay): 5159 values */
    size_t len[] = {37, 1001, 19, 4099, 3}, n = 5159, off[5];
    int decay[] = {1, 1, 0, 1, 1};
    float *p = be->ops->alloc(be, n * 4), *g = be->ops->alloc(be, n * 4);
    float *hp = xmalloc(n * 4), *hg = xmalloc(3 * n * 4), *want = xmalloc(3 * n * 4);
    float *got = xmalloc(3 * n * 4), *mv[2][5], *back[2][5];
    TrainParam tp[5];
    for (int i = 0, at = 0; i < 5; at += (int)len[i], i++) {
        off[i] = (size_t)at;
        tp[i] = (TrainParam){.data = p + at, .grad = g + at, .n = len[i], .decay = decay[i]};
        for (int k = 0; k < 2; k++) {
            mv[k][i] = xmalloc(len[i] * 4);
            back[k][i] = xmalloc(len[i] * 4);
        }
    }
    for (size_t i = 0; i < n; i++)
        hp[i] = (float)sin(0.7 * (double)i);
    for (size_t i = 0; i < 3 * n; i++) /* three steps' gradients */
        hg[i] = (float)cos(0.3 * (double)i) * (i % 7 == 0 ? 5.0f : 0.5f);
    int worlds[] = {1, 2, 3, 4, 7};
    for (int wi = -1; wi < 5; wi++) { /* -1: the unsharded reference (optim_init) */
        int world = wi < 0 ? 1 : worlds[wi];
        for (int rank = 0; rank < world; rank++) {
            Optim o;
            be->ops->upload(be, p, hp, n * 4);
            int rc = wi < 0 ? optim_init(&o, be, tp, 5, 0.9f, 0.999f, 1e-8f, 0.1f, &err)
                            : optim_init_shard(&o, be, tp, 5, 0.9f, 0.999f, 1e-8f, 0.1f, rank,
                                               world, &err);
            CHECK(rc == 0, "%s", err.msg);
            if (rc) continue;
            for (int k = 0; k < 3; k++) {
                be->ops->upload(be, g, hg + (size_t)k * n, n * 4);
                optim_step(&o, tp, 5, 1e-2f, 0.8f);
            }
            float *dst = wi < 0 ? want : got; /* values, then m, then v, each n */
            size_t lo = o.bounds[rank], hi = o.bounds[rank + 1];
            CHECK(o.block_len == hi - lo && hi - lo <= n / (size_t)world + 1,
                  "rank %d of %d: a slice of %zu values", rank, world, o.block_len);
            float *cur = xmalloc(n * 4);
            be->ops->download(be, cur, p, n * 4);
            memcpy(dst + lo, cur + lo, (hi - lo) * 4);
            free(cur);
            optim_download(&o, mv[0], mv[1]);
            for (int k = 0; k < 2; k++)
                for (int i = 0; i < 5; i++)
                    for (size_t j = 0; j < len[i]; j++) {
                        size_t f = off[i] + j;
                        if (f >= lo && f < hi) dst[(size_t)(k + 1) * n + f] = mv[k][i][j];
                    }
            if (wi >= 0) { /* a resume: whole moments in, this rank's slice kept */
                Optim o2;
                CHECK(optim_init_shard(&o2, be, tp, 5, 0.9f, 0.999f, 1e-8f, 0.1f, rank, world,
                                       &err) == 0,
                      "%s", err.msg);
                optim_upload(&o2, (const float *const *)mv[0], (const float *const *)mv[1]);
                for (int k = 0; k < 2; k++)
                    for (int i = 0; i < 5; i++)
                        memset(back[k][i], 0xff, len[i] * 4);
                optim_download(&o2, back[0], back[1]);
                int same = 1;
                for (int k = 0; k < 2; k++)
                    for (int i = 0; i < 5; i++)
                        for (size_t j = 0; j < len[i]; j++) {
                            size_t f = off[i] + j;
                            if (f >= lo && f < hi) same &= back[k][i][j] == mv[k][i][j];
                        }
                CHECK(same, "[%s] rank %d of %d: upload then download loses the slice",
                      be->ops->name, rank, world);
                optim_free(&o2);
            }
            optim_free(&o);
        }
        if (wi >= 0)
            CHECK(memcmp(got, want, 3 * n * 4) == 0,
                  "[%s] %d ranks: values and moments differ from one process's", be->ops->name,
                  world);
    }
    printf("  [%s] sharded AdamW over 2, 3, 4, 7 ranks == one process, bit for bit\n",
           be->ops->name);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 5; i++) {
            free(mv[k][i]);
            free(back[k][i]);
        }
    free(hp);
    free(hg);
    free(want);
    free(got);
    be->ops->release(be, p);
    be->ops->release(be, g);
    backend_free(be);
}

/* A JSON fixture, parsed (NULL when it cannot be read or parsed) */
static cJSON *fixture_json(const char *path) {
    char *text = xread_file(path, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(root != NULL, "%s: cannot be read or parsed", path);
    return root;
}

/* transformers' schedules with their lr_scheduler_kwargs (tests/fixtures/train/schedules.json
 * from tests/gen_optim_fixtures.py): every factor of steps 0 .. total + 2 to the last bit or
 * two; the arguments transformers refuses, refused. */
static void test_sched_kwargs(void) {
    const char *path = "tests/fixtures/train/schedules.json";
    cJSON *root = fixture_json(path);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    CHECK(cJSON_GetArraySize(cases) >= 19, "%s: cases", path);
    double worst = 0;
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        char *kw = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(c, "kwargs"));
        double lr = cJSON_GetObjectItemCaseSensitive(c, "lr")->valuedouble;
        int warmup = cJSON_GetObjectItemCaseSensitive(c, "warmup")->valueint;
        int total = cJSON_GetObjectItemCaseSensitive(c, "total")->valueint;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "factors");
        Sched s;
        TunaErr err = {0};
        int rc = sched_init(&s, name, kw, lr, warmup, total, &err);
        CHECK(rc == 0, "%s %s: %s", name, kw, err.msg);
        double w = 0;
        for (int k = 0; !rc && k < cJSON_GetArraySize(f); k++, n++)
            w = fmax(w, fabs(sched_factor(&s, k) - cJSON_GetArrayItem(f, k)->valuedouble));
        CHECK(w <= 1e-15, "%s %s: max |factor - transformers'| %.3g", name, kw, w);
        worst = fmax(worst, w);
        free(kw);
    }
    printf("  %d schedule factors of %d cases vs transformers: max diff %.3g\n", n,
           cJSON_GetArraySize(cases), worst);
    cJSON_Delete(root);
    /* what transformers refuses (TypeError, ValueError), refused with the argument named */
    static const char *const bad[][4] = {
            {"cosine", "{\"min_lr\": 1e-5}", "cosine takes num_cycles, not \"min_lr\"", ""},
            {"linear", "{\"num_cycles\": 1}", "linear takes no arguments", ""},
            {"cosine_with_min_lr", "{}", "needs min_lr or min_lr_rate", ""},
            {"cosine_with_min_lr", "{\"min_lr\": 1e-5, \"min_lr_rate\": 0.1}", "only one of", ""},
            {"warmup_stable_decay", "{\"num_stable_steps\": 3}", "needs num_decay_steps", ""},
            {"warmup_stable_decay", "{\"num_decay_steps\": 2.5}", "num_decay_steps must be a whole",
             ""},
            {"warmup_stable_decay", "{\"num_decay_steps\": 2, \"decay_type\": \"exp\"}",
             "decay_type must be", ""},
            {"polynomial", "{\"lr_end\": 0.01}", "lr_end (0.01) must be smaller", ""},
            {"cosine", "{\"num_cycles\": \"two\"}", "num_cycles must be a number", ""},
            {"cosine", "[1]", "is not a JSON object", ""},
            {"cosine", "{\"num_cycles\": 1", "is not a JSON object", ""},
            {"greedy", "", "--lr-scheduler \"greedy\": must be", ""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        Sched s;
        TunaErr err = {0};
        int rc = sched_init(&s, bad[i][0], bad[i][1], 1e-3, 2, 10, &err);
        CHECK(rc != 0 && strstr(err.msg, bad[i][2]) && !strchr(err.msg, '\n'),
              "%s %s: rc %d, \"%s\"", bad[i][0], bad[i][1], rc, err.msg);
    }
}

/* reduce_lr_on_plateau: torch's ReduceLROnPlateau (tests/fixtures/train/plateau.json), each
 * eval's metric in turn, the lr after each equal to the bit; the state through a copy (a
 * checkpoint keeps it) continues the same */
static void test_plateau(void) {
    const char *path = "tests/fixtures/train/plateau.json";
    cJSON *root = fixture_json(path);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    CHECK(cJSON_GetArraySize(cases) >= 4, "%s: cases", path);
    int n = 0, bad = 0;
    cJSON_ArrayForEach(c, cases) {
        char *kw = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(c, "kwargs"));
        double lr = cJSON_GetObjectItemCaseSensitive(c, "lr")->valuedouble;
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(c, "metrics"),
                    *lrs = cJSON_GetObjectItemCaseSensitive(c, "lrs");
        Sched s, half;
        TunaErr err = {0};
        CHECK(sched_init(&s, "reduce_lr_on_plateau", kw, lr, 5, 100, &err) == 0, "%s: %s", kw,
              err.msg);
        CHECK(sched_lr(&s, 0) == lr, "%s: the first lr", kw);
        for (int k = 0; k < cJSON_GetArraySize(ms); k++, n++) {
            if (k == cJSON_GetArraySize(ms) / 2) { /* a resume: the state as saved */
                half = s;
                s = half;
            }
            sched_eval(&s, cJSON_GetArrayItem(ms, k)->valuedouble);
            bad += sched_lr(&s, k) != cJSON_GetArrayItem(lrs, k)->valuedouble;
        }
        free(kw);
    }
    CHECK(!bad && n > 0, "reduce_lr_on_plateau: %d of %d lrs differ from torch's", bad, n);
    printf("  reduce_lr_on_plateau: %d lrs of %d cases == torch's ReduceLROnPlateau\n", n,
           cJSON_GetArraySize(cases));
    Sched s;
    TunaErr err = {0};
    CHECK(sched_init(&s, "reduce_lr_on_plateau", "{\"factor\": 1.5}", 1e-3, 0, 10, &err) != 0 &&
                  strstr(err.msg, "factor must be below 1"),
          "factor 1.5: %s", err.msg);
    CHECK(sched_init(&s, "reduce_lr_on_plateau", "{\"mode\": \"up\"}", 1e-3, 0, 10, &err) != 0 &&
                  strstr(err.msg, "mode must be"),
          "mode up: %s", err.msg);
    cJSON_Delete(root);
}

/* adam_beta1, adam_beta2, adam_epsilon: torch.optim.AdamW with betas (0.8, 0.95), eps 1e-6 and
 * weight decay 0.1 (tests/fixtures/train/adamw_args.json), 8 steps, ref and cpu */
static void test_adamw_args(void) {
    const char *path = "tests/fixtures/train/adamw_args.json";
    cJSON *root = fixture_json(path);
    const cJSON *p0 = cJSON_GetObjectItemCaseSensitive(root, "p0"),
                *G = cJSON_GetObjectItemCaseSensitive(root, "G"),
                *P = cJSON_GetObjectItemCaseSensitive(root, "P"),
                *betas = cJSON_GetObjectItemCaseSensitive(root, "betas");
    int n = cJSON_GetArraySize(p0), steps = cJSON_GetArraySize(G);
    CHECK(n > 0 && steps > 0 && cJSON_GetArraySize(P) == steps, "%s: p0, G, P", path);
    if (n <= 0 || steps <= 0) {
        cJSON_Delete(root);
        return;
    }
    float b1 = (float)cJSON_GetArrayItem(betas, 0)->valuedouble,
          b2 = (float)cJSON_GetArrayItem(betas, 1)->valuedouble,
          eps = (float)cJSON_GetObjectItemCaseSensitive(root, "eps")->valuedouble,
          wd = (float)cJSON_GetObjectItemCaseSensitive(root, "weight_decay")->valuedouble;
    double lr = cJSON_GetObjectItemCaseSensitive(root, "lr")->valuedouble;
    float *h = xmalloc(sizeof(float) * (size_t)n), *want = xmalloc(sizeof(float) * (size_t)n);
    for (int be_i = 0; be_i < 2; be_i++) {
        TunaErr err = {0};
        Backend *be = backend_init(be_i ? "cpu" : "ref", 2, &err);
        float *p = be->ops->alloc(be, sizeof(float) * (size_t)n),
              *g = be->ops->alloc(be, sizeof(float) * (size_t)n);
        for (int i = 0; i < n; i++)
            h[i] = (float)cJSON_GetArrayItem(p0, i)->valuedouble;
        be->ops->upload(be, p, h, sizeof(float) * (size_t)n);
        TrainParam tp = {.name = "w", .data = p, .grad = g, .n = (size_t)n, .ndim = 2, .decay = 1};
        Optim o;
        CHECK(optim_init(&o, be, &tp, 1, b1, b2, eps, wd, &err) == 0, "%s", err.msg);
        double worst = 0;
        for (int k = 0; k < steps; k++) {
            for (int i = 0; i < n; i++)
                h[i] = (float)cJSON_GetArrayItem(cJSON_GetArrayItem(G, k), i)->valuedouble;
            be->ops->upload(be, g, h, sizeof(float) * (size_t)n);
            optim_step(&o, &tp, 1, (float)lr, 1.0f);
            be->ops->download(be, h, p, sizeof(float) * (size_t)n);
            for (int i = 0; i < n; i++)
                want[i] = (float)cJSON_GetArrayItem(cJSON_GetArrayItem(P, k), i)->valuedouble;
            worst = fmax(worst, test_max_abs_diff(h, want, (size_t)n));
        }
        CHECK(worst <= 1e-6, "[%s] AdamW betas (%g, %g) eps %g: max |dp| %.3g", be->ops->name,
              (double)b1, (double)b2, (double)eps, worst);
        printf("  [%s] AdamW betas (%g, %g), eps %g, %d steps vs torch: max |dp| %.2e\n",
               be->ops->name, (double)b1, (double)b2, (double)eps, steps, worst);
        optim_free(&o);
        be->ops->release(be, p);
        be->ops->release(be, g);
        backend_free(be);
    }
    free(h);
    free(want);
    cJSON_Delete(root);
}

int main(void) {
    const char *fx = "tests/fixtures/train/adamw.safetensors";
    TunaErr err = {0};
    SafeTensors *st = NULL;
    struct stat sb;
    if (stat(fx, &sb) || safetensors_open(fx, &st, &err)) {
        CHECK(0, "%s: %s", fx, err.msg);
        return test_report("test_optim");
    }
#define T(name) ((const float *)safetensors_find(st, name)->data)
    const StTensor *p0t = safetensors_find(st, "p0"), *p1t = safetensors_find(st, "p0_nowd");
    size_t N = (size_t)p0t->shape[0], N2 = (size_t)p1t->shape[0];
    int steps = (int)safetensors_find(st, "lrs")->shape[0];
    // schedules
    const char *names[] = {"constant", "constant_with_warmup", "linear", "cosine"};
    for (int s = 0; s < 4; s++) {
        char key[64];
        snprintf(key, sizeof key, "sched.%s", names[s]);
        const float *want = T(key);
        Sched sc;
        CHECK(sched_init(&sc, names[s], "", 1.0, 5, 30, &err) == 0, "%s", err.msg);
        double worst = 0;
        for (int k = 0; k < 30; k++)
            worst = fmax(worst, fabs(sched_factor(&sc, k) - (double)want[k]));
        CHECK(worst <= 1e-6, "schedule %s: max diff %.3g", names[s], worst);
    }
    test_sched_kwargs();
    test_adamw_args();
    test_plateau();
    Sched cosine;
    CHECK(sched_init(&cosine, "cosine", "", 1e-3, 3, steps, &err) == 0, "%s", err.msg);
    // AdamW: 20 steps with the lrs transformers' cosine schedule produced
    for (int be_i = 0; be_i < 2; be_i++) {
        Backend *be = backend_init(be_i ? "cpu" : "ref", 2, &err);
        float *p = be->ops->alloc(be, N * 4), *q = be->ops->alloc(be, N2 * 4);
        float *g = be->ops->alloc(be, N * 4), *h = be->ops->alloc(be, N2 * 4);
        be->ops->upload(be, p, T("p0"), N * 4);
        be->ops->upload(be, q, T("p0_nowd"), N2 * 4);
        TrainParam tp[2] = {{.name = "w", .data = p, .grad = g, .n = N, .ndim = 2, .decay = 1},
                            {.name = "b", .data = q, .grad = h, .n = N2, .ndim = 1, .decay = 0}};
        Optim o;
        CHECK(optim_init(&o, be, tp, 2, 0.9f, 0.999f, 1e-8f, 0.01f, &err) == 0, "%s", err.msg);
        float *hp = xmalloc(N * 4), *hq = xmalloc(N2 * 4);
        double worst = 0, lr_worst = 0;
        for (int k = 0; k < steps; k++) {
            be->ops->upload(be, g, T("G") + (size_t)k * N, N * 4);
            be->ops->upload(be, h, T("G_nowd") + (size_t)k * N2, N2 * 4);
            double lr = 1e-3 * sched_factor(&cosine, k);
            lr_worst = fmax(lr_worst, fabs(lr - (double)T("lrs")[k]));
            optim_step(&o, tp, 2, (float)lr, 1.0f);
            be->ops->download(be, hp, p, N * 4);
            be->ops->download(be, hq, q, N2 * 4);
            worst = fmax(worst, test_max_abs_diff(hp, T("P") + (size_t)k * N, N));
            worst = fmax(worst, test_max_abs_diff(hq, T("P_nowd") + (size_t)k * N2, N2));
        }
        CHECK(lr_worst <= 1e-9, "lr schedule vs torch: %.3g", lr_worst);
        CHECK(worst <= 1e-5, "[%s] AdamW parameters after 20 steps: max diff %.3g", be->ops->name,
              worst);
        printf("  [%s] AdamW 20 steps vs torch: max |dp| %.2e\n", be->ops->name, worst);
        // clipping
        be->ops->upload(be, g, T("G"), N * 4);
        double norm = optim_clip(be, tp, 1, 0.5f, NULL, NULL);
        double want = (double)T("clip.total_norm")[0];
        CHECK(fabs(norm - want) <= 1e-6 * want, "clip norm %.7f vs %.7f", norm, want);
        be->ops->download(be, hp, g, N * 4);
        double cd = test_max_abs_diff(hp, T("clip.grad"), N);
        CHECK(cd <= 1e-7, "clipped grad diff %.3g", cd);
        // the clip factor fused into the AdamW pass == scaling the gradients first, bit for bit
        {
            float *pa = xmalloc(N * 4), *pb = xmalloc(N * 4);
            float *gp[2] = {g, g};
            for (int pass = 0; pass < 2; pass++) {
                Optim o2;
                CHECK(optim_init(&o2, be, tp, 1, 0.9f, 0.999f, 1e-8f, 0.01f, &err) == 0, "%s",
                      err.msg);
                be->ops->upload(be, p, T("p0"), N * 4);
                for (int k = 0; k < 3; k++) {
                    be->ops->upload(be, gp[pass], T("G") + (size_t)k * N, N * 4);
                    float gs = 1.0f;
                    optim_clip(be, tp, 1, 0.05f, pass ? &gs : NULL, NULL);
                    if (pass)
                        CHECK(gs < 1.0f, "clip factor %g: the test wants clipping", (double)gs);
                    optim_step(&o2, tp, 1, 1e-3f, gs);
                }
                be->ops->download(be, pass ? pb : pa, p, N * 4);
                optim_free(&o2);
            }
            CHECK(memcmp(pa, pb, N * 4) == 0,
                  "[%s] fused clip factor differs from clipping in place", be->ops->name);
            free(pa);
            free(pb);
        }
        free(hp);
        free(hq);
        optim_free(&o);
        be->ops->release(be, p);
        be->ops->release(be, q);
        be->ops->release(be, g);
        be->ops->release(be, h);
        backend_free(be);
    }
    safetensors_free(st);
    test_spans();
    test_shards("ref");
    test_shards("cpu");
    return test_report("test_optim");
}
