"""The paper's own datasets: ToxiGen, Jigsaw, Pile subsets, Dolly-15k.

Hub sources are read with the ``datasets`` library when it is installed (it is not a project
requirement; it needs hub access), or from a local file given as ``path=`` in the hub's own format
(.jsonl, .parquet or .csv, as ``Dataset.to_json``/``to_parquet``/``to_csv`` write them). Jigsaw is
not on the hub: it takes the folder of the Kaggle files, as ``path=`` or the ``JIGSAW_DIR``
environment variable.
"""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import pandas as pd

from data.cleaning import (JIGSAW_LABELS, DataFormatError, DataMissingError, MissingLibraryError, read_csv, read_table,
                           require_columns)

TOXIGEN_REPO = "toxigen/toxigen-data"
DOLLY_REPO = "databricks/databricks-dolly-15k"
PILE_REPO = "monology/pile-uncopyrighted"
# dataset name -> the Pile's ``meta.pile_set_name``
PILE_SUBSETS = {
    "pile_dm_mathematics": "DM Mathematics",
    "pile_freelaw": "FreeLaw",
    "pile_github": "Github",
    "pile_pubmed": "PubMed Abstracts",
    "pile_uspto": "USPTO Backgrounds",
}
PILE_MAX_DOCS = 2000
TOXIGEN_SCORE_THRESHOLD = 3.0   # ToxiGen paper: toxic when max(toxicity_ai, toxicity_human) > 3


def hub_rows(repo: str, config: str | None = None, split: str = "train", streaming: bool = False):
    """A hub dataset through the ``datasets`` library; a clear error when it is not installed."""
    try:
        import datasets
    except ImportError:
        raise MissingLibraryError(
            f"loading {repo} from the hub needs the `datasets` library (pip install datasets) and hub "
            "access; without them, pass path= to a local copy in the hub's format "
            "(.jsonl/.parquet/.csv), or use the embedded datasets (python -m data)") from None
    return datasets.load_dataset(repo, config, split=split, streaming=streaming)


def _hub_or_path(repo, path, config=None, split="train") -> pd.DataFrame:
    if path is not None:
        return read_table(Path(path), f"{repo} ({Path(path).name})")
    return hub_rows(repo, config, split).to_pandas()


def _binary(values: pd.Series, where: str) -> pd.Series:
    """0/1 from ints, bools or the words ToxiGen uses (toxic/hate vs benign/neutral)."""
    words = {"toxic": 1, "hate": 1, "1": 1, "true": 1, "benign": 0, "neutral": 0, "0": 0, "false": 0}
    out = values.map(lambda v: words.get(str(v).strip().lower()))
    if out.isna().any():
        bad = sorted({str(v) for v in values[out.isna()]})[:5]
        raise DataFormatError(f"{where}: label values {bad} are not 0/1 or toxic/benign")
    return out.astype(int)


def load_toxigen(path=None, config: str = "annotated", split: str = "train") -> pd.DataFrame:
    """ToxiGen: text, toxic (0/1), target_group.

    Accepts the hub's ``annotated`` config (``text``, ``target_group``, ``toxicity_ai``,
    ``toxicity_human``, and ``label`` in the CSV release: the label is used when present, otherwise
    toxic = max(toxicity_ai, toxicity_human) > 3) and its ``train`` config (``generation``,
    ``prompt_label``, ``group``: the machine-generated statements with the label of their prompt).
    """
    df = _hub_or_path(TOXIGEN_REPO, path, config, split)
    where = f"toxigen ({Path(path).name if path else config})"
    if "generation" in df.columns:
        require_columns(df, ("generation", "prompt_label", "group"), where)
        return pd.DataFrame({"text": df["generation"], "toxic": _binary(df["prompt_label"], where),
                             "target_group": df["group"], "subset": "toxigen/train"})
    require_columns(df, ("text", "target_group"), where)
    if "label" in df.columns:
        toxic = _binary(df["label"], where)
    else:
        require_columns(df, ("toxicity_ai", "toxicity_human"), where + " (no label column)")
        scores = df[["toxicity_ai", "toxicity_human"]].apply(pd.to_numeric, errors="coerce")
        if scores.isna().any().any():
            raise DataFormatError(f"{where}: toxicity_ai/toxicity_human must be numbers")
        toxic = (scores.max(axis=1) > TOXIGEN_SCORE_THRESHOLD).astype(int)
    return pd.DataFrame({"text": df["text"], "toxic": toxic, "target_group": df["target_group"],
                         "subset": f"toxigen/{config}"})


def jigsaw_dir(path=None) -> Path:
    folder = path or os.environ.get("JIGSAW_DIR")
    if not folder:
        raise DataMissingError(
            "jigsaw needs the Kaggle 'Toxic Comment Classification Challenge' files (train.csv, "
            "test.csv, test_labels.csv): pass path=FOLDER or set JIGSAW_DIR=FOLDER")
    folder = Path(folder)
    missing = [f for f in ("train.csv", "test.csv", "test_labels.csv") if not (folder / f).exists()]
    if missing:
        raise DataMissingError(f"jigsaw: {missing} not found in {folder} (need train.csv, test.csv, "
                                "test_labels.csv as downloaded from Kaggle)")
    return folder


def load_jigsaw(path=None) -> pd.DataFrame:
    """Jigsaw toxic comments: text, the six labels (0/1), split (train/test), id.

    The official test set is test.csv joined with test_labels.csv on ``id``; rows labelled -1 there
    (not used for scoring by Kaggle) are dropped and counted. A test row without labels is an error.
    """
    folder = jigsaw_dir(path)
    train = read_csv(folder / "train.csv")
    require_columns(train, ("id", "comment_text", *JIGSAW_LABELS), "jigsaw train.csv")
    test = read_csv(folder / "test.csv")
    require_columns(test, ("id", "comment_text"), "jigsaw test.csv")
    labels = read_csv(folder / "test_labels.csv")
    require_columns(labels, ("id", *JIGSAW_LABELS), "jigsaw test_labels.csv")
    test = test[["id", "comment_text"]].merge(labels[["id", *JIGSAW_LABELS]], on="id", how="left",
                                              validate="one_to_one", indicator=True)
    unlabelled = test["_merge"] != "both"
    if unlabelled.any():
        raise DataFormatError(f"jigsaw: {int(unlabelled.sum())} test.csv ids have no row in test_labels.csv")
    unscored = (test[list(JIGSAW_LABELS)] == -1).any(axis=1)
    logging.getLogger("data").warning(
        f"data[jigsaw]: dropped {int(unscored.sum())} of {len(test)} test rows labelled -1 (not scored by Kaggle)")
    test = test[~unscored]
    frames = []
    for split, part in (("train", train), ("test", test)):
        values = part[list(JIGSAW_LABELS)].apply(pd.to_numeric, errors="coerce")
        if (~values.isin([0, 1])).any().any():
            raise DataFormatError(f"jigsaw {split}: labels must be 0 or 1 (after dropping -1 test rows)")
        frames.append(pd.DataFrame({"text": part["comment_text"].values, **{c: values[c].astype(int).values
                                    for c in JIGSAW_LABELS}, "split": split, "id": part["id"].astype(str).values}))
    out = pd.concat(frames, ignore_index=True)
    out["subset"] = "jigsaw/" + out["split"]
    return out


def load_jigsaw_clean(path=None) -> pd.DataFrame:
    """Jigsaw comments with all six labels 0 (the paper's clean Jigsaw side)."""
    df = load_jigsaw(path)
    return df[(df[list(JIGSAW_LABELS)] == 0).all(axis=1)].reset_index(drop=True)


def load_pile(set_name: str, path=None, max_docs: int | None = PILE_MAX_DOCS,
              split: str = "train") -> pd.DataFrame:
    """Documents of one Pile subset (``meta.pile_set_name`` == set_name), at most ``max_docs``.

    From the hub the uncopyrighted Pile is streamed and filtered until ``max_docs`` are found.
    A local jsonl has one ``{"text": ..., "meta": {"pile_set_name": ...}}`` a line, as the Pile ships.
    Documents are kept whole: the feature extractor truncates to its max length, as in the paper.
    """
    if set_name not in PILE_SUBSETS.values():
        raise DataFormatError(f"unknown Pile subset {set_name!r}; known: {sorted(PILE_SUBSETS.values())}")
    if path is not None:
        df = read_table(Path(path), f"Pile ({Path(path).name})")
        require_columns(df, ("text", "meta"), f"Pile ({Path(path).name})")
        names = df["meta"].map(lambda m: m.get("pile_set_name") if isinstance(m, dict) else None)
        if names.isna().any():
            raise DataFormatError(f"Pile ({Path(path).name}): {int(names.isna().sum())} row(s) have no "
                                  "meta.pile_set_name")
        df = df[names == set_name]
        texts = df["text"].tolist()[:max_docs] if max_docs else df["text"].tolist()
    else:
        rows = hub_rows(PILE_REPO, split=split, streaming=True)
        wanted = (r["text"] for r in rows if r["meta"]["pile_set_name"] == set_name)
        texts = list(itertools.islice(wanted, max_docs))
    return pd.DataFrame({"text": texts, "subset": f"pile/{set_name}"})


def load_dolly(path=None, split: str = "train") -> pd.DataFrame:
    """Dolly-15k instructions: text = ``instruction``; ``category`` kept."""
    df = _hub_or_path(DOLLY_REPO, path, split=split)
    require_columns(df, ("instruction", "category"), "dolly")
    return pd.DataFrame({"text": df["instruction"], "category": df["category"], "subset": "dolly"})
