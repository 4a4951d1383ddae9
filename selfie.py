"""SelfIE: ask the model what one of its hidden states means (Chen, Vondrick, Mao, ICML 2024).

    python selfie.py --prompt "The capital of France is Paris" --layers 5,15,25      # the prompt's own tokens
    python selfie.py --json examples.json --interpretation-prompt repeat       # the seed's input format
    python selfie.py --prompt "..." --interpretation-prompt "[INST] {} [/INST] The materials mentioned in the message are:"
    python selfie.py --dataset rtp --limit 20 --tokens last --layers 0-30:5 ... (see --help)
    python selfie.py --evaluate [--quick | --full [--update-readme]]  # the measured evaluation (run.sh runs it)

Interpreting: every prompt runs once (its greedy answer is kept as ``prompt_output``); the hidden state
of each chosen token (default: the tokens of the user's own text, not the chat template's) at each chosen
layer (``hidden_states[l]``: 0 = embeddings, L = after the final norm) is written over the placeholders of
an interpretation prompt at the input of decoder layer --insert-layer, and the model generates. The
interpretation prompt is a named one (the model's chat template with the placeholders as the user message
and the answer begun, "Sure, I will summarize the message:") or any text with {} where the placeholders go;
the placeholders' positions are the tokens the model's own tokenizer writes them with (self_interpret.py).
Many states share one generate call. Output: a CSV with the seed's columns (name, prompt, prompt_output,
layer_idx, token_idx, repeat_prompt, repeat_prompt_name, interpretation, interpretation_weights,
interpretation_prob) plus ``token`` and ``interpretation_text``; ``interpretation`` holds the token ids,
``interpretation_weights`` each token's relevancy (|probability with the insertion minus without|, teacher
forced, the original's; --relevancy signed keeps the sign) and ``interpretation_prob`` its probability with
the insertion. The CSV holds this run's rows; the resume cache beside it keys rows by the prompt's token ids,
layer and token, and is dropped when a setting changes, so a rerun never reports another prompt's rows.

Evaluating (--evaluate, on the embedded SmolLM2, which cannot summarise: tasks with a right answer):
  identity   EVAL_WORDS single-token words in short neutral sentences; each word's state at every layer
             is interpreted with the "repeat" prompt; recovered = the word among the generated words.
             Controls: a random vector of the same norm (RANDOM_WORDS words, every layer) and the
             placeholder's own state (no insertion: the bare interpretation prompt). 95 % Wilson intervals.
  toxicity   the last token of held-out toxic (rtp/slurs) and clean (comments, domains) prompts, every
             TOX_LAYER_STRIDE-th layer, "summarize" prompt; the interpretation's alt-profanity-check score
             against the prompt's label (ROC-AUC per layer, bootstrap interval), beside a cross-validated
             logistic regression on the same prompts' spline features (model.spline_features).
  control    (CONTROL_TARGETS > 0: --quick and --full) supervised control, selfie_control.py: the MLP before
             CONTROL_SOURCE_LAYER is trained so that an entity word's state becomes a target word's; success
             = the target named by the interpretation, beside a random edit of the same size, with clean
             perplexity, unrelated answers and other words' interpretations as collateral.
  examples   a few interpretations per category with relevancy-weighted tokens.
--evaluate honours --model, --insert-layer, --strength, --mode, --batch-size, --no-chat-template, --seed and
--out-dir, and refuses the other flags. --full runs FULL's sizes on each of FULL_MODELS (or on --model alone)
and puts each model's numbers into results/selfie_full.json (+ .md) as soon as that model is done, under its
own run's date, commit and machine; --update-readme pastes the tables between the README's selfie-full
markers after each model, so an interrupted run keeps the models it finished.
Interpretations are cached under results/selfie/<model>/ (resumable); tables/selfie_*.md|tex,
figures/selfie_identity.png, results/selfie.json and results/selfie.md (the RESULTS.md section).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import hashlib
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cli import UserError, output_lock, parse_layer_spec, positive_int, run_main
from self_interpret import (INTERPRETATION_PROMPTS, MARKER, MODES, RELEVANCY, InterpretationPrompt, answer,
                            build_interpretation_prompt, encode_prompt, hidden_states_at, interpret_states)

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("selfie")

# -- settings (flags override) -----------------------------------------------------------------------
MODEL = "smollm2-135m"
INTERPRETATION_PROMPT = "summarize"   # summarize, repeat, object (INTERPRETATION_PROMPTS) or text with {}
N_PLACEHOLDERS = 5                    # the original's five "_"
INSERT_LAYER = 1                      # k: the original's default (input of decoder layer 1)
OVERLAY_STRENGTH = 1.0                # normalized: in [0, 1]; addition: any strength >= 0
REPLACING_MODE = "normalized"
RELEVANCY_KIND = "absolute"           # the original's |p(with) - p(without)|; "signed" keeps the sign
LAYERS = "all"                        # hidden_states indices, 0..L ('all', 'a-b', 'a-b:step', 'a,b', 'last-N')
TOKENS = "user"                       # the tokens of the user's text; or all, last, last-N, a-b, a,b (whole prompt)
MAX_NEW_TOKENS = 20                   # interpretation length
ANSWER_TOKENS = 30                    # prompt_output: the model's greedy answer to the prompt itself
BATCH_SIZE = 64                       # states per generate call
OUT = "results/selfie/interpretations.csv"
CSV_COLUMNS = ["name", "prompt", "prompt_output", "layer_idx", "token_idx", "token", "repeat_prompt",
               "repeat_prompt_name", "interpretation", "interpretation_text", "interpretation_weights",
               "interpretation_prob"]

# --evaluate (sized for the main job's budget on 2 CPU cores; --full is the large sweep)
EVAL_WORDS = 50                       # identity: words, each at every layer (measured: ~0.1 CPU s per state)
EVAL_PLACEHOLDERS = 1                 # one word, one placeholder
EVAL_NEW_TOKENS = 5                   # SmolLM2 answers "\n\nword" (or "\n\n\"word"): 5 tokens reach the word
RANDOM_WORDS = 12                     # the random-vector control: words (every layer)
TOX_PER_SOURCE = 8                    # toxicity: held-out prompts from each of rtp:toxic, slurs, comments:clean and
TOX_CLEAN_DOMAINS = ("pubmed", "code", "legal", "questions")   # 2 from each clean domain (= TOX_PER_SOURCE)
TOX_LAYER_STRIDE = 5                  # every 5th hidden state: 0, 5, ..., 30
TOX_NEW_TOKENS = 8
TOX_MAX_TOKENS = 48                   # prompts cut to their first 48 tokens (the last token is interpreted)
EXAMPLES_PER_CATEGORY = 3
CONTROL_TARGETS = 0                   # supervised control: (entity, target) pairs; 0 = left to --full
CONTROL_MODELS = None                 # the models supervised control runs on; None: every model
CONTROL_SOURCE_LAYER = 3              # hidden_states[3]: the MLP of decoder layer 2 is edited
CONTROL_STEPS = 60                    # the notebook runs 20 Adam steps; on SmolLM2 they leave the MSE at ~7 of ~16 (measured), so 60
CONTROL_LR = 3e-4                     # ... at learning rate 3e-4, MSE to the target state
CONTROL_UNRELATED = 6                 # unrelated prompts whose greedy answers are compared before/after
EVAL_SEED = 0
EVAL_DIR = "results/selfie"
# The toxicity prompts are held out from the main job's feature sample: reproduce.py's SAMPLE texts per
# dataset drawn with its SEED (keep these equal to its constants).
FEATURE_SAMPLE = 250
FEATURE_SEED = 0
QUICK = dict(EVAL_WORDS=6, RANDOM_WORDS=2, TOX_PER_SOURCE=2, TOX_LAYER_STRIDE=15, EXAMPLES_PER_CATEGORY=1,
             CONTROL_TARGETS=2, CONTROL_UNRELATED=2, EVAL_DIR="results/selfie/quick")
# --full: 500 words at every layer (a rate's 95 % interval within +-4.4 points); the random control, whose
# rate sits near 0, on 100 of them (0 hits in 100: at most 3.7 %); 100 prompts per toxic source (200 a side)
# at every other layer; 50 supervised-control pairs on SmolLM2. Measured on 2 AMD cores: 48 min on SmolLM2,
# 19 of them the control (23 s a pair: each measures the edit three times, with unrelated answers), and 59
# on Qwen2.5-Coder-0.5B without it; its control would add some 70 (add it to CONTROL_MODELS
# where a GPU or a second sitting allows), the random control on all 500 words at every layer about 50.
FULL = dict(EVAL_WORDS=500, RANDOM_WORDS=100, FULL_MODELS=("smollm2-135m", "qwen2.5-coder-0.5b"),
            TOX_PER_SOURCE=100, TOX_LAYER_STRIDE=2, CONTROL_TARGETS=50, CONTROL_MODELS=("smollm2-135m",),
            EVAL_DIR="results/selfie/full")

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


def _left_padded(rows: list[list[int]], pad_id: int):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


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


def stepped_spec(spec: str) -> str:
    """'a-b:s' (every s-th index from a to b) as a comma list; other specs unchanged (cli.parse_layer_spec)."""
    parts = []
    for part in str(spec).split(","):
        body, colon, step = part.partition(":")
        if colon:
            lo, dash, hi = body.partition("-")
            try:
                lo, hi, step = int(lo), int(hi), int(step)
            except ValueError:
                raise UserError(f"bad layer spec {spec!r}: a stepped range is 'a-b:s', e.g. 0-30:5") from None
            if not dash or step < 1 or hi < lo:
                raise UserError(f"bad layer spec {spec!r}: a stepped range is 'a-b:s' with a <= b and s >= 1, e.g. 0-30:5")
            part = ",".join(str(i) for i in range(lo, hi + 1, step))
        parts.append(part)
    return ",".join(parts)


def layers_arg(text: str) -> str:
    """argparse type of --layers: the syntax of cli.parse_layer_spec plus 'a-b:s'; ranges are checked later."""
    try:
        parse_layer_spec(stepped_spec(text), None)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def strength_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a strength >= 0 (normalized mode: 0..1, addition: any)")
    return value


def token_positions(spec: str, prompt) -> list[int]:
    """Positions of one encoded prompt: 'user' (its own text's tokens, not the template's) or a spec over the
    whole prompt ('all', 'last', 'last-N', 'a-b', 'a,b')."""
    n_tokens = len(prompt.ids)
    if spec == "user":
        if not len(prompt.user):
            raise UserError("no token of the prompt's own text was found: pass --tokens all")
        return list(prompt.user)
    try:
        return parse_layer_spec("last-1" if spec == "last" else stepped_spec(spec), n_tokens)
    except UserError:
        raise UserError(f"--tokens {spec!r} does not fit a prompt of {n_tokens} tokens: use 'user', 'all', 'last', "
                        f"'last-N', 'a-b' or a comma list of positions 0..{n_tokens - 1}") from None


def prompt_key(ids: list[int]) -> str:
    """What makes a prompt's rows its own: its exact token ids (text, raw or templated, the tokenizer)."""
    return "p" + hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]   # "p": never read back as a number


def interpret_settings(args, prompt: InterpretationPrompt) -> dict:
    """Everything besides the prompt that changes an interpretation row (the resume cache checks all of it)."""
    return {"model": args.model, "interpretation_prompt": prompt.ids, "positions": prompt.positions,
            "insert_layer": args.insert_layer, "strength": args.strength, "mode": args.mode,
            "max_new_tokens": args.max_new_tokens, "answer_tokens": args.answer_tokens,
            "relevancy": None if args.no_relevancy else args.relevancy}


def run_interpret(args, model, tokenizer, examples: list[dict]) -> int:
    prompt = build_interpretation_prompt(tokenizer, args.interpretation_prompt, args.placeholders,
                                         not args.no_chat_template)
    n_layers = model.config.num_hidden_layers
    layers = parse_layer_spec(stepped_spec(args.layers), n_layers + 1)  # hidden_states has L + 1 entries
    out = Path(args.out)
    # The resume cache holds rows keyed by the prompt's token ids (not its name), layer and token; --out is
    # written from it with exactly this run's rows, so a rerun never reports another prompt's rows.
    cache_path = out.with_name(out.name + ".cache.csv")
    encoded = []
    counts: dict[str, int] = {}
    for ex in examples:
        name = f"{ex['category']}_{counts.setdefault(ex['category'], 0)}"
        counts[ex["category"]] += 1
        enc = encode_prompt(tokenizer, ex["prompt"], ex["raw"], not args.no_chat_template)
        encoded.append((name, ex, enc, token_positions(args.tokens, enc)))  # refused before any work
    with output_lock(out):
        cache = RowCache(cache_path, ["prompt_key", "layer_idx", "token_idx"], interpret_settings(args, prompt),
                         overwrite=args.overwrite)
        wanted = []
        pending = []

        def write_out():
            index = {tuple(str(v) for v in r): i for i, r in
                     enumerate(cache.frame[cache.keys].itertuples(index=False))} if len(cache.frame) else {}
            rows = [(name, i) for name, key in wanted if (i := index.get(tuple(str(v) for v in key))) is not None]
            frame = cache.frame.iloc[[i for _, i in rows]].copy() if rows else pd.DataFrame(columns=CSV_COLUMNS)
            frame["name"] = [name for name, _ in rows]
            partial = out.with_name(out.name + ".partial")
            frame[CSV_COLUMNS].to_csv(partial, index=False)
            os.replace(partial, out)

        def flush():
            if not pending:
                return
            results = interpret_states(model, tokenizer, prompt, torch.stack([s for s, _ in pending]),
                                       insert_layer=args.insert_layer, overlay_strength=args.strength,
                                       replacing_mode=args.mode, max_new_tokens=args.max_new_tokens,
                                       with_relevancy=not args.no_relevancy, relevancy_kind=args.relevancy)
            cache.add([{**m, "interpretation": json.dumps(r["ids"]), "interpretation_text": r["text"],
                        "interpretation_weights": json.dumps(r.get("weights", [])),
                        "interpretation_prob": json.dumps(r.get("probs", []))} for (_, m), r in zip(pending, results)])
            write_out()
            print(f"{len(pending)} interpretations -> {out}", flush=True)
            pending.clear()

        for name, ex, enc, tokens in encoded:
            key = prompt_key(enc.ids)
            wanted += [(name, (key, l, t)) for l in layers for t in tokens]
            todo = [(l, t) for l in layers for t in tokens if not cache.has((key, l, t))]
            if not todo:
                continue
            output = answer(model, tokenizer, enc.ids, args.answer_tokens)
            states = hidden_states_at(model, enc.ids, layers, tokens)
            for li, l in enumerate(layers):
                for ti, t in enumerate(tokens):
                    if (l, t) not in todo:
                        continue
                    pending.append((states[li, ti], {
                        "prompt_key": key, "name": name, "prompt": ex["prompt"], "prompt_output": output,
                        "layer_idx": l, "token_idx": t, "token": tokenizer.decode([enc.ids[t]]),
                        "repeat_prompt": prompt.text, "repeat_prompt_name": prompt.name}))
                    if len(pending) == args.batch_size:
                        flush()
        flush()
        write_out()
    print(f"wrote {out} ({len(wanted)} rows)")
    return 0


# -- evaluation ----------------------------------------------------------------------------------------
def vocabulary_words(tokenizer) -> list[str]:
    """The tokenizer's own single-token words (" word", 4-10 lowercase letters), in vocabulary order (a BPE
    vocabulary is ordered by merge, roughly by frequency): the identity test's words past WORDS."""
    words = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text.startswith(" ") and text[1:].isascii() and text[1:].isalpha() and text[1:].islower() \
                and 4 <= len(text) - 1 <= 10:
            words.append(text[1:])
    return words


def identity_items(tokenizer, n_words: int) -> list[dict]:
    """Single-token words in short neutral sentences, with the word's token position (found by offsets):
    WORDS first, then (for more than WORDS holds) :func:`vocabulary_words`."""
    items = []
    pool = WORDS if n_words <= len(WORDS) else list(dict.fromkeys(WORDS + vocabulary_words(tokenizer)))
    for word in pool:
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


def _interpret_all(model, tokenizer, prompt, jobs, cache: RowCache, batch_size, max_new_tokens, label: str,
                   kwargs: dict):
    """jobs: [(key dict, state [d])] not yet in the cache; interpreted batch by batch, saved after each.
    ``kwargs``: insert_layer, overlay_strength, replacing_mode (the command line's)."""
    todo = [(k, s) for k, s in jobs if not cache.has(tuple(k[c] for c in cache.keys))]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        results = interpret_states(model, tokenizer, prompt, torch.stack([s for _, s in chunk]),
                                   max_new_tokens=max_new_tokens, **kwargs)
        cache.add([{**k, "interpretation": json.dumps(r["ids"]), "interpretation_text": r["text"]}
                   for (k, _), r in zip(chunk, results)])
        print(f"  {label}: {min(i + batch_size, len(todo))}/{len(todo)}", flush=True)


def toxicity_prompts(cfg) -> pd.DataFrame:
    """Held-out prompts: rows of each dataset that reproduce.py's seeded feature sample did not take."""
    from data import load_dataset
    from input_spool import select_rows
    specs = [("rtp", 1, cfg["TOX_PER_SOURCE"]), ("slurs", 1, cfg["TOX_PER_SOURCE"]),
             ("comments", 0, cfg["TOX_PER_SOURCE"])]
    per_domain = max(1, cfg["TOX_PER_SOURCE"] // len(cfg["TOX_CLEAN_DOMAINS"]))
    specs += [(d, 0, per_domain) for d in cfg["TOX_CLEAN_DOMAINS"]]
    frames = []
    for name, label, n in specs:
        frame = load_dataset(name)
        used = np.isin(np.arange(len(frame)), list(select_rows(len(frame), None, FEATURE_SAMPLE, FEATURE_SEED)))
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


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate hits / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _auc_interval(y, score, seed: int, n_boot: int = 1000) -> tuple[float, float]:
    """95 % bootstrap interval (percentile) of the ROC-AUC, resampling prompts."""
    y, score = np.asarray(y), np.asarray(score)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(y), len(y))
        if len(set(y[pick])) == 2:
            values.append(_auc(y[pick], score[pick]))
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (float("nan"),) * 2


def eval_settings(args, prompt: InterpretationPrompt, new_tokens: int, **extra) -> dict:
    """Everything besides a row's key that changes an evaluation row (the resume caches check all of it)."""
    return {"model": args.model, "prompt": prompt.ids, "positions": prompt.positions, "insert_layer": args.insert_layer,
            "strength": args.strength, "mode": args.mode, "new": new_tokens, **extra}


def text_key(text: str) -> str:
    return "t" + hashlib.sha1(text.encode()).hexdigest()[:16]


def random_direction(word: str, width: int, seed: int) -> torch.Tensor:
    """The random control's direction for one word: seeded by the word itself, so a cached row stays valid
    whatever words come before it."""
    return torch.randn(width, generator=torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(word.encode())))


def unrelated_prompts(tokenizer, n: int) -> list[list[int]]:
    questions = ["What is the boiling point of water?", "Name a primary colour.", "How many days are in a week?",
                 "Write a short greeting.", "What is two plus three?", "Which planet is closest to the sun?",
                 "Give me a synonym for happy.", "What language is spoken in Spain?"]
    return [encode_prompt(tokenizer, q, raw=False).ids for q in questions[:n]]


def _answer_ids(model, tokenizer, prompts: list[list[int]], new_tokens: int = 10) -> list[list[int]]:
    device = next(model.parameters()).device
    outs = []
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outs.append(out[0, len(ids):].tolist())
    return outs


def _same_tokens(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of answer tokens that equal the unedited answer's, position by position."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return float(np.mean([x == y for x, y in pairs])) if pairs else float("nan")


def run_control(args, model, tokenizer, cfg, items, prompt, folder) -> pd.DataFrame:
    """Supervised control on (entity, target) word pairs: edit the MLP before CONTROL_SOURCE_LAYER so that the
    entity's state becomes the target word's state in the entity's own sentence; then interpret the edited
    state (success: the target word is named), against a random edit of the same size, with collateral."""
    from selfie_control import fit_control, perplexity
    n = min(cfg["CONTROL_TARGETS"], len(items) // 2)
    src = cfg["CONTROL_SOURCE_LAYER"]
    others = items[n * 2:n * 2 + 8] or items[:8]          # words no edit touches: their identity and perplexity
    clean = [it["ids"] for it in others]
    unrelated = unrelated_prompts(tokenizer, cfg["CONTROL_UNRELATED"])
    settings = eval_settings(args, prompt, EVAL_NEW_TOKENS, source_layer=src, steps=cfg["CONTROL_STEPS"],
                             lr=cfg["CONTROL_LR"], seed=cfg["EVAL_SEED"], clean=clean, unrelated=unrelated)
    cache = RowCache(folder / "control.csv", ["entity", "target", "text_key"], settings)
    pairs = [(items[i], items[i + n]) for i in range(n)]
    if all(cache.has((a["word"], b["word"], text_key(a["text"]))) for a, b in pairs):
        return cache.frame
    base_ppl = perplexity(model, clean)
    base_answers = _answer_ids(model, tokenizer, unrelated)

    def measure(entity_ids, position):
        state = hidden_states_at(model, entity_ids, [src], [position])[0]
        other_states = torch.cat([hidden_states_at(model, it["ids"], [src], [it["position"]])[0] for it in others])
        texts = [r["text"] for r in interpret_states(model, tokenizer, prompt, torch.cat([state, other_states]),
                                                     insert_layer=args.insert_layer, overlay_strength=args.strength,
                                                     replacing_mode=args.mode, max_new_tokens=EVAL_NEW_TOKENS)]
        return {"text": texts[0], "others_recovered": float(np.mean([recovered(it["word"], t)
                                                                      for it, t in zip(others, texts[1:])])),
                "ppl_ratio": perplexity(model, clean) / base_ppl,
                "answers_same": _same_tokens(_answer_ids(model, tokenizer, unrelated), base_answers)}

    for done, (entity, target) in enumerate(pairs):
        key = (entity["word"], target["word"], text_key(entity["text"]))
        if cache.has(key):
            continue
        swapped = entity["text"].replace(entity["word"], target["word"], 1)
        target_ids = tokenizer(swapped)["input_ids"]
        if len(target_ids) != len(entity["ids"]):
            continue
        target_state = hidden_states_at(model, target_ids, [src], [entity["position"]])[0, 0]
        before = measure(entity["ids"], entity["position"])
        cpu0 = os.times()
        edit = fit_control(model, entity["ids"], entity["position"], src, target_state, steps=cfg["CONTROL_STEPS"],
                           lr=cfg["CONTROL_LR"])
        cpu1 = os.times()
        try:
            after = measure(entity["ids"], entity["position"])
            edit.restore(model)
            rand = edit.random_like(seed=cfg["EVAL_SEED"] + done)
            rand.apply(model)
            random_after = measure(entity["ids"], entity["position"])
        finally:
            edit.restore(model)
        cache.add([{"entity": entity["word"], "target": target["word"], "text_key": key[2], "text": entity["text"],
                    "before": before["text"], "after": after["text"], "random_after": random_after["text"],
                    "success": recovered(target["word"], after["text"]),
                    "random_success": recovered(target["word"], random_after["text"]),
                    "entity_before": recovered(entity["word"], before["text"]),
                    "loss_first": edit.info["loss"][0], "loss_last": edit.info["loss"][-1],
                    "delta_norm": edit.delta_norm(), "fit_s": edit.info["seconds"],
                    "fit_cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
                    "ppl_ratio": after["ppl_ratio"], "random_ppl_ratio": random_after["ppl_ratio"],
                    "answers_same": after["answers_same"], "random_answers_same": random_after["answers_same"],
                    "others_recovered": after["others_recovered"],
                    "random_others_recovered": random_after["others_recovered"],
                    "others_recovered_before": before["others_recovered"]}])
        print(f"  supervised control: {done + 1}/{len(pairs)}", flush=True)
    return cache.frame


def evaluate_model(args, model, tokenizer, cfg) -> dict:
    """The three measurements (identity, toxicity, supervised control) and the examples on one model."""
    from model_loading import model_slug
    folder = ROOT / cfg["EVAL_DIR"] / model_slug(args.model)
    folder.mkdir(parents=True, exist_ok=True)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers + 1))
    kwargs = dict(insert_layer=args.insert_layer, overlay_strength=args.strength, replacing_mode=args.mode)
    chat = not args.no_chat_template
    began, cpu0 = time.perf_counter(), os.times()
    with output_lock(folder):
        # 1. identity recovery -------------------------------------------------------------------
        repeat = build_interpretation_prompt(tokenizer, "repeat", EVAL_PLACEHOLDERS, chat)
        items = identity_items(tokenizer, cfg["EVAL_WORDS"])
        if len(items) < cfg["EVAL_WORDS"]:
            log.warning("only %d single-token words for this tokenizer (asked for %d)", len(items), cfg["EVAL_WORDS"])
        ident = RowCache(folder / "identity.csv", ["condition", "word", "text_key", "layer"],
                         eval_settings(args, repeat, EVAL_NEW_TOKENS, seed=cfg["EVAL_SEED"]))
        jobs, random_jobs = [], []
        for i, item in enumerate(items):
            key = text_key(item["text"])
            want = [("selfie", l) for l in layers] + ([("random", l) for l in layers] if i < cfg["RANDOM_WORDS"] else [])
            if all(ident.has((c, item["word"], key, l)) for c, l in want):
                continue
            states = hidden_states_at(model, item["ids"], layers, [item["position"]])[:, 0]
            direction = random_direction(item["word"], states.shape[1], cfg["EVAL_SEED"])
            for l in layers:
                jobs.append(({"condition": "selfie", "word": item["word"], "text_key": key, "layer": l}, states[l]))
                if i < cfg["RANDOM_WORDS"]:
                    random_jobs.append(({"condition": "random", "word": item["word"], "text_key": key, "layer": l},
                                        direction * states[l].norm() / direction.norm()))
        t0, c0 = time.perf_counter(), _cpu()
        _interpret_all(model, tokenizer, repeat, jobs + random_jobs, ident, args.batch_size, EVAL_NEW_TOKENS,
                       "identity and random control", kwargs)
        bare = interpret_states(model, tokenizer, repeat, None, max_new_tokens=EVAL_NEW_TOKENS)[0]["text"]
        t_identity, c_identity, n_identity = time.perf_counter() - t0, _cpu() - c0, len(jobs) + len(random_jobs)
        frame = ident.frame.copy()
        keys = {(it["word"], text_key(it["text"])) for it in items}
        frame = frame[[(w, k) in keys for w, k in zip(frame["word"], frame["text_key"])]]
        frame["recovered"] = [recovered(w, str(t)) for w, t in zip(frame["word"], frame["interpretation_text"])]
        identity = {}
        for c in ("selfie", "random"):
            part = frame[frame.condition == c]
            hits, counts = part.groupby("layer")["recovered"].sum(), part.groupby("layer")["recovered"].size()
            identity[c] = {l: {"rate": float(hits.get(l, 0) / counts[l]) if counts.get(l) else float("nan"),
                               "ci95": wilson(int(hits.get(l, 0)), int(counts.get(l, 0))), "n": int(counts.get(l, 0))}
                           for l in layers}
        own_hits = sum(recovered(it["word"], bare) for it in items)
        own = {"rate": own_hits / max(len(items), 1), "ci95": wilson(own_hits, len(items)), "n": len(items)}

        # 2. toxicity -------------------------------------------------------------------------------
        summarize = build_interpretation_prompt(tokenizer, "summarize", N_PLACEHOLDERS, chat)
        tox_layers = layers[::cfg["TOX_LAYER_STRIDE"]]
        prompts = toxicity_prompts(cfg)
        prompts["ids"] = [encode_prompt(tokenizer, t, raw=True, max_tokens=TOX_MAX_TOKENS).ids for t in prompts["text"]]
        prompts["key"] = [prompt_key(ids) for ids in prompts["ids"]]
        tox = RowCache(folder / "toxicity.csv", ["prompt_key", "layer"],
                       eval_settings(args, summarize, TOX_NEW_TOKENS, max_tokens=TOX_MAX_TOKENS))
        jobs = []
        for _, row in prompts.iterrows():
            if all(tox.has((row["key"], l)) for l in tox_layers):
                continue
            states = hidden_states_at(model, row["ids"], tox_layers, [len(row["ids"]) - 1])[:, 0]
            for j, l in enumerate(tox_layers):
                jobs.append(({"prompt_key": row["key"], "layer": l, "source": row["source"], "label": row["label"],
                              "text": row["text"][:80]}, states[j]))
        t0, c0 = time.perf_counter(), _cpu()
        _interpret_all(model, tokenizer, summarize, jobs, tox, args.batch_size, TOX_NEW_TOKENS, "toxicity", kwargs)
        t_tox, c_tox, n_tox = time.perf_counter() - t0, _cpu() - c0, len(jobs)
        from toxicity_id_eval.refusal import label_answers
        tframe = tox.frame[tox.frame.prompt_key.isin(set(prompts["key"]))].copy()
        tframe["score"] = label_answers([str(t) for t in tframe["interpretation_text"]])["Toxicity"].values
        selfie_auc = {int(l): {"auc": _auc(g["label"].values, g["score"].values),
                               "ci95": _auc_interval(g["label"].values, g["score"].values, cfg["EVAL_SEED"])}
                      for l, g in tframe.groupby("layer")}
        ids, mask = _left_padded(list(prompts["ids"]), tokenizer.pad_token_id)
        device = model.get_input_embeddings().weight.device
        y = prompts["label"].values.astype(int)
        spline_all = spline_layer = None
        if hasattr(model, "spline_features"):     # the spline detector on the same (cut) prompts
            with torch.no_grad():
                spline = model.spline_features(ids.to(device), mask.to(device))["spline"].float().cpu().numpy()
            spline_all = _cv_auc(spline.reshape(len(y), -1), y, cfg["EVAL_SEED"])
            spline_layer = {l: _cv_auc(spline[:, l - 1], y, cfg["EVAL_SEED"]) if l >= 1 else float("nan")
                            for l in tox_layers}
        prompt_scored = _auc(y, label_answers(list(prompts["text"]))["Toxicity"].values)

        # 3. supervised control ----------------------------------------------------------------------
        t0, c0 = time.perf_counter(), _cpu()
        control = None
        if cfg["CONTROL_TARGETS"] and (cfg["CONTROL_MODELS"] is None or args.model in cfg["CONTROL_MODELS"]):
            cframe = run_control(args, model, tokenizer, cfg, items, repeat, folder)
            control = summarize_control(cframe, cfg)
        t_control, c_control = time.perf_counter() - t0, _cpu() - c0

        # 4. examples with relevancy ---------------------------------------------------------------
        n_ex = cfg["EXAMPLES_PER_CATEGORY"]
        mid = n_layers // 2
        examples = []
        for item in items[:n_ex]:
            for l in (3, mid):
                state = hidden_states_at(model, item["ids"], [l], [item["position"]])[0]
                r = interpret_states(model, tokenizer, repeat, state, max_new_tokens=EVAL_NEW_TOKENS + 3,
                                     with_relevancy=True, **kwargs)[0]
                examples.append(("identity", item["text"], item["word"], l, r))
        for label, name in ((1, "toxic"), (0, "clean")):
            for _, row in prompts[prompts.label == label].head(n_ex).iterrows():
                state = hidden_states_at(model, row["ids"], [mid], [len(row["ids"]) - 1])[0]
                r = interpret_states(model, tokenizer, summarize, state, max_new_tokens=TOX_NEW_TOKENS,
                                     with_relevancy=True, **kwargs)[0]
                examples.append((name, row["text"][:60] + ("..." if len(row["text"]) > 60 else ""),
                                 tokenizer.decode([row["ids"][-1]]), mid, r))
        cpu1 = os.times()
    return {"model": args.model, "layers": layers, "n_words": len(items), "identity": identity, "own_state": own,
            "bare": bare, "n_random_words": min(cfg["RANDOM_WORDS"], len(items)), "tox_layers": tox_layers,
            "toxicity_auc_selfie": selfie_auc, "toxicity_auc_spline_layer": spline_layer,
            "toxicity_auc_spline_all": spline_all, "toxicity_auc_prompt_profanity": prompt_scored,
            "toxicity_prompts": prompts.groupby("source").size().to_dict(),
            "toxicity_per_side": {"toxic": int(y.sum()), "clean": int((1 - y).sum())}, "control": control,
            "examples": [{"category": c, "input": t, "token": tok, "layer": l, "ids": r["ids"],
                          "weights": r["weights"]} for c, t, tok, l, r in examples],
            "timing": {"wall_s": time.perf_counter() - began, "cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
                       "identity_wall_s": t_identity, "toxicity_wall_s": t_tox, "control_wall_s": t_control,
                       # CPU seconds of the interpretations computed in this run (cached ones cost nothing)
                       "identity_cpu_s": c_identity, "identity_jobs": n_identity, "toxicity_cpu_s": c_tox,
                       "toxicity_jobs": n_tox, "control_cpu_s": c_control}}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def summarize_control(frame: pd.DataFrame, cfg) -> dict:
    n = len(frame)
    out = {"n": n, "source_layer": cfg["CONTROL_SOURCE_LAYER"], "steps": cfg["CONTROL_STEPS"], "lr": cfg["CONTROL_LR"]}
    for prefix, label in (("", "edit"), ("random_", "random")):
        hits = int(frame[f"{prefix}success"].astype(bool).sum()) if n else 0
        out[label] = {"success": hits / n if n else float("nan"), "ci95": wilson(hits, n),
                      "ppl_ratio": float(frame[f"{prefix}ppl_ratio"].mean()) if n else float("nan"),
                      "answers_same": float(frame[f"{prefix}answers_same"].mean()) if n else float("nan"),
                      "others_recovered": float(frame[f"{prefix}others_recovered"].mean()) if n else float("nan")}
    out["others_recovered_before"] = float(frame["others_recovered_before"].mean()) if n else float("nan")
    out["entity_named_before"] = float(frame["entity_before"].astype(bool).mean()) if n else float("nan")
    out["fit_s"] = float(frame["fit_s"].mean()) if n else float("nan")
    out["fit_cpu_s"] = float(frame["fit_cpu_s"].mean()) if n else float("nan")
    out["examples"] = frame[["entity", "target", "before", "after", "random_after"]].head(5).to_dict("records")
    return out


def run_evaluation(args, model, tokenizer) -> int:
    cfg = {k: v for k, v in globals().items() if k.isupper() and not k.startswith(("QUICK", "FULL"))}
    cfg.update(QUICK if args.quick else FULL if args.full else {})
    cfg["EVAL_SEED"] = args.seed if args.seed is not None else cfg["EVAL_SEED"]
    out_dir = Path(args.out_dir)
    if not args.full:
        res = evaluate_model(args, model, tokenizer, cfg)
        write_report(out_dir, args, cfg, tokenizer, res)
        return 0
    # --full: each model of FULL_MODELS (or the one --model names), one after another. Each model's numbers
    # go into results/selfie_full.json as soon as it is done, under its own run's date, commit and machine, and
    # the tables are rendered (and pasted) then: a later model's interruption loses no finished one.
    from model_loading import load_model, load_tokenizer
    names = [args.model] if args.model_given else list(cfg["FULL_MODELS"])
    # Read before anything is pasted, so that the README's own edit never makes the commit look modified.
    stamp = {"commit": _commit(), "machine": _machine(), "command": "python selfie.py " + " ".join(args.argv)}
    path = out_dir / "results" / "selfie_full.json"
    for name in names:
        if name != args.model:
            del model
            tokenizer, model = load_tokenizer(name), load_model(name)
        args.model = name
        result = evaluate_model(args, model, tokenizer, cfg)
        print(f"SelfIE --full on {name}: {result['timing']['cpu_s']:.0f} s CPU", flush=True)
        result["run"] = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **stamp}
        tables = save_full_result(path, name, result, cfg["FULL_MODELS"])
        print(f"wrote {path} and selfie_full.md ({name})")
        if args.update_readme:
            from analysis.report import paste_between_markers
            paste_between_markers(ROOT / "README.md", "selfie-full", tables)
            print(f"updated {ROOT / 'README.md'}")
    return 0


FULL_FORMAT = 2     # 2: one entry per model, each with its own run's date, commit, machine and command


def save_full_result(path: Path, name: str, result: dict, full_models) -> str:
    """Put one model's --full result into the JSON at ``path`` (the other models' entries kept, each under its
    own run), write the tables beside it as selfie_full.md, and return them."""
    from analysis.report import write_json
    path.parent.mkdir(parents=True, exist_ok=True)
    run = {"format": FULL_FORMAT, "models": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("format") == FULL_FORMAT:      # an older layout holds no per-model provenance: not kept
            run["models"] = old["models"]
    run["models"][name] = result
    run["full_models"] = list(full_models)
    side = path.with_suffix(".json.part")
    write_json(side, run)
    side.replace(path)                            # never half a JSON
    tables = full_tables(json.loads(path.read_text()))
    path.with_suffix(".md").write_text(tables)
    return tables


def _commit() -> str:
    from analysis.report import git_commit
    return git_commit()


def _machine() -> str:
    from analysis.report import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _ci(ci) -> str:
    lo, hi = ci
    return "n/a" if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)) else f"[{100 * lo:.0f}, {100 * hi:.0f}]"


def full_tables(run: dict) -> str:
    """The README's generated section, from the --full runs' JSON only (each model under its own run)."""
    models = {n: run["models"][n] for n in run.get("full_models", []) if n in run["models"]}
    models.update({n: m for n, m in run["models"].items() if n not in models})
    lines = [f"Generated from results/selfie_full.json; each model's numbers come from the run named here:", ""]
    lines += [f"- {n}: `{m['run']['command']}` on {m['run']['created']}, commit {m['run']['commit']}, "
              f"{m['run']['machine']}; {m['timing']['wall_s'] / 60:.0f} min wall and {m['timing']['cpu_s'] / 60:.0f} "
              "CPU min in that run (rows an earlier run cached cost it nothing)." for n, m in models.items()]
    lines += [f"- {n}: not yet run (`python selfie.py --evaluate --full --model {n} --update-readme`)."
              for n in run.get("full_models", []) if n not in models]
    lines.append("")
    names = list(models)
    layers = sorted({int(l) for m in models.values() for l in m["identity"]["selfie"]})
    lines += ["Identity recovery per layer, % of words with the word among the generated words (95 % Wilson "
              "interval); random: a random vector of the same norm.", "",
              "| layer | " + " | ".join(f"{n} SelfIE | {n} random" for n in names) + " |",
              "|---:|" + "---:|---:|" * len(names)]
    for l in layers:
        cells = []
        for n in names:
            for c in ("selfie", "random"):
                cell = models[n]["identity"][c].get(str(l))
                cells.append("" if cell is None else f"{100 * cell['rate']:.0f} {_ci(cell['ci95'])}" if cell["rate"] is not None else "n/a")
        lines.append(f"| {l} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}: {m['n_words']} words ({m['n_random_words']} with the random control); the placeholder's "
                     f"own state names the word for {100 * m['own_state']['rate']:.0f} %." for n, m in models.items()]
    lines += ["", "Toxicity read-out: ROC-AUC of the profanity score of the model's description of the last token "
              "(95 % bootstrap interval) at the best of the layers read, picked on the same prompts (so it flatters), beside "
              "the spline features' cross-validated logistic regression.", "",
              "| model | prompts (toxic / clean) | best layer | SelfIE AUC | spline, all layers | prompt text scored |",
              "|---|---:|---:|---:|---:|---:|"]
    for n, m in models.items():
        aucs = {int(l): v for l, v in m["toxicity_auc_selfie"].items() if v["auc"] is not None}
        best = max(aucs, key=lambda l: aucs[l]["auc"]) if aucs else None
        side = m["toxicity_per_side"]
        cell = f"{aucs[best]['auc']:.3f} {_ci_auc(aucs[best]['ci95'])}" if best is not None else "n/a"
        spline = "n/a" if m["toxicity_auc_spline_all"] is None else f"{m['toxicity_auc_spline_all']:.3f}"
        lines.append(f"| {n} | {side['toxic']} / {side['clean']} | {best} | {cell} | {spline} | "
                     f"{m['toxicity_auc_prompt_profanity']:.3f} |")
    lines += ["", "Supervised control: the MLP before the source layer trained (Adam) so that an entity word's state "
              "becomes a target word's; success = the target word named by the interpretation of the edited state.", "",
              "| model | pairs | source layer | edit success | random edit success | perplexity ratio (edit / random) | "
              "unrelated answers unchanged (edit / random) | other words still named (before / edit / random) | fit s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, m in models.items():
        c = m.get("control")
        if not c:
            continue
        e, r = c["edit"], c["random"]
        lines.append(f"| {n} | {c['n']} | {c['source_layer']} | {100 * e['success']:.0f} % {_ci(e['ci95'])} | "
                     f"{100 * r['success']:.0f} % {_ci(r['ci95'])} | {e['ppl_ratio']:.2f} / {r['ppl_ratio']:.2f} | "
                     f"{100 * e['answers_same']:.0f} % / {100 * r['answers_same']:.0f} % | "
                     f"{100 * c['others_recovered_before']:.0f} / {100 * e['others_recovered']:.0f} / "
                     f"{100 * r['others_recovered']:.0f} % | {c['fit_s']:.1f} |")
    without = [n for n, m in models.items() if not m.get("control")]
    if without:
        lines += ["", f"Supervised control was not run on {', '.join(without)} (CONTROL_MODELS in selfie.py's FULL)."]
    return "\n".join(lines) + "\n"


def _ci_auc(ci) -> str:
    lo, hi = ci
    return "n/a" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def write_report(out_dir, args, cfg, tokenizer, res) -> None:
    from analysis.plots import lines
    from analysis.report import Table, num, pct, write_json, write_section
    tag = " (quick)" if args.quick else ""
    layers, n_words, n_random = res["layers"], res["n_words"], res["n_random_words"]
    rate = {c: [res["identity"][c][l]["rate"] for l in layers] for c in ("selfie", "random")}
    own_rate, bare, timing = res["own_state"]["rate"], res["bare"], res["timing"]
    lines(layers, {"SelfIE (the word's own state)": rate["selfie"], f"random vector, same norm ({n_random} words)":
                   rate["random"], "placeholder's own state (no insertion)": [own_rate] * len(layers)},
          f"SelfIE identity recovery, {args.model}, {n_words} words, 'repeat' prompt, inserted at layer {args.insert_layer}",
          Path(out_dir) / "figures" / "selfie_identity.png", xlabel="layer of the interpreted state (hidden_states index)",
          ylabel="recovery rate", ylim=(-0.03, 1.03))
    overlay = f"{args.mode} overlay, strength {args.strength:g}"
    t1 = Table("selfie_identity", f"SelfIE identity recovery per layer{tag} ({args.model}; {n_words} single-token words, "
               f"repeat prompt, {EVAL_NEW_TOKENS} new tokens, insertion at layer {args.insert_layer}, {overlay})",
               ["layer", "SelfIE % [95 % CI]", "random same-norm % [95 % CI]", "placeholder own state %"],
               [[str(l), f"{pct(res['identity']['selfie'][l]['rate'], digits=0)} {_ci(res['identity']['selfie'][l]['ci95'])}",
                 f"{pct(res['identity']['random'][l]['rate'], digits=0)} {_ci(res['identity']['random'][l]['ci95'])}",
                 pct(own_rate, digits=0)] for l in layers],
               notes=[f"Recovered: the word appears among the generated words. Random control: {n_random} words. "
                      f"The bare prompt (no insertion) answers {bare!r}. Intervals: Wilson score."])
    counts = res["toxicity_prompts"]
    sauc, spl = res["toxicity_auc_selfie"], res["toxicity_auc_spline_layer"] or {}
    side = res["toxicity_per_side"]
    t2 = Table("selfie_toxicity", f"Does the model's own description mark toxic inputs?{tag} ROC-AUC per layer "
               f"({side['toxic']} toxic vs {side['clean']} clean held-out prompts)",
               ["layer", "SelfIE description (profanity score) [95 % CI]", "spline features of this layer (CV LR)"],
               [[str(l), f"{num(sauc[l]['auc'], '{:.3f}')} {_ci_auc(sauc[l]['ci95'])}" if l in sauc else "n/a",
                 num(spl.get(l), "{:.3f}")] for l in res["tox_layers"]] +
               [["all layers", "", num(res["toxicity_auc_spline_all"], "{:.3f}")]],
               notes=[f"Prompts: {', '.join(f'{k} {v}' for k, v in counts.items())}; rows the main job's feature sample "
                      f"did not use, cut to {TOX_MAX_TOKENS} tokens; the last token is interpreted with the summarize "
                      f"prompt ({TOX_NEW_TOKENS} new tokens), every {cfg['TOX_LAYER_STRIDE']}th layer.",
                      "The description is scored by alt-profanity-check (as ID_estimation.py); the spline detector is "
                      "a 5-fold cross-validated logistic regression on model.spline_features (row l: the 7 features of "
                      f"the block whose output is hidden_states[l], i.e. decoder layer l-1 counted from 0). Scoring the "
                      f"prompt text itself: {res['toxicity_auc_prompt_profanity']:.3f}. Interval: bootstrap over prompts."])
    t3 = Table("selfie_examples", f"SelfIE example interpretations{tag}, tokens with relevancy "
               "(|probability with the insertion minus without|, the original's score)",
               ["category", "input", "token", "layer", "interpretation (relevancy)"],
               [[e["category"], e["input"], e["token"].strip(), str(e["layer"]), _weighted(tokenizer, e["ids"], e["weights"])]
                for e in res["examples"]])
    tables = [t1, t2, t3]
    c = res["control"]
    if c:
        e, r = c["edit"], c["random"]
        tables.append(Table(
            "selfie_control", f"Supervised control{tag} ({args.model}; {c['n']} entity -> target word pairs; MLP of "
            f"decoder layer {c['source_layer'] - 1} trained {c['steps']} Adam steps at {c['lr']:g})",
            ["edit", "target named % [95 % CI]", "perplexity ratio (clean)", "unrelated answers unchanged %",
             "other words still named %"],
            [["SelfIE-supervised edit", f"{pct(e['success'], digits=0)} {_ci(e['ci95'])}", num(e["ppl_ratio"], "{:.3f}"),
              pct(e["answers_same"], digits=0), pct(e["others_recovered"], digits=0)],
             ["random edit, same size", f"{pct(r['success'], digits=0)} {_ci(r['ci95'])}", num(r["ppl_ratio"], "{:.3f}"),
              pct(r["answers_same"], digits=0), pct(r["others_recovered"], digits=0)]],
            notes=[f"Before any edit the entity's state names the entity for {pct(c['entity_named_before'], digits=0)} % "
                   f"and other words' states name theirs for {pct(c['others_recovered_before'], digits=0)} %. "
                   f"Fit: {c['fit_s']:.1f} s wall, {c['fit_cpu_s']:.1f} s CPU per edit."]))
    for t in tables:
        t.write(out_dir)
    (Path(out_dir) / "results").mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "results" / "selfie.json",
               {**{k: v for k, v in res.items() if k != "examples"}, "quick": bool(args.quick),
                "insert_layer": args.insert_layer, "strength": args.strength, "mode": args.mode})
    best = int(np.nanargmax(rate["selfie"]))
    control_note = "" if c else (" Supervised control is measured by `--full` (CONTROL_TARGETS = 0 in the main job, "
                                 "to stay within its budget).")
    md = "\n".join([
        f"## SelfIE: the model describes its own hidden states{tag}", "",
        f"`selfie.py --evaluate` on {args.model}: a hidden state is written over the placeholder of the model's "
        f"chat-templated interpretation prompt at the input of decoder layer {args.insert_layer} (hooks.py; {overlay}), "
        f"and the model generates. Identity recovery peaks at {pct(rate['selfie'][best], digits=0)} % (layer "
        f"{layers[best]}); a random vector of the same norm: at most {pct(np.nanmax(rate['random']), digits=0)} %; the "
        f"placeholder's own state: {pct(own_rate, digits=0)} %. This run took {timing['wall_s']:.0f} s wall, "
        f"{timing['cpu_s']:.0f} s CPU (interpretations cached by an earlier run are reused, not timed again)."
        + control_note, "",
        t1.markdown(), "![SelfIE identity recovery](figures/selfie_identity.png)", ""]
        + [t.markdown() for t in tables[1:]])
    write_section(out_dir, "selfie", md)
    print(f"SelfIE evaluation: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU; results/selfie.md written")


# -- command line ----------------------------------------------------------------------------------
# Flags whose default is None: given or not is known, so --evaluate can refuse the ones it cannot honour.
EVALUATE_HONOURS = ("model", "insert_layer", "strength", "mode", "batch_size", "no_chat_template", "seed", "out_dir",
                    "quick", "full", "update_readme")
DEFAULTS = {"model": MODEL, "interpretation_prompt": INTERPRETATION_PROMPT, "placeholders": N_PLACEHOLDERS,
            "insert_layer": INSERT_LAYER, "strength": OVERLAY_STRENGTH, "mode": REPLACING_MODE,
            "relevancy": RELEVANCY_KIND, "layers": LAYERS, "tokens": TOKENS, "max_new_tokens": MAX_NEW_TOKENS,
            "answer_tokens": ANSWER_TOKENS, "batch_size": BATCH_SIZE, "limit": 20, "seed": None, "out": OUT}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfie.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", help='the seed\'s input: {"examples": [{"prompt", "category", "raw"}]}')
    src.add_argument("--prompt", action="append", help="a prompt to interpret (repeat the flag for more)")
    src.add_argument("--dataset", help="a named dataset (python -m data lists them)")
    src.add_argument("--evaluate", action="store_true", help="the measured evaluation (tables, figure, RESULTS.md section)")
    p.add_argument("--quick", action="store_true", help="with --evaluate: a tiny smoke run")
    p.add_argument("--full", action="store_true", help="with --evaluate: the full-size run on both embedded models")
    p.add_argument("--update-readme", action="store_true", help="with --full: paste its tables into README.md")
    p.add_argument("--model", default=None, help=f"default {MODEL}; with --full: only this model (default: all of "
                   "FULL_MODELS)")
    p.add_argument("--interpretation-prompt", default=None,
                   help=f"{', '.join(INTERPRETATION_PROMPTS)} (default {INTERPRETATION_PROMPT}), or any text with "
                        f"{MARKER} where the placeholders go, e.g. \"[INST] {MARKER} [/INST] The materials mentioned "
                        "in the message are:\"")
    p.add_argument("--placeholders", type=positive_int, default=None, help=f"placeholders (default {N_PLACEHOLDERS})")
    p.add_argument("--insert-layer", type=int, default=None, help=f"k: insert at the input of decoder layer k (default {INSERT_LAYER})")
    p.add_argument("--strength", type=strength_arg, default=None,
                   help="overlay_strength: normalized mode 0..1 (default 1), addition mode any value >= 0")
    p.add_argument("--mode", default=None, choices=MODES, help=f"replacing_mode (default {REPLACING_MODE})")
    p.add_argument("--relevancy", default=None, choices=RELEVANCY,
                   help="absolute (the original's |p(with) - p(without)|, default) or signed (a departure)")
    p.add_argument("--layers", type=layers_arg, default=None,
                   help="states to interpret: hidden_states indices 0..L ('all', 'a-b', 'a-b:step', 'a,b'; default all)")
    p.add_argument("--tokens", default=None, help="token positions: user (default: the prompt's own text, not the chat "
                   "template's), all, last, last-N, a-b or a,b (positions in the whole encoded prompt)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help=f"interpretation length (default {MAX_NEW_TOKENS})")
    p.add_argument("--answer-tokens", type=positive_int, default=None, help=f"length of prompt_output (default {ANSWER_TOKENS})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"states per generate call (default {BATCH_SIZE})")
    p.add_argument("--raw", action="store_true", help="--prompt text as is (default: the chat template)")
    p.add_argument("--no-chat-template", action="store_true", help="the original's [INST] ... [/INST] format")
    p.add_argument("--no-relevancy", action="store_true", help="skip the relevancy scores (half the cost)")
    p.add_argument("--limit", type=positive_int, default=None, help="--dataset: a seeded sample of N texts (default 20)")
    p.add_argument("--seed", type=int, default=None, help="--dataset's sample; --evaluate's random control (default 0)")
    p.add_argument("--out", default=None, help=f"output CSV (default {OUT})")
    p.add_argument("--out-dir", default=str(ROOT), help="--evaluate: where tables/, figures/, results/ go")
    p.add_argument("--overwrite", action="store_true", help="recompute rows already computed for --out")
    return p


def check_evaluate_flags(args, argv) -> None:
    """--evaluate fixes its tasks' prompts, states and outputs: a flag it would ignore is refused by name."""
    ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in EVALUATE_HONOURS and k not in ("json", "prompt", "dataset", "evaluate", "argv", "model_given")
               and v not in (None, False)]
    if ignored:
        raise UserError(f"--evaluate does not take {', '.join(ignored)}: its tasks fix their own prompts (identity: "
                        "'repeat', 1 placeholder; toxicity: 'summarize', 5), states and outputs; it honours --model, "
                        "--insert-layer, --strength, --mode, --batch-size, --no-chat-template, --seed and --out-dir")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.model_given = args.model is not None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (args.quick or args.full) and not args.evaluate:
        raise UserError("--quick and --full go with --evaluate: add --evaluate, or drop them")
    if args.quick and args.full:
        raise UserError("--quick and --full contradict each other: choose one")
    if args.update_readme and not args.full:
        raise UserError("--update-readme pastes the tables of a --full run: add --evaluate --full, or drop it")
    if args.evaluate:
        check_evaluate_flags(args, argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.mode == "normalized" and args.strength > 1:
        raise UserError(f"--strength {args.strength:g} is above 1, which --mode normalized cannot take (it mixes "
                        "s * inserted + (1 - s) * old): use --mode addition for strengths above 1")
    if not args.evaluate and args.interpretation_prompt not in INTERPRETATION_PROMPTS and MARKER not in args.interpretation_prompt:
        raise UserError(f"--interpretation-prompt {args.interpretation_prompt!r} is neither a named prompt "
                        f"({', '.join(INTERPRETATION_PROMPTS)}) nor text with the placeholder marker {MARKER}: write e.g. "
                        f"\"[INST] {MARKER} [/INST] Sure, I will summarize the message:\"")
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
        parse_layer_spec(stepped_spec(args.layers), n_layers + 1)
    except UserError:
        raise UserError(f"--layers {args.layers} is out of range: the states are hidden_states 0..{n_layers} of "
                        f"{args.model} (0 = embeddings, {n_layers} = after the final norm); use e.g. 'all', "
                        f"'0-{n_layers}', '0-{n_layers}:5' or '1,{n_layers // 2}'") from None
    return run_interpret(args, model, tokenizer, examples)


if __name__ == "__main__":
    sys.exit(run_main(main, "selfie.py"))
