"""Sweeps: SIGKILL and resume, failed and diverged runs, end-to-end `reslim run` with its report."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import reslim.cli  # noqa: F401  (registers commands)
from reslim._src.cli.app import app
from reslim.experiments import (
    ExperimentKind,
    Run,
    RunResult,
    SpecBase,
    Store,
    load_results,
    load_spec,
    register_experiment,
    run_sweep,
)

SLOW = """
kind = "convergence"
name = "resume"
repetitions = 1
max_task_mb = 1e-6            # one run per task
reference = { kind = "network", shape = [2, 8, 64] }
[grid]
L = [2]
M = [2, 3, 4, 5, 6, 7]
D = [2, 4, 8, 16, 32, 64]
[train]
steps = 2
"""


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT key, id, finished, status FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_sigkill_then_resume_recomputes_nothing(tmp_path):
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SLOW)
    out = tmp_path / "out"
    db = out / "results.sqlite"
    cmd = [sys.executable, "-c", "from reslim.cli import main; main()", "run", str(spec_path),
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and len(_rows(db)) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    before = {k: (i, f, s) for k, i, f, s in _rows(db)}
    total = 1 + 2 * 36
    assert 4 <= len(before) < total
    assert all(s == "done" for _, _, s in before.values())

    spec = load_spec(spec_path)
    summary = run_sweep(spec, out, progress=False)
    assert summary.skipped == len(before) and sum(summary.counts.values()) == total - len(before)
    after = _rows(db)
    assert len(after) == total and len({k for k, *_ in after}) == total  # no duplicates
    for k, i, f, s in after:
        if k in before:
            assert (i, f, s) == before[k]  # finished runs untouched
    assert run_sweep(spec, out, progress=False).skipped == total  # and again: nothing to do


class _Flaky(SpecBase):
    kind: str = "test-flaky"
    n: int = 6


class Flaky(ExperimentKind):
    """Run i raises if i % 3 == 1 and diverges if i % 3 == 2 (batches of two)."""

    spec_model = _Flaky

    def expand(self, spec):
        return [Run("test-flaky", {"i": i}, group=str(i // 2), label=f"run {i}") for i in range(spec.n)]

    def execute(self, runs):
        out = []
        for r in runs:
            i = r.config["i"]
            if i % 3 == 1:
                raise RuntimeError(f"run {i} exploded")
            status = "diverged" if i % 3 == 2 else "done"
            out.append(RunResult(r.key, status, {"i": i}, {"x": np.full(3, float(i))}))
        return out


register_experiment("test-flaky", Flaky())


def test_failed_runs_are_stored_and_the_sweep_continues(tmp_path):
    spec = _Flaky(kind="test-flaky", name="flaky")
    summary = run_sweep(spec, tmp_path, progress=False)
    assert summary.counts == {"done": 2, "diverged": 2, "failed": 2}
    with Store(tmp_path) as store:
        failed = store.records(status="failed")
        assert sorted(r.config["i"] for r in failed) == [1, 4]
        assert all("exploded" in r.error for r in failed)
        assert store.arrays(failed[0].key) == {}
        done = store.records(status="done")
        assert [store.arrays(r.key)["x"][0] for r in done] == [0.0, 3.0]
    again = run_sweep(spec, tmp_path, progress=False)  # failed runs are retried, finished ones not
    assert again.skipped == 4 and again.counts["failed"] == 2


def test_end_to_end_reslim_run_writes_the_report(tmp_path):
    out = tmp_path / "out"
    args = ["run", "convergence", "--out", str(out), "--no-progress",
            "--set", "grid.M=[2,8]", "--set", "grid.D=[2,8]", "--set", "repetitions=2",
            "--set", "reference={kind='network', shape=[10,32,8], floor=true}",
            "--set", "train.steps=3", "--set", "analysis.n_boot=20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "embedding error vs M" in result.output and "report.html" in result.output
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "data:image/png;base64," in html and "<table" in html
    assert "| error | against |" in md and "-0.5" in md and "figures/convergence-embedding-vs-D.png" in md
    assert (out / "figures" / "convergence-embedding-vs-P.svg").exists()
    df = load_results(out)
    assert len(df) == 2 + 2 * 4 * 2 + 2 * 2 and (df["status"] == "done").all()  # + twins (floor)
    assert set(df["config.shape"].map(tuple)) >= {(10, 2, 2), (10, 8, 8), (10, 32, 8)}
    emb = df[df["config.role"] == "embedding"]
    assert np.isfinite(emb["metrics.embedding_error_final"].astype(float)).all()

    (out / "report.html").unlink()
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and (out / "report.html").exists()
    listing = CliRunner().invoke(app, ["runs", str(out)])
    assert listing.exit_code == 0 and "embedding (L=10, M=8, D=8)" in listing.output
    rerun = run_sweep(load_spec("convergence", [a for a in args[5:] if a != "--set"]), out, progress=False)
    assert rerun.skipped == 22 and sum(rerun.counts.values()) == 0


@pytest.mark.parametrize("jobs", [2])
def test_process_pool_gives_the_same_results(tmp_path, jobs):
    spec = load_spec("convergence", ["grid.M=[2,4]", "grid.D=[2,4]", "repetitions=2",
                                     "reference={kind='network', shape=[10,8,4], floor=true}",
                                     "train.steps=2", "runs=['embedding']"])
    run_sweep(spec, tmp_path / "one", progress=False)
    run_sweep(spec, tmp_path / "two", jobs=jobs, progress=False)
    a = load_results(tmp_path / "one").set_index("key").sort_index()
    b = load_results(tmp_path / "two").set_index("key").sort_index()
    assert list(a.index) == list(b.index)
    assert np.allclose(a["metrics.embedding_error_final"].astype(float),
                       b["metrics.embedding_error_final"].astype(float), rtol=1e-12, atol=0, equal_nan=True)


def test_reference_floor_twins_add_runs_change_no_key_and_enter_the_fits(tmp_path):
    """``reference.floor = true`` adds one twin of the reference per repetition and role (fresh
    U, V; coupled W_e, W_u only for the embedding twin), recomputes nothing already stored, and
    the analysis reports the floor and the floor-corrected term fits."""
    from reslim.experiments import get_experiment

    sets = ["grid.M=[2,8,32]", "grid.D=[2,4,8]", "repetitions=2", "train.steps=3", "analysis.n_boot=20"]
    base = load_spec("convergence", [*sets, "reference={kind='network', shape=[10,32,8], floor=false}"])
    twin = load_spec("convergence", [*sets, "reference={kind='network', shape=[10,32,8], floor=true}"])
    kind = get_experiment("convergence")
    a, b = kind.expand(base), kind.expand(twin)
    old = {r.key for r in a}
    assert old < {r.key for r in b}
    extra = [r for r in b if r.key not in old]
    assert sorted(r.config["role"] for r in extra) == ["embedding-twin"] * 2 + ["output-twin"] * 2
    refs = {r.config["rep"]: r.config for r in a if r.config["role"] == "reference"}
    for r in extra:
        c, ref = r.config, refs[r.config["rep"]]
        assert c["shape"] == ref["shape"] and c["seed"] != ref["seed"]
        assert c["embed_seed"] == (ref["embed_seed"] if c["role"] == "embedding-twin" else None)

    out = tmp_path / "out"
    assert run_sweep(base, out, progress=False).counts["done"] == len(a)
    again = run_sweep(twin, out, progress=False)
    assert again.skipped == len(a) and again.counts["done"] == 4
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    df = load_results(out)
    tw = df[df["config.role"] == "embedding-twin"]
    phi = float(np.mean([e[-1] ** 2 / 2 for e in tw["metrics.embedding_error"]]))
    md = (out / "report.md").read_text()
    assert f"err^2 = {phi:.4g}" in md and "term: err^2 - floor = C^2 D^2p + linear" in md
