"""Compute-optimal shapes, the theory's exponents and the ``reslim shape`` command."""

import numpy as np
import pytest
from typer.testing import CliRunner

from reslim import Shape
from reslim.cli import app
from reslim.measure import (
    AdditiveFit,
    compute_optimal_shape,
    continuous_optimal_shape,
    optimal_exponents,
    theory_model,
)

BUDGETS = [1e6, 1e8, 1e10, 1e12]


def slopes(model):
    rows = np.log([continuous_optimal_shape(P, model) for P in BUDGETS])
    return np.polyfit(np.log(BUDGETS), rows, 1)[0]  # (L, M, D, error) exponents of P


def test_bound_gives_p_one_sixth_one_half_one_third():
    s = slopes("bound")
    np.testing.assert_allclose(s, [1 / 6, 1 / 2, 1 / 3, -1 / 6], atol=0.005)
    assert optimal_exponents() == pytest.approx({"L": 1 / 6, "M": 1 / 2, "D": 1 / 3, "rate": -1 / 6})
    # the rounded integer shapes follow the same scaling
    shapes = [compute_optimal_shape(P)[0] for P in BUDGETS]
    s_int = np.polyfit(np.log(BUDGETS), np.log([sh.as_tuple() for sh in shapes]), 1)[0]
    np.testing.assert_allclose(s_int, [1 / 6, 1 / 2, 1 / 3], atol=0.01)


def test_output_model_gives_p_one_fifth_two_fifths():
    s = slopes("output")
    np.testing.assert_allclose(s, [1 / 5, 2 / 5, 2 / 5, -1 / 5], atol=0.005)
    assert optimal_exponents("output")["rate"] == pytest.approx(-1 / 5)


def test_integer_shape_near_budget_and_near_optimal():
    for P in BUDGETS:
        s, err = compute_optimal_shape(P)
        assert isinstance(s, Shape)
        assert s.P == pytest.approx(P, rel=0.01)
        f = theory_model("bound")
        assert err == pytest.approx(float(f(s.L, s.M, s.D)))
        # no shape of this budget on a coarse grid beats it by more than the slack
        ls, ds = np.meshgrid(np.logspace(0, np.log10(P), 60), np.logspace(0, np.log10(P), 60))
        ms = P / (ls * ds)
        ok = ms >= 1
        assert err <= 1.1 * np.min(f(ls[ok], ms[ok], ds[ok])) * 1.01


def test_slack_zero_is_the_literal_minimiser_and_slack_trades_depth():
    L0, M0, _, e0 = continuous_optimal_shape(1e8, "bound", slack=0.0)
    assert M0 == pytest.approx(1.0, rel=1e-3)  # depth acts as width: the infimum sits at M = 1
    L1, _, _, e1 = continuous_optimal_shape(1e8, "bound", slack=0.1)
    L5, _, _, e5 = continuous_optimal_shape(1e8, "bound", slack=0.5)
    assert L5 < L1 < L0
    assert e0 < e1 < e5
    assert e1 == pytest.approx(1.1 * e0, rel=1e-6)


def test_fitted_model_and_callable_model():
    fit = AdditiveFit(kind="embedding", coefficients={"a": 0.5, "b": 0.8, "c": 2.5},
                      coefficient_ci={k: (np.nan, np.nan) for k in "abc"}, n_points=10)
    s, err = compute_optimal_shape(1e8, fit)
    assert err == pytest.approx(float(fit.predict(s.L, s.M, s.D)))
    assert optimal_exponents(fit)["M"] == pytest.approx(1 / 2)
    # a callable without the depth term: shallowest is L = 1; exponents found numerically
    ex = optimal_exponents(lambda L, M, D: D / (L * M) + 1 / np.sqrt(D) + 0 * L)
    assert ex["L"] == pytest.approx(0.0, abs=1e-6)
    assert ex["D"] == pytest.approx(2 / 5, abs=1e-3)
    assert ex["rate"] == pytest.approx(-1 / 5, abs=1e-3)


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), "abc", 0.5])
def test_bad_budget_raises(budget):
    with pytest.raises(ValueError, match="budget"):
        compute_optimal_shape(budget)


def test_bad_model_raises():
    with pytest.raises(ValueError, match="model"):
        compute_optimal_shape(1e6, "nope")


runner = CliRunner()


def test_cli_shape_prints_shape_and_exponents():
    res = runner.invoke(app, ["shape", "--budget", "1e8"])
    assert res.exit_code == 0, res.output
    s, _ = compute_optimal_shape(1e8)
    assert f"L={s.L} M={s.M} D={s.D}" in res.output
    assert "P^(1/6)" in res.output and "P^(1/2)" in res.output and "P^(-1/6)" in res.output
    res = runner.invoke(app, ["shape", "--budget", "1e8", "--model", "output"])
    assert res.exit_code == 0 and "P^(-1/5)" in res.output


@pytest.mark.parametrize("args", [["--budget", "0"], ["--budget", "-5"], ["--budget", "nan"],
                                  ["--budget", "inf"], ["--budget", "lots"],
                                  ["--budget", "1e8", "--model", "wide"]])
def test_cli_shape_bad_input_exits_2_with_one_line(args):
    res = runner.invoke(app, ["shape", *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
