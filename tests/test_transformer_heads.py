"""Per-head movement (theory.md §5 (c)): Θ(1) along M under MLU, M^-1/2 under a 1/sqrt(M) head
aggregation."""

from __future__ import annotations

import pytest

from reslim._src.diagnostics.heads import HEAD_QUANTITIES, head_exponents, head_movement
from reslim._src.models.transformer import get_transformer_parameterization


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
