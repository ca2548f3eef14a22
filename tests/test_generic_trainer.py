"""The generic batched trainer (torch.func vmap + autograd) against the fused ResNet path."""

from __future__ import annotations

import numpy as np
import pytest

import reslim
from reslim._src.training.generic import train_generic

L, M, D, D_IN, D_OUT, N = 3, 6, 5, 4, 3, 7
RECORD = ("loss", "outputs", "h_last", "hidden", "pre")


def _pair(block: str, param: str, **kw):
    opts = dict(param=param, d_in=D_IN, d_out=D_OUT, seeds=[3, 4, 5], block=block, **kw)
    return reslim.ResNet((L, M, D), **opts), reslim.ResNet((L, M, D), **opts)


@pytest.mark.parametrize("optimizer,lr,batch_size", [("gd", 0.1, None), ("sgd", 0.1, 3),
                                                     ("adam", 0.02, None), ("adam", 0.02, 4)])
@pytest.mark.parametrize("block,param", [("two-layer", "mlu"), ("one-layer", "mup")])
def test_generic_equals_fused(one_thread, optimizer, lr, batch_size, block, param):
    data = reslim.gaussian_data(N=N, d_in=D_IN, d_out=D_OUT, seed=1)
    fused, generic = _pair(block, param, train_embedding=True, train_readout=True)
    ta = reslim.train(fused, data, steps=5, lr=lr, optimizer=optimizer, batch_size=batch_size,
                      record=RECORD, data_seed=7)
    tb = train_generic(generic, data, steps=5, lr=lr, optimizer=optimizer, batch_size=batch_size,
                       record=RECORD, data_seed=7)
    for name in RECORD:
        np.testing.assert_allclose(getattr(tb, name), getattr(ta, name), rtol=0, atol=1e-10,
                                   err_msg=name)
    for (name, pa), pb in zip(fused.named_parameters(), generic.parameters(), strict=True):
        np.testing.assert_allclose(pb.detach().numpy(), pa.detach().numpy(), rtol=0, atol=1e-10,
                                   err_msg=name)
    np.testing.assert_array_equal(tb.diverged_at, ta.diverged_at)
    np.testing.assert_array_equal(tb.depth, ta.depth)
    assert np.abs(ta.outputs[-1] - ta.outputs[0]).max() > 1e-2  # training really moved them


def test_per_network_lr_and_divergence(one_thread):
    """lr per network; a network that blows up is flagged at the same step as by the fused path,
    and the others go on."""
    data = reslim.gaussian_data(N=N, d_in=D_IN, d_out=D_OUT, seed=2)
    fused, generic = _pair("two-layer", "mlu")
    lrs = [0.05, 40.0, 0.2]
    ta = reslim.train(fused, data, steps=6, lr=lrs, record=("outputs",))
    tb = train_generic(generic, data, steps=6, lr=lrs, record=("outputs",))
    assert ta.diverged_at[1] >= 0 and ta.diverged_at[0] < 0
    np.testing.assert_array_equal(tb.diverged_at, ta.diverged_at)
    np.testing.assert_allclose(tb.loss, ta.loss, rtol=1e-12, atol=1e-10)  # blowing up: relative
    np.testing.assert_allclose(tb.outputs, ta.outputs, rtol=1e-12, atol=1e-10)


def test_bad_arguments():
    data = reslim.gaussian_data(N=N, d_in=D_IN, d_out=D_OUT, seed=1)
    net = reslim.ResNet((L, M, D), d_in=D_IN, d_out=D_OUT)
    with pytest.raises(ValueError, match="optimizer"):
        train_generic(net, data, steps=1, optimizer="lion")
    with pytest.raises(ValueError, match="lr has 2 values"):
        train_generic(net, data, steps=1, lr=[0.1, 0.2])
    with pytest.raises(ValueError, match="cannot record"):
        train_generic(net, data, steps=1, record=("weights",))
