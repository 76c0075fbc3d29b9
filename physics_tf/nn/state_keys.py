"""Renamed state-dict entries: old checkpoints keep loading after a model's submodules move.

A model whose parameter names changed declares ``LEGACY_STATE_KEYS: dict[str, str]`` — old name prefix → new
prefix, relative to the model, on dot boundaries (``"cls_blocks"`` renames ``cls_blocks.0.fc1.weight`` but not
``cls_blocks_extra``) — and calls :func:`accept_legacy_state_keys` in its constructor, so that
``model.load_state_dict(old_state_dict)`` works, also when the model sits inside a task (``net.*`` keys).
:func:`rename_legacy_key` is the one renaming rule; checkpoint upgrades (state dict, optimizer parameter names)
use it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["rename_legacy_key", "accept_legacy_state_keys"]


def rename_legacy_key(key: str, renames: Mapping[str, str]) -> str:
    """``key`` (relative to the model) under its new name: the first old prefix it starts with is replaced."""
    for old, new in renames.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _rename_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *unused: Any) -> None:
    """load_state_dict pre-hook: rename old keys under ``prefix`` in place (a key whose new name is present is kept
    as it is, so a current state dict passes through unchanged)."""
    renames = type(module).LEGACY_STATE_KEYS
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + rename_legacy_key(key[len(prefix):], renames)
        if new != key and new not in state_dict:
            state_dict[new] = state_dict.pop(key)


def accept_legacy_state_keys(module: nn.Module) -> None:
    """Let ``module.load_state_dict`` take state dicts with the old names of ``type(module).LEGACY_STATE_KEYS``."""
    if not isinstance(getattr(type(module), "LEGACY_STATE_KEYS", None), Mapping):
        raise TypeError(f"{type(module).__name__} has no LEGACY_STATE_KEYS mapping")
    module.register_load_state_dict_pre_hook(_rename_on_load)
