"""End to end: Hydra compose → data module → model → task → Trainer, for every experiment and data config."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from physics_tf.config import config_dir
from physics_tf.jets.writers import write_jetclass_root, write_toptagging_h5
from physics_tf.training.checkpoints import load_run_config
from physics_tf.training.run import run_evaluate, run_train

from conftest import synth_jetclass

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
FAST = ["trainer.fast_dev_run=true", "data.batch_size=16"]
FAST_DATA = {"jets": ["data.shuffle_buffer=64"], "lightcurves": ["data.max_length=32"],
             "auger": ["data.batch_size=8", "data.chunk_events=16"]}  # per wing (the experiment name's prefix)
# what every experiment's test stage reports and draws, per wing
RESULTS = {"jets": ({"accuracy", "auc_macro", "num_jets"}, ["roc.png", "confusion.png"]),
           "lightcurves": ({"accuracy", "auc_macro", "num_objects"}, ["roc.png", "confusion.png"]),
           "auger": ({"num_events"}, ["resolution.png"])}


def compose_train(overrides: list[str], output_dir: Path, config_name: str = "train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def with_pretrained(cfg, tmp_path):
    """A fine-tuning experiment's config with ``task.pretrained`` set to a network of its model config saved with
    another head (4 classes), as a user's pre-training on more classes would leave it; other configs unchanged."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import open_dict

    if cfg.task.get("pretrained") != "required":
        return cfg
    datamodule = instantiate(cfg.data)
    torch.manual_seed(1)
    net = instantiate(cfg.model, **{**datamodule.model_dims, "num_classes": 4})
    torch.save(net.state_dict(), tmp_path / "pretrained.pt")
    with open_dict(cfg):
        cfg.task.pretrained = str(tmp_path / "pretrained.pt")
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_fast_dev_run(experiment, data_dir, tmp_path):
    wing = experiment.split("_")[0]
    cfg = compose_train([f"experiment={experiment}", f"paths.data_dir={data_dir}", *FAST, *FAST_DATA[wing]], tmp_path)
    cfg = with_pretrained(cfg, tmp_path)
    assert cfg.experiment_name == experiment
    metrics = run_train(cfg)
    keys, plots = RESULTS[wing]
    assert keys <= set(metrics), sorted(metrics)
    for name in ["metrics.json", "config.yaml", *plots]:
        assert (tmp_path / name).is_file(), name


def test_experiments_exist_for_every_model():
    assert {"jets_demo", "jets_part", "jets_part_plain", "jets_pfn", "lightcurves_transformer", "lightcurves_gru",
            "auger_hexconv", "auger_transformer"} <= set(EXPERIMENTS)


def test_train_checkpoint_then_evaluate_reproduces_metrics(data_dir, tmp_path):
    overrides = ["experiment=jets_pfn", f"paths.data_dir={data_dir}", "data.batch_size=32",
                 "trainer.max_epochs=2", "logger=csv"]
    metrics = run_train(compose_train(overrides, tmp_path / "train"))
    ckpts = sorted((tmp_path / "train" / "checkpoints").glob("epoch*.ckpt"))
    assert len(ckpts) == 1 and (tmp_path / "train" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "train" / "csv" / "metrics.csv").is_file()
    stored = load_run_config(ckpts[0])
    assert stored["model"]["_target_"] == "physics_tf.jets.pfn.ParticleFlowNetwork"

    cfg = compose_train([f"ckpt_path={ckpts[0]}"], tmp_path / "eval", config_name="evaluate")
    again = run_evaluate(cfg)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["auc_macro"] == pytest.approx(metrics["auc_macro"])


def test_jetclass_and_toptagging_data_configs(tmp_path):
    """The real-layout data configs work when pointed at files by config only."""
    p, j, lab = synth_jetclass(80, seed=5, classes=tuple(range(10)), max_particles=15)
    jc = write_jetclass_root(tmp_path / "jetclass.root", p, j, lab)
    files = f"[{jc}]"
    cfg = compose_train(["data=jetclass", "model=pfn", *FAST, f"data.files.train={files}",
                         f"data.files.val={files}", f"data.files.test={files}"], tmp_path / "jc")
    assert run_train(cfg)["num_jets"] > 0

    import numpy as np

    rng = np.random.default_rng(0)
    n, k = 64, 30
    pt = np.sort(rng.uniform(1, 100, (n, k)), axis=1)[:, ::-1] * (np.arange(k) < rng.integers(3, k, n)[:, None])
    eta, phi = rng.normal(0, 0.3, (n, k)), rng.normal(0, 0.3, (n, k))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    h5 = write_toptagging_h5(tmp_path / "top.h5", pt * np.cosh(eta), px, py, pz, rng.integers(0, 2, n))
    files = f"[{h5}]"
    cfg = compose_train(["data=toptagging", "model=part_small", *FAST, f"data.files.train={files}",
                         f"data.files.val={files}", f"data.files.test={files}"], tmp_path / "top")
    assert run_train(cfg)["num_jets"] > 0


def test_wandb_offline_logger(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train(["experiment=jets_pfn", f"paths.data_dir={data_dir}", "logger=many", *FAST], tmp_path)
    assert cfg.logger.wandb.name == f"jets_pfn-pfn-{cfg.seed}"
    run_train(cfg)
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run written"


def _cli(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300):
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def cli_here(args: list[str], monkeypatch, capsys) -> subprocess.CompletedProcess:
    """``pipelines/train.py ARGS`` run in this process through the console script's entry point (the same
    ``@hydra.main``, ``sys.argv`` as typed), for one-line errors that need no process of their own: without the
    ~10 s of imports a new interpreter costs. Returns the exit status and what it printed, as :func:`_cli` does."""
    import physics_tf.cli as cli

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # (the entry point sets it to 1; restored afterwards)
    monkeypatch.setattr(sys, "argv", ["pipelines/train.py", *args])
    capsys.readouterr()
    GlobalHydra.instance().clear()
    code = 0
    try:
        cli.train()
    except SystemExit as err:
        code = err.code
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()  # Hydra's file handler of the run
    out = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out.out, out.err)


def test_cli_train_from_command_line(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    res = _cli(["pipelines/train.py", "experiment=jets_demo", f"paths.data_dir={data_dir}", *FAST,
                f"hydra.run.dir={run_dir}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["num_jets"] > 0
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_cli_reports_missing_data_clearly(tmp_path):
    res = _cli(["pipelines/train.py", "experiment=jets_demo", f"paths.data_dir={tmp_path}/nowhere",
                f"hydra.run.dir={tmp_path}/run", *FAST])
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("physics_tf: error:") and "nowhere" in last and "pipelines/generate.py" in last
    assert "Traceback" not in res.stderr


def test_ddp_two_cpu_processes(data_dir, tmp_path):
    """DDP (gloo) on 2 CPU processes through the CLI: both ranks train the same number of batches, no hang."""
    run_dir = tmp_path / "ddp"
    res = _cli(["pipelines/train.py", "experiment=jets_pfn", "trainer=ddp_cpu", f"paths.data_dir={data_dir}",
                "data.batch_size=16", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_jets"] >= 120  # the test stage gathers every rank's jets
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_cli_error_from_dataloader_worker_is_one_line(tmp_path, monkeypatch, capsys):
    """A bad file read inside a DataLoader worker process still ends in one line naming file and field."""
    out = tmp_path / "data" / "generated" / "jets_demo"
    out.mkdir(parents=True)
    p, j, lab = synth_jetclass(60, seed=1, classes=(0, 8), max_particles=10)
    p["part_px"] = p["part_px"] * float("nan")
    for split in ["train", "val", "test"]:
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    res = cli_here(["experiment=jets_pfn", f"paths.data_dir={tmp_path / 'data'}", *FAST, "data.num_workers=1",
                    f"hydra.run.dir={tmp_path}/run"], monkeypatch, capsys)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("physics_tf: error: "), last
    assert "_000.root" in last and "part_px" in last, last


def test_resume_from_checkpoint_equals_uninterrupted_run(data_dir, tmp_path):
    """Stop after epoch 1 of 2, resume from last.ckpt: the final weights equal those of a run that never stopped."""
    import torch

    common = ["experiment=jets_demo", f"paths.data_dir={data_dir}", "data.batch_size=32", "trainer.max_epochs=2",
              "model.dropout=0.1", "model.attn_dropout=0.1", "test=false", "logger=none"]
    run_train(compose_train(common, tmp_path / "full"))
    run_train(compose_train([*common, "+callbacks.stop._target_=conftest.StopAfterEpoch", "+callbacks.stop.epoch=0"],
                            tmp_path / "part1"))
    first = torch.load(tmp_path / "part1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["epoch"] == 0
    run_train(compose_train([*common, f"ckpt_path={tmp_path / 'part1' / 'checkpoints' / 'last.ckpt'}"], tmp_path / "part2"))
    full_ckpt = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert full_ckpt["epoch"] == 1  # last.ckpt is the last epoch even when val/auc did not improve
    full = full_ckpt["state_dict"]
    resumed = torch.load(tmp_path / "part2" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
    assert not all(torch.equal(first["state_dict"][k], full[k]) for k in full)  # the second epoch did train


def test_bf16_mixed_precision_run(data_dir, tmp_path):
    cfg = compose_train(["experiment=jets_demo", f"paths.data_dir={data_dir}", *FAST, "trainer.precision=bf16-mixed"],
                        tmp_path)
    assert run_train(cfg)["num_jets"] > 0


class PreemptAtStep:
    """Lightning callback for resume tests: the SIGUSR1 pre-emption path (``hpc_ckpt_<n>.ckpt`` written at a training
    step, then :class:`physics_tf.training.cluster.Preempted`) triggered at global step ``step`` instead of by a signal."""

    def __new__(cls, step: int):
        from physics_tf.training.cluster import SlurmPreemption

        class _Preempt(SlurmPreemption):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.requested = trainer.global_step >= step
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        return _Preempt(requeue=False)


TINY_PART = ["model.embed_dims=[16,16]", "model.pair_embed_dims=[8]", "model.num_heads=2", "model.num_layers=1",
             "model.num_cls_layers=1", "model.dropout=0.1", "model.attn_dropout=0.1", "model.activation_dropout=0.1"]
JET_DATA = ["data.batch_size=16", "data.shuffle_buffer=64", "data.num_workers=0"]
LIGHTCURVE_DATA = ["data.batch_size=8", "data.max_length=32"]
AUGER_DATA = ["data.batch_size=8", "data.chunk_events=16"]
# per experiment: tiny model overrides (dropout on where the model has it; light-curve and Auger augmentation are on
# by default) so the paper-size models resume in seconds
MID_EPOCH = {
    "jets_demo": [*JET_DATA, *TINY_PART],
    "jets_part": [*JET_DATA, *TINY_PART],
    "jets_part_plain": [*JET_DATA, *TINY_PART],
    "jets_part_finetune": [*JET_DATA, *TINY_PART],  # task.pretrained: a saved network of the same size (with_pretrained)
    "jets_pfn": [*JET_DATA, "model.phi_dims=[16,16]", "model.f_dims=[16]"],
    "jets_pcnn": [*JET_DATA, "model.conv_params=[[8],[8],[16,16]]", "model.fc_dims=[16]"],
    "jets_particlenet": [*JET_DATA, "model.conv_params=[[4,[8,8]],[4,[16]]]", "model.fc_dims=[16]"],
    "jets_lorentznet": [*JET_DATA, "model.hidden=8", "model.num_layers=2"],
    "lightcurves_transformer": [*LIGHTCURVE_DATA, "model.dim=16", "model.num_heads=2", "model.num_layers=1"],
    "lightcurves_gru": [*LIGHTCURVE_DATA, "model.hidden=16"],
    "auger_hexconv": [*AUGER_DATA, "model.rnn_hidden=8", "model.station_dim=8", "model.conv_channels=[8,8]",
                      "model.head_dims=[16]", "model.dropout=0.1"],
    "auger_transformer": [*AUGER_DATA, "model.temporal_dim=16", "model.temporal_heads=2", "model.temporal_depth=1",
                          "model.dim=16", "model.num_heads=2", "model.depth=1", "model.pair_hidden=8",
                          "model.head_hidden=16", "model.dropout=0.1"],
}



@pytest.mark.parametrize("experiment", EXPERIMENTS)  # every experiment, ~2-4 s each with the tiny overrides
def test_resume_mid_epoch_equals_uninterrupted_run(experiment, data_dir, tmp_path):
    """Pre-empted inside epoch 2 of 2 (hpc_ckpt at a training step), resumed: the final weights are bit-identical
    to those of a run that never stopped, and so are the test metrics; no "dataloader is not resumable" warning.

    The test stage uses the last weights: resumed into another run directory, ModelCheckpoint starts its best-model
    tracking afresh (Lightning ignores a best path from another directory); a requeued SLURM job keeps its directory.
    """
    import warnings

    import torch

    from physics_tf.training.cluster import Preempted

    assert experiment in MID_EPOCH, f"give experiment={experiment} tiny overrides in MID_EPOCH"
    common = [f"experiment={experiment}", f"paths.data_dir={data_dir}", *MID_EPOCH[experiment], "trainer.max_epochs=2",
              "logger=none", "callbacks.progress_bar.refresh_rate=0", "test_ckpt=last"]
    pretrained = with_pretrained(compose_train(common, tmp_path / "pre"), tmp_path).task.get("pretrained")
    if pretrained:  # a fine-tuning experiment: both runs start from the same pretrained file (read by the first only)
        common.append(f"task.pretrained={pretrained}")
    full_metrics = run_train(compose_train(common, tmp_path / "full"))
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    per_epoch = full["global_step"] // 2
    stop = per_epoch + per_epoch // 2  # inside the second epoch
    assert per_epoch >= 3 and full["global_step"] == 2 * per_epoch
    with pytest.raises(Preempted):
        run_train(compose_train([*common, f"+callbacks.preempt._target_={__name__}.PreemptAtStep",
                                 f"+callbacks.preempt.step={stop}"], tmp_path / "part1"))
    (hpc,) = (tmp_path / "part1").glob("hpc_ckpt_*.ckpt")
    saved = torch.load(hpc, weights_only=True)
    assert saved["global_step"] == stop and saved["epoch"] == 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": stop - per_epoch}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed_metrics = run_train(compose_train([*common, f"ckpt_path={hpc}"], tmp_path / "part2"))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    resumed = torch.load(tmp_path / "part2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * per_epoch
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    differ = [k for k in full["state_dict"] if not torch.equal(full["state_dict"][k], resumed["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(full['state_dict'])} tensors differ, e.g. {differ[0]}"
    assert not all(torch.equal(saved["state_dict"][k], full["state_dict"][k]) for k in full["state_dict"])
    assert full_metrics and json.dumps(resumed_metrics, sort_keys=True) == json.dumps(full_metrics, sort_keys=True)


def _loader_batches(make, epoch: int, state=None):
    """All batches of epoch ``epoch`` from a fresh loader (``make(epoch_fn)``), after ``load_state_dict(state)``."""
    loader = make(lambda: epoch)
    if state is not None:
        loader.load_state_dict(state)
    return loader, list(loader)


@pytest.mark.parametrize("kind,workers", [
    ("jets", 0), ("jets", 2), ("auger", 0), ("lightcurves", 0), ("lightcurves", 2),
    ("auger", 2),
])
def test_loader_state_resumes_mid_epoch(kind, workers, data_dir, tmp_path):
    """A fresh loader given the state after k batches of epoch e yields exactly the rest of that epoch; other epochs
    are untouched; epochs are fixed by (seed, epoch), not by how many epochs the loader has served."""
    import torch
    from hydra.utils import instantiate

    experiment = {"jets": "jets_demo", "lightcurves": "lightcurves_transformer", "auger": "auger_hexconv"}[kind]
    overrides = [f"experiment={experiment}", *MID_EPOCH[experiment], *(["data.augment=true"] if kind == "auger" else [])]
    cfg = compose_train([*overrides, f"paths.data_dir={data_dir}", f"data.num_workers={workers}"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")

    def make(epoch_fn):
        loader = dm.train_dataloader()
        loader.epoch_fn = epoch_fn
        return loader

    def same(a, b):
        return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                        for x, y in zip(a, b))

    loader, epoch1 = _loader_batches(make, 1)
    assert loader.state_dict() == {"epoch": 1, "batches": len(epoch1)} and len(epoch1) >= 3
    k = len(epoch1) // 2
    _, rest = _loader_batches(make, 1, {"epoch": 1, "batches": k})
    assert same(rest, epoch1[k:])
    _, other = _loader_batches(make, 1, {"epoch": 0, "batches": k})  # a state of another epoch skips nothing
    assert same(other, epoch1)
    epochs = {"e": 0}
    served = make(lambda: epochs["e"])  # one loader serving epochs 0 and 1, as in an uninterrupted run
    first = list(served)
    epochs["e"] = 1
    assert same(list(served), epoch1) and not same(first, epoch1)
