/* cuda_backend.h: the "cuda" Backend (cuBLAS + hand-written kernels on one stream).
 *
 * Compiled only when nvcc is present (TUNA_HAVE_CUDA); usable only when a device is. The
 * registry in kernels/backend.c calls cuda_backend_init for "cuda"; backend_free releases it
 * (ops->shutdown frees the device side). All work is queued on one stream of the device current
 * at init; errors are latched in be->err and returned by ->sync. One thread at a time. */
#ifndef TUNA_KERNELS_CUDA_BACKEND_H
#define TUNA_KERNELS_CUDA_BACKEND_H

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns a new backend owned by the caller, or NULL with err set (TUNA_EUNSUP and
 * "no CUDA device: ..." when there is no usable device, TUNA_ENOMEM or TUNA_EIO otherwise).
 * n_threads is recorded in be->n_threads only (host threads do no work here). */
Backend *cuda_backend_init(int n_threads, TunaErr *err);

#ifdef __cplusplus
}
#endif

#endif
