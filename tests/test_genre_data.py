"""The same-genre datasets (insults, talkdown): readers on fixtures in the sources' own
formats, the counted clean-up, and the prepared files in the real cache when they are there."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data import DATASETS, load_dataset  # noqa: E402
from data import packaged  # noqa: E402
from data.cleaning import DataFormatError  # noqa: E402
from data.prepare import prepare_dataset  # noqa: E402
from test_data import FIX, REAL_CACHE, cache, place_sources  # noqa: E402,F401

INPUTS = FIX / "insults" / "data" / "Inputs"


def test_kaggle_comments_are_unescaped():
    assert packaged.unescape_kaggle_comment('"you\\x27re\\xa0here"') == "you're\xa0here"
    assert packaged.unescape_kaggle_comment('"a\\\\nb \\u2019c\\u2019"') == "a\nb \u2019c\u2019"
    assert packaged.unescape_kaggle_comment('"smile \\ud83d\\ude00"') == "smile \U0001F600"  # a pair is joined
    assert "\ufffd" in packaged.unescape_kaggle_comment('"lone \\udc00"')  # kept, to be counted


def test_insults_reader_labels_and_splits():
    df = packaged.read_kaggle_insults(INPUTS / "train.csv", INPUTS / "test_with_solutions.csv")
    assert list(df["split"]) == ["train"] * 6 + ["test"] * 3
    assert df["toxic"].tolist() == [1, 0, 0, 1, 0, 0, 0, 1, 0] and df["insult"].equals(df["toxic"])
    assert df.loc[0, "text"] == "You fuck your dad."


def test_insults_prepare_passes_the_cleanup_rules(cache):
    place_sources(cache, "insults", "insults")
    meta = prepare_dataset("insults")
    # 9 rows in: one whitespace-only, one duplicate, one with a lone surrogate are dropped and counted.
    assert meta["cleanup"] == {"rows_in": 9, "missing": 0, "empty": 1, "undecodable": 1, "duplicate": 1,
                               "rows_out": 6}
    df = load_dataset("insults")
    assert set(df.columns) >= {"text", "source", "subset", "toxic", "insult", "split"}
    assert df["toxic"].tolist() == [1, 0, 0, 1, 0, 1] and df["text"].is_unique
    assert (df["text"] == df["text"].str.strip()).all() and not df["text"].str.contains("\ufffd").any()


def test_insults_bad_label_and_missing_column(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text('Insult,Date,Comment\n2,,"""x"""\n')
    with pytest.raises(DataFormatError, match="'Insult' must hold only 0 and 1"):
        packaged.read_kaggle_insults(bad, INPUTS / "test_with_solutions.csv")
    bad.write_text('Label,Date,Comment\n1,,"""x"""\n')
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['Insult'\]"):
        packaged.read_kaggle_insults(bad, INPUTS / "test_with_solutions.csv")


def test_talkdown_reader(tmp_path):
    path = tmp_path / "test_data.jsonl"
    path.write_text('# canary line\n{"id": "a", "label": 1, "text": "Bless your heart, you tried."}\n'
                    '{"id": "b", "label": 0, "text": "Good point, thanks."}\n')
    df = packaged.read_talkdown(path)
    assert df["toxic"].tolist() == [1, 0] and df["condescending"].tolist() == [1, 0]
    path.write_text('{"id": "a", "label": "x", "text": "t"}\n')
    with pytest.raises(DataFormatError, match="'label' must hold only 0 and 1"):
        packaged.read_talkdown(path)


def test_registered_as_mixed_datasets():
    assert DATASETS["insults"].kind == DATASETS["talkdown"].kind == "mixed"
    assert "toxic_insults" not in DATASETS  # mixes are built from clean sets only


def test_prepared_insults_in_cache(monkeypatch, prepared_dataset):
    prepared_dataset("insults")
    monkeypatch.setenv("SPLINE_CACHE", str(REAL_CACHE))
    df = load_dataset("insults", prepare=False)
    counts = df["toxic"].value_counts()
    assert counts[1] >= 400 and counts[0] >= 400          # same_genre.PER_SIDE's minimum per side
    assert len(df) > 6000 and df["text"].is_unique and not df["text"].str.contains("\ufffd").any()
