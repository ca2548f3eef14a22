"""Benchmark the executors: 200 small CPU-bound runs (the ``probe`` kind: products of random
``size x size`` float64 matrices, one torch thread per worker) through one process, ``local``
with ``--jobs 2`` and ``ray`` on this machine; prints ``name: value`` lines.

- ``*_throughput_ratio``: runs/s relative to a single process (target >= 1.8 on 2 CPUs);
  pools and Ray are started and warmed up first (startup printed separately); the single-process
  runs are split into interleaved rounds (single, local, ray, single, ...) so that each ratio
  compares neighbours in time (the machine may be shared); ``_rounds`` lists the ratio per round.
- ``bare_pool2_throughput_ratio``: the same computation through a bare ``multiprocessing`` pool
  (no sweep, no store) measured in the same rounds: what 2 processes achieve on the machine right
  now (below 2 when other work competes for the cores); ``*_vs_bare_pool``: executor / bare pool.
- ``*_overhead_ms_per_run``: wall time per run of 200 empty runs (one task each) minus the same in
  one process (which includes writing the store): the cost of scheduling a task; ``_grouped10``:
  10 runs per task (how the sweep batches runs of equal shape).

    python bench/executors.py [--runs 200] [--work 150] [--size 128] [--rounds 4] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _load() -> float:
    return os.getloadavg()[0]


def _raw(i: int, work: int, size: int) -> float:
    """The probe computation alone (no sweep, no store): what a bare process pool achieves."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(i)
    a = torch.randn(size, size, generator=g, dtype=torch.float64) / size**0.5
    x = torch.eye(size, dtype=torch.float64)
    for _ in range(work):
        x = torch.tanh(a @ x)
    return float(x.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--work", type=int, default=150, help="matrix products per run")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (runs are split among them)")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    import torch

    from reslim._src.experiments.executors import LocalExecutor, make_executor
    from reslim._src.experiments.spec import load_spec
    from reslim._src.experiments.sweep import run_sweep

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    counter = iter(range(10**6))

    def spec(runs, work, group=1):
        return load_spec({"kind": "probe", "name": "bench", "runs": runs, "work": work, "size": args.size,
                          "group_size": group})

    def sweep(executor, runs, work, group=1) -> float:
        t0 = time.perf_counter()
        s = run_sweep(spec(runs, work, group), tmp / f"s{next(counter)}", executor=executor, progress=False)
        assert s.counts["done"] == runs, s.counts
        return time.perf_counter() - t0

    print(f"cpus: {os.cpu_count()}")
    print(f"loadavg_1min_start: {_load():.2f}")
    print(f"runs: {args.runs}")
    executors = {"single": LocalExecutor(jobs=1, threads=1)}
    t0 = time.perf_counter()
    executors[f"local_jobs{args.jobs}"] = LocalExecutor(jobs=args.jobs, threads=1)
    sweep(executors[f"local_jobs{args.jobs}"], 2 * args.jobs, 0)  # start and warm the pool
    print(f"local_startup_s: {time.perf_counter() - t0:.2f}")
    if not args.no_ray:
        t0 = time.perf_counter()
        executors["ray"] = make_executor("ray", init_options={"num_cpus": args.jobs})
        sweep(executors["ray"], 2 * executors["ray"].slots, 0)  # start the workers
        print(f"ray_startup_s: {time.perf_counter() - t0:.2f}")
    sweep(executors["single"], 4, args.work)  # warm-up
    import multiprocessing as mp
    from functools import partial

    raw_pool = mp.get_context("spawn").Pool(args.jobs)
    raw = partial(_raw, work=args.work, size=args.size)
    raw_pool.map(raw, range(2 * args.jobs), chunksize=1)

    # interleaved rounds: the machine may be shared, so each ratio compares neighbours in time
    rounds = max(1, args.rounds)
    per = max(1, args.runs // rounds)
    busy = {name: 0.0 for name in executors}
    empty = {name: 0.0 for name in executors}
    ratios: dict[str, list[float]] = {name: [] for name in executors if name != "single"}
    busy_raw = 0.0
    for _ in range(rounds):
        t = {name: sweep(ex, per, args.work) for name, ex in executors.items()}
        t0 = time.perf_counter()
        raw_pool.map(raw, range(per), chunksize=1)
        busy_raw += time.perf_counter() - t0
        for name in ratios:
            ratios[name].append(t["single"] / t[name])
        for name in executors:
            busy[name] += t[name]
    for name, ex in executors.items():
        empty[name] = sweep(ex, args.runs, 0)
    grouped = {name: sweep(ex, args.runs, 0, group=10) for name, ex in executors.items() if name != "single"}
    for ex in executors.values():
        ex.close()
    raw_pool.close()

    n = per * rounds
    print(f"run_seconds_single: {busy['single'] / n:.4f}")
    print(f"single_runs_per_s: {n / busy['single']:.2f}")
    print(f"single_store_ms_per_run: {1e3 * empty['single'] / args.runs:.2f}")
    print(f"bare_pool{args.jobs}_throughput_ratio: {busy['single'] / busy_raw:.2f}")
    for name in ratios:
        print(f"{name}_vs_bare_pool: {busy_raw / busy[name]:.2f}")
        print(f"{name}_runs_per_s: {n / busy[name]:.2f}")
        print(f"{name}_throughput_ratio: {busy['single'] / busy[name]:.2f}")
        print(f"{name}_throughput_ratio_rounds: {' '.join(f'{r:.2f}' for r in ratios[name])}")
        print(f"{name}_overhead_ms_per_run: {1e3 * (empty[name] - empty['single']) / args.runs:.2f}")
        g10 = 1e3 * (grouped[name] - empty["single"]) / args.runs
        print(f"{name}_overhead_ms_per_run_grouped10: {g10:.2f}")
    print(f"loadavg_1min_end: {_load():.2f}")

if __name__ == "__main__":
    main()
