"""The task base every analysis's LightningModule builds on, and the batch contract.

Batch contract: a batch is a dict of tensors. The targets are ``y`` (class index or regression targets) and an
optional per-example ``weight``; keys starting with ``aux_`` carry truth for monitoring only (``aux_index`` (B,)
int64: each sample's entry over the split). Every other key is an input of the network and is passed to
``net(**inputs)`` by name — jets give ``x, v, mask``, other analyses whatever their models' ``forward`` takes.

:class:`Task` holds what every task does the same way: AdamW with the weight-decay split
(:func:`split_weight_decay_params`), a per-step linear warm-up + cosine/linear decay
(:mod:`physics_tf.tasks.schedulers`) over :func:`estimate_total_steps`, the test stage (per-sample outputs
gathered from every DDP rank, each sample once by its ``aux_index`` where the batches carry one, a summary,
``metrics.json`` and ``predictions.npz`` written atomically, plots) and the report hook :meth:`Task.report_tables`
through which the W&B callback gets an analysis's tables without knowing the analysis. A head
(:mod:`~physics_tf.tasks.classification`, :mod:`~physics_tf.tasks.regression`) supplies the loss and the test
numbers; an analysis's task subclasses a head.
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
from physics_tf.tasks.metrics import PredictionAccumulator, sample_counts, unique_samples
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


class Task(L.LightningModule):
    """What every task shares: optimisation, the test stage's plumbing and the report hook (module docstring).

    A subclass sets ``test_outputs`` (a :class:`PredictionAccumulator` of the fields :meth:`test_samples`
    returns), implements the training / validation steps, :meth:`test_samples` and :meth:`summarize_test`, and may
    override :meth:`test_log_values`, :meth:`prediction_arrays`, :meth:`write_plots` and :meth:`report_tables`.

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
    """

    COUNT_KEY = "num_samples"  # the summary's sample count; an analysis names its own (num_jets, num_events, ...)
    test_outputs: PredictionAccumulator

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
        if compile:
            self.net.compile()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.test_summary: dict[str, Any] | None = None
        self.test_arrays: dict[str, np.ndarray] | None = None
        self.test_index = PredictionAccumulator("index")  # batches' aux_index (B,): sample identity over the split

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

    # ------------------------------------------------------------------ test stage
    def test_samples(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a test batch and its per-sample tensors, keyed by the fields of ``test_outputs``."""
        raise NotImplementedError(f"{type(self).__name__} does not define its test samples")

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

    def on_test_epoch_start(self) -> None:
        self.test_outputs.reset()
        self.test_index.reset()
        self.test_summary, self.test_arrays = None, None

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, samples = self.test_samples(batch)
        size = next(iter(samples.values())).shape[0]
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        self.test_outputs.update(**samples)
        if "aux_index" in batch:
            self.test_index.update(index=batch["aux_index"])
        return loss

    def on_test_epoch_end(self) -> None:
        if not self.test_outputs.has_data:
            raise ValueError(f"{type(self).__name__}: the test stage saw no samples (is the test split empty?)")
        gathered = self.test_outputs.compute()  # all ranks' samples; collective, so every rank calls it
        index = self.test_index.compute()["index"] if self.test_index.has_data else None  # collective too
        self.test_outputs.reset()
        if not self.trainer.is_global_zero:
            return
        arrays = {key: value.cpu().numpy() for key, value in gathered.items()}
        counted: dict[str, int] = {}
        if index is not None:  # DDP padding and re-reads repeat samples: each counts once
            arrays = unique_samples(arrays, index.cpu().numpy())
            dm, lim = getattr(self.trainer, "datamodule", None), self.trainer.limit_test_batches  # int: a part
            counted = sample_counts(arrays["index"], dm.split_counts("test") if hasattr(dm, "split_counts") else {},
                                    rows=len(index), complete=not isinstance(lim, int) and lim >= 1.0)
        summary = {**self.summarize_test(arrays), **counted}
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

        A flat summary (classification) is written with sorted keys, so two runs' files diff line by line; a
        nested one (regression) keeps its order, which reads by meaning (per primary: p, He, N, Fe). ``inf`` and
        ``nan`` become ``Infinity`` / ``NaN`` (Python's ``json`` reads them back).
        """
        out_dir = Path(out_dir)
        flat = not any(isinstance(v, Mapping) for v in summary.values())
        text = json.dumps(summary, indent=2, sort_keys=flat) + "\n"
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
        """The logged test numbers as a table on the console, and where the files went."""
        print_test_summary(self.test_log_values(summary), self.COUNT_KEY, out_dir, written)

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
        ``net.named_parameters()`` order) and the warm-up + decay schedule, stepped per optimizer step."""
        hp = self.hparams
        decay, no_decay = split_weight_decay_params(self.net)
        params = dict(self.net.named_parameters())
        groups = [
            {"params": [params[n] for n in decay], "weight_decay": hp.weight_decay, "names": decay},
            {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "names": no_decay},
        ]
        groups = [g for g in groups if g["params"]]
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
