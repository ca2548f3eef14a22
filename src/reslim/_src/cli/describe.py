"""``reslim describe``: the effective per-tensor scales of a parameterization at a shape."""

from __future__ import annotations

import math

import typer

from ..scaling.parameterization import PRESETS, get_parameterization
from ..scaling.shapes import Shape
from .app import app, fail


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            fail(f"--option expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


@app.command()
def describe(
    param: str = typer.Option(..., "--param", metavar="PRESET",
                              help=f"parameterization: {', '.join(PRESETS)}"),
    shape: str = typer.Option(..., "--shape", metavar="L,M,D", help="depth, hidden width and embedding "
                              "dimension, e.g. 16,64,64"),
    block: str = typer.Option("two-layer", metavar="two-layer|one-layer", help="residual block"),
    d_in: int = typer.Option(5, "--d-in", help="input dimension"),
    d_out: int = typer.Option(5, "--d-out", help="output dimension"),
    lr: float = typer.Option(1.0, "--lr", help="base learning rate eta"),
    option: list[str] = typer.Option([], "--option", metavar="KEY=VALUE",
                                     help="preset option, e.g. alpha=2 (repeatable)"),
) -> None:
    """Print the effective init std, multiplier and learning rates of every tensor."""
    from rich.console import Console
    from rich.table import Table

    for name, value in (("--d-in", d_in), ("--d-out", d_out)):
        if value < 1:
            fail(f"{name} must be a positive integer, got {value}")
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr must be a positive finite number, got {lr!r}")
    try:
        s = Shape.parse(shape)
        p = get_parameterization(param, **parse_options(option))
        rows = p.rows(s, d_in, d_out, base_lr=lr, block=block)
    except ValueError as err:
        fail(str(err))
    table = Table(title=f"{p.name} at {s}, d_in={d_in}, d_out={d_out}, eta={lr:g}")
    for col in ("tensor", "shape", "init std", "multiplier", "SGD lr", "Adam lr", "rules"):
        table.add_column(col)
    for r in rows:
        rules = (f"init {r['init_rule']}, mult {r['mult_rule']}, sgd {r['lr_sgd_rule']}, "
                 f"adam {r['lr_adam_rule']}") if r["role"] != "branch" else f"beta {r['mult_rule']}"
        table.add_row(r["tensor"], r["shape"], f"{r['init_std']:.4g}", f"{r['multiplier']:.4g}",
                      f"{r['lr_sgd']:.4g}", f"{r['lr_adam']:.4g}", rules)
    Console(width=160).print(table)
