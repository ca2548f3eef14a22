"""Limit interface: problem validation, registry, and the common Trajectory record."""

import numpy as np
import pytest

from reslim import Trajectory, linear_teacher
from reslim.limits import (
    LargeDLimit,
    Limit,
    LimitProblem,
    MeanODE,
    ReferenceNetwork,
    available_limits,
    get_limit,
    large_d_embedding_error,
    output_rms,
    register_limit,
    solve,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(D=8, B=1, N=2, K=3, seed=0, **kw):
    data = linear_teacher(N=N, d_in=3, d_out=2, seed=seed)
    rng = np.random.default_rng(seed)
    W_e, W_u = rng.standard_normal((B, D, 3)), rng.standard_normal((B, D, 2))
    return LimitProblem(data, K=K, W_e=W_e, W_u=W_u, **kw)


def test_registry_names_and_instances():
    assert {"mean-ode", "large-d", "reference"} <= set(available_limits())
    assert isinstance(get_limit("mean-ode", S=8), MeanODE)
    large = get_limit("large-d")
    assert large.depth_steps("identity") == 32 and large.depth_steps("tanh") == 8
    with pytest.raises(ValueError, match="unknown limit"):
        get_limit("nope")


def test_register_custom_limit_and_duplicate():
    class Zero(Limit):
        activations = None

        def _solve(self, problem):
            K, N, d = problem.K, problem.N, problem.d_out
            return Trajectory(loss=np.zeros((K + 1, 1)), outputs=np.zeros((K + 1, 1, N, d)), h_last=None,
                              depth=np.array([0.0, 1.0]), diverged_at=np.array([-1]))

    register_limit("zero-test", Zero)
    traj = solve(_problem(), "zero-test")
    assert traj.meta["limit"] == "zero-test" and traj.outputs.shape == (4, 1, 2, 2)
    with pytest.raises(ValueError, match="already registered"):
        register_limit("mean-ode", Zero)
    with pytest.raises(ValueError, match="Limit subclass"):
        register_limit("bad", int)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"K": -1}, "K"), ({"eta": 0.0}, "eta"), ({"alpha": float("nan")}, "alpha"), ({"loss": "l1"}, "loss"),
     ({"activation": "sin"}, "activation"), ({"param": "ntk"}, "param")],
)
def test_problem_rejects_bad_fields(change, field):
    data = linear_teacher(N=1)
    with pytest.raises(ValueError, match=field):
        LimitProblem(data, **{"K": 2, **change})


def test_problem_rejects_bad_embeddings():
    data = linear_teacher(N=1, d_in=3, d_out=3)
    with pytest.raises(ValueError, match="W_e"):
        LimitProblem(data, K=1, W_e=np.ones((4, 2)), W_u=np.ones((4, 3)))
    with pytest.raises(ValueError, match="share"):
        LimitProblem(data, K=1, W_e=np.ones((4, 3)), W_u=np.ones((5, 3)))
    with pytest.raises(ValueError, match="together"):
        LimitProblem(data, K=1, W_e=np.ones((4, 3)))
    p = LimitProblem(data, K=1, W_e=np.ones((4, 3)), W_u=np.ones((4, 3)))
    assert p.W_e.shape == (1, 4, 3) and p.D == 4 and p.B == 1


def test_limits_check_activation_options_and_embeddings():
    # exact moments exist for identity only; the sampled method takes any activation
    with pytest.raises(ValueError, match="^method: exact moments exist for identity only"):
        MeanODE(method="exact").solve(_problem(activation="tanh"))
    with pytest.raises(ValueError, match="^method: exact moments"):
        LargeDLimit(method="exact").solve(_problem(activation="relu"))
    with pytest.raises(ValueError, match="^activation: Only solves identity only"):
        class Only(ReferenceNetwork):
            activations = ("identity",)
        Only((2, 2, 8)).solve(_problem(activation="tanh"))
    with pytest.raises(ValueError, match="W_e"):
        MeanODE().solve(LimitProblem(linear_teacher(N=1), K=1))
    for bad, field in (({"S": 0}, "^S must"), ({"samples": 1000}, "^samples must"),
                       ({"samples": 0}, "^samples must"), ({"replicas": 0}, "^replicas must"),
                       ({"method": "mc"}, "^method must"), ({"seed": 1.5}, "^seed must"),
                       ({"device": ""}, "^device must")):
        with pytest.raises(ValueError, match=field):
            MeanODE(**bad)
        with pytest.raises(ValueError, match=field):
            get_limit("large-d", **bad)


def test_same_trajectory_kind_for_every_limit():
    D, B, N, K, L = 8, 2, 2, 3, 4
    pb = _problem(D=D, B=B, N=N, K=K)
    mo = MeanODE(S=L).solve(pb)
    ld = LargeDLimit(S=L).solve(pb)
    ref = ReferenceNetwork((L, 5, D), seeds=[1, 2]).solve(pb)
    for t in (mo, ld, ref):
        assert isinstance(t, Trajectory)
        assert t.outputs.shape == (K + 1, B, N, 2) and t.loss.shape == (K + 1, B)
        assert t.h_last.shape == (K + 1, B, N, D) and t.hidden.shape == (K + 1, B, L + 1, N, D)
        np.testing.assert_allclose(t.depth, np.arange(L + 1) / L)
        assert t.diverged_at.shape == (B,)
        assert np.allclose(t.hidden[:, :, -1], t.h_last)
    assert mo.backward.shape == mo.hidden.shape and ref.backward is None
    # k = 0: the units have mean zero, h = W_e x at every depth, y = W_u^T W_e x / D
    y0 = np.einsum("bdo,bdi,ni->bno", pb.W_u, pb.W_e, pb.data.X) / D
    np.testing.assert_allclose(mo.outputs[0], y0, atol=1e-14)
    # the reference network is the network the problem describes
    np.testing.assert_allclose(ref.hidden[0, :, 0], np.einsum("bdi,ni->bnd", pb.W_e, pb.data.X), atol=1e-13)
    # distances accept any pair of records
    assert output_rms(mo, ref, step=K).shape == (B,)
    sol = LargeDLimit(S=L).solution(pb)
    assert large_d_embedding_error(ref, sol, pb.W_e, pb.W_u, step=2).shape == (B,)
    # the old name is a deprecated alias of the same function
    import reslim.limits

    with pytest.warns(DeprecationWarning, match="large_d_embedding_error"):
        old = reslim.limits.embedding_error(ref, sol, pb.W_e, pb.W_u, step=2)
    np.testing.assert_array_equal(old, large_d_embedding_error(ref, sol, pb.W_e, pb.W_u, step=2))


def test_reference_network_tanh_and_shape_checks():
    pb = _problem(D=6, activation="tanh")
    t = ReferenceNetwork("3,4,6", seeds=[0]).solve(pb)
    assert np.isfinite(t.outputs).all() and t.meta["activation"] == "tanh"
    with pytest.raises(ValueError, match="W_e"):
        ReferenceNetwork("3,4,7").solve(pb)


def test_mean_loss_is_sum_loss_with_scaled_lr():
    """"mean" divides b(1) by d_out, so eta d_out under "mean" = eta under "sum"."""
    a = _problem(eta=0.2, loss="sum", K=4)
    b = _problem(eta=0.4, loss="mean", K=4)
    for lim in (MeanODE(S=8), ReferenceNetwork("4,4,8")):
        ta, tb = lim.solve(a), lim.solve(b)
        np.testing.assert_allclose(ta.outputs, tb.outputs, atol=1e-12)
        np.testing.assert_allclose(ta.loss, 2 * tb.loss, atol=1e-12)


def test_distances_keep_divergence_as_nan():
    pb = _problem(K=2)
    t = MeanODE(S=4).solve(pb)
    bad = MeanODE(S=4).solve(pb)
    bad.outputs[1:] = np.nan
    d = output_rms(t, bad)
    assert np.isnan(d[1:]).all() and d[0, 0] == 0.0


def test_diverging_limit_is_marked():
    pb = _problem(eta=400.0, K=8)
    t = MeanODE(S=4).solve(pb)
    assert t.diverged_at[0] >= 1
    assert np.isnan(t.outputs[t.diverged_at[0]:]).all()
    assert np.isfinite(t.outputs[: t.diverged_at[0]]).all()
