"""Helpers shared by the CLI tests: run the app in-process, and check one-line errors."""

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import reslim.cli  # noqa: F401  (registers the commands)
from reslim._src.cli.app import app, run_app


def invoke(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``run_app(argv)`` as the ``reslim`` script runs it: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        run_app(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    """Assert exit code 2 and exactly one stderr line ``error: ...`` containing ``needles``."""
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def run_spec_text(tmp_path: Path, text: str, *extra: str):
    """Write ``text`` as a spec file and ``reslim run`` it into ``tmp_path/out``: (result, out)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(spec), "--out", str(out), "--no-progress", *extra])
    return result, out


def tree(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``path`` (names in ``skip`` left out) with its SHA-256, to check that
    nothing was written."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name not in skip}
