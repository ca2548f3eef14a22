"""The SQLite store: exact array round trips, no pickles, atomic finished rows, the driver lock."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from reslim.experiments import Run, RunResult, Store, StoreError, load_results

ARRAYS = {
    "f64": np.random.default_rng(0).standard_normal((3, 4, 5)),
    "f32": np.random.default_rng(1).standard_normal((7,)).astype(np.float32),
    "i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
    "bool": np.array([True, False, True]),
    "scalar": np.array(3.25),
    "empty": np.zeros((0, 3)),
    "nan": np.array([np.nan, np.inf, -np.inf, 1e-308, -0.0]),
    "strided": np.arange(24.0).reshape(4, 6)[:, ::2].T,
}


def _run(i: int = 0, **config) -> Run:
    return Run("test", {"i": i, **config}, group="g", label=f"run {i}")


def test_arrays_round_trip_exactly(tmp_path):
    run = _run()
    with Store(tmp_path) as store:
        store.write(run, RunResult(run.key, "done", {"m": 1.5, "curve": [1.0, None]}, ARRAYS))
    with Store(tmp_path, create=False) as store:
        got = store.arrays(run.key)
        rec = store.get(run.key)
    assert set(got) == set(ARRAYS)
    for name, a in ARRAYS.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert np.array_equal(got[name], a, equal_nan=a.dtype.kind == "f"), name
        assert np.signbit(got[name]).tolist() == np.signbit(a).tolist() if a.dtype.kind == "f" else True
    assert rec.status == "done" and rec.config == run.config
    assert rec.metrics == {"m": 1.5, "curve": [1.0, None]}


def test_no_pickles_object_arrays_refused(tmp_path):
    run = _run()
    with Store(tmp_path) as store:
        with pytest.raises(TypeError):
            store.write(run, RunResult(run.key, "done", arrays={"o": np.array([{"a": 1}], dtype=object)}))
        assert store.get(run.key) is None  # nothing written
    # every stored blob is a plain .npy that loads without pickle
    with Store(tmp_path) as store:
        store.write(run, RunResult(run.key, "done", arrays=ARRAYS))
    con = sqlite3.connect(tmp_path / "results.sqlite")
    for (blob,) in con.execute("SELECT data FROM arrays"):
        assert blob[:6] == b"\x93NUMPY"
    con.close()


def test_finished_rows_are_final_failed_rows_are_retried(tmp_path):
    a, b = _run(1), _run(2)
    with Store(tmp_path) as store:
        store.write(a, RunResult(a.key, "failed", error="boom"))
        store.write(b, RunResult(b.key, "diverged", {"diverged_at": 3}, {"loss": np.ones(4)}))
        first = store.get(a.key)
        store.write(a, RunResult(a.key, "done", {"x": 1.0}, {"loss": np.zeros(2)}))
        store.write(a, RunResult(a.key, "failed", error="late"))  # ignored: a is finished
        store.write(b, RunResult(b.key, "done"))  # ignored: diverged is finished
        rec_a, rec_b = store.get(a.key), store.get(b.key)
        assert rec_a.id == first.id and rec_a.status == "done" and rec_a.attempts == 2 and rec_a.error is None
        assert rec_b.status == "diverged" and "loss" in store.arrays(b.key)
        assert store.finished_keys() == {a.key, b.key}
        assert store.counts() == {"done": 1, "diverged": 1}
    df = load_results(tmp_path)
    assert len(df) == 2 and set(df["status"]) == {"done", "diverged"} and "config.i" in df


def test_write_is_atomic(tmp_path):
    run = _run()
    with Store(tmp_path) as store:
        arrays = {"ok": np.ones(3), "bad": np.array([object()], dtype=object)}
        with pytest.raises(TypeError):
            store.write(run, RunResult(run.key, "done", arrays=arrays))
        assert store.get(run.key) is None and store.array_index().empty


def test_second_driver_is_refused(tmp_path):
    with Store(tmp_path) as one:
        one.lock()
        with Store(tmp_path) as two, pytest.raises(StoreError, match="in use"):
            two.lock()
    with Store(tmp_path) as three:
        three.lock()  # released when the first closed


def test_missing_store(tmp_path):
    with pytest.raises(StoreError):
        Store(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()
