"""A user's own Transformer through param_groups trains exactly like reslim's built-in one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import reslim
from reslim._src.models.transformer import Transformer
from reslim._src.training.modules import train_modules

L, M, D, R, RV, T, D_IN, D_OUT, N = 4, 2, 6, 3, 2, 3, 2, 2, 5
ROLES = {"embed.weight": "embed", "pos": "pos", "readout.weight": "readout",
         "blocks.*.heads.*.q.weight": "Q", "blocks.*.heads.*.k.weight": "K",
         "blocks.*.heads.*.v.weight": "V", "blocks.*.heads.*.o.weight": "O",
         "blocks.*.U.weight": "mlp_U", "blocks.*.V.weight": "mlp_V",
         "blocks.*.norm.weight": "norm", "blocks.*.norm.bias": "norm_bias"}
BLOCK_ROLES = ("Q", "K", "V", "O", "mlp_U", "mlp_V", "norm", "norm_bias")


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(D, R, bias=False), nn.Linear(D, R, bias=False)
        self.v, self.o = nn.Linear(D, RV, bias=False), nn.Linear(RV, D, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        logits = self.q(u) @ self.k(u).transpose(-1, -2)  # no 1/sqrt(r): param_groups scales q
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        return self.o(torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ self.v(u))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.heads = nn.ModuleList(Head() for _ in range(M))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.norm(h)
        return h + sum(head(u) for head in self.heads)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(D)
        self.U, self.V = nn.Linear(D, M, bias=False), nn.Linear(M, D, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.V(torch.tanh(self.U(self.norm(h))))


class UserTransformer(nn.Module):
    """Written as anyone would: no multipliers anywhere in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, D, bias=False)
        self.pos = nn.Parameter(torch.zeros(T, D))
        self.blocks = nn.ModuleList(Attention() if l % 2 == 0 else MLP() for l in range(L))
        self.readout = nn.Linear(D, D_OUT, bias=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        h = self.embed(X.reshape(X.shape[0], T, D_IN)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.readout(h.mean(dim=1))


def _builtin(seed: int = 5) -> Transformer:
    return Transformer((L, M, D), param="mlu", d_in=D_IN, d_out=D_OUT, seq_len=T, r=R, r_v=RV,
                       blocks="alternating", causal=True, norm="layer", seed=seed)


@torch.no_grad()
def _copy_weights(user: UserTransformer, net: Transformer) -> None:
    user.embed.weight.copy_(net.W_e)
    user.pos.copy_(net.P)
    user.readout.weight.copy_(net.W_u.T)
    for ub, nb in zip(user.blocks, net.blocks, strict=True):
        ub.norm.weight.copy_(nb.norm.weight)
        ub.norm.bias.copy_(nb.norm.bias)
        if isinstance(ub, Attention):
            for j, head in enumerate(ub.heads):
                head.q.weight.copy_(nb.Q[j].T)
                head.k.weight.copy_(nb.K[j].T)
                head.v.weight.copy_(nb.V[j].T)
                head.o.weight.copy_(nb.O[j])
        else:
            ub.U.weight.copy_(nb.U.T)
            ub.V.weight.copy_(nb.V)


def _data() -> reslim.Dataset:
    rng = np.random.default_rng(0)
    return reslim.Dataset(rng.standard_normal((N, T * D_IN)), rng.standard_normal((N, D_OUT)))


@pytest.mark.parametrize("optimizer,lr", [("gd", 0.05), ("adam", 0.01)])
def test_user_transformer_trains_like_builtin(one_thread, optimizer, lr):
    data, K = _data(), 4
    net = _builtin()
    user = UserTransformer().double()
    _copy_weights(user, net)
    pg = reslim.param_groups(user, "mlu", arch="transformer", roles=ROLES, lr=lr, optimizer=optimizer,
                             train=BLOCK_ROLES, d_in=D_IN, d_out=D_OUT)
    assert pg.shape == reslim.Shape(L, M, D)  # read off the model
    scaled = pg.scaled(user)
    X, Y = torch.as_tensor(data.X), torch.as_tensor(data.Y)
    torch.testing.assert_close(scaled(X), net(X), rtol=0, atol=1e-12)  # same function at init
    traj = train_modules([net], data, steps=K, lr=lr, optimizer=optimizer, record=("outputs",))
    opt = torch.optim.SGD(pg.groups) if optimizer == "gd" else torch.optim.Adam(pg.groups)
    outs = []
    for k in range(K + 1):
        y = scaled(X)
        outs.append(y.detach().numpy())
        if k < K:
            opt.zero_grad()
            (0.5 * (y - Y).square().sum() / N).backward()
            opt.step()
    np.testing.assert_allclose(np.stack(outs), traj.outputs[:, 0], rtol=0, atol=1e-10)
    twin = UserTransformer().double()
    _copy_weights(twin, net)  # the trained built-in's weights, written in the user's layout
    for (name, p), q in zip(user.named_parameters(), twin.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0, atol=1e-10,
                                   err_msg=name)
    assert np.abs(traj.outputs[-1] - traj.outputs[0]).max() > 1e-3


def test_user_modules_through_the_generic_trainer(one_thread):
    """Two seeds of the user's module, batched by train_modules with the groups' rates and
    forward multipliers, equal two built-in Transformers trained together."""
    data = _data()
    nets = [_builtin(5), _builtin(6)]
    users = [UserTransformer().double() for _ in nets]
    for u, n in zip(users, nets, strict=True):
        _copy_weights(u, n)
    pg = reslim.param_groups(users[0], "mlu", arch="transformer", roles=ROLES, lr=0.05, train=BLOCK_ROLES)
    ta = train_modules(nets, data, steps=3, lr=0.05)
    tb = train_modules(users, data, steps=3, groups=pg)
    np.testing.assert_allclose(tb.outputs, ta.outputs, rtol=0, atol=1e-10)


def test_gains_and_kept_parameters_keep_their_values():
    user = UserTransformer().double()
    extra = nn.Parameter(torch.full((3,), 7.0, dtype=torch.float64))
    user.register_parameter("temperature", extra)
    with torch.no_grad():
        for b in user.blocks:
            b.norm.weight.fill_(1.5)
    pg = reslim.param_groups(user, "mlu", arch="transformer", roles={**ROLES, "temperature": "keep"},
                             lr=0.1)
    pg.init(user, seed=0)
    for b in user.blocks:
        assert torch.equal(b.norm.weight, torch.full((D,), 1.5, dtype=torch.float64))
        assert torch.equal(b.norm.bias, torch.zeros(D, dtype=torch.float64))
    assert torch.equal(user.temperature, torch.full((3,), 7.0, dtype=torch.float64))
    q = torch.cat([h.q.weight.flatten() for h in user.blocks[0].heads])
    assert q.std().item() == pytest.approx(np.sqrt(D), rel=0.5)  # MLU: N(0, D)
    by_role = {g["role"]: g for g in pg.groups}
    assert by_role["keep"]["lr"] == pytest.approx(0.1) and by_role["norm"]["lr"] == pytest.approx(0.1)
    assert by_role["Q"]["lr"] == pytest.approx(0.1 * L * M * D)
    assert "pos" not in by_role  # frozen by default
    scales = pg.forward_scales()
    assert scales["temperature"] == 1.0 and scales["blocks.0.norm.weight"] == 1.0
    assert scales["blocks.0.heads.0.q.weight"] == pytest.approx(R ** -0.5 / D)  # logit folded in
    assert scales["blocks.0.heads.0.o.weight"] == pytest.approx(1 / (L * M))  # beta on outputs


def test_shape_mismatch_is_rejected_naming_both():
    user = UserTransformer().double()
    with pytest.raises(ValueError, match=r"shape=\(L=4, M=3, D=6\) does not match.*L=4, M=2, D=6"):
        reslim.param_groups(user, "mlu", arch="transformer", roles=ROLES, lr=0.1, shape=(L, M + 1, D))
    with pytest.raises(ValueError, match=r"D=7.*D=6"):
        reslim.param_groups(user, "mup", arch="transformer", roles=ROLES, lr=0.1, shape=(L, M, D + 1))
    with pytest.raises(ValueError, match="is not a role"):
        reslim.param_groups(user, "mlu", roles=ROLES, lr=0.1)  # ResNet roles have no Q
    with pytest.raises(ValueError, match="arch"):
        reslim.param_groups(user, "mlu", arch="cnn", roles=ROLES, lr=0.1)
