/* guard_backend.c: the "guard" backend, the cpu kernels behind memory that the host cannot
 * touch between ops, as a GPU's would be. Its buffers live in one reserved arena that is
 * mprotect'ed PROT_NONE except while one of its ops, upload, download or copy runs; a host
 * loop that reads or writes a backend buffer directly (which works on "cpu" and crashes or
 * silently computes garbage on "cuda") faults at once, and the handler names the offset and
 * prints the stack. The numbers are the cpu backend's, bit for bit: tests run a command on
 * both and compare. A checking tool: every op costs two mprotect calls (cheap in huge pages:
 * SmolLM2-135M decodes at half the cpu backend's speed), and freed buffers are reused only
 * whole. */
#include "guard_backend.h"

#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../cpu/cpu_backend.h"

#define PAGE 4096u

typedef struct Block {
    size_t off, size;
    int free;
} Block;

typedef struct Guard {
    Backend *inner;   /* the cpu backend that computes */
    char *map, *base; /* the reservation; its first HUGE boundary */
    size_t map_len;
    size_t cap, used; /* bytes from base; the bump pointer (page multiples) */
    Block *blocks;
    int n_blocks, cap_blocks;
} Guard;

static Guard *the_guard; /* for the fault handler: one guard backend per process at a time */

/* The arena is locked and unlocked in whole huge pages (madvise'd): mprotect then changes one
 * entry per 2 MiB instead of one per 4 KiB page (stories260K's 31 MiB arena: 626 us a call in
 * 4 KiB pages, two calls every op); the pages past `used` up to the boundary hold no buffer. */
#define HUGE ((size_t)2 << 20)
static size_t arena_span(const Guard *g) {
    return (g->used + HUGE - 1) / HUGE * HUGE;
}
static void arena_lock(Guard *g) {
    if (g->used) mprotect(g->base, arena_span(g), PROT_NONE);
}
static void arena_unlock(Guard *g) {
    if (g->used) mprotect(g->base, arena_span(g), PROT_READ | PROT_WRITE);
}

static void on_fault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    Guard *g = the_guard;
    char *a = si->si_addr;
    if (g && a >= g->base && a < g->base + g->cap) {
        char msg[200];
        int n = snprintf(msg, sizeof msg,
                         "tuna: backend \"guard\": the host touched backend memory (offset %zu) "
                         "outside upload/download; the stack:\n",
                         (size_t)(a - g->base));
        if (write(2, msg, (size_t)n) < 0) _exit(70);
        void *frames[32];
        backtrace_symbols_fd(frames, backtrace(frames, 32), 2);
    }
    signal(sig, SIG_DFL); /* the fault repeats and ends the process with the usual status */
}

#define GUARD(be) ((Guard *)(be)->ctx)
/* runs inner->ops->CALL with the arena open */
#define OPEN_CALL(be, CALL)                                                                        \
    do {                                                                                           \
        Guard *g_ = GUARD(be);                                                                     \
        Backend *in_ = g_->inner;                                                                  \
        in_->mm_bf16 = (be)->mm_bf16;                                                              \
        arena_unlock(g_);                                                                          \
        in_->ops->CALL;                                                                            \
        arena_lock(g_);                                                                            \
    } while (0)

static void *g_alloc(Backend *be, size_t bytes) {
    Guard *g = GUARD(be);
    size_t need = (bytes + PAGE - 1) / PAGE * PAGE;
    if (!need) need = PAGE;
    for (int i = 0; i < g->n_blocks; i++) /* a freed block of the same size first */
        if (g->blocks[i].free && g->blocks[i].size == need) {
            g->blocks[i].free = 0;
            return g->base + g->blocks[i].off;
        }
    if (g->used + need > g->cap) return NULL;
    if (g->n_blocks == g->cap_blocks) {
        int nc = g->cap_blocks ? 2 * g->cap_blocks : 256;
        Block *nb = realloc(g->blocks, sizeof *nb * (size_t)nc);
        if (!nb) return NULL;
        g->blocks = nb;
        g->cap_blocks = nc;
    }
    g->blocks[g->n_blocks++] = (Block){g->used, need, 0};
    void *p = g->base + g->used;
    g->used += need; /* the new pages are PROT_NONE already (reserved so) */
    return p;
}

static void g_release(Backend *be, void *p) {
    Guard *g = GUARD(be);
    if (!p) return;
    size_t off = (size_t)((char *)p - g->base);
    for (int i = 0; i < g->n_blocks; i++)
        if (g->blocks[i].off == off) g->blocks[i].free = 1;
}

static void g_upload(Backend *be, void *dst, const void *src, size_t bytes) {
    OPEN_CALL(be, upload(in_, dst, src, bytes));
}
static void g_download(Backend *be, void *dst, const void *src, size_t bytes) {
    OPEN_CALL(be, download(in_, dst, src, bytes));
}
static void g_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    OPEN_CALL(be, copy(in_, dst, src, bytes));
}
static void g_zero(Backend *be, void *dst, size_t bytes) {
    OPEN_CALL(be, zero(in_, dst, bytes));
}
static int g_sync(Backend *be) {
    Guard *g = GUARD(be);
    int rc = g->inner->ops->sync(g->inner);
    be->err = g->inner->err;
    return rc;
}
static void g_shutdown(Backend *be) {
    Guard *g = GUARD(be);
    backend_free(g->inner);
    munmap(g->map, g->map_len);
    free(g->blocks);
    if (the_guard == g) the_guard = NULL;
    free(g);
}

static void g_matmul_fwd(Backend *be, float *out, const float *in, const float *w,
                         const float *bias, int M, int K, int N) {
    OPEN_CALL(be, matmul_fwd(in_, out, in, w, bias, M, K, N));
}
static void g_matmul_acc(Backend *be, float *out, const float *in, const float *w, int M, int K,
                         int N) {
    OPEN_CALL(be, matmul_acc(in_, out, in, w, M, K, N));
}
static void g_rmsnorm_fwd(Backend *be, float *out, const float *in, const float *w, float eps,
                          int R, int C) {
    OPEN_CALL(be, rmsnorm_fwd(in_, out, in, w, eps, R, C));
}
static void g_layernorm_fwd(Backend *be, float *out, const float *in, const float *w,
                            const float *b, float eps, int R, int C) {
    OPEN_CALL(be, layernorm_fwd(in_, out, in, w, b, eps, R, C));
}
static void g_rope_fwd(Backend *be, float *x, const int32_t *pos, const float *inv_freq, int T,
                       int NH, int HS, int rot_dim) {
    OPEN_CALL(be, rope_fwd(in_, x, pos, inv_freq, T, NH, HS, rot_dim));
}
static void g_attention_fwd(Backend *be, float *out, const float *q, const float *k, const float *v,
                            int B, int Tq, int Tk, size_t kv_stride, int NH, int KVH, int HS,
                            int window, const int32_t *kv_lo) {
    OPEN_CALL(be,
              attention_fwd(in_, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window, kv_lo));
}
static void g_kv_store(Backend *be, WType t, void *dst, const float *src, size_t n) {
    OPEN_CALL(be, kv_store(in_, t, dst, src, n));
}
static void g_attention_fwd_kv(Backend *be, WType t, float *out, const float *q, const void *k,
                               const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                               int KVH, int HS, int window, const int32_t *kv_lo) {
    OPEN_CALL(be, attention_fwd_kv(in_, t, out, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS, window,
                                   kv_lo));
}
static void g_swiglu_fwd(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    OPEN_CALL(be, swiglu_fwd(in_, out, gate, up, n));
}
static void g_gelu_fwd(Backend *be, float *out, const float *in, size_t n, int approx) {
    OPEN_CALL(be, gelu_fwd(in_, out, in, n, approx));
}
static void g_add_fwd(Backend *be, float *out, const float *a, const float *b, size_t n) {
    OPEN_CALL(be, add_fwd(in_, out, a, b, n));
}
static void g_embed_fwd(Backend *be, float *out, const int32_t *ids, const float *table, int T,
                        int C) {
    OPEN_CALL(be, embed_fwd(in_, out, ids, table, T, C));
}
static void g_matmul_bwd(Backend *be, float *din, float *dw, float *dbias, const float *dout,
                         const float *in, const float *w, int M, int K, int N) {
    OPEN_CALL(be, matmul_bwd(in_, din, dw, dbias, dout, in, w, M, K, N));
}
static void g_rmsnorm_bwd(Backend *be, float *din, float *dw, const float *dout, const float *in,
                          const float *w, float eps, int R, int C) {
    OPEN_CALL(be, rmsnorm_bwd(in_, din, dw, dout, in, w, eps, R, C));
}
static void g_layernorm_bwd(Backend *be, float *din, float *dw, float *db, const float *dout,
                            const float *in, const float *w, float eps, int R, int C) {
    OPEN_CALL(be, layernorm_bwd(in_, din, dw, db, dout, in, w, eps, R, C));
}
static void g_rope_bwd(Backend *be, float *dx, const int32_t *pos, const float *inv_freq, int T,
                       int NH, int HS, int rot_dim) {
    OPEN_CALL(be, rope_bwd(in_, dx, pos, inv_freq, T, NH, HS, rot_dim));
}
static void g_attention_bwd(Backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, int B, int Tq, int Tk,
                            size_t kv_stride, int NH, int KVH, int HS, int window,
                            const int32_t *kv_lo) {
    OPEN_CALL(be, attention_bwd(in_, dq, dk, dv, dout, q, k, v, B, Tq, Tk, kv_stride, NH, KVH, HS,
                                window, kv_lo));
}
static void g_swiglu_bwd(Backend *be, float *dgate, float *dup, const float *dout,
                         const float *gate, const float *up, size_t n, int acc) {
    OPEN_CALL(be, swiglu_bwd(in_, dgate, dup, dout, gate, up, n, acc));
}
static void g_gelu_bwd(Backend *be, float *din, const float *dout, const float *in, size_t n,
                       int approx) {
    OPEN_CALL(be, gelu_bwd(in_, din, dout, in, n, approx));
}
static void g_embed_bwd(Backend *be, float *dtable, const float *dout, const int32_t *ids, int T,
                        int C) {
    OPEN_CALL(be, embed_bwd(in_, dtable, dout, ids, T, C));
}
static void g_xent_fwd_bwd(Backend *be, float *dlogits, float *losses, const float *logits,
                           const int32_t *targets, int R, int V, float scale, float smooth,
                           XentWeight wt) {
    OPEN_CALL(be, xent_fwd_bwd(in_, dlogits, losses, logits, targets, R, V, scale, smooth, wt));
}
static double g_sumsq(Backend *be, const float *x, size_t n) {
    Guard *g = GUARD(be);
    arena_unlock(g);
    double s = g->inner->ops->sumsq(g->inner, x, n);
    arena_lock(g);
    return s;
}
static void g_scale(Backend *be, float *x, size_t n, float s) {
    OPEN_CALL(be, scale(in_, x, n, s));
}
static void g_col_scale(Backend *be, float *out, const float *in, const float *a, const float *b,
                        int R, int N) {
    OPEN_CALL(be, col_scale(in_, out, in, a, b, R, N));
}
static void g_logit_stats(Backend *be, float *stats, const float *logits, const int32_t *targets,
                          int R, int V) {
    OPEN_CALL(be, logit_stats(in_, stats, logits, targets, R, V));
}
static void g_col_dot(Backend *be, double *acc, const float *x, const float *y, int R, int N) {
    OPEN_CALL(be, col_dot(in_, acc, x, y, R, N));
}
static void g_dropout(Backend *be, float *out, const float *in, size_t n, float p, uint64_t seed) {
    OPEN_CALL(be, dropout(in_, out, in, n, p, seed));
}
static void g_noise_add(Backend *be, float *x, size_t n, float mag, uint64_t seed) {
    OPEN_CALL(be, noise_add(in_, x, n, mag, seed));
}
static void g_adamw(Backend *be, float *p, const float *g, float gscale, float *m, float *v,
                    size_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                    float bc2) {
    OPEN_CALL(be, adamw(in_, p, g, gscale, m, v, n, lr, b1, b2, eps, wd, bc1, bc2));
}
static void g_matmul_w_fwd(Backend *be, float *out, const float *in, const Weight *w,
                           const float *bias, int M) {
    OPEN_CALL(be, matmul_w_fwd(in_, out, in, w, bias, M));
}
static void g_matmul_w_bwd_in(Backend *be, float *din, const float *dout, const Weight *w, int M,
                              int acc) {
    OPEN_CALL(be, matmul_w_bwd_in(in_, din, dout, w, M, acc));
}
static void g_embed_w_fwd(Backend *be, float *out, const int32_t *ids, const Weight *table, int T) {
    OPEN_CALL(be, embed_w_fwd(in_, out, ids, table, T));
}
static void g_set_threads(Backend *be, int n_threads) {
    Guard *g = GUARD(be);
    backend_set_threads(g->inner, n_threads);
    be->n_threads = g->inner->n_threads;
}

static const BackendOps guard_ops = {
        .name = "guard",
        .host_memory = 0,
        .alloc = g_alloc,
        .release = g_release,
        .upload = g_upload,
        .download = g_download,
        .copy = g_copy,
        .zero = g_zero,
        .sync = g_sync,
        .shutdown = g_shutdown,
        .matmul_fwd = g_matmul_fwd,
        .matmul_acc = g_matmul_acc,
        .rmsnorm_fwd = g_rmsnorm_fwd,
        .layernorm_fwd = g_layernorm_fwd,
        .rope_fwd = g_rope_fwd,
        .attention_fwd = g_attention_fwd,
        .swiglu_fwd = g_swiglu_fwd,
        .gelu_fwd = g_gelu_fwd,
        .add_fwd = g_add_fwd,
        .embed_fwd = g_embed_fwd,
        .matmul_bwd = g_matmul_bwd,
        .rmsnorm_bwd = g_rmsnorm_bwd,
        .layernorm_bwd = g_layernorm_bwd,
        .rope_bwd = g_rope_bwd,
        .attention_bwd = g_attention_bwd,
        .swiglu_bwd = g_swiglu_bwd,
        .gelu_bwd = g_gelu_bwd,
        .embed_bwd = g_embed_bwd,
        .xent_fwd_bwd = g_xent_fwd_bwd,
        .logit_stats = g_logit_stats,
        .sumsq = g_sumsq,
        .scale = g_scale,
        .col_scale = g_col_scale,
        .col_dot = g_col_dot,
        .dropout = g_dropout,
        .noise_add = g_noise_add,
        .adamw = g_adamw,
        .matmul_w_fwd = g_matmul_w_fwd,
        .embed_w_fwd = g_embed_w_fwd,
        .matmul_w_bwd_in = g_matmul_w_bwd_in,
        .kv_store = g_kv_store,
        .attention_fwd_kv = g_attention_fwd_kv,
        .set_threads = g_set_threads,
};

Backend *guard_backend_init(int n_threads, TunaErr *err) {
    if (the_guard) {
        tuna_errf(err, TUNA_EUNSUP, "backend \"guard\": one at a time per process");
        return NULL;
    }
    Guard *g = calloc(1, sizeof *g);
    Backend *be = calloc(1, sizeof *be);
    if (!g || !be) goto fail;
    if (!(g->inner = cpu_backend_init(n_threads, err))) goto fail;
    cpu_backend_set_pack_mb(g->inner, 0); /* no copies outside the arena */
    /* address space only (PROT_NONE, no reserve): pages exist once an op writes them */
    for (g->map_len = (size_t)1 << 36; g->map_len >= ((size_t)1 << 28); g->map_len /= 2) {
        g->map = mmap(NULL, g->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                      0);
        if (g->map != MAP_FAILED) break;
    }
    if (g->map == MAP_FAILED) {
        g->map = NULL;
        tuna_errf(err, TUNA_ENOMEM, "backend \"guard\": cannot reserve its address space");
        goto fail;
    }
    g->base = (char *)(((uintptr_t)g->map + HUGE - 1) / HUGE * HUGE);
    g->cap = (g->map_len - (size_t)(g->base - g->map)) / HUGE * HUGE;
    madvise(g->base, g->cap, MADV_HUGEPAGE); /* a hint: without it only slower */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    the_guard = g;
    be->ops = &guard_ops;
    be->ctx = g;
    be->n_threads = g->inner->n_threads;
    return be;
fail:
    if (g && g->inner) backend_free(g->inner);
    if (g && g->map) munmap(g->map, g->map_len);
    free(g);
    free(be);
    return NULL;
}
