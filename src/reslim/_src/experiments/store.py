"""The results store: one SQLite file (WAL mode) per output directory.

Tables: ``meta`` (the spec and other JSON values), ``runs`` (one row per finished run: key,
config JSON, status, metrics JSON, error, timings, a checksum of the row) and ``arrays``
(trajectory arrays as ``np.save`` bytes with dtype, shape and the SHA-256 of the bytes; loaded
with ``allow_pickle=False``, never pickled). Each result is written in one transaction, row and
arrays together, so a killed driver leaves no partial rows. Only the driver process writes;
:meth:`Store.lock` keeps a second driver out.

Integrity: opening an existing store runs SQLite's ``PRAGMA quick_check`` and checks the
schema; every row and array is checked against its checksum when it is read. Any fault
(corrupt, truncated, empty or foreign file, unknown schema, disk full, a store deleted while
it is written) is a one-line :class:`StoreError` naming the file.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import io
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .runs import FINISHED, Run, RunResult, canonical_json

FILENAME = "results.sqlite"

#: layout version, kept in ``PRAGMA user_version``. 1 (user_version 0): no checksums, migrated in
#: place when a sweep opens the store; 2: a checksum per row and per array.
SCHEMA_VERSION = 2

SCHEMA = """
BEGIN;
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
    finished REAL NOT NULL,
    checksum TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS arrays (
    run_key  TEXT NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    dtype    TEXT NOT NULL,
    shape    TEXT NOT NULL,
    data     BLOB NOT NULL,
    checksum TEXT,
    PRIMARY KEY (run_key, name)
);
PRAGMA user_version = 2;
COMMIT;
"""

#: the columns of each table in schema 1 (every later schema has these too)
_V1_COLUMNS = {
    "meta": {"name", "value"},
    "runs": {"id", "key", "kind", "stage", "grp", "label", "config", "status", "metrics", "error",
             "seconds", "attempts", "created", "finished"},
    "arrays": {"run_key", "name", "dtype", "shape", "data"},
}


class StoreError(RuntimeError):
    """The store cannot be opened, read or written, or is in use by another driver (one line)."""


def encode_array(a: np.ndarray) -> bytes:
    a = np.asarray(a)
    if a.dtype.hasobject:
        raise TypeError("object arrays cannot be stored")
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def checksum(data: bytes) -> str:
    """SHA-256 of stored bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


def row_checksum(key, kind, stage, grp, label, config, status, metrics, error) -> str:
    """Checksum of what a run row says (everything but its timings and attempt count)."""
    text = json.dumps([key, kind, stage, grp, label, config, status, metrics, error], separators=(",", ":"))
    return checksum(text.encode())


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
    """The store file of an output directory (``DIR/results.sqlite``), or ``path`` itself when it
    names a ``.sqlite``/``.db`` file (an existing directory is always a directory)."""
    path = Path(path)
    if path.suffix in (".sqlite", ".db") and not path.is_dir():
        return path
    return path / FILENAME


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).replace("\n", " ")


class Store:
    """The SQLite results store of one output directory (or a ``.sqlite`` path).

    ``create``: create a missing store (else :class:`StoreError`); a store that exists is checked
    (``quick_check``, schema) and, when ``create`` is true, a schema-1 store is migrated to
    schema 2. ``lock``: take the driver lock (:meth:`lock`) before the store file is opened or
    created.
    """

    def __init__(self, path: str | Path, *, create: bool = True, lock: bool = False) -> None:
        self.path = store_path(path)
        self._lock_fd: int | None = None
        self._keys: frozenset[str] | None = None
        self._view = False
        self._legacy = False
        self._migrate_on_open = create
        self._conn: sqlite3.Connection | None = None
        exists = os.path.lexists(self.path)
        if not exists and not create:
            raise StoreError(f"no results store at {self.path}")
        try:
            if not exists:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create {self.path.parent}: {_reason(err)}") from None
        try:
            if lock:
                self.lock()
            if not os.path.lexists(self.path):
                self._create()
            self._open()
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------------
    def _connect(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _create(self) -> None:
        """Build an empty store beside its final name, then rename it into place: a store file is
        either absent or complete (never an empty or half-created file)."""
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}")
        try:
            for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                p.unlink(missing_ok=True)
            conn = self._connect(tmp)
            try:
                conn.executescript(SCHEMA)
            finally:
                conn.close()
            for p in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                p.unlink(missing_ok=True)  # a deleted store's journal: never replayed into this one
            os.replace(tmp, self.path)
        except (OSError, sqlite3.Error) as err:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot create results store {self.path}: {_reason(err)}") from None

    def _open(self) -> None:
        p = self.path
        try:
            st = os.stat(p)
        except OSError as err:
            raise StoreError(f"cannot open results store {p}: {_reason(err)}") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"results store {p} is not a regular file")
        if st.st_size == 0:
            raise StoreError(f"results store {p} is empty (0 bytes): not a reslim store; remove it to "
                             "start afresh")
        try:
            self._conn = self._connect(p)
            rows = self.conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as err:
            raise self._corrupt(err) from None
        if rows != [("ok",)]:
            raise self._corrupt(f"quick_check: {rows[0][0]}")
        self._ident = (st.st_dev, st.st_ino)
        self._check_schema()

    def _corrupt(self, why: BaseException | str) -> StoreError:
        why = _reason(why) if isinstance(why, BaseException) else why
        return StoreError(f"results store {self.path} is corrupt ({why}); its results cannot be trusted: "
                          "restore it from a backup or remove it")

    def _check_schema(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"results store {self.path} has schema version {version}, written by a newer "
                             f"reslim; this one reads versions up to {SCHEMA_VERSION}")
        columns = {t: {r[1] for r in self.conn.execute(f"PRAGMA table_info({t})")} for t in _V1_COLUMNS}
        missing = [f"{t}.{c}" if columns[t] else t for t, cols in _V1_COLUMNS.items()
                   for c in sorted(cols - columns[t])]
        if version == SCHEMA_VERSION:
            missing += [f"{t}.checksum" for t in ("runs", "arrays") if "checksum" not in columns[t]]
        if missing:
            what = ", ".join(dict.fromkeys(missing))
            raise StoreError(f"results store {self.path} has an unknown or older layout (schema version "
                             f"{version}, missing {what}): not readable by this reslim")
        self._legacy = version < SCHEMA_VERSION
        if self._legacy and self._migrate_on_open:
            self.migrate()

    def migrate(self) -> None:
        """Bring a schema-1 store to schema 2 in one transaction: checksums of every row and array
        as they are now (each array must load)."""
        if not self._legacy:
            return
        with self.transaction() as c:
            for t in ("runs", "arrays"):
                if "checksum" not in {r[1] for r in c.execute(f"PRAGMA table_info({t})")}:
                    c.execute(f"ALTER TABLE {t} ADD COLUMN checksum TEXT")
            rows = c.execute("SELECT id, key, kind, stage, grp, label, config, status, metrics, error "
                             "FROM runs").fetchall()
            c.executemany("UPDATE runs SET checksum = ? WHERE id = ?",
                          [(row_checksum(*r[1:]), r[0]) for r in rows])
            for run_key_, name, data in c.execute("SELECT run_key, name, data FROM arrays").fetchall():
                try:
                    decode_array(data)
                except Exception as err:  # noqa: BLE001 - any undecodable blob is corruption
                    raise self._corrupt(f"array {name!r} of run {run_key_} does not load: {err}") from None
                c.execute("UPDATE arrays SET checksum = ? WHERE run_key = ? AND name = ?",
                          (checksum(data), run_key_, name))
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._legacy = False

    @property
    def directory(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        if self._view:
            return
        self.unlock()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        """The open SQLite connection (a StoreError once the store is closed)."""
        if self._conn is None:
            raise StoreError(f"results store {self.path} is closed")
        return self._conn

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def only(self, keys: Iterable[str]) -> Store:
        """A view of this store that sees only the runs ``keys`` (records, statuses, counts,
        arrays, dataframe); it shares the connection and its ``close`` does nothing."""
        view = copy.copy(self)
        view._keys = frozenset(keys) if self._keys is None else self._keys & frozenset(keys)
        view._view = True
        return view

    def _mine(self, key: str) -> bool:
        return self._keys is None or key in self._keys

    def _check_same_file(self) -> None:
        """The store file at :attr:`path` is still the one this store opened."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ident
        except OSError:
            same = False
        if not same:
            raise StoreError(f"results store {self.path} was deleted or replaced while this run was "
                             "writing to it; stopped (nothing more is written there)")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise self._write_error(err) from None
        try:
            yield self.conn
            self._check_same_file()
        except BaseException as err:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(err, sqlite3.Error):
                raise self._write_error(err) from None
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise self._write_error(err) from None

    def _write_error(self, err: sqlite3.Error) -> StoreError:
        if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
            return self._corrupt(err)
        return StoreError(f"cannot write results store {self.path}: {_reason(err)}")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
                raise self._corrupt(err) from None
            raise StoreError(f"cannot read results store {self.path}: {_reason(err)}") from None

    # --- driver lock ------------------------------------------------------------------------
    def lock(self) -> None:
        """Claim the store for this driver (an exclusive ``flock`` on ``results.lock`` beside it);
        :class:`StoreError` if taken. The lock file is opened without following symbolic links
        and must be a regular file."""
        if self._lock_fd is not None or self._view:
            return
        lock_path = self.path.with_suffix(".lock")  # DIR/results.lock
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise StoreError(f"lock file {lock_path} is a symbolic link; refusing to use it "
                                 "(remove it)") from None
            if err.errno == errno.EISDIR:
                raise StoreError(f"lock file {lock_path} is not a regular file (a directory); "
                                 "remove it") from None
            raise StoreError(f"cannot open lock file {lock_path}: {_reason(err)}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"lock file {lock_path} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 64).decode(errors="replace").strip() or "?"
                raise StoreError(f"{self.directory} is in use by another reslim run (pid {other})") from None
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError as err:
                raise StoreError(f"cannot write lock file {lock_path}: {_reason(err)}") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None and not self._view:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, name: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                      "SET value = excluded.value", (name, json.dumps(value, sort_keys=True)))

    def get_meta(self, name: str, default: Any = None) -> Any:
        with self._reading():
            row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except ValueError as err:
            raise self._corrupt(f"meta {name!r} is not JSON: {err}") from None

    # --- runs -------------------------------------------------------------------------------
    def write(self, run: Run, result: RunResult) -> None:
        """Store a run's result (row and arrays) in one transaction; a failed run may be
        overwritten later, a finished one is never rewritten."""
        if result.key != run.key:
            raise ValueError("result does not belong to this run")
        blobs = []
        for name, a in result.arrays.items():
            data = encode_array(a)
            blobs.append((run.key, name, str(np.asarray(a).dtype), json.dumps(list(np.shape(a))), data,
                          checksum(data)))
        config, metrics = canonical_json(run.config), json.dumps(result.metrics, sort_keys=True)
        check = row_checksum(run.key, run.kind, run.stage, run.group, run.label, config, result.status,
                             metrics, result.error)
        now = time.time()
        if self._legacy:
            self.migrate()  # a schema-1 store opened with create=False, now written to
        with self.transaction() as c:
            row = c.execute("SELECT status FROM runs WHERE key = ?", (run.key,)).fetchone()
            if row is not None and row[0] in FINISHED:
                return
            c.execute("DELETE FROM arrays WHERE run_key = ?", (run.key,))
            c.execute(
                "INSERT INTO runs (key, kind, stage, grp, label, config, status, metrics, error, seconds,"
                " created, finished, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE"
                " SET status = excluded.status, metrics = excluded.metrics, error = excluded.error,"
                " seconds = excluded.seconds, finished = excluded.finished, attempts = attempts + 1,"
                " checksum = excluded.checksum",
                (run.key, run.kind, run.stage, run.group, run.label, config, result.status, metrics,
                 result.error, float(result.seconds), now, now, check),
            )
            c.executemany("INSERT INTO arrays (run_key, name, dtype, shape, data, checksum)"
                          " VALUES (?, ?, ?, ?, ?, ?)", blobs)

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        with self._reading():
            rows = self.conn.execute("SELECT key, status FROM runs").fetchall()
        out = {k: v for k, v in rows if self._mine(k)}
        if keys is not None:
            wanted = set(keys)
            out = {k: v for k, v in out.items() if k in wanted}
        return out

    def content_digest(self) -> str:
        """A digest of what this store (or view) holds: every run's key, status, row checksum,
        finish time and attempts, and the meta values; equal digests mean equal contents."""
        import hashlib

        with self._reading():
            rows = self.conn.execute(
                f"SELECT key, status, {'NULL' if self._legacy else 'checksum'}, finished, attempts "
                "FROM runs ORDER BY key").fetchall()
            meta = self.conn.execute("SELECT name, value FROM meta ORDER BY name").fetchall()
        h = hashlib.sha256()
        for row in rows:
            if self._mine(row[0]):
                h.update(json.dumps(list(row)).encode())
        h.update(json.dumps(meta).encode())
        return h.hexdigest()

    def keys(self) -> set[str]:
        """Keys of every stored run (of any status)."""
        return set(self.statuses())

    def finished_keys(self) -> set[str]:
        """Keys of runs that are done or diverged (never recomputed)."""
        return {k for k, s in self.statuses().items() if s in FINISHED}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.statuses().values():
            out[s] = out.get(s, 0) + 1
        return out

    _COLS = ("id, key, kind, stage, grp, label, config, status, metrics, error, seconds, attempts, "
             "created, finished, checksum")

    def _record(self, row) -> RunRecord:
        (id_, key, kind, stage, grp, label, config, status, metrics, error, seconds, attempts,
         created, finished, check) = row
        if check is None and not self._legacy:
            raise self._corrupt(f"run {key} has no checksum")
        if check is not None and check != row_checksum(key, kind, stage, grp, label, config, status, metrics,
                                                       error):
            raise self._corrupt(f"run {key} fails its checksum")
        try:
            return RunRecord(id_, key, kind, stage, grp, label, json.loads(config), status,
                             json.loads(metrics), error, seconds, attempts, created, finished)
        except (ValueError, TypeError) as err:
            raise self._corrupt(f"run {key}: {err}") from None

    def _select(self, sql: str, args=()) -> list:
        cols = self._COLS.replace("checksum", "NULL") if self._legacy else self._COLS
        with self._reading():
            return self.conn.execute(sql.format(cols=cols), args).fetchall()

    def get(self, key: str) -> RunRecord | None:
        if not self._mine(key):
            return None
        rows = self._select("SELECT {cols} FROM runs WHERE key = ?", (key,))
        return self._record(rows[0]) if rows else None

    def records(self, *, kind: str | None = None,
                status: str | Iterable[str] | None = None) -> list[RunRecord]:
        """Stored runs in the order they were first written, optionally filtered."""
        sql, args = "SELECT {cols} FROM runs WHERE 1=1", []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            sql += f" AND status IN ({', '.join('?' * len(wanted))})"
            args.extend(wanted)
        return [self._record(r) for r in self._select(sql + " ORDER BY id", args) if self._mine(r[1])]

    def arrays(self, key: str, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The stored arrays of run ``key`` (all, or those named), each checked against its
        checksum."""
        if not self._mine(key):
            return {}
        check = "NULL" if self._legacy else "checksum"
        with self._reading():
            rows = self.conn.execute(f"SELECT name, data, {check} FROM arrays WHERE run_key = ?",
                                     (key,)).fetchall()
        wanted = None if names is None else set(names)
        out = {}
        for name, data, check_ in rows:
            if wanted is not None and name not in wanted:
                continue
            if (check_ is None and not self._legacy) or (check_ is not None and check_ != checksum(data)):
                raise self._corrupt(f"array {name!r} of run {key} fails its checksum")
            try:
                out[name] = decode_array(data)
            except Exception as err:  # noqa: BLE001 - an undecodable blob is corruption
                raise self._corrupt(f"array {name!r} of run {key} does not load: {err}") from None
        return out

    def verify(self) -> None:
        """Check every row and every array against its checksum (:class:`StoreError` if one fails)."""
        keys = [r.key for r in self.records()]
        for key in keys:
            self.arrays(key)

    def array_index(self) -> pd.DataFrame:
        """One row per stored array: run key, name, dtype, shape, bytes."""
        with self._reading():
            found = self.conn.execute(
                "SELECT run_key, name, dtype, shape, LENGTH(data) FROM arrays").fetchall()
        rows = [r for r in found if self._mine(r[0])]
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


#: config fields :func:`load_results` repeats as plain columns (beside ``config.<name>``)
GRID_FIELDS = ("role", "param", "optimizer", "correction", "dataset", "lr", "N", "rep", "seed")


def _shape_columns(config: pd.DataFrame) -> dict[str, pd.Series]:
    """``L, M, D, P`` per run from ``config.shape`` (``[L, M, D]``), ``config.L/M/D``, or
    ``config.width`` (the depth experiments' networks are ``(L, width, width)``); nullable
    integers, missing where a run has no such size (a limit's run has no ``L``)."""
    n = len(config)
    cols = {c: pd.Series([pd.NA] * n, dtype="Int64") for c in ("L", "M", "D")}
    for c in ("L", "M", "D"):
        if f"config.{c}" in config:
            cols[c] = cols[c].fillna(pd.to_numeric(config[f"config.{c}"], errors="coerce").astype("Int64"))
    if "config.shape" in config:
        shapes = config["config.shape"]
        for axis, c in enumerate(("L", "M", "D")):
            vals = [v[axis] if isinstance(v, (list, tuple)) and len(v) == 3 else pd.NA for v in shapes]
            cols[c] = pd.Series(vals, dtype="Int64").fillna(cols[c])
    if "config.width" in config and "config.L" in config:  # (L, width, width) ResNets
        width = pd.to_numeric(config["config.width"], errors="coerce").astype("Int64")
        cols["M"], cols["D"] = cols["M"].fillna(width), cols["D"].fillna(width)
    cols["P"] = cols["L"] * cols["M"] * cols["D"]
    return cols


def load_results(directory: str | Path) -> pd.DataFrame:
    """The runs stored in an output directory, one row per run, as a DataFrame.

    Columns: the record's (``key``, ``kind``, ``status``, ``label``, ``seconds``, ...), then the
    network size ``L, M, D, P`` (nullable integers, missing where a run has none: a limit, a deep
    linear network's ``M, D``), the grid fields present among ``role, param, optimizer,
    correction, dataset, lr, N, rep, seed``, then every ``config.*`` field and scalar
    ``metrics.*`` (as :meth:`Store.dataframe`). ``created`` and ``finished`` are pandas
    datetimes (UTC). Arrays stay in the store: ``Store(directory).arrays(key)``.
    """
    with Store(directory, create=False) as store:
        df = store.dataframe()
    if not len(df):
        return df
    for c in ("created", "finished"):
        df[c] = pd.to_datetime(df[c], unit="s", utc=True)
    front = _shape_columns(df)
    front.update({c: df[f"config.{c}"] for c in GRID_FIELDS
                  if f"config.{c}" in df and c not in front})
    at = df.columns.get_loc("finished") + 1
    for i, (name, col) in enumerate(front.items()):
        df.insert(at + i, name, col)
    return df
