"""Executors: where batched tasks run. The driver hands an executor a list of :class:`Task`\\ s
and consumes :class:`TaskOutcome`\\ s as tasks complete; it alone writes the store.

Workers call :func:`execute_task`, which never raises for a run's own error: a failing batch
is retried run by run and each run that still raises comes back as ``failed`` with its error.
An executor implements :meth:`Executor.run`; :class:`LocalExecutor` is the default (in-process
for ``jobs=1``, else a spawn-started process pool).
"""

from __future__ import annotations

import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from .registry import Run, RunResult, get_experiment


@dataclass(frozen=True)
class Task:
    """Runs of one kind and group (equal shapes), executed together in one worker call."""

    kind: str
    module: str
    runs: tuple[Run, ...]

    @property
    def cost(self) -> float:
        return sum(r.cost for r in self.runs)

    @property
    def mem(self) -> float:
        return sum(r.mem for r in self.runs)

    @property
    def label(self) -> str:
        return self.runs[0].label if self.runs else ""


@dataclass
class TaskOutcome:
    """One completed task: one result per run, in the task's order."""

    task: Task
    results: list[RunResult]


def _failed(run: Run, err: BaseException | str, seconds: float = 0.0) -> RunResult:
    if isinstance(err, BaseException):
        msg = f"{type(err).__name__}: {err}"
        tb = traceback.format_exception(err)
        where = tb[-2].strip().splitlines()[0] if len(tb) > 1 else ""
        msg = f"{msg} ({where})" if where else msg
    else:
        msg = err
    return RunResult(key=run.key, status="failed", error=msg, seconds=seconds)


def _execute(kind, runs: list[Run]) -> list[RunResult]:
    t0 = time.perf_counter()
    results = kind.execute(runs)
    if len(results) != len(runs) or any(r.key != run.key for r, run in zip(results, runs, strict=True)):
        raise RuntimeError(f"experiment kind {kind.name!r} returned results that do not match its runs")
    per_run = (time.perf_counter() - t0) / len(runs)
    for r in results:
        r.seconds = r.seconds or per_run
    return results


def execute_task(task: Task, threads: int | None = None) -> list[RunResult]:
    """Worker entry point: execute a task (with ``threads`` torch threads if given), isolating
    failures to single runs."""
    if threads is None:
        return _execute_task(task)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _execute_task(task)
    finally:
        torch.set_num_threads(before)


def _execute_task(task: Task) -> list[RunResult]:
    try:
        kind = get_experiment(task.kind, task.module)
    except Exception as err:  # noqa: BLE001 - reported as the runs' error
        return [_failed(r, err) for r in task.runs]
    try:
        return _execute(kind, list(task.runs))
    except Exception as err:  # noqa: BLE001
        if len(task.runs) == 1:
            return [_failed(task.runs[0], err)]
    out = []
    for run in task.runs:  # retry one by one so that one bad run does not fail its batch
        t0 = time.perf_counter()
        try:
            out.extend(_execute(kind, [run]))
        except Exception as err:  # noqa: BLE001
            out.append(_failed(run, err, time.perf_counter() - t0))
    return out


class Executor(ABC):
    """Runs tasks somewhere and yields their outcomes as they complete (any order)."""

    name: str = "executor"
    #: how many tasks run at once (for progress display)
    slots: int = 1

    @abstractmethod
    def run(self, tasks: Sequence[Task]) -> Iterator[TaskOutcome]:
        """Execute every task; yield one :class:`TaskOutcome` per task. A task whose worker
        died comes back with ``failed`` results (the driver stores them; a rerun retries)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _exit_with_driver(driver: int, interval: float = 0.5) -> None:
    """Ends this worker process once its driver is gone: a driver killed by SIGKILL cannot shut
    its pool down, and its idle workers would otherwise wait for work forever."""
    while True:
        time.sleep(interval)
        if os.getppid() != driver:
            os._exit(1)


def _init_worker(threads: int, driver: int) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_driver, args=(driver,), name="reslim-driver-watch",
                     daemon=True).start()


class LocalExecutor(Executor):
    """``jobs`` worker processes on this machine (``jobs=1``: in the driver process itself).

    ``threads``: torch threads per worker for large tasks (default: CPU count / jobs, at least
    1); tasks under ``small_task_flops`` (by their runs' ``cost``) run single-threaded, where
    intra-op threads only add overhead (8-15x slower on a busy 2-core machine).
    ``max_retries``: resubmissions of a task whose worker process died (every task in flight
    in the broken pool counts an attempt); then its runs are ``failed``.
    """

    name = "local"

    def __init__(self, jobs: int = 1, threads: int | None = None, max_retries: int = 2,
                 small_task_flops: float = 1e10) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.jobs = self.slots = jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.small_task_flops = small_task_flops
        self._pool: ProcessPoolExecutor | None = None

    def threads_for(self, task: Task) -> int:
        """Torch threads for ``task``: 1 for small tasks, else ``threads``."""
        return 1 if task.cost < self.small_task_flops else self.threads

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker,
                                             initargs=(self.threads, os.getpid()))
        return self._pool

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskOutcome]:
        if self.jobs == 1:
            for task in tasks:
                yield TaskOutcome(task, execute_task(task, self.threads_for(task)))
            return
        from collections import deque
        from concurrent.futures.process import BrokenProcessPool

        queue: deque[tuple[Task, int]] = deque((t, 0) for t in tasks)
        futures: dict[Future, tuple[Task, int, ProcessPoolExecutor]] = {}
        try:
            while queue or futures:
                pool = self._get_pool()
                while queue and len(futures) < 2 * self.jobs:  # bounded: a broken pool loses little
                    task, attempt = queue.popleft()
                    futures[pool.submit(execute_task, task, self.threads_for(task))] = (task, attempt, pool)
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    task, attempt, owner = futures.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool as err:  # a worker died: retry on a fresh pool
                        if self._pool is owner:
                            owner.shutdown(wait=False, cancel_futures=True)
                            self._pool = None
                        if attempt < self.max_retries:
                            queue.appendleft((task, attempt + 1))
                            continue
                        results = [_failed(r, f"worker process died {attempt + 1} time(s), retries "
                                              f"exhausted: {type(err).__name__}: {err}") for r in task.runs]
                    except Exception as err:  # noqa: BLE001 - e.g. results that cannot be unpickled
                        results = [_failed(r, f"worker error: {type(err).__name__}: {err}")
                                   for r in task.runs]
                    yield TaskOutcome(task, results)
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor}
#: modules that register further executors, imported on a miss (``ray``: optional extra)
EXECUTOR_MODULES = {"ray": "reslim._src.experiments.ray_executor"}


def make_executor(name: str = "local", **options) -> Executor:
    """An executor by name (``local``, ``ray``; see :data:`EXECUTORS`)."""
    if name not in EXECUTORS and name in EXECUTOR_MODULES:
        import importlib

        importlib.import_module(EXECUTOR_MODULES[name])
    if name not in EXECUTORS:
        known = ", ".join(sorted({*EXECUTORS, *EXECUTOR_MODULES}))
        raise ValueError(f"unknown executor {name!r}; choose from {known}")
    return EXECUTORS[name](**options)
