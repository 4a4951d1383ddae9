"""SplineMistralForCausalLM: the Llama instrumentation applied to Mistral.

Mistral differs from Llama only by its sliding-window attention, which reaches the ID through
the model's own attention mask (or, when sdpa skips the mask, through ``sliding_window``), so
the one statistics implementation of the Llama file serves unchanged.
"""
from transformers import MistralForCausalLM

from modeling_llama import SplineModelMixin


class SplineMistralForCausalLM(SplineModelMixin, MistralForCausalLM):
    pass
