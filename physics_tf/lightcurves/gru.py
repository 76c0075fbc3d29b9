"""GRU baseline for light curves: a recurrent network over the observations in time order, with time gaps.

Every step sees the observation's features of :func:`~physics_tf.lightcurves.transformer.observation_features`
([flux/s, σ/s, asinh(flux/σ)/5]), a one-hot passband and the gap to the previous observation, log(1 + Δt/1 d)
(the irregular sampling enters only through Δt, as in recurrent light-curve classifiers such as RAPID, Muthukrishna
et al. 2019, and Charnock & Moss 2017). The last hidden state of the real observations, concatenated with an
embedding of the metadata and log10 s, feeds a linear head. Observations are put in time order and padding is
skipped with ``pack_padded_sequence``, so the output does not depend on the padding length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from physics_tf.lightcurves.transformer import observation_features

__all__ = ["LightCurveGRU"]


class LightCurveGRU(nn.Module):
    """``forward(flux, flux_err, time, band, mask, meta) -> logits (B, K)``; parameters as the transformer's sizes."""

    # fine-tuning (physics_tf.tasks.finetune): head and blocks (the GRU's layers; no embedding in front of them)
    head_modules = ("head",)
    block_modules = "gru"
    stem_modules = ()

    def __init__(self, num_classes: int, meta_dim: int = 0, num_bands: int = 6, hidden: int = 64,
                 num_layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = dict(num_classes=num_classes, meta_dim=meta_dim, num_bands=num_bands, hidden=hidden,
                           num_layers=num_layers, dropout=dropout)
        self.num_bands = num_bands
        self.gru = nn.GRU(3 + num_bands + 1, hidden, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.meta_proj = nn.Sequential(nn.Linear(meta_dim + 1, hidden), nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    @property
    def hparams_for_checkpoint(self) -> dict:
        return dict(self.config)

    def forward(self, flux: Tensor, flux_err: Tensor, time: Tensor, band: Tensor, mask: Tensor,
                meta: Tensor | None = None) -> Tensor:
        mask = mask.bool()
        # real observations first, in time order (padding last)
        key = time.masked_fill(~mask, float("inf"))  # (B, L)
        order = torch.argsort(key, dim=1, stable=True)  # (B, L)
        flux, flux_err, time, band, mask = (a.gather(1, order) for a in (flux, flux_err, time, band, mask))
        feats, log_scale = observation_features(flux, flux_err, mask)  # (B, L, 3), (B, 1)
        gap = (time - torch.cat((time[:, :1], time[:, :-1]), dim=1)).clamp_min(0.0)  # (B, L) days since previous obs
        onehot = F.one_hot(band.clamp(0, self.num_bands - 1), self.num_bands).to(feats.dtype)  # (B, L, bands)
        x = torch.cat((feats, onehot, torch.log1p(gap).unsqueeze(-1)), dim=-1)  # (B, L, 3 + bands + 1)
        lengths = mask.sum(dim=1).clamp_min(1)  # (B,)
        last = self._last_state(x, lengths)  # (B, H)
        cond = log_scale if meta is None else torch.cat((meta.to(feats.dtype), log_scale), dim=-1)  # (B, M + 1)
        return self.head(torch.cat((last, self.meta_proj(cond)), dim=-1))  # (B, K)

    def _last_state(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The top layer's hidden state after each sequence's last real step: x (B, L, F), lengths (B,) → (B, H)."""
        if torch.onnx.is_in_onnx_export():
            # ONNX has no packed sequences: run over the padded sequence (real steps come first) and read the top
            # layer's output at the last real step — the same state, since the recurrence is causal
            out, _ = self.gru(x)  # (B, L, H)
            index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[-1])  # (B, 1, H)
            return out.gather(1, index).squeeze(1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)  # (layers, B, H)
        return h_n[-1]
