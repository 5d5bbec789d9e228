/* dist_nccl.h: sums of GPU (device) buffers over the ranks of dist.h with NCCL's ncclAllReduce,
 * one GPU per rank (the rank's local index on its host, modulo the visible GPUs). Built where
 * nvcc and nccl.h are found (TUNA_HAVE_NCCL, see the Makefile's NCCL rows); without them every
 * call but dist_nccl_available and dist_nccl_devices returns TUNA_EUNSUP. GPU data-parallel
 * training waits for GPU training (issue 14): today tests/test_nccl is the one caller, and
 * ./tuna does not link this. One thread (the one that joined the world). */
#ifndef TUNA_SRC_DIST_NCCL_H
#define TUNA_SRC_DIST_NCCL_H

#include <stddef.h>

#include "err.h"

/* 1 when this build has the NCCL path. */
int dist_nccl_available(void);
/* The GPUs this process sees (0 without NCCL, without a driver or without a GPU). */
int dist_nccl_devices(void);
/* After dist_init: picks this rank's GPU (cudaSetDevice) and joins an NCCL communicator over
 * the whole world (rank 0's ncclGetUniqueId broadcast over MPI; a world of one needs no MPI).
 * Later calls return 0 at once. Returns 0 or a TUNA_* code with err set. */
int dist_nccl_init(TunaErr *err);
/* The GPU dist_nccl_init chose, -1 before. */
int dist_nccl_device(void);
/* In-place sum over the ranks of the device floats x[0..n) (ncclAllReduce on a stream of its
 * own, waited for before returning). */
int dist_nccl_sum_floats(float *x, size_t n, TunaErr *err);
/* Leaves the communicator (NULL-safe: nothing when none was joined). */
void dist_nccl_free(void);

#endif
