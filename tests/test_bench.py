"""The benchmark runs end to end in its tiny mode (a random 4-layer model, a few prompts), every method
computes the same features, and the generation edits do what they say.

Never how fast anything is: timings of a tiny model on a shared CI machine mean nothing. The real
numbers come from running ``bench/bench_extraction.py`` itself (see bench/README.md).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_stock_model, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "bench_extraction.py"
TIMED = ("bare", "body", "ours_all_id", "ours_all", "ours_first_id", "ours_first", "paper_id", "paper")

sys.path.insert(0, str(REPO / "bench"))
import bench_extraction as bench  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "latest.json").read_text()), (out / "latest.md").read_text()


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_method_is_timed(tiny_run):
    res, _ = tiny_run
    methods = res["methods"]
    for name in TIMED:
        m = methods[name]
        assert "skipped" not in m, (name, m)
        assert _positive(m["median_s"]) and _positive(m["prompts_per_s"]) and _positive(m["ratio_to_bare"])
        assert len(m["seconds"]) == res["settings"]["repeats"]
    assert methods["bare"]["ratio_to_bare"] == 1.0
    nn = methods["nnsight"]  # optional (bench/requirements.txt): timed, or skipped with the reason
    assert nn.get("skipped") or _positive(nn["prompts_per_s"])


def test_all_methods_compute_the_same_features(tiny_run):
    res, _ = tiny_run
    for name in ("paper", "paper_id"):
        assert res["methods"][name]["max_abs_diff_vs_ours"] < 1e-4
    if "skipped" not in res["methods"]["nnsight"]:
        assert res["methods"]["nnsight"]["max_abs_diff_vs_ours"] < 1e-4
    assert res["settings"]["id_agreement_paper_vs_ours"] == 1.0


def test_generation_loading_memory_and_targets_are_reported(tiny_run):
    res, md = tiny_run
    gen = res["generation"]["conditions"]
    assert list(gen) == ["unedited", "sea", "selfie"]
    assert all(_positive(g["median_s"]) and _positive(g["ratio_to_unedited"]) for g in gen.values())
    assert gen["unedited"]["tokens_changed"] == 0
    assert gen["sea"]["tokens_changed"] > 0 and gen["selfie"]["tokens_changed"] > 0  # really applied
    ld = res["loading"]
    assert ld["rows"] == 200 and all(_positive(ld[k]) for k in ("ours_s", "csv_json_s", "csv_literal_eval_s"))
    mem = res["memory"]
    assert [r["prompts"] for r in mem["runs"]] == [20, 40]
    for r in mem["runs"]:
        assert r["peak_mib"] == max(r["peak_extracting_mib"], r["peak_before_extracting_mib"]) > r["rss_after_load_mib"]
    assert mem["ratio"] == pytest.approx(mem["runs"][1]["peak_mib"] / mem["runs"][0]["peak_mib"])
    targets = {t["key"]: t for t in res["targets"]}
    assert set(targets) == set(bench.TARGETS) - {"paper_vs_ours_id_gpu"}  # every target of the CPU run
    assert targets["memory"]["threshold"] == 1.02 and targets["memory"]["measured"] == mem["ratio"]
    assert all(t["pass"] in (True, False, None) for t in targets.values())
    assert res["all_pass"] == all(t["pass"] is not False for t in targets.values())
    for header in ("| method | prompts/s |", "| condition |", "| reader |", "| prompts |", "| target |"):
        assert header in md


# -- the generation edits, on a tiny random Llama ------------------------------------------------------
def test_generation_rows_use_the_real_sea_and_selfie():
    import sea
    model, tok = tiny_stock_model("llama"), tiny_tokenizer("left")
    batch = tok(["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w3 w4 w5 w6 w7 w8 w9 w10 w11"], return_tensors="pt",
                padding=True)
    edit = bench.fitted_sea_edit(model, batch)
    assert isinstance(edit, sea.SEA) and edit.layers == sea.default_layers(model.config.num_hidden_layers)
    assert all(not m._forward_hooks for m in model.modules())  # fitting read the states and let go
    info = bench.selfie_insert_info(batch, torch.zeros(bench.SELFIE_POSITIONS, model.config.hidden_size))
    # positions count each prompt's real tokens: the 5 before its last 3
    assert [row[1][0] for row in info] == [[2, 3, 4, 5, 6], [1, 2, 3, 4, 5]]


def test_the_bench_registers_no_hook_of_its_own():
    """hooks.py is the project's one hook module."""
    for path in (REPO / "bench").glob("*.py"):
        assert "register_forward" not in path.read_text(), path


# -- bad input: one line, exit status 2 -----------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--memory-runs", "20000", "1000"], "--memory-runs 20000 1000: SMALL must be below LARGE"),
    (["--tiny", "--update-readme"], "--tiny numbers say nothing about speed"),
    (["--min-tokens", "50", "--max-tokens", "10"], "--min-tokens 50 is above --max-tokens 10"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("bench_extraction.py: error: " + message), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_update_readme_rewrites_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\noutro\n")
    bench.update_readme("| new | table |\n", readme)
    text = readme.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
