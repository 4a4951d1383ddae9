"""The seven experiments of statistic_analysis.py. Each returns (results dict, tables, figures)."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from data.cleaning import JIGSAW_LABELS
from feature_io import FEATURE_STATS

from . import paper, plots
from .baselines import shortcut_notes
from .data import AnalysisInputError, Corpus, Task, build_task, check_folds, layers_text, parse_spec
from .detectors import detectors_for
from .models import (UNLABELED, Settings, binary_metrics, fit_quiet, labeled_mask, make_lr, make_rf,
                     oriented_auc, positive_scores, self_training, stratified_folds, summarize)
from .report import Table, num, pct, system_sections, write_json

TITLES = {
    "detection": "1. Toxicity detection",
    "shortcut": "2. Toxic vs clean, with and without clean comments",
    "domains": "3. Domain separation (one-vs-rest)",
    "multilabel": "4. Jigsaw-style multi-label with self-training",
    "semi": "5. Semi-supervised toxic vs clean (self-training)",
    "heatmaps": "6. ROC-AUC per layer, per prefix of layers, per feature",
    "embedding": "7. PCA and t-SNE of the features",
}
TASK_LABELS = {"domains": "clean = domain text", "domains+comments": "clean = domain text + clean comments"}


class Run:
    """State shared by the experiments of one run."""

    def __init__(self, cfg, features_dir: Path, log):
        self.cfg = cfg
        self.log = log
        self.out = Path(cfg["OUT_DIR"])
        if not self.out.is_absolute():
            self.out = Path(__file__).resolve().parent.parent / self.out
        self.s = Settings(seed=cfg["SEED"], folds=cfg["FOLDS"], rf_trees=cfg["RF_TREES"], n_jobs=cfg["N_JOBS"],
                          lr_c=cfg["LR_C"], self_train_threshold=cfg["SELF_TRAIN_THRESHOLD"],
                          self_train_max_iter=cfg["SELF_TRAIN_MAX_ITER"], fpr_target=cfg["FPR_TARGET"],
                          timing=cfg["TIMING"])
        k = cfg["EARLY_EXIT_LAYERS"]
        early_dir = Path(cfg["EARLY_DIR"]) if cfg["EARLY_DIR"] else features_dir / f"layers0-{k - 1}"
        names = [parse_spec(s)[0] for s in cfg["TOXIC"] + cfg["CLEAN_DOMAINS"] + cfg["CLEAN_COMMENTS"]
                 + cfg["MULTILABEL"]]
        self.corpus = Corpus(features_dir, names, early_dir=early_dir, max_rows=cfg["MAX_ROWS_PER_DATASET"],
                             seed=cfg["SEED"])
        self.early_is_exit = self.corpus.has_early and len(self.corpus.early_layers) >= k
        if self.corpus.early_layers is not None and not self.early_is_exit:
            self.corpus.notes.append(f"Early-exit files in {early_dir} do not cover every dataset with {k} layers: "
                                     "the fast detector uses the first layers sliced from the full run.")
        if self.early_is_exit and self.corpus.early_sampled:
            timed = sum(n for n, _ in self.corpus.early_sampled.values())
            total = sum(m for _, m in self.corpus.early_sampled.values())
            self.corpus.notes.append(f"The first-{k}-layer detector's features are sliced from the full run (the "
                                     f"same layers of the same forward); its early-exit latency is timed on a "
                                     f"sample of {timed} of the {total} prompts.")
        if len(self.corpus.layers) < k:
            raise AnalysisInputError(f"The feature files hold {len(self.corpus.layers)} layers, fewer than "
                                     f"EARLY_EXIT_LAYERS={k}.")
        self.timing: dict = {}
        self._tasks: dict = {}
        self._detection: dict = {}

    def task(self, key: str) -> Task:
        if key not in self._tasks:
            clean = self.cfg["CLEAN_DOMAINS"] + (self.cfg["CLEAN_COMMENTS"] if key == "domains+comments" else [])
            if key == "domains+comments" and not any(self.corpus.rows(s) is not None for s in self.cfg["CLEAN_COMMENTS"]):
                raise AnalysisInputError(f"No clean-comment feature file among {self.cfg['CLEAN_COMMENTS']}.")
            self._tasks[key] = build_task(self.corpus, f"toxic vs {TASK_LABELS[key]}",
                                          [("clean", clean), ("toxic", self.cfg["TOXIC"])])
        return self._tasks[key]

    fig_dir = None  # figures/ for the first model; figures/<model>/ for the others (set by _run_all)

    def fig(self, name: str) -> Path:
        return (self.fig_dir or self.out / "figures") / f"{name}.png"

    # ------------------------------------------------------------------ detection suite
    def detection(self, key: str) -> dict:
        """Every detector on the same stratified folds of one toxic-vs-clean task."""
        if key in self._detection:
            return self._detection[key]
        task = self.task(key)
        s = self.s
        check_folds(task.y, s.folds, f"Toxic vs {TASK_LABELS[key]}", task.class_names)
        folds = stratified_folds(task.y, s.folds, s.seed)
        dets = detectors_for(task, s, self.cfg["EARLY_EXIT_LAYERS"], self.early_is_exit)
        out = {"task": task.name, "n_rows": int(len(task.y)), "n_toxic": int(task.y.sum()),
               "n_clean": int((task.y == 0).sum()), "rows_per_dataset": task.counts, "folds": s.folds,
               "detectors": {}}
        timing = self.timing.setdefault(f"detection[{key}]", {})
        for det in dets:
            entry = {"label": det.label, "features": det.features, "available": det.available, "note": det.note}
            out["detectors"][det.key] = entry
            if not det.available:
                self.log(f"  {det.label}: not run ({det.note})")
                continue
            per_fold, seconds = [], 0.0
            for train, test in folds:
                scores, secs = det.fit_score(task, train, test)
                per_fold.append(binary_metrics(task.y[test], scores, s.fpr_target))
                seconds += secs
            entry["metrics"] = {m: summarize([f[m] for f in per_fold]) for m in per_fold[0]}
            lat = getattr(task, det.latency) if isinstance(det.latency, str) else det.latency
            # nanmean: an early-exit latency sample times some of the rows only (analysis.data.Corpus)
            timed_rows = None if lat is None else np.asarray(lat, dtype=np.float64)
            entry["extraction_latency_s"] = (float("nan") if timed_rows is None or np.isnan(timed_rows).all()
                                             else float(np.nanmean(timed_rows)))
            if s.timing:
                timing[det.key] = {"classifier_s_per_prompt": seconds / len(task.y)}
            self.log(f"  {det.label}: ROC-AUC {pct(entry['metrics']['roc_auc']['mean'])}")
        self._detection[key] = out
        return out


# ---------------------------------------------------------------------- experiment 1
def exp_detection(run: Run):
    res = run.detection("domains")
    s = run.s
    timing = run.timing.get("detection[domains]", {})
    cols = ["detector", "features", "ROC-AUC (%)", "AP (%)", f"TPR@{100 * s.fpr_target:g}%FPR (%)",
            "extraction s/prompt", "classifier s/prompt (batched)", "total s/prompt"]
    rows, notes = [], []
    for key, d in res["detectors"].items():
        if not d["available"]:
            rows.append([d["label"], d["features"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
            notes.append(f"{d['label']}: not run: {d['note']}.")
            continue
        m = d["metrics"]
        clf = timing.get(key, {}).get("classifier_s_per_prompt", float("nan"))
        ext = d["extraction_latency_s"]
        rows.append([d["label"], d["features"], pct(m["roc_auc"]["mean"], m["roc_auc"]["std"]),
                     pct(m["average_precision"]["mean"]), pct(m["tpr_at_fpr"]["mean"]),
                     num(ext), num(clf, "{:.6f}") if s.timing else "not timed",
                     num(ext + clf) if s.timing else num(ext)])
        if d["note"]:
            notes.append(f"{d['label']}: {d['note']}.")
    model = run.corpus.info.get("model")
    notes.append(f"Mean ± std over {s.folds} stratified folds; every detector scored from continuous scores on "
                 "the same folds. Extraction latency is the model time per prompt read from the feature files "
                 f"({model}, {run.corpus.info.get('dtype')}, on the machine that extracted them, CPU for the embedded "
                 "default); the paper's latencies are for 7B models on a GPU.")
    notes += shortcut_notes(res, TASK_LABELS["domains"])
    ours = Table("detection", f"Toxicity detection, toxic vs clean domain text ({model}): "
                 f"{res['n_toxic']} toxic / {res['n_clean']} clean prompts", cols, rows, notes)
    ref = Table("detection_paper", "Paper's reported numbers (Llama-2-7B / Mistral-7B, GPU), not ours",
                ["model", "ROC-AUC (%)", "latency s/prompt"],
                [[m, f"{a:.2f}", f"{t:.3f}"] for m, a, t in paper.PAPER_DETECTION], [paper.PAPER_DETECTION_NOTE])
    return res, [ours, ref], []


# ---------------------------------------------------------------------- experiment 2
def exp_shortcut(run: Run):
    results, rows = {}, []
    for key in ("domains", "domains+comments"):
        res = run.detection(key)
        results[key] = res
        for dkey, d in res["detectors"].items():
            if not d["available"]:
                continue
            m = d["metrics"]
            ref = paper.PAPER_TOXIC_VS_CLEAN[key].get(dkey)
            rows.append([TASK_LABELS[key], d["label"], pct(m["roc_auc"]["mean"], m["roc_auc"]["std"]),
                         pct(m["average_precision"]["mean"]), pct(m["tpr_at_fpr"]["mean"]),
                         f"{ref:.2f}" if ref is not None else ""])
    a, b = results["domains"]["detectors"], results["domains+comments"]["detectors"]
    drop = {k: a[k]["metrics"]["roc_auc"]["mean"] - b[k]["metrics"]["roc_auc"]["mean"]
            for k in a if a[k]["available"] and b.get(k, {}).get("available")}
    results["auc_drop_when_comments_join"] = drop
    notes = ["The clean side first holds domain text only; then clean comments join it. A large drop means the "
             "detector had learned the domain (comment vs document), not toxicity.",
             "Paper column: Llama-2-7B, Pile subsets + Dolly (+ clean Jigsaw comments), their reported numbers."]
    notes += [n for key in ("domains", "domains+comments") for n in shortcut_notes(results[key], TASK_LABELS[key])]
    t = Table("toxic_vs_clean", "Toxic vs clean, with and without clean comments on the clean side",
              ["clean side", "detector", "ROC-AUC (%)", "AP (%)", f"TPR@{100 * run.s.fpr_target:g}%FPR (%)",
               "paper ROC-AUC (%)"], rows, notes)
    return results, [t], []


# ---------------------------------------------------------------------- experiment 3
def exp_domains(run: Run):
    cfg, s = run.cfg, run.s
    specs = [sp for sp in cfg["CLEAN_DOMAINS"] + cfg["CLEAN_COMMENTS"]
             if (got := run.corpus.rows(sp)) is not None and len(got[1])]
    if len(specs) < 2:
        raise AnalysisInputError(f"Domain separation needs at least 2 domains with feature files; found {specs}.")
    task = build_task(run.corpus, "domains", [(sp, [sp]) for sp in specs])
    check_folds(task.y, s.folds, "Domain separation", task.class_names)
    frac = cfg["DOMAIN_LABEL_FRACTION"]
    models = {"RandomForest": lambda: make_rf(s), "LogisticRegression": lambda: make_lr(s),
              f"LogisticRegression, {100 * frac:g} % labels (self-training)": lambda: self_training(make_lr(s), s)}
    per = {m: {sp: [] for sp in specs} for m in models}
    sizes = []
    for fold, (train, test) in enumerate(stratified_folds(task.y, s.folds, s.seed)):
        for name, make in models.items():
            y_train = task.y[train]
            if "labels" in name:
                mask = labeled_mask(y_train, frac, s.seed + fold)
                y_train = np.where(mask, y_train, UNLABELED)
                sizes.append((len(train), int(mask.sum()), len(test)))
            model = fit_quiet(make(), task.X[train], y_train)
            proba = model.predict_proba(task.X[test])
            classes = list(model.classes_)
            for k, sp in enumerate(specs):
                score = proba[:, classes.index(k)] if k in classes else np.zeros(len(test))
                per[name][sp].append(binary_metrics(task.y[test] == k, score)["roc_auc"])
    results = {"domains": specs, "rows_per_domain": task.counts, "folds": s.folds,
               "auc": {m: {sp: summarize(v) for sp, v in d.items()} for m, d in per.items()},
               "label_fraction": frac,
               "labeled_sizes": {"n_train": float(np.mean([a for a, _, _ in sizes])),
                                 "n_labeled": float(np.mean([b for _, b, _ in sizes])),
                                 "n_test": float(np.mean([c for _, _, c in sizes]))}}
    for m in models:
        results["auc"][m]["mean"] = float(np.mean([results["auc"][m][sp]["mean"] for sp in specs]))
    rows = [[m] + [pct(results["auc"][m][sp]["mean"]) for sp in specs] + [pct(results["auc"][m]["mean"])]
            for m in models]
    ls = results["labeled_sizes"]
    notes = [f"One-vs-rest ROC-AUC of a multi-class classifier, mean over {s.folds} stratified folds. "
             f"Low-label row: {ls['n_labeled']:.0f} labeled of {ls['n_train']:.0f} training rows per fold "
             f"(the rest unlabeled), {ls['n_test']:.0f} test rows."]
    ours = Table("domains", "Domain separation, one-vs-rest ROC-AUC (%)", ["classifier"] + specs + ["mean"], rows, notes)
    ref = Table("domains_paper", "Paper's reported numbers (Llama-2-7B), not ours", ["classifier"] + paper.PAPER_DOMAINS["columns"],
                [[m] + [f"{v:.2f}" for v in paper.PAPER_DOMAINS[m]] for m in ("RandomForest", "LogisticRegression")])
    return results, [ours, ref], []


# ---------------------------------------------------------------------- experiment 4
def exp_multilabel(run: Run):
    cfg, s = run.cfg, run.s
    labels = list(cfg["JIGSAW_LABELS"])
    parts, notes = [], []
    for spec in cfg["MULTILABEL"]:
        got = run.corpus.rows(spec)
        if got is None or not len(got[1]):
            continue
        d, idx = got
        meta = d.meta.iloc[idx]
        Y = np.zeros((len(idx), len(labels)))
        missing = [lab for lab in labels if lab not in meta.columns]
        if len(missing) == len(labels):
            notes.append(f"{spec} has none of the label columns: all its labels are taken as 0 (clean).")
        elif missing:
            notes.append(f"{spec} lacks {missing}: taken as 0.")
        for j, lab in enumerate(labels):
            if lab in meta.columns:
                col = pd.to_numeric(meta[lab], errors="coerce").astype("Float64").to_numpy(dtype=float, na_value=np.nan)
                Y[:, j] = np.nan_to_num(col, nan=-1.0)
        split = meta["split"].astype(str).to_numpy() if "split" in meta.columns else np.full(len(idx), "")
        parts.append((d.X[idx], Y, split))
    if not parts:
        raise AnalysisInputError(f"Multi-label: no feature file among {cfg['MULTILABEL']}.")
    X = np.concatenate([p[0] for p in parts])
    Y = np.concatenate([p[1] for p in parts])
    split = np.concatenate([p[2] for p in parts])
    ok = (Y >= 0).all(axis=1)
    if not ok.all():
        notes.append(f"Dropped {int((~ok).sum())} rows with unknown (negative or missing) labels.")
        X, Y, split = X[ok], Y[ok], split[ok]
    Y = (Y > 0.5).astype(int)
    if set(split) >= {"train", "test"} and set(split) <= {"train", "test"}:
        train, test = np.where(split == "train")[0], np.where(split == "test")[0]
        how = "the dataset's own train/test split"
    else:
        strat = Y.max(axis=1)
        if len(np.unique(strat)) < 2 or np.bincount(strat).min() < 2:
            raise AnalysisInputError("Multi-label: every row has the same labels (all clean or all toxic); "
                                     "per-label ROC-AUC needs both classes.")
        train, test = train_test_split(np.arange(len(Y)), test_size=cfg["MULTILABEL_TEST_SIZE"],
                                       random_state=s.seed, stratify=strat)
        train, test = np.sort(train), np.sort(test)
        how = f"a seeded stratified {100 * (1 - cfg['MULTILABEL_TEST_SIZE']):.0f}/{100 * cfg['MULTILABEL_TEST_SIZE']:.0f} split"
    cap = cfg["MULTILABEL_MAX_TRAIN"]
    if cap and len(train) > cap:
        train = np.sort(np.random.default_rng(s.seed).choice(train, size=cap, replace=False))
        notes.append(f"Training rows capped at {cap} (MULTILABEL_MAX_TRAIN).")
    results = {"split": how, "n_train": len(train), "n_test": len(test),
               "positives_train": {lab: int(Y[train, j].sum()) for j, lab in enumerate(labels)},
               "positives_test": {lab: int(Y[test, j].sum()) for j, lab in enumerate(labels)},
               "fractions": {}}
    rows = []
    any_label = Y[train].max(axis=1)
    for frac in cfg["MULTILABEL_FRACTIONS"]:
        mask = labeled_mask(any_label, frac, s.seed)
        entry = {"n_labeled": int(mask.sum()), "n_unlabeled": int((~mask).sum()), "auc": {}}
        for j, lab in enumerate(labels):
            y_tr, y_te = Y[train, j], Y[test, j]
            if len(np.unique(y_te)) < 2:
                entry["auc"][lab] = float("nan")
                _note(notes, f"{lab}: the test split holds one class only: no ROC-AUC.")
                continue
            if len(np.unique(y_tr[mask])) < 2:
                entry["auc"][lab] = float("nan")
                _note(notes, f"{lab} at {100 * frac:g} %: the labeled rows hold one class only: no ROC-AUC.")
                continue
            if frac >= 1.0:
                model = fit_quiet(make_rf(s), X[train], y_tr)
            else:
                model = fit_quiet(self_training(make_rf(s), s), X[train], np.where(mask, y_tr, UNLABELED))
            entry["auc"][lab] = binary_metrics(y_te, positive_scores(model, X[test]))["roc_auc"]
        vals = [v for v in entry["auc"].values() if math.isfinite(v)]
        entry["avg"] = float(np.mean(vals)) if vals else float("nan")
        entry["n_labels_in_avg"] = len(vals)
        results["fractions"][f"{frac:g}"] = entry
        rows.append([f"{100 * frac:g} %", str(entry["n_labeled"]), str(entry["n_unlabeled"])]
                    + [pct(entry["auc"][lab]) for lab in labels] + [pct(entry["avg"])])
    notes.insert(0, f"Random forest ({s.rf_trees} trees), sklearn SelfTrainingClassifier (threshold "
                    f"{s.self_train_threshold}, at most {s.self_train_max_iter} rounds) below 100 %; {how}: "
                    f"{len(train)} train / {len(test)} test rows. Test positives: "
                    + ", ".join(f"{k} {v}" for k, v in results["positives_test"].items()) + ".")
    ours = Table("multilabel", "Multi-label toxicity, per-label ROC-AUC (%)",
                 ["labels", "labeled", "unlabeled"] + list(labels) + ["avg"], rows, notes)
    ref = Table("multilabel_paper", "Paper's reported numbers (Jigsaw official test set), not ours",
                ["model, labels"] + list(JIGSAW_LABELS) + ["avg"],
                [[r] + [f"{v:.2f}" for v in vals] + [f"{avg:.2f}"] for r, vals, avg in paper.PAPER_MULTILABEL],
                [f"For scale: Detoxify (bert-base) reports mean AUC {paper.DETOXIFY_JIGSAW_AUC} on Jigsaw."])
    return results, [ours, ref], []


def _note(notes, text):
    if text not in notes:
        notes.append(text)


# ---------------------------------------------------------------------- experiment 5
def exp_semi(run: Run):
    cfg, s = run.cfg, run.s
    task = run.task("domains")
    n_folds = cfg["SEMI_FOLDS"]
    check_folds(task.y, n_folds, "Semi-supervised toxic vs clean", task.class_names)
    folds = stratified_folds(task.y, n_folds, s.seed)
    results, rows = {"folds": n_folds, "fractions": {}}, []
    for frac in cfg["SEMI_FRACTIONS"]:
        auc = {"lr": [], "rf": []}
        sizes, pseudo = [], {"lr": [], "rf": []}
        for fold, (train, test) in enumerate(folds):
            mask = labeled_mask(task.y[train], frac, s.seed + fold)
            y_semi = np.where(mask, task.y[train], UNLABELED)
            sizes.append((len(train), int(mask.sum()), int((~mask).sum()), len(test)))
            for key, make in (("lr", lambda: make_lr(s)), ("rf", lambda: make_rf(s))):
                model = make() if frac >= 1.0 else self_training(make(), s)
                fit_quiet(model, task.X[train], task.y[train] if frac >= 1.0 else y_semi)
                auc[key].append(binary_metrics(task.y[test], positive_scores(model, task.X[test]))["roc_auc"])
                if frac < 1.0:
                    pseudo[key].append(int((model.labeled_iter_ > 0).sum()))
        n_train, n_lab, n_unl, n_test = (float(np.mean(c)) for c in zip(*sizes))
        entry = {"n_train": n_train, "n_labeled": n_lab, "n_unlabeled": n_unl, "n_test": n_test,
                 "lr": summarize(auc["lr"]), "rf": summarize(auc["rf"]),
                 "pseudo_labeled": {k: float(np.mean(v)) for k, v in pseudo.items() if v}}
        results["fractions"][f"{frac:g}"] = entry
        ref_lr, ref_rf = paper.PAPER_SEMI["lr"].get(frac), paper.PAPER_SEMI["rf"].get(frac)
        rows.append([f"{100 * frac:g} %", f"{n_train:.0f}", f"{n_lab:.0f}", f"{n_unl:.0f}", f"{n_test:.0f}",
                     pct(entry["lr"]["mean"], entry["lr"]["std"]), pct(entry["rf"]["mean"], entry["rf"]["std"]),
                     f"{ref_lr:.2f}" if ref_lr else "", f"{ref_rf:.2f}" if ref_rf else ""])
    notes = [f"Toxic vs clean domain text, {n_folds} stratified folds (sizes are per fold). Below 100 % the "
             f"classifier is sklearn's SelfTrainingClassifier (threshold {s.self_train_threshold}, at most "
             f"{s.self_train_max_iter} rounds) on the labeled + unlabeled training rows; 100 % is plain supervised.",
             "Paper columns: Llama-2-7B, their reported numbers."]
    t = Table("semi_supervised", "Semi-supervised toxic vs clean, ROC-AUC (%)",
              ["labels", "train", "labeled", "unlabeled", "test", "LR (ours)", "RF (ours)", "LR (paper)", "RF (paper)"],
              rows, notes)
    return results, [t], []


# ---------------------------------------------------------------------- experiment 6
def _cv_auc(X, y, folds, make) -> float:
    aucs = []
    for train, test in folds:
        model = fit_quiet(make(), X[train], y[train])
        aucs.append(binary_metrics(y[test], positive_scores(model, X[test]))["roc_auc"])
    return float(np.mean(aucs))


def exp_heatmaps(run: Run):
    cfg, s = run.cfg, run.s
    layers = run.corpus.layers
    n_folds = cfg["HEATMAP_FOLDS"]
    results, tables, figures = {"folds": n_folds, "layers": layers, "tasks": {}}, [], []
    keys = [k for k in ("domains", "domains+comments") if _task_or_none(run, k) is not None]
    if not keys:
        run.task("domains")  # raises the clear error
    for key in keys:
        task = run.task(key)
        check_folds(task.y, n_folds, f"Heatmaps ({TASK_LABELS[key]})", task.class_names)
        folds = stratified_folds(task.y, n_folds, s.seed)
        per_layer = [_cv_auc(task.X[:, 7 * i:7 * i + 7], task.y, folds, lambda: make_lr(s)) for i in range(len(layers))]
        prefix = [_cv_auc(task.X[:, :7 * (i + 1)], task.y, folds, lambda: make_lr(s)) for i in range(len(layers))]
        per_feature = np.array([oriented_auc(task.y, task.X[:, j]) for j in range(task.X.shape[1])])
        per_feature = per_feature.reshape(len(layers), len(FEATURE_STATS))
        results["tasks"][key] = {"per_layer": per_layer, "prefix": prefix,
                                 "per_feature": {f"L{l}": dict(zip(FEATURE_STATS, row.tolist()))
                                                 for l, row in zip(layers, per_feature)}}
        figures.append(plots.heatmap(per_feature.T, list(FEATURE_STATS), [str(l) for l in layers],
                                     f"Single-feature ROC-AUC, toxic vs {TASK_LABELS[key][8:]}",
                                     run.fig(f"heatmap_features_{_slug(key)}"), xlabel="layer"))
        tables.append(Table(f"heatmap_features_{_slug(key)}",
                            f"Single-feature ROC-AUC (%), orientation-free, toxic vs {TASK_LABELS[key][8:]}",
                            ["layer"] + list(FEATURE_STATS),
                            [[str(l)] + [pct(v, digits=1) for v in row] for l, row in zip(layers, per_feature)]))
    labels = [TASK_LABELS[k] for k in keys]
    lab = [str(l) for l in layers]
    figures.insert(0, plots.heatmap(np.array([results["tasks"][k]["per_layer"] for k in keys]), labels, lab,
                                    "LR on one layer's 7 features", run.fig("heatmap_layers"), xlabel="layer"))
    figures.insert(1, plots.heatmap(np.array([results["tasks"][k]["prefix"] for k in keys]), labels, lab,
                                    "LR on layers 0..l", run.fig("heatmap_prefix"), xlabel="last layer of the prefix"))
    cols = ["layer"] + [f"one layer: {TASK_LABELS[k][8:]}" for k in keys] + [f"layers 0..l: {TASK_LABELS[k][8:]}" for k in keys]
    rows = [[str(l)] + [pct(results["tasks"][k]["per_layer"][i]) for k in keys]
            + [pct(results["tasks"][k]["prefix"][i]) for k in keys] for i, l in enumerate(layers)]
    tables.insert(0, Table("heatmap_layers", "ROC-AUC (%) of logistic regression per layer and per prefix of layers",
                           cols, rows, [f"Mean over {n_folds} stratified folds. Single-feature tables: "
                                        "max(AUC, 1 - AUC) of the raw feature, no training."]))
    return results, tables, figures


def _task_or_none(run, key):
    try:
        return run.task(key)
    except AnalysisInputError:
        return None


def _slug(key: str) -> str:
    return key.replace("+", "_plus_")


# ---------------------------------------------------------------------- experiment 7
def exp_embedding(run: Run):
    cfg, s = run.cfg, run.s
    names = list(dict.fromkeys(parse_spec(sp)[0] for sp in cfg["TOXIC"] + cfg["CLEAN_DOMAINS"] + cfg["CLEAN_COMMENTS"]))
    names = [n for n in names if n in run.corpus.data]
    X = np.concatenate([run.corpus.data[n].X for n in names])
    labels = np.concatenate([np.full(len(run.corpus.data[n].X), n, dtype=object) for n in names])
    if len(X) < 5:
        raise AnalysisInputError(f"PCA / t-SNE: only {len(X)} rows.")
    Z = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(s.seed)
    pca_idx = np.sort(rng.choice(len(Z), size=min(len(Z), cfg["PCA_MAX_POINTS"]), replace=False))
    pca = PCA(n_components=2, svd_solver="full", random_state=s.seed).fit(Z)
    P = pca.transform(Z[pca_idx])
    ev = pca.explained_variance_ratio_
    figures = [plots.embedding(P, labels[pca_idx], f"PCA of the {X.shape[1]} spline features",
                               run.fig("pca"), (f"PC1 ({100 * ev[0]:.1f} %)", f"PC2 ({100 * ev[1]:.1f} %)"))]
    tsne_idx = np.sort(rng.choice(len(Z), size=min(len(Z), cfg["TSNE_MAX_POINTS"]), replace=False))
    perplexity = float(min(30.0, max(2.0, (len(tsne_idx) - 1) / 3.0)))
    T = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=s.seed, max_iter=cfg["TSNE_ITER"],
             n_jobs=s.n_jobs).fit_transform(Z[tsne_idx])
    figures.append(plots.embedding(T, labels[tsne_idx], f"t-SNE of the spline features ({len(tsne_idx)} points)",
                                   run.fig("tsne")))
    results = {"datasets": names, "n_points_pca": len(pca_idx), "n_points_tsne": len(tsne_idx),
               "pca_explained_variance_ratio": ev.tolist(), "tsne_perplexity": perplexity,
               "tsne_iter": cfg["TSNE_ITER"]}
    return results, [], figures


EXPERIMENT_FUNCS = {"detection": exp_detection, "shortcut": exp_shortcut, "domains": exp_domains,
                    "multilabel": exp_multilabel, "semi": exp_semi, "heatmaps": exp_heatmaps,
                    "embedding": exp_embedding}


def run_all(cfg, features_dir, log) -> int:
    """Every experiment on one model's features (a folder), or on several (a list of folders): then each
    experiment runs on every model and RESULTS.md shows their tables side by side (a "model" column, one
    block of rows per model, as the paper's Llama-2 / Mistral rows); the first model's results.json layout
    is unchanged, the others' go under results.json["other_models"] and their figures under figures/<model>/."""
    # BLAS/OpenMP pools limited (default one thread): on these small matrices extra BLAS threads only spin,
    # and on a busy machine they made LR and t-SNE 10-20x slower. N_JOBS parallelises the forests instead.
    dirs = [Path(features_dir)] if isinstance(features_dir, (str, Path)) else [Path(d) for d in features_dir]
    with threadpool_limits(limits=max(1, int(cfg["BLAS_THREADS"]))):
        runs = [_run_model(cfg, d, log, first=(i == 0)) for i, d in enumerate(dirs)]
    run, results, sections = runs[0]
    if len(runs) > 1:
        names = [r.corpus.info.get("model") or d.name for (r, _, _), d in zip(runs, dirs)]
        if len(set(names)) < len(names):
            raise AnalysisInputError(f"The feature folders {[str(d) for d in dirs]} hold the same model twice "
                                     f"({names}): pass one folder per model.")
        sections = _merge_sections(names, [sec for _, _, sec in runs])
        results["other_models"] = {n: res for n, (_, res, _) in zip(names[1:], runs[1:])}
    for _, _, tables, _, _ in sections:
        for t in tables:
            t.write(run.out)
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / "results.json", results)
    (run.out / "RESULTS.md").write_text(_results_md([r for r, _, _ in runs], results, sections))
    log(f"wrote {run.out / 'RESULTS.md'}, {run.out / 'results.json'}, tables/ and figures/")
    return 1 if results["skipped"] else 0


def _merge_sections(models: list[str], per_model: list[list]) -> list:
    """One section per experiment with every model's tables merged: same-named tables become one table
    with a leading "model" column (columns united in order, '-' where a model has none, e.g. the layers
    of a shallower model); the paper's reference tables (*_paper) appear once; a model for which the
    experiment was skipped gets a note saying why."""
    merged = []
    for parts in zip(*per_model):
        name = parts[0][0]
        tables, figures, errors, order = {}, [], [], []
        for model, (_, _, model_tables, model_figures, error) in zip(models, parts):
            figures += model_figures
            if error:
                errors.append(f"{model}: skipped: {error}")
            for t in model_tables:
                if t.name not in tables:
                    order.append(t.name)
                    tables[t.name] = []
                tables[t.name].append((model, t))
        out_tables = []
        for table_name in order:
            entries = tables[table_name]
            if table_name.endswith("_paper"):
                out_tables.append(entries[0][1])
                continue
            columns = list(dict.fromkeys(c for _, t in entries for c in t.columns))
            rows, notes = [], []
            for model, t in entries:
                where = {c: i for i, c in enumerate(t.columns)}
                rows += [[model] + [row[where[c]] if c in where else "-" for c in columns] for row in t.rows]
                notes += [n if len(entries) == 1 else f"{model}: {n}" for n in t.notes]
            first = entries[0][1]
            out_tables.append(Table(first.name, first.caption, ["model"] + columns, rows,
                                    list(dict.fromkeys(notes))))
        if out_tables and errors:
            out_tables[0].notes += errors
        merged.append((name, parts[0][1], out_tables, figures, None if out_tables else "; ".join(errors)))
    return merged


def _run_model(cfg, features_dir: Path, log, first: bool = True):
    import time
    log(f"features: {features_dir}")
    run = Run(cfg if first else dict(cfg, EARLY_DIR=None), features_dir, log)  # --early-dir: the first model's
    if not first:  # the other models' figures go to figures/<model>/ (same names as the first model's)
        run.fig_dir = run.out / "figures" / Path(features_dir).name
    info = run.corpus.info
    log(f"model {info.get('model')}, layers {layers_text(run.corpus.layers)}, "
        f"{sum(len(d.X) for d in run.corpus.data.values())} rows in {len(run.corpus.data)} files")
    results = {"setup": _setup(run, features_dir), "experiments": {}, "skipped": {}}
    sections = []
    for name in cfg["ONLY"]:
        log(f"[{TITLES[name]}]")
        start, cpu = time.perf_counter(), time.process_time()
        try:
            res, tables, figures = EXPERIMENT_FUNCS[name](run)
        except AnalysisInputError as err:
            log(f"  SKIPPED: {err}")
            results["skipped"][name] = str(err)
            sections.append((name, None, [], [], str(err)))
            continue
        results["experiments"][name] = res
        sections.append((name, res, tables, figures, None))
        elapsed = time.perf_counter() - start
        log(f"  done in {elapsed:.1f} s (CPU {time.process_time() - cpu:.1f} s)")
        if cfg["TIMING"]:
            run.timing.setdefault("experiment_s", {})[name] = elapsed
    results["notes"] = run.corpus.notes
    if cfg["TIMING"]:
        results["timing"] = run.timing
    return run, results, sections


def _setup(run: Run, features_dir: Path) -> dict:
    info, cfg = run.corpus.info, run.cfg
    return {
        "model": info.get("model"), "layers": run.corpus.layers, "n_layers_total": info.get("n_layers_total"),
        "dtype": info.get("dtype"), "max_length": info.get("max_length"),
        "early_exit_layers": run.corpus.early_layers if run.early_is_exit else None,
        "features_dir": _rel(features_dir), "preset": cfg["PRESET"], "quick": cfg["QUICK_MODE"],
        "rows_per_dataset": {n: len(d.X) for n, d in run.corpus.data.items()},
        "has_hidden": {n: d.hidden is not None for n, d in run.corpus.data.items()},
        "missing_datasets": run.corpus.missing,
        "toxic": cfg["TOXIC"], "clean_domains": cfg["CLEAN_DOMAINS"], "clean_comments": cfg["CLEAN_COMMENTS"],
        "multilabel": cfg["MULTILABEL"],
        "settings": {k: cfg[k] for k in ("SEED", "FOLDS", "RF_TREES", "LR_C", "MAX_ROWS_PER_DATASET", "FPR_TARGET",
                                         "SEMI_FRACTIONS", "SEMI_FOLDS", "SELF_TRAIN_THRESHOLD", "SELF_TRAIN_MAX_ITER",
                                         "MULTILABEL_FRACTIONS", "MULTILABEL_TEST_SIZE", "MULTILABEL_MAX_TRAIN",
                                         "DOMAIN_LABEL_FRACTION", "HEATMAP_FOLDS", "TSNE_MAX_POINTS",
                                         "PCA_MAX_POINTS", "EARLY_EXIT_LAYERS")},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__},
    }


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return str(path)


def _results_md(runs: list[Run], results: dict, sections) -> str:
    run, st = runs[0], results["setup"]
    lines = ["# Results", "",
             "Generated by `statistic_analysis.py` from cached feature files (no model was run). "
             "Every number in our tables comes from this run; tables labelled *paper* are the paper's reported "
             "numbers (arXiv 2312.01648), shown for comparison only.", "",
             f"- model: `{st['model']}`, layers {layers_text(st['layers'])} of {st['n_layers_total']}, "
             f"dtype {st['dtype']}, max_length {st['max_length']}",
             f"- features: `{st['features_dir']}` (preset `{st['preset']}`{', --quick' if st['quick'] else ''}); "
             f"fast detector: " + (f"early-exit run on layers {layers_text(st['early_exit_layers'])}"
                                   if st["early_exit_layers"] else "first layers sliced from the full run"),
             "- rows per dataset: " + ", ".join(f"{n} {c}" for n, c in st["rows_per_dataset"].items()),
             f"- toxic: {st['toxic']}; clean domains: {st['clean_domains']}; clean comments: {st['clean_comments']}; "
             f"multi-label: {st['multilabel']}",
             f"- seed {st['settings']['SEED']}, {st['settings']['FOLDS']} folds, {st['settings']['RF_TREES']} trees; "
             f"python {st['versions']['python']}, scikit-learn {st['versions']['scikit-learn']}", ""]
    for name, other in results.get("other_models", {}).items():  # the models shown beside the first one
        o = other["setup"]
        lines[-1:-1] = [f"- beside it, model `{o['model']}`: layers {layers_text(o['layers'])} of {o['n_layers_total']}, "
                        f"dtype {o['dtype']}, max_length {o['max_length']}, features `{o['features_dir']}`; rows per "
                        "dataset: " + ", ".join(f"{n} {c}" for n, c in o["rows_per_dataset"].items())
                        + (f"; notes: {' '.join(other['notes'])}" if other.get("notes") else "")]
    if results["notes"]:
        lines += ["Notes on the input:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    for name, res, tables, figures, error in sections:
        lines += [f"## {TITLES[name]}", ""]
        if error:
            lines += [f"**Skipped:** {error}", ""]
            continue
        for t in tables:
            lines += [t.markdown()]
        for f in figures:
            rel = Path(f).relative_to(run.out)
            lines += [f"![{Path(f).stem}]({rel.as_posix()})", ""]
    return "\n".join(lines + _id_section(runs) + system_sections(run.out))


def _id_section(runs: list[Run]) -> list[str]:
    """The ID experiment's verdict (ID_estimation.py + id_plotting.py) for each model whose summary exists,
    one block of rows per model."""
    from toxicity_id_eval import default_results_dir
    from toxicity_id_eval.id_plotting import model_suffix
    heading = ["## 8. Attention intrinsic dimension against prepended context", ""]
    lines, rows, figures = [], [], []
    for run in runs:
        model = run.corpus.info["model"]
        if run.cfg["ID_RESULTS"] is None or len(runs) > 1:  # where ID_estimation.py put this model's results
            summary = default_results_dir(model, run.cfg["QUICK_MODE"]) / "summary.json"
        else:
            folder = Path(run.cfg["ID_RESULTS"])
            folder = folder if folder.is_absolute() else Path(__file__).resolve().parent.parent / folder
            summary = folder / ("quick" if run.cfg["QUICK_MODE"] else "") / "summary.json"
        if not summary.exists():
            continue
        # id_plotting.py --category all stores the four categories pooled under "all"
        pooled = json.loads(summary.read_text()).get("categories", {}).get("all")
        if not pooled:
            lines.append(f"- `{_rel(summary)}` has no pooled entry: run `python toxicity_id_eval/id_plotting.py "
                         f"--category all --model {model}`.")
            continue
        for row in pooled["by_prepend_length"]:
            rows.append(f"| {model} | {row['prepend_words']} | {row['n']} | {row['context_length']:.0f} | "
                        f"{row['id_mean']:.1f} | {row['toxic_rate'] * 100:.0f} % | {row['refusal_rate'] * 100:.0f} % |")
        rho = pooled["spearman_context_vs_id_mean"]
        lines.append(f"- {model}: from `{_rel(summary)}` ({pooled['n']} prompts); Spearman(context length, mean ID) = "
                     + ("n/a" if rho["rho"] is None else f"{rho['rho']:.2f} (p = {rho['p']:.1g})")
                     + f"; verdict: {pooled['verdict']}.")
        name = f"id_all{model_suffix(model)}.png"
        if (run.out / "figures" / name).exists():
            figures.append(f"![id_all {model}](figures/{name})")
    if not rows and not lines:
        return []
    table = ["Answers labelled by alt-profanity-check; refusals by the phrase matcher of "
             "toxicity_id_eval/refusal.py (see toxicity_id_eval/README.md; section 9 has their intervals and tests).",
             "", "| model | words prepended | n | context (tokens) | mean ID over layers | toxic answers | refusals |",
             "|---|---|---|---|---|---|---|"] + rows if rows else []
    return heading + table + [""] + lines + ([""] + figures if figures else []) + [""]
