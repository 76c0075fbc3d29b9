"""The Auger transformer on the core's attention kinds: the temporal encoder's self-attention from config (window,
full, LSH, sparse strided / fixed), the Perceiver encoder on the core's latent array with its old parameter layout,
the windows as before the move, and the spatial stage's speed-ups (station groups, pair bias on real pairs) that
leave the outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from physics_tf.auger.data import to_batch
from physics_tf.auger.simulate import AugerSimulator, SimConfig
from physics_tf.auger.transformer import (AugerTransformer, PerceiverTemporalEncoder, StationPairBias,
                                          TemporalEncoder, patch_tokens)
from physics_tf.nn.attention import attention_mask
from physics_tf.nn.blocks import ClassTokenPool, CrossAttentionBlock, TransformerBlock
from physics_tf.nn.efficient import KINDS

N = 9
INPUTS = ("traces", "times", "signals", "positions", "mask")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch240():
    ev = AugerSimulator(SimConfig(n_bins=240)).simulate(6, np.random.default_rng(3))
    return {k: v for k, v in to_batch(ev, ["xmax"], {"xmax": (750.0, 70.0)}).items() if k in INPUTS}


def old_window_forward(enc: TemporalEncoder, x: torch.Tensor) -> torch.Tensor:
    """The window encoder as it was before the kinds moved into the core: tokens reshaped into (N·nw, w, D)
    windows, the padded patches masked, blocks over each window, class pooling over the real patches."""
    n = x.shape[0]
    h = patch_tokens(x, enc.patch, enc.embed, enc.dim)
    p = h.shape[1]
    w = min(enc.window, p)
    nw = -(-p // w)
    h = F.pad(h, (0, 0, 0, nw * w - p))
    real = torch.arange(nw * w) < p
    hw = h.reshape(n * nw, w, enc.dim)
    am = attention_mask(real.view(1, nw, w).expand(n, nw, w).reshape(n * nw, w))
    for blk in enc.blocks:
        hw = blk(hw, am)
    return enc.pool(hw.reshape(n, nw * w, enc.dim), real.expand(n, -1))


@pytest.mark.parametrize("bins", [120, 130])  # 12 patches in 3 windows of 4; 13 patches: the last window padded
def test_window_kind_gives_the_old_windows_on_the_same_weights(bins):
    torch.manual_seed(0)
    new = TemporalEncoder(patch=10, dim=16, num_heads=2, depth=2, window=4)
    assert all(blk.attn.kind == "window" and blk.attn.options["window"] == 4 for blk in new.blocks)
    ref = TemporalEncoder(patch=10, dim=16, num_heads=2, depth=2, window=4, attention={"kind": "full"})
    ref.load_state_dict(new.state_dict())  # the same parameter names for every kind but LSH
    x = torch.rand(5, bins)
    torch.testing.assert_close(new(x), old_window_forward(ref, x), atol=1e-5, rtol=1e-5)
    # the windows matter: full attention over all patches gives other outputs
    assert not torch.allclose(ref(x), new(x), atol=1e-4)


def test_a_window_holding_every_patch_runs_as_full_attention():
    torch.manual_seed(0)
    net = AugerTransformer(N, 120, temporal_dim=16, temporal_heads=2, temporal_depth=1, window=12, dim=16,
                           num_heads=2, depth=1)
    assert net.temporal.blocks[0].attn.kind == "full"  # 12 patches, window 12: recordable weights, fused kernel
    windowed = TemporalEncoder(patch=10, dim=16, num_heads=2, depth=1, window=12)  # no n_patches: kind window
    windowed.load_state_dict(net.temporal.state_dict())
    x = torch.rand(4, 120)
    torch.testing.assert_close(windowed(x), net.temporal(x), atol=1e-5, rtol=1e-5)
    longer = AugerTransformer(N, 240, temporal_dim=16, temporal_heads=2, temporal_depth=1, window=12, dim=16,
                              num_heads=2, depth=1)
    assert longer.temporal.blocks[0].attn.kind == "window"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_from_config_trains_and_ignores_dead_stations(kind, batch240):
    options = {"window": {"window": 6}, "lsh": {"bucket_size": 4, "n_hashes": 2, "seed": 0}}.get(kind, {})  # lsh: fixed hashes
    torch.manual_seed(0)
    net = AugerTransformer(N, 240, patch=10, temporal_dim=16, temporal_heads=2, temporal_depth=1, dim=16,
                           num_heads=2, depth=1, temporal_attention={"kind": kind, **options})
    assert net.temporal.blocks[0].attn.kind == kind
    net.eval()
    ref = net(**batch240)
    assert ref.shape == (6, 1) and torch.isfinite(ref).all()
    dead = ~batch240["mask"]
    poked = dict(batch240, traces=batch240["traces"].clone())
    poked["traces"][dead] = 7.0
    torch.testing.assert_close(net(**poked), ref)
    poked["traces"][batch240["mask"]] *= 1.5  # the real traces do reach the output through this kind
    assert not torch.allclose(net(**poked), ref)
    net.train()
    net(**batch240).sum().backward()
    assert net.temporal.blocks[0].attn.in_proj.weight.grad.abs().sum() > 0


def test_config_chooses_the_kind_and_rejects_an_unknown_one():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from physics_tf.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=["experiment=auger_transformer", "model.temporal_attention.kind=lsh",
                                          "+model.temporal_attention.n_hashes=2", "model.temporal_dim=16",
                                          "model.temporal_heads=2", "model.dim=16", "model.num_heads=2"])
    GlobalHydra.instance().clear()
    net = instantiate(cfg.model, grid_size=N, n_bins=960, num_targets=1)
    assert net.temporal.blocks[0].attn.kind == "lsh" and net.temporal.blocks[0].attn.options["n_hashes"] == 2
    with pytest.raises(ValueError, match="temporal_attention.kind"):
        AugerTransformer(N, 120, temporal_attention={"kind": "fast"})


class OldPerceiverTemporalEncoder(torch.nn.Module):
    """The Perceiver temporal encoder as the wing had it before the latent array moved into the core."""

    def __init__(self, patch=4, dim=64, num_heads=4, depth=2, latents=16, dropout=0.0):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.embed = torch.nn.Linear(patch, dim)
        self.latents = torch.nn.Parameter(torch.zeros(1, latents, dim))
        torch.nn.init.trunc_normal_(self.latents, std=0.02)
        self.cross = CrossAttentionBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout,
                                         activation_dropout=dropout)
        self.blocks = torch.nn.ModuleList(
            [TransformerBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout, activation_dropout=dropout)
             for _ in range(depth)])
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout)

    def forward(self, x):
        h = patch_tokens(x, self.patch, self.embed, self.dim)
        z = self.cross(self.latents.expand(h.shape[0], -1, -1), h)
        for blk in self.blocks:
            z = blk(z)
        return self.pool(z)


def test_perceiver_on_the_core_latent_encoder_keeps_names_order_draws_and_outputs():
    torch.manual_seed(4)
    old = OldPerceiverTemporalEncoder(patch=4, dim=16, num_heads=2, depth=2, latents=8)
    torch.manual_seed(4)
    new = PerceiverTemporalEncoder(patch=4, dim=16, num_heads=2, depth=2, latents=8)
    old_params, new_params = list(old.named_parameters()), list(new.named_parameters())
    assert [n for n, _ in new_params] == [n for n, _ in old_params]  # names and order: old checkpoints,
    for (name, a), (_, b) in zip(old_params, new_params):  # optimizer states by position
        torch.testing.assert_close(a, b, msg=name)  # the same initial draws for a seed
    x = torch.rand(3, 120)
    torch.testing.assert_close(new(x), old(x))
    torch.manual_seed(5)
    other = OldPerceiverTemporalEncoder(patch=4, dim=16, num_heads=2, depth=2, latents=8)
    new.load_state_dict(other.state_dict())  # an old state dict loads as it is (strict)
    torch.testing.assert_close(new(x), other(x))


def count_attention(monkeypatch, fn) -> int:
    total = {"n": 0}
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        total["n"] += q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        fn()
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return total["n"]


def test_station_groups_and_real_pair_bias_change_no_output_and_cut_the_spatial_attention(monkeypatch):
    ev = AugerSimulator().simulate(48, np.random.default_rng(8))
    b = {k: v for k, v in to_batch(ev, ["xmax"], {"xmax": (750.0, 70.0)}).items() if k in INPUTS}
    torch.manual_seed(0)
    net = AugerTransformer(N, 120, temporal_dim=16, temporal_heads=2, temporal_depth=1, dim=16, num_heads=2,
                           depth=2, spatial_groups=4)
    grouped = net(**b)
    spatial = {}
    for groups in (4, 1):
        net.spatial_groups = groups
        spatial[groups] = count_attention(monkeypatch, lambda: net(**b))
    net.spatial_groups = 1
    torch.testing.assert_close(net(**b), grouped, atol=1e-5, rtol=1e-5)
    assert spatial[4] < 0.8 * spatial[1]  # fewer attention elements: the groups are padded less
    # the pair bias MLP on the real pairs only: the same bias there, zeros at padded pairs
    feats, mask = torch.randn(3, 6, 5), torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    bias = StationPairBias(num_heads=2, hidden=8)
    pair = (mask[:, :, None] & mask[:, None, :])[:, None].expand(-1, 2, -1, -1)
    torch.testing.assert_close(bias(feats, mask)[pair], bias(feats)[pair])
    assert (bias(feats, mask)[~pair] == 0).all()
