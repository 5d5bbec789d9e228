/* xalloc.h: small allocations that cannot fail. On out-of-memory they report the size
 * through tuna_panic and abort. Tensor-sized buffers go through the backend instead and
 * return TUNA_ENOMEM. Thread-safe. */
#ifndef TUNA_SRC_XALLOC_H
#define TUNA_SRC_XALLOC_H

#include <stddef.h>

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

#endif
