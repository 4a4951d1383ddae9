"""Attach the spline statistics and the attention ID to any transformers model, without copying it.

Two small interventions, both architecture-agnostic:
  * a hook (hooks.py, the project's one hook module) on each layer's first MLP map (``gate_proj`` for gated MLPs, ``c_fc``/``fc1``/
    ``intermediate.dense`` for GELU MLPs) turns its output h into the 7 statistics of that layer;
  * the model's attention function (sdpa, eager, flash, ...) is wrapped under the name
    ``spline_<base>``: before delegating, it scores the last real token's query against the keys
    and counts the keys above 0.1 x the head's maximum. The wrapped function itself is unchanged,
    so logits are bit-identical to the stock model and no [T, T] attention map is ever kept.
Early exit: the trace of the deepest requested layer raises :class:`StopForward`, so asking for
layers 0-2 runs only the embeddings and the first three decoder layers.
"""
from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from hooks import StopForward, TraceDict, UnsupportedArchitecture  # noqa: F401 (re-exported)
from feature_io import FEATURE_GROUPS
from hooks import decoder_layers as _decoder_layers
from spline_stats import (SERIES_GROUPS, extended_statistics, last_token_attention_id, partition_statistics,
                          positive_indicator, region_projection, token_series)

# Name of the first MLP map in each family, most specific first. Its output is the
# pre-activation h whose sign pattern is the spline's region (the gate for gated MLPs).
GATE_NAMES = (
    "mlp.gate_proj",        # Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-1.5 style gated MLPs
    "mlp.c_fc",             # GPT-2 (Conv1D: weight is [in, out])
    "intermediate.dense",   # BERT, RoBERTa, MiniLM and other BERT-like encoders
    "fc1",                  # OPT
    "mlp.fc1",              # Phi, CLIP text
    "mlp.dense_h_to_4h",    # GPT-NeoX / Pythia
    "mlp.fc_in",            # GPT-J
)
SUPPORTED = ("Llama, Mistral, Qwen2/Qwen3, Gemma 1-3 (gated MLPs); GPT-2, GPT-NeoX, GPT-J, OPT, Phi "
             "and BERT-like encoders (first MLP map before the activation)")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    try:
        return _decoder_layers(model)
    except UnsupportedArchitecture as error:
        raise UnsupportedArchitecture(f"{error} Supported: {SUPPORTED}.") from None


def find_gate(layer: nn.Module, index: int) -> nn.Module:
    modules = dict(layer.named_modules())
    for name in GATE_NAMES:
        if name in modules:
            return modules[name]
    raise UnsupportedArchitecture(
        f"Layer {index} ({type(layer).__name__}) has no MLP map named any of {GATE_NAMES}: the spline "
        f"statistics need the pre-activation of the MLP's first map (fused gate_up_proj and mixture-of-"
        f"experts MLPs are not supported). Supported: {SUPPORTED}.")


def _row_weight(gate: nn.Module) -> torch.Tensor:
    """Weight with one row per hidden unit d (transformers' Conv1D stores it transposed)."""
    weight = gate.weight
    return weight.t() if type(gate).__name__ == "Conv1D" else weight


class SplineRecorder:
    """Per-model state of the instrumentation. ``run`` is the one extraction entry point."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers = decoder_layers(model)
        self.n_layers = len(self.layers)
        self.gates = [find_gate(layer, i) for i, layer in enumerate(self.layers)]
        self._inv_norms: dict[int, tuple] = {}
        self._projections: dict[int, torch.Tensor] = {}
        self._active = None  # the state of the forward pass in flight, or None
        names = {module: name for name, module in model.named_modules()}
        self._gate_index = {names[gate]: i for i, gate in enumerate(self.gates)}  # traced name -> layer
        for index, layer in enumerate(self.layers):
            for module in layer.modules():  # the attention function is handed one of these
                module.__dict__["_spline_layer"] = index
                module.__dict__["_spline_recorder"] = self
        _wrap_attention(model)

    # -- statistics of the MLP partition ---------------------------------------------------------
    def _inv_norm(self, index: int) -> torch.Tensor:
        weight = _row_weight(self.gates[index])
        if weight.is_meta:
            raise RuntimeError("Layer weights are offloaded (meta tensors): use a device_map that keeps every "
                               "layer on a GPU or the CPU, without disk or CPU offload.")
        key = (weight.data_ptr(), weight._version, weight.device)
        cached = self._inv_norms.get(index)
        if cached is None or cached[0] != key:
            # Kept in the weight's dtype, which is h's: no cast in every forward pass.
            cached = (key, (1.0 / weight.float().norm(dim=1)).to(weight.dtype))
            self._inv_norms[index] = cached
        return cached[1]

    def _gate_statistics(self, output: torch.Tensor, name: str) -> None:
        """Trace callback on a gate: its output h becomes the layer's 7 statistics (h is left as it is)."""
        state = self._active
        index = self._gate_index[name]
        mask = state["mask"].to(output.device, non_blocking=True)
        groups = state["groups"]
        paper = state.get("paper", True)
        if not groups:  # the paper's set: exactly the path it always had
            state["spline"][index] = partition_statistics(output, self._inv_norm(index), mask)
            return
        # The per-token series feed the paper's 7 and the token-series groups; a caller that wants the
        # region projection alone (a regions-only guard) skips both of their passes over h.
        positive = positive_indicator(output)  # h > 0 once, for frac and the region counts alike
        series = (token_series(output, self._inv_norm(index), positive)  # shared by both sets: computed once
                  if paper or any(g in groups for g in SERIES_GROUPS) else None)
        if paper:
            state["spline"][index] = partition_statistics(output, self._inv_norm(index), mask, series)
        projection = None
        if "regions" in groups:
            projection = self._projections.get(index)
            if projection is None or projection.device != output.device:
                projection = region_projection(output.shape[-1], index).to(output.device)
                self._projections[index] = projection
        state["extended"][index] = extended_statistics(output, series, mask, groups, projection, positive)

    def record_gate(self, state: dict, output: torch.Tensor, name: str) -> int:
        """The statistics of gate ``name``'s output into ``state`` (a dict shaped as :meth:`run`'s) for a
        forward pass traced elsewhere, such as the prefill of ``generate``; returns the gate's layer."""
        previous, self._active = self._active, state
        try:
            self._gate_statistics(output, name)
        finally:
            self._active = previous
        return self._gate_index[name]

    def _pool_input(self, x: torch.Tensor, name: str) -> None:
        """Trace callback on the deepest gate: mean over real tokens of the MLP's (normed) input."""
        state = self._active
        if state["pool_hidden"] and self._gate_index[name] == state["deepest"]:
            m = state["mask"].to(x.device)[..., None]
            state["hidden"] = torch.where(m, x.float(), 0.0).sum(1) / m.sum(1)

    # -- attention intrinsic dimension -----------------------------------------------------------
    def record_id(self, module, query, key, attention_mask, kwargs) -> None:
        state = self._active
        index = module.__dict__.get("_spline_layer")
        if state is None or not state["with_id"] or index not in state["wanted"]:
            return
        n_keys = key.shape[2]
        last_pos = state["last_pos"].to(query.device)
        if attention_mask is not None and attention_mask.ndim == 4:
            # The model's own mask row ([B, 1 or H, Tq, K], boolean or additive): causality, padding
            # and sliding windows exactly as the model applies them. Layers of one kind share one mask
            # object per batch, so its row is taken once (the cache holds the mask, so its id stays its).
            cached = state["allowed"].get((id(attention_mask), n_keys))
            if cached is not None:
                allowed = cached[1]
            else:
                row = attention_mask[torch.arange(key.shape[0], device=query.device), 0, last_pos, :n_keys]
                allowed = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
                state["allowed"][(id(attention_mask), n_keys)] = (attention_mask, allowed)
        else:
            # No 4-D mask: sdpa skipped it (no padding, plain causality) or flash passed key padding.
            keys = torch.arange(n_keys, device=query.device)
            allowed = state["mask"].to(query.device)[:, :n_keys]
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()
            if getattr(module, "is_causal", True):
                allowed = allowed & (keys[None, :] <= last_pos[:, None])
                window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
                if window:
                    allowed = allowed & (keys[None, :] > last_pos[:, None] - window)
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        state["ids"][index] = last_token_attention_id(query, key, scaling, allowed, last_pos, kwargs.get("softcap"))

    # -- one batch -------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers=None, with_id: bool = True,
            pool_hidden: bool = False, groups=(), paper: bool = True) -> dict:
        """Features of one padded batch (left or right padding).

        Returns ``{"spline": [B, L, 7] float32, "ids": [B, L] int32 or None, "hidden": [B, d] or None,
        "extended": [B, L, F] float32 or None}`` on the device of the first layer, for the requested
        ``layers`` (default all, in order); ``groups`` names the extended statistics to add (feature_io's
        FEATURE_GROUPS, e.g. ``FEATURE_SETS["extended"]``; none by default). ``paper=False`` (with some
        ``groups``) skips the paper's 7 statistics: "spline" is then None.
        """
        if not paper and not groups:
            raise ValueError("paper=False needs some extended groups: otherwise nothing would be recorded")
        unknown = [g for g in groups if g not in FEATURE_GROUPS]
        if unknown:
            raise ValueError(f"unknown feature groups {unknown}: choose among {list(FEATURE_GROUPS)}")
        layers = list(range(self.n_layers)) if layers is None else sorted(set(int(i) for i in layers))
        if not layers or layers[0] < 0 or layers[-1] >= self.n_layers:
            raise ValueError(f"layers must be within 0..{self.n_layers - 1}, got {layers}")
        device = self.model.get_input_embeddings().weight.device
        mask = attention_mask.to(device).bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("Every prompt in a batch needs at least one real token.")
        n_tokens = mask.shape[1]
        # Index of each prompt's last real token, whatever side the padding is on.
        last_pos = n_tokens - 1 - mask.flip(1).int().argmax(dim=1)
        state = {"mask": mask, "last_pos": last_pos, "wanted": set(layers), "deepest": layers[-1],
                 "with_id": with_id, "pool_hidden": pool_hidden, "spline": {}, "ids": {}, "hidden": None,
                 "allowed": {}, "groups": tuple(groups), "extended": {}, "paper": paper}
        # Positions count real tokens only, so a left-padded prompt sees the positions it has alone.
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        self._active = state
        gates = [self.gates[i] for i in layers]
        try:
            with TraceDict(self.model, gates, retain_output=False, edit_output=self._gate_statistics,
                           edit_input=self._pool_input if pool_hidden else None, stop=True):
                self.model(input_ids=input_ids.to(device), attention_mask=mask.long(), position_ids=position_ids,
                           use_cache=False)
        finally:
            self._active = None
        missing = [i for i in layers if i not in (state["spline"] if paper else state["extended"])]
        if missing:
            raise RuntimeError(f"No statistics were recorded for layers {missing}: the forward pass did not reach "
                               "their MLPs.")
        if with_id and any(i not in state["ids"] for i in layers):
            raise UnsupportedArchitecture(
                f"{type(self.model).__name__} does not route its attention through transformers' attention "
                "interface, so the ID cannot be recorded for it: pass with_id=False (--no-id).")
        spline = torch.stack([state["spline"][i].to(device) for i in layers], dim=1) if paper else None
        ids = torch.stack([state["ids"][i].to(device) for i in layers], dim=1) if with_id else None
        extended = torch.stack([state["extended"][i].to(device) for i in layers], dim=1) if groups else None
        return {"spline": spline, "ids": ids, "hidden": state["hidden"], "extended": extended}


def _attention_wrapper(base: str):
    def spline_attention(module, query, key, value, attention_mask, *args, **kwargs):
        recorder = module.__dict__.get("_spline_recorder")
        if recorder is not None and recorder._active is not None:
            recorder.record_id(module, query, key, attention_mask, kwargs)
        if base == "eager":
            # Each modeling file has its own eager function (softcapping, biases): use the module's.
            function = sys.modules[type(module).__module__].eager_attention_forward
        else:
            function = ALL_ATTENTION_FUNCTIONS[base]
        return function(module, query, key, value, attention_mask, *args, **kwargs)
    spline_attention.__name__ = f"spline_{base}_attention"
    return spline_attention


def _wrap_attention(model: nn.Module) -> None:
    """Route the model's attention through ``spline_<base>`` (a no-op for models without the interface)."""
    configs = [model.config] + [getattr(model.config, key) for key in getattr(model.config, "sub_configs", {})]
    configs = [c for c in configs if c is not None and hasattr(c, "_attn_implementation")]
    for config in configs:
        base = config._attn_implementation or "eager"
        if base.startswith("spline_"):
            continue
        name = f"spline_{base}"
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _attention_wrapper(base))
            mask_base = base if base in AttentionMaskInterface._global_mapping else "sdpa"
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_base])
        config._attn_implementation_internal = name


def instrument(model: nn.Module) -> nn.Module:
    """Instrument any supported model in place; ``model.spline_recorder.run(...)`` then extracts."""
    if getattr(model, "spline_recorder", None) is None:
        recorder = SplineRecorder(model)
        model.__dict__["spline_recorder"] = recorder
        if not hasattr(model, "spline_features"):  # Spline* classes define it; give others the same call
            model.__dict__["spline_features"] = recorder.run
    return model
