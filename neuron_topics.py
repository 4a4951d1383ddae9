"""Neurons as superposed topics (Lim and Lauw, EMNLP 2023): what the MLP units whose hyperplanes the spline
features count push towards in the vocabulary, as coherent 10-word topics, against controls.

    python neuron_topics.py                              # the main job's sample (LAYERS x NEURONS, MODE)
    python neuron_topics.py --full --update-readme       # all four modes at size, tables pasted into README.md
    python neuron_topics.py --mode lo-c,lo-i --layers 0-3 --neurons 16 --workers 2
    python neuron_topics.py --export topics_export       # also the authors' file layout (their read_topics reads it)

The machinery (modes, pools, co-occurrence, NPMI, stars, exact selection, the cache, parallel pools) is
topics.py; this script chooses the neurons, runs the controls (random token pools of the same cut; the model
with every down-projection column's entries shuffled), links the topics to the spline features (gate units
ranked by how differently often they fire on toxic and clean prompts) and writes tables, a figure and JSON.
Every pool is cached under $SPLINE_CACHE/topics/runs-<hash of corpus and settings>/<model>-<fingerprint>/
{mode}/{layer}_{id}_{polarity}: _pool.csv, _isets.csv, _topics.csv; a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import topics as tp
from cli import (ArgumentParser, UserError, non_negative_int, output_lock, parse_layer_spec, positive_float, positive_int,
                 run_main)
from hooks import StopForward, TraceDict, decoder_layers

log = logging.getLogger("neuron_topics")

# -- settings (each is a flag too) --------------------------------------------------------------------
MODEL = "smollm2-135m"
LAYERS = "4,14,24"        # early, middle, late of SmolLM2's 30 (the main job's sample)
NEURONS = 8               # per layer, a seeded sample of units (Hi modes) or residual dims (Lo modes); "all"
MODE = "hi-c,hi-i"        # any of hi-c, hi-i, lo-c, lo-i (or "all")
# Star heuristic: edges with NPMI in [theta_l, theta_u]; groups of kappa_l..kappa_u words: the authors' GPT-2
# notebook (0.1, 1), (10, 24) (their code's defaults are (0, 1), (10, 32); their LLaMA notebook (0.025, 1), (10, 32)).
THETA = (0.1, 1.0)
KAPPA = (10, 24)
TIME_LIMIT = 2.0          # seconds per exact selection (the authors: 120-180 s; --time-limit); status recorded
CORPUS = tp.CORPUS
MIN_FREQ = tp.MIN_FREQ    # word floor and pair floor (the authors' one min_freq: 100 on all of Wikipedia)
# Superposition: >= 2 disjoint topics in a positive pool, counted twice: any topic, and topics of mean NPMI >= this.
SUPERPOSED_NPMI = 0.1
LINK_PROMPTS = 100        # toxic and as many clean prompts for the link to the spline features
LINK_MAX_LENGTH = 32      # tokens per prompt there (the forward pass up to the deepest layer is the cost)
LINK_TOP = 4              # top units per layer (and as many random units) whose topics are shown
BATCH_SIZE = 64           # neurons pushed through the model at once
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# CPU seconds one pool takes to solve (NPMI, stars, SCIP), measured on the project's 2-core AMD machine
# (see README): the expected time printed before a sweep is pools x this / workers.
POOL_CPU_S = 0.3
SEED = 0
OUT_DIR = "."             # tables/, figures/, results/ (gitignored) under it
QUICK = dict(LAYERS="14", NEURONS=4, LINK_PROMPTS=24, LINK_TOP=2, TIME_LIMIT=1.0)
# --full: all four modes, 32 units per layer on 6 layers spread over the depth, both polarities, the controls
# on every mode, 8 top and 8 random gate units per layer for the link.
FULL = dict(LAYERS="2,7,12,17,22,27", NEURONS=32, MODE="all", LINK_TOP=8, CONTROLS="all")
README = Path(__file__).resolve().parent / "README.md"
README_TAG = "topics"


# == which neurons, and their pools ==================================================================
def plan_pools(model, wp, root, model_name, mode, layer, ids, settings: tp.Settings, batch_size: int,
               random_pools: bool = False) -> list:
    """Jobs (stem, words, cut) for the pools of neurons `ids` not yet in the cache: the logits are pushed
    through the model here (one batch at a time), the solving is topics.solve_pools'. With `random_pools`,
    a seeded random order of the tokens cut where the real neuron's pool was cut (the control)."""
    todo = [n for n in ids if not all(tp.pool_done(tp.out_stem(root, model_name, mode, layer, n, pol))
                                      for pol in tp.POLARITIES)]
    jobs = []
    for lo in range(0, len(todo), batch_size):
        chunk = todo[lo:lo + batch_size]
        logits = tp.mode_logits(model, mode, layer, chunk)
        for polarity, sign in zip(tp.POLARITIES, (1.0, -1.0)):
            pools = tp.pools_from_ranks(tp.word_ranks(sign * logits, wp), settings.tau, settings.shrink)
            if random_pools:
                pools = tp.random_pools(logits.shape[1], wp, [cut for _, cut in pools], layer, chunk, polarity,
                                        settings.seed)
            for neuron, (members, cut) in zip(chunk, pools):
                jobs.append((tp.out_stem(root, model_name, mode, layer, neuron, polarity),
                             [wp.words[i] for i in members], cut))
    return jobs


def summary_frame(root, model_name, mode, layer, ids) -> pd.DataFrame:
    return pd.DataFrame([_summary_row(mode, layer, n, pol, tp.out_stem(root, model_name, mode, layer, n, pol))
                         for n in ids for pol in tp.POLARITIES])


def _summary_row(mode, layer, neuron, polarity, stem) -> dict:
    found = pd.read_csv(f"{stem}_topics.csv")
    pool = pd.read_csv(f"{stem}_pool.csv")
    return {"mode": mode, "layer": layer, "neuron": int(neuron), "polarity": polarity, "pool_size": len(pool),
            "topics": len(found), "scores": found["score"].tolist(), "status": found["status"].tolist(),
            "best_topic": found.sort_values("score", ascending=False)["words"].iloc[0] if len(found) else ""}


# == link to the spline features ====================================================================
@torch.no_grad()
def gate_frequencies(model, tokenizer, texts, layers, batch_size=16, max_length=LINK_MAX_LENGTH) -> dict:
    """{layer: [N, D]} how often each gate unit is on the positive side over each prompt's real tokens:
    spline_stats.unit_activation_frequency on the gate outputs read through hooks.TraceDict."""
    from instrument import find_gate
    from spline_stats import unit_activation_frequency
    stack = decoder_layers(model)
    gates = [find_gate(stack[l], l) for l in layers]
    names = {}
    out = {l: [] for l in layers}
    state = {}

    def record(h, name):
        out[names[name]].append(unit_activation_frequency(h, state["mask"]).cpu())

    device = model.get_output_embeddings().weight.device
    with TraceDict(model, gates, retain_output=False, edit_output=record, stop=True) as traces:
        for (name, _), layer in zip(traces.items(), layers):
            names[name] = layer
        for lo in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[lo:lo + batch_size]), return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length).to(device)
            state["mask"] = batch["attention_mask"].bool()
            try:
                model(**batch, use_cache=False)
            except StopForward:   # the deepest gate has run: the rest of the model is skipped
                pass
    return {l: torch.cat(v).numpy() for l, v in out.items()}


def link_prompts(n: int, seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """n toxic (rtp, slurs: half each) and n clean (comments, questions) prompts of the embedded datasets."""
    from data import load_dataset
    texts, labels = [], []
    for names, label in ((("rtp", "slurs"), 1), (("comments", "questions"), 0)):
        for i, name in enumerate(names):
            k = n // 2 + (n % 2 if i == 0 else 0)
            texts += load_dataset(name, limit=k, seed=seed)["text"].tolist()
            labels += [label] * k
    return texts, np.array(labels)


def link_units(model, tokenizer, layers, n_prompts, top) -> dict:
    """Per layer: the `top` gate units whose on-rate differs most between toxic and clean prompts, and as
    many other units drawn at random (seeded)."""
    texts, labels = link_prompts(n_prompts)
    order = np.argsort([len(t) for t in texts], kind="stable")   # similar lengths share a batch: less padding
    texts, labels = [texts[i] for i in order], labels[order]
    freq = gate_frequencies(model, tokenizer, texts, layers)
    rng = np.random.default_rng(SEED)
    units = {}
    for layer in layers:
        f = freq[layer]
        diff = f[labels == 1].mean(0) - f[labels == 0].mean(0)
        order = np.argsort(-np.abs(diff), kind="stable")
        rest = order[top:]
        units[layer] = {"top": sorted(order[:top].tolist()),
                        "random": sorted(rng.choice(rest, size=min(top, len(rest)), replace=False).tolist()),
                        "toxic": f[labels == 1].mean(0), "clean": f[labels == 0].mean(0), "diff": diff}
    return {"units": units, "n_toxic": int(labels.sum()), "n_clean": int((labels == 0).sum())}


def link_rows(link, root, model_name, mode) -> dict:
    rows, frames = [], {"top": [], "random": []}
    for layer, u in link["units"].items():
        for group in ("top", "random"):
            frame = summary_frame(root, model_name, mode, layer, u[group])
            frames[group].append(frame)
            for unit in u[group]:
                pos = frame[(frame["neuron"] == unit) & (frame["polarity"] == "pos")].iloc[0]
                rows.append({"layer": layer, "unit": unit, "group": group, "freq_toxic": float(u["toxic"][unit]),
                             "freq_clean": float(u["clean"][unit]), "diff": float(u["diff"][unit]),
                             "topics": int(pos["topics"]), "best_score": max(pos["scores"], default=float("nan")),
                             "best_topic": pos["best_topic"]})
    return {"units": rows, "mode": mode, "n_toxic": link["n_toxic"], "n_clean": link["n_clean"],
            "top": pd.concat(frames["top"], ignore_index=True), "random": pd.concat(frames["random"], ignore_index=True)}


# == evaluation, tables, figure ======================================================================
def summarize(frame: pd.DataFrame, threshold: float) -> dict:
    scores = [s for row in frame["scores"] for s in row]
    pos = frame[frame["polarity"] == "pos"]
    superposed = pos["scores"].map(lambda s: sum(x >= threshold for x in s) >= 2)
    several = pos["scores"].map(lambda s: len(s) >= 2)
    status = Counter(s for row in frame["status"] for s in row)
    return {"pools": len(frame), "neurons": int(frame[["layer", "neuron"]].drop_duplicates().shape[0]),
            "mean_pool_size": float(frame["pool_size"].mean()) if len(frame) else float("nan"),
            "topics_per_pool": float(frame["topics"].mean()) if len(frame) else float("nan"),
            "mean_topic_npmi": float(np.mean(scores)) if scores else float("nan"), "n_topics": len(scores),
            "superposed_share": float(superposed.mean()) if len(pos) else float("nan"),
            "several_topics_share": float(several.mean()) if len(pos) else float("nan"),
            "solver_status": dict(status)}


def superposition_figure(results: dict, layers, threshold, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    conditions = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    width = 0.8 / max(len(conditions), 1)
    for ax, bar, title in ((axes[0], -np.inf, ">= 2 topics"), (axes[1], threshold, f">= 2 topics of NPMI >= {threshold}")):
        for k, cond in enumerate(conditions):
            frame = results[cond]
            shares = []
            for layer in layers:
                pos = frame[(frame["layer"] == layer) & (frame["polarity"] == "pos")]
                shares.append(pos["scores"].map(lambda s: sum(x >= bar for x in s) >= 2).mean() if len(pos) else 0)
            ax.bar(np.arange(len(layers)) + k * width, shares, width, label=cond)
        ax.set_xticks(np.arange(len(layers)) + width * (len(conditions) - 1) / 2, [str(l) for l in layers])
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("share of neurons (positive pool)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def corpus_size(meta) -> str:
    return f"{meta['n_tokens'] / 1e6:.2f}M words, {meta['n_windows'] / 1e6:.2f}M windows"


def build_tables(slug, modes, layers, results, link, meta, settings: tp.Settings, neurons, timings, workers):
    from analysis.report import Table, num, pct
    thr = SUPERPOSED_NPMI
    size = corpus_size(meta)
    sources = ", ".join(f"{k} ({v['documents']:,} docs, {v['words']:,} words)" for k, v in meta["sources"].items())
    rows, summary = [], {}
    for cond, frame in results.items():
        for mode in modes:
            part = frame[frame["mode"] == mode]
            if not len(part):
                continue
            s = summarize(part, thr)
            summary[f"{cond}/{mode}"] = s
            rows.append([mode, cond, str(s["neurons"]), str(s["pools"]), num(s["mean_pool_size"], "{:.0f}"),
                         num(s["topics_per_pool"], "{:.2f}"), num(s["mean_topic_npmi"], "{:.3f}"), str(s["n_topics"]),
                         pct(s["several_topics_share"], digits=0), pct(s["superposed_share"], digits=0),
                         ", ".join(f"{k} {v}" for k, v in sorted(s["solver_status"].items())) or "-"])
    floor = meta["min_freq"] if settings.pair_floor is None else settings.pair_floor
    notes = [f"Model {slug}; layers {layers}; neurons per layer: {neurons} (seeded); pools of at most {settings.tau} "
             f"words (both polarities); star heuristic theta={tuple(settings.theta)}, kappa={tuple(settings.kappa)}; "
             f"exact {settings.topic_size}-word topics by SCIP, {settings.time_limit} s limit each (solver status "
             "counts in the last column).",
             f"NPMI on a reference corpus of {size}: boolean sliding windows of {meta['window']} words over {sources}; "
             f"vocabulary {len(meta['vocab']):,} words (at least {meta['min_freq']} occurrences); pair floor "
             f"{floor} windows{', smoothing epsilon 1e-12' if settings.smooth else ', no smoothing (-1)'}; "
             f"{'rejected stars free their words' if settings.free_rejected else 'a rejected star keeps its words'}.",
             "Controls: random token pools cut like the real neuron's; the model with each down-projection column's "
             "entries permuted.",
             f"Superposition: share of neurons whose positive pool holds >= 2 (disjoint) topics, of any score and of "
             f"mean NPMI >= {thr}."]
    table = Table("neuron_topics", f"Neuron topics: real neurons against controls (NPMI on {size})",
                  ["mode", "condition", "neurons", "pools", "pool size", "topics / pool", "topic NPMI",
                   "topics", ">= 2 topics %", f">= 2 NPMI>={thr} %", "solver status"], rows, notes)
    tables = [table]
    data = {"summary": summary, "timings": timings, "corpus": meta["sources"], "corpus_words": meta["n_tokens"],
            "corpus_windows": meta["n_windows"], "vocab": len(meta["vocab"]), "layers": layers, "modes": modes,
            "settings": settings.key(), "workers": workers, "model": slug}
    if link is not None:
        lrows = [[str(r["layer"]), str(r["unit"]), r["group"], num(r["freq_toxic"], "{:.3f}"), num(r["freq_clean"], "{:.3f}"),
                  num(r["diff"], "{:+.3f}"), str(r["topics"]), num(r["best_score"], "{:.3f}"),
                  " ".join(str(r["best_topic"]).split()[:settings.topic_size]) or "-"] for r in link["units"]]
        s_top, s_rand = summarize(link["top"], thr), summarize(link["random"], thr)
        tables.append(Table(
            "neuron_topics_link", f"Gate units that separate toxic from clean prompts, and their topics (NPMI on {size})",
            ["layer", "unit", "units", "on-rate toxic", "on-rate clean", "difference", "topics",
             "best NPMI", "best topic (positive pool)"], lrows,
            [f"On-rate: share of a prompt's tokens on the positive side of the unit's hyperplane "
             f"(spline_stats.unit_activation_frequency through hooks.TraceDict on the gates), averaged over "
             f"{link['n_toxic']} toxic (rtp, slurs) and {link['n_clean']} clean (comments, questions) prompts "
             f"of at most {LINK_MAX_LENGTH} tokens. 'top': the units with the largest |difference| per layer; "
             f"'random': as many other units, seeded. Mode {link['mode']}.",
             f"Top units: {num(s_top['topics_per_pool'], '{:.2f}')} topics per pool, mean topic NPMI "
             f"{num(s_top['mean_topic_npmi'], '{:.3f}')} ({s_top['n_topics']} topics); random units: "
             f"{num(s_rand['topics_per_pool'], '{:.2f}')}, {num(s_rand['mean_topic_npmi'], '{:.3f}')} "
             f"({s_rand['n_topics']} topics); corpus {size}."]))
        data["link"] = {"units": link["units"], "top": s_top, "random": s_rand}
    return tables, data


def report(out_dir, slug, modes, layers, results, link, meta, settings, neurons, timings, workers) -> dict:
    from analysis.report import write_json, write_section
    tables, data = build_tables(slug, modes, layers, results, link, meta, settings, neurons, timings, workers)
    for table in tables:
        table.write(out_dir)
    fig_path = out_dir / "figures" / "neuron_topics_superposition.png"
    superposition_figure({k: v[v["mode"] == modes[0]] for k, v in results.items()}, layers, SUPERPOSED_NPMI, fig_path)
    md = ["## Neurons as superposed topics (Lim and Lauw 2023)", "",
          "Each gate unit of the MLP (one hyperplane of the spline partition) explained by the words its down-projection "
          "column promotes, grouped into coherent 10-word topics (NPMI on offline Wikipedia text and the project's "
          f"corpora, {corpus_size(meta)}). `python neuron_topics.py`; the full size is `--full`.", ""]
    md += [t.markdown() for t in tables[:1]] + [f"![superposition per layer](figures/{fig_path.name})", ""]
    md += [t.markdown() for t in tables[1:]]
    md += [f"Run time: {timings['total_s']:.0f} s wall, {timings['cpu_s']:.0f} s CPU with its {workers} worker(s) "
           f"({timings['pools']} pools solved, {timings['pools_per_s']:.2f} pools/s)."]
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results" / "neuron_topics.json", data)
    write_section(out_dir, "neuron_topics", "\n".join(md))
    return data


def readme_block(data: dict, command: str) -> str:
    """The README's generated section, from a run's JSON (results/neuron_topics.json)."""
    from analysis.report import num, pct
    t = data["timings"]
    lines = [f"Generated by `{command}` on {data['date']} at commit {data['commit']}, on {data['machine']}; "
             f"{t['total_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU (workers included), "
             f"{t['pools']} pools solved with {data['workers']} workers. Model {data['model']}, layers "
             f"{data['layers']}; NPMI on {data['corpus_words'] / 1e6:.2f}M words ({data['corpus_windows'] / 1e6:.2f}M "
             f"windows, vocabulary {data['vocab']:,}).", "",
             "| mode | condition | neurons | pools | pool size | topics / pool | topic NPMI | topics | >= 2 topics | "
             f">= 2 of NPMI >= {SUPERPOSED_NPMI} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, s in data["summary"].items():
        cond, mode = key.rsplit("/", 1)
        lines.append(f"| {mode} | {cond} | {s['neurons']} | {s['pools']} | {num(s['mean_pool_size'], '{:.0f}')} | "
                     f"{num(s['topics_per_pool'], '{:.2f}')} | {num(s['mean_topic_npmi'], '{:.3f}')} | {s['n_topics']} | "
                     f"{pct(s['several_topics_share'], digits=0)} | {pct(s['superposed_share'], digits=0)} |")
    if "link" in data:
        lk = data["link"]
        lines += ["", "Gate units that separate toxic from clean prompts (top |on-rate difference| per layer) against "
                  "random units, positive and negative pools:", "",
                  "| units | pools | topics / pool | topic NPMI | topics | >= 2 topics |", "|---|---:|---:|---:|---:|---:|"]
        for group in ("top", "random"):
            s = lk[group]
            lines.append(f"| {group} | {s['pools']} | {num(s['topics_per_pool'], '{:.2f}')} | "
                         f"{num(s['mean_topic_npmi'], '{:.3f}')} | {s['n_topics']} | {pct(s['several_topics_share'], digits=0)} |")
    return "\n".join(lines) + "\n"


def provenance() -> dict:
    from analysis.report import cpu_name, git_commit
    commit, cpu = git_commit(), cpu_name()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "machine": f"{cpu}, {os.cpu_count()} cores"}


# == command line =====================================================================================
def neurons_spec(text: str):
    if text == "all":
        return text
    return positive_int(text)


def theta_pair(text: str):
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two numbers LO,HI") from None
    if not -1 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need -1 <= LO <= HI <= 1")
    return lo, hi


def kappa_pair(text: str):
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two integers LO,HI") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI")
    return lo, hi


def workers_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one process must solve the pools (1 or more)")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--layers", default=None, help=f"'all', 'last-L', 'a-b' or 'a,b' (default {LAYERS})")
    p.add_argument("--neurons", type=neurons_spec, default=None,
                   help=f"a seeded sample of N units per layer, or 'all' (default {NEURONS})")
    p.add_argument("--neuron-ids", default=None, help="explicit ids instead of a sample, e.g. 5,17")
    p.add_argument("--mode", default=None, help=f"comma list of {', '.join(tp.MODES)}, or 'all' (default {MODE})")
    p.add_argument("--tau", type=positive_int, default=tp.TAU)
    p.add_argument("--theta", type=theta_pair, default=THETA)
    p.add_argument("--kappa", type=kappa_pair, default=KAPPA)
    p.add_argument("--time-limit", type=positive_float, default=None, help=f"seconds per exact step ({TIME_LIMIT})")
    p.add_argument("--corpus", default=",".join(CORPUS), help="comma list: wiki_vital, boolq, nq_open, dataset names")
    p.add_argument("--min-freq", type=positive_int, default=MIN_FREQ, help="word floor (occurrences), and pair floor")
    p.add_argument("--pair-floor", type=non_negative_int, default=None,
                   help="departure: pair window counts below this are zero (default: --min-freq, the authors'; 0: none)")
    p.add_argument("--no-smoothing", action="store_true",
                   help="departure: NPMI -1 for pairs that never co-occur (the authors add epsilon 1e-12)")
    p.add_argument("--free-rejected", action="store_true",
                   help="departure: a rejected star's words stay free for later stars (the authors mark them used)")
    p.add_argument("--capitalized", action="store_true",
                   help="departure: a word also counts when all pieces of its capitalised spelling are in the cut")
    p.add_argument("--workers", type=workers_count, default=WORKERS, help=f"processes solving pools ({WORKERS})")
    p.add_argument("--no-controls", action="store_true", help="skip the random-pool and shuffled-model controls")
    p.add_argument("--no-link", action="store_true", help="skip the link to the spline features")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--out-dir", default=OUT_DIR)
    p.add_argument("--export", default=None, help="also write the real pools in the authors' layout under this folder")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run")
    p.add_argument("--full", action="store_true", help="the full size: " + ", ".join(f"{k}={v}" for k, v in FULL.items()))
    p.add_argument("--update-readme", action="store_true",
                   help=f"paste this run's tables between <!-- {README_TAG}:begin/end --> in README.md")
    return p


def parse_modes(spec: str) -> list[str]:
    modes = list(tp.MODES) if spec == "all" else [m.strip().lower() for m in spec.split(",") if m.strip()]
    bad = [m for m in modes if m not in tp.MODES]
    if bad or not modes:
        raise UserError(f"unknown mode {', '.join(bad) or repr(spec)}: --mode takes a comma list of "
                        f"{', '.join(tp.MODES)}, or 'all'")
    return modes


def config_limits(name: str):
    """(layers, MLP units, residual width) from the model's config alone, before any weights load; None when
    the config cannot be read here (the model's own loading then names the problem)."""
    try:
        from transformers import AutoConfig

        from model_loading import resolve_model
        source, extra = resolve_model(name)
        if "gguf_file" in extra:
            return None
        config = AutoConfig.from_pretrained(source, **extra)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a hub id or an odd folder: the model load reports it
        return None
    config = getattr(config, "text_config", None) or config
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    units = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or (width and 4 * width)
    return (n_layers, units, width) if n_layers and units and width else None


def check_limits(limits, modes, layers, neuron_ids) -> None:
    n_layers, units, width = limits
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise UserError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1}); "
                            "pass --layers within it")
    for mode in modes:
        limit, what = (units, "MLP units") if mode.startswith("hi") else (width, "residual dimensions")
        bad = [i for i in neuron_ids or [] if not 0 <= i < limit]
        if bad:
            raise UserError(f"neuron(s) {bad[:5]} out of range for mode {mode}: each layer has {limit} {what} "
                            f"(0..{limit - 1}); pass --neuron-ids within it")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick and args.full:
        raise UserError("--quick and --full contradict each other: pass one")
    if args.update_readme and args.quick:
        raise UserError("--quick numbers say nothing at size: drop --update-readme, or run --full")
    preset = QUICK if args.quick else FULL if args.full else {}
    layers_spec = args.layers or preset.get("LAYERS", LAYERS)
    neurons = args.neurons or preset.get("NEURONS", NEURONS)
    time_limit = args.time_limit or preset.get("TIME_LIMIT", TIME_LIMIT)
    link_prompts_n, link_top = preset.get("LINK_PROMPTS", LINK_PROMPTS), preset.get("LINK_TOP", LINK_TOP)
    modes = parse_modes(args.mode or preset.get("MODE", MODE))
    control_modes = modes if preset.get("CONTROLS") == "all" else modes[:1]
    if args.kappa[0] < tp.TOPIC_SIZE:
        raise UserError(f"--kappa {args.kappa[0]},{args.kappa[1]}: groups smaller than the topic size "
                        f"{tp.TOPIC_SIZE} cannot hold a topic; use kappa_l >= {tp.TOPIC_SIZE}")
    corpus = [c.strip() for c in args.corpus.split(",") if c.strip()]
    if not corpus:
        raise UserError("the reference corpus is empty: pass --corpus with at least one source, e.g. boolq")
    parse_layer_spec(layers_spec, None)
    neuron_ids = None
    if args.neuron_ids is not None:
        try:
            neuron_ids = sorted({int(v) for v in args.neuron_ids.split(",") if v.strip()})
        except ValueError:
            raise UserError(f"--neuron-ids {args.neuron_ids!r} is not a comma list of integers, e.g. 5,17") from None
        if not neuron_ids:
            raise UserError("--neuron-ids is empty: give a comma list of integers, e.g. 5,17")
    tp.solver()  # before any expensive step: a missing solver is named at once
    settings = tp.Settings(tau=args.tau, theta=tuple(args.theta), kappa=tuple(args.kappa), time_limit=time_limit,
                           pair_floor=args.pair_floor, smooth=not args.no_smoothing, free_rejected=args.free_rejected,
                           spellings=("word", "Word") if args.capitalized else ("word",), seed=SEED)
    limits = config_limits(args.model)
    if limits is not None:   # layers and units checked from the config, before the corpus and the weights
        check_limits(limits, modes, parse_layer_spec(layers_spec, limits[0]), neuron_ids)

    t_all, cpu_all = time.perf_counter(), time.process_time()
    started = provenance()   # the commit the run starts from, not whatever HEAD is when it ends
    timings = {}
    t = time.perf_counter()
    graph, meta = tp.load_cooccurrence(corpus, tp.WINDOW, args.min_freq, tp.MAX_VOCAB)
    tp.check_floor(graph, settings.pair_floor)
    timings["cooccurrence_s"] = time.perf_counter() - t

    from model_loading import load_model, load_tokenizer, model_slug
    try:
        model = load_model(args.model)
        tokenizer = load_tokenizer(args.model)
    except (FileNotFoundError, OSError, ValueError) as error:
        raise UserError(f"could not load model {args.model!r}: {error}; pass --model smollm2-135m, a hub id or a "
                        "folder") from None
    slug = model_slug(args.model)
    layers = parse_layer_spec(layers_spec, len(decoder_layers(model)))
    for mode in modes:
        for layer in layers:
            tp.check_ids(model, mode, layer, neuron_ids if neuron_ids is not None else [])
    vocab_size = model.get_output_embeddings().weight.shape[0]
    t = time.perf_counter()
    wp = tp.word_pieces(tokenizer, graph.vocab, vocab_size, settings.spellings)
    timings["word_pieces_s"] = time.perf_counter() - t
    out_dir = Path(args.out_dir)
    root = tp.settings_root(settings, meta)
    real_name = tp.model_folder(model, slug)

    def ids_of(mode, layer):
        return neuron_ids if neuron_ids is not None else tp.pick_neurons(model, mode, layer, neurons)

    with output_lock(root / slug, "the topics cache of " + slug):
        # 1. every pool's words (forward passes), for every condition; 2. all pools solved at once, in parallel
        t = time.perf_counter()
        conditions = {"real": (real_name, modes, False)}
        jobs = []
        for mode in modes:
            for layer in layers:
                jobs += plan_pools(model, wp, root, real_name, mode, layer, ids_of(mode, layer), settings, args.batch_size)
        if not args.no_controls:
            rand_name = real_name + "+random-pools"
            conditions["random pools"] = (rand_name, control_modes, True)
            for mode in control_modes:
                for layer in layers:
                    jobs += plan_pools(model, wp, root, rand_name, mode, layer, ids_of(mode, layer), settings,
                                       args.batch_size, random_pools=True)
            with tp.shuffled_down_projections(model, SEED):
                shuf_name = tp.model_folder(model, slug + "+shuffled-down")
                conditions["shuffled down-proj"] = (shuf_name, control_modes, False)
                for mode in control_modes:
                    for layer in layers:
                        jobs += plan_pools(model, wp, root, shuf_name, mode, layer, ids_of(mode, layer), settings,
                                           args.batch_size)
        link, link_mode = None, next((m for m in modes if m.startswith("hi")), "hi-c")  # gate units: Hi-mode neurons
        if not args.no_link:
            link = link_units(model, tokenizer, layers, link_prompts_n, link_top)
            for layer, u in link["units"].items():
                jobs += plan_pools(model, wp, root, real_name, link_mode, layer, sorted(set(u["top"] + u["random"])),
                                   settings, args.batch_size)
        jobs = list({str(j[0]): j for j in jobs}.values())   # a link unit may be in the sample too
        timings["pools_planned_s"] = time.perf_counter() - t
        expected = len(jobs) * POOL_CPU_S / args.workers
        print(f"neuron_topics.py: {len(jobs)} pools to solve ({len(jobs) // 2} neurons x 2 polarities; the rest cached) "
              f"with {args.workers} worker(s): expected about {expected / 60:.1f} min ({POOL_CPU_S} CPU s per pool, "
              "measured)", flush=True)
        t = time.perf_counter()
        from tqdm import tqdm
        with tqdm(total=len(jobs), desc="pools", unit="pool", disable=None) as bar:
            job_cpu = tp.solve_pools(jobs, graph, settings, args.workers, bar)
        timings["solve_s"] = time.perf_counter() - t
        timings["pools"] = len(jobs)
        timings["pools_per_s"] = len(jobs) / timings["solve_s"] if jobs and timings["solve_s"] > 0 else float("nan")
        timings["pool_cpu_s_mean"] = float(np.mean(job_cpu)) if job_cpu else float("nan")

        results = {}
        for cond, (name, cmodes, _) in conditions.items():
            results[cond] = pd.concat([summary_frame(root, name, mode, layer, ids_of(mode, layer))
                                       for mode in cmodes for layer in layers], ignore_index=True)
        link_result = link_rows(link, root, real_name, link_mode) if link is not None else None
        if args.export:
            n = tp.export_authors_layout(root, real_name, Path(args.export), slug, graph.vocab)
            print(f"neuron_topics.py: {n} pools exported in the authors' layout under {args.export}/{slug}/")
    timings["total_s"] = time.perf_counter() - t_all
    children = os.times()
    timings["cpu_s"] = time.process_time() - cpu_all + children.children_user + children.children_system
    data = report(out_dir, slug, modes, layers, results, link_result, meta, settings,
                  neurons if neuron_ids is None else neuron_ids, timings, args.workers)
    if args.update_readme:
        command = "python neuron_topics.py " + " ".join(argv if argv is not None else sys.argv[1:])
        data.update(started)
        from analysis.report import paste_between_markers
        paste_between_markers(README, README_TAG, readme_block(data, command.strip()))
        print(f"neuron_topics.py: tables pasted into {README} between the {README_TAG} markers")
    print(f"neuron_topics.py: {len(jobs)} pools solved in {timings['solve_s']:.0f} s ({timings['pools_per_s']:.2f} "
          f"pools/s, {args.workers} workers); run {timings['total_s']:.0f} s (CPU {timings['cpu_s']:.0f} s); section: "
          f"{out_dir / 'results' / 'neuron_topics.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "neuron_topics.py"))
