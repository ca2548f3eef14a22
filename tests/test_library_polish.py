"""Library polish: ResNet.from_weights, readable reprs of ResNet, Trajectory and ParamGroups."""

import numpy as np
import pytest
import torch
from torch import nn

import reslim
from reslim import ResNet, Shape, gaussian_data, train


def _weights(block: str = "two-layer", L=3, M=5, D=4, B=2, d_in=3, d_out=2, seed=7):
    gen = torch.Generator().manual_seed(seed)

    def draw(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    out = {"W_e": draw(B, D, d_in), "W_u": draw(B, D, d_out)}
    if block == "two-layer":
        out.update(U=draw(L, B, D, M) * D**0.5, V=draw(L, B, D, M) * D**0.5)
    else:
        out.update(W=draw(L, B, D, D) * D**0.5)
    return out


@pytest.mark.parametrize("block", ["two-layer", "one-layer"])
def test_from_weights_infers_the_shape_and_keeps_the_weights_exactly(block):
    w = _weights(block)
    net = ResNet.from_weights(**w, param="mlu" if block == "two-layer" else "depth-mup",
                              activation="tanh")
    L, M, D = (3, 5, 4) if block == "two-layer" else (3, 4, 4)
    assert net.shape == Shape(L, M, D) and net.batch_size == 2 and net.block == block
    assert (net.d_in, net.d_out) == (3, 2)
    for role, t in net.role_tensors().items():
        name = {"embed": "W_e", "readout": "W_u"}.get(role, role)
        assert torch.equal(t, w[name]) and t.data_ptr() != w[name].data_ptr()
    assert net.U.requires_grad if block == "two-layer" else net.W.requires_grad
    assert not net.W_e.requires_grad and not net.W_u.requires_grad


def test_from_weights_one_network_without_batch_axis_and_float32():
    w = {k: (v[:, 0] if k in ("U", "V") else v[0]).float() for k, v in _weights().items()}
    net = ResNet.from_weights(**w)
    assert net.batch_size == 1 and net.dtype == torch.float32
    assert torch.equal(net.U[:, 0], w["U"]) and torch.equal(net.W_e[0], w["W_e"])


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_training_from_weights_equals_construct_then_copy(one_thread, optimizer):
    source = ResNet(Shape(4, 6, 5), param="mlu", d_in=3, d_out=2, seeds=[11, 12])
    w = {"U": source.U, "V": source.V, "W_e": source.W_e, "W_u": source.W_u}
    given = ResNet.from_weights(**w, param="mlu", activation="tanh", train_embedding=True)
    copied = ResNet(Shape(4, 6, 5), param="mlu", d_in=3, d_out=2, seeds=[0, 1], train_embedding=True)
    with torch.no_grad():
        for name, t in w.items():
            getattr(copied, name).copy_(t)
    data = gaussian_data(N=8, d_in=3, d_out=2, seed=1)
    lr = 0.5 if optimizer == "gd" else 0.01
    a = train(given, data, steps=5, lr=lr, optimizer=optimizer, record=("loss", "outputs"))
    b = train(copied, data, steps=5, lr=lr, optimizer=optimizer, record=("loss", "outputs"))
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    for name in ("U", "V", "W_e", "W_u"):
        assert torch.equal(getattr(given, name), getattr(copied, name))
    assert not torch.equal(given.U, source.U)  # training changed the copy, not the source
    assert torch.equal(source.U, w["U"])


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update(V=w["V"][:, :, :3]),
     "V has shape (3, 2, 3, 5), expected (3, 2, 4, 5) (from U of shape (3, 2, 4, 5))"),
    (lambda w: w.update(W_e=w["W_e"][:1]), "W_e has shape (1, 4, 3), expected (2, 4, 3)"),
    (lambda w: w.update(W_u=w["W_u"][:, :3]), "W_u has shape (2, 3, 2), expected (2, 4, 2)"),
    (lambda w: w.update(W_e=w["W_e"][0]),
     "W_e must be (B, D, d) like U of shape (3, 2, 4, 5), got shape (4, 3)"),
    (lambda w: w.update(U=w["U"][0, 0]), "U must be (L, B, D, M) or (L, D, M), got shape (4, 5)"),
    (lambda w: w.pop("V"), "V is missing"),
    (lambda w: w.pop("W_u"), "W_u is missing"),
    (lambda w: w.update(W=w["U"]), "not both"),
    (lambda w: w.update(U=w["U"].long()), "U must hold floating-point numbers"),
])
def test_from_weights_shape_errors_name_the_argument_and_both_shapes(change, message):
    w = _weights()
    change(w)
    with pytest.raises(ValueError) as err:
        ResNet.from_weights(**w)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_from_weights_one_layer_must_be_square():
    w = _weights("one-layer")
    w["W"] = w["W"][..., :3]
    with pytest.raises(ValueError, match=r"W must be square .* got shape \(3, 2, 4, 3\)"):
        ResNet.from_weights(**w)


def test_resnet_repr_is_one_readable_line():
    net = ResNet(Shape(L=50, M=64, D=64), param="mlu", d_in=5, d_out=5, activation="tanh",
                 seeds=range(5))
    text = repr(net)
    assert text.startswith("ResNet(L=50, M=64, D=64, B=5, param='mlu', activation='tanh', ")
    assert "tensor" not in text and "\n" not in text and "Parameter" not in text
    assert "train_embedding=True" in repr(ResNet(Shape(2, 3, 4), d_in=1, d_out=1, train_embedding=True))


def test_trajectory_repr_is_a_summary(one_thread):
    net = ResNet(Shape(3, 8, 8), param="mlu", d_in=5, d_out=5, seeds=range(3))
    traj = train(net, gaussian_data(N=10, d_in=5, d_out=5, seed=0), steps=4, lr=1.0,
                 record=("loss", "outputs"))
    text = repr(traj)
    lo, hi = traj.loss[-1].min(), traj.loss[-1].max()
    assert text.startswith("Trajectory(steps=4, networks=3, final_loss=")
    assert f"{lo:.4g}..{hi:.4g}" in text and "diverged=0/3" in text
    assert "outputs(5, 3, 10, 5)" in text and "array" not in text and "\n" not in text
    traj.diverged_at[1] = 2
    assert "diverged=1/3" in repr(traj)
    traj.diverged_at[:] = 0
    assert "final_loss=none finite" in repr(traj)


def test_param_groups_repr_has_no_tensors():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 8, bias=False)
            self.blocks = nn.ModuleList(nn.Linear(8, 8, bias=False) for _ in range(3))
            self.out = nn.Linear(8, 5, bias=False)

    pg = reslim.param_groups(Net(), "mup", roles={"inp.weight": "embed", "blocks.*.weight": "W",
                                                  "out.weight": "readout"},
                             lr=0.1, shape=(3, 8, 8), d_in=5, d_out=5)
    text = repr(pg)
    assert text.startswith("ParamGroups(param='mup', shape=(L=3, M=8, D=8), optimizer='sgd'")
    assert "parameters={embed: 1, W: 3, readout: 1}" in text
    assert "tensor" not in text and "Parameter" not in text and "\n" not in text


def test_load_results_top_level_with_shape_columns_and_datetimes(tmp_path):
    import pandas as pd

    from reslim.experiments import Run, RunResult, Store

    runs = [Run("test", {"role": "finite", "shape": [4, 8, 16], "rep": 0, "seed": 3}, label="a"),
            Run("test", {"role": "limit-gap", "D": 32, "rep": 1}, label="b"),
            Run("test", {"param": "mup", "L": 6, "width": 12, "seed": 0}, label="c")]
    with Store(tmp_path) as store:
        for i, run in enumerate(runs):
            store.write(run, RunResult(run.key, "done", {"err": 0.5 + i}))
    df = reslim.load_results(tmp_path).set_index("label")
    assert df.loc["a", ["L", "M", "D", "P"]].tolist() == [4, 8, 16, 4 * 8 * 16]
    assert pd.isna(df.loc["b", "L"]) and df.loc["b", "D"] == 32 and pd.isna(df.loc["b", "P"])
    assert df.loc["c", ["L", "M", "D"]].tolist() == [6, 12, 12]
    assert str(df["L"].dtype) == "Int64"
    assert df.loc["a", "role"] == "finite" and df.loc["c", "param"] == "mup" and df.loc["a", "rep"] == 0
    for c in ("created", "finished"):
        assert isinstance(df[c].dtype, pd.DatetimeTZDtype)
        assert (df[c] - pd.Timestamp.now(tz="UTC")).abs().max() < pd.Timedelta(minutes=10)
    assert "config.shape" in df and "metrics.err" in df  # the store's own columns stay
    assert reslim.load_results is reslim.experiments.load_results
