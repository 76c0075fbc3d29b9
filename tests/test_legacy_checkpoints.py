"""Checkpoints written before the move to one wing per analysis still evaluate, export and resume.

tests/data/legacy/ holds three tiny checkpoints written by the pre-move code (ParT on jets_demo, the light-curve
transformer, the Auger transformer; one epoch each, ``trainer.max_epochs=1``, the overrides of :data:`TINY`, on data
made as in :func:`legacy_data`). They name the old modules (``physics_tf.models.part.ParticleTransformer``, ...) and,
for ParT and the light-curve transformer, the old parameter names (``cls_token``, ``cls_blocks.*``, ``norm.*``);
:func:`physics_tf.training.legacy.upgrade_checkpoint` maps both.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

from physics_tf.training.legacy import LEGACY_TARGETS, upgrade_checkpoint
from physics_tf.training.run import run_evaluate, run_train

from conftest import write_generated_layout
from test_pipelines import compose_train

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
# the overrides the checkpoints were trained with (besides trainer.max_epochs=1)
TINY = {
    "jets_demo": ["model.embed_dims=[16,16]", "model.pair_embed_dims=[8]", "model.num_heads=2", "model.num_layers=1",
                  "model.num_cls_layers=1", "data.batch_size=16", "data.shuffle_buffer=32"],
    "lightcurves_transformer": ["model.dim=16", "model.num_heads=2", "model.num_layers=1", "data.batch_size=8",
                                "data.max_length=32"],
    "auger_transformer": ["model.temporal_dim=16", "model.temporal_heads=2", "model.temporal_depth=1", "model.dim=16",
                          "model.num_heads=2", "model.depth=1", "model.pair_hidden=8", "model.head_hidden=16",
                          "data.batch_size=8", "data.chunk_events=16"],
}
DATA = {"jets_demo": "jets_demo", "lightcurves_transformer": "lightcurves_sim", "auger_transformer": "auger_sim"}
COUNT = {"jets_demo": "num_jets", "lightcurves_transformer": "num_objects", "auger_transformer": "num_events"}
N_TEST = {"jets_demo": 64, "lightcurves_transformer": 12, "auger_transformer": 16}
# test metrics of the pre-move code's evaluate (pipelines/evaluate.py ckpt_path=... data=... on legacy_data); the
# upgraded checkpoint on the current code must give the same numbers
REFERENCE = {
    "jets_demo": {"accuracy": 0.421875, "auc_macro": 0.5344129800796509},
    "lightcurves_transformer": {"accuracy": 0.25, "auc_macro": 0.6060605645179749,
                                "plasticc_logloss": 2.4548000859946226},
    "auger_transformer": {"xmax.bias": -7.755901336669922, "xmax.resolution": 32.64812739147857},
}


@pytest.fixture(scope="module")
def legacy_data(tmp_path_factory):
    """The data the checkpoints were trained on: 64 jets per split, 24 / 12 / 12 light curves, 32 / 16 / 16 events."""
    return write_generated_layout(tmp_path_factory.mktemp("legacy_data"), jets=64, max_particles=12,
                                  lightcurves=(24, 12, 12), auger=(32, 16, 16))


def _legacy(name: str) -> dict:
    return torch.load(LEGACY / f"{name}.ckpt", map_location="cpu", weights_only=True)


def _renames(legacy: dict) -> dict[str, str]:
    """The current model class's {old parameter prefix: new prefix}."""
    target = LEGACY_TARGETS[legacy["physics_tf_config"]["model"]["_target_"]]
    return dict(getattr(get_class(target), "LEGACY_STATE_KEYS", {}) or {})


def test_the_checkpoints_are_pre_move():
    """The fixtures really hold old module paths and (ParT, light-curve transformer) old parameter names."""
    for name in TINY:
        legacy = _legacy(name)
        assert legacy["physics_tf_config"]["model"]["_target_"].startswith("physics_tf.models.")
    assert "net.cls_token" in _legacy("jets_demo")["state_dict"]
    assert "net.cls_token" in _legacy("lightcurves_transformer")["state_dict"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_upgrade_maps_targets_and_keys_and_is_idempotent(name):
    from physics_tf.nn.state_keys import rename_legacy_key

    legacy = _legacy(name)
    upgraded = upgrade_checkpoint(copy.deepcopy(legacy))
    config = upgraded["physics_tf_config"]
    targets = [config[k]["_target_"] for k in ("data", "model", "task")]
    targets += [c["_target_"] for c in config["callbacks"].values() if isinstance(c, dict) and "_target_" in c]
    assert not [t for t in targets if t in LEGACY_TARGETS or t.startswith(("physics_tf.models.", "physics_tf.data."))]
    for target in targets:
        get_class(target)  # every mapped target exists
    renames = _renames(legacy)
    assert list(upgraded["state_dict"]) == [f"net.{rename_legacy_key(k[4:], renames)}" for k in legacy["state_dict"]]
    assert all(torch.equal(a, b) for a, b in zip(legacy["state_dict"].values(), upgraded["state_dict"].values()))
    again = upgrade_checkpoint(copy.deepcopy(upgraded))
    assert repr(again) == repr(upgraded)


@pytest.mark.parametrize("name", sorted(TINY))
def test_legacy_checkpoint_evaluates(name, legacy_data, tmp_path):
    data_overrides = [o for o in TINY[name] if o.startswith("data.")]
    cfg = compose_train([f"ckpt_path={LEGACY / name}.ckpt", f"data={DATA[name]}", f"paths.data_dir={legacy_data}",
                         *data_overrides], tmp_path, config_name="evaluate")
    metrics = run_evaluate(cfg)
    assert metrics[COUNT[name]] == N_TEST[name]
    for key, value in REFERENCE[name].items():
        got = metrics
        for part in key.split("."):
            got = got[part]
        assert got == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("name", sorted(TINY))
def test_legacy_checkpoint_exports_to_onnx(name, tmp_path):
    from physics_tf.training.export import run_export

    output = tmp_path / "model.onnx"
    cfg = compose_train([f"ckpt_path={LEGACY / name}.ckpt", f"output={output}"], tmp_path, config_name="export")
    summary = run_export(cfg)
    assert output.is_file()
    assert summary["model"] == LEGACY_TARGETS[_legacy(name)["physics_tf_config"]["model"]["_target_"]]
    assert summary["check"]["max_abs_diff"] < 1e-3  # onnxruntime vs PyTorch (export_onnx's own check is stricter)


class OptimizerProbe:
    """Lightning callback: at the start of training (after the checkpoint is restored) save, per optimizer param
    group, ``[(parameter name, parameter shape, Adam exp_avg)]`` in the group's order to ``path``."""

    def __new__(cls, path: str):
        import lightning as L

        class _Probe(L.Callback):
            def on_train_start(self, trainer, pl_module):
                optimizer = trainer.optimizers[0]
                names = {id(p): n for n, p in pl_module.net.named_parameters()}
                torch.save([[(names[id(p)], list(p.shape), optimizer.state[p]["exp_avg"].clone()) for p in g["params"]]
                            for g in optimizer.param_groups], path)

        return _Probe()


@pytest.mark.parametrize("name", sorted(TINY))
def test_legacy_checkpoint_resumes_with_the_optimizer_state_on_the_right_parameters(name, legacy_data, tmp_path):
    """Resumed for a second epoch: training finishes, and every Adam moment sits on the parameter it belonged to
    (by name where the checkpoint stores the names: e.g. the renamed ``cls_token``; by shape everywhere)."""
    from physics_tf.nn.state_keys import rename_legacy_key

    probe = tmp_path / "probe.pt"
    ckpt = LEGACY / f"{name}.ckpt"
    metrics = run_train(compose_train(
        [f"experiment={name}", f"paths.data_dir={legacy_data}", *TINY[name], "trainer.max_epochs=2", "logger=none",
         "callbacks.progress_bar.refresh_rate=0", f"ckpt_path={ckpt}", f"+callbacks.probe._target_={__name__}"
         ".OptimizerProbe", f"+callbacks.probe.path={probe}"], tmp_path / "run"))
    assert metrics[COUNT[name]] == N_TEST[name]
    legacy = _legacy(name)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * legacy["global_step"]

    groups = torch.load(probe, weights_only=True)
    saved = legacy["optimizer_states"][0]
    assert len(groups) == len(saved["param_groups"])
    renames = _renames(legacy)
    checked = 0
    for live, group in zip(groups, saved["param_groups"]):
        assert len(live) == len(group["params"])
        assert all(shape == list(moment.shape) for _, shape, moment in live)
        moments = {param: moment for param, _, moment in live}
        for old, pid in zip(group.get("names") or [], group["params"]):
            assert torch.equal(moments[rename_legacy_key(old, renames)], saved["state"][pid]["exp_avg"]), old
            checked += old == "cls_token"
    if name != "auger_transformer":  # the pre-move regression task stored no parameter names
        assert checked == 1
        assert renames, "the model class lost LEGACY_STATE_KEYS"
