"""Checks of a composed config's numbers before anything heavy is imported.

A negative batch size or ``task.lr=fast`` would otherwise surface as a deep traceback from Lightning or torch after
the seconds it takes to import them and build the data module. :func:`validate_config` runs on the composed config
first (see ``physics_tf.cli``) and raises :class:`ConfigValueError` with one line naming the key and the value.
Only keys present in the config are checked: the three analyses' data configs differ, and the evaluate config may
have no data or task group at all. Interpolations that cannot be resolved here are left to the code that uses them.
Imports omegaconf only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["ConfigValueError", "validate_config", "CHECKS"]


class ConfigValueError(ValueError):
    """A config value of the wrong type or range: ``<key> must be <what> (got <value>)``."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _non_negative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1


def _positive_number(v: Any) -> bool:
    return _is_number(v) and v > 0


def _non_negative_number(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _betas(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)


def _epochs_or_steps(v: Any) -> bool:  # Lightning: -1 = no limit; None = defer to the other of max_epochs / max_steps
    return v is None or (_is_int(v) and v >= -1)


_DEVICE_STRING = re.compile(r"\s*(auto|-1|\d+|\d+\s*(,\s*\d+\s*)*,?)\s*")


def _devices(v: Any) -> bool:  # what Lightning accepts: a count (-1 = all), a list of indices, "auto", "0,1"
    if _is_int(v):
        return v > 0 or v == -1
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_non_negative_int(d) for d in v)
    return isinstance(v, str) and _DEVICE_STRING.fullmatch(v) is not None


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


POSITIVE_INT = (_positive_int, "a positive integer")
NON_NEGATIVE_INT = (_non_negative_int, "an integer >= 0")
FRACTION = (_fraction, "a number in [0, 1]")

# key -> (check, what the value must be). A key absent from the config is not checked.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_is_int, "an integer"),
    "data.seed": (_is_int, "an integer"),
    "data.batch_size": POSITIVE_INT,
    "data.num_workers": NON_NEGATIVE_INT,
    "data.pad_length": POSITIVE_INT,
    "data.max_length": POSITIVE_INT,
    "data.chunk_size": POSITIVE_INT,
    "data.chunk_events": POSITIVE_INT,
    "data.chunk_rows": POSITIVE_INT,
    "data.chunk_objects": POSITIVE_INT,
    "data.shuffle_buffer": NON_NEGATIVE_INT,
    "data.shuffle_blocks": NON_NEGATIVE_INT,
    "data.val_fraction": FRACTION,
    "data.truncate_prob": FRACTION,
    "data.drop_prob": FRACTION,
    "task.lr": (_positive_number, "a positive number"),
    "task.weight_decay": (_non_negative_number, "a number >= 0"),
    "task.betas": (_betas, "two numbers in [0, 1)"),
    "task.eps": (_positive_number, "a positive number"),
    "task.warmup_fraction": FRACTION,
    "task.warmup_steps": (_optional(_non_negative_int), "null or an integer >= 0"),
    "task.min_lr_ratio": FRACTION,
    "trainer.max_epochs": (_epochs_or_steps, "null or an integer >= -1 (-1: no limit)"),
    "trainer.max_steps": (_epochs_or_steps, "null or an integer >= -1 (-1: no limit)"),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.devices": (_devices, 'a positive integer, -1 (all), a list of device indices or "auto"'),
}

_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` as a plain Python object; _ABSENT if missing (or ``???``) or unresolvable."""
    try:
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except Exception:  # noqa: BLE001 (an interpolation or a custom resolver failing: its user reports it)
        return _ABSENT


def validate_config(cfg: DictConfig) -> None:
    """Raises :class:`ConfigValueError` for the first key of :data:`CHECKS` whose value is of the wrong type or
    range, e.g. ``data.batch_size must be a positive integer (got -4)``."""
    for key, (check, what) in CHECKS.items():
        value = _value(cfg, key)
        if value is _ABSENT or check(value):
            continue
        shown = repr(value) if isinstance(value, str) else value
        raise ConfigValueError(f"{key} must be {what} (got {shown})")
