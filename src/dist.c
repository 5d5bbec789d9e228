/* dist.c: the data-parallel layer of dist.h over MPI, or a world of one without it. */
#include "dist.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef TUNA_HAVE_MPI
#include <mpi.h>

static int joined, rank, world = 1, local_world = 1;

/* started by mpirun (Open MPI, or a PMI launcher): a plain start stays a world of one */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

int dist_init(TunaErr *err) {
    int ok = 0;
    if (joined || !launched()) return 0;
    MPI_Initialized(&ok);
    if (!ok) {
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return tuna_errf(err, TUNA_EIO, "MPI_Init_thread failed");
    }
    joined = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_size(node, &local_world);
        MPI_Comm_free(&node);
    }
    atexit(dist_finalize);
    return 0;
}

int dist_rank(void) {
    return rank;
}
int dist_world(void) {
    return world;
}
int dist_local_world(void) {
    return local_world;
}
int dist_available(void) {
    return 1;
}

/* MPI counts are ints: large arrays go in pieces */
static int sum(void *x, size_t n, size_t esz, MPI_Datatype t, TunaErr *err) {
    if (world == 1) return 0;
    char *p = x;
    while (n) {
        int k = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        if (MPI_Allreduce(MPI_IN_PLACE, p, k, t, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
            return tuna_errf(err, TUNA_EIO, "MPI_Allreduce of %d values failed", k);
        p += (size_t)k * esz;
        n -= (size_t)k;
    }
    return 0;
}

int dist_sum_floats(float *x, size_t n, TunaErr *err) {
    return sum(x, n, sizeof *x, MPI_FLOAT, err);
}
int dist_sum_doubles(double *x, size_t n, TunaErr *err) {
    return sum(x, n, sizeof *x, MPI_DOUBLE, err);
}
int dist_sum_longs(long *x, size_t n, TunaErr *err) {
    return sum(x, n, sizeof *x, MPI_LONG, err);
}

void dist_barrier(void) {
    if (joined && world > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void dist_finalize(void) {
    int done = 0;
    if (!joined) return;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
    joined = 0;
}

#else /* one process */

int dist_init(TunaErr *err) {
    (void)err;
    return 0;
}
int dist_rank(void) {
    return 0;
}
int dist_world(void) {
    return 1;
}
int dist_local_world(void) {
    return 1;
}
int dist_available(void) {
    return 0;
}
int dist_sum_floats(float *x, size_t n, TunaErr *err) {
    (void)x, (void)n, (void)err;
    return 0;
}
int dist_sum_doubles(double *x, size_t n, TunaErr *err) {
    (void)x, (void)n, (void)err;
    return 0;
}
int dist_sum_longs(long *x, size_t n, TunaErr *err) {
    (void)x, (void)n, (void)err;
    return 0;
}
void dist_barrier(void) {}
void dist_finalize(void) {}

#endif

// --- sharded optimizer state (--zero 1): parts of one array over the ranks

#ifdef TUNA_HAVE_MPI

/* counts (size_t, world) -> MPI's int counts and displacements; TUNA_EINVAL when they do not
 * fit an int */
static int int_parts(const size_t *counts, int **cnt, int **dsp, TunaErr *err) {
    size_t at = 0;
    *cnt = malloc(sizeof(int) * (size_t)world);
    *dsp = malloc(sizeof(int) * (size_t)world);
    for (int r = 0; *cnt && *dsp && r < world; r++) {
        if (counts[r] > (size_t)INT_MAX - at) {
            free(*cnt), free(*dsp);
            return tuna_errf(err, TUNA_EINVAL, "a gather of more than %d values at once", INT_MAX);
        }
        (*cnt)[r] = (int)counts[r];
        (*dsp)[r] = (int)at;
        at += counts[r];
    }
    if (!*cnt || !*dsp) {
        free(*cnt), free(*dsp);
        return tuna_errf(err, TUNA_ENOMEM, "cannot allocate the counts of %d ranks", world);
    }
    return 0;
}

int dist_allgather_floats(float *x, const size_t *counts, TunaErr *err) {
    int *cnt, *dsp, rc;
    if (world == 1) return 0;
    if ((rc = int_parts(counts, &cnt, &dsp, err))) return rc;
    if (MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, cnt, dsp, MPI_FLOAT,
                       MPI_COMM_WORLD) != MPI_SUCCESS)
        rc = tuna_errf(err, TUNA_EIO, "MPI_Allgatherv of %d values (rank %d's) failed", cnt[rank],
                       rank);
    free(cnt);
    free(dsp);
    return rc;
}

int dist_gather_floats(const float *mine, float *all, const size_t *counts, TunaErr *err) {
    int *cnt, *dsp, rc;
    if (world == 1) {
        if (counts[0]) memmove(all, mine, sizeof(float) * counts[0]);
        return 0;
    }
    if ((rc = int_parts(counts, &cnt, &dsp, err))) return rc;
    if (MPI_Gatherv(mine, cnt[rank], MPI_FLOAT, all, cnt, dsp, MPI_FLOAT, 0, MPI_COMM_WORLD) !=
        MPI_SUCCESS)
        rc = tuna_errf(err, TUNA_EIO, "MPI_Gatherv of %d values (rank %d's) failed", cnt[rank],
                       rank);
    free(cnt);
    free(dsp);
    return rc;
}

#else /* one process */

int dist_allgather_floats(float *x, const size_t *counts, TunaErr *err) {
    (void)x, (void)counts, (void)err;
    return 0;
}
int dist_gather_floats(const float *mine, float *all, const size_t *counts, TunaErr *err) {
    (void)err;
    if (counts[0]) memmove(all, mine, sizeof(float) * counts[0]);
    return 0;
}

#endif
