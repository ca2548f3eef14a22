"""Optional fused CPU kernels (``kernels.c``) for the block GEMMs of a GD step.

Built on first use with the system C compiler (``cc -O3 -march=native -fopenmp``) into a
per-machine cache (``$RESLIM_CACHE`` or ``~/.cache/reslim``) and loaded with ctypes; where no
compiler works, or ``RESLIM_KERNELS=0``, :func:`available` is False and the model uses torch.
On AVX2/FMA CPUs the register-tiled intrinsics (``kernels_tiled.inc``) run, for float64 and
float32; elsewhere (or with ``RESLIM_KERNELS=generic``) the portable C loops, float64 only.

``xw(x, W, out, alpha, update)``:  out = alpha x @ W          then  W += coef * left^T @ right
``xwt(x, W, out, alpha, update, base)``: out = base + alpha x @ W^T, then  W += coef * left^T @ right
with ``x`` (B, N, K) (batch stride 0 allowed), ``W`` (B, D, M) contiguous, all of one dtype;
``coef`` (B,) float64.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("kernels.c")
_INCLUDES = [Path(__file__).with_name("kernels_tiled.inc")]
_lib: ctypes.CDLL | None = None
_dtypes: tuple[torch.dtype, ...] = ()  # what the loaded library takes, set once by library()
_tried = False
_error: str | None = None

_I, _P, _D, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int


def _cpu_tag() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:12]


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found")
    src = b"".join(p.read_bytes() for p in (_SOURCE, *_INCLUDES))
    generic = os.environ.get("RESLIM_KERNELS") == "generic"  # the portable C path, for testing
    tag = hashlib.sha256(src).hexdigest()[:12] + "-" + _cpu_tag() + ("-generic" if generic else "")
    cache = Path(os.environ.get("RESLIM_CACHE", Path.home() / ".cache" / "reslim"))
    lib = cache / f"kernels-{tag}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            out = Path(tmp) / lib.name
            cmd = [cc, "-O3", "-march=native", "-fopenmp", "-std=c11", "-shared", "-fPIC",
                   *(["-DRESLIM_GENERIC"] if generic else []), str(_SOURCE), "-o", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"compiling kernels failed: {res.stderr.strip()[:300]}")
            os.replace(out, lib)  # atomic: concurrent builders never see a partial file
    dll = ctypes.CDLL(str(lib))
    dll.reslim_xw.argtypes = [_I, _I, _I, _I, _P, _I, _P, _I, _P, _I, _D, _P, _I, _P, _I, _P, _INT]
    dll.reslim_xwt.argtypes = [_I, _I, _I, _I, _P, _I, _P, _I, _P, _I, _P, _I, _D, _P, _I, _P, _I, _P,
                               _INT]
    dll.reslim_xw.restype = dll.reslim_xwt.restype = None
    dll.reslim_nmax.restype = dll.reslim_has_float32.restype = ctypes.c_int
    if dll.reslim_has_float32():
        dll.reslim_xw_f32.argtypes = dll.reslim_xw.argtypes
        dll.reslim_xwt_f32.argtypes = dll.reslim_xwt.argtypes
        dll.reslim_xw_f32.restype = dll.reslim_xwt_f32.restype = None
    return dll


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them once; None where unavailable (see :data:`error`)."""
    global _lib, _dtypes, _tried, _error
    if not _tried:
        _tried = True
        if os.environ.get("RESLIM_KERNELS", "1") == "0":
            _error = "disabled by RESLIM_KERNELS=0"
        else:
            try:
                _lib = _build()
                _dtypes = (torch.float64, torch.float32) if _lib.reslim_has_float32() else (torch.float64,)
            except (OSError, RuntimeError) as err:
                _error = str(err)
    return _lib


def available() -> bool:
    return library() is not None


def dtypes() -> tuple[torch.dtype, ...]:
    """The element types the loaded kernels take (none where unavailable)."""
    library()
    return _dtypes


def usable(*tensors: torch.Tensor, n: int) -> bool:
    """Whether the kernels apply: CPU tensors of a dtype they take and at most NMAX samples."""
    lib = library()
    return (lib is not None and n <= lib.reslim_nmax()
            and all(t.device.type == "cpu" and t.dtype in _dtypes for t in tensors))


def _entry(name: str, *tensors: torch.Tensor):
    """The C function for the tensors' common dtype."""
    dtype = tensors[0].dtype
    if any(t.dtype != dtype for t in tensors):
        raise ValueError(f"{name}: all tensors must have one dtype, got {[t.dtype for t in tensors]}")
    if dtype not in dtypes():
        raise ValueError(f"{name}: no kernels for {dtype} here (have {list(_dtypes)})")
    return getattr(_lib, name) if dtype == torch.float64 else getattr(_lib, name + "_f32")


def _bstride(t: torch.Tensor) -> int:
    return t.stride(0) if t.dim() == 3 and t.shape[0] > 1 else 0


def _rows(t: torch.Tensor, name: str) -> int:
    """Batch stride of ``t`` ((K, C) or (B, K, C) with contiguous rows; 0 = broadcast)."""
    if t.stride(-1) != 1 or t.stride(-2) != t.shape[-1]:
        raise ValueError(f"{name} must have contiguous rows")
    return _bstride(t)


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


def xw(x: torch.Tensor, W: torch.Tensor, out: torch.Tensor, alpha: float = 1.0,
       left: torch.Tensor | None = None, right: torch.Tensor | None = None,
       coef: torch.Tensor | None = None) -> None:
    """``out = alpha x @ W`` (B, N, M); with ``coef``: then ``W += coef[b] left[b]^T right[b]``."""
    B, D, M = W.shape
    update = _weight_args(W, out, left, right, coef)
    _entry("reslim_xw", x, W, out, *([left, right] if coef is not None else []))(
        B, x.shape[-2], D, M, x.data_ptr(), _rows(x, "x"), W.data_ptr(), W.stride(0),
        out.data_ptr(), out.stride(0), float(alpha), *update, torch.get_num_threads())


def xwt(x: torch.Tensor, W: torch.Tensor, out: torch.Tensor, alpha: float,
        left: torch.Tensor | None = None, right: torch.Tensor | None = None,
        coef: torch.Tensor | None = None, base: torch.Tensor | None = None) -> None:
    """``out = base + alpha x @ W^T`` (B, N, D) (``base`` defaults to ``out``: accumulate);
    with ``coef``: then ``W += coef[b] left[b]^T right[b]``."""
    B, D, M = W.shape
    update = _weight_args(W, out, left, right, coef)
    base = out if base is None else base
    _entry("reslim_xwt", x, W, out, base, *([left, right] if coef is not None else []))(
        B, x.shape[-2], D, M, x.data_ptr(), _rows(x, "x"), W.data_ptr(), W.stride(0),
        out.data_ptr(), out.stride(0), base.data_ptr(), _rows(base, "base"), float(alpha),
        *update, torch.get_num_threads())
