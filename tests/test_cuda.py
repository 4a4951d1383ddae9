"""The CUDA path: float32 equals the naive reference, float16/bfloat16 stay close, device_map="auto" works.

Every test here is skipped on a machine without a CUDA GPU (CI has none); on a GPU machine run
``.venv/bin/python -m pytest tests/test_cuda.py -s`` (``-m slow`` adds the real SmolLM2 checks).
The half-precision bounds were set from deviations measured on an H100 (printed with -s), with headroom.
"""
import numpy as np
import pytest
import torch

from feature_io import load_features, read_feature_metadata
from model_loading import load_model, load_tokenizer
from naive_reference import gate_preactivations, naive_features
from rounding import assert_features_match
from test_spline_model import instrumented_copy, padded
from tiny_models import random_prompts, tiny_stock_model, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HALF = [torch.float16, torch.bfloat16]
# Largest deviations from float32 allowed, (active fraction: max abs, distances: median rel), set with
# headroom above what an H100 gave: tiny models fp16 (0.016, 0.027), bf16 (0.031, 0.17); SmolLM2 bf16
# (0.007, 0.34). The closest-hyperplane distance is a minimum over 1536 units of |h|: in 8 bits of
# mantissa that minimum is mostly rounding noise, which is why float32 is the default everywhere.
TINY_BOUNDS = {torch.float16: (0.05, 0.05), torch.bfloat16: (0.06, 0.3)}
SMOLLM2_BOUNDS = {torch.float16: (0.02, 0.5), torch.bfloat16: (0.02, 0.5)}
FRACTION_COLUMNS, DISTANCE_COLUMNS = [0, 1, 2, 3], [4, 5, 6]


def deviations(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Largest absolute error of the active-fraction stats, median relative error of the distance stats."""
    got, want = got.double().cpu(), want.double().cpu()
    frac = (got[..., FRACTION_COLUMNS] - want[..., FRACTION_COLUMNS]).abs().max().item()
    dist = ((got[..., DISTANCE_COLUMNS] - want[..., DISTANCE_COLUMNS]).abs()
            / want[..., DISTANCE_COLUMNS].abs().clamp(min=1e-6)).median().item()
    return {"frac_max_abs": frac, "dist_median_rel": dist}


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])
def test_float32_on_gpu_equals_naive_float64(family):
    stock = tiny_stock_model(family)
    model = instrumented_copy(family, stock).cuda()
    tok = tiny_tokenizer()
    for prompt in random_prompts(4, seed=2, lo=1, hi=10):
        token_ids = tok(prompt)["input_ids"]
        got = model.spline_recorder.run(torch.tensor([token_ids]), torch.ones(1, len(token_ids)))
        assert got["spline"].device.type == "cuda"
        # GPU kernels sum in another order than the CPU: the pre-activations differ by that rounding,
        # measured against the stock model run on the GPU too
        gpu_h = gate_preactivations(stock.cuda(), token_ids)[0]
        stock.cpu()
        want_spline, want_ids, inside = naive_features(stock, token_ids, internals=True)
        assert_features_match(got["spline"][0].double().cpu().numpy(), got["ids"][0].cpu().numpy(), want_spline,
                              want_ids, inside, other_h=gpu_h)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])
def test_half_precision_logits_unchanged_and_features_close(family, dtype):
    stock = tiny_stock_model(family)
    full = instrumented_copy(family, stock).cuda()
    half = instrumented_copy(family, stock).to("cuda", dtype)
    stock = stock.to("cuda", dtype)
    ids, mask = padded(random_prompts(8, seed=5, lo=2, hi=12), "right")
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():  # instrumenting changes nothing the model computes, in any dtype
        assert torch.equal(half(input_ids=ids, attention_mask=mask).logits,
                           stock(input_ids=ids, attention_mask=mask).logits)
    got, want = half.spline_recorder.run(ids, mask), full.spline_recorder.run(ids, mask)
    assert got["spline"].dtype == torch.float32 and torch.isfinite(got["spline"]).all()
    dev = deviations(got["spline"], want["spline"])
    id_rel = ((got["ids"] - want["ids"]).abs().float() / want["ids"].float()).max().item()
    print(f"\n{family} {dtype}: {dev} id_max_rel={id_rel:.4f}")
    frac_bound, dist_bound = TINY_BOUNDS[dtype]
    assert dev["frac_max_abs"] <= frac_bound and dev["dist_median_rel"] <= dist_bound
    assert id_rel <= 0.25


def test_extraction_on_gpu_equals_cpu_and_device_map_auto(tiny_llama_dir, tmp_path):
    from extract_features import extract_features

    texts = random_prompts(40, seed=6, lo=1, hi=30)
    files = {name: extract_features(texts, out=tmp_path / f"{name}.parquet", model=str(tiny_llama_dir),
                                    dtype="float32", progress=False, **kw)
             for name, kw in {"cpu": {"device": "cpu"}, "cuda": {"device": "cuda"},
                              "auto": {"device_map": "auto"}}.items()}
    loaded = {name: load_features(path) for name, path in files.items()}
    for name in ("cuda", "auto"):  # device_map="auto": accelerate placed the model on the GPU
        assert read_feature_metadata(files[name])["device"].startswith("cuda")
        np.testing.assert_allclose(loaded[name][0], loaded["cpu"][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(loaded[name][1], loaded["cpu"][1])


def test_default_is_float32_on_gpu_too(tiny_llama_dir, tmp_path):
    """Half precision moves the distance statistics (see the tests above): float32 unless asked."""
    from extract_features import extract_features

    path = extract_features(["w1 w2 w3", "w4"], out=tmp_path / "f.parquet", model=str(tiny_llama_dir),
                            progress=False)
    info = read_feature_metadata(path)
    assert info["dtype"] == "float32" and info["device"].startswith("cuda")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_smollm2_half_precision_close_to_float32_cpu(dtype):
    """Real weights: how far bf16/fp16 on the GPU move the features from float32 on the CPU."""
    prompts = ["The quick brown fox jumps over the lazy dog.", "Hi",
               "Why is the sky blue? Explain it to a child, in two short sentences, without any jargon.",
               "You are a worthless idiot and everyone you know hates you.",
               "def mean(xs):\n    return sum(xs) / len(xs)\n",
               "Patients with type 2 diabetes were randomised to metformin or placebo for 24 weeks."]
    tok = load_tokenizer("smollm2-135m")
    batch = tok(prompts, return_tensors="pt", padding=True)
    reference = load_model("smollm2-135m", dtype="float32", device="cpu")
    want = reference.spline_recorder.run(batch["input_ids"], batch["attention_mask"])
    model = load_model("smollm2-135m", dtype=dtype, device="cuda")
    got = model.spline_recorder.run(batch["input_ids"], batch["attention_mask"])
    dev = deviations(got["spline"], want["spline"])
    id_rel = ((got["ids"].cpu() - want["ids"]).abs().float() / want["ids"].float()).mean().item()
    print(f"\nsmollm2 {dtype}: {dev} id_mean_rel={id_rel:.4f}")
    frac_bound, dist_bound = SMOLLM2_BOUNDS[dtype]
    assert dev["frac_max_abs"] <= frac_bound and dev["dist_median_rel"] <= dist_bound
    assert id_rel <= 0.10
