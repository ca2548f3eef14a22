"""The depth-aware correction of two-layer depth-muP blocks, pinned down (docs/depth.md).

Two-layer blocks ``p_l = m_U U_l^T h_l``, ``h_{l+1} = h_l + beta m_V V_l sigma(p_l)`` under
``depth-mup-corrected`` (``correction = c``: U lr times ``L^c``; ``balance = b``: V init times
``L^-b`` and, for SGD, the U lr times a further ``L^b``). For every (optimizer, variant, L, seed)
one step at the base lr from initialisation gives (RMS over samples and coordinates)::

    dp_own_1  = RMS( m_U dU_l^T h_l )          first internal layer's own feature update, block mean
    df_1      = RMS( y_1 - y_0 )               function (output) update of the step
    df_U_1    = RMS( y(U_1, V_0) - y_0 )       its U share (U updated, V kept at init)
    df_V_1    = RMS( y(U_0, V_1) - y_0 )       its V share

and ``K`` steps give ``df_step = sqrt(mean_k RMS(y_{k+1} - y_k)^2)`` (the per-step function update
along training) and ``dp_own_K`` (the own feature update after ``K`` steps). A power count
(docs/depth.md) predicts, per unit base lr::

    dp_own ~ L^(c - 1/2),   df_U ~ L^(c - b),   df_V ~ L^0

so no ``c`` keeps both ``dp_own`` and ``df`` flat at ``b = 0``, while ``c = b = 1/2`` keeps all flat.

Optimal lr: for every (optimizer, variant, L) an lr sweep (``base_lr * 2^k`` on a grid, every
seed) trained ``K_sweep`` steps; ``eta*(L)`` is :func:`reslim.diagnostics.transfer.optimal_lr` of
the seed-mean final loss (a diverged seed makes the mean ``+inf``), and its drift is the slope of
``log eta*`` on ``log L`` (a power-law exponent; t-interval of the regression over depths).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..models.resnet import ResNet
from ..scaling.parameterization import Parameterization, get_parameterization
from ..training.data import Dataset
from ..training.trainer import train
from .depth import _check_depths, _check_seeds, feature_updates, fit_depth_exponents
from .transfer import optimal_lr

#: variant name -> (correction c, balance b) of ``depth-mup-corrected`` (c = b = 0: depth-muP)
VARIANTS: dict[str, tuple[float, float]] = {
    "depth-mup": (0.0, 0.0),
    "corrected": (0.5, 0.0),
    "balanced": (0.5, 0.5),
}

UPDATE_METRICS = ("dp_own_1", "df_1", "df_U_1", "df_V_1", "df_step", "dp_own_K")

#: exponents of ``~ L^p`` the power count predicts (per variant (c, b)); ``None``: no prediction
def predicted_exponent(metric: str, correction: float, balance: float) -> float | None:
    c, b = float(correction), float(balance)
    if metric in ("dp_own_1", "dp_own_K"):
        return c - 0.5
    if metric == "df_U_1":
        return c - b
    if metric == "df_V_1":
        return 0.0
    if metric in ("df_1", "df_step"):
        return max(c - b, 0.0)  # the larger share wins as L grows
    return None


def variant_param(correction: float, balance: float = 0.0, alpha: float = 1.0) -> Parameterization:
    """``depth-mup`` when ``correction = balance = 0``, else ``depth-mup-corrected``."""
    if correction < 0 or balance < 0:
        raise ValueError(f"correction and balance must be >= 0, got {correction}, {balance}")
    if correction == 0 and balance == 0:
        return get_parameterization("depth-mup", alpha=alpha)
    return get_parameterization("depth-mup-corrected", alpha=alpha, correction=float(correction),
                                balance=float(balance))


def _rms_bn(t: torch.Tensor) -> np.ndarray:
    """(B, N, d) -> (B,) RMS over samples and outputs."""
    return t.square().mean(dim=(-1, -2)).sqrt().to(torch.float64).cpu().numpy()


def _outputs_with(model: ResNet, X: torch.Tensor, **weights: torch.Tensor) -> torch.Tensor:
    """Outputs with some block weights temporarily replaced (restored afterwards)."""
    saved = {k: getattr(model, k).detach().clone() for k in weights}
    try:
        with torch.no_grad():
            for k, v in weights.items():
                getattr(model, k).copy_(v)
            return model.forward_cached(X).y
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                getattr(model, k).copy_(v)


def update_metrics(model: ResNet, data: Dataset, *, lr: float, optimizer: str, steps: int,
                   batch_size: int | None = None, loss: str = "sum", data_seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """:data:`UPDATE_METRICS` of a fresh two-layer ``model`` (trained in place); (B,) arrays,
    plus ``loss0``, ``loss_final`` and ``diverged`` (NaN metrics for a diverged network)."""
    if model.block != "two-layer":
        raise ValueError("block must be two-layer for the depth-aware correction")
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    X = torch.as_tensor(data.X, dtype=model.dtype, device=model.device)
    init = {r: t.detach().clone() for r, t in model.role_tensors().items()}
    U0, V0 = init["U"], init["V"]
    cache0 = model.forward_cached(X)
    y0 = cache0.y
    t1 = train(model, data, steps=1, lr=lr, optimizer=optimizer, loss=loss, batch_size=batch_size,
               record=("loss",), data_seed=data_seed)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        y1 = model.forward_cached(X).y
        out["dp_own_1"] = feature_updates(model, U0, cache0, X)["dp_own"].mean(axis=1)
        out["df_1"] = _rms_bn(y1 - y0)
        out["df_U_1"] = _rms_bn(_outputs_with(model, X, V=V0) - y0)
        out["df_V_1"] = _rms_bn(_outputs_with(model, X, U=U0) - y0)
        for r, t in model.role_tensors().items():
            t.copy_(init[r])
    # K steps from the same initialisation (Adam's moments start afresh)
    tk = train(model, data, steps=steps, lr=lr, optimizer=optimizer, loss=loss, batch_size=batch_size,
               record=("loss", "outputs"), data_seed=data_seed)
    y = tk.require("outputs")  # (K+1, B, N, d_out)
    with np.errstate(invalid="ignore"):
        out["df_step"] = np.sqrt(np.mean((y[1:] - y[:-1]) ** 2, axis=(0, 2, 3)))
    out["dp_own_K"] = feature_updates(model, U0, cache0, X)["dp_own"].mean(axis=1)
    bad = np.asarray(tk.diverged, dtype=bool) | np.asarray(t1.diverged, dtype=bool)
    for k in UPDATE_METRICS:
        out[k] = np.where(bad, np.nan, out[k])
    out["loss0"] = tk.loss[0]
    out["loss_final"] = tk.loss[-1]
    out["diverged"] = bad
    return out


@dataclass(frozen=True)
class CorrectionStudy:
    """``updates``: one row per (optimizer, variant, L, seed) with :data:`UPDATE_METRICS`;
    ``sweep``: one row per (optimizer, variant, L, lr, seed) with ``final_loss``;
    ``optima``: one row per (optimizer, variant, L) with ``lr_star``, ``loss_star``, ``edge``."""

    updates: pd.DataFrame
    sweep: pd.DataFrame
    optima: pd.DataFrame

    def exponents(self, metrics: Sequence[str] = UPDATE_METRICS, n_boot: int = 1000) -> pd.DataFrame:
        """Fitted ``~ L^p`` per (optimizer, variant) for every metric and for ``lr_star``, with the
        power count's prediction (``predicted``) where it makes one."""
        fits = fit_depth_exponents(self.updates, metrics, by=("optimizer", "variant"), n_boot=n_boot)
        rows = [fits]
        if len(self.optima):
            o = self.optima.assign(seed=0)
            rows.append(fit_depth_exponents(o, ["lr_star"], by=("optimizer", "variant"), n_boot=0))
        out = pd.concat(rows, ignore_index=True)
        cb = (self.updates.groupby("variant")[["correction", "balance"]].first().to_dict("index")
              if len(self.updates) else {})
        out["predicted"] = [
            predicted_exponent(m, cb[v]["correction"], cb[v]["balance"]) if v in cb else None
            for m, v in zip(out["metric"], out["variant"], strict=True)
        ]
        out["predicted"] = out["predicted"].astype(float)
        return out


def _variants(variants: Mapping[str, tuple[float, float]] | Sequence[str]) -> dict[str, tuple[float, float]]:
    if isinstance(variants, Mapping):
        out = {str(k): (float(v[0]), float(v[1])) for k, v in variants.items()}
    else:
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)} "
                             "(or pass a mapping name -> (correction, balance))")
        out = {v: VARIANTS[v] for v in variants}
    if not out:
        raise ValueError("variants must name at least one variant")
    return out


def correction_study(
    data: Dataset,
    *,
    depths: Sequence[int] = (2, 4, 8, 16, 32, 64),
    width: int = 32,
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence[str] = ("sgd", "adam"),
    variants: Mapping[str, tuple[float, float]] | Sequence[str] = tuple(VARIANTS),
    lr: Mapping[str, float] | float | None = None,
    steps: int = 10,
    sweep_octaves: tuple[float, float] | None = (-4.0, 4.0),
    sweep_step: float = 0.5,
    sweep_steps: int = 30,
    batch_size: int | None = None,
    loss: str = "sum",
    activation: str = "tanh",
    dtype: str = "float64",
    data_seed: int = 0,
) -> CorrectionStudy:
    """Measure the three quantities of the correction against depth (module docstring).

    ``lr``: base lr per optimizer (default SGD 0.1, Adam 0.02) for the update metrics and the
    centre of the sweep ``lr * 2^k``, ``k`` from ``sweep_octaves[0]`` to ``[1]`` in steps of
    ``sweep_step`` (``sweep_octaves=None``: no sweep). ``batch_size=None``: full batch.
    """
    depths = _check_depths(depths)
    seeds = _check_seeds(seeds)
    vars_ = _variants(variants)
    base = {"sgd": 0.1, "gd": 0.1, "adam": 0.02}
    if lr is not None:
        base.update(lr if isinstance(lr, Mapping) else {o: float(lr) for o in optimizers})
    up_rows, sw_rows, opt_rows = [], [], []
    for opt in optimizers:
        eta = float(base[opt])
        for vname, (c, b) in vars_.items():
            param = variant_param(c, b)
            for L in depths:
                t0 = time.perf_counter()
                model = ResNet((L, width, width), param=param, d_in=data.d_in, d_out=data.d_out,
                               block="two-layer", activation=activation, seeds=seeds, dtype=dtype)
                m = update_metrics(model, data, lr=eta, optimizer=opt, steps=steps,
                                   batch_size=batch_size, loss=loss, data_seed=data_seed)
                dt = time.perf_counter() - t0
                for i, seed in enumerate(seeds):
                    row = {"optimizer": opt, "variant": vname, "correction": c, "balance": b, "L": L,
                           "width": width, "seed": seed, "lr": eta}
                    row.update({k: float(m[k][i]) for k in (*UPDATE_METRICS, "loss0", "loss_final")})
                    row["diverged"] = bool(m["diverged"][i])
                    row["seconds"] = dt / len(seeds)
                    up_rows.append(row)
                if sweep_octaves is None:
                    continue
                ks = np.arange(sweep_octaves[0], sweep_octaves[1] + 1e-9, sweep_step)
                lrs = [eta * 2.0 ** k for k in ks]
                net_lrs = [a for a in lrs for _ in seeds]
                net_seeds = [s for _ in lrs for s in seeds]
                model = ResNet((L, width, width), param=param, d_in=data.d_in, d_out=data.d_out,
                               block="two-layer", activation=activation, seeds=net_seeds, dtype=dtype)
                tr = train(model, data, steps=sweep_steps, lr=net_lrs, optimizer=opt, loss=loss,
                           batch_size=batch_size, record=("loss",), data_seed=data_seed)
                final = np.where(tr.diverged | ~np.isfinite(tr.loss[-1]), np.inf, tr.loss[-1])
                for j, (a, s) in enumerate(zip(net_lrs, net_seeds, strict=True)):
                    sw_rows.append({"optimizer": opt, "variant": vname, "L": L, "lr": a, "seed": s,
                                    "final_loss": float(final[j])})
                curve = final.reshape(len(lrs), len(seeds)).mean(axis=1)
                o = optimal_lr(lrs, curve)
                opt_rows.append({"optimizer": opt, "variant": vname, "correction": c, "balance": b,
                                 "L": L, "lr_star": o.lr, "loss_star": o.loss, "edge": o.edge,
                                 "rel_lr_star": o.lr / eta,
                                 "n_diverged": int(np.sum(~np.isfinite(final)))})
    return CorrectionStudy(pd.DataFrame(up_rows), pd.DataFrame(sw_rows), pd.DataFrame(opt_rows))


def plot_correction(study: CorrectionStudy, path=None, metrics: Sequence[str] = ("dp_own_1", "df_1",
                                                                                   "df_step")):
    """Log-log panels against L: each metric and ``lr_star`` (rows: optimizers), one line per
    variant (seed mean, min-max band). Returns a :class:`matplotlib.figure.Figure`."""
    from matplotlib.figure import Figure

    up, op = study.updates, study.optima
    opts = list(dict.fromkeys(up["optimizer"]))
    cols = [*metrics, "lr_star"] if len(op) else list(metrics)
    fig = Figure(figsize=(2.9 * len(cols), 2.5 * len(opts)))
    axes = fig.subplots(len(opts), len(cols), squeeze=False)
    names = {"dp_own_1": "first-layer feature update (1 step)", "df_1": "function update (1 step)",
             "df_step": "per-step function update (K steps)", "dp_own_K": "first-layer update (K steps)",
             "df_U_1": "U share of function update", "df_V_1": "V share of function update",
             "lr_star": "optimal lr eta*"}
    for r, opt in enumerate(opts):
        for j, metric in enumerate(cols):
            ax = axes[r][j]
            src = op if metric == "lr_star" else up
            for vname in dict.fromkeys(src["variant"]):
                g = src[(src["optimizer"] == opt) & (src["variant"] == vname)]
                stats = g.groupby("L")[metric].agg(["mean", "min", "max"])
                Ls = stats.index.to_numpy(float)
                line, = ax.plot(Ls, stats["mean"], "-o", ms=3, label=vname)
                if metric != "lr_star":
                    ax.fill_between(Ls, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{opt}: {names.get(metric, metric)}", fontsize=7)
            ax.set_xlabel("depth L", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6, title="variant", title_fontsize=6)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
    return fig


def correction_table(fits: pd.DataFrame) -> str:
    """Markdown rows ``| optimizer | variant | metric | p [lo, hi] | predicted |``."""
    lines = ["| optimizer | variant | metric | exponent p [95% CI] | power count |", "|---|---|---|---|---|"]
    for _, r in fits.iterrows():
        pred = "" if not math.isfinite(r["predicted"]) else f"{r['predicted']:+.2f}"
        lines.append(f"| {r['optimizer']} | {r['variant']} | {r['metric']} | {r['exponent']:+.2f} "
                     f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] | {pred} |")
    return "\n".join(lines)
