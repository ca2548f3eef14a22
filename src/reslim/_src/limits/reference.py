"""A large finite network used as a numerical limit (the paper's reference for tanh), behind
the same :class:`Limit` interface."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..models.resnet import ResNet
from ..scaling.parameterization import get_parameterization
from ..scaling.shapes import Shape
from ..training.trainer import train
from ..training.trajectory import Trajectory
from .base import Limit, LimitProblem


class ReferenceNetwork(Limit[LimitProblem]):
    """A finite MLU ResNet of ``shape`` (``D`` must match the problem's ``W_e``), one network
    per seed in ``seeds``, trained by full-batch GD with :func:`reslim.train`.

    The problem's ``W_e``, ``W_u`` (B, D, ·) replace the network's embedding and readout
    (``B = 1``: shared by all seeds; else ``B = len(seeds)``). Records ``hidden`` on the depth
    grid ``l / L``; ``backward`` is ``None``.
    """

    name = "reference"

    def __init__(self, shape: Shape | str | tuple, seeds: Sequence[int] = (0,), dtype: str = "float64",
                 device: str = "cpu") -> None:
        self.shape = Shape.parse(shape)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must name at least one network")
        self.dtype, self.device = dtype, device

    def build(self, problem: LimitProblem) -> ResNet:
        """The untrained network with the problem's embedding and readout."""
        W_e, W_u = problem.require_embeddings("ReferenceNetwork")
        if W_e.shape[1] != self.shape.D:
            raise ValueError(f"W_e: has D = {W_e.shape[1]}, the reference shape {self.shape}")
        B = len(self.seeds)
        if W_e.shape[0] not in (1, B):
            raise ValueError(f"W_e: has {W_e.shape[0]} draws for {B} seeds (need 1 or {B})")
        net = ResNet(self.shape, param=get_parameterization("mlu", alpha=problem.alpha), d_in=problem.d_in,
                     d_out=problem.d_out, activation=problem.activation, seeds=self.seeds, dtype=self.dtype,
                     device=self.device)
        with torch.no_grad():
            net.W_e.data.copy_(torch.from_numpy(np.broadcast_to(W_e, (B, *W_e.shape[1:])).copy()))
            net.W_u.data.copy_(torch.from_numpy(np.broadcast_to(W_u, (B, *W_u.shape[1:])).copy()))
        return net

    def _solve(self, problem: LimitProblem) -> Trajectory:
        net = self.build(problem)
        traj = train(net, problem.data, steps=problem.K, lr=problem.eta, optimizer="gd", loss=problem.loss,
                     record=("loss", "outputs", "h_last", "hidden"))
        traj.meta.update({"limit": "reference", "eta": problem.eta, "alpha": problem.alpha})
        return traj

    def __repr__(self) -> str:
        return f"ReferenceNetwork({self.shape}, seeds={self.seeds})"
