"""DeepMind's mathematics_dataset generator (the source of the Pile's DM Mathematics), run here.

mathematics-dataset 1.0.1 (2019) is imported straight from its pinned wheel in the cache (a wheel
is a zip archive, so it goes on ``sys.path`` as it is; nothing is installed). Three things in it
break under the project's pins, and are fixed in this process only, without touching any file:

- numpy 2 removed ``np.object``: the generator's ``polynomials`` module gets its own ``np``, a thin
  module that forwards everything to numpy and adds ``object``;
- numpy 2 removed ``ndarray.itemset``: that module's ``np.zeros``/``np.empty`` return a subclass of
  ndarray with an ``itemset(index, value)`` that does ``self[index] = value``;
- sympy 1.13 no longer re-exports ``base_solution_linear`` from ``sympy.solvers.diophantine``: the
  name is re-exported from the submodule that still defines it, before the generator is imported.
- it imports ``absl.logging`` for one error message; when absl-py is not installed, a stand-in
  module backed by the standard ``logging`` is registered (absl is not a project dependency).

It also needs ``six`` (pinned in requirements.txt).
"""
from __future__ import annotations

import importlib
import logging
import random
import sys
import types

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data.packages import PINS, fetch


class _ItemsetArray(np.ndarray):
    """ndarray with the ``itemset`` method that numpy 2 removed."""

    def itemset(self, index, value):
        self[index] = value


def _numpy_for_generator() -> types.ModuleType:
    shim = types.ModuleType("numpy_for_mathematics_dataset")
    shim.__getattr__ = lambda name: getattr(np, name)
    shim.object = object
    shim.zeros = lambda *a, **k: np.zeros(*a, **k).view(_ItemsetArray)
    shim.empty = lambda *a, **k: np.empty(*a, **k).view(_ItemsetArray)
    return shim


def _ordered_random() -> types.ModuleType:
    """``random`` for the composition module, with draws that do not depend on set iteration order.

    The generator draws from lists built from sets (of symbol names, hashed per process, and of
    entities, hashed by memory address); sorting before the draw makes a seed reproduce the same
    problems in every process, while each draw stays uniform.
    """
    def key(item):
        if hasattr(item, "_description"):   # an Entity: its texts (str() and .handle are guarded)
            return (str(item._description), str(item._child_description))
        return (str(item), "")

    shim = types.ModuleType("random_for_mathematics_dataset")
    shim.__getattr__ = lambda name: getattr(random, name)
    shim.choice = lambda seq: random.choice(sorted(seq, key=key))
    def shuffle(items):
        items.sort(key=key)
        random.shuffle(items)
    shim.shuffle = shuffle
    return shim


def _import_generator():
    """Import mathematics_dataset.modules from the cached wheel, with the compatibility fixes."""
    wheel = str(fetch(PINS["mathematics-dataset"]))
    if wheel not in sys.path:
        sys.path.append(wheel)
    dioph = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(dioph, "base_solution_linear"):
        dioph.base_solution_linear = importlib.import_module(
            "sympy.solvers.diophantine.diophantine").base_solution_linear
    try:
        importlib.import_module("absl.logging")
    except ImportError:
        absl = types.ModuleType("absl")
        absl.logging = logging.getLogger("mathematics_dataset")
        sys.modules.setdefault("absl", absl)
        sys.modules.setdefault("absl.logging", absl.logging)
    polynomials = importlib.import_module("mathematics_dataset.sample.polynomials")
    polynomials.np = _numpy_for_generator()
    composition = importlib.import_module("mathematics_dataset.util.composition")
    composition.random = _ordered_random()
    modules = importlib.import_module("mathematics_dataset.modules.modules")
    settings = importlib.import_module("mathematics_dataset.generate_settings")
    return modules, settings


def _flatten(tree, prefix=""):
    for key in sorted(tree):
        value = tree[key]
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}__")
        else:
            yield f"{prefix}{key}", value


def generate(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """``n`` question/answer texts, spread evenly over the generator's 56 training modules.

    Seeded (``random``, ``np.random`` and sympy's own generator are seeded from ``seed``, and
    restored afterwards; the module order is sorted). As in
    DeepMind's ``generate.py``, problems whose question is longer than ``MAX_QUESTION_LENGTH`` or whose
    answer is longer than ``MAX_ANSWER_LENGTH`` are redrawn. A text is ``question`` and ``answer``
    on two lines, as the Pile's DM Mathematics documents lay them out.
    """
    modules, settings = _import_generator()
    flat = list(_flatten(modules.train(lambda entropy: entropy)))   # full 'train' entropy range
    per_module, extra = divmod(n, len(flat))
    sympy_rng = importlib.import_module("sympy.core.random").rng   # sympy's randprime draws here
    states = random.getstate(), np.random.get_state(), sympy_rng.getstate()
    random.seed(seed)
    np.random.seed(seed)
    sympy_rng.seed(seed)
    rows, redrawn = [], 0
    try:
        with tqdm(total=n, desc="dm_mathematics: generate", unit="problem", leave=False) as bar:
            for i, (name, module) in enumerate(flat):
                for _ in range(per_module + (1 if i < extra else 0)):
                    while True:
                        problem = module()
                        question, answer = str(problem.question), str(problem.answer)
                        if (len(question) <= settings.MAX_QUESTION_LENGTH
                                and len(answer) <= settings.MAX_ANSWER_LENGTH):
                            break
                        redrawn += 1
                    rows.append({"text": f"{question}\n{answer}", "question": question,
                                 "answer": answer, "subset": name})
                    bar.update(1)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        sympy_rng.setstate(states[2])
    df = pd.DataFrame(rows)
    df.attrs["redrawn_too_long"] = redrawn
    return df
