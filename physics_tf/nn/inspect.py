"""Look inside a network: record the attention weights of every attention layer of any model, without editing it.

::

    with record_attention(net) as rec:
        logits = net(**inputs)
    for r in rec.maps:           # one AttentionRecord per attention call, in call order
        r.name, r.kind           # "blocks.3.attn", "self" | "class" | "cross"
        r.weights                # (B, H, Lq, Lk) softmax probabilities, float32
        r.bias                   # (B, H, Lq, Lk) additive bias given (ParT's interaction U), or None
        r.key_mask               # (B, Lk) bool, True = real key, or None

Every :class:`physics_tf.nn.attention.MultiheadAttention` inside ``net`` gets a ``recorder`` for the duration of
the ``with`` block (removed afterwards, also on error); the layer then asks the attention core for its weights
(``need_weights``), which leaves its output bit-for-bit unchanged. The kind comes from the block holding the layer
(:class:`~physics_tf.nn.blocks.TransformerBlock`: self, :class:`~physics_tf.nn.blocks.ClassAttentionBlock`: class
— keys are [class token, elements], key 0 is the class token —, :class:`~physics_tf.nn.blocks.CrossAttentionBlock`:
cross). The additive mask a layer is given is split into the bias (finite part) and the key mask (keys that are not
−∞ / not False for some query). Weights are those of the forward pass, before attention dropout.

Layers of an efficient kind (``kind=window|lsh|sparse_*``, :mod:`physics_tf.nn.efficient`) never form an L×L
weight matrix: they are not recorded (:func:`attention_modules` with ``forming_weights=True`` lists the others).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from physics_tf.nn.attention import MultiheadAttention
from physics_tf.nn.blocks import TransformerBlock

__all__ = ["AttentionRecord", "AttentionRecorder", "attention_modules", "record_attention", "split_mask"]


@dataclass
class AttentionRecord:
    """One attention call: module name, kind (self / class / cross), weights (B, H, Lq, Lk), bias (B, H, Lq, Lk)
    or None, key_mask (B, Lk) bool (True = real) or None."""

    name: str
    kind: str
    weights: Tensor
    bias: Tensor | None
    key_mask: Tensor | None

    def mean_heads(self) -> Tensor:
        """The weights averaged over heads: (B, Lq, Lk)."""
        return self.weights.mean(dim=1)


class AttentionRecorder:
    """What :func:`record_attention` yields: ``maps``, the records in call order, and look-ups by name / kind."""

    def __init__(self) -> None:
        self.maps: list[AttentionRecord] = []

    def __len__(self) -> int:
        return len(self.maps)

    def clear(self) -> None:
        self.maps.clear()

    def by_kind(self, kind: str) -> list[AttentionRecord]:
        return [r for r in self.maps if r.kind == kind]

    def select(self, pattern: str, kind: str | None = None) -> list[AttentionRecord]:
        """The records whose module name matches the shell pattern (``"pool.blocks.*"``) and, if given, ``kind``."""
        return [r for r in self.maps if fnmatch.fnmatchcase(r.name, pattern) and (kind is None or r.kind == kind)]


def split_mask(attn_mask: Tensor | None, batch: int, num_keys: int) -> tuple[Tensor | None, Tensor | None]:
    """(bias, key_mask) of an attention mask as :func:`physics_tf.nn.attention.attention_mask` builds it: a bool
    mask (True = attend) has no bias; a float one's finite part is the bias (0 where −∞) and its key mask the keys
    that some query may attend to. key_mask is (B, Lk); bias keeps the mask's shape."""
    if attn_mask is None:
        return None, None
    if attn_mask.dtype == torch.bool:
        allowed, bias = attn_mask, None
    else:
        allowed = attn_mask > float("-inf")
        bias = attn_mask.masked_fill(~allowed, 0.0)
    while allowed.dim() < 4:
        allowed = allowed.unsqueeze(0)
    key_mask = allowed.any(dim=1).any(dim=1).expand(batch, num_keys)  # (B, Lk)
    return bias, key_mask


def _kinds(net: nn.Module) -> dict[str, str]:
    """{attention module name: kind} from the blocks holding the layers."""
    kinds = {}
    for name, module in net.named_modules():
        if isinstance(module, TransformerBlock):
            kinds[f"{name}.attn" if name else "attn"] = module.attention_kind
    return kinds


def attention_modules(net: nn.Module, forming_weights: bool = False) -> list[tuple[str, MultiheadAttention]]:
    """(name, layer) of every attention layer of ``net``, in module order; ``forming_weights``: only the layers of
    kind "full", whose weights can be recorded."""
    return [(n, m) for n, m in net.named_modules()
            if isinstance(m, MultiheadAttention) and (not forming_weights or m.kind == "full")]


@contextlib.contextmanager
def record_attention(net: nn.Module, include: Sequence[str] | None = None, kinds: Sequence[str] | None = None,
                     to_cpu: bool = False, keep_bias: bool = True) -> Iterator[AttentionRecorder]:
    """Record the attention weights of ``net``'s layers while the ``with`` block runs (module docstring); layers of
    an efficient kind are left out.

    ``include``: shell patterns of module names to record (default all); ``kinds``: only these kinds;
    ``to_cpu``: move the records to the CPU as they come (long runs on an accelerator); ``keep_bias``: False drops
    the (B, H, L, L) bias tensors to save memory. Weights and masks are detached.
    """
    recorder = AttentionRecorder()
    kind_of = _kinds(net)
    chosen = [(name, module) for name, module in attention_modules(net, forming_weights=True)
              if (include is None or any(fnmatch.fnmatchcase(name, p) for p in include))]
    installed: list[tuple[MultiheadAttention, object]] = []

    def move(t: Tensor) -> Tensor:
        return t.cpu() if to_cpu else t

    def make(name: str):
        def record(module: MultiheadAttention, weights: Tensor, attn_mask: Tensor | None, self_attention: bool) -> None:
            kind = kind_of.get(name, "self" if self_attention else "cross")
            if kinds is not None and kind not in kinds:
                return
            b, _, _, lk = weights.shape
            bias, key_mask = split_mask(attn_mask.detach() if attn_mask is not None else None, b, lk)
            if bias is not None and (not keep_bias or not torch.any(bias != 0)):
                bias = None
            recorder.maps.append(AttentionRecord(
                name=name, kind=kind, weights=move(weights.detach()),
                bias=None if bias is None else move(bias.float()),
                key_mask=None if key_mask is None else move(key_mask)))
        return record

    try:
        for name, module in chosen:
            installed.append((module, module.__dict__.get("recorder")))
            module.recorder = make(name)
        yield recorder
    finally:
        for module, previous in installed:
            if previous is None:
                module.__dict__.pop("recorder", None)
            else:
                module.recorder = previous
