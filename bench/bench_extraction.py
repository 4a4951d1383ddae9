"""What the spline features cost, side by side in one run: same prompts, batches, model and dtype.

    .venv/bin/python bench/bench_extraction.py                  # the full run (~10 min on 2 CPU cores)
    .venv/bin/python bench/bench_extraction.py --tiny           # seconds, a random 4-layer model: CI
    .venv/bin/python bench/bench_extraction.py --update-readme  # also paste the tables into bench/README.md

1. Extraction, timed batch by batch in turn (a noisy neighbour slows every method alike):
     bare forward  the stock model on the padded batch (use_cache=False, logits included): the floor
     body-only     the stock decoder stack without the LM head: the work extraction really shares (its
                   targets compare ours with this floor too; the LM head of a 49k-word vocabulary is a large
                   share of a small model's forward pass, and extraction never runs it)
     ours          this project's extraction (SplineRecorder.run, one host copy, parquet file), all layers
                   and the first 3 (early exit), with and without the attention ID
     paper         the paper's approach re-created: hooks.py traces on every gate_proj compute the
                   statistics of ONE prompt at a time and call .tolist() in every layer; rows stored as
                   stringified lists in a CSV; the ID from output_attentions=True (eager attention)
     nnsight       a tracing library computing the same statistics, in its own process
                   (bench/nnsight_worker.py; `pip install -r bench/requirements.txt`, else "not run")
   Every method's features are compared with ours, so all rows compute the same numbers.
2. Loading N rows of features: our parquet file against parsing the paper-style CSV.
3. Memory: the peak RSS of a whole 20,000-prompt extraction against a 1,000-prompt one (fresh processes).
4. Generation: model.generate with an edit applied, against the unedited model: the SEA spectral
   edit (sea.py) and a SelfIE insertion (self_interpret.generate_interpret).

Results: bench/results/latest.json (every number, the targets and their pass/fail) and latest.md.
"""
from __future__ import annotations

import argparse
import ast
import csv
import functools
import gc
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cli import UserError, non_negative_int, output_lock, positive_int, run_main  # noqa: E402
from input_spool import pad_batch  # noqa: E402
from hooks import Trace, TraceDict, num_layers  # noqa: E402

# -- settings (each one is a command-line flag too) ----------------------------------------------
MODEL = "smollm2-135m"
N_PROMPTS = 240           # real prompts of mixed lengths (~11% padding in batches of 16)
MIN_TOKENS, MAX_TOKENS = 8, 400  # prompt lengths, drawn log-uniformly
BATCH_SIZE = 16           # extract_features' default; batches are length-sorted, longest first
REPEATS = 2               # full sweeps over the prompts; ratios are taken per repeat, median reported
FIRST_LAYERS = 3          # the "first k layers" variant (early exit)
LOAD_ROWS = 5000          # rows in the files of the loading benchmark
LOAD_REPEATS = 5          # repeats of the loading benchmark (each: ours, json.loads, literal_eval in turn)
OURS_CALLS = 5            # loads of our file per repeat of the loading benchmark (median kept)
MEMORY_RUNS = (1000, 20000)
MEMORY_REPEATS = 3        # runs of each size, interleaved; the median is compared
MEMORY_TOKENS = (8, 32)   # memory-run prompts: windows of uniformly 8-32 tokens (see memory_prompts)
MEMORY_LAYERS = "0"       # layer 0 only (early exit), so that 20,000 prompts fit the time budget
GEN_PROMPTS = 16          # generation rows: this many prompts, cut to GEN_PROMPT_TOKENS, left-padded
GEN_PROMPT_TOKENS = 48
GEN_BATCH = 8
GEN_NEW_TOKENS = 16       # greedy, exactly this many new tokens for every condition
SEA_ENERGY = 0.99         # the SEA edit's energy ratio for k+ and k- (sea.fit)
SELFIE_POSITIONS = 5      # placeholders overwritten in layer 1's input
DEVICE = None             # default: cuda when available, else cpu
DTYPE = "auto"            # float32 on every device (as extract_features)
THREADS = 0               # torch threads; 0 keeps torch's default
SEED = 0
PROMPT_DATASETS = ("rtp", "pubmed", "legal")  # prepared datasets of data/ (toxic + clean); local text otherwise
OUT_DIR = REPO / "bench" / "results"
README = REPO / "bench" / "README.md"

# The targets of the benchmark issue (name, op, threshold). "first 3 layers" is judged against 3/L + 0.10.
TARGETS = {
    "ours_vs_bare_id": ("full extraction time / bare forward (with ID), CPU", "<=", 1.10),
    "ours_vs_bare": ("full extraction time / bare forward (no ID), CPU", "<=", 1.10),
    "ours_vs_body_id": ("full extraction time / body-only floor (with ID), CPU", "<=", 1.10),
    "ours_vs_body": ("full extraction time / body-only floor (no ID), CPU", "<=", 1.10),
    "paper_vs_ours_id": ("paper's approach time / ours (with ID)", ">=", 1.15),
    "paper_vs_ours": ("paper's approach time / ours (no ID)", ">=", 1.15),
    "first_vs_all_id": ("first 3 layers / all layers (with ID)", "<=", None),
    "first_vs_all": ("first 3 layers / all layers (no ID)", "<=", None),
    "load_vs_literal_eval": ("loading speed-up vs the CSV parsed with ast.literal_eval", ">=", 50.0),
    "load_vs_json": ("loading speed-up vs the CSV parsed with json.loads", ">=", 50.0),
    "nnsight_vs_ours": ("nnsight time / ours (no ID)", ">=", 1.0),
    "paper_vs_ours_id_gpu": ("GPU: paper's approach time / ours (with ID)", ">=", 5.0),
    "memory": ("peak RSS, 20,000 / 1,000 prompts", "<=", 1.02),
}

METHODS = {  # key: (label, layers "all"/"first", with_id)
    "bare": ("bare forward (stock model, logits)", "all", False),
    "body": ("body-only floor (stock decoder stack, no LM head)", "all", False),
    "ours_all_id": ("ours, all layers + ID", "all", True),
    "ours_all": ("ours, all layers", "all", False),
    "ours_first_id": (f"ours, first {FIRST_LAYERS} layers + ID", "first", True),
    "ours_first": (f"ours, first {FIRST_LAYERS} layers", "first", False),
    "paper_id": ("paper's approach, all layers + ID", "all", True),
    "paper": ("paper's approach, all layers", "all", False),
    "nnsight": ("nnsight trace, all layers", "all", False),
}


# -- prompts ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def local_documents() -> tuple[str, ...]:
    """Real English text that ships with the machine: license texts and the standard library's docstrings."""
    docs = []
    for path in sorted(Path("/usr/share/common-licenses").glob("*")):
        if path.is_file():
            docs += [p for p in re.split(r"\n\s*\n", path.read_text(errors="replace")) if p.strip()]
    for path in sorted(Path(os.__file__).parent.glob("*.py"))[:60]:
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 6:
                    docs.append(doc)
    return tuple(" ".join(d.split()) for d in docs)


def dataset_documents(seed: int) -> tuple[list[str], str]:
    """Texts of the prepared datasets, interleaved; ([], "") where none is prepared (never downloads)."""
    from data import load_dataset
    pools, names = [], []
    for name in PROMPT_DATASETS:
        try:
            texts = [" ".join(str(t).split()) for t in load_dataset(name, prepare=False)["text"] if str(t).strip()]
        except Exception:  # noqa: BLE001 - a dataset that is not prepared here is skipped
            continue
        pools.append(random.Random(seed).sample(texts, len(texts)))
        names.append(name)
    docs = [t for group in zip(*pools) for t in group]
    return docs, ("datasets " + " + ".join(names)) if docs else ""


def make_prompts(tokenizer, n: int, lo: int, hi: int, seed: int, datasets: bool = True) -> tuple[list[str], str]:
    """n prompts of real text whose token counts are spread log-uniformly over [lo, hi]."""
    docs, origin = dataset_documents(seed) if datasets else ([], "")
    if len(docs) < n:
        docs, origin = docs + list(local_documents()), "local text (license texts, Python docstrings)"
    rng = random.Random(seed)
    rng.shuffle(docs)
    words = " ".join(docs).split()  # a long window of this stream stands in for a document too short
    prompts = []
    for i in range(n):
        target = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        ids = tokenizer(docs[i % len(docs)], add_special_tokens=False)["input_ids"]
        if len(ids) < target:
            start = rng.randrange(0, max(1, len(words) - hi))
            ids = tokenizer(" ".join(words[start:start + hi]), add_special_tokens=False)["input_ids"]
        prompts.append(tokenizer.decode(ids[:target]).strip())
    return prompts, origin


def make_batches(tokenizer, prompts: list[str], batch_size: int, max_length: int = 1024):
    """Length-sorted (longest first) right-padded batches, as extract_features builds them."""
    ids = [x[:max_length] for x in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    lengths = np.array([len(x) for x in ids])
    order = [int(i) for i in np.argsort(-lengths, kind="stable")]
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in rows], tokenizer.pad_token_id, "right")
        batches.append({"rows": rows, "ids": input_ids, "mask": mask.long(), "lengths": lengths[rows].tolist()})
    return batches, lengths


# -- the extraction methods: begin() per sweep, run_batch() per batch, end() stores and returns features --
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Bare:
    def __init__(self, model, device):
        self.model, self.device = model, device

    def begin(self, workdir):
        pass

    @torch.inference_mode()
    def run_batch(self, k, batch):
        self.model(input_ids=batch["ids"].to(self.device), attention_mask=batch["mask"].to(self.device),
                   use_cache=False)

    def end(self):
        return None


class Body(Bare):
    """The work extraction really shares with the model: the decoder stack without the LM head (the head of a
    49k-word vocabulary is a large share of a small model's forward pass, and extraction never runs it)."""

    @torch.inference_mode()
    def run_batch(self, k, batch):
        self.model.base_model(input_ids=batch["ids"].to(self.device), attention_mask=batch["mask"].to(self.device),
                              use_cache=False)


class Ours:
    """This project's extraction loop: recorder.run per batch, one host copy, a parquet feature file."""

    def __init__(self, model, layers, with_id, texts):
        self.model, self.layers, self.with_id, self.texts = model, layers, with_id, texts

    def begin(self, workdir: Path):
        self.out = workdir / "ours.parquet"
        self.spline, self.ids, self.rows = [], [], []

    def run_batch(self, k, batch):
        result = self.model.spline_recorder.run(batch["ids"], batch["mask"], self.layers, self.with_id)
        self.spline.append(result["spline"].flatten(1).float().cpu().numpy())
        if self.with_id:
            self.ids.append(result["ids"].cpu().numpy().astype(np.int32))
        self.rows += batch["rows"]

    def end(self):
        """Written as extract_features writes it (timed as part of the method)."""
        from feature_io import FeatureWriter, feature_names
        spline, ids = np.concatenate(self.spline), np.concatenate(self.ids) if self.with_id else None
        writer = FeatureWriter(self.out, {"bench": True}, overwrite=True)
        writer.write(pd.DataFrame({"row_id": np.array(self.rows, dtype=np.int64),
                                   "text": [self.texts[i] for i in self.rows]}),
                     {"spline_features": spline, "intrinsic_dimension": ids})
        layers = self.layers or list(range(self.model.spline_recorder.n_layers))
        writer.finish({"model": "bench", "layers": layers, "feature_names": feature_names(layers),
                       "with_id": self.with_id})
        order = np.argsort(self.rows)
        self.ids_by_row = ids[order] if self.with_id else None
        return spline[order]


class Paper:
    """The paper's per-prompt approach: a trace on every gate computes one prompt's 7 statistics and
    calls .tolist() (a host sync in every layer); each row goes to a CSV as stringified lists."""

    def __init__(self, model, device, with_id, texts):
        from instrument import decoder_layers, find_gate
        self.model, self.device, self.with_id, self.texts = model, device, with_id, texts
        gates = [find_gate(layer, i) for i, layer in enumerate(decoder_layers(model))]
        self.traces = TraceDict(model, gates, retain_output=False, edit_output=self.record)  # reads, edits nothing
        self.norms = {name: gate.weight.float().norm(dim=1) for name, gate in zip(self.traces, gates)}
        self.current: list = []

    def record(self, h, name):
        h = h[0].float()                                            # [T, D]: one prompt, no padding
        frac = (h > 0).float().mean(dim=1)
        dist = (h.abs() / self.norms[name]).min(dim=1).values
        self.current.append(torch.stack([frac.mean(), frac.min(), frac.max(), frac.std(),
                                         dist.min(), dist.mean(), dist.std()]).tolist())

    def begin(self, workdir: Path):
        self.path = workdir / ("paper_id.csv" if self.with_id else "paper.csv")
        self.file = open(self.path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["row_id", "text", "spline_features", "intrinsic_dimension"])
        self.done, self.done_ids = {}, {}

    @torch.inference_mode()
    def run_batch(self, k, batch):
        for i, (row, n) in enumerate(zip(batch["rows"], batch["lengths"])):
            self.current = []
            out = self.model(input_ids=batch["ids"][i, :n][None].to(self.device), output_attentions=self.with_id,
                             use_cache=False)
            id_list = []
            for attention in out.attentions or ():
                a = attention[0, :, -1, :]                          # [heads, keys]: the last token's row
                id_list.append((a > 0.1 * a.max(dim=-1, keepdim=True).values).sum().tolist())
            self.writer.writerow([row, self.texts[row], str(self.current), str(id_list)])
            self.done[row], self.done_ids[row] = self.current, id_list

    def end(self):
        self.file.close()
        rows = sorted(self.done)
        self.ids_by_row = np.array([self.done_ids[r] for r in rows]) if self.with_id else None
        return np.array([self.done[r] for r in rows], dtype=np.float32).reshape(len(rows), -1)


class NNsightProcess:
    """Drives bench/nnsight_worker.py (importing nnsight patches torch, so it gets its own process):
    one batch per command, timed by the worker itself."""

    def __init__(self, source, extra, batches, device, dtype, threads, workdir: Path):
        self.error = self.version = None
        npz = workdir / "batches.npz"
        np.savez(npz, **{f"ids_{k}": b["ids"].numpy() for k, b in enumerate(batches)},
                 **{f"mask_{k}": b["mask"].numpy() for k, b in enumerate(batches)})
        cmd = [sys.executable, str(Path(__file__).with_name("nnsight_worker.py")), "--model-path", str(source),
               "--batches", str(npz), "--device", device, "--dtype", str(dtype).removeprefix("torch."),
               "--threads", str(threads)] + (["--gguf-file", extra["gguf_file"]] if extra.get("gguf_file") else [])
        self.log = open(workdir / "nnsight_worker.log", "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env)
        hello = self._ask(None)
        if not hello or not hello.get("ready"):
            self.error = (hello or {}).get("error") or "the nnsight worker exited: see nnsight_worker.log"
            self.close()
        self.version = (hello or {}).get("nnsight")

    def _ask(self, command):
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        return json.loads(line) if line.strip() else None

    def begin(self, workdir):
        self.workdir = workdir

    def run_batch(self, k, batch):
        reply = self._ask(f"run {k}")
        if reply is None:
            raise RuntimeError("the nnsight worker died: see nnsight_worker.log")
        return reply["elapsed"]

    def features(self, rows_in_batch_order):
        path = self.workdir / "nnsight_features.npy"
        self._ask(f"dump {path}")
        feats = np.load(path)
        return feats.reshape(len(feats), -1)[np.argsort(rows_in_batch_order)]

    def end(self):
        return None

    def close(self):
        if self.proc.poll() is None:
            try:
                self._ask("quit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def time_extraction(contenders: dict, batches: list, repeats: int, device: str, workdir: Path, verbose: bool):
    """Every contender on every batch, in a rotating order; returns seconds per repeat and the features."""
    names = list(contenders)
    cuda = device.startswith("cuda")
    # Untimed warm-up. CPU: the shortest batch (one prompt of it for the paper's approach). GPU: a whole
    # sweep, since every new shape costs a first-call kernel choice (seen: a 4x slower first repeat).
    for c in contenders.values():
        c.begin(workdir)
        for k in range(len(batches)) if cuda else [len(batches) - 1]:
            batch = batches[k]
            if isinstance(c, Paper) and not cuda:
                batch = {**batch, "rows": batch["rows"][:1], "lengths": batch["lengths"][:1]}
            c.run_batch(k, batch)
        if isinstance(c, Paper):
            c.file.close()
    times, outputs = {n: [] for n in names}, {}
    for rep in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for c in contenders.values():
            c.begin(workdir)
        for k, batch in enumerate(batches):
            shift = (k + rep) % len(names)  # no method always follows the same one
            for name in names[shift:] + names[:shift]:
                sync(device)
                t0 = time.perf_counter()
                reported = contenders[name].run_batch(k, batch)  # the nnsight worker times itself
                sync(device)
                total[name] += reported if reported is not None else time.perf_counter() - t0
            if verbose:
                print(f"  repeat {rep + 1}, batch {k + 1}/{len(batches)} ({batch['ids'].shape[1]} tokens wide)",
                      flush=True)
        for name in names:  # storing the results is part of each method's time
            t0 = time.perf_counter()
            result = contenders[name].end()
            total[name] += time.perf_counter() - t0
            if result is not None:
                outputs[name] = result
            times[name].append(total[name])
        print(f"repeat {rep + 1}/{repeats}: " + ", ".join(f"{n} {total[n]:.1f}s" for n in names), flush=True)
    return times, outputs


# -- generation with an edit: the real SEA (sea.py) and SelfIE (self_interpret.py), both through hooks.py ---
def fitted_sea_edit(model, batch):
    """A SEA edit fitted on the last-token states of ``batch`` at every layer (base, and two shifted copies as
    positive and negative demonstrations): what it computes is beside the point here, its cost is SEA's own
    (sea.py's default layers, the last two thirds; energy SEA_ENERGY for k+ and k-)."""
    import sea
    with torch.inference_mode(), TraceDict(model, range(num_layers(model))) as traces:
        model(**batch)  # left-padded: the last column is every prompt's last token
    states = torch.stack([t.output[:, -1] for t in traces.values()], dim=1).double().cpu()  # [N, L, d]
    return sea.fit(states, states.roll(1, 0), states.roll(2, 0), energy_pos=SEA_ENERGY, energy_neg=SEA_ENERGY)


def selfie_insert_info(batch, vectors: torch.Tensor) -> list[dict]:
    """SelfIE's insert_info for every row of ``batch``: decoder layer 1's input at the SELFIE_POSITIONS real
    tokens before each prompt's last 3 becomes ``vectors`` ([SELFIE_POSITIONS, d]), on the prefill only."""
    info = []
    for n_real in batch["attention_mask"].sum(1).tolist():
        stop = max(min(n_real, SELFIE_POSITIONS), n_real - 3)  # a prompt shorter than 8 tokens: as many as fit
        where = list(range(max(0, stop - SELFIE_POSITIONS), stop))
        info.append({1: (where, vectors[None, :len(where)]), "overlay_strength": 1.0, "replacing_mode": "normalized"})
    return info


def bench_generation(model, tokenizer, prompts: list[str], device: str, repeats: int) -> dict:
    """model.generate (greedy, KV cache, left-padded batches) unedited, with a SEA edit applied and with a
    SelfIE insertion, interleaved batch by batch; seconds per repeat and the tokens they changed."""
    ids = [x[-GEN_PROMPT_TOKENS:] for x in tokenizer(prompts[:GEN_PROMPTS])["input_ids"]]
    ids.sort(key=len, reverse=True)
    batches = [tokenizer.pad({"input_ids": ids[i:i + GEN_BATCH]}, return_tensors="pt").to(device)
               for i in range(0, len(ids), GEN_BATCH)]
    from self_interpret import generate_interpret
    edit = fitted_sea_edit(model, batches[0])
    with torch.inference_mode(), Trace(model, num_layers(model) // 2) as source:  # what SelfIE inserts here:
        model(**batches[0])                                      # a middle layer's hidden states
    vectors = source.output[0, -SELFIE_POSITIONS:]
    options = dict(max_new_tokens=GEN_NEW_TOKENS, min_new_tokens=GEN_NEW_TOKENS, do_sample=False,
                   pad_token_id=tokenizer.pad_token_id)

    def generate(name, batch):
        with torch.inference_mode():
            if name == "sea":
                with edit.apply(model):
                    return model.generate(**batch, **options)
            if name == "selfie":
                return generate_interpret(model, batch["input_ids"], batch["attention_mask"],
                                          selfie_insert_info(batch, vectors), **options)
            return model.generate(**batch, **options)

    names = ["unedited", "sea", "selfie"]
    for name in names:  # untimed warm-up
        generate(name, batches[-1])
    times, tokens = {n: [] for n in names}, {}
    for rep in range(repeats):
        total, out = dict.fromkeys(names, 0.0), {n: [] for n in names}
        for k, batch in enumerate(batches):
            shift = (k + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                sync(device)
                t0 = time.perf_counter()
                out[name].append(generate(name, batch)[:, batch["input_ids"].shape[1]:].cpu())
                sync(device)
                total[name] += time.perf_counter() - t0
        for name in names:
            times[name].append(total[name])
        tokens = {n: torch.cat(v) for n, v in out.items()}
    rows = {}
    for name in names:
        rows[name] = {"seconds": times[name], "median_s": statistics.median(times[name]),
                      "ratio_to_unedited": statistics.median(t / u for t, u in zip(times[name], times["unedited"])),
                      "tokens_changed": float((tokens[name] != tokens["unedited"]).float().mean())}
    return {"prompts": len(ids), "prompt_tokens": max(map(len, ids)), "batch_size": GEN_BATCH,
            "new_tokens": GEN_NEW_TOKENS, "sea_layers": f"{edit.layers[0]}-{edit.layers[-1]}",
            "sea_energy": SEA_ENERGY, "selfie_positions": SELFIE_POSITIONS, "repeats": repeats,
            "conditions": rows}


# -- loading -----------------------------------------------------------------------------------------
def bench_loading(ours_file: Path, paper_csv: Path, n_rows: int, workdir: Path, repeats: int) -> dict:
    """Seconds to load n_rows of features: our parquet via load_features against the paper-style CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feature_io import load_features

    table = pq.read_table(ours_file)
    big = pa.concat_tables([table] * -(-n_rows // table.num_rows)).slice(0, n_rows)
    big = big.set_column(0, "row_id", pa.array(np.arange(n_rows, dtype=np.int64)))
    parquet_path, csv_path = workdir / "load.parquet", workdir / "load.csv"
    pq.write_table(big, parquet_path)
    with open(paper_csv, newline="") as f:
        header, *body = list(csv.reader(f))
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([str(i)] + body[i % len(body)][1:] for i in range(n_rows))

    def load_csv(parse):
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        spline, ids = [parse(r[2]) for r in rows], [parse(r[3]) for r in rows]
        return np.array(spline, dtype=np.float32), ids

    def seconds(fn):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # In turn within each repeat, as the extraction methods are timed: a noisy neighbour then slows both
    # sides of a ratio alike. Ours takes ~10 ms, so each repeat keeps the median of OURS_CALLS calls.
    t_ours, t_ast, t_json = [], [], []
    for _ in range(repeats):
        t_ours.append(statistics.median(seconds(lambda: load_features(parquet_path)) for _ in range(OURS_CALLS)))
        t_json.append(seconds(lambda: load_csv(json.loads)))
        t_ast.append(seconds(lambda: load_csv(ast.literal_eval)))
    median = statistics.median
    return {"rows": n_rows, "repeats": repeats, "ours_s": median(t_ours), "csv_literal_eval_s": median(t_ast),
            "csv_json_s": median(t_json),
            "parquet_mib": parquet_path.stat().st_size / 2**20, "csv_mib": csv_path.stat().st_size / 2**20,
            "speedup_vs_literal_eval": median(a / o for a, o in zip(t_ast, t_ours)),
            "speedup_vs_json": median(j / o for j, o in zip(t_json, t_ours)),
            "each_repeat_s": {"ours": t_ours, "csv_json": t_json, "csv_literal_eval": t_ast}}


# -- memory: whole extract_features runs, each in a fresh process --------------------------------------
MEMORY_CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
import model_loading
from extract_features import extract_features

def status(key):  # from /proc/self/status, in MiB; VmHWM is this process's peak RSS
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

before = {{}}
load_model = model_loading.load_model
def load_paged_in(*args, **kwargs):
    model = load_model(*args, **kwargs)
    # The weights are memory-mapped and paged in when first read: every embedding row of a token not
    # yet seen would count as growth (up to ~108 MiB for SmolLM2), and more prompts hold more distinct
    # tokens. Read the whole model once, so both runs start from its full size.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    before.update(rss_after_load_mib=status("VmRSS"), peak_before_extracting_mib=status("VmHWM"))
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM starts again from here (Linux >= 4.0)
        f.write("5")
    return model
model_loading.load_model = load_paged_in

t = time.perf_counter()
extract_features({texts!r}, out={out!r}, model={model!r}, layers={layers!r}, batch_size={batch_size},
                 dtype={dtype!r}, device={device!r}, with_id=True, progress=False, overwrite=True)
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_extracting_mib": status("VmHWM"), **before}}))
"""


def memory_prompts(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[str]:
    """n one-line prompts of uniformly lo..hi tokens: windows of the local text's token stream.

    The lengths are bounded on purpose: the largest batch (batch size x longest prompt) sets the working
    memory, and with an unbounded tail a larger sample holds longer outliers, so its peak would follow
    its longest prompt, not its number of prompts.
    """
    stream = tokenizer(" ".join(local_documents()), add_special_tokens=False)["input_ids"]
    rng, texts = random.Random(seed), []
    while len(texts) < n:
        k = rng.randint(lo, hi)
        start = rng.randrange(0, len(stream) - k)
        text = tokenizer.decode(stream[start:start + k]).strip()
        if text and len(text.splitlines()) == 1 and len(tokenizer(text)["input_ids"]) <= hi:
            texts.append(text)
    return texts


def bench_memory(sizes, model, tokenizer, workdir: Path, batch_size, dtype, device, threads, seed, repeats) -> dict:
    """Peak RSS of whole extract_features runs on a text file of n short prompts; sizes interleaved run
    after run (identical runs differ by a few MiB, and a drift then hits every size alike)."""
    print(f"memory runs {list(sizes)} x {repeats} (layers {MEMORY_LAYERS}, short prompts) ...", flush=True)
    texts = memory_prompts(tokenizer, max(sizes), *MEMORY_TOKENS, seed)
    runs = {n: [] for n in sizes}
    for n in [n for _ in range(repeats) for n in sizes]:
        path = workdir / f"memory_{n}.txt"
        path.write_text("\n".join(texts[:n]) + "\n")
        code = MEMORY_CHILD.format(repo=str(REPO), threads=threads or torch.get_num_threads(), texts=str(path),
                                   out=str(workdir / f"memory_{n}.parquet"), model=model, layers=MEMORY_LAYERS,
                                   batch_size=batch_size, dtype=dtype, device=device)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, TQDM_DISABLE="1"))
        if proc.returncode != 0:
            raise RuntimeError(f"the {n}-prompt memory run failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["peak_mib"] = max(run["peak_extracting_mib"], run["peak_before_extracting_mib"])  # the whole run's
        runs[n].append(run)
    rows = []
    for n, done in runs.items():
        done.sort(key=lambda r: r["peak_mib"])
        rows.append({"prompts": n, **done[len(done) // 2], "peaks_mib": [r["peak_mib"] for r in done]})
    return {"layers": MEMORY_LAYERS, "prompt_tokens": "%d-%d" % MEMORY_TOKENS, "repeats": repeats, "runs": rows,
            "ratio": rows[-1]["peak_mib"] / rows[0]["peak_mib"]}


# -- the run ---------------------------------------------------------------------------------------
def make_tiny_model(folder: Path) -> Path:
    """A 4-layer random Llama with a word-level tokenizer of local words: --tiny needs no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return folder
    counts: dict[str, int] = {}
    for word in " ".join(local_documents()).split():
        counts[word] = counts.get(word, 0) + 1
    vocab = ["<pad>", "<unk>", "<s>"] + sorted(counts, key=lambda w: -counts[w])[:1000]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>")
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=2, eos_token_id=2)
    partial = folder.with_name(folder.name + ".partial")
    LlamaForCausalLM(config).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, folder)
    return folder


def machine_info(device: str) -> dict:
    import transformers
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def judge(key: str, measured, device: str, n_layers: int, note: str = "") -> dict:
    name, op, threshold = TARGETS[key]
    if threshold is None:  # first k layers: their share of the layers plus 10 points
        threshold, note = FIRST_LAYERS / n_layers + 0.10, f"{FIRST_LAYERS}/L + 0.10, L = {n_layers}"
    ok = None if measured is None else (measured <= threshold if op == "<=" else measured >= threshold)
    if key.startswith(("ours_vs_bare", "ours_vs_body")) and device.startswith("cuda"):
        ok, note = None, "set for the CPU: shown, not judged"
    return {"key": key, "target": name, "measured": measured, "op": op, "threshold": threshold, "pass": ok,
            "note": note}


def run(args, workdir: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from model_loading import load_model, load_tokenizer, resolve_dtype, resolve_model

    device = args.device
    dtype = resolve_dtype(args.dtype, device)
    source, extra = resolve_model(args.model)
    tokenizer = load_tokenizer(args.model, "right")
    prompts, origin = make_prompts(tokenizer, args.n_prompts, args.min_tokens, args.max_tokens, args.seed,
                                   datasets=not args.tiny)
    batches, lengths = make_batches(tokenizer, prompts, args.batch_size)
    print(f"{len(prompts)} prompts from {origin}: {int(lengths.sum())} tokens, lengths {lengths.min()}-"
          f"{lengths.max()}, {len(batches)} batches of {args.batch_size}", flush=True)

    def stock(**kw):
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra, **kw).to(device).eval()

    ours_model, bare_model = load_model(args.model, dtype=dtype, device=device), stock()
    n_layers = ours_model.spline_recorder.n_layers
    first = list(range(min(FIRST_LAYERS, n_layers)))
    contenders = {"bare": Bare(bare_model, device), "body": Body(bare_model, device),
                  "ours_all_id": Ours(ours_model, None, True, prompts), "ours_all": Ours(ours_model, None, False, prompts),
                  "ours_first_id": Ours(ours_model, first, True, prompts),
                  "ours_first": Ours(ours_model, first, False, prompts),
                  "paper_id": Paper(stock(attn_implementation="eager"), device, True, prompts),
                  "paper": Paper(stock(), device, False, prompts)}
    skipped, nnsight_version = {}, None
    if args.skip_nnsight:
        skipped["nnsight"] = "--skip-nnsight"
    else:
        worker = NNsightProcess(source, extra, batches, device, dtype, args.threads, workdir)
        if worker.error:
            skipped["nnsight"] = worker.error
        else:
            contenders["nnsight"], nnsight_version = worker, worker.version
    print(f"timing {list(contenders)} on {device} ({str(dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads), {args.repeats} repeats", flush=True)
    load_before = os.getloadavg()
    began = time.perf_counter()
    times, outputs = time_extraction(contenders, batches, args.repeats, device, workdir, not args.tiny)
    wall = time.perf_counter() - began
    if "nnsight" in contenders:
        outputs["nnsight"] = contenders["nnsight"].features([r for b in batches for r in b["rows"]])
        contenders["nnsight"].close()
    for c in contenders.values():
        if isinstance(c, Paper):
            c.traces.close()

    def rel(a, b):  # per-repeat ratio of times, median over repeats (a noisy neighbour hits both alike)
        return statistics.median(x / y for x, y in zip(times[a], times[b])) if a in times and b in times else None

    # Every method computes the same features as ours (all prompts have >= 2 tokens: the std is defined).
    refs = {"paper": "ours_all", "paper_id": "ours_all_id", "nnsight": "ours_all"}
    agreement = {n: float(np.abs(outputs[n] - outputs[r]).max()) for n, r in refs.items() if n in outputs}
    id_agreement = float((contenders["ours_all_id"].ids_by_row == contenders["paper_id"].ids_by_row).mean())
    methods = {}
    for name, (label, layer_set, with_id) in METHODS.items():
        if name in skipped:
            methods[name] = {"label": label, "skipped": skipped[name]}
            continue
        med = statistics.median(times[name])
        methods[name] = {"label": label, "layers": n_layers if layer_set == "all" else len(first),
                         "with_id": with_id, "seconds": times[name], "median_s": med,
                         "prompts_per_s": len(prompts) / med, "ratio_to_bare": rel(name, "bare"),
                         "max_abs_diff_vs_ours": agreement.get(name)}

    print("generation ...", flush=True)
    generation = bench_generation(bare_model, load_tokenizer(args.model, "left"), prompts, device, args.repeats)
    print(f"loading {args.load_rows} rows ...", flush=True)
    loading = bench_loading(contenders["ours_all_id"].out, contenders["paper_id"].path, args.load_rows, workdir,
                            1 if args.tiny else LOAD_REPEATS)
    del contenders, ours_model, bare_model
    gc.collect()
    memory = None if args.skip_memory else bench_memory(
        args.memory_runs, args.model, tokenizer, workdir, args.batch_size, args.dtype, device, args.threads,
        args.seed, args.memory_repeats)

    targets = [judge("ours_vs_bare_id", rel("ours_all_id", "bare"), device, n_layers),
               judge("ours_vs_bare", rel("ours_all", "bare"), device, n_layers),
               judge("ours_vs_body_id", rel("ours_all_id", "body"), device, n_layers),
               judge("ours_vs_body", rel("ours_all", "body"), device, n_layers),
               judge("paper_vs_ours_id", rel("paper_id", "ours_all_id"), device, n_layers),
               judge("paper_vs_ours", rel("paper", "ours_all"), device, n_layers),
               judge("first_vs_all_id", rel("ours_first_id", "ours_all_id"), device, n_layers),
               judge("first_vs_all", rel("ours_first", "ours_all"), device, n_layers),
               judge("load_vs_literal_eval", loading["speedup_vs_literal_eval"], device, n_layers,
                     f"{loading['rows']} rows"),
               judge("load_vs_json", loading["speedup_vs_json"], device, n_layers, f"{loading['rows']} rows"),
               judge("nnsight_vs_ours", rel("nnsight", "ours_all"), device, n_layers, skipped.get("nnsight", ""))]
    if device.startswith("cuda"):
        targets.append(judge("paper_vs_ours_id_gpu", rel("paper_id", "ours_all_id"), device, n_layers))
    if memory:
        small, large = args.memory_runs
        targets.append(judge("memory", memory["ratio"], device, n_layers, f"medians of {args.memory_repeats}"))
        targets[-1]["target"] = f"peak RSS, {large:,} / {small:,} prompts"
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(device),
            "settings": {"model": args.model, "dtype": str(dtype).removeprefix("torch."), "device": device,
                         "n_prompts": len(prompts), "prompts": origin, "batch_size": args.batch_size,
                         "n_batches": len(batches), "repeats": args.repeats, "n_layers": n_layers,
                         "tokens": int(lengths.sum()), "padded_tokens": int(sum(b["ids"].numel() for b in batches)),
                         "token_lengths": [int(lengths.min()), float(np.median(lengths)), int(lengths.max())],
                         "tiny": args.tiny, "nnsight": nnsight_version,
                         "timed_wall_s": wall, "load_average_before": load_before[0],
                         "load_average_after": os.getloadavg()[0], "id_agreement_paper_vs_ours": id_agreement},
            "methods": methods, "generation": generation, "loading": loading, "memory": memory, "targets": targets,
            "all_pass": all(t["pass"] is not False for t in targets)}


# -- report ----------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    lo, med, hi = s["token_lengths"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m['torch']} ({m['torch_threads']} "
             f"threads), transformers {m['transformers']}, Python {m['python']}; run {res['created']}; load average "
             f"(1 min) {s['load_average_before']:.2f} before the timed sweeps, {s['load_average_after']:.2f} after.",
             "",
             f"Extraction: model {s['model']} ({s['n_layers']} layers, {s['dtype']}, {s['device']}); {s['n_prompts']} "
             f"prompts from {s['prompts']}, {s['tokens']} tokens ({s['padded_tokens']} with padding), {lo}-{hi} "
             f"each (median {med:.0f}); {s['n_batches']} length-sorted batches of {s['batch_size']} (the paper's "
             f"approach: the same prompts one at a time); median of {s['repeats']} repeats, methods interleaved "
             f"batch by batch. IDs equal to the paper's approach's for {100 * s['id_agreement_paper_vs_ours']:.1f}% "
             "of (prompt, layer) pairs.", "",
             "| method | prompts/s | time (s) | time / bare forward | max abs diff vs ours |",
             "|---|---:|---:|---:|---:|"]
    for r in res["methods"].values():
        if "skipped" in r:
            lines.append(f"| {r['label']} | not run: {r['skipped']} | | | |")
            continue
        diff = "-" if r["max_abs_diff_vs_ours"] is None else f"{r['max_abs_diff_vs_ours']:.1e}"
        lines.append(f"| {r['label']} | {r['prompts_per_s']:.2f} | {r['median_s']:.2f} | {r['ratio_to_bare']:.3f} | "
                     f"{diff} |")
    g = res["generation"]
    lines += ["", f"Generation: `model.generate` on {g['prompts']} prompts (at most {g['prompt_tokens']} tokens, "
              f"left-padded batches of {g['batch_size']}), {g['new_tokens']} new tokens each, greedy, KV cache; "
              f"median of {g['repeats']} repeats, conditions interleaved batch by batch. SEA: `sea.fit` on the first "
              f"batch's last-token states (energy {g['sea_energy']}), layers {g['sea_layers']} edited with "
              f"`edit.apply(model)`; SelfIE: `generate_interpret` writing a middle layer's states into layer 1's "
              f"input at {g['selfie_positions']} positions of each prompt, on the prefill.", "",
              "| condition | time (s) | time / unedited | new tokens that differ from unedited |", "|---|---:|---:|---:|"]
    labels = {"unedited": "unedited model", "sea": "SEA spectral edit (sea.py)",
              "selfie": "SelfIE insertion (self_interpret.py)"}
    for name, r in g["conditions"].items():
        lines.append(f"| {labels[name]} | {r['median_s']:.2f} | {r['ratio_to_unedited']:.3f} | "
                     f"{100 * r['tokens_changed']:.0f}% |")
    ld = res["loading"]
    lines += ["", f"Loading {ld['rows']} rows of features (all layers + ID), {ld['repeats']} repeats with the readers "
              "in turn (ours: the median of several loads per repeat); medians of the times and of the per-repeat "
              "speed-ups:", "",
              "| reader | seconds | file (MiB) | our speed-up |", "|---|---:|---:|---:|",
              f"| ours: `feature_io.load_features` (parquet) | {ld['ours_s']:.4f} | {ld['parquet_mib']:.2f} | 1 |",
              f"| paper-style CSV, `json.loads` per cell | {ld['csv_json_s']:.4f} | {ld['csv_mib']:.2f} | "
              f"{ld['speedup_vs_json']:.0f}x |",
              f"| paper-style CSV, `ast.literal_eval` per cell | {ld['csv_literal_eval_s']:.4f} | {ld['csv_mib']:.2f} "
              f"| {ld['speedup_vs_literal_eval']:.0f}x |"]
    mem = res["memory"]
    if mem:
        lines += ["", f"Memory: whole `extract_features` runs on a text file, each in a fresh process (layer "
                  f"{mem['layers']} only, prompts of {mem['prompt_tokens']} tokens; the model read in full before "
                  f"extracting); median of {mem['repeats']} runs of each size:", "",
                  "| prompts | run's peak RSS (MiB) | before extracting (reading, tokenising, loading) | "
                  "while extracting | RSS after loading | seconds (whole run) | every run's peak |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for r in mem["runs"]:
            lines.append(f"| {r['prompts']} | {r['peak_mib']:.1f} | {r['peak_before_extracting_mib']:.1f} | "
                         f"{r['peak_extracting_mib']:.1f} | {r['rss_after_load_mib']:.1f} | {r['seconds']:.1f} | "
                         + ", ".join(f"{x:.1f}" for x in r["peaks_mib"]) + " |")
    lines += ["", "| target | measured | required | result |", "|---|---:|---:|---|"]
    for t in res["targets"]:
        verdict = {None: "n/a", True: "PASS", False: "FAIL"}[t["pass"]]
        measured = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {measured} | {t['op']} {t['threshold']:.3g} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, stem: str, res: dict, table: str) -> None:
    """``stem``.json and ``stem``.md in ``out_dir``, each written to a side file and renamed (never half a file)."""
    for name, text in ((stem + ".json", json.dumps(res, indent=1)), (stem + ".md", table)):
        partial = out_dir / (name + ".partial")
        partial.write_text(text)
        os.replace(partial, out_dir / name)


def update_readme(table: str, path: Path = README, gpu: bool = False) -> None:
    """Replace the text between the README's markers: <!-- bench:begin/end --> (CPU) or bench-gpu."""
    from analysis.report import paste_between_markers
    paste_between_markers(path, "bench-gpu" if gpu else "bench", table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--n-prompts", type=positive_int, default=N_PROMPTS)
    p.add_argument("--min-tokens", type=positive_int, default=MIN_TOKENS)
    p.add_argument("--max-tokens", type=positive_int, default=MAX_TOKENS)
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--repeats", type=positive_int, default=REPEATS)
    p.add_argument("--device", default=DEVICE, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default=DTYPE, choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=non_negative_int, default=THREADS, help="torch threads (0: torch's default)")
    p.add_argument("--load-rows", type=positive_int, default=LOAD_ROWS)
    p.add_argument("--memory-runs", type=positive_int, nargs=2, default=MEMORY_RUNS, metavar=("SMALL", "LARGE"))
    p.add_argument("--memory-repeats", type=positive_int, default=MEMORY_REPEATS, help="runs of each size")
    p.add_argument("--skip-memory", action="store_true", help="skip the 1,000 vs 20,000-prompt memory runs")
    p.add_argument("--skip-nnsight", action="store_true")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--tiny", action="store_true", help="CI smoke mode: a random 4-layer Llama (unless --model), "
                   "8 short prompts, 1 repeat, 200 rows to load, memory runs of 20 and 40 prompts")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="latest.json and latest.md go here")
    p.add_argument("--section", type=Path, default=None, metavar="DIR",
                   help="also write the tables as RESULTS.md's section, DIR/results/bench.md (reproduce.py)")
    p.add_argument("--update-readme", action="store_true", help="rewrite the table section of bench/README.md")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    small, large = args.memory_runs
    if small >= large:
        raise UserError(f"--memory-runs {small} {large}: SMALL must be below LARGE, e.g. --memory-runs 1000 20000")
    if args.min_tokens > args.max_tokens:
        raise UserError(f"--min-tokens {args.min_tokens} is above --max-tokens {args.max_tokens}: swap them")
    if args.tiny and args.update_readme:
        raise UserError("--tiny numbers say nothing about speed: drop --update-readme, or run without --tiny")
    from model_loading import check_device, default_device
    args.device = check_device(args.device) or default_device()  # refused by name before any model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.n_prompts, args.min_tokens, args.max_tokens, args.batch_size = 8, 4, 24, 3
        args.repeats, args.load_rows, args.memory_runs, args.memory_repeats = 1, 200, (20, 40), 1
        if args.model == MODEL:
            args.model = str(make_tiny_model(args.out_dir / "tiny-llama"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with output_lock(args.out_dir, "the benchmark's results folder " + str(args.out_dir)):
        with tempfile.TemporaryDirectory(prefix="work-", dir=args.out_dir) as workdir:
            res = run(args, Path(workdir))
        table = markdown(res)
        write_results(args.out_dir, "latest", res, table)
    print(table)
    print(f"wrote {args.out_dir / 'latest.json'} and latest.md; every target passed: {res['all_pass']}")
    if args.section:
        from analysis.report import write_section
        note = "(`--tiny`: a random 4-layer model; this checks that the benchmark runs, its numbers mean nothing)\n\n"
        print("wrote", write_section(args.section, "bench", "## Extraction benchmark (bench/bench_extraction.py)\n\n"
                                     + (note if args.tiny else "") + table))
    if args.update_readme:
        update_readme(table, gpu=args.device.startswith("cuda"))
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "bench_extraction.py"))
