"""Scaling laws from the NFD view (docs/nfd-scaling.md): the fits on synthetic tables with known
laws, the library on a tiny problem (ordinary networks approach the reused-weight limit, not the
decoupled one), and the ``nfd-scaling`` experiment end to end (a few seconds)."""

import math

import numpy as np
import pandas as pd
import pytest

from reslim._src.diagnostics.nfd_scaling import fit_depth_trend, nfd_losses, nfd_scaling, scaling_laws

TINY = ["depths=[1,2,4,8]", "widths=[16,64]", "repetitions=3", 'modes=["ordinary", "gia"]',
        'datasets=[{kind="synthetic", P=4, P_test=0}]', "train.steps=3", "nfd.particles=512",
        "nfd.replicas=4", "analysis.n_boot=20"]


def _synthetic(p=1.0, q=0.5, qb=1.0, seeds=256, a=0.02, b=0.05, c=0.2, R=0.07, s=2e-4, rng=0):
    """A table with R_inf(L) = R + a L^-p (+ noise s) and finite R(L, D) = R_inf(L) + c D^-qb
    + b D^-q z, z ~ N(0, 1) per seed."""
    g = np.random.default_rng(rng)
    depths, widths = [1, 2, 4, 8, 16, 32], [16, 32, 64, 128, 256, 512]
    rows = []
    for L in depths:
        rows.append({"source": "nfd", "mode": "nfd", "L": L, "width": math.inf, "seed": -1,
                     "loss_final": R + a * L**-p + s * g.standard_normal(), "loss_stderr": s,
                     "diverged": False, "compute": math.nan})
        for D in widths:
            for k in range(seeds):
                rows.append({"source": "finite", "mode": "ordinary", "L": L, "width": float(D), "seed": k,
                             "loss_final": R + a * L**-p + c * D**-qb + b * D**-q * g.standard_normal(),
                             "loss_stderr": math.nan, "diverged": False, "compute": 6.0 * 8 * 8 * L * D * D})
    return pd.DataFrame(rows)


def test_depth_trend_fit_recovers_a_known_law():
    L = np.array([1, 2, 4, 8, 16, 32, 64], dtype=float)
    rng = np.random.default_rng(1)
    se = np.full(L.size, 1e-4)
    f = fit_depth_trend(L, 0.07 + 0.01 / L + se * rng.standard_normal(L.size), se, n_boot=200)
    assert f.p_ci[0] < 1.0 < f.p_ci[1] and abs(f.p - 1.0) < 0.15
    assert f.R_nfd_ci[0] < 0.07 < f.R_nfd_ci[1] and f.a > 0
    # no trend in depth: a compatible with 0
    flat = fit_depth_trend(L, 0.07 + se * rng.standard_normal(L.size), se, n_boot=200)
    assert abs(flat.a) < 1e-3
    with pytest.raises(ValueError, match="four or more"):
        fit_depth_trend(L[:3], 0.07 + 0.01 / L[:3], se[:3])


def test_width_error_bias_and_crossover_on_a_known_table():
    laws = scaling_laws(_synthetic(), n_boot=100)
    w = laws.width_fits.set_index(["L", "metric"])
    eps, bias = w.loc[("all", "eps")], w.loc[("all", "bias")]
    # one network's error ~ sqrt(b^2 D^-1 + c^2 D^-2): dominated by D^-1/2 at these widths
    assert -0.62 < eps["exponent"] < -0.45
    # the seed mean's systematic error: c D^-1, the seed noise removed
    assert eps["ci_low"] < eps["exponent"] < eps["ci_high"]
    assert -1.15 < bias["exponent"] < -0.85 and bias["ci_low"] < -0.8
    # a table without a coupling column: its limit serves every mode
    assert set(laws.depth_fits) == {"given"} and set(laws.cells["limit"]) == {"given"}
    f = laws.depth_fit_of("ordinary")
    assert f is laws.depth_fits["given"] and abs(f.p - 1.0) < 0.1
    # model crossover: the doubling gain a L^-p (1 - 2^-p) equals the bias c D^-1 at L* = a D / (2 c)
    cr = laws.crossover.set_index("width")
    assert cr.loc[512.0, "L_star_bias_model"] == pytest.approx(0.02 * 512 / (2 * 0.2), rel=0.3)
    assert cr["L_star_bias_model"].is_monotonic_increasing
    # measured: the first depth whose doubling gain is below the cell's resolved bias (a noisy per-cell
    # test): D = 16 (bias 0.0125) beats every gain; it moves deeper with width; at D = 512 the bias
    # 3.9e-4 is below every measured gain (L = 16: 6.3e-4) and below twice its standard error: none
    assert cr.loc[16.0, "L_star_bias_measured"] == 1
    measured = cr["L_star_bias_measured"].dropna()
    assert measured.is_monotonic_increasing and measured.iloc[-1] > 1
    assert math.isnan(cr.loc[512.0, "L_star_bias_measured"])
    assert len(laws.frontier) >= 2 and laws.frontier["mean"].is_monotonic_decreasing


def _tiny_problem():
    from reslim._src.limits.nfd import NFDProblem

    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return NFDProblem(X, np.sin(2 * X[:, :1]), steps=3, lr=1.0)


def test_library_on_a_tiny_problem(one_thread):
    pb = _tiny_problem()
    df = nfd_scaling(pb, depths=(1, 2, 4, 8), widths=(16, 256), seeds=tuple(range(8)), particles=2048,
                     replicas=4)
    assert set(df["source"]) == {"nfd", "finite"} and len(df) == 2 * 4 + 2 * 4 * 2 * 8
    laws = scaling_laws(df, n_boot=20)
    # both limits solved; each mode compared with its own
    assert set(laws.limit["coupling"]) == {"reused", "gia"}
    assert set(laws.depth_fits) == {"reused", "gia"}
    for table in (laws.cells, laws.width_errors, laws.width_fits, laws.crossover, laws.compute_fits):
        assert dict(table.groupby("mode")["limit"].unique().map(list)) == {"ordinary": ["reused"],
                                                                          "gia": ["gia"]}
    lim = laws.limit.set_index(["coupling", "L"])["loss_final"]
    # one block: no weight reused in the backward pass, the two limits coincide (common random numbers)
    assert lim[("reused", 1)] == pytest.approx(lim[("gia", 1)], rel=1e-12)
    cells = laws.cells.set_index(["mode", "L", "width"])
    # at L = 1 the GIA and ordinary networks coincide (one block: no transposed weight reused)
    np.testing.assert_allclose(cells.loc[("gia", 1, 16.0), "mean"], cells.loc[("ordinary", 1, 16.0), "mean"])
    # the finite-width error falls with width at every depth
    for mode in ("ordinary", "gia"):
        for L in (1, 2, 4, 8):
            assert cells.loc[(mode, L, 256.0), "eps"] < cells.loc[(mode, L, 16.0), "eps"], (mode, L)
    assert np.isfinite(laws.limit["loss_final"]).all() and (laws.limit["loss_stderr"] > 0).all()


def test_ordinary_networks_approach_the_coupled_limit(one_thread):
    """Ordinary backprop networks against the reused-weight limit: the seed mean's systematic error
    shrinks with width (exponent's upper 95% bound < 0), and at the widest width the seed mean sits
    near the coupled limit, far from the decoupled one (the comparison the old scaling page missed)."""
    pb = _tiny_problem()
    depths, seeds = (1, 2, 4, 8), tuple(range(64))
    df = nfd_scaling(pb, depths=depths, widths=(8, 16, 32, 64, 128), seeds=seeds, particles=16384, replicas=8,
                     modes=("ordinary",))
    assert set(df.loc[df["source"] == "nfd", "coupling"]) == {"reused"}
    laws = scaling_laws(df, n_boot=200)
    w = laws.width_fits.set_index(["L", "metric"])
    bias, eps = w.loc[("all", "bias")], w.loc[("all", "eps")]
    assert bias["limit"] == "reused" and bias["n_points"] >= 4
    assert bias["ci_high"] < 0 and bias["exponent"] < -0.5, bias.to_dict()
    assert eps["ci_high"] < 0 and -0.8 < eps["exponent"] < -0.3, eps.to_dict()
    # the decoupled limit: 0.01-0.02 above the coupled one at L >= 4 on this problem
    gia = nfd_losses(pb, (4, 8), particles=16384, replicas=8, coupling="gia").set_index("L")
    reused = laws.limit.set_index("L")
    cells = laws.cells.set_index(["L", "width"])
    for L in (4, 8):
        R_r, R_g = reused.loc[L, "loss_final"], gia.loc[L, "loss_final"]
        assert R_g - R_r > 4 * math.hypot(reused.loc[L, "loss_stderr"], gia.loc[L, "loss_stderr"]), L
        mean = cells.loc[(L, 128.0), "mean"]
        assert abs(mean - R_r) < 0.5 * abs(mean - R_g), (L, mean, R_r, R_g)


def test_nfd_scaling_experiment_end_to_end(tmp_path, one_thread):
    from typer.testing import CliRunner

    import reslim.cli  # noqa: F401  (registers commands)
    from reslim._src.cli.app import app
    from reslim.experiments import load_results

    out = tmp_path / "out"
    args = ["run", "nfd-scaling", "--out", str(out), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "NFD limit (reused coupling) vs depth: R_inf(L) =" in result.output
    assert "NFD limit (gia coupling) vs depth: R_inf(L) =" in result.output
    assert "finite-width single-network error eps (gia vs the gia limit, all depths)" in result.output
    assert "finite-width seed-mean bias (ordinary vs the reused limit, all depths)" in result.output
    md = (out / "report.md").read_text()
    for title in ("Scaling laws from the NFD view", "The NFD limits against depth", "Crossover depth",
                  "Compute frontier", "Dataset synthetic (P = 4)",
                  "Runs: 8 limit runs and 48 finite runs done."):
        assert title in md, title
    assert "{'" not in md and "Dataset 0" not in md
    assert (out / "figures" / "nfd-scaling-0.png").exists()
    df = load_results(out)
    assert len(df) == 2 * 4 + 2 * 4 * 2 * 3 and (df["status"] == "done").all()
    bad = CliRunner().invoke(app, ["run", "nfd-scaling", "--out", str(tmp_path / "bad"), "--no-progress",
                                   "--set", "depths=[1,2,4]"])
    assert bad.exit_code == 2 and "depths" in bad.output


def test_report_prose_helpers():
    from types import SimpleNamespace

    from reslim._src.report.nfd import counts_text, dataset_names

    text = counts_text({"nfd": {"done": 12}, "finite": {"done": 232}})
    assert text == "12 limit runs and 232 finite runs done"
    assert (counts_text({"nfd": {"done": 1}, "finite": {"done": 5, "diverged": 3}})
            == "1 limit run and 5 finite runs done; 3 finite runs diverged")
    assert counts_text({}) == "no runs stored"
    spec = SimpleNamespace(datasets=[SimpleNamespace(kind=k) for k in ("synthetic", "digits")])
    assert dataset_names(spec) == ["synthetic", "digits"]
    spec2 = SimpleNamespace(datasets=[SimpleNamespace(kind="digits"), SimpleNamespace(kind="digits")])
    assert dataset_names(spec2) == ["digits 0", "digits 1"]
