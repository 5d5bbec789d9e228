/* ops_hash.h: the counter-based hash behind dropout masks, shared by every backend so that
 * the same (seed, index) keeps or drops the same element everywhere (ref, cpu, cuda).
 * Header-only, no state: element i of a call with seed s is kept iff
 * tuna_dropout_u(tuna_dropout_key(s), i) >= p, with u uniform on [0,1) in steps of 2^-24
 * (exactly representable as a float, so the comparison is the same on every device). */
#ifndef TUNA_KERNELS_REF_OPS_HASH_H
#define TUNA_KERNELS_REF_OPS_HASH_H

#include <stdint.h>

#ifdef __CUDACC__
#define TUNA_HD __host__ __device__
#else
#define TUNA_HD
#endif

/* splitmix64's step (Steele, Lea, Flood 2014): z plus the golden-ratio gamma, then its
 * finalizer, a bijection that mixes every bit. src/rng.h makes the stateful generator of it. */
#define TUNA_SPLITMIX64_GAMMA 0x9E3779B97F4A7C15ULL
static inline TUNA_HD uint64_t tuna_splitmix64(uint64_t z) {
    z += TUNA_SPLITMIX64_GAMMA;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The per-call key: mixed once so nearby seeds (step * L + layer) give unrelated masks. */
static inline TUNA_HD uint64_t tuna_dropout_key(uint64_t seed) {
    return tuna_splitmix64(seed ^ 0xD1B54A32D192ED03ULL);
}

/* Uniform in [0,1), 24 bits: element i under key. */
static inline TUNA_HD float tuna_dropout_u(uint64_t key, uint64_t i) {
    return (float)(uint32_t)(tuna_splitmix64(key ^ i) >> 40) * (1.0f / 16777216.0f);
}

/* NEFTune's noise (noise_add) of element i under key: (2u - 1) * mag, 2u - 1 exact and one
 * rounded product (on the GPU __fmul_rn: nvcc would fuse it into the caller's sum). */
static inline TUNA_HD float tuna_noise(uint64_t key, uint64_t i, float mag) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(tuna_dropout_u(key, i) * 2.0f - 1.0f, mag);
#else
    return (tuna_dropout_u(key, i) * 2.0f - 1.0f) * mag;
#endif
}

#endif
