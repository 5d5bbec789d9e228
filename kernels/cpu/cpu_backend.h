/* cpu_backend.h: the CPU backend (OpenBLAS + OpenMP). Host memory; see kernels/backend.h. */
#ifndef TUNA_KERNELS_CPU_CPU_BACKEND_H
#define TUNA_KERNELS_CPU_CPU_BACKEND_H

#include "../backend.h"

Backend *cpu_backend_init(int n_threads, TunaErr *err);

#endif
