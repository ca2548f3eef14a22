"""The ``reslim`` command: one typer app; each topic registers its commands in its own module."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="reslim",
    help="Large-scale limits of residual-network training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class UsageError(Exception):
    """Bad user input: printed as one line, exit code 2, nothing written."""


def fail(message: str) -> None:
    """Print a one-line error and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run_app(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except Exception as err:
        # click's usage errors (typer may vendor click): one line, their exit code (2)
        if callable(getattr(err, "format_message", None)) and isinstance(getattr(err, "exit_code", 0), int):
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `reslim`: the help
                err.show()
            else:
                typer.echo(f"error: {err.format_message()}".replace("\n", " "), err=True)
            sys.exit(err.exit_code)
        if not isinstance(err, (UsageError, ValueError)):
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


@app.callback()
def _root() -> None:
    """reslim: finite ResNets of any shape, their limits, distances, rates and reports."""
