"""Kind ``transfer`` (docs/depth.md): per (dataset, param, width, L, lr, seed) the final training
risk; runs of one (dataset, param, width, L) train as one batch with one lr per network. Optima,
drift of ``log2 lr*`` per doubling of ``L``, verdicts, figures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..diagnostics import transfer as tr
from .depth import (
    DataSpec,
    DepthKind,
    TrainSpec,
    batch_for,
    check_data,
    finite_or_none,
    load_data,
    sorted_depths,
)
from .registry import Run, RunResult, register_experiment, run_key
from .runs import RunConfig
from .spec import ParamSpec, SpecBase, StrictModel


class SweepParam(StrictModel):
    """A parameterization and its lr grid ``2^log2_lr[0] .. 2^log2_lr[1]`` (step ``lr_step``)."""

    name: str
    options: dict[str, float | int | str] = Field(default_factory=dict)
    log2_lr: tuple[float, float] = (-4.0, 4.0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        ParamSpec(name=v)
        return v

    @field_validator("log2_lr")
    @classmethod
    def _order(cls, v):
        if not v[0] < v[1]:
            raise ValueError("log2_lr must be [low, high] with low < high")
        return v


class TransferSpec(SpecBase):
    kind: Literal["transfer"] = "transfer"
    dtype: Literal["float64", "float32"] = "float32"
    params: list[SweepParam] = Field(min_length=1)
    depths: list[PositiveInt] = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    widths: list[PositiveInt] = Field(default_factory=lambda: [16])
    hidden: PositiveInt | None = Field(
        None, description="hidden width M of every block (default: M = width; width is the embedding "
                          "dimension D)")
    lr_step: float = Field(1.0, gt=0)
    seeds: PositiveInt = 2
    seed: int = 0
    block: Literal["two-layer", "one-layer"] = "two-layer"
    activation: str = "tanh"
    datasets: list[DataSpec] = Field(default_factory=lambda: [DataSpec(kind="digits")], min_length=1)
    train: TrainSpec = TrainSpec(steps=100, lr=1.0, optimizer="gd", batch_size=None)
    threshold: float = Field(0.25, gt=0, description="max |drift| (octaves per doubling of L)")
    tol: float = Field(0.02, ge=0, description="relative tolerance of 'deeper never worse'")

    @field_validator("depths")
    @classmethod
    def _v_depths(cls, v: list[int]) -> list[int]:
        return sorted_depths(v)

    @model_validator(mode="after")
    def _check(self):
        for d in self.datasets:
            check_data(d)
        names = [d.kind for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("datasets: each data kind may appear once")
        return self

    def grid(self, p: SweepParam) -> list[float]:
        lo, hi = p.log2_lr
        return [float(2.0**k) for k in np.arange(lo, hi + 1e-9, self.lr_step)]


@dataclass(frozen=True)
class TransferConfig(RunConfig):
    """One ``transfer`` run: a (dataset, param, width, L) network of one seed at one learning rate."""

    kind: Literal["transfer"]
    dataset: str
    data: DataSpec
    param: str
    options: dict[str, float | int | str]
    L: int
    width: int
    block: str
    activation: str
    dtype: str
    train: TrainSpec
    lr: float
    seed: int
    hidden: int | None = None  # the blocks' hidden width M where it differs from width (= D)

    def to_dict(self) -> dict:
        d = super().to_dict()
        if d["hidden"] is None:  # M = D: the config (and key) of a run from before the option
            del d["hidden"]
        return d

    @classmethod
    def from_dict(cls, config: dict):
        return super().from_dict({"hidden": None, **config})


class Transfer(DepthKind[TransferSpec]):
    spec_model = TransferSpec
    config_type = TransferConfig

    def expand(self, spec: TransferSpec) -> list[Run]:
        runs = []
        for d in spec.datasets:
            for p in spec.params:
                for W in spec.widths:
                    M = W if spec.hidden is None or spec.block == "one-layer" else spec.hidden
                    hidden = None if M == W else M
                    for L in spec.depths:
                        cost = 6.0 * L * M * W * d.n_train * spec.train.steps
                        for lr in spec.grid(p):
                            for rep in range(spec.seeds):
                                cfg = TransferConfig("transfer", d.kind, d, p.name, dict(p.options), L, W,
                                                     spec.block, spec.activation, spec.dtype, spec.train,
                                                     lr=lr, seed=spec.seed + rep, hidden=hidden)
                                group = run_key(cfg.without("lr", "seed"))
                                runs.append(Run("transfer", cfg.to_dict(), group=group, cost=cost,
                                                mem=4.0 * L * M * W * 4,
                                                label=f"{d.kind} {p.name} W={W}{_m(hidden)} L={L} lr={lr:g}"))
        return runs

    def _execute(self, runs: list[Run], configs: list[TransferConfig]) -> list[RunResult]:
        c = configs[0]
        t0 = time.perf_counter()
        data = load_data(c.data)
        t = c.train
        df = tr.lr_sweep(data, param=c.param, param_options=c.options, depths=[c.L], widths=[c.width],
                         lrs=[], steps=t.steps, networks=[(r.lr, r.seed) for r in configs],
                         optimizer=t.optimizer, batch_size=batch_for(t.batch_size, data), loss=t.loss,
                         block=c.block, activation=c.activation, dtype=c.dtype, dataset=c.dataset,
                         hidden=c.hidden)
        sec = (time.perf_counter() - t0) / len(runs)
        out = []
        for run, row in zip(runs, df.to_dict("records"), strict=True):
            metrics = {k: finite_or_none(row[k]) for k in ("final_loss", "test_loss", "loss0")}
            out.append(RunResult(run.key, "diverged" if row["diverged"] else "done", metrics, seconds=sec))
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec, c in self.configs(spec, store):
            if rec.status == "failed":
                continue
            bad = rec.status != "done"
            fl, tl = rec.metrics.get("final_loss"), rec.metrics.get("test_loss")
            rows.append({"dataset": c.dataset, "param": c.param, "L": c.L, "width": c.width,
                         "lr": c.lr, "seed": c.seed, "diverged": bad,
                         "final_loss": math.inf if bad or fl is None else fl,
                         "test_loss": math.inf if bad else (math.nan if tl is None else tl)})
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        df = self.table(spec, store)
        if df.empty:
            return {"table": df, "optima": df, "verdicts": df}
        opt = tr.optima(df)
        return {"table": df, "optima": opt, "verdicts": tr.verdicts(opt, spec.threshold, spec.tol)}

    def report(self, spec, store, analysis, figure_dir):
        from ..report.figures import save
        from ..report.report import Section

        s = Section("Learning-rate transfer across depth",
                    [f"Final training risk after {spec.train.steps} {spec.train.optimizer} steps vs base "
                     f"learning rate, {spec.seeds} seeds (mean, min-max band; a diverged seed makes the "
                     "mean +inf). Optimum: parabola through the best grid point and its neighbours in "
                     "(log2 lr, log risk). Drift: slope of log2 lr* vs log2 L. Transfers when |drift| <= "
                     f"{spec.threshold} octave per doubling and no optimum on a grid edge."])
        if analysis["table"].empty:
            return [s]
        s.tables.append(("Verdicts", analysis["verdicts"]))
        s.tables.append(("Optima per depth", analysis["optima"]))
        df, opt = analysis["table"], analysis["optima"]
        for d in spec.datasets:
            for W in spec.widths:
                hidden = None if spec.block == "one-layer" else spec.hidden
                fig = tr.plot_transfer(df, opt, dataset=d.kind, width=W, hidden=hidden)
                M = "" if hidden in (None, W) else f", hidden width M = {hidden}"
                s.figures.append(save(fig, figure_dir, f"transfer-{d.kind}-W{W}",
                                      f"{d.kind}, width {W}{M}: final risk vs lr, one curve per depth"))
        return [s]

    def summary(self, spec, analysis) -> list[str]:
        v = analysis["verdicts"]

        def m(width: int) -> str:
            return _m(None if spec.hidden in (None, width) or spec.block == "one-layer" else spec.hidden)

        return [f"{r.dataset} W={r.width}{m(r.width)} {r.param}: drift {r.drift:+.2f} octave/doubling, "
                f"transfers={r.transfers}, deeper helps={r.deeper_helps}, diverged={r.n_diverged}"
                for r in v.itertuples()]


def _m(hidden: int | None) -> str:
    return "" if hidden is None else f" M={hidden}"


register_experiment("transfer", Transfer())
