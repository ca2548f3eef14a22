"""The trainer's manual gradients and updates against autograd and torch.optim (float64)."""

import numpy as np
import pytest
import torch

from reslim import PRESETS, ResNet, Shape, gaussian_data, get_parameterization, train
from reslim._src.models.resnet import BlockUpdate
from reslim._src.training.trainer import loss_and_grad

SHAPE = Shape(3, 4, 5)


class _Capture(BlockUpdate):
    """Materialises every gradient handed over by the manual backward."""

    def __init__(self, model):
        self.grads = {r: torch.zeros_like(t) for r, t in model.role_tensors().items()}

    def apply(self, role, layer, left, right, scale):
        g = torch.matmul(left, right) * scale
        if layer is None:
            self.grads[role].copy_(g)
        else:
            self.grads[role][layer].copy_(g)


def _cases():
    for name in PRESETS:
        for block in ("two-layer", "one-layer"):
            if get_parameterization(name).supports(block):
                yield name, block


@pytest.mark.parametrize("name,block", list(_cases()))
@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_manual_gradients_equal_autograd(name, block, loss):
    data = gaussian_data(N=6, d_in=3, d_out=2, seed=1)
    net = ResNet(SHAPE, param=name, d_in=3, d_out=2, block=block, activation="tanh", seeds=[0, 7],
                 train_embedding=True, train_readout=True)
    X = torch.as_tensor(data.X)
    Yt = torch.as_tensor(data.Y)
    cache = net.forward_cached(X)
    _, dy = loss_and_grad(cache.y, Yt, loss)
    cap = _Capture(net)
    net.backward_update(X, cache, dy, cap)

    y = net(X)  # autograd path, (B, N, d_out)
    risk, _ = loss_and_grad(y, Yt, loss)
    risk.sum().backward()
    for role, tensor in net.role_tensors().items():
        assert tensor.grad is not None, role
        np.testing.assert_allclose(cap.grads[role].numpy(), tensor.grad.numpy(), rtol=1e-10,
                                   atol=1e-13, err_msg=f"{name}/{block}/{role}")
    np.testing.assert_allclose(cache.y.numpy(), y.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "identity"])
def test_gradients_every_activation_against_finite_differences(activation):
    data = gaussian_data(N=4, d_in=2, d_out=2, seed=3)
    net = ResNet(Shape(2, 3, 4), param="mlu", d_in=2, d_out=2, activation=activation, seeds=[5])
    X, Yt = torch.as_tensor(data.X), torch.as_tensor(data.Y)
    cache = net.forward_cached(X)
    _, dy = loss_and_grad(cache.y, Yt, "sum")
    cap = _Capture(net)
    net.backward_update(X, cache, dy, cap)
    eps = 1e-6
    for role in ("U", "V"):
        t = getattr(net, role)
        for idx in [(0, 0, 1, 2), (1, 0, 3, 0)]:
            with torch.no_grad():
                orig = t[idx].item()
                t[idx] = orig + eps
                up = loss_and_grad(net.forward_cached(X).y, Yt, "sum")[0].item()
                t[idx] = orig - eps
                down = loss_and_grad(net.forward_cached(X).y, Yt, "sum")[0].item()
                t[idx] = orig
            fd = (up - down) / (2 * eps)
            assert cap.grads[role][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", ["mlu", "depth-mup", "standard"])
def test_gd_and_adam_match_torch_optim(name):
    """reslim's fused GD and Adam equal torch.optim.SGD / Adam with per-role lr groups."""
    data = gaussian_data(N=5, d_in=3, d_out=2, seed=4)
    for optimizer, torch_opt in (("gd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        kwargs = dict(param=name, d_in=3, d_out=2, seeds=[2, 3], train_readout=True)
        fast = ResNet(SHAPE, **kwargs)
        ref = ResNet(SHAPE, **kwargs)
        eta = 0.01
        traj = train(fast, data, steps=4, lr=eta, optimizer=optimizer, loss="mean")
        family = "adam" if optimizer == "adam" else "sgd"
        groups = [{"params": [t], "lr": eta * ref.scales[r].lr(family)}
                  for r, t in ref.role_tensors().items() if t.requires_grad]
        opt = torch_opt(groups)
        X, Yt = torch.as_tensor(data.X), torch.as_tensor(data.Y)
        losses = []
        for k in range(5):
            opt.zero_grad()
            risk, _ = loss_and_grad(ref(X), Yt, "mean")
            losses.append(risk.detach().numpy().copy())
            if k < 4:
                risk.sum().backward()
                opt.step()
        np.testing.assert_allclose(traj.loss, np.stack(losses), rtol=1e-10, atol=1e-14)
        for r, t in fast.role_tensors().items():
            np.testing.assert_allclose(t.detach().numpy(), ref.role_tensors()[r].detach().numpy(),
                                       rtol=1e-9, atol=1e-12)
