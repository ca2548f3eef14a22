"""The limit interface: a :class:`LimitProblem` (what a finite network is given) and the
:class:`Limit` base class. The table of named solvers is in :mod:`.solvers`, beside them.

A limit solves a problem and returns the same :class:`~reslim.Trajectory` a finite network
produces with :func:`reslim.train`: step ``k`` is the model after ``k`` GD updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from ..models.activations import get_activation
from ..training.data import Dataset
from ..training.trajectory import Trajectory

LOSSES = ("sum", "mean")


def _positive(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _matrix_batch(name: str, value: Any, cols: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[2] != cols or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, D, {cols}) or (D, {cols}), got {np.shape(value)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


@dataclass(frozen=True)
class LimitProblem:
    """Everything a finite MLU network is given (docs/theory.md §1), for a limit to solve.

    - ``data``: training set, ``X`` (N, d_in), ``Y`` (N, d_out)
    - ``K``: number of full-batch GD steps (the record has steps 0..K)
    - ``eta``: base learning rate (network lr ``eta L M D / alpha^2``); ``alpha``: branch constant
    - ``loss``: ``"sum"`` (R = 1/(2N) sum_n |y_n - Y_n|^2) or ``"mean"`` (also / d_out, so
      ``b(1) = W_u (y - Y) / d_out``)
    - ``activation``: name of sigma (``"identity"`` for the exact limits)
    - ``W_e`` (B, D, d_in), ``W_u`` (B, D, d_out): effective embedding / readout matrices,
      ``h_0 = W_e x``, ``y = W_u^T h(1) / D``; ``B`` independent draws (optional for the
      large-D limit, which only needs their law)
    - ``embed_std``, ``readout_std``: std of the i.i.d. Gaussian entries of ``W_e``, ``W_u``
      (the law the large-D limit uses)
    - ``param``: the parameterization (only ``"mlu"``, reference form)
    """

    data: Dataset
    K: int
    eta: float = 0.1
    alpha: float = 1.0
    loss: str = "sum"
    activation: str = "identity"
    W_e: np.ndarray | None = None
    W_u: np.ndarray | None = None
    embed_std: float = 1.0
    readout_std: float = 1.0
    param: str = "mlu"

    def __post_init__(self) -> None:
        if not isinstance(self.data, Dataset):
            raise ValueError(f"data must be a reslim.Dataset, got {type(self.data).__name__}")
        if isinstance(self.K, bool) or not isinstance(self.K, (int, np.integer)) or self.K < 0:
            raise ValueError(f"K must be a non-negative integer, got {self.K!r}")
        object.__setattr__(self, "K", int(self.K))
        for name in ("eta", "alpha", "embed_std", "readout_std"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        get_activation(self.activation)
        if self.param != "mlu":
            raise ValueError(f"param must be 'mlu' (reference form), got {self.param!r}")
        if (self.W_e is None) != (self.W_u is None):
            raise ValueError("W_e and W_u must be given together")
        if self.W_e is not None:
            W_e = _matrix_batch("W_e", self.W_e, self.data.d_in)
            W_u = _matrix_batch("W_u", self.W_u, self.data.d_out)
            if W_e.shape[:2] != W_u.shape[:2]:
                raise ValueError(f"W_e and W_u must share (B, D), got {W_e.shape[:2]} and {W_u.shape[:2]}")
            object.__setattr__(self, "W_e", W_e)
            object.__setattr__(self, "W_u", W_u)

    @property
    def N(self) -> int:
        return self.data.N

    @property
    def d_in(self) -> int:
        return self.data.d_in

    @property
    def d_out(self) -> int:
        return self.data.d_out

    @property
    def D(self) -> int | None:
        """Embedding dimension of ``W_e``, or ``None`` when no matrices are given."""
        return None if self.W_e is None else self.W_e.shape[1]

    @property
    def B(self) -> int:
        """Number of (W_e, W_u) draws (1 when none are given)."""
        return 1 if self.W_e is None else self.W_e.shape[0]

    @property
    def loss_scale(self) -> float:
        """``c`` in the per-sample loss |y - Y|^2 / (2c): 1 (``"sum"``) or d_out (``"mean"``)."""
        return float(self.d_out) if self.loss == "mean" else 1.0

    def require_embeddings(self, who: str) -> tuple[np.ndarray, np.ndarray]:
        if self.W_e is None or self.W_u is None:
            raise ValueError(f"W_e: {who} needs the embedding and readout matrices W_e, W_u")
        return self.W_e, self.W_u


ProblemT = TypeVar("ProblemT")


class Limit(ABC, Generic[ProblemT]):
    """A limit (or reference) of the training dynamics: ``solve(problem) -> Trajectory``.

    Generic in the problem it solves (``Limit[LimitProblem]`` for the MLU ResNet's limits; an
    architecture with its own problem, e.g. the deep linear network, sets ``problem_type``).
    Subclasses set ``name``, ``problem_type`` and ``activations`` (those they can solve) and
    implement :meth:`_solve`; :meth:`solve` checks the problem first.
    """

    name: ClassVar[str] = ""
    problem_type: ClassVar[type] = LimitProblem
    activations: ClassVar[tuple[str, ...] | None] = None  # None: any activation

    def solve(self, problem: ProblemT) -> Trajectory:
        if not isinstance(problem, self.problem_type):
            raise ValueError(f"problem must be a {self.problem_type.__name__}, got {type(problem).__name__}")
        activation = getattr(problem, "activation", None)
        if self.activations is not None and activation not in self.activations:
            raise ValueError(f"activation: {type(self).__name__} solves {', '.join(self.activations)} "
                             f"only, got {activation!r}")
        traj = self._solve(problem)
        traj.meta.setdefault("limit", self.name)
        return traj

    @abstractmethod
    def _solve(self, problem: ProblemT) -> Trajectory:  # pragma: no cover - interface
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
