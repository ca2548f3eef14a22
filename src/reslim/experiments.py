"""reslim.experiments: declarative experiment specs, sweeps, the SQLite results store, executors.

Public API (internals in ``reslim._src.experiments``; see docs/experiments.md)::

    load_spec(source, overrides)            a validated spec (built-in name, TOML path or dict)
    SpecBase, StrictModel, ParamSpec, SpecError, builtin_specs
    ExperimentKind, Run, RunResult, register_experiment, get_experiment, experiment_kinds, run_key
    run_experiment(spec, out, jobs=...)     sweep + report; run_sweep(...) sweep only
    Store, RunRecord, StoreError, load_results(dir)
    Executor, LocalExecutor, Task, TaskOutcome, execute_task, make_executor, EXECUTORS
    ConvergenceSpec                         the ``convergence`` kind's spec
"""

from ._src.experiments.convergence import ConvergenceSpec
from ._src.experiments.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    Task,
    TaskOutcome,
    execute_task,
    make_executor,
)
from ._src.experiments.registry import (
    ExperimentKind,
    Run,
    RunResult,
    experiment_kinds,
    get_experiment,
    register_experiment,
    run_key,
)
from ._src.experiments.spec import ParamSpec, SpecBase, SpecError, StrictModel, builtin_specs, load_spec
from ._src.experiments.store import RunRecord, Store, StoreError, load_results
from ._src.experiments.sweep import SweepSummary, plan_tasks, run_experiment, run_sweep

__all__ = [
    "EXECUTORS", "ConvergenceSpec", "Executor", "ExperimentKind", "LocalExecutor", "ParamSpec", "Run",
    "RunRecord", "RunResult", "SpecBase", "SpecError", "Store", "StoreError", "StrictModel", "SweepSummary",
    "Task", "TaskOutcome", "builtin_specs", "execute_task", "experiment_kinds", "get_experiment",
    "load_results", "load_spec", "make_executor", "plan_tasks", "register_experiment", "run_experiment",
    "run_key", "run_sweep",
]
