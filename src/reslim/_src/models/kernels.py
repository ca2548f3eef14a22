"""Optional fused CPU kernels (``kernels.c``) for the block GEMMs of a GD step.

Built on first use with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``; flags
:data:`FLAGS`) into a per-machine cache (``$RESLIM_CACHE``, or ``~/.cache/reslim`` where it is
unset or empty) and loaded with ctypes; where no compiler works, the self-test fails, or
``RESLIM_KERNELS=0`` (or ``torch``), :func:`available` is False and the model uses torch. On
AVX2/FMA CPUs the register-tiled intrinsics (``kernels_tiled.inc``) run, for float64 and float32;
elsewhere (or with ``RESLIM_KERNELS=generic``) the portable C loops, float64 only.

Loading is hardened against a planted library (see docs/models.md, "Fused CPU kernels"):

- The library's name carries :func:`cache_key` of everything that shapes the binary: compiler
  path, its ``--version``, flags, source hash, OS, machine, libc and the CPU's feature flags.
- The cache directory must be owned by this user and not group/other-writable, and so must every
  directory above it (root's, or sticky like ``/tmp``, are fine); otherwise the library is built
  in a private ``mkdtemp`` directory (mode 0700) for this process only.
- The library and its sidecar ``<name>.sha256`` (written at build time, atomically) are opened
  with ``O_NOFOLLOW`` (symlinks refused) and must be regular files owned by this user and not
  group/other-writable; the library's SHA-256 must equal the sidecar's. Any entry that fails is
  rebuilt (and replaced, atomically) rather than loaded.
- Builds run under ``flock`` on ``<name>.lock`` in the cache (concurrent first uses compile once),
  compile to a temporary name in the same directory and ``os.replace`` it, and are killed after
  ``$RESLIM_BUILD_TIMEOUT`` seconds (default 300).
- Once loaded, a self-test checks ``x @ W``, ``x @ W^T`` and the fused updates against NumPy in
  every dtype the library takes. Any failure falls back to torch with one warning per process.

``xw(x, W, out, alpha, update)``:  out = alpha x @ W          then  W += coef * left^T @ right
``xwt(x, W, out, alpha, update, base)``: out = base + alpha x @ W^T, then  W += coef * left^T @ right
with ``x`` (B, N, K) (batch stride 0 allowed), ``W`` (B, D, M) contiguous, all of one dtype;
``coef`` (B,) float64. Shapes are checked (a mismatched inner dimension is a ValueError naming the
shapes); a call the kernels cannot take (N above :func:`nmax`, an empty dimension, a dtype or
device they lack, no library) runs the same computation on torch instead.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no flock, and no cc either)
    fcntl = None  # type: ignore[assignment]

_SOURCE = Path(__file__).with_name("kernels.c")
_INCLUDES = [Path(__file__).with_name("kernels_tiled.inc")]
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c11", "-shared", "-fPIC")
DEFAULT_BUILD_TIMEOUT = 300.0  # seconds; $RESLIM_BUILD_TIMEOUT overrides
_DISABLED = ("0", "torch", "off", "false", "no")

_lib: ctypes.CDLL | None = None
_dtypes: tuple[torch.dtype, ...] = ()  # what the loaded library takes, set once by library()
_tried = False
_error: str | None = None  # why the kernels are unavailable (None when loaded)
_status: Status | None = None
_warned: set[str] = set()  # warnings already given in this process

_I, _P, _D, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
_XW_ARGS: list[Any] = [_I, _I, _I, _I, _P, _I, _P, _I, _P, _I, _D, _P, _I, _P, _I, _P, _INT]
_XWT_ARGS: list[Any] = [_I, _I, _I, _I, _P, _I, _P, _I, _P, _I, _P, _I, _D, _P, _I, _P, _I, _P, _INT]


@dataclass(frozen=True)
class Status:
    """Which backend runs the block GEMMs, and why."""

    active: bool  # the fused kernels are loaded
    reason: str  # "built at PATH (sha256 ...)", or why torch runs
    path: str | None = None
    sha256: str | None = None

    def __str__(self) -> str:
        return ("fused kernels: " if self.active else "torch: ") + self.reason


class _Rejected(Exception):
    """A cache entry that must not be loaded (the message says why)."""


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------- the cache key


def _cache_dir() -> Path:
    """``$RESLIM_CACHE``, or ``~/.cache/reslim`` where it is unset or empty."""
    env = os.environ.get("RESLIM_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reslim"


def _compiler() -> list[str] | None:
    """The compiler command (``$CC``, split like a shell word list; else cc, gcc, clang)."""
    cc = os.environ.get("CC", "").strip()
    names = [shlex.split(cc)] if cc else [["cc"], ["gcc"], ["clang"]]
    for argv in names:
        exe = shutil.which(argv[0])
        if exe:
            return [os.path.abspath(exe), *argv[1:]]
    return None


def _compiler_version(cc: list[str]) -> str:
    try:
        res = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"compiler {cc[0]} --version failed: {err}") from err
    return (res.stdout + res.stderr).strip()


def _sysctl(*names: str) -> str:
    try:
        res = subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip()


def _cpu_features(system: str | None = None, cpuinfo: str | None = None) -> str:
    """The CPU's instruction-set features, as the compiler's ``-march=native`` sees them.

    Linux: every distinct ``flags`` (x86) or ``Features`` (ARM) line of /proc/cpuinfo, sorted;
    macOS: ``sysctl`` of ``machdep.cpu.*features`` and all of ``hw.optional``; elsewhere (or when
    neither says anything) ``platform.processor()``."""
    system = platform.system() if system is None else system
    found: set[str] = set()
    if system == "Linux":
        if cpuinfo is None:
            try:
                cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
            except OSError:
                cpuinfo = ""
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                found.add(" ".join(sorted(value.split())))
    elif system == "Darwin":
        text = "\n".join(filter(None, (
            _sysctl("-n", "machdep.cpu.brand_string"), _sysctl("-n", "machdep.cpu.features"),
            _sysctl("-n", "machdep.cpu.leaf7_features"), _sysctl("hw.optional"))))
        if text:
            found.add(text)
    if not found:
        found.add(f"processor: {platform.processor()}")
    return " | ".join(sorted(found))


def _flags(generic: bool) -> list[str]:
    return [*FLAGS, *(["-DRESLIM_GENERIC"] if generic else [])]


def _source_hash() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in (_SOURCE, *_INCLUDES))).hexdigest()


def key_inputs(cc: list[str], generic: bool = False) -> dict[str, str]:
    """Everything the built library depends on: what :func:`cache_key` hashes."""
    return {
        "compiler": " ".join(cc),
        "compiler_version": _compiler_version(cc),
        "flags": " ".join(_flags(generic)),
        "source": _source_hash(),
        "system": platform.system(),
        "machine": platform.machine(),
        "libc": " ".join(platform.libc_ver()),
        "cpu": _cpu_features(),
    }


def cache_key(inputs: dict[str, str]) -> str:
    """A digest of :func:`key_inputs`: a library is only ever served for equal inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def _lib_name(key: str, generic: bool) -> str:
    return f"kernels-{key}{'-generic' if generic else ''}.so"


# ---------------------------------------------------------------- safe files


def _unsafe_dir(path: Path) -> str | None:
    """Why libraries in ``path`` (a resolved path) must not be loaded; None when they may.

    It must be a directory owned by this user, not group/other-writable; every directory above it
    owned by this user or root, and not group/other-writable unless sticky (like /tmp)."""
    euid = os.geteuid()
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"{path}: {err.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != euid:
        return f"{path} is owned by uid {st.st_uid}, not this user ({euid})"
    if st.st_mode & 0o022:
        return f"{path} is group/other-writable (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in path.parents:
        try:
            st = os.lstat(parent)
        except OSError as err:
            return f"{parent}: {err.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{parent} is a symlink"
        if st.st_uid not in (euid, 0):
            return f"{parent} is owned by uid {st.st_uid}, neither this user nor root"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is group/other-writable and not sticky (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _prepare_dir(path: Path) -> tuple[Path, str | None]:
    """The resolved cache directory (created 0700 if absent) and why it is unsafe (None: safe)."""
    path = Path(os.path.realpath(path))
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        return path, f"cannot create {path}: {err.strerror}"
    path = Path(os.path.realpath(path))
    return path, _unsafe_dir(path)


def _open_trusted(path: Path) -> int:
    """A read-only descriptor of ``path``: a regular file, no symlink, owned by this user and not
    group/other-writable. FileNotFoundError where absent; _Rejected otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _Rejected(f"{path} is a symlink") from err
        raise _Rejected(f"{path}: {err.strerror}") from err
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = f"{path} is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"{path} is owned by uid {st.st_uid}, not this user ({os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"{path} is group/other-writable (mode {stat.S_IMODE(st.st_mode):o})"
    if why:
        os.close(fd)
        raise _Rejected(why)
    return fd


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _load_verified(lib: Path) -> tuple[ctypes.CDLL, str]:
    """Loads ``lib`` after checking it and its sidecar (see :func:`_open_trusted`) and that its
    SHA-256 is the one recorded at build time; raises FileNotFoundError or _Rejected."""
    fd = _open_trusted(lib)
    try:
        digest = hashlib.sha256(_read_fd(fd)).hexdigest()
        try:
            side = _open_trusted(lib.with_name(lib.name + ".sha256"))
        except FileNotFoundError as err:
            raise _Rejected(f"{lib} has no recorded hash ({lib.name}.sha256)") from err
        try:
            recorded = _read_fd(side).decode(errors="replace").strip()
        finally:
            os.close(side)
        if recorded != digest:
            raise _Rejected(f"{lib}: sha256 {digest[:16]}... differs from the recorded {recorded[:16]}...")
        dll = ctypes.CDLL(str(lib))
        st, now = os.fstat(fd), os.stat(lib)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):  # replaced while we looked
            raise _Rejected(f"{lib} changed while it was loaded")
        return dll, digest
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".sha256")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _build_timeout() -> float:
    text = os.environ.get("RESLIM_BUILD_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_BUILD_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise RuntimeError(f"RESLIM_BUILD_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise RuntimeError(f"RESLIM_BUILD_TIMEOUT must be positive, got {text!r}")
    return value


def _compile(cc: list[str], flags: list[str], lib: Path, timeout: float) -> None:
    """Compiles to a temporary name beside ``lib``, records its SHA-256 in the sidecar, then
    renames it to ``lib`` (atomic: no reader ever sees a partial file)."""
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        cmd = [*cc, *flags, str(_SOURCE), "-o", tmp]
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        except OSError as err:
            raise RuntimeError(f"cannot run the compiler {cc[0]}: {err}") from err
        try:
            _, err_text = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # the compiler and everything it started
            proc.communicate()
            raise RuntimeError(f"compiling kernels timed out after {timeout:g} s "
                               "(RESLIM_BUILD_TIMEOUT)") from None
        if proc.returncode != 0:
            raise RuntimeError(f"compiling kernels failed: {err_text.strip()[:300]}")
        os.chmod(tmp, 0o755)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        _write_atomic(lib.with_name(lib.name + ".sha256"), digest + "\n")
        os.replace(tmp, lib)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _locked(lock: Path, timeout: float):
    """Holds ``flock`` on ``lock`` (opened with O_NOFOLLOW); yields False if not had in time."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- loading


def _configure(dll: ctypes.CDLL) -> tuple[torch.dtype, ...]:
    dll.reslim_xw.argtypes, dll.reslim_xwt.argtypes = _XW_ARGS, _XWT_ARGS
    dll.reslim_xw.restype = dll.reslim_xwt.restype = None
    dll.reslim_nmax.restype = dll.reslim_has_float32.restype = ctypes.c_int
    if not dll.reslim_has_float32():
        return (torch.float64,)
    dll.reslim_xw_f32.argtypes, dll.reslim_xwt_f32.argtypes = _XW_ARGS, _XWT_ARGS
    dll.reslim_xw_f32.restype = dll.reslim_xwt_f32.restype = None
    return (torch.float64, torch.float32)


def _self_test(dll: ctypes.CDLL, dtypes: tuple[torch.dtype, ...]) -> None:
    """Tiny ``x @ W``, ``x @ W^T`` and fused updates (with row and column tails, a broadcast x)
    against NumPy in float64, in every dtype; raises RuntimeError naming what differs."""
    nmax = dll.reslim_nmax()
    if not 1 <= nmax <= 1 << 20:
        raise RuntimeError(f"self-test failed: reslim_nmax() = {nmax}")
    rng = np.random.default_rng(0)
    B, N, D, M = 2, 3, 9, 21
    for dtype in dtypes:
        tol = 1e-12 if dtype == torch.float64 else 1e-4
        npt = np.float64 if dtype == torch.float64 else np.float32

        def rnd(*shape, npt=npt):  # values exact in dtype
            return rng.standard_normal(shape).astype(npt).astype(np.float64)

        x, xm, W, left, right, base = (rnd(1, N, D), rnd(B, N, M), rnd(B, D, M), rnd(B, N, D),
                                       rnd(B, N, M), rnd(B, N, D))
        coef = rng.standard_normal(B)

        def t(a, dtype=dtype):
            return torch.tensor(a, dtype=dtype)

        checks = []
        Wk, out = t(W), torch.zeros(B, N, M, dtype=dtype)
        _call_xw(dll, x=t(x), W=Wk, out=out, alpha=1.5, left=t(left), right=t(right),
                 coef=torch.tensor(coef))
        checks += [("x @ W", out, 1.5 * x @ W),
                   ("x @ W update", Wk, W + coef[:, None, None] * left.transpose(0, 2, 1) @ right)]
        Wk, out = t(W), torch.zeros(B, N, D, dtype=dtype)
        _call_xwt(dll, x=t(xm), W=Wk, out=out, alpha=0.7, left=t(left), right=t(right),
                  coef=torch.tensor(coef), base=t(base))
        checks += [("x @ W^T", out, base + 0.7 * xm @ W.transpose(0, 2, 1)),
                   ("x @ W^T update", Wk, W + coef[:, None, None] * left.transpose(0, 2, 1) @ right)]
        for what, got, want in checks:
            err = float(np.max(np.abs(got.double().numpy() - want)) / (1 + np.max(np.abs(want))))
            if not err <= tol:  # also catches NaN
                raise RuntimeError(f"self-test failed: {what} in {dtype} is off by {err:.3g} "
                                   f"(relative; tolerance {tol:g})")


def _fall_back(reason: str) -> Status:
    _warn_once(f"reslim: the fused CPU kernels are unavailable ({reason}); using torch")
    return Status(False, reason)


def _load() -> Status:
    """Builds or finds, checks, loads and self-tests the library; sets ``_lib`` and ``_dtypes``."""
    global _lib, _dtypes
    mode = os.environ.get("RESLIM_KERNELS", "1").strip().lower()
    if mode in _DISABLED:  # the user's choice: no warning
        return Status(False, f"RESLIM_KERNELS={os.environ['RESLIM_KERNELS']}")
    generic = mode == "generic"
    cc = _compiler()
    if cc is None:
        cc_env = os.environ.get("CC", "").strip()
        return _fall_back("compiler not found" + (f" (CC={cc_env!r})" if cc_env else ""))
    try:
        key = cache_key(key_inputs(cc, generic))
        timeout = _build_timeout()
        name = _lib_name(key, generic)
        cache, unsafe = _prepare_dir(_cache_dir())
        dll: ctypes.CDLL | None = None
        digest: str | None = None
        lib: Path | None = None
        notes: list[str] = []
        if unsafe is None:
            with _locked(cache / f"kernels-{key}.lock", timeout + 60) as got:
                if not got:
                    unsafe = f"timed out waiting for the build lock in {cache}"
                else:
                    lib = cache / name
                    try:
                        dll, digest = _load_verified(lib)
                    except FileNotFoundError:
                        pass
                    except _Rejected as rejected:
                        notes.append(f"rebuilt: {rejected}")
                    if dll is None:
                        _compile(cc, _flags(generic), lib, timeout)
                        dll, digest = _load_verified(lib)
        if unsafe is not None:  # build for this process only, in a directory nobody else can touch
            private = Path(os.path.realpath(tempfile.mkdtemp(prefix="reslim-kernels-")))
            atexit.register(shutil.rmtree, private, True)
            bad_private = _unsafe_dir(private)
            if bad_private is not None:
                return _fall_back(f"no safe directory to build in: cache: {unsafe}; private: {bad_private}")
            _warn_once(f"reslim: kernel cache not used ({unsafe}); building privately in {private}")
            notes.append(f"private build: {unsafe}")
            lib = private / name
            _compile(cc, _flags(generic), lib, timeout)
            dll, digest = _load_verified(lib)
        if dll is None or digest is None:
            raise RuntimeError("the kernels library was not loaded")
        dtypes = _configure(dll)
        _self_test(dll, dtypes)
    except _Rejected as why:
        return _fall_back(f"built library rejected: {why}")
    except (OSError, RuntimeError, AttributeError) as err:  # AttributeError: a missing symbol
        return _fall_back(str(err))
    _lib, _dtypes = dll, dtypes
    note = "".join(f"; {n}" for n in notes)
    return Status(True, f"built at {lib} (sha256 {digest[:16]}...){note}", str(lib), digest)


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them once; None where unavailable (see :func:`status`)."""
    global _tried, _error, _status
    if not _tried:
        _tried = True
        _status = _load()
        _error = None if _status.active else _status.reason
    return _lib


def status() -> Status:
    """Which backend is active and why (loads the kernels first if not yet tried)."""
    library()
    assert _status is not None  # set by library()
    return _status


def _reset() -> None:
    """Forget the loaded library and the warnings given (for tests: the next call loads anew)."""
    global _lib, _dtypes, _tried, _error, _status
    _lib, _dtypes, _tried, _error, _status = None, (), False, None, None
    _warned.clear()


def available() -> bool:
    return library() is not None


def dtypes() -> tuple[torch.dtype, ...]:
    """The element types the loaded kernels take (none where unavailable)."""
    library()
    return _dtypes


def nmax() -> int:
    """The most samples per kernel call (0 where unavailable)."""
    lib = library()
    return lib.reslim_nmax() if lib is not None else 0


def usable(*tensors: torch.Tensor, n: int) -> bool:
    """Whether the kernels apply: CPU tensors of a dtype they take and 1..NMAX samples."""
    lib = library()
    return (lib is not None and 1 <= n <= lib.reslim_nmax()
            and all(t.device.type == "cpu" and t.dtype in _dtypes for t in tensors))


# ---------------------------------------------------------------- the wrappers


def _bstride(t: torch.Tensor) -> int:
    return t.stride(0) if t.dim() == 3 and t.shape[0] > 1 else 0


def _rows(t: torch.Tensor, name: str) -> int:
    """Batch stride of ``t`` ((K, C) or (B, K, C) with contiguous rows; 0 = broadcast)."""
    if t.stride(-1) != 1 or t.stride(-2) != t.shape[-1]:
        raise ValueError(f"{name} must have contiguous rows")
    return _bstride(t)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_operand(fn: str, name: str, t: torch.Tensor, B: int, rows: int, cols: int) -> None:
    """``t`` is (rows, cols) or (1 or B, rows, cols)."""
    if not (t.dim() in (2, 3) and _shape(t)[-2:] == (rows, cols) and (t.dim() == 2 or t.shape[0] in (1, B))):
        raise ValueError(f"{fn}: {name} must be ({rows}, {cols}) or ({B} or 1, {rows}, {cols}), "
                         f"got {_shape(t)}")


def _check(fn: str, x: torch.Tensor, W: torch.Tensor, out: torch.Tensor, left, right, coef,
           base=None) -> int:
    """Checks every shape against ``W`` (B, D, M); returns N (the samples)."""
    if W.dim() != 3:
        raise ValueError(f"{fn}: W must be (B, D, M), got {_shape(W)}")
    B, D, M = W.shape
    K = D if fn == "xw" else M  # x @ W: x (N, D); x @ W^T: x (N, M)
    if x.dim() not in (2, 3) or (x.dim() == 3 and x.shape[0] not in (1, B)):
        raise ValueError(f"{fn}: x must be (N, K) or ({B} or 1, N, K), got {_shape(x)} with W {_shape(W)}")
    if x.shape[-1] != K:
        op = "x @ W" if fn == "xw" else "x @ W^T"
        raise ValueError(f"{fn}: {op} with x {_shape(x)} and W {_shape(W)}: inner dimensions differ "
                         f"({x.shape[-1]} != {K})")
    N = x.shape[-2]
    want = (B, N, M) if fn == "xw" else (B, N, D)
    if _shape(out) != want:
        raise ValueError(f"{fn}: out must be {want} for x {_shape(x)} and W {_shape(W)}, got {_shape(out)}")
    if base is not None:
        _check_operand(fn, "base", base, B, N, D)
    if coef is not None and (left is None or right is None):
        raise ValueError(f"{fn}: the update needs left, right and coef")
    if coef is not None:
        _check_operand(fn, "left", left, B, N, D)
        _check_operand(fn, "right", right, B, N, M)
        if _shape(coef) != (B,):
            raise ValueError(f"{fn}: coef must be ({B},), got {_shape(coef)}")
    tensors = [t for t in (x, W, out, base, left, right) if t is not None]
    if any(t.dtype != W.dtype for t in tensors):
        raise ValueError(f"{fn}: all tensors must have one dtype, got {[t.dtype for t in tensors]}")
    return N


def _weight_args(W: torch.Tensor, out: torch.Tensor, left, right, coef) -> tuple:
    """Checks ``W`` and ``out``; the update's ctypes arguments (NULL and 0 without ``coef``)."""
    if not (W.is_contiguous() and out.is_contiguous()):
        raise ValueError("W and out must be contiguous")
    if coef is None:
        return (None, 0, None, 0, None)
    if coef.dtype != torch.float64 or not coef.is_contiguous():
        raise ValueError("coef must be a contiguous float64 tensor")
    return (left.data_ptr(), _rows(left, "left"), right.data_ptr(), _rows(right, "right"),
            coef.data_ptr())


def _entry(dll: ctypes.CDLL, name: str, dtype: torch.dtype):
    return getattr(dll, name) if dtype == torch.float64 else getattr(dll, name + "_f32")


def _call_xw(dll, x, W, out, alpha, left, right, coef) -> None:
    B, D, M = W.shape
    update = _weight_args(W, out, left, right, coef)
    _entry(dll, "reslim_xw", W.dtype)(
        B, x.shape[-2], D, M, x.data_ptr(), _rows(x, "x"), W.data_ptr(), W.stride(0),
        out.data_ptr(), out.stride(0), float(alpha), *update, torch.get_num_threads())


def _call_xwt(dll, x, W, out, alpha, left, right, coef, base) -> None:
    B, D, M = W.shape
    update = _weight_args(W, out, left, right, coef)
    _entry(dll, "reslim_xwt", W.dtype)(
        B, x.shape[-2], D, M, x.data_ptr(), _rows(x, "x"), W.data_ptr(), W.stride(0),
        out.data_ptr(), out.stride(0), base.data_ptr(), _rows(base, "base"), float(alpha),
        *update, torch.get_num_threads())


def _kernels_take(N: int, W: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether this call can run on the kernels (else the same computation runs on torch);
    ``None`` entries (operands a call does not have) are skipped."""
    return min(N, *W.shape) > 0 and usable(W, *(t for t in tensors if t is not None), n=N)


def _torch_update(W, left, right, coef) -> None:
    if coef is not None:
        W.add_(coef.to(W.dtype).view(-1, 1, 1) * torch.matmul(left.mT, right))


def xw(x: torch.Tensor, W: torch.Tensor, out: torch.Tensor, alpha: float = 1.0,
       left: torch.Tensor | None = None, right: torch.Tensor | None = None,
       coef: torch.Tensor | None = None) -> None:
    """``out = alpha x @ W`` (B, N, M); with ``coef``: then ``W += coef[b] left[b]^T right[b]``.

    Shapes are checked (ValueError); beyond the kernels' reach (N > :func:`nmax`, ...) torch runs."""
    N = _check("xw", x, W, out, left, right, coef)
    if _kernels_take(N, W, x, out, *([left, right] if coef is not None else [])):
        _call_xw(_lib, x, W, out, alpha, left, right, coef)
        return
    prod = torch.matmul(x, W)
    _torch_update(W, left, right, coef)
    out.copy_(alpha * prod)


def xwt(x: torch.Tensor, W: torch.Tensor, out: torch.Tensor, alpha: float,
        left: torch.Tensor | None = None, right: torch.Tensor | None = None,
        coef: torch.Tensor | None = None, base: torch.Tensor | None = None) -> None:
    """``out = base + alpha x @ W^T`` (B, N, D) (``base`` defaults to ``out``: accumulate);
    with ``coef``: then ``W += coef[b] left[b]^T right[b]``.

    Shapes are checked (ValueError); beyond the kernels' reach (N > :func:`nmax`, ...) torch runs."""
    N = _check("xwt", x, W, out, left, right, coef, base)
    base = out if base is None else base
    if _kernels_take(N, W, x, out, base, *([left, right] if coef is not None else [])):
        _call_xwt(_lib, x, W, out, alpha, left, right, coef, base)
        return
    prod = torch.matmul(x, W.mT)
    _torch_update(W, left, right, coef)
    out.copy_(base + alpha * prod)
