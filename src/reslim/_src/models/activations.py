"""Activations with their derivatives, for the manual backward pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Activation:
    """``fn(p)`` and ``grad(p, a)`` = sigma'(p) given ``a = fn(p)`` (reused where cheaper)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    linear: bool = False


def _gelu_grad(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(p / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * p * p) / math.sqrt(2.0 * math.pi)
    return cdf + p * pdf


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", torch.tanh, lambda p, a: 1.0 - a * a),
    "relu": Activation("relu", torch.relu, lambda p, a: (p > 0).to(p.dtype)),
    "gelu": Activation("gelu", torch.nn.functional.gelu, _gelu_grad),
    "identity": Activation("identity", lambda p: p, lambda p, a: torch.ones_like(p), linear=True),
}


def get_activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
