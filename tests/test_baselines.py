"""The shortcut baselines: on data whose label is length they find it; the tables say so."""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis.baselines import shortcut_notes, surface_features  # noqa: E402
from analysis.detectors import shortcut_detectors  # noqa: E402
from analysis.data import Task  # noqa: E402
from analysis.models import Settings, binary_metrics, stratified_folds  # noqa: E402


def length_task(n=200, seed=0, with_tokens=True):
    """Label = long text: short texts (3-8 words) are clean, long ones (12-30 words) toxic; same vocabulary."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    vocab = "the a river study method court plain words here are".split()
    lengths = np.where(y == 1, rng.integers(12, 31, n), rng.integers(3, 9, n))
    texts = np.array([" ".join(rng.choice(vocab, size=k)) for k in lengths], dtype=object)
    return Task(name="length", X=rng.normal(size=(n, 7)), y=y, groups=np.full(n, "g", dtype=object), texts=texts,
                latency=np.zeros(n), X_early=None, latency_early=None, hidden=None, class_names=["clean", "toxic"],
                counts={"g": n}, n_tokens=(lengths + 1).astype(float) if with_tokens else None)


def cv_auc(det, task, s):
    aucs = []
    for train, test in stratified_folds(task.y, s.folds, s.seed):
        scores, _ = det.fit_score(task, train, test)
        aucs.append(binary_metrics(task.y[test], scores)["roc_auc"])
    return float(np.mean(aucs))


def test_length_and_surface_baselines_find_a_length_label():
    s = Settings(folds=3)
    for with_tokens in (True, False):  # token counts from the files, or word counts in their place
        task = length_task(with_tokens=with_tokens)
        for det in shortcut_detectors(s):
            assert cv_auc(det, task, s) > 0.99, det.key


def test_baselines_are_chance_when_length_says_nothing():
    task = length_task(n=1000)
    rng = np.random.default_rng(1)
    task.y = rng.permutation(task.y)
    s = Settings(folds=3)
    for det in shortcut_detectors(s):
        assert abs(cv_auc(det, task, s) - 0.5) < 0.08, det.key


def test_surface_features_by_hand():
    row = surface_features(["Hi THERE, 42!"])[0]
    assert np.isclose(row[0], np.log1p(13)) and np.isclose(row[1], np.log1p(3))
    assert np.isclose(row[3], 2 / 13) and np.isclose(row[4], 6 / 7) and np.isclose(row[5], 2 / 13)
    assert np.isclose(row[7], 1 / 13)


def test_notes_flag_a_close_shortcut():
    def entry(auc):
        return {"available": True, "label": "x", "metrics": {"roc_auc": {"mean": auc}}}
    result = {"detectors": {"spline_lr": {**entry(0.90), "label": "Spline-LR"}, "length_only": entry(0.88),
                            "surface": entry(0.60)}}
    notes = shortcut_notes(result, "task")
    assert len(notes) == 1 and notes[0].startswith("SHORTCUT (task)") and "88.00" in notes[0]
    result["detectors"]["length_only"] = entry(0.70)
    assert "more than 5 points below" in shortcut_notes(result, "task")[0]
