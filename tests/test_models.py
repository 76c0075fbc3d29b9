"""Model-level behaviour shared by every jet model: shapes, masks, permutation invariance, parameter counts."""

import math

import pytest
import torch

from physics_tf.jets.part import ParticleTransformer, random_trim
from physics_tf.jets.pfn import ParticleFlowNetwork

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


def test_parameter_counts_match_reference():
    count = lambda m: sum(p.numel() for p in m.parameters())
    # weaver-core's ParticleTransformer with JetClass's 17 features and 10 classes has 2,143,486 parameters
    assert abs(count(ParticleTransformer(17, 10)) - 2_143_486) <= 0.005 * 2_143_486
    assert count(ParticleTransformer(17, 10)) == 2_143_486
    assert count(ParticleTransformer(17, 10, use_interaction=False)) == 2_143_486 - 9_568
    assert count(ParticleFlowNetwork(17, 10)) == pytest.approx(86_100, rel=0.01)


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
    assert 0.95 * cls_bound < model.cls_blocks[0].attn.out_proj.weight.abs().max() <= cls_bound
    first = model.pair_embed.mlp[1]  # pair MLP keeps PyTorch's default init, like the reference's convs
    assert first.bias.abs().max() > 0 and first.weight.abs().max() <= 1 / math.sqrt(4)


def test_part_equals_weaver_core_with_the_same_weights():
    """Optional: with weaver-core installed (the [bench] extra), loading its weights gives the same eval logits."""
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer")
    from physics_tf.jets.part import from_weaver_state_dict

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
