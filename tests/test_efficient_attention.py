"""Efficient attention (physics_tf.nn.efficient, .lsh, .sparse) against dense attention with each kind's explicit
L × L pattern, built here from the definitions; padding, gradients, memory (no L × L tensor) and LatentEncoder.

The attention weights are read off the output: with v = the identity (d_v = L), output row i is row i of the
weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from physics_tf.nn.attention import attention, attention_mask
from physics_tf.nn.efficient import (
    KINDS,
    LatentEncoder,
    check_options,
    efficient_attention,
)
from physics_tf.nn.lsh import SELF_SCORE, default_buckets, lsh_buckets


def qkv(B=2, H=2, L=48, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, d, generator=g) for _ in range(3))


def padded_mask(B, L, real_last=36):
    m = torch.ones(B, L, dtype=torch.bool)
    m[-1, real_last:] = False  # the last sequence has padding at the end
    return m


def weights_of(kind, q, k, key_mask, **options):
    """Attention weights (B, H, L, L) of an efficient kind: its output for v = identity."""
    B, H, L, _ = q.shape
    eye = torch.eye(L).expand(B, H, L, L)
    return efficient_attention(kind, q, k, eye, key_mask, **options)


def dense_weights(scores, allowed):
    """softmax over the allowed keys of scores (B, H, L, L); rows without allowed keys → NaN (not compared)."""
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def compare(w, ref, key_mask):
    real = key_mask[:, None, :, None].expand_as(w)  # real query rows
    torch.testing.assert_close(w[real], ref[real], atol=1e-5, rtol=1e-4)


def pattern_test(kind, allowed_fn, L=48, **options):
    q, k, _ = qkv(L=L)
    m = padded_mask(2, L)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = allowed_fn(i, j) & m[:, None, None, :]  # (B, 1, L, L)
    ref = dense_weights(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), allowed)
    w = weights_of(kind, q, k, m, **options)
    compare(w, ref, m)
    padded_key_of_real_row = ~m[:, None, None, :] & m[:, None, :, None]
    assert w[padded_key_of_real_row.expand_as(w)].abs().max() == 0  # padded keys get no weight
    return w


def test_full_and_window_patterns():
    pattern_test("full", lambda i, j: torch.ones_like(i + j, dtype=torch.bool))
    for window in (5, 16, 100):  # 48 = 9·5 + 3: last window padded; a window wider than L is cut to L
        w = min(window, 48)
        pattern_test("window", lambda i, j, w=w: i // w == j // w, window=window)


def test_window_is_the_auger_reshape_into_windows():
    """The Auger temporal encoder's way: tokens reshaped to (N·nw, w), padded tokens masked, the core's attention."""
    q, k, v = qkv(B=3, H=4, L=30, d=16)
    w, nw = 12, 3

    def fold(t):  # what TemporalEncoder does to its tokens before the blocks
        t = torch.nn.functional.pad(t, (0, 0, 0, nw * w - 30))
        return t.view(3, 4, nw, w, 16).transpose(1, 2).reshape(3 * nw, 4, w, 16)

    real = (torch.arange(nw * w) < 30).view(1, nw, w).expand(3, nw, w).reshape(3 * nw, w)
    ref = attention(fold(q), fold(k), fold(v), attention_mask(real))
    ref = ref.view(3, nw, 4, w, 16).transpose(1, 2).reshape(3, 4, nw * w, 16)[:, :, :30]
    assert torch.equal(efficient_attention("window", q, k, v, None, window=w), ref)


def test_sparse_patterns():
    block = 7  # L = 48 = 6·7 + 6: the last block padded
    pattern_test("sparse_strided", lambda i, j: ((i - j).abs() < block) | ((i - j) % block == 0), block=block)
    pattern_test("sparse_fixed", lambda i, j: (i // block == j // block) | (j % block >= block - 2), block=block,
                 summary=2)
    # the default block is round(√L): 7 for L = 48
    pattern_test("sparse_fixed", lambda i, j: (i // 7 == j // 7) | (j % 7 == 6))


def lsh_reference(q, key_mask, bucket_size, n_buckets, n_hashes, seed, across=False):
    """Dense LSH weights: the buckets of lsh_buckets, then each round's pattern built from its definition (stable
    sort by bucket, chunks, own + previous chunk cyclically, same bucket), softmax over the union of the rounds."""
    B, H, L, d = q.shape
    nc = -(-L // bucket_size)
    allowed = torch.zeros(B, H, L, L, dtype=torch.bool)
    n_total = n_buckets if isinstance(n_buckets, int) else math.prod(n_buckets)
    for r, b in enumerate(lsh_buckets(q, n_buckets, n_hashes, seed).unbind(2)):  # (B, H, L) each
        assert 0 <= b.min() and b.max() < n_total
        b = b.masked_fill(~key_mask[:, None, :], n_total)
        rank = torch.empty_like(b)  # position of each token in the stably sorted order
        for x in range(B):
            for h in range(H):
                for s, t in enumerate(sorted(range(L), key=lambda t: (int(b[x, h, t]), t))):
                    rank[x, h, t] = s
        ci, cj = (rank // bucket_size)[..., :, None], (rank // bucket_size)[..., None, :]
        window = (cj == ci) | (cj == (ci - 1) % nc)
        allowed |= window if across else window & (b[..., :, None] == b[..., None, :])
    allowed &= key_mask[:, None, None, :]
    keys = torch.nn.functional.normalize(q, dim=-1)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.eye(L, dtype=torch.bool), SELF_SCORE)
    return dense_weights(scores, allowed)


@pytest.mark.parametrize("n_hashes,across,nb", [(1, False, 8), (1, True, 8), (3, False, 8), (2, False, [2, 4])])
def test_lsh_is_its_bucket_chunk_pattern(n_hashes, across, nb):
    q, k, _ = qkv(L=64, d=8, seed=3)
    m = padded_mask(2, 64, real_last=50)
    c = 8
    w = weights_of("lsh", q, torch.randn_like(k), m, bucket_size=c, n_hashes=n_hashes, n_buckets=nb, seed=5,
                   attend_across_buckets=across)
    compare(w, lsh_reference(q, m, c, nb, n_hashes, seed=5, across=across), m)
    # no attention to oneself where another key is there; the weights of real rows sum to 1
    diag = w.diagonal(dim1=-2, dim2=-1)  # (B, H, L)
    others = (w.masked_fill(torch.eye(64, dtype=torch.bool), 0) > 0).any(-1) & m[:, None, :]
    alone = ~others & m[:, None, :]
    assert diag[others].max() < 1e-6 and others.sum() > 100
    assert n_hashes > 1 or across or alone.any()  # one round: some tokens are alone in their bucket and attend to themselves
    assert torch.all(diag[alone] > 0.999)
    torch.testing.assert_close(w.sum(-1)[m[:, None, :].expand(2, 2, 64)], torch.ones(int(m.sum()) * 2))


def test_lsh_seed_and_rng():
    q, k, v = qkv(L=40)
    a = efficient_attention("lsh", q, k, v, None, bucket_size=8, seed=1)
    assert torch.equal(a, efficient_attention("lsh", q, k, v, None, bucket_size=8, seed=1))
    assert not torch.equal(a, efficient_attention("lsh", q, k, v, None, bucket_size=8, seed=2))
    torch.manual_seed(7)
    b = efficient_attention("lsh", q, k, v, None, bucket_size=8)
    torch.manual_seed(7)
    assert torch.equal(b, efficient_attention("lsh", q, k, v, None, bucket_size=8))
    assert default_buckets(1024, 32) == 32 and default_buckets(10, 32) == 2 and default_buckets(96, 32) % 2 == 0
    assert default_buckets(16384, 32) == (22, 24)  # 512 buckets hashed as two factors near √512


def test_lsh_many_hashes_approach_full_attention_on_clusters():
    """8 well-separated clusters of 16 tokens, shuffled: full attention (without oneself) stays inside a cluster;
    a round finds part of a token's cluster, the union of many rounds all of it."""
    g = torch.Generator().manual_seed(0)
    L, d, n_clusters = 128, 16, 8
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=g), dim=-1)
    members = torch.randperm(L, generator=g) % n_clusters
    q = (centres[members] + 0.05 * torch.randn(L, d, generator=g)) * 40.0
    q, v = q.view(1, 1, L, d), torch.randn(1, 1, L, d, generator=g)
    keys = torch.nn.functional.normalize(q, dim=-1)
    scores = (q @ keys.transpose(-1, -2) / math.sqrt(d)).masked_fill(torch.eye(L, dtype=torch.bool), SELF_SCORE)
    full = scores.softmax(-1) @ v

    def error(n_hashes):
        out = efficient_attention("lsh", q, None, v, None, bucket_size=32, n_hashes=n_hashes, n_buckets=8, seed=0)
        return ((out - full).norm() / full.norm()).item()

    one, many = error(1), error(16)
    assert one > 0.5 and many < 0.05, (one, many)


@pytest.mark.parametrize("kind,options", [("lsh", {"bucket_size": 8}), ("sparse_strided", {}),
                                          ("sparse_fixed", {}), ("window", {"window": 8}), ("full", {})])
def test_padding_gradients_and_empty_rows(kind, options):
    q, k, v = (t.requires_grad_() for t in qkv(L=40))
    m = padded_mask(2, 40, real_last=25)
    out = efficient_attention(kind, q, k, v, m, seed=0, **options) if kind == "lsh" else \
        efficient_attention(kind, q, k, v, m, **options)
    # padded positions' contents (queries, keys, values) do not change the real rows
    q2, k2, v2 = (t.detach().clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[-1, :, 25:] = 1e3 * torch.randn_like(t[-1, :, 25:])
    kw = {"seed": 0} if kind == "lsh" else {}
    out2 = efficient_attention(kind, q2, k2, v2, m, **options, **kw)
    real = m[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], out2[real], atol=1e-5, rtol=1e-5)
    out[real].square().sum().backward()
    for t in (q, v) if kind == "lsh" else (q, k, v):
        assert t.grad is not None and t.grad.isfinite().all() and t.grad[:, :, :25].abs().sum() > 0
    # a sequence of padding only: finite outputs
    empty = torch.zeros(2, 40, dtype=torch.bool)
    assert efficient_attention(kind, q.detach(), k.detach(), v.detach(), empty, **options).isfinite().all()
    # dropout in training: finite, and different from no dropout
    dropped = efficient_attention(kind, q.detach(), k.detach(), v.detach(), m, 0.5, **options, **kw)
    assert dropped.isfinite().all() and not torch.allclose(dropped, out.detach())


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an op produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_quadratic_tensor():
    L = 2048
    q, k, v = (torch.randn(1, 1, L, 8) for _ in range(3))
    with torch.no_grad():
        with LargestTensor() as naive:  # the recorder sees an L × L score matrix
            (q @ k.transpose(-1, -2)).softmax(-1) @ v
        assert naive.largest >= L * L
        for kind, options in (("lsh", {"n_hashes": 2}), ("sparse_strided", {}), ("sparse_fixed", {}), ("window", {})):
            with LargestTensor() as rec:
                efficient_attention(kind, q, k, v, None, **options)
            assert rec.largest < L * L / 4, (kind, rec.largest)
        enc = LatentEncoder(16, 2, num_latents=8, depth=1).eval()
        with LargestTensor() as rec:
            assert enc(torch.randn(2, L, 16), torch.ones(2, L, dtype=torch.bool)).shape == (2, 8, 16)
        assert rec.largest <= 2 * L * 16 * 3  # the tokens' key/value projections: O(k·L), not L²


def test_latent_encoder():
    torch.manual_seed(0)
    enc = LatentEncoder(32, 4, num_latents=6, depth=2, dropout=0.1).eval()
    assert {n.split(".")[0] for n, _ in enc.named_parameters()} == {"latents", "cross", "blocks"}
    assert enc.no_weight_decay() == {"latents"} and len(enc.blocks) == 2
    x = torch.randn(3, 20, 32)
    m = torch.ones(3, 20, dtype=torch.bool)
    m[1, 12:] = False
    z = enc(x, m)
    assert z.shape == (3, 6, 32)
    x2 = x.clone()
    x2[1, 12:] = 1e3
    torch.testing.assert_close(enc(x2, m), z)  # padded tokens' contents do not matter
    assert not torch.allclose(enc(x2, None)[1], z[1])  # ... and without the mask they do
    assert torch.equal(enc(x, None), enc(x, torch.ones(3, 20, dtype=torch.bool)))
    empty = enc(x, torch.zeros(3, 20, dtype=torch.bool))
    assert empty.isfinite().all()
    enc.train()
    enc(x, m).sum().backward()
    assert enc.latents.grad is not None and enc.latents.grad.abs().sum() > 0


def test_options_and_masks():
    assert KINDS == ("full", "lsh", "sparse_strided", "sparse_fixed", "window")
    with pytest.raises(ValueError, match="'bogus'"):
        check_options("lsh", {"bogus": 1})
    with pytest.raises(ValueError, match="'window'"):
        check_options("lsh", {"window": 4})
    with pytest.raises(ValueError, match="'nope'"):
        efficient_attention("nope", *qkv(), None)
    with pytest.raises(ValueError, match="n_buckets"):
        efficient_attention("lsh", *qkv(), None, n_buckets=3)
