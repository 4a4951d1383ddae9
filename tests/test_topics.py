"""topics.py: the authors' three rules on hand-computed cases (pair floor, a rejected star's words, epsilon
smoothing), NPMI, the star heuristic, the exact step against brute force, the four modes against a naive
computation, the pool rule, parallel pools, the cache's keys, the export in the authors' layout."""
import itertools
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import topics as tp
from cli import UserError
from tiny_models import tiny_stock_model, tiny_tokenizer

EPS = 1e-12


def _windows(docs, window):
    """By hand: every window of `window` consecutive words inside a document (a shorter document is one)."""
    return [set(doc[s:s + window]) for doc in docs for s in range(max(len(doc) - window + 1, 1))]


# -- NPMI: the formula, smoothing, the floors -----------------------------------------------------------
def test_npmi_with_epsilon_smoothing_equals_the_formula_by_hand():
    docs = [["a", "b", "c", "a", "d", "b"], ["c", "d"], ["a", "e", "f", "g", "b", "e", "x"]]
    window = 3
    graph = tp.count_cooccurrence(docs, window=window, min_freq=1)
    windows = _windows(docs, window)
    assert graph.n_windows == len(windows) == 4 + 1 + 5
    words = ["a", "b", "c", "d", "e", "g"]
    got = graph.npmi([graph.index[w] for w in words])                  # the authors' default: smooth=True
    raw = graph.npmi([graph.index[w] for w in words], smooth=False)    # the departure: -1 when never together
    n = len(windows)
    for i, j in itertools.combinations(range(len(words)), 2):
        p_a = sum(words[i] in w for w in windows) / n
        p_b = sum(words[j] in w for w in windows) / n
        p_ab = sum(words[i] in w and words[j] in w for w in windows) / n + EPS   # npmi(..., smooth=True)
        assert got[i, j] == pytest.approx(math.log(p_ab / (p_a * p_b)) / -math.log(p_ab), rel=1e-12)
        assert got[j, i] == got[i, j]
        if p_ab == EPS:
            assert raw[i, j] == -1.0
    # c and g never share a window: log(eps / (p_c p_g)) / -log(eps), not -1
    p_c, p_g = 4 / n, 3 / n      # c in 3 windows of the first document and the second; g in 3 of the third
    assert got[2, 5] == pytest.approx(math.log(EPS / (p_c * p_g)) / -math.log(EPS), rel=1e-12)
    assert -0.95 < got[2, 5] < -0.9


def test_pair_floor_two_rare_words_meeting_by_chance_are_no_edge():
    # 1000 one-window documents: r1 in 20 windows, r2 in 20, both in 3 (chance); the rest filler.
    docs = [["r1"]] * 17 + [["r2"]] * 17 + [["r1", "r2"]] * 3 + [["filler"]] * 963
    graph = tp.count_cooccurrence(docs, window=10, min_freq=5)
    ids = [graph.index["r1"], graph.index["r2"]]
    n = 1000
    assert graph.n_windows == n and graph.min_freq == 5
    no_floor = graph.npmi(ids, floor=0)[0, 1]
    want = math.log((3 / n + EPS) / (20 / n) ** 2) / -math.log(3 / n + EPS)     # 0.347: above theta_l = 0.1
    assert no_floor == pytest.approx(want, rel=1e-12) and no_floor > 0.3
    floored = graph.npmi(ids)[0, 1]       # default floor = min_freq = 5 windows > 3: the count is zero
    assert floored == pytest.approx(math.log(EPS / (20 / n) ** 2) / -math.log(EPS), rel=1e-12)
    assert floored < 0
    assert graph.npmi(ids, floor=3)[0, 1] == pytest.approx(want, rel=1e-12)   # 3 >= 3: kept, as v >= min_freq
    # In a pool, the chance pair is an edge of the star graph only without the floor
    assert tp.star_groups(graph.npmi(ids, floor=0), (0.1, 1), (1, 2)) == [[0, 1]]
    assert tp.star_groups(graph.npmi(ids), (0.1, 1), (1, 2)) == []


def test_a_word_below_the_floor_scores_zero_with_every_word():
    docs = [["a", "b"]] * 6 + [["c", "a"]] * 2 + [["z"]] * 2
    graph = tp.count_cooccurrence(docs, window=10, min_freq=1)
    ids = [graph.index[w] for w in ("a", "b", "c")]
    got = graph.npmi(ids, floor=4)            # c is in 2 windows < 4: p_c = 0, NPMI 0 (the authors' default_to)
    assert got[0, 2] == 0.0 and got[1, 2] == 0.0
    n = 10
    assert got[0, 1] == pytest.approx(math.log((6 / n + EPS) / (8 / n * 6 / n)) / -math.log(6 / n + EPS))


def test_min_freq_and_min_letters_shape_the_vocabulary():
    graph = tp.count_cooccurrence([["ab", "cat", "cat", "dog"], ["cat", "x"]], window=2, min_freq=2, min_letters=3)
    assert graph.vocab == ["cat"]


def test_floor_that_no_word_reaches_is_a_user_error():
    graph = tp.count_cooccurrence([["a", "b"], ["a"]], window=2, min_freq=1)
    tp.check_floor(graph, None)
    with pytest.raises(UserError, match="no word of the reference corpus is in 50 or more windows"):
        tp.check_floor(graph, 50)
    with pytest.raises(UserError, match="no word with at least 9 occurrences"):
        tp.count_cooccurrence([["a", "b"]], min_freq=9)
    with pytest.raises(UserError, match="corpus is empty"):
        tp.load_cooccurrence([])


# -- the star heuristic ---------------------------------------------------------------------------------
def _graph(n, edges):
    m = np.full((n, n), -0.5)
    for (i, j), v in edges.items():
        m[i, j] = m[j, i] = v
    np.fill_diagonal(m, 0.0)
    return m


# By hand (kappa = (3, 4), theta = (0.1, 1)): every node has degree 3; stars by mean edge NPMI:
# 0 (0.9), 4 (0.8), 1 and 2 (0.667), 3 (0.567), 5 (0.533), 6 (0.5), 7 (0.367).
#   0 takes its 3 neighbours: group [0, 1, 2, 3], kept.
#   4's only unused neighbour is 5: [4, 5] is 2 < 3 words, rejected; the authors mark 4 and 5 used.
#   6: its neighbours 3 and 5 are used, [6, 7] is rejected too. One group.
# Freeing a rejected star's words instead: 5 is then a centre with 4, 6, 7 unused: [5, 4, 6, 7], kept.
STAR_EDGES = {(0, 1): 0.9, (0, 2): 0.9, (0, 3): 0.9, (4, 1): 0.8, (4, 2): 0.8, (4, 5): 0.8, (1, 2): 0.3,
              (6, 5): 0.5, (6, 7): 0.5, (6, 3): 0.5, (3, 7): 0.3, (5, 7): 0.3}


def test_star_rule_a_rejected_stars_words_are_not_taken_by_a_later_star():
    npmi = _graph(8, STAR_EDGES)
    assert tp.star_groups(npmi, (0.1, 1.0), (3, 4)) == [[0, 1, 2, 3]]
    assert tp.star_groups(npmi, (0.1, 1.0), (3, 4), free_rejected=True) == [[0, 1, 2, 3], [5, 4, 6, 7]]


def test_star_groups_drop_low_degree_nodes_and_cap_the_size():
    # node 4 has degree 1 < kappa_l: dropped; centre 0 has 5 neighbours, kappa_u = 4 keeps the best 3
    edges = {(0, j): 0.9 - 0.1 * j for j in range(1, 6)}
    edges.update({(i, j): 0.2 for i in (1, 2, 3, 5) for j in (1, 2, 3, 5) if i < j})
    edges[(4, 6)] = 0.9
    npmi = _graph(7, edges)
    groups = tp.star_groups(npmi, (0.1, 1.0), (3, 4))
    assert groups[0] == [0, 1, 2, 3]
    assert all(4 not in g and 6 not in g for g in groups)


def test_star_groups_are_disjoint_and_obey_the_thresholds():
    rng = np.random.default_rng(0)
    n = 90
    clusters = rng.integers(0, 4, size=n)
    npmi = np.where(clusters[:, None] == clusters[None, :], rng.uniform(0.05, 0.6, (n, n)), rng.uniform(-0.5, 0.15, (n, n)))
    npmi = np.triu(npmi, 1)
    npmi = npmi + npmi.T
    theta, kappa = (0.2, 0.55), (6, 9)
    for free in (False, True):
        groups = tp.star_groups(npmi, theta, kappa, free_rejected=free)
        assert len(groups) >= 3
        members = [i for g in groups for i in g]
        assert len(members) == len(set(members))                 # disjoint
        edge = (npmi >= theta[0]) & (npmi <= theta[1])
        np.fill_diagonal(edge, False)
        for g in groups:
            assert kappa[0] <= len(g) <= kappa[1]
            for j in g[1:]:
                assert theta[0] <= npmi[g[0], j] <= theta[1]     # every member joined to the centre by a kept edge
            assert all(edge[i].sum() >= kappa[0] for i in g)     # nodes of low degree were dropped
    assert len(tp.star_groups(npmi, theta, kappa)) <= len(tp.star_groups(npmi, theta, kappa, free_rejected=True))


# -- the exact step -------------------------------------------------------------------------------------
def _random_npmi(n, seed):
    rng = np.random.default_rng(seed)
    m = np.triu(rng.uniform(-0.6, 0.8, size=(n, n)), 1)
    return m + m.T


@pytest.mark.parametrize("n,size,seed", [(8, 4, 0), (11, 5, 1), (13, 10, 2), (12, 6, 3)])
def test_exact_selection_equals_brute_force(n, size, seed):
    npmi = _random_npmi(n, seed)
    best = max(itertools.combinations(range(n), size),
               key=lambda c: sum(npmi[i, j] for i, j in itertools.combinations(c, 2)))
    best_value = sum(npmi[i, j] for i, j in itertools.combinations(best, 2))
    got = tp.exact_topic(npmi, size=size, time_limit=60)
    assert got["status"] == "optimal"
    assert got["objective"] == pytest.approx(best_value, abs=1e-6)
    assert sorted(got["nodes"]) == sorted(best)


def test_pool_topics_scores_are_mean_pairwise_npmi():
    npmi = _random_npmi(20, 5)
    npmi[:12, :12] = np.abs(npmi[:12, :12]) + 0.3
    np.fill_diagonal(npmi, 0)
    groups, found = tp.pool_topics(npmi, (0.2, 1.0), (10, 16), size=10, time_limit=30)
    assert groups and found
    for t in found:
        pairs = list(itertools.combinations(t["nodes"], 2))
        assert len(t["nodes"]) == 10 and set(t["nodes"]) <= set(groups[t["group"]])
        assert t["score"] == pytest.approx(np.mean([npmi[i, j] for i, j in pairs]))


def test_missing_solver_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscipopt", None)   # import pyscipopt now raises ImportError
    with pytest.raises(UserError, match=r"pyscipopt.*pip install pyscipopt=="):
        tp.exact_topic(_random_npmi(12, 0), size=10)


# -- the four modes against a naive computation -----------------------------------------------------------
def _rms(x, norm):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight


def _llama_layer_by_hand(layer, x, cfg):
    """One Llama block on a one-token sequence: attention is o_proj of the (grouped) values."""
    a = layer.self_attn
    h = _rms(x, layer.input_layernorm)
    v = h @ a.v_proj.weight.T
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
@pytest.mark.parametrize("mode", tp.MODES)
def test_each_mode_equals_a_naive_computation(family, mode):
    model = tiny_stock_model(family, seed=3)
    layer = 1
    ids = [0, 3, 7, 20] if mode.startswith("hi") else [0, 5, 31]
    with torch.no_grad():
        got = tp.mode_logits(model, mode, layer, ids)
        want = _naive_logits(model, family, mode, layer, ids)
    assert got.shape == (len(ids), model.config.vocab_size)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_shuffled_control_permutes_each_column_and_restores_the_model():
    model = tiny_stock_model("llama")
    before = [l.mlp.down_proj.weight.detach().clone() for l in model.model.layers]
    fingerprint = tp.model_fingerprint(model)
    with tp.shuffled_down_projections(model):
        assert tp.model_fingerprint(model) != fingerprint          # never the real model's cache folder
        for w0, l in zip(before, model.model.layers):
            w = l.mlp.down_proj.weight
            assert not torch.equal(w, w0)
            torch.testing.assert_close(w.sort(dim=0).values, w0.sort(dim=0).values)  # same values per column
    for w0, l in zip(before, model.model.layers):
        assert torch.equal(l.mlp.down_proj.weight, w0)
    assert tp.model_fingerprint(model) == fingerprint


def test_layer_or_neuron_out_of_range_and_unknown_mode_are_user_errors():
    model = tiny_stock_model("llama")
    with pytest.raises(UserError, match=r"layer 9 is out of range.*4 layers"):
        tp.mode_logits(model, "hi-i", 9, [0])
    with pytest.raises(UserError, match=r"out of range for mode hi-c.*64 MLP units"):
        tp.mode_logits(model, "hi-c", 1, [64])
    with pytest.raises(UserError, match=r"out of range for mode lo-i.*32 residual"):
        tp.mode_logits(model, "lo-i", 1, [-1])
    with pytest.raises(UserError, match="unknown mode 'hi-x'"):
        tp.mode_logits(model, "hi-x", 1, [0])


# -- word pools ------------------------------------------------------------------------------------------
def test_pools_shrink_the_cut_until_at_most_tau_words():
    ranks = torch.tensor([[0, 1, 1, 1, 2, 2, 3, 9], [0, 0, 0, 0, 0, 9, 9, 9]], dtype=torch.int32)
    (members, cut), (empty, no_cut) = tp.pools_from_ranks(ranks, tau=4, shrink=1)
    assert cut == 2 and members.tolist() == [0, 1, 2, 3]        # cuts 4 and 3 hold 7 and 6 words > tau
    assert no_cut == 0 and empty.tolist() == []                  # even the smallest cut holds 5 > 4 words
    (members, cut), _ = tp.pools_from_ranks(ranks, tau=4, shrink=3)
    assert cut == 1 and members.tolist() == [0]                  # cuts 4, 1: the step is the shrink
    (members, cut), _ = tp.pools_from_ranks(ranks, tau=900, shrink=50)
    assert cut == 900 and members.tolist() == list(range(8))


def test_word_with_unknown_pieces_is_left_out_and_no_overlap_is_an_error():
    tok = tiny_tokenizer()
    wp = tp.word_pieces(tok, ["w5", "hello"], vocab_size=128)
    assert (wp.pieces[0, 0] < 128).any() and not (wp.pieces[1] < 128).any()
    with pytest.raises(UserError, match="share no vocabulary"):
        tp.word_pieces(tok, ["hello", "world"], vocab_size=128)


def test_a_word_is_in_the_pool_only_when_all_its_pieces_are_in_the_cut():
    tok = tiny_tokenizer()          # word-level: "w1 w2" is one word per piece; a 3-piece "word" via spaces
    wp = tp.word_pieces(tok, ["w1", "w2", "w3"], vocab_size=128)
    logits = torch.full((1, 128), -5.0)
    ids = {w: tok.convert_tokens_to_ids(w) for w in ("w1", "w2", "w3")}
    logits[0, ids["w1"]], logits[0, ids["w3"]] = 3.0, 2.0
    members, cut = tp.pools_from_ranks(tp.word_ranks(logits, wp), tau=2, shrink=1)[0]
    assert [wp.words[i] for i in members] == ["w1", "w3"] and cut == 2


# -- parallel pools and the cache ----------------------------------------------------------------------------
def _toy_graph():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(40)]
    docs = [[vocab[j] for j in rng.choice(12 if k % 2 else 40, size=8)] for k in range(3000)]
    return tp.count_cooccurrence(docs, window=4, min_freq=5)


def _jobs(root, graph, n=6):
    rng = np.random.default_rng(1)
    return [(tp.out_stem(root, "toy", "hi-c", 0, k, "pos"), [graph.vocab[i] for i in rng.permutation(len(graph.vocab))[:30]], 30)
            for k in range(n)]


def test_pools_solved_in_two_processes_equal_one_process(tmp_path):
    graph = _toy_graph()
    settings = tp.Settings(theta=(0.05, 1.0), kappa=(10, 11), time_limit=30)   # small groups: quick, optimal
    a, b = tmp_path / "a", tmp_path / "b"
    seconds = tp.solve_pools(_jobs(a, graph), graph, settings, workers=1)
    assert len(seconds) == 6
    tp.solve_pools(_jobs(b, graph), graph, settings, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.csv"))
    assert len(files) == 18
    n_topics = 0
    for rel in files:
        fa, fb = pd.read_csv(a / rel), pd.read_csv(b / rel)
        if "solve_s" in fa:
            fa, fb = fa.drop(columns="solve_s"), fb.drop(columns="solve_s")
            n_topics += len(fa)
        pd.testing.assert_frame_equal(fa, fb)
    assert n_topics > 0
    with pytest.raises(UserError, match="at least one process"):
        tp.solve_pools(_jobs(a, graph), graph, settings, workers=0)


def test_run_folders_are_keyed_on_every_setting_and_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path))
    meta = {"key": "boolq_w10_f20_v40000_l3", "fingerprint": "abc"}
    base = tp.Settings()
    root = tp.settings_root(base, meta)
    assert tp.settings_root(tp.Settings(), dict(meta)) == root             # same settings: same folder (resume)
    changed = [tp.Settings(tau=800), tp.Settings(shrink=25), tp.Settings(theta=(0.2, 1.0)), tp.Settings(kappa=(10, 16)),
               tp.Settings(topic_size=8), tp.Settings(time_limit=3.0), tp.Settings(pair_floor=0),
               tp.Settings(smooth=False), tp.Settings(free_rejected=True), tp.Settings(spellings=("word", "Word")),
               tp.Settings(seed=1)]
    assert {f.name for f in base.__dataclass_fields__.values()} <= {f for s in changed for f, v in s.key().items()
                                                                    if v != base.key()[f]}   # each field is varied
    roots = {tp.settings_root(s, meta) for s in changed}
    roots |= {tp.settings_root(base, {**meta, "fingerprint": "abd"}), tp.settings_root(base, {**meta, "key": "x"})}
    assert len(roots) == len(changed) + 2 and root not in roots
    settings_json = (root / "settings.json").read_text()
    assert '"corpus_fingerprint": "abc"' in settings_json and '"pair_floor": null' in settings_json


def test_a_stale_cache_is_never_reported_as_current(tmp_path, monkeypatch):
    """A run, then the same run (nothing to solve: resumed), then changed settings or corpus: new folders, all
    pools solved again, and the new rows differ where the setting matters."""
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path))
    graph = _toy_graph()
    meta = {"key": "toy", "fingerprint": "1"}
    first = tp.Settings(theta=(0.05, 1.0), kappa=(10, 10), time_limit=30)
    root = tp.settings_root(first, meta)
    tp.solve_pools(_jobs(root, graph), graph, first, workers=1)
    assert all(tp.pool_done(stem) for stem, _, _ in _jobs(root, graph))
    stricter = tp.Settings(theta=(0.9, 1.0), kappa=(10, 10), time_limit=30)
    root2 = tp.settings_root(stricter, meta)
    assert root2 != root and not any(tp.pool_done(stem) for stem, _, _ in _jobs(root2, graph))
    tp.solve_pools(_jobs(root2, graph), graph, stricter, workers=1)
    before = sum(len(pd.read_csv(p)) for p in root.rglob("*_topics.csv"))
    after = sum(len(pd.read_csv(p)) for p in root2.rglob("*_topics.csv"))
    assert before > 0 and after == 0                      # theta_l = 0.9 leaves no edge: the stale rows are not reused
    root3 = tp.settings_root(first, {**meta, "fingerprint": "2"})   # same settings, other corpus counts
    assert root3 not in (root, root2) and not any(tp.pool_done(stem) for stem, _, _ in _jobs(root3, graph))


# -- the authors' file layout, read back with their format -------------------------------------------------------
def _read_csv_as_they_do(path):
    """algo/utils.read_csv: no header; an empty file is an empty list."""
    try:
        return pd.read_csv(path, header=None).values
    except pd.errors.EmptyDataError:
        return []


def test_export_in_the_authors_layout_reads_back(tmp_path):
    vocab = ["zebra", "apple", "moon", "sun", "river", "stone", "tree", "cloud", "rain", "wind", "fire", "snow"]
    root = tmp_path / "runs"
    words = vocab[:11]
    groups = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    found = [{"group": 0, "nodes": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "score": 0.125, "status": "optimal", "gap": 0.0,
              "solve_s": 0.1}]
    tp.save_pool(tp.out_stem(root, "m-1", "hi-c", 3, 226, "pos"), words, 900, groups, found)
    tp.save_pool(tp.out_stem(root, "m-1", "lo-i", 0, 5, "neg"), ["sun", "moon"], 650, [], [])
    n = tp.export_authors_layout(root, "m-1", tmp_path / "out", "135M", vocab)
    assert n == 2
    id2vocab = dict(enumerate((tmp_path / "out" / "vocab.txt").read_text().split()))   # their index_vocab: sorted
    assert list(id2vocab.values()) == sorted(vocab)
    stem = tmp_path / "out" / "135M" / "i" / "3_226_pos"
    lines = _read_csv_as_they_do(f"{stem}_topics.csv")                                    # their read_topics
    read = [([id2vocab[int(w)] for w in x.split()], float(s)) for x, s in zip(lines[:, 0], lines[:, 1])]
    assert read == [(vocab[1:11], 0.125)]
    lines = _read_csv_as_they_do(f"{stem}_isets.csv")                                     # their read_isets
    assert [[id2vocab[int(w)] for w in x.split()] for x in lines[:, 0]] == [words]
    with open(f"{stem}.pkl", "rb") as f:
        assert [id2vocab[i] for i in pickle.load(f)] == words
    empty = tmp_path / "out" / "135M" / "iiii" / "0_5_neg"
    assert _read_csv_as_they_do(f"{empty}_topics.csv") == [] and _read_csv_as_they_do(f"{empty}_isets.csv") == []
    assert Path(f"{empty}.pkl").exists()
