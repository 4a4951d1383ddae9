"""sea.py (spectral editing of activations) and spectral_editing.py: exactness, batching, generate, save/load,
clean detach, bad input; one short end-to-end run on SmolLM2 (slow)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hooks
import sea
from cli import UserError
from tiny_models import tiny_stock_model, tiny_tokenizer, random_prompts

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["llama", "mistral", "gemma3", "gpt2"]


def _activations(model, n=24, seed=0):
    """Last-token states of every layer for three sets of random prompts: [N, L, d] each."""
    _STOCK[id(model)] = _hooks(model) if id(model) not in _STOCK else _STOCK[id(model)]
    out = []
    for s in range(3):
        ids = torch.randint(3, 100, (n, 6), generator=torch.Generator().manual_seed(seed + s))
        with torch.no_grad():
            states = model(ids, output_hidden_states=True).hidden_states[1:]
        out.append(torch.stack([h[:, -1] for h in states], 1))
    _STOCK[id(model)] = _hooks(model)
    return out


def _hooks(model):
    return [(name, tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for name, m in model.named_modules()]


_STOCK = {}


def _no_hooks(model):
    """No hook beyond the ones transformers itself keeps (it attaches its own for output_hidden_states)."""
    return _hooks(model) == _STOCK[id(model)]


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_edit_is_the_identity_bit_for_bit(family):
    model = tiny_stock_model(family)
    H, Hp, Hn = _activations(model)
    d = H.shape[-1]
    edit = sea.fit(H, Hp, Hn, layers="all", k_pos=d, k_neg=0)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        stock = model(ids).logits
        with edit.apply(model):
            edited = model(ids).logits
    assert torch.equal(stock, edited)
    assert _no_hooks(model)


def _naive_projection(h, hp, ratio):
    """float64 numpy: Omega = H^T H+ / N, its left singular vectors, the energy rank by a plain loop."""
    omega = h.T @ hp / h.shape[0]
    u, s, _ = np.linalg.svd(omega)
    energy = s ** 2 / (s ** 2).sum()
    k, acc = 0, 0.0
    while acc < ratio - 1e-12:
        acc += energy[k]
        k += 1
    return u, k


def _naive_phi(x, feature, s):
    """The feature maps, written out: non-linear within +-KNEE scales, the tangent line beyond."""
    c, z = sea.KNEE, x / s
    if feature == "linear":
        return x
    if feature == "elu":
        return np.where(z >= -c, np.where(z > 0, z, np.exp(np.maximum(z, -c)) - 1),
                        np.exp(-c) - 1 + np.exp(-c) * (z + c))
    f = {"tanh": np.tanh, "squared_exponential": lambda a: 1 - np.exp(-a * a / 2)}[feature]
    df = {"tanh": lambda a: 1 - np.tanh(a) ** 2, "squared_exponential": lambda a: a * np.exp(-a * a / 2)}[feature]
    a = np.abs(z)
    return np.sign(z) * np.where(a <= c, f(np.minimum(a, c)), f(c) + df(c) * (a - c))


def _naive_phi_inv(y, feature, s):
    c = sea.KNEE
    if feature == "linear":
        return y
    if feature == "elu":
        v = np.exp(-c) - 1
        inner = np.where(y > 0, y, np.log(1 + np.clip(y, v, 0)))
        return np.where(y >= v, inner, -c + (y - v) / np.exp(-c)) * s
    if feature == "tanh":
        v, slope, inv = np.tanh(c), 1 - np.tanh(c) ** 2, np.arctanh
    else:
        v, slope = 1 - np.exp(-c * c / 2), c * np.exp(-c * c / 2)
        inv = lambda b: np.sqrt(-2 * np.log(1 - b))
    a = np.abs(y)
    return np.sign(y) * np.where(a <= v, inv(np.minimum(a, v)), c + (a - v) / slope) * s


@pytest.mark.parametrize("feature,combine,center", [("linear", "average", False), ("linear", "l2_norm", False),
                                                    ("linear", "l2_norm", True), ("squared_exponential", "average", False),
                                                    ("tanh", "l2_norm", True), ("elu", "average", False)])
@pytest.mark.parametrize("site", ["residual", "mlp"])
def test_projections_and_edited_forward_equal_a_naive_float64_implementation(feature, combine, center, site):
    """Projections, ranks, means, per-dimension scales and the edited forward pass (center=True too) against
    numpy in float64."""
    model = tiny_stock_model("llama").double()
    H, Hp, Hn = (a.double() for a in _activations(model, n=40))
    layers = [1, 3]
    edit = sea.fit(H, Hp, Hn, layers=layers, energy_pos=0.9, energy_neg=0.8, feature=feature, combine=combine,
                   center=center, site=site)
    naive = {}
    for l in layers:
        h, hp, hn = (a[:, l].numpy() for a in (H, Hp, Hn))
        mu = h.mean(0) if center else np.zeros(h.shape[1])
        if center:
            h, hp, hn = h - h.mean(0), hp - hp.mean(0), hn - hn.mean(0)
        s = np.sqrt((h ** 2).mean(0)) if feature != "linear" else np.ones(h.shape[1])
        fh, fp, fn = (_naive_phi(a, feature, s) for a in (h, hp, hn))
        up, kp = _naive_projection(fh, fp, 0.9)
        un, kn = _naive_projection(fh, fn, 0.8)
        P = up[:, :kp] @ up[:, :kp].T
        N = un[:, kn:] @ un[:, kn:].T
        assert edit.settings["ranks"][l] == [kp, kn]
        np.testing.assert_allclose(edit.pos[l].numpy() @ edit.pos[l].numpy().T, P, atol=1e-9)
        np.testing.assert_allclose(edit.neg[l].numpy() @ edit.neg[l].numpy().T, N, atol=1e-9)
        if center:
            np.testing.assert_allclose(edit.mean[l].numpy(), mu, rtol=1e-12, atol=1e-12)
        naive[l] = (P, N, s, mu)

    def naive_edit(h, name):
        l = int(name.split(".")[-2 if site == "mlp" else -1])
        P, N, s, mu = naive[l]
        x = _naive_phi(h.numpy() - mu, feature, s)
        a, b = x @ P.T, x @ N.T
        if combine == "average":
            y = (a + b) / 2
        else:
            y = (a + b) * np.linalg.norm(x, axis=-1, keepdims=True) / np.linalg.norm(a + b, axis=-1, keepdims=True)
        return torch.from_numpy(_naive_phi_inv(y, feature, s) + mu)

    targets = layers if site == "residual" else [f"{hooks.layer_name(model, l)}.mlp" for l in layers]
    ids = torch.randint(3, 100, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with edit.apply(model):
            ours = model(ids).logits
        with hooks.TraceDict(model, targets, retain_output=False, edit_output=naive_edit):
            theirs = model(ids).logits
        stock = model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(ours, stock)


def test_feature_maps_are_bijections_that_never_saturate():
    """phi^-1(phi(x)) = x far beyond the fitted range (outlier dimensions at hundreds of scales), in float64:
    the error is a few ulps of the largest value."""
    x = torch.cat([torch.linspace(-500, 500, 20001, dtype=torch.float64), torch.tensor([0.0, 1e-6, -1e-6])])
    s = torch.tensor(2.0, dtype=torch.float64)
    for feature in sea.FEATURES:
        y = sea.phi(x, feature, s)
        assert torch.all(torch.diff(y[:20001]) > 0), feature          # strictly increasing: invertible
        back = sea.phi_inverse(y, feature, s)
        # near 0 the squared exponential's inverse is a square root: its error is sqrt(ulp) there
        tol = 1e-11 * 500 + (1e-7 if feature == "squared_exponential" else 0)
        assert float((back - x).abs().max()) < tol, feature


@pytest.mark.parametrize("site", ["residual", "mlp"])
@pytest.mark.parametrize("feature", ["tanh", "elu", "squared_exponential"])
def test_phi_sea_identity_round_trip_is_float32_noise(feature, site):
    """k+ = d, k- = 0: phi, the (identity) projections, the combine and phi^-1 all run, and the logits equal the
    unedited model's within float32 rounding (float32 eps x the logits' size, with margin)."""
    model = tiny_stock_model("llama")
    H, Hp, Hn = _activations(model)
    d = H.shape[-1]
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        stock = model(ids).logits
        # scales fitted on the states themselves, and 40x too small (every state far in the linear tails)
        for combine, factor in [(c, f) for c in sea.COMBINES for f in (1.0, 1 / 40)]:
            edit = sea.fit(H * factor, Hp, Hn, layers="all", k_pos=d, k_neg=0, feature=feature, combine=combine,
                           site=site)
            with edit.apply(model):
                edited = model(ids).logits
            tol = 64 * torch.finfo(torch.float32).eps * float(stock.abs().max())
            assert float((edited - stock).abs().max()) <= tol
    assert _no_hooks(model)


def test_layer_heuristic_equals_the_sum_of_singular_values():
    model = tiny_stock_model("llama")
    _, Hp, Hn = _activations(model)
    scores = sea.layer_heuristic(Hp, Hn)
    n = Hp.shape[0]
    for l, score in enumerate(scores):
        x = np.concatenate([Hp[:, l].double().numpy(), Hn[:, l].double().numpy()])
        y = np.concatenate([np.tile([0.0, 1.0], (n, 1)), np.tile([1.0, 0.0], (n, 1))])
        assert score == pytest.approx(np.linalg.svd(x.T @ y / n, compute_uv=False).sum(), rel=1e-10)
    top = sea.heuristic_layers(Hp, Hn)
    assert len(top) == 2 and top == sorted(np.argsort(scores)[::-1][:2].tolist())
    assert sea.fit(Hp, Hp, Hn, layers="heuristic").layers == top


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["residual", "mlp"])
def test_padded_batch_equals_one_at_a_time(family, site):
    model = tiny_stock_model(family)
    H, Hp, Hn = _activations(model)
    edit = sea.fit(H, Hp, Hn, layers="all", energy_pos=0.9, energy_neg=0.9, site=site)
    tok = tiny_tokenizer("left")
    prompts = random_prompts(4, seed=3, lo=2, hi=9)
    with torch.no_grad(), edit.apply(model):
        batch = tok(prompts, return_tensors="pt", padding=True)
        # positions over real tokens (GPT-2 does not derive them from the mask itself)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        together = model(**batch, position_ids=positions).logits[:, -1]
        alone = torch.cat([model(**tok([p], return_tensors="pt")).logits[:, -1] for p in prompts])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    assert _no_hooks(model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_with_the_edit_equals_a_manual_greedy_loop(family):
    model = tiny_stock_model(family)
    H, Hp, Hn = _activations(model)
    edit = sea.fit(H, Hp, Hn, layers="all", k_pos=2, k_neg=2, feature="tanh", site="residual")   # a strong edit
    ids = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stock = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        handle = edit.attach(model)
        generated = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        manual = ids
        for _ in range(8):  # no KV cache: the whole sequence, edited, every step
            nxt = model(manual).logits[:, -1].argmax(-1, keepdim=True)
            manual = torch.cat([manual, nxt], 1)
        handle.close()
    assert torch.equal(generated, manual)
    assert not torch.equal(generated, stock)   # the edit does change what is generated
    assert _no_hooks(model)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    """Projections, per-dimension scales, means and every option survive save/load (float64 in the file)."""
    model = tiny_stock_model("llama")
    H, Hp, Hn = _activations(model)
    edit = sea.fit(H, Hp, Hn, layers="last-2", energy_pos=0.95, energy_neg=0.9, feature="squared_exponential",
                   combine="average", site="residual", center=True)
    loaded = sea.load(edit.save(tmp_path / "e.safetensors"))
    assert (loaded.layers, loaded.feature, loaded.combine, loaded.site) == (edit.layers, edit.feature, "average",
                                                                            "residual")
    assert loaded.settings["center"] is True and sorted(loaded.mean) == edit.layers
    for l in edit.layers:
        assert torch.equal(loaded.mean[l], edit.mean[l]) and torch.equal(loaded.scale[l], edit.scale[l])
    assert loaded.settings["ranks"] == {str(k): v for k, v in edit.settings["ranks"].items()}
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with edit.apply(model):
            a = model(ids).logits
        with loaded.apply(model):
            b = model(ids).logits
    assert torch.equal(a, b)


def test_context_manager_leaves_the_model_stock_even_after_an_error():
    model = tiny_stock_model("llama")
    H, Hp, Hn = _activations(model)
    edit = sea.fit(H, Hp, Hn, energy_pos=0.5, energy_neg=0.5)
    assert edit.layers == sea.default_layers(4) == [1, 2, 3]
    ids = torch.randint(3, 100, (1, 4))
    with torch.no_grad():
        stock = model(ids).logits
        with pytest.raises(RuntimeError):
            with edit.apply(model):
                raise RuntimeError("boom")
        assert _no_hooks(model)
        assert torch.equal(model(ids).logits, stock)
        steer = sea.mean_difference(Hp, Hn, [2], alpha=2.0)
        with steer.apply(model):
            steered = model(ids).logits
    assert not torch.equal(steered, stock) and _no_hooks(model)


def test_controls_have_the_ranks_of_the_edit():
    model = tiny_stock_model("llama")
    H, Hp, Hn = _activations(model)
    edit = sea.fit(H, Hp, Hn, layers=[2, 3], energy_pos=0.9, energy_neg=0.9)
    rand = sea.random_like(edit, seed=1)
    rev = sea.reversed_edit(H, Hp, Hn, layers=[2, 3], energy_pos=0.9, energy_neg=0.9)
    for l in (2, 3):
        assert rand.pos[l].shape == edit.pos[l].shape and rand.neg[l].shape == edit.neg[l].shape
        q = rand.pos[l]
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(rev.pos[2] @ rev.pos[2].T,
                               sea.fit(H, Hn, Hp, layers=[2], energy_pos=0.9).pos[2] @
                               sea.fit(H, Hn, Hp, layers=[2], energy_pos=0.9).pos[2].T)


def test_bad_input_is_refused_with_a_clear_message():
    model = tiny_stock_model("llama")
    H, Hp, Hn = _activations(model)
    with pytest.raises(UserError, match="differ in size"):
        sea.fit(H, Hp[:-1], Hn)
    with pytest.raises(UserError, match="empty"):
        sea.fit(H[:0], Hp[:0], Hn[:0])
    with pytest.raises(UserError, match="out of range"):
        sea.fit(H, Hp, Hn, layers=[7])
    with pytest.raises(UserError, match="out of range"):
        sea.fit(H, Hp, Hn, layers="last-2", k_pos=99)
    with pytest.raises(UserError, match="energy ratio"):
        sea.fit(H, Hp, Hn, energy_pos=1.5)
    with pytest.raises(UserError, match="unknown feature"):
        sea.fit(H, Hp, Hn, feature="relu")
    other = tiny_stock_model("llama", hidden_size=48)
    _STOCK[id(other)] = _hooks(other)
    edit = sea.fit(H, Hp, Hn, layers="last-2")
    with pytest.raises(UserError, match="hidden size 32.*hidden size 48"):
        edit.attach(other)
    deeper = sea.fit(torch.cat([H, H], 1), torch.cat([Hp, Hp], 1), torch.cat([Hn, Hn], 1), layers=[6])
    with pytest.raises(UserError, match="out of range"):
        deeper.attach(model)
    assert _no_hooks(model) and _no_hooks(other)


# The command line's bad-input cases are rows of tests/test_bad_input.py's table.


@pytest.mark.slow
def test_end_to_end_on_smollm2(tmp_path):
    """Two TruthfulQA questions (one per fold), every condition, on the real model: tables, figure, JSON."""
    import json
    done = subprocess.run([sys.executable, str(ROOT / "spectral_editing.py"), "--task", "truthfulqa", "--quick",
                           "--sample", "2", "--threads", "1", "--out-dir", str(tmp_path), "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "spectral_editing_truthfulqa.json").read_text())
    assert len(data["rows"]) == 6 and data["layers"] == list(range(10, 30))
    for row in data["rows"].values():
        assert 0 <= row["MC1"][0] <= 1 and 0 < row["MC2"][0] < 1 and row["tok/s"] > 0
    assert (tmp_path / "tables" / "spectral_editing_truthfulqa.tex").exists()
    assert (tmp_path / "figures" / "spectral_editing_truthfulqa.png").stat().st_size > 0
    assert "### truthfulqa" in (tmp_path / "results" / "spectral_editing.md").read_text()


# -- the script: the search reads dev items only; the cache is keyed on its inputs -------------------------
def _run_script(monkeypatch, capsys, argv, load=None):
    """spectral_editing.main in this process (``load`` replaces load_truthfulqa); its JSON and stdout."""
    import json
    import spectral_editing as se
    if load is not None:
        monkeypatch.setattr(se, "load_truthfulqa", load)
    capsys.readouterr()
    assert se.main(argv) == 0
    out = capsys.readouterr().out
    folder = Path(argv[argv.index("--out-dir") + 1])
    name = se.output_name("truthfulqa", argv[argv.index("--model") + 1])
    return json.loads((folder / "results" / f"{name}.json").read_text()), out


def _tqa_argv(tiny, tmp, out="out", cache="cache", *extra):
    return ["--task", "truthfulqa", "--quick", "--model", str(tiny), "--threads", "1", "--out-dir", str(tmp / out),
            "--cache-dir", str(tmp / cache), *extra]


def test_search_never_reads_test_items(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """Scramble the test questions' labels (true and false answers swapped): the dev search, its every row and
    its pick stay the same, while the test rows change."""
    import spectral_editing as se
    monkeypatch.setattr(se, "SEARCH_RANKS", ("energy", 16))      # 8 settings instead of 24: the same code path
    monkeypatch.setattr(se, "SEARCH_SITES", ("mlp",))
    real = se.load_truthfulqa

    def scrambled(n, seed):
        items, prefix, source = real(n, seed)
        _, test = se._split(len(items), se.QUICK["TQA_DEV"], seed)
        for i in test:
            it = items[i]
            items[i] = dict(it, true=it["false"], false=it["true"], best=it["false"][0])
        return items, prefix, source

    honest, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "a", "ca", "--search"))
    other, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "b", "cb", "--search"), scrambled)
    assert honest["search"] == other["search"] and len(honest["search"]["rows"]) == 8
    assert honest["setting"] == other["setting"]
    assert honest["rows"]["no edit"]["MC2"] != other["rows"]["no edit"]["MC2"]


def test_a_changed_input_is_recomputed_never_reported_stale(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """Rerun into the same cache and output with one question's text changed, then with one setting changed:
    every row is recomputed, and equals a fresh run's."""
    import spectral_editing as se
    real = se.load_truthfulqa

    def changed(n, seed):
        items, prefix, source = real(n, seed)
        items[0] = dict(items[0], question=items[0]["question"] + " Really?")
        return items, prefix, source

    def metrics(data):
        return {n: {m: v for m, v in row.items() if m != "tok/s"} for n, row in data["rows"].items()}

    first, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path))
    again, out = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path))
    assert "demonstrations" not in out and "eval:" not in out          # the same inputs: all from the cache
    rerun, out = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path), changed)
    assert "demonstrations" in out and out.count("eval:") == 6
    fresh, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "fresh", "cfresh"), changed)
    assert metrics(rerun) == metrics(fresh) and metrics(rerun) != metrics(first)
    centered, out = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "out", "cache", "--center"),
                                changed)
    assert "demonstrations" not in out and out.count("eval:") == 6    # same demonstrations, new edits and rows
    assert centered["settings"]["center"] is True


def test_search_skips_settings_that_break_the_model(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """A setting whose dev perplexity is over the guard is measured, not scored on the dev items: the same rows,
    perplexities and pick as scoring every setting (--score-all-settings), only its dev score left out."""
    import spectral_editing as se
    monkeypatch.setattr(se, "SEARCH_RANKS", ("energy", 16))
    monkeypatch.setattr(se, "SEARCH_SITES", ("mlp",))
    monkeypatch.setattr(se, "SEARCH_PPL_GUARD", 1.0)            # any rise in perplexity rules a setting out
    skip, out = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "a", "ca", "--search"))
    every, _ = _run_script(monkeypatch, capsys,
                           _tqa_argv(tiny_llama_dir, tmp_path, "b", "cb", "--search", "--score-all-settings"))
    skipped = [r for r in skip["search"]["rows"] if r["dev_score"] is None]
    assert skipped and out.count("not scored") == len(skipped)
    assert all(not r["allowed"] for r in skipped) and all(r["dev_score"] is not None for r in every["search"]["rows"])
    for a, b in zip(skip["search"]["rows"], every["search"]["rows"]):
        assert a["setting"] == b["setting"] and a["dev_ppl"] == b["dev_ppl"] and a["allowed"] == b["allowed"]
        assert a["dev_score"] is None or a["dev_score"] == b["dev_score"]
    def metrics(data):
        return {n: {m: v for m, v in row.items() if m != "tok/s"} for n, row in data["rows"].items()}

    assert skip["setting"] == every["setting"] and metrics(skip) == metrics(every)
    assert "not scored" in skip["markdown"]


def test_update_readme_pastes_each_model_and_task_into_its_own_section(tiny_llama_dir, tmp_path, monkeypatch,
                                                                         capsys):
    import spectral_editing as se
    from cli import UserError
    from model_loading import model_slug
    _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path))
    readme = tmp_path / "README.md"
    tag = f"sea-full:{model_slug(str(tiny_llama_dir))}:truthfulqa"
    other = "<!-- sea-full:smollm2-135m:bbq:begin -->\nan earlier run's tables\n<!-- sea-full:smollm2-135m:bbq:end -->"
    readme.write_text(f"# x\n<!-- sea-full:begin -->\nheader\n{other}\n<!-- sea-full:end -->\ntail\n")
    se.update_readme(tmp_path / "out", readme, "truthfulqa", str(tiny_llama_dir))
    text = readme.read_text()
    assert other in text and text.endswith("<!-- sea-full:end -->\ntail\n")      # another run's section is kept
    section = text.split(f"<!-- {tag}:begin -->")[1].split(f"<!-- {tag}:end -->")[0]
    assert "### truthfulqa (" in section and "| no edit |" in section and "commit " in section
    assert "--task truthfulqa" in section
    se.update_readme(tmp_path / "out", readme, "truthfulqa", str(tiny_llama_dir))   # a rerun replaces its own
    assert readme.read_text() == text
    readme.write_text("no markers")
    with pytest.raises(UserError, match="no <!-- sea-full:begin -->"):
        se.update_readme(tmp_path / "out", readme, "truthfulqa", str(tiny_llama_dir))


@pytest.fixture(scope="module")
def smollm2():
    from model_loading import load_model, load_tokenizer
    torch.manual_seed(0)
    return load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")


@pytest.mark.slow
def test_smollm2_defaults_keep_clean_perplexity(tmp_path):
    """The default edit (l2_norm at the MLP output) fitted on 4 TruthfulQA questions keeps clean perplexity within
    5 % of the unedited model's and each Phi-SEA identity round trip within 1 %. The questions are the test
    fixture's (BIG-bench's TruthfulQA is withdrawn from the index): there the energy ratio keeps k = 3-4
    directions, not the 1 of the real questions, and a random projection of those ranks costs far more than
    10 % (the README's damage measurements), so the random control is checked to cost more than the edit."""
    import json
    done = subprocess.run([sys.executable, str(ROOT / "spectral_editing.py"), "--task", "damage", "--quick",
                           "--sample", "4", "--threads", "1", "--out-dir", str(tmp_path), "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results" / "spectral_editing_damage.json").read_text())["rows"]
    ratio = {name: row["ratio to no edit"][0] for name, row in rows.items()}
    assert abs(ratio["SEA (l2_norm, site mlp)"] - 1) <= 0.05
    assert ratio["random projection (same ranks)"] > ratio["SEA (l2_norm, site mlp)"]
    trips = [name for name in ratio if name.startswith("Phi-SEA identity")]
    assert len(trips) == 6 and all(abs(ratio[name] - 1) <= 0.01 for name in trips), ratio


@pytest.mark.slow
@pytest.mark.parametrize("site", ["mlp", "residual"])
def test_smollm2_phi_sea_identity_round_trip_is_float32_noise(smollm2, site):
    """k+ = d, k- = 0 with scales fitted on the model's own states: the logits differ from the unedited model's
    by no more than a one-ulp float32 perturbation of the same states does (the round trip itself is float64)."""
    from spectral_editing import last_states
    model, tok = smollm2
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level.",
             "A cat sat on the mat and looked at the dog.", "Photosynthesis turns light into chemical energy."]
    H = last_states(model, tok, texts)
    layers = list(range(10, hooks.num_layers(model)))
    ids = tok(["The quick brown fox jumps over the lazy dog because"], return_tensors="pt")["input_ids"]
    targets = layers if site == "residual" else [f"{hooks.layer_name(model, l)}.mlp" for l in layers]
    with torch.no_grad():
        stock = model(ids).logits
        with hooks.TraceDict(model, targets, retain_output=False,
                             edit_output=lambda h, name: torch.nextafter(h, torch.full_like(h, float("inf")))):
            ulp = float((model(ids).logits - stock).abs().max())
        for feature in ("tanh", "elu", "squared_exponential"):
            edit = sea.fit(H, H, H, layers, k_pos=H.shape[-1], k_neg=0, feature=feature, site=site)
            with edit.apply(model):
                diff = float((model(ids).logits - stock).abs().max())
            assert diff <= max(ulp, 1e-6), (feature, diff, ulp)
    assert not any(m._forward_hooks for m in model.modules())


# -- the task data: BBQ from the original files, TruthfulQA from a folder ------------------------------------
def _bbq_line(category, q, polarity, condition, k):
    people = [f"the {category} teacher {q}", f"the {category} nurse {q}", "Can't be determined"]
    label = 2 if condition == "ambig" else (0 if polarity == "neg" else 1)
    return json.dumps({"example_id": k, "question_index": str(q), "question_polarity": polarity,
                       "context_condition": condition, "category": category,
                       "answer_info": {"ans0": ["teacher", "a"], "ans1": ["nurse", "b"],
                                       "ans2": ["Can't be determined", "unknown"]},
                       "context": f"Context {q} of {category}." + (" More detail." if condition == "disambig" else ""),
                       "question": f"Who did it ({polarity})?", "ans0": people[0], "ans1": people[1],
                       "ans2": people[2], "label": label})


def test_bbq_items_from_the_original_files(tmp_path, monkeypatch):
    """Fit and dev items from half the question templates, evaluated ones from the other half; ambiguous
    items in (negative, non-negative) pairs on one context; the unknown option from the answer tags."""
    import data.packages
    import spectral_editing as se
    files = {}
    for c in se.BBQ_CATEGORIES:
        path = tmp_path / f"{se.BBQ_FILES[c]}.jsonl"
        path.write_text("\n".join(_bbq_line(c, q, pol, cond, k) for k, (q, pol, cond) in enumerate(
            (q, pol, cond) for q in range(4) for pol in ("neg", "nonneg") for cond in ("ambig", "disambig"))) + "\n")
        files[f"{se.BBQ_DIR}{se.BBQ_FILES[c]}.jsonl"] = path
    monkeypatch.setattr(data.packages, "unpack", lambda package, members: {m: files[m] for m in members})
    fit, evaluated, dev = se.load_bbq(10, 6, 8, seed=0, n_dev=6)
    assert len(fit) == 10 and len(evaluated) == 2 * 6 + 8 and len(dev) == 6
    fit_templates = {it["template"] for it in fit + dev}
    assert not fit_templates & {it["template"] for it in evaluated}
    assert all(it["condition"] == "disambig" for it in fit)
    for k in range(6):
        a, b = [it for it in evaluated if it["pair"] == k]
        assert (a["polarity"], b["polarity"]) == ("neg", "nonneg") and a["context"] == b["context"]
        assert a["condition"] == b["condition"] == "ambig" and a["options"][a["answer"]] == a["unknown"]
    assert all(it["unknown"] == "Can't be determined" for it in fit + evaluated + dev)


def test_truthfulqa_needs_its_folder_and_says_where_to_get_it(tmp_path, monkeypatch):
    import spectral_editing as se
    from cli import UserError
    monkeypatch.setenv("SPLINE_CACHE", str(tmp_path / "cache"))           # no bigbench sdist cached
    monkeypatch.setattr(se, "TRUTHFULQA_DIR", None)
    with pytest.raises(UserError, match=r"TruthfulQA is not available: bigbench==1\.0\.0 .*--truthfulqa-dir"):
        se.load_truthfulqa(4, 0)
    assert not se.truthfulqa_available()
    import model_loading
    monkeypatch.setattr(model_loading, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    for argv in (["--task", "truthfulqa"], ["--task", "damage"]):
        with pytest.raises(UserError, match="TruthfulQA is not available"):
            se.main(argv + ["--quick", "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    monkeypatch.setattr(se, "TRUTHFULQA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="holds neither TruthfulQA layout.*truthful_qa folder.*TruthfulQA.csv"):
        se.load_truthfulqa(4, 0)
    monkeypatch.setattr(se, "TRUTHFULQA_DIR", os.environ["TRUTHFULQA_DIR"])
    items, prefix, _ = se.load_truthfulqa(4, 0)
    assert len(items) == 4 and prefix and all(it["true"] and it["false"] for it in items)


def test_truthfulqa_from_a_clone_of_its_own_repository(monkeypatch):
    """TruthfulQA.csv and presets.py's QA_PRIMER give the same questions as BIG-bench's layout, answers split
    on ';' and closed with a period as the repository's utilities do, the prompt its primer + "\n\nQ: ..."."""
    import spectral_editing as se
    fixtures = Path(__file__).parent / "fixtures" / "data"
    bigbench = json.loads((Path(os.environ["TRUTHFULQA_DIR"]) / "questions.json").read_text())["examples"]
    monkeypatch.setattr(se, "TRUTHFULQA_DIR", str(fixtures / "truthfulqa_repo"))
    questions, prefix, source = se.truthfulqa_questions()
    assert source == "the TruthfulQA repository's TruthfulQA.csv" and len(questions) == len(bigbench) + 1
    assert prefix == "Answer each question truthfully.\n\nQ: What is the capital of France?\nA: Paris.\n"
    for ours, theirs in zip(questions, bigbench):
        assert ours["Question"] == theirs["Question"] and ours["Category"] == theirs["Category"]
        for key in ("True answers", "False answers"):
            split = [x.strip() for a in theirs[key] for x in a.split(";")]      # the CSV joins answers with ';'
            assert ours[key] == [a if a.endswith(".") else a + "." for a in split]
    quoted = questions[-1]     # commas, quotes and a period already there survive the CSV and the split
    assert quoted["True answers"] == ["Nobody knows for sure.", 'It is unclear, as "Hello, world" is older than any one program.']
    assert quoted["False answers"] == ["A famous novelist wrote it.", "It was written in 2020."]
    items, _, about = se.load_truthfulqa(100, 0)
    assert about == "13 TruthfulQA questions (the TruthfulQA repository's TruthfulQA.csv)"
    assert len(items) == len(questions) and all(it["best"] in it["true"] for it in items)


def test_paired_differences_of_sea_against_each_condition(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """The paired table: each condition's per-item difference from SEA linear; its mean is the difference of the
    two rows' means, and its interval is over the same items."""
    data, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path))
    rows, paired = data["rows"], data["paired"]
    assert set(paired) == {"MC1", "MC2"} and set(paired["MC2"]) == set(rows) - {"SEA linear"}
    for metric in ("MC1", "MC2"):
        for name, (mean, lo, hi) in paired[metric].items():
            assert mean == pytest.approx(rows["SEA linear"][metric][0] - rows[name][metric][0], abs=1e-12)
            assert lo <= mean <= hi
    assert "SEA linear minus" in data["markdown"]


def test_the_truthfulqa_task_runs_on_a_clone_of_the_repository(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    import spectral_editing as se
    monkeypatch.setattr(se, "SEARCH_RANKS", ("energy",))          # the smallest search: the same code path
    monkeypatch.setattr(se, "SEARCH_SITES", ("mlp",))
    monkeypatch.setattr(se, "SEARCH_CENTER", (False,))
    monkeypatch.setattr(se, "TRUTHFULQA_DIR", se.TRUTHFULQA_DIR)  # main() sets it from --truthfulqa-dir: restored after
    repo = Path(__file__).parent / "fixtures" / "data" / "truthfulqa_repo"
    data, _ = _run_script(monkeypatch, capsys, _tqa_argv(tiny_llama_dir, tmp_path, "out", "cache",
                                                         "--truthfulqa-dir", str(repo)))
    assert "of 13 TruthfulQA questions (the TruthfulQA repository's TruthfulQA.csv)" in data["sizes"]
    assert {"no edit", "SEA linear"} <= set(data["rows"])
