"""Benchmark: wall time of the paper's convergence grid (docs/theory.md §3.1, both runs) against the
machine's flop roofline. Prints ``name: value`` lines.

    python bench/paper_grid.py                 # full grid (sizes <= 2000), float64 and float32
    python bench/paper_grid.py --max-size 642  # reduced grid: sizes <= 642, reference (50, 642, 642)

Flops of the grid: per run ``(12 K + 4) L M D N`` (K GD steps: forward 2 GEMMs, backward 4; plus
the final forward), summed over every run including the references. Roofline = flops / the
GEMM rate of a large ``torch.matmul`` measured in the same process.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from reslim.experiments import get_experiment, load_spec, run_sweep


def gemm_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Flops per second of an n x n x n matmul (best of ``repeats``)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def grid_spec(max_size: int, dtype: str, reps: int):
    paper = load_spec("convergence-paper")
    sizes = [v for v in paper.grid.M if v <= max_size]
    if max_size not in sizes:
        sizes.append(max_size)
    overrides = [f"grid.M={sizes}", f"grid.D={sizes}", f"reference.shape=[50,{max_size},{max_size}]",
                 f"dtype='{dtype}'", f"repetitions={reps}", f"name='bench-{max_size}-{dtype}'"]
    return load_spec("convergence-paper", overrides)


def grid_flops(spec) -> tuple[int, float]:
    runs = get_experiment("convergence").expand(spec)
    K, N = spec.train.steps, spec.data.N
    flops = 0.0
    for r in runs:
        L, M, D = r.config["shape"]
        flops += (12 * K + 4) * L * M * D * N
    return len(runs), flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-size", type=int, default=2000, help="largest M and D (and the reference's)")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default=None, help="keep the stores here (default: a temporary directory)")
    args = ap.parse_args()
    print(f"torch_threads: {torch.get_num_threads()}")
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        for dtype in args.dtypes.split(","):
            spec = grid_spec(args.max_size, dtype, args.repetitions)
            n_runs, flops = grid_flops(spec)
            rate = gemm_rate(getattr(torch, dtype))
            t0 = time.perf_counter()
            summary = run_sweep(spec, f"{root}/{spec.name}", jobs=args.jobs, progress=False)
            wall = time.perf_counter() - t0
            roof = flops / rate
            ratios[dtype] = wall / roof
            print(f"grid_runs: {n_runs}")
            print(f"grid_max_size: {args.max_size}")
            print(f"grid_flops: {flops:.4g}")
            print(f"gemm_gflops_{dtype}: {rate / 1e9:.2f}")
            print(f"wall_{dtype}_s: {wall:.2f}")
            print(f"roofline_{dtype}_s: {roof:.2f}")
            print(f"grid_roofline_ratio_{dtype}: {wall / roof:.2f}")
            print(f"runs_failed_{dtype}: {summary.counts['failed']}")
            print(f"runs_diverged_{dtype}: {summary.counts['diverged']}")
    if "float64" in ratios:
        print(f"grid_roofline_ratio: {ratios['float64']:.2f}")


if __name__ == "__main__":
    main()
