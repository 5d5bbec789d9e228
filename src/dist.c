/* dist.c: the data-parallel layer of dist.h over MPI, or a world of one without it. */
#include "dist.h"

#include <limits.h>
#include <stdlib.h>

#include "xalloc.h"

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

// --- non-blocking sums

#ifdef TUNA_HAVE_MPI

int dist_isum_floats(DistPending *p, float *x, size_t n, TunaErr *err) {
    if (world == 1) return 0;
    while (n) {
        int k = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        if (p->n == p->cap) {
            p->cap = p->cap ? 2 * p->cap : 16;
            p->req = xrealloc(p->req, sizeof(MPI_Request) * (size_t)p->cap);
        }
        MPI_Request *r = (MPI_Request *)p->req + p->n;
        if (MPI_Iallreduce(MPI_IN_PLACE, x, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, r) !=
            MPI_SUCCESS)
            return tuna_errf(err, TUNA_EIO, "MPI_Iallreduce of %d values failed", k);
        p->n++;
        x += k;
        n -= (size_t)k;
    }
    return 0;
}

int dist_bcast_bytes(void *buf, size_t n, int root, TunaErr *err) {
    if (world == 1) return 0;
    if (n > (size_t)INT_MAX) return tuna_errf(err, TUNA_EINVAL, "broadcast of %zu bytes", n);
    if (MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD) != MPI_SUCCESS)
        return tuna_errf(err, TUNA_EIO, "MPI_Bcast of %zu bytes failed", n);
    return 0;
}

int dist_test(DistPending *p) {
    int done = 1;
    if (p->n) MPI_Testall(p->n, p->req, &done, MPI_STATUSES_IGNORE);
    return done;
}

int dist_wait(DistPending *p, TunaErr *err) {
    int n = p->n;
    p->n = 0;
    if (n && MPI_Waitall(n, p->req, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
        return tuna_errf(err, TUNA_EIO, "MPI_Waitall of %d gradient sums failed", n);
    return 0;
}

#else

int dist_isum_floats(DistPending *p, float *x, size_t n, TunaErr *err) {
    (void)p, (void)x, (void)n, (void)err;
    return 0;
}
int dist_bcast_bytes(void *buf, size_t n, int root, TunaErr *err) {
    (void)buf, (void)n, (void)root, (void)err;
    return 0;
}
int dist_test(DistPending *p) {
    (void)p;
    return 1;
}
int dist_wait(DistPending *p, TunaErr *err) {
    (void)err;
    p->n = 0;
    return 0;
}

#endif

void dist_pending_free(DistPending *p) {
    free(p->req);
    p->req = NULL;
    p->n = p->cap = 0;
}
