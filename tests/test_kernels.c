/* test_kernels.c: every forward op of every available backend against kernels/ref, at several
 * shapes including ones that are not multiples of any tile or vector width. Tolerance:
 * |x - ref| <= atol + rtol * |ref| (fp32 with different summation orders). */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "harness.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/ref/ops_ref.h"

static uint64_t rng = 88172645463325252ULL;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}
static float *rand_buf(size_t n, float scale) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

/* Copies host data into backend memory and back, so device backends are tested the same way. */
static float *up(Backend *be, const float *h, size_t n) {
    float *d = be->ops->alloc(be, n * sizeof(float));
    be->ops->upload(be, d, h, n * sizeof(float));
    return d;
}
static void down(Backend *be, float *h, const float *d, size_t n) {
    be->ops->download(be, h, d, n * sizeof(float));
    be->ops->sync(be);
}

/* attention_fwd_kv over k and v stored in t (quant_row): ref_attention_fwd over the dequantized
 * rows (the tolerance of attention_fwd), and the bits of the backend's own attention_fwd over
 * them */
static void attention_kv_case(Backend *be, WType t, const float *q, const float *k, const float *v,
                              const int *sh, size_t stride, const int32_t *kv_lo,
                              const char *what) {
    int B = sh[0], Tq = sh[1], Tk = sh[2], NH = sh[3], KVH = sh[4], HS = sh[5], win = sh[6];
    size_t nq = (size_t)B * Tq * NH * HS, nkv = (size_t)B * stride;
    size_t bytes = wtype_row_bytes(t, (int64_t)nkv);
    void *kt = malloc(bytes), *vt = malloc(bytes);
    float *kw = malloc(sizeof(float) * nkv), *vw = malloc(sizeof(float) * nkv);
    wtype_info[t].quant_row(k, kt, (int64_t)nkv, NULL);
    wtype_info[t].quant_row(v, vt, (int64_t)nkv, NULL);
    wtype_info[t].dequant_row(kt, kw, (int64_t)nkv, NULL);
    wtype_info[t].dequant_row(vt, vw, (int64_t)nkv, NULL);
    float *ref = malloc(sizeof(float) * nq), *out = malloc(sizeof(float) * nq),
          *wide = malloc(sizeof(float) * nq);
    ref_attention_fwd(ref, q, kw, vw, B, Tq, Tk, stride, NH, KVH, HS, win, kv_lo);
    float *dq = up(be, q, nq), *dkw = up(be, kw, nkv), *dvw = up(be, vw, nkv);
    void *dk = be->ops->alloc(be, bytes), *dv = be->ops->alloc(be, bytes);
    be->ops->upload(be, dk, kt, bytes);
    be->ops->upload(be, dv, vt, bytes);
    float *dout = be->ops->alloc(be, sizeof(float) * nq);
    be->ops->attention_fwd_kv(be, t, dout, dq, dk, dv, B, Tq, Tk, stride, NH, KVH, HS, win, kv_lo);
    down(be, out, dout, nq);
    be->ops->attention_fwd(be, dout, dq, dkw, dvw, B, Tq, Tk, stride, NH, KVH, HS, win, kv_lo);
    down(be, wide, dout, nq);
    double worst;
    CHECK(test_close_enough(out, ref, nq, 1e-5f, 1e-4f, &worst),
          "%s attention %s cache B=%d Tq=%d Tk=%d NH=%d KVH=%d HS=%d win=%d%s: %g", be->ops->name,
          wtype_info[t].name, B, Tq, Tk, NH, KVH, HS, win, what, worst);
    CHECK(!memcmp(out, wide, sizeof(float) * nq),
          "%s attention %s cache B=%d Tq=%d Tk=%d HS=%d%s: not the bits of attention_fwd over "
          "the dequantized rows",
          be->ops->name, wtype_info[t].name, B, Tq, Tk, HS, what);
    be->ops->release(be, dq);
    be->ops->release(be, dkw);
    be->ops->release(be, dvw);
    be->ops->release(be, dk);
    be->ops->release(be, dv);
    be->ops->release(be, dout);
    free(kt);
    free(vt);
    free(kw);
    free(vw);
    free(ref);
    free(out);
    free(wide);
}

/* kv_store in F16: wtype_f32_to_f16's bits on normal values, f16 subnormals, exact ties, the
 * largest finite values, zeros and infinities' neighbours (odd lengths: vector tails); a value
 * past the range sets be->err naming --cache-type, and the rest is still stored */
static void kv_store_f16_case(Backend *be) {
    size_t n = 1000 + 7;
    float *x = rand_buf(n, 3);
    for (size_t i = 0; i < 200; i++) {
        uint16_t h = (uint16_t)((i * 2654435761u) & 0x7BFFu); /* a finite f16 */
        float a = wtype_f16_to_f32(h), b = wtype_f16_to_f32((uint16_t)(h + 1));
        x[i] = i % 4 == 0 ? (a + b) / 2 : i % 4 == 1 ? a : i % 4 == 2 ? -(a + b) / 2 : a * 1e-4f;
    }
    x[200] = 65504.0f;
    x[201] = -65519.0f; /* rounds to 65504 */
    x[202] = 0.0f;
    x[203] = -0.0f;
    x[204] = 5.9604645e-8f; /* the smallest subnormal */
    x[205] = 2.9802322e-8f; /* half of it: to even, zero */
    x[206] = 2.9802326e-8f; /* just above: the smallest */
    uint16_t *got = malloc(sizeof(uint16_t) * n), *want = malloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++)
        want[i] = wtype_f32_to_f16(x[i]);
    for (int over = 0; over < 2; over++) {
        for (size_t len = n - 9; len <= n; len += 9) { /* 998 and 1007: tails of 6 and 15 */
            float *dx = up(be, x, len);
            uint16_t *dh = be->ops->alloc(be, sizeof(uint16_t) * len);
            be->ops->kv_store(be, WT_F16, dh, dx, len);
            be->ops->download(be, got, dh, sizeof(uint16_t) * len);
            int rc = be->ops->sync(be);
            size_t bad = 0;
            for (size_t i = 0; i < len; i++)
                bad += got[i] != want[i];
            CHECK(bad == 0, "%s kv_store_f16 (%zu values%s): %zu differ from wtype_f32_to_f16",
                  be->ops->name, len, over ? ", one past the range" : "", bad);
            if (over)
                CHECK(rc && strstr(be->err.msg, "--cache-type f16") &&
                              strstr(be->err.msg, "-1e+09"),
                      "%s kv_store_f16 of -1e9 and 70000: rc %d \"%s\"", be->ops->name, rc,
                      be->err.msg);
            else
                CHECK(rc == 0, "%s kv_store_f16 within range: rc %d \"%s\"", be->ops->name, rc,
                      be->err.msg);
            be->err = (TunaErr){0};
            be->ops->release(be, dx);
            be->ops->release(be, dh);
        }
        x[n - 3] = 70000.0f; /* past the range (and inside both lengths' vectors or tails) */
        x[500] = -1e9f;
        want[n - 3] = wtype_f32_to_f16(x[n - 3]);
        want[500] = wtype_f32_to_f16(x[500]);
    }
    free(x);
    free(got);
    free(want);
}

/* kv_store in Q8_0: quant_row's bits (blocks of mixed sizes, a zero block, exact halves of a
 * step); a value past its scale's range (65504 x 127) sets be->err */
static void kv_store_q8_case(Backend *be) {
    size_t n = 32 * 40;
    float *x = rand_buf(n, 3);
    for (size_t i = 0; i < 32; i++)
        x[32 + i] = 0.0f; /* a zero block: scale 0 */
    for (size_t i = 0; i < 32; i++)
        x[64 + i] = (float)((int)i - 16) * 0.5f; /* q = x / (amax / 127): halves of a step */
    for (size_t i = 0; i < 32; i++)
        x[96 + i] *= 1e4f;
    size_t bytes = wtype_row_bytes(WT_Q8_0, (int64_t)n);
    uint8_t *got = malloc(bytes), *want = malloc(bytes);
    for (int over = 0; over < 2; over++) {
        if (over) x[n - 5] = 1e10f;
        wtype_info[WT_Q8_0].quant_row(x, want, (int64_t)n, NULL);
        float *dx = up(be, x, n);
        void *dq = be->ops->alloc(be, bytes);
        be->ops->kv_store(be, WT_Q8_0, dq, dx, n);
        be->ops->download(be, got, dq, bytes);
        int rc = be->ops->sync(be);
        CHECK(!memcmp(got, want, bytes), "%s kv_store Q8_0 (%zu values%s): not quant_row's bytes",
              be->ops->name, n, over ? ", one past the range" : "");
        if (over)
            CHECK(rc && strstr(be->err.msg, "--cache-type q8_0") && strstr(be->err.msg, "1e+10"),
                  "%s kv_store Q8_0 of 1e10: rc %d \"%s\"", be->ops->name, rc, be->err.msg);
        else
            CHECK(rc == 0, "%s kv_store Q8_0 within range: rc %d \"%s\"", be->ops->name, rc,
                  be->err.msg);
        be->err = (TunaErr){0};
        be->ops->release(be, dx);
        be->ops->release(be, dq);
    }
    free(x);
    free(got);
    free(want);
}

static void test_backend(Backend *be) {
    const char *nm = be->ops->name;
    double worst;
    // matmul: M=1 (decode path) and M>1 (sgemm path), bias and no bias
    int shapes[][3] = {{1, 64, 172}, {1, 288, 32000}, {1, 7, 5},
                       {3, 17, 29},  {12, 64, 256},   {33, 100, 77}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        for (int wb = 0; wb < 2; wb++) {
            float *in = rand_buf((size_t)M * K, 1), *w = rand_buf((size_t)N * K, 0.5f);
            float *b = wb ? rand_buf((size_t)N, 1) : NULL;
            float *ref = malloc(sizeof(float) * (size_t)M * N),
                  *out = malloc(sizeof(float) * (size_t)M * N);
            ref_matmul_fwd(ref, in, w, b, M, K, N);
            float *din = up(be, in, (size_t)M * K), *dw = up(be, w, (size_t)N * K);
            float *db = b ? up(be, b, (size_t)N) : NULL;
            float *dout = be->ops->alloc(be, sizeof(float) * (size_t)M * N);
            be->ops->matmul_fwd(be, dout, din, dw, db, M, K, N);
            down(be, out, dout, (size_t)M * N);
            CHECK(test_close_enough(out, ref, (size_t)M * N, 1e-4f, 1e-4f, &worst),
                  "%s matmul M=%d K=%d N=%d bias=%d: max err %g", nm, M, K, N, wb, worst);
            be->ops->release(be, din);
            be->ops->release(be, dw);
            be->ops->release(be, db);
            be->ops->release(be, dout);
            free(in);
            free(w);
            free(b);
            free(ref);
            free(out);
        }
    }
    // matmul_acc (optional): out += in · wᵀ, as matmul_fwd into scratch and add_fwd; a rank-8
    // side as LoRA's u · Bᵀ, and a product under mm_bf16 too
    int acc_shapes[][4] = {{3, 17, 29, 0}, {512, 8, 300, 0}, {130, 16, 1536, 0}, {70, 100, 77, 1}};
    for (size_t s = 0; be->ops->matmul_acc && s < sizeof acc_shapes / sizeof acc_shapes[0]; s++) {
        int M = acc_shapes[s][0], K = acc_shapes[s][1], N = acc_shapes[s][2];
        size_t no = (size_t)M * N;
        float *in = rand_buf((size_t)M * K, 1), *w = rand_buf((size_t)N * K, 0.5f);
        float *o0 = rand_buf(no, 1), *ref = malloc(sizeof(float) * no),
              *out = malloc(sizeof(float) * no);
        be->mm_bf16 = acc_shapes[s][3];
        if (be->mm_bf16) { /* the ref's bf16 rule: operands rounded, fp32 sums */
            Backend *r = backend_init("ref", 1, &(TunaErr){0});
            memcpy(ref, o0, sizeof(float) * no);
            r->mm_bf16 = 1;
            r->ops->matmul_acc(r, ref, in, w, M, K, N);
            backend_free(r);
        } else {
            ref_matmul_fwd(ref, in, w, NULL, M, K, N);
            for (size_t i = 0; i < no; i++)
                ref[i] += o0[i];
        }
        float *din = up(be, in, (size_t)M * K), *dw = up(be, w, (size_t)N * K),
              *dout = up(be, o0, no);
        be->ops->matmul_acc(be, dout, din, dw, M, K, N);
        down(be, out, dout, no);
        be->mm_bf16 = 0;
        CHECK(test_close_enough(out, ref, no, 1e-4f, 1e-4f, &worst),
              "%s matmul_acc M=%d K=%d N=%d bf16=%d: max err %g", nm, M, K, N, acc_shapes[s][3],
              worst);
        be->ops->release(be, din);
        be->ops->release(be, dw);
        be->ops->release(be, dout);
        free(in), free(w), free(o0), free(ref), free(out);
    }
    // zero (every backend that trains has it): the bytes [off, off + n) of a buffer set to 0,
    // those around it kept; a small range and one above the parallel threshold, odd sizes
    size_t zr[][2] = {{3, 41}, {5, (size_t)3 << 20 | 7}};
    CHECK(be->ops->zero != NULL, "%s has no zero op", nm);
    for (size_t s = 0; be->ops->zero && s < sizeof zr / sizeof zr[0]; s++) {
        size_t off = zr[s][0], n = zr[s][1], all = (off + n + 9 + 3) / 4 * 4;
        unsigned char *h = malloc(all), *got = malloc(all);
        for (size_t i = 0; i < all; i++)
            h[i] = (unsigned char)(1 + i % 251);
        char *d = be->ops->alloc(be, all);
        be->ops->upload(be, d, h, all);
        be->ops->zero(be, d + off, n);
        be->ops->download(be, got, d, all);
        be->ops->sync(be);
        size_t bad = 0;
        for (size_t i = 0; i < all; i++)
            bad += got[i] != (i >= off && i < off + n ? 0 : h[i]);
        CHECK(bad == 0, "%s zero of %zu bytes at %zu: %zu bytes wrong", nm, n, off, bad);
        be->ops->release(be, d);
        free(h), free(got);
    }
    // norms (the last two are above the parallel threshold, rows not a multiple of 2)
    int nshapes[][2] = {{1, 64}, {5, 288}, {7, 13}, {3, 576}, {131, 288}, {61, 577}};
    for (size_t s = 0; s < sizeof nshapes / sizeof nshapes[0]; s++) {
        int R = nshapes[s][0], C = nshapes[s][1];
        size_t n = (size_t)R * C;
        float *in = rand_buf(n, 2), *w = rand_buf((size_t)C, 1), *b = rand_buf((size_t)C, 1);
        float *ref = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n);
        float *din = up(be, in, n), *dw = up(be, w, (size_t)C), *db = up(be, b, (size_t)C);
        float *dout = be->ops->alloc(be, sizeof(float) * n);
        ref_rmsnorm_fwd(ref, in, w, 1e-5f, R, C);
        be->ops->rmsnorm_fwd(be, dout, din, dw, 1e-5f, R, C);
        down(be, out, dout, n);
        CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s rmsnorm R=%d C=%d: %g", nm,
              R, C, worst);
        ref_layernorm_fwd(ref, in, w, b, 1e-5f, R, C);
        be->ops->layernorm_fwd(be, dout, din, dw, db, 1e-5f, R, C);
        down(be, out, dout, n);
        CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s layernorm R=%d C=%d: %g",
              nm, R, C, worst);
        // in place
        be->ops->rmsnorm_fwd(be, din, din, dw, 1e-5f, R, C);
        down(be, out, din, n);
        ref_rmsnorm_fwd(ref, in, w, 1e-5f, R, C);
        CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s rmsnorm in place: %g", nm,
              worst);
        be->ops->release(be, din);
        be->ops->release(be, dw);
        be->ops->release(be, db);
        be->ops->release(be, dout);
        free(in);
        free(w);
        free(b);
        free(ref);
        free(out);
    }
    // rope: a few tokens, and enough for the parallel path (an odd count)
    for (int T = 9; T <= 701; T += 692) {
        int NH = 3, HS = 16;
        size_t n = (size_t)T * NH * HS;
        float *x = rand_buf(n, 1), *ref = malloc(sizeof(float) * n),
              *out = malloc(sizeof(float) * n);
        float f[8];
        for (int i = 0; i < 8; i++)
            f[i] = 1.0f / powf(10000.0f, (float)(2 * i) / 16.0f);
        int32_t pos[701];
        for (int t = 0; t < T; t++)
            pos[t] = 100 + 3 * t;
        memcpy(ref, x, sizeof(float) * n);
        ref_rope_fwd(ref, pos, f, T, NH, HS, HS);
        float *dx = up(be, x, n), *df = up(be, f, 8);
        be->ops->rope_fwd(be, dx, pos, df, T, NH, HS, HS);
        down(be, out, dx, n);
        CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s rope: %g", nm, worst);
        be->ops->release(be, dx);
        be->ops->release(be, df);
        free(x);
        free(ref);
        free(out);
    }
    // attention: prefill (Tq == Tk), decode with a larger cache (Tq = 1), GQA, window, B > 1
    int ashapes[][7] = {/* B, Tq, Tk, NH, KVH, HS, window */
                        {1, 5, 5, 4, 2, 8, 0},
                        {1, 1, 37, 8, 4, 8, 0},
                        {2, 7, 7, 6, 6, 16, 0},
                        {1, 4, 20, 4, 1, 12, 0},
                        {1, 9, 9, 2, 2, 8, 3},
                        {2, 3, 11, 9, 3, 64, 0},
                        /* decoding: SmolLM2's heads (3 kv heads: in parts on 2 threads), a
                         * head of 128 (tiles of 2 heads), scores past the stack (3000 keys) */
                        {1, 1, 300, 9, 3, 64, 0},
                        {1, 1, 200, 4, 1, 128, 0},
                        {1, 2, 3000, 6, 2, 64, 0},
                        /* the sgemm path (Tq >= 32): prefill, a prefix (Tk > Tq), GQA, window */
                        {2, 40, 40, 6, 2, 16, 0},
                        {1, 33, 50, 4, 4, 24, 0},
                        {2, 64, 64, 9, 3, 64, 17}};
    /* each shape three times: plain, with neat-packing spans (kv_lo: examples of 3.. keys; the
     * sgemm path computes such rows example by example), and with a kv_lo of no example shape
     * (query at position p sees keys p/2..p: the sgemm path masks the whole square) */
    size_t n_ash = sizeof ashapes / sizeof ashapes[0];
    for (size_t s = 0; s < 3 * n_ash; s++) {
        const int *sh = ashapes[s % n_ash];
        int B = sh[0], Tq = sh[1], Tk = sh[2], NH = sh[3], KVH = sh[4], HS = sh[5], win = sh[6];
        int32_t *kv_lo = NULL;
        if (s >= n_ash) {
            kv_lo = malloc(sizeof(int32_t) * (size_t)B * Tq);
            for (int b = 0; b < B; b++)
                for (int t = 0; t < Tq; t++) {
                    int p = Tk - Tq + t, len = 3 + 2 * b + (int)(s % 3);
                    kv_lo[(size_t)b * Tq + t] = s >= 2 * n_ash ? p / 2 : p - p % len;
                }
        }
        size_t stride = (size_t)(Tk + 3) * KVH * HS; /* a cache longer than Tk */
        size_t nq = (size_t)B * Tq * NH * HS, nkv = (size_t)B * stride;
        float *q = rand_buf(nq, 1), *k = rand_buf(nkv, 1), *v = rand_buf(nkv, 1);
        float *ref = malloc(sizeof(float) * nq), *out = malloc(sizeof(float) * nq);
        ref_attention_fwd(ref, q, k, v, B, Tq, Tk, stride, NH, KVH, HS, win, kv_lo);
        float *dq = up(be, q, nq), *dk = up(be, k, nkv), *dv = up(be, v, nkv);
        float *dout = be->ops->alloc(be, sizeof(float) * nq);
        be->ops->attention_fwd(be, dout, dq, dk, dv, B, Tq, Tk, stride, NH, KVH, HS, win, kv_lo);
        down(be, out, dout, nq);
        CHECK(test_close_enough(out, ref, nq, 1e-5f, 1e-4f, &worst),
              "%s attention B=%d Tq=%d Tk=%d NH=%d KVH=%d HS=%d win=%d%s: %g", nm, B, Tq, Tk, NH,
              KVH, HS, win,
              s >= 2 * n_ash ? " half"
              : kv_lo        ? " spans"
                             : "",
              worst);
        if (be->ops->attention_fwd_kv) {
            const char *what = s >= 2 * n_ash ? " half" : kv_lo ? " spans" : "";
            attention_kv_case(be, WT_F16, q, k, v, sh, stride, kv_lo, what);
            if (HS % 32 == 0) attention_kv_case(be, WT_Q8_0, q, k, v, sh, stride, kv_lo, what);
        }
        free(kv_lo);
        be->ops->release(be, dq);
        be->ops->release(be, dk);
        be->ops->release(be, dv);
        be->ops->release(be, dout);
        free(q);
        free(k);
        free(v);
        free(ref);
        free(out);
    }
    if (be->ops->kv_store) {
        kv_store_f16_case(be);
        kv_store_q8_case(be);
    }
    // elementwise and embedding
    {
        size_t n = 40000 + 3; /* above the parallel threshold, not a vector multiple */
        float *a = rand_buf(n, 4), *b = rand_buf(n, 4), *ref = malloc(sizeof(float) * n),
              *out = malloc(sizeof(float) * n);
        float *da = up(be, a, n), *db = up(be, b, n), *dout = be->ops->alloc(be, sizeof(float) * n);
        ref_swiglu_fwd(ref, a, b, n);
        be->ops->swiglu_fwd(be, dout, da, db, n);
        down(be, out, dout, n);
        CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s swiglu: %g", nm, worst);
        for (int approx = 0; approx < 2; approx++) {
            ref_gelu_fwd(ref, a, n, approx);
            be->ops->gelu_fwd(be, dout, da, n, approx);
            down(be, out, dout, n);
            CHECK(test_close_enough(out, ref, n, 1e-5f, 1e-5f, &worst), "%s gelu approx=%d: %g", nm,
                  approx, worst);
        }
        ref_add_fwd(ref, a, b, n);
        be->ops->add_fwd(be, dout, da, db, n);
        down(be, out, dout, n);
        CHECK(test_close_enough(out, ref, n, 0, 0, &worst), "%s add: %g", nm, worst);
        int32_t ids[5] = {3, 0, 99, 3, 42};
        ref_embed_fwd(ref, ids, a, 5, 100);
        be->ops->embed_fwd(be, dout, ids, da, 5, 100);
        down(be, out, dout, 500);
        CHECK(test_close_enough(out, ref, 500, 0, 0, &worst), "%s embed: %g", nm, worst);
        be->ops->release(be, da);
        be->ops->release(be, db);
        be->ops->release(be, dout);
        free(a);
        free(b);
        free(ref);
        free(out);
    }
    CHECK(be->ops->sync(be) == 0, "%s: latched error: %s", nm, be->err.msg);
}

static atomic_int spin_stop;
static void *spin(void *arg) {
    (void)arg;
    while (!atomic_load(&spin_stop)) {}
    return NULL;
}

/* backend_init's thread counts: 0 = every core; BACKEND_THREADS_IDLE = those not running
 * anything else: two spinning processes beside it are left alone, while this process's own
 * spinning threads (a training run's OpenMP workers between regions) do not count. */
static void test_thread_counts(void) {
    TunaErr err = {0};
    int cores = omp_get_num_procs();
    Backend *be = backend_init("cpu", 0, &err);
    CHECK(be && be->n_threads == cores, "cpu backend with 0 threads: %d, cores %d",
          be ? be->n_threads : -1, cores);
    backend_free(be);
    be = backend_init("cpu", 3, &err);
    CHECK(be && be->n_threads == 3, "cpu backend asked for 3 threads: %d", be ? be->n_threads : -1);
    backend_free(be);
    be = backend_init("cpu", BACKEND_THREADS_IDLE, &err);
    CHECK(be && be->n_threads >= 1 && be->n_threads <= cores, "idle cores, quiet: %d of %d",
          be ? be->n_threads : -1, cores);
    backend_free(be);
    /* the decision itself, on recorded counts: the median of three reads, clamped to [1, n] */
    static const struct {
        int n, k, v[3], want;
    } cases[] = {{4, 3, {0, 0, 0}, 4},   {4, 3, {2, 0, 1}, 3}, {4, 3, {5, 6, 4}, 1},
                 {4, 3, {-2, -1, 0}, 4}, {8, 1, {3}, 5},       {8, 0, {0}, 8},
                 {2, 3, {2, 2, 9}, 1},   {16, 2, {1, 3}, 13}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = cpu_idle_from_counts(cases[i].n, cases[i].v, cases[i].k);
        CHECK(got == cases[i].want, "idle cores of %d with others {%d,%d,%d} (k %d): %d, want %d",
              cases[i].n, cases[i].v[0], cases[i].v[1], cases[i].v[2], cases[i].k, got,
              cases[i].want);
    }
    pthread_t t[2];
    int started = 0;
    for (int i = 0; i < 2; i++)
        started += pthread_create(&t[i], NULL, spin, NULL) == 0;
    CHECK(started == 2, "spinning threads: %d started", started);
    /* Our own runnable threads are what BACKEND_THREADS_IDLE takes off procs_running: the two
     * spinners and this thread are runnable whether or not a core is free (state R), so this
     * holds however busy the machine is. Comparing two live idle counts did not: other
     * processes come and go between them (CI saw 1 against 2). */
    int own = cpu_own_running();
    CHECK(own >= 3, "own runnable threads with 2 spinning: %d, expected at least 3", own);
    be = backend_init("cpu", BACKEND_THREADS_IDLE, &err);
    CHECK(be && be->n_threads >= 1 && be->n_threads <= cores,
          "idle cores with 2 of our own threads spinning: %d of %d", be ? be->n_threads : -1,
          cores);
    backend_free(be);
    atomic_store(&spin_stop, 1);
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    pid_t hog[2];
    for (int i = 0; i < 2; i++)
        if ((hog[i] = fork()) == 0) {
            alarm(60);
            volatile unsigned x = 0;
            for (;;)
                x++;
        }
    nanosleep(&(struct timespec){0, 20000000}, NULL); /* let them start */
    be = backend_init("cpu", BACKEND_THREADS_IDLE, &err);
    int want = cores - 2 < 1 ? 1 : cores - 2;
    CHECK(be && be->n_threads >= 1 && be->n_threads <= want,
          "idle cores with 2 busy processes: %d, expected at most %d of %d",
          be ? be->n_threads : -1, want, cores);
    backend_free(be);
    /* a long-lived backend re-decides (a chat, before each reply) */
    be = backend_init("cpu", 5, &err);
    backend_set_threads(be, BACKEND_THREADS_IDLE);
    CHECK(be && be->n_threads >= 1 && be->n_threads <= want, "backend_set_threads(IDLE): %d",
          be ? be->n_threads : -1);
    backend_set_threads(be, 0);
    CHECK(be && be->n_threads == cores, "backend_set_threads(0): %d", be ? be->n_threads : -1);
    backend_free(be);
    for (int i = 0; i < 2; i++) {
        kill(hog[i], SIGKILL);
        waitpid(hog[i], NULL, 0);
    }
}

/* The cpu backend's 16-lane exp (vexpf16) and tanh-GELU loops give the bits of the scalar forms
 * (vexpf, gelu_th and gelu_d, as the loops' tails run them) lane by lane: which elements a vector or the scalar tail takes
 * depends on the thread count's ranges, and the bits must not. */
static float gelu_tanh_scalar(float x) {
    return 0.5f * x * (1.0f + gelu_th(x));
}
static float gelu_tanh_d_scalar(float x) {
    return gelu_d(x, gelu_th(x));
}
static int same_bits(float a, float b) {
    return !memcmp(&a, &b, sizeof a) || (a != a && b != b);
}

static void test_simd_exact(void) {
    size_t n = 1 << 20;
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) { /* random bits, a sweep, and the edges */
        uint32_t u = (uint32_t)(rng >> 32);
        frand();
        memcpy(&x[i], &u, sizeof u);
        if (i % 3 == 1) x[i] = frand() * 100.0f;
        if (i % 3 == 2) x[i] = frand() * 6.0f;
    }
    const float edge[] = {0.0f,    -0.0f,  -87.0f,   88.0f,     -87.0001f, 88.0001f, 1e-30f,
                          -1e-30f, 1e-45f, INFINITY, -INFINITY, NAN,       -126.5f,  127.5f};
    memcpy(x, edge, sizeof edge);
#ifdef __AVX512F__
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i += 16) {
        float y[16];
        _mm512_storeu_ps(y, vexpf16(_mm512_loadu_ps(x + i)));
        for (int l = 0; l < 16; l++)
            if (!same_bits(y[l], vexpf(x[i + (size_t)l])) && !bad++) first = i + (size_t)l;
    }
    CHECK(!bad, "vexpf16 differs from vexpf at %zu inputs (first %a)", bad, (double)x[first]);
#else
    SKIP("no AVX-512 in this build: vexpf16 not compiled");
#endif
    size_t m = 40000 + 13; /* ranges split unevenly: vectors and scalar tails in each */
    for (size_t i = 0; i < m; i++)
        x[i] = frand() * (i % 2 ? 8.0f : 40.0f);
    float *out = malloc(sizeof(float) * m), *din = malloc(sizeof(float) * m),
          *dout = rand_buf(m, 1.0f);
    for (int th = 1; th <= 2; th++) {
        TunaErr err = {0};
        Backend *be = backend_init("cpu", th, &err);
        if (!be) break;
        be->ops->gelu_fwd(be, out, x, m, 1);
        for (size_t i = 0; i < m; i++)
            din[i] = 0.25f;
        be->ops->gelu_bwd(be, din, dout, x, m, 1);
        size_t bf = 0, bb = 0;
        for (size_t i = 0; i < m; i++) {
            bf += !same_bits(out[i], gelu_tanh_scalar(x[i]));
            bb += !same_bits(din[i], 0.25f + dout[i] * gelu_tanh_d_scalar(x[i]));
        }
        CHECK(!bf && !bb,
              "cpu tanh-GELU on %d threads: forward differs from the scalar form at %zu"
              " of %zu, backward at %zu",
              th, bf, m, bb);
        backend_free(be);
    }
    free(x);
    free(out);
    free(din);
    free(dout);
}

/* cpu_sgemm on a core whose kernels sum a call's last rows in another order (OpenBLAS's Zen and
 * Haswell): each row of C the same bits whatever M and the thread count (the padded groups of
 * rows), over both op(A) layouts, beta 0 and 1 and a C wider than N, and each within fp32
 * rounding of a double sum. Elsewhere skipped: OpenBLAS's own calls there. */
static void test_sgemm_rows(void) {
    if (!cpu_sgemm_rows_padded()) {
        SKIP("cpu_sgemm leaves rows to OpenBLAS on core %s", openblas_get_corename());
        return;
    }
    enum { R = 100, K = 70, N = 45, LDC = 50 };
    static float a[R * K], b[N * K], c0[R * LDC], full[R * LDC], got[R * LDC];
    uint64_t x = 7;
    for (int i = 0; i < R * K; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        a[i] = (float)((double)(x >> 40) / 16777216.0 - 0.5);
    }
    for (int i = 0; i < N * K; i++)
        b[i] = a[(i * 7) % (R * K)] * 0.5f + 0.125f;
    for (int i = 0; i < R * LDC; i++)
        c0[i] = (float)(i % 13) - 6.0f;
    static const int ms[] = {1, 5, 11, 12, 13, 24, 40, 99};
    int n_rows = 0, bad_bits = 0, bad_val = 0;
    for (int ta = 0; ta <= 1; ta++)
        for (int bi = 0; bi <= 1; bi++) {
            float beta = (float)bi;
            const float *A = a; /* op(A) (R, K): row-major, or k-major (K, R) */
            int lda = ta ? R : K;
            memcpy(full, c0, sizeof full);
            cpu_sgemm(1, ta, 1, R, N, K, 1.0f, A, lda, b, K, beta, full, LDC);
            for (int r = 0; r < R; r++)
                for (int n = 0; n < N; n++) {
                    double s = (double)beta * (double)c0[r * LDC + n];
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * R + r] : A[r * K + k]) * (double)b[n * K + k];
                    bad_val += fabs((double)full[r * LDC + n] - s) > 1e-5 * (1 + fabs(s));
                }
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
                for (int nth = 1; nth <= 2; nth++) {
                    int M = ms[mi];
                    memcpy(got, c0, sizeof got);
                    cpu_sgemm(nth, ta, 1, M, N, K, 1.0f, A, lda, b, K, beta, got, LDC);
                    for (int r = 0; r < M; r++, n_rows++)
                        bad_bits += memcmp(got + r * LDC, full + r * LDC, sizeof(float) * N) != 0;
                    for (int r = M; r < R; r++) /* rows past M and columns past N untouched */
                        bad_bits += memcmp(got + r * LDC, c0 + r * LDC, sizeof(float) * LDC) != 0;
                    for (int r = 0; r < M; r++)
                        bad_bits += memcmp(got + r * LDC + N, c0 + r * LDC + N,
                                           sizeof(float) * (LDC - N)) != 0;
                }
        }
    CHECK(bad_val == 0, "cpu_sgemm: %d elements off the double sum", bad_val);
    CHECK(bad_bits == 0,
          "cpu_sgemm: %d rows with other bits than in a product of %d rows, or written past M x N",
          bad_bits, R);
    printf("cpu_sgemm: %d rows of products of 1-99 rows on 1 and 2 threads the same bits as in "
           "one of %d (core %s)\n",
           n_rows, R, openblas_get_corename());
}

int main(void) {
    test_sgemm_rows();
    test_simd_exact();
    test_thread_counts();
    const char *names[] = {"ref", "cpu", "cuda"};
    for (size_t i = 0; i < 3; i++) {
        TunaErr err = {0};
        for (int th = 1; th <= 2; th++) {
            Backend *be = backend_init(names[i], th, &err);
            if (!be) {
                if (th == 1) SKIP("backend %s not available here: %s", names[i], err.msg);
                break;
            }
            test_backend(be);
            backend_free(be);
        }
    }
    return test_report("test_kernels");
}
