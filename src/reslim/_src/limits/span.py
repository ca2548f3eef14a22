"""The span-reduced Mean ODE for any activation, by quasi-Monte Carlo over unit samples.

Derivation (docs/limits.md, "Any activation"). Let E = [W_e, W_u] (D x r, r = d_in + d_out) and
G = E^T E / D. Pick any factor Phi (r x r) with Phi Phi^T = G (here the symmetric square root,
continuous in G, so that a fixed-D problem and its large-D limit use matching coordinates) and
the basis F = E Phi^{+T} of span(E), F^T F / D = the projector P onto range(G). By induction on
the GD step k, every forward and backward vector stays in span(E),

    h_k(s, x_n) = F a_{k,n}(s),    b_k(s, x_n) = F c_{k,n}(s)         (a, c in range(G) of R^r),

and a unit (u, v) ~ N(0, D I_{2D}) after k updates is (u_0 + F alpha_k, v_0 + F beta_k). Only
its coordinates in the basis matter: u~ = F^T u / D = zeta_u + alpha_k, v~ = zeta_v + beta_k,
with zeta = (zeta_u, zeta_v) ~ N(0, P) x N(0, P) (standard normal in range(G)); the part of
u_0, v_0 orthogonal to span(E) is independent of everything a unit ever sees and has mean zero,
so it drops out of every expectation. With z = u~ . a = u^T h / D, w = v~ . c = v^T b / D and
g = eta / (alpha N):

    da_{k,n}/ds =  alpha E[ v~ sigma(z_{k,n}) ],                  a_{k,n}(0) = Phi^T (x_n; 0)
    dc_{k,n}/ds = -alpha E[ u~ sigma'(z_{k,n}) w_{k,n} ],   c_{k,n}(1) = Phi_out^T (y_{k,n} - Y_n) / c_loss
    y_{k,n} = Phi_out a_{k,n}(1)          (Phi_out = the last d_out rows of Phi)
    update at every depth s:  u~ <- u~ - g sum_n a_{k,n} sigma'(z_{k,n}) w_{k,n},
                              v~ <- v~ - g sum_n c_{k,n} sigma(z_{k,n}).

This is the Mean ODE of theory §2.1 exactly, in r dimensions instead of D: the units are
particles in R^{2r} (one law per depth s, all starting from the same law). Expanding
alpha_k, beta_k as sums over earlier steps gives the Gram-matrix form of theory §4 (the Stein
term E[zeta_v sigma(z)] and the cross terms E[sigma(z_i) sigma(z_k)] c_i). It is causal in k.
In the returned coefficients (h = E a) the solution is a = Phi^{+T} a~.

Numerics.
- Expectations: Q unit samples per replica from scrambled Sobol points in 2r dimensions mapped
  by the normal quantile; half of them with zeta_v negated (antithetic in v, which makes the
  step-0 drift exactly zero as it is in the limit). The same points serve every depth node and
  every draw of (W_e, W_u) (common random numbers). ``replicas`` independent scrambles give
  independent solutions; the result is their mean and the error estimate their standard error.
- Depth: classical RK4 on s_i = i/S; particles are kept on the fine grid j/(2S) (RK4 needs
  the half steps), half-step values of a, c by cubic Hermite interpolation of the ends.
- Cost per GD step: O(S Q r N) (about 12 drift evaluations per depth step); memory
  (2S+1) Q (2 r + 3 N) numbers per replica and draw (the particles, and sigma, sigma' at every
  node); draws are processed in chunks that fit ``memory``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..models.activations import get_activation
from .coefficients import Coefficients


def gram_factor(G: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For Gram matrices ``G`` (B, r, r): ``Phi`` (symmetric square root, Phi Phi^T = G),
    ``lift`` (the pseudo-inverse square root, a = lift a~) and ``P`` (projector onto range(G)),
    each (B, r, r). Eigenvalues below ``tol`` times the largest count as zero (D < r)."""
    lam, V = np.linalg.eigh(G)
    keep = lam > tol * np.maximum(lam.max(axis=-1, keepdims=True), np.finfo(float).tiny)
    lam_k = np.where(keep, lam, 1.0)
    Vt = np.swapaxes(V, -1, -2)
    Phi = (V * np.where(keep, np.sqrt(lam_k), 0.0)[:, None, :]) @ Vt
    lift = (V * np.where(keep, 1.0 / np.sqrt(lam_k), 0.0)[:, None, :]) @ Vt
    P = (V * keep[:, None, :]) @ Vt
    return Phi, lift, P


def check_samples(samples: Any, replicas: Any) -> tuple[int, int]:
    """Validated ``(samples, replicas)``: ``samples // replicas`` must be a power of two >= 4."""
    for name, v in (("samples", samples), ("replicas", replicas)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    per = int(samples) // int(replicas)
    if per * int(replicas) != int(samples) or per < 4 or per & (per - 1):
        raise ValueError(f"samples must be replicas ({replicas}) times a power of two >= 4, got {samples!r}")
    return int(samples), int(replicas)


def unit_samples(r: int, samples: int, replicas: int, seed: int, antithetic: bool = True) -> np.ndarray:
    """Standard normal points ``zeta`` (replicas, samples // replicas, 2 r), columns (zeta_u, zeta_v):
    one independently scrambled Sobol sequence per replica, mapped by the normal quantile; with
    ``antithetic`` the second half repeats the first with zeta_v negated."""
    from scipy.stats import norm, qmc

    samples, replicas = check_samples(samples, replicas)
    per = samples // replicas
    n = per // 2 if antithetic else per
    out = np.empty((replicas, per, 2 * r))
    for i, child in enumerate(np.random.SeedSequence(int(seed) & 0xFFFFFFFF).spawn(replicas)):
        u = qmc.Sobol(2 * r, scramble=True, seed=np.random.default_rng(child)).random_base2(int(math.log2(n)))
        z = norm.ppf(np.clip(u, 1e-16, 1 - 1e-16))
        out[i, :n] = z
        if antithetic:
            out[i, n:, :r] = z[:, :r]
            out[i, n:, r:] = -z[:, r:]
    return out


class _Sweeps:
    """Particles of one chunk of draws and the three phases of a GD step (forward, backward,
    update). Shapes: b draws, R replicas, nf = 2S+1 fine depth nodes, Q samples, r coordinates,
    N training samples: ``U[j]``, ``V[j]`` (b, R, Q, r) the particles at node j (one contiguous
    tensor per node, so that a node's work stays in cache); ``a``, ``c`` (b, R, nf, r, N)."""

    def __init__(self, zeta: torch.Tensor, P: torch.Tensor, S: int, alpha: float, act,
                 stein: bool = True) -> None:
        r = P.shape[-1]
        zu = zeta[None, :, :, :r] @ P[:, None]  # (b, R, Q, r): N(0, P), range(G) only
        zv = zeta[None, :, :, r:] @ P[:, None]
        nf = 2 * S + 1
        self.U = [zu.clone() for _ in range(nf)]
        self.V = [zv.clone() for _ in range(nf)]
        self.S, self.alpha, self.act = S, alpha, act
        self.Q = zeta.shape[1]
        self.Z: list = [None] * nf  # z and sigma(z) at each node's final a (from the forward sweep)
        self.F: list = [None] * nf
        self.GW: list = [None] * nf  # sigma'(z) w at each node's final c (from the backward sweep)
        # stein=False (a control that must fail): the drifts use only the units' displacements
        # alpha_k, beta_k, dropping the zeta parts E[zeta_v sigma(z)], E[zeta_u sigma'(z) w]
        self.zu: torch.Tensor | None = None if stein else zu
        self.zv: torch.Tensor | None = None if stein else zv

    def _out_u(self, j: int) -> torch.Tensor:
        return self.U[j] if self.zu is None else self.U[j] - self.zu

    def _out_v(self, j: int) -> torch.Tensor:
        return self.V[j] if self.zv is None else self.V[j] - self.zv

    def _f(self, j: int, a: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """da/ds at node j: alpha E[v~ sigma(u~ . a)], (b, R, r, N). ``keep``: ``a`` is the
        node's final value; z and sigma(z) are kept for the backward sweep and the update."""
        z = self.U[j] @ a
        f = self.act.fn(z)
        if keep:
            self.Z[j], self.F[j] = z, f
        return (self._out_v(j).transpose(-1, -2) @ f).mul_(self.alpha / self.Q)

    def _g(self, j: int, dsig: torch.Tensor, c: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """dc/ds at node j: -alpha E[u~ sigma'(z) (v~ . c)], (b, R, r, N). ``keep``: ``c`` is
        the node's final value; sigma'(z) w is kept for the update."""
        gw = (self.V[j] @ c).mul_(dsig)
        if keep:
            self.GW[j] = gw
        return (self._out_u(j).transpose(-1, -2) @ gw).mul_(-self.alpha / self.Q)

    def forward(self, a0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RK4 from s = 0: a and da/ds on the fine grid, each (b, R, nf, r, N)."""
        S, h = self.S, 1.0 / self.S
        a_f = a0.new_empty((*a0.shape[:2], 2 * S + 1, *a0.shape[2:]))
        da_f = torch.empty_like(a_f)
        a, f0 = a0, self._f(0, a0, keep=True)
        for i in range(S):
            j0, jm, j1 = 2 * i, 2 * i + 1, 2 * i + 2
            k2 = self._f(jm, torch.add(a, f0, alpha=h / 2))
            k3 = self._f(jm, torch.add(a, k2, alpha=h / 2))
            k4 = self._f(j1, torch.add(a, k3, alpha=h))
            a1 = a + (h / 6) * (f0 + 2 * k2 + 2 * k3 + k4)
            f1 = self._f(j1, a1, keep=True)
            a_f[:, :, j0], da_f[:, :, j0] = a, f0
            a_f[:, :, jm] = 0.5 * (a + a1) + (h / 8) * (f0 - f1)
            da_f[:, :, jm] = self._f(jm, a_f[:, :, jm], keep=True)
            a, f0 = a1, f1
        a_f[:, :, 2 * S], da_f[:, :, 2 * S] = a, f0
        return a_f, da_f

    def backward_and_update(self, a_f: torch.Tensor, c1: torch.Tensor, g: float | None):
        """RK4 from s = 1 down to 0 for c (linear in c), then (``g`` not None) the GD update of
        the particles at each node once the sweep has passed it. sigma(z) at a node is the
        forward sweep's, sigma'(z) is computed once per node. Returns c, dc/ds (fine grid)."""
        S, h = self.S, -1.0 / self.S
        c_f = torch.empty_like(a_f)
        dc_f = torch.empty_like(a_f)
        dsig: dict[int, torch.Tensor] = {}

        def ds(j: int) -> torch.Tensor:
            if j not in dsig:
                dsig[j] = self.act.grad(self.Z[j], self.F[j])
            return dsig[j]

        def update(j: int) -> None:  # u~ -= g sum_n a_n sigma'(z_n) w_n,  v~ -= g sum_n c_n sigma(z_n)
            if g is not None:
                self.U[j].sub_(self.GW[j] @ a_f[:, :, j].transpose(-1, -2), alpha=g)
                self.V[j].sub_(self.F[j] @ c_f[:, :, j].transpose(-1, -2), alpha=g)
            self.Z[j] = self.F[j] = self.GW[j] = None
            dsig.pop(j, None)

        n = 2 * S
        c, f0 = c1, self._g(n, ds(n), c1, keep=True)
        for i in range(S):
            j0, jm, j1 = n - 2 * i, n - 2 * i - 1, n - 2 * i - 2
            k2 = self._g(jm, ds(jm), torch.add(c, f0, alpha=h / 2))
            k3 = self._g(jm, ds(jm), torch.add(c, k2, alpha=h / 2))
            k4 = self._g(j1, ds(j1), torch.add(c, k3, alpha=h))
            c_new = c + (h / 6) * (f0 + 2 * k2 + 2 * k3 + k4)
            f1 = self._g(j1, ds(j1), c_new, keep=True)
            c_f[:, :, j0], dc_f[:, :, j0] = c, f0
            c_f[:, :, jm] = 0.5 * (c + c_new) + (h / 8) * (f0 - f1)
            dc_f[:, :, jm] = self._g(jm, ds(jm), c_f[:, :, jm], keep=True)
            c, f0 = c_new, f1
            update(j0)
            update(jm)
        c_f[:, :, 0], dc_f[:, :, 0] = c, f0
        update(0)
        return c_f, dc_f


def solve_span(X: np.ndarray, Y: np.ndarray, G: np.ndarray, *, K: int, eta: float, alpha: float,
               loss_scale: float, S: int, activation: str, samples: int = 16384, replicas: int = 4,
               seed: int = 0, antithetic: bool = True, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float64, memory: float = 5e8,
               stein: bool = True) -> Coefficients:
    """Solve the span-reduced Mean ODE (module docstring) for ``G`` (B, r, r), r = d_in + d_out.

    ``X`` (N, d_in), ``Y`` (N, d_out); ``loss_scale`` = c_loss (1 or d_out); ``samples`` unit
    samples in all, split into ``replicas`` independent scrambles; ``memory``: bytes of particle
    and node storage per chunk of draws. Returns :class:`Coefficients` in the coordinates of E (h = E a),
    the mean over replicas, with ``info`` holding the standard errors (over replicas) of the
    outputs and of the embedding: ``output_stderr`` (K+1, B) RMS over samples and outputs,
    ``h_last_stderr`` (K+1, B) RMS over coordinates and samples of h(1), ``hidden_stderr``
    (K+1, B) the same maximised over depth nodes. ``stein=False`` drops the zeta parts of the
    drifts (a wrong solver, for controls only).
    """
    if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S must be a positive integer, got {S!r}")
    act = get_activation(activation)
    samples, replicas = check_samples(samples, replicas)
    N, d_in = X.shape
    d_out = Y.shape[1]
    B, r, _ = G.shape
    if r != d_in + d_out:
        raise ValueError(f"G must be (B, {d_in + d_out}, {d_in + d_out}), got {G.shape}")
    S = int(S)
    nf = 2 * S + 1
    Phi, lift, P = gram_factor(G)
    zeta_np = unit_samples(r, samples, replicas, seed, antithetic)
    R, Qr = zeta_np.shape[:2]
    tt: dict[str, Any] = dict(device=device, dtype=dtype)
    zeta = torch.as_tensor(zeta_np, **tt)
    Xt, Yt = torch.as_tensor(X.T.copy(), **tt), torch.as_tensor(Y.T.copy(), **tt)  # (d_in, N), (d_out, N)
    g = eta / (alpha * N)

    shape = (K + 1, B, R, nf, r, N)
    a_all, c_all = np.full(shape, np.nan), np.full(shape, np.nan)
    da_all, dc_all = np.full(shape, np.nan), np.full(shape, np.nan)
    y_all = np.full((K + 1, B, R, d_out, N), np.nan)
    diverged_at = np.full(B, -1, dtype=np.int64)
    per_draw = (2.0 * r + 3.0 * N) * R * nf * Qr * torch.finfo(dtype).bits / 8  # particles, z terms
    chunk = max(1, int(memory // per_draw))
    for b0 in range(0, B, chunk):
        sl = slice(b0, min(B, b0 + chunk))
        Phi_t = torch.as_tensor(Phi[sl], **tt)
        sw = _Sweeps(zeta, torch.as_tensor(P[sl], **tt), S, alpha, act, stein)
        a0 = (Phi_t[:, :d_in].transpose(-1, -2) @ Xt)[:, None].expand(-1, R, -1, -1)  # (b, R, r, N)
        Phi_out = Phi_t[:, None, d_in:]  # (b, 1, d_out, r)
        alive = np.ones(sl.stop - sl.start, dtype=bool)
        for k in range(K + 1):
            a_f, da_f = sw.forward(a0)
            y = Phi_out @ a_f[:, :, -1]  # (b, R, d_out, N)
            c1 = Phi_out.transpose(-1, -2) @ ((y - Yt) / loss_scale)
            c_f, dc_f = sw.backward_and_update(a_f, c1, None if k == K else g)
            for arr, v in ((a_all, a_f), (c_all, c_f), (da_all, da_f), (dc_all, dc_f), (y_all, y)):
                arr[k, sl] = v.cpu().numpy()
            ok = np.isfinite(y_all[k, sl]).all(axis=(1, 2, 3))
            bad = alive & ~ok
            diverged_at[sl][bad] = k
            alive &= ok
            if not alive.any():
                break
    # mean over replicas, lifted to the coordinates of E (h = E a)
    liftb = lift[None, :, None]  # (1, B, 1, r, r)
    a, c = liftb @ a_all.mean(axis=2), liftb @ c_all.mean(axis=2)
    da, dc = liftb @ da_all.mean(axis=2), liftb @ dc_all.mean(axis=2)
    outputs = np.swapaxes(y_all.mean(axis=2), -1, -2)  # (K+1, B, N, d_out)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = 0.5 * ((outputs - Y[None, None]) ** 2).sum(axis=(2, 3)) / (N * loss_scale)
        if R > 1:
            se_y = np.sqrt(y_all.var(axis=2, ddof=1).mean(axis=(2, 3)) / R)
            var_a = a_all.var(axis=2, ddof=1).sum(axis=-2).mean(axis=-1) / R  # (K+1, B, nf)
            se_h1, se_h = np.sqrt(var_a[..., -1]), np.sqrt(var_a.max(axis=-1))
        else:
            se_y = se_h1 = se_h = np.full((K + 1, B), np.nan)
    for b in np.flatnonzero(diverged_at >= 0):
        k0 = diverged_at[b]
        for arr in (a, c, da, dc, outputs, loss, se_y, se_h1, se_h):
            arr[k0:, b] = np.nan
    info = {"method": "sampled", "samples": samples, "replicas": R, "seed": int(seed),
            "antithetic": bool(antithetic), "stein": bool(stein), "output_stderr": se_y,
            "h_last_stderr": se_h1,
            "hidden_stderr": se_h}
    return Coefficients(a=a, c=c, da=da, dc=dc, Sigma=None, outputs=outputs, loss=loss,
                        diverged_at=diverged_at, G=G, d_in=d_in, S=S, info=info)
