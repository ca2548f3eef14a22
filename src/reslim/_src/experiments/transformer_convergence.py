"""Kind ``transformer-convergence`` (docs/transformers.md): Transformers with attention heads as
units against a reference network, per seed.

Setting (the MLP experiment's, with sequences): ``N`` sequences of ``T`` tokens, inputs and
targets i.i.d. N(0, 1), ``d_in = d_out = 5``, the target on the mean-pooled output;
attention-only blocks with ``r = r_v = 2``; GD with ``eta`` (0.1; at 1 a third of the quick runs
diverged) for ``K`` steps, loss ``mean``;
``W_e``, ``W_u`` and the positional table coupled across widths (the first ``D`` rows of tensors
drawn at the reference's ``D``). Each sweep has its reference network (same seed, larger). Three
sweeps: ``M`` (heads per layer, ``L``, ``D`` fixed), ``D`` (``L``, ``M`` fixed) and ``LM``,
"depth begets width": ``D`` fixed and ``L M`` fixed, ``M`` down to one head per layer.

Per run: ``error = sqrt(mean over steps 0..K, samples, outputs of (y - y_ref)^2)``. Fits
``error ~ M^a`` and ``~ D^b`` with bootstrap intervals over seeds; for ``LM`` the errors per
split and their spread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, model_validator

from ..diagnostics.heads import sequence_data
from ..models.transformer import TRANSFORMER_PRESETS, Transformer
from ..training.modules import train_modules
from ..training.trainer import threads
from .registry import ExperimentKind, Run, RunResult, register_experiment
from .runs import RunConfig
from .spec import SpecBase, StrictModel


class Sweep(StrictModel):
    """One sweep: the fixed sizes, the swept values and the sweep's reference network."""

    L: PositiveInt = 4
    M: PositiveInt = 16
    D: PositiveInt = 8
    values: list[PositiveInt] = Field(default_factory=list, description="M, D or L values (LM: L)")
    reference: tuple[PositiveInt, PositiveInt, PositiveInt] = (16, 256, 8)


class TransformerConvergenceSpec(SpecBase):
    kind: Literal["transformer-convergence"] = "transformer-convergence"
    param: str = "mlu"
    seeds: PositiveInt = 2
    seed: int = 0
    N: PositiveInt = 10
    T: PositiveInt = 4
    r: PositiveInt = 2
    r_v: PositiveInt = 2
    steps: PositiveInt = 15
    lr: float = Field(0.1, gt=0)
    causal: bool = False
    norm: Literal["none", "layer", "rms"] = "none"
    M_sweep: Sweep = Sweep(L=8, D=8, values=[2, 4, 8, 16, 32], reference=(8, 256, 8))
    D_sweep: Sweep = Sweep(L=8, M=64, values=[4, 8, 16, 32], reference=(8, 64, 64))
    LM_sweep: Sweep = Sweep(M=64, D=8, values=[1, 2, 4, 8, 16, 32, 64], reference=(16, 256, 8))  # L M = 64

    @model_validator(mode="after")
    def _check(self):
        if self.param not in TRANSFORMER_PRESETS:
            raise ValueError(f"param must be a transformer preset ({', '.join(TRANSFORMER_PRESETS)}), "
                             f"got {self.param!r}")
        for name, sw in (("M_sweep", self.M_sweep), ("D_sweep", self.D_sweep), ("LM_sweep", self.LM_sweep)):
            Ds = sw.values if name == "D_sweep" else [sw.D]
            if max(Ds) > sw.reference[2]:
                raise ValueError(f"{name}: every D must be <= its reference's D = {sw.reference[2]}")
        bad = [L for L in self.LM_sweep.values if self.LM_sweep.M % L]
        if bad:
            raise ValueError(f"LM_sweep.values must divide L M = {self.LM_sweep.M}; {bad} do not")
        return self

    def shapes(self) -> list[tuple[Any, ...]]:
        """``(sweep, L, M, D, reference)`` of every network."""
        m, d, lm = self.M_sweep, self.D_sweep, self.LM_sweep
        out = [("M", m.L, M, m.D, tuple(m.reference)) for M in m.values]
        out += [("D", d.L, d.M, D, tuple(d.reference)) for D in d.values]
        out += [("LM", L, lm.M // L, lm.D, tuple(lm.reference)) for L in lm.values]
        return out


@dataclass(frozen=True)
class TransformerRunConfig(RunConfig):
    kind: str
    sweep: str
    L: int
    M: int
    D: int
    seed: int
    param: str
    N: int
    T: int
    r: int
    r_v: int
    steps: int
    lr: float
    causal: bool
    norm: str
    reference: tuple[int, int, int]
    dtype: str


def _net(c: TransformerRunConfig, L: int, M: int, D: int) -> Transformer:
    return Transformer((L, M, D), param=c.param, d_in=5, d_out=5, seq_len=c.T, r=c.r, r_v=c.r_v,
                       causal=c.causal, norm=None if c.norm == "none" else c.norm, seed=c.seed,
                       embed_seed=c.seed, embed_dim_max=c.reference[2], dtype=c.dtype)


class TransformerConvergence(ExperimentKind[TransformerConvergenceSpec]):
    spec_model = TransformerConvergenceSpec
    report_module = "reslim._src.report.transformer_convergence"

    def expand(self, spec: Any) -> list[Run]:
        runs, seen = [], set()
        for rep in range(spec.seeds):
            seed = spec.seed + rep
            for sweep, L, M, D, ref in spec.shapes():
                if (sweep, L, M, D, seed) in seen:
                    continue
                seen.add((sweep, L, M, D, seed))
                cfg = TransformerRunConfig("transformer-convergence", sweep, L, M, D, seed, spec.param,
                                           spec.N, spec.T, spec.r, spec.r_v, spec.steps, spec.lr,
                                           spec.causal, spec.norm, ref, spec.dtype)
                work = 6.0 * L * M * D * (2 * spec.r + 2 * spec.r_v) * spec.N * spec.T * spec.steps
                runs.append(Run("transformer-convergence", cfg.to_dict(), group=f"{sweep}-seed-{seed}",
                                cost=work, mem=8.0 * L * M * D * (2 * spec.r + 2 * spec.r_v),
                                label=f"{sweep} L={L} M={M} D={D} seed={rep}"))
        return runs

    def execute(self, runs: list[Run]) -> list[RunResult]:
        """One sweep's runs of one seed: its reference is trained once, every network against it."""
        configs = [TransformerRunConfig.from_dict(r.config) for r in runs]
        c0 = configs[0]
        data = sequence_data(N=c0.N, T=c0.T, seed=0)
        with threads(1):
            t0 = time.perf_counter()
            ref = train_modules([_net(c0, *c0.reference)], data, steps=c0.steps, lr=c0.lr, loss="mean")
            y_ref = ref.require("outputs")[:, 0]
            out = []
            for run, c in zip(runs, configs, strict=True):
                t = train_modules([_net(c, c.L, c.M, c.D)], data, steps=c.steps, lr=c.lr, loss="mean")
                diverged = bool(t.diverged[0]) or bool(ref.diverged[0])
                err = float(np.sqrt(np.mean((t.require("outputs")[:, 0] - y_ref) ** 2)))
                metrics = {"error": None if diverged or not math.isfinite(err) else err,
                           "loss_final": None if diverged else float(t.loss[-1, 0])}
                out.append(RunResult(run.key, "diverged" if diverged else "done", metrics,
                                     {"loss": t.loss[:, 0]}, seconds=time.perf_counter() - t0))
                t0 = time.perf_counter()
        return out

    def table(self, spec, store) -> pd.DataFrame:
        rows = []
        for rec in self.records(spec, store):
            c = rec.config
            e = rec.metrics.get("error")
            rows.append({"sweep": c["sweep"], "L": c["L"], "M": c["M"], "D": c["D"], "seed": c["seed"],
                         "error": np.nan if e is None else float(e), "status": rec.status})
        return pd.DataFrame(rows)


register_experiment("transformer-convergence", TransformerConvergence())
