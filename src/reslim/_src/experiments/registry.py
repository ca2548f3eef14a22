"""Experiment kinds: what a spec's ``kind`` field selects.

A kind is an :class:`ExperimentKind` registered under a name with :func:`register_experiment`.
It supplies the spec model, expands a spec into :class:`Run`\\ s (each keyed by a hash of its
full config), executes a batch of equal-shape runs in a worker (:meth:`ExperimentKind.execute`),
post-processes each result in the driver (:meth:`ExperimentKind.finish`, e.g. errors against a
reference already in the store), analyses the store (fits) and contributes report sections.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from .runs import FINISHED as FINISHED
from .runs import KEY_VERSION as KEY_VERSION
from .runs import STATUSES as STATUSES
from .runs import Run as Run
from .runs import RunResult as RunResult
from .runs import canonical_json as canonical_json
from .runs import run_key as run_key

if TYPE_CHECKING:
    from ..report.report import Section
    from .store import Store


class SpecLike(Protocol):
    """What the registry reads of a spec. Every spec model (a subclass of
    :class:`reslim._src.experiments.spec.SpecBase`) has it; a protocol, so that the registry does
    not import the spec module (whose ``validate_spec`` looks kinds up here)."""

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...


SpecT = TypeVar("SpecT", bound=SpecLike)


# Modules that register kinds, imported on a registry miss (add a line for a new kind).
KIND_MODULES = {
    "convergence": "reslim._src.experiments.convergence",
    "gia-gap": "reslim._src.experiments.gia_gap",
    "collapse": "reslim._src.experiments.collapse",
    "transfer": "reslim._src.experiments.transfer",
    "probe": "reslim._src.experiments.probe",
    "linear-limit": "reslim._src.experiments.linear_limit",
    "nonlinear-limit": "reslim._src.experiments.nonlinear_limit",
    "deep-linear": "reslim._src.experiments.deep_linear",
    "nfd": "reslim._src.experiments.nfd",
    "transformer-convergence": "reslim._src.experiments.transformer_convergence",
    "nfd-scaling": "reslim._src.experiments.nfd_scaling",
    "mean-field": "reslim._src.experiments.mean_field",
}


class ExperimentKind(Generic[SpecT]):
    """Base class of experiment kinds; override what the kind needs. Generic in the kind's spec
    model (``class Collapse(ExperimentKind[CollapseSpec])``).

    Only :meth:`execute` runs in workers (it must be a pure function of the runs' configs);
    every other hook runs in the driver, which alone writes the store.
    """

    name: str = ""  # set by register_experiment
    spec_model: ClassVar[type[Any]]  #: a subclass of spec.SpecBase (a pydantic model)
    #: optional module (imported on first use, in the driver only) providing
    #: ``analyse(kind, spec, store)``, ``sections(kind, spec, store, analysis, figure_dir)`` and
    #: ``summary_lines(analysis)``: the default analysis/report hooks delegate to it
    report_module: ClassVar[str | None] = None

    def _report_module(self):
        import importlib

        return None if self.report_module is None else importlib.import_module(self.report_module)

    @property
    def module(self) -> str:
        """Module a worker imports to find this kind (registration happens at import)."""
        return type(self).__module__

    def expand(self, spec: SpecT) -> list[Run]:
        raise NotImplementedError

    def execute(self, runs: list[Run]) -> list[RunResult]:
        """Execute runs of one group (equal shapes) together; one result per run, in order."""
        raise NotImplementedError

    def finish(self, spec: SpecT, run: Run, result: RunResult, store: Store) -> RunResult:
        """Driver-side post-processing of a result before it is stored (default: none)."""
        return result

    def records(self, spec: SpecT, store: Store) -> list:
        """The stored records of ``spec``'s runs (a store may hold other specs' runs too)."""
        keys = {r.key for r in self.expand(spec)}
        return [rec for rec in store.records(kind=spec.kind) if rec.key in keys]

    def analyse(self, spec: SpecT, store: Store) -> Any:
        """Fits and tables from the store (default: the report module's, else nothing)."""
        mod = self._report_module()
        return None if mod is None else mod.analyse(self, spec, store)

    def report(self, spec: SpecT, store: Store, analysis: Any, figure_dir) -> list[Section]:
        """Report sections (with figures written under ``figure_dir``)."""
        mod = self._report_module()
        return [] if mod is None else mod.sections(self, spec, store, analysis, figure_dir)

    def summary(self, spec: SpecT, analysis: Any) -> list[str]:
        """Lines printed at the end of ``reslim run``."""
        mod = self._report_module()
        return [] if mod is None else mod.summary_lines(analysis)


_REGISTRY: dict[str, ExperimentKind] = {}


def register_experiment(name: str, experiment: ExperimentKind) -> ExperimentKind:
    """Register ``experiment`` under ``name`` (the spec's ``kind``); returns it."""
    if not isinstance(experiment, ExperimentKind):
        raise TypeError("register_experiment expects an ExperimentKind instance")
    existing = _REGISTRY.get(name)
    if existing is not None and type(existing) is not type(experiment):
        raise ValueError(f"experiment kind {name!r} is already registered by {existing.module}")
    experiment.name = name
    _REGISTRY[name] = experiment
    return experiment


def get_experiment(name: str, module: str | None = None) -> ExperimentKind:
    """The kind registered under ``name`` (importing ``module`` or the known modules first)."""
    if name not in _REGISTRY:
        for mod in [module, KIND_MODULES.get(name)]:
            if mod:
                importlib.import_module(mod)
        if name not in _REGISTRY:
            for mod in KIND_MODULES.values():
                importlib.import_module(mod)
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment kind {name!r}; known: {', '.join(experiment_kinds())}")
    return _REGISTRY[name]


def experiment_kinds() -> list[str]:
    for mod in KIND_MODULES.values():
        try:
            importlib.import_module(mod)
        except ImportError:  # pragma: no cover - a kind module that is not there yet
            pass
    return sorted(_REGISTRY)
