"""Benchmark of the limits (not a test): prints ``name: value`` lines.

    python bench/limits.py [--quick] [--ref-shape 50,2000,2000]

Times are the best of a few repeats, in seconds, float64, on this machine's CPU. The
``nonlinear_*`` lines compare, in one run, the exact large-D limit for tanh (docs/theory.md §3.1
setup: d_in = d_out = 5, N = 10, K = 15, eta = 1, loss "mean", W_e ~ N(0, 1/d_in),
W_u ~ N(0, d_out), the solver's default accuracy) with training the finite reference network
of ``--ref-shape`` (default the paper's (50, 2000, 2000)) on the same problem. The
``deep_linear_*`` lines time the deep-linear limit (L = 4, K = 100, P = 20) and its ratio to one
finite network of width 4096 (``--only-deep-linear``: those alone). The ``nfd_*`` lines time the
Neural Feature Dynamics solver (L-grid 64, S = 4096 particles in 4 replicas, 10 SGD steps of batch 4
on P = 16 synthetic samples, tanh) and give its replica error estimate (``--only-nfd``: those alone).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from reslim import ResNet, Shape, gaussian_data, linear_teacher, train
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


#: the finite reference's own error in embedding space (RMS, measured by its twins on the paper
#: grid, docs/experiments.md); the limit's error estimate should be below a tenth of it
REFERENCE_FLOOR_RMS = 0.110


def nonlinear(ref_shape: tuple[int, int, int]) -> None:
    from reslim._src.experiments.convergence import _paper_param

    data = gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    pb = LimitProblem(data, K=15, eta=1.0, loss="mean", activation="tanh", embed_std=5**-0.5,
                      readout_std=5**0.5)
    sols = []

    def solve():
        sols.append(LargeDLimit().solution(pb))  # a fresh instance: no cached solve

    t_lim = best_time(solve, 2)
    sol = sols[-1]
    param = _paper_param().build()

    def reference():
        net = ResNet(Shape(*ref_shape), param=param, d_in=5, d_out=5, activation="tanh", seeds=[0])
        train(net, data, steps=15, lr=1.0, optimizer="gd", loss="mean", record=("loss", "outputs", "h_last"))

    t_ref = best_time(reference, 1)
    name = "x".join(map(str, ref_shape))
    print(f"nonlinear_large_d_seconds: {t_lim:.3f}")
    print(f"nonlinear_reference_network_seconds: {t_ref:.3f}")
    print(f"nonlinear_reference_network_shape: {name}")
    print(f"nonlinear_limit_speedup: {t_ref / t_lim:.3g}")
    print(f"nonlinear_limit_error_estimate: {sol.stderr['h_last_stderr'][-1]:.5f}")
    print(f"nonlinear_limit_error_estimate_target: {REFERENCE_FLOOR_RMS / 10:.4f}")
    print(f"nonlinear_limit_output_stderr: {sol.stderr['output_stderr'][-1]:.5f}")
    info = sol.coef.info
    print(f"nonlinear_limit_samples: {info['samples']}")
    print(f"nonlinear_limit_replicas: {info['replicas']}")
    print(f"nonlinear_limit_depth_steps: {sol.coef.S}")


def deep_linear(width: int = 4096) -> None:
    """The deep-linear limit (L = 4, K = 100 GD steps, P = 20 samples, d = 40, k = 1, eta = 0.2,
    gamma_0 = 1) against one finite network of ``width`` on the same problem."""
    import torch

    from reslim import DeepLinearNetwork
    from reslim.limits import DeepLinearLimit, DeepLinearProblem

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 40))
    Y = X @ rng.standard_normal((40, 1)) / np.sqrt(40)
    pb = DeepLinearProblem(X, Y, L=4, K=100, eta=0.2, gamma0=1.0)
    sols = []
    t_lim = best_time(lambda: sols.append(DeepLinearLimit().solution(pb)), 3)
    trajs = []

    def finite():
        net = DeepLinearNetwork(4, width, 40, 1, gamma0=1.0, seeds=[0])
        trajs.append(net.train(X, Y, steps=100, eta=0.2, record=("loss", "beta")))

    t_fin = best_time(finite, 1)
    err = np.sqrt(((trajs[-1].meta["beta"][:, 0] - sols[-1].beta) ** 2).mean())
    print(f"deep_linear_limit_seconds: {t_lim:.3f}")
    print(f"deep_linear_finite_N{width}_seconds: {t_fin:.3f}")
    print(f"deep_linear_limit_vs_finite: {t_lim / t_fin:.3g}")
    print(f"deep_linear_limit_basis_dims: {'/'.join(map(str, sols[-1].dims))}")
    print(f"deep_linear_finite_N{width}_beta_rms_error: {err:.2e}")
    print(f"deep_linear_torch_threads: {torch.get_num_threads()}")


def nfd() -> None:
    """The NFD solver at L-grid 64, S = 4096 particles (4 replicas), 10 SGD steps (batch 4 of P = 16,
    d_in = 4, d_out = 1, tanh, eta = 1); error estimate = RMS replica standard error of the outputs
    at the last step."""
    import torch

    from reslim.limits import NFDLimit, NFDProblem

    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 4))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.sin(2.0 * X @ rng.standard_normal(4))[:, None]
    pb = NFDProblem(X, Y, steps=10, lr=1.0, optimizer="sgd", batch_size=4)
    trajs = []
    t = best_time(lambda: trajs.append(NFDLimit(L=64, particles=4096, replicas=4).solve(pb)), 2)
    tr = trajs[-1]
    print(f"nfd_seconds: {t:.3f}")
    print(f"nfd_error_estimate: {np.sqrt((tr.meta['output_stderr'][-1] ** 2).mean()):.5f}")
    print(f"nfd_loss_final: {tr.loss[-1, 0]:.5f}")
    print(f"nfd_loss_stderr_final: {tr.meta['loss_stderr'][-1, 0]:.5f}")
    print(f"nfd_torch_threads: {torch.get_num_threads()}")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        L, M, D = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ref-shape: L,M,D (three integers), got {text!r}") from None
    if min(L, M, D) < 1:
        raise argparse.ArgumentTypeError(f"--ref-shape must be positive, got {text!r}")
    return L, M, D


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller dense comparison")
    ap.add_argument("--only-deep-linear", action="store_true", help="only the deep_linear_* lines")
    ap.add_argument("--only-nfd", action="store_true", help="only the nfd_* lines")
    ap.add_argument("--ref-shape", type=_shape, default=(50, 2000, 2000),
                    help="L,M,D of the finite tanh reference network (default 50,2000,2000)")
    args = ap.parse_args()
    if not (args.only_deep_linear or args.only_nfd):
        main(quick=args.quick)
        nonlinear(args.ref_shape)
    if not args.only_nfd:
        deep_linear()
    if not args.only_deep_linear:
        nfd()
