"""Loading the fused CPU kernels safely (issue 13, item 8): a library planted in the cache is never
loaded, builds are locked, keyed, timed out and self-tested, the wrappers check their shapes,
and ``reslim info`` names the backend.

The builds here go through a wrapper compiler (``$CC``) that counts its compilations and builds
the portable C loops (``-DRESLIM_GENERIC``, under a second) or a given source: real libraries,
quickly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from reslim._src.models import kernels

REAL_CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(REAL_CC is None or not hasattr(os, "geteuid"),
                                reason="needs a C compiler and a POSIX system")
OTHER_UID = 12345

BOGUS_C = r"""
#include <stdint.h>
int reslim_nmax(void) { return 64; }
int reslim_has_float32(void) { return 0; }
void reslim_xw(void) {}   /* leaves out untouched: wrong products */
void reslim_xwt(void) {}
"""


def _planted_c(marker: Path) -> str:
    """A library that proves it was loaded: its constructor writes ``marker``."""
    return BOGUS_C + f"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {{
    FILE *f = fopen("{marker}", "w");
    if (f) {{ fputs("planted code ran", f); fclose(f); }}
}}
"""


def _wrapper(dirpath: Path, source: Path | None = None, sleep: float = 0) -> tuple[Path, Path]:
    """A compiler script and its counter file (one line per compilation)."""
    count = dirpath / "count"
    script = dirpath / "cc-wrapper"
    src = f'"{source}"' if source else '"$src" -fopenmp -std=c11 -DRESLIM_GENERIC'
    script.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then exec "{REAL_CC}" --version; fi
echo build >> "{count}"
sleep {sleep}
out=""; src=""
while [ $# -gt 0 ]; do
  case "$1" in -o) out="$2"; shift;; *.c) src="$1";; esac
  shift
done
exec "{REAL_CC}" -O1 -shared -fPIC {src} -o "$out"
""")
    script.chmod(0o755)
    return script, count


def _builds(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A clean kernels state, a cache in tmp_path and the counting wrapper as $CC."""
    cc, count = _wrapper(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("RESLIM_CACHE", str(cache))
    monkeypatch.delenv("RESLIM_KERNELS", raising=False)
    monkeypatch.delenv("RESLIM_BUILD_TIMEOUT", raising=False)
    kernels._reset()
    yield cache, count
    kernels._reset()


def _name() -> str:
    return kernels._lib_name(kernels.cache_key(kernels.key_inputs(kernels._compiler())), False)


def _plant(where: Path, marker: Path, sidecar: str | None = "match") -> Path:
    """Compiles the marker-writing library to ``where`` (and a sidecar matching it, or not)."""
    src = where.parent / "planted.c"
    src.write_text(_planted_c(marker))
    subprocess.run([REAL_CC, "-shared", "-fPIC", str(src), "-o", str(where)], check=True)
    if sidecar is not None:
        digest = hashlib.sha256(where.read_bytes()).hexdigest() if sidecar == "match" else sidecar
        Path(str(where) + ".sha256").write_text(digest + "\n")
    return where


def _load_with_warnings() -> tuple[kernels.Status, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st = kernels.status()
    return st, [str(w.message) for w in caught]


@pytest.mark.parametrize("unsafe", ["other-writable", "group-writable", "owned-by-another-uid"])
def test_planted_library_in_an_unsafe_cache_dir_is_not_loaded(fresh, tmp_path, unsafe):
    """Another user who can write the cache (or owns it) plants kernels-<key>.so with a matching
    sidecar (the tag and the hash are computable by anyone): it never runs; the kernels are built
    in a private directory instead, with a warning naming why."""
    cache, count = fresh
    cache.mkdir()
    marker = tmp_path / "marker"
    _plant(cache / _name(), marker)
    if unsafe == "other-writable":
        cache.chmod(0o777)
    elif unsafe == "group-writable":
        cache.chmod(0o770)
    else:
        cache.chmod(0o755)
        os.chown(cache, OTHER_UID, OTHER_UID)
    st, warned = _load_with_warnings()
    assert not marker.exists(), "the planted library was loaded"
    assert st.active and kernels.available(), st
    assert Path(st.path).parent != cache.resolve() and _builds(count) == 1
    assert stat.S_IMODE(os.stat(Path(st.path).parent).st_mode) == 0o700
    assert any("building privately" in w and str(cache.resolve()) in w for w in warned), warned


def test_planted_library_owned_by_another_user_is_replaced(fresh, tmp_path):
    """In a safe cache, a library (and sidecar) owned by another uid is rebuilt, not loaded."""
    cache, count = fresh
    cache.mkdir(mode=0o700)
    marker = tmp_path / "marker"
    lib = _plant(cache / _name(), marker)
    os.chown(lib, OTHER_UID, OTHER_UID)
    os.chown(str(lib) + ".sha256", OTHER_UID, OTHER_UID)
    st = kernels.status()
    assert not marker.exists(), "the planted library was loaded"
    assert st.active and st.path == str(lib.resolve()) and _builds(count) == 1
    assert os.stat(lib).st_uid == os.geteuid() and "rebuilt" in st.reason


def test_library_whose_hash_differs_from_the_sidecar_is_rebuilt(fresh, tmp_path):
    """A library owned by this user but whose SHA-256 is not the recorded one (or with no record)
    is rebuilt; a verified one is served from the cache without compiling."""
    cache, count = fresh
    cache.mkdir(mode=0o700)
    marker = tmp_path / "marker"
    lib = _plant(cache / _name(), marker, sidecar="0" * 64)
    st = kernels.status()
    assert not marker.exists() and st.active and _builds(count) == 1
    assert "differs from the recorded" in st.reason
    recorded = Path(str(lib) + ".sha256").read_text().strip()
    assert recorded == hashlib.sha256(lib.read_bytes()).hexdigest() == st.sha256
    kernels._reset()  # a second process: the verified library is loaded, not compiled again
    assert kernels.status().active and _builds(count) == 1

    kernels._reset()
    os.unlink(lib)
    _plant(lib, marker, sidecar=None)
    os.unlink(str(lib) + ".sha256")
    st = kernels.status()
    assert not marker.exists() and st.active and _builds(count) == 2 and "no recorded hash" in st.reason


def test_symlinked_library_is_refused(fresh, tmp_path):
    """kernels-<key>.so as a symlink (here to a library with a matching sidecar) is not followed."""
    cache, count = fresh
    cache.mkdir(mode=0o700)
    marker = tmp_path / "marker"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = _plant(elsewhere / "evil.so", marker)
    lib = cache / _name()
    lib.symlink_to(target)
    shutil.copy(str(target) + ".sha256", str(lib) + ".sha256")
    st = kernels.status()
    assert not marker.exists(), "the symlinked library was loaded"
    assert st.active and "symlink" in st.reason and _builds(count) == 1
    assert not lib.is_symlink() and lib.is_file()


def test_cache_key_covers_compiler_flags_source_and_cpu(fresh, monkeypatch):
    """The key changes with every input; the CPU features are read per platform; a library built
    for other CPU features (or flags) is never served: a new one is built."""
    cache, count = fresh
    cc = kernels._compiler()
    inputs = kernels.key_inputs(cc)
    assert inputs["compiler"] == cc[0] and inputs["compiler_version"]
    assert "-march=native" in inputs["flags"] and inputs["source"] == kernels._source_hash()
    key = kernels.cache_key(inputs)
    for field in inputs:
        assert kernels.cache_key({**inputs, field: inputs[field] + "x"}) != key, field
    assert kernels.cache_key(kernels.key_inputs(cc, generic=True)) != key
    assert kernels.cache_key(kernels.key_inputs(["/usr/bin/true"])) != key

    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 fma\n"
    assert kernels._cpu_features("Linux", x86) == "avx2 fma fpu sse2"
    assert kernels._cpu_features("Linux", x86.replace("avx2 ", "")) != "avx2 fma fpu sse2"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd0c\n"
    assert kernels._cpu_features("Linux", arm) == "asimd fp sve"
    big_little = arm + "processor\t: 1\nFeatures\t: fp asimd\n"
    assert kernels._cpu_features("Linux", big_little) == "asimd fp | asimd fp sve"
    if Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in inputs["cpu"]

    first = kernels.status()
    assert first.active and _builds(count) == 1
    kernels._reset()
    monkeypatch.setattr(kernels, "_cpu_features", lambda *a: "some other cpu")
    second = kernels.status()
    assert second.active and second.path != first.path and _builds(count) == 2


def test_empty_reslim_cache_means_the_default(fresh, monkeypatch, tmp_path):
    """RESLIM_CACHE="" is unset: the cache is ~/.cache/reslim, not the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RESLIM_CACHE", "")
    monkeypatch.chdir(work)
    st = kernels.status()
    assert st.active and Path(st.path).parent == (home / ".cache" / "reslim").resolve()
    assert list(work.iterdir()) == []


def test_concurrent_first_uses_compile_once(fresh, tmp_path):
    """Two processes loading together (released by a barrier; the compiler takes >= 1 s) build the
    library once: the second waits on the lock and loads the first's build."""
    cache, _ = fresh
    (tmp_path / "slow").mkdir()
    cc, count = _wrapper(tmp_path / "slow", sleep=1)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    code = ("import os, sys, time, pathlib\n"
            "from reslim._src.models import kernels\n"
            "b = pathlib.Path(sys.argv[1]); (b / str(os.getpid())).touch()\n"
            "while len(list(b.iterdir())) < 2: time.sleep(0.005)\n"
            "print(kernels.status())\n")
    env = dict(os.environ, CC=str(cc), RESLIM_CACHE=str(cache), OMP_WAIT_POLICY="passive")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(barrier)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.startswith("fused kernels: built at"), err
    assert _builds(count) == 1
    assert outs[0][0] == outs[1][0]  # the same library, the same hash


def test_build_timeout_falls_back_to_torch(fresh, monkeypatch, tmp_path):
    """A compiler that hangs is killed after RESLIM_BUILD_TIMEOUT seconds; torch runs, with one
    warning naming the reason, and no partial file is left in the cache."""
    import time

    cache, _ = fresh
    (tmp_path / "hang").mkdir()
    cc, _ = _wrapper(tmp_path / "hang", sleep=60)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("RESLIM_BUILD_TIMEOUT", "1")
    t0 = time.monotonic()
    st, warned = _load_with_warnings()
    assert time.monotonic() - t0 < 20
    assert not st.active and "timed out after 1 s" in st.reason and not kernels.available()
    assert len(warned) == 1 and "timed out" in warned[0] and "using torch" in warned[0]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_self_test_failure_falls_back_with_one_warning(fresh, monkeypatch, tmp_path):
    """A library that loads but computes wrong products is caught by the self-test: torch runs,
    one warning per process, and the model does not pick the kernels."""
    from reslim import ResNet, Shape

    (tmp_path / "bogus").mkdir()
    src = tmp_path / "bogus" / "bogus.c"
    src.write_text(BOGUS_C)
    cc, count = _wrapper(tmp_path / "bogus", source=src)
    monkeypatch.setenv("CC", str(cc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.library() is None and kernels.library() is None
        assert not kernels.available() and kernels.dtypes() == () and kernels.nmax() == 0
        st = kernels.status()
    assert _builds(count) == 1
    assert str(st).startswith("torch: self-test failed: x @ W in torch.float64")
    assert len(caught) == 1 and "self-test failed" in str(caught[0].message)
    net = ResNet(Shape(2, 70, 33), d_in=3, d_out=2, seeds=[0])
    net.use_kernels = True
    assert not net.kernels_apply(7)
    x, W = torch.randn(1, 4, 5, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    out = torch.empty(2, 4, 6, dtype=torch.float64)
    kernels.xw(x, W, out, 2.0)  # runs on torch
    torch.testing.assert_close(out, 2.0 * x @ W)


_BOUNDS = r"""
import json, torch
from reslim._src.models import kernels
assert kernels.available(), kernels.status()
res = {"nmax": kernels.nmax()}
g = torch.Generator().manual_seed(0)
def r(*s):
    return torch.randn(*s, generator=g, dtype=torch.float64)
B, N, D, M = 2, 5000, 64, 64   # N far above the kernels' maximum
x, W, left, right, coef = r(B, N, D), r(B, D, M), r(B, N, D), r(B, N, M), r(B)
W0, out = W.clone(), torch.empty(B, N, M, dtype=torch.float64)
kernels.xw(x, W, out, 1.5, left=left, right=right, coef=coef)
res["xw"] = max((out - 1.5 * x @ W0).abs().max().item(),
                (W - W0 - coef[:, None, None] * left.mT @ right).abs().max().item())
xm, base, W = r(B, N, M), r(B, N, D), W0.clone()
out = torch.empty(B, N, D, dtype=torch.float64)
kernels.xwt(xm, W, out, 0.5, left=left, right=right, coef=coef, base=base)
res["xwt"] = max((out - base - 0.5 * xm @ W0.mT).abs().max().item(),
                 (W - W0 - coef[:, None, None] * left.mT @ right).abs().max().item())
errors = []
for call in (lambda: kernels.xw(r(B, 3, D + 1), W, torch.empty(B, 3, M, dtype=torch.float64)),
             lambda: kernels.xwt(r(B, 3, M - 1), W, torch.empty(B, 3, D, dtype=torch.float64), 1.0),
             lambda: kernels.xw(r(3, 3, D), W, torch.empty(B, 3, M, dtype=torch.float64)),
             lambda: kernels.xw(r(B, 3, D), W, torch.empty(B, 3, M + 1, dtype=torch.float64)),
             lambda: kernels.xw(r(B, 3, D), W, torch.empty(B, 3, M, dtype=torch.float64),
                                left=r(B, 3, D), right=r(B, 2, M), coef=r(B))):
    try:
        call()
        errors.append(None)
    except ValueError as e:
        errors.append(str(e))
res["errors"] = errors
print(json.dumps(res))
"""


def test_wrappers_check_bounds_and_shapes(fresh):
    """N above the kernels' maximum runs on torch (exactly, not a SIGSEGV); a mismatched inner
    dimension (or batch, out or update shape) is a ValueError naming the shapes. In a child
    process, so that a crash fails the test instead of ending the run."""
    cache, count = fresh
    res = subprocess.run([sys.executable, "-c", _BOUNDS], env=dict(os.environ, OMP_WAIT_POLICY="passive"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-2000:]}"
    got = json.loads(res.stdout)
    assert got["nmax"] == 64 and got["xw"] < 1e-9 and got["xwt"] < 1e-9
    k_d, k_m, batch, out, upd = got["errors"]
    assert k_d and "(2, 3, 65)" in k_d and "(2, 64, 64)" in k_d and "65 != 64" in k_d
    assert k_m and "(2, 3, 63)" in k_m and "63 != 64" in k_m
    assert batch and "(3, 3, 64)" in batch
    assert out and "(2, 3, 64)" in out and "(2, 3, 65)" in out
    assert upd and "right" in upd and "(2, 2, 64)" in upd


def test_reslim_info_prints_the_backend(fresh, monkeypatch):
    """``reslim info``: versions, threads, and the backend with where and why."""
    from typer.testing import CliRunner

    from reslim.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    lib = kernels.status().path
    digest = Path(lib + ".sha256").read_text().strip()
    assert f"backend: fused kernels: built at {lib} (sha256 {digest[:16]}" in res.output
    assert f"torch {torch.__version__}" in res.output and f"numpy {np.__version__}" in res.output
    assert f"threads: {torch.get_num_threads()}" in res.output

    kernels._reset()
    monkeypatch.setenv("RESLIM_KERNELS", "0")
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "backend: torch: RESLIM_KERNELS=0" in res.output

    kernels._reset()
    monkeypatch.delenv("RESLIM_KERNELS")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "backend: torch: compiler not found" in res.output
