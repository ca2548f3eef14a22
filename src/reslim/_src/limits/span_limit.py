"""The base of the two span-reduced limits (:class:`MeanODE`, :class:`LargeDLimit`): their
options, the choice between exact moments (identity) and sampled units (any activation), and
the :class:`Trajectory` built from the reduced coefficients."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.activations import ACTIVATIONS
from ..training.trajectory import Trajectory
from .base import Limit, LimitProblem
from .coefficients import Coefficients
from .linear import solve_linear
from .span import check_samples, solve_span

METHODS = ("auto", "exact", "sampled")


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def coefficients_trajectory(coef: Coefficients, problem: LimitProblem, Q: np.ndarray | None,
                            record_hidden: bool, meta: dict) -> Trajectory:
    """A :class:`Trajectory` from reduced coefficients; ``Q`` (B', D, r) maps them to R^D
    (``h = Q a``); without ``Q`` the embedding records are ``None``. The sampled solver's
    standard errors go to ``meta`` (``output_stderr``, ``h_last_stderr``, ``hidden_stderr``,
    each (K+1, B))."""
    h_last = hidden = backward = None
    if Q is not None:
        a, c = coef.on_grid("a"), coef.on_grid("c")  # (K+1, Bc, S+1, r, N)
        if a.shape[1] != Q.shape[0]:
            a, c = (np.broadcast_to(v, (v.shape[0], Q.shape[0], *v.shape[2:])) for v in (a, c))
        Qt = np.swapaxes(Q, 1, 2)[None, :, None]  # (1, B, 1, r, D)
        if record_hidden:
            hidden = np.swapaxes(a, -1, -2) @ Qt  # (K+1, B, S+1, N, D)
            backward = np.swapaxes(c, -1, -2) @ Qt
            h_last = hidden[:, :, -1]
        else:
            h_last = (np.swapaxes(a[:, :, -1:], -1, -2) @ Qt)[:, :, 0]
    B = 1 if Q is None else Q.shape[0]

    def bc(v: np.ndarray) -> np.ndarray:
        return v if v.shape[1] == B else np.broadcast_to(v, (v.shape[0], B, *v.shape[2:])).copy()

    extra = {}
    for key in ("output_stderr", "h_last_stderr", "hidden_stderr"):
        if key in coef.info:
            extra[key] = bc(coef.info[key])
    for key in ("method", "samples", "replicas", "seed"):
        if key in coef.info:
            extra[key] = coef.info[key]
    return Trajectory(loss=bc(coef.loss), outputs=bc(coef.outputs), h_last=h_last, depth=coef.depth,
                      diverged_at=np.broadcast_to(coef.diverged_at, (B,)).copy(), hidden=hidden,
                      backward=backward,
                      meta={"steps": problem.K, "loss": problem.loss, "activation": problem.activation,
                            "parameterization": "mlu", "eta": problem.eta, "alpha": problem.alpha,
                            "S": coef.S, **extra, **meta})


class SpanLimit(Limit[LimitProblem]):
    """A limit solved in the span of [W_e, W_u] (docs/limits.md), for any activation.

    Options:

    - ``S``: RK4 depth steps (output grid ``i / S``); default 32 with exact moments, 8 sampled
      (the depth error is then far below the sampling error: measured in docs/limits.md)
    - ``method``: ``"exact"`` (closed-form second moments, identity only), ``"sampled"``
      (quasi-Monte Carlo over units, any activation) or ``"auto"`` (exact for identity)
    - ``samples``: unit samples of the sampled method, in all (default 16384), split into
      ``replicas`` independent scrambles (default 4; ``samples / replicas`` a power of two);
      the spread over replicas is the solver's error estimate
    - ``seed``: of the scrambles; the same seed gives the same points for every problem
      (common random numbers across draws, depths and the fixed-D / large-D pair)
    - ``antithetic``: half the points with zeta_v negated (default True)
    - ``device``: torch device of the sampled method (``"cpu"``, ``"cuda"``)
    - ``record_hidden``: also return ``hidden`` and ``backward`` (K+1, B, S+1, N, D)
    """

    activations = tuple(ACTIVATIONS)

    def __init__(self, S: int | None = None, record_hidden: bool = True, method: str = "auto",
                 samples: int = 16384, replicas: int = 4, seed: int = 0, antithetic: bool = True,
                 device: str = "cpu", stein: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.S = None if S is None else _positive_int("S", S)
        self.samples, self.replicas = check_samples(samples, replicas)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(device, str) or not device:
            raise ValueError(f"device must be a torch device name, got {device!r}")
        self.method, self.seed, self.antithetic = method, int(seed), bool(antithetic)
        self.device, self.record_hidden, self.stein = device, bool(record_hidden), bool(stein)

    def method_for(self, activation: str) -> str:
        """``"exact"`` or ``"sampled"`` for ``activation``."""
        if self.method == "exact" and activation != "identity":
            raise ValueError(f"method: exact moments exist for identity only, got activation {activation!r}")
        if self.method == "auto":
            return "exact" if activation == "identity" else "sampled"
        return self.method

    def depth_steps(self, activation: str) -> int:
        if self.S is not None:
            return self.S
        return 32 if self.method_for(activation) == "exact" else 8

    def reduced(self, problem: LimitProblem, G: np.ndarray) -> Coefficients:
        """The coefficients for Gram matrices ``G`` (B, r, r), by the method for the problem."""
        kw: dict[str, Any] = dict(K=problem.K, eta=problem.eta, alpha=problem.alpha,
                                  loss_scale=problem.loss_scale, S=self.depth_steps(problem.activation))
        if self.method_for(problem.activation) == "exact":
            return solve_linear(problem.data.X, problem.data.Y, G, **kw)
        return solve_span(problem.data.X, problem.data.Y, G, activation=problem.activation,
                          samples=self.samples, replicas=self.replicas, seed=self.seed,
                          antithetic=self.antithetic, device=self.device, stein=self.stein, **kw)

    def _options(self) -> str:
        s = "" if self.S is None else f"S={self.S}, "
        if self.method == "exact":
            return f"{s}method='exact'"
        return (f"{s}method={self.method!r}, samples={self.samples}, replicas={self.replicas}, "
                f"seed={self.seed}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._options()})"
