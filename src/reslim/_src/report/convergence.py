"""Analysis and report sections of the ``convergence`` experiment kind."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import figures
from .report import Section, verdict_note

AXES = ("L", "M", "D")
#: the other terms of err^2 along an axis, the rest held fixed (docs/theory.md §2.3): the background of
#: the floor-corrected fit of that axis's own term (``reslim.measure.fit_power_term``)
TERM_BACKGROUND = {
    "embedding": {"M": ("constant",), "D": ("linear",)},  # b^2 D/(LM) is linear in D
    "output": {"M": ("constant",), "D": ("quadratic",)},  # b^2 (D/(LM))^2 is quadratic in D
}
#: the same against an exact (L = oo) limit: no floor, but the Euler term a^2/L^2 no longer cancels
#: with the reference's, so it joins the background along D (along M it is in the constant already)
LIMIT_TERM_BACKGROUND = {
    "embedding": {"M": ("constant",), "D": ("constant", "linear")},
    "output": {"M": ("constant",), "D": ("constant", "quadratic")},
}


@dataclass
class ConvergenceAnalysis:
    step: int
    runs: pd.DataFrame  # one row per stored run of the spec: role, L, M, D, rep, status, err
    agg: pd.DataFrame  # one row per (role, shape): rms over included repetitions, counts
    fits: pd.DataFrame  # power-law fits beside the theory's exponents
    additive: dict[str, Any] = field(default_factory=dict)  # role -> AdditiveFit
    power: dict[tuple[str, str], Any] = field(default_factory=dict)  # (role, axis) -> PowerLawFit
    frontier: dict[str, pd.DataFrame] = field(default_factory=dict)
    floor: dict[str, np.ndarray] = field(default_factory=dict)  # role -> (R,) reference's err^2
    reference: dict[str, Any] = field(default_factory=dict)  # a limit reference: solver, error estimate
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_table(kind, spec, store) -> pd.DataFrame:
    """Per stored run of ``spec``: role, shape, rep, status and the error lists."""
    rows = []
    for rec in kind.records(spec, store):
        c = rec.config
        L, M, D = c.get("shape") or (0, 0, 0)
        rows.append({"key": rec.key, "role": c["role"], "L": L, "M": M, "D": D, "P": L * M * D,
                     "rep": c["rep"], "status": rec.status,
                     "embedding_error": rec.metrics.get("embedding_error"),
                     "output_error": rec.metrics.get("output_error")})
    return pd.DataFrame(rows, columns=["key", "role", "L", "M", "D", "P", "rep", "status",
                                       "embedding_error", "output_error"])


def _at(v, step: int) -> float:
    if not isinstance(v, list) or not v:
        return math.nan
    x = v[step]
    return math.nan if x is None else float(x)


def _matrix(runs: pd.DataFrame, role: str, metric: str, reps: int, shapes: list[tuple[int, int, int]],
            step: int) -> np.ndarray:
    """(n_shapes, reps) errors at ``step``; NaN for diverged, failed or missing runs."""
    idx = {s: i for i, s in enumerate(shapes)}
    out = np.full((len(shapes), reps), np.nan)
    sel = runs[(runs["role"] == role) & (runs["status"] == "done")]
    for r in sel.itertuples(index=False):
        i = idx.get((r.L, r.M, r.D))
        if i is not None and r.rep < reps:
            out[i, r.rep] = _at(getattr(r, metric), step)
    return out


def _rms(m: np.ndarray) -> np.ndarray:
    if not m.size:
        return np.zeros(0)
    sq = m * m
    n = np.isfinite(sq).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows with no finite entry: NaN, silently
        return np.sqrt(np.where(n > 0, np.nansum(sq, axis=1) / np.maximum(n, 1), np.nan))


def analyse(kind, spec, store) -> ConvergenceAnalysis:
    from ... import measure

    step = spec.analysis.step if spec.analysis.step >= 0 else spec.train.steps + 1 + spec.analysis.step
    runs = run_table(kind, spec, store)
    shapes = [s.as_tuple() for s in spec.grid.shapes()]
    reps = spec.repetitions
    counts = runs["status"].value_counts().to_dict()
    res = ConvergenceAnalysis(step, runs, pd.DataFrame(), pd.DataFrame(), counts=counts)
    aggs, fit_rows = [], []
    Lmax, Mmax, Dmax = max(spec.grid.L), max(spec.grid.M), max(spec.grid.D)
    metric = {"embedding": "embedding_error", "output": "output_error"}
    limit_ref = spec.reference.kind == "limit"
    if limit_ref:
        res.reference = _limit_reference_info(kind, spec, store, step)
    for role in spec.runs:
        m = _matrix(runs, role, metric[role], reps, shapes, step)
        if getattr(spec.reference, "floor", False):
            twin = _matrix(runs, kind.twins[role], metric[role], reps, [tuple(spec.reference.shape)], step)[0]
            if np.isfinite(twin).any():
                res.floor[role] = twin**2 / 2  # E|twin - ref|^2 = 2 phi: independent, equal laws
        # the term fits: against a finite reference with its twin-measured floor removed; against
        # an exact limit with floor 0 (its own sampling error is reported, far below the errors)
        term_floor = 0.0 if limit_ref else res.floor.get(role)
        term_bg = (LIMIT_TERM_BACKGROUND if limit_ref else TERM_BACKGROUND)[role]
        sub = runs[runs["role"] == role]
        agg = pd.DataFrame(shapes, columns=list(AXES))
        agg["P"] = agg["L"] * agg["M"] * agg["D"]
        agg["role"] = role
        agg["rms"] = _rms(m)
        agg["n"] = np.isfinite(m).sum(axis=1)
        div = sub[sub["status"] == "diverged"].groupby(["L", "M", "D"]).size()
        agg["n_diverged"] = [int(div.get(s, 0)) for s in shapes]
        aggs.append(agg)

        def fit(axis: str, fixed: dict[str, int], role=role, m=m, agg=agg, phi=term_floor, term_bg=term_bg):
            mask = agg[axis].to_numpy() >= spec.analysis.min_size
            for k, v in fixed.items():
                mask &= agg[k].to_numpy() == v
            x = agg.loc[mask, axis].to_numpy()
            if len(np.unique(x)) < 2:
                return
            try:
                f = measure.fit_power_law(x, m[mask], n_boot=spec.analysis.n_boot, seed=spec.seed)
            except ValueError as err:
                res.notes.append(f"{role} error vs {axis}: no fit ({err})")
                return
            res.power[(role, axis)] = f
            held = ", ".join(f"{k}={v}" for k, v in fixed.items())
            fit_rows.append(_fit_row(role, axis, held, f, kind.theory_exponents[role][axis]))
            if phi is None or axis not in term_bg:
                return
            bg = term_bg[axis]
            try:
                t = measure.fit_power_term(x, m[mask], floor=phi, background=bg,
                                           n_boot=min(spec.analysis.n_boot, 200), seed=spec.seed)
            except ValueError as err:
                res.notes.append(f"{role} error vs {axis}, term fit: no fit ({err})")
                return
            res.power[(role, axis + "|floor")] = t
            lhs = "err^2 (floor 0: exact limit)" if limit_ref else "err^2 - floor"
            fit_rows.append(_fit_row(role, axis, held, t, kind.theory_exponents[role][axis],
                                     fit=f"term: {lhs} = C^2 {axis}^2p + {' + '.join(bg)}"))

        fit("M", {"L": Lmax, "D": Dmax})
        fit("D", {"L": Lmax, "M": Mmax})
        fit("L", {"M": Mmax, "D": Dmax})
        # P: the best shape at each budget (the lower envelope), as in the compute-optimal bound
        order = agg[np.isfinite(agg["rms"])].sort_values(["P", "rms"])
        best, keep = math.inf, []
        for i, r in order.iterrows():
            if r["rms"] < best:
                best = r["rms"]
                keep.append(i)
        front = agg.loc[keep]
        res.frontier[role] = front
        if front["P"].nunique() >= 2:
            try:
                f = measure.fit_power_law(front["P"].to_numpy(), m[keep], n_boot=spec.analysis.n_boot,
                                          seed=spec.seed)
                res.power[(role, "P")] = f
                fit_rows.append(_fit_row(role, "P", "best shape per P", f, kind.theory_exponents[role]["P"],
                                         kind.published[role]["P"]))
            except ValueError as err:
                res.notes.append(f"{role} error vs P: no fit ({err})")
        ok = np.isfinite(agg["rms"]).to_numpy() & (agg["rms"].to_numpy() > 0)
        if ok.sum() >= 3:
            try:
                res.additive[role] = measure.fit_additive(
                    agg["L"].to_numpy()[ok], agg["M"].to_numpy()[ok], agg["D"].to_numpy()[ok], m[ok],
                    kind=role, n_boot=min(spec.analysis.n_boot, 200), seed=spec.seed)
            except ValueError as err:
                res.notes.append(f"{role} additive model: no fit ({err})")
    res.agg = pd.concat(aggs, ignore_index=True) if aggs else pd.DataFrame()
    res.fits = pd.DataFrame(fit_rows)
    return res


def _fit_row(role, axis, held, f, theory, published=None, fit="log-log") -> dict[str, Any]:
    lo, hi = f.exponent_ci
    return {"error": role, "against": axis, "held at": held, "fit": fit, "exponent": f.exponent,
            "CI low": lo, "CI high": hi, "theory": theory, "constant": f.constant,
            "published constant": published if published is not None else math.nan,
            "points": f.n_points}


def _limit_reference_info(kind, spec, store, step: int) -> dict[str, Any]:
    """The limit reference's solver details and its own error estimate at ``step`` (RMS over
    the repetitions' reference runs; they share one solve for the large-D limit)."""
    recs = [r for r in kind.records(spec, store) if r.config["role"] == "reference" and r.status == "done"]
    info: dict[str, Any] = {"name": spec.reference.name, "options": dict(spec.reference.options),
                            "runs": len(recs)}
    if not recs:
        return info
    m = recs[0].metrics
    info.update({k: m[k] for k in ("method", "samples", "replicas", "seed", "solved_together") if k in m})
    info["solve_seconds"] = max(float(r.metrics.get("solve_seconds", r.seconds)) for r in recs)
    for name in ("h_last_stderr", "output_stderr"):
        vals = [_at(r.metrics.get(name), step) for r in recs]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            info[name] = math.sqrt(float(np.mean(np.square(vals))))
    return info


def _reference_text(res: ConvergenceAnalysis) -> list[str]:
    info = res.reference
    if not info:
        return []
    name = info["name"]
    what = ("the exact large-D limit (L, M -> oo, then D -> oo; docs/theory.md §2.2, §4)" if name == "large-d"
            else f"the limit `{name}` of reslim.limits")
    how = ""
    if info.get("method") == "sampled":
        how = (f", solved by the span-reduced sampled solver ({info.get('samples')} unit samples in "
               f"{info.get('replicas')} independent scrambles)")
    elif info.get("method"):
        how = f" (method {info['method']})"
    once = ""
    if info.get("solved_together", 0) > 1:
        once = (f"; one solve ({info.get('solve_seconds', math.nan):.2f} s) served all "
                f"{info['solved_together']} repetitions")
    est = []
    if "h_last_stderr" in info:
        est.append(f"embedding (RMS over coordinates and samples) {info['h_last_stderr']:.2g}")
    if "output_stderr" in info:
        est.append(f"outputs {info['output_stderr']:.2g}")
    text = (f"The reference is {what}{how}{once}. Each repetition's reference h_L is the limit's single "
            "sites H_d(1) for that repetition's rows of W_e, W_u; a network of dimension D is compared on "
            "its first D coordinates (its rows). There is no twin and no floor: the error of an exact "
            "limit is only its sampling error")
    if est:
        text += (f", whose own estimate at step k = {res.step} (standard error over independent "
                 f"scrambles) is {' and '.join(est)}")
    text += (". Against an L = oo limit the Euler error a/L of the grid's depth no longer cancels with the "
             "reference's: it is a constant along M and D, so the 'term' rows fit the axis's own term "
             "with floor 0 and the theory's other terms (constant included) as non-negative background.")
    return [text]


def _floor_text(res: ConvergenceAnalysis) -> list[str]:
    if not res.floor:
        return []
    vals = ", ".join(f"{role}: err^2 = {np.nanmean(phi):.4g} (RMS {math.sqrt(np.nanmean(phi)):.3g})"
                     for role, phi in res.floor.items())
    return ["The finite reference has an error of its own; an independent twin of it (fresh U, V) "
            f"measures it as half their squared difference ({vals}). It adds to every shape's "
            "err^2, so log-log slopes flatten where the error nears it. The 'term' rows subtract it "
            "per repetition and fit the exponent of the axis's own term with the theory's other "
            "terms along that axis as non-negative background (reslim.measure.fit_power_term)."]


def summary_lines(res: ConvergenceAnalysis) -> list[str]:
    lines = [f"fitted exponents at step k={res.step} (theory in brackets):"]
    for r in res.fits.to_dict("records"):
        how = ("" if r["fit"] == "log-log" else ", term fit, floor 0" if "floor 0" in r["fit"]
               else ", floor-corrected term")
        lines.append(f"  {r['error']:>9} error vs {r['against']} ({r['held at']}{how}): "
                     f"{r['exponent']:+.3f} [{r['CI low']:+.3f}, {r['CI high']:+.3f}]"
                     f"  (theory {r['theory']:+.3f}; "
                     f"{verdict_note(r['theory'], r['CI low'], r['CI high'])})")
    for role, phi in res.floor.items():
        lines.append(f"  {role} reference floor (twin): err^2 = {np.nanmean(phi):.4g} "
                     f"(RMS {math.sqrt(np.nanmean(phi)):.3g})")
    ref = res.reference
    if ref.get("h_last_stderr") is not None or ref.get("output_stderr") is not None:
        lines.append(f"  reference {ref['name']} (exact limit): own error estimate at k={res.step}: "
                     f"embedding {ref.get('h_last_stderr', math.nan):.2g}, "
                     f"outputs {ref.get('output_stderr', math.nan):.2g}")
    for role, f in res.additive.items():
        c = f.coefficients
        lines.append(f"  {role} model err^2 = {' + '.join(f.terms)}: a={c['a']:.3g} b={c['b']:.3g} "
                     f"c={c['c']:.3g}")
    n_div, n_fail = res.counts.get("diverged", 0), res.counts.get("failed", 0)
    if n_div or n_fail:
        lines.append(f"  {n_div} diverged and {n_fail} failed runs excluded")
    return lines


def _describe_reference(ref) -> str:
    """``the limit `large-d` (options ...)`` or ``a (L, M, D) network``, for the report's text."""
    if getattr(ref, "kind", None) == "limit":
        opts = ", ".join(f"{k} = {v}" for k, v in sorted(ref.options.items()))
        return f"the limit `{ref.name}`" + (f", {opts}" if opts else "")
    floor = ", with twins measuring its own error" if getattr(ref, "floor", False) else ""
    return f"a finite {tuple(ref.shape)} network{floor}"


def sections(kind, spec, store, res: ConvergenceAnalysis, fig_dir) -> list[Section]:
    out = []
    fit_sec = Section("Fitted rates", [
        f"Errors at GD step k = {res.step} against the reference "
        f"({_describe_reference(spec.reference)}); RMS over coordinates d <= D, samples and "
        "repetitions (diverged repetitions excluded, never set to zero). Power laws are fitted "
        "in log-log with 95% bootstrap intervals over repetitions; the P fit uses the best shape "
        "at each P. Theory (docs/theory.md §2.3): embedding error O(1/L + sqrt(D/(LM)) + 1/sqrt(D)), "
        "P^(-1/6) at the compute-optimal shape; output error 1/L + D/(LM) + 1/sqrt(D), P^(-1/5).",
        *_reference_text(res), *_floor_text(res), *res.notes])
    if res.reference:
        ref = res.reference
        fit_sec.tables.append((f"The reference: exact limit {ref['name']} and its own error estimate "
                               f"at k = {res.step}", pd.DataFrame([{
                                   "limit": ref["name"], "method": ref.get("method", ""),
                                   "samples": ref.get("samples", math.nan),
                                   "replicas": ref.get("replicas", math.nan),
                                   "solve seconds": ref.get("solve_seconds", math.nan),
                                   "embedding stderr (RMS)": ref.get("h_last_stderr", math.nan),
                                   "output stderr (RMS)": ref.get("output_stderr", math.nan)}])))
    if len(res.fits):
        fit_sec.tables.append(("Power-law fits beside the theory's exponents", res.fits))
    rows = []
    for role, f in res.additive.items():
        pub = kind.published[role]
        for name, term in zip(("a", "b", "c"), f.terms, strict=True):
            lo, hi = f.coefficient_ci[name]
            rows.append({"error": role, "term of err^2": term, "coefficient": name,
                         "fitted": f.coefficients[name], "CI low": lo, "CI high": hi,
                         "published (docs/theory.md §3.1)": pub.get(name, math.nan)})
    if rows:
        fit_sec.tables.append(("Additive models (non-negative coefficients); published curves at k = 15",
                               pd.DataFrame(rows)))
    out.append(fit_sec)

    figs = Section("Figures")
    agg = res.agg
    Lmax, Mmax = max(spec.grid.L), max(spec.grid.M)
    label = {"embedding": "embedding error |h_L - h_L^ref|", "output": "output error |y - y^ref|"}
    for role in spec.runs:
        a = agg[agg["role"] == role]
        model = res.additive.get(role)
        if len(spec.grid.D) > 1:
            figs.figures.append(figures.save(
                figures.error_vs_axis(a, "D", "M", {"L": Lmax}, label[role], model), fig_dir,
                f"convergence-{role}-vs-D", f"{role} error vs D, one line per M (L = {Lmax})"))
        if len(spec.grid.M) > 1:
            figs.figures.append(figures.save(
                figures.error_vs_axis(a, "M", "D", {"L": Lmax}, label[role], model), fig_dir,
                f"convergence-{role}-vs-M", f"{role} error vs M, one line per D (L = {Lmax})"))
        if len(spec.grid.L) > 1:
            figs.figures.append(figures.save(
                figures.error_vs_axis(a, "L", "D", {"M": Mmax}, label[role], model), fig_dir,
                f"convergence-{role}-vs-L", f"{role} error vs L, one line per D (M = {Mmax})"))
        pub = kind.published[role]
        guides = {"P^(-1/6) (published 2 P^-1/6)": (2.0, -1 / 6),
                  "P^(-1/5) (published 0.7 P^-1/5)": (0.7, -1 / 5)}
        figs.figures.append(figures.save(
            figures.error_vs_P(a, label[role], res.frontier.get(role), res.power.get((role, "P")), guides),
            fig_dir, f"convergence-{role}-vs-P",
            f"{role} error vs P = LMD with P^(-1/6) and P^(-1/5) guides (theory exponent "
            f"{pub['P_exponent']:.3f})"))
    figs.figures.append(figures.save(figures.losses(*_loss_curves(kind, spec, store)), fig_dir,
                                     "convergence-loss", "training loss per shape (coupled run)"))
    out.append(figs)
    return out


def _loss_curves(kind, spec, store):
    """Mean training loss over repetitions per shape (embedding run, else output), and the
    reference's."""
    role = spec.runs[0]
    per_shape: dict[tuple, list[np.ndarray]] = {}
    ref = []
    for rec in kind.records(spec, store):  # this spec's runs only (a store may hold others)
        c = rec.config
        if rec.status != "done" or c["role"] not in (role, "reference"):
            continue
        loss = store.arrays(rec.key, ["loss"]).get("loss")
        if loss is None:
            continue
        if c["role"] == "reference":
            ref.append(loss)
        else:
            per_shape.setdefault(tuple(c["shape"]), []).append(loss)
    wanted = {s.as_tuple() for s in spec.grid.shapes()}
    curves = [(str(s), np.mean(v, axis=0), s[0] * s[1] * s[2]) for s, v in sorted(per_shape.items())
              if s in wanted]
    return curves, (np.mean(ref, axis=0) if ref else None)
