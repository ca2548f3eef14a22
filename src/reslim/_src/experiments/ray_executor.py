"""The Ray executor: the sweep's batched tasks as Ray tasks on a local instance or a cluster.

One Ray task per :class:`Task` (runs of equal shape batched by ``plan_tasks``), with
``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs reserved (fractions below 1 allowed). At most
``jobs`` tasks (default: what the cluster's CPUs/GPUs hold) are in flight, plus as many queued,
so the driver never holds thousands of object refs. A task whose worker process dies (crash,
``os._exit``, OOM kill, lost node) is resubmitted up to ``max_retries`` times; after that its
runs come back as ``failed`` with the error. A run that raises is ``failed`` at once (no retry:
``execute_task`` isolates it). Workers only compute; the driver alone writes the store.

Addresses: ``None`` starts a **private** local instance (``ray.init(address="local")``), never the
cluster that ``RAY_ADDRESS`` or Ray's shared temp directory (``/tmp/ray/ray_current_cluster``,
writable by other local users) names; ``"auto"`` is the explicit opt-in to that lookup; ``HOST:PORT``
(or ``ray://HOST:PORT``) connects there. A connection that is not made within
``connect_timeout`` seconds (default 30) is a one-line ``ValueError`` naming ``--address``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from .executors import EXECUTORS, Executor, Task, TaskOutcome, _failed, execute_task

_HOST_PORT = re.compile(r"^(?:ray://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_address(address: str | None) -> str | None:
    """``None`` (start a local instance), ``auto`` or ``[ray://]HOST:PORT``; ValueError otherwise."""
    if address is None or address == "auto":
        return address
    m = _HOST_PORT.match(str(address))
    if m is None or not 1 <= int(m.group(1)) <= 65535:
        raise ValueError(f"--address must be 'auto' or HOST:PORT (port 1-65535), got {address!r}")
    return address


def check_resource(option: str, value: float, *, positive: bool) -> float:
    """A per-task resource amount: finite, > 0 (CPUs) or >= 0 (GPUs), whole when above 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{option} must be {'> 0' if positive else '>= 0'}, got {value:g}")
    if value > 1 and value != int(value):
        raise ValueError(f"{option} above 1 must be a whole number (fractions only below 1), got {value:g}")
    return float(value)


DEFAULT_CONNECT_TIMEOUT = 30.0


def check_timeout(value: float, option: str = "--connect-timeout") -> float:
    """Seconds to wait for a Ray cluster: finite and > 0."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when ``HOST:PORT`` accepts no connection."""
    if address is None or address == "auto":
        return
    import socket

    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"cannot reach Ray at --address {address}: {err.strerror or err}") from None


class _DropThreadWarning(logging.Filter):
    """Ray warns that it sets no SIGTERM handler when ``ray.init`` runs outside the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _init_within(ray, timeout: float, **kwargs) -> None:
    """``ray.init(**kwargs)``, or TimeoutError after ``timeout`` seconds: Ray itself retries an
    address that accepts connections but does not answer (not a Ray GCS, or a firewall that drops
    packets) for many minutes. The init runs in a daemon thread; one that never returns is left
    behind (it cannot be cancelled) and does not keep the process from exiting."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["err"] = err

    log = logging.getLogger("ray._private.worker")
    quiet = _DropThreadWarning()
    log.addFilter(quiet)
    try:
        thread = threading.Thread(target=target, name="reslim-ray-connect", daemon=True)
        thread.start()
        thread.join(timeout)
    finally:
        log.removeFilter(quiet)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s (raise --connect-timeout to wait longer)")
    if "err" in box:
        raise box["err"]


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'reslim[ray]'") from None
    return ray


def _execute_in_worker(task: Task, threads: int) -> list:
    """Ray task body: ``threads`` torch threads, then the usual worker entry point."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return execute_task(task)


class RayExecutor(Executor):
    """Tasks as Ray tasks. ``address``: ``None`` starts a private local Ray instance (or uses the
    connection this process already opened with ``ray.init``; ``RAY_ADDRESS`` is ignored),
    ``auto`` joins the cluster Ray finds on this node (``RAY_ADDRESS``, else the one recorded in
    Ray's temp directory), ``HOST:PORT`` (or ``ray://HOST:PORT``) a remote one, within
    ``connect_timeout`` seconds.

    ``cpus_per_task`` / ``gpus_per_task``: Ray resources of one task; torch uses
    ``threads`` (default ``max(1, int(cpus_per_task))``) threads in it. ``jobs``: tasks in
    flight (default: as many as the cluster can run at once). ``max_retries``: resubmissions of
    a task whose worker died. ``runtime_env`` / ``init_options``: passed to ``ray.init``.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
                 max_retries: int = 2, jobs: int | None = None, threads: int | None = None,
                 runtime_env: dict[str, Any] | None = None, init_options: dict[str, Any] | None = None,
                 check_resources: bool = True, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        self.address = check_address(address)
        self.connect_timeout = check_timeout(connect_timeout)
        self.cpus_per_task = check_resource("--cpus-per-task", cpus_per_task, positive=True)
        self.gpus_per_task = check_resource("--gpus-per-task", gpus_per_task, positive=False)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"--max-retries must be an integer >= 0, got {max_retries!r}")
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise ValueError(f"--jobs must be a positive integer, got {jobs!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.max_retries = max_retries
        self.threads = threads or max(1, int(self.cpus_per_task))
        #: tasks resubmitted after a worker died (over the executor's lifetime)
        self.retried = 0
        ray = _ray()
        self._owns = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                       "runtime_env": runtime_env, **(init_options or {})}
            if self.address is None:  # private: never a cluster named by RAY_ADDRESS or /tmp/ray
                try:
                    ray.init(address="local", **options)
                except Exception as err:  # noqa: BLE001 - reported as one line
                    raise ValueError(f"cannot start a local Ray instance: {_first_line(err)}") from None
            else:
                _check_reachable(self.address, min(5.0, self.connect_timeout))
                try:
                    _init_within(ray, self.connect_timeout, address=self.address, **options)
                except Exception as err:  # noqa: BLE001 - reported as one line
                    raise ValueError(f"cannot connect to Ray at --address {self.address}: "
                                     f"{_first_line(err)}") from None
            self._owns = True
        self._ray = ray
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
        if check_resources:
            self._check_feasible(nodes)
        cpus = sum(n.get("CPU", 0.0) for n in nodes)
        capacity = math.floor(cpus / self.cpus_per_task + 1e-9)
        if self.gpus_per_task > 0:
            gpus = sum(n.get("GPU", 0.0) for n in nodes)
            capacity = min(capacity, math.floor(gpus / self.gpus_per_task + 1e-9))
        self.slots = jobs or max(1, capacity)
        #: memory (bytes) of the largest node: what one task can use at most
        self.task_memory_bytes = max((n.get("memory", 0.0) for n in nodes), default=0.0) or None
        self._remote = ray.remote(_execute_in_worker).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=0)

    def _check_feasible(self, nodes: list[dict[str, float]]) -> None:
        fits = [n for n in nodes if n.get("CPU", 0.0) >= self.cpus_per_task
                and n.get("GPU", 0.0) >= self.gpus_per_task]
        if not fits:
            have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
            self.close()
            raise ValueError(f"no Ray node has --cpus-per-task {self.cpus_per_task:g} and --gpus-per-task "
                             f"{self.gpus_per_task:g} free (nodes: {have})")

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskOutcome]:
        ray = self._ray
        from ray.exceptions import RayError, RayTaskError

        queue: deque[tuple[Task, int]] = deque((t, 0) for t in tasks)
        pending: dict[Any, tuple[Task, int]] = {}
        limit = 2 * self.slots  # one running and one queued per slot
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    task, attempt = queue.popleft()
                    pending[self._remote.remote(task, self.threads)] = (task, attempt)
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task, attempt = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except RayTaskError as err:  # execute_task itself raised: not a worker death
                        results = [_failed(r, f"ray task error: {_first_line(err)}") for r in task.runs]
                    except RayError as err:  # the worker (or its node) died
                        if attempt < self.max_retries:
                            self.retried += 1
                            queue.appendleft((task, attempt + 1))
                            continue
                        results = [_failed(r, f"worker died {attempt + 1} time(s), retries exhausted: "
                                              f"{type(err).__name__}: {_first_line(err)}") for r in task.runs]
                    yield TaskOutcome(task, results)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


EXECUTORS["ray"] = RayExecutor
