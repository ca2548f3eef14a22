"""The ``transformer-convergence`` report: fits along M, D and at fixed L M, each with the theory's
exponent and a verdict, and the error of every sweep against its variable (a leaf renderer: it
reads the kind it is handed and never imports ``reslim._src.experiments``)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from ..measure.fits import fit_power_law
from . import figures
from .report import Section, verdict_note, with_verdicts

#: (sweep, variable, theory exponent, why): the error bound 1/L + sqrt(D/(L M)) + 1/sqrt(D) of
#: docs/theory.md §2.3 with heads as units (§5); at fixed L M only the 1/L term varies
SWEEPS = (
    ("M", "M", "-1/2", "sqrt(D/(L M)) term"),
    ("D", "D", "-1/2", "1/sqrt(D) term, L M >> D"),
    ("LM", "L", "0", "depends on L M only (plus 1/L, small here)"),
)


def analyse(kind, spec, store) -> dict[str, Any]:
    """Fits (bootstrap over seeds), the seed-mean table and the spread at fixed L M."""
    df = kind.table(spec, store)
    fits = []
    for sweep, x, theory, why in SWEEPS:
        g = df[df["sweep"] == sweep] if not df.empty else df
        if g.empty:
            continue
        piv = g.pivot_table(index=x, columns="seed", values="error", aggfunc="mean", dropna=False)
        row: dict[str, Any] = {"sweep": sweep, "variable": x, "theory": theory, "why": why}
        try:
            fit = fit_power_law(piv.index.to_numpy(dtype=float), piv.to_numpy(dtype=float), n_boot=500)
            lo, hi = fit.exponent_ci
            row.update({"exponent": fit.exponent, "CI low": lo, "CI high": hi})
        except ValueError:
            row.update({"exponent": np.nan, "CI low": np.nan, "CI high": np.nan})
        fits.append(row)
    lm = df[df["sweep"] == "LM"] if not df.empty else df
    spread = math.nan
    if not lm.empty:
        mean = lm.groupby("L")["error"].mean()
        deep = mean[mean.index >= 4]
        if len(deep) >= 2:
            spread = float(deep.max() / deep.min())
    summary = (df.groupby(["sweep", "L", "M", "D"])["error"].agg(["mean", "std"]).reset_index()
               if not df.empty else df)
    cols = ["sweep", "variable", "exponent", "CI low", "CI high", "theory", "why"]
    fit_df = with_verdicts(pd.DataFrame(fits, columns=cols))
    return {"table": df, "fits": fit_df, "summary": summary, "lm_spread": spread}


def summary_lines(analysis: dict[str, Any]) -> list[str]:
    lines = []
    for r in analysis["fits"].to_dict("records"):
        note = verdict_note(r["theory"], r["CI low"], r["CI high"])
        lines.append(f"{r['sweep']} sweep: error ~ {r['variable']}^{r['exponent']:+.3f} "
                     f"[{r['CI low']:+.2f}, {r['CI high']:+.2f}] (theory {r['theory']})"
                     + (f": {note}" if note else ""))
    if math.isfinite(analysis["lm_spread"]):
        lines.append(f"depth begets width: errors at fixed L M (L >= 4) within a factor "
                     f"{analysis['lm_spread']:.2f}")
    return lines


def _figure(analysis: dict[str, Any], fig_dir):
    """One panel per sweep: seed-mean error (± std) against the sweep's variable, with the fit and
    the theory's slope through the fit's centre."""
    s = analysis["summary"]
    fits = {r["sweep"]: r for r in analysis["fits"].to_dict("records")}
    fig, axes = figures.subplots(1, len(SWEEPS), figsize=(4.2 * len(SWEEPS), 3.8))
    for ax, (sweep, x, theory, _) in zip(np.atleast_1d(axes), SWEEPS, strict=True):
        g = s[s["sweep"] == sweep].sort_values(x) if not s.empty else s
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x if sweep != "LM" else "L (at fixed L M; M = L M / L)")
        ax.set_ylabel("output error vs reference")
        if g.empty:
            continue
        xs, ys = g[x].to_numpy(dtype=float), g["mean"].to_numpy(dtype=float)
        ax.errorbar(xs, ys, yerr=g["std"].to_numpy(dtype=float), fmt="o", capsize=3, label="seed mean ± std")
        f = fits.get(sweep)
        ok = np.isfinite(ys) & (ys > 0)
        if f is not None and math.isfinite(f["exponent"]) and ok.any():
            x0, y0 = np.exp(np.mean(np.log(xs[ok]))), np.exp(np.mean(np.log(ys[ok])))
            grid = np.geomspace(xs.min(), xs.max(), 20)
            ax.plot(grid, y0 * (grid / x0) ** f["exponent"], "-", lw=1,
                    label=f"fit {x}^{f['exponent']:+.2f} [{f['CI low']:+.2f}, {f['CI high']:+.2f}]")
            t = float(Fraction(theory))
            ax.plot(grid, y0 * (grid / x0) ** t, "--", color="0.4", lw=1, label=f"theory {x}^{theory}")
        ax.set_title(f"{sweep} sweep" + (" (depth begets width)" if sweep == "LM" else ""), fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.25)
    return figures.save(fig, fig_dir, "transformer-convergence", "error against each sweep's variable: "
                        "seed means ± std, the fitted power law and the theory's slope (dashed)")


def sections(kind, spec, store, analysis: dict[str, Any], fig_dir) -> list[Section]:
    refs = ", ".join(f"{n}: {tuple(sw.reference)}" for n, sw in
                     (("M", spec.M_sweep), ("D", spec.D_sweep), ("LM", spec.LM_sweep)))
    text = (f"{spec.param} Transformers (attention heads as units, r = {spec.r}, r_v = {spec.r_v}, "
            f"T = {spec.T}) against each sweep's reference (L, M, D) ({refs}); error = RMS over "
            f"steps 0..{spec.steps}, samples and outputs of the output difference, {spec.seeds} seeds. "
            "Sweeps: heads per layer M, embedding dimension D, and at fixed L M the split into depth "
            "and heads (depth begets width: the error should depend on L M, plus 1/L). Theory: the "
            "error bound 1/L + sqrt(D/(L M)) + 1/sqrt(D) with heads as units (docs/theory.md §2.3, §5); "
            "the output error can fall faster along M than the bound's -1/2 (docs/transformers.md).")
    spread = analysis["lm_spread"]
    extra = (f"LM sweep: the errors of splits with L >= 4 differ by a factor {spread:.2f} "
             "(max / min of the seed means)." if math.isfinite(spread) else "")
    sec = Section("Transformers: convergence to the reference", [text, extra],
                  tables=[("Fitted exponents (error ~ x^p, bootstrap 95% interval)", analysis["fits"]),
                          ("Error per shape (mean, std over seeds)", analysis["summary"])])
    if not analysis["summary"].empty:
        sec.figures.append(_figure(analysis, fig_dir))
    return [sec]
