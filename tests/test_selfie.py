"""SelfIE (self_interpret.py, selfie.py): insertions through hooks.py in forward and generate, prompts, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hooks import Trace
from self_interpret import forward_interpret, generate_interpret, prefix_cache, relevancy
from tiny_models import VOCAB, tiny_stock_model

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["llama", "mistral", "gemma3", "gpt2"]
GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)


def _ids(n=2, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, t), generator=g)


def _hidden(model, ids, layer):
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer]


def _info(emb, layer=1, locations=(2, 3, 4), **extra):
    return {layer: (list(locations), emb), **extra}


@pytest.mark.parametrize("family", FAMILIES)
def test_none_is_the_stock_call(family):
    model = tiny_stock_model(family)
    ids = _ids()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        stock = model.generate(ids, attention_mask=mask, **GREEDY)
        ours = generate_interpret(model, ids, mask, None, **GREEDY)
        assert torch.equal(stock, ours)
        torch.testing.assert_close(forward_interpret(model, ids, mask, None).logits,
                                   model(ids, attention_mask=mask).logits, rtol=0, atol=0)
        assert torch.equal(generate_interpret(model, ids, mask, [None, None], **GREEDY), stock)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_inserting_the_state_already_there_changes_nothing(family, layer):
    model = tiny_stock_model(family)
    ids = _ids(1)
    mask = torch.ones_like(ids)
    own = _hidden(model, ids, layer)[:, [2, 3, 4]]
    info = [_info(own, layer)]
    with torch.no_grad():
        torch.testing.assert_close(forward_interpret(model, ids, mask, info).logits, model(ids).logits,
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(generate_interpret(model, ids, mask, info, **GREEDY), model.generate(ids, **GREEDY))


def test_normalized_with_strength_zero_changes_nothing_and_one_replaces():
    model = tiny_stock_model("llama")
    ids = _ids(1)
    mask = torch.ones_like(ids)
    emb = 5 * torch.randn(1, 3, 32)
    with torch.no_grad():
        stock = model(ids).logits
        zero = forward_interpret(model, ids, mask, [_info(emb, overlay_strength=0.0, replacing_mode="normalized")]).logits
        full = forward_interpret(model, ids, mask, [_info(emb, overlay_strength=1.0)]).logits
    torch.testing.assert_close(zero, stock, rtol=0, atol=0)
    assert not torch.allclose(full, stock, atol=1e-3)


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_addition_equals_a_naive_edit(strength):
    model = tiny_stock_model("llama")
    ids = _ids(1)
    mask = torch.ones_like(ids)
    emb = torch.randn(1, 3, 32)
    with torch.no_grad():
        ours = forward_interpret(model, ids, mask, [_info(emb, 2, overlay_strength=strength, replacing_mode="addition")]).logits
        # naive: layer 2's input, rows 2..4, plus strength * emb, written by hand
        def naive(hidden, name):
            hidden = hidden.clone()
            for j, position in enumerate([2, 3, 4]):
                hidden[0, position] = hidden[0, position] + strength * emb[0, j]
            return hidden
        with Trace(model, 2, retain_output=False, edit_input=naive):
            expected = model(ids).logits
        # layer 0 through the embeddings the model is given (no hook at all)
        ours0 = forward_interpret(model, ids, mask, [_info(emb, 0, overlay_strength=strength, replacing_mode="addition")]).logits
        embeds = model.get_input_embeddings()(ids).clone()
        embeds[0, 2:5] += strength * emb[0]
        expected0 = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours0, expected0, rtol=1e-6, atol=1e-6)


def _padded(rows, side="left"):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("decoding", ["greedy", "beam", "no_cache"])
def test_padded_batch_equals_one_at_a_time(family, decoding):
    model = tiny_stock_model(family)
    rows = [_ids(1, 9, seed=1)[0].tolist(), _ids(1, 5, seed=2)[0].tolist(), _ids(1, 7, seed=3)[0].tolist()]
    g = torch.Generator().manual_seed(0)
    infos = [_info(3 * torch.randn(1, 2, 32, generator=g), 1, (1, 3)), None,
             {2: ([0], 3 * torch.randn(1, 1, 32, generator=g)), 1: ([4, 6], torch.randn(1, 2, 32, generator=g)),
              "overlay_strength": 0.7}]
    kwargs = dict(GREEDY)
    if decoding == "beam":
        kwargs.update(num_beams=3, num_return_sequences=2)
    if decoding == "no_cache":
        kwargs.update(use_cache=False)
    ids, mask = _padded(rows)
    with torch.no_grad():
        batch = generate_interpret(model, ids, mask, infos, **kwargs)
        per = batch.shape[0] // len(rows)
        for i, (row, info) in enumerate(zip(rows, infos)):
            x = torch.tensor([row])
            alone = generate_interpret(model, x, torch.ones_like(x), [info], **kwargs)
            assert torch.equal(batch[i * per:(i + 1) * per, -kwargs["max_new_tokens"]:], alone[:, -kwargs["max_new_tokens"]:])
        # forward: left and right padding give each row's logits alone (positions from the mask)
        for side in ("left", "right"):
            ids, mask = _padded(rows, side)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = forward_interpret(model, ids, mask, infos, position_ids=position_ids).logits
            for i, (row, info) in enumerate(zip(rows, infos)):
                x = torch.tensor([row])
                alone = forward_interpret(model, x, torch.ones_like(x), [info]).logits[0]
                torch.testing.assert_close(logits[i][mask[i].bool()], alone, rtol=1e-4, atol=1e-4)


def test_insertion_changes_generation_and_cache_carries_it():
    model = tiny_stock_model("llama")
    ids = _ids(1)
    mask = torch.ones_like(ids)
    info = [_info(10 * torch.randn(1, 3, 32))]
    with torch.no_grad():
        cached = generate_interpret(model, ids, mask, info, **GREEDY)
        uncached = generate_interpret(model, ids, mask, info, use_cache=False, **GREEDY)
        stock = model.generate(ids, **GREEDY)
        shared = generate_interpret(model, ids, mask, info, past_key_values=prefix_cache(model, ids[:, :2], 1), **GREEDY)
    assert torch.equal(cached, uncached) and torch.equal(cached, shared)
    assert not torch.equal(cached, stock)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_sampling_with_the_own_state_is_stock_sampling():
    model = tiny_stock_model("llama")
    ids = _ids(2)
    mask = torch.ones_like(ids)
    own = _hidden(model, ids, 1)[:, [2, 3, 4]]
    infos = [_info(own[i:i + 1]) for i in range(2)]
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=3, pad_token_id=0)
    far = 20 * torch.randn(1, 3, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        stock = model.generate(ids, attention_mask=mask, **kwargs)
        torch.manual_seed(7)
        ours = generate_interpret(model, ids, mask, infos, **kwargs)
        torch.manual_seed(7)
        other = generate_interpret(model, ids, mask, [_info(far), None], **kwargs)
    assert torch.equal(stock, ours)
    assert torch.equal(stock[3:], other[3:]) and not torch.equal(stock[:3], other[:3])  # rows 3..5 are sample 1


def test_relevancy_is_zero_for_the_original_state_and_not_otherwise():
    model = tiny_stock_model("llama")
    ids = _ids(2)
    mask = torch.ones_like(ids)
    new = _ids(2, 4, seed=5)
    own = _hidden(model, ids, 1)[:, [2, 3, 4]]
    with torch.no_grad():
        same = relevancy(model, ids, mask, [_info(own[i:i + 1]) for i in range(2)], new)
        other = relevancy(model, ids, mask, [_info(30 * torch.randn(1, 3, 32)), None], new)
    assert same.shape == (2, 4)
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-6)
    assert other[0].abs().max() > 1e-3 and other[1].abs().max() == 0


@pytest.mark.parametrize("info, fragment", [
    ({1: ([2, 40], torch.zeros(1, 2, 32))}, "outside the prompt"),
    ({1: ([2, 3], torch.zeros(1, 2, 16))}, "width 16"),
    ({1: ([2, 3], torch.zeros(1, 3, 32))}, "3 rows for 2 insert locations"),
    ({1: ([2, 3], torch.zeros(2, 32))}, "[1, n, d]"),
    ({1: ([2], torch.zeros(1, 1, 32)), "replacing_mode": "replace"}, "unknown replacing_mode"),
    ({4: ([2], torch.zeros(1, 1, 32))}, "layer 4 is out of range"),
    ({-1: ([2], torch.zeros(1, 1, 32))}, "layer -1 is out of range"),
    ({1: ([2], torch.zeros(1, 1, 32)), "overlay_strength": 1.5}, "outside [0, 1]"),
    ({1: ([2], torch.zeros(1, 1, 32)), "strength": 1.0}, "unknown keys"),
])
def test_bad_insert_info_is_a_clear_error(info, fragment):
    model = tiny_stock_model("llama")
    ids, mask = _padded([_ids(1, 9)[0].tolist(), _ids(1, 4)[0].tolist()])
    with pytest.raises(ValueError, match="insert_info") as error:
        generate_interpret(model, ids, mask, [info, None], **GREEDY)
    assert fragment in str(error.value)
    with pytest.raises(ValueError, match="one dict"):
        forward_interpret(model, ids, mask, [info])
    # a location past a short row's real tokens is outside its prompt even though the padded batch is longer
    with pytest.raises(ValueError, match="outside the prompt"):
        forward_interpret(model, ids, mask, [None, {1: ([5], torch.zeros(1, 1, 32))}])
    with pytest.raises(ValueError, match="left-padded"):
        generate_interpret(model, *_padded([[5, 6, 7], [5]], "right"), [None, {1: ([0], torch.zeros(1, 1, 32))}])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- interpretation prompts: placeholder positions ------------------------------------------------
PROMPT_WORDS = ["[PAD]", "[UNK]", "[BOS]", "_", "[INST]", "[/INST]", "Sure,", "I", "will", "repeat", "summarize",
                "the", "message:", "The", "object", "you", "said", "is:", "<user>", "<bot>", "</s>"]


def _prompt_tokenizer(bos: bool, chat: bool):
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(PROMPT_WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")
    if chat:
        tok.chat_template = ("{{ bos_token }}{% for m in messages %}<user> {{ m['content'] }} </s> {% endfor %}"
                             "{% if add_generation_prompt %}<bot> {% endif %}")
    return tok


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("name", ["summarize", "repeat", "object"])
def test_placeholder_positions(bos, chat, name):
    from selfie import INTERPRETATION_PROMPTS, build_interpretation_prompt
    tok = _prompt_tokenizer(bos, chat)
    prompt = build_interpretation_prompt(tok, name, 5, chat_template=chat)
    underscore = PROMPT_WORDS.index("_")
    assert [prompt.ids[p] for p in prompt.positions] == [underscore] * 5
    assert prompt.ids.count(underscore) == 5 and prompt.positions == list(range(prompt.positions[0], prompt.positions[0] + 5))
    if chat:   # the template writes its BOS itself: exactly one, first
        expected = "[BOS] <user> _ _ _ _ _ </s> <bot> " + INTERPRETATION_PROMPTS[name]
        assert prompt.positions[0] == 2
    else:      # the original's format, with the tokenizer's BOS when it adds one
        expected = ("[BOS] " if bos else "") + "[INST] _ _ _ _ _ [/INST] " + INTERPRETATION_PROMPTS[name]
        assert prompt.positions[0] == (2 if bos else 1)
    assert prompt.ids.count(2) == (1 if (bos or chat) else 0)
    assert tok(expected, add_special_tokens=False)["input_ids"] == prompt.ids
    assert prompt.text == tok.decode(prompt.ids)


# -- the command line --------------------------------------------------------------------------------
# The command line's bad-input cases are rows of tests/test_bad_input.py's table.


def test_cli_interprets_a_json_file_and_resumes(tiny_llama_dir, tmp_path):
    examples = tmp_path / "ex.json"
    examples.write_text(json.dumps({"examples": [{"prompt": "w5 w6 w7", "category": "a", "raw": True},
                                                 {"prompt": "w9 w10", "category": "b", "raw": False}]}))
    out = tmp_path / "out.csv"
    argv = [sys.executable, str(ROOT / "selfie.py"), "--json", str(examples), "--model", str(tiny_llama_dir),
            "--layers", "0,2,4", "--tokens", "last-2", "--max-new-tokens", "3", "--answer-tokens", "2", "--out", str(out),
            "--batch-size", "5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import pandas as pd
    frame = pd.read_csv(out)
    assert list(frame.columns[:10]) == ["name", "prompt", "prompt_output", "layer_idx", "token_idx", "token",
                                        "repeat_prompt", "repeat_prompt_name", "interpretation", "interpretation_text"]
    for column in ("interpretation_weights", "interpretation_prob"):
        assert column in frame.columns
    assert len(frame) == 12 and set(frame["name"]) == {"a_0", "b_0"} and set(frame["layer_idx"]) == {0, 2, 4}
    assert all(len(json.loads(w)) == len(json.loads(i)) for w, i in zip(frame["interpretation_weights"], frame["interpretation"]))
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "interpretations ->" not in again.stdout   # nothing left to compute
    assert pd.read_csv(out).equals(frame)


# -- the real model ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_placeholders_and_identity():
    from model_loading import load_model, load_tokenizer
    from selfie import build_interpretation_prompt, hidden_states_at, identity_items, interpret_states, recovered
    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    prompt = build_interpretation_prompt(tok, "repeat", 5)
    rendered = tok.apply_chat_template([{"role": "user", "content": "_ _ _ _ _"}], tokenize=False, add_generation_prompt=True)
    underscore = tok("_", add_special_tokens=False)["input_ids"]
    assert [prompt.ids[p] for p in prompt.positions] == underscore * 5
    assert prompt.text == rendered.replace("_ _ _ _ _", "_____") + "Sure, I will repeat the message:"
    items = identity_items(tok, 6)
    assert [tok.decode([it["ids"][it["position"]]]).strip() for it in items] == [it["word"] for it in items]
    one = build_interpretation_prompt(tok, "repeat", 1)
    # Measured (selfie.py --evaluate): SmolLM2 repeats the word from its layer-2..9 state nearly always.
    states = torch.stack([hidden_states_at(model, it["ids"], [3], [it["position"]])[0, 0] for it in items])
    out = interpret_states(model, tok, one, states, max_new_tokens=5, with_relevancy=True)
    hits = [recovered(it["word"], r["text"]) for it, r in zip(items, out)]
    assert sum(hits) >= 5, [r["text"] for r in out]
    # the word's own tokens are made likelier by the insertion (relevancy > 0)
    word_weights = [w for it, r in zip(items, out) for t, w in zip(r["ids"], r["weights"])
                    if tok.decode([t]).strip().lower() == it["word"]]
    assert word_weights and min(word_weights) > 0.05, word_weights   # measured: 0.09 to 0.28
    assert all(len(r["weights"]) == len(r["ids"]) for r in out)
