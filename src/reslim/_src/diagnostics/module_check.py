"""The coordinate check on any residual ``nn.Module``: a user's own model (through
:func:`reslim.param_groups`) or a built-in one, along any axis the factory varies.

``factory(size, seed)`` returns one network at ``size`` (a module, or ``(module, ParamGroups)``
for a user's module whose forward multipliers the groups apply). The ``B`` seeds of a size are
trained together (:func:`train_modules`: ``vmap`` over stacked parameters); at every step
``k = 0..K`` each network is run with forward hooks on its blocks (``blocks``: the attribute
path of the ``nn.ModuleList`` of residual blocks) and on the ``nn.Linear`` layers that hold its
input-role weights, and the records are those of :func:`reslim.diagnostics.coord_check`::

    h  = h_l(0) (l = 0..L: the input of block 0, then every block's output)
    p  = p_l(0) (the outputs of block l's input-role linear maps, multipliers applied; a block
                 without such nn.Linears that has ``input_maps`` (the built-in Transformer's
                 attention and MLP sub-blocks, heads stacked) gives them itself)
    y  = y(0);  dh, dp, dy: their changes since init at step k
    du = s (W_l(k) - W_l(0)) x_l(k)   the part of dp made by the block's own input weights
                                      (s: the weight's forward factor)

so :func:`fit_exponents` and :func:`classify` give the same exponent table and verdicts
(every step, not only the last).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..scaling.parameterization import Parameterization
from ..scaling.role_table import role_info
from ..scaling.user_roles import Scaled
from ..training.data import Dataset, gaussian_data
from ..training.modules import load_stacked, train_modules
from .coord_check import TOL, classify, fit_exponents
from .coord_check import coord_check as builtin_coord_check

Factory = Callable[[float, int], Any]


def _submodule(module: nn.Module, path: str) -> nn.Module:
    out = module
    for part in path.split("."):
        out = getattr(out, part)
    return out


def _input_linears(module: nn.Module, groups: Any,
                   blocks: nn.ModuleList) -> dict[int, list[tuple[str, nn.Linear]]]:
    """Block index -> the (parameter name, nn.Linear) pairs whose weight has an input role."""
    if groups is None:
        return {}
    out: dict[int, list[tuple[str, nn.Linear]]] = {}
    for i, block in enumerate(blocks):
        for sub in block.modules():
            if not isinstance(sub, nn.Linear):
                continue
            full = [n for n, p in module.named_parameters() if p is sub.weight]
            if not full:
                continue
            role = groups.roles.get(full[0])
            if role is not None and role_info(groups.parameterization, role).kind == "input":
                out.setdefault(i, []).append((full[0], sub))
    return out


class _Probe:
    """Forward hooks collecting h_l, the input-role linear maps' inputs and outputs."""

    def __init__(self, blocks: nn.ModuleList, linears: dict[int, list[tuple[str, nn.Linear]]]) -> None:
        self.hidden: list[torch.Tensor] = []
        self.x: dict[tuple[int, str], torch.Tensor] = {}
        self.p: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []

        def first_input(_m, args):
            self.hidden.append(args[0].detach())

        def block_output(_m, _args, out):
            self.hidden.append((out[0] if isinstance(out, tuple) else out).detach())

        self.handles.append(blocks[0].register_forward_pre_hook(first_input))
        for b in blocks:
            self.handles.append(b.register_forward_hook(block_output))
        for i, pairs in linears.items():
            for name, lin in pairs:
                def lin_hook(_m, args, out, key=(i, name)):
                    self.x[key] = args[0].detach()
                    self.p[key] = out.detach()
                self.handles.append(lin.register_forward_hook(lin_hook))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _rms(t: torch.Tensor) -> float:
    return math.sqrt(float(t.double().square().mean()))


def _point(factory: Factory, size: float, seeds: Sequence[int], data: Dataset, blocks: str,
           steps: int, lr: float, optimizer: str, loss: str) -> tuple[list[dict[str, Any]], str]:
    """Records of one size (every seed, every step) and the parameterization's name."""
    made = [factory(size, int(s)) for s in seeds]
    modules = [m[0] if isinstance(m, tuple) else m for m in made]
    groups = made[0][1] if isinstance(made[0], tuple) else None
    X = torch.as_tensor(data.X).to(next(modules[0].parameters()).dtype)
    shape = groups.shape if groups is not None else getattr(modules[0], "shape", None)
    param = groups.parameterization if groups is not None else getattr(modules[0], "param", None)
    label = str(getattr(param, "name", type(modules[0]).__name__))
    extra = {"L": getattr(shape, "L", np.nan), "M": getattr(shape, "M", np.nan),
             "D": getattr(shape, "D", np.nan), "alpha": float(getattr(param, "alpha", math.nan))}
    scales = groups.forward_scales() if groups is not None else {}
    callers = [Scaled(m, scales) if groups is not None else m for m in modules]
    block_lists: list[Any] = [_submodule(m, blocks) for m in modules]
    if not isinstance(block_lists[0], nn.ModuleList) or len(block_lists[0]) == 0:
        raise ValueError(f"{blocks!r} must name a non-empty nn.ModuleList of residual blocks")
    linears = [_input_linears(m, groups, bl) for m, bl in zip(modules, block_lists, strict=True)]
    # blocks that expose their input-role maps themselves (the built-in Transformer's stacked heads)
    native = [{i: blk for i, blk in enumerate(bl)
               if groups is None and i not in li and hasattr(blk, "input_maps")}
              for bl, li in zip(block_lists, linears, strict=True)]
    native0 = [{i: {n: getattr(blk, n).detach().clone() for n in blk.input_weights}
                for i, blk in nat.items()} for nat in native]
    state0: list[dict[str, Any]] = [{} for _ in modules]
    weights0 = [{n: lin.weight.detach().clone() for pairs in li.values() for n, lin in pairs}
                for li in linears]
    rows: list[dict[str, Any]] = []

    def observe(k: int, params: dict[str, torch.Tensor]) -> None:
        load_stacked(modules, params)
        for b, (call, bl, li) in enumerate(zip(callers, block_lists, linears, strict=True)):
            probe = _Probe(bl, li)
            try:
                with torch.no_grad():
                    y = call(X)
            finally:
                probe.close()
            hid = probe.hidden
            pre = {i: torch.cat([probe.p[(i, n)].reshape(-1) for n, _ in pairs]) for i, pairs in li.items()}
            du = {}
            for i, pairs in li.items():
                parts = []
                for n, lin in pairs:
                    delta = torch.nn.functional.linear(probe.x[(i, n)], lin.weight.detach() - weights0[b][n])
                    parts.append((scales.get(n, 1.0) * delta).reshape(-1))
                du[i] = torch.cat(parts)
            with torch.no_grad():
                for i, blk in native[b].items():
                    pre[i] = blk.input_maps(hid[i])
                    du[i] = blk.input_maps(hid[i], {n: getattr(blk, n).detach() - native0[b][i][n]
                                                    for n in blk.input_weights})
            seed = int(seeds[b])

            def add(quantity: str, layer: int, n_layers: int, value: float, seed: int = seed) -> None:
                rows.append({"size": float(size), **extra, "seed": seed, "step": k, "quantity": quantity,
                             "layer": layer, "n_layers": n_layers, "value": value})

            if k == 0:
                state0[b] = {"hidden": hid, "pre": pre, "y": y.detach()}
                for l, h in enumerate(hid):
                    add("h", l, len(hid), _rms(h))
                for i, p in pre.items():
                    add("p", i, len(bl), _rms(p))
                add("y", 0, 1, _rms(y))
                continue
            s0 = state0[b]
            for l, h in enumerate(hid):
                add("dh", l, len(hid), _rms(h - s0["hidden"][l]))
            for i, p in pre.items():
                add("dp", i, len(bl), _rms(p - s0["pre"][i]))
                add("du", i, len(bl), _rms(du[i]))
            add("dy", 0, 1, _rms(y - s0["y"]))

    with np.errstate(all="ignore"):
        train_modules(modules, data, steps=steps, lr=1.0 if groups is not None else lr,
                      optimizer=optimizer, loss=loss, groups=groups, param_callback=observe)
    return rows, label


def measure_modules(
    factory: Factory,
    sizes: Sequence[float],
    data: Dataset | None = None,
    *,
    axis: str = "D",
    blocks: str = "blocks",
    steps: int = 3,
    lr: float = 0.1,
    optimizer: str = "gd",
    loss: str = "mean",
    seeds: Sequence[int] = (0, 1, 2, 3),
    name: str | None = None,
) -> pd.DataFrame:
    """Raw per-layer records of a sweep of ``factory`` over ``sizes`` (the columns of
    :func:`reslim.diagnostics.measure`: ``param, optimizer, axis, size, L, M, D, alpha, seed, step,
    quantity, layer, n_layers, value``). ``lr``: the base rate of a module's own
    ``learning_rates``; a factory that returns ``ParamGroups`` sets its rates there (build them
    with the ``optimizer`` family used here)."""
    if len(set(sizes)) < 2:
        raise ValueError(f"sizes needs at least two distinct values, got {list(sizes)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    data = data if data is not None else gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    rows: list[dict[str, Any]] = []
    label = name
    for size in sizes:
        point, point_label = _point(factory, size, seeds, data, blocks, steps, lr, optimizer, loss)
        rows += point
        label = label or point_label
    df = pd.DataFrame(rows)
    df.insert(0, "axis", axis)
    df.insert(0, "optimizer", optimizer)
    df.insert(0, "param", label)
    cols = ["param", "optimizer", "axis", "size", "L", "M", "D", "alpha", "seed", "step", "quantity",
            "layer", "n_layers", "value"]
    return df[cols]


def coord_check_modules(factory: Factory, sizes: Sequence[float], data: Dataset | None = None, *,
                        tol: float = TOL, **options: Any) -> pd.DataFrame:
    """:func:`reslim.diagnostics.coord_check` for any module: the exponent table of
    :func:`fit_exponents` (every step), with ``attrs["records"]`` (:func:`measure_modules`)
    and ``attrs["verdicts"]`` (:func:`classify`, last step)."""
    rec = measure_modules(factory, sizes, data, **options)
    out = fit_exponents(rec, tol)
    out.attrs["records"] = rec
    out.attrs["verdicts"] = classify(out, tol=tol)
    out.attrs["tol"] = tol
    return out


def coord_check(param: Any = "mlu", axis: Any = ("L", "M", "D"), sizes: Any = None, *,
                tol: float = TOL, **options: Any) -> pd.DataFrame:
    """:func:`reslim.diagnostics.coord_check` for a preset (the built-in ResNet, unchanged) or
    for a module factory: ``coord_check(factory, "D", (32, 64, 128), data=..., steps=...)``
    sweeps ``factory(size, seed)`` along the one named axis (:func:`coord_check_modules`)."""
    if callable(param) and not isinstance(param, (str, Parameterization)):
        if not isinstance(axis, str):
            raise ValueError("a module factory is checked along one axis per call (axis='D', ...)")
        if sizes is None:
            raise ValueError("a module factory needs sizes=(...) along its axis")
        return coord_check_modules(param, sizes, options.pop("data", None), axis=axis, tol=tol, **options)
    return builtin_coord_check(param, axis, sizes, tol=tol, **options)
