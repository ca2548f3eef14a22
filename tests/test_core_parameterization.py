"""Parameterizations as data: monomial rules, presets against docs/theory.md §1, symmetries, CLI."""

import numpy as np
import pytest
from typer.testing import CliRunner

from reslim import Monomial, ResNet, Shape, gaussian_data, get_parameterization, train
from reslim.cli import app


def test_monomial_parsing_and_exponents():
    m = Monomial.parse("alpha*sqrt(D)/(L*M)")
    assert m.exponent("D") == 0.5 and m.exponent("L") == -1 and m.exponent("M") == -1
    assert m.exponent("alpha") == 1
    assert m(L=4, M=5, D=16, alpha=2.0) == pytest.approx(2 * 4 / 20)
    assert Monomial.parse("D^-0.5")(D=64) == pytest.approx(0.125)
    assert Monomial.parse("2*L**0.5")(L=9) == pytest.approx(6)
    assert Monomial.parse(3)(L=1) == 3
    assert (Monomial.parse("L") * "M" / "D").exponent("D") == -1
    for bad, msg in (("foo*L", "unknown symbol"), ("L+M", "only products"), ("-L", "positive"),
                     ("L^M", "exponents must be numbers"), ("L*(", "cannot read")):
        with pytest.raises(ValueError, match=msg):
            Monomial.parse(bad)
    with pytest.raises(ValueError, match="needs a value for D"):
        Monomial.parse("D")(L=1)


@pytest.mark.parametrize("name,branch,u_mult,v_mult,readout,lr_u,lr_v", [
    ("mlu", {"alpha": 1, "L": -1, "M": -1}, {"D": -1}, {}, {"D": -1},
     {"L": 1, "M": 1, "D": 1, "alpha": -2}, {"L": 1, "M": 1, "D": 1, "alpha": -2}),
    ("mlu-unit", {"alpha": 1, "D": 0.5, "L": -1, "M": -1}, {"D": -0.5}, {}, {"D": -1},
     {"L": 1, "M": 1, "alpha": -2}, {"L": 1, "M": 1, "alpha": -2}),
    ("completep", {"alpha": 1, "L": -1}, {"D": -0.5}, {"M": -0.5}, {"D": -1}, {"L": 1, "D": 1},
     {"L": 1, "D": 1}),
    ("depth-mup", {"alpha": 1, "L": -0.5}, {"D": -0.5}, {"M": -0.5}, {"D": -1}, {"D": 1}, {"D": 1}),
    ("depth-mup-corrected", {"alpha": 1, "L": -0.5}, {"D": -0.5}, {"M": -0.5}, {"D": -1},
     {"D": 1, "L": 0.5}, {"D": 1}),
    ("mup", {"alpha": 1}, {"D": -0.5}, {"M": -0.5}, {"D": -1}, {"D": 1}, {"D": 1}),
    ("ntk", {"alpha": 1, "L": -0.5}, {"D": -0.5}, {"M": -0.5}, {"D": -0.5}, {}, {}),
    ("standard", {"alpha": 1}, {}, {}, {}, {}, {}),
])
def test_presets_follow_the_theory_table(name, branch, u_mult, v_mult, readout, lr_u, lr_v):
    p = get_parameterization(name)

    def exps(m):
        return {s: e for s, e in m.powers}

    assert exps(p.branch) == branch
    assert exps(p.roles["U"].mult) == u_mult
    assert exps(p.roles["V"].mult) == v_mult
    assert exps(p.roles["readout"].mult) == readout
    assert exps(p.roles["U"].lr_sgd) == lr_u
    assert exps(p.roles["V"].lr_sgd) == lr_v


def test_depth_mup_correction_is_a_parameter():
    p = get_parameterization("depth-mup-corrected", correction=0.25)
    assert p.roles["U"].lr_sgd.exponent("L") == 0.25
    assert p.roles["U"].lr_adam.exponent("L") == pytest.approx(0.25 - 0.5)
    assert p.roles["V"].lr_sgd.exponent("L") == 0


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_reparameterization_symmetry(optimizer):
    """Init x c, multiplier / c and lr x c^2 (SGD) or x c (Adam) change nothing.

    (An earlier version of the project's notes had the SGD rule as "lr / c^2"; the exact symmetry —
    and the two MLU forms, whose init differs by c = sqrt(D) and lr by D — say c^2, as docs/theory.md §1
    now states.)
    """
    base = get_parameterization("depth-mup")
    scaled = base
    for role, c in (("U", 3.0), ("V", 0.25), ("readout", 5.0), ("embed", 0.5)):
        r = base.roles[role]
        lr_rule = r.lr_adam if optimizer == "adam" else r.lr_sgd
        power = 1 if optimizer == "adam" else 2
        scaled = scaled.with_role(role, init=r.init * c, mult=r.mult / c,
                                  **{("lr_adam" if optimizer == "adam" else "lr_sgd"):
                                     lr_rule * c**power})
    data = gaussian_data(N=6, d_in=3, d_out=2, seed=0)
    kw = dict(d_in=3, d_out=2, seeds=[1, 2], train_embedding=True, train_readout=True)
    extra = {"adam_eps": 0.0} if optimizer == "adam" else {}
    a = train(ResNet(Shape(4, 6, 8), param=base, **kw), data, steps=6, lr=0.05,
              optimizer=optimizer, record=("outputs", "hidden"), **extra)
    b = train(ResNet(Shape(4, 6, 8), param=scaled, **kw), data, steps=6, lr=0.05,
              optimizer=optimizer, record=("outputs", "hidden"), **extra)
    assert np.abs(a.outputs[-1] - a.outputs[0]).max() > 1e-3
    np.testing.assert_allclose(a.outputs, b.outputs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.hidden, b.hidden, rtol=1e-9, atol=1e-12)


def test_user_defined_parameterization_and_rows():
    p = get_parameterization("mup").with_role("branch", rule="L^-0.75").with_role("U", lr_sgd="D*L")
    rows = {r["tensor"]: r for r in p.rows(Shape(16, 4, 64), d_in=5, d_out=5, base_lr=0.1)}
    assert rows["(branch)"]["multiplier"] == pytest.approx(16**-0.75)
    assert rows["U"]["lr_sgd"] == pytest.approx(0.1 * 64 * 16)
    assert rows["V"]["multiplier"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown role 'Q'"):
        p.with_role("Q", init=1)


def test_describe_cli_prints_effective_values_and_rejects_bad_input():
    runner = CliRunner()
    out = runner.invoke(app, ["describe", "--param", "mlu", "--shape", "16,64,64", "--lr", "0.1"])
    assert out.exit_code == 0, out.output
    # U of the reference form: init std sqrt(D) = 8, multiplier 1/D, lr = eta L M D = 6553.6
    u_row = next(line for line in out.output.splitlines() if line.strip("│ ").startswith("U "))
    assert "8 " in u_row and "0.01562" in u_row and "6554" in u_row
    for args, msg in ((["--param", "bogus", "--shape", "1,2,3"], "unknown parameterization"),
                      (["--param", "mlu", "--shape", "0,2,3"], "L must be a positive integer"),
                      (["--param", "mlu", "--shape", "1,2"], "three entries")):
        res = runner.invoke(app, ["describe", *args])
        assert res.exit_code == 2 and msg in res.output


def test_parameterizations_and_models_deepcopy_and_pickle():
    import copy
    import pickle

    p = get_parameterization("depth-mup-corrected", correction=0.3)
    for clone in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert clone == p and clone.roles["U"].lr_sgd.exponent("L") == 0.3
    net = ResNet(Shape(2, 3, 4), param=p, d_in=2, d_out=1, seeds=[0])
    twin = copy.deepcopy(net)
    assert twin.param == p and twin.U is not net.U and np.array_equal(twin.U.detach(), net.U.detach())
