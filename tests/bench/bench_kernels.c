/* bench_kernels.c: the backward, loss and optimizer ops of the ref and cpu backends, timed
 * side by side at training shapes (SmolLM-135M-like: B*T = 512, C = 576, NH = 9, KVH = 3,
 * HS = 64, FF = 1536, V = 49152). Prints ms per call, GFLOP/s by a nominal flop count per op
 * (listed in flops() below; attention counts 5 HS-long products per (query, key, head) pair as
 * FlashAttention-2 does, though the CPU kernel's two passes do 7), and the cpu/ref speedup.
 * cpu uses every core (n_threads = 0); the best of several runs is reported.
 *
 *   cc -O2 -march=native -fopenmp -I. -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *      tests/bench/bench_kernels.c build/libtuna.a -L/usr/lib/x86_64-linux-gnu/openblas-openmp \
 *      -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lcjson -lpcre2-8 -lm
 *   (+ the objects in build/kernels/cuda and -L/usr/local/cuda/lib64 -lcublas -lcudart -lstdc++ when libtuna.a
 *   was built with nvcc.) Keep the rpath: without it the loader picks the system default
 *   libopenblas.so.0, the pthread build, whose spinning workers fight the OpenMP team
 *   (8 ms stalls on the first parallel op after a sgemm on a 2-core box).
 *   ./a.out [--quick]     (--quick: one run each, smaller V) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kernels/backend.h"

enum { B = 2, T = 256, BT = B * T, C = 576, NH = 9, KVH = 3, HS = 64, FF = 1536 };

/* Backend buffer of n random floats in [-s, s] (in [0, s] when s < 0: -s scale, positive). */
static float *buf(Backend *be, size_t n, float s) {
    float *h = malloc(sizeof(float) * n), *d = be->ops->alloc(be, sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        h[i] = s < 0 ? -s * fabsf(frand()) : frand() * s;
    be->ops->upload(be, d, h, sizeof(float) * n);
    free(h);
    return d;
}

/* Everything one op call needs, allocated on one backend. */
typedef struct Bufs {
    float *x, *w, *b, *dout, *din, *dw, *db; /* matmul / norms / elementwise */
    float *q, *k, *v, *dq, *dk, *dv, *ao;    /* attention */
    float *logits, *losses, *p, *g, *m, *vv; /* xent, adamw */
    float *table;                            /* embed (V, C) */
    int32_t *ids, *pos, *targets;
    float *inv_freq;
} Bufs;

static int V = 49152;

static void bufs_init(Backend *be, Bufs *s) {
    size_t big = (size_t)BT * FF > (size_t)FF * C ? (size_t)BT * FF : (size_t)FF * C;
    s->x = buf(be, big, 1), s->w = buf(be, (size_t)FF * C, 0.05f), s->b = buf(be, FF, 1);
    s->dout = buf(be, big, 1), s->din = buf(be, big, 1), s->dw = buf(be, (size_t)FF * C, 1);
    s->db = buf(be, FF, 1);
    size_t nq = (size_t)BT * NH * HS, nkv = (size_t)BT * KVH * HS;
    s->q = buf(be, nq, 1), s->k = buf(be, nkv, 1), s->v = buf(be, nkv, 1);
    s->dq = buf(be, nq, 1), s->dk = buf(be, nkv, 1), s->dv = buf(be, nkv, 1);
    s->ao = buf(be, nq, 1);
    s->logits = buf(be, (size_t)BT * V, 3);
    s->losses = malloc(sizeof(float) * BT);
    size_t np = (size_t)FF * C * 4;
    s->p = buf(be, np, 1), s->g = buf(be, np, 1), s->m = buf(be, np, 0.01f);
    s->vv = buf(be, np, -0.01f); /* second moments are >= 0 */
    s->table = buf(be, (size_t)V * C, 1);
    s->ids = malloc(sizeof(int32_t) * BT), s->pos = malloc(sizeof(int32_t) * BT);
    s->targets = malloc(sizeof(int32_t) * BT);
    for (int i = 0; i < BT; i++) {
        s->ids[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)V);
        s->pos[i] = i % T;
        s->targets[i] = i % 7 == 0 ? -100 : (int32_t)(((uint64_t)i * 40503u) % (uint64_t)V);
    }
    float fr[HS / 2];
    for (int i = 0; i < HS / 2; i++)
        fr[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)HS);
    s->inv_freq = be->ops->alloc(be, sizeof fr);
    be->ops->upload(be, s->inv_freq, fr, sizeof fr);
}

static void bufs_free(Backend *be, Bufs *s) {
    float *d[] = {s->x,      s->w, s->b, s->dout, s->din, s->dw,    s->db,
                  s->q,      s->k, s->v, s->dq,   s->dk,  s->dv,    s->ao,
                  s->logits, s->p, s->g, s->m,    s->vv,  s->table, s->inv_freq};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        be->ops->release(be, d[i]);
    free(s->losses), free(s->ids), free(s->pos), free(s->targets);
}

enum {
    OP_MM_QKV,
    OP_MM_UP,
    OP_MM_DOWN,
    OP_RMS,
    OP_LN,
    OP_ROPE,
    OP_ATTN,
    OP_SWIGLU,
    OP_GELU,
    OP_EMBED,
    OP_XENT,
    OP_SUMSQ,
    OP_SCALE,
    OP_DROPOUT,
    OP_ADAMW,
    N_OPS
};

static const char *names[N_OPS] = {"matmul_bwd q (512x576 -> 576)",
                                   "matmul_bwd up (512x576 -> 1536)",
                                   "matmul_bwd down (512x1536 -> 576)",
                                   "rmsnorm_bwd (512, 576)",
                                   "layernorm_bwd (512, 576)",
                                   "rope_bwd (512, 9, 64)",
                                   "attention_bwd (2x256, 9/3 heads)",
                                   "swiglu_bwd (512x1536)",
                                   "gelu_bwd tanh (512x1536)",
                                   "embed_bwd (512, 576)",
                                   "xent_fwd_bwd (512, V)",
                                   "sumsq (3.5M)",
                                   "scale (3.5M)",
                                   "dropout p=0.1 (512x1536)",
                                   "adamw (3.5M)"};

static double flops(int op) {
    double np = (double)FF * C * 4, attn_pairs = (double)B * NH * T * (T + 1) / 2;
    switch (op) {
    case OP_MM_QKV: return 4.0 * BT * C * C + (double)BT * C;
    case OP_MM_UP: return 4.0 * BT * C * FF + (double)BT * FF;
    case OP_MM_DOWN: return 4.0 * BT * FF * C;
    case OP_RMS: return 10.0 * BT * C;
    case OP_LN: return 14.0 * BT * C;
    case OP_ROPE: return 6.0 * BT * NH * HS / 2;
    case OP_ATTN: return 10.0 * attn_pairs * HS;
    case OP_SWIGLU: return 10.0 * BT * FF;
    case OP_GELU: return 14.0 * BT * FF;
    case OP_EMBED: return (double)BT * C;
    case OP_XENT: return 5.0 * BT * V;
    case OP_SUMSQ: return 2.0 * np;
    case OP_SCALE: return np;
    case OP_DROPOUT: return 2.0 * BT * FF;
    case OP_ADAMW: return 14.0 * np;
    }
    return 0;
}

static void run(Backend *be, Bufs *s, int op) {
    const BackendOps *o = be->ops;
    size_t np = (size_t)FF * C * 4;
    switch (op) {
    case OP_MM_QKV: o->matmul_bwd(be, s->din, s->dw, s->db, s->dout, s->x, s->w, BT, C, C); break;
    case OP_MM_UP: o->matmul_bwd(be, s->din, s->dw, s->db, s->dout, s->x, s->w, BT, C, FF); break;
    case OP_MM_DOWN: o->matmul_bwd(be, s->din, s->dw, NULL, s->dout, s->x, s->w, BT, FF, C); break;
    case OP_RMS: o->rmsnorm_bwd(be, s->din, s->dw, s->dout, s->x, s->w, 1e-5f, BT, C); break;
    case OP_LN:
        o->layernorm_bwd(be, s->din, s->dw, s->db, s->dout, s->x, s->w, 1e-5f, BT, C);
        break;
    case OP_ROPE: o->rope_bwd(be, s->dq, s->pos, s->inv_freq, BT, NH, HS, HS); break;
    case OP_ATTN:
        o->attention_bwd(be, s->dq, s->dk, s->dv, s->ao, s->q, s->k, s->v, B, T, T,
                         (size_t)T * KVH * HS, NH, KVH, HS, 0, NULL);
        break;
    case OP_SWIGLU:
        o->swiglu_bwd(be, s->din, s->dw, s->dout, s->x, s->x, (size_t)BT * FF, 1);
        break;
    case OP_GELU: o->gelu_bwd(be, s->din, s->dout, s->x, (size_t)BT * FF, 1); break;
    case OP_EMBED: o->embed_bwd(be, s->table, s->dout, s->ids, BT, C); break;
    case OP_XENT:
        o->xent_fwd_bwd(be, s->logits, s->losses, s->logits, s->targets, BT, V, 1.0f / BT, 0.0f,
                        XENT_PLAIN);
        break;
    case OP_SUMSQ: (void)o->sumsq(be, s->g, np); break;
    case OP_SCALE: o->scale(be, s->g, np, 1.0f); break;
    case OP_DROPOUT: o->dropout(be, s->din, s->x, (size_t)BT * FF, 0.1f, 7); break;
    case OP_ADAMW:
        o->adamw(be, s->p, s->g, 1.0f, s->m, s->vv, np, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 0.1f,
                 0.001f);
        break;
    }
    o->sync(be);
}

/* Best seconds over reps runs (after one warm-up when reps > 1). */
static double best_time(Backend *be, Bufs *s, int op, int reps) {
    if (reps > 1) run(be, s, op);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        run(be, s, op);
        double t = now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (quick) V = 8192;
    TunaErr err = {0};
    Backend *ref = backend_init("ref", 1, &err);
    Backend *cpu = backend_init("cpu", 0, &err);
    if (!ref || !cpu) {
        fprintf(stderr, "bench_kernels: %s\n", err.msg);
        return 1;
    }
    Bufs sr, sc;
    bufs_init(ref, &sr);
    bufs_init(cpu, &sc);
    printf("backward ops, ref (1 thread) vs cpu (%d threads); B=%d T=%d C=%d NH=%d KVH=%d HS=%d "
           "FF=%d V=%d\n",
           cpu->n_threads, B, T, C, NH, KVH, HS, FF, V);
    printf("%-36s %10s %10s %9s %9s %8s\n", "op", "ref ms", "cpu ms", "ref GF/s", "cpu GF/s",
           "speedup");
    for (int op = 0; op < N_OPS; op++) {
        double tr = best_time(ref, &sr, op, 1);
        double tc = best_time(cpu, &sc, op, quick ? 1 : 5);
        double f = flops(op) * 1e-9;
        printf("%-36s %10.2f %10.2f %9.2f %9.2f %7.1fx\n", names[op], tr * 1e3, tc * 1e3, f / tr,
               f / tc, tr / tc);
        fflush(stdout);
    }
    bufs_free(ref, &sr);
    bufs_free(cpu, &sc);
    backend_free(ref);
    backend_free(cpu);
    return 0;
}
