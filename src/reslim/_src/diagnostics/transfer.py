"""Hyperparameter transfer across depth and width (docs/theory.md §3.4).

A sweep trains, for each (parameterization, depth ``L``, width ``W``; shape ``(L, W, W)``),
one batch of networks: every base learning rate ``eta`` of a log2 grid times every seed, with
one learning rate per network. The final training risk ``R_K(eta)`` gives one curve per depth.

- Optimum: the grid point with the least risk (non-finite risks count as ``+inf``, never as
  small), refined by the vertex of the parabola through it and its two neighbours in
  ``(log2 eta, log R)``; next to a diverged lr the grid point itself; at a grid edge the grid
  point itself, flagged ``edge`` (the optimum is not bracketed).
- Drift per doubling of depth: least-squares slope of ``log2 eta*`` against ``log2 L``.
- Verdict: the optimum *transfers* when ``|drift| <= threshold`` (default 0.25: eta* moves
  by less than a factor 2^0.25 ~ 1.19 per doubling of L) and no optimum sits on a grid edge;
  *deeper helps* when the optimal risk at the largest depth is below the one at the
  smallest, *never worse* when it does not rise by more than ``tol`` (relative) from a depth
  to the next.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..models.resnet import ResNet
from ..training.data import Dataset
from ..training.trainer import train


@dataclass(frozen=True)
class OptimalLR:
    """Optimum of a loss-vs-lr curve: ``lr`` at the parabola's vertex, ``loss`` the least grid
    loss (never extrapolated), ``index`` of the best grid point, ``edge`` if not bracketed."""

    lr: float
    loss: float
    index: int
    edge: bool


#: a neighbour's log loss counts at most this much above the minimum in the parabola
CAP_LOG = 2.0


def optimal_lr(lrs: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray,
               log_loss: bool = True) -> OptimalLR:
    """Optimum of ``losses (n,)`` over ``lrs (n,)`` (increasing, positive): parabola through the
    best grid point and its neighbours in ``x = log2 lr`` (``y = log loss`` if ``log_loss``).

    Non-finite losses count as ``+inf``; no finite loss -> ``lr = nan``. A neighbour more than
    :data:`CAP_LOG` above the minimum (in log loss) is capped there, so a huge but finite loss
    near divergence does not pull the vertex.
    """
    x = np.log2(np.asarray(lrs, dtype=np.float64))
    f = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or f.shape != x.shape or x.size == 0:
        raise ValueError(f"lrs and losses must be 1-d of the same length, got {x.shape}, {f.shape}")
    if not np.all(np.isfinite(x)) or np.any(np.diff(x) <= 0):
        raise ValueError("lrs must be positive and strictly increasing")
    f = np.where(np.isfinite(f), f, np.inf)
    if log_loss:
        if np.any(f <= 0):
            raise ValueError("losses must be positive for log_loss=True")
        y = np.log(f)
    else:
        y = f
    if not np.isfinite(y).any():
        return OptimalLR(math.nan, math.inf, -1, True)
    i = int(np.argmin(y))
    if i == 0 or i == x.size - 1:
        return OptimalLR(float(2.0 ** x[i]), float(f[i]), i, True)
    if not (np.isfinite(y[i - 1]) and np.isfinite(y[i + 1])):  # next to a diverged lr
        return OptimalLR(float(2.0 ** x[i]), float(f[i]), i, False)
    x0, x1, x2 = x[i - 1 : i + 2]
    # a huge (finite) loss next to the optimum would dominate the parabola: cap its excess
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    cap = CAP_LOG if log_loss else CAP_LOG * max(abs(y1), 1e-12)
    y0, y2 = min(y0, y1 + cap), min(y2, y1 + cap)
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    xv = x1 if den == 0 else float(np.clip(x1 - 0.5 * num / den, x0, x2))
    return OptimalLR(float(2.0**xv), float(f[i]), i, False)


def lr_drift(depths: Sequence[float], lr_star: Sequence[float]) -> float:
    """Slope of ``log2 lr*`` against ``log2 L`` (octaves of lr per doubling of depth); NaN
    entries dropped; NaN when fewer than two distinct depths remain."""
    L = np.asarray(depths, dtype=np.float64)
    s = np.asarray(lr_star, dtype=np.float64)
    if L.shape != s.shape or L.ndim != 1:
        raise ValueError(f"depths and lr_star must be 1-d of the same length, got {L.shape}, {s.shape}")
    if np.any(L <= 0):
        raise ValueError("depths must be positive")
    ok = np.isfinite(s) & (s > 0)
    if np.unique(L[ok]).size < 2:
        return math.nan
    return float(np.polyfit(np.log2(L[ok]), np.log2(s[ok]), 1)[0])


def lr_grid(center: float, octaves_below: int, octaves_above: int, step: float = 1.0) -> list[float]:
    """``center * 2^k`` for ``k = -octaves_below, ..., octaves_above`` in steps of ``step``."""
    if not (center > 0 and math.isfinite(center)):
        raise ValueError(f"lr center must be positive, got {center!r}")
    if step <= 0:
        raise ValueError(f"lr step must be positive, got {step!r}")
    ks = np.arange(-octaves_below, octaves_above + 1e-9, step)
    return [float(center * 2.0**k) for k in ks]


def lr_sweep(
    data: Dataset,
    *,
    param: str,
    depths: Sequence[int],
    widths: Sequence[int],
    lrs: Sequence[float],
    seeds: Sequence[int] = (0, 1),
    steps: int = 100,
    optimizer: str = "gd",
    batch_size: int | None = None,
    loss: str = "sum",
    block: str = "two-layer",
    activation: str = "tanh",
    dtype: str = "float32",
    data_seed: int = 0,
    param_options: dict | None = None,
    dataset: str = "data",
    networks: Sequence[tuple[float, int]] | None = None,
    hidden: int | None = None,
) -> pd.DataFrame:
    """Train every (L, W, lr, seed) of one parameterization; one row each. The networks are
    ``(L, M, D) = (L, hidden, W)``: ``W`` is the embedding dimension, ``hidden`` the blocks' hidden
    width (default ``W``: ``M = D``).

    Columns: ``dataset, param, L, width, lr, seed, final_loss`` (``+inf`` if non-finite),
    ``test_loss`` (NaN without a test split), ``loss0, diverged, seconds``. Each (L, W) is one
    batch of ``len(lrs) * len(seeds)`` networks with per-network learning rates, or of the
    explicit ``networks`` ``[(lr, seed), ...]`` when given (then ``lrs``, ``seeds`` are ignored).
    """
    from ..scaling.parameterization import get_parameterization

    if networks is not None:
        lrs = [float(a) for a, _ in networks]
        seeds = [int(b) for _, b in networks]
    lrs = [float(v) for v in lrs]
    if not lrs or any(not (v > 0 and math.isfinite(v)) for v in lrs):
        raise ValueError(f"lrs must be positive and finite, got {lrs!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one network")
    p = get_parameterization(param, **(param_options or {}))
    if networks is not None:
        net_lrs, net_seeds = lrs, seeds
    else:
        net_lrs = [lr for lr in lrs for _ in seeds]
        net_seeds = [s for _ in lrs for s in seeds]
    has_test = data.X_test is not None
    rows = []
    for W in widths:
        for L in depths:
            t0 = time.perf_counter()
            model = ResNet((int(L), int(W if hidden is None else hidden), int(W)), param=p,
                           d_in=data.d_in, d_out=data.d_out,
                           block=block, activation=activation, seeds=net_seeds, dtype=dtype)
            traj = train(model, data, steps=steps, lr=net_lrs, optimizer=optimizer, loss=loss,
                         batch_size=batch_size, data_seed=data_seed, record=("loss",))
            test = _final_test_loss(model, data, loss) if has_test else None
            dt = time.perf_counter() - t0
            for b, (lr, seed) in enumerate(zip(net_lrs, net_seeds, strict=True)):
                fl = float(traj.loss[-1, b])
                bad = bool(traj.diverged[b]) or not math.isfinite(fl)
                tl = float(test[b]) if test is not None else math.nan
                rows.append({
                    "dataset": dataset, "param": p.name, "L": int(L), "width": int(W), "lr": lr,
                    "seed": seed, "final_loss": math.inf if bad else fl,
                    "test_loss": math.inf if (bad and has_test) else tl,
                    "loss0": float(traj.loss[0, b]), "diverged": bad,
                    "seconds": dt / len(net_lrs),
                })
    return pd.DataFrame(rows)


def _final_test_loss(model: ResNet, data: Dataset, loss: str) -> np.ndarray:
    """Test risk (B,) of the trained networks (same normalisation as the training risk)."""
    import torch

    from ..training.trainer import loss_and_grad

    with torch.no_grad():
        cache = model.forward_cached(torch.as_tensor(data.X_test, dtype=model.dtype))
        Y = torch.as_tensor(data.Y_test, dtype=model.dtype)
        y = cache.y
        if y.shape[-1] != Y.shape[-1]:  # (B, d_out, N) layout
            Y = Y.T
        risk = loss_and_grad(y, Y, loss)[0]
    return risk.to(torch.float64).numpy()


GROUP = ("dataset", "param", "width")


def optima(df: pd.DataFrame, metric: str = "final_loss") -> pd.DataFrame:
    """Per (dataset, param, width, L): the optimum of the seed-mean curve (a network that
    diverged makes its lr's mean ``+inf``), the per-seed optima's spread and divergences.

    Columns: ``lr_star, log2_lr_star, loss_star, edge, log2_lr_star_std`` (over seeds),
    ``loss_star_std`` (over seeds, at their own optima), ``n_diverged, n_runs``.
    """
    rows = []
    for key, g in df.groupby([*GROUP, "L"], sort=True):
        table = g.pivot_table(index="lr", columns="seed", values=metric, aggfunc="mean").sort_index()
        vals = table.to_numpy(dtype=float)
        vals = np.where(np.isfinite(vals), vals, np.inf)
        mean = vals.mean(axis=1)  # inf if any seed diverged
        opt = optimal_lr(table.index.to_numpy(), mean)
        per_seed = [optimal_lr(table.index.to_numpy(), vals[:, j]) for j in range(vals.shape[1])]
        ls = np.log2([o.lr for o in per_seed])
        row = dict(zip([*GROUP, "L"], key, strict=True))
        row.update({
            "lr_star": opt.lr, "log2_lr_star": math.log2(opt.lr) if opt.lr > 0 else math.nan,
            "loss_star": opt.loss, "edge": opt.edge,
            "log2_lr_star_std": float(np.nanstd(ls)) if len(ls) > 1 else 0.0,
            "loss_star_std": float(np.std([o.loss for o in per_seed])) if len(per_seed) > 1 else 0.0,
            "n_diverged": int(g["diverged"].sum()), "n_runs": len(g),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def verdicts(opt: pd.DataFrame, threshold: float = 0.25, tol: float = 0.02) -> pd.DataFrame:
    """Per (dataset, param, width): drift of ``log2 lr*`` per doubling of ``L`` and verdicts.

    Columns: ``drift`` (octaves per doubling), ``drift_per_seed_std`` is not available here;
    ``lr_star_min_L, lr_star_max_L, loss_star_min_L, loss_star_max_L, n_edge, n_diverged,
    transfers, deeper_helps, deeper_never_worse, threshold``.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    rows = []
    for key, g in opt.groupby(list(GROUP), sort=False):
        g = g.sort_values("L")
        drift = lr_drift(g["L"].to_numpy(), g["lr_star"].to_numpy())
        ls = g["loss_star"].to_numpy()
        n_edge = int(g["edge"].sum())
        row = dict(zip(GROUP, key, strict=True))
        finite = np.isfinite(ls)
        row.update({
            "depths": ",".join(str(v) for v in g["L"]),
            "drift": drift,
            "lr_star_min_L": float(g["lr_star"].iloc[0]), "lr_star_max_L": float(g["lr_star"].iloc[-1]),
            "loss_star_min_L": float(ls[0]), "loss_star_max_L": float(ls[-1]),
            "n_edge": n_edge, "n_diverged": int(g["n_diverged"].sum()),
            "transfers": bool(math.isfinite(drift) and abs(drift) <= threshold and n_edge == 0),
            "deeper_helps": bool(finite[[0, -1]].all() and ls[-1] < ls[0]),
            "deeper_never_worse": bool(finite.all() and np.all(ls[1:] <= ls[:-1] * (1 + tol))),
            "threshold": threshold,
        })
        rows.append(row)
    return pd.DataFrame(rows)


def plot_transfer(df: pd.DataFrame, opt: pd.DataFrame, *, dataset: str, width: int,
                  metric: str = "final_loss", path=None, hidden: int | None = None):
    """Final loss vs lr, one curve per depth (seed mean, min-max band), a panel per
    parameterization, optima marked. Returns the figure (saved to ``path`` if given)."""
    import matplotlib
    from matplotlib.figure import Figure

    sub = df[(df["dataset"] == dataset) & (df["width"] == width)]
    params = list(dict.fromkeys(sub["param"]))
    if not params:
        raise ValueError(f"no rows for dataset {dataset!r} and width {width}")
    fig = Figure(figsize=(3.2 * len(params), 3.0))
    axes = fig.subplots(1, len(params), squeeze=False)
    depths = sorted(sub["L"].unique())
    cmap = matplotlib.colormaps["viridis"]
    for ax, param in zip(axes[0], params, strict=True):
        finite = sub.loc[sub["param"] == param, metric].to_numpy(float)
        finite = finite[np.isfinite(finite) & (finite > 0)]
        for i, L in enumerate(depths):
            g = sub[(sub["param"] == param) & (sub["L"] == L)]
            t = g.pivot_table(index="lr", columns="seed", values=metric, aggfunc="mean").sort_index()
            v = np.where(np.isfinite(t.to_numpy(float)), t.to_numpy(float), np.nan)
            color = cmap(i / max(1, len(depths) - 1))
            x = np.log2(t.index.to_numpy(float))
            mean = v.mean(axis=1)  # NaN (not drawn) where a seed diverged
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
            ax.plot(x, mean, "-o", ms=2, color=color, label=f"L={L}")
            ax.fill_between(x, lo, hi, color=color, alpha=0.2)
            o = opt[(opt["dataset"] == dataset) & (opt["width"] == width) & (opt["param"] == param)
                    & (opt["L"] == L)]
            if len(o) and np.isfinite(o["lr_star"].iloc[0]):
                ax.plot(np.log2(o["lr_star"].iloc[0]), o["loss_star"].iloc[0], "*", ms=8, color=color,
                        mec="k", mew=0.4)
        ax.set_yscale("log")
        if finite.size:
            # the interesting range: from the best loss to a few times the typical loss;
            # near-divergent points (1e20 and up) would otherwise flatten every curve
            ax.set_ylim(0.8 * finite.min(), 4.0 * np.median(finite))
        ax.set_title(param, fontsize=9)
        ax.set_xlabel("log2 lr")
    label = metric.replace("_", " ")
    axes[0][0].set_ylabel(label if label.startswith("final") else f"final {label}")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"{dataset}, width {width}" if hidden in (None, width)
                 else f"{dataset}, embedding dimension D = {width}, hidden width M = {hidden}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
    return fig
