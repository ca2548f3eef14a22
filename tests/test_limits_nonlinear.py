"""The span-reduced limits for any activation (docs/limits.md, "Any activation"), held to
independent computations: the exact linear solver, finite networks of growing size, the
D^-1/2 rate of the large-D limit, a wrong solver that must fail, and a much larger sample."""

import numpy as np
import pytest
import torch

from reslim import gaussian_data, linear_teacher
from reslim.limits import LargeDLimit, LimitProblem, MeanODE, ReferenceNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

SE, SU = 3**-0.5, 2**0.5  # entry stds of W_e (d_in = 3) and W_u (d_out = 2)


def _draws(D, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, D, 3)) * SE, rng.standard_normal((B, D, 2)) * SU


def _tanh_problem(D=6, B=1, seed=0, activation="tanh", eta=1.0, K=4):
    W_e, W_u = _draws(D, B, seed)
    return LimitProblem(gaussian_data(N=3, d_in=3, d_out=2, seed=1), K=K, eta=eta, loss="mean",
                        activation=activation, W_e=W_e, W_u=W_u, embed_std=SE, readout_std=SU)


def _rms(x, axis):
    return np.sqrt((np.asarray(x) ** 2).mean(axis=axis))


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("which", ["mean-ode", "large-d"])
def test_sampled_identity_equals_exact_within_its_error(N, which):
    data = linear_teacher(N=N, d_in=3, d_out=2, seed=2)
    W_e, W_u = _draws(8, 2, seed=N)
    pb = LimitProblem(data, K=5, eta=0.15 * N, W_e=W_e, W_u=W_u)
    cls = MeanODE if which == "mean-ode" else LargeDLimit
    exact = cls(S=16, method="exact").solve(pb)
    sampled = cls(S=16, method="sampled", samples=16384).solve(pb)
    assert sampled.meta["method"] == "sampled" and "output_stderr" not in exact.meta
    err = _rms(sampled.outputs - exact.outputs, axis=(2, 3))  # (K+1, B)
    est = sampled.meta["output_stderr"]
    # step 0: the antithetic points make the sampled drift exactly zero, as the exact one is
    np.testing.assert_allclose(sampled.outputs[0], exact.outputs[0], atol=1e-12)
    np.testing.assert_allclose(sampled.h_last[0], exact.h_last[0], atol=1e-12)
    moved = _rms(exact.outputs[1:] - exact.outputs[0], axis=(2, 3))
    assert (moved > 0.05).all()  # the dynamics is not trivial
    assert (est[1:] < 0.01 * moved).all()  # the estimate is small, so the comparison has power
    assert (err[1:] <= 4 * est[1:]).all(), (err, est)
    herr = _rms(sampled.h_last - exact.h_last, axis=(2, 3))
    assert (herr[1:] <= 4 * sampled.meta["h_last_stderr"][1:]).all()


def test_rank_deficient_embedding_is_solved_in_a_basis():
    """D = 2 < r = 5: G_D is singular; the sampled solver works in a basis of span(E)."""
    data = linear_teacher(N=2, d_in=3, d_out=2, seed=3)
    W_e, W_u = _draws(2, 3, seed=4)
    pb = LimitProblem(data, K=4, eta=0.5, W_e=W_e, W_u=W_u)
    exact = MeanODE(S=16, method="exact").solve(pb)
    sampled = MeanODE(S=16, method="sampled", samples=8192).solve(pb)
    assert np.isfinite(sampled.outputs).all() and np.isfinite(sampled.hidden).all()
    err = _rms(sampled.outputs - exact.outputs, axis=(2, 3))
    assert (err[1:] <= 4 * sampled.meta["output_stderr"][1:] + 1e-12).all(), err
    assert _rms(exact.outputs[-1] - exact.outputs[0], axis=(1, 2)).min() > 0.05
    # and tanh at D = 2 runs (h stays in the rank-2 span of E)
    t = MeanODE(S=8, samples=1024).solve(_tanh_problem(D=2, B=2))
    assert np.isfinite(t.outputs).all()


@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu"])
def test_finite_networks_approach_fixed_d_mean_ode(activation):
    """Finite networks of growing (L, M) at fixed D approach the sampled Mean ODE at the rate
    x = 1/L + sqrt(D/(L M)) (theory §2.1); the same networks against the solver with the Stein
    terms dropped stop improving (the control must fail)."""
    D = 6
    pb = _tanh_problem(D=D, activation=activation)
    lim = MeanODE(samples=16384, S=8).solve(pb)
    wrong = MeanODE(samples=16384, S=8, stein=False).solve(pb)
    shapes = [(4, 4), (8, 16), (16, 64), (32, 256), (64, 1024)]
    x, err, herr, werr = [], [], [], []
    for L, M in shapes:
        fin = ReferenceNetwork((L, M, D), seeds=range(8)).solve(pb)
        x.append(1 / L + np.sqrt(D / (L * M)))
        err.append(_rms(fin.outputs - lim.outputs, axis=(1, 2, 3))[-1])
        herr.append(_rms(fin.h_last - lim.h_last, axis=(1, 2, 3))[-1])
        werr.append(_rms(fin.outputs - wrong.outputs, axis=(1, 2, 3))[-1])
    slope = np.polyfit(np.log(x), np.log(err), 1)[0]
    hslope = np.polyfit(np.log(x), np.log(herr), 1)[0]
    assert 0.8 < slope < 1.5 and 0.8 < hslope < 1.5, (slope, hslope, err, herr)
    assert err[-1] > 3 * lim.meta["output_stderr"][-1, 0]  # measured above the solver's own error
    wslope = np.polyfit(np.log(x[-3:]), np.log(werr[-3:]), 1)[0]
    assert wslope < 0.35 and werr[-1] > 10 * err[-1], (wslope, werr)


def test_fixed_d_approaches_large_d_at_rate_one_over_sqrt_d():
    """Fixed-D Mean ODE (G_D) against the large-D limit (G = E[G_D]) for tanh: exponent -1/2."""
    kw = dict(samples=4096, S=8)
    large = LargeDLimit(**kw).solution(_tanh_problem(eta=2.0))
    Ds = [8, 32, 128, 512, 2048]
    out, emb = [], []
    for i, D in enumerate(Ds):
        coef, E = MeanODE(**kw).coefficients(_tanh_problem(D=D, B=8, seed=10 + i, eta=2.0))
        out.append(_rms(coef.outputs[1:] - large.outputs[1:, None], axis=None))
        da = coef.on_grid("a")[1:, :, -1] - large.coef.on_grid("a")[1:, :, -1]  # (K, B, r, N)
        emb.append(_rms(np.einsum("bdp,kbpn->kbdn", E, da), axis=None))
        assert out[-1] > 5 * coef.info["output_stderr"][1:].max()
    p_out = np.polyfit(np.log(Ds), np.log(out), 1)[0]
    p_emb = np.polyfit(np.log(Ds), np.log(emb), 1)[0]
    assert abs(p_out + 0.5) < 0.15 and abs(p_emb + 0.5) < 0.15, (p_out, p_emb, out, emb)


def test_large_d_law_of_a_coordinate_is_the_fixed_d_spread():
    """At large D the coordinates h_d(1) of the fixed-D solution spread like the large-D law
    N(0, Gamma^H_kk(1)) (per sample and step)."""
    kw = dict(samples=4096, S=8)
    large = LargeDLimit(**kw).solution(_tanh_problem(eta=2.0))
    var_H, _ = large.variances()  # (K+1, S+1, N)
    fixed = MeanODE(**kw).solve(_tanh_problem(D=4096, B=1, eta=2.0))
    emp = (fixed.h_last[:, 0] ** 2).mean(axis=-1)  # (K+1, N): mean over d of h_d^2
    np.testing.assert_allclose(emp, var_H[:, -1], rtol=0.1)
    assert np.abs(var_H[-1, -1] - var_H[0, -1]).max() > 0.05  # the law moves with training


def test_error_estimate_covers_the_error_against_a_much_larger_sample():
    pb = _tanh_problem(D=8, eta=2.0)
    ref = MeanODE(samples=2**17, replicas=8, seed=123, S=8).solve(pb)
    ratios = []
    for seed in range(3):
        s = MeanODE(samples=4096, replicas=8, seed=seed, S=8).solve(pb)
        for rec, key in (("outputs", "output_stderr"), ("h_last", "h_last_stderr")):
            act = _rms(getattr(s, rec) - getattr(ref, rec), axis=(2, 3))[1:, 0]
            est = s.meta[key][1:, 0]
            assert (act <= 3 * est).all(), (rec, act, est)
            ratios.append(_rms(act, 0) / _rms(est, 0))
    assert 1 / 3 < np.mean(ratios) < 3  # calibrated, not vacuously large
    assert ref.meta["output_stderr"][-1, 0] < 0.2 * s.meta["output_stderr"][-1, 0]


def test_sampled_solver_reproducible_and_batched():
    pb = _tanh_problem(D=6, B=3)
    a = MeanODE(samples=1024, S=4).solve(pb)
    b = MeanODE(samples=1024, S=4).solve(pb)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    for i in range(3):  # a batch of draws equals separate solves (same points for every draw)
        one = LimitProblem(pb.data, K=pb.K, eta=pb.eta, loss=pb.loss, activation="tanh",
                           W_e=pb.W_e[i], W_u=pb.W_u[i])
        np.testing.assert_allclose(MeanODE(samples=1024, S=4).solve(one).outputs[:, 0], a.outputs[:, i],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    pb = _tanh_problem(D=6, B=2)
    cpu = MeanODE(samples=1024, S=4).solve(pb)
    gpu = MeanODE(samples=1024, S=4, device="cuda").solve(pb)
    np.testing.assert_allclose(gpu.outputs, cpu.outputs, rtol=1e-9, atol=1e-11)
