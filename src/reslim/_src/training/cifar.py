"""CIFAR-10 and CIFAR-100 from the user's disk (never downloaded): the binary version only, read with NumPy.

The python version (``cifar-10-batches-py``) is a set of pickles, and unpickling a file can run
arbitrary code, so it is refused with a one-line error (naming the directory) before any of its
files is opened; download the binary version (``cifar-10-binary.tar.gz``) instead.

Binary format (``cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin``): records of
``1 + 3072`` bytes, a label in 0..9 then the 32x32 image as R, G, B planes in row-major order.
Images become float64 inputs: scaled to [0, 1], optionally averaged over channels
(``grayscale``) and average-pooled by ``pool`` (32 / pool pixels a side), flattened to
``d_in = channels * (32/pool)^2`` and centred by the training mean; targets are one-hot (10).

CIFAR-100 (binary version, ``cifar-100-binary/{train,test}.bin``): records of ``2 + 3072`` bytes,
the coarse label (0..19), the fine label (0..99), then the image; :func:`cifar100` uses the fine
labels. :func:`cifar_images` returns either set as raw images, for convolutional models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Dataset

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def read_cifar_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the CIFAR-10 record "
                         f"size {RECORD}")
    rec = raw.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: labels must be in 0..9, found {labels.max()}")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


PY_FILES = ("batches.meta", "data_batch_1", "test_batch")  # names of the python (pickle) version


def _is_python_version(d: Path) -> bool:
    return d.is_dir() and any((d / f).is_file() for f in PY_FILES)


def _locate(data_dir: str | Path | None) -> Path:
    """The directory holding the CIFAR-10 binary batches under ``data_dir`` (itself or its
    ``cifar-10-batches-bin``); a one-line ValueError naming ``data.dir`` otherwise."""
    if data_dir is None or str(data_dir) == "":
        raise ValueError("data.dir: CIFAR-10 needs the directory holding the data "
                         "(--set data.dir=PATH); it is never downloaded")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.dir: {root} is not a directory")
    for cand in (root / "cifar-10-batches-bin", root):
        if all((cand / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return cand
    for cand in (root / "cifar-10-batches-py", root):
        if _is_python_version(cand):  # its files are never opened
            raise ValueError(f"data.dir: {cand} holds the python (pickle) version of CIFAR-10, which reslim "
                             f"does not read (unpickling can run code); download the binary version "
                             f"(cifar-10-binary.tar.gz, unpacks to cifar-10-batches-bin) from {URL}")
    raise ValueError(f"data.dir: CIFAR-10 not found under {root}: expected cifar-10-batches-bin/ "
                     f"({', '.join((*TRAIN_FILES, TEST_FILE))}, the binary version); see {URL}")


def _load_raw(where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    parts = [read_cifar_binary(where / f) for f in TRAIN_FILES]
    Xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    Xte, yte = read_cifar_binary(where / TEST_FILE)
    return Xtr, ytr, Xte, yte


def _features(images: np.ndarray, grayscale: bool, pool: int) -> np.ndarray:
    x = images.astype(np.float64) / 255.0  # (n, 3, 32, 32)
    if grayscale:
        x = x.mean(axis=1, keepdims=True)
    if pool > 1:
        n, c = x.shape[:2]
        s = 32 // pool
        x = x.reshape(n, c, s, pool, s, pool).mean(axis=(3, 5))
    return x.reshape(x.shape[0], -1)


def cifar10(data_dir: str | Path | None, n_train: int | None = 2048, n_test: int | None = 1024,
            seed: int = 0, grayscale: bool = False, pool: int = 4) -> Dataset:
    """CIFAR-10 as a :class:`Dataset` (``d_in = (1 or 3) * (32/pool)^2``, ``d_out = 10``).

    ``n_train`` / ``n_test`` samples are drawn without replacement (seeded) from the official
    training / test sets (``None``: all of them).
    """
    if pool not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"data.pool must divide 32 (1, 2, 4, 8, 16 or 32), got {pool!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"data.{name} must be a positive integer or None, got {v!r}")
    where = _locate(data_dir)
    Xtr, ytr, Xte, yte = _load_raw(where)
    rng = np.random.default_rng(seed)
    itr = rng.permutation(len(Xtr))[: n_train or len(Xtr)]
    ite = rng.permutation(len(Xte))[: n_test or len(Xte)]
    if n_train is not None and n_train > len(Xtr):
        raise ValueError(f"data.n_train: {n_train} requested, the training set has {len(Xtr)}")
    Ftr, Fte = _features(Xtr[itr], grayscale, pool), _features(Xte[ite], grayscale, pool)
    mean = Ftr.mean(axis=0)
    eye = np.eye(10)
    return Dataset(Ftr - mean, eye[ytr[itr]], name=f"cifar10(seed={seed}, pool={pool})",
                   X_test=Fte - mean, Y_test=eye[yte[ite]],
                   info={"classes": 10, "source": "bin", "dir": str(where)})


RECORD_100 = 2 + 3 * 32 * 32
FILES_100 = ("train.bin", "test.bin")


def read_cifar100_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-100 binary file -> images ``(n, 3, 32, 32)`` uint8 and fine labels ``(n,)``."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_100:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the CIFAR-100 record "
                         f"size {RECORD_100}")
    rec = raw.reshape(-1, RECORD_100)
    coarse, fine = rec[:, 0].astype(np.int64), rec[:, 1].astype(np.int64)
    if coarse.max() > 19 or fine.max() > 99:
        raise ValueError(f"{path}: labels must be coarse 0..19 and fine 0..99, found {coarse.max()} "
                         f"and {fine.max()}")
    return rec[:, 2:].reshape(-1, 3, 32, 32), fine


def _locate100(data_dir: str | Path | None) -> Path:
    """The directory holding ``train.bin`` and ``test.bin`` of CIFAR-100 under ``data_dir``."""
    if data_dir is None or str(data_dir) == "":
        raise ValueError("data.dir: CIFAR-100 needs the directory holding the data "
                         "(--set data.dir=PATH); it is never downloaded")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.dir: {root} is not a directory")
    for cand in (root / "cifar-100-binary", root):
        if all((cand / f).is_file() for f in FILES_100):
            return cand
    for cand in (root / "cifar-100-python", root):
        if cand.is_dir() and any((cand / f).is_file() for f in ("meta", "train", "test")):
            raise ValueError(f"data.dir: {cand} holds the python (pickle) version of CIFAR-100, which reslim "
                             f"does not read (unpickling can run code); download the binary version "
                             f"(cifar-100-binary.tar.gz, unpacks to cifar-100-binary) from {URL}")
    raise ValueError(f"data.dir: CIFAR-100 not found under {root}: expected cifar-100-binary/ "
                     f"(train.bin, test.bin, the binary version); see {URL}")


def cifar_images(name: str, data_dir: str | Path | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` of ``cifar10`` or ``cifar100`` as uint8 images
    ``(n, 3, 32, 32)`` and int64 labels."""
    if name == "cifar10":
        return _load_raw(_locate(data_dir))
    if name == "cifar100":
        where = _locate100(data_dir)
        Xtr, ytr = read_cifar100_binary(where / "train.bin")
        Xte, yte = read_cifar100_binary(where / "test.bin")
        return Xtr, ytr, Xte, yte
    raise ValueError(f"unknown CIFAR set {name!r} (cifar10 or cifar100)")


def cifar100(data_dir: str | Path | None, n_train: int | None = 2048, n_test: int | None = 1024,
             seed: int = 0, grayscale: bool = False, pool: int = 4) -> Dataset:
    """CIFAR-100 (fine labels) as a :class:`Dataset`, as :func:`cifar10` (``d_out = 100``)."""
    if pool not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"data.pool must divide 32 (1, 2, 4, 8, 16 or 32), got {pool!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"data.{name} must be a positive integer or None, got {v!r}")
    Xtr, ytr, Xte, yte = cifar_images("cifar100", data_dir)
    if n_train is not None and n_train > len(Xtr):
        raise ValueError(f"data.n_train: {n_train} requested, the training set has {len(Xtr)}")
    rng = np.random.default_rng(seed)
    itr = rng.permutation(len(Xtr))[: n_train or len(Xtr)]
    ite = rng.permutation(len(Xte))[: n_test or len(Xte)]
    Ftr, Fte = _features(Xtr[itr], grayscale, pool), _features(Xte[ite], grayscale, pool)
    mean = Ftr.mean(axis=0)
    eye = np.eye(100)
    return Dataset(Ftr - mean, eye[ytr[itr]], name=f"cifar100(seed={seed}, pool={pool})",
                   X_test=Fte - mean, Y_test=eye[yte[ite]],
                   info={"classes": 100, "source": "bin", "dir": str(_locate100(data_dir))})
