"""Divergence as blow-up (issue 13, item 5) and runs whose reference is unusable (item 6).

- ``reslim.train`` flags a network whose loss exceeds ``divergence_factor * max(loss_0, 1)``
  (not only a non-finite loss), with its step, on the fused-kernel and the torch paths alike;
  the quick convergence spec's healthy runs stay far below the threshold.
- A convergence run whose reference diverged (or failed) is skipped with the reason, never
  executed on a rerun, and a sweep with no usable result exits with code 1 and one line.
"""

from __future__ import annotations

import numpy as np
import pytest

import reslim
import reslim.cli  # noqa: F401  (registers commands)
from _cli import invoke as _invoke
from reslim._src.experiments.registry import get_experiment
from reslim._src.training.divergence import DIVERGENCE_FACTOR, divergence_steps
from reslim.experiments import Store, load_spec, run_sweep

TINY = """
kind = "convergence"
name = "tiny"
repetitions = 2
reference = { kind = "network", shape = [4, 32, 16] }
[grid]
L = [4]
M = [4, 8]
D = [4, 8]
[train]
steps = 5
lr = 1.0
[analysis]
n_boot = 10
"""
N_REFS, N_RUNS = 2, 2 + 2 * 4 * 2  # references; all runs (2 roles x 4 shapes x 2 repetitions)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _net(shape, seeds, use_kernels=None):
    net = reslim.ResNet(reslim.Shape(*shape), param=reslim.get_parameterization("mlu"), d_in=5, d_out=5,
                        activation="tanh", seeds=seeds)
    if use_kernels is not None:
        net.use_kernels = use_kernels
    return net


@pytest.mark.parametrize("use_kernels", [True, False])
def test_train_flags_a_finite_blowup_with_its_step(one_thread, use_kernels):
    data = reslim.gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    shape = (2, 128, 64)  # B*D*M above the kernels' threshold: the fused backward path where built
    traj = reslim.train(_net(shape, [0, 1], use_kernels), data, steps=6, lr=[1.0, 1000.0], loss="mean")
    assert traj.diverged_at[0] == -1
    k = int(traj.diverged_at[1])
    assert 1 <= k <= 6
    bound = DIVERGENCE_FACTOR * max(traj.loss[0, 1], 1.0)
    assert np.isfinite(traj.loss[:k, 1]).all() and (traj.loss[:k, 1] <= bound).all()
    assert np.isnan(traj.loss[k:, 1]).all() and np.isnan(traj.outputs[k:, 1]).all()
    # the healthy network is untouched by its neighbour's blow-up
    alone = reslim.train(_net(shape, [0], use_kernels), data, steps=6, lr=1.0, loss="mean")
    np.testing.assert_allclose(traj.loss[:, 0], alone.loss[:, 0], rtol=1e-10)
    # the blow-up is finite: only the documented criterion catches it, at the same step
    raw = reslim.train(_net(shape, [1], use_kernels), data, steps=6, lr=1000.0, loss="mean",
                       divergence_factor=None)
    assert raw.diverged_at[0] == -1 and np.isfinite(raw.loss).all() and raw.loss[k, 0] > bound
    assert divergence_steps(raw.loss)[0] == k


def test_divergence_factor_is_checked():
    data = reslim.gaussian_data(N=4, d_in=5, d_out=5, seed=0)
    for bad in (1.0, 0.5, float("nan"), True, "10"):
        with pytest.raises(ValueError, match="divergence_factor"):
            reslim.train(_net((1, 2, 2), [0]), data, steps=1, divergence_factor=bad)
    assert load_spec("convergence", ["train.divergence_factor=100"]).train.divergence_factor == 100.0
    with pytest.raises(ValueError, match="train.divergence_factor"):
        load_spec("convergence", ["train.divergence_factor=1"])
    # the default stays out of run configs: the keys of stored runs are unchanged
    spec = load_spec("convergence")
    assert "divergence_factor" not in get_experiment("convergence").expand(spec)[0].config["train"]


def test_quick_spec_losses_stay_far_below_the_threshold(one_thread):
    """The quick convergence spec's smallest and largest shapes at its lr: never flagged, and the
    loss never rises above 2x its initial value (the threshold is 1e6x)."""
    spec = load_spec("convergence")
    data = reslim.gaussian_data(spec.data.N, spec.data.d_in, spec.data.d_out, spec.data.seed)
    L = spec.grid.L[0]
    for M, D in ((min(spec.grid.M), min(spec.grid.D)), (max(spec.grid.M), max(spec.grid.D)),
                 (min(spec.grid.M), max(spec.grid.D))):
        net = reslim.ResNet(reslim.Shape(L, M, D), param=spec.model.param.build(), d_in=spec.data.d_in,
                            d_out=spec.data.d_out, activation=spec.model.activation, seeds=[0, 1, 2])
        traj = reslim.train(net, data, steps=spec.train.steps, lr=spec.train.lr, loss=spec.train.loss,
                            record=("loss",))
        assert (traj.diverged_at == -1).all()
        assert (traj.loss.max(axis=0) <= 2 * np.maximum(traj.loss[0], 1.0)).all(), (M, D)


def test_blown_up_runs_are_recorded_diverged_through_the_cli(capsys, spec_file, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = _invoke(capsys, ["run", str(spec_file), "--out", str(out), "--no-progress",
                                         "--set", "train.lr=1000"])
    assert f"tiny: {N_RUNS} runs, 0 already stored, 0 done, {N_REFS} diverged, 0 failed" in stdout
    assert "error vs" not in stdout  # no exponent is fitted from diverged runs
    assert code == 1 and "no usable result" in err
    with Store(out, create=False) as store:
        refs = store.records(status="diverged")
        assert len(refs) == N_REFS and not store.records(status="done")
        for rec in refs:
            k = rec.metrics["diverged_at"]
            loss = store.arrays(rec.key, ["loss"])["loss"]
            assert k >= 1 and np.isfinite(loss[:k]).all() and np.isnan(loss[k:]).all()
    # the same spec at its own lr: nothing diverges, the sweep is usable
    healthy = run_sweep(load_spec(spec_file), tmp_path / "ok", progress=False)
    assert healthy.counts == {"done": N_RUNS, "diverged": 0, "failed": 0} and healthy.usable


def test_runs_of_a_diverged_reference_are_skipped_and_never_rerun(capsys, spec_file, tmp_path,
                                                                  monkeypatch):
    kind = get_experiment("convergence")
    executed = []
    execute = kind.execute
    monkeypatch.setattr(kind, "execute", lambda runs: executed.extend(runs) or execute(runs))
    spec = load_spec(spec_file, ["train.lr=1000"])
    out = tmp_path / "out"
    first = run_sweep(spec, out, progress=False)
    assert first.counts == {"done": 0, "diverged": N_REFS, "failed": 0}
    assert len(executed) == N_REFS and {r.config["role"] for r in executed} == {"reference"}
    assert len(first.skipped_runs) == N_RUNS - N_REFS and not first.usable
    with Store(out, create=False) as store:
        refs = {r.key: r.metrics["diverged_at"] for r in store.records()}
        assert len(refs) == N_REFS  # the skipped runs have no (failed) rows
        meta = store.get_meta("skipped")
    for run in kind.expand(spec):
        if run.stage == 1:
            ref = run.config["reference_key"]
            reason = f"reference {ref} diverged at step {refs[ref]}"
            assert first.skipped_runs[run.key] == reason and meta[run.key]["reason"] == reason
    # a rerun executes nothing: the references are stored, their dependents skipped again
    executed.clear()
    code, stdout, err = _invoke(capsys, ["run", str(spec_file), "--out", str(out), "--no-progress",
                                         "--set", "train.lr=1000"])
    assert executed == []
    assert f"{N_REFS} already stored, 0 done, 0 diverged, 0 failed, {N_RUNS - N_REFS} skipped" in stdout
    assert "skipped 16 runs whose reference is not usable: reference " in stdout
    assert code == 1
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: no usable result in ")
    # the report counts them as skipped, with the reason, not as "not run"
    report = (out / "report.md").read_text()
    assert f"{N_RUNS - N_REFS} skipped, 0 not run" in report
    assert "Skipped (not computed, their reference is not usable): reference " in report


def test_runs_of_a_failed_reference_are_skipped_until_it_succeeds(spec_file, tmp_path, monkeypatch):
    kind = get_experiment("convergence")
    execute = kind.execute

    def broken(runs):
        if runs[0].config["role"] == "reference":
            raise RuntimeError("worker lost")
        return execute(runs)

    monkeypatch.setattr(kind, "execute", broken)
    spec = load_spec(spec_file)
    out = tmp_path / "out"
    first = run_sweep(spec, out, progress=False)
    assert first.counts["failed"] == N_REFS and len(first.skipped_runs) == N_RUNS - N_REFS
    assert all("failed: RuntimeError: worker lost" in r for r in first.skipped_runs.values())
    monkeypatch.setattr(kind, "execute", execute)
    again = run_sweep(spec, out, progress=False)  # the references are retried, then their runs run
    assert again.counts == {"done": N_RUNS, "diverged": 0, "failed": 0}
    assert again.skipped_runs == {} and again.usable
    with Store(out, create=False) as store:
        assert store.get_meta("skipped") == {}
