"""Every model config (conf/model/*.yaml), built as a run builds it, at its configured size: the parameter count,
a forward pass on the data module's example batch, and an ONNX export that onnxruntime runs like PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from physics_tf.config import config_dir
from physics_tf.tasks.base import model_inputs

from test_pipelines import compose_train

MODEL_CONFIGS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
# the data config each model family is built with (model_dims come from it; no file is read)
DATA = {"part": "jetclass", "pfn": "jetclass", "pcnn": "jetclass", "lorentznet": "jetclass", "lightcurve": "lightcurves_sim", "auger": "auger_sim"}
# parameters of every configured model: a refactoring must not change them (ParT and PFN as the ParT paper's
# JetClass models: 17 features, 10 classes)
PARAMETERS = {"pcnn": 354_540, "particlenet": 370_156, "lorentznet": 224_656, "lightcurve_patch": 219_980,
              "auger_hexconv": 764_321, "auger_perceiver": 1_255_113, "auger_transformer": 1_204_489,
              "lightcurve_gru": 49_100, "lightcurve_transformer": 210_316, "part": 2_143_486,
              "part_plain": 2_133_918, "part_small": 223_282, "pfn": 86_188}
# the name of each data family's length axis in the ONNX graph (Auger: fixed grid, batch axis only)
LENGTH_AXIS = {"x": "particles", "v": "particles", "flux": "observations", "traces": None}


def data_config(model: str) -> str:
    return next(data for prefix, data in DATA.items() if model.startswith(prefix))


def build(model: str, tmp_path: Path):
    cfg = compose_train([f"model={model}", f"data={data_config(model)}", "paths.data_dir=/nonexistent"], tmp_path)
    datamodule = instantiate(cfg.data)
    return instantiate(cfg.model, **datamodule.model_dims), datamodule


def output_width(model_dims: dict[str, int]) -> int:
    """Logits per class; Auger: one output per regression target, then the mass-class logits."""
    return model_dims["num_targets"] + model_dims["num_classes"] if "num_targets" in model_dims \
        else model_dims["num_classes"]


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights and BatchNorm statistics, so that a mismatch cannot hide behind zeros and ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def test_every_model_config_has_a_parameter_count():
    assert set(MODEL_CONFIGS) == set(PARAMETERS)


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_model_config_builds_runs_and_exports(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from physics_tf.training.export import example_inputs, export_onnx, onnx_feed

    torch.manual_seed(0)
    net, dm = build(model, tmp_path)
    assert type(net).__module__.split(".")[1] == type(dm).__module__.split(".")[1]  # the model's own wing
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[model]

    batch = model_inputs(dm.example_batch(3, 12, torch.Generator().manual_seed(0)), net)
    net.train()
    out = net(**batch)
    assert out.shape == (3, output_width(dm.model_dims)) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)

    _randomise(net, seed=len(model))
    net.eval()
    path = tmp_path / "model.onnx"
    summary = export_onnx(net, dm, path, example_batch=2, example_length=9, metadata={"task": dict(dm.task_kwargs)})
    graph = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
             for i in onnx.load(str(path)).graph.input}
    assert [s["name"] for s in summary["inputs"]] == list(graph)
    assert all(dims[0] == "batch" for dims in graph.values()), graph
    first = next(name for name in batch if name in graph)  # LorentzNet by default reads no x
    if LENGTH_AXIS[first] is not None:
        assert graph[first][1] == LENGTH_AXIS[first]

    # another batch size and length than the traced example (2 × 9) and the export's own check (5 × 23)
    check = example_inputs(net, dm, batch_size=7, length=14, seed=11)
    assert (~check["mask"]).any() and check["mask"].any(), "the check batch must contain padding"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, onnx_feed(session, check))[0]
    with torch.no_grad():
        ref = net(**check).numpy()
    assert got.shape == ref.shape == (7, output_width(dm.model_dims))
    assert float(np.abs(got - ref).max()) < 1e-4
