"""The large-D limit (docs/theory.md §2.2): MeanODE -> LargeDLimit at rate D^{-1/2}, any N,
Gaussian laws and kernels, single sites and the paper's embedding metric."""

import numpy as np
import pytest

from reslim import Dataset, linear_teacher
from reslim.limits import LargeDLimit, LimitProblem, MeanODE, ReferenceNetwork, output_rms
from reslim.limits import large_d_embedding_error as embedding_error

pytestmark = pytest.mark.usefixtures("one_thread")


def test_known_single_sample_outputs():
    """f_k for linear_teacher(seed=0), eta = 0.1: the same numbers (to 2e-8, its ODE tolerance)
    came out of an independent implementation of the paper's single-sample kernel recursion."""
    data = linear_teacher(N=1, d_in=3, d_out=3, seed=0)
    sol = LargeDLimit(S=64).solution(LimitProblem(data, K=15, eta=0.1))
    np.testing.assert_allclose(sol.outputs[0, 0], 0.0, atol=1e-15)
    np.testing.assert_allclose(sol.outputs[1, 0], [0.03364179, -0.06473479, -0.01570869], atol=1e-7)
    np.testing.assert_allclose(sol.outputs[15, 0], [0.2499655, -0.4809929, -0.11671886], atol=1e-7)
    var_h, _ = sol.variances()
    np.testing.assert_allclose(var_h[0, :, 0], 0.64, atol=1e-14)  # |x|^2
    np.testing.assert_allclose(var_h[15, -1, 0], 1.07062159, atol=1e-7)


def test_two_identical_samples_equal_one_sample():
    one = linear_teacher(N=1, d_in=3, d_out=2, seed=3)
    two = Dataset(np.repeat(one.X, 2, axis=0), np.repeat(one.Y, 2, axis=0))
    rng = np.random.default_rng(0)
    W_e, W_u = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))
    for lim in (LargeDLimit(S=16), MeanODE(S=16)):
        t1 = lim.solve(LimitProblem(one, K=12, eta=0.2, W_e=W_e, W_u=W_u))
        t2 = lim.solve(LimitProblem(two, K=12, eta=0.2, W_e=W_e, W_u=W_u))
        for n in range(2):
            np.testing.assert_allclose(t2.outputs[:, :, n], t1.outputs[:, :, 0], atol=1e-13)
            np.testing.assert_allclose(t2.hidden[:, :, :, n], t1.hidden[:, :, :, 0], atol=1e-12)
        np.testing.assert_allclose(t2.loss, t1.loss, atol=1e-14)


def test_mean_ode_approaches_large_d_at_rate_one_over_sqrt_d():
    data = linear_teacher(N=2, d_in=3, d_out=3, seed=0)
    limit = LargeDLimit(S=16).solve(LimitProblem(data, K=15, eta=0.1))
    Ds = [32, 64, 128, 256, 512, 1024, 2048]
    errs = []
    for D in Ds:
        rng = np.random.default_rng(D)
        R = 48  # draws of (W_e, W_u), solved as one batch
        pb = LimitProblem(data, K=15, eta=0.1, W_e=rng.standard_normal((R, D, 3)),
                          W_u=rng.standard_normal((R, D, 3)))
        t = MeanODE(S=16, record_hidden=False).solve(pb)
        errs.append(np.sqrt((output_rms(t, limit) ** 2).mean()))
    slope = np.polyfit(np.log(Ds), np.log(errs), 1)[0]
    assert abs(slope + 0.5) < 0.15, (slope, errs)


def test_single_sites_laws_and_kernels():
    data = linear_teacher(N=3, d_in=3, d_out=2, seed=1)
    pb = LimitProblem(data, K=6, eta=0.3, embed_std=1.5, readout_std=0.7)
    lim = LargeDLimit(S=8)
    sol = lim.solution(pb)
    assert lim.solution(pb) is sol  # cached per problem object
    var_h, var_b = sol.variances()
    assert var_h.shape == (7, 9, 3) and var_b.shape == (7, 9, 3)
    ker = sol.kernels()
    assert ker["Gamma_H"].shape == (9, 7, 3, 7, 3)
    k, n = np.arange(7), np.arange(3)
    np.testing.assert_allclose(ker["Gamma_H"][:, k[:, None], n, k[:, None], n].transpose(1, 0, 2), var_h)
    np.testing.assert_allclose(ker["Gamma_B"][:, k[:, None], n, k[:, None], n].transpose(1, 0, 2), var_b)
    # Monte-Carlo: single sites over rows drawn from the law have these variances and kernels
    rng = np.random.default_rng(0)
    n_rows = 40000
    H, Bs = sol.single_site(1.5 * rng.standard_normal((n_rows, 3)), 0.7 * rng.standard_normal((n_rows, 2)))
    assert H.shape == (7, 9, n_rows, 3)
    np.testing.assert_allclose((H**2).mean(axis=2), var_h, rtol=0.04)
    np.testing.assert_allclose((Bs**2).mean(axis=2), var_b, rtol=0.04, atol=1e-12)
    cross = np.einsum("ksdn,jsdm->sjmkn", Bs, H) / n_rows
    assert np.abs(cross - ker["Lambda_HB"]).max() < 0.05 * np.abs(ker["Lambda_HB"]).max()
    # outputs f_k = readout_std^2 * (W_u-part of the coefficients at s = 1)
    np.testing.assert_allclose(sol.outputs, 0.49 * np.swapaxes(sol.coef.a[:, 0, -1, 3:], 1, 2), atol=1e-14)
    # at step 0 every coordinate is H_d = W_e[d] . x at all depths
    Z = rng.standard_normal((5, 3))
    H0, _ = sol.single_site(Z, np.zeros((5, 2)), depths=np.array([0.0, 0.33, 1.0]))
    np.testing.assert_allclose(H0[0], np.broadcast_to(Z @ data.X.T, (3, 5, 3)), atol=1e-14)
    with pytest.raises(ValueError, match="W_u_rows"):
        sol.single_site(Z, np.zeros((4, 2)))


def test_embedding_metric():
    data = linear_teacher(N=1, d_in=3, d_out=3, seed=0)
    rng = np.random.default_rng(1)
    D = 50
    W_e, W_u = rng.standard_normal((D, 3)), rng.standard_normal((D, 3))
    pb = LimitProblem(data, K=5, eta=0.1, W_e=W_e, W_u=W_u)
    lim = LargeDLimit(S=10)
    sol = lim.solution(pb)
    # the limit's own single sites are at distance 0 (grid points are interpolation nodes)
    assert embedding_error(lim.solve(pb), sol, W_e, W_u, step=5)[0] < 1e-13
    # a finite network (50, 50, 50): the paper's fit err^2 = 0.673 D/(M L) + 0.437/D gives 0.149
    err = embedding_error(ReferenceNetwork((50, 50, D), seeds=range(3)).solve(pb), sol, W_e, W_u, step=5)
    assert np.all((err > 0.10) & (err < 0.20)), err
