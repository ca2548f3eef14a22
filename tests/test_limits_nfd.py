"""The Neural Feature Dynamics solver (reslim.limits.NFDLimit): its kernels at initialisation
against the deterministic depth recursion (Gauss-Hermite, computed here independently), its
Monte Carlo error at rate S^-1/2 with an honest replica error estimate, its depth grid at order
1, and finite one-layer depth-muP networks approaching it as they grow: ordinary networks the
reused-weight (coupled) system, GIA networks the decoupled one."""

import numpy as np
import pytest

from reslim import Dataset, ResNet, train
from reslim.limits import SOLVERS, NFDLimit, NFDProblem, get_limit, nfd_network_options, sgd_batches
from reslim.measure import fit_power_law

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(P=3, d_in=3, d_out=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, d_in))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, rng.standard_normal((P, d_out))


# ---------------------------------------------------------------- independent reference
_Z, _W = np.polynomial.hermite_e.hermegauss(48)
_W = _W / _W.sum()


def _gauss2(f, g, S):
    """E[f(h) g(h')^T] over pairs, (h, h') ~ N(0, S[i, j] block), by 48 x 48 Gauss-Hermite."""
    n = S.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            a, b, c = S[i, i], S[j, j], S[i, j]
            s1 = np.sqrt(a)
            r = c / s1
            s2 = np.sqrt(max(b - r * r, 0.0))
            h1 = s1 * _Z[:, None]
            h2 = r * _Z[:, None] + s2 * _Z[None, :]
            out[i, j] = np.sum(_W[:, None] * _W[None, :] * f(h1) * g(h2))
    return out


def init_recursion(X, Y, L, alpha=1.0):
    """At initialisation (t = 0, no drift) the NFD's Euler-Maruyama grid is the infinite-width
    depth recursion Sigma_{l+1} = Sigma_l + (alpha^2/L) Phi_l, Phi_l = E[tanh tanh'] under
    N(0, Sigma_l), Sigma_0 = X X^T; and backward G_L = Y Y^T (linear readout, f(0) = 0),
    G_l = G_{l+1} * (1 + (alpha^2/L) E[tanh'(h) tanh'(h')])."""
    dphi = lambda h: 1 - np.tanh(h) ** 2  # noqa: E731
    Sig = [X @ X.T]
    Phi = []
    for _ in range(L):
        Phi.append(_gauss2(np.tanh, np.tanh, Sig[-1]))
        Sig.append(Sig[-1] + alpha**2 / L * Phi[-1])
    Phi.append(_gauss2(np.tanh, np.tanh, Sig[-1]))
    G = [None] * (L + 1)
    G[L] = Y @ Y.T
    for l in range(L - 1, -1, -1):
        G[l] = G[l + 1] * (1 + alpha**2 / L * _gauss2(dphi, dphi, Sig[l]))
    return np.stack(Phi), np.stack(G)


def test_registered_and_validates():
    assert SOLVERS["nfd"] is NFDLimit and isinstance(get_limit("nfd", L=4), NFDLimit)
    X, Y = _data()
    with pytest.raises(ValueError, match="NFDProblem"):
        NFDLimit(L=2).solve(object())
    for bad, field in (({"steps": -1}, "steps"), ({"lr": 0}, "lr"), ({"optimizer": "adam"}, "optimizer"),
                       ({"readout": "x"}, "readout"), ({"activation": "sin"}, "activation"),
                       ({"batches": np.zeros((2, 1), dtype=int)}, "batches"),
                       ({"optimizer": "sgd", "batch_size": 9}, "batch_size")):
        with pytest.raises(ValueError, match=field):
            NFDProblem(X, Y, **{"steps": 3, **bad})
    for bad, field in (({"L": 0}, "L"), ({"particles": 10, "replicas": 4}, "multiple"),
                       ({"device": ""}, "device"), ({"threads": 0}, "threads")):
        with pytest.raises(ValueError, match=field):
            NFDLimit(**bad)
    # the trainer's minibatches, reproduced
    b = sgd_batches(10, 3, 4, data_seed=5)
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(b[2], [np.sort(rng.choice(10, 3, replace=False)) for _ in range(3)][2])


def test_trajectory_record_shapes_and_particles():
    X, Y = _data(P=4, d_out=2)
    Xt, Yt = _data(P=2, d_out=2, seed=1)
    pb = NFDProblem(X, Y, steps=3, lr=0.5, optimizer="sgd", batch_size=2, X_test=Xt, Y_test=Yt)
    t = NFDLimit(L=4, particles=256, replicas=2, record_particles=3, kernel_steps=[1, 3]).solve(pb)
    assert t.outputs.shape == (4, 1, 4, 2) and t.loss.shape == (4, 1) and t.test_loss.shape == (4, 1)
    assert t.meta["Phi"].shape == (2, 5, 4, 4) and t.meta["G"].shape == (2, 5, 4, 4)
    assert t.meta["particles"]["h"].shape == (4, 5, 3, 4) and t.meta["test_outputs"].shape == (4, 1, 2, 2)
    np.testing.assert_allclose(t.depth, np.arange(5) / 4)
    assert t.meta["limit"] == "nfd" and t.diverged_at[0] == -1
    np.testing.assert_array_equal(t.outputs[0], 0.0)  # the control variate: f(0) = 0 exactly
    # loss is the full-batch risk of the outputs
    np.testing.assert_allclose(t.loss[:, 0], 0.5 * ((t.outputs[:, 0] - Y) ** 2).sum(axis=(1, 2)) / 4)
    # e(1) = w.(Y - f): the last-depth particles' h are those of the recorded forward
    assert np.isfinite(t.meta["particles"]["e"]).all()


def test_initial_kernels_equal_the_depth_recursion():
    X, Y = _data(P=3, d_out=1)
    X = 1.5 * X  # |x| = 1.5: tanh well away from linear
    L = 8
    t = NFDLimit(L=L, particles=65536, replicas=16, seed=0).solve(NFDProblem(X, Y, steps=0))
    Phi_ref, G_ref = init_recursion(X, Y, L)
    Phi, G = t.meta["Phi"][0], t.meta["G"][0]
    se_P, se_G = t.meta["Phi_stderr"][0], t.meta["G_stderr"][0]
    zP = np.abs(Phi - Phi_ref) / (se_P + 1e-12)
    zG = np.abs(G - G_ref) / (se_G + 1e-12)
    # 16 replicas: z is t-distributed with 15 dof (the entries are correlated): mean z^2 about 1
    assert (zP**2).mean() < 6 and (zG**2).mean() < 6 and max(zP.max(), zG.max()) < 6, (zP.max(), zG.max())
    assert np.abs(Phi - Phi_ref).max() < 0.01 and np.abs(G - G_ref).max() < 0.02 * np.abs(G_ref).max()
    # the recursion is not trivially matched: the phi' factor moves G by several standard errors
    assert (np.abs(G[0] - G_ref[L]) / (se_G[0] + 1e-12)).max() > 10


def test_particle_error_rate_and_replica_estimate():
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=3, lr=1.0)
    Ss = [128, 512, 2048]
    seeds = range(8)
    finals = np.array([[NFDLimit(L=4, particles=S, replicas=1, seed=s).solve(pb).outputs[-1, 0, :, 0]
                        for s in seeds] for S in Ss])  # (n_S, seeds, P)
    spread = finals - finals.mean(axis=1, keepdims=True)
    err = np.sqrt((spread**2).mean(axis=2))  # (n_S, seeds)
    fit = fit_power_law(np.array(Ss, float), err, n_boot=200)
    assert -0.7 < fit.exponent < -0.3, fit
    # the solver's own error estimate (4 replicas of 512) matches the spread at S = 2048
    t = NFDLimit(L=4, particles=2048, replicas=4, seed=99).solve(pb)
    est = float(np.sqrt((t.meta["output_stderr"][-1] ** 2).mean()))
    obs = float(np.sqrt((spread[-1] ** 2).mean() * 8 / 7))
    assert 0.4 < est / obs < 2.5, (est, obs)


def test_depth_grid_converges_at_order_one():
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=4, lr=1.0)
    ref = NFDLimit(L=32, particles=16384, replicas=4, seed=1).solve(pb)
    Ls = [1, 2, 4]
    err = [np.sqrt(((NFDLimit(L=L, particles=16384, replicas=4, seed=1).solve(pb).outputs - ref.outputs)[1:]
                    ** 2).mean()) for L in Ls]
    fit = fit_power_law(np.array(Ls, float), np.array(err), n_boot=0)
    assert -1.4 < fit.exponent < -0.7, (fit, err)


def test_finite_gia_networks_approach_the_solver_with_width():
    """GIA-mode one-layer depth-muP networks of width D (reslim's ResNet, the mapping of
    nfd_network_options) against the NFD on the same depth grid: RMS output error ~ D^p with
    p about -1/2 (the O(N^-1/2) fluctuations of a wide network)."""
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=4, lr=1.0)
    L = 4
    lim = NFDLimit(L=L, particles=16384, replicas=4, seed=0, coupling="gia").solve(pb)
    opts = nfd_network_options(pb)
    Ds = [32, 128, 512]
    err = []
    for D in Ds:
        net = ResNet((L, D, D), seeds=range(8), **opts["model"])
        tr = train(net, Dataset(X, Y), gia=True, record=("loss", "outputs"), **opts["train"])
        err.append(np.sqrt(((tr.outputs[1:] - lim.outputs[1:]) ** 2).mean(axis=(0, 2, 3))))
    fit = fit_power_law(np.array(Ds, float), np.array(err), n_boot=200)
    assert -0.8 < fit.exponent < -0.3, fit
    assert fit.exponent_ci[1] < -0.1


def test_finite_networks_approach_the_solver_as_width_and_depth_grow():
    """Ordinary (backprop) one-layer depth-muP networks with D = 16 L^2, L = 1, 2, 4, against the
    NFD on a fine grid: the width (D^-1/2 = 1/(4L)) and depth (1/L) errors shrink together, error
    ~ L^p with p about -1 (measured: see docs/limits.md)."""
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=4, lr=1.0)
    ref = NFDLimit(L=16, particles=16384, replicas=4, seed=0).solve(pb)
    opts = nfd_network_options(pb)
    Ls = [1, 2, 4]
    err = []
    for L in Ls:
        net = ResNet((L, 16 * L * L, 16 * L * L), seeds=range(8), **opts["model"])
        tr = train(net, Dataset(X, Y), record=("loss", "outputs"), **opts["train"])
        err.append(np.sqrt(((tr.outputs[1:] - ref.outputs[1:]) ** 2).mean(axis=(0, 2, 3))))
    fit = fit_power_law(np.array(Ls, float), np.array(err), n_boot=200)
    assert -1.5 < fit.exponent < -0.6, fit
    assert fit.exponent_ci[1] < -0.3


def _mean_z2(outs, lim):
    """Mean squared z-score of the seed-mean outputs (K, seeds, P, d) of finite networks against a
    solve, with the standard errors of both."""
    m, se = outs.mean(axis=1), outs.std(axis=1, ddof=1) / np.sqrt(outs.shape[1])
    return float(((m - lim.outputs[1:, 0]) ** 2 / (se**2 + lim.meta["output_stderr"][1:, 0] ** 2)).mean())


def test_ordinary_networks_approach_the_coupled_solver_and_not_the_gia_one():
    """Ordinary (reused-weight) networks at L = 4, D = 32, 128, 512 against the coupled solver
    (``coupling="reused"``): RMS output error ~ D^-1/2; against the decoupled (GIA) solver they keep
    a floor: at D = 512 the seed mean of 64 networks is many standard errors from the GIA solve and
    within a few of the coupled one (measured: docs/limits.md)."""
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=4, lr=1.0)
    L = 4
    lims = {c: NFDLimit(L=L, particles=16384, replicas=4, seed=0, coupling=c).solve(pb)
            for c in ("reused", "gia")}
    # the two limits differ by far more than their Monte Carlo error
    gap = np.sqrt(((lims["reused"].outputs - lims["gia"].outputs)[1:] ** 2).mean())
    assert gap > 4 * np.sqrt((lims["reused"].meta["output_stderr"][1:] ** 2).mean()), gap
    opts = nfd_network_options(pb)
    Ds = [32, 128, 512]
    outs = {D: train(ResNet((L, D, D), seeds=range(64 if D == 512 else 8), **opts["model"]), Dataset(X, Y),
                     record=("loss", "outputs"), **opts["train"]).outputs[1:] for D in Ds}
    err = [np.sqrt(((outs[D][:, :8] - lims["reused"].outputs[1:]) ** 2).mean(axis=(0, 2, 3))) for D in Ds]
    fit = fit_power_law(np.array(Ds, float), np.array(err), n_boot=200)
    assert -0.8 < fit.exponent < -0.3, fit
    assert fit.exponent_ci[1] < -0.1
    z2 = {c: _mean_z2(outs[512], lim) for c, lim in lims.items()}
    assert z2["reused"] < 4 and z2["gia"] > 8 and z2["gia"] > 4 * z2["reused"], z2


def test_coupling_vanishes_at_initialisation():
    """The reused-weight responses vanish at step 0: both couplings draw the same fields and give the
    same step-0 kernels and outputs exactly; they differ from step 1 on."""
    X, Y = _data(P=3, d_out=1)
    pb = NFDProblem(X, Y, steps=2, lr=1.0)
    a, b = (NFDLimit(L=4, particles=512, replicas=2, coupling=c).solve(pb) for c in ("reused", "gia"))
    for k in ("Phi", "G"):
        np.testing.assert_array_equal(a.meta[k][0], b.meta[k][0])
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    assert np.abs(a.outputs[1:] - b.outputs[1:]).max() > 1e-3
    assert a.meta["coupling"] == "reused" and b.meta["coupling"] == "gia"
    with pytest.raises(ValueError, match="coupling"):
        NFDLimit(coupling="ordinary")


def test_the_coupled_solver_matches_ordinary_networks_at_depth_32():
    """The earlier gap (tanh, P = 4, eta = 1, 5 GD steps, L = 32): ordinary networks of width 256
    (16 seeds) end at the coupled solver's loss, several standard errors below the GIA solver's."""
    X, Y = _data(P=4)
    pb = NFDProblem(X, Y, steps=5, lr=1.0)
    L = 32
    lims = {c: NFDLimit(L=L, particles=16384, replicas=4, seed=0, coupling=c).solve(pb)
            for c in ("reused", "gia")}
    opts = nfd_network_options(pb)
    tr = train(ResNet((L, 256, 256), seeds=range(16), **opts["model"]), Dataset(X, Y), record=("loss",),
               **opts["train"])
    net, net_se = tr.loss[-1].mean(), tr.loss[-1].std(ddof=1) / 4
    z = {c: abs(net - lim.loss[-1, 0]) / np.hypot(net_se, lim.meta["loss_stderr"][-1, 0])
         for c, lim in lims.items()}
    assert z["reused"] < 3 and z["gia"] > 4, (net, net_se, {c: lim.loss[-1, 0] for c, lim in lims.items()})
