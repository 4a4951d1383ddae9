"""A deliberately naive, independent float64 reference for the features, one prompt at a time.

It shares no code with the project: it hooks the stock model's first MLP map to capture h, asks
the stock eager attention for its full attention maps, and computes every statistic in float64 numpy,
token by token, straight from the definitions in PAPER.md (no masks, no batching, no torch reductions).
"""
import numpy as np
import torch


def gate_modules(model):
    found = []
    for name, module in model.named_modules():
        if name.endswith(("mlp.gate_proj", "mlp.c_fc", "intermediate.dense")):
            found.append(module)
    return found


def gate_preactivations(model, token_ids, attn_implementation: str | None = None, attention_mask=None):
    """Each layer's gate pre-activations h [T, D] (computed in the model's dtype, returned as float64) under
    ``attn_implementation`` (None: the model's own), and the forward's output (eager: with attention maps).
    With ``attention_mask``, ``token_ids`` is a padded batch [B, W] and h is [B, W, D]; positions count real
    tokens only, as the recorder passes them, so each row is the batched path's."""
    gates = gate_modules(model)
    captured = {}
    handles = [g.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o.double().cpu().numpy()))
               for k, g in enumerate(gates)]
    impl = model.config._attn_implementation
    model.config._attn_implementation = attn_implementation or impl
    if attention_mask is None:
        inputs = {"input_ids": torch.tensor([token_ids], device=model.device)}
    else:
        mask = attention_mask.to(model.device).long()
        inputs = {"input_ids": token_ids.to(model.device), "attention_mask": mask,
                  "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=attn_implementation == "eager")
    finally:
        model.config._attn_implementation = impl
        for h in handles:
            h.remove()
    return [captured[k] if attention_mask is not None else captured[k][0] for k in range(len(gates))], out


def naive_features(model, token_ids: list[int], internals: bool = False):
    """[L, 7] spline statistics and [L] IDs of one unpadded prompt, in float64, from the stock eager attention.

    internals=True adds what the rounding bounds of a comparison need (tests/rounding.py): per layer the
    pre-activations ``h`` [T, D], the row norms ``norms`` [D] and the last token's attention rows ``attn``
    [heads, keys], all float64, and ``head_dim``."""
    gates = gate_modules(model)
    hs, out = gate_preactivations(model, token_ids, "eager")
    captured = dict(enumerate(hs))
    features, ids = [], []
    inside = {"h": hs, "norms": [], "attn": [], "head_dim": _head_dim(model.config)}
    for k, gate in enumerate(gates):
        w = gate.weight.detach().double().numpy()
        if type(gate).__name__ == "Conv1D":
            w = w.T
        # numpy in float64, one token at a time: the reference's cost was its Python loop over every weight
        norms = np.sqrt((w * w).sum(axis=1))
        h = captured[k]
        frac = [float((token > 0).mean()) for token in h]
        dist = [float((np.abs(token) / norms).min()) for token in h]

        def std(xs):
            if len(xs) < 2:
                return 0.0
            m = sum(xs) / len(xs)
            return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
        features.append([np.mean(frac), min(frac), max(frac), std(frac), min(dist), np.mean(dist), std(dist)])
        attn = out.attentions[k][0, :, -1, :].double().numpy()  # [heads, keys], last token's row
        ids.append(sum(int((row > 0.1 * row.max()).sum()) for row in attn))
        inside["norms"].append(norms)
        inside["attn"].append(attn)
    if internals:
        return np.array(features), np.array(ids), inside
    return np.array(features), np.array(ids)


def _head_dim(config):
    config = getattr(config, "text_config", config)
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def naive_extended(model, token_ids: list[int], quantiles, last_k: int, projections):
    """[L, F] extended statistics of one unpadded prompt in float64: quantiles of frac then of dist
    (numpy's default 'linear' rule), the mean of frac and of dist over the last ``last_k`` tokens, and the
    per-unit activation frequencies times ``projections[layer]`` (the fixed [D, k] matrices, float64)."""
    gates = gate_modules(model)
    captured = {}
    handles = [g.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o[0].double().numpy()))
               for k, g in enumerate(gates)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([token_ids]))
    finally:
        for h in handles:
            h.remove()
    rows = []
    for k, gate in enumerate(gates):
        w = gate.weight.detach().double().numpy()
        if type(gate).__name__ == "Conv1D":
            w = w.T
        norms = np.sqrt((w * w).sum(axis=1))
        h = captured[k]
        frac = np.array([(token > 0).mean() for token in h])
        dist = np.array([(np.abs(token) / norms).min() for token in h])
        row = [float(np.quantile(frac, q)) for q in quantiles] + [float(np.quantile(dist, q)) for q in quantiles]
        row += [float(frac[-last_k:].mean()), float(dist[-last_k:].mean())]
        freq = (h > 0).mean(axis=0)
        row += list(freq @ np.asarray(projections[k], dtype=np.float64))
        rows.append(row)
    return np.array(rows)
