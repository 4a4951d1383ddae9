"""The ID experiment on a tiny random Llama: IDs equal a naive count, a small run writes the csv,
the figure and the table, a rerun reuses the csv, and --category switches prompt and result files."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import ID_estimation as E
from modeling_llama import SplineLlamaForCausalLM
from naive_reference import gate_preactivations, naive_features
from rounding import assert_ids_match
from tiny_models import tiny_stock_model, tiny_tokenizer
from toxicity_id_eval import build_prompts as B
from toxicity_id_eval import id_plotting as P

# A word-level chat template: every piece is a word of the tiny vocabulary.
CHAT_TEMPLATE = ("{% for m in messages %}[BOS] w1 {{ m['content'] }} w2 {% endfor %}"
                 "{% if add_generation_prompt %}w3{% endif %}")


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    stock = tiny_stock_model("llama")
    model = SplineLlamaForCausalLM(stock.config).eval()
    model.load_state_dict(stock.state_dict())
    tokenizer = tiny_tokenizer("left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return stock, model, tokenizer


def synthetic_corpora():
    """Harmless stand-ins for the toxic and clean corpora: group keywords among tiny-vocabulary words."""
    rng = np.random.RandomState(0)
    rows = []
    for category, keywords in B.KEYWORDS.items():
        for k in range(6):
            words = [f"w{i}" for i in rng.randint(4, 120, size=8)]
            words.insert(3, keywords[k % len(keywords)])
            rows.append({"text": " ".join(words), "source": "synthetic", "toxic": 1, "identity_hate": k % 2})
    rows.append({"text": "w4 w5 w6 w7 w8 w9 w10", "source": "synthetic", "toxic": 1, "identity_hate": 1})  # no group
    toxic = pd.DataFrame(rows)
    clean = pd.DataFrame({"text": [" ".join(f"w{i}" for i in rng.randint(4, 120, size=60)) for _ in range(30)],
                          "source": "clean", "toxic": 0})
    return toxic, clean


@pytest.fixture
def prompts_dir(tmp_path):
    folder = tmp_path / "prompts"
    B.write_prompt_files(B.CATEGORIES, folder, corpora=synthetic_corpora())
    return folder


def test_ids_equal_naive_count(tiny):
    stock, model, tokenizer = tiny
    prompts = ["w5 w6 w7", "w8 w9 w10 w11 w12 w13 w14 w15 w16", "w17", "w20 w21 w22 w23 w24 w25"]
    texts = E.format_prompts(tokenizer, prompts, instruction="{prompt}")  # tiny vocabulary
    assert texts[0] == "[BOS] w1 w5 w6 w7 w2 w3"
    enc = E.encode(tokenizer, texts, chat_template=True)  # left-padded batch of different lengths
    assert (enc["attention_mask"][:, 0] == 0).any()
    ids = E.measure_ids(model, enc["input_ids"], enc["attention_mask"])
    batch_h = gate_preactivations(stock, enc["input_ids"], attention_mask=enc["attention_mask"])[0]
    assert ids.shape == (len(prompts), stock.config.num_hidden_layers)
    for k, text in enumerate(texts):
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert int(enc["attention_mask"][k].sum()) == len(token_ids)
        # Two float32 paths (a padded batch under the model's attention, the prompt alone under eager):
        # an ID may differ by the keys within their rounding of the threshold.
        want_ids, inside = naive_features(stock, token_ids, internals=True)[1:]
        assert_ids_match(ids[k], want_ids, inside, other_h=[h[k][enc["attention_mask"][k].bool().numpy()]
                                                            for h in batch_h])
    # The ID can never exceed heads x keys, and the sharpened tiny model is not uniform everywhere.
    lengths = enc["attention_mask"].sum(1).numpy()
    assert (ids <= stock.config.num_attention_heads * lengths[:, None]).all()
    assert (ids < stock.config.num_attention_heads * lengths[:, None]).any()


def test_small_run_writes_csv_table_figure_and_reuses_rows(tiny, prompts_dir, tmp_path, monkeypatch):
    _, model, tokenizer = tiny
    results = tmp_path / "results"
    argv = ["--category", "asian", "--model", "tiny-llama", "--prompts-dir", str(prompts_dir), "--results-dir",
            str(results), "--n-statements", "2", "--prepend-words", "0,25,50", "--max-new-tokens", "4",
            "--batch-size", "4", "--instruction", "{prompt}"]
    out = E.main(argv, model=model, tokenizer=tokenizer)["asian"]
    csv = results / "asian.csv"
    frame = pd.read_csv(csv, keep_default_na=False)
    assert list(frame.columns) == E.COLUMNS
    assert len(frame) == len(out) == 6
    for column in ("Prompt", "Prepended", "Response", "Label", "ID", "Context Length"):
        assert column in frame.columns
    assert set(frame["Prepended"]) == {"none", "pubmed, 25 words", "pubmed, 50 words"}
    assert frame["Label"].isin([0, 1]).all() and frame["Refusal"].isin([0, 1]).all()
    assert (frame["Generated Tokens"] <= 4).all()
    for ids in frame["ID"]:
        assert len(json.loads(ids)) == model.config.num_hidden_layers
    for _, group in frame.groupby("Statement ID"):  # context grows with the prepended words
        assert group.sort_values("Prepend Words")["Context Length"].is_monotonic_increasing
        assert group["Context Length"].nunique() == 3

    # A rerun reuses every row: nothing is generated and the file is unchanged.
    before = csv.read_text()
    monkeypatch.setattr(E, "generate", lambda *a, **k: pytest.fail("a finished row was recomputed"))
    E.main(argv, model=model, tokenizer=tokenizer)
    assert csv.read_text() == before
    # Another answer length is another experiment: its rows are recomputed.
    monkeypatch.undo()
    again = E.main(argv[:-6] + ["--max-new-tokens", "2", "--batch-size", "4", "--instruction", "{prompt}"], model=model, tokenizer=tokenizer)
    assert (again["asian"]["Max New Tokens"] == 2).all() and (again["asian"]["Generated Tokens"] <= 2).all()

    figures, tables = tmp_path / "figures", tmp_path / "tables"
    summary = P.main(["--category", "asian", "--results-dir", str(results), "--figures-dir", str(figures),
                      "--tables-dir", str(tables)])
    assert (figures / "id_asian.png").stat().st_size > 10_000
    tex = (tables / "id_asian.tex").read_text()
    assert tex.count(r"\\") >= 4 and r"\begin{tabular}" in tex and r"\end{table}" in tex
    entry = summary["categories"]["asian"]
    assert entry["n"] == 6 and [r["prepend_words"] for r in entry["by_prepend_length"]] == [0, 25, 50]
    assert json.loads((results / "summary.json").read_text())["categories"]["asian"]["verdict"] == entry["verdict"]


def test_category_switching(tiny, prompts_dir, tmp_path):
    _, model, tokenizer = tiny
    # Each category's file holds statements that name its own group, and only its own files change.
    statements = {}
    for category in B.CATEGORIES:
        frame = E.load_prompts(category, n_statements=3, prepend_words=(0,), prompts_dir=prompts_dir)
        assert (frame["Category"] == category).all() and len(frame) == 3
        assert frame["Statement"].map(lambda s: bool(B.keyword_pattern(category).search(s))).all()
        statements[category] = set(frame["Statement"])
    assert all(statements[a].isdisjoint(statements[b]) for a in B.CATEGORIES for b in B.CATEGORIES if a < b)

    assert E.parse_args([]).categories == [E.CATEGORY]
    assert E.parse_args(["--category", "trans"]).categories == ["trans"]
    assert E.parse_args(["--category", "all"]).categories == list(B.CATEGORIES)
    quick = E.parse_args(["--quick"])
    assert quick.max_new_tokens == E.QUICK["max_new_tokens"] and quick.results_dir == E.RESULTS_DIR / "quick"
    other = E.parse_args(["--model", "meta-llama/Llama-2-7b-chat-hf"])
    assert other.results_dir == E.RESULTS_DIR / "meta-llama_Llama-2-7b-chat-hf"
    with pytest.raises(SystemExit):
        E.parse_args(["--category", "martian"])

    results = tmp_path / "results"
    common = ["--model", "tiny-llama", "--prompts-dir", str(prompts_dir), "--results-dir", str(results),
              "--n-statements", "1", "--prepend-words", "0,25", "--max-new-tokens", "2", "--instruction", "{prompt}"]
    muslim = E.main(["--category", "muslim", *common], model=model, tokenizer=tokenizer)
    assert list(muslim) == ["muslim"] and sorted(p.name for p in results.glob("*.csv")) == ["muslim.csv"]
    woman = E.main(["--category", "woman", *common], model=model, tokenizer=tokenizer)
    assert sorted(p.name for p in results.glob("*.csv")) == ["muslim.csv", "woman.csv"]
    assert set(muslim["muslim"]["Prompt"]).isdisjoint(woman["woman"]["Prompt"])


def test_rows_of_another_prompt_dtype_or_weights_are_recomputed(tiny, prompts_dir, tmp_path, monkeypatch):
    """A stale-cache check of the results csv: change one input, rerun into the same file, and only the
    rows it changes are computed again (the others are reused, none is reported from the old input)."""
    _, model, tokenizer = tiny
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"1")
    results = tmp_path / "results"
    argv = ["--category", "asian", "--model", str(folder), "--prompts-dir", str(prompts_dir), "--results-dir",
            str(results), "--n-statements", "2", "--prepend-words", "0,25", "--max-new-tokens", "2",
            "--instruction", "{prompt}"]
    real_generate, calls = E.generate, []

    def counting_generate(model_, tok, input_ids, *a, **k):
        calls.append(len(input_ids))
        return real_generate(model_, tok, input_ids, *a, **k)
    monkeypatch.setattr(E, "generate", counting_generate)
    first = E.main(argv, model=model, tokenizer=tokenizer)["asian"]
    assert sum(calls) == 4
    # one prompt's text changes in its file: that row only
    path = B.prompts_path("asian", prompts_dir)
    frame = pd.read_csv(path, keep_default_na=False)
    old_prompt = first["Prompt"][0]
    frame.loc[frame["Prompt"] == old_prompt, "Prompt"] = old_prompt + " w9"
    frame.to_csv(path, index=False)
    calls.clear()
    second = E.main(argv, model=model, tokenizer=tokenizer)["asian"]
    assert sum(calls) == 1 and len(second) == 4
    assert old_prompt + " w9" in set(second["Prompt"]) and old_prompt not in set(second["Prompt"])
    # another dtype, then new weights in the same folder: every row
    for change in (lambda: argv.extend(["--dtype", "float32"]),
                   lambda: (folder / "model.safetensors").write_bytes(b"22")):
        change()
        calls.clear()
        again = E.main(argv, model=model, tokenizer=tokenizer)["asian"]
        assert sum(calls) == 4 and len(again) == 4 and again["Weights"].nunique() == 1


def test_labels_and_refusals():
    labels = E.label_answers(["I cannot help with that request.", "The weather is sunny today.", ""])
    assert labels["Refusal"].tolist() == [1, 0, 0]
    assert labels["Label"].tolist() == [0, 0, 0]
    assert (labels["Toxicity"] < E.TOXIC_THRESHOLD).all()


def test_shipped_prompt_files_are_consistent():
    """The prompt files in the repository: keyword-selected statements, nested unrelated prefixes."""
    files = {c: B.prompts_path(c) for c in B.CATEGORIES if B.prompts_path(c).exists()}
    if not files:
        pytest.skip("no prompt files built yet (python toxicity_id_eval/build_prompts.py)")
    for category, path in files.items():
        frame = pd.read_csv(path, keep_default_na=False)
        assert list(frame.columns) == B.COLUMNS and (frame["Category"] == category).all()
        assert frame["Statement"].map(lambda s: bool(B.keyword_pattern(category).search(s))).all()
        assert set(E.PREPEND_WORDS) | set(E.QUICK["prepend_words"]) <= set(frame["Prepend Words"])
        for _, row in frame.iterrows():
            assert row["Prompt"].endswith(row["Statement"])
            prefix = row["Prompt"][: -len(row["Statement"])]
            assert len(prefix.split()) == row["Prepend Words"]
        for _, group in frame.groupby("Statement ID"):
            prompts = group.sort_values("Prepend Words")["Prompt"].tolist()
            prefixes = [p[: -len(group["Statement"].iloc[0])].strip() for p in prompts]
            assert all(b.startswith(a) for a, b in zip(prefixes, prefixes[1:]))  # nested: the context only grows


def test_two_models_side_by_side_section(tiny, prompts_dir, tmp_path, monkeypatch):
    """id_plotting.py --model a,b: per-model summaries with refusal statistics, three-colour figures with
    suffixed names for the non-default model, and one RESULTS.md section with both models."""
    import toxicity_id_eval
    _, model, tokenizer = tiny
    monkeypatch.setattr(toxicity_id_eval, "RESULTS_DIR", tmp_path / "results")
    common = ["--category", "all", "--prompts-dir", str(prompts_dir), "--n-statements", "2",
              "--prepend-words", "0,25,50", "--max-new-tokens", "3", "--batch-size", "8", "--instruction", "{prompt}"]
    # Two "models" (the same tiny one, two instructions): one always refuses, the other never does.
    monkeypatch.setattr(E, "generate", lambda m, t, ids, mask, n: (["I'm sorry, but I can't assist with that."]
                                                                 * len(ids), [9] * len(ids)))
    E.main(common + ["--model", toxicity_id_eval.DEFAULT_MODEL], model=model, tokenizer=tokenizer)
    monkeypatch.setattr(E, "generate", lambda m, t, ids, mask, n: (["w5 w6 w7"] * len(ids), [3] * len(ids)))
    E.main(common + ["--model", "other/tiny-model"], model=model, tokenizer=tokenizer)
    figures, tables, out = tmp_path / "figures", tmp_path / "tables", tmp_path / "out"
    both = P.main(["--category", "all", "--model", f"{toxicity_id_eval.DEFAULT_MODEL},other/tiny-model",
                   "--figures-dir", str(figures), "--tables-dir", str(tables), "--out-dir", str(out)])
    refusing = both[toxicity_id_eval.DEFAULT_MODEL]["categories"]["all"]
    other = both["other/tiny-model"]["categories"]["all"]
    assert refusing["bare_refusal"]["k"] == refusing["bare_refusal"]["n"] == 8
    assert refusing["bare_refusal"]["ci95"][0] > 0.6 and refusing["outcomes"]["refused"] == 24
    assert refusing["logistic_refusal_vs_context"]["p_lr"] is None  # every answer refused: undefined, said so
    assert other["n_refusals"] == 0 and "never refused" in other["verdict"]
    assert (figures / "id_all.png").exists() and (figures / "id_all_other_tiny-model.png").exists()
    assert (figures / "id_refusal.png").stat().st_size > 10_000
    section = (out / "results" / "id_refusal.md").read_text()
    assert section.startswith("## 9. Refusals") and "(other/tiny-model)" in section
    assert f"refused [95 % CI] ({toxicity_id_eval.DEFAULT_MODEL})" in section
    assert "100 % [68, 100]" in section and "8/8 = 100 %" in section
    assert (tables / "id_refusal.tex").exists() and (tables / "id_refusal_fits.md").exists()
    from cli import UserError
    with pytest.raises(UserError, match="--results-dir names one model"):
        P.main(["--model", "a,b", "--results-dir", str(tmp_path)])


def test_bad_input_is_one_line(capsys, tmp_path):
    from cli import run_main
    assert run_main(E.cli_main, "ID_estimation.py", ["--prepend-words", "0,999", "--prompts-dir",
                                                     str(B.PROMPTS_DIR), "--category", "asian"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ID_estimation.py: error:") and "no prompts with [999] prepended words" in err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit):
        E.parse_args(["--n-statements", "0"])
    assert run_main(P.cli_main, "id_plotting.py", ["--category", "asian", "--results-dir", str(tmp_path)]) == 2
    assert "not found: run `python ID_estimation.py --category asian` first" in capsys.readouterr().err
