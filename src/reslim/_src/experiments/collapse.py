"""Kind ``collapse`` (docs/depth.md; docs/theory.md §3.4): per (optimizer, correction, L, seed) the
feature updates of two-layer depth-muP blocks (first internal layer, block output); fits
``~ L^p``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import Field, PositiveInt, model_validator

from ..diagnostics import depth as dd
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
from .spec import SpecBase


class CollapseSpec(SpecBase):
    kind: Literal["collapse"] = "collapse"
    depths: Depths = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])
    width: PositiveInt = 32
    seeds: PositiveInt = 2
    seed: int = 0
    optimizers: list[Literal["sgd", "gd", "adam"]] = Field(["sgd", "adam"],
                                                          min_length=1)
    corrections: list[float] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)
    lr: dict[str, float] = Field(default_factory=lambda: {"sgd": 0.1, "gd": 0.1, "adam": 0.02})
    activation: str = "tanh"
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec(steps=30)
    analysis: AnalysisSpec = AnalysisSpec()

    @model_validator(mode="after")
    def _check(self):
        for o in self.optimizers:
            if o not in self.lr or not self.lr[o] > 0:
                raise ValueError(f"lr.{o}: a positive learning rate is needed for optimizer {o}")
        if any(c < 0 for c in self.corrections):
            raise ValueError("corrections must be >= 0")
        check_data(self.data)
        return self


@dataclass(frozen=True)
class CollapseConfig(DepthConfig):
    """One ``collapse`` run: an (optimizer, correction, L) two-layer depth-muP network of one seed."""

    optimizer: str
    correction: float
    lr: float


class Collapse(DepthKind[CollapseSpec]):
    spec_model = CollapseSpec
    config_type = CollapseConfig

    def expand(self, spec: CollapseSpec) -> list[Run]:
        runs = []
        W = spec.width
        for opt in spec.optimizers:
            for corr in spec.corrections:
                for L in spec.depths:
                    for rep in range(spec.seeds):
                        cfg = CollapseConfig("collapse", L, W, spec.activation, spec.dtype, spec.data,
                                             spec.train, seed=spec.seed + rep, optimizer=opt,
                                             correction=float(corr), lr=spec.lr[opt])
                        runs.append(Run("collapse", cfg.to_dict(), group=run_key(cfg.without("seed")),
                                        cost=6.0 * L * W * W * spec.data.n_train * spec.train.steps,
                                        mem=6.0 * L * W * W * 8,
                                        label=f"{opt} c={corr} L={L} seed={rep}"))
        return runs

    def _execute(self, runs: list[Run], configs: list[CollapseConfig]) -> list[RunResult]:
        c = configs[0]
        t0 = time.perf_counter()
        data = load_data(c.data)
        t = c.train
        df = dd.first_layer_collapse(
            data, depths=[c.L], width=c.width, seeds=[r.seed for r in configs], optimizers=[c.optimizer],
            corrections=[c.correction], lr=c.lr, steps=t.steps,
            batch_size=batch_for(t.batch_size, data) if c.optimizer != "gd" else None, loss=t.loss,
            activation=c.activation, dtype=c.dtype)
        def metrics(row):
            out = {k: finite_or_none(row[k]) for k in row if k.startswith("d") and k != "diverged"}
            return {**out, **{k: finite_or_none(row[k]) for k in ("loss0", "loss_final")}}

        return self.results(runs, df.to_dict("records"), metrics, t0)

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec, c in self.configs(spec, store):
            row = {"optimizer": c.optimizer, "correction": c.correction, "L": c.L, "seed": c.seed,
                   "diverged": rec.status != "done"}
            rows.append(self.metric_row(rec, row))
        return pd.DataFrame(rows)

    def analyse(self, spec, store):
        mets = [*dd.COLLAPSE_METRICS, "dp_own_first", "dh_first"]
        return self.fit_analysis(self.table(spec, store), [*mets, "loss_final"], mets,
                                 ["optimizer", "correction"], spec.analysis.n_boot)

    def report(self, spec, store, analysis, figure_dir):
        from ..report.depth import fits_section

        return [fits_section(
            "First-layer collapse of depth-muP and the depth-aware correction",
            "Two-layer blocks under depth-muP (correction 0) and depth-muP-corrected (U lr times L^c): "
            "RMS feature changes after K steps, averaged over blocks. dp_own = m_U dU^T h (the first "
            "internal layer's own update), dp = total pre-activation change, dh = block output change, "
            "dbranch = branch output change.",
            analysis, ["optimizer", "correction"], "Per depth (mean, std over seeds)", ["dp_own", "dh"],
            figure_title="Feature updates vs depth; legend: optimizer, correction c (U lr x L^c)",
            guides={"dp_own": [(-0.5, "L^-1/2 (depth-muP prediction)"), (0.0, "L^0 (corrected)")]},
            figure_dir=figure_dir, name="collapse", caption="Feature updates vs depth")]

    def summary(self, spec, analysis) -> list[str]:
        f = analysis["fits"]
        return [f"{r.optimizer} correction={r.correction:g}: {r.metric} ~ L^{r.exponent:+.3f}"
                for r in f.itertuples() if r.metric in ("dp_own", "dh")]


register_experiment("collapse", Collapse())
