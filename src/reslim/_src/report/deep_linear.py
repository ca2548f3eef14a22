"""Analysis, figures and report sections of the ``deep-linear`` experiment kind
(docs/deep-linear.md): (a) |beta_N - beta_inf| against the width with fitted exponents, (b) the
law of the weights and neurons against the limit's Gaussian law and the rank of the weight
updates, (c) the limit's gradient flow converging exponentially to the min-norm solution."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import figures
from .report import Section, verdict_note

#: mean of the Kolmogorov-Smirnov statistic of n exact Gaussian samples is about this / sqrt(n)
KS_NULL = 0.8687


@dataclass
class DeepLinearAnalysis:
    width: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (L, N): error at each step
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (L, step): exponent in N
    law: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (L, step): KS distances, ranks
    flow: pd.DataFrame = field(default_factory=pd.DataFrame)  # per L: rate, final distance
    curves: dict = field(default_factory=dict)  # L -> (t, distance)
    qq: dict = field(default_factory=dict)  # (L, name) -> quantiles (R, 199)
    counts: dict = field(default_factory=dict)


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def analyse(kind, spec, store) -> DeepLinearAnalysis:
    from ... import measure

    res = DeepLinearAnalysis()
    recs = kind.records(spec, store)
    for r in recs:
        res.counts.setdefault(r.config["role"], {}).setdefault(r.status, 0)
        res.counts[r.config["role"]][r.status] += 1
    ok = [r for r in recs if r.status == "done"]
    fin = [r for r in ok if r.config["role"] == "finite"]
    if fin:
        rows, fits = [], []
        for L in spec.L:
            mats = {}
            for N in spec.N:
                errs = [_arr(r.metrics["beta_error"]) for r in fin
                        if r.config["L"] == L and r.config["N"] == N]
                mats[N] = np.array(errs) if errs else np.full((0, spec.train.steps + 1), np.nan)
                row = {"L": L, "N": N, "n": len(errs)}
                for s in spec.analysis.steps:
                    row[f"error k={s}"] = float(np.sqrt(np.nanmean(mats[N][:, s] ** 2))) if errs else math.nan
                rows.append(row)
            Ns = [N for N in spec.N if len(mats[N])]
            R = min((len(mats[N]) for N in Ns), default=0)
            for s in spec.analysis.steps:
                if len(Ns) < 2 or R < 1:
                    continue
                e = np.array([mats[N][:R, s] for N in Ns])
                try:
                    f = measure.fit_power_law(np.array(Ns), e, n_boot=spec.analysis.n_boot, seed=spec.seed)
                except ValueError:
                    continue
                fits.append({"L": L, "step": s, "exponent": f.exponent, "CI low": f.exponent_ci[0],
                             "CI high": f.exponent_ci[1], "constant": f.constant, "points": f.n_points,
                             "theory": "-1/2"})
        res.width, res.fits = pd.DataFrame(rows), pd.DataFrame(fits)
    law = [r for r in ok if r.config["role"] == "law"]
    if law:
        rows = []
        for L in spec.L:
            mine = [r for r in law if r.config["L"] == L]
            if not mine:
                continue
            steps = mine[0].metrics["steps"]
            n = mine[0].metrics["samples"]
            for j, t in enumerate(steps):
                row = {"L": L, "N": mine[0].config["N"], "step": t}
                for name, key in (("ks_first", "first"), ("ks_readout", "readout"), ("ks_hidden", "hidden")):
                    row[f"KS {key}"] = float(np.nanmean([_arr(r.metrics[name])[j] for r in mine]))
                    row[f"KS {key} null"] = KS_NULL / math.sqrt(n[key])
                ranks = np.array([r.metrics["rank"][j] for r in mine])  # (R, L)
                row["rank"] = "/".join(str(int(v)) for v in ranks.max(axis=0))
                rows.append(row)
            arrays = [store.arrays(r.key) for r in mine]
            for name in ("qq_first", "qq_hidden"):
                res.qq[(L, name)] = np.array([a[name] for a in arrays if name in a])
        res.law = pd.DataFrame(rows)
    flow = [r for r in recs if r.config["role"] == "flow" and r.status in ("done", "diverged")]
    if flow:
        rows = []
        for r in sorted(flow, key=lambda r: r.config["L"]):
            d = _arr(r.metrics["distance"])
            t = np.arange(d.size) * r.config["flow"]["dt"]
            res.curves[r.config["L"]] = (t, d)
            rate, lo, hi, pts = exponential_rate(t, d)
            rows.append({"L": r.config["L"], "rate": rate, "CI low": lo, "CI high": hi, "points": pts,
                         "distance t=0": d[0], "distance end": d[-1], "rowspan max": r.metrics["rowspan"],
                         "basis dims": "/".join(str(v) for v in r.metrics["dims"])})
        res.flow = pd.DataFrame(rows)
    return res


def exponential_rate(t: np.ndarray, d: np.ndarray) -> tuple[float, float, float, int]:
    """Fit ``log d = a - rate t`` on the points below half the initial distance and above 1e-11
    (rounding); rate with its 95% t-interval, and the number of points."""
    from scipy import stats

    use = np.isfinite(d) & (d > 1e-11) & (d < 0.5 * d[0])
    if use.sum() < 3:
        return math.nan, math.nan, math.nan, int(use.sum())
    fit = stats.linregress(t[use], np.log(d[use]))
    q = stats.t.ppf(0.975, use.sum() - 2) * fit.stderr
    return -fit.slope, -fit.slope - q, -fit.slope + q, int(use.sum())


def summary_lines(res: DeepLinearAnalysis) -> list[str]:
    lines = ["deep-linear: finite deep linear networks vs their infinite-width limit"]
    for r in res.fits.to_dict("records"):
        lines.append(f"  |beta_N - beta_inf| vs N (L={r['L']}, step {r['step']}): {r['exponent']:+.3f} "
                     f"[{r['CI low']:+.3f}, {r['CI high']:+.3f}] (theory -1/2; "
                     f"{verdict_note(-0.5, r['CI low'], r['CI high'])})")
    if len(res.law):
        last = res.law.groupby("L").tail(1)
        for r in last.to_dict("records"):
            lines.append(f"  law at N={r['N']}, L={r['L']}, step {r['step']}: KS W^1 {r['KS first']:.4f}, "
                         f"KS h^(L-1) {r['KS hidden']:.4f} (Gaussian sample: {r['KS first null']:.4f}, "
                         f"{r['KS hidden null']:.4f}); rank of W^l(t) - W^l(0): {r['rank']}")
    for r in res.flow.to_dict("records"):
        lines.append(f"  flow L={r['L']}: |beta_inf(t) - beta*| ~ exp(-{r['rate']:.4f} t) "
                     f"[{r['CI low']:.4f}, {r['CI high']:.4f}], final {r['distance end']:.2e}")
    return lines


def sections(kind, spec, store, res: DeepLinearAnalysis, fig_dir) -> list[Section]:
    dd, tr = spec.data, spec.train
    intro = Section("Deep linear networks at infinite width", [
        f"Data: X (P = {dd.P}, d = {dd.d}) i.i.d. N(0, 1), Y = X beta_T + {dd.noise:g} noise (k = {dd.k}); "
        f"full-batch GD with eta = {tr.lr:g}, gamma_0 = {tr.gamma0:g}, K = {tr.steps} steps, float64. "
        "The limit is the finite-dimensional recursion of docs/deep-linear.md (Chizat, Colombo, "
        "Fernández-Real, Figalli, arXiv 2211.16980; scaling of docs/theory.md §6).",
        f"Runs: {res.counts}."])
    out = [intro]
    a = Section("(a) Width: |beta_N(t) - beta_inf(t)|", [
        "RMS over the entries of beta and over repetitions; exponents by log-log least squares with "
        "95% bootstrap intervals over repetitions (reslim.measure.fit_power_law)."])
    if len(res.fits):
        a.tables.append(("Fitted exponent in N", res.fits))
    if len(res.width):
        a.tables.append(("Errors per (L, N)", res.width))
        a.figures.append(_width_figure(spec, res, fig_dir))
    out.append(a)
    if len(res.law):
        b = Section("(b) The law of the weights and the rank of their updates", [
            f"At N = {spec.law.N}: Kolmogorov-Smirnov distance of the standardised entries of W^1 (each "
            "column by the limit's std), of W^L, and of the neuron coordinates h^{L-1}_i(x_mu), "
            "against N(0, 1), mean over repetitions; `null` is the expected KS distance of as many exact "
            "Gaussian samples. `rank`: numerical rank of W^l(t) - W^l(0) for l = 1..L (max over "
            "repetitions)."])
        b.tables.append(("KS distances and ranks", res.law))
        b.figures.extend(_law_figures(spec, res, fig_dir, kind.qq_probs))
        out.append(b)
    if len(res.flow):
        c = Section("(c) Gradient flow of the limit: exponential convergence to beta*", [
            f"Limit gradient flow (RK4, {spec.flow.substeps} steps per dt = {spec.flow.dt:g}); beta* = "
            "Y^T (X^T)^+ the min-l2-norm minimiser; rate from log-linear least squares on the points "
            "below half the initial distance and above 1e-11, with its 95% t-interval."])
        c.tables.append(("Exponential rates", res.flow))
        c.figures.append(_flow_figure(res, fig_dir))
        out.append(c)
    return out


def _width_figure(spec, res, fig_dir):
    s = max(spec.analysis.steps)
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    cmap = figures.colormap("viridis")
    for i, L in enumerate(spec.L):
        d = res.width[res.width["L"] == L]
        color = cmap(i / max(len(spec.L) - 1, 1))
        ax.plot(d["N"], d[f"error k={s}"], "o-", color=color, label=f"L={L}")
        f = res.fits[(res.fits["L"] == L) & (res.fits["step"] == s)] if len(res.fits) else []
        if len(f):
            f = f.iloc[0]
            ax.plot(d["N"], f["constant"] * d["N"] ** f["exponent"], "--", color=color, lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width N")
    ax.set_ylabel(f"RMS |beta_N - beta_inf| at step {s}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    return figures.save(fig, fig_dir, "deep-linear-width", f"|beta_N - beta_inf| at step {s} vs N; "
                        "dashed: fitted power laws")


def _law_figures(spec, res, fig_dir, qq_probs):
    from scipy.stats import norm

    refs = []
    fig, axes = figures.subplots(1, 2, figsize=(9, 4.2))
    theo = norm.ppf(qq_probs)
    panels = ((axes[0], "qq_first", "W^1 entries"), (axes[1], "qq_hidden", "h^{L-1} coordinates"))
    for ax, name, title in panels:
        for L in spec.L:
            q = res.qq.get((L, name))
            if q is not None and len(q):
                ax.plot(theo, q.mean(axis=0), ".", ms=3, label=f"L={L}")
        ax.plot(theo, theo, "k-", lw=0.8)
        ax.set_xlabel("N(0, 1) quantile")
        ax.set_ylabel("standardised finite quantile")
        ax.set_title(f"{title} at step {max(spec.law.steps)}", fontsize=9)
        ax.legend(fontsize=7)
    refs.append(figures.save(fig, fig_dir, "deep-linear-qq", f"QQ plots at N = {spec.law.N} against the "
                             "limit's Gaussian law (standardised by the limit's std)"))
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    for L in spec.L:
        d = res.law[res.law["L"] == L]
        if not len(d):
            continue
        ranks = np.array([[int(v) for v in s.split("/")] for s in d["rank"]])
        for i in range(ranks.shape[1]):
            ax.plot(d["step"], ranks[:, i], "o-", ms=3, label=f"L={L}, W^{i + 1}")
    t = np.array(spec.law.steps)
    ax.plot(t, np.minimum(t * spec.data.k, spec.data.d), "k:", lw=1, label="min(k t, d)")
    ax.set_xlabel("GD step t")
    ax.set_ylabel("numerical rank of W^l(t) - W^l(0)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, alpha=0.25)
    refs.append(figures.save(fig, fig_dir, "deep-linear-rank", "rank of the weight updates against t"))
    return refs


def _flow_figure(res, fig_dir):
    fig, ax = figures.subplots(figsize=(6.2, 4.4))
    for L, (t, d) in sorted(res.curves.items()):
        ax.semilogy(t, d, "-", label=f"L={L}")
        r = res.flow[res.flow["L"] == L].iloc[0]
        if math.isfinite(r["rate"]):
            use = np.isfinite(d) & (d > 1e-11) & (d < 0.5 * d[0])
            tt = t[use]
            c = np.exp(np.mean(np.log(d[use]) + r["rate"] * tt))
            ax.semilogy(tt, c * np.exp(-r["rate"] * tt), "k--", lw=0.8)
    ax.set_xlabel("time t")
    ax.set_ylabel("|beta_inf(t) - beta*|_F")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    return figures.save(fig, fig_dir, "deep-linear-flow", "limit gradient flow: distance to the min-norm "
                        "solution (log scale); dashed: fitted exponentials")
