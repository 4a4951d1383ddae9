"""Spectral editing of activations (SEA; Qiu et al., arXiv 2405.09719): fit, save, load and apply.

    from sea import fit, load, mean_difference
    edit = fit(H, H_pos, H_neg, layers=[20, 21], energy_pos=0.998, energy_neg=0.998)   # [N, L, d] each
    with edit.apply(model):                  # context manager: model(...) and model.generate(...) run edited
        model.generate(**batch)
    handle = edit.attach(model); ...; handle.close()          # or attach / detach
    edit.save("edit.safetensors"); edit = load("edit.safetensors")

Per edited layer l, from the last-token states of base (H, the model's own answer), positive (H+) and
negative (H-) demonstrations, in float64:
    Omega+ = phi(H)^T phi(H+) / N,  Omega- = phi(H)^T phi(H-) / N,  U S V^T = svd(Omega)
    k = smallest rank whose share of squared singular values reaches the energy ratio
    P+ = U+[:, :k+] U+[:, :k+]^T  (keep what covaries with the positive behaviour)
    P- = U-[:, k-:] U-[:, k-:]^T  (drop the top directions that covary with the negative one)
    x' = phi^-1(combine(P+ phi(x), P- phi(x)))   on every token of the edited layers.
With ``center=True`` each set's own mean (over the demonstrations, per feature) is subtracted before phi and
the cross-covariances, and at inference x' = mu + phi^-1(combine(P+ phi(x - mu), P- phi(x - mu))), mu the
base states' mean (the public code's --do-mean-subtraction).
A rank-d projection is the identity, and is applied as such (no rounding): k+ = d, k- = 0 edits nothing.

The authors' defaults (their run scripts and inference class): combine "l2_norm", the edit on each edited
layer's MLP output (site "mlp"), no mean subtraction. Options, documented as departures:
- site "residual" edits the decoder layer's output, where the activations were read.
- combine "average" returns (P+x + P-x)/2. Without mean subtraction the energy ratio keeps k+ = k- = 1 on
  small models and the top directions of Omega+ and Omega- coincide, so P+ + P- = I and "average" returns
  exactly x/2: halving the residual at every edited layer breaks the model (the README has the measured
  perplexities). "l2_norm" rescales the same sum back to the input's norm.
Differences from the public code (documented on purpose, its known bugs are not repeated):
- "l2_norm" rescales the sum P+x + P-x of each token to that token's own L2 norm (per token, along the hidden
  dimension); the public code divides by a norm taken across tokens per feature.
- center=True subtracts per-feature means over the demonstrations; the public code (after its d x N transpose)
  takes the mean over the hidden dimension of each demonstration, and its inference adapter never subtracts
  or adds a mean.
- Phi-SEA applies the forward feature map at inference too, then its inverse (the public code discards the
  forward map's result). The maps are element-wise, at a per-dimension scale s_j (RMS of the fitted base
  states' feature j), and continue linearly (with their slope at the knee) beyond |x_j| = KNEE s_j, so that
  they are bijections of the real line and never saturate: a residual state's outlier dimensions (far beyond
  the layer's RMS) would otherwise be clamped, and the identity round trip with a per-layer scale broke the
  model. tanh(x/s); elu(x/s); squared_exponential: sign(x) (1 - exp(-(x/s)^2 / 2)), whose
  inverse keeps the sign (the public code's loses it). Phi-SEA runs in float64.
Everything is applied through hooks.TraceDict; nothing here registers a hook itself.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import hooks
from cli import UserError, parse_layer_spec

FEATURES = ("linear", "squared_exponential", "tanh", "elu")
COMBINES = ("average", "l2_norm")
SITES = ("residual", "mlp")
KNEE = 3.0                    # feature maps are non-linear within +-KNEE scales, linear (tangent) beyond
FORMAT = "sea-edit/2"


def default_layers(n_layers: int) -> list[int]:
    """The last two thirds of the decoder layers (the paper edits the last 21 of LLaMA-2's 32)."""
    return list(range(n_layers // 3, n_layers))


def resolve_layers(spec, n_layers: int) -> list[int]:
    """None or 'default' -> the last two thirds; else cli.parse_layer_spec ('last-L', 'a-b', 'a,b', list)."""
    if spec is None or spec == "default":
        return default_layers(n_layers)
    return parse_layer_spec(spec, n_layers)


def hidden_size(model: nn.Module) -> int:
    config = hooks._text_config(model.config)
    return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))


# -- feature maps: forward and inverse, element-wise, at scale s, linear beyond the knee ----------------------
def _knee(feature: str):
    """(value, slope) of the map at z = KNEE (elu: at z = -KNEE, where its tail begins)."""
    c = KNEE
    if feature == "tanh":
        t = math.tanh(c)
        return t, 1 - t * t
    if feature == "elu":
        return math.expm1(-c), math.exp(-c)
    if feature == "squared_exponential":
        return -math.expm1(-0.5 * c * c), c * math.exp(-0.5 * c * c)
    raise UserError(f"unknown feature function {feature!r}: choose one of {', '.join(FEATURES)}")


def phi(x: torch.Tensor, feature: str, scale) -> torch.Tensor:
    if feature == "linear":
        return x
    z, c = x / scale, KNEE
    value, slope = _knee(feature)
    if feature == "elu":
        return torch.where(z >= -c, torch.nn.functional.elu(z.clamp(min=-c)), value + slope * (z + c))
    a = z.abs()
    inner = torch.tanh(a.clamp(max=c)) if feature == "tanh" else -torch.expm1(-0.5 * a.clamp(max=c) ** 2)
    return torch.sign(z) * torch.where(a <= c, inner, value + slope * (a - c))


def phi_inverse(y: torch.Tensor, feature: str, scale) -> torch.Tensor:
    if feature == "linear":
        return y
    c = KNEE
    value, slope = _knee(feature)
    if feature == "elu":
        inner = torch.where(y > 0, y, torch.log1p(y.clamp(min=value, max=0)))
        z = torch.where(y >= value, inner, -c + (y - value) / slope)
    else:
        a = y.abs()
        inside = a.clamp(max=value)
        inner = torch.atanh(inside) if feature == "tanh" else torch.sqrt(-2.0 * torch.log1p(-inside))
        z = torch.sign(y) * torch.where(a <= value, inner, c + (a - value) / slope)
    return z * scale


def layer_heuristic(positive, negative) -> list[float]:
    """The public code's layer signature, per stored layer: the sum of the singular values of the
    cross-covariance [H+; H-]^T Y / N between the activations and one-hot labels Y (positive [0, 1], negative
    [1, 0]), in float64. Larger: the layer's states say more about the label (and are larger)."""
    _, Hp, Hn = _check_demonstrations(positive, positive, negative)
    n = Hp.shape[0]
    labels = torch.cat([torch.tensor([[0.0, 1.0]]).repeat(n, 1), torch.tensor([[1.0, 0.0]]).repeat(n, 1)]).double()
    out = []
    for i in range(Hp.shape[1]):
        x = torch.cat([Hp[:, i], Hn[:, i]]).double()
        out.append(float(torch.linalg.svdvals(x.T @ labels / n).sum()))
    return out


def heuristic_layers(positive, negative, count: int | None = None, stored_layers=None) -> list[int]:
    """The ``count`` stored layers (default: a third of them, at least one) with the largest
    :func:`layer_heuristic`, in increasing order."""
    scores = layer_heuristic(positive, negative)
    stored = list(range(len(scores))) if stored_layers is None else [int(l) for l in stored_layers]
    count = max(1, math.ceil(len(scores) / 3)) if count is None else int(count)
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:count]
    return sorted(stored[i] for i in top)


def energy_rank(singular_values: torch.Tensor, ratio: float) -> int:
    """Smallest k whose top-k squared singular values hold at least ``ratio`` of their sum."""
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    share = torch.cumsum(energy, 0) / total
    return int(min(len(share), int(torch.searchsorted(share, torch.tensor(ratio, dtype=share.dtype) - 1e-12)) + 1))


# -- the edits ---------------------------------------------------------------------------------------------
class _Applied:
    """What SEA and mean-difference steering share: one TraceDict on the edited modules."""
    layers: list[int]
    hidden_size: int
    site: str

    def _check(self, model: nn.Module) -> list:
        d = hidden_size(model)
        if d != self.hidden_size:
            raise UserError(f"this edit was fitted on a model with hidden size {self.hidden_size}, but the model has "
                            f"hidden size {d}: fit the edit on this model's activations")
        n = hooks.num_layers(model)
        bad = [i for i in self.layers if not 0 <= i < n]
        if bad:
            raise UserError(f"edit layers {bad} out of range: the model has {n} layers (0..{n - 1}); fit the edit "
                            "on this model or pick other layers")
        if self.site == "residual":
            return list(self.layers)
        names = [f"{hooks.layer_name(model, i)}.mlp" for i in self.layers]
        for name in names:
            hooks.get_module(model, name)  # a clear error if the architecture names its MLP otherwise
        return names

    def attach(self, model: nn.Module) -> hooks.TraceDict:
        """Edit the model until ``.close()`` of the returned TraceDict (also a context manager)."""
        targets = self._check(model)
        index = {}
        traces = hooks.TraceDict(model, targets, retain_output=False,
                                 edit_output=lambda h, name: self.edit_hidden(h, index[name]))
        for name, layer in zip(traces, self.layers):
            index[name] = layer
        return traces

    apply = attach  # ``with edit.apply(model): ...`` reads better as a context manager


@dataclass
class SEA(_Applied):
    """Fitted projections, per layer: ``pos[l]`` = U+[:, :k+] and ``neg[l]`` = U-[:, k-:] (float64, [d, k]);
    ``scale[l]``: the feature maps' per-dimension scale [d] (1 for linear); ``mean[l]``: the base states'
    mean [d] with ``center=True`` (else no entry)."""
    layers: list[int]
    hidden_size: int
    pos: dict
    neg: dict
    scale: dict = field(default_factory=dict)
    feature: str = "linear"
    combine: str = "l2_norm"
    site: str = "mlp"
    settings: dict = field(default_factory=dict)       # energy ratios, N, k+/k- per layer, center, ...
    mean: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    def _on(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        key = (id(t), x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = t.to(device=x.device, dtype=x.dtype)
        return self._cache[key]

    def projector(self, basis: torch.Tensor, x: torch.Tensor):
        """P x for P = B B^T; None when B spans everything (P is then the identity, applied exactly)."""
        if basis.shape[1] >= self.hidden_size:
            return None
        b = self._on(basis, x)
        return (x @ b) @ b.T

    def edit_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        # Phi-SEA in float64: the inverse maps amplify rounding where their slope is small.
        x = h if self.feature == "linear" else h.double()
        mu = self.mean.get(layer)
        if mu is not None:
            x = x - self._on(mu, x)
        scale = self.scale.get(layer, 1.0)
        if torch.is_tensor(scale):
            scale = self._on(scale, x)
        x = phi(x, self.feature, scale)
        p = self.projector(self.pos[layer], x)
        n = self.projector(self.neg[layer], x)
        p = x if p is None else p
        n = x if n is None else n
        if self.combine == "average":
            out = (p + n) / 2
        else:  # l2_norm: the sum, rescaled to the input token's own norm (per token)
            total = p + n
            out = total * (x.norm(dim=-1, keepdim=True) / total.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        out = phi_inverse(out, self.feature, scale)
        if mu is not None:
            out = out + self._on(mu, out)
        return out.to(h.dtype)

    def save(self, path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        tensors = {}
        for l in self.layers:
            tensors[f"pos.{l}"] = self.pos[l].contiguous()
            tensors[f"neg.{l}"] = self.neg[l].contiguous()
            scale = self.scale.get(l, 1.0)
            tensors[f"scale.{l}"] = (scale if torch.is_tensor(scale)
                                     else torch.full((self.hidden_size,), float(scale), dtype=torch.float64))
            if l in self.mean:
                tensors[f"mean.{l}"] = self.mean[l].contiguous()
        meta = dict(format=FORMAT, layers=self.layers, hidden_size=self.hidden_size, feature=self.feature,
                    combine=self.combine, site=self.site, settings=self.settings, centered=sorted(self.mean))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata={"sea": json.dumps(meta)})
        partial.replace(path)
        return path

    def with_options(self, **changes) -> "SEA":
        """The same projections with other inference options (combine, site)."""
        for key, allowed in (("combine", COMBINES), ("site", SITES)):
            if key in changes and changes[key] not in allowed:
                raise UserError(f"unknown {key} {changes[key]!r}: choose one of {', '.join(allowed)}")
        values = {k: getattr(self, k) for k in ("layers", "hidden_size", "pos", "neg", "scale", "feature",
                                                 "combine", "site", "settings", "mean")}
        return SEA(**{**values, **changes})


def load(path) -> SEA:
    """An edit saved by :meth:`SEA.save`."""
    from safetensors import safe_open
    path = Path(path)
    if not path.exists():
        raise UserError(f"no edit file {path}: fit one first (spectral_editing.py or sea.fit)")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("sea", "{}"))
        if meta.get("format") != FORMAT:
            raise UserError(f"{path} is not a SEA edit file of this version ({FORMAT}, found "
                            f"{meta.get('format')}): fit and save it again with sea.fit and SEA.save")
        layers = [int(l) for l in meta["layers"]]
        pos = {l: f.get_tensor(f"pos.{l}") for l in layers}
        neg = {l: f.get_tensor(f"neg.{l}") for l in layers}
        scale = {l: f.get_tensor(f"scale.{l}") for l in layers}
        mean = {int(l): f.get_tensor(f"mean.{l}") for l in meta["centered"]}
    return SEA(layers=layers, hidden_size=int(meta["hidden_size"]), pos=pos, neg=neg, scale=scale,
               feature=meta["feature"], combine=meta["combine"], site=meta["site"], settings=meta["settings"],
               mean=mean)


def _check_demonstrations(base, positive, negative) -> tuple:
    arrays = []
    for what, a in (("base", base), ("positive", positive), ("negative", negative)):
        a = torch.as_tensor(a)
        if a.ndim == 2:
            a = a[:, None, :]
        if a.ndim != 3:
            raise UserError(f"{what} demonstrations must be [N, d] or [N, layers, d] activations, got shape "
                            f"{tuple(a.shape)}")
        if a.shape[0] == 0:
            raise UserError(f"the {what} demonstrations are empty: give at least one example of each")
        arrays.append(a)
    shapes = {what: tuple(a.shape) for what, a in zip(("base", "positive", "negative"), arrays)}
    if len(set(shapes.values())) != 1:
        raise UserError(f"base, positive and negative demonstrations differ in size {shapes}: SEA pairs row i of "
                        "each (same prompt), so give the same number of examples, layers and hidden size")
    return tuple(arrays)


def fit(base, positive, negative, layers=None, *, energy_pos: float = 0.99, energy_neg: float = 0.99,
        k_pos: int | None = None, k_neg: int | None = None, feature: str = "linear", combine: str = "l2_norm",
        site: str = "mlp", center: bool = False, stored_layers=None) -> SEA:
    """Fit SEA (``feature='linear'``) or Phi-SEA from paired last-token activations.

    base, positive, negative: ``[N, L, d]`` (the states of ``stored_layers``, default 0..L-1) or ``[N, d]``
    (one layer). ``layers``: which of them to edit (None: the last two thirds; 'heuristic': the third of the
    stored layers with the largest :func:`layer_heuristic`; 'last-L', 'a-b', a list).
    ``k_pos`` / ``k_neg`` fix the ranks instead of the energy ratios. ``center``: subtract each set's mean
    before the cross-covariances and add the base mean back at inference.
    """
    if feature not in FEATURES:
        raise UserError(f"unknown feature function {feature!r}: choose one of {', '.join(FEATURES)}")
    if combine not in COMBINES:
        raise UserError(f"unknown combine {combine!r}: choose one of {', '.join(COMBINES)}")
    if site not in SITES:
        raise UserError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")
    for name, ratio in (("energy_pos", energy_pos), ("energy_neg", energy_neg)):
        if not 0 < ratio <= 1:
            raise UserError(f"{name} = {ratio} is not an energy ratio: give a number in (0, 1]")
    H, Hp, Hn = _check_demonstrations(base, positive, negative)
    n, n_stored, d = H.shape
    stored = list(range(n_stored)) if stored_layers is None else [int(l) for l in stored_layers]
    if len(stored) != n_stored:
        raise UserError(f"stored_layers names {len(stored)} layers but the activations hold {n_stored}")
    n_model = max(stored) + 1 if stored_layers is None else None
    if layers is None or layers == "default":
        chosen = default_layers(n_model) if n_model else stored
    elif layers == "heuristic":
        chosen = heuristic_layers(Hp, Hn, stored_layers=stored)
    elif n_model:
        chosen = parse_layer_spec(layers, n_model)
    else:
        chosen = [int(l) for l in (layers if isinstance(layers, (list, tuple, range)) else [layers])]
    missing = [l for l in chosen if l not in stored]
    if missing:
        raise UserError(f"layers {missing} out of range: activations were stored for layers {stored}")
    for name, k in (("k_pos", k_pos), ("k_neg", k_neg)):
        if k is not None and not 0 <= k <= d:
            raise UserError(f"{name} = {k} is out of range: a rank between 0 and the hidden size {d}")
    pos, neg, scale, ranks, mean = {}, {}, {}, {}, {}
    for l in chosen:
        i = stored.index(l)
        h, hp, hn = (a[:, i, :].double() for a in (H, Hp, Hn))
        if center:
            mean[l] = h.mean(0)
            h, hp, hn = (a - a.mean(0) for a in (h, hp, hn))
        if feature != "linear":
            s = h.pow(2).mean(0).sqrt()
            fallback = float(h.pow(2).mean().sqrt())   # a feature that is 0 on every base state
            s = torch.where(s > 0, s, fallback if fallback > 0 else 1.0)
        else:
            s = torch.ones(d, dtype=torch.float64)
        h, hp, hn = (phi(a, feature, s) for a in (h, hp, hn))
        u_pos, sv_pos, _ = torch.linalg.svd(h.T @ hp / n)
        u_neg, sv_neg, _ = torch.linalg.svd(h.T @ hn / n)
        kp = energy_rank(sv_pos, energy_pos) if k_pos is None else k_pos
        kn = energy_rank(sv_neg, energy_neg) if k_neg is None else k_neg
        pos[l], neg[l], scale[l] = u_pos[:, :kp].contiguous(), u_neg[:, kn:].contiguous(), s
        ranks[l] = [kp, kn]
    settings = dict(energy_pos=energy_pos, energy_neg=energy_neg, k_pos=k_pos, k_neg=k_neg, n=n, ranks=ranks,
                    center=bool(center))
    return SEA(layers=chosen, hidden_size=d, pos=pos, neg=neg, scale=scale, feature=feature, combine=combine,
               site=site, settings=settings, mean=mean)


def reversed_edit(base, positive, negative, layers=None, **options) -> SEA:
    """Ablation: SEA fitted with the positive and negative demonstrations swapped."""
    return fit(base, negative, positive, layers, **options)


def random_like(edit: SEA, seed: int = 0) -> SEA:
    """Control: random orthonormal projections of the same ranks as ``edit``, on the same layers."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = {}, {}
    for l in edit.layers:
        for out, basis in ((pos, edit.pos[l]), (neg, edit.neg[l])):
            k = basis.shape[1]
            q, _ = torch.linalg.qr(torch.randn(edit.hidden_size, edit.hidden_size, generator=g, dtype=torch.float64))
            out[l] = q[:, :k].contiguous()
    return edit.with_options(pos=pos, neg=neg, settings={**edit.settings, "control": f"random rank, seed {seed}"})


@dataclass
class MeanDifference(_Applied):
    """Baseline (ITI-like steering): x' = x + alpha * (mean(H+) - mean(H-)) on every token of each layer."""
    layers: list[int]
    hidden_size: int
    direction: dict
    alpha: float = 1.0
    site: str = "mlp"

    def edit_hidden(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return h + self.alpha * self.direction[layer].to(device=h.device, dtype=h.dtype)


def mean_difference(positive, negative, layers, *, alpha: float = 1.0, stored_layers=None,
                    site: str = "mlp") -> MeanDifference:
    """Added to the MLP output (default) or the layer output: both add the vector to the residual stream."""
    _, Hp, Hn = _check_demonstrations(positive, positive, negative)
    _, n_stored, d = Hp.shape
    stored = list(range(n_stored)) if stored_layers is None else list(stored_layers)
    direction = {l: (Hp[:, stored.index(l)].double().mean(0) - Hn[:, stored.index(l)].double().mean(0))
                 for l in layers}
    return MeanDifference(layers=list(layers), hidden_size=d, direction=direction, alpha=alpha, site=site)
