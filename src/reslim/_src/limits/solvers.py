"""The table of limit solvers, in the module that imports every one of them (torchdiffeq's
layout): ``get_limit(name, **options)`` builds one, ``solve(problem, method)`` runs it.

=============  =====================  ===============================================
name           class                  what it solves
=============  =====================  ===============================================
``mean-ode``   :class:`MeanODE`       L, M -> oo at fixed D (any activation)
``large-d``    :class:`LargeDLimit`   then D -> oo (any activation)
``reference``  :class:`ReferenceNetwork`  a large finite network (any activation)
``nfd``        :class:`NFDLimit`      one-layer blocks under depth-muP, N, L -> oo (NFDProblem)
=============  =====================  ===============================================
"""

from __future__ import annotations

from ..training.trajectory import Trajectory
from .base import Limit, LimitProblem
from .deep_linear import DeepLinearLimit
from .large_d import LargeDLimit
from .mean_ode import MeanODE
from .nfd import NFDLimit
from .reference import ReferenceNetwork

SOLVERS: dict[str, type[Limit]] = {
    "mean-ode": MeanODE,
    "large-d": LargeDLimit,
    "reference": ReferenceNetwork,
    "deep-linear": DeepLinearLimit,
    "nfd": NFDLimit,
}


def register_limit(name: str, cls: type[Limit] | None = None):
    """Add ``cls`` to the table under ``name``; usable as ``@register_limit("name")``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")

    def add(c: type[Limit]) -> type[Limit]:
        if not (isinstance(c, type) and issubclass(c, Limit)):
            raise ValueError(f"cls must be a Limit subclass, got {c!r}")
        if name in SOLVERS and SOLVERS[name] is not c:
            raise ValueError(f"name {name!r} is already registered to {SOLVERS[name].__name__}")
        SOLVERS[name] = c
        if not c.name:
            c.name = name
        return c

    return add if cls is None else add(cls)


def available_limits() -> tuple[str, ...]:
    return tuple(sorted(SOLVERS))


def get_limit(name: str, **options) -> Limit:
    """An instance of the limit registered as ``name``, built with ``options``."""
    if name not in SOLVERS:
        raise ValueError(f"unknown limit {name!r}; registered: {', '.join(available_limits())}")
    return SOLVERS[name](**options)


def solve(problem: LimitProblem, method: str = "mean-ode", **options) -> Trajectory:
    """``get_limit(method, **options).solve(problem)``."""
    return get_limit(method, **options).solve(problem)
