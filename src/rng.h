/* rng.h: tuna's one seeded random sequence on the host, splitmix64 (Steele, Lea, Flood 2014)
 * as a stateful generator: dataset shuffles and splits (dataset.c), LoRA and prefix weights'
 * init (model_train.c). Each draw advances the state by the golden-ratio constant and returns
 * it mixed by tuna_splitmix64, the hash behind the dropout masks (kernels/ref/ops_hash.h), so
 * there is one copy of the mixer. Explicit state, no globals (STYLE.md rule 14). Not the
 * sampler's generator (xorshift64*, generate.c). */
#ifndef TUNA_SRC_RNG_H
#define TUNA_SRC_RNG_H

#include <stdint.h>

#include "../kernels/ref/ops_hash.h"

/* The next 64 random bits of the sequence whose state is *s. */
static inline uint64_t rng_splitmix64(uint64_t *s) {
    uint64_t r = tuna_splitmix64(*s); /* = mix(*s + gamma): the state after this draw, mixed */
    *s += TUNA_SPLITMIX64_GAMMA;
    return r;
}

#endif
