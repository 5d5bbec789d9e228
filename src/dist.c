/* dist.c: the data-parallel layer of dist.h over MPI, or a world of one without it.
 *
 * Faults: the world communicator returns errors (MPI_ERRORS_RETURN) instead of MPI's default
 * abort, so a failed collective is said in one line (rank, collective, step) before the job is
 * aborted (MPI_Abort: mpirun then ends every rank). A rank that hangs fails nothing: every
 * collective runs between dist_enter and dist_leave, and a watchdog thread that finds one
 * running longer than the timeout says so in one line and aborts the job the same way. The
 * watchdog calls MPI only where MPI_Init_thread granted MPI_THREAD_MULTIPLE (Open MPI does);
 * under a lesser level it ends its process with _exit instead, and mpirun ends the job because a
 * rank exited without MPI_Finalize. */
#include "dist.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

#ifdef TUNA_HAVE_MPI
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int joined, rank, world = 1, local_world = 1, thread_level = MPI_THREAD_SINGLE;

// --- the collective in progress and the watchdog that times it

/* what: the collective's name while one runs (NULL between); since: its start (monotonic ms);
 * step: the step the trainer said; timeout_ms: dist_set_timeout's. Written by the rank's
 * thread, read by the watchdog. */
static _Atomic(const char *) cur_what;
static atomic_llong cur_since, timeout_ms = 300000;
static atomic_int cur_step = -1, wd_quit;
static pthread_t wd_thread;
static int wd_started;
static pthread_mutex_t wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cv = PTHREAD_COND_INITIALIZER;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* " at step N" or "" before the first step */
static void step_text(char *buf, size_t cap) {
    int s = atomic_load(&cur_step);
    if (s >= 0)
        snprintf(buf, cap, " at step %d", s);
    else
        snprintf(buf, cap, " before the first step");
}

/* One line on stderr, then the whole job ends (mpirun ends the other ranks). other_thread: the
 * caller is not the thread that initialized MPI (the watchdog). */
static void die(const char *line, int other_thread) {
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
    if (other_thread && thread_level < MPI_THREAD_MULTIPLE) _exit(1);
    /* MPI_Abort waits for mpirun's word; with a peer's host cut off that can take forever, so
     * this rank ends in 30 s regardless (SIGALRM's default action) */
    signal(SIGALRM, SIG_DFL);
    alarm(30);
    MPI_Abort(MPI_COMM_WORLD, 1);
    _exit(1); /* not reached: MPI_Abort does not return */
}

static void *watchdog(void *arg) {
    (void)arg;
    pthread_mutex_lock(&wd_mu);
    while (!atomic_load(&wd_quit)) {
        long long t = atomic_load(&timeout_ms),
                  poll = t / 4 < 1000 ? (t / 4 > 50 ? t / 4 : 50) : 1000;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += poll / 1000;
        until.tv_nsec += (poll % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&wd_cv, &wd_mu, &until);
        const char *what = atomic_load(&cur_what);
        long long since = atomic_load(&cur_since);
        if (!what || atomic_load(&wd_quit) || now_ms() - since < t) continue;
        char line[400], st[48];
        step_text(st, sizeof st);
        snprintf(line, sizeof line,
                 "tuna: rank %d of %d: %s waited %.0f s%s: another rank hung or died "
                 "(dist_timeout %.0f s); stopping the job",
                 rank, world, what, (double)(now_ms() - since) / 1000, st, (double)t / 1000);
        die(line, 1);
    }
    pthread_mutex_unlock(&wd_mu);
    return NULL;
}

void dist_enter(const char *what) {
    atomic_store(&cur_since, now_ms());
    atomic_store(&cur_what, what);
}

void dist_leave(void) {
    atomic_store(&cur_what, (const char *)NULL);
}

void dist_set_timeout(double seconds) {
    if (seconds > 0) atomic_store(&timeout_ms, (long long)(seconds * 1000));
}

void dist_set_step(int step) {
    atomic_store(&cur_step, step);
}

/* A collective returned rc: one line and the job ends. Returns only in a world of one. */
static int failed(const char *what, int rc, TunaErr *err) {
    char msg[MPI_MAX_ERROR_STRING] = "", line[MPI_MAX_ERROR_STRING + 300], st[48];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    step_text(st, sizeof st);
    snprintf(line, sizeof line, "tuna: rank %d of %d: %s failed%s: %s; stopping the job", rank,
             world, what, st, msg);
    if (joined && world > 1) die(line, 0);
    return tuna_errf(err, TUNA_EIO, "%s", line + 6);
}

void dist_note_run(const char *dir) {
    const char *path = getenv("TUNA_NPROC_STATUS");
    if (rank || !path || !*path) return;
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "%s\n", dir);
    fclose(f);
}

// --- joining and leaving

/* started by mpirun (Open MPI, or a PMI launcher): a plain start stays a world of one */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

int dist_init(TunaErr *err) {
    int ok = 0;
    if (joined || !launched()) return 0;
    MPI_Initialized(&ok);
    if (!ok) {
        /* MULTIPLE for the watchdog's MPI_Abort alone: only the main thread calls MPI otherwise */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &thread_level) != MPI_SUCCESS)
            return tuna_errf(err, TUNA_EIO, "MPI_Init_thread failed");
    } else {
        MPI_Query_thread(&thread_level);
    }
    joined = 1;
    /* a failed collective comes back to failed(), which names the rank before aborting */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_size(node, &local_world);
        MPI_Comm_free(&node);
    }
    if (world > 1) {
        atomic_store(&wd_quit, 0);
        wd_started = !pthread_create(&wd_thread, NULL, watchdog, NULL);
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
        dist_enter("MPI_Allreduce");
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, k, t, MPI_SUM, MPI_COMM_WORLD);
        dist_leave();
        if (rc != MPI_SUCCESS) return failed("MPI_Allreduce", rc, err);
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
    if (!joined || world == 1) return;
    dist_enter("MPI_Barrier");
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    dist_leave();
    if (rc != MPI_SUCCESS) failed("MPI_Barrier", rc, NULL);
}

void dist_finalize(void) {
    int done = 0;
    if (!joined) return;
    if (wd_started) {
        pthread_mutex_lock(&wd_mu);
        atomic_store(&wd_quit, 1);
        pthread_cond_signal(&wd_cv);
        pthread_mutex_unlock(&wd_mu);
        pthread_join(wd_thread, NULL);
        wd_started = 0;
    }
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
void dist_enter(const char *what) {
    (void)what;
}
void dist_leave(void) {}
void dist_set_timeout(double seconds) {
    (void)seconds;
}
void dist_set_step(int step) {
    (void)step;
}
void dist_note_run(const char *dir) {
    (void)dir;
}

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
    dist_enter("MPI_Allgatherv");
    int mrc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, cnt, dsp, MPI_FLOAT,
                             MPI_COMM_WORLD);
    dist_leave();
    if (mrc != MPI_SUCCESS) rc = failed("MPI_Allgatherv", mrc, err);
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
    dist_enter("MPI_Gatherv");
    int mrc = MPI_Gatherv(mine, cnt[rank], MPI_FLOAT, all, cnt, dsp, MPI_FLOAT, 0, MPI_COMM_WORLD);
    dist_leave();
    if (mrc != MPI_SUCCESS) rc = failed("MPI_Gatherv", mrc, err);
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
        int rc = MPI_Iallreduce(MPI_IN_PLACE, x, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, r);
        if (rc != MPI_SUCCESS) return failed("MPI_Iallreduce", rc, err);
        p->n++;
        x += k;
        n -= (size_t)k;
    }
    return 0;
}

int dist_bcast_bytes(void *buf, size_t n, int root, TunaErr *err) {
    if (world == 1) return 0;
    if (n > (size_t)INT_MAX) return tuna_errf(err, TUNA_EINVAL, "broadcast of %zu bytes", n);
    dist_enter("MPI_Bcast");
    int rc = MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
    dist_leave();
    return rc == MPI_SUCCESS ? 0 : failed("MPI_Bcast", rc, err);
}

int dist_test(DistPending *p) {
    int done = 1;
    if (p->n) MPI_Testall(p->n, p->req, &done, MPI_STATUSES_IGNORE);
    return done;
}

int dist_wait(DistPending *p, TunaErr *err) {
    int n = p->n;
    p->n = 0;
    if (!n) return 0;
    dist_enter("MPI_Waitall (gradient buckets)");
    int rc = MPI_Waitall(n, p->req, MPI_STATUSES_IGNORE);
    dist_leave();
    return rc == MPI_SUCCESS ? 0 : failed("MPI_Waitall", rc, err);
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
