/* atomic_dir.c: a folder written whole or not at all (atomic_dir.h). */
#include "atomic_dir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Removes a folder of plain files (our own temporary output). */
void dir_remove(const char *dir) {
    if (strchr(dir, 0x27)) return; /* never quote-break the shell */
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) { /* best effort */
    }
}

/* Makes DIR.tmp-PID to write into; commit_dir renames it over dir (replacing an old one). */
int dir_begin(const char *dir, char *tmp, size_t cap, TunaErr *err) {
    snprintf(tmp, cap, "%s.tmp-%d", dir, (int)getpid());
    dir_remove(tmp);
    if (mkdir(tmp, 0755) && errno != EEXIST)
        return tuna_errf(err, TUNA_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    return 0;
}

int dir_commit(const char *tmp, const char *dir, TunaErr *err) {
    char old[4200];
    snprintf(old, sizeof old, "%s.old-%d", dir, (int)getpid());
    struct stat sb;
    int had = stat(dir, &sb) == 0;
    if (had && rename(dir, old))
        return tuna_errf(err, TUNA_EIO, "%s: cannot replace: %s", dir, strerror(errno));
    if (rename(tmp, dir)) {
        if (had) rename(old, dir);
        return tuna_errf(err, TUNA_EIO, "%s: cannot rename into place: %s", dir, strerror(errno));
    }
    if (had) dir_remove(old);
    return 0;
}
