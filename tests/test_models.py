"""Model-level behaviour shared by every jet model: shapes, masks, permutation invariance, ParT's initialisation,
names and old state dicts. (Parameter counts of every configured model: tests/test_model_configs.py.)"""

import math
from pathlib import Path

import pytest
import torch

from physics_tf.jets.part import ParticleTransformer, from_weaver_state_dict, random_trim
from physics_tf.jets.pfn import ParticleFlowNetwork
from physics_tf.nn.state_keys import rename_legacy_key

ROOT = Path(__file__).resolve().parents[1]

SMALL_PART = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
                  train_trim_quantiles=None)
MODELS = {
    "part": lambda: ParticleTransformer(7, 3, **SMALL_PART),
    "part_plain": lambda: ParticleTransformer(7, 3, use_interaction=False, **SMALL_PART),
    "pfn": lambda: ParticleFlowNetwork(7, 3, phi_dims=(16, 16), f_dims=(16,)),
}


def random_jets(batch=4, length=12, n_real=(12, 7, 3, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < torch.tensor(n_real)[:, None]
    pt = torch.rand(batch, length, generator=g) * 100 + 1
    eta = torch.randn(batch, length, generator=g) * 0.4
    phi = torch.randn(batch, length, generator=g) * 0.4
    v = torch.stack([pt * phi.cos(), pt * phi.sin(), pt * torch.sinh(eta), pt * torch.cosh(eta)], -1)
    x = torch.randn(batch, length, 7, generator=g)
    return x * mask[..., None], v * mask[..., None], mask


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    x, v, mask = random_jets()
    out = model(x, v, mask)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [False, True])
def test_padding_never_changes_outputs(name, train):
    """Appending padded particles (with garbage values) changes nothing, in eval and in train mode (no dropout)."""
    torch.manual_seed(0)
    model = MODELS[name]()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0
    model.train(train)
    x, v, mask = random_jets()
    out = model(x, v, mask)
    pad = 20
    x_pad = torch.cat((x, 50 * torch.randn(4, pad, 7)), 1)
    v_pad = torch.cat((v, 50 * torch.rand(4, pad, 4)), 1)
    mask_pad = torch.cat((mask, torch.zeros(4, pad, dtype=torch.bool)), 1)
    torch.testing.assert_close(model(x_pad, v_pad, mask_pad), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_permutation_invariance(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, v, mask = random_jets()
    out = model(x, v, mask)
    perm = torch.randperm(x.shape[1])
    torch.testing.assert_close(model(x[:, perm], v[:, perm], mask[:, perm]), out, atol=1e-5, rtol=1e-5)


def test_interaction_bias_matters():
    """ParT's output depends on the four-vectors through the pair bias; ParT (plain) ignores them."""
    torch.manual_seed(0)
    x, v, mask = random_jets()
    part = ParticleTransformer(7, 3, **SMALL_PART).eval()
    plain = ParticleTransformer(7, 3, use_interaction=False, **SMALL_PART).eval()
    v2 = v * torch.rand_like(v)
    assert not torch.allclose(part(x, v, mask), part(x, v2, mask))
    torch.testing.assert_close(plain(x, v, mask), plain(x, v2, mask))


def test_trim_to_longest_jet_gives_same_result_as_no_trim():
    torch.manual_seed(0)
    x, v, mask = random_jets(n_real=(5, 4, 3, 1))
    trimmed = ParticleTransformer(7, 3, **SMALL_PART).eval()
    full = ParticleTransformer(7, 3, trim=False, **SMALL_PART).eval()
    full.load_state_dict(trimmed.state_dict())
    torch.testing.assert_close(trimmed(x, v, mask), full(x, v, mask), atol=1e-5, rtol=1e-5)


def test_part_requires_four_vectors():
    x, v, mask = random_jets()
    with pytest.raises(ValueError, match="four-vectors"):
        ParticleTransformer(7, 3, **SMALL_PART)(x, None, mask)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward_backward(name):
    """Mixed precision: bias/mask dtypes follow the autocast dtype; outputs finite and close to fp32."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x, v, mask = random_jets()
    ref = model(x, v, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.15, rtol=0.1)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, v, mask).float().sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_random_trim_keeps_a_random_subset_of_real_particles():
    torch.manual_seed(0)
    n_real = torch.tensor([40, 30, 20, 10, 5, 3, 2, 1, 1, 1])
    mask = torch.arange(48)[None] < n_real[:, None]
    ids = torch.arange(48, dtype=torch.float32)[None, :, None].expand(10, 48, 1) * mask[..., None]
    lengths = set()
    for _ in range(20):
        m, t = random_trim(mask, ids, quantile_range=(0.5, 0.9))
        lengths.add(m.shape[1])
        assert m.shape[1] <= 40 and (m.sum(1) == n_real.clamp(max=m.shape[1])).all()
        for b in range(10):
            kept = t[b, m[b], 0]
            assert len(set(kept.tolist())) == len(kept) and (kept < n_real[b]).all()  # distinct real particles
    assert len(lengths) > 1  # the quantile is random
    m, t = random_trim(mask, ids, quantile_range=(1.0, 1.02))
    assert m.shape[1] == 48 or (m.sum(1) == n_real).all()  # q = 1 keeps every particle


def test_part_trims_randomly_only_in_training():
    torch.manual_seed(0)
    x, v, mask = random_jets()
    model = ParticleTransformer(7, 3, **{**SMALL_PART, "train_trim_quantiles": (0.3, 0.3)}).eval()
    torch.testing.assert_close(model(x, v, mask), model(x, v, mask))  # eval: deterministic, nothing dropped
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    outs = [model(x, v, mask) for _ in range(3)]
    assert not all(torch.allclose(outs[0], o) for o in outs[1:])  # different random subsets


def test_part_initialisation_follows_the_reference():
    """weaver-core's init: Xavier per Q/K/V matrix, Xavier elsewhere, zero biases, 1/√(2l) on out_proj and fc2."""
    torch.manual_seed(0)
    model = ParticleTransformer(17, 10)
    for layer, block in enumerate(model.blocks, start=1):
        w = block.attn.in_proj.weight  # (3·128, 128): bound √(6 / (128 + 128))
        assert w.abs().max() <= math.sqrt(6 / 256) and w.abs().max() > 0.95 * math.sqrt(6 / 256)
        assert block.attn.in_proj.bias.abs().max() == 0 and block.fc1.bias.abs().max() == 0
        fc2_bound = math.sqrt(6 / (512 + 128)) / math.sqrt(2 * layer)
        assert 0.95 * fc2_bound < block.fc2.weight.abs().max() <= fc2_bound
        out_bound = math.sqrt(6 / 256) / math.sqrt(2 * layer)
        assert 0.95 * out_bound < block.attn.out_proj.weight.abs().max() <= out_bound
    cls_bound = math.sqrt(6 / 256)  # class blocks: Xavier, not rescaled
    assert 0.95 * cls_bound < model.pool.blocks[0].attn.out_proj.weight.abs().max() <= cls_bound
    first = model.pair_embed.mlp[1]  # pair MLP keeps PyTorch's default init, like the reference's convs
    assert first.bias.abs().max() > 0 and first.weight.abs().max() <= 1 / math.sqrt(4)


def test_part_equals_weaver_core_with_the_same_weights():
    """Optional: with weaver-core installed (the [bench] extra), loading its weights gives the same eval logits."""
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer")

    torch.manual_seed(0)
    ref = weaver.ParticleTransformer(input_dim=7, num_classes=3, embed_dims=(16, 32, 16), pair_embed_dims=(8, 8),
                                     num_heads=2, num_layers=2, num_cls_layers=1).eval()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if t.is_floating_point():
                t.copy_(0.5 + torch.rand_like(t) if "running_var" in name else t + 0.1 * torch.randn_like(t))
    ours = ParticleTransformer(7, 3, **SMALL_PART).eval()
    ours.load_state_dict(from_weaver_state_dict(ref.state_dict()))
    x, v, mask = random_jets()
    expected = ref(x.transpose(1, 2), v.transpose(1, 2), mask[:, None].float())
    torch.testing.assert_close(ours(x, v, mask), expected, atol=1e-5, rtol=1e-4)


def test_part_initialisation_is_the_pre_pool_draw_order():
    """The shared ClassTokenPool changes no initial weight: ParT built after a seed equals the layout it had before
    (class token, class blocks and norm on the model; the token drawn after the head, then the reference init)."""
    from physics_tf.jets.pairwise import PairEmbedding
    from physics_tf.nn.blocks import ClassAttentionBlock, TransformerBlock
    from physics_tf.nn.embeddings import ParticleEmbedding

    dims = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=2)
    torch.manual_seed(0)
    new = ParticleTransformer(7, 3, fc_dims=(8,), **dims)
    torch.manual_seed(0)
    old = torch.nn.Module()
    old.embed = ParticleEmbedding(7, dims["embed_dims"])
    old.pair_embed = PairEmbedding(2, dims["pair_embed_dims"])
    block = dict(dim=16, num_heads=2, ffn_ratio=4, normformer=True)
    old.blocks = torch.nn.ModuleList(TransformerBlock(**block) for _ in range(2))
    old.cls_blocks = torch.nn.ModuleList(ClassAttentionBlock(**block, dropout=0.0, attn_dropout=0.0,
                                                             activation_dropout=0.0, norm_query=False)
                                         for _ in range(2))
    old.norm = torch.nn.LayerNorm(16)
    old.fc = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    old.cls_token = torch.nn.Parameter(torch.nn.init.trunc_normal_(torch.zeros(1, 1, 16), std=0.02))
    ParticleTransformer.reset_parameters_like_reference(old)
    old_state = {rename_legacy_key(k, ParticleTransformer.LEGACY_STATE_KEYS): v for k, v in old.state_dict().items()}
    assert old_state.keys() == new.state_dict().keys()
    for key, value in new.state_dict().items():
        assert torch.equal(value, old_state[key]), key


def test_part_loads_a_state_dict_written_before_the_shared_pool():
    """tests/data/legacy/jets_demo.ckpt (code before the move): ``cls_token``, ``cls_blocks.*``, ``norm.*``."""
    checkpoint = torch.load(ROOT / "tests" / "data" / "legacy" / "jets_demo.ckpt", weights_only=True)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    assert {"cls_token", "cls_blocks.0.fc1.weight", "norm.weight"} <= set(state)
    config = {k: v for k, v in checkpoint["physics_tf_config"]["model"].items() if k != "_target_"}
    model = ParticleTransformer(state["embed.input_bn.weight"].shape[0], state["fc.0.weight"].shape[0], **config)
    model.load_state_dict(state)  # strict
    assert torch.equal(model.pool.cls_token, state["cls_token"])
    assert torch.equal(model.pool.blocks[0].fc1.weight, state["cls_blocks.0.fc1.weight"])
    assert torch.equal(model.pool.norm.weight, state["norm.weight"])
    task = torch.nn.ModuleDict({"net": ParticleTransformer(model.embed.input_bn.num_features, 2, **config)})
    task.load_state_dict(checkpoint["state_dict"])  # inside a task: ``net.*`` keys
    x, v, mask = random_jets()
    x = torch.randn(4, 12, model.embed.input_bn.num_features) * mask[..., None]
    model.eval(), task.eval()
    torch.testing.assert_close(task["net"](x, v, mask), model(x, v, mask), atol=0, rtol=0)


def test_weaver_names_map_onto_the_current_layout():
    """weaver-core's key names (written out here, weaver-core need not be installed): class token, class blocks
    and norm on the model, ``nn.MultiheadAttention``'s ``in_proj_weight``, ``c_attn`` / ``w_resid``, ``embed.embed``
    and the pair MLP's 1×1 convolutions."""
    torch.manual_seed(0)
    ours = ParticleTransformer(7, 3, **SMALL_PART)
    weaver_names = [("pool.cls_token", "cls_token"), ("pool.blocks.", "cls_blocks."), ("pool.norm.", "norm."),
                    (".attn.in_proj.weight", ".attn.in_proj_weight"), (".attn.in_proj.bias", ".attn.in_proj_bias"),
                    (".attn.head_scale", ".c_attn"), (".resid_scale", ".w_resid"), ("pair_embed.mlp.", "pair_embed.embed."),
                    ("embed.mlp.", "embed.embed.")]
    weaver = {}
    for key, value in ours.state_dict().items():
        conv = key.startswith("pair_embed.mlp.") and key.endswith("weight") and value.dim() == 2
        for new, old in weaver_names:
            key = key.replace(new, old)
        weaver["module." + key] = value.unsqueeze(-1) if conv else value
    assert "cls_blocks.0.attn.in_proj_weight" in {k.removeprefix("module.") for k in weaver}
    converted = from_weaver_state_dict(weaver)
    assert converted.keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(converted[key], value), key
