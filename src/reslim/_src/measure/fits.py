"""Rate fits with uncertainty: power laws and the additive error models of docs/theory.md §2.3, §3.1.

Errors come either as a 1-D aggregate ``(n,)`` or as per-repetition RMS errors ``(n, R)``. The
point estimate always uses the aggregate RMS over repetitions, ``sqrt(nanmean_r err[:, r]^2)``
(the RMS over repetitions of an RMS over equally many coordinates is the overall RMS). Confidence
intervals come from a bootstrap that resamples whole repetitions with replacement (the same
draw for every point, since a repetition shares its randomness across shapes), recomputes the
aggregate and refits; percentile intervals. NaN entries (diverged runs) are dropped, and
points whose aggregate is not finite and positive (e.g. the reference shape itself, error 0)
are left out of the fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

__all__ = ["ADDITIVE_TERMS", "BACKGROUNDS", "AdditiveFit", "PowerLawFit", "fit_additive", "fit_power_law",
           "fit_power_term"]


# ---------------------------------------------------------------------------- input handling
def _as_err(err: object, n: int | None, name: str = "err") -> np.ndarray:
    """``err`` as float (n, R) (R = 1 for a 1-D input); negative entries rejected."""
    e = np.asarray(err, dtype=np.float64)
    if e.ndim == 1:
        e = e[:, None]
    if e.ndim != 2:
        raise ValueError(f"{name}: expected shape (n_points,) or (n_points, n_reps), got {e.shape}")
    if n is not None and e.shape[0] != n:
        raise ValueError(f"{name}: has {e.shape[0]} points, expected {n}")
    if np.any(e[np.isfinite(e)] < 0):
        raise ValueError(f"{name}: errors must be non-negative")
    return e


def _as_positive(x: object, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if n is not None:
        try:
            a = np.broadcast_to(a, (n,))
        except ValueError:
            raise ValueError(f"{name}: shape {a.shape} does not match {n} points") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a) & (a > 0)):
        raise ValueError(f"{name}: values must be finite and positive")
    return a


def _aggregate(e2: np.ndarray) -> np.ndarray:
    """``sqrt(nanmean(e2, axis=-1))``, NaN where every entry is NaN (no warnings)."""
    ok = np.isfinite(e2)
    cnt = ok.sum(axis=-1)
    tot = np.where(ok, e2, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.sqrt(tot / np.maximum(cnt, 1)), np.nan)


def _check_boot(n_boot: int, ci: float) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot: must be a non-negative integer, got {n_boot!r}")
    if not (0.0 < float(ci) < 1.0):
        raise ValueError(f"ci: must be in (0, 1), got {ci!r}")
    return int(n_boot)


def _percentile_ci(samples: np.ndarray, ci: float, center: float | None = None,
                   n_reps: int = 0) -> tuple[float, float]:
    """Percentile interval of ``samples``; with ``center`` and ``n_reps >= 2`` widened about the
    point estimate by ``t_{R-1} / z * sqrt(R / (R - 1))`` (small-sample correction: the bootstrap
    over ``R`` repetitions underestimates the variance by ``(R - 1) / R`` and ignores that it is
    itself estimated from ``R`` draws)."""
    s = samples[np.isfinite(samples)]
    if s.size < 2:
        return (math.nan, math.nan)
    q = 100 * (1 - ci) / 2
    lo, hi = np.percentile(s, [q, 100 - q])
    if center is not None and n_reps >= 2:
        k = float(stats.t.ppf(0.5 + ci / 2, n_reps - 1) / stats.norm.ppf(0.5 + ci / 2))
        k *= math.sqrt(n_reps / (n_reps - 1))
        lo, hi = center + k * (lo - center), center + k * (hi - center)
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------- power laws
@dataclass(frozen=True)
class PowerLawFit:
    """``err ~ constant * x ** exponent`` (log-log least squares).

    ``exponent_ci``, ``constant_ci``: confidence intervals at level ``ci`` (bootstrap over
    repetitions for (n, R) errors with R >= 2, else the Student-t interval of the regression);
    ``n_points``: points used; ``log_residual_rms``: RMS of ``log err - log fit``.
    """

    exponent: float
    constant: float
    exponent_ci: tuple[float, float]
    constant_ci: tuple[float, float]
    n_points: int
    ci: float = 0.95
    method: str = "bootstrap"
    n_reps: int = 1
    log_residual_rms: float = math.nan
    background: dict[str, float] = field(default_factory=dict)  # fit_power_term: name -> theta
    floor: float = 0.0  # fit_power_term: the err^2 subtracted before fitting

    def predict(self, x: object) -> np.ndarray:
        """``constant * x ** exponent`` (for :func:`fit_power_term`: the power term alone)."""
        return self.constant * np.asarray(x, dtype=np.float64) ** self.exponent

    def model(self, x: object) -> np.ndarray:
        """The whole fitted error ``sqrt(floor + C^2 x^(2p) + sum_k theta_k g_k(x))``."""
        xa = np.asarray(x, dtype=np.float64)
        e2 = self.predict(xa) ** 2 + self.floor
        for name, th in self.background.items():
            e2 = e2 + th * BACKGROUNDS[name](xa)
        return np.sqrt(e2)


def _masked_loglog(lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of ``ly`` on ``lx`` along the last axis, NaN entries of
    ``ly`` ignored; NaN where fewer than two distinct ``x`` remain. ``lx (n,)``, ``ly (..., n)``."""
    m = np.isfinite(ly)
    w = m.astype(np.float64)
    cnt = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * lx).sum(axis=-1) / cnt
        y0 = np.where(m, ly, 0.0)
        my = y0.sum(axis=-1) / cnt
        dx = (lx - mx[..., None]) * w
        sxx = (dx * dx).sum(axis=-1)
        sxy = (dx * (y0 - my[..., None])).sum(axis=-1)
        slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 0, sxx, 1.0), np.nan)
        intercept = my - slope * mx
    return slope, intercept


def fit_power_law(
    x: object, err: object, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> PowerLawFit:
    """Fit ``err = C x^p`` by least squares of ``log err`` on ``log x``.

    ``x (n,)`` positive; ``err (n,)`` or ``(n, R)`` per-repetition RMS errors (NaN = diverged,
    dropped). Point estimate on the aggregate RMS over repetitions; CI by resampling the
    ``R`` repetitions ``n_boot`` times (percentile interval), or the t-interval if ``R == 1``.
    """
    n_boot = _check_boot(n_boot, ci)
    xa = _as_positive(x, "x")
    e = _as_err(err, xa.shape[0])
    e2 = e * e
    agg = _aggregate(e2)
    use = np.isfinite(agg) & (agg > 0)
    if np.unique(xa[use]).size < 2:
        raise ValueError("err: need finite positive errors at two or more distinct x")
    lx = np.log(xa)
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.where(use, np.log(agg), np.nan)
    slope_a, icpt_a = _masked_loglog(lx, ly)
    slope, icpt = float(slope_a), float(icpt_a)
    resid = ly[use] - (icpt + slope * lx[use])
    n_pts = int(use.sum())
    n_reps = int(e.shape[1])
    res_rms = float(np.sqrt(np.mean(resid**2)))
    if n_reps >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n_reps, size=(n_boot, n_reps))
        boot = _aggregate(e2[:, idx])  # (n, n_boot)
        with np.errstate(divide="ignore", invalid="ignore"):
            lb = np.where(np.isfinite(boot) & (boot > 0), np.log(boot), np.nan).T  # (n_boot, n)
        bs, bi = _masked_loglog(lx, lb)
        p_ci = _percentile_ci(bs, ci, slope, n_reps)
        c_lo, c_hi = _percentile_ci(bi, ci, icpt, n_reps)
        c_ci = (float(np.exp(c_lo)), float(np.exp(c_hi)))
        method = "bootstrap over repetitions"
    elif n_pts > 2:
        xs = lx[use]
        sxx = float(np.sum((xs - xs.mean()) ** 2))
        s2 = float(np.sum(resid**2)) / (n_pts - 2)
        t = float(stats.t.ppf(0.5 + ci / 2, n_pts - 2))
        se_p = math.sqrt(s2 / sxx)
        se_c = math.sqrt(s2 * (1 / n_pts + xs.mean() ** 2 / sxx))
        p_ci = (slope - t * se_p, slope + t * se_p)
        c_ci = (math.exp(icpt - t * se_c), math.exp(icpt + t * se_c))
        method = "t-interval"
    else:
        p_ci, c_ci, method = (math.nan, math.nan), (math.nan, math.nan), "none"
    return PowerLawFit(
        exponent=slope, constant=math.exp(icpt), exponent_ci=p_ci, constant_ci=c_ci,
        n_points=n_pts, ci=float(ci), method=method, n_reps=n_reps, log_residual_rms=res_rms,
    )


# ---------------------------------------------------------------------------- one term of several
#: background terms ``g(x)`` of :func:`fit_power_term` (their coefficients are fitted, >= 0)
BACKGROUNDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "constant": np.ones_like, "linear": lambda x: np.asarray(x, dtype=np.float64),
    "quadratic": lambda x: np.asarray(x, dtype=np.float64) ** 2}


def _floored(e2: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Aggregate ``mean_r (e2[:, r] - floor[r])`` over the repetitions present (NaN if none)."""
    ok = np.isfinite(e2) & np.isfinite(floor)
    cnt = ok.sum(axis=-1)
    tot = np.where(ok, e2 - floor, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _term_fit(x: np.ndarray, y: np.ndarray, bg: tuple[str, ...], bounds: tuple[float, float]):
    """``y = C^2 x^(2p) + sum_k th_k g_k(x)``: ``p`` by a bounded profile search, ``C^2, th >= 0``
    by quasi-likelihood NNLS at each ``p``. Returns ``(p, C^2, th, rms log residual)``."""
    def feats(p):
        return np.stack([x ** (2 * p)] + [BACKGROUNDS[b](x) for b in bg], axis=-1)

    p = float(optimize.minimize_scalar(lambda q: _fit_nonneg(feats(q), y)[1], bounds=bounds,
                                       method="bounded", options={"xatol": 1e-5}).x)
    th, res = _fit_nonneg(feats(p), y)
    return p, float(th[0]), th[1:], res


def fit_power_term(
    x: object,
    err: object,
    floor: object = 0.0,
    background: tuple[str, ...] | list[str] = ("constant",),
    bounds: tuple[float, float] = (-2.0, 0.0),
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> PowerLawFit:
    """The exponent of one term of an error that has others: fit
    ``err^2 - floor = C^2 x^(2p) + sum_k theta_k g_k(x)`` with ``C, theta >= 0``.

    Where the theory says ``err^2`` is a sum of terms (docs/theory.md §2.3), a plain log-log slope
    mixes them; this fits the exponent ``p`` of the term of interest with the others as
    non-negative ``background`` terms (:data:`BACKGROUNDS`: ``"constant"``, ``"linear"``,
    ``"quadratic"`` in ``x``) and a known ``floor`` removed first: a scalar, or per repetition
    ``(R,)`` (e.g. the error of a finite reference, measured by an independent twin of it),
    subtracted from each repetition's ``err^2`` so that the bootstrap resamples it with the rest.

    ``x (n,)`` positive; ``err (n,)`` or ``(n, R)`` per-repetition RMS errors. ``p`` is searched
    in ``bounds``; CIs by the bootstrap over repetitions (``R >= 2``), else none.
    """
    n_boot = _check_boot(n_boot, ci)
    bg = tuple(background)
    for b in bg:
        if b not in BACKGROUNDS:
            raise ValueError(f"background: unknown term {b!r}; choose from {', '.join(BACKGROUNDS)}")
    xa = _as_positive(x, "x")
    e = _as_err(err, xa.shape[0])
    n_reps = int(e.shape[1])
    fl = np.broadcast_to(np.asarray(floor, dtype=np.float64), (n_reps,))
    if not np.all(np.isfinite(fl) & (fl >= 0)):
        raise ValueError("floor: must be finite and non-negative")
    e2 = e * e
    y = _floored(e2, fl)
    use = np.isfinite(y) & (y > 0)
    if np.unique(xa[use]).size < 2 + len(bg):
        raise ValueError(f"err: need positive floor-corrected errors at {2 + len(bg)} or more distinct x")
    p, c2, th, res = _term_fit(xa[use], y[use], bg, bounds)
    p_ci = c_ci = (math.nan, math.nan)
    method = "none"
    if n_reps >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        ps, cs = [], []
        for _ in range(n_boot):
            idx = rng.integers(0, n_reps, size=n_reps)
            yb = _floored(e2[:, idx], fl[idx])
            u = np.isfinite(yb) & (yb > 0)
            if np.unique(xa[u]).size >= 2 + len(bg):
                pb, cb, _, _ = _term_fit(xa[u], yb[u], bg, bounds)
                ps.append(pb)
                cs.append(math.sqrt(cb))
        p_ci = _percentile_ci(np.array(ps), ci, p, n_reps)
        c_ci = _percentile_ci(np.array(cs), ci, math.sqrt(c2), n_reps)
        method = "bootstrap over repetitions"
    return PowerLawFit(
        exponent=p, constant=math.sqrt(c2), exponent_ci=p_ci, constant_ci=c_ci, n_points=int(use.sum()),
        ci=float(ci), method=method, n_reps=n_reps, log_residual_rms=res,
        background={b: float(t) for b, t in zip(bg, th, strict=True)}, floor=float(np.mean(fl)),
    )


# ---------------------------------------------------------------------------- additive models
ADDITIVE_TERMS: dict[str, tuple[str, str, str]] = {
    "embedding": ("a^2/L^2", "b^2 D/(L M)", "c^2/D"),
    "output": ("a^2/L^2", "b^2 (D/(L M))^2", "c^2/D"),
}


def _features(kind: str, L: np.ndarray, M: np.ndarray, D: np.ndarray) -> np.ndarray:
    """(n, 3) features whose non-negative combination is ``err^2``."""
    r = D / (L * M)
    mid = r if kind == "embedding" else r * r
    return np.stack([1.0 / L**2, mid, 1.0 / D], axis=-1)


@dataclass(frozen=True)
class AdditiveFit:
    """``err^2 = a^2/L^2 + b^2 D/(L M) + c^2/D`` (``kind="embedding"``) or with ``(D/(L M))^2``
    (``kind="output"``); ``a, b, c >= 0``.

    ``coefficients``: {"a", "b", "c"}; ``coefficient_ci``: the same keys -> (lo, hi) at level
    ``ci`` (NaN if no bootstrap); ``n_points``: points used; ``log_residual_rms``: RMS of
    ``log err^2 - log model``.
    """

    kind: str
    coefficients: dict[str, float]
    coefficient_ci: dict[str, tuple[float, float]]
    n_points: int
    ci: float = 0.95
    method: str = "bootstrap"
    n_reps: int = 1
    log_residual_rms: float = math.nan

    @property
    def terms(self) -> tuple[str, str, str]:
        """The model's three terms of ``err^2``, as text."""
        return ADDITIVE_TERMS[self.kind]

    def term_values(self, L: object, M: object, D: object) -> dict[str, np.ndarray]:
        """Each term's contribution to ``err^2`` at ``(L, M, D)`` (broadcast arrays)."""
        Lb, Mb, Db = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (L, M, D)))
        f = _features(self.kind, Lb, Mb, Db)
        c = self.coefficients
        th = np.array([c["a"] ** 2, c["b"] ** 2, c["c"] ** 2])
        return {t: f[..., i] * th[i] for i, t in enumerate(self.terms)}

    def predict(self, L: object, M: object, D: object) -> np.ndarray:
        """Model error ``sqrt(sum of terms)`` at ``(L, M, D)``."""
        return np.sqrt(sum(self.term_values(L, M, D).values()))

    def __call__(self, L: object, M: object, D: object) -> np.ndarray:
        return self.predict(L, M, D)


def _fit_nonneg(F: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative ``th`` with ``F @ th ~ y`` under multiplicative noise: IRLS of
    ``sum ((F @ th - y) / m)^2`` with ``m`` the previous model, each step an NNLS.

    Start: NNLS on relative residuals ``(F @ th - y) / y``. The fixed point solves the
    quasi-likelihood equations ``sum_i (y_i - m_i) F_i / m_i^2 = 0`` (variance ~ mean^2), which are
    unbiased when ``E[y] = m``; a least-squares fit of ``log y`` would instead estimate the
    geometric mean, biased low by about ``Var(log y) / 2``. Returns ``th`` and the RMS log residual.
    """
    th, _ = optimize.nnls(F / y[:, None], np.ones_like(y))
    for _ in range(100):
        m = F @ th
        if not np.all(m > 0):
            break
        new, _ = optimize.nnls(F / m[:, None], y / m)
        done = np.max(np.abs(new - th)) <= 1e-10 * max(np.max(np.abs(th)), 1e-300)
        th = new
        if done:
            break
    with np.errstate(divide="ignore"):
        r = np.log(F @ th) - np.log(y)
    return th, float(np.sqrt(np.mean(r * r)))


def fit_additive(
    L: object,
    M: object,
    D: object,
    err: object,
    kind: str = "embedding",
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
) -> AdditiveFit:
    """Fit the additive error model of ``kind`` with non-negative coefficients.

    ``L, M, D (n,)`` (scalars broadcast); ``err (n,)`` or ``(n, R)`` per-repetition RMS
    errors. The aggregate ``err^2`` is fitted as a non-negative combination of the three terms by
    iteratively reweighted NNLS with relative weights ``1 / model`` (quasi-likelihood for
    multiplicative noise, unbiased for ``E[err^2]``). CIs: bootstrap over the ``R`` repetitions,
    or over points (case resampling) when ``R == 1``.
    """
    if kind not in ADDITIVE_TERMS:
        raise ValueError(f"kind: must be 'embedding' or 'output', got {kind!r}")
    n_boot = _check_boot(n_boot, ci)
    e = _as_err(err, None)
    n = e.shape[0]
    La, Ma, Da = (_as_positive(v, nm, n) for v, nm in ((L, "L"), (M, "M"), (D, "D")))
    F = _features(kind, La, Ma, Da)
    e2 = e * e
    agg = _aggregate(e2)
    use = np.isfinite(agg) & (agg > 0)
    if use.sum() < 3:
        raise ValueError("err: need finite positive errors at three or more points")
    th, res_rms = _fit_nonneg(F[use], agg[use] ** 2)
    n_reps = int(e.shape[1])
    boots = []
    method = "none"
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        if n_reps >= 2:
            method = "bootstrap over repetitions"
            for _ in range(n_boot):
                b = _aggregate(e2[:, rng.integers(0, n_reps, size=n_reps)])
                u = np.isfinite(b) & (b > 0)
                if u.sum() >= 3:
                    boots.append(_fit_nonneg(F[u], b[u] ** 2)[0])
        else:
            method = "bootstrap over points"
            idx_use = np.flatnonzero(use)
            for _ in range(n_boot):
                j = rng.choice(idx_use, size=idx_use.size, replace=True)
                if np.unique(j).size >= 3:
                    boots.append(_fit_nonneg(F[j], agg[j] ** 2)[0])
    names = ("a", "b", "c")
    coef = {nm: float(math.sqrt(max(t, 0.0))) for nm, t in zip(names, th, strict=True)}
    if boots:
        bt = np.sqrt(np.maximum(np.array(boots), 0.0))
        n_eff = n_reps if n_reps >= 2 else int(use.sum())
        cis = {nm: _percentile_ci(bt[:, i], ci, coef[nm], n_eff) for i, nm in enumerate(names)}
    else:
        cis = {nm: (math.nan, math.nan) for nm in names}
    return AdditiveFit(kind=kind, coefficients=coef, coefficient_ci=cis, n_points=int(use.sum()),
                       ci=float(ci), method=method, n_reps=n_reps, log_residual_rms=res_rms)
