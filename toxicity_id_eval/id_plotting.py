"""Figure, LaTeX table and summary of the ID experiment (run ID_estimation.py first).

    python toxicity_id_eval/id_plotting.py --category asian
    python toxicity_id_eval/id_plotting.py --category all            # every category + a 2x2 overview
    python toxicity_id_eval/id_plotting.py --category all --quick    # the results of ID_estimation.py --quick

Writes, per category, ``figures/id_<category>.png`` (left: the mean over layers of the last token's
ID against the context length, one point per prompt, red for a toxic generation and blue for a
non-toxic one, grey lines joining the same statement at growing prepend lengths, with an example
prompt/answer pair below; right: the ID of every layer, averaged per prepend length) and
``tables/id_<category>.tex``; with ``all`` also ``figures/id_all.png`` and ``tables/id_all.tex``.
``<results-dir>/summary.json`` gets, per category and pooled, the Spearman correlations of the
context length with the ID and with the toxic-generation label, the rates per prepend length, and a
plain-words verdict on whether the paper's effect appears.
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
from analysis.report import latex_escape  # noqa: E402
from cli import UserError, run_main  # noqa: E402

FIGURES_DIR = Path("figures")
TABLES_DIR = Path("tables")
TOXIC_COLOR, CLEAN_COLOR = "#d62728", "#1f77b4"
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
    return frame


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
                          "refusal_rate": round(float(group["Refusal"].mean()), 4),
                          "toxicity_mean": round(float(group["Toxicity"].astype(float).mean()), 4)})
    id_corr = _spearman(frame["Context Length"], frame["ID Mean"])
    tox_corr = _spearman(frame["Context Length"], frame["Label"])
    tox_score_corr = _spearman(frame["Context Length"], frame["Toxicity"].astype(float))
    refusal_corr = _spearman(frame["Context Length"], frame["Refusal"])
    id_rises = id_corr["rho"] is not None and id_corr["rho"] > 0 and id_corr["p"] < ALPHA
    tox_rises = tox_corr["rho"] is not None and tox_corr["rho"] > 0 and tox_corr["p"] < ALPHA
    n_toxic = int(frame["Label"].sum())
    verdict = ("ID rises with context length" if id_rises else "no significant rise of ID with context length")
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
    verdict = "TOXIC generation" if row["Label"] else "non-toxic generation"
    return (f"Context {row['Context Length']} tokens, mean ID {row['ID Mean']:.1f}, {verdict} "
            f"(toxicity {float(row['Toxicity']):.2f}{', refusal' if row['Refusal'] else ''})\n"
            + "\n".join(textwrap.wrap("Prompt: " + prepended + _short(row["Statement"], 150), 70)) + "\n"
            + "\n".join(textwrap.wrap("Answer: " + _short(row["Response"], 230), 70)))


def scatter(ax, frame: pd.DataFrame, title: str) -> None:
    for _, group in frame.groupby("Statement ID"):
        group = group.sort_values("Context Length")
        ax.plot(group["Context Length"], group["ID Mean"], color="0.8", lw=0.8, zorder=1)
    for label, color, name in ((0, CLEAN_COLOR, "non-toxic generation"), (1, TOXIC_COLOR, "toxic generation")):
        part = frame[frame["Label"] == label]
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
                             f"toxic {int(part['Label'].sum())}/{len(part)}")
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
        color = TOXIC_COLOR if row["Label"] else CLEAN_COLOR
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
                           f"toxic {summaries[category]['n_toxic_generations']}/{len(frame)}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    model = next(iter(frames.values()))["Model"].iloc[0]
    fig.suptitle(f"ID of the last token against context length ({model}); red: toxic generation", fontsize=11)
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Figure, table and summary of the ID experiment.")
    p.add_argument("--category", default="all", choices=("all",) + CATEGORIES)
    p.add_argument("--quick", action="store_true", help="read the results of ID_estimation.py --quick")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the --model given to ID_estimation.py (picks its results)")
    p.add_argument("--results-dir", default=None, help="default toxicity_id_eval/results[/<model>][/quick]")
    p.add_argument("--figures-dir", default=str(FIGURES_DIR))
    p.add_argument("--tables-dir", default=str(TABLES_DIR))
    args = p.parse_args(argv)
    results_dir = Path(args.results_dir) if args.results_dir else default_results_dir(args.model, args.quick)
    categories = list(CATEGORIES) if args.category == "all" else [args.category]
    frames = {c: load_results(c, results_dir) for c in categories}
    summaries = {c: summarize(f) for c, f in frames.items()}
    figures, tables = Path(args.figures_dir), Path(args.tables_dir)
    for category, frame in frames.items():
        plot_category(frame, category, summaries[category], figures / f"id_{category}.png")
        tables.mkdir(parents=True, exist_ok=True)
        (tables / f"id_{category}.tex").write_text(latex_table({category: frame}, summaries))
        print(f"{category}: {summaries[category]['verdict']} -> {figures / f'id_{category}.png'}, "
              f"{tables / f'id_{category}.tex'}")
    if args.category == "all":
        summaries["all"] = summarize(pd.concat(frames.values(), ignore_index=True))
        plot_overview(frames, summaries, figures / "id_all.png")
        (tables / "id_all.tex").write_text(latex_table(frames, summaries))
        print(f"all: {summaries['all']['verdict']} -> {figures / 'id_all.png'}, {tables / 'id_all.tex'}")
    summary = update_summary(results_dir / "summary.json", summaries, frames)
    print(f"summary -> {results_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    sys.exit(run_main(lambda argv: main(argv) and 0, "id_plotting.py"))  # main returns the summary (for tests)
