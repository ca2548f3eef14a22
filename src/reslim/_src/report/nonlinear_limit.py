"""Analysis, figures and report sections of the ``nonlinear-limit`` experiment kind.

Errors at GD step ``analysis.step`` (default K), per repetition, aggregated as the RMS over
repetitions (as :func:`reslim.measure.fit_power_law` does), each beside the limit's own standard
error (RMS over repetitions of the per-run estimates). A shape (or D) whose aggregate error is
below ``analysis.min_ratio`` times its standard error is left out of every fit of that error
and counted (column ``excluded`` of the fit table): such an error measures the solver, not the
network.

- Leg 1, finite vs ``MeanODE`` (same D, W_e, W_u), theory O(1/L + sqrt(D/(L M))): the embedding
  RMS at h_L against M (at the largest L, per D), against L (at the largest M, per D), against
  L M / D (all shapes); along M also the exponent of the sqrt(D/(LM)) term alone
  (:func:`reslim.measure.fit_power_term` with the solver's variance removed per repetition and
  a constant for the 1/L term); the additive model err^2 = a^2/L^2 + b^2 D/(L M) + c^2/D
  (c should vanish); the paper's max-over-layers metric and the outputs likewise.
- Leg 2, ``MeanODE`` vs ``LargeDLimit`` with the same rows, theory O(D^-1/2): power laws in D.
- The whole triangle, finite vs ``LargeDLimit``: the additive models with all three terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import figures
from .linear_limit import Fits, LinearLimitAnalysis, _matrix, _rms, leg1_figure, leg2_figure, start_analysis
from .report import Section, verdict_note

#: error metric -> the metric holding its limit's standard error
FINITE_PAIRS = {"ode_embedding_rms": "ode_embedding_stderr", "ode_embedding_error": "ode_hidden_stderr",
                "ode_output_error": "ode_output_stderr", "embedding_rms": "embedding_stderr",
                "embedding_error": "hidden_stderr", "output_error": "output_stderr"}
GAP_PAIRS = {"embedding_rms": "embedding_stderr", "embedding_error": "hidden_stderr",
             "output_error": "output_stderr"}
METRICS = tuple(dict.fromkeys([*FINITE_PAIRS, *FINITE_PAIRS.values(), "ode_embedding_stderr",
                               "ode_output_stderr"]))


@dataclass
class NonlinearLimitAnalysis(LinearLimitAnalysis):
    min_ratio: float = 3.0
    term: dict[str, object] = field(default_factory=dict)  # name -> PowerLawFit (floor-corrected)


class _Masked:
    """Per-repetition error matrices of one role with the shapes below ``min_ratio`` x stderr
    masked (NaN); ``excluded(m, sel)`` counts them within a selection."""

    def __init__(self, runs, role, keys, reps, step, pairs, min_ratio) -> None:
        self.raw = {m: _matrix(runs, role, m, keys, reps, step) for m in {*pairs, *pairs.values()}}
        self.pairs, self.low = pairs, {}
        for m, s in pairs.items():
            err, se = _rms(self.raw[m]), _rms(self.raw[s])
            with np.errstate(invalid="ignore"):
                self.low[m] = np.isfinite(err) & (err <= min_ratio * se)

    def __getitem__(self, m: str) -> np.ndarray:
        out = self.raw[m].copy()
        if m in self.low:
            out[self.low[m]] = np.nan
        return out

    def excluded(self, m: str, sel=slice(None)) -> int:
        return int(self.low[m][sel].sum())


def analyse(kind, spec, store) -> NonlinearLimitAnalysis:
    from ... import measure

    step, R, R_gap = spec.step, spec.repetitions, kind.gap_repetitions(spec)
    res = start_analysis(NonlinearLimitAnalysis, kind, spec, store, step, METRICS)
    res.min_ratio = ratio = spec.analysis.min_ratio
    fits = Fits(res, spec.analysis.n_boot, spec.seed)
    runs = res.runs
    if "finite" in spec.roles:
        shapes = [s.as_tuple() for s in spec.grid.shapes()]
        agg = pd.DataFrame(shapes, columns=["L", "M", "D"])
        mx = _Masked(runs, "finite", shapes, R, step, FINITE_PAIRS, ratio)
        for m, v in mx.raw.items():
            agg[m] = _rms(v)
        agg["n"] = np.isfinite(mx.raw["ode_embedding_rms"]).sum(axis=1)
        sub = runs[(runs["role"] == "finite") & (runs["status"] == "diverged")]
        div = sub.groupby(["L", "M", "D"]).size()
        agg["n_diverged"] = [int(div.get(s, 0)) for s in shapes]
        res.agg = agg
        L, M, D = (agg[a].to_numpy() for a in ("L", "M", "D"))
        Lm, Mm = L.max(), M.max()

        def power(name, m, quantity, against, held, sel, x, theory):
            fits.power(name, quantity, against, held, x[sel], mx[m][sel], theory,
                       excluded=mx.excluded(m, sel))

        for d in sorted(set(D)):
            selM, selL = (L == Lm) & (D == d), (M == Mm) & (D == d)
            power(f"leg1-M-D{d}", "ode_embedding_rms", "leg 1 embedding RMS", "M", f"L={Lm}, D={d}", selM, M,
                  "-1/2")
            power(f"leg1-paper-M-D{d}", "ode_embedding_error", "leg 1 max_l mean|h - h^ODE|", "M",
                  f"L={Lm}, D={d}", selM, M, "-1/2")
            power(f"leg1-L-D{d}", "ode_embedding_rms", "leg 1 embedding RMS", "L", f"M={Mm}, D={d}", selL, L,
                  "-1/2 .. -1")
            power(f"leg1-out-M-D{d}", "ode_output_error", "leg 1 output RMS", "M", f"L={Lm}, D={d}", selM, M,
                  "-1/2 .. -1")
            # the sqrt(D/(LM)) term alone: the solver's variance removed per repetition (it is the
            # same at every M: one MeanODE per draw and D), the 1/L term a constant along M
            m = mx["ode_embedding_rms"][selM]
            floor = np.nan_to_num(mx.raw["ode_embedding_stderr"][selM], nan=0.0).mean(axis=0) ** 2
            if np.isfinite(m).any() and np.unique(M[selM][np.isfinite(_rms(m))]).size >= 3:
                try:
                    f = measure.fit_power_term(M[selM], m, floor=floor, background=("constant",),
                                               n_boot=min(spec.analysis.n_boot, 200), seed=spec.seed)
                except ValueError as err:
                    res.notes.append(f"leg 1 term fit at D={d}: no fit ({err})")
                else:
                    res.term[f"leg1-M-term-D{d}"] = f
                    lo, hi = f.exponent_ci
                    fits.rows.append({"quantity": "leg 1 embedding RMS, sqrt(D/(LM)) term", "against": "M",
                                      "held at": f"L={Lm}, D={d}", "exponent": f.exponent, "CI low": lo,
                                      "CI high": hi, "theory": "-1/2", "constant": f.constant,
                                      "points": f.n_points,
                                      "excluded": mx.excluded("ode_embedding_rms", selM)})
        allm = np.ones(len(agg), dtype=bool)
        power("leg1-LM/D", "ode_embedding_rms", "leg 1 embedding RMS", "L*M/D", "all shapes", allm, L * M / D,
              "-1/2 (+ 1/L)")
        fits.additive("leg1-embedding", L, M, D, mx["ode_embedding_rms"], "embedding")
        fits.additive("leg1-output", L, M, D, mx["ode_output_error"], "output")
        fits.additive("embedding", L, M, D, mx["embedding_rms"], "embedding")
        fits.additive("output", L, M, D, mx["output_error"], "output")
        res.counts["excluded"] = {m: mx.excluded(m) for m in FINITE_PAIRS}
    if "limit-gap" in spec.roles:
        Ds = spec.limit_D
        gap = pd.DataFrame({"D": Ds})
        mg = _Masked(runs, "limit-gap", Ds, R_gap, step, GAP_PAIRS, ratio)
        for m in (*GAP_PAIRS, *GAP_PAIRS.values()):
            gap[m] = _rms(mg.raw[m])
        for m in ("ode_embedding_stderr", "ode_output_stderr"):
            gap[m] = _rms(_matrix(runs, "limit-gap", m, Ds, R_gap, step))
        gap["n"] = np.isfinite(mg.raw["embedding_rms"]).sum(axis=1)
        res.gap = gap
        for name, m in (("leg2-embedding", "embedding_rms"), ("leg2-embedding-paper", "embedding_error"),
                        ("leg2-output", "output_error")):
            fits.power(name, f"leg 2 {m}: MeanODE vs large-D", "D", "L, M = oo", np.array(Ds), mg[m], "-1/2",
                       excluded=mg.excluded(m))
    res.fits = pd.DataFrame(fits.rows)
    return res


def _fit_line(r: dict) -> str:
    ex = f", {r['excluded']} left out below the stderr cut" if r.get("excluded") else ""
    return (f"  {r['quantity']} vs {r['against']} ({r['held at']}): {r['exponent']:+.3f} "
            f"[{r['CI low']:+.3f}, {r['CI high']:+.3f}] (theory {r['theory']}; {r['points']} points{ex}; "
            f"{verdict_note(r['theory'], r['CI low'], r['CI high']) or 'no verdict'})")


def _additive_rows(res: NonlinearLimitAnalysis) -> pd.DataFrame:
    rows = []
    for name, f in res.additive.items():
        for coef, term in zip(("a", "b", "c"), f.terms, strict=True):
            lo, hi = f.coefficient_ci[coef]
            rows.append({"error": name, "term": term, "coefficient": coef, "fitted": f.coefficients[coef],
                         "CI low": lo, "CI high": hi, "points": f.n_points})
    return pd.DataFrame(rows)


def summary_lines(res: NonlinearLimitAnalysis) -> list[str]:
    lines = [f"nonlinear-limit at GD step k={res.step} (RMS over repetitions; fits use errors above "
             f"{res.min_ratio:g} x the limit's stderr):"]
    for name in ("leg1-embedding", "embedding"):
        f = res.additive.get(name)
        if f is not None:
            c = f.coefficients
            what = "leg 1 (finite vs MeanODE)" if name.startswith("leg1") else "finite vs large-D"
            lines.append(f"  {what} embedding RMS: err^2 = ({c['a']:.3g})^2/L^2 + ({c['b']:.3g})^2 D/(LM) "
                         f"+ ({c['c']:.3g})^2/D")
    for r in res.fits.to_dict("records"):
        lines.append(_fit_line(r))
    for role, c in res.counts.items():
        if role == "excluded":
            continue
        n_div, n_fail = c.get("diverged", 0), c.get("failed", 0)
        if n_div or n_fail:
            lines.append(f"  {role}: {n_div} diverged and {n_fail} failed runs excluded from the fits")
    return lines


def sections(kind, spec, store, res: NonlinearLimitAnalysis, fig_dir) -> list[Section]:
    s, r = res.step, res.min_ratio
    act = spec.model.activation
    lim = spec.limit
    intro = Section(f"The triangle for {act}, leg by leg", [
        f"Setting of docs/theory.md §3.1: gaussian data (N = {spec.data.N}, d_in = {spec.data.d_in}, "
        f"d_out = {spec.data.d_out}), {act} MLU ResNets, GD eta = {spec.train.lr:g}, loss "
        f"'{spec.train.loss}', K = {spec.train.steps}; errors at step k = {s}, RMS over repetitions. "
        f"The limits are the span-reduced MeanODE (fixed D, same W_e, W_u) and LargeDLimit, sampled "
        f"with {lim.samples} unit samples in {lim.replicas} independent scrambles (S = {lim.S}); each "
        "error stands beside the limit's own standard error (spread over scrambles). The fixed-D and "
        "large-D solves share the scrambles (common random numbers), so leg 2 has an error estimate of "
        "its own, the spread of the difference.",
        f"Fits use only shapes whose error exceeds {r:g} x the standard error (the `excluded` column "
        "counts the others); an error below that measures the solver, not the network.", *res.notes])
    c = res.counts
    intro.paragraphs.append(f"Runs: finite {c.get('finite', {})}, limit-gap {c.get('limit-gap', {})}; "
                            f"diverged runs are excluded from the fits ({res.diverged_late} only after "
                            f"step {s}).")
    if len(res.fits):
        intro.tables.append(("Power-law fits (95% bootstrap intervals over repetitions) beside theory",
                             res.fits))
    if res.additive:
        intro.tables.append(("Additive models err^2 = a^2/L^2 + b^2 D/(LM) + c^2/D (output: (D/(LM))^2); "
                             "leg1-*: finite vs MeanODE (c should vanish), the others finite vs large-D",
                             _additive_rows(res)))
    leg1 = Section("Leg 1: finite network vs the fixed-D MeanODE", [
        "Per shape: embedding RMS over coordinates and samples of h_L - h(1) (`ode_embedding_rms`) "
        "with its standard error, the paper's max over layers of the mean |h_l - h(s_l)| "
        "(`ode_embedding_error`, standard error maximised over layers), output RMS; the same against "
        "the large-D single sites of the same rows (no `ode_` prefix). Theory: O(1/L + sqrt(D/(L M))) "
        "for leg 1, plus O(D^-1/2) against the large-D limit."])
    if len(res.agg):
        cols = ["L", "M", "D", "ode_embedding_rms", "ode_embedding_stderr", "ode_embedding_error",
                "ode_hidden_stderr", "ode_output_error", "ode_output_stderr", "embedding_rms",
                "embedding_stderr", "output_error", "n", "n_diverged"]
        leg1.tables.append(("Errors per shape (RMS over repetitions) and the limits' standard errors",
                            res.agg[cols]))
    leg2 = Section("Leg 2: fixed-D MeanODE vs the large-D limit", [
        "Same rows of W_e, W_u, on the limit's depth grid i/S; theory O(D^-1/2). The difference's "
        "standard error (`*_stderr`) is far below each solver's own (`ode_*_stderr`) thanks to the "
        "common random numbers."])
    if len(res.gap):
        leg2.tables.append(("Leg 2 errors per D (RMS over repetitions)", res.gap))
    figs = Section("Figures")
    figs.figures.extend(_figures(spec, res, fig_dir))
    return [intro, leg1, leg2, figs]


def _with_stderr(fig, agg: pd.DataFrame, line: str, stderr: str, ratio: float):
    """Dotted ratio x stderr per line value on a figure of :func:`figures.error_vs_axis`."""
    ax = fig.axes[0]
    values = sorted(agg[line].unique())
    cmap = figures.colormap("viridis")
    for i, v in enumerate(values):
        se = float(np.sqrt(np.nanmean(agg[agg[line] == v][stderr] ** 2)))
        if math.isfinite(se) and se > 0:
            ax.axhline(ratio * se, ls=":", lw=0.9, color=cmap(i / max(len(values) - 1, 1)))
    ax.text(0.01, 0.01, f"dotted: {ratio:g} x the limit's stderr", transform=ax.transAxes, fontsize=7)
    return fig


def _figures(spec, res: NonlinearLimitAnalysis, fig_dir) -> list:
    refs = []
    agg, s, r = res.agg, res.step, res.min_ratio
    if len(agg):
        Lm, Mm = agg["L"].max(), agg["M"].max()
        model = res.additive.get("leg1-embedding")
        for metric, stderr, name, x, line, fixed, ylabel, mdl in (
                ("ode_embedding_rms", "ode_embedding_stderr", "leg1", "M", "D", {"L": Lm},
                 "finite vs MeanODE: RMS of h_L - h(1)", model),
                ("ode_embedding_rms", "ode_embedding_stderr", "leg1", "L", "D", {"M": Mm},
                 "finite vs MeanODE: RMS of h_L - h(1)", model),
                ("ode_embedding_rms", "ode_embedding_stderr", "leg1", "D", "M", {"L": Lm},
                 "finite vs MeanODE: RMS of h_L - h(1)", model),
                ("ode_output_error", "ode_output_stderr", "leg1-output", "M", "D", {"L": Lm},
                 "finite vs MeanODE: output RMS", res.additive.get("leg1-output")),
                ("embedding_rms", "embedding_stderr", "embedding", "D", "M", {"L": Lm},
                 "finite vs large-D: RMS of h_L - H(1)", res.additive.get("embedding"))):
            if agg[x].nunique() < 2:
                continue
            sel = agg[agg[list(fixed)[0]] == list(fixed.values())[0]]
            fig = figures.error_vs_axis(agg.assign(rms=agg[metric]), x, line, fixed, ylabel, mdl)
            refs.append(figures.save(_with_stderr(fig, sel, line, stderr, r), fig_dir,
                                     f"nonlinear-limit-{name}-vs-{x}",
                                     f"{name}: {ylabel} vs {x} at step {s}, one line per {line} "
                                     f"({', '.join(f'{k} = {v}' for k, v in fixed.items())}); dashed: the "
                                     "additive fit; dotted: the stderr cut"))
        refs.append(figures.save(
            leg1_figure(agg, "ode_embedding_rms", res.power.get("leg1-LM/D"), s,
                        "finite vs MeanODE: RMS of h_L - h(1)", stderr="ode_embedding_stderr", ratio=r),
            fig_dir, "nonlinear-limit-leg1", "leg 1: finite network vs MeanODE against L M / D"))
    if len(res.gap):
        fig = leg2_figure(res.gap, res.power, s, (("embedding_rms", "embedding"),
                                                  ("embedding_error", "embedding-paper"),
                                                  ("output_error", "output")),
                          stderr={"embedding_rms": "embedding_stderr", "output_error": "output_stderr"},
                          ratio=r)
        refs.append(figures.save(fig, fig_dir, "nonlinear-limit-leg2",
                                 "leg 2: fixed-D MeanODE vs the large-D limit against D (embedding RMS, the "
                                 f"paper's metric, outputs), with {r:g} x the difference's stderr dotted"))
    return refs
