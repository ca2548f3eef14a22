"""Exact second-moment dynamics of linear MLU ResNets, reduced to the span of [W_e, W_u].

Notation (docs/theory.md §2.1, sigma = identity). Units (u, v) in R^{2D} at depth s have second
moment C_k(s) = E[(u; v)(u; v)^T], C_0 = D I, and one GD step maps C_k -> T_k C_k T_k^T with

    T_k(s) = I - c [[0, H B^T], [B H^T, 0]],   c = eta / (alpha N D),
    dh/ds = (alpha/D) C^{vu} h   (h(0) = W_e x),   db/ds = -(alpha/D) C^{uv} b   (b(1) = W_u r / c_loss).

Reduction. Let Q = [W_e, W_u] (D x p, p = d_in + d_out) and G = Q^T Q / D (p x p). By
induction on k every h_k(s), b_k(s) lies in the column span of Q, and C_k(s) - D I lies in the
span of blockdiag(Q, Q):

    h_k(s) = Q a_k(s),   b_k(s) = Q c_k(s),   C_k(s) = D I + blockdiag(Q, Q) S_k(s) blockdiag(Q, Q)^T,

with coefficients a_k, c_k (p x N) and S_k (2p x 2p, S_0 = 0). Then, with J_k = [[0, a c^T],
[c a^T, 0]], G2 = blockdiag(G, G) and g = eta / (alpha N):

    da/ds =  alpha S^{vu} G a,   a(0) = [x; 0]
    dc/ds = -alpha S^{uv} G c,   c(1) = [0; (y - Y) / c_loss]
    y     = W_u^T h(1) / D = G[d_in:, :] a(1)
    S_{k+1} = R S_k R^T + g^2 J G2 J - 2 g J,   R = I - g J G2.

D enters only through G, so rank(C_k - D I) <= 2p and the cost per depth point is O(p^3),
independent of D. As D -> oo with i.i.d. N(0, s_e^2), N(0, s_u^2) entries, G -> blockdiag(s_e^2 I,
s_u^2 I) at rate D^{-1/2}: the same equations with that G are the large-D limit, where the
coordinate h_{k,d}(s) = a_k(s)^T (W_e[d], W_u[d]) is the single-site process H_d(s).

Depth integrator: classical RK4 on the uniform grid s_i = i/S (step 1/S). RK4 needs the
coefficients at the half-steps, so S_k is kept on the fine grid j/(2S), j = 0..2S; the
half-step values of a_k, c_k are the cubic Hermite interpolants of the two end values and
slopes (local error O(S^-4)). The scheme is fourth order in 1/S, step by step in k.
"""

from __future__ import annotations

import numpy as np

from .coefficients import Coefficients

LinearCoefficients = Coefficients  # the exact solver's record (same class as the sampled one's)


def _rk4_sweep(F: np.ndarray, y0: np.ndarray, S: int, backward: bool):
    """Integrate dy/ds = F(s) y over the fine grid (F: (B, 2S+1, p, p), y0: (B, p, N)).

    RK4 with step 1/S between even fine points; odd (half-step) points by cubic Hermite. For a
    linear ODE one RK4 step is the matrix y -> P y with (h the signed step, F0, Fm, F1 the
    coefficient at start, half-step, end)

        A2 = Fm (I + h/2 F0),  A3 = Fm (I + h/2 A2),  A4 = F1 (I + h A3),
        P  = I + h/6 (F0 + 2 A2 + 2 A3 + A4),   half-step value  ((I + P)/2 + h/8 (F0 - F1 P)) y,

    built for all steps at once; only the products P_{S-1} ... P_0 y0 run sequentially.
    Returns y and dy/ds on the fine grid, (B, 2S+1, p, N) each.
    """
    B, nf, p, _ = F.shape
    if backward:
        F = F[:, ::-1]
    h = (-1.0 if backward else 1.0) / S
    F0, Fm, F1 = F[:, 0:-1:2], F[:, 1::2], F[:, 2::2]  # (B, S, p, p)
    eye = np.eye(p)
    A2 = Fm + (h / 2) * (Fm @ F0)
    A3 = Fm + (h / 2) * (Fm @ A2)
    A4 = F1 + h * (F1 @ A3)
    P = eye + (h / 6) * (F0 + 2 * A2 + 2 * A3 + A4)
    Mid = 0.5 * (eye + P) + (h / 8) * (F0 - F1 @ P)
    y = np.empty((B, nf, p, y0.shape[-1]))
    y[:, 0] = y0
    for i in range(S):
        y[:, 2 * i + 2] = P[:, i] @ y[:, 2 * i]
    y[:, 1::2] = Mid @ y[:, 0:-1:2]
    dy = F @ y
    if backward:
        y, dy = y[:, ::-1], dy[:, ::-1]
    return y, dy


def solve_linear(X: np.ndarray, Y: np.ndarray, G: np.ndarray, *, K: int, eta: float, alpha: float,
                 loss_scale: float, S: int) -> Coefficients:
    """Solve the reduced dynamics (module docstring) for ``G`` (B, p, p), p = d_in + d_out.

    ``X`` (N, d_in), ``Y`` (N, d_out); ``loss_scale`` = c_loss (1 or d_out). Networks whose
    output becomes non-finite are marked in ``diverged_at`` and their later records are NaN.
    """
    if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"S must be a positive integer, got {S!r}")
    N, d_in = X.shape
    d_out = Y.shape[1]
    B, p, _ = G.shape
    if p != d_in + d_out:
        raise ValueError(f"G must be (B, {d_in + d_out}, {d_in + d_out}), got {G.shape}")
    nf = 2 * S + 1
    g = eta / (alpha * N)
    G2 = np.zeros((B, 2 * p, 2 * p))
    G2[:, :p, :p] = G
    G2[:, p:, p:] = G
    out_map = G[:, d_in:, :]  # (B, d_out, p): y = W_u^T Q a(1) / D
    a = np.full((K + 1, B, nf, p, N), np.nan)
    c = np.full_like(a, np.nan)
    da, dc = np.full_like(a, np.nan), np.full_like(a, np.nan)
    Sig_hist = np.full((K + 1, B, nf, 2 * p, 2 * p), np.nan)
    outputs = np.full((K + 1, B, N, d_out), np.nan)
    loss = np.full((K + 1, B), np.nan)
    diverged_at = np.full(B, -1, dtype=np.int64)
    a0 = np.zeros((B, p, N))
    a0[:, :d_in] = X.T
    Sig = np.zeros((B, nf, 2 * p, 2 * p))
    eye = np.eye(2 * p)
    Gb = G[:, None]
    alive = np.ones(B, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(K + 1):
            Sig_hist[k] = Sig
            Fa = alpha * (Sig[:, :, p:, :p] @ Gb)
            a[k], da[k] = _rk4_sweep(Fa, a0, S, backward=False)
            y = out_map @ a[k][:, -1]  # (B, d_out, N)
            r = y - Y.T
            outputs[k] = np.swapaxes(y, 1, 2)
            loss[k] = 0.5 * (r**2).sum(axis=(1, 2)) / (N * loss_scale)
            bad = alive & ~np.isfinite(loss[k])
            diverged_at[bad] = k
            alive &= ~bad
            c1 = np.zeros((B, p, N))
            c1[:, d_in:] = r / loss_scale
            Fc = -alpha * (Sig[:, :, :p, p:] @ Gb)
            c[k], dc[k] = _rk4_sweep(Fc, c1, S, backward=True)
            if k == K or not alive.any():
                break
            J = np.zeros((B, nf, 2 * p, 2 * p))
            J[:, :, :p, p:] = a[k] @ np.swapaxes(c[k], -1, -2)
            J[:, :, p:, :p] = np.swapaxes(J[:, :, :p, p:], -1, -2)
            JG = J @ G2[:, None]
            R = eye - g * JG
            Sig = R @ Sig @ np.swapaxes(R, -1, -2) + (g * g) * (JG @ J) - (2 * g) * J
    for b in np.flatnonzero(diverged_at >= 0):
        k0 = diverged_at[b]
        for arr in (a, c, da, dc, Sig_hist, outputs, loss):
            arr[k0:, b] = np.nan
    return Coefficients(a=a, c=c, da=da, dc=dc, Sigma=Sig_hist, outputs=outputs, loss=loss,
                              diverged_at=diverged_at, G=G, d_in=d_in, S=int(S))
