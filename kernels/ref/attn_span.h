/* attn_span.h: the keys one query sees, the same in every backend's attention forward and
 * backward. Query t of batch row b sits at position p = Tk - Tq + t and sees keys lo..p:
 * lo is 0, raised to p - window + 1 with a sliding window (window > 0), and raised to
 * kv_lo[b * Tq + t] when kv_lo is given (neat packing: the first position of the query's own
 * example, so that examples packed in one row do not see each other). lo never exceeds p. */
#ifndef TUNA_KERNELS_REF_ATTN_SPAN_H
#define TUNA_KERNELS_REF_ATTN_SPAN_H

#include <stddef.h>
#include <stdint.h>

#include "ops_hash.h" /* TUNA_HD */

static inline TUNA_HD int tuna_attn_lo(const int32_t *kv_lo, size_t row, int p, int window) {
    int lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
    if (kv_lo && kv_lo[row] > lo) lo = kv_lo[row];
    return lo < p ? lo : p;
}

#endif
