"""hooks.py: read, replace and stop, on every tiny architecture, with forward and generate."""
import pytest
import torch

from hooks import StopForward, Trace, TraceDict, decoder_layers, layer_name
from tiny_models import tiny_stock_model

FAMILIES = ["llama", "mistral", "gemma3", "gpt2"]


def _ids(n=2, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (n, t), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_reads_what_hidden_states_report(family):
    model = tiny_stock_model(family)
    ids = _ids()
    with torch.no_grad():
        stock = model(ids, output_hidden_states=True)
        with TraceDict(model, range(len(decoder_layers(model))), retain_input=True) as traces:
            model(ids)
    outs = [t.output for t in traces.values()]
    ins = [t.input for t in traces.values()]
    # hidden_states[0] is the embeddings (input of layer 0); the last entry has the final norm applied.
    for i, hidden in enumerate(stock.hidden_states[:-1]):
        torch.testing.assert_close(ins[i], hidden, rtol=0, atol=0)
    for i, hidden in enumerate(stock.hidden_states[1:-1]):
        torch.testing.assert_close(outs[i], hidden, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_edits_change_the_forward_and_leave_no_hook_behind(family):
    model = tiny_stock_model(family)
    ids = _ids()
    with torch.no_grad():
        stock = model(ids).logits
        with Trace(model, 1, edit_output=lambda h, name: None):   # None: unchanged
            same = model(ids).logits
        with Trace(model, 1, edit_output=lambda h, name: h * 0):
            zeroed = model(ids).logits
        with Trace(model, 1, edit_input=lambda h, name: h + 1.0):
            shifted = model(ids).logits
        after = model(ids).logits
    assert torch.equal(stock, same) and torch.equal(stock, after)
    assert not torch.allclose(stock, zeroed) and not torch.allclose(stock, shifted)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_zeroing_a_layer_output_equals_running_the_rest_by_hand():
    model = tiny_stock_model("llama")
    ids = _ids(1, 5)
    with torch.no_grad():
        with Trace(model, 0) as first:
            model(ids)
        # Edit layer 2's input to 2x: the same as doubling layer 1's output.
        with Trace(model, 2, edit_input=lambda h, n: 2 * h):
            a = model(ids).logits
        with Trace(model, 1, edit_output=lambda h, n: 2 * h):
            b = model(ids).logits
    assert first.output.shape == (1, 5, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stop_skips_the_rest_and_is_swallowed():
    model = tiny_stock_model("llama")
    calls = []
    with TraceDict(model, [0, 1], retain_output=True) as spy:
        with Trace(model, "model.norm", retain_output=False, edit_output=lambda h, n: calls.append(n)):
            with TraceDict(model, [0, 1], stop=True):
                with torch.no_grad():
                    model(_ids())
    assert calls == [] and spy[layer_name(model, 1)].output is not None
    with pytest.raises(StopForward):  # outside a trace block the exception reaches the caller
        handle = Trace(model, 0, stop=True)
        try:
            model(_ids())
        finally:
            handle.close()


def test_attached_edit_applies_to_generate_with_cache_until_closed():
    model = tiny_stock_model("llama")
    ids = _ids(1, 4)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    stock = model.generate(ids, **kwargs)
    edit = Trace(model, 2, retain_output=False, edit_output=lambda h, n: -h)
    edited = model.generate(ids, **kwargs)
    # The same edit, by hand: a greedy loop without the cache.
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    edit.close()
    assert torch.equal(edited, seq)
    assert torch.equal(model.generate(ids, **kwargs), stock)


def test_bad_names_and_indices_are_clear():
    model = tiny_stock_model("llama")
    with pytest.raises(IndexError, match="out of range.*4 decoder layers"):
        Trace(model, 4)
    with pytest.raises(ValueError, match="no submodule named 'model.nope'"):
        Trace(model, "model.nope")
    with pytest.raises(ValueError, match="listed twice"):
        TraceDict(model, [1, "model.layers.1"])
    assert all(not m._forward_hooks for m in model.modules())
