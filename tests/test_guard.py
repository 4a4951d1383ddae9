"""The toxicity guard (guard.py): save/load, the shape check, in-pass scores equal to a separate pass,
on_flag="stop", generate untouched when nothing is flagged, and the command line's model-shape refusal."""
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import guard as G
from cli import UserError, run_main
from instrument import instrument
from tests.tiny_models import random_prompts, tiny_stock_model, tiny_tokenizer

FEATURE_SETS = ["paper", "extended", "paper+extended"]


def _fitted(features="paper", layers="all", seed=0, family="llama"):
    model = instrument(tiny_stock_model(family, seed=seed))
    tok = tiny_tokenizer()
    texts = random_prompts(60, seed=1, lo=2, hi=12)
    # A learnable label: whether the text holds one of a few words (the guard need not be good, only real).
    labels = [int(any(w in t.split() for w in ("w1", "w2", "w3", "w4", "w5"))) for t in texts]
    guard = G.SplineGuard(features=features, layers=layers).fit_texts(model, tok, texts, labels, name="tiny")
    return guard, model, tok


def _split_threshold(guard, model, tok, prompts):
    """Set the threshold between the prompts' scores, so that some are flagged and some not."""
    scores = np.sort(guard.score(model, tok, prompts))
    guard.threshold_ = float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)
    return guard


def _close(a, b):
    # float32 features (sums over <= 12 tokens of values <= 1) through a float64 linear map: the scores of two
    # passes that batch the same rows differently agree to float32 rounding of the features times the
    # weights' size; a gate value within rounding of 0 may flip one frac count (1/64), which would show far
    # above this and fail the test, as it should be looked at.
    return np.allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_save_load_round_trips_bit_exactly_without_pickle(tmp_path, features):
    guard, model, tok = _fitted(features)
    path = G.save(guard, tmp_path / "g.guard.safetensors")
    back = G.load(path)
    for name in ("mean_", "scale_", "coef_"):
        assert getattr(back, name).dtype == np.float64
        assert getattr(back, name).tobytes() == getattr(guard, name).tobytes()
    assert back.intercept_ == guard.intercept_ and back.threshold_ == guard.threshold_
    assert back.layers == guard.layers and back.features == guard.features and back.info == json.loads(json.dumps(guard.info))
    prompts = random_prompts(7, seed=5)
    assert back.score(model, tok, prompts).tobytes() == guard.score(model, tok, prompts).tobytes()
    # The file is a safetensors header (JSON) and raw float64 buffers, nothing else: no pickle stream.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header.pop("__metadata__")["spline_guard"])
    assert meta["format"] == G.FORMAT and meta["target_fpr"] == 0.01
    assert {"model", "shape", "training_datasets", "library_versions"} <= set(meta["info"])
    assert 8 + n + sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values()) == len(raw)
    assert b"\x80\x04" not in raw[:8 + n] and all(v["dtype"] == "F64" for v in header.values())


def test_a_guard_for_another_model_shape_is_refused(tmp_path):
    guard, _, tok = _fitted()
    other = instrument(tiny_stock_model("llama", num_hidden_layers=3))
    with pytest.raises(UserError, match=r"fitted for tiny \(llama, 4 layers.*the model given is llama, 3 layers.*n_layers"):
        guard.score(other, tok, ["w1 w2"])
    with pytest.raises(UserError, match="differs in hidden_size"):
        guard.attach(instrument(tiny_stock_model("llama", hidden_size=48)))


def test_the_threshold_keeps_the_calibration_fpr_at_most_the_target():
    scores = np.linspace(0, 1, 201)
    t = G.calibrated_threshold(scores, 0.01)
    assert (scores > t).sum() == 2 and (scores > t).mean() <= 0.01
    assert (scores > G.calibrated_threshold(scores[:50], 0.01)).sum() == 151  # 50 rows: none may be above


def test_cross_calibration_scores_every_clean_row_out_of_fold_and_holdout_remains_an_option():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40, int), np.zeros(200, int)]
    X = rng.normal(size=(240, 5)) + y[:, None] * 1.5
    cross = G.SplineGuard().fit(X, y)
    assert cross.info["calibration"] == "cross" and cross.info["n_calibration_clean"] == 200
    assert cross.info["n_train"] == 240 and cross.info["calibration_fpr"] <= 0.01
    holdout = G.SplineGuard(calibration="holdout").fit(X, y)
    assert holdout.info["n_calibration_clean"] == 60 and holdout.info["n_train"] == 180
    # the held-out share's largest score is the threshold (0 of 60 may lie above it): a stricter cut than
    # the 2-of-200 out-of-fold one on the same scores' scale
    assert holdout.info["calibration_fpr"] == 0.0
    with pytest.raises(UserError, match="unknown calibration"):
        G.SplineGuard(calibration="split")


def test_a_regions_only_pass_records_the_same_region_projection_without_the_papers_statistics():
    from feature_io import FEATURE_SETS
    model = instrument(tiny_stock_model("llama", seed=2))
    tok = tiny_tokenizer()
    from input_spool import pad_batch
    ids = [tok(t)["input_ids"] for t in random_prompts(5, seed=4, lo=1, hi=9)]
    input_ids, mask = pad_batch(ids, tok.pad_token_id or 0, "left")
    both = model.spline_recorder.run(input_ids, mask, with_id=False, groups=FEATURE_SETS["extended"])
    alone = model.spline_recorder.run(input_ids, mask, with_id=False, groups=FEATURE_SETS["extended"], paper=False)
    assert alone["spline"] is None and torch.equal(alone["extended"], both["extended"])
    with pytest.raises(ValueError, match="paper=False needs some extended groups"):
        model.spline_recorder.run(input_ids, mask, with_id=False, paper=False)


def test_an_attached_guard_unhooks_the_decoding_steps_and_scores_every_call():
    from hooks import resolve
    guard, model, tok = _fitted("paper+extended")
    gates = [resolve(model, model.spline_recorder.gates[i])[1] for i in guard.layers]
    first, second = random_prompts(3, seed=5, lo=2, hi=8), random_prompts(4, seed=6, lo=2, hi=8)
    seen = []
    with guard.attach(model) as attached:
        assert all(len(g._forward_hooks) == 1 for g in gates)
        for prompts in (first, second):
            tok.padding_side = "left"
            enc = tok(prompts, return_tensors="pt", padding=True)
            attached.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
            assert all(len(g._forward_hooks) == 0 for g in gates)  # removed after the prefill was scored
            seen.append(attached.scores)
    assert all(len(g._forward_hooks) == 0 for g in gates)
    assert _close(seen[0], guard.score(model, tok, first)) and _close(seen[1], guard.score(model, tok, second))


@pytest.mark.parametrize("features,layers", [("paper", "all"), ("extended", "all"), ("paper+extended", "all"),
                                             ("paper", "0-1")])
def test_in_pass_scores_equal_a_separate_pass_left_padded_batch(features, layers):
    guard, model, tok = _fitted(features, layers)
    prompts = random_prompts(6, seed=3, lo=1, hi=10)
    separate = guard.score(model, tok, prompts)
    out = guard.generate(model, tok, prompts, max_new_tokens=3, do_sample=False)
    assert out.scores.shape == (6,) and _close(out.scores, separate)
    assert (out.flagged == (separate > guard.threshold_)).all() or not _close(separate, guard.threshold_)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_in_pass_scores_with_beam_search_and_sampling(family):
    guard, model, tok = _fitted(family=family)
    prompts = random_prompts(4, seed=4, lo=2, hi=9)
    separate = guard.score(model, tok, prompts)
    beams = guard.generate(model, tok, prompts, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.sequences.shape[0] == 8 and _close(beams.scores, separate)
    torch.manual_seed(0)
    sampled = guard.generate(model, tok, prompts, max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert _close(sampled.scores, separate)


def _left(tok, prompts):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    tok.padding_side = "right"
    return enc


def test_stop_generates_nothing_after_the_prefill_for_flagged_prompts_and_leaves_the_others():
    guard, model, tok = _fitted()
    prompts = random_prompts(8, seed=6, lo=2, hi=10)
    _split_threshold(guard, model, tok, prompts)
    enc = _left(tok, prompts)
    plain = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    out = guard.generate(model, tok, prompts, on_flag="stop", refusal="no.", max_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    width = enc["input_ids"].shape[1]
    assert 0 < out.flagged.sum() < len(prompts)
    for r, flagged in enumerate(out.flagged):
        if flagged:
            assert (out.sequences[r, width:] == tok.pad_token_id).all() and out.texts[r] == "no."
            assert torch.equal(out.sequences[r, :width], enc["input_ids"][r])
        else:
            assert torch.equal(out.sequences[r], plain[r])


def test_stop_with_every_prompt_flagged_ends_in_the_prefill():
    guard, model, tok = _fitted(layers="0-1")
    prompts = random_prompts(3, seed=7)
    guard.threshold_ = -1.0  # every score is above it
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))  # test-only probe
    try:
        out = guard.generate(model, tok, prompts, on_flag="stop", max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()
    assert out.flagged.all() and calls == [] and out.raw is None
    assert out.sequences.shape[1] == out.prompt_width and out.texts == [G.REFUSAL] * 3


@pytest.mark.parametrize("on_flag", ["continue", "stop"])
def test_generate_is_bit_identical_with_a_guard_attached_when_nothing_is_flagged(on_flag):
    model = tiny_stock_model("llama", seed=2)
    tok = tiny_tokenizer()
    prompts = random_prompts(5, seed=8, lo=1, hi=10)
    enc = _left(tok, prompts)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id, output_scores=True,
              return_dict_in_generate=True)
    stock = model.generate(**enc, **kw)  # before any instrumentation
    guard, _, _ = _fitted(seed=2)
    instrument(model)
    guard.threshold_ = 2.0  # above every probability: nothing flagged
    out = guard.generate(model, tok, prompts, on_flag=on_flag, **kw)
    assert not out.flagged.any()
    assert torch.equal(out.sequences, stock.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.raw.scores, stock.scores))


def test_the_command_line_refuses_a_guard_for_another_model(tmp_path, tiny_llama_dir, capsys):
    guard, _, _ = _fitted()
    guard.info["shape"]["n_layers"] = 30
    G.save(guard, tmp_path / "g.safetensors")
    (tmp_path / "in.txt").write_text("w1 w2\nw3\n")
    code = run_main(G.main, "guard.py", ["score", "--guard", str(tmp_path / "g.safetensors"), "--texts",
                                         str(tmp_path / "in.txt"), "--model", str(tiny_llama_dir), "--out",
                                         str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("guard.py: error:")]  # (beside loading bars)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "30 layers" in errors[0] and "fit a guard for this model" in errors[0]


def test_score_and_chat_from_the_command_line(tmp_path, tiny_llama_dir):
    from model_loading import load_model, load_tokenizer
    model, tok = load_model(str(tiny_llama_dir), device="cpu"), load_tokenizer(str(tiny_llama_dir))
    texts = random_prompts(40, seed=1, lo=2, hi=12)
    labels = [int("w1" in t.split() or "w2" in t.split()) for t in texts]
    guard = G.SplineGuard().fit_texts(model, tok, texts, labels, name=str(tiny_llama_dir))
    G.save(guard, tmp_path / "g.safetensors")
    (tmp_path / "in.txt").write_text("w1 w2\nw3 w4 w5\nw6\n")
    assert G.main(["score", "--guard", str(tmp_path / "g.safetensors"), "--texts", str(tmp_path / "in.txt"),
                   "--out", str(tmp_path / "s.csv")]) == 0
    import pandas as pd
    scores = pd.read_csv(tmp_path / "s.csv")
    assert list(scores.columns) == ["text", "score", "flag", "latency_s"] and len(scores) == 3
    assert np.allclose(scores["score"], guard.score(model, tok, ["w1 w2", "w3 w4 w5", "w6"]), atol=1e-12)
    args = G.build_parser().parse_args(["chat", "--guard", str(tmp_path / "g.safetensors"), "--max-new-tokens", "2"])
    shown = io.StringIO()
    assert G.cmd_chat(args, stdin=io.StringIO("w1 w2\nw7\n\n"), stdout=shown) == 0
    assert shown.getvalue().count("[guard ") == 2


def test_the_guard_bench_runs_in_its_tiny_mode(tmp_path):
    """Never how fast: only that every condition runs and the in-pass tokens are the unguarded ones."""
    import sys
    sys.path.insert(0, str(G.ROOT / "bench"))
    try:
        import bench_guard
    finally:
        sys.path.pop(0)
    assert bench_guard.main(["--tiny", "--out-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "guard_latest.json").read_text())
    assert res["in_pass_tokens_identical"] and set(res["conditions"]) == set(bench_guard.LABELS)
    assert {t["key"] for t in res["targets"]} == set(bench_guard.TARGETS)


@pytest.mark.slow
def test_a_guard_on_smollm2_scores_its_own_prefill_and_separates_slurs_from_pubmed():
    """End to end on the real model: fit on a few labelled texts, then generate scores equal the separate pass
    and on_flag="stop" refuses what the guard flags."""
    from data import load_dataset
    from model_loading import load_model, load_tokenizer
    model, tok = load_model("smollm2-135m", device="cpu"), load_tokenizer("smollm2-135m")
    toxic = load_dataset("slurs", limit=30, seed=0)["text"].astype(str).tolist()
    clean = load_dataset("pubmed", limit=30, seed=0)["text"].astype(str).tolist()
    guard = G.SplineGuard(layers="0-5", max_length=32)
    guard.fit_texts(model, tok, toxic[:24] + clean[:24], [1] * 24 + [0] * 24, name="smollm2-135m")
    prompts = toxic[24:27] + clean[24:27]
    prompts = [tok.decode(tok(p)["input_ids"][:32], skip_special_tokens=True) for p in prompts]
    separate = guard.score(model, tok, prompts)
    out = guard.generate(model, tok, prompts, on_flag="stop", max_new_tokens=3, do_sample=False)
    assert _close(out.scores, separate)
    assert separate[:3].mean() > separate[3:].mean()  # held-out slurs score above held-out abstracts
    assert [t == G.REFUSAL for t in out.texts] == list(out.flagged)


def test_fit_from_the_command_line_records_its_data_and_model(tmp_path, tiny_llama_dir):
    out = tmp_path / "g.safetensors"
    assert G.main(["fit", "--model", str(tiny_llama_dir), "--toxic", "slurs", "--clean", "pubmed,code", "--sample", "12",
                   "--max-length", "16", "--features", "paper", "--layers", "0-1", "--out", str(out),
                   "--features-dir", str(tmp_path / "f"), "--no-progress"]) == 0
    guard = G.load(out)
    assert guard.layers == [0, 1] and guard.features == "paper" and guard.max_length == 16
    sets = guard.info["training_datasets"]
    assert [(Path(d["file"]).stem, d["label"]) for d in sets] == [("slurs", "toxic"), ("pubmed", "clean"), ("code", "clean")]
    assert all(d["input_sha1"] and d["rows_sha1"] for d in sets) and guard.info["shape"]["n_layers"] == 4
    assert len(guard.coef_) == 14
