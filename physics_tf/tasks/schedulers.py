"""Learning-rate schedules: linear warm-up followed by cosine / linear decay to a floor.

The schedule is a multiplicative factor ``f(step)`` on the base learning rate, used with
:class:`torch.optim.lr_scheduler.LambdaLR` stepped once per *optimizer* step
(Lightning ``interval="step"``).  With ``W`` warm-up steps, ``T`` total steps and floor
``r = min_lr_ratio``:

    f(s) = (s + 1) / W                                     for s < W   (linear warm-up)
    p    = clamp((s - W) / (T - W), 0, 1)                  for s >= W
    f(s) = r + (1 - r) * (1 + cos(pi p)) / 2               ("cosine", Loshchilov & Hutter,
                                                             SGDR, arXiv:1608.03983)
    f(s) = r + (1 - r) * (1 - p)                           ("linear")
    f(s) = 1                                               ("constant")

``(s + 1) / W`` (rather than ``s / W``) avoids a wasted first step at zero learning rate;
the peak ``f = 1`` is reached at step ``W - 1``.  After ``T`` steps the factor stays at ``r``.
If ``T`` is unknown (``None`` or ``inf``, e.g. an iterable dataset without a length) only the
warm-up is applied and the rate stays constant afterwards.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "linear", "constant")

__all__ = ["SCHEDULES", "WarmupDecay", "build_warmup_decay_scheduler"]


class WarmupDecay:
    """Callable LR factor ``f(step)`` (see module docstring).

    A class rather than a closure so that ``LambdaLR.state_dict()`` stores its fields and
    checkpoints can be resumed.

    Parameters
    ----------
    warmup_steps : int
        Number of linear warm-up steps ``W`` (0 disables warm-up).
    total_steps : int, float or None
        Total number of optimizer steps ``T``; ``None``/``inf`` -> constant after warm-up.
    schedule : {"cosine", "linear", "constant"}
        Decay shape after warm-up.
    min_lr_ratio : float in [0, 1]
        Floor ``r`` of the factor at the end of the decay.
    """

    def __init__(
        self,
        warmup_steps: int,
        total_steps: int | float | None,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.0,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: must lie in [0, 1], got {min_lr_ratio}")
        if total_steps is not None and math.isfinite(total_steps):
            total_steps = int(total_steps)
            if total_steps <= 0:
                raise ValueError(f"total_steps: must be > 0, got {total_steps}")
        else:
            total_steps = None
        self.warmup_steps = int(warmup_steps)
        self.total_steps = total_steps
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant" or self.total_steps is None:
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / decay_steps))
        if self.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def __repr__(self) -> str:
        return (
            f"WarmupDecay(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"schedule={self.schedule!r}, min_lr_ratio={self.min_lr_ratio})"
        )


def build_warmup_decay_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int | float | None,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """``LambdaLR`` applying :class:`WarmupDecay` to every parameter group; step it per optimizer step."""
    return LambdaLR(optimizer, WarmupDecay(warmup_steps, total_steps, schedule, min_lr_ratio))
