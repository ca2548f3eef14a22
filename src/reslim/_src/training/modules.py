"""Many seeds of one ``nn.Module`` trained as one computation (the generic trainer on modules).

``modules`` are ``B`` instances of one architecture and shape (one per seed). Their parameters
are stacked (``torch.func.stack_module_state``) and one network's step is mapped over them
with ``vmap`` through ``torch.func.functional_call`` on the first instance::

    y_b = module(X; theta_b)      theta_b <- theta_b - lr(name) dR_b/dtheta_b   (or Adam)

Learning rates are per parameter *name*: from the module's own ``learning_rates(optimizer, lr)``
(the built-in :class:`Transformer`) or from a :class:`ParamGroups` of a user's module
(:func:`reslim.param_groups`), whose forward multipliers are then applied to the parameters
before the call (``forward_scales``): the user's ``forward`` stays as written.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .data import Dataset
from .divergence import DIVERGENCE_FACTOR
from .generic import train_batched
from .trajectory import Trajectory


def _accepts_states(module: nn.Module) -> bool:
    return "states" in inspect.signature(module.forward).parameters


def stacked_parameters(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter of ``modules`` by name, stacked along a leading network axis (copies)."""
    if not modules:
        raise ValueError("modules must hold at least one network")
    names = [n for n, _ in modules[0].named_parameters()]
    for m in modules[1:]:
        if [n for n, _ in m.named_parameters()] != names:
            raise ValueError("modules must share their parameter names (one architecture)")
        for (n, p), q in zip(modules[0].named_parameters(), m.parameters(), strict=True):
            if p.shape != q.shape:
                raise ValueError(f"parameter {n!r} has shapes {tuple(p.shape)} and {tuple(q.shape)} "
                                 f"in two modules (one shape per batch)")
    params, _ = stack_module_state(list(modules))
    return {n: t.detach() for n, t in params.items()}


@torch.no_grad()
def load_stacked(modules: Sequence[nn.Module], params: Mapping[str, torch.Tensor]) -> None:
    """Write stacked parameters back into ``modules`` (network ``b`` into ``modules[b]``)."""
    for b, m in enumerate(modules):
        for n, p in m.named_parameters():
            p.copy_(params[n][b])


def module_forward(template: nn.Module, forward_scales: Mapping[str, float] | None = None,
                   buffers: Mapping[str, torch.Tensor] | None = None
                   ) -> tuple[Callable, Callable | None]:
    """``(forward, states)`` functions of one network's parameters for :func:`train_batched`:
    ``functional_call(template, params * forward_scales, X)``; ``states`` when the module's
    ``forward`` takes ``states=True`` (a dict with ``y`` and per-layer states), else None."""
    scales = dict(forward_scales or {})
    bufs = dict(buffers or {})

    def scaled(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {n: (t * scales[n] if scales.get(n, 1.0) != 1.0 else t) for n, t in p.items()}
        out.update(bufs)
        return out

    def forward(p: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        return functional_call(template, scaled(p), (X,))

    if not _accepts_states(template):
        return forward, None

    def states(p: dict[str, torch.Tensor], X: torch.Tensor) -> dict[str, torch.Tensor]:
        return functional_call(template, scaled(p), (X,), {"states": True})

    return forward, states


def train_modules(
    modules: Sequence[nn.Module],
    data: Dataset,
    *,
    steps: int,
    lr: float | Sequence[float] = 1.0,
    optimizer: str = "gd",
    groups: Any = None,
    lrs: Mapping[str, Any] | None = None,
    forward_scales: Mapping[str, float] | None = None,
    loss: str = "sum",
    batch_size: int | None = None,
    record: Iterable[str] = ("loss", "outputs"),
    data_seed: int = 0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    param_callback: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    threads: int | None = None,
) -> Trajectory:
    """Train ``modules`` (``B`` seeds of one architecture and shape) in place as one computation.

    Learning rates per parameter name, from the first of: ``lrs`` (name -> learning rate,
    used as given); ``groups``, a :class:`ParamGroups` of the first module (its per-role
    rates, already holding its base rate, times ``lr``, which then defaults to a factor 1;
    its forward multipliers are applied to the parameters); the module's
    ``learning_rates(optimizer, lr)``.
    ``lr`` may hold one value per network. Everything else as for :func:`reslim.train`;
    ``record`` may name ``h_last`` and ``hidden`` when the module's ``forward`` takes
    ``states=True``.
    """
    modules = list(modules)
    params = stacked_parameters(modules)
    B = len(modules)
    like = next(iter(params.values()))
    if isinstance(lr, (int, float)):
        base: float | torch.Tensor = float(lr)
    else:
        base = torch.tensor([float(v) for v in lr], dtype=like.dtype)
        if base.numel() != B:
            raise ValueError(f"lr has {base.numel()} values for {B} networks")
    scales = dict(forward_scales or {})
    if lrs is not None:
        rates = dict(lrs)
    elif groups is not None:
        rates = {n: base * groups.lr[groups.roles[n]] for n in groups.trained_names()}
        scales = {**groups.forward_scales(), **scales}
    elif hasattr(modules[0], "learning_rates"):
        first: Any = modules[0]  # nn.Module's __getattr__ types attributes as tensors or modules
        rates = first.learning_rates(optimizer, base)
    else:
        raise ValueError("give lrs= or groups= (the module has no learning_rates method)")
    forward, states = module_forward(modules[0], scales)
    meta: dict[str, Any] = {"modules": type(modules[0]).__name__, "networks": B}
    shape = getattr(modules[0], "shape", None)
    if shape is not None:
        meta["shape"] = tuple(shape.as_tuple())
    param = getattr(modules[0], "param", None)
    if param is not None:
        meta["parameterization"] = getattr(param, "name", str(param))
    L = getattr(shape, "L", None)
    res = train_batched(
        forward, params, data, lrs=rates, steps=steps, optimizer=optimizer, loss=loss,
        batch_size=batch_size, record=record, states=states, data_seed=data_seed,
        adam_betas=adam_betas, adam_eps=adam_eps, callback=callback, param_callback=param_callback,
        divergence_factor=divergence_factor, meta=meta, threads_=threads,
        depth=None if L is None else np.arange(L + 1) / L)
    load_stacked(modules, res.params)
    return res.trajectory
