/* dist_nccl.c: dist_nccl.h over NCCL and the CUDA runtime, or stubs without them. */
#include "dist_nccl.h"

#ifdef TUNA_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>

#include "dist.h"

static ncclComm_t comm;
static cudaStream_t stream;
static int joined, device = -1;

int dist_nccl_available(void) {
    return 1;
}

int dist_nccl_devices(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no GPU: clear the sticky error */
        return 0;
    }
    return n;
}

int dist_nccl_device(void) {
    return device;
}

/* this rank's index among the ranks on its host (Open MPI says it; else the world rank) */
static int local_rank(void) {
    const char *e = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    return e ? atoi(e) : dist_rank();
}

int dist_nccl_init(TunaErr *err) {
    if (joined) return 0;
    int n = dist_nccl_devices();
    if (n < 1) return tuna_errf(err, TUNA_EUNSUP, "NCCL: no GPU is visible");
    int dev = local_rank() % n;
    cudaError_t ce = cudaSetDevice(dev);
    if (ce != cudaSuccess)
        return tuna_errf(err, TUNA_EIO, "cudaSetDevice(%d): %s", dev, cudaGetErrorString(ce));
    ncclUniqueId id;
    ncclResult_t nr = ncclSuccess;
    if (dist_rank() == 0) nr = ncclGetUniqueId(&id);
    if (nr != ncclSuccess)
        return tuna_errf(err, TUNA_EIO, "ncclGetUniqueId: %s", ncclGetErrorString(nr));
    int rc = dist_bcast_bytes(&id, sizeof id, 0, err);
    if (rc) return rc;
    if ((ce = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)) != cudaSuccess)
        return tuna_errf(err, TUNA_EIO, "cudaStreamCreate: %s", cudaGetErrorString(ce));
    nr = ncclCommInitRank(&comm, dist_world(), id, dist_rank());
    if (nr != ncclSuccess) {
        cudaStreamDestroy(stream);
        return tuna_errf(err, TUNA_EIO, "ncclCommInitRank (rank %d of %d, GPU %d): %s", dist_rank(),
                         dist_world(), dev, ncclGetErrorString(nr));
    }
    joined = 1;
    device = dev;
    return 0;
}

int dist_nccl_sum_floats(float *x, size_t n, TunaErr *err) {
    if (!joined) return tuna_errf(err, TUNA_EINVAL, "dist_nccl_sum_floats before dist_nccl_init");
    ncclResult_t nr = ncclAllReduce(x, x, n, ncclFloat32, ncclSum, comm, stream);
    if (nr != ncclSuccess)
        return tuna_errf(err, TUNA_EIO, "ncclAllReduce of %zu floats: %s", n,
                         ncclGetErrorString(nr));
    cudaError_t ce = cudaStreamSynchronize(stream);
    if (ce != cudaSuccess)
        return tuna_errf(err, TUNA_EIO, "ncclAllReduce of %zu floats: %s", n,
                         cudaGetErrorString(ce));
    return 0;
}

void dist_nccl_free(void) {
    if (!joined) return;
    ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
    joined = 0;
    device = -1;
}

#else /* no NCCL in this build */

int dist_nccl_available(void) {
    return 0;
}
int dist_nccl_devices(void) {
    return 0;
}
int dist_nccl_device(void) {
    return -1;
}
int dist_nccl_init(TunaErr *err) {
    return tuna_errf(err, TUNA_EUNSUP,
                     "built without NCCL (it needs nvcc and nccl.h: see the Makefile's NCCL rows)");
}
int dist_nccl_sum_floats(float *x, size_t n, TunaErr *err) {
    (void)x, (void)n;
    return tuna_errf(err, TUNA_EUNSUP, "built without NCCL");
}
void dist_nccl_free(void) {}

#endif
