"""Datasets of the reproduction, by name: ``from data import load_dataset; df = load_dataset("rtp")``.

``python -m data`` lists every name with its origin, label columns and row count;
``python data/prepare.py`` builds the embedded (offline) suite. See data/README.md.
"""
from data.registry import DATASETS, describe, list_datasets, load_dataset

__all__ = ["DATASETS", "describe", "list_datasets", "load_dataset"]
