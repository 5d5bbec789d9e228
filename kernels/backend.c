/* backend.c: the backend registry, the one global table of the program. Order: cuda (when
 * compiled in), cpu, ref. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_backend.h"
#include "ref/ops_ref.h"
#ifdef TUNA_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

typedef Backend *(*BackendInit)(int n_threads, TunaErr *err);

static const struct {
    const char *name;
    BackendInit init;
} registry[] = {
#ifdef TUNA_HAVE_CUDA
        {"cuda", cuda_backend_init},
#endif
        {"cpu", cpu_backend_init},
        {"ref", ref_backend_init},
};

Backend *backend_init(const char *name, int n_threads, TunaErr *err) {
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++) {
        if (strcmp(registry[i].name, name)) continue;
        Backend *be = registry[i].init(n_threads, err);
        if (!be && err && !err->msg[0])
            tuna_errf(err, TUNA_EUNSUP, "backend \"%s\" could not start", name);
        return be;
    }
    tuna_errf(err, TUNA_EINVAL, "unknown backend \"%s\" (available: %s)", name, backend_list());
    return NULL;
}

void backend_free(Backend *be) {
    if (!be) return;
    if (be->ops->shutdown) be->ops->shutdown(be);
    free(be);
}

const char *backend_list(void) {
#ifdef TUNA_HAVE_CUDA
    return "cuda, cpu, ref";
#else
    return "cpu, ref";
#endif
}
