"""The Mean ODE of linear MLU ResNets at fixed D (theory.md §2.1), solved exactly in the span of
[W_e, W_u]; see :mod:`.linear` for the equations, the reduction and the integrator."""

from __future__ import annotations

import numpy as np

from ..training.trajectory import Trajectory
from .base import Limit, LimitProblem, register_limit
from .linear import LinearCoefficients, solve_linear


def embedding_basis(W_e: np.ndarray, W_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Q = [W_e, W_u]`` (B, D, p) and ``G = Q^T Q / D`` (B, p, p)."""
    Q = np.concatenate([W_e, W_u], axis=2)
    return Q, np.swapaxes(Q, 1, 2) @ Q / Q.shape[1]


def coefficients_trajectory(coef: LinearCoefficients, problem: LimitProblem, Q: np.ndarray | None,
                            record_hidden: bool, meta: dict) -> Trajectory:
    """A :class:`Trajectory` from reduced coefficients; ``Q`` (B', D, p) maps them to R^D
    (``h = Q a``); without ``Q`` the embedding records are ``None``."""
    h_last = hidden = backward = None
    if Q is not None:
        a, c = coef.on_grid("a"), coef.on_grid("c")  # (K+1, Bc, S+1, p, N)
        if a.shape[1] != Q.shape[0]:
            a, c = (np.broadcast_to(v, (v.shape[0], Q.shape[0], *v.shape[2:])) for v in (a, c))
        Qt = np.swapaxes(Q, 1, 2)[None, :, None]  # (1, B, 1, p, D)
        if record_hidden:
            hidden = np.swapaxes(a, -1, -2) @ Qt  # (K+1, B, S+1, N, D)
            backward = np.swapaxes(c, -1, -2) @ Qt
            h_last = hidden[:, :, -1]
        else:
            h_last = (np.swapaxes(a[:, :, -1:], -1, -2) @ Qt)[:, :, 0]
    B = 1 if Q is None else Q.shape[0]

    def bc(v: np.ndarray) -> np.ndarray:
        return v if v.shape[1] == B else np.broadcast_to(v, (v.shape[0], B, *v.shape[2:])).copy()

    return Trajectory(loss=bc(coef.loss), outputs=bc(coef.outputs), h_last=h_last, depth=coef.depth,
                      diverged_at=np.broadcast_to(coef.diverged_at, (B,)).copy(), hidden=hidden,
                      backward=backward,
                      meta={"steps": problem.K, "loss": problem.loss, "activation": problem.activation,
                            "parameterization": "mlu", "eta": problem.eta, "alpha": problem.alpha,
                            "S": coef.S, **meta})


@register_limit("mean-ode")
class MeanODE(Limit):
    """L, M -> oo at fixed D, identity activation: exact second moments, RK4 in depth.

    ``S``: number of RK4 depth steps (output grid ``i / S``, ``i = 0..S``; error O(S^-4)).
    ``record_hidden``: also return ``hidden`` and ``backward`` (K+1, B, S+1, N, D).
    The problem must carry ``W_e`` (B, D, d_in), ``W_u`` (B, D, d_out); one solution per draw.
    """

    activations = ("identity",)

    def __init__(self, S: int = 32, record_hidden: bool = True) -> None:
        if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or S < 1:
            raise ValueError(f"S must be a positive integer, got {S!r}")
        self.S, self.record_hidden = int(S), bool(record_hidden)

    def coefficients(self, problem: LimitProblem) -> tuple[LinearCoefficients, np.ndarray]:
        """The reduced solution and the basis ``Q`` (B, D, p): h_k(s) = Q a_k(s)."""
        W_e, W_u = problem.require_embeddings("MeanODE")
        Q, G = embedding_basis(W_e, W_u)
        coef = solve_linear(problem.data.X, problem.data.Y, G, K=problem.K, eta=problem.eta,
                            alpha=problem.alpha, loss_scale=problem.loss_scale, S=self.S)
        return coef, Q

    def _solve(self, problem: LimitProblem) -> Trajectory:
        coef, Q = self.coefficients(problem)
        return coefficients_trajectory(coef, problem, Q, self.record_hidden,
                                       {"limit": "mean-ode", "D": Q.shape[1]})

    def __repr__(self) -> str:
        return f"MeanODE(S={self.S})"
