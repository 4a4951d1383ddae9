"""Baselines that expose shortcuts: features that show only a prompt's length or its surface.

If toxic and clean prompts differ in length or typography (comments vs documents, shouting, swear
punctuation), these reach a high ROC-AUC without reading a word; a spline detector that does no better
than them has not shown that it detects toxicity. analysis.detectors scores them on the same folds as every
detector, and the detection tables say when one comes within SHORTCUT_MARGIN of the best spline detector.
This module depends on no detector: the dependencies run detectors -> baselines.
"""
from __future__ import annotations

import string

import numpy as np

from .data import Task

SHORTCUT_MARGIN = 0.05   # ROC-AUC: a shortcut baseline this close to the spline detector is flagged
SURFACE_NAMES = ("log characters", "log words", "mean word length", "punctuation ratio", "capital ratio",
                 "digit ratio", "whitespace ratio", "'!' and '?' per character")
_PUNCT = set(string.punctuation)


def length_features(task: Task) -> np.ndarray:
    """[N, 2]: log token count and its square (a U-shaped length effect is caught too). Word counts stand
    in when the feature files carry no ``n_tokens`` column."""
    n = task.n_tokens if task.n_tokens is not None else np.array([len(t.split()) for t in task.texts], float)
    log_n = np.log1p(np.asarray(n, dtype=np.float64))
    return np.stack([log_n, log_n ** 2], axis=1)


def surface_features(texts) -> np.ndarray:
    """[N, 8] typography of each text, no vocabulary: sizes and character-class ratios (SURFACE_NAMES)."""
    rows = []
    for text in texts:
        text = str(text)
        chars = max(len(text), 1)
        words = text.split()
        letters = sum(c.isalpha() for c in text)
        rows.append([np.log1p(len(text)), np.log1p(len(words)),
                     np.mean([len(w) for w in words]) if words else 0.0,
                     sum(c in _PUNCT for c in text) / chars,
                     sum(c.isupper() for c in text) / max(letters, 1),
                     sum(c.isdigit() for c in text) / chars,
                     sum(c.isspace() for c in text) / chars,
                     sum(c in "!?" for c in text) / chars])
    return np.asarray(rows, dtype=np.float64)


SPLINE_KEYS = ("spline_lr", "spline_rf", "spline_rf_early")
SHORTCUT_KEYS = ("length_only", "surface")


def shortcut_notes(result: dict, where: str, margin: float = SHORTCUT_MARGIN) -> list[str]:
    """A note for each shortcut baseline within ``margin`` ROC-AUC of the best spline detector of
    ``result`` (one task of Run.detection), or a note that none came close."""
    dets = result["detectors"]

    def auc(key):
        d = dets.get(key)
        return d["metrics"]["roc_auc"]["mean"] if d and d.get("available") and "metrics" in d else None

    spline = [(auc(k), dets[k]["label"]) for k in SPLINE_KEYS if auc(k) is not None]
    if not spline:
        return []
    best, best_label = max(spline)
    notes = []
    for key in SHORTCUT_KEYS:
        value = auc(key)
        if value is not None and value >= best - margin:
            notes.append(f"SHORTCUT ({where}): {dets[key]['label']} reaches {100 * value:.2f} % ROC-AUC, within "
                         f"{100 * margin:.0f} points of {best_label} ({100 * best:.2f} %): on this task the classes "
                         "differ in length or typography, and the spline detector's number does not show that it "
                         "detects toxicity beyond that.")
    if not notes and any(auc(k) is not None for k in SHORTCUT_KEYS):
        top = max(auc(k) for k in SHORTCUT_KEYS if auc(k) is not None)
        notes.append(f"Shortcut baselines ({where}): at most {100 * top:.2f} % ROC-AUC, more than "
                     f"{100 * margin:.0f} points below {best_label} ({100 * best:.2f} %).")
    return notes
