"""The architecture interface: block families declare roles, block types and size symbols;
parameterization rows and describe derive from them."""

from __future__ import annotations

import copy
import pickle

import pytest

import reslim
from reslim._src.models.transformer import TRANSFORMER, get_transformer_parameterization
from reslim._src.scaling.architecture import RESNET, Architecture, Role
from reslim._src.scaling.parameterization import BLOCK_ROLES, ROLES
from reslim._src.scaling.role_table import RoleTable, allowed_roles, role_info, role_rules


def test_resnet_is_an_instance_of_the_interface():
    assert ROLES == RESNET.role_names == ("embed", "U", "V", "W", "readout")
    assert BLOCK_ROLES == {"two-layer": ("U", "V"), "one-layer": ("W",)}
    assert [RESNET.role(r).kind for r in ROLES] == ["embed", "input", "output", "output", "readout"]
    p = reslim.get_parameterization("mlu")
    rows = {r["role"]: r for r in p.rows(reslim.Shape(2, 3, 4), d_in=5, d_out=6)}
    assert rows["U"]["tensor"] == "U" and rows["U"]["shape"] == "2x4x3"
    assert rows["embed"]["tensor"] == "W_e" and rows["embed"]["shape"] == "4x5"
    assert rows["readout"]["shape"] == "4x6"
    one = {r["role"]: r for r in reslim.get_parameterization("mup").rows(reslim.Shape(2, 3, 4), 5, 6,
                                                                         block="one-layer")}
    assert one["W"]["shape"] == "2x4x4" and "U" not in one
    assert p.symbols(reslim.Shape(2, 3, 4), 5, 6) == {"L": 2, "M": 3, "D": 4, "d_in": 5, "d_out": 6,
                                                      "alpha": 1.0}


def test_a_new_block_family_is_data():
    """A gated block, declared in a few lines, gets a role table, rows and user roles."""
    arch = Architecture("gated", roles=(
        Role("embed", "embed", "W_e", ("D", "d_in")), Role("G", "input", "G", ("L", "D", "M")),
        Role("U", "input", "U", ("L", "D", "M")), Role("V", "output", "V", ("L", "D", "M")),
        Role("readout", "readout", "W_u", ("D", "d_out"))),
        sizes=("d_in", "d_out"), blocks={"gated": ("G", "U", "V")})
    unit = dict(init=1, mult="D^-0.5", lr_sgd="L*M")
    table = RoleTable("mine", arch, role_rules(embed={}, G=unit, U=unit, V=dict(init=1), readout={}),
                      {"branch": "sqrt(D)/(L*M)"})
    env = arch.env(reslim.Shape(4, 8, 16), d_in=3, d_out=2)
    rows = {r["role"]: r for r in table.rows(env, base_lr=0.5)}
    assert rows["G"]["shape"] == "4x16x8" and rows["G"]["lr_sgd"] == pytest.approx(0.5 * 32)
    assert rows["branch"]["multiplier"] == pytest.approx(4 / 32)
    assert "keep" in allowed_roles(table) and role_info(table, "V").kind == "output"
    with pytest.raises(ValueError, match="no rule for role 'G'"):
        RoleTable("bad", arch, role_rules(embed={}, U=unit, V=unit, readout={}), {"branch": 1})
    with pytest.raises(ValueError, match="unknown role"):
        Architecture("x", roles=(Role("a", "input", "a"),), blocks={"b": ("z",)})
    with pytest.raises(ValueError, match="kind"):
        Role("a", "hidden", "a")


def test_tables_and_architectures_copy_and_pickle():
    table = get_transformer_parameterization("completep", alpha=2.0)
    for clone in (copy.deepcopy(table), pickle.loads(pickle.dumps(table))):
        assert clone == table and clone.arch == TRANSFORMER and clone.alpha == 2.0
    assert pickle.loads(pickle.dumps(RESNET)) == RESNET
