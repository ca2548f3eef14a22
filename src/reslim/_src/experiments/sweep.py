"""Sweeps: expand a spec into runs, skip the finished ones, batch equal shapes into tasks,
execute them stage by stage, store every result as it arrives, then analyse and report."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .executors import Executor, LocalExecutor, Task
from .registry import Run, RunResult, get_experiment
from .spec import SpecBase
from .store import Store, StoreError


def plan_tasks(runs: Sequence[Run], module: str, max_task_bytes: float = float("inf"),
               max_batch: int | None = None) -> list[Task]:
    """Group runs by (stage, group) into tasks of at most ``max_batch`` runs whose summed
    ``mem`` stays under ``max_task_bytes`` (a single run always fits); most costly first."""
    groups: dict[tuple[int, str], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.stage, r.group or r.key)].append(r)
    tasks = []
    for (_, _), members in groups.items():
        chunk: list[Run] = []
        for r in members:
            full = max_batch is not None and len(chunk) >= max_batch
            if chunk and (full or sum(c.mem for c in chunk) + r.mem > max_task_bytes):
                tasks.append(Task(r.kind, module, tuple(chunk)))
                chunk = []
            chunk.append(r)
        if chunk:
            tasks.append(Task(chunk[0].kind, module, tuple(chunk)))
    return sorted(tasks, key=lambda t: (t.runs[0].stage, -t.cost))


@dataclass
class SweepSummary:
    """What one sweep did."""

    directory: Path
    total: int = 0
    skipped: int = 0  # already stored (done or diverged): not executed again
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "diverged": 0, "failed": 0})
    #: runs not executed because a run they need (their reference) is not usable: key -> reason
    skipped_runs: dict[str, str] = field(default_factory=dict)
    #: False when no run of the last stage is stored as done (nothing to fit or report)
    usable: bool = True
    seconds: float = 0.0
    analysis: Any = None
    report: dict[str, Path] = field(default_factory=dict)
    summary_lines: list[str] = field(default_factory=list)


class _Progress:
    """A rich progress bar weighted by run cost: runs done, the share of the estimated cost done
    (labelled so: the bar, its percentage and the ETA measure cost, the count measures runs), the
    ETA, and the shapes in flight. Nothing is shown when there is nothing to run."""

    def __init__(self, enabled: bool, console=None) -> None:
        self.enabled = enabled
        self.console = console
        self.bar: Any = None  # a rich Progress while a sweep runs

    def start(self, total_cost: float, total_runs: int) -> None:
        if not self.enabled or total_runs == 0:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.fields[runs]}"), BarColumn(),
                            TaskProgressColumn("{task.percentage:>3.0f}% of cost"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.description}"), console=self.console, transient=False)
        self.bar.start()
        self.total_runs, self.runs_done = total_runs, 0
        self.id = self.bar.add_task("", total=max(total_cost, 1e-9), runs=f"0/{total_runs} runs")

    def update(self, cost: float, runs: int, current: str) -> None:
        if self.bar is None:
            return
        self.runs_done += runs
        self.bar.update(self.id, advance=cost, runs=f"{self.runs_done}/{self.total_runs} runs",
                        description=current)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def check_same_spec(store: Store, spec: SpecBase, keys) -> None:
    """One spec per output directory: ``spec`` may run into ``store`` only if every run stored there
    is one of its runs (``keys``) and its kind is the stored spec's kind (a rerun, a resumed run,
    an extension such as more grid points or ``reference.floor``, or a change of the analysis
    only). Otherwise :class:`StoreError`, before anything is written."""
    stored = store.get_meta("spec") or {}
    old_name, old_kind = stored.get("name", "?"), stored.get("kind")
    have = store.keys()
    foreign = have - set(keys)
    if (old_kind is not None and old_kind != spec.kind) or foreign:
        what = (f"kind {old_kind!r}, not {spec.kind!r}" if old_kind is not None and old_kind != spec.kind
                else f"{len(foreign)} of its {len(have)} stored runs are not runs of this spec")
        raise StoreError(f"--out {store.directory} holds the results of another spec ({old_name!r}: {what}); "
                         "choose another --out or remove that directory")


def run_sweep(spec: SpecBase, out: str | Path, *, executor: Executor | None = None, jobs: int = 1,
              progress: bool = True, console=None, store: Store | None = None) -> SweepSummary:
    """Execute every unfinished run of ``spec`` and store the results in ``out``.

    Finished runs (done or diverged) are never recomputed; failed ones are retried. A run whose
    reference (:func:`requires`) diverged or failed is not executed: it is *skipped*, with the
    reason, in ``summary.skipped_runs`` and the store's meta ``"skipped"`` (re-checked by every
    sweep, so it runs once a failed reference has been retried successfully). Results are written
    by this (driver) process only, one transaction per run. ``store``: an open store of ``out``
    (default: one opened and locked for the sweep); a store holding another spec's runs is refused
    (:func:`check_same_spec`).
    """
    kind = get_experiment(spec.kind)
    runs = kind.expand(spec)
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"experiment kind {spec.kind!r} expanded to duplicate runs")
    t0 = time.perf_counter()
    summary = SweepSummary(Path(out), total=len(runs))
    own_executor = executor is None
    own_store = store is None
    store = store or Store(out, lock=True)
    try:
        store.lock()
        check_same_spec(store, spec, keys)
    except BaseException:
        if own_store:
            store.close()
        raise
    executor = executor or LocalExecutor(jobs)
    bar = _Progress(progress, console)
    try:
        store.set_meta("spec", spec.config())
        finished = store.finished_keys()
        todo = [r for r in runs if r.key not in finished]
        summary.skipped = len(runs) - len(todo)
        bar.start(sum(r.cost for r in todo), len(todo))
        for stage in sorted({r.stage for r in todo}):
            ready = []
            for r in (r for r in todo if r.stage == stage):
                reason = _blocked(r, store)
                if reason is None:
                    ready.append(r)
                else:
                    summary.skipped_runs[r.key] = reason
                    bar.update(r.cost, 1, "")
            tasks = plan_tasks(ready, kind.module, max_task_bytes=spec.max_task_mb * 2**20)
            waiting = list(tasks)
            for outcome in executor.run(tasks):
                waiting.remove(outcome.task)
                for run, result in zip(outcome.task.runs, outcome.results, strict=True):
                    result = _finish(kind, spec, run, result, store)
                    store.write(run, result)
                    summary.counts[result.status] += 1
                in_flight = ", ".join(t.label for t in waiting[: executor.slots])
                bar.update(outcome.task.cost, len(outcome.task.runs), in_flight)
        _record_skipped(store, runs, summary.skipped_runs)
        statuses = store.statuses(keys)
        last = max((r.stage for r in runs), default=0)
        summary.usable = any(statuses.get(r.key) == "done" for r in runs if r.stage == last)
    finally:
        bar.stop()
        if own_executor:
            executor.close()
        if own_store:
            store.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def requires(run: Run) -> list[str]:
    """Keys of the runs ``run`` needs stored as done before it can run: the ``reference_key`` of
    its config (a convergence run's reference, stage 0)."""
    key = run.config.get("reference_key")
    return [key] if isinstance(key, str) else []


def _blocked(run: Run, store: Store) -> str | None:
    """Why ``run`` cannot run (a run it needs diverged, failed or is missing), else None."""
    for key in requires(run):
        rec = store.get(key)
        if rec is None:
            return f"reference {key} is missing"
        if rec.status == "diverged":
            return f"reference {key} diverged at step {rec.metrics.get('diverged_at', '?')}"
        if rec.status != "done":
            error = (rec.error or "").splitlines()[0] if rec.error else "no error recorded"
            return f"reference {key} {rec.status}: {error}"
    return None


def _record_skipped(store: Store, runs: Sequence[Run], skipped: dict[str, str]) -> None:
    """Keep the skipped runs of this sweep (key -> label, stage, reason) in the store's meta
    ``"skipped"`` (they have no row: nothing was computed), replacing this spec's earlier ones."""
    mine = {r.key for r in runs}
    old = store.get_meta("skipped", {}) or {}
    by_key = {r.key: r for r in runs}
    new = {k: v for k, v in old.items() if k not in mine}
    new.update({k: {"label": by_key[k].label, "stage": by_key[k].stage, "reason": reason}
                for k, reason in skipped.items()})
    if new != old:
        store.set_meta("skipped", new)


def _finish(kind, spec, run: Run, result: RunResult, store: Store) -> RunResult:
    if result.status == "failed":
        return result
    try:
        return kind.finish(spec, run, result, store)
    except StoreError:
        raise  # the store itself is at fault: stop, never blame the run
    except Exception as err:  # noqa: BLE001 - stored as the run's error
        return RunResult(run.key, "failed", error=f"post-processing: {type(err).__name__}: {err}",
                         seconds=result.seconds)


def run_experiment(spec: SpecBase, out: str | Path, *, executor: Executor | None = None, jobs: int = 1,
                   progress: bool = True, report: bool = True, console=None) -> SweepSummary:
    """Sweep, then analyse and write ``report.html`` / ``report.md`` into ``out``; the driver lock
    is held from the first result until the report is written."""
    with Store(out, lock=True) as store:
        summary = run_sweep(spec, out, executor=executor, jobs=jobs, progress=progress, console=console,
                            store=store)
        if report:
            from .reporting import write_report

            rep = write_report(out, spec=spec, store=store)
            summary.analysis, summary.report, summary.summary_lines = rep.analysis, rep.paths, rep.summary
    return summary
