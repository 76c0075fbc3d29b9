"""Spatial-plus-temporal transformer for Auger SD events (X_max / ln A regression).

1. **Temporal encoder** (per station, real stations only): the trace (T bins) is cut into patches of ``patch``
   bins (ViT-style tokens, Dosovitskiy et al. arXiv 2010.11929); a linear map plus a sinusoidal encoding of
   the patch index gives P = T / patch tokens. Self-attention over the patch sequence is any kind of the core's
   efficient attention (:mod:`physics_tf.nn.efficient`, ``temporal_attention``): by default inside windows of
   ``window`` consecutive patches (block-diagonal attention, as in the local attention of Swin, Liu et al. arXiv
   2103.14030), or full, LSH (Reformer) or sparse strided / fixed (Sparse Transformer). A learned query pools
   all patches by class attention (CaiT, arXiv 2103.17239) — a one-element latent array in the sense of the
   Perceiver (Jaegle et al. arXiv 2103.03206). With windows, attention memory per station is
   heads·(P·window + P + 1) elements: linear in T, where naive attention over the bins needs heads·T².
   ``temporal_encoder="perceiver"`` swaps in :class:`PerceiverTemporalEncoder`, the core's
   :class:`~physics_tf.nn.efficient.LatentEncoder`: ``latents`` learned queries cross-attend to the patch tokens
   (Perceiver), self-attention runs among the latents only, so attention memory is heads·k·P — O(k·L), for very
   long traces.
2. **Station tokens**: the temporal summary plus an MLP embedding of the station's position, arrival time and
   total signal and (``geometry=True``) of the event's shower geometry from :class:`ShowerGeometry` — a plane-front
   fit to the arrival times as in the standard SD reconstruction (direction, sec θ, total signal) and, per station,
   the time residual to that plane (front curvature) and the distance to the shower axis. A hexagonal
   convolution reads the time gradient off neighbour differences; attention weights do not move differences into
   the values, so without the fit the spatial transformer has to rediscover the arrival direction, on which the
   slant depth X_ground / cos θ − X_max depends.
3. **Spatial transformer** over the real stations. The triggered stations of each event (median ~14 of 81 for
   9×9 patches) are packed to the front; the events run in groups of similar station counts, each group's station
   axis cut to its largest count, so attention costs about Σ (real count)² instead of B·n⁴; padding is masked. With ``pair_bias=True`` the attention logits get an
   additive per-head bias from each station pair's geometry and timing (distance, arrival-time difference,
   signal and height differences, through a small MLP computed once per event) — the spatial counterpart of the
   Particle Transformer's pair features (Qu, Li, Qian, arXiv 2202.03772): the shower-front curvature, which
   carries X_max, is a relation between pairs of stations. Then class-attention pooling and the masked mean of
   the station tokens, concatenated with the event geometry, go through an MLP head (``head_hidden``).

Masked stations never enter the computation (their trace is not encoded, their key is masked), so the output
does not depend on their contents, and station order does not matter (positions come from the coordinates).
All attention goes through :mod:`physics_tf.nn.attention`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from physics_tf.auger.geometry import ShowerGeometry
from physics_tf.nn.attention import attention_mask
from physics_tf.nn.blocks import ClassTokenPool, TransformerBlock
from physics_tf.nn.efficient import KINDS, LatentEncoder
from physics_tf.nn.embeddings import sinusoidal_encoding
from physics_tf.nn.packing import Packing, left_aligned

__all__ = ["TemporalEncoder", "PerceiverTemporalEncoder", "StationPairBias", "ShowerGeometry", "AugerTransformer"]


def patch_tokens(x: Tensor, patch: int, embed: nn.Linear, dim: int) -> Tensor:
    """Trace (N, T) → patch tokens (N, P, D), P = ceil(T / patch) (the last patch zero-padded): a linear map of
    each patch plus a sinusoidal encoding of the patch index."""
    n, t = x.shape
    p = -(-t // patch)
    x = nn.functional.pad(x, (0, p * patch - t)).view(n, p, patch)  # (N, P, patch)
    return embed(x) + sinusoidal_encoding(torch.arange(p, device=x.device), dim).to(x.dtype)  # (N, P, D)


def temporal_attention_options(attention: Mapping[str, Any] | None, window: int, n_patches: int | None = None
                               ) -> dict[str, Any]:
    """The temporal self-attention's ``MultiheadAttention`` keywords: ``attention`` ({kind, …options}; None =
    windows of ``window`` patches). A window kind whose window holds all ``n_patches`` patches of the trace is
    full attention over them: it runs as kind "full" (the same outputs; the fused kernel, and attention weights
    that :func:`physics_tf.nn.inspect.record_attention` can record)."""
    options = dict(attention) if attention else {"kind": "window"}
    kind = options.setdefault("kind", "window")
    if kind not in KINDS:
        raise ValueError(f"temporal_attention.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "window":
        options.setdefault("window", window)
        if n_patches is not None and options["window"] >= n_patches:
            options = {k: v for k, v in options.items() if k not in ("kind", "window")} | {"kind": "full"}
    return options


class TemporalEncoder(nn.Module):
    """Trace (N, T) → station summary (N, dim): patch tokens, ``depth`` self-attention blocks of the attention
    ``attention`` (:func:`temporal_attention_options`; default windows of ``window`` patches: linear in T), then
    class-attention pooling (module docstring)."""

    def __init__(self, patch: int = 10, dim: int = 64, num_heads: int = 4, depth: int = 2, window: int = 12,
                 dropout: float = 0.0, attention: Mapping[str, Any] | None = None,
                 n_patches: int | None = None) -> None:
        super().__init__()
        self.patch, self.window, self.dim = patch, window, dim
        self.attention = temporal_attention_options(attention, window, n_patches)
        self.embed = nn.Linear(patch, dim)
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout, activation_dropout=dropout,
                              attention=self.attention) for _ in range(depth)])
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = patch_tokens(x, self.patch, self.embed, self.dim)  # (N, P, D); every patch is real: no key mask
        for blk in self.blocks:
            h = blk(h)  # (N, P, D)
        return self.pool(h)  # (N, D)


class PerceiverTemporalEncoder(LatentEncoder):
    """Trace (N, T) → station summary (N, dim) through the core's latent array (:class:`LatentEncoder`, Perceiver,
    arXiv 2103.03206).

    ``latents`` learned vectors cross-attend to the P = T / patch patch tokens (memory heads·k·P), ``depth``
    self-attention blocks run among the latents (heads·k²), and class attention pools them. Cost is O(k·L) in
    the trace length L, however long the trace. The latent encoder's parameters keep their names (``latents``,
    ``cross``, ``blocks``), initial draws and order from before it moved into the core: old checkpoints load as
    they are.
    """

    def __init__(self, patch: int = 4, dim: int = 64, num_heads: int = 4, depth: int = 2, latents: int = 16,
                 dropout: float = 0.0) -> None:
        embed = nn.Linear(patch, dim)  # drawn first, as before the move
        super().__init__(dim, num_heads, latents, depth, dropout=dropout)
        self.patch, self.dim = patch, dim
        self.embed = embed
        for name in ("cross", "blocks"):  # parameter order as before (latents, embed, cross, blocks, pool)
            self._modules[name] = self._modules.pop(name)
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        h = patch_tokens(x, self.patch, self.embed, self.dim)  # (N, P, D)
        return self.pool(super().forward(h))  # (N, k, D) latents → (N, D)


class StationPairBias(nn.Module):
    """Per-head additive attention bias from station pairs: features (distance in grid spacings, arrival-time
    difference t_j − t_i in µs, signal difference in log10 VEM, height difference) → MLP → ``num_heads`` values.

    ``features`` (B, L, 5) are the station features ``[x, y, z, t, log10 S]`` of the packed stations.
    """

    def __init__(self, num_heads: int, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_heads))

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """features (B, L, 5), mask (B, L) True = real → bias (B, H, L, L). With ``mask`` the MLP runs on the
        real pairs only (a batch padded to its largest event has mostly padded pairs) and padded pairs get 0:
        they are masked keys or padded queries, so attention outputs at real stations are unchanged."""
        if mask is None:
            diff = features[:, None, :, :] - features[:, :, None, :]  # (B, Lq, Lk, 5): key − query
            return self.mlp(self._pair_features(diff)).permute(0, 3, 1, 2)  # (B, H, Lq, Lk)
        b, n = mask.shape
        pairs = Packing((mask[:, :, None] & mask[:, None, :]).reshape(b, n * n))  # real (query, key) pairs
        bi, flat = pairs.batch, pairs.pos  # event, query · L + key
        diff = features[bi, flat % n] - features[bi, flat // n]  # (N_pairs, 5): key − query
        out = pairs.unpack(self.mlp(self._pair_features(diff)))  # (B, Lq·Lk, H), zeros at padded pairs
        return out.view(b, n, n, -1).permute(0, 3, 1, 2)  # (B, H, Lq, Lk)

    @staticmethod
    def _pair_features(diff: Tensor) -> Tensor:
        """(…, 5) key − query differences → (…, 4): distance, Δt, Δlog S, Δz."""
        dist = diff[..., :2].square().sum(-1).add(1e-12).sqrt()
        return torch.stack([dist, diff[..., 3], diff[..., 4], diff[..., 2]], dim=-1)


class AugerTransformer(nn.Module):
    """Temporal encoder per station → station tokens → spatial transformer with mask → head.

    Parameters
    ----------
    grid_size, n_bins, num_targets: from the data module (``model_dims``).
    temporal_encoder: ``"window"`` (:class:`TemporalEncoder`) or ``"perceiver"`` (:class:`PerceiverTemporalEncoder`).
    patch, temporal_dim, temporal_heads, temporal_depth, window / latents: the temporal encoder.
    temporal_attention: the window encoder's self-attention over the patch sequence, ``{"kind": …, **options}``
        with a kind of :data:`physics_tf.nn.efficient.KINDS` (window, full, lsh, sparse_strided, sparse_fixed) and
        its options (``window``, ``bucket_size``, ``n_hashes``, ``block``, …); None = windows of ``window`` patches.
    dim, num_heads, depth: the spatial transformer; ffn_ratio via the blocks' default (4).
    attention: the spatial blocks' and the pooling's attention options (e.g. ``{"score": "additive"}``); the pair
        bias needs kind "full".
    spatial_groups: the spatial stage runs the events in up to this many groups of similar station counts, each
        padded to its own largest count (:meth:`_spatial`; the same outputs, less padding).
    pair_bias, pair_hidden: the :class:`StationPairBias` of the spatial attention.
    geometry: feed the :class:`ShowerGeometry` fit (station and event features) to the station tokens and the head.
    head_hidden: hidden width of the head MLP on [class-attention summary, mean station token, event geometry];
        0 = a linear head.
    num_classes: extra outputs (logits of that many mass classes) after the regression outputs; 0 = none.
    dropout: everywhere; predict_variance: output means and log-variances (2·num_targets values).
    """

    # fine-tuning (physics_tf.tasks.finetune): head, blocks (the spatial transformer) and the temporal encoder and
    # station embedding in front of them
    head_modules = ("head",)
    block_modules = "blocks"
    stem_modules = ("temporal", "pair_bias", "geometry", "station_embed", "token_proj")
    GROUP_MIN_EVENTS = 8  # the fewest events per group of the spatial stage (see _spatial)

    def __init__(self, grid_size: int, n_bins: int, num_targets: int = 1, patch: int = 10, temporal_dim: int = 64,
                 temporal_heads: int = 4, temporal_depth: int = 2, window: int = 12, dim: int = 128,
                 num_heads: int = 8, depth: int = 4, dropout: float = 0.0, predict_variance: bool = False,
                 temporal_encoder: str = "window", latents: int = 16, pair_bias: bool = True, pair_hidden: int = 32,
                 num_classes: int = 0, geometry: bool = True, head_hidden: int = 128,
                 spatial_groups: int = 4, temporal_attention: Mapping[str, Any] | None = None,
                 attention: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.grid_size, self.n_bins, self.spatial_groups = grid_size, n_bins, int(spatial_groups)
        self.num_outputs = num_targets * (2 if predict_variance else 1) + num_classes
        if temporal_encoder == "window":
            self.temporal = TemporalEncoder(patch, temporal_dim, temporal_heads, temporal_depth, window, dropout,
                                            attention=temporal_attention, n_patches=-(-n_bins // patch))
        elif temporal_encoder == "perceiver":
            self.temporal = PerceiverTemporalEncoder(patch, temporal_dim, temporal_heads, temporal_depth, latents,
                                                     dropout)
        else:
            raise ValueError(f"temporal_encoder: expected 'window' or 'perceiver', got {temporal_encoder!r}")
        self.pair_bias = StationPairBias(num_heads, pair_hidden) if pair_bias else None
        self.geometry = ShowerGeometry() if geometry else None
        n_station, n_event = (5 + 2 + 5, 5) if geometry else (5, 0)
        self.station_embed = nn.Sequential(nn.Linear(n_station, dim), nn.GELU(), nn.Linear(dim, dim))
        self.token_proj = nn.Linear(temporal_dim, dim)
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, num_heads, dropout=dropout, attn_dropout=dropout, activation_dropout=dropout,
                              attention=attention) for _ in range(depth)])
        self.pool = ClassTokenPool(dim, num_heads, dropout=dropout, attention=attention)
        self.mean_norm = nn.LayerNorm(dim)
        d_head = 2 * dim + n_event  # class-attention summary, masked mean of the stations, event geometry
        self.head = (nn.Sequential(nn.Linear(d_head, head_hidden), nn.GELU(), nn.Dropout(dropout),
                                   nn.Linear(head_hidden, self.num_outputs))
                     if head_hidden > 0 else nn.Linear(d_head, self.num_outputs))

    def forward(self, traces: Tensor, times: Tensor, signals: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """traces (B, n, n, T), times/signals (B, n, n), positions (B, n, n, 3), mask (B, n, n) → (B, outputs)."""
        b, n1, n2, t = traces.shape
        if (n1, n2) != (self.grid_size, self.grid_size) or t < self.n_bins:
            raise ValueError(f"traces: shape (B, {n1}, {n2}, {t}), model built for "
                             f"(B, {self.grid_size}, {self.grid_size}, {self.n_bins})")
        s = n1 * n2
        m = mask.reshape(b, s)  # (B, S)
        grid = Packing(m)  # the real stations in grid order
        summary = self.temporal(grid.pack(traces.reshape(b, s, t)))  # (N_real, Dt)
        extra = grid.pack(torch.cat([positions, times.unsqueeze(-1), signals.unsqueeze(-1)], dim=-1).reshape(b, s, 5))
        # real stations first, station axis cut to the batch's largest count (not while exporting: a traced
        # length would be a constant); the same real count per event, so packed rows match the grid's
        packed = left_aligned(m, trim=not torch.onnx.is_in_onnx_export())  # (B, L)
        stations = Packing(packed)
        extra_packed = stations.unpack(extra)  # (B, L, 5)
        inputs, event = extra, extra.new_zeros(b, 0)
        if self.geometry is not None:
            station_geo, event = self.geometry(extra_packed, packed)  # (B, L, 2), (B, 5)
            event_rows = stations.pack(event[:, None, :].expand(-1, packed.shape[1], -1))  # (N_real, 5): its event's
            inputs = torch.cat([extra, stations.pack(station_geo), event_rows], dim=-1)  # (N_real, 12)
        h = self.token_proj(summary) + self.station_embed(inputs)  # (N_real, D)
        bias = self.pair_bias(extra_packed, packed) if self.pair_bias is not None else None  # (B, H, L, L)
        h = self._spatial(h, packed, bias)  # (N_real, D)
        x = stations.unpack(h)  # (B, L, D), zeros at padding
        weights = packed.to(x.dtype)[..., None]  # (B, L, 1)
        mean = self.mean_norm((x * weights).sum(1) / weights.sum(1).clamp_min(1.0))  # (B, D)
        return self.head(torch.cat([self.pool(x, packed), mean, event], dim=-1))  # (B, outputs)

    def _spatial(self, h: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
        """The spatial blocks on the packed station tokens h (N_real, D) of the left-aligned events ``packed``
        (B, L). Events are split into up to ``spatial_groups`` groups of similar station counts (at least
        ``GROUP_MIN_EVENTS`` each), each padded only to its own largest count: a batch's station counts are
        heavy-tailed (median ~15, the fullest of 64 events often > 60), so attention over one (B, L) layout is
        mostly padding. Each event's output is the same as in one group; one group while exporting (data-
        independent shapes) or while attention is recorded (one record per layer and batch)."""
        b = packed.shape[0]
        groups = min(self.spatial_groups, b // self.GROUP_MIN_EVENTS)
        if groups <= 1 or torch.onnx.is_in_onnx_export() or any(blk.attn.recorder is not None for blk in self.blocks):
            stations, am = Packing(packed), attention_mask(packed, bias)  # the mask built once for all blocks
            for blk in self.blocks:  # token-wise layers on the real stations, attention on the (B, L) layout
                h = blk(h, am, stations)  # (N_real, D)
            return h
        counts = packed.sum(1)  # (B,)
        first = counts.cumsum(0) - counts  # (B,) each event's first row in h
        out = h.new_zeros(h.shape)
        for events in counts.argsort(stable=True).tensor_split(groups):  # (G,) events of similar counts
            length = max(int(counts[events].max()), 1)
            mask = packed[events, :length]  # (G, Lg)
            group = Packing(mask)
            rows = first[events][group.batch] + group.pos  # (N_g,) into h
            am = attention_mask(mask, None if bias is None else bias[events, :, :length, :length])
            hg = h[rows]  # (N_g, D)
            for blk in self.blocks:
                hg = blk(hg, am, group)
            out = out.index_copy(0, rows, hg)
        return out
