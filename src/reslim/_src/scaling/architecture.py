"""Architectures as data: the roles a block family declares, its block types and size symbols.

An :class:`Architecture` names every weight role of a network family with its *kind*::

    embed     input embedding (W_e)                 readout   output map (W_u)
    input     a unit's input weights (U; Q, K, V)   output    a unit's output weights (V; O),
                                                              which carry the branch multiplier
    frozen    never trained (a positional table)    gain, bias, keep   the module's own init
                                                              (LayerNorm gains stay ones)

its size symbols (``L, M, D`` plus fixed sizes such as the head dimensions ``r, r_v``), its
tensor-free scalars (``branch``: beta; ``logit``: the attention-logit factor), each role's
tensor dimensions in those symbols, and its block types (which roles one block of each type
holds). Parameterizations are tables keyed by these role names (:class:`Parameterization` for
the ResNet, :class:`~reslim._src.scaling.role_table.RoleTable` for any architecture); shapes
map to symbol values with :meth:`Architecture.env`. Nothing is stored on tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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
    blocks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # block type -> its roles
    doc: str = ""

    def __post_init__(self) -> None:
        names = [r.name for r in self.roles]
        if len(set(names)) != len(names):
            raise ValueError(f"architecture {self.name!r} declares a role twice")
        for block, roles in self.blocks.items():
            unknown = [r for r in roles if r not in names]
            if unknown:
                raise ValueError(f"block type {block!r} of {self.name!r} names unknown role {unknown[0]!r}")
        object.__setattr__(self, "blocks", MappingProxyType({k: tuple(v) for k, v in self.blocks.items()}))

    def __reduce__(self):
        return (Architecture, (self.name, self.roles, self.symbols, self.sizes, self.scalars,
                               dict(self.blocks), self.doc))

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
        env: dict[str, float] = {s: getattr(shape, s) for s in self.symbols}
        env["alpha"] = alpha
        for k, v in sizes.items():
            if v is not None:
                env[k] = v
        return env


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
    blocks={"two-layer": ("U", "V"), "one-layer": ("W",)},
    doc="residual network with perceptron blocks (theory.md §1)",
)

#: Roles every parameterization accepts for a user's module, beyond its architecture's: the
#: module's own initialisation, multiplier 1 and the base learning rate.
EXTRA_ROLES = (
    Role("keep", "keep", "(any)", (), "left alone: own init, base lr"),
    Role("bias", "bias", "(any bias)", (), "a bias: own init, base lr"),
    Role("norm", "gain", "(a norm gain)", (), "a LayerNorm/RMSNorm gain: own init (ones), base lr"),
)
