"""Analysis, figures and report sections of the ``linear-limit`` experiment kind.

Errors at GD step ``analysis.step`` (per repetition r, aggregated as the RMS over repetitions,
as :func:`reslim.measure.fit_power_law` and :func:`reslim.measure.fit_additive` do):

- (a) the paper's metric e = max_l mean_{d,n} |h_{l,d} - H_d(s_l)| against ``LargeDLimit``,
  fitted by e^2 = a^2/L^2 + b^2 D/(L M) + c^2/D (paper form: A D/(M L) + B/D + C/L^2 with
  A = b^2, B = c^2, C = a^2) and the output error by a^2/L^2 + b^2 (D/(L M))^2 + c^2/D;
- (b) leg 1, finite vs ``MeanODE`` (same D, W_e, W_u): power laws in L M, L M / D, M, L;
  leg 2, ``MeanODE`` vs ``LargeDLimit``: power law in D (theory: -1/2).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import figures
from .report import Section, verdict_note

FINITE_METRICS = ("embedding_error", "output_error", "ode_embedding_error", "ode_output_error")
GAP_METRICS = ("embedding_error", "output_error")


@dataclass
class LinearLimitAnalysis:
    step: int
    runs: pd.DataFrame  # one row per stored run of the spec
    agg: pd.DataFrame  # finite: one row per shape, RMS over included repetitions of each metric
    gap: pd.DataFrame  # limit-gap: one row per D
    fits: pd.DataFrame  # power-law fits beside theory
    additive: dict[str, Any] = field(default_factory=dict)  # name -> AdditiveFit
    power: dict[str, Any] = field(default_factory=dict)  # name -> PowerLawFit
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> status -> n
    diverged_late: int = 0  # finite runs diverged after the analysis step (still excluded)
    notes: list[str] = field(default_factory=list)


def run_table(kind, spec, store, metrics: tuple[str, ...] = FINITE_METRICS) -> pd.DataFrame:
    rows = []
    for rec in kind.records(spec, store):
        c = rec.config
        L, M, D = c["shape"] if c["role"] == "finite" else (0, 0, c["D"])
        row = {"key": rec.key, "role": c["role"], "L": L, "M": M, "D": D, "rep": c["rep"],
               "status": rec.status, "diverged_at": rec.metrics.get("diverged_at", -1)}
        for m in metrics:
            row[m] = rec.metrics.get(m)
        rows.append(row)
    return pd.DataFrame(rows, columns=["key", "role", "L", "M", "D", "rep", "status", "diverged_at",
                                       *metrics])


def _at(v, step: int) -> float:
    if not isinstance(v, list) or step >= len(v):
        return math.nan
    x = v[step]
    return math.nan if x is None else float(x)


def _matrix(runs: pd.DataFrame, role: str, metric: str, keys: list, reps: int, step: int) -> np.ndarray:
    """(n_keys, reps) errors at ``step``; NaN for diverged, failed or missing runs."""
    idx = {k: i for i, k in enumerate(keys)}
    out = np.full((len(keys), reps), np.nan)
    for r in runs[(runs["role"] == role) & (runs["status"] == "done")].itertuples(index=False):
        k = (r.L, r.M, r.D) if role == "finite" else r.D
        i = idx.get(k)
        if i is not None and r.rep < reps:
            out[i, r.rep] = _at(getattr(r, metric), step)
    return out


def _rms(m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        if not m.size:
            return np.zeros(m.shape[0])
        ok = np.isfinite(m).any(axis=1)
        out = np.full(m.shape[0], np.nan)
        out[ok] = np.sqrt(np.nanmean(m[ok] ** 2, axis=1))
        return out


class Fits:
    """Power-law and additive fits collected into an analysis (``power``, ``additive``, ``notes``)
    and into ``rows`` (the power-law table); a fit that cannot be made is a note, not an error."""

    def __init__(self, res, n_boot: int, seed: int) -> None:
        self.res, self.n_boot, self.seed = res, n_boot, seed
        self.rows: list[dict] = []

    def power(self, name, quantity, against, held, x, m, theory, **extra):
        from ... import measure

        x = np.asarray(x, dtype=float)
        if len(np.unique(x)) < 2 or not np.isfinite(m).any():
            return None
        try:
            f = measure.fit_power_law(x, m, n_boot=self.n_boot, seed=self.seed)
        except ValueError as err:
            self.res.notes.append(f"{quantity} vs {against}: no fit ({err})")
            return None
        self.res.power[name] = f
        lo, hi = f.exponent_ci
        self.rows.append({"quantity": quantity, "against": against, "held at": held, "exponent": f.exponent,
                          "CI low": lo, "CI high": hi, "theory": theory, "constant": f.constant,
                          "points": f.n_points, **extra})
        return f

    def additive(self, name, L, M, D, m, kind_):
        from ... import measure

        ok = np.isfinite(_rms(m)) & (_rms(m) > 0)
        if ok.sum() < 3:
            return None
        try:
            self.res.additive[name] = measure.fit_additive(L[ok], M[ok], D[ok], m[ok], kind=kind_,
                                                           n_boot=min(self.n_boot, 200), seed=self.seed)
        except ValueError as err:
            self.res.notes.append(f"{name} additive model: no fit ({err})")
            return None
        return self.res.additive[name]


def start_analysis(cls, kind, spec, store, step: int, metrics: tuple[str, ...] = FINITE_METRICS):
    """An empty analysis of class ``cls`` with the run table, status counts and late divergences."""
    runs = run_table(kind, spec, store, metrics)
    counts = {role: runs[runs["role"] == role]["status"].value_counts().to_dict() for role in spec.roles}
    res = cls(step, runs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), counts=counts)
    fin = runs[(runs["role"] == "finite") & (runs["status"] == "diverged")]
    res.diverged_late = int((fin["diverged_at"] > step).sum())
    return res


def analyse(kind, spec, store) -> LinearLimitAnalysis:
    step, R = spec.analysis.step, spec.repetitions
    res = start_analysis(LinearLimitAnalysis, kind, spec, store, step)
    runs = res.runs
    fits = Fits(res, spec.analysis.n_boot, spec.seed)
    power, additive = fits.power, fits.additive

    if "finite" in spec.roles:
        shapes = [s.as_tuple() for s in spec.grid.shapes()]
        agg = pd.DataFrame(shapes, columns=["L", "M", "D"])
        agg["P"] = agg["L"] * agg["M"] * agg["D"]
        mats = {m: _matrix(runs, "finite", m, shapes, R, step) for m in FINITE_METRICS}
        for m, v in mats.items():
            agg[m] = _rms(v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            agg["embedding_error_mean"] = np.nanmean(mats["embedding_error"], axis=1)
        agg["n"] = np.isfinite(mats["embedding_error"]).sum(axis=1)
        sub = runs[runs["role"] == "finite"]
        div = sub[sub["status"] == "diverged"].groupby(["L", "M", "D"]).size()
        agg["n_diverged"] = [int(div.get(s, 0)) for s in shapes]
        res.agg = agg
        L, M, D = (agg[a].to_numpy() for a in ("L", "M", "D"))
        Lm, Mm, Dm = L.max(), M.max(), D.max()
        additive("embedding", L, M, D, mats["embedding_error"], "embedding")
        additive("output", L, M, D, mats["output_error"], "output")
        additive("leg1-embedding", L, M, D, mats["ode_embedding_error"], "embedding")
        e, o = mats["embedding_error"], mats["output_error"]
        oe, oo = mats["ode_embedding_error"], mats["ode_output_error"]
        sel = {"M": (L == Lm) & (D == Dm), "D": (L == Lm) & (M == Mm), "L": (M == Mm) & (D == Dm)}
        held = {"M": f"L={Lm}, D={Dm}", "D": f"L={Lm}, M={Mm}", "L": f"M={Mm}, D={Dm}"}
        axes = {"M": M, "D": D, "L": L}
        for ax, theory in (("M", -0.5), ("D", -0.5), ("L", -0.5)):
            power(f"embedding-{ax}", "(a) embedding vs large-D", ax, held[ax], axes[ax][sel[ax]], e[sel[ax]],
                  theory)
        for ax, theory in (("M", -1.0), ("D", -0.5), ("L", -1.0)):
            power(f"output-{ax}", "(a) output vs large-D", ax, held[ax], axes[ax][sel[ax]], o[sel[ax]],
                  theory)
        atD = D == Dm
        power("leg1-LM", "(b) leg 1 embedding: finite vs MeanODE", "L*M", f"D={Dm}, all L, M",
              (L * M)[atD], oe[atD], -0.5)
        power("leg1-LM/D", "(b) leg 1 embedding: finite vs MeanODE", "L*M/D", "all shapes", L * M / D, oe,
              -0.5)
        power("leg1-M", "(b) leg 1 embedding: finite vs MeanODE", "M", held["M"], M[sel["M"]], oe[sel["M"]],
              -0.5)
        power("leg1-L", "(b) leg 1 embedding: finite vs MeanODE", "L", held["L"], L[sel["L"]], oe[sel["L"]],
              -0.5)
        power("leg1-out-LM", "(b) leg 1 output: finite vs MeanODE", "L*M", f"D={Dm}, all L, M",
              (L * M)[atD], oo[atD], -1.0)
    if "limit-gap" in spec.roles:
        Ds = spec.limit_D
        gap = pd.DataFrame({"D": Ds})
        gm = {m: _matrix(runs, "limit-gap", m, Ds, R, step) for m in GAP_METRICS}
        for m, v in gm.items():
            gap[m] = _rms(v)
        gap["n"] = np.isfinite(gm["embedding_error"]).sum(axis=1)
        res.gap = gap
        power("leg2-embedding", "(b) leg 2 embedding: MeanODE vs large-D", "D", "L, M = oo", np.array(Ds),
              gm["embedding_error"], -0.5)
        power("leg2-output", "(b) leg 2 output: MeanODE vs large-D", "D", "L, M = oo", np.array(Ds),
              gm["output_error"], -0.5)
    res.fits = pd.DataFrame(fits.rows)
    return res


def paper_form(fit, kind: str) -> dict[str, float]:
    """The additive fit in the paper's parameterisation (squared coefficients)."""
    c = fit.coefficients
    if kind == "output":
        return {"(D/(LM))^2": c["b"] ** 2, "1/D": c["c"] ** 2, "1/L^2": c["a"] ** 2}
    return {"D/(LM)": c["b"] ** 2, "1/D": c["c"] ** 2, "1/L^2": c["a"] ** 2}


def _paper_formula(fit, kind: str) -> str:
    pf = paper_form(fit, kind)
    return " + ".join(f"{v:.4g} {k}" if not k.startswith("1/") else f"{v:.4g}/{k[2:]}" for k, v in pf.items())


def summary_lines(res: LinearLimitAnalysis) -> list[str]:
    lines = [f"linear-limit at GD step k={res.step} (RMS over repetitions):"]
    for name, kind in (("embedding", "embedding"), ("output", "output")):
        f = res.additive.get(name)
        if f is not None:
            c = f.coefficients
            lines.append(f"  (a) {name}: err^2 = {_paper_formula(f, kind)}   "
                         f"[fit_additive a={c['a']:.3g} b={c['b']:.3g} c={c['c']:.3g}]")
    lines.append("      paper: err^2 = 0.673 D/(ML) + 0.437/D;  output 0.0265 (D/(ML))^2 + 0.25/D")
    for r in res.fits.to_dict("records"):
        if r["quantity"].startswith("(b)"):
            lines.append(f"  {r['quantity']} vs {r['against']} ({r['held at']}): {r['exponent']:+.3f} "
                         f"[{r['CI low']:+.3f}, {r['CI high']:+.3f}] (theory {r['theory']:+.2f}; "
                         f"{verdict_note(r['theory'], r['CI low'], r['CI high'])})")
    for role, c in res.counts.items():
        n_div, n_fail = c.get("diverged", 0), c.get("failed", 0)
        if n_div or n_fail:
            lines.append(f"  {role}: {n_div} diverged and {n_fail} failed runs excluded from the fits")
    return lines


def sections(kind, spec, store, res: LinearLimitAnalysis, fig_dir) -> list[Section]:
    out = []
    s = res.step
    a = Section("(a) The paper's linear experiment against the large-D limit", [
        f"Metric at GD step k = {s}: max over layers l of the mean over coordinates d and samples of "
        "|h_{l,d} - H_d(s_l)|, H_d the large-D single site driven by the same rows of W_e, W_u "
        "(coupled: per repetition one draw at the largest D, a network of dimension D uses its first D "
        "rows). Output error: RMS over samples and outputs of y_k - f_k. Aggregate over repetitions: "
        "RMS of the per-repetition errors (the paper averaged them; `embedding_error_mean` in the "
        "table is the plain mean). Diverged runs are excluded, never set to zero.",
        "fit_additive(kind='embedding') fits err^2 = a^2/L^2 + b^2 D/(L M) + c^2/D; the paper writes "
        "err^2 = A D/(M L) + B/D + C/L^2, so A = b^2, B = c^2, C = a^2 (output: (D/(LM))^2 in place of "
        "D/(LM)). Published (docs/theory.md §3.2, 65 runs): err^2 = 0.673 D/(ML) + 0.437/D; output "
        "0.0265 (D/(ML))^2 + 0.25/D.", *res.notes])
    rows = []
    for name, kind_ in (("embedding", "embedding"), ("output", "output"),
                        ("leg1-embedding", "embedding")):
        f = res.additive.get(name)
        if f is None:
            continue
        pf = paper_form(f, kind_)
        pub = {"embedding": {"D/(LM)": 0.673, "1/D": 0.437, "1/L^2": 0.0},
               "output": {"(D/(LM))^2": 0.0265, "1/D": 0.25, "1/L^2": math.nan}}.get(name, {})
        for (coef, term), (pterm, pval) in zip(zip(("b", "c", "a"), (f.terms[1], f.terms[2], f.terms[0]),
                                                   strict=True), pf.items(), strict=True):
            lo, hi = f.coefficient_ci[coef]
            rows.append({"error": name, "fit_additive term": term, "coefficient": coef,
                         "fitted": f.coefficients[coef], "CI low": lo, "CI high": hi,
                         "paper term": pterm, "paper-form value": pval,
                         "paper-form CI": (f"[{max(lo, 0) ** 2:.3g}, {hi ** 2:.3g}]"
                                           if np.isfinite(lo) else ""),
                         "published": pub.get(pterm, math.nan)})
    if rows:
        a.tables.append(("Additive models in both parameterisations (leg1-embedding: finite vs MeanODE, "
                         "expected 1/D coefficient ~ 0)", pd.DataFrame(rows)))
    if len(res.fits):
        a.tables.append(("Power-law fits (95% bootstrap intervals over repetitions) beside theory",
                         res.fits))
    c = res.counts.get("finite", {})
    a.paragraphs.append(
        f"Finite runs: {c.get('done', 0)} done, {c.get('diverged', 0)} diverged (non-finite, or error above "
        f"{spec.analysis.divergence_threshold:g}; {res.diverged_late} of them only after step {s}), "
        f"{c.get('failed', 0)} failed. Limit-gap runs: {res.counts.get('limit-gap', {})}.")
    if len(res.agg):
        dv = res.agg[res.agg["n_diverged"] > 0][["L", "M", "D", "n_diverged"]]
        if len(dv):
            a.tables.append(("Shapes with diverged repetitions", dv.head(40)))
    out.append(a)

    b = Section("(b) The triangle, leg by leg", [
        "Leg 1: finite network vs MeanODE (L, M -> oo at the same D, same W_e, W_u), same metric; "
        "theory O(1/L + sqrt(D/(L M))). Leg 2: MeanODE vs the large-D limit (same rows), metric on the "
        f"depth grid i/S (S = {spec.limit.S}); theory O(D^-1/2). The leg-1 additive fit should put "
        "(almost) nothing on c^2/D."])
    if len(res.gap):
        b.tables.append(("Leg 2 errors per D (RMS over repetitions)", res.gap))
    out.append(b)

    figs = Section("(c) Figures")
    figs.figures.extend(_error_figures(spec, res, fig_dir))
    try:
        figs.figures.extend(coordinate_figures(kind, spec, store, fig_dir))
    except _NoDetail as err:
        figs.paragraphs.append(str(err))
    out.append(figs)
    return out


class _NoDetail(RuntimeError):
    pass


def _error_figures(spec, res: LinearLimitAnalysis, fig_dir) -> list:

    refs = []
    agg = res.agg
    if len(agg):
        Lm = agg["L"].max()
        for metric, name, model, ylabel in (
                ("embedding_error", "embedding", res.additive.get("embedding"), "max_l mean_d |h - H|"),
                ("output_error", "output", res.additive.get("output"), "output error |y - f|")):
            a = agg.assign(rms=agg[metric])
            for x, line in (("D", "M"), ("M", "D")):
                if agg[x].nunique() > 1:
                    refs.append(figures.save(
                        figures.error_vs_axis(a, x, line, {"L": Lm}, ylabel, model), fig_dir,
                        f"linear-limit-{name}-vs-{x}",
                        f"(a) {name} error vs {x} at step {res.step}, one line per {line} (L = {Lm}); "
                        "dashed: additive fit"))
        refs.append(figures.save(
            leg1_figure(agg, "ode_embedding_error", res.power.get("leg1-LM/D"), res.step,
                        "finite vs MeanODE: max_l mean_d |h - h^ODE|"), fig_dir, "linear-limit-leg1",
            "(b) leg 1: finite network vs MeanODE against L M / D"))
    if len(res.gap):
        refs.append(figures.save(leg2_figure(res.gap, res.power, res.step), fig_dir, "linear-limit-leg2",
                                 "(b) leg 2: MeanODE vs the large-D limit"))
    return refs


def leg1_figure(agg: pd.DataFrame, metric: str, fit, step: int, ylabel: str, stderr: str | None = None,
                ratio: float = 3.0):
    """Leg 1 errors of every shape against L M / D (colour: L), the power-law ``fit`` dashed, and
    the limit's standard error ``stderr`` (a column, x ``ratio``) as marks."""
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    d = agg[np.isfinite(agg[metric]) & (agg[metric] > 0)]
    x = d["L"] * d["M"] / d["D"]
    sc = ax.scatter(x, d[metric], c=np.log10(d["L"]), s=12, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 L")
    if stderr is not None and len(d):
        ax.scatter(x, ratio * d[stderr], marker="_", color="gray", s=30, label=f"{ratio:g} x limit's stderr")
    if fit is not None and len(x):
        xs = np.geomspace(x.min(), x.max(), 50)
        ax.plot(xs, fit.predict(xs), "k--", label=f"fit {fit.constant:.2g} (LM/D)^({fit.exponent:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("L M / D")
    ax.set_ylabel(ylabel)
    ax.set_title(f"(b) leg 1 at step {step}; theory 1/L + sqrt(D/(LM))", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def leg2_figure(g: pd.DataFrame, power: dict, step: int, metrics=(("embedding_error", "embedding"),
                                                                  ("output_error", "output")),
                stderr: dict[str, str] | None = None, ratio: float = 3.0):
    """Leg 2 errors against D with their fits (``power["leg2-<name>"]``), a D^-1/2 guide and,
    where given, the difference's standard error (column per metric, x ``ratio``) dotted."""
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    for (metric, name), marker in zip(metrics, "osd^", strict=False):
        ok = np.isfinite(g[metric]) & (g[metric] > 0)
        line, = ax.plot(g["D"][ok], g[metric][ok], marker + "-", ms=4, label=name)
        f = power.get(f"leg2-{name}")
        if f is not None:
            ax.plot(g["D"], f.predict(g["D"].to_numpy()), "--", lw=0.9, color=line.get_color(),
                    label=f"fit {f.constant:.2g} D^({f.exponent:.3f})")
        if stderr and metric in stderr:
            ax.plot(g["D"], ratio * g[stderr[metric]], ":", lw=0.9, color=line.get_color(),
                    label=f"{ratio:g} x stderr ({name})")
    Ds = g["D"].to_numpy(dtype=float)
    first = metrics[0][0]
    if len(Ds) and np.isfinite(g[first]).any():
        c0 = np.nanmax(g[first]) * np.sqrt(Ds[0])
        ax.plot(Ds, c0 / np.sqrt(Ds), ":", color="gray", label="D^-1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D")
    ax.set_ylabel("MeanODE vs large-D limit")
    ax.set_title(f"(b) leg 2 at step {step}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def _detail_runs(spec, store):
    shape = list(spec.figure_shape)
    recs = [r for r in store.records(kind="linear-limit", status="done")
            if r.config["role"] == "finite" and r.config["shape"] == shape and r.config.get("detail")]
    if not recs:
        raise _NoDetail(f"No finished run of the figure shape {tuple(shape)}: no coordinate figures.")
    return sorted(recs, key=lambda r: r.config["rep"])


def coordinate_figures(kind, spec, store, fig_dir) -> list:
    """Coordinate trajectories h_{l,d} vs l/L over the limit's H_d(s), and histograms of the
    coordinates of h_L against N(0, Gamma^H_kk(1)), at the steps ``figures.steps``."""
    recs = _detail_runs(spec, store)
    sol = kind.figure_solution(spec, recs[0].config)
    L, M, D = recs[0].config["shape"]
    steps = spec.figures.steps
    arr = store.arrays(recs[0].key, ["h_coords", "ode_coords", "z_coords"])
    h, ho, z = arr["h_coords"], arr["ode_coords"], arr["z_coords"]  # (K+1, L+1, N, n), (n, p)
    n = z.shape[0]
    s = np.linspace(0, 1, 201)
    H = np.einsum("kspn,dp->ksnd", sol.coef.at_depths("a", s)[:, 0], z)  # (K+1, 201, N, n)
    depth = np.arange(L + 1) / L
    refs = []
    fig, axes = figures.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    cmap = figures.colormap("plasma")
    for j in range(n):
        ax = axes[0, j]
        for i, k in enumerate(steps):
            col = cmap(i / max(len(steps) - 1, 1) * 0.85)
            ax.plot(s, H[k, :, 0, j], "-", color=col, lw=1.6, label=f"H_d limit, k={k}")
            ax.plot(depth, ho[k, :, 0, j], "--", color=col, lw=0.9, alpha=0.8,
                    label="MeanODE (same D)" if i == 0 else None)
            ax.plot(depth, h[k, :, 0, j], "o", color=col, ms=2.2, alpha=0.8,
                    label=f"finite h_l,d, k={k}")
        ax.set_xlabel("s = l / L")
        ax.set_title(f"coordinate d = {j}", fontsize=9)
        ax.grid(True, alpha=0.25)
    axes[0, 0].set_ylabel("h_{l,d}(x_1)")
    axes[0, -1].legend(fontsize=6.5)
    fig.suptitle(f"finite network (L, M, D) = ({L}, {M}, {D}), repetition {recs[0].config['rep']}: "
                 "dots finite, lines large-D single sites, dashed MeanODE", fontsize=9)
    refs.append(figures.save(fig, fig_dir, "linear-limit-trajectories",
                             f"(c) coordinate trajectories of a ({L}, {M}, {D}) network over H_d(s_l)"))
    # histograms: coordinates of h_L at step k (all done repetitions, first sample)
    vals = np.concatenate([store.arrays(r.key, ["h_last"])["h_last"][:, 0, :] for r in recs], axis=1)
    var = sol.variances()[0][:, -1, 0]  # Gamma^H_kk(1) for sample 1, (K+1,)
    fig, axes = figures.subplots(1, len(steps), figsize=(3.8 * len(steps), 3.3), squeeze=False)
    for i, k in enumerate(steps):
        ax = axes[0, i]
        v = vals[k][np.isfinite(vals[k])]
        ax.hist(v, bins=max(10, int(np.sqrt(v.size))), density=True, alpha=0.55, color="tab:blue",
                label=f"{v.size} coordinates")
        sd = math.sqrt(var[k])
        xs = np.linspace(-4 * sd, 4 * sd, 200)
        ax.plot(xs, np.exp(-xs**2 / (2 * var[k])) / math.sqrt(2 * math.pi * var[k]), "k-", lw=1.4,
                label=f"N(0, {var[k]:.3g})")
        ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xlabel("h_{L,d}(x_1)")
        ax.legend(fontsize=7)
    fig.suptitle(f"coordinates of h_L of ({L}, {M}, {D}) networks ({len(recs)} repetitions) vs the "
                 "density N(0, Gamma^H_kk(1))", fontsize=9)
    refs.append(figures.save(fig, fig_dir, "linear-limit-histograms",
                             "(c) histograms of h_L coordinates against N(0, Gamma^H_kk(1))"))
    return refs
