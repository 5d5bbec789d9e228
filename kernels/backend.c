/* backend.c: the backend registry, the one global table of the program. Order: cuda (when
 * compiled in), cpu, ref. */
#include "backend.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_backend.h"
#include "guard/guard_backend.h"
#include "ref/ops_ref.h"

typedef Backend *(*BackendInit)(int n_threads, TunaErr *err);

#ifdef TUNA_HAVE_CUDA
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

#include "cuda/cuda_backend.h"

/* The CUDA backend lives in libtuna_cuda.so (built beside ./tuna), opened on first use so
 * that cuBLAS is loaded only by the runs that ask for "cuda". Looked for in $TUNA_CUDA_LIB,
 * next to the executable, in build/ next to it, and where this build put it. */
static Backend *cuda_backend_open(int n_threads, TunaErr *err) {
    static BackendInit init;
    if (!init) {
        char exe[4096], cand[4][4200], tried[1024] = "";
        int n = 0;
        const char *env = getenv("TUNA_CUDA_LIB");
        if (env && *env) snprintf(cand[n++], sizeof cand[0], "%s", env);
        ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (k > 0) {
            exe[k] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) *slash = '\0';
            snprintf(cand[n++], sizeof cand[0], "%s/libtuna_cuda.so", exe);
            snprintf(cand[n++], sizeof cand[0], "%s/build/libtuna_cuda.so", exe);
        }
        snprintf(cand[n++], sizeof cand[0], "%s", TUNA_CUDA_LIB);
        const char *why = "not found";
        for (int i = 0; i < n && !init; i++) {
            if (access(cand[i], R_OK)) continue;
            void *h = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                why = dlerror();
                snprintf(tried, sizeof tried, "%.1000s", cand[i]);
                continue;
            }
            init = (BackendInit)(uintptr_t)dlsym(h, "cuda_backend_init");
            if (!init) why = "no cuda_backend_init in it";
        }
        if (!init) {
            tuna_errf(err, TUNA_EUNSUP,
                      "backend \"cuda\": cannot load libtuna_cuda.so (%s%s%s; set "
                      "TUNA_CUDA_LIB to its path)",
                      tried[0] ? tried : "", tried[0] ? ": " : "", why);
            return NULL;
        }
    }
    return init(n_threads, err);
}
#endif

static const struct {
    const char *name;
    BackendInit init;
} registry[] = {
#ifdef TUNA_HAVE_CUDA
        {"cuda", cuda_backend_open},
#endif
        {"cpu", cpu_backend_init},
        {"ref", ref_backend_init},
        {"guard", guard_backend_init}, /* a checking tool: not in backend_list */
};

Backend *backend_init(const char *name, int n_threads, TunaErr *err) {
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++) {
        if (strcmp(registry[i].name, name)) continue;
        Backend *be = registry[i].init(n_threads, err);
        if (!be && err && !err->msg[0])
            tuna_errf(err, TUNA_EUNSUP, "backend \"%s\" could not start", name);
        return be;
    }
    tuna_errf(err, TUNA_EINVAL, "unknown backend \"%s\" (available: %s)", name, backend_list());
    return NULL;
}

void backend_set_threads(Backend *be, int n_threads) {
    if (be && be->ops->set_threads) be->ops->set_threads(be, n_threads);
}

void backend_matmul_acc(Backend *be, float *out, const float *in, const float *w, int M, int K,
                        int N, float *scratch) {
    if (be->ops->matmul_acc) {
        be->ops->matmul_acc(be, out, in, w, M, K, N);
        return;
    }
    be->ops->matmul_fwd(be, scratch, in, w, NULL, M, K, N);
    be->ops->add_fwd(be, out, out, scratch, (size_t)M * N);
}

void backend_matmul_w_fwd_n(Backend *be, int n, float *const *outs, const float *in,
                            const Weight *const *ws, const float *const *biases, int M) {
    if (be->ops->matmul_w_fwd_n) {
        be->ops->matmul_w_fwd_n(be, n, outs, in, ws, biases, M);
        return;
    }
    for (int i = 0; i < n; i++)
        be->ops->matmul_w_fwd(be, outs[i], in, ws[i], biases ? biases[i] : NULL, M);
}

int kv_type_ok(WType t, int HS) {
    if (t == WT_F32) return 1;
    if (t != WT_F16 && t != WT_Q8_0) return 0;
    return HS > 0 && HS % wtype_info[t].block == 0;
}

const char *kv_type_name(WType t) {
    return t == WT_F32 ? "f32" : t == WT_F16 ? "f16" : t == WT_Q8_0 ? "q8_0" : "?";
}

int kv_type_by_name(const char *name) {
    static const WType types[] = {WT_F32, WT_F16, WT_Q8_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (name && !strcmp(name, kv_type_name(types[i]))) return (int)types[i];
    return -1;
}

void backend_attention_kv_widened(Backend *be, WType t, float *out, const float *q, const void *k,
                                  const void *v, int B, int Tq, int Tk, size_t kv_stride, int NH,
                                  int KVH, int HS, int window, const int32_t *kv_lo,
                                  void (*widen)(float *dst, const void *src, size_t n, WType t)) {
    size_t row = (size_t)Tk * KVH * HS, n = (size_t)B * row;
    float *kf = malloc(sizeof(float) * (n ? 2 * n : 1)), *vf = kf + n;
    if (!kf) {
        tuna_errf(&be->err, TUNA_ENOMEM, "attention: out of memory for %d x %d keys in fp32", B,
                  Tk);
        return;
    }
    for (int b = 0; b < B && row; b++) {
        size_t at = wtype_row_bytes(t, (int64_t)((size_t)b * kv_stride));
        if (widen) {
            widen(kf + (size_t)b * row, (const char *)k + at, row, t);
            widen(vf + (size_t)b * row, (const char *)v + at, row, t);
            continue;
        }
        wtype_info[t].dequant_row((const char *)k + at, kf + (size_t)b * row, (int64_t)row, NULL);
        wtype_info[t].dequant_row((const char *)v + at, vf + (size_t)b * row, (int64_t)row, NULL);
    }
    be->ops->attention_fwd(be, out, q, kf, vf, B, Tq, Tk, row, NH, KVH, HS, window, kv_lo);
    free(kf);
}

void backend_kv_range(Backend *be, WType t, const float *src, size_t n) {
    float lim = t == WT_Q8_0 ? 65520.0f * 127.0f : 65520.0f;
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(src[i]) < lim) && src[i] == src[i]) {
            if (!be->err.code)
                tuna_errf(&be->err, TUNA_EINVAL,
                          "--cache-type %s: a key or value of %g is past its range; use "
                          "--cache-type f32",
                          t == WT_Q8_0 ? "q8_0" : "f16", (double)src[i]);
            return;
        }
}

size_t backend_bf16_extra_bytes(const char *name, size_t bf16_bytes) {
    return name && !strcmp(name, "cpu") ? cpu_pack_bytes(bf16_bytes) : 0;
}

void backend_free(Backend *be) {
    if (!be) return;
    if (be->ops->shutdown) be->ops->shutdown(be);
    free(be);
}

const char *backend_list(void) {
#ifdef TUNA_HAVE_CUDA
    return "cuda, cpu, ref";
#else
    return "cpu, ref";
#endif
}

/* Every slot a command may call, and which commands need it. */
#define SLOT(f, need)                                                                              \
    { #f, offsetof(BackendOps, f), need }
static const struct {
    const char *name;
    size_t off;
    unsigned need;
} slots[] = {
        SLOT(alloc, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(release, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(upload, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(download, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(copy, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(zero, BACKEND_NEED_TRAIN),
        SLOT(sync, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(matmul_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(rmsnorm_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(layernorm_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(rope_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(attention_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(swiglu_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(gelu_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(add_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(embed_fwd, BACKEND_NEED_INFER | BACKEND_NEED_TRAIN),
        SLOT(scale, BACKEND_NEED_TRAIN), /* and inference with an unmerged LoRA (model_set_lora) */
        SLOT(matmul_bwd, BACKEND_NEED_TRAIN),
        SLOT(rmsnorm_bwd, BACKEND_NEED_TRAIN),
        SLOT(layernorm_bwd, BACKEND_NEED_TRAIN),
        SLOT(rope_bwd, BACKEND_NEED_TRAIN),
        SLOT(attention_bwd, BACKEND_NEED_TRAIN),
        SLOT(swiglu_bwd, BACKEND_NEED_TRAIN),
        SLOT(gelu_bwd, BACKEND_NEED_TRAIN),
        SLOT(embed_bwd, BACKEND_NEED_TRAIN),
        SLOT(xent_fwd_bwd, BACKEND_NEED_TRAIN),
        SLOT(sumsq, BACKEND_NEED_TRAIN),
        SLOT(dropout, BACKEND_NEED_TRAIN),
        SLOT(noise_add, BACKEND_NEED_TRAIN),
        SLOT(col_scale, BACKEND_NEED_TRAIN),
        SLOT(col_dot, BACKEND_NEED_TRAIN),
        SLOT(adamw, BACKEND_NEED_TRAIN),
        SLOT(matmul_w_fwd, BACKEND_NEED_WTYPES),
        SLOT(matmul_w_bwd_in, BACKEND_NEED_WTYPES),
        SLOT(embed_w_fwd, BACKEND_NEED_WTYPES),
        SLOT(kv_store, BACKEND_NEED_KV_TYPED),
        SLOT(attention_fwd_kv, BACKEND_NEED_KV_TYPED),
};
#undef SLOT

const char *backend_missing(const BackendOps *ops, unsigned need) {
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)ops + slots[i].off, sizeof fn);
        if ((slots[i].need & need) && !fn) return slots[i].name;
    }
    return NULL;
}
