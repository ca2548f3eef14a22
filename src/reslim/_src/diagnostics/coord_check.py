"""Coordinate checks over ``L``, ``M``, ``D`` (and ``width`` = M and D together, and ``alpha``):
how each layer's activations and their updates scale with the size of the network.

For one parameterization, sweep one axis (the others fixed at ``base``), train ``B`` seeds
together for ``K`` steps and record, per seed, step ``k`` and layer ``l``, the RMS over samples
and coordinates of

    h   = h_l(0)                    hidden state at initialisation        (l = 0..L)
    p   = p_l(0)                    pre-activation at initialisation      (l = 0..L-1)
    y   = y(0)                      output at initialisation
    dh  = h_l(k) - h_l(0)           change of the hidden state since init  (l = 1..L)
    dp  = p_l(k) - p_l(0)           change of the pre-activation since init
    du  = m_U (U_l(k) - U_l(0))^T h_l(k)   the part of dp made by the block's own weights
                                    (one-layer blocks: m_W (W_l(k) - W_l(0)) sigma(h_l(k)))
    dy  = y(k) - y(0)               change of the output since init

``dp`` also moves when only the block's input ``h_l`` moves; ``du`` isolates how far the units
themselves moved (the "every unit moves by Θ(1)" of MLU, docs/theory.md §1). Depth positions are
depth fractions: ``first`` (p, du: l = 0), ``mid`` (l = L/2), ``last`` (p, du: l = L-1; h: l = L)
and ``all`` (RMS over layers).

The exponent of a quantity along an axis is the least-squares slope of ``log RMS`` against
``log size`` (RMS pooled over seeds; its standard error from the per-seed slopes). A quantity
is ``Θ(1)`` when ``|exponent| <= tol``, ``→0`` below ``-tol``, ``→∞`` above ``tol`` (or when a
network diverged). ``tol = 1/4``: every scaling rule of the presets is a power ``1/2``-multiple,
so 1/4 is the midpoint between "constant" and the nearest wrong rule (docs/regimes.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..models.resnet import ResNet
from ..scaling.parameterization import Parameterization, get_parameterization
from ..scaling.shapes import Shape
from ..training import trainer
from ..training.data import Dataset, gaussian_data
from ..training.trainer import train

AXES = ("L", "M", "D", "width", "alpha")
DEFAULT_BASE = Shape(8, 256, 64)
DEFAULT_SIZES: dict[str, tuple[float, ...]] = {
    "L": (2, 4, 8, 16, 32),
    "M": (32, 64, 128, 256, 512),
    "D": (32, 64, 128, 256, 512),
    "width": (32, 64, 128, 256),
    "alpha": (1, 2, 4, 8, 16),
}
QUANTITIES = ("h", "p", "y", "dh", "dp", "du", "dy")
UPDATES = ("dh", "dp", "du", "dy")
POSITIONS = ("first", "mid", "last", "all")
TOL = 0.25

# words for the trend of each kind of quantity: (→0, Θ(1), →∞)
_REGIME = {
    "dp": ("lazy", "feature learning", "unstable"),
    "dh": ("lazy", "feature learning", "unstable"),
    "du": ("lazy", "feature learning", "unstable"),
    "dy": ("output frozen", "output learns", "unstable"),
    "h": ("vanishing", "stable", "unstable"),
    "p": ("vanishing", "stable", "unstable"),
    "y": ("vanishing", "stable", "unstable"),
}


def _check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    return axis


def _point(param: Parameterization, axis: str, size: float, base: Shape) -> tuple[Shape, Parameterization]:
    """The shape and parameterization of one point of a sweep along ``axis``."""
    if axis == "alpha":
        if not (size > 0):
            raise ValueError(f"sizes along alpha must be positive, got {size!r}")
        return base, replace(param, alpha=float(size))
    if axis == "width":  # D = size, M = size * M_base / D_base (muP's single "width")
        return Shape(base.L, max(1, round(size * base.M / base.D)), int(size)), param
    dims = dict(zip(("L", "M", "D"), base.as_tuple(), strict=True))
    dims[axis] = int(size)
    return Shape(**dims), param


def _rms(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sqrt(np.mean(np.square(a), axis=axes))


def measure(
    param: str | Parameterization = "mlu",
    axis: str = "L",
    sizes: Sequence[float] | None = None,
    *,
    base: Shape | Sequence[int] | str = DEFAULT_BASE,
    block: str = "two-layer",
    activation: str = "tanh",
    optimizer: str = "gd",
    lr: float = 0.1,
    steps: int = 3,
    loss: str = "mean",
    seeds: Sequence[int] = (0, 1, 2, 3),
    data: Dataset | None = None,
    param_options: dict[str, Any] | None = None,
    threads: int | None = 1,
) -> pd.DataFrame:
    """Raw per-layer records of a sweep along ``axis``: one row per (size, seed, step, quantity,
    layer) with the RMS ``value`` (columns ``param, optimizer, axis, size, L, M, D, alpha, seed,
    step, quantity, layer, n_layers, value``). Update rows (``dh, dp, du, dy``) exist for
    ``step = 1..steps``; ``h, p, y`` rows are at ``step = 0``. Default data: 10 Gaussian samples,
    ``d_in = d_out = 5`` (docs/theory.md §3.1). ``threads``: torch intra-op threads while measuring
    (the matrices are small: one thread is several times faster on a shared machine; None keeps
    the current setting).
    """
    axis = _check_axis(axis)
    p = get_parameterization(param, **(param_options or {}))
    base = Shape.parse(base)
    sizes = tuple(DEFAULT_SIZES[axis] if sizes is None else sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least two values along {axis}, got {list(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct, got {list(sizes)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    seeds = [int(v) for v in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one network")
    data = data if data is not None else gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    with trainer.threads(None if threads is None else int(threads)):  # the one thread-budget helper
        frames = _sweep(p, axis, sizes, base, block, activation, optimizer, lr, steps, loss, seeds, data)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "optimizer", optimizer)
    out.insert(0, "param", p.name)
    out.insert(2, "axis", axis)
    return out


def _sweep(p, axis, sizes, base, block, activation, optimizer, lr, steps, loss, seeds, data):
    frames = []
    for size in sizes:
        shape, pp = _point(p, axis, size, base)
        model = ResNet(shape, param=pp, d_in=data.d_in, d_out=data.d_out, block=block,
                       activation=activation, seeds=seeds)
        role = model.block_roles[0]
        snaps: list[np.ndarray] = []

        def snapshot(k, loss, model=model, role=role, snaps=snaps):
            snaps.append(getattr(model, role).detach().to("cpu", torch.float64).numpy().copy())

        with np.errstate(all="ignore"):
            traj = train(model, data, steps=steps, lr=lr, optimizer=optimizer, loss=loss,
                         record=("outputs", "hidden", "pre"), callback=snapshot)
            du = _unit_updates(model, role, snaps, traj.hidden)
            frames.append(_records(traj, du, shape, pp, size, seeds))
    return frames


def _unit_updates(model: ResNet, role: str, snaps: list[np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """RMS of ``du`` per step, seed and layer, (K+1, B, L); NaN from a step where the run stopped.

    ``snaps[k]`` (L, B, D, cols) are the block weights after ``k`` updates; ``hidden[k]``
    (B, L+1, N, D) the hidden states.
    """
    K1, B, L1 = hidden.shape[:3]
    out = np.full((K1, B, L1 - 1), np.nan)
    m = model.mult(role)
    for k in range(min(K1, len(snaps))):
        dW = snaps[k] - snaps[0]
        h = hidden[k][:, :-1]  # (B, L, N, D)
        if role == "U":
            delta = np.einsum("lbdm,blnd->blnm", dW, h)
        else:
            a = model.activation.fn(torch.from_numpy(h)).numpy()
            delta = np.einsum("lbde,blne->blnd", dW, a)
        out[k] = m * _rms(delta, (2, 3))
    return out


def _records(traj, du: np.ndarray, shape: Shape, p: Parameterization, size: float,
             seeds: list[int]) -> pd.DataFrame:
    """Long table of RMS values from one trajectory (hidden (K+1,B,L+1,N,D), pre (K+1,B,L,N,M))."""
    K1, B = traj.loss.shape
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("seed", "step", "quantity", "layer",
                                                         "n_layers", "value")}

    def add(quantity: str, vals: np.ndarray, step0: bool) -> None:
        if vals.ndim == 2:  # (K+1, B) -> (K+1, B, 1)
            vals = vals[..., None]
        n = vals.shape[2]
        ks = [0] if step0 else list(range(1, K1))
        for k in ks:
            cols["seed"].append(np.repeat(seeds, n))
            cols["step"].append(np.full(B * n, k))
            cols["quantity"].append(np.full(B * n, quantity, dtype=object))
            cols["layer"].append(np.tile(np.arange(n), B))
            cols["n_layers"].append(np.full(B * n, n))
            cols["value"].append(vals[k].reshape(-1))

    hid, pre, out = traj.hidden, traj.pre, traj.outputs
    add("h", _rms(hid, (3, 4)), True)
    add("p", _rms(pre, (3, 4)), True)
    add("y", _rms(out, (2, 3)), True)
    add("dh", _rms(hid - hid[:1], (3, 4)), False)
    add("dp", _rms(pre - pre[:1], (3, 4)), False)
    add("du", du, False)
    add("dy", _rms(out - out[:1], (2, 3)), False)
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    df.insert(0, "alpha", p.alpha)
    df.insert(0, "D", shape.D)
    df.insert(0, "M", shape.M)
    df.insert(0, "L", shape.L)
    df.insert(0, "size", float(size))
    return df


def _position_layers(quantity: str, n_layers: int) -> dict[str, list[int]]:
    """Layer indices of each depth position. ``h``/``dh`` (l = 0..L): skip the embedding h_0
    and use no ``first`` (h_1 - h_0 is one block's output, O(1/L) by design)."""
    if quantity in ("y", "dy"):
        return {"out": [0]}
    if quantity in ("h", "dh"):
        L = n_layers - 1
        if L == 0:
            return {"all": [0]}
        return {"mid": [max(1, L // 2)], "last": [L], "all": list(range(1, L + 1))}
    L = n_layers
    return {"first": [0], "mid": [L // 2], "last": [L - 1], "all": list(range(L))}


def trend(exponent: float, tol: float = TOL) -> str:
    """``"→0"``, ``"Θ(1)"`` or ``"→∞"`` for a fitted exponent (NaN -> ``"n/a"``)."""
    if math.isnan(exponent):
        return "n/a"
    if exponent > tol:
        return "→∞"
    if exponent < -tol:
        return "→0"
    return "Θ(1)"


def fit_exponents(records: pd.DataFrame, tol: float = TOL) -> pd.DataFrame:
    """Exponent of every (quantity, position, step) along the swept axis.

    Columns: ``param, optimizer, axis, quantity, position, step, exponent, stderr, trend,
    regime, sizes, values`` (``values``: the seed-pooled RMS at each size). A diverged network
    (non-finite RMS) gives ``exponent = inf``; an RMS that is exactly zero gives NaN.
    """
    if not (tol > 0):
        raise ValueError(f"tol must be positive, got {tol!r}")
    rows = []
    for (param, opt, axis), grp in records.groupby(["param", "optimizer", "axis"], sort=False):
        sizes = np.array(sorted(grp["size"].unique()), dtype=float)
        x = np.log(sizes)
        seeds = np.array(sorted(grp["seed"].unique()))
        B = len(seeds)
        for (quantity, step), g in grp.groupby(["quantity", "step"], sort=False):
            per_pos: dict[str, list[np.ndarray]] = {}
            for size in sizes:
                gs = g[g["size"].to_numpy() == size]
                n_layers = int(gs["n_layers"].iloc[0])
                arr = np.full((B, n_layers), np.nan)
                arr[np.searchsorted(seeds, gs["seed"].to_numpy()), gs["layer"].to_numpy()] = \
                    gs["value"].to_numpy()
                for pos, layers in _position_layers(quantity, n_layers).items():
                    per_pos.setdefault(pos, []).append(_rms(arr[:, layers], (1,)))
            for pos, vals in per_pos.items():
                V = np.stack(vals)  # (n_sizes, B)
                pooled = _rms(V, (1,))
                exponent, stderr = _slope(x, pooled, V)
                t = trend(exponent, tol)
                lo, mid, hi = _REGIME[quantity]
                regime = {"→0": lo, "Θ(1)": mid, "→∞": hi}.get(t, "n/a")
                rows.append({
                    "param": param, "optimizer": opt, "axis": axis, "quantity": quantity,
                    "position": pos, "step": int(step), "exponent": exponent, "stderr": stderr,
                    "trend": t, "regime": regime, "sizes": tuple(sizes.tolist()),
                    "values": tuple(pooled.tolist()),
                })
    return pd.DataFrame(rows)


def _slope(x: np.ndarray, pooled: np.ndarray, per_seed: np.ndarray) -> tuple[float, float]:
    if not np.all(np.isfinite(pooled)):
        return math.inf, math.nan
    if np.any(pooled <= 0):
        return math.nan, math.nan
    exponent = float(np.polyfit(x, np.log(pooled), 1)[0])
    stderr = math.nan
    B = per_seed.shape[1]
    if B > 1 and np.all(per_seed > 0):
        slopes = [np.polyfit(x, np.log(per_seed[:, b]), 1)[0] for b in range(B)]
        stderr = float(np.std(slopes, ddof=1) / math.sqrt(B))
    return exponent, stderr


_FEATURES = ("du", "dp", "dh")


def classify(exponents: pd.DataFrame, step: int | None = None, tol: float = TOL) -> pd.DataFrame:
    """One verdict per (param, optimizer, axis) at ``step`` (default: the last step).

    - ``unstable``: some quantity (activation at init or update) grows (exponent > tol), or a
      network diverged;
    - ``lazy``: nothing grows and the layer-averaged unit update ``du``, pre-activation update
      ``dp`` or hidden-state update ``dh`` vanishes (exponent < -tol);
    - ``feature learning``: ``du``, ``dp`` and ``dh`` are Θ(1) at every depth position;
    - ``partial``: otherwise (some depth positions vanish, e.g. the first layer's ``du``).

    Columns: ``param, optimizer, axis, step, verdict, reasons`` and the exponents ``du, du_first,
    dp, dp_first, dh_last, dy, h`` (``du``/``dp``: layer-averaged RMS; ``h``: at init).
    """
    rows = []
    for (param, opt, axis), grp in exponents.groupby(["param", "optimizer", "axis"], sort=False):
        k = int(grp["step"].max()) if step is None else int(step)
        g = grp[(grp["step"] == k) | grp["quantity"].isin(("h", "p", "y"))]
        ex = {(r.quantity, r.position): r.exponent for r in g.itertuples()}

        def t(q: str, pos: str, ex=ex) -> str:
            return trend(ex.get((q, pos), math.nan), tol)

        def fmt(e: float) -> str:
            return "diverged" if e == math.inf else f"{e:+.2f}"

        growing = [f"{q}[{pos}] {fmt(e)}" for (q, pos), e in ex.items() if trend(e, tol) == "→∞"]
        vanish = [f"{q}[{pos}] {fmt(e)}" for (q, pos), e in ex.items()
                  if q in _FEATURES and trend(e, tol) == "→0"]
        if growing:
            verdict, reasons = "unstable", growing
        elif any(t(q, "all") == "→0" for q in _FEATURES):
            verdict, reasons = "lazy", vanish
        elif vanish:
            verdict, reasons = "partial", vanish
        else:
            verdict, reasons = "feature learning", []
        row = {"param": param, "optimizer": opt, "axis": axis, "step": k, "verdict": verdict,
               "reasons": "; ".join(reasons)}
        for name, key in (("du", ("du", "all")), ("du_first", ("du", "first")),
                          ("dp", ("dp", "all")), ("dp_first", ("dp", "first")),
                          ("dh_last", ("dh", "last")), ("dy", ("dy", "out")), ("h", ("h", "all"))):
            row[name] = ex.get(key, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def coord_check(
    param: str | Parameterization = "mlu",
    axis: str | Iterable[str] = ("L", "M", "D"),
    sizes: Sequence[float] | dict[str, Sequence[float]] | None = None,
    *,
    tol: float = TOL,
    **options: Any,
) -> pd.DataFrame:
    """Coordinate check of ``param`` along one or several axes: the exponent table.

    Returns :func:`fit_exponents`' DataFrame for every requested axis; ``df.attrs["records"]``
    holds the raw per-layer records (:func:`measure`) and ``df.attrs["verdicts"]`` the
    :func:`classify` summary. ``sizes``: one list (single axis) or a dict axis -> list.
    Other keyword options go to :func:`measure` (``base, block, activation, optimizer, lr,
    steps, loss, seeds, data, param_options``).
    """
    axes = [axis] if isinstance(axis, str) else list(axis)
    if not axes:
        raise ValueError("axis must name at least one of L, M, D, alpha")
    for a in axes:
        _check_axis(a)
    if sizes is not None and not isinstance(sizes, dict) and len(axes) > 1:
        raise ValueError("sizes must be a dict axis -> sizes when several axes are checked")
    records = []
    for a in axes:
        s = sizes.get(a) if isinstance(sizes, dict) else sizes
        records.append(measure(param, a, s, **options))
    rec = pd.concat(records, ignore_index=True)
    out = fit_exponents(rec, tol)
    out.attrs["records"] = rec
    out.attrs["verdicts"] = classify(out, tol=tol)
    out.attrs["tol"] = tol
    return out


def exponent_table(
    params: Iterable[str | Parameterization] | None = None,
    axes: Iterable[str] = ("L", "M", "D"),
    *,
    tol: float = TOL,
    **options: Any,
) -> pd.DataFrame:
    """The measured exponent table of several parameterizations (default: every preset that
    supports the block): one row per (param, axis) with the :func:`classify` columns."""
    from ..scaling.parameterization import PRESETS

    block = options.get("block", "two-layer")
    if params is None:
        params = [n for n in PRESETS if get_parameterization(n).supports(block)]
    frames = [coord_check(p, tuple(axes), tol=tol, **options).attrs["verdicts"] for p in params]
    return pd.concat(frames, ignore_index=True)


def markdown_table(summary: pd.DataFrame) -> str:
    """A :func:`classify` / :func:`exponent_table` summary as a Markdown table, one row per
    parameterization, exponents of ``du`` (layer mean / first layer), ``dp``, ``dh_L``, ``dy``."""
    axes = list(dict.fromkeys(summary["axis"]))
    head = ["param"] + [f"{a}: du, du first, dp, dh_L, dy -> verdict" for a in axes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v: float) -> str:
        return "div" if v == math.inf else ("n/a" if math.isnan(v) else f"{v:+.2f}")

    for param, g in summary.groupby("param", sort=False):
        cells = [str(param)]
        for a in axes:
            r = g[g["axis"] == a]
            if r.empty:
                cells.append("")
                continue
            r = r.iloc[0]
            cells.append(f"{f(r.du)}, {f(r.du_first)}, {f(r.dp)}, {f(r.dh_last)}, {f(r.dy)} "
                         f"-> {r.verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _span_decades(ax, decades: float) -> None:
    """Widen a log y-axis to at least ``decades`` decades, so a flat curve looks flat."""
    lo, hi = ax.get_ylim()
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return
    if math.log10(hi / lo) < decades:
        mid = math.sqrt(lo * hi)
        half = 10 ** (decades / 2)
        ax.set_ylim(mid / half, mid * half)


def plot_coord_check(exponents: pd.DataFrame, path: str, step: int | None = None) -> str:
    """Draw RMS against size (log-log) for every quantity and depth position, one row of
    panels per axis, at ``step`` (default last); save a PNG at ``path`` and return it."""
    import matplotlib
    from matplotlib.figure import Figure

    axes = list(dict.fromkeys(exponents["axis"]))
    quantities = QUANTITIES  # the output y included
    initial = ("h", "p", "y")  # measured at initialisation, not at a step
    positions = list(dict.fromkeys(exponents["position"]))
    cmap = matplotlib.colormaps["tab10"]
    colour = {pos: cmap(n % 10) for n, pos in enumerate(positions)}  # one colour per position, all panels
    fig = Figure(figsize=(2.9 * len(quantities), 2.9 * len(axes) + 0.4))
    grid = fig.subplots(len(axes), len(quantities), squeeze=False)
    param = exponents["param"].iloc[0]
    opt = exponents["optimizer"].iloc[0]
    for i, a in enumerate(axes):
        ea = exponents[exponents["axis"] == a]
        k = int(ea["step"].max()) if step is None else step
        for j, q in enumerate(quantities):
            ax = grid[i][j]
            eq = ea[(ea["quantity"] == q) & ((ea["step"] == k) | (q in initial))]
            for r in eq.itertuples():
                vals = np.array(r.values, dtype=float)
                vals[~np.isfinite(vals)] = np.nan
                style = "-" if r.position == "all" else "--"
                ax.plot(r.sizes, vals, style, marker="o", ms=3, color=colour[r.position],
                        label=f"{r.position} ({r.exponent:+.2f})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            _span_decades(ax, 1.5)
            sizes = list(eq["sizes"].iloc[0]) if not eq.empty else []
            ax.set_xticks(sizes, [f"{v:g}" for v in sizes], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel(a)
            title = q if q in initial else f"{q} at k={k}"
            ax.set_title(f"{title}", fontsize=9)
            ax.legend(fontsize=6)
        grid[i][0].set_ylabel("RMS")
    fig.suptitle(f"coordinate check: {param} ({opt})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
