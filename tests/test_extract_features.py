"""extract_features.py end to end on a tiny model: formats, bad input, resume, early exit."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import extract_features as ef
from cli import UserError, run_main
from feature_io import RunMismatchError, load_features, load_hidden, read_feature_metadata
from input_spool import select_rows
from tiny_models import random_prompts

PROMPTS = random_prompts(11, seed=7, lo=1, hi=14)


def run(tmp_path, texts=PROMPTS, name="out.parquet", **kw):
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")  # the same numbers on any machine; tests/test_cuda.py covers the GPU
    return ef.extract_features(texts, out=tmp_path / name, model=str(kw.pop("model")), **kw)


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_input_formats_and_passthrough(tmp_path, tiny_llama_dir, fmt):
    frame = pd.DataFrame({"body": PROMPTS, "label": np.arange(len(PROMPTS)) % 2})
    path = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(PROMPTS) + "\n")
        column = "text"
    else:
        {"csv": lambda: frame.to_csv(path, index=False), "jsonl": lambda: frame.to_json(path, orient="records",
         lines=True), "parquet": lambda: frame.to_parquet(path)}[fmt]()
        column = "body"
    out = run(tmp_path, path, model=tiny_llama_dir, text_column=column, save_hidden=True)
    spline, ids, meta = load_features(out)
    assert spline.shape == (len(PROMPTS), 4, 7) and ids.shape == (len(PROMPTS), 4)
    assert meta["text"].tolist() == PROMPTS and meta["row_id"].tolist() == list(range(len(PROMPTS)))
    if fmt != "txt":
        assert meta["label"].tolist() == frame["label"].tolist()
    assert load_hidden(out).shape == (len(PROMPTS), 32)
    info = read_feature_metadata(out)
    assert info["layers"] == [0, 1, 2, 3] and len(info["feature_names"]) == 28
    assert info["feature_names"][:2] == ["L0.frac_mean", "L0.frac_min"] and info["max_length"] == 1024
    assert (meta["latency_s"] > 0).all() and (meta["n_tokens"] > 0).all()


def test_features_match_the_model_and_batch_size_does_not_matter(tmp_path, tiny_llama_dir):
    a = load_features(run(tmp_path, model=tiny_llama_dir, batch_size=1, name="a.parquet"))
    b = load_features(run(tmp_path, model=tiny_llama_dir, batch_size=4, padding_side="left", name="b.parquet"))
    from model_loading import load_model, load_tokenizer
    model, tok = load_model(str(tiny_llama_dir), device="cpu"), load_tokenizer(str(tiny_llama_dir))
    ids = tok(PROMPTS[3], return_tensors="pt")["input_ids"]
    direct = model.spline_recorder.run(ids, torch.ones_like(ids))
    np.testing.assert_array_equal(a[0][3], direct["spline"][0].numpy())  # one prompt, unpadded: the same path
    # The batches of 4 are the longest-first order's: rebuilt here, they give b's rows bit for bit, and the
    # pre-activations' difference from each prompt alone bounds what batching may change (tests/rounding.py).
    from input_spool import pad_batch
    from rounding import assert_features_match, batch_pairs
    stock = saved_stock_model(tiny_llama_dir)
    tokens = [tok(text)["input_ids"] for text in PROMPTS]
    order = np.argsort([-len(t) for t in tokens], kind="stable")
    for start in range(0, len(order), 4):
        rows = order[start:start + 4]
        input_ids, mask = pad_batch([tokens[r] for r in rows], tok.pad_token_id, "left")
        np.testing.assert_array_equal(model.spline_recorder.run(input_ids, mask)["spline"].numpy(), b[0][rows])
        for r, (_, inside, batch_h) in zip(rows, batch_pairs(stock, input_ids, mask)):
            assert_features_match(b[0][r], b[1][r], a[0][r], a[1][r], inside, other_h=batch_h, float32_sides=2)


def saved_stock_model(folder):
    """The saved tiny model as its stock transformers class (the naive reference's model)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_empty_one_token_and_long_prompts(tmp_path, tiny_llama_dir, caplog):
    texts = ["w1 w2 w3", "", "   ", "w5", " ".join(f"w{i}" for i in range(40))]
    with caplog.at_level(logging.WARNING):
        out = run(tmp_path, texts, model=tiny_llama_dir, max_length=10)
    assert "skipping 2 empty or whitespace-only texts" in caplog.text
    assert "1 texts longer than 10 tokens were truncated" in caplog.text
    spline, _, meta = load_features(out)
    assert meta["row_id"].tolist() == [0, 3, 4]
    assert meta["truncated"].tolist() == [False, False, True] and meta["n_tokens"].tolist() == [3, 1, 10]
    one_token = spline[1]
    assert np.isfinite(spline).all() and (one_token[:, 3] == 0).all() and (one_token[:, 6] == 0).all()
    assert read_feature_metadata(out)["n_skipped_empty"] == 2


def test_bad_inputs_give_clear_errors(tmp_path, tiny_llama_dir, caplog):
    """In Python, bad input is a UserError naming the problem (tests/test_bad_input.py runs the command line)."""
    frame = tmp_path / "f.csv"
    pd.DataFrame({"comment": ["w1"]}).to_csv(frame, index=False)
    with pytest.raises(UserError, match=r"no column 'text'.*\['comment'\].*--text-column"):
        run(tmp_path, frame, model=tiny_llama_dir)
    assert run_main(ef.main, "extract_features.py", ["--texts", str(frame), "--model", str(tiny_llama_dir),
                                                     "--out", str(tmp_path / "x.parquet")]) == 2
    with pytest.raises(UserError, match="input file not found"):
        run(tmp_path, tmp_path / "missing.txt", model=tiny_llama_dir)
    with pytest.raises(UserError, match=r"--layers 2-9 is out of range: the model has 4 layers \(0..3\)"):
        run(tmp_path, model=tiny_llama_dir, layers="2-9")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"w1 w2\n\xff\xfe w3\n")
    with caplog.at_level(logging.WARNING):
        spline, _, meta = load_features(run(tmp_path, bad, model=tiny_llama_dir, name="bad.parquet"))
    assert len(meta) == 2 and "\ufffd" in meta["text"][1]
    assert f"{bad}: 1 line(s) hold bytes that are not UTF-8" in caplog.text


def test_resume_after_interrupt_loses_and_duplicates_nothing(tmp_path, tiny_llama_dir, kill_extraction):
    reference = load_features(run(tmp_path, model=tiny_llama_dir, batch_size=2, name="ref.parquet"))
    kill_extraction(5)  # warm-up + 3 batches done (one part of 4 prompts flushed), then killed
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=4, name="r.parquet")
    parts = sorted((tmp_path / "r.parquet.parts").glob("part-*.parquet"))
    assert len(parts) >= 1 and not (tmp_path / "r.parquet").exists()
    kill_extraction.undo()
    with pytest.raises(RunMismatchError, match="--overwrite"):
        run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=4, name="r.parquet", max_length=50)
    resumed = load_features(run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=4, name="r.parquet"))
    assert resumed[2]["row_id"].tolist() == list(range(len(PROMPTS)))
    np.testing.assert_array_equal(resumed[0], reference[0])  # the same batches on the same path: bit-identical
    np.testing.assert_array_equal(resumed[1], reference[1])
    assert not (tmp_path / "r.parquet.parts").exists()


def test_finished_output_is_reused_without_loading_the_model(tmp_path, tiny_llama_dir, monkeypatch):
    out = run(tmp_path, model=tiny_llama_dir)
    import model_loading
    monkeypatch.setattr(model_loading, "load_model", lambda *a, **k: pytest.fail("model loaded again"))
    assert run(tmp_path, model=tiny_llama_dir) == out


def test_layer_selection_and_sampling(tmp_path, tiny_llama_dir):
    full = load_features(run(tmp_path, model=tiny_llama_dir, name="full.parquet"))
    part = run(tmp_path, model=tiny_llama_dir, layers="0-1", with_id=False, name="p.parquet")
    spline, ids, _ = load_features(part)
    assert ids is None and spline.shape[1] == 2
    np.testing.assert_array_equal(spline, full[0][:, :2])  # the same batches, stopped after layer 1
    assert read_feature_metadata(part)["feature_names"][-1] == "L1.dist_std"
    sampled = load_features(run(tmp_path, model=tiny_llama_dir, sample=4, seed=1, name="s.parquet"))[2]
    assert len(sampled) == 4 and sampled["text"].tolist() == [PROMPTS[i] for i in sampled["row_id"]]
    from cli import parse_layer_spec
    assert parse_layer_spec("0-2,5", 8) == [0, 1, 2, 5] and parse_layer_spec("all", 3) == [0, 1, 2]
    assert str(ef.default_out("org/Model-7b", "rtp", [0, 1, 2], 30)) == "features/Model-7b/layers0-2/rtp.parquet"


def test_accelerate_launch_splits_rows_and_merges(tmp_path, tiny_llama_dir):
    """`accelerate launch` with 2 CPU processes gives the same file as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    texts = tmp_path / "in.txt"
    texts.write_text("\n".join(PROMPTS) + "\n")
    launcher = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, PYTHONPATH=str(Path(ef.__file__).parent), OMP_NUM_THREADS="1")  # one thread a rank
    done = subprocess.run([str(launcher), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", ef.__file__, "--texts", str(texts),
                           "--model", str(tiny_llama_dir), "--out", str(tmp_path / "multi.parquet"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    multi = load_features(tmp_path / "multi.parquet")
    single = load_features(run(tmp_path, texts, model=tiny_llama_dir, name="single.parquet"))
    assert multi[2]["row_id"].tolist() == list(range(len(PROMPTS)))
    # Each rank ran its own rows (every other one) as one longest-first batch on one thread; the single
    # process all of them in one batch on this process's threads. Rebuilt here, the ranks' batches give
    # multi's rows bit for bit; the pre-activations' difference between the two batchings bounds the rest.
    from input_spool import pad_batch
    from model_loading import load_model, load_tokenizer
    from naive_reference import gate_preactivations, naive_features
    from rounding import assert_features_match
    model, tok = load_model(str(tiny_llama_dir), device="cpu"), load_tokenizer(str(tiny_llama_dir))
    stock = saved_stock_model(tiny_llama_dir)
    tokens = [tok(text)["input_ids"] for text in PROMPTS]

    def batch(rows):
        rows = sorted(rows, key=lambda r: -len(tokens[r]))
        return rows, pad_batch([tokens[r] for r in rows], tok.pad_token_id, ef.PADDING_SIDE)

    def real(h, mask, i):
        return [layer[i][mask[i].numpy()] for layer in h]

    rows, (input_ids, mask) = batch(range(len(PROMPTS)))
    single_h = {r: real(gate_preactivations(stock, input_ids, attention_mask=mask)[0], mask, i)
                for i, r in enumerate(rows)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rank in (0, 1):
            rows, (input_ids, mask) = batch(range(rank, len(PROMPTS), 2))
            got = model.spline_recorder.run(input_ids, mask)["spline"].numpy()
            np.testing.assert_array_equal(got, multi[0][rows])
            rank_h = gate_preactivations(stock, input_ids, attention_mask=mask)[0]
            for i, r in enumerate(rows):
                inside = naive_features(stock, tokens[r], internals=True)[2]
                inside["h"] = single_h[r]
                assert_features_match(multi[0][r], multi[1][r], single[0][r], single[1][r], inside,
                                      other_h=real(rank_h, mask, i), float32_sides=2)
    finally:
        torch.set_num_threads(threads)
    assert not list(tmp_path.glob("multi.rank*"))


def test_replace_stale_reextracts_only_when_settings_changed(tmp_path, tiny_llama_dir, monkeypatch):
    out = run(tmp_path, model=tiny_llama_dir, max_length=50)
    first = out.stat().st_mtime_ns
    assert run(tmp_path, model=tiny_llama_dir, max_length=50, replace_stale=True).stat().st_mtime_ns == first
    run(tmp_path, model=tiny_llama_dir, max_length=6, replace_stale=True)
    assert read_feature_metadata(out)["max_length"] == 6


CHUNKED = random_prompts(37, seed=11, lo=1, hi=20)
CHUNKED[4], CHUNKED[20] = "", "   "  # skipped, counted


def _file(path):
    """Everything a feature file holds but the timings: raw rows in file order, schema, metadata."""
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    meta = read_feature_metadata(path)
    meta.pop("created")
    return table.drop_columns(["latency_s"]), meta


def test_chunks_give_the_same_file_as_one_pass(tmp_path, tiny_llama_dir):
    """Over more rows than a chunk: the same rows, features, batches and order as one length-sorted pass."""
    frame = pd.DataFrame({"body": CHUNKED, "label": np.arange(len(CHUNKED)) % 3,
                          "row_id": np.arange(len(CHUNKED)) + 100})  # an input row_id becomes input_row_id
    kw = dict(model=tiny_llama_dir, text_column="body", batch_size=3, max_length=12, save_hidden=True)
    one = run(tmp_path, frame, name="one.parquet", **kw)  # default chunk_size: every row in one chunk
    for chunk_size in (1, 5, 8):  # rounded to whole batches: 3, 3 and 6 rows a chunk
        chunked = run(tmp_path, frame, name=f"c{chunk_size}.parquet", chunk_size=chunk_size, **kw)
        (a, meta_a), (b, meta_b) = _file(one), _file(chunked)
        assert a.schema.equals(b.schema) and meta_a == meta_b
        assert a.equals(b)  # bit-identical features, same (longest-first) row order
    spline, ids, meta = load_features(one)
    assert meta["row_id"].tolist() == [i for i in range(len(CHUNKED)) if i not in (4, 20)]
    assert meta["input_row_id"].tolist() == (meta["row_id"] + 100).tolist()
    assert read_feature_metadata(one)["n_skipped_empty"] == 2 and meta["truncated"].any()
    assert not (tmp_path / "c8.parquet.parts").exists()


def test_resume_across_chunks(tmp_path, tiny_llama_dir, kill_extraction):
    reference = load_features(run(tmp_path, CHUNKED, model=tiny_llama_dir, batch_size=2, name="ref.parquet"))
    kill_extraction(7)  # warm-up + 5 batches: 2 chunks of 4 rows, then killed in the 3rd (its 2 done kept)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, CHUNKED, model=tiny_llama_dir, batch_size=2, chunk_size=4, flush_every=100, name="r.parquet")
    parts_dir = tmp_path / "r.parquet.parts"
    saved = pd.concat([pd.read_parquet(p, columns=["row_id"]) for p in sorted(parts_dir.glob("part-*.parquet"))])
    assert len(saved) == 10 and not (parts_dir / "input").exists()  # the spooled input is cleaned up
    kill_extraction.undo()
    resumed_path = run(tmp_path, CHUNKED, model=tiny_llama_dir, batch_size=2, chunk_size=3, name="r.parquet")
    resumed = load_features(resumed_path)
    assert resumed[2]["row_id"].tolist() == reference[2]["row_id"].tolist()
    np.testing.assert_array_equal(resumed[0], reference[0])
    np.testing.assert_array_equal(resumed[1], reference[1])
    assert _file(resumed_path)[0].equals(_file(tmp_path / "ref.parquet")[0])
    assert not parts_dir.exists()


def test_selected_rows_match_dataframe_sample():
    frame = pd.DataFrame({"x": np.arange(50)})
    for limit, sample, seed in [(None, None, 0), (30, None, 0), (None, 7, 3), (40, 39, 1), (10, 20, 0)]:
        expected = frame.iloc[:limit] if limit is not None else frame
        if sample is not None and sample < len(expected):
            expected = expected.sample(n=sample, random_state=seed).sort_values("x")
        assert list(select_rows(50, limit, sample, seed)) == expected["x"].tolist()


def test_files_and_parts_of_the_earlier_nullable_layout_still_load_and_resume(tmp_path, tiny_llama_dir, kill_extraction):
    """List columns are now declared without nulls (faster to read): files and interrupted runs written
    before, with nullable lists, load and resume to the same numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def nullable(table):
        fields = [pa.field(f.name, pa.list_(f.type.value_type, f.type.list_size)) if pa.types.is_fixed_size_list(f.type)
                  else f for f in table.schema]
        return table.cast(pa.schema(fields, metadata=table.schema.metadata))

    new = run(tmp_path, model=tiny_llama_dir, batch_size=2, name="new.parquet")
    assert not pq.read_schema(new).field("spline_features").nullable
    reference = load_features(new)
    old = tmp_path / "old.parquet"
    pq.write_table(nullable(pq.read_table(new)), old)
    assert pq.read_schema(old).field("spline_features").nullable
    for got in (load_features(old), load_features(new)):
        np.testing.assert_array_equal(got[0], reference[0])
        np.testing.assert_array_equal(got[1], reference[1])
        assert got[2].equals(reference[2])

    # An interrupted run whose finished parts have the old layout, resumed by this code.
    kill_extraction(5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=4, name="r.parquet")
    for part in (tmp_path / "r.parquet.parts").glob("part-*.parquet"):
        pq.write_table(nullable(pq.read_table(part)), part)
    kill_extraction.undo()
    resumed = load_features(run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=4, name="r.parquet"))
    np.testing.assert_array_equal(resumed[0], reference[0])  # the same batches on the same path: bit-identical
    np.testing.assert_array_equal(resumed[1], reference[1])


# -- stale caches: change one input, rerun into the same output ----------------------------------------
def test_interrupted_parts_of_other_texts_are_not_resumed(tmp_path, tiny_llama_dir, kill_extraction):
    """One text edited between the killed run and its rerun: the parts are refused (one line, the way out),
    and with replace_stale every row is of the new texts."""
    kill_extraction(4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=tiny_llama_dir, batch_size=2, flush_every=2, name="r.parquet")
    assert list((tmp_path / "r.parquet.parts").glob("part-*.parquet"))
    kill_extraction.undo()
    edited = list(PROMPTS)
    edited[0] = edited[0] + " w9"
    with pytest.raises(RunMismatchError, match=r"interrupted run with other settings \(input_sha1"):
        run(tmp_path, edited, model=tiny_llama_dir, batch_size=2, flush_every=2, name="r.parquet")
    again = load_features(run(tmp_path, edited, model=tiny_llama_dir, batch_size=2, flush_every=2, name="r.parquet",
                              replace_stale=True))
    fresh = load_features(run(tmp_path, edited, model=tiny_llama_dir, batch_size=2, name="fresh.parquet"))
    assert again[2]["text"].tolist() == edited
    np.testing.assert_array_equal(again[0], fresh[0])


def test_new_weights_in_the_same_model_folder_are_not_reported_as_current(tmp_path, tiny_llama_dir):
    import shutil
    from tiny_models import tiny_stock_model
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    before = load_features(run(tmp_path, model=folder))
    tiny_stock_model("llama", seed=1).save_pretrained(folder)  # retrained into the same folder
    with pytest.raises(RunMismatchError, match="model_files"):
        run(tmp_path, model=folder)
    after = load_features(run(tmp_path, model=folder, replace_stale=True))
    assert not np.array_equal(after[0], before[0])
