"""Extract the paper's spline features (7 per layer) and attention ID (1 per layer) to a parquet file.

    python extract_features.py --model smollm2-135m --texts FILE --out OUT.parquet
    python extract_features.py --dataset rtp                  # a named dataset of data/
    python extract_features.py --dataset rtp --layers 0-2     # early exit after layer 2
    python extract_features.py --dataset insults --features extended   # + the richer statistics

FILE is .txt (one text per line), .csv, .jsonl or .parquet; --text-column names the text column
(default ``text``) and every other column passes through to the output. Prompts are tokenised
with the tokenizer's defaults (no chat template), grouped by length into padded batches, and the
finished batches are written as they complete: a killed run restarted with the same arguments
resumes where it stopped. See feature_io.py for the output format and the loader.

Under ``accelerate launch`` the rows are split across the processes and merged at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Arrow picks its memory pool when pyarrow is first imported, and pandas imports it before feature_io
# can: the system allocator, as feature_io explains, so the buffers of finished chunks go back.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
# OpenMP (GNU libgomp, read when torch loads) lets idle threads spin for work by default: on 2 cores the
# spinning doubled the extraction's CPU seconds without making it faster, and far slower on a shared
# machine (48 pubmed prompts, 2 threads: 51.8 CPU s active, 24.8 passive; 1 thread 22.5). Passive unless
# the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from cli import (UserError, layer_spec, non_negative_int, output_lock, parse_layer_spec, positive_int,  # noqa: E402
                 run_main)
from feature_io import (FEATURE_SETS, FeatureWriter, extended_feature_names, feature_names,  # noqa: E402
                        feature_spec, merge_feature_files)
from model_loading import model_slug  # noqa: E402,F401 (re-exported: the features' folder name)
from input_spool import (TOKENS, chunks, input_texts, pad_batch, read_chunk, select_rows, set_column,  # noqa: E402
                         spool_input)  # noqa: E402

log = logging.getLogger("extract_features")

# Defaults (the paper's settings where it has one); each is a command-line flag too.
MODEL = "smollm2-135m"
MAX_LENGTH = 1024      # the paper truncates prompts to 1024 tokens
BATCH_SIZE = 16
FLUSH_EVERY = 256      # prompts per part file: at most this much work is redone after a crash
CHUNK_SIZE = 512       # prompts read, tokenised and extracted at a time: memory is O(chunk), not O(input)
PADDING_SIDE = "right"
FEATURES_DIR = Path("features")
FEATURES = "paper"     # paper (7 per layer) | extended (+ the chosen richer set) | candidates (every group)
LINE_BREAKS = "\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"  # str.splitlines()' breaks


# -- inputs -----------------------------------------------------------------------------------------
def read_texts(path, text_column: str = "text") -> pd.DataFrame:
    """A DataFrame with the text column from .txt, .csv, .jsonl/.json or .parquet.

    Bytes that are not UTF-8 become U+FFFD, with one warning naming the file and the lines affected; a
    file that cannot be parsed is a UserError naming the file (and the line, where the format has lines)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input file not found: {path}; check the path given to --texts")
    if path.is_dir():
        raise UserError(f"--texts {path} is a directory; give a file (.txt, .csv, .jsonl or .parquet)")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = _read_utf8(path)
        # Split inside Arrow, as str.splitlines() would: a Python string per line would leave the
        # freed lines' heap arenas behind for the whole run (~0.4 KiB a line, seen in the memory bench).
        lines = pc.split_pattern_regex(pa.array([text], type=pa.large_string()), LINE_BREAKS)[0].values
        del text
        if len(lines) and lines[len(lines) - 1].as_py() == "":  # the break that ends the last line
            lines = lines[:-1]
        frame = pd.DataFrame({text_column: pd.Series(lines, dtype=pd.ArrowDtype(pa.large_string()))})
    elif suffix == ".csv":
        try:
            frame = pd.read_csv(io.StringIO(_read_utf8(path)))
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame()
        except pd.errors.ParserError as error:
            raise UserError(f"{path} is not a valid CSV file ({' '.join(str(error).split())}); fix that line, "
                            "or quote fields that hold commas or line breaks") from None
    elif suffix == ".jsonl":
        from data.cleaning import parse_jsonl
        frame = pd.DataFrame(parse_jsonl(_read_utf8(path), str(path)))
    elif suffix == ".json":
        try:
            frame = pd.read_json(io.StringIO(_read_utf8(path)))
        except ValueError as error:
            raise UserError(f"{path} is not a JSON table ({error}); give records as a list of objects, or one "
                            "object a line in a .jsonl file") from None
    elif suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path} is not a readable parquet file ({' '.join(str(error).split())}); "
                            "rewrite it, or give the texts as .txt, .csv or .jsonl") from None
    else:
        raise UserError(f"unsupported input {path}: use .txt (one text per line), .csv, .jsonl or .parquet")
    return frame


def _read_utf8(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 become U+FFFD, and one warning counts the lines hit."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    n_lines = 0
    for line in io.BytesIO(raw):  # one line at a time: no list of every line
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            n_lines += 1
    log.warning("%s: %d line(s) hold bytes that are not UTF-8; they were replaced by U+FFFD", path, n_lines)
    return raw.decode("utf-8", errors="replace")


def check_text_column(frame: pd.DataFrame, text_column: str, origin: str) -> None:
    if text_column not in frame.columns:
        raise UserError(f"{origin} has no column {text_column!r}; its columns are {list(frame.columns)}. "
                        "Pass --text-column NAME.")


def default_out(model: str, name: str, layers: list[int], n_layers: int, root=FEATURES_DIR) -> Path:
    """features/<model>/<name>.parquet, or features/<model>/layers<spans>/<name>.parquet for a subset."""
    folder = Path(root) / model_slug(model)
    if layers != list(range(n_layers)):
        spans = _spans(layers)
        folder = folder / f"layers{spans}"
    return folder / f"{name}.parquet"


def _spans(layers: list[int]) -> str:
    runs, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = cur
    return "_".join(runs)


def _fingerprint(source, positions, text_column: str, chunk_size: int) -> str:
    """SHA-1 of the texts at ``positions`` (each followed by a NUL), read a chunk at a time."""
    digest = hashlib.sha1()
    for chunk in chunks(positions, chunk_size):
        for text in input_texts(source, chunk, text_column):
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()


# -- the run ----------------------------------------------------------------------------------------
def extract_features(texts=None, *, dataset: str | None = None, out=None, model: str = MODEL, layers=None,
                     batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH, dtype: str = "auto",
                     device: str | None = None, device_map=None, with_id: bool = True, save_hidden: bool = False,
                     limit: int | None = None, sample: int | None = None, seed: int = 0,
                     text_column: str = "text", padding_side: str = PADDING_SIDE,
                     overwrite: bool = False, replace_stale: bool = False, progress: bool = True, flush_every: int = FLUSH_EVERY,
                     features_dir=FEATURES_DIR, chunk_size: int = CHUNK_SIZE, features: str = FEATURES) -> Path:
    """Extract features of ``texts`` (a file path, a DataFrame or a list of strings) or of ``dataset``.

    Returns the path of the finished parquet file. An output (or interrupted run) with the same
    settings is reused (resumed); one with other settings is an error, unless ``overwrite`` (always
    start over) or ``replace_stale`` (start over only then). Empty and whitespace-only texts are skipped
    (counted, with a warning); texts longer than ``max_length`` tokens are truncated and flagged.

    Memory does not grow with the number of texts: the rows to do are tokenised once, ``chunk_size``
    at a time, and spooled with their token ids, longest first, to ``OUT.parquet.parts/input/`` (see
    input_spool.py; an input read from a file or dataset is freed, and the tokenizer with it, before
    the model loads); the extraction reads them back one chunk at a time.
    """
    # Imported here so that `--help`, bad arguments and reading features never load torch models.
    from model_loading import check_device, default_device, load_model, model_config, model_fingerprint, resolve_dtype

    if (texts is None) == (dataset is None):
        raise UserError("give exactly one of texts (--texts FILE) or dataset (--dataset NAME)")
    if batch_size < 1 or max_length < 1 or chunk_size < 1 or flush_every < 1:
        raise UserError("batch_size, max_length, chunk_size and flush_every must be positive")
    if padding_side not in ("left", "right"):
        raise UserError("padding_side must be 'left' or 'right'")
    check_device(device)  # a device that is not there is refused by name before anything is read or loaded
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a directory; give the output file, e.g. {Path(out) / 'NAME.parquet'}")
    if features not in FEATURE_SETS:
        raise UserError(f"features must be one of {list(FEATURE_SETS)}, got {features!r}")
    groups = FEATURE_SETS[features]
    # The layers are checked against the model's config (a small file) before any input is read.
    n_layers_total = model_config(model).get_text_config().num_hidden_layers
    layers = parse_layer_spec("all" if layers is None else layers, n_layers_total)
    if dataset is not None:
        from data import load_dataset
        source, origin = load_dataset(dataset), f"dataset {dataset!r}"
        name = dataset
    elif isinstance(texts, pd.DataFrame):
        source, origin, name = texts, "the DataFrame", "texts"
    elif isinstance(texts, (str, Path)):
        source, origin, name = read_texts(texts, text_column), str(texts), Path(texts).stem
    else:  # a list (or tuple) is used as it is, any other iterable is listed once
        source = texts if isinstance(texts, (list, tuple)) else list(texts)
        origin, name = "the list of texts", "texts"
    if source.empty if isinstance(source, pd.DataFrame) else not len(source):
        raise UserError(f"{origin} holds no rows: nothing to extract")
    if isinstance(source, pd.DataFrame):
        check_text_column(source, text_column, origin)
    selected = select_rows(len(source), limit, sample, seed)  # row_id = position in the full input

    rank, world = _process_rank()
    if world > 1 and device is None and device_map is None:
        from accelerate import PartialState
        device = str(PartialState().device)
    device = device or (None if device_map is not None else default_device())
    torch_dtype = resolve_dtype(dtype, device or "cuda")
    out = Path(out) if out is not None else default_out(model, name, layers, n_layers_total, features_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the folder of {out} ({error.strerror}); choose another --out") from None
    # Under `accelerate launch`, each process takes every n-th row and writes its own file.
    final_out = out
    if world > 1:
        out = out.with_name(f"{out.stem}.rank{rank}of{world}{out.suffix}")
    # One writer per output, for the whole run: a second run on it is refused at once, naming this one's pid
    # (two runs on one parts folder would number their parts alike and lose rows). The kernel drops the lock
    # when this process dies, so a killed run's output is resumed without asking.
    with output_lock(out, what=str(out)):
        fingerprint = _fingerprint(source, selected, text_column, chunk_size)
        settings = {"model": str(model), "layers": layers, "dtype": str(torch_dtype).removeprefix("torch."),
                    "max_length": max_length, "with_id": with_id, "save_hidden": save_hidden,
                    "padding_side": padding_side, "input": origin, "limit": limit, "sample": sample,
                    "seed": seed, "n_input_rows": len(selected), "input_sha1": fingerprint}
        weights = model_fingerprint(model)
        if weights is not None:  # a folder or .gguf: retrained weights under the same path are another run
            settings["model_files"] = weights
        if groups:  # only then: a paper-set run keeps the settings (and the files) it always had
            settings["features"] = features
            settings["feature_spec"] = feature_spec(groups)

        if world > 1:
            selected = selected[rank::world]
            settings["shard"] = f"{rank}/{world}"
        writer = FeatureWriter(out, settings, overwrite=overwrite, replace_stale=replace_stale)

        if writer.complete:
            log.info("%s is already complete with these settings: nothing to do", out)
        else:
            # The input is tokenised once, a chunk at a time, and spooled to disk longest first; the run
            # then reads one chunk at a time: what stays in memory is one chunk, whatever the input's size.
            spool = writer.parts_dir / "input"
            try:
                # Whole batches per chunk, so that the batches are the ones of one length-sorted pass.
                rows_per_chunk = max(batch_size, chunk_size - chunk_size % batch_size)
                plan = _tokenise_and_spool(model, padding_side, source=source, positions=selected,
                                           text_column=text_column, done_ids=writer.done_ids, max_length=max_length,
                                           read_rows=chunk_size, rows_per_chunk=rows_per_chunk, folder=spool,
                                           progress=progress, desc=name)
                del source  # a file or dataset read here is freed; a caller's list or DataFrame stays the caller's
                # With Arrow's system allocator this is glibc's malloc_trim: the heap that held the input and the
                # tokenizer goes back before the model loads on top of it, not kept for the whole run.
                pa.default_memory_pool().release_unused()
                # Nothing to extract at all is the user's input, not a result (an empty file would hide it). Under
                # `accelerate launch` a shard may well be empty: the other processes wait for its file.
                if not plan["n_rows"] and not len(writer.done_ids) and world == 1:
                    shutil.rmtree(writer.parts_dir, ignore_errors=True)  # nothing of this run to resume
                    raise UserError(f"{origin} has no non-empty text to extract ({len(selected)} rows: "
                                    f"{plan['empty']} empty or whitespace-only, {plan['no_tokens']} with no tokens); "
                                    f"check the file and --text-column {text_column!r}")
                if plan["empty"]:
                    log.warning("%s: skipping %d empty or whitespace-only texts", origin, plan["empty"])
                if len(writer.done_ids):
                    log.warning("Resuming %s: %d prompts already done, %d to go", out, len(writer.done_ids),
                                plan["todo"])
                if plan["truncated"]:
                    log.warning("%d texts longer than %d tokens were truncated (flagged in the `truncated` column)",
                                plan["truncated"], max_length)
                if plan["no_tokens"]:
                    log.warning("skipping %d texts that tokenise to no tokens", plan["no_tokens"])
                net = load_model(model, dtype=torch_dtype, device=device, device_map=device_map)
                _run(net, plan["pad_id"], padding_side, plan["files"], plan["n_rows"], writer, layers,
                     batch_size, with_id, save_hidden, progress, flush_every, desc=name, groups=groups)
                metadata = {"model": str(model), "model_class": type(net).__name__, "n_layers_total": n_layers_total,
                            "layers": layers, "feature_names": feature_names(layers), "dtype": settings["dtype"],
                            "max_length": max_length, "with_id": with_id, "save_hidden": save_hidden,
                            "padding_side": padding_side, "source": origin, "n_input_rows": len(selected),
                            "n_skipped_empty": plan["empty"], "n_skipped_no_tokens": plan["no_tokens"],
                            "device": str(next(net.parameters()).device), "batch_size": batch_size,
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                if groups:
                    metadata.update(feature_set=features, feature_groups=list(groups),
                                    extended_feature_names=extended_feature_names(layers, groups))
                writer.finish(metadata)  # removes OUT.parts/, the spooled input with it
            finally:
                shutil.rmtree(spool, ignore_errors=True)
        if world > 1:
            _merge_shards(final_out, out, world)
    return final_out


def _tokenise_and_spool(model: str, padding_side: str, **kwargs) -> dict:
    """``spool_input`` with the model's tokenizer, loaded here and freed on return (~30 MiB for SmolLM2's):
    the extraction only needs the pad id."""
    from model_loading import load_tokenizer
    tokenizer = load_tokenizer(model, padding_side)
    return {**spool_input(tokenizer=tokenizer, **kwargs), "pad_id": tokenizer.pad_token_id}


def _process_rank() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState
    state = PartialState()
    return state.process_index, state.num_processes


def _merge_shards(final_out: Path, own: Path, world: int) -> None:
    from accelerate import PartialState
    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        shards = [own.with_name(own.name.replace(f".rank{state.process_index}of", f".rank{r}of"))
                  for r in range(world)]
        merge_feature_files(shards, final_out)
    state.wait_for_everyone()


def _run(model, pad_id: int, padding_side: str, files: list[Path], n_rows: int, writer: FeatureWriter, layers,
         batch_size, with_id, save_hidden, progress, flush_every, desc, groups=()) -> None:
    """Extract the spooled rows (longest first) a chunk at a time: run padded batches, write parts."""
    if not n_rows:
        return
    rows, warmed = None, False
    pending_rows = []
    pending = {key: [] for key in ("spline_features", "intrinsic_dimension", "hidden_mean", "extended_features",
                                   "latency_s")}

    def flush():
        if not pending_rows:
            return
        arrays = {"spline_features": np.concatenate(pending["spline_features"]),
                  "intrinsic_dimension": np.concatenate(pending["intrinsic_dimension"]) if with_id else None,
                  "hidden_mean": np.concatenate(pending["hidden_mean"]) if save_hidden else None}
        if groups:  # a paper-set file gets no such column (its parts stay byte-identical)
            arrays["extended_features"] = np.concatenate(pending["extended_features"])
        done = set_column(rows.take(pa.array(np.concatenate(pending_rows))), "latency_s",
                          np.concatenate(pending["latency_s"]))
        writer.write(done, arrays)
        pending_rows.clear()
        for value in pending.values():
            value.clear()

    # On the CPU a batch's activations are heap blocks that glibc keeps once freed, more or fewer from
    # one batch to the next, so the process creeps up over a long run. Without handing them back after
    # each batch (under a millisecond), a 20,000-prompt run peaked 21 MiB above a 1,000-prompt one
    # (SmolLM2, layer 0, batches of 16, medians of 5 runs); with it, within the bench's 2 % (bench/README.md).
    trim = next(model.parameters()).device.type == "cpu"
    bar = tqdm(total=n_rows, unit="prompt", desc=f"features {desc}", disable=not progress, smoothing=0.1)
    try:
        for path in files:
            table = read_chunk(path)
            # Token ids as int32 views of the chunk's pages; the rows are already longest first, none
            # without tokens (see input_spool): similar lengths share a batch (little padding), and an
            # out-of-memory batch shows up at once.
            tokens = table.column(TOKENS).combine_chunks()
            offsets, values = tokens.offsets.to_numpy(), tokens.values.to_numpy()
            ids = [values[offsets[i]:offsets[i + 1]] for i in range(len(tokens))]
            rows = table.drop_columns([TOKENS])
            if not warmed:
                # One untimed warm-up pass, so the first batch's latency is not inflated by lazy initialisation.
                first = torch.tensor(ids[0][:8], dtype=torch.long)[None]
                model.spline_recorder.run(first, torch.ones_like(first, dtype=torch.bool), layers, with_id,
                                          save_hidden, groups)
                warmed = True
            for start in range(0, len(ids), batch_size):
                batch = np.arange(start, min(start + batch_size, len(ids)))
                input_ids, mask = pad_batch([ids[i] for i in batch], pad_id, padding_side)
                began = time.perf_counter()
                result = model.spline_recorder.run(input_ids, mask, layers, with_id, save_hidden, groups)
                spline = result["spline"].flatten(1).float().cpu().numpy()  # the one host transfer per batch
                elapsed = time.perf_counter() - began
                pending_rows.append(batch)
                pending["spline_features"].append(spline)
                if with_id:
                    pending["intrinsic_dimension"].append(result["ids"].cpu().numpy().astype(np.int32))
                if save_hidden:
                    pending["hidden_mean"].append(result["hidden"].float().cpu().numpy())
                if groups:
                    pending["extended_features"].append(result["extended"].flatten(1).float().cpu().numpy())
                pending["latency_s"].append(np.full(len(batch), elapsed / len(batch)))
                bar.update(len(batch))
                if trim:
                    pa.default_memory_pool().release_unused()  # the system pool's release is malloc_trim
                if sum(len(r) for r in pending_rows) >= flush_every:
                    flush()
            flush()  # a part never spans two chunks
            table = tokens = offsets = values = ids = rows = None
    except KeyboardInterrupt:
        flush()
        bar.close()
        log.error("Interrupted: %d prompts are saved in %s. Rerun the same command to resume.",
                  writer.n_done, writer.parts_dir)
        raise
    bar.close()


# -- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--texts", help="input file: .txt (one text per line), .csv, .jsonl or .parquet")
    source.add_argument("--dataset", help="a dataset name of data/ (python -m data lists them)")
    p.add_argument("--out", help="output parquet (default <features-dir>/<model>/[layers<spec>/]<name>.parquet)")
    p.add_argument("--features-dir", default=str(FEATURES_DIR))
    p.add_argument("--model", default=MODEL, help="embedded name (smollm2-135m), hub id, folder or .gguf file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--layers", default="all", type=layer_spec,
                   help="'all', 'last-8', '0-2', '0,5,10' ... (early exit after the deepest)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--max-length", type=positive_int, default=MAX_LENGTH,
                   help="longer prompts are truncated and flagged")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16", "float64"),
                   help="auto (= float32 on every device), float32, float16, bfloat16 "
                   "(half precision is faster on a GPU but moves the distance statistics, see README)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--device-map", default=None, choices=("auto", "balanced", "balanced_low_0", "sequential"),
                   help="'auto' shards the model over all GPUs (accelerate)")
    p.add_argument("--padding-side", default=PADDING_SIDE, choices=["left", "right"])
    p.add_argument("--no-id", action="store_true", help="skip the attention intrinsic dimension")
    p.add_argument("--features", default=FEATURES, choices=list(FEATURE_SETS),
                   help="paper: the 7 statistics per layer (default); extended: plus the richer set chosen in "
                        "the same-genre comparison (see RESULTS.md, same-genre section); candidates: plus every richer group")
    p.add_argument("--save-hidden", action="store_true",
                   help="also store the mean-pooled MLP input of the deepest layer (for the hidden-state probe)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N texts")
    p.add_argument("--sample", type=positive_int, default=None, help="a random subset of N texts (seeded by --seed)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing or partial output")
    p.add_argument("--flush-every", type=positive_int, default=FLUSH_EVERY)
    p.add_argument("--chunk-size", type=positive_int, default=CHUNK_SIZE,
                   help="prompts read and tokenised at a time (memory is O(chunk), not O(input))")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = extract_features(args.texts, dataset=args.dataset, out=args.out, model=args.model, layers=args.layers,
                            batch_size=args.batch_size, max_length=args.max_length, dtype=args.dtype,
                            device=args.device, device_map=args.device_map, with_id=not args.no_id,
                            save_hidden=args.save_hidden, limit=args.limit, sample=args.sample,
                            seed=args.seed, text_column=args.text_column,
                            padding_side=args.padding_side, overwrite=args.overwrite,
                            progress=not args.no_progress, flush_every=args.flush_every,
                            features_dir=args.features_dir, chunk_size=args.chunk_size, features=args.features)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "extract_features.py"))
