"""The transfer kind's hidden width M (``hidden``): networks (L, M, D = width), keys of M = D runs
unchanged, and the quick spec at a shape where completep and mlu are different networks."""

import pytest

import reslim
from reslim._src.diagnostics import transfer as tr
from reslim._src.experiments.registry import get_experiment
from reslim._src.experiments.transfer import TransferConfig
from reslim.experiments import load_spec


def _effective(name, L, M, D):
    """Per role: (multiplier x init std, multiplier^2 x SGD lr), the branch in V's multiplier: the
    quantities the init/multiplier/lr symmetry of docs/theory.md §1 leaves invariant."""
    sc = reslim.get_parameterization(name).effective(reslim.Shape(L, M, D), 16, 4)
    beta = sc["branch"].multiplier
    out = {}
    for role in ("embed", "U", "V", "readout"):
        m = sc[role].multiplier * (beta if role == "V" else 1.0)
        out[role] = (m * sc[role].init_std, m * m * sc[role].lr_sgd)
    return out


def test_quick_spec_compares_completep_and_mlu_where_they_differ():
    spec = load_spec("transfer")
    assert {p.name for p in spec.params} >= {"completep", "mlu"}
    M, D = spec.hidden, spec.widths[0]
    assert M != D
    for L in spec.depths:
        a, b = _effective("completep", L, M, D), _effective("mlu", L, M, D)
        assert a["V"][0] != pytest.approx(b["V"][0]) and a["U"][1] != pytest.approx(b["U"][1])
        same = _effective("completep", L, D, D), _effective("mlu", L, D, D)
        for role in same[0]:  # at M = D they are the same networks with the same updates
            assert same[0][role] == pytest.approx(same[1][role], rel=1e-12)


def test_hidden_builds_L_M_D_networks_and_keeps_M_equal_D_keys():
    kind = get_experiment("transfer")
    base = ["depths=[2]", "seeds=1", "params=[{name='mlu', log2_lr=[0, 1]}]",
            "datasets=[{kind='teacher', n_train=16, n_test=8}]", "train.steps=2"]
    plain = kind.expand(load_spec("transfer", [*base, "widths=[6]", "hidden=6"]))
    assert all("hidden" not in r.config for r in plain)  # M = D: the config of before the option
    runs = kind.expand(load_spec("transfer", [*base, "widths=[6]", "hidden=3"]))
    assert {r.config["hidden"] for r in runs} == {3} and "M=3" in runs[0].label
    assert {r.key for r in runs}.isdisjoint(r.key for r in plain)
    cfg = TransferConfig.from_dict(runs[0].config)
    assert cfg.hidden == 3 and cfg.key == runs[0].key
    assert TransferConfig.from_dict(plain[0].config).hidden is None
    results = kind.execute(runs)
    assert all(r.status in ("done", "diverged") for r in results)


def test_lr_sweep_hidden_width():
    data = reslim.gaussian_data(N=6, d_in=3, d_out=2, seed=0)
    a = tr.lr_sweep(data, param="mlu", depths=[2], widths=[4], lrs=[0.5], seeds=[0], steps=2, hidden=7)
    b = tr.lr_sweep(data, param="mlu", depths=[2], widths=[4], lrs=[0.5], seeds=[0], steps=2)
    assert a["final_loss"].iloc[0] != b["final_loss"].iloc[0]
    net = reslim.ResNet((2, 7, 4), param="mlu", d_in=3, d_out=2, seeds=[0], dtype="float32")
    t = reslim.train(net, data, steps=2, lr=[0.5], optimizer="gd", loss="sum", record=("loss",))
    assert a["final_loss"].iloc[0] == pytest.approx(float(t.loss[-1, 0]), rel=1e-6)
