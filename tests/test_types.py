"""The type checker over src/ (issue 18): mypy, configured in pyproject.toml's [tool.mypy]."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[1]


def test_src_type_checks():
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--cache-dir", str(ROOT / ".mypy_cache"),
                                      str(ROOT / "src" / "reslim"), str(ROOT / "src" / "reslim_cli.py")])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert status == 0, f"mypy found {len(errors)} errors:\n" + "\n".join(errors[:40]) + stderr


def test_package_ships_py_typed():
    assert (ROOT / "src" / "reslim" / "py.typed").is_file()
