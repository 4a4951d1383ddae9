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


def spline_tolerance(h: np.ndarray, norms: np.ndarray, bound: float, float32_sides: int = 1) -> np.ndarray:
    """[7] absolute tolerances for one layer's statistics, when h [T, D] (the reference's pre-activations)
    may be off by at most ``bound`` on the other path and the statistics are summed in float32.

    A token's fraction moves by at most k_t / D, k_t its units within ``bound`` of zero: the mean by their
    mean, the min and max by their max, the std by their root sum of squares over sqrt(T - 1). A distance
    moves by ``bound`` / min ||w|| plus the float32 rounding of the row norms (a sum of D squares: at most
    D/2 + 2 eps relative); its std by that times sqrt(T / (T - 1)). Each statistic adds
    its own float32 summation over T tokens (2 T eps of its largest value: the two-pass mean and std), once
    per float32 side: ``float32_sides`` 1 against the float64 reference, 2 between two float32 paths."""
    n_tokens, n_units = h.shape
    spread = math.sqrt(n_tokens / (n_tokens - 1)) if n_tokens > 1 else 0.0
    flips = units_near_zero(h, bound) / n_units          # [T] the most each token's fraction can move
    frac_mean, frac_edge = flips.mean(), flips.max()
    frac_std = math.sqrt((flips ** 2).sum() / (n_tokens - 1)) if n_tokens > 1 else 0.0
    dist = np.abs(h) / norms
    dist_max = dist.min(axis=1).max()
    moved = bound / norms.min() + (n_units / 2 + 2) * EPS32 * dist_max
    summed_frac = 2 * n_tokens * EPS32 * float32_sides
    summed_dist = summed_frac * dist_max
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


def assert_features_match(got_spline, got_ids, want_spline, want_ids, inside, other_h=None, float32_sides=1):
    """Our float32 features [L, 7] and IDs [L] of one prompt against the float64 reference (naive_features
    with internals=True). ``other_h``: our path's pre-activations per layer when it runs another attention
    than the reference's eager (the stock model is bit-identical to ours under the same attention).
    ``float32_sides=2`` when ``want`` is a float32 path too (see :func:`batch_pairs`)."""
    for layer, (h, norms, attn) in enumerate(zip(inside["h"], inside["norms"], inside["attn"])):
        diff = 0.0 if other_h is None else float(np.abs(other_h[layer] - h).max())
        tolerance = spline_tolerance(h, norms, diff, float32_sides)
        off = np.abs(np.asarray(got_spline[layer], dtype=np.float64) - want_spline[layer])
        assert (off <= tolerance).all(), (f"layer {layer}: features off by {off.tolist()}, beyond the rounding "
                                          f"tolerance {tolerance.tolist()} (pre-activations differ by {diff:.3g})")
    assert_ids_match(got_ids, want_ids, inside, other_h)


def assert_ids_match(got_ids, want_ids, inside, other_h=None):
    """IDs [L] of one prompt on two float32 paths: they may differ by the keys whose weight lies within
    rounding of the threshold, counted on ``inside``'s attention rows (naive_features' internals), the
    rounding widened by the paths' relative difference in pre-activations (``other_h`` against inside's h)."""
    for layer, (h, attn) in enumerate(zip(inside["h"], inside["attn"])):
        diff = 0.0 if other_h is None else float(np.abs(other_h[layer] - h).max())
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


def extended_tolerance(h: np.ndarray, norms: np.ndarray, bound: float, projection: np.ndarray, n_quantiles: int,
                       last_k: int, float32_sides: int = 1) -> np.ndarray:
    """Absolute tolerances of one layer's extended statistics (all of FEATURE_GROUPS, in its order: quantiles
    of frac then of dist, the last ``last_k`` tokens' mean of each, the ``projection`` [D, R] of the unit
    frequencies), when h [T, D] may be off by ``bound`` on the other path.

    A quantile is a convex combination of two sorted values, and sorting moves no value by more than the
    largest move of any token: frac by max_t k_t / D, dist as in :func:`spline_tolerance`; plus 4 eps of its
    largest value for the interpolation. A last-k mean moves by the mean of its tokens' moves, plus 2 T eps.
    A unit's frequency moves by its tokens within ``bound`` of zero over T, so region j by the sum of those
    times |P_dj|; its D-term float32 product rounds by at most D eps times sum_d freq_d |P_dj| (and the
    frequency itself by eps). Each rounding term counts once per float32 side."""
    n_tokens, n_units = h.shape
    near = np.abs(h) <= bound
    flips = near.sum(axis=1) / n_units
    dist_max = (np.abs(h) / norms).min(axis=1).max()
    moved = bound / norms.min() + (n_units / 2 + 2) * EPS32 * dist_max
    keep = min(last_k, n_tokens)
    sides = float32_sides * EPS32
    quantiles = [flips.max() + 4 * sides] * n_quantiles + [moved + 4 * sides * dist_max] * n_quantiles
    last = [flips[-keep:].mean() + 2 * n_tokens * sides, moved + 2 * n_tokens * sides * dist_max]
    freq = (h > 0).mean(axis=0)
    regions = (near.sum(axis=0) / n_tokens) @ np.abs(projection) + (n_units + 1) * sides * (freq @ np.abs(projection))
    return np.concatenate([quantiles, last, regions])


def assert_extended_match(got, want, hs, norms, projections, n_quantiles, last_k, other_h=None, float32_sides=1):
    """Extended statistics [L, F] of one prompt: ``got`` against ``want``, whose path's pre-activations are
    ``hs`` (per layer [T, D]); ``other_h`` those of got's path when they differ."""
    for layer, (h, norm, projection) in enumerate(zip(hs, norms, projections)):
        diff = 0.0 if other_h is None else float(np.abs(other_h[layer] - h).max())
        tolerance = extended_tolerance(h, norm, diff, projection, n_quantiles, last_k, float32_sides)
        off = np.abs(np.asarray(got[layer], dtype=np.float64) - np.asarray(want[layer], dtype=np.float64))
        assert (off <= tolerance).all(), (f"layer {layer}: extended statistics off by {off.max():.3g} (column "
                                          f"{int((off - tolerance).argmax())}), beyond the rounding tolerance "
                                          f"(pre-activations differ by {diff:.3g})")


def batch_pairs(stock, input_ids, attention_mask):
    """Per row of a padded batch, what comparing its batched features with the prompt run alone needs:
    (token_ids, inside, batch_h). ``inside`` is naive_features' internals with ``h`` the prompt's own
    pre-activations alone under the stock model's attention (our one-at-a-time path's, bit for bit);
    ``batch_h`` per layer the same tokens' pre-activations in the batch. Their largest difference is what
    rounding made of batching (other matmul shapes and kernels, the padding mask), the bound
    :func:`assert_features_match` counts from, with ``float32_sides=2``."""
    from naive_reference import gate_preactivations, naive_features
    batched = gate_preactivations(stock, input_ids, attention_mask=attention_mask)[0]
    pairs = []
    for row, mask in enumerate(attention_mask.bool()):
        token_ids = input_ids[row][mask].tolist()
        inside = naive_features(stock, token_ids, internals=True)[2]
        inside["h"] = gate_preactivations(stock, token_ids)[0]
        pairs.append((token_ids, inside, [h[row][mask.numpy()] for h in batched]))
    return pairs
