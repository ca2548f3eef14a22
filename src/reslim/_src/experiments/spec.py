"""Experiment specs: TOML files validated by pydantic models, with ``--set key=value`` overrides.

Every experiment kind declares a spec model derived from :class:`SpecBase` (``extra="forbid"``:
an unknown key is an error). :func:`load_spec` reads a built-in spec by name (``src/reslim/specs``)
or a user's TOML file, applies overrides, looks the ``kind`` up in the registry and validates.
Every failure is a :class:`SpecError` with a one-line message naming the field.
"""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ..scaling.parameterization import PRESETS, get_parameterization
from ..scaling.shapes import Shape
from ..training.divergence import DIVERGENCE_FACTOR


class SpecError(ValueError):
    """A spec that cannot be loaded or validated (one line, names the field)."""


def _wants_tuple(annotation: Any) -> bool:
    if get_origin(annotation) is tuple:
        return True
    return any(_wants_tuple(a) for a in get_args(annotation)) if get_origin(annotation) in (
        Union, UnionType) else False


class StrictModel(BaseModel):
    """Base of every spec section: unknown keys are errors, values are not coerced silently.

    Strict types (pydantic's strict mode): ``true`` is no integer and ``"0.5"`` no number; an
    integer is a valid float (TOML ``lr = 1`` is ``1.0``); a TOML array fills a tuple field."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _arrays_to_tuples(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fix = {name: tuple(data[name]) for name, f in cls.model_fields.items()
                   if isinstance(data.get(name), list) and _wants_tuple(f.annotation)}
            if fix:
                data = {**data, **fix}
        return data


class GridSpec(StrictModel):
    """Shapes of the finite networks: every combination of ``L``, ``M``, ``D``."""

    L: list[PositiveInt] = Field(min_length=1)
    M: list[PositiveInt] = Field(min_length=1)
    D: list[PositiveInt] = Field(min_length=1)

    @field_validator("L", "M", "D")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        return sorted(set(v))

    def shapes(self) -> list[Shape]:
        return [Shape(L, M, D) for L in self.L for M in self.M for D in self.D]


class GDTrainSpec(StrictModel):
    """Full-batch GD as in the papers: ``steps`` steps of size ``lr``, loss summed or averaged
    over outputs (docs/theory.md §1); kinds with other defaults subclass it."""

    steps: PositiveInt = 15
    lr: float = Field(1.0, gt=0, allow_inf_nan=False)
    optimizer: Literal["gd"] = "gd"
    loss: Literal["sum", "mean"] = "mean"
    divergence_factor: float = Field(DIVERGENCE_FACTOR, gt=1, description=(
        "a network has diverged once its loss exceeds this factor times max(initial loss, 1)"))

    @model_serializer(mode="wrap")
    def _omit_default_factor(self, handler):
        # the default stays out of run configs, so the keys of runs stored before it existed hold
        out = handler(self)
        if isinstance(out, dict) and out.get("divergence_factor") == DIVERGENCE_FACTOR:
            out.pop("divergence_factor")
        return out


class ParamSpec(StrictModel):
    """A parameterization preset and its options (``get_parameterization(name, **options)``)."""

    name: str = "mlu"
    options: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown parameterization {v!r}; presets: {', '.join(PRESETS)}")
        return v

    def build(self):
        return get_parameterization(self.name, **self.options)


class SpecBase(StrictModel):
    """Fields every experiment spec has. Kinds subclass it and add their own sections."""

    kind: str
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dtype: Literal["float64", "float32"] = "float64"
    max_task_mb: float = Field(2048.0, gt=0, description="memory cap of one batched task (weights)")

    @field_validator("name")
    @classmethod
    def _not_a_directory_reference(cls, v: str) -> str:
        if set(v) == {"."}:  # runs/. or runs/.. is not a folder of its own
            raise ValueError(f"must name a folder of its own, got {v!r}")
        return v

    def config(self) -> dict[str, Any]:
        """The spec as plain JSON-able data."""
        return self.model_dump(mode="json")


BUILTIN_SPECS = "reslim.specs"


def builtin_specs() -> list[str]:
    """Names of the specs shipped with the package."""
    root = resources.files(BUILTIN_SPECS)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_spec_source(source: str | Path) -> tuple[dict[str, Any], str]:
    """Raw TOML data of a built-in spec name or a file path, and where it came from."""
    text_source = str(source)
    path = Path(text_source)
    builtin = resources.files(BUILTIN_SPECS) / f"{text_source}.toml"
    # a file path: ends in .toml, or names a file; a folder never hides the built-in spec of its name
    if text_source.endswith(".toml") or path.is_file() or (path.exists() and not builtin.is_file()):
        if path.is_dir():
            raise SpecError(f"spec file {text_source} is a directory, not a .toml file")
        if not path.is_file():
            raise SpecError(f"spec file {text_source} does not exist")
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as err:
            raise SpecError(f"spec file {text_source} is not UTF-8 text (byte {err.start}: "
                            f"{err.reason}); TOML files are UTF-8") from None
        except OSError as err:
            raise SpecError(f"spec file {text_source} cannot be read: {err.strerror or err}") from None
    else:
        if not builtin.is_file():
            raise SpecError(f"unknown spec {text_source!r}; built-in: {', '.join(builtin_specs())} "
                            "(or give a path to a .toml file)")
        text, origin = builtin.read_text(), f"built-in:{text_source}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"malformed TOML in {origin}: {err}") from None
    return data, origin


def parse_value(text: str, key: str = "") -> Any:
    """A ``--set`` value: parsed as TOML (``[16,32]``, ``1e-3``, ``true``, ``{kind="network"}``),
    else kept as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if any(c in text for c in "[]{}=\"'"):
            raise SpecError(f"{key or 'value'}: cannot parse {text!r} as TOML") from None
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` with each ``dotted.key=value`` set (sections created as needed)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set expects key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        if not key or not all(parts):
            raise SpecError(f"--set has an empty key in {item!r}")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a table")
            node = child
        node[parts[-1]] = parse_value(value, key)
    return out


def format_validation_error(err: ValidationError) -> str:
    """The first pydantic error as one line: ``field.path: message``."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "spec"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif e["type"] == "missing":
        msg = "missing required field"
    msg = msg.replace("Value error, ", "")
    more = len(err.errors()) - 1
    suffix = f" (and {more} more error{'s' * (more > 1)})" if more else ""
    return f"{loc}: {msg}{suffix}".replace("\n", " ")


def validate_spec(data: dict[str, Any]) -> SpecBase:
    """Validate raw spec data with the model of its ``kind`` (looked up in the registry)."""
    from .registry import get_experiment

    kind = data.get("kind")
    if kind is None:
        raise SpecError("kind: missing required field")
    try:
        experiment = get_experiment(str(kind))
    except KeyError as err:
        raise SpecError(f"kind: {err.args[0]}") from None
    try:
        return experiment.spec_model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> SpecBase:
    """A validated spec from a built-in name, a TOML path or a dict, with ``--set`` overrides."""
    data = dict(source) if isinstance(source, dict) else read_spec_source(source)[0]
    return validate_spec(apply_overrides(data, list(overrides)))
