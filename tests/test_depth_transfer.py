"""The lr-optimum interpolation, the drift per doubling of depth and the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reslim._src.diagnostics.transfer import lr_drift, lr_grid, optima, optimal_lr, verdicts


@pytest.mark.parametrize("x_star", [-1.3, 0.0, 0.49, 2.2])
def test_optimal_lr_recovers_the_vertex_of_a_parabola(x_star):
    lrs = 2.0 ** np.arange(-4, 5)  # log2 grid, step 1
    x = np.log2(lrs)
    # exact parabola in (log2 lr, log loss): the vertex is recovered exactly
    losses = np.exp(0.3 * (x - x_star) ** 2 - 1.0)
    o = optimal_lr(lrs, losses)
    assert not o.edge
    assert math.log2(o.lr) == pytest.approx(x_star, abs=1e-9)
    assert o.loss == pytest.approx(losses.min(), rel=1e-12)  # the least grid loss, not extrapolated
    # plain parabola in the loss itself
    o2 = optimal_lr(lrs, 2.0 + (x - x_star) ** 2, log_loss=False)
    assert math.log2(o2.lr) == pytest.approx(x_star, abs=1e-9)
    # a huge finite loss next to the minimum does not drag the vertex outside its neighbourhood
    o3 = optimal_lr(lrs[:3], [1.0, 0.5, 1e30])
    assert 0.5 * lrs[0] < o3.lr <= lrs[1] and o3.loss == 0.5


def test_optimal_lr_diverged_points_are_infinite_never_zero():
    lrs = [0.25, 0.5, 1.0, 2.0, 4.0]
    # a diverged run (NaN or inf) must never be the optimum
    o = optimal_lr(lrs, [3.0, 2.0, 1.0, np.nan, np.inf])
    assert o.lr == 1.0 and o.index == 2
    assert not o.edge  # bracketed on the left by a finite point, on the right by divergence
    assert math.isfinite(o.loss)
    o = optimal_lr(lrs, [3.0, 2.0, 1.5, 1.2, 1.0])
    assert o.edge and o.lr == 4.0
    o = optimal_lr(lrs, [np.nan] * 5)
    assert math.isnan(o.lr) and o.edge
    with pytest.raises(ValueError, match="increasing"):
        optimal_lr([1.0, 0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        optimal_lr([1.0, 2.0], [1.0])


def test_lr_drift_is_the_slope_per_doubling():
    L = np.array([2, 4, 8, 16, 32, 64])
    assert lr_drift(L, 3.0 * L**-0.5) == pytest.approx(-0.5, abs=1e-12)
    assert lr_drift(L, np.full(6, 0.1)) == pytest.approx(0.0, abs=1e-12)
    assert lr_drift(L, 0.01 * L.astype(float)) == pytest.approx(1.0, abs=1e-12)
    lr = 3.0 * L**0.25
    lr[2] = np.nan  # a depth without an optimum is dropped
    assert lr_drift(L, lr) == pytest.approx(0.25, abs=1e-12)
    assert math.isnan(lr_drift([2, 4], [1.0, np.nan]))
    with pytest.raises(ValueError, match="positive"):
        lr_drift([0, 2], [1.0, 1.0])


def test_lr_grid():
    assert lr_grid(1.0, 2, 1) == [0.25, 0.5, 1.0, 2.0]
    assert len(lr_grid(0.5, 2, 2, 0.5)) == 9
    with pytest.raises(ValueError, match="center"):
        lr_grid(-1.0, 1, 1)


def _synthetic_sweep(drift: float, deeper: float) -> pd.DataFrame:
    """Losses exp(0.5 (x - x*(L))^2) * c(L) with x*(L) = 1 + drift log2 L, two seeds."""
    rows = []
    for L in (2, 4, 8, 16):
        xs = 1.0 + drift * math.log2(L)
        for lr in 2.0 ** np.arange(-6, 9):
            for seed in (0, 1):
                loss = math.exp(0.5 * (math.log2(lr) - xs) ** 2) * (1 + deeper * math.log2(L))
                if math.log2(lr) > xs + 3.5:
                    loss = math.inf  # diverged
                rows.append({"dataset": "d", "param": "p", "width": 8, "L": L, "lr": float(lr),
                             "seed": seed, "final_loss": loss * (1 + 1e-3 * seed),
                             "diverged": not math.isfinite(loss)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("drift,deeper,transfers,helps", [(0.0, -0.1, True, True), (0.8, 0.05, False, False)])
def test_optima_and_verdicts(drift, deeper, transfers, helps):
    df = _synthetic_sweep(drift, deeper)
    opt = optima(df)
    assert len(opt) == 4
    np.testing.assert_allclose(opt["log2_lr_star"], 1.0 + drift * np.log2([2, 4, 8, 16]), atol=1e-6)
    assert (opt["n_diverged"] > 0).all()
    v = verdicts(opt, threshold=0.25).iloc[0]
    assert v["drift"] == pytest.approx(drift, abs=1e-6)
    assert v["transfers"] == transfers
    assert v["deeper_helps"] == helps
    assert v["deeper_never_worse"] == helps
    with pytest.raises(ValueError, match="threshold"):
        verdicts(opt, threshold=0.0)
