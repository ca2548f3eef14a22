"""The record both span-reduced solvers return: coefficients a_k(s), c_k(s) of h_k(s) = E a_k(s),
b_k(s) = E c_k(s) in the span of E = [W_e, W_u], on the fine depth grid j / 2S."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Coefficients:
    """Solution of the span-reduced dynamics for ``B`` Gram matrices ``G`` (exact or sampled).

    - ``a``, ``c``: (K+1, B, 2S+1, p, N) forward / backward coefficients on the fine grid
      ``fine_depth`` (j / 2S); h_k(s) = Q a_k(s), b_k(s) = Q c_k(s)
    - ``da``, ``dc``: same shapes, their depth derivatives
    - ``Sigma``: (K+1, B, 2S+1, 2p, 2p) the reduced second moments S_k(s) (exact linear solver;
      ``None`` for the sampled one)
    - ``outputs``: (K+1, B, N, d_out); ``loss``: (K+1, B); ``diverged_at``: (B,)
    - ``G``: (B, p, p); ``d_in``: number of input rows of the p coordinates
    - ``info``: solver details; the sampled solver puts its error estimates here
    """

    a: np.ndarray
    c: np.ndarray
    da: np.ndarray
    dc: np.ndarray
    Sigma: np.ndarray | None
    outputs: np.ndarray
    loss: np.ndarray
    diverged_at: np.ndarray
    G: np.ndarray
    d_in: int
    S: int
    info: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return self.a.shape[0] - 1

    @property
    def depth(self) -> np.ndarray:
        """(S+1,) the output grid i / S."""
        return np.linspace(0.0, 1.0, self.S + 1)

    @property
    def fine_depth(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, 2 * self.S + 1)

    def on_grid(self, name: str) -> np.ndarray:
        """``a`` or ``c`` at the output grid: (K+1, B, S+1, p, N)."""
        return getattr(self, name)[:, :, ::2]

    def at_depths(self, name: str, depths: np.ndarray) -> np.ndarray:
        """``a`` or ``c`` at arbitrary depths in [0, 1] (piecewise cubic Hermite on the fine
        grid, fourth order): (K+1, B, len(depths), p, N)."""
        return hermite_at_depths(getattr(self, name), getattr(self, "d" + name), self.S, depths)


def hermite_at_depths(y: np.ndarray, dy: np.ndarray, S: int, depths: np.ndarray) -> np.ndarray:
    """Values ``y`` (K+1, B, 2S+1, ...) with depth derivatives ``dy`` on the fine grid j / 2S,
    at arbitrary ``depths`` in [0, 1] by piecewise cubic Hermite interpolation (fourth order):
    (K+1, B, len(depths), ...)."""
    s = np.asarray(depths, dtype=np.float64).ravel()
    if s.size and (s.min() < -1e-12 or s.max() > 1 + 1e-12):
        raise ValueError("depths must lie in [0, 1]")
    n = 2 * S
    h = 1.0 / n
    i = np.clip(np.floor(s * n).astype(int), 0, n - 1)
    t = (s - i * h) / h
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    shape = (1, 1, s.size) + (1,) * (y.ndim - 3)
    w = lambda v: v.reshape(shape)  # noqa: E731
    return (w(h00) * y[:, :, i] + w(h10 * h) * dy[:, :, i] + w(h01) * y[:, :, i + 1]
            + w(h11 * h) * dy[:, :, i + 1])
