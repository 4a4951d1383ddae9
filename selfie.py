"""SelfIE: ask the model what one of its hidden states means (Chen, Vondrick, Mao, ICML 2024).

    python selfie.py --prompt "The capital of France is Paris" --layers 5,15,25 --tokens last
    python selfie.py --json examples.json --interpretation-prompt repeat       # the seed's input format
    python selfie.py --dataset rtp --limit 20 --tokens last --layers 0-30:5 ... (see --help)
    python selfie.py --evaluate [--quick | --full]  # the measured evaluation (run.sh runs it)

Interpreting: every prompt runs once (its greedy answer is kept as ``prompt_output``); the hidden state
of each chosen token at each chosen layer (``hidden_states[l]``: 0 = embeddings, L = after the final norm)
is written over the placeholders of an interpretation prompt at the input of decoder layer
INSERT_LAYER, and the model generates. The interpretation prompt is the model's chat template with the
placeholders as the user message and the answer begun ("Sure, I will summarize the message:"); the
placeholders' positions are counted with the model's own tokenizer. Many states share one generate
call (the interpretation prompt is the same for all, so the batch needs no padding and the text before
the placeholders is computed once). Output: a CSV with the seed's columns (name, prompt, prompt_output,
layer_idx, token_idx, repeat_prompt, repeat_prompt_name, interpretation, interpretation_weights,
interpretation_prob) plus ``token`` and ``interpretation_text``; ``interpretation`` holds the token ids,
``interpretation_weights`` each token's relevancy (probability with the insertion minus without, teacher
forced) and ``interpretation_prob`` its probability with the insertion. The CSV is written after every
batch; a rerun with the same settings resumes.

Evaluating (--evaluate, on the embedded SmolLM2, which cannot summarise: tasks with a right answer):
  identity   EVAL_WORDS single-token words in short neutral sentences; each word's state at every layer
             is interpreted with the "repeat" prompt; recovered = the word among the generated words.
             Controls: a random vector of the same norm (RANDOM_WORDS words, every layer) and the
             placeholder's own state (no insertion: the bare interpretation prompt).
  toxicity   the last token of held-out toxic (rtp/slurs) and clean (comments, domains) prompts, every
             TOX_LAYER_STRIDE-th layer, "summarize" prompt; the interpretation's alt-profanity-check score
             against the prompt's label (ROC-AUC per layer), beside a cross-validated logistic regression
             on the same prompts' spline features (model.spline_features).
  examples   a few interpretations per category with relevancy-weighted tokens.
Interpretations are cached under results/selfie/<model>/ (resumable); tables/selfie_*.md|tex,
figures/selfie_identity.png, results/selfie.json and results/selfie.md (the RESULTS.md section).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cli import UserError, layer_spec, output_lock, parse_layer_spec, positive_int, probability, run_main
from self_interpret import MODES, generate_interpret, prefix_cache, token_probabilities

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("selfie")

# -- settings (flags override) -----------------------------------------------------------------------
MODEL = "smollm2-135m"
INTERPRETATION_PROMPT = "summarize"   # summarize, repeat or object (INTERPRETATION_PROMPTS)
N_PLACEHOLDERS = 5                    # the original's five "_"
PLACEHOLDER = "_"
INSERT_LAYER = 1                      # k: the original's default (input of decoder layer 1)
OVERLAY_STRENGTH = 1.0
REPLACING_MODE = "normalized"
LAYERS = "all"                        # hidden_states indices, 0..L
TOKENS = "all"                        # token positions of each prompt: all, last, last-N, a-b, a,b
MAX_NEW_TOKENS = 20                   # interpretation length
ANSWER_TOKENS = 30                    # prompt_output: the model's greedy answer to the prompt itself
BATCH_SIZE = 64                       # states per generate call
OUT = "results/selfie/interpretations.csv"

# --evaluate (sized for about 2.5 min of the main job on 2 CPU cores; --full is the large sweep)
EVAL_WORDS = 100                      # identity: words, each at every layer
EVAL_PLACEHOLDERS = 1                 # one word, one placeholder
EVAL_NEW_TOKENS = 5                   # SmolLM2 answers "\n\nword" (or "\n\n\"word"): 5 tokens reach the word
RANDOM_WORDS = 25                     # the random-vector control: words (every layer)
TOX_PER_SOURCE = 8                    # toxicity: held-out prompts from each of rtp:toxic, slurs, comments:clean and
TOX_CLEAN_DOMAINS = ("pubmed", "code", "legal", "questions")   # 2 from each clean domain (= TOX_PER_SOURCE)
TOX_LAYER_STRIDE = 5                  # every 5th hidden state: 0, 5, ..., 30
TOX_NEW_TOKENS = 8
TOX_MAX_TOKENS = 48                   # prompts cut to their first 48 tokens (the last token is interpreted)
EXAMPLES_PER_CATEGORY = 3
EVAL_SEED = 0
EVAL_DIR = "results/selfie"
QUICK = dict(EVAL_WORDS=6, RANDOM_WORDS=2, TOX_PER_SOURCE=2, TOX_LAYER_STRIDE=15, EXAMPLES_PER_CATEGORY=1,
             EVAL_DIR="results/selfie/quick")
FULL = dict(EVAL_WORDS=10_000, RANDOM_WORDS=10_000,   # every single-token word of WORDS
            TOX_PER_SOURCE=40, TOX_LAYER_STRIDE=1,
            EVAL_DIR="results/selfie/full")

# The answer each interpretation prompt begins (the original's three); the placeholders are the user turn.
INTERPRETATION_PROMPTS = {
    "summarize": "Sure, I will summarize the message:",
    "repeat": "Sure, I will repeat the message:",
    "object": "The object you said is:",
}

# Common concrete nouns and everyday words for the identity test; only those the tokenizer keeps as one
# token (with a leading space) are used, the first EVAL_WORDS of them.
WORDS = """apple table river garden window doctor teacher music winter summer mountain ocean bread coffee
chair pencil horse tiger rabbit monkey flower forest island bridge castle engine rocket camera guitar piano
violin dragon wizard pizza cheese butter sugar honey lemon orange banana cherry tomato potato carrot onion
pepper salt jacket shirt shoe hat glove ring watch phone computer keyboard mouse printer paper book letter
novel poem story movie school church hospital hotel office market station airport train plane ship boat
truck bicycle road street city village country king queen prince soldier farmer lawyer nurse driver pilot
artist singer dancer student baby mother father brother sister friend money gold silver iron stone glass
water fire wind snow rain cloud storm moon star planet earth sun sky tree grass leaf seed egg milk wine beer
tea soup rice meat chicken fish bird snake whale shark lion bear wolf fox deer sheep cow pig duck""".split()
CONTEXTS = ("I saw the {} yesterday.", "There is a {} here.", "We talked about the {}.",
            "She bought a {} today.", "The {} was on the left.", "He wrote about the {} again.")


# -- interpretation prompts -------------------------------------------------------------------------
@dataclass
class InterpretationPrompt:
    name: str
    ids: list[int]
    positions: list[int]        # the placeholders (indices into ids)
    text: str                   # the decoded prompt, for the CSV

    @property
    def prefix_length(self) -> int:
        return self.positions[0]


def _with_leading_specials(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with the special tokens the tokenizer puts in front (BOS), none after it."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = tokenizer(text, add_special_tokens=True)["input_ids"]
    for start in range(len(special) - len(plain) + 1):
        if special[start:start + len(plain)] == plain:
            return special[:start + len(plain)]
    return plain


def build_interpretation_prompt(tokenizer, name: str = INTERPRETATION_PROMPT, n_placeholders: int = N_PLACEHOLDERS,
                                chat_template: bool = True, placeholder: str = PLACEHOLDER) -> InterpretationPrompt:
    """The interpretation prompt's token ids and the positions of its placeholders.

    With a chat template the placeholders are the user's message and the answer starts with the named
    prompt's text; the template holds its own special tokens. Without one (or a tokenizer without a
    template) it is the original's ``[INST] _ _ _ [/INST] answer``, with the BOS the tokenizer adds, if any.
    The ids are put together piece by piece, so the positions are exact whatever the tokenizer merges."""
    if name not in INTERPRETATION_PROMPTS:
        raise UserError(f"unknown interpretation prompt {name!r}: choose one of {', '.join(INTERPRETATION_PROMPTS)}")
    if n_placeholders < 1:
        raise UserError("the interpretation prompt needs at least one placeholder: pass --placeholders 1 or more")
    marker = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(marker) != 1:
        raise UserError(f"the placeholder {placeholder!r} is {len(marker)} tokens for this tokenizer: choose a "
                        "one-token placeholder")
    answer = INTERPRETATION_PROMPTS[name]
    if chat_template and getattr(tokenizer, "chat_template", None):
        sentinel = "\x00PLACEHOLDERS\x00"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False,
                                                 add_generation_prompt=True)
        before, after = rendered.split(sentinel)
        head = tokenizer(before, add_special_tokens=False)["input_ids"]
        tail = tokenizer(after + answer, add_special_tokens=False)["input_ids"]
    else:
        head = _with_leading_specials(tokenizer, "[INST]")
        tail = tokenizer(" [/INST] " + answer, add_special_tokens=False)["input_ids"]
    ids = head + marker * n_placeholders + tail
    positions = list(range(len(head), len(head) + n_placeholders))
    return InterpretationPrompt(name, ids, positions, tokenizer.decode(ids))


# -- hidden states of the prompts ------------------------------------------------------------------
def encode_prompt(tokenizer, prompt: str, raw: bool, chat_template: bool = True, max_tokens: int | None = None):
    """Token ids of a prompt: raw text with the tokenizer's special tokens, or (raw False) the chat template
    with the prompt as the user message (the seed's [INST] PROMPT [/INST])."""
    if not raw and chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt if raw else f"[INST] {prompt} [/INST]")["input_ids"]
    return ids[:max_tokens] if max_tokens else ids


def _left_padded(rows: list[list[int]], pad_id: int):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


@torch.no_grad()
def hidden_states_at(model, ids: list[int], layers: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(layers), len(tokens), d]: ``hidden_states[l][token]`` of one prompt."""
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    return torch.stack([out.hidden_states[l][0, tokens] for l in layers]).float().cpu()


def stop_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def _cut(row: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stops:
            return row[:i]
    return row


@torch.no_grad()
def answer(model, tokenizer, ids: list[int], max_new_tokens: int = ANSWER_TOKENS) -> str:
    """The model's greedy answer to a prompt (the CSV's prompt_output)."""
    device = model.get_input_embeddings().weight.device
    x = torch.tensor([ids], device=device)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(_cut(out[0, len(ids):].tolist(), stop_ids(model, tokenizer)), skip_special_tokens=True)


# -- interpreting many states in one generate call --------------------------------------------------
@torch.no_grad()
def interpret_states(model, tokenizer, prompt: InterpretationPrompt, states: torch.Tensor | None, *,
                     n_rows: int | None = None, insert_layer: int = INSERT_LAYER,
                     overlay_strength: float = OVERLAY_STRENGTH, replacing_mode: str = REPLACING_MODE,
                     max_new_tokens: int = MAX_NEW_TOKENS, with_relevancy: bool = False) -> list[dict]:
    """One greedy generate call for a batch of states ``[N, d]`` (each written over every placeholder);
    ``states=None`` interprets the bare prompt (the placeholder's own state) ``n_rows`` times.

    Returns per state: ``ids`` (generated, cut at the end of turn), ``text``, and with ``with_relevancy``
    ``weights`` (relevancy per token) and ``probs`` (probability with the insertion)."""
    device = model.get_input_embeddings().weight.device
    n = len(states) if states is not None else (n_rows or 1)
    x = torch.tensor([prompt.ids] * n, device=device)
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
        weights = probs - token_probabilities(model, x, mask, None, new, new_mask) if info else torch.zeros_like(probs)
        for i, r in enumerate(rows):
            results[i]["probs"] = [round(float(p), 6) for p in probs[i, :len(r)]]
            results[i]["weights"] = [round(float(w), 6) for w in weights[i, :len(r)]]
    return results


# -- resumable row files ------------------------------------------------------------------------------
class RowCache:
    """Rows of one output CSV, keyed; rewritten atomically after every batch. Rows made with other
    settings are dropped (a note is logged)."""

    def __init__(self, path: Path, keys: list[str], settings: dict, overwrite: bool = False):
        self.path, self.keys, self.settings = Path(path), keys, settings
        self.meta = self.path.with_name(self.path.name + ".settings.json")
        self.frame = pd.DataFrame()
        if self.path.exists() and self.meta.exists() and not overwrite:
            if json.loads(self.meta.read_text()) == json.loads(json.dumps(settings)):
                self.frame = pd.read_csv(self.path, keep_default_na=False)
            else:
                log.warning("%s was made with other settings: computing it again", self.path)
        self.done = {tuple(str(v) for v in r) for r in self.frame[keys].itertuples(index=False)} if len(self.frame) else set()

    def has(self, key) -> bool:
        return tuple(str(v) for v in key) in self.done

    def add(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.frame = pd.concat([self.frame, pd.DataFrame(rows)], ignore_index=True)
        self.done |= {tuple(str(r[k]) for k in self.keys) for r in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for target, write in ((self.meta, lambda p: p.write_text(json.dumps(self.settings, indent=1))),
                              (self.path, lambda p: self.frame.to_csv(p, index=False))):
            partial = target.with_name(target.name + ".partial")
            write(partial)
            os.replace(partial, target)


# -- interpret mode ------------------------------------------------------------------------------------
def load_examples(args) -> list[dict]:
    """[{prompt, category, raw}] from --json, --prompt or --dataset."""
    if args.json:
        path = Path(args.json)
        if not path.exists():
            raise UserError(f"{path} does not exist: pass a JSON file {{\"examples\": [{{\"prompt\", \"category\", \"raw\"}}]}}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON ({error}): pass a file {{\"examples\": [...]}}") from None
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list) or not examples:
            raise UserError(f"{path} has no list 'examples': the file must be {{\"examples\": [{{\"prompt\": ..., "
                            "\"category\": ..., \"raw\": false}}]}}")
        for i, ex in enumerate(examples):
            if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) or not ex["prompt"].strip():
                raise UserError(f"{path}: example {i} has no text 'prompt': each example needs \"prompt\" (text), "
                                "\"category\" and \"raw\"")
        return [{"prompt": ex["prompt"], "category": str(ex.get("category", "example")), "raw": bool(ex.get("raw", False))}
                for ex in examples]
    if args.prompt:
        if any(not p.strip() for p in args.prompt):
            raise UserError("--prompt is empty: give the text to interpret")
        return [{"prompt": p, "category": "prompt", "raw": args.raw} for p in args.prompt]
    from data import load_dataset
    try:
        frame = load_dataset(args.dataset, limit=args.limit, seed=args.seed)
    except KeyError as error:
        raise UserError(str(error.args[0] if error.args else error)) from None
    return [{"prompt": t, "category": args.dataset, "raw": True} for t in frame["text"]]


def token_positions(spec: str, n_tokens: int) -> list[int]:
    try:
        return parse_layer_spec("last-1" if spec == "last" else spec, n_tokens)
    except UserError:
        raise UserError(f"--tokens {spec!r} does not fit a prompt of {n_tokens} tokens: use 'all', 'last', 'last-N', "
                        f"'a-b' or a comma list of positions 0..{n_tokens - 1}") from None


def run_interpret(args, model, tokenizer, examples: list[dict]) -> int:
    prompt = build_interpretation_prompt(tokenizer, args.interpretation_prompt, args.placeholders,
                                         not args.no_chat_template)
    n_layers = model.config.num_hidden_layers
    layers = parse_layer_spec(args.layers, n_layers + 1)  # hidden_states has L + 1 entries
    settings = {k: getattr(args, k) for k in ("model", "interpretation_prompt", "placeholders", "insert_layer",
                                              "strength", "mode", "max_new_tokens", "no_chat_template", "no_relevancy")}
    out = Path(args.out)
    with output_lock(out):
        cache = RowCache(out, ["name", "layer_idx", "token_idx"], settings, overwrite=args.overwrite)
        pending = []

        def flush():
            if not pending:
                return
            results = interpret_states(model, tokenizer, prompt, torch.stack([s for s, _ in pending]),
                                       insert_layer=args.insert_layer, overlay_strength=args.strength,
                                       replacing_mode=args.mode, max_new_tokens=args.max_new_tokens,
                                       with_relevancy=not args.no_relevancy)
            cache.add([{**m, "interpretation": json.dumps(r["ids"]), "interpretation_text": r["text"],
                        "interpretation_weights": json.dumps(r.get("weights", [])),
                        "interpretation_prob": json.dumps(r.get("probs", []))} for (_, m), r in zip(pending, results)])
            print(f"{len(cache.frame)} interpretations -> {out}", flush=True)
            pending.clear()

        counts: dict[str, int] = {}
        for ex in examples:
            name = f"{ex['category']}_{counts.setdefault(ex['category'], 0)}"
            counts[ex["category"]] += 1
            ids = encode_prompt(tokenizer, ex["prompt"], ex["raw"], not args.no_chat_template)
            tokens = token_positions(args.tokens, len(ids))
            todo = [(l, t) for l in layers for t in tokens if not cache.has((name, l, t))]
            if not todo:
                continue
            output = answer(model, tokenizer, ids, args.answer_tokens)
            states = hidden_states_at(model, ids, layers, tokens)
            for li, l in enumerate(layers):
                for ti, t in enumerate(tokens):
                    if (l, t) not in todo:
                        continue
                    pending.append((states[li, ti], {
                        "name": name, "prompt": ex["prompt"], "prompt_output": output, "layer_idx": l, "token_idx": t,
                        "token": tokenizer.decode([ids[t]]), "repeat_prompt": prompt.text,
                        "repeat_prompt_name": prompt.name}))
                    if len(pending) == args.batch_size:
                        flush()
        flush()
    print(f"wrote {out} ({len(cache.frame)} rows)")
    return 0


# -- evaluation ----------------------------------------------------------------------------------------
def identity_items(tokenizer, n_words: int) -> list[dict]:
    """Single-token words in short neutral sentences, with the word's token position (found by offsets)."""
    items = []
    for word in WORDS:
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) != 1:
            continue
        context = CONTEXTS[len(items) % len(CONTEXTS)]
        text = context.format(word)
        enc = tokenizer(text, return_offsets_mapping=True)
        start = text.index(word)
        hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= start < b or (a < b and start <= a < start + len(word))]
        if len(hits) != 1:
            continue
        items.append({"word": word, "text": text, "ids": enc["input_ids"], "position": hits[0]})
        if len(items) == n_words:
            break
    return items


def recovered(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def _interpret_all(model, tokenizer, prompt, jobs, cache: RowCache, batch_size, max_new_tokens, label: str):
    """jobs: [(key dict, state [d])] not yet in the cache; interpreted batch by batch, saved after each."""
    todo = [(k, s) for k, s in jobs if not cache.has(tuple(k[c] for c in cache.keys))]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        results = interpret_states(model, tokenizer, prompt, torch.stack([s for _, s in chunk]),
                                   max_new_tokens=max_new_tokens)
        cache.add([{**k, "interpretation": json.dumps(r["ids"]), "interpretation_text": r["text"]}
                   for (k, _), r in zip(chunk, results)])
        print(f"  {label}: {min(i + batch_size, len(todo))}/{len(todo)}", flush=True)


def toxicity_prompts(cfg) -> pd.DataFrame:
    """Held-out prompts: rows of each dataset that reproduce.py's seeded feature sample did not take."""
    from data import load_dataset
    from input_spool import select_rows
    from reproduce import SAMPLE, SEED
    specs = [("rtp", 1, cfg["TOX_PER_SOURCE"]), ("slurs", 1, cfg["TOX_PER_SOURCE"]),
             ("comments", 0, cfg["TOX_PER_SOURCE"])]
    per_domain = max(1, cfg["TOX_PER_SOURCE"] // len(cfg["TOX_CLEAN_DOMAINS"]))
    specs += [(d, 0, per_domain) for d in cfg["TOX_CLEAN_DOMAINS"]]
    frames = []
    for name, label, n in specs:
        frame = load_dataset(name)
        used = np.isin(np.arange(len(frame)), list(select_rows(len(frame), None, SAMPLE, SEED)))
        frame = frame[~used & (frame["toxic"] == label).values]
        frame = frame.sample(n=min(n, len(frame)), random_state=cfg["EVAL_SEED"])
        frames.append(pd.DataFrame({"text": frame["text"].values, "source": name, "label": label}))
    return pd.concat(frames, ignore_index=True)


def _cv_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """ROC-AUC of out-of-fold logistic-regression scores (standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    folds = int(min(5, np.bincount(y).min()))
    if folds < 2:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def _auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, score)) if len(set(y)) == 2 else float("nan")


def _weighted(tokenizer, ids: list[int], weights: list[float]) -> str:
    return " ".join(f"{tokenizer.decode([t]).strip() or repr(tokenizer.decode([t]))}({w:+.2f})"
                    for t, w in zip(ids, weights))


def run_evaluation(args, model, tokenizer) -> int:
    cfg = {k: v for k, v in globals().items() if k.isupper() and not k.startswith(("QUICK", "FULL"))}
    cfg.update(QUICK if args.quick else FULL if args.full else {})
    from model_loading import model_slug
    folder = ROOT / cfg["EVAL_DIR"] / model_slug(args.model)
    out_dir = Path(args.out_dir)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers + 1))
    began, cpu0 = time.perf_counter(), os.times()
    with output_lock(folder):
        # 1. identity recovery -------------------------------------------------------------------
        repeat = build_interpretation_prompt(tokenizer, "repeat", EVAL_PLACEHOLDERS)
        items = identity_items(tokenizer, cfg["EVAL_WORDS"])
        if len(items) < cfg["EVAL_WORDS"]:
            log.warning("only %d single-token words for this tokenizer (asked for %d)", len(items), cfg["EVAL_WORDS"])
        settings = {"prompt": repeat.ids, "insert_layer": INSERT_LAYER, "new": EVAL_NEW_TOKENS, "model": args.model}
        ident = RowCache(folder / "identity.csv", ["condition", "word", "layer"], settings)
        gen = torch.Generator().manual_seed(cfg["EVAL_SEED"])
        jobs, random_jobs = [], []
        for i, item in enumerate(items):
            states = hidden_states_at(model, item["ids"], layers, [item["position"]])[:, 0]
            for l in layers:
                jobs.append(({"condition": "selfie", "word": item["word"], "layer": l}, states[l]))
                if i < cfg["RANDOM_WORDS"]:
                    direction = torch.randn(states.shape[1], generator=gen)
                    random_jobs.append(({"condition": "random", "word": item["word"], "layer": l},
                                        direction * states[l].norm() / direction.norm()))
        t0 = time.perf_counter()
        _interpret_all(model, tokenizer, repeat, jobs, ident, args.batch_size, EVAL_NEW_TOKENS, "identity")
        _interpret_all(model, tokenizer, repeat, random_jobs, ident, args.batch_size, EVAL_NEW_TOKENS, "random control")
        bare = interpret_states(model, tokenizer, repeat, None, max_new_tokens=EVAL_NEW_TOKENS)[0]["text"]
        t_identity = time.perf_counter() - t0
        frame = ident.frame.copy()
        frame["recovered"] = [recovered(w, str(t)) for w, t in zip(frame["word"], frame["interpretation_text"])]
        words = [it["word"] for it in items]
        rate = {c: frame[(frame.condition == c) & frame.word.isin(words)].groupby("layer")["recovered"].mean()
                .reindex(layers).tolist() for c in ("selfie", "random")}
        own_rate = float(np.mean([recovered(w, bare) for w in words]))

        # 2. toxicity -------------------------------------------------------------------------------
        summarize = build_interpretation_prompt(tokenizer, "summarize", N_PLACEHOLDERS)
        tox_layers = layers[::cfg["TOX_LAYER_STRIDE"]]
        prompts = toxicity_prompts(cfg)
        prompts["ids"] = [encode_prompt(tokenizer, t, raw=True, max_tokens=TOX_MAX_TOKENS) for t in prompts["text"]]
        settings = {"prompt": summarize.ids, "insert_layer": INSERT_LAYER, "new": TOX_NEW_TOKENS, "model": args.model,
                    "max_tokens": TOX_MAX_TOKENS}
        tox = RowCache(folder / "toxicity.csv", ["prompt_id", "layer"], settings)
        jobs = []
        for i, row in prompts.iterrows():
            key_text = row["text"][:80]
            if all(tox.has((i, l)) for l in tox_layers):
                continue
            states = hidden_states_at(model, row["ids"], tox_layers, [len(row["ids"]) - 1])[:, 0]
            for j, l in enumerate(tox_layers):
                jobs.append(({"prompt_id": i, "layer": l, "source": row["source"], "label": row["label"],
                              "text": key_text}, states[j]))
        t0 = time.perf_counter()
        _interpret_all(model, tokenizer, summarize, jobs, tox, args.batch_size, TOX_NEW_TOKENS, "toxicity")
        t_tox = time.perf_counter() - t0
        from toxicity_id_eval.refusal import label_answers
        tframe = tox.frame.copy()
        tframe["score"] = label_answers([str(t) for t in tframe["interpretation_text"]])["Toxicity"].values
        tframe = tframe[tframe.prompt_id.isin(prompts.index)]
        selfie_auc = {l: _auc(g["label"].values, g["score"].values) for l, g in tframe.groupby("layer")}
        # the spline detector on the same (cut) prompts
        ids, mask = _left_padded(list(prompts["ids"]), tokenizer.pad_token_id)
        device = model.get_input_embeddings().weight.device
        with torch.no_grad():
            spline = model.spline_features(ids.to(device), mask.to(device))["spline"].float().cpu().numpy()
        y = prompts["label"].values.astype(int)
        spline_all = _cv_auc(spline.reshape(len(y), -1), y, cfg["EVAL_SEED"])
        spline_layer = {l: _cv_auc(spline[:, l - 1], y, cfg["EVAL_SEED"]) if l >= 1 else float("nan") for l in tox_layers}
        prompt_scored = _auc(y, label_answers(list(prompts["text"]))["Toxicity"].values)

        # 3. examples with relevancy ---------------------------------------------------------------
        n_ex = cfg["EXAMPLES_PER_CATEGORY"]
        mid = n_layers // 2
        examples = []
        for item in items[:n_ex]:
            for l in (3, mid):
                state = hidden_states_at(model, item["ids"], [l], [item["position"]])[0]
                r = interpret_states(model, tokenizer, repeat, state, max_new_tokens=EVAL_NEW_TOKENS + 3, with_relevancy=True)[0]
                examples.append(("identity", item["text"], item["word"], l, r))
        for label, name in ((1, "toxic"), (0, "clean")):
            for i, row in prompts[prompts.label == label].head(n_ex).iterrows():
                state = hidden_states_at(model, row["ids"], [mid], [len(row["ids"]) - 1])[0]
                r = interpret_states(model, tokenizer, summarize, state, max_new_tokens=TOX_NEW_TOKENS, with_relevancy=True)[0]
                examples.append((name, row["text"][:60] + ("..." if len(row["text"]) > 60 else ""),
                                 tokenizer.decode([row["ids"][-1]]), mid, r))
        cpu1 = os.times()
        wall, cpu = time.perf_counter() - began, cpu1.user + cpu1.system - cpu0.user - cpu0.system

    write_report(out_dir, args, cfg, tokenizer, layers, rate, own_rate, bare, len(items), frame, tox_layers,
                 selfie_auc, spline_layer, spline_all, prompt_scored, prompts, examples,
                 {"wall_s": wall, "cpu_s": cpu, "identity_wall_s": t_identity, "toxicity_wall_s": t_tox})
    return 0


def write_report(out_dir, args, cfg, tokenizer, layers, rate, own_rate, bare, n_words, frame, tox_layers, selfie_auc,
                 spline_layer, spline_all, prompt_scored, prompts, examples, timing) -> None:
    from analysis.plots import lines
    from analysis.report import Table, num, pct, write_json, write_section
    tag = " (quick)" if args.quick else ""
    n_random = int(frame[frame.condition == "random"]["word"].nunique())
    lines(layers, {"SelfIE (the word's own state)": rate["selfie"], f"random vector, same norm ({n_random} words)":
                         rate["random"], "placeholder's own state (no insertion)": [own_rate] * len(layers)},
                f"SelfIE identity recovery, {args.model}, {n_words} words, 'repeat' prompt, inserted at layer {INSERT_LAYER}",
                Path(out_dir) / "figures" / "selfie_identity.png", xlabel="layer of the interpreted state (hidden_states index)",
                ylabel="recovery rate", ylim=(-0.03, 1.03))
    t1 = Table("selfie_identity", f"SelfIE identity recovery per layer{tag} ({args.model}; {n_words} single-token words, "
               f"repeat prompt, {EVAL_NEW_TOKENS} new tokens, insertion at layer {INSERT_LAYER})",
               ["layer", "SelfIE %", "random same-norm %", "placeholder own state %"],
               [[str(l), pct(a, digits=0), pct(b, digits=0), pct(own_rate, digits=0)]
                for l, a, b in zip(layers, rate["selfie"], rate["random"])],
               notes=[f"Recovered: the word appears among the generated words. Random control: {n_random} words. "
                      f"The bare prompt (no insertion) answers {bare!r}."])
    counts = prompts.groupby("source").size().to_dict()
    t2 = Table("selfie_toxicity", f"Does the model's own description mark toxic inputs?{tag} ROC-AUC per layer "
               f"({int(prompts.label.sum())} toxic vs {int((1 - prompts.label).sum())} clean held-out prompts)",
               ["layer", "SelfIE description (profanity score)", "spline features of this layer (CV LR)"],
               [[str(l), num(selfie_auc.get(l), "{:.3f}"), num(spline_layer.get(l), "{:.3f}")] for l in tox_layers] +
               [["all layers", "", num(spline_all, "{:.3f}")]],
               notes=[f"Prompts: {', '.join(f'{k} {v}' for k, v in counts.items())}; rows the main job's feature sample "
                      f"did not use, cut to {TOX_MAX_TOKENS} tokens; the last token is interpreted with the summarize "
                      f"prompt ({TOX_NEW_TOKENS} new tokens), every {cfg['TOX_LAYER_STRIDE']}th layer.",
                      "The description is scored by alt-profanity-check (as ID_estimation.py); the spline detector is "
                      "a 5-fold cross-validated logistic regression on model.spline_features (row l: the 7 features of "
                      f"the block whose output is hidden_states[l], i.e. decoder layer l-1 counted from 0). Scoring the prompt text itself: "
                      f"{prompt_scored:.3f}."])
    t3 = Table("selfie_examples", f"SelfIE example interpretations{tag}, tokens with relevancy "
               "(probability with the insertion minus without)",
               ["category", "input", "token", "layer", "interpretation (relevancy)"],
               [[c, text, tok.strip(), str(l), _weighted(tokenizer, r["ids"], r["weights"])]
                for c, text, tok, l, r in examples])
    for t in (t1, t2, t3):
        t.write(out_dir)
    results = {"model": args.model, "quick": bool(args.quick), "insert_layer": INSERT_LAYER, "n_words": n_words,
               "n_random_words": n_random, "identity_recovery": dict(zip(layers, rate["selfie"])),
               "random_recovery": dict(zip(layers, rate["random"])), "own_state_recovery": own_rate,
               "toxicity_auc_selfie": selfie_auc, "toxicity_auc_spline_layer": spline_layer,
               "toxicity_auc_spline_all": spline_all, "toxicity_auc_prompt_profanity": prompt_scored,
               "toxicity_prompts": counts, "timing": timing}
    write_json(Path(out_dir) / "results" / "selfie.json", results)
    best = int(np.nanargmax(rate["selfie"]))
    md = "\n".join([
        f"## SelfIE: the model describes its own hidden states{tag}", "",
        f"`selfie.py --evaluate` on {args.model}: a hidden state is written over the placeholder of the model's "
        f"chat-templated interpretation prompt at the input of decoder layer {INSERT_LAYER} (hooks.py), and the model "
        f"generates. Identity recovery peaks at {pct(rate['selfie'][best], digits=0)} % (layer {layers[best]}); a random "
        f"vector of the same norm: at most {pct(np.nanmax(rate['random']), digits=0)} %; the placeholder's own state: "
        f"{pct(own_rate, digits=0)} %. This run took {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU "
        "(interpretations cached by an earlier run are reused, not timed again).", "",
        t1.markdown(), "![SelfIE identity recovery](figures/selfie_identity.png)", "", t2.markdown(), t3.markdown()])
    write_section(out_dir, "selfie", md)
    print(f"SelfIE evaluation: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU; results/selfie.md written")


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfie.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", help='the seed\'s input: {"examples": [{"prompt", "category", "raw"}]}')
    src.add_argument("--prompt", action="append", help="a prompt to interpret (repeat the flag for more)")
    src.add_argument("--dataset", help="a named dataset (python -m data lists them)")
    src.add_argument("--evaluate", action="store_true", help="the measured evaluation (tables, figure, RESULTS.md section)")
    p.add_argument("--quick", action="store_true", help="with --evaluate: a tiny smoke run")
    p.add_argument("--full", action="store_true", help="with --evaluate: the large sweep (all layers for toxicity, more words)")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--interpretation-prompt", default=INTERPRETATION_PROMPT, choices=sorted(INTERPRETATION_PROMPTS))
    p.add_argument("--placeholders", type=positive_int, default=N_PLACEHOLDERS)
    p.add_argument("--insert-layer", type=int, default=INSERT_LAYER, help="k: insert at the input of decoder layer k")
    p.add_argument("--strength", type=probability, default=OVERLAY_STRENGTH, help="overlay_strength")
    p.add_argument("--mode", default=REPLACING_MODE, choices=MODES, help="replacing_mode")
    p.add_argument("--layers", type=layer_spec, default=LAYERS, help="states to interpret: hidden_states indices 0..L")
    p.add_argument("--tokens", default=TOKENS, help="token positions: all, last, last-N, a-b or a,b")
    p.add_argument("--max-new-tokens", type=positive_int, default=MAX_NEW_TOKENS)
    p.add_argument("--answer-tokens", type=positive_int, default=ANSWER_TOKENS, help="length of prompt_output")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--raw", action="store_true", help="--prompt text as is (default: the chat template)")
    p.add_argument("--no-chat-template", action="store_true", help="the original's [INST] ... [/INST] format")
    p.add_argument("--no-relevancy", action="store_true", help="skip the relevancy scores (half the cost)")
    p.add_argument("--limit", type=positive_int, default=20, help="--dataset: a seeded sample of N texts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT, help="output CSV")
    p.add_argument("--out-dir", default=str(ROOT), help="--evaluate: where tables/, figures/, results/ go")
    p.add_argument("--overwrite", action="store_true", help="recompute rows already in --out")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (args.quick or args.full) and not args.evaluate:
        raise UserError("--quick and --full go with --evaluate: add --evaluate, or drop them")
    if args.quick and args.full:
        raise UserError("--quick and --full contradict each other: choose one")
    examples = None if args.evaluate else load_examples(args)   # bad input is refused before the model loads
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # an error stays one line on stderr
    from model_loading import load_model, load_tokenizer
    tokenizer = load_tokenizer(args.model)  # an unknown model is a UserError there, naming what was tried
    model = load_model(args.model)
    n_layers = model.config.num_hidden_layers
    if not 0 <= args.insert_layer < n_layers:
        raise UserError(f"--insert-layer {args.insert_layer} is out of range: {args.model} has {n_layers} decoder "
                        f"layers, so use 0..{n_layers - 1} (the original uses 1)")
    if args.evaluate:
        return run_evaluation(args, model, tokenizer)
    try:
        parse_layer_spec(args.layers, n_layers + 1)
    except UserError:
        raise UserError(f"--layers {args.layers} is out of range: the states are hidden_states 0..{n_layers} of "
                        f"{args.model} (0 = embeddings, {n_layers} = after the final norm); use e.g. 'all', "
                        f"'0-{n_layers}' or '1,{n_layers // 2}'") from None
    return run_interpret(args, model, tokenizer, examples)


if __name__ == "__main__":
    sys.exit(run_main(main, "selfie.py"))
