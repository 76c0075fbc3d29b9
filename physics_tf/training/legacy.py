"""Checkpoints written before the move to one wing per analysis: old ``_target_`` strings and old state-dict keys.

:func:`upgrade_checkpoint` rewrites a loaded checkpoint dict in place so the current code evaluates, exports and
resumes it: every ``_target_`` in the stored run config and hyper-parameters through :data:`LEGACY_TARGETS`, the
state-dict keys through the model class's ``LEGACY_STATE_KEYS`` ({old prefix: new prefix}, relative to the
network; the task holds the network as ``net.``), and the optimizer param groups to match. It is applied wherever
a checkpoint is read (:func:`physics_tf.training.checkpoints.load_checkpoint` and, for Lightning's own restore in
``trainer.fit`` / ``trainer.test``, :class:`UpgradingCheckpointIO`). Upgrading an upgraded checkpoint changes
nothing.

Only strings name the wings here: the core imports no wing, the model class is resolved from its ``_target_``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO
from torch import nn

from physics_tf.nn.state_keys import rename_legacy_key
from physics_tf.training.callbacks import CONFIG_KEY

__all__ = ["LEGACY_TARGETS", "LEGACY_TASK_TARGETS", "UpgradingCheckpointIO", "upgrade_checkpoint"]

# old dotted path → new one, for every _target_ a pre-move config could hold (conf/*, tests, the README's
# `+callbacks.x._target_=...` examples); none of the old modules exists any more
LEGACY_TARGETS: dict[str, str] = {
    "physics_tf.models.part.ParticleTransformer": "physics_tf.jets.part.ParticleTransformer",
    "physics_tf.models.pfn.ParticleFlowNetwork": "physics_tf.jets.pfn.ParticleFlowNetwork",
    "physics_tf.models.lightcurve_transformer.LightCurveTransformer":
        "physics_tf.lightcurves.transformer.LightCurveTransformer",
    "physics_tf.models.lightcurve_gru.LightCurveGRU": "physics_tf.lightcurves.gru.LightCurveGRU",
    "physics_tf.models.auger_transformer.AugerTransformer": "physics_tf.auger.transformer.AugerTransformer",
    "physics_tf.models.auger_baseline.AugerHexConvNet": "physics_tf.auger.hexconv.AugerHexConvNet",
    "physics_tf.data.datamodule.JetDataModule": "physics_tf.jets.data.JetDataModule",
    "physics_tf.data.auger.AugerDataModule": "physics_tf.auger.data.AugerDataModule",
    "physics_tf.data.lightcurve_datamodule.LightCurveDataModule": "physics_tf.lightcurves.data.LightCurveDataModule",
    "physics_tf.tasks.lightcurves.LightCurveClassificationTask":
        "physics_tf.lightcurves.task.LightCurveClassificationTask",
    "physics_tf.callbacks.WandbTestReport": "physics_tf.training.callbacks.WandbTestReport",
    "physics_tf.training.RunStateInCheckpoint": "physics_tf.training.callbacks.RunStateInCheckpoint",
    "physics_tf.training.FaultInjection": "physics_tf.training.callbacks.FaultInjection",
    "physics_tf.training.SlurmPreemption": "physics_tf.training.cluster.SlurmPreemption",
}

# old task paths that still name a (generic) class today: mapped only in a pre-move checkpoint, i.e. one whose
# data or model _target_ is in LEGACY_TARGETS (before the move the classification task was the jet tagger and the
# regression task the Auger one)
LEGACY_TASK_TARGETS: dict[str, str] = {
    "physics_tf.tasks.classification.ClassificationTask": "physics_tf.jets.task.JetTaggingTask",
    "physics_tf.tasks.regression.RegressionTask": "physics_tf.auger.task.AugerRegressionTask",
}


def _map_targets(node: Any, table: dict[str, str]) -> None:
    """Replace every ``_target_`` value found in ``table``, at any depth of nested dicts and lists."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target in table:
            node["_target_"] = table[target]
        for value in node.values():
            _map_targets(value, table)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _map_targets(value, table)


def _is_pre_move(config: dict[str, Any]) -> bool:
    return any(isinstance(config.get(k), dict) and config[k].get("_target_") in LEGACY_TARGETS
               for k in ("data", "model"))


def _model_target(checkpoint: dict[str, Any]) -> str | None:
    model = (checkpoint.get(CONFIG_KEY) or {}).get("model")
    if isinstance(model, dict) and isinstance(model.get("_target_"), str):
        return model["_target_"]
    net_config = (checkpoint.get("hyper_parameters") or {}).get("net_config")
    if isinstance(net_config, dict) and isinstance(net_config.get("_target_"), str):
        return net_config["_target_"]
    return None


def _parameter_order(checkpoint: dict[str, Any]) -> list[str]:
    """Parameter names of the network the current code builds from the checkpoint's (upgraded) run config,
    in ``named_parameters()`` order, as ``evaluate`` builds it (data module sizes, then the network).

    The global torch RNG is left as it was: building draws initial weights."""
    from hydra.utils import instantiate

    config = checkpoint.get(CONFIG_KEY) or {}
    if not isinstance(config.get("data"), dict) or not isinstance(config.get("model"), dict):
        raise ValueError("the optimizer state names renamed parameters but the checkpoint holds no data/model "
                         f"config ('{CONFIG_KEY}') to rebuild their order from")
    with torch.random.fork_rng(devices=[]):
        datamodule = instantiate(config["data"])
        net = instantiate(config["model"], **datamodule.model_dims)
    return [name for name, _ in net.named_parameters()]


def _upgrade_optimizer_groups(checkpoint: dict[str, Any], rename: Callable[[str], str],
                              order: Callable[[], list[str]]) -> None:
    """Rename each param group's ``names`` and put its saved param ids in the current network's order.

    ``torch.optim.Optimizer.load_state_dict`` pairs saved and current parameters by position within each group,
    and the tasks build every group in ``net.named_parameters()`` order; a renamed module registered elsewhere
    (ParT's class-token pool) moves its parameters, so the saved ids are sorted by where their new names stand.
    A group without ``names`` (an optimizer state written without them) keeps its order.
    """
    position: dict[str, int] | None = None
    for state in checkpoint.get("optimizer_states") or []:
        for group in state.get("param_groups", []):
            names = group.get("names")
            if not names:
                continue
            present = set(names)
            new = [n if rename(n) in present else rename(n) for n in names]
            if new == list(names):
                continue
            if position is None:
                position = {name: i for i, name in enumerate(order())}
            unknown = [n for n in new if n not in position]
            if unknown:
                raise ValueError(f"the optimizer state names a parameter the current network lacks ({unknown[0]}, "
                                 f"was {names[new.index(unknown[0])]})")
            pairs = sorted(zip(new, group["params"]), key=lambda pair: position[pair[0]])
            group["names"] = [name for name, _ in pairs]
            group["params"] = [pid for _, pid in pairs]


def upgrade_checkpoint(checkpoint: dict[str, Any], net: nn.Module | None = None) -> dict[str, Any]:
    """Bring a loaded checkpoint written before the move up to the current code (in place; returns it).

    ``net``: the current network, when the caller has built it (its parameter order is the one the resumed
    optimizer has); otherwise it is rebuilt from the stored config when the optimizer state needs reordering.
    A checkpoint of the current code comes back unchanged. Raises ``ValueError`` (one line) when the optimizer
    state cannot be matched to the current network.
    """
    config = checkpoint.get(CONFIG_KEY)
    hparams = checkpoint.get("hyper_parameters")
    table = dict(LEGACY_TARGETS)
    if isinstance(config, dict) and _is_pre_move(config):
        table.update(LEGACY_TASK_TARGETS)
        if isinstance(config.get("data"), dict):
            # the data configs now hand plain lists and dicts to the data modules (conf/data/*.yaml)
            config["data"].setdefault("_convert_", "all")
    for node in (config, hparams):
        _map_targets(node, table)

    target = _model_target(checkpoint)
    renames = {}
    if target is not None:
        from hydra.utils import get_class

        try:
            renames = dict(getattr(get_class(target), "LEGACY_STATE_KEYS", None) or {})
        except Exception:  # noqa: BLE001 - a network this code cannot import: nothing to rename by
            renames = {}
    if not renames:
        return checkpoint

    def rename(name: str) -> str:
        return rename_legacy_key(name, renames)

    state = checkpoint.get("state_dict")
    if isinstance(state, dict):
        # as the models' load_state_dict pre-hook (physics_tf.nn.state_keys): a key whose new name is present stays
        new_keys = {k: f"net.{rename(k[4:])}" if k.startswith("net.") else k for k in state}
        checkpoint["state_dict"] = {(k if new_keys[k] in state else new_keys[k]): v for k, v in state.items()}
    if net is not None:
        def order() -> list[str]:
            return [name for name, _ in net.named_parameters()]
    else:
        def order() -> list[str]:
            return _parameter_order(checkpoint)
    _upgrade_optimizer_groups(checkpoint, rename, order)
    return checkpoint


class UpgradingCheckpointIO(CheckpointIO):
    """Lightning checkpoint IO that upgrades every checkpoint it loads (:func:`upgrade_checkpoint`).

    Lightning restores the model weights before any callback's ``on_load_checkpoint`` runs, so the upgrade sits
    where the file is read: ``trainer.strategy.checkpoint_io = UpgradingCheckpointIO(trainer.strategy.checkpoint_io,
    net)`` covers ``trainer.fit(ckpt_path=...)``, ``trainer.test(ckpt_path=...)`` and the SLURM auto-resume.
    Saving and removing go to the wrapped IO unchanged.
    """

    def __init__(self, inner: CheckpointIO, net: nn.Module | None = None) -> None:
        self.inner = inner
        self.net = net

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        # the wrapped IO keeps its own default map_location (Lightning passes none)
        extra = {} if map_location is None else {"map_location": map_location}
        return upgrade_checkpoint(self.inner.load_checkpoint(path, weights_only=weights_only, **extra), net=self.net)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
