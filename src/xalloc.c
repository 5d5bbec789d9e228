#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

static void oom(size_t n) {
    char what[64];
    snprintf(what, sizeof what, "out of memory allocating %zu bytes", n);
    tuna_panic(__FILE__, __LINE__, what);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) oom(count * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *xstrdup(const char *s) {
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xread_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = xrealloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

const char *bundled_path(const char *rel, char *buf, size_t cap) {
    struct stat st;
    if (!rel || rel[0] == '/' || stat(rel, &st) == 0) return rel;
    char exe[2048];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return rel;
    exe[n] = '\0';
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash) break;
        *slash = '\0';
        snprintf(buf, cap, "%s/%s", exe, rel);
        if (stat(buf, &st) == 0) return buf;
    }
    return rel;
}

int xmap_readonly(const char *path, size_t min_size, const char *min_what, const char *open_what,
                  void **map, size_t *size, TunaErr *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* no hang on a FIFO */
    if (fd < 0) {
        int e = errno;
        int code = e == ENOENT ? TUNA_ENOTFOUND : TUNA_EIO;
        if (open_what)
            return tuna_errf(err, code, "%s: cannot open %s: %s", path, open_what, strerror(e));
        return tuna_errf(err, code, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return tuna_errf(err, TUNA_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return tuna_errf(err, TUNA_EFORMAT, "%s: expected a regular file, found %s", path,
                         S_ISDIR(sb.st_mode) ? "a directory" : "a special file");
    }
    if (sb.st_size < (off_t)min_size) {
        close(fd);
        return tuna_errf(err, TUNA_EFORMAT, "%s: file is %lld bytes, expected at least %zu (%s)",
                         path, (long long)sb.st_size, min_size, min_what);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return tuna_errf(err, TUNA_EUNSUP, "%s: file of %lld bytes is too large to map", path,
                         (long long)sb.st_size);
    }
    *size = (size_t)sb.st_size;
    void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return tuna_errf(err, TUNA_EIO, "%s: mmap of %zu bytes failed: %s", path, *size,
                         strerror(e));
    *map = m;
    return 0;
}
