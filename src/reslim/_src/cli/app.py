"""The ``reslim`` command: one typer app; each topic registers its commands in its own module."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

#: what the help shows for a value of each type (``<str>`` and ``<list[str]>`` say nothing to a user)
_METAVARS = {str: "TEXT", int: "INT", float: "NUMBER"}


def _plain_metavars(params: list) -> None:
    for param in params:
        if isinstance(param, typer.core.TyperArgument):
            param.metavar = param.metavar or (param.name or "value").upper()
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]  # the name column says it
        elif param.metavar is not None:
            continue
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            inner = getattr(annotation, "__args__", (annotation,))
            param.metavar = next((_METAVARS[t] for t in inner if t in _METAVARS), "VALUE")


class Command(TyperCommand):
    """A command whose help names values plainly: ``TEXT``, ``INT``, ``NUMBER``, the choices of an
    option that has them (given as its ``metavar``, e.g. ``local|ray``), nothing for a flag, and
    arguments in capitals without braces (``reslim run [OPTIONS] SPEC``); its line in the command
    list is the first paragraph of its help, rewrapped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self.params)
        if self.help and not self.short_help:
            self.short_help = " ".join(self.help.strip().split("\n\n")[0].split())

    def get_help_option(self, ctx: Any):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    def get_help_option(self, ctx: Any):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Typer(typer.Typer):
    def command(self, *args: Any, cls: type | None = None, **kwargs: Any):  # every command: Command
        return super().command(*args, cls=cls or Command, **kwargs)


app = _Typer(
    name="reslim",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class UsageError(Exception):
    """Bad user input: printed as one line, exit code 2, nothing written."""


def fail(message: str) -> NoReturn:
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
        click_err: Any = err
        if callable(getattr(err, "format_message", None)) and isinstance(getattr(err, "exit_code", 0), int):
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `reslim`: the help
                click_err.show()
            else:
                typer.echo(f"error: {click_err.format_message()}".replace("\n", " "), err=True)
            sys.exit(click_err.exit_code)
        if not isinstance(err, (UsageError, ValueError)):
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        from reslim import __version__

        typer.echo(f"reslim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, metavar="",
                                 help="Print the version and exit."),
) -> None:
    """reslim: finite ResNets of any shape, their limits, distances, rates and reports.

    Every command that writes files writes them under runs/ (each command's --out names another folder).
    """
