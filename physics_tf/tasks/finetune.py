"""Fine-tuning: start a fit from a pretrained network's backbone with a new head, a smaller backbone learning rate
and optionally the first blocks frozen (``task.pretrained``, ``task.lr_backbone_mult``, ``task.freeze_blocks`` of
:class:`physics_tf.tasks.base.Task`).

Every model declares its parts as class attributes (the core reads names, it imports no wing):

* ``head_modules`` — tuple of submodule names that map the pooled representation to the outputs (ParT ``fc``, PFN
  ``out``, the Auger and light-curve models ``head``). Fine-tuning never loads them: they keep their fresh
  initialisation, sized for the new label set.
* ``block_modules`` — the name of the sequence of blocks ``task.freeze_blocks=K`` counts (ParT's transformer
  ``blocks``, the PFN's Φ layers ``phi``, the hexagonal convolutions ``convs``, the GRU's layers ``gru``). In an
  ``nn.ModuleList`` / ``nn.Sequential`` a block begins at each child of the first child's type (a Linear with its
  ReLU, a HexConv2d with its BatchNorm and GELU); in an ``nn.RNNBase`` a block is one layer.
* ``stem_modules`` — the embedding in front of the blocks (frozen with them when K > 0; absent ones are skipped).

A model may also offer ``convert_foreign_state_dict(state_dict) -> state_dict`` (a static or class method) to read
the state dicts of another code (ParT: weaver-core's ``ParticleTransformer``); it must return a physics_tf state
dict unchanged.

:func:`read_pretrained` reads a physics_tf (Lightning) checkpoint — the task's ``net.*`` entries — or a plain state
dict (``torch.save(model.state_dict())``, a weaver-core ``.pt``). :func:`load_backbone` copies every tensor but the
head's into the network, and refuses (one line naming the file and the parameter) a backbone tensor that is
missing from the file, has another shape there, or a file tensor the network does not have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from physics_tf.data.errors import DataError
from physics_tf.nn.state_keys import rename_legacy_key

__all__ = ["FineTuning", "blocks", "check_lr_mult", "freeze", "head_prefixes", "is_head", "load_backbone",
           "read_pretrained"]

KEY = "task.pretrained"
# an experiment that needs a pretrained network sets ``task.pretrained: required`` (OmegaConf cannot make a key
# mandatory again, ``???``, once the task config has given it a value): the task then refuses to be built
REQUIRED = "required"


def _declared(net: nn.Module, attr: str, key: str) -> Any:
    value = getattr(net, attr, None)
    if value is None:
        raise DataError("<config>", f"{type(net).__name__} declares no '{attr}', which {key} needs", key)
    return value


def head_prefixes(net: nn.Module, key: str = KEY) -> tuple[str, ...]:
    """The declared head submodules of ``net`` (``head_modules``); DataError on ``key`` when it declares none."""
    names = _declared(net, "head_modules", key)
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if not isinstance(getattr(net, name, None), nn.Module):
            raise DataError("<config>", f"{type(net).__name__}.head_modules names '{name}', not a submodule", key)
    return names


def is_head(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the parameter / buffer ``name`` (relative to the net) belongs to the head."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_lr_mult(net: nn.Module, mult: float, key: str = "task.lr_backbone_mult") -> None:
    """DataError on ``key`` for a negative multiplier, or one other than 1 for a net without a declared head."""
    if not float(mult) >= 0.0:
        raise DataError("<config>", f"must be >= 0, got {mult}", key)
    if float(mult) != 1.0:
        head_prefixes(net, key)


def blocks(net: nn.Module, key: str = "task.freeze_blocks") -> list[tuple[list[str], list[nn.Module]]]:
    """The blocks of ``block_modules`` in order, each as (its parameter names relative to the net, its modules —
    empty for an RNN layer, whose weights sit on the shared ``nn.RNNBase``)."""
    name = _declared(net, "block_modules", key)
    container = net.get_submodule(name)
    if isinstance(container, nn.RNNBase):
        layers = []
        for k in range(container.num_layers):
            pattern = re.compile(rf"_l{k}(_reverse)?$")
            layers.append(([f"{name}.{p}" for p, _ in container.named_parameters() if pattern.search(p)], []))
        return layers
    children = list(container.named_children())
    groups: list[tuple[list[str], list[nn.Module]]] = []
    for child_name, child in children:
        if not groups or type(child) is type(children[0][1]):
            groups.append(([], []))
        groups[-1][0].extend(f"{name}.{child_name}.{p}" for p, _ in child.named_parameters())
        groups[-1][1].append(child)
    return groups


def freeze(net: nn.Module, k: int, key: str = "task.freeze_blocks") -> list[nn.Module]:
    """Freeze the ``stem_modules`` and the first ``k`` blocks (``requires_grad=False``); returns the modules to keep
    in eval mode (their BatchNorm statistics and dropout stay as pretrained). ``k=0`` freezes nothing."""
    if k == 0:
        return []
    found = blocks(net, key)
    if not 0 < k <= len(found):
        raise DataError("<config>", f"{k} is not in [0, {len(found)}], the number of blocks of {type(net).__name__} "
                        f"('{net.block_modules}')", key)
    params = dict(net.named_parameters())
    modules: list[nn.Module] = []
    names: list[str] = []
    for stem in getattr(net, "stem_modules", ()) or ():
        module = getattr(net, stem, None)
        if isinstance(module, nn.Module):
            modules.append(module)
            names.extend(f"{stem}.{p}" for p, _ in module.named_parameters())
    for block_names, block_modules in found[:k]:
        names.extend(block_names)
        modules.extend(block_modules)
    for n in names:
        params[n].requires_grad_(False)
    rank_zero_info(f"{key}={k}: froze {', '.join(getattr(net, 'stem_modules', ()) or ()) or 'no stem'} and the "
                   f"first {k} of {len(found)} blocks of '{net.block_modules}' ({len(names)} parameter tensors)")
    return modules


def read_pretrained(path: str | Path, net: nn.Module) -> dict[str, Tensor]:
    """The network state dict stored in ``path``: a physics_tf checkpoint's ``net.*`` entries, or a plain state dict
    (through the model's ``convert_foreign_state_dict`` where it has one); DataError (one line) otherwise."""
    from physics_tf.training import checkpoints
    from physics_tf.training.legacy import upgrade_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "pretrained network not found" if not path.exists() else "not a file", KEY)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is one line naming the file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(path, f"cannot read the pretrained network ({first})", KEY) from None
    if not isinstance(raw, Mapping):
        raise DataError(path, f"not a checkpoint or state dict (a {type(raw).__name__})", KEY)
    if isinstance(raw.get("state_dict"), Mapping):  # a Lightning checkpoint: the task's network
        try:
            checkpoint = upgrade_checkpoint(dict(raw))  # upgraded if written before the wings (read once, above)
        except ValueError as err:
            raise DataError(path, str(err), KEY) from None
        state = checkpoints.network_state(checkpoint)
        if not state:
            raise DataError(path, f"the checkpoint holds no network weights ('{checkpoints.NET_PREFIX}*' entries)",
                            KEY)
        return state
    if not raw or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in raw.items()):
        raise DataError(path, "neither a physics_tf checkpoint nor a state dict of tensors", KEY)
    state = dict(raw)
    convert = getattr(type(net), "convert_foreign_state_dict", None)
    if callable(convert):
        state = dict(convert(state))
    renames = getattr(type(net), "LEGACY_STATE_KEYS", None)
    if isinstance(renames, Mapping):
        state = {rename_legacy_key(k, renames): v for k, v in state.items()}
    return state


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


@torch.no_grad()
def load_backbone(net: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the backbone of the pretrained network in ``path`` into ``net``; the head (``head_modules``) keeps its
    fresh parameters. Returns (loaded names, skipped file entries: the pretrained head). A backbone tensor missing
    from the file or of another shape there, or a file tensor outside the head that ``net`` lacks, is a one-line
    DataError naming the file and the parameter."""
    head = head_prefixes(net)
    state = read_pretrained(path, net)
    own = net.state_dict()
    loaded: list[str] = []
    for name, tensor in own.items():
        if is_head(name, head):
            continue
        if name not in state:
            raise DataError(path, f"the pretrained network has no '{name}' {_shape(tensor)}: another architecture "
                            f"than {type(net).__name__} as configured", KEY)
        if state[name].shape != tensor.shape:
            raise DataError(path, f"parameter '{name}' has shape {_shape(state[name])} there, {type(net).__name__} "
                            f"as configured has {_shape(tensor)}: another architecture", KEY)
        loaded.append(name)
    extra = [n for n in state if n not in own and not is_head(n, head)]
    if extra:
        raise DataError(path, f"the pretrained network has '{extra[0]}' ({len(extra)} entries in all) that "
                        f"{type(net).__name__} as configured lacks: another architecture", KEY)
    net.load_state_dict({n: state[n] for n in loaded}, strict=False)
    skipped = [n for n in state if is_head(n, head)]
    rank_zero_info(f"pretrained {path}: loaded {len(loaded)} backbone tensors; head {', '.join(head)} freshly "
                   f"initialised (skipped the file's {len(skipped)} head tensors: {', '.join(skipped) or 'none'})")
    return loaded, skipped


class FineTuning:
    """The fine-tuning part of the task base (:class:`physics_tf.tasks.base.Task`, whose ``__init__`` takes
    ``pretrained``, ``lr_backbone_mult`` and ``freeze_blocks`` and calls :meth:`setup_finetuning`).

    ``pretrained``: a pretrained network whose backbone is loaded at the start of a fresh fit (:meth:`on_fit_start`,
    :func:`load_backbone`); the head stays freshly initialised for the new outputs. ``lr_backbone_mult``: the
    backbone's learning rate as a fraction of ``lr`` (:func:`physics_tf.tasks.optim.parameter_groups`).
    ``freeze_blocks``: freeze the stem and the first K blocks (:func:`freeze`), which stay in eval mode.
    """

    def setup_finetuning(self, net: nn.Module, pretrained: Any, lr_backbone_mult: float, freeze_blocks: int) -> None:
        if pretrained == REQUIRED:
            raise DataError("<config>", "this experiment fine-tunes a pretrained network: give task.pretrained=PATH "
                            "(a physics_tf checkpoint, or a weaver-core ParT state dict .pt)", KEY)
        check_lr_mult(net, lr_backbone_mult)
        self._frozen = freeze(net, int(freeze_blocks))
        for module in self._frozen:
            module.eval()
        self._pretrained_loaded = False

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but the frozen blocks stay in eval mode."""
        super().train(mode)
        for module in getattr(self, "_frozen", ()):
            module.eval()
        return self

    def on_fit_start(self) -> None:
        """Load the pretrained backbone once, at the start of a fresh fit: a resumed fit has restored every weight
        from its checkpoint before this hook (``trainer.ckpt_path`` is set), and reads no pretrained file."""
        path = self.hparams.get("pretrained")
        if path and not self._pretrained_loaded and self.trainer.ckpt_path is None:
            load_backbone(self.net, path)
            self._pretrained_loaded = True
