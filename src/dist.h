/* dist.h: data-parallel processes. Built with MPI (make MPI=1, -DTUNA_HAVE_MPI) and started by
 * mpirun, dist_init joins the MPI world (rank, world size); otherwise, and in a plain build, it
 * is one process of a world of one and every call below is a no-op. Collectives are blocking
 * and every rank must make the same calls in the same order.
 * Faults: a collective that fails, or that runs longer than the timeout (a rank hung or died),
 * ends the whole job: one line on stderr naming this rank, the collective and the step, then
 * MPI_Abort. The collectives below return an error only in a world of one. */
#ifndef TUNA_SRC_DIST_H
#define TUNA_SRC_DIST_H

#include <stddef.h>

#include "err.h"

/* Joins the world (MPI_Init_thread, funneled) once; later calls return 0 at once. Returns 0 or
 * a TUNA_* code with err set. */
int dist_init(TunaErr *err);
int dist_rank(void);  /* 0 .. world-1; 0 in one process */
int dist_world(void); /* the number of ranks; 1 in one process */
/* The ranks on this host (OMPI_COMM_WORLD_LOCAL_SIZE or MPI's shared-memory split); 1 alone. */
int dist_local_world(void);
/* In-place sums over the ranks of x[0..n). */
int dist_sum_floats(float *x, size_t n, TunaErr *err);
int dist_sum_doubles(double *x, size_t n, TunaErr *err);
int dist_sum_longs(long *x, size_t n, TunaErr *err);
void dist_barrier(void);
/* Leaves the world (MPI_Finalize) if dist_init joined one. */
void dist_finalize(void);
/* Every collective runs between these two (what: its name, a string literal): a watchdog thread
 * started by dist_init ends the job when one runs longer than the timeout. */
void dist_enter(const char *what);
void dist_leave(void);
/* The watchdog's limit in seconds (train option dist_timeout; 300 until set; <= 0 keeps it). */
void dist_set_timeout(double seconds);
/* The training step the fault lines name. */
void dist_set_step(int step);
/* Rank 0: the run folder, written for `tuna train --nproc` (the file named by $TUNA_NPROC_STATUS)
 * so that it can record a job that died in the run's metrics.jsonl. */
void dist_note_run(const char *dir);
/* 1 when this binary was built with MPI. */
int dist_available(void);

/* --- sharded optimizer state (--zero 1): the parts of one array, spread over the ranks.
 * counts[r] (world of them) is how many values rank r holds; the parts lie end to end in rank
 * order. Every count and their sum must fit an int (MPI's counts): callers pass windows. */

/* In place onto every rank (MPI_Allgatherv): x holds the sum of counts values, rank r's own
 * part already at its offset (the sum of counts[0..r)); the others' parts are filled in. A world
 * of one has nothing to fetch. */
int dist_allgather_floats(float *x, const size_t *counts, TunaErr *err);
/* Onto rank 0 (MPI_Gatherv): rank r sends mine[0..counts[r]); rank 0 receives every part, end
 * to end, into all (the sum of counts values; read on rank 0 only, NULL allowed elsewhere). A
 * world of one copies mine into all. */
int dist_gather_floats(const float *mine, float *all, const size_t *counts, TunaErr *err);

// --- non-blocking sums (the gradient buckets of src/train.c)

/* The sums started and not yet waited for, owned by the caller: zero it to start ({0}), free
 * it with dist_pending_free. One thread (the one that joined) uses it. */
typedef struct DistPending {
    void *req; /* MPI_Request[cap] */
    int n, cap;
} DistPending;
/* Starts the in-place sum over the ranks of x[0..n) (MPI_Iallreduce; several when n exceeds an
 * int) and returns; x must stay untouched until dist_wait. Every rank starts the same sums in the
 * same order. A no-op in a world of one. */
int dist_isum_floats(DistPending *p, float *x, size_t n, TunaErr *err);
/* Drives the started sums on (MPI_Testall): 1 when all are done, 0 when some are not. */
int dist_test(DistPending *p);
/* Waits for all the started sums; p is then empty (its memory kept). */
int dist_wait(DistPending *p, TunaErr *err);
void dist_pending_free(DistPending *p);

/* Copies root's buf[0..n) to every rank (MPI_Bcast; a no-op in a world of one). */
int dist_bcast_bytes(void *buf, size_t n, int root, TunaErr *err);

#endif
