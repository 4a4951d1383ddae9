"""SelfIE (Chen, Vondrick, Mao, ICML 2024): let a model describe one of its own hidden states.

The hidden state ``e`` of token t at layer l of some prompt is written over the placeholder tokens of an
interpretation prompt ("... _ _ _ _ _ ... Sure, I will repeat the message:") at the input of an early
decoder layer k, and the model generates what it "sees". The original ships edited copies of
transformers' Llama and generation code (greedy only); here the insertion is a :mod:`hooks` edit, so it
works on any model hooks.py finds the layers of, with model(...) and model.generate(...) and any decoding.

    insert_info = [{1: ([5, 6, 7, 8, 9], e.expand(1, 5, -1)), "overlay_strength": 1.0,
                    "replacing_mode": "normalized"}]          # one dict per batch sample, or None for a sample
    out = generate_interpret(model, ids, mask, insert_info, max_new_tokens=8)    # any generate kwargs
    logits = forward_interpret(model, ids, mask, insert_info).logits
    weights = relevancy(model, ids, mask, insert_info, out[:, ids.shape[1]:])     # [B, new] p(with) - p(without)

``insert_info`` is the seed's format: per sample, integer keys (the layer k, as ``hidden_states[k]``: the
input of decoder layer k, 0 = the embeddings' output as the first layer sees it) map to
``(insert_locations, embedding_to_insert)``, a list of n token positions and a tensor ``[1, n, d]`` whose row
j goes to position j; ``overlay_strength`` (float, default 1) and ``replacing_mode``:
``"normalized"``: new = s * inserted + (1 - s) * old (s in [0, 1]); ``"addition"``: new = s * inserted + old.

Insert locations index the sample's *real* tokens (0 = its first non-padding token), so the same
insert_info serves one prompt alone, a left-padded batch (what generate needs) or a right-padded one.
The insertion happens on the forward passes that cover the whole prompt: the prefill of generate (the KV
cache then carries it into every new token) or every step when generate runs with ``use_cache=False``,
never on the one-token decoding steps. A ``past_key_values`` given to generate may hold a shared prefix of
the prompt (see :func:`prefix_cache`) as long as the insert locations come after it. generate expands the batch to B * num_beams (beam search) or
B * num_return_sequences (sampling) before the prefill; each sample's insertion goes to all of its rows.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from hooks import Trace, num_layers

MODES = ("normalized", "addition")


def _hidden_size(model) -> int:
    return model.get_input_embeddings().weight.shape[1]


def real_positions(attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """For each row, the column of each real (non-padding) token, in order."""
    return [row.nonzero().flatten() for row in attention_mask]


def check_insert_info(model, insert_info, attention_mask: torch.Tensor) -> list[dict]:
    """Validate ``insert_info`` against the batch; returns it normalised: per sample {layer: (columns, emb)},
    strength, mode, with locations turned into padded-batch columns. Raises ValueError naming the problem."""
    batch = attention_mask.shape[0]
    if not isinstance(insert_info, (list, tuple)) or len(insert_info) != batch:
        raise ValueError(f"insert_info must be a list with one dict (or None) per batch sample: the batch has {batch} "
                         f"samples, insert_info has {len(insert_info) if isinstance(insert_info, (list, tuple)) else type(insert_info).__name__}.")
    n_layers, width = num_layers(model), _hidden_size(model)
    columns_of = real_positions(attention_mask)
    plans = []
    for b, info in enumerate(insert_info):
        if info is None:
            plans.append(None)
            continue
        if not isinstance(info, dict):
            raise ValueError(f"insert_info[{b}] must be a dict (layer -> (locations, embedding), overlay_strength, "
                             f"replacing_mode) or None, not {type(info).__name__}.")
        unknown = [k for k in info if not isinstance(k, int) and k not in ("overlay_strength", "replacing_mode")]
        if unknown:
            raise ValueError(f"insert_info[{b}] has unknown keys {unknown}: use integer layer keys, "
                             "'overlay_strength' and 'replacing_mode'.")
        mode = info.get("replacing_mode", "normalized")
        if mode not in MODES:
            raise ValueError(f"insert_info[{b}]: unknown replacing_mode {mode!r}; use 'normalized' or 'addition'.")
        strength = float(info.get("overlay_strength", 1.0))
        if mode == "normalized" and not 0.0 <= strength <= 1.0:
            raise ValueError(f"insert_info[{b}]: overlay_strength {strength} is outside [0, 1], which 'normalized' "
                             "mode needs; use 'addition' for other strengths.")
        n_real = len(columns_of[b])
        layers = {}
        for layer, value in info.items():
            if not isinstance(layer, int):
                continue
            if isinstance(layer, bool) or not 0 <= layer < n_layers:
                raise ValueError(f"insert_info[{b}]: layer {layer} is out of range: insertions go to the input of a "
                                 f"decoder layer, 0..{n_layers - 1} for this model ({n_layers} layers).")
            try:
                locations, embedding = value
            except (TypeError, ValueError):
                raise ValueError(f"insert_info[{b}][{layer}] must be a tuple (insert_locations, embedding_to_insert)."
                                 ) from None
            locations = [int(i) for i in locations]
            if not locations:
                raise ValueError(f"insert_info[{b}][{layer}]: insert_locations is empty.")
            bad = [i for i in locations if not 0 <= i < n_real]
            if bad:
                raise ValueError(f"insert_info[{b}][{layer}]: insert locations {bad} are outside the prompt, which has "
                                 f"{n_real} real tokens (locations count real tokens from 0, padding excluded).")
            if len(set(locations)) != len(locations):
                raise ValueError(f"insert_info[{b}][{layer}]: insert_locations {locations} repeat a position.")
            if not torch.is_tensor(embedding) or embedding.dim() != 3 or embedding.shape[0] != 1:
                shape = tuple(embedding.shape) if torch.is_tensor(embedding) else type(embedding).__name__
                raise ValueError(f"insert_info[{b}][{layer}]: embedding_to_insert must be a tensor [1, n, d], got {shape}.")
            if embedding.shape[1] != len(locations):
                raise ValueError(f"insert_info[{b}][{layer}]: embedding_to_insert has {embedding.shape[1]} rows for "
                                 f"{len(locations)} insert locations; row j goes to location j, so give one per location.")
            if embedding.shape[2] != width:
                raise ValueError(f"insert_info[{b}][{layer}]: embedding_to_insert has width {embedding.shape[2]}, the "
                                 f"model's hidden size is {width}.")
            layers[layer] = (columns_of[b][locations], embedding[0])
        plans.append({"layers": layers, "strength": strength, "mode": mode})
    return plans


@contextmanager
def inserting(model, insert_info, attention_mask: torch.Tensor):
    """While open, the model's forward passes over the prompt (``attention_mask``'s columns) get the insertions.

    A pass covers the prompt when it is the first one, or when it is at least as long as the prompt (and
    longer than one token): the prefill, or every step of a generate without KV cache. Rows beyond the
    batch size B are generate's expansion (B * num_beams, B * num_return_sequences, repeat-interleaved).
    """
    if insert_info is None or all(info is None for info in insert_info):
        yield
        return
    plans = check_insert_info(model, insert_info, attention_mask)
    batch, prompt_length = attention_mask.shape
    calls = {}

    def edit_for(layer):
        def edit(hidden, name):
            calls[layer] = calls.get(layer, 0) + 1
            if calls[layer] > 1 and not hidden.shape[1] >= max(prompt_length, 2):
                return None  # a decoding step: the KV cache already holds the edited prompt
            # A first pass shorter than the prompt continues a cache given by the caller (a shared prefix):
            # it holds the prompt's last columns.
            offset = prompt_length - hidden.shape[1] if hidden.shape[1] < prompt_length else 0
            if hidden.shape[0] % batch:
                raise RuntimeError(f"the forward pass has {hidden.shape[0]} rows, not a multiple of the {batch} "
                                   "samples insert_info describes.")
            expand = hidden.shape[0] // batch
            hidden = hidden.clone()
            for b, plan in enumerate(plans):
                if plan is None or layer not in plan["layers"]:
                    continue
                columns, embedding = plan["layers"][layer]
                if offset and bool((columns < offset).any()):
                    raise ValueError(f"insert locations of sample {b} fall in the {offset} prompt tokens that the "
                                     "past_key_values given to generate already hold: cache a shorter prefix.")
                columns = columns - offset
                rows = slice(b * expand, (b + 1) * expand)
                new = embedding.to(hidden.device, hidden.dtype)
                old = hidden[rows, columns.to(hidden.device)]
                s = plan["strength"]
                mixed = s * new + (1 - s) * old if plan["mode"] == "normalized" else s * new + old
                hidden[rows, columns.to(hidden.device)] = mixed
            return hidden
        return edit

    layers = sorted({layer for plan in plans if plan for layer in plan["layers"]})
    traces = []
    try:
        for layer in layers:
            traces.append(Trace(model, layer, retain_output=False, edit_input=edit_for(layer)))
        yield
    finally:
        for trace in traces:
            trace.close()


def forward_interpret(model, input_ids, attention_mask, insert_info, **forward_kwargs):
    """``model(input_ids, attention_mask=..., **forward_kwargs)`` with the insertions; the stock call when None."""
    with inserting(model, insert_info, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs)


def generate_interpret(model, input_ids, attention_mask, insert_info, **generate_kwargs):
    """``model.generate(...)`` with the insertions in the prompt's pass; the stock call when None.

    Any decoding works (greedy, sampling, beam search, num_return_sequences). Batches must be left-padded,
    as generate itself needs."""
    if insert_info is not None and attention_mask.shape[1] > 1 and not bool(attention_mask[:, -1].all()):
        raise ValueError("generate_interpret needs a left-padded batch (the new tokens follow the last column): "
                         "set tokenizer.padding_side = 'left'.")
    with inserting(model, insert_info, attention_mask):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so that a padded row sees what it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def token_probabilities(model, input_ids, attention_mask, insert_info, new_ids, new_mask=None) -> torch.Tensor:
    """[B, N] probability of each of ``new_ids`` given the prompt and the tokens before it (teacher forced)."""
    if new_mask is None:
        new_mask = torch.ones_like(new_ids)
    full = torch.cat([input_ids, new_ids.to(input_ids.device)], 1)
    mask = torch.cat([attention_mask, new_mask.to(attention_mask.device, attention_mask.dtype)], 1)
    with inserting(model, insert_info, attention_mask):
        logits = model(input_ids=full, attention_mask=mask, position_ids=padded_position_ids(mask)).logits
    prompt_length = input_ids.shape[1]
    logp = logits[:, prompt_length - 1:-1].float().log_softmax(-1)
    return logp.gather(-1, new_ids.to(logp.device).unsqueeze(-1)).squeeze(-1).exp() * new_mask.to(logp.device)


def relevancy(model, input_ids, attention_mask, insert_info, new_ids, new_mask=None) -> torch.Tensor:
    """[B, N] relevancy of each interpretation token: its probability with the insertion minus without
    (teacher forcing the interpretation both times); 0 where ``new_mask`` is 0 (padding after EOS)."""
    with_insert = token_probabilities(model, input_ids, attention_mask, insert_info, new_ids, new_mask)
    without = token_probabilities(model, input_ids, attention_mask, None, new_ids, new_mask)
    return with_insert - without


@torch.no_grad()
def prefix_cache(model, prefix_ids: torch.Tensor, batch_size: int):
    """The KV cache of a prefix ``[1, P]`` that every row of a batch shares (an interpretation prompt's text
    before its placeholders), repeated for ``batch_size`` rows: pass it to :func:`generate_interpret` as
    ``past_key_values`` with the full prompts, and generate computes only what follows the prefix. generate
    fills the cache it is given, so make one per call."""
    out = model(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(batch_size)
    return cache
