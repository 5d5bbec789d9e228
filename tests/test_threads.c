/* test_threads.c: results do not depend on the CPU backend's thread count, nor on a change of
 * it between steps (what `--threads 0` does when other processes get busy).
 * - kernels: every op that sums (norm backward weight and bias gradients, the grad-norm sum of
 *   squares, the matmul products through OpenBLAS, attention, embedding, loss, AdamW) gives the
 *   same bits on 1, 2 and 3 threads;
 * - the engine: for every training method and variant (full, with gradient checkpointing,
 *   freeze, LoRA, rsLoRA + dropout + trainable tokens, P-tuning, with the projection; GPT-2's
 *   LayerNorm too) two optimizer steps with 1 thread, with 2 threads, and with 2 then 1 give
 *   bit-identical losses, grad norms, gradients (memcmp) and updated weights;
 * - `tuna train` itself (train_run, in process) on stories260K with --threads 1, --threads 2
 *   and the test hook TUNA_THREADS_SCHEDULE=2,1,3 (the count changes every step) gives the same
 *   step losses, grad norms and eval loss, read as numbers from metrics.jsonl (log lines are
 *   not compared), and the same bytes of saved weights.
 * ONLY=kernels, engine or train runs one part. Nothing here measures time. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli_fixture.h"
#include "harness.h"
#include "kernels/backend.h"
#include "src/model.h"
#include "src/model_train.h"
#include "src/optim.h"
#include "src/train.h"
#include "src/xalloc.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static float *rand_buf(size_t n) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

static float *copy_buf(const float *src, size_t n) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    memcpy(p, src, sizeof(float) * n);
    return p;
}

static const int thread_counts[] = {2, 3};
#define N_TC ((int)(sizeof thread_counts / sizeof thread_counts[0]))

/* Runs OP (a statement that writes into the buffers listed in outs) with 1 thread and then with
 * each of thread_counts, from the same starting outputs, and checks the outputs bit for bit. */
typedef struct Outs {
    float *buf[4];
    size_t n[4];
    int k;
} Outs;

static void outs_save(const Outs *o, float **save) {
    for (int i = 0; i < o->k; i++)
        save[i] = copy_buf(o->buf[i], o->n[i]);
}

static void outs_restore(const Outs *o, float *const *save) {
    for (int i = 0; i < o->k; i++)
        memcpy(o->buf[i], save[i], sizeof(float) * o->n[i]);
}

#define SAME_ON_ALL_THREADS(be, name, outs, OP)                                                    \
    do {                                                                                           \
        float *init_[4], *ref_[4];                                                                 \
        outs_save(&(outs), init_);                                                                 \
        backend_set_threads(be, 1);                                                                \
        OP;                                                                                        \
        outs_save(&(outs), ref_);                                                                  \
        for (int t_ = 0; t_ < N_TC; t_++) {                                                        \
            outs_restore(&(outs), init_);                                                          \
            backend_set_threads(be, thread_counts[t_]);                                            \
            OP;                                                                                    \
            for (int i_ = 0; i_ < (outs).k; i_++)                                                  \
                CHECK(!memcmp(ref_[i_], (outs).buf[i_], sizeof(float) * (outs).n[i_]),             \
                      "%s: output %d differs between 1 and %d threads (max diff %g)", name, i_,    \
                      thread_counts[t_],                                                           \
                      test_max_abs_diff(ref_[i_], (outs).buf[i_], (outs).n[i_]));                  \
        }                                                                                          \
        for (int i_ = 0; i_ < (outs).k; i_++) {                                                    \
            free(init_[i_]);                                                                       \
            free(ref_[i_]);                                                                        \
        }                                                                                          \
    } while (0)

/* OpenBLAS runs the kernels of this CPU's class (harness.h started the test again with
 * OPENBLAS_CORETYPE where OpenBLAS took the CPU for an older one: OpenBLAS 0.3.21 on an
 * Emerald Rapids Xeon picked Prescott, whose sums changed with the thread count), and so does
 * `tuna` started without the variable. A core set by the user is theirs. */
static void test_blas_core(void) {
    const char *picked = NULL, *want = cpu_blas_core_wanted(&picked);
    const char *was = getenv("TUNA_BLAS_CORE_WAS");
    CHECK(!want || (getenv("OPENBLAS_CORETYPE") && !was),
          "OpenBLAS runs core %s where this CPU takes %s", picked, want);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "env -u OPENBLAS_CORETYPE -u TUNA_BLAS_CORE_WAS %s info",
             test_tuna_bin());
    FILE *f = popen(cmd, "r");
    char line[1024], core[64] = "";
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "fp32 products:", 14) && strstr(line, "(core "))
            sscanf(strstr(line, "(core ") + 6, "%63[A-Za-z0-9]", core);
    CHECK(f && pclose(f) == 0 && core[0], "tuna info: no OpenBLAS core");
    const char *fixed = was ? getenv("OPENBLAS_CORETYPE") : picked;
    CHECK(!strcmp(core, fixed ? fixed : ""), "tuna runs OpenBLAS core %s, this test %s", core,
          fixed);
    printf("  OpenBLAS core %s%s%s\n", picked, was ? ", OpenBLAS's own pick " : "", was ? was : "");
}

static void test_kernels(void) {
    test_blas_core();
    TunaErr err = {0};
    Backend *be = backend_init("cpu", 1, &err);
    CHECK(be != NULL, "cpu backend: %s", err.msg);
    if (!be) return;
    const BackendOps *op = be->ops;

    /* norms: row counts that are not a multiple of any block size, wide and narrow rows */
    int shapes[][2] = {{2048, 64}, {517, 96}, {37, 1000}};
    for (int s = 0; s < 3; s++) {
        int R = shapes[s][0], C = shapes[s][1];
        size_t n = (size_t)R * C;
        float *in = rand_buf(n), *dout = rand_buf(n), *w = rand_buf((size_t)C);
        float *din = rand_buf(n), *dw = rand_buf((size_t)C), *db = rand_buf((size_t)C);
        char name[64];
        snprintf(name, sizeof name, "rmsnorm_bwd %dx%d", R, C);
        Outs o1 = {{din, dw}, {n, (size_t)C}, 2};
        SAME_ON_ALL_THREADS(be, name, o1, op->rmsnorm_bwd(be, din, dw, dout, in, w, 1e-5f, R, C));
        Outs o2 = {{dw}, {(size_t)C}, 1};
        SAME_ON_ALL_THREADS(be, name, o2, op->rmsnorm_bwd(be, NULL, dw, dout, in, w, 1e-5f, R, C));
        snprintf(name, sizeof name, "layernorm_bwd %dx%d", R, C);
        Outs o3 = {{din, dw, db}, {n, (size_t)C, (size_t)C}, 3};
        SAME_ON_ALL_THREADS(be, name, o3,
                            op->layernorm_bwd(be, din, dw, db, dout, in, w, 1e-5f, R, C));
        Outs o4 = {{db}, {(size_t)C}, 1};
        SAME_ON_ALL_THREADS(be, name, o4,
                            op->layernorm_bwd(be, NULL, NULL, db, dout, in, w, 1e-5f, R, C));
        free(in);
        free(dout);
        free(w);
        free(din);
        free(dw);
        free(db);
    }
    CHECK(be->err.code == 0, "norms: %s", be->err.msg);

    /* the grad-norm sum of squares, at sizes below, at and far above one chunk */
    size_t sizes[] = {4095, 4096 * 3 + 1, 260032, 1000003, (size_t)1 << 21};
    for (int s = 0; s < 5; s++) {
        float *x = rand_buf(sizes[s]);
        backend_set_threads(be, 1);
        double ref = op->sumsq(be, x, sizes[s]);
        for (int t = 0; t < N_TC; t++) {
            backend_set_threads(be, thread_counts[t]);
            double got = op->sumsq(be, x, sizes[s]);
            CHECK(!memcmp(&got, &ref, sizeof got),
                  "sumsq n=%zu: %.17g on 1 thread, %.17g on %d threads", sizes[s], ref, got,
                  thread_counts[t]);
        }
        free(x);
    }

    /* matrix products (OpenBLAS, whose thread count follows ours) at stories260K's shapes */
    /* (M, K, N); an inner dimension above 448 (K forward, M for dw) is where OpenBLAS's own
     * threads would change the bits */
    int mm[][3] = {{2048, 64, 172}, {2048, 172, 64}, {2048, 64, 512},
                   {555, 64, 172},  {300, 1001, 96}, {8, 64, 600}, /* LoRA's rank side: */
                   {555, 576, 8},   {555, 8, 1536}};
    for (int s = 0; s < (int)(sizeof mm / sizeof mm[0]); s++) {
        int M = mm[s][0], K = mm[s][1], N = mm[s][2];
        float *in = rand_buf((size_t)M * K), *w = rand_buf((size_t)N * K);
        float *bias = rand_buf((size_t)N), *out = rand_buf((size_t)M * N);
        float *dout = rand_buf((size_t)M * N), *din = rand_buf((size_t)M * K);
        float *dw = rand_buf((size_t)N * K), *dbias = rand_buf((size_t)N);
        char name[64];
        snprintf(name, sizeof name, "matmul %dx%dx%d", M, K, N);
        Outs o1 = {{out}, {(size_t)M * N}, 1};
        SAME_ON_ALL_THREADS(be, name, o1, op->matmul_fwd(be, out, in, w, bias, M, K, N));
        Outs o2 = {{din, dw, dbias}, {(size_t)M * K, (size_t)N * K, (size_t)N}, 3};
        SAME_ON_ALL_THREADS(be, name, o2, op->matmul_bwd(be, din, dw, dbias, dout, in, w, M, K, N));
        SAME_ON_ALL_THREADS(be, name, o1, op->matmul_acc(be, out, in, w, M, K, N));
        free(in);
        free(w);
        free(bias);
        free(out);
        free(dout);
        free(din);
        free(dw);
        free(dbias);
    }

    /* attention, both paths (Tq < 32: per row; Tq >= 32: sgemm), GQA, and a window */
    /* the last: decoding one row with 3 kv heads of 64, whose query heads go in parts to
     * the threads (the parts change no bit) */
    int at[][7] = {{2, 16, 24, 0, 8, 4, 8},
                   {2, 64, 64, 0, 8, 4, 8},
                   {2, 48, 80, 20, 8, 4, 8},
                   {2, 500, 500, 0, 8, 4, 8},
                   {1, 1, 700, 0, 9, 3, 64}};
    for (int s = 0; s < 5; s++) {
        int B = at[s][0], Tq = at[s][1], Tk = at[s][2], win = at[s][3], NH = at[s][4],
            KVH = at[s][5], HS = at[s][6];
        size_t nq = (size_t)B * Tq * NH * HS, nk = (size_t)B * Tk * KVH * HS;
        float *q = rand_buf(nq), *k = rand_buf(nk), *v = rand_buf(nk), *out = rand_buf(nq);
        float *dout = rand_buf(nq), *dq = rand_buf(nq), *dk = rand_buf(nk), *dv = rand_buf(nk);
        size_t kvs = (size_t)Tk * KVH * HS;
        char name[64];
        snprintf(name, sizeof name, "attention Tq %d Tk %d window %d", Tq, Tk, win);
        Outs o1 = {{out}, {nq}, 1};
        SAME_ON_ALL_THREADS(
                be, name, o1,
                op->attention_fwd(be, out, q, k, v, B, Tq, Tk, kvs, NH, KVH, HS, win, NULL));
        Outs o2 = {{dq, dk, dv}, {nq, nk, nk}, 3};
        SAME_ON_ALL_THREADS(be, name, o2,
                            op->attention_bwd(be, dq, dk, dv, dout, q, k, v, B, Tq, Tk, kvs, NH,
                                              KVH, HS, win, NULL));
        free(q);
        free(k);
        free(v);
        free(out);
        free(dout);
        free(dq);
        free(dk);
        free(dv);
    }

    /* embedding gradient with repeated ids, loss, AdamW, elementwise backward */
    {
        int T = 1024, C = 64, V = 512;
        int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)T);
        for (int t = 0; t < T; t++)
            ids[t] = (int32_t)((t * 7) % 37);
        float *dtable = rand_buf((size_t)V * C), *dout = rand_buf((size_t)T * C);
        Outs o1 = {{dtable}, {(size_t)V * C}, 1};
        SAME_ON_ALL_THREADS(be, "embed_bwd", o1, op->embed_bwd(be, dtable, dout, ids, T, C));
        float *logits = rand_buf((size_t)T * V), *dl = rand_buf((size_t)T * V);
        float *losses = rand_buf((size_t)T);
        for (int t = 0; t < T; t++)
            ids[t] = t % 5 == 0 ? -100 : (int32_t)((t * 13) % V);
        Outs o2 = {{dl, losses}, {(size_t)T * V, (size_t)T}, 2};
        SAME_ON_ALL_THREADS(
                be, "xent_fwd_bwd", o2,
                op->xent_fwd_bwd(be, dl, losses, logits, ids, T, V, 1.0f / 900, 0.0f, XENT_PLAIN));
        size_t n = 300007;
        float *p = rand_buf(n), *g = rand_buf(n), *m = rand_buf(n), *v2 = rand_buf(n);
        for (size_t i = 0; i < n; i++)
            v2[i] = v2[i] * v2[i];
        Outs o3 = {{p, m, v2}, {n, n, n}, 3};
        SAME_ON_ALL_THREADS(be, "adamw", o3,
                            op->adamw(be, p, g, 0.5f, m, v2, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f,
                                      0.1f, 0.01f));
        float *gate = rand_buf(n), *up = rand_buf(n), *dg = rand_buf(n), *du = rand_buf(n);
        Outs o4 = {{dg, du}, {n, n}, 2};
        SAME_ON_ALL_THREADS(be, "swiglu_bwd", o4, op->swiglu_bwd(be, dg, du, g, gate, up, n, 1));
        free(ids);
        free(dtable);
        free(dout);
        free(logits);
        free(dl);
        free(losses);
        free(p);
        free(g);
        free(m);
        free(v2);
        free(gate);
        free(up);
        free(dg);
        free(du);
    }
    CHECK(be->err.code == 0, "kernels: %s", be->err.msg);
    backend_free(be);
}

// --- the engine: a few optimizer steps per method

#define STEPS 2
/* Tokens per micro-batch: 560 rows take the norm backward onto threads (rows x 64 >=
 * PAR_MIN_WORK) and give the weight gradient products an inner dimension at which OpenBLAS's
 * own threading would change the bits (> 448 and not near a multiple of 32). */
#define ROWS 560

typedef struct Method {
    const char *name, *model;
    int T; /* tokens per sequence (ROWS / T sequences a micro-batch) */
    TrainSetup setup;
} Method;

/* What one run leaves: per step the loss sum, grad norm and every gradient (concatenated), and
 * the trainable weights at the end. */
typedef struct Trace {
    double loss[STEPS], gnorm[STEPS];
    float *grads[STEPS], *weights;
    size_t n;
    int ok;
} Trace;

static void trace_free(Trace *t) {
    for (int s = 0; s < STEPS; s++)
        free(t->grads[s]);
    free(t->weights);
    memset(t, 0, sizeof *t);
}

/* Concatenates every trainable tensor's grad (or data) into one host buffer. */
static float *gather(const TrainParam *tp, int np, size_t total, int data) {
    float *out = xmalloc(sizeof(float) * total), *o = out;
    for (int i = 0; i < np; i++) {
        memcpy(o, data ? tp[i].data : tp[i].grad, sizeof(float) * tp[i].n);
        o += tp[i].n;
    }
    return out;
}

/* Trains STEPS optimizer steps as train.c does (zero, forward + backward, clip, AdamW), step s
 * on sched[s % nsched] threads. */
static void run_method(const Method *me, const int *sched, int nsched, Trace *tr) {
    memset(tr, 0, sizeof *tr);
    TunaErr err = {0};
    Backend *be = backend_init("cpu", sched[0], &err);
    Model *m = NULL;
    TrainState *ts = NULL;
    Optim opt = {0};
    int B = ROWS / me->T;
    int32_t *ids = xmalloc(sizeof(int32_t) * ROWS), *tg = xmalloc(sizeof(int32_t) * ROWS);
    if (!be || model_load(me->model, be, &m, &err) ||
        train_state_init(m, &me->setup, B, me->T, &ts, &err)) {
        CHECK(0, "%s: %s", me->name, err.msg);
        goto done;
    }
    int np;
    const TrainParam *tp = train_params(ts, &np);
    for (int i = 0; i < np; i++)
        tr->n += tp[i].n;
    if (optim_init(&opt, be, tp, np, 0.9f, 0.999f, 1e-8f, 0.01f, &err)) {
        CHECK(0, "%s: %s", me->name, err.msg);
        goto done;
    }
    uint64_t r = 12345;
    int V = m->cfg.V;
    for (int step = 0; step < STEPS; step++) {
        int n_t = 0;
        for (int i = 0; i < ROWS; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            ids[i] = (int32_t)(3 + (r >> 33) % (uint64_t)(V - 3));
            tg[i] = i % me->T < 10 ? -100 : (int32_t)((r >> 20) % (uint64_t)V); /* a prompt */
            n_t += tg[i] >= 0;
        }
        backend_set_threads(be, sched[step % nsched]);
        train_zero_grad(ts);
        train_set_step_seed(ts, (uint64_t)step);
        int c;
        if (train_step_fb(ts, ids, tg, B, 1.0f / (float)n_t, 1, &tr->loss[step], &c, &err)) {
            CHECK(0, "%s: %s", me->name, err.msg);
            goto done;
        }
        float gscale;
        tr->gnorm[step] = optim_clip(be, tp, np, 1.0f, &gscale, NULL);
        tr->grads[step] = gather(tp, np, tr->n, 0);
        optim_step(&opt, tp, np, 1e-2f, gscale);
    }
    tr->weights = gather(tp, np, tr->n, 1);
    tr->ok = be->err.code == 0;
    CHECK(tr->ok, "%s: %s", me->name, be->err.msg);
done:
    free(ids);
    free(tg);
    optim_free(&opt);
    train_state_free(ts);
    model_free(m);
    backend_free(be);
}

static void compare_traces(const char *method, const char *what, const Trace *ref,
                           const Trace *got) {
    if (!ref->ok || !got->ok) return;
    CHECK(ref->n == got->n, "%s, %s: %zu vs %zu trainable floats", method, what, ref->n, got->n);
    if (ref->n != got->n) return;
    for (int s = 0; s < STEPS; s++) {
        CHECK(!memcmp(&ref->loss[s], &got->loss[s], sizeof(double)),
              "%s, %s: step %d loss %.17g, on 1 thread %.17g", method, what, s + 1, got->loss[s],
              ref->loss[s]);
        CHECK(!memcmp(&ref->gnorm[s], &got->gnorm[s], sizeof(double)),
              "%s, %s: step %d grad norm %.17g, on 1 thread %.17g", method, what, s + 1,
              got->gnorm[s], ref->gnorm[s]);
        CHECK(!memcmp(ref->grads[s], got->grads[s], sizeof(float) * ref->n),
              "%s, %s: step %d gradients differ from 1 thread's (max diff %g)", method, what, s + 1,
              test_max_abs_diff(ref->grads[s], got->grads[s], ref->n));
    }
    CHECK(!memcmp(ref->weights, got->weights, sizeof(float) * ref->n),
          "%s, %s: weights after %d steps differ from 1 thread's (max diff %g)", method, what,
          STEPS, test_max_abs_diff(ref->weights, got->weights, ref->n));
}

/* Every method and variant on the tiny tied-embedding LLaMA of tests/fixtures (stories260K's
 * layout, a third of its size), and full fine-tuning of the GPT-2 one (LayerNorm, biases). */
static void test_engine(void) {
    const char *llama = "tests/fixtures/llama_tied", *gpt2 = "tests/fixtures/gpt2";
    TrainSetup base = {.lora_rank = 4,
                       .lora_alpha = 8,
                       .lora_targets = "all",
                       .seed = 7,
                       .freeze_layers = 1,
                       .prefix_tokens = 4,
                       .prefix_hidden = 16};
    Method me[8];
    for (int i = 0; i < 8; i++) {
        me[i] = (Method){NULL, llama, 112, base};
        me[i].setup.method = METHOD_FULL;
    }
    me[0].name = "full";
    me[1].name = "full, gradient checkpointing";
    me[1].setup.grad_checkpoint = 1;
    me[2].name = "freeze";
    me[2].setup.method = METHOD_FREEZE;
    me[3].name = "lora";
    me[3].setup.method = METHOD_LORA;
    me[4].name = "lora, rslora + dropout + trainable tokens";
    me[4].setup.method = METHOD_LORA;
    me[4].setup.lora_rslora = 1;
    me[4].setup.lora_dropout = 0.1f;
    me[4].setup.lora_tokens = "2,5";
    me[5].name = "ptuning";
    me[5].setup.method = METHOD_PTUNING;
    me[6].name = "ptuning, projection";
    me[6].setup.method = METHOD_PTUNING;
    me[6].setup.prefix_projection = 1;
    me[7] = (Method){"full, gpt2", gpt2, 56, base};
    me[7].setup.method = METHOD_FULL;
    static const int one[] = {1}, two[] = {2}, changing[] = {2, 1};
    for (int i = 0; i < 8; i++) {
        Trace ref, t2, tc;
        run_method(&me[i], one, 1, &ref);
        run_method(&me[i], two, 1, &t2);
        run_method(&me[i], changing, 2, &tc);
        compare_traces(me[i].name, "2 threads", &ref, &t2);
        compare_traces(me[i].name, "2 threads then 1", &ref, &tc);
        trace_free(&ref);
        trace_free(&t2);
        trace_free(&tc);
    }
}

// --- `tuna train` (train_run in process): numbers in metrics.jsonl and the saved weights

/* Steps' losses and grad norms, and evals' losses, from RUN/metrics.jsonl (log lines, such as
 * "threads 2 -> 1", are not compared); returns the count of step lines, *n_eval the evals',
 * *hooked whether the TUNA_THREADS_SCHEDULE hook said it ran. */
static int read_metrics(const char *dir, double *loss, double *gnorm, double *eval, int cap,
                        int *n_eval, int *hooked) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = xread_file(path, NULL);
    if (!text) return -1;
    int n = 0;
    *n_eval = *hooked = 0;
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        const char *t = cJSON_GetStringValue(cJSON_GetObjectItem(j, "type"));
        const char *msg = cJSON_GetStringValue(cJSON_GetObjectItem(j, "msg"));
        if (t && !strcmp(t, "step") && n < cap) {
            loss[n] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
            gnorm[n++] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "grad_norm"));
        }
        if (t && !strcmp(t, "eval") && *n_eval < cap)
            eval[(*n_eval)++] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "eval_loss"));
        if (msg && strstr(msg, "TUNA_THREADS_SCHEDULE")) *hooked = 1;
        cJSON_Delete(j);
    }
    free(text);
    return n;
}

static int run_train(const char *method, const char *extra_key, const char *extra_val,
                     const char *threads, const char *schedule, const char *out) {
    TrainConfig c;
    train_config_defaults(&c);
    const char *kv[][2] = {{"model", "models/stories260K"},
                           {"dataset", "identity"},
                           {"dataset_dir", "datasets"},
                           {"vars", "name=Tuna,author=Ann"},
                           {"method", method},
                           {"batch_size", "8"},
                           {"cutoff_len", "80"},
                           {"max_steps", "3"},
                           {"eval_steps", "0"},
                           {"save_steps", "0"},
                           {"sample_max_tokens", "0"},
                           {"seed", "5"},
                           {"threads", threads},
                           {"output", out},
                           {extra_key, extra_val}};
    TunaErr err = {0};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        if (kv[i][0] && train_config_set(&c, kv[i][0], kv[i][1], &err)) {
            CHECK(0, "%s=%s: %s", kv[i][0], kv[i][1], err.msg);
            return -1;
        }
    if (schedule)
        setenv("TUNA_THREADS_SCHEDULE", schedule, 1);
    else
        unsetenv("TUNA_THREADS_SCHEDULE");
    TrainHooks hooks = {.quiet = 1, .overwrite = 1};
    int rc = train_run(&c, 0, &hooks, &err);
    unsetenv("TUNA_THREADS_SCHEDULE");
    CHECK(rc == 0, "train %s threads %s schedule %s: %s", method, threads,
          schedule ? schedule : "-", err.msg);
    return rc;
}

/* Three steps of full and P-tuning (with the projection) on stories260K, 8 rows of up to 80
 * tokens a step (enough rows for the norms to go onto threads), evaluated at the end. */
static void test_train_run(void) {
    char tmpl[] = "/tmp/tuna_threads_XXXXXX";
    const char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL, "mkdtemp");
    if (!tmp) return;
    /* method, an extra option, the file that holds the trained weights */
    const char *runs[][4] = {{"full", NULL, NULL, "model.safetensors"},
                             {"ptuning", "prefix_projection", "true", "adapter_model.safetensors"}};
    /* --threads 1, --threads 2, and the count changing every step (the hook) */
    const char *threads[] = {"1", "2", "1"}, *sched[] = {NULL, NULL, "2,1,3"};
    for (int r = 0; r < 2; r++) {
        double loss[3][8], gn[3][8], ev[3][8];
        int n[3], ne[3], hooked[3];
        char out[3][256];
        for (int k = 0; k < 3; k++) {
            snprintf(out[k], sizeof out[k], "%s/%s-%d", tmp, runs[r][0], k);
            n[k] = -1;
            if (!run_train(runs[r][0], runs[r][1], runs[r][2], threads[k], sched[k], out[k]))
                n[k] = read_metrics(out[k], loss[k], gn[k], ev[k], 8, &ne[k], &hooked[k]);
        }
        CHECK(n[0] == 3 && ne[0] >= 1, "%s: %d step lines and %d evals, expected 3 and some",
              runs[r][0], n[0], ne[0]);
        CHECK(n[2] < 0 || hooked[2], "%s: no log line from the TUNA_THREADS_SCHEDULE hook",
              runs[r][0]);
        for (int k = 1; k < 3 && n[0] == 3 && ne[0] >= 1; k++) {
            const char *what = sched[k] ? "threads 2,1,3 by step" : "--threads 2";
            CHECK(n[k] == n[0] && ne[k] == ne[0], "%s, %s: %d step lines, %d on 1 thread",
                  runs[r][0], what, n[k], n[0]);
            if (n[k] != n[0] || ne[k] != ne[0]) continue;
            for (int i = 0; i < n[0]; i++) {
                CHECK(!memcmp(&loss[k][i], &loss[0][i], sizeof(double)),
                      "%s, %s: step %d loss %.17g, on 1 thread %.17g", runs[r][0], what, i + 1,
                      loss[k][i], loss[0][i]);
                CHECK(!memcmp(&gn[k][i], &gn[0][i], sizeof(double)),
                      "%s, %s: step %d grad norm %.17g, on 1 thread %.17g", runs[r][0], what, i + 1,
                      gn[k][i], gn[0][i]);
            }
            for (int i = 0; i < ne[0]; i++)
                CHECK(!memcmp(&ev[k][i], &ev[0][i], sizeof(double)),
                      "%s, %s: eval %d loss %.17g, on 1 thread %.17g", runs[r][0], what, i,
                      ev[k][i], ev[0][i]);
            char fa[512], fb[512];
            snprintf(fa, sizeof fa, "%s/%s", out[0], runs[r][3]);
            snprintf(fb, sizeof fb, "%s/%s", out[k], runs[r][3]);
            CHECK(test_same_file(fa, fb), "%s, %s: %s differs from 1 thread's", runs[r][0], what,
                  runs[r][3]);
        }
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0, "%s", cmd);
}

int main(int argc, char **argv) {
    /* Threads that sleep at a barrier instead of spinning: on a busy machine a spinning OpenMP
     * thread holds the core its descheduled team mate needs (the default policy took this test
     * from 1 s to 27 s beside other tests here). libgomp reads the variable when it loads,
     * hence the exec. The results compared do not depend on it. */
    (void)argc;
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
    }
    const char *only = getenv("ONLY");
    if (!only || !strcmp(only, "kernels")) test_kernels();
    if (!only || !strcmp(only, "engine")) test_engine();
    if (!only || !strcmp(only, "train")) test_train_run();
    return test_report("test_threads");
}
