"""The results store: one SQLite file (WAL mode) per output directory.

Tables: ``meta`` (the spec and other JSON values), ``runs`` (one row per finished run: key,
config JSON, status, metrics JSON, error, timings) and ``arrays`` (trajectory arrays as
``np.save`` bytes with dtype and shape; loaded with ``allow_pickle=False``, never pickled).
Each result is written in one transaction, row and arrays together, so a killed driver leaves
no partial rows. Only the driver process writes; :meth:`Store.lock` keeps a second driver out.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .registry import FINISHED, Run, RunResult, canonical_json

FILENAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    key      TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL,
    stage    INTEGER NOT NULL,
    grp      TEXT NOT NULL,
    label    TEXT NOT NULL,
    config   TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed')),
    metrics  TEXT NOT NULL,
    error    TEXT,
    seconds  REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created  REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS arrays (
    run_key TEXT NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    dtype   TEXT NOT NULL,
    shape   TEXT NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (run_key, name)
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or is in use by another driver."""


def encode_array(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    if a.dtype.hasobject:
        raise TypeError("object arrays cannot be stored")
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class RunRecord:
    """A stored run."""

    id: int
    key: str
    kind: str
    stage: int
    group: str
    label: str
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    error: str | None
    seconds: float
    attempts: int
    created: float
    finished: float

    @property
    def finished_ok(self) -> bool:
        return self.status in FINISHED


def store_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix in (".sqlite", ".db") else path / FILENAME


class Store:
    """The SQLite results store of one output directory (or a ``.sqlite`` path)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = store_path(path)
        if not self.path.exists():
            if not create:
                raise StoreError(f"no results store at {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        try:
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if create:
                self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open results store {self.path}: {err}") from None

    @property
    def directory(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        self.unlock()
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- driver lock ------------------------------------------------------------------------
    def lock(self) -> None:
        """Claim the store for this driver (an exclusive ``flock``); :class:`StoreError` if taken."""
        if self._lock_fd is not None:
            return
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"{self.directory} is in use by another reslim run (pid {other})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, name: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                      "SET value = excluded.value", (name, json.dumps(value, sort_keys=True)))

    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    # --- runs -------------------------------------------------------------------------------
    def write(self, run: Run, result: RunResult) -> None:
        """Store a run's result (row and arrays) in one transaction; a failed run may be
        overwritten later, a finished one is never rewritten."""
        if result.key != run.key:
            raise ValueError("result does not belong to this run")
        blobs = [(run.key, name, str(np.asarray(a).dtype), json.dumps(list(np.shape(a))), encode_array(a))
                 for name, a in result.arrays.items()]
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT status FROM runs WHERE key = ?", (run.key,)).fetchone()
            if row is not None and row[0] in FINISHED:
                return
            c.execute("DELETE FROM arrays WHERE run_key = ?", (run.key,))
            c.execute(
                "INSERT INTO runs (key, kind, stage, grp, label, config, status, metrics, error, seconds,"
                " created, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE"
                " SET status = excluded.status, metrics = excluded.metrics, error = excluded.error,"
                " seconds = excluded.seconds, finished = excluded.finished, attempts = attempts + 1",
                (run.key, run.kind, run.stage, run.group, run.label, canonical_json(run.config),
                 result.status, json.dumps(result.metrics, sort_keys=True), result.error,
                 float(result.seconds), now, now),
            )
            c.executemany("INSERT INTO arrays (run_key, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?)",
                          blobs)

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        rows = self.conn.execute("SELECT key, status FROM runs").fetchall()
        out = dict(rows)
        if keys is not None:
            wanted = set(keys)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    def finished_keys(self) -> set[str]:
        """Keys of runs that are done or diverged (never recomputed)."""
        return {k for k, s in self.statuses().items() if s in FINISHED}

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return {s: n for s, n in rows}

    _COLS = ("id, key, kind, stage, grp, label, config, status, metrics, error, seconds, attempts, "
             "created, finished")

    def _record(self, row) -> RunRecord:
        (id_, key, kind, stage, grp, label, config, status, metrics, error, seconds, attempts,
         created, finished) = row
        return RunRecord(id_, key, kind, stage, grp, label, json.loads(config), status,
                         json.loads(metrics), error, seconds, attempts, created, finished)

    def get(self, key: str) -> RunRecord | None:
        row = self.conn.execute(f"SELECT {self._COLS} FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else self._record(row)

    def records(self, *, kind: str | None = None,
                status: str | Iterable[str] | None = None) -> list[RunRecord]:
        """Stored runs in the order they were first written, optionally filtered."""
        sql, args = f"SELECT {self._COLS} FROM runs WHERE 1=1", []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({', '.join('?' * len(wanted))})"
            args.extend(wanted)
        return [self._record(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def arrays(self, key: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The stored arrays of run ``key`` (all, or those named)."""
        rows = self.conn.execute("SELECT name, data FROM arrays WHERE run_key = ?", (key,)).fetchall()
        wanted = None if names is None else set(names)
        return {n: decode_array(d) for n, d in rows if wanted is None or n in wanted}

    def array_index(self) -> pd.DataFrame:
        """One row per stored array: run key, name, dtype, shape, bytes."""
        rows = self.conn.execute("SELECT run_key, name, dtype, shape, LENGTH(data) FROM arrays").fetchall()
        return pd.DataFrame(rows, columns=["key", "name", "dtype", "shape", "bytes"])

    def dataframe(self, *, status: str | Iterable[str] | None = None) -> pd.DataFrame:
        """One row per stored run: record columns, ``config.*`` and scalar ``metrics.*`` columns."""
        recs = self.records(status=status)
        base = pd.DataFrame([{
            "id": r.id, "key": r.key, "kind": r.kind, "stage": r.stage, "group": r.group,
            "label": r.label, "status": r.status, "error": r.error, "seconds": r.seconds,
            "attempts": r.attempts, "created": r.created, "finished": r.finished} for r in recs])
        if not recs:
            return base
        config = pd.json_normalize([r.config for r in recs], sep=".").add_prefix("config.")
        metrics = pd.json_normalize([r.metrics for r in recs], sep=".").add_prefix("metrics.")
        return pd.concat([base, config, metrics], axis=1)


def load_results(directory: str | Path) -> pd.DataFrame:
    """The runs stored in an output directory, as a DataFrame (see :meth:`Store.dataframe`)."""
    with Store(directory, create=False) as store:
        return store.dataframe()
