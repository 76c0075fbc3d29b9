"""Where runs are written and which checkpoint is taken: ``checkpoints/best.ckpt`` (the stable name of the best
epoch), ``ckpt_path=last`` (the sibling run with the most epochs, not a newer smoke run), evaluate's run directory
(named after the checkpoint's experiment), and logs/ under the current directory or ``$PHYSICS_TF_HOME``."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from test_pipelines import compose_train

from physics_tf.config import config_dir
from physics_tf.training.best_checkpoint import BestCheckpoint
from physics_tf.training.callbacks import CONFIG_KEY
from physics_tf.training.checkpoints import resolve_ckpt_path
from physics_tf.training.run import run_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=jets_demo", "data.batch_size=32", "test=false", "logger=none", "model.num_layers=1",
        "model.num_cls_layers=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0"]


class _Scripted(L.LightningModule):
    """A one-weight model whose validation score per epoch is given (``val/auc``)."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.scores = scores
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/auc", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    val_dataloader = train_dataloader


def _fit(scores: list[float], ckpt_dir: Path, resume: Path | None = None, top_k: int = 1,
         cls: type = BestCheckpoint) -> BestCheckpoint:
    best = cls(dirpath=ckpt_dir, filename="epoch{epoch:03d}-auc{val/auc:.4f}",
                          auto_insert_metric_name=False, monitor="val/auc", mode="max", save_top_k=top_k)
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                               enable_version_counter=False)
    trainer = L.Trainer(max_epochs=len(scores), callbacks=[best, last], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=ckpt_dir.parent)
    trainer.fit(_Scripted(scores), ckpt_path=resume, weights_only=True)
    return best


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def test_best_ckpt_follows_the_best_epoch_also_after_resume(tmp_path):
    ckpts = tmp_path / "checkpoints"
    best = _fit([0.5, 0.8, 0.6], ckpts)
    stable = ckpts / "best.ckpt"
    assert Path(best.best_model_path).name == "epoch001-auc0.8000.ckpt"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["best.ckpt", "epoch001-auc0.8000.ckpt", "last.ckpt"]
    assert filecmp.cmp(stable, best.best_model_path, shallow=False) and _epoch(stable) == 1  # not the worse epoch 2
    assert os.path.samefile(stable, best.best_model_path)  # a hard link: no second copy on disk
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # no temporary file left
    # resumed in the same run directory: epoch 3 (0.7) does not beat the restored best (0.8), epoch 4 (0.9) does
    best = _fit([0.5, 0.8, 0.6, 0.7], ckpts, resume=ckpts / "last.ckpt")
    assert _epoch(stable) == 1 and os.path.samefile(stable, ckpts / "epoch001-auc0.8000.ckpt")
    best = _fit([0.5, 0.8, 0.6, 0.7, 0.9], ckpts, resume=ckpts / "last.ckpt")
    assert _epoch(stable) == 4 and os.path.samefile(stable, best.best_model_path)
    assert not (ckpts / "epoch001-auc0.8000.ckpt").exists()  # pruned by save_top_k=1; best.ckpt is still whole


def test_a_run_begun_with_lightnings_model_checkpoint_resumes_with_its_best(tmp_path):
    """A checkpoint written by the plain ModelCheckpoint (before best.ckpt): resumed in its directory, the best
    score is restored (epoch 2's 0.7 does not beat 0.8) and best.ckpt is made from the restored best."""
    ckpts = tmp_path / "checkpoints"
    _fit([0.5, 0.8], ckpts, cls=L.pytorch.callbacks.ModelCheckpoint)
    assert not (ckpts / "best.ckpt").exists()
    best = _fit([0.5, 0.8, 0.7], ckpts, resume=ckpts / "last.ckpt")
    assert Path(best.best_model_path).name == "epoch001-auc0.8000.ckpt"
    assert os.path.samefile(ckpts / "best.ckpt", best.best_model_path) and _epoch(ckpts / "best.ckpt") == 1


def test_best_ckpt_is_a_copy_without_hard_links_and_not_a_kth_best(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    best = _fit([0.3, 0.4, 0.35], tmp_path / "checkpoints", top_k=2)  # epoch 2 is saved as the second best only
    stable = tmp_path / "checkpoints" / "best.ckpt"
    assert len(list((tmp_path / "checkpoints").glob("epoch*.ckpt"))) == 2
    assert not os.path.samefile(stable, best.best_model_path)
    assert filecmp.cmp(stable, best.best_model_path, shallow=False) and _epoch(stable) == 1


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Two runs of jets_demo: a full one of 2 epochs, then a newer 1-epoch smoke run."""
    exp = tmp_path_factory.mktemp("logs") / "train" / "jets_demo"
    for name, epochs in (("2024-01-01_00-00-00", 2), ("2024-01-02_00-00-00", 1)):
        run_train(compose_train([*TINY, f"paths.data_dir={data_dir}", f"trainer.max_epochs={epochs}"], exp / name))
    return exp


def test_training_writes_best_ckpt_equal_to_the_epoch_named_best(runs):
    ckpts = runs / "2024-01-01_00-00-00" / "checkpoints"
    (epoch_named,) = ckpts.glob("epoch*.ckpt")
    assert (ckpts / "best.ckpt").is_file() and filecmp.cmp(ckpts / "best.ckpt", epoch_named, shallow=False)
    assert torch.load(ckpts / "best.ckpt", weights_only=True)[CONFIG_KEY]["experiment_name"] == "jets_demo"


def test_ckpt_path_last_takes_the_full_run_not_a_newer_smoke_run(runs):
    full, smoke = (runs / name / "checkpoints" / "last.ckpt" for name in ("2024-01-01_00-00-00", "2024-01-02_00-00-00"))
    assert (_epoch(full), _epoch(smoke)) == (1, 0) and smoke.stat().st_mtime >= full.stat().st_mtime
    here = runs / "2024-01-03_00-00-00"
    here.mkdir()
    assert resolve_ckpt_path("last", here) == str(full)


def _compose(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def test_evaluate_and_export_run_dirs_are_named_after_the_checkpoints_experiment(runs, tmp_path):
    best = runs / "2024-01-01_00-00-00" / "checkpoints" / "best.ckpt"
    for program in ("evaluate", "export"):
        cfg = _compose(program, [f"ckpt_path={best}", f"paths.log_dir={tmp_path}"])
        assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"{tmp_path}/{program}/jets_demo/")
        # a checkpoint that is not there (or not given): the program's own name; the run then fails in one line
        cfg = _compose(program, [f"ckpt_path={tmp_path}/absent.ckpt", f"paths.log_dir={tmp_path}"])
        assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"{tmp_path}/{program}/{program}/")
        assert _compose(program, []).experiment_name == program


def test_logs_and_data_under_the_current_directory_or_physics_tf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PHYSICS_TF_HOME", raising=False)
    monkeypatch.delenv("PHYSICS_TF_DATA", raising=False)
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    paths = _compose("train", []).paths
    assert (paths.root_dir, paths.log_dir, paths.data_dir) == (str(tmp_path), f"{tmp_path}/logs", f"{tmp_path}/data")
    monkeypatch.setenv("PHYSICS_TF_HOME", str(tmp_path / "home"))
    paths = _compose("train", []).paths
    assert (paths.log_dir, paths.data_dir) == (f"{tmp_path}/home/logs", f"{tmp_path}/home/data")
    assert _compose("train", [f"paths.root_dir={tmp_path}/elsewhere"]).paths.log_dir == f"{tmp_path}/elsewhere/logs"


def test_console_script_from_another_directory_writes_logs_there(data_dir, tmp_path):
    """``physics-tf-train`` (an editable install: the package is imported from this checkout) started in another
    directory: logs/ there, no new run in the checkout's logs/."""
    script = Path(sys.executable).parent / "physics-tf-train"
    # what the console script runs, where the environment has none (the package found in this checkout)
    command = [str(script)] if script.is_file() else [sys.executable, "-c",
                                                      "import sys; from physics_tf.cli import train; sys.exit(train())"]
    env = {k: v for k, v in os.environ.items() if k not in ("PHYSICS_TF_HOME", "PROJECT_ROOT", "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    before = set((ROOT / "logs").rglob(".hydra")) if (ROOT / "logs").is_dir() else set()
    res = subprocess.run([*command, *TINY, f"paths.data_dir={data_dir}", "train=false"], cwd=tmp_path,
                         env={**env, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}, capture_output=True, text=True,
                         check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "jets_demo").iterdir()
    assert (run / ".hydra" / "config.yaml").is_file()
    after = set((ROOT / "logs").rglob(".hydra")) if (ROOT / "logs").is_dir() else set()
    assert after == before, sorted(map(str, after - before))


@pytest.mark.slow
def test_best_ckpt_under_ddp(data_dir, tmp_path):
    """DDP on 2 CPU processes: rank 0 alone writes best.ckpt, equal to the epoch-named best."""
    run = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "pipelines/train.py", *TINY, "trainer=ddp_cpu", f"paths.data_dir={data_dir}",
                          "trainer.max_epochs=2", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True,
                         check=False, env={**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (epoch_named,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert filecmp.cmp(run / "checkpoints" / "best.ckpt", epoch_named, shallow=False)
    assert os.path.samefile(run / "checkpoints" / "best.ckpt", epoch_named)


def test_ckpt_path_last_skips_runs_on_other_data_or_another_network(tmp_path):
    """A newer sibling trained on other files (or with another model) is not the run to continue."""
    exp = tmp_path / "train" / "jets_part"

    def ckpt(run: str, mtime: float, files: str, model: str = "physics_tf.jets.part.ParticleTransformer") -> Path:
        path = exp / run / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"epoch": 0, CONFIG_KEY: {"model": {"_target_": model}, "data": {"files": {"train": [files]}}}},
                   path)
        os.utime(path, (mtime, mtime))
        return path

    mine = ckpt("a", 1_000, "/data/generated/train_*.root")
    ckpt("b", 2_000, "/data/toptag/train.h5")
    here = exp / "c"
    here.mkdir()
    same = {"model._target_": "physics_tf.jets.part.ParticleTransformer",
            "data.files": {"train": ["/data/generated/train_*.root"]}}
    assert resolve_ckpt_path("last", here, same) == str(mine)
    ckpt("d", 3_000, "/data/generated/train_*.root", model="physics_tf.jets.pfn.ParticleFlowNetwork")
    assert resolve_ckpt_path("last", here, same) == str(mine)
    assert resolve_ckpt_path("last", here) == str(exp / "d" / "checkpoints" / "last.ckpt")  # no filter: newest
