"""Input checks that go beyond a spec's own fields: the output directory, executor options and
the memory of the largest task. Each failure is an :class:`InputError` (a :class:`SpecError`):
one line naming the problem, raised before anything is written."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .spec import SpecError


class InputError(SpecError):
    """Bad user input outside the spec model (one line; the CLI exits with code 2)."""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def check_output_dir(out: str | Path, option: str = "--out") -> Path:
    """``out`` may be created or reused: not a file, its first existing ancestor a writable directory."""
    if not str(out).strip():  # Path("") is the current directory
        raise InputError(f"{option} must name a directory, got {str(out)!r}")
    out = Path(out)
    if out.suffix in (".sqlite", ".db") and not out.is_dir():
        raise InputError(f"{option} {out}: give an output directory, not a store file (the store is "
                         f"DIR/results.sqlite; e.g. {option} {out.with_suffix('')})")
    for part in out.parts:
        if len(os.fsencode(part)) > 255:
            raise InputError(f"{option} {out}: the path component {part[:24]}... is "
                             f"{len(os.fsencode(part))} bytes long, more than the 255 a file name may have")
    if len(os.fsencode(os.path.abspath(out / "results.sqlite-wal"))) >= 4096:
        raise InputError(f"{option} {str(out)[:40]}...: the path is too long (4096 bytes at most)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a directory")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{option} {out}: {parent} is a file, not a directory")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: {parent} is not writable")
    store = out / "results.sqlite"
    if store.exists() and not store.is_file():
        raise InputError(f"{option} {out}: {store} is not a file")
    return out


def default_output_dir(source, spec, root: str | Path = "runs") -> Path:
    """``runs/<name>`` for a spec as written (built-in or file); with ``--set`` overrides that change
    anything but its name, ``runs/<name>-<hash8>`` (the SHA-256 of the spec's canonical JSON), so
    a modified spec never lands in the unmodified one's directory."""
    import hashlib

    from .registry import canonical_json
    from .spec import load_spec

    config = {k: v for k, v in spec.config().items() if k != "name"}
    try:
        plain = {k: v for k, v in load_spec(source).config().items() if k != "name"}
    except SpecError:  # the spec is only valid with its overrides
        plain = None
    if plain == config:
        return Path(root) / spec.name
    digest = hashlib.sha256(canonical_json(spec.config()).encode()).hexdigest()[:8]
    return Path(root) / f"{spec.name}-{digest}"


# --- memory ----------------------------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available to a new task on this machine (``None`` if unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def run_bytes(run) -> float:
    """Memory estimate of one run: its kind's ``Run.mem``, and for runs with a ``shape`` at least
    weights and gradients ``2 * 2*L*M*D * itemsize`` plus activations ``2*L*N*(M + D) * itemsize``
    plus the recorded trajectory ``(K+1)*N*(D + d_out) * 8``."""
    c = run.config
    est = float(run.mem)
    shape = c.get("shape") if isinstance(c, dict) else None
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        L, M, D = (float(v) for v in shape)
        item = 4 if c.get("dtype") == "float32" else 8
        data, train = c.get("data") or {}, c.get("train") or {}
        N, d_out, K = float(data.get("N", 1)), float(data.get("d_out", 1)), float(train.get("steps", 1))
        weights = 2 * L * M * D * item
        est = max(est, 2 * weights + 2 * L * N * (M + D) * item + (K + 1) * N * (D + d_out) * 8)
    return est


def task_bytes(task) -> float:
    """Memory estimate of a batched task: the sum over its ``B`` runs."""
    return sum(run_bytes(r) for r in task.runs)


def check_memory(tasks: Sequence, available: float | None, slots: int = 1) -> None:
    """Refuse a plan whose largest task (or ``slots`` largest tasks in parallel) cannot fit in
    ``available`` bytes, naming the task and the estimate."""
    if not tasks or not available:
        return
    sizes = sorted(((task_bytes(t), t) for t in tasks), key=lambda p: -p[0])
    biggest, task = sizes[0]
    what = f"{task.label or task.kind} x{len(task.runs)} run(s)"
    if biggest > available:
        raise InputError(f"shape too large for memory: {what} needs about {_fmt_bytes(biggest)} "
                         f"(weights 2*L*M*D*B*itemsize, gradients, activations), only "
                         f"{_fmt_bytes(available)} available; "
                         + ("shrink the shape" if len(task.runs) == 1 else "lower max_task_mb"))
    parallel = sum(s for s, _ in sizes[: max(1, slots)])
    if slots > 1 and parallel > available:
        raise InputError(f"not enough memory for {slots} tasks in parallel: the largest need about "
                         f"{_fmt_bytes(parallel)}, only {_fmt_bytes(available)} available; lower --jobs")


def check_spec_memory(spec, executor=None) -> None:
    """Plan ``spec`` like the sweep does and check its tasks against the executor's memory."""
    from .registry import get_experiment
    from .sweep import plan_tasks

    kind = get_experiment(spec.kind)
    runs = kind.expand(spec)
    tasks = plan_tasks(runs, kind.module, max_task_bytes=spec.max_task_mb * 2**20)
    avail = getattr(executor, "task_memory_bytes", None)
    slots = 1 if avail else getattr(executor, "slots", 1)
    check_memory(tasks, avail or available_memory(), slots)


# --- executor options ------------------------------------------------------------------------------
def executor_options(executor: str, *, jobs: int | None = None, address: str | None = None,
                     cpus_per_task: float | None = None, gpus_per_task: float | None = None,
                     max_retries: int | None = None, connect_timeout: float | None = None) -> dict[str, Any]:
    """Check the CLI's executor options and turn them into ``make_executor`` keyword arguments."""
    from .executors import EXECUTOR_MODULES, EXECUTORS

    known = sorted({*EXECUTORS, *EXECUTOR_MODULES})
    if executor not in known:
        raise InputError(f"--executor must be one of {', '.join(known)}, got {executor!r}")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs must be a positive integer, got {jobs}")
    if max_retries is not None and max_retries < 0:
        raise InputError(f"--max-retries must be an integer >= 0, got {max_retries}")
    for option, value in (("--cpus-per-task", cpus_per_task), ("--gpus-per-task", gpus_per_task)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{option} must be a finite number, got {value}")
    options: dict[str, Any] = {}
    if executor == "local":
        if address is not None:
            raise InputError("--address applies to --executor ray only")
        if connect_timeout is not None:
            raise InputError("--connect-timeout applies to --executor ray only")
        if gpus_per_task:
            raise InputError("--gpus-per-task applies to --executor ray only")
        if cpus_per_task is not None:
            if cpus_per_task < 1 or cpus_per_task != int(cpus_per_task):
                raise InputError(f"--cpus-per-task (torch threads per local worker) must be a whole "
                                 f"number >= 1, got {cpus_per_task:g}")
            options["threads"] = int(cpus_per_task)
        options["jobs"] = jobs or 1
        if max_retries is not None:
            options["max_retries"] = max_retries
        return options
    from .ray_executor import check_address, check_resource, check_timeout

    try:
        options["address"] = check_address(address)
        if connect_timeout is not None:
            options["connect_timeout"] = check_timeout(connect_timeout)
        if cpus_per_task is not None:
            options["cpus_per_task"] = check_resource("--cpus-per-task", cpus_per_task, positive=True)
        if gpus_per_task is not None:
            options["gpus_per_task"] = check_resource("--gpus-per-task", gpus_per_task, positive=False)
    except ValueError as err:
        raise InputError(str(err)) from None
    if jobs is not None:
        options["jobs"] = jobs
    if max_retries is not None:
        options["max_retries"] = max_retries
    return options
