"""The large-D limit of MLU ResNets (docs/theory.md §2.2; Chaintron, Chizat, Maass, arXiv 2603.18168),
for any activation and any number N of training samples.

Any activation (see :mod:`.span`): the fixed-D Mean ODE depends on the draw only through
G_D = E^T E / D, and G_D -> G_oo at rate D^{-1/2}; the large-D limit is the same reduced system
with G = G_oo, one deterministic solution for every D and every draw. Coordinate d is
H_d(s) = a(s)^T z_d, Gaussian given the data, exactly as below.

Identity activation, derivation (see :mod:`.linear`). At fixed D the Mean ODE keeps h_k(s) = Q a_k(s) and
b_k(s) = Q c_k(s) with Q = [W_e, W_u], and depends on D only through G = Q^T Q / D. With i.i.d.
N(0, s_e^2) entries in W_e and N(0, s_u^2) in W_u, G -> G_oo = blockdiag(s_e^2 I_{d_in},
s_u^2 I_{d_out}) at rate D^{-1/2}, so the limit is the same closed system with G = G_oo:

    da_k/ds = alpha S_k^{vu} G_oo a_k,  a_k(0) = [x; 0];   dc_k/ds = -alpha S_k^{uv} G_oo c_k,
    c_k(1) = [0; (f_k - Y)/c_loss];   f_k = s_u^2 a_k^{(u)}(1);   S_{k+1} = R S_k R^T + g^2 J G2 J - 2 g J.

It is causal in the step index k. Coordinate d of the embedding is the single-site process
H_{d,k}(s) = a_k(s)^T z_d, B_{d,k}(s) = c_k(s)^T z_d with z_d = (W_e[d], W_u[d]) in R^p, which
is Gaussian N(0, Gamma^H_kk(s)) over the law of z_d. The step-sample kernels are

    Gamma^H_{(j,m),(k,n)}(s) = a_j[:, m]^T G_oo a_k[:, n],   Gamma^B likewise with c,
    Lambda^{HB}_{(j,m),(k,n)}(s) = a_j[:, m]^T G_oo c_k[:, n],

and a_k, c_k themselves are the overlaps of H, B with the rows of W_e, W_u (divided by s^2).
"""

from __future__ import annotations

import numpy as np

from ..training.trajectory import Trajectory
from .base import LimitProblem
from .coefficients import Coefficients
from .span_limit import SpanLimit, coefficients_trajectory


def limit_gram(d_in: int, d_out: int, embed_std: float = 1.0, readout_std: float = 1.0) -> np.ndarray:
    """G_oo = blockdiag(s_e^2 I_{d_in}, s_u^2 I_{d_out}), shape (p, p)."""
    return np.diag(np.r_[np.full(d_in, embed_std**2), np.full(d_out, readout_std**2)])


class LargeDSolution:
    """The solved large-D limit of one problem: outputs, laws, kernels and single sites.

    Attributes: ``coef`` (:class:`Coefficients`, B = 1), ``G`` (p, p), ``depth`` (S+1,).
    ``stderr``: the sampled solver's standard errors (``output_stderr``, ``h_last_stderr``,
    ``hidden_stderr``, each (K+1,)); empty for the exact solver.
    """

    def __init__(self, problem: LimitProblem, coef: Coefficients, G: np.ndarray) -> None:
        self.problem, self.coef, self.G = problem, coef, G

    @property
    def depth(self) -> np.ndarray:
        return self.coef.depth

    @property
    def stderr(self) -> dict[str, np.ndarray]:
        return {k: v[:, 0] for k, v in self.coef.info.items() if k.endswith("_stderr")}

    @property
    def outputs(self) -> np.ndarray:
        """f_k for every sample: (K+1, N, d_out), deterministic."""
        return self.coef.outputs[:, 0]

    @property
    def loss(self) -> np.ndarray:
        return self.coef.loss[:, 0]

    def _coefs(self, depths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if depths is None:
            return self.coef.on_grid("a")[:, 0], self.coef.on_grid("c")[:, 0]
        return self.coef.at_depths("a", depths)[:, 0], self.coef.at_depths("c", depths)[:, 0]

    def single_site(self, W_e_rows: np.ndarray, W_u_rows: np.ndarray,
                    depths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """H_d(s), B_d(s) for the rows ``W_e_rows`` (n, d_in), ``W_u_rows`` (n, d_out).

        Returns ``(H, B)``, each (K+1, S'+1, n, N) on ``depths`` (default: the grid
        ``depth``; other depths by fourth-order Hermite interpolation).
        """
        p = self.problem
        W_e_rows = np.asarray(W_e_rows, dtype=np.float64)
        W_u_rows = np.asarray(W_u_rows, dtype=np.float64)
        if W_e_rows.ndim != 2 or W_e_rows.shape[1] != p.d_in:
            raise ValueError(f"W_e_rows must have shape (n, {p.d_in}), got {W_e_rows.shape}")
        if W_u_rows.ndim != 2 or W_u_rows.shape != (W_e_rows.shape[0], p.d_out):
            raise ValueError(f"W_u_rows must have shape ({W_e_rows.shape[0]}, {p.d_out}), "
                             f"got {W_u_rows.shape}")
        z = np.concatenate([W_e_rows, W_u_rows], axis=1)  # (n, p)
        a, c = self._coefs(depths)
        return np.einsum("kspn,dp->ksdn", a, z), np.einsum("kspn,dp->ksdn", c, z)

    def variances(self, depths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Gamma^H_kk(s) and Gamma^B_kk(s) per sample: each (K+1, S'+1, N). A coordinate
        H_{d,k}(s, x_n) is N(0, Gamma^H_kk(s)[n]) over the law of (W_e[d], W_u[d])."""
        a, c = self._coefs(depths)
        return (np.einsum("kspn,pq,kspn->ksn", a, self.G, a),
                np.einsum("kspn,pq,kspn->ksn", c, self.G, c))

    def kernels(self, depths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Step-sample kernels ``Gamma_H``, ``Gamma_B``, ``Lambda_HB``, each
        (S'+1, K+1, N, K+1, N), indexed [s, j, m, k, n] (step j sample m, step k sample n)."""
        a, c = self._coefs(depths)
        ga, gc = np.einsum("pq,kspn->ksqn", self.G, a), np.einsum("pq,kspn->ksqn", self.G, c)
        return {"Gamma_H": np.einsum("jspm,kspn->sjmkn", a, ga),
                "Gamma_B": np.einsum("jspm,kspn->sjmkn", c, gc),
                "Lambda_HB": np.einsum("jspm,kspn->sjmkn", a, gc)}


class LargeDLimit(SpanLimit):
    """D -> oo after L, M -> oo, any activation (options: :class:`SpanLimit`): deterministic
    kernels and single sites.

    :meth:`solve` returns outputs f_k broadcast to the problem's ``B`` draws; when the problem
    carries ``W_e``, ``W_u`` the embedding records (``h_last``, ``hidden``, ``backward``) are the
    single sites H_d(s) of those rows, else None. The solution does not depend on D nor on the
    draw: one solve serves every shape and repetition (:meth:`solution` caches the last one).
    """

    name = "large-d"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cache: tuple[tuple, LargeDSolution] | None = None

    @staticmethod
    def _key(problem: LimitProblem) -> tuple:
        d = problem.data
        return (d.X.tobytes(), d.Y.tobytes(), problem.K, problem.eta, problem.alpha, problem.loss,
                problem.activation, problem.embed_std, problem.readout_std)

    def solution(self, problem: LimitProblem) -> LargeDSolution:
        """Solve (or reuse the last solve of a problem equal but for W_e, W_u)."""
        if not isinstance(problem, LimitProblem):
            raise ValueError(f"problem must be a LimitProblem, got {type(problem).__name__}")
        key = self._key(problem)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        G = limit_gram(problem.d_in, problem.d_out, problem.embed_std, problem.readout_std)
        coef = self.reduced(problem, G[None])
        sol = LargeDSolution(problem, coef, G)
        self._cache = (key, sol)
        return sol
    def single_site(self, problem: LimitProblem, W_e_rows: np.ndarray, W_u_rows: np.ndarray,
                    depths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`LargeDSolution.single_site`."""
        return self.solution(problem).single_site(W_e_rows, W_u_rows, depths)

    def variances(self, problem: LimitProblem, depths: np.ndarray | None = None):
        """See :meth:`LargeDSolution.variances`."""
        return self.solution(problem).variances(depths)

    def kernels(self, problem: LimitProblem, depths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """See :meth:`LargeDSolution.kernels`."""
        return self.solution(problem).kernels(depths)

    def _solve(self, problem: LimitProblem) -> Trajectory:
        sol = self.solution(problem)
        Q = None
        if problem.W_e is not None:
            Q = np.concatenate([problem.W_e, problem.W_u], axis=2)
        return coefficients_trajectory(sol.coef, problem, Q, self.record_hidden,
                                       {"limit": "large-d", "D": problem.D})
