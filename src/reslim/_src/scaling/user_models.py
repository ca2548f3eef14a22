"""Parameterizations for users' own residual ``nn.Module``s: ``torch.optim`` param groups, an
init function and the forward multipliers, from a mapping of parameter names to roles.

A user's residual network has the roles of docs/theory.md §1::

    h_0 = m_e W_e x;  p_l = m_U U_l^T h_l;  h_{l+1} = h_l + beta m_V V_l sigma(p_l);  y = m_u W_u^T h_L

(one-layer blocks: ``h_{l+1} = h_l + beta m_W W_l sigma(h_l)``). :func:`param_groups` evaluates
a :class:`Parameterization` at the user's shape ``(L, M, D)`` and returns a
:class:`ParamGroups` value: one ``torch.optim`` group per role with
``lr = base_lr * lr_rule(role)``, ``init`` drawing each tensor i.i.d. ``N(0, init_std(role)^2)``,
and the multipliers ``m_r`` and ``beta`` that the module's ``forward`` must apply itself.

The role metadata is a mapping keyed by parameter *name*, never stored on tensors: it survives
``copy.deepcopy``, ``state_dict`` round trips and ``torch.compile`` (``_orig_mod.`` prefixes
are ignored); :meth:`ParamGroups.bind` rebuilds the groups for any module with the same names.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.transformer import get_transformer_parameterization
from .parameterization import ROLES, Parameterization, RoleScaling, get_parameterization, optimizer_family
from .role_table import RoleTable, allowed_roles, bias_parent, role_info
from .shapes import Shape
from .user_roles import Scaled, check_shape, forward_scales, infer_shape
from .user_roles import clean_name as _clean

_OPTIMIZERS = ("sgd", "gd", "adam", "adamw")
ARCHS = ("resnet", "transformer")


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {_clean(n): p for n, p in model.named_parameters()}


def _matcher(pattern: str) -> Callable[[str], bool]:
    """``re:<regex>`` (full match), a glob (``*``, ``?``, ``[..]``) or an exact name."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"roles keys must be non-empty strings, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as err:
            raise ValueError(f"roles pattern {pattern!r} is not a valid regex: {err}") from None
        return lambda name: rx.fullmatch(name) is not None
    return lambda name: name == pattern or fnmatch.fnmatchcase(name, pattern)


def assign_roles(model: nn.Module, roles: Mapping[str, str],
                 allowed: Iterable[str] = ROLES) -> dict[str, str]:
    """Map every parameter name of ``model`` to a role with the patterns of ``roles``.

    Errors (ValueError, naming the culprit): a parameter no pattern matches, a parameter two
    patterns give different roles, a pattern that matches nothing, an unknown role.
    """
    if not isinstance(roles, Mapping) or not roles:
        raise ValueError("roles must be a non-empty mapping {name pattern: role}")
    allowed = tuple(allowed)
    for pattern, role in roles.items():
        if role not in allowed:
            raise ValueError(f"roles[{pattern!r}] = {role!r} is not a role; roles are {', '.join(allowed)}")
    matchers = [(pattern, _matcher(pattern), role) for pattern, role in roles.items()]
    used = {pattern: False for pattern in roles}
    out: dict[str, str] = {}
    for name in _named(model):
        hits = [(pattern, role) for pattern, match, role in matchers if match(name)]
        if not hits:
            raise ValueError(f"parameter {name!r} matches no role pattern; map it in roles= "
                             f"(patterns: {', '.join(map(repr, roles))})")
        found = {role for _, role in hits}
        if len(found) > 1:
            raise ValueError(f"parameter {name!r} matches patterns of different roles: "
                             + ", ".join(f"{p!r} -> {r}" for p, r in hits))
        for pattern, _ in hits:
            used[pattern] = True
        out[name] = hits[0][1]
    unused = [p for p, u in used.items() if not u]
    if unused:
        raise ValueError(f"roles pattern {unused[0]!r} matches no parameter of the model")
    return out


@dataclass(frozen=True)
class ParamGroups:
    """What :func:`param_groups` returns. Unpacks as ``groups, init = param_groups(...)``.

    - ``groups``: list of ``torch.optim`` param groups ``{"params", "lr", "role", "names"}``,
      one per trained role, parameters in the module's order;
    - ``roles``: parameter name -> role (every parameter of the module);
    - ``multipliers``: role -> forward multiplier ``m_r``, and ``"branch"`` -> ``beta``;
    - ``init_std``, ``lr``: role -> init std, role -> group learning rate;
    - ``parameterization``, ``shape``, ``optimizer``: what they were computed for.
    """

    groups: list[dict[str, Any]]
    roles: dict[str, str]
    multipliers: dict[str, float]
    init_std: dict[str, float]
    lr: dict[str, float]
    trained: tuple[str, ...]
    parameterization: Parameterization
    shape: Shape
    optimizer: str

    def __deepcopy__(self, memo: dict) -> ParamGroups:
        # the Parameterization is an immutable value (and holds mapping proxies): share it
        return ParamGroups(
            groups=copy.deepcopy(self.groups, memo), roles=dict(self.roles),
            multipliers=dict(self.multipliers), init_std=dict(self.init_std), lr=dict(self.lr),
            trained=self.trained, parameterization=self.parameterization, shape=self.shape,
            optimizer=self.optimizer)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.groups, self.init))

    def __repr__(self) -> str:
        """Roles, learning rates, multipliers and init stds as numbers; parameters by name and
        count, never their tensors."""
        counts: dict[str, int] = {}
        for role in self.roles.values():
            counts[role] = counts.get(role, 0) + 1

        def fmt(d: Mapping[str, float]) -> str:
            return "{" + ", ".join(f"{k}: {v:.4g}" for k, v in d.items()) + "}"

        params = ", ".join(f"{r}: {n}" for r, n in counts.items())
        return (f"ParamGroups(param={self.parameterization.name!r}, shape={self.shape}, "
                f"optimizer={self.optimizer!r}, trained={list(self.trained)}, "
                f"parameters={{{params}}}, lr={fmt(self.lr)}, multipliers={fmt(self.multipliers)}, "
                f"init_std={fmt(self.init_std)})")

    @property
    def branch(self) -> float:
        """The branch multiplier ``beta``."""
        return self.multipliers["branch"]

    def mult(self, role: str) -> float:
        """Forward multiplier of ``role`` (``"branch"`` for ``beta``)."""
        if role not in self.multipliers:
            raise ValueError(f"no multiplier for role {role!r}; known: {', '.join(self.multipliers)}")
        return self.multipliers[role]

    def _check_names(self, named: dict[str, nn.Parameter]) -> None:
        missing = [n for n in self.roles if n not in named]
        extra = [n for n in named if n not in self.roles]
        if missing:
            raise ValueError(f"model has no parameter {missing[0]!r} (the role map was built for "
                             f"another module)")
        if extra:
            raise ValueError(f"parameter {extra[0]!r} has no role in this role map")

    def bind(self, model: nn.Module) -> list[dict[str, Any]]:
        """The same groups for another module with the same parameter names (a deep copy, a
        model loaded from a state_dict, ``torch.compile(model)``)."""
        named = _named(model)
        self._check_names(named)
        groups = []
        for role in self.trained:
            names = [n for n in named if self.roles[n] == role]
            groups.append({"params": [named[n] for n in names], "lr": self.lr[role], "role": role,
                           "names": names})
        return groups

    def trained_names(self) -> list[str]:
        """Names of the parameters in the groups (the trained roles), in the module's order."""
        return [n for n, r in self.roles.items() if r in self.trained]

    def forward_scales(self, logit_in_forward: float = 1.0) -> dict[str, float]:
        """Parameter name -> factor applied to it in the forward call: the role's multiplier,
        times ``beta`` on output roles, times the logit factor on queries (see
        :mod:`reslim._src.scaling.user_roles`)."""
        return forward_scales(self, logit_in_forward)

    def scaled(self, model: nn.Module, logit_in_forward: float = 1.0) -> nn.Module:
        """``model`` with every forward multiplier applied to its parameters on each call: its
        ``forward`` stays as written (no multipliers in it); train the returned module with
        ``torch.optim`` on :attr:`groups`."""
        self._check_names(_named(model))
        return Scaled(model, self.forward_scales(logit_in_forward))

    @torch.no_grad()
    def init(self, model: nn.Module, seed: int | None = None) -> nn.Module:
        """Draw every mapped parameter of ``model`` i.i.d. ``N(0, init_std(role)^2)`` in place
        (on the CPU from a generator seeded by ``seed``, then copied: device-independent).
        Parameters of own-init roles (``keep``, ``bias``, ``norm`` and a table's gains and
        biases) keep their values."""
        named = _named(model)
        self._check_names(named)
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        for name, p in named.items():
            if role_info(self.parameterization, self.roles[name]).own_init:
                continue  # gains, biases, "keep": the module's own values stay
            std = self.init_std[self.roles[name]]
            draw = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
            p.copy_(draw.to(device=p.device, dtype=p.dtype))
        return model


def param_groups(
    model: nn.Module,
    parameterization: str | Parameterization | RoleTable,
    *,
    roles: Mapping[str, str],
    lr: float,
    shape: Shape | tuple[int, int, int] | str | None = None,
    optimizer: str = "sgd",
    d_in: int | None = None,
    d_out: int | None = None,
    train: Iterable[str] | None = None,
    arch: str = "resnet",
    sizes: Mapping[str, int] | None = None,
) -> ParamGroups:
    """Param groups, init and multipliers of ``parameterization`` for a user's ``model``.

    ``roles``: ``{pattern: role}`` with patterns an exact parameter name, a glob
    (``"blocks.*.U.weight"``) or ``"re:<regex>"``; every parameter must be matched (an unmapped
    parameter is an error naming it). ``shape``: the model's ``(L, M, D)``. ``lr``: base
    learning rate ``eta``; group ``r`` gets ``eta * lr_sgd_r`` (``optimizer="sgd"``) or
    ``eta * lr_adam_r`` (``"adam"``). ``d_in``, ``d_out``: needed when a rule uses them.
    ``train``: roles that go into the groups (default: every mapped role but frozen ones).

    ``arch="transformer"`` reads a preset name from the Transformer tables (roles ``Q, K, V, O,
    mlp_U, mlp_V, norm, norm_bias, pos``, scalars ``branch`` and ``logit``); ``sizes`` gives
    the fixed sizes their rules use (``r``, ``r_v``) where the model does not show them.
    Every parameterization also accepts the roles ``keep`` (left alone: own init, base lr),
    ``bias`` and ``norm`` (own init, base lr). ``shape`` may be omitted: it is read off the
    model (:func:`~reslim._src.scaling.user_roles.infer_shape`); a given shape is checked
    against what the model shows, and a mismatch is an error naming both.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if arch == "transformer" and not isinstance(parameterization, RoleTable):
        if isinstance(parameterization, Parameterization):
            raise ValueError(f"parameterization {parameterization.name!r} is a ResNet parameterization; "
                             f"arch='transformer' needs a Transformer preset name or RoleTable")
        p: Any = get_transformer_parameterization(parameterization)
    elif isinstance(parameterization, RoleTable):
        p = parameterization
    else:
        p = get_parameterization(parameterization)
    given = None if shape is None else Shape.parse(shape)
    if not isinstance(optimizer, str) or optimizer.lower() not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    for name, v in (("d_in", d_in), ("d_out", d_out)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    allowed = allowed_roles(p)
    name_roles = assign_roles(model, roles, allowed)
    named = _named(model)
    inferred = infer_shape(named, name_roles, p, d_in=d_in, d_out=d_out, sizes=sizes)
    shape = check_shape(given, inferred)
    used = tuple(r for r in allowed if r in set(name_roles.values()))
    extra = {r.name for r in (role_info(p, u) for u in used) if r.own_init and r.name not in p.roles}
    for r in used:
        if r not in p.roles and r not in extra:
            bad = next(n for n, rr in name_roles.items() if rr == r)
            raise ValueError(f"parameterization {p.name!r} has no rule for role {r!r} "
                             f"(parameter {bad!r})")
    trained = tuple(r for r in used if role_info(p, r).kind != "frozen") if train is None else tuple(train)
    for r in trained:
        if r not in used:
            raise ValueError(f"train names role {r!r}, which no parameter has (mapped: {', '.join(used)})")
    trained = tuple(r for r in used if r in trained)

    env = {"L": shape.L, "M": shape.M, "D": shape.D, "alpha": p.alpha}
    env.update({k: v for k, v in {**inferred, **(sizes or {})}.items() if k in ("r", "r_v", "T")})
    if d_in is not None:
        env["d_in"] = d_in
    if d_out is not None:
        env["d_out"] = d_out
    family = optimizer_family(optimizer)

    def ev(rule, what: str) -> float:
        try:
            return float(rule(**env))
        except ValueError:
            missing = [s for s, _ in rule.powers if s not in env]
            raise ValueError(f"{missing[0] if missing else 'a symbol'} is needed by the {what} rule "
                             f"{rule}; pass {missing[0] if missing else 'it'}=...") from None

    init_std, mults, lrs = {}, {}, {}
    for r in used:
        rs = p.roles.get(bias_parent(r) or r, RoleScaling())  # bias:X takes X's rules
        init_std[r] = ev(rs.init, f"{r} init")
        mults[r] = ev(rs.mult, f"{r} multiplier")
        lrs[r] = lr * ev(rs.lr_adam if family == "adam" else rs.lr_sgd, f"{r} learning-rate")
    mults["branch"] = ev(p.branch, "branch")
    if isinstance(p, RoleTable):
        for name, rule in p.scalars.items():
            mults[name] = ev(rule, name)
    out = ParamGroups(
        groups=[], roles=dict(name_roles), multipliers=mults, init_std=init_std, lr=lrs,
        trained=trained, parameterization=p, shape=shape, optimizer=optimizer.lower(),
    )
    object.__setattr__(out, "groups", out.bind(model))
    return out
