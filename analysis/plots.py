"""Figures: ROC-AUC heatmaps and 2-D embeddings of the features."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PNG_META = {"Software": None}  # no version stamp: two runs write the same bytes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata=PNG_META)
    plt.close(fig)
    return path


def heatmap(values: np.ndarray, row_labels, col_labels, title: str, path: Path, xlabel="", vmin=0.5,
            annotate=None) -> Path:
    values = np.asarray(values, dtype=float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * n_cols + 2.5), max(1.6, 0.45 * n_rows + 1.2)))
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=1.0)
    ax.set_yticks(range(n_rows), labels=row_labels)
    step = max(1, n_cols // 30)
    ax.set_xticks(range(0, n_cols, step), labels=[col_labels[i] for i in range(0, n_cols, step)],
                  rotation=90 if n_cols > 10 else 0)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if annotate if annotate is not None else n_cols * n_rows <= 60:
        for i in range(n_rows):
            for j in range(n_cols):
                ax.text(j, i, f"{100 * values[i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label="ROC-AUC")
    return _save(fig, path)


def embedding(points: np.ndarray, labels: np.ndarray, title: str, path: Path, axis_names=("1", "2")) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5.5))
    names = list(dict.fromkeys(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for i, name in enumerate(names):
        sel = labels == name
        ax.scatter(points[sel, 0], points[sel, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=name)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def lines(x, series: dict, title: str, path: Path, xlabel="", ylabel="", ylim=(0.0, 1.0)) -> Path:
    """One line per entry of ``series`` ({label: y values over x}), e.g. a rate per layer."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, y in series.items():
        ax.plot(list(x), [np.nan if v is None else v for v in y], marker="o", markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=ylim)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))
