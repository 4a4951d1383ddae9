"""A test of the tests: the rounding tolerances (tests/rounding.py) let through what rounding can do and
catch one unit more, on synthetic pre-activations."""
import numpy as np
import pytest

from rounding import (assert_features_match, extended_tolerance, keys_near_threshold, spline_tolerance,
                      units_near_zero)


def statistics(h, norms):
    """The 7 statistics of one layer in float64, straight from their definitions."""
    frac = (h > 0).mean(axis=1)
    dist = (np.abs(h) / norms).min(axis=1)
    return np.array([frac.mean(), frac.min(), frac.max(), frac.std(ddof=1),
                     dist.min(), dist.mean(), dist.std(ddof=1)])


@pytest.fixture
def layer():
    """Pre-activations of 5 tokens x 4864 units (Qwen2's gate width), 3 of token 2's units within 1e-6 of 0
    and a fourth at 0.5."""
    rng = np.random.default_rng(0)
    h = rng.choice([-1.0, 1.0], size=(5, 4864)) * rng.uniform(1e-3, 1.0, size=(5, 4864))
    h[2] = -np.abs(h[2])                # token 2 has the lowest fraction: its flips move the min
    h[2, :4] = [4e-7, 9e-7, 2e-7, 0.5]  # positive, so every flip below lowers it
    return h, rng.uniform(0.5, 2.0, size=4864)


def test_counts_the_units_within_the_bound(layer):
    h, _ = layer
    assert units_near_zero(h, 1e-6).tolist() == [0, 0, 3, 0, 0]


def test_flipping_the_near_units_is_within_the_tolerance_and_one_more_is_not(layer):
    h, norms = layer
    bound = 1e-6
    tolerance = spline_tolerance(h, norms, bound)
    want = statistics(h, norms)
    moved = h.copy()
    moved[2, :3] *= -1                                     # rounding can do this: each |h| <= bound
    assert (np.abs(statistics(moved, norms) - want) <= tolerance).all()
    moved[2, 3] *= -1                                      # one unit more, far from zero: a real difference
    off = np.abs(statistics(moved, norms) - want)
    assert not (off <= tolerance).all()
    assert off[1] > tolerance[1]                           # the fraction's min over tokens catches it


def test_distances_move_by_the_bound_over_the_norm(layer):
    h, norms = layer
    bound = 1e-6
    tolerance = spline_tolerance(h, norms, bound)
    want = statistics(h, norms)
    assert (np.abs(statistics(h + bound * np.sign(h), norms) - want) <= tolerance).all()
    pushed = h.copy()
    pushed[2] += np.sign(h[2]) * 3 * bound * norms.max()  # token 2's units move away by more than rounding can
    assert not (np.abs(statistics(pushed, norms) - want) <= tolerance).all()


def test_ids_may_differ_by_the_keys_near_the_threshold():
    attn = np.array([[0.5, 0.0500001, 0.04, 0.3, 0.0]])
    assert keys_near_threshold(attn, rel=1e-5) == 1        # 0.0500001 is within 1e-5 of 0.1 x 0.5
    h, norms = np.ones((1, 8)), np.ones(8)
    inside = {"h": [h], "norms": [norms], "attn": [attn], "head_dim": 1}
    spline = statistics(np.vstack([h, h]), norms)[None]
    inside["h"] = [np.vstack([h, h])]
    assert_features_match(spline, [3], spline, [2], inside, other_h=[np.vstack([h, h]) * (1 + 1e-6)])
    with pytest.raises(AssertionError, match="keys near the threshold"):
        assert_features_match(spline, [4], spline, [2], inside, other_h=[np.vstack([h, h]) * (1 + 1e-6)])


def extended(h, norms, projection, last_k=4):
    """The extended statistics of one layer in float64: quantiles, last-k means, region projection."""
    frac, dist = (h > 0).mean(axis=1), (np.abs(h) / norms).min(axis=1)
    quantiles = [np.quantile(x, q) for x in (frac, dist) for q in (0.1, 0.5, 0.9)]
    regions = (h > 0).mean(axis=0) @ projection
    return np.array(quantiles + [frac[-last_k:].mean(), dist[-last_k:].mean()] + list(regions))


def test_extended_tolerance_lets_rounding_through_and_catches_one_unit_more(layer):
    h, norms = layer
    projection = np.random.default_rng(1).normal(size=(h.shape[1], 16)) / h.shape[1] ** 0.5
    tolerance = extended_tolerance(h, norms, 1e-6, projection, 3, 4)
    want = extended(h, norms, projection)
    moved = h.copy()
    moved[2, :3] *= -1                                     # within the bound of zero: rounding may flip them
    assert (np.abs(extended(moved, norms, projection) - want) <= tolerance).all()
    moved[2, 3] *= -1                                      # one unit far from zero: a real difference
    assert not (np.abs(extended(moved, norms, projection) - want) <= tolerance).all()
