"""The command line as a newcomer meets it: help text, --version, --dry-run, progress, reruns,
Ctrl-C, where files go, and one-line errors that never show internals."""

import re

import pytest
from typer.testing import CliRunner

import reslim
from _cli import invoke, one_line_error, run_spec_text, tree
from reslim._src.cli.app import app
from reslim._src.experiments.spec import builtin_specs

PROBE = 'kind = "probe"\nname = "p"\nruns = 3\nwork = 1\nsize = 4\n'
COMMANDS = ["describe", "coord-check", "phase-diagram", "info", "run", "runs", "report", "shape"]


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # choices are not split by the help's wrapping


def _help(capsys, *argv: str) -> str:
    code, out, err = invoke(capsys, [*argv, "--help"])
    assert code == 0, err
    return out


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_names_values_plainly(capsys, command):
    out = _help(capsys, *([command] if command else []))
    for internal in ("<str>", "<int>", "<float>", "<bool>", "<list[", "{spec}", "{directory}"):
        assert internal not in out, (internal, out)


def test_help_shows_choices(capsys):
    from reslim._src.scaling.parameterization import PRESETS

    cc = " ".join(_help(capsys, "coord-check").split())
    assert "gd|sgd|adam" in cc and "tanh|relu|gelu|identity" in cc
    assert all(p in cc for p in PRESETS)  # --param's presets
    assert "local|ray" in _help(capsys, "run")


def test_every_option_has_help():
    import typer

    import reslim.cli  # noqa: F401

    group = typer.main.get_command(app)
    missing = [(name, p.name) for name, cmd in group.commands.items() for p in cmd.params if not p.help]
    assert not missing, missing


def test_short_help_and_version(capsys):
    code, out, _ = invoke(capsys, ["-h"])
    assert code == 0 and "Usage: " in out and "COMMAND [ARGS]" in out
    code, out, _ = invoke(capsys, ["run", "-h"])
    assert code == 0 and "run [OPTIONS] SPEC" in out
    code, out, _ = invoke(capsys, ["--version"])
    assert code == 0 and out.strip() == f"reslim {reslim.__version__}"


def test_command_list_wraps_cleanly():
    """A command's line in ``reslim --help`` is its summary rewrapped to the terminal, not broken
    where its docstring's source lines break."""
    import typer

    import reslim.cli  # noqa: F401

    group = typer.main.get_command(app)
    assert set(COMMANDS) <= set(group.commands)
    for name, cmd in group.commands.items():
        assert cmd.short_help and "\n" not in cmd.short_help, (name, cmd.short_help)


def test_run_help_lists_every_builtin_spec(capsys):
    out = _help(capsys, "run")
    for name in builtin_specs():
        assert re.search(rf"^\s*│?\s*{re.escape(name)}\s+\S", out, re.M), (name, out)


def test_dry_run_writes_nothing_and_counts_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    res = CliRunner().invoke(app, ["run", "convergence", "--dry-run"])
    assert res.exit_code == 0, res.output
    from reslim._src.experiments.registry import get_experiment
    from reslim._src.experiments.spec import load_spec

    spec = load_spec("convergence")
    n = len(get_experiment(spec.kind).expand(spec))
    assert f"{n} runs" in res.output and "estimated cost" in res.output and "estimated memory" in res.output
    assert "floating-point operations" in res.output and "MiB" in res.output
    assert tree(tmp_path) == before and not (tmp_path / "runs").exists()


def test_finished_rerun_says_nothing_to_do(tmp_path):
    res, out = run_spec_text(tmp_path, PROBE)
    assert res.exit_code == 0, res.output
    assert "nothing to do" not in res.output
    res, _ = run_spec_text(tmp_path, PROBE)
    assert res.exit_code == 0, res.output
    assert "nothing to do: all 3 runs are already stored" in res.output
    assert "0/0" not in res.output


def test_progress_count_and_percentage_are_labelled():
    from io import StringIO

    from rich.console import Console

    from reslim._src.experiments.sweep import _Progress

    buf = StringIO()
    bar = _Progress(True, Console(file=buf, width=150, force_terminal=False))
    bar.start(10.0, 4)
    bar.update(9.0, 1, "")
    bar.stop()
    text = buf.getvalue()
    assert "1/4 runs" in text and "90% of cost" in text, text
    empty = _Progress(True, Console(file=StringIO()))
    empty.start(0.0, 0)
    assert empty.bar is None  # nothing to run: no "0/0 runs 0%" bar


def test_ctrl_c_says_what_is_stored_and_how_to_resume(tmp_path, monkeypatch):
    res, out = run_spec_text(tmp_path, PROBE)
    assert res.exit_code == 0, res.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("reslim._src.experiments.sweep.run_experiment", interrupted)
    res, _ = run_spec_text(tmp_path, PROBE)
    assert res.exit_code == 130, res.output
    assert f"interrupted: 3 of 3 runs stored in {out}; the same command resumes" in res.output


def test_coord_check_writes_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["coord-check", "--param", "depth-mup", "--axis", "L", "--sizes", "2,4",
                                   "--base", "2,16,8", "--seeds", "1", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "runs" / "coord-check-depth-mup-gd-L").glob("*.png"))
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "coord-check").exists()


def test_phase_diagram_defaults_under_runs(capsys):
    out = " ".join(_help(capsys, "phase-diagram").split())
    assert "[default: runs/phase-diagram]" in out


def test_scaling_rule_error_is_one_line_without_internals(capsys):
    code, out, err = invoke(capsys, ["describe", "--param", "depth-mup-corrected", "--shape", "4,8,8",
                                     "--option", "correction=abc"])
    line = one_line_error(code, out, err, "correction", "must be a number", "'abc'")
    assert "D*1*L" not in line and "scaling rule" not in line


def test_phase_diagram_shows_progress(tmp_path):
    res = CliRunner().invoke(app, ["phase-diagram", "--exponents", "-1", "--d-exponents", "0.5", "--alphas",
                                   "1,2", "--seeds", "1", "--steps", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "3/3 points" in res.output, res.output
