"""The Mean ODE of MLU ResNets at fixed D (theory §2.1): L, M -> oo with the network's own
W_e, W_u, solved in the span of E = [W_e, W_u] (exactly for identity, :mod:`.linear`; by
sampled units for any activation, :mod:`.span`). It depends on the draw only through
G_D = E^T E / D."""

from __future__ import annotations

import numpy as np

from ..training.trajectory import Trajectory
from .base import LimitProblem
from .coefficients import Coefficients
from .span_limit import SpanLimit, coefficients_trajectory


def embedding_basis(W_e: np.ndarray, W_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E = [W_e, W_u]`` (B, D, r) and ``G = E^T E / D`` (B, r, r)."""
    Q = np.concatenate([W_e, W_u], axis=2)
    return Q, np.swapaxes(Q, 1, 2) @ Q / Q.shape[1]


class MeanODE(SpanLimit):
    """L, M -> oo at fixed D, any activation (options: :class:`SpanLimit`).

    The problem must carry ``W_e`` (B, D, d_in), ``W_u`` (B, D, d_out); one solution per draw.
    D < r = d_in + d_out is handled in a basis of span(E) (rank D), never by inverting G_D.
    """

    name = "mean-ode"

    def coefficients(self, problem: LimitProblem) -> tuple[Coefficients, np.ndarray]:
        """The reduced solution and the basis ``E`` (B, D, r): h_k(s) = E a_k(s)."""
        W_e, W_u = problem.require_embeddings("MeanODE")
        Q, G = embedding_basis(W_e, W_u)
        return self.reduced(problem, G), Q

    def _solve(self, problem: LimitProblem) -> Trajectory:
        coef, Q = self.coefficients(problem)
        return coefficients_trajectory(coef, problem, Q, self.record_hidden,
                                       {"limit": "mean-ode", "D": Q.shape[1]})
