"""Figures, each saved as PNG and SVG. matplotlib's ``Figure`` API only: no pyplot state, no
backend switch (``matplotlib.use``), so a library call never changes the caller's matplotlib."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from .report import FigureRef, atomic_write


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kw):
    """``(fig, axes)`` as ``pyplot.subplots`` returns them, but a bare :class:`Figure` that no
    pyplot registry holds (nothing to close; garbage-collected like any object)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def colormap(name: str):
    """The registered colormap ``name`` (``matplotlib.colormaps``)."""
    return matplotlib.colormaps[name]


def save(fig, directory: Path, name: str, caption: str = "") -> FigureRef:
    """Write ``name.png`` (120 dpi) and ``name.svg`` atomically (a temporary file renamed over the
    old one)."""
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{name}.png", directory / f"{name}.svg"
    for path, options in ((png, {"dpi": 120}), (svg, {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **options)
        atomic_write(path, buf.getvalue())
    return FigureRef(png, caption, svg)


def error_vs_axis(agg: pd.DataFrame, x: str, line: str, fixed: dict[str, int], ylabel: str,
                  model=None, title: str = ""):
    """Log-log error against ``x``, one line per value of ``line``, other axes at ``fixed``;
    ``model(L, M, D)`` (a fitted additive model) dashed over each line."""
    sel = agg
    for k, v in fixed.items():
        sel = sel[sel[k] == v]
    fig, ax = subplots(figsize=(6.2, 4.4))
    values = sorted(sel[line].unique())
    cmap = colormap("viridis")
    for i, v in enumerate(values):
        d = sel[sel[line] == v].sort_values(x)
        d = d[np.isfinite(d["rms"]) & (d["rms"] > 0)]
        if d.empty:
            continue
        color = cmap(i / max(len(values) - 1, 1))
        ax.plot(d[x], d["rms"], "o-", color=color, ms=3.5, lw=1.2, label=f"{line}={v}")
        if model is not None:
            xs = np.geomspace(d[x].min(), d[x].max(), 60)
            args = {"L": d["L"].iloc[0], "M": d["M"].iloc[0], "D": d["D"].iloc[0], x: xs}
            ax.plot(xs, model(args["L"], args["M"], args["D"]), "--", color=color, lw=0.9, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    fixed_txt = ", ".join(f"{k}={v}" for k, v in fixed.items())
    ax.set_title(title or f"{ylabel} vs {x} ({fixed_txt}); dashed: fitted model", fontsize=9)
    if len(values) <= 12:
        if ax.get_legend_handles_labels()[0]:  # no labelled line when every run diverged
            ax.legend(fontsize=7, ncol=2)
    else:
        sm = ScalarMappable(cmap=cmap, norm=matplotlib.colors.LogNorm(min(values), max(values)))
        fig.colorbar(sm, ax=ax, label=line)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def error_vs_P(agg: pd.DataFrame, ylabel: str, frontier: pd.DataFrame | None = None, fit=None,
               guides: dict[str, tuple[float, float]] | None = None, title: str = ""):
    """Error of every shape against ``P = L M D``, the best-shape frontier, its power-law fit and
    guide lines ``label -> (constant, exponent)``."""
    fig, ax = subplots(figsize=(6.2, 4.4))
    d = agg[np.isfinite(agg["rms"]) & (agg["rms"] > 0)]
    sc = ax.scatter(d["P"], d["rms"], c=np.log10(d["D"]), s=10, cmap="viridis", alpha=0.7)
    fig.colorbar(sc, ax=ax, label="log10 D")
    Ps = np.geomspace(max(d["P"].min(), 1), d["P"].max(), 50) if len(d) else np.array([1, 10])
    if frontier is not None and len(frontier):
        ax.plot(frontier["P"], frontier["rms"], "k.-", lw=1, label="best shape at each P")
    if fit is not None:
        ax.plot(Ps, fit.predict(Ps), "k--", lw=1.2,
                label=f"fit {fit.constant:.2g} P^({fit.exponent:.3f})")
    for (label, (const, expo)), style in zip((guides or {}).items(), (":", "-."), strict=False):
        ax.plot(Ps, const * Ps**expo, style, color="tab:red", lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("P = L M D")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs P; black: best shape at each P; red: theory's slopes", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def losses(curves: list[tuple[str, np.ndarray, float]], reference: np.ndarray | None = None,
           title: str = "training loss per shape, coloured by P = L M D"):
    """Training loss against step for each shape (``(label, loss (K+1,), P)``, coloured by P)."""
    fig, ax = subplots(figsize=(6.2, 4.4))
    if curves:
        Ps = np.log10([c[2] for c in curves])
        lo, hi = Ps.min(), max(Ps.max(), Ps.min() + 1e-9)
        cmap = colormap("viridis")
        for (_label, loss, P) in curves:
            ax.plot(np.arange(len(loss)), loss, color=cmap((np.log10(P) - lo) / (hi - lo)), lw=0.8,
                    alpha=0.7)
        sm = ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(lo, hi))
        fig.colorbar(sm, ax=ax, label="log10 P")
    if reference is not None:
        ax.plot(np.arange(len(reference)), reference, "k-", lw=2, label="reference")
        ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("GD step k")
    ax.set_ylabel("training loss (mean over repetitions)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    return fig
