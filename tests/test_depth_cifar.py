"""CIFAR-10: the binary reader on synthetic files of the official layout, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from reslim._src.training import cifar as cf


def _write_batch(path, n, rng):
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    rec = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    rec.astype(np.uint8).tofile(path)
    return images, labels


def _fake_cifar(root, n=12, seed=0):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = [_write_batch(d / f, n, rng) for f in cf.TRAIN_FILES]
    test = _write_batch(d / cf.TEST_FILE, n, rng)
    return batches, test


def test_binary_reader_round_trip(tmp_path):
    batches, test = _fake_cifar(tmp_path)
    images, labels = cf.read_cifar_binary(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin")
    np.testing.assert_array_equal(images, batches[2][0])
    np.testing.assert_array_equal(labels, batches[2][1])
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8


def test_cifar10_dataset_features(tmp_path):
    batches, test = _fake_cifar(tmp_path)
    ds = cf.cifar10(tmp_path, n_train=None, n_test=None, pool=4)
    assert ds.X.shape == (60, 3 * 8 * 8) and ds.Y.shape == (60, 10)
    assert ds.X_test.shape == (12, 192)
    np.testing.assert_allclose(ds.X.mean(axis=0), 0.0, atol=1e-12)
    assert set(ds.Y.sum(axis=1)) == {1.0}
    # the pooled features are channel-wise means of 4x4 pixel blocks, centred by the train mean
    all_img = np.concatenate([b[0] for b in batches]).astype(float) / 255
    all_lab = np.concatenate([b[1] for b in batches])
    pooled = all_img.reshape(60, 3, 8, 4, 8, 4).mean(axis=(3, 5)).reshape(60, -1)
    order = np.random.default_rng(0).permutation(60)
    np.testing.assert_allclose(ds.X, pooled[order] - pooled.mean(axis=0), atol=1e-12)
    np.testing.assert_array_equal(ds.Y.argmax(axis=1), all_lab[order])
    small = cf.cifar10(tmp_path / "cifar-10-batches-bin", n_train=7, n_test=5, grayscale=True, pool=8)
    assert small.X.shape == (7, 16) and small.X_test.shape == (5, 16)


def test_missing_data_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="data.dir: CIFAR-10 needs"):
        cf.cifar10(None)
    with pytest.raises(ValueError, match="is not a directory"):
        cf.cifar10(tmp_path / "nope")
    with pytest.raises(ValueError, match="CIFAR-10 not found under") as err:
        cf.cifar10(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "cifar-10-batches-py").mkdir()  # empty: not the python version either
    with pytest.raises(ValueError, match="CIFAR-10 not found under"):
        cf.cifar10(tmp_path)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a multiple"):
        cf.read_cifar_binary(bad)
    with pytest.raises(ValueError, match="data.pool"):
        cf.cifar10(tmp_path, pool=3)


class _Mkdir:
    """Pickles as ``os.mkdir(path)``: unpickling it creates the directory ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def _fake_python_version(root, marker):
    """The python version's layout (``cifar-10-batches-py``), each file a pickle that would
    create ``marker`` if anything unpickled it."""
    import pickle

    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        (d / name).write_bytes(pickle.dumps({b"data": _Mkdir(marker), b"labels": [0]}))
    return d


def test_the_python_pickle_version_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    py = _fake_python_version(tmp_path / "data", marker)
    for where in (tmp_path / "data", py):  # data.dir above the batches, or the batches themselves
        with pytest.raises(ValueError) as err:
            cf.cifar10(where)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"data.dir: {py} holds the python (pickle) version")
        assert "download the binary version" in msg and "cifar-10-batches-bin" in msg
    assert not marker.exists(), "a CIFAR pickle was unpickled"
    # the spec is refused the same way, before anything runs
    from reslim._src.experiments.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="python \\(pickle\\) version"):
        load_spec("transfer", [f'datasets=[{{kind="cifar10", dir="{tmp_path / "data"}"}}]'])
    assert not marker.exists()
    # with the binary version beside it, the binary version is read and the pickles stay closed
    batches, _ = _fake_cifar(tmp_path / "data")
    ds = cf.cifar10(tmp_path / "data", n_train=None, n_test=None)
    assert ds.X.shape == (60, 192) and ds.info["dir"] == str(tmp_path / "data" / "cifar-10-batches-bin")
    assert not marker.exists()


def test_cifar_spec_fails_before_running(tmp_path):
    from reslim._src.experiments.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="CIFAR-10 not found"):
        load_spec("transfer", [f'datasets=[{{kind="cifar10", dir="{tmp_path}"}}]'])
    _fake_cifar(tmp_path / "ok")
    spec = load_spec("transfer", [f'datasets=[{{kind="cifar10", dir="{tmp_path / "ok"}", n_train=8, '
                                  'n_test=4}]'])
    from reslim._src.experiments.depth import load_data

    ds = load_data(spec.datasets[0].model_dump())
    assert ds.X.shape == (8, 192)


def test_data_shorthand_runs_gia_gap_on_cifar_from_disk(tmp_path):
    """``reslim run gia-gap --data cifar10 --data-dir DIR`` trains on the files in DIR."""
    from typer.testing import CliRunner

    from reslim.cli import app
    from reslim.experiments import load_results

    _fake_cifar(tmp_path, n=40)
    out = tmp_path / "out"
    args = ["run", "gia-gap", "--data", "cifar10", "--data-dir",
            str(tmp_path / "cifar-10-batches-bin"), "--out", str(out), "--no-progress",
            "--set", "depths=[2,4]", "--set", "seeds=1", "--set", "train.steps=3", "--set", "width=8",
            "--set", "train.batch_size=10",
            "--set", "data.n_train=20", "--set", "data.n_test=10", "--set", "data.pool=8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    df = load_results(out)
    assert len(df) > 0 and set(df["status"]) == {"done"}
    data_cols = [c for c in df.columns if c.startswith("config.") and c.endswith("kind")]
    assert data_cols and any((df[c] == "cifar10").all() for c in data_cols), data_cols
    bad = CliRunner().invoke(app, ["run", "convergence", "--data", "cifar10", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "takes no data option" in bad.output
    assert not (tmp_path / "x").exists()
