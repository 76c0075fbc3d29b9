"""The parameter groups of the task base's AdamW: which parameters decay and which do not
(:func:`split_weight_decay_params`, re-exported by :mod:`physics_tf.tasks.base`), and, for fine-tuning, the
backbone's groups at a scaled learning rate (:func:`parameter_groups`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from physics_tf.tasks.finetune import head_prefixes, is_head

__all__ = ["split_weight_decay_params", "parameter_groups"]


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, InstanceNorm*d, SyncBatchNorm
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    """Normalisation layer: a torch norm class, or a custom class whose name ends in ``Norm``."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def split_weight_decay_params(net: nn.Module) -> tuple[list[str], list[str]]:
    """Names of trainable parameters of ``net`` with and without weight decay.

    No decay for: parameters of normalisation modules, names ending in ``bias``, any
    parameter with ``ndim <= 1`` (biases, norm scales, learnable scalars) and names listed by
    ``no_weight_decay()`` of ``net`` or of any submodule (names relative to that module; an
    exact parameter name, or a module prefix ``"a.b"`` that excludes everything below it).
    This follows the timm / weaver (ParT) convention (Loshchilov & Hutter, arXiv:1711.05101).

    Returns
    -------
    decay, no_decay : list[str]
        Parameter names relative to ``net``, each in ``net.named_parameters()`` order.
    """
    skip: set[str] = set()
    norm_params: set[str] = set()
    for mod_name, module in net.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):  # honoured on submodules too (wrapped ParT)
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + str(n) for n in module.no_weight_decay())
        if _is_norm(module):
            for p_name, _ in module.named_parameters(recurse=False):
                norm_params.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        listed = any(name == s or name.startswith(s + ".") for s in skip)
        if listed or name in norm_params or name.endswith("bias") or param.ndim <= 1:
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def parameter_groups(net: nn.Module, lr: float, weight_decay: float, lr_backbone_mult: float = 1.0
                     ) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters of ``net``, each with its ``names`` (in
    ``net.named_parameters()`` order), ``lr`` and ``weight_decay``; empty groups are left out.

    With ``lr_backbone_mult == 1`` two groups: with and without weight decay (:func:`split_weight_decay_params`).
    Otherwise four: the backbone's two at ``lr * lr_backbone_mult``, then the head's two (the net's declared
    ``head_modules``, :func:`physics_tf.tasks.finetune.head_prefixes`) at ``lr``.
    """
    decay, no_decay = split_weight_decay_params(net)
    params = dict(net.named_parameters())

    def group(names: list[str], wd: float, rate: float) -> dict[str, Any]:
        return {"params": [params[n] for n in names], "weight_decay": wd, "lr": rate, "names": names}

    if lr_backbone_mult == 1.0:
        groups = [group(decay, weight_decay, lr), group(no_decay, 0.0, lr)]
    else:
        head = head_prefixes(net, "task.lr_backbone_mult")
        backbone_lr = lr * lr_backbone_mult
        groups = [group([n for n in decay if not is_head(n, head)], weight_decay, backbone_lr),
                  group([n for n in no_decay if not is_head(n, head)], 0.0, backbone_lr),
                  group([n for n in decay if is_head(n, head)], weight_decay, lr),
                  group([n for n in no_decay if is_head(n, head)], 0.0, lr)]
    return [g for g in groups if g["params"]]
