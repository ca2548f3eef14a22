"""Limits of ResNet training behind one interface (docs/theory.md §2; docs/limits.md).

A :class:`LimitProblem` carries what a finite MLU network is given (data, eta, alpha, K, loss,
activation, W_e, W_u); a :class:`Limit` solves it and returns a :class:`reslim.Trajectory`::

    Limit, LimitProblem, register_limit, get_limit, available_limits, solve, SOLVERS (the table)
    MeanODE(...)               "mean-ode"   L, M -> oo at fixed D, any activation (exact for identity,
                                            sampled units in span(W_e, W_u) otherwise)
    LargeDLimit(...)           "large-d"    then D -> oo, any activation: outputs, laws, kernels, single sites
    DeepLinearLimit(), DeepLinearProblem  "deep-linear"  deep linear networks at N = oo (docs/deep-linear.md)
    ReferenceNetwork(shape, seeds)  "reference"  a large finite network (any activation)
    NFDLimit(...), NFDProblem  "nfd"  Neural Feature Dynamics (one-layer blocks, depth-muP; docs/limits.md)
    LargeDSolution             what LargeDLimit.solution(problem) returns
    large_d_embedding_error    the paper's max_l mean |h - H| against the large-D single sites
    output_rms, embedding_rms, hidden_distance   distances between records
    embedding_error            deprecated alias of large_d_embedding_error
"""

from ._src.limits.base import Limit, LimitProblem
from ._src.limits.compare import (
    embedding_error,
    embedding_rms,
    hidden_distance,
    large_d_embedding_error,
    output_rms,
)
from ._src.limits.deep_linear import DeepLinearLimit, DeepLinearProblem, DeepLinearSolution
from ._src.limits.large_d import LargeDLimit, LargeDSolution, limit_gram
from ._src.limits.mean_ode import MeanODE
from ._src.limits.nfd import NFDLimit, NFDProblem, nfd_network_options, sgd_batches
from ._src.limits.reference import ReferenceNetwork
from ._src.limits.solvers import SOLVERS, available_limits, get_limit, register_limit, solve

__all__ = [
    "DeepLinearLimit",
    "DeepLinearProblem",
    "DeepLinearSolution",
    "LargeDLimit",
    "LargeDSolution",
    "Limit",
    "LimitProblem",
    "MeanODE",
    "NFDLimit",
    "NFDProblem",
    "ReferenceNetwork",
    "SOLVERS",
    "available_limits",
    "embedding_error",
    "embedding_rms",
    "get_limit",
    "hidden_distance",
    "large_d_embedding_error",
    "limit_gram",
    "nfd_network_options",
    "output_rms",
    "register_limit",
    "sgd_batches",
    "solve",
]
