"""Compute-optimal shapes for a parameter budget ``P = L M D`` (docs/theory.md §2.3).

The error models depend on ``L`` and ``M`` through the Euler term (``1/L``) and the unit count
``L M`` (Monte-Carlo term): at fixed ``D`` and ``L M``, more depth only lowers the error, so the
literal minimiser over ``L M D = P`` is the degenerate ``M = 1``, ``L = P / D``. The rate-optimal
shapes form a family (any ``L`` with ``1/L`` below the other terms); the theory picks its
shallowest member, where the terms balance (``L ~ P^{1/6}, M ~ P^{1/2}, D ~ P^{1/3}`` for the
bound). :func:`compute_optimal_shape` returns the shallowest shape whose predicted error is within
a factor ``1 + slack`` of the infimum over all shapes of budget ``P``; for every fixed ``slack > 0``
this follows the theory's exponents (``slack = 0`` gives the literal minimiser).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import optimize

from ..scaling.shapes import Shape
from .fits import AdditiveFit

__all__ = [
    "THEORY_MODELS",
    "compute_optimal_shape",
    "continuous_optimal_shape",
    "optimal_exponents",
    "theory_model",
]

ErrorModel = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _bound(L: np.ndarray, M: np.ndarray, D: np.ndarray) -> np.ndarray:
    return 1.0 / L + np.sqrt(D / (L * M)) + 1.0 / np.sqrt(D)


def _output(L: np.ndarray, M: np.ndarray, D: np.ndarray) -> np.ndarray:
    return 1.0 / L + D / (L * M) + 1.0 / np.sqrt(D)


THEORY_MODELS: dict[str, tuple[ErrorModel, str]] = {
    "bound": (_bound, "1/L + sqrt(D/(L M)) + 1/sqrt(D)"),
    "output": (_output, "1/L + D/(L M) + 1/sqrt(D)"),
}
_ALIASES = {"embedding": "bound", "theory": "bound"}

# P-exponents of L, M, D and of the error at the shallowest rate-optimal shape (docs/theory.md §2.3)
_THEORY_EXPONENTS = {
    "bound": {"L": 1 / 6, "M": 1 / 2, "D": 1 / 3, "rate": -1 / 6},
    "output": {"L": 1 / 5, "M": 2 / 5, "D": 2 / 5, "rate": -1 / 5},
}


def theory_model(name: str = "bound") -> ErrorModel:
    """The theory's error model ``name`` ("bound" or "output") as a function of (L, M, D)."""
    return THEORY_MODELS[_model_name(name)][0]


def _model_name(name: str) -> str:
    key = _ALIASES.get(name, name)
    if key not in THEORY_MODELS:
        raise ValueError(f"model: must be 'bound', 'output', an AdditiveFit or a callable, got {name!r}")
    return key


def _resolve(model: Any) -> tuple[ErrorModel, str | None]:
    """(vectorised error function, theory-exponent key or None)."""
    if model is None:
        return _bound, "bound"
    if isinstance(model, str):
        name = _model_name(model)
        return THEORY_MODELS[name][0], name
    if isinstance(model, AdditiveFit):
        key: str | None = None
        if all(v > 0 for v in model.coefficients.values()):
            key = "bound" if model.kind == "embedding" else "output"
        return model.predict, key
    if callable(model):
        def f(L: np.ndarray, M: np.ndarray, D: np.ndarray) -> np.ndarray:
            try:
                out = np.asarray(model(L, M, D), dtype=np.float64)
                if out.shape == np.shape(L):
                    return out
            except Exception:  # noqa: BLE001 - fall back to a scalar model
                pass
            return np.vectorize(lambda a, b, c: float(model(a, b, c)))(L, M, D)

        return f, None
    raise ValueError(f"model: must be 'bound', 'output', an AdditiveFit or a callable, got {model!r}")


def _check_budget(budget: Any) -> float:
    try:
        P = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget: must be a number, got {budget!r}") from None
    if isinstance(budget, bool) or not math.isfinite(P) or P < 1:
        raise ValueError(f"budget: must be a finite number >= 1, got {budget!r}")
    return P


def _objective(f: ErrorModel, lp: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Error as a function of ``x = log L``, ``y = log D`` (``log M = lp - x - y``)."""
    def g(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        z = np.clip(lp - x - y, 0.0, None)
        with np.errstate(all="ignore"):
            v = f(np.exp(x), np.exp(z), np.exp(y))
        return np.where(np.isfinite(v), v, np.inf)

    return g


def _best_y(g: Callable, x: float, lp: float, n: int = 161) -> tuple[float, float]:
    """min over ``y in [0, lp - x]`` of ``g(x, y)``: grid, then bounded Brent around the best node."""
    top = max(lp - x, 0.0)
    if top == 0.0:
        return 0.0, float(g(x, 0.0))
    ys = np.linspace(0.0, top, n)
    vals = g(np.full(n, x), ys)
    i = int(np.argmin(vals))
    lo, hi = ys[max(i - 1, 0)], ys[min(i + 1, n - 1)]
    res = optimize.minimize_scalar(lambda y: float(g(x, y)), bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-10})
    if res.success and res.fun <= vals[i]:
        return float(res.x), float(res.fun)
    return float(ys[i]), float(vals[i])


def continuous_optimal_shape(
    budget: Any, model: Any = None, slack: float = 0.1
) -> tuple[float, float, float, float]:
    """Continuous ``(L, M, D, error)``: the shallowest ``L`` whose best error over ``D`` (with
    ``M = P / (L D)``, all sizes ``>= 1``) is within ``(1 + slack)`` of the infimum over shapes."""
    P = _check_budget(budget)
    if not (math.isfinite(float(slack)) and float(slack) >= 0):
        raise ValueError(f"slack: must be a finite number >= 0, got {slack!r}")
    f, _ = _resolve(model)
    lp = math.log(P)
    g = _objective(f, lp)
    if lp == 0.0:
        return 1.0, 1.0, 1.0, float(g(np.zeros(()), np.zeros(())))
    xs = np.linspace(0.0, lp, 161)
    frac = np.linspace(0.0, 1.0, 161)
    h = g(xs[:, None], (lp - xs)[:, None] * frac[None, :]).min(axis=1)  # grid min over y, per depth
    if not np.any(np.isfinite(h)):
        raise ValueError("model: predicts no finite error at this budget")
    i_best = int(np.argmin(h))
    # refine the infimum around the best depth
    lo, hi = xs[max(i_best - 1, 0)], xs[min(i_best + 1, xs.size - 1)]
    res = optimize.minimize_scalar(lambda x: _best_y(g, x, lp)[1], bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-9})
    f_star = min(float(h[i_best]), float(res.fun) if res.success else math.inf)
    target = f_star * (1.0 + float(slack)) * (1 + 1e-12)
    ok = np.flatnonzero(h <= target)
    j = int(ok[0]) if ok.size else i_best
    while j > 0 and _best_y(g, xs[j - 1], lp)[1] <= target:  # the grid min over y is only an upper bound
        j -= 1
    if j == 0:
        x = 0.0
    else:
        a, b = xs[j - 1], xs[j]  # h(a) > target >= h(b)
        if not ok.size:
            b = float(res.x)
        for _ in range(60):
            mid = 0.5 * (a + b)
            if _best_y(g, mid, lp)[1] <= target:
                b = mid
            else:
                a = mid
        x = b
    y, err = _best_y(g, x, lp)
    L, D = math.exp(x), math.exp(y)
    M = P / (L * D)
    return L, M, D, err


def compute_optimal_shape(budget: Any, model: Any = None, slack: float = 0.1) -> tuple[Shape, float]:
    """Compute-optimal integer ``Shape`` for ``L M D ~ budget`` and the model's error there.

    ``model``: None or "bound" (``1/L + sqrt(D/(L M)) + 1/sqrt(D)``), "output"
    (``1/L + D/(L M) + 1/sqrt(D)``), an :class:`AdditiveFit`, or a vectorised callable
    ``(L, M, D) -> error``. The continuous optimum (see :func:`continuous_optimal_shape`,
    log-space search) is rounded: ``L, D`` to the nearest integers ``>= 1``, then
    ``M = round(P / (L D))`` (``>= 1``).
    """
    P = _check_budget(budget)
    f, _ = _resolve(model)
    Lc, _, Dc, _ = continuous_optimal_shape(P, model, slack)
    L = max(1, int(round(Lc)))
    D = max(1, int(round(Dc)))
    M = max(1, int(round(P / (L * D))))
    err = f(np.array([float(L)]), np.array([float(M)]), np.array([float(D)]))
    return Shape(L, M, D), float(np.asarray(err).reshape(-1)[0])


def optimal_exponents(model: Any = None, slack: float = 0.1) -> dict[str, float]:
    """P-exponents ``{"L", "M", "D", "rate"}`` of the compute-optimal shape and of its error.

    Exact for the theory models ("bound": 1/6, 1/2, 1/3, -1/6; "output": 1/5, 2/5, 2/5, -1/5)
    and for additive fits with all coefficients positive (same as their kind); otherwise the
    log-slopes of :func:`continuous_optimal_shape` between ``P = 1e12`` and ``1e18``.
    """
    _, key = _resolve(model)
    if key is not None:
        return dict(_THEORY_EXPONENTS[key])
    p1, p2 = 1e12, 1e18
    a = np.log(continuous_optimal_shape(p1, model, slack))
    b = np.log(continuous_optimal_shape(p2, model, slack))
    s = (b - a) / (math.log(p2) - math.log(p1))
    return {"L": float(s[0]), "M": float(s[1]), "D": float(s[2]), "rate": float(s[3])}
