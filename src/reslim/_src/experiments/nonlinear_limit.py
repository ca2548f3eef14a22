"""The nonlinear-limit experiment (docs/theory.md §2.3, §3.1, §4): finite tanh (or relu, gelu) MLU
ResNets against the span-reduced limits of :mod:`reslim.limits`, the triangle leg by leg.

Setting of docs/theory.md §3.1: ``reslim.gaussian_data`` (N = 10, d_in = d_out = 5), MLU with
W_e ~ N(0, 1/d_in), W_u ~ N(0, d_out), GD with eta = 1 on the loss averaged over outputs,
K = 15. The limits are sampled (quasi-Monte Carlo over units, :mod:`reslim._src.limits.span`):
each is solved once per independent scramble j = 0..R_s-1 (``limit.replicas`` of them, with
``limit.samples / R_s`` points each); the estimate is the mean over scrambles and its standard
error the spread over them. Scramble j has the same points in every solve (common random
numbers), so the fixed-D and large-D solutions have correlated sampling errors and their
difference (leg 2) has an error estimate of its own, far below either solver's.

Runs (stage 1; the limits are solved inside the workers and cached per process):

- ``finite`` (one per shape (L, M, D) and repetition r; the R repetitions of a shape are one
  batched :class:`ResNet`): W_e, W_u are the first D rows of one (D_max, .) draw per repetition.
  Metrics (lists over steps k = 0..K), against ``MeanODE`` at the same D and W_e, W_u (leg 1,
  expected O(1/L + sqrt(D/(L M)))): ``ode_embedding_rms`` (RMS over coordinates and samples of
  h_L - h(1)), ``ode_embedding_error`` (the paper's ``max_l mean_{d,n} |h_l - h(s_l)|``),
  ``ode_output_error`` (RMS of y - y^ODE); the same against ``LargeDLimit`` (single sites of the
  same rows): ``embedding_rms``, ``embedding_error``, ``output_error``. Each with the limit's
  standard error: ``*_stderr`` (embedding RMS at s = 1, outputs) and ``*_hidden_stderr`` (the
  embedding RMS maximised over the layers, beside the max-over-layers metric).
- ``limit-gap`` (one per D of ``triangle.D`` and repetition): ``MeanODE`` vs ``LargeDLimit``
  with the same rows (leg 2, expected O(D^-1/2)) on the limit's grid i/S: ``embedding_rms``,
  ``embedding_error``, ``output_error`` and the standard errors of the difference.

The fixed-D solution of a draw serves every (L, M) at its D and its limit-gap run: it is
cached per process, keyed by the problem and the bytes of W_e, W_u (``_ODE_CACHE``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..measure.errors import max_layer_mean_abs
from ..models.activations import ACTIVATIONS
from ..training.data import gaussian_data
from ..training.trainer import train
from .convergence import DataSpec as GaussianDataSpec  # reslim.gaussian_data: X, Y i.i.d. N(0, 1)
from .convergence import ModelSpec
from .linear_limit import (
    FiniteConfig,
    GapConfig,
    LinearLimit,
    TriangleSpec,
    TriangleSpecBase,
    _divergence,
    _jsonable,
    effective_embeddings,
)
from .registry import RunResult, register_experiment, run_key
from .runs import run_seed
from .spec import GDTrainSpec, StrictModel

Size = PositiveInt
NONLINEAR = tuple(a for a in ACTIVATIONS if a != "identity")


class NonlinearModelSpec(ModelSpec):
    """MLU with a nonlinear activation; W_e ~ N(0, 1/d_in), W_u ~ N(0, d_out) by default."""

    @field_validator("activation")
    @classmethod
    def _nonlinear(cls, v: str) -> str:
        if v not in NONLINEAR:
            hint = " (identity: use the linear-limit kind)" if v == "identity" else ""
            raise ValueError(f"must be one of {', '.join(NONLINEAR)}, got {v!r}{hint}")
        return v


class SampledLimitSpec(StrictModel):
    """Options of the sampled MeanODE and LargeDLimit (docs/limits.md)."""

    S: Size = Field(8, description="RK4 depth steps (S = 8 changes the §3.1 results by < 1e-6)")
    replicas: int = Field(4, ge=2, description="independent scrambles: the spread is the error estimate")
    samples: Size = Field(16384, description="unit samples in all, replicas x a power of two")
    seed: int = 0
    device: str = "cpu"

    @field_validator("samples")
    @classmethod
    def _power_of_two(cls, v: int, info) -> int:
        from ..limits.span import check_samples

        R = info.data.get("replicas")
        if R is not None:
            check_samples(v, R)
        return v


class NonlinearTriangleSpec(TriangleSpec):
    """Leg 2 over ``D`` (default: the grid's D) with ``repetitions`` draws (default: the spec's)."""

    repetitions: Size | None = None


class NonlinearAnalysisSpec(StrictModel):
    step: int = Field(-1, ge=-1, description="GD step of the fits (-1: the last, K)")
    n_boot: int = Field(500, ge=0)
    divergence_threshold: float = Field(1e3, gt=0)
    min_ratio: float = Field(3.0, ge=0, description="fits use shapes whose error exceeds min_ratio x "
                                                    "the limit's standard error")


class NonlinearLimitSpec(TriangleSpecBase):
    """Spec of the ``nonlinear-limit`` kind."""

    kind: Literal["nonlinear-limit"] = "nonlinear-limit"
    repetitions: Size = 3
    model: NonlinearModelSpec = Field(default_factory=NonlinearModelSpec)
    data: GaussianDataSpec = Field(default_factory=GaussianDataSpec)
    train: GDTrainSpec = Field(default_factory=GDTrainSpec)  # §3.1: 15 steps of size 1, loss "mean"
    limit: SampledLimitSpec = Field(default_factory=SampledLimitSpec)
    triangle: NonlinearTriangleSpec = Field(default_factory=NonlinearTriangleSpec)
    analysis: NonlinearAnalysisSpec = Field(default_factory=NonlinearAnalysisSpec)

    @model_validator(mode="after")
    def _check(self) -> NonlinearLimitSpec:
        if self.model.param.name != "mlu":
            raise ValueError("model.param.name: the limits are for the 'mlu' parameterization")
        try:
            self.model.param.build()
        except ValueError as err:
            raise ValueError(f"model.param.options: {err}") from None
        if self.analysis.step > self.train.steps:
            raise ValueError(f"analysis.step must be in 0..{self.train.steps} or -1")
        return self

    @property
    def step(self) -> int:
        return self.train.steps if self.analysis.step < 0 else self.analysis.step


# --- the sampled limits, one solve per scramble ----------------------------------------------------
def _data(c: NonlinearConfig):
    d = c.data
    return gaussian_data(N=d.N, d_in=d.d_in, d_out=d.d_out, seed=d.seed)


def _problem(c: NonlinearConfig, alpha: float, e_std: float, u_std: float, W_e=None, W_u=None):
    from ..limits.base import LimitProblem

    return LimitProblem(_data(c),
                        K=c.train.steps, eta=c.train.lr, alpha=alpha, loss=c.train.loss,
                        activation=c.model.activation, W_e=W_e, W_u=W_u, embed_std=e_std,
                        readout_std=u_std)


def _scramble_limits(c: NonlinearConfig, large: bool) -> list:
    """One limit per scramble j (replicas=1, its own seed; the same seeds for both limits)."""
    from ..limits.large_d import LargeDLimit
    from ..limits.mean_ode import MeanODE

    lim = c.limit
    cls = LargeDLimit if large else MeanODE
    per = lim.samples // lim.replicas
    return [cls(S=lim.S, method="sampled", samples=per, replicas=1, seed=run_seed(lim.seed, 7, j),
                device=lim.device, record_hidden=False) for j in range(lim.replicas)]


class Scrambles:
    """Coefficients of one limit per scramble: ``a``, ``da`` (R_s, K+1, B, 2S+1, r, N) on the
    fine grid, ``outputs`` (R_s, K+1, B, N, d_out), ``diverged_at`` (B,) (first step non-finite
    in any scramble, -1: never)."""

    def __init__(self, a, da, outputs, diverged_at, S: int) -> None:
        self.a, self.da, self.outputs, self.diverged_at, self.S = a, da, outputs, diverged_at, S

    @classmethod
    def stack(cls, parts: list[Scrambles]) -> Scrambles:
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts], axis=2)

        return cls(cat("a"), cat("da"), cat("outputs"), np.concatenate([p.diverged_at for p in parts]),
                   parts[0].S)

    def take(self, b: int) -> Scrambles:
        return Scrambles(self.a[:, :, b:b + 1], self.da[:, :, b:b + 1], self.outputs[:, :, b:b + 1],
                         self.diverged_at[b:b + 1], self.S)

    def at_depths(self, depths: np.ndarray) -> np.ndarray:
        """(R_s, K+1, B, n, r, N) by the limits' own Hermite interpolation."""
        from ..limits.coefficients import hermite_at_depths

        R, K1, B = self.a.shape[:3]
        fold = lambda v: np.swapaxes(v, 0, 1).reshape(K1, R * B, *v.shape[3:])  # noqa: E731
        out = hermite_at_depths(fold(self.a), fold(self.da), self.S, depths)
        return np.swapaxes(out.reshape(K1, R, B, *out.shape[2:]), 0, 1)

    def on_grid(self) -> np.ndarray:
        return self.a[:, :, :, ::2]


def _solve_scrambles(limits: list, problem) -> Scrambles:
    from ..limits.mean_ode import MeanODE

    a, da, y, div = [], [], [], []
    for lim in limits:
        coef = lim.coefficients(problem)[0] if isinstance(lim, MeanODE) else lim.solution(problem).coef
        a.append(coef.a)
        da.append(coef.da)
        y.append(coef.outputs)
        div.append(np.where(coef.diverged_at < 0, np.iinfo(np.int64).max, coef.diverged_at))
    d = np.min(div, axis=0)
    return Scrambles(np.stack(a), np.stack(da), np.stack(y), np.where(d == np.iinfo(np.int64).max, -1, d),
                     limits[0].S)


_ODE_CACHE: dict[tuple[str, str], Scrambles] = {}
_LARGE_D_CACHE: dict[str, Scrambles] = {}
_CACHE_ENTRIES = 256


def _problem_key(c: NonlinearConfig, alpha: float, e_std: float, u_std: float) -> str:
    d = c.to_dict()
    return run_key({"data": d["data"], "train": d["train"], "limit": d["limit"], "model": d["model"],
                    "alpha": alpha, "e": e_std, "u": u_std})


def mean_ode_scrambles(c: NonlinearConfig, alpha: float, e_std: float, u_std: float, W_e: np.ndarray,
                       W_u: np.ndarray) -> Scrambles:
    """The fixed-D MeanODE of each draw (B, D, .), per scramble; draws solved before (same problem,
    same bytes of W_e, W_u) are taken from the per-process cache, the others solved as one batch."""
    pk = _problem_key(c, alpha, e_std, u_std)
    keys = [(pk, hashlib.sha256(W_e[b].tobytes() + W_u[b].tobytes()).hexdigest()) for b in range(len(W_e))]
    miss = [b for b, k in enumerate(keys) if k not in _ODE_CACHE]
    if miss:
        sol = _solve_scrambles(_scramble_limits(c, large=False),
                               _problem(c, alpha, e_std, u_std, W_e[miss], W_u[miss]))
        if len(_ODE_CACHE) + len(miss) > _CACHE_ENTRIES:
            _ODE_CACHE.clear()
        for i, b in enumerate(miss):
            _ODE_CACHE[keys[b]] = sol.take(i)
    return Scrambles.stack([_ODE_CACHE[k] for k in keys])


def large_d_scrambles(c: NonlinearConfig, alpha: float, e_std: float, u_std: float) -> Scrambles:
    """The large-D limit per scramble (B = 1; one solve for every D and draw, cached)."""
    pk = _problem_key(c, alpha, e_std, u_std)
    if pk not in _LARGE_D_CACHE:
        _LARGE_D_CACHE.clear()
        problem = _problem(c, alpha, e_std, u_std)
        _LARGE_D_CACHE[pk] = _solve_scrambles(_scramble_limits(c, large=True), problem)
    return _LARGE_D_CACHE[pk]


def embedding_errors(E: np.ndarray, a: np.ndarray, h: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Errors of ``h`` (K+1, B, n, N, D) against the limit ``h^lim = E mean_j a_j`` with ``a``
    (R_s, K+1, B, n, r, N) per scramble (``h = None``: the error of ``-E mean_j a_j``, for a
    difference of limits), each (K+1, B):

    - ``rms``: RMS over coordinates and samples at the last depth; ``error``: max over depths of
      the mean over coordinates and samples of |h - h^lim| (the paper's metric);
    - ``stderr``: the standard error of h^lim (over scrambles), RMS over coordinates and samples
      at the last depth; ``hidden_stderr``: the same maximised over depths.
    """
    R = a.shape[0]
    G = np.swapaxes(E, 1, 2) @ E / E.shape[1]  # (B, r, r): mean_d |E[d] v|^2 = v^T G v
    K1, B = a.shape[1:3]
    out = {n: np.full((K1, B), np.nan) for n in ("rms", "error", "stderr", "hidden_stderr")}
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(K1):
            am = a[:, k].mean(axis=0)  # (B, n, r, N)
            diff = -np.einsum("bsrn,bdr->bsnd", am, E)
            if h is not None:
                diff += h[k]
            out["error"][k] = max_layer_mean_abs(diff)
            out["rms"][k] = np.sqrt((diff[:, -1] ** 2).mean(axis=(-1, -2)))
            dev = a[:, k] - am
            var = np.einsum("jbsrn,brq,jbsqn->bs", dev, G, dev) / (dev.shape[-1] * (R - 1) * R)
            se = np.sqrt(var)  # (B, n)
            out["stderr"][k], out["hidden_stderr"][k] = se[:, -1], se.max(axis=-1)
    return out


def output_errors(y_lim: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """RMS over samples and outputs of ``y - mean_j y_lim_j`` (``y`` (K+1, B, N, d_out) or None: of
    the mean itself) and its standard error over the scrambles ``y_lim`` (R_s, K+1, B, N, d_out)."""
    R = y_lim.shape[0]
    m = y_lim.mean(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        d = m if y is None else y - m
        return {"error": np.sqrt((d**2).mean(axis=(-1, -2))),
                "stderr": np.sqrt(y_lim.var(axis=0, ddof=1).mean(axis=(-1, -2)) / R)}


@dataclass(frozen=True)
class NonlinearSections:
    """The nonlinear kind's spec sections in its run configs (in place of the linear kind's; the
    typed configs read them back with these models)."""

    model: NonlinearModelSpec
    data: GaussianDataSpec
    train: GDTrainSpec
    limit: SampledLimitSpec


@dataclass(frozen=True)
class NonlinearFiniteConfig(NonlinearSections, FiniteConfig):
    """A ``nonlinear-limit`` finite run."""


@dataclass(frozen=True)
class NonlinearGapConfig(NonlinearSections, GapConfig):
    """A ``nonlinear-limit`` limit-gap run: the sampled MeanODE at ``D`` against the sampled large-D limit."""


#: a nonlinear-limit run's typed config, either role
NonlinearConfig = NonlinearFiniteConfig | NonlinearGapConfig


class NonlinearLimit(LinearLimit):
    spec_model = NonlinearLimitSpec
    report_module = "reslim._src.report.nonlinear_limit"
    finite_config = NonlinearFiniteConfig
    gap_config = NonlinearGapConfig

    def finite_extra(self, spec, shape) -> dict[str, Any]:
        return {}

    def gap_repetitions(self, spec: NonlinearLimitSpec) -> int:
        return spec.triangle.repetitions or spec.repetitions

    def gap_cost(self, config: GapConfig) -> float:
        lim, K, N = cast(SampledLimitSpec, config.limit), config.train.steps, config.data.N
        p = config.data.d_in + config.data.d_out
        return (30.0 * (K + 1) * lim.S * lim.samples * p * N
                + 4.0 * (K + 1) * (lim.S + 1) * N * config.D * p)

    def _limits(self, runs, net):
        c = self.run_config(runs[0].config)
        alpha = float(net.param.alpha)
        W_e, W_u, e_std, u_std = effective_embeddings(net)
        ode = mean_ode_scrambles(c, alpha, e_std, u_std, W_e, W_u)
        return np.concatenate([W_e, W_u], axis=2), ode, large_d_scrambles(c, alpha, e_std, u_std)

    def _results(self, runs, metrics: dict[str, np.ndarray], check: list[str], arrays, extra, t0):
        """One result per run from metrics (K+1, B); diverged from the first step where any metric
        in ``check`` is non-finite or above the threshold (metrics NaN from there)."""
        c = self.run_config(runs[0].config)
        seconds = (time.perf_counter() - t0) / len(runs)
        results = []
        for b, run in enumerate(runs):
            div = _divergence(*(metrics[m][:, b] for m in check), threshold=c.threshold)
            out = {"diverged_at": div, **{k: v[b] for k, v in extra.items()}}
            for name, v in metrics.items():
                v = np.broadcast_to(v, (v.shape[0], len(runs)))[:, b].copy()
                if div >= 0:
                    v[div:] = np.nan
                out[name] = _jsonable(v)
            results.append(RunResult(run.key, "diverged" if div >= 0 else "done", out,
                                     {k: v[b] for k, v in arrays.items()}, seconds=seconds))
        return results

    def _execute_finite(self, runs):
        t0 = time.perf_counter()
        c = self.run_config(runs[0].config)
        L = c.shape[0]
        net = self._net(runs, tuple(c.shape))
        E, ode, large = self._limits(runs, net)
        traj = train(net, _data(c), steps=c.train.steps, lr=c.train.lr,
                     optimizer="gd", loss=c.train.loss, record=("loss", "outputs", "hidden"))
        del net
        depth = np.arange(L + 1) / L
        metrics = {}
        for prefix, lim in (("ode_", ode), ("", large)):
            a = lim.at_depths(depth)
            if a.shape[2] != E.shape[0]:
                a = np.broadcast_to(a, (a.shape[0], a.shape[1], E.shape[0], *a.shape[3:]))
            emb = embedding_errors(E, a, traj.hidden)
            out = output_errors(lim.outputs, traj.outputs)
            metrics.update({f"{prefix}embedding_rms": emb["rms"], f"{prefix}embedding_error": emb["error"],
                            f"{prefix}embedding_stderr": emb["stderr"],
                            f"{prefix}hidden_stderr": emb["hidden_stderr"],
                            f"{prefix}output_error": out["error"], f"{prefix}output_stderr": out["stderr"]})
        extra = {"ode_diverged_at": [int(v) for v in ode.diverged_at],
                 "final_loss": [_jsonable(v) for v in traj.loss[-1]]}
        return self._results(runs, metrics, ["embedding_error", "output_error"],
                             {"loss": traj.loss.swapaxes(0, 1), "outputs": traj.outputs.swapaxes(0, 1)},
                             extra, t0)

    def _execute_gap(self, runs):
        """MeanODE (the draws at once) vs LargeDLimit with the same rows, on the grid i/S, per
        scramble (common random numbers), then the mean and spread over scrambles."""
        t0 = time.perf_counter()
        c = self.run_config(runs[0].config)
        net = self._net(runs, (1, 1, c.D))
        E, ode, large = self._limits(runs, net)
        del net
        diff = ode.on_grid() - large.on_grid()  # (R_s, K+1, B, S+1, r, N)
        emb = embedding_errors(E, diff)
        out = output_errors(ode.outputs - large.outputs)
        metrics = {"embedding_rms": emb["rms"], "embedding_error": emb["error"],
                   "embedding_stderr": emb["stderr"], "hidden_stderr": emb["hidden_stderr"],
                   "output_error": out["error"], "output_stderr": out["stderr"],
                   # each solver's own error, for comparison with the difference's
                   "ode_embedding_stderr": embedding_errors(E, ode.on_grid())["stderr"],
                   "ode_output_stderr": output_errors(ode.outputs)["stderr"]}
        extra = {"ode_diverged_at": [int(v) for v in ode.diverged_at]}
        return self._results(runs, metrics, ["embedding_error", "output_error"],
                             {"outputs": ode.outputs.mean(axis=0).swapaxes(0, 1)}, extra, t0)


register_experiment("nonlinear-limit", NonlinearLimit())
