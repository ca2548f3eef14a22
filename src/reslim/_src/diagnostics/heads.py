"""Per-head movement in Transformers: how far each attention head's query, key, value and output
move per step as ``L``, ``M`` (heads per layer) or ``D`` grow (docs/transformers.md).

For attention sub-block ``l``, head ``j`` and step ``k`` (GD, the weights after ``k`` updates,
``u = norm(h_l)`` the block's input at step ``k``), the RMS over samples, tokens and coordinates
of::

    dq = m_Q (Q_j(k) - Q_j(0))^T u      dk, dv alike (K, V)
    do = m_O (O_j(k) - O_j(0)) c_j      c_j = sum_t' a_j(t, t') v_j(t'), the head's context

pooled (RMS) over layers and heads; the exponent along the swept axis is the least-squares slope
of ``log RMS`` against ``log size``, as in the coordinate check (``Θ(1)`` within ``tol = 1/4``).
The theory (theory.md §5) predicts ``Θ(1)`` along ``L``, ``M`` and ``D`` under MLU, and
``M^-1/2`` along ``M`` under a ``1/sqrt(M)`` head aggregation (preset ``mlu-sqrt-heads``).
These are entrywise changes of forward quantities (``q, k, v`` in R^r, the head's output
``phi_j = O_j c_j`` in R^D before the branch), not changes relative to the initial weights.

The prediction is asymptotic: ``L M >> D r_v`` (the value path is linear in the state, which
grows like ``exp(D r_v / (2 L M))`` at init, and the Monte-Carlo term ``sqrt(D/(L M))``) and
``D`` large enough for ``|u|^2 / D`` and the head-readout overlaps to concentrate (a ``1/D``
excess, e.g. 1.35-1.5x at ``D = 4``, about 4x at ``D = 2``). :data:`SWEEPS` are sweeps inside that regime
(docs/transformers.md has the measurements outside it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..models.attention import AttentionBlock
from ..models.transformer import Transformer
from ..scaling.shapes import Shape
from ..training.data import Dataset
from ..training.modules import train_modules
from .coord_check import TOL, _slope, trend

HEAD_QUANTITIES = ("dq", "dk", "dv", "do")
AXES = ("L", "M", "D")

#: default sweeps per axis, ``(sizes, (L, M, D) base)``, in the regime of the MLU limit:
#: ``L M / (D r_v) >= 8`` at every point (``r_v = 2``) and ``D >= 8`` (``D >= 16`` along ``D``)
SWEEPS: dict[str, tuple[tuple[int, ...], tuple[int, int, int]]] = {
    "M": ((8, 16, 32, 64), (64, 16, 8)),
    "L": ((4, 8, 16, 32, 64), (16, 64, 8)),
    "D": ((16, 32, 64, 128), (32, 64, 8)),
}


def sequence_data(N: int = 10, T: int = 4, d_in: int = 5, d_out: int = 5, seed: int = 0) -> Dataset:
    """``N`` sequences of ``T`` tokens, i.i.d. N(0, 1) inputs (flattened (N, T d_in)) and
    targets (N, d_out): the setting of theory.md §5."""
    rng = np.random.default_rng(seed)
    return Dataset(rng.standard_normal((N, T * d_in)), rng.standard_normal((N, d_out)),
                   name=f"sequences(N={N}, T={T}, d_in={d_in}, d_out={d_out}, seed={seed})",
                   info={"T": T})


STATS = ("rms", "median")


@torch.no_grad()
def _head_values(net: Transformer, start: dict[str, torch.Tensor], X: torch.Tensor,
                 stat: str = "rms") -> dict[str, float]:
    """dq, dk, dv, do: ``stat="rms"``, the RMS over samples, tokens, coordinates, heads and
    attention layers; ``"median"``, each head's RMS over samples, tokens and coordinates, then
    the median over heads and layers (robust to the few heads that dominate the RMS outside the
    regime ``L M >> D r_v``)."""
    st = net(X, states=True)
    sums = {q: 0.0 for q in HEAD_QUANTITIES}
    count = {q: 0 for q in HEAD_QUANTITIES}
    per_head: dict[str, list[torch.Tensor]] = {q: [] for q in HEAD_QUANTITIES}
    for l, block in enumerate(net.blocks):
        if not isinstance(block, AttentionBlock):
            continue
        h = st["hidden"][l]
        u = h if block.norm is None else block.norm(h)
        d = {n: getattr(block, n) - start[f"blocks.{l}.{n}"] for n in ("Q", "K", "V", "O")}
        m = block.m
        parts = {
            "dq": m["Q"] * torch.einsum("ntd,mdr->nmtr", u, d["Q"]),
            "dk": m["K"] * torch.einsum("ntd,mdr->nmtr", u, d["K"]),
            "dv": m["V"] * torch.einsum("ntd,mdr->nmtr", u, d["V"]),
        }
        q = m["Q"] * torch.einsum("ntd,mdr->nmtr", u, block.Q)
        k = m["K"] * torch.einsum("ntd,mdr->nmtr", u, block.K)
        v = m["V"] * torch.einsum("ntd,mdr->nmtr", u, block.V)
        logits = torch.matmul(q, k.transpose(-1, -2)) * block.logit
        if block.causal:
            T = u.shape[-2]
            logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        ctx = torch.matmul(torch.softmax(logits, -1), v)  # (N, M, T, r_v)
        parts["do"] = m["O"] * torch.einsum("nmtr,mdr->nmtd", ctx, d["O"])
        for name, t in parts.items():
            sums[name] += float(t.square().sum())
            count[name] += t.numel()
            per_head[name].append(t.square().mean(dim=(0, 2, 3)).sqrt())  # (M,)
    if stat == "median":
        return {n: float(torch.cat(per_head[n]).median()) if per_head[n] else math.nan
                for n in HEAD_QUANTITIES}
    return {n: math.sqrt(sums[n] / count[n]) if count[n] else math.nan for n in HEAD_QUANTITIES}


def head_movement(
    param: Any = "mlu",
    axis: str = "M",
    sizes: Sequence[int] = (2, 4, 8, 16),
    *,
    base: Shape | Sequence[int] | str = (4, 4, 16),
    steps: int = 2,
    lr: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2),
    data: Dataset | None = None,
    seq_len: int = 4,
    stat: str = "rms",
    **model_options: Any,
) -> pd.DataFrame:
    """Records (``param, axis, size, seed, step, quantity, value``) of the per-head movement
    along ``axis`` (GD, ``steps`` steps, loss ``mean``), the other sizes at ``base``; ``stat``
    pools the heads (``"rms"`` or ``"median"`` of the per-head RMS, :func:`_head_values`)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
    if len(set(sizes)) < 2:
        raise ValueError(f"sizes needs at least two distinct values, got {list(sizes)}")
    base = Shape.parse(base)
    data = data if data is not None else sequence_data(T=seq_len)
    X = torch.as_tensor(data.X)
    rows = []
    for size in sizes:
        shape = Shape(**{**dict(zip(AXES, base.as_tuple(), strict=True)), axis: int(size)})
        nets = [Transformer(shape, param=param, d_in=data.d_in // seq_len, d_out=data.d_out, seq_len=seq_len,
                            seed=s, **model_options) for s in seeds]
        starts = [{n: p.detach().clone() for n, p in net.named_parameters()} for net in nets]
        for k in range(1, steps + 1):
            with np.errstate(all="ignore"):
                train_modules(nets, data, steps=1, lr=lr, loss="mean", threads=None)
            for seed, net, start in zip(seeds, nets, starts, strict=True):
                for name, value in _head_values(net, start, X, stat).items():
                    rows.append({"param": nets[0].param.name, "axis": axis, "size": float(size),
                                 "seed": int(seed), "step": k, "quantity": name, "value": value})
    return pd.DataFrame(rows)


def head_exponents(records: pd.DataFrame, tol: float = TOL) -> pd.DataFrame:
    """Exponent (seed-pooled RMS against size), its standard error from per-seed slopes, and
    the trend, per (param, axis, quantity, step)."""
    out = []
    for (param, axis, quantity, step), g in records.groupby(["param", "axis", "quantity", "step"],
                                                            sort=False):
        piv = g.pivot_table(index="size", columns="seed", values="value")
        sizes = piv.index.to_numpy(dtype=float)
        V = piv.to_numpy()
        pooled = np.sqrt(np.mean(np.square(V), axis=1))
        exponent, stderr = _slope(np.log(sizes), pooled, V)
        out.append({"param": param, "axis": axis, "quantity": quantity, "step": int(step),
                    "exponent": exponent, "stderr": stderr, "trend": trend(exponent, tol),
                    "sizes": tuple(sizes.tolist()), "values": tuple(pooled.tolist())})
    return pd.DataFrame(out)


def norm_comparison(
    param: Any = "mlu",
    axis: str = "M",
    sizes: Sequence[int] | None = None,
    *,
    base: Shape | Sequence[int] | str | None = None,
    norms: Sequence[str | None] = (None, "layer", "rms"),
    steps: int = 2,
    lr: float = 0.05,
    seeds: Sequence[int] = (0, 1, 2),
    **model_options: Any,
) -> pd.DataFrame:
    """What a pre-norm (LayerNorm/RMSNorm, outside the theory) does to the per-head movement:
    per ``norm``, quantity and the last step, the exponent along ``axis`` (:data:`SWEEPS` unless
    ``sizes``/``base`` are given), its standard error, the seed-pooled movement at the sweep's
    sizes and its ratio to the run without a norm (``ratio`` needs ``None`` among ``norms``)."""
    default, default_base = SWEEPS.get(axis, ((), (16, 16, 8)))
    sizes = tuple(sizes) if sizes is not None else default
    base = base if base is not None else default_base
    rows = []
    for norm in norms:
        rec = head_movement(param, axis, sizes, base=base, steps=steps, lr=lr, seeds=seeds, norm=norm,
                            **model_options)
        ex = head_exponents(rec)
        for r in ex[ex["step"] == steps].itertuples():
            rows.append({"norm": "none" if norm is None else norm, "axis": axis, "quantity": r.quantity,
                         "exponent": r.exponent, "stderr": r.stderr, "sizes": r.sizes, "values": r.values})
    out = pd.DataFrame(rows)
    plain = {r.quantity: np.asarray(r.values) for r in out[out["norm"] == "none"].itertuples()}
    out["ratio"] = [float(np.exp(np.mean(np.log(np.asarray(r.values) / plain[r.quantity]))))
                    if r.quantity in plain else math.nan for r in out.itertuples()]
    return out
