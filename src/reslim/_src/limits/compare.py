"""Distances between trajectories and limits (the measurements of docs/theory.md §3.2).

All functions are pure; networks whose record is NaN (diverged) give NaN, never zero.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..measure.errors import max_layer_mean_abs_error
from ..training.trajectory import Trajectory
from .large_d import LargeDSolution


def _batch(a: np.ndarray, B: int) -> np.ndarray:
    return a if a.shape[1] == B else np.broadcast_to(a, (a.shape[0], B, *a.shape[2:]))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    B = max(a.shape[1], b.shape[1])
    if a.shape[1] not in (1, B) or b.shape[1] not in (1, B):
        raise ValueError(f"trajectories have {a.shape[1]} and {b.shape[1]} networks (need equal or 1)")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"trajectories have {a.shape[0] - 1} and {b.shape[0] - 1} steps")
    return _batch(a, B), _batch(b, B)


def _at(x: np.ndarray, step: int | None) -> np.ndarray:
    if step is None:
        return x
    if not -x.shape[0] <= step < x.shape[0]:
        raise ValueError(f"step must be in 0..{x.shape[0] - 1}, got {step}")
    return x[step]


def output_rms(a: Trajectory, b: Trajectory, step: int | None = None) -> np.ndarray:
    """RMS over samples and outputs of ``a.outputs - b.outputs``: (K+1, B), or (B,) at ``step``."""
    x, y = _pair(a.require("outputs"), b.require("outputs"))
    return _at(np.sqrt(((x - y) ** 2).mean(axis=(2, 3))), step)


def embedding_rms(a: Trajectory, b: Trajectory, step: int | None = None) -> np.ndarray:
    """RMS over samples and coordinates of ``h_last`` differences: (K+1, B), or (B,) at ``step``."""
    if a.h_last is None or b.h_last is None:
        raise ValueError("h_last: both trajectories must record the final embedding")
    x, y = _pair(a.h_last, b.h_last)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"h_last: embedding dimensions differ ({x.shape[-1]} and {y.shape[-1]})")
    return _at(np.sqrt(((x - y) ** 2).mean(axis=(2, 3))), step)


def hidden_distance(a: Trajectory, b: Trajectory, step: int | None = None) -> np.ndarray:
    """Max over the depths both grids share of the RMS (over samples, coordinates) of the
    ``hidden`` difference: (K+1, B), or (B,) at ``step``. Grids ``l / L`` and ``i / S`` share
    the points ``j / gcd(L, S)``."""
    if a.hidden is None or b.hidden is None:
        raise ValueError("hidden: both trajectories must record h on their depth grid")
    ia, ib = np.nonzero(np.abs(a.depth[:, None] - b.depth[None, :]) < 1e-12)
    x, y = _pair(a.hidden[:, :, ia], b.hidden[:, :, ib])
    return _at(np.sqrt(((x - y) ** 2).mean(axis=(3, 4))).max(axis=2), step)


def large_d_embedding_error(finite: Trajectory, limit: LargeDSolution, W_e: np.ndarray, W_u: np.ndarray,
                            step: int = 5) -> np.ndarray:
    """The paper's embedding metric (docs/theory.md §3.2) of a finite network against the large-D
    limit's single sites of its own rows, per network: (B,).

    For network ``b`` with ``hidden`` h_{l,d} (depths l / L) and rows ``W_e[b]`` (D, d_in),
    ``W_u[b]`` (D, d_out): ``max_l mean_{d, n} |h_{l,d}(x_n) - H_d(s_l, x_n)|`` at ``step``,
    where H_d is the limit's single site of the same rows (Hermite-interpolated to s_l); the
    reduction is :func:`reslim.measure.max_layer_mean_abs_error`'s. (Not
    :func:`reslim.measure.embedding_error`, the RMS of ``h_L`` against a reference record.)
    """
    if finite.hidden is None:
        raise ValueError("finite: the trajectory must record hidden (train(..., record=('hidden',)))")
    W_e, W_u = np.asarray(W_e, dtype=np.float64), np.asarray(W_u, dtype=np.float64)
    if W_e.ndim == 2:
        W_e, W_u = W_e[None], W_u[None]
    h = _at(finite.hidden, step)  # (B, L+1, N, D)
    B, D = h.shape[0], h.shape[-1]
    if W_e.shape[0] not in (1, B) or W_e.shape[1] != D or W_u.shape[:2] != W_e.shape[:2]:
        raise ValueError(f"W_e: need (B, D, d_in) with B in (1, {B}) and D = {D}, got {W_e.shape}")
    out = np.empty(B)
    for i in range(B):
        j = i if W_e.shape[0] == B else 0
        H, _ = limit.single_site(W_e[j], W_u[j], depths=finite.depth)  # (K+1, L+1, D, N)
        out[i] = max_layer_mean_abs_error(h[i], np.swapaxes(_at(H, step), -1, -2))
    return out


def embedding_error(finite: Trajectory, limit: LargeDSolution, W_e: np.ndarray, W_u: np.ndarray,
                    step: int = 5) -> np.ndarray:
    """Deprecated alias of :func:`large_d_embedding_error` (the name clashed with
    :func:`reslim.measure.embedding_error`, a different metric)."""
    warnings.warn("reslim.limits.embedding_error is deprecated: use reslim.limits.large_d_embedding_error "
                  "(reslim.measure.embedding_error is another metric)", DeprecationWarning, stacklevel=2)
    return large_d_embedding_error(finite, limit, W_e, W_u, step)
