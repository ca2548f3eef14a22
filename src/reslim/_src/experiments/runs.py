"""Runs and their results: what a kind expands a spec into, what executing one produced, and the
key every run is stored under (a hash of its full config). Plain data, imported by the registry,
the store and the executors alike."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_type_hints

import numpy as np
from pydantic import BaseModel

STATUSES = ("done", "diverged", "failed")
FINISHED = ("done", "diverged")


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


#: version of what a config does not say but a run's numbers depend on (the weights' random
#: generator): part of every key, so results of another version are never mixed in a store.
#: 2: block weights drawn as float32 normals (1: float64).
KEY_VERSION = 2


def run_key(config: dict[str, Any]) -> str:
    """Hash of the full run config and :data:`KEY_VERSION`: equal configs, equal keys (20 hex
    digits of SHA-256)."""
    return hashlib.sha256(f"{KEY_VERSION}:{canonical_json(config)}".encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Run:
    """One unit of work: a full, JSON-able config and its key.

    ``group``: runs with the same group (and stage) may execute together in one batched task
    (equal shapes). ``stage``: runs of stage s start once every run of earlier stages is stored
    (references are stage 0). ``cost``: flops estimate (progress/ETA, scheduling); ``mem``:
    bytes one run needs in a task (batching cap).
    """

    kind: str
    config: dict[str, Any]
    group: str = ""
    stage: int = 1
    cost: float = 1.0
    mem: float = 0.0
    label: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", run_key(self.config))


@dataclass
class RunResult:
    """What executing a run produced. ``status``: done, diverged or failed (with ``error``)."""

    key: str
    status: Literal["done", "diverged", "failed"]
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class RunConfig:
    """Base of the typed run configs: one frozen dataclass per kind (and role) whose fields are a
    run's config, in the order and with the types the kind stores them.

    ``to_dict()`` is the JSON-able config a :class:`Run` carries and the store keeps (a spec
    section, a pydantic model, as its ``model_dump(mode="json")``); ``from_dict`` reads one back
    (those sections validated into their models again). The key is :func:`run_key` of
    ``to_dict()``, so a typed config and the dict it replaced have the same key.
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]):
        hints = get_type_hints(cls)
        values = {}
        for f in fields(cls):
            if f.name not in config:
                raise KeyError(f"{cls.__name__}: the run config has no {f.name!r}")
            v, t = config[f.name], hints[f.name]
            values[f.name] = t.model_validate(v) if isinstance(t, type) and issubclass(t, BaseModel) else v
        return cls(**values)

    @property
    def key(self) -> str:
        return run_key(self.to_dict())

    def without(self, *names: str) -> dict[str, Any]:
        """``to_dict()`` without ``names`` (e.g. a batch's group: the config less its seed)."""
        return {k: v for k, v in self.to_dict().items() if k not in names}


def _plain(v: Any) -> Any:
    return v.model_dump(mode="json") if isinstance(v, BaseModel) else v


def run_seed(*parts: int) -> int:
    """A run's seed derived from the spec's seed and the run's coordinates (NumPy SeedSequence of
    the parts, 32 bits each): distinct coordinates give independent streams."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])
