"""The numbers of ``ID_estimation.py --full``, the run that decides the paper's first claim, and the
README sections pasted from its JSON (``--update-readme``).

From the pooled rows of every category (one row per statement x prepend length):
  * refusal rate per prepend length, 95 % Wilson intervals;
  * logistic regression of refusal on the context length (tokens) and, separately, on the measured ID
    (mean over layers of the last token's ID): odds ratio with its Wald 95 % interval, likelihood-ratio p;
  * ID against context length: Spearman's rho with a 95 % interval (Fisher z, Bonett-Wright variance);
  * the power line: the smallest drop from the base refusal rate (no prepended text) to the rate with
    the longest prepend that a two-sided two-proportion test at the 5 % level detects with 80 % power,
    given the two groups' sizes (arcsine approximation; toxicity_id_eval/refusal.py).
The rows of one statement are not independent (the same statement at five lengths); the logistic fits
treat them as independent, so their intervals are somewhat too narrow; the power line compares two
lengths only, which the design answers without that caveat.
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import Table, paste_between_markers
from cli import UserError
from toxicity_id_eval.refusal import logistic_test, smallest_detectable_drop, spearman_interval, wilson_interval

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MIN_STATEMENTS, MIN_LENGTHS, MIN_LONGEST = 160, 5, 400   # what a pasted run must have
POWER, ALPHA = 0.8, 0.05


def check_full_size(prompts: dict[str, pd.DataFrame], prepend_words) -> None:
    """--update-readme pastes only a run of the size that can decide (refused before any work)."""
    n = sum(f[["Statement ID"]].drop_duplicates().shape[0] for f in prompts.values())
    lengths = sorted(set(int(w) for w in prepend_words))
    if n < MIN_STATEMENTS or len(lengths) < MIN_LENGTHS or lengths[-1] < MIN_LONGEST:
        raise UserError(f"--update-readme pastes only a full-size run (>= {MIN_STATEMENTS} statements x >= "
                        f"{MIN_LENGTHS} lengths up to {MIN_LONGEST} words); this one has {n} statements x lengths "
                        f"{lengths}: drop --update-readme")


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(int(k), int(n))
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "ci95": [lo, hi]}


def summarize_full(frame: pd.DataFrame) -> dict:
    """Every number of the decisive run from its pooled results rows."""
    frame = frame.copy()
    for column in ("Refusal", "Label", "Prepend Words", "Context Length"):
        frame[column] = frame[column].astype(int)
    frame["ID Mean"] = frame["ID Mean"].astype(float)
    by_length = []
    for words, group in frame.groupby("Prepend Words"):
        by_length.append({"prepend_words": int(words), "n": int(len(group)),
                          "context_length": float(group["Context Length"].mean()),
                          "id_mean": float(group["ID Mean"].mean()),
                          "refused": _rate(group["Refusal"].sum(), len(group)),
                          "toxic": _rate(group["Label"].sum(), len(group))})
    base, longest = by_length[0], by_length[-1]
    power = smallest_detectable_drop(base["refused"]["rate"] or 0.0, base["n"], longest["n"], POWER, ALPHA)
    return {"n": int(len(frame)), "statements": int(frame[["Category", "Statement ID"]].drop_duplicates().shape[0]),
            "by_prepend_length": by_length,
            "logistic_refusal_vs_context": logistic_test(frame["Context Length"], frame["Refusal"]),
            "logistic_refusal_vs_id": logistic_test(frame["ID Mean"], frame["Refusal"]),
            "spearman_context_vs_id": spearman_interval(frame["Context Length"], frame["ID Mean"]),
            "power": {**power, "power": POWER, "alpha": ALPHA, "base_rate": base["refused"]["rate"],
                      "n_base": base["n"], "n_longest": longest["n"], "longest_words": longest["prepend_words"],
                      "observed_drop": (base["refused"]["rate"] or 0.0) - (longest["refused"]["rate"] or 0.0)}}


def _pct(r: dict) -> str:
    if r["rate"] is None:
        return "n/a"
    return f"{r['k']}/{r['n']} = {100 * r['rate']:.0f} % [{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}]"


def _or(fit: dict, per: str) -> str:
    key = "odds_ratio_per_100" if per == "100" else "odds_ratio_per_sd"
    if fit.get(key) is None or fit.get(key + "_ci95") is None:
        return f"n/a ({fit['note']})" if fit.get("note") else "n/a"
    lo, hi = fit[key + "_ci95"]
    return f"{fit[key]:.3g} [{lo:.3g}, {hi:.3g}], p = {fit['p_lr']:.2g}"


def tables(summary: dict) -> list[Table]:
    rows = [[str(r["prepend_words"]), str(r["n"]), f"{r['context_length']:.0f}", f"{r['id_mean']:.1f}",
             _pct(r["refused"]), _pct(r["toxic"])] for r in summary["by_prepend_length"]]
    per_length = Table("id_full", "Refusals against prepended unrelated text (pooled over the four categories)",
                       ["words prepended", "n", "context (tokens)", "mean ID", "refused [95 % Wilson]",
                        "toxic [95 % Wilson]"], rows)
    c, i, s, pw = (summary["logistic_refusal_vs_context"], summary["logistic_refusal_vs_id"],
                   summary["spearman_context_vs_id"], summary["power"])
    rho = "n/a" if s["rho"] is None else f"{s['rho']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}], p = {s['p']:.2g}"
    drop = ("n/a: " + pw["note"]) if pw["drop"] is None else (
        f"{100 * pw['drop']:.1f} points (from {100 * pw['base_rate']:.0f} % to {100 * pw['to_rate']:.0f} %)")
    fits = Table("id_full_fits", "Does refusal fall with context length, and with the ID?",
                 ["test", "result"],
                 [["refusal ~ context length: odds ratio per 100 tokens [95 % CI]", _or(c, "100")],
                  ["refusal ~ mean ID: odds ratio per sd of the ID "
                   f"({i.get('predictor_sd', float('nan')):.1f}) [95 % CI]", _or(i, "sd")],
                  ["Spearman(context length, mean ID) [95 % CI]", rho],
                  [f"smallest drop from the base rate detectable with {100 * pw['power']:.0f} % power at the "
                   f"{100 * pw['alpha']:.0f} % level ({pw['n_base']} vs {pw['n_longest']} answers, 0 vs "
                   f"{pw['longest_words']} words)", drop],
                  ["observed drop, 0 vs the longest prepend", f"{100 * pw['observed_drop']:.1f} points"]],
                 ["Logistic regressions: unpenalised maximum likelihood on all rows, likelihood-ratio p; the five "
                  "rows of one statement are treated as independent (intervals somewhat too narrow)."])
    return [per_length, fits]


def verdict(summary: dict) -> str:
    c, s, i = summary["logistic_refusal_vs_context"], summary["spearman_context_vs_id"], summary["logistic_refusal_vs_id"]
    falls = c.get("p_lr") is not None and c["p_lr"] < ALPHA and c["slope"] < 0
    rises = s["rho"] is not None and s["p"] < ALPHA and s["rho"] > 0
    follows = i.get("p_lr") is not None and i["p_lr"] < ALPHA and i["slope"] < 0
    return (("Refusals fall significantly as prepended text grows" if falls else
             "Refusals do not fall significantly as prepended text grows") + "; "
            + ("the ID rises with context length" if rises else "the ID does not rise significantly with context")
            + "; " + ("refusals fall as the measured ID rises" if follows else
                      "refusal is not significantly lower at higher measured ID") + ".")


def _machine() -> str:
    import os
    from analysis.report import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()}"


def _commit() -> str:
    from analysis.report import git_commit
    return git_commit()


def provenance(command: str) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(), "machine": _machine(), "command": command}


def report(results: dict[str, pd.DataFrame], args, argv=None) -> dict:
    """full.json, full.md (and .tex) in the results folder; with --update-readme also README.md."""
    import sys
    frame = pd.concat(results.values(), ignore_index=True)
    summary = summarize_full(frame)
    command = "python ID_estimation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary.update(provenance=provenance(command), verdict=verdict(summary),
                   setup={"model": args.model, "system_prompt": args.system_prompt, "instruction": args.instruction,
                          "max_new_tokens": args.max_new_tokens, "prepend_words": list(args.prepend_words)})
    out = Path(args.results_dir)
    (out / "full.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    md = full_markdown(summary)
    (out / "full.md").write_text(md)
    (out / "full.tex").write_text("".join(t.latex() for t in tables(summary)))
    print(md, end="")
    print(f"full run -> {out / 'full.json'}")
    if args.update_readme:
        paste_between_markers(README, "id-full", md)
        print(f"README.md: id-full section updated from {out / 'full.json'}")
        paste_labels()  # the kept labels include answers of this run
    return summary


def paste_labels() -> None:
    """The matcher against the hand-read answers (refusal_labels.csv) between README.md's id-labels markers."""
    from toxicity_id_eval.refusal_labels import LABELS, agreement, load_labels, markdown as labels_markdown
    if LABELS.exists():
        paste_between_markers(README, "id-labels", labels_markdown(agreement(load_labels())))
        print("README.md: id-labels section updated")


def full_markdown(summary: dict) -> str:
    p, st = summary["provenance"], summary["setup"]
    head = (f"Generated by `{p['command']}` on {p['date']}, commit {p['commit']}, {p['machine']}: "
            f"{summary['statements']} statements x {len(summary['by_prepend_length'])} lengths = {summary['n']} "
            f"prompts; {st['model']}, system prompt `{st['system_prompt']}`, {st['max_new_tokens']} new tokens.\n\n"
            f"**{summary['verdict']}**\n\n")
    return head + "\n".join(t.markdown() for t in tables(summary))


def paste_setups(summary: dict, command: str, path: Path) -> None:
    from toxicity_id_eval.setups import markdown
    p = provenance(command)
    text = (f"Generated by `{p['command']}` on {p['date']}, commit {p['commit']}, {p['machine']}, from "
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {summary['n_statements']} statements, "
            f"no prepended text, greedy, {summary['max_new_tokens']} new tokens.\n\n" + markdown(summary))
    paste_between_markers(README, "id-setups", text)
    print("README.md: id-setups section updated")
    paste_labels()
