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
    weights = relevancy(model, ids, mask, insert_info, out[:, ids.shape[1]:])     # [B, new] |p(with) - p(without)|

    # one line: a DataFrame with the seed's CSV columns, one row per (layer, token) of the prompt
    frame = interpret(model, tokenizer, "The Eiffel Tower is in Paris", [(5, -1), (12, -2)],
                      interpretation_prompt="[INST] {} [/INST] The place mentioned in the message is:")

``insert_info`` is the seed's format: per sample, integer keys (the layer k, as ``hidden_states[k]``: the
input of decoder layer k, 0 = the embeddings' output as the first layer sees it) map to
``(insert_locations, embedding_to_insert)``, a list of n token positions and a tensor ``[1, n, d]`` whose row
j goes to position j; ``overlay_strength`` (float, default 1) and ``replacing_mode``:
``"normalized"``: new = s * inserted + (1 - s) * old (s in [0, 1]); ``"addition"``: new = s * inserted + old
(any s >= 0). The keys the original's ``interpret()`` also writes (``retrieve_layer``, ``retrieve_token``:
where the state came from) are accepted and ignored.

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
from dataclasses import dataclass

import torch

from cli import UserError
from hooks import Trace, num_layers

MODES = ("normalized", "addition")
# Keys the original's interpret() puts in each insert_info dict besides the layers and the overlay: kept
# there for the caller's bookkeeping, they change nothing here.
BOOKKEEPING_KEYS = ("retrieve_layer", "retrieve_token")


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
        unknown = [k for k in info if not isinstance(k, int)
                   and k not in ("overlay_strength", "replacing_mode", *BOOKKEEPING_KEYS)]
        if unknown:
            raise ValueError(f"insert_info[{b}] has unknown keys {unknown}: use integer layer keys, "
                             "'overlay_strength' and 'replacing_mode' (and the original's 'retrieve_layer', "
                             "'retrieve_token').")
        mode = info.get("replacing_mode", "normalized")
        if mode not in MODES:
            raise ValueError(f"insert_info[{b}]: unknown replacing_mode {mode!r}; use 'normalized' or 'addition'.")
        strength = float(info.get("overlay_strength", 1.0))
        if mode == "normalized" and not 0.0 <= strength <= 1.0:
            raise ValueError(f"insert_info[{b}]: overlay_strength {strength} is outside [0, 1], which 'normalized' "
                             "mode needs; use 'addition' for other strengths.")
        if not strength >= 0.0:
            raise ValueError(f"insert_info[{b}]: overlay_strength {strength} is negative; use a strength >= 0.")
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


RELEVANCY = ("absolute", "signed")


def relevancy(model, input_ids, attention_mask, insert_info, new_ids, new_mask=None, kind: str = "absolute"
              ) -> torch.Tensor:
    """[B, N] relevancy of each interpretation token: |p(token | insertion) - p(token | none)|, teacher forcing
    the interpretation both times, as the original scores it; ``kind="signed"`` keeps the sign (a departure:
    negative where the insertion made the token less likely). 0 where ``new_mask`` is 0 (padding after EOS)."""
    if kind not in RELEVANCY:
        raise ValueError(f"unknown relevancy kind {kind!r}: use 'absolute' (the original's) or 'signed'.")
    with_insert = token_probabilities(model, input_ids, attention_mask, insert_info, new_ids, new_mask)
    without = token_probabilities(model, input_ids, attention_mask, None, new_ids, new_mask)
    diff = with_insert - without
    return diff.abs() if kind == "absolute" else diff


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


# -- interpretation prompts ------------------------------------------------------------------------------
# The answer each named interpretation prompt begins (the original's three); the placeholders are the user turn.
INTERPRETATION_PROMPTS = {
    "summarize": "Sure, I will summarize the message:",
    "repeat": "Sure, I will repeat the message:",
    "object": "The object you said is:",
}
MARKER = "{}"          # where a custom interpretation prompt's placeholders go
PLACEHOLDER = "_"      # the original writes "_ " per placeholder: "_ _ _ _ _"
N_PLACEHOLDERS = 5
INSERT_LAYER = 1       # k: the original's default (input of decoder layer 1)


@dataclass
class InterpretationPrompt:
    name: str
    ids: list[int]
    positions: list[int]        # the placeholders' tokens (indices into ids), where the state is written
    text: str                   # the decoded prompt, for the CSV

    @property
    def prefix_length(self) -> int:
        return self.positions[0]


def _placeholder_tokens(tokenizer, text: str, spans: list[tuple[int, int]], add_special_tokens: bool):
    """Token ids of ``text`` and the indices of the tokens that write the placeholder characters in ``spans``.

    The text is tokenized once, as the model's tokenizer writes it (SmolLM2 writes "_ _ _" as "_", " _", " _");
    a token that mixes a placeholder with other text would make the insertion overwrite that text too: refused."""
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    chars = {c for a, b in spans for c in range(a, b) if not text[c].isspace()}
    positions = []
    for i, (a, b) in enumerate(offsets):
        covered = {c for c in range(a, b) if not text[c].isspace()}
        if covered & chars:
            if not covered <= chars:
                raise UserError(f"the tokenizer writes the placeholder {text[a:b]!r} together with the text around it "
                                f"(token {i}): put spaces around the marker {MARKER}, or choose another placeholder")
            positions.append(i)
    found = len({c for i in positions for c in range(*offsets[i])} & chars)
    if found != len(chars):
        raise UserError("could not find every placeholder among the interpretation prompt's tokens: use a tokenizer "
                        "with offsets (a fast tokenizer)")
    return ids, positions


def build_interpretation_prompt(tokenizer, prompt: str = "summarize", n_placeholders: int = N_PLACEHOLDERS,
                                chat_template: bool = True, placeholder: str = PLACEHOLDER) -> InterpretationPrompt:
    """The interpretation prompt's token ids and the positions of its placeholders.

    ``prompt`` is a name of :data:`INTERPRETATION_PROMPTS` or any text with the marker ``{}`` where the
    placeholders go (e.g. the original's notebooks' "[INST] {} [/INST] The materials mentioned in the message
    are:"); custom text is used as written, with the special tokens the tokenizer adds in front (BOS).
    A named prompt is the model's chat template with the placeholders as the user's message and the answer
    begun with the named text; without a template (``chat_template=False`` or none in the tokenizer) it is the
    original's ``[INST] _ _ _ _ _ [/INST] answer`` with the tokenizer's BOS, if any. The placeholders are the
    original's "_ _ _ _ _" (``n_placeholders`` of them) as the model's own tokenizer writes it in context, and
    the positions are the tokens that write them, so they are exact with or without BOS and template."""
    if n_placeholders < 1:
        raise UserError("the interpretation prompt needs at least one placeholder: pass --placeholders 1 or more")
    if not placeholder.strip() or placeholder != placeholder.strip():
        raise UserError(f"the placeholder {placeholder!r} must be visible text without spaces, like the original's '_'")
    slots = " ".join([placeholder] * n_placeholders)
    if prompt in INTERPRETATION_PROMPTS:
        name, answer = prompt, INTERPRETATION_PROMPTS[prompt]
        if chat_template and getattr(tokenizer, "chat_template", None):
            sentinel = "\x00PLACEHOLDERS\x00"
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                                     add_generation_prompt=True)
            template, special = rendered + answer, False      # the template writes its own BOS
        else:
            sentinel = MARKER
            template, special = f"[INST] {MARKER} [/INST] {answer}", True
    elif isinstance(prompt, str) and MARKER in prompt:
        name, sentinel, template, special = "custom", MARKER, prompt, True
    else:
        raise UserError(f"the interpretation prompt {prompt!r} is neither a named one ({', '.join(INTERPRETATION_PROMPTS)}) "
                        f"nor text with the placeholder marker {MARKER}: write e.g. \"[INST] {MARKER} [/INST] Sure, I "
                        "will summarize the message:\"")
    pieces = template.split(sentinel)
    text, spans = pieces[0], []
    for piece in pieces[1:]:
        spans.append((len(text), len(text) + len(slots)))
        text += slots + piece
    ids, positions = _placeholder_tokens(tokenizer, text, spans, special)
    return InterpretationPrompt(name, ids, positions, tokenizer.decode(ids))


# -- the prompt to interpret -----------------------------------------------------------------------------
@dataclass
class EncodedPrompt:
    ids: list[int]
    user: range                 # the tokens that write the user's own text (not the template's)


def encode_prompt(tokenizer, prompt: str, raw: bool = True, chat_template: bool = True,
                  max_tokens: int | None = None) -> EncodedPrompt:
    """Token ids of a prompt: the text as is with the tokenizer's special tokens (``raw``), or the chat
    template with the prompt as the user's message (the seed's ``[INST] PROMPT [/INST]`` without a template);
    ``user`` is the span of tokens that write the prompt's own characters."""
    if raw:
        text, special, start = prompt, True, 0
    elif chat_template and getattr(tokenizer, "chat_template", None):
        sentinel = "\x00PROMPT\x00"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                                 add_generation_prompt=True)
        start = rendered.index(sentinel)
        text, special = rendered.replace(sentinel, prompt), False
    else:
        text, special, start = f"[INST] {prompt} [/INST]", True, len("[INST] ")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_tokens] if max_tokens else enc["input_ids"]
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"][:len(ids)]) if b > a and a < start + len(prompt)
              and b > start]
    return EncodedPrompt(ids, range(inside[0], inside[-1] + 1) if inside else range(0))


def stop_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def _cut(row: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stops:
            return row[:i]
    return row


def _device(model):
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def hidden_states_at(model, ids: list[int], layers: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(layers), len(tokens), d]: ``hidden_states[l][token]`` of one prompt (negative tokens count from the end)."""
    out = model(input_ids=torch.tensor([ids], device=_device(model)), output_hidden_states=True)
    return torch.stack([out.hidden_states[l][0, tokens] for l in layers]).float().cpu()


@torch.no_grad()
def answer(model, tokenizer, ids: list[int], max_new_tokens: int = 30) -> str:
    """The model's greedy answer to a prompt (the CSV's prompt_output)."""
    x = torch.tensor([ids], device=_device(model))
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(_cut(out[0, len(ids):].tolist(), stop_ids(model, tokenizer)), skip_special_tokens=True)


@torch.no_grad()
def interpret_states(model, tokenizer, prompt: InterpretationPrompt, states: torch.Tensor | None, *,
                     n_rows: int | None = None, insert_layer: int = INSERT_LAYER, overlay_strength: float = 1.0,
                     replacing_mode: str = "normalized", max_new_tokens: int = 20, with_relevancy: bool = False,
                     relevancy_kind: str = "absolute") -> list[dict]:
    """One greedy generate call for a batch of states ``[N, d]`` (each written over every placeholder);
    ``states=None`` interprets the bare prompt (the placeholder's own state) ``n_rows`` times.

    Returns per state: ``ids`` (generated, cut at the end of turn), ``text``, and with ``with_relevancy``
    ``weights`` (relevancy per token, :func:`relevancy`) and ``probs`` (probability with the insertion)."""
    n = len(states) if states is not None else (n_rows or 1)
    x = torch.tensor([prompt.ids] * n, device=_device(model))
    mask = torch.ones_like(x)
    info = None
    if states is not None:
        k = len(prompt.positions)
        info = [{insert_layer: (prompt.positions, state.view(1, 1, -1).expand(1, k, -1)),
                 "overlay_strength": overlay_strength, "replacing_mode": replacing_mode} for state in states]
    # The text before the placeholders is the same in every row and untouched by the insertion: computed once.
    cache = prefix_cache(model, x[:1, :prompt.prefix_length], n) if prompt.prefix_length > 0 else None
    out = generate_interpret(model, x, mask, info, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, past_key_values=cache)
    new = out[:, x.shape[1]:]
    stops = stop_ids(model, tokenizer)
    rows = [_cut(r, stops) for r in new.tolist()]
    results = [{"ids": r, "text": tokenizer.decode(r, skip_special_tokens=True).strip()} for r in rows]
    if with_relevancy:
        new_mask = torch.zeros_like(new)
        for i, r in enumerate(rows):
            new_mask[i, :len(r)] = 1
        probs = token_probabilities(model, x, mask, info, new, new_mask)
        if info:
            diff = probs - token_probabilities(model, x, mask, None, new, new_mask)
            weights = diff.abs() if relevancy_kind == "absolute" else diff
        else:
            weights = torch.zeros_like(probs)
        for i, r in enumerate(rows):
            results[i]["probs"] = [round(float(p), 6) for p in probs[i, :len(r)]]
            results[i]["weights"] = [round(float(w), 6) for w in weights[i, :len(r)]]
    return results


# -- the one-line entry point ------------------------------------------------------------------------------
COLUMNS = ["name", "prompt", "prompt_output", "layer_idx", "token_idx", "token", "repeat_prompt", "repeat_prompt_name",
           "interpretation", "interpretation_text", "interpretation_weights", "interpretation_prob"]


def check_positions(pairs, n_layers: int, n_tokens: int) -> list[tuple[int, int]]:
    """(layer, token) pairs with negative tokens counted from the end; a clear error for one outside."""
    checked = []
    for pair in pairs:
        try:
            layer, token = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise UserError(f"{pair!r} is not a (layer, token) pair: pass e.g. [(5, -1), (12, 3)]") from None
        if not 0 <= layer <= n_layers:
            raise UserError(f"layer {layer} is out of range: the states are hidden_states 0..{n_layers} (0 = embeddings, "
                            f"{n_layers} = after the final norm)")
        if not -n_tokens <= token < n_tokens:
            raise UserError(f"token {token} is outside the prompt, which has {n_tokens} tokens: use 0..{n_tokens - 1} "
                            f"or -{n_tokens}..-1 (from the end)")
        checked.append((layer, token % n_tokens))
    if not checked:
        raise UserError("no (layer, token) pairs to interpret: pass e.g. [(5, -1)]")
    return checked


def interpret(model, tokenizer, prompt: str, pairs, interpretation_prompt: str = "summarize", *, raw: bool = True,
              chat_template: bool = True, n_placeholders: int = N_PLACEHOLDERS, insert_layer: int = INSERT_LAYER,
              overlay_strength: float = 1.0, replacing_mode: str = "normalized", max_new_tokens: int = 20,
              answer_tokens: int = 30, batch_size: int = 64, relevancy: str | None = "absolute", name: str = "prompt_0"):
    """Interpret the hidden states of ``prompt`` at each (layer, token) of ``pairs``; a DataFrame, one row each.

    Columns: the seed's CSV (``name``, ``prompt``, ``prompt_output``, ``layer_idx``, ``token_idx``,
    ``repeat_prompt``, ``repeat_prompt_name``, ``interpretation`` (token ids), ``interpretation_weights``
    (relevancy per token), ``interpretation_prob``) plus ``token`` (the interpreted token's text) and
    ``interpretation_text``. ``layer`` is a ``hidden_states`` index (0..L), ``token`` an index into the encoded
    prompt (negative: from the end; ``token_idx`` holds it counted from the start). ``raw`` (default, as the
    original's interpret()) tokenizes the prompt as given; ``raw=False`` wraps it in the chat template.
    ``interpretation_prompt``: a name of :data:`INTERPRETATION_PROMPTS` or text with ``{}`` where the
    placeholders go. ``relevancy``: "absolute" (the original's), "signed" or None (skip it, half the cost)."""
    import pandas as pd
    if relevancy not in (None, *RELEVANCY):
        raise UserError(f"relevancy={relevancy!r}: use 'absolute' (the original's), 'signed' or None")
    if replacing_mode not in MODES:
        raise UserError(f"replacing_mode={replacing_mode!r}: use 'normalized' or 'addition'")
    if not overlay_strength >= 0 or (replacing_mode == "normalized" and overlay_strength > 1):
        raise UserError(f"overlay_strength={overlay_strength} does not fit replacing_mode={replacing_mode!r}: "
                        "'normalized' takes [0, 1], 'addition' any strength >= 0")
    if not 0 <= insert_layer < num_layers(model):
        raise UserError(f"insert_layer={insert_layer} is out of range: the model has {num_layers(model)} decoder "
                        f"layers (0..{num_layers(model) - 1}; the original uses 1)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty: give the text to interpret")
    ip = build_interpretation_prompt(tokenizer, interpretation_prompt, n_placeholders, chat_template)
    ids = encode_prompt(tokenizer, prompt, raw, chat_template).ids
    pairs = check_positions(pairs, num_layers(model), len(ids))
    output = answer(model, tokenizer, ids, answer_tokens) if answer_tokens else ""
    layers = sorted({l for l, _ in pairs})
    tokens = sorted({t for _, t in pairs})
    states = hidden_states_at(model, ids, layers, tokens)
    rows = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = torch.stack([states[layers.index(l), tokens.index(t)] for l, t in chunk])
        results = interpret_states(model, tokenizer, ip, batch, insert_layer=insert_layer,
                                   overlay_strength=overlay_strength, replacing_mode=replacing_mode,
                                   max_new_tokens=max_new_tokens, with_relevancy=relevancy is not None,
                                   relevancy_kind=relevancy or "absolute")
        for (l, t), r in zip(chunk, results):
            rows.append({"name": name, "prompt": prompt, "prompt_output": output, "layer_idx": l, "token_idx": t,
                         "token": tokenizer.decode([ids[t]]), "repeat_prompt": ip.text, "repeat_prompt_name": ip.name,
                         "interpretation": r["ids"], "interpretation_text": r["text"],
                         "interpretation_weights": r.get("weights", []), "interpretation_prob": r.get("probs", [])})
    return pd.DataFrame(rows, columns=COLUMNS)
