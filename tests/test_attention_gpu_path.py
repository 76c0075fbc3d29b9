"""Which kernels attention and dropout take per device (issue 18, "GPU paths"): on a CPU the hand-written dropout
path (bias in the GEMM, 16-bit draws); elsewhere SDPA with ``dropout_p`` and ``F.dropout``. Tested on CPU by
swapping the decision function ``_fused_dropout`` and watching which function is called with what."""

from __future__ import annotations

import pytest
import torch

import physics_tf.nn.attention as attn_core
from physics_tf.nn.attention import (
    Dropout,
    MultiheadAttention,
    attention,
    attention_mask,
    dropout_bits,
)

B, H, L, D = 2, 2, 6, 4


@pytest.fixture
def spy(monkeypatch):
    """Counts SDPA (with its keyword arguments), the CPU dropout path and F.dropout."""
    calls = {"sdpa": [], "cpu_path": 0, "dropout": []}
    sdpa, cpu_path, dropout = attn_core.F.scaled_dot_product_attention, attn_core._dropout_attention, attn_core.F.dropout

    def counting_sdpa(q, k, v, attn_mask=None, **kwargs):
        calls["sdpa"].append({"attn_mask": attn_mask, **kwargs})
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    def counting_cpu_path(*args, **kwargs):
        calls["cpu_path"] += 1
        return cpu_path(*args, **kwargs)

    def counting_dropout(x, p=0.5, *args, **kwargs):
        calls["dropout"].append(p)
        return dropout(x, p, *args, **kwargs)

    monkeypatch.setattr(attn_core.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(attn_core, "_dropout_attention", counting_cpu_path)
    monkeypatch.setattr(attn_core.F, "dropout", counting_dropout)
    return calls


def inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    keep = torch.arange(L)[None] < torch.tensor([6, 3])[:, None]
    return q, k, v, keep


def test_decision_is_cpu_versus_the_rest():
    assert attn_core._fused_dropout(torch.empty(2)) is False
    assert attn_core._fused_dropout(torch.empty(2, device="meta")) is True  # any non-CPU device (CUDA, meta, …)


def test_cpu_keeps_the_hand_written_dropout_path(spy):
    q, k, v, keep = inputs()
    bias = torch.randn(B, H, L, L)
    for mask in (attention_mask(keep), attention_mask(keep, bias)):
        torch.manual_seed(3)
        out = attention(q, k, v, mask, dropout_p=0.2)
        torch.manual_seed(3)
        assert torch.equal(out, attn_core._dropout_attention(q, k, v, mask, 0.2))  # bit for bit as before
    assert spy["sdpa"] == [] and spy["cpu_path"] == 4 and spy["dropout"] == []
    x = torch.ones(1000)
    dropout_bits(x, 0.3)
    Dropout(0.3).train()(x)
    assert spy["dropout"] == []  # the 16-bit draws, not F.dropout
    attention(q, k, v, attention_mask(keep))  # no dropout: SDPA, as ever
    assert len(spy["sdpa"]) == 1 and "dropout_p" not in spy["sdpa"][0]


def test_cuda_decision_sends_dropout_to_sdpa(spy, monkeypatch):
    monkeypatch.setattr(attn_core, "_fused_dropout", lambda t: True)
    q, k, v, keep = inputs()
    bool_mask = attention_mask(keep)
    out = attention(q, k, v, bool_mask, dropout_p=0.25)
    (call,) = spy["sdpa"]
    assert call["dropout_p"] == 0.25 and call["attn_mask"] is bool_mask  # (B, 1, 1, L): no L² mask is built
    assert bool_mask.shape == (B, 1, 1, L) and bool_mask.dtype == torch.bool
    assert spy["cpu_path"] == 0 and out.shape == (B, H, L, D) and torch.isfinite(out).all()
    bias_mask = attention_mask(keep, torch.randn(B, H, L, L))
    attention(q, k, v, bias_mask, dropout_p=0.25, scale=1.0)
    assert spy["sdpa"][1]["attn_mask"] is bias_mask and spy["sdpa"][1]["scale"] == 1.0
    assert spy["cpu_path"] == 0


def test_cuda_decision_uses_f_dropout_for_dropout_layers_and_logit_scores(spy, monkeypatch):
    monkeypatch.setattr(attn_core, "_fused_dropout", lambda t: True)
    x = torch.ones(20_000)
    out = dropout_bits(x, 0.3)
    assert spy["dropout"] == [0.3] and out.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert abs((out == 0).float().mean().item() - 0.3) < 0.02
    Dropout(0.1).train()(x)
    assert spy["dropout"] == [0.3, 0.1]
    assert Dropout(0.1).eval()(x) is x and dropout_bits(x, 0.0) is x  # off: no call
    assert spy["dropout"] == [0.3, 0.1]
    mha = MultiheadAttention(8, 2, dropout=0.2, score="additive").train()
    mha(torch.randn(2, 5, 8))
    assert spy["dropout"][-1] == 0.2 and spy["sdpa"] == []  # the logit scores drop their weights with F.dropout


def test_layer_in_training_takes_sdpa_with_dropout_under_the_cuda_decision(spy, monkeypatch):
    monkeypatch.setattr(attn_core, "_fused_dropout", lambda t: True)
    mha = MultiheadAttention(8, 2, dropout=0.1, score="scaled_dot").train()
    _, _, _, keep = inputs()
    mha(torch.randn(B, L, 8), attn_mask=attention_mask(keep))
    assert [c["dropout_p"] for c in spy["sdpa"]] == [0.1] and spy["cpu_path"] == 0
    mha.eval()(torch.randn(B, L, 8))
    assert "dropout_p" not in spy["sdpa"][-1]
