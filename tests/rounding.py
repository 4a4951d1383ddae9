"""Tolerances counted from the numbers' own rounding, for comparing two float32 computations of the features.

A feature computed on two float32 paths (sdpa vs eager attention, a batch vs one prompt, GPU vs CPU, our
float32 statistics vs the float64 reference) may differ only where rounding can reach: a unit whose
pre-activation |h| lies within the comparison's rounding bound may fall on the other side of zero, a
distance may move by that bound over the unit's ||w||, and a key whose attention weight lies within
rounding of the 0.1 x peak threshold may be counted or not. So the tolerance is counted in the test from
the values themselves, on whatever CPU or GPU runs it, and never copied from one machine's numbers.

Statistic order: FEATURE_STATS (frac mean, min, max, std; dist min, mean, std).
"""
import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def units_near_zero(h: np.ndarray, bound: float) -> np.ndarray:
    """Per token, the units whose pre-activation lies within ``bound`` of zero: [T, D] -> [T] counts.
    These, and only these, can change sign when h moves by at most ``bound``."""
    return (np.abs(h) <= bound).sum(axis=-1)


def spline_tolerance(h: np.ndarray, norms: np.ndarray, bound: float) -> np.ndarray:
    """[7] absolute tolerances for one layer's statistics, when h [T, D] (the reference's pre-activations)
    may be off by at most ``bound`` on the other path and the statistics are summed in float32.

    A token's fraction moves by at most k_t / D, k_t its units within ``bound`` of zero: the mean by their
    mean, the min and max by their max, the std by their root sum of squares over sqrt(T - 1). A distance
    moves by ``bound`` / min ||w|| plus the float32 rounding of the row norms (a sum of D squares: at most
    D/2 + 2 eps relative); its std by that times sqrt(T / (T - 1)). Each statistic adds
    its own float32 summation over T tokens (2 T eps of its largest value: the two-pass mean and std)."""
    n_tokens, n_units = h.shape
    spread = math.sqrt(n_tokens / (n_tokens - 1)) if n_tokens > 1 else 0.0
    flips = units_near_zero(h, bound) / n_units          # [T] the most each token's fraction can move
    frac_mean, frac_edge = flips.mean(), flips.max()
    frac_std = math.sqrt((flips ** 2).sum() / (n_tokens - 1)) if n_tokens > 1 else 0.0
    dist = np.abs(h) / norms
    dist_max = dist.min(axis=1).max()
    moved = bound / norms.min() + (n_units / 2 + 2) * EPS32 * dist_max
    summed_frac, summed_dist = 2 * n_tokens * EPS32, 2 * n_tokens * EPS32 * dist_max
    return np.array([frac_mean + summed_frac, frac_edge + summed_frac, frac_edge + summed_frac,
                     frac_std + summed_frac, moved + summed_dist, moved + summed_dist, moved * spread + summed_dist])


def keys_near_threshold(attn: np.ndarray, rel: float, threshold: float = 0.1) -> int:
    """Keys whose weight lies within ``rel`` (relative) of the ID's threshold x their head's peak:
    attn [heads, keys] -> how many (head, key) pairs the ID may count or not."""
    cut = threshold * attn.max(axis=-1, keepdims=True)
    return int((np.abs(attn - cut) <= rel * cut).sum())


def id_rounding(head_dim: int, rel_h: float = 0.0) -> float:
    """Relative rounding of a weight ratio a_j / a_max = exp(s_j - s_max): the scores are head_dim-term
    float32 dot products (head_dim eps each, on scores near the threshold's log 10 apart), plus twice the
    relative difference ``rel_h`` of the two paths' hidden states (the query and the key both move)."""
    return head_dim * EPS32 * (1 + math.log(10)) + 2 * rel_h


def assert_features_match(got_spline, got_ids, want_spline, want_ids, inside, other_h=None):
    """Our float32 features [L, 7] and IDs [L] of one prompt against the float64 reference (naive_features
    with internals=True). ``other_h``: our path's pre-activations per layer when it runs another attention
    than the reference's eager (the stock model is bit-identical to ours under the same attention)."""
    for layer, (h, norms, attn) in enumerate(zip(inside["h"], inside["norms"], inside["attn"])):
        diff = 0.0 if other_h is None else float(np.abs(other_h[layer] - h).max())
        tolerance = spline_tolerance(h, norms, diff)
        off = np.abs(np.asarray(got_spline[layer], dtype=np.float64) - want_spline[layer])
        assert (off <= tolerance).all(), (f"layer {layer}: features off by {off.tolist()}, beyond the rounding "
                                          f"tolerance {tolerance.tolist()} (pre-activations differ by {diff:.3g})")
        rel_h = diff / max(float(np.abs(h).max()), 1e-30)
        near = keys_near_threshold(attn, id_rounding(inside["head_dim"], rel_h))
        assert abs(int(got_ids[layer]) - int(want_ids[layer])) <= near, (
            f"layer {layer}: ID {int(got_ids[layer])} vs {int(want_ids[layer])}, only {near} keys near the threshold")


def assert_recorded_matches_reference(got: dict, stock, token_ids: list[int]) -> None:
    """``got`` (spline_recorder.run on one unpadded prompt) against the naive float64 reference of ``stock``,
    the same weights uninstrumented. Our path's pre-activations are the stock model's under its own attention
    implementation (instrumenting changes nothing it computes); the reference runs eager attention."""
    from naive_reference import gate_preactivations, naive_features
    want_spline, want_ids, inside = naive_features(stock, token_ids, internals=True)
    ours = stock.config._attn_implementation
    other_h = None if ours == "eager" else gate_preactivations(stock, token_ids)[0]
    assert_features_match(got["spline"][0].double().cpu().numpy(), got["ids"][0].cpu().numpy(), want_spline,
                          want_ids, inside, other_h=other_h)
