"""ONNX export: the driver, its files and metadata, the CLI end to end, one-line errors, and models that switch
off their data-dependent shapes themselves. (Every configured model's onnxruntime round trip:
tests/test_model_configs.py.)"""

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

from conftest import write_generated_jets  # noqa: E402
from test_pipelines import compose_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# experiment + overrides that make each network tiny (the architecture is unchanged)
MODELS = {
    "part": ["experiment=jets_part", "model.embed_dims=[16,32,16]", "model.pair_embed_dims=[8,8]",
             "model.num_heads=2", "model.num_layers=2", "model.num_cls_layers=1"],
    "pfn": ["experiment=jets_pfn", "model.phi_dims=[16,16]", "model.f_dims=[16]"],
}


def run_config(overrides: list[str], tmp_path: Path) -> dict:
    return OmegaConf.to_container(compose_train(overrides, tmp_path), resolve=True)


def test_pfn_graph_leaves_out_the_four_vectors_it_ignores(tmp_path):
    net, dm = build_network(run_config(MODELS["pfn"], tmp_path))
    summary = export_onnx(net, dm, tmp_path / "pfn.onnx")
    assert [s["name"] for s in summary["inputs"]] == ["x", "mask"]
    assert summary["ignored_inputs"] == ["v"]


def test_models_switch_off_data_dependent_shapes_only_while_exporting(tmp_path, monkeypatch):
    """No patching: under ``torch.onnx.is_in_onnx_export()`` ParT neither trims nor packs and its pair bias takes
    the exportable layout — the same function; outside an export nothing changes (trimming included)."""
    import torch.onnx

    from physics_tf.jets.pairwise import PairEmbedding

    net, dm = build_network(run_config(MODELS["part"], tmp_path))
    batch = example_inputs(net, dm, batch_size=4, length=11, seed=3)
    with torch.no_grad():
        ref = net(**batch)
        bias = net.pair_embed(batch["v"], batch["mask"], key_mask_value=float("-inf"))
        seen = []
        dense = PairEmbedding.forward

        def spy(self, v, mask, key_mask_value=None):
            seen.append(mask.shape[1])
            return dense(self, v, mask, key_mask_value)

        monkeypatch.setattr(PairEmbedding, "forward", spy)
        net(**batch)
        assert seen == [10]  # trimmed to the longest jet (11 − 1 particles)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        torch.testing.assert_close(net(**batch), ref, atol=1e-5, rtol=1e-5)
        assert seen[-1] == 11  # not trimmed while exporting
        torch.testing.assert_close(net.pair_embed(batch["v"], batch["mask"], key_mask_value=float("-inf")), bias)
    export_onnx(net, dm, tmp_path / "part.onnx")
    assert "forward" not in vars(net.pair_embed) and net.trim is True


def test_a_data_module_without_export_hooks_is_one_line(tmp_path):
    net, _ = build_network(run_config(MODELS["pfn"], tmp_path))
    with pytest.raises(ExportError, match="has no ONNX export hooks") as err:
        export_onnx(net, object(), tmp_path / "x.onnx")
    assert "\n" not in str(err.value) and not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ParT trained for 2 batches on tiny generated jets, with checkpoints (fast_dev_run writes none)."""
    from physics_tf.training.run import run_train

    root = tmp_path_factory.mktemp("export")
    write_generated_jets(root / "data", 48, max_particles=20)
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
    for path, expected in [(foreign, "not a physics_tf checkpoint"), (text, "cannot read the checkpoint")]:
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


@pytest.mark.parametrize("name", ["jets_demo", "lightcurves_transformer", "auger_transformer"])
def test_checkpoints_written_before_the_move_export(name, tmp_path):
    """Tiny checkpoints of the code before the move to one wing per analysis (old ``_target_`` strings, ParT and
    the light-curve transformer with their class token and class blocks on the model itself) still export."""
    from physics_tf.nn.state_keys import rename_legacy_key

    ckpt = ROOT / "tests" / "data" / "legacy" / f"{name}.ckpt"
    cfg = OmegaConf.create({"ckpt_path": str(ckpt), "output": str(tmp_path / "model.onnx"),
                            "paths": {"output_dir": str(tmp_path)}})
    summary = run_export(cfg)
    assert summary["check"]["max_abs_diff"] < 1e-4
    assert summary["model"].startswith(f"physics_tf.{name.split('_')[0]}.")  # the current class
    config, state = load_checkpoint(ckpt)
    net, _ = build_network(config, state, source=ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    stored = {k.removeprefix("net."): v for k, v in raw.items() if k.startswith("net.")}
    current = net.state_dict()
    assert len(current) == len(stored)
    renames = getattr(type(net), "LEGACY_STATE_KEYS", {})  # ParT, light-curve transformer: the pool's names
    for key, value in stored.items():  # every stored tensor is in the network, under its current name
        assert torch.equal(current[rename_legacy_key(key, renames)], value), key
