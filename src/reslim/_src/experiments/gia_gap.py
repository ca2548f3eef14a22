"""Kind ``gia-gap`` (docs/depth.md; docs/theory.md §3.3): per (param, L, seed) the gap between
ordinary and gradient-independent (GIA) training, one-layer blocks by default; runs of one
(param, L) train as one batch. Fits ``gap ~ L^p``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..diagnostics import depth as dd
from ..models.resnet import ResNet
from ..training.trainer import train
from .depth import (
    AnalysisSpec,
    DataSpec,
    DepthConfig,
    DepthKind,
    Depths,
    TrainSpec,
    batch_for,
    check_data,
    finite_or_none,
    load_data,
)
from .registry import Run, RunResult, register_experiment, run_key
from .spec import ParamSpec, SpecBase


class GiaGapSpec(SpecBase):
    kind: Literal["gia-gap"] = "gia-gap"
    params: list[str] = Field(default_factory=lambda: ["depth-mup", "mup"], min_length=1)
    depths: Depths = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    width: PositiveInt = 64
    seeds: PositiveInt = 3
    seed: int = 0
    block: Literal["one-layer", "two-layer"] = "one-layer"
    activation: str = "tanh"
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @field_validator("params")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for p in v:
            ParamSpec(name=p)
        return v

    @model_validator(mode="after")
    def _data_ok(self):
        check_data(self.data)
        return self


GAP_METRICS = ("loss_gap", "output_gap", "rel_loss_gap", "rel_output_gap")


@dataclass(frozen=True)
class GiaGapConfig(DepthConfig):
    """One ``gia-gap`` run: a (param, L, width) network of one seed, trained ordinarily and GIA."""

    param: str
    block: str


class GiaGap(DepthKind[GiaGapSpec]):
    spec_model = GiaGapSpec
    config_type = GiaGapConfig

    def expand(self, spec: GiaGapSpec) -> list[Run]:
        runs = []
        W, N, K = spec.width, spec.data.n_train, spec.train.steps
        for param in spec.params:
            for L in spec.depths:
                for rep in range(spec.seeds):
                    cfg = GiaGapConfig("gia-gap", L, W, spec.activation, spec.dtype, spec.data, spec.train,
                                       seed=spec.seed + rep, param=param, block=spec.block)
                    runs.append(Run("gia-gap", cfg.to_dict(), group=run_key(cfg.without("seed")),
                                    cost=2 * 6.0 * L * W * W * N * K, mem=4.0 * L * W * W * 8,
                                    label=f"{param} L={L} seed={rep}"))
        return runs

    def _execute(self, runs: list[Run], configs: list[GiaGapConfig]) -> list[RunResult]:
        c = configs[0]
        t0 = time.perf_counter()
        data = load_data(c.data)
        seeds = [r.seed for r in configs]
        trajs = {}
        for mode in (False, True):
            model = ResNet((c.L, c.width, c.width), param=c.param, d_in=data.d_in, d_out=data.d_out,
                           block=c.block, activation=c.activation, seeds=seeds, dtype=c.dtype)
            t = c.train
            trajs[mode] = train(model, data, steps=t.steps, lr=t.lr, optimizer=t.optimizer, loss=t.loss,
                                batch_size=batch_for(t.batch_size, data), record=("loss", "outputs"),
                                gia=mode)
        m = dd.gap_metrics(trajs[False], trajs[True])
        bad = trajs[False].diverged | trajs[True].diverged
        sec = (time.perf_counter() - t0) / len(runs)
        out = []
        for b, run in enumerate(runs):
            metrics = {k: (None if bad[b] else finite_or_none(v[b])) for k, v in m.items()}
            arrays = {"loss": trajs[False].loss[:, b], "loss_gia": trajs[True].loss[:, b]}
            out.append(RunResult(run.key, "diverged" if bad[b] else "done", metrics, arrays, seconds=sec))
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec, c in self.configs(spec, store):
            row = {"param": c.param, "L": c.L, "seed": c.seed, "diverged": rec.status != "done"}
            rows.append(self.metric_row(rec, row, (*GAP_METRICS, "loss_final", "loss_final_gia", "loss0")))
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        return self.fit_analysis(self.table(spec, store), [*GAP_METRICS, "loss_final", "loss_final_gia"],
                                 GAP_METRICS, ["param"], spec.analysis.n_boot)

    def report(self, spec, store, analysis, figure_dir):
        from ..report.depth import fits_section

        guide = [(-0.5, "slope L^-1/2"), (0.0, "slope L^0")]
        return [fits_section(
            "GIA gap vs depth",
            f"Ordinary vs gradient-independent (GIA) training of {spec.block} blocks at width "
            f"{spec.width}, {spec.seeds} seeds; gaps are RMS over steps 1..K (definitions in "
            "docs/depth.md). Fitted exponent p of gap ~ L^p with a bootstrap 95% CI over seeds.",
            analysis, ["param"], "Gap per depth (mean, std over seeds)", ["loss_gap", "output_gap"],
            figure_title="GIA gap vs depth (ordinary vs GIA training); dotted: reference slopes",
            guides={"loss_gap": guide, "output_gap": guide}, figure_dir=figure_dir, name="gia-gap",
            caption="GIA gap vs depth (seed mean, min-max band)")]

    def summary(self, spec, analysis) -> list[str]:
        f = analysis["fits"]
        return [f"{r.param}: {r.metric} ~ L^{r.exponent:+.3f}" for r in f.itertuples()
                if r.metric in ("loss_gap", "output_gap")]


register_experiment("gia-gap", GiaGap())
