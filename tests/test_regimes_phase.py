"""Phase diagram of residual scalings: MLU's point learns features, others are lazy/unstable."""

from __future__ import annotations

import pytest

from reslim import get_parameterization
from reslim.diagnostics import (
    alpha_sweep,
    classify_point,
    phase_diagram,
    plot_phase_diagram,
    residual_scaling,
)

QUICK = dict(base=(8, 128, 64), steps=1, seeds=(0,),
             sizes={"L": (4, 8, 16), "M": (64, 128, 256), "D": (32, 64, 128)})


def test_residual_scaling_rules():
    p, ref = residual_scaling(), get_parameterization("mlu-unit")
    env = dict(L=7, M=11, D=13, alpha=1.0)
    for role in ("U", "V"):
        assert p.roles[role].lr_sgd(**env) == pytest.approx(ref.roles[role].lr_sgd(**env))
    assert p.branch(**env) == pytest.approx(ref.branch(**env))
    q = residual_scaling(L=-0.5, M=-1, D=0.5, alpha=2.0)
    beta = q.branch(L=16, M=4, D=9, alpha=2.0)
    assert beta == pytest.approx(2 * 16**-0.5 * 3 / 4)
    # tied lr: eta D / (L M beta^2)
    assert q.roles["U"].lr_sgd(L=16, M=4, D=9, alpha=2.0) == pytest.approx(9 / (16 * 4 * beta**2))
    with pytest.raises(ValueError, match="exponent of L"):
        residual_scaling(L=float("nan"))


def test_mlu_point_is_the_feature_learning_one():
    mlu = classify_point(residual_scaling(), **QUICK)
    assert mlu["verdict"] == "feature learning"
    sqrt_l = classify_point(residual_scaling(L=-0.5), axes=("L",), **QUICK)  # 1/sqrt(L) branches
    assert sqrt_l["verdict"] == "lazy" and sqrt_l["du_L"] == pytest.approx(-0.5, abs=0.2)
    small_d = classify_point(residual_scaling(D=0.0), axes=("D",), **QUICK)  # no sqrt(D)
    assert small_d["verdict"] == "unstable" and small_d["du_D"] == pytest.approx(0.5, abs=0.2)


def test_large_alpha_is_lazy(tmp_path):
    df = alpha_sweep((1, 2, 4), base=(8, 256, 32), steps=1, seeds=(0,))
    v = df.attrs["verdicts"].iloc[0]
    assert v.verdict == "lazy"
    assert v.du == pytest.approx(-1.0, abs=0.15)  # units move ~ 1/alpha
    assert abs(v.dy) < 0.15  # the output still moves by Theta(1)
    grid = phase_diagram("L", "M", (-1.5, -1.0), (-1.0,), axes=("L",), **QUICK)
    assert list(grid.verdict) == ["unstable", "feature learning"]
    plot_phase_diagram([grid], str(tmp_path / "p.png"), alpha=df)
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="x and y"):
        phase_diagram("L", "L")
    with pytest.raises(ValueError, match="fixed"):
        phase_diagram("L", "M", fixed={"Q": 1})


def test_cli_phase_diagram(tmp_path):
    from typer.testing import CliRunner

    from reslim.cli import app

    res = CliRunner().invoke(app, ["phase-diagram", "--exponents", "-1", "--d-exponents", "0.5",
                                   "--alphas", "1,2", "--seeds", "1", "--steps", "1", "--out",
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "complete feature learning at: (L^-1 M^-1 D^0.5)" in res.output
    assert (tmp_path / "phase-diagram.png").exists() and (tmp_path / "phase-L-M.csv").exists()
    res = CliRunner().invoke(app, ["phase-diagram", "--exponents", "a,b"])
    assert res.exit_code == 2 and "--exponents" in res.output
