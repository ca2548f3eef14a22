"""The trajectory record shared by finite networks and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECORDABLE = ("loss", "outputs", "h_last", "hidden", "pre")


@dataclass(repr=False)
class Trajectory:
    """What a training run (or a limit) produced, for steps ``k = 0..K``.

    Step ``k`` is the model after ``k`` updates (``k = 0`` is the initialisation). ``B`` is
    the number of networks (seeds) trained together; ``S + 1`` the number of depth points.

    - ``loss``: (K+1, B) training risk
    - ``outputs``: (K+1, B, N, d_out)
    - ``h_last``: (K+1, B, N, D), the final embedding h_L (h(1) for a limit)
    - ``hidden``: (K+1, B, S+1, N, D) or None, h at every depth point ``depth``
    - ``pre``: (K+1, B, L, N, M) or None, pre-activations (one-layer blocks: h_l)
    - ``backward``: (K+1, B, S+1, N, D) or None, ``b = D dR/dh`` (limits)
    - ``depth``: (S+1,) depth times in [0, 1] (``l / L`` for a finite network)
    - ``diverged_at``: (B,) first step whose loss was non-finite or blew up (see
      :func:`reslim.train`), -1 if none; records of a
      diverged network from that step on are NaN
    """

    loss: np.ndarray
    outputs: np.ndarray | None  # None when not recorded
    h_last: np.ndarray | None
    depth: np.ndarray
    diverged_at: np.ndarray
    hidden: np.ndarray | None = None
    pre: np.ndarray | None = None
    backward: np.ndarray | None = None
    test_loss: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.loss.shape[0] - 1

    @property
    def batch_size(self) -> int:
        return self.loss.shape[1]

    @property
    def diverged(self) -> np.ndarray:
        return self.diverged_at >= 0

    def __repr__(self) -> str:
        """A summary, never the arrays: steps, networks, recorded fields with their shapes, the
        final loss range over the networks that did not diverge, the diverged count."""
        recorded = ", ".join(f"{n}{tuple(a.shape)}" for n, a in self.arrays().items()
                             if n not in ("depth", "diverged_at"))
        final = np.asarray(self.loss[-1], dtype=float)[~self.diverged] if self.loss.size else np.zeros(0)
        final = final[np.isfinite(final)]
        if len(final) == 0:
            loss = "none finite"
        elif len(final) == 1 or final.min() == final.max():
            loss = f"{final[0]:.4g}"
        else:
            loss = f"{final.min():.4g}..{final.max():.4g}"
        meta = [f"{k}={self.meta[k]!r}" for k in ("parameterization", "optimizer") if k in self.meta]
        if self.meta.get("shape") is not None:
            L, M, D = self.meta["shape"]
            meta.insert(0, f"shape=(L={L}, M={M}, D={D})")
        return (f"Trajectory(steps={self.steps}, networks={self.batch_size}, final_loss={loss}, "
                f"diverged={int(self.diverged.sum())}/{self.batch_size}"
                + "".join(", " + m for m in meta) + f", recorded=[{recorded}])")

    def require(self, name: str) -> np.ndarray:
        """The array field ``name``; a ValueError naming it when it was not recorded."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{name} was not recorded (pass record=(..., {name!r}) to train)")
        return value

    def arrays(self) -> dict[str, np.ndarray]:
        """Every non-empty array field by name (for storage)."""
        names = ("loss", "outputs", "h_last", "depth", "diverged_at", "hidden", "pre",
                 "backward", "test_loss")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def select(self, b: int) -> Trajectory:
        """The record of network ``b`` alone (batch axis kept, of size 1)."""
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:, b : b + 1]

        return Trajectory(
            loss=self.loss[:, b : b + 1], outputs=take(self.outputs), h_last=take(self.h_last),
            depth=self.depth, diverged_at=self.diverged_at[b : b + 1], hidden=take(self.hidden),
            pre=take(self.pre), backward=take(self.backward), test_loss=take(self.test_loss),
            meta=dict(self.meta),
        )
