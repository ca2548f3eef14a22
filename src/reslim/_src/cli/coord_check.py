"""``reslim coord-check`` and ``reslim phase-diagram``: regimes of parameterizations."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import typer

from ..models.activations import ACTIVATIONS
from ..scaling.parameterization import PRESETS
from .app import app, fail
from .describe import parse_options


def _writable_dir(out: str, option: str = "--out") -> Path:
    """``out`` as a folder that can be created or written, checked before any computation."""
    from ..experiments.validation import InputError, check_output_dir

    try:
        return check_output_dir(out, option)
    except InputError as err:
        fail(str(err))


def _writable_file(path: str, option: str) -> Path:
    p = Path(path)
    if not path.strip() or p.is_dir():
        fail(f"{option} must name a file, got {path!r}")
    _writable_dir(str(p.parent), option)
    return p


def _floats(text: str, what: str) -> list[float]:
    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{what} must be comma-separated numbers, got {text!r}")
    if not out:
        fail(f"{what} must name at least one number")
    return out


def _fmt(v: float) -> str:
    if v == math.inf:
        return "diverged"
    return "n/a" if math.isnan(v) else f"{v:+.2f}"


def _print_check(df, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    verdicts = df.attrs["verdicts"]
    for a in dict.fromkeys(df["axis"]):
        ea = df[df["axis"] == a]
        k = int(ea["step"].max())
        sizes = ", ".join(f"{s:g}" for s in ea["sizes"].iloc[0])
        table = Table(title=f"{df['param'].iloc[0]} ({df['optimizer'].iloc[0]}) along {a} = {sizes}; "
                      f"updates at step {k}")
        for col in ("quantity", "position", "exponent", "± se", "trend", "regime"):
            table.add_column(col)
        rows = ea[(ea["step"] == k) | ea["quantity"].isin(("h", "p", "y"))]
        for r in rows.itertuples():
            table.add_row(r.quantity, r.position, _fmt(r.exponent),
                          "" if math.isnan(r.stderr) else f"{r.stderr:.2f}", r.trend, r.regime)
        console.print(table)
        v = verdicts[verdicts["axis"] == a].iloc[0]
        reason = f"  ({escape(v.reasons)})" if v.reasons else ""
        console.print(f"verdict along {a}: [bold]{v.verdict}[/bold]{reason}")


@app.command("coord-check")
def coord_check_cmd(
    param: str = typer.Option("mlu", "--param", metavar="PRESET",
                              help=f"parameterization: {', '.join(PRESETS)}"),
    axis: str = typer.Option("L,M,D", "--axis", help="comma list of L, M, D, width, alpha"),
    sizes: str = typer.Option("", "--sizes", help="comma list of sizes (one axis only); "
                              "default per axis: see docs/regimes.md"),
    base: str = typer.Option("8,256,64", "--base", help="L,M,D held fixed off the swept axis"),
    block: str = typer.Option("two-layer", "--block", metavar="two-layer|one-layer", help="residual block"),
    activation: str = typer.Option("tanh", "--activation", metavar="|".join(ACTIVATIONS),
                                   help="activation of the blocks"),
    optimizer: str = typer.Option("gd", "--optimizer", metavar="gd|sgd|adam",
                                  help="full-batch GD, SGD or Adam"),
    lr: float = typer.Option(0.1, "--lr", help="base learning rate eta"),
    steps: int = typer.Option(3, "--steps", help="training steps recorded"),
    seeds: int = typer.Option(4, "--seeds", help="number of seeds trained together"),
    tol: float = typer.Option(0.25, "--tol", help="|exponent| <= tol counts as Θ(1)"),
    option: list[str] = typer.Option([], "--option", metavar="KEY=VALUE",
                                     help="preset option, e.g. alpha=2 (repeatable)"),
    out: str | None = typer.Option(None, "--out", help="folder for the PNG plot (default "
                                   "runs/coord-check-<param>-<optimizer>-<axes>)"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="write the PNG plot"),
    all_presets: bool = typer.Option(False, "--all-presets",
                                     help="measure every preset and print the exponent table"),
    table: str = typer.Option("", "--table", help="with --all-presets: also write the Markdown table here"),
    arch: str = typer.Option("resnet", "--arch", metavar="resnet|transformer",
                             help="transformer: per-head q/k/v/O movement exponents, eta 0.05 unless "
                             "--lr is given (docs/transformers.md)"),
    norm: str = typer.Option("none", "--norm", metavar="none|layer|rms",
                             help="transformer: pre-norm on every branch's input (outside the theory)"),
) -> None:
    """Coordinate check: fitted exponents of every layer's activations and updates along L, M, D,
    and the verdict (feature learning / lazy / partial / unstable)."""
    from rich.console import Console

    if arch not in ("resnet", "transformer"):
        fail(f"--arch must be resnet or transformer, got {arch!r}")
    if arch == "transformer":
        from .coord_check_transformer import transformer_check

        axes_t = [a.strip() for a in axis.split(",") if a.strip()]
        transformer_check(param, axes_t, _floats(sizes, "--sizes") if sizes else None,
                          base if base != "8,256,64" else None, lr if lr != 0.1 else 0.05, steps, seeds, tol,
                          norm)
        return

    from ..diagnostics.coord_check import (
        AXES,
        coord_check,
        exponent_table,
        markdown_table,
        plot_coord_check,
    )

    axes = [a.strip() for a in axis.split(",") if a.strip()]
    bad = [a for a in axes if a not in AXES]
    if not axes or bad:
        fail(f"--axis must be a comma list of {', '.join(AXES)}, got {axis!r}")
    if optimizer not in ("gd", "sgd", "adam"):
        fail(f"--optimizer must be gd, sgd or adam, got {optimizer!r}")
    if seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    size_list = _floats(sizes, "--sizes") if sizes else None
    if size_list is not None and len(axes) != 1:
        fail("--sizes needs exactly one --axis")
    if size_list is not None and axes[0] != "alpha":
        if any(not float(s).is_integer() for s in size_list):
            fail(f"--sizes along {axes[0]} must be integers, got {sizes!r}")
        size_list = [int(s) for s in size_list]
    if out is None:
        out = f"runs/coord-check-{param}-{optimizer}-{'-'.join(axes)}"
    if plot and not all_presets:
        _writable_dir(out)
    if table:
        _writable_file(table, "--table")
    opts: dict[str, Any] = dict(base=base, block=block, activation=activation, optimizer=optimizer, lr=lr,
                                steps=steps, seeds=tuple(range(seeds)))
    console = Console(width=150)
    t0 = time.perf_counter()
    try:
        if all_presets:
            if option:
                fail("--option cannot be combined with --all-presets")
            summary = exponent_table(axes=axes, tol=tol, **opts)
            md = markdown_table(summary)
            console.print(md)
            if table:
                Path(table).write_text(md + "\n")
                console.print(f"table written to {table}")
        else:
            from ..scaling.parameterization import get_parameterization

            p = get_parameterization(param, **parse_options(option))
            df = coord_check(p, axes, size_list, tol=tol, **opts)
            _print_check(df, console)
            if plot:
                Path(out).mkdir(parents=True, exist_ok=True)
                path = Path(out) / f"coord-check-{p.name}-{optimizer}-{'-'.join(axes)}.png"
                plot_coord_check(df, str(path))
                console.print(f"plot written to {path}")
    except ValueError as err:
        fail(str(err))
    console.print(f"done in {time.perf_counter() - t0:.1f} s")


@app.command("phase-diagram")
def phase_diagram_cmd(
    out: str = typer.Option("runs/phase-diagram", "--out", help="folder for the PNG and the CSVs"),
    exponents: str = typer.Option("-2,-1.5,-1,-0.5,0", "--exponents",
                                  help="exponents of L and of M in the residual scale"),
    d_exponents: str = typer.Option("-0.5,0,0.5,1,1.5", "--d-exponents",
                                    help="exponents of D in the residual scale"),
    alphas: str = typer.Option("1,2,4,8", "--alphas", help="alpha values of the alpha sweep"),
    seeds: int = typer.Option(2, "--seeds", help="number of seeds trained together"),
    steps: int = typer.Option(2, "--steps", help="training steps recorded"),
    tol: float = typer.Option(0.25, "--tol", help="|exponent| <= tol counts as Θ(1)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Phase diagram of residual scales beta = alpha L^a M^b D^c (two-layer blocks, lr tied as
    eta D/(L M beta^2)): maps (a, b) at c = 1/2 and (c, a) at b = -1, plus an alpha sweep."""
    from rich.console import Console

    from ..diagnostics.phase import alpha_sweep, phase_diagram, plot_phase_diagram

    e_lm = _floats(exponents, "--exponents")
    e_d = _floats(d_exponents, "--d-exponents")
    a_list = _floats(alphas, "--alphas")
    if seeds < 1 or steps < 1:
        fail("--seeds and --steps must be >= 1")
    _writable_dir(out)
    console = Console(width=150)
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n_points = len(e_lm) ** 2 + len(e_d) * len(e_lm) + 1  # two maps' points and the alpha sweep
    bar = Progress(MofNCompleteColumn(), TextColumn("points"), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=Console(stderr=True), disable=not progress)
    try:
        with bar:
            task = bar.add_task("map L-M", total=n_points)
            opts: dict[str, Any] = dict(seeds=tuple(range(seeds)), steps=steps, tol=tol)
            lm = phase_diagram("L", "M", e_lm, e_lm, on_point=lambda: bar.advance(task), **opts)
            bar.update(task, description="map D-L")
            dl = phase_diagram("D", "L", e_d, e_lm, fixed={"M": -1.0}, on_point=lambda: bar.advance(task),
                               **opts)
            bar.update(task, description="alpha sweep")
            al = alpha_sweep(a_list, **opts)
            bar.advance(task)
    except ValueError as err:
        fail(str(err))
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, df in (("L-M", lm), ("D-L", dl)):
        x, y = df.attrs["x"], df.attrs["y"]
        console.print(f"[bold]map {name}[/bold] (rows: exponent of {y}, columns: exponent of {x}; "
                      f"fixed {df.attrs['fixed']})")
        xs = sorted(df[f"exp_{x}"].unique())
        console.print("        " + "".join(f"{v:>18g}" for v in xs))
        for yv in sorted(df[f"exp_{y}"].unique(), reverse=True):
            row = df[df[f"exp_{y}"] == yv].set_index(f"exp_{x}")
            console.print(f"{yv:>8g}" + "".join(f"{row.loc[v, 'verdict']:>18}" for v in xs))
        fl = df[df["verdict"] == "feature learning"]
        pts = ", ".join(f"(L^{r.exp_L:g} M^{r.exp_M:g} D^{r.exp_D:g})" for r in fl.itertuples())
        console.print(f"complete feature learning at: {pts or 'no point'}")
        df.drop(columns=[c for c in df.columns if c == "param"]).to_csv(Path(out) / f"phase-{name}.csv",
                                                                        index=False)
    v = al.attrs["verdicts"].iloc[0]
    console.print(f"alpha sweep {', '.join(f'{a:g}' for a in a_list)} at the MLU residual scale: "
                  f"du ~ alpha^{_fmt(v.du)}, dh_L ~ alpha^{_fmt(v.dh_last)}, dy ~ alpha^{_fmt(v.dy)} "
                  f"-> {v.verdict} as alpha grows")
    path = Path(out) / "phase-diagram.png"
    plot_phase_diagram([lm, dl], str(path), alpha=al)
    console.print(f"figure written to {path}; done in {time.perf_counter() - t0:.1f} s")
