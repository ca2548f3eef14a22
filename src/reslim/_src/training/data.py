"""Training data: the synthetic sets of the reference experiments (docs/theory.md §3) and digits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """Samples ``X`` (N, d_in) and targets ``Y`` (N, d_out), float64."""

    X: np.ndarray
    Y: np.ndarray
    name: str = "data"
    X_test: np.ndarray | None = None
    Y_test: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        X = np.asarray(self.X, dtype=np.float64)
        Y = np.asarray(self.Y, dtype=np.float64)
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0] or X.shape[0] == 0:
            raise ValueError(f"data needs X (N, d_in) and Y (N, d_out) with N >= 1, got "
                             f"{X.shape} and {Y.shape}")
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise ValueError("data contains non-finite values")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "Y", Y)

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def d_in(self) -> int:
        return self.X.shape[1]

    @property
    def d_out(self) -> int:
        return self.Y.shape[1]


def gaussian_data(N: int = 10, d_in: int = 5, d_out: int = 5, seed: int = 0) -> Dataset:
    """``X, Y`` i.i.d. N(0, 1): the nonlinear reference experiment (docs/theory.md §3.1)."""
    rng = np.random.default_rng(seed)
    return Dataset(rng.standard_normal((N, d_in)), rng.standard_normal((N, d_out)),
                   name=f"gaussian(N={N}, d_in={d_in}, d_out={d_out}, seed={seed})")


def linear_teacher(N: int = 1, d_in: int = 3, d_out: int = 3, x_norm: float = 0.8,
                   noise: float = 0.05, seed: int = 0) -> Dataset:
    """Linear experiment data (docs/theory.md §3.2): ``x`` of norm ``x_norm``, ``y = A x + noise``.

    ``A`` (d_out, d_in) and the directions of ``x`` are standard Gaussian.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d_in))
    X = x_norm * X / np.linalg.norm(X, axis=1, keepdims=True)
    A = rng.standard_normal((d_out, d_in))
    Y = X @ A.T + noise * rng.standard_normal((N, d_out))
    return Dataset(X, Y, name=f"linear-teacher(N={N}, d_in={d_in}, d_out={d_out}, seed={seed})",
                   info={"A": A})


def digits(n_train: int | None = None, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 8x8 digits: inputs scaled to [0, 1] and centred, one-hot targets.

    A seeded train/test split; ``n_train`` keeps the first ``n_train`` training samples.
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = raw.data / 16.0
    X = X - X.mean(axis=0)
    Y = np.eye(10)[raw.target]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_test = int(round(test_fraction * len(X)))
    test, train = order[:n_test], order[n_test:]
    if n_train is not None:
        train = train[:n_train]
    return Dataset(X[train], Y[train], name=f"digits(seed={seed})", X_test=X[test],
                   Y_test=Y[test], info={"classes": 10})


DATASETS: dict[str, Callable[..., Dataset]] = {
    "gaussian": gaussian_data, "linear-teacher": linear_teacher, "digits": digits}


def make_dataset(kind: str, **options) -> Dataset:
    if kind not in DATASETS:
        raise ValueError(f"unknown data kind {kind!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[kind](**options)
