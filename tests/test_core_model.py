"""The finite model against docs/theory.md §1: reference form, invariants, batching, divergence."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reslim import Dataset, ResNet, Shape, gaussian_data, get_parameterization, log_grid, train


def _numpy_reference_step(W_e, U, V, W_u, X, Y, alpha, eta, loss):
    """docs/theory.md §1 written unit by unit in NumPy: forward, risk and one GD step.

    U, V: (L, D, M) with N(0, D) entries; returns (outputs (N, d_out), new U, new V).
    """
    L, D, M = U.shape
    N, d_out = Y.shape
    c = N * (d_out if loss == "mean" else 1)
    lr = eta * L * M * D / alpha**2
    hs, ps = [], []
    h = W_e @ X.T  # (D, N)
    for l in range(L):
        hs.append(h)
        p = np.array([[U[l][:, j] @ h[:, n] / D for n in range(N)] for j in range(M)])
        ps.append(p)
        branch = sum(np.outer(V[l][:, j], np.tanh(p[j])) for j in range(M))
        h = h + alpha / (L * M) * branch
    y = W_u.T @ h / D  # (d_out, N)
    g = W_u @ (y - Y.T) / D / c  # dR/dh_L
    newU, newV = U.copy(), V.copy()
    for l in reversed(range(L)):
        a = np.tanh(ps[l])
        gV = alpha / (L * M) * g @ a.T
        ga = alpha / (L * M) * V[l].T @ g
        gp = ga * (1 - a**2)
        gU = hs[l] @ gp.T / D
        g = g + U[l] @ gp / D
        newU[l] -= lr * gU
        newV[l] -= lr * gV
    return y.T, newU, newV


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_one_step_matches_hand_computed_reference(loss):
    data = gaussian_data(N=3, d_in=2, d_out=2, seed=0)
    net = ResNet(Shape(2, 3, 4), param="mlu", d_in=2, d_out=2, seeds=[11])
    W_e, W_u = net.W_e[0].detach().numpy().copy(), net.W_u[0].detach().numpy().copy()
    U, V = net.U[:, 0].detach().numpy().copy(), net.V[:, 0].detach().numpy().copy()
    # entries are N(0, D): check the init law on a big draw of the same preset
    big = ResNet(Shape(2, 50, 64), param="mlu", d_in=2, d_out=2, seeds=[0])
    assert big.U.std().item() == pytest.approx(8.0, rel=0.02)
    y0, U1, V1 = _numpy_reference_step(W_e, U, V, W_u, data.X, data.Y, 1.0, 0.3, loss)
    traj = train(net, data, steps=1, lr=0.3, optimizer="gd", loss=loss)
    np.testing.assert_allclose(traj.outputs[0, 0], y0, rtol=1e-12)
    np.testing.assert_allclose(net.U[:, 0].detach().numpy(), U1, rtol=1e-12)
    np.testing.assert_allclose(net.V[:, 0].detach().numpy(), V1, rtol=1e-12)
    y1, _, _ = _numpy_reference_step(W_e, U1, V1, W_u, data.X, data.Y, 1.0, 0.3, loss)
    np.testing.assert_allclose(traj.outputs[1, 0], y1, rtol=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_mlu_and_unit_form_give_the_same_trajectory(activation):
    data = gaussian_data(N=10, d_in=5, d_out=5, seed=2)
    kw = dict(d_in=5, d_out=5, activation=activation, seeds=[0, 1, 2])
    a = ResNet(Shape(8, 16, 32), param=get_parameterization("mlu", alpha=2.0), **kw)
    b = ResNet(Shape(8, 16, 32), param=get_parameterization("mlu-unit", alpha=2.0), **kw)
    ta = train(a, data, steps=15, lr=1.0, loss="mean", record=("outputs", "h_last", "pre"))
    tb = train(b, data, steps=15, lr=1.0, loss="mean", record=("outputs", "h_last", "pre"))
    assert np.abs(ta.outputs[-1] - ta.outputs[0]).max() > 1e-2  # it really trained
    for name in ("loss", "outputs", "h_last", "pre"):
        np.testing.assert_allclose(getattr(ta, name), getattr(tb, name), rtol=0, atol=1e-10)


def test_mlu_preactivations_are_order_one_and_output_shrinks_with_units():
    data = gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    rms = []
    for D in (16, 64, 256):
        net = ResNet(Shape(10, 32, D), param="mlu", d_in=5, d_out=5, seeds=[0, 1])
        traj = train(net, data, steps=0, record=("pre",))
        rms.append(np.sqrt(np.mean(traj.pre**2)))
    # Var p = (1/D^2) sum_d Var(U_dj) E h_d^2 = E h^2 = ||x||^2 at layer 0, for every D
    predicted = np.sqrt(np.mean(np.sum(data.X**2, axis=1)))
    assert all(0.8 * predicted < r < 1.25 * predicted for r in rms), (rms, predicted)
    assert max(rms) / min(rms) < 1.2, rms
    # the residual part of the output at initialisation is an average of L M random units
    out = []
    for L, M in ((4, 4), (16, 16), (64, 64)):
        net = ResNet(Shape(L, M, 64), param="mlu", d_in=5, d_out=5, seeds=list(range(4)))
        traj = train(net, data, steps=0, record=("outputs", "hidden"))
        h0 = traj.hidden[0, :, 0]
        resid = traj.hidden[0, :, -1] - h0
        out.append(np.sqrt(np.mean(resid**2)))
    ratios = [out[i] / out[i + 1] for i in range(2)]
    # each step multiplies L M by 16, so the residual RMS shrinks by about 4
    assert all(2.5 < r < 6.5 for r in ratios), (out, ratios)


@pytest.mark.parametrize("block,param", [("two-layer", "mlu"), ("one-layer", "depth-mup")])
@pytest.mark.parametrize("optimizer", ["gd", "sgd", "adam"])
def test_batched_equals_one_at_a_time(block, param, optimizer):
    data = gaussian_data(N=8, d_in=3, d_out=2, seed=5)
    seeds = [3, 9, 27, 81]
    kw = dict(param=param, d_in=3, d_out=2, block=block, train_readout=True)
    extra = dict(batch_size=4) if optimizer == "sgd" else {}
    batched = train(ResNet(Shape(5, 6, 7), seeds=seeds, **kw), data, steps=6, lr=0.05,
                    optimizer=optimizer, record=("outputs", "h_last", "hidden"), **extra)
    for b, s in enumerate(seeds):
        single = train(ResNet(Shape(5, 6, 7), seeds=[s], **kw), data, steps=6, lr=0.05,
                       optimizer=optimizer, record=("outputs", "h_last", "hidden"), **extra)
        for name in ("loss", "outputs", "h_last", "hidden"):
            np.testing.assert_allclose(getattr(batched, name)[:, b], getattr(single, name)[:, 0],
                                       rtol=0, atol=1e-12)


def test_per_network_learning_rates_equal_separate_runs():
    data = gaussian_data(N=6, d_in=3, d_out=2, seed=1)
    lrs = [0.1, 0.3, 1.0]
    kw = dict(param="depth-mup", d_in=3, d_out=2)
    batched = train(ResNet(Shape(3, 4, 5), seeds=[7, 7, 7], **kw), data, steps=5, lr=lrs)
    for b, lr in enumerate(lrs):
        single = train(ResNet(Shape(3, 4, 5), seeds=[7], **kw), data, steps=5, lr=lr)
        np.testing.assert_allclose(batched.loss[:, b], single.loss[:, 0], rtol=1e-12)


def test_divergence_is_reported_with_its_step_not_raised():
    data = gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    kw = dict(param="standard", d_in=5, d_out=5, activation="identity")
    net = ResNet(Shape(4, 8, 8), seeds=[0, 1], **kw)
    traj = train(net, data, steps=40, lr=[1e-3, 5.0])
    assert traj.diverged_at[0] == -1
    k = traj.diverged_at[1]
    assert 0 < k <= 40
    assert np.isfinite(traj.loss[:k, 1]).all() and np.isnan(traj.loss[k:, 1]).all()
    assert np.isfinite(traj.loss[:, 0]).all()
    # all networks diverged: the run stops early, remaining steps are NaN
    net = ResNet(Shape(4, 8, 8), seeds=[0], **kw)
    traj = train(net, data, steps=200, lr=80.0)
    assert traj.loss.shape == (201, 1) and traj.diverged_at[0] > 0
    assert np.isnan(traj.loss[-1, 0])


def test_coupled_embedding_uses_first_rows_of_a_larger_draw():
    small = ResNet(Shape(2, 3, 4), d_in=3, d_out=2, seeds=[0], embed_seed=42, embed_dim_max=16)
    large = ResNet(Shape(2, 3, 16), d_in=3, d_out=2, seeds=[1], embed_seed=42, embed_dim_max=16)
    np.testing.assert_array_equal(small.W_e[0].detach(), large.W_e[0, :4].detach())
    np.testing.assert_array_equal(small.W_u[0].detach(), large.W_u[0, :4].detach())
    other = ResNet(Shape(2, 3, 4), d_in=3, d_out=2, seeds=[0], embed_seed=43, embed_dim_max=16)
    assert not torch.equal(small.W_e, other.W_e)
    # block weights come from the network's own seed, embeddings from embed_seed
    assert torch.equal(small.U, ResNet(Shape(2, 3, 4), d_in=3, d_out=2, seeds=[0]).U)


def test_reproducible_from_config_and_float32_close_to_float64():
    data = gaussian_data(N=10, d_in=5, d_out=5, seed=0)
    kw = dict(param="mlu", d_in=5, d_out=5, seeds=[4])
    t1 = train(ResNet(Shape(6, 10, 12), **kw), data, steps=5, lr=1.0, loss="mean")
    t2 = train(ResNet(Shape(6, 10, 12), **kw), data, steps=5, lr=1.0, loss="mean")
    np.testing.assert_array_equal(t1.outputs, t2.outputs)
    t32 = train(ResNet(Shape(6, 10, 12), dtype="float32", **kw), data, steps=5, lr=1.0, loss="mean")
    np.testing.assert_allclose(t32.outputs, t1.outputs, atol=1e-4)
    assert not np.array_equal(t32.outputs, t1.outputs)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="L must be a positive integer"):
        Shape(0, 3, 4)
    with pytest.raises(ValueError, match="M must be a positive integer"):
        Shape(2, -1, 4)
    with pytest.raises(ValueError, match="D must be a positive integer"):
        Shape(2, 3, 2.5)
    with pytest.raises(ValueError, match="unknown parameterization 'mpu'"):
        get_parameterization("mpu")
    with pytest.raises(ValueError, match="unknown option"):
        get_parameterization("mlu", correction=0.5)
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        ResNet(Shape(1, 1, 1), d_in=1, d_out=1, activation="sigmoid")
    with pytest.raises(ValueError, match="no rule for role 'W'"):
        ResNet(Shape(1, 1, 1), param="mlu", d_in=1, d_out=1, block="one-layer")
    with pytest.raises(ValueError, match="d_in must be a positive integer"):
        ResNet(Shape(1, 1, 1), d_in=0, d_out=1)
    net = ResNet(Shape(1, 2, 2), d_in=2, d_out=1)
    data = Dataset(np.ones((3, 2)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="lr must be positive"):
        train(net, data, steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(net, data, steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps must be"):
        train(net, data, steps=-2)
    with pytest.raises(ValueError, match="data has"):
        train(net, Dataset(np.ones((3, 4)), np.ones((3, 1))), steps=1)


def test_log_grid_matches_the_papers():
    assert log_grid(1.5, 2000, 20) == [1, 2, 3, 4, 6, 9, 14, 21, 31, 45, 66, 96, 141, 206, 301, 439,
                                        642, 937, 1369, 2000]
    assert log_grid(10, 500, 15) == [10, 13, 17, 23, 30, 40, 53, 70, 93, 123, 163, 216, 285, 378, 499]
    assert log_grid(1, 3, 10) == [1, 2, 3]  # de-duplicated
    assert Shape.parse("16,64,64") == Shape(16, 64, 64) and Shape(2, 3, 4).P == 24


@pytest.mark.parametrize("block,param,optimizer,gia", [
    ("two-layer", "mlu", "gd", False), ("two-layer", "depth-mup", "sgd", False),
    ("one-layer", "depth-mup", "gd", False), ("two-layer", "depth-mup", "gd", True),
])
def test_low_rank_updates_are_exact_gd(block, param, optimizer, gia):
    """Factored accumulation of updates (with flushes) equals dense in-place GD."""
    data = gaussian_data(N=6, d_in=3, d_out=2, seed=1)
    kw = dict(param=param, d_in=3, d_out=2, block=block, seeds=[0, 1], train_readout=True)
    extra = dict(batch_size=3) if optimizer == "sgd" else {}
    record = ("outputs", "hidden", "pre", "loss")
    dense_net, lr_net = ResNet(Shape(4, 20, 24), **kw), ResNet(Shape(4, 20, 24), **kw)
    dense = train(dense_net, data, steps=7, lr=[0.05, 0.2], optimizer=optimizer, gia=gia,
                  record=record, low_rank=False, **extra)
    factored = train(lr_net, data, steps=7, lr=[0.05, 0.2], optimizer=optimizer, gia=gia,
                     record=record, low_rank=True, **extra)  # capacity 2 steps: flushes
    assert np.abs(dense.outputs[-1] - dense.outputs[0]).max() > 1e-3
    for name in record:
        np.testing.assert_allclose(getattr(factored, name), getattr(dense, name), rtol=1e-10,
                                   atol=1e-12)
    for role, t in dense_net.role_tensors().items():
        np.testing.assert_allclose(lr_net.role_tensors()[role].detach().numpy(),
                                   t.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block,param,optimizer,dtype", [
    ("two-layer", "mlu", "gd", "float64"), ("two-layer", "depth-mup", "sgd", "float64"),
    ("one-layer", "depth-mup", "gd", "float64"), ("two-layer", "mlu", "adam", "float64"),
    ("two-layer", "mlu", "gd", "float32"), ("one-layer", "depth-mup", "sgd", "float32"),
])
def test_fused_cpu_kernels_equal_the_torch_path(block, param, optimizer, dtype):
    """kernels.c (one pass per weight: product and update fused) equals plain torch ops: to
    rounding in float64, to float32 rounding (summed in another order) in float32."""
    from reslim._src.models import kernels

    if not kernels.available() or getattr(torch, dtype) not in kernels.dtypes():
        pytest.skip(f"fused {dtype} kernels unavailable here: {kernels._error}")
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=5e-6)
    data = gaussian_data(N=7, d_in=3, d_out=2, seed=2)
    kw = dict(param=param, d_in=3, d_out=2, block=block, seeds=[0, 1, 2], train_readout=True,
              dtype=dtype)
    extra = dict(batch_size=4) if optimizer == "sgd" else {}
    record = ("outputs", "hidden", "pre", "loss")
    nets = []
    for use in (True, False):
        net = ResNet(Shape(3, 70, 33), **kw)  # M and D not multiples of the kernels' blocks
        net.use_kernels = use
        assert net.kernels_apply(data.N) is use
        nets.append(net)
    fast, ref = (train(n, data, steps=5, lr=[0.05, 0.1, 0.2], optimizer=optimizer, record=record,
                       **extra) for n in nets)
    assert np.abs(ref.outputs[-1] - ref.outputs[0]).max() > 1e-3
    for name in record:
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), **tol)
    for role, t in nets[1].role_tensors().items():
        np.testing.assert_allclose(nets[0].role_tensors()[role].detach().numpy(),
                                   t.detach().numpy(), **tol)


def _kernel_worst_error(N: int, dtype: torch.dtype = torch.float64) -> float:
    """Largest error of kernels.xw / kernels.xwt in ``dtype`` against float64 matmul of the same
    inputs, over shapes with row and column tails, a broadcast x, and the aliased operands the
    backward pass uses (xw's left is x, xwt's right is x)."""
    from reslim._src.models import kernels

    g = torch.Generator().manual_seed(N)
    worst = 0.0

    def err(got, want):
        return (got.double() - want).abs().max().item()

    def k(t):  # the kernel's own copy, in dtype
        return t.to(dtype, copy=True)

    for B, D, M in [(1, 9, 6), (2, 67, 130), (3, 133, 259)]:
        def rnd(*s):  # values exactly representable in dtype; the reference is float64
            return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).double()

        W, coef = rnd(B, D, M), rnd(B)
        x, xm, left, right = rnd(1, N, D), rnd(B, N, M), rnd(B, N, D), rnd(B, N, M)
        out = torch.empty(B, N, M, dtype=dtype)
        kernels.xw(k(x), k(W), out)  # broadcast x (batch stride 0), no update
        worst = max(worst, err(out, x @ W))
        xe = x.expand(B, N, D).contiguous()
        for lft in (left, xe):  # xe: left is the very tensor x
            W2, xk = k(W), k(xe)
            kernels.xw(xk, W2, out, 1.3, left=xk if lft is xe else k(lft),
                       right=k(right), coef=coef)
            worst = max(worst, err(out, 1.3 * xe @ W), err(W2, W + coef[:, None, None] * lft.mT @ right))
        for rgt, base in ((right, None), (xm, rnd(B, N, D))):  # accumulate into out, or out = base + ..
            W3, o, xk = k(W), rnd(B, N, D), k(xm)
            start = o.clone() if base is None else base
            ok = k(o)
            kernels.xwt(xk, W3, ok, 0.7, left=k(left), right=xk if rgt is xm else k(rgt),
                        coef=coef, base=None if base is None else k(base))
            worst = max(worst, err(ok, start + 0.7 * xm @ W.mT),
                        err(W3, W + coef[:, None, None] * left.mT @ rgt))
    return worst


@pytest.mark.parametrize("N", [1, 2, 3, 4, 7, 10, 11, 23])
def test_fused_kernels_equal_matmul_for_every_block_size(N):
    """Every register-tile size of the native kernels (tiles of up to 5 samples, so every
    remainder 1..5, alone and after full tiles), in float64 and, where built, float32 (whose
    tiles are twice as wide: 16 columns, 8 lanes per dot product)."""
    from reslim._src.models import kernels

    if not kernels.available():
        pytest.skip(f"fused kernels unavailable here: {kernels._error}")
    assert _kernel_worst_error(N) < 1e-11
    if torch.float32 in kernels.dtypes():
        assert 1e-7 < _kernel_worst_error(N, torch.float32) < 1e-4  # float32 rounding, no more


def test_portable_kernels_equal_matmul(tmp_path):
    """The portable C loops (built with RESLIM_KERNELS=generic) pass the same check."""
    import subprocess
    import sys

    from reslim._src.models import kernels

    if not kernels.available():
        pytest.skip(f"fused kernels unavailable here: {kernels._error}")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from reslim._src.models import kernels; "
            "assert kernels.available(), kernels._error; "
            "from test_core_model import _kernel_worst_error as f; print(max(f(n) for n in (1, 10, 13)))")
    env = dict(os.environ, RESLIM_KERNELS="generic", RESLIM_CACHE=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, check=True)
    assert float(res.stdout.strip()) < 1e-11
    assert any("generic" in f.name for f in tmp_path.iterdir())


def test_vectorised_seed_derivation_equals_seedsequence():
    """derive_seeds (uint32 array arithmetic) equals derive_seed (NumPy SeedSequence) exactly,
    for seeds with one and two 32-bit entropy words and for streams up to 2**32 - 1."""
    from reslim._src.models.resnet import derive_seed, derive_seeds

    rng = np.random.default_rng(1)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**48 - 1, 2**48, 2**63 - 1, *map(int, rng.integers(0, 2**63, 20))]
    streams = np.concatenate([np.arange(50), [2**32 - 1], rng.integers(0, 2**32, 10)])
    got = derive_seeds([[s] for s in seeds], streams[None, :])
    want = np.array([[derive_seed(s, int(t)) for t in streams] for s in seeds])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="stream"):
        derive_seeds([1], 2**32)
