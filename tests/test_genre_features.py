"""The richer statistics: each equals a naive float64 computation, a batch equals one prompt at a
time, and asking for them leaves the paper's 7 per layer exactly as they were."""
import numpy as np
import pytest
import torch

from feature_io import (FEATURE_GROUPS, FEATURE_SETS, LAST_TOKENS, QUANTILES, extended_feature_names,
                        load_extended, load_features, read_feature_metadata)
from naive_reference import gate_preactivations, naive_extended, naive_features
from rounding import assert_extended_match, batch_pairs
from spline_stats import region_projection
from test_spline_model import instrumented_copy, padded
from tiny_models import random_prompts, tiny_stock_model, tiny_tokenizer

ALL = FEATURE_SETS["candidates"]


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_extended_equals_naive_float64(family):
    stock = tiny_stock_model(family)
    model = instrumented_copy(family, stock)
    tok = tiny_tokenizer()
    n_layers = model.spline_recorder.n_layers
    d_units = model.spline_recorder.gates[0].weight.shape[0 if family != "gpt2" else 1]
    projections = [region_projection(d_units, i).double().numpy() for i in range(n_layers)]
    for prompt in random_prompts(5, seed=7, lo=1, hi=11):
        token_ids = tok(prompt)["input_ids"]
        want = naive_extended(stock, token_ids, QUANTILES, LAST_TOKENS, projections)
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)), groups=ALL)
        assert got["extended"].shape == (1, n_layers, sum(len(v) for v in FEATURE_GROUPS.values()))
        # The stock model computes our pre-activations bit for bit: only our float32 statistics round.
        norms = naive_features(stock, token_ids, internals=True)[2]["norms"]
        assert_extended_match(got["extended"][0].numpy(), want, gate_preactivations(stock, token_ids)[0], norms,
                              projections, len(QUANTILES), LAST_TOKENS)


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_extended_batch_equals_one_at_a_time(family, padding_side):
    stock = tiny_stock_model(family)
    model = instrumented_copy(family, stock)
    d_units = model.spline_recorder.gates[0].weight.shape[0 if family != "gpt2" else 1]
    projections = [region_projection(d_units, i).double().numpy() for i in range(model.spline_recorder.n_layers)]
    prompts = random_prompts(6, seed=8, lo=1, hi=12)
    ids, mask = padded(prompts, padding_side)
    batch = model.spline_recorder.run(ids, mask, groups=ALL)
    # Batching rounds differently (other shapes, the padding mask): bounded by the pre-activations' difference.
    for i, (token_ids, inside, batch_h) in enumerate(batch_pairs(stock, ids, mask)):
        one = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)), groups=ALL)
        assert_extended_match(batch["extended"][i].numpy(), one["extended"][0].numpy(), inside["h"], inside["norms"],
                              projections, len(QUANTILES), LAST_TOKENS, other_h=batch_h, float32_sides=2)


def test_groups_select_columns_and_paper_set_is_untouched():
    model = instrumented_copy("llama", tiny_stock_model("llama"))
    ids, mask = padded(random_prompts(4, seed=9, lo=2, hi=9), "right")
    paper = model.spline_recorder.run(ids, mask)
    full = model.spline_recorder.run(ids, mask, groups=ALL)
    regions = model.spline_recorder.run(ids, mask, groups=("regions",))
    assert paper["extended"] is None
    assert torch.equal(paper["spline"], full["spline"]) and torch.equal(paper["ids"], full["ids"])
    width = len(FEATURE_GROUPS["regions"])
    assert torch.equal(regions["extended"], full["extended"][..., -width:])
    with pytest.raises(ValueError, match="unknown feature groups"):
        model.spline_recorder.run(ids, mask, groups=("nope",))


def test_extract_features_extended_file(tmp_path, tiny_llama_dir):
    from extract_features import extract_features
    texts = random_prompts(9, seed=10, lo=1, hi=10)
    common = dict(model=str(tiny_llama_dir), batch_size=4, progress=False)
    paper = extract_features(texts, out=tmp_path / "paper.parquet", **common)
    ext = extract_features(texts, out=tmp_path / "ext.parquet", features="candidates", **common)
    s_paper, i_paper, _ = load_features(paper)
    s_ext, i_ext, _ = load_features(ext)
    assert np.array_equal(s_paper, s_ext) and np.array_equal(i_paper, i_ext)  # paper columns unchanged
    assert load_extended(paper) == (None, None)
    assert "features" not in read_feature_metadata(paper)["settings"]  # paper files keep their settings
    matrix, names = load_extended(ext)
    meta = read_feature_metadata(ext)
    assert meta["feature_set"] == "candidates" and names == extended_feature_names(range(4), ALL)
    assert matrix.shape == (9, len(names)) and np.isfinite(matrix).all()
    # The chosen set is a subset of the candidates' columns.
    chosen = extract_features(texts, out=tmp_path / "chosen.parquet", features="extended", **common)
    m_chosen, n_chosen = load_extended(chosen)
    assert n_chosen == extended_feature_names(range(4), FEATURE_SETS["extended"])
    np.testing.assert_array_equal(m_chosen, matrix[:, [names.index(n) for n in n_chosen]])


def test_extract_features_rejects_unknown_set(tmp_path, tiny_llama_dir):
    from extract_features import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--texts", str(tmp_path / "x.txt"), "--features", "wide"])
    assert exit_info.value.code == 2


def test_a_file_of_other_feature_definitions_is_never_reused(tmp_path, tiny_llama_dir, monkeypatch):
    """The definitions of the extended columns (e.g. REGION_DIMS) are part of a run's settings: a file made
    with other ones is refused with the way out (replace_stale, as the scripts pass, extracts it again)."""
    import feature_io
    from extract_features import extract_features
    from feature_io import RunMismatchError, feature_spec
    texts = random_prompts(5, seed=11, lo=1, hi=8)
    common = dict(model=str(tiny_llama_dir), batch_size=4, progress=False, features="extended")
    path = extract_features(texts, out=tmp_path / "ext.parquet", **common)
    assert read_feature_metadata(path)["settings"]["feature_spec"] == feature_spec(FEATURE_SETS["extended"])
    fewer = {**FEATURE_GROUPS, "regions": FEATURE_GROUPS["regions"][:8]}  # as files of the earlier 8 per layer
    monkeypatch.setattr(feature_io, "FEATURE_GROUPS", fewer)
    with pytest.raises(RunMismatchError, match="feature_spec"):
        extract_features(texts, out=path, **common)
    monkeypatch.undo()
    before = path.stat().st_mtime_ns
    assert extract_features(texts, out=path, **common) == path and path.stat().st_mtime_ns == before  # reused
