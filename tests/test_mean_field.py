"""The mean-field view (diagnostics/mean_field.py): adjoint against autograd, first variation
against finite differences, the shallow-ensemble surrogate, reordering."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reslim._src.diagnostics.mean_field import (
    ModuleBlocks,
    ResNetBlocks,
    block_statistic,
    cross_entropy,
    mean_field_view,
    squared_loss,
)
from reslim._src.models.resnet import ResNet
from reslim._src.scaling.shapes import Shape


@pytest.fixture(autouse=True)
def _float64():
    """float64 inside this module's tests only (the default dtype is global state)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Block(nn.Module):
    def __init__(self, d: int, m: int, scale: float) -> None:
        super().__init__()
        self.u = nn.Linear(d, m)
        self.v = nn.Linear(m, d, bias=False)
        self.scale = scale

    def forward(self, h):
        return h + self.scale * self.v(torch.tanh(self.u(h)))


class Net(nn.Module):
    """Two stages of residual blocks with a (non-residual) transition between them."""

    def __init__(self, L1: int = 3, L2: int = 2, d: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(4, d)
        self.s1 = nn.ModuleList([Block(d, 7, 1.0 / L1) for _ in range(L1)])
        self.mid = nn.Linear(d, d)
        self.s2 = nn.ModuleList([Block(d, 7, 1.0 / L2) for _ in range(L2)])
        self.head = nn.Linear(d, 3)

    def residual_stages(self):
        return [self.s1, self.s2]

    def forward(self, x):
        h = self.embed(x)
        for b in self.s1:
            h = b(h)
        h = torch.tanh(self.mid(h))
        for b in self.s2:
            h = b(h)
        return self.head(h)


def data(n=11, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def autograd_states_grad(net: Net, X, Y):
    states = []
    hooks = [b.register_forward_pre_hook(lambda m, a: states.append(a[0])) for st in net.residual_stages()
             for b in st]
    out = net(X)
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(cross_entropy(out, Y).mean(), states)
    return [g * X.shape[0] for g in grads]


def test_adjoint_equals_autograd_module():
    net, (X, Y) = Net(), data()
    view = ModuleBlocks(net)
    ps = view.adjoint(X, Y, cross_entropy)
    ref = autograd_states_grad(net, X, Y)
    mine = [p for st in ps for p in st[:-1]]  # block inputs
    assert len(mine) == len(ref) == 5
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the adjoint does change across blocks (not a trivially constant p)
    assert (ps[0][0] - ps[0][-1]).abs().max() > 1e-4


def resnet(L=4, M=6, D=5, block="two-layer", seeds=(0, 1)):
    param = "mlu" if block == "two-layer" else "completep"
    return ResNet(Shape(L, M, D), param=param, d_in=3, d_out=2, block=block, seeds=seeds, dtype="float64")


@pytest.mark.parametrize("block", ["two-layer", "one-layer"])
def test_adjoint_equals_autograd_resnet(block):
    net = resnet(block=block)
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(9, 3, generator=g), torch.randn(9, 2, generator=g)
    view = ResNetBlocks(net)
    ps = view.adjoint(X, Y)
    # autograd through the differentiable forward, states captured by re-running it
    h = (net.mult("embed") * torch.matmul(net.inputs(X), net.W_e.mT)).detach().requires_grad_(True)
    states = [h]
    for l in range(4):
        h = h + view._branch(l, h)
        states.append(h)
    out = view.readout(h)
    grads = torch.autograd.grad(squared_loss(out, Y).mean(-1).sum(), states)
    for a, b in zip(ps, grads, strict=True):
        torch.testing.assert_close(a, b * 9, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(out, net(X))


def test_first_variation_predicts_perturbation_module():
    net, (X, Y) = Net(), data()
    view = ModuleBlocks(net)
    stage, index = 0, 1
    theta = view.block_parameters(stage, index)
    g = torch.Generator().manual_seed(5)
    delta = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    cache = (view.hidden_states(X), view.adjoint(X, Y))

    def risk():
        with torch.no_grad():
            return float(cross_entropy(net(X), Y).mean())

    E0 = risk()
    base = view.first_variation(X, Y, stage, index, theta, _cache=cache)
    for eps in (1e-3, 1e-4):
        new = {k: theta[k] + eps * delta[k] for k in theta}
        pred = view.first_variation(X, Y, stage, index, new, _cache=cache) - base
        with torch.no_grad():
            for k, p in net.s1[index].named_parameters():
                p.copy_(new[k])
        actual = risk() - E0
        with torch.no_grad():
            for k, p in net.s1[index].named_parameters():
                p.copy_(theta[k])
        assert abs(actual) > 1e-8
        assert abs(pred - actual) < 1e-3 * abs(actual) + 30 * eps**2


def test_first_variation_predicts_perturbation_resnet():
    net = resnet()
    g = torch.Generator().manual_seed(4)
    X, Y = torch.randn(9, 3, generator=g), torch.randn(9, 2, generator=g)
    view = ResNetBlocks(net)
    l = 2
    w0 = {r: getattr(net, r)[l].detach().clone() for r in ("U", "V")}
    d = {r: torch.randn(w.shape, generator=g) for r, w in w0.items()}
    base = view.first_variation(X, Y, l)
    E0 = view.risk(X, Y)
    eps = 1e-4
    w1 = {r: w0[r] + eps * d[r] for r in w0}
    pred = float((view.first_variation(X, Y, l, w1) - base).sum())
    with torch.no_grad():
        for r in w0:
            getattr(net, r)[l].copy_(w1[r])
    actual = view.risk(X, Y) - E0
    assert abs(actual) > 1e-8
    assert abs(pred - actual) < 1e-3 * abs(actual)


def test_unit_first_variation_gradient_is_m_times_risk_gradient():
    net = resnet(seeds=(0,))
    g = torch.Generator().manual_seed(7)
    X, Y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    view = ResNetBlocks(net)
    l, j = 1, 3
    cache = (view.hidden_states(X), view.adjoint(X, Y))
    u = net.U[l][:, :, j:j + 1].detach().clone().requires_grad_(True)
    v = net.V[l][:, :, j:j + 1].detach().clone().requires_grad_(True)
    fv = view.unit_first_variation(X, Y, l, u, v, _cache=cache).sum()
    gu, gv = torch.autograd.grad(fv, (u, v))
    E = squared_loss(net(X), Y).mean(-1).sum()
    GU, GV = torch.autograd.grad(E, (net.U, net.V))
    M = net.shape.M
    torch.testing.assert_close(gu[..., 0], M * GU[l][..., j], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gv[..., 0], M * GV[l][..., j], rtol=1e-8, atol=1e-10)


def test_surrogate_of_one_block_network_is_the_network():
    net = resnet(L=1)
    X = torch.randn(6, 3)
    torch.testing.assert_close(ResNetBlocks(net).surrogate()(X), net(X))
    one = Net(L1=1, L2=1)
    Xm, _ = data()
    torch.testing.assert_close(ModuleBlocks(one).surrogate()(Xm), one(Xm))
    # deeper: the surrogate differs from the network, and is trainable (gradients reach blocks)
    deep = Net()
    s = ModuleBlocks(deep).surrogate()
    out = s(Xm)
    assert (out - deep(Xm)).abs().max() > 1e-6
    out.sum().backward()
    assert all(p.grad is not None for p in deep.s1.parameters())
    assert len(list(deep.s1)) == 3  # blocks restored after the surrogate's forward


def test_reordering_preserves_blocks_and_surrogate():
    net, (X, _) = Net(L1=4), data()
    view = mean_field_view(net)
    before = [id(b) for b in net.s1]
    s_out = view.surrogate()(X).detach()
    out = net(X).detach()
    view.permute(0, [2, 0, 3, 1])
    assert sorted(id(b) for b in net.s1) == sorted(before) and [id(b) for b in net.s1] != before
    torch.testing.assert_close(view.surrogate()(X), s_out)
    assert (net(X) - out).abs().max() > 1e-8  # the ResNet itself does change
    with pytest.raises(ValueError):
        view.permute(0, [0, 0, 1, 2])

    rn = resnet(L=5)
    rv = mean_field_view(rn)
    assert isinstance(rv, ResNetBlocks)
    Xr = torch.randn(7, 3)
    U0 = rn.U.detach().clone()
    s0 = rv.surrogate()(Xr).detach()
    opt = torch.optim.SGD(rn.parameters(), lr=0.1, momentum=0.9)
    rn(Xr).sum().backward()
    opt.step()
    U1, mom = rn.U.detach().clone(), opt.state[rn.U]["momentum_buffer"].clone()
    s1 = rv.surrogate()(Xr).detach()
    perm = [4, 2, 0, 1, 3]
    rv.permute(0, perm, opt)
    torch.testing.assert_close(rn.U.detach(), U1[perm])
    torch.testing.assert_close(opt.state[rn.U]["momentum_buffer"], mom[perm])
    torch.testing.assert_close(rv.surrogate()(Xr), s1)
    assert not torch.equal(U0, U1)
    assert s0.shape == s1.shape


def test_depth_statistics():
    rn = resnet()
    df = ResNetBlocks(rn).depth_statistics()
    assert len(df) == 4 * 2 and {"u_norm_mean", "sliced_w2_next", "alignment"} <= set(df.columns)
    direct = rn.U[2, 1].detach().norm(dim=0).mean()
    assert abs(float(df[(df.layer == 2) & (df.network == 1)]["u_norm_mean"].iloc[0]) - float(direct)) < 1e-12
    dm = ModuleBlocks(Net()).depth_statistics()
    assert list(dm["stage"]) == [0, 0, 0, 1, 1] and (dm["norm"] > 0).all()
    assert block_statistic(ResNetBlocks(rn), 0).shape == (4,)
    assert block_statistic(ModuleBlocks(Net()), 1).shape == (2,)


def test_public_facade():
    import reslim.mean_field as mf

    assert mf.mean_field_view is mean_field_view and mf.ModuleBlocks is ModuleBlocks
    assert isinstance(mf.make_scheme("random-reorder"), mf.RandomReorder)
