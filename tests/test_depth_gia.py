"""GIA training mode against a direct autograd implementation (float64, to ~1e-10).

The reference is written from the definition: the forward pass uses the block weights ``W``,
the backward pass carries the gradient through an independent copy ``W~`` (a custom
``autograd.Function``), and both receive the same update.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reslim
from reslim._src.training.trainer import gia_backward_weights


class _SwapMatmul(torch.autograd.Function):
    """``A @ x`` forward; backward: ``dA = g x^T``, ``dx = A~^T g`` (A~ receives no gradient)."""

    @staticmethod
    def forward(ctx, A, A_tilde, x):
        ctx.save_for_backward(A_tilde, x)
        return A @ x

    @staticmethod
    def backward(ctx, g):
        A_tilde, x = ctx.saved_tensors
        return g @ x.mT, None, A_tilde.mT @ g


def _reference(model0: reslim.ResNet, data, *, steps, lr, optimizer, gia, batch_size=None,
               loss="sum", data_seed=0):
    """Plain autograd training of a copy of ``model0``'s weights; returns (losses (K+1, B), weights)."""
    eff = model0.scales
    beta, act = model0.beta, torch.tanh
    roles = model0.block_roles
    W = {r: getattr(model0, r).detach().clone().requires_grad_(True) for r in roles}
    mirrors = gia_backward_weights(model0) if gia else {r: None for r in roles}
    W_e, W_u = model0.W_e.detach(), model0.W_u.detach()
    X = torch.as_tensor(data.X).T  # (d_in, N)
    Y = torch.as_tensor(data.Y).T  # (d_out, N)
    fam = "adam" if optimizer == "adam" else "sgd"
    lrs = {r: lr * eff[r].lr(fam) for r in roles}
    state = {r: (torch.zeros_like(W[r]), torch.zeros_like(W[r])) for r in roles}
    rng = np.random.default_rng(data_seed)

    def mm(r, l, x):
        A = W[r][l] if r != "U" else W[r][l].mT
        if mirrors[r] is None:
            return A @ x
        At = mirrors[r][l] if r != "U" else mirrors[r][l].mT
        return _SwapMatmul.apply(A, At, x)

    def risk(Xb, Yb):
        h = eff["embed"].multiplier * (W_e @ Xb)
        for l in range(model0.shape.L):
            if model0.block == "two-layer":
                p = eff["U"].multiplier * mm("U", l, h)
                h = h + beta * eff["V"].multiplier * mm("V", l, act(p))
            else:
                h = h + beta * eff["W"].multiplier * mm("W", l, act(h))
        y = eff["readout"].multiplier * (W_u.mT @ h)
        c = Xb.shape[-1] * (Y.shape[0] if loss == "mean" else 1)
        return 0.5 * (y - Yb).square().sum(dim=(-1, -2)) / c  # (B,)

    losses = []
    for k in range(steps + 1):
        with torch.no_grad():
            losses.append(risk(X, Y).numpy().copy())
        if k == steps:
            break
        if batch_size is None:
            Xb, Yb = X, Y
        else:
            idx = torch.as_tensor(np.sort(rng.choice(X.shape[1], size=batch_size, replace=False)))
            Xb, Yb = X[:, idx], Y[:, idx]
        grads = torch.autograd.grad(risk(Xb, Yb).sum(), [W[r] for r in roles])
        with torch.no_grad():
            for r, g in zip(roles, grads, strict=True):
                if optimizer == "adam":
                    m, v = state[r]
                    m.mul_(0.9).add_(g, alpha=0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    t = k + 1
                    delta = -lrs[r] / (1 - 0.9**t) * m / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
                else:
                    delta = -lrs[r] * g
                W[r].add_(delta)
                if mirrors[r] is not None:
                    mirrors[r].add_(delta)
    return np.array(losses), {r: W[r].detach() for r in roles}


CASES = [
    ("one-layer", "depth-mup", "gd", None),
    ("one-layer", "mup", "sgd", 6),
    ("two-layer", "depth-mup", "gd", None),
    ("two-layer", "depth-mup-corrected", "sgd", 6),
    ("two-layer", "depth-mup", "adam", None),
    ("one-layer", "depth-mup", "adam", 6),
]


@pytest.mark.parametrize("block,param,optimizer,batch_size", CASES)
def test_gia_mode_matches_direct_autograd(block, param, optimizer, batch_size):
    data = reslim.gaussian_data(N=10, d_in=5, d_out=3, seed=1)
    lr = 0.01 if optimizer == "adam" else 0.3

    def fresh():
        return reslim.ResNet("4,6,8", param=param, d_in=5, d_out=3, block=block, seeds=[3, 4])

    model0 = fresh()
    for gia in (True, False):
        ref_loss, ref_w = _reference(model0, data, steps=6, lr=lr, optimizer=optimizer, gia=gia,
                                     batch_size=batch_size, data_seed=7)
        model = fresh()
        traj = reslim.train(model, data, steps=6, lr=lr, optimizer=optimizer, gia=gia,
                            batch_size=batch_size, data_seed=7, record=("loss",))
        np.testing.assert_allclose(traj.loss, ref_loss, rtol=1e-10, atol=1e-12)
        for r, w in ref_w.items():
            np.testing.assert_allclose(getattr(model, r).detach().numpy(), w.numpy(),
                                       rtol=1e-10, atol=1e-12)
        if gia:
            gia_loss = ref_loss
    # the mode must matter: same initial loss, different curves after the first update
    np.testing.assert_allclose(gia_loss[0], ref_loss[0], rtol=1e-12)
    assert np.abs(gia_loss[1:] - ref_loss[1:]).max() > 1e-6


def test_gia_mirrors_are_independent_copies():
    model = reslim.ResNet("8,16,32", param="depth-mup", d_in=5, d_out=3, block="two-layer", seeds=[0])
    mirrors = gia_backward_weights(model)
    for r in ("U", "V"):
        w, m = getattr(model, r).detach(), mirrors[r]
        assert m.shape == w.shape
        assert abs(m.std().item() - w.std().item()) < 0.1 * w.std().item()
        corr = (w * m).sum() / (w.norm() * m.norm())
        assert abs(corr.item()) < 0.05
