"""neuron_topics.py and topics.word_pieces on real tokenizers: word pools on byte-level BPE (SmolLM2, Qwen2.5,
a tiny GPT-2-style tokenizer trained here) and SentencePiece (Gemma-3), the script's checks before any model
loads, and a tiny end-to-end run exported in the authors' layout. The rules themselves: tests/test_topics.py."""
from pathlib import Path

import pandas as pd
import pytest
import torch

import neuron_topics as nt
import topics as tp
from cli import UserError

# Common English words (most frequent nouns, verbs, adjectives of general text).
COMMON = ("time year people way day man thing woman life child world school state family student group country "
          "problem hand part place case week company system program question work government number night point "
          "home water room mother area money story fact month lot right study book eye job word business issue "
          "side kind head house service friend father power hour game line end member law car city community name "
          "president team minute idea body information back parent face others level office door health person art "
          "war history party result change morning reason research girl guy moment air teacher force education "
          "music river music church village island science energy animal market church doctor language city "
          "make know think take see come want look use find give tell work call try ask need feel become leave "
          "good new first last long great little own other old right big high different small large next early "
          "young important few public bad same able").split()
COMMON = list(dict.fromkeys(COMMON))


def _maps_to_its_pieces(tok, word) -> bool:
    """The word's pieces spell ' word' (decoded) and the first carries the word-start marker."""
    ids = tp.word_ids(tok, word)
    return bool(ids) and tok.decode(ids) == " " + word and tok.decode(ids[:1]).startswith(" ")


def _pool_of(tok, words, promoted):
    """The pool of a neuron whose top logits are exactly the pieces of `promoted` words."""
    vocab_size = len(tok)
    wp = tp.word_pieces(tok, words, vocab_size)
    top = sorted({i for w in promoted for i in tp.word_ids(tok, w)})
    logits = torch.full((1, vocab_size), -10.0)
    logits[0, top] = 10.0
    members, _ = tp.pools_from_ranks(tp.word_ranks(logits, wp), tau=len(top), shrink=1)[0]
    return {words[i] for i in members}


def tiny_byte_level_bpe():
    """A GPT-2-style byte-level BPE tokenizer trained in milliseconds on a few sentences: most words are
    several pieces, the case where only a word-start encoding keeps sub-word pieces out of the pools."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    text = [" ".join(COMMON[i:i + 12]) for i in range(0, len(COMMON), 3)] * 3
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         special_tokens=["<|endoftext|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def test_tiny_gpt2_style_tokenizer_maps_common_words_to_their_pieces():
    tok = tiny_byte_level_bpe()
    share = sum(_maps_to_its_pieces(tok, w) for w in COMMON) / len(COMMON)
    assert share >= 0.9
    multi = [w for w in COMMON if len(tp.word_ids(tok, w)) >= 2]
    assert len(multi) >= 10                          # the pool rule is exercised on multi-piece words
    word = multi[0]
    # all the pieces of ' word' promoted: the word is in the pool; only its tail promoted: it is not
    assert word in _pool_of(tok, COMMON, [word])
    tail = tp.word_ids(tok, word)[1:]
    wp = tp.word_pieces(tok, [word], len(tok))
    logits = torch.full((1, len(tok)), -10.0)
    logits[0, tail] = 10.0
    assert tp.pools_from_ranks(tp.word_ranks(logits, wp), tau=len(tail), shrink=1)[0][0].tolist() == []


def tiny_sentencepiece_with_dummy_prefix():
    """A Llama-style SentencePiece tokenizer ('▁' for spaces, a '▁' prepended to the text), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    text = [" ".join(COMMON[i:i + 12]) for i in range(0, len(COMMON), 3)] * 3
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_dummy_prefix_sentencepiece_gets_the_word_start_pieces():
    """On a tokenizer that prepends '▁' to the text (Llama's), the word after a context word is one '▁word'
    piece (or '▁wo' 'rd'), never a lone '▁' piece that would have to be in the cut too."""
    tok = tiny_sentencepiece_with_dummy_prefix()
    pieces = [tok.convert_ids_to_tokens(tp.word_ids(tok, w)) for w in COMMON]
    good = [p for p in pieces if p[0].startswith("▁") and p[0] != "▁" and "".join(p).lstrip("▁") in COMMON]
    assert len(good) / len(COMMON) >= 0.9
    assert tok.convert_ids_to_tokens(tp.word_ids(tok, "water"))[0] != "▁"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"])
def test_offline_tokenizers_map_common_words_to_their_pieces(name):
    from model_loading import load_tokenizer
    tok = load_tokenizer(name)
    ok = [w for w in COMMON if _maps_to_its_pieces(tok, w)]
    assert len(ok) / len(COMMON) >= 0.9, sorted(set(COMMON) - set(ok))
    # the pool: promoted words in; a word whose pieces are not promoted, and sub-word pieces, out
    promoted = ["water", "river", "island", "music"]
    pool = _pool_of(tok, COMMON + ["understanding", "ing"], promoted)
    assert set(promoted) <= pool and "village" not in pool and "ing" not in pool


@pytest.mark.slow
def test_sentencepiece_word_start_pieces_on_gemma():
    """Gemma-3's SentencePiece adds no dummy prefix: encoding the bare word gives word-internal pieces (no
    '▁'); the word after a context word gets the '▁' piece that a neuron promotes in running text."""
    from model_loading import load_tokenizer
    tok = load_tokenizer("gemma3-270m")
    pieces = tok.convert_ids_to_tokens(tp.word_ids(tok, "water"))
    assert pieces[0].startswith("▁") and "".join(pieces).lstrip("▁") == "water"
    bare = tok.convert_ids_to_tokens(tok("water", add_special_tokens=False)["input_ids"])
    assert not bare[0].startswith("▁")


def test_bad_input_is_refused_before_the_model_loads(monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")
    import model_loading
    monkeypatch.setattr(model_loading, "load_model", no_model)
    monkeypatch.setattr(nt, "config_limits", lambda name: (30, 1536, 576))   # SmolLM2's shape, no files read
    for argv, message in [(["--mode", "hi-x"], "unknown mode hi-x"),
                          (["--layers", "30"], r"--layers 30 is out of range: the model has 30 layers"),
                          (["--layers", "3", "--neuron-ids", "1536"], "out of range for mode hi-c"),
                          (["--layers", "3", "--mode", "lo-i", "--neuron-ids", "576"], "576 residual dimensions"),
                          (["--workers", "0"], "at least one process"),
                          (["--quick", "--full"], "contradict")]:
        with pytest.raises(UserError, match=message):
            nt.main(argv)


def test_tiny_run_end_to_end_and_its_export(tmp_path, monkeypatch):
    """The script on a tiny random GPT-2 whose vocabulary is a toy corpus' words: pools, topics, controls,
    tables, the authors' layout; a second run resumes (nothing to solve)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    import numpy as np
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(6) for j in range(10)]
    docs = [[words[k] for k in rng.choice(20 if d % 2 else 60, size=10)] for d in range(3000)]
    graph = tp.count_cooccurrence(docs, window=5, min_freq=5)
    meta = {"vocab": graph.vocab, "sources": {"toy": {"documents": 3000, "words": 30000}}, "window": 5,
            "min_freq": 5, "key": "toy", "n_windows": graph.n_windows, "n_tokens": graph.n_tokens, "fingerprint": "t"}
    monkeypatch.setattr(tp, "load_cooccurrence", lambda *a, **k: (graph, meta))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[UNK]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=16)).eval()
    import model_loading
    monkeypatch.setattr(model_loading, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(model_loading, "load_tokenizer", lambda *a, **k: tok)
    monkeypatch.setattr(nt, "config_limits", lambda name: None)
    argv = ["--model", "tiny-gpt2", "--layers", "0,1", "--neurons", "3", "--mode", "hi-c,lo-i", "--tau", "30",
            "--kappa", "10,11", "--theta", "0.0,1", "--no-link", "--workers", "2", "--out-dir", str(tmp_path / "out"),
            "--export", str(tmp_path / "export")]
    assert nt.main(argv) == 0
    out = pd.read_json(tmp_path / "out" / "results" / "neuron_topics.json", typ="series")
    summary = out["summary"]
    assert set(summary) == {"real/hi-c", "real/lo-i", "random pools/hi-c", "shuffled down-proj/hi-c"}
    assert summary["real/hi-c"]["pools"] == 12 and out["corpus_words"] == graph.n_tokens
    assert (tmp_path / "out" / "tables" / "neuron_topics.md").exists()
    exported = sorted(p.name for p in (tmp_path / "export" / "tiny-gpt2").rglob("*"))
    assert len([n for n in exported if n.endswith("_topics.csv")]) == 2 * 2 * 3 * 2     # modes x layers x 3 x polarities
    assert {p.name for p in (tmp_path / "export" / "tiny-gpt2").iterdir()} == {"i", "iiii"}
    assert nt.main(argv) == 0                                                         # resumed from the cache
    again = pd.read_json(tmp_path / "out" / "results" / "neuron_topics.json", typ="series")
    assert again["timings"]["pools"] == 0 and again["summary"] == summary


def test_readme_block_names_date_commit_machine_and_command(tmp_path):
    from analysis.report import paste_between_markers
    data = {"timings": {"total_s": 120.0, "cpu_s": 200.0, "pools": 10}, "workers": 2, "model": "m", "layers": [1],
            "corpus_words": 2_940_000, "corpus_windows": 2_640_000, "vocab": 11000, "date": "2026-12-03 14:00 UTC",
            "commit": "abc1234", "machine": "cpu x, 2 cores",
            "summary": {"real/hi-c": {"neurons": 5, "pools": 10, "mean_pool_size": 200.0, "topics_per_pool": 1.5,
                                      "mean_topic_npmi": 0.05, "n_topics": 15, "several_topics_share": 0.4,
                                      "superposed_share": 0.2}}}
    block = nt.readme_block(data, "python neuron_topics.py --full")
    assert "2026-12-03 14:00 UTC" in block and "abc1234" in block and "2 cores" in block and "--full" in block
    assert "2.94M words" in block and "| hi-c | real | 5 | 10 |" in block
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- topics:begin -->\nold\n<!-- topics:end -->\nb\n")
    paste_between_markers(readme, "topics", block)
    text = readme.read_text()
    assert "old" not in text and block.strip() in text and text.startswith("a\n") and text.endswith("b\n")
    readme.write_text("no markers")
    with pytest.raises(UserError, match="no <!-- topics:begin -->"):
        paste_between_markers(readme, "topics", block)


def test_readme_has_the_generated_section_markers():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert text.count("<!-- topics:begin -->") == 1 and text.count("<!-- topics:end -->") == 1
