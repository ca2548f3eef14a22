"""The ``nfd-scaling`` experiment (docs/nfd-scaling.md): scaling laws from the Neural Feature Dynamics
view. The final training loss, at a fixed number of steps, of the NFD limit on the depth grids
``depths`` and of finite one-layer-block depth-muP networks on the grid ``depths x widths`` (ordinary
backprop and/or GIA training), each mode against its own limit (:data:`LIMIT_OF`: ordinary networks
against the reused-weight NFD, ``coupling="reused"``, GIA networks against the decoupled one,
``coupling="gia"``), fitted by :func:`reslim._src.diagnostics.nfd_scaling.scaling_laws`
(depth trend of the limit, finite-width error, crossover, compute frontier).

Data, training and solver options are the ``nfd`` kind's (:mod:`reslim._src.experiments.nfd`), so
both experiments describe the same problems. Runs (all stage 1): ``nfd`` (one per dataset, coupling
of a trained mode and L) and
``finite`` (one per dataset, mode, L, D, repetition; the repetitions of a cell are one batch).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from .nfd import LIMIT_OF, MODES, NFDDataSpec, NFDSolverSpec, NFDTrainSpec, finite_run, problem, train_finite
from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .runs import run_seed
from .spec import SpecBase, StrictModel


class NFDScalingAnalysisSpec(StrictModel):
    n_boot: int = Field(500, ge=0)


class NFDScalingSpec(SpecBase):
    """Spec of the ``nfd-scaling`` kind."""

    kind: Literal["nfd-scaling"] = "nfd-scaling"
    datasets: list[NFDDataSpec] = Field(default_factory=lambda: [NFDDataSpec()], min_length=1)
    activation: Literal["tanh", "gelu", "relu", "identity"] = "tanh"
    depths: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=4)
    widths: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=2)
    repetitions: int = Field(6, ge=2)
    modes: list[Literal["ordinary", "gia"]] = Field(["ordinary", "gia"], min_length=1)
    seed: int = 0
    train: NFDTrainSpec = Field(default_factory=NFDTrainSpec)
    nfd: NFDSolverSpec = Field(default_factory=NFDSolverSpec)
    analysis: NFDScalingAnalysisSpec = Field(default_factory=NFDScalingAnalysisSpec)

    @field_validator("depths", "widths")
    @classmethod
    def _sorted(cls, v):
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> NFDScalingSpec:
        if self.nfd.particles % self.nfd.replicas or self.nfd.particles // self.nfd.replicas < 2:
            raise ValueError("nfd.particles must be a multiple of nfd.replicas (at least 2 each)")
        if len(self.depths) < 4:
            raise ValueError("depths: the depth-trend fit R_NFD + a L^-p needs four or more depths")
        if self.train.optimizer == "sgd":
            if self.train.batch_size is None:
                raise ValueError("train.batch_size: sgd needs a minibatch size")
            for d in self.datasets:
                if self.train.batch_size > d.P:
                    raise ValueError(f"train.batch_size must be <= every dataset's P ({d.P})")
        return self


class NFDScaling(ExperimentKind[NFDScalingSpec]):
    spec_model = NFDScalingSpec
    report_module = "reslim._src.report.nfd_scaling"

    def common(self, spec: NFDScalingSpec, data: NFDDataSpec) -> dict[str, Any]:
        return {
            "kind": self.name,
            "data": data.model_dump(mode="json"),
            "train": spec.train.model_dump(mode="json"),
            "activation": spec.activation,
            "dtype": spec.dtype,
        }

    def expand(self, spec: NFDScalingSpec) -> list[Run]:
        runs = []
        K = spec.train.steps
        from ..report.nfd import dataset_names

        names = dataset_names(spec)
        for i, data in enumerate(spec.datasets):
            base = self.common(spec, data)
            P = data.P + data.P_test
            for coupling in couplings(spec):
                reused = coupling == "reused"
                for L in spec.depths:
                    cfg = {
                        **base,
                        "role": "nfd",
                        "dataset": i,
                        "L": L,
                        "coupling": coupling,
                        "solver": spec.nfd.model_dump(mode="json"),
                    }
                    cost = 4.0 * spec.nfd.particles * L * K * P * (K * data.P + P) * (2 if reused else 1)
                    runs.append(
                        Run(
                            self.name,
                            cfg,
                            group=run_key(cfg),
                            stage=1,
                            cost=cost,
                            mem=8.0 * (6 if reused else 4) * spec.nfd.particles / spec.nfd.replicas
                            * L * K * data.P,
                            label=f"NFD {coupling} (dataset {names[i]}, L={L})",
                        )
                    )
            for mode in spec.modes:
                for L in spec.depths:
                    for D in spec.widths:
                        for r in range(spec.repetitions):
                            cfg = {
                                **base,
                                "role": "finite",
                                "dataset": i,
                                "gia": mode == "gia",
                                "L": L,
                                "D": D,
                                "rep": r,
                                "seed": run_seed(spec.seed, i, L, D, r),
                            }
                            label = f"depth-mup {mode} (dataset {names[i]}, L={L}, D={D})"
                            runs.append(finite_run(self.name, cfg, data.P, K, label))
        return runs

    def execute(self, runs: list[Run]) -> list[RunResult]:
        if runs[0].config["role"] == "nfd":
            return [self._nfd(r) for r in runs]
        return self._finite(runs)

    def _nfd(self, run: Run) -> RunResult:
        from ..diagnostics.nfd_scaling import nfd_losses

        c = run.config
        s = c["solver"]
        t0 = time.perf_counter()
        row = nfd_losses(
            problem(c),
            [c["L"]],
            particles=s["particles"],
            replicas=s["replicas"],
            seed=s["seed"],
            dtype=c["dtype"],
            coupling=c.get("coupling", "gia"),
        ).iloc[0]
        metrics = {k: _num(row[k]) for k in ("loss_final", "loss_stderr", "loss0")}
        return RunResult(
            run.key, "diverged" if row["diverged"] else "done", metrics, {}, seconds=time.perf_counter() - t0
        )

    def _finite(self, runs: list[Run]) -> list[RunResult]:
        c = runs[0].config
        pb = problem(c)
        traj, seconds = train_finite(runs, record=("loss",))
        out = []
        for b, run in enumerate(runs):
            bad = int(traj.diverged_at[b]) >= 0
            metrics = {
                "loss_final": None if bad else _num(traj.loss[-1, b]),
                "loss0": _num(traj.loss[0, b]),
                "compute": 6.0 * pb.batch * pb.steps * c["L"] * c["D"] ** 2,
            }
            out.append(RunResult(run.key, "diverged" if bad else "done", metrics, {}, seconds=seconds))
        return out

    def table(self, spec: NFDScalingSpec, store, dataset: int):
        """The :func:`~reslim._src.diagnostics.nfd_scaling.nfd_scaling` table of one dataset."""
        import pandas as pd

        rows = []
        for rec in self.records(spec, store):
            c, m = rec.config, rec.metrics or {}
            if c["dataset"] != dataset or rec.status not in ("done", "diverged"):
                continue
            nfd = c["role"] == "nfd"
            rows.append(
                {
                    "source": "nfd" if nfd else "finite",
                    "mode": "nfd" if nfd else ("gia" if c["gia"] else "ordinary"),
                    "coupling": c.get("coupling", "gia") if nfd else "",
                    "L": int(c["L"]),
                    "width": math.inf if nfd else float(c["D"]),
                    "seed": -1 if nfd else int(c["rep"]),
                    "loss_final": _nan(m.get("loss_final")),
                    "loss_stderr": _nan(m.get("loss_stderr")),
                    "loss0": _nan(m.get("loss0")),
                    "diverged": rec.status == "diverged",
                    "compute": _nan(m.get("compute")),
                    "seconds": float(rec.seconds or 0.0),
                }
            )
        return pd.DataFrame(rows)


def couplings(spec: NFDScalingSpec) -> list[str]:
    """The limit's couplings the spec's modes are compared with (:data:`LIMIT_OF`)."""
    return [LIMIT_OF[m] for m in MODES if m in spec.modes]


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _nan(v) -> float:
    return math.nan if v is None else float(v)


register_experiment("nfd-scaling", NFDScaling())
