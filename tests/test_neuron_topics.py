"""neuron_topics.py: NPMI, the star heuristic, the exact step, the four modes, the pool rule, bad input."""
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import neuron_topics as nt
from cli import UserError
from tiny_models import tiny_stock_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


# -- NPMI ---------------------------------------------------------------------------------------------
def test_npmi_on_a_toy_corpus_equals_the_formula_by_hand():
    docs = [["a", "b", "c", "a", "d", "b"], ["c", "d"], ["a", "e", "f", "g", "b", "e", "x"]]
    window = 3
    graph = nt.count_cooccurrence(docs, window=window, min_freq=1)
    # By hand: every window of 3 consecutive words inside a document (a shorter document is one window).
    windows = [set(doc[s:s + window]) for doc in docs for s in range(max(len(doc) - window + 1, 1))]
    assert graph.n_windows == len(windows) == 4 + 1 + 5
    words = ["a", "b", "c", "d", "e", "g"]
    got = graph.npmi([graph.index[w] for w in words])
    for i, j in itertools.combinations(range(len(words)), 2):
        p_a = sum(words[i] in w for w in windows) / len(windows)
        p_b = sum(words[j] in w for w in windows) / len(windows)
        p_ab = sum(words[i] in w and words[j] in w for w in windows) / len(windows)
        want = -1.0 if p_ab == 0 else math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)
        assert got[i, j] == pytest.approx(want, abs=1e-12), (words[i], words[j])
        assert got[j, i] == got[i, j]
    assert got[0, 4] > -1.0 and got[2, 5] == -1.0  # a/e share windows; c/g never do


def test_min_freq_and_min_letters_shape_the_vocabulary():
    graph = nt.count_cooccurrence([["ab", "cat", "cat", "dog"], ["cat", "x"]], window=2, min_freq=2, min_letters=3)
    assert graph.vocab == ["cat"]


# -- star heuristic and exact step ----------------------------------------------------------------------
def _random_npmi(n, seed):
    rng = np.random.default_rng(seed)
    m = rng.uniform(-0.6, 0.8, size=(n, n))
    m = np.triu(m, 1)
    m = m + m.T
    return m


@pytest.mark.parametrize("n,size,seed", [(8, 4, 0), (11, 5, 1), (13, 10, 2), (12, 6, 3)])
def test_exact_selection_equals_brute_force(n, size, seed):
    npmi = _random_npmi(n, seed)
    best = max(itertools.combinations(range(n), size),
               key=lambda c: sum(npmi[i, j] for i, j in itertools.combinations(c, 2)))
    best_value = sum(npmi[i, j] for i, j in itertools.combinations(best, 2))
    got = nt.exact_topic(npmi, size=size, time_limit=60)
    assert got["status"] == "optimal"
    assert got["objective"] == pytest.approx(best_value, abs=1e-6)
    assert sorted(got["nodes"]) == sorted(best)


def test_star_groups_are_disjoint_and_obey_the_thresholds():
    rng = np.random.default_rng(0)
    n = 90
    clusters = rng.integers(0, 4, size=n)
    npmi = np.where(clusters[:, None] == clusters[None, :], rng.uniform(0.05, 0.6, (n, n)), rng.uniform(-0.5, 0.15, (n, n)))
    npmi = np.triu(npmi, 1)
    npmi = npmi + npmi.T
    theta, kappa = (0.2, 0.55), (6, 9)
    groups = nt.star_groups(npmi, theta, kappa)
    assert len(groups) >= 4
    members = [i for g in groups for i in g]
    assert len(members) == len(set(members))                 # disjoint
    edge = (npmi >= theta[0]) & (npmi <= theta[1])
    np.fill_diagonal(edge, False)
    for g in groups:
        assert kappa[0] <= len(g) <= kappa[1]
        centre = g[0]
        for j in g[1:]:
            assert theta[0] <= npmi[centre, j] <= theta[1]   # every member joined to the centre by a kept edge
        assert all(edge[i].sum() >= kappa[0] for i in g)     # nodes of low degree were dropped


def test_pool_topics_scores_are_mean_pairwise_npmi():
    npmi = _random_npmi(20, 5)
    npmi[:12, :12] = np.abs(npmi[:12, :12]) + 0.3
    np.fill_diagonal(npmi, 0)
    groups, topics = nt.pool_topics(npmi, (0.2, 1.0), (10, 16), size=10, time_limit=30)
    assert groups and topics
    for t in topics:
        pairs = list(itertools.combinations(t["nodes"], 2))
        assert len(t["nodes"]) == 10 and set(t["nodes"]) <= set(groups[t["group"]])
        assert t["score"] == pytest.approx(np.mean([npmi[i, j] for i, j in pairs]))


# -- the four modes against a naive computation -----------------------------------------------------------
def _rms(x, norm):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight


def _llama_layer_by_hand(layer, x, cfg):
    """One Llama block on a one-token sequence: attention is o_proj of the (grouped) values."""
    a = layer.self_attn
    h = _rms(x, layer.input_layernorm)
    v = h @ a.v_proj.weight.T                                         # [B, kv_heads * head_dim]
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    v = v.view(len(x), cfg.num_key_value_heads, head_dim)
    v = v.repeat_interleave(cfg.num_attention_heads // cfg.num_key_value_heads, dim=1).reshape(len(x), -1)
    x = x + v @ a.o_proj.weight.T
    h = _rms(x, layer.post_attention_layernorm)
    m = layer.mlp
    return x + (F.silu(h @ m.gate_proj.weight.T) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T


def _gpt2_block_by_hand(block, x, cfg):
    h = F.layer_norm(x, (cfg.n_embd,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    qkv = h @ block.attn.c_attn.weight + block.attn.c_attn.bias
    v = qkv[:, 2 * cfg.n_embd:]
    x = x + v @ block.attn.c_proj.weight + block.attn.c_proj.bias
    h = F.layer_norm(x, (cfg.n_embd,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    return x + block.mlp.act(h @ block.mlp.c_fc.weight + block.mlp.c_fc.bias) @ block.mlp.c_proj.weight + block.mlp.c_proj.bias


def _naive_logits(model, family, mode, layer, ids):
    cfg = model.config
    if family == "llama":
        blocks, by_hand = model.model.layers, _llama_layer_by_hand
        final = lambda x: _rms(x, model.model.norm)  # noqa: E731
        down = lambda l: blocks[l].mlp.down_proj.weight  # noqa: E731  [d, units]
    else:
        blocks, by_hand = model.transformer.h, _gpt2_block_by_hand
        ln = model.transformer.ln_f
        final = lambda x: F.layer_norm(x, (cfg.n_embd,), ln.weight, ln.bias, ln.eps)  # noqa: E731
        down = lambda l: blocks[l].mlp.c_proj.weight.T  # noqa: E731  Conv1D stores [units, d]
    if mode.startswith("hi"):
        x = down(layer)[:, ids].T.clone()
    else:
        x = torch.zeros(len(ids), model.get_output_embeddings().weight.shape[1])
        x[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
    path = {"hi-c": range(layer + 1, len(blocks)), "hi-i": [], "lo-c": range(layer, len(blocks)), "lo-i": [layer]}[mode]
    for l in path:
        x = by_hand(blocks[l], x, cfg)
    return final(x) @ model.get_output_embeddings().weight.T


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", nt.MODES)
def test_each_mode_equals_a_naive_computation(family, mode):
    model = tiny_stock_model(family, seed=3)
    layer = 1
    ids = [0, 3, 7, 20] if mode.startswith("hi") else [0, 5, 31]
    with torch.no_grad():
        got = nt.mode_logits(model, mode, layer, ids)
        want = _naive_logits(model, family, mode, layer, ids)
    assert got.shape == (len(ids), model.config.vocab_size)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_shuffled_control_permutes_each_column_and_restores_the_model():
    model = tiny_stock_model("llama")
    before = [l.mlp.down_proj.weight.detach().clone() for l in model.model.layers]
    with nt.shuffled_down_projections(model):
        for w0, l in zip(before, model.model.layers):
            w = l.mlp.down_proj.weight
            assert not torch.equal(w, w0)
            torch.testing.assert_close(w.sort(dim=0).values, w0.sort(dim=0).values)  # same values per column
    for w0, l in zip(before, model.model.layers):
        assert torch.equal(l.mlp.down_proj.weight, w0)


# -- word pools ------------------------------------------------------------------------------------------
def test_pools_shrink_the_cut_until_at_most_tau_words():
    # word ranks (the cut a word needs): several words can need the same cut (shared pieces, two spellings)
    ranks = torch.tensor([[0, 1, 1, 1, 2, 2, 3, 9], [0, 0, 0, 0, 0, 9, 9, 9]], dtype=torch.int32)
    (members, cut), (empty, no_cut) = nt.pools_from_ranks(ranks, tau=4, shrink=1)
    assert cut == 2 and members.tolist() == [0, 1, 2, 3]        # cuts 4 and 3 hold 7 and 6 words > tau
    assert no_cut == 0 and empty.tolist() == []                  # even the smallest cut holds 5 > 4 words
    (members, cut), _ = nt.pools_from_ranks(ranks, tau=4, shrink=3)
    assert cut == 1 and members.tolist() == [0]                  # cuts 4, 1: the step is the shrink
    (members, cut), _ = nt.pools_from_ranks(ranks, tau=900, shrink=50)
    assert cut == 900 and members.tolist() == list(range(8))


def test_word_with_unknown_pieces_is_left_out_and_no_overlap_is_an_error():
    tok = tiny_tokenizer()
    wp = nt.word_pieces(tok, ["w5", "hello"], vocab_size=128)
    assert (wp.pieces[0, 0] < 128).any() and not (wp.pieces[1] < 128).any()
    with pytest.raises(UserError, match="share no vocabulary"):
        nt.word_pieces(tok, ["hello", "world"], vocab_size=128)


@pytest.mark.slow
def test_subword_rule_on_smollm2_tokenizer_keeps_whole_words_only():
    from model_loading import load_tokenizer
    tok = load_tokenizer("smollm2-135m")
    words = ["cat", "dog", "understanding", "immunohistochemistry", "bioluminescence", "ing", "ology", "the"]
    vocab_size = len(tok)
    wp = nt.word_pieces(tok, words, vocab_size)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]
    long_word, partial = ids(" immunohistochemistry"), ids(" bioluminescence")
    assert len(long_word) == 3 and len(partial) == 3              # real multi-piece words
    top = set(ids(" cat") + ids(" dog") + long_word + partial[1:] + ids("ing") + ids("ology") + ids("understanding"))
    # Word-internal pieces (no word-start marker: "ing", "ology", "understanding") and the tail of
    # " bioluminescence" are in the top set, but " ing", " ology", " understanding", " bi" are not: those
    # words must stay out.
    assert not set(ids(" ing")) <= top and not set(ids(" understanding")) <= top
    logits = torch.full((1, vocab_size), -10.0)
    logits[0, sorted(top)] = 10.0
    ranks = nt.word_ranks(logits, wp)
    members, cut = nt.pools_from_ranks(ranks, tau=len(top), shrink=1)[0]
    pool = {words[i] for i in members}
    assert pool == {"cat", "dog", "immunohistochemistry"}
    for w in pool:
        assert set(ids(" " + w)) <= top or set(ids(" " + w.capitalize())) <= top


# -- bad input ---------------------------------------------------------------------------------------------
def test_layer_or_neuron_out_of_range_is_a_user_error():
    model = tiny_stock_model("llama")
    with pytest.raises(UserError, match=r"layer 9 is out of range.*4 layers"):
        nt.mode_logits(model, "hi-i", 9, [0])
    with pytest.raises(UserError, match=r"out of range for mode hi-c.*64 MLP units"):
        nt.mode_logits(model, "hi-c", 1, [64])
    with pytest.raises(UserError, match=r"out of range for mode lo-i.*32 residual"):
        nt.mode_logits(model, "lo-i", 1, [-1])


def test_empty_corpus_is_a_user_error():
    with pytest.raises(UserError, match="corpus is empty"):
        nt.load_cooccurrence([])
    with pytest.raises(UserError, match="no word with at least"):
        nt.count_cooccurrence([[], []])


def test_missing_solver_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscipopt", None)   # import pyscipopt now raises ImportError
    with pytest.raises(UserError, match=r"pyscipopt.*pip install pyscipopt=="):
        nt.exact_topic(_random_npmi(12, 0), size=10)


# The command line's bad-input cases are rows of tests/test_bad_input.py's table.


