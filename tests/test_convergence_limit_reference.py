"""The convergence kind against an exact limit (``reference = {kind = "limit", name = "large-d"}``):
validation before any run, one solve for every repetition, coupled single sites, the solver's
error estimate in the metrics and the report."""

from __future__ import annotations

import numpy as np
import pytest

import reslim.cli  # noqa: F401  (registers commands)
from _cli import run_spec_text as _run
from reslim.experiments import SpecError, get_experiment, load_spec, plan_tasks, run_sweep

FAST = "{samples = 1024, S = 8}"
TINY = f"""
kind = "convergence"
name = "tiny-limit"
repetitions = 2
runs = ["embedding"]
reference = {{ kind = "limit", name = "large-d", options = {FAST} }}
[grid]
L = [2]
M = [4, 16, 64]
D = [2, 8]
[train]
steps = 3
[analysis]
n_boot = 20
"""


def _one_line_exit_2(result, out, field: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], result.output
    assert not out.exists()
    return lines[0]


def test_exact_method_for_tanh_is_rejected_before_any_run(tmp_path):
    bad = TINY.replace(FAST, '{method = "exact"}')
    line = _one_line_exit_2(*_run(tmp_path, bad), "reference.options.method")
    assert "identity" in line and "tanh" in line
    # the same options are fine where exact moments exist
    assert load_spec("convergence", ['reference={kind="limit", name="large-d", options={method="exact"}}',
                                     'model.activation="identity"']).model.activation == "identity"


def test_a_limit_class_that_cannot_solve_the_activation_is_rejected(tmp_path, monkeypatch):
    from reslim._src.limits import solvers
    from reslim.limits import LargeDLimit

    class IdentityOnly(LargeDLimit):
        name = "identity-only-test"
        activations = ("identity",)

    monkeypatch.setitem(solvers.SOLVERS, "identity-only-test", IdentityOnly)
    bad = TINY.replace('name = "large-d"', 'name = "identity-only-test"')
    line = _one_line_exit_2(*_run(tmp_path, bad), "reference.name")
    assert "identity-only-test" in line and "model.activation" in line
    with pytest.raises(SpecError, match="reference.name"):
        load_spec("convergence", ['reference={kind="limit", name="identity-only-test"}'])
    ok = load_spec("convergence", ['reference={kind="limit", name="identity-only-test"}',
                                   'model.activation="identity"'])
    assert ok.reference.name == "identity-only-test"


def test_bad_limit_options_exit_2(tmp_path):
    _one_line_exit_2(*_run(tmp_path, TINY.replace(FAST, "{samples = 3}")), "reference")
    _one_line_exit_2(*_run(tmp_path, TINY.replace(FAST, "{bogus = 1}")), "reference")


def test_one_solve_serves_every_repetition_with_its_own_rows(one_thread, monkeypatch):
    """The reference runs of all repetitions are one task; the large-D limit is solved once and
    repetition r's h_L is H_d(1) of its own rows of W_e, W_u at D_max (the first D of which a
    grid network of dimension D uses)."""
    from reslim import ResNet, Shape
    from reslim._src.experiments.convergence import ParamSpec, _data
    from reslim.limits import LargeDLimit, LimitProblem

    spec = load_spec("convergence", ["reference={kind='limit', name='large-d', options={samples=1024, "
                                     "S=8, seed=11}}", "grid.L=[2]", "grid.M=[4]", "grid.D=[2, 8]",
                                     "repetitions=3", "train.steps=3", "runs=['embedding']"])
    kind = get_experiment("convergence")
    runs = kind.expand(spec)
    refs = [r for r in runs if r.config["role"] == "reference"]
    ref_tasks = [t for t in plan_tasks(runs, kind.module) if t.runs[0].config["role"] == "reference"]
    assert len(refs) == 3 and len(ref_tasks) == 1 and len(ref_tasks[0].runs) == 3

    calls = []
    orig = LargeDLimit.reduced

    def counting(self, problem, G):
        calls.append(G.shape)
        return orig(self, problem, G)

    monkeypatch.setattr(LargeDLimit, "reduced", counting)
    results = kind.execute(list(ref_tasks[0].runs))
    assert len(calls) == 1  # one solve for three repetitions

    c = refs[0].config
    K, D, N = 3, 8, c["data"]["N"]
    param = ParamSpec.model_validate(c["model"]["param"]).build()
    sol = LargeDLimit(samples=1024, S=8, seed=11).solution(LimitProblem(
        _data(c), K=K, eta=1.0, loss="mean", activation="tanh", embed_std=5**-0.5, readout_std=5**0.5))
    h = [res.arrays["h_last"] for res in results]
    for run, res, hr in zip(refs, results, h, strict=True):
        assert res.status == "done" and hr.shape == (K + 1, N, D)
        np.testing.assert_allclose(res.arrays["outputs"], sol.outputs, rtol=1e-10, atol=1e-12)
        net = ResNet(Shape(1, 1, D), param=param, d_in=5, d_out=5, seeds=[0],
                     embed_seed=[run.config["embed_seed"]], embed_dim_max=D)
        W_e = (net.W_e * net.mult("embed")).detach().numpy()[0]
        W_u = (net.W_u * net.mult("readout") * D).detach().numpy()[0]
        H, _ = sol.single_site(W_e, W_u)
        np.testing.assert_allclose(hr, np.swapaxes(H[:, -1], 1, 2), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hr[0], _data(c).X @ W_e.T, rtol=1e-8, atol=1e-10)  # k = 0: W_e x
        m = res.metrics
        assert m["limit"] == "large-d" and m["samples"] == 1024 and m["solved_together"] == 3
        for name in ("h_last_stderr", "output_stderr"):
            assert len(m[name]) == K + 1 and m[name + "_final"] == m[name][-1] > 0
            assert m[name + "_final"] == pytest.approx(float(sol.stderr[name][-1]))
    assert not np.allclose(h[0], h[1])  # each repetition its own rows


def test_sweep_compares_coupled_rows_and_reports_the_limit(tmp_path, one_thread):
    """End to end: the embedding error at k = 0 is tiny (a coupled network starts at W_e x, the
    limit's H_d(0) = H_d(1) at k = 0), the report names the exact limit and its error estimate,
    and the term fits use floor 0 (no twins)."""
    from reslim.experiments import load_results

    result, out = _run(tmp_path, TINY)
    assert result.exit_code == 0, result.output
    assert "exact limit" in result.output and "own error estimate" in result.output
    df = load_results(out)
    assert len(df) == 2 + 6 * 2 and (df["status"] == "done").all()
    assert not df["config.role"].str.contains("twin").any()
    wide = df["config.shape"].map(lambda s: isinstance(s, list) and s[1] == 64)
    emb = df[(df["config.role"] == "embedding") & wide]
    e0 = np.array([e[0] for e in emb["metrics.embedding_error"]])
    e3 = np.array([e[-1] for e in emb["metrics.embedding_error"]])
    assert len(e0) == 4 and (e0 < 0.15).all() and (e3 > 2 * e0).all(), (e0, e3)  # same rows at k = 0
    from reslim._src.experiments.store import Store

    refs = df[df["config.role"] == "reference"].sort_values("config.rep")
    with Store(out, create=False) as store:  # control: another repetition's rows are far at k = 0
        h = [store.arrays(k, ["h_last"])["h_last"] for k in refs["key"]]
    assert np.sqrt(np.mean((h[0][0] - h[1][0]) ** 2)) > 0.5
    md = (out / "report.md").read_text()
    ref = df[df["config.role"] == "reference"].iloc[0]
    assert "exact large-D limit" in md and "no twin and no floor" in md
    assert f"{ref['metrics.h_last_stderr_final']:.2g}" in md
    assert "floor 0: exact limit" in md and "err^2 - floor" not in md


def test_report_reads_only_this_specs_runs(tmp_path, one_thread):
    """A store holding another spec's convergence runs: the loss curves (and the reference's)
    come from this spec's runs only."""
    from reslim._src.experiments.store import Store
    from reslim._src.report.convergence import _loss_curves

    out = tmp_path / "out"
    other = load_spec("convergence", ["reference={kind='network', shape=[2, 8, 8]}", "grid.L=[2]",
                                      "grid.M=[4]", "grid.D=[2, 8]", "repetitions=1", "train.steps=3",
                                      "runs=['embedding']", "train.lr=0.5"])
    (tmp_path / "spec.toml").write_text(TINY)
    mine = load_spec(str(tmp_path / "spec.toml"))
    run_sweep(other, tmp_path / "other", progress=False)
    run_sweep(mine, out, progress=False)
    # a store mixing two specs' runs, as older reslim wrote them (a second spec is now refused)
    import sqlite3

    con = sqlite3.connect(out / "results.sqlite")
    con.execute("ATTACH ? AS o", (str(tmp_path / "other" / "results.sqlite"),))
    cols = "key, kind, stage, grp, label, config, status, metrics, error, seconds, attempts, created, " \
           "finished, checksum"
    con.execute(f"INSERT OR IGNORE INTO runs ({cols}) SELECT {cols} FROM o.runs")
    con.execute("INSERT OR IGNORE INTO arrays SELECT * FROM o.arrays")
    con.commit()
    con.close()
    kind = get_experiment("convergence")
    with Store(out, create=False) as store:
        curves, ref = _loss_curves(kind, mine, store)
        refs = [r for r in kind.records(mine, store) if r.config["role"] == "reference"]
        own = np.mean([store.arrays(r.key, ["loss"])["loss"] for r in refs], axis=0)
    np.testing.assert_allclose(ref, own)  # the other spec's (network) reference left out
    assert len(curves) == 6
    with Store(out, create=False) as store:
        for name, curve, _ in curves:  # (2, 4, 2) and (2, 4, 8) are in both specs: only mine count
            mine_runs = [r for r in kind.records(mine, store) if r.config["role"] == "embedding"
                         and str(tuple(r.config["shape"])) == name]
            np.testing.assert_allclose(curve, np.mean([store.arrays(r.key, ["loss"])["loss"]
                                                       for r in mine_runs], axis=0))
