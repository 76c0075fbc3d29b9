"""Baseline X_max network after the Pierre Auger Collaboration's SD network (JINST 16 (2021) P07019).

A recurrent network (LSTM or GRU) reads every station's trace; its last hidden state and the time average of its
hidden states, the station's arrival time, total signal and position form the station features; hexagonal
convolutions mix neighbouring stations on the axial grid; a dense head regresses the targets.

Hexagonal convolution on axial coordinates: with the patch stored as ``[q, r]`` (axis 1 = q, axis 2 = r) the six
neighbours of (q, r) are (q±1, r), (q, r±1), (q+1, r−1), (q−1, r+1). A 3×3 kernel indexed [dq + 1, dr + 1]
covers them plus (q+1, r+1) and (q−1, r−1), which are √3 spacings away; :class:`HexConv2d` zeroes those two
corners ([2, 2] and [0, 0]) of every kernel, so each output mixes exactly the station and its 6 neighbours.

Masked stations enter as zeros (their inputs are never read), so the output does not depend on their values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physics_tf.auger.geometry import ShowerGeometry
from physics_tf.nn.packing import Packing

__all__ = ["HexConv2d", "AugerHexConvNet", "HEX_KERNEL_MASK"]

# 1 = the centre and its 6 axial neighbours, 0 = the two corners at distance √3
HEX_KERNEL_MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


class HexConv2d(nn.Conv2d):
    """3×3 convolution restricted to the hexagonal neighbourhood on an axial grid (zero padding at the edge)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        self.register_buffer("hex_mask", HEX_KERNEL_MASK.clone(), persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.hex_mask)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, n, n) → (B, C_out, n, n)."""
        return self._conv_forward(x, self.weight * self.hex_mask, self.bias)


class AugerHexConvNet(nn.Module):
    """RNN per trace → station features → hexagonal convolutions → dense head.

    Parameters
    ----------
    grid_size, n_bins, num_targets: from the data module (``model_dims``).
    rnn: ``"lstm"`` or ``"gru"``; rnn_hidden, rnn_layers: its size.
    trace_pool: sum this many consecutive bins before the RNN (1 = the full 25 ns resolution); shortens the
        recurrence (the published network reads 120 bins; pooling by 2 halves the CPU time).
    station_dim: width of the per-station features; conv_channels: output channels of each hex-conv layer.
    head_dims: hidden widths of the dense head (on the flattened grid); dropout: in the head.
    predict_variance: output 2·num_targets values (means, then log-variances) for a Gaussian likelihood.
    num_classes: extra outputs (logits of that many mass classes) after the regression outputs; 0 = none.
    geometry: also give every station the :class:`~physics_tf.auger.geometry.ShowerGeometry` fit (its time
        residual and axis distance, the event's direction, sec θ and total signal) — off in the published network;
        on for the ablation that gives the baseline the transformer's inputs.
    """

    # fine-tuning (physics_tf.tasks.finetune): head, blocks (the hexagonal convolutions, each with its norm) and
    # the trace RNN and station features in front of them
    head_modules = ("head",)
    block_modules = "convs"
    stem_modules = ("rnn", "geometry", "station")

    def __init__(self, grid_size: int, n_bins: int, num_targets: int = 1, rnn: str = "lstm", rnn_hidden: int = 32,
                 rnn_layers: int = 1, trace_pool: int = 2, station_dim: int = 32,
                 conv_channels: tuple[int, ...] | list[int] = (64, 64, 64),
                 head_dims: tuple[int, ...] | list[int] = (128,),
                 dropout: float = 0.0, predict_variance: bool = False, num_classes: int = 0,
                 geometry: bool = False) -> None:
        super().__init__()
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn: expected 'lstm' or 'gru', got {rnn!r}")
        if n_bins % trace_pool:
            raise ValueError(f"n_bins={n_bins} is not a multiple of trace_pool={trace_pool}")
        self.grid_size, self.n_bins, self.trace_pool = grid_size, n_bins, trace_pool
        self.num_outputs = num_targets * (2 if predict_variance else 1) + num_classes
        cls = nn.LSTM if rnn == "lstm" else nn.GRU
        self.rnn = cls(1, rnn_hidden, num_layers=rnn_layers, batch_first=True)
        self.geometry = ShowerGeometry() if geometry else None
        n_extra = 5 + (2 + 5 if geometry else 0)
        self.station = nn.Sequential(nn.Linear(2 * rnn_hidden + n_extra, station_dim), nn.GELU(),
                                     nn.Linear(station_dim, station_dim), nn.GELU())
        convs: list[nn.Module] = []
        c_in = station_dim
        for c in conv_channels:
            convs += [HexConv2d(c_in, c), nn.BatchNorm2d(c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*convs)
        head: list[nn.Module] = [nn.Flatten()]
        d_in = c_in * grid_size * grid_size
        for d in head_dims:
            head += [nn.Linear(d_in, d), nn.GELU(), nn.Dropout(dropout)]
            d_in = d
        head.append(nn.Linear(d_in, self.num_outputs))
        self.head = nn.Sequential(*head)

    def check_inputs(self, traces: Tensor, mask: Tensor) -> None:
        b, n1, n2, t = traces.shape
        if (n1, n2) != (self.grid_size, self.grid_size) or t != self.n_bins:
            raise ValueError(f"traces: shape (B, {n1}, {n2}, {t}), model built for "
                             f"(B, {self.grid_size}, {self.grid_size}, {self.n_bins})")

    def forward(self, traces: Tensor, times: Tensor, signals: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """traces (B, n, n, T), times/signals (B, n, n), positions (B, n, n, 3), mask (B, n, n) → (B, outputs)."""
        self.check_inputs(traces, mask)
        b, n = traces.shape[0], self.grid_size
        flat_mask = mask.reshape(b, n * n)  # (B, S)
        stations = Packing(flat_mask)
        tr = stations.pack(traces.reshape(b, n * n, self.n_bins))  # (N_real, T)
        tr = tr.view(tr.shape[0], self.n_bins // self.trace_pool, self.trace_pool).sum(-1)  # (N_real, T')
        seq, h = self.rnn(tr.unsqueeze(-1))  # seq (N_real, T', H); h (layers, N_real, H) or (h, c) for LSTM
        h = (h[0] if isinstance(h, tuple) else h)[-1]  # (N_real, H)
        # the last state alone forgets the early, informative part of the trace behind its quiet tail:
        # add the time average of the hidden states
        h = torch.cat([h, seq.mean(dim=1)], dim=-1)  # (N_real, 2H)
        extra = torch.cat([times.unsqueeze(-1), signals.unsqueeze(-1), positions], dim=-1).reshape(b, n * n, 5)
        if self.geometry is not None:  # ShowerGeometry takes [x, y, z, t, log10 S]
            station_geo, event = self.geometry(extra[..., [2, 3, 4, 0, 1]], flat_mask)  # (B, S, 2), (B, 5)
            extra = torch.cat([extra, station_geo, event[:, None, :].expand(-1, n * n, -1)], dim=-1)  # (B, S, 12)
        feats = self.station(torch.cat([h, stations.pack(extra)], dim=-1))  # (N_real, C)
        grid = stations.unpack(feats).view(b, n, n, -1).permute(0, 3, 1, 2)  # (B, C, n, n)
        grid = self.convs(grid)  # (B, C', n, n)
        return self.head(grid)  # (B, outputs)
