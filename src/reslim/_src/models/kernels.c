/* Fused CPU kernels for the block GEMMs of a GD step with few samples (float64).
 *
 * With N (samples) small, x @ W and x @ W^T are memory-bound: each should read the big
 * weight W once. BLAS packs W on every call (about 3 passes); these kernels stream it once and
 * fuse the rank-N gradient update into the same pass (one read-modify-write), so a GD step of
 * a two-layer block touches U and V six times in all: the least any implementation can.
 *
 * Layout: batch b, row-major inner matrices; strides are in elements (0 = broadcast).
 *   x: (B, N, K) with batch stride xs      W: (B, D, M) with batch stride ws
 */
#include <stdint.h>
#include <string.h>

#define BM 64   /* columns of W per task in the axpy-form kernels */
#define NMAX 64 /* most samples per call (the caller falls back above) */

/* out[b] (N, M) = x[b] (N, D) @ W[b] (D, M);
 * if coef != 0 also W[b] += coef[b] * left[b]^T (D, N) @ right[b] (N, M), after reading W. */
static void xw_impl(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                    double *W, int64_t ws, double *out, int64_t os, const double *left, int64_t ls,
                    const double *right, int64_t rs, const double *coef, int nt) {
    const int64_t nblk = (M + BM - 1) / BM;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * nblk; ++t) {
        const int64_t b = t / nblk, lo = (t % nblk) * BM;
        const int64_t w = (M - lo < BM) ? M - lo : BM;
        double acc[NMAX][BM] __attribute__((aligned(64)));
        double r[NMAX][BM] __attribute__((aligned(64)));
        memset(acc, 0, sizeof(double) * N * BM);
        const double *xb = x + b * xs;
        double *Wb = W + b * ws;
        const int update = coef != 0;
        if (update) {
            const double cb = coef[b];
            for (int64_t n = 0; n < N; ++n)
                for (int64_t m = 0; m < w; ++m) r[n][m] = cb * right[b * rs + n * M + lo + m];
        }
        for (int64_t d = 0; d < D; ++d) {
            double *restrict row = Wb + d * M + lo;
            for (int64_t n = 0; n < N; ++n) {
                const double c = xb[n * D + d];
                double *restrict a = acc[n];
#pragma omp simd
                for (int64_t m = 0; m < w; ++m) a[m] += c * row[m];
            }
            if (update) {
                const double *lb = left + b * ls;
                for (int64_t n = 0; n < N; ++n) {
                    const double c = lb[n * D + d];
                    const double *restrict rn = r[n];
#pragma omp simd
                    for (int64_t m = 0; m < w; ++m) row[m] += c * rn[m];
                }
            }
        }
        double *ob = out + b * os;
        for (int64_t n = 0; n < N; ++n) memcpy(ob + n * M + lo, acc[n], sizeof(double) * w);
    }
}

/* out[b] (N, D) += alpha * x[b] (N, M) @ W[b]^T (W: (D, M));
 * if coef != 0 also W[b] += coef[b] * left[b]^T (D, N) @ right[b] (N, M), after reading W. */
static void xwt_impl(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                     double *W, int64_t ws, double *out, int64_t os, double alpha,
                     const double *left, int64_t ls, const double *right, int64_t rs,
                     const double *coef, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * D; ++t) {
        const int64_t b = t / D, d = t % D;
        double *restrict row = W + b * ws + d * M;
        const double *xb = x + b * xs;
        for (int64_t n = 0; n < N; ++n) {
            const double *restrict xn = xb + n * M;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t m = 0; m < M; ++m) s += xn[m] * row[m];
            out[b * os + n * D + d] += alpha * s;
        }
        if (coef != 0) {
            const double cb = coef[b];
            for (int64_t n = 0; n < N; ++n) {
                const double c = cb * left[b * ls + n * D + d];
                const double *restrict rn = right + b * rs + n * M;
#pragma omp simd
                for (int64_t m = 0; m < M; ++m) row[m] += c * rn[m];
            }
        }
    }
}

int reslim_nmax(void) { return NMAX; }

void reslim_xw(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs, double *W,
               int64_t ws, double *out, int64_t os, const double *left, int64_t ls,
               const double *right, int64_t rs, const double *coef, int nt) {
    xw_impl(B, N, D, M, x, xs, W, ws, out, os, left, ls, right, rs, coef, nt);
}

void reslim_xwt(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs, double *W,
                int64_t ws, double *out, int64_t os, double alpha, const double *left, int64_t ls,
                const double *right, int64_t rs, const double *coef, int nt) {
    xwt_impl(B, N, D, M, x, xs, W, ws, out, os, alpha, left, ls, right, rs, coef, nt);
}
