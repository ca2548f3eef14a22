"""Parameterizations as data: per-role scaling rules and pure functions that evaluate them.

The forward pass of every reslim network is written with *effective* scales::

    h_0     = m_e  W_e x                                   W_e ~ s_e  N(0, 1), (D, d_in)
    p_l     = m_U  U_l^T h_l                               U_l ~ s_U  N(0, 1), (D, M)
    h_{l+1} = h_l + beta * m_V V_l sigma(p_l)              V_l ~ s_V  N(0, 1), (D, M)
    (one-layer blocks:  h_{l+1} = h_l + beta * m_W W_l sigma(h_l),  W_l ~ s_W N(0, 1), (D, D))
    y       = m_u  W_u^T h_L                               W_u ~ s_u  N(0, 1), (D, d_out)

and every role ``r`` in ``embed, U, V, W, readout`` trains with learning rate
``base_lr * lr_r`` (``lr_r`` differs for SGD-like and Adam-like optimizers). Each scale is a
:class:`Monomial` in ``L, M, D, d_in, d_out, alpha``. Nothing is stored on tensors: a
:class:`Parameterization` is a frozen value, evaluated for a shape by :meth:`effective`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from .architecture import RESNET
from .monomial import Monomial
from .shapes import Shape

#: the ResNet's roles and block types, as its :data:`RESNET` architecture declares them
ROLES = RESNET.role_names
BLOCK_ROLES = dict(RESNET.blocks)


@dataclass(frozen=True)
class RoleScaling:
    """Scaling rules of one weight role: init std, forward multiplier, SGD and Adam lr factors."""

    init: Monomial = Monomial()
    mult: Monomial = Monomial()
    lr_sgd: Monomial = Monomial()
    lr_adam: Monomial = Monomial()

    @classmethod
    def of(cls, init: Any = 1, mult: Any = 1, lr_sgd: Any = 1, lr_adam: Any = 1) -> RoleScaling:
        return cls(*(Monomial.parse(v) for v in (init, mult, lr_sgd, lr_adam)))


@dataclass(frozen=True)
class EffectiveScales:
    """A role's rules evaluated at one shape: plain floats."""

    init_std: float
    multiplier: float
    lr_sgd: float
    lr_adam: float

    def lr(self, optimizer_family: str) -> float:
        return self.lr_adam if optimizer_family == "adam" else self.lr_sgd


@dataclass(frozen=True)
class Parameterization:
    """Named set of scaling rules for every weight role plus the branch multiplier ``beta``.

    ``alpha`` is the constant of docs/theory.md §1 (1 by default); rules may use it as a symbol.
    """

    name: str
    roles: Mapping[str, RoleScaling]
    branch: Monomial
    alpha: float = 1.0
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
        for role in ("embed", "readout"):
            if role not in self.roles:
                raise ValueError(f"parameterization {self.name!r} has no rule for role {role!r}")
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __reduce__(self):
        # mapping proxies cannot be pickled or deep-copied: rebuild from plain dicts
        return (Parameterization, (self.name, dict(self.roles), self.branch, self.alpha,
                                   self.description, dict(self.options)))

    def supports(self, block: str) -> bool:
        return all(r in self.roles for r in BLOCK_ROLES[block])

    def check_block(self, block: str) -> None:
        if block not in BLOCK_ROLES:
            raise ValueError(f"block must be one of {', '.join(BLOCK_ROLES)}, got {block!r}")
        missing = [r for r in BLOCK_ROLES[block] if r not in self.roles]
        if missing:
            raise ValueError(
                f"parameterization {self.name!r} has no rule for role {missing[0]!r}, "
                f"needed by {block} blocks"
            )

    def symbols(self, shape: Shape, d_in: int, d_out: int) -> dict[str, float]:
        return RESNET.env(shape, alpha=self.alpha, d_in=d_in, d_out=d_out)

    def effective(self, shape: Shape, d_in: int, d_out: int) -> dict[str, EffectiveScales]:
        """Evaluate every role at ``shape``; key ``"branch"`` holds beta in ``multiplier``."""
        env = self.symbols(shape, d_in, d_out)
        out = {
            role: EffectiveScales(r.init(**env), r.mult(**env), r.lr_sgd(**env), r.lr_adam(**env))
            for role, r in self.roles.items()
        }
        out["branch"] = EffectiveScales(1.0, self.branch(**env), 0.0, 0.0)
        return out

    def with_role(self, role: str, **rules: Any) -> Parameterization:
        """A copy where role ``role`` has some rules replaced (strings, numbers or Monomials)."""
        if role == "branch":
            (rule,) = rules.values()
            return replace(self, branch=Monomial.parse(rule))
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        base = self.roles.get(role, RoleScaling())
        new = replace(base, **{k: Monomial.parse(v) for k, v in rules.items()})
        return replace(self, roles={**self.roles, role: new})

    def rows(self, shape: Shape, d_in: int, d_out: int, base_lr: float = 1.0,
             block: str = "two-layer") -> list[dict[str, Any]]:
        """One row per tensor: the effective init std, multiplier and learning rates."""
        self.check_block(block)
        eff = self.effective(shape, d_in, d_out)
        env = self.symbols(shape, d_in, d_out)
        rows = []
        for role in ("embed", *BLOCK_ROLES[block], "readout"):
            info = RESNET.role(role)
            tensor, dims = info.tensor, [int(env[d]) if isinstance(d, str) else d for d in info.dims]
            r, e = self.roles[role], eff[role]
            rows.append({
                "tensor": tensor, "role": role, "shape": "x".join(map(str, dims)),
                "init_std": e.init_std, "multiplier": e.multiplier,
                "lr_sgd": base_lr * e.lr_sgd, "lr_adam": base_lr * e.lr_adam,
                "init_rule": str(r.init), "mult_rule": str(r.mult),
                "lr_sgd_rule": str(r.lr_sgd), "lr_adam_rule": str(r.lr_adam),
            })
        rows.append({"tensor": "(branch)", "role": "branch", "shape": "",
                     "init_std": float("nan"), "multiplier": eff["branch"].multiplier,
                     "lr_sgd": float("nan"), "lr_adam": float("nan"), "init_rule": "",
                     "mult_rule": str(self.branch), "lr_sgd_rule": "", "lr_adam_rule": ""})
        return rows


# ----------------------------------------------------------------------------------------
# Presets (docs/theory.md §1). Unit-variance forms unless stated; rules are reconstructions from
# the papers and are checked by the coordinate check (docs/parameterizations.md).
# ----------------------------------------------------------------------------------------

_MUP_EMBED = RoleScaling.of(init=1, mult=1, lr_sgd="D", lr_adam=1)
_MUP_READOUT = RoleScaling.of(init=1, mult="1/D", lr_sgd="D", lr_adam=1)


def _mlu(alpha: float = 1.0, embed_init: Any = 1, readout_init: Any = 1) -> Parameterization:
    """MLU, reference form of docs/theory.md §1 (the paper's code): U, V ~ N(0, D), lr eta L M D/alpha^2."""
    unit = RoleScaling.of(init="sqrt(D)", mult="1/D", lr_sgd="L*M*D/alpha^2", lr_adam=1)
    return Parameterization(
        name="mlu",
        roles={
            "embed": replace(_MUP_EMBED, init=Monomial.parse(embed_init)),
            "U": unit,
            "V": replace(unit, mult=Monomial()),
            "readout": replace(_MUP_READOUT, init=Monomial.parse(readout_init)),
        },
        branch=Monomial.parse("alpha/(L*M)"),
        alpha=alpha,
        description="maximal local update (MLU, Chaintron et al. 2026), reference form: U, V ~ N(0, D), "
        "p = U^T h / D, branch alpha/(L M), readout 1/D, SGD lr eta L M D / alpha^2",
        options={"alpha": alpha, "embed_init": str(embed_init), "readout_init": str(readout_init)},
    )


def _mlu_unit(alpha: float = 1.0, embed_init: Any = 1, readout_init: Any = 1) -> Parameterization:
    """MLU, unit-variance form: identical trajectories to :func:`_mlu`."""
    return Parameterization(
        name="mlu-unit",
        roles={
            "embed": replace(_MUP_EMBED, init=Monomial.parse(embed_init)),
            "U": RoleScaling.of(init=1, mult="D^-0.5", lr_sgd="L*M/alpha^2", lr_adam="D^-0.5"),
            "V": RoleScaling.of(init=1, mult=1, lr_sgd="L*M/alpha^2", lr_adam="D^-0.5"),
            "readout": replace(_MUP_READOUT, init=Monomial.parse(readout_init)),
        },
        branch=Monomial.parse("alpha*sqrt(D)/(L*M)"),
        alpha=alpha,
        description="MLU, unit-variance form: branch alpha sqrt(D)/(L M), U multiplier "
        "1/sqrt(D), SGD lr eta L M / alpha^2",
        options={"alpha": alpha, "embed_init": str(embed_init), "readout_init": str(readout_init)},
    )


def _width_mup_blocks(depth_lr_adam: str, u_lr_factor: str = "1",
                      depth_lr_sgd: str = "1") -> dict[str, RoleScaling]:
    """muP in width (rules assume M proportional to D, as the muP literature does)."""
    sgd = f"D*{depth_lr_sgd}"
    return {
        "embed": _MUP_EMBED,
        "U": RoleScaling.of(init=1, mult="D^-0.5", lr_sgd=f"{sgd}*{u_lr_factor}",
                            lr_adam=f"D^-0.5*{depth_lr_adam}*{u_lr_factor}"),
        "V": RoleScaling.of(init=1, mult="M^-0.5", lr_sgd=sgd, lr_adam=f"M^-0.5*{depth_lr_adam}"),
        "W": RoleScaling.of(init=1, mult="D^-0.5", lr_sgd=sgd, lr_adam=f"D^-0.5*{depth_lr_adam}"),
        "readout": _MUP_READOUT,
    }


def _completep(alpha: float = 1.0) -> Parameterization:
    return Parameterization(
        name="completep", roles=_width_mup_blocks("1", depth_lr_sgd="L"),
        branch=Monomial.parse("alpha/L"), alpha=alpha,
        description="CompleteP: 1/L branches, muP in width; SGD hidden lr eta D L "
        "(L^(2a-1) at a = 1), Adam hidden lr without depth factor",
        options={"alpha": alpha})


def _depth_mup(alpha: float = 1.0) -> Parameterization:
    return Parameterization(
        name="depth-mup", roles=_width_mup_blocks("L^-0.5"),
        branch=Monomial.parse("alpha*L^-0.5"), alpha=alpha,
        description="depth-muP: 1/sqrt(L) branches, muP in width; Adam hidden lr / sqrt(L)",
        options={"alpha": alpha})


def _depth_mup_corrected(alpha: float = 1.0, correction: float = 0.5,
                         balance: float = 0.0) -> Parameterization:
    """depth-muP with the depth-aware correction (docs/depth.md, "The depth-aware correction, pinned down").

    ``correction = c``: the first internal layer's (U role's) lr times ``L^c``, for SGD and Adam.
    ``balance = b``: the second internal layer's (V role's) init std times ``L^-b`` and, for SGD
    only, the U lr times a further ``L^b`` (a smaller V also shrinks the gradient reaching U by
    ``L^-b``; Adam's normalised step does not see it). A power count and the measurement give,
    per step, the first layer's own feature update ``~ L^(c - 1/2)`` and its share of the function
    update ``~ L^(c - b)``: no ``c`` keeps both flat at ``b = 0``; ``c = b = 1/2`` keeps both (and
    the second layer's share) flat, and is CompleteP's scaling written in depth-muP coordinates.
    """
    roles = _width_mup_blocks("L^-0.5", f"L^{correction}")
    if balance != 0:
        roles["V"] = replace(roles["V"], init=roles["V"].init * Monomial.parse(f"L^{-balance}"))
        roles["U"] = replace(roles["U"], lr_sgd=roles["U"].lr_sgd * Monomial.parse(f"L^{balance}"))
    extra = f", V init times L^-{balance} (SGD U lr times L^{correction + balance})" if balance else ""
    return Parameterization(
        name="depth-mup-corrected", roles=roles,
        branch=Monomial.parse("alpha*L^-0.5"), alpha=alpha,
        description=f"depth-muP with a depth-aware correction (after Yao, Wu & Gao, arXiv 2512.21075): "
        f"the first internal layer's lr times L^{correction}{extra}",
        options={"alpha": alpha, "correction": correction, "balance": balance})


def _mup(alpha: float = 1.0) -> Parameterization:
    return Parameterization(
        name="mup", roles=_width_mup_blocks("1"), branch=Monomial.parse("alpha"), alpha=alpha,
        description="muP in width, no depth scaling of the branches", options={"alpha": alpha})


def _ntk(alpha: float = 1.0) -> Parameterization:
    return Parameterization(
        name="ntk",
        roles={
            "embed": RoleScaling.of(),
            "U": RoleScaling.of(init=1, mult="D^-0.5"),
            "V": RoleScaling.of(init=1, mult="M^-0.5"),
            "W": RoleScaling.of(init=1, mult="D^-0.5"),
            "readout": RoleScaling.of(init=1, mult="D^-0.5"),
        },
        branch=Monomial.parse("alpha*L^-0.5"), alpha=alpha,
        description="NTK: 1/sqrt(fan_in) multipliers everywhere, 1/sqrt(L) branches, lr eta",
        options={"alpha": alpha})


def _standard(alpha: float = 1.0) -> Parameterization:
    return Parameterization(
        name="standard",
        roles={
            "embed": RoleScaling.of(init="d_in^-0.5"),
            "U": RoleScaling.of(init="D^-0.5"),
            "V": RoleScaling.of(init="M^-0.5"),
            "W": RoleScaling.of(init="D^-0.5"),
            "readout": RoleScaling.of(init="D^-0.5"),
        },
        branch=Monomial.parse("alpha"), alpha=alpha,
        description="standard (PyTorch-like): init std 1/sqrt(fan_in), multipliers 1, lr eta",
        options={"alpha": alpha})


PRESETS: dict[str, Callable[..., Parameterization]] = {
    "mlu": _mlu,
    "mlu-unit": _mlu_unit,
    "completep": _completep,
    "depth-mup": _depth_mup,
    "depth-mup-corrected": _depth_mup_corrected,
    "mup": _mup,
    "ntk": _ntk,
    "standard": _standard,
}


def get_parameterization(name: str | Parameterization, **options: Any) -> Parameterization:
    """A preset by name (with its options, e.g. ``alpha`` or ``correction``), or pass-through."""
    if isinstance(name, Parameterization):
        if options:
            raise ValueError("options are only accepted with a preset name")
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown parameterization {name!r}; presets: {', '.join(PRESETS)}")
    import inspect

    params = inspect.signature(PRESETS[name]).parameters
    for key, value in options.items():  # a numeric option given text: say so, not the rule it would make
        numeric = key in params and params[key].annotation in (float, "float")
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"option {key!r} of parameterization {name!r} must be a number, got {value!r}")
    try:
        return PRESETS[name](**options)
    except TypeError:
        import inspect

        allowed = list(inspect.signature(PRESETS[name]).parameters)
        bad = [k for k in options if k not in allowed]
        raise ValueError(
            f"unknown option {bad[0] if bad else options!r} for parameterization {name!r}; "
            f"allowed: {', '.join(allowed)}"
        ) from None


def optimizer_family(optimizer: str) -> str:
    """``"adam"`` for Adam-like optimizers (lr acts on normalised updates), else ``"sgd"``."""
    return "adam" if optimizer.lower() in {"adam", "adamw"} else "sgd"
