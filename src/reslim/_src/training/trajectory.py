"""The trajectory record shared by finite networks and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RECORDABLE = ("loss", "outputs", "h_last", "hidden", "pre")


@dataclass
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
    outputs: np.ndarray
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
            loss=take(self.loss), outputs=take(self.outputs), h_last=take(self.h_last),
            depth=self.depth, diverged_at=self.diverged_at[b : b + 1], hidden=take(self.hidden),
            pre=take(self.pre), backward=take(self.backward), test_loss=take(self.test_loss),
            meta=dict(self.meta),
        )
