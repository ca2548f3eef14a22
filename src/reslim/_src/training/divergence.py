"""When a training run has diverged: the criterion shared by :func:`reslim.train`, the
experiment kinds and the limit references (docs/models.md, Training)."""

from __future__ import annotations

import numpy as np

#: A network has diverged at step ``k`` when its loss is non-finite or exceeds
#: ``divergence_factor * max(loss at step 0, DIVERGENCE_FLOOR)`` (docs/models.md, Training).
DIVERGENCE_FACTOR = 1e6
DIVERGENCE_FLOOR = 1.0


def check_divergence_factor(factor: float | None) -> float:
    """The blow-up factor as a float (``None`` or ``inf``: only non-finite losses diverge)."""
    if factor is None:
        return float("inf")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or np.isnan(factor) or factor <= 1:
        raise ValueError(f"divergence_factor must be a number > 1 (or None), got {factor!r}")
    return float(factor)


def blowup_bound(loss0: np.ndarray, factor: float) -> np.ndarray:
    """The loss above which each network has blown up, from its step-0 loss ``(B,)``."""
    loss0 = np.asarray(loss0, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return factor * np.maximum(np.where(np.isfinite(loss0), loss0, 0.0), DIVERGENCE_FLOOR)


def divergence_steps(loss: np.ndarray, factor: float | None = DIVERGENCE_FACTOR) -> np.ndarray:
    """First step of each network's blow-up in a loss record ``(K+1, B)`` (``-1``: none).

    The criterion of :func:`reslim.train`: the loss is non-finite, or above ``factor`` times
    ``max(loss[0], DIVERGENCE_FLOOR)``. Also used for limits' loss records."""
    factor = check_divergence_factor(factor)
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim == 1:
        loss = loss[:, None]
    bad = ~np.isfinite(loss) | (loss > blowup_bound(loss[0], factor))
    return np.where(bad.any(axis=0), bad.argmax(axis=0), -1).astype(np.int64)
