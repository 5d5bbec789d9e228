/* bench_util.h: what the C micro-benchmarks share: a monotonic clock and a seeded
 * xorshift source of floats in [-1, 1). Header-only; each benchmark is one translation unit. */
#ifndef TUNA_BENCH_UTIL_H
#define TUNA_BENCH_UTIL_H

#include <stdint.h>
#include <time.h>

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t bench_rng = 0x2545F4914F6CDD1DULL;
static inline float frand(void) {
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (float)((bench_rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}

#endif
