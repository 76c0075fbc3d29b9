"""A user's own jet tree (tree ``events``, ``pf_*`` particles, ``is_top`` / ``is_qcd`` flags or an integer ``label``)
trains by config alone, from a data config kept outside the package; the three label forms give the same classes;
bad label configs and values are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import yaml

from physics_tf.data.errors import ConfigError, InvalidValueError
from physics_tf.jets.data import JetDataModule
from physics_tf.jets.features import JetDataConfig, chunk_to_arrays
from physics_tf.jets.readers import make_reader

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "conf" / "data" / "mytree.yaml"
PF = ("pf_px", "pf_py", "pf_pz", "pf_e", "pf_deta", "pf_dphi")


def write_user_tree(path: Path, n: int, seed: int = 0, *, integer_label: bool = False, label=None) -> np.ndarray:
    """The issue's tree: ``events`` with jagged pf_* (one shared counter) and per-jet int flags is_top / is_qcd, or
    one integer ``label`` (0 = QCD, 1 = top; ``label`` overrides the values). Written with uproot's ``mktree`` (a
    TTree). Top jets are harder and hold more particles, so a model learns something. Returns the truth (n,)."""
    import uproot

    rng = np.random.default_rng(seed)
    top = rng.integers(0, 2, n)
    counts = rng.integers(2, 10, n) + 6 * top
    total = int(counts.sum())
    pt = rng.uniform(1.0, 40.0, total) * np.repeat(np.where(top == 1, 2.5, 1.0), counts)
    eta, phi = rng.normal(0, 0.3, total), rng.uniform(-np.pi, np.pi, total)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    values = {"pf_px": px, "pf_py": py, "pf_pz": pz, "pf_e": np.sqrt(px**2 + py**2 + pz**2) + 0.1,
              "pf_deta": eta, "pf_dphi": rng.normal(0, 0.3, total)}
    branches = {k: ak.unflatten(v.astype(np.float32), counts) for k, v in values.items()}
    if integer_label:
        branches["label"] = (top if label is None else np.asarray(label)).astype(np.int32)
    else:
        branches["is_top"], branches["is_qcd"] = top.astype(np.int32), (1 - top).astype(np.int32)
    types = {k: ("var * float32" if k.startswith("pf_") else np.int32) for k in branches}
    with uproot.recreate(path) as f:
        f.mktree("events", types, counter_name=lambda _counted: "npf")
        f["events"].extend(branches)
    return top


def _example(**change) -> dict:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.update(change)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _read(path: Path, data: dict):
    cfg = JetDataConfig.from_dict({**data, "files": {}})
    out = [chunk_to_arrays(c, cfg, source=str(path), entry_start=0, return_entries=True)
           for c in make_reader(path, cfg).iterate(0, None, 100_000)]
    return cfg, out[0][0], out[0][1]


def test_three_label_forms_give_the_same_classes(tmp_path):
    flags, integer = tmp_path / "flags.root", tmp_path / "int.root"
    truth = write_user_tree(flags, 60, seed=1)
    write_user_tree(integer, 60, seed=1, integer_label=True)
    forms = {
        "expressions": (flags, {"qcd": "is_qcd == 1", "top": "is_top == 1"}, ["qcd", "top"]),
        "expressions (not / and)": (flags, {"qcd": "not is_top", "top": "is_top == 1 and is_qcd == 0"}, ["qcd", "top"]),
        "expression list": (flags, [{"qcd": "is_top == 0"}, {"top": "is_top != 0"}], ["qcd", "top"]),
        "one-hot": (flags, ["is_qcd", "is_top"], ["is_qcd", "is_top"]),
        "weaver custom": (flags, {"type": "custom", "value": {"QCD": "is_qcd > 0", "top": "is_top > 0"}},
                          ["QCD", "top"]),
        "integer": (integer, {"branch": "label", "classes": ["QCD", "top"]}, ["QCD", "top"]),
        "the example's own": (flags, _example()["labels"], ["qcd", "top"]),
    }
    first_x = None
    for name, (path, labels, classes) in forms.items():
        cfg, arrays, entries = _read(path, _example(labels=labels))
        assert cfg.class_names == classes, name
        np.testing.assert_array_equal(entries, np.arange(60), err_msg=name)
        np.testing.assert_array_equal(arrays.y, truth, err_msg=name)
        first_x = arrays.x if first_x is None else first_x
        np.testing.assert_array_equal(arrays.x, first_x, err_msg=name)  # same jets, same features
    # reversed class order: the indices follow the config
    _, arrays, _ = _read(flags, _example(labels={"top": "is_top == 1", "qcd": "is_top == 0"}))
    np.testing.assert_array_equal(arrays.y, 1 - truth)
    assert np.isfinite(first_x).all() and first_x.shape == (60, 128, 7)


def _one_line(err, *parts):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert str(part) in msg, msg


def test_bad_labels_are_one_line(tmp_path):
    integer = tmp_path / "int.root"
    write_user_tree(integer, 12, seed=2, integer_label=True, label=[0, 1, 1, 0, 2, 0, 1, 1, 0, 0, 1, 0])
    with pytest.raises(InvalidValueError) as err:  # value 2 with two classes
        _read(integer, _example(labels={"branch": "label", "classes": ["QCD", "top"]}))
    _one_line(err, integer, "field 'label'", "entry 4", "outside 0...1")
    stats: dict = {}
    cfg = JetDataConfig.from_dict({**_example(labels={"branch": "label", "classes": ["QCD", "top"]}),
                                   "files": {}, "skip_unlabelled": True})
    arrays = chunk_to_arrays(next(make_reader(integer, cfg).iterate()), cfg, source=str(integer), stats=stats)
    assert len(arrays.y) == 11 and stats["skipped_no_label"] == 1

    flags = tmp_path / "flags.root"
    truth = write_user_tree(flags, 12, seed=3)
    with pytest.raises(InvalidValueError) as err:  # a jet matching two classes
        _read(flags, _example(labels={"top": "is_top == 1", "any": "is_top >= 0"}))
    _one_line(err, flags, f"entry {int(np.argmax(truth == 1))} matches several classes", "top ('is_top == 1')")
    with pytest.raises(InvalidValueError) as err:  # QCD jets match none
        _read(flags, _example(labels={"top": "is_top == 1", "w": "is_top == 7"}))
    _one_line(err, flags, f"entry {int(np.argmax(truth == 0))} matches none", "skip_unlabelled")
    with pytest.raises(ConfigError) as err:  # a per-particle expression
        _read(flags, _example(labels={"top": "pf_px > 0", "qcd": "is_qcd == 1"}))
    _one_line(err, flags, "field 'labels.top'", "one value per jet")
    for bad, what in [({"branch": "label"}, "integer form"), ({"type": "fancy", "value": []}, "weaver-style"),
                      (["is_top", "is_top"], "duplicate"), ({"a": "is_top = 1"}, "cannot parse"),
                      ({"a": "__import__('os')"}, "not allowed"), ([], "at least one label")]:
        with pytest.raises(ConfigError) as err:
            JetDataConfig.from_dict({**_example(labels=bad), "files": {}})
        _one_line(err, what)
    with pytest.raises(ConfigError) as err:
        JetDataModule(**{**_example(), "files": {}, "background": "signal"})
    _one_line(err, "field 'background'", "'signal' is not one of the classes ['qcd', 'top']")
    assert JetDataModule(**{**_example(), "files": {}, "background": "QCD"}).task_kwargs == {
        "class_names": ["qcd", "top"], "background": "qcd"}


TINY = ["model=pfn", "trainer.max_epochs=1", "data.batch_size=32", "data.num_workers=0", "data.shuffle_buffer=64",
        "data.pad_length=24", "logger=csv"]


def _compose(overrides: list[str], output_dir: Path):
    """The train config as ``pipelines/train.py <overrides>`` composes it (in process: no interpreter start-up)."""
    from test_pipelines import compose_train

    return compose_train(overrides, output_dir)


def test_own_tree_with_integer_labels_trains_by_config_alone(tmp_path, monkeypatch):
    """A data config of the user's, outside the package (the documented example with the integer-label form), found
    through ``hydra.searchpath=[file://...]``, trains on the issue's tree with an integer ``label`` branch; the class
    names reach metrics.json and predictions.npz. The same file is found through PHYSICS_TF_CONFIG_DIR (a copy of
    conf/ with the user's file added)."""
    from omegaconf import OmegaConf

    from physics_tf.config import config_dir
    from physics_tf.training.run import run_train

    myconf = tmp_path / "myconf"
    (myconf / "data").mkdir(parents=True)
    text = EXAMPLE.read_text().replace('  qcd: "is_qcd == 1"\n  top: "is_top == 1"\n', "")
    text = text.replace("labels:\n", "labels: {branch: label, classes: [QCD, top]}\n", 1)
    assert yaml.safe_load(text)["labels"] == {"branch": "label", "classes": ["QCD", "top"]}
    (myconf / "data" / "mytree_int.yaml").write_text(text)
    data = tmp_path / "data" / "mytree"
    data.mkdir(parents=True)
    for split, n, seed in [("train", 192, 0), ("val", 64, 1), ("test", 96, 2)]:
        write_user_tree(data / f"{split}_000.root", n, seed, integer_label=True)
    run = tmp_path / "run"
    metrics = run_train(_compose([f"hydra.searchpath=[file://{myconf}]", "data=mytree_int",
                                  f"paths.data_dir={tmp_path / 'data'}", *TINY], run))
    assert metrics["num_jets"] == 96 and "rej50_top" in metrics and "rej50_QCD" not in metrics, sorted(metrics)
    assert json.loads((run / "metrics.json").read_text())["num_jets"] == 96
    with np.load(run / "predictions.npz") as pred:
        assert pred["class_names"].tolist() == ["QCD", "top"] and pred["probs"].shape == (96, 2)

    # PHYSICS_TF_CONFIG_DIR: a whole config directory of the user's (a copy of conf/ plus their file)
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    shutil.copy(myconf / "data" / "mytree_int.yaml", conf / "data")
    monkeypatch.setenv("PHYSICS_TF_CONFIG_DIR", str(conf))
    assert config_dir() == conf.resolve()
    cfg = _compose(["data=mytree_int", *TINY], tmp_path / "unused")
    assert cfg.data.treename == "events"
    assert JetDataConfig(files={}, labels=OmegaConf.to_container(cfg.data.labels)).class_names == ["QCD", "top"]


def test_replacing_features_from_the_command_line_is_one_override():
    """README: 'data.features=[...]' replaces the configured features (a list) in one override."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from physics_tf.config import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            for data in ("jetclass", "jets_demo", "toptagging"):
                cfg = compose("train", overrides=[f"data={data}", 'data.features=[part_pt_log, part_deta, '
                                                  '{part_logerel: {expr: "log(part_energy / jet_energy)", '
                                                  'subtract: -4.7, multiply: 0.7}}]'])
                feats = JetDataConfig.from_dict({**cfg.data, "files": {}})
                assert feats.feature_names == ["part_pt_log", "part_deta", "part_logerel"], data
                assert feats.feature_specs[0].subtract == 1.7 and feats.feature_specs[2].subtract == -4.7
            cfg = compose("train", overrides=["data=jetclass", 'data.labels=[{qcd: "label_QCD == 1"}, '
                                              '{top: "label_Tbqq == 1"}]', "data.features=kin"])
            labels = OmegaConf.to_container(cfg.data.labels)
            assert JetDataConfig(files={}, labels=labels, features=cfg.data.features).class_names == ["qcd", "top"]
    finally:
        GlobalHydra.instance().clear()


def test_config_dir_variable_with_only_the_users_files_adds_to_the_search_path(monkeypatch, tmp_path):
    """PHYSICS_TF_CONFIG_DIR pointing at a folder with only data/mytree.yaml (no train.yaml): the package's configs
    stay, the user's folder is searched too (README: "Your own tree, with its data config outside the package")."""
    import sys

    from physics_tf.cli import hydra_entry
    from physics_tf.config import config_dir

    (tmp_path / "data").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "data" / "mytree.yaml")
    monkeypatch.setenv("PHYSICS_TF_CONFIG_DIR", str(tmp_path))
    assert (config_dir() / "train.yaml").is_file() and config_dir() != tmp_path.resolve()
    seen = {}
    monkeypatch.setattr(sys, "argv", ["train", "data=mytree", "model=pfn", f"hydra.run.dir={tmp_path / 'run'}",
                                      "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"])
    hydra_entry("train", lambda cfg: seen.update(treename=cfg.data.treename, model=cfg.model._target_))()
    assert seen == {"treename": "events", "model": "physics_tf.jets.pfn.ParticleFlowNetwork"}, seen
