"""Dense reference for the linear Mean ODE: C_k(s) stored as a full (2D x 2D) matrix at every
fine depth point. Only for checks and benchmarks (memory (2S+1) (2D)^2, cost O(S D^2 N) per
step); same integrator as :mod:`.linear` (RK4 on i/S, Hermite half-steps)."""

from __future__ import annotations

import numpy as np

from .linear import _rk4_sweep


def dense_mean_ode(X: np.ndarray, Y: np.ndarray, W_e: np.ndarray, W_u: np.ndarray, *, K: int, eta: float,
                   alpha: float = 1.0, loss_scale: float = 1.0, S: int = 16):
    """One draw: ``W_e`` (D, d_in), ``W_u`` (D, d_out). Returns ``(outputs (K+1, N, d_out),
    h (K+1, 2S+1, D, N), b (K+1, 2S+1, D, N))`` on the fine grid j / 2S.

    C_0 = D I, C_{k+1} = T_k C_k T_k^T with T_k = I - c [[0, H B^T], [B H^T, 0]],
    c = eta / (alpha N D), applied as the rank-2N update T = I - P F^T, P = [H~, B~],
    F = c [B~, H~] (H~ = (H; 0), B~ = (0; B)).
    """
    N = X.shape[0]
    D = W_e.shape[0]
    nf = 2 * S + 1
    C = np.broadcast_to(D * np.eye(2 * D), (nf, 2 * D, 2 * D)).copy()
    cc = eta / (alpha * N * D)
    outs, hs, bs = [], [], []
    h0 = (W_e @ X.T)[None]
    for k in range(K + 1):
        h, _ = _rk4_sweep((alpha / D) * C[None, :, D:, :D], h0, S, backward=False)
        h = h[0]
        y = W_u.T @ h[-1] / D
        outs.append(y.T)
        b1 = (W_u @ (y - Y.T) / loss_scale)[None]
        b, _ = _rk4_sweep((-alpha / D) * C[None, :, :D, D:], b1, S, backward=True)
        b = b[0]
        hs.append(h)
        bs.append(b)
        if k == K:
            break
        P = np.zeros((nf, 2 * D, 2 * N))
        P[:, :D, :N] = h
        P[:, D:, N:] = b
        F = np.zeros_like(P)
        F[:, :D, N:] = cc * h
        F[:, D:, :N] = cc * b
        TC = C - P @ (np.swapaxes(F, 1, 2) @ C)
        C = TC - (TC @ F) @ np.swapaxes(P, 1, 2)
    return np.stack(outs), np.stack(hs), np.stack(bs)
