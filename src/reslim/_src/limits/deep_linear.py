"""The infinite-width limit of deep linear networks (docs/deep-linear.md; docs/theory.md §6; Chizat,
Colombo, Fernández-Real, Figalli, *Infinite-width limit of deep linear neural networks*, CPAM 2024,
arXiv 2211.16980), in the scaling of :mod:`reslim._src.models.deep_linear`.

The limit as a finite-dimensional deterministic recursion. Vectors of a wide layer (R^N) enter
only through their normalised inner products ``<u, v> = u.v / N``; every vector the dynamics ever
touches is written in an orthonormal basis (for that inner product) of a finite-dimensional space,
one space per wide layer l = 1..L-1, and is a coefficient vector. The basis grows as needed:

- ``A^1(0) = W^1/sqrt(d)`` only ever acts on I_d: its columns are d basis vectors over sqrt(d);
- ``A^L(0) = W^L/(gamma_0 N)`` acts by ``v -> <omega, v>/gamma_0`` with ``omega = W^L(0)^T`` k basis
  vectors of space L-1 (exact at every N);
- a hidden ``A^l(0) = W^l/sqrt(N)`` (l = 2..L-1) is applied to finitely many vectors. Given what
  it has been applied to so far, ``A V = Y`` (V orthonormal) and ``A^T U = Z`` (U orthonormal),
  Gaussian conditioning gives ``A = Y V^T + U Z^T (I - V V^T) + P_U^perp A~ P_V^perp`` with A~ an
  independent copy; as N -> oo the last term maps a unit vector orthogonal to V to a *new* unit
  basis vector (orthogonal to everything so far). So ``A v = Y V^T v + U Z^T v_perp + |v_perp| e_new``,
  and ``A^T u`` likewise with the roles of (V, Y) and (U, Z) exchanged.

Every GD update is a sum of outer products of such vectors (``dA^l = eta F^l`` with
``F^1 = -(gamma_0/d) Q^1 E``, ``F^l = -gamma_0 Q^l E <M^{l-1}, .>``, ``F^L = -E <M^{L-1}, .>``), so the
whole state stays finite-dimensional: the weights' deltas are matrices in these bases and the
recursion is marched causally step by step, exactly (up to rounding; components below ``tol``
relative are dropped). The Gram matrices of the coefficient vectors are the kernels of docs/theory.md
§6; a neuron i of layer l is a standard Gaussian vector ``z_i`` in the basis, so its coordinates
``h^l_i(x_mu, t) = m^l(t) x_mu . z_i`` are jointly Gaussian with covariance the two-time kernel.

Gradient flow (``mode="flow"``): classical RK4 on the finite-width flow ``dW/dt = -grad``, with
``n_sub`` steps per record interval eta, each of whose stage evaluations is taken to N = oo by
the same construction (RK4 stages only apply the same matrices to more vectors). Global error
O(h^4), measured in tests/test_deep_linear.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.deep_linear import _check_data
from ..training.trajectory import Trajectory
from .base import Limit

MODES = ("gd", "flow")


def _int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _pos(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {v!r}") from None
    if not (np.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return f


@dataclass(frozen=True)
class DeepLinearProblem:
    """A deep linear network's training problem: data ``X`` (P, d), ``Y`` (P, k), depth ``L``
    (number of weight matrices), ``K`` records (steps 0..K), base learning rate ``eta``,
    ``gamma0`` (feature-learning strength), ``mode`` ``"gd"`` (K GD steps) or ``"flow"``
    (gradient flow at times k eta, RK4 with ``substeps`` steps per interval)."""

    X: np.ndarray
    Y: np.ndarray
    L: int
    K: int
    eta: float = 0.1
    gamma0: float = 1.0
    mode: str = "gd"
    substeps: int = 4

    def __post_init__(self) -> None:
        X, Y = _check_data(self.X, self.Y)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "Y", Y)
        object.__setattr__(self, "L", _int("L", self.L, 1))
        object.__setattr__(self, "K", _int("K", self.K, 0))
        object.__setattr__(self, "substeps", _int("substeps", self.substeps, 1))
        object.__setattr__(self, "eta", _pos("eta", self.eta))
        object.__setattr__(self, "gamma0", _pos("gamma0", self.gamma0))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def P(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def k(self) -> int:
        return self.Y.shape[1]

    def min_norm_solution(self) -> np.ndarray:
        """``beta* = Y^T (X^T)^+``, the minimum-l2-norm minimiser of the risk (k x d)."""
        return self.Y.T @ np.linalg.pinv(self.X.T)

    def ntk_beta(self) -> np.ndarray:
        """The lazy (gamma_0 -> 0) limit in closed form: kernel ``eta L x.x'/d``, from beta = 0,
        (K+1, k, d): GD ``beta <- beta - (eta L/d) E`` or, for ``"flow"``, its exact flow."""
        X, Y, c = self.X, self.Y, self.L / self.d
        out = np.zeros((self.K + 1, self.k, self.d))
        if self.mode == "gd":
            b = np.zeros((self.k, self.d))
            for t in range(1, self.K + 1):
                b = b - self.eta * c * ((b @ X.T - Y.T) @ X) / self.P
                out[t] = b
            return out
        S = X.T @ X / self.P  # d beta/dt = -c (beta S - Y^T X / P)
        w, U = np.linalg.eigh(S)
        target = Y.T @ X / self.P @ U  # in the eigenbasis: b' = -c (b w - target)
        for t in range(self.K + 1):
            tt = t * self.eta
            with np.errstate(divide="ignore", invalid="ignore"):
                f = np.where(w > 1e-14 * max(w.max(), 1e-300), (1 - np.exp(-c * w * tt)) / w, c * tt)
            out[t] = (target * f) @ U.T
        return out


class _Space:
    """A growing orthonormal basis (coefficient dimension ``n``) of one wide layer's vectors."""

    def __init__(self) -> None:
        self.n = 0

    def new(self, m: int) -> slice:
        s = slice(self.n, self.n + m)
        self.n += m
        return s


def _pad(a: np.ndarray, rows: int, cols: int | None = None) -> np.ndarray:
    r, c = a.shape
    cols = c if cols is None else cols
    if r == rows and c == cols:
        return a
    out = np.zeros((rows, cols))
    out[:r, :c] = a
    return out


def _orth(r: np.ndarray, tol: float) -> np.ndarray:
    """An orthonormal basis of the columns of ``r`` (singular values above ``tol``)."""
    if r.shape[1] == 0 or not np.any(r):
        return np.zeros((r.shape[0], 0))
    U, S, _ = np.linalg.svd(r, full_matrices=False)
    return U[:, S > tol]


class _Gaussian:
    """A hidden ``A^l(0)`` at N = oo, acting from space ``a`` to space ``b`` (see the module doc)."""

    def __init__(self, a: _Space, b: _Space, tol: float) -> None:
        self.a, self.b, self.tol = a, b, tol
        self.V, self.Y = np.zeros((0, 0)), np.zeros((0, 0))  # A V = Y, V orthonormal in a
        self.U, self.Z = np.zeros((0, 0)), np.zeros((0, 0))  # A^T U = Z, U orthonormal in b

    def _apply(self, v, Vin, Yout, Uo, Zo, sin: _Space, sout: _Space):
        n_in = sin.n
        v = _pad(v, n_in)
        Vin, Zo = _pad(Vin, n_in), _pad(Zo, n_in)
        r = v - Vin @ (Vin.T @ v)
        r = r - Vin @ (Vin.T @ r)
        scale = max(float(np.sqrt((v**2).sum(axis=0)).max()), 1e-300)
        new = _orth(r, self.tol * scale)
        m = new.shape[1]
        if m:
            fresh = sout.new(m)
            Uo = _pad(Uo, sout.n)
            img = _pad(Uo @ (Zo.T @ new), sout.n)
            img[fresh, :] += np.eye(m)
            Vin = np.concatenate([Vin, new], axis=1)
            Yout = np.concatenate([_pad(Yout, sout.n, Yout.shape[1]), img], axis=1)
        out = _pad(Yout, sout.n) @ (Vin.T @ v)
        return out, Vin, Yout

    def fwd(self, v: np.ndarray) -> np.ndarray:
        out, self.V, self.Y = self._apply(v, self.V, self.Y, self.U, self.Z, self.a, self.b)
        return out

    def bwd(self, u: np.ndarray) -> np.ndarray:
        out, self.U, self.Z = self._apply(u, self.U, self.Z, self.V, self.Y, self.b, self.a)
        return out


class DeepLinearSolution:
    """The solved limit: ``beta`` (K+1, k, d), ``loss`` (K+1,), per wide layer l = 1..L-1 the
    coefficient frames ``forward[l-1]`` (K+1, n_l, d) (M^l(t)) and ``backward[l-1]`` (K+1, n_l, k)
    (Q^l(t)) in one orthonormal basis per layer (``dims``), ``diverged_at`` (-1: never)."""

    def __init__(self, problem, beta, loss, forward, backward, diverged_at):
        self.problem, self.beta, self.loss = problem, beta, loss
        self.forward, self.backward, self.diverged_at = forward, backward, diverged_at

    @property
    def dims(self) -> list[int]:
        return [f.shape[1] for f in self.forward]

    def _layer(self, layer: int) -> int:
        if not 1 <= layer <= self.problem.L - 1:
            raise ValueError(f"layer must be in 1..{self.problem.L - 1}, got {layer!r}")
        return layer - 1

    def hidden_kernel(self, layer: int) -> np.ndarray:
        """Two-time forward kernel ``H^l[t, mu, s, nu] = <h^l_mu(t), h^l_nu(s)>`` (K+1, P, K+1, P):
        the covariance of the Gaussian neuron coordinates h^l_i(x_mu, t)."""
        h = np.einsum("tnd,pd->tpn", self.forward[self._layer(layer)], self.problem.X)
        return np.einsum("tpn,sqn->tpsq", h, h)

    def backward_kernel(self, layer: int) -> np.ndarray:
        """``G^l[t, i, s, j] = <g^l_i(t), g^l_j(s)>`` (K+1, k, K+1, k), g^l_i = Q^l e_i."""
        q = self.backward[self._layer(layer)]
        return np.einsum("tni,snj->tisj", q, q)

    def hidden_variance(self, layer: int) -> np.ndarray:
        """Equal-time kernel ``H^l(t)`` (K+1, P, P)."""
        h = np.einsum("tnd,pd->tpn", self.forward[self._layer(layer)], self.problem.X)
        return np.einsum("tpn,tqn->tpq", h, h)

    def first_layer_law(self) -> np.ndarray:
        """Covariance (K+1, d, d) of a row of W^1(t) (one neuron's input weights; Gaussian):
        ``d M^1(t)^T M^1(t)`` in coefficients (I_d at t = 0)."""
        if self.problem.L == 1:
            raise ValueError("layer: L = 1 has no wide layer")
        m = self.forward[0]
        return self.problem.d * np.einsum("tnd,tne->tde", m, m)

    def readout_law(self) -> np.ndarray:
        """Covariance (K+1, k, k) of a column of W^L(t) (one neuron's output weights; Gaussian):
        the Gram of Q^{L-1}(t) (I_k at t = 0)."""
        if self.problem.L == 1:
            raise ValueError("layer: L = 1 has no wide layer")
        q = self.backward[-1]
        return np.einsum("tni,tnj->tij", q, q)


class DeepLinearLimit(Limit[DeepLinearProblem]):
    """N -> oo limit of :class:`reslim.DeepLinearNetwork` (``solve(problem) -> Trajectory``,
    ``solution(problem) -> DeepLinearSolution``); ``tol``: relative size below which a new
    direction is dropped (rounding)."""

    name = "deep-linear"
    problem_type = DeepLinearProblem

    def __init__(self, tol: float = 1e-10) -> None:
        self.tol = _pos("tol", tol)

    def _solve(self, problem: DeepLinearProblem) -> Trajectory:
        sol = self.solution(problem)
        K, P, k = problem.K, problem.P, problem.k
        outputs = np.swapaxes(sol.beta @ problem.X.T, 1, 2)[:, None]  # (K+1, 1, P, k)
        kernels = {f"H{layer}": sol.hidden_variance(layer) for layer in range(1, problem.L)}
        return Trajectory(loss=sol.loss[:, None], outputs=outputs.reshape(K + 1, 1, P, k), h_last=None,
                          depth=np.arange(1, problem.L) / problem.L,
                          diverged_at=np.array([sol.diverged_at]),
                          meta={"limit": self.name, "beta": sol.beta[:, None], "kernels": kernels,
                                "solution": sol, "dims": sol.dims})

    # --- the recursion ----------------------------------------------------------------------
    def solution(self, problem: DeepLinearProblem) -> DeepLinearSolution:
        if not isinstance(problem, DeepLinearProblem):
            raise ValueError(f"problem must be a DeepLinearProblem, got {type(problem).__name__}")
        p = problem
        L, K, d, k, g0 = p.L, p.K, p.d, p.k, p.gamma0
        X, Y = p.X, p.Y
        spaces = [_Space() for _ in range(L - 1)]  # spaces[i]: wide layer i + 1
        hidden = [_Gaussian(spaces[i - 1], spaces[i], self.tol) for i in range(1, L - 1)]  # A^{i+1}(0)
        if L == 1:
            state = [np.zeros((k, d))]
        else:
            xi = spaces[0].new(d)
            a1 = _pad(np.zeros((0, d)), spaces[0].n)
            a1[xi] = np.eye(d) / np.sqrt(d)
            om = spaces[-1].new(k)
            R = np.zeros((k, spaces[-1].n))
            R[:, om] = np.eye(k) / g0
            state = [a1] + [np.zeros((0, 0)) for _ in hidden] + [R]

        def dims(i: int) -> int:
            return spaces[i].n

        def evaluate(st):
            """Forward frames, beta, loss, E, backward frames and the velocity F at state ``st``."""
            if L == 1:
                beta = st[0]
                res = beta @ X.T - Y.T
                E = res @ X / p.P
                return [], beta, 0.5 * float((res**2).sum()) / p.P, [], [-E / d]
            frames = [_pad(st[0], dims(0))]
            for i, A0 in enumerate(hidden, start=1):
                m = A0.fwd(frames[-1])
                D = _pad(st[i], dims(i), dims(i - 1))
                frames.append(m + D @ _pad(frames[-1], dims(i - 1)))
            frames = [_pad(m, dims(i)) for i, m in enumerate(frames)]
            beta = _pad(st[-1], k, dims(L - 2)) @ frames[-1]
            res = beta @ X.T - Y.T
            E = res @ X / p.P
            qs = [None] * (L - 1)
            qs[L - 2] = g0 * _pad(st[-1], k, dims(L - 2)).T
            for i in range(L - 2, 0, -1):  # A^{i+1}: space i-1 -> space i; q^{i} (layer i) from q^{i+1}
                A0 = hidden[i - 1]
                q = A0.bwd(qs[i])
                D = _pad(st[i], dims(i), dims(i - 1))
                qs[i - 1] = _pad(q, dims(i - 1)) + D.T @ _pad(qs[i], dims(i))
            frames = [_pad(m, dims(i)) for i, m in enumerate(frames)]
            qs = [_pad(q, dims(i)) for i, q in enumerate(qs)]
            F = [-(g0 / d) * qs[0] @ E]
            for i in range(1, L - 1):
                F.append(-g0 * qs[i] @ E @ frames[i - 1].T)
            F.append(-E @ frames[L - 2].T)
            return frames, beta, 0.5 * float((res**2).sum()) / p.P, qs, F

        def axpy(st, F, h):
            out = []
            for a, f in zip(st, F, strict=True):
                r, c = max(a.shape[0], f.shape[0]), max(a.shape[1], f.shape[1])
                out.append(_pad(a, r, c) + h * _pad(f, r, c))
            return out

        beta_rec = np.full((K + 1, k, d), np.nan)
        loss = np.full(K + 1, np.nan)
        fw_rec, bw_rec = [], []
        diverged = -1
        h = p.eta / p.substeps
        for t in range(K + 1):
            frames, beta, lo, qs, F = evaluate(state)
            beta_rec[t], loss[t] = beta, lo
            fw_rec.append(frames)
            bw_rec.append(qs)
            if not np.isfinite(lo) or lo > 1e6 * max(loss[0], 1.0):
                diverged = t
                beta_rec[t:], loss[t:] = np.nan, np.nan
                break
            if t == K:
                break
            if p.mode == "gd":
                state = axpy(state, F, p.eta)
                continue
            for s in range(p.substeps):
                k1 = F if s == 0 else evaluate(state)[4]
                k2 = evaluate(axpy(state, k1, h / 2))[4]
                k3 = evaluate(axpy(state, k2, h / 2))[4]
                k4 = evaluate(axpy(state, k3, h))[4]
                for kk, w in ((k1, 1.0), (k2, 2.0), (k3, 2.0), (k4, 1.0)):
                    state = axpy(state, kk, h * w / 6)
        forward, backward = [], []
        for i in range(L - 1):
            n = dims(i)
            fw = np.full((K + 1, n, d), np.nan)
            bw = np.full((K + 1, n, k), np.nan)
            for t, (fr, qs) in enumerate(zip(fw_rec, bw_rec, strict=False)):
                if t == diverged:
                    break
                fw[t], bw[t] = _pad(fr[i], n), _pad(qs[i], n)
            forward.append(fw)
            backward.append(bw)
        return DeepLinearSolution(p, beta_rec, loss, forward, backward, diverged)

    def __repr__(self) -> str:
        return f"DeepLinearLimit(tol={self.tol:g})"
