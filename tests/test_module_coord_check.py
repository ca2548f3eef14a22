"""The coordinate check on a user's own module gives the built-in check's records and verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

import reslim
from reslim._src.diagnostics.coord_check import coord_check, measure
from reslim._src.diagnostics.module_check import coord_check_modules, measure_modules

L, M, D_IN, D_OUT = 4, 32, 5, 5
ROLES = {"embed.weight": "embed", "blocks.*.U.weight": "U", "blocks.*.V.weight": "V",
         "readout.weight": "readout"}


class Block(nn.Module):
    def __init__(self, D: int) -> None:
        super().__init__()
        self.U = nn.Linear(D, M, bias=False)
        self.V = nn.Linear(M, D, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.V(torch.tanh(self.U(h)))  # no multipliers: param_groups applies them


class UserResNet(nn.Module):
    def __init__(self, D: int) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, D, bias=False)
        self.blocks = nn.ModuleList(Block(D) for _ in range(L))
        self.readout = nn.Linear(D, D_OUT, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.readout(h)


def factory(D: float, seed: int):
    """The user's module with the built-in ResNet's weights for this seed."""
    D = int(D)
    net = reslim.ResNet((L, M, D), param="mlu", d_in=D_IN, d_out=D_OUT, seeds=[seed])
    user = UserResNet(D).double()
    with torch.no_grad():
        user.embed.weight.copy_(net.W_e[0])
        user.readout.weight.copy_(net.W_u[0].T)
        for l, b in enumerate(user.blocks):
            b.U.weight.copy_(net.U[l, 0].T)
            b.V.weight.copy_(net.V[l, 0])
    pg = reslim.param_groups(user, "mlu", roles=ROLES, lr=0.1, train=("U", "V"))
    return user, pg


def test_user_module_records_equal_the_builtin_check(one_thread):
    sizes = (8, 16, 32)
    mine = measure_modules(factory, sizes, axis="D", steps=2, lr=0.1, seeds=(0, 1))
    ref = measure("mlu", "D", sizes, base=(L, M, 8), steps=2, lr=0.1, seeds=(0, 1))
    keys = ["size", "seed", "step", "quantity", "layer"]
    both = pd.merge(ref, mine, on=keys, suffixes=("_ref", "_mine"))
    assert len(both) == len(ref) == len(mine)
    np.testing.assert_allclose(both["value_mine"], both["value_ref"], rtol=1e-9, atol=1e-12)
    assert (both["n_layers_mine"] == both["n_layers_ref"]).all()
    assert set(mine["step"]) == {0, 1, 2}  # every step


def test_user_module_exponents_and_verdicts(one_thread):
    sizes = (8, 16, 32)
    ex = coord_check_modules(factory, sizes, axis="D", steps=2, lr=0.1, seeds=(0, 1, 2))
    assert set(ex["step"]) == {0, 1, 2}  # curves for every step (updates at 1 and 2)
    verdict = ex.attrs["verdicts"]
    ref = coord_check("mlu", "D", sizes, base=(L, M, 8), steps=2, lr=0.1, seeds=(0, 1, 2))
    cols = ["quantity", "position", "step"]
    a, b = ref[[*cols, "exponent"]].copy(), ex[[*cols, "exponent"]].copy()
    a.attrs, b.attrs = {}, {}  # attrs hold DataFrames, which merge cannot compare
    both = pd.merge(a, b, on=cols, suffixes=("_ref", "_mine"))
    assert len(both) == len(ref)
    np.testing.assert_allclose(both["exponent_mine"], both["exponent_ref"], rtol=0, atol=1e-8)
    assert list(ref.attrs["verdicts"]["verdict"]) == list(verdict["verdict"])


def test_builtin_transformer_along_heads(one_thread):
    """The built-in Transformer (its own learning_rates, blocks as the ModuleList) along M."""
    from reslim._src.diagnostics.heads import sequence_data
    from reslim._src.models.transformer import Transformer

    def make(M: float, seed: int):
        return Transformer((4, int(M), 4), param="mlu", d_in=5, d_out=5, seq_len=4, seed=seed)

    ex = coord_check_modules(make, (4, 8, 16), sequence_data(T=4), axis="M", steps=2, lr=0.05,
                             seeds=(0, 1))
    rec = ex.attrs["records"]
    assert set(rec["quantity"]) == {"h", "p", "y", "dh", "dp", "du", "dy"}  # the blocks' input_maps
    assert set(rec[rec.quantity == "h"]["n_layers"]) == {5}
    assert set(rec[rec.quantity == "du"]["layer"]) == {0, 1, 2, 3}
    assert ex.attrs["verdicts"]["axis"].iloc[0] == "M"


def test_builtin_transformer_du_is_the_heads_movement(one_thread):
    """du of a one-layer built-in Transformer = the RMS of (dq, dk, dv) of heads.head_movement."""
    from reslim._src.diagnostics.heads import head_movement, sequence_data
    from reslim._src.models.transformer import Transformer

    def make(M: float, seed: int):
        return Transformer((1, int(M), 4), param="mlu", d_in=5, d_out=5, seq_len=4, seed=seed)

    rec = measure_modules(make, (4, 8), sequence_data(T=4), axis="M", steps=2, lr=0.05, seeds=(0, 1))
    heads = head_movement("mlu", "M", (4, 8), base=(1, 4, 4), steps=2, lr=0.05, seeds=(0, 1))
    for (size, seed, step), g in heads.groupby(["size", "seed", "step"]):
        v = dict(zip(g["quantity"], g["value"], strict=True))
        want = np.sqrt((v["dq"] ** 2 + v["dk"] ** 2 + v["dv"] ** 2) / 3)  # r = r_v: equal counts
        got = rec[(rec["size"] == size) & (rec["seed"] == seed) & (rec["step"] == step)
                  & (rec["quantity"] == "du")]["value"]
        assert len(got) == 1
        np.testing.assert_allclose(float(got.iloc[0]), want, rtol=1e-9)


def test_builtin_transformer_du_exponents(one_thread):
    """Along M through the module check: du Θ(1) under MLU, about M^-1/2 under mlu-sqrt-heads."""
    from reslim._src.diagnostics.heads import sequence_data
    from reslim._src.models.transformer import Transformer

    out = {}
    for param in ("mlu", "mlu-sqrt-heads"):
        def make(M: float, seed: int, param=param):
            return Transformer((32, int(M), 4), param=param, d_in=5, d_out=5, seq_len=4, seed=seed)

        ex = coord_check_modules(make, (8, 32), sequence_data(T=4), axis="M", steps=2, lr=0.05, seeds=(0, 1))
        du = ex[(ex["quantity"] == "du") & (ex["step"] == 2)]
        out[param] = du["exponent"].to_numpy()
    assert (np.abs(out["mlu"]) <= 0.2).all(), out
    assert ((out["mlu-sqrt-heads"] < -0.3) & (out["mlu-sqrt-heads"] > -0.8)).all(), out


def test_public_coord_check_takes_a_factory(one_thread):
    import reslim.diagnostics as diag

    ex = diag.coord_check(factory, "D", (8, 16), steps=1, lr=0.1, seeds=(0,))
    assert set(ex["quantity"]) >= {"du", "dp", "dh", "dy"}
    builtin = diag.coord_check("mlu", "D", (8, 16), base=(L, M, 8), steps=1, seeds=(0,))
    assert builtin.attrs["verdicts"]["verdict"].iloc[0] == ex.attrs["verdicts"]["verdict"].iloc[0]
