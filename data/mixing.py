"""``toxic_<domain>``: clean documents with one toxic text inserted, as the paper built its "toxic pile".

For every clean document, a toxic text is drawn (seeded, without replacement while the pool lasts)
and inserted at a uniformly drawn whitespace-token position of the document: before token k for
k in 0..n-1, or after the last token for k = n, with a single space on each side. Everything else
in the document (newlines, indentation) is left as it was. The same seed gives the same mix.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from data.cleaning import DataFormatError, require_columns

_TOKEN = re.compile(r"\S+")


def insert_at_token(document: str, passage: str, k: int) -> str:
    """``document`` with ``passage`` inserted before its k-th whitespace token (after the last if k = n)."""
    starts = [m.start() for m in _TOKEN.finditer(document)]
    if not 0 <= k <= len(starts):
        raise ValueError(f"token position {k} outside 0..{len(starts)}")
    if k == len(starts):
        return f"{document.rstrip()} {passage}"
    at = starts[k]
    head = document[:at]
    return f"{head}{passage} {document[at:]}" if head == "" or head[-1].isspace() \
        else f"{head} {passage} {document[at:]}"


def make_toxic_mix(clean: pd.DataFrame, toxic: pd.DataFrame, name: str, seed: int = 0) -> pd.DataFrame:
    """One row per clean document: text with a toxic text inserted, ``toxic`` = 1.

    Columns: text, toxic, source (= name), clean_source, toxic_source (the ``source`` of the two
    inputs), inserted (the toxic text), insert_token (k), n_tokens (of the clean document).
    """
    require_columns(clean, ["text"], f"{name}: clean side")
    require_columns(toxic, ["text"], f"{name}: toxic side")
    if len(clean) == 0 or len(toxic) == 0:
        raise DataFormatError(f"{name}: needs at least one clean and one toxic text "
                              f"(got {len(clean)} clean, {len(toxic)} toxic)")
    rng = np.random.default_rng(seed)
    rounds = -(-len(clean) // len(toxic))
    picks = np.concatenate([rng.permutation(len(toxic)) for _ in range(rounds)])[: len(clean)]
    docs = clean["text"].tolist()
    n_tokens = [len(_TOKEN.findall(d)) for d in docs]
    positions = [int(rng.integers(0, n + 1)) for n in n_tokens]
    passages = toxic["text"].iloc[picks].tolist()
    out = pd.DataFrame({
        "text": [insert_at_token(d, p, k) for d, p, k in zip(docs, passages, positions)],
        "toxic": 1,
        "source": name,
        "clean_source": clean["source"].tolist() if "source" in clean else "",
        "toxic_source": toxic["source"].iloc[picks].tolist() if "source" in toxic else "",
        "inserted": passages,
        "insert_token": positions,
        "n_tokens": n_tokens,
    })
    return out
