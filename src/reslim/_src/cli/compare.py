"""``reslim compare DIR1 DIR2 ...``: the fitted exponents of several stores side by side.

Each directory's store is analysed by its experiment kind (the same analysis ``reslim report``
runs, restricted to the stored spec's runs); every kind's analysis holds a table of fits
(``fits``: exponent, 95% interval, theory where the theory gives one; ``transfer``: the
learning-rate drift per doubling of depth and whether it transfers). The rows are the fits by
name, one column per store: ``value [low, high]`` and the verdict against theory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from .app import app, fail

FORMATS = ("table", "csv", "markdown")

#: columns that name a fit (in this order), as the kinds' fit tables spell them
_ID_COLUMNS = ("dataset", "arch", "sweep", "width", "error", "quantity", "param", "mode", "scheme",
               "optimizer", "correction", "metric", "against", "held at", "fit", "L", "step")
_VALUE = ("exponent", "rate", "drift", "diff (points)")
#: analysis tables that hold fits (or paired differences), in the order shown
_TABLES = ("fits", "paired")
_LOW, _HIGH = ("CI low", "ci_low"), ("CI high", "ci_high")


def _store_dir(directory: Path):
    """``(spec, kind, store)`` of an output directory (a one-line error when it is not one)."""
    from ..experiments.registry import get_experiment
    from ..experiments.spec import SpecError, validate_spec
    from ..experiments.store import FILENAME, Store, StoreError

    if not directory.exists():
        fail(f"{directory}: no such directory")
    if not directory.is_dir():
        fail(f"{directory}: not a directory")
    if not (directory / FILENAME).is_file():
        fail(f"{directory}: holds no results store ({FILENAME}); give output directories of reslim run")
    try:
        store = Store(directory, create=False)
    except StoreError as err:
        fail(str(err))
    try:
        data = store.get_meta("spec")
        if data is None:
            raise ValueError("the store holds no spec")
        spec = validate_spec(data)
        kind = get_experiment(spec.kind)
    except (StoreError, SpecError, KeyError, ValueError) as err:
        store.close()
        fail(f"{directory}: {err.args[0] if isinstance(err, KeyError) else err}".replace("\n", " "))
    return spec, kind, store


def _name(row: dict[str, Any]) -> str:
    parts = []
    for col in _ID_COLUMNS:
        v = row.get(col)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            continue
        if col == "against":
            parts.append(f"vs {v}")
        elif col == "held at":
            parts.append(f"({v})")
        elif col == "fit":
            if v != "log-log":
                parts.append(f"[{v}]")
        elif col in ("width", "L", "step", "correction"):
            parts.append(f"{'W' if col == 'width' else col}={f'{v:g}' if isinstance(v, float) else v}")
        else:
            parts.append(str(v))
    return " ".join(parts)


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fit_rows(analysis: Any) -> list[dict[str, Any]]:
    """The fits of one analysis: ``{"fit", "value", "low", "high", "theory", "verdict"}`` each.

    ``fits`` tables (every kind but ``transfer``) give exponents with 95% intervals and, where
    the theory has one, its exponent: the verdict says whether it lies in the interval. The
    ``transfer`` kind's ``verdicts`` table gives the drift of the optimal learning rate (octaves
    per doubling of depth) and whether it transfers."""
    import pandas as pd

    from ..report.report import verdict

    def get(name: str):
        if isinstance(analysis, dict):
            return analysis.get(name)
        return getattr(analysis, name, None)

    rows: list[dict[str, Any]] = []
    for table in _TABLES:
        fits = get(table)
        if not (isinstance(fits, pd.DataFrame) and len(fits)):
            continue
        value = next((c for c in _VALUE if c in fits), None)
        low = next((c for c in _LOW if c in fits), None)
        high = next((c for c in _HIGH if c in fits), None)
        if value is not None:
            for r in fits.to_dict("records"):
                lo, hi = (_number(r[low]) if low else math.nan), (_number(r[high]) if high else math.nan)
                theory = r.get("theory")
                theory = None if theory is None or (isinstance(theory, float) and math.isnan(theory)) \
                    else theory
                given = next((r[c] for c in ("verdict", "at 95%") if isinstance(r.get(c), str)), "") \
                    if theory is None else ""
                rows.append({"fit": _name(r), "value": _number(r[value]), "low": lo, "high": hi,
                             "theory": "" if theory is None else (
                                 f"{theory:+.4g}" if isinstance(theory, (int, float)) else str(theory)),
                             "verdict": verdict(theory, lo, hi) if theory is not None else given})
    verdicts = get("verdicts")
    if isinstance(verdicts, pd.DataFrame) and len(verdicts) and "drift" in verdicts:
        for r in verdicts.to_dict("records"):
            rows.append({"fit": f"{_name(r)} lr drift".strip(), "value": _number(r["drift"]),
                         "low": math.nan, "high": math.nan, "theory": "",
                         "verdict": "transfers" if r.get("transfers") else "does not transfer"})
    seen: dict[str, int] = {}
    for r in rows:  # two fits of one name (a name column this file does not know): keep both
        n = seen[r["fit"]] = seen.get(r["fit"], 0) + 1
        if n > 1:
            r["fit"] = f"{r['fit']} #{n}"
    return rows


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    if not math.isfinite(r["value"]):
        return "no fit"
    text = f"{r['value']:+.3f}"
    if math.isfinite(r["low"]) and math.isfinite(r["high"]):
        text += f" [{r['low']:+.3f}, {r['high']:+.3f}]"
    return f"{text} {r['verdict']}" if r["verdict"] else text


def _labels(dirs: list[Path]) -> list[str]:
    """Column names: the directories' own names, their paths where two names clash."""
    names = [d.name or str(d) for d in dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names, strict=True)]


@app.command()
def compare(
    directories: list[Path] = typer.Argument(..., help="output directories of reslim run (two or more)"),
    fmt: str = typer.Option("table", "--format", metavar="|".join(FORMATS),
                            help="table (the terminal), csv (one value, low, high, verdict column "
                                 "per store) or markdown"),
) -> None:
    """The fitted exponents of several stores side by side.

    One row per fit (error or gap vs an axis, per parameterization ...), one column per store:
    the exponent with its 95% interval and the verdict against theory where the theory gives
    an exponent (the transfer kind: the learning-rate drift per doubling of depth and whether it
    transfers). The stores must be of one experiment kind; each is analysed as reslim report does.
    """
    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if len(directories) < 2:
        fail("compare needs two or more output directories")
    opened = []
    try:
        for d in directories:
            opened.append((d, *_store_dir(d)))
        kinds = {spec.kind for _, spec, _, _ in opened}
        if len(kinds) > 1:
            fail("cannot compare stores of different experiment kinds: "
                 + ", ".join(f"{d} is {spec.kind}" for d, spec, _, _ in opened))
        per_store = []
        for d, spec, kind, store in opened:
            view = store.only(r.key for r in kind.expand(spec))
            try:
                per_store.append({r["fit"]: r for r in fit_rows(kind.analyse(spec, view))})
            except Exception as err:  # noqa: BLE001 - a store the analysis cannot read: one line
                fail(f"{d}: cannot analyse the store ({type(err).__name__}: {err})".replace("\n", " "))
    finally:
        for _, _, _, store in opened:
            store.close()
    _print(per_store, _labels(list(directories)), fmt, next(iter(kinds)))


def _print(per_store: list[dict[str, dict]], labels: list[str], fmt: str, kind: str) -> None:
    import pandas as pd

    names: list[str] = []
    for fits in per_store:
        names += [n for n in fits if n not in names]
    if not names:
        typer.echo(f"no fits in these {kind} stores (nothing finished yet?)")
        return

    def theory(n: str) -> str:
        return next((f[n]["theory"] for f in per_store if n in f and f[n]["theory"]), "")

    if fmt == "csv":
        rows = []
        for n in names:
            row: dict[str, Any] = {"fit": n, "theory": theory(n)}
            for label, fits in zip(labels, per_store, strict=True):
                r = fits.get(n)
                for col in ("value", "low", "high", "verdict"):
                    row[f"{label} {col}"] = "" if r is None else r[col]
            rows.append(row)
        typer.echo(pd.DataFrame(rows).to_csv(index=False), nl=False)
        return
    header = ["fit", "theory", *labels]
    body = [[n, theory(n), *(_cell(f.get(n)) for f in per_store)] for n in names]
    if not any(row[1] for row in body):  # no theory anywhere: no empty column
        header, body = [header[0], *header[2:]], [[r[0], *r[2:]] for r in body]
    if fmt == "markdown":
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        typer.echo("| " + " | ".join(map(esc, header)) + " |")
        typer.echo("|" + "---|" * len(header))
        for cells in body:
            typer.echo("| " + " | ".join(map(esc, cells)) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    what = {"transfer": "learning-rate drifts per doubling of depth",
            "mean-field": "test-accuracy differences to plain training (points, paired by seed)"}.get(
        kind, "fitted exponents")
    table = Table(title=f"{what} ({kind}): value [95% interval] verdict")
    for col in header:
        table.add_column(col, justify="left", no_wrap=True)
    for cells in body:
        table.add_row(*cells)
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    Console(width=max(80, sum(widths) + 3 * len(widths) + 1)).print(table)
    if not any(f[n]["verdict"] for f in per_store for n in f):
        typer.echo(f"(the theory gives no exponent for these {kind} fits: no verdicts)")
