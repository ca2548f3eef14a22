"""``reslim info``: versions, threads, and which backend runs the block GEMMs (and why)."""

from __future__ import annotations

import os
import platform
import sys
import warnings

import typer

from .app import app


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
    typer.echo(f"backend: {st}")
    if st.active:
        typer.echo(f"kernel dtypes: {', '.join(str(d).removeprefix('torch.') for d in kernels.dtypes())}; "
                   f"at most {kernels.nmax()} samples per call")
    typer.echo(f"kernel cache: {kernels._cache_dir()}")
