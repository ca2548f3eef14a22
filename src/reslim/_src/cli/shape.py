"""``reslim shape``: the compute-optimal (L, M, D) for a parameter budget P = L M D."""

from __future__ import annotations

import math
from fractions import Fraction

import typer

from .app import app, fail


def _frac(v: float) -> str:
    f = Fraction(v).limit_denominator(12)
    text = f"{f.numerator}/{f.denominator}" if abs(float(f) - v) < 1e-6 and f.denominator != 1 else f"{v:.4g}"
    return f"({text})"


@app.command()
def shape(
    budget: str = typer.Option(..., "--budget", help="parameter budget P = L*M*D, e.g. 1e8"),
    model: str = typer.Option("bound", "--model", help="bound: 1/L + sqrt(D/(LM)) + 1/sqrt(D); "
                              "output: 1/L + D/(LM) + 1/sqrt(D)"),
    slack: float = typer.Option(0.1, "--slack", help="shallowest shape within (1+slack) of the best error"),
) -> None:
    """Print the compute-optimal shape for a budget, its P-exponents and the predicted rate."""
    from ..measure.optimal import THEORY_MODELS, compute_optimal_shape, optimal_exponents

    try:
        P = float(budget)
    except ValueError:
        fail(f"--budget must be a number, got {budget!r}")
    if not math.isfinite(P) or P < 1:
        fail(f"--budget must be a finite number >= 1, got {budget!r}")
    if model not in THEORY_MODELS:
        fail(f"--model must be one of {', '.join(THEORY_MODELS)}, got {model!r}")
    if not (math.isfinite(slack) and slack >= 0):
        fail(f"--slack must be a finite number >= 0, got {slack!r}")
    try:
        s, err = compute_optimal_shape(P, model, slack=slack)
        ex = optimal_exponents(model)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"model: {model}  error ~ {THEORY_MODELS[model][1]}")
    typer.echo(f"budget P = {P:.4g}")
    typer.echo(f"compute-optimal shape: L={s.L} M={s.M} D={s.D}  (L*M*D = {s.P:.4g})")
    typer.echo(f"predicted error: {err:.4g}  "
               f"(shallowest shape within a factor {1 + slack:g} of the best at this P)")
    typer.echo(f"exponents: L ~ P^{_frac(ex['L'])}, M ~ P^{_frac(ex['M'])}, D ~ P^{_frac(ex['D'])}; "
               f"error ~ P^{_frac(ex['rate'])}")
