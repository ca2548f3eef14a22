"""Small convolutional residual networks for images (docs/mean-field.md): a CIFAR-style ResNet
(pre-activation basic blocks) and a ResNeXt-style variant (bottleneck blocks with a grouped 3x3
convolution of ``cardinality`` groups).

Shapes: inputs ``(N, C, H, W)``; stage ``s`` has ``width * 2^s`` channels at resolution
``H / 2^s``; outputs ``(N, classes)``. Layout::

    stem: conv3x3(C -> w)
    stage s: [transition_s (stride-2 projection block, s > 0)] then blocks_s[0..n-1]
             each block h -> h + scale * g(h) (identity skip, shape-preserving)
    head: norm, relu, global average pool, linear

The residual blocks of each stage are ``nn.ModuleList``\\ s (``residual_stages()``), so the
mean-field view (:class:`reslim._src.diagnostics.mean_field.ModuleBlocks`) and the training
schemes can reorder them and build the shallow-ensemble surrogate. ``scale`` is 1 (standard) or
``1/n`` (``branch_scale="1/n"``, the mean-field normalisation of each stage's Euler steps).
``norm="batch"`` uses BatchNorm, ``"none"`` the identity (a deterministic, per-sample model).
"""

from __future__ import annotations

from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch' or 'none', got {kind!r}")


class BasicBlock(nn.Module):
    """``h + scale * conv(relu(norm(conv(relu(norm(h))))))`` (pre-activation, 3x3 convolutions)."""

    def __init__(self, channels: int, norm: str = "batch", scale: float = 1.0) -> None:
        super().__init__()
        self.n1, self.c1 = _norm(norm, channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.n2, self.c2 = _norm(norm, channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.scale = scale

    def branch(self, h):
        return self.c2(self.n2(self.c1(self.n1(h).relu())).relu())

    def forward(self, h):
        return h + self.scale * self.branch(h)


class NeXtBlock(nn.Module):
    """ResNeXt-style bottleneck: 1x1 (channels -> inner), grouped 3x3 (``cardinality`` groups),
    1x1 (inner -> channels), pre-activation, identity skip."""

    def __init__(self, channels: int, cardinality: int = 4, bottleneck: int = 2, norm: str = "batch",
                 scale: float = 1.0) -> None:
        super().__init__()
        inner = max(cardinality, (channels // bottleneck) // cardinality * cardinality)
        self.n1, self.c1 = _norm(norm, channels), nn.Conv2d(channels, inner, 1, bias=False)
        self.n2 = _norm(norm, inner)
        self.c2 = nn.Conv2d(inner, inner, 3, padding=1, groups=cardinality, bias=False)
        self.n3, self.c3 = _norm(norm, inner), nn.Conv2d(inner, channels, 1, bias=False)
        self.scale = scale

    def branch(self, h):
        a = self.c1(self.n1(h).relu())
        a = self.c2(self.n2(a).relu())
        return self.c3(self.n3(a).relu())

    def forward(self, h):
        return h + self.scale * self.branch(h)


class Transition(nn.Module):
    """Stride-2 projection block between stages: ``proj(h) + conv(relu(norm(conv_s2(relu(norm h)))))``."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch") -> None:
        super().__init__()
        self.n1, self.c1 = _norm(norm, c_in), nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.n2, self.c2 = _norm(norm, c_out), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)

    def forward(self, h):
        a = self.n1(h).relu()
        return self.proj(a) + self.c2(self.n2(self.c1(a)).relu())


class ConvResNet(nn.Module):
    """A small image ResNet (``block="basic"``) or ResNeXt (``block="next"``); module docstring.

    ``blocks``: residual blocks per stage (the transition not counted); ``stages``: number of
    stages; parameters initialised by PyTorch's defaults under ``torch.manual_seed(seed)``.
    """

    def __init__(self, in_channels: int = 3, classes: int = 10, width: int = 16, blocks: int = 3,
                 stages: int = 3, block: str = "basic", cardinality: int = 4, norm: str = "batch",
                 branch_scale: str = "1", seed: int | None = None) -> None:
        super().__init__()
        import torch

        if block not in ("basic", "next"):
            raise ValueError(f"block must be 'basic' or 'next', got {block!r}")
        if branch_scale not in ("1", "1/n"):
            raise ValueError(f"branch_scale must be '1' or '1/n', got {branch_scale!r}")
        if blocks < 1 or stages < 1 or width < 1:
            raise ValueError("blocks, stages and width must be positive")
        if block == "next" and width % cardinality:
            raise ValueError(f"width ({width}) must be a multiple of the cardinality ({cardinality})")
        if seed is not None:
            torch.manual_seed(seed)
        scale = 1.0 if branch_scale == "1" else 1.0 / blocks
        self.config = {"in_channels": in_channels, "classes": classes, "width": width, "blocks": blocks,
                       "stages": stages, "block": block, "cardinality": cardinality, "norm": norm,
                       "branch_scale": branch_scale}
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        c = width
        for s in range(stages):
            if s > 0:
                self.transitions.append(Transition(c, 2 * c, norm))
                c *= 2
            if block == "basic":
                self.stages.append(nn.ModuleList([BasicBlock(c, norm, scale) for _ in range(blocks)]))
            else:
                self.stages.append(nn.ModuleList([NeXtBlock(c, cardinality, 2, norm, scale)
                                                  for _ in range(blocks)]))
        self.head_norm = _norm(norm, c)
        self.fc = nn.Linear(c, classes)

    def residual_stages(self) -> list[nn.ModuleList]:
        return [s for s in self.stages if isinstance(s, nn.ModuleList)]

    def forward(self, x):
        h = self.stem(x)
        for s, stage in enumerate(self.stages):
            if s > 0:
                h = self.transitions[s - 1](h)
            for blk in stage:
                h = blk(h)
        h = self.head_norm(h).relu().mean(dim=(2, 3))
        return self.fc(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
