"""The intrinsic-dimension (ID) experiment: prompt files, their builder and the figure/table script."""
import re
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def default_results_dir(model: str = DEFAULT_MODEL, quick: bool = False) -> Path:
    """``results/`` for the default model, ``results/<model>/`` for another one; ``quick/`` below for --quick."""
    folder = RESULTS_DIR
    if model != DEFAULT_MODEL:
        folder = folder / re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).rstrip("/\\")).strip("._")[-80:]
    return folder / "quick" if quick else folder
