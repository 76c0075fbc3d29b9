"""The six alignment scores of the attention core (``MultiheadAttention(score=...)``) against their formulas written
out naively, with masks, the additive bias, dropout, attention weights and gradients; and ``kind=`` dispatch to
:func:`physics_tf.nn.efficient.efficient_attention` (a stand-in module here, so these tests do not depend on it)."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import physics_tf.nn.attention as attn_core
from physics_tf.nn.attention import (
    SCORES,
    MultiheadAttention,
    attention_mask,
    dropout_keep,
)

OPTIONS = {"location": {"max_len": 6}, "additive": {"additive_dim": 3}}


def identity_projections(mha: MultiheadAttention) -> MultiheadAttention:
    """q = k = v = the input (split into heads), output projection = identity: the layer is the attention alone."""
    dim = mha.dim
    with torch.no_grad():
        mha.in_proj.weight.copy_(torch.eye(dim).repeat(3, 1))
        mha.in_proj.bias.zero_()
        mha.out_proj.weight.copy_(torch.eye(dim))
        mha.out_proj.bias.zero_()
    return mha


def naive_score(name: str, mha: MultiheadAttention, head: int, s, h, j: int) -> float:
    """One logit of query vector s and key vector h (key position j), the score's formula term by term."""
    d = len(s)
    dot = sum(s[i] * h[i] for i in range(d))
    if name == "scaled_dot":
        return dot / math.sqrt(d)
    if name == "dot":
        return dot
    if name == "general":  # sᵀ W h
        W = mha.score.weight[head].tolist()
        return sum(s[a] * W[a][b] * h[b] for a in range(d) for b in range(d))
    if name == "additive":  # vᵀ tanh(W₁ s + W₂ h)
        W1, W2, v = mha.score.w_query[head].tolist(), mha.score.w_key[head].tolist(), mha.score.v[head].tolist()
        return sum(v[r] * math.tanh(sum(W1[r][i] * s[i] for i in range(d)) + sum(W2[r][i] * h[i] for i in range(d)))
                   for r in range(len(v)))
    if name == "cosine":  # τ cos(s, h)
        tau = float(mha.score.temperature()[head].detach())
        return tau * dot / (math.sqrt(sum(x * x for x in s)) * math.sqrt(sum(x * x for x in h)))
    if name == "location":  # (W s)_j
        W = mha.score.weight[head].tolist()
        return sum(W[j][i] * s[i] for i in range(d))
    raise AssertionError(name)


def naive_attention(name, mha, x, ctx, keep=None, bias=None):
    """Per batch, head, query: softmax over the real keys of (score + bias), times the values (= keys, identity
    projections). Returns (output (B, Lq, D), weights (B, H, Lq, Lk))."""
    B, Lq, _ = x.shape
    Lk, H, d = ctx.shape[1], mha.num_heads, mha.head_dim
    out = torch.zeros(B, Lq, H * d, dtype=torch.float64)
    weights = torch.zeros(B, H, Lq, Lk, dtype=torch.float64)
    for b in range(B):
        for hd in range(H):
            sl = slice(hd * d, (hd + 1) * d)
            for i in range(Lq):
                s = x[b, i, sl].tolist()
                real = [j for j in range(Lk) if keep is None or keep[b, j] or not keep[b].any()]
                logits = {j: naive_score(name, mha, hd, s, ctx[b, j, sl].tolist(), j)
                          + (0.0 if bias is None else float(bias[b, hd, i, j])) for j in real}
                top = max(logits.values())
                z = sum(math.exp(v - top) for v in logits.values())
                for j in real:
                    weights[b, hd, i, j] = math.exp(logits[j] - top) / z
                    out[b, i, sl] += weights[b, hd, i, j] * ctx[b, j, sl].double()
    return out, weights


def build(name: str, dim: int = 2, heads: int = 1, **extra) -> MultiheadAttention:
    return identity_projections(MultiheadAttention(dim, heads, score=name, **{**OPTIONS.get(name, {}), **extra})).double()


def set_hand_weights(name: str, mha: MultiheadAttention) -> None:
    """Fixed, hand-chosen parameters (B = H = 1, d = 2)."""
    with torch.no_grad():
        if name == "general":
            mha.score.weight.copy_(torch.tensor([[[1.0, 2.0], [0.5, -1.0]]]))
        elif name == "additive":
            mha.score.w_query.copy_(torch.tensor([[[1.0, 0.0], [0.5, -0.5], [0.0, 2.0]]]))
            mha.score.w_key.copy_(torch.tensor([[[0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]]))
            mha.score.v.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        elif name == "location":
            mha.score.weight.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [2.0, 0.5], [0, 0], [0, 0]]]))


@pytest.mark.parametrize("name", SCORES)
def test_each_score_equals_its_formula_on_a_hand_example(name):
    mha = build(name).eval()
    set_hand_weights(name, mha)
    x = torch.tensor([[[1.0, 2.0], [-0.5, 1.0]]], dtype=torch.float64)  # 2 queries
    ctx = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [1.0, 1.0], [-1.0, 0.5]]], dtype=torch.float64)  # 4 keys
    out, w = mha(x, ctx, need_weights=True)
    ref_out, ref_w = naive_attention(name, mha, x, ctx)
    torch.testing.assert_close(w, ref_w.float())
    torch.testing.assert_close(out, ref_out)


def test_hand_values_of_two_scores():
    """Two logits worked out on paper: dot (1, 2)·(2, 0) = 2; cosine with τ = 10: 10·2/(√5·2) = 2√5."""
    s, h = [1.0, 2.0], [2.0, 0.0]
    assert naive_score("dot", build("dot"), 0, s, h, 0) == 2.0
    assert naive_score("cosine", build("cosine"), 0, s, h, 0) == pytest.approx(2 * math.sqrt(5))
    x, ctx = torch.tensor([[s]], dtype=torch.float64), torch.tensor([[h, [0.0, 1.0]]], dtype=torch.float64)
    _, w = build("dot")(x, ctx, need_weights=True)  # logits 2 and 2 → equal weights
    torch.testing.assert_close(w, torch.full((1, 1, 1, 2), 0.5))


@pytest.mark.parametrize("name", SCORES)
def test_masks_bias_and_weights_with_every_score(name):
    torch.manual_seed(3)
    mha = build(name, dim=4, heads=2).eval()
    B, L = 3, 5
    x = torch.randn(B, L, 4, dtype=torch.float64)
    keep = torch.arange(L)[None] < torch.tensor([5, 2, 0])[:, None]  # last row: all padding
    bias = torch.randn(B, 2, L, L, dtype=torch.float64)
    for U in (None, bias):
        mask = attention_mask(keep, U)
        out, w = mha(x, attn_mask=mask, need_weights=True)
        ref_out, ref_w = naive_attention(name, mha, x, x, keep, U)
        torch.testing.assert_close(w, ref_w.float())
        torch.testing.assert_close(out, ref_out)
        assert torch.all(w[:2][~keep[:2, None, None, :].expand(2, 2, L, L)] == 0)  # padding never receives weight
        assert torch.isfinite(out).all()
        recorded = []
        mha.recorder = lambda module, weights, attn_mask, self_attention, rec=recorded: rec.append(weights)
        assert torch.equal(mha(x, attn_mask=mask), out)  # the recorder sees the weights, the output is unchanged
        del mha.recorder
        assert len(recorded) == 1 and torch.equal(recorded[0], w)
        x2 = x.clone()
        x2[1, 2:] = 100.0  # padded elements of row 1 changed: its real outputs stay
        torch.testing.assert_close(mha(x2, attn_mask=mask)[1, :2], out[1, :2])


@pytest.mark.parametrize("name", SCORES)
def test_dropout_on_the_weights_with_every_score(name):
    torch.manual_seed(4)
    mha = build(name, dim=4, heads=2, dropout=0.4).train()
    B, L = 2, 5
    x = torch.randn(B, L, 4, dtype=torch.float64)
    keep = torch.arange(L)[None] < torch.tensor([5, 3])[:, None]
    mask = attention_mask(keep, torch.randn(B, 2, L, L, dtype=torch.float64))
    _, w = naive_attention(name, mha, x, x, keep, mask.masked_fill(mask.isinf(), 0.0))  # float64 weights
    torch.manual_seed(9)
    out = mha.train()(x, attn_mask=mask)
    torch.manual_seed(9)
    drop = dropout_keep(torch.empty(B, 2, L, L), 0.4)  # the same draws (CPU path)
    v = x.view(B, L, 2, 2).transpose(1, 2)
    expected = ((w * drop / 0.6) @ v).transpose(1, 2).reshape(B, L, 4)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, mha.eval()(x, attn_mask=mask))


@pytest.mark.parametrize("name", SCORES)
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(5)
    mha = MultiheadAttention(8, 2, dropout=0.1, score=name, **OPTIONS.get(name, {})).train()
    x = torch.randn(2, 5, 8)
    keep = torch.arange(5)[None] < torch.tensor([5, 3])[:, None]
    bias = torch.randn(2, 2, 5, 5, requires_grad=True)
    mha(x, attn_mask=attention_mask(keep, bias))[keep].square().sum().backward()
    for pname, param in [*mha.named_parameters(), ("bias", bias)]:
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, pname


def test_fused_scores_take_sdpa_and_logit_scores_do_not(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attn_core.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(k) or sdpa(*a, **k))
    x = torch.randn(2, 4, 8)
    for name in SCORES:
        calls.clear()
        MultiheadAttention(8, 2, score=name, **OPTIONS.get(name, {})).eval()(x)
        assert len(calls) == (name in ("scaled_dot", "dot", "general", "cosine")), name
        if calls:
            assert calls[0]["scale"] == (None if name == "scaled_dot" else 1.0)


def test_default_is_unchanged_and_parameter_counts():
    torch.manual_seed(0)
    a = MultiheadAttention(64, 4)
    torch.manual_seed(0)
    b = MultiheadAttention(64, 4, score="scaled_dot", kind="full")
    assert a.state_dict().keys() == b.state_dict().keys() == {"in_proj.weight", "in_proj.bias", "out_proj.weight",
                                                              "out_proj.bias"}
    assert all(torch.equal(a.state_dict()[key], b.state_dict()[key]) for key in a.state_dict())
    base = 64 * 192 + 192 + 64 * 64 + 64
    extra = {"scaled_dot": 0, "dot": 0, "general": 4 * 16 * 16, "additive": 2 * 4 * 16 * 16 + 4 * 16,
             "cosine": 4, "location": 4 * 6 * 16}
    for name in SCORES:
        opts = {"max_len": 6} if name == "location" else {}  # additive: the default additive_dim = head width 16
        n = sum(p.numel() for p in MultiheadAttention(64, 4, score=name, **opts).parameters())
        assert n == base + extra[name], name
    assert sum(p.numel() for p in MultiheadAttention(64, 4, score="cosine", temperature=5.0).parameters()) == base


def test_general_starts_as_scaled_dot_and_cosine_temperature_options():
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    ref = MultiheadAttention(8, 2).eval()
    gen = MultiheadAttention(8, 2, score="general").eval()
    gen.load_state_dict(ref.state_dict(), strict=False)
    torch.testing.assert_close(gen(x, ctx), ref(x, ctx))
    cos = MultiheadAttention(8, 2, score="cosine")
    torch.testing.assert_close(cos.score.temperature(), torch.full((2,), 10.0))
    with torch.no_grad():
        cos.score.log_temperature.fill_(10.0)
    torch.testing.assert_close(cos.score.temperature(), torch.full((2,), 100.0))  # capped
    fixed = MultiheadAttention(8, 2, score="cosine", temperature=250.0)
    torch.testing.assert_close(fixed.score.temperature(), torch.full((2,), 250.0))  # a fixed τ is not capped


def test_bad_scores_and_options_are_named():
    with pytest.raises(ValueError, match="'bilinear'"):
        MultiheadAttention(8, 2, score="bilinear")
    with pytest.raises(ValueError, match="max_len"):
        MultiheadAttention(8, 2, score="location")
    with pytest.raises(ValueError, match="max_len"):
        MultiheadAttention(8, 2, score="dot", max_len=4)  # not an option of "dot"
    with pytest.raises(ValueError, match="windw"):
        MultiheadAttention(8, 2, windw=4)
    with pytest.raises(ValueError, match="additive_dim"):
        MultiheadAttention(8, 2, score="additive", additive_dim=0)
    with pytest.raises(ValueError, match="temperature"):
        MultiheadAttention(8, 2, score="cosine", temperature=0.0)
    loc = MultiheadAttention(8, 2, score="location", max_len=4)
    loc(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="max_len=4"):
        loc(torch.randn(1, 5, 8))


# ------------------------------------------------------------------------------------------- kind dispatch
@pytest.fixture
def fake_efficient(monkeypatch):
    """A stand-in physics_tf.nn.efficient that records its calls and answers with v."""
    calls = []

    def efficient_attention(kind, q, k, v, key_mask, dropout_p=0.0, **options):
        calls.append({"kind": kind, "q": q, "k": k, "v": v, "key_mask": key_mask, "dropout_p": dropout_p,
                      "options": options})
        return v * 2.0

    module = types.ModuleType("physics_tf.nn.efficient")
    module.KINDS = ("full", "lsh", "sparse_strided", "sparse_fixed", "window")
    module.KIND_OPTIONS = {"lsh": ("bucket_size", "n_hashes"), "window": ("window",), "sparse_strided": ("block",),
                           "sparse_fixed": ("block",)}
    module.efficient_attention = efficient_attention
    monkeypatch.setitem(sys.modules, "physics_tf.nn.efficient", module)
    monkeypatch.setattr(sys.modules["physics_tf.nn"], "efficient", module, raising=False)
    return calls


def test_kinds_dispatch_to_efficient_attention(fake_efficient):
    torch.manual_seed(2)
    x = torch.randn(2, 6, 8)
    keep = torch.arange(6)[None] < torch.tensor([6, 4])[:, None]
    mha = MultiheadAttention(8, 2, dropout=0.3, kind="window", window=3).train()
    out = mha(x, attn_mask=attention_mask(keep))
    (call,) = fake_efficient
    assert call["kind"] == "window" and call["options"] == {"window": 3} and call["dropout_p"] == 0.3
    assert torch.equal(call["key_mask"], keep) and call["q"].shape == (2, 2, 6, 4)
    v = torch.nn.functional.linear(x, mha.in_proj.weight[16:], mha.in_proj.bias[16:])
    torch.testing.assert_close(out, mha.out_proj(2 * v))
    mha.eval()(x)
    assert fake_efficient[-1]["key_mask"] is None and fake_efficient[-1]["dropout_p"] == 0.0


def test_lsh_shares_the_query_key_projection(fake_efficient):
    mha = MultiheadAttention(8, 2, kind="lsh", bucket_size=2, n_hashes=2)
    assert mha.in_proj.weight.shape == (16, 8)
    x = torch.randn(2, 6, 8)
    mha(x)
    assert fake_efficient[0]["q"] is fake_efficient[0]["k"]  # keys are the queries (Reformer)
    q = torch.nn.functional.linear(x, mha.in_proj.weight[:8], mha.in_proj.bias[:8]).view(2, 6, 2, 4).transpose(1, 2)
    torch.testing.assert_close(fake_efficient[0]["q"], q)


def test_kinds_refuse_what_they_cannot_do(fake_efficient):
    x = torch.randn(2, 6, 8)
    keep = torch.ones(2, 6, dtype=torch.bool)
    mha = MultiheadAttention(8, 2, kind="window", window=2)
    with pytest.raises(ValueError, match="bias"):
        mha(x, attn_mask=attention_mask(keep, torch.zeros(2, 2, 6, 6)))
    with pytest.raises(ValueError, match="context"):
        mha(x, torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="weights"):
        mha(x, need_weights=True)
    with pytest.raises(ValueError, match="window.*'additive'"):
        MultiheadAttention(8, 2, score="additive", kind="window")
    with pytest.raises(ValueError, match="'performer'"):
        MultiheadAttention(8, 2, kind="performer")
    with pytest.raises(ValueError, match="bucket_size"):
        MultiheadAttention(8, 2, kind="window", bucket_size=4)
    assert fake_efficient == []
