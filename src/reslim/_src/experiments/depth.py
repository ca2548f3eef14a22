"""What the depth kinds (``gia-gap``, ``collapse``, ``transfer``; docs/depth.md) share: the data
they train on (:class:`DataSpec`, :func:`load_data`), the training and analysis sections of their
specs, and :class:`DepthKind`, whose tasks run on one torch thread at small widths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, Field, PositiveInt

from ..training.data import Dataset, digits, gaussian_data
from ..training.trainer import threads
from .registry import ExperimentKind, Run, RunResult, SpecT
from .runs import RunConfig
from .spec import StrictModel

#: widths up to which a task runs on one torch thread (tiny GEMMs: more threads only contend,
#: badly so on a busy machine; see training.trainer.SMALL_WORK)
ONE_THREAD_WIDTH = 64


# ------------------------------------------------------------------------------ data
class DataSpec(StrictModel):
    """``digits`` (sklearn, train/test split), ``teacher`` (Gaussian inputs, targets of a random
    tanh network, train/test), ``gaussian`` (i.i.d. targets) or ``cifar10`` (from ``dir``)."""

    kind: Literal["digits", "teacher", "gaussian", "cifar10"] = "digits"
    n_train: PositiveInt = 256
    n_test: PositiveInt = 256
    seed: int = 0
    d_in: PositiveInt = 16
    d_out: PositiveInt = 4
    dir: str | None = None
    pool: PositiveInt = 4
    grayscale: bool = False


def teacher_data(n_train: int = 256, n_test: int = 256, d_in: int = 16, d_out: int = 4,
                 hidden: int = 64, seed: int = 0) -> Dataset:
    """Synthetic regression: ``x ~ N(0, I_{d_in})``, ``y = A tanh(B x / sqrt(d_in)) / sqrt(hidden)``
    with ``A (d_out, hidden)``, ``B (hidden, d_in)`` standard Gaussian; train and test splits."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d_out, hidden))
    Bm = rng.standard_normal((hidden, d_in))
    X = rng.standard_normal((n_train + n_test, d_in))
    Y = np.tanh(X @ Bm.T / math.sqrt(d_in)) @ A.T / math.sqrt(hidden)
    return Dataset(X[:n_train], Y[:n_train], name=f"teacher(seed={seed})", X_test=X[n_train:],
                   Y_test=Y[n_train:], info={"hidden": hidden})


def load_data(d: DataSpec | dict[str, Any]) -> Dataset:
    """The :class:`Dataset` of a :class:`DataSpec` (or of its dict, as a run config stores it)."""
    d = d if isinstance(d, DataSpec) else DataSpec.model_validate(d)
    if d.kind == "digits":
        return digits(n_train=d.n_train, seed=d.seed)
    if d.kind == "teacher":
        return teacher_data(d.n_train, d.n_test, d.d_in, d.d_out, seed=d.seed)
    if d.kind == "gaussian":
        return gaussian_data(d.n_train, d.d_in, d.d_out, d.seed)
    from ..training.cifar import cifar10

    return cifar10(d.dir, n_train=d.n_train, n_test=d.n_test, seed=d.seed, grayscale=d.grayscale,
                   pool=d.pool)


def check_data(data: DataSpec) -> None:
    """Fail at spec time (one line) when CIFAR-10 is requested but not on disk."""
    if data.kind == "cifar10":
        from ..training.cifar import _locate

        _locate(data.dir)


class TrainSpec(StrictModel):
    steps: PositiveInt = 100
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["gd", "sgd", "adam"] = "sgd"
    batch_size: PositiveInt | None = 64
    loss: Literal["sum", "mean"] = "sum"


class AnalysisSpec(StrictModel):
    n_boot: int = Field(1000, ge=0)


def sorted_depths(v: list[int]) -> list[int]:
    """A spec's depths, sorted and without repeats (at least one, all positive): :data:`Depths`."""
    if not v:
        raise ValueError("must list at least one depth")
    if any(x < 1 for x in v):
        raise ValueError("depths must be positive")
    return sorted(set(v))


#: a spec's ``depths`` field: positive, sorted, no repeats, at least one
Depths = Annotated[list[PositiveInt], AfterValidator(sorted_depths)]


def batch_for(batch_size: int | None, data: Dataset) -> int | None:
    """Minibatch size capped at the number of samples (``None``: full batch)."""
    return None if batch_size is None else min(int(batch_size), data.N)


def finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class DepthConfig(RunConfig):
    """What every depth run config holds: an ``(L, width, width)`` network of one seed trained on
    ``data``; each kind adds its own fields."""

    kind: str
    L: int
    width: int
    activation: str
    dtype: str
    data: DataSpec
    train: TrainSpec
    seed: int


class DepthKind(ExperimentKind[SpecT]):
    """The depth kinds: runs carry a typed config (:attr:`config_type`, read back from the stored
    dict before a task executes); a task (runs of one width) executes on one torch thread up to
    :data:`ONE_THREAD_WIDTH` (the project's thread budget, :func:`reslim.threads`), on the current
    count above."""

    config_type: ClassVar[type[DepthConfig] | type[RunConfig]]

    def execute(self, runs: list[Run]) -> list[RunResult]:
        configs = [self.config_type.from_dict(r.config) for r in runs]
        with threads(1 if configs[0].width <= ONE_THREAD_WIDTH else None):
            return self._execute(runs, configs)

    def _execute(self, runs: list[Run], configs: list) -> list[RunResult]:
        raise NotImplementedError

    @staticmethod
    def results(runs: list[Run], rows: list[dict[str, Any]], metrics, t0: float) -> list[RunResult]:
        """One result per run from its row of a diagnostics table (``diverged`` flags it);
        ``metrics(row)`` picks the stored metrics; the task's seconds are shared equally."""
        import time

        sec = (time.perf_counter() - t0) / len(runs)
        return [RunResult(run.key, "diverged" if row["diverged"] else "done", metrics(row), seconds=sec)
                for run, row in zip(runs, rows, strict=True)]

    def configs(self, spec, store) -> list[tuple[Any, Any]]:
        """``(record, typed config)`` of ``spec``'s stored runs."""
        return [(rec, self.config_type.from_dict(rec.config)) for rec in self.records(spec, store)]

    @staticmethod
    def metric_row(rec, row: dict[str, Any], names=None) -> dict[str, Any]:
        """``row`` with the record's metrics ``names`` (default: all) as floats, NaN where unset."""
        for k in rec.metrics if names is None else names:
            v = rec.metrics.get(k)
            row[k] = np.nan if v is None else float(v)
        return row

    @staticmethod
    def fit_analysis(df, summary_metrics, fit_metrics, by: list[str], n_boot: int) -> dict[str, Any]:
        """The table, its per-depth summary and the fitted ``~ L^p`` exponents per group ``by``."""
        import pandas as pd

        from ..diagnostics import depth as dd

        if df.empty:
            return {"table": df, "summary": df, "fits": pd.DataFrame()}
        return {"table": df, "summary": dd.summarize_by_depth(df, summary_metrics, by=by),
                "fits": dd.fit_depth_exponents(df, fit_metrics, by=by, n_boot=n_boot)}
