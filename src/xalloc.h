/* xalloc.h: small allocations that cannot fail. On out-of-memory they report the size
 * through tuna_panic and abort. Tensor-sized buffers go through the backend instead and
 * return TUNA_ENOMEM. Thread-safe. */
#ifndef TUNA_SRC_XALLOC_H
#define TUNA_SRC_XALLOC_H

#include <stddef.h>

#include "err.h"

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Reads a whole file into a NUL-terminated buffer (caller frees). Returns NULL and sets
 * errno on failure; *len gets the byte count when not NULL. */
char *xread_file(const char *path, size_t *len);

/* rel (a path inside the checkout: "templates", "models/stories260K") as given when it exists
 * from the working directory; else the same path beside the tuna binary or one folder up
 * (build/tuna), written into buf, when that exists; else rel. For the bundled defaults only. */
const char *bundled_path(const char *rel, char *buf, size_t cap);

/* Maps path read-only and private: a regular file of at least min_size bytes (min_what names
 * them in the message). Opened with O_NONBLOCK, so a FIFO cannot hang the caller. open_what, when
 * not NULL, names the file in the open error ("PATH: cannot open WHAT: ..."). Returns 0 with *map
 * and *size (munmap when done), or a TunaErr code with one line naming path. */
int xmap_readonly(const char *path, size_t min_size, const char *min_what, const char *open_what,
                  void **map, size_t *size, TunaErr *err);

#endif
