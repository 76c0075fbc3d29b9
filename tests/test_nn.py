"""The shared attention core, blocks, embeddings and pairwise features."""

import math

import pytest
import torch

from physics_tf.nn.attention import MultiheadAttention, attention, attention_mask
from physics_tf.nn.blocks import ClassAttentionBlock, TransformerBlock
from physics_tf.nn.embeddings import SinusoidalPositionalEncoding, sinusoidal_encoding
from physics_tf.jets.pairwise import PairEmbedding, pair_features, real_pairs


def naive_attention(q, k, v, bias, mask):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias  # (B, H, Lq, Lk)
    logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    return logits.softmax(-1) @ v


def test_attention_equals_naive_softmax_with_bias_and_mask():
    torch.manual_seed(0)
    B, H, L, d = 3, 4, 7, 8
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(B, H, L, L, dtype=torch.float64)
    mask = torch.arange(L)[None] < torch.tensor([7, 4, 1])[:, None]
    out = attention(q, k, v, attention_mask(mask, bias))
    torch.testing.assert_close(out, naive_attention(q, k, v, bias, mask))


def test_mask_polarity_true_means_real():
    """A padded key (False) with a huge value must not leak into the output."""
    q = torch.ones(1, 1, 1, 2)
    k = torch.ones(1, 1, 3, 2)
    v = torch.tensor([[[[1.0, 1.0], [1.0, 1.0], [1e6, 1e6]]]])
    mask = torch.tensor([[True, True, False]])
    out = attention(q, k, v, attention_mask(mask))
    torch.testing.assert_close(out, torch.ones(1, 1, 1, 2))


def test_fully_masked_row_stays_finite():
    q = k = v = torch.randn(2, 2, 4, 8)
    mask = torch.tensor([[False] * 4, [True, True, False, False]])
    out = attention(q, k, v, attention_mask(mask, torch.zeros(2, 2, 4, 4)))
    assert torch.isfinite(out).all()


def test_cross_attention_uses_same_projection_as_self_attention():
    torch.manual_seed(1)
    mha = MultiheadAttention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(mha(x), mha(x, context=x))


@pytest.mark.parametrize("normformer", [False, True])
def test_block_padding_does_not_change_real_outputs(normformer):
    torch.manual_seed(2)
    block = TransformerBlock(16, 4, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, normformer=normformer)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = block(x, attention_mask(mask))
    x_pad = torch.cat((x, 100 * torch.randn(2, 3, 16)), dim=1)
    mask_pad = torch.cat((mask, torch.zeros(2, 3, dtype=torch.bool)), dim=1)
    out_pad = block(x_pad, attention_mask(mask_pad))
    torch.testing.assert_close(out_pad[:, :5][mask], out[mask], atol=1e-5, rtol=1e-5)


def test_class_attention_is_permutation_invariant_and_ignores_padding():
    torch.manual_seed(3)
    block = ClassAttentionBlock(16, 4, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, normformer=True)
    cls = torch.randn(1, 1, 16)
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    out = block(cls, x, mask)
    perm = torch.tensor([3, 0, 2, 1, 5, 4])
    torch.testing.assert_close(block(cls, x[:, perm], mask[:, perm]), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block(cls, x[:, :4], mask[:, :4]), out, atol=1e-5, rtol=1e-5)


def test_sinusoidal_encoding_formula():
    pe = sinusoidal_encoding(torch.tensor([0.0, 1.0, 2.5]), 6)
    for row, p in enumerate([0.0, 1.0, 2.5]):
        for k in range(3):
            w = 1 / 10000 ** (2 * k / 6)
            assert pe[row, 2 * k].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert pe[row, 2 * k + 1].item() == pytest.approx(math.cos(p * w), abs=1e-6)
    enc = SinusoidalPositionalEncoding(6, max_len=10)
    torch.testing.assert_close(enc(torch.zeros(1, 3, 6))[0, 1], sinusoidal_encoding(torch.tensor(1.0), 6))


def four_vector(pt, y, phi, m):
    mt = math.hypot(pt, m)
    return torch.tensor([pt * math.cos(phi), pt * math.sin(phi), mt * math.sinh(y), mt * math.cosh(y)], dtype=torch.float64)


def test_pair_features_two_particle_hand_computed():
    a = four_vector(100.0, 0.3, 3.0, 0.0)
    b = four_vector(25.0, -0.1, -3.0, 0.0)
    dphi = (3.0 - -3.0) - 2 * math.pi  # wraps to 6 − 2π ≈ −0.283
    delta = math.hypot(0.4, dphi)
    m2 = (a[3] + b[3]) ** 2 - ((a[:3] + b[:3]) ** 2).sum()
    expected = [math.log(25.0 * delta), math.log(25.0 / 125.0), math.log(delta), math.log(float(m2))]
    got = pair_features(a, b)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    # massless: m² = 2 pT_a pT_b (cosh Δy − cos Δφ)
    assert float(m2) == pytest.approx(2 * 100 * 25 * (math.cosh(0.4) - math.cos(dphi)), rel=1e-9)
    torch.testing.assert_close(pair_features(b, a), got)  # symmetric


def test_real_pairs_lower_triangle_only_real():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    batch, a, b = real_pairs(mask)
    got = sorted(zip(batch.tolist(), a.tolist(), b.tolist()))
    assert got == [(0, 0, 0), (0, 1, 0), (0, 1, 1), (1, 0, 0)]


def test_pair_embedding_symmetric_and_zero_at_padding():
    torch.manual_seed(4)
    emb = PairEmbedding(num_heads=3, dims=(8,)).eval()
    v = torch.stack([four_vector(10 + i, 0.1 * i, 0.2 * i, 0.0) for i in range(4)]).float()[None].repeat(2, 1, 1)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    bias = emb(v, mask)
    assert bias.shape == (2, 3, 4, 4)
    torch.testing.assert_close(bias, bias.transpose(-1, -2))
    assert (bias[1, :, 2:, :] == 0).all() and (bias[1, :, :, 2:] == 0).all()
    torch.testing.assert_close(bias[1, :, :2, :2], bias[0, :, :2, :2])


def test_class_token_pool_summarises_real_elements_only():
    from physics_tf.nn.blocks import ClassTokenPool
    from physics_tf.tasks.base import split_weight_decay_params

    torch.manual_seed(5)
    pool = ClassTokenPool(16, 4, num_layers=2).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = pool(x, mask)
    assert out.shape == (2, 16)
    torch.testing.assert_close(pool(x[:, [5, 2, 0, 4, 1, 3]], mask[:, [5, 2, 0, 4, 1, 3]]), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool(x[1:, :3], mask[1:, :3]), out[1:], atol=1e-5, rtol=1e-5)
    wrapper = torch.nn.ModuleDict({"pool": pool})
    _, no_decay = split_weight_decay_params(wrapper)
    assert "pool.cls_token" in no_decay


def test_dropout_bits_rate_values_and_seed():
    from physics_tf.nn.attention import Dropout, dropout_bits, dropout_keep

    x = torch.ones(400_000)
    torch.manual_seed(0)
    out = dropout_bits(x, 0.1)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 5 * math.sqrt(0.1 * 0.9 / x.numel())  # binomial: 5σ
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    torch.manual_seed(0)
    torch.testing.assert_close(dropout_bits(x, 0.1), out)  # reproducible under torch.manual_seed
    # neighbouring elements are independent (the 16-bit draws come in groups of 4 from one 64-bit number)
    keep = dropout_keep(torch.empty(400_000), 0.5).float().view(-1, 4)
    corr = torch.corrcoef(keep.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02
    assert dropout_bits(x, 0.1, training=False) is x and dropout_bits(x, 0.0) is x
    assert (Dropout(1.0)(torch.ones(5)) == 0).all()


def test_attention_with_dropout_equals_naive_with_the_same_keep_mask():
    from physics_tf.nn.attention import dropout_keep

    torch.manual_seed(0)
    B, H, L, d = 2, 3, 6, 4
    q, k, v = (torch.randn(B, H, L, d, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(B, H, L, L, dtype=torch.float64)
    mask = torch.arange(L)[None] < torch.tensor([6, 3])[:, None]
    for attn_mask in (attention_mask(mask, bias), attention_mask(mask)):
        torch.manual_seed(7)
        out = attention(q, k, v, attn_mask, dropout_p=0.3)
        torch.manual_seed(7)
        keep = dropout_keep(torch.empty(B, H, L, L), 0.3)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)
        logits = logits + attn_mask if attn_mask.dtype != torch.bool else logits.masked_fill(~attn_mask, float("-inf"))
        expected = (logits.softmax(-1) * keep / 0.7) @ v
        torch.testing.assert_close(out, expected)


def test_packed_block_equals_dense_block_on_real_elements():
    from physics_tf.nn.packing import Packing

    torch.manual_seed(6)
    block = TransformerBlock(16, 4, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, normformer=True).double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    mask = torch.arange(5)[None] < torch.tensor([5, 2, 4])[:, None]
    bias = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    packing = Packing(mask)
    torch.testing.assert_close(packing.unpack(packing.pack(x)), x * mask[..., None])
    for train in (False, True):  # SDPA (eval) and the baddbmm path (train, here without dropout)
        block.train(train)
        block.attn.dropout = 0.25 if train else 0.0
        torch.manual_seed(1)
        dense = block(x, attention_mask(mask, bias))
        torch.manual_seed(1)  # the same attention dropout: packing changes no random draw
        packed = block(packing.pack(x), attention_mask(mask, bias), packing)
        torch.testing.assert_close(packed, dense[mask])


def test_pair_embedding_eval_folds_batchnorm_exactly_and_fills_the_key_mask():
    torch.manual_seed(8)
    emb = PairEmbedding(num_heads=3, dims=(8, 8)).double()
    for m in emb.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    emb.eval()
    feats = torch.randn(50, 4, dtype=torch.float64)
    torch.testing.assert_close(emb._eval_mlp(feats), emb.mlp(feats))
    emb.float()  # pair features are always computed in fp32
    v = torch.stack([four_vector(10 + i, 0.1 * i, 0.2 * i, 0.0) for i in range(4)]).float()[None].repeat(3, 1, 1)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    bias = emb(v, mask)
    torch.testing.assert_close(emb(v, mask, key_mask_value=float("-inf")), attention_mask(mask, bias))


def test_pair_mlp_gradients_equal_plain_autograd():
    torch.manual_seed(9)
    emb = PairEmbedding(num_heads=3, dims=(8,)).double().train()
    feats = torch.randn(40, 4, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(emb._train_mlp(feats).square().sum(), [feats, *emb.parameters()])
    expected = torch.autograd.grad(emb.mlp(feats).square().sum(), [feats, *emb.parameters()])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def test_packing_equals_boolean_indexing_and_its_inverse():
    from physics_tf.nn.packing import Packing

    torch.manual_seed(10)
    mask = torch.rand(4, 7) < 0.5
    mask[2] = False  # an empty set
    x = torch.randn(4, 7, 3)
    packing = Packing(mask)
    assert torch.equal(packing.pack(x), x[mask])
    values = torch.randn(int(mask.sum()), 3)
    expected = torch.zeros(4, 7, 3)
    expected[mask] = values
    assert torch.equal(packing.unpack(values), expected)
    # two masks with the same real count per row pack to corresponding rows
    from physics_tf.nn.packing import left_aligned

    left = left_aligned(mask)
    assert left.shape == (4, int(mask.sum(1).max())) and torch.equal(left.sum(1), mask.sum(1))
    assert torch.equal(Packing(left).unpack(packing.pack(x))[left], x[mask])
    assert (left[:, :-1].int() - left[:, 1:].int() >= 0).all()  # real elements first
    assert left_aligned(mask, trim=False).shape == mask.shape
    assert left_aligned(torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 1)  # at least one column


def test_trim_to_longest_and_prefix_mask():
    from physics_tf.nn.packing import prefix_mask, trim_to_longest

    mask = prefix_mask(6, 9, torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert counts[0] == 8 and (counts >= 1).all() and (counts < 9).all()  # every row padded, the first 9 − 1
    assert torch.equal(mask, torch.arange(9)[None] < counts[:, None])  # left-aligned
    x = torch.randn(6, 9, 2)
    m, t = trim_to_longest(mask, x)
    assert m.shape == (6, 8) and torch.equal(t, x[:, :8]) and torch.equal(m.sum(1), counts)


def test_legacy_state_keys_rename_on_dot_boundaries_and_load():
    from physics_tf.nn.blocks import ClassTokenPool
    from physics_tf.nn.state_keys import accept_legacy_state_keys, rename_legacy_key

    renames = {"cls_token": "pool.cls_token", "cls_blocks": "pool.blocks", "norm": "pool.norm"}
    assert rename_legacy_key("cls_blocks.0.fc1.weight", renames) == "pool.blocks.0.fc1.weight"
    assert rename_legacy_key("cls_token", renames) == "pool.cls_token"
    assert rename_legacy_key("normalizer.weight", renames) == "normalizer.weight"  # not a dot boundary
    assert rename_legacy_key("pool.norm.weight", renames) == "pool.norm.weight"

    class Net(torch.nn.Module):
        LEGACY_STATE_KEYS = renames

        def __init__(self):
            super().__init__()
            self.pool = ClassTokenPool(8, 2)
            accept_legacy_state_keys(self)

    torch.manual_seed(11)
    source = Net()
    old = {rename_legacy_key(k, {v: k for k, v in renames.items()}): t for k, t in source.state_dict().items()}
    assert "cls_token" in old and "cls_blocks.0.fc1.weight" in old and "norm.weight" in old
    for wrap in (False, True):  # on its own and inside a task (``net.*`` keys)
        net = Net()
        target = torch.nn.ModuleDict({"net": net}) if wrap else net
        target.load_state_dict({("net." if wrap else "") + k: v for k, v in old.items()})
        for k, v in source.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    Net().load_state_dict(source.state_dict())  # current names load as they are
    with pytest.raises(TypeError, match="LEGACY_STATE_KEYS"):
        accept_legacy_state_keys(torch.nn.Linear(2, 2))


def test_class_token_pool_draw_order_and_token_dtype():
    """``init_token=False`` draws nothing for the token (the owner draws it later); ``cast_token=False`` leaves
    the token's dtype to autocast."""
    from physics_tf.nn.blocks import ClassTokenPool

    torch.manual_seed(12)
    drawn = ClassTokenPool(8, 2, num_layers=2)
    torch.manual_seed(12)
    token = torch.nn.init.trunc_normal_(torch.zeros(1, 1, 8), std=0.02)
    assert torch.equal(drawn.cls_token.detach(), token)  # the token is the first draw
    torch.manual_seed(12)
    torch.nn.init.trunc_normal_(torch.zeros(1, 1, 8), std=0.02)  # the owner's draw, before the blocks here
    late = ClassTokenPool(8, 2, num_layers=2, init_token=False)
    assert (late.cls_token == 0).all()  # left for the owner
    for (name, a), b in zip(drawn.blocks.named_parameters(), late.blocks.parameters()):
        assert torch.equal(a, b), name  # the blocks' draws follow the token's, wherever it is drawn
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert drawn.double()(x).dtype == torch.float64


def test_cross_attention_block_updates_the_queries_only_from_real_elements():
    from physics_tf.nn.blocks import CrossAttentionBlock

    torch.manual_seed(13)
    block = CrossAttentionBlock(8, 2, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0).eval()
    q, x = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = block(q, x, attention_mask(mask))
    assert out.shape == (2, 3, 8)
    x2 = x.clone()
    x2[1, 2:] = 100.0
    torch.testing.assert_close(block(q, x2, attention_mask(mask)), out)


def test_masked_mean_real_mask_and_mlp():
    from physics_tf.nn.blocks import mlp
    from physics_tf.nn.packing import masked_mean, on_real, real_mask

    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
                      [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    m = real_mask(h, mask)
    assert m.dtype == torch.bool and real_mask(h, None).all() and real_mask(h, None).shape == (3, 3)
    torch.testing.assert_close(masked_mean(h, m), torch.tensor([[2.0, 3.0], [7.0, 8.0], [0.0, 0.0]]))
    layers, width = mlp(2, [8, 4], dropout=0.1)
    assert width == 4 and [type(x).__name__ for x in layers] == ["Linear", "ReLU", "Dropout"] * 2
    layers, width = mlp(2, [8, 4])
    assert [type(x).__name__ for x in layers] == ["Linear", "ReLU"] * 2  # state-dict keys 0 and 2, as before
    out = on_real(layers.eval(), h, m)
    assert torch.all(out[~m] == 0) and out.shape == (3, 3, 4)
    torch.testing.assert_close(out[m], layers(h[m]))
