"""The bias of an output role's map (role ``bias:X``) is one more column of ``X`` whose input is
the constant 1: ``X``'s multiplier, the branch and ``X``'s learning rate (theory: a block is a mean
of units ``phi_j = O_j c_j``; a bias ``b_j`` of head ``j``'s output map is ``O_j``'s column for a
context entry fixed at 1, so it scales as ``O_j`` does)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reslim

L, M, D, R, RV, T, D_IN, D_OUT, N = 3, 2, 5, 2, 2, 3, 2, 2, 4


class Head(nn.Module):
    def __init__(self, augmented: bool) -> None:
        super().__init__()
        self.augmented = augmented
        self.q, self.k = nn.Linear(D, R, bias=False), nn.Linear(D, R, bias=False)
        self.v = nn.Linear(D, RV, bias=False)
        self.o = nn.Linear(RV + 1, D, bias=False) if augmented else nn.Linear(RV, D, bias=True)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        ctx = torch.softmax(self.q(u) @ self.k(u).transpose(-1, -2), -1) @ self.v(u)
        if self.augmented:
            ctx = torch.cat([ctx, torch.ones_like(ctx[..., :1])], -1)
        return self.o(ctx)


class Block(nn.Module):
    def __init__(self, augmented: bool) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Head(augmented) for _ in range(M))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + sum(head(h) for head in self.heads)


class Net(nn.Module):
    def __init__(self, augmented: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, D, bias=False)
        self.blocks = nn.ModuleList(Block(augmented) for _ in range(L))
        self.readout = nn.Linear(D, D_OUT, bias=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = self.embed(X.reshape(X.shape[0], T, D_IN))
        for b in self.blocks:
            h = b(h)
        return self.readout(h.mean(dim=1))


ROLES = {"embed.weight": "embed", "readout.weight": "readout", "blocks.*.heads.*.q.weight": "Q",
         "blocks.*.heads.*.k.weight": "K", "blocks.*.heads.*.v.weight": "V", "blocks.*.heads.*.o.weight": "O"}


def _groups(net: Net, optimizer: str, roles: dict) -> reslim.ParamGroups:
    return reslim.param_groups(net, "mlu", arch="transformer", roles=roles, lr=0.05, optimizer=optimizer,
                               shape=(L, M, D), sizes={"r": R, "r_v": RV})


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_output_bias_is_a_column_of_O(optimizer):
    torch.manual_seed(0)
    plain = Net(augmented=False).double()
    aug = Net(augmented=True).double()
    gp = _groups(plain, optimizer, {**ROLES, "blocks.*.heads.*.o.bias": "bias:O"})
    ga = _groups(aug, optimizer, ROLES)
    gp.init(plain, seed=1)
    with torch.no_grad():
        for l in range(L):
            for j in range(M):
                hp, ha = plain.blocks[l].heads[j], aug.blocks[l].heads[j]
                hp.o.bias.normal_(0.0, 3.0)  # own init kept by init(); any values
                for n in ("q", "k", "v"):
                    getattr(ha, n).weight.copy_(getattr(hp, n).weight)
                ha.o.weight.copy_(torch.cat([hp.o.weight, hp.o.bias[:, None]], 1))
        aug.embed.weight.copy_(plain.embed.weight)
        aug.readout.weight.copy_(plain.readout.weight)
    name = "blocks.0.heads.0.o"
    scales = gp.forward_scales()
    assert scales[f"{name}.bias"] == scales[f"{name}.weight"] == pytest.approx(gp.branch)
    assert gp.lr["bias:O"] == gp.lr["O"]
    X = torch.randn(N, T * D_IN, dtype=torch.float64)
    Y = torch.randn(N, D_OUT, dtype=torch.float64)
    opt_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    sp, sa = gp.scaled(plain), ga.scaled(aug)
    op, oa = opt_cls(gp.groups), opt_cls(ga.groups)
    for _ in range(4):
        for s, o in ((sp, op), (sa, oa)):
            o.zero_grad()
            (0.5 * (s(X) - Y).square().mean()).backward()
            o.step()
    torch.testing.assert_close(sp(X), sa(X), rtol=0, atol=1e-10)
    for l in range(L):
        for j in range(M):
            hp, ha = plain.blocks[l].heads[j], aug.blocks[l].heads[j]
            torch.testing.assert_close(ha.o.weight[:, -1], hp.o.bias, rtol=0, atol=1e-10)
    assert not torch.allclose(plain.blocks[0].heads[0].o.bias, aug.blocks[0].heads[0].o.weight[:, -1] * 0)


def test_bias_of_an_input_role_is_rejected():
    net = Net(augmented=False).double()
    for head_roles in ({"blocks.*.heads.*.o.bias": "bias:Q"}, {"blocks.*.heads.*.o.bias": "bias:nope"}):
        with pytest.raises(ValueError, match="bias|role"):
            _groups(net, "sgd", {**ROLES, **head_roles})
