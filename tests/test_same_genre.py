"""same_genre.py end to end on a tiny random model (synthetic same-genre sets), and its bad input."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import feature_io  # noqa: E402
import same_genre  # noqa: E402
from cli import UserError, run_main  # noqa: E402
from extract_features import extract_features  # noqa: E402
from tiny_models import random_prompts  # noqa: E402


def synthetic(n_per_side, seed):
    """Toxic texts contain the word w7 (a signal the model's features can carry), clean ones do not."""
    texts = [t.replace("w7", "w8") for t in random_prompts(4 * n_per_side, seed=seed, lo=3, hi=10)]
    clean = list(dict.fromkeys(texts))[:n_per_side]
    toxic = [t + " w7 w7" for t in list(dict.fromkeys(texts))[n_per_side:2 * n_per_side]]
    return pd.DataFrame({"text": clean + toxic, "toxic": [0] * n_per_side + [1] * n_per_side, "subset": "synthetic"})


def test_without_the_second_source_the_cross_check_is_left_out_and_said(tmp_path, tiny_llama_dir, monkeypatch):
    """talkdown's package is withdrawn from the index: the same-genre rows are still scored, the cross-dataset
    columns read n/a and the table's note says why; the same-genre source missing is still an error."""
    import data
    from data.packages import PackageFetchError

    def load(name, **_):
        if name == same_genre.CROSS:
            raise PackageFetchError("bigbench==1.0.0 is not in the cache and the index no longer serves it")
        return synthetic(30, 0)
    monkeypatch.setattr(data, "load_dataset", load)
    (tmp_path / "paper").mkdir()
    out = tmp_path / "out"
    argv = ["--quick", "--model", str(tiny_llama_dir), "--per-side", "20", "--folds", "2", "--no-timing",
            "--features-dir", str(tmp_path / "features"), "--paper-features", str(tmp_path / "paper"),
            "--out-dir", str(out)]
    assert same_genre.main(argv) == 0
    results = json.loads((out / "results" / "same_genre.json").read_text())
    assert "cross_forward" not in results["tasks"] and results["sizes"]["cross"] == 0
    assert results["tasks"]["same_genre"]["paper"]["roc_auc"]["mean"] >= 0
    table = (out / "tables" / "same_genre.md").read_text()
    assert "Cross-dataset: not run, talkdown not available (bigbench==1.0.0 is not in the cache" in table
    monkeypatch.setattr(same_genre, "CROSS", "other")
    monkeypatch.setattr(data, "load_dataset", lambda name, **_: (_ for _ in ()).throw(PackageFetchError("gone")))
    with pytest.raises(PackageFetchError):
        same_genre.same_genre_inputs(same_genre.configure(argv), [])


def test_end_to_end_on_a_tiny_model(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(same_genre, "same_genre_inputs", lambda cfg, notes=None: {
        cfg["SAME_GENRE"]: synthetic(cfg["PER_SIDE"], 0), cfg["CROSS"]: synthetic(cfg["CROSS_PER_SIDE"], 1)})
    # The paper's tasks from a small folder of candidate-feature files (toxic, clean, clean comments).
    paper = tmp_path / "paper"
    for name, df in (("tox", synthetic(12, 2).assign(toxic=1)), ("dom", synthetic(12, 3).assign(toxic=0)),
                     ("com", synthetic(6, 4))):
        extract_features(df, out=paper / f"{name}.parquet", model=str(tiny_llama_dir), features="candidates",
                         save_hidden=True, progress=False)
    monkeypatch.setattr(same_genre, "PAPER_TOXIC", ["tox:toxic"])
    monkeypatch.setattr(same_genre, "PAPER_CLEAN", ["dom"])
    monkeypatch.setattr(same_genre, "PAPER_COMMENTS", ["com:clean"])
    out = tmp_path / "out"
    argv = ["--quick", "--model", str(tiny_llama_dir), "--per-side", "20", "--cross-per-side", "12", "--folds", "2",
            "--features-dir", str(tmp_path / "features"), "--paper-features", str(paper), "--out-dir", str(out)]
    assert same_genre.main(argv) == 0
    results = json.loads((out / "results" / "same_genre.json").read_text())
    assert (out / "tables" / "same_genre.md").exists() and (out / "tables" / "same_genre.tex").exists()
    section = (out / "results" / "same_genre.md").read_text()
    assert section.startswith("## Same-genre toxicity") and "hidden-state probe" in section
    sets = results["sets"]
    regions = feature_io.REGION_DIMS
    assert sets["paper"]["n_features"] == 4 * 7 and sets["extended"]["n_features"] == 4 * regions
    assert sets["paper_regions"]["n_features"] == 4 * (7 + regions)
    assert sets["candidates"]["n_features"] == 4 * (7 + 1 + 6 + 2 + regions) and sets["hidden"]["n_features"] == 32
    for task in ("same_genre", "cross_forward", "cross_backward", "domains", "domains+comments"):
        for key in sets:
            auc = results["tasks"][task][key]["roc_auc"]["mean"]
            assert 0.0 <= auc <= 1.0, (task, key)
    assert results["sizes"] == {"same_genre": 40, "cross": 24, "domains": 48, "domains+comments": 54}
    # The word the toxic side carries is found by the text baseline, scored on the same folds.
    assert results["tasks"]["same_genre"]["tfidf"]["roc_auc"]["mean"] > 0.9
    assert set(results["timing"]) >= {"paper", "paper_id", "hidden", "extended", "candidates"}
    assert all(t["cpu_s_per_prompt"] > 0 for t in results["timing"].values())
    # The timing is cached per setting: --only-timing finds it and measures nothing again.
    monkeypatch.setattr(same_genre, "time_sets", lambda *a: pytest.fail("timed again"))
    assert same_genre.main(argv + ["--only-timing"]) == 0
    # A rerun reuses the cached feature files (no model load for them) and gives the same numbers.
    monkeypatch.setattr("extract_features._run", lambda *a, **k: pytest.fail("features were extracted again"))
    assert same_genre.main(argv + ["--no-timing"]) == 0
    again = json.loads((out / "results" / "same_genre.json").read_text())
    assert again["tasks"] == results["tasks"]


@pytest.mark.parametrize("argv, message", [
    (["--folds", "1"], "cross-validation needs at least 2 folds; pass --folds 2 or more"),
    (["--folds", "500"], "--folds 500 is more than the texts per class (400); lower --folds or raise --per-side"),
    (["--paper-features", "/nonexistent/features"], "--paper-features /nonexistent/features is not a folder"),
    (["--only-timing", "--no-timing"], "--only-timing and --no-timing contradict each other"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    assert run_main(same_genre.main, "same_genre.py", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("same_genre.py: error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("argv", [["--per-side", "0"], ["--max-length", "x"], ["--folds", "-2"]])
def test_bad_numbers_are_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        same_genre.main(argv)
    assert exit_info.value.code == 2 and "is not a positive integer" in capsys.readouterr().err


def test_asking_for_more_texts_than_a_class_has():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(10)], "toxic": [0] * 7 + [1] * 3})
    with pytest.raises(UserError, match=r"fewer than 5 on a side: lower --per-side / --cross-per-side to at most 3"):
        same_genre.balanced_sample(df, 5, 0, "x")
    got = same_genre.balanced_sample(df, 3, 0, "x")
    assert got["toxic"].value_counts().to_dict() == {0: 3, 1: 3}
    assert np.array_equal(got["text"], same_genre.balanced_sample(df, 3, 0, "x")["text"])  # seeded


def test_tuned_logistic_regression_regularises_wide_sets_and_falls_back_on_tiny_ones():
    from sklearn.metrics import roc_auc_score

    from analysis.models import Settings, fit_quiet, make_lr, positive_scores
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 400))
    y = (X[:, :5].sum(axis=1) + rng.normal(scale=2.0, size=600) > 0).astype(int)  # 5 useful columns of 400
    tuned = Settings(lr_cs=(0.001, 0.01, 0.1, 1.0))
    model = fit_quiet(make_lr(tuned), X[:300], y[:300])
    assert model.C_ < 1.0 and fit_quiet(make_lr(tuned), X[:300], y[:300]).C_ == model.C_  # seeded: same choice
    fixed = fit_quiet(make_lr(Settings(lr_c=1.0)), X[:300], y[:300])
    assert (roc_auc_score(y[300:], positive_scores(model, X[300:]))
            > roc_auc_score(y[300:], positive_scores(fixed, X[300:])))
    # Two rows of a class cannot be split in 3 inner folds: the middle of the grid, no error.
    small = fit_quiet(make_lr(tuned), X[:4], np.array([0, 1, 0, 1]))
    assert small.C_ == 0.1 and positive_scores(small, X[:3]).shape == (3,)


def test_timing_cache_is_keyed_on_the_sets_texts_and_model(tmp_path, monkeypatch):
    """The stale-cache check of timing.json: change one input, rerun into the same folder, and the timing
    is measured again (never the old sets' or texts' numbers reported as current)."""
    calls = []
    monkeypatch.setattr(same_genre, "time_sets", lambda cfg, texts: calls.append(len(texts)) or {"n": len(calls)})
    cfg = {"MODEL": "smollm2-135m", "MAX_LENGTH": 64, "BATCH_SIZE": 16, "TIMING_REPEATS": 1, "TIMING_PROMPTS": 4,
           "SEED": 0, "SETS": [("paper", "paper's 7", ("paper",)), ("extended", "richer", ("paper", "quantiles"))]}
    frame = synthetic(5, 0)
    assert same_genre.cached_timing(cfg, frame, tmp_path) == ({"n": 1}, 4)
    assert same_genre.cached_timing(cfg, frame, tmp_path) == ({"n": 1}, 4)          # reused
    changes = [lambda c, f: (dict(c, SETS=c["SETS"][:1]), f),                       # another list of sets
               lambda c, f: (c, f.assign(text=f["text"] + " w9")),                  # other texts
               lambda c, f: (dict(c, MODEL="gemma3-270m"), f),                      # another model
               lambda c, f: (dict(c, MAX_LENGTH=32), f)]                            # another setting
    for n, change in enumerate(changes, 2):
        other_cfg, other_frame = change(cfg, frame)
        assert same_genre.cached_timing(other_cfg, other_frame, tmp_path)[0] == {"n": n}
