"""Supervised control, SelfIE's application (Chen, Vondrick, Mao, ICML 2024; the original's "Supervised
Controls" notebook): edit one layer so that the model's interpretation of a chosen embedding becomes a target.

The hidden state ``hidden_states[l]`` of token t is the output of decoder layer l - 1. The notebook trains
that layer's MLP with Adam (learning rate 3e-4, 20 steps, MSE) so that the state becomes a target embedding
whose interpretation is the target; nothing else changes. Here the loss is read through hooks.py (the forward
pass stops after layer l - 1), so any architecture hooks.py supports works; only the MLP's parameters get
gradients.

    edit = fit_control(model, ids, token=-1, source_layer=3, target=target_state)   # the model is edited
    model.generate(...)                                # ... generate sees the edit (the weights changed)
    edit.save("edit.safetensors"); edit.restore(model)  # only the changed weights are written
    ControlEdit.load("edit.safetensors").apply(model)
    rand = edit.random_like(seed=0)                    # the control: a random edit of the same size

An edit is the new values of the MLP's parameters (``weights``) and the old ones (``original``), keyed by
their names in the model.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch

from cli import UserError
from hooks import Trace, UnsupportedArchitecture, decoder_layers, layer_name, num_layers

STEPS = 20            # the notebook's loop
LEARNING_RATE = 3e-4  # the notebook's Adam learning rate


def mlp_of(model, layer: int) -> tuple[str, torch.nn.Module]:
    """(name, module) of decoder layer ``layer``'s MLP (the ``mlp`` child of the block, as Llama, Qwen, Gemma,
    Mistral and GPT-2 name it)."""
    block = decoder_layers(model)[layer]
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, torch.nn.Module):
        raise UnsupportedArchitecture(f"decoder layer {layer} of {type(model).__name__} has no 'mlp' child to edit")
    return f"{layer_name(model, layer)}.mlp", mlp


@dataclass
class ControlEdit:
    source_layer: int
    weights: dict[str, torch.Tensor]                                # parameter name -> edited value
    original: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> value before the edit
    info: dict = field(default_factory=dict)                       # loss curve, seconds, what was edited

    def _params(self, model) -> dict[str, torch.nn.Parameter]:
        params = dict(model.named_parameters())
        for name, value in self.weights.items():
            if name not in params:
                raise UserError(f"the edit changes {name}, which this model does not have: load it into the model "
                                "it was made for")
            if tuple(params[name].shape) != tuple(value.shape):
                raise UserError(f"the edit's {name} is {tuple(value.shape)}, the model's is "
                                f"{tuple(params[name].shape)}: load it into the model it was made for")
        return {name: params[name] for name in self.weights}

    @torch.no_grad()
    def apply(self, model) -> "ControlEdit":
        """Write the edited weights into ``model`` (keeping its current ones to restore)."""
        for name, param in self._params(model).items():
            self.original.setdefault(name, param.detach().clone())
            param.copy_(self.weights[name].to(param.device, param.dtype))
        return self

    @torch.no_grad()
    def restore(self, model) -> None:
        """Put back the weights the model had before :meth:`apply` (or before :func:`fit_control`)."""
        if not self.original:
            raise ValueError("this edit holds no original weights to restore (it was loaded, not applied)")
        params = self._params(model)
        for name, value in self.original.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))

    def delta_norm(self) -> float:
        return float(sum(((self.weights[n].float() - self.original[n].float()) ** 2).sum() for n in self.weights) ** 0.5)

    def random_like(self, seed: int = 0) -> "ControlEdit":
        """The baseline: a random change of each parameter with the same Frobenius norm as this edit's change."""
        gen = torch.Generator().manual_seed(seed)
        weights = {}
        for name, new in self.weights.items():
            old = self.original[name].float()
            size = (new.float() - old).norm()
            direction = torch.randn(old.shape, generator=gen)
            weights[name] = (old + direction * size / direction.norm()).to(new.dtype)
        return ControlEdit(self.source_layer, weights, {n: v.clone() for n, v in self.original.items()},
                           {"random_of": self.info.get("mlp"), "seed": seed})

    def save(self, path) -> None:
        """The changed weights only (safetensors), with the source layer and the fit's record as metadata."""
        from safetensors.torch import save_file
        save_file({n: v.detach().cpu().contiguous() for n, v in self.weights.items()}, str(path),
                  metadata={"source_layer": str(self.source_layer), "info": json.dumps(self.info)})

    @classmethod
    def load(cls, path) -> "ControlEdit":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}
        if "source_layer" not in meta:
            raise UserError(f"{path} is not a SelfIE control edit (no source_layer in its metadata): save one with "
                            "ControlEdit.save")
        return cls(int(meta["source_layer"]), weights, {}, json.loads(meta.get("info", "{}")))


def all_states_at(model, ids: list[int], source_layer: int) -> torch.Tensor:
    """hidden_states[source_layer] [T, d] of one prompt, with gradients (the pass stops after the layer)."""
    x = torch.tensor([ids], device=model.get_input_embeddings().weight.device)
    with Trace(model, source_layer - 1, stop=True) as trace:
        model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return trace.output[0]


def state_at(model, ids: list[int], token: int, source_layer: int) -> torch.Tensor:
    return all_states_at(model, ids, source_layer)[token]


def fit_control(model, ids: list[int], token: int, source_layer: int, target: torch.Tensor, *, steps: int = STEPS,
                lr: float = LEARNING_RATE, reference: list[list[int]] = (), beta: float = 0.0) -> ControlEdit:
    """Train the MLP of decoder layer ``source_layer - 1`` (Adam, MSE) so that ``hidden_states[source_layer]``
    at ``token`` of the prompt ``ids`` becomes ``target`` [d]. The model is left edited; returns the edit.

    ``reference`` prompts with ``beta`` > 0 add ``beta`` * the MSE between their states at the source layer and
    the unedited ones (the notebook's first, reference-preserving loop, beta 10; its final loop uses the
    edit loss alone, the default here)."""
    n_layers = num_layers(model)
    if not 1 <= source_layer <= n_layers - 1:
        raise UserError(f"source layer {source_layer} is out of range: the edited MLP is the one before it, so use "
                        f"1..{n_layers - 1}")
    if not -len(ids) <= token < len(ids):
        raise UserError(f"token {token} is outside the prompt, which has {len(ids)} tokens")
    name, mlp = mlp_of(model, source_layer - 1)
    params = {f"{name}.{n}": p for n, p in mlp.named_parameters()}
    original = {n: p.detach().clone() for n, p in params.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    began = time.perf_counter()
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(list(params.values()), lr=lr)
        target = target.detach().float().to(next(iter(params.values())).device)
        reference = list(reference) if beta > 0 else []
        with torch.no_grad():
            kept = [all_states_at(model, r, source_layer).float() for r in reference]
        with torch.enable_grad():
            for _ in range(steps):
                loss = torch.nn.functional.mse_loss(state_at(model, ids, token, source_layer).float(), target)
                if reference:
                    loss = loss + beta * sum(torch.nn.functional.mse_loss(all_states_at(model, r, source_layer).float(),
                                                                          k) for r, k in zip(reference, kept)) / len(kept)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            with torch.no_grad():
                losses.append(float(torch.nn.functional.mse_loss(state_at(model, ids, token, source_layer).float(),
                                                                  target)))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    info = {"mlp": name, "steps": steps, "lr": lr, "beta": beta, "reference_prompts": len(reference), "loss": losses, "seconds": time.perf_counter() - began}
    return ControlEdit(source_layer, {n: p.detach().clone() for n, p in params.items()}, original, info)


@torch.no_grad()
def perplexity(model, rows: list[list[int]]) -> float:
    """exp of the mean next-token loss over the token ids of ``rows`` (one forward pass per row)."""
    device = model.get_input_embeddings().weight.device
    total, count = 0.0, 0
    for ids in rows:
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += len(ids) - 1
    return float(torch.exp(torch.tensor(total / max(count, 1))))
