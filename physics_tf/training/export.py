"""Export a trained network to ONNX (the logic behind ``pipelines/export.py`` / ``physics-tf-export``).

The network is rebuilt from the resolved config stored in the checkpoint (``checkpoint["physics_tf_config"]``,
see :class:`physics_tf.training.callbacks.RunStateInCheckpoint`), its weights are the task's ``net.*`` entries, and it is
traced in eval mode. The ONNX graph takes the network's ``forward`` arguments by name — the batch contract of
:mod:`physics_tf.tasks.base`, e.g. ``x, v, mask`` for jets — with a dynamic batch axis and, where the data
has one, a dynamic length axis (particles, observations); the Auger station grid and trace length are fixed by
the data config. Inputs a network ignores (the PFN's ``v``) are not graph inputs. Input names, shapes, dtypes,
the output, the class / target names and the whole run config are stored in the ONNX metadata
(``metadata_props``, keys ``physics_tf.*``) and in a JSON sidecar ``<output>.json``.

Exporter: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). The ``torch.export``
(dynamo) exporter cannot trace the data-dependent shapes every physics_tf model has — gathering the real
particles / stations / pairs with a boolean mask (``x[mask]``) — without changes to the models, while the
TorchScript exporter turns them into ONNX ``NonZero`` / ``GatherND`` / ``ScatterND`` with dynamic sizes. The
driver knows no model and no data module: the data module gives the example batches and the dynamic axes
(``datamodule.example_batch(batch_size, length, generator)``, ``datamodule.onnx_dynamic_axes``, each analysis'
``export.py``), and the models switch off their own data-dependent lengths under
``torch.onnx.is_in_onnx_export()`` (ParT's trimming to the longest jet, the Auger transformer's packing to the
largest station count, the pair bias' scatter layout, the GRU's packed sequences). Only ONNX knowledge lives
here: ``asinh``, ``hypot``, ``tril_indices`` and (stable) ``argsort``, which the exporter lacks, are mapped to
ONNX ``Asinh``, ``Sqrt(x² + y²)``, ``NonZero`` of a triangular grid and ``TopK`` (equal keys keep index order, as
the ONNX specification requires, so it is a stable sort).

After writing, the exported model is checked: onnxruntime runs it on a second batch with another batch size
and length than the traced example, with padding, and its outputs must equal the PyTorch network's (trimming
included) within ``atol + rtol·|y|``; a failed check leaves no file behind.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from physics_tf.data.errors import DataError
from physics_tf.data.atomic import atomic_path

log = logging.getLogger("physics_tf")

__all__ = ["ExportError", "load_checkpoint", "build_network", "example_inputs", "export_onnx", "run_export",
           "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
METADATA_PREFIX = "physics_tf."


class ExportError(DataError):
    """Bad export input (checkpoint, output path, config): one line ``<file>: field '<name>': <what>``."""


# ---------------------------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(resolved run config, network state dict) of a physics_tf checkpoint; ExportError if it is not one.

    Read by :func:`physics_tf.training.checkpoints.load_checkpoint` (checkpoints written before a model's
    parameters were renamed come back under the current names)."""
    from physics_tf.training import checkpoints
    from physics_tf.training.callbacks import CONFIG_KEY

    path = Path(path)
    if not path.is_file():
        raise ExportError(path, "checkpoint not found" if not path.exists() else "not a file", "ckpt_path")
    try:
        checkpoint = checkpoints.load_checkpoint(path)
    except checkpoints.CheckpointError as err:  # already one line naming the file: keep its reason
        raise ExportError(path, str(err).removeprefix(f"{path}: "), "ckpt_path") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise ExportError(path, f"not a physics_tf checkpoint (no '{CONFIG_KEY}' entry)", CONFIG_KEY)
    config = checkpoint[CONFIG_KEY]
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ExportError(path, "the stored run config has no 'model' and 'data' sections", CONFIG_KEY)
    net_state = checkpoints.network_state(checkpoint)
    if not net_state:
        raise ExportError(path, f"no network weights ('{checkpoints.NET_PREFIX}*' entries)", "state_dict")
    return config, net_state


def build_network(config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None,
                  source: str | Path = "<config>") -> tuple[nn.Module, Any]:
    """The network of a run config (``model`` built with the ``data`` module's ``model_dims``) and that data
    module (constructed only: no file is read). With ``state_dict`` the weights are loaded (strictly)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(config))
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, **datamodule.model_dims)
    if state_dict is not None:
        result = net.load_state_dict(dict(state_dict), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ExportError(source, f"weights do not fit {type(net).__name__} built from the stored config: "
                              f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}",
                              "state_dict")
    return net.eval(), datamodule


# ---------------------------------------------------------------------------------------------- inputs
def _adapter(datamodule: Any) -> tuple[Any, Mapping[str, Mapping[int, str]]]:
    """The data module's export hooks: ``example_batch`` and ``onnx_dynamic_axes``; ExportError without them."""
    example, axes = getattr(datamodule, "example_batch", None), getattr(datamodule, "onnx_dynamic_axes", None)
    if not callable(example) or not isinstance(axes, Mapping):
        raise ExportError("<config>", f"data module {type(datamodule).__name__} has no ONNX export hooks "
                          "(example_batch and onnx_dynamic_axes)", "data._target_")
    return example, axes


def example_inputs(net: nn.Module, datamodule: Any, batch_size: int, length: int, seed: int = 0) -> dict[str, Tensor]:
    """An example batch of ``net``'s inputs (in ``forward`` order) from the data module's ``example_batch``: padded,
    plausible values; the longest row one shorter than ``length``, so a length taken from the data while tracing
    differs between the traced example and the check, and shows up as a mismatch."""
    from physics_tf.tasks.base import model_inputs

    example, _ = _adapter(datamodule)
    batch = model_inputs(example(batch_size, length, torch.Generator().manual_seed(seed)), net)
    order = [p for p in inspect.signature(type(net).forward).parameters if p in batch]
    return {name: batch[name] for name in order}


# ---------------------------------------------------------------------------------------------- ONNX symbolics
def _asinh(g, x):
    return g.op("Asinh", x)


def _hypot(g, x, y):
    return g.op("Sqrt", g.op("Add", g.op("Mul", x, x), g.op("Mul", y, y)))


def _int64(g, value):
    return g.op("Cast", value, to_i=7)  # TensorProto.INT64


def _tril_indices(g, row, col, offset, *unused):
    """(2, T) indices (i, j) with j − i ≤ offset in row-major order, as ``torch.tril_indices``: NonZero of the grid."""
    const = lambda v: g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64))  # noqa: E731
    i = g.op("Unsqueeze", g.op("Range", const(0), _int64(g, row), const(1)), const([1]))  # (R, 1)
    j = g.op("Unsqueeze", g.op("Range", const(0), _int64(g, col), const(1)), const([0]))  # (1, C)
    outside = g.op("Greater", g.op("Sub", j, i), _int64(g, offset))  # (R, C)
    return g.op("NonZero", g.op("Not", outside))


def _argsort(g, x, *args):
    """aten::argsort(x, dim, descending) and aten::argsort.stable(x, stable, dim, descending) → TopK indices."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper as sh

    dim = sh._get_const(args[-2], "i", "dim")
    descending = sh._get_const(args[-1], "b", "descending")
    size = g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)))
    return g.op("TopK", x, size, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)[1]


SYMBOLICS = {"aten::asinh": _asinh, "aten::hypot": _hypot, "aten::tril_indices": _tril_indices,
             "aten::argsort": _argsort}


@contextlib.contextmanager
def _symbolics(opset: int) -> Iterator[None]:
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


# ---------------------------------------------------------------------------------------------- export
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _specs(inputs: Mapping[str, Tensor], axes: Mapping[str, Mapping[int, str]]) -> list[dict[str, Any]]:
    return [{"name": k, "dtype": _dtype_name(t.dtype),
             "shape": [axes.get(k, {}).get(i, s) for i, s in enumerate(t.shape)]} for k, t in inputs.items()]


def _max_deviation(ref: Tensor, got: Any, atol: float, rtol: float) -> tuple[float, bool]:
    got_t = torch.as_tensor(got)
    if got_t.shape != ref.shape:
        return math.inf, False
    diff = (got_t.double() - ref.double()).abs()
    ok = bool(torch.all(diff <= atol + rtol * ref.double().abs()))
    return float(diff.max()) if diff.numel() else 0.0, ok


def onnx_feed(session: Any, inputs: Mapping[str, Tensor]) -> dict[str, Any]:
    """The numpy feed of an onnxruntime session from a batch: only the inputs the graph has."""
    names = {i.name for i in session.get_inputs()}
    return {k: v.detach().cpu().numpy() for k, v in inputs.items() if k in names}


def export_onnx(net: nn.Module, datamodule: Any, output: str | Path, *, opset: int = DEFAULT_OPSET,
                example_batch: int = 2, example_length: int = 16, check_batch: int = 5, check_length: int = 23,
                atol: float = 1e-4, rtol: float = 1e-4, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trace ``net`` (eval mode) to ONNX at ``output`` (atomic) and check it with onnxruntime.

    Returns a summary: output path, input specs, output name and shape, the check's max |Δ|, export seconds.
    ``metadata`` entries are stored (as JSON) under ``physics_tf.<key>`` in the ONNX metadata and the sidecar.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("<environment>", f"{err.name} is not installed: pip install 'physics_tf[export]'",
                          "onnx") from None

    output = Path(output)
    net = net.eval()
    _, dynamic_axes = _adapter(datamodule)
    inputs = example_inputs(net, datamodule, example_batch, example_length, seed=0)
    check = example_inputs(net, datamodule, check_batch, check_length, seed=1)
    with torch.no_grad():
        ref = net(**check).float()
    out_name = "logits" if metadata and "class_names" in (metadata.get("task") or {}) else "outputs"
    axes = {k: dict(v) for k, v in dynamic_axes.items() if k in inputs}
    start = time.perf_counter()
    try:
        with atomic_path(output) as tmp:
            with torch.no_grad(), _symbolics(opset), warnings.catch_warnings(record=True) as seen:
                # tracer warnings (sizes taken as Python numbers, advanced indexing, RNN states) are expected here;
                # the onnxruntime check below, on another batch size and length, is what shows the graph generalises
                warnings.simplefilter("always")
                torch.onnx.export(net, tuple(inputs.values()), str(tmp), input_names=list(inputs),
                                  output_names=[out_name], dynamic_axes={**axes, out_name: {0: "batch"}},
                                  opset_version=opset, dynamo=False, do_constant_folding=True)
            seconds = time.perf_counter() - start
            for w in {str(w.message).splitlines()[0] for w in seen}:
                log.debug("export warning: %s", w)
            model = onnx.load(str(tmp))
            graph_inputs = [i.name for i in model.graph.input]
            specs = [s for s in _specs(inputs, axes) if s["name"] in graph_inputs]
            summary: dict[str, Any] = {
                "inputs": specs, "ignored_inputs": [k for k in inputs if k not in graph_inputs],
                "output": {"name": out_name, "shape": ["batch", *ref.shape[1:]], "dtype": "float32"},
                "opset": opset, "exporter": "torch.onnx (TorchScript)", "torch": torch.__version__,
                **dict(metadata or {}),
            }
            del model.metadata_props[:]
            for key, value in summary.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
            onnx.save(model, str(tmp))
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run([out_name], onnx_feed(session, check))[0]
            deviation, ok = _max_deviation(ref, got, atol, rtol)
            if not ok:
                raise ExportError(output, f"onnxruntime disagrees with PyTorch on a batch of {check_batch} × length "
                                  f"{check_length}: max |Δ| = {deviation:.3g} (allowed {atol:g} + {rtol:g}·|y|)")
    except OSError as err:
        raise ExportError(output, f"cannot write: {err.strerror or err}", "output") from None
    summary.update(check={"batch": check_batch, "length": check_length, "max_abs_diff": deviation},
                   export_seconds=round(seconds, 3), path=str(output))
    sidecar = output.with_name(output.name + ".json")
    try:
        with atomic_path(sidecar) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as err:
        raise ExportError(sidecar, f"cannot write: {err.strerror or err}", "output") from None
    return summary


def run_export(cfg: Any) -> dict[str, Any]:
    """Hydra entry: ``ckpt_path`` → ONNX at ``output`` (default ``<run dir>/model.onnx``) + ``<output>.json``."""
    ckpt = Path(str(cfg.ckpt_path))
    config, state = load_checkpoint(ckpt)
    net, datamodule = build_network(config, state, source=ckpt)
    output = Path(str(cfg.output)) if cfg.get("output") else Path(str(cfg.paths.output_dir)) / "model.onnx"
    metadata = {"model": config["model"].get("_target_"), "task": dict(datamodule.task_kwargs),
                "model_dims": dict(datamodule.model_dims), "checkpoint": str(ckpt), "config": config}
    summary = export_onnx(net, datamodule, output, opset=int(cfg.get("opset", DEFAULT_OPSET)),
                          example_batch=int(cfg.get("example_batch", 2)),
                          example_length=int(cfg.get("example_length", 16)),
                          atol=float(cfg.get("atol", 1e-4)), rtol=float(cfg.get("rtol", 1e-4)), metadata=metadata)
    log.info("exported %s (%s) to %s in %.1f s; inputs %s; onnxruntime check on batch %d × length %d: "
             "max |Δ| = %.2g", type(net).__name__, summary["model"], output, summary["export_seconds"],
             ", ".join(f"{s['name']}{tuple(s['shape'])}:{s['dtype']}" for s in summary["inputs"]),
             summary["check"]["batch"], summary["check"]["length"], summary["check"]["max_abs_diff"])
    return summary
