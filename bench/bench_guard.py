"""What the toxicity guard (guard.py) costs inside model.generate, in one run: same prompts, model, batches.

    .venv/bin/python bench/bench_guard.py --threads 1              # ~2 min of CPU on SmolLM2
    .venv/bin/python bench/bench_guard.py --tiny                   # seconds, a random 4-layer model: CI
    .venv/bin/python bench/bench_guard.py --update-readme          # also paste the table into bench/README.md

Conditions, interleaved batch by batch (a noisy neighbour slows every one alike), greedy, KV cache,
left-padded batches, exactly GEN_NEW_TOKENS new tokens:
  unguarded          model.generate
  in-pass guard      SplineGuard.generate: the guard's statistics from generate's own prefill (hooks.py)
  separate pass      guard.score on the batch (a second forward pass over the prompts), then model.generate
  stop, all flagged  SplineGuard.generate(on_flag="stop") with every prompt flagged (ends in the prefill)
  prefill + 1 step   model.generate with max_new_tokens=2: the prefill (whose logits give the first token) and
                     one decoding step, what a stopped prompt may cost at most (the target)
  prefill alone      model.generate with max_new_tokens=1: shown beside it, not judged. A stop skips the rest of
                     the deepest layer and the LM head's last-token row, less than the guard's own statistics
                     (the region projection on every layer), so the stop costs a little more than this
Times are this process's CPU time (judged) and wall time: with one torch thread on a shared machine a
neighbour's load stretches the wall time, not the CPU time. The guard is fitted on the bench prompts with arbitrary labels unless --guard FILE is given: its weights do
not change what it costs (the same statistics and one dot product either way).
Results: bench/results/guard_latest.json and guard_latest.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "bench"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402

from bench_extraction import machine_info, make_prompts, make_tiny_model, write_results  # noqa: E402
from cli import UserError, non_negative_int, output_lock, positive_int, run_main  # noqa: E402

# -- settings (each one is a command-line flag too) ----------------------------------------------
MODEL = "smollm2-135m"
GEN_PROMPTS = 16          # prompts, cut to GEN_PROMPT_TOKENS, in left-padded batches of GEN_BATCH
GEN_PROMPT_TOKENS = 48
GEN_BATCH = 8
GEN_NEW_TOKENS = 16
FIT_PROMPTS = 48          # prompts the stand-in guard is fitted on
REPEATS = 5
THREADS = 0               # torch threads; 0 keeps torch's default
SEED = 0
OUT_DIR = REPO / "bench" / "results"
README = REPO / "bench" / "README.md"
TARGETS = {
    "in_pass": ("in-pass guard: generate time / unguarded generate", "<=", 1.03),
    "stop": ("stop, every prompt flagged: time / (prefill + one step)", "<=", 1.0),
}
LABELS = {"unguarded": "unguarded `model.generate`", "in_pass": "guard in the pass (`SplineGuard.generate`)",
          "separate": "guard as a separate pass (`guard.score`) + generate",
          "stop": "`on_flag=\"stop\"`, every prompt flagged", "one_step": "prefill + one step (`max_new_tokens=2`)",
          "prefill": "prefill alone (`max_new_tokens=1`)"}


def run(args) -> dict:
    import guard as G
    from model_loading import load_model, load_tokenizer
    model = load_model(args.model, device="cpu")
    tok = load_tokenizer(args.model, "left")
    prompts, origin = make_prompts(tok, max(args.prompts, FIT_PROMPTS), 8, GEN_PROMPT_TOKENS, args.seed,
                                   datasets=not args.tiny)
    if args.guard:
        guard = G.load(args.guard)
    else:
        labels = [i % 2 for i in range(FIT_PROMPTS)]
        guard = G.SplineGuard().fit_texts(model, tok, prompts[:FIT_PROMPTS], labels, name=args.model)
    guard.threshold_ = 2.0  # nothing is flagged in the guarded rows: their tokens are the unguarded ones
    texts = prompts[:args.prompts]
    batches = []
    for i in range(0, len(texts), GEN_BATCH):
        enc = tok(texts[i:i + GEN_BATCH], return_tensors="pt", padding=True, truncation=True,
                  max_length=GEN_PROMPT_TOKENS)
        batches.append((texts[i:i + GEN_BATCH], enc))
    gen = dict(max_new_tokens=GEN_NEW_TOKENS, min_new_tokens=GEN_NEW_TOKENS, do_sample=False,
               pad_token_id=tok.pad_token_id)

    def condition(name, batch):
        texts, enc = batch
        kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        if name == "unguarded":
            return model.generate(**kw, **gen)
        if name == "in_pass":
            return guard.generate(model, **kw, **gen).sequences
        if name == "separate":
            guard.score(model, tok, texts, batch_size=GEN_BATCH, padding_side="left")
            return model.generate(**kw, **gen)
        if name == "stop":
            saved, guard.threshold_ = guard.threshold_, -1.0
            try:
                return guard.generate(model, **kw, on_flag="stop", **gen).sequences
            finally:
                guard.threshold_ = saved
        steps = 2 if name == "one_step" else 1  # generate's first new token comes from the prefill's logits
        return model.generate(**kw, **{**gen, "max_new_tokens": steps, "min_new_tokens": steps})

    names = list(LABELS)
    with torch.inference_mode():
        for name in names:  # untimed warm-up
            condition(name, batches[-1])
    times, cpu, outputs = {n: [] for n in names}, {n: [] for n in names}, {}
    load_before = os.getloadavg()[0]
    for rep in range(args.repeats):
        total, total_cpu, out = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0), {n: [] for n in names}
        for k, batch in enumerate(batches):
            shift = (k + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    out[name].append(condition(name, batch))
                total[name] += time.perf_counter() - t0
                total_cpu[name] += time.process_time() - c0
        for name in names:
            times[name].append(total[name])
            cpu[name].append(total_cpu[name])
        outputs = out
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{n} {total[n]:.2f}s" for n in names), flush=True)

    def rel(a, b, of=None):  # per-repeat ratio, median over repeats; judged on CPU time (see the docstring)
        of = cpu if of is None else of
        return statistics.median(x / y for x, y in zip(of[a], of[b]))

    same = all(torch.equal(a, b) for a, b in zip(outputs["in_pass"], outputs["unguarded"]))
    rows = {n: {"label": LABELS[n], "seconds": times[n], "median_s": statistics.median(times[n]),
                "cpu_seconds": cpu[n], "median_cpu_s": statistics.median(cpu[n]),
                "ratio_to_unguarded": rel(n, "unguarded"), "wall_ratio_to_unguarded": rel(n, "unguarded", times)}
            for n in names}
    measured = {"in_pass": rel("in_pass", "unguarded"), "stop": rel("stop", "one_step")}
    stop_to_prefill = rel("stop", "prefill")
    targets = []
    for key, (label, op, threshold) in TARGETS.items():
        ok = measured[key] <= threshold
        targets.append({"key": key, "target": label, "measured": measured[key], "op": op, "threshold": threshold,
                        "pass": ok})
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info("cpu"),
            "settings": {"model": args.model, "prompts": len(texts), "origin": origin, "batch_size": GEN_BATCH,
                         "prompt_tokens": GEN_PROMPT_TOKENS, "new_tokens": GEN_NEW_TOKENS, "repeats": args.repeats,
                         "guard": args.guard or f"fitted on {FIT_PROMPTS} bench prompts (arbitrary labels)",
                         "guard_features": guard.features, "guard_layers": len(guard.layers),
                         "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
                         "tiny": args.tiny},
            "conditions": rows, "in_pass_tokens_identical": same, "targets": targets,
            "stop_to_prefill_alone": stop_to_prefill,
            "all_pass": all(t["pass"] for t in targets)}


def markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), "
             f"transformers {m['transformers']}; run {res['created']}; load average (1 min) "
             f"{s['load_average_before']:.2f} before, {s['load_average_after']:.2f} after.", "",
             f"Guard in generation: model {s['model']}, {s['prompts']} prompts from {s['origin']} (at most "
             f"{s['prompt_tokens']} tokens, left-padded batches of {s['batch_size']}), {s['new_tokens']} new greedy "
             f"tokens; guard: {s['guard_features']} features of {s['guard_layers']} layers, {s['guard']}; median of "
             f"{s['repeats']} repeats, conditions interleaved batch by batch. In-pass tokens identical to the "
             f"unguarded call: {'yes' if res['in_pass_tokens_identical'] else 'NO'}.", "",
             "| condition | CPU time (s) | CPU time / unguarded | wall time (s) | wall / unguarded |",
             "|---|---:|---:|---:|---:|"]
    for r in res["conditions"].values():
        lines.append(f"| {r['label']} | {r['median_cpu_s']:.3f} | {r['ratio_to_unguarded']:.3f} | {r['median_s']:.3f} | "
                     f"{r['wall_ratio_to_unguarded']:.3f} |")
    lines += ["", "| target | measured | required | result |", "|---|---:|---:|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:.3f} | {t['op']} {t['threshold']:.3g} | "
                     f"{'PASS' if t['pass'] else 'FAIL'} |")
    if "stop_to_prefill_alone" in res:
        lines += ["", f"Stop / prefill alone (not a target): {res['stop_to_prefill_alone']:.3f}."]
    return "\n".join(lines) + "\n"


def update_readme(table: str, path: Path = README) -> None:
    """Replace the text between bench/README.md's <!-- bench-guard:begin/end --> markers."""
    from analysis.report import paste_between_markers
    paste_between_markers(path, "bench-guard", table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--guard", default=None, help="a guard file (default: one fitted on the bench prompts)")
    p.add_argument("--prompts", type=positive_int, default=GEN_PROMPTS)
    p.add_argument("--repeats", type=positive_int, default=REPEATS)
    p.add_argument("--threads", type=non_negative_int, default=THREADS, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--tiny", action="store_true", help="CI smoke mode: a random 4-layer Llama, 1 repeat")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--update-readme", action="store_true", help="rewrite the guard section of bench/README.md")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny and args.update_readme:
        raise UserError("--tiny numbers say nothing about speed: drop --update-readme, or run without --tiny")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        args.repeats = 1
        if args.model == MODEL:
            args.model = str(make_tiny_model(args.out_dir / "tiny-llama"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    with output_lock(args.out_dir / "guard_latest.json", "the guard benchmark's results"):
        res = run(args)
        table = markdown(res)
        write_results(args.out_dir, "guard_latest", res, table)
    print(table)
    if args.update_readme:
        update_readme(table)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "bench_guard.py"))
