"""Residual networks of any shape, stored as a batch of ``B`` independent networks.

Array shapes (``B`` networks, ``N`` samples)::

    W_e : (B, D, d_in)     U, V : (L, B, D, M)   (two-layer blocks)
    W_u : (B, D, d_out)    W    : (L, B, D, D)   (one-layer blocks)
    hidden states h_l : (B, D, N)  (columns are samples, as H in theory.md §2.1)
    pre-activations p_l : (B, M, N); outputs y : (B, d_out, N)

Forward (effective scales from the :class:`Parameterization`)::

    h_0 = m_e W_e x;  p_l = m_U U_l^T h_l;  h_{l+1} = h_l + beta m_V V_l sigma(p_l);  y = m_u W_u^T h_L

The module's :meth:`forward` is ordinary differentiable PyTorch (for autograd, ``torch.optim``
and users); the trainer uses :meth:`forward_cached` and :meth:`backward_update`, a manual
backward that applies updates in place layer by layer without materialising full-size
gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..scaling.parameterization import Parameterization, get_parameterization
from ..scaling.shapes import Shape
from .activations import get_activation

BLOCKS = ("two-layer", "one-layer")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for sub-stream ``stream`` of ``seed`` (NumPy SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, int(stream)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def standard_normal(seed: int, *size: int) -> torch.Tensor:
    """``N(0, 1)`` float64 draws from a generator seeded with ``seed`` (CPU, reproducible)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(*size, generator=gen, dtype=torch.float64)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@dataclass
class ForwardCache:
    """What the manual backward needs: h_l for l = 0..L, pre-activations and activations."""

    hidden: list[torch.Tensor]  # L+1 tensors (B, D, N)
    pre: list[torch.Tensor]  # L tensors (B, M, N) (two-layer) or (B, D, N) (one-layer)
    act: list[torch.Tensor]  # sigma(pre), same shapes
    y: torch.Tensor  # (B, d_out, N)


class ResNet(nn.Module):
    """``B`` independent residual networks of one shape under one parameterization.

    Network ``b`` draws its block weights from ``seeds[b]``. The embedding and readout are
    drawn from the same seed, unless ``embed_seed`` is given: then one pair ``(W_e, W_u)`` of
    ``embed_dim_max`` rows is drawn from it and every network uses the first ``D`` rows (the
    coupled randomness of theory.md §3.1). ``embed_seed`` may also be a sequence, one per
    network.
    """

    def __init__(
        self,
        shape: Shape,
        *,
        param: Parameterization | str = "mlu",
        d_in: int,
        d_out: int,
        block: str = "two-layer",
        activation: str = "tanh",
        seeds: Sequence[int] = (0,),
        embed_seed: int | Sequence[int] | None = None,
        embed_dim_max: int | None = None,
        train_embedding: bool = False,
        train_readout: bool = False,
        dtype: str | torch.dtype = "float64",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.shape = Shape.parse(shape)
        self.param = get_parameterization(param)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
        self.param.check_block(block)
        self.block = block
        self.activation = get_activation(activation)
        for name, v in (("d_in", d_in), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.d_in, self.d_out = d_in, d_out
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must name at least one network")
        self.train_embedding, self.train_readout = bool(train_embedding), bool(train_readout)
        self.dtype = resolve_dtype(dtype)
        self.scales = self.param.effective(self.shape, d_in, d_out)
        L, M, D = self.shape.as_tuple()
        B = len(self.seeds)

        blocks: dict[str, list[torch.Tensor]] = {r: [] for r in self.block_roles}
        W_e, W_u = [], []
        if embed_seed is not None:
            embed_seeds = [embed_seed] * B if isinstance(embed_seed, int) else list(embed_seed)
            if len(embed_seeds) != B:
                raise ValueError("embed_seed must be one seed or one per network")
            d_max = D if embed_dim_max is None else int(embed_dim_max)
            if d_max < D:
                raise ValueError(f"embed_dim_max ({d_max}) must be >= D ({D})")
        for b, seed in enumerate(self.seeds):
            for role in self.block_roles:
                cols = M if role in ("U", "V") else D
                blocks[role].append(standard_normal(derive_seed(seed, _STREAM[role]), L, D, cols))
            if embed_seed is None:
                W_e.append(standard_normal(derive_seed(seed, _STREAM["embed"]), D, d_in))
                W_u.append(standard_normal(derive_seed(seed, _STREAM["readout"]), D, d_out))
            else:
                e_seed = int(embed_seeds[b])
                W_e.append(standard_normal(derive_seed(e_seed, _STREAM["embed"]), d_max, d_in)[:D])
                W_u.append(
                    standard_normal(derive_seed(e_seed, _STREAM["readout"]), d_max, d_out)[:D])

        def make(t: torch.Tensor, role: str, trainable: bool) -> nn.Parameter:
            t = (t * self.scales[role].init_std).to(device=device, dtype=self.dtype)
            return nn.Parameter(t.contiguous(), requires_grad=trainable)

        for role in self.block_roles:
            stacked = torch.stack(blocks[role], dim=1)  # (L, B, D, cols)
            self.register_parameter(role, make(stacked, role, True))
        self.W_e = make(torch.stack(W_e), "embed", self.train_embedding)
        self.W_u = make(torch.stack(W_u), "readout", self.train_readout)

    # ---------------------------------------------------------------------------------
    @property
    def block_roles(self) -> tuple[str, ...]:
        return ("U", "V") if self.block == "two-layer" else ("W",)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    @property
    def device(self) -> torch.device:
        return self.W_e.device

    def mult(self, role: str) -> float:
        return self.scales[role].multiplier

    @property
    def beta(self) -> float:
        return self.scales["branch"].multiplier

    def role_tensors(self) -> dict[str, nn.Parameter]:
        """Every weight by role: ``embed``, block roles, ``readout``."""
        out = {"embed": self.W_e}
        out.update({r: getattr(self, r) for r in self.block_roles})
        out["readout"] = self.W_u
        return out

    def trainable_roles(self) -> tuple[str, ...]:
        roles = list(self.block_roles)
        if self.train_embedding:
            roles.insert(0, "embed")
        if self.train_readout:
            roles.append("readout")
        return tuple(roles)

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """``(N, d_in)`` or ``(B, N, d_in)`` samples -> ``(d_in, N)`` or ``(B, d_in, N)``."""
        X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        if X.shape[-1] != self.d_in:
            raise ValueError(f"inputs have {X.shape[-1]} features, the network expects {self.d_in}")
        return X.transpose(-1, -2)

    # --- differentiable forward (autograd) ----------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, N, d_out)`` for inputs ``(N, d_in)``; ordinary autograd ops."""
        act = self.activation.fn
        h = self.mult("embed") * torch.matmul(self.W_e, self.inputs(X))
        for l in range(self.shape.L):
            if self.block == "two-layer":
                p = self.mult("U") * torch.matmul(self.U[l].mT, h)
                h = h + self.beta * self.mult("V") * torch.matmul(self.V[l], act(p))
            else:
                h = h + self.beta * self.mult("W") * torch.matmul(self.W[l], act(h))
        return (self.mult("readout") * torch.matmul(self.W_u.mT, h)).mT

    # --- manual forward / backward (the trainer's fast path) ----------------------------
    @torch.no_grad()
    def forward_cached(self, X: torch.Tensor) -> ForwardCache:
        """Forward pass keeping every h_l, pre-activation and activation (``X``: (N, d_in))."""
        act = self.activation.fn
        h = self.mult("embed") * torch.matmul(self.W_e, self.inputs(X))
        if h.dim() == 2:
            h = h.expand(self.batch_size, -1, -1)
        hidden, pre, acts = [h], [], []
        coef = self.beta * self.mult("V" if self.block == "two-layer" else "W")
        for l in range(self.shape.L):
            if self.block == "two-layer":
                p = torch.bmm(self.U[l].mT, h)
                p.mul_(self.mult("U"))
                a = act(p)
                h = torch.baddbmm(h, self.V[l], a, alpha=coef)
            else:
                p, a = h, act(h)
                h = torch.baddbmm(h, self.W[l], a, alpha=coef)
            pre.append(p)
            acts.append(a)
            hidden.append(h)
        y = self.mult("readout") * torch.bmm(self.W_u.mT, h)
        return ForwardCache(hidden, pre, acts, y)

    @torch.no_grad()
    def backward_update(
        self,
        X: torch.Tensor,
        cache: ForwardCache,
        dy: torch.Tensor,
        update: BlockUpdate,
        backward_weights: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Backpropagate ``dy = dR/dy`` (B, d_out, N) and hand every layer's gradient to
        ``update`` as soon as it is known (after the gradient below it no longer needs the
        layer's old weights), so weights are changed in place block by block.

        ``backward_weights`` replaces the block weights used to carry the gradient down (the
        gradient-independence mode); the forward weights are used for everything else.
        """
        bw = backward_weights or {}
        grad_act = self.activation.grad
        g = self.mult("readout") * torch.bmm(self.W_u, dy)  # dR/dh_L, (B, D, N)
        if self.train_readout:
            update.apply("readout", None, cache.hidden[-1], dy.mT, self.mult("readout"))
        if self.block == "two-layer":
            cV, cU = self.beta * self.mult("V"), self.mult("U")
            U_b, V_b = bw.get("U", self.U), bw.get("V", self.V)
            for l in range(self.shape.L - 1, -1, -1):
                p, a, h = cache.pre[l], cache.act[l], cache.hidden[l]
                ga = torch.bmm(V_b[l].mT, g)  # dR/da / cV, (B, M, N)
                update.apply("V", l, g, a.mT, cV)
                gp = ga.mul_(grad_act(p, a)).mul_(cV)  # dR/dp, (B, M, N)
                g = torch.baddbmm(g, U_b[l], gp, alpha=cU)
                update.apply("U", l, h, gp.mT, cU)
        else:
            cW = self.beta * self.mult("W")
            W_b = bw.get("W", self.W)
            for l in range(self.shape.L - 1, -1, -1):
                p, a = cache.pre[l], cache.act[l]
                ga = torch.bmm(W_b[l].mT, g)
                update.apply("W", l, g, a.mT, cW)
                g = g + ga.mul_(grad_act(p, a)).mul_(cW)
        if self.train_embedding:
            update.apply("embed", None, g, self.inputs(X).mT, self.mult("embed"))


_STREAM = {"U": 1, "V": 2, "W": 3, "embed": 4, "readout": 5}


class BlockUpdate:
    """Receives per-layer gradients from :meth:`ResNet.backward_update`.

    The gradient of one layer's weight is handed over in factored form,
    ``grad = scale * left @ right`` with ``left`` (B, rows, N) and ``right`` (B, N, cols) or
    (N, cols): a rank-N product, so plain gradient descent can apply it as one fused
    in-place ``baddbmm`` without materialising it. ``layer`` is ``None`` for embedding and
    readout.
    """

    def apply(self, role: str, layer: int | None, left: torch.Tensor, right: torch.Tensor,
              scale: float) -> None:  # pragma: no cover - interface
        raise NotImplementedError
