"""Network shapes ``(L, M, D)`` and the log-spaced integer grids the papers sweep over."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, order=True)
class Shape:
    """Shape of a residual network.

    ``L`` is the depth (number of residual blocks), ``M`` the hidden width (units per block),
    ``D`` the embedding dimension. ``P = L * M * D`` is the parameter count of the blocks
    (up to the factor 2 of two-layer blocks), the budget of docs/theory.md §2.3.
    """

    L: int
    M: int
    D: int

    def __post_init__(self) -> None:
        for name in ("L", "M", "D"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))

    @property
    def P(self) -> int:
        return self.L * self.M * self.D

    @classmethod
    def parse(cls, text: str | Shape | Sequence[int]) -> Shape:
        """``"16,64,64"`` or ``(16, 64, 64)`` -> ``Shape(16, 64, 64)``."""
        if isinstance(text, Shape):
            return text
        if isinstance(text, (tuple, list)):
            parts: list = list(text)
        else:
            parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
        if len(parts) != 3:
            raise ValueError(f"shape must have three entries L,M,D, got {text!r}")
        values = []
        for name, part in zip(("L", "M", "D"), parts, strict=True):
            try:
                values.append(int(str(part).strip()))
            except ValueError:
                raise ValueError(f"{name} must be a positive integer, got {part!r}") from None
        return cls(*values)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.L, self.M, self.D)

    def __str__(self) -> str:
        return f"(L={self.L}, M={self.M}, D={self.D})"


def log_grid(lo: float, hi: float, n: int) -> list[int]:
    """Integers ``floor(10**linspace(log10 lo, log10 hi, n))``, de-duplicated, increasing.

    This is how the papers build their grids: ``log_grid(1.5, 2000, 20)`` gives
    1, 2, 3, 4, 6, 9, 14, ..., 1369, 2000 and ``log_grid(10, 500, 15)`` gives 10, ..., 499.
    """
    if not (lo > 0 and hi >= lo):
        raise ValueError(f"log_grid needs 0 < lo <= hi, got lo={lo!r}, hi={hi!r}")
    n = _positive_int("n", n)
    values = np.floor(10 ** np.linspace(math.log10(lo), math.log10(hi), n)).astype(int)
    out: list[int] = []
    for v in values:
        if v >= 1 and (not out or v != out[-1]):
            out.append(int(v))
    return out
