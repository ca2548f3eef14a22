"""The convergence experiment (docs/theory.md §2.3, §3.1): errors of ResNets of every shape of a grid
against a reference (a large network, or an exact limit), their rates and fitted models.

Runs: stage 0 = the reference, one per repetition; stage 1 = for each shape and repetition, the
``embedding`` run (coupled randomness: the first ``D`` rows of ``W_e``, ``W_u`` drawn at the
reference dimension) and the ``output`` run (fresh ``W_e``, ``W_u`` per shape). Runs of equal
shape and role are trained as one batched :class:`ResNet`. The driver computes each run's
errors at every step against the stored reference of its repetition.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from ..models.activations import ACTIVATIONS
from ..models.resnet import ResNet
from ..scaling.shapes import Shape
from ..training.data import gaussian_data
from ..training.divergence import divergence_steps
from ..training.trainer import train
from ..training.trajectory import Trajectory
from .registry import ExperimentKind, Run, RunResult, register_experiment, run_key
from .runs import RunConfig, run_seed
from .spec import GDTrainSpec, GridSpec, ParamSpec, SpecBase, StrictModel

ROLES: tuple[Literal["embedding", "output"], ...] = ("embedding", "output")
TWINS = {"embedding": "embedding-twin", "output": "output-twin"}  # the reference's twins (floor)
PUBLISHED = {  # docs/theory.md §3.1, curves at k = 15 (P-curve of the embedding error at k = 10)
    "embedding": {"b": 0.8, "c": 2.5, "P": 2.0, "P_exponent": -1 / 6},
    "output": {"b": 0.15, "c": 0.9, "P": 0.7, "P_exponent": -1 / 5},
}
#: theory's exponents of the error against each axis, the others at their largest values
THEORY_EXPONENTS = {
    "embedding": {"M": -0.5, "D": -0.5, "L": -0.5, "P": -1 / 6},
    "output": {"M": -1.0, "D": -0.5, "L": -1.0, "P": -1 / 5},
}

Size = PositiveInt


def _paper_param() -> ParamSpec:
    return ParamSpec(name="mlu", options={"embed_init": "d_in^-0.5", "readout_init": "d_out^0.5"})


class ModelSpec(StrictModel):
    param: ParamSpec = Field(default_factory=_paper_param)
    activation: str = "tanh"
    block: Literal["two-layer"] = "two-layer"

    @field_validator("activation")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ACTIVATIONS:
            raise ValueError(f"unknown activation {v!r}; choose from {', '.join(ACTIVATIONS)}")
        return v


class DataSpec(StrictModel):
    kind: Literal["gaussian"] = "gaussian"
    N: Size = 10
    d_in: Size = 5
    d_out: Size = 5
    seed: int = 0


class TrainSpec(GDTrainSpec):
    """The paper grid's GD: 15 steps of size 1, loss averaged over outputs."""


class NetworkReference(StrictModel):
    """A large finite network of ``shape`` (its ``D`` must cover the grid's).

    ``floor = true`` also trains, per repetition and run role, an independent *twin* of the
    reference (fresh ``U``, ``V``; the same coupled ``W_e``, ``W_u`` for the embedding run, fresh
    ones for the output run). Half the twin's squared error against the reference measures the
    reference's own error ``phi`` (its hidden-width fluctuation, plus for the output run its
    large-D one), which adds to every shape's ``err^2``; the analysis then also fits
    floor-corrected exponents (:func:`reslim.measure.fit_power_term`)."""

    kind: Literal["network"] = "network"
    shape: tuple[Size, Size, Size]
    floor: bool = False


class LimitReference(StrictModel):
    """A limit from ``reslim.limits`` (``get_limit(name, **options)``), e.g. the exact large-D
    limit ``{kind = "limit", name = "large-d"}`` (any activation; ``options`` such as
    ``samples``, ``S``, ``seed`` pass through to the solver).

    ``large-d`` is solved once for all repetitions (its solution depends on neither ``W_e``,
    ``W_u`` nor ``D``); each repetition's reference ``h_L`` is the single sites ``H_d(1)`` of its
    own rows of ``W_e``, ``W_u`` at ``D = max(grid.D)``. Other limits are solved with the
    repetitions' ``W_e``, ``W_u`` as ``B`` draws of one problem."""

    kind: Literal["limit"] = "limit"
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> LimitReference:
        try:  # unknown names and options fail here, before any run
            self.build()
        except (ValueError, TypeError) as err:
            raise ValueError(str(err).splitlines()[0]) from None
        return self

    def build(self):
        """The limit instance (one per name and options in a process: its solve cache is kept)."""
        return _limit_instance(self.name, self.options)

    def check_activation(self, activation: str) -> None:
        """Raise a one-line ``ValueError`` naming the field if the limit cannot solve ``activation``."""
        limit = self.build()
        allowed = getattr(limit, "activations", None)
        if allowed is not None and activation not in allowed:
            raise ValueError(f"reference.name: limit {self.name!r} ({type(limit).__name__}) solves "
                             f"{', '.join(allowed)} only, not model.activation = {activation!r}")
        method_for = getattr(limit, "method_for", None)
        if method_for is not None:
            try:
                method_for(activation)
            except ValueError as err:
                msg = str(err).splitlines()[0].removeprefix("method: ")
                raise ValueError(f"reference.options.method: {msg} (model.activation)") from None


_LIMITS: dict[str, Any] = {}


def _limit_instance(name: str, options: dict[str, Any]):
    from ..limits.solvers import get_limit
    from .registry import canonical_json

    key = canonical_json({"name": name, "options": options})
    if key not in _LIMITS:
        if len(_LIMITS) >= 8:
            _LIMITS.clear()
        _LIMITS[key] = get_limit(name, **options)
    return _LIMITS[key]


Reference = Annotated[NetworkReference | LimitReference, Field(discriminator="kind")]


class AnalysisSpec(StrictModel):
    step: int = Field(-1, description="step k of the fits (-1: the last)")
    n_boot: int = Field(1000, ge=0)
    min_size: PositiveInt = Field(1, description="smallest value of the axis in the L, M, D fits")


class ConvergenceSpec(SpecBase):
    """Spec of the ``convergence`` kind."""

    kind: Literal["convergence"] = "convergence"
    grid: GridSpec
    reference: Reference
    repetitions: Size = 5
    seed: int = 0
    runs: list[Literal["embedding", "output"]] = Field(default_factory=lambda: list(ROLES), min_length=1)
    store_h_last: bool = False
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)

    @model_validator(mode="after")
    def _check(self) -> ConvergenceSpec:
        self.model.param.build()  # unknown options fail here
        if isinstance(self.reference, NetworkReference) and self.reference.shape[2] < max(self.grid.D):
            raise ValueError(f"reference.shape: D = {self.reference.shape[2]} is smaller than the "
                             f"largest grid D = {max(self.grid.D)}")
        if isinstance(self.reference, LimitReference):
            self.reference.check_activation(self.model.activation)
        if not -self.train.steps - 1 <= self.analysis.step <= self.train.steps:
            raise ValueError(f"analysis.step must be in -{self.train.steps + 1}..{self.train.steps}")
        return self

    @property
    def embed_dim_max(self) -> int:
        ref = self.reference
        return ref.shape[2] if isinstance(ref, NetworkReference) else max(self.grid.D)


_ROLE_ID = {"reference": 0, "embedding": 1, "output": 2, "embedding-twin": 3, "output-twin": 4}


@dataclass(frozen=True)
class ConvergenceConfig(RunConfig):
    """What every ``convergence`` run config holds: the model, data and training of the grid."""

    kind: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    dtype: str
    role: str


@dataclass(frozen=True)
class ReferenceConfig(ConvergenceConfig):
    """A reference run (stage 0) of repetition ``rep``: ``reference`` is the spec's reference
    section less ``floor`` (which adds runs but changes none, so it stays out of the keys)."""

    reference: dict[str, Any]
    rep: int
    seed: int
    embed_seed: int
    embed_dim_max: int


@dataclass(frozen=True)
class NetworkReferenceConfig(ReferenceConfig):
    """A reference run that is a large finite network of ``shape``."""

    shape: list[int]


@dataclass(frozen=True)
class GridConfig(ConvergenceConfig):
    """A network of the grid (or a reference's twin) of ``shape``, against the reference run of
    its repetition (``reference_key``); ``embed_seed``, ``embed_dim_max`` set for the coupled
    (embedding) runs only."""

    shape: list[int]
    rep: int
    seed: int
    embed_seed: int | None
    embed_dim_max: int | None
    reference_key: str
    store_h_last: bool


def run_config(config: dict[str, Any]) -> ConvergenceConfig:
    """The typed config of a stored ``convergence`` run config."""
    if config["role"] != "reference":
        return GridConfig.from_dict(config)
    return (NetworkReferenceConfig if "shape" in config else ReferenceConfig).from_dict(config)


class Convergence(ExperimentKind[ConvergenceSpec]):
    spec_model = ConvergenceSpec
    report_module = "reslim._src.report.convergence"
    #: what the report module compares the fits with (it reads them off the kind)
    published = PUBLISHED
    theory_exponents = THEORY_EXPONENTS
    twins = TWINS

    def __init__(self) -> None:
        self._ref_cache: dict[str, dict[str, np.ndarray]] = {}

    # --- expansion ----------------------------------------------------------------------------
    def common(self, spec: ConvergenceSpec) -> tuple[str, ModelSpec, DataSpec, TrainSpec, str]:
        return "convergence", spec.model, spec.data, spec.train, spec.dtype

    def reference_runs(self, spec: ConvergenceSpec) -> list[Run]:
        # ``floor`` adds runs but changes none: it stays out of the configs (and their keys)
        ref = spec.reference.model_dump(mode="json", exclude={"floor"})
        runs = []
        for rep in range(spec.repetitions):
            seed = run_seed(spec.seed, _ROLE_ID["reference"], rep)
            fields = (*self.common(spec), "reference", ref, rep, seed, run_seed(spec.seed, 99, rep),
                      spec.embed_dim_max)
            config: ReferenceConfig
            if isinstance(spec.reference, NetworkReference):
                config = NetworkReferenceConfig(*fields, shape=list(spec.reference.shape))
            else:
                config = ReferenceConfig(*fields)
            runs.append(self._run(config, stage=0))
        return runs

    def expand(self, spec: ConvergenceSpec) -> list[Run]:
        refs = self.reference_runs(spec)
        ref_keys = [r.key for r in refs]
        runs = list(refs)
        ref = spec.reference
        floor_shape = Shape.parse(ref.shape).as_tuple() if isinstance(ref, NetworkReference) and ref.floor \
            else None
        shapes = [s.as_tuple() for s in spec.grid.shapes()]
        for role in spec.runs:
            todo: list[tuple[str, tuple[int, int, int]]] = [(role, shape) for shape in shapes]
            if floor_shape is not None:
                todo.append((TWINS[role], floor_shape))
            for r, (L, M, D) in todo:
                for rep in range(spec.repetitions):
                    coupled = role == "embedding"
                    config = GridConfig(*self.common(spec), r, [L, M, D], rep,
                                        seed=run_seed(spec.seed, _ROLE_ID[r], L, M, D, rep),
                                        embed_seed=run_seed(spec.seed, 99, rep) if coupled else None,
                                        embed_dim_max=spec.embed_dim_max if coupled else None,
                                        reference_key=ref_keys[rep], store_h_last=spec.store_h_last)
                    runs.append(self._run(config, stage=1))
        return runs

    def _run(self, config: ConvergenceConfig, stage: int) -> Run:
        N, K = config.data.N, config.train.steps
        itemsize = 8 if config.dtype == "float64" else 4
        if isinstance(config, GridConfig | NetworkReferenceConfig):
            L, M, D = config.shape
            cost = 12.0 * L * M * D * N * K + 3e5 * L * K  # flops + per-layer overhead
            mem = 2.5 * L * M * D * itemsize + 4 * (K + 1) * N * D * 8 * 2
            label = f"{config.role} (L={L}, M={M}, D={D})"
        else:
            # the limit is solved once per task: roughly 2 s of the sampled large-D solver in all
            assert isinstance(config, ReferenceConfig)
            cost, mem, label = 5e10, 0.0, f"reference limit {config.reference['name']}"
        group = run_key(config.without("rep", "seed", "embed_seed", "reference_key"))
        return Run("convergence", config.to_dict(), group=group, stage=stage, cost=cost, mem=mem, label=label)

    # --- execution (workers) ------------------------------------------------------------------
    def execute(self, runs: list[Run]) -> list[RunResult]:
        configs = [run_config(r.config) for r in runs]
        c = configs[0]
        if isinstance(c, ReferenceConfig) and not isinstance(c, NetworkReferenceConfig):
            return self._execute_limit(runs, cast(list[ReferenceConfig], configs))
        assert isinstance(c, GridConfig | NetworkReferenceConfig)
        nets = cast(list[GridConfig | NetworkReferenceConfig], configs)
        t0 = time.perf_counter()
        param = c.model.param.build()
        coupled = c.embed_seed is not None
        net = ResNet(Shape(*c.shape), param=param, d_in=c.data.d_in, d_out=c.data.d_out,
                     block=c.model.block, activation=c.model.activation, seeds=[r.seed for r in nets],
                     embed_seed=[cast(int, r.embed_seed) for r in nets] if coupled else None,
                     embed_dim_max=c.embed_dim_max, dtype=c.dtype)
        data = _data(c)
        traj = train(net, data, steps=c.train.steps, lr=c.train.lr, optimizer=c.train.optimizer,
                     loss=c.train.loss, record=("loss", "outputs", "h_last"),
                     divergence_factor=c.train.divergence_factor)
        del net
        seconds = (time.perf_counter() - t0) / len(runs)
        return [self._result(run, traj.select(b), seconds) for b, run in enumerate(runs)]

    def _result(self, run: Run, traj: Trajectory, seconds: float, limit_train: TrainSpec | None = None
                ) -> RunResult:
        div = int(traj.diverged_at[0])
        arrays = {"loss": traj.loss[:, 0], "outputs": traj.require("outputs")[:, 0],
                  "h_last": traj.require("h_last")[:, 0]}
        if limit_train is not None:  # a limit's record: the trainer's blow-up criterion applied here
            div = _blowup(div, arrays, limit_train)
        metrics = {"diverged_at": div, "final_loss": float(arrays["loss"][-1])}
        return RunResult(run.key, "diverged" if div >= 0 else "done", metrics, arrays, seconds=seconds)

    def _execute_limit(self, runs: list[Run], configs: list[ReferenceConfig]) -> list[RunResult]:
        """The limit reference of every repetition in ``runs``, from one solve.

        The large-D limit is solved once (its solution depends on neither ``W_e``, ``W_u`` nor
        ``D``; :meth:`LargeDLimit.solution` caches it); repetition ``r``'s ``h_L`` is the single
        sites ``H_d(1)`` of its own rows of ``W_e``, ``W_u`` at ``D_max`` (the grid's networks of
        dimension ``D`` use the first ``D`` rows). Any other limit solves the repetitions' draws as
        one batched problem. The solver's error estimates go to each run's metrics."""
        from ..limits.base import LimitProblem
        from ..limits.large_d import LargeDLimit
        from .linear_limit import effective_embeddings

        c = configs[0]
        t0 = time.perf_counter()
        param = c.model.param.build()
        D, d_in, d_out = c.embed_dim_max, c.data.d_in, c.data.d_out
        net = ResNet(Shape(1, 1, D), param=param, d_in=d_in, d_out=d_out, seeds=[r.seed for r in configs],
                     embed_seed=[r.embed_seed for r in configs], embed_dim_max=D)
        W_e, W_u, e_std, u_std = effective_embeddings(net)  # h_0 = W_e x, y = W_u^T h / D
        problem = LimitProblem(
            data=_data(c), K=c.train.steps, eta=c.train.lr, alpha=param.alpha, loss=c.train.loss,
            activation=c.model.activation, W_e=W_e, W_u=W_u, embed_std=e_std, readout_std=u_std)
        del net
        limit = LimitReference.model_validate(c.reference).build()
        if isinstance(limit, LargeDLimit):
            sol = limit.solution(problem)
            info = sol.coef.info
            stderr = [{k: v for k, v in sol.stderr.items() if k != "hidden_stderr"}] * len(runs)
            seconds = time.perf_counter() - t0
            results = []
            for b, run in enumerate(runs):
                t1 = time.perf_counter()
                H, _ = sol.single_site(W_e[b], W_u[b], depths=np.array([1.0]))  # (K+1, 1, D, N)
                arrays = {"loss": sol.loss.copy(), "outputs": sol.outputs.copy(),
                          "h_last": np.ascontiguousarray(np.swapaxes(H[:, 0], 1, 2))}  # (K+1, N, D)
                div = _blowup(int(sol.coef.diverged_at[0]), arrays, c.train)
                metrics = {"diverged_at": div, "final_loss": float(arrays["loss"][-1])}
                results.append(RunResult(run.key, "diverged" if div >= 0 else "done", metrics, arrays,
                                         seconds=time.perf_counter() - t1))
        else:
            hidden = getattr(limit, "record_hidden", None)
            try:  # only h_L is needed: (K+1, B, S+1, N, D) hidden states would be wasted
                if hidden is not None:
                    limit.record_hidden = False
                traj = limit.solve(problem)
            finally:
                if hidden is not None:
                    limit.record_hidden = hidden
            info = traj.meta
            stderr = [{k: np.asarray(traj.meta[k])[:, b] for k in ("output_stderr", "h_last_stderr")
                       if k in traj.meta} for b in range(len(runs))]
            seconds = time.perf_counter() - t0
            results = [self._result(run, traj.select(b), 0.0, c.train) for b, run in enumerate(runs)]
        solver = {"limit": c.reference["name"], "solve_seconds": seconds, "solved_together": len(runs)}
        solver.update({k: info[k] for k in ("method", "samples", "replicas", "seed") if k in info})
        for res, errs in zip(results, stderr, strict=True):
            res.metrics.update(solver)
            for name, v in errs.items():  # (K+1,): the solver's own standard errors per step
                res.metrics[name] = _jsonable(v)
                res.metrics[name + "_final"] = _jsonable(v[-1])
            res.seconds += seconds / len(runs)
        return results

    # --- driver-side post-processing ----------------------------------------------------------
    def _reference(self, key: str, store) -> dict[str, np.ndarray]:
        if key not in self._ref_cache:
            rec = store.get(key)
            if rec is None or rec.status != "done":
                raise RuntimeError(f"reference run {key} is {rec.status if rec else 'missing'}")
            self._ref_cache[key] = store.arrays(key, ("outputs", "h_last"))
        return self._ref_cache[key]

    def finish(self, spec, run: Run, result: RunResult, store) -> RunResult:
        from ...measure import embedding_error, output_error

        c = run_config(run.config)
        if not isinstance(c, GridConfig):
            return result
        ref = self._reference(c.reference_key, store)
        a = result.arrays
        div = result.metrics["diverged_at"]

        def traj(outputs, h_last, diverged_at=-1):
            return Trajectory(loss=np.zeros((outputs.shape[0], 1)), outputs=outputs[:, None],
                              h_last=h_last[:, None], depth=np.zeros(1),
                              diverged_at=np.array([diverged_at]))

        t, r = traj(a["outputs"], a["h_last"], div), traj(ref["outputs"], ref["h_last"])
        out = output_error(t, r, per_repetition=True)[:, 0]
        result.metrics["output_error"] = _jsonable(out)
        result.metrics["output_error_final"] = _jsonable(out[-1])
        if c.role in ("embedding", TWINS["embedding"]):
            emb = embedding_error(t, r, per_repetition=True)[:, 0]
            result.metrics["embedding_error"] = _jsonable(emb)
            result.metrics["embedding_error_final"] = _jsonable(emb[-1])
        if not c.store_h_last:
            result.arrays.pop("h_last")
        return result


def _blowup(div: int, arrays: dict[str, np.ndarray], train_config: TrainSpec) -> int:
    """A limit reference's divergence step under :func:`reslim.train`'s criterion (its solver
    flags non-finite values only); the records from that step on become NaN, in place."""
    blown = int(divergence_steps(arrays["loss"], train_config.divergence_factor)[0])
    if blown >= 0 and (div < 0 or blown < div):
        div = blown
    if div >= 0:
        for name, a in arrays.items():
            arrays[name] = a.astype(np.float64, copy=True)
            arrays[name][div:] = np.nan
    return div


def _data(c: ConvergenceConfig | dict[str, Any]):
    """The data of a run (from its typed config or the config dict the store keeps)."""
    d = c.data if isinstance(c, ConvergenceConfig) else DataSpec.model_validate(c["data"])
    return gaussian_data(d.N, d.d_in, d.d_out, d.seed)


def _jsonable(x):
    """Floats (NaN -> None) for JSON metrics."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [float(v) if math.isfinite(v) else None for v in arr]


register_experiment("convergence", Convergence())
