"""Transformers with attention heads as units: the finite network and its parameterizations
as tables keyed by role name (docs/transformers.md, docs/theory.md §5).

One network (batches of seeds: :func:`reslim.training.train_modules`, which maps one step
over stacked parameters with ``vmap``). Sequences of ``T`` tokens, inputs ``X`` (N, T, d_in)
or flattened (N, T * d_in)::

    h_0,t = m_e W_e x_t + m_pos P_t                      W_e (D, d_in), P (T, D) frozen
    h_{l+1} = attention or MLP sub-block l of h_l          (models/attention.py)
    y = m_u W_u^T (1/T) sum_t h_L,t                        W_u (D, d_out), mean-pooled

``L`` counts sub-blocks (``blocks="alternating"``: attention at even ``l``, MLP at odd ``l``);
``M`` is the number of heads per attention sub-block (hidden units per MLP sub-block); the
key-query and value dimensions ``r``, ``r_v`` stay fixed as ``D`` grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..scaling.architecture import Architecture, Role
from ..scaling.monomial import Monomial
from ..scaling.parameterization import optimizer_family
from ..scaling.role_table import RoleTable, role_rules
from ..scaling.shapes import Shape
from .activations import get_activation
from .attention import AttentionBlock, MLPBlock, make_norm
from .resnet import derive_seed, resolve_dtype, standard_normal

TRANSFORMER = Architecture(
    name="transformer",
    roles=(
        Role("embed", "embed", "W_e", ("D", "d_in"), "token embedding"),
        Role("pos", "frozen", "P", ("T", "D"), "positional table"),
        Role("Q", "input", "blocks.l.Q", ("M", "D", "r"), "queries, one (D, r) per head"),
        Role("K", "input", "blocks.l.K", ("M", "D", "r"), "keys"),
        Role("V", "input", "blocks.l.V", ("M", "D", "r_v"), "values"),
        Role("O", "output", "blocks.l.O", ("M", "D", "r_v"), "head outputs (carry the branch)"),
        Role("mlp_U", "input", "blocks.l.U", ("D", "M"), "MLP sub-block input weights"),
        Role("mlp_V", "output", "blocks.l.V", ("D", "M"), "MLP sub-block output weights"),
        Role("norm", "gain", "blocks.l.norm.weight", ("D",), "LayerNorm/RMSNorm gain (ones)"),
        Role("norm_bias", "bias", "blocks.l.norm.bias", ("D",), "LayerNorm bias (zeros)"),
        Role("readout", "readout", "W_u", ("D", "d_out"), "readout of the mean-pooled state"),
    ),
    symbols=("L", "M", "D"),
    sizes=("r", "r_v", "d_in", "d_out", "T"),
    scalars=("branch", "logit"),
    blocks={"attention": ("Q", "K", "V", "O", "norm", "norm_bias"),
            "mlp": ("mlp_U", "mlp_V", "norm", "norm_bias")},
    doc="attention heads as units (theory.md §5); L counts sub-blocks",
)

BLOCK_KINDS = ("attention", "alternating")
_KEEP = dict(init=1, mult=1, lr_sgd=1, lr_adam=1)  # gains, biases: own init, base lr
_MUP_EMBED = dict(init=1, mult=1, lr_sgd="D", lr_adam=1)
_MUP_READOUT = dict(init=1, mult="1/D", lr_sgd="D", lr_adam=1)


def _mlu(alpha: float = 1.0) -> RoleTable:
    lr = "L*M*D/alpha^2"
    unit_in = dict(init="sqrt(D)", mult="1/D", lr_sgd=lr, lr_adam=1)
    unit_out = dict(init="sqrt(D)", mult=1, lr_sgd=lr, lr_adam=1)
    return RoleTable(
        "mlu", TRANSFORMER,
        role_rules(embed=_MUP_EMBED, pos=dict(), Q=unit_in, K=unit_in, V=unit_in, O=unit_out,
                   mlp_U=unit_in, mlp_V=unit_out, norm=_KEEP, norm_bias=_KEEP, readout=_MUP_READOUT),
        {"branch": "alpha/(L*M)", "logit": "r^-0.5"}, alpha=alpha,
        description="MLU transcription (theory.md §5), reference form: heads (Q, K, V, O) ~ N(0, D), "
        "q, k, v = (Q, K, V)^T h / D, logits / sqrt(r), branch alpha/(L M) (a mean over heads), "
        "SGD lr eta L M D / alpha^2", options={"alpha": alpha})


def _mlu_sqrt_heads(alpha: float = 1.0) -> RoleTable:
    """MLU with the heads aggregated by ``1/sqrt(M)`` instead of a mean (the contrast of
    theory.md §5 (c)): branch ``alpha/(L sqrt(M))`` and head lr ``eta L D / alpha^2`` keep the
    output's change per step as under MLU, while each head moves by ``M^-1/2``."""
    base = _mlu(alpha)
    lr = Monomial.parse("L*D/alpha^2")
    rules = {r: (replace(s, lr_sgd=lr) if r in ("Q", "K", "V", "O", "mlp_U", "mlp_V") else s)
             for r, s in base.rules.items()}
    return RoleTable("mlu-sqrt-heads", TRANSFORMER, rules, {"branch": "alpha/(L*M^0.5)", "logit": "r^-0.5"},
                     alpha=alpha, description="MLU with a 1/sqrt(M) head aggregation: branch "
                     "alpha/(L sqrt(M)), SGD lr eta L D / alpha^2 (heads move by M^-1/2)",
                     options={"alpha": alpha})


def _width_mup(depth_lr_sgd: str = "1", depth_lr_adam: str = "1") -> dict:
    """muP in width (heads M proportional to D; a head's output weights have fan-in M r_v)."""
    sgd = f"D*{depth_lr_sgd}"
    unit_in = dict(init=1, mult="D^-0.5", lr_sgd=sgd, lr_adam=f"D^-0.5*{depth_lr_adam}")
    return role_rules(
        embed=_MUP_EMBED, pos=dict(), Q=unit_in, K=unit_in, V=unit_in,
        O=dict(init=1, mult="(M*r_v)^-0.5", lr_sgd=sgd, lr_adam=f"(M*r_v)^-0.5*{depth_lr_adam}"),
        mlp_U=unit_in, mlp_V=dict(init=1, mult="M^-0.5", lr_sgd=sgd, lr_adam=f"M^-0.5*{depth_lr_adam}"),
        norm=_KEEP, norm_bias=_KEEP, readout=_MUP_READOUT)


def _mup(alpha: float = 1.0) -> RoleTable:
    return RoleTable("mup", TRANSFORMER, _width_mup(), {"branch": "alpha", "logit": "1/r"}, alpha=alpha,
                     description="muP (Tensor Programs V): 1/d_head attention logits, 1/sqrt(fan_in) "
                     "multipliers, no depth scaling", options={"alpha": alpha})


def _completep(alpha: float = 1.0) -> RoleTable:
    return RoleTable("completep", TRANSFORMER, _width_mup(depth_lr_sgd="L"),
                     {"branch": "alpha/L", "logit": "1/r"}, alpha=alpha,
                     description="CompleteP: 1/L branches, muP in width and logits; SGD hidden lr eta D L, "
                     "Adam hidden lr without depth factor", options={"alpha": alpha})


def _depth_mup(alpha: float = 1.0) -> RoleTable:
    return RoleTable("depth-mup", TRANSFORMER, _width_mup(depth_lr_adam="L^-0.5"),
                     {"branch": "alpha*L^-0.5", "logit": "1/r"}, alpha=alpha,
                     description="depth-muP: 1/sqrt(L) branches, muP in width and logits; Adam hidden "
                     "lr / sqrt(L)", options={"alpha": alpha})


def _standard(alpha: float = 1.0) -> RoleTable:
    fan_d = dict(init="D^-0.5")
    return RoleTable(
        "standard", TRANSFORMER,
        role_rules(embed=dict(init="d_in^-0.5"), pos=dict(), Q=fan_d, K=fan_d, V=fan_d,
                   O=dict(init="(M*r_v)^-0.5"), mlp_U=fan_d, mlp_V=dict(init="M^-0.5"), norm=_KEEP,
                   norm_bias=_KEEP, readout=fan_d),
        {"branch": "alpha", "logit": "r^-0.5"}, alpha=alpha,
        description="standard (PyTorch-like): init std 1/sqrt(fan_in), 1/sqrt(d_head) logits, "
        "multipliers 1, lr eta", options={"alpha": alpha})


TRANSFORMER_PRESETS: dict[str, Callable[..., RoleTable]] = {
    "mlu": _mlu, "mlu-sqrt-heads": _mlu_sqrt_heads, "mup": _mup, "completep": _completep,
    "depth-mup": _depth_mup, "standard": _standard,
}


def get_transformer_parameterization(name: str | RoleTable, **options: Any) -> RoleTable:
    """A Transformer preset by name (option ``alpha``), or a :class:`RoleTable` passed through."""
    if isinstance(name, RoleTable):
        if name.arch is not TRANSFORMER and name.arch != TRANSFORMER:
            raise ValueError(f"parameterization {name.name!r} is for {name.arch.name!r}, not transformer")
        return name
    if name not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown transformer parameterization {name!r}; presets: "
                         f"{', '.join(TRANSFORMER_PRESETS)}")
    bad = [k for k in options if k != "alpha"]
    if bad:
        raise ValueError(f"unknown option {bad[0]!r} for parameterization {name!r}; allowed: alpha")
    return TRANSFORMER_PRESETS[name](**{k: float(v) for k, v in options.items()})


class Transformer(nn.Module):
    """One Transformer of ``shape`` ``(L, M, D)`` under a Transformer parameterization.

    Weights are drawn from ``seed`` (one stream per tensor); with ``embed_seed``, ``W_e``,
    ``W_u`` and ``P`` are the first ``D`` rows of tensors of ``embed_dim_max`` rows drawn from
    it (coupled randomness across widths, as for the ResNet). ``norm``: ``None``, ``"layer"``
    or ``"rms"`` (pre-norm on every branch's input; outside the theory).
    """

    def __init__(self, shape: Shape | tuple | str, *, param: str | RoleTable = "mlu", d_in: int,
                 d_out: int, seq_len: int, r: int = 2, r_v: int = 2, blocks: str = "attention",
                 causal: bool = False, norm: str | None = None, activation: str = "tanh",
                 seed: int = 0, embed_seed: int | None = None, embed_dim_max: int | None = None,
                 positional: bool = True, train_embedding: bool = False, train_readout: bool = False,
                 dtype: str | torch.dtype = "float64") -> None:
        super().__init__()
        self.shape = Shape.parse(shape)
        self.param = get_transformer_parameterization(param)
        for name, v in (("d_in", d_in), ("d_out", d_out), ("seq_len", seq_len), ("r", r), ("r_v", r_v)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if blocks not in BLOCK_KINDS:
            raise ValueError(f"blocks must be one of {', '.join(BLOCK_KINDS)}, got {blocks!r}")
        self.d_in, self.d_out, self.T, self.r, self.r_v = d_in, d_out, seq_len, r, r_v
        self.blocks_kind, self.causal, self.norm_kind = blocks, bool(causal), norm
        self.positional = bool(positional)
        self.train_embedding, self.train_readout = bool(train_embedding), bool(train_readout)
        self.activation = get_activation(activation)
        self.dtype = resolve_dtype(dtype)
        self.seed = int(seed)
        L, M, D = self.shape.as_tuple()
        self.env = TRANSFORMER.env(self.shape, alpha=self.param.alpha, r=r, r_v=r_v, d_in=d_in,
                                   d_out=d_out, T=seq_len)
        self.scales = self.param.effective(self.env)
        mults = {k: e.multiplier for k, e in self.scales.items()}
        beta, logit = mults["branch"], mults["logit"]

        def draw(role: str, stream: int, *size: int) -> torch.Tensor:
            t = standard_normal(derive_seed(self.seed, stream), *size) * self.scales[role].init_std
            return t.to(self.dtype)

        if embed_seed is None:
            self.W_e = nn.Parameter(draw("embed", 1, D, d_in), requires_grad=self.train_embedding)
            self.W_u = nn.Parameter(draw("readout", 2, D, d_out), requires_grad=self.train_readout)
            P = draw("pos", 3, seq_len, D)
        else:
            d_max = D if embed_dim_max is None else int(embed_dim_max)
            if d_max < D:
                raise ValueError(f"embed_dim_max ({d_max}) must be >= D ({D})")
            e = int(embed_seed)
            W_e = standard_normal(derive_seed(e, 1), d_max, d_in)[:D] * self.scales["embed"].init_std
            W_u = standard_normal(derive_seed(e, 2), d_max, d_out)[:D] * self.scales["readout"].init_std
            P = standard_normal(derive_seed(e, 3), seq_len, d_max)[:, :D] * self.scales["pos"].init_std
            self.W_e = nn.Parameter(W_e.to(self.dtype), requires_grad=self.train_embedding)
            self.W_u = nn.Parameter(W_u.to(self.dtype), requires_grad=self.train_readout)
            P = P.to(self.dtype)
        self.P = nn.Parameter(P.contiguous() if self.positional else torch.zeros_like(P),
                              requires_grad=False)
        self.blocks = nn.ModuleList()
        for l in range(L):
            s = 100 + 10 * l
            if self.block_kind(l) == "attention":
                self.blocks.append(AttentionBlock(
                    draw("Q", s, M, D, r), draw("K", s + 1, M, D, r), draw("V", s + 2, M, D, r_v),
                    draw("O", s + 3, M, D, r_v), mults=mults, beta=beta, logit=logit,
                    causal=self.causal, norm=make_norm(norm, D, self.dtype)))
            else:
                self.blocks.append(MLPBlock(draw("mlp_U", s, D, M), draw("mlp_V", s + 1, D, M), mults=mults,
                                            beta=beta, activation=self.activation,
                                            norm=make_norm(norm, D, self.dtype)))

    def block_kind(self, l: int) -> str:
        return "attention" if self.blocks_kind == "attention" or l % 2 == 0 else "mlp"

    def mult(self, role: str) -> float:
        return self.scales[role].multiplier

    # --- roles by parameter name (the generic trainer's and param_groups' interface) ---------
    def roles(self) -> dict[str, str]:
        """Parameter name -> role name, every parameter."""
        out = {"W_e": "embed", "W_u": "readout", "P": "pos"}
        for l, block in enumerate(self.blocks):
            for name, _ in block.named_parameters():
                if name.startswith("norm."):
                    role = "norm" if name == "norm.weight" else "norm_bias"
                elif isinstance(block, AttentionBlock):
                    role = name
                else:
                    role = "mlp_" + name
                out[f"blocks.{l}.{name}"] = role
        return out

    def trained_roles(self) -> tuple[str, ...]:
        roles = ["Q", "K", "V", "O", "mlp_U", "mlp_V", "norm", "norm_bias"]
        if self.train_embedding:
            roles.insert(0, "embed")
        if self.train_readout:
            roles.append("readout")
        return tuple(roles)

    def learning_rates(self, optimizer: str = "gd", lr: float | torch.Tensor = 1.0) -> dict[str, Any]:
        """Parameter name -> learning rate ``lr * lr_role`` for every trained parameter."""
        family = optimizer_family(optimizer)
        trained = set(self.trained_roles())
        return {n: lr * self.scales[r].lr(family) for n, r in self.roles().items() if r in trained}

    # --- forward -----------------------------------------------------------------------
    def embed(self, X: torch.Tensor) -> torch.Tensor:
        X = torch.as_tensor(X, dtype=self.dtype)
        X = X.reshape(*X.shape[:-1], self.T, self.d_in) if X.shape[-1] == self.T * self.d_in else X
        if X.shape[-2:] != (self.T, self.d_in):
            raise ValueError(f"inputs must be (N, {self.T}, {self.d_in}) or (N, {self.T * self.d_in}), "
                             f"got {tuple(X.shape)}")
        return self.mult("embed") * torch.matmul(X, self.W_e.mT) + self.mult("pos") * self.P

    def forward(self, X: torch.Tensor, states: bool = False):
        """Outputs (N, d_out); with ``states=True`` a dict with ``y``, ``hidden`` (L+1, N, T, D)
        and ``h_last`` (N, T, D)."""
        h = self.embed(X)
        hidden = [h]
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        y = self.mult("readout") * torch.matmul(h.mean(dim=-2), self.W_u)
        if states:
            return {"y": y, "hidden": torch.stack(hidden), "h_last": h}
        return y

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, param={self.param.name}, r={self.r}, r_v={self.r_v}, "
                f"T={self.T}, blocks={self.blocks_kind}, causal={self.causal}, norm={self.norm_kind}")

