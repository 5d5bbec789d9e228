/* atomic_dir.h: atomic folders. A writer fills DIR.tmp-PID (dir_begin), then dir_commit renames
 * it over DIR (replacing an old one), so a reader sees the old folder or the new one, never half
 * of one. Used by adapter and checkpoint saves (peft.c), train.c and `tuna export`. */
#ifndef TUNA_SRC_ATOMIC_DIR_H
#define TUNA_SRC_ATOMIC_DIR_H

#include <stddef.h>

#include "err.h"

/* Makes DIR.tmp-PID (into tmp) to write into. */
int dir_begin(const char *dir, char *tmp, size_t cap, TunaErr *err);
/* Renames tmp over dir (replacing an old one). */
int dir_commit(const char *tmp, const char *dir, TunaErr *err);
/* Deletes a folder tree of our own output (best effort). */
void dir_remove(const char *dir);

#endif
