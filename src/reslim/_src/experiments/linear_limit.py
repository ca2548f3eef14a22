"""The linear-limit experiment (docs/theory.md §2.1-2.3, §3.2): finite linear MLU ResNets against the
exact limits of :mod:`reslim.limits`, and the triangle measured leg by leg.

Runs (all stage 1, no reference runs: the limits are exact and solved inside the workers):

- ``finite`` (one per shape (L, M, D) and repetition r; the R repetitions of a shape are one
  batched :class:`ResNet`): W_e, W_u are the first D rows of one (D_max, .) draw per repetition
  (coupled randomness), U, V fresh per shape. Metrics, lists over steps k = 0..K:

  * ``embedding_error``: the paper's metric against the large-D limit,
    ``max_l mean_{d,n} |h_{l,d}(x_n) - H_d(s_l, x_n)|`` with H_d the single site of the same rows;
  * ``output_error``: RMS over samples and outputs of ``y_k - f_k`` (f_k the limit outputs);
  * ``ode_embedding_error``, ``ode_output_error``: the same against ``MeanODE`` at the same D and
    the same W_e, W_u (leg 1 of the triangle, expected O(1/L + sqrt(D/(L M)))).

- ``limit-gap`` (one per D of ``triangle.D`` and repetition): ``MeanODE`` vs ``LargeDLimit``
  with the same rows (leg 2, expected O(D^-1/2)), on the limit's depth grid i/S.

A run whose record becomes non-finite, or whose embedding error exceeds
``analysis.divergence_threshold`` (the paper dropped values above 1e3), is stored as
``diverged`` with its metrics NaN (JSON null) from that step on; it is excluded from the fits
and counted in the report, never replaced by zeros.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..measure.errors import max_layer_mean_abs, max_layer_mean_abs_error
from ..models.resnet import ResNet
from ..scaling.shapes import Shape
from ..training.data import linear_teacher
from ..training.trainer import train
from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .runs import RunConfig, run_seed
from .spec import GDTrainSpec, GridSpec, ParamSpec, SpecBase, StrictModel

#: docs/theory.md §3.2: err^2 = 0.673 D/(M L) + 0.437/D (embedding), 0.0265 (D/(M L))^2 + 0.25/D (output)
PUBLISHED = {"embedding": {"D/(LM)": 0.673, "1/D": 0.437, "1/L^2": 0.0},
             "output": {"(D/(LM))^2": 0.0265, "1/D": 0.25, "1/L^2": math.nan}}

Size = PositiveInt


class DataSpec(StrictModel):
    """``reslim.linear_teacher``: x of norm ``x_norm``, y = A x + ``noise`` * N(0, 1)."""

    kind: Literal["linear-teacher"] = "linear-teacher"
    N: Size = 1
    d_in: Size = 3
    d_out: Size = 3
    x_norm: float = Field(0.8, gt=0)
    noise: float = Field(0.05, ge=0)
    seed: int = 0


class ModelSpec(StrictModel):
    """MLU, identity activation; the preset's options set alpha and the laws of W_e, W_u."""

    param: ParamSpec = Field(default_factory=ParamSpec)
    activation: Literal["identity"] = "identity"
    block: Literal["two-layer"] = "two-layer"


class TrainSpec(GDTrainSpec):
    """The linear experiment's GD: 15 steps of size 0.1, loss summed over outputs."""

    lr: float = Field(0.1, gt=0, allow_inf_nan=False)
    loss: Literal["sum", "mean"] = "sum"


class LimitSpec(StrictModel):
    S: Size = Field(32, description="RK4 depth steps of MeanODE and LargeDLimit")


class TriangleSpec(StrictModel):
    """Leg 2 (MeanODE vs LargeDLimit) over ``D`` (default: the grid's D)."""

    D: list[Size] | None = None

    @field_validator("D")
    @classmethod
    def _sorted(cls, v):
        return None if v is None else sorted(set(v))


class FigureSpec(StrictModel):
    """Trajectory and histogram figures from one shape (default: the largest of the grid)."""

    shape: tuple[Size, Size, Size] | None = None
    coordinates: Size = 3
    steps: list[int] = Field(default_factory=lambda: [0, 5, 15])


class AnalysisSpec(StrictModel):
    step: int = Field(5, ge=0, description="GD step of the fits (the paper: 5)")
    n_boot: int = Field(500, ge=0)
    divergence_threshold: float = Field(1e3, gt=0)


class TriangleSpecBase(SpecBase):
    """What the triangle kinds share: the grid of finite shapes, repetitions, roles, and leg 2's D."""

    grid: GridSpec
    if TYPE_CHECKING:  # each kind declares its own triangle section
        triangle: TriangleSpec
    repetitions: Size = 4
    seed: int = 0
    roles: list[Literal["finite", "limit-gap"]] = Field(["finite", "limit-gap"],
                                                        min_length=1)

    @property
    def limit_D(self) -> list[int]:
        return self.triangle.D or list(self.grid.D)

    @property
    def embed_dim_max(self) -> int:
        return max(max(self.grid.D), max(self.limit_D))


class LinearLimitSpec(TriangleSpecBase):
    """Spec of the ``linear-limit`` kind."""

    kind: Literal["linear-limit"] = "linear-limit"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    limit: LimitSpec = Field(default_factory=LimitSpec)
    triangle: TriangleSpec = Field(default_factory=TriangleSpec)
    figures: FigureSpec = Field(default_factory=FigureSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)

    @model_validator(mode="after")
    def _check(self) -> LinearLimitSpec:
        self.model.param.build()
        if self.model.param.name not in ("mlu",):
            raise ValueError("model.param.name: the exact limits are for the 'mlu' parameterization")
        if self.analysis.step > self.train.steps:
            raise ValueError(f"analysis.step must be in 0..{self.train.steps}")
        bad = [k for k in self.figures.steps if not 0 <= k <= self.train.steps]
        if bad:
            raise ValueError(f"figures.steps: {bad} outside 0..{self.train.steps}")
        return self

    @property
    def figure_shape(self) -> tuple[int, int, int]:
        if self.figures.shape:
            L, M, D = self.figures.shape
            return int(L), int(M), int(D)
        return max(self.grid.L), max(self.grid.M), max(self.grid.D)


def _jsonable(x):
    """Floats (NaN -> None) for JSON metrics."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [float(v) if math.isfinite(v) else None for v in arr]


def _data(c: LimitConfig):
    d = c.data
    return linear_teacher(N=d.N, d_in=d.d_in, d_out=d.d_out, x_norm=d.x_norm, noise=d.noise,
                          seed=d.seed)


def effective_embeddings(net: ResNet) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Effective ``W_e`` (B, D, d_in), ``W_u`` (B, D, d_out) of ``net`` (h_0 = W_e x,
    y = W_u^T h_L / D) and the std of their entries."""
    D = net.shape.D
    W_e = (net.W_e * net.mult("embed")).detach().double().numpy()
    W_u = (net.W_u * (net.mult("readout") * D)).detach().double().numpy()
    e_std = net.scales["embed"].init_std * net.mult("embed")
    u_std = net.scales["readout"].init_std * net.mult("readout") * D
    return W_e, W_u, float(e_std), float(u_std)


_LIMIT_CACHE: dict[str, Any] = {}


def large_d_solution(c: LimitConfig, alpha: float, embed_std: float, readout_std: float):
    """The :class:`LargeDSolution` of a run's problem (cached per process)."""
    from ..limits.base import LimitProblem
    from ..limits.large_d import LargeDLimit

    d = c.to_dict()
    key = run_key({"data": d["data"], "train": d["train"], "S": c.limit.S, "alpha": alpha,
                   "e": embed_std, "u": readout_std})
    if key not in _LIMIT_CACHE:
        pb = LimitProblem(_data(c), K=c.train.steps, eta=c.train.lr, alpha=alpha,
                          loss=c.train.loss, activation="identity", embed_std=embed_std,
                          readout_std=readout_std)
        _LIMIT_CACHE.clear()
        _LIMIT_CACHE[key] = LargeDLimit(S=c.limit.S).solution(pb)
    return _LIMIT_CACHE[key]


def _divergence(*errors: np.ndarray, threshold: float) -> int:
    """First step where any error list is non-finite or above ``threshold`` (-1: none)."""
    bad = np.zeros(errors[0].shape[0], dtype=bool)
    for e in errors:
        with np.errstate(invalid="ignore"):
            bad |= ~np.isfinite(e) | (e > threshold)
    return int(np.argmax(bad)) if bad.any() else -1


@dataclass(frozen=True)
class LimitConfig(RunConfig):
    """What every ``linear-limit`` run config holds: the problem, the limit's depth steps, the
    divergence threshold, and the repetition's seeds (``embed_seed``: the coupled W_e, W_u)."""

    kind: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    limit: LimitSpec
    dtype: str
    embed_dim_max: int
    threshold: float
    role: str
    rep: int
    seed: int
    embed_seed: int


@dataclass(frozen=True)
class FiniteConfig(LimitConfig):
    """A ``finite`` run: the repetition's network of ``shape`` (L, M, D) against both limits."""

    shape: list[int]


@dataclass(frozen=True)
class LinearFiniteConfig(FiniteConfig):
    """A ``linear-limit`` finite run; the figure shape's runs (``detail``) also store ``coordinates``
    coordinates of h."""

    detail: bool
    coordinates: int


@dataclass(frozen=True)
class GapConfig(LimitConfig):
    """A ``limit-gap`` run: MeanODE at dimension ``D`` against the large-D limit, same rows."""

    D: int


class LinearLimit(ExperimentKind[Any]):  # Any: NonlinearLimit reuses it with its own spec
    spec_model: ClassVar[type[Any]] = LinearLimitSpec
    report_module = "reslim._src.report.linear_limit"
    #: the typed configs of the two roles (the nonlinear kind has its own)
    finite_config: ClassVar[type[FiniteConfig]] = LinearFiniteConfig
    gap_config: ClassVar[type[GapConfig]] = GapConfig

    def run_config(self, config: dict[str, Any]) -> LimitConfig:
        """The typed config of a stored run config (by its role)."""
        return (self.finite_config if config["role"] == "finite" else self.gap_config).from_dict(config)

    def configs(self, runs: list[Run]) -> list:
        return [self.run_config(r.config) for r in runs]

    def figure_solution(self, spec: LinearLimitSpec, config: dict[str, Any]):
        """The large-D limit of a finite run's problem (the coordinate figures draw it)."""
        c = cast(FiniteConfig, self.run_config(config))
        net = ResNet(Shape(1, 1, c.shape[2]), param=spec.model.param.build(), d_in=spec.data.d_in,
                     d_out=spec.data.d_out, activation="identity", seeds=[0])
        _, _, e_std, u_std = effective_embeddings(net)
        return large_d_solution(c, float(net.param.alpha), e_std, u_std)

    # --- expansion ----------------------------------------------------------------------------
    def common(self, spec: LinearLimitSpec) -> dict[str, Any]:
        return {"kind": self.name, "model": spec.model, "data": spec.data, "train": spec.train,
                "limit": spec.limit, "dtype": spec.dtype, "embed_dim_max": spec.embed_dim_max,
                "threshold": spec.analysis.divergence_threshold}

    def finite_extra(self, spec: LinearLimitSpec, shape: tuple[int, int, int]) -> dict[str, Any]:
        """Config fields of a finite run beside its shape (here: the figure shape's details)."""
        fig = shape == spec.figure_shape
        return {"detail": fig, "coordinates": spec.figures.coordinates if fig else 0}

    def gap_repetitions(self, spec: Any) -> int:
        return spec.repetitions

    def expand(self, spec: LinearLimitSpec) -> list[Run]:
        runs = []
        R, R_gap = spec.repetitions, self.gap_repetitions(spec)
        emb = [run_seed(spec.seed, 99, r) for r in range(max(R, R_gap))]
        config: LimitConfig
        if "finite" in spec.roles:
            for L, M, D in (s.as_tuple() for s in spec.grid.shapes()):
                for r in range(R):
                    config = self.finite_config(**self.common(spec), role="finite", shape=[L, M, D], rep=r,
                                                seed=run_seed(spec.seed, 1, L, M, D, r), embed_seed=emb[r],
                                                **self.finite_extra(spec, (L, M, D)))
                    runs.append(self._run(config))
        if "limit-gap" in spec.roles:
            for D in spec.limit_D:
                for r in range(R_gap):
                    config = self.gap_config(**self.common(spec), role="limit-gap", D=D, rep=r,
                                             seed=run_seed(spec.seed, 2, D, r), embed_seed=emb[r])
                    runs.append(self._run(config))
        return runs

    def gap_cost(self, config: GapConfig) -> float:
        """Flops estimate of one limit-gap run."""
        K, N, D, S = config.train.steps, config.data.N, config.D, config.limit.S
        p = config.data.d_in + config.data.d_out
        return 1e6 * (K + 1) * S * p + 4.0 * (K + 1) * (S + 1) * N * D * p

    def _run(self, config: LimitConfig) -> Run:
        K, N = config.train.steps, config.data.N
        item = 8 if config.dtype == "float64" else 4
        if isinstance(config, FiniteConfig):
            L, M, D = config.shape
            cost = 12.0 * L * M * D * N * (K + 1) + 3e5 * L * (K + 1)
            mem = 2.5 * L * M * D * item + 4.0 * (K + 1) * (L + 1) * N * D * 8
            label = f"finite (L={L}, M={M}, D={D})"
        else:
            assert isinstance(config, GapConfig)
            D, S = config.D, config.limit.S
            cost = self.gap_cost(config)
            mem = 4.0 * (K + 1) * (S + 1) * N * D * 8
            label = f"MeanODE vs large-D (D={D})"
        return Run(self.name, config.to_dict(), group=run_key(config.without("rep", "seed", "embed_seed")),
                   stage=1, cost=cost, mem=mem, label=label)

    # --- execution (workers) ------------------------------------------------------------------
    def execute(self, runs: list[Run]) -> list[RunResult]:
        if runs[0].config["role"] == "finite":
            return self._execute_finite(runs)
        return self._execute_gap(runs)

    def _net(self, runs: list[Run], shape: tuple[int, int, int]) -> ResNet:
        configs = self.configs(runs)
        c = configs[0]
        return ResNet(Shape(*shape), param=c.model.param.build(), d_in=c.data.d_in, d_out=c.data.d_out,
                      block=c.model.block, activation=c.model.activation, seeds=[r.seed for r in configs],
                      embed_seed=[r.embed_seed for r in configs], embed_dim_max=c.embed_dim_max,
                      dtype=c.dtype)

    def _execute_finite(self, runs: list[Run]) -> list[RunResult]:
        """One batched ResNet for the R repetitions of a shape; errors against LargeDLimit
        (single sites of the same rows) and MeanODE (same W_e, W_u) at every step."""
        from ..limits.base import LimitProblem
        from ..limits.mean_ode import MeanODE

        t0 = time.perf_counter()
        c = cast(FiniteConfig, self.run_config(runs[0].config))
        L, M, D = c.shape
        K = c.train.steps
        net = self._net(runs, (L, M, D))
        alpha = float(net.param.alpha)
        W_e, W_u, e_std, u_std = effective_embeddings(net)
        data = _data(c)
        traj = train(net, data, steps=K, lr=c.train.lr, optimizer="gd", loss=c.train.loss,
                     record=("loss", "outputs", "hidden"))
        del net
        h = traj.hidden  # (K+1, B, L+1, N, D)
        assert h is not None  # recorded
        depth = traj.depth
        # large-D limit: H_d(s_l) = a_k(s_l)^T z_d with z_d = (W_e[d], W_u[d])
        sol = large_d_solution(c, alpha, e_std, u_std)
        z = np.concatenate([W_e, W_u], axis=2)  # (B, D, p)
        a_inf = sol.coef.at_depths("a", depth)[:, 0]  # (K+1, L+1, p, N)
        H = np.einsum("kspn,bdp->kbsnd", a_inf, z)
        emb = max_layer_mean_abs_error(h, H)  # (K+1, B): max_l mean_{n,d} |h - H|
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.sqrt(((traj.outputs - sol.outputs[:, None]) ** 2).mean(axis=(2, 3)))
        del H
        # Mean ODE at the same D, W_e, W_u: h_k(s_l) = Q a_k(s_l)
        pb = LimitProblem(data, K=K, eta=c.train.lr, alpha=alpha, loss=c.train.loss,
                          activation="identity", W_e=W_e, W_u=W_u, embed_std=e_std, readout_std=u_std)
        coef, Q = MeanODE(S=c.limit.S).coefficients(pb)
        a_ode = coef.at_depths("a", depth)  # (K+1, B, L+1, p, N)
        h_ode = np.einsum("kbspn,bdp->kbsnd", a_ode, Q)
        ode_emb = max_layer_mean_abs_error(h, h_ode)
        with np.errstate(invalid="ignore", over="ignore"):
            ode_out = np.sqrt(((traj.outputs - coef.outputs) ** 2).mean(axis=(2, 3)))
        seconds = (time.perf_counter() - t0) / len(runs)
        results = []
        n_coord = min(int(getattr(c, "coordinates", 0)), D)
        for b, run in enumerate(runs):
            div = _divergence(emb[:, b], out[:, b], traj.loss[:, b], threshold=c.threshold)
            e, o, oe, oo = (v[:, b].copy() for v in (emb, out, ode_emb, ode_out))
            if div >= 0:
                for v in (e, o, oe, oo):
                    v[div:] = np.nan
            metrics = {"diverged_at": div, "ode_diverged_at": int(coef.diverged_at[b]),
                       "final_loss": _jsonable(traj.loss[-1, b]),
                       "embedding_error": _jsonable(e), "output_error": _jsonable(o),
                       "ode_embedding_error": _jsonable(oe), "ode_output_error": _jsonable(oo)}
            arrays = {"loss": traj.loss[:, b], "outputs": traj.require("outputs")[:, b]}
            if getattr(c, "detail", False):
                arrays["h_last"] = h[:, b, -1]  # (K+1, N, D)
                arrays["h_coords"] = h[:, b, :, :, :n_coord]  # (K+1, L+1, N, n)
                arrays["ode_coords"] = h_ode[:, b, :, :, :n_coord]
                arrays["z_coords"] = z[b, :n_coord]  # (n, p)
            results.append(RunResult(run.key, "diverged" if div >= 0 else "done", metrics, arrays,
                                     seconds=seconds))
        return results

    def _execute_gap(self, runs: list[Run]) -> list[RunResult]:
        """MeanODE (the R draws at once) vs LargeDLimit with the same rows, on the grid i/S."""
        from ..limits.base import LimitProblem
        from ..limits.mean_ode import MeanODE

        t0 = time.perf_counter()
        c = cast(GapConfig, self.run_config(runs[0].config))
        D, K = c.D, c.train.steps
        net = self._net(runs, (1, 1, D))
        alpha = float(net.param.alpha)
        W_e, W_u, e_std, u_std = effective_embeddings(net)
        del net
        sol = large_d_solution(c, alpha, e_std, u_std)
        pb = LimitProblem(_data(c), K=K, eta=c.train.lr, alpha=alpha, loss=c.train.loss,
                          activation="identity", W_e=W_e, W_u=W_u, embed_std=e_std, readout_std=u_std)
        coef, Q = MeanODE(S=c.limit.S).coefficients(pb)
        # h - H = Q (a_D - a_oo) coordinate-wise: both are linear in the rows z_d = Q[d]
        diff = coef.on_grid("a") - sol.coef.on_grid("a")  # (K+1, B, S+1, p, N)
        with np.errstate(invalid="ignore", over="ignore"):
            emb = max_layer_mean_abs(np.einsum("kbspn,bdp->kbsnd", diff, Q))  # (K+1, B)
            out = np.sqrt(((coef.outputs - sol.outputs[:, None]) ** 2).mean(axis=(2, 3)))
        seconds = (time.perf_counter() - t0) / len(runs)
        results = []
        for b, run in enumerate(runs):
            div = _divergence(emb[:, b], out[:, b], threshold=c.threshold)
            e, o = emb[:, b].copy(), out[:, b].copy()
            if div >= 0:
                e[div:] = o[div:] = np.nan
            G = Q[b].T @ Q[b] / D
            metrics = {"diverged_at": div, "embedding_error": _jsonable(e), "output_error": _jsonable(o),
                       "gram_deviation": float(np.abs(G - sol.G).max())}
            results.append(RunResult(run.key, "diverged" if div >= 0 else "done", metrics,
                                     {"outputs": coef.outputs[:, b]}, seconds=seconds))
        return results


register_experiment("linear-limit", LinearLimit())
