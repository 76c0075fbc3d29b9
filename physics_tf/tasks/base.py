"""Pieces shared by the LightningModules of every analysis.

Batch contract: a batch is a dict of tensors. The targets are ``y`` (class index or regression targets) and an
optional per-example ``weight``; keys starting with ``aux_`` carry truth information for monitoring only. Every
other key is an input of the network and is passed to ``net(**inputs)`` by name — jets give ``x, v, mask``,
other analyses whatever their models' ``forward`` takes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import torch
from torch import nn

NON_INPUT_KEYS = frozenset({"y", "weight"})
AUX_PREFIX = "aux_"


@functools.lru_cache(maxsize=64)
def _signature(cls: type) -> tuple[frozenset[str], frozenset[str], bool]:
    """(required names, accepted names, takes **kwargs) of ``cls.forward``."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = frozenset(p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)
    accepted = frozenset(p.name for p in params if p.kind in kinds)
    return required, accepted, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def model_inputs(batch: Mapping[str, torch.Tensor], net: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The network's keyword arguments from a batch: every field but the targets and ``aux_*`` truth.

    With ``net``, fields its ``forward`` requires but the batch lacks, or fields it does not accept, raise a
    ``ValueError`` naming them (instead of a TypeError deep inside the model).
    """
    inputs = {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS and not k.startswith(AUX_PREFIX)}
    if net is not None:
        required, accepted, var_kw = _signature(type(getattr(net, "_orig_mod", net)))
        missing = sorted(required - set(inputs))
        unknown = [] if var_kw else sorted(set(inputs) - accepted)
        if missing or unknown:
            raise ValueError(
                f"batch fields {sorted(inputs)} do not fit {type(net).__name__}.forward: "
                f"missing {missing}, not accepted {unknown}"
            )
    return inputs


def estimate_total_steps(trainer) -> float | None:
    """Optimizer steps of the whole fit (for warm-up + decay schedules), or None when unknown.

    Same result as ``Trainer.estimated_stepping_batches`` for physics_tf's data modules, but it never builds the
    trainer's train iterator: Lightning's estimate does, before a resumed run has restored its loop state, and the
    first resumed epoch would then replay epoch 0's data order. Falls back to Lightning's estimate when the
    training data does not come from a data module with a sized train loader.
    """
    import math

    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    datamodule = getattr(trainer, "datamodule", None)
    try:
        batches = len(datamodule.train_dataloader())
    except (AttributeError, TypeError, NotImplementedError):
        total = float(trainer.estimated_stepping_batches)
        return total if math.isfinite(total) else None
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))
    per_epoch = math.ceil(batches / max(trainer.accumulate_grad_batches, 1))
    total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf
    if max_steps is not None:
        total = min(total, max_steps)
    return float(total) if math.isfinite(total) else None
