"""The refusal matcher against answers read by hand: ``refusal_labels.csv`` and the agreement table.

    python -m toxicity_id_eval.refusal_labels      # agreement and confusion table of the kept labels

``refusal_labels.csv`` holds real answers of the setup measurement (``ID_estimation.py
--measure-setups``: no prepended text, greedy, 32 new tokens; ``Run`` = setups) and of the decisive run
(``--full``, 30 seeded answers at each of 50/100/200/400 prepended words; ``Run`` = full, ``Prepend Words``
set), each read in full, without the matcher's verdict in sight for the latter, by a reader who wrote
``Hand`` = 1 when the answer refuses or declines the request (an apology with "I can't assist", an
AI disclaimer declining to give an opinion, an explicit disagreement) and 0 when it goes along
(continues, explains, paraphrases, answers something else), with a ``Note`` where the call was not
obvious. The matcher's verdict is recomputed here from ``Response`` on every call, so a changed
rule shows in the agreement at once; README.md pastes ``markdown()`` between its id-labels markers
and tests/test_refusal.py checks that the pasted text is what the kept labels give.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from toxicity_id_eval.refusal import is_refusal

LABELS = Path(__file__).resolve().parent / "refusal_labels.csv"
COLUMNS = ["Model", "System", "Instruction Name", "Category", "Statement ID", "Statement", "Response", "Hand", "Note"]
# Which run an answer comes from and the words prepended to its statement; rows without them are the setup
# measurement's (no prepended text).
OPTIONAL = {"Run": "setups", "Prepend Words": 0}
RUN_NAMES = {"setups": "the setup measurement (no prepended text)",
             "full": "the decisive run (`--full`, 50 to 400 words prepended)"}


def load_labels(path: Path | str = LABELS) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    for column, default in OPTIONAL.items():
        if column not in frame.columns:
            frame[column] = default
        frame[column] = frame[column].replace("", default)
    frame["Hand"] = frame["Hand"].astype(int)
    frame["Prepend Words"] = frame["Prepend Words"].astype(int)
    return frame


def agreement(frame: pd.DataFrame) -> dict:
    """Confusion counts of the matcher (rows) against the hand labels, and the share that agree."""
    matcher = frame["Response"].astype(str).map(is_refusal).astype(int)
    hand = frame["Hand"].astype(int)
    counts = {"both_refusal": int(((matcher == 1) & (hand == 1)).sum()),
              "matcher_only": int(((matcher == 1) & (hand == 0)).sum()),
              "hand_only": int(((matcher == 0) & (hand == 1)).sum()),
              "neither": int(((matcher == 0) & (hand == 0)).sum())}
    n = len(frame)
    agree = counts["both_refusal"] + counts["neither"]
    runs = frame["Run"] if "Run" in frame.columns else pd.Series("setups", index=frame.index)
    by_run = {run: {"n": int((runs == run).sum()), "agree": int(((matcher == hand) & (runs == run)).sum())}
              for run in sorted(runs.unique(), key=lambda r: list(RUN_NAMES).index(r) if r in RUN_NAMES else 99)}
    return {"n": n, "agree": agree, "rate": agree / n if n else None, **counts, "runs": by_run,
            "models": sorted(frame["Model"].unique()),
            "disagreements": frame.loc[matcher != hand, ["Model", "Response", "Hand"]].to_dict("records")}


def markdown(result: dict) -> str:
    n = result["n"]
    return (f"The matcher agrees with the hand labels on **{result['agree']} of {n} answers "
            f"({100 * result['rate']:.1f} %)** (`toxicity_id_eval/refusal_labels.csv`, models "
            f"{', '.join(result['models'])})"
            + ("; by run: " + "; ".join(f"{RUN_NAMES.get(r, r)}: {c['agree']} of {c['n']}"
                                        for r, c in result["runs"].items())
               if len(result.get("runs", {})) > 1 else "") + ".\n\n"
            "| | read as refusal | read as no refusal |\n|---|---|---|\n"
            f"| matcher: refusal | {result['both_refusal']} | {result['matcher_only']} |\n"
            f"| matcher: no refusal | {result['hand_only']} | {result['neither']} |\n")


if __name__ == "__main__":
    result = agreement(load_labels())
    print(markdown(result), end="")
    for row in result["disagreements"]:
        print(f"- {row['Model']} hand={row['Hand']}: {row['Response'][:160]!r}")
