"""The deep-linear experiment (docs/deep-linear.md): finite deep linear networks against their
infinite-width limit (:mod:`reslim._src.limits.deep_linear`).

Runs (all stage 1; the limit is solved inside the workers, cached per process):

- ``finite`` (one per depth L, width N and repetition r; the repetitions of an (L, N) are one
  batched :class:`DeepLinearNetwork`): ``beta_error`` (list over steps 0..K) = RMS over entries
  of beta_N(t) - beta_inf(t).
- ``law`` (one per L and repetition, at width ``law.N``): the law of the weights and neurons
  against the limit's Gaussian law at the steps ``law.steps``: KS distances of the standardised
  entries of W^1 (``ks_first``), of W^L (``ks_readout``), of the coordinates h^{L-1}_i(x_mu)
  (``ks_hidden``), the numerical rank of W^l(t) - W^l(0) per layer (``rank``), and quantiles
  for QQ plots (arrays).
- ``flow`` (one per L of ``flow.L``): the limit's gradient flow; ``distance`` = |beta_inf(t) -
  beta*|_F with beta* = Y^T (X^T)^+ the min-norm minimiser, ``rowspan`` = the largest component
  of beta_inf outside the row span of X.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .runs import RunConfig, run_seed
from .spec import SpecBase, StrictModel

QQ_PROBS = np.linspace(0.005, 0.995, 199)


class DeepLinearDataSpec(StrictModel):
    """X (P, d) with i.i.d. N(0, 1) entries, Y = X beta_T + noise (beta_T (k x d) i.i.d. N(0, 1/d))."""

    P: PositiveInt = 10
    d: PositiveInt = 20
    k: PositiveInt = 1
    noise: float = Field(0.1, ge=0)
    seed: int = 0


class DeepLinearTrainSpec(StrictModel):
    steps: PositiveInt = 20
    lr: float = Field(0.2, gt=0, allow_inf_nan=False)
    gamma0: float = Field(1.0, gt=0, allow_inf_nan=False)


class LawSpec(StrictModel):
    N: PositiveInt = 512
    steps: list[int] = Field(default_factory=lambda: [0, 1, 2, 5, 10, 20], min_length=1)
    rank_tol: float = Field(1e-8, gt=0, description="singular values below rank_tol x the largest are zero")

    @field_validator("steps")
    @classmethod
    def _sorted(cls, v):
        if min(v) < 0:
            raise ValueError("must be non-negative")
        return sorted(set(v))


class FlowSpec(StrictModel):
    L: list[PositiveInt] = Field(default_factory=lambda: [2, 3, 4])
    steps: PositiveInt = Field(60, description="records at t = k dt, k = 0..steps")
    dt: float = Field(0.5, gt=0, allow_inf_nan=False)
    substeps: PositiveInt = Field(4, description="RK4 steps per record interval")


class DeepLinearAnalysisSpec(StrictModel):
    steps: list[int] = Field(default_factory=lambda: [5, 10, 20], min_length=1,
                             description="GD steps of the width fits")
    n_boot: int = Field(500, ge=0)


class DeepLinearSpec(SpecBase):
    """Spec of the ``deep-linear`` kind."""

    kind: Literal["deep-linear"] = "deep-linear"
    L: list[PositiveInt] = Field(default_factory=lambda: [2, 3, 4], min_length=1)
    N: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048], min_length=1)
    repetitions: PositiveInt = 4
    seed: int = 0
    roles: list[Literal["finite", "law", "flow"]] = Field(["finite", "law", "flow"],
                                                          min_length=1)
    data: DeepLinearDataSpec = Field(default_factory=DeepLinearDataSpec)
    train: DeepLinearTrainSpec = Field(default_factory=DeepLinearTrainSpec)
    law: LawSpec = Field(default_factory=LawSpec)
    flow: FlowSpec = Field(default_factory=FlowSpec)
    analysis: DeepLinearAnalysisSpec = Field(default_factory=DeepLinearAnalysisSpec)

    @field_validator("L", "N")
    @classmethod
    def _sorted(cls, v):
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> DeepLinearSpec:
        K = self.train.steps
        if max(self.analysis.steps) > K or min(self.analysis.steps) < 0:
            raise ValueError(f"analysis.steps must be in 0..{K}")
        if max(self.law.steps) > K:
            raise ValueError(f"law.steps must be in 0..{K}")
        if "law" in self.roles and min(self.L) < 2:
            raise ValueError("L: the law runs need L >= 2 (a wide layer)")
        return self


def make_data(c: DeepLinearDataSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(c.seed)
    X = rng.standard_normal((c.P, c.d))
    teacher = rng.standard_normal((c.k, c.d)) / np.sqrt(c.d)
    Y = X @ teacher.T + c.noise * rng.standard_normal((c.P, c.k))
    return X, Y


@dataclass(frozen=True)
class DeepLinearConfig(RunConfig):
    """What every ``deep-linear`` run config holds: the problem and the depth."""

    kind: str
    data: DeepLinearDataSpec
    train: DeepLinearTrainSpec
    dtype: str
    role: str
    L: int


@dataclass(frozen=True)
class FiniteConfig(DeepLinearConfig):
    """A ``finite`` run: one width-``N`` network (seed ``seed``, repetition ``rep``) against the limit."""

    N: int
    rep: int
    seed: int


@dataclass(frozen=True)
class LawConfig(FiniteConfig):
    """A ``law`` run: a wide network's weights against the limit's laws at ``law.steps``."""

    law: LawSpec


@dataclass(frozen=True)
class FlowConfig(DeepLinearConfig):
    """A ``flow`` run: the limit's gradient flow alone."""

    flow: FlowSpec


ROLE_CONFIGS: dict[str, type[DeepLinearConfig]] = {"finite": FiniteConfig, "law": LawConfig,
                                                   "flow": FlowConfig}


def run_config(config: dict[str, Any]) -> DeepLinearConfig:
    """The typed config of a stored ``deep-linear`` run config (by its role)."""
    return ROLE_CONFIGS[config["role"]].from_dict(config)


_CACHE: dict[str, Any] = {}


def limit_solution(c: DeepLinearConfig, L: int, mode: str = "gd"):
    """The limit of a run's problem (cached per process)."""
    from ..limits.deep_linear import DeepLinearLimit, DeepLinearProblem

    problem = c.without("kind", "dtype", "role", "L", "N", "rep", "seed", "law")
    key = run_key({**problem, "L": L, "mode": mode})
    if key not in _CACHE:
        X, Y = make_data(c.data)
        tr = c.train
        if mode == "gd":
            pb = DeepLinearProblem(X, Y, L=L, K=tr.steps, eta=tr.lr, gamma0=tr.gamma0)
        else:
            assert isinstance(c, FlowConfig)
            f = c.flow
            pb = DeepLinearProblem(X, Y, L=L, K=f.steps, eta=f.dt, gamma0=tr.gamma0, mode="flow",
                                   substeps=f.substeps)
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = DeepLinearLimit().solution(pb)
    return _CACHE[key]


def _ks(z: np.ndarray) -> float:
    from scipy.stats import kstest

    z = z[np.isfinite(z)]
    return float(kstest(z, "norm").statistic) if z.size else float("nan")


def _quantiles(z: np.ndarray) -> np.ndarray:
    return np.quantile(z[np.isfinite(z)], QQ_PROBS)


def _rank(A: np.ndarray, tol: float) -> int:
    s = np.linalg.svd(A, compute_uv=False)
    return int((s > tol * max(s.max(), 1e-300)).sum()) if s.size and s.max() > 0 else 0


def _std(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(v, 1e-300))


class DeepLinear(ExperimentKind[DeepLinearSpec]):
    spec_model = DeepLinearSpec
    report_module = "reslim._src.report.deep_linear"
    #: probabilities of the stored quantiles (the report module reads them off the kind)
    qq_probs = QQ_PROBS

    def common(self, spec: DeepLinearSpec) -> tuple[str, DeepLinearDataSpec, DeepLinearTrainSpec, str]:
        return self.name, spec.data, spec.train, spec.dtype

    def expand(self, spec: DeepLinearSpec) -> list[Run]:
        runs = []
        cfg: DeepLinearConfig
        K, P, d, k = spec.train.steps, spec.data.P, spec.data.d, spec.data.k
        if "finite" in spec.roles:
            for L in spec.L:
                for N in spec.N:
                    for r in range(spec.repetitions):
                        seed = run_seed(spec.seed, 1, L, N, r)
                        cfg = FiniteConfig(*self.common(spec), "finite", L, N, r, seed)
                        runs.append(self._run(cfg, cost=4.0 * L * N * N * (d + k) * K + 1e5,
                                              mem=8.0 * (L * N * N + 4 * N * d),
                                              label=f"finite (L={L}, N={N})"))
        if "law" in spec.roles:
            N = spec.law.N
            for L in spec.L:
                for r in range(spec.repetitions):
                    seed = run_seed(spec.seed, 2, L, N, r)
                    cfg = LawConfig(*self.common(spec), "law", L, N, r, seed, spec.law)
                    runs.append(self._run(cfg, cost=4.0 * L * N * N * (d + k) * K + 8.0 * L * N**3 * len(
                        spec.law.steps), mem=8.0 * 2 * L * N * N, label=f"law (L={L}, N={N})"))
        if "flow" in spec.roles:
            for L in spec.flow.L:
                cfg = FlowConfig(*self.common(spec), "flow", L, spec.flow)
                runs.append(self._run(cfg, cost=1e6 * spec.flow.steps * spec.flow.substeps * L * P, mem=1e6,
                                      label=f"limit flow (L={L})"))
        return runs

    def _run(self, config: DeepLinearConfig, cost: float, mem: float, label: str) -> Run:
        return Run(self.name, config.to_dict(), group=run_key(config.without("rep", "seed")), stage=1,
                   cost=cost, mem=mem, label=label)

    def execute(self, runs: list[Run]) -> list[RunResult]:
        configs = [run_config(r.config) for r in runs]
        if isinstance(configs[0], LawConfig):
            return self._law(runs, cast(list[LawConfig], configs))
        if isinstance(configs[0], FiniteConfig):
            return self._finite(runs, cast(list[FiniteConfig], configs))
        return [self._flow(r, cast(FlowConfig, c)) for r, c in zip(runs, configs, strict=True)]

    def _net(self, configs: Sequence[FiniteConfig]):
        from ..models.deep_linear import DeepLinearNetwork

        c = configs[0]
        return DeepLinearNetwork(c.L, c.N, c.data.d, c.data.k, gamma0=c.train.gamma0,
                                 seeds=[r.seed for r in configs], dtype=c.dtype)

    def _finite(self, runs: list[Run], configs: list[FiniteConfig]) -> list[RunResult]:
        t0 = time.perf_counter()
        c = configs[0]
        sol = limit_solution(c, c.L)
        X, Y = make_data(c.data)
        net = self._net(configs)
        tr = net.train(X, Y, steps=c.train.steps, eta=c.train.lr, record=("loss", "beta"))
        with np.errstate(invalid="ignore"):
            err = np.sqrt(((tr.meta["beta"] - sol.beta[:, None]) ** 2).mean(axis=(2, 3)))  # (K+1, B)
        seconds = (time.perf_counter() - t0) / len(runs)
        out = []
        for b, run in enumerate(runs):
            div = int(tr.diverged_at[b])
            metrics = {"beta_error": _list(err[:, b]), "loss": _list(tr.loss[:, b]), "diverged_at": div,
                       "limit_loss": _list(sol.loss)}
            out.append(RunResult(run.key, "diverged" if div >= 0 else "done", metrics,
                                 {"beta": tr.meta["beta"][:, b]}, seconds=seconds))
        return out

    def _law(self, runs: list[Run], configs: list[LawConfig]) -> list[RunResult]:
        import torch

        t0 = time.perf_counter()
        c = configs[0]
        L, N, law = c.L, c.N, c.law
        sol = limit_solution(c, L)
        X, Y = make_data(c.data)
        net = self._net(configs)
        W0 = [W.clone() for W in net.weights]
        B = net.B
        Xt = torch.as_tensor(X, dtype=net.dtype)
        first, readout = sol.first_layer_law(), sol.readout_law()
        H = sol.hidden_variance(L - 1)  # (K+1, P, P)
        names = ("ks_first", "ks_readout", "ks_hidden")
        ks = {n: np.full((len(law.steps), B), np.nan) for n in names}
        rank = np.zeros((len(law.steps), B, L), dtype=int)
        qq = {n: np.full((B, QQ_PROBS.size), np.nan) for n in ("qq_first", "qq_hidden")}
        done = 0
        for j, t in enumerate(law.steps):
            if t > done:
                net.train(X, Y, steps=t - done, eta=c.train.lr, record=("loss",))
                done = t
            frames, _ = net.frames()
            h = torch.matmul(frames[-1], Xt.T).cpu().double().numpy()  # (B, N, P)
            for b in range(B):
                W1 = net.weights[0][b].cpu().double().numpy()  # (N, d)
                z1 = (W1 / _std(np.diag(first[t]))).ravel()
                WL = net.weights[-1][b].cpu().double().numpy()  # (k, N)
                zL = (WL.T / _std(np.diag(readout[t]))).ravel()
                zh = (h[b] / _std(np.diag(H[t]))).ravel()
                for name, z in (("ks_first", z1), ("ks_readout", zL), ("ks_hidden", zh)):
                    ks[name][j, b] = _ks(z)
                if j == len(law.steps) - 1:
                    qq["qq_first"][b], qq["qq_hidden"][b] = _quantiles(z1), _quantiles(zh)
                for i in range(L):
                    dW = (net.weights[i][b] - W0[i][b]).cpu().double().numpy()
                    rank[j, b, i] = _rank(dW, law.rank_tol)
        seconds = (time.perf_counter() - t0) / len(runs)
        out = []
        for b, run in enumerate(runs):
            metrics: dict[str, Any] = {n: _list(v[:, b]) for n, v in ks.items()}
            metrics.update({"rank": rank[:, b].tolist(), "steps": list(law.steps),
                            "samples": {"first": N * c.data.d, "readout": N * c.data.k,
                                        "hidden": N * c.data.P}})
            out.append(RunResult(run.key, "done", metrics, {n: v[b] for n, v in qq.items()}, seconds=seconds))
        return out

    def _flow(self, run: Run, c: FlowConfig) -> RunResult:
        t0 = time.perf_counter()
        sol = limit_solution(c, c.L, mode="flow")
        X, _ = make_data(c.data)
        star = sol.problem.min_norm_solution()
        dist = np.sqrt(((sol.beta - star) ** 2).sum(axis=(1, 2)))
        perp = np.eye(X.shape[1]) - np.linalg.pinv(X) @ X
        rowspan = float(np.nanmax(np.abs(sol.beta @ perp)))
        metrics = {"distance": _list(dist), "loss": _list(sol.loss), "rowspan": rowspan,
                   "dims": sol.dims, "diverged_at": int(sol.diverged_at)}
        return RunResult(run.key, "diverged" if sol.diverged_at >= 0 else "done", metrics,
                         {"beta": sol.beta}, seconds=time.perf_counter() - t0)


def _list(a) -> list:
    a = np.asarray(a, dtype=np.float64)
    return [float(v) if np.isfinite(v) else None for v in a]


register_experiment("deep-linear", DeepLinear())
