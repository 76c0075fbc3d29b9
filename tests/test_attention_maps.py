"""Attention maps: the weights the attention core returns on request and ``record_attention`` records (sum to 1
over the real keys, 0 on padding, equal to a naive recomputation and to what the forward used, output unchanged,
fused path untouched when off), each analysis' drawing, and ``pipelines/explain.py`` on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import physics_tf.nn.attention as attn_core
from physics_tf.data.errors import DataError
from physics_tf.nn.attention import MultiheadAttention
from physics_tf.nn.inspect import attention_modules, record_attention
from physics_tf.training.explain import attention_batches, explain, load_for_explain
from physics_tf.training.export import build_network, example_inputs

from conftest import write_generated_layout
from test_pipelines import compose_train

ROOT = Path(__file__).resolve().parents[1]
# tiny versions of every transformer (architecture unchanged); ParT with 2 class blocks
TINY = {
    "jets_demo": ["model.embed_dims=[16,16]", "model.pair_embed_dims=[8]", "model.num_heads=2", "model.num_layers=2",
                  "model.num_cls_layers=2", "data.batch_size=16", "data.shuffle_buffer=32"],
    "lightcurves_transformer": ["model.dim=16", "model.num_heads=2", "model.num_layers=1", "data.batch_size=8",
                                "data.max_length=32"],
    "auger_transformer": ["model.temporal_dim=16", "model.temporal_heads=2", "model.temporal_depth=1", "model.dim=16",
                          "model.num_heads=2", "model.depth=1", "model.pair_hidden=8", "model.head_hidden=16",
                          "data.batch_size=8", "data.chunk_events=16"],
    "auger_perceiver": ["experiment=auger_transformer", "model=auger_perceiver", "model.temporal_dim=16",
                        "model.temporal_heads=2", "model.temporal_depth=1", "model.latents=4", "model.dim=16",
                        "model.num_heads=2", "model.depth=1", "data.batch_size=8"],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_generated_layout(tmp_path_factory.mktemp("attn_data"), jets=40, max_particles=20,
                                  lightcurves=(12, 6, 12), auger=(16, 16, 16))


def _config(name: str, root: Path, tmp: Path) -> dict:
    overrides = TINY[name] if name.startswith("auger_perceiver") else [f"experiment={name}", *TINY[name]]
    return OmegaConf.to_container(compose_train([*overrides, f"paths.data_dir={root}"], tmp), resolve=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (net in eval mode, padded example inputs)} — untrained, seeded, no file read."""
    tmp = tmp_path_factory.mktemp("attn_models")
    out = {}
    for name in TINY:
        torch.manual_seed(0)
        net, dm = build_network(_config(name, tmp / "data", tmp))
        out[name] = (net.eval(), example_inputs(net, dm, batch_size=5, length=24, seed=1))
    return out


# ---------------------------------------------------------------------------------------------- the weights
@pytest.mark.parametrize("name", list(TINY))
def test_weights_sum_to_one_over_real_keys_and_are_zero_on_padding(models, name):
    net, inputs = models[name]
    with torch.no_grad(), record_attention(net) as rec:
        net(**inputs)
    assert len(rec.maps) == len(attention_modules(net)) and {r.kind for r in rec.maps} >= {"self", "class"}
    padded = 0
    for r in rec.maps:
        b, _, _, lk = r.weights.shape
        key_mask = torch.ones(b, lk, dtype=torch.bool) if r.key_mask is None else r.key_mask  # None: no padding
        assert key_mask.shape == (b, lk), r.name
        real = key_mask[:, None, None, :].expand_as(r.weights)
        total = (r.weights * real).sum(-1)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0, msg=r.name)
        assert torch.all(r.weights[~real] == 0), r.name
        padded += int((~key_mask).sum())
    assert padded > 0  # the example batches are padded: the zeros above were tested on real padding


def _naive(module: MultiheadAttention, x, context, attn_mask, packing):
    """softmax(q kᵀ/√d + U, padded keys −∞) from the module's own projection weights, and that output."""
    if packing is not None:
        x = packing.unpack(x)
    context = x if context is None else context
    d, h = module.dim, module.num_heads
    w, bias = module.in_proj.weight, module.in_proj.bias
    q = x @ w[:d].T + bias[:d]
    k = context @ w[d:2 * d].T + bias[d:2 * d]
    v = context @ w[2 * d:].T + bias[2 * d:]
    split = lambda t: t.reshape(t.shape[0], t.shape[1], h, d // h).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / (d // h) ** 0.5
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, -torch.inf) if attn_mask.dtype == torch.bool else logits + attn_mask
    weights = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhqk,bhkd->bqhd", weights, v).reshape(x.shape[0], -1, d) @ module.out_proj.weight.T \
        + module.out_proj.bias
    if module.head_scale is not None:
        out = out * module.head_scale.repeat_interleave(d // h)
    return weights, (packing.pack(out) if packing is not None else out)


@pytest.mark.parametrize("name", list(TINY))
def test_weights_equal_a_naive_recomputation_and_are_those_the_forward_used(models, name):
    net, inputs = models[name]
    calls = []

    def hook(module, args, kwargs, output):
        x, context, attn_mask, packing = (list(args) + [None] * 4)[:4]
        calls.append((module, x, context, attn_mask, packing, output))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for _, m in attention_modules(net)]
    try:
        with torch.no_grad(), record_attention(net) as rec:
            net(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == len(rec.maps)
    for (module, x, context, attn_mask, packing, output), r in zip(calls, rec.maps):
        weights, out = _naive(module, x, context, attn_mask, packing)
        torch.testing.assert_close(r.weights, weights, atol=2e-6, rtol=1e-4, msg=r.name)
        # the recorded weights times the values give the layer's actual output: they are the ones it used
        torch.testing.assert_close(out, output, atol=2e-5, rtol=1e-4, msg=r.name)


def test_part_records_its_interaction_bias(models):
    net, inputs = models["jets_demo"]
    with torch.no_grad(), record_attention(net, kinds=["self"]) as rec:
        net(**inputs)
        length = int(inputs["mask"].sum(1).max())  # ParT trims the batch to its longest jet
        mask = inputs["mask"][:, :length]
        u = net.pair_embed(inputs["v"][:, :length], mask)  # (B, H, L, L), without the padding mask
    assert rec.maps and {r.kind for r in rec.maps} == {"self"}
    for r in rec.maps:
        real = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(u)
        assert r.bias is not None and r.bias.shape == u.shape
        torch.testing.assert_close(r.bias[real], u[real])
        assert torch.equal(r.key_mask, mask)


@pytest.mark.parametrize("name", list(TINY))
def test_output_unchanged_and_model_untouched_by_recording(models, name):
    net, inputs = models[name]
    with torch.no_grad():
        ref = net(**inputs)
        with record_attention(net) as rec:
            got = net(**inputs)
        after = net(**inputs)
    assert rec.maps and torch.equal(got, ref) and torch.equal(after, ref)
    assert all("recorder" not in m.__dict__ for _, m in attention_modules(net))
    with pytest.raises(RuntimeError), record_attention(net):
        raise RuntimeError("stop")
    assert all("recorder" not in m.__dict__ for _, m in attention_modules(net))  # removed on error too


def test_fused_path_is_taken_and_no_weights_computed_when_off(models, monkeypatch):
    net, inputs = models["jets_demo"]
    counts = {"sdpa": 0, "weights": 0}
    sdpa, weights_fn = torch.nn.functional.scaled_dot_product_attention, attn_core.attention_weights

    def counting_sdpa(*args, **kwargs):
        counts["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def counting_weights(*args, **kwargs):
        counts["weights"] += 1
        return weights_fn(*args, **kwargs)

    monkeypatch.setattr(attn_core.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(attn_core, "attention_weights", counting_weights)
    layers = len(attention_modules(net))
    with torch.no_grad():
        net(**inputs)
    assert counts == {"sdpa": layers, "weights": 0}
    with torch.no_grad(), record_attention(net):
        net(**inputs)
    assert counts == {"sdpa": 2 * layers, "weights": layers}  # the output still comes from the fused kernel


def test_need_weights_on_the_layer_and_the_core():
    torch.manual_seed(0)
    mha = MultiheadAttention(8, 2, head_scale=True).eval()
    x, ctx = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    keep = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    mask = attn_core.attention_mask(keep)
    out, w = mha(x, ctx, mask, need_weights=True)
    assert torch.equal(out, mha(x, ctx, mask)) and w.shape == (3, 2, 5, 7)
    assert torch.all(w[2, :, :, 1:] == 0) and torch.allclose(w.sum(-1), torch.ones(3, 2, 5))
    q, k, v = (torch.randn(2, 2, 4, 3) for _ in range(3))
    out2, w2 = attn_core.attention(q, k, v, need_weights=True)
    assert torch.equal(out2, attn_core.attention(q, k, v))
    torch.testing.assert_close(out2, w2 @ v)


# ---------------------------------------------------------------------------------------------- the drawings
def test_share_and_binned_means():
    from physics_tf.training.explain import BinnedMean, pick_examples, share

    w = np.array([[0.2, 0.2, 0.2, 0.0], [0.1, 0.3, 0.0, 0.0]])  # class token's share left out: rows sum < 1
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    np.testing.assert_allclose(share(w, mask), [[1, 1, 1, 0], [0.5, 1.5, 0, 0]])
    acc = BinnedMean([0, 1, 2], groups=2)
    acc.add([0.5, 0.5, 1.5, 7.0], [1.0, 3.0, 5.0, 9.0], [0, 0, 1, 1])
    np.testing.assert_allclose(acc.mean(), [[2.0, np.nan], [np.nan, 5.0]])
    assert acc.count.sum() == 3  # x outside the edges left out
    assert pick_examples(np.array([0, 0, 1, 0, 1]), 3) == [0, 2, 1] and pick_examples(None, 2) == [0, 1]


def _spy_figures(monkeypatch, module):
    """Capture the figures ``module`` saves (name → Figure) while still writing them."""
    figures = {}
    real = module.save_figure

    def spy(fig, path, **kw):
        figures[Path(path).name] = fig
        return real(fig, path, **kw)

    monkeypatch.setattr(module, "save_figure", spy)
    return figures


def _check_pngs(paths, out_dir):
    assert paths and all(Path(p).parent == out_dir for p in paths)
    for p in paths:
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, p


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_jet_drawing(data_root, tmp_path, monkeypatch):
    import physics_tf.jets.explain as wing

    figures = _spy_figures(monkeypatch, wing)
    torch.manual_seed(0)
    net, dm = build_network(_config("jets_demo", data_root, tmp_path))
    first = next(attention_batches(net, dm, "test", num_events=16))
    summary = explain(net, dm, tmp_path / "out", num_events=24, num_examples=1)
    _check_pngs(summary["figures"], tmp_path / "out")
    assert summary["num_events"] == 24 and [lay["kind"] for lay in summary["layers"]] == ["self"] * 2 + ["class"] * 2
    assert set(figures) == {"jet_0_class_attention.png", "jet_0_heads.png", "jet_attention_averages.png"}
    b = wing.pick_examples(first.batch["y"].numpy(), 1)[0]
    n = int(first.batch["mask"][b].sum())
    fig = figures["jet_0_class_attention.png"]
    axes = _data_axes(fig)
    assert len(axes) == 2 and all(ax.get_xlabel() == r"$\Delta\eta$" for ax in axes)  # one per class block
    cls = [r for r in first.maps if r.kind == "class"]
    for ax, r in zip(axes, cls):
        colours = ax.collections[0].get_array()
        assert len(colours) == n
        np.testing.assert_allclose(np.sort(colours), np.sort(r.mean_heads()[b, 0, 1:n + 1].numpy()), rtol=1e-6)
    heads = _data_axes(figures["jet_0_heads.png"])
    assert len(heads) == 2 * 2  # 2 heads: attention maps and interaction bias U
    assert all(ax.images[0].get_array().shape == (n, n) for ax in heads)
    averages = _data_axes(figures["jet_attention_averages.png"])
    assert len(averages) == 3 and all(len(ax.containers) == 2 for ax in averages)  # QCD and top in every panel


def test_auger_drawing(data_root, tmp_path, monkeypatch):
    import physics_tf.auger.explain as wing

    figures = _spy_figures(monkeypatch, wing)
    torch.manual_seed(0)
    net, dm = build_network(_config("auger_transformer", data_root, tmp_path))
    first = next(attention_batches(net, dm, "test", num_events=8))
    summary = explain(net, dm, tmp_path / "out", num_events=16, num_examples=1)
    _check_pngs(summary["figures"], tmp_path / "out")
    assert set(figures) == {"event_0_station_attention.png", "station_attention_averages.png"}
    b = wing.pick_examples(first.batch["aux_primary"].numpy(), 1)[0]
    mask = first.batch["mask"][b].reshape(-1).numpy()
    signals, attention = _data_axes(figures["event_0_station_attention.png"])
    assert signals.get_title() == "signals" and attention.get_title() == "class attention"
    filled = attention.collections[1].get_array()
    weights = [r for r in first.maps if r.name.startswith("pool.")][-1].mean_heads()[b, 0, 1:1 + mask.sum()]
    np.testing.assert_allclose(filled, weights.numpy(), rtol=1e-6)  # the stations in grid order
    assert len(attention.collections[0].get_paths()) == mask.size - mask.sum()  # silent cells drawn empty
    np.testing.assert_allclose(signals.collections[1].get_array(),
                               first.batch["signals"][b].reshape(-1).numpy()[mask], rtol=1e-6)
    assert any(line.get_marker() == "*" for line in attention.lines)  # the core
    assert len(_data_axes(figures["station_attention_averages.png"])) == 2


def test_lightcurve_drawing(data_root, tmp_path, monkeypatch):
    import physics_tf.lightcurves.explain as wing

    figures = _spy_figures(monkeypatch, wing)
    torch.manual_seed(0)
    net, dm = build_network(_config("lightcurves_transformer", data_root, tmp_path))
    first = next(attention_batches(net, dm, "test", num_events=8))
    summary = explain(net, dm, tmp_path / "out", num_events=12, num_examples=1)
    _check_pngs(summary["figures"], tmp_path / "out")
    assert set(figures) == {"object_0_observation_attention.png", "observation_attention_averages.png"}
    b = wing.pick_examples(first.batch["y"].numpy(), 1)[0]
    m = first.batch["mask"][b].numpy()
    bands = first.batch["band"][b].numpy()[m]
    weights = [r for r in first.maps if r.kind == "class"][-1].mean_heads()[b, 0, 2:2 + m.sum()].numpy()
    axes = _data_axes(figures["object_0_observation_attention.png"])
    assert [ax.get_ylabel() for ax in axes] == [f"{wing.BANDS[k]} flux" for k in sorted(set(bands))]
    for ax, k in zip(axes, sorted(set(bands))):
        np.testing.assert_allclose(ax.collections[-1].get_array(), weights[bands == k], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory):
    """A tiny ParT trained for 2 batches (checkpoints/last.ckpt)."""
    from physics_tf.training.run import run_train

    run = tmp_path_factory.mktemp("attn_run")
    overrides = ["experiment=jets_demo", *TINY["jets_demo"], f"paths.data_dir={data_root}", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false", "logger=none"]
    run_train(compose_train(overrides, run))
    return run / "checkpoints" / "last.ckpt"


def test_cli_draws_the_maps_of_a_checkpoint(checkpoint, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "pipelines/explain.py", f"ckpt_path={checkpoint}", "num_events=20",
                          "num_examples=0", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "attention.json").read_text())
    assert summary["num_events"] == 20 and summary["model"] == "ParticleTransformer"
    assert [Path(p).name for p in summary["figures"]] == ["jet_attention_averages.png"]
    _check_pngs(summary["figures"], tmp_path / "run")


def test_bad_explain_input_is_one_line(checkpoint, tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        load_for_explain(tmp_path / "nope.ckpt")
    with pytest.raises(DataError, match="split 'dev'"):
        load_for_explain(checkpoint, split="dev")
    net, dm, _ = load_for_explain(checkpoint, split="val", files=[str(tmp_path / "none_*.root")])
    with pytest.raises(DataError):
        next(attention_batches(net, dm, "val"))
    with pytest.raises(DataError, match="plots 'physics_tf.nowhere'"):
        explain(net, dm, tmp_path, plots="physics_tf.nowhere")
    # a network without attention (the PFN) in an otherwise valid checkpoint
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    pfn_cfg = _config("jets_demo", tmp_path, tmp_path)
    pfn_cfg["model"] = OmegaConf.to_container(compose_train(["experiment=jets_pfn"], tmp_path).model, resolve=True)
    pfn, _ = build_network(pfn_cfg)
    stored["physics_tf_config"]["model"] = pfn_cfg["model"]
    stored["state_dict"] = {f"net.{k}": v for k, v in pfn.state_dict().items()}
    torch.save(stored, tmp_path / "pfn.ckpt")
    with pytest.raises(DataError, match="ParticleFlowNetwork has no attention layers"):
        load_for_explain(tmp_path / "pfn.ckpt")


# ---------------------------------------------------------------------------------------------- reordered tokens
@pytest.mark.parametrize("options", [["model.attention.score=location", "model.attention.max_len=40"], ["model.patch_size=4"]],
                         ids=["time_ordered", "patched"])
def test_lightcurve_drawing_maps_token_attention_back_onto_the_observations(data_root, tmp_path, monkeypatch,
                                                                            options):
    """A model that puts the observations in time order (location score) or patches them: the drawing's weight of
    each observation follows the observation, whatever order the batch gives them in (token j is not observation j)."""
    import physics_tf.lightcurves.explain as wing

    cfg = _config("lightcurves_transformer", data_root, tmp_path)
    extra = OmegaConf.to_container(compose_train(
        ["experiment=lightcurves_transformer", *TINY["lightcurves_transformer"], *options,
         f"paths.data_dir={data_root}"], tmp_path).model, resolve=True)
    cfg["model"] = extra
    torch.manual_seed(0)
    net, dm = build_network(cfg)
    net.eval()
    first = next(attention_batches(net, dm, "test", num_events=6))
    assert first.tokens is not None
    mask = first.batch["mask"].numpy().astype(bool)
    w_tokens = [r for r in first.maps if r.kind == "class"][-1].mean_heads()[:, 0, 2:].numpy()
    weight = wing.observation_weights(w_tokens, first.tokens.numpy(), mask)
    np.testing.assert_allclose(weight.sum(axis=1), w_tokens.sum(axis=1), rtol=1e-5)  # nothing lost or counted twice
    assert np.all(weight[~mask] == 0)
    # reverse each object's real observations: the per-observation weights reverse with them
    perm = np.stack([np.r_[np.flatnonzero(m)[::-1], np.flatnonzero(~m)] for m in mask])
    flipped = {k: (torch.as_tensor(np.take_along_axis(v.numpy(), perm.reshape(perm.shape + (1,) * (v.dim() - 2)),
                                                      axis=1))
                   if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == mask.shape[1] else v)
               for k, v in first.batch.items()}
    from physics_tf.tasks.base import model_inputs
    from physics_tf.nn.inspect import record_attention as rec_attn

    inputs = model_inputs(flipped, net)
    with torch.no_grad(), rec_attn(net) as rec:
        net(**inputs)
    w2 = [r for r in rec.maps if r.kind == "class"][-1].mean_heads()[:, 0, 2:].numpy()
    weight2 = wing.observation_weights(w2, net.token_elements(**inputs).numpy(), mask)
    np.testing.assert_allclose(np.take_along_axis(weight, perm, axis=1), weight2, rtol=1e-4, atol=1e-6)
    # the naive reading (token j = observation j) of the reversed batch does not follow the observations
    naive = wing.observation_weights(w2, None, mask) if w2.shape[1] >= mask.shape[1] else None
    if naive is not None:
        assert not np.allclose(naive, weight2, atol=1e-4)
    out = wing.explain_plots(iter([first]), tmp_path / "figs", datamodule=dm, num_examples=1)
    _check_pngs(out, tmp_path / "figs")


def test_efficient_kinds_are_left_out_of_the_recording_and_explain_says_so(data_root, tmp_path):
    cfg = _config("lightcurves_transformer", data_root, tmp_path)
    cfg["model"] = OmegaConf.to_container(compose_train(
        ["experiment=lightcurves_transformer", *TINY["lightcurves_transformer"], "model.attention.kind=window",
         f"paths.data_dir={data_root}"], tmp_path).model, resolve=True)
    net, dm = build_network(cfg)
    kinds = {m.kind for _, m in attention_modules(net)}
    assert kinds == {"window", "full"}  # the blocks are local, the class-token pool reads everything
    first = next(attention_batches(net, dm, "test", num_events=4))  # no ValueError from the window layers
    assert first.maps and all(r.kind == "class" for r in first.maps)
    assert {r.name for r in first.maps} == {n for n, m in attention_modules(net, forming_weights=True)}
