"""Benchmark: where the fused CPU kernels (kernels.c) beat torch's batched GEMMs.

One GD step of the reference (MLU, tanh) model, float64, N = 10, at L = 50 for a range of
(B networks, M, D), timed with the kernels and with plain torch side by side in this one run.
Prints ``name: value`` lines ``torch_over_kernels_B{B}_M{M}_D{D}`` (> 1: the kernels are faster);
``reslim.models`` uses the kernels from ``KERNEL_MIN_ELEMENTS`` block-weight elements per layer
(``B * D * cols``) and ``KERNEL_MIN_COLS`` columns, per dtype; ``default`` says which it picks.

Usage: ``python bench/kernel_crossover.py [--repeats 5] [--dtype float32]``.
"""

from __future__ import annotations

import argparse

import torch

from reslim import ResNet, Shape, gaussian_data
from reslim._src.models.resnet import KERNEL_MIN_COLS, KERNEL_MIN_ELEMENTS
from reslim._src.training.trainer import _SGDUpdate, loss_and_grad
from step import best_time  # bench/ is on the path when run as a script

SHAPES = [(14, 14), (45, 45), (96, 96), (150, 150), (206, 206), (301, 301), (439, 439), (2000, 45),
          (45, 2000), (128, 2000)]


def step_time(B: int, M: int, D: int, use_kernels: bool, repeats: int, dtype: str) -> tuple[float, bool]:
    """Best time of one GD step, and whether the model picks the kernels by default."""
    data = gaussian_data(10, 5, 5, seed=0)
    net = ResNet(Shape(50, M, D), param="mlu", d_in=5, d_out=5, seeds=list(range(B)), dtype=dtype)
    X, Y = (torch.as_tensor(a, dtype=net.W_e.dtype) for a in (data.X, data.Y))
    default = net.kernels_apply(10)
    net.use_kernels = use_kernels
    update = _SGDUpdate(net, {"U": 1e-12, "V": 1e-12})

    def step():
        cache = net.forward_cached(X)
        _, dy = loss_and_grad(cache.y, Y, "mean")
        net.backward_update(X, cache, dy, update)

    return best_time(step, repeats), default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"kernel_min_elements: {KERNEL_MIN_ELEMENTS[dtype]}")
    print(f"kernel_min_cols: {KERNEL_MIN_COLS[dtype]}")
    for B in (1, 5):
        for M, D in SHAPES:
            k, default = step_time(B, M, D, True, args.repeats, args.dtype)
            t, _ = step_time(B, M, D, False, args.repeats, args.dtype)
            chosen = "kernels" if default else "torch"
            print(f"torch_over_kernels_B{B}_M{M}_D{D}: {t / k:.2f}  (kernels {k * 1e3:.2f} ms, "
                  f"torch {t * 1e3:.2f} ms; default: {chosen})")


if __name__ == "__main__":
    main()
