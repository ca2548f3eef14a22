"""Phase diagram of residual scalings for two-layer blocks (Chizat 2025, arXiv 2509.10167,
the companion of Chaintron et al. 2026), measured with the coordinate check.

A point of the diagram is a residual scale ``beta = alpha L^a M^b D^c`` on the unit-variance
network (``mlu-unit`` otherwise: ``U, V ~ N(0, 1)``, ``p = U^T h / sqrt(D)``, ``y = W_u^T h / D``)
with the learning rate of ``U`` and ``V`` tied to it by the *function-space* normalisation

    lr = eta * D / (L M beta^2) = eta * alpha^-2 * L^(-1-2a) * M^(-1-2b) * D^(1-2c).

Why: the tangent kernel of the output is a sum over the ``L M`` units of ``|dy/dv|^2 ~ beta^2 / D``
(readout ``1/D``), i.e. ``L M beta^2 / D``; this ``lr`` keeps the first step's change of the
output Θ(1) at every point, so what changes across the diagram is only how that change is
shared between moving units (feature learning) and linearised ones (lazy). MLU is the point
``a = b = -1, c = 1/2`` (``lr = eta L M / alpha^2``, docs/theory.md §1). A per-unit computation gives
the pre-activation update ``du ~ eta sqrt(D) / (alpha L M beta)``, so the prediction is: only
MLU's residual scale gives Θ(1) unit updates along every axis, and ``du ~ 1/alpha`` (lazy) as
``alpha`` grows. The module measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ..scaling.monomial import Monomial
from ..scaling.parameterization import Parameterization, get_parameterization
from ..scaling.shapes import Shape
from .coord_check import TOL, coord_check

EXPONENT_AXES = ("L", "M", "D")
MLU_EXPONENTS = {"L": -1.0, "M": -1.0, "D": 0.5}
QUICK_BASE = Shape(8, 128, 64)
ALPHA_BASE = Shape(16, 512, 32)
QUICK_SIZES = {"L": (4, 8, 16), "M": (64, 128, 256), "D": (32, 64, 128)}
VERDICT_COLORS = {"feature learning": "#4daf4a", "partial": "#ffd92f", "lazy": "#377eb8",
                  "unstable": "#e41a1c"}


def residual_scaling(L: float = -1.0, M: float = -1.0, D: float = 0.5, alpha: float = 1.0,
                     ) -> Parameterization:
    """Two-layer-block parameterization with branch ``alpha L^L M^M D^D`` and the tied SGD
    learning rate ``eta alpha^-2 L^(-1-2L) M^(-1-2M) D^(1-2D)`` on ``U`` and ``V`` (module doc).

    Built from the ``mlu-unit`` preset with :meth:`Parameterization.with_role`; the defaults give
    exactly ``mlu-unit``'s rules. Adam learning rates are left as in ``mlu-unit``.
    """
    for name, v in (("L", L), ("M", M), ("D", D)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"exponent of {name} must be a finite number, got {v!r}")
    base = get_parameterization("mlu-unit", alpha=alpha)
    branch = Monomial(1.0, (("alpha", 1.0), ("L", L), ("M", M), ("D", D)))
    lr = Monomial(1.0, (("alpha", -2.0), ("L", -1 - 2 * L), ("M", -1 - 2 * M), ("D", 1 - 2 * D)))
    p = base.with_role("branch", rule=branch).with_role("U", lr_sgd=lr).with_role("V", lr_sgd=lr)
    return replace(p, name=f"beta=alpha*L^{L:g}*M^{M:g}*D^{D:g}",
                   description=f"residual scale alpha L^{L:g} M^{M:g} D^{D:g}, lr eta D/(L M beta^2)",
                   options={"alpha": alpha, "L": L, "M": M, "D": D})


def _combine(verdicts: Sequence[str]) -> str:
    if all(v == "feature learning" for v in verdicts):
        return "feature learning"
    for v in ("unstable", "lazy", "partial"):
        if v in verdicts:
            return v
    return "partial"


def classify_point(param: Parameterization, axes: Sequence[str] = EXPONENT_AXES, *,
                   tol: float = TOL, **options: Any) -> dict[str, Any]:
    """Coordinate-check ``param`` along ``axes`` and return one row: the combined verdict
    (``feature learning`` only if every axis is), each axis' verdict and its exponents of
    ``du`` (layer-averaged unit update), ``dh_last`` and ``dy``."""
    v = coord_check(param, tuple(axes), tol=tol, **options).attrs["verdicts"]
    row: dict[str, Any] = {"verdict": _combine(list(v["verdict"]))}
    for r in v.itertuples():
        row[f"verdict_{r.axis}"] = r.verdict
        row[f"du_{r.axis}"] = r.du
        row[f"dh_{r.axis}"] = r.dh_last
        row[f"dy_{r.axis}"] = r.dy
    return row


def phase_diagram(
    x: str = "L",
    y: str = "M",
    x_exponents: Sequence[float] = (-2.0, -1.5, -1.0, -0.5, 0.0),
    y_exponents: Sequence[float] = (-2.0, -1.5, -1.0, -0.5, 0.0),
    fixed: dict[str, float] | None = None,
    *,
    alpha: float = 1.0,
    axes: Sequence[str] = EXPONENT_AXES,
    sizes: dict[str, Sequence[float]] | None = None,
    base: Shape | Sequence[int] | str = QUICK_BASE,
    steps: int = 2,
    seeds: Sequence[int] = (0, 1),
    tol: float = TOL,
    on_point: Callable[[], None] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Classify every residual scale ``alpha L^a M^b D^c`` on a grid of two exponents.

    ``x``, ``y``: which exponents vary (two of ``L, M, D``); the third is ``fixed`` (default
    MLU's: ``L: -1, M: -1, D: 1/2``). Each point is coordinate-checked along ``axes`` with
    ``sizes`` (default three sizes a factor 4 apart per axis, around ``base``). One row per
    point: ``exp_L, exp_M, exp_D, alpha, verdict`` and per-axis verdicts/exponents
    (:func:`classify_point`). ``on_point``: called after each point (progress).
    """
    for name, v in (("x", x), ("y", y)):
        if v not in EXPONENT_AXES:
            raise ValueError(f"{name} must be one of {', '.join(EXPONENT_AXES)}, got {v!r}")
    if x == y:
        raise ValueError(f"x and y must differ, both are {x!r}")
    if not x_exponents or not y_exponents:
        raise ValueError("x_exponents and y_exponents must be non-empty")
    exps = dict(MLU_EXPONENTS)
    for k, value in (fixed or {}).items():
        if k not in EXPONENT_AXES:
            raise ValueError(f"fixed has unknown exponent {k!r}; use L, M or D")
        exps[k] = float(value)
    sizes = dict(QUICK_SIZES) if sizes is None else sizes
    rows = []
    for ey in y_exponents:
        for ex in x_exponents:
            e = {**exps, x: float(ex), y: float(ey)}
            p = residual_scaling(e["L"], e["M"], e["D"], alpha=alpha)
            row = {"exp_L": e["L"], "exp_M": e["M"], "exp_D": e["D"], "alpha": alpha,
                   "param": p.name}
            row.update(classify_point(p, axes, sizes=sizes, base=base, steps=steps, seeds=seeds,
                                      tol=tol, **options))
            rows.append(row)
            if on_point is not None:
                on_point()
    out = pd.DataFrame(rows)
    out.attrs.update({"x": x, "y": y, "fixed": {k: v for k, v in exps.items() if k not in (x, y)}})
    return out


def alpha_sweep(alphas: Sequence[float] = (1, 2, 4, 8), *, exponents: dict[str, float] | None = None,
                base: Shape | Sequence[int] | str = ALPHA_BASE, steps: int = 2,
                seeds: Sequence[int] = (0, 1), tol: float = TOL, **options: Any) -> pd.DataFrame:
    """Coordinate check along ``alpha`` at a residual scale (default MLU's): the exponent
    table (:func:`coord_check`); ``du`` ~ alpha^-1 means the limit is lazy as alpha grows.

    The residual stream's fluctuation at initialisation is ``~ alpha sqrt(D / (L M))``, so the
    sweep needs ``L M >> alpha^2 D``: the default base (16, 512, 32) keeps it below 1/4.
    """
    e = {**MLU_EXPONENTS, **(exponents or {})}
    p = residual_scaling(e["L"], e["M"], e["D"])
    return coord_check(p, "alpha", list(alphas), base=base, steps=steps, seeds=seeds, tol=tol,
                       **options)


def _fmt(v: float) -> str:
    return "div" if v == math.inf else ("n/a" if math.isnan(v) else f"{v:+.1f}")


def plot_phase_diagram(maps: Sequence[pd.DataFrame], path: str,
                       alpha: pd.DataFrame | None = None) -> str:
    """Draw each map (each cell split in one stripe per checked axis, coloured by that axis'
    verdict and labelled with its ``du`` exponent; complete feature learning outlined; MLU's
    point starred) and optionally the alpha sweep; save a PNG at ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    n = len(maps) + (alpha is not None)
    fig = Figure(figsize=(5.2 * n, 4.8))
    axs = fig.subplots(1, n, squeeze=False)
    for ax, df in zip(axs[0], maps, strict=False):
        x, y = df.attrs["x"], df.attrs["y"]
        xs = sorted(df[f"exp_{x}"].unique())
        ys = sorted(df[f"exp_{y}"].unique())
        dx = (xs[1] - xs[0]) if len(xs) > 1 else 1.0
        dy = (ys[1] - ys[0]) if len(ys) > 1 else 1.0
        for r in df.itertuples():
            cx, cy = getattr(r, f"exp_{x}"), getattr(r, f"exp_{y}")
            present = [a for a in EXPONENT_AXES if hasattr(r, f"verdict_{a}")]
            h = dy / max(1, len(present))
            for i, a in enumerate(present):  # one stripe per checked axis, top to bottom
                y0 = cy + dy / 2 - (i + 1) * h
                ax.add_patch(Rectangle((cx - dx / 2, y0), dx, h, alpha=0.85, lw=0,
                                       color=VERDICT_COLORS.get(getattr(r, f"verdict_{a}"), "#999")))
                ax.text(cx, y0 + h / 2, f"{a}: {_fmt(getattr(r, f'du_{a}'))}", ha="center",
                        va="center", fontsize=6)
            edge = "k" if r.verdict == "feature learning" else "white"
            ax.add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, ec=edge,
                                   lw=2 if edge == "k" else 1))
        mx, my = MLU_EXPONENTS[x], MLU_EXPONENTS[y]
        ax.plot([mx - 0.4 * dx], [my + 0.4 * dy], marker="*", color="k", ms=9)
        ax.set_xlim(xs[0] - dx / 2, xs[-1] + dx / 2)
        ax.set_ylim(ys[0] - dy / 2, ys[-1] + dy / 2)
        ax.set_xticks(xs)
        ax.set_yticks(ys)
        ax.set_xlabel(f"exponent of {x} in the residual scale")
        ax.set_ylabel(f"exponent of {y} in the residual scale")
        fixed = ", ".join(f"{k}^{v:g}" for k, v in df.attrs.get("fixed", {}).items())
        ax.set_title(f"beta = L^a M^b D^c ({fixed} fixed)\nstripes: verdict along L / M / D, "
                     f"text: exponent of du", fontsize=9)
    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLORS.items()]
    # beside the panels, below them: a legend inside the map would cover its cells
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False,
               title="verdict", title_fontsize=7)
    if alpha is not None:
        ax = axs[0][-1]
        k = int(alpha["step"].max())
        for q in ("du", "dp", "dh", "dy"):
            pos = "out" if q == "dy" else "all"
            r = alpha[(alpha["quantity"] == q) & (alpha["position"] == pos) & (alpha["step"] == k)]
            if r.empty:
                continue
            r = r.iloc[0]
            vals = np.array(r["values"], dtype=float)
            ax.plot(r["sizes"], vals, marker="o", label=f"{q} (exponent {r['exponent']:+.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(r["sizes"]), [f"{v:g}" for v in r["sizes"]])
        ax.minorticks_off()
        ax.set_xlabel("alpha")
        ax.set_ylabel(f"RMS change at step {k}")
        ax.set_title("MLU residual scale, growing alpha", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=80)
    return path
