"""The ``nfd`` experiment (docs/experiments.md "nfd"; docs/limits.md "NFD"): finite one-layer-block
ResNets against the Neural Feature Dynamics limit (:mod:`reslim._src.limits.nfd`).

Runs (all stage 1; the analysis compares the stored outputs, so no run waits for another):

- ``nfd`` (one per dataset, coupling and depth grid L): the limit on the L-grid, outputs
  (K+1, P, d_out), their replica standard errors, the loss. Two couplings: ``reused`` (the limit of
  ordinary networks, whose backward pass reuses the forward weights) and ``gia`` (the decoupled
  system, the limit of GIA-trained networks); ordinary networks are compared with the first, GIA
  networks with the second (:data:`LIMIT_OF`).
- ``finite`` (one per dataset, parameterization, training mode, depth L, width D and repetition;
  the repetitions of a cell train together as one batch of networks): the outputs of reslim's
  ``ResNet(block="one-layer")`` trained by :func:`reslim.train` (ordinary backprop, or the GIA mode
  of issue 6 when ``gia``), with the options of :func:`reslim.limits.nfd_network_options`.

Sweeps: ``width`` (D over ``widths`` at depth ``width_depth``, depth-muP, ordinary and GIA),
``depth`` (L over ``depths`` at width ``depth_width``, depth-muP, ordinary and GIA), ``joint``
(L over ``joint_depths`` at width ``joint_width L^2``, so that the O(D^-1/2) width error and the
O(1/L) depth error shrink together) and ``mup``
(the same depth sweep under muP, ordinary training). The errors and fits are in
:mod:`reslim._src.report.nfd`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .runs import run_seed
from .spec import SpecBase, StrictModel

Sweep = Literal["width", "depth", "joint", "mup"]
Mode = Literal["ordinary", "gia"]
SWEEPS: tuple[Sweep, ...] = ("width", "depth", "joint", "mup")
MODES: tuple[Mode, ...] = ("ordinary", "gia")
#: the NFDLimit coupling whose solution is the limit of each training mode
LIMIT_OF: dict[str, str] = {"ordinary": "reused", "gia": "gia"}


class NFDDataSpec(StrictModel):
    """``synthetic``: X (P + P_test, d_in) i.i.d. N(0, 1), Y = sin(2 x.a) (d_out = 1), a a random unit
    vector; ``digits``: scikit-learn's 8x8 digits (reslim.digits, one-hot targets, d_out = 10).
    Rows of X are scaled to norm ``x_norm``."""

    kind: Literal["synthetic", "digits"] = "synthetic"
    P: PositiveInt = 8
    P_test: int = Field(16, ge=0)
    d_in: PositiveInt = Field(4, description="synthetic only")
    x_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    seed: int = 0


class NFDTrainSpec(StrictModel):
    steps: PositiveInt = 8
    lr: float = Field(1.0, gt=0, allow_inf_nan=False)
    optimizer: Literal["gd", "sgd"] = "gd"
    batch_size: PositiveInt | None = Field(None, description="sgd minibatch size")
    data_seed: int = 0
    loss: Literal["sum", "mean"] = "sum"


class NFDSolverSpec(StrictModel):
    L: PositiveInt = Field(64, description="depth grid of the reference limit")
    particles: PositiveInt = 4096
    replicas: PositiveInt = 4
    seed: int = 0


class NFDAnalysisSpec(StrictModel):
    n_boot: int = Field(500, ge=0)


class NFDSpec(SpecBase):
    """Spec of the ``nfd`` kind."""

    kind: Literal["nfd"] = "nfd"
    datasets: list[NFDDataSpec] = Field(default_factory=lambda: [NFDDataSpec()], min_length=1)
    activation: Literal["tanh", "gelu", "relu", "identity"] = "tanh"
    widths: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    width_depth: PositiveInt = 8
    depths: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)
    depth_width: PositiveInt = 256
    joint_depths: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    joint_width: PositiveInt = Field(8, description="the joint sweep's width is joint_width * L^2")
    repetitions: PositiveInt = 4
    seed: int = 0
    sweeps: list[Sweep] = Field(default_factory=lambda: list(SWEEPS), min_length=1)
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    train: NFDTrainSpec = Field(default_factory=NFDTrainSpec)
    nfd: NFDSolverSpec = Field(default_factory=NFDSolverSpec)
    analysis: NFDAnalysisSpec = Field(default_factory=NFDAnalysisSpec)

    @field_validator("widths", "depths", "joint_depths")
    @classmethod
    def _sorted(cls, v):
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> NFDSpec:
        if self.nfd.particles % self.nfd.replicas or self.nfd.particles // self.nfd.replicas < 2:
            raise ValueError("nfd.particles must be a multiple of nfd.replicas (at least 2 each)")
        if self.train.optimizer == "sgd":
            if self.train.batch_size is None:
                raise ValueError("train.batch_size: sgd needs a minibatch size")
            for d in self.datasets:
                if self.train.batch_size > d.P:
                    raise ValueError(f"train.batch_size must be <= every dataset's P ({d.P})")
        if self.nfd.L < max(self.depths + self.joint_depths + [self.width_depth]):
            raise ValueError("nfd.L: the reference grid must be at least as fine as the deepest network")
        return self


def make_data(c: dict[str, Any]) -> dict[str, np.ndarray]:
    """``X, Y, X_test, Y_test`` of a dataset config (rows of X scaled to norm ``x_norm``)."""
    P, Pt = c["P"], c["P_test"]
    if c["kind"] == "digits":
        from ..training.data import digits

        d = digits(seed=c["seed"])
        assert d.X_test is not None and d.Y_test is not None
        if P > d.N or Pt > d.X_test.shape[0]:
            raise ValueError(f"digits has {d.N} training and {d.X_test.shape[0]} test samples")
        X, Y, Xt, Yt = d.X[:P], d.Y[:P], d.X_test[:Pt], d.Y_test[:Pt]
    else:
        rng = np.random.default_rng(c["seed"])
        Xa = rng.standard_normal((P + Pt, c["d_in"]))
        a = rng.standard_normal(c["d_in"])
        a /= np.linalg.norm(a)
        Xa = Xa / np.linalg.norm(Xa, axis=1, keepdims=True)
        Ya = np.sin(2.0 * np.sqrt(c["d_in"]) * Xa @ a)[:, None]
        X, Y, Xt, Yt = Xa[:P], Ya[:P], Xa[P:], Ya[P:]

    def scale(A):
        n = np.linalg.norm(A, axis=1, keepdims=True)
        return c["x_norm"] * A / np.where(n > 0, n, 1.0)

    return {"X": scale(X), "Y": Y, "X_test": scale(Xt) if Pt else None, "Y_test": Yt if Pt else None}


def problem(c: dict[str, Any]):
    """The :class:`NFDProblem` of a run config (its ``data``, ``train`` and ``activation``)."""
    from ..limits.nfd import NFDProblem

    d, tr = make_data(c["data"]), c["train"]
    return NFDProblem(d["X"], d["Y"], steps=tr["steps"], lr=tr["lr"], optimizer=tr["optimizer"],
                      batch_size=tr["batch_size"], data_seed=tr["data_seed"], loss=tr["loss"],
                      activation=c["activation"], X_test=d["X_test"], Y_test=d["Y_test"])


def finite_run(kind: str, cfg: dict[str, Any], P: int, K: int, label: str, flops: float = 6.0) -> Run:
    """The :class:`Run` of one finite network of an NFD kind's grid: batched with the runs that
    differ from it only in ``rep`` and ``seed``; cost ``flops L D^2 P K`` (three times that in GIA
    mode, which also runs the backward weights), memory that of its block weights."""
    L, D, gia = cfg["L"], cfg["D"], cfg["gia"]
    batch = {k: v for k, v in cfg.items() if k not in ("rep", "seed")}
    cost = flops * L * D * D * P * K * (3 if gia else 1) + 1e5
    return Run(kind, cfg, group=run_key(batch), stage=1, cost=cost, mem=8.0 * L * D * D * (2 if gia else 1),
               label=label)


def train_finite(runs: list[Run], record: tuple[str, ...] = ("loss",), test: bool = False):
    """Train the finite networks of ``runs`` (one config up to ``seed``) as one batched ``ResNet``:
    the network whose limit is the runs' NFD problem (:func:`reslim.limits.nfd_network_options`),
    under the config's ``param`` when it is not depth-muP. ``test``: also the test loss when the
    data has a test set. Returns ``(trajectory, seconds per run)``."""
    from ..limits.nfd import nfd_network_options
    from ..models.resnet import ResNet
    from ..scaling.parameterization import get_parameterization
    from ..scaling.shapes import Shape
    from ..training.data import Dataset
    from ..training.trainer import train

    t0 = time.perf_counter()
    c = runs[0].config
    opts = nfd_network_options(problem(c))
    model_kw = dict(opts["model"])
    if c.get("param", "depth-mup") != "depth-mup":
        model_kw["param"] = get_parameterization(c["param"])
    d = make_data(c["data"])
    with_test = test and d["X_test"] is not None
    data = Dataset(d["X"], d["Y"], X_test=d["X_test"] if with_test else None,
                   Y_test=d["Y_test"] if with_test else None)
    net = ResNet(Shape(c["L"], c["D"], c["D"]), seeds=[r.config["seed"] for r in runs], dtype=c["dtype"],
                 **model_kw)
    traj = train(net, data, gia=c["gia"], record=record + (("test_loss",) if with_test else ()),
                 **opts["train"])
    return traj, (time.perf_counter() - t0) / len(runs)


def _list(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float).ravel()]


def cells(spec: NFDSpec) -> list[tuple[str, str, int, int]]:
    """The finite-network cells ``(param, mode, L, D)`` of the spec's sweeps."""
    out = []
    if "width" in spec.sweeps:
        out += [("depth-mup", m, spec.width_depth, D) for m in spec.modes for D in spec.widths]
    if "depth" in spec.sweeps:
        out += [("depth-mup", m, L, spec.depth_width) for m in spec.modes for L in spec.depths]
    if "joint" in spec.sweeps:
        out += [("depth-mup", m, L, spec.joint_width * L * L) for m in spec.modes for L in spec.joint_depths]
    if "mup" in spec.sweeps:
        out += [("mup", "ordinary", L, spec.depth_width) for L in spec.depths]
    return sorted(set(out), key=lambda c: (c[0], c[1], c[2], c[3]))


def couplings(spec: NFDSpec) -> list[str]:
    """The limit's couplings the spec needs: that of every mode (the muP sweep trains ordinarily)."""
    modes = set(spec.modes) | ({"ordinary"} if "mup" in spec.sweeps else set())
    return [LIMIT_OF[m] for m in MODES if m in modes]


def grids(spec: NFDSpec) -> list[int]:
    """Depth grids the limit is solved on: the reference, the width sweep's depth, every depth."""
    return sorted({spec.nfd.L, spec.width_depth, *spec.depths, *spec.joint_depths})


class NFDExperiment(ExperimentKind):
    spec_model = NFDSpec
    report_module = "reslim._src.report.nfd"

    def common(self, spec: NFDSpec, data: NFDDataSpec) -> dict[str, Any]:
        return {"kind": self.name, "data": data.model_dump(mode="json"),
                "train": spec.train.model_dump(mode="json"),
                "activation": spec.activation, "dtype": spec.dtype}

    def expand(self, spec: NFDSpec) -> list[Run]:
        runs = []
        K = spec.train.steps
        from ..report.nfd import dataset_names

        names = dataset_names(spec)
        for i, data in enumerate(spec.datasets):
            base = self.common(spec, data)
            P = data.P + data.P_test
            for coupling in couplings(spec):
                for L in grids(spec):
                    cfg = {**base, "role": "nfd", "dataset": i, "L": L, "coupling": coupling,
                           "solver": spec.nfd.model_dump(mode="json")}
                    cost = (4.0 * spec.nfd.particles * L * K * P * (K * data.P + P)
                            * (2 if coupling == "reused" else 1))
                    runs.append(Run(self.name, cfg, group=run_key(cfg), stage=1, cost=cost,
                                    mem=8.0 * (6 if coupling == "reused" else 4) * spec.nfd.particles
                                    / spec.nfd.replicas * L * K * data.P,
                                    label=f"NFD {coupling} (dataset {names[i]}, L={L})"))
            for param, mode, L, D in cells(spec):
                for r in range(spec.repetitions):
                    cfg = {**base, "role": "finite", "dataset": i, "param": param, "gia": mode == "gia",
                           "L": L, "D": D, "rep": r, "seed": run_seed(spec.seed, i, L, D, r)}
                    runs.append(finite_run(self.name, cfg, data.P, K, flops=4.0,
                                           label=f"{param} {mode} (dataset {names[i]}, L={L}, D={D})"))
        return runs

    def execute(self, runs: list[Run]) -> list[RunResult]:
        if runs[0].config["role"] == "nfd":
            return [self._nfd(r) for r in runs]
        return self._finite(runs)

    def _nfd(self, run: Run) -> RunResult:
        from ..limits.nfd import NFDLimit

        c = run.config
        s = c["solver"]
        t0 = time.perf_counter()
        traj = NFDLimit(L=c["L"], particles=s["particles"], replicas=s["replicas"], seed=s["seed"],
                        dtype=c["dtype"], coupling=c["coupling"]).solve(problem(c))
        m = traj.meta
        div = int(traj.diverged_at[0])
        arrays = {"outputs": traj.require("outputs")[:, 0], "output_stderr": m["output_stderr"][:, 0],
                  "replica_outputs": m["replica_outputs"]}
        if "test_outputs" in m:
            arrays["test_outputs"] = m["test_outputs"][:, 0]
        metrics = {"loss": _list(traj.loss[:, 0]), "loss_stderr": _list(m["loss_stderr"][:, 0]),
                   "diverged_at": div,
                   "test_loss": None if traj.test_loss is None else _list(traj.test_loss[:, 0])}
        return RunResult(run.key, "diverged" if div >= 0 else "done", metrics, arrays,
                         seconds=time.perf_counter() - t0)

    def _finite(self, runs: list[Run]) -> list[RunResult]:
        traj, seconds = train_finite(runs, record=("loss", "outputs"), test=True)
        y = traj.require("outputs")
        out = []
        for b, run in enumerate(runs):
            div = int(traj.diverged_at[b])
            metrics = {"loss": _list(traj.loss[:, b]), "diverged_at": div,
                       "test_loss": None if traj.test_loss is None else _list(traj.test_loss[:, b])}
            out.append(RunResult(run.key, "diverged" if div >= 0 else "done", metrics,
                                 {"outputs": y[:, b]}, seconds=seconds))
        return out


register_experiment("nfd", NFDExperiment())
