"""Per-head movement (theory.md §5 (c)): Θ(1) along L, M and D under MLU (in the regime
L M >> D r_v, D >= 8 of the default sweeps), M^-1/2 under a 1/sqrt(M) head aggregation; controls
with a head learning rate missing its L or D factor show the check fails when the rule is wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reslim._src.diagnostics.heads import HEAD_QUANTITIES, SWEEPS, head_exponents, head_movement
from reslim._src.models.transformer import TRANSFORMER, get_transformer_parameterization
from reslim._src.scaling.monomial import Monomial
from reslim._src.scaling.role_table import RoleTable

HEADS = ("Q", "K", "V", "O", "mlp_U", "mlp_V")


def _mlu_with_head_lr(rule: str) -> RoleTable:
    """MLU with the heads' SGD rate ``rule`` instead of ``L M D / alpha^2`` (a wrong rule)."""
    base = get_transformer_parameterization("mlu")
    rules = {r: (replace(s, lr_sgd=Monomial.parse(rule)) if r in HEADS else s) for r, s in base.rules.items()}
    return RoleTable(f"mlu-lr-{rule}", TRANSFORMER, rules, dict(base.scalars), alpha=1.0)


def _exponents(param, axis, sizes=None, seeds=(0, 1, 2)):
    default, base = SWEEPS[axis]
    rec = head_movement(param, axis, sizes or default, base=base, steps=2, lr=0.05, seeds=seeds)
    ex = head_exponents(rec)
    return {r.quantity: r.exponent for r in ex[ex.step == 2].itertuples()}


@pytest.mark.parametrize("axis", ["L", "M", "D"])
def test_heads_move_theta_one_along_every_axis_under_mlu(one_thread, axis):
    """Measured exponents (3 seeds, step 2): L -0.04..-0.01, M -0.02..+0.05, D -0.07..-0.00."""
    ex = _exponents("mlu", axis)
    assert set(ex) == set(HEAD_QUANTITIES)
    for q, e in ex.items():
        assert abs(e) <= 0.15, (axis, q, e)


@pytest.mark.parametrize(("axis", "rule"), [("L", "M*D/alpha^2"), ("D", "L*M/alpha^2")])
def test_head_check_fails_for_a_wrong_lr_rule(one_thread, axis, rule):
    """Without the L (D) factor in the heads' rate every head moves like L^-1 (D^-1)."""
    sizes = SWEEPS[axis][0]
    ex = _exponents(_mlu_with_head_lr(rule), axis, sizes=(sizes[0], sizes[-1]), seeds=(0, 1))
    for q, e in ex.items():
        assert -1.3 < e < -0.7, (axis, q, e)


@pytest.fixture(scope="module")
def exponents():
    out = {}
    for param in ("mlu", "mlu-sqrt-heads"):
        rec = head_movement(param, "M", (8, 16, 32, 64), base=(16, 16, 4), steps=2, lr=0.05, seeds=(0, 1, 2))
        ex = head_exponents(rec)
        out[param] = {r.quantity: r.exponent for r in ex[ex.step == 2].itertuples()}
    return out


def test_heads_move_theta_one_along_M_under_mlu(one_thread, exponents):
    assert set(exponents["mlu"]) == set(HEAD_QUANTITIES)
    for q, e in exponents["mlu"].items():
        assert abs(e) <= 0.25, (q, e)


def test_heads_freeze_along_M_under_sqrt_aggregation(one_thread, exponents):
    for q, e in exponents["mlu-sqrt-heads"].items():
        assert -0.8 < e < -0.35, (q, e)  # about M^-1/2


def test_sqrt_heads_table():
    t = get_transformer_parameterization("mlu-sqrt-heads")
    assert str(t.branch) == "L^-1*M^-0.5*alpha"
    assert t.rules["Q"].lr_sgd.exponent("M") == 0 and t.rules["Q"].lr_sgd.exponent("L") == 1
    with pytest.raises(ValueError, match="axis"):
        head_movement("mlu", "T", (1, 2))


def test_cli_coord_check_transformer():
    from typer.testing import CliRunner

    from reslim.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["coord-check", "--arch", "transformer", "--param", "mlu", "--axis", "M",
                              "--sizes", "8,16,32,64", "--steps", "2", "--seeds", "3"])
    assert res.exit_code == 0, res.output
    assert "movement at step 2" in res.output and "dq" in res.output and "do" in res.output
    assert res.output.count("Θ(1)") == 4
    bad = runner.invoke(app, ["coord-check", "--arch", "transformer", "--param", "ntk", "--axis", "M"])
    assert bad.exit_code == 2 and "transformer preset" in bad.output
    bad = runner.invoke(app, ["coord-check", "--arch", "cnn"])
    assert bad.exit_code == 2 and "--arch" in bad.output


def test_norm_keeps_exponents_and_shrinks_movement(one_thread):
    """Pre-LayerNorm (outside the theory): still Θ(1) along M, but every head moves about 10x less
    (u has unit RMS instead of about sqrt(d_in + 1); measured ratios 0.06..0.13)."""
    from reslim._src.diagnostics.heads import norm_comparison

    out = norm_comparison("mlu", "M", (8, 32), norms=(None, "layer"), seeds=(0, 1))
    assert set(out["norm"]) == {"none", "layer"} and len(out) == 8
    layer = out[out["norm"] == "layer"]
    assert (layer["exponent"].abs() <= 0.15).all(), layer
    assert ((layer["ratio"] > 0.02) & (layer["ratio"] < 0.3)).all(), layer
    assert (out[out["norm"] == "none"]["ratio"] == 1.0).all()


def test_cli_coord_check_transformer_norm():
    from typer.testing import CliRunner

    from reslim.cli import app

    res = CliRunner().invoke(app, ["coord-check", "--arch", "transformer", "--axis", "M", "--sizes", "8,16",
                                   "--steps", "1", "--seeds", "2", "--norm", "rms"])
    assert res.exit_code == 0, res.output
    assert "rms norm" in res.output and "dq" in res.output
    bad = CliRunner().invoke(app, ["coord-check", "--arch", "transformer", "--norm", "batch"])
    assert bad.exit_code == 2 and "--norm" in bad.output


def test_median_stat(one_thread):
    """stat="median": the median over heads of each head's RMS; not larger than the pooled RMS
    (which a few heads dominate), Θ(1) along M in the regime too."""
    kw = dict(base=(16, 16, 8), steps=1, lr=0.05, seeds=(0, 1))
    rms = head_movement("mlu", "M", (16, 64), **kw)
    med = head_movement("mlu", "M", (16, 64), stat="median", **kw)
    assert (med["value"].to_numpy() < rms["value"].to_numpy()).all()
    ex = head_exponents(med)
    assert (ex["exponent"].abs() <= 0.15).all(), ex
    with pytest.raises(ValueError, match="stat"):
        head_movement("mlu", "M", (8, 16), stat="mean")
