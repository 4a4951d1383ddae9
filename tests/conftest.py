import pytest

from tiny_models import tiny_stock_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama saved with a word-level tokenizer: a model path like any hub folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_stock_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
