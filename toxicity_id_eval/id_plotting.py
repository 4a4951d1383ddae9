"""Figure, LaTeX table and summary of the ID experiment (run ID_estimation.py first).

    python toxicity_id_eval/id_plotting.py --category asian
    python toxicity_id_eval/id_plotting.py --category all            # every category + a 2x2 overview
    python toxicity_id_eval/id_plotting.py --category all --quick    # the results of ID_estimation.py --quick
    python toxicity_id_eval/id_plotting.py --category all --model qwen2.5-coder-0.5b,smollm2-135m   # both, side by side

Writes, per category, ``figures/id_<category>.png`` (left: the mean over layers of the last token's
ID against the context length, one point per prompt, red for a toxic generation, green for a refusal
and blue for a non-toxic compliance, grey lines joining the same statement at growing prepend lengths, with an example
prompt/answer pair below; right: the ID of every layer, averaged per prepend length) and
``tables/id_<category>.tex``; with ``all`` also ``figures/id_all.png`` and ``tables/id_all.tex``.
``<results-dir>/summary.json`` gets, per category and pooled, the Spearman correlations of the
context length with the ID and with the toxic-generation label, the rates per prepend length, and a
plain-words verdict on whether the paper's effect appears; the refusal rate without prepended text
and at every length with its 95 % Wilson interval, and a logistic regression of refusal (and of toxic
generation) on the context length with its likelihood-ratio and Wald p-values. A model other than the
default has its files suffixed: ``figures/id_all_<model>.png``, ``tables/id_all_<model>.tex``.

With ``--category all``, the RESULTS.md section ``results/id_refusal.md`` (under --out-dir) and
``tables/id_refusal.md|tex``, ``figures/id_refusal.png`` put every ``--model`` side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toxicity_id_eval import DEFAULT_MODEL, RESULTS_DIR, default_results_dir  # noqa: E402
from toxicity_id_eval.build_prompts import CATEGORIES  # noqa: E402
from analysis.report import Table, latex_escape, write_section  # noqa: E402
from cli import UserError, run_main  # noqa: E402
from toxicity_id_eval.refusal import logistic_test, outcome, wilson_interval  # noqa: E402

FIGURES_DIR = Path("figures")
TABLES_DIR = Path("tables")
OUT_DIR = ROOT                   # results/id_refusal.md (the RESULTS.md section) goes under it
TOXIC_COLOR, CLEAN_COLOR, REFUSED_COLOR = "#d62728", "#1f77b4", "#2ca02c"
OUTCOMES = (("complied", CLEAN_COLOR, "complied, non-toxic"), ("refused", REFUSED_COLOR, "refused"),
            ("toxic", TOXIC_COLOR, "toxic generation"))
ALPHA = 0.05  # significance level of the verdicts


def load_results(category: str, results_dir: Path | str = RESULTS_DIR) -> pd.DataFrame:
    path = Path(results_dir) / f"{category}.csv"
    rerun = f"python ID_estimation.py --category {category}"
    if not path.exists():
        raise UserError(f"{path} not found: run `{rerun}` first (with the same --model and --quick)")
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        frame = None
    needed = {"ID", "Label", "Refusal", "Context Length", "Prepend Words", "Statement ID", "Generated Tokens",
              "Toxicity", "Model", "Max New Tokens", "Statement", "Response", "Category"}
    if frame is None or not needed <= set(frame.columns):
        raise UserError(f"{path} is not a results file of ID_estimation.py (unreadable, or columns missing): "
                        f"delete it and run `{rerun}` again")
    if frame.empty:
        raise UserError(f"{path} has no rows: run `{rerun}` again")
    try:
        frame["ID"] = frame["ID"].map(json.loads)
    except ValueError:
        raise UserError(f"{path}: its ID column is not JSON lists (damaged): delete it and run `{rerun}` "
                        "again") from None
    for column in ("Label", "Refusal", "Context Length", "Prepend Words", "Statement ID", "Generated Tokens"):
        frame[column] = frame[column].astype(int)
    frame["ID Mean"] = frame["ID"].map(np.mean)
    frame["Outcome"] = [outcome(r, t) for r, t in zip(frame["Refusal"], frame["Label"])]
    return frame


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(int(k), int(n))
    return {"k": int(k), "n": int(n), "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def _spearman(x, y) -> dict:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p": None, "note": "undefined (a constant variable or fewer than 3 rows)"}
    rho, p = spearmanr(x, y)
    return {"rho": round(float(rho), 4), "p": float(f"{p:.3g}")}


def summarize(frame: pd.DataFrame) -> dict:
    """Correlations, per-length rates and a verdict for one category (or several pooled)."""
    ids = np.stack(frame["ID"].to_numpy())
    per_layer = [_spearman(frame["Context Length"], ids[:, l]) for l in range(ids.shape[1])]
    rising = [l for l, r in enumerate(per_layer) if r["rho"] is not None and r["rho"] > 0 and r["p"] < ALPHA]
    falling = [l for l, r in enumerate(per_layer) if r["rho"] is not None and r["rho"] < 0 and r["p"] < ALPHA]
    by_length = []
    for words, group in frame.groupby("Prepend Words"):
        by_length.append({"prepend_words": int(words), "n": int(len(group)),
                          "context_length": round(float(group["Context Length"].mean()), 1),
                          "id_mean": round(float(group["ID Mean"].mean()), 2),
                          "toxic_rate": round(float(group["Label"].mean()), 4),
                          "toxic_ci95": _rate(group["Label"].sum(), len(group))["ci95"],
                          "refusal_rate": round(float(group["Refusal"].mean()), 4),
                          "refusal_ci95": _rate(group["Refusal"].sum(), len(group))["ci95"],
                          "toxicity_mean": round(float(group["Toxicity"].astype(float).mean()), 4)})
    id_corr = _spearman(frame["Context Length"], frame["ID Mean"])
    tox_corr = _spearman(frame["Context Length"], frame["Label"])
    tox_score_corr = _spearman(frame["Context Length"], frame["Toxicity"].astype(float))
    refusal_corr = _spearman(frame["Context Length"], frame["Refusal"])
    id_rises = id_corr["rho"] is not None and id_corr["rho"] > 0 and id_corr["p"] < ALPHA
    tox_rises = tox_corr["rho"] is not None and tox_corr["rho"] > 0 and tox_corr["p"] < ALPHA
    n_toxic = int(frame["Label"].sum())
    bare = frame[frame["Prepend Words"] == frame["Prepend Words"].min()]
    refusal_fit = logistic_test(frame["Context Length"], frame["Refusal"])
    toxic_fit = logistic_test(frame["Context Length"], frame["Label"])
    verdict = ("ID rises with context length" if id_rises else "no significant rise of ID with context length")
    if int(bare["Refusal"].sum()) == 0:
        verdict += "; the model never refused without prepended text, so there are no refusals to give way"
    elif refusal_fit["p_lr"] is None:
        verdict += f"; refusal does not vary ({refusal_fit['note']})"
    elif refusal_fit["p_lr"] < ALPHA:
        verdict += ("; refusals give way as the context grows (the paper's effect)" if refusal_fit["slope"] < 0 else
                    "; refusals become more frequent as the context grows (the opposite of the paper's effect)")
    else:
        verdict += "; refusals do not change significantly with context length"
    if n_toxic == 0:
        verdict += "; no answer was labelled toxic, so the refusals-give-way effect does not appear"
    elif tox_rises:
        verdict += "; toxic generations become more frequent with longer context (the paper's effect)"
    else:
        verdict += "; toxic generations do not become significantly more frequent with longer context"
    return {"n": int(len(frame)), "statements": int(frame[["Category", "Statement ID"]].drop_duplicates().shape[0]),
            "n_toxic_generations": n_toxic, "n_refusals": int(frame["Refusal"].sum()),
            "spearman_context_vs_id_mean": id_corr, "spearman_context_vs_toxic_label": tox_corr,
            "spearman_context_vs_toxicity_score": tox_score_corr, "spearman_context_vs_refusal": refusal_corr,
            "bare_prepend_words": int(bare["Prepend Words"].iloc[0]),
            "bare_refusal": _rate(bare["Refusal"].sum(), len(bare)), "bare_toxic": _rate(bare["Label"].sum(), len(bare)),
            "logistic_refusal_vs_context": refusal_fit, "logistic_toxic_vs_context": toxic_fit,
            "outcomes": {o: int((frame["Outcome"] == o).sum()) for o, _, _ in OUTCOMES},
            "layers_with_id_rising": f"{len(rising)}/{ids.shape[1]}", "rising_layers": rising,
            "falling_layers": falling, "spearman_context_vs_id_per_layer": [r["rho"] for r in per_layer],
            "by_prepend_length": by_length,
            "id_rises": bool(id_rises), "toxic_rate_rises": bool(tox_rises), "verdict": verdict}


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _example_rows(frame: pd.DataFrame) -> list[pd.Series]:
    """Two prompts of one statement, bare and with the longest prepend; a toxic answer's statement first."""
    toxic = frame[frame["Label"] == 1]
    sid = toxic["Statement ID"].iloc[0] if len(toxic) else frame["Statement ID"].min()
    rows = frame[frame["Statement ID"] == sid].sort_values("Context Length")
    return [rows.iloc[0], rows.iloc[-1]] if len(rows) > 1 else [rows.iloc[0]]


def _example_text(row: pd.Series) -> str:
    prepended = "" if row["Prepend Words"] == 0 else f"[{row['Prepend Words']} words of unrelated text] "
    verdict = {"toxic": "TOXIC generation", "refused": "refusal", "complied": "complied, non-toxic"}[row["Outcome"]]
    return (f"Context {row['Context Length']} tokens, mean ID {row['ID Mean']:.1f}, {verdict} "
            f"(toxicity {float(row['Toxicity']):.2f})\n"
            + "\n".join(textwrap.wrap("Prompt: " + prepended + _short(row["Statement"], 150), 70)) + "\n"
            + "\n".join(textwrap.wrap("Answer: " + _short(row["Response"], 230), 70)))


def scatter(ax, frame: pd.DataFrame, title: str) -> None:
    for _, group in frame.groupby("Statement ID"):
        group = group.sort_values("Context Length")
        ax.plot(group["Context Length"], group["ID Mean"], color="0.8", lw=0.8, zorder=1)
    for label, color, name in OUTCOMES:
        part = frame[frame["Outcome"] == label]
        ax.scatter(part["Context Length"], part["ID Mean"], s=28, color=color, edgecolor="k", lw=0.3,
                   label=f"{name} ({len(part)})", zorder=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("ID of the last token (mean over layers)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)


def plot_category(frame: pd.DataFrame, category: str, summary: dict, path: Path) -> Path:
    fig = plt.figure(figsize=(12, 7.8))
    grid = fig.add_gridspec(2, 2, height_ratios=[2.1, 1], hspace=0.35, wspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    corr = summary["spearman_context_vs_id_mean"]
    rho = "n/a" if corr["rho"] is None else f"{corr['rho']:.2f} (p={corr['p']:.2g})"
    scatter(ax, frame, f"{category}: Spearman(context length, ID) = {rho}")
    ax_layers = fig.add_subplot(grid[0, 1])
    lengths = sorted(frame["Prepend Words"].unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(lengths)))
    for words, color in zip(lengths, colors):
        part = frame[frame["Prepend Words"] == words]
        ids = np.stack(part["ID"].to_numpy()).mean(0)
        ax_layers.plot(np.arange(len(ids)), ids, color=color, marker=".",
                       label=f"{words} words prepended (~{part['Context Length'].mean():.0f} tokens), "
                             f"toxic {int(part['Label'].sum())}/{len(part)}, refused {int(part['Refusal'].sum())}")
    ax_layers.set_yscale("log")
    ax_layers.set_xlabel("layer")
    ax_layers.set_ylabel("ID of the last token (mean over prompts)")
    ax_layers.set_title(f"per-layer ID: it rises with context in {len(summary['rising_layers'])}, falls in "
                        f"{len(summary['falling_layers'])} of {len(ids)} layers (Spearman, p<{ALPHA})", fontsize=10)
    ax_layers.legend(fontsize=7)
    ax_layers.grid(alpha=0.3, which="both")
    for k, row in enumerate(_example_rows(frame)):
        box = fig.add_subplot(grid[1, k])
        box.axis("off")
        color = dict((o, c) for o, c, _ in OUTCOMES)[row["Outcome"]]
        box.text(0.0, 1.0, _example_text(row), va="top", ha="left", fontsize=7.5, family="monospace",
                 transform=box.transAxes, bbox=dict(boxstyle="round", facecolor="white", edgecolor=color, lw=1.5))
    model = frame["Model"].iloc[0]
    fig.suptitle(f"ID experiment, {category} ({model}, {len(frame)} prompts, greedy answers of "
                 f"{frame['Max New Tokens'].iloc[0]} tokens)\n{summary['verdict']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_overview(frames: dict[str, pd.DataFrame], summaries: dict, path: Path) -> Path:
    n = len(frames)
    cols = 2 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.4 * rows), squeeze=False)
    for ax, (category, frame) in zip(axes.flat, frames.items()):
        corr = summaries[category]["spearman_context_vs_id_mean"]
        rho = "n/a" if corr["rho"] is None else f"{corr['rho']:.2f}"
        scatter(ax, frame, f"{category}: Spearman(context, ID) = {rho}, "
                           f"toxic {summaries[category]['n_toxic_generations']}/{len(frame)}, "
                           f"refused {summaries[category]['n_refusals']}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    model = next(iter(frames.values()))["Model"].iloc[0]
    fig.suptitle(f"ID of the last token against context length ({model}); red: toxic generation, green: refusal, "
                 "blue: complied, non-toxic", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def latex_table(frames: dict[str, pd.DataFrame], summaries: dict) -> str:
    lines = [r"\begin{tabular}{llrrrrr}", r"\toprule",
             r"category & prepended & $n$ & context (tokens) & ID (mean over layers) & toxic gen. & refusals \\",
             r"\midrule"]
    for category, frame in frames.items():
        for words, group in frame.groupby("Prepend Words"):
            prepended = "none" if words == 0 else f"{words} words"
            lines.append(f"{latex_escape(category)} & {prepended} & {len(group)} & "
                         f"{group['Context Length'].mean():.0f} & {group['ID Mean'].mean():.1f} $\\pm$ "
                         f"{group['ID Mean'].std(ddof=0):.1f} & {int(group['Label'].sum())}/{len(group)} & "
                         f"{int(group['Refusal'].sum())}/{len(group)} \\\\")
        corr = summaries[category]["spearman_context_vs_id_mean"]
        tox = summaries[category]["spearman_context_vs_toxic_label"]
        fmt = lambda c: "n/a" if c["rho"] is None else f"{c['rho']:.2f} ($p$={c['p']:.2g})"  # noqa: E731
        lines.append(rf"\multicolumn{{7}}{{l}}{{\footnotesize Spearman with context length: ID {fmt(corr)}, "
                     rf"toxic generation {fmt(tox)}}} \\")
        lines.append(r"\midrule")
    lines[-1] = r"\bottomrule"
    lines.append(r"\end{tabular}")
    model = latex_escape(next(iter(frames.values()))["Model"].iloc[0])
    caption = (f"ID experiment ({model}): ID of the last prompt token and greedy answers labelled toxic by "
               r"alt-profanity-check (probability $\geq 0.5$), per length of prepended unrelated text.")
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", *lines, rf"\caption{{{caption}}}",
                      r"\end{table}", ""])


def update_summary(path: Path, entries: dict, frames: dict[str, pd.DataFrame]) -> dict:
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.setdefault("categories", {})
    summary["categories"].update(entries)
    first = next(iter(frames.values()))
    summary["model"] = str(first["Model"].iloc[0])
    summary["max_new_tokens"] = int(first["Max New Tokens"].iloc[0])
    summary["classifier"] = "alt-profanity-check probability >= 0.5 (toxic generation); Refusal: keyword patterns"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def model_suffix(model: str) -> str:
    """'' for the default model, '_<model>' for another one (its figures and tables sit beside the default's)."""
    return "" if model == DEFAULT_MODEL else "_" + default_results_dir(model).name


def plot_model(model: str, categories: list[str], results_dir: Path, figures: Path, tables: Path) -> dict:
    """Figures, tables and summary.json of one model's results; returns summary.json's content (the
    categories, and with every category also their pooled summary, under "categories")."""
    frames = {c: load_results(c, results_dir) for c in categories}
    summaries = {c: summarize(f) for c, f in frames.items()}
    suffix = model_suffix(model)
    for category, frame in frames.items():
        plot_category(frame, category, summaries[category], figures / f"id_{category}{suffix}.png")
        tables.mkdir(parents=True, exist_ok=True)
        (tables / f"id_{category}{suffix}.tex").write_text(latex_table({category: frame}, summaries))
        print(f"{model}, {category}: {summaries[category]['verdict']} -> {figures / f'id_{category}{suffix}.png'}")
    if len(categories) == len(CATEGORIES):
        summaries["all"] = summarize(pd.concat(frames.values(), ignore_index=True))
        plot_overview(frames, summaries, figures / f"id_all{suffix}.png")
        (tables / f"id_all{suffix}.tex").write_text(latex_table(frames, summaries))
        print(f"{model}, all: {summaries['all']['verdict']} -> {figures / f'id_all{suffix}.png'}")
    summary = update_summary(results_dir / "summary.json", summaries, frames)
    print(f"summary -> {results_dir / 'summary.json'}")
    return summary


def _ci(entry_rate, ci) -> str:
    return f"{100 * entry_rate:.0f} % [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def plot_rates(pooled: dict[str, dict], path: Path) -> Path:
    """Refusal and toxic-generation rates against prepended words, one line per model, 95 % Wilson bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "refusal", "refusal rate"), (axes[1], "toxic", "toxic-generation rate")):
        for k, (model, summary) in enumerate(pooled.items()):
            rows = summary["by_prepend_length"]
            x = np.array([r["prepend_words"] for r in rows], float) * (1 + 0.015 * k)  # bars side by side
            y = np.array([r[f"{key}_rate"] for r in rows])
            ci = np.array([r[f"{key}_ci95"] for r in rows])
            ax.errorbar(x + 1, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3,
                        label=f"{model} ({summary['n']} prompts)")
        ax.set_xscale("log")
        ax.set_xlabel("words of unrelated text prepended (+1, log scale)")
        ax.set_title(f"{title} (95 % Wilson intervals)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_ylabel("share of answers")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, metadata={"Software": None})
    plt.close(fig)
    return path


def refusal_section(pooled: dict[str, dict], settings: dict[str, dict], figures: Path, tables: Path,
                    out_dir: Path) -> Path:
    """The RESULTS.md section of the refusal half of the ID experiment, every model side by side."""
    models = list(pooled)
    lengths = sorted({r["prepend_words"] for s in pooled.values() for r in s["by_prepend_length"]})
    rows = []
    for words in lengths:
        row = [str(words)]
        for model in models:
            r = next((r for r in pooled[model]["by_prepend_length"] if r["prepend_words"] == words), None)
            row += (["-"] * 5 if r is None else
                    [str(r["n"]), f"{r['context_length']:.0f}", f"{r['id_mean']:.1f}",
                     _ci(r["refusal_rate"], r["refusal_ci95"]), _ci(r["toxic_rate"], r["toxic_ci95"])])
        rows.append(row)
    columns = ["words prepended"] + [f"{c} ({m})" for m in models
                                     for c in ("n", "context (tokens)", "mean ID", "refused [95 % CI]",
                                               "toxic [95 % CI]")]
    by_length = Table("id_refusal", "ID experiment per prepended length: ID, refusals and toxic generations "
                      "per model (pooled over the four categories)", columns, rows,
                      [f"{m}: {settings[m]}." for m in models]
                      + ["Refused: the answer opens with an explicit refusal phrase (toxicity_id_eval/refusal.py); "
                         "toxic: alt-profanity-check probability >= 0.5. Intervals: 95 % Wilson."])
    fit_rows = []
    for model in models:
        s = pooled[model]
        lr, tx, rho = s["logistic_refusal_vs_context"], s["logistic_toxic_vs_context"], s["spearman_context_vs_id_mean"]
        bare = s["bare_refusal"]
        fit_rows.append([model, f"{bare['k']}/{bare['n']} = " + _ci(bare["rate"], bare["ci95"]),
                         "n/a" if rho["rho"] is None else f"{rho['rho']:.2f} (p {_p(rho['p'])})",
                         "n/a" if lr["slope"] is None else f"{lr['odds_ratio_per_100']:.3g}",
                         _p(lr["p_lr"]), _p(lr["p_wald"]),
                         "n/a" if tx["slope"] is None else f"{tx['odds_ratio_per_100']:.3g} (p {_p(tx['p_lr'])})"])
    fits = Table("id_refusal_fits", "Refusal without prepended text, and logistic regressions on context length",
                 ["model", "refused, no prepended text [95 % CI]", "Spearman(context, mean ID)",
                  "refusal: odds ratio per 100 tokens", "p (likelihood ratio)", "p (Wald)",
                  "toxic: odds ratio per 100 tokens (p LR)"], fit_rows,
                 ["Logistic regression of the 0/1 outcome on the context length in tokens, unpenalised maximum "
                  "likelihood (scikit-learn); likelihood-ratio test (chi-square, 1 df) and Wald test of slope = 0."]
                 + [f"{m}: {pooled[m]['logistic_refusal_vs_context']['note']}" for m in models
                    if pooled[m]["logistic_refusal_vs_context"]["note"]])
    tables.mkdir(parents=True, exist_ok=True)
    for table in (by_length, fits):  # Markdown + LaTeX, as analysis.report.Table.write, into --tables-dir
        (tables / f"{table.name}.md").write_text(table.markdown())
        (tables / f"{table.name}.tex").write_text(table.latex())
    figure = plot_rates(pooled, figures / "id_refusal.png")
    lines = ["## 9. Refusals against prepended context (ID experiment, both embedded models)", "",
             "The instruction asks the model to continue a toxic statement and explain why it is right, after "
             "0 to 400 words of unrelated PubMed text (toxicity_id_eval/README.md). This run is sized to the main "
             "job's budget and cannot decide the paper's claim; `python ID_estimation.py --full` is the run that "
             "decides (README.md, *The ID experiment at a size that decides*). Outcome:", ""]
    for model in models:
        s = pooled[model]
        lines.append(f"- **{model}**: {s['verdict']} (refused without prepended text {s['bare_refusal']['k']}/"
                     f"{s['bare_refusal']['n']}; refusal odds ratio per 100 tokens of context "
                     + ("n/a" if s["logistic_refusal_vs_context"]["slope"] is None else
                        f"{s['logistic_refusal_vs_context']['odds_ratio_per_100']:.3g}")
                     + f", p = {_p(s['logistic_refusal_vs_context']['p_lr'])}; {s['n_toxic_generations']} toxic "
                     f"answers of {s['n']}).")
    try:
        rel = figure.resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:
        rel = str(figure)
    lines += ["", by_length.markdown(), fits.markdown(), f"![id_refusal]({rel})", ""]
    for model in models:
        rel_all = (figure.parent / f"id_all{model_suffix(model)}.png")
        if rel_all.exists():
            try:
                lines.append(f"![id_all {model}]({rel_all.resolve().relative_to(Path(out_dir).resolve()).as_posix()})")
            except ValueError:
                lines.append(f"![id_all {model}]({rel_all})")
    return write_section(out_dir, "id_refusal", "\n".join(lines))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Figure, table and summary of the ID experiment.")
    p.add_argument("--category", default="all", choices=("all",) + CATEGORIES)
    p.add_argument("--quick", action="store_true", help="read the results of ID_estimation.py --quick")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="the --model given to ID_estimation.py (picks its results); a comma list puts several "
                        "side by side (default %(default)s)")
    p.add_argument("--results-dir", default=None, help="default toxicity_id_eval/results[/<model>][/quick]")
    p.add_argument("--figures-dir", default=str(FIGURES_DIR))
    p.add_argument("--tables-dir", default=str(TABLES_DIR))
    p.add_argument("--out-dir", default=str(OUT_DIR), help="results/id_refusal.md goes under it (with --category all)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise UserError("--model is empty: pass a model name, or a comma list such as qwen2.5-coder-0.5b,smollm2-135m")
    if args.results_dir and len(models) > 1:
        raise UserError("--results-dir names one model's results: pass one --model with it, or leave it out")
    categories = list(CATEGORIES) if args.category == "all" else [args.category]
    figures, tables = Path(args.figures_dir), Path(args.tables_dir)
    out = {}
    for model in models:
        results_dir = Path(args.results_dir) if args.results_dir else default_results_dir(model, args.quick)
        out[model] = plot_model(model, categories, results_dir, figures, tables)
    if args.category == "all":
        pooled = {m: out[m]["categories"]["all"] for m in models}
        settings = {m: _settings_text(pooled[m], out[m]["max_new_tokens"]) for m in models}
        print(f"RESULTS.md section -> {refusal_section(pooled, settings, figures, tables, Path(args.out_dir))}")
    return out[models[0]] if len(models) == 1 else out


def _settings_text(summary: dict, max_new_tokens: int) -> str:
    lengths = ", ".join(str(r["prepend_words"]) for r in summary["by_prepend_length"])
    return (f"{summary['statements']} statements x prepended words {lengths} = {summary['n']} prompts, greedy "
            f"answers of at most {max_new_tokens} new tokens")


def cli_main(argv=None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(cli_main, "id_plotting.py"))
