"""The intrinsic-dimension (ID) experiment: prompt files, their builder and the figure/table script."""
import re
from pathlib import Path

# The ID experiment's default: the embedded chat model that refuses (SmolLM2-135M-Instruct almost never does).
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def default_results_dir(model: str = DEFAULT_MODEL, quick: bool = False) -> Path:
    """``results/`` for the default model, ``results/<model>/`` for another one; ``quick/`` below for --quick."""
    folder = RESULTS_DIR
    if model != DEFAULT_MODEL:
        folder = folder / re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).rstrip("/\\")).strip("._")[-80:]
    return folder / "quick" if quick else folder
