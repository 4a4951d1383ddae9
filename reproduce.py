"""The main job: every result of the project on the embedded default, from nothing to RESULTS.md.

    bash run.sh            # = python reproduce.py          (under 30 min on 2 CPU cores)
    bash run.sh --quick    # = python reproduce.py --quick  (under 5 min: small samples, a smoke run)

Steps, each reusing what an earlier run finished (rerunning is cheap, an interrupted run resumes;
features made with other settings, after a constant was edited, are extracted again):
  1. prepare the packaged datasets (data/prepare.py)
  2. extract spline features + ID of a seeded sample of each dataset, all layers (features/<model>/)
     and, for the toxicity detector's latency, the first 3 layers with early exit (layers0-2/)
  3. ID_estimation.py + toxicity_id_eval/id_plotting.py for the four categories
  3b. same_genre.py: same-genre toxicity (insults, talkdown) and the richer spline features (issue 16)
  4. statistic_analysis.py: every table and figure, results.json and RESULTS.md
Settings are the constants below (edit and rerun, as in nanoGPT), or flags.
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from statistic_analysis import EARLY_EXIT_LAYERS, PRESETS

ROOT = Path(__file__).resolve().parent

MODEL = "smollm2-135m"
# The datasets statistic_analysis.py's embedded preset reads (toxic, clean domains, clean comments,
# multi-label), taken from the preset so that the two cannot drift apart.
DATASETS = list(dict.fromkeys(spec.split(":")[0] for key in ("TOXIC", "CLEAN_DOMAINS", "CLEAN_COMMENTS", "MULTILABEL")
                              for spec in PRESETS["embedded"][key]))
SAMPLE = 250            # texts per dataset (seeded); None = all of them
MAX_LENGTH = 128        # tokens; the paper's 1024 costs ~8x more on a CPU (use --max-length 1024)
BATCH_SIZE = 16
SEED = 0
FEATURES_DIR = "features"
# The full-model files carry the paper's 7 per layer (unchanged) plus every richer candidate group, so that
# same_genre.py scores them on the paper's tasks too; the early-exit files stay on the paper's path.
FEATURE_SET = "candidates"
QUICK = dict(SAMPLE=60, MAX_LENGTH=96, FEATURES_DIR="features/quick")  # quick features never mix with full ones


def step(title: str):
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def call(args: list[str]) -> None:
    """Run a project script with this interpreter; stop the job with its exit code if it fails."""
    print("$ " + " ".join(["python"] + args), flush=True)
    done = subprocess.run([sys.executable] + args, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"step failed: python {' '.join(args)} (exit {done.returncode}); fix it and rerun: "
                 "finished work is kept and reused.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small samples: a smoke run in under 5 minutes")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--sample", type=int, default=None, help=f"texts per dataset (default {SAMPLE})")
    p.add_argument("--max-length", type=int, default=None, help=f"tokens (default {MAX_LENGTH})")
    p.add_argument("--skip", default="", help="comma list of steps to skip: data,features,analysis,id,same_genre")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sample = args.sample or (QUICK["SAMPLE"] if args.quick else SAMPLE)
    max_length = args.max_length or (QUICK["MAX_LENGTH"] if args.quick else MAX_LENGTH)
    features_dir = QUICK["FEATURES_DIR"] if args.quick else FEATURES_DIR
    skip = set(filter(None, args.skip.split(",")))
    quick = ["--quick"] if args.quick else []
    began = time.perf_counter()
    timings = {}

    if "data" not in skip:
        t = step("1/4 datasets")
        call(["data/prepare.py"])
        timings["data"] = time.perf_counter() - t

    if "features" not in skip:
        t = step(f"2/4 features: {len(DATASETS)} datasets x {sample} texts, max {max_length} tokens")
        from extract_features import extract_features
        for name in DATASETS:
            extract_features(dataset=name, model=args.model, sample=sample, seed=SEED, max_length=max_length,
                             batch_size=BATCH_SIZE, save_hidden=True, features_dir=features_dir,
                             replace_stale=True, features=FEATURE_SET)
        for name in DATASETS:  # the 3-layer detector's own (early-exit) latency
            extract_features(dataset=name, model=args.model, sample=sample, seed=SEED, max_length=max_length,
                             batch_size=BATCH_SIZE, layers=f"0-{EARLY_EXIT_LAYERS - 1}", with_id=False, features_dir=features_dir,
                             replace_stale=True)
        timings["features"] = time.perf_counter() - t

    if "id" not in skip:
        t = step("3/4 intrinsic-dimension experiment")
        # All four categories in one call: their prompts share length-sorted batches.
        call(["ID_estimation.py", "--category", "all", "--model", args.model] + quick)
        call(["toxicity_id_eval/id_plotting.py", "--category", "all", "--model", args.model] + quick)
        timings["id"] = time.perf_counter() - t

    if "same_genre" not in skip:
        t = step("same-genre toxicity and richer spline features (issue 16)")
        # The paper's tasks are read from this run's features/<model>/ files (a note when they are missing).
        call(["same_genre.py", "--model", args.model, "--features-dir", features_dir] + quick)
        timings["same_genre"] = time.perf_counter() - t

    if "analysis" not in skip:
        t = step("4/4 statistic_analysis.py (RESULTS.md includes the ID experiment)")
        from extract_features import model_slug
        call(["statistic_analysis.py", "--features-dir", f"{features_dir}/{model_slug(args.model)}"] + quick)
        timings["analysis"] = time.perf_counter() - t

    total = time.perf_counter() - began
    print("\n" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + f"; total {total / 60:.1f} min")
    print(f"Done. Results: {ROOT / 'RESULTS.md'} (tables/, figures/, results.json beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
