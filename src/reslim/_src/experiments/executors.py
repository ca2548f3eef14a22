"""Executors: where batched tasks run. The driver hands an executor a list of :class:`Task`\\ s
and consumes :class:`TaskOutcome`\\ s as tasks complete; it alone writes the store.

Workers call :func:`execute_task`, which never raises for a run's own error: a failing batch
is retried run by run and each run that still raises comes back as ``failed`` with its error.
An executor implements :meth:`Executor.run`; :class:`LocalExecutor` is the default (in-process
for ``jobs=1``, else spawn-started worker processes).

The local workers and their driver exchange bytes only, never pickles: a task goes to a worker as
JSON (:func:`encode_task`), its results come back as a JSON header (key, status, metrics, error,
seconds, and each array's name, dtype, shape and size) followed by the arrays' raw bytes
(:func:`encode_results`), over ``multiprocessing`` pipes used with ``send_bytes`` /
``recv_bytes``, which never unpickle.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import time
import traceback
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    from ..training.trainer import threads as thread_count

    with thread_count(threads):  # the one thread-budget helper (None: as it is)
        return _execute_task(task)


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


# --- messages between the driver and its local workers: JSON and np.save bytes, never pickles ---
_HEADER = struct.Struct("<Q")


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))


def encode_task(task: Task, threads: int) -> bytes:
    """A task (and the torch threads to run it with) as JSON bytes; runs' configs are JSON-able."""
    return json.dumps({"kind": task.kind, "module": task.module, "threads": threads,
                       "runs": [[getattr(r, f) for f in _RUN_FIELDS] for r in task.runs]}).encode()


def decode_task(data: bytes) -> tuple[Task, int]:
    """Inverse of :func:`encode_task` (in the worker)."""
    d = json.loads(data)
    runs = tuple(Run(**dict(zip(_RUN_FIELDS, r, strict=True))) for r in d["runs"])
    return Task(d["kind"], d["module"], runs), int(d["threads"])


def _pack_array(name: str, a: Any) -> tuple[dict[str, Any], bytes]:
    """``(header entry, bytes)`` of one array: its raw bytes in C or Fortran order with the dtype
    string and shape, or (a dtype that its string does not describe, e.g. nested structured
    fields) ``np.save`` bytes. Object arrays are refused: only pickle could carry them."""
    a = np.asarray(a)
    if a.dtype.hasobject:
        raise TypeError(f"object arrays cannot be sent (array {name!r}, dtype {a.dtype})")
    if np.dtype(a.dtype.str) != a.dtype:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        data = buf.getvalue()
        return {"name": name, "npy": True, "nbytes": len(data)}, data
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    data = a.tobytes(order=order)
    return {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "order": order,
            "nbytes": len(data)}, data


def _unpack_array(e: dict[str, Any], data: memoryview) -> np.ndarray:
    if e.get("npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    dtype = np.dtype(e["dtype"])
    if dtype.hasobject:
        raise ValueError(f"object arrays are not accepted (array {e['name']!r})")
    return np.frombuffer(data, dtype=dtype).reshape(e["shape"], order=e["order"]).copy(order="K")


def encode_results(results: Sequence[RunResult]) -> bytes:
    """Results as bytes: an 8-byte length, a JSON header (one entry per result: key, status,
    metrics, error, seconds, and name, dtype, shape, order and size of each array), then the
    arrays' bytes in header order. A result that cannot be encoded (metrics that are not JSON,
    object arrays) becomes ``failed`` with the reason."""
    entries: list[str] = []  # JSON objects
    blobs: list[bytes] = []
    for r in results:
        try:
            arrays = [_pack_array(str(name), a) for name, a in r.arrays.items()]
            entry = json.dumps({"key": r.key, "status": r.status, "metrics": r.metrics, "error": r.error,
                                "seconds": float(r.seconds), "arrays": [h for h, _ in arrays]})
        except Exception as err:  # noqa: BLE001 - reported as the run's error
            arrays = []
            entry = json.dumps({"key": r.key, "status": "failed", "metrics": {}, "arrays": [],
                                "error": f"result cannot be sent to the driver: {type(err).__name__}: {err}",
                                "seconds": float(r.seconds or 0.0)})
        entries.append(entry)
        blobs.extend(b for _, b in arrays)
    head = ("[" + ",".join(entries) + "]").encode()
    return b"".join([_HEADER.pack(len(head)), head, *blobs])


def decode_results(data: bytes) -> list[RunResult]:
    """Inverse of :func:`encode_results` (in the driver): ``json.loads``, ``np.frombuffer`` with a
    dtype string, ``np.load(allow_pickle=False)``; nothing here can rebuild a Python object."""
    view = memoryview(data)
    (n,) = _HEADER.unpack_from(view)
    pos = _HEADER.size + n
    out = []
    for e in json.loads(bytes(view[_HEADER.size:pos])):
        arrays = {}
        for h in e["arrays"]:
            size = int(h["nbytes"])
            if pos + size > len(view):
                raise ValueError("malformed worker message: truncated arrays")
            arrays[h["name"]] = _unpack_array(h, view[pos:pos + size])
            pos += size
        out.append(RunResult(e["key"], e["status"], e["metrics"], arrays, e["error"], float(e["seconds"])))
    if pos != len(view):
        raise ValueError(f"malformed worker message: {len(view) - pos} trailing bytes")
    return out


# --- local worker processes -----------------------------------------------------------------------
def _exit_with_driver(driver: int, interval: float = 0.5) -> None:
    """Ends this worker process once its driver is gone: a driver killed by SIGKILL cannot shut
    its workers down, and a worker in the middle of a task would otherwise finish it first."""
    while True:
        time.sleep(interval)
        if os.getppid() != driver:
            os._exit(1)


def _init_worker(threads: int, driver: int) -> None:
    import signal
    import threading

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the driver; workers follow it
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_driver, args=(driver,), name="reslim-driver-watch",
                     daemon=True).start()


def _worker_main(tasks, results, threads: int, driver: int) -> None:
    """A worker process: read tasks (JSON bytes) from ``tasks``, send their encoded results to
    ``results``, in order; exit when the driver closes ``tasks`` or dies."""
    _init_worker(threads, driver)
    while True:
        try:
            msg = tasks.recv_bytes()
        except (EOFError, OSError):  # closed by the driver, or the driver is gone
            return
        task, n = decode_task(msg)
        try:
            results.send_bytes(encode_results(execute_task(task, n)))
        except OSError:  # the driver is gone
            return


class _Worker:
    """One spawn-started worker process and the driver's ends of its two one-way pipes; ``pending``:
    the tasks sent to it, in order (the first one is running)."""

    def __init__(self, ctx, threads: int, driver: int) -> None:
        task_r, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_w = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker_main, args=(task_r, result_w, threads, driver),
                                name="reslim-worker")
        self.proc.start()
        task_r.close()  # the child holds its own copies: the driver sees EOF when the child dies
        result_w.close()
        self.pending: deque[tuple[Task, int]] = deque()

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        self.tasks.close()  # the worker's reader sees EOF and the worker exits after its task
        if kill:
            self.proc.kill()
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout)
        self.results.close()


def _stop_workers(workers: list[_Worker], kill: bool = False) -> None:
    for w in workers:
        w.tasks.close()
    for w in workers:
        w.stop(kill)
    workers.clear()


_AT_EXIT = False
#: largest task message queued behind a running task: it must fit in the (empty) pipe buffer
#: (64 KiB on Linux), or the driver could block on it while the worker blocks sending a result
_QUEUED_MAX = 16 * 1024
_OPEN: weakref.WeakSet = weakref.WeakSet()  # local executors that may hold workers


def _close_all() -> None:
    """At interpreter exit: stop the workers of every executor that was not closed."""
    for ex in list(_OPEN):
        ex.close()


def _died(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalExecutor(Executor):
    """``jobs`` worker processes on this machine (``jobs=1``: in the driver process itself).

    ``threads``: torch threads per worker for large tasks (default: CPU count / jobs, at least
    1); tasks under ``small_task_flops`` (by their runs' ``cost``) run single-threaded, where
    intra-op threads only add overhead (8-15x slower on a busy 2-core machine).
    ``max_retries``: resubmissions of a task whose worker process died (only that task counts an
    attempt; the tasks queued behind it on that worker go to a fresh worker unchanged); then its
    runs are ``failed``. Each worker holds at most two tasks (one running, one queued); tasks
    and results travel as bytes (JSON and raw array bytes), never pickled.
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
        #: tasks resubmitted after their worker process died (over the executor's lifetime)
        self.retried = 0
        self._workers: list[_Worker] = []
        # workers also stop when the executor is dropped, or at exit (see _new_worker)
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        self._finalizer.atexit = False

    def threads_for(self, task: Task) -> int:
        """Torch threads for ``task``: 1 for small tasks, else ``threads``."""
        return 1 if task.cost < self.small_task_flops else self.threads

    def _new_worker(self) -> _Worker:
        import multiprocessing as mp

        worker = _Worker(mp.get_context("spawn"), self.threads, os.getpid())
        _OPEN.add(self)
        global _AT_EXIT
        if not _AT_EXIT:  # registered after multiprocessing's own exit hook, so it runs before it:
            import atexit  # that hook joins every child, and a worker exits once its pipe closes

            atexit.register(_close_all)
            _AT_EXIT = True
        return worker

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskOutcome]:
        if self.jobs == 1:
            for task in tasks:
                yield TaskOutcome(task, execute_task(task, self.threads_for(task)))
            return
        from multiprocessing.connection import wait

        queue: deque[tuple[Task, int]] = deque((t, 0) for t in tasks)
        workers = self._workers
        while len(workers) < self.jobs:
            workers.append(self._new_worker())
        try:
            while queue or any(w.pending for w in workers):
                for i, w in enumerate(workers):
                    if not w.pending and w.proc.exitcode is not None:  # died while idle
                        w.stop()
                        workers[i] = w = self._new_worker()
                    self._feed(w, queue)
                busy = [w for w in workers if w.pending]
                if not busy:
                    continue
                ready = set(wait([c for w in busy for c in (w.results, w.proc.sentinel)]))
                for i, w in enumerate(workers):
                    if not w.pending:
                        continue
                    try:
                        if w.results.poll():  # a result, or EOF if the worker died
                            data = w.results.recv_bytes()
                        elif w.proc.sentinel in ready:
                            raise EOFError
                        else:
                            continue
                    except (EOFError, OSError):  # the worker died: its task is retried on a fresh one
                        outcome = self._lost(workers, i, queue)
                        if outcome is not None:
                            yield outcome
                        continue
                    task, _ = w.pending.popleft()
                    self._feed(w, queue)  # before the driver stores this result
                    try:
                        results = decode_results(data)
                    except Exception as err:  # noqa: BLE001 - a malformed message
                        results = [_failed(r, f"worker error: {type(err).__name__}: {err}")
                                   for r in task.runs]
                    yield TaskOutcome(task, results)
        finally:
            stale = [w for w in workers if w.pending]  # left early: their results would be stale
            if stale:
                for w in stale:
                    workers.remove(w)
                _stop_workers(stale, kill=True)

    def _feed(self, w: _Worker, queue: deque) -> None:
        """Send ``w`` tasks up to one running and one queued; a queued one only while the queue
        holds a task for every worker (at the tail, tasks go to idle workers), and only when its
        message fits in the pipe's buffer (a send to a busy worker cannot block then)."""
        while queue and (not w.pending or (len(w.pending) < 2 and len(queue) >= self.jobs)):
            task, _ = queue[0]
            msg = encode_task(task, self.threads_for(task))
            if w.pending and len(msg) > _QUEUED_MAX:
                return  # sent once the worker is idle
            try:
                w.tasks.send_bytes(msg)
            except OSError:  # the worker died: noticed through its sentinel
                return
            w.pending.append(queue.popleft())

    def _lost(self, workers: list[_Worker], i: int, queue: deque) -> TaskOutcome | None:
        """Worker ``i`` died: replace it; its running task is retried (or comes back ``failed``
        once retries are exhausted), the tasks queued behind it go back to the queue's front."""
        w = workers[i]
        w.proc.join(1.0)
        why = _died(w.proc)
        lost = list(w.pending)
        w.pending.clear()
        w.stop(kill=True)
        workers[i] = self._new_worker()
        queue.extendleft(reversed(lost[1:]))  # never started: no attempt counted
        task, attempt = lost[0]
        if attempt < self.max_retries:
            self.retried += 1
            queue.appendleft((task, attempt + 1))
            return None
        return TaskOutcome(task, [_failed(r, f"worker process died {attempt + 1} time(s), retries "
                                             f"exhausted: {why}") for r in task.runs])

    def close(self) -> None:
        _stop_workers(self._workers)


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
