"""Input checks and counted clean-up shared by every loader, and the chunking of long documents.

Nothing here drops a row silently: ``clean_texts`` counts every row it removes (missing, empty,
undecodable, duplicate), logs one line with the counts, and keeps them in ``df.attrs["cleanup"]``.
Bytes that are not valid UTF-8 are decoded to U+FFFD (the replacement character) when a file is
read, and a lone surrogate (a JSON ``\\udXXX`` escape, or a str handed in) is turned into U+FFFD
too; ``clean_texts`` then drops every text holding U+FFFD or a lone surrogate and counts it as
undecodable.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from cli import UserError

log = logging.getLogger("data")

# Jigsaw's six labels, in the Kaggle files' order. Every multi-label dataset here uses these names.
JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UNDECODABLE = re.compile("[\ud800-\udfff\ufffd]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")


class DataFormatError(UserError, ValueError):
    """The input does not have the shape its source is documented to have (the user's to fix: a UserError)."""


# The user's to fix too, and still the built-in type callers catch: a file or dataset that is not there
# (the message says how to get it), a name that is no dataset, a library that a hub source needs.
class DataMissingError(UserError, FileNotFoundError):
    """A file or prepared dataset that is not there; the message says how to get it."""


class UnknownDatasetError(UserError, KeyError):
    """A name that is no dataset."""
    __str__ = Exception.__str__  # KeyError's would quote the message


class MissingLibraryError(UserError, ImportError):
    """An optional library a source needs (``datasets`` for the hub) is not installed."""


def require_columns(df: pd.DataFrame, columns, where: str) -> None:
    """Raise a DataFormatError naming every missing column and the columns that are there."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataFormatError(
            f"{where}: missing column(s) {missing}; found {list(df.columns)}. "
            "Was the file renamed, or are its columns named differently?")


def read_text_file(path: Path) -> str:
    """Read a file as UTF-8; undecodable bytes become U+FFFD (their texts are dropped and counted later)."""
    return Path(path).read_bytes().decode("utf-8", errors="replace")


def _no_surrogates(value):
    return _LONE_SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def read_jsonl(path: Path, where: str | None = None) -> list[dict]:
    """Parse JSON lines; blank lines are skipped, a malformed line is an error naming file and line."""
    return parse_jsonl(read_text_file(path), where or str(path))


def parse_jsonl(text: str, where: str) -> list[dict]:
    """The rows of JSON-lines ``text`` read from ``where`` (see :func:`read_jsonl`)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where}: line {number} is not valid JSON ({err.msg}); fix or remove that "
                                  "line") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: line {number} is not a JSON object ({{\"text\": ...}} a line)")
        rows.append({k: _no_surrogates(v) for k, v in row.items()})
    return rows


def read_table(path: Path, where: str | None = None) -> pd.DataFrame:
    """Read a local table in the hub's export formats: .jsonl/.json lines, .parquet or .csv."""
    path = Path(path)
    where = where or str(path)
    if not path.exists():
        raise DataMissingError(f"{where}: no such file {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".json")):
        return pd.DataFrame(read_jsonl(path, where))
    if suffixes.endswith(".parquet"):
        return pd.read_parquet(path)
    if suffixes.endswith(".csv"):
        return read_csv(path)
    raise DataFormatError(f"{where}: unsupported file type {path.name} (use .jsonl, .parquet or .csv)")


def read_csv(path: Path) -> pd.DataFrame:
    """CSV read through read_text_file (undecodable bytes become U+FFFD, to be counted)."""
    import io
    return pd.read_csv(io.StringIO(read_text_file(path)), keep_default_na=False, na_values=[""])


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def clean_texts(df: pd.DataFrame, name: str, text_column: str = "text",
                dedupe: bool = True) -> pd.DataFrame:
    """Strip texts and drop missing, empty, undecodable and duplicate ones, counting each.

    Returns a new frame with a fresh index; ``attrs["cleanup"]`` holds the counts.
    """
    require_columns(df, [text_column], name)
    counts = dict.fromkeys(("missing", "empty", "undecodable", "duplicate"), 0)
    keep, texts, seen = [], [], set()
    for value in df[text_column].tolist():
        text = _as_text(value)
        reason = None
        if text is None:
            reason = "missing"
        else:
            text = text.strip()
            if _UNDECODABLE.search(text):
                reason = "undecodable"
            elif not text:
                reason = "empty"
            elif dedupe and text in seen:
                reason = "duplicate"
        if reason:
            counts[reason] += 1
        else:
            seen.add(text)
            texts.append(text)
        keep.append(reason is None)
    out = df.loc[keep].copy()
    out[text_column] = pd.Series(texts, index=out.index, dtype=object).astype(str) if texts else \
        pd.Series([], index=out.index, dtype=str)
    out = out.reset_index(drop=True)
    stats = {"rows_in": len(df), **counts, "rows_out": len(out)}
    message = (f"data[{name}]: kept {len(out)} of {len(df)} texts; dropped {counts['missing']} missing, "
               f"{counts['empty']} empty, {counts['undecodable']} undecodable, "
               f"{counts['duplicate']} duplicate")
    (log.warning if len(out) < len(df) else log.info)(message)
    out.attrs["cleanup"] = stats
    return out


def split_sentences(text: str) -> list[str]:
    """Rough sentence split (after . ! ? ; : or at a blank line); good enough to cut near boundaries."""
    return [s for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_prose(text: str, max_words: int = 250) -> list[str]:
    """Cut prose into chunks of at most ``max_words`` whitespace words, at sentence ends when possible.

    Sentences are packed greedily; a sentence longer than ``max_words`` is cut by words. Whitespace
    inside a chunk is normalised to single spaces. A text of at most ``max_words`` words comes back whole.
    """
    if len(text.split()) <= max_words:
        return [text]
    chunks, current = [], []
    for sentence in split_sentences(text):
        words = sentence.split()
        while len(words) > max_words:          # a run-on "sentence": cut by words
            if current:
                chunks.append(" ".join(current))
                current = []
            chunks.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and len(current) + len(words) > max_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(words)
    if current:
        chunks.append(" ".join(current))
    return chunks


def chunk_lines(text: str, max_words: int = 200, max_lines: int = 60) -> list[str]:
    """Cut source code into runs of whole lines, each of at most ``max_words`` words and ``max_lines`` lines.

    Line structure and indentation are kept; a chunk starts at a blank line when one is near the limit
    so that functions tend to stay whole. Chunks with no non-blank line are skipped.
    """
    chunks, current, words = [], [], 0
    for line in text.splitlines():
        n = len(line.split())
        if current and (words + n > max_words or len(current) >= max_lines):
            chunks.append("\n".join(current))
            current, words = [], 0
        current.append(line)
        words += n
    if current:
        chunks.append("\n".join(current))
    return [c.strip("\n") for c in chunks if c.strip()]


def balanced_sample(df: pd.DataFrame, n: int, by: str, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, shared as evenly as possible among the groups of column ``by``.

    A group smaller than its share gives the rest to the others. Seeded; the original row order is kept.
    """
    if len(df) <= n:
        return df.reset_index(drop=True)
    sizes = df.groupby(by, sort=True).size().to_dict()
    quota, left = {}, n
    for group in sorted(sizes, key=lambda g: sizes[g]):        # smallest groups first
        share = left // (len(sizes) - len(quota))
        quota[group] = min(sizes[group], share)
        left -= quota[group]
    parts = [part.sample(n=quota[group], random_state=seed)
             for group, part in df.groupby(by, sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True)
