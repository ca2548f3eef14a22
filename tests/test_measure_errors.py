"""Errors against a reference: hand-computed examples, broadcasting, diverged runs."""

import math

import numpy as np
import pytest

from reslim import Trajectory
from reslim.measure import embedding_error, error_stats, max_layer_mean_abs_error, output_error


def make_traj(h_last, outputs=None, diverged_at=None):
    h_last = np.asarray(h_last, dtype=float)
    k1, b = h_last.shape[:2]
    if outputs is None:
        outputs = np.zeros((k1, b, h_last.shape[2], 1))
    div = np.full(b, -1) if diverged_at is None else np.asarray(diverged_at)
    return Trajectory(loss=np.zeros((k1, b)), outputs=np.asarray(outputs, dtype=float), h_last=h_last,
                      depth=np.linspace(0, 1, 3), diverged_at=div)


# K+1 = 2 steps, B = 2 repetitions, N = 2 samples, D = 2 (reference D = 3)
H = np.array([
    [[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]],
    [[[2.0, 2.0], [1.0, 1.0]], [[0.0, 0.0], [-2.0, 4.0]]],
])
REF = np.array([
    [[[1.0, 1.0, 9.0], [0.0, 1.0, 9.0]], [[1.0, 0.0, 9.0], [1.0, 2.0, 9.0]]],
    [[[0.0, 2.0, 9.0], [1.0, 2.0, 9.0]], [[1.0, 1.0, 9.0], [0.0, 0.0, 9.0]]],
])


def hand_rms(h, ref, reps):
    """RMS by explicit loops over repetitions, samples, and the first D coordinates."""
    out = []
    for k in range(h.shape[0]):
        total, count = 0.0, 0
        for b in reps:
            for n in range(h.shape[2]):
                for d in range(h.shape[3]):
                    total += (h[k, b, n, d] - ref[k, b, n, d]) ** 2
                    count += 1
        out.append(math.sqrt(total / count))
    return np.array(out)


def test_embedding_error_matches_hand_computation():
    err = embedding_error(make_traj(H), make_traj(REF))
    assert err.shape == (2,)
    # step 0: squared diffs 0,1,0,4 | 4,0,0,1 -> 10/8 ; step 1: 4,0,0,1 | 1,1,4,16 -> 27/8
    np.testing.assert_allclose(err, [math.sqrt(10 / 8), math.sqrt(27 / 8)])
    np.testing.assert_allclose(err, hand_rms(H, REF, [0, 1]))
    per = embedding_error(make_traj(H), make_traj(REF), per_repetition=True)
    assert per.shape == (2, 2)
    np.testing.assert_allclose(per[:, 0], hand_rms(H, REF, [0]))
    np.testing.assert_allclose(per[:, 1], hand_rms(H, REF, [1]))


def test_reference_with_one_repetition_is_broadcast():
    ref1 = REF[:, :1]
    err = embedding_error(make_traj(H), make_traj(ref1))
    ref_b = np.repeat(ref1, 2, axis=1)
    np.testing.assert_allclose(err, hand_rms(H, ref_b, [0, 1]))
    # plain arrays are accepted too
    np.testing.assert_allclose(embedding_error(H, ref1), err)


def test_output_error_and_mismatch_errors():
    y = H[..., :1]
    yr = REF[..., :1]
    np.testing.assert_allclose(output_error(make_traj(H, outputs=y), make_traj(REF, outputs=yr)),
                               hand_rms(y, yr, [0, 1]))
    with pytest.raises(ValueError, match="ref.outputs"):
        output_error(make_traj(H, outputs=y), make_traj(REF, outputs=REF[..., :2]))
    with pytest.raises(ValueError, match="ref.h_last: dimension"):
        embedding_error(make_traj(REF), make_traj(H))  # reference smaller than the network
    with pytest.raises(ValueError, match="steps"):
        embedding_error(make_traj(H), make_traj(REF[:1]))
    with pytest.raises(ValueError, match="batch"):
        embedding_error(make_traj(H), make_traj(np.repeat(REF, 3, axis=1)))


def test_diverged_repetitions_are_excluded_and_counted_not_zeroed():
    h = H.copy()
    h[1, 1] = np.nan  # repetition 1 diverged at step 1
    err, excluded = embedding_error(make_traj(h, diverged_at=[-1, 1]), make_traj(REF), return_counts=True)
    np.testing.assert_array_equal(excluded, [0, 1])
    np.testing.assert_allclose(err, [hand_rms(H, REF, [0, 1])[0], hand_rms(H, REF, [0])[1]])
    # a zero-filled repetition would give a smaller error at step 1
    assert err[1] > hand_rms(np.nan_to_num(h), REF, [0, 1])[1]
    per = embedding_error(make_traj(h, diverged_at=[-1, 1]), make_traj(REF), per_repetition=True)
    assert np.isnan(per[1, 1]) and np.isfinite(per[0, 1])


def test_diverged_at_excludes_even_finite_records_and_all_excluded_gives_nan():
    st = error_stats(make_traj(H, diverged_at=[0, 1]), make_traj(REF))
    np.testing.assert_array_equal(st.n_excluded, [1, 2])
    np.testing.assert_array_equal(st.n_used, [1, 0])
    np.testing.assert_allclose(st.rms[0], hand_rms(H, REF, [1])[0])
    assert np.isnan(st.rms[1])
    # an infinite entry also excludes the repetition
    h = H.copy()
    h[0, 0, 0, 0] = np.inf
    _, excl = embedding_error(make_traj(h), make_traj(REF), return_counts=True)
    np.testing.assert_array_equal(excl, [1, 0])


def test_identical_trajectories_give_zero():
    np.testing.assert_array_equal(embedding_error(make_traj(REF), make_traj(REF)), [0.0, 0.0])


def test_max_layer_mean_abs_error_by_hand():
    # hidden (S+1=3, N=1, D=2), reference D=3
    h = np.array([[[0.0, 0.0]], [[1.0, 3.0]], [[2.0, -2.0]]])
    r = np.array([[[0.0, 1.0, 5.0]], [[0.0, 0.0, 5.0]], [[1.0, 1.0, 5.0]]])
    # layer means of |diff| over d <= 2: 0.5, 2.0, 2.0 -> max 2.0
    assert max_layer_mean_abs_error(h, r) == pytest.approx(2.0)
    # leading axes broadcast: (K+1=2, B=3, S+1, N, D) against (2, 1, S+1, N, D_ref)
    hb = np.broadcast_to(h, (2, 3) + h.shape).copy()
    hb[1, 2, 0, 0, 0] = 10.0
    out = max_layer_mean_abs_error(hb, r[None, None])
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(max(0.5 * (10 + 1), 2.0))
    hb[0, 0, 1, 0, 1] = np.nan
    assert np.isnan(max_layer_mean_abs_error(hb, r[None, None])[0, 0])


def test_max_layer_mean_abs_error_interpolates_reference_in_depth():
    s = np.array([0.0, 0.5, 1.0])
    s_ref = np.linspace(0.0, 1.0, 5)
    ref = (2.0 * s_ref)[:, None, None] * np.ones((5, 1, 2))  # H(s) = 2 s
    h = (2.0 * s)[:, None, None] * np.ones((3, 1, 2)) + np.array([0.0, 0.1, 0.0])[:, None, None]
    assert max_layer_mean_abs_error(h, ref, depth=s, ref_depth=s_ref) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="depth"):
        max_layer_mean_abs_error(h, ref)
