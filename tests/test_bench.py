"""The extraction benchmark runs end to end in its tiny mode (a random 4-layer model, a few prompts).

This checks that the script works and that its JSON is complete and sane, never how fast anything is:
timings of a tiny model on a shared CI machine mean nothing. The real numbers come from running
``bench/bench_extraction.py`` itself (see bench/README.md).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "bench_extraction.py"
TIMED = ("bare", "ours_all_id", "ours_all", "ours_first_id", "ours_first", "paper_id", "paper")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_method_is_timed(tiny_run):
    _, res, _ = tiny_run
    methods = res["methods"]
    for name in TIMED:
        m = methods[name]
        assert "skipped" not in m, (name, m)
        assert _positive(m["median_s"]) and _positive(m["prompts_per_s"]) and _positive(m["ratio_to_bare"])
        assert m["peak_extra_mib"] >= 0
        assert len(m["seconds"]) == res["settings"]["repeats"]
    assert methods["bare"]["ratio_to_bare"] == 1.0
    # The tracing library is optional (bench/requirements.txt): timed, or skipped with the reason.
    nn = methods["nnsight"]
    assert "skipped" in nn and nn["skipped"] or _positive(nn["prompts_per_s"])


def test_all_methods_compute_the_same_features(tiny_run):
    _, res, _ = tiny_run
    for name in ("paper", "paper_id"):
        assert res["methods"][name]["max_abs_diff_vs_ours"] < 1e-4
    if "skipped" not in res["methods"]["nnsight"]:
        assert res["methods"]["nnsight"]["max_abs_diff_vs_ours"] < 1e-4
    assert res["settings"]["id_agreement_paper_vs_ours"] == 1.0


def test_loading_and_targets_are_reported(tiny_run):
    _, res, md = tiny_run
    ld = res["loading"]
    assert ld["rows"] == 200
    assert all(_positive(ld[k]) for k in ("ours_s", "csv_json_s", "csv_literal_eval_s"))
    names = [t["target"] for t in res["targets"]]
    assert any("bare forward" in n for n in names) and any("paper" in n for n in names)
    assert any("loading" in n for n in names) and any("nnsight" in n for n in names)
    for t in res["targets"]:
        assert t["pass"] in (True, False, None)
    runs = res["memory"]["runs"]
    assert [r["prompts"] for r in runs] == [20, 40] and all("error" not in r for r in runs), runs
    for r in runs:  # the run's peak covers the tokenising child, which is measured too
        assert _positive(r["tokenising_mib"]) and r["run_peak_mib"] >= max(r["peak_rss_mib"], r["tokenising_mib"])
        _check_batch_peaks(r, res["settings"]["batch_size"])
    assert "| method | prompts/s |" in md and "| target |" in md
    m = res["machine"]
    assert m["torch_threads"] >= 1 and m["cpu_cores"] >= 1 and m["torch"]


def _check_batch_peaks(run, batch_size):
    """One peak per batch; the run's peak while extracting is the largest reading."""
    assert run["batches"] == math.ceil(run["prompts"] / batch_size)
    spread, base = run["batch_peak_above_load_mib"], run["rss_after_load_mib"]
    assert 0 <= spread["min"] <= spread["median"] <= spread["max"]
    assert base + max(spread["max"], run["finish_peak_above_load_mib"]) == pytest.approx(run["peak_rss_mib"])


def test_memory_only_runs_the_memory_runs_alone(tmp_path):
    """--memory-only, for comparing allocators: the settings the runs inherit are named in the table."""
    env = dict(os.environ, MALLOC_ARENA_MAX="2")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--memory-only", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert "methods" not in res and [t["target"] for t in res["targets"]] == ["peak RSS 40 / 20 prompts"]
    for r in res["memory"]["runs"]:
        _check_batch_peaks(r, res["settings"]["batch_size"])
    assert res["machine"]["allocator_env"] == {"MALLOC_ARENA_MAX": "2"}
    md = (tmp_path / "bench.md").read_text()
    assert "`MALLOC_ARENA_MAX=2`" in md and "| method |" not in md and "| 40 |" in md


def test_update_readme_rewrites_only_the_marked_section(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import bench_extraction as bench
    finally:
        sys.path.pop(0)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.README_BEGIN}\nold table\n{bench.README_END}\noutro\n")
    bench.update_readme("| new | table |\n", readme)
    text = readme.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
