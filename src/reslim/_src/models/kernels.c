/* Fused CPU kernels for the block GEMMs of a GD step with few samples (float64).
 *
 * With N (samples) small, x @ W and x @ W^T are memory-bound: each should read the big
 * weight W once. BLAS packs W on every call (about 3 passes); these kernels stream it once and
 * fuse the rank-N gradient update into the same pass (one read-modify-write), so a GD step of
 * a two-layer block touches U and V six times in all: the least a dense update can.
 *
 * Two implementations of each kernel: register-blocked AVX2/FMA intrinsics where the compiler
 * targets them, and portable C loops (the *_generic functions) elsewhere or with
 * -DRESLIM_GENERIC. The Python side (kernels.py) builds, loads and tests both.
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
__attribute__((unused)) static void xw_generic(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                    double *W, int64_t ws, double *out, int64_t os, double alpha, const double *left,
                    int64_t ls, const double *right, int64_t rs, const double *coef, int nt) {
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
__attribute__((unused)) static void xwt_generic(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                     double *W, int64_t ws, double *out, int64_t os, const double *base, int64_t bs,
                     double alpha, const double *left, int64_t ls, const double *right,
                     int64_t rs, const double *coef, int nt) {
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
/* Register-tiled AVX2/FMA versions. Every weight element is read from memory once per call;
 * the products accumulate in a tile of ymm registers (up to 5 samples x 8 columns, or 2 rows
 * x 5 samples) that stays there while a block of W's rows streams through, so each FMA costs
 * under one load and no store. The update reuses the block while it is still in L1. */

/* Keeps v in a register: stops the compiler from folding one load into every FMA that uses v. */
#define IN_REGISTER(v) __asm__("" : "+x"(v))

#define TILE_NB 5 /* samples per register tile: 10 accumulators of 4 lanes, 16 ymm registers */

/* Calls CALL(k) with the constant k = nb (1 <= nb <= 5): register tiles need a constant. */
#define WITH_CONSTANT_NB(nb, CALL)                                                            \
    switch (nb) {                                                                             \
        case 1: CALL(1); break;                                                               \
        case 2: CALL(2); break;                                                               \
        case 3: CALL(3); break;                                                               \
        case 4: CALL(4); break;                                                               \
        default: CALL(5); break;                                                              \
    }

#define XW_RB 32    /* rows of W per block: a block's strips stay in L1 between the passes */
#define XW_AHEAD 96 /* columns ahead (in the walk strip by strip) that xw prefetches */

/* acc[j, 0:8] += sum_{d < rows} xT[d, j] W[d, 0:8]: acc rows at stride as (aligned), xT rows
 * at stride N, W rows at stride M. */
static inline __attribute__((always_inline)) void xw_tile_dot(const int nb, int64_t rows,
        int64_t M, int64_t N, const double *xT, const double *W, double *acc, int64_t as) {
    __m256d a0[TILE_NB], a1[TILE_NB];
    for (int j = 0; j < nb; ++j) {
        a0[j] = _mm256_load_pd(acc + j * as);
        a1[j] = _mm256_load_pd(acc + j * as + 4);
    }
    for (int64_t d = 0; d < rows; ++d) {
        const __m256d w0 = _mm256_loadu_pd(W + d * M), w1 = _mm256_loadu_pd(W + d * M + 4);
        for (int j = 0; j < nb; ++j) {
            const __m256d c = _mm256_broadcast_sd(xT + d * N + j);
            a0[j] = _mm256_fmadd_pd(c, w0, a0[j]);
            a1[j] = _mm256_fmadd_pd(c, w1, a1[j]);
        }
    }
    for (int j = 0; j < nb; ++j) {
        _mm256_store_pd(acc + j * as, a0[j]);
        _mm256_store_pd(acc + j * as + 4, a1[j]);
    }
}

/* W[d, 0:8] += sum_j lT[d, j] r[j, 0:8] for d < rows: r rows at stride rs (aligned). */
static inline __attribute__((always_inline)) void xw_tile_update(const int nb, int64_t rows,
        int64_t M, int64_t N, const double *lT, const double *r, int64_t rs, double *W) {
    __m256d r0[TILE_NB], r1[TILE_NB];
    for (int j = 0; j < nb; ++j) {
        r0[j] = _mm256_load_pd(r + j * rs);
        r1[j] = _mm256_load_pd(r + j * rs + 4);
    }
    for (int64_t d = 0; d < rows; ++d) {
        __m256d u0 = _mm256_loadu_pd(W + d * M), u1 = _mm256_loadu_pd(W + d * M + 4);
        for (int j = 0; j < nb; ++j) {
            const __m256d c = _mm256_broadcast_sd(lT + d * N + j);
            u0 = _mm256_fmadd_pd(c, r0[j], u0);
            u1 = _mm256_fmadd_pd(c, r1[j], u1);
        }
        _mm256_storeu_pd(W + d * M, u0);
        _mm256_storeu_pd(W + d * M + 4, u1);
    }
}

static void xw_dot_any(int nb, int64_t rows, int64_t M, int64_t N, const double *xT,
                       const double *W, double *acc, int64_t as) {
#define DOT(k) xw_tile_dot(k, rows, M, N, xT, W, acc, as)
    WITH_CONSTANT_NB(nb, DOT)
#undef DOT
}

static void xw_update_any(int nb, int64_t rows, int64_t M, int64_t N, const double *lT,
                          const double *r, int64_t rs, double *W) {
#define UPDATE(k) xw_tile_update(k, rows, M, N, lT, r, rs, W)
    WITH_CONSTANT_NB(nb, UPDATE)
#undef UPDATE
}

static void xw_impl(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                    double *W, int64_t ws, double *out, int64_t os, double alpha, const double *left,
                    int64_t ls, const double *right, int64_t rs, const double *coef, int nt) {
    /* Each task owns a contiguous range of columns of one network (a multiple of 8 wide),
     * walked block of rows by block of rows, 8-column strip by strip. */
    const int64_t parts = nt > 1 ? nt : 1;
    int64_t span = (M + parts - 1) / parts;
    span = (span + 7) & ~(int64_t)7;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * parts; ++t) {
        const int64_t b = t / parts, lo = (t % parts) * span;
        const int64_t hi = (lo + span < M) ? lo + span : M;
        if (lo >= hi) continue;
        const int64_t w = hi - lo, as = (w + 7) & ~(int64_t)7, wfull = w & ~(int64_t)7;
        double *acc = aligned_alloc(64, sizeof(double) * N * as);
        double *r = coef ? aligned_alloc(64, sizeof(double) * N * as) : 0;
        double xT[XW_RB * NMAX] __attribute__((aligned(64)));
        double lT_[XW_RB * NMAX] __attribute__((aligned(64)));
        const int upd = coef != 0;
        const double *xb = x + b * xs, *lb = upd ? left + b * ls : 0;
        const double *lT = (upd && lb != xb) ? lT_ : xT;
        double *Wb = W + b * ws + lo;
        memset(acc, 0, sizeof(double) * N * as);
        if (upd)
            for (int64_t n = 0; n < N; ++n)
                for (int64_t c = 0; c < as; ++c)
                    r[n * as + c] = c < w ? coef[b] * right[b * rs + n * M + lo + c] : 0.0;
        for (int64_t d0 = 0; d0 < D; d0 += XW_RB) {
            const int64_t rows = (D - d0 < XW_RB) ? D - d0 : XW_RB;
            for (int64_t d = 0; d < rows; ++d)
                for (int64_t n = 0; n < N; ++n) {
                    xT[d * N + n] = xb[n * D + d0 + d];
                    if (lT != xT) lT_[d * N + n] = lb[n * D + d0 + d];
                }
            double *Wd = Wb + d0 * M;
            for (int64_t m = 0; m < wfull; m += 8) {
                /* prefetch the strip XW_AHEAD columns ahead (in the next block at the end of
                 * the rows): W streams from DRAM */
                const int64_t ahead = m + XW_AHEAD;
                const double *pf = ahead < wfull ? Wd + ahead
                                   : (d0 + XW_RB < D ? Wd + XW_RB * M + (ahead - wfull) : 0);
                if (pf)
                    for (int64_t d = 0; d < XW_RB; ++d) {
                        _mm_prefetch((const char *)(pf + d * M), _MM_HINT_T0);
                        _mm_prefetch((const char *)(pf + d * M + 7), _MM_HINT_T0);
                    }
                for (int64_t n0 = 0; n0 < N; n0 += TILE_NB)
                    xw_dot_any((int)(N - n0 < TILE_NB ? N - n0 : TILE_NB), rows, M, N, xT + n0,
                               Wd + m, acc + n0 * as + m, as);
                if (upd)
                    for (int64_t n0 = 0; n0 < N; n0 += TILE_NB)
                        xw_update_any((int)(N - n0 < TILE_NB ? N - n0 : TILE_NB), rows, M, N,
                                      lT + n0, r + n0 * as + m, as, Wd + m);
            }
            for (int64_t d = 0; d < rows; ++d) /* column tail */
                for (int64_t c = wfull; c < w; ++c) {
                    double *wp = Wd + d * M + c;
                    const double old = *wp;
                    double u = old;
                    for (int64_t n = 0; n < N; ++n) {
                        acc[n * as + c] += xT[d * N + n] * old;
                        if (upd) u += lT[d * N + n] * r[n * as + c];
                    }
                    if (upd) *wp = u;
                }
        }
        double *ob = out + b * os + lo;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = 0; c < w; ++c) ob[n * M + c] = alpha * acc[n * as + c];
        free(acc);
        free(r);
    }
}

/* Tuned at (D, M) = (1000, 1000), N = 10 on a 2-core Zen 3 (see bench/step.py); fewer rows per
 * task mean fewer interleaved streams from DRAM. */
#define XWT_MC 128   /* columns per chunk: the chunks of x and right stay in L1 */
#define XWT_RB 8     /* rows per task */
#define XWT_AHEAD 3  /* rows ahead that the walk prefetches (one chunk each) */

/* vacc[(i N + j) 4 : +4] += lanes of x[j, 0:w] * W[i, 0:w] for nr rows i of W (1 or 2) and nb
 * samples j (constants: the 2 x 5 accumulators live in registers); x and W rows at stride M. */
static inline __attribute__((always_inline)) void xwt_tile_dots(const int nr, const int nb,
        int64_t M, int64_t N, const double *x, const double *row, int64_t w, double *vacc) {
    __m256d a[2][TILE_NB];
    for (int i = 0; i < nr; ++i)
        for (int j = 0; j < nb; ++j) a[i][j] = _mm256_load_pd(vacc + (i * N + j) * 4);
    const int64_t wv = w & ~(int64_t)3;
    for (int64_t m = 0; m < wv; m += 4) {
        const __m256d w0 = _mm256_loadu_pd(row + m);
        const __m256d w1 = nr > 1 ? _mm256_loadu_pd(row + M + m) : w0;
        for (int j = 0; j < nb; ++j) {
            __m256d xv = _mm256_loadu_pd(x + j * M + m);
            if (nr > 1) IN_REGISTER(xv);
            a[0][j] = _mm256_fmadd_pd(xv, w0, a[0][j]);
            if (nr > 1) a[1][j] = _mm256_fmadd_pd(xv, w1, a[1][j]);
        }
    }
    if (wv < w) { /* column tail: masked loads read zeros past the end */
        const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(w - wv), _mm256_set_epi64x(3, 2, 1, 0));
        for (int i = 0; i < nr; ++i) {
            const __m256d wr = _mm256_maskload_pd(row + i * M + wv, mask);
            for (int j = 0; j < nb; ++j)
                a[i][j] = _mm256_fmadd_pd(_mm256_maskload_pd(x + j * M + wv, mask), wr, a[i][j]);
        }
    }
    for (int i = 0; i < nr; ++i)
        for (int j = 0; j < nb; ++j) _mm256_store_pd(vacc + (i * N + j) * 4, a[i][j]);
}

/* W[i, 0:w] += sum_j cl[i N + j] r[j, 0:w] for nr rows i of W (1 or 2) and nb samples j
 * (constants: the coefficients stay in registers); r and W rows at stride M. */
static inline __attribute__((always_inline)) void xwt_tile_update(const int nr, const int nb,
        int64_t M, int64_t N, const double *r, const double *cl, double *row, int64_t w) {
    __m256d c[2][TILE_NB];
    for (int i = 0; i < nr; ++i)
        for (int j = 0; j < nb; ++j) c[i][j] = _mm256_broadcast_sd(cl + i * N + j);
    const int64_t wv = w & ~(int64_t)3;
    for (int64_t m = 0; m < wv; m += 4) {
        __m256d u0 = _mm256_loadu_pd(row + m);
        __m256d u1 = nr > 1 ? _mm256_loadu_pd(row + M + m) : u0;
        for (int j = 0; j < nb; ++j) {
            __m256d rv = _mm256_loadu_pd(r + j * M + m);
            if (nr > 1) IN_REGISTER(rv);
            u0 = _mm256_fmadd_pd(c[0][j], rv, u0);
            if (nr > 1) u1 = _mm256_fmadd_pd(c[1][j], rv, u1);
        }
        _mm256_storeu_pd(row + m, u0);
        if (nr > 1) _mm256_storeu_pd(row + M + m, u1);
    }
    for (int i = 0; i < nr; ++i)
        for (int64_t m = wv; m < w; ++m) {
            double u = row[i * M + m];
            for (int j = 0; j < nb; ++j) u += cl[i * N + j] * r[j * M + m];
            row[i * M + m] = u;
        }
}

static void xwt_dots_any(int nr, int nb, int64_t M, int64_t N, const double *x, const double *row,
                         int64_t w, double *vacc) {
#define DOTS1(k) xwt_tile_dots(1, k, M, N, x, row, w, vacc)
#define DOTS2(k) xwt_tile_dots(2, k, M, N, x, row, w, vacc)
    if (nr > 1) {
        WITH_CONSTANT_NB(nb, DOTS2)
    } else {
        WITH_CONSTANT_NB(nb, DOTS1)
    }
#undef DOTS1
#undef DOTS2
}

static void xwt_update_any(int nr, int nb, int64_t M, int64_t N, const double *r, const double *cl,
                           double *row, int64_t w) {
#define UPDATE1(k) xwt_tile_update(1, k, M, N, r, cl, row, w)
#define UPDATE2(k) xwt_tile_update(2, k, M, N, r, cl, row, w)
    if (nr > 1) {
        WITH_CONSTANT_NB(nb, UPDATE2)
    } else {
        WITH_CONSTANT_NB(nb, UPDATE1)
    }
#undef UPDATE1
#undef UPDATE2
}

static void xwt_impl(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                     double *W, int64_t ws, double *out, int64_t os, const double *base, int64_t bs,
                     double alpha, const double *left, int64_t ls, const double *right,
                     int64_t rs, const double *coef, int nt) {
    const int64_t nblk = (D + XWT_RB - 1) / XWT_RB;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * nblk; ++t) {
        const int64_t b = t / nblk, r0 = (t % nblk) * XWT_RB;
        const int64_t r1 = (r0 + XWT_RB < D) ? r0 + XWT_RB : D;
        const double *xb = x + b * xs, *rb = coef ? right + b * rs : 0;
        double *Wb = W + b * ws, *ob = out + b * os;
        const double *bb = base + b * bs;
        double vacc[XWT_RB * NMAX * 4] __attribute__((aligned(64))), cl[XWT_RB * NMAX];
        const int64_t nrows = r1 - r0, nchunks = (M + XWT_MC - 1) / XWT_MC;
        memset(vacc, 0, sizeof(double) * (r1 - r0) * N * 4);
        if (coef)
            for (int64_t d = r0; d < r1; ++d)
                for (int64_t n = 0; n < N; ++n) cl[(d - r0) * N + n] = coef[b] * left[b * ls + n * D + d];
        for (int64_t c0 = 0; c0 < M; c0 += XWT_MC) {
            const int64_t w = (M - c0 < XWT_MC) ? M - c0 : XWT_MC;
            for (int64_t d = r0; d < r1; d += 2) {
                const int nr = r1 - d > 1 ? 2 : 1;
                double *row = Wb + d * M + c0;
                /* prefetch the chunk of the rows XWT_AHEAD ahead in this walk (chunk-major over
                 * the task's rows, then the next task's rows): W streams from DRAM */
                for (int i = 0; i < nr; ++i) {
                    const int64_t ahead = (c0 / XWT_MC) * nrows + (d - r0) + i + XWT_AHEAD;
                    const int64_t pc = (ahead / nrows) * XWT_MC, pr = r0 + ahead % nrows;
                    const double *next = pc < M ? Wb + pr * M + pc
                                         : (r1 + (ahead - nrows * nchunks) < D ? Wb + (r1 + ahead - nrows * nchunks) * M : 0);
                    if (next)
                        for (int64_t m = 0; m < XWT_MC; m += 8) _mm_prefetch((const char *)(next + m), _MM_HINT_T0);
                }
                for (int64_t n0 = 0; n0 < N; n0 += TILE_NB)
                    xwt_dots_any(nr, (int)(N - n0 < TILE_NB ? N - n0 : TILE_NB), M, N, xb + n0 * M + c0,
                                 row, w, vacc + ((d - r0) * N + n0) * 4);
                if (coef)
                    for (int64_t n0 = 0; n0 < N; n0 += TILE_NB)
                        xwt_update_any(nr, (int)(N - n0 < TILE_NB ? N - n0 : TILE_NB), M, N,
                                       rb + n0 * M + c0, cl + (d - r0) * N + n0, row, w);
            }
        }
        for (int64_t d = r0; d < r1; ++d)
            for (int64_t n = 0; n < N; ++n) {
                const double *v = vacc + ((d - r0) * N + n) * 4;
                ob[n * D + d] = bb[n * D + d] + alpha * ((v[0] + v[1]) + (v[2] + v[3]));
            }
    }
}
#else
#define xw_impl xw_generic
#define xwt_impl xwt_generic
#endif

int reslim_nmax(void) { return NMAX; }

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
