"""The one hook module every system shares: find a model's decoder layers, read or replace what any
module takes in or gives out, and stop the forward pass early. It knows no architecture.

    with Trace(model, 5) as t:                      # decoder layer 5 (or a name: "model.layers.5.mlp")
        model(**batch)
    t.output                                        # its hidden state [B, T, d]

    with TraceDict(model, [3, 7], edit_output=lambda h, name: h * 0.5, stop=True):
        model(**batch)                              # layers 3 and 7 edited; nothing after layer 7 runs

    edit = Trace(model, 5, retain_output=False, edit_output=f)   # attach ...
    model.generate(...)                             # ... works for generate, padded batches, KV cache
    edit.close()                                    # ... and detach: the model is stock again

The spline statistics (instrument.py), SEA's edits, SelfIE's insertions and the neuron-topic modes all
go through :class:`Trace` / :class:`TraceDict`; nothing else in the project registers a PyTorch hook.

Callbacks see the module's *main tensor*: the hidden state ``[B, T, d]`` that a block receives as its
first argument (or ``hidden_states=``) and returns (alone, or first in a tuple, as GPT-2 blocks do). They
are called ``fn(tensor, name)`` and return the replacement, or None to leave it as it is.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

import torch
from torch import nn

Edit = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised after the last module a caller needs: the rest of the forward pass is skipped."""


class UnsupportedArchitecture(ValueError):
    pass


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: the ModuleList with one entry per hidden layer."""
    n_layers = getattr(_text_config(model.config), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UnsupportedArchitecture(
        f"Could not find the {n_layers} transformer blocks of {type(model).__name__}: no ModuleList of "
        "config.num_hidden_layers entries.")


def layer_name(model: nn.Module, index: int) -> str:
    """Dotted name of decoder layer ``index`` (negative counts from the end), e.g. ``model.layers.3``."""
    layers = decoder_layers(model)
    if not -len(layers) <= index < len(layers):
        raise IndexError(f"layer {index} is out of range: {type(model).__name__} has {len(layers)} decoder "
                         f"layers (0..{len(layers) - 1}).")
    return module_name(model, layers[index])


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}.")


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no submodule named {name!r}.") from None


def resolve(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """(name, module) for a decoder-layer index, a dotted name or a module."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer), layer
    if isinstance(layer, int):
        layer = layer_name(model, layer)
    return layer, get_module(model, layer)


def main_tensor(value):
    """The hidden state in a module's output (or input args): a tensor, or the first of a tuple."""
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_main(value, tensor):
    if isinstance(value, tuple):
        return (tensor,) + value[1:]
    if isinstance(value, list):
        return [tensor] + value[1:]
    return tensor


class Trace:
    """Hooks on one module for as long as the object is open (a context manager, or until ``close()``).

    retain_input / retain_output  keep the main tensor of the input / output as ``.input`` / ``.output``
    clone, detach                 copy what is retained (it may otherwise be changed in place later)
    edit_input / edit_output      ``fn(tensor, name) -> tensor | None``: replace the main tensor
    stop                          raise :class:`StopForward` once the module has run (early exit);
                                  leaving the ``with`` block swallows it
    """

    def __init__(self, model: nn.Module, layer, *, retain_input: bool = False, retain_output: bool = True,
                 clone: bool = False, detach: bool = False, edit_input: Edit | None = None,
                 edit_output: Edit | None = None, stop: bool = False):
        self._handles = []
        self.name, self.module = resolve(model, layer)
        self.input = self.output = None
        keep = (lambda t: t.detach().clone() if detach else t.clone()) if clone else \
               (lambda t: t.detach() if detach else t)

        if retain_input or edit_input is not None:
            def pre_hook(module, args, kwargs):
                from_kwargs = not args
                tensor = kwargs["hidden_states"] if from_kwargs else args[0]
                if edit_input is not None:
                    new = edit_input(tensor, self.name)
                    if new is not None:
                        tensor = new
                        if from_kwargs:
                            kwargs = {**kwargs, "hidden_states": new}
                        else:
                            args = (new,) + tuple(args[1:])
                if retain_input:
                    self.input = keep(tensor)
                return args, kwargs
            self._handles.append(self.module.register_forward_pre_hook(pre_hook, with_kwargs=True))

        if retain_output or edit_output is not None or stop:
            def hook(module, inputs, output):
                if edit_output is not None:
                    new = edit_output(main_tensor(output), self.name)
                    if new is not None:
                        output = _replace_main(output, new)
                if retain_output:
                    self.output = keep(main_tensor(output))
                if stop:
                    raise StopForward
                return output
            self._handles.append(self.module.register_forward_hook(hook))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close()
        return kind is not None and issubclass(kind, StopForward)


class TraceDict(OrderedDict):
    """One :class:`Trace` per entry of ``layers`` (indices, names or modules), keyed by name, same options.

    ``stop=True`` ends the forward pass after the *last* entry of ``layers`` has run: give them in the
    order the model runs them.
    """

    def __init__(self, model: nn.Module, layers: Iterable, *, stop: bool = False, **options):
        super().__init__()
        layers = list(layers)
        try:
            for i, layer in enumerate(layers):
                trace = Trace(model, layer, stop=stop and i == len(layers) - 1, **options)
                if trace.name in self:
                    trace.close()
                    raise ValueError(f"{trace.name} is listed twice.")
                self[trace.name] = trace
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for trace in self.values():
            trace.close()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close()
        return kind is not None and issubclass(kind, StopForward)
