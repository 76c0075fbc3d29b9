"""Block options (contract C3: ``attention=``, ``activation=``) and ParT's speed paths (length groups, the chunked
eval-mode pair MLP): defaults unchanged, options wired through, fast paths the same function."""

from __future__ import annotations

import copy

import pytest
import torch

from physics_tf.jets.pairwise import PairEmbedding, pair_features
from physics_tf.jets.part import ParticleTransformer
from physics_tf.nn.blocks import ClassTokenPool, CrossAttentionBlock, TransformerBlock
from physics_tf.nn.packing import length_groups


def jets(batch: int = 12, length: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(2, length, (batch,), generator=g)
    counts[0] = length
    mask = torch.arange(length)[None] < counts[:, None]
    pt = torch.rand(batch, length, generator=g) * 50 + 1
    eta, phi = (torch.randn(batch, length, generator=g) * 0.4 for _ in range(2))
    v = torch.stack([pt * phi.cos(), pt * phi.sin(), pt * torch.sinh(eta), pt * torch.cosh(eta)], -1)
    x = torch.randn(batch, length, 5, generator=g)
    return x * mask[..., None], v * mask[..., None], mask


def small_part(**kwargs) -> ParticleTransformer:
    torch.manual_seed(0)
    return ParticleTransformer(5, 3, embed_dims=(16, 16), pair_embed_dims=(8,), num_heads=2, num_layers=2,
                               num_cls_layers=1, **kwargs)


def test_block_defaults_are_unchanged_and_options_reach_the_layers():
    torch.manual_seed(0)
    ref = TransformerBlock(16, 2, normformer=True)
    torch.manual_seed(0)
    same = TransformerBlock(16, 2, normformer=True, attention={}, activation="gelu")
    assert ref.state_dict().keys() == same.state_dict().keys()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(same.eval()(x), ref.eval()(x), rtol=0, atol=0)
    assert ref.act.approximate == "none"
    torch.manual_seed(0)
    tanh = TransformerBlock(16, 2, normformer=True, activation="gelu_tanh").eval()
    assert tanh.act.approximate == "tanh"
    diff = (tanh(x) - ref(x)).abs().max()
    assert 0 < diff < 1e-2  # a different, close function
    pool = ClassTokenPool(16, 2, num_layers=2, activation="gelu_tanh")
    assert all(b.act.approximate == "tanh" for b in pool.blocks)
    assert CrossAttentionBlock(16, 2, activation="gelu_tanh").act.approximate == "tanh"
    with pytest.raises(ValueError, match="activation='relu'"):
        TransformerBlock(16, 2, activation="relu")


def test_attention_options_are_passed_to_every_attention(monkeypatch):
    import physics_tf.nn.blocks as blocks

    seen = []

    class Spy(blocks.MultiheadAttention):  # records the options, builds the default attention
        def __init__(self, dim, num_heads, dropout=0.0, head_scale=False, **options):
            super().__init__(dim, num_heads, dropout=dropout, head_scale=head_scale)
            seen.append((dropout, head_scale, options))

    monkeypatch.setattr(blocks, "MultiheadAttention", Spy)
    TransformerBlock(16, 2, attn_dropout=0.2, normformer=True, attention={"score": "additive"})
    ClassTokenPool(16, 2, num_layers=1, attention={"score": "cosine"})
    CrossAttentionBlock(16, 2, attention={"kind": "window", "window": 4})
    assert seen == [(0.2, True, {"score": "additive"}), (0.0, False, {"score": "cosine"}),
                    (0.1, False, {"kind": "window", "window": 4})]
    seen.clear()
    # ParT: null entries (the config lists every option as null) are left out; the class-attention pool keeps
    # full attention under an efficient kind
    small_part(attention={"score": None, "kind": "window", "window": 4, "max_len": None})
    assert seen[:2] == [(0.1, True, {"kind": "window", "window": 4})] * 2 and seen[2] == (0.0, True, {})
    seen.clear()
    small_part(attention={"score": "additive", "kind": None})
    assert all(options == {"score": "additive"} for *_, options in seen) and len(seen) == 3


def test_length_groups_minimise_padded_attention():
    assert length_groups([], 1.0) == []
    assert length_groups([7], 1e9) == [(0, 1, 7)]
    assert length_groups([9, 9, 3, 3, 3, 0], 1e9) == [(0, 6, 9)]  # a group costs more than any padding
    assert length_groups([9, 9, 3, 3, 3, 0], 1.0) == [(0, 2, 9), (2, 5, 3), (5, 6, 1)]
    assert length_groups([9, 9, 3, 3, 3], 20.0) == [(0, 2, 9), (2, 5, 3)]  # 2·81 + 3·9 + 40 < 5·81 + 20
    with pytest.raises(ValueError, match="descending"):
        length_groups([1, 2], 1.0)


@pytest.mark.parametrize("train", [False, True])
def test_length_groups_give_the_same_function(train):
    """Grouped by length (jets reordered, several bias tensors) = one padded batch, in eval and in training
    (no dropout; the BatchNorms still see the whole batch), outputs and gradients."""
    model = small_part(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, train_trim_quantiles=None,
                       length_groups=True)
    model.GROUP_OVERHEAD = 1.0  # many groups even for a small batch
    ref = copy.deepcopy(model)
    ref.length_groups = False
    x, v, mask = jets()
    model.train(train), ref.train(train)
    calls = []
    handle = model.blocks[0].attn.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    out = model(x, v, mask)
    handle.remove()
    assert len(calls) > 2  # really grouped
    expected = ref(x, v, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if train:
        out.square().sum().backward()
        expected.square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            # summation order differs: tolerance relative to the largest gradient entry of the tensor
            atol = 1e-5 * (1.0 + float(q.grad.abs().max()))
            torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=0, msg=name)


def test_chunked_eval_pair_mlp_equals_the_unchunked_one(monkeypatch):
    torch.manual_seed(0)
    embed = PairEmbedding(4, (8, 8)).eval()
    for m in embed.mlp:
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    _, v, mask = jets(6, 20)
    with torch.no_grad():
        whole = embed(v, mask)
        monkeypatch.setattr(PairEmbedding, "EVAL_CHUNK", 7)
        chunked = embed(v, mask)
        emb, batch, a, b = embed.embed(v, mask)  # folded BatchNorms, chunked
        plain = embed.mlp(pair_features(v[batch, a], v[batch, b]))  # the layers one by one
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(emb, plain, rtol=1e-5, atol=1e-5)
    assert len(emb) > 7
