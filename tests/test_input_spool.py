"""input_spool.py: the tokenised, length-sorted spool of the input, and passes in a child process."""
import os
import sys

import numpy as np
import pandas as pd
import pytest

import input_spool as spool
from tiny_models import random_prompts, tiny_tokenizer

needs_fork = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="passes run in a child on Linux only")


def _pid_and(value):
    return os.getpid(), value


def _fail(message):
    raise KeyError(message)


def _die():
    os._exit(3)


@needs_fork
def test_run_in_child_returns_the_result_and_raises_the_error():
    pid, value = spool.run_in_child(_pid_and, {"a": np.arange(3)})
    assert pid != os.getpid() and value["a"].tolist() == [0, 1, 2]
    with pytest.raises(KeyError, match="no such column") as error:
        spool.run_in_child(_fail, "no such column")
    assert any("In the child process" in note for note in getattr(error.value, "__notes__", []))
    with pytest.raises(RuntimeError, match=r"died \(exit code 3\).*SPLINE_NO_FORK=1"):
        spool.run_in_child(_die)


def test_run_in_child_can_run_here(monkeypatch):
    monkeypatch.setenv("SPLINE_NO_FORK", "1")
    assert spool.run_in_child(_pid_and, 5) == (os.getpid(), 5)


@pytest.mark.parametrize("fork", ["0", "1"])  # the same spool, made in a child or here
def test_spool_is_longest_first_with_the_tokenizers_ids(tmp_path, monkeypatch, fork):
    monkeypatch.setenv("SPLINE_NO_FORK", "0" if fork == "1" else "1")
    texts = random_prompts(23, seed=3, lo=1, hi=9)
    texts[5], texts[9] = "", "  \t "
    frame = pd.DataFrame({"body": texts, "label": np.arange(23)})
    tok = tiny_tokenizer()
    done = np.array([0, 7], dtype=np.int64)  # a resumed run: these are skipped
    result = spool.run_in_child(spool.spool_input, frame, range(23), "body", done, tok, 6, 4, 5, tmp_path / "s")
    assert (result["empty"], result["todo"], result["no_tokens"]) == (2, 19, 0)
    tables = [spool.read_chunk(path) for path in result["files"]]
    assert [t.num_rows for t in tables] == [5, 5, 5, 4] and result["n_rows"] == 19
    rows = pd.concat([t.drop_columns([spool.TOKENS]).to_pandas() for t in tables], ignore_index=True)
    ids = [row for t in tables for row in t.column(spool.TOKENS).to_pylist()]
    expected = [i for i in range(23) if i not in (0, 5, 7, 9)]
    full = [len(texts[i].split()) for i in expected]
    order = [expected[j] for j in np.argsort([-min(n, 6) for n in full], kind="stable")]
    assert rows["row_id"].tolist() == order  # longest first (truncated to 6), ties in input order
    assert rows["label"].tolist() == order and rows["text"].tolist() == [texts[i] for i in order]
    assert ids == [tok(texts[i])["input_ids"][:6] for i in order]
    assert rows["n_tokens"].tolist() == [len(x) for x in ids]
    assert rows["truncated"].tolist() == [len(texts[i].split()) > 6 for i in order]
    assert result["truncated"] == sum(n > 6 for n in full)
    assert not list((tmp_path / "s").glob("staged-*"))  # only the chunks stay
