"""Training schemes (training/schemes.py), the conv ResNet/ResNeXt (models/conv_resnet.py), image
training (training/image_training.py) and the CIFAR-100 loader on synthetic folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reslim._src.diagnostics.mean_field import ModuleBlocks, ResNetBlocks, block_statistic
from reslim._src.models.conv_resnet import ConvResNet
from reslim._src.models.resnet import ResNet
from reslim._src.scaling.shapes import Shape
from reslim._src.training import cifar
from reslim._src.training.image_training import (
    ImageData,
    TrainConfig,
    augment,
    image_data,
    train_image_classifier,
)
from reslim._src.training.schemes import RandomReorder, SortReorder, make_scheme


def conv(block="basic", norm="batch", seed=0, **kw):
    m = ConvResNet(in_channels=1, classes=4, width=8, blocks=3, stages=2, block=block, norm=norm,
                   cardinality=2, seed=seed, **kw)
    return m


@pytest.mark.parametrize("scheme", [RandomReorder(), SortReorder(), SortReorder(descending=True)])
@pytest.mark.parametrize("block", ["basic", "next"])
def test_reordering_preserves_blocks_and_surrogate_conv(scheme, block):
    torch.manual_seed(0)
    m = conv(block).eval()
    with torch.no_grad():  # make the blocks' norms distinct and far from sorted
        for s in m.residual_stages():
            for i, b in enumerate(s):
                for p in b.parameters():
                    p.mul_([1.6, 1.0, 1.3][i])
    view = ModuleBlocks(m)
    x = torch.randn(5, 1, 8, 8)
    ids = [[id(b) for b in s] for s in m.residual_stages()]
    s0 = view.surrogate()(x).detach()
    out0 = m(x).detach()
    rng = np.random.default_rng(1)
    moved = False
    for _ in range(3):
        scheme.reorder(view, rng)
        now = [[id(b) for b in s] for s in m.residual_stages()]
        assert [sorted(a) for a in now] == [sorted(a) for a in ids]
        moved |= now != ids
        torch.testing.assert_close(view.surrogate()(x), s0, rtol=1e-5, atol=1e-5)
    assert moved
    assert (m(x) - out0).abs().max() > 1e-6  # the network itself changes
    if isinstance(scheme, SortReorder):
        for s in range(2):
            stat = block_statistic(view, s)
            assert np.all(np.diff(stat) <= 0) if scheme.descending else np.all(np.diff(stat) >= 0)


def test_reordering_resnet_multiset_and_surrogate():
    net = ResNet(Shape(6, 4, 5), d_in=3, d_out=2, seeds=(0, 1), dtype="float64")
    view = ResNetBlocks(net)
    x = torch.randn(7, 3, dtype=torch.float64)
    key = lambda: sorted(float(u.sum()) for u in net.U.detach()[:, 0])  # noqa: E731
    k0, s0 = key(), view.surrogate()(x).detach()
    U0 = net.U.detach().clone()
    perms = RandomReorder().reorder(view, np.random.default_rng(0))
    assert key() == k0 and not torch.equal(U0, net.U.detach())
    torch.testing.assert_close(net.V.detach()[0], net.V.detach()[0])
    torch.testing.assert_close(net.U.detach(), U0[perms[0]])
    torch.testing.assert_close(view.surrogate()(x), s0)
    SortReorder().reorder(view, np.random.default_rng(0))
    assert np.all(np.diff(block_statistic(view, 0)) >= 0)


def test_schedule_of_schemes():
    r = RandomReorder(every=2, stop=0.5)
    assert [e for e in range(10) if r.due(e, 10)] == [1, 3]
    assert make_scheme("plain").after_epoch(None, 0, 10, np.random.default_rng(0)) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_scheme("nope")


@pytest.mark.parametrize("block,norm", [("basic", "none"), ("next", "none"), ("basic", "batch"),
                                        ("next", "batch")])
def test_conv_gradients_finite_differences(block, norm):
    torch.manual_seed(2)
    m = conv(block, norm).double().eval()
    if norm == "batch":  # non-trivial running statistics
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])

    def loss():
        return torch.nn.functional.cross_entropy(m(x), y)

    params = dict(m.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss(), list(params.values())), strict=True))
    g = torch.Generator().manual_seed(0)
    checked = 0
    for name in ("stem.weight", "stages.0.1.c1.weight" if block == "basic" else "stages.0.1.c2.weight",
                 "transitions.0.c1.weight", "fc.bias"):
        p = params[name]
        for _ in range(3):
            i = int(torch.randint(0, p.numel(), (1,), generator=g))
            eps = 1e-6
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(loss())
                p.view(-1)[i] -= 2 * eps
                dn = float(loss())
                p.view(-1)[i] += eps
            fd = (up - dn) / (2 * eps)
            assert abs(fd - float(grads[name].view(-1)[i])) < 1e-6 + 1e-5 * abs(fd)
            checked += 1
    assert checked == 12


def test_conv_model_shapes_and_errors():
    m = conv("next")
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert len(m.residual_stages()) == 2 and all(len(s) == 3 for s in m.residual_stages())
    with pytest.raises(ValueError):
        ConvResNet(width=6, cardinality=4, block="next")
    with pytest.raises(ValueError):
        ConvResNet(block="dense")


def test_augment():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    assert torch.equal(augment(x, g, 0, False), x)
    y = augment(x, g, 1, False)
    assert y.shape == x.shape
    f = augment(x, torch.Generator().manual_seed(3), 0, True)
    for i in range(2):
        assert torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1))


def test_train_image_classifier_smoke():
    data = image_data("digits", n_train=128, n_test=64, seed=0)
    assert data.X.shape[1:] == (1, 8, 8) and data.classes == 10
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, probe=64)
    for name in ("plain", "random-reorder", "surrogate-pretrain"):
        m = ConvResNet(in_channels=1, classes=10, width=8, blocks=2, stages=2, seed=0)
        r = train_image_classifier(m, data, make_scheme(name), cfg, seed=0)
        assert 0 <= r.test_accuracy <= 1 and len(r.epoch_loss) == 4
        kinds = {e["kind"] for e in r.events}
        expected = {"plain": set(), "random-reorder": {"reorder"}, "surrogate-pretrain": {"switch"}}
        assert kinds == expected[name]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(records, dtype=np.uint8).tofile(path)


def test_cifar100_synthetic_folder(tmp_path):
    rng = np.random.default_rng(0)

    def recs(n):
        r = rng.integers(0, 256, (n, cifar.RECORD_100))
        r[:, 0] = rng.integers(0, 20, n)
        r[:, 1] = rng.integers(0, 100, n)
        return r

    root = tmp_path / "data"
    _write(root / "cifar-100-binary" / "train.bin", recs(12))
    _write(root / "cifar-100-binary" / "test.bin", recs(5))
    Xtr, ytr, Xte, yte = cifar.cifar_images("cifar100", root)
    assert Xtr.shape == (12, 3, 32, 32) and yte.shape == (5,) and ytr.max() < 100
    ds = cifar.cifar100(root, n_train=8, n_test=4, pool=8)
    assert ds.X.shape == (8, 48) and ds.Y.shape == (8, 100)
    im = image_data("cifar100", str(root), n_train=6)
    assert isinstance(im, ImageData) and im.X.shape == (6, 3, 32, 32) and im.classes == 100
    # malformed: a truncated file, out-of-range labels
    bad = tmp_path / "bad" / "cifar-100-binary"
    _write(bad / "train.bin", recs(2)[:, :-3])
    _write(bad / "test.bin", recs(2))
    with pytest.raises(ValueError, match="not a multiple of the CIFAR-100 record"):
        cifar.cifar_images("cifar100", tmp_path / "bad")
    r = recs(2)
    r[0, 1] = 150
    _write(bad / "train.bin", r)
    with pytest.raises(ValueError, match="fine 0..99"):
        cifar.cifar_images("cifar100", tmp_path / "bad")


def test_cifar_missing_and_pickle_errors(tmp_path):
    with pytest.raises(ValueError, match="needs the directory"):
        cifar.cifar_images("cifar100", None)
    with pytest.raises(ValueError, match="not a directory"):
        cifar.cifar_images("cifar100", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="CIFAR-100 not found"):
        cifar.cifar_images("cifar100", tmp_path)
    py = tmp_path / "cifar-100-python"
    py.mkdir()
    (py / "meta").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        cifar.cifar_images("cifar100", tmp_path)
    with pytest.raises(ValueError, match="CIFAR-10 not found"):
        cifar.cifar_images("cifar10", tmp_path)
    with pytest.raises(ValueError, match="unknown CIFAR"):
        cifar.cifar_images("svhn", tmp_path)
    # a CIFAR-10 stand-in read as images for the conv models
    rng = np.random.default_rng(1)
    d = tmp_path / "c10" / "cifar-10-batches-bin"
    for f in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        r = rng.integers(0, 256, (3, cifar.RECORD))
        r[:, 0] = rng.integers(0, 10, 3)
        _write(d / f, r)
    im = image_data("cifar10", str(tmp_path / "c10"))
    assert im.X.shape == (15, 3, 32, 32) and im.X_test.shape == (3, 3, 32, 32) and im.classes == 10


@pytest.mark.parametrize("name", ["plain", "random-reorder", "sort-reorder", "surrogate-pretrain"])
def test_schemes_train_the_builtin_resnet(name):
    from reslim._src.training.schemes import train_with_scheme

    net = ResNet(Shape(4, 8, 6), d_in=3, d_out=2, seeds=(0, 1), dtype="float64")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(10, 2, generator=g, dtype=torch.float64)
    U0 = net.U.detach().clone()
    out = train_with_scheme(net, X, Y, make_scheme(name), epochs=8, steps_per_epoch=5, lr=20.0, momentum=0.5)
    # (mlu: the SGD rate of U, V is eta L M D, here eta about 0.1)
    assert len(out["loss"]) == 8 and out["loss"][-1] < out["loss"][0]
    assert not torch.equal(U0, net.U.detach())
    kinds = {e["kind"] for e in out["events"]}
    assert kinds == {"plain": set(), "random-reorder": {"reorder"}, "sort-reorder": {"reorder"},
                     "surrogate-pretrain": {"switch"}}[name]
