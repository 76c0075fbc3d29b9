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
