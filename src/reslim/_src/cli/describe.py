"""``reslim describe``: the effective per-tensor scales of a parameterization at a shape."""

from __future__ import annotations

import math

import typer

from ..models.transformer import TRANSFORMER, TRANSFORMER_PRESETS, get_transformer_parameterization
from ..scaling.parameterization import PRESETS, get_parameterization
from ..scaling.shapes import Shape
from .app import app, fail


def parse_options(items: list[str]) -> dict:
    out: dict[str, float | str] = {}
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
                              help=f"parameterization: {', '.join(PRESETS)} (transformer: "
                              f"{', '.join(TRANSFORMER_PRESETS)})"),
    shape: str = typer.Option(..., "--shape", metavar="L,M,D", help="depth, hidden width and embedding "
                              "dimension, e.g. 16,64,64"),
    block: str = typer.Option("two-layer", metavar="two-layer|one-layer", help="residual block"),
    d_in: int = typer.Option(5, "--d-in", help="input dimension"),
    d_out: int = typer.Option(5, "--d-out", help="output dimension"),
    lr: float = typer.Option(1.0, "--lr", help="base learning rate eta"),
    option: list[str] = typer.Option([], "--option", metavar="KEY=VALUE",
                                     help="preset option, e.g. alpha=2 (repeatable)"),
    arch: str = typer.Option("resnet", "--arch", metavar="resnet|transformer",
                             help="architecture: the MLP-block ResNet or the Transformer (heads as units)"),
    key_dim: int = typer.Option(2, "--r", help="transformer: key-query dimension per head"),
    value_dim: int = typer.Option(2, "--r-v", help="transformer: value dimension per head"),
    seq_len: int = typer.Option(4, "--seq-len", help="transformer: tokens per sequence"),
) -> None:
    """Print the effective init std, multiplier and learning rates of every tensor."""
    from rich.console import Console
    from rich.table import Table

    for name, value in (("--d-in", d_in), ("--d-out", d_out)):
        if value < 1:
            fail(f"{name} must be a positive integer, got {value}")
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr must be a positive finite number, got {lr!r}")
    if arch not in ("resnet", "transformer"):
        fail(f"--arch must be resnet or transformer, got {arch!r}")
    try:
        s = Shape.parse(shape)
        if arch == "transformer":
            for name, value in (("--r", key_dim), ("--r-v", value_dim), ("--seq-len", seq_len)):
                if value < 1:
                    raise ValueError(f"{name} must be a positive integer, got {value}")
            table = get_transformer_parameterization(param, **parse_options(option))
            env = TRANSFORMER.env(s, alpha=table.alpha, r=key_dim, r_v=value_dim, d_in=d_in, d_out=d_out,
                                  T=seq_len)
            name, rows = table.name, table.rows(env, base_lr=lr)
        else:
            p = get_parameterization(param, **parse_options(option))
            name, rows = p.name, p.rows(s, d_in, d_out, base_lr=lr, block=block)
    except ValueError as err:
        fail(str(err))
    extra = f", r={key_dim}, r_v={value_dim}, T={seq_len}" if arch == "transformer" else ""
    out = Table(title=f"{name} ({arch}) at {s}, d_in={d_in}, d_out={d_out}{extra}, eta={lr:g}")
    roles = arch == "transformer"  # several block kinds: name each row's role and kind
    for col in ("tensor", *(("role", "kind") if roles else ()), "shape", "init std", "multiplier", "SGD lr",
                "Adam lr", "rules"):
        out.add_column(col)
    for r in rows:
        scalar = r.get("kind") == "scalar" or r["role"] == "branch"
        label = "beta" if r["role"] == "branch" else r["role"]
        rules = (f"init {r['init_rule']}, mult {r['mult_rule']}, sgd {r['lr_sgd_rule']}, "
                 f"adam {r['lr_adam_rule']}") if not scalar else f"{label} {r['mult_rule']}"
        out.add_row(r["tensor"], *((r["role"], r["kind"]) if roles else ()), r["shape"],
                    f"{r['init_std']:.4g}", f"{r['multiplier']:.4g}", f"{r['lr_sgd']:.4g}",
                    f"{r['lr_adam']:.4g}", rules)
    Console(width=160).print(out)
