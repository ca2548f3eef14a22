"""The local process pool exchanges bytes with its workers, never pickles: results come back as JSON
and ``np.save`` bytes (a result whose unpickling would run code cannot run it in the driver), arrays
and metrics arrive exactly, and a dead worker costs a retry of its own task only."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest

from reslim._src.experiments.executors import (
    LocalExecutor,
    Task,
    decode_results,
    encode_results,
    execute_task,
)
from reslim._src.experiments.registry import Run, RunResult
from reslim._src.experiments.spec import load_spec
from reslim._src.experiments.store import Store
from reslim._src.experiments.sweep import run_sweep

KIND = '''
import os

import numpy as np

from reslim._src.experiments.registry import ExperimentKind, RunResult, register_experiment


class Mkdir:
    """Pickles as ``os.mkdir(path)``: unpickling it creates the directory ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def arrays():
    return {"f64": np.linspace(-1, 1, 7) ** 3, "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 3,
            "i64": np.array([-(2**62), 0, 2**62]), "bool": np.array([True, False]),
            "c128": np.array([1 + 2j, -3.5j]), "scalar": np.array(np.pi), "empty": np.zeros((0, 4)),
            "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "u8": np.arange(256, dtype=np.uint8),
            "strided": np.arange(20.0).reshape(4, 5)[::2, 1::2], "text": np.array(["ab", "c"]),
            "when": np.array(["2026-01-01"], dtype="datetime64[ns]"),
            "record": np.array([(1.5, 2)], dtype=[("x", "<f8"), ("n", "<i4")])}


class Evil(ExperimentKind):
    def execute(self, runs):
        out = []
        for r in runs:
            if r.config["mode"] == "mkdir":
                out.append(RunResult(r.key, "done", {"x": Mkdir(r.config["marker"])}))
            elif r.config["mode"] == "object-array":
                out.append(RunResult(r.key, "done", {}, {"a": np.array([Mkdir(r.config["marker"])])}))
            else:
                out.append(RunResult(r.key, "done", {"nan": float("nan"), "inf": float("inf"), "n": 3,
                                                    "nested": {"a": [1.5, None, "s"]}, "tiny": 5e-324},
                                     arrays(), seconds=0.25))
        return out


register_experiment("evil-pickle", Evil())
'''


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A kind module importable here and in spawned workers (they inherit ``sys.path``)."""
    (tmp_path / "reslim_test_evil_kind.py").write_text(textwrap.dedent(KIND))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "reslim_test_evil_kind"


def _task(module, mode, marker, i=0):
    return Task("evil-pickle", module, (Run("evil-pickle", {"mode": mode, "marker": str(marker), "i": i}),))


def _same(a: RunResult, b: RunResult) -> None:
    assert (a.key, a.status, a.error, a.seconds) == (b.key, b.status, b.error, b.seconds)
    assert a.metrics.keys() == b.metrics.keys()
    for k in a.metrics:
        x, y = a.metrics[k], b.metrics[k]
        assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), k
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        x, y = a.arrays[k], b.arrays[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes(order="A") == y.tobytes(order="A") and x.dtype.fields == y.dtype.fields, k
        assert x.flags.f_contiguous == y.flags.f_contiguous, k


def test_pool_results_are_never_unpickled_by_the_driver(tmp_path, evil_module):
    """A worker result that would run ``os.mkdir`` when unpickled: the driver never runs it (the
    run comes back failed with the reason), and ordinary results arrive bit for bit."""
    markers = [tmp_path / "unpickled-metrics", tmp_path / "unpickled-array"]
    tasks = [_task(evil_module, "mkdir", markers[0], 0), _task(evil_module, "object-array", markers[1], 1),
             _task(evil_module, "plain", tmp_path / "unused", 2)]
    with LocalExecutor(2, threads=1) as ex:
        outcomes = {o.task.runs[0].config["mode"]: o.results[0] for o in ex.run(tasks)}
    assert not any(m.exists() for m in markers), "the driver unpickled a worker's result"
    for mode in ("mkdir", "object-array"):
        r = outcomes[mode]
        assert r.status == "failed" and r.error.startswith("result cannot be sent to the driver: "), r.error
    assert "not JSON serializable" in outcomes["mkdir"].error
    assert "object arrays cannot be sent" in outcomes["object-array"].error
    expected = execute_task(tasks[2])[0]  # the same run in this process
    _same(outcomes["plain"], expected)


def test_result_encoding_round_trip_and_refuses_pickled_arrays(tmp_path, evil_module):
    import io

    from reslim_test_evil_kind import arrays

    results = [RunResult("k1", "done", {"m": [1, 2.5], "nan": float("nan")}, arrays(), seconds=1.5),
               RunResult("k2", "failed", error="RuntimeError: boom (x.py, line 1)"),
               RunResult("k3", "diverged", {"step": 7}, {"h": np.ones((2, 2))})]
    back = decode_results(encode_results(results))
    assert len(back) == 3
    for a, b in zip(results, back, strict=True):
        _same(b, a)
    assert all(x.flags.writeable for r in back for x in r.arrays.values())
    # forged messages: a pickled object array (np.save with allow_pickle=True) is refused by
    # np.load(allow_pickle=False), an object dtype string by the decoder: nothing is rebuilt
    buf = io.BytesIO()
    np.save(buf, np.array([object()]), allow_pickle=True)
    for spec, blob, match in [({"npy": True}, buf.getvalue(), "allow_pickle"),
                              ({"dtype": "|O", "shape": [1], "order": "C"}, bytes(8), "object arrays")]:
        head = json.dumps([{"key": "k", "status": "done", "metrics": {}, "error": None, "seconds": 0.0,
                            "arrays": [{"name": "a", "nbytes": len(blob), **spec}]}]).encode()
        with pytest.raises(ValueError, match=match):
            decode_results(len(head).to_bytes(8, "little") + head + blob)


def test_a_dead_worker_costs_a_retry_of_its_own_task_only(tmp_path):
    """Run 3 kills its worker once: its task (runs 2, 3) runs twice, every other task once (the
    tasks queued behind it go to the fresh worker unchanged), and the sweep completes."""
    spec = load_spec({"kind": "probe", "name": "probe", "runs": 10, "group_size": 2, "work": 1, "size": 8,
                      "sleep": 0.05, "die": [3], "marker_dir": str(tmp_path),
                      "log": str(tmp_path / "executed.log")})
    with LocalExecutor(2, threads=1, max_retries=1) as ex:
        summary = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
        assert ex.retried == 1
    assert summary.counts == {"done": 10, "diverged": 0, "failed": 0}
    with Store(tmp_path / "out", create=False) as st:
        by_i = {r.config["i"]: r.key for r in st.records()}
    executed = [ln.split()[0] for ln in (tmp_path / "executed.log").read_text().splitlines()]
    assert {i: executed.count(k) for i, k in by_i.items()} == {i: 2 if i in (2, 3) else 1 for i in range(10)}


def test_worker_death_beyond_retries_is_reported_with_the_cause(tmp_path):
    spec = load_spec({"kind": "probe", "name": "probe", "runs": 4, "group_size": 2, "work": 1, "size": 8,
                      "die": [1], "marker_dir": str(tmp_path)})
    with LocalExecutor(2, threads=1, max_retries=0) as ex:
        summary = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
    assert summary.counts == {"done": 2, "diverged": 0, "failed": 2}
    with Store(tmp_path / "out", create=False) as st:
        errors = {r.error for r in st.records(status="failed")}
    assert errors == {"worker process died 1 time(s), retries exhausted: exit code 3"}
