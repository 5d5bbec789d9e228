/* wtype.c: the weight-type table and its row converters (see wtype.h).
 *
 * Every product and sum is its own statement, so no compiler fuses a multiply-add (-std=c11
 * also turns contraction off): results equal gguf-py's numpy and bitsandbytes' float32 code bit
 * for bit. */
#include "wtype.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* fp16 and bf16 to and from fp32, IEEE round-to-nearest-even (as numpy and torch). */
float wtype_bf16_to_f32(uint16_t b) {
    return f32_from_bits((uint32_t)b << 16);
}

float wtype_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0) {
        if (man == 0) return f32_from_bits(sign);
        uint32_t e = 113; /* subnormal: shift the mantissa up until the implicit bit appears */
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        return f32_from_bits(sign | (e << 23) | ((man & 0x3FFu) << 13));
    }
    if (exp == 31) return f32_from_bits(sign | 0x7F800000u | (man << 13));
    return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t wtype_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t wtype_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xFFu, man = u & 0x7FFFFFu;
    if (exp == 0xFF) return (uint16_t)(sign | (man ? 0x7E00u | (man >> 13) : 0x7C00u));
    int e = (int)exp - 112; /* rebias 127 -> 15 */
    if (e >= 31) return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) {
        if (e < -10) return sign; /* below half the smallest subnormal */
        uint32_t m = man | 0x800000u;
        int shift = 14 - e;
        uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        uint32_t r = m >> shift;
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into inf: correct */
    return (uint16_t)(sign | h);
}

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFF);
    p[1] = (uint8_t)(v >> 8);
}

static float h2f(const uint8_t *p) {
    return wtype_f16_to_f32(rd16(p));
}

// --- F32, BF16, F16 -------------------------------------------------------------------------

static void deq_f32(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void q_f32(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void deq_bf16(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    const uint8_t *s = src; /* bytes: a GGUF tensor may sit at any address */
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)rd16(s + 2 * i) << 16;
        memcpy(dst + i, &u, 4);
    }
}

/* gguf-py's BF16 (ggml_compute_fp32_to_bf16): a NaN becomes a quiet NaN, else nearest even */
static void q_bf16(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    uint8_t *d = dst;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, src + i, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) u = (u & 0xffff0000u) | (64u << 16);
        wr16(d + 2 * i, (uint16_t)(((uint64_t)u + 0x7fffu + ((u >> 16) & 1u)) >> 16));
    }
}

static void deq_f16(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = h2f(s + 2 * i);
}

static void q_f16(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    uint8_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        wr16(d + 2 * i, wtype_f32_to_f16(src[i]));
}

// --- Q8_0, Q4_0, Q4_1 (ggml; quantization as gguf-py's gguf.quants) -----------------------

static void deq_q8_0(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    const uint8_t *b = src;
    for (int64_t k = 0; k < n; k += 32, b += 34, dst += 32) {
        float d = h2f(b);
        for (int j = 0; j < 32; j++)
            dst[j] = (float)(int8_t)b[2 + j] * d;
    }
}

/* d = amax / 127; q = round-half-away(x * (1 / d)) */
static void q_q8_0(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    uint8_t *b = dst;
    for (int64_t k = 0; k < n; k += 32, b += 34, src += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(src[j]));
        float d = amax / 127.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        wr16(b, wtype_f32_to_f16(d));
        for (int j = 0; j < 32; j++) {
            float v = src[j] * id;
            b[2 + j] = (uint8_t)(int8_t)roundf(v);
        }
    }
}

static void deq_q4_0(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    const uint8_t *b = src;
    for (int64_t k = 0; k < n; k += 32, b += 18, dst += 32) {
        float d = h2f(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            dst[j] = d * (float)((qs[j] & 0xF) - 8);
            dst[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

/* d = (the element of largest magnitude, the first of ties) / -8; q = trunc(x / d + 8.5) */
static void q_q4_0(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    uint8_t *b = dst;
    for (int64_t k = 0; k < n; k += 32, b += 18, src += 32) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(src[j])) {
                amax = fabsf(src[j]);
                max = src[j];
            }
        float d = max / -8.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        wr16(b, wtype_f32_to_f16(d));
        for (int j = 0; j < 16; j++) {
            float x0 = src[j] * id, x1 = src[j + 16] * id;
            x0 = x0 + 8.5f;
            x1 = x1 + 8.5f;
            int q0 = (int)truncf(x0), q1 = (int)truncf(x1);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            b[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void deq_q4_1(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    const uint8_t *b = src;
    for (int64_t k = 0; k < n; k += 32, b += 20, dst += 32) {
        float d = h2f(b), m = h2f(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            float lo = d * (float)(qs[j] & 0xF), hi = d * (float)(qs[j] >> 4);
            dst[j] = lo + m;
            dst[j + 16] = hi + m;
        }
    }
}

/* d = (max - min) / 15, m = min; q = trunc((x - min) / d + 0.5) */
static void q_q4_1(const float *src, void *dst, int64_t n, WAux *aux) {
    (void)aux;
    uint8_t *b = dst;
    for (int64_t k = 0; k < n; k += 32, b += 20, src += 32) {
        float min = src[0], max = src[0];
        for (int j = 1; j < 32; j++) {
            min = fminf(min, src[j]);
            max = fmaxf(max, src[j]);
        }
        float range = max - min;
        float d = range / 15.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        wr16(b, wtype_f32_to_f16(d));
        wr16(b + 2, wtype_f32_to_f16(min));
        for (int j = 0; j < 16; j++) {
            float x0 = src[j] - min, x1 = src[j + 16] - min;
            x0 = x0 * id;
            x1 = x1 * id;
            x0 = x0 + 0.5f;
            x1 = x1 + 0.5f;
            int q0 = (int)truncf(x0), q1 = (int)truncf(x1);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            b[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

// --- Q4_K, Q5_K, Q6_K (read only) -----------------------------------------------------------

/* the 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block */
static void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void deq_q4_k_block(const uint8_t *b, float *y) {
    float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *scales = b + 4, *q = b + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
        int sc, m;
        scale_min_k4(is, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++) {
            float a = d1 * (float)(q[l] & 0xF);
            float c = d2 * (float)(q[l] >> 4);
            y[l] = a - m1;
            y[l + 32] = c - m2;
        }
        y += 64;
        q += 32;
    }
}

static void deq_q5_k_block(const uint8_t *b, float *y) {
    float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
    unsigned u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2) {
        int sc, m;
        scale_min_k4(is, scales, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        for (int l = 0; l < 32; l++) {
            float a = d1 * (float)((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0));
            float c = d2 * (float)((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0));
            y[l] = a - m1;
            y[l + 32] = c - m2;
        }
        y += 64;
        ql += 32;
        u1 <<= 2;
        u2 <<= 2;
    }
}

static void deq_q6_k_block(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = h2f(b + 208);
    for (int n = 0; n < 256; n += 128) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            float s1 = d * (float)sc[is], s2 = d * (float)sc[is + 2];
            float s3 = d * (float)sc[is + 4], s4 = d * (float)sc[is + 6];
            y[l] = s1 * (float)q1;
            y[l + 32] = s2 * (float)q2;
            y[l + 64] = s3 * (float)q3;
            y[l + 96] = s4 * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

static void deq_q4_k(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    for (int64_t k = 0; k < n; k += 256)
        deq_q4_k_block((const uint8_t *)src + k / 256 * 144, dst + k);
}

static void deq_q5_k(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    for (int64_t k = 0; k < n; k += 256)
        deq_q5_k_block((const uint8_t *)src + k / 256 * 176, dst + k);
}

static void deq_q6_k(const void *src, float *dst, int64_t n, const WAux *aux) {
    (void)aux;
    for (int64_t k = 0; k < n; k += 256)
        deq_q6_k_block((const uint8_t *)src + k / 256 * 210, dst + k);
}

// --- NF4, FP4 (bitsandbytes) ----------------------------------------------------------------

/* NF4: the 16 NormalFloat values of QLoRA (Dettmers et al. 2023, arXiv 2305.14314, appendix E):
 * quantiles of N(0, 1) scaled to [-1, 1] with an exact zero; the table of bitsandbytes'
 * get_4bit_type("nf4"). Code i is value i (sorted). */
static const float nf4_code[16] = {-1.0f,
                                   -0.6961928009986877f,
                                   -0.5250730514526367f,
                                   -0.39491748809814453f,
                                   -0.28444138169288635f,
                                   -0.18477343022823334f,
                                   -0.09105003625154495f,
                                   0.0f,
                                   0.07958029955625534f,
                                   0.16093020141124725f,
                                   0.24611230194568634f,
                                   0.33791524171829224f,
                                   0.44070982933044434f,
                                   0.5626170039176941f,
                                   0.7229568362236023f,
                                   1.0f};

/* FP4 (bitsandbytes' get_4bit_type("fp4")): 1 sign bit, 2 exponent bits with bias 2 and
 * 1 mantissa bit, the magnitudes of codes 0..7 being 0, 0.0625, 8, 12, 4, 6, 2, 3, codes 8..15
 * their negatives (code 8 is +0); all divided by the largest, 12, in fp32. */
static const float fp4_mag[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};

static float fp4_value(int c) {
    float v = fp4_mag[c & 7] / 12.0f;
    return (c & 8) && v != 0.0f ? -v : v;
}

/* bitsandbytes' dynamic 8-bit map for the double-quantized absmax (create_dynamic_map(signed=
 * True, max_exponent_bits=7, total_bits=8); Dettmers 2015, arXiv 1511.04561): 256 sorted
 * values, a decimal exponent 10^-6 .. 10^0 with a shrinking linear fraction, plus 0 and 1.
 * bnb's CPU quantizer (quantize_cpu) searches a copy whose entry 0 is -1.0 (quant_dynamic8
 * does the same); the state it returns, and so dequantization, keeps -0.99296875. Printed from bitsandbytes
 * 0.50.2 as hexadecimal floats. */
static const float dynamic8[256] = {
        -0x1.fc6666p-1f,  -0x1.f53334p-1f,  -0x1.eep-1f,      -0x1.e6ccccp-1f,
        -0x1.df999ap-1f,  -0x1.d86666p-1f,  -0x1.d13334p-1f,  -0x1.cap-1f,
        -0x1.c2ccccp-1f,  -0x1.bb999ap-1f,  -0x1.b46666p-1f,  -0x1.ad3334p-1f,
        -0x1.a6p-1f,      -0x1.9eccccp-1f,  -0x1.97999ap-1f,  -0x1.906666p-1f,
        -0x1.893334p-1f,  -0x1.82p-1f,      -0x1.7accccp-1f,  -0x1.73999ap-1f,
        -0x1.6c6668p-1f,  -0x1.653334p-1f,  -0x1.5ep-1f,      -0x1.56ccccp-1f,
        -0x1.4f999ap-1f,  -0x1.486668p-1f,  -0x1.413334p-1f,  -0x1.3ap-1f,
        -0x1.32ccccp-1f,  -0x1.2b999ap-1f,  -0x1.246668p-1f,  -0x1.1d3334p-1f,
        -0x1.16p-1f,      -0x1.0eccccp-1f,  -0x1.079998p-1f,  -0x1.006666p-1f,
        -0x1.f26664p-2f,  -0x1.e4p-2f,      -0x1.d59998p-2f,  -0x1.c73334p-2f,
        -0x1.b8ccccp-2f,  -0x1.aa6666p-2f,  -0x1.9cp-2f,      -0x1.8d9998p-2f,
        -0x1.7f3334p-2f,  -0x1.70ccccp-2f,  -0x1.626666p-2f,  -0x1.54p-2f,
        -0x1.459998p-2f,  -0x1.373334p-2f,  -0x1.28ccccp-2f,  -0x1.1a6668p-2f,
        -0x1.0cp-2f,      -0x1.fb3332p-3f,  -0x1.de6666p-3f,  -0x1.c1999ap-3f,
        -0x1.a4ccccp-3f,  -0x1.88p-3f,      -0x1.6b3334p-3f,  -0x1.4e6666p-3f,
        -0x1.31999ap-3f,  -0x1.14ccccp-3f,  -0x1.fp-4f,       -0x1.b66668p-4f,
        -0x1.93d70ap-4f,  -0x1.8851eep-4f,  -0x1.7ccccep-4f,  -0x1.7147aep-4f,
        -0x1.65c29p-4f,   -0x1.5a3d7p-4f,   -0x1.4eb854p-4f,  -0x1.433334p-4f,
        -0x1.37ae14p-4f,  -0x1.2c28f6p-4f,  -0x1.20a3d6p-4f,  -0x1.151ebap-4f,
        -0x1.09999ap-4f,  -0x1.fc28f6p-5f,  -0x1.e51ebap-5f,  -0x1.ce147ap-5f,
        -0x1.b70a3ep-5f,  -0x1.ap-5f,       -0x1.88f5c2p-5f,  -0x1.71eb86p-5f,
        -0x1.5ae146p-5f,  -0x1.43d70ap-5f,  -0x1.2ccccep-5f,  -0x1.15c29p-5f,
        -0x1.fd70a4p-6f,  -0x1.cf5c2ap-6f,  -0x1.a147aep-6f,  -0x1.733334p-6f,
        -0x1.451ebap-6f,  -0x1.170a3ep-6f,  -0x1.d1eb86p-7f,  -0x1.75c29p-7f,
        -0x1.3e76c8p-7f,  -0x1.2c083p-7f,   -0x1.19999ap-7f,  -0x1.072b02p-7f,
        -0x1.e978d4p-8f,  -0x1.c49ba6p-8f,  -0x1.9fbe76p-8f,  -0x1.7ae148p-8f,
        -0x1.56041ap-8f,  -0x1.3126e8p-8f,  -0x1.0c49bap-8f,  -0x1.ced914p-9f,
        -0x1.851eb8p-9f,  -0x1.3b645ap-9f,  -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
        -0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f,   -0x1.3dd982p-11f,
        -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
        -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
        -0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0.0f,
        0x1.27476ep-21f,  0x1.b43528p-19f,  0x1.040bfep-17f,  0x1.64840cp-16f,
        0x1.6f0068p-15f,  0x1.15df66p-14f,  0x1.743e96p-14f,  0x1.47ae16p-13f,
        0x1.19ce0ap-12f,  0x1.8fc506p-12f,  0x1.02de02p-11f,  0x1.3dd982p-11f,
        0x1.78d5p-11f,    0x1.b3d07cp-11f,  0x1.eecbfep-11f,  0x1.4fdf3ap-10f,
        0x1.e353f8p-10f,  0x1.3b645ap-9f,   0x1.851eb8p-9f,   0x1.ced914p-9f,
        0x1.0c49bap-8f,   0x1.3126e8p-8f,   0x1.56041ap-8f,   0x1.7ae148p-8f,
        0x1.9fbe76p-8f,   0x1.c49ba6p-8f,   0x1.e978d4p-8f,   0x1.072b02p-7f,
        0x1.19999ap-7f,   0x1.2c083p-7f,    0x1.3e76c8p-7f,   0x1.75c29p-7f,
        0x1.d1eb86p-7f,   0x1.170a3ep-6f,   0x1.451ebap-6f,   0x1.733334p-6f,
        0x1.a147aep-6f,   0x1.cf5c2ap-6f,   0x1.fd70a4p-6f,   0x1.15c29p-5f,
        0x1.2ccccep-5f,   0x1.43d70ap-5f,   0x1.5ae146p-5f,   0x1.71eb86p-5f,
        0x1.88f5c2p-5f,   0x1.ap-5f,        0x1.b70a3ep-5f,   0x1.ce147ap-5f,
        0x1.e51ebap-5f,   0x1.fc28f6p-5f,   0x1.09999ap-4f,   0x1.151ebap-4f,
        0x1.20a3d6p-4f,   0x1.2c28f6p-4f,   0x1.37ae14p-4f,   0x1.433334p-4f,
        0x1.4eb854p-4f,   0x1.5a3d7p-4f,    0x1.65c29p-4f,    0x1.7147aep-4f,
        0x1.7ccccep-4f,   0x1.8851eep-4f,   0x1.93d70ap-4f,   0x1.b66668p-4f,
        0x1.fp-4f,        0x1.14ccccp-3f,   0x1.31999ap-3f,   0x1.4e6666p-3f,
        0x1.6b3334p-3f,   0x1.88p-3f,       0x1.a4ccccp-3f,   0x1.c1999ap-3f,
        0x1.de6666p-3f,   0x1.fb3332p-3f,   0x1.0cp-2f,       0x1.1a6668p-2f,
        0x1.28ccccp-2f,   0x1.373334p-2f,   0x1.459998p-2f,   0x1.54p-2f,
        0x1.626666p-2f,   0x1.70ccccp-2f,   0x1.7f3334p-2f,   0x1.8d9998p-2f,
        0x1.9cp-2f,       0x1.aa6666p-2f,   0x1.b8ccccp-2f,   0x1.c73334p-2f,
        0x1.d59998p-2f,   0x1.e4p-2f,       0x1.f26664p-2f,   0x1.006666p-1f,
        0x1.079998p-1f,   0x1.0eccccp-1f,   0x1.16p-1f,       0x1.1d3334p-1f,
        0x1.246668p-1f,   0x1.2b999ap-1f,   0x1.32ccccp-1f,   0x1.3ap-1f,
        0x1.413334p-1f,   0x1.486668p-1f,   0x1.4f999ap-1f,   0x1.56ccccp-1f,
        0x1.5ep-1f,       0x1.653334p-1f,   0x1.6c6668p-1f,   0x1.73999ap-1f,
        0x1.7accccp-1f,   0x1.82p-1f,       0x1.893334p-1f,   0x1.906666p-1f,
        0x1.97999ap-1f,   0x1.9eccccp-1f,   0x1.a6p-1f,       0x1.ad3334p-1f,
        0x1.b46666p-1f,   0x1.bb999ap-1f,   0x1.c2ccccp-1f,   0x1.cap-1f,
        0x1.d13334p-1f,   0x1.d86666p-1f,   0x1.df999ap-1f,   0x1.e6ccccp-1f,
        0x1.eep-1f,       0x1.f53334p-1f,   0x1.fc6666p-1f,   0x1.0p+0f};

float wtype_bnb_absmax(const WAux *aux, int64_t blk) {
    if (!aux->absmax_q) return aux->absmax[blk];
    float a = dynamic8[aux->absmax_q[blk]] * aux->absmax2[blk / 256];
    return a + aux->offset;
}

static void deq_4bit(const void *src, float *dst, int64_t n, const WAux *aux, const float *code) {
    const uint8_t *b = src;
    for (int64_t k = 0; k < n; k += 64, b += 32, dst += 64) {
        float s = wtype_bnb_absmax(aux, aux->block0 + k / 64);
        for (int j = 0; j < 32; j++) {
            dst[2 * j] = code[b[j] >> 4] * s;
            dst[2 * j + 1] = code[b[j] & 0xF] * s;
        }
    }
}

void wtype_code4(WType t, float code[16]) {
    for (int c = 0; c < 16; c++)
        code[c] = t == WT_NF4 ? nf4_code[c] : fp4_value(c);
}

static void deq_nf4(const void *src, float *dst, int64_t n, const WAux *aux) {
    deq_4bit(src, dst, n, aux, nf4_code);
}

static void deq_fp4(const void *src, float *dst, int64_t n, const WAux *aux) {
    float code[16];
    for (int c = 0; c < 16; c++)
        code[c] = fp4_value(c);
    deq_4bit(src, dst, n, aux, code);
}

/* bitsandbytes' quantize_4bit (its CPU path, backends/default): absmax per block of 64;
 * x * (1 / max(absmax, 1e-38)) clamped to [-1, 1]; the code is the bucket of the sorted code
 * values whose midpoints (fp32) bound it, a value on a midpoint going to the lower bucket
 * (torch.bucketize). Ties among equal code values (FP4's two zeros) sort by code number. */
static void quant_4bit(const float *src, void *dst, int64_t n, WAux *aux, const float *code) {
    int order[16];
    float mid[15];
    for (int i = 0; i < 16; i++) {
        int j = i;
        while (j > 0 && code[order[j - 1]] > code[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (int i = 0; i < 15; i++) {
        float s = code[order[i]] + code[order[i + 1]];
        mid[i] = s / 2.0f;
    }
    uint8_t *b = dst;
    for (int64_t k = 0; k < n; k += 64, b += 32, src += 64) {
        float amax = 0.0f;
        for (int j = 0; j < 64; j++)
            amax = fmaxf(amax, fabsf(src[j]));
        aux->absmax[aux->block0 + k / 64] = amax;
        float inv = 1.0f / fmaxf(amax, 1e-38f);
        for (int j = 0; j < 32; j++) {
            int q[2];
            for (int h = 0; h < 2; h++) {
                float x = src[2 * j + h] * inv;
                x = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;
                int pos = 0;
                while (pos < 15 && mid[pos] < x)
                    pos++;
                q[h] = order[pos];
            }
            b[j] = (uint8_t)((q[0] << 4) | q[1]);
        }
    }
}

static void q_nf4(const float *src, void *dst, int64_t n, WAux *aux) {
    quant_4bit(src, dst, n, aux, nf4_code);
}

static void q_fp4(const float *src, void *dst, int64_t n, WAux *aux) {
    float code[16];
    for (int c = 0; c < 16; c++)
        code[c] = fp4_value(c);
    quant_4bit(src, dst, n, aux, code);
}

// --- the table --------------------------------------------------------------------------------

const WTypeInfo wtype_info[WT_COUNT] = {
        [WT_F32] = {"F32", 1, 4, 0, deq_f32, q_f32},
        [WT_BF16] = {"BF16", 1, 2, 30, deq_bf16, q_bf16},
        [WT_F16] = {"F16", 1, 2, 1, deq_f16, q_f16},
        [WT_Q8_0] = {"Q8_0", 32, 34, 8, deq_q8_0, q_q8_0},
        [WT_Q4_0] = {"Q4_0", 32, 18, 2, deq_q4_0, q_q4_0},
        [WT_Q4_1] = {"Q4_1", 32, 20, 3, deq_q4_1, q_q4_1},
        [WT_Q4_K] = {"Q4_K", 256, 144, 12, deq_q4_k, NULL},
        [WT_Q5_K] = {"Q5_K", 256, 176, 13, deq_q5_k, NULL},
        [WT_Q6_K] = {"Q6_K", 256, 210, 14, deq_q6_k, NULL},
        [WT_NF4] = {"NF4", 64, 32, -1, deq_nf4, q_nf4},
        [WT_FP4] = {"FP4", 64, 32, -1, deq_fp4, q_fp4},
};

int wtype_by_name(const char *s) {
    static const struct {
        const char *alias;
        WType t;
    } aliases[] = {{"fp32", WT_F32}, {"float32", WT_F32}, {"bfloat16", WT_BF16},
                   {"fp16", WT_F16}, {"float16", WT_F16}, {"half", WT_F16}};
    if (!s) return -1;
    for (int t = 0; t < WT_COUNT; t++)
        if (!strcasecmp(s, wtype_info[t].name)) return t;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcasecmp(s, aliases[i].alias)) return (int)aliases[i].t;
    return -1;
}

int wtype_by_ggml(int g) {
    for (int t = 0; t < WT_COUNT; t++)
        if (wtype_info[t].ggml == g) return t;
    return -1;
}

size_t wtype_row_bytes(WType t, int64_t cols) {
    if ((unsigned)t >= WT_COUNT || cols <= 0 || cols % wtype_info[t].block) return 0;
    return (size_t)(cols / wtype_info[t].block) * (size_t)wtype_info[t].block_bytes;
}

static int is_bnb(WType t) {
    return t == WT_NF4 || t == WT_FP4;
}

static size_t n_blocks(const Weight *w) {
    return is_bnb(w->type) ? (size_t)w->rows * (size_t)w->cols / 64 : 0;
}

const void *weight_row(const Weight *w, int r, WAux *aux) {
    memset(aux, 0, sizeof *aux);
    if (is_bnb(w->type)) {
        aux->absmax = w->absmax;
        aux->absmax_q = w->double_quant ? w->absmax_q : NULL;
        aux->absmax2 = w->absmax2;
        aux->offset = w->offset;
        aux->block0 = (int64_t)r * (w->cols / 64);
    }
    return (const uint8_t *)w->data + (size_t)r * wtype_row_bytes(w->type, w->cols);
}

/* x[0..n) summed in fp32 in the order of PyTorch's CPU sum of a contiguous float tensor
 * (ATen's SumKernel: vectors of 8 lanes, 4 interleaved accumulators, a 4-level cascade over
 * groups of 2^max(4, ceil(log2 rows) / 4) rows of 4 vectors, then the scalar tail, then the 8
 * lanes in order). torch.mean is that sum / n. Matched torch 2.x bit for bit on 300 random
 * lengths 1..5000 here; bnb's double quantization takes its offset from it. */
static float torch_sum_f32(const float *x, int64_t n) {
    enum { L = 8, ILP = 4, LEVELS = 4 };
    int64_t nvec = n / L, rows = nvec / ILP;
    int lg = 0;
    while (((int64_t)1 << lg) < rows)
        lg++;
    int lp = lg / LEVELS > 4 ? lg / LEVELS : 4;
    int64_t step = (int64_t)1 << lp, mask = step - 1;
    float acc[LEVELS][ILP][L];
    memset(acc, 0, sizeof acc);
    int64_t i = 0;
    for (; i + step <= rows;) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < ILP; k++)
                for (int l = 0; l < L; l++)
                    acc[0][k][l] += x[(i * ILP + k) * L + l];
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < ILP; k++)
                for (int l = 0; l < L; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if (i & (mask << (j * lp))) break;
        }
    }
    for (; i < rows; i++)
        for (int k = 0; k < ILP; k++)
            for (int l = 0; l < L; l++)
                acc[0][k][l] += x[(i * ILP + k) * L + l];
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < ILP; k++)
            for (int l = 0; l < L; l++)
                acc[0][k][l] += acc[j][k][l];
    for (int64_t v = rows * ILP; v < nvec; v++)
        for (int l = 0; l < L; l++)
            acc[0][0][l] += x[v * L + l];
    for (int k = 1; k < ILP; k++)
        for (int l = 0; l < L; l++)
            acc[0][0][l] += acc[0][k][l];
    float s = 0.0f;
    for (int64_t t = nvec * L; t < n; t++)
        s += x[t];
    for (int l = 0; l < L; l++)
        s += acc[0][0][l];
    return s;
}

/* bnb's quantize_blockwise (CPU, quantize_cpu) of a (n) in blocks of 256 with dynamic8:
 * absmax2 per block; each a / absmax2 goes to the nearer of the two map values around it
 * (the lower one on a tie). */
static void quant_dynamic8(const float *a, size_t n, uint8_t *q, float *absmax2) {
    for (size_t b0 = 0; b0 < n; b0 += 256) {
        size_t e = b0 + 256 < n ? b0 + 256 : n;
        float am = -FLT_MAX;
        for (size_t i = b0; i < e; i++)
            am = fmaxf(am, fabsf(a[i]));
        absmax2[b0 / 256] = am;
        for (size_t i = b0; i < e; i++) {
            float x = a[i] / am;
            int lo = 0, hi = 255; /* the last index with map[idx] <= x (0 below the map) */
            while (lo < hi) {
                int mid = (lo + hi + 1) / 2;
                if (dynamic8[mid] <= x)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            float left = lo ? dynamic8[lo] : -1.0f; /* the quantizer's map has -1 at 0 */
            if (lo < 255 && fabsf(x - dynamic8[lo + 1]) < fabsf(x - left)) lo++;
            q[i] = (uint8_t)lo;
        }
    }
}

int weight_quantize(Weight *w, const float *src, int rows, int cols, WType type, int double_quant,
                    TunaErr *err) {
    memset(w, 0, sizeof *w);
    if ((unsigned)type >= WT_COUNT)
        return tuna_errf(err, TUNA_EINVAL, "weight_quantize: unknown weight type %d", (int)type);
    const WTypeInfo *ti = &wtype_info[type];
    if (!ti->quant_row)
        return tuna_errf(err, TUNA_EUNSUP, "weight_quantize: tuna reads %s but does not make it",
                         ti->name);
    if (rows <= 0 || cols <= 0 || cols % ti->block)
        return tuna_errf(err, TUNA_EINVAL,
                         "weight_quantize: a (%d, %d) matrix cannot be %s: its rows of %d must "
                         "be whole blocks of %d",
                         rows, cols, ti->name, cols, ti->block);
    if (double_quant && !is_bnb(type))
        return tuna_errf(err, TUNA_EINVAL,
                         "weight_quantize: double quantization applies to NF4 and FP4, not %s",
                         ti->name);
    size_t rb = wtype_row_bytes(type, cols);
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->data = malloc(rb * (size_t)rows);
    size_t nb = (size_t)rows * (size_t)cols / 64;
    if (is_bnb(type)) w->absmax = malloc((nb ? nb : 1) * sizeof(float));
    if (!w->data || (is_bnb(type) && !w->absmax)) {
        weight_free(w);
        return tuna_errf(err, TUNA_ENOMEM, "weight_quantize: out of memory for a (%d, %d) %s", rows,
                         cols, ti->name);
    }
    for (int r = 0; r < rows; r++) {
        WAux aux = {.absmax = w->absmax, .block0 = (int64_t)r * (cols / 64)};
        ti->quant_row(src + (size_t)r * (size_t)cols, (uint8_t *)w->data + (size_t)r * rb, cols,
                      &aux);
    }
    if (double_quant) {
        /* offset = the mean absmax, summed in torch's order so that it is bnb's float */
        w->offset = torch_sum_f32(w->absmax, (int64_t)nb) / (float)nb;
        w->absmax_q = malloc(nb);
        w->absmax2 = malloc((nb + 255) / 256 * sizeof(float));
        if (!w->absmax_q || !w->absmax2) {
            weight_free(w);
            return tuna_errf(err, TUNA_ENOMEM, "weight_quantize: out of memory for a (%d, %d) %s",
                             rows, cols, ti->name);
        }
        for (size_t i = 0; i < nb; i++)
            w->absmax[i] = w->absmax[i] - w->offset;
        quant_dynamic8(w->absmax, nb, w->absmax_q, w->absmax2);
        free(w->absmax);
        w->absmax = NULL;
        w->double_quant = 1;
    }
    return 0;
}

int weight_wrap(Weight *w, const void *data, int rows, int cols, WType type, TunaErr *err) {
    memset(w, 0, sizeof *w);
    if ((unsigned)type >= WT_COUNT || is_bnb(type))
        return tuna_errf(err, TUNA_EINVAL, "weight_wrap: type %s has scales apart from its codes",
                         (unsigned)type < WT_COUNT ? wtype_info[type].name : "?");
    if (rows <= 0 || cols <= 0 || cols % wtype_info[type].block)
        return tuna_errf(err, TUNA_EINVAL,
                         "weight_wrap: a (%d, %d) matrix cannot be %s: its rows of %d must be "
                         "whole blocks of %d",
                         rows, cols, wtype_info[type].name, cols, wtype_info[type].block);
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->data = (void *)(uintptr_t)data;
    w->borrowed = 1;
    return 0;
}

void weight_dequantize_rows(const Weight *w, int r0, int n_rows, float *dst) {
    const WTypeInfo *ti = &wtype_info[w->type];
    for (int r = r0; r < r0 + n_rows; r++) {
        WAux aux;
        const void *row = weight_row(w, r, &aux);
        ti->dequant_row(row, dst + (size_t)(r - r0) * (size_t)w->cols, w->cols, &aux);
    }
}

void weight_dequantize(const Weight *w, float *dst) {
    weight_dequantize_rows(w, 0, w->rows, dst);
}

int weight_arrays(const Weight *w, void *p[4], size_t bytes[4]) {
    size_t nb = n_blocks(w);
    p[0] = w->data;
    bytes[0] = wtype_row_bytes(w->type, w->cols) * (size_t)w->rows;
    if (!is_bnb(w->type)) return 1;
    if (!w->double_quant) {
        p[1] = w->absmax;
        bytes[1] = nb * sizeof(float);
        return 2;
    }
    p[1] = w->absmax_q;
    bytes[1] = nb;
    p[2] = w->absmax2;
    bytes[2] = (nb + 255) / 256 * sizeof(float);
    return 3;
}

void weight_set_arrays(Weight *w, void *const p[4]) {
    w->data = p[0];
    if (!is_bnb(w->type)) return;
    if (!w->double_quant) {
        w->absmax = p[1];
        return;
    }
    w->absmax_q = p[1];
    w->absmax2 = p[2];
}

size_t weight_bytes(const Weight *w) {
    void *p[4];
    size_t bytes[4], b = w->double_quant && is_bnb(w->type) ? sizeof(float) : 0; /* offset */
    for (int i = 0, n = weight_arrays(w, p, bytes); i < n; i++)
        b += bytes[i];
    return b;
}

void weight_free(Weight *w) {
    if (!w) return;
    if (!w->borrowed) free(w->data);
    free(w->pack); /* a host weight given to the cpu backend: its packed copies, host memory */
    free(w->pack_t);
    free(w->absmax);
    free(w->absmax_q);
    free(w->absmax2);
    memset(w, 0, sizeof *w);
}
