/* guard_backend.h: the "guard" backend (see guard_backend.c): the cpu kernels behind memory
 * the host cannot touch between ops, to check that the engine keeps the device contract. */
#ifndef TUNA_KERNELS_GUARD_BACKEND_H
#define TUNA_KERNELS_GUARD_BACKEND_H

#include "../backend.h"

Backend *guard_backend_init(int n_threads, TunaErr *err);

#endif
