"""statistic_analysis.py on small synthetic feature files: the numbers, not only the files."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests" / "fixtures" / "analysis"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import statistic_analysis  # noqa: E402
from cli import run_main  # noqa: E402
from analysis.models import binary_metrics, labeled_mask, oriented_auc, tpr_at_fpr  # noqa: E402
from synth import make_suite, write_feature_file  # noqa: E402

FAST = ["--quick", "--no-timing", "--n-jobs", "1", "--set", "TSNE_MAX_POINTS=120"]


def run(features, out, *extra):
    code = run_main(statistic_analysis.main, "statistic_analysis.py",  # as the command line runs it
                    ["--features-dir", str(features), "--out-dir", str(out), *FAST, *extra])
    results = json.loads((Path(out) / "results.json").read_text()) if (Path(out) / "results.json").exists() else None
    return code, results


def auc(results, task, det):
    return results["experiments"]["shortcut"][task]["detectors"][det]["metrics"]["roc_auc"]["mean"]


# ------------------------------------------------------------------ one full run, shared by many tests
@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """Toxic rows shifted by 100 on every feature of layer 1; no domain signal anywhere else."""
    root = tmp_path_factory.mktemp("shifted")
    make_suite(root / "features", n=40, n_layers=4, toxic_shift=100.0, toxic_layers=(1,), domain_offsets=False)
    code, results = run(root / "features", root / "out")
    return root, code, results


def test_full_run_writes_every_output(shifted):
    root, code, results = shifted
    assert code == 0, results["skipped"]
    assert not results["skipped"]
    out = root / "out"
    assert (out / "RESULTS.md").exists()
    for name in ("detection", "detection_paper", "toxic_vs_clean", "domains", "domains_paper", "multilabel",
                 "multilabel_paper", "semi_supervised", "heatmap_layers", "heatmap_features_domains"):
        assert (out / "tables" / f"{name}.md").exists(), name
        assert (out / "tables" / f"{name}.tex").read_text().startswith("\\begin{table}")
    for name in ("heatmap_layers", "heatmap_prefix", "heatmap_features_domains", "pca", "tsne"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    md = (out / "RESULTS.md").read_text()
    assert "tiny-test-model" in md and "![pca](figures/pca.png)" in md
    assert "99.18" in md  # the paper's number is shown beside ours
    assert results["setup"]["model"] == "tiny-test-model"
    assert results["setup"]["rows_per_dataset"]["slurs"] == 40


def test_shifted_toxic_rows_are_detected(shifted):
    _, _, results = shifted
    for task in ("domains", "domains+comments"):
        for det in ("spline_lr", "spline_rf", "spline_rf_early"):
            assert auc(results, task, det) > 0.97, (task, det)
        assert auc(results, task, "hidden_probe") > 0.6  # hidden states carry a weaker shift
    m = results["experiments"]["detection"]["detectors"]["spline_lr"]["metrics"]
    assert m["roc_auc"]["mean"] == 1.0 and m["average_precision"]["mean"] == 1.0 and m["tpr_at_fpr"]["mean"] == 1.0
    # baselines ran on the same folds and are reported with every metric
    for det in ("tfidf_lr", "profanity_check"):
        d = results["experiments"]["detection"]["detectors"][det]
        assert d["available"], d["note"]
        assert set(d["metrics"]) == {"roc_auc", "average_precision", "tpr_at_fpr"}
    # the synthetic toxic texts carry insult words: the text baselines see them
    assert results["experiments"]["detection"]["detectors"]["tfidf_lr"]["metrics"]["roc_auc"]["mean"] > 0.8


def test_latency_comes_from_the_feature_files(shifted):
    _, _, results = shifted
    dets = results["experiments"]["detection"]["detectors"]
    assert dets["spline_lr"]["extraction_latency_s"] == pytest.approx(0.02)
    assert dets["spline_rf_early"]["extraction_latency_s"] == pytest.approx(0.005)  # early-exit files
    assert dets["tfidf_lr"]["extraction_latency_s"] == 0.0
    assert "timing" not in results  # --no-timing


def test_per_feature_heatmap_exact(shifted):
    _, _, results = shifted
    per_feature = results["experiments"]["heatmaps"]["tasks"]["domains"]["per_feature"]
    assert all(v == 1.0 for v in per_feature["L1"].values())  # perfectly separable layer
    for layer in ("L0", "L2", "L3"):
        assert all(0.5 <= v < 0.8 for v in per_feature[layer].values()), per_feature[layer]
    per_layer = results["experiments"]["heatmaps"]["tasks"]["domains"]["per_layer"]
    assert per_layer[1] == 1.0 and max(per_layer[0], per_layer[2], per_layer[3]) < 0.8
    prefix = results["experiments"]["heatmaps"]["tasks"]["domains"]["prefix"]
    assert prefix[0] < 0.8 and min(prefix[1:]) == 1.0


def test_semi_supervised_sizes_and_scores(shifted):
    _, _, results = shifted
    semi = results["experiments"]["semi"]
    # domains task: 40 rtp rows (~80 % toxic) + 40 slurs toxic vs 3 x 40 domain rows; 2 folds
    for frac, entry in semi["fractions"].items():
        assert entry["n_train"] + entry["n_test"] == pytest.approx(results["experiments"]["detection"]["n_rows"])
        assert entry["n_labeled"] + entry["n_unlabeled"] == entry["n_train"]
        assert entry["lr"]["mean"] > 0.95
    assert semi["fractions"]["1"]["n_unlabeled"] == 0
    assert semi["fractions"]["0.05"]["n_labeled"] == pytest.approx(0.05 * semi["fractions"]["0.05"]["n_train"], abs=2)


def test_multilabel_and_domains(shifted):
    _, _, results = shifted
    ml = results["experiments"]["multilabel"]
    assert ml["n_train"] + ml["n_test"] == 80  # rtp + comments
    full = ml["fractions"]["1"]
    assert full["auc"]["toxic"] > 0.9  # labels follow the toxic shift
    assert full["n_labels_in_avg"] >= 1
    dom = results["experiments"]["domains"]
    assert set(dom["domains"]) == {"dm_mathematics", "pubmed", "code", "comments:clean"}
    # no domain signal in this suite: one-vs-rest AUC stays near chance
    assert 0.2 < dom["auc"]["LogisticRegression"]["mean"] < 0.8


def test_domain_signal_is_found(tmp_path):
    make_suite(tmp_path / "f", n=30, n_layers=3, toxic_shift=0.0, domain_offsets=True, early_layers=0)
    code, results = run(tmp_path / "f", tmp_path / "o", "--only", "domains,shortcut", "--set", "EARLY_EXIT_LAYERS=2")
    assert code == 0
    dom = results["experiments"]["domains"]["auc"]
    assert dom["RandomForest"]["mean"] > 0.95 and dom["LogisticRegression"]["mean"] > 0.95
    # toxic-vs-clean is then only a domain shortcut: perfect without comments on the clean side
    assert auc(results, "domains", "spline_lr") > 0.95
    early = results["experiments"]["shortcut"]["domains"]["detectors"]["spline_rf_early"]
    assert "sliced from full run" in early["label"] and early["extraction_latency_s"] is None


def test_random_features_give_chance(tmp_path):
    make_suite(tmp_path / "f", n=80, n_layers=3, toxic_shift=0.0, domain_offsets=False, hidden_dim=0,
               early_layers=0)
    code, results = run(tmp_path / "f", tmp_path / "o", "--only", "detection", "--set", "EARLY_EXIT_LAYERS=2",
                        "--max-per-dataset", "80")
    assert code == 0
    dets = results["experiments"]["detection"]["detectors"]
    for det in ("spline_lr", "spline_rf", "spline_rf_early"):
        assert 0.3 < dets[det]["metrics"]["roc_auc"]["mean"] < 0.7, det
    assert not dets["hidden_probe"]["available"] and "--save-hidden" in dets["hidden_probe"]["note"]


def test_two_runs_give_identical_results(tmp_path):
    make_suite(tmp_path / "f", n=30, n_layers=3, toxic_shift=1.0, toxic_layers=(2,))
    args = ("--only", "detection,semi,heatmaps,embedding", "--set", "EARLY_EXIT_LAYERS=2")
    run(tmp_path / "f", tmp_path / "a", *args)
    run(tmp_path / "f", tmp_path / "b", *args)
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    for table in sorted((tmp_path / "a" / "tables").iterdir()):
        assert table.read_text() == (tmp_path / "b" / "tables" / table.name).read_text(), table.name


# ------------------------------------------------------------------ bad input
def test_mixed_model_is_refused(tmp_path, capsys):
    make_suite(tmp_path / "f", n=20, n_layers=3, early_layers=0)
    rng = np.random.default_rng(0)
    write_feature_file(tmp_path / "f" / "code.parquet", rng.normal(size=(20, 3, 7)),
                       pd.DataFrame({"text": ["x"] * 20, "latency_s": 0.1}), model="other-model")
    code, _ = run(tmp_path / "f", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2
    assert "do not come from one extraction run setup" in err and "other-model" in err and "code.parquet" in err
    assert "Traceback" not in err


def test_mixed_layer_set_is_refused(tmp_path, capsys):
    make_suite(tmp_path / "f", n=20, n_layers=4, early_layers=0)
    rng = np.random.default_rng(0)
    write_feature_file(tmp_path / "f" / "pubmed.parquet", rng.normal(size=(20, 3, 7)),
                       pd.DataFrame({"text": ["x"] * 20, "latency_s": 0.1}), n_layers_total=4)
    code, _ = run(tmp_path / "f", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "layers=0-2 (3 layers)" in err and "layers=0-3 (4 layers)" in err and "pubmed.parquet" in err


def test_early_exit_files_must_match(tmp_path, capsys):
    make_suite(tmp_path / "f", n=20, n_layers=4, early_layers=3)
    early = tmp_path / "f" / "layers0-2"
    rng = np.random.default_rng(0)
    write_feature_file(early / "code.parquet", rng.normal(size=(20, 3, 7)),
                       pd.DataFrame({"text": ["other text"] * 20, "latency_s": 0.1}), n_layers_total=4)
    code, _ = run(tmp_path / "f", tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and "do not hold the same prompts" in err


def test_early_exit_latency_sample_with_features_sliced_from_the_full_files(tmp_path):
    """The main job's layout: early exit timed on some of each full file's prompts. The fast detector's
    features are the full files' first layers (its scores equal the sliced run's), its latency the sample's."""
    from feature_io import load_features
    make_suite(tmp_path / "f", n=20, n_layers=4, early_layers=0)
    code, sliced = run(tmp_path / "f", tmp_path / "o1", "--only", "detection")
    assert code == 0
    rng = np.random.default_rng(0)
    for path in sorted((tmp_path / "f").glob("*.parquet")):
        texts = load_features(path)[2]["text"].tolist()[3:9]
        write_feature_file(tmp_path / "f" / "layers0-2" / path.name, rng.normal(size=(len(texts), 3, 7)),
                           pd.DataFrame({"text": texts, "latency_s": 0.005}), model="tiny-test-model", n_layers_total=4)
    code, sampled = run(tmp_path / "f", tmp_path / "o2", "--only", "detection")
    assert code == 0
    early = sampled["experiments"]["detection"]["detectors"]["spline_rf_early"]
    before = sliced["experiments"]["detection"]["detectors"]["spline_rf_early"]
    assert "early exit" in early["label"] and early["extraction_latency_s"] == pytest.approx(0.005)
    assert early["metrics"] == before["metrics"]
    assert "timed on a sample of" in (tmp_path / "o2" / "RESULTS.md").read_text()


def test_single_class_is_a_clear_message(tmp_path, capsys):
    make_suite(tmp_path / "f", n=20, n_layers=3, early_layers=0)
    code, results = run(tmp_path / "f", tmp_path / "o", "--only", "detection,semi", "--set", "EARLY_EXIT_LAYERS=2",
                        "--set", "TOXIC=['code:toxic']")
    assert code == 1
    for exp in ("detection", "semi"):
        assert "the 'toxic' side is empty" in results["skipped"][exp]
    assert "Skipped" in (tmp_path / "o" / "RESULTS.md").read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_too_few_rows_for_the_folds(tmp_path):
    make_suite(tmp_path / "f", n=20, n_layers=3, early_layers=0)
    code, results = run(tmp_path / "f", tmp_path / "o", "--only", "detection", "--set", "EARLY_EXIT_LAYERS=2",
                        "--set", "TOXIC=['slurs']", "--max-per-dataset", "2", "--folds", "5")
    assert code == 1
    msg = results["skipped"]["detection"]
    assert "5-fold" in msg and "toxic: 2" in msg and "--folds" in msg


def test_missing_features_and_nan_rows(tmp_path, capsys):
    code = run_main(statistic_analysis.main, "statistic_analysis.py",
                    ["--features-dir", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    make_suite(tmp_path / "f", n=20, n_layers=3, early_layers=0)
    X = np.random.default_rng(1).normal(size=(20, 3, 7)) + 5
    X[3, 1, 4] = np.nan
    X[5, 2, 6] = np.inf
    write_feature_file(tmp_path / "f" / "slurs.parquet", X,
                       pd.DataFrame({"text": ["idiot moron"] * 20, "latency_s": 0.1}))
    code, results = run(tmp_path / "f", tmp_path / "o", "--only", "detection", "--set", "EARLY_EXIT_LAYERS=2")
    assert code == 0
    assert results["setup"]["rows_per_dataset"]["slurs"] == 18
    assert any("dropped 2 of 20 rows with NaN/inf" in n and "L1.dist_min" in n for n in results["notes"])


# ------------------------------------------------------------------ metrics
def test_metrics_exact():
    y = np.array([0, 0, 0, 0, 1, 1])
    assert binary_metrics(y, np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])) == {
        "roc_auc": 1.0, "average_precision": 1.0, "tpr_at_fpr": 1.0}
    # one negative above every positive: AUC 0.75, and at FPR 0 no positive is caught
    s = np.array([0.1, 0.2, 0.3, 0.95, 0.8, 0.9])
    assert binary_metrics(y, s)["roc_auc"] == pytest.approx(0.75)
    assert tpr_at_fpr(y, s, 0.01) == 0.0
    assert tpr_at_fpr(y, s, 0.25) == 1.0
    assert oriented_auc(y, -np.arange(6.0)) == 1.0 and oriented_auc(y, np.zeros(6)) == 0.5
    assert np.isnan(binary_metrics(np.ones(4), np.arange(4.0))["roc_auc"])


def test_labeled_mask_is_stratified_and_seeded():
    y = np.array([0] * 900 + [1] * 100)
    m = labeled_mask(y, 0.02, seed=3)
    assert m[y == 0].sum() == 18 and m[y == 1].sum() == 2
    assert np.array_equal(m, labeled_mask(y, 0.02, seed=3))
    assert labeled_mask(np.array([0] * 10 + [1]), 0.01, 0)[-1]  # at least one row of each class
    assert labeled_mask(y, 1.0, 0).all()


def test_paper_preset_names_and_jigsaw_split(tmp_path):
    """The paper's dataset names: jigsaw split into toxic/clean by its column, six labels, train/test split."""
    rng = np.random.default_rng(0)
    n = 60
    f = tmp_path / "f"

    def write(name, X, cols):
        write_feature_file(f / f"{name}.parquet", X, pd.DataFrame(cols))

    y = (np.arange(n) % 3 == 0).astype(int)
    X = rng.normal(size=(n, 3, 7))
    X[y == 1, 2, :] += 50
    labels = {lab: y if j == 0 else y * (np.arange(n) % 2) for j, lab in
              enumerate(["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"])}
    write("jigsaw", X, {"text": ["w"] * n, "latency_s": 0.1, "split": np.where(np.arange(n) < 40, "train", "test"),
                        **labels})
    tox = rng.normal(size=(30, 3, 7))
    tox[:, 2, :] += 50
    write("toxigen", tox, {"text": ["t"] * 30, "latency_s": 0.1, "toxic": np.ones(30, int)})
    for name in ("pile_github", "dolly"):
        write(name, rng.normal(size=(30, 3, 7)), {"text": ["c"] * 30, "latency_s": 0.1})
    code, results = run(f, tmp_path / "o", "--preset", "paper", "--only", "shortcut,multilabel",
                        "--set", "EARLY_EXIT_LAYERS=2", "--set", "MULTILABEL_FRACTIONS=(1.0,)")
    assert code == 0, results["skipped"]
    short = results["experiments"]["shortcut"]
    assert short["domains"]["rows_per_dataset"] == {"pile_github": 30, "dolly": 30, "toxigen:toxic": 30,
                                                    "jigsaw:toxic": 20}
    assert short["domains+comments"]["rows_per_dataset"]["jigsaw:clean"] == 40
    assert auc(results, "domains+comments", "spline_lr") == 1.0
    ml = results["experiments"]["multilabel"]
    assert ml["split"] == "the dataset's own train/test split" and (ml["n_train"], ml["n_test"]) == (40, 20)
    assert ml["fractions"]["1"]["auc"]["toxic"] == 1.0


def test_id_experiment_summary_joins_results_md(shifted, tmp_path):
    """RESULTS.md shows the ID experiment from the summary id_plotting.py writes (pooled under "all")."""
    root = shifted[0]
    rows = [{"prepend_words": w, "n": 4, "context_length": c, "id_mean": i, "toxic_rate": 0.25 * (w == 50),
             "refusal_rate": 0.0, "toxicity_mean": 0.1} for w, c, i in ((0, 50, 40.0), (50, 120, 61.5))]
    pooled = {"n": 8, "by_prepend_length": rows, "spearman_context_vs_id_mean": {"rho": 0.91, "p": 0.002},
              "verdict": "ID rises with context length"}
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "summary.json").write_text(json.dumps({"categories": {"all": pooled}}))
    run(root / "features", tmp_path / "out", "--only", "embedding", "--set", f"ID_RESULTS='{tmp_path}'")
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "## 8. Attention intrinsic dimension" in md
    assert "| tiny-test-model | 50 | 4 | 120 | 61.5 | 25 % | 0 % |" in md and "= 0.91" in md


def test_two_models_side_by_side(tmp_path):
    """Two --features-dir: every table holds both models' rows (a "model" column), the first model's
    numbers are exactly those of its own run, the second's figures go to figures/<folder>/."""
    make_suite(tmp_path / "a", n=40, n_layers=4, model="model-a")
    make_suite(tmp_path / "b", n=30, n_layers=5, toxic_shift=0.0, seed=1, model="model-b")
    only = ["--only", "detection,domains,heatmaps,embedding"]
    code_a, alone = run(tmp_path / "a", tmp_path / "out_a", *only)
    code = statistic_analysis.main(["--features-dir", str(tmp_path / "a"), "--features-dir", str(tmp_path / "b"),
                                    "--out-dir", str(tmp_path / "out"), *FAST, *only])
    both = json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == code_a == 0
    assert both["experiments"] == alone["experiments"]                       # the first model is unchanged
    assert both["other_models"]["model-b"]["setup"]["rows_per_dataset"]["slurs"] == 30
    domains = (tmp_path / "out" / "tables" / "domains.md").read_text()
    assert "| model | classifier |" in domains
    assert domains.count("| model-a |") == domains.count("| model-b |") >= 2
    layers = (tmp_path / "out" / "tables" / "heatmap_layers.md").read_text()
    assert "| model-b | 4 |" in layers and "| model-a | 4 |" not in layers    # a row per layer of each model
    paper = (tmp_path / "out" / "tables" / "detection_paper.md").read_text()
    assert paper == (tmp_path / "out_a" / "tables" / "detection_paper.md").read_text()   # once, as it is
    assert (tmp_path / "out" / "figures" / "b" / "pca.png").exists() and (tmp_path / "out" / "figures" / "pca.png").exists()
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "beside it, model `model-b`" in md and "![pca](figures/b/pca.png)" in md
    # the same model twice is refused
    assert run_main(statistic_analysis.main, "statistic_analysis.py",
                    ["--features-dir", str(tmp_path / "a"), "--features-dir", str(tmp_path / "a"),
                     "--out-dir", str(tmp_path / "o2"), *FAST, *only]) == 2


def test_gather_refreshes_the_other_systems_sections_and_keeps_the_analysis_own_part(tmp_path):
    import statistic_analysis
    from analysis.report import system_sections, write_section
    from cli import UserError
    write_section(tmp_path, "spectral_editing", "## SEA\n\nold numbers")
    (tmp_path / "RESULTS.md").write_text("\n".join(["# Results\n\nthe analysis's own tables\n"] + system_sections(tmp_path)))
    write_section(tmp_path, "spectral_editing", "## SEA\n\nnew numbers")
    write_section(tmp_path, "selfie", "## SelfIE\n\nits section")
    assert statistic_analysis.main(["--gather", "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "the analysis's own tables" in text and "new numbers" in text and "its section" in text
    assert "old numbers" not in text and text.count("## SEA") == 1
    (tmp_path / "RESULTS.md").write_text("# Results\n\nno marker\n")
    with pytest.raises(UserError, match="no gathered part to refresh"):
        statistic_analysis.main(["--gather", "--out-dir", str(tmp_path)])
