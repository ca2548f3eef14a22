"""``reslim coord-check --arch transformer``: per-head movement exponents (docs/transformers.md)."""

from __future__ import annotations

import math

from ..diagnostics.heads import SWEEPS  # default sweeps inside the regime of the MLU limit
from .app import fail


def transformer_check(param: str, axes: list[str], sizes: list[float] | None, base: str | None, lr: float,
                      steps: int, seeds: int, tol: float, norm: str = "none") -> None:
    """Print, per axis, the exponents of dq, dk, dv, do (the last step) and their trends."""
    from rich.console import Console
    from rich.table import Table

    from ..diagnostics.heads import head_exponents, head_movement
    from ..models.transformer import TRANSFORMER_PRESETS
    from ..scaling.shapes import Shape
    from ..training.trainer import threads

    if param not in TRANSFORMER_PRESETS:
        fail(f"--param must be a transformer preset ({', '.join(TRANSFORMER_PRESETS)}), got {param!r}")
    if norm not in ("none", "layer", "rms"):
        fail(f"--norm must be none, layer or rms, got {norm!r}")
    bad = [a for a in axes if a not in SWEEPS]
    if bad:
        fail(f"--axis with --arch transformer must be a comma list of L, M, D, got {bad[0]!r}")
    console = Console(width=120)
    for a in axes:
        default, b = SWEEPS[a]
        s: tuple[int, ...] = tuple(int(v) for v in sizes) if sizes else default
        try:
            shape = Shape.parse(base) if base else Shape(*b)
            with threads(1):
                rec = head_movement(param, a, s, base=shape, steps=steps, lr=lr, seeds=tuple(range(seeds)),
                                    norm=None if norm == "none" else norm)
        except ValueError as err:
            fail(str(err))
        ex = head_exponents(rec, tol)
        k = int(ex["step"].max())
        normed = "" if norm == "none" else f", {norm} norm"
        console.print(f"{param} (transformer{normed}) along {a} = {', '.join(map(str, s))}, "
                      f"base {shape}; per-head movement at step {k}")
        table = Table()
        for col in ("quantity", "exponent", "± se", "trend"):
            table.add_column(col)
        for r in ex[ex["step"] == k].itertuples():
            table.add_row(r.quantity, "diverged" if r.exponent == math.inf else f"{r.exponent:+.2f}",
                          "" if math.isnan(r.stderr) else f"{r.stderr:.2f}", r.trend)
        console.print(table)
