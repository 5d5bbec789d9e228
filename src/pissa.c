#include "pissa.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "xalloc.h"

/* LAPACK (Fortran ABI, from OpenBLAS): the divide-and-conquer SVD; the trailing size_t is
 * gfortran's hidden length of the character argument */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork,
             int *iwork, int *info, size_t jobz_len);

int pissa_factor(float *W, int out, int in, int r, float scale, float *A, float *B, TunaErr *err) {
    int k = out < in ? out : in;
    if (r < 1 || r > k)
        return tuna_errf(err, TUNA_EINVAL,
                         "PiSSA: rank %d is more than the %d singular values of a %d x %d weight",
                         r, k, out, in);
    /* W row-major (out, in) is Wᵀ column-major (in, out): Wᵀ = U'·S·V'ᵀ gives W = V'·S·U'ᵀ, so
     * W's left vectors are V' (rows of vt) and its right vectors the columns of U' */
    int m = in, n = out, lda = in, ldu = in, ldvt = k, lwork = -1, info = 0;
    double *a = xmalloc(sizeof(double) * (size_t)in * out), *s = xmalloc(sizeof(double) * k);
    double *u = xmalloc(sizeof(double) * (size_t)in * k),
           *vt = xmalloc(sizeof(double) * (size_t)k * out);
    int *iwork = xmalloc(sizeof(int) * 8 * (size_t)k);
    for (size_t i = 0; i < (size_t)in * out; i++)
        a[i] = (double)W[i];
    double q = 0;
    dgesdd_("S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, &q, &lwork, iwork, &info, 1);
    double *work = NULL;
    if (!info) {
        lwork = (int)q + 1;
        work = xmalloc(sizeof(double) * (size_t)lwork);
        dgesdd_("S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, &info, 1);
    }
    int rc = 0;
    if (info) {
        rc = tuna_errf(err, TUNA_EINVAL, "PiSSA: the SVD of a %d x %d weight failed (info %d)", out,
                       in, info);
    } else {
        /* peft in fp32: Sr /= scale; A = diag(sqrt(Sr)) Uhr; B = Vr diag(sqrt(Sr)) */
        for (int j = 0; j < r; j++) {
            double sq = sqrt(s[j] / (double)scale);
            for (int i = 0; i < in; i++)
                A[(size_t)j * in + i] = (float)(sq * u[(size_t)j * ldu + i]);
            for (int o = 0; o < out; o++)
                B[(size_t)o * r + j] = (float)(sq * vt[(size_t)o * ldvt + j]);
        }
        /* the residual from the fp32 A and B, as peft subtracts them */
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                double d = 0;
                for (int j = 0; j < r; j++)
                    d += (double)B[(size_t)o * r + j] * (double)A[(size_t)j * in + i];
                W[(size_t)o * in + i] = (float)((double)W[(size_t)o * in + i] - (double)scale * d);
            }
    }
    free(a);
    free(s);
    free(u);
    free(vt);
    free(iwork);
    free(work);
    return rc;
}
