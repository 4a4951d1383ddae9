"""Feature blocks: the rows of feature files as matrices per feature group, with texts and labels.

Shared by same_genre.py and guard_eval.py: a :class:`Block` per file (or per labelled part of the main
job's files), joined by :func:`concat`, split by :func:`subset`, and scored by the detectors of
:func:`block_scorers`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


class Block:
    """The feature groups of one feature file's rows (input order), plus text, label and length."""

    def __init__(self, path: Path, rows=None, label=None):
        from feature_io import FEATURE_GROUPS, load_extended, load_features, load_hidden
        spline, ids, meta = load_features(path)
        extended, names = load_extended(path)
        hidden = load_hidden(path)
        rows = np.arange(len(meta)) if rows is None else rows
        self.groups = {"paper": spline.reshape(len(spline), -1)[rows].astype(np.float64)}
        if ids is not None:
            self.groups["id"] = ids[rows].astype(np.float64)
        if hidden is not None:
            self.groups["hidden"] = hidden[rows].astype(np.float64)
        if extended is not None:
            stats = [n.split(".", 1)[1] for n in names]
            for group, members in FEATURE_GROUPS.items():
                cols = [i for i, s in enumerate(stats) if s in members]
                if cols:
                    self.groups[group] = extended[rows][:, cols].astype(np.float64)
        self.texts = meta["text"].astype(str).to_numpy()[rows]
        self.n_tokens = meta["n_tokens"].to_numpy(np.float64)[rows]
        self.y = (meta["toxic"].to_numpy()[rows].astype(int) if label is None else np.full(len(rows), label))

    def __len__(self):
        return len(self.y)

    def has(self, groups) -> bool:
        return all(g in self.groups for g in groups)

    def matrix(self, groups) -> np.ndarray:
        return np.concatenate([self.groups[g] for g in groups], axis=1)


def concat(blocks: list[Block]) -> Block:
    out = Block.__new__(Block)
    common = set.intersection(*(set(b.groups) for b in blocks))
    out.groups = {g: np.concatenate([b.groups[g] for b in blocks]) for g in common}
    out.texts = np.concatenate([b.texts for b in blocks])
    out.n_tokens = np.concatenate([b.n_tokens for b in blocks])
    out.y = np.concatenate([b.y for b in blocks])
    return out


def block_scorers(cfg):
    """(Settings, {key: (label, groups, fit_score)}) for every set of ``cfg['SETS']`` and the text baselines
    (TF-IDF + LR, length only, surface statistics); ``cfg`` holds same_genre.py's constants."""
    from analysis.baselines import length_features, surface_features
    from analysis.data import Task
    from analysis.detectors import _tfidf_lr
    from analysis.models import Settings, fit_quiet, make_lr, positive_scores
    s = Settings(seed=cfg["SEED"], folds=cfg["FOLDS"], lr_cs=tuple(cfg["LR_CS"]), inner_folds=cfg["INNER_FOLDS"],
                 fpr_target=cfg["FPR_TARGET"])

    def on_matrix(matrix_of):
        def fit_score(train: Block, test: Block):
            model = fit_quiet(make_lr(s), matrix_of(train), train.y)
            return positive_scores(model, matrix_of(test))
        return fit_score

    def as_task(b: Block) -> Task:
        n = len(b)
        return Task("t", np.zeros((n, 1)), b.y, np.zeros(n, dtype=object), b.texts, np.zeros(n), None, None, None,
                    ["clean", "toxic"], {}, b.n_tokens)

    def tfidf(train: Block, test: Block):
        both = concat([train, test])
        task = as_task(both)
        idx = np.arange(len(both))
        return _tfidf_lr(s)(task, idx[:len(train)], idx[len(train):])[0]

    scorers = {key: (label, groups, on_matrix(lambda b, g=groups: b.matrix(g))) for key, label, groups in cfg["SETS"]}
    scorers["tfidf"] = ("TF-IDF + LR (text)", None, tfidf)
    scorers["length_only"] = ("length only (LR on token count)", None,
                              on_matrix(lambda b: length_features(as_task(b))))
    scorers["surface"] = ("surface statistics (LR)", None, on_matrix(lambda b: surface_features(b.texts)))
    return s, scorers


def subset(b: Block, idx) -> Block:
    out = Block.__new__(Block)
    out.groups = {g: m[idx] for g, m in b.groups.items()}
    out.texts, out.n_tokens, out.y = b.texts[idx], b.n_tokens[idx], b.y[idx]
    return out


def feature_block(folder: Path, toxic, clean) -> tuple["Block | None", str]:
    """Toxic vs clean rows of the main job's feature files (specs as statistic_analysis's: ``name`` or
    ``name:toxic``), labelled 1 and 0, or (None, the missing file)."""
    from analysis.data import ROW_FILTERS, parse_spec
    blocks = []
    for label, specs in ((1, toxic), (0, clean)):
        for spec in specs:
            name, row_filter = parse_spec(spec)
            path = folder / f"{name}.parquet"
            if not path.exists():
                return None, f"no {path}"
            meta = pd.read_parquet(path, columns=["row_id"] + (["toxic"] if row_filter else []))
            order = np.argsort(meta["row_id"].to_numpy(), kind="stable")
            rows = np.arange(len(meta))
            if row_filter and "toxic" in meta.columns:
                rows = rows[meta["toxic"].to_numpy()[order] == ROW_FILTERS[row_filter]]
            blocks.append(Block(path, rows, label))
    return concat(blocks), ""


def paper_task(folder: Path, toxic, clean) -> tuple["Block | None", str]:
    """:func:`feature_block` of files that carry the richer candidate groups, or (None, the way to make them)."""
    task, why = feature_block(folder, toxic, clean)
    if task is None:
        return None, why
    if "regions" not in task.groups:
        return None, (f"the feature files in {folder} have no candidate groups: extract them with "
                      "`extract_features.py --features candidates` (reproduce.py does)")
    return task, ""
