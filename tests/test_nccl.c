/* test_nccl: the NCCL path of dist_nccl.h (issue 17). Run alone, it sums a device buffer in a
 * world of one where a GPU is visible (ncclAllReduce of one rank gives the buffer back), then,
 * where 2+ GPUs are visible and this build has MPI, runs itself under `mpirun -np 2`: each rank
 * fills a device buffer of an odd size with its own values (exact in fp32), ncclAllReduce sums
 * it in place, and the result must equal the rank sum exactly and dist_sum_floats (MPI, on the
 * host) of the same values. Skips, with a message, without NCCL (no nvcc/nccl.h at build
 * time), without a GPU, or with fewer than 2 GPUs for the 2-rank part. GPU data-parallel
 * training itself waits for GPU training (issue 14). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"
#include "src/dist.h"
#include "src/dist_nccl.h"

#ifdef TUNA_HAVE_NCCL /* the Makefile's NCCL rows: nvcc and nccl.h found */
#include <cuda_runtime_api.h>

#define N 1000003 /* odd: not a multiple of any chunk */

/* rank r's value at i: small multiples of 1/4, so that sums over ranks are exact */
static float value(int r, size_t i) {
    return (float)(r + 1) * (float)((int)(i % 13) - 6) * 0.25f;
}

/* fills a device buffer with rank r's values, sums it over the ranks with NCCL; 0 on success */
static int nccl_sum_check(void) {
    TunaErr err = {0};
    int r = dist_rank(), W = dist_world();
    int rc = dist_nccl_init(&err);
    CHECK(!rc, "dist_nccl_init: %s", err.msg);
    if (rc) return 1;
    float *h = malloc(sizeof(float) * N), *mpi = malloc(sizeof(float) * N), *d = NULL;
    for (size_t i = 0; i < N; i++)
        mpi[i] = h[i] = value(r, i);
    CHECK(cudaMalloc((void **)&d, sizeof(float) * N) == cudaSuccess, "cudaMalloc");
    CHECK(cudaMemcpy(d, h, sizeof(float) * N, cudaMemcpyHostToDevice) == cudaSuccess, "upload");
    rc = dist_nccl_sum_floats(d, N, &err);
    CHECK(!rc, "dist_nccl_sum_floats: %s", err.msg);
    CHECK(cudaMemcpy(h, d, sizeof(float) * N, cudaMemcpyDeviceToHost) == cudaSuccess, "download");
    CHECK(!dist_sum_floats(mpi, N, &err), "dist_sum_floats: %s", err.msg);
    size_t bad = 0, bad_mpi = 0;
    for (size_t i = 0; i < N; i++) {
        float want = 0;
        for (int k = 0; k < W; k++)
            want += value(k, i);
        bad += h[i] != want;
        bad_mpi += h[i] != mpi[i];
    }
    CHECK(!bad, "rank %d: %zu of %d sums differ from the exact rank sum", r, bad, N);
    CHECK(!bad_mpi, "rank %d: %zu of %d sums differ from MPI's", r, bad_mpi, N);
    printf("test_nccl: rank %d of %d on GPU %d: ncclAllReduce of %d floats %s\n", r, W,
           dist_nccl_device(), N, bad || bad_mpi ? "WRONG" : "exact (and == MPI's sum)");
    cudaFree(d);
    free(h);
    free(mpi);
    dist_nccl_free();
    return 0;
}
#else
static int nccl_sum_check(void) {
    return 1; /* dist_nccl_available() is 0: never called */
}
#endif

int main(int argc, char **argv) {
    (void)argc;
    TunaErr err = {0};
    CHECK(!dist_init(&err), "dist_init: %s", err.msg);
    if (!dist_nccl_available()) {
        SKIP("built without NCCL (nvcc and nccl.h: see the Makefile's NCCL rows)");
        return test_report("test_nccl");
    }
    int gpus = dist_nccl_devices();
    if (dist_world() > 1) { /* a rank of the 2-rank run below */
        nccl_sum_check();
        return test_report("test_nccl");
    }
    if (gpus < 1) {
        SKIP("no GPU is visible: the NCCL allreduce does not run here");
        return test_report("test_nccl");
    }
    nccl_sum_check(); /* a world of one: the buffer comes back as it was */
    if (gpus < 2) {
        SKIP("%d GPU visible: the 2-rank ncclAllReduce needs 2 or more", gpus);
    } else if (!dist_available()) {
        SKIP("%d GPUs, but this build has no MPI for the 2-rank run (make MPI=1)", gpus);
    } else {
        char self[PATH_MAX], cmd[PATH_MAX + 128];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        CHECK(n > 0, "readlink /proc/self/exe");
        if (n > 0) {
            self[n] = '\0';
            snprintf(cmd, sizeof cmd, "mpirun %s--bind-to none --oversubscribe -np 2 '%s'",
                     getuid() == 0 ? "--allow-run-as-root " : "", self);
            int st = system(cmd);
            CHECK(st == 0, "%s: exit status %d", cmd, st);
        }
    }
    (void)argv;
    return test_report("test_nccl");
}
