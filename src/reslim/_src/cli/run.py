"""``reslim run``, ``reslim runs`` and ``reslim report``: experiments, their store, their report."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail


def data_overrides(spec, kind: str | None, directory: str | None) -> list[str]:
    """``--data/--data-dir`` as ``--set`` overrides of the spec's ``data`` or ``datasets`` field."""
    from ..experiments.spec import SpecError

    fields = type(spec).model_fields
    if "datasets" in fields:
        entry = {"kind": kind or spec.datasets[0].kind}
        if directory is not None:
            entry["dir"] = directory
        inner = ", ".join(f'{k} = "{v}"' for k, v in entry.items())
        return [f"datasets=[{{{inner}}}]"]
    if "data" in fields and hasattr(spec.data, "dir"):
        out = [] if kind is None else [f'data.kind="{kind}"']
        return out + ([] if directory is None else [f'data.dir="{directory}"'])
    raise SpecError(f"--data: experiment kind {spec.kind!r} takes no data option")


@app.command()
def run(
    spec: str = typer.Argument(..., help="built-in spec name (e.g. convergence) or a path to a .toml spec"),
    overrides: list[str] = typer.Option([], "--set", help="override a spec field: key=value (TOML value)"),
    out: str | None = typer.Option(None, "--out", help="output directory (default runs/<spec name>, "
                                    "runs/<spec name>-<hash> with --set overrides)"),
    jobs: int | None = typer.Option(None, "--jobs", help="tasks in parallel (local: worker processes, "
                                    "default 1; ray: default what the cluster holds)"),
    executor: str = typer.Option("local", "--executor", help="where tasks run: local or ray"),
    address: str | None = typer.Option(None, "--address", help="ray: auto or HOST:PORT of a running "
                                       "cluster (default: start a private local Ray instance)"),
    connect_timeout: float | None = typer.Option(None, "--connect-timeout", help="ray: seconds to wait "
                                                 "for the cluster at --address (default 30)"),
    cpus_per_task: float | None = typer.Option(None, "--cpus-per-task", help="ray: CPUs per task "
                                               "(fractions below 1 allowed); local: torch threads/worker"),
    gpus_per_task: float | None = typer.Option(None, "--gpus-per-task", help="ray: GPUs per task "
                                               "(fractions below 1 allowed)"),
    max_retries: int = typer.Option(2, "--max-retries", help="resubmissions of a task whose worker died"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    data: str | None = typer.Option(None, "--data", help="shorthand for the spec's data kind, e.g. "
                                    "cifar10 (sets data.kind, or datasets for transfer)"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="folder holding the data on disk "
                                        "(e.g. cifar-10-batches-bin)"),
) -> None:
    """Run an experiment spec: sweep (resuming), store results, fit, write the report."""
    from ..experiments.executors import make_executor
    from ..experiments.spec import SpecError, load_spec
    from ..experiments.store import StoreError
    from ..experiments.sweep import run_experiment
    from ..experiments.validation import (
        check_output_dir,
        check_spec_memory,
        default_output_dir,
        executor_options,
    )

    try:
        options = executor_options(executor, jobs=jobs, address=address, cpus_per_task=cpus_per_task,
                                   gpus_per_task=gpus_per_task, max_retries=max_retries,
                                   connect_timeout=connect_timeout)
        s = load_spec(spec, overrides)
        if data is not None or data_dir is not None:
            s = load_spec(spec, [*overrides, *data_overrides(s, data, data_dir)])
        out = check_output_dir(out if out is not None else default_output_dir(spec, s))
    except SpecError as err:
        fail(str(err))
    try:
        ex = make_executor(executor, **options)
    except ValueError as err:
        fail(str(err))
    from rich.console import Console

    console = Console(stderr=True)
    try:
        check_spec_memory(s, ex)
        summary = run_experiment(s, out, executor=ex, progress=progress, console=console)
    except (StoreError, SpecError) as err:
        fail(str(err))
    finally:
        ex.close()
    c = summary.counts
    n_skip = len(summary.skipped_runs)
    typer.echo(f"{s.name}: {summary.total} runs, {summary.skipped} already stored, {c['done']} done, "
               f"{c['diverged']} diverged, {c['failed']} failed" + (f", {n_skip} skipped" if n_skip else "")
               + f" in {summary.seconds:.1f} s")
    if n_skip:
        reasons = sorted(set(summary.skipped_runs.values()))
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        typer.echo(f"skipped {n_skip} runs whose reference is not usable: {reasons[0]}{more}")
    for line in summary.summary_lines:
        typer.echo(line)
    for path in summary.report.values():
        typer.echo(f"wrote {path}")
    if not summary.usable:
        typer.echo(f"error: no usable result in {out}: no run of {s.name} finished as done "
                   "(see reslim runs)", err=True)
        raise typer.Exit(code=1)


def _store(directory: Path):
    from ..experiments.store import Store, StoreError

    try:
        return Store(directory, create=False)
    except StoreError as err:
        fail(str(err))


@app.command()
def runs(
    directory: Path = typer.Argument(..., help="output directory of a run"),
    status: str | None = typer.Option(None, "--status", help="only runs with this status"),
    limit: int = typer.Option(200, "--limit", help="rows to show (0: all)"),
) -> None:
    """List the runs stored in an output directory."""
    from rich.console import Console
    from rich.table import Table

    from ..experiments.registry import STATUSES

    if status is not None and status not in STATUSES:
        fail(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    if limit < 0:
        fail(f"--limit must be >= 0 (0: all), got {limit}")
    from ..experiments.store import StoreError

    with _store(directory) as store:
        try:
            store.verify()  # every row and array against its checksum
            recs = store.records(status=status)
            counts = store.counts()
            spec = store.get_meta("spec") or {}
            skipped = store.get_meta("skipped") or {}
        except StoreError as err:
            fail(str(err))
    table = Table(title=f"{directory}: {spec.get('name', '?')} ({spec.get('kind', '?')}) — "
                  + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for col in ("id", "key", "run", "status", "seconds", "metrics / error"):
        table.add_column(col)
    shown = recs if limit <= 0 else recs[:limit]
    for r in shown:
        scalars = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float))}
        text = r.error or ", ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        table.add_row(str(r.id), r.key, r.label, r.status, f"{r.seconds:.2f}", text[:90])
    Console(width=180).print(table)
    if len(shown) < len(recs):
        typer.echo(f"... {len(recs) - len(shown)} more (--limit 0 shows all)")
    if skipped and status is None:
        reasons = sorted({v.get("reason", "?") for v in skipped.values()})
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        typer.echo(f"{len(skipped)} runs skipped (not run, no row: their reference is not usable): "
                   f"{reasons[0]}{more}")


@app.command()
def report(directory: Path = typer.Argument(..., help="output directory of a run")) -> None:
    """Rebuild report.html and report.md of an output directory from its store."""
    from ..experiments.spec import SpecError
    from ..experiments.store import StoreError
    from ..report.report import write_report

    try:
        rep = write_report(directory)
    except (StoreError, SpecError, ValueError) as err:
        fail(str(err))
    for line in rep.summary:
        typer.echo(line)
    for path in rep.paths.values():
        typer.echo(f"wrote {path}")
