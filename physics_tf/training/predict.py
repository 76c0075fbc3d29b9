"""Predict on new files (the logic behind ``pipelines/predict.py`` / ``physics-tf-predict``).

``ckpt_path`` names a trained checkpoint: the network and its data module are rebuilt from the run config stored
in it (:func:`physics_tf.training.export.load_checkpoint`, :func:`~physics_tf.training.export.build_network`)
and the task of that config maps the network's outputs to columns (``task.predict_columns``: ``score_<class>``
softmax probabilities of a classifier; targets in physical units and ``<target>_sigma`` of a regression).
``model_path=<model>.onnx`` runs an exported network through onnxruntime instead, with the run config taken from
the ONNX metadata (:mod:`physics_tf.training.export`), and gives the same table.

The data module expands the user's globs (``predict_files``), names the default observers
(``default_observers``) and streams batches of every entry of the files, in order (``predict_dataloader``; the
contract is in ``predict_files``' docstring of each wing's data module): the model inputs, ``pred_file``,
``pred_entry``, ``pred_valid`` and ``obs/<name>``. The table has one row per input entry in input order:
``file_index`` (and the path ``file`` in Parquet / HDF5; a tree ``files`` in ROOT), ``entry``, ``valid``, the
prediction columns (NaN where ``valid`` is false) and the observers (``obs_<name>`` where a name clashes with a
prediction column, e.g. the Auger truth ``xmax``). It is written in chunks as it comes
(:class:`physics_tf.data.tables.TableWriter`: ROOT TTree, Parquet or HDF5 by extension) and atomically.

The batches run through Lightning's ``trainer.predict`` (eval mode, inference mode, the trainer's precision and
devices, a progress bar). With ``trainer=ddp`` / ``ddp_cpu`` rank r takes the files r, r + W, … of the W ranks
and writes its own part next to the output; after a barrier rank 0 merges the parts in file order into the
output (:func:`physics_tf.data.tables.merge_tables`) and removes them.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError
from physics_tf.data.tables import TableWriter, merge_tables, table_format
from physics_tf.tasks.base import model_inputs
from physics_tf.training.cluster import check_devices
from physics_tf.training.export import METADATA_PREFIX, build_network, load_checkpoint, onnx_feed
from physics_tf.training.run import (disk_space_is_one_line, check_task_fits_data, prepare_output_dir,
                                     quiet_libraries)

__all__ = ["PredictError", "run_predict", "load_model"]

log = logging.getLogger("physics_tf")

BATCH_KEYS = ("pred_file", "pred_entry", "pred_valid")
OBS_PREFIX = "obs/"
FIXED_COLUMNS = ("file_index", "file", "entry", "valid")


class PredictError(DataError):
    """Bad prediction input (config, model file): one line ``<file>: field '<name>': <what>``."""


# ---------------------------------------------------------------------------------------------- model
def _onnx_model(path: Path) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session, run config from the metadata) of an ONNX file written by physics-tf-export."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PredictError(path, "onnxruntime is not installed: pip install 'physics_tf[export]'",
                           "model_path") from None
    if not path.is_file():
        raise PredictError(path, "ONNX file not found" if not path.exists() else "not a file", "model_path")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own errors (InvalidProtobuf, Fail, ...)
        raise PredictError(path, f"cannot load as ONNX: {str(err).splitlines()[0]}", "model_path") from None
    meta = session.get_modelmeta().custom_metadata_map
    key = METADATA_PREFIX + "config"
    if key not in meta:
        raise PredictError(path, f"no run config in the ONNX metadata ('{key}'): export it with physics-tf-export",
                           "model_path")
    return session, json.loads(meta[key])


def load_model(cfg: DictConfig, output_dir: Path) -> tuple[Any, torch.nn.Module | None, Any, Any]:
    """(data module, network or None, onnxruntime session or None, task) of ``cfg.ckpt_path`` or
    ``cfg.model_path``; the task only maps outputs to columns (its network is not run for an ONNX model)."""
    model_path, ckpt_path = cfg.get("model_path"), cfg.get("ckpt_path")
    session = None
    if model_path:
        session, config = _onnx_model(Path(str(model_path)))
        net, datamodule = build_network(config, None, source=str(model_path))
        if ckpt_path:
            log.info("model_path given: running %s, not the network of %s", model_path, ckpt_path)
    elif ckpt_path:
        config, state = load_checkpoint(Path(str(ckpt_path)))
        net, datamodule = build_network(config, state, source=str(ckpt_path))
    else:
        raise PredictError("<config>", "give ckpt_path=<checkpoint> or model_path=<model.onnx>", "ckpt_path")
    task_cfg = OmegaConf.create(config["task"])
    check_task_fits_data(task_cfg, datamodule)
    task = instantiate(task_cfg, net=net, **datamodule.task_kwargs, output_dir=str(output_dir))
    if not callable(getattr(task, "predict_columns", None)):
        raise PredictError("<config>", f"task {type(task).__name__} has no predict_columns", "task._target_")
    for hook in ("predict_files", "predict_dataloader", "default_observers"):
        if not callable(getattr(datamodule, hook, None)):
            raise PredictError("<config>", f"data module {type(datamodule).__name__} cannot predict (no {hook})",
                               "data._target_")
    return datamodule, (None if session is not None else net.eval()), session, task


# ---------------------------------------------------------------------------------------------- the loop
class _Predictor(L.LightningModule):
    """Runs the network (or the ONNX session) on a prediction batch and appends the rows to ``writer``."""

    def __init__(self, net: torch.nn.Module | None, session: Any, columns_of: Any, observers: list[str],
                 file_index: np.ndarray) -> None:
        super().__init__()
        self.net, self.session, self.columns_of = net, session, columns_of
        self.observers, self.file_index = list(observers), file_index
        self.writer: TableWriter | None = None
        self.names: dict[str, str] | None = None  # observer → column

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        inputs = {k: v for k, v in batch.items() if k not in BATCH_KEYS and not k.startswith(OBS_PREFIX)}
        if self.session is None:
            outputs = self.net(**model_inputs(inputs, self.net))
        else:
            outputs = self.session.run(None, onnx_feed(self.session, inputs))[0]
        predicted = self.columns_of(outputs)
        valid = _numpy(batch["pred_valid"]).astype(bool)
        if self.names is None:
            taken = set(FIXED_COLUMNS) | set(predicted)
            self.names = {o: (f"obs_{o}" if o in taken else o) for o in self.observers}
        rows = {"file_index": self.file_index[_numpy(batch["pred_file"]).astype(np.int64)],
                "entry": _numpy(batch["pred_entry"]).astype(np.int64), "valid": valid}
        for name, values in predicted.items():
            values = np.asarray(values)
            if not valid.all():
                values = np.where(valid, values, np.nan).astype(values.dtype)
            rows[name] = values
        for o in self.observers:
            rows[self.names[o]] = _numpy(batch[OBS_PREFIX + o])
        self.writer.write(rows)


class _Batches:
    """The data module's batches as a plain iterable: Lightning re-creates a DataLoader it is given in its predict
    loop (to count batch indices), which a DataLoader subclass with arguments of its own does not survive."""

    def __init__(self, batches: Any, sized: bool = True) -> None:
        self.batches, self.sized = batches, sized

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        # TypeError: unsized, Lightning then counts without a total. Lightning refuses a sized loader of length 0
        # (a DDP rank without files) and sums the lengths over ranks when they are sized: all ranks alike
        if not self.sized:
            raise TypeError("unsized")
        return len(self.batches)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------- entry
def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry (module docstring). Returns ``rows``, ``files``, ``output``, ``seconds``, ``entries_per_s`` on
    global rank 0 (other ranks: an empty dict)."""
    quiet_libraries()
    check_devices(cfg.trainer)
    output = Path(str(cfg.output))
    table_format(output)  # an unknown extension fails before anything is loaded
    output_dir = prepare_output_dir(cfg.paths.output_dir)
    with disk_space_is_one_line(output_dir):
        return _predict(cfg, output_dir, output)


def _predict(cfg: DictConfig, output_dir: Path, output: Path) -> dict[str, Any]:
    # the rows are written by predict_step, which returns nothing on purpose (nothing piles up in memory)
    warnings.filterwarnings("ignore", message=r"predict returned None", category=UserWarning)
    L.seed_everything(cfg.get("seed", 42), verbose=False)
    datamodule, net, session, task = load_model(cfg, output_dir)
    options = {key: str(cfg[key]) for key in ("metadata", "cache_dir") if cfg.get(key) is not None}
    if cfg.files is None or OmegaConf.is_missing(cfg, "files"):
        raise PredictError("<config>", "no input files: give files=[<path or glob>, ...]", "files")
    patterns = OmegaConf.to_container(cfg.files, resolve=True) if OmegaConf.is_list(cfg.files) else [str(cfg.files)]
    files = datamodule.predict_files([str(p) for p in patterns], **options)
    observers = (datamodule.default_observers() if cfg.get("observers") is None
                 else [str(o) for o in cfg.observers])

    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[L.pytorch.callbacks.TQDMProgressBar()],
                                     enable_checkpointing=False, use_distributed_sampler=False,
                                     enable_model_summary=False)
    rank, world = int(trainer.global_rank), int(trainer.world_size)
    if rank == 0:
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml({**OmegaConf.to_container(cfg, resolve=True), "files": files,
                                              "observers": observers}))
    mine = np.arange(rank, len(files), world, dtype=np.int64)  # rank r: files r, r + W, ...
    part = output if world == 1 else output.with_name(f".{output.name}.rank{rank}of{world}{output.suffix}")
    predictor = _Predictor(net, session, task.predict_columns, observers, mine)
    loader = _Batches(datamodule.predict_dataloader([files[i] for i in mine], observers,
                                                    batch_size=cfg.get("batch_size"),
                                                    num_workers=cfg.get("num_workers"), **options)
                      if len(mine) else [], sized=len(files) >= world)  # more ranks than files: some idle
    chunk_rows = int(cfg.get("chunk_rows") or 65536)
    start = time.perf_counter()
    with TableWriter(part, files, chunk_rows) as writer:
        predictor.writer = writer
        trainer.predict(predictor, dataloaders=loader, return_predictions=False)
    rows = writer.rows
    if world > 1:
        parts = [output.with_name(f".{output.name}.rank{r}of{world}{output.suffix}") for r in range(world)]
        try:
            trainer.strategy.barrier("physics_tf_predict_parts")  # every part written
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if rank != 0:
            return {}
        try:
            rows = merge_tables(parts, output, files, chunk_rows)
        finally:  # merged, or failed: no part stays behind
            for p in parts:
                p.unlink(missing_ok=True)
    if rows == 0:
        raise PredictError(files[0], f"no entries in the {len(files)} input file(s); nothing written", "files")
    seconds = time.perf_counter() - start
    log.info("predicted %d entries of %d file(s) in %.1f s (%.0f entries/s) → %s", rows, len(files), seconds,
             rows / max(seconds, 1e-9), output)
    return {"rows": rows, "files": len(files), "output": str(output), "seconds": seconds,
            "entries_per_s": rows / max(seconds, 1e-9)}
