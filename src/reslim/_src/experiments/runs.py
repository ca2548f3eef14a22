"""Runs and their results: what a kind expands a spec into, what executing one produced, and the
key every run is stored under (a hash of its full config). Plain data, imported by the registry,
the store and the executors alike."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

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
