import pytest

from tiny_models import tiny_stock_model, tiny_tokenizer


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
