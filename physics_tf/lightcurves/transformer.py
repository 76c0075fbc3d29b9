"""A time-aware transformer over the observations of a multi-band light curve.

Each observation (token) embeds the per-object normalised flux and flux error, its signal-to-noise, a learned
band embedding and a continuous-time encoding of its time::

    s   = max_j |flux_j|                                   (per object, over real observations)
    h_j = W_x [flux_j/s, σ_j/s, asinh(flux_j/σ_j)/5] + E_band[b_j] + W_t PE(κ·(t_j − min_k t_k))

with PE the sinusoidal encoding of a *real-valued* position (Vaswani et al. 2017; used on the real MJD by
Astromer, Donoso-Oliva et al. 2023) — :func:`physics_tf.nn.embeddings.sinusoidal_encoding` — evaluated on the
time in days since the object's first observation, scaled by κ = ``time_scale`` (the shortest wavelength of the
encoding is 2π/κ days, the longest 2π·base/κ). Times are made relative inside the model, so shifting every time
of an object by a constant leaves the prediction unchanged; the encoding depends only on the real time gaps,
never on the token index, so the model is invariant to the order of the tokens.

The metadata (photo-z, E(B−V), …, plus log10 s so that the absolute brightness is not lost by the normalisation)
form one extra *conditioning token* that every observation attends to. After ``num_layers`` pre-LN transformer
blocks a class token reads the sequence with ``num_cls_layers`` class-attention blocks (CaiT, arXiv 2103.17239)
and a linear head gives the logits. Padding is masked everywhere (mask True = real observation), so padded
positions never influence the output.

Two options make it cheaper or change its attention (the defaults give the model above, unchanged):

* ``patch_size`` P > 1: the observations are put in (time, band) order and every P consecutive ones form one token,
  a linear map of their raw band-resolved values and times plus the encoding of the patch's start time
  (:class:`physics_tf.lightcurves.patching.PatchEmbedding`, which replaces the per-observation embedding above):
  attention costs (L/P)² and the token-wise layers L/P rows. Time still enters only through the real times, and the
  order the observations arrive in does not matter (the model sorts them).
* ``attention``: the options of the attention core (:class:`physics_tf.nn.attention.MultiheadAttention`),
  ``score=`` (:data:`physics_tf.nn.scores.SCORES`), ``kind=`` (:data:`physics_tf.nn.efficient.KINDS`) and their
  options; None values are dropped (the config lists every option with null). The score applies to every block
  and to the class-token pool; the kind to the self-attention blocks only (the pool's one query always reads all
  tokens). Kinds other than ``full`` and the location score depend on token positions, so the tokens are put in
  (time, band) order first: windows, sparse patterns and LSH chunks are then neighbourhoods in time, and the
  output still does not depend on the input order (exactly so when no two observations share time and band). With
  a kind other than ``full`` the conditioning token is not in the self-attention sequence (a local pattern would
  show it to the first observations only): its embedding is added to every observation token instead, and the
  pool reads [conditioning token, tokens]. One exception to the padding rule: ``kind="lsh"`` draws its buckets and
  chunks over the padded length (:mod:`physics_tf.nn.lsh`), so its output changes with the padding of the batch;
  and without ``seed`` it draws new rotations on every call, in evaluation too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physics_tf.lightcurves.patching import PatchEmbedding, gather_tokens, time_order
from physics_tf.nn.attention import attention_mask
from physics_tf.nn.blocks import (
    POOL_LEGACY_STATE_KEYS,
    ClassTokenPool,
    TransformerBlock,
)
from physics_tf.nn.embeddings import sinusoidal_encoding
from physics_tf.nn.scores import SCORE_OPTIONS
from physics_tf.nn.state_keys import accept_legacy_state_keys

__all__ = ["LightCurveTransformer", "observation_features"]


def observation_features(flux: Tensor, flux_err: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token features (B, L, 3) = [flux/s, σ/s, asinh(flux/σ)/5] (zero at padding) and log10 s (B, 1)."""
    m = mask.to(flux.dtype)
    scale = (flux.abs() * m).amax(dim=1, keepdim=True).clamp_min(1e-3)  # (B, 1)
    snr = torch.asinh(flux / flux_err.clamp_min(1e-6)) / 5.0  # (B, L)
    feats = torch.stack((flux / scale, flux_err / scale, snr), dim=-1) * m.unsqueeze(-1)  # (B, L, 3)
    return feats, torch.log10(scale)


def relative_time(time: Tensor, mask: Tensor) -> Tensor:
    """time − (earliest real time of the object), zero at padding: (B, L)."""
    t0 = time.masked_fill(~mask, float("inf")).amin(dim=1, keepdim=True)  # (B, 1)
    t0 = torch.where(torch.isfinite(t0), t0, torch.zeros_like(t0))
    return (time - t0) * mask.to(time.dtype)


class LightCurveTransformer(nn.Module):
    """Transformer classifier of light curves: ``forward(flux, flux_err, time, band, mask, meta) -> (B, K)``.

    Parameters
    ----------
    num_classes, meta_dim, num_bands: sizes (from the data module's ``model_dims``).
    dim, num_heads, num_layers, num_cls_layers, ffn_ratio: transformer width and depth.
    dropout, attn_dropout: dropout of the blocks and of the attention weights.
    time_scale, time_base: the time encoding's κ and base (module docstring).
    patch_size: observations per token (1: one token per observation; module docstring).
    attention: the attention core's options, e.g. ``{"score": "additive"}``, ``{"kind": "window", "window": 16}``.
    """

    # before the class-token pooling was shared (ClassTokenPool), these lived on the model itself
    LEGACY_STATE_KEYS = POOL_LEGACY_STATE_KEYS
    # fine-tuning (physics_tf.tasks.finetune): head, blocks and the embedding in front of them
    head_modules = ("head",)
    block_modules = "blocks"
    stem_modules = ("obs_proj", "band_embed", "time_proj", "meta_proj")  # P > 1: ("patch_embed", "meta_proj")

    def __init__(self, num_classes: int, meta_dim: int = 0, num_bands: int = 6, dim: int = 64, num_heads: int = 4,
                 num_layers: int = 3, num_cls_layers: int = 1, ffn_ratio: int = 4, dropout: float = 0.1,
                 attn_dropout: float = 0.0, time_scale: float = 4.0, time_base: float = 10000.0,
                 patch_size: int = 1, attention: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if int(patch_size) < 1:
            raise ValueError(f"patch_size={patch_size!r} must be ≥ 1")
        attention = {str(k): v for k, v in dict(attention or {}).items() if v is not None}
        self.config = dict(num_classes=num_classes, meta_dim=meta_dim, num_bands=num_bands, dim=dim,
                           num_heads=num_heads, num_layers=num_layers, num_cls_layers=num_cls_layers,
                           ffn_ratio=ffn_ratio, dropout=dropout, attn_dropout=attn_dropout, time_scale=time_scale,
                           time_base=time_base)
        if patch_size != 1 or attention:  # checkpoints of the plain model keep their hparams as they were
            self.config.update(patch_size=int(patch_size), attention=dict(attention))
        self.dim, self.time_scale, self.time_base = dim, float(time_scale), float(time_base)
        self.patch_size = int(patch_size)
        score = attention.get("score", "scaled_dot")
        # kinds with locality see the observation tokens only (module docstring); the pool takes the score alone
        self.local = attention.get("kind", "full") != "full"
        self.ordered = self.patch_size > 1 or self.local or score == "location"
        pool_attention = {k: v for k, v in attention.items() if k == "score" or k in SCORE_OPTIONS.get(score, ())}
        if self.patch_size == 1:
            self.obs_proj = nn.Linear(3, dim)
            self.band_embed = nn.Embedding(num_bands, dim)
            self.time_proj = nn.Linear(dim, dim, bias=False)
            self.patch_embed = None
        else:
            self.patch_embed = PatchEmbedding(dim, self.patch_size, num_bands, time_scale, time_base)
            self.stem_modules = ("patch_embed", "meta_proj")
        self.meta_proj = nn.Sequential(nn.Linear(meta_dim + 1, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, ffn_ratio, dropout, attn_dropout, dropout,
                                                     attention=attention or None)
                                    for _ in range(num_layers))
        self.pool = ClassTokenPool(dim, num_heads, num_cls_layers, ffn_ratio, dropout=dropout, attn_dropout=attn_dropout,
                                   attention=pool_attention or None)
        self.head = nn.Linear(dim, num_classes)
        accept_legacy_state_keys(self)

    @property
    def hparams_for_checkpoint(self) -> dict:
        return dict(self.config)

    def embed(self, flux: Tensor, flux_err: Tensor, time: Tensor, band: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Observation tokens (B, L, D) (zero at padding) and log10 of the flux scale (B, 1)."""
        feats, log_scale = observation_features(flux, flux_err, mask)  # (B, L, 3), (B, 1)
        t = relative_time(time, mask) * self.time_scale  # (B, L)
        pe = sinusoidal_encoding(t, self.dim, self.time_base).to(feats.dtype)  # (B, L, D)
        h = self.obs_proj(feats) + self.band_embed(band.clamp(0, self.band_embed.num_embeddings - 1)) \
            + self.time_proj(pe)  # (B, L, D)
        return h * mask.unsqueeze(-1).to(h.dtype), log_scale

    def forward(self, flux: Tensor, flux_err: Tensor, time: Tensor, band: Tensor, mask: Tensor,
                meta: Tensor | None = None) -> Tensor:
        """flux, flux_err, time (B, L) float; band (B, L) int; mask (B, L) bool; meta (B, M) → logits (B, K)."""
        mask = mask.bool()
        if self.patch_embed is not None:
            feats, log_scale = observation_features(flux, flux_err, mask)  # (B, L, 3), (B, 1)
            h, mask = self.patch_embed(feats, relative_time(time, mask), band, mask)  # (B, L', D), L' = ⌈L/P⌉
        else:
            h, log_scale = self.embed(flux, flux_err, time, band, mask)  # (B, L, D), (B, 1)
            if self.ordered:  # (time, band) order, padding last
                order = self._token_order(time, band, mask)  # (B, L)
                h, mask = gather_tokens(h, order), mask.gather(1, order)
        cond = log_scale if meta is None else torch.cat((meta.to(h.dtype), log_scale), dim=-1)  # (B, M + 1)
        c = self.meta_proj(cond).unsqueeze(1)  # (B, 1, D) the conditioning token
        ones = mask.new_ones(mask.shape[0], 1)
        if self.local:  # observation tokens alone in the blocks, each with the conditioning added
            x, keep = h + c, mask  # (B, L', D), (B, L')
        else:
            x, keep = torch.cat((c, h), dim=1), torch.cat((ones, mask), dim=1)  # (B, 1 + L', D) cond. token real
        attn = attention_mask(keep)  # (B, 1, 1, ·)
        for block in self.blocks:
            x = block(x, attn)
        if self.local:
            x, keep = torch.cat((c, x), dim=1), torch.cat((ones, keep), dim=1)  # the pool reads [cond, tokens]
        return self.head(self.pool(x, keep))  # (B, K)

    def _token_order(self, time: Tensor, band: Tensor, mask: Tensor) -> Tensor:
        """The (B, L) observation order of an ordered model's tokens: (time, band) order, padding last. With patches
        it is taken on the times relative to the first observation, as :meth:`forward` hands them to the patch
        embedding (which orders them itself)."""
        if self.patch_embed is not None:
            time = relative_time(time, mask)
        return time_order(time, band, mask)

    def token_elements(self, flux: Tensor, flux_err: Tensor, time: Tensor, band: Tensor, mask: Tensor,
                       meta: Tensor | None = None) -> Tensor:
        """Which observations each token of :meth:`forward` holds, in token order: (B, L', P) indices into the L
        input observations, −1 for an empty slot (P = ``patch_size``; L' = ⌈L/P⌉). For drawing attention over the
        tokens on the observations (:mod:`physics_tf.training.explain`) when the model reorders or patches them."""
        mask = mask.bool()
        b, n = mask.shape
        if self.ordered:
            order = self._token_order(time, band, mask)
        else:
            order = torch.arange(n, device=mask.device).expand(b, n)
        index = order.masked_fill(~mask.gather(1, order), -1)  # (B, L)
        index = F.pad(index, (0, -n % self.patch_size), value=-1)
        return index.view(b, -1, self.patch_size)  # (B, L', P)
