"""The nonlinear-limit experiment kind (tanh): end to end through `reslim run`, bad input
refused before anything is written, resume recomputes nothing, leg 2 shrinks with D."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import reslim.cli  # noqa: F401  (registers commands)
from reslim._src.cli.app import app
from reslim._src.experiments.registry import get_experiment
from reslim.experiments import Store, load_results, load_spec, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["grid.L=[2,8]", "grid.M=[4,32]", "grid.D=[4]", "repetitions=2", "train.steps=3",
        "data.N=3", "limit.samples=1024", "limit.S=4", "triangle.D=[4,64]", "triangle.repetitions=2",
        "analysis.n_boot=20"]


def _run(out, sets):
    args = ["run", "nonlinear-limit", "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args)


def test_end_to_end_run_report_and_resume(tmp_path):
    out = tmp_path / "out"
    result = _run(out, TINY)
    assert result.exit_code == 0, result.output
    assert "leg 1 embedding RMS vs M" in result.output and "leg 2 embedding_rms" in result.output
    md = (out / "report.md").read_text()
    assert "Leg 1: finite network vs the fixed-D MeanODE" in md and "Leg 2: fixed-D MeanODE" in md
    for name in ("leg1", "leg2", "leg1-vs-M", "leg1-vs-L"):
        assert (out / "figures" / f"nonlinear-limit-{name}.png").exists(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()
    df = load_results(out)
    assert len(df) == 4 * 2 + 2 * 2 and (df["status"] == "done").all()
    fin = df[df["config.role"] == "finite"]
    assert (fin["config.model.activation"] == "tanh").all()
    err = np.array(fin["metrics.ode_embedding_rms"].tolist(), dtype=float)  # (runs, K+1)
    se = np.array(fin["metrics.ode_embedding_stderr"].tolist(), dtype=float)
    assert err.shape == (8, 4) and np.isfinite(err).all() and (err[:, 1:] > 0).all()
    # the limit's own error estimate is stored beside every error, positive once training starts
    assert np.isfinite(se).all() and (se[:, 1:] > 0).all() and (se[:, 0] < 1e-12).all()
    # one fixed-D MeanODE per draw: its error estimate is the same for every (L, M) of a repetition
    last = fin.assign(se=se[:, -1]).groupby("config.rep")["se"].nunique()
    assert last.eq(1).all()
    # coupled randomness: one W_e, W_u draw per repetition shared by every shape and by leg 2
    assert df.groupby("config.rep")["config.embed_seed"].nunique().eq(1).all()

    (out / "report.html").unlink()
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.html").exists()
    rerun = run_sweep(load_spec("nonlinear-limit", TINY), out, progress=False)
    assert rerun.skipped == 12 and sum(rerun.counts.values()) == 0


@pytest.mark.parametrize("override, field", [
    ("model.activation=identity", "model.activation"),
    ("model.activation=swish", "model.activation"),
    ("limit.samples=1000", "limit.samples"),
    ("limit.replicas=1", "limit.replicas"),
    ("model.param.name=ntk", "model.param.name"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, override, field):
    out = tmp_path / "out"
    result = _run(out, [*TINY, override])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0], result.output
    assert not out.exists()


def test_leg2_mean_ode_approaches_large_d(tmp_path):
    """Fixed-D MeanODE vs LargeDLimit (tanh) falls with D, well above its error estimate."""
    spec = load_spec({"kind": "nonlinear-limit", "name": "t", "repetitions": 4, "roles": ["limit-gap"],
                      "grid": {"L": [1], "M": [1], "D": [16]}, "train": {"steps": 3}, "data": {"N": 3},
                      "limit": {"samples": 1024, "S": 4}, "triangle": {"D": [16, 256, 2048]},
                      "analysis": {"n_boot": 50}})
    run_sweep(spec, tmp_path, progress=False)
    with Store(tmp_path) as store:
        res = get_experiment("nonlinear-limit").analyse(spec, store)
    g = res.gap.set_index("D")
    for m, s in (("embedding_rms", "embedding_stderr"), ("output_error", "output_stderr")):
        assert g.loc[16, m] > 2 * g.loc[256, m] > 2 * 2 * g.loc[2048, m], (m, g[m].tolist())
        assert (g[m] > 3 * g[s]).all(), (m, g[m].tolist(), g[s].tolist())
    # the common random numbers: the difference is far less noisy than either solver
    assert (g["embedding_stderr"].loc[[256, 2048]] < 0.5 * g["ode_embedding_stderr"].loc[[256, 2048]]).all()
    assert -0.7 < res.power["leg2-embedding"].exponent < -0.3
