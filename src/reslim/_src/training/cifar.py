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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class _CifarSet:
    """Where one CIFAR set's binary files live and how their records are laid out."""

    name: str  # as the messages spell it
    classes: int
    header: int  # label bytes before each image
    train: tuple[str, ...]
    test: str
    subdir: str  # the folder the binary archive unpacks to
    archive: str
    py_subdir: str  # the python (pickle) version, refused
    py_files: tuple[str, ...]

    @property
    def record(self) -> int:
        return self.header + 3 * 32 * 32

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test)


CIFAR10 = _CifarSet("CIFAR-10", 10, 1, tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin",
                    "cifar-10-batches-bin", "cifar-10-binary.tar.gz", "cifar-10-batches-py",
                    ("batches.meta", "data_batch_1", "test_batch"))
CIFAR100 = _CifarSet("CIFAR-100", 100, 2, ("train.bin",), "test.bin", "cifar-100-binary",
                     "cifar-100-binary.tar.gz", "cifar-100-python", ("meta", "train", "test"))
SETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}

RECORD, TRAIN_FILES, TEST_FILE = CIFAR10.record, CIFAR10.train, CIFAR10.test
RECORD_100, FILES_100 = CIFAR100.record, CIFAR100.files


def _records(path: Path, cs: _CifarSet) -> np.ndarray:
    """The records ``(n, header + 3072)`` uint8 of one binary file of ``cs``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % cs.record:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the {cs.name} record "
                         f"size {cs.record}")
    return raw.reshape(-1, cs.record)


def read_cifar_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file -> images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64."""
    path = Path(path)
    rec = _records(path, CIFAR10)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: labels must be in 0..9, found {labels.max()}")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar100_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-100 binary file -> images ``(n, 3, 32, 32)`` uint8 and fine labels ``(n,)``."""
    path = Path(path)
    rec = _records(path, CIFAR100)
    coarse, fine = rec[:, 0].astype(np.int64), rec[:, 1].astype(np.int64)
    if coarse.max() > 19 or fine.max() > 99:
        raise ValueError(f"{path}: labels must be coarse 0..19 and fine 0..99, found {coarse.max()} "
                         f"and {fine.max()}")
    return rec[:, 2:].reshape(-1, 3, 32, 32), fine


_READERS = {"CIFAR-10": read_cifar_binary, "CIFAR-100": read_cifar100_binary}


def _locate(data_dir: str | Path | None, cs: _CifarSet = CIFAR10) -> Path:
    """The directory holding the binary files of ``cs`` under ``data_dir`` (itself or the
    archive's folder); a one-line ValueError naming ``data.dir`` otherwise."""
    if data_dir is None or str(data_dir) == "":
        raise ValueError(f"data.dir: {cs.name} needs the directory holding the data "
                         "(--set data.dir=PATH); it is never downloaded")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.dir: {root} is not a directory")
    for cand in (root / cs.subdir, root):
        if all((cand / f).is_file() for f in cs.files):
            return cand
    for cand in (root / cs.py_subdir, root):
        if cand.is_dir() and any((cand / f).is_file() for f in cs.py_files):  # never opened
            raise ValueError(f"data.dir: {cand} holds the python (pickle) version of {cs.name}, which reslim "
                             f"does not read (unpickling can run code); download the binary version "
                             f"({cs.archive}, unpacks to {cs.subdir}) from {URL}")
    raise ValueError(f"data.dir: {cs.name} not found under {root}: expected {cs.subdir}/ "
                     f"({', '.join(cs.files)}, the binary version); see {URL}")


def _load_raw(where: Path, cs: _CifarSet = CIFAR10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    read = _READERS[cs.name]
    parts = [read(where / f) for f in cs.train]
    Xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    Xte, yte = read(where / cs.test)
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


def cifar_images(name: str, data_dir: str | Path | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` of ``cifar10`` or ``cifar100`` as uint8 images
    ``(n, 3, 32, 32)`` and int64 labels."""
    if name not in SETS:
        raise ValueError(f"unknown CIFAR set {name!r} (cifar10 or cifar100)")
    cs = SETS[name]
    return _load_raw(_locate(data_dir, cs), cs)


def _dataset(key: str, data_dir: str | Path | None, n_train: int | None, n_test: int | None, seed: int,
             grayscale: bool, pool: int) -> Dataset:
    """A CIFAR set as a :class:`Dataset`: seeded subsamples, pooled features centred by the
    training mean, one-hot targets."""
    if pool not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"data.pool must divide 32 (1, 2, 4, 8, 16 or 32), got {pool!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"data.{name} must be a positive integer or None, got {v!r}")
    cs = SETS[key]
    where = _locate(data_dir, cs)
    Xtr, ytr, Xte, yte = _load_raw(where, cs)
    if n_train is not None and n_train > len(Xtr):
        raise ValueError(f"data.n_train: {n_train} requested, the training set has {len(Xtr)}")
    rng = np.random.default_rng(seed)
    itr = rng.permutation(len(Xtr))[: n_train or len(Xtr)]
    ite = rng.permutation(len(Xte))[: n_test or len(Xte)]
    Ftr, Fte = _features(Xtr[itr], grayscale, pool), _features(Xte[ite], grayscale, pool)
    mean = Ftr.mean(axis=0)
    eye = np.eye(cs.classes)
    return Dataset(Ftr - mean, eye[ytr[itr]], name=f"{key}(seed={seed}, pool={pool})",
                   X_test=Fte - mean, Y_test=eye[yte[ite]],
                   info={"classes": cs.classes, "source": "bin", "dir": str(where)})


def cifar10(data_dir: str | Path | None, n_train: int | None = 2048, n_test: int | None = 1024,
            seed: int = 0, grayscale: bool = False, pool: int = 4) -> Dataset:
    """CIFAR-10 as a :class:`Dataset` (``d_in = (1 or 3) * (32/pool)^2``, ``d_out = 10``).

    ``n_train`` / ``n_test`` samples are drawn without replacement (seeded) from the official
    training / test sets (``None``: all of them).
    """
    return _dataset("cifar10", data_dir, n_train, n_test, seed, grayscale, pool)


def cifar100(data_dir: str | Path | None, n_train: int | None = 2048, n_test: int | None = 1024,
             seed: int = 0, grayscale: bool = False, pool: int = 4) -> Dataset:
    """CIFAR-100 (fine labels) as a :class:`Dataset`, as :func:`cifar10` (``d_out = 100``)."""
    return _dataset("cifar100", data_dir, n_train, n_test, seed, grayscale, pool)
