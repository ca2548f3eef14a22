"""Deep linear networks and their infinite-width limit (docs/deep-linear.md): the limit at L = 1,
finite networks approaching it at rate N^-1/2, the lazy end against the closed-form NTK, the
gradient-flow integrator's order, the min-norm solution, bad input, the experiment end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reslim import DeepLinearNetwork
from reslim.limits import SOLVERS, DeepLinearLimit, DeepLinearProblem, get_limit
from reslim.measure import fit_power_law

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(P=5, d=8, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((P, d)), rng.standard_normal((P, k))


def test_limit_at_depth_one_is_gd_on_the_linear_model():
    X, Y = _data()
    pb = DeepLinearProblem(X, Y, L=1, K=25, eta=0.7)
    beta = get_limit("deep-linear").solution(pb).beta
    b = np.zeros((2, 8))
    for t in range(26):
        assert np.abs(beta[t] - b).max() < 1e-12, t
        b = b - (0.7 / 8) * (b @ X.T - Y.T) @ X / 5  # lr eta gamma_0^2 d on W = gamma_0 d beta
    assert SOLVERS["deep-linear"] is DeepLinearLimit
    # a finite L = 1 network is the same linear model (its beta(0) is its random init)
    net = DeepLinearNetwork(1, 7, 8, 2, gamma0=0.5, seeds=[3])
    tr = net.train(X, Y, steps=4, eta=0.7)
    b = tr.meta["beta"][0, 0]
    for t in range(1, 5):
        b = b - (0.7 / 8) * (b @ X.T - Y.T) @ X / 5
        assert np.abs(tr.meta["beta"][t, 0] - b).max() < 1e-12


def test_manual_gradient_matches_autograd():
    X, Y = _data()
    net = DeepLinearNetwork(4, 16, 8, 2, gamma0=0.7, seeds=[0, 1])
    Ws = [W.clone().requires_grad_(True) for W in net.weights]
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(Y)
    beta = net.mults[0] * Ws[0]
    for c, W in zip(net.mults[1:], Ws[1:], strict=True):
        beta = c * torch.bmm(W, beta)
    loss = 0.5 * ((torch.matmul(beta, Xt.T) - Yt.T) ** 2).sum() / 5
    loss.backward()
    net.step(Xt, Yt, eta=0.3)
    for W0, W1 in zip(Ws, net.weights, strict=True):
        expected = W0.detach() - 0.3 * net.lr_factor * W0.grad
        assert torch.allclose(W1, expected, atol=1e-12, rtol=0)


def test_finite_networks_approach_the_limit_at_rate_n_to_minus_half():
    X, Y = _data()
    K, eta = 8, 0.2
    sol = DeepLinearLimit().solution(DeepLinearProblem(X, Y, L=3, K=K, eta=eta))
    Ns = [64, 128, 256, 512, 1024]
    err = []
    for N in Ns:
        net = DeepLinearNetwork(3, N, 8, 2, seeds=range(6))
        tr = net.train(X, Y, steps=K, eta=eta, record=("loss", "beta", "weights"), weight_steps=[K])
        err.append(np.sqrt(((tr.meta["beta"][K] - sol.beta[K]) ** 2).mean(axis=(1, 2))))
    fit = fit_power_law(np.array(Ns), np.array(err), n_boot=200)
    # measured: -0.50 [-0.53, -0.46] (docs/deep-linear.md)
    assert -0.65 < fit.exponent < -0.38, fit
    # the law of a neuron's input weights: Gaussian with the limit's covariance (N = 1024, 6 seeds)
    W1 = tr.meta["weights"][K][0].reshape(-1, 8)  # rows of W^1(K)
    cov = np.cov(W1.T)
    law = sol.first_layer_law()[K]
    assert np.abs(law - np.eye(8)).max() > 0.05  # the law moved away from N(0, I)
    assert np.abs(cov - law).max() < 0.15


def test_lazy_end_is_the_ntk_dynamics():
    X, Y = _data()
    lim = DeepLinearLimit()
    errs = []
    for g in (1e-1, 1e-2, 1e-3):
        pb = DeepLinearProblem(X, Y, L=4, K=10, eta=0.2, gamma0=g)
        errs.append(np.abs(lim.solution(pb).beta - pb.ntk_beta()).max())
    # the feature-learning correction is O(gamma_0^2): measured 6.5e-3, 6.5e-5, 6.5e-7
    assert errs[2] < 1e-5
    assert 80 < errs[0] / errs[1] < 120 and 80 < errs[1] / errs[2] < 120, errs
    pb = DeepLinearProblem(X, Y, L=4, K=10, eta=0.2, gamma0=1.0)
    assert np.abs(lim.solution(pb).beta - pb.ntk_beta()).max() > 0.05  # feature learning differs
    flow = DeepLinearProblem(X, Y, L=3, K=6, eta=0.2, gamma0=1e-4, mode="flow", substeps=8)
    assert np.abs(lim.solution(flow).beta - flow.ntk_beta()).max() < 1e-7


def test_gradient_flow_converges_at_fourth_order():
    X, Y = _data()
    lim = DeepLinearLimit()

    def beta(n):
        return lim.solution(DeepLinearProblem(X, Y, L=3, K=5, eta=0.2, mode="flow", substeps=n)).beta

    ref = beta(32)
    errs = np.array([np.abs(beta(n) - ref).max() for n in (1, 2, 4)])
    slopes = np.log2(errs[:-1] / errs[1:])  # measured 4.06, 4.03
    assert ((slopes > 3.7) & (slopes < 4.4)).all(), (errs, slopes)


def test_predictor_stays_in_row_span_and_reaches_min_norm_solution():
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((4, 10)), rng.standard_normal((4, 1))
    pb = DeepLinearProblem(X, Y, L=3, K=300, eta=0.3)
    sol = DeepLinearLimit().solution(pb)
    perp = np.eye(10) - np.linalg.pinv(X) @ X
    assert np.abs(sol.beta @ perp).max() < 1e-12
    star = pb.min_norm_solution()
    assert np.abs(sol.beta[-1] - star).max() < 1e-10
    assert np.abs(star @ X.T - Y.T).max() < 1e-12
    # a finite network's predictor keeps a component outside the row span (O(N^-1/2))
    tr = DeepLinearNetwork(3, 64, 10, 1, seeds=[0]).train(X, Y, steps=5, eta=0.3)
    assert np.abs(tr.meta["beta"][5, 0] @ perp).max() > 1e-3


@pytest.mark.parametrize("kwargs, field", [
    ({"L": 0}, "L"), ({"K": -1}, "K"), ({"eta": 0.0}, "eta"), ({"gamma0": float("nan")}, "gamma0"),
    ({"mode": "sde"}, "mode"), ({"substeps": 0}, "substeps"), ({"Y": np.zeros((3, 1))}, "Y"),
    ({"X": np.zeros(5)}, "X"),
])
def test_bad_input_is_a_one_line_value_error_naming_the_field(kwargs, field):
    X, Y = _data()
    args = {"X": X, "Y": Y, "L": 3, "K": 2, **kwargs}
    with pytest.raises(ValueError) as err:
        DeepLinearProblem(**args)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(field), msg
    with pytest.raises(ValueError, match="^problem"):
        DeepLinearLimit().solve("not a problem")
    with pytest.raises(ValueError, match="^N"):
        DeepLinearNetwork(3, 0, 8, 2)
    with pytest.raises(ValueError, match="^gamma0"):
        DeepLinearNetwork(3, 8, 8, 2, gamma0=-1.0)


TINY = ["L=[2,3]", "N=[32,64,128]", "repetitions=2", "train.steps=4", "law.N=64", "law.steps=[0,2,4]",
        "flow.L=[2]", "flow.steps=6", "analysis.steps=[2,4]", "analysis.n_boot=20"]


def test_experiment_end_to_end_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    import reslim.cli  # noqa: F401  (registers commands)
    from reslim._src.cli.app import app
    from reslim.experiments import load_results, load_spec, run_sweep

    out = tmp_path / "out"
    args = ["run", "deep-linear", "--out", str(out), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "|beta_N - beta_inf| vs N (L=3, step 4)" in result.output and "flow L=2" in result.output
    md = (out / "report.md").read_text()
    assert "(a) Width" in md and "(b) The law" in md and "(c) Gradient flow" in md
    for name in ("width", "qq", "rank", "flow"):
        assert (out / "figures" / f"deep-linear-{name}.png").exists(), name
    df = load_results(out)
    assert len(df) == 2 * 3 * 2 + 2 * 2 + 1 and (df["status"] == "done").all()
    fin = df[df["config.role"] == "finite"]
    err = np.array(fin["metrics.beta_error"].tolist(), dtype=float)
    assert err.shape == (12, 5) and np.isfinite(err).all() and (err > 0).all()
    rerun = run_sweep(load_spec("deep-linear", TINY), out, progress=False)
    assert rerun.skipped == 17 and sum(rerun.counts.values()) == 0
    bad = CliRunner().invoke(app, ["run", "deep-linear", "--out", str(tmp_path / "bad"), "--no-progress",
                                   "--set", "analysis.steps=[99]"])
    lines = [ln for ln in bad.output.strip().splitlines() if ln.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "analysis.steps" in lines[0], bad.output
    assert not (tmp_path / "bad").exists()


def test_limit_kernels_match_wide_finite_networks():
    """Per-layer kernels of the limit: the forward two-time kernel H^l(t, s) and the backward
    kernel G^l(t) against the Gram matrices of a wide finite network (error O(N^-1/2))."""
    X, Y = _data()
    K, eta = 6, 0.3
    sol = DeepLinearLimit().solution(DeepLinearProblem(X, Y, L=4, K=K, eta=eta))
    net = DeepLinearNetwork(4, 2048, 8, 2, seeds=[0, 1])
    tr = net.train(X, Y, steps=K, eta=eta, record=("loss", "beta", "hidden"))
    for layer in (1, 2, 3):
        h = tr.hidden[:, :, layer - 1]  # (K+1, B, P, N)
        gram = np.einsum("tbpn,sbqn->tpsq", h, h) / (2 * 2048)
        lim = sol.hidden_kernel(layer)
        err = np.abs(gram - lim).max()
        moved = np.abs(lim[K, :, K] - lim[0, :, 0]).max()  # H^l(K, K) - H^l(0, 0)
        assert err < 0.05 * np.abs(lim).max(), layer
        assert moved > 3 * err, (layer, moved, err)  # the kernel moved well beyond the finite-N error
    # backward kernel of the last wide layer: the Gram of Q^{L-1} = W^L(t)^T
    WL = net.weights[-1].numpy()  # (B, k, N)
    G = np.einsum("bin,bjn->ij", WL, WL) / (2 * 2048)
    assert np.abs(G - sol.backward_kernel(3)[K, :, K]).max() < 0.05
    assert np.abs(sol.readout_law()[K] - sol.backward_kernel(3)[K, :, K]).max() < 1e-14
