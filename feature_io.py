"""On-disk format of extracted features: one parquet file per run, written in resumable parts.

A feature file has one row per kept prompt, in extraction order (longest first; the loaders
return input order), and the columns
  row_id               index of the text in the input
  text, n_tokens, truncated, latency_s
  spline_features      fixed-size list of 7*L float32, layer-major, stats in FEATURE_STATS order
  intrinsic_dimension  fixed-size list of L int32 (absent when the run used --no-id)
  hidden_mean          fixed-size list of float32 (optional: mean-pooled MLP input of the deepest layer)
  extended_features    fixed-size list of float32 (``--features extended|candidates`` only): the richer
                       geometric statistics of FEATURE_GROUPS, layer-major, named in the metadata
                       (``extended_feature_names``); the paper's 7 per layer stay in spline_features
  ...                  every other input column (labels, source, ...) passed through unchanged
and the run's settings as JSON in the parquet schema metadata under ``spline_geometry``.

This module needs no torch, so analysis scripts load features without importing a model stack.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

# Arrow's default (jemalloc/mimalloc) pool keeps the buffers of every batch written; the system
# allocator hands them back, so a 20,000-prompt run peaks close to a 1,000-prompt one. It only takes
# effect when this module is the first to import pyarrow (an explicit setting is respected).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from cli import UserError  # noqa: E402

# The paper's 7 statistics per layer, in its order (see shared/reference/PAPER.md).
FEATURE_STATS = ("frac_mean", "frac_min", "frac_max", "frac_std", "dist_min", "dist_mean", "dist_std")
METADATA_KEY = b"spline_geometry"
log = logging.getLogger("feature_io")
LIST_COLUMNS = ("spline_features", "intrinsic_dimension", "hidden_mean", "extended_features")

# Richer statistics of the same gate pre-activations, per layer, in this order. spline_stats.py
# computes them; the names live here so that the analysis reads them without torch.
QUANTILES = (0.1, 0.5, 0.9)   # of the per-token active fraction and distance (numpy's 'linear' rule)
LAST_TOKENS = 4               # mean of frac and dist over the prompt's last 4 real tokens (fewer if shorter)
REGION_DIMS = 16              # fixed random projection of the per-unit activation frequencies
REGION_SEED = 0               # seeds the projection (with the layer index): every file shares it
FEATURE_GROUPS = {
    "quantiles": tuple(f"{s}_q{round(100 * q)}" for s in ("frac", "dist") for q in QUANTILES),
    "last": (f"frac_last{LAST_TOKENS}", f"dist_last{LAST_TOKENS}"),
    "regions": tuple(f"region{j}" for j in range(REGION_DIMS)),
}
# --features: the paper's 7 per layer alone; the chosen compact set (the same-genre comparison, see
# same_genre.py and RESULTS.md); every candidate group (for that comparison). The chosen detector is the
# region projection alone (16 per layer: 480 features for a 30-layer model); same_genre.py's table shows
# it beside the paper's 7 per layer, their union and the hidden-state probe.
FEATURE_SETS = {"paper": (), "extended": ("regions",), "candidates": tuple(FEATURE_GROUPS)}


def feature_spec(groups) -> dict:
    """What the extended columns of ``groups`` are: part of a run's settings, so that a file made with
    other definitions (e.g. another REGION_DIMS) is extracted again, never mixed with or reused as these."""
    return {"groups": {g: list(FEATURE_GROUPS[g]) for g in FEATURE_GROUPS if g in groups},
            "quantiles": list(QUANTILES), "last_tokens": LAST_TOKENS, "region_seed": REGION_SEED}


def feature_names(layers) -> list[str]:
    """Names of the 7*L columns, layer-major: ``L{layer}.{stat}``."""
    return [f"L{layer}.{stat}" for layer in layers for stat in FEATURE_STATS]


def extended_feature_names(layers, groups) -> list[str]:
    """Names of the extended columns of ``groups`` (in FEATURE_GROUPS order), layer-major."""
    stats = [s for g in FEATURE_GROUPS if g in groups for s in FEATURE_GROUPS[g]]
    return [f"L{layer}.{stat}" for layer in layers for stat in stats]


class RunMismatchError(UserError):
    """An existing (partial) output was made with other settings than the ones asked for now."""


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    # Declared without nulls (there are none): parquet then stores no definition levels for the list
    # or its values, and reading the column back is faster (bench/README.md, loading).
    matrix = np.ascontiguousarray(matrix)
    values = pa.array(matrix.reshape(-1))
    kind = pa.list_(pa.field("element", values.type, nullable=False), matrix.shape[1])
    return pa.FixedSizeListArray.from_arrays(values, type=kind)


def rows_to_table(columns: pd.DataFrame | pa.Table, arrays: dict[str, np.ndarray]) -> pa.Table:
    """Plain columns (a DataFrame or an Arrow table) plus 2-D arrays stored as fixed-size list columns."""
    if isinstance(columns, pa.Table):
        table = columns
    else:
        table = pa.Table.from_pandas(columns.reset_index(drop=True), preserve_index=False)
    for name, matrix in arrays.items():
        if matrix is not None:
            column = _fixed_list(matrix)
            table = table.append_column(pa.field(name, column.type, nullable=False), column)
    return table


def _atomic_write(table: pa.Table, path: Path) -> None:
    # Write then rename: a run killed mid-write never leaves a half file that a resume would trust.
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class FeatureWriter:
    """Streams finished batches to ``OUT.parts/`` and merges them into ``OUT`` at the end.

    ``settings`` (a JSON-able dict) identifies the run: a restart with the same settings resumes
    where the killed run stopped; different settings raise :class:`RunMismatchError` instead of
    silently mixing two runs in one file.
    """

    def __init__(self, out_path, settings: dict, overwrite: bool = False, replace_stale: bool = False):
        self.out_path = Path(out_path)
        self.parts_dir = self.out_path.with_name(self.out_path.name + ".parts")
        self.settings = json.loads(json.dumps(settings))  # normalise tuples, numpy scalars
        found, old = self._previous_settings()
        if replace_stale and not overwrite and found and old != self.settings:
            log.warning("%s was made with other settings (%s): extracting again", self.out_path,
                        _diff(old, self.settings))
            overwrite = True
        if overwrite:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            self.out_path.unlink(missing_ok=True)
        # Row ids already in the parts when the writer opened (a resumed run): a sorted int64 array, 8 bytes
        # a row, not a set of Python ints. Rows written later are counted in ``n_done``, not collected.
        self.done_ids = np.zeros(0, dtype=np.int64)
        self.n_done = 0
        self._n_parts = 0
        if self.out_path.exists():
            if old != self.settings:
                raise RunMismatchError(
                    f"{self.out_path} exists and was made with other settings ({_diff(old, self.settings)}). "
                    "Choose another --out, or pass --overwrite to replace it.")
        elif self.parts_dir.exists():
            if old != self.settings:
                raise RunMismatchError(
                    f"{self.parts_dir} holds an interrupted run with other settings ({_diff(old, self.settings)}). "
                    "Rerun with the same arguments to resume it, or pass --overwrite to start over.")
            parts = sorted(self.parts_dir.glob("part-*.parquet"))
            done = []
            for part in parts:
                try:
                    done.append(pq.read_table(part, columns=["row_id"]).column(0).to_numpy())
                except (pa.ArrowException, OSError) as error:
                    # Our writes are atomic, so this was damaged on disk: its rows are simply extracted again.
                    log.warning("%s is damaged (%s): its rows are extracted again", part,
                                " ".join(str(error).split())[:120])
                    part.unlink()
            self.done_ids = np.unique(np.concatenate(done).astype(np.int64)) if done else self.done_ids
            self.n_done = len(self.done_ids)
            # New parts are numbered after the highest one left, never over one (a removed part leaves a gap).
            self._n_parts = max((int(p.stem.split("-")[1]) + 1 for p in parts), default=0)
        else:
            self.parts_dir.mkdir(parents=True)
            (self.parts_dir / "run.json").write_text(json.dumps(self.settings, indent=1))

    def _previous_settings(self) -> tuple[bool, dict | None]:
        """(whether a finished output or an interrupted run is there, the settings it was made with)."""
        # An unreadable file (damaged on disk, or not ours) has no settings: it counts as another run's, so it
        # is refused with the way out (--overwrite), never resumed or silently replaced.
        if self.out_path.exists():
            try:
                return True, read_feature_metadata(self.out_path).get("settings")
            except (pa.ArrowException, OSError, ValueError):
                return True, None
        if self.parts_dir.exists():
            run_file = self.parts_dir / "run.json"
            try:
                return True, json.loads(run_file.read_text()) if run_file.exists() else None
            except (OSError, ValueError):
                return True, None
        return False, None

    @property
    def complete(self) -> bool:
        """True when the final file already exists with these settings (nothing left to do)."""
        return self.out_path.exists()

    def write(self, columns: pd.DataFrame | pa.Table, arrays: dict[str, np.ndarray]) -> None:
        """One part: the plain columns (with ``row_id``) and the 2-D arrays of the same rows."""
        table = rows_to_table(columns, arrays)
        _atomic_write(table, self.parts_dir / f"part-{self._n_parts:06d}.parquet")
        self.n_done += table.num_rows
        del table
        pa.default_memory_pool().release_unused()  # else the pool keeps every batch's buffers
        self._n_parts += 1

    def finish(self, metadata: dict) -> Path:
        """Stream the parts into ``OUT`` with the metadata attached, then remove the parts folder."""
        parts = sorted(self.parts_dir.glob("part-*.parquet"))
        _stream_tables(parts, self.out_path, dict(metadata, settings=self.settings))
        shutil.rmtree(self.parts_dir)
        return self.out_path


def _stream_tables(paths: list[Path], out_path: Path, metadata: dict) -> None:
    """Concatenate parquet files into one, one file in memory at a time.

    Rows stay in extraction order (longest prompts first); ``row_id`` holds the input order, and
    :func:`load_features` returns rows in that order. Sorting here would need every row in memory,
    and a 20,000-prompt run must not peak higher than a 1,000-prompt one.
    """
    if paths:
        schema = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    else:
        schema = pa.schema([("row_id", pa.int64()), ("text", pa.string())])
    schema_meta = {k: v for k, v in (schema.metadata or {}).items() if k != b"pandas"}  # stale index info
    schema_meta[METADATA_KEY] = json.dumps(metadata).encode()
    schema = schema.with_metadata(schema_meta)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for path in paths:
            table = pq.read_table(path)
            writer.write_table(table.select(schema.names).cast(schema))
            del table
            pa.default_memory_pool().release_unused()
    os.replace(tmp, out_path)


def _diff(old, new) -> str:
    if not isinstance(old, dict):
        return "no readable settings: damaged, or not written by extract_features.py"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "same"


def read_feature_metadata(path) -> dict:
    """The run's metadata (model, layers, dtype, max_length, feature_names, settings, ...)."""
    return _metadata(pq.read_schema(path), path)


def _metadata(schema: pa.Schema, path) -> dict:
    meta = schema.metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path} is not a feature file written by extract_features.py (no metadata).")
    return json.loads(meta[METADATA_KEY])


def _matrix(column: pa.ChunkedArray, dtype) -> np.ndarray:
    flat = column.combine_chunks()
    width = flat.type.list_size
    return flat.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)


def load_features(path):
    """Load a feature file fast.

    Returns ``(spline, ids, meta)``: spline float32 [N, L, 7], ids int32 [N, L] (None when the
    run had no ID), and a DataFrame of every non-list column (text, labels, n_tokens, ...).
    """
    with pq.ParquetFile(path) as file:  # the footer is read once: schema, metadata and data
        info = _metadata(file.schema_arrow, path)
        # The widest columns (pooled hidden states, extended statistics) are left to load_hidden and
        # load_extended: not decoded to be dropped.
        table = file.read(columns=[c for c in file.schema_arrow.names
                                   if c not in ("hidden_mean", "extended_features")])
    order = table.column("row_id").to_numpy()
    if len(order) and (np.diff(order) < 0).any():  # files keep extraction order; return input order
        table = table.take(np.argsort(order, kind="stable"))
    n_layers = len(info["layers"])
    spline = _matrix(table.column("spline_features"), np.float32).reshape(-1, n_layers, len(FEATURE_STATS))
    ids = None
    if "intrinsic_dimension" in table.column_names:
        ids = _matrix(table.column("intrinsic_dimension"), np.int32)
    meta = table.drop_columns([c for c in LIST_COLUMNS if c in table.column_names]).to_pandas()
    return spline, ids, meta


def load_hidden(path) -> np.ndarray | None:
    """Mean-pooled hidden states [N, d] stored with --save-hidden, else None."""
    if "hidden_mean" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path, columns=["row_id", "hidden_mean"])
    hidden = _matrix(table.column("hidden_mean"), np.float32)
    return hidden[np.argsort(table.column("row_id").to_numpy(), kind="stable")]


def load_extended(path) -> tuple[np.ndarray, list[str]] | tuple[None, None]:
    """The extended statistics [N, F] (input order) and their names, or (None, None) for a paper file."""
    if "extended_features" not in pq.read_schema(path).names:
        return None, None
    table = pq.read_table(path, columns=["row_id", "extended_features"])
    matrix = _matrix(table.column("extended_features"), np.float32)
    names = read_feature_metadata(path)["extended_feature_names"]
    return matrix[np.argsort(table.column("row_id").to_numpy(), kind="stable")], names


def merge_feature_files(paths, out_path) -> Path:
    """Merge the per-process files of one run (``accelerate launch``) into ``out_path``."""
    paths = [Path(p) for p in paths]
    meta = read_feature_metadata(paths[0])
    meta["settings"].pop("shard", None)
    for key in ("n_input_rows", "n_skipped_empty", "n_skipped_no_tokens"):
        meta[key] = sum(read_feature_metadata(p).get(key, 0) for p in paths)
    _stream_tables(paths, Path(out_path), meta)
    for p in paths:
        p.unlink()
    return Path(out_path)
