"""Where generated things live: one cache folder outside the repository.

Converted models, prepared datasets and downloaded packages go under
``$SPLINE_CACHE`` (default ``~/.cache/spline-geometry``) so that a fresh clone
reuses them and git never sees them.
"""
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("SPLINE_CACHE", Path.home() / ".cache" / "spline-geometry"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
