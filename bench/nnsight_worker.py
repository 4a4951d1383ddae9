"""The tracing-library contender of bench_extraction.py: the same 7 statistics, written with nnsight.

Runs in its own process because nnsight patches torch and mounts ``.save`` on every object when it is
imported; the benchmark must not time its own code under those patches. Protocol (one JSON object
per line on stdout, commands on stdin):

    worker prints {"ready": true, ...} once the model is loaded and warmed up
    "run K"   -> runs batch K, prints {"k": K, "elapsed": seconds, "cuda_peak_mib": ...}
    "dump P"  -> saves the features of every batch run so far to P (.npy, [N, L, 7] in batch order)
    "quit"    -> exits

Written the way a user of the library would write it: trace the stock model on the padded batch,
read every layer's ``mlp.gate_proj.output`` inside the trace, compute the masked statistics there and
``.save()`` them; the model runs its full forward pass (no early exit, logits included).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def masked_stats(h, inv_norm, mask):
    """The paper's 7 statistics per prompt from one layer's gate pre-activation, padding masked out."""
    frac = (h > 0).float().mean(-1)
    dist = (h.abs() * inv_norm).amin(-1).float()
    n = mask.sum(1)
    out = []
    for x in (frac, dist):
        mean = (x * mask).sum(1) / n
        std = (((x - mean[:, None]) ** 2 * mask).sum(1) / (n - 1).clamp(min=1)).sqrt()
        lo = torch.where(mask > 0, x, torch.inf).amin(1)
        hi = torch.where(mask > 0, x, -torch.inf).amax(1)
        out.append((mean, std, lo, hi))
    (f_mean, f_std, f_min, f_max), (d_mean, d_std, d_min, _) = out
    return torch.stack([f_mean, f_min, f_max, f_std, d_min, d_mean, d_std], 1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--batches", required=True, help=".npz with ids_K and mask_K arrays")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import nnsight
        from nnsight import TransformersModel
    except Exception as error:  # noqa: BLE001 - any import failure is reported, not raised
        print(json.dumps({"ready": False, "error": f"nnsight could not be imported: {error!r}"}), flush=True)
        return 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    dtype = getattr(torch, args.dtype)
    stock = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype, **extra).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_path, **extra)
    lm = TransformersModel(stock, tokenizer=tokenizer)
    data = np.load(args.batches)
    n_batches = len([k for k in data.files if k.startswith("ids_")])
    batches = [(torch.from_numpy(data[f"ids_{k}"]), torch.from_numpy(data[f"mask_{k}"])) for k in range(n_batches)]

    # The layer stack as the user sees it through the envoy; 1/||w_d|| computed once, like any user would.
    layers = lm.model.layers
    inv_norms = [1.0 / layer.mlp.gate_proj.weight.float().norm(dim=1) for layer in stock.model.layers]
    results: dict[int, np.ndarray] = {}

    def run(k: int) -> float:
        ids, mask = batches[k]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        ids, mask = ids.to(args.device), mask.to(args.device)
        fmask = mask.float()
        with torch.inference_mode():
            with lm.trace({"input_ids": ids, "attention_mask": mask}):
                feats = list().save()
                for i in range(len(inv_norms)):
                    h = layers[i].mlp.gate_proj.output
                    feats.append(masked_stats(h, inv_norms[i].to(h.dtype), fmask))
        out = torch.stack(list(feats), 1).float().cpu().numpy()
        elapsed = time.perf_counter() - began
        results[k] = out
        return elapsed

    try:
        run(n_batches - 1)  # warm-up on the shortest batch
        results.clear()
    except Exception as error:  # noqa: BLE001
        print(json.dumps({"ready": False, "error": f"nnsight trace failed: {error!r}"}), flush=True)
        return 0
    print(json.dumps({"ready": True, "nnsight": getattr(nnsight, "__version__", "?")}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            k = int(arg)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            elapsed = run(k)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if args.device.startswith("cuda") else None
            print(json.dumps({"k": k, "elapsed": elapsed, "cuda_peak_mib": peak}), flush=True)
        elif cmd == "dump":
            np.save(arg, np.concatenate([results[k] for k in sorted(results)]))
            print(json.dumps({"dumped": arg}), flush=True)
        elif cmd == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
