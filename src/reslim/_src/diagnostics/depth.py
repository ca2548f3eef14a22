"""Depth diagnostics (docs/theory.md §3.3; Yao et al. 2025): the gradient-independence (GIA) gap and the
first-layer collapse of depth-muP with its depth-aware correction.

GIA gap. The same networks (same seeds) are trained twice: ordinary backprop, and the GIA
mode of :func:`reslim.train` (``gia=True``: the backward pass carries the gradient through an
independently initialised copy ``W~`` of every block weight, updated like ``W``). With
losses ``R_k``, ``R~_k`` and outputs ``y_k``, ``y~_k`` (N, d_out) after ``k = 0..K`` updates::

    loss_gap   = sqrt( mean_{k=1..K} (R_k - R~_k)^2 )
    output_gap = sqrt( mean_{k=1..K, n, o} (y_k - y~_k)^2 )
    rel_loss_gap = loss_gap / R_0,   rel_output_gap = output_gap / sqrt(mean (y_K - y_0)^2)

and the gap is fitted as ``gap ~ C L^p`` across depths (log-log least squares, bootstrap CI
over seeds).

First-layer collapse. Two-layer blocks ``p_l = m_U U_l^T h_l``,
``h_{l+1} = h_l + beta m_V V_l sigma(p_l)``. After ``K`` updates (weights ``U + dU``,
features ``h + dh``) the per-block RMS changes (over ``N`` samples and coordinates)::

    dp_own    = RMS( m_U dU_l^T h_l(K) )       the first internal layer's own feature update
    dp        = RMS( p_l(K) - p_l(0) )          total pre-activation change (also via dh_l)
    dh        = RMS( h_{l+1}(K) - h_{l+1}(0) )  block output (residual stream after block l)
    dbranch   = RMS( r_l(K) - r_l(0) ),  r_l = h_{l+1} - h_l   (the branch's own output)

each averaged over blocks ``l = 0..L-1`` (``*_first`` columns: block 0 alone).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..models.resnet import ResNet
from ..scaling.parameterization import get_parameterization
from ..training.data import Dataset
from ..training.trainer import train


def _check_depths(depths: Sequence[int], name: str = "depths") -> list[int]:
    out = []
    for L in depths:
        if isinstance(L, bool) or int(L) != L or int(L) < 1:
            raise ValueError(f"{name} must be positive integers, got {L!r}")
        out.append(int(L))
    if len(out) == 0:
        raise ValueError(f"{name} must not be empty")
    return out


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one network")
    return seeds


# ------------------------------------------------------------------------------ GIA gap
def gap_metrics(ordinary, gia) -> dict[str, np.ndarray]:
    """Gap between two trajectories of the same networks; every entry is a (B,) array.

    ``ordinary``, ``gia``: :class:`Trajectory` with ``loss (K+1, B)`` and ``outputs
    (K+1, B, N, d_out)``. NaN for a network that diverged in either run.
    """
    R, Rg = ordinary.loss, gia.loss
    if R.shape != Rg.shape or ordinary.outputs.shape != gia.outputs.shape:
        raise ValueError("ordinary and gia trajectories must have the same shapes")
    if R.shape[0] < 2:
        raise ValueError("steps must be at least 1 to measure a gap")
    y, yg = ordinary.outputs, gia.outputs
    loss_gap = np.sqrt(np.mean((R[1:] - Rg[1:]) ** 2, axis=0))
    out_gap = np.sqrt(np.mean((y[1:] - yg[1:]) ** 2, axis=(0, 2, 3)))
    move = np.sqrt(np.mean((y[-1] - y[0]) ** 2, axis=(1, 2)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "loss_gap": loss_gap,
            "output_gap": out_gap,
            "rel_loss_gap": loss_gap / R[0],
            "rel_output_gap": out_gap / move,
            "final_loss_gap": np.abs(R[-1] - Rg[-1]),
            "loss0": R[0],
            "loss_final": R[-1],
            "loss_final_gia": Rg[-1],
            "output_move": move,
        }


def gia_gap(
    data: Dataset,
    *,
    params: Sequence[str] = ("depth-mup", "mup"),
    depths: Sequence[int] = (2, 4, 8, 16, 32, 64),
    width: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 100,
    lr: float = 0.05,
    optimizer: str = "sgd",
    batch_size: int | None = 64,
    loss: str = "sum",
    activation: str = "tanh",
    block: str = "one-layer",
    dtype: str = "float64",
    data_seed: int = 0,
) -> pd.DataFrame:
    """Ordinary vs GIA training at fixed width ``D = M = width`` for every (param, depth).

    All seeds of one (param, L) train as one batch of networks. One row per
    (param, L, seed) with the columns of :func:`gap_metrics` plus ``diverged`` and ``seconds``.
    """
    depths = _check_depths(depths)
    seeds = _check_seeds(seeds)
    if int(width) < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    rows = []
    for param in params:
        for L in depths:
            t0 = time.perf_counter()
            trajs = {}
            for mode in (False, True):
                model = ResNet((L, width, width), param=param, d_in=data.d_in, d_out=data.d_out,
                               block=block, activation=activation, seeds=seeds, dtype=dtype)
                trajs[mode] = train(model, data, steps=steps, lr=lr, optimizer=optimizer, loss=loss,
                                    batch_size=batch_size, record=("loss", "outputs"), gia=mode,
                                    data_seed=data_seed)
            m = gap_metrics(trajs[False], trajs[True])
            diverged = trajs[False].diverged | trajs[True].diverged
            dt = time.perf_counter() - t0
            for b, seed in enumerate(seeds):
                row = {"param": param, "L": L, "width": width, "seed": seed, "lr": lr,
                       "optimizer": optimizer, "block": block}
                row.update({k: (np.nan if diverged[b] else float(v[b])) for k, v in m.items()})
                row["diverged"] = bool(diverged[b])
                row["seconds"] = dt / len(seeds)
                rows.append(row)
    return pd.DataFrame(rows)


def fit_depth_exponents(df: pd.DataFrame, metrics: Sequence[str], by: Sequence[str] = ("param",),
                        n_boot: int = 1000) -> pd.DataFrame:
    """Fit ``metric ~ C L^p`` per group ``by``; rows: group keys, metric, exponent, CI, points.

    ``df`` has one row per (group, L, seed); the fit uses the per-L RMS over seeds with a
    bootstrap CI over seeds (:func:`reslim.measure.fit_power_law`); NaN entries are dropped.
    """
    from ..measure.fits import fit_power_law

    rows = []
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            table = g.pivot_table(index="L", columns="seed", values=metric, aggfunc="mean",
                                  dropna=False)
            Ls = table.index.to_numpy(dtype=float)
            row = dict(zip(by, key, strict=True))
            row.update({"metric": metric, "n_depths": len(Ls)})
            try:
                fit = fit_power_law(Ls, table.to_numpy(dtype=float), n_boot=n_boot)
                row.update({"exponent": fit.exponent, "ci_low": fit.exponent_ci[0],
                            "ci_high": fit.exponent_ci[1], "constant": fit.constant,
                            "n_points": fit.n_points, "log_residual_rms": fit.log_residual_rms})
            except ValueError:
                row.update({"exponent": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                            "constant": np.nan, "n_points": 0, "log_residual_rms": np.nan})
            rows.append(row)
    return pd.DataFrame(rows)


def summarize_by_depth(df: pd.DataFrame, metrics: Sequence[str], by: Sequence[str] = ("param",)
                       ) -> pd.DataFrame:
    """Mean, std and count over seeds of each metric per (group, L); ``n_diverged`` per cell."""
    keys = [*by, "L"]
    g = df.groupby(keys, sort=False)
    out = g[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_seeds"] = g.size()
    if "diverged" in df:
        out["n_diverged"] = g["diverged"].sum().astype(int)
    return out.reset_index().sort_values(keys, kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------- first-layer collapse
def _rms(t: torch.Tensor) -> torch.Tensor:
    """RMS over the last two axes: (..., a, b) -> (...)."""
    return t.square().mean(dim=(-1, -2)).sqrt()


def feature_updates(model: ResNet, U0: torch.Tensor, cache0, X: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-block feature changes of a two-layer ``model`` since its initial state.

    ``U0`` (L, B, D, M): initial ``U``; ``cache0``: :meth:`ResNet.forward_cached` at init.
    Returns (B, L) arrays ``dp_own, dp, dh, dbranch`` (definitions in the module docstring).
    """
    if model.block != "two-layer":
        raise ValueError("block must be two-layer for the first-layer collapse")
    with torch.no_grad():
        c = model.forward_cached(X)
        dU = model.U - U0
        out: dict[str, list] = {k: [] for k in ("dp_own", "dp", "dh", "dbranch")}
        for l in range(model.shape.L):
            own = model.mult("U") * torch.bmm(c.hidden[l], dU[l])  # (B, N, M)
            out["dp_own"].append(_rms(own))
            out["dp"].append(_rms(c.pre[l] - cache0.pre[l]))
            out["dh"].append(_rms(c.hidden[l + 1] - cache0.hidden[l + 1]))
            r, r0 = c.hidden[l + 1] - c.hidden[l], cache0.hidden[l + 1] - cache0.hidden[l]
            out["dbranch"].append(_rms(r - r0))
        return {k: torch.stack(v, dim=1).to(torch.float64).cpu().numpy() for k, v in out.items()}


COLLAPSE_METRICS = ("dp_own", "dp", "dh", "dbranch")


def first_layer_collapse(
    data: Dataset,
    *,
    depths: Sequence[int] = (2, 4, 8, 16, 32, 64),
    width: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence[str] = ("sgd", "adam"),
    corrections: Sequence[float] = (0.0, 0.5),
    lr: dict[str, float] | float = 0.05,
    steps: int = 50,
    batch_size: int | None = 64,
    loss: str = "sum",
    activation: str = "tanh",
    dtype: str = "float64",
    data_seed: int = 0,
) -> pd.DataFrame:
    """Feature updates of two-layer depth-muP blocks vs depth, with and without correction.

    ``correction = c`` trains ``depth-mup-corrected`` (U role's lr times ``L^c``); ``c = 0``
    is plain ``depth-mup``. ``lr``: one base lr or one per optimizer. One row per
    (optimizer, correction, L, seed) with block averages of :data:`COLLAPSE_METRICS`, their
    block-0 values (``*_first``), the final loss and ``diverged``.
    """
    depths = _check_depths(depths)
    seeds = _check_seeds(seeds)
    X = torch.as_tensor(data.X)
    rows = []
    for opt in optimizers:
        base_lr = lr[opt] if isinstance(lr, dict) else lr
        for corr in corrections:
            corr = float(corr)
            if corr < 0:
                raise ValueError(f"corrections must be >= 0, got {corr}")
            for L in depths:
                t0 = time.perf_counter()
                param = (get_parameterization("depth-mup") if corr == 0
                         else get_parameterization("depth-mup-corrected", correction=corr))
                model = ResNet((L, width, width), param=param, d_in=data.d_in, d_out=data.d_out,
                               block="two-layer", activation=activation, seeds=seeds, dtype=dtype)
                Xm = X.to(model.dtype)
                U0 = model.U.detach().clone()
                cache0 = model.forward_cached(Xm)
                traj = train(model, data, steps=steps, lr=base_lr, optimizer=opt, loss=loss,
                             batch_size=batch_size, record=("loss",), data_seed=data_seed)
                f = feature_updates(model, U0, cache0, Xm)
                dt = time.perf_counter() - t0
                for b, seed in enumerate(seeds):
                    bad = bool(traj.diverged[b])
                    row = {"optimizer": opt, "correction": corr, "L": L, "width": width,
                           "seed": seed, "lr": base_lr}
                    for k, v in f.items():
                        row[k] = np.nan if bad else float(v[b].mean())
                        row[f"{k}_first"] = np.nan if bad else float(v[b, 0])
                    row["loss0"] = float(traj.loss[0, b])
                    row["loss_final"] = float(traj.loss[-1, b])
                    row["diverged"] = bad
                    row["seconds"] = dt / len(seeds)
                    rows.append(row)
    return pd.DataFrame(rows)
