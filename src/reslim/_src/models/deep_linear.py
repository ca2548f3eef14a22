"""Finite deep linear networks (docs/deep-linear.md; docs/theory.md §6; Chizat, Colombo, Fernández-Real,
Figalli, arXiv 2211.16980), a batch of seeds as one computation, trained by full-batch GD.

Depth ``L`` = number of weight matrices, width ``N``, input ``d``, output ``k``; widths
``n_0 = d``, ``n_1 .. n_{L-1} = N``. All entries are i.i.d. N(0, 1) at initialisation and the
effective matrices are ``A^l = c_l W^l`` with (the gamma_0 family of docs/theory.md §6)::

    c_1 = 1/sqrt(d),   c_l = 1/sqrt(N) (1 < l < L),   c_L = 1/(gamma_0 N)     (L = 1: c_1 = 1/(gamma_0 d))
    beta = A^L ... A^1  (k x d),  f(x) = beta x,  R = 1/(2P) sum_mu |beta x_mu - y_mu|^2
    GD on every W^l with learning rate eta gamma_0^2 n_{L-1}.

``gamma_0 -> 0`` is the lazy (NTK) end, ``gamma_0 = Theta(1)`` feature learning. The gradient is
manual (exact for linear networks): with forward frames ``M^l = A^l .. A^1`` (N x d, M^0 = I),
backward frames ``Q^l = gamma_0 n_{L-1} (A^L .. A^{l+1})^T`` (N x k, Q^L = gamma_0 n_{L-1} I) and
``E = dR/dbeta = (beta X^T - Y^T) X / P``, a step is ``W^l -= eta gamma_0 c_l Q^l E (M^{l-1})^T``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..training.trajectory import Trajectory

DTYPES = {"float64": torch.float64, "float32": torch.float32}
RECORDS = ("loss", "outputs", "beta", "hidden", "weights")


def _check_data(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have shape (P, d), got {X.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y must have shape ({X.shape[0]}, k), got {Y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("X: X and Y must be finite")
    return X, Y


class DeepLinearNetwork:
    """``B = len(seeds)`` deep linear networks of depth ``L`` and width ``N`` (stacked weights).

    ``weights[l]`` is (B, n_{l+1}, n_l) for l = 0..L-1 (W^1 .. W^L). ``device`` any torch device
    (``"cuda"`` works the same), ``dtype`` float64 by default.
    """

    def __init__(self, L: int, N: int, d: int, k: int, gamma0: float = 1.0, seeds: Sequence[int] = (0,),
                 dtype: str = "float64", device: str = "cpu") -> None:
        for name, v in (("L", L), ("N", N), ("d", d), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(gamma0, (int, float)) and np.isfinite(gamma0) and gamma0 > 0):
            raise ValueError(f"gamma0 must be a positive finite number, got {gamma0!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must name at least one network")
        self.L, self.N, self.d, self.k, self.gamma0 = int(L), int(N), int(d), int(k), float(gamma0)
        self.dtype, self.device = DTYPES[dtype], torch.device(device)
        self.widths = [self.d] + [self.N] * (self.L - 1) + [self.k]
        n = self.widths[self.L - 1]
        self.mults = [1.0 / np.sqrt(self.widths[i]) for i in range(self.L)]
        self.mults[-1] = 1.0 / (self.gamma0 * n)
        self.lr_factor = self.gamma0**2 * n
        self.weights = self._init()

    def _init(self) -> list[torch.Tensor]:
        out = [torch.empty(len(self.seeds), self.widths[i + 1], self.widths[i], dtype=self.dtype)
               for i in range(self.L)]
        for b, s in enumerate(self.seeds):
            g = torch.Generator().manual_seed(s)
            for W in out:
                W[b] = torch.randn(W.shape[1:], generator=g, dtype=torch.float64).to(self.dtype)
        return [W.to(self.device) for W in out]

    @property
    def B(self) -> int:
        return len(self.seeds)

    def frames(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Forward frames ``M^1 .. M^{L-1}`` (each (B, N, d)) and ``beta`` (B, k, d)."""
        M = self.mults[0] * self.weights[0]
        frames = []
        for i in range(1, self.L):
            frames.append(M)
            M = self.mults[i] * torch.bmm(self.weights[i], M)
        return frames, M

    def beta(self) -> torch.Tensor:
        return self.frames()[1]

    def step(self, X: torch.Tensor, Y: torch.Tensor, eta: float) -> torch.Tensor:
        """One full-batch GD step; returns the loss before it (B,)."""
        frames, beta = self.frames()
        P = X.shape[0]
        R = torch.matmul(beta, X.T) - Y.T  # (B, k, P)
        loss = 0.5 * (R**2).sum(dim=(1, 2)) / P
        E = torch.matmul(R, X) / P  # (B, k, d)
        n = self.widths[self.L - 1]
        Q = self.gamma0 * n * torch.eye(self.k, dtype=self.dtype, device=self.device).expand(self.B, -1, -1)
        news = []
        for i in range(self.L - 1, -1, -1):  # layer l = i + 1
            QE = torch.bmm(Q, E)  # (B, n_l, d)
            G = QE if i == 0 else torch.bmm(QE, frames[i - 1].transpose(1, 2))
            news.append((i, eta * self.gamma0 * self.mults[i] * G))
            if i > 0:
                Q = self.mults[i] * torch.bmm(self.weights[i].transpose(1, 2), Q)
        for i, G in news:
            self.weights[i] -= G
        return loss

    def train(self, X, Y, steps: int, eta: float, record: Sequence[str] = ("loss", "outputs", "beta"),
              weight_steps: Sequence[int] | None = None, divergence_factor: float = 1e6) -> Trajectory:
        """``steps`` GD steps of size ``eta`` on (X (P, d), Y (P, k)); the record of steps 0..K.

        ``record``: ``loss``, ``outputs`` (training predictions), ``beta`` (meta, (K+1, B, k, d)),
        ``hidden`` (h^1 .. h^{L-1}: (K+1, B, L-1, P, N) with depth l/L), ``weights`` (meta
        ``weights``: {step: [W^1 .. W^L] as numpy (B, ., .)} at ``weight_steps``, default all).
        """
        X, Y = _check_data(X, Y)
        if X.shape[1] != self.d or Y.shape[1] != self.k:
            raise ValueError(f"X: the network takes d = {self.d}, k = {self.k}, "
                             f"got {X.shape[1]}, {Y.shape[1]}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if not (np.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a positive finite number, got {eta!r}")
        bad = [r for r in record if r not in RECORDS]
        if bad:
            raise ValueError(f"record: unknown {bad}; choose from {', '.join(RECORDS)}")
        Xt = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        Yt = torch.as_tensor(Y, dtype=self.dtype, device=self.device)
        K, B, P = int(steps), self.B, X.shape[0]
        loss = np.full((K + 1, B), np.nan)
        outputs = np.full((K + 1, B, P, self.k), np.nan) if "outputs" in record else None
        betas = np.full((K + 1, B, self.k, self.d), np.nan)
        hidden = np.full((K + 1, B, self.L - 1, P, self.N), np.nan) if "hidden" in record else None
        wsteps = set(range(K + 1)) if weight_steps is None else {int(s) for s in weight_steps}
        weights: dict[int, list[np.ndarray]] = {}
        diverged_at = np.full(B, -1)
        lr = eta * self.lr_factor
        for t in range(K + 1):
            frames, beta = self.frames()
            b = beta.detach().cpu().double().numpy()
            R = b @ X.T - Y.T[None]
            loss[t] = 0.5 * (R**2).sum(axis=(1, 2)) / P
            betas[t] = b
            if outputs is not None:
                outputs[t] = np.swapaxes(b @ X.T, 1, 2)
            if hidden is not None:
                for i, M in enumerate(frames):
                    hidden[t, :, i] = torch.matmul(M, Xt.T).transpose(1, 2).cpu().double().numpy()
            if "weights" in record and t in wsteps:
                weights[t] = [W.cpu().double().numpy().copy() for W in self.weights]
            bad_now = ~np.isfinite(loss[t]) | (loss[t] > divergence_factor * np.maximum(loss[0], 1.0))
            diverged_at[(diverged_at < 0) & bad_now] = t
            if t < K:
                self.step(Xt, Yt, eta)
        for bb in np.nonzero(diverged_at >= 0)[0]:
            t0 = diverged_at[bb]
            for a in (loss, outputs, betas, hidden):
                if a is not None:
                    a[t0:, bb] = np.nan
        meta = {"model": "deep-linear", "L": self.L, "N": self.N, "gamma0": self.gamma0, "eta": eta,
                "lr": lr, "beta": betas}
        if "weights" in record:
            meta["weights"] = weights
        return Trajectory(loss=loss, outputs=outputs if outputs is not None else np.zeros((K + 1, B, 0, 0)),
                          h_last=None if hidden is None or self.L == 1 else hidden[:, :, -1],
                          depth=np.arange(1, self.L) / self.L, diverged_at=diverged_at, hidden=hidden,
                          meta=meta)

    def __repr__(self) -> str:
        return (f"DeepLinearNetwork(L={self.L}, N={self.N}, d={self.d}, k={self.k}, gamma0={self.gamma0:g}, "
                f"B={self.B})")
