/* pissa.h: PiSSA initialisation (Meng et al. 2024) as PEFT's LoraLayer.pissa_init with
 * init_lora_weights="pissa": the top-r singular triplets of a base weight become the adapter,
 * the rest stays in the base. The SVD is LAPACK's dgesdd (OpenBLAS's LAPACK), in double. */
#ifndef TUNA_SRC_PISSA_H
#define TUNA_SRC_PISSA_H

#include "err.h"

/* W (out, in) row-major, host. With W = V·diag(S)·Uh (singular values descending) and
 * s = scale (the LoRA scale alpha/r or alpha/sqrt(r)):
 *   A = diag(sqrt(S[:r] / s)) · Uh[:r]      (r, in)
 *   B = V[:, :r] · diag(sqrt(S[:r] / s))    (out, r)
 *   W_res = W - s·B·A                       (out, in), written over W
 * so W_res + s·B·A = W. The signs of each singular pair are LAPACK's (B[:,j]·A[j,:] is not
 * affected). TUNA_EINVAL when r > min(out, in); TUNA_EINVAL when the SVD fails (a non-finite weight). */
int pissa_factor(float *W, int out, int in, int r, float scale, float *A, float *B, TunaErr *err);

#endif
