"""Power-law and additive fits: recovery from noisy synthetic data, CI coverage, NaN handling."""

import numpy as np
import pytest

from reslim.measure import fit_additive, fit_power_law, fit_power_term

X = np.array([1.0, 2, 4, 8, 16, 32, 64, 128, 256])


def noisy_power_law(rng, p=-0.5, c=2.0, reps=5, sigma=0.3):
    """Per-repetition errors ``c x^p exp(sigma eps - sigma^2)``: E[err^2] = c^2 x^(2p)."""
    return c * X[:, None] ** p * np.exp(sigma * rng.standard_normal((X.size, reps)) - sigma**2)


def test_power_law_recovers_exponent_and_constant():
    rng = np.random.default_rng(0)
    f = fit_power_law(X, noisy_power_law(rng, p=-0.5, c=2.0, reps=20, sigma=0.1), n_boot=500)
    assert f.exponent == pytest.approx(-0.5, abs=0.01)
    assert f.constant == pytest.approx(2.0, rel=0.03)
    assert f.exponent_ci[0] < f.exponent < f.exponent_ci[1]
    assert f.n_points == X.size and f.n_reps == 20
    np.testing.assert_allclose(f.predict([1.0, 4.0]), [f.constant, f.constant * 4.0**f.exponent])


def test_power_law_exact_data_and_one_dimensional_input():
    f = fit_power_law(X, 3.0 * X**-0.25)
    assert f.exponent == pytest.approx(-0.25, abs=1e-12)
    assert f.constant == pytest.approx(3.0, rel=1e-12)
    assert f.method == "t-interval"
    assert f.exponent_ci[0] == pytest.approx(-0.25, abs=1e-9)


def test_power_law_ci_covers_truth_at_nominal_rate():
    hits, trials = 0, 100
    for s in range(trials):
        rng = np.random.default_rng(1000 + s)
        f = fit_power_law(X, noisy_power_law(rng, reps=5), n_boot=300, seed=s)
        hits += f.exponent_ci[0] <= -0.5 <= f.exponent_ci[1]
    # 95% interval with only 5 repetitions (small-sample corrected): coverage near nominal
    assert 0.85 <= hits / trials <= 1.0


def test_power_law_ci_narrows_with_more_repetitions():
    rng = np.random.default_rng(3)
    w5 = np.diff(fit_power_law(X, noisy_power_law(rng, reps=5), n_boot=300).exponent_ci)[0]
    w40 = np.diff(fit_power_law(X, noisy_power_law(rng, reps=40), n_boot=300).exponent_ci)[0]
    assert w40 < w5


def test_power_law_drops_diverged_entries_not_zeroes_them():
    rng = np.random.default_rng(4)
    err = noisy_power_law(rng, reps=6, sigma=0.05)
    ref = fit_power_law(X, err, n_boot=0)
    bad = err.copy()
    bad[2, 1] = np.nan  # one diverged repetition at one point
    bad[-1, :] = np.nan  # every repetition diverged at the last point
    f = fit_power_law(X, bad, n_boot=100)
    assert f.n_points == X.size - 1
    assert f.exponent == pytest.approx(ref.exponent, abs=0.02)
    zeroed = fit_power_law(X, np.nan_to_num(bad), n_boot=0)  # what zero-filling would do
    assert zeroed.n_points == X.size - 1  # err 0 at a point is left out (log 0), not fitted
    # a zero error (the reference shape itself) is left out of the fit
    e1 = 3.0 * X**-0.5
    e1[-1] = 0.0
    assert fit_power_law(X, e1).n_points == X.size - 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": [1, 2, -3], "err": [1, 1, 1]}, "x"),
        ({"x": [1, 2, 3], "err": [1, 1]}, "err"),
        ({"x": [1, 2, 3], "err": [np.nan, 1, np.nan]}, "err"),
        ({"x": [1, 2, 3], "err": [1, -1, 1]}, "err"),
        ({"x": [1, 2, 3], "err": [1, 2, 3], "ci": 1.5}, "ci"),
        ({"x": [1, 2, 3], "err": [1, 2, 3], "n_boot": -1}, "n_boot"),
    ],
)
def test_power_law_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(**kwargs)


# grid in L, M, D for the additive models
_L, _M, _D = (a.ravel() for a in np.meshgrid([4.0, 16, 64], [1.0, 4, 16, 64, 256, 1024],
                                              [1.0, 4, 16, 64, 256, 1024], indexing="ij"))


def additive_truth(kind, a, b, c):
    mid = _D / (_L * _M) if kind == "embedding" else (_D / (_L * _M)) ** 2
    return np.sqrt(a**2 / _L**2 + b**2 * mid + c**2 / _D)


@pytest.mark.parametrize("kind, abc", [("embedding", (0.5, 0.8, 2.5)), ("output", (0.3, 0.15, 0.9))])
def test_additive_recovers_constants_and_ci_covers(kind, abc):
    truth = additive_truth(kind, *abc)
    rng = np.random.default_rng(5)
    sigma = 0.2
    err = truth[:, None] * np.exp(sigma * rng.standard_normal((truth.size, 5)) - sigma**2)
    f = fit_additive(_L, _M, _D, err, kind=kind, n_boot=100, seed=1)
    assert f.kind == kind and f.n_points == truth.size
    for name, true in zip("abc", abc, strict=True):
        tol = 0.3 if name == "a" else 0.05  # the 1/L^2 term is small on this grid
        assert f.coefficients[name] == pytest.approx(true, rel=tol)
        lo, hi = f.coefficient_ci[name]
        assert lo <= true <= hi, (name, lo, hi)
    assert f.terms[1] == ("b^2 D/(L M)" if kind == "embedding" else "b^2 (D/(L M))^2")
    np.testing.assert_allclose(f.predict(_L, _M, _D), truth, rtol=0.1)
    parts = f.term_values(_L, _M, _D)
    np.testing.assert_allclose(sum(parts.values()), f.predict(_L, _M, _D) ** 2)


def test_additive_exact_and_zero_coefficient():
    truth = additive_truth("embedding", 0.0, 0.8, 2.5)
    f = fit_additive(_L, _M, _D, truth, kind="embedding", n_boot=0)
    assert f.coefficients["a"] == pytest.approx(0.0, abs=1e-6)
    assert f.coefficients["b"] == pytest.approx(0.8, rel=1e-6)
    assert f.coefficients["c"] == pytest.approx(2.5, rel=1e-6)
    assert all(v >= 0 for v in f.coefficients.values())
    # the wrong model kind fits worse
    g = fit_additive(_L, _M, _D, truth, kind="output", n_boot=0)
    assert g.log_residual_rms > 10 * max(f.log_residual_rms, 1e-9)


def test_additive_nan_handling_and_bad_input():
    truth = additive_truth("output", 0.3, 0.15, 0.9)
    err = np.repeat(truth[:, None], 4, axis=1)
    err[::7, 2] = np.nan  # diverged repetitions
    err[5, :] = np.nan  # a shape where every repetition diverged
    f = fit_additive(_L, _M, _D, err, kind="output", n_boot=20)
    assert f.n_points == truth.size - 1
    assert f.coefficients["b"] == pytest.approx(0.15, rel=1e-6)
    with pytest.raises(ValueError, match="kind"):
        fit_additive(_L, _M, _D, truth, kind="bogus")
    with pytest.raises(ValueError, match="M"):
        fit_additive(_L, _M[:-1], _D, truth)
    with pytest.raises(ValueError, match="D"):
        fit_additive(_L, _M, -_D, truth)
    # scalars broadcast (L held fixed)
    assert fit_additive(50, _M, _D, truth, kind="output", n_boot=0).n_points == truth.size


_GRID = np.array([1, 2, 3, 4, 6, 9, 14, 21, 31, 45, 66, 96, 141, 206, 301, 439, 642, 937, 1369, 2000.0])


def test_power_term_recovers_the_exponent_under_a_floor_and_a_background():
    """err^2 = floor_r + 6.25/D + 0.64 D/(50*2000) (docs/theory.md §3.1 at M = 2000, plus a finite
    reference's error): the log-log slope is far from -1/2, the term fit is not."""
    rng = np.random.default_rng(3)
    R = 5
    floor = 0.0134 * rng.chisquare(40, R) / 40  # per repetition, as a twin would measure it
    clean = 6.25 / _GRID + 0.64 * _GRID / 1e5
    err = np.sqrt(clean[:, None] * rng.chisquare(40, (_GRID.size, R)) / 40 + floor)
    assert abs(fit_power_law(_GRID, err, n_boot=0).exponent + 0.5) > 0.1
    f = fit_power_term(_GRID, err, floor=floor, background=("linear",), n_boot=100)
    assert f.exponent == pytest.approx(-0.5, abs=0.03)
    assert f.exponent_ci[0] < -0.5 < f.exponent_ci[1]
    assert f.constant == pytest.approx(2.5, rel=0.1)
    assert f.background["linear"] == pytest.approx(0.64 / 1e5, rel=0.3)
    assert f.floor == pytest.approx(floor.mean())
    np.testing.assert_allclose(f.model(_GRID), np.sqrt(f.predict(_GRID) ** 2 + f.floor
                                                       + f.background["linear"] * _GRID))


def test_power_term_exact_data_and_bad_input():
    err = np.sqrt(0.01 + 4.0 * _GRID**-2.0 + 3e-3)  # floor 0.01, constant background 3e-3
    f = fit_power_term(_GRID, err, floor=0.01, background=("constant",), n_boot=0)
    assert f.exponent == pytest.approx(-1.0, abs=1e-4)
    assert f.constant == pytest.approx(2.0, rel=1e-3)
    assert f.background["constant"] == pytest.approx(3e-3, rel=1e-3)
    with pytest.raises(ValueError, match="background"):
        fit_power_term(_GRID, err, background=("cubic",))
    with pytest.raises(ValueError, match="floor"):
        fit_power_term(_GRID, err, floor=-1.0)
    with pytest.raises(ValueError, match="err"):  # the floor swallows every point
        fit_power_term(_GRID, err, floor=10.0)
