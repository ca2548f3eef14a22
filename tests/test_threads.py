"""Thread budgets: ``reslim.threads``, ``train(threads=...)``, the small-work rule and the CLI's
OMP_WAIT_POLICY default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import reslim
from reslim._src.training import trainer


def _other(n: int) -> int:
    return 2 if n == 1 else 1


def test_threads_context_sets_and_restores():
    before = torch.get_num_threads()
    target = _other(before)
    with reslim.threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), reslim.threads(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with reslim.threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"), reslim.threads(0):
        pass


def _tiny():
    data = reslim.gaussian_data(N=4, d_in=3, d_out=2, seed=0)
    net = reslim.ResNet(reslim.Shape(L=2, M=4, D=4), param=reslim.get_parameterization("mlu"),
                        d_in=3, d_out=2, activation="tanh", seeds=range(2))
    return net, data


@pytest.mark.parametrize("budget", [1, 2, None])
def test_train_threads_budget_applies_and_restores(budget, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    net, data = _tiny()
    reslim.train(net, data, steps=2, threads=budget,
                 callback=lambda k, loss: seen.append(torch.get_num_threads()))
    assert torch.get_num_threads() == before
    expected = 1 if budget is None else budget  # None: the tiny net is small work -> 1 thread
    assert seen and set(seen) == {expected}


def test_small_work_rule_covers_the_readme_example():
    data = reslim.gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    net = reslim.ResNet(reslim.Shape(L=50, M=64, D=64), param=reslim.get_parameterization("mlu"),
                        d_in=5, d_out=5, activation="tanh", seeds=range(5))
    assert trainer.small_work(net, data.N)
    big = reslim.ResNet(reslim.Shape(L=2, M=256, D=256), param=reslim.get_parameterization("mlu"),
                        d_in=5, d_out=5, activation="tanh", seeds=range(5))
    assert not trainer.small_work(big, data.N)


_PROBE = ("import sys, os, reslim_cli; assert 'torch' not in sys.modules; "
          "print(os.environ.get('OMP_WAIT_POLICY'))")


@pytest.mark.parametrize("preset, expected", [(None, "passive"), ("ACTIVE", "ACTIVE")])
def test_cli_entry_sets_omp_wait_policy_only_if_unset(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected


def test_console_script_entry_is_reslim_cli():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    if "reslim" not in scripts:
        pytest.skip("reslim is not installed")
    assert scripts["reslim"] == "reslim_cli:main"
