"""Entry point of the ``reslim`` command (``reslim --help``); the console script is
``reslim_cli:main``, which sets ``OMP_WAIT_POLICY=passive`` (unless set) before torch loads."""

from __future__ import annotations

from ._src.cli import compare as _compare  # noqa: F401  (registers `reslim compare`)
from ._src.cli import coord_check as _coord_check  # noqa: F401  (coord-check, phase-diagram)
from ._src.cli import describe  # noqa: F401  (registers commands)
from ._src.cli import info as _info  # noqa: F401  (registers `reslim info`)
from ._src.cli import run as _run  # noqa: F401  (registers run, runs, report)
from ._src.cli import shape as _shape  # noqa: F401  (registers `reslim shape`)
from ._src.cli.app import app, run_app


def main() -> None:
    run_app()


__all__ = ["app", "main"]
