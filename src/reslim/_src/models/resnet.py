"""Residual networks of any shape, stored as a batch of ``B`` independent networks.

Array shapes (``B`` networks, ``N`` samples)::

    W_e : (B, D, d_in)     U, V : (L, B, D, M)   (two-layer blocks)
    W_u : (B, D, d_out)    W    : (L, B, D, D)   (one-layer blocks)
    hidden states h_l : (B, N, D)  (samples are rows; H of docs/theory.md §2.1 is its transpose)
    pre-activations p_l : (B, N, M); outputs y : (B, N, d_out)

Forward (effective scales from the :class:`Parameterization`)::

    h_0 = m_e W_e x;  p_l = m_U U_l^T h_l;  h_{l+1} = h_l + beta m_V V_l sigma(p_l);  y = m_u W_u^T h_L

The module's :meth:`forward` is ordinary differentiable PyTorch (for autograd, ``torch.optim``
and users); the trainer uses :meth:`forward_cached` and :meth:`backward_update`, a manual
backward that applies updates in place layer by layer without materialising full-size
gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..scaling.architecture import RESNET
from ..scaling.parameterization import Parameterization, get_parameterization
from ..scaling.shapes import Shape
from . import kernels
from .activations import get_activation

BLOCKS = ("two-layer", "one-layer")
#: kernels from this many block-weight elements per layer (networks x rows x cols) and this many
#: columns, per dtype; measured by bench/kernel_crossover.py. float64: 1 x 96 x 96 and 5 x 45 x 45
#: are about even, larger shapes faster with the kernels (1 x 45 x 2000 too). float32 (torch's
#: GEMMs are relatively faster): 1 x 206 x 206 and 5 x 150 x 150 faster, 5 x 96 x 96, 1 x 150 x 150
#: and 64 columns x 2000 rows faster with torch
KERNEL_MIN_ELEMENTS = {torch.float64: 9_000, torch.float32: 40_000}
KERNEL_MIN_COLS = {torch.float64: 1, torch.float32: 128}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for sub-stream ``stream`` of ``seed`` (NumPy SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, int(stream)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


_SS_INIT_A, _SS_MULT_A, _SS_INIT_B, _SS_MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R = 0xCA01F9DD, 0x4973F715


def derive_seeds(seeds: Sequence[int] | np.ndarray, stream: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """``derive_seed`` elementwise over broadcast ``seeds`` and ``stream`` (each stream
    ``< 2**32``), vectorised: NumPy ``SeedSequence``'s pool mixing (4 words) and state output
    in uint32 array arithmetic, exactly (tested), at a fraction of a microsecond per seed."""
    sd, st = np.broadcast_arrays(np.asarray([int(v) & 0xFFFFFFFFFFFF for v in np.ravel(seeds)],
                                            dtype=np.uint64).reshape(np.shape(seeds)),
                                 np.asarray(stream, dtype=np.uint64))
    if np.any(st >= 1 << 32):
        raise ValueError("stream must be below 2**32")
    U = np.uint32
    lo, hi, tail = (sd & 0xFFFFFFFF).astype(U), (sd >> np.uint64(32)).astype(U), st.astype(U)
    hc = [_SS_INIT_A]

    def hashmix(v: np.ndarray) -> np.ndarray:
        h = hc[0]
        hc[0] = h * _SS_MULT_A & 0xFFFFFFFF
        v = (v ^ U(h)) * U(hc[0])
        return v ^ (v >> U(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r: np.ndarray = U(_SS_MIX_L) * x - U(_SS_MIX_R) * y
        return r ^ (r >> U(16))

    def state(entropy: list[np.ndarray]) -> np.ndarray:
        hc[0] = _SS_INIT_A
        zero = np.zeros_like(lo)
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(4)]
        for i in range(4):
            for j in range(4):
                if i != j:
                    pool[j] = mix(pool[j], hashmix(pool[i]))
        out, hb = [], _SS_INIT_B
        for i in range(2):
            v = pool[i] ^ U(hb)
            hb = hb * _SS_MULT_B & 0xFFFFFFFF
            v = v * U(hb)
            out.append((v ^ (v >> U(16))).astype(np.uint64))
        return ((out[0] << np.uint64(31)) ^ out[1]) & np.uint64(0x7FFFFFFFFFFFFFFF)

    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as in SeedSequence
        two = state([lo, tail])  # a seed below 2**32 is one entropy word
        three = state([lo, hi, tail])
    return np.where(hi == 0, two, three).astype(np.int64)


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

    hidden: list[torch.Tensor]  # L+1 tensors (B, N, D)
    pre: list[torch.Tensor]  # L tensors (B, N, M) (two-layer) or (B, N, D) (one-layer)
    act: list[torch.Tensor]  # sigma(pre), same shapes
    y: torch.Tensor  # (B, N, d_out)


class ResNet(nn.Module):
    """``B`` independent residual networks of one shape under one parameterization.

    Network ``b`` draws its block weights from ``seeds[b]``. The embedding and readout are
    drawn from the same seed, unless ``embed_seed`` is given: then one pair ``(W_e, W_u)`` of
    ``embed_dim_max`` rows is drawn from it and every network uses the first ``D`` rows (the
    coupled randomness of docs/theory.md §3.1). ``embed_seed`` may also be a sequence, one per
    network. ``shape``: a :class:`Shape`, ``(L, M, D)`` or ``"L,M,D"``.
    """

    # the weights (registered as parameters or buffers; declared here for the type checker)
    W_e: torch.Tensor  # (B, D, d_in)
    W_u: torch.Tensor  # (B, D, d_out)
    U: torch.Tensor  # (L, B, D, M)  two-layer blocks
    V: torch.Tensor  # (L, B, D, M)
    W: torch.Tensor  # (L, B, D, D)  one-layer blocks

    def __init__(
        self,
        shape: Shape | Sequence[int] | str,  # (L, M, D) or "L,M,D"
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
        self._configure(shape, param=param, d_in=d_in, d_out=d_out, block=block,
                        activation=activation, seeds=seeds, train_embedding=train_embedding,
                        train_readout=train_readout, dtype=dtype)
        L, M, D = self.shape.as_tuple()
        B = len(self.seeds)

        if embed_seed is not None:
            embed_seeds = [embed_seed] * B if isinstance(embed_seed, int) else list(embed_seed)
            if len(embed_seeds) != B:
                raise ValueError("embed_seed must be one seed or one per network")
            d_max = D if embed_dim_max is None else int(embed_dim_max)
            if d_max < D:
                raise ValueError(f"embed_dim_max ({d_max}) must be >= D ({D})")
        # Block weights: one random stream per (role, network, layer), drawn as float32 normals
        # (torch's vectorised generator, 4x the float64 rate: the papers' sweeps draw billions)
        # and held exactly in float64, so float32 and float64 networks of a seed start from the
        # very same weights. The streams are independent, so they are drawn in parallel threads
        # (torch releases the GIL), each straight into its (D, cols) slot: the same numbers in
        # about 1/threads of the time, with no full-size temporary.
        stacks = {role: torch.empty(L, B, D, M if role in ("U", "V") else D, dtype=torch.float64)
                  for role in self.block_roles}
        layer_seeds = {role: derive_seeds(derive_seeds(self.seeds, _STREAM[role])[:, None],
                                          np.arange(L)[None, :]) for role in self.block_roles}

        def draw(role: str, b: int, layer: int) -> None:
            gen = torch.Generator().manual_seed(int(layer_seeds[role][b, layer]))
            dst = stacks[role][layer, b]
            dst.copy_(torch.randn(dst.shape, generator=gen, dtype=torch.float32))

        jobs = [(role, b, layer) for role in self.block_roles for b in range(B) for layer in range(L)]
        big = sum(t.numel() for t in stacks.values()) >= 1 << 21  # threads pay from ~2M draws
        workers = min(torch.get_num_threads(), len(jobs)) if big else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda job: draw(*job), jobs))
        else:
            for job in jobs:
                draw(*job)
        for role, stacked in stacks.items():
            self.register_parameter(role, self._home(stacked, role, True, device))
        W_e, W_u = [], []
        for b, seed in enumerate(self.seeds):
            if embed_seed is None:
                W_e.append(standard_normal(derive_seed(seed, _STREAM["embed"]), D, d_in))
                W_u.append(standard_normal(derive_seed(seed, _STREAM["readout"]), D, d_out))
            else:
                e_seed = int(embed_seeds[b])
                W_e.append(standard_normal(derive_seed(e_seed, _STREAM["embed"]), d_max, d_in)[:D])
                W_u.append(
                    standard_normal(derive_seed(e_seed, _STREAM["readout"]), d_max, d_out)[:D])
        self.W_e = self._home(torch.stack(W_e), "embed", self.train_embedding, device)
        self.W_u = self._home(torch.stack(W_u), "readout", self.train_readout, device)

    def _configure(self, shape, *, param, d_in, d_out, block, activation, seeds, train_embedding,
                   train_readout, dtype) -> None:
        """Everything but the weights (shared by ``__init__`` and :meth:`from_weights`)."""
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
        self.use_kernels: bool | None = None  # None: the fused CPU kernels where they apply
        self.scales = self.param.effective(self.shape, d_in, d_out)

    @classmethod
    def from_weights(
        cls,
        *,
        U: torch.Tensor | np.ndarray | None = None,
        V: torch.Tensor | np.ndarray | None = None,
        W: torch.Tensor | np.ndarray | None = None,
        W_e: torch.Tensor | np.ndarray | None = None,
        W_u: torch.Tensor | np.ndarray | None = None,
        param: Parameterization | str = "mlu",
        activation: str = "tanh",
        seeds: Sequence[int] | None = None,
        train_embedding: bool = False,
        train_readout: bool = False,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ResNet:
        """A network with the given weights (as they enter the forward pass: already scaled by
        their init std, *not* by the multipliers), e.g. a published run's initialisation.

        Two-layer blocks take ``U`` and ``V``, each ``(L, B, D, M)`` (or ``(L, D, M)`` for one
        network); one-layer blocks take ``W``, ``(L, B, D, D)`` (or ``(L, D, D)``). ``W_e`` is
        ``(B, D, d_in)`` and ``W_u`` ``(B, D, d_out)`` (or without the ``B`` axis). ``L, M, D, B,
        d_in, d_out`` and the block type are read from the shapes; a mismatch is a one-line
        error naming the argument and both shapes. The weights are copied unchanged (so they
        equal the given ones exactly in their own dtype; ``dtype`` defaults to theirs, float64
        for anything but float32). ``seeds`` (default ``0..B-1``) only seed the independent
        backward weights of the gradient-independence mode.
        """
        given = {"U": U, "V": V, "W": W, "W_e": W_e, "W_u": W_u}
        if W is not None and (U is not None or V is not None):
            raise ValueError("give U and V (two-layer blocks) or W (one-layer blocks), not both")
        if W is None and (U is None or V is None):
            missing = "U" if U is None else "V"
            raise ValueError(f"{missing} is missing: give U and V (two-layer blocks) or W (one-layer)")
        tensors: dict[str, torch.Tensor] = {}
        for name, value in given.items():
            if value is None:
                continue
            t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            if not (t.is_floating_point()):
                raise ValueError(f"{name} must hold floating-point numbers, got {t.dtype}")
            tensors[name] = t
        block = "one-layer" if W is not None else "two-layer"
        first = "W" if block == "one-layer" else "U"
        lead = tensors[first]
        if lead.dim() not in (3, 4):
            want = "(L, B, D, D) or (L, D, D)" if block == "one-layer" else "(L, B, D, M) or (L, D, M)"
            raise ValueError(f"{first} must be {want}, got shape {tuple(lead.shape)}")
        single = lead.dim() == 3  # one network: no B axis anywhere
        L, D, cols = (lead.shape[0], *lead.shape[-2:])
        B = 1 if single else lead.shape[1]
        if block == "one-layer" and cols != D:
            raise ValueError(f"W must be square in its last two axes (D, D), got shape {tuple(lead.shape)}")
        M = cols
        for name in ("W_e", "W_u"):
            if name not in tensors:
                raise ValueError(f"{name} is missing")
            if tensors[name].dim() != (2 if single else 3):
                raise ValueError(f"{name} must be {'(D, d)' if single else '(B, D, d)'} like {first} "
                                 f"of shape {tuple(lead.shape)}, got shape {tuple(tensors[name].shape)}")
        d_in, d_out = tensors["W_e"].shape[-1], tensors["W_u"].shape[-1]
        expected: dict[str, tuple[int, ...]] = {"U": (L, B, D, M), "V": (L, B, D, M), "W": (L, B, D, D),
                    "W_e": (B, D, d_in), "W_u": (B, D, d_out)}
        for name, t in tensors.items():
            shape_want = expected[name]
            if single:
                shape_want = shape_want[:1] + shape_want[2:] if name in ("U", "V", "W") else shape_want[1:]
            if tuple(t.shape) != shape_want:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape_want} (from {first} of "
                                 f"shape {tuple(lead.shape)})")
        if single:
            tensors = {n: t.unsqueeze(0 if n in ("W_e", "W_u") else 1) for n, t in tensors.items()}
        if dtype is None:
            dtype = torch.float32 if all(t.dtype == torch.float32 for t in tensors.values()) \
                else torch.float64
        if device is None:
            device = lead.device
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._configure(Shape(L, M, D), param=param, d_in=int(d_in), d_out=int(d_out), block=block,
                       activation=activation, seeds=range(B) if seeds is None else seeds,
                       train_embedding=train_embedding, train_readout=train_readout, dtype=dtype)
        if net.batch_size != B:
            raise ValueError(f"seeds names {net.batch_size} networks, the weights hold {B}")

        def home(t: torch.Tensor, trainable: bool) -> nn.Parameter:
            t = t.to(device=device, dtype=net.dtype).clone(memory_format=torch.contiguous_format)
            return nn.Parameter(t, requires_grad=trainable)

        for role in net.block_roles:
            net.register_parameter(role, home(tensors[role], True))
        net.W_e = home(tensors["W_e"], net.train_embedding)
        net.W_u = home(tensors["W_u"], net.train_readout)
        return net

    def extra_repr(self) -> str:
        L, M, D = self.shape.as_tuple()
        parts = [f"L={L}", f"M={M}", f"D={D}", f"B={self.batch_size}", f"param={self.param.name!r}",
                 f"activation={self.activation.name!r}", f"block={self.block!r}",
                 f"d_in={self.d_in}", f"d_out={self.d_out}",
                 f"dtype={str(self.dtype).removeprefix('torch.')!r}"]
        if self.device.type != "cpu":
            parts.append(f"device={str(self.device)!r}")
        trained = [r for r in ("embed", "readout") if r in self.trainable_roles()]
        if trained:
            parts += [f"train_{'embedding' if r == 'embed' else 'readout'}=True" for r in trained]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _home(self, draws: torch.Tensor, role: str, trainable: bool, device) -> nn.Parameter:
        """Scale float64 standard-normal draws by the role's init std; cast; move."""
        draws.mul_(self.scales[role].init_std)
        t = draws.to(device=device, dtype=self.dtype).contiguous()
        return nn.Parameter(t, requires_grad=trainable)

    # ---------------------------------------------------------------------------------
    @property
    def block_roles(self) -> tuple[str, ...]:
        """The roles of one block, as the ResNet's architecture declares them (``RESNET.blocks``)."""
        return RESNET.blocks[self.block]

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

    def role_tensors(self) -> dict[str, torch.Tensor]:
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

    def kernels_apply(self, n_samples: int) -> bool:
        """Whether the fused CPU kernels (kernels.c) run this network's block GEMMs."""
        if self.use_kernels is False:
            return False
        cols = self.shape.M if self.block == "two-layer" else self.shape.D
        if not kernels.usable(self.W_e, n=n_samples):
            return False
        return self.use_kernels is True or (
            self.batch_size * self.shape.D * cols >= KERNEL_MIN_ELEMENTS[self.dtype]
            and cols >= KERNEL_MIN_COLS[self.dtype])

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """Samples ``(N, d_in)`` (or ``(B, N, d_in)``) as a tensor of the network's dtype."""
        X = torch.as_tensor(X, dtype=self.dtype, device=self.device)
        if X.shape[-1] != self.d_in:
            raise ValueError(f"inputs have {X.shape[-1]} features, the network expects {self.d_in}")
        return X

    # --- differentiable forward (autograd) ----------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, N, d_out)`` for inputs ``(N, d_in)``; ordinary autograd ops."""
        act = self.activation.fn
        h = self.mult("embed") * torch.matmul(self.inputs(X), self.W_e.mT)  # (B, N, D)
        for l in range(self.shape.L):
            if self.block == "two-layer":
                p = self.mult("U") * torch.matmul(h, self.U[l])
                h = h + self.beta * self.mult("V") * torch.matmul(act(p), self.V[l].mT)
            else:
                h = h + self.beta * self.mult("W") * torch.matmul(act(h), self.W[l].mT)
        return self.mult("readout") * torch.matmul(h, self.W_u)

    # --- manual forward / backward (the trainer's fast path) ----------------------------
    # Samples are rows: h (B, N, D), p (B, N, M). MKL's skinny GEMMs are about twice as fast
    # in this form (h^T U, a^T V^T) as with samples as columns.
    @torch.no_grad()
    def forward_cached(self, X: torch.Tensor, delta: LowRankDelta | None = None) -> ForwardCache:
        """Forward pass keeping every h_l, pre-activation and activation (``X``: (N, d_in)).

        With ``delta``, block weights are ``W + delta`` (accumulated low-rank updates)."""
        act = self.activation.fn
        h = self.mult("embed") * torch.matmul(self.inputs(X), self.W_e.mT)
        if h.dim() == 2:
            h = h.expand(self.batch_size, -1, -1)
        hidden: list[torch.Tensor] = [h]
        pre: list[torch.Tensor] = []
        acts: list[torch.Tensor] = []
        coef = self.beta * self.mult("V" if self.block == "two-layer" else "W")
        if delta is None and self.kernels_apply(h.shape[-2]):
            return self._forward_kernels(h, hidden, pre, acts, coef)
        for l in range(self.shape.L):
            if self.block == "two-layer":
                p = torch.bmm(h, self.U[l])
                if delta is not None:
                    delta.add_right(p, h, "U", l)
                p.mul_(self.mult("U"))
                a = act(p)
                h = torch.baddbmm(h, a, self.V[l].mT, alpha=coef)
                if delta is not None:
                    delta.add_right_t(h, a, "V", l, coef)
            else:
                p, a = h, act(h)
                h = torch.baddbmm(h, a, self.W[l].mT, alpha=coef)
                if delta is not None:
                    delta.add_right_t(h, a, "W", l, coef)
            pre.append(p)
            acts.append(a)
            hidden.append(h)
        y = self.mult("readout") * torch.bmm(h, self.W_u)
        return ForwardCache(hidden, pre, acts, y)

    def _forward_kernels(self, h, hidden, pre, acts, coef) -> ForwardCache:
        act = self.activation.fn
        B, N, D = h.shape
        mU = self.mult("U") if self.block == "two-layer" else 1.0
        for l in range(self.shape.L):
            h_next = torch.empty(B, N, D, dtype=h.dtype)
            if self.block == "two-layer":
                p = torch.empty(B, N, self.shape.M, dtype=h.dtype)
                kernels.xw(h, self.U[l], p, mU)
                a = act(p)
                kernels.xwt(a, self.V[l], h_next, coef, base=h)
            else:
                p, a = h, act(h)
                kernels.xwt(a, self.W[l], h_next, coef, base=h)
            pre.append(p)
            acts.append(a)
            hidden.append(h_next)
            h = h_next
        y = self.mult("readout") * torch.bmm(h, self.W_u)
        return ForwardCache(hidden, pre, acts, y)

    @torch.no_grad()
    def backward_update(
        self,
        X: torch.Tensor,
        cache: ForwardCache,
        dy: torch.Tensor,
        update: BlockUpdate,
        backward_weights: dict[str, torch.Tensor] | None = None,
        delta: LowRankDelta | None = None,
    ) -> None:
        """Backpropagate ``dy = dR/dy`` (B, N, d_out) and hand every layer's gradient to
        ``update`` as soon as it is known (after the gradient below it no longer needs the
        layer's old weights), so weights are changed in place block by block.

        ``backward_weights`` replaces the block weights used to carry the gradient down (the
        gradient-independence mode); the forward weights are used for everything else.
        ``delta`` adds accumulated low-rank updates to forward and backward block weights.
        """
        bw = backward_weights or {}
        grad_act = self.activation.grad
        g = self.mult("readout") * torch.bmm(dy, self.W_u.mT)  # dR/dh_L, (B, N, D)
        if self.train_readout:
            update.apply("readout", None, cache.hidden[-1].mT, dy, self.mult("readout"))
        fused_coef = getattr(update, "fused_coef", None)
        if (fused_coef is not None and not bw and delta is None
                and self.kernels_apply(g.shape[-2]) and fused_coef("U" if self.block == "two-layer"
                                                                   else "W", 1.0) is not None):
            g = self._backward_kernels(cache, g, fused_coef)
        elif self.block == "two-layer":
            cV, cU = self.beta * self.mult("V"), self.mult("U")
            U_b, V_b = bw.get("U", self.U), bw.get("V", self.V)
            for l in range(self.shape.L - 1, -1, -1):
                p, a, h = cache.pre[l], cache.act[l], cache.hidden[l]
                ga = torch.bmm(g, V_b[l])  # dR/da / cV, (B, N, M)
                if delta is not None:
                    delta.add_right(ga, g, "V", l)
                update.apply("V", l, g.mT, a, cV)
                gp = ga.mul_(grad_act(p, a)).mul_(cV)  # dR/dp, (B, N, M)
                g_next = torch.baddbmm(g, gp, U_b[l].mT, alpha=cU)
                if delta is not None:
                    delta.add_right_t(g_next, gp, "U", l, cU)
                g = g_next
                update.apply("U", l, h.mT, gp, cU)
        else:
            cW = self.beta * self.mult("W")
            W_b = bw.get("W", self.W)
            for l in range(self.shape.L - 1, -1, -1):
                p, a = cache.pre[l], cache.act[l]
                ga = torch.bmm(g, W_b[l])
                if delta is not None:
                    delta.add_right(ga, g, "W", l)
                update.apply("W", l, g.mT, a, cW)
                g = g + ga.mul_(grad_act(p, a)).mul_(cW)
        if self.train_embedding:
            update.apply("embed", None, g.mT, self.inputs(X), self.mult("embed"))

    def _backward_kernels(self, cache: ForwardCache, g: torch.Tensor, fused_coef) -> torch.Tensor:
        """The block loop of :meth:`backward_update` with plain gradient steps fused into the
        kernels: each weight is read, used for the gradient below, and updated in one pass."""
        grad_act = self.activation.grad
        B, N, D = g.shape
        if self.block == "two-layer":
            cV, cU = self.beta * self.mult("V"), self.mult("U")
            coef_V, coef_U = fused_coef("V", cV), fused_coef("U", cU)
            for l in range(self.shape.L - 1, -1, -1):
                p, a, h = cache.pre[l], cache.act[l], cache.hidden[l]
                ga = torch.empty(B, N, self.shape.M, dtype=g.dtype)
                kernels.xw(g, self.V[l], ga, cV, left=g, right=a, coef=coef_V)
                gp = ga.mul_(grad_act(p, a))
                g_next = torch.empty_like(g)
                kernels.xwt(gp, self.U[l], g_next, cU, left=h, right=gp, coef=coef_U, base=g)
                g = g_next
        else:
            cW = self.beta * self.mult("W")
            coef_W = fused_coef("W", cW)
            for l in range(self.shape.L - 1, -1, -1):
                p, a = cache.pre[l], cache.act[l]
                ga = torch.empty(B, N, D, dtype=g.dtype)
                kernels.xw(g, self.W[l], ga, cW, left=g, right=a, coef=coef_W)
                g = g + ga.mul_(grad_act(p, a))
        return g


_STREAM = {"U": 1, "V": 2, "W": 3, "embed": 4, "readout": 5}


class LowRankDelta:
    """Accumulated updates of the block weights in factored form, ``Delta_l = A_l F_l^T``.

    Gradient descent changes a block weight by rank-``N`` products (``N`` samples per step), so
    after ``k`` steps ``W_l(k) = W_l(0) + A_l F_l^T`` with ``A_l`` (B, rows, kN) and ``F_l``
    (B, cols, kN). Keeping the sum factored, a step reads each big weight twice and writes it
    never (a dense step reads it twice and reads and writes it once more) and costs 8 instead
    of 12 ``N rows cols`` flops, plus ``O(N k N (rows + cols))`` for the factors. The factors
    are folded into the weights (``flush``) when full and at the end of training: exact GD.

    Shapes: ``A[role]`` (L, B, rows, capacity), ``F[role]`` (L, B, cols, capacity).
    """

    def __init__(self, model: ResNet, capacity: int, targets: list[dict[str, torch.Tensor]]):
        L, M, D = model.shape.as_tuple()
        B = model.batch_size
        self.capacity = int(capacity)
        self.rank = 0
        self.targets = targets  # weights that receive the flushed sum (forward and mirrors)
        kw: dict[str, Any] = dict(dtype=model.dtype, device=model.device)
        self.A: dict[str, torch.Tensor] = {}
        self.F: dict[str, torch.Tensor] = {}
        for role in model.block_roles:
            cols = M if role in ("U", "V") else D
            self.A[role] = torch.zeros(L, B, D, self.capacity, **kw)
            self.F[role] = torch.zeros(L, B, cols, self.capacity, **kw)

    def add_right(self, out: torch.Tensor, x: torch.Tensor, role: str, l: int) -> None:
        """``out += x @ Delta_l`` for ``x`` (B, n, rows)."""
        if self.rank:
            r = self.rank
            out.baddbmm_(torch.bmm(x, self.A[role][l, :, :, :r]), self.F[role][l, :, :, :r].mT)

    def add_right_t(self, out: torch.Tensor, x: torch.Tensor, role: str, l: int,
                    alpha: float = 1.0) -> None:
        """``out += alpha x @ Delta_l^T`` for ``x`` (B, n, cols)."""
        if self.rank:
            r = self.rank
            out.baddbmm_(torch.bmm(x, self.F[role][l, :, :, :r]), self.A[role][l, :, :, :r].mT,
                         alpha=alpha)

    def store(self, role: str, l: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """Append the rank-n update ``left @ right`` (left (B, rows, n), right (B, n, cols))."""
        n = left.shape[-1]
        self.A[role][l, :, :, self.rank : self.rank + n] = left
        self.F[role][l, :, :, self.rank : self.rank + n] = right.mT

    def advance(self, n: int, next_n: int) -> None:
        """Close a step that stored rank ``n``; flush if the next ``next_n`` would not fit."""
        self.rank += n
        if self.rank + next_n > self.capacity:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Fold ``A F^T`` into every target weight and empty the factors."""
        r = self.rank
        if r:
            for role in self.A:
                for l in range(self.A[role].shape[0]):
                    A, F = self.A[role][l, :, :, :r], self.F[role][l, :, :, :r]
                    for target in self.targets:
                        target[role][l].baddbmm_(A, F.mT)
        self.rank = 0


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
