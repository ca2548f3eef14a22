"""param_groups: users' own residual modules train exactly like reslim's built-in ResNet."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import reslim

L, M, D, D_IN, D_OUT, N = 3, 6, 5, 4, 2, 7
ROLE_MAP = {"embed.weight": "embed", "blocks.*.U.weight": "U", "blocks.*.V.weight": "V",
            "readout.weight": "readout"}


class Block(nn.Module):
    def __init__(self, D: int, M: int) -> None:
        super().__init__()
        self.U = nn.Linear(D, M, bias=False)  # weight (M, D) = U_l^T
        self.V = nn.Linear(M, D, bias=False)  # weight (D, M) = V_l


class ResMLP(nn.Module):
    """h_0 = m_e W_e x; h <- h + beta m_V V tanh(m_U U^T h); y = m_u W_u^T h_L."""

    def __init__(self, mult: dict[str, float] | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, D, bias=False)
        self.blocks = nn.ModuleList(Block(D, M) for _ in range(L))
        self.readout = nn.Linear(D, D_OUT, bias=False)
        self.mult = dict(mult or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mult
        h = m["embed"] * self.embed(x)
        for b in self.blocks:
            h = h + m["branch"] * m["V"] * b.V(torch.tanh(m["U"] * b.U(h)))
        return m["readout"] * self.readout(h)


def _pair(param: str, optimizer: str, lr: float):
    builtin = reslim.ResNet((L, M, D), param=param, d_in=D_IN, d_out=D_OUT, seeds=[3])
    user = ResMLP().double()
    pg = reslim.param_groups(user, param, roles=ROLE_MAP, lr=lr, shape=(L, M, D),
                             optimizer=optimizer, d_in=D_IN, d_out=D_OUT, train=("U", "V"))
    user.mult = dict(pg.multipliers)
    with torch.no_grad():
        user.embed.weight.copy_(builtin.W_e[0])
        user.readout.weight.copy_(builtin.W_u[0].T)
        for l, b in enumerate(user.blocks):
            b.U.weight.copy_(builtin.U[l, 0].T)
            b.V.weight.copy_(builtin.V[l, 0])
    return builtin, user, pg


@pytest.mark.parametrize("param,optimizer,lr", [("mlu", "gd", 0.5), ("depth-mup", "gd", 0.3),
                                                ("mlu", "adam", 0.02), ("completep", "adam", 0.05)])
def test_user_model_trains_like_builtin(param, optimizer, lr):
    data = reslim.gaussian_data(N=N, d_in=D_IN, d_out=D_OUT, seed=1)
    builtin, user, pg = _pair(param, optimizer, lr)
    K = 4
    traj = reslim.train(builtin, data, steps=K, lr=lr, optimizer=optimizer, loss="sum",
                        record=("outputs",))
    X = torch.as_tensor(data.X)
    Y = torch.as_tensor(data.Y)
    opt = (torch.optim.SGD(pg.groups) if optimizer == "gd"
           else torch.optim.Adam(pg.groups, betas=(0.9, 0.999), eps=1e-8))
    outs = []
    for k in range(K + 1):
        y = user(X)
        outs.append(y.detach().numpy())
        if k < K:
            opt.zero_grad()
            loss = 0.5 * (y - Y).square().sum() / N
            loss.backward()
            opt.step()
    np.testing.assert_allclose(np.stack(outs), traj.outputs[:, 0], rtol=0, atol=1e-10)
    for l, b in enumerate(user.blocks):
        np.testing.assert_allclose(b.U.weight.detach().numpy(), builtin.U[l, 0].T.detach().numpy(),
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.V.weight.detach().numpy(), builtin.V[l, 0].detach().numpy(),
                                   rtol=0, atol=1e-10)
    # the outputs really moved (the comparison is not trivially between two frozen models)
    assert np.abs(traj.outputs[-1] - traj.outputs[0]).max() > 1e-3


def test_groups_lr_multipliers_and_init():
    user = ResMLP().double()
    groups, init = reslim.param_groups(user, "mlu", roles=ROLE_MAP, lr=0.1, shape=(L, M, D),
                                       d_in=D_IN, d_out=D_OUT)
    by_role = {g["role"]: g for g in groups}
    assert set(by_role) == {"embed", "U", "V", "readout"}
    assert by_role["U"]["lr"] == pytest.approx(0.1 * L * M * D)
    assert [n for n in by_role["U"]["names"]] == [f"blocks.{l}.U.weight" for l in range(L)]
    pg = reslim.param_groups(user, "mlu", roles=ROLE_MAP, lr=0.1, shape=(L, M, D))
    assert pg.branch == pytest.approx(1 / (L * M)) and pg.mult("U") == pytest.approx(1 / D)
    big = nn.Linear(400, 300, bias=False).double()
    pgb = reslim.param_groups(big, "mlu", roles={"weight": "U"}, lr=1.0, shape=(1, 300, 400))
    pgb.init(big, seed=0)
    assert big.weight.std().item() == pytest.approx(np.sqrt(400), rel=0.02)  # U ~ N(0, D)
    w0 = big.weight.detach().clone()
    pgb.init(big, seed=0)
    assert torch.equal(w0, big.weight)


def test_unmapped_parameter_is_an_error_naming_it():
    user = ResMLP()
    roles = {k: v for k, v in ROLE_MAP.items() if k != "readout.weight"}
    with pytest.raises(ValueError, match="'readout.weight' matches no role pattern"):
        reslim.param_groups(user, "mlu", roles=roles, lr=0.1, shape=(L, M, D))
    with pytest.raises(ValueError, match="matches no parameter"):
        reslim.param_groups(user, "mlu", roles={**ROLE_MAP, "typo.*": "U"}, lr=0.1, shape=(L, M, D))
    with pytest.raises(ValueError, match="different roles"):
        reslim.param_groups(user, "mlu", roles={**ROLE_MAP, "re:blocks\\.0\\..*": "V"}, lr=0.1,
                            shape=(L, M, D))
    with pytest.raises(ValueError, match="no rule for role 'W'"):
        reslim.param_groups(user, "mlu", roles={**ROLE_MAP, "blocks.*.V.weight": "W"}, lr=0.1,
                            shape=(L, M, D))
    with pytest.raises(ValueError, match="d_in is needed"):
        reslim.param_groups(user, "standard", roles=ROLE_MAP, lr=0.1, shape=(L, M, D))
    with pytest.raises(ValueError, match="optimizer"):
        reslim.param_groups(user, "mlu", roles=ROLE_MAP, lr=0.1, shape=(L, M, D), optimizer="lion")


def test_metadata_survives_deepcopy_state_dict_and_compile():
    user = ResMLP().double()
    pg = reslim.param_groups(user, "depth-mup", roles=ROLE_MAP, lr=0.1, shape=(L, M, D),
                             optimizer="adam")
    user.mult = dict(pg.multipliers)
    # nothing was written on the tensors
    assert all(not hasattr(p, "role") for p in user.parameters())
    twin = copy.deepcopy(user)
    groups = pg.bind(twin)
    assert [g["lr"] for g in groups] == [g["lr"] for g in pg.groups]
    assert all(p is q for g in groups for p, q in zip(g["params"], [dict(twin.named_parameters())[n]
                                                                      for n in g["names"]],
                                                       strict=True))
    fresh = ResMLP(user.mult).double()
    fresh.load_state_dict(copy.deepcopy(user.state_dict()))
    assert set(pg.roles) == set(fresh.state_dict())
    assert [g["names"] for g in pg.bind(fresh)] == [g["names"] for g in pg.groups]
    pg2 = copy.deepcopy(pg)
    assert pg2.roles == pg.roles and pg2.lr == pg.lr
    compiled = torch.compile(fresh, backend="eager")
    cg = pg.bind(compiled)
    assert [g["names"] for g in cg] == [g["names"] for g in pg.groups]
    x = torch.randn(3, D_IN, dtype=torch.float64)
    torch.testing.assert_close(compiled(x), user(x), rtol=0, atol=1e-12)
