"""SplineLlamaForCausalLM: Llama whose forward pass also yields the paper's spline features and ID.

It is transformers' ``LlamaForCausalLM`` plus the instrumentation of ``instrument.py``: loading
(``from_pretrained`` with a hub id, a folder or ``gguf_file=``, ``dtype``, ``device_map="auto"``)
and logits are exactly the stock model's. ``model.spline_features(input_ids, attention_mask)``
returns the per-layer statistics of a padded batch, computed on the model's device during one
forward pass that stops after the deepest requested layer.
"""
import copy

import torch
from transformers import LlamaForCausalLM

from instrument import instrument


class SplineModelMixin:
    """Mix into any ``*ForCausalLM`` class (before it) to instrument it at construction."""

    def __init__(self, config, *args, **kwargs):
        # Own copy: instrumenting switches the config's attention implementation, which must not
        # leak into a stock model built from the same config object.
        super().__init__(copy.deepcopy(config), *args, **kwargs)
        instrument(self)

    def spline_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers=None,
                        with_id: bool = True, pool_hidden: bool = False, groups=()) -> dict:
        """``{"spline": [B, L, 7], "ids": [B, L] or None, "hidden": [B, d] or None, "extended": [B, L, F]
        or None}`` for one batch.

        ``layers``: indices to keep (default all); the forward pass ends after the deepest one.
        ``with_id``: also the attention ID of the last real token per layer.
        ``pool_hidden``: also the mean over real tokens of the deepest layer's MLP input.
        ``groups``: extended statistics to add (feature_io.FEATURE_GROUPS; ``FEATURE_SETS["extended"]``).
        """
        return self.spline_recorder.run(input_ids, attention_mask, layers, with_id, pool_hidden, groups)


class SplineLlamaForCausalLM(SplineModelMixin, LlamaForCausalLM):
    pass
