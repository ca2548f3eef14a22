"""Users' own modules beyond the role map: their shape read off the mapped tensors, and the
forward multipliers applied to the parameters so that ``forward`` stays as the user wrote it.

Shape inference (a mismatch with a given shape is an error naming both)::

    D   the dimension the embedding and readout tensors share (nn.Linear: embed (D, d_in),
        readout (d_out, D))
    L   the number of blocks: distinct name prefixes up to the first integer component
        ("blocks.3.attn.q.weight" -> "blocks.3") among block tensors, else the number of
        output-role tensors (of input-role tensors when there are none)
    M   MLP blocks: the elements of a block's input tensors / D; attention blocks: the number
        of query tensors of a block when there is one per head, else elements / (D r)
    r, r_v   a head's query and value dimensions, where they can be read (sizes= otherwise)

Forward multipliers: the effective multiplier of a role scales its *parameters* before the
call (``torch.func.functional_call``): for a linear map ``m W x = (m W) x``. Output roles also
carry the branch multiplier ``beta``, and the query tensors carry the logit factor (logits are
bilinear in queries and keys); a forward that applies its own ``1/sqrt(r)`` to the logits
says so with ``logit_in_forward``. Nothing is written on the module or its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .role_table import architecture_of, bias_parent, role_info
from .shapes import Shape

_COMPILE_PREFIX = "_orig_mod."


def clean_name(name: str) -> str:
    """A parameter name without ``torch.compile``'s ``_orig_mod.`` prefixes."""
    while name.startswith(_COMPILE_PREFIX):
        name = name[len(_COMPILE_PREFIX):]
    return name.replace("." + _COMPILE_PREFIX, ".")


def _block_key(name: str) -> str | None:
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return None


def infer_shape(named: Mapping[str, torch.Tensor], roles: Mapping[str, str], param: Any, *,
                d_in: int | None = None, d_out: int | None = None,
                sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """What can be read of ``L, M, D`` (and ``r, r_v``) from a user's mapped tensors."""
    sizes = dict(sizes or {})
    by_role: dict[str, list[str]] = {}
    for n, r in roles.items():
        by_role.setdefault(r, []).append(n)
    out: dict[str, int] = {}
    emb = [tuple(named[n].shape) for n in by_role.get("embed", [])]
    rd = [tuple(named[n].shape) for n in by_role.get("readout", [])]
    if emb and rd:
        common = set(emb[0]) & set(rd[0])
        if d_in is not None and len(common) > 1:
            common.discard(d_in)
        if d_out is not None and len(common) > 1:
            common.discard(d_out)
        if len(common) == 1:
            out["D"] = common.pop()
        elif common and len(emb[0]) == 2:
            out["D"] = emb[0][0]  # nn.Linear(d_in, D).weight is (D, d_in)
    arch = architecture_of(param)
    kinds = {r: role_info(param, r).kind for r in by_role}
    block_names = [n for n, r in roles.items() if kinds[r] in ("input", "output")]
    keys = {n: _block_key(n) for n in block_names}
    if block_names and all(k is not None for k in keys.values()):
        out["L"] = len(set(keys.values()))
    elif block_names:
        n_out = sum(1 for n in block_names if kinds[roles[n]] == "output")
        out["L"] = n_out or len(block_names)
    D = out.get("D")
    if D is None:
        return out
    Ms: set[int] = set()
    if arch.name == "transformer" and all(k is not None for k in keys.values()):
        blocks: dict[str, dict[str, list[str]]] = {}
        for n in block_names:
            blocks.setdefault(str(keys[n]), {}).setdefault(roles[n], []).append(n)
        for b in blocks.values():
            for unit_role, dim in (("Q", "r"), ("O", "r_v")):
                names = b.get(unit_role, [])
                if not names:
                    continue
                numel = sum(named[n].numel() for n in names)
                if len(names) > 1:  # one tensor per head
                    Ms.add(len(names))
                    sizes.setdefault(dim, named[names[0]].numel() // D)
                elif dim in sizes:
                    Ms.add(numel // (D * sizes[dim]))
            if "mlp_U" in b:
                Ms.add(sum(named[n].numel() for n in b["mlp_U"]) // D)
        out.update({k: sizes[k] for k in ("r", "r_v") if k in sizes})
    elif arch.name == "resnet" and "U" in by_role:
        Ms.update(named[n].numel() // D for n in by_role["U"])
    if len(Ms) == 1:
        out["M"] = Ms.pop()
    elif len(Ms) > 1:
        raise ValueError(f"the model's blocks have different widths M: {sorted(Ms)}")
    return out


def check_shape(given: Shape | None, inferred: Mapping[str, int]) -> Shape:
    """The given shape where it agrees with every inferred size, the inferred one when none is
    given; ValueError naming both on a mismatch."""
    if given is None:
        missing = [s for s in ("L", "M", "D") if s not in inferred]
        if missing:
            raise ValueError(f"cannot infer {', '.join(missing)} from the model (read: "
                             f"{dict(inferred) or 'nothing'}); pass shape=(L, M, D)")
        return Shape(inferred["L"], inferred["M"], inferred["D"])
    bad = [s for s in ("L", "M", "D") if s in inferred and inferred[s] != getattr(given, s)]
    if bad:
        read = ", ".join(f"{s}={inferred[s]}" for s in ("L", "M", "D") if s in inferred)
        raise ValueError(f"shape={given} does not match the model, whose tensors give {read} "
                         f"({', '.join(bad)} differ)")
    return given


def forward_scales(groups: Any, logit_in_forward: float = 1.0) -> dict[str, float]:
    """Parameter name -> the factor it is scaled by in the forward call: the role's multiplier,
    times beta for output roles, times ``logit / logit_in_forward`` for query roles."""
    out = {}
    for name, role in groups.roles.items():
        s = groups.multipliers.get(role, 1.0)
        kind = role_info(groups.parameterization, role).kind
        if kind == "output" or bias_parent(role) is not None:  # bias:X: X's multiplier and the branch
            s *= groups.multipliers["branch"]
        if role == "Q" and "logit" in groups.multipliers:
            s *= groups.multipliers["logit"] / logit_in_forward
        out[name] = float(s)
    return out


class Scaled(nn.Module):
    """``module`` called with every parameter scaled by its forward factor
    (``functional_call``): train ``Scaled(model, ...)`` with ``torch.optim`` on the groups of
    ``param_groups(model, ...)``; the gradients reach ``model``'s own parameters."""

    def __init__(self, module: nn.Module, scales: Mapping[str, float]) -> None:
        super().__init__()
        self.module = module
        self.scales = {n: float(s) for n, s in scales.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        params = {}
        for raw, p in self.module.named_parameters():
            s = self.scales.get(clean_name(raw), 1.0)
            if s != 1.0:
                params[raw] = p * s
        return functional_call(self.module, params, args, kwargs)

    def extra_repr(self) -> str:
        return f"scaled parameters: {sum(1 for s in self.scales.values() if s != 1.0)}"
