"""ONNX export: every model's onnxruntime output equals PyTorch's on other batch sizes / lengths than traced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from physics_tf.training.export import (ExportError, build_network, example_inputs, export_onnx,  # noqa: E402
                               load_checkpoint, onnx_feed, run_export)

from conftest import synth_jetclass  # noqa: E402
from test_pipelines import compose_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY_AUGER = ["data.grid_size=5", "data.n_bins=20"]
# experiment + overrides that make each network tiny (the architecture is unchanged)
MODELS = {
    "part": ["experiment=jets_part", "model.embed_dims=[16,32,16]", "model.pair_embed_dims=[8,8]",
             "model.num_heads=2", "model.num_layers=2", "model.num_cls_layers=1"],
    "part_plain": ["experiment=jets_part_plain", "model.embed_dims=[16,16]", "model.num_heads=2",
                   "model.num_layers=1", "model.num_cls_layers=1"],
    "pfn": ["experiment=jets_pfn", "model.phi_dims=[16,16]", "model.f_dims=[16]"],
    "lightcurve_transformer": ["experiment=lightcurves_transformer", "model.dim=16", "model.num_heads=2",
                               "model.num_layers=2"],
    "lightcurve_gru": ["experiment=lightcurves_gru", "model.hidden=8"],
    "auger_lstm": ["experiment=auger_hexconv", *TINY_AUGER, "model.rnn_hidden=8", "model.station_dim=8",
                   "model.conv_channels=[8,8]", "model.head_dims=[8]"],
    "auger_gru": ["experiment=auger_hexconv", *TINY_AUGER, "model.rnn=gru", "model.rnn_hidden=8",
                  "model.station_dim=8", "model.conv_channels=[8]", "model.head_dims=[8]"],
    "auger_transformer": ["experiment=auger_transformer", *TINY_AUGER, "model.patch=5", "model.temporal_dim=8",
                          "model.temporal_heads=2", "model.temporal_depth=1", "model.window=2", "model.dim=8",
                          "model.num_heads=2", "model.depth=2", "data.classify_primary=true"],
    "auger_perceiver": ["experiment=auger_transformer", "model=auger_perceiver", *TINY_AUGER, "model.latents=3",
                        "model.temporal_dim=8", "model.temporal_heads=2", "model.temporal_depth=1", "model.dim=8",
                        "model.num_heads=2", "model.depth=1"],
}


def run_config(overrides: list[str], tmp_path: Path) -> dict:
    return OmegaConf.to_container(compose_train(overrides, tmp_path), resolve=True)


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


def _dims(graph_input) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_matches_pytorch(name, tmp_path):
    net, dm = build_network(run_config(MODELS[name], tmp_path))
    _randomise(net, seed=len(name))
    net.eval()
    out = tmp_path / "model.onnx"
    summary = export_onnx(net, dm, out, example_batch=3, example_length=9,
                          metadata={"task": dict(dm.task_kwargs)})
    assert summary["check"]["max_abs_diff"] < 1e-4

    model = onnx.load(str(out))
    inputs = {i.name: _dims(i) for i in model.graph.input}
    assert [s["name"] for s in summary["inputs"]] == list(inputs)
    assert all(dims[0] == "batch" for dims in inputs.values()), inputs
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["physics_tf.inputs"] == summary["inputs"]
    assert json.loads((tmp_path / "model.onnx.json").read_text())["inputs"] == summary["inputs"]

    # another batch size and length than the export example (3 × 9) and the export's own check, with padding
    batch = example_inputs(net, dm, batch_size=7, length=14, seed=11)
    mask = batch["mask"]
    assert (~mask).any() and mask.any(), "the test batch must contain padding"
    if name.startswith(("part", "pfn")):
        assert inputs["x"][:2] == ["batch", "particles"]
        assert mask.shape[1] == 14
    if name.startswith("lightcurve"):
        assert inputs["flux"] == ["batch", "observations"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, onnx_feed(session, batch))[0]
    with torch.no_grad():
        ref = net(**batch).numpy()
    assert got.shape == ref.shape == (7, ref.shape[1])
    diff = float(np.abs(got - ref).max())
    print(f"{name}: max |Δ| = {diff:.3g}, export {summary['export_seconds']:.2f} s")
    assert diff < 1e-4, diff


def test_pfn_graph_leaves_out_the_four_vectors_it_ignores(tmp_path):
    net, dm = build_network(run_config(MODELS["pfn"], tmp_path))
    summary = export_onnx(net, dm, tmp_path / "pfn.onnx")
    assert [s["name"] for s in summary["inputs"]] == ["x", "mask"]
    assert summary["ignored_inputs"] == ["v"]


def test_export_leaves_the_network_as_it_was(tmp_path):
    """The tracing aids (no trimming, another pair-bias layout) are undone after the export."""
    net, dm = build_network(run_config(MODELS["part"], tmp_path))
    export_onnx(net, dm, tmp_path / "part.onnx")
    assert net.trim is True
    assert "forward" not in vars(net.pair_embed)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ParT trained for 2 batches on tiny generated jets, with checkpoints (fast_dev_run writes none)."""
    from physics_tf.jets.writers import write_jetclass_root
    from physics_tf.training.run import run_train

    root = tmp_path_factory.mktemp("export")
    out = root / "data" / "generated" / "jets_demo"
    out.mkdir(parents=True)
    for i, split in enumerate(["train", "val", "test"]):
        p, j, lab = synth_jetclass(48, seed=i, classes=(0, 8), max_particles=20)
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    overrides = [*MODELS["part"], f"paths.data_dir={root / 'data'}", "data.batch_size=16", "data.shuffle_buffer=32",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                 "test=false", "logger=none"]
    run_train(compose_train(overrides, root / "run"))
    return root


def _cli(args: list[str]):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "pipelines/export.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_exports_a_trained_checkpoint(trained, tmp_path):
    from physics_tf.training.run import _build

    ckpt = trained / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "onnx" / "part.onnx"
    res = _cli([f"ckpt_path={ckpt}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "max |Δ|" in res.stderr + res.stdout

    # reference: the Lightning task restored from the checkpoint, on a real test batch of the data module
    stored = OmegaConf.create(load_checkpoint(ckpt)[0])
    dm, _, task = _build(stored, tmp_path / "ref", stored.model, stored.task)
    task.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    task.eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert (~batch["mask"]).any()
    from physics_tf.tasks.base import model_inputs

    inputs = model_inputs(batch, task.net)
    with torch.no_grad():
        ref = task(**inputs).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], onnx_feed(session, inputs))[0]
    assert float(np.abs(got - ref).max()) < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["physics_tf.task"]["class_names"] == ["QCD", "Tbqq"]
    assert meta["physics_tf.config"]["model"]["_target_"] == "physics_tf.jets.part.ParticleTransformer"
    assert meta["physics_tf.output"]["shape"] == ["batch", 2]


# ---------------------------------------------------------------------------------------------- bad input
def _one_line_error(res) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("physics_tf: error: "), last
    return last


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    last = _one_line_error(_cli([f"ckpt_path={tmp_path}/nowhere.ckpt", f"hydra.run.dir={tmp_path}/run"]))
    assert "nowhere.ckpt" in last and "not found" in last


def test_cli_unwritable_output_is_one_line(trained, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "model.onnx"  # its parent is a file
    last = _one_line_error(_cli([f"ckpt_path={trained / 'run' / 'checkpoints' / 'last.ckpt'}", f"output={out}",
                                 f"hydra.run.dir={tmp_path}/run"]))
    assert str(out) in last and "cannot write" in last
    assert not list(tmp_path.glob("a_file*/*"))


def test_not_a_physics_tf_checkpoint(tmp_path):
    cfg = OmegaConf.create({"ckpt_path": "", "paths": {"output_dir": str(tmp_path)}})
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}}, foreign)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint\n")
    for path, expected in [(foreign, "not a physics_tf checkpoint"), (text, "not a readable PyTorch checkpoint")]:
        cfg.ckpt_path = str(path)
        with pytest.raises(ExportError) as err:
            run_export(cfg)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and expected in message, message
    assert not list(tmp_path.glob("*.onnx"))


def test_weights_of_another_model_are_refused(tmp_path):
    config = run_config(MODELS["pfn"], tmp_path)
    other, _ = build_network(run_config(MODELS["part"], tmp_path))
    with pytest.raises(ExportError, match="weights do not fit ParticleFlowNetwork"):
        build_network(config, other.state_dict(), source="x.ckpt")
