"""Attention maps of a trained network (the logic behind ``pipelines/explain.py`` / ``physics-tf-explain``).

The network is rebuilt from the config stored in the checkpoint (as :mod:`physics_tf.training.export` does), runs
in eval mode on ``num_events`` events of a split (the checkpoint's data config, or another one as for
``evaluate``: ``data=...``, ``+data.files.test=[...]`` or ``files=[...]``), and every attention layer's weights are
recorded with :func:`physics_tf.nn.inspect.record_attention`. The stream of :class:`AttentionBatch` es (batch,
network outputs, records) goes to the analysis' drawing, which the driver finds without knowing the analysis:
``plots=<module or module:function>`` in the config, else the data module's ``explain_plots`` attribute, else
``explain_plots`` in the ``explain`` module of the package that defines the data module (each analysis'
``explain.py``). The drawing has the signature ``explain_plots(batches, out_dir, *, datamodule, num_examples)`` and
returns the paths it wrote; it consumes the stream batch by batch, so averages over many events need no more
memory than one batch's maps. Figures go to the run directory (``logs/explain/<experiment>/<time>/``) or
``output_dir``, with ``attention.json`` listing the recorded layers and the figures.

Python API (e.g. ``notebooks/attention_maps.ipynb``)::

    net, dm, config = load_for_explain("RUN/checkpoints/best.ckpt")
    for ab in attention_batches(net, dm, split="test", num_events=64):
        ab.maps        # [AttentionRecord(name, kind, weights (B, H, Lq, Lk), bias, key_mask), ...]
    explain(net, dm, "out/", num_events=500)   # the analysis' figures + attention.json
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from physics_tf.data.atomic import atomic_path
from physics_tf.data.errors import DataError
from physics_tf.nn.inspect import AttentionRecord, attention_modules, record_attention

log = logging.getLogger("physics_tf")

__all__ = ["AttentionBatch", "BinnedMean", "ExplainError", "attention_batches", "explain", "find_plots",
           "load_for_explain", "pick_examples", "run_explain", "share"]

SPLIT_STAGES = {"train": "fit", "val": "validate", "test": "test"}


class ExplainError(DataError):
    """Bad explain input (checkpoint, split, model without attention, drawing): one line naming the file / key."""


@dataclass
class AttentionBatch:
    """One batch of events: the batch dict (CPU, cut to the events asked for), the network outputs (B, …) and the
    attention records of the forward pass (weights (B, H, Lq, Lk) on the CPU; see :mod:`physics_tf.nn.inspect`).
    ``tokens``: for a network that reorders or groups its input elements into tokens, its ``token_elements(**inputs)``
    — (B, L_tokens, P) indices of the input elements each token holds, −1 for none — else None (token j is
    element j)."""

    batch: dict[str, Tensor]
    outputs: Tensor
    maps: list[AttentionRecord]
    tokens: Tensor | None = None


# ---------------------------------------------------------------------------------------------- for the drawings
class BinnedMean:
    """Running mean (and its standard error) of a value in bins of x, per group (class): for averages of
    attention weights over many events, batch by batch."""

    def __init__(self, edges: Any, groups: int) -> None:
        self.edges = np.asarray(edges, dtype=float)
        shape = (groups, len(self.edges) - 1)
        self.sum, self.sumsq, self.count = np.zeros(shape), np.zeros(shape), np.zeros(shape)

    def add(self, x: Any, value: Any, group: Any) -> None:
        """1-D arrays of equal length (x outside the edges is left out)."""
        x, value, group = (np.asarray(a).ravel() for a in (x, value, group))
        nb = self.sum.shape[1]
        idx = np.searchsorted(self.edges, x, side="right") - 1
        ok = (idx >= 0) & (idx < nb) & np.isfinite(value)
        flat = group[ok].astype(np.int64) * nb + idx[ok]
        size = self.sum.size
        self.sum += np.bincount(flat, value[ok], size).reshape(self.sum.shape)
        self.sumsq += np.bincount(flat, value[ok] ** 2, size).reshape(self.sum.shape)
        self.count += np.bincount(flat, None, size).reshape(self.sum.shape)

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / self.count, np.nan)

    def sem(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.maximum(self.sumsq / self.count - self.mean() ** 2, 0.0)
            return np.where(self.count > 1, np.sqrt(var / np.maximum(self.count - 1, 1)), np.nan)


def share(weights: Any, mask: Any) -> np.ndarray:
    """N·w / Σw of each event's real elements (B, L), 0 at padding: the attention an element gets relative to a
    uniform share (1) among the N real elements, leaving out what goes to the class (or other extra) tokens."""
    w = np.asarray(weights, dtype=np.float64) * mask
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w * mask.sum(axis=1, keepdims=True), total, out=np.zeros_like(w), where=total > 0)


def pick_examples(labels: Any, n: int) -> list[int]:
    """Indices of up to ``n`` events for single-event pictures: the first event of each class in turn (classes in
    order of first appearance), so that a top jet and a QCD jet both show up; in order without labels."""
    if labels is None:
        return list(range(n))
    labels = np.asarray(labels).ravel()
    queues = {c: list(np.flatnonzero(labels == c)) for c in dict.fromkeys(labels.tolist())}
    out: list[int] = []
    while len(out) < n and any(queues.values()):
        for q in queues.values():
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return out


# ---------------------------------------------------------------------------------------------- loading
def load_for_explain(ckpt_path: str | Path, data: Mapping[str, Any] | None = None, split: str = "test",
                     files: Any = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(network in eval mode with the checkpoint's weights, data module, stored run config). ``data``: a data
    config replacing (with ``_target_``) or updating the stored one; ``files``: the files of ``split``."""
    from omegaconf import OmegaConf

    from physics_tf.training.export import build_network, load_checkpoint  # their errors are one-line DataErrors
    from physics_tf.training.run import evaluation_data

    if split not in SPLIT_STAGES:
        raise ExplainError("<config>", f"split '{split}': expected one of {sorted(SPLIT_STAGES)}", "split")
    ckpt = Path(str(ckpt_path))
    config, state = load_checkpoint(ckpt)
    data_cfg = evaluation_data(OmegaConf.create(dict(data)) if data else None, OmegaConf.create(config["data"]))
    if files is not None:
        files = OmegaConf.to_container(files, resolve=True) if OmegaConf.is_config(files) else files
        stored = (data_cfg.get("files") or {}).get(split)
        if isinstance(stored, str) and isinstance(files, list) and len(files) == 1:
            files = files[0]  # a one-file split (light curves): the path itself
        data_cfg = OmegaConf.merge(data_cfg, {"files": {split: files}})
    config = {**config, "data": OmegaConf.to_container(data_cfg, resolve=True)}
    net, datamodule = build_network(config, state, source=ckpt)
    layers = attention_modules(net)
    if not layers:
        raise ExplainError(ckpt, f"{type(net).__name__} has no attention layers to look inside "
                           "(physics_tf.nn.attention.MultiheadAttention)", "model._target_")
    efficient = [(n, m.kind) for n, m in layers if m.kind != "full"]  # those record_attention leaves out
    kinds = ", ".join(sorted({kind for _, kind in efficient}))
    if len(efficient) == len(layers):
        raise ExplainError(ckpt, f"every attention layer of {type(net).__name__} is of an efficient kind "
                           f"({kinds}) that forms no attention weights; explain needs kind='full'",
                           "model.attention.kind")
    if efficient:
        log.warning("explain: the layers of kind %s form no attention weights and are left out: %s", kinds,
                    ", ".join(n for n, _ in efficient))
    return net, datamodule, config


def _loader(datamodule: Any, split: str):
    if not ((getattr(datamodule, "files", None) or {}).get(split)):
        raise ExplainError("<config>", f"data.files.{split} is not set; give files=[...] or another split",
                           f"files.{split}")
    datamodule.setup(SPLIT_STAGES[split])
    return getattr(datamodule, f"{split}_dataloader")()


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def attention_batches(net: nn.Module, datamodule: Any, split: str = "test", num_events: int | None = 256,
                      device: str | torch.device = "cpu", loader: Any = None) -> Iterator[AttentionBatch]:
    """Run ``net`` (eval mode, no gradients) over the first ``num_events`` events of ``split`` (all with None) and
    yield each batch with its outputs and attention records, all on the CPU."""
    from physics_tf.tasks.base import model_inputs

    device = _device(device)
    net = net.eval().to(device)
    loader = _loader(datamodule, split) if loader is None else loader
    seen = 0
    for batch in loader:
        if num_events is not None and seen >= num_events:
            break
        size = len(next(iter(batch.values())))
        keep = size if num_events is None else min(size, num_events - seen)
        batch = {k: v[:keep] if isinstance(v, Tensor) else v for k, v in batch.items()}
        inputs = {k: v.to(device) for k, v in model_inputs(batch, net).items()}
        with torch.no_grad(), record_attention(net, to_cpu=True) as rec:
            outputs = net(**inputs)
            tokens = net.token_elements(**inputs).cpu() if callable(getattr(net, "token_elements", None)) else None
        seen += keep
        yield AttentionBatch(batch=batch, outputs=outputs.detach().float().cpu(), maps=list(rec.maps), tokens=tokens)


# ---------------------------------------------------------------------------------------------- the drawing
def _import_callable(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` or ``"package.module"`` (its ``explain_plots``) → the callable."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr or "explain_plots")
    except (ImportError, AttributeError) as err:
        raise ExplainError("<config>", f"plots '{spec}': {err}", "plots") from None
    return obj


def find_plots(datamodule: Any, plots: str | None = None) -> Callable[..., Any]:
    """The analysis' attention drawing: ``plots`` if given, else the data module's ``explain_plots``, else
    ``<data module's package>.explain.explain_plots`` (module docstring)."""
    if plots:
        return _import_callable(str(plots))
    hook = getattr(datamodule, "explain_plots", None)
    if callable(hook):
        return hook
    package = type(datamodule).__module__.rpartition(".")[0]
    try:
        module = importlib.import_module(f"{package}.explain")
    except ModuleNotFoundError:
        module = None
    if module is None or not callable(getattr(module, "explain_plots", None)):
        raise ExplainError("<config>", f"no attention drawing for {type(datamodule).__name__} (no {package}.explain."
                           "explain_plots); name one with plots=<module:function>", "plots")
    return module.explain_plots


def _layers(batch: AttentionBatch) -> list[dict[str, Any]]:
    return [{"name": r.name, "kind": r.kind, "heads": int(r.weights.shape[1]),
             "shape_first_batch": list(r.weights.shape), "bias": r.bias is not None} for r in batch.maps]


def explain(net: nn.Module, datamodule: Any, output_dir: str | Path, split: str = "test", num_events: int = 256,
            num_examples: int = 4, plots: str | None = None, device: str | torch.device = "cpu",
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Draw the analysis' attention maps of ``num_events`` events of ``split`` into ``output_dir`` and write
    ``attention.json`` (the layers recorded, the figures, the event count); returns that summary."""
    draw = find_plots(datamodule, plots)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"events": 0, "layers": None}

    def stream() -> Iterator[AttentionBatch]:
        for ab in attention_batches(net, datamodule, split, num_events, device):
            if state["layers"] is None:
                state["layers"] = _layers(ab)
            state["events"] += len(ab.outputs)
            yield ab

    figures = [str(p) for p in draw(stream(), out, datamodule=datamodule, num_examples=int(num_examples))]
    if not state["events"]:
        raise ExplainError("<config>", f"split '{split}' gave no events", f"files.{split}")
    summary = {"model": type(net).__name__, "split": split, "num_events": state["events"],
               "layers": state["layers"], "figures": figures, **dict(extra or {})}
    with atomic_path(out / "attention.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_explain(cfg: Any) -> dict[str, Any]:
    """Hydra entry (``conf/explain.yaml``): checkpoint → attention figures + ``attention.json`` in the run dir."""
    from omegaconf import OmegaConf

    from physics_tf.training.run import quiet_libraries

    quiet_libraries()
    split = str(cfg.get("split", "test"))
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
    net, datamodule, _ = load_for_explain(cfg.ckpt_path, data=data, split=split, files=cfg.get("files"))
    output_dir = Path(str(cfg.output_dir)) if cfg.get("output_dir") else Path(str(cfg.paths.output_dir))
    torch.manual_seed(int(cfg.get("seed", 0)))
    summary = explain(net, datamodule, output_dir, split=split, num_events=int(cfg.num_events),
                      num_examples=int(cfg.num_examples), plots=cfg.get("plots"), device=str(cfg.get("device", "cpu")),
                      extra={"checkpoint": str(cfg.ckpt_path)})
    log.info("attention maps of %s on %d %s events: %d figures in %s", summary["model"], summary["num_events"],
             split, len(summary["figures"]), output_dir)
    return summary
