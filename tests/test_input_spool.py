"""input_spool.py: the tokenised, length-sorted spool of the input."""
import numpy as np
import pandas as pd

import input_spool as spool
from tiny_models import random_prompts, tiny_tokenizer


def test_spool_is_longest_first_with_the_tokenizers_ids(tmp_path):
    texts = random_prompts(23, seed=3, lo=1, hi=9)
    texts[5], texts[9] = "", "  \t "
    frame = pd.DataFrame({"body": texts, "label": np.arange(23)})
    tok = tiny_tokenizer()
    done = np.array([0, 7], dtype=np.int64)  # a resumed run: these are skipped
    result = spool.spool_input(frame, range(23), "body", done, tok, 6, 4, 5, tmp_path / "s")
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
