"""Errors of a trajectory against a reference (docs/theory.md §3.1, §3.2).

Shapes: ``h_last (K+1, B, N, D)``, ``outputs (K+1, B, N, d_out)``, ``hidden (..., S+1, N, D)``.
``B`` indexes repetitions. A reference with ``B = 1`` is broadcast against every repetition.

Diverged repetitions (a non-finite entry at step ``k``, or ``k >= diverged_at``) are excluded
from the aggregate at that step and counted; they are never replaced by zeros. A step where every
repetition is excluded gives NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ErrorStats",
    "embedding_error",
    "error_stats",
    "max_layer_mean_abs",
    "max_layer_mean_abs_error",
    "output_error",
]


def _field(obj: Any, name: str, role: str) -> np.ndarray:
    """The array ``name`` of a Trajectory-like object (or ``obj`` itself if it is an array)."""
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        value = getattr(obj, name, None)
        if value is None:
            raise ValueError(f"{role}: has no {name!r} array (record it when training)")
        arr = np.asarray(value)
    if arr.ndim != 4:
        raise ValueError(f"{role}.{name}: expected shape (K+1, B, N, C), got {arr.shape}")
    return arr


def _diverged_at(obj: Any, steps: int, batch: int) -> np.ndarray:
    """(B,) first diverged step per repetition; ``steps`` (never) if unknown."""
    div = getattr(obj, "diverged_at", None)
    out = np.full(batch, steps, dtype=np.int64)
    if div is None:
        return out
    div = np.asarray(div).reshape(-1)
    if div.shape[0] not in (1, batch):
        return out
    div = np.broadcast_to(div, (batch,))
    return np.where(div >= 0, div, steps).astype(np.int64)


class ErrorStats:
    """Per-step error statistics of ``traj`` against ``ref`` for one field.

    - ``mse``: (K+1, B) mean squared difference per repetition (NaN where excluded)
    - ``rms``: (K+1,) ``sqrt`` of the mean of ``mse`` over the included repetitions
    - ``n_used``, ``n_excluded``: (K+1,) repetitions included / excluded at each step
    """

    def __init__(self, mse: np.ndarray) -> None:
        self.mse = mse
        ok = np.isfinite(mse)
        self.n_used = ok.sum(axis=1)
        self.n_excluded = (~ok).sum(axis=1)
        total = np.where(ok, mse, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.rms = np.where(self.n_used > 0, np.sqrt(total / np.maximum(self.n_used, 1)), np.nan)

    @property
    def per_repetition(self) -> np.ndarray:
        """(K+1, B) RMS error of each repetition (NaN where excluded)."""
        return np.sqrt(self.mse)


def error_stats(traj: Any, ref: Any, field: str = "h_last") -> ErrorStats:
    """Squared-error statistics of ``traj.field`` against the first coordinates of ``ref.field``.

    ``traj`` and ``ref`` are Trajectory-like objects (or the arrays themselves), with arrays
    ``(K+1, B, N, C)`` and ``(K+1, B or 1, N, C_ref)``, ``C <= C_ref``. For ``h_last`` the
    comparison uses ``ref[..., :D]`` (coupled randomness: a network of dimension ``D`` shares the
    first ``D`` rows of the reference's ``W_e``, ``W_u``); for ``outputs`` ``C`` must equal ``C_ref``.
    """
    a = _field(traj, field, "traj")
    r = _field(ref, field, "ref")
    steps, batch, n, c = a.shape
    if r.shape[0] != steps:
        raise ValueError(f"ref.{field}: has {r.shape[0] - 1} steps, traj has {steps - 1}")
    if r.shape[1] not in (1, batch):
        raise ValueError(f"ref.{field}: batch {r.shape[1]} must be 1 or equal traj's batch {batch}")
    if r.shape[2] != n:
        raise ValueError(f"ref.{field}: {r.shape[2]} samples, traj has {n}")
    if field == "h_last":
        if r.shape[3] < c:
            raise ValueError(f"ref.h_last: dimension {r.shape[3]} is smaller than traj's D = {c}")
        r = r[..., :c]
    elif r.shape[3] != c:
        raise ValueError(f"ref.{field}: last axis {r.shape[3]}, traj has {c}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = a.astype(np.float64) - r.astype(np.float64)
        mse = np.mean(diff * diff, axis=(2, 3))  # (K+1, B)
    k = np.arange(steps)[:, None]
    bad = ~np.isfinite(mse)
    bad |= k >= _diverged_at(traj, steps, batch)[None, :]
    bad |= k >= _diverged_at(ref, steps, r.shape[1])[None, :]
    mse = np.where(bad, np.nan, mse)
    return ErrorStats(mse)


def _error(traj: Any, ref: Any, field: str, per_repetition: bool, return_counts: bool):
    stats = error_stats(traj, ref, field)
    err = stats.per_repetition if per_repetition else stats.rms
    return (err, stats.n_excluded) if return_counts else err


def embedding_error(traj: Any, ref: Any, per_repetition: bool = False, return_counts: bool = False):
    """RMS embedding error ``sqrt(mean_{b,n,d<=D} (h_L - h_L^ref[..., :D])^2)`` per step.

    ``traj.h_last (K+1, B, N, D)``, ``ref.h_last (K+1, B or 1, N, D_ref >= D)``.
    Returns (K+1,) (aggregate over included repetitions) or (K+1, B) with ``per_repetition``
    (NaN for excluded repetitions); with ``return_counts`` also (K+1,) excluded counts.
    """
    return _error(traj, ref, "h_last", per_repetition, return_counts)


def output_error(traj: Any, ref: Any, per_repetition: bool = False, return_counts: bool = False):
    """RMS output error ``sqrt(mean_{b,n,j} (y - y^ref)^2)`` per step.

    ``traj.outputs (K+1, B, N, d_out)``, ``ref.outputs (K+1, B or 1, N, d_out)``. Returns as
    :func:`embedding_error`.
    """
    return _error(traj, ref, "outputs", per_repetition, return_counts)


def max_layer_mean_abs_error(
    hidden: np.ndarray,
    ref_hidden: np.ndarray,
    depth: np.ndarray | None = None,
    ref_depth: np.ndarray | None = None,
) -> np.ndarray:
    """Linear-experiment metric of docs/theory.md §3.2: ``max_l mean_{n,d} |h_{l,d} - H_d(s_l)|``.

    ``hidden (..., S+1, N, D)`` (layers on axis -3), ``ref_hidden (..., S_ref+1, N, D_ref)`` with
    ``D_ref >= D`` (first ``D`` coordinates compared) and leading axes broadcastable (e.g.
    ``Trajectory.hidden (K+1, B, S+1, N, D)`` against a limit's ``(K+1, 1, S+1, N, D_ref)``).
    If ``depth (S+1,)`` and ``ref_depth (S_ref+1,)`` are given, the reference is linearly
    interpolated in depth onto ``depth``; otherwise the depth axes must match. Returns the leading
    shape ``(...)``; NaN where the record is non-finite (average over runs is the caller's).
    """
    h = np.asarray(hidden, dtype=np.float64)
    r = np.asarray(ref_hidden, dtype=np.float64)
    if h.ndim < 3:
        raise ValueError(f"hidden: expected shape (..., S+1, N, D), got {h.shape}")
    if r.ndim < 3:
        raise ValueError(f"ref_hidden: expected shape (..., S+1, N, D), got {r.shape}")
    if r.shape[-1] < h.shape[-1]:
        raise ValueError(f"ref_hidden: dimension {r.shape[-1]} is smaller than hidden's D = {h.shape[-1]}")
    if r.shape[-2] != h.shape[-2]:
        raise ValueError(f"ref_hidden: {r.shape[-2]} samples, hidden has {h.shape[-2]}")
    r = r[..., : h.shape[-1]]
    if (depth is None) != (ref_depth is None):
        raise ValueError("depth: give both depth and ref_depth, or neither")
    if depth is not None:
        s = np.asarray(depth, dtype=np.float64).reshape(-1)
        sr = np.asarray(ref_depth, dtype=np.float64).reshape(-1)
        if s.shape[0] != h.shape[-3] or sr.shape[0] != r.shape[-3]:
            raise ValueError("depth: lengths must match the layer axes of hidden and ref_hidden")
        if np.any(np.diff(sr) <= 0) or s.min() < sr[0] - 1e-12 or s.max() > sr[-1] + 1e-12:
            raise ValueError("ref_depth: must be increasing and cover depth")
        j = np.clip(np.searchsorted(sr, s, side="right") - 1, 0, sr.shape[0] - 2)
        w = ((s - sr[j]) / (sr[j + 1] - sr[j]))[:, None, None]
        r = np.take(r, j, axis=-3) * (1 - w) + np.take(r, j + 1, axis=-3) * w
    elif r.shape[-3] != h.shape[-3]:
        raise ValueError(f"ref_hidden: {r.shape[-3]} depth points, hidden has {h.shape[-3]} (give depth)")
    with np.errstate(invalid="ignore", over="ignore"):
        return max_layer_mean_abs(h - r)


def max_layer_mean_abs(diff: np.ndarray) -> np.ndarray:
    """The reduction of :func:`max_layer_mean_abs_error` for a difference already formed:
    ``max_l mean_{n,d} |diff_{l,n,d}|`` for ``diff (..., S+1, N, D)`` (layers on axis -3), shape
    ``(...)``; NaN where any layer's mean is non-finite (a diverged record is never a number).

    The one implementation of the paper's metric: the experiments call it on differences of
    their own making (a limit built from coefficients, a difference of two limits)."""
    d = np.asarray(diff)
    if d.ndim < 3:
        raise ValueError(f"diff: expected shape (..., S+1, N, D), got {d.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        per_layer = np.mean(np.abs(d), axis=(-2, -1))  # (..., S+1)
    bad = ~np.all(np.isfinite(per_layer), axis=-1)
    out = np.max(np.where(np.isfinite(per_layer), per_layer, -np.inf), axis=-1)
    return np.where(bad, np.nan, out)
