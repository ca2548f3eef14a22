"""The ``probe`` kind: synthetic, CPU-bound runs with failure injection, to smoke-test an
executor or a cluster (``reslim run probe.toml --executor ray --address auto``), benchmark
scheduling and exercise fault tolerance in tests. Not science: each run multiplies random
``size x size`` matrices ``work`` times and reports a checksum.

Injection (all optional): ``fail = [i, ...]`` runs raise; ``die = [i, ...]`` runs kill their
worker process (``os._exit``) while their marker file ``<marker_dir>/die-<i>`` does not exist yet
(so a retry succeeds); ``log`` appends ``<key> <pid>`` for every executed run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, PositiveInt

from .registry import ExperimentKind, Run, RunResult, register_experiment
from .runs import RunConfig
from .spec import SpecBase


class ProbeSpec(SpecBase):
    """Spec of the ``probe`` kind."""

    kind: str = Field("probe", pattern="^probe$")
    runs: PositiveInt = 20
    group_size: PositiveInt = Field(1, description="runs batched into one task")
    size: PositiveInt = 64
    work: int = Field(10, ge=0, description="matrix products per run")
    sleep: float = Field(0.0, ge=0, allow_inf_nan=False, description="seconds slept per run")
    fail: list[int] = Field(default_factory=list)
    die: list[int] = Field(default_factory=list)
    marker_dir: str = ""
    log: str = ""


@dataclass(frozen=True)
class ProbeConfig(RunConfig):
    """One ``probe`` run: ``work`` products of a random ``size x size`` matrix, run ``i``."""

    kind: str
    i: int
    size: int
    work: int
    sleep: float
    fail: bool
    die: bool
    marker_dir: str
    log: str
    dtype: str


class Probe(ExperimentKind[ProbeSpec]):
    spec_model = ProbeSpec

    def expand(self, spec: ProbeSpec) -> list[Run]:
        runs = []
        for i in range(spec.runs):
            config = ProbeConfig("probe", i, spec.size, spec.work, spec.sleep, fail=i in spec.fail,
                                 die=i in spec.die, marker_dir=spec.marker_dir, log=spec.log,
                                 dtype=spec.dtype).to_dict()
            runs.append(Run("probe", config, group=f"g{i // spec.group_size}", cost=float(spec.work + 1),
                            mem=2.0 * spec.size**2 * 8, label=f"probe {i}"))
        return runs

    def execute(self, runs: list[Run]) -> list[RunResult]:
        return [self._one(r) for r in runs]

    def _one(self, run: Run) -> RunResult:
        import torch

        c = ProbeConfig.from_dict(run.config)
        if c.log:
            with open(c.log, "a") as f:
                f.write(f"{run.key} {os.getpid()}\n")
        if c.die:
            marker = Path(c.marker_dir or ".") / f"die-{c.i}"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        if c.fail:
            raise RuntimeError(f"probe run {c.i} fails on purpose")
        t0 = time.perf_counter()
        if c.sleep:
            time.sleep(c.sleep)
        dtype = torch.float64 if c.dtype == "float64" else torch.float32
        g = torch.Generator().manual_seed(c.i)
        a = torch.randn(c.size, c.size, generator=g, dtype=dtype) / c.size**0.5
        x = torch.eye(c.size, dtype=dtype)
        for _ in range(c.work):
            x = torch.tanh(a @ x)
        checksum = float(x.sum())
        return RunResult(run.key, "done", {"checksum": checksum, "i": c.i},
                         {"diag": x.diagonal().numpy().copy()}, seconds=time.perf_counter() - t0)


register_experiment("probe", Probe())
