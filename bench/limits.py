"""Benchmark of the exact linear limits (not a test): prints ``name: value`` lines.

    python bench/limits.py [--quick]

Times are the best of a few repeats, in seconds, float64, on this machine's CPU.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from reslim import linear_teacher
from reslim._src.limits.dense import dense_mean_ode
from reslim.limits import LargeDLimit, LimitProblem, MeanODE


def best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def problem(N: int, D: int | None, K: int = 15, seed: int = 0) -> LimitProblem:
    data = linear_teacher(N=N, d_in=3, d_out=3, seed=seed)
    if D is None:
        return LimitProblem(data, K=K, eta=0.1)
    rng = np.random.default_rng(seed)
    return LimitProblem(data, K=K, eta=0.1, W_e=rng.standard_normal((D, 3)), W_u=rng.standard_normal((D, 3)))


def main(quick: bool = False) -> None:
    S = 32
    for N in (1, 10):
        pb = problem(N, None)
        t = best_time(lambda pb=pb: LargeDLimit(S=S).solve(pb), 5)
        print(f"large_d_K15_N{N}_S{S}_s: {t:.4f}")
    for D in (500, 2000):
        pb = problem(10, D)
        t = best_time(lambda pb=pb: MeanODE(S=S).solve(pb), 1 if D == 2000 else 3)
        print(f"mean_ode_D{D}_K15_N10_S{S}_s: {t:.4f}")
        t = best_time(lambda pb=pb: MeanODE(S=S, record_hidden=False).solve(pb), 3)
        print(f"mean_ode_D{D}_K15_N10_S{S}_outputs_only_s: {t:.4f}")
    # low rank vs dense (2D x 2D) second moments, same grid and integrator
    D, Sd = (200, 8) if quick else (500, 8)
    pb = problem(10, D)
    t_low = best_time(lambda: MeanODE(S=Sd).solve(pb), 3)
    t0 = time.perf_counter()
    out, _, _ = dense_mean_ode(pb.data.X, pb.data.Y, pb.W_e[0], pb.W_u[0], K=15, eta=0.1, S=Sd)
    t_dense = time.perf_counter() - t0
    diff = np.abs(MeanODE(S=Sd).solve(pb).outputs[:, 0] - out).max()
    print(f"mean_ode_D{D}_K15_N10_S{Sd}_s: {t_low:.4f}")
    print(f"dense_D{D}_K15_N10_S{Sd}_s: {t_dense:.3f}")
    print(f"speedup_low_rank_vs_dense_D{D}: {t_dense / t_low:.0f}")
    print(f"max_output_diff_low_rank_vs_dense_D{D}: {diff:.2e}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
