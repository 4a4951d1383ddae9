"""The instrumented models: logits unchanged, features equal a naive float64 reference."""
import copy

import numpy as np
import pytest
import torch
from transformers import Phi3Config, Phi3ForCausalLM

from instrument import UnsupportedArchitecture, instrument
from modeling_llama import SplineLlamaForCausalLM
from modeling_mistral import SplineMistralForCausalLM
from rounding import assert_recorded_matches_reference
from tiny_models import random_prompts, tiny_stock_model, tiny_tokenizer

FAMILIES = ["llama", "mistral", "gemma3", "gpt2", "bert"]
SPLINE_CLASSES = {"llama": SplineLlamaForCausalLM, "mistral": SplineMistralForCausalLM}


def instrumented_copy(family, stock):
    """The Spline* class for Llama/Mistral, the generic instrumentation for the others."""
    if family in SPLINE_CLASSES:
        model = SPLINE_CLASSES[family](stock.config).eval()
        model.load_state_dict(stock.state_dict())
        return model
    clone = type(stock)(copy.deepcopy(stock.config)).eval()  # instrument() edits the model's own config
    clone.load_state_dict(stock.state_dict())
    return instrument(clone)


def padded(prompts, padding_side):
    tok = tiny_tokenizer(padding_side)
    batch = tok(prompts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])
def test_logits_equal_stock(family):
    stock = tiny_stock_model(family)
    model = instrumented_copy(family, stock)
    assert model.config._attn_implementation.startswith("spline_")
    assert not stock.config._attn_implementation.startswith("spline_"), "instrumenting leaked into the stock config"
    ids, mask = padded(random_prompts(4, seed=1, lo=2, hi=10), "right")
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        theirs = stock(input_ids=ids, attention_mask=mask).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    # Recording features must leave a later plain forward unchanged too.
    model.spline_recorder.run(ids, mask)
    with torch.no_grad():
        again = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(again, ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_equal_naive_float64(family):
    stock = tiny_stock_model(family)
    model = instrumented_copy(family, stock)
    tok = tiny_tokenizer()
    for prompt in random_prompts(5, seed=2, lo=1, hi=10):
        token_ids = tok(prompt)["input_ids"]
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)))
        assert_recorded_matches_reference(got, stock, token_ids)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_equals_one_at_a_time(family, padding_side):
    model = instrumented_copy(family, tiny_stock_model(family))
    prompts = random_prompts(6, seed=3, lo=1, hi=12)
    ids, mask = padded(prompts, padding_side)
    batch = model.spline_recorder.run(ids, mask, pool_hidden=True)
    for i, prompt in enumerate(prompts):
        one_ids, one_mask = padded([prompt], padding_side)
        one = model.spline_recorder.run(one_ids, one_mask, pool_hidden=True)
        assert (batch["spline"][i] - one["spline"][0]).abs().max().item() <= 1e-5
        assert torch.equal(batch["ids"][i], one["ids"][0])
        assert (batch["hidden"][i] - one["hidden"][0]).abs().max().item() <= 1e-5


def test_one_token_prompt_has_zero_spread():
    model = instrumented_copy("llama", tiny_stock_model("llama"))
    out = model.spline_recorder.run(torch.tensor([[5]]), torch.ones(1, 1))["spline"][0]
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 3], torch.zeros(4)) and torch.equal(out[:, 6], torch.zeros(4))  # frac_std, dist_std
    assert torch.equal(out[:, 1], out[:, 2])  # min == max with one token


def test_early_exit_runs_only_requested_layers():
    model = instrumented_copy("llama", tiny_stock_model("llama"))
    calls = []
    for index, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, index=index: calls.append(index))
    model.lm_head.register_forward_pre_hook(lambda m, a: calls.append("lm_head"))
    ids, mask = padded(random_prompts(3, seed=4), "right")
    out = model.spline_recorder.run(ids, mask, layers=[0, 1])
    assert calls == [0, 1]
    assert out["spline"].shape == (3, 2, 7) and out["ids"].shape == (3, 2)
    full = model.spline_recorder.run(ids, mask)
    assert torch.equal(out["spline"], full["spline"][:, :2])
    calls.clear()
    model.spline_recorder.run(ids, mask, layers=[2])
    assert calls == [0, 1, 2]


def test_id_can_be_switched_off_and_sliding_window_matters():
    stock = tiny_stock_model("mistral", sliding_window=3)
    model = instrumented_copy("mistral", stock)
    ids, mask = padded(["w1 w2 w3 w4 w5 w6 w7 w8 w9"], "right")
    assert model.spline_recorder.run(ids, mask, with_id=False)["ids"] is None
    # With a window of 3 the last token sees at most 3 keys per head (4 heads).
    assert int(model.spline_recorder.run(ids, mask)["ids"].max()) <= 3 * 4


def test_unsupported_architecture_names_supported_families():
    config = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    with pytest.raises(UnsupportedArchitecture, match="Llama, Mistral"):
        instrument(Phi3ForCausalLM(config))


def test_bad_layer_request():
    model = instrumented_copy("llama", tiny_stock_model("llama"))
    ids, mask = padded(["w1 w2"], "right")
    with pytest.raises(ValueError, match="layers must be within"):
        model.spline_recorder.run(ids, mask, layers=[7])
    with pytest.raises(ValueError, match="at least one real token"):
        model.spline_recorder.run(ids, torch.zeros_like(mask))
