"""Coordinate checks: exponent fits, verdicts, and the regimes of MLU, standard and NTK."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reslim.cli import app
from reslim.diagnostics import classify, coord_check, fit_exponents, measure, plot_coord_check, trend

QUICK = dict(base=(8, 128, 64), steps=1, seeds=(0, 1))
SIZES = {"L": (4, 8, 16), "M": (64, 128, 256), "D": (32, 64, 128)}


def _verdicts(param, axes=("L", "M", "D"), **kw):
    df = coord_check(param, axes, {a: SIZES[a] for a in axes}, **{**QUICK, **kw})
    return df, df.attrs["verdicts"].set_index("axis")


@pytest.fixture(scope="module")
def mlu():
    return _verdicts("mlu")


def test_mlu_pre_activation_updates_are_order_one_along_L_M_D(mlu):
    df, v = mlu
    for axis in ("L", "M", "D"):
        for q in ("dp", "du"):
            for pos in ("all", "first"):
                e = df[(df.axis == axis) & (df.quantity == q) & (df.position == pos)].exponent.iloc[0]
                assert abs(e) < 0.15, (axis, q, pos, e)
        assert v.loc[axis, "verdict"] == "feature learning"


def test_standard_parameterization_is_unstable_along_width():
    # small lr: at lr = 0.1 the standard network saturates after one step and the exponents shrink
    _, v = _verdicts("standard", ("M", "D"), lr=0.01)
    assert list(v["verdict"]) == ["unstable", "unstable"]
    assert v.loc["D", "du"] > 0.75  # p = U^T h with U ~ N(0, 1/D) and lr O(1): du ~ D (theory: +1)
    assert v.loc["M", "dh_last"] > 0.3  # M units of V each moved by O(1) add up in h


def test_ntk_is_lazy_along_every_axis():
    df, v = _verdicts("ntk")
    assert list(v["verdict"]) == ["lazy", "lazy", "lazy"]
    assert v.loc["L", "du"] < -0.3 and v.loc["M", "du"] < -0.3  # units move ~ 1/sqrt(L M)
    assert v.loc["D", "dh_last"] < -0.3  # the embedding moves ~ 1/sqrt(D)
    assert abs(v.loc["L", "dy"]) < 0.25  # while the output still learns


def test_fit_recovers_known_power_laws_and_flags_divergence():
    rows = []
    sizes = (2.0, 4.0, 8.0, 16.0)
    for s in sizes:
        for seed in (0, 1):
            for q, e in (("dp", -0.5), ("dh", 0.0), ("du", -0.5), ("dy", 1.0), ("h", 0.0),
                         ("p", 0.0), ("y", 0.0)):
                n = 1 if q in ("y", "dy") else (4 if q in ("dp", "du", "p") else 5)
                for layer in range(n):
                    rows.append({"param": "x", "optimizer": "gd", "axis": "M", "size": s,
                                 "seed": seed, "step": 0 if q in ("h", "p", "y") else 1,
                                 "quantity": q, "layer": layer, "n_layers": n,
                                 "value": (1 + seed) * s**e})
    rec = pd.DataFrame(rows)
    ex = fit_exponents(rec)
    get = ex.set_index(["quantity", "position"]).exponent
    assert get["dp", "all"] == pytest.approx(-0.5) and get["dy", "out"] == pytest.approx(1.0)
    v = classify(ex).iloc[0]
    assert v.verdict == "unstable" and "dy[out] +1.00" in v.reasons
    rec.loc[rec.quantity == "dy", "value"] = 1.0
    v = classify(fit_exponents(rec)).iloc[0]
    assert v.verdict == "lazy" and v.du == pytest.approx(-0.5)
    rec.loc[(rec.quantity == "dh") & (rec["size"] == 16.0), "value"] = np.nan  # a diverged run
    ex = fit_exponents(rec)
    assert ex.set_index(["quantity", "position"]).exponent["dh", "all"] == math.inf
    assert classify(ex).iloc[0].verdict == "unstable"
    assert [trend(v) for v in (-0.3, 0.2, 0.3, math.nan)] == ["→0", "Θ(1)", "→∞", "n/a"]


def test_measure_records_and_errors(tmp_path):
    rec = measure("mlu", "L", (2, 3), base=(2, 8, 6), steps=2, seeds=(0,))
    assert set(rec.quantity) == {"h", "p", "y", "dh", "dp", "du", "dy"}
    assert set(rec[rec.quantity == "dp"].step) == {1, 2}
    assert rec[(rec.quantity == "h") & (rec["size"] == 3)].layer.max() == 3
    with pytest.raises(ValueError, match="axis"):
        measure("mlu", "Q")
    with pytest.raises(ValueError, match="sizes"):
        measure("mlu", "L", (4,))
    with pytest.raises(ValueError, match="steps"):
        measure("mlu", "L", (2, 4), steps=0)
    df = coord_check("depth-mup", "L", (2, 4), base=(2, 8, 6), steps=1, seeds=(0,), block="one-layer")
    assert set(df.attrs["verdicts"].axis) == {"L"}
    path = plot_coord_check(df, str(tmp_path / "cc.png"))
    assert (tmp_path / "cc.png").stat().st_size > 1000 and path.endswith("cc.png")


def test_cli_coord_check(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["coord-check", "--param", "depth-mup", "--axis", "L", "--sizes", "2,4",
                              "--base", "2,16,8", "--seeds", "1", "--steps", "1", "--out",
                              str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "verdict along L" in res.output
    assert list(tmp_path.glob("*.png"))
    res = runner.invoke(app, ["coord-check", "--axis", "Z"])
    assert res.exit_code == 2 and "--axis" in res.output
    res = runner.invoke(app, ["coord-check", "--param", "nope", "--axis", "L", "--no-plot"])
    assert res.exit_code == 2 and "unknown parameterization" in res.output
