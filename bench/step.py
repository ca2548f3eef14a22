"""Benchmark of one full-batch GD step of the reference (MLU, tanh) model, float64, N = 10.

Prints ``name: value`` lines, every figure measured in this one run (the machine is shared
and noisy, so only ratios measured side by side mean anything):

- ``roofline_ratio``: step time at (L, M, D) = (50, 1000, 1000) divided by
  ``max(flops / GEMM rate, bytes / copy rate)``, with ``flops = 12 L M D N`` (two GEMMs forward,
  four backward) and ``bytes = 6 L M D * 8`` (U and V read in the forward pass, read and
  written once in the backward pass) — the least any implementation must move. Target <= 1.5.
- ``vs_naive_autograd``: speed-up over a plain autograd loop indexing ``U[l]``, ``V[l]`` of
  stacked tensors, at (50, 301, 301); ``vs_numpy``: over a NumPy implementation of the
  same step (explicit backward, separate gradient arrays).
- ``batched_speedup``: 20 seeds of (50, 14, 14), 15 GD steps, one batched run vs 20 runs.
- ``float32_kernels_vs_torch``: the float32 step at the roofline shape, float32 kernels vs the
  torch path (``use_kernels = False``).
- ``small_train_p90_seconds``: the README's library example (``train`` of 5 networks of
  (50, 64, 64), 15 GD steps) in 10 fresh processes, the 90th percentile of the ``train`` call
  alone; ``small_train_p90_seconds_before``: the same with the old behaviour (every torch
  thread, ``OMP_WAIT_POLICY`` unset), side by side. The tail is the point: on a busy machine
  spinning OpenMP threads made ~3 in 10 fresh processes 30x slower.

Usage: ``python bench/step.py [--size 1000] [--repeats 5] [--only small-train]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

from reslim import ResNet, Shape, gaussian_data, train
from reslim._src.training.trainer import _SGDUpdate, loss_and_grad

N, D_IO = 10, 5


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_rate(n: int = 2000, repeats: int = 3) -> float:
    a = torch.randn(n, n, dtype=torch.float64)
    b = torch.randn(n, n, dtype=torch.float64)
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


def copy_rate(nbytes: int = 400_000_000, repeats: int = 3) -> float:
    """Bytes moved per second (read + write) copying a buffer far larger than the caches."""
    x = torch.ones(nbytes // 8, dtype=torch.float64)
    y = torch.empty_like(x)
    return 2 * nbytes / best_time(lambda: y.copy_(x), repeats)


def reslim_step(shape: Shape, dtype: str = "float64", use_kernels: bool | None = None):
    data = gaussian_data(N, D_IO, D_IO, seed=0)
    net = ResNet(shape, param="mlu", d_in=D_IO, d_out=D_IO, seeds=[0], dtype=dtype)
    net.use_kernels = use_kernels
    X, Yt = (torch.as_tensor(a, dtype=net.W_e.dtype) for a in (data.X, data.Y))
    update = _SGDUpdate(net, {"U": 1e-12, "V": 1e-12})

    def step():
        cache = net.forward_cached(X)
        _, dy = loss_and_grad(cache.y, Yt, "mean")
        net.backward_update(X, cache, dy, update)

    return step


def naive_autograd_step(shape: Shape):
    """The straightforward loop: autograd through slices U[l], V[l] of stacked tensors."""
    L, M, D = shape.as_tuple()
    g = torch.Generator().manual_seed(0)
    U = (torch.randn(L, D, M, generator=g, dtype=torch.float64) * D**0.5).requires_grad_()
    V = (torch.randn(L, D, M, generator=g, dtype=torch.float64) * D**0.5).requires_grad_()
    data = gaussian_data(N, D_IO, D_IO, seed=0)
    W_e = torch.randn(D, D_IO, generator=g, dtype=torch.float64)
    W_u = torch.randn(D, D_IO, generator=g, dtype=torch.float64)
    X, Y = torch.as_tensor(data.X), torch.as_tensor(data.Y)
    lr = 1e-12

    def step():
        h = W_e @ X.T
        for l in range(L):
            h = h + V[l] @ torch.tanh(U[l].T @ h / D) / (L * M)
        loss = 0.5 * ((W_u.T @ h / D).T - Y).square().sum() / (N * D_IO)
        loss.backward()
        with torch.no_grad():
            U.sub_(lr * U.grad)
            V.sub_(lr * V.grad)
            U.grad = None
            V.grad = None

    return step


def numpy_step(shape: Shape):
    """The same GD step in NumPy with an explicit backward and separate gradient arrays."""
    L, M, D = shape.as_tuple()
    rng = np.random.default_rng(0)
    U = rng.standard_normal((L, D, M)) * D**0.5
    V = rng.standard_normal((L, D, M)) * D**0.5
    W_e, W_u = rng.standard_normal((D, D_IO)), rng.standard_normal((D, D_IO))
    data = gaussian_data(N, D_IO, D_IO, seed=0)
    lr = 1e-12

    def step():  # samples as rows, the faster layout for skinny GEMMs
        hs, acts = [data.X @ W_e.T], []
        for l in range(L):
            acts.append(np.tanh(hs[-1] @ U[l] / D))
            hs.append(hs[-1] + acts[-1] @ V[l].T / (L * M))
        g = ((hs[-1] @ W_u / D) - data.Y) @ W_u.T / D / (N * D_IO)
        gU, gV = np.empty_like(U), np.empty_like(V)
        for l in range(L - 1, -1, -1):
            a = acts[l]
            gV[l] = g.T @ a / (L * M)
            gp = (g @ V[l]) * (1 - a * a) / (L * M)
            gU[l] = hs[l].T @ gp / D
            g = g + gp @ U[l].T / D
        U[...] -= lr * gU
        V[...] -= lr * gV

    return step


def batched_speedup(seeds: int = 20, steps: int = 15) -> float:
    data = gaussian_data(N, D_IO, D_IO, seed=0)
    shape = Shape(50, 14, 14)

    def batched():
        net = ResNet(shape, param="mlu", d_in=D_IO, d_out=D_IO, seeds=list(range(seeds)))
        train(net, data, steps=steps, lr=1.0, loss="mean")

    def separate():
        for s in range(seeds):
            net = ResNet(shape, param="mlu", d_in=D_IO, d_out=D_IO, seeds=[s])
            train(net, data, steps=steps, lr=1.0, loss="mean")

    return best_time(separate, 3) / best_time(batched, 3)


_SMALL_TRAIN = """
import sys, time, torch, reslim
data = reslim.gaussian_data(N=10, d_in=5, d_out=5, seed=0)
net = reslim.ResNet(reslim.Shape(L=50, M=64, D=64), param=reslim.get_parameterization("mlu"),
                    d_in=5, d_out=5, activation="tanh", seeds=range(5))
threads = torch.get_num_threads() if sys.argv[1] == "before" else None
t = time.perf_counter()
reslim.train(net, data, steps=15, lr=1.0, optimizer="gd", loss="mean",
             record=("loss", "outputs", "h_last"), threads=threads)
print(time.perf_counter() - t)
"""


def small_train_p90(before: bool = False, processes: int = 10) -> float:
    """90th percentile over ``processes`` fresh processes of the README example's ``train``."""
    env = dict(os.environ)
    if before:
        env.pop("OMP_WAIT_POLICY", None)
    times = [float(subprocess.run([sys.executable, "-c", _SMALL_TRAIN, "before" if before else "now"],
                                  env=env, capture_output=True, text=True, check=True).stdout)
             for _ in range(processes)]
    return float(np.percentile(times, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1000, help="M = D of the roofline shape")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["small-train"], help="print only these figures")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    if args.only == "small-train":
        print(f"small_train_p90_seconds: {small_train_p90():.3f}")
        print(f"small_train_p90_seconds_before: {small_train_p90(before=True):.3f}")
        return

    big = Shape(50, args.size, args.size)
    step = reslim_step(big)
    t_step = best_time(step, args.repeats)
    rate, bw = gemm_rate(), copy_rate()
    flops = 12 * big.L * big.M * big.D * N
    nbytes = 6 * big.L * big.M * big.D * 8
    roof = max(flops / rate, nbytes / bw)
    print(f"gemm_gflops: {rate / 1e9:.2f}")
    print(f"copy_gbytes_per_s: {bw / 1e9:.2f}")
    print(f"step_seconds_{big.L}_{big.M}_{big.D}: {t_step:.4f}")
    print(f"roofline_seconds: {roof:.4f}")
    print(f"roofline_ratio: {t_step / roof:.3f}")
    t32 = best_time(reslim_step(big, "float32"), args.repeats)
    t32_torch = best_time(reslim_step(big, "float32", use_kernels=False), args.repeats)
    print(f"float32_step_seconds_{big.L}_{big.M}_{big.D}: {t32:.4f}")
    print(f"float32_torch_step_seconds: {t32_torch:.4f}")
    print(f"float32_kernels_vs_torch: {t32_torch / t32:.2f}")

    mid = Shape(50, 301, 301)
    t_fast = best_time(reslim_step(mid), args.repeats)
    t_naive = best_time(naive_autograd_step(mid), max(2, args.repeats // 2))
    t_numpy = best_time(numpy_step(mid), args.repeats)
    print(f"step_seconds_50_301_301: {t_fast:.5f}")
    print(f"naive_autograd_seconds: {t_naive:.5f}")
    print(f"numpy_seconds: {t_numpy:.5f}")
    print(f"vs_naive_autograd: {t_naive / t_fast:.2f}")
    print(f"vs_numpy: {t_numpy / t_fast:.2f}")
    print(f"batched_speedup: {batched_speedup():.2f}")
    print(f"small_train_p90_seconds: {small_train_p90():.3f}")
    print(f"small_train_p90_seconds_before: {small_train_p90(before=True):.3f}")
    print(f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
