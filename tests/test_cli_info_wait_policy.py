"""``reslim info`` shows OMP_WAIT_POLICY and whether the reslim command set it."""

import os
import subprocess
import sys
import types

import pytest

from reslim._src.cli.info import wait_policy


def test_console_entry_reports_that_it_set_the_policy():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", "import reslim_cli; reslim_cli.main()", "info"], env=env,
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("OMP_WAIT_POLICY:"))
    assert line == "OMP_WAIT_POLICY: passive (set by the reslim command: it was unset)"


@pytest.mark.parametrize("entry, value, expected", [
    (True, "active", "active (from the environment; kept by the reslim command"),
    (False, "passive", "passive (from the environment; not started through the reslim command)"),
    (False, None, "unset (OpenMP's default"),
])
def test_wait_policy_says_where_it_came_from(monkeypatch, entry, value, expected):
    if value is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", value)
    fake = types.SimpleNamespace(SET_OMP_WAIT_POLICY=False) if entry else None
    monkeypatch.setitem(sys.modules, "reslim_cli", fake)
    if fake is None:
        monkeypatch.delitem(sys.modules, "reslim_cli")
    assert wait_policy().startswith(expected)
