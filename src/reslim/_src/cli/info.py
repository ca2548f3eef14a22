"""``reslim info``: versions, threads, and which backend runs the block GEMMs (and why)."""

from __future__ import annotations

import os
import platform
import sys
import warnings

import typer

from .app import app


def wait_policy() -> str:
    """``OMP_WAIT_POLICY`` of this process and where it came from: the ``reslim`` command (which
    sets ``passive`` when it is unset, before torch loads), the environment, or nowhere."""
    value = os.environ.get("OMP_WAIT_POLICY")
    entry = sys.modules.get("reslim_cli")
    main = sys.modules.get("__main__")
    if entry is None and (getattr(main, "__file__", None) or "").endswith("reslim_cli.py"):
        entry = main
    set_here = bool(getattr(entry, "SET_OMP_WAIT_POLICY", False))
    if value is None:
        return ("unset (OpenMP's default: idle threads may spin; the reslim command sets passive, "
                "library users set it before importing torch)")
    if set_here:
        return f"{value} (set by the reslim command: it was unset)"
    how = ("kept by the reslim command, which sets passive only when unset" if entry is not None
           else "not started through the reslim command")
    return f"{value} (from the environment; {how})"


@app.command()
def info() -> None:
    """Print the reslim, torch and NumPy versions, the threads, and the active compute backend."""
    import numpy
    import torch

    import reslim

    from ..models import kernels

    with warnings.catch_warnings():  # the reason is printed below
        warnings.simplefilter("ignore", RuntimeWarning)
        st = kernels.status()
    typer.echo(f"reslim {reslim.__version__}")
    typer.echo(f"torch {torch.__version__}")
    typer.echo(f"numpy {numpy.__version__}")
    typer.echo(f"python {sys.version.split()[0]} on {platform.system()} {platform.machine()}")
    typer.echo(f"threads: {torch.get_num_threads()} (torch; OMP_NUM_THREADS="
               f"{os.environ.get('OMP_NUM_THREADS', 'unset')})")
    typer.echo(f"OMP_WAIT_POLICY: {wait_policy()}")
    typer.echo(f"backend: {st}")
    if st.active:
        typer.echo(f"kernel dtypes: {', '.join(str(d).removeprefix('torch.') for d in kernels.dtypes())}; "
                   f"at most {kernels.nmax()} samples per call")
    typer.echo(f"kernel cache: {kernels._cache_dir()}")
