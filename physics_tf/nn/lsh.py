"""LSH attention, the Reformer's (Kitaev, Kaiser, Levskaya 2020, arXiv 2001.04451): ``efficient_attention("lsh")``.

1. **Shared QK**: the keys are the queries normalised to unit length, k_j = q_j / |q_j|; scores q_i · k_j / √d.
2. **Hashing** (angular LSH): per round r and head, a random rotation R (d, n_buckets / 2) drawn from a normal;
   h(x) = argmax([xR ; −xR]) ∈ {0 … n_buckets − 1}. Padded tokens go to an extra last bucket (sorted to the end).
   n_buckets defaults to ≈ L / bucket_size; many buckets are factorised as in the Reformer (n_buckets = [b₁, b₂]:
   h = h₁ + b₁·h₂ from two rotations), so hashing costs L·(b₁ + b₂)·d instead of L·n_buckets·d.
3. **Sort** each round's tokens by bucket, stably (by position within a bucket), and cut the sorted sequence into
   chunks of ``bucket_size``; each chunk attends to itself and to the previous chunk (cyclically, as the
   reference code does), and — unless ``attend_across_buckets`` — only to keys of its own bucket.
4. **No attention to oneself**: the score of i → i is replaced by −5·10⁴, so a token attends to itself only when it
   has no other key.
5. **Rounds combined** by their log-sum-exp: out_i = Σ_r exp(lse_r,i − logsumexp_r lse_r,i) · out_r,i, where a key
   found in N_ij of the rounds has its score lowered by log N_ij (the paper's duplicate correction) — together, the
   softmax over the union of the rounds' key sets, each key once.

Memory O(L · bucket_size): the rounds run one after the other, each with scores (B, H, L / bucket_size,
bucket_size, 2 · bucket_size) (O(L · bucket_size · n_hashes) if they ran at once); the duplicate counts cost
n_hashes passes of comparisons over them. Time O(L · bucket_size · n_hashes²), plus L·(b₁ + b₂)·d for hashing.
The rotations are drawn from torch's RNG on every call (``seed``: from a generator seeded with it instead — the same
buckets every call, e.g. for reproducible evaluation). Gradients pass through the attention, not the hashing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from physics_tf.nn.efficient import (
    MASKED,
    masked_softmax,
    merge_parts,
    pad_to,
    real_keys,
)

__all__ = ["SELF_SCORE", "default_buckets", "lsh_attention", "lsh_buckets"]

SELF_SCORE = -5e4  # the score of a token's own key (Reformer)
FACTORISE_ABOVE = 64  # default_buckets: more buckets than this are hashed as two factors


def default_buckets(length: int, bucket_size: int) -> int | tuple[int, int]:
    """The Reformer's choice n_buckets ≈ L / bucket_size, even, at least 2; above :data:`FACTORISE_ABOVE` buckets
    factorised into two even factors near its square root, as the Reformer does for long sequences."""
    n = max(2, 2 * round(length / (2 * bucket_size)))
    if n <= FACTORISE_ABOVE:
        return n
    first = 2 * max(1, round(math.sqrt(n) / 2))
    return first, max(2, 2 * round(n / first / 2))


def lsh_buckets(qk: Tensor, n_buckets: int | Sequence[int], n_hashes: int, seed: int | None = None) -> Tensor:
    """Angular-LSH buckets of vectors qk (B, H, L, d) → (B, H, n_hashes, L) int64 in [0, Π n_buckets).

    One random rotation (d, b / 2) per head, round and factor b of ``n_buckets`` (an int, or factors whose hashes
    combine as h₁ + b₁·h₂ + …), from torch's RNG or (``seed``) from a generator seeded with it (drawn on the CPU, so
    a seed gives the same buckets on every device)."""
    factors = [int(n_buckets)] if isinstance(n_buckets, int) else [int(b) for b in n_buckets]
    if not factors or any(b < 2 or b % 2 for b in factors):
        raise ValueError(f"attention option n_buckets: expected an even number >= 2 (or a list of them), "
                         f"got {n_buckets}")
    _, H, _, d = qk.shape
    shape = (H, d, n_hashes, sum(b // 2 for b in factors))
    if seed is None:
        rotations = torch.randn(shape, device=qk.device)
    else:
        rotations = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(qk.device)
    rotated = torch.einsum("bhld,hdrk->bhrlk", qk.detach().float(), rotations)  # (B, H, R, L, Σ b / 2)
    buckets, stride, start = 0, 1, 0
    for b in factors:
        part = rotated[..., start:start + b // 2]
        top, arg_top = part.max(dim=-1)  # argmax of [xR ; −xR] without building it
        bottom, arg_bottom = part.min(dim=-1)
        buckets = buckets + stride * torch.where(top >= -bottom, arg_top, arg_bottom + b // 2)  # (B, H, R, L)
        stride, start = stride * b, start + b // 2
    return buckets


def _rounds_sharing(buckets: Tensor, chunks: Tensor, order: Tensor, nc: int, across: bool) -> Tensor:
    """For each query i and key j of a round's window (B, H, 1, nc, c, 2c): in how many rounds j is in i's window
    (same bucket unless ``across``, and j's chunk is i's or the one before) — the paper's N_ij.
    ``buckets`` and ``chunks`` (B, H, R, Lp) by position, all rounds; ``order`` (B, H, 1, Lp) the round's sorted
    positions."""
    B, H, R, lp = buckets.shape
    bucket = torch.zeros_like(buckets) if across else buckets
    here = (bucket * nc + chunks).to(torch.int32)  # one code per (bucket, chunk): j in i's window ⇔ j's code is
    before = (bucket * nc + (chunks - 1) % nc).to(torch.int32)  # i's code or i's code of the chunk before
    codes = torch.stack([here, before], dim=-1).permute(0, 1, 3, 2, 4).reshape(B, H, 1, lp, 2 * R)  # by position
    codes = codes.gather(3, order.unsqueeze(-1).expand(-1, -1, -1, -1, 2 * R))
    codes = codes.view(B, H, 1, nc, lp // nc, R, 2)  # the round's sorted tokens: their codes in every round
    keys = torch.cat([codes, codes.roll(1, dims=3)], dim=4)[..., 0] if nc > 1 else codes[..., 0]  # (…, 2c, R)
    count = torch.zeros(codes.shape[:5] + keys.shape[4:5], dtype=torch.uint8, device=order.device)
    for r in range(R):
        k = keys[..., r].unsqueeze(-2)  # (B, H, 1, nc, 1, 2c)
        count += (k == codes[..., r, 0].unsqueeze(-1)) | (k == codes[..., r, 1].unsqueeze(-1))
    return count.clamp_min_(1).float()  # (≥ 1 already wherever the key is in this round's window; 0 elsewhere → 1)


def lsh_attention(q: Tensor, v: Tensor, key_mask: Tensor | None, dropout_p: float = 0.0, bucket_size: int = 32,
                  n_hashes: int = 4, n_buckets: int | Sequence[int] | None = None, seed: int | None = None,
                  attend_across_buckets: bool = False) -> Tensor:
    """Reformer self-attention (module docstring): q = the shared query/key vectors, v (B, H, L, d); key_mask
    (B, L) True = real or None → (B, H, L, d)."""
    if bucket_size < 1 or n_hashes < 1:
        raise ValueError(f"attention options bucket_size={bucket_size}, n_hashes={n_hashes}: expected >= 1")
    B, H, L, d = q.shape
    c = min(bucket_size, L)
    nc = -(-L // c)  # chunks
    lp = nc * c
    n_buckets = default_buckets(L, c) if n_buckets is None else n_buckets
    n_total = math.prod([n_buckets] if isinstance(n_buckets, int) else n_buckets)
    real = real_keys(key_mask, B, L, lp, q.device)  # (B, Lp)
    q, v = pad_to(q, lp), pad_to(v, lp)  # (B, H, Lp, d)
    buckets = lsh_buckets(q, n_buckets, n_hashes, seed)  # (B, H, R, Lp)
    hashed = buckets.masked_fill(~real[:, None, None, :], n_total)  # padding: an extra, last bucket
    buckets, order = hashed.sort(dim=-1, stable=True)  # (B, H, R, Lp): by bucket, then by position
    undo = torch.empty_like(order).scatter_(3, order, torch.arange(lp, device=q.device).expand_as(order))

    chunks = undo // c  # (B, H, R, Lp): each token's chunk in each round
    outs, lses = [], []
    for r in range(n_hashes):  # one round at a time: memory O(L · bucket_size), whatever n_hashes
        order_r, undo_r = order[:, :, r:r + 1], undo[:, :, r:r + 1]  # (B, H, 1, Lp)

        def sort(t: Tensor, order_r: Tensor = order_r) -> Tensor:  # (B, H, Lp, e) → (B, H, 1, nc, c, e) sorted
            e = t.shape[-1]
            return t.unsqueeze(2).gather(3, order_r.unsqueeze(-1).expand(-1, -1, -1, -1, e)).view(B, H, 1, nc, c, e)

        qs = sort(q)  # (B, H, 1, nc, c, d)
        ks, vs = F.normalize(qs, dim=-1), sort(v)  # keys: unit queries
        valid = real[:, None, None, :].expand(B, H, 1, lp).gather(3, order_r).view(B, H, 1, nc, c)
        bk = buckets[:, :, r:r + 1].reshape(B, H, 1, nc, c)
        if nc > 1:  # keys: this chunk and the previous one
            ks, vs, valid_k, bk_k = (torch.cat([t, t.roll(1, dims=3)], dim=4) for t in (ks, vs, valid, bk))
        else:
            valid_k, bk_k = valid, bk  # (B, H, 1, nc, 2c or c)
        scores = ((qs * d**-0.5) @ ks.transpose(-1, -2)).float()  # (B, H, 1, nc, c, 2c or c)
        # a key in the window of several rounds counts once: its weight divided by the number of those rounds
        shared = _rounds_sharing(hashed, chunks, order_r, nc, attend_across_buckets) if n_hashes > 1 else None
        scores[..., :c].diagonal(dim1=-2, dim2=-1).fill_(SELF_SCORE)  # slot s's own key: column s of its chunk
        excluded = ~valid_k.unsqueeze(-2)  # (B, H, 1, nc, 1, 2c)
        if not attend_across_buckets:
            excluded = excluded | (bk.unsqueeze(-1) != bk_k.unsqueeze(-2))
        weights, lse = masked_softmax(scores.masked_fill_(excluded, MASKED), dropout_p, divisor=shared)
        out = (weights.to(vs.dtype) @ vs).view(B, H, lp, -1)  # sorted order
        outs.append(out.gather(2, undo_r[:, :, 0].unsqueeze(-1).expand(-1, -1, -1, out.shape[-1])))  # by position
        lses.append(lse.view(B, H, lp).gather(2, undo_r[:, :, 0]))  # (B, H, Lp)
    merged = merge_parts(outs, lses)  # (B, H, Lp, d)
    return merged[:, :, :L]
