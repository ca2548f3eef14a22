"""Scale-out on a real local Ray instance (2 CPUs): local and ray store identical results, dead
workers are retried, failing runs are stored as failed, SIGKILL of the driver resumes cleanly."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reslim._src.experiments.executors import LocalExecutor, make_executor
from reslim._src.experiments.spec import load_spec
from reslim._src.experiments.store import Store
from reslim._src.experiments.sweep import run_sweep

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'reslim[ray]')")

QUICK = ["grid.L=[4]", "grid.M=[2,4]", "grid.D=[2,4]", "repetitions=2",
         "reference={kind='network', shape=[4,16,4], floor=true}", "train.steps=3", "analysis.n_boot=10"]


@pytest.fixture(scope="module")
def ray_address():
    """One real local Ray instance (2 CPUs) for the module; its GCS address."""
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'reslim[ray]')")
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def _probe(tmp_path, **fields):
    spec = {"kind": "probe", "name": "probe", "work": 2, "size": 16, "marker_dir": str(tmp_path),
            "log": str(tmp_path / "executed.log"), **fields}
    return load_spec(spec)


def _executed(tmp_path) -> list[str]:
    log = tmp_path / "executed.log"
    return [ln.split()[0] for ln in log.read_text().splitlines()] if log.exists() else []


def _snapshot(out):
    with Store(out, create=False) as st:
        recs = {r.key: r for r in st.records()}
        arrays = {k: st.arrays(k) for k in recs}
    return recs, arrays


@needs_ray
def test_convergence_sweep_identical_under_local_and_ray(tmp_path, ray_address):
    import torch

    spec = load_spec("convergence", QUICK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ray workers use 1 thread (cpus_per_task=1): same arithmetic
    try:
        run_sweep(spec, tmp_path / "local", executor=LocalExecutor(1), progress=False)
    finally:
        torch.set_num_threads(threads)
    with make_executor("ray") as ex:
        summary = run_sweep(spec, tmp_path / "ray", executor=ex, progress=False)
    assert summary.counts["failed"] == 0 and summary.total == 2 + 2 * 4 * 2 + 2 * 2  # + twins
    a_recs, a_arr = _snapshot(tmp_path / "local")
    b_recs, b_arr = _snapshot(tmp_path / "ray")
    assert set(a_recs) == set(b_recs) and len(a_recs) == summary.total
    for key, a in a_recs.items():
        b = b_recs[key]
        assert (a.status, a.config, a.metrics) == (b.status, b.config, b.metrics), a.label
        assert a_arr[key].keys() == b_arr[key].keys()
        for name in a_arr[key]:
            np.testing.assert_array_equal(a_arr[key][name], b_arr[key][name])


@needs_ray
def test_worker_killed_mid_task_is_retried_and_the_sweep_completes(tmp_path, ray_address):
    spec = _probe(tmp_path, runs=8, group_size=2, die=[3], fail=[6])
    with make_executor("ray", max_retries=2) as ex:
        summary = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
        assert ex.retried == 1
    assert summary.counts == {"done": 7, "diverged": 0, "failed": 1}
    assert (tmp_path / "die-3").exists()
    with Store(tmp_path / "out", create=False) as st:
        failed = st.records(status="failed")
        assert [r.config["i"] for r in failed] == [6] and "fails on purpose" in failed[0].error
        assert {r.config["i"] for r in st.records(status="done")} == {0, 1, 2, 3, 4, 5, 7}
        key3 = next(r.key for r in st.records() if r.config["i"] == 3)
    assert _executed(tmp_path).count(key3) == 2  # died once, retried once


@needs_ray
def test_worker_death_beyond_max_retries_stores_failed_runs_then_rerun_completes(tmp_path, ray_address):
    spec = _probe(tmp_path, runs=4, group_size=2, die=[1])
    with make_executor("ray", max_retries=0) as ex:
        summary = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
    assert summary.counts == {"done": 2, "diverged": 0, "failed": 2}  # runs 0 and 1 share the task
    with Store(tmp_path / "out", create=False) as st:
        errors = [r.error for r in st.records(status="failed")]
    assert all("worker died 1 time(s), retries exhausted" in e for e in errors), errors
    with make_executor("ray", max_retries=0) as ex:  # the marker exists now: the retry succeeds
        again = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
    assert again.skipped == 2 and again.counts["done"] == 2
    with Store(tmp_path / "out", create=False) as st:
        assert st.counts() == {"done": 4}
        assert sorted(r.attempts for r in st.records()) == [1, 1, 2, 2]


@needs_ray
def test_ray_resources_and_address_are_validated(ray_address):
    from reslim._src.experiments.ray_executor import RayExecutor

    for kwargs, msg in [({"cpus_per_task": 0}, "--cpus-per-task must be > 0"),
                        ({"gpus_per_task": 1.5}, "whole number"),
                        ({"gpus_per_task": float("nan")}, "finite"),
                        ({"max_retries": -1}, "--max-retries"),
                        ({"address": "nohost"}, "HOST:PORT"),
                        ({"gpus_per_task": 0.5}, "no Ray node has"),
                        ({"cpus_per_task": 4}, "no Ray node has")]:
        with pytest.raises(ValueError, match=msg):
            RayExecutor(**kwargs)
    ex = RayExecutor(cpus_per_task=0.5)  # fractional CPUs: 4 tasks at once on 2 CPUs
    assert ex.slots == 4 and ex.threads == 1


@needs_ray
def test_without_address_a_private_instance_is_started_whatever_ray_address_says(monkeypatch):
    """No address: ``ray.init(address="local")`` (a new private instance), not ``None``, which
    would join the cluster named by RAY_ADDRESS or by Ray's shared temp directory."""
    import ray

    from reslim._src.experiments.ray_executor import RayExecutor

    calls = []
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 2e9}}])
    ex = RayExecutor()
    assert [c["address"] for c in calls] == ["local"] and ex._owns
    ex.close()
    calls.clear()
    RayExecutor(address="auto").close()  # the explicit opt-in is passed on as given
    assert [c["address"] for c in calls] == ["auto"]


PROBE = """
kind = "probe"
name = "private"
runs = 4
work = 1
size = 8
"""


@needs_ray
def test_cli_without_address_ignores_ray_address(tmp_path):
    """The one real Ray start of this check: with RAY_ADDRESS naming a port that never answers,
    ``--executor ray`` without --address still runs on a private instance and completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE)
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{listener.getsockname()[1]}"}
    cmd = [sys.executable, "-c", "from reslim.cli import main; main()", "run", str(spec), "--out",
           str(tmp_path / "out"), "--no-progress", "--executor", "ray"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    finally:
        listener.close()
    assert res.returncode == 0, res.stderr[-2000:]
    assert "4 runs, 0 already stored, 4 done" in res.stdout
    with Store(tmp_path / "out", create=False) as st:
        assert st.counts() == {"done": 4}


# --- SIGKILL of the driver, then the same command again ---------------------------------------------
SLEEPY = """
kind = "probe"
name = "sleepy"
runs = 14
sleep = 0.25
work = 2
size = 16
marker_dir = "{tmp}"
log = "{tmp}/executed.log"
"""


def _rows(db):
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT key, id, status, metrics, finished FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc; zombies excluded)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _sigkill_and_resume(tmp_path, extra: list[str], workers_exit: bool = False) -> None:
    spec = tmp_path / "sleepy.toml"
    spec.write_text(SLEEPY.format(tmp=tmp_path))
    out = tmp_path / "out"
    db = out / "results.sqlite"
    cmd = [sys.executable, "-c", "from reslim.cli import main; main()", "run", str(spec), "--out", str(out),
           "--no-progress", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(_rows(db)) < 3:
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it was killed: {proc.stderr.read()[-500:]}"
        if workers_exit:
            assert len(_session_processes(proc.pid)) > 1, "no worker processes to orphan"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if workers_exit:  # the pool's workers notice their driver is gone and exit
            deadline = time.time() + 20
            while _session_processes(proc.pid) and time.time() < deadline:
                time.sleep(0.1)
            assert _session_processes(proc.pid) == [], "worker processes outlived their driver"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _session_processes(proc.pid) if workers_exit else ():
            os.kill(pid, signal.SIGKILL)
    before = {r[0]: r for r in _rows(db)}
    n_logged = len(_executed(tmp_path))
    assert 3 <= len(before) < 14 and all(r[2] == "done" for r in before.values())

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    after = {r[0]: r for r in _rows(db)}
    assert len(after) == 14 and all(r[2] == "done" for r in after.values())
    assert all(after[k] == row for k, row in before.items())  # stored rows untouched
    rerun = _executed(tmp_path)[n_logged:]
    assert not set(rerun) & set(before), "a finished run was recomputed"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone() == (14, 14)
        assert con.execute("SELECT COUNT(*) FROM arrays").fetchone()[0] == 14
    finally:
        con.close()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_driver_and_rerun_local(tmp_path):
    """Also: the killed driver's worker processes exit on their own, none is left behind."""
    _sigkill_and_resume(tmp_path, ["--executor", "local", "--jobs", "2"], workers_exit=True)


@needs_ray
def test_sigkill_driver_and_rerun_ray(tmp_path, ray_address):
    _sigkill_and_resume(tmp_path, ["--executor", "ray", "--address", ray_address])
