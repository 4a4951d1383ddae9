"""SelfIE (self_interpret.py, selfie.py): insertions through hooks.py in forward and generate, prompts, errors."""
import json
import re
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
    from self_interpret import INTERPRETATION_PROMPTS, build_interpretation_prompt
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


def _selfie(*argv, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "selfie.py"), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_second_prompt_into_the_same_out_never_gets_the_first_ones_rows(tiny_llama_dir, tmp_path):
    """The stale case: prompt A, then prompt B (sharing A's first tokens and positions) into one --out."""
    import pandas as pd
    out, fresh = tmp_path / "x.csv", tmp_path / "fresh.csv"
    common = ["--model", tiny_llama_dir, "--raw", "--layers", "0-4:2", "--tokens", "all", "--max-new-tokens", "3",
              "--answer-tokens", "2"]
    first = _selfie("--prompt", "w5 w6 w7", *common, "--out", out)
    assert first.returncode == 0, first.stderr
    second = _selfie("--prompt", "w5 w9 w7 w8", *common, "--out", out)
    assert second.returncode == 0, second.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 3 * 4 and set(frame["prompt"]) == {"w5 w9 w7 w8"}     # layers 0, 2, 4 x 4 tokens
    alone = _selfie("--prompt", "w5 w9 w7 w8", *common, "--out", fresh)
    assert alone.returncode == 0, alone.stderr
    assert frame.equals(pd.read_csv(fresh))         # every row is B's own, as a run of B alone computes it
    # back to A: its rows are still cached (nothing to compute) and --out holds A's rows only
    again = _selfie("--prompt", "w5 w6 w7", *common, "--out", out)
    assert again.returncode == 0 and "interpretations ->" not in again.stdout
    assert set(pd.read_csv(out)["prompt"]) == {"w5 w6 w7"} and len(pd.read_csv(out)) == 9
    # a setting that changes the rows (the signed relevancy) recomputes them
    signed = _selfie("--prompt", "w5 w6 w7", *common, "--relevancy", "signed", "--out", out)
    assert signed.returncode == 0 and "interpretations ->" in signed.stdout


def test_cli_default_tokens_are_the_users_text(tiny_llama_dir, tmp_path):
    import pandas as pd
    out = tmp_path / "u.csv"
    done = _selfie("--prompt", "w5 w6 w7", "--model", tiny_llama_dir, "--layers", "2", "--max-new-tokens", "2",
                   "--answer-tokens", "1", "--no-relevancy", "--out", out)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out)
    assert [t.strip() for t in frame["token"]] == ["w5", "w6", "w7"]     # not the template's "[INST]" / "[/INST]"


def test_stepped_layer_spec():
    from selfie import stepped_spec
    assert stepped_spec("0-30:5") == "0,5,10,15,20,25,30"
    assert stepped_spec("1,3-9:3") == "1,3,6,9"
    assert stepped_spec("last-4") == "last-4"


def test_cli_interprets_a_json_file_and_resumes(tiny_llama_dir, tmp_path):
    examples = tmp_path / "ex.json"
    examples.write_text(json.dumps({"examples": [{"prompt": "w5 w6 w7", "category": "a", "raw": True},
                                                 {"prompt": "w9 w10", "category": "b", "raw": False}]}))
    out = tmp_path / "out.csv"
    argv = [sys.executable, str(ROOT / "selfie.py"), "--json", str(examples), "--model", str(tiny_llama_dir),
            "--layers", "0,2,4", "--tokens", "last-2", "--max-new-tokens", "3", "--answer-tokens", "2", "--out", str(out),
            "--batch-size", "5", "--mode", "addition", "--strength", "2.5"]     # addition takes strengths above 1
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
    from self_interpret import build_interpretation_prompt, hidden_states_at, interpret_states
    from selfie import identity_items, recovered
    tok, model = load_tokenizer("smollm2-135m"), load_model("smollm2-135m")
    prompt = build_interpretation_prompt(tok, "repeat", 5)
    rendered = tok.apply_chat_template([{"role": "user", "content": "_ _ _ _ _"}], tokenize=False, add_generation_prompt=True)
    # the original's "_ _ _ _ _" as SmolLM2 writes it: "_" then four " _"
    assert [tok.decode([prompt.ids[p]]) for p in prompt.positions] == ["_", " _", " _", " _", " _"]
    assert prompt.ids == tok(rendered + "Sure, I will repeat the message:", add_special_tokens=False)["input_ids"]
    assert prompt.text == rendered + "Sure, I will repeat the message:"
    custom = build_interpretation_prompt(tok, "[INST] {} [/INST] The materials mentioned in the message are:", 5)
    assert [tok.decode([custom.ids[p]]) for p in custom.positions] == [" _"] * 5
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


# -- the one-line entry point, relevancy, custom prompts ---------------------------------------------
def _tiny_pair():
    from tiny_models import tiny_tokenizer
    tok = tiny_tokenizer("left")
    return tiny_stock_model("llama"), tok


def test_interpret_equals_the_lower_level_path():
    from self_interpret import build_interpretation_prompt, encode_prompt, hidden_states_at, interpret, interpret_states
    model, tok = _tiny_pair()
    frame = interpret(model, tok, "w5 w6 w7 w8", [(1, -1), (3, 0), (4, -2)], "repeat", max_new_tokens=4, answer_tokens=2)
    assert list(frame.columns) == ["name", "prompt", "prompt_output", "layer_idx", "token_idx", "token", "repeat_prompt",
                                   "repeat_prompt_name", "interpretation", "interpretation_text",
                                   "interpretation_weights", "interpretation_prob"]
    ids = encode_prompt(tok, "w5 w6 w7 w8").ids
    assert frame["token_idx"].tolist() == [len(ids) - 1, 0, len(ids) - 2]     # negative indices count from the end
    prompt = build_interpretation_prompt(tok, "repeat", 5)
    for row in frame.itertuples():
        state = hidden_states_at(model, ids, [row.layer_idx], [row.token_idx])[0]
        low = interpret_states(model, tok, prompt, state, max_new_tokens=4, with_relevancy=True)[0]
        assert row.interpretation == low["ids"] and row.interpretation_weights == low["weights"]
        assert row.interpretation_prob == low["probs"] and row.interpretation_text == low["text"]
        assert all(w >= 0 for w in row.interpretation_weights)        # the original's absolute relevancy
    signed = interpret(model, tok, "w5 w6 w7 w8", [(1, -1)], "repeat", max_new_tokens=4, answer_tokens=0,
                       relevancy="signed")
    assert [abs(w) for w in signed["interpretation_weights"][0]] == frame["interpretation_weights"][0]


@pytest.mark.parametrize("pairs, fragment", [([(1, 9)], "token 9 is outside the prompt"),
                                             ([(1, -5)], "token -5 is outside the prompt"),
                                             ([(5, 0)], "layer 5 is out of range"), ([], "no (layer, token) pairs")])
def test_interpret_refuses_positions_outside(pairs, fragment):
    from cli import UserError
    from self_interpret import interpret
    model, tok = _tiny_pair()
    with pytest.raises(UserError, match=re.escape(fragment)):
        interpret(model, tok, "w5 w6 w7 w8", pairs, answer_tokens=0)


def test_interpret_refuses_a_custom_prompt_without_a_marker_and_a_bad_strength():
    from cli import UserError
    from self_interpret import interpret
    model, tok = _tiny_pair()
    with pytest.raises(UserError, match="placeholder marker"):
        interpret(model, tok, "w5 w6", [(1, 0)], "w3 w4 is:", answer_tokens=0)
    with pytest.raises(UserError, match="'normalized' takes"):
        interpret(model, tok, "w5 w6", [(1, 0)], overlay_strength=2.0, answer_tokens=0)
    frame = interpret(model, tok, "w5 w6", [(1, 0)], overlay_strength=2.0, replacing_mode="addition", answer_tokens=0,
                      max_new_tokens=2)
    assert len(frame) == 1


def test_the_originals_bookkeeping_keys_are_accepted():
    model = tiny_stock_model("llama")
    ids = _ids(1)
    mask = torch.ones_like(ids)
    emb = torch.randn(1, 3, 32)
    with torch.no_grad():
        plain = forward_interpret(model, ids, mask, [_info(emb)]).logits
        kept = forward_interpret(model, ids, mask, [_info(emb, retrieve_layer=7, retrieve_token=3)]).logits
    assert torch.equal(plain, kept)


def test_relevancy_is_absolute_by_default_and_signed_on_request():
    model = tiny_stock_model("llama")
    ids, new = _ids(2), _ids(2, 4, seed=5)
    mask = torch.ones_like(ids)
    info = [_info(30 * torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(s))) for s in (1, 2)]
    with torch.no_grad():
        absolute, signed = relevancy(model, ids, mask, info, new), relevancy(model, ids, mask, info, new, kind="signed")
    assert torch.equal(absolute, signed.abs()) and bool((signed < 0).any())


@pytest.mark.parametrize("bos", [False, True])
def test_custom_prompt_placeholders(bos):
    from self_interpret import build_interpretation_prompt
    tok = _prompt_tokenizer(bos, chat=False)
    custom = build_interpretation_prompt(tok, "[INST] {} [/INST] The object you said is:", 3)
    named = build_interpretation_prompt(tok, "object", 3, chat_template=False)
    assert custom.ids == named.ids and custom.positions == named.positions == [1 + bos, 2 + bos, 3 + bos]
    two = build_interpretation_prompt(tok, "{} I will repeat {}", 2)     # every marker gets the placeholders
    underscore = PROMPT_WORDS.index("_")
    assert [two.ids[p] for p in two.positions] == [underscore] * 4 and two.positions == [0 + bos, 1 + bos, 5 + bos, 6 + bos]


# -- supervised control ----------------------------------------------------------------------------
def test_supervised_control_moves_the_state_and_round_trips(tmp_path):
    from self_interpret import build_interpretation_prompt, hidden_states_at, interpret_states
    from selfie_control import ControlEdit, fit_control
    model, tok = _tiny_pair()
    ids, other_ids, unrelated = [5, 6, 7, 8], [5, 6, 40, 8], [[20, 21, 22, 23, 24], [30, 31, 32]]
    target = hidden_states_at(model, other_ids, [2], [2])[0, 0]
    before = hidden_states_at(model, ids, [2], [2])[0, 0]
    unrelated_before = [hidden_states_at(model, u, [2], list(range(len(u))))[0] for u in unrelated]
    with torch.no_grad():
        stock = model.generate(torch.tensor([unrelated[0]]), **GREEDY)
    edit = fit_control(model, ids, 2, 2, target, steps=150, lr=1e-2, reference=unrelated, beta=10.0)
    after = hidden_states_at(model, ids, [2], [2])[0, 0]
    # the state moved most of the way to the target ...
    assert (after - target).norm() < 0.1 * (before - target).norm()
    # ... while the unrelated prompts' states (kept by the reference loss) moved far less than it did
    moved = max(float((hidden_states_at(model, u, [2], list(range(len(u))))[0] - b).norm(dim=-1).max())
                for u, b in zip(unrelated, unrelated_before))
    assert moved < 0.1 * float((after - before).norm())
    prompt = build_interpretation_prompt(tok, "repeat", 1)
    wanted = interpret_states(model, tok, prompt, target.view(1, -1), max_new_tokens=4)[0]["ids"]
    assert interpret_states(model, tok, prompt, after.view(1, -1), max_new_tokens=4)[0]["ids"] == wanted
    assert set(edit.weights) == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.mlp.")}
    with torch.no_grad():
        edited = model.generate(torch.tensor([unrelated[0]]), **GREEDY)
    edit.save(tmp_path / "edit.safetensors")
    edit.restore(model)
    with torch.no_grad():
        assert torch.equal(model.generate(torch.tensor([unrelated[0]]), **GREEDY), stock)
    loaded = ControlEdit.load(tmp_path / "edit.safetensors").apply(model)
    assert loaded.source_layer == 2 and loaded.info["steps"] == 150
    with torch.no_grad():
        assert torch.equal(model.generate(torch.tensor([unrelated[0]]), **GREEDY), edited)   # generate sees the edit
    assert torch.equal(hidden_states_at(model, ids, [2], [2])[0, 0], after)
    loaded.restore(model)
    # the baseline: a random edit of exactly the same size
    rand = edit.random_like(seed=3)
    assert abs(rand.delta_norm() - edit.delta_norm()) <= 1e-4 * edit.delta_norm()
    from safetensors import safe_open
    with safe_open(str(tmp_path / "edit.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(edit.weights)      # the changed weights only


def test_supervised_control_refuses_a_source_layer_outside():
    from cli import UserError
    from selfie_control import fit_control
    model, _ = _tiny_pair()
    with pytest.raises(UserError, match="source layer 0 is out of range"):
        fit_control(model, [5, 6], 0, 0, torch.zeros(32))
    with pytest.raises(UserError, match="token 5 is outside"):
        fit_control(model, [5, 6], 5, 2, torch.zeros(32))


# -- the evaluation's resume caches: keyed on everything that changes their rows ---------------------
def _eval_args(**changes):
    import argparse
    base = dict(model="m", insert_layer=1, strength=1.0, mode="normalized")
    return argparse.Namespace(**{**base, **changes})


@pytest.mark.parametrize("change", [dict(insert_layer=2), dict(strength=0.5), dict(mode="addition"), dict(model="n")])
def test_identity_cache_is_stale_when_a_setting_changes(tmp_path, change):
    from self_interpret import InterpretationPrompt
    from selfie import RowCache, eval_settings, text_key
    prompt = InterpretationPrompt("repeat", [1, 2, 3], [1], "x")
    path, keys = tmp_path / "identity.csv", ["condition", "word", "text_key", "layer"]
    cache = RowCache(path, keys, eval_settings(_eval_args(), prompt, 5, seed=0))
    cache.add([{"condition": "selfie", "word": "apple", "text_key": text_key("I saw the apple."), "layer": 3,
                "interpretation_text": "apple"}])
    assert RowCache(path, keys, eval_settings(_eval_args(), prompt, 5, seed=0)).has(
        ("selfie", "apple", text_key("I saw the apple."), 3))
    assert not RowCache(path, keys, eval_settings(_eval_args(**change), prompt, 5, seed=0)).has(
        ("selfie", "apple", text_key("I saw the apple."), 3))
    # the word in another sentence is another row
    assert not RowCache(path, keys, eval_settings(_eval_args(), prompt, 5, seed=0)).has(
        ("selfie", "apple", text_key("There is a apple here."), 3))
    assert not RowCache(path, keys, eval_settings(_eval_args(), InterpretationPrompt("repeat", [1, 2, 4], [1], "y"),
                                                  5, seed=0)).has(("selfie", "apple", text_key("I saw the apple."), 3))


def test_toxicity_cache_is_keyed_on_the_prompts_tokens(tmp_path):
    from self_interpret import InterpretationPrompt
    from selfie import RowCache, eval_settings, prompt_key
    prompt = InterpretationPrompt("summarize", [1, 2, 3, 4, 5], [1, 2], "x")
    path, keys = tmp_path / "toxicity.csv", ["prompt_key", "layer"]
    settings = eval_settings(_eval_args(), prompt, 8, max_tokens=48)
    RowCache(path, keys, settings).add([{"prompt_key": prompt_key([7, 8, 9]), "layer": 5, "interpretation_text": "a"}])
    assert RowCache(path, keys, settings).has((prompt_key([7, 8, 9]), 5))
    assert not RowCache(path, keys, settings).has((prompt_key([7, 8, 10]), 5))   # another prompt: not its rows
    assert not RowCache(path, keys, eval_settings(_eval_args(), prompt, 8, max_tokens=32)).has((prompt_key([7, 8, 9]), 5))
    assert not RowCache(path, keys, eval_settings(_eval_args(strength=0.5), prompt, 8, max_tokens=48)).has(
        (prompt_key([7, 8, 9]), 5))


def test_control_cache_is_stale_when_the_fit_changes(tmp_path):
    from self_interpret import InterpretationPrompt
    from selfie import RowCache, eval_settings, text_key
    prompt = InterpretationPrompt("repeat", [1, 2, 3], [1], "x")
    path, keys = tmp_path / "control.csv", ["entity", "target", "text_key"]

    def settings(**fit):
        base = dict(source_layer=3, steps=60, lr=3e-4, seed=0, clean=[[1, 2]], unrelated=[[3, 4]])
        return eval_settings(_eval_args(), prompt, 5, **{**base, **fit})
    RowCache(path, keys, settings()).add([{"entity": "apple", "target": "tiger", "text_key": text_key("s"), "success": True}])
    assert RowCache(path, keys, settings()).has(("apple", "tiger", text_key("s")))
    for fit in (dict(source_layer=4), dict(steps=20), dict(lr=1e-3), dict(unrelated=[[3, 5]]), dict(clean=[[1]])):
        assert not RowCache(path, keys, settings(**fit)).has(("apple", "tiger", text_key("s")))


def test_update_readme_pastes_between_the_markers_only(tmp_path):
    from analysis.report import paste_between_markers
    from cli import UserError
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- selfie-full:begin -->\nNot yet run.\n<!-- selfie-full:end -->\ntail\n")
    paste_between_markers(readme, "selfie-full", "| a | b |\n")
    assert readme.read_text() == "head\n<!-- selfie-full:begin -->\n| a | b |\n<!-- selfie-full:end -->\ntail\n"
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="no <!-- selfie-full:begin -->"):
        paste_between_markers(readme, "selfie-full", "x")


def _full_result(rate: float, commit: str) -> dict:
    cell = {"rate": rate, "ci95": (max(rate - 0.1, 0), min(rate + 0.1, 1)), "n": 10}
    zero = {"rate": 0.0, "ci95": (0.0, 0.3), "n": 10}
    return {"identity": {"selfie": {l: cell for l in (0, 1)}, "random": {l: zero for l in (0, 1)}}, "n_words": 10,
            "n_random_words": 10, "own_state": {"rate": 0.0}, "toxicity_per_side": {"toxic": 5, "clean": 5},
            "toxicity_auc_selfie": {0: {"auc": 0.6, "ci95": (0.5, 0.7)}}, "toxicity_auc_spline_all": 0.9,
            "toxicity_auc_prompt_profanity": 0.8, "control": None, "timing": {"wall_s": 120, "cpu_s": 240},
            "run": {"created": "2026-12-07 19:00 UTC", "commit": commit, "machine": "2 cores", "command": "python x"}}


def test_full_results_land_one_model_at_a_time_each_under_its_own_run(tmp_path):
    from selfie import save_full_result
    path, both = tmp_path / "selfie_full.json", ("small", "large")
    path.write_text(json.dumps({"models": {"large": {"stale": True}}}))   # the older layout: not kept
    tables = save_full_result(path, "small", _full_result(0.5, "aaa1111"), both)
    assert "small: `python x`" in tables and "aaa1111" in tables and "large: not yet run" in tables
    assert "stale" not in path.read_text() and (tmp_path / "selfie_full.md").read_text() == tables
    tables = save_full_result(path, "large", _full_result(0.9, "bbb2222"), both)
    assert "not yet run" not in tables and "aaa1111" in tables and "bbb2222" in tables
    assert "| 1 | 50 [40, 60] | 0 [0, 30] | 90 [80, 100] | 0 [0, 30] |" in tables
    tables = save_full_result(path, "small", _full_result(0.7, "ccc3333"), both)   # a rerun replaces its own entry
    assert "aaa1111" not in tables and "ccc3333" in tables and "bbb2222" in tables
    assert "| 1 | 70 [60, 80] | 0 [0, 30] | 90 [80, 100] | 0 [0, 30] |" in tables
    assert not list(tmp_path.glob("*.part"))
    assert "Supervised control was not run on small, large" in tables
