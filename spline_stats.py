"""The paper's per-layer statistics, as pure tensor functions (one implementation for every model).

Both functions run on whatever device their inputs are on and never move data to the host, so a
forward pass that calls them in every layer keeps the GPU busy without synchronising.
"""
import torch

from feature_io import FEATURE_GROUPS, FEATURE_STATS, LAST_TOKENS, QUANTILES, REGION_DIMS, REGION_SEED

ID_THRESHOLD = 0.1  # a key counts for the ID when its weight exceeds 0.1 x the head's largest weight


def positive_indicator(h: torch.Tensor) -> torch.Tensor | None:
    """1.0 where h > 0 else 0.0 as float32 [B, T, D], for a float32 ``h``; None for other dtypes.

    One fused kernel (``torch.gt`` writing float32): on a CPU it is about 4x faster than ``(h > 0).float()``
    and 2x faster than the boolean ``h > 0`` alone, and sums of it are exact counts (integers below 2^24).
    Half-precision ``h`` keeps the boolean path (callers get None): a float32 copy would be twice h's size."""
    if h.dtype != torch.float32:
        return None
    return torch.gt(h, 0, out=torch.empty(h.shape, dtype=torch.float32, device=h.device))


def token_series(h: torch.Tensor, inv_row_norm: torch.Tensor, positive: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: the share of units on the positive side of their hyperplane (frac, [B, T] float32)
    and the distance |h_d| / ||w_d|| to the closest hyperplane (dist, [B, T] float32).

    ``positive``: :func:`positive_indicator` of h when the caller has it (shared with the region counts)."""
    # One [B, T, D] temporary each (the scaled copy is made absolute in place, the count sums the indicator
    # or booleans as int32): these passes cost about as much as the gate's matmul, so every full-size copy
    # avoided shows in the throughput. Both counts are exact, so both paths give the same frac.
    if positive is None:
        positive = positive_indicator(h)
    if positive is not None:
        frac = positive.sum(dim=-1) / h.shape[-1]
    else:
        frac = (h > 0).sum(dim=-1, dtype=torch.int32).float() / h.shape[-1]
    dist = (h * inv_row_norm.to(h.dtype)).abs_().amin(dim=-1).float()
    return frac, dist


def partition_statistics(h: torch.Tensor, inv_row_norm: torch.Tensor, mask: torch.Tensor,
                         series: tuple | None = None) -> torch.Tensor:
    """The 7 spline statistics of one layer for a batch of prompts.

    h             [B, T, D] pre-activations of the MLP's first (gate) map, ``x @ W.T (+ b)``
    inv_row_norm  [D]       1 / ||w_d||_2 for each row w_d of that map's weight
    mask          [B, T]    True on real tokens, False on padding
    returns       [B, 7]    float32, in FEATURE_STATS order

    series        (frac, dist) from :func:`token_series` when the caller already has them

    A prompt with a single real token has no spread: its std entries are 0, not NaN (the unbiased
    estimator divides by max(n - 1, 1)).
    """
    frac, dist = series if series is not None else token_series(h, inv_row_norm)
    # Both per-token series go through the masked moments together ([B, T, 2]): on a GPU a small
    # model's extraction is bound by kernel launches, and this halves them for the moments.
    x = torch.stack([frac, dist], dim=-1)
    mask = mask.to(h.device)[..., None]
    n = mask.sum(dim=1, dtype=torch.float32)
    # torch.where, not multiplication: padded rows may hold NaN/inf (fully masked attention).
    mean = torch.where(mask, x, 0.0).sum(dim=1) / n
    std = (torch.where(mask, (x - mean[:, None]) ** 2, 0.0).sum(dim=1) / (n - 1).clamp(min=1)).sqrt_()
    lo = torch.where(mask, x, torch.inf).amin(dim=1)
    hi = torch.where(mask, x, -torch.inf).amax(dim=1)
    out = torch.stack([mean[:, 0], lo[:, 0], hi[:, 0], std[:, 0], lo[:, 1], mean[:, 1], std[:, 1]], dim=1)
    assert out.shape[1] == len(FEATURE_STATS)
    return out


def last_token_attention_id(query: torch.Tensor, key: torch.Tensor, scaling: float, allowed: torch.Tensor,
                            last_pos: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Intrinsic dimension of the attention of each prompt's last real token, summed over heads.

    query    [B, H, Tq, d]   post-rotary queries
    key      [B, Hkv, K, d]  post-rotary keys (grouped-query heads are repeated here)
    allowed  [B, K] bool     keys the last token may attend to (causal, padding and window applied)
    last_pos [B] long        index of the last real token among the queries
    returns  [B] int32       sum over heads of #{j : a_j > 0.1 * max_j a_j}

    Only the one query row per prompt is scored, so no [T, T] attention map is ever built.
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query[torch.arange(batch, device=query.device), :, last_pos]  # [B, H, d]
    # Grouped-query attention: query head h reads key head h // (H / Hkv). Grouping the queries
    # instead of repeating the keys avoids a [B, H, K, d] copy.
    q = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("bkgd,bknd->bkgn", q.float(), key.float()).reshape(batch, heads, -1) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None, :], -torch.inf)
    weights = scores.softmax(dim=-1)
    peak = weights.amax(dim=-1, keepdim=True)
    return (weights > ID_THRESHOLD * peak).sum(dim=(1, 2), dtype=torch.int32)


def unit_activation_frequency(h: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
    """How often each unit is on the positive side of its hyperplane, over each prompt's real tokens.

    h     [B, T, D] gate pre-activations;  mask [B, T] True on real tokens
    positive  :func:`positive_indicator` of h when the caller has it
    returns [B, D] float32 in [0, 1]: the share of the prompt's tokens with h[t, d] > 0 (the per-unit
    view of the region the prompt's tokens fall in; its mean over d is the 'frac' statistic's mean).
    """
    mask = mask.to(h.device)
    n = mask.sum(dim=1, dtype=torch.float32)[:, None]
    if positive is None:
        positive = positive_indicator(h)
    if positive is not None:  # the masked count as one batched product: sums of 0/1, exact
        return torch.bmm(mask.to(torch.float32)[:, None, :], positive).squeeze(1) / n
    return ((h > 0) & mask[..., None]).sum(dim=1, dtype=torch.int32).float() / n


# -- richer statistics of the same partition (names and sizes in feature_io.FEATURE_GROUPS) -------------
def token_quantiles(x: torch.Tensor, mask: torch.Tensor, quantiles=QUANTILES) -> torch.Tensor:
    """Quantiles of per-token series over each prompt's real tokens, numpy's 'linear' rule.

    x [B, T, S] float32, mask [B, T] -> [B, S * len(quantiles)], series-major (s0 q0, s0 q1, ...).
    """
    mask = mask.to(x.device)
    n = mask.sum(dim=1)                                               # [B]
    ordered = torch.where(mask[..., None], x, torch.inf).sort(dim=1).values  # real tokens first, ascending
    q = torch.tensor(quantiles, dtype=torch.float64, device=x.device)
    pos = (n[:, None] - 1).double() * q[None, :]                      # [B, Q] fractional rank
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, n[:, None] - 1)
    weight = (pos - lo).float()[..., None]                            # [B, Q, 1]
    take = lambda idx: ordered.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731 [B, Q, S]
    low, high = take(lo), take(hi)
    out = low + (high - low) * weight                                 # [B, Q, S]
    return out.transpose(1, 2).reshape(len(x), -1)


def last_tokens_mean(x: torch.Tensor, mask: torch.Tensor, k: int = LAST_TOKENS) -> torch.Tensor:
    """Mean of per-token series over each prompt's last ``k`` real tokens (all of them when fewer).

    x [B, T, S], mask [B, T] -> [B, S]; padding on either side, as the rank counts real tokens only."""
    mask = mask.to(x.device)
    rank = mask.long().cumsum(dim=1)                                  # 1..n on real tokens
    n = rank[:, -1:]
    keep = mask & (rank > n - k)
    return torch.where(keep[..., None], x, 0.0).sum(dim=1) / keep.sum(dim=1, keepdim=True).float()


def region_projection(d_units: int, layer: int, dims: int = REGION_DIMS, seed: int = REGION_SEED) -> torch.Tensor:
    """The fixed random projection [D, dims] (float32, CPU) of a layer's per-unit activation frequencies.

    Gaussian entries scaled by 1/sqrt(D), drawn from a generator seeded with (seed, layer): no data is
    needed to fit it, and every run and file agrees on it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + layer)
    return torch.randn(d_units, dims, generator=generator, dtype=torch.float32) / d_units ** 0.5


SERIES_GROUPS = ("quantiles", "last")  # the groups read from token_series; "regions" reads h itself


def extended_statistics(h: torch.Tensor, series: tuple | None, mask: torch.Tensor, groups, projection=None,
                        positive: torch.Tensor | None = None) -> torch.Tensor:
    """The extended statistics of one layer for a batch: the ``groups`` of FEATURE_GROUPS, in its order.

    h [B, T, D] gate pre-activations; series (frac, dist) from :func:`token_series` (may be None when no
    group of SERIES_GROUPS is asked for); mask [B, T]; projection [D, REGION_DIMS] (see
    :func:`region_projection`) when "regions" is asked for; positive: :func:`positive_indicator` of h when
    the caller has it. returns [B, F] float32.
    """
    x = torch.stack(series, dim=-1) if series is not None else None  # [B, T, 2]
    parts = []
    for group in FEATURE_GROUPS:
        if group not in groups:
            continue
        if group == "quantiles":
            parts.append(token_quantiles(x, mask))
        elif group == "last":
            parts.append(last_tokens_mean(x, mask))
        elif group == "regions":
            parts.append(unit_activation_frequency(h, mask, positive) @ projection.to(h.device))
    return torch.cat(parts, dim=1)
