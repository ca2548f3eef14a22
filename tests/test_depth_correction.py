"""The depth-aware correction of two-layer depth-muP blocks, pinned down (docs/depth.md).

Measured exponents of ``~ L^p`` (width 32, L = 2, 8, 32, 3 seeds, 256 digits, full batch): the first
internal layer's own feature update ``dp_own``, the function update ``df`` (and its U share) of one
step at a fixed base lr, and the drift of the optimal lr ``eta*(L)`` (width 16). At width 16 the
one-step exponents are too noisy to pin (SGD depth-muP's ``dp_own``: -0.63 [-0.85, +0.02]). Every
bound can fail: each variant's exponents sit about 0.5 away from another variant's.
"""

from __future__ import annotations

import numpy as np
import pytest

from reslim._src.diagnostics.correction import (
    VARIANTS,
    correction_study,
    predicted_exponent,
    update_metrics,
    variant_param,
)
from reslim._src.models.resnet import ResNet
from reslim._src.scaling.parameterization import get_parameterization
from reslim._src.training.data import digits, gaussian_data
from reslim._src.training.trainer import train

DEPTHS = (2, 8, 32)


@pytest.fixture(scope="module")
def data():
    return digits(n_train=256)


@pytest.fixture(scope="module")
def study(data):
    return correction_study(data, depths=DEPTHS, width=32, seeds=(0, 1, 2), steps=3,
                            sweep_octaves=None)


def _exp(fits, opt, variant, metric):
    row = fits[(fits.optimizer == opt) & (fits.variant == variant) & (fits.metric == metric)]
    assert len(row) == 1
    return float(row["exponent"].iloc[0])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_three_exponents_as_stated(study, opt):
    fits = study.exponents(n_boot=200)
    # depth-muP: the first layer's own feature update collapses like L^-1/2, the function update is flat
    assert -0.62 < _exp(fits, opt, "depth-mup", "dp_own_1") < -0.38
    assert abs(_exp(fits, opt, "depth-mup", "df_1")) < 0.15
    # the sqrt(L) correction restores the first layer but over-corrects the function update: its U
    # share grows like L^1/2 (the whole update tends to that as the share comes to dominate)
    assert abs(_exp(fits, opt, "corrected", "dp_own_1")) < 0.12
    assert 0.38 < _exp(fits, opt, "corrected", "df_U_1") < 0.62
    assert _exp(fits, opt, "corrected", "df_1") > 0.2
    # the balanced correction (V init L^-1/2, SGD U lr L^1, Adam U lr L^1/2): every one flat
    for metric in ("dp_own_1", "df_1", "df_U_1", "df_V_1", "df_step", "dp_own_K"):
        assert abs(_exp(fits, opt, "balanced", metric)) < 0.12, metric


def test_power_count_predictions_listed(study):
    fits = study.exponents(n_boot=0)
    assert fits.loc[(fits.variant == "corrected") & (fits.metric == "df_U_1"), "predicted"].eq(0.5).all()
    assert predicted_exponent("dp_own_1", *VARIANTS["depth-mup"]) == -0.5
    assert predicted_exponent("loss0", 0.5, 0.0) is None


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimal_lr_drift(data, opt):
    """eta*(L) from an lr sweep (one-octave grid 4..1024 x the base lr, 20 full-batch steps, 2 seeds):
    it grows with depth under depth-muP and both corrections halve that growth (measured exponents of
    eta* ~ L^p: SGD +0.50, +0.25, +0.25; Adam +0.48, +0.16, +0.23 for depth-muP, corrected, balanced;
    none flat at this horizon: docs/depth.md)."""
    st = correction_study(data, depths=DEPTHS, width=16, seeds=(0, 1), steps=1, optimizers=(opt,),
                          sweep_octaves=(2, 10), sweep_step=1.0, sweep_steps=20)
    fits = st.exponents(metrics=())
    drift = {v: _exp(fits, opt, v, "lr_star") for v in VARIANTS}
    assert not st.optima["edge"].any()
    assert drift["depth-mup"] > 0.3
    assert drift["corrected"] < drift["depth-mup"] - 0.15
    assert drift["balanced"] < drift["depth-mup"] - 0.15


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_balanced_is_completep(opt):
    """c = b = 1/2 is CompleteP written in depth-muP coordinates: identical trajectories."""
    d = gaussian_data(N=6, d_in=3, d_out=2, seed=0)
    outs = []
    for p in (variant_param(0.5, 0.5), get_parameterization("completep")):
        m = ResNet((8, 6, 6), param=p, d_in=3, d_out=2, seeds=[1, 2], block="two-layer", dtype="float64")
        extra = {"adam_eps": 0.0} if opt == "adam" else {}
        outs.append(train(m, d, steps=5, lr=0.05, optimizer=opt, record=("outputs",), **extra).outputs)
    assert np.abs(outs[0][-1] - outs[0][0]).max() > 1e-2
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-10, atol=1e-13)


def test_balance_option_and_errors(data):
    p = get_parameterization("depth-mup-corrected", correction=0.25, balance=0.5)
    assert p.roles["U"].lr_sgd.exponent("L") == pytest.approx(0.75)
    assert p.roles["U"].lr_adam.exponent("L") == pytest.approx(0.25 - 0.5)
    assert p.roles["V"].init.exponent("L") == pytest.approx(-0.5)
    assert p.options["balance"] == 0.5
    default = get_parameterization("depth-mup-corrected")
    assert default.options["balance"] == 0.0 and default.roles["V"].init.exponent("L") == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        variant_param(-0.1, 0.0)
    with pytest.raises(ValueError, match="unknown variant 'bogus'"):
        correction_study(data, depths=(2,), variants=("bogus",))
    one = ResNet((2, 4, 4), param="depth-mup", d_in=data.d_in, d_out=data.d_out, block="one-layer", seeds=[0])
    with pytest.raises(ValueError, match="two-layer"):
        update_metrics(one, data, lr=0.1, optimizer="sgd", steps=1)
