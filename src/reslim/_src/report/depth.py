"""Figures and text of the depth kinds' reports (``gia-gap``, ``collapse``; ``transfer``'s figure
is :func:`reslim._src.diagnostics.transfer.plot_transfer`): matplotlib's ``Figure`` API only."""

from __future__ import annotations

import numpy as np
import pandas as pd


def plot_vs_depth(df: pd.DataFrame, metrics: list[str], line: str | list[str], title: str = "",
                  guides: dict[str, list[tuple[float, str]]] | None = None):
    """Log-log metric vs L, one line per group of ``line`` (seed mean, min-max band over the seeds
    with a finite value: a diverged seed is left out, never drawn to infinity); ``guides``:
    ``metric -> [(exponent, label)]`` dotted slopes through the lines' first point."""
    from matplotlib.figure import Figure

    by = [line] if isinstance(line, str) else list(line)
    fig = Figure(figsize=(3.9 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = df[np.isfinite(df[metric].astype(float))] if len(df) else df
        firsts = []
        for key, g in vals.groupby(by, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            a = g.groupby("L")[metric].agg(["mean", "min", "max"]).reset_index()
            lab = ", ".join(f"{name} {k:g}" if isinstance(k, float) else f"{name} {k}"
                            for name, k in zip(by, key, strict=True))
            ax.plot(a["L"], a["mean"], "-o", ms=3, label=lab)
            ax.fill_between(a["L"], a["min"], a["max"], alpha=0.2)
            if len(a):
                firsts.append((float(a["L"].iloc[0]), float(a["mean"].iloc[0]), float(a["L"].iloc[-1])))
        for (expo, label), style in zip((guides or {}).get(metric, []), (":", "-.", "--"), strict=False):
            if not firsts:
                break
            L0, y0, L1 = max(firsts, key=lambda f: f[1])
            Ls = np.geomspace(L0, max(L1, L0 * 2), 20)
            ax.plot(Ls, y0 * (Ls / L0) ** expo, style, color="0.3", lw=1, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title or f"{', '.join(metrics)} vs depth (seed mean, min-max band)", fontsize=9)
    fig.tight_layout()
    return fig


def fits_paragraph(fits: pd.DataFrame, by: list[str]) -> list[str]:
    """One bullet per fitted exponent, ``- param=..., metric: exponent +p [lo, hi]``."""
    lines = []
    for r in fits.itertuples(index=False):
        key = ", ".join(f"{b}={getattr(r, b)}" for b in by)
        lines.append(f"- {key}, {r.metric}: exponent {r.exponent:+.3f} "
                     f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]")
    return ["\n".join(lines)] if lines else []


def fits_section(title: str, intro: str, analysis: dict, by: list[str], summary_caption: str,
                 metrics: list[str], *, figure_title: str, guides: dict[str, list[tuple[float, str]]],
                 figure_dir, name: str, caption: str):
    """A depth kind's section: ``intro``, then (with runs stored) one line per fitted exponent, the
    per-depth summary and fit tables, and :func:`plot_vs_depth` of ``metrics`` per group ``by``."""
    from .figures import save
    from .report import Section

    s = Section(title, [intro])
    if analysis["table"].empty:
        return s
    s.paragraphs += fits_paragraph(analysis["fits"], by)
    s.tables.append((summary_caption, analysis["summary"]))
    s.tables.append(("Fitted exponents", analysis["fits"]))
    fig = plot_vs_depth(analysis["table"], metrics, by, title=figure_title, guides=guides)
    s.figures.append(save(fig, figure_dir, name, caption))
    return s
