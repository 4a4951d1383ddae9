#!/usr/bin/env python
"""Every table and figure of the paper from cached feature files, with fair baselines.

    python statistic_analysis.py                      # embedded default: features/<the one model>/
    python statistic_analysis.py --quick --out-dir /tmp/a
    python statistic_analysis.py --preset paper --features-dir features/llama2-7b
    python statistic_analysis.py --features-dir features/smollm2-135m --features-dir features/qwen2.5-coder-0.5b
    python statistic_analysis.py --only detection,heatmaps --set RF_TREES=300 --set "TOXIC=['slurs']"

It reads feature files written by extract_features.py (never a model). The settings are the
constants below; each can be overridden with ``--set NAME=VALUE`` (a Python literal) and the most
used ones have their own flags. Outputs under --out-dir: tables/*.md|tex, figures/*.png,
results.json (every number) and RESULTS.md (our tables beside the paper's reported ones). With several
--features-dir (one per model), every experiment runs on each model and the tables show them side by
side, one block of rows per model (a "model" column), as the paper shows Llama-2 and Mistral.

Experiments:
  detection   1. toxicity detection (page-1 table): every detector, ROC-AUC / AP / TPR@1%FPR, latency
  shortcut    2. toxic vs clean, clean = domain text, then with clean comments added to the clean side
  domains     3. domain separation, one-vs-rest ROC-AUC per domain: RF, LR, LR with 1 % labels
  multilabel  4. Jigsaw-style six labels, random forest with self-training at 2/5/10/100 % labels
  semi        5. toxic vs clean with self-training at 20/10/5 % labels, with the split sizes
  heatmaps    6. ROC-AUC per layer, per growing prefix of layers, per feature
  embedding   7. PCA and t-SNE of the features coloured by dataset

Baselines on the very same folds, scored from continuous scores: TF-IDF + logistic regression on
the text, alt-profanity-check (packaged classifier, zero-shot), and a logistic-regression probe on
the model's mean-pooled hidden states (feature files extracted with --save-hidden; else skipped
with a note).

Exit status: 0 when every experiment ran; 1 when some were skipped for unusable input (the reason
is printed and written to RESULTS.md and results.json["skipped"]); 2 when the feature files
themselves cannot be used (missing, mixed models or layer sets, early-exit files that do not match).
Numbers are seeded: two runs give the same results.json, except the measured classifier times
under "timing" (pass --no-timing to leave them out; then tables are identical too).
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli import non_negative_int, positive_int, run_main  # noqa: E402

# ----------------------------------------------------------------------------- settings
PRESET = "embedded"            # "embedded" (SmolLM2 + packaged datasets) or "paper"
FEATURES_ROOT = "features"     # extract_features.py writes features/<model>/<dataset>.parquet
MODEL_DIR = None               # sub-folder of FEATURES_ROOT (or a list: models side by side); None: the only one
EARLY_EXIT_LAYERS = 3          # the fast detector: RF on the first k layers, from features/<model>/layers0-{k-1}/
OUT_DIR = "."                  # tables/, figures/, results.json, RESULTS.md go here (repo root by default)
SEED = 0
FOLDS = 5                      # stratified folds for every cross-validated number
RF_TREES = 100
N_JOBS = 2                     # random-forest and t-SNE workers
BLAS_THREADS = 1               # BLAS/OpenMP threads (more only spin on these small matrices)
LR_C = 1.0
MAX_ROWS_PER_DATASET = None    # seeded subsample of each feature file (None: every row)
FPR_TARGET = 0.01              # TPR is reported at this false-positive rate
SEMI_FRACTIONS = (1.0, 0.20, 0.10, 0.05)      # experiment 5 (1.0 = fully supervised reference)
SEMI_FOLDS = 3
SELF_TRAIN_THRESHOLD = 0.75
SELF_TRAIN_MAX_ITER = 10
MULTILABEL_FRACTIONS = (0.02, 0.05, 0.10, 1.0)  # experiment 4
MULTILABEL_TEST_SIZE = 0.3     # used when the dataset has no train/test 'split' column
MULTILABEL_MAX_TRAIN = None    # cap on the training rows of experiment 4 (the real Jigsaw train has 160k)
DOMAIN_LABEL_FRACTION = 0.01   # experiment 3, third row
HEATMAP_FOLDS = 3
TSNE_MAX_POINTS = 2000
TSNE_ITER = 1000
PCA_MAX_POINTS = 6000
ID_RESULTS = None  # folder of ID_estimation.py's summary.json (quick: its quick/); None: the features' model's
EXPERIMENTS = ("detection", "shortcut", "domains", "multilabel", "semi", "heatmaps", "embedding")
QUICK = dict(MAX_ROWS_PER_DATASET=120, FOLDS=3, RF_TREES=20, SEMI_FOLDS=2, HEATMAP_FOLDS=2,
             TSNE_MAX_POINTS=250, TSNE_ITER=250, SELF_TRAIN_MAX_ITER=2, MULTILABEL_FRACTIONS=(0.10, 1.0))

from data.cleaning import JIGSAW_LABELS  # noqa: E402 - the names every multi-label dataset uses
JIGSAW_LABELS = list(JIGSAW_LABELS)
# Dataset specs: "name" = every row of features/<model>/name.parquet; "name:toxic" / "name:clean"
# = its rows whose `toxic` column is 1 / 0.
EMBEDDED_DOMAINS = ["dm_mathematics", "pubmed", "code", "legal", "questions"]
PILE_SUBSETS = ["pile_dm_mathematics", "pile_freelaw", "pile_github", "pile_pubmed", "pile_uspto"]
PRESETS = {
    "embedded": dict(
        TOXIC=["rtp:toxic", "slurs"],
        CLEAN_DOMAINS=list(EMBEDDED_DOMAINS),
        CLEAN_COMMENTS=["comments:clean"],
        MULTILABEL=["rtp", "comments"],         # label columns missing in a file are taken as 0 (a note says so)
    ),
    "paper": dict(
        TOXIC=["toxigen:toxic", "jigsaw:toxic"],
        CLEAN_DOMAINS=PILE_SUBSETS + ["dolly"],
        CLEAN_COMMENTS=["jigsaw:clean"],
        MULTILABEL=["jigsaw"],                  # its `split` column (train/test) is used
        MAX_ROWS_PER_DATASET=10_000,
        MULTILABEL_MAX_TRAIN=20_000,
    ),
}
TOXIC = CLEAN_DOMAINS = CLEAN_COMMENTS = MULTILABEL = None  # filled from the preset (or --set)
# ----------------------------------------------------------------------------- end of settings

SETTING_NAMES = [k for k in list(globals()) if k.isupper() and k not in ("ROOT", "PRESETS", "QUICK")]


def _log(*args):
    print(*args, flush=True)


def configure(argv=None) -> dict:
    """Constants, then the preset, then --quick, then flags and --set overrides."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--features-dir", action="append",
                   help="folder of <dataset>.parquet files (default FEATURES_ROOT/MODEL_DIR); repeat it to put "
                        "several models side by side (the first one's early-exit folder is --early-dir)")
    p.add_argument("--early-dir", help="folder of the early-exit files (default <features-dir>/layers0-{k-1})")
    p.add_argument("--out-dir", help="where tables/, figures/, results.json, RESULTS.md go (default repo root)")
    p.add_argument("--quick", action="store_true", help="small subsample, few folds and trees (for tests)")
    p.add_argument("--only", help="comma-separated experiments among " + ",".join(EXPERIMENTS))
    p.add_argument("--folds", type=positive_int)
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument("--rf-trees", type=positive_int)
    p.add_argument("--n-jobs", type=int, help="workers (-1: every core, as scikit-learn counts)")
    p.add_argument("--max-per-dataset", type=positive_int)
    p.add_argument("--no-timing", action="store_true",
                   help="do not time the classifiers (then two runs write byte-identical tables)")
    p.add_argument("--gather", action="store_true",
                   help="only refresh RESULTS.md's gathered part (the other systems' results/*.md sections) in "
                        "--out-dir, recomputing nothing")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any constant at the top of this file with a Python literal")
    args = p.parse_args(argv)
    cfg = {k: globals()[k] for k in SETTING_NAMES}
    if args.preset:
        cfg["PRESET"] = args.preset
    for item in args.set:  # a preset named by --set must win before the preset is applied
        name, _, value = item.partition("=")
        if name.strip() == "PRESET":
            try:
                cfg["PRESET"] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                cfg["PRESET"] = value.strip()  # a bare name, as for any other --set
    if cfg["PRESET"] not in PRESETS:
        p.error(f"unknown preset {cfg['PRESET']!r}: choose one of {sorted(PRESETS)}")
    cfg.update(PRESETS[cfg["PRESET"]])
    if args.quick:
        cfg.update(QUICK)
    for flag, name in [("folds", "FOLDS"), ("seed", "SEED"), ("rf_trees", "RF_TREES"), ("n_jobs", "N_JOBS"),
                       ("max_per_dataset", "MAX_ROWS_PER_DATASET"), ("out_dir", "OUT_DIR")]:
        if getattr(args, flag) is not None:
            cfg[name] = getattr(args, flag)
    for item in args.set:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in cfg:
            p.error(f"--set {item!r}: expected NAME=VALUE with NAME among {', '.join(sorted(cfg))}")
        try:
            new = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            new = value  # a bare string
        old = cfg[name]
        if old is not None and new is not None and not _same_kind(old, new):
            p.error(f"--set {item!r}: {name} takes {type(old).__name__} values such as {old!r}")
        cfg[name] = new
    cfg["GATHER"] = args.gather
    cfg["QUICK_MODE"] = args.quick
    cfg["TIMING"] = not args.no_timing
    cfg["ONLY"] = [e.strip() for e in args.only.split(",")] if args.only else list(EXPERIMENTS)
    bad = [e for e in cfg["ONLY"] if e not in EXPERIMENTS]
    if bad:
        p.error(f"--only: unknown experiment(s) {bad}; choose among {', '.join(EXPERIMENTS)}")
    cfg["FEATURES_DIR"] = args.features_dir
    cfg["EARLY_DIR"] = args.early_dir
    for name in ("FOLDS", "SEMI_FOLDS", "HEATMAP_FOLDS"):
        if int(cfg[name]) < 2:
            p.error(f"{name} must be at least 2 (got {cfg[name]})")
    return cfg


def _same_kind(old, new) -> bool:
    """Whether ``new`` can stand where the constant's value ``old`` stood (numbers for numbers, lists for lists)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    for kind in ((int, float), (list, tuple), (str,), (dict,)):
        if isinstance(old, kind):
            return isinstance(new, kind)
    return True


def resolve_features_dir(cfg) -> Path | list[Path]:
    """The features folder, or a list of them (one per model, shown side by side)."""
    from analysis.data import AnalysisInputError
    if cfg["FEATURES_DIR"]:
        dirs = [Path(d) for d in cfg["FEATURES_DIR"]]
        return dirs[0] if len(dirs) == 1 else dirs
    root = Path(cfg["FEATURES_ROOT"])
    if not root.is_absolute():
        root = ROOT / root
    if isinstance(cfg["MODEL_DIR"], (list, tuple)):
        return [root / d for d in cfg["MODEL_DIR"]]
    if cfg["MODEL_DIR"]:
        return root / cfg["MODEL_DIR"]
    subdirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if len(subdirs) != 1:
        raise AnalysisInputError(
            f"Cannot tell which model's features to analyse: {root} holds "
            f"{[d.name for d in subdirs] or 'no model folder'}. Pass --features-dir (repeat it for models side by "
            "side) or --set MODEL_DIR=...")
    return subdirs[0]


def main(argv=None) -> int:
    """Unusable feature files raise AnalysisInputError, a cli.UserError: one line and exit status 2."""
    cfg = configure(argv)
    if cfg["GATHER"]:
        from analysis.report import regather
        _log(f"refreshed the gathered sections of {regather(Path(cfg['OUT_DIR']))}")  # as run_all: cwd-relative
        return 0
    from analysis.experiments import run_all
    return run_all(cfg, resolve_features_dir(cfg), _log)


if __name__ == "__main__":
    start = time.perf_counter()
    code = run_main(main, "statistic_analysis.py")
    if code != 2:
        _log(f"done in {time.perf_counter() - start:.1f} s")
    sys.exit(code)
