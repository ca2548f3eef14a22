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
/* Register-blocked AVX2/FMA versions: every weight element is loaded from memory once per call
 * and used for N fused multiply-adds from registers, so the kernels run at the FMA rate while
 * they stream W: at N = 10 the flop and the byte rooflines are about equal. */

#define XW_CB 128 /* columns per chunk: the chunk's accumulators and update rows stay in L1 */
#define XW_RB 32  /* rows per block: a block's rows of the thread's columns stay in L2 */

/* acc (N, XW_CB) += x[:, d0:d1] @ W[d0:d1, c0:c0+w]; with upd, W[d, c] += sum_n left[n, d] r[n, c]
 * after W is read (r already holds coef * right). */
static inline __attribute__((always_inline)) void xw_rows(const int upd, int64_t N, int64_t D,
        int64_t M, const double *x, double *W, int64_t d0, int64_t d1, int64_t c0, int64_t w,
        double *acc, const double *left, const double *r) {
    const int64_t wv = w & ~(int64_t)3;
    double xp_[NMAX * 16] __attribute__((aligned(64))), lp_[NMAX * 16] __attribute__((aligned(64)));
    double *xp = xp_, *lp = (upd && left != x) ? lp_ : xp_;
    int64_t d = d0;
    for (; d + 4 <= d1; d += 4) {
        double *W0 = W + d * M + c0, *W1 = W0 + M, *W2 = W1 + M, *W3 = W2 + M;
        /* x[:, d:d+4] (and left's) packed as broadcast vectors: each FMA takes one operand
         * straight from L1, halving the instructions per FMA */
        for (int64_t n = 0; n < N; ++n)
            for (int j = 0; j < 4; ++j) {
                _mm256_store_pd(xp + n * 16 + 4 * j, _mm256_broadcast_sd(x + n * D + d + j));
                if (upd && left != x)
                    _mm256_store_pd(lp + n * 16 + 4 * j, _mm256_broadcast_sd(left + n * D + d + j));
            }
        const int pf = d + XW_RB + 4 <= D; /* prefetch the rows a block ahead: W streams from DRAM */
        for (int64_t m = 0; m < wv; m += 4) {
            if (pf && (m & 7) == 0) {
                _mm_prefetch((const char *)(W0 + XW_RB * M + m), _MM_HINT_T0);
                _mm_prefetch((const char *)(W1 + XW_RB * M + m), _MM_HINT_T0);
                _mm_prefetch((const char *)(W2 + XW_RB * M + m), _MM_HINT_T0);
                _mm_prefetch((const char *)(W3 + XW_RB * M + m), _MM_HINT_T0);
            }
            const __m256d w0 = _mm256_loadu_pd(W0 + m), w1 = _mm256_loadu_pd(W1 + m);
            const __m256d w2 = _mm256_loadu_pd(W2 + m), w3 = _mm256_loadu_pd(W3 + m);
            for (int64_t n = 0; n < N; ++n) {
                const double *xn = xp + n * 16;
                double *an = acc + n * XW_CB + m;
                __m256d s = _mm256_load_pd(an);
                s = _mm256_fmadd_pd(_mm256_load_pd(xn), w0, s);
                s = _mm256_fmadd_pd(_mm256_load_pd(xn + 4), w1, s);
                s = _mm256_fmadd_pd(_mm256_load_pd(xn + 8), w2, s);
                s = _mm256_fmadd_pd(_mm256_load_pd(xn + 12), w3, s);
                _mm256_store_pd(an, s);
            }
            if (upd) { /* two partial sums per row halve the dependency chains */
                __m256d u0 = w0, u1 = w1, u2 = w2, u3 = w3;
                __m256d v0 = _mm256_setzero_pd(), v1 = v0, v2 = v0, v3 = v0;
                int64_t n = 0;
                for (; n + 2 <= N; n += 2) {
                    const double *ln = lp + n * 16, *lm = ln + 16;
                    const __m256d rn = _mm256_load_pd(r + n * XW_CB + m);
                    const __m256d rm = _mm256_load_pd(r + (n + 1) * XW_CB + m);
                    u0 = _mm256_fmadd_pd(_mm256_load_pd(ln), rn, u0);
                    u1 = _mm256_fmadd_pd(_mm256_load_pd(ln + 4), rn, u1);
                    u2 = _mm256_fmadd_pd(_mm256_load_pd(ln + 8), rn, u2);
                    u3 = _mm256_fmadd_pd(_mm256_load_pd(ln + 12), rn, u3);
                    v0 = _mm256_fmadd_pd(_mm256_load_pd(lm), rm, v0);
                    v1 = _mm256_fmadd_pd(_mm256_load_pd(lm + 4), rm, v1);
                    v2 = _mm256_fmadd_pd(_mm256_load_pd(lm + 8), rm, v2);
                    v3 = _mm256_fmadd_pd(_mm256_load_pd(lm + 12), rm, v3);
                }
                if (n < N) {
                    const double *ln = lp + n * 16;
                    const __m256d rn = _mm256_load_pd(r + n * XW_CB + m);
                    u0 = _mm256_fmadd_pd(_mm256_load_pd(ln), rn, u0);
                    u1 = _mm256_fmadd_pd(_mm256_load_pd(ln + 4), rn, u1);
                    u2 = _mm256_fmadd_pd(_mm256_load_pd(ln + 8), rn, u2);
                    u3 = _mm256_fmadd_pd(_mm256_load_pd(ln + 12), rn, u3);
                }
                _mm256_storeu_pd(W0 + m, _mm256_add_pd(u0, v0));
                _mm256_storeu_pd(W1 + m, _mm256_add_pd(u1, v1));
                _mm256_storeu_pd(W2 + m, _mm256_add_pd(u2, v2));
                _mm256_storeu_pd(W3 + m, _mm256_add_pd(u3, v3));
            }
        }
        for (int64_t j = 0; j < 4; ++j) /* column tail */
            for (int64_t m = wv; m < w; ++m) {
                double *wp = W + (d + j) * M + c0 + m;
                const double old = *wp;
                double u = old;
                for (int64_t n = 0; n < N; ++n) {
                    acc[n * XW_CB + m] += x[n * D + d + j] * old;
                    if (upd) u += left[n * D + d + j] * r[n * XW_CB + m];
                }
                if (upd) *wp = u;
            }
    }
    for (; d < d1; ++d) { /* row tail */
        double *row = W + d * M + c0;
        for (int64_t m = 0; m < w; ++m) {
            const double old = row[m];
            double u = old;
            for (int64_t n = 0; n < N; ++n) {
                acc[n * XW_CB + m] += x[n * D + d] * old;
                if (upd) u += left[n * D + d] * r[n * XW_CB + m];
            }
            if (upd) row[m] = u;
        }
    }
}

static void xw_impl(int64_t B, int64_t N, int64_t D, int64_t M, const double *x, int64_t xs,
                    double *W, int64_t ws, double *out, int64_t os, double alpha, const double *left,
                    int64_t ls, const double *right, int64_t rs, const double *coef, int nt) {
    /* Each task owns a contiguous range of columns of one network (a multiple of 4 wide). */
    const int64_t parts = nt > 1 ? nt : 1;
    int64_t span = (M + parts - 1) / parts;
    span = (span + 3) & ~(int64_t)3;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < B * parts; ++t) {
        const int64_t b = t / parts, lo = (t % parts) * span;
        const int64_t hi = (lo + span < M) ? lo + span : M;
        if (lo >= hi) continue;
        const int64_t ncnk = (hi - lo + XW_CB - 1) / XW_CB;
        double *acc = aligned_alloc(64, sizeof(double) * N * XW_CB * ncnk);
        double *r = coef ? aligned_alloc(64, sizeof(double) * N * XW_CB * ncnk) : 0;
        memset(acc, 0, sizeof(double) * N * XW_CB * ncnk);
        const double *xb = x + b * xs, *lb = coef ? left + b * ls : 0;
        double *Wb = W + b * ws;
        if (coef)
            for (int64_t c = 0; c < ncnk; ++c)
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t m = 0; m < XW_CB; ++m) {
                        const int64_t col = lo + c * XW_CB + m;
                        r[(c * N + n) * XW_CB + m] = col < hi ? coef[b] * right[b * rs + n * M + col] : 0.0;
                    }
        for (int64_t d0 = 0; d0 < D; d0 += XW_RB) {
            const int64_t d1 = (d0 + XW_RB < D) ? d0 + XW_RB : D;
            for (int64_t c = 0; c < ncnk; ++c) {
                const int64_t c0 = lo + c * XW_CB;
                const int64_t w = (hi - c0 < XW_CB) ? hi - c0 : XW_CB;
                double *ac = acc + c * N * XW_CB;
                if (coef)
                    xw_rows(1, N, D, M, xb, Wb, d0, d1, c0, w, ac, lb, r + c * N * XW_CB);
                else
                    xw_rows(0, N, D, M, xb, Wb, d0, d1, c0, w, ac, 0, 0);
            }
        }
        double *ob = out + b * os;
        for (int64_t c = 0; c < ncnk; ++c) {
            const int64_t c0 = lo + c * XW_CB;
            const int64_t w = (hi - c0 < XW_CB) ? hi - c0 : XW_CB;
            for (int64_t n = 0; n < N; ++n)
                for (int64_t m = 0; m < w; ++m) ob[n * M + c0 + m] = alpha * acc[(c * N + n) * XW_CB + m];
        }
        free(acc);
        free(r);
    }
}

#define XWT_MC 128 /* columns per chunk: the chunks of x and right stay in L1 */
#define XWT_RB 32  /* rows per task: a task's rows stay in L2 */
#define XWT_NB 10  /* samples per register block */

/* vacc[j] (4 lanes) += x[j] . row over w columns, for nb rows of x at stride M (nb a constant:
 * the accumulators live in registers; they are reduced once per task, not once per chunk). */
static inline __attribute__((always_inline)) void xwt_dots(const int nb, int64_t M,
        const double *x, const double *row, int64_t w, double *vacc) {
    __m256d acc[XWT_NB];
    for (int j = 0; j < nb; ++j) acc[j] = _mm256_load_pd(vacc + 4 * j);
    const int64_t wv = w & ~(int64_t)3;
    for (int64_t m = 0; m < wv; m += 4) {
        const __m256d wr = _mm256_loadu_pd(row + m);
        for (int j = 0; j < nb; ++j)
            acc[j] = _mm256_fmadd_pd(_mm256_loadu_pd(x + j * M + m), wr, acc[j]);
    }
    if (wv < w) { /* column tail: masked loads read zeros past the end */
        const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(w - wv), _mm256_set_epi64x(3, 2, 1, 0));
        const __m256d wr = _mm256_maskload_pd(row + wv, mask);
        for (int j = 0; j < nb; ++j)
            acc[j] = _mm256_fmadd_pd(_mm256_maskload_pd(x + j * M + wv, mask), wr, acc[j]);
    }
    for (int j = 0; j < nb; ++j) _mm256_store_pd(vacc + 4 * j, acc[j]);
}

/* Calls CALL(k) with the constant k = nb (1 <= nb <= 10): register blocks need a constant. */
#define WITH_CONSTANT_NB(nb, CALL)                                                            \
    switch (nb) {                                                                             \
        case 1: CALL(1); break;                                                               \
        case 2: CALL(2); break;                                                               \
        case 3: CALL(3); break;                                                               \
        case 4: CALL(4); break;                                                               \
        case 5: CALL(5); break;                                                               \
        case 6: CALL(6); break;                                                               \
        case 7: CALL(7); break;                                                               \
        case 8: CALL(8); break;                                                               \
        case 9: CALL(9); break;                                                               \
        default: CALL(10); break;                                                             \
    }

static void xwt_dots_any(int nb, int64_t M, const double *x, const double *row, int64_t w,
                         double *vacc) {
#define DOTS(k) xwt_dots(k, M, x, row, w, vacc)
    WITH_CONSTANT_NB(nb, DOTS)
#undef DOTS
}

/* row[0:w] += sum_j cl[j] r[j, 0:w] for nb rows of r at stride M (nb a constant: the
 * coefficients stay in registers; two partial sums halve the FMA dependency chain). */
static inline __attribute__((always_inline)) void xwt_update(const int nb, int64_t M,
        const double *r, const double *cl, double *row, int64_t w) {
    __m256d c[XWT_NB];
    for (int j = 0; j < nb; ++j) c[j] = _mm256_broadcast_sd(cl + j);
    const int64_t wv = w & ~(int64_t)3;
    for (int64_t m = 0; m < wv; m += 4) {
        __m256d u0 = _mm256_loadu_pd(row + m), u1 = _mm256_setzero_pd();
        for (int j = 0; j + 1 < nb; j += 2) {
            u0 = _mm256_fmadd_pd(c[j], _mm256_loadu_pd(r + j * M + m), u0);
            u1 = _mm256_fmadd_pd(c[j + 1], _mm256_loadu_pd(r + (j + 1) * M + m), u1);
        }
        if (nb & 1) u0 = _mm256_fmadd_pd(c[nb - 1], _mm256_loadu_pd(r + (nb - 1) * M + m), u0);
        _mm256_storeu_pd(row + m, _mm256_add_pd(u0, u1));
    }
    for (int64_t m = wv; m < w; ++m) {
        double u = row[m];
        for (int j = 0; j < nb; ++j) u += cl[j] * r[j * M + m];
        row[m] = u;
    }
}

static void xwt_update_any(int nb, int64_t M, const double *r, const double *cl, double *row,
                           int64_t w) {
#define UPDATE(k) xwt_update(k, M, r, cl, row, w)
    WITH_CONSTANT_NB(nb, UPDATE)
#undef UPDATE
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
        const double *xb = x + b * xs;
        double *Wb = W + b * ws, *ob = out + b * os;
        const double *bb = base + b * bs;
        double vacc[XWT_RB * NMAX * 4] __attribute__((aligned(64))), cl[NMAX];
        memset(vacc, 0, sizeof(double) * (r1 - r0) * N * 4);
        for (int64_t c0 = 0; c0 < M; c0 += XWT_MC) {
            const int64_t w = (M - c0 < XWT_MC) ? M - c0 : XWT_MC;
            for (int64_t d = r0; d < r1; ++d) {
                double *row = Wb + d * M + c0;
                /* prefetch what this task reads next from DRAM: the row's next chunk */
                const double *next = c0 + XWT_MC < M ? row + XWT_MC
                                     : (d + XWT_RB < D ? row - c0 + XWT_RB * M : 0);
                if (next)
                    for (int64_t m = 0; m < XWT_MC; m += 8) _mm_prefetch((const char *)(next + m), _MM_HINT_T0);
                for (int64_t n0 = 0; n0 < N; n0 += XWT_NB) {
                    const int nb = (N - n0 < XWT_NB) ? (int)(N - n0) : XWT_NB;
                    xwt_dots_any(nb, M, xb + n0 * M + c0, row, w, vacc + ((d - r0) * N + n0) * 4);
                }
                if (coef) {
                    for (int64_t n = 0; n < N; ++n) cl[n] = coef[b] * left[b * ls + n * D + d];
                    for (int64_t n0 = 0; n0 < N; n0 += XWT_NB) {
                        const int nb = (N - n0 < XWT_NB) ? (int)(N - n0) : XWT_NB;
                        xwt_update_any(nb, M, right + b * rs + n0 * M + c0, cl + n0, row, w);
                    }
                }
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
