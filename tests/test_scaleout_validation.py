"""Validated input everywhere: every bad CLI option or config field exits with code 2 and one line
on stderr, creates no output directory and leaves an existing store unchanged; two drivers on one
store; no unpickling anywhere."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reslim.cli  # noqa: F401  (registers the commands)
from _cli import invoke as _invoke
from _cli import tree as _tree
from reslim._src.experiments.spec import load_spec
from reslim._src.experiments.sweep import run_sweep
from reslim._src.experiments.validation import InputError, check_memory, executor_options, run_bytes

QUICK = ["--set", "grid.L=[2]", "--set", "grid.M=[2,4]", "--set", "grid.D=[2,4]", "--set", "repetitions=1",
         "--set", "reference={kind='network', shape=[2,8,4], floor=true}", "--set", "train.steps=2"]

BAD = [  # (id, extra arguments, text the one-line error must contain)
    ("zero D", ["--set", "grid.D=[0,4]"], "grid.D.0"),
    ("negative M", ["--set", "grid.M=[-2]"], "grid.M.0"),
    ("zero N", ["--set", "data.N=0"], "data.N"),
    ("negative steps", ["--set", "train.steps=-1"], "train.steps"),
    ("zero repetitions", ["--set", "repetitions=0"], "repetitions"),
    ("zero max_task_mb", ["--set", "max_task_mb=0"], "max_task_mb"),
    ("too large for memory", ["--set", "grid.L=[100000]", "--set", "grid.M=[100000]"], "too large for"),
    ("unknown parameterization", ["--set", "model.param.name=nope"], "model.param.name"),
    ("unknown activation", ["--set", "model.activation=swish"], "model.activation"),
    ("unknown limit", ["--set", 'reference={kind="limit", name="bogus"}'], "reference.limit"),
    ("nan lr", ["--set", "train.lr=nan"], "train.lr"),
    ("inf lr", ["--set", "train.lr=inf"], "train.lr"),
    ("zero lr", ["--set", "train.lr=0"], "train.lr"),
    ("negative lr", ["--set", "train.lr=-0.1"], "train.lr"),
    ("unknown key", ["--set", "bogus=1"], "bogus"),
    ("unknown nested key", ["--set", "train.bogus=1"], "train.bogus"),
    ("malformed --set", ["--set", "grid.D=[4,"], "grid.D"),
    ("zero jobs", ["--jobs", "0"], "--jobs"),
    ("negative jobs", ["--jobs", "-3"], "--jobs"),
    ("non-integer jobs", ["--jobs", "two"], "--jobs"),
    ("unknown executor", ["--executor", "spark"], "--executor"),
    ("address without ray", ["--address", "auto"], "--address"),
    ("malformed address", ["--executor", "ray", "--address", "nohost"], "--address"),
    ("address port range", ["--executor", "ray", "--address", "h:70000"], "--address"),
    ("unreachable address", ["--executor", "ray", "--address", "127.0.0.1:1"], "--address"),
    ("zero connect timeout", ["--executor", "ray", "--connect-timeout", "0"], "--connect-timeout"),
    ("nan connect timeout", ["--executor", "ray", "--connect-timeout", "nan"], "--connect-timeout"),
    ("connect timeout without ray", ["--connect-timeout", "5"], "--connect-timeout"),
    ("zero cpus per task", ["--executor", "ray", "--cpus-per-task", "0"], "--cpus-per-task"),
    ("negative cpus per task", ["--executor", "ray", "--cpus-per-task", "-1"], "--cpus-per-task"),
    ("fractional cpus above 1", ["--executor", "ray", "--cpus-per-task", "1.5"], "--cpus-per-task"),
    ("nan cpus per task", ["--executor", "ray", "--cpus-per-task", "nan"], "--cpus-per-task"),
    ("negative gpus per task", ["--executor", "ray", "--gpus-per-task", "-0.5"], "--gpus-per-task"),
    ("inf gpus per task", ["--executor", "ray", "--gpus-per-task", "inf"], "--gpus-per-task"),
    ("gpus without ray", ["--gpus-per-task", "1"], "--gpus-per-task"),
    ("fractional local threads", ["--cpus-per-task", "0.5"], "--cpus-per-task"),
    ("negative retries", ["--max-retries", "-1"], "--max-retries"),
    ("unknown option", ["--bogus"], "--bogus"),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An output directory that already holds a results store."""
    out = tmp_path_factory.mktemp("stored") / "out"
    run_sweep(load_spec({"kind": "probe", "name": "p", "runs": 3, "work": 1, "size": 4}), out, progress=False)
    return out


def _check_one_line(code, out, err, text):
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], err
    assert out == ""


@pytest.mark.parametrize("extra,text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, stored, extra, text):
    out = tmp_path / "new"
    code, o, e = _invoke(capsys, ["run", "convergence", *QUICK, "--out", str(out), "--no-progress", *extra])
    _check_one_line(code, o, e, text)
    assert not out.exists()
    before = _tree(stored)
    code, o, e = _invoke(capsys, ["run", "convergence", *QUICK, "--out", str(stored), "--no-progress",
                                  *extra])
    _check_one_line(code, o, e, text)
    assert _tree(stored) == before


SPEC = """
kind = "convergence"
name = "tiny"
repetitions = 1
reference = { kind = "network", shape = [2, 8, 8] }
[grid]
L = [2]
M = [2]
D = [2]
"""


@pytest.mark.parametrize("text,field", [
    (SPEC.replace("D = [2]", "D = [2"), "malformed TOML"),
    (SPEC + "\n[train]\nlr = nan\n", "train.lr"),
    (SPEC + "\nextra_key = 1\n", "extra_key"),
    (SPEC.replace("[grid]", "[grid]\nK = [3]"), "grid.K"),
], ids=["malformed TOML", "nan lr in file", "unknown key in file", "unknown grid key"])
def test_bad_spec_files(capsys, tmp_path, text, field):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    code, o, e = _invoke(capsys, ["run", str(spec), "--out", str(tmp_path / "o"), "--no-progress"])
    _check_one_line(code, o, e, field)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_an_address_that_never_answers_is_a_one_line_error_within_the_timeout(tmp_path, stored):
    """A port that accepts connections but never speaks Ray (Ray itself would retry for many
    minutes): exit code 2 with one line naming --address once --connect-timeout has passed; the
    existing store is untouched. Run in a subprocess: the connect thread it abandons stays there."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    before = _tree(stored)
    cmd = [sys.executable, "-c", "from reslim.cli import main; main()", "run", "convergence", *QUICK,
           "--out", str(stored), "--no-progress", "--executor", "ray", "--address", address,
           "--connect-timeout", "2"]
    try:
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
        elapsed = time.monotonic() - t0
    finally:
        listener.close()
    _check_one_line(res.returncode, res.stdout, res.stderr, f"cannot connect to Ray at --address {address}")
    assert "no answer within 2 s" in res.stderr
    assert elapsed < 60, elapsed  # imports + 2 s, not Ray's own minutes of retries
    assert _tree(stored) == before


def test_output_directory_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, text in [(tmp_path / "file", "not a directory"), (tmp_path / "file" / "sub", "is a file")]:
        code, o, e = _invoke(capsys, ["run", "convergence", *QUICK, "--out", str(out), "--no-progress"])
        _check_one_line(code, o, e, text)
    assert (tmp_path / "file").read_text() == "x"


def test_runs_options(capsys, stored):
    for argv, text in [(["runs", str(stored), "--status", "finished"], "--status"),
                       (["runs", str(stored), "--limit", "-1"], "--limit"),
                       (["runs", str(stored / "nope")], "no results store")]:
        _check_one_line(*_invoke(capsys, argv), text)


def test_real_command_line(tmp_path):
    """The installed entry point: exit code 2, exactly one line on stderr, nothing on stdout."""
    out = tmp_path / "o"
    for extra, text in [(["--jobs", "x"], "--jobs"), (["--set", "train.lr=inf"], "train.lr"),
                        (["--set", "grid.L=[100000]", "--set", "grid.M=[100000]"], "GiB")]:
        r = subprocess.run([sys.executable, "-c", "from reslim.cli import main; main()", "run", "convergence",
                            "--out", str(out), *extra], capture_output=True, text=True, timeout=120)
        _check_one_line(r.returncode, r.stdout, r.stderr, text)
        assert not out.exists()


def test_memory_estimate_names_the_task_and_counts_parallel_tasks():
    spec = load_spec("convergence", ["grid.L=[10]", "grid.M=[1000]", "grid.D=[1000]", "repetitions=2",
                                     "reference={kind='network', shape=[10,1000,1000], floor=true}"])
    from reslim._src.experiments.registry import get_experiment
    from reslim._src.experiments.sweep import plan_tasks

    kind = get_experiment("convergence")
    runs = kind.expand(spec)
    big = max(run_bytes(r) for r in runs)
    assert big >= 2 * 10 * 1000 * 1000 * 8  # at least the weights U, V in float64
    tasks = plan_tasks(runs, kind.module)
    with pytest.raises(InputError, match=r"too large for memory: .*L=10, M=1000, D=1000.* x2 run\(s\)"):
        check_memory(tasks, available=big)
    with pytest.raises(InputError, match="lower --jobs"):
        check_memory(tasks, available=2.5 * big, slots=2)
    check_memory(tasks, available=100 * big, slots=2)
    assert executor_options("ray", cpus_per_task=0.5, gpus_per_task=0.25) == {
        "address": None, "cpus_per_task": 0.5, "gpus_per_task": 0.25}
    assert executor_options("ray", address="auto", connect_timeout=5) == {"address": "auto",
                                                                          "connect_timeout": 5.0}


PROBE = """
kind = "probe"
name = "two"
runs = 12
sleep = 0.3
work = 1
size = 4
"""


def test_two_drivers_on_one_store(capsys, tmp_path):
    spec = tmp_path / "two.toml"
    spec.write_text(PROBE)
    out = tmp_path / "out"
    db = out / "results.sqlite"
    cmd = [sys.executable, "-c", "from reslim.cli import main; main()", "run", str(spec), "--out", str(out),
           "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if db.exists() and (out / "results.lock").exists() and (out / "results.lock").read_text():
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        code, o, e = _invoke(capsys, ["run", str(spec), "--out", str(out), "--no-progress"])
        _check_one_line(code, o, e, "in use by another reslim run")
        assert re.search(rf"pid {first.pid}\b", e), e
        assert first.wait(120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs WHERE status = 'done'")
        assert counts.fetchone() == (12, 12)
    finally:
        con.close()


def test_nothing_is_ever_unpickled():
    """No pickle loads, ``allow_pickle=True``, or ``torch.load`` without ``weights_only=True``."""
    root = Path(__file__).resolve().parents[1]
    bad = []
    for path in [*(root / "src").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        text = path.read_text()
        for m in re.finditer(r"pickle\.loads?\(|allow_pickle\s*=\s*True|read_pickle\(", text):
            bad.append(f"{path.relative_to(root)}: {m.group(0)}")
        for line in text.splitlines():
            if re.search(r"\bnp\.load\(", line) and "allow_pickle=False" not in line:
                bad.append(f"{path.relative_to(root)}: np.load without allow_pickle=False")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{path.relative_to(root)}: torch.load without weights_only=True")
    assert not bad, bad
