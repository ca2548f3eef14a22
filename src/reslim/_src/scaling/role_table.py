"""Parameterizations of any :class:`Architecture` as tables keyed by role name.

A :class:`RoleTable` is one :class:`RoleScaling` row per role of its architecture plus a
:class:`Monomial` per tensor-free scalar (``branch``, ``logit``), and nothing else;
``effective`` evaluates it at symbol values (``Architecture.env``) and ``rows`` is what
``reslim describe`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .architecture import EXTRA_ROLES, RESNET, Architecture, Role
from .monomial import Monomial
from .parameterization import EffectiveScales, RoleScaling


@dataclass(frozen=True)
class RoleTable:
    """A parameterization of ``arch`` as data: one rule row per role name, one per scalar."""

    name: str
    arch: Architecture
    rules: Mapping[str, RoleScaling]
    scalars: Mapping[str, Any]  # Monomials (or rules they parse from)
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


def architecture_of(param: Any) -> Architecture:
    """The architecture of a parameterization: a :class:`RoleTable`'s own, else the ResNet's."""
    return param.arch if isinstance(param, RoleTable) else RESNET


BIAS_OF = "bias:"


def bias_parent(role: str) -> str | None:
    """``"O"`` for ``"bias:O"`` (the bias of an output role's map), else None."""
    return role[len(BIAS_OF):] if role.startswith(BIAS_OF) else None


def role_info(param: Any, role: str) -> Role:
    """The :class:`Role` named ``role`` for ``param`` (its architecture's, or an extra role).

    ``"bias:X"`` for an output role ``X`` is the bias of ``X``'s map, i.e. one more column of
    ``X`` whose input is the constant 1: ``X``'s multiplier, the branch and ``X``'s learning
    rate; the module's own init (kind ``bias``)."""
    parent = bias_parent(role)
    if parent is not None:
        p = role_info(param, parent)
        if p.kind != "output":
            raise ValueError(f"role {role!r}: only an output role's bias is defined, {parent!r} is "
                             f"{p.kind!r} (map it to 'bias' for the base rate and no multiplier)")
        return Role(role, "bias", f"{p.tensor} bias", (), f"bias of {parent}'s map: its multiplier, "
                    "branch and learning rate, own init")
    for r in (*architecture_of(param).roles, *EXTRA_ROLES):
        if r.name == role:
            return r
    raise ValueError(f"unknown role {role!r}")


def allowed_roles(param: Any) -> tuple[str, ...]:
    """Role names a user may map parameters to under ``param`` (``bias:X`` for output roles)."""
    arch = architecture_of(param)
    names = list(arch.role_names)
    names += [r.name for r in EXTRA_ROLES if r.name not in names]
    names += [BIAS_OF + r.name for r in arch.roles if r.kind == "output"]
    return tuple(names)
