"""Hardened results stores (issue 13, items 1-4): one spec per output directory and reports that
read only that spec's runs; corruption detected (quick_check, a checksum per row and array);
store and environment faults as one-line errors with exit 2 that keep every finished run and
resume once the cause is gone; atomic reports held under the lock; a lock file that is never
followed through a symbolic link."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import reslim.cli  # noqa: F401  (registers the commands)
from _cli import invoke as _invoke
from _cli import one_line_error as _one_line
from _cli import tree
from reslim._src.experiments.spec import load_spec
from reslim._src.experiments.store import Store, StoreError
from reslim._src.experiments.sweep import run_experiment


def _tree(path):
    return tree(path, skip=("results.lock",))


CLI = [sys.executable, "-c", "from reslim.cli import main; main()"]
TINY = ["grid.L=[2]", "grid.M=[2,8]", "grid.D=[2,4]", "repetitions=1", "train.steps=3", "analysis.n_boot=10",
        "reference={kind='network', shape=[2,8,4]}"]
PROBE = 'kind = "probe"\nname = "pr"\nruns = 6\nwork = 1\nsize = 64\n'


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, key, status, metrics, finished FROM runs ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished tiny convergence directory (sweep and report)."""
    out = tmp_path_factory.mktemp("tiny") / "D"
    run_experiment(load_spec("convergence", TINY), out, progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("results.lock"))
    return dst


# --- item 1: one spec per output directory; reports read only the spec's runs --------------------
@pytest.mark.parametrize("extra", [["train.steps=14"], ["train.lr=0.5"]], ids=["steps", "lr"])
def test_another_spec_into_a_directory_is_refused(capsys, tmp_path, tiny, extra):
    out = _copy(tiny, tmp_path / "D")
    before = _tree(out)
    argv = ["run", "convergence", *_sets(TINY + extra), "--out", str(out), "--no-progress"]
    _one_line(*_invoke(capsys, argv), "--out", str(out), "'convergence'", "another spec")
    assert _tree(out) == before  # nothing written: store, report and figures untouched
    code, o, e = _invoke(capsys, ["report", str(out)])
    assert code == 0, e


def test_another_kind_into_a_directory_is_refused(capsys, tmp_path, tiny):
    out = _copy(tiny, tmp_path / "D")
    before = _tree(out)
    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE)
    _one_line(*_invoke(capsys, ["run", str(spec), "--out", str(out), "--no-progress"]),
              "--out", "'convergence'", "kind 'convergence', not 'probe'")
    assert _tree(out) == before


def test_the_same_spec_again_and_an_extension_run(capsys, tmp_path, tiny):
    out = _copy(tiny, tmp_path / "D")
    code, o, e = _invoke(capsys, ["run", "convergence", *_sets(TINY), "--out", str(out), "--no-progress"])
    assert code == 0 and "9 runs, 9 already stored" in o, (o, e)
    more = [*TINY, "analysis.n_boot=12", "grid.M=[2,8,16]"]  # more grid points and another analysis
    code, o, e = _invoke(capsys, ["run", "convergence", *_sets(more), "--out", str(out), "--no-progress"])
    assert code == 0 and "13 runs, 9 already stored, 4 done" in o, (o, e)


@pytest.mark.parametrize("extra", [["train.steps=14"], ["train.lr=0.5"]], ids=["steps", "lr"])
def test_reports_read_exactly_the_specs_runs(tmp_path, tiny, extra):
    """A store that holds a second spec's runs as well (written before the one-spec rule): the
    report of the stored spec is the report of a store holding its runs only (the loss figure too,
    which mixed the curves of both specs, or crashed on their different lengths)."""
    other = tmp_path / "other"
    run_experiment(load_spec("convergence", TINY + extra), other, progress=False, report=False)
    mixed = _copy(tiny, tmp_path / "mixed")
    con = sqlite3.connect(mixed / "results.sqlite")
    con.execute("ATTACH ? AS o", (str(other / "results.sqlite"),))
    con.execute("INSERT INTO runs (key, kind, stage, grp, label, config, status, metrics, error, seconds,"
                " attempts, created, finished, checksum) SELECT key, kind, stage, grp, label, config, status,"
                " metrics, error, seconds, attempts, created, finished, checksum FROM o.runs")
    con.execute("INSERT INTO arrays SELECT * FROM o.arrays")
    con.commit()
    con.close()
    from reslim._src.experiments.reporting import write_report

    pure, both = write_report(_copy(tiny, tmp_path / "pure")), write_report(mixed)
    assert both.summary == pure.summary
    strip = re.compile(r"\d+ (done|diverged)")  # nothing in the text mentions the other runs
    assert strip.sub("", (mixed / "report.md").read_text()) == strip.sub("", (tmp_path / "pure" / "report.md")
                                                                         .read_text())
    for name in ("convergence-loss.png", "convergence-embedding-vs-D.png"):
        assert (mixed / "figures" / name).read_bytes() == (tmp_path / "pure" / "figures" / name).read_bytes()


def test_default_out_of_a_modified_spec():
    from reslim._src.experiments.validation import default_output_dir

    plain = load_spec("convergence")
    assert default_output_dir("convergence", plain) == Path("runs/convergence")
    same = load_spec("convergence", ["train.steps=15"])  # the spec's own value: the same spec
    assert default_output_dir("convergence", same) == Path("runs/convergence")
    renamed = load_spec("convergence", ["name=mine"])
    assert default_output_dir("convergence", renamed) == Path("runs/mine")
    a = default_output_dir("convergence", load_spec("convergence", ["train.steps=14"]))
    b = default_output_dir("convergence", load_spec("convergence", ["train.lr=0.5"]))
    assert re.fullmatch(r"runs/convergence-[0-9a-f]{8}", str(a)) and a != b
    assert default_output_dir("convergence", load_spec("convergence", ["train.steps=14"])) == a


# --- item 2: corruption -------------------------------------------------------------------------
def _probe_dir(tmp_path: Path, runs: int = 6, size: int = 64) -> tuple[Path, Path]:
    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE.replace("runs = 6", f"runs = {runs}").replace("size = 64", f"size = {size}"))
    out = tmp_path / "P"
    run_experiment(load_spec(spec), out, progress=False)
    return spec, out


def test_overwritten_pages_are_a_one_line_error(capsys, tmp_path):
    spec, out = _probe_dir(tmp_path, runs=40)
    db = out / "results.sqlite"
    page = 4096
    n_pages = db.stat().st_size // page
    assert n_pages >= 8
    rng = np.random.default_rng(0)
    with open(db, "r+b") as f:  # a few pages past the header overwritten with random bytes
        for p in (2, n_pages // 2, n_pages - 2):
            f.seek(p * page)
            f.write(rng.integers(0, 256, page, dtype=np.uint8).tobytes())
    run = ["run", str(spec), "--out", str(out), "--no-progress"]
    for argv in (["runs", str(out)], ["report", str(out)], run):
        _one_line(*_invoke(capsys, argv), str(db), "corrupt")


def test_a_changed_array_or_row_fails_its_checksum(capsys, tmp_path, tiny):
    out = _copy(tiny, tmp_path / "D")
    db = out / "results.sqlite"
    con = sqlite3.connect(db)
    key, data = con.execute("SELECT run_key, data FROM arrays WHERE name = 'loss' LIMIT 1").fetchone()
    flipped = bytearray(data)
    for i in (-1, -9, -17):  # the last float64s of the curve, the .npy header intact
        flipped[i] ^= 0x40
    con.execute("UPDATE arrays SET data = ? WHERE run_key = ? AND name = 'loss'", (bytes(flipped), key))
    con.commit()
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # SQLite cannot see it
    con.close()
    assert (out / "report-cache.json").is_file()  # a rerun would take the cached report ...
    rerun = ["run", "convergence", "--out", str(out), "--no-progress", *_sets(TINY)]
    for argv in (["runs", str(out)], ["report", str(out)], rerun):  # ... and still checks the data
        _one_line(*_invoke(capsys, argv), str(db), "corrupt", f"array 'loss' of run {key} fails its checksum")
    with Store(out, create=False) as store, pytest.raises(StoreError, match="fails its checksum"):
        store.arrays(key)

    out2 = _copy(tiny, tmp_path / "E")
    con = sqlite3.connect(out2 / "results.sqlite")
    key = con.execute("SELECT key FROM runs WHERE stage = 1 LIMIT 1").fetchone()[0]
    con.execute("UPDATE runs SET metrics = replace(metrics, '0.', '0.9') WHERE key = ?", (key,))
    con.commit()
    con.close()
    _one_line(*_invoke(capsys, ["report", str(out2)]), "corrupt", f"run {key} fails its checksum")


# --- item 3: store and environment faults -------------------------------------------------------
def _drop_dac():
    """Child process: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that
    root obeys file modes after exec (a read-only directory is read-only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _cli(argv, **kw):
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=300, **kw)


def _partial(tmp_path: Path) -> tuple[Path, Path, list[tuple]]:
    """A probe directory of 6 runs of which 4 are stored (2 unfinished)."""
    spec, out = _probe_dir(tmp_path)
    con = sqlite3.connect(out / "results.sqlite")
    gone = [k for (k,) in con.execute("SELECT key FROM runs ORDER BY id DESC LIMIT 2")]
    con.executemany("DELETE FROM arrays WHERE run_key = ?", [(k,) for k in gone])
    con.executemany("DELETE FROM runs WHERE key = ?", [(k,) for k in gone])
    con.commit()
    con.close()
    return spec, out, _rows(out / "results.sqlite")


def _fault_readonly(out, spec):
    for p in [out, *out.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)

    def undo():
        for p in [out, *out.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return undo, "subprocess"


def _fault_readonly_files(out, spec):
    files = [p for p in out.rglob("*") if p.is_file()]
    for p in files:
        p.chmod(0o444)
    return (lambda: [p.chmod(0o644) for p in files]), "subprocess"


def _fault_zero_byte(out, spec):
    db = out / "results.sqlite"
    db.rename(out.parent / "saved.sqlite")
    db.write_bytes(b"")
    return (lambda: (out.parent / "saved.sqlite").replace(db)), "empty (0 bytes)"


def _fault_truncated(out, spec):
    db = out / "results.sqlite"
    shutil.copy(db, out.parent / "saved.sqlite")
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    return (lambda: (out.parent / "saved.sqlite").replace(db)), "corrupt"


def _fault_older_schema(out, spec):
    db = out / "results.sqlite"
    shutil.copy(db, out.parent / "saved.sqlite")
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 0")
    con.execute("ALTER TABLE runs DROP COLUMN checksum")
    con.execute("ALTER TABLE arrays DROP COLUMN checksum")
    con.execute("ALTER TABLE runs DROP COLUMN attempts")  # a layout older than schema 1
    con.commit()
    con.close()
    return (lambda: (out.parent / "saved.sqlite").replace(db)), "older layout"


def _fault_lock_dir(out, spec):
    lock = out / "results.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    return lock.rmdir, "results.lock is not a regular file"


def _fault_disk_full(out, spec):
    import reslim._src.experiments.store as store_mod

    con = sqlite3.connect(out / "results.sqlite")
    con.execute("VACUUM")  # no free pages left to reuse
    con.close()
    orig = store_mod.Store._connect

    def connect(self, path):  # SQLite's own SQLITE_FULL: no page beyond the current ones
        conn = orig(self, path)
        n = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {n}")
        return conn
    store_mod.Store._connect = connect
    return (lambda: setattr(store_mod.Store, "_connect", orig)), "database or disk is full"


FAULTS = {"read-only output": _fault_readonly, "read-only files": _fault_readonly_files,
          "zero-byte store": _fault_zero_byte,
          "truncated store": _fault_truncated, "older schema": _fault_older_schema,
          "results.lock a directory": _fault_lock_dir, "disk full": _fault_disk_full}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_one_line_keeps_runs_and_resumes(capsys, tmp_path, fault):
    spec, out, before = _partial(tmp_path)
    undo, text = FAULTS[fault](out, spec)
    argv = ["run", str(spec), "--out", str(out), "--no-progress"]
    try:
        if text == "subprocess":  # root ignores file modes: run the CLI without CAP_DAC_OVERRIDE
            r = _cli(argv, preexec_fn=_drop_dac)
            line = _one_line(r.returncode, r.stdout, r.stderr, str(out))
            assert "not writable" in line or "Permission denied" in line or "readonly" in line, line
        else:
            _one_line(*_invoke(capsys, argv), text)
    finally:
        undo()
    after = _rows(out / "results.sqlite")
    assert after[: len(before)] == before  # every finished run kept, untouched (disk full: one more fit)
    assert len(after) == 4 + (fault == "disk full")
    code, o, e = _invoke(capsys, argv)
    assert code == 0 and f"6 runs, {len(after)} already stored, {6 - len(after)} done" in o, (o, e)


def test_schema_1_store_is_read_and_migrated(capsys, tmp_path):
    spec, out, before = _partial(tmp_path)
    db = out / "results.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 0")
    con.execute("ALTER TABLE runs DROP COLUMN checksum")
    con.execute("ALTER TABLE arrays DROP COLUMN checksum")
    con.commit()
    con.close()
    code, o, e = _invoke(capsys, ["runs", str(out)])
    assert code == 0, e
    with Store(out, create=False) as store:  # read as it is (not migrated by a reader)
        assert len(store.records()) == 4 and all("diag" in store.arrays(r.key) for r in store.records())
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()
    code, o, e = _invoke(capsys, ["run", str(spec), "--out", str(out), "--no-progress"])
    assert code == 0 and "6 runs, 4 already stored, 2 done" in o, (o, e)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM arrays WHERE checksum IS NULL").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM runs WHERE checksum IS NULL").fetchone()[0] == 0
    con.close()
    assert _rows(db)[:4] == before


def test_newer_schema_is_refused(capsys, tmp_path):
    spec, out, before = _partial(tmp_path)
    con = sqlite3.connect(out / "results.sqlite")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    for argv in (["runs", str(out)], ["run", str(spec), "--out", str(out), "--no-progress"]):
        _one_line(*_invoke(capsys, argv), "schema version 3", "newer reslim")


def test_bad_output_paths(capsys, tmp_path):
    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE)
    for out, text in [(tmp_path / ("x" * 300) / "o", "255"),
                      (tmp_path / "results.sqlite", "not a store file"),
                      (tmp_path / "sub" / "my.db", "not a store file")]:
        _one_line(*_invoke(capsys, ["run", str(spec), "--out", str(out), "--no-progress"]), "--out", text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.toml"]


def test_store_file_arguments_of_runs_and_report(capsys, tmp_path):
    spec, out = _probe_dir(tmp_path)
    for cmd in ("runs", "report"):
        code, o, e = _invoke(capsys, [cmd, str(out / "results.sqlite")])
        assert code == 0, e
    assert (out / "report.md").exists() and not (out / "results.sqlite" / "report.md").exists()


def test_store_deleted_mid_run(capsys, tmp_path):
    spec = tmp_path / "slow.toml"
    spec.write_text(PROBE.replace("runs = 6", "runs = 16") + "sleep = 0.15\n")
    out = tmp_path / "S"
    db = out / "results.sqlite"
    proc = subprocess.Popen([*CLI, "run", str(spec), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if db.exists() and len(_rows(db)) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None
        db.unlink()
        o, e = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    _one_line(proc.returncode, o, e, str(db), "deleted or replaced")
    assert not db.exists()  # nothing was written into a new file behind the user's back
    code, o, e = _invoke(capsys, ["run", str(spec), "--out", str(out), "--no-progress"])
    assert code == 0 and "16 runs, 0 already stored, 16 done" in o, (o, e)  # a fresh store, whole
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone() == (16, 16)
    con.close()


# --- reports: atomic, under the lock ------------------------------------------------------------
def test_report_write_failure_keeps_the_old_report(tmp_path, tiny):
    """A file size limit (a full disk for this process) while report.html is written: one line,
    exit 2, the previous report.html intact, no temporary file left."""
    out = _copy(tiny, tmp_path / "D")
    old = (out / "report.html").read_bytes()
    assert len(old) > 150_000

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    r = _cli(["report", str(out)], preexec_fn=limit)
    _one_line(r.returncode, r.stdout, r.stderr, "cannot write the report", str(out))
    assert (out / "report.html").read_bytes() == old
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_lock_is_held_until_the_report_is_written(tmp_path, monkeypatch):
    import reslim._src.report.report as report_mod

    spec = tmp_path / "probe.toml"
    spec.write_text(PROBE)
    out = tmp_path / "P"
    seen = []
    orig = report_mod.render_html

    def render(title, sections):
        with Store(out) as other:
            with pytest.raises(StoreError, match="in use by another reslim run") as err:
                other.lock()
            seen.append(str(err.value))
        return orig(title, sections)
    monkeypatch.setattr(report_mod, "render_html", render)
    run_experiment(load_spec(spec), out, progress=False)
    assert len(seen) == 1 and f"pid {os.getpid()}" in seen[0]


# --- item 4: the lock file ----------------------------------------------------------------------
@pytest.mark.parametrize("what", ["symlink", "fifo"])
def test_lock_file_is_not_followed(capsys, tmp_path, what):
    spec, out, before = _partial(tmp_path)
    lock = out / "results.lock"
    lock.unlink(missing_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    if what == "symlink":
        lock.symlink_to(victim)
        text = "symbolic link"
    else:
        os.mkfifo(lock)
        text = "not a regular file"
    argv = ["run", str(spec), "--out", str(out), "--no-progress"]
    _one_line(*_invoke(capsys, argv), str(lock), text)
    assert victim.read_text() == "precious\n" and _rows(out / "results.sqlite") == before
    lock.unlink()
    code, o, e = _invoke(capsys, argv)
    assert code == 0 and "6 runs, 4 already stored" in o, e
