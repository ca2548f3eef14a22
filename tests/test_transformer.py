"""Transformers with attention heads as units: gradients, batching, parameterization tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reslim
from reslim._src.models.attention import attention_heads
from reslim._src.models.transformer import (
    TRANSFORMER,
    TRANSFORMER_PRESETS,
    Transformer,
    get_transformer_parameterization,
)
from reslim._src.training.modules import train_modules

T, D_IN, D_OUT, N = 3, 2, 2, 4


def _data(seed: int = 0) -> reslim.Dataset:
    rng = np.random.default_rng(seed)
    return reslim.Dataset(rng.standard_normal((N, T * D_IN)), rng.standard_normal((N, D_OUT)))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradients_match_finite_differences(causal):
    g = torch.Generator().manual_seed(0)
    M, D, r, r_v = 2, 4, 3, 2
    args = [torch.randn(2, T, D, generator=g, dtype=torch.float64)]
    args += [torch.randn(M, D, k, generator=g, dtype=torch.float64) for k in (r, r, r_v, r_v)]
    args = [a.requires_grad_() for a in args]

    def f(u, Q, K, V, O):
        return attention_heads(u, Q, K, V, O, m_q=0.7, m_k=0.5, m_v=1.3, m_o=0.4, logit=r ** -0.5,
                               causal=causal)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_causal_mask_and_heads_as_a_sum():
    g = torch.Generator().manual_seed(1)
    M, D = 3, 5
    u = torch.randn(T, D, generator=g, dtype=torch.float64)
    Q, K, V, O = (torch.randn(M, D, 2, generator=g, dtype=torch.float64) for _ in range(4))
    full = attention_heads(u, Q, K, V, O, causal=True)
    # token 0 only sees itself: the output is sum_j O_j V_j^T u_0
    first = sum(O[j] @ (V[j].T @ u[0]) for j in range(M))
    torch.testing.assert_close(full[0], first, rtol=0, atol=1e-12)
    # a later token's output does not depend on the tokens after it
    u2 = u.clone()
    u2[-1] += 1.0
    torch.testing.assert_close(attention_heads(u2, Q, K, V, O, causal=True)[:-1], full[:-1], rtol=0,
                               atol=1e-12)
    # the heads are units: the block is the sum of one-head blocks
    heads = sum(attention_heads(u, Q[j:j + 1], K[j:j + 1], V[j:j + 1], O[j:j + 1]) for j in range(M))
    torch.testing.assert_close(attention_heads(u, Q, K, V, O), heads, rtol=0, atol=1e-12)


def test_transformer_gradients_match_finite_differences():
    net = Transformer((2, 2, 4), param="mlu", d_in=D_IN, d_out=D_OUT, seq_len=T, blocks="alternating",
                      norm="layer", causal=True, seed=3)
    X = torch.as_tensor(_data().X)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    leaves = [dict(net.named_parameters())[n].detach().clone().requires_grad_() for n in names]

    def f(*ps):
        return torch.func.functional_call(net, dict(zip(names, ps, strict=True)), (X,))

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(blocks="alternating", norm="layer", causal=True),
                                dict(norm="rms", train_embedding=True, train_readout=True)])
@pytest.mark.parametrize("optimizer,lr", [("gd", 0.05), ("adam", 0.01)])
def test_batched_equals_one_at_a_time(one_thread, kw, optimizer, lr):
    data = _data()

    def make(seed):
        return Transformer((3, 2, 6), param="mlu", d_in=D_IN, d_out=D_OUT, seq_len=T, seed=seed, **kw)

    batch = [make(s) for s in range(3)]
    traj = train_modules(batch, data, steps=4, lr=lr, optimizer=optimizer,
                         record=("loss", "outputs", "h_last", "hidden"))
    assert traj.hidden.shape == (5, 3, 4, N, T, 6)
    for s in range(3):
        one = make(s)
        t1 = train_modules([one], data, steps=4, lr=lr, optimizer=optimizer)
        np.testing.assert_allclose(traj.outputs[:, s], t1.outputs[:, 0], rtol=0, atol=1e-12)
        for (name, p), q in zip(one.named_parameters(), batch[s].parameters(), strict=True):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=0, atol=1e-12,
                                       err_msg=name)
    assert np.abs(traj.outputs[-1] - traj.outputs[0]).max() > 1e-3


def test_frozen_tensors_stay_and_norm_gains_train():
    net = Transformer((2, 2, 4), d_in=D_IN, d_out=D_OUT, seq_len=T, norm="layer", seed=1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    train_modules([net], _data(), steps=3, lr=0.05)
    after = dict(net.named_parameters())
    for name in ("W_e", "W_u", "P"):
        assert torch.equal(after[name], before[name])
    assert not torch.equal(after["blocks.0.Q"], before["blocks.0.Q"])
    assert torch.equal(before["blocks.0.norm.weight"], torch.ones(4, dtype=torch.float64))  # own init
    assert not torch.equal(after["blocks.0.norm.weight"], before["blocks.0.norm.weight"])  # base lr


def test_tables_cover_every_role_and_read_as_theory():
    for name in TRANSFORMER_PRESETS:
        table = get_transformer_parameterization(name)
        assert set(table.rules) == set(TRANSFORMER.role_names)
    env = TRANSFORMER.env(reslim.Shape(4, 8, 16), r=2, r_v=3, d_in=5, d_out=5, T=4)
    mlu = get_transformer_parameterization("mlu").effective(env)
    assert mlu["branch"].multiplier == pytest.approx(1 / 32)  # alpha / (L M): a mean over heads
    assert mlu["logit"].multiplier == pytest.approx(2 ** -0.5)
    assert mlu["Q"].init_std == pytest.approx(4.0) and mlu["Q"].multiplier == pytest.approx(1 / 16)
    assert mlu["O"].lr_sgd == pytest.approx(4 * 8 * 16)
    mup = get_transformer_parameterization("mup").effective(env)
    assert mup["logit"].multiplier == pytest.approx(0.5)  # 1 / d_head
    assert mup["O"].multiplier == pytest.approx((8 * 3) ** -0.5)
    assert get_transformer_parameterization("completep").effective(env)["branch"].multiplier == 0.25
    assert get_transformer_parameterization("depth-mup").effective(env)["branch"].multiplier == 0.5
    with pytest.raises(ValueError, match="unknown transformer parameterization"):
        get_transformer_parameterization("ntk")


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        Transformer((1, 1, 2), d_in=1, d_out=1, seq_len=2, norm="batch")
    with pytest.raises(ValueError, match="blocks"):
        Transformer((1, 1, 2), d_in=1, d_out=1, seq_len=2, blocks="mlp")
    net = Transformer((1, 1, 2), d_in=1, d_out=1, seq_len=2)
    with pytest.raises(ValueError, match="inputs must be"):
        net(torch.zeros(3, 5))


def test_describe_shows_every_transformer_row():
    from typer.testing import CliRunner

    from reslim.cli import app

    runner = CliRunner()
    for name in TRANSFORMER_PRESETS:
        out = runner.invoke(app, ["describe", "--arch", "transformer", "--param", name, "--shape", "4,8,16"])
        assert out.exit_code == 0, out.output
        for role in (*TRANSFORMER.role_names, "branch", "logit"):
            assert f" {role} " in out.output, (name, role)
    out = runner.invoke(app, ["describe", "--arch", "transformer", "--param", "mlu", "--shape", "4,8,16"])
    q_row = next(line for line in out.output.splitlines() if line.strip("│ ").startswith("blocks.l.Q "))
    assert "8x16x2" in q_row and "0.0625" in q_row and "512" in q_row  # 1/D multiplier, L M D lr
    res = runner.invoke(app, ["describe", "--arch", "transformer", "--param", "ntk", "--shape", "1,2,3"])
    assert res.exit_code == 2 and "unknown transformer parameterization" in res.output
    res = runner.invoke(app, ["describe", "--arch", "cnn", "--param", "mlu", "--shape", "1,2,3"])
    assert res.exit_code == 2 and "--arch" in res.output
