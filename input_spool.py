"""The extraction's input, tokenised once and spooled to disk longest first.

``spool_input`` reads the rows to extract a chunk at a time, tokenises them, stages them with their
token ids as Arrow files, then writes them again in the order the extraction runs them (longest
first, so that similar lengths share a padded batch) as one Arrow file per chunk of rows. The
extraction then reads one chunk at a time: token ids come as int32 arrays, not Python lists, and
what stays in memory is one chunk, whatever the input's size.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

TOKENS = "__token_ids__"  # the spool's column of token ids (dropped before the features are written)


# -- the input rows ---------------------------------------------------------------------------------
def chunks(positions, size: int):
    """``positions`` (a range or an array) in int64 arrays of at most ``size``."""
    for start in range(0, len(positions), size):
        yield np.asarray(positions[start:start + size], dtype=np.int64)


def _as_text(value) -> str:
    return value if isinstance(value, str) else ""  # NaN / None (a missing text) -> "" (skipped as empty)


def input_texts(source, positions, text_column: str) -> list[str]:
    """The (cleaned) texts of the input rows at ``positions``."""
    if isinstance(source, pd.DataFrame):
        column = source[text_column].iloc[positions]
        return [_as_text(t) for t in column]
    return [_as_text(source[i]) for i in positions]


def input_rows(source, positions, text_column: str) -> pd.DataFrame:
    """The input rows at ``positions`` as the output's plain columns: ``row_id`` (the position), ``text``,
    then every other input column (an input ``row_id`` column becomes ``input_row_id``)."""
    if isinstance(source, pd.DataFrame):
        rows = source.iloc[positions].reset_index(drop=True)
    else:
        rows = pd.DataFrame({text_column: [source[i] for i in positions]})
    rows = rows.rename(columns={text_column: "text"}) if text_column != "text" else rows
    if "row_id" in rows.columns:
        rows = rows.rename(columns={"row_id": "input_row_id"})
    rows.insert(0, "row_id", np.asarray(positions, dtype=np.int64))
    rows["text"] = rows["text"].map(_as_text)
    return rows


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[pa.ListArray, np.ndarray]:
    """Token ids of each text (special tokens as the tokenizer adds them), truncated to ``max_length``,
    as an Arrow list<int32> array, and which texts were truncated."""
    rows = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    cut = np.fromiter((len(row) > max_length for row in rows), dtype=bool, count=len(rows))
    if cut.any():  # truncated by the tokenizer, which knows which special tokens to keep
        again = iter(tokenizer([t for t, c in zip(texts, cut) if c], truncation=True,
                               max_length=max_length)["input_ids"])
        rows = [next(again) if c else row for row, c in zip(rows, cut)]
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.fromiter((t for row in rows for t in row), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)), cut


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    """``table[name] = values`` as pandas does it: replaced in place if present, else appended."""
    index = table.schema.get_field_index(name)
    values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return table.set_column(index, name, values) if index >= 0 else table.append_column(name, values)


# -- the spool --------------------------------------------------------------------------------------
def _write(table: pa.Table, path: Path) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as stream:
        stream.write_table(table)
    return path


def read_chunk(path: Path) -> pa.Table:
    """A spooled chunk, memory-mapped (its buffers are the file's pages, not heap)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def spool_input(source, positions, text_column: str, done_ids: np.ndarray, tokenizer, max_length: int,
                read_rows: int, rows_per_chunk: int, folder: Path, progress: bool = False, desc: str = "") -> dict:
    """Tokenise the input rows at ``positions`` and spool the ones to extract to ``folder``, longest first.

    Skipped: empty and whitespace-only texts, rows in ``done_ids`` (a resumed run) and texts with no
    tokens. Each spooled chunk (``rows_per_chunk`` rows) holds the output's plain columns (see
    :func:`input_rows`), ``n_tokens``, ``truncated`` and the token ids; ties in length keep input order.
    Returns the counts of empty, to-do, truncated and token-less texts, the chunk files and the number
    of rows in them. Memory: ``read_rows`` input rows at a time, and a position and a length per row.
    """
    shutil.rmtree(folder, ignore_errors=True)  # left over by a killed run
    folder.mkdir(parents=True)
    counts = {"empty": 0, "todo": 0, "truncated": 0, "no_tokens": 0}
    staged, lengths = [], []
    bar = tqdm(total=len(positions), unit="text", desc=f"tokenise {desc}".strip(), disable=not progress,
               leave=False)
    for chunk in chunks(positions, read_rows):
        texts = input_texts(source, chunk, text_column)
        empty = np.fromiter((not t.strip() for t in texts), dtype=bool, count=len(texts))
        counts["empty"] += int(empty.sum())
        keep = ~empty & ~np.isin(chunk, done_ids)
        bar.update(len(chunk))
        if not keep.any():
            continue
        rows = pa.Table.from_pandas(input_rows(source, chunk[keep], text_column), preserve_index=False)
        ids, truncated = tokenize(tokenizer, rows.column("text").to_pylist(), max_length)
        n_tokens = np.diff(ids.offsets.to_numpy())
        rows = set_column(set_column(rows, "n_tokens", n_tokens), "truncated", truncated)
        staged.append(_write(rows.append_column(TOKENS, ids), folder / f"staged-{len(staged):06d}.arrow"))
        lengths.append(n_tokens)
        counts["truncated"] += int(truncated.sum())
    bar.close()
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    counts["todo"], counts["no_tokens"] = len(lengths), int((lengths == 0).sum())
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]

    # Gather each output chunk from the staged files (memory-mapped), file by file.
    tables = [read_chunk(path) for path in staged]
    sizes = [t.num_rows for t in tables]
    file_of = np.repeat(np.arange(len(tables)), sizes)
    row_in_file = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, dtype=np.int64)
    files = []
    for wanted in chunks(order, rows_per_chunk):
        pieces, places = [], []
        for f in np.unique(file_of[wanted]):
            here = np.flatnonzero(file_of[wanted] == f)
            pieces.append(tables[f].take(row_in_file[wanted][here]))
            places.append(here)
        table = pa.concat_tables(pieces, promote_options="permissive")
        table = table.take(np.argsort(np.concatenate(places)))
        files.append(_write(table, folder / f"chunk-{len(files):06d}.arrow"))
    del tables
    for path in staged:
        path.unlink()
    return {**counts, "files": files, "n_rows": len(order)}


def select_rows(n_rows: int, limit: int | None, sample: int | None, seed: int):
    """Positions of the input rows to extract, ascending: the first ``limit``, then a seeded ``sample``.

    A range (no memory) unless sampling; the sample is the one ``DataFrame.sample(n=sample,
    random_state=seed)`` draws from the limited rows (it depends only on their number).
    """
    rows = range(n_rows)
    if limit is not None:
        rows = rows[:limit]
    if sample is not None and sample < len(rows):
        drawn = pd.DataFrame(index=pd.RangeIndex(len(rows))).sample(n=sample, random_state=seed).index
        rows = np.asarray(rows)[np.sort(drawn.to_numpy())]
    return rows


def pad_batch(rows, pad_id: int, padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences -> (input_ids [B, W] long, mask [B, W] bool), padded on ``padding_side``."""
    width = max(len(row) for row in rows)
    # Filled in numpy: the rows may be read-only views of a memory-mapped chunk, which torch will not wrap.
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[r, span] = row
        mask[r, span] = True
    return torch.from_numpy(input_ids), torch.from_numpy(mask)
