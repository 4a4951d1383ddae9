"""Loading feature files for the analysis and turning them into labelled tasks.

A *dataset spec* names a feature file and, optionally, which of its rows to take:
``"slurs"`` takes every row, ``"jigsaw:toxic"`` the rows whose ``toxic`` column is 1 and
``"jigsaw:clean"`` the rows whose ``toxic`` column is 0 (every row, with a note, when the file
has no ``toxic`` column).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cli import UserError
from feature_io import feature_names, load_features, load_hidden, read_feature_metadata

# Metadata that must agree between every feature file of one analysis.
CONSISTENCY_KEYS = ("model", "layers", "n_layers_total", "dtype", "max_length")
ROW_FILTERS = {"toxic": 1, "clean": 0}


class AnalysisInputError(UserError):
    """Input that the analysis cannot use (mixed runs, a single class, too few rows, ...)."""


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, row_filter = spec.partition(":")
    if row_filter and row_filter not in ROW_FILTERS:
        raise AnalysisInputError(
            f"Dataset spec {spec!r}: the part after ':' must be one of {sorted(ROW_FILTERS)}.")
    return name, row_filter or None


def layers_text(layers) -> str:
    layers = list(layers)
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]} ({len(layers)} layers)"
    return f"{layers} ({len(layers)} layers)"


def _describe(info: dict, keys=CONSISTENCY_KEYS) -> str:
    parts = []
    for key in keys:
        value = info.get(key)
        parts.append(f"{key}={layers_text(value) if key == 'layers' and value is not None else value}")
    return ", ".join(parts)


def check_consistent(infos: dict[Path, dict], what: str, keys=CONSISTENCY_KEYS) -> None:
    """Raise a clear error when the files do not come from one extraction setup."""
    signatures: dict[tuple, list[Path]] = {}
    for path, info in infos.items():
        signature = tuple(repr(info.get(k)) for k in keys)
        signatures.setdefault(signature, []).append(path)
    if len(signatures) > 1:
        lines = []
        for paths in signatures.values():
            desc = _describe(infos[paths[0]], keys)
            lines.append(f"  {desc}:\n" + "\n".join(f"      {p}" for p in paths))
        raise AnalysisInputError(
            f"The {what} feature files do not come from one extraction run setup "
            f"(they must agree on {', '.join(keys)}):\n" + "\n".join(lines) +
            "\nRemove the stray files or point --features-dir at one model's folder.")


@dataclass
class DatasetFeatures:
    name: str
    path: Path
    X: np.ndarray                 # [N, 7L] float64, layer-major
    meta: pd.DataFrame            # text, labels, latency_s, ...
    hidden: np.ndarray | None     # [N, d] mean-pooled hidden states, or None
    X_early: np.ndarray | None    # [N, 7k] from the early-exit run, or None
    latency_early: np.ndarray | None
    notes: list[str] = field(default_factory=list)


def _finite_rows(*arrays) -> np.ndarray:
    keep = None
    for a in arrays:
        if a is None:
            continue
        ok = np.isfinite(a).all(axis=1)
        keep = ok if keep is None else keep & ok
    return keep


class Corpus:
    """The feature files of one model, loaded once, checked for consistency."""

    def __init__(self, features_dir, datasets, early_dir=None, max_rows=None, seed=0):
        self.features_dir = Path(features_dir)
        self.early_dir = Path(early_dir) if early_dir else None
        self.early_layers = None  # the layers of the early-exit files, when there are some
        self.early_sampled = {}   # dataset -> (prompts timed with early exit, prompts in the full file)
        self.notes: list[str] = []
        self.missing: list[str] = []
        self.data: dict[str, DatasetFeatures] = {}
        if not self.features_dir.is_dir():
            raise AnalysisInputError(f"Feature folder {self.features_dir} does not exist: run extract_features.py "
                                     "first, or pass --features-dir.")
        names = list(dict.fromkeys(datasets))
        paths = {n: self.features_dir / f"{n}.parquet" for n in names}
        for n, p in paths.items():
            if not p.exists():
                self.missing.append(n)
        present = {n: p for n, p in paths.items() if p.exists()}
        if not present:
            subdirs = sorted(d.name for d in self.features_dir.iterdir() if d.is_dir())
            raise AnalysisInputError(
                f"None of the datasets {names} has a feature file in {self.features_dir}"
                + (f" (it holds the folders {subdirs}: pass one of them as --features-dir)" if subdirs else "")
                + ".")
        infos = {}
        for n, p in present.items():
            try:
                infos[p] = read_feature_metadata(p)
            except ValueError as err:
                raise AnalysisInputError(str(err)) from None
        check_consistent(infos, "full-model")
        self.info = next(iter(infos.values()))
        self.layers = list(self.info["layers"])
        self.feature_names = feature_names(self.layers)

        early_infos = {}
        if self.early_dir is not None and self.early_dir.is_dir():
            for n in present:
                p = self.early_dir / f"{n}.parquet"
                if p.exists():
                    try:
                        early_infos[p] = read_feature_metadata(p)
                    except ValueError as err:
                        raise AnalysisInputError(str(err)) from None
            if early_infos:
                check_consistent(early_infos, "early-exit")
                einfo = next(iter(early_infos.values()))
                check_consistent({next(iter(infos)): self.info, next(iter(early_infos)): einfo},
                                 "full-model and early-exit", keys=("model", "dtype", "max_length"))
                elayers = list(einfo["layers"])
                if elayers != self.layers[:len(elayers)]:
                    raise AnalysisInputError(
                        f"The early-exit files in {self.early_dir} hold layers {layers_text(elayers)}, "
                        f"which are not the first layers of the full files ({layers_text(self.layers)}).")
                self.early_layers = elayers

        for n, p in present.items():
            self.data[n] = self._load(n, p, max_rows, seed)
        if self.missing:
            self.notes.append(f"No feature file for: {', '.join(self.missing)} (looked in {self.features_dir}).")
        for d in self.data.values():
            self.notes.extend(d.notes)

    def _load(self, name, path, max_rows, seed) -> DatasetFeatures:
        spline, _, meta = load_features(path)
        X = spline.reshape(len(spline), -1).astype(np.float64)
        hidden = load_hidden(path)
        notes = []
        X_early = latency_early = None
        if self.early_layers is not None:
            ep = self.early_dir / f"{name}.parquet"
            if ep.exists():
                espline, _, emeta = load_features(ep)
                same = len(emeta) == len(meta) and np.array_equal(emeta["row_id"].to_numpy(), meta["row_id"].to_numpy()) \
                    and (emeta["text"].to_numpy() == meta["text"].to_numpy()).all()
                position = {text: i for i, text in enumerate(meta["text"])}
                if same:
                    X_early = espline.reshape(len(espline), -1).astype(np.float64)
                    latency_early = emeta["latency_s"].to_numpy(np.float64)
                elif len(emeta) < len(meta) and all(text in position for text in emeta["text"]):
                    # A latency sample: early exit timed on some of the full file's prompts. The first layers'
                    # features are the full run's own (the same layers of the same forward), sliced; the
                    # early-exit latency is known for the sampled rows only (NaN elsewhere, averaged without).
                    X_early = X[:, :espline.shape[1] * espline.shape[2]]
                    latency_early = np.full(len(meta), np.nan)
                    latency_early[[position[t] for t in emeta["text"]]] = emeta["latency_s"].to_numpy(np.float64)
                    self.early_sampled[name] = (len(emeta), len(meta))
                else:
                    raise AnalysisInputError(
                        f"{ep} and {path} do not hold the same prompts (row_id/text differ), nor is the first a "
                        "sample of the second's: re-extract the early-exit file from the same dataset.")
            else:
                notes.append(f"{name}: no early-exit file in {self.early_dir}.")
        if len(meta) == 0:
            raise AnalysisInputError(f"{path} holds no rows.")
        if "text" not in meta.columns:
            raise AnalysisInputError(f"{path} has no 'text' column: not a feature file of extract_features.py.")
        if "latency_s" not in meta.columns:
            meta["latency_s"] = np.nan
            notes.append(f"{name}: no latency_s column: extraction latency not reported.")
        keep = _finite_rows(X, X_early, hidden)
        if not keep.all():
            bad = int((~keep).sum())
            cols = np.where(~np.isfinite(X).all(axis=0))[0]
            named = ", ".join(self.feature_names[c] for c in cols[:6]) + (" ..." if len(cols) > 6 else "")
            if bad == len(keep):
                raise AnalysisInputError(f"{path}: every row has NaN/inf features ({named}).")
            notes.append(f"{name}: dropped {bad} of {len(keep)} rows with NaN/inf features"
                         + (f" (in {named})" if named else "") + ".")
        idx = np.where(keep)[0]
        if max_rows is not None and len(idx) > max_rows:
            rng = np.random.default_rng([seed, _stable_hash(name)])
            idx = np.sort(rng.choice(idx, size=max_rows, replace=False))
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        return DatasetFeatures(name, path, X[idx], meta.iloc[idx].reset_index(drop=True), take(hidden),
                               take(X_early), take(latency_early), notes)

    @property
    def has_early(self) -> bool:
        return self.early_layers is not None and all(d.X_early is not None for d in self.data.values())

    def rows(self, spec: str) -> tuple[DatasetFeatures, np.ndarray] | None:
        """The dataset and the row indices a spec selects, or None when its file is missing."""
        name, row_filter = parse_spec(spec)
        d = self.data.get(name)
        if d is None:
            return None
        idx = np.arange(len(d.meta))
        if row_filter is not None:
            if "toxic" in d.meta.columns:
                col = pd.to_numeric(d.meta["toxic"], errors="coerce").to_numpy()
                idx = idx[col == ROW_FILTERS[row_filter]]
            else:
                note = f"{name} has no 'toxic' column: all its rows are taken as {row_filter}."
                if note not in self.notes:
                    self.notes.append(note)
        return d, idx


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


@dataclass
class Task:
    """Rows of several datasets with one label per row."""
    name: str
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray            # dataset spec of each row
    texts: np.ndarray
    latency: np.ndarray
    X_early: np.ndarray | None
    latency_early: np.ndarray | None
    hidden: np.ndarray | None
    class_names: list[str]
    counts: dict[str, int]
    n_tokens: np.ndarray | None = None    # prompt length in tokens (the length-only baseline's input)


def build_task(corpus: Corpus, name: str, sides: list[tuple[str, list[str]]]) -> Task:
    """``sides``: (class name, dataset specs) in label order 0, 1, ..."""
    parts = []
    for label, (cls, specs) in enumerate(sides):
        n_side = 0
        for spec in specs:
            got = corpus.rows(spec)
            if got is None:
                continue
            d, idx = got
            if len(idx):
                parts.append((label, spec, d, idx))
                n_side += len(idx)
        if n_side == 0:
            raise AnalysisInputError(
                f"{name}: the '{cls}' side is empty: none of {specs} has rows in {corpus.features_dir}"
                + (f" (missing files: {', '.join(corpus.missing)})" if corpus.missing else "") + ".")
    y = np.concatenate([np.full(len(idx), label) for label, _, _, idx in parts])
    if len(np.unique(y)) < 2:
        raise AnalysisInputError(f"{name}: all rows are of one class.")

    def cat(get):
        arrays = [get(d, idx) for _, _, d, idx in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return Task(
        name=name,
        X=cat(lambda d, i: d.X[i]),
        y=y,
        groups=np.concatenate([np.full(len(idx), spec, dtype=object) for _, spec, _, idx in parts]),
        texts=np.concatenate([d.meta["text"].astype(str).to_numpy()[idx] for _, _, d, idx in parts]),
        latency=np.concatenate([d.meta["latency_s"].to_numpy(np.float64)[idx] for _, _, d, idx in parts]),
        X_early=cat(lambda d, i: None if d.X_early is None else d.X_early[i]),
        latency_early=cat(lambda d, i: None if d.latency_early is None else d.latency_early[i]),
        hidden=cat(lambda d, i: None if d.hidden is None else d.hidden[i]),
        class_names=[cls for cls, _ in sides],
        counts={spec: len(idx) for _, spec, _, idx in parts},
        n_tokens=cat(lambda d, i: d.meta["n_tokens"].to_numpy(np.float64)[i] if "n_tokens" in d.meta else None),
    )


def check_folds(y: np.ndarray, n_folds: int, what: str, class_names=None) -> None:
    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        raise AnalysisInputError(f"{what}: only one class present ({_name(values[0], class_names)}); "
                                 "a detector needs rows of both classes.")
    if counts.min() < n_folds:
        got = ", ".join(f"{_name(v, class_names)}: {c}" for v, c in zip(values, counts))
        raise AnalysisInputError(
            f"{what}: {n_folds}-fold stratified cross-validation needs at least {n_folds} rows of each class, "
            f"got {got}. Add data or lower --folds.")


def _name(value, class_names):
    if class_names is not None and isinstance(value, (int, np.integer)) and 0 <= value < len(class_names):
        return class_names[value]
    return str(value)

