"""Classifiers, folds, label subsets and the metrics every detector is scored with."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import SelfTrainingClassifier

UNLABELED = -1


@dataclass
class Settings:
    seed: int = 0
    folds: int = 5
    rf_trees: int = 200
    n_jobs: int = 2
    lr_c: float = 1.0
    lr_cs: tuple = ()         # when given, C is chosen among these per fit by an inner CV (ROC-AUC), else lr_c
    inner_folds: int = 3
    lr_max_iter: int = 2000
    self_train_threshold: float = 0.75
    self_train_max_iter: int = 10
    fpr_target: float = 0.01
    timing: bool = True


def make_lr(s: Settings):
    # Features mix distances and fractions on very different scales: standardise for the linear model.
    if s.lr_cs:
        return TunedLR(s)
    return Pipeline([("scale", StandardScaler()),
                     ("lr", LogisticRegression(C=s.lr_c, max_iter=s.lr_max_iter, random_state=s.seed))])


class TunedLR(ClassifierMixin, BaseEstimator):
    """Standardised logistic regression whose C is chosen among ``s.lr_cs`` by stratified inner folds of
    the training rows (ROC-AUC), then refitted on all of them.

    Feature sets of 200 to 700 columns on a few hundred rows need far more regularisation than a 7-column
    one: a single fixed C would rank the sets by how well it happens to suit each. (The scaler sees all the
    training rows before the inner split: the same small optimism for every set.) With fewer rows of a class
    than inner folds, the middle of the grid is used: a smoke-sized run, not a result."""

    def __init__(self, s: Settings):
        self.s = s

    def fit(self, X, y):
        s = self.s
        if np.bincount(np.asarray(y, dtype=int)).min() >= s.inner_folds:
            lr = LogisticRegressionCV(Cs=list(s.lr_cs), cv=StratifiedKFold(s.inner_folds, shuffle=True,
                                                                           random_state=s.seed),
                                      scoring="roc_auc", max_iter=s.lr_max_iter, n_jobs=s.n_jobs,
                                      random_state=s.seed, l1_ratios=(0.0,), use_legacy_attributes=False)
        else:
            lr = LogisticRegression(C=sorted(s.lr_cs)[len(s.lr_cs) // 2], max_iter=s.lr_max_iter, random_state=s.seed)
        self.model_ = Pipeline([("scale", StandardScaler()), ("lr", lr)]).fit(X, y)
        self.classes_ = self.model_.classes_
        self.C_ = float(np.ravel(lr.C_)[0]) if hasattr(lr, "C_") else lr.C  # the C used
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(X)


def make_rf(s: Settings) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=s.rf_trees, n_jobs=s.n_jobs, random_state=s.seed)


def self_training(base, s: Settings) -> SelfTrainingClassifier:
    return SelfTrainingClassifier(base, threshold=s.self_train_threshold, max_iter=s.self_train_max_iter)


def fit_quiet(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*y contains no unlabeled samples.*")
        return model.fit(X, y)


def positive_scores(model, X) -> np.ndarray:
    """Continuous score of class 1 (never a hard label)."""
    proba = model.predict_proba(X)
    classes = list(model.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def tpr_at_fpr(y, scores, fpr_max=0.01) -> float:
    """Highest true-positive rate reached while the false-positive rate stays <= fpr_max."""
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def binary_metrics(y, scores, fpr_max=0.01) -> dict:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "average_precision": float("nan"), "tpr_at_fpr": float("nan")}
    return {"roc_auc": float(roc_auc_score(y, scores)),
            "average_precision": float(average_precision_score(y, scores)),
            "tpr_at_fpr": tpr_at_fpr(y, scores, fpr_max)}


def oriented_auc(y, x) -> float:
    """ROC-AUC of a raw feature, orientation-free: max(AUC, 1 - AUC)."""
    if len(np.unique(y)) < 2 or np.ptp(x) == 0:
        return 0.5
    auc = roc_auc_score(y, x)
    return float(max(auc, 1.0 - auc))


def stratified_folds(y, n_folds: int, seed: int):
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(y)), y))


def labeled_mask(y, fraction: float, seed: int) -> np.ndarray:
    """A stratified subset holding ``fraction`` of the rows of each class (at least one per class)."""
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if fraction >= 1.0:
        mask[:] = True
        return mask
    rng = np.random.default_rng(seed)
    for value in np.unique(y):
        idx = np.where(y == value)[0]
        n = min(len(idx), max(1, int(round(fraction * len(idx)))))
        mask[rng.choice(idx, size=n, replace=False)] = True
    return mask


def summarize(values) -> dict:
    arr = np.asarray([v for v in values], dtype=float)
    finite = arr[np.isfinite(arr)]
    if len(finite) == 0:
        return {"mean": float("nan"), "std": float("nan"), "folds": arr.tolist()}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "folds": arr.tolist()}
