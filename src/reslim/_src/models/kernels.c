/* Fused CPU kernels for the block GEMMs of a GD step with few samples (float64; float32 too
 * where the register-tiled versions build).
 *
 * With N (samples) small, x @ W and x @ W^T are memory-bound: each should read the big
 * weight W once. BLAS packs W on every call (about 3 passes); these kernels stream it once and
 * fuse the rank-N gradient update into the same pass (one read-modify-write), so a GD step of
 * a two-layer block touches U and V six times in all: the least a dense update can.
 *
 * Two implementations of each kernel: register-tiled AVX2/FMA intrinsics (kernels_tiled.inc,
 * for float64 and float32) where the compiler targets them, and portable float64 C loops (the
 * *_generic functions) elsewhere or with -DRESLIM_GENERIC. The Python side (kernels.py) builds,
 * loads and tests both.
 *
 * Layout: batch b, row-major inner matrices; strides are in elements (0 = broadcast).
 *   x: (B, N, K) with batch stride xs      W: (B, D, M) with batch stride ws
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BM 64   /* columns of W per task in the portable x @ W */
#define NMAX 64 /* most samples per call (the caller falls back above) */

/* out[b] (N, M) = alpha * x[b] (N, D) @ W[b] (D, M);
 * if coef != 0 also W[b] += coef[b] * left[b]^T (D, N) @ right[b] (N, M), after reading W. */
__attribute__((unused)) static void xw_generic(int64_t B, int64_t N, int64_t D, int64_t M,
        const double *x, int64_t xs, double *W, int64_t ws, double *out, int64_t os, double alpha,
        const double *left, int64_t ls, const double *right, int64_t rs, const double *coef,
        int nt) {
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
        for (int64_t n = 0; n < N; ++n)
            for (int64_t m = 0; m < w; ++m) ob[n * M + lo + m] = alpha * acc[n][m];
    }
}

/* out[b] (N, D) = base[b] + alpha * x[b] (N, M) @ W[b]^T (W: (D, M)); base may be out;
 * if coef != 0 also W[b] += coef[b] * left[b]^T (D, N) @ right[b] (N, M), after reading W. */
__attribute__((unused)) static void xwt_generic(int64_t B, int64_t N, int64_t D, int64_t M,
        const double *x, int64_t xs, double *W, int64_t ws, double *out, int64_t os,
        const double *base, int64_t bs, double alpha, const double *left, int64_t ls,
        const double *right, int64_t rs, const double *coef, int nt) {
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
            out[b * os + n * D + d] = base[b * bs + n * D + d] + alpha * s;
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


#if defined(__AVX2__) && defined(__FMA__) && !defined(RESLIM_GENERIC)
#include <immintrin.h>
/* Register-tiled AVX2/FMA versions (kernels_tiled.inc), for float64 and float32. Every weight
 * element is read from memory once per call; the products accumulate in a tile of ymm
 * registers that stays there while a block of W's rows streams through, so each FMA costs
 * under one load and no store. The update reuses the block while it is still in L1. */

/* Keeps v in a register: stops the compiler from folding one load into every FMA that uses v. */
#define IN_REGISTER(v) __asm__("" : "+x"(v))

#define TILE_NB 5 /* samples per register tile: 10 accumulators, of the 16 ymm registers */

/* Calls CALL(k) with the constant k = nb (1 <= nb <= 5): register tiles need a constant. */
#define WITH_CONSTANT_NB(nb, CALL)                                                            \
    switch (nb) {                                                                             \
        case 1: CALL(1); break;                                                               \
        case 2: CALL(2); break;                                                               \
        case 3: CALL(3); break;                                                               \
        case 4: CALL(4); break;                                                               \
        default: CALL(5); break;                                                              \
    }

/* Tuned at (D, M) = (1000, 1000), N = 10 on a 2-core Zen 3 (see bench/step.py); fewer rows per
 * task of x @ W^T mean fewer interleaved streams from DRAM. */
#define XW_RB 32       /* rows of W per block: a block's strips stay in L1 between the passes */
#define XW_AHEAD 768    /* bytes ahead (in the walk strip by strip) that x @ W prefetches */
#define XWT_CHUNK 1024 /* bytes of a row per chunk: the chunks of x and right stay in L1 */
#define XWT_RB 8       /* rows per task */
#define XWT_AHEAD 3    /* rows ahead that the walk prefetches (one chunk each) */

#define T double
#define S(name) name##_f64
#define LANES 4
#define STRIP 8
#define VT __m256d
#define VLOAD _mm256_load_pd
#define VLOADU _mm256_loadu_pd
#define VSTORE _mm256_store_pd
#define VSTOREU _mm256_storeu_pd
#define VBCAST _mm256_broadcast_sd
#define VFMA _mm256_fmadd_pd
#define VZERO _mm256_setzero_pd
#define VMASKLOAD _mm256_maskload_pd
#define VMASKSTORE _mm256_maskstore_pd
#define VTAILMASK(k) _mm256_cmpgt_epi64(_mm256_set1_epi64x(k), _mm256_set_epi64x(3, 2, 1, 0))
#include "kernels_tiled.inc"
#undef T
#undef S
#undef LANES
#undef STRIP
#undef VT
#undef VLOAD
#undef VLOADU
#undef VSTORE
#undef VSTOREU
#undef VBCAST
#undef VFMA
#undef VZERO
#undef VMASKLOAD
#undef VMASKSTORE
#undef VTAILMASK

#define T float
#define S(name) name##_f32
#define LANES 8
#define STRIP 16
#define VT __m256
#define VLOAD _mm256_load_ps
#define VLOADU _mm256_loadu_ps
#define VSTORE _mm256_store_ps
#define VSTOREU _mm256_storeu_ps
#define VBCAST _mm256_broadcast_ss
#define VFMA _mm256_fmadd_ps
#define VZERO _mm256_setzero_ps
#define VMASKLOAD _mm256_maskload_ps
#define VMASKSTORE _mm256_maskstore_ps
#define VTAILMASK(k) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k)), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0))
#include "kernels_tiled.inc"

#define xw_impl xw_impl_f64
#define xwt_impl xwt_impl_f64
#define HAS_FLOAT32 1
#else
#define xw_impl xw_generic
#define xwt_impl xwt_generic
#define HAS_FLOAT32 0
#endif

int reslim_nmax(void) { return NMAX; }

/* Whether reslim_xw_f32 and reslim_xwt_f32 exist (the float32 kernels need AVX2/FMA). */
int reslim_has_float32(void) { return HAS_FLOAT32; }

void reslim_xw(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs, double *W,
               int64_t ws, double *out, int64_t os, double alpha, const double *left, int64_t ls,
               const double *right, int64_t rs, const double *coef, int nt) {
    xw_impl(B, N, D, M, x, xs, W, ws, out, os, alpha, left, ls, right, rs, coef, nt);
}

void reslim_xwt(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs, double *W,
                int64_t ws, double *out, int64_t os, const double *base, int64_t bs, double alpha,
                const double *left, int64_t ls, const double *right, int64_t rs, const double *coef,
                int nt) {
    xwt_impl(B, N, D, M, x, xs, W, ws, out, os, base, bs, alpha, left, ls, right, rs, coef, nt);
}

#if HAS_FLOAT32
void reslim_xw_f32(int64_t B, int64_t N, int64_t D, int64_t M, const float *x, int64_t xs, float *W,
                   int64_t ws, float *out, int64_t os, double alpha, const float *left, int64_t ls,
                   const float *right, int64_t rs, const double *coef, int nt) {
    xw_impl_f32(B, N, D, M, x, xs, W, ws, out, os, alpha, left, ls, right, rs, coef, nt);
}

void reslim_xwt_f32(int64_t B, int64_t N, int64_t D, int64_t M, const float *x, int64_t xs, float *W,
                    int64_t ws, float *out, int64_t os, const float *base, int64_t bs, double alpha,
                    const float *left, int64_t ls, const float *right, int64_t rs,
                    const double *coef, int nt) {
    xwt_impl_f32(B, N, D, M, x, xs, W, ws, out, os, base, bs, alpha, left, ls, right, rs, coef, nt);
}
#endif
