#!/usr/bin/env python
"""A toxicity guard that rides on the served model's own forward pass (the paper's detector, made usable).

    python guard.py fit --model smollm2-135m --toxic rtp,slurs --clean pubmed,legal,comments,questions,code \
        --out guards/smollm2.guard.safetensors
    python guard.py score --guard guards/smollm2.guard.safetensors --texts in.csv --out scores.csv
    python guard.py chat --guard guards/smollm2.guard.safetensors
    python guard.py evaluate                 # the main job's section: results/guard.md (RESULTS.md picks it up)

In Python:

    guard = SplineGuard.load("guards/smollm2.guard.safetensors")
    guard.score(model, tokenizer, ["some text", ...])              # probabilities, one separate pass
    out = guard.generate(model, tokenizer, ["prompt", ...], on_flag="stop", max_new_tokens=32)
    out.scores, out.flagged, out.texts                              # scored from generate's own prefill

A guard is a standardised logistic regression (C chosen by an inner CV: analysis.models.TunedLR) on the
spline statistics of the gate pre-activations of some layers, and a threshold calibrated on held-out clean
texts so that about TARGET_FPR of clean prompts are flagged. Inside ``generate`` the statistics are taken by
hooks (hooks.py, through instrument.py's recorder) on the prefill, the one pass over the prompt that
generate runs anyway: no second forward pass. A file holds the arrays as safetensors and everything else as
JSON in its header; nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli import ArgumentParser, UserError, layer_spec, output_lock, positive_int, probability, run_main

ROOT = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- settings
MODEL = "smollm2-135m"
TOXIC = ["rtp", "slurs"]                                       # toxic rows of these (toxic == 1 where labelled)
CLEAN = ["pubmed", "legal", "comments", "questions", "code"]   # clean rows of these (toxic == 0 where labelled)
# Feature sets: the paper's 7 per layer; the project's chosen richer set (the region projection, 16 per
# layer, feature_io.FEATURE_SETS["extended"]); both together. The default was chosen by transfer (fit on
# one labelled source, score another), see the "guard" section of RESULTS.md, not by one corpus's CV.
GUARD_FEATURES = {"paper": ("paper",), "extended": ("regions",), "paper+extended": ("paper", "regions")}
# The best mean transfer ROC-AUC of the three in the main job's guard section (RESULTS.md), ahead or level on
# each of its three pairs; "extended" alone is close behind and cheaper in the prefill (it skips the paper's 7).
FEATURES = "paper+extended"
LAYERS = "all"             # or the first k layers, e.g. "0-2" (early exit: the rest of the model never runs)
TARGET_FPR = 0.01          # share of clean prompts flagged, calibrated on held-out clean texts
# The threshold is set on clean scores no fit has seen. "cross" (default): out-of-fold scores of every clean
# training row, from CALIBRATION_FOLDS fits on the other folds, while the guard itself is fitted on all rows:
# a 1 % quantile needs hundreds of clean rows, and a held-out share of a small set (the main job's second
# model has ~170 clean training rows) leaves a few dozen, whose largest score lets through several times the
# target. "holdout": a seeded CALIBRATION_SHARE of the clean rows is held out of the fit instead.
CALIBRATION = "cross"
CALIBRATION_FOLDS = 5
CALIBRATION_SHARE = 0.3    # "holdout" only: of the clean training rows
LR_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # as same_genre.py: C chosen per fit by an inner CV
INNER_FOLDS = 3
SAMPLE = 250               # texts per dataset for `fit` (seeded); the main job's sample
MAX_LENGTH = 128           # tokens, as the main job's features
BATCH_SIZE = 16
SEED = 0
REFUSAL = "I can't help with that."
FEATURES_DIR = "features/guard"  # `fit`'s cached feature files (extract_features.py's format)
FORMAT = "spline-guard/1"
# ----------------------------------------------------------------------------- end of settings


def _sha1(texts) -> str:
    digest = hashlib.sha1()
    for text in texts:
        digest.update(str(text).encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def library_versions() -> dict:
    import sklearn
    versions = {"numpy": np.__version__, "sklearn": sklearn.__version__}
    for name in ("torch", "transformers", "safetensors"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def model_shape(model) -> dict:
    """What a guard must agree on with a model: its family and sizes (the name is informative only)."""
    from hooks import _text_config
    from instrument import decoder_layers, find_gate, _row_weight
    layers = decoder_layers(model)
    cfg = _text_config(model.config)
    return {"model_type": getattr(cfg, "model_type", None), "n_layers": len(layers),
            "hidden_size": getattr(cfg, "hidden_size", None),
            "gate_units": int(_row_weight(find_gate(layers[0], 0)).shape[0]),
            "vocab_size": getattr(cfg, "vocab_size", None)}


def _describe_shape(shape: dict) -> str:
    return (f"{shape.get('model_type')}, {shape.get('n_layers')} layers, hidden size {shape.get('hidden_size')}, "
            f"{shape.get('gate_units')} gate units")


def feature_columns(spline: np.ndarray, extended: np.ndarray | None, groups) -> np.ndarray:
    """The guard's matrix from the per-layer arrays of its layers: spline [N, L, 7], extended [N, L, 16]
    (the region projection). Groups in GUARD_FEATURES order, each layer-major (as same_genre.py's blocks)."""
    parts = []
    for group in groups:
        if group == "paper":
            parts.append(spline.reshape(len(spline), -1))
        else:
            if extended is None:
                raise UserError("this guard needs the region projection (extended set), which the features lack: "
                                "extract with --features extended or candidates")
            parts.append(extended.reshape(len(extended), -1))
    return np.concatenate(parts, axis=1).astype(np.float64)


# ----------------------------------------------------------------------------- the guard
@dataclass
class GuardedGeneration:
    """What :meth:`SplineGuard.generate` returns, one entry per prompt (sequences: per returned sequence)."""
    sequences: object              # torch.LongTensor [B * num_return_sequences, T]: prompt + new tokens
    scores: np.ndarray             # [B] the guard's probability, from generate's own prefill
    flagged: np.ndarray            # [B] bool, score > threshold
    texts: list | None = None      # decoded new tokens (the refusal text for a stopped prompt), with a tokenizer
    prompt_width: int = 0          # columns of sequences that are the (padded) prompt
    raw: object = None             # generate's own return value (None when every prompt was stopped)


@dataclass
class SplineGuard:
    features: str = FEATURES
    layers: object = LAYERS        # a layer spec; a list of indices once fitted
    target_fpr: float = TARGET_FPR
    calibration: str = CALIBRATION
    calibration_folds: int = CALIBRATION_FOLDS
    calibration_share: float = CALIBRATION_SHARE
    lr_cs: tuple = LR_CS
    inner_folds: int = INNER_FOLDS
    seed: int = SEED
    max_length: int = MAX_LENGTH
    # fitted state
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float | None = None
    threshold_: float | None = None
    info: dict = field(default_factory=dict)   # model, shape, training data, C, versions ...

    def __post_init__(self):
        if self.features not in GUARD_FEATURES:
            raise UserError(f"unknown guard feature set {self.features!r}: choose among {list(GUARD_FEATURES)}")
        if not 0.0 < self.target_fpr < 1.0:
            raise UserError(f"target FPR must be in (0, 1), got {self.target_fpr}")
        if self.calibration not in ("cross", "holdout"):
            raise UserError(f"unknown calibration {self.calibration!r}: choose 'cross' or 'holdout'")

    @property
    def groups(self) -> tuple:
        return GUARD_FEATURES[self.features]

    @property
    def fitted(self) -> bool:
        return self.coef_ is not None

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, *, texts=None, info: dict | None = None) -> "SplineGuard":
        """Fit on a feature matrix (columns as :func:`feature_columns`), labels 1 = toxic, 0 = clean.

        The threshold is the score that at most ``target_fpr`` of the calibration scores exceed: the
        out-of-fold scores of every clean row ("cross") or the scores of a held-out share of them ("holdout");
        see CALIBRATION."""
        from sklearn.model_selection import StratifiedKFold

        from analysis.models import Settings, TunedLR, fit_quiet, make_lr
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(int)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be [N, F] with one label per row, got {X.shape} and {len(y)} labels")
        clean = np.flatnonzero(y == 0)
        s = Settings(seed=self.seed, lr_cs=tuple(self.lr_cs), inner_folds=self.inner_folds, n_jobs=1)
        if self.calibration == "cross":
            folds = min(self.calibration_folds, int((y == 1).sum()), len(clean))  # fewer when a class is small
            if folds < 2:
                raise UserError(f"too few rows to fit and calibrate a guard: {(y == 1).sum()} toxic, {len(clean)} clean "
                                "(need at least 2 of each); give more texts (--sample)")
            train = np.arange(len(y))
            final = fit_quiet(TunedLR(s), X, y)
            # The fold fits take the C chosen on all rows (no inner CV each: 5 fits, not 5 x 22); what they
            # give is only a threshold, and the C choice is the same small optimism for every clean row.
            fixed = Settings(seed=self.seed, lr_c=final.C_, lr_max_iter=s.lr_max_iter, n_jobs=1)
            calib_scores = np.empty(0)
            for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(X, y):
                self._set_model(fit_quiet(make_lr(fixed), X[fit_rows], y[fit_rows]))
                held_clean = held[y[held] == 0]
                calib_scores = np.concatenate([calib_scores, self.predict_features(X[held_clean])])
            n_cal = len(calib_scores)
        else:
            n_cal = int(round(self.calibration_share * len(clean)))
            if (y == 1).sum() < 2 or len(clean) - n_cal < 2 or n_cal < 1:
                raise UserError(f"too few rows to fit and calibrate a guard: {(y == 1).sum()} toxic, {len(clean)} clean "
                                "(need at least 2 toxic and 4 clean); give more texts (--sample)")
            rng = np.random.default_rng(self.seed)
            calib = np.sort(rng.choice(clean, size=n_cal, replace=False))
            train = np.setdiff1d(np.arange(len(y)), calib)
        if self.calibration == "holdout":
            final = fit_quiet(TunedLR(s), X[train], y[train])
        lr = self._set_model(final.model_)
        if self.calibration == "holdout":
            calib_scores = self.predict_features(X[calib])
        self.threshold_ = calibrated_threshold(calib_scores, self.target_fpr)
        self.info = {**(info or {}), "n_train": int(len(train)), "n_train_toxic": int((y[train] == 1).sum()),
                     "calibration": self.calibration, "n_calibration_clean": int(n_cal),
                     "C": float(np.ravel(lr.C_)[0]) if hasattr(lr, "C_") else float(lr.C),
                     "calibration_fpr": float((calib_scores > self.threshold_).mean()),
                     "library_versions": library_versions()}
        if texts is not None:
            self.info.setdefault("train_sha1", _sha1(texts))
        return self

    def _set_model(self, model):
        """Take the scaler and LR of a fitted TunedLR pipeline as the guard's arrays; returns the LR."""
        scaler, lr = model.named_steps["scale"], model.named_steps["lr"]
        self.mean_ = scaler.mean_.astype(np.float64)
        self.scale_ = scaler.scale_.astype(np.float64)
        positive = 1.0 if list(lr.classes_) == [0, 1] else -1.0
        self.coef_ = positive * np.ravel(lr.coef_).astype(np.float64)
        self.intercept_ = float(positive * np.ravel(lr.intercept_)[0])
        return lr

    def fit_files(self, toxic: list, clean: list) -> "SplineGuard":
        """Fit from feature files of extract_features.py: ``toxic``/``clean`` are paths, or (path, row filter)
        pairs with filter "toxic"/"clean" (rows whose ``toxic`` column is 1/0, all rows where there is none)."""
        blocks, datasets = [], []
        self._file_info = None
        for label, specs in ((1, toxic), (0, clean)):
            for spec in specs:
                path, row_filter = (spec if isinstance(spec, tuple) else (spec, None))
                X, texts, meta = self.file_matrix(path, row_filter)
                blocks.append((X, np.full(len(X), label), texts))
                datasets.append({"file": str(path), "label": "toxic" if label else "clean", "rows": int(len(X)),
                                 "filter": row_filter, "input_sha1": meta.get("settings", {}).get("input_sha1"),
                                 "rows_sha1": _sha1(texts)})
        X = np.concatenate([b[0] for b in blocks])
        y = np.concatenate([b[1] for b in blocks])
        texts = np.concatenate([b[2] for b in blocks])
        first = self._file_info
        info = {"model": first.get("model"), "training_datasets": datasets, "max_length": first.get("max_length"),
                "dtype": first.get("dtype"), "n_layers_total": first.get("n_layers_total")}
        self.max_length = int(first.get("max_length") or self.max_length)
        return self.fit(X, y, texts=texts, info=info)

    def fit_texts(self, model, tokenizer, texts, labels, name: str | None = None,
                  batch_size: int = BATCH_SIZE) -> "SplineGuard":
        """Fit on ``texts`` with ``labels`` (1 toxic, 0 clean), their features from ``model`` itself."""
        self.bind(model, name or getattr(model.config, "_name_or_path", None))
        X, _ = self.features_of(model, tokenizer, texts, batch_size)
        info = {"model": self.info.get("model"), "shape": self.info["shape"],
                "training_datasets": [{"texts": len(texts), "rows_sha1": _sha1(texts)}]}
        return self.fit(X, labels, texts=texts, info=info)

    def file_matrix(self, path, row_filter=None):
        """(X, texts, metadata) of a feature file's rows for this guard's features and layers."""
        from feature_io import load_extended, load_features, read_feature_metadata
        from analysis.data import ROW_FILTERS
        path = Path(path)
        if not path.exists():
            raise UserError(f"feature file not found: {path}; extract it with extract_features.py")
        meta = read_feature_metadata(path)
        spline, _, frame = load_features(path)
        file_layers = list(meta["layers"])
        n_total = int(meta.get("n_layers_total") or len(file_layers))
        wanted = self._resolve_layers(n_total)
        missing = [i for i in wanted if i not in file_layers]
        if missing:
            raise UserError(f"{path} holds layers {file_layers[0]}-{file_layers[-1]}, not the guard's {missing}: "
                            "extract all layers, or fit a guard on the layers it has (--layers)")
        pick = [file_layers.index(i) for i in wanted]
        self.layers = wanted
        extended = None
        if "regions" in self.groups:
            matrix, names = load_extended(path)
            if matrix is None:
                raise UserError(f"{path} has no extended statistics; the {self.features!r} guard needs the region "
                                "projection: extract with --features extended (or candidates), or use --features paper")
            from feature_io import FEATURE_GROUPS
            cols = [names.index(f"L{layer}.{stat}") for layer in wanted for stat in FEATURE_GROUPS["regions"]]
            extended = matrix[:, cols].reshape(len(matrix), len(wanted), -1)
        rows = np.arange(len(frame))
        if row_filter and "toxic" in frame.columns:
            rows = rows[frame["toxic"].to_numpy() == ROW_FILTERS[row_filter]]
        X = feature_columns(spline[:, pick][rows], None if extended is None else extended[rows], self.groups)
        if not hasattr(self, "_file_info") or self._file_info is None:
            self._file_info = meta
        return X, frame["text"].astype(str).to_numpy()[rows], meta

    _file_info = None

    def _resolve_layers(self, n_layers: int) -> list[int]:
        from cli import parse_layer_spec
        if isinstance(self.layers, (list, tuple)):
            bad = [i for i in self.layers if not 0 <= i < n_layers]
            if bad:
                raise UserError(f"guard layers {bad} out of range: the model has {n_layers} layers")
            return sorted(int(i) for i in self.layers)
        return parse_layer_spec(self.layers, n_layers)

    def bind(self, model, name: str | None = None) -> "SplineGuard":
        """Record the model a guard is fitted for (after fit_files or fit): its shape is checked on use."""
        shape = model_shape(model)
        self.layers = self._resolve_layers(shape["n_layers"])
        self.info["shape"] = shape
        if name:
            self.info["model"] = name
        return self

    # -- scoring --------------------------------------------------------------------------------
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Probability of 'toxic' for rows of the guard's feature matrix."""
        if not self.fitted:
            raise RuntimeError("the guard is not fitted: call fit, fit_files or load first")
        X = np.asarray(X, dtype=np.float64)
        if X.shape[1] != len(self.coef_):
            raise ValueError(f"the guard takes {len(self.coef_)} features, got {X.shape[1]}")
        z = ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def flag(self, scores) -> np.ndarray:
        return np.asarray(scores) > self.threshold_

    def check_model(self, model) -> None:
        """Refuse a model whose shape is not the one the guard was fitted for, saying both."""
        want = self.info.get("shape")
        have = model_shape(model)
        if want is None:
            raise UserError("the guard records no model shape: fit it through guard.py fit (or call bind(model))")
        diff = [k for k in ("model_type", "n_layers", "hidden_size", "gate_units", "vocab_size")
                if want.get(k) != have.get(k)]
        if diff:
            raise UserError(f"this guard was fitted for {self.info.get('model')} ({_describe_shape(want)}); the model "
                            f"given is {_describe_shape(have)} (differs in {', '.join(diff)}): fit a guard for this "
                            "model with `guard.py fit --model ...`")

    def _layer_args(self):
        """(layers, the recorder's extended groups, whether the paper's 7 are needed): a regions-only guard
        skips the paper's statistics, the larger part of the recorder's work on each layer."""
        from feature_io import FEATURE_SETS
        return (list(self.layers), (FEATURE_SETS["extended"] if "regions" in self.groups else ()),
                "paper" in self.groups)

    def features_of(self, model, tokenizer, texts, batch_size: int = BATCH_SIZE, padding_side: str = "right"):
        """(X [N, F], seconds per text [N]) of ``texts`` in one separate, batched and padded pass (early exit
        after the guard's deepest layer)."""
        from input_spool import pad_batch
        from instrument import instrument
        texts = [str(t) for t in texts]
        if not texts:
            raise UserError("no texts to score")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise UserError(f"{len(empty)} of the {len(texts)} texts are empty (first: row {empty[0]}): remove them")
        self.check_model(model)
        recorder = instrument(model).spline_recorder
        layers, groups, paper = self._layer_args()
        ids = [tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        X = [None] * len(texts)
        latency = np.zeros(len(texts))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in batch], pad_id, padding_side)
            began = time.perf_counter()
            out = recorder.run(input_ids, mask, layers, with_id=False, groups=groups, paper=paper)
            spline = out["spline"].float().cpu().numpy() if paper else None
            extended = out["extended"].float().cpu().numpy() if groups else None
            rows = feature_columns(spline, extended, self.groups)
            latency[batch] = (time.perf_counter() - began) / len(batch)
            for j, i in enumerate(batch):
                X[i] = rows[j]
        return np.stack(X), latency

    def score(self, model, tokenizer, texts, batch_size: int = BATCH_SIZE, padding_side: str = "right") -> np.ndarray:
        """Probability of 'toxic' for each text, from a separate pass of ``model`` (batched, padded)."""
        X, _ = self.features_of(model, tokenizer, texts, batch_size, padding_side)
        return self.predict_features(X)

    # -- inside generate ------------------------------------------------------------------------
    def attach(self, model, on_flag: str = "continue") -> "AttachedGuard":
        """Hooks that score every ``model.generate`` call from its prefill (see :class:`AttachedGuard`)."""
        return AttachedGuard(self, model, on_flag)

    def generate(self, model, tokenizer=None, prompts=None, *, input_ids=None, attention_mask=None,
                 on_flag: str = "continue", refusal: str = REFUSAL, **generate_kwargs) -> GuardedGeneration:
        """``model.generate`` with the guard scoring each prompt from generate's own prefill.

        Give ``prompts`` (strings, tokenised with left padding by ``tokenizer``) or ``input_ids`` /
        ``attention_mask``. ``on_flag="stop"``: a flagged prompt gets no new token (its new columns are padding)
        and ``refusal`` as its text; when every prompt of the batch is flagged the prefill itself stops after the
        guard's deepest layer. Other prompts' outputs are those of the unguarded call."""
        import torch
        if prompts is not None:
            if tokenizer is None:
                raise ValueError("prompts need a tokenizer")
            prompts = [str(p) for p in prompts]
            if not prompts or any(not p.strip() for p in prompts):
                raise UserError("every prompt must hold some text")
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            try:
                enc = tokenizer(prompts, return_tensors="pt", padding=True)
            finally:
                tokenizer.padding_side = side
            input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
        if input_ids is None:
            raise ValueError("give prompts or input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = model.get_input_embeddings().weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        n_return = int(generate_kwargs.get("num_return_sequences") or 1)
        with self.attach(model, on_flag) as attached:
            raw = attached.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        scores, flagged = attached.scores, attached.flagged
        width = input_ids.shape[1]
        if raw is None:  # every prompt stopped in the prefill: the prompts alone
            sequences = input_ids.repeat_interleave(n_return, dim=0)
        else:
            sequences = raw if isinstance(raw, torch.Tensor) else raw.sequences
            if on_flag == "stop" and flagged.any():
                sequences = sequences.clone()
                pad = _pad_id(model, tokenizer)
                rows = torch.as_tensor(np.repeat(flagged, n_return), device=sequences.device)
                sequences[rows, width:] = pad
        texts = None
        if tokenizer is not None:
            texts = []
            for r in range(sequences.shape[0]):
                if on_flag == "stop" and flagged[r // n_return]:
                    texts.append(refusal)
                else:
                    texts.append(tokenizer.decode(sequences[r, width:], skip_special_tokens=True))
        return GuardedGeneration(sequences, scores, flagged, texts, width, raw)


def _pad_id(model, tokenizer):
    for source in (tokenizer, getattr(model, "generation_config", None), model.config):
        value = getattr(source, "pad_token_id", None) if source is not None else None
        if isinstance(value, int):
            return value
    eos = getattr(model.generation_config, "eos_token_id", None)
    return (eos[0] if isinstance(eos, list) else eos) or 0


def calibrated_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold that at most ``target_fpr`` of ``clean_scores`` exceed (flag: score > threshold)."""
    ordered = np.sort(np.asarray(clean_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(target_fpr * len(ordered) + 1e-9))  # clean rows that may lie above it
    return float(ordered[min(allowed, len(ordered) - 1)])


class AttachedGuard:
    """The guard's hooks on a model's gates (through hooks.py), for ``with`` or until ``close()``.

    The first forward pass after :meth:`arm` (generate's prefill, the pass over the whole prompt) is scored,
    and the hooks are then removed until the next :meth:`arm`: the decoding steps run unhooked. The
    statistics come from instrument.py's recorder callback on the same tensors the model computes, so no
    output changes. With ``on_flag="stop"`` a batch whose every prompt is flagged ends at the guard's deepest
    layer (StopForward, caught by :meth:`generate`); otherwise flagged rows are ended after one step by a
    stopping criterion (their one token is blanked out by SplineGuard.generate)."""

    def __init__(self, guard: SplineGuard, model, on_flag: str = "continue"):
        from instrument import instrument
        if on_flag not in ("continue", "stop"):
            raise UserError(f"on_flag must be 'continue' or 'stop', got {on_flag!r}")
        guard.check_model(model)
        self.guard, self.model, self.on_flag = guard, model, on_flag
        self.recorder = instrument(model).spline_recorder
        layers, self.groups, self.paper = guard._layer_args()
        self.layers = layers
        self.deepest = layers[-1]
        self._state = None
        self.scores = self.flagged = None
        self._traces = None
        self._open()

    def _open(self) -> None:
        from hooks import TraceDict
        if self._traces is None:
            self._traces = TraceDict(self.model, [self.recorder.gates[i] for i in self.layers], retain_output=False,
                                     edit_output=self._on_gate)

    def _remove(self) -> None:
        if self._traces is not None:
            self._traces.close()
            self._traces = None

    def arm(self, attention_mask, n_prompts: int) -> None:
        """Score the next forward pass: its rows are the ``n_prompts`` prompts, each repeated (beams, samples)."""
        self._open()
        self._state = {"mask": attention_mask.bool(), "n": n_prompts, "run": None}
        self.scores = self.flagged = None

    def _on_gate(self, h, name):
        state = self._state
        if state is None:
            return None
        if state["run"] is None:  # first gate of the prefill: the recorder's per-batch state
            repeat = h.shape[0] // state["n"]
            mask = state["mask"].repeat_interleave(repeat, dim=0)
            if mask.shape[1] != h.shape[1]:
                self._state = None
                raise RuntimeError(f"the guard expected the prefill of {mask.shape[1]} tokens, got {h.shape[1]}: "
                                   "chunked prefill or assisted generation is not supported")
            state["repeat"] = repeat
            state["run"] = {"mask": mask, "groups": self.groups, "spline": {}, "extended": {}, "with_id": False,
                            "wanted": set(), "ids": {}, "paper": self.paper}
        # the recorder's own per-layer statistics (one implementation), on the prefill generate runs
        if self.recorder.record_gate(state["run"], h, name) == self.deepest:
            self._finish(state)
        return None

    def _finish(self, state) -> None:
        import torch
        run, step = state["run"], state["repeat"]
        spline = (torch.stack([run["spline"][i] for i in self.layers], dim=1)[::step].float().cpu().numpy()
                  if self.paper else None)
        extended = (torch.stack([run["extended"][i] for i in self.layers], dim=1)[::step].float().cpu().numpy()
                    if self.groups else None)
        self.scores = self.guard.predict_features(feature_columns(spline, extended, self.guard.groups))
        self.flagged = self.guard.flag(self.scores)
        self._state = None  # the decoding steps are not scored
        # ... nor hooked: a module with hooks takes torch's slower call path, about 1 % of a 16-token
        # generate on SmolLM2 for 30 no-op hooks. The next arm() registers them again.
        self._remove()
        if self.on_flag == "stop":
            self._stop_rows = torch.as_tensor(np.repeat(self.flagged, step))
            if self.flagged.all():
                from hooks import StopForward
                raise StopForward

    def generate(self, **kwargs):
        """``model.generate(**kwargs)`` scored from its prefill; None when every prompt was stopped there."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from hooks import StopForward
        attached = self

        class StopFlagged(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                rows = getattr(attached, "_stop_rows", None)
                if rows is None or rows.shape[0] != input_ids.shape[0]:
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return rows.to(input_ids.device)

        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.arm(torch.ones_like(ids) if mask is None else mask, ids.shape[0])
        self._stop_rows = None
        if self.on_flag == "stop" and int(kwargs.get("num_beams") or 1) == 1:
            criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
            criteria.append(StopFlagged())
            kwargs["stopping_criteria"] = criteria
        try:
            out = self.model.generate(**kwargs)
        except StopForward:
            out = None
        finally:
            self._state = None
        if self.scores is None:
            raise RuntimeError("the guard saw no prefill: generate ran no forward pass through its layers")
        return out

    def close(self) -> None:
        self._remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ----------------------------------------------------------------------------- save / load
ARRAYS = ("mean_", "scale_", "coef_")


def save(guard: SplineGuard, path) -> Path:
    """Arrays as safetensors, the rest as JSON in the file's header metadata (no pickle anywhere)."""
    from safetensors.numpy import save_file
    if not guard.fitted:
        raise RuntimeError("fit the guard before saving it")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(getattr(guard, name), dtype=np.float64) for name in ARRAYS}
    arrays["intercept_"] = np.array([guard.intercept_], dtype=np.float64)
    arrays["threshold_"] = np.array([guard.threshold_], dtype=np.float64)
    meta = {"format": FORMAT, "features": guard.features, "groups": list(guard.groups), "layers": list(guard.layers),
            "target_fpr": guard.target_fpr, "calibration": guard.calibration,
            "calibration_folds": guard.calibration_folds, "calibration_share": guard.calibration_share, "lr_cs": list(guard.lr_cs),
            "inner_folds": guard.inner_folds, "seed": guard.seed, "max_length": guard.max_length,
            "threshold": guard.threshold_, "info": guard.info}
    partial = path.with_name(path.name + ".partial")
    save_file(arrays, str(partial), metadata={"spline_guard": json.dumps(meta, sort_keys=True)})
    partial.replace(path)
    return path


def load(path) -> SplineGuard:
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise UserError(f"guard file not found: {path}; fit one with `guard.py fit --out {path}`")
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = (handle.metadata() or {}).get("spline_guard")
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is not a guard file ({' '.join(str(error).split())}); fit one with guard.py fit") from None
    if meta is None:
        raise UserError(f"{path} is a safetensors file but not a guard (no spline_guard metadata)")
    meta = json.loads(meta)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has guard format {meta.get('format')!r}; this code reads {FORMAT!r}: fit it again")
    guard = SplineGuard(features=meta["features"], layers=list(meta["layers"]), target_fpr=meta["target_fpr"],
                        calibration=meta.get("calibration", "holdout"),  # files from before "cross" existed
                        calibration_folds=meta.get("calibration_folds", CALIBRATION_FOLDS),
                        calibration_share=meta["calibration_share"], lr_cs=tuple(meta["lr_cs"]),
                        inner_folds=meta["inner_folds"], seed=meta["seed"], max_length=meta["max_length"])
    for name in ARRAYS:
        setattr(guard, name, arrays[name])
    guard.intercept_ = float(arrays["intercept_"][0])
    guard.threshold_ = float(arrays["threshold_"][0])
    guard.info = meta["info"]
    return guard


SplineGuard.save = lambda self, path: save(self, path)
SplineGuard.load = staticmethod(load)


# ----------------------------------------------------------------------------- command line
def _dataset_specs(names: str, side: str) -> list[str]:
    specs = [n.strip() for n in str(names).split(",") if n.strip()]
    if not specs:
        raise UserError(f"--{side} names no dataset; give a comma list such as {','.join(TOXIC if side == 'toxic' else CLEAN)}")
    return specs


def cmd_fit(args) -> int:
    from analysis.data import parse_spec
    from extract_features import extract_features
    from model_loading import load_model
    guard = SplineGuard(features=args.features, layers=args.layers, target_fpr=args.target_fpr, seed=args.seed,
                        calibration=args.calibration, max_length=args.max_length)
    groups = "extended" if "regions" in guard.groups else "paper"  # extract_features' --features
    sides = {}
    for side, default_filter in (("toxic", "toxic"), ("clean", "clean")):
        sides[side] = []
        for spec in _dataset_specs(getattr(args, side), side):
            name, row_filter = parse_spec(spec)
            path = extract_features(dataset=name, model=args.model, sample=args.sample, seed=args.seed,
                                    max_length=args.max_length, batch_size=args.batch_size, layers=args.layers,
                                    with_id=False, features_dir=args.features_dir, replace_stale=True,
                                    features=groups, progress=not args.no_progress)
            sides[side].append((path, row_filter or default_filter))
    guard.fit_files(sides["toxic"], sides["clean"])
    guard.bind(load_model(args.model, device="cpu" if args.device is None else args.device), args.model)
    with output_lock(args.out, what=str(args.out)):
        save(guard, args.out)
    print(f"{args.out}: {guard.features} features, layers {guard.layers[0]}-{guard.layers[-1]}, threshold "
          f"{guard.threshold_:.4f} (target FPR {guard.target_fpr:.2%}, calibration FPR "
          f"{guard.info['calibration_fpr']:.2%} on {guard.info['n_calibration_clean']} clean texts no fit saw, "
          f"{guard.calibration} calibration), C "
          f"{guard.info['C']:g}")
    return 0


def _model_for(guard: SplineGuard, name: str | None, device: str | None):
    from model_loading import load_model, load_tokenizer
    name = name or guard.info.get("model")
    if not name:
        raise UserError("the guard does not name its model: pass --model")
    model = load_model(name, device=device)
    guard.check_model(model)
    return model, load_tokenizer(name)


def cmd_score(args) -> int:
    import pandas as pd
    from extract_features import check_text_column, read_texts
    frame = read_texts(args.texts, args.text_column)
    check_text_column(frame, args.text_column, args.texts)
    texts = frame[args.text_column].astype(str).tolist()
    if not texts or all(not t.strip() for t in texts):
        raise UserError(f"{args.texts} has no non-empty text to score ({len(texts)} rows)")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise UserError(f"{args.texts}: {len(empty)} empty text(s) (first at row {empty[0]}); remove them")
    guard = load(args.guard)
    model, tokenizer = _model_for(guard, args.model, args.device)
    X, latency = guard.features_of(model, tokenizer, texts, args.batch_size)
    scores = guard.predict_features(X)
    out = pd.DataFrame({"text": texts, "score": scores, "flag": guard.flag(scores), "latency_s": latency})
    with output_lock(args.out, what=str(args.out)):
        partial = Path(str(args.out) + ".partial")
        out.to_csv(partial, index=False)
        partial.replace(args.out)
    print(f"{args.out}: {len(out)} texts, {int(out['flag'].sum())} flagged (threshold {guard.threshold_:.4f})")
    return 0


def cmd_chat(args, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    guard = load(args.guard)
    model, tokenizer = _model_for(guard, args.model, args.device)
    history = []
    print("guarded chat: an empty line or Ctrl-D ends it", file=stdout, flush=True)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            return 0
        history.append({"role": "user", "content": line.strip()})
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in history) + "\nassistant:"
        # The guard scores the user's turn alone, the register it was fitted on (raw texts): generate's prefill
        # runs over the whole templated conversation, whose statistics it was never fitted on. So a turn costs
        # one short pass over the turn itself, then an unguarded generate.
        score = float(guard.score(model, tokenizer, [line.strip()])[0])
        if score > guard.threshold_:
            history.pop()
            print(f"[guard {score:.3f} > {guard.threshold_:.3f}: refused] {args.refusal}", file=stdout, flush=True)
            continue
        import torch
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            tokens = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        reply = tokenizer.decode(tokens[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": reply})
        print(f"[guard {score:.3f}] {reply}", file=stdout, flush=True)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="guard.py", description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    f = sub.add_parser("fit", help="fit a guard on labelled datasets and save it")
    f.add_argument("--model", default=MODEL)
    f.add_argument("--toxic", default=",".join(TOXIC), help="comma list of datasets (their toxic rows)")
    f.add_argument("--clean", default=",".join(CLEAN), help="comma list of datasets (their clean rows)")
    f.add_argument("--out", required=True, help="the guard file, e.g. guards/smollm2.guard.safetensors")
    f.add_argument("--features", default=FEATURES, choices=list(GUARD_FEATURES))
    f.add_argument("--layers", default=LAYERS, type=layer_spec, help="'all' or the first k layers, e.g. 0-2")
    f.add_argument("--target-fpr", type=probability, default=TARGET_FPR)
    f.add_argument("--calibration", default=CALIBRATION, choices=("cross", "holdout"),
                   help="threshold from out-of-fold clean scores (cross, default) or a held-out share (holdout)")
    f.add_argument("--sample", type=positive_int, default=SAMPLE, help="texts per dataset (seeded)")
    f.add_argument("--max-length", type=positive_int, default=MAX_LENGTH)
    f.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    f.add_argument("--seed", type=int, default=SEED)
    f.add_argument("--features-dir", default=FEATURES_DIR)
    f.add_argument("--device", default=None)
    f.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("score", help="score texts: a CSV of text, score, flag, latency_s")
    s.add_argument("--guard", required=True)
    s.add_argument("--texts", required=True, help=".txt, .csv, .jsonl or .parquet (as extract_features.py)")
    s.add_argument("--text-column", default="text")
    s.add_argument("--out", required=True, help="output CSV")
    s.add_argument("--model", default=None, help="default: the model the guard names")
    s.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    s.add_argument("--device", default=None)
    c = sub.add_parser("chat", help="a minimal terminal chat that refuses flagged turns")
    c.add_argument("--guard", required=True)
    c.add_argument("--model", default=None)
    c.add_argument("--max-new-tokens", type=positive_int, default=64)
    c.add_argument("--refusal", default=REFUSAL)
    c.add_argument("--device", default=None)
    e = sub.add_parser("evaluate", help="the main job's section: held-out, same-genre, transfer, cost")
    e.add_argument("--quick", action="store_true")
    e.add_argument("--features-dir", default="features")
    e.add_argument("--models", default=None, help="comma list (default: the two embedded models of the main job)")
    e.add_argument("--out-dir", default=".")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fit":
        if not 0 < args.target_fpr < 1:
            raise UserError(f"--target-fpr must be between 0 and 1 (exclusive), got {args.target_fpr}")
        return cmd_fit(args)
    if args.command == "score":
        return cmd_score(args)
    if args.command == "chat":
        return cmd_chat(args)
    from guard_eval import evaluate
    return evaluate(args)


if __name__ == "__main__":
    sys.exit(run_main(main, "guard.py"))
