"""Every toxicity detector of the comparison, scored on the same folds from continuous scores.

Spline detectors (ours): logistic regression on all layers' features, random forest on all
layers, random forest on the first k layers (from the early-exit run when it exists).
Baselines: TF-IDF + logistic regression on the text, alt-profanity-check (a packaged classifier,
zero-shot), a linear probe on the same model's mean-pooled hidden states, and two shortcut baselines
that see only length or typography (analysis/baselines.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from feature_io import FEATURE_STATS

from .baselines import SURFACE_NAMES, length_features, surface_features
from .data import Task
from .models import Settings, fit_quiet, make_lr, make_rf, positive_scores, timed


@dataclass
class Detector:
    key: str
    label: str
    features: str
    # (task, train rows, test rows) -> (scores of the test rows, classifier seconds on the test rows)
    fit_score: Callable | None
    # Per-prompt extraction latency: the Task attribute holding it, a fixed number of seconds (0.0 for
    # the text baselines, which run no language model), or None (not measured)
    latency: str | float | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.fit_score is not None


def _on(matrix_of: Callable, make_model: Callable):
    def fit_score(task: Task, train, test):
        X = matrix_of(task)
        model = fit_quiet(make_model(), X[train], task.y[train])
        return timed(positive_scores, model, X[test])
    return fit_score


def shortcut_detectors(s: Settings) -> list[Detector]:
    """The two shortcut baselines of analysis/baselines.py (no model: latency 0)."""
    lr = lambda: make_lr(s)  # noqa: E731
    return [
        Detector("length_only", "Length only (LR on token count)", "log token count (+ square)",
                 _on(length_features, lr), 0.0, "shortcut baseline: sees only the prompt's length"),
        Detector("surface", "Surface statistics (LR)", f"{len(SURFACE_NAMES)} character/word statistics",
                 _on(lambda t: surface_features(t.texts), lr), 0.0,
                 "shortcut baseline: lengths, punctuation, capital, digit and space ratios; no words"),
    ]


def _tfidf_lr(s: Settings):
    def fit_score(task: Task, train, test):
        model = Pipeline([
            ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=100_000)),
            ("lr", LogisticRegression(C=s.lr_c, max_iter=s.lr_max_iter, random_state=s.seed)),
        ])
        texts = task.texts
        for fallback in ({}, {"tfidf__min_df": 1}, {"tfidf__min_df": 1, "tfidf__analyzer": "char_wb"}):
            try:  # a tiny corpus can leave no word seen twice, or no word at all: fall back to characters
                model.set_params(**fallback)
                fit_quiet(model, texts[train], task.y[train])
                break
            except ValueError as err:
                if "vocabulary" not in str(err) and "no terms remain" not in str(err):
                    raise
        else:  # no text at all: an uninformative constant score
            return timed(lambda t: np.full(len(t), 0.5), texts[test])
        return timed(positive_scores, model, texts[test])
    return fit_score


def load_profanity_check():
    """(predict_prob, note): predict_prob is None when the package cannot run here."""
    try:
        from profanity_check import predict_prob
        predict_prob(["hello"])
        return predict_prob, ""
    except Exception as err:  # a missing package or a pickle that no longer loads
        return None, f"alt-profanity-check could not run: {type(err).__name__}: {err}"


def _profanity(predict_prob):
    def fit_score(task: Task, train, test):  # zero-shot: nothing is trained
        return timed(lambda t: np.asarray(predict_prob(list(t)), dtype=float), task.texts[test])
    return fit_score


def detectors_for(task: Task, s: Settings, early_k: int, early_is_exit: bool) -> list[Detector]:
    """The detectors that can run on ``task`` (unavailable ones carry a note)."""
    k = early_k
    n_features = task.X.shape[1]
    n_layers = n_features // len(FEATURE_STATS)
    early_label = f"Spline-RF (first {k} layers" + (", early exit)" if early_is_exit else ", sliced from full run)")
    early_matrix = (lambda t: t.X_early[:, :7 * k]) if early_is_exit else (lambda t: t.X[:, :7 * k])
    dets = [
        Detector("spline_lr", f"Spline-LR (all {n_layers} layers)", f"{n_features} spline features",
                 _on(lambda t: t.X, lambda: make_lr(s)), "latency"),
        Detector("spline_rf", f"Spline-RF (all {n_layers} layers)", f"{n_features} spline features",
                 _on(lambda t: t.X, lambda: make_rf(s)), "latency"),
        Detector("spline_rf_early", early_label, f"{7 * k} spline features",
                 _on(early_matrix, lambda: make_rf(s)), "latency_early" if early_is_exit else None,
                 "" if early_is_exit else "no early-exit feature files: features sliced from the full run, "
                 "so its extraction latency is not measured"),
        Detector("tfidf_lr", "TF-IDF + LR (text)", "word 1-2-grams", _tfidf_lr(s), 0.0),
        *shortcut_detectors(s),  # length-only and surface statistics (analysis/baselines.py)
    ]
    predict_prob, note = load_profanity_check()
    dets.append(Detector("profanity_check", "alt-profanity-check (zero-shot)", "its own TF-IDF + linear SVM",
                         _profanity(predict_prob) if predict_prob else None, 0.0,
                         note or "packaged classifier, not trained on these data"))
    if task.hidden is not None:
        dets.append(Detector("hidden_probe", f"Hidden-state probe (LR, {task.hidden.shape[1]} dims)",
                             f"{task.hidden.shape[1]} mean-pooled hidden dims",
                             _on(lambda t: t.hidden, lambda: make_lr(s)), "latency"))
    else:
        dets.append(Detector("hidden_probe", "Hidden-state probe (LR)", "mean-pooled hidden states", None, None,
                             "no hidden states in the feature files (extract with --save-hidden)"))
    return dets
