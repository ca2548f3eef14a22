"""Architectures as data: the roles a block family declares, its size symbols, and
parameterizations written as tables keyed by role name.

An :class:`Architecture` names every weight role of a network family with its *kind*::

    embed     input embedding (W_e)                 readout   output map (W_u)
    input     a unit's input weights (U; Q, K, V)   output    a unit's output weights (V; O),
                                                              which carry the branch multiplier
    frozen    never trained (a positional table)    gain, bias, keep   the module's own init
                                                              (LayerNorm gains stay ones)

its size symbols (``L, M, D`` plus fixed sizes such as the head dimensions ``r, r_v``), its
tensor-free scalars (``branch``: beta; ``logit``: the attention-logit factor) and each
role's tensor dimensions in those symbols. A :class:`RoleTable` is a parameterization of one
architecture: a :class:`RoleScaling` per role name plus a :class:`Monomial` per scalar, and
nothing else; ``effective`` evaluates it at a shape and ``rows`` is what
``reslim describe`` prints. Nothing is stored on tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .monomial import Monomial
from .parameterization import EffectiveScales, RoleScaling
from .shapes import Shape

KINDS = ("embed", "input", "output", "readout", "frozen", "gain", "bias", "keep")
#: kinds whose tensors keep the module's own initialisation (ones for gains, zeros for biases)
OWN_INIT = ("gain", "bias", "keep")


@dataclass(frozen=True)
class Role:
    """One weight role: name, kind (:data:`KINDS`), the tensor it names, its dimensions."""

    name: str
    kind: str
    tensor: str
    dims: tuple[str | int, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"role {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def own_init(self) -> bool:
        return self.kind in OWN_INIT


@dataclass(frozen=True)
class Architecture:
    """A network family: its roles, size symbols and tensor-free scalars."""

    name: str
    roles: tuple[Role, ...]
    symbols: tuple[str, ...] = ("L", "M", "D")
    sizes: tuple[str, ...] = ()  # fixed sizes that rules may use (head dimensions r, r_v)
    scalars: tuple[str, ...] = ("branch",)
    doc: str = ""

    def __post_init__(self) -> None:
        names = [r.name for r in self.roles]
        if len(set(names)) != len(names):
            raise ValueError(f"architecture {self.name!r} declares a role twice")

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles)

    def role(self, name: str) -> Role:
        for r in self.roles:
            if r.name == name:
                return r
        raise ValueError(f"architecture {self.name!r} has no role {name!r}; "
                         f"roles: {', '.join(self.role_names)}")

    def env(self, shape: Shape, *, alpha: float = 1.0, **sizes: float) -> dict[str, float]:
        """Symbol values at ``shape`` (``L, M, D``), with ``alpha`` and the fixed sizes given."""
        env: dict[str, float] = {"L": shape.L, "M": shape.M, "D": shape.D, "alpha": alpha}
        for k, v in sizes.items():
            if v is not None:
                env[k] = v
        return env


@dataclass(frozen=True)
class RoleTable:
    """A parameterization of ``arch`` as data: one rule row per role name, one per scalar."""

    name: str
    arch: Architecture
    rules: Mapping[str, RoleScaling]
    scalars: Mapping[str, Monomial]
    alpha: float = 1.0
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(self.arch.role_names)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)} for architecture {self.arch.name!r}; "
                             f"roles are {', '.join(self.arch.role_names)}")
        missing = [r for r in self.arch.role_names if r not in self.rules]
        if missing:
            raise ValueError(f"parameterization {self.name!r} has no rule for role {missing[0]!r}")
        bad = set(self.scalars) ^ set(self.arch.scalars)
        if bad:
            raise ValueError(f"parameterization {self.name!r} must give the scalars "
                             f"{', '.join(self.arch.scalars)} (got {', '.join(self.scalars)})")
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "scalars", MappingProxyType({k: Monomial.parse(v)
                                                              for k, v in self.scalars.items()}))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __reduce__(self):
        return (RoleTable, (self.name, self.arch, dict(self.rules), dict(self.scalars), self.alpha,
                            self.description, dict(self.options)))

    @property
    def roles(self) -> Mapping[str, RoleScaling]:
        """The rule rows by role name (the interface :func:`reslim.param_groups` reads)."""
        return self.rules

    @property
    def branch(self) -> Monomial:
        return self.scalars["branch"]

    def effective(self, env: Mapping[str, float]) -> dict[str, EffectiveScales]:
        """Every role at the symbol values ``env``; scalars in ``multiplier`` of their own key."""
        out = {}
        for role, r in self.rules.items():
            out[role] = EffectiveScales(
                _ev(r.init, env, f"{role} init"), _ev(r.mult, env, f"{role} multiplier"),
                _ev(r.lr_sgd, env, f"{role} SGD lr"), _ev(r.lr_adam, env, f"{role} Adam lr"))
        for name, m in self.scalars.items():
            out[name] = EffectiveScales(1.0, _ev(m, env, name), 0.0, 0.0)
        return out

    def rows(self, env: Mapping[str, float], base_lr: float = 1.0) -> list[dict[str, Any]]:
        """One row per role (then one per scalar): tensor, dims, effective init std (NaN where the
        module's own init is kept), multiplier, learning rates and the rules."""
        eff = self.effective(env)
        rows = []
        for role in self.arch.roles:
            r, e = self.rules[role.name], eff[role.name]
            dims = "x".join(str(int(env[d])) if isinstance(d, str) and d in env else str(d)
                            for d in role.dims)
            rows.append({
                "tensor": role.tensor, "role": role.name, "kind": role.kind, "shape": dims,
                "init_std": math.nan if role.own_init else e.init_std, "multiplier": e.multiplier,
                "lr_sgd": base_lr * e.lr_sgd, "lr_adam": base_lr * e.lr_adam,
                "init_rule": "(own init)" if role.own_init else str(r.init), "mult_rule": str(r.mult),
                "lr_sgd_rule": str(r.lr_sgd), "lr_adam_rule": str(r.lr_adam),
            })
        for name in self.arch.scalars:
            rows.append({"tensor": f"({name})", "role": name, "kind": "scalar", "shape": "",
                         "init_std": math.nan, "multiplier": eff[name].multiplier,
                         "lr_sgd": math.nan, "lr_adam": math.nan, "init_rule": "",
                         "mult_rule": str(self.scalars[name]), "lr_sgd_rule": "", "lr_adam_rule": ""})
        return rows


def _ev(rule: Monomial, env: Mapping[str, float], what: str) -> float:
    try:
        return float(rule(**env))
    except ValueError:
        missing = [s for s, _ in rule.powers if s not in env]
        raise ValueError(f"{missing[0] if missing else 'a symbol'} is needed by the {what} rule {rule}; "
                         f"give it") from None


def role_rules(**rows: Any) -> dict[str, RoleScaling]:
    """``role_rules(Q=dict(init=..., mult=...), ...)``: RoleScaling rows from plain dicts."""
    return {name: v if isinstance(v, RoleScaling) else RoleScaling.of(**v) for name, v in rows.items()}


#: The built-in MLP-block ResNet (docs/theory.md §1): ``U`` (two-layer blocks) and ``W``
#: (one-layer blocks) are a block's input, ``V`` and ``W`` carry the branch multiplier.
RESNET = Architecture(
    name="resnet",
    roles=(
        Role("embed", "embed", "W_e", ("D", "d_in"), "input embedding"),
        Role("U", "input", "U", ("L", "D", "M"), "two-layer block input weights"),
        Role("V", "output", "V", ("L", "D", "M"), "two-layer block output weights"),
        Role("W", "output", "W", ("L", "D", "D"), "one-layer block weights"),
        Role("readout", "readout", "W_u", ("D", "d_out"), "readout"),
    ),
    symbols=("L", "M", "D"),
    sizes=("d_in", "d_out"),
    scalars=("branch",),
    doc="residual network with perceptron blocks (theory.md §1)",
)

#: Roles every parameterization accepts for a user's module, beyond its architecture's: the
#: module's own initialisation, multiplier 1 and the base learning rate.
EXTRA_ROLES = (
    Role("keep", "keep", "(any)", (), "left alone: own init, base lr"),
    Role("bias", "bias", "(any bias)", (), "a bias: own init, base lr"),
    Role("norm", "gain", "(a norm gain)", (), "a LayerNorm/RMSNorm gain: own init (ones), base lr"),
)


def architecture_of(param: Any) -> Architecture:
    """The architecture of a parameterization: a :class:`RoleTable`'s own, else the ResNet's."""
    return param.arch if isinstance(param, RoleTable) else RESNET


def role_info(param: Any, role: str) -> Role:
    """The :class:`Role` named ``role`` for ``param`` (its architecture's, or an extra role)."""
    for r in (*architecture_of(param).roles, *EXTRA_ROLES):
        if r.name == role:
            return r
    raise ValueError(f"unknown role {role!r}")


def allowed_roles(param: Any) -> tuple[str, ...]:
    """Role names a user may map parameters to under ``param``."""
    names = list(architecture_of(param).role_names)
    names += [r.name for r in EXTRA_ROLES if r.name not in names]
    return tuple(names)
