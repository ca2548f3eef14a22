"""The ``reslim`` console script: sets process-wide defaults, then runs :func:`reslim.cli.main`.

A module outside the ``reslim`` package because ``import reslim`` imports torch, and the
OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch loads it. ``passive`` makes idle
OpenMP threads sleep instead of spinning: on a shared, busy machine spinning threads steal the
cores the work needs (the main job took 67-121 s with the default, 33-48 s passive). A value
already set in the environment is kept. Library users set it themselves before importing torch.
"""

from __future__ import annotations

import os

#: whether this process's OMP_WAIT_POLICY was set here (it was unset) rather than inherited;
#: ``reslim info`` reports it
SET_OMP_WAIT_POLICY = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def main() -> None:
    from reslim.cli import main as _main

    _main()


if __name__ == "__main__":
    main()
