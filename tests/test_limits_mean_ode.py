"""The linear Mean ODE: exactness against a dense (2D x 2D) solver, order of the depth
integrator, and convergence of finite linear ResNets to it as L, M grow (docs/theory.md §2.1)."""

import numpy as np
import pytest

from reslim import linear_teacher
from reslim._src.limits.dense import dense_mean_ode
from reslim.limits import LimitProblem, MeanODE, ReferenceNetwork, embedding_rms, hidden_distance, output_rms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_low_rank_equals_dense(loss):
    data = linear_teacher(N=2, d_in=3, d_out=2, seed=1)
    rng = np.random.default_rng(3)
    D, K, S = 7, 6, 8
    W_e, W_u = rng.standard_normal((D, 3)), rng.standard_normal((D, 2))
    pb = LimitProblem(data, K=K, eta=0.3, alpha=1.3, loss=loss, W_e=W_e, W_u=W_u)
    t = MeanODE(S=S).solve(pb)
    out, h, b = dense_mean_ode(data.X, data.Y, W_e, W_u, K=K, eta=0.3, alpha=1.3, loss_scale=pb.loss_scale,
                               S=S)
    assert np.abs(t.outputs[:, 0] - out).max() < 1e-10
    assert np.abs(t.hidden[:, 0] - np.swapaxes(h[:, ::2], -1, -2)).max() < 1e-10
    assert np.abs(t.backward[:, 0] - np.swapaxes(b[:, ::2], -1, -2)).max() < 1e-10
    assert np.abs(t.outputs[-1] - t.outputs[0]).max() > 1e-2  # training moved the outputs


def test_batch_of_draws_equals_separate_solves():
    data = linear_teacher(N=2, d_in=3, d_out=3, seed=4)
    rng = np.random.default_rng(5)
    W_e, W_u = rng.standard_normal((3, 10, 3)), rng.standard_normal((3, 10, 3))
    both = MeanODE(S=6).solve(LimitProblem(data, K=4, W_e=W_e, W_u=W_u))
    for b in range(3):
        one = MeanODE(S=6).solve(LimitProblem(data, K=4, W_e=W_e[b], W_u=W_u[b]))
        np.testing.assert_allclose(both.hidden[:, b], one.hidden[:, 0], atol=1e-13)


def test_depth_grid_converges_at_fourth_order():
    data = linear_teacher(N=3, d_in=3, d_out=2, seed=2)
    rng = np.random.default_rng(0)
    D = 12
    pb = LimitProblem(data, K=10, eta=0.3, alpha=1.5, W_e=rng.standard_normal((D, 3)),
                      W_u=rng.standard_normal((D, 2)))
    ref = MeanODE(S=256).solve(pb)
    errs = []
    for S in (4, 8, 16, 32):
        t = MeanODE(S=S).solve(pb)
        errs.append(max(np.abs(t.outputs - ref.outputs).max(), hidden_distance(t, ref).max()))
    orders = -np.diff(np.log2(errs))
    assert errs[0] > 1e-7  # the check is not vacuous
    assert np.all(orders > 3.7) and np.all(orders < 4.3), (errs, orders)


def _slope(x, y):
    return np.polyfit(np.log(x), np.log(y), 1)[0]


@pytest.mark.slow
def test_finite_networks_approach_mean_ode():
    """D = 16, L = M: errors O(1/L + sqrt(D/(L M))) = O(1/L) in both outputs and embedding."""
    data = linear_teacher(N=1, d_in=3, d_out=3, seed=0)
    rng = np.random.default_rng(0)
    D, K = 16, 15
    pb = LimitProblem(data, K=K, eta=0.1, W_e=rng.standard_normal((D, 3)), W_u=rng.standard_normal((D, 3)))
    limit = MeanODE(S=32).solve(pb)
    Ls = (8, 16, 32, 64, 128)
    out, emb = [], []
    for L in Ls:
        r = ReferenceNetwork((L, L, D), seeds=range(8)).solve(pb)
        assert not r.diverged.any()
        out.append(np.sqrt((output_rms(r, limit) ** 2).mean()))
        emb.append(np.sqrt((embedding_rms(r, limit) ** 2).mean()))
    assert -1.3 < _slope(Ls, out) < -0.7, out
    assert -1.2 < _slope(Ls, emb) < -0.8, emb
    assert out[-1] < 0.01  # docs/theory.md §2.1: 0.0039 at L = M = 160 (earlier scratch check)
