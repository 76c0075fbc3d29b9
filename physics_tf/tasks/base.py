"""The task base every analysis's LightningModule builds on, and the batch contract.

Batch contract: a batch is a dict of tensors. The targets are ``y`` (class index or regression targets) and an
optional per-example ``weight``; keys starting with ``aux_`` carry truth for monitoring only (``aux_index`` (B,)
int64: each sample's entry over the split). Every other key is an input of the network and is passed to
``net(**inputs)`` by name — jets give ``x, v, mask``, other analyses whatever their models' ``forward`` takes.

:class:`Task` holds what every task does the same way: AdamW with the weight-decay split
(:func:`split_weight_decay_params`), a per-step linear warm-up + cosine/linear decay
(:mod:`physics_tf.tasks.schedulers`) over :func:`estimate_total_steps`, the validation and test stages (per-sample
outputs and losses gathered from every DDP rank, each sample once by its ``aux_index`` where the batches carry one
(:mod:`physics_tf.tasks.samples`); the validation numbers; the test summary, ``metrics.json`` and
``predictions.npz`` written atomically, plots), the counts of samples a data module left out on purpose, summed
over ranks every epoch, and the report hook :meth:`Task.report_tables` through which the W&B callback gets an
analysis's tables without knowing the analysis. A head (:mod:`~physics_tf.tasks.classification`,
:mod:`~physics_tf.tasks.regression`) supplies the per-sample loss and outputs and the numbers made of them; an
analysis's task subclasses a head. Fine-tuning: :class:`physics_tf.tasks.finetune.FineTuning`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import IterableDataset

from physics_tf.data.atomic import atomic_path
from physics_tf.tasks.finetune import FineTuning
from physics_tf.tasks.metrics import sample_counts
from physics_tf.tasks.optim import parameter_groups, split_weight_decay_params
from physics_tf.tasks.samples import StageOutputs, batch_loss, epoch_counts, log_epoch_counts, mean_loss
from physics_tf.tasks.schedulers import SCHEDULES, build_warmup_decay_scheduler
from physics_tf.tasks.summary import print_test_summary
from physics_tf.training.reporting import Table

__all__ = ["Task", "estimate_total_steps", "model_inputs", "split_weight_decay_params"]

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

    Same result as ``Trainer.estimated_stepping_batches`` for physics_tf's data modules (a map-style train loader
    counted per DDP rank, as its DistributedSampler will deal it), but it never builds the
    trainer's train iterator: Lightning's estimate does, before a resumed run has restored its loop state, and the
    first resumed epoch would then replay epoch 0's data order. Falls back to Lightning's estimate when the
    training data does not come from a data module with a sized train loader.
    """
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    datamodule = getattr(trainer, "datamodule", None)
    try:
        loader = datamodule.train_dataloader()
        batches = len(loader)
    except (AttributeError, TypeError, NotImplementedError):
        total = float(trainer.estimated_stepping_batches)
        return total if math.isfinite(total) else None
    world = int(getattr(trainer, "world_size", 1) or 1)
    dataset = getattr(loader, "dataset", None)
    if world > 1 and loader.batch_size and dataset is not None and not isinstance(dataset, IterableDataset):
        # a map-style loader gets Lightning's DistributedSampler only later: ceil(N / world) samples per rank
        # (streamed datasets shard themselves, and their length is already per rank)
        per_rank = math.ceil(len(dataset) / world)
        batches = per_rank // loader.batch_size if loader.drop_last else math.ceil(per_rank / loader.batch_size)
    limit = trainer.limit_train_batches
    batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))
    per_epoch = math.ceil(batches / max(trainer.accumulate_grad_batches, 1))
    total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf
    if max_steps is not None:
        total = min(total, max_steps)
    return float(total) if math.isfinite(total) else None


class Task(FineTuning, L.LightningModule):
    """What every task shares: optimisation, the validation and test stages' plumbing and the report hook (module
    docstring).

    A subclass names its per-sample fields with :meth:`declare_samples`, implements the training step,
    :meth:`eval_samples`, :meth:`validation_values` and :meth:`summarize_test`, and may override
    :meth:`test_samples`, :meth:`test_log_values`, :meth:`prediction_arrays`, :meth:`write_plots` and
    :meth:`report_tables`.

    Parameters
    ----------
    net : nn.Module
        Called as ``net(**model_inputs(batch))``. Optional hooks: ``no_weight_decay()`` (names excluded from
        weight decay) and ``hparams_for_checkpoint`` (dict or callable returning the constructor kwargs; stored as
        ``hparams["net_config"]`` with a Hydra ``_target_`` so the net can be rebuilt with
        ``hydra.utils.instantiate``).
    lr, weight_decay, betas, eps : AdamW settings (peak learning rate).
    warmup_steps : int or None
        Linear warm-up steps; if None, ``warmup_fraction`` of the total optimizer steps
        (:func:`estimate_total_steps`), or 0 if the total is unknown.
    warmup_fraction : float
        Used when ``warmup_steps`` is None.
    schedule : {"cosine", "linear", "constant"}
        Decay after warm-up, down to ``min_lr_ratio * lr`` at the last step. If the total step count is unknown
        (e.g. ``max_steps=-1`` with an unsized iterable dataset) the rate stays constant after warm-up.
    min_lr_ratio : float
        Final learning rate as a fraction of ``lr``.
    output_dir : str or None
        Where the test stage writes its files; default ``trainer.log_dir`` or ``trainer.default_root_dir``.
    compile : bool
        ``net.compile()`` in place (``torch.compile``; parameter names and checkpoints unchanged).
    net_config : dict or None
        Informational; filled from ``net.hparams_for_checkpoint`` when available.
    pretrained, lr_backbone_mult, freeze_blocks : fine-tuning (:class:`~physics_tf.tasks.finetune.FineTuning`).
    """

    COUNT_KEY = "num_samples"  # the summary's sample count; an analysis names its own (num_jets, num_events, ...)
    val_outputs: StageOutputs
    test_outputs: StageOutputs

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.05,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.01,
        output_dir: str | os.PathLike | None = None,
        compile: bool = False,
        net_config: dict[str, Any] | None = None,
        pretrained: str | os.PathLike | None = None,
        lr_backbone_mult: float = 1.0,
        freeze_blocks: int = 0,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2:
            raise ValueError(f"betas: expected 2 values, got {betas}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction: must lie in [0, 1), got {warmup_fraction}")
        # Lightning collects the arguments of every subclass's __init__ too (it walks their frames), each as the
        # most derived class holds it. Hydra hands lists over as ListConfigs (even those passed as keyword
        # arguments to instantiate), which torch.load(weights_only=True) refuses: they become plain containers.
        self.save_hyperparameters(ignore=["net"])
        for key, value in list(self.hparams.items()):
            if isinstance(value, (DictConfig, ListConfig)):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.hparams["betas"] = betas  # a tuple, as AdamW takes it
        cfg = self._net_config(net)
        if cfg is not None:
            self.hparams["net_config"] = cfg
        self.net = net
        self.setup_finetuning(net, pretrained, lr_backbone_mult, freeze_blocks)
        if compile:
            self.net.compile()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.test_summary: dict[str, Any] | None = None
        self.test_arrays: dict[str, np.ndarray] | None = None

    @staticmethod
    def _net_config(net: nn.Module) -> dict[str, Any] | None:
        hp = getattr(net, "hparams_for_checkpoint", None)
        if hp is None:
            return None
        hp = hp() if callable(hp) else hp
        cls = type(net)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **dict(hp)}

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The net's output; ``inputs`` are its keyword arguments (jets: ``x``, ``v``, ``mask``)."""
        return self.net(**inputs)

    # ------------------------------------------------------------------ validation and test stages
    def declare_samples(self, *fields: str, test_only: Sequence[str] = ()) -> None:
        """The per-sample fields :meth:`eval_samples` returns besides ``loss`` (validation and test), and those
        only :meth:`test_samples` adds."""
        self.val_outputs = StageOutputs("loss", *fields)
        self.test_outputs = StageOutputs("loss", *fields, *test_only)

    def eval_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample tensors of an evaluation batch: ``loss`` (B,), ``weight`` (B,) when the loss is a weighted
        mean, and the head's fields (:meth:`declare_samples`)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its evaluation samples")

    def validation_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.eval_samples(batch)

    def test_samples(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.eval_samples(batch)

    def validation_values(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """What validation logs as ``val/<key>``, from the gathered per-sample arrays (each sample once): here
        ``loss``."""
        return {"loss": mean_loss(arrays)}

    def summarize_test(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """The test numbers (``metrics.json``) from the per-sample arrays of all ranks."""
        raise NotImplementedError(f"{type(self).__name__} does not define its test summary")

    def test_log_values(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """What the test stage logs as ``test/<key>``: here every top-level number of the summary."""
        return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def prediction_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays of ``predictions.npz``: here the gathered per-sample arrays as they are."""
        return arrays

    def write_plots(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
        """Draw the test plots into ``out_dir``; returns the file names. None here."""
        return []

    def report_tables(self) -> dict[str, Table]:
        """Tables of the last test stage for a run report, ``{name: (columns, rows)}`` (the W&B callback logs them
        as ``tables/<name>``), beyond those it finds in ``metrics.json`` itself. None here."""
        return {}

    def _epoch_counts(self, split: str) -> dict[str, int]:
        """The data module's counts of the split's epoch summed over ranks (collective), warned about once."""
        counts = epoch_counts(self.trainer, self.device, split)
        log_epoch_counts(self.trainer, split, counts, getattr(self.trainer.datamodule, "COUNT_NOTES", None))
        return counts

    def on_train_epoch_end(self) -> None:
        for key, value in self._epoch_counts("train").items():
            self.log(f"train/{key}", float(value), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.val_outputs.reset()

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        samples = self.validation_samples(batch)
        self.val_outputs.update(samples, batch.get("aux_index"))
        return batch_loss(samples)

    def on_validation_epoch_end(self) -> None:
        if self.val_outputs.has_data:
            arrays, _ = self.val_outputs.gather()  # every rank's samples, each once; collective
            self.val_outputs.reset()
            for key, value in self.validation_values(arrays).items():  # the same on every rank
                self.log(f"val/{key}", value, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:  # a sanity check reads a few batches only
            for key, value in self._epoch_counts("val").items():
                self.log(f"val/{key}", float(value), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_outputs.reset()
        self.test_summary, self.test_arrays = None, None

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        samples = self.test_samples(batch)
        self.test_outputs.update(samples, batch.get("aux_index"))
        return batch_loss(samples)

    def on_test_epoch_end(self) -> None:
        if not self.test_outputs.has_data:
            raise ValueError(f"{type(self).__name__}: the test stage saw no samples (is the test split empty?)")
        arrays, rows = self.test_outputs.gather()  # every rank's samples, each once; collective
        self.test_outputs.reset()
        counts = self._epoch_counts("test")  # collective too
        self.log("test/loss", mean_loss(arrays), sync_dist=True)
        if not self.trainer.is_global_zero:
            return
        counted: dict[str, int] = {}
        if "index" in arrays:  # DDP padding and re-reads repeat samples: each counted once, checked against the split
            dm, lim = getattr(self.trainer, "datamodule", None), self.trainer.limit_test_batches  # int: a part
            split = dm.split_counts("test") if hasattr(dm, "split_counts") else {}
            counted = sample_counts(arrays["index"], {**split, **counts}, rows=rows,
                                    complete=not isinstance(lim, int) and lim >= 1.0)
        summary = {**self.summarize_test(arrays), **counts, **counted}
        self.test_summary, self.test_arrays = summary, arrays
        for key, value in self.test_log_values(summary).items():
            self.log(f"test/{key}", value, rank_zero_only=True)
        out_dir = self.resolve_output_dir()
        written = self.write_test_outputs(out_dir, summary, arrays)
        self.print_summary(summary, out_dir, written)

    def resolve_output_dir(self) -> Path:
        """``output_dir`` if given, else the trainer's ``log_dir`` or ``default_root_dir``."""
        if self.output_dir is not None:
            return self.output_dir
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def write_test_outputs(self, out_dir: Path, summary: Mapping[str, Any], arrays: dict[str, np.ndarray]
                           ) -> list[str]:
        """``metrics.json``, ``predictions.npz`` (atomically) and the plots; returns the file names written.

        The keys keep the summary's order, which reads by meaning (rej50 before rej30; per primary p, He, N, Fe) and
        is the order of the console table, so the README's table can be rendered from the file; it is the same for
        every run of a task, so two runs' files diff line by line. ``inf`` and ``nan`` become ``Infinity`` /
        ``NaN`` (Python's ``json`` reads them back).
        """
        out_dir = Path(out_dir)
        text = json.dumps(summary, indent=2) + "\n"
        with atomic_path(out_dir / "metrics.json") as tmp, open(tmp, "wb") as fh:
            fh.write(text.encode())
        predictions = self.prediction_arrays(arrays) | ({"index": arrays["index"]} if "index" in arrays else {})
        with atomic_path(out_dir / "predictions.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **predictions)
        try:
            plots = self.write_plots(out_dir, summary, arrays)
        except Exception as err:  # noqa: BLE001 - a failing plot must not lose the numbers written above
            rank_zero_warn(f"{type(self).__name__}: plots failed: {err}")
            plots = []
        return ["metrics.json", *plots, "predictions.npz"]

    def print_summary(self, summary: Mapping[str, Any], out_dir: Path, written: Sequence[str]) -> None:
        """The logged test numbers as a table on the console (the sample count first when the analysis does not
        log it, so every analysis' table shows it), and where the files went."""
        values = self.test_log_values(summary)
        if self.COUNT_KEY in summary and self.COUNT_KEY not in values:
            values = {self.COUNT_KEY: summary[self.COUNT_KEY], **values}
        print_test_summary(values, self.COUNT_KEY, out_dir, written)

    # ------------------------------------------------------------------ optimisation
    def _total_steps(self) -> float | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        try:
            return estimate_total_steps(trainer)
        except Exception as err:  # noqa: BLE001 - e.g. a dataloader without __len__ and no max_steps
            rank_zero_warn(f"{type(self).__name__}: cannot estimate total steps ({err}); LR constant after warm-up")
            return None

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over two groups (with / without weight decay; each stores its parameter ``names``, in
        ``net.named_parameters()`` order), four with ``lr_backbone_mult != 1`` (the backbone's two at the scaled
        rate first: :func:`~physics_tf.tasks.optim.parameter_groups`); frozen parameters are in none. The warm-up +
        decay schedule scales every group's rate alike, stepped per optimizer step."""
        hp = self.hparams
        groups = parameter_groups(self.net, hp.lr, hp.weight_decay, float(hp.get("lr_backbone_mult", 1.0)))
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)

        total = self._total_steps()
        finite = total is not None and math.isfinite(total) and total > 0
        if hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        elif finite:
            warmup = int(round(hp.warmup_fraction * total))
        else:
            warmup = 0
        if not finite:
            rank_zero_warn(
                f"{type(self).__name__}: total optimizer steps unknown/infinite; "
                f"using {warmup} warm-up steps then a constant learning rate"
            )
        scheduler = build_warmup_decay_scheduler(
            optimizer, warmup, total if finite else None, hp.schedule, hp.min_lr_ratio
        )
        rank_zero_info(f"{type(self).__name__}: {scheduler.lr_lambdas[0]!r}")
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "lr"},
        }
