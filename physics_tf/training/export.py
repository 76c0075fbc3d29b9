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
TorchScript exporter turns them into ONNX ``NonZero`` / ``GatherND`` / ``ScatterND`` with dynamic sizes. To make
the models traceable, during the export only:

* ParT's trimming of a batch to its longest jet, and the Auger transformer's packing of the real stations
  to the largest station count, are switched off (the trimmed length would be traced as a constant);
  padding is masked, so the function is unchanged;
* :class:`~physics_tf.jets.pairwise.PairEmbedding` scatters its pair bias in a (B, L, L, H) layout and permutes it,
  instead of indexing (B, H, L, L) around a slice, which the exporter cannot express;
* ``asinh``, ``hypot``, ``tril_indices`` and (stable) ``argsort``, which the exporter lacks, are mapped to ONNX
  ``Asinh``, ``Sqrt(x² + y²)``, ``NonZero`` of a triangular grid and ``TopK`` (equal keys keep index order, as the
  ONNX specification requires, so it is a stable sort).

After writing, the exported model is checked: onnxruntime runs it on a second batch with another batch size
and length than the traced example, with padding, and its outputs must equal the PyTorch network's (the
unmodified one, trimming included) within ``atol + rtol·|y|``; a failed check leaves no file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
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
NET_PREFIX = "net."  # the tasks hold the network as ``self.net``


class ExportError(DataError):
    """Bad export input (checkpoint, output path, config): one line ``<file>: field '<name>': <what>``."""


# ---------------------------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(resolved run config, network state dict) of a physics_tf checkpoint; ExportError if it is not one."""
    from physics_tf.training.callbacks import CONFIG_KEY

    path = Path(path)
    if not path.is_file():
        raise ExportError(path, "checkpoint not found" if not path.exists() else "not a file", "ckpt_path")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of every kind: the file is not a torch checkpoint
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ExportError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {first})",
                          "ckpt_path") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise ExportError(path, f"not a physics_tf checkpoint (no '{CONFIG_KEY}' entry)", CONFIG_KEY)
    config = checkpoint[CONFIG_KEY]
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ExportError(path, "the stored run config has no 'model' and 'data' sections", CONFIG_KEY)
    state = checkpoint.get("state_dict") or {}
    net_state = {k[len(NET_PREFIX):]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    if not net_state:
        raise ExportError(path, f"no network weights ('{NET_PREFIX}*' entries)", "state_dict")
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
@dataclasses.dataclass(frozen=True)
class InputKind:
    """How a data module's batches look: the dynamic axes per input, and a generator of example batches.

    ``example(datamodule, batch_size, length, generator)`` returns a padded batch of the network inputs with
    plausible values (the traced graph must not produce NaN on it). Every row is padded; the longest row has
    ``length − 1`` real elements (for Auger: stations), so a length taken from the data while tracing (trimming
    to the longest set) differs between the traced example and the check, and shows up as a mismatch.
    """

    dynamic_axes: Mapping[str, Mapping[int, str]]
    example: Callable[[Any, int, int, torch.Generator], dict[str, Tensor]]


def _prefix_mask(batch: int, length: int, gen: torch.Generator) -> Tensor:
    """(B, L) True = real, real elements first, 1 ≤ real count < L (padding in every row)."""
    counts = torch.randint(1, max(length, 2), (batch,), generator=gen)
    counts[0] = max(length - 1, 1)
    return torch.arange(length)[None, :] < counts[:, None]


def _jet_example(dm: Any, batch: int, length: int, gen: torch.Generator) -> dict[str, Tensor]:
    mask = _prefix_mask(batch, length, gen)
    pt = torch.rand(batch, length, generator=gen) * 50 + 1
    eta = torch.randn(batch, length, generator=gen) * 0.3
    phi = (torch.rand(batch, length, generator=gen) * 2 - 1) * math.pi
    mass = torch.rand(batch, length, generator=gen) * 0.2
    pz = pt * torch.sinh(eta)
    energy = torch.sqrt(pt**2 + pz**2 + mass**2)
    v = torch.stack((pt * torch.cos(phi), pt * torch.sin(phi), pz, energy), dim=-1)  # (B, P, 4)
    x = torch.randn(batch, length, dm.num_features, generator=gen)
    m = mask.unsqueeze(-1).float()
    return {"x": x * m, "v": v * m, "mask": mask}


def _lightcurve_example(dm: Any, batch: int, length: int, gen: torch.Generator) -> dict[str, Tensor]:
    mask = _prefix_mask(batch, length, gen)
    m = mask.float()
    time_ = torch.randint(0, 3 * length, (batch, length), generator=gen).float()  # unsorted, with ties
    dims = dm.model_dims
    return {"flux": torch.randn(batch, length, generator=gen) * 50 * m,
            "flux_err": (torch.rand(batch, length, generator=gen) * 10 + 1) * m,
            "time": time_ * m,
            "band": torch.randint(0, dims["num_bands"], (batch, length), generator=gen) * mask,
            "mask": mask,
            "meta": torch.randn(batch, dims["meta_dim"], generator=gen)}


def _auger_example(dm: Any, batch: int, length: int, gen: torch.Generator) -> dict[str, Tensor]:
    n, t = dm.grid_size, dm.n_bins
    counts = torch.randint(1, n * n + 1, (batch,), generator=gen).clamp(max=max(min(length, n * n + 1) - 1, 1))
    counts[0] = max(min(length, n * n + 1) - 1, 1)  # stations of the fullest event
    rank = torch.rand(batch, n * n, generator=gen).argsort(dim=1).argsort(dim=1)  # random station order
    mask = (rank < counts[:, None]).view(batch, n, n)
    m = mask.float()
    return {"traces": torch.rand(batch, n, n, t, generator=gen) * 3 * m.unsqueeze(-1),
            "times": torch.randn(batch, n, n, generator=gen) * m,
            "signals": torch.rand(batch, n, n, generator=gen) * 3 * m,
            "positions": torch.randn(batch, n, n, 3, generator=gen),
            "mask": mask}


def _axes(names: tuple[str, ...], length_name: str | None) -> dict[str, dict[int, str]]:
    return {k: {0: "batch", **({1: length_name} if length_name else {})} for k in names}


def input_kinds() -> dict[type, InputKind]:
    """Input descriptions per data-module class (extend here for a new analysis)."""
    from physics_tf.auger.data import AugerDataModule
    from physics_tf.jets.data import JetDataModule
    from physics_tf.lightcurves.data import LightCurveDataModule

    per_obs = ("flux", "flux_err", "time", "band", "mask")
    return {
        JetDataModule: InputKind(_axes(("x", "v", "mask"), "particles"), _jet_example),
        LightCurveDataModule: InputKind({**_axes(per_obs, "observations"), "meta": {0: "batch"}},
                                        _lightcurve_example),
        AugerDataModule: InputKind(_axes(("traces", "times", "signals", "positions", "mask"), None), _auger_example),
    }


def input_kind(datamodule: Any) -> InputKind:
    for cls, kind in input_kinds().items():
        if isinstance(datamodule, cls):
            return kind
    raise ExportError("<config>", f"no ONNX input description for data module {type(datamodule).__name__} "
                      "(add one to physics_tf.training.export.input_kinds)", "data._target_")


def example_inputs(net: nn.Module, datamodule: Any, batch_size: int, length: int, seed: int = 0) -> dict[str, Tensor]:
    """An example batch of ``net``'s inputs (in ``forward`` order) for the data module's kind of data."""
    from physics_tf.tasks.base import model_inputs

    gen = torch.Generator().manual_seed(seed)
    batch = model_inputs(input_kind(datamodule).example(datamodule, batch_size, length, gen), net)
    order = [p for p in inspect.signature(type(net).forward).parameters if p in batch]
    return {name: batch[name] for name in order}


# ---------------------------------------------------------------------------------------------- tracing aids
def _pair_bias_exportable(self: nn.Module, v: Tensor, mask: Tensor) -> Tensor:
    """PairEmbedding.forward with the bias scattered in a (B, L, L, H) layout (consecutive advanced indices)."""
    from physics_tf.jets.pairwise import pair_features, real_pairs

    batch, a, b = real_pairs(mask)
    emb = self.mlp(pair_features(v[batch, a], v[batch, b], self.eps))  # (N_pairs, H)
    n, length = mask.shape
    bias = emb.new_zeros(n, length, length, self.num_heads)  # (B, L, L, H)
    bias[batch, a, b] = emb
    bias[batch, b, a] = emb
    return bias.permute(0, 3, 1, 2)  # (B, H, L, L)


def _pack_real_untrimmed(mask: Tensor) -> Tensor:
    """auger_transformer.pack_real without the cut to the largest station count: (B, S) → (B, S), real first."""
    counts = mask.sum(dim=1)  # (B,)
    return torch.arange(mask.shape[1], device=mask.device)[None, :] < counts[:, None]


@contextlib.contextmanager
def traceable(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``net`` computes the same function without data-dependent shapes (module docstring)."""
    from physics_tf.auger import transformer as auger_transformer
    from physics_tf.jets.part import ParticleTransformer
    from physics_tf.jets.pairwise import PairEmbedding

    undo: list[Callable[[], None]] = []
    try:
        packs = getattr(auger_transformer, "pack_real", None)
        if packs is not None and any(isinstance(m, auger_transformer.AugerTransformer) for m in net.modules()):
            auger_transformer.pack_real = _pack_real_untrimmed
            undo.append(lambda: setattr(auger_transformer, "pack_real", packs))
        for module in net.modules():
            if isinstance(module, ParticleTransformer) and module.trim:
                module.trim = False
                undo.append(lambda m=module: setattr(m, "trim", True))
            if isinstance(module, PairEmbedding):
                module.forward = types.MethodType(_pair_bias_exportable, module)
                undo.append(lambda m=module: delattr(m, "forward"))
        yield net
    finally:
        for fn in reversed(undo):
            fn()


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
    kind = input_kind(datamodule)
    inputs = example_inputs(net, datamodule, example_batch, example_length, seed=0)
    check = example_inputs(net, datamodule, check_batch, check_length, seed=1)
    with torch.no_grad():
        ref = net(**check).float()
    out_name = "logits" if metadata and "class_names" in (metadata.get("task") or {}) else "outputs"
    axes = {k: dict(v) for k, v in kind.dynamic_axes.items() if k in inputs}
    start = time.perf_counter()
    try:
        with atomic_path(output) as tmp:
            with torch.no_grad(), traceable(net), _symbolics(opset), warnings.catch_warnings(record=True) as seen:
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
