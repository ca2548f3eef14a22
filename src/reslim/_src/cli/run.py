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


def _spec_lines(width: int = 72) -> str:
    """One line per built-in spec: its name and the start of its description."""
    import tomllib
    from importlib import resources

    from ..experiments.spec import BUILTIN_SPECS, builtin_specs

    names = builtin_specs()
    pad = max(map(len, names), default=0) + 2
    lines = []
    for name in names:
        try:
            text = tomllib.loads((resources.files(BUILTIN_SPECS) / f"{name}.toml").read_text())
            desc = " ".join(str(text.get("description", "")).split())
        except (OSError, tomllib.TOMLDecodeError):
            desc = ""
        if len(desc) > width - pad:
            desc = desc[: width - pad - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
        lines.append(f"{name:<{pad}}{desc}")
    return "\n".join(lines)


_RUN_HELP = (
    "Run an experiment spec: sweep (resuming), store results, fit, write the report.\n\n"
    "Results go to runs/<spec name> (see --out); --dry-run prints the plan and computes nothing; "
    "Ctrl-C stops with every finished run stored, and the same command resumes.\n\n"
    "\b\nBuilt-in specs:\n" + _spec_lines()
)


@app.command(help=_RUN_HELP)
def run(
    spec: str = typer.Argument(..., help="built-in spec name (listed above) or a path to a .toml spec"),
    overrides: list[str] = typer.Option([], "--set", help="override a spec field: key=value (TOML value)"),
    out: str | None = typer.Option(None, "--out", help="output directory (default runs/<spec name>, "
                                    "runs/<spec name>-<hash> with --set overrides)"),
    jobs: int | None = typer.Option(None, "--jobs", help="tasks in parallel (local: worker processes, "
                                    "default 1; ray: default what the cluster holds)"),
    executor: str = typer.Option("local", "--executor", metavar="local|ray",
                                 help="where tasks run: worker processes here, or a Ray cluster"),
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
    dry_run: bool = typer.Option(False, "--dry-run", help="print the number of runs, their estimated "
                                 "cost and memory, and what is already stored; compute and write nothing"),
) -> None:
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
        out_dir = check_output_dir(out if out is not None else default_output_dir(spec, s))
    except SpecError as err:
        fail(str(err))
    if dry_run:
        _dry_run(s, out_dir)
        return
    try:
        ex = make_executor(executor, **options)
    except ValueError as err:
        fail(str(err))
    from rich.console import Console

    console = Console(stderr=True)
    try:
        check_spec_memory(s, ex)
        summary = run_experiment(s, out_dir, executor=ex, progress=progress, console=console)
    except (StoreError, SpecError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        stored, total = _stored_runs(s, out_dir)
        typer.echo(f"interrupted: {stored} of {total} runs stored in {out_dir}; the same command resumes",
                   err=True)
        raise typer.Exit(code=130) from None
    finally:
        ex.close()
    c = summary.counts
    n_skip = len(summary.skipped_runs)
    if summary.skipped == summary.total and not n_skip:
        typer.echo(f"{s.name}: nothing to do: all {summary.total} runs are already stored in {out_dir}")
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
        typer.echo(f"error: no usable result in {out_dir}: no run of {s.name} finished as done "
                   "(see reslim runs)", err=True)
        raise typer.Exit(code=1)


def _stored_runs(spec, out: Path) -> tuple[int, int]:
    """(finished runs of ``spec`` stored in ``out``, runs of ``spec``)."""
    from ..experiments.registry import get_experiment
    from ..experiments.store import Store, StoreError

    keys = {r.key for r in get_experiment(spec.kind).expand(spec)}
    if not (Path(out) / "results.sqlite").is_file():
        return 0, len(keys)
    try:
        with Store(out, create=False) as store:
            return len(keys & set(store.finished_keys())), len(keys)
    except StoreError:
        return 0, len(keys)


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _dry_run(spec, out: Path) -> None:
    """What ``reslim run`` would do: runs, tasks, estimated cost and memory; nothing computed or written."""
    from ..experiments.registry import get_experiment
    from ..experiments.sweep import plan_tasks
    from ..experiments.validation import available_memory

    kind = get_experiment(spec.kind)
    runs = kind.expand(spec)
    stored, total = _stored_runs(spec, out)
    tasks = plan_tasks(runs, kind.module, max_task_bytes=spec.max_task_mb * 2**20)
    cost = sum(r.cost for r in runs)
    mem = max((sum(r.mem for r in t.runs) for t in tasks), default=0.0)
    stages = len({r.stage for r in runs})
    typer.echo(f"{spec.name} ({spec.kind}): {total} runs in {len(tasks)} tasks over {stages} stage(s); "
               f"{stored} already stored in {out}, {total - stored} to run")
    typer.echo(f"estimated cost: {cost:.3g} floating-point operations in all (the runs' cost estimates)")
    free = available_memory()
    typer.echo(f"estimated memory: {_bytes(mem)} for the largest task (tasks capped at "
               f"max_task_mb = {spec.max_task_mb:g} MiB; available "
               f"{'unknown' if free is None else _bytes(free)})")
    typer.echo("dry run: nothing computed or written")


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
    from ..experiments.reporting import write_report
    from ..experiments.spec import SpecError
    from ..experiments.store import StoreError

    try:
        rep = write_report(directory, cache=False)  # asked for: always rebuilt
    except (StoreError, SpecError, ValueError) as err:
        fail(str(err))
    for line in rep.summary:
        typer.echo(line)
    for path in rep.paths.values():
        typer.echo(f"wrote {path}")
