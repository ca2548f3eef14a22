"""The linear-limit experiment kind: end to end through `reslim run`, the triangle's legs at their
rates, diverged runs counted and excluded (never zeros), resume recomputes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import reslim.cli  # noqa: F401  (registers commands)
from reslim._src.cli.app import app
from reslim._src.experiments.registry import get_experiment
from reslim.experiments import Store, load_results, load_spec, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(**kw):
    base = {"kind": "linear-limit", "name": "t", "repetitions": 3, "grid": {"L": [4], "M": [4], "D": [4]},
            "train": {"steps": 5}, "limit": {"S": 16}, "figures": {"steps": [0, 5]},
            "analysis": {"n_boot": 100}}
    base.update(kw)
    return load_spec(base)


def _analyse(spec, out):
    run_sweep(spec, out, progress=False)
    with Store(out) as store:
        return get_experiment("linear-limit").analyse(spec, store)


def test_end_to_end_run_report_and_resume(tmp_path):
    out = tmp_path / "out"
    sets = ["grid.L=[4,8]", "grid.M=[4,8]", "grid.D=[4,8]", "repetitions=2", "train.steps=5",
            "figures.steps=[0,5]", "triangle.D=[4,16,64]", "analysis.n_boot=20", "limit.S=8"]
    args = ["run", "linear-limit", "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(a) embedding: err^2 =" in result.output and "leg 2 embedding" in result.output
    md = (out / "report.md").read_text()
    assert "(a) The paper's linear experiment" in md and "(b) The triangle, leg by leg" in md
    assert "paper-form value" in md and "0.673" in md
    for name in ("trajectories", "histograms", "leg1", "leg2", "embedding-vs-D", "output-vs-M"):
        assert (out / "figures" / f"linear-limit-{name}.png").exists(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    df = load_results(out)
    assert len(df) == 8 * 2 + 3 * 2 and (df["status"] == "done").all()
    fin = df[df["config.role"] == "finite"]
    errs = np.array(fin["metrics.embedding_error"].tolist(), dtype=float)  # (runs, K+1)
    assert errs.shape == (16, 6) and np.isfinite(errs).all() and (errs[:, 5] > 0).all()
    # coupled randomness: one W_e, W_u draw per repetition shared by every shape
    assert fin.groupby("config.rep")["config.embed_seed"].nunique().eq(1).all()

    (out / "report.html").unlink()
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.html").exists()
    rerun = run_sweep(load_spec("linear-limit", sets), out, progress=False)
    assert rerun.skipped == 22 and sum(rerun.counts.values()) == 0


def test_leg1_finite_approaches_mean_ode_in_LM(tmp_path):
    """Finite vs MeanODE at D = 8: O(1/L + sqrt(D/(L M))), so the error falls with L M."""
    spec = _spec(grid={"L": [4, 8, 16], "M": [4, 8, 16, 32], "D": [8]}, roles=["finite"])
    res = _analyse(spec, tmp_path)
    f = res.power["leg1-LM"]
    assert f.n_points == 12
    # measured here: about -0.55; theory -1/2 (the 1/L term steepens it a little)
    assert -0.9 < f.exponent < -0.3 and f.exponent_ci[1] < 0
    assert res.power["leg1-M"].exponent < 0 and res.power["leg1-L"].exponent < 0


def test_leg2_mean_ode_approaches_large_d_at_rate_one_half(tmp_path):
    spec = _spec(repetitions=16, roles=["limit-gap"], triangle={"D": [16, 64, 256, 1024, 2048]})
    res = _analyse(spec, tmp_path)
    # measured over 4 seeds: embedding -0.49..-0.51, output -0.44..-0.52 (16 draws, D = 16..2048)
    for name in ("leg2-embedding", "leg2-output"):
        assert abs(res.power[name].exponent + 0.5) < 0.15, (name, res.power[name].exponent)
    assert res.gap["n"].eq(16).all()


def test_diverged_runs_are_stored_counted_and_excluded(tmp_path):
    # lr = 1 (ten times the paper's) makes the small-M shapes blow up (non-finite, or error > 1e3)
    spec = _spec(grid={"L": [4], "M": [2, 16], "D": [4, 32]}, train={"lr": 1.0, "steps": 8},
                 analysis={"step": 3, "n_boot": 50}, figures={"steps": [0, 3]}, roles=["finite"])
    res = _analyse(spec, tmp_path)
    with Store(tmp_path) as store:
        recs = store.records(kind="linear-limit")
        div = [r for r in recs if r.status == "diverged"]
        assert 0 < len(div) < len(recs)
        for r in div:
            k0 = r.metrics["diverged_at"]
            e = r.metrics["embedding_error"]
            assert 0 <= k0 and all(v is None for v in e[k0:])  # never zeros
            assert all(v is None or v > 0 for v in e)
    assert res.counts["finite"]["diverged"] == len(div)
    agg = res.agg.set_index(["L", "M", "D"])
    assert (agg["n"] + agg["n_diverged"] == 3).all()
    assert agg["n_diverged"].sum() == len(div)
    # a shape with every repetition diverged has no aggregate and is left out of the fits
    all_div = agg[agg["n_diverged"] == 3]
    assert len(all_div) and all_div["embedding_error"].isna().all()
    f = res.additive.get("embedding")
    if f is not None:
        assert f.n_points == int((agg["n"] > 0).sum())
    lines = get_experiment("linear-limit").summary(spec, res)
    assert any(f"{len(div)} diverged" in ln for ln in lines)
