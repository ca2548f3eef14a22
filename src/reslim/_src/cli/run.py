"""``reslim run``, ``reslim runs`` and ``reslim report``: experiments, their store, their report."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail


@app.command()
def run(
    spec: str = typer.Argument(..., help="built-in spec name (e.g. convergence) or a path to a .toml spec"),
    overrides: list[str] = typer.Option([], "--set", help="override a spec field: key=value (TOML value)"),
    out: Path | None = typer.Option(None, "--out", help="output directory (default runs/<spec name>)"),
    jobs: int = typer.Option(1, "--jobs", help="worker processes"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Run an experiment spec: sweep (resuming), store results, fit, write the report."""
    from ..experiments.spec import SpecError, load_spec
    from ..experiments.store import StoreError
    from ..experiments.sweep import run_experiment

    try:
        s = load_spec(spec, overrides)
    except SpecError as err:
        fail(str(err))
    if jobs < 1:
        fail(f"--jobs must be a positive integer, got {jobs}")
    out = out if out is not None else Path("runs") / s.name
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    from rich.console import Console

    console = Console(stderr=True)
    try:
        summary = run_experiment(s, out, jobs=jobs, progress=progress, console=console)
    except StoreError as err:
        fail(str(err))
    c = summary.counts
    typer.echo(f"{s.name}: {summary.total} runs, {summary.skipped} already stored, {c['done']} done, "
               f"{c['diverged']} diverged, {c['failed']} failed in {summary.seconds:.1f} s")
    for line in summary.summary_lines:
        typer.echo(line)
    for path in summary.report.values():
        typer.echo(f"wrote {path}")


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

    with _store(directory) as store:
        recs = store.records(status=status)
        counts = store.counts()
        spec = store.get_meta("spec") or {}
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
