"""Scaling laws from the Neural Feature Dynamics view (docs/nfd-scaling.md; Yao, Wu & Gao,
*Feature Learning Dynamics in Infinite-Depth Neural Networks*, arXiv 2512.21075).

For one training problem (:class:`reslim.limits.nfd.NFDProblem`, a fixed number of steps ``K``):

- ``R_inf(L)``: the final training loss of the NFD solver on the depth grid ``L`` (the infinite-width
  network of depth ``L``), with its replica standard error ``s(L)``, in each coupling
  (:data:`LIMIT_OF`): ``"reused"``, with the reused-weight response terms (the limit of ordinary
  backprop networks), and ``"gia"``, the decoupled system (the limit of GIA-trained networks);
- ``R(L, D)``: the final training loss of finite one-layer-block depth-muP networks of depth ``L``
  and width ``D`` (``repetitions`` seeds; ordinary backprop and/or the GIA mode of issue 6).

Every finite-network quantity below compares a mode with *its own* limit (ordinary with
``reused``, GIA with ``gia``); the tables record which (column ``limit``). Fits (:func:`scaling_laws`):

- depth trend of each limit: ``R_inf(L) = R_NFD + a L^-p`` (weighted least squares with the
  ``s(L)``; 95% interval by a parametric bootstrap ``R_inf(L) + s(L) z``). ``a > 0``: the limit keeps
  improving with depth, by ever less (``p > 0``);
- finite-width error at every depth, noise-corrected (the limit's Monte Carlo variance and, for the
  bias, the seed mean's variance removed in quadrature): ``eps(L, D)``, the error of one network
  (``eps^2 = mean_seeds (R(L, D) - R_inf(L))^2 - s(L)^2``), and ``bias(L, D)``, the systematic error of
  the seed mean; each fitted ``~ b D^-q`` per depth and pooled over depths (RMS), 95% bootstrap
  over seeds; a cell whose corrected square is not positive is unresolved;
- crossover: doubling the depth at width ``D`` buys ``R_inf(L) - R_inf(2L)`` (the fitted
  ``a L^-p (1 - 2^-p)``); returns diminish once this falls below the finite-width error ``b D^-q``
  (eps or bias): ``L*(D) = ((1 - 2^-p) a / b)^(1/p) D^(q/p)``; measured: the first grid depth where
  the limit's doubling gain is below the cell's ``eps`` (or its ``|bias|``, when resolved: > 2 s.e.);
- compute: ``C = 6 P K L D^2`` (GD flops: forward 2, backward 4 per multiply-add of a block); the
  frontier (the cells whose seed-mean loss is below every cheaper cell's) and ``R - R_NFD ~ C^-r``
  along it (log-log least squares over the frontier points above R_NFD), against the two-term
  model's ``r = p q / (q + 2 p)`` (``a L^-p + b D^-q`` at ``L D^2 = C``, with eps's or the bias's q).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MODES = ("ordinary", "gia")
#: the NFDLimit coupling whose solution is the limit of each training mode (as the nfd kind's)
LIMIT_OF: dict[str, str] = {"ordinary": "reused", "gia": "gia"}


def compute_flops(problem, L: int, D: int) -> float:
    """Training flops of a depth-``L``, width-``D`` network: ``6 b K L D^2`` (``b`` samples a step)."""
    return 6.0 * problem.batch * problem.steps * L * D * D


def nfd_losses(
    problem,
    depths: Sequence[int],
    *,
    particles: int = 4096,
    replicas: int = 4,
    seed: int = 0,
    dtype: str = "float64",
    device: str = "cpu",
    coupling: str = "reused",
) -> pd.DataFrame:
    """One row per depth grid ``L`` of the limit in ``coupling`` (``"reused"``: the limit of ordinary
    networks, ``"gia"``: of GIA networks): ``loss_final``, ``loss_stderr``, ``loss0``, ``diverged``,
    ``seconds``."""
    from ..limits.nfd import NFDLimit

    rows = []
    for L in depths:
        t0 = time.perf_counter()
        tr = NFDLimit(
            L=int(L), particles=particles, replicas=replicas, seed=seed, dtype=dtype, device=device,
            coupling=coupling,
        ).solve(problem)
        rows.append(
            {
                "source": "nfd",
                "mode": "nfd",
                "coupling": coupling,
                "L": int(L),
                "width": math.inf,
                "seed": -1,
                "loss_final": float(tr.loss[-1, 0]),
                "loss_stderr": float(tr.meta["loss_stderr"][-1, 0]),
                "loss0": float(tr.loss[0, 0]),
                "diverged": bool(tr.diverged_at[0] >= 0),
                "compute": math.nan,
                "seconds": time.perf_counter() - t0,
            }
        )
    return pd.DataFrame(rows)


def finite_losses(
    problem,
    depths: Sequence[int],
    widths: Sequence[int],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    modes: Sequence[str] = ("ordinary",),
    dtype: str = "float64",
) -> pd.DataFrame:
    """One row per (mode, L, D, seed) of finite depth-muP networks trained as the ``problem`` says."""
    from ..limits.nfd import nfd_network_options
    from ..models.resnet import ResNet
    from ..training.data import Dataset
    from ..training.trainer import train

    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes must be among {', '.join(MODES)}, got {m!r}")
    opts = nfd_network_options(problem)
    data = Dataset(problem.X, problem.Y)
    rows = []
    for mode in modes:
        for L in depths:
            for D in widths:
                t0 = time.perf_counter()
                net = ResNet((int(L), int(D), int(D)), seeds=list(seeds), dtype=dtype, **opts["model"])
                tr = train(net, data, gia=mode == "gia", record=("loss",), **opts["train"])
                dt = (time.perf_counter() - t0) / len(seeds)
                for b, s in enumerate(seeds):
                    bad = bool(tr.diverged_at[b] >= 0)
                    rows.append(
                        {
                            "source": "finite",
                            "mode": mode,
                            "L": int(L),
                            "width": float(D),
                            "seed": int(s),
                            "loss_final": math.nan if bad else float(tr.loss[-1, b]),
                            "loss_stderr": math.nan,
                            "loss0": float(tr.loss[0, b]),
                            "diverged": bad,
                            "compute": compute_flops(problem, int(L), int(D)),
                            "seconds": dt,
                        }
                    )
    return pd.DataFrame(rows)


def nfd_scaling(
    problem,
    *,
    depths: Sequence[int] = (1, 2, 4, 8, 16, 32),
    widths: Sequence[int] = (32, 64, 128, 256),
    seeds: Sequence[int] = (0, 1, 2, 3),
    modes: Sequence[str] = ("ordinary", "gia"),
    particles: int = 4096,
    replicas: int = 4,
    seed: int = 0,
    dtype: str = "float64",
) -> pd.DataFrame:
    """The table :func:`scaling_laws` reads: NFD rows (``width = inf``) of the limit of every mode
    (:data:`LIMIT_OF`: ``coupling="reused"`` for ordinary networks, ``"gia"`` for GIA networks) and
    finite rows."""
    lims = [
        nfd_losses(
            problem, depths, particles=particles, replicas=replicas, seed=seed, dtype=dtype,
            coupling=LIMIT_OF[m],
        )
        for m in MODES
        if m in modes
    ]
    return pd.concat(
        [*lims, finite_losses(problem, depths, widths, seeds=seeds, modes=modes, dtype=dtype)],
        ignore_index=True,
    )


# ------------------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class DepthFit:
    """``R_inf(L) = R_NFD + a L^-p``; intervals (95%) from the parametric bootstrap."""

    R_nfd: float
    a: float
    p: float
    R_nfd_ci: tuple[float, float]
    a_ci: tuple[float, float]
    p_ci: tuple[float, float]
    chi2_per_dof: float
    n_points: int

    def predict(self, L) -> np.ndarray:
        return self.R_nfd + self.a * np.asarray(L, dtype=float) ** (-self.p)


def _depth_model(L, R, a, p):
    return R + a * L ** (-p)


def fit_depth_trend(
    L: Sequence[float], R: Sequence[float], se: Sequence[float], n_boot: int = 500, seed: int = 0
) -> DepthFit:
    """Weighted fit of ``R = R_NFD + a L^-p`` (``p`` in [0.05, 4]); NaN rows dropped."""
    from scipy.optimize import curve_fit

    Lv, Rv, sev = (np.asarray(v, dtype=float) for v in (L, R, se))
    ok = np.isfinite(Rv) & np.isfinite(Lv) & (Lv > 0)
    Lv, Rv = Lv[ok], Rv[ok]
    sev = np.where(
        np.isfinite(sev[ok]) & (sev[ok] > 0), sev[ok],
        np.nanmax(sev[ok]) if np.isfinite(sev[ok]).any() else 1.0,
    )
    if Lv.size < 4:
        raise ValueError("need the limit at four or more depths to fit R_NFD + a L^-p")
    lo, hi = (-np.inf, -np.inf, 0.05), (np.inf, np.inf, 4.0)

    def fit(y):
        p0 = (float(y[-1]), float(y[0] - y[-1]), 1.0)
        try:
            th, _ = curve_fit(
                _depth_model, Lv, y, p0=p0, sigma=sev, absolute_sigma=True, bounds=(lo, hi), maxfev=20000
            )
        except (RuntimeError, ValueError):
            return None
        return th

    th = fit(Rv)
    if th is None:
        raise ValueError("the depth-trend fit did not converge")
    chi2 = float(np.sum(((Rv - _depth_model(Lv, *th)) / sev) ** 2) / max(Lv.size - 3, 1))
    rng = np.random.default_rng(seed)
    fits = (fit(Rv + sev * rng.standard_normal(Rv.size)) for _ in range(n_boot))
    boots = [b for b in fits if b is not None]
    if boots:
        B = np.array(boots)
        ci: list[tuple[float, float]] = []
        for j in range(3):
            q_lo, q_hi = np.percentile(B[:, j], [2.5, 97.5])
            ci.append((float(q_lo), float(q_hi)))
    else:
        ci = [(math.nan, math.nan)] * 3
    return DepthFit(float(th[0]), float(th[1]), float(th[2]), ci[0], ci[1], ci[2], chi2, int(Lv.size))


@dataclass(frozen=True)
class ScalingLaws:
    """Everything :func:`scaling_laws` measures (tables are DataFrames; see the module docstring).
    ``limit`` and ``depth_fits`` are per coupling of the limit; every finite-network table has a
    ``limit`` column: the coupling the mode was compared with (:data:`LIMIT_OF`)."""

    limit: pd.DataFrame  # coupling, L, loss_final, loss_stderr, gain (R(L) - R(2L)), gain_se
    depth_fits: dict[str, DepthFit | None]  # coupling -> R_inf(L) = R_NFD + a L^-p
    cells: pd.DataFrame  # mode, limit, L, width, mean, eps, bias, bias_se, n, compute
    width_errors: pd.DataFrame  # mode, limit, width, eps, bias (pooled over depths, noise-corrected)
    width_fits: pd.DataFrame  # mode, limit, L ('all': pooled), metric (eps|bias), exponent, CI
    crossover: pd.DataFrame  # mode, limit, width, L_star_{eps,bias}_{model,measured}
    frontier: pd.DataFrame  # mode, limit, compute, L, width, mean
    compute_fits: pd.DataFrame  # mode, limit, exponent r, ci, predicted r
    notes: list[str] = field(default_factory=list)

    def depth_fit_of(self, mode: str) -> DepthFit | None:
        """The depth-trend fit of the limit ``mode``'s networks are compared with."""
        return self.depth_fits.get(LIMIT_OF.get(mode, ""), self.depth_fits.get("given"))


def _limit_table(nfd: pd.DataFrame) -> pd.DataFrame:
    t = nfd.groupby("L")[["loss_final", "loss_stderr"]].mean().sort_index().reset_index()
    R = dict(zip(t["L"], t["loss_final"], strict=True))
    S = dict(zip(t["L"], t["loss_stderr"], strict=True))
    t["gain"] = [R[L] - R[2 * L] if 2 * L in R else math.nan for L in t["L"]]
    t["gain_se"] = [math.hypot(S[L], S[2 * L]) if 2 * L in S else math.nan for L in t["L"]]
    return t


def _width_errors(d: np.ndarray, s2: np.ndarray, which: str) -> np.ndarray:
    """Per width, from ``d (n_L, n_D, n_seed)`` = R(L, D) - R_inf(L) and the limit's squared standard
    errors ``s2 (n_L,)``, noise-corrected: ``eps^2 = mean_{L, seed} d^2 - s2`` (one network's error)
    or ``bias^2 = mean_L [(mean_seed d)^2 - var_seed(d) / n - s2]`` (the seed mean's systematic error);
    NaN where the corrected square is not positive (unresolved)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if which == "eps":
            e2 = np.nanmean(d**2 - s2[:, None, None], axis=(0, 2))
        else:
            n = np.sum(np.isfinite(d), axis=2)
            b2 = np.nanmean(d, axis=2) ** 2 - np.nanvar(d, axis=2, ddof=1) / n - s2[:, None]
            e2 = np.nanmean(b2, axis=0)
        return np.sqrt(np.where(e2 > 0, e2, np.nan))


def _width_fit(D: np.ndarray, d: np.ndarray, s2: np.ndarray, which: str, n_boot: int, seed: int = 0) -> dict:
    """``err(D) ~ C D^p`` of :func:`_width_errors` (log-log least squares over the resolved widths);
    95% interval by the bootstrap over seeds."""

    def slope(e):
        ok = np.isfinite(e) & (e > 0)
        if ok.sum() < 2:
            return math.nan, math.nan
        b, a = np.polyfit(np.log(D[ok]), np.log(e[ok]), 1)
        return float(b), float(math.exp(a))

    e = _width_errors(d, s2, which)
    p, c = slope(e)
    lo = hi = math.nan
    if n_boot and d.shape[2] >= 2:
        rng = np.random.default_rng(seed)
        draws = [
            slope(_width_errors(d[:, :, rng.integers(0, d.shape[2], d.shape[2])], s2, which))[0]
            for _ in range(n_boot)
        ]
        bs = np.array([b for b in draws if math.isfinite(b)])
        if bs.size:
            lo, hi = (float(v) for v in np.percentile(bs, [2.5, 97.5]))
    return {
        "exponent": p,
        "ci_low": lo,
        "ci_high": hi,
        "constant": c,
        "n_points": int(np.isfinite(e).sum()),
    }


def scaling_laws(df: pd.DataFrame, n_boot: int = 500) -> ScalingLaws:
    """Fits of the module docstring from a :func:`nfd_scaling` table. The limit rows carry their
    ``coupling``; each finite mode is compared with the limit of its coupling (:data:`LIMIT_OF`). A
    table whose limit rows have no ``coupling`` column serves them as the limit of every mode
    (coupling ``"given"``)."""
    from ..measure.fits import fit_power_law

    nfd = df[df["source"] == "nfd"]
    if "coupling" not in nfd.columns or not nfd["coupling"].astype(bool).any():
        nfd = nfd.assign(coupling="given")
    fin = df[df["source"] == "finite"]
    notes: list[str] = []
    limits: dict[str, pd.DataFrame] = {}
    depth_fits: dict[str, DepthFit | None] = {}
    for coupling, g in nfd.groupby("coupling", sort=False):
        cp = str(coupling)
        limits[cp] = _limit_table(g)
        try:
            depth_fits[cp] = fit_depth_trend(
                limits[cp]["L"], limits[cp]["loss_final"], limits[cp]["loss_stderr"], n_boot=n_boot
            )
        except ValueError as err:
            depth_fits[cp] = None
            notes.append(f"depth trend of the {cp} limit not fitted: {err}")
    limit = (
        pd.concat([t.assign(coupling=c) for c, t in limits.items()], ignore_index=True)[
            ["coupling", "L", "loss_final", "loss_stderr", "gain", "gain_se"]
        ]
        if limits
        else pd.DataFrame()
    )

    cells, werr, wf, cross, front, cfits = [], [], [], [], [], []
    order = {m: k for k, m in enumerate(MODES)}
    for mode, g in sorted(fin.groupby("mode", sort=False), key=lambda kv: order.get(str(kv[0]), len(order))):
        cp = LIMIT_OF.get(str(mode), "")
        cp = cp if cp in limits else ("given" if "given" in limits else cp)
        if cp not in limits:
            notes.append(f"{mode} networks: no limit in coupling {cp!r} in the table; not compared")
            continue
        lim, depth_fit = limits[cp], depth_fits[cp]
        Rinf = dict(zip(lim["L"], lim["loss_final"], strict=True))
        Sinf = dict(zip(lim["L"], lim["loss_stderr"], strict=True))
        head = {"mode": mode, "limit": cp}
        cm_rows = []
        for (L, D), c in g.groupby(["L", "width"]):
            if L not in Rinf:
                continue
            d = c["loss_final"].to_numpy(float) - Rinf[L]
            n = int(np.isfinite(d).sum())
            s_inf = Sinf[L] if np.isfinite(Sinf[L]) else 0.0
            se = math.sqrt((np.nanvar(d, ddof=1) / n if n > 1 else math.nan) + s_inf**2)
            cm_rows.append(
                {
                    **head,
                    "L": int(L),
                    "width": float(D),
                    "mean": float(np.nanmean(c["loss_final"])),
                    "eps": float(np.sqrt(np.nanmean(d**2))),
                    "bias": float(np.nanmean(d)),
                    "bias_se": se,
                    "n": n,
                    "n_diverged": int(c["diverged"].sum()),
                    "compute": float(c["compute"].iloc[0]),
                }
            )
        cells += cm_rows
        cm = pd.DataFrame(cm_rows)
        if cm.empty:
            continue
        # width fits (eps and |bias|) per depth and pooled over depths
        Ls = sorted(int(v) for v in g["L"].unique() if v in Rinf)
        Ds = sorted(g["width"].unique())
        seeds = sorted(g["seed"].unique())
        d = np.full((len(Ls), len(Ds), len(seeds)), np.nan)
        for r in g.itertuples():
            if r.L in Rinf:
                d[Ls.index(r.L), Ds.index(r.width), seeds.index(r.seed)] = r.loss_final - Rinf[r.L]
        s2_all = np.array([Sinf[v] ** 2 if np.isfinite(Sinf[v]) else 0.0 for v in Ls])
        pooled = {w: _width_errors(d, s2_all, w) for w in ("eps", "bias")}
        werr += [
            {**head, "width": float(D), "eps": float(pooled["eps"][k]), "bias": float(pooled["bias"][k])}
            for k, D in enumerate(Ds)
        ]
        fitted = {}
        for which in ("eps", "bias"):
            for j, L in [*enumerate(Ls), (None, "all")]:
                arr = d if j is None else d[j : j + 1]
                s2 = s2_all if j is None else s2_all[j : j + 1]
                row = {
                    **head,
                    "L": L,
                    "metric": which,
                    **_width_fit(np.asarray(Ds, dtype=float), arr, s2, which, n_boot),
                }
                wf.append(row)
                if j is None:
                    fitted[which] = row
        # crossover per width: the doubling gain of the limit against each finite-width error
        gains = dict(zip(lim["L"], lim["gain"], strict=True))
        for D, gd in cm.groupby("width"):
            row = {**head, "width": float(D)}
            for which in ("eps", "bias"):
                errs = dict(zip(gd["L"], gd[which].abs(), strict=True))
                res = dict(zip(gd["L"], gd["bias_se"], strict=True))
                measured = math.nan
                for L in sorted(errs):
                    gain = gains.get(L, math.nan)
                    resolved = which == "eps" or errs[L] > 2 * res[L]
                    if np.isfinite(gain) and gain < errs[L] and resolved:
                        measured = float(L)
                        break
                model = math.nan
                fw = fitted[which]
                if (
                    depth_fit is not None
                    and math.isfinite(fw["exponent"])
                    and depth_fit.a > 0
                    and fw["constant"] > 0
                ):
                    p, q, b = depth_fit.p, -fw["exponent"], fw["constant"]
                    model = float(((1 - 2.0**-p) * depth_fit.a / b) ** (1 / p) * D ** (q / p))
                row[f"L_star_{which}_model"] = model
                row[f"L_star_{which}_measured"] = measured
            cross.append(row)
        # compute frontier
        cs = cm.sort_values(["compute", "mean"])
        best = math.inf
        pts = []
        for _, r in cs.iterrows():
            if r["mean"] < best:
                best = r["mean"]
                pts.append(r)
                front.append(
                    {**head, "compute": r["compute"], "L": r["L"], "width": r["width"], "mean": r["mean"]}
                )
        row = {**head, "n_points": len(pts), "n_above": 0}
        if depth_fit is not None and len(pts) >= 2:
            C = np.array([r["compute"] for r in pts])
            ex = np.array([r["mean"] for r in pts]) - depth_fit.R_nfd
            ok = ex > 0
            row["n_above"] = int(ok.sum())
            try:
                f = fit_power_law(C[ok], ex[ok], n_boot=0)
                row.update({"exponent": f.exponent, "ci_low": f.exponent_ci[0], "ci_high": f.exponent_ci[1]})
            except ValueError:
                row.update({"exponent": math.nan, "ci_low": math.nan, "ci_high": math.nan})
            for which in ("eps", "bias"):
                q, p = -fitted[which]["exponent"], depth_fit.p
                row[f"predicted_{which}"] = -(p * q / (q + 2 * p)) if math.isfinite(q) and q > 0 else math.nan
        cfits.append(row)
    return ScalingLaws(
        limit,
        depth_fits,
        pd.DataFrame(cells),
        pd.DataFrame(werr),
        pd.DataFrame(wf),
        pd.DataFrame(cross),
        pd.DataFrame(front),
        pd.DataFrame(cfits),
        notes,
    )


_LIMIT_STYLE = {"reused": ("k", "NFD reused (limit of ordinary)"), "gia": ("0.55", "NFD gia (limit of GIA)"),
                "given": ("k", "NFD limit")}


def plot_scaling(df: pd.DataFrame, laws: ScalingLaws, path=None):
    """Three panels: loss vs depth (each limit with its fit, the finite widths' seed means), the
    finite-width error vs width (pooled over depths: one network's ``eps`` and the seed mean's
    ``|bias|``, each against its mode's limit, with the fits), loss vs compute (every cell, the
    frontiers, each limit's ``R_NFD``). A Figure."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fin = laws.cells
    fig = Figure(figsize=(13.0, 4.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    lim = laws.limit
    for cp, g in (lim.groupby("coupling", sort=False) if len(lim) else []):
        color, label = _LIMIT_STYLE.get(str(cp), ("k", f"NFD {cp}"))
        ax1.errorbar(g["L"], g["loss_final"], yerr=1.96 * g["loss_stderr"], fmt="o-", color=color, ms=3,
                     lw=1.6, capsize=2, label=f"{label}, 95%")
        f = laws.depth_fits.get(str(cp))
        if f is not None:
            Ls = np.geomspace(g["L"].min(), g["L"].max(), 60)
            ax1.plot(Ls, f.predict(Ls), "--", color=color, lw=0.8,
                     label=f"fit ({cp}) {f.R_nfd:.4f} + {f.a:.4f} L^-{f.p:.2f}")
    modes = [m for m in ("ordinary", "gia") if len(fin) and m in set(fin["mode"])]
    ls = {"ordinary": "-", "gia": ":"}
    widths = sorted(fin["width"].unique()) if len(fin) else []
    cm = colormaps["viridis"]
    for i, D in enumerate(widths):
        wcolor = cm(0.85 * i / max(1, len(widths) - 1))
        for m in modes:
            g = fin[(fin["width"] == D) & (fin["mode"] == m)].sort_values("L")
            ax1.plot(g["L"], g["mean"], ls[m], marker="o", ms=2, lw=0.9, color=wcolor,
                     label=f"D={int(D)}" if m == modes[0] else None)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("depth L")
    ax1.set_ylabel("final training loss (networks: seed mean)")
    ax1.set_title("loss vs depth\n(networks: solid ordinary, dotted GIA)", fontsize=9)
    ax1.legend(fontsize=6.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    mk = {"ordinary": ("C0", "o"), "gia": ("C1", "s")}
    we = laws.width_errors
    for m in modes:
        color, marker = mk[m]
        g = we[we["mode"] == m].sort_values("width")
        cp = g["limit"].iloc[0] if len(g) else ""
        for which, style, mfc in (("eps", "-", color), ("bias", ":", "none")):
            x, y = g["width"].to_numpy(float), g[which].to_numpy(float)
            f = laws.width_fits
            f = f[(f["mode"] == m) & (f["L"] == "all") & (f["metric"] == which)]
            name = "one network eps" if which == "eps" else "seed-mean |bias|"
            lab = f"{m} vs {cp}: {name}"
            if len(f) and math.isfinite(f["exponent"].iloc[0]):
                r = f.iloc[0]
                lab += f", D^{r['exponent']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                ax2.plot(x, r["constant"] * x ** r["exponent"], "--", color=color, lw=0.6)
            ax2.plot(x, y, style, marker=marker, ms=4, mfc=mfc, color=color, label=lab)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("width D")
    ax2.set_ylabel("error against the own limit (RMS over depths)")
    ax2.set_title("finite-width error, noise-corrected\n(dashed: fitted power laws)", fontsize=9)
    ax2.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    for m in modes:
        color, marker = mk[m]
        g = fin[fin["mode"] == m]
        ax3.scatter(g["compute"], g["mean"], s=6, alpha=0.4, color=color, marker=marker, label=f"cells ({m})")
        if len(laws.frontier):
            fr = laws.frontier[laws.frontier["mode"] == m]
            ax3.plot(fr["compute"], fr["mean"], "-", lw=1.2, color=color, label=f"frontier ({m})")
    for cp, f in laws.depth_fits.items():
        if f is not None:
            color, _ = _LIMIT_STYLE.get(cp, ("k", ""))
            ax3.axhline(f.R_nfd, color=color, lw=0.8, ls="--", label=f"R_NFD ({cp} limit)")
    ax3.set_xscale("log")
    ax3.set_xlabel("training compute C = 6 b K L D^2 (flops)")
    ax3.set_ylabel("seed-mean final training loss")
    ax3.set_title("loss vs compute", fontsize=9)
    ax3.legend(fontsize=6.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90, bbox_inches="tight")
    return fig
