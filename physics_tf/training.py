"""Train / evaluate from a composed Hydra config (the logic behind pipelines/train.py and evaluate.py).

Everything is built from ``_target_`` entries: data module, network, task, callbacks, loggers, trainer.
The resolved config is written to the run directory and stored inside every checkpoint, so
``evaluate.py ckpt_path=...`` can rebuild the exact model and data description later.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("physics_tf")

CONFIG_KEY = "physics_tf_config"


RNG_KEY = "physics_tf_rng"


class RunStateInCheckpoint(L.Callback):
    """Stores the resolved run config and the random-number states in every checkpoint.

    The config (``checkpoint["physics_tf_config"]``) lets ``evaluate.py`` rebuild model and data; the RNG states
    (torch, numpy, python) are restored on resume so dropout draws continue as in an uninterrupted run — with the
    data order fixed by (seed, epoch), a resumed run ends with the same weights as one that never stopped.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        import random

        import numpy as np

        checkpoint[CONFIG_KEY] = self.config
        # only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint[RNG_KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # applied at the first training batch after the restore, so nothing in between (the sanity check, loop
        # bookkeeping) can shift the draws
        self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import random

        import numpy as np

        state, self._pending_rng = getattr(self, "_pending_rng", None), None
        if state is not None:
            torch.set_rng_state(state["torch"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            random.setstate(state["python"])


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: W&B and CSV loggers compare flat keys best."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _build(cfg: DictConfig, output_dir: Path, model_cfg: DictConfig, task_cfg: DictConfig):
    """Data module, network and task from their configs.

    Every data module exposes ``model_dims`` (sizes the network is built with, e.g. ``input_dim``,
    ``num_classes``) and ``task_kwargs`` (e.g. ``class_names``), so one pipeline serves every analysis.
    """
    datamodule = instantiate(cfg.data)
    net = instantiate(model_cfg, **datamodule.model_dims)
    task = instantiate(
        task_cfg, net=net, **datamodule.task_kwargs, output_dir=str(output_dir), compile=bool(cfg.get("compile", False))
    )
    return datamodule, net, task


def _finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()  # one run per job, also between Hydra multirun jobs


def _report(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    log.info("test metrics (%s): %s", path, json.dumps(metrics, indent=None))
    return metrics


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and (optionally) test. Returns the test metrics (empty if ``test=false``)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "high"))
    L.seed_everything(cfg.seed, workers=True)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))

    datamodule, net, task = _build(cfg, output_dir, cfg.model, cfg.task)
    n_params = sum(p.numel() for p in net.parameters())
    log.info("model %s: %s parameters", type(net).__name__, f"{n_params:,}")

    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks")) + [RunStateInCheckpoint(resolved)]
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    for logger in loggers:
        logger.log_hyperparams({**flatten(resolved), "n_parameters": n_params})
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    try:
        if cfg.get("train", True):
            trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics: dict[str, Any] = {}
        if cfg.get("test", True):
            ckpt = None
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if cfg.get("test_ckpt", "best") == "best" and best:
                ckpt = best
            elif cfg.get("test_ckpt") == "last" and (output_dir / "checkpoints" / "last.ckpt").is_file():
                ckpt = str(output_dir / "checkpoints" / "last.ckpt")
            log.info("testing with %s", ckpt or "the current weights")
            trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            if trainer.is_global_zero:
                metrics = _report(output_dir)
    finally:
        _finish_loggers(loggers)
    return metrics


def load_run_config(ckpt_path: str | Path) -> dict[str, Any]:
    """The resolved training config stored in a physics_tf checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if CONFIG_KEY not in checkpoint:
        raise ValueError(f"{path}: not a physics_tf checkpoint (no '{CONFIG_KEY}' entry)")
    return checkpoint[CONFIG_KEY]


def run_evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild model + data from the checkpoint's stored config (or ``cfg.data`` if given) and run the test stage."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    stored = OmegaConf.create(load_run_config(cfg.ckpt_path))
    data_cfg = cfg.data if cfg.get("data") else stored.data
    run_cfg = OmegaConf.create({"data": data_cfg, "paths": OmegaConf.to_container(cfg.paths, resolve=True)})
    (output_dir / "config.yaml").write_text(
        OmegaConf.to_yaml({"ckpt_path": str(cfg.ckpt_path), "data": OmegaConf.to_container(data_cfg, resolve=True)})
    )
    datamodule, _, task = _build(run_cfg, output_dir, stored.model, stored.task)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    try:
        trainer.test(task, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False)
    finally:
        _finish_loggers(loggers)
    return _report(output_dir) if trainer.is_global_zero else {}
