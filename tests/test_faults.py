"""Faults and bad input: a dying DDP rank ends the run (no hang); bad configs, devices, checkpoints and run
directories end in one clear line; ``ckpt_path=last`` finds the checkpoint to resume from; cluster helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pipelines import compose_train

from physics_tf.training.cluster import adopt_submitit_local_ranks
from physics_tf.training.resolvers import run_stamp, slurm_gpus, slurm_job_tag
from physics_tf.training.checkpoints import CheckpointError, load_run_config, resolve_ckpt_path
from physics_tf.training.run import run_train

ROOT = Path(__file__).resolve().parents[1]
FAULT = ["+callbacks.fault._target_=physics_tf.training.callbacks.FaultInjection", "+callbacks.fault.rank=1",
         "+callbacks.fault.step=2"]


def _cli(args: list[str], timeout: int = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    env.pop("HYDRA_FULL_ERROR", None)
    start = time.monotonic()
    res = subprocess.run([sys.executable, "pipelines/train.py", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return res, time.monotonic() - start


def _last_line(res: subprocess.CompletedProcess) -> str:
    return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""


def test_a_dying_ddp_rank_ends_the_run_with_a_clear_message(data_dir, tmp_path):  # noqa: F811
    """Rank 1 vanishes (os._exit) at step 2 of a 2-process gloo DDP run: rank 0 stops at its next collective and
    says why; every process is gone when the command returns (subprocess.run waits for the pipes to close)."""
    res, wall = _cli(["experiment=jets_pfn", "trainer=ddp_cpu", f"paths.data_dir={data_dir}", "data.batch_size=8",
                      "trainer.max_epochs=3", f"hydra.run.dir={tmp_path}/run", *FAULT, "+callbacks.fault.mode=exit",
                      "trainer.strategy.timeout.seconds=30"], timeout=240)
    assert res.returncode not in (0, None), res.stderr[-2000:]
    assert "FaultInjection: rank 1 fails (exit) at step 2" in res.stdout + res.stderr
    last = _last_line(res)
    assert last.startswith("physics_tf: error: rank 0: another DDP process failed or stopped responding"), \
        res.stderr[-3000:]
    assert wall < 180, wall


def test_a_hanging_ddp_rank_hits_the_collective_timeout(data_dir, tmp_path):  # noqa: F811
    res, wall = _cli(["experiment=jets_pfn", "trainer=ddp_cpu", f"paths.data_dir={data_dir}", "data.batch_size=8",
                      "trainer.max_epochs=3", f"hydra.run.dir={tmp_path}/run", *FAULT, "+callbacks.fault.mode=hang",
                      "trainer.strategy.timeout.seconds=10"], timeout=240)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "stopped responding" in _last_line(res) and "Timed out" in _last_line(res), res.stderr[-3000:]
    assert wall < 180, wall


@pytest.mark.parametrize(("args", "expected"), [
    (["trainer.max_epoch=3"], ["Could not override 'trainer.max_epoch'", "+trainer.max_epoch=3",
                               "Key 'max_epoch' is not in struct"]),
    (["+trainer.devicez=2"], ["Trainer.__init__() got an unexpected keyword argument 'devicez'"]),
    (["trainer=tpu_pod"], ["Could not find 'trainer/tpu_pod'", "Available options in 'trainer': cpu, ddp, ddp_cpu"]),
    (["-m", "hydra/launcher=slurmm"], ["Could not find 'hydra/launcher/slurmm'", "local, slurm"]),
    (["-m", "hydra/launcher=slurm", "hydra.launcher.partitionn=gpu"],
     ["Could not override 'hydra.launcher.partitionn'", "Key 'partitionn' not in 'SlurmQueueConf'"]),
    (["-m", "trainer=ddp_cpu", "seed=1,2"], ["Lightning would re-run the whole sweep in every rank",
                                             "hydra/launcher=local"]),
])
def test_bad_config_is_one_line(args, expected, tmp_path):
    flags = [a for a in args if a.startswith("-")]  # (Hydra's -m goes before the overrides)
    res, _ = _cli([*flags, "experiment=jets_pfn", f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep",
                   *[a for a in args if not a.startswith("-")]])
    assert res.returncode == 2, res.stderr[-2000:]
    last = _last_line(res)
    assert last.startswith("physics_tf: error: ") and "Traceback" not in res.stderr, res.stderr[-2000:]
    for text in expected:
        assert text in last, last


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_gpu_is_one_line(tmp_path):
    res, _ = _cli(["experiment=jets_pfn", "trainer=gpu", f"hydra.run.dir={tmp_path}/run"])
    assert res.returncode == 2
    assert _last_line(res) == ("physics_tf: error: trainer.accelerator=gpu with trainer.devices=1, but this machine "
                               "has 0 CUDA GPU(s); use trainer=cpu or trainer=ddp_cpu, or run on a GPU node")


def test_unwritable_run_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res, _ = _cli(["experiment=jets_pfn", f"hydra.run.dir={blocker}/run"])
    assert res.returncode == 2
    assert _last_line(res).startswith(f"physics_tf: error: cannot create or write {blocker}/run: Not a directory")


def _tiny_run(data_dir: Path, out: Path, *extra: str) -> None:
    run_train(compose_train(["experiment=jets_demo", f"paths.data_dir={data_dir}", "data.batch_size=32",
                             "trainer.max_epochs=1", "test=false", "logger=none", "model.num_layers=1",
                             "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
                             "model.num_cls_layers=1", *extra], out))


def test_checkpoint_of_another_model_is_one_line(data_dir, tmp_path):  # noqa: F811
    _tiny_run(data_dir, tmp_path / "part")  # a ParT checkpoint
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    res, _ = _cli(["experiment=jets_pfn", f"paths.data_dir={data_dir}", f"ckpt_path={ckpt}",
                   f"hydra.run.dir={tmp_path}/pfn"])
    assert res.returncode == 2, res.stderr[-2000:]
    last = _last_line(res)
    assert last.startswith(f"physics_tf: error: {ckpt}: the checkpoint holds another network "
                           "(physics_tf.jets.part.ParticleTransformer) than this run's ParticleFlowNetwork"), last
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"^{garbage}: cannot read the checkpoint"):
        load_run_config(garbage)


def test_ckpt_path_last_continues_the_newest_run(data_dir, tmp_path):  # noqa: F811
    """``ckpt_path=last`` in a new run directory of the same experiment picks up the previous run's last.ckpt."""
    runs = tmp_path / "logs" / "train" / "jets_demo"
    _tiny_run(data_dir, runs / "first")
    first = torch.load(runs / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    _tiny_run(data_dir, runs / "second", "ckpt_path=last", "trainer.max_epochs=2")
    second = torch.load(runs / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == 2 * first["global_step"]  # continued, not restarted


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)  # ckpt_path=last takes only a checkpoint that loads
    os.utime(path, (mtime, mtime))
    return path


def test_resolve_ckpt_path_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    exp = tmp_path / "train" / "exp"
    old = _touch(exp / "2024-01-01_00-00-00" / "checkpoints" / "last.ckpt", 1_000)
    newer = _touch(exp / "2024-01-02_00-00-00" / "hpc_ckpt_1.ckpt", 2_000)
    here = exp / "2024-01-03_00-00-00"
    here.mkdir()
    assert resolve_ckpt_path("last", here) == str(newer)  # the newest sibling
    own = _touch(here / "checkpoints" / "last.ckpt", 500)
    assert resolve_ckpt_path("last", here) == str(own)  # the run's own checkpoint first, even if older
    assert resolve_ckpt_path(None, here) is None
    assert resolve_ckpt_path(str(old), here) == str(old)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_ckpt_path(str(exp / "nope.ckpt"), here)
    # a sweep point never takes another point's checkpoint
    sweep = exp / "multirun_2024-01-04"
    _touch(sweep / "0" / "checkpoints" / "last.ckpt", 3_000)
    (sweep / "1").mkdir()
    assert resolve_ckpt_path("last", sweep / "1") is None
    # a requeued SLURM job continues from its pre-emption checkpoint, not from the ckpt_path it was started with
    hpc = _touch(here / "hpc_ckpt_2.ckpt", 4_000)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert resolve_ckpt_path(str(old), here) == str(hpc)


def test_cluster_helpers(monkeypatch):
    env = {"SLURM_JOB_ID": "123"}
    assert slurm_job_tag(env) == "slurm-123"
    assert slurm_job_tag({**env, "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-120_3"
    assert slurm_job_tag({}) is None
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert run_stamp() == "slurm-9"
    assert slurm_gpus("gpu", 4) == 4 and slurm_gpus("cpu", 2) is None
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
             "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_ID": "4242"}
    assert adopt_submitit_local_ranks(local)
    assert (local["RANK"], local["LOCAL_RANK"], local["WORLD_SIZE"], local["MASTER_ADDR"]) == ("1", "1", "2",
                                                                                              "127.0.0.1")
    assert not adopt_submitit_local_ranks({"SUBMITIT_EXECUTOR": "slurm"})


@pytest.mark.parametrize("experiment,task", [("auger_transformer", "regression"), ("lightcurves_gru", "classification")])
def test_task_that_cannot_take_the_data_is_one_line(experiment, task, tmp_path):
    """The generic heads with an analysis' data module: one line naming task._target_, not a TypeError in Hydra."""
    res, _ = _cli([f"experiment={experiment}", f"task={task}", f"paths.data_dir={tmp_path}",
                   f"hydra.run.dir={tmp_path}/run"], timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    last = _last_line(res)
    assert last.startswith("physics_tf: error: <config>: field 'task._target_': task ") and "does not take" in last, last
    assert "Traceback" not in res.stderr
