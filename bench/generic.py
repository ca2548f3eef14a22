"""Benchmark of the generic batched trainer (torch.func ``vmap`` over stacked seeds + autograd).

Prints ``name: value`` lines, every figure measured in this one run (the machine is shared and
noisy: each time is the best of ``--repeats`` runs, and only ratios measured side by side mean
anything):

- ``vmap_vs_loop``: 20 seeds of a small Transformer ((L, M, D) = (4, 4, 16), r = r_v = 2,
  T = 4 tokens, N = 10 sequences, 15 GD steps, MLU), one batched ``train_modules`` call vs 20
  calls of one network each; the speed-up. Target >= 4.
- ``generic_vs_fused``: the built-in ResNet at (L, M, D) = (50, 301, 301), N = 10, 2 seeds,
  5 GD steps, float64: ``train_generic`` time divided by ``train`` (the fused manual backward).
  Above 1 is expected (autograd materialises every gradient and updates in a second pass; the
  fused path updates each weight in the pass that reads it).

Usage: ``python bench/generic.py [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import reslim
from reslim._src.models.transformer import Transformer
from reslim._src.training.generic import train_generic
from reslim._src.training.modules import train_modules


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def vmap_vs_loop(repeats: int, seeds: int = 20) -> tuple[float, float]:
    T, d = 4, 5
    rng = np.random.default_rng(0)
    data = reslim.Dataset(rng.standard_normal((10, T * d)), rng.standard_normal((10, d)))

    def nets():
        return [Transformer((4, 4, 16), param="mlu", d_in=d, d_out=d, seq_len=T, seed=s)
                for s in range(seeds)]

    def batched():
        train_modules(nets(), data, steps=15, lr=0.05, loss="mean")

    def loop():
        for net in nets():
            train_modules([net], data, steps=15, lr=0.05, loss="mean")

    tb, tl = best(batched, repeats), best(loop, repeats)
    return tl / tb, tb


def generic_vs_fused(repeats: int, seeds: int = 2) -> tuple[float, float, float]:
    data = reslim.gaussian_data(N=10, d_in=5, d_out=5, seed=0)

    def net():
        return reslim.ResNet((50, 301, 301), d_in=5, d_out=5, seeds=list(range(seeds)))

    nets = [net() for _ in range(2 * repeats)]
    tf = best(lambda: reslim.train(nets.pop(), data, steps=5, record=("outputs",)), repeats)
    tg = best(lambda: train_generic(nets.pop(), data, steps=5, record=("outputs",)), repeats)
    return tg / tf, tf, tg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with reslim.threads(args.threads):
        ratio, tb = vmap_vs_loop(args.repeats)
        print(f"vmap_vs_loop: {ratio:.2f}")
        print(f"vmap_batched_seconds: {tb:.3f}")
        rel, tf, tg = generic_vs_fused(args.repeats)
        print(f"generic_vs_fused: {rel:.2f}")
        print(f"fused_seconds: {tf:.3f}")
        print(f"generic_seconds: {tg:.3f}")
    print(f"threads: {args.threads}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
