"""Training under a real SLURM (munged + slurmctld + slurmd on localhost, tests/slurm_cluster.py).

* a Hydra multirun of two points through ``hydra/launcher=slurm``: one SLURM job per point, each a 2-task DDP CPU
  training whose ranks srun starts; both end with checkpoints and metrics in their own run directories;
* pre-emption: SIGUSR1 to a running job → every rank checkpoints (hpc_ckpt_1.ckpt), the job requeues itself, the
  requeued job resumes from that checkpoint in the same run directory and finishes.

The cluster needs root and Debian's ``slurmctld slurmd slurm-client munge``; without them the tests skip with that
reason — unless ``PHYSICS_TF_REQUIRE_SLURM=1`` (set by .ci/run), where a missing cluster fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import synth_jetclass
from slurm_cluster import LocalSlurm, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(600)]

# tiny PFN runs: 2 DDP ranks on CPU (gloo), srun starts them, Lightning reads the ranks from SLURM
DDP = ["experiment=jets_pfn", "trainer=ddp_cpu", "trainer.devices=2", "data.batch_size=16", "logger=csv",
       "data.shuffle_buffer=64", "callbacks.progress_bar.refresh_rate=0"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("PHYSICS_TF_REQUIRE_SLURM") == "1":
            pytest.fail(f"PHYSICS_TF_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    # a short path: slurmd's spool and munge's socket live here
    cluster = LocalSlurm(Path(tmp_path_factory.mktemp("slurm")))
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def jets(tmp_path_factory):
    """generated/jets_demo/{train,val,test}_000.root with tiny synthetic jets."""
    from physics_tf.jets.writers import write_jetclass_root

    root = tmp_path_factory.mktemp("slurm_data")
    out = root / "generated" / "jets_demo"
    out.mkdir(parents=True)
    for i, (split, n) in enumerate([("train", 320), ("val", 64), ("test", 64)]):
        p, j, lab = synth_jetclass(n, seed=i, classes=(0, 8), max_particles=16)
        write_jetclass_root(out / f"{split}_000.root", p, j, lab)
    return root


def _submit(slurm: LocalSlurm, args: list[str], **kw) -> subprocess.Popen:
    """``pipelines/train.py -m hydra/launcher=slurm ...``: submits through submitit and waits for the jobs."""
    env = {**slurm.env, "WANDB_MODE": "offline", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "pipelines/train.py", "-m", "hydra/launcher=slurm",
           f"hydra.launcher.partition={slurm.partition}", "hydra.launcher.timeout_min=20", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, slurm: LocalSlurm, sweep: Path, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish in {timeout:.0f} s:\n{out[-3000:]}\n{_job_logs(sweep)}\n{slurm.logs()}")
    assert proc.returncode == 0, f"{out[-3000:]}\n{_job_logs(sweep)}\n{slurm.logs()}"
    return out


def _job_logs(where: Path, tail: int = 2500) -> str:
    logs = sorted(where.rglob(".submitit/*/*_log.*"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-tail:]}" for p in logs)


@pytest.mark.slurm
def test_multirun_of_two_points_runs_as_two_ddp_jobs(slurm, jets, tmp_path):
    # the default sweep directory (logs/train/jets_pfn/multirun_<time>): every srun rank of every job must agree on it
    proc = _submit(slurm, [*DDP, f"paths.data_dir={jets}", f"paths.log_dir={tmp_path / 'logs'}",
                           "trainer.max_epochs=1", "seed=1,2"])
    _finish(proc, slurm, tmp_path, timeout=420)
    (sweep,) = (tmp_path / "logs" / "train" / "jets_pfn").iterdir()  # one sweep directory, no per-rank ones
    assert sweep.name.startswith("multirun_"), sweep
    for point, seed in [("0", 1), ("1", 2)]:
        run = sweep / point
        assert (run / "checkpoints" / "last.ckpt").is_file(), sorted(p.name for p in run.rglob("*"))
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["num_jets"] >= 64  # the test stage gathered both ranks' jets
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}" in config
    # each point ran as one SLURM job with two srun tasks (ranks 0 and 1 of 2)
    job_dirs = sorted(p for p in (sweep / ".submitit").glob("*_*") if p.is_dir())  # <array job>_<point>
    assert len(job_dirs) == 2, job_dirs
    for job_dir in job_dirs:
        for rank in (0, 1):
            (log,) = job_dir.glob(f"*_{rank}_log.out")  # one log per srun task
            assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in log.read_text(errors="replace"), log
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended while waiting for {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


EPOCHS = 6


@pytest.mark.slurm
def test_preempted_job_checkpoints_requeues_and_resumes(slurm, jets, tmp_path):
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    # 6 epochs of 10 steps per rank; the test sends the signal SLURM sends before a time limit
    proc = _submit(slurm, [*DDP, f"paths.data_dir={jets}", f"hydra.sweep.dir={sweep}", f"trainer.max_epochs={EPOCHS}",
                           "seed=3"])
    # after the first epoch's last.ckpt, pre-empt the job mid-epoch 2
    _wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), 300, "the first epoch's checkpoint", proc)
    jobs = slurm.run("squeue", "-h", "-o", "%i").split()
    assert len(jobs) == 1, jobs
    job = jobs[0]
    slurm.run("scancel", "--signal=USR1", job)
    slurm.release_requeued(job)
    out = _finish(proc, slurm, sweep, timeout=420)

    assert (run / "hpc_ckpt_1.ckpt").is_file(), sorted(p.name for p in run.iterdir())
    assert slurm.job_field(job, "Restarts") == "1", slurm.run("scontrol", "show", "job", job)
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 1 <= hpc["epoch"] < EPOCHS - 1 and last["epoch"] == EPOCHS - 1  # pre-empted after epoch 0, finished
    assert json.loads((run / "metrics.json").read_text())["num_jets"] >= 64
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_0_log.out")))
    assert "pre-emption checkpoint written" in logs and "requeued SLURM job" in logs, logs[-4000:]
    assert "hpc_ckpt_1.ckpt" in logs.split("requeued SLURM job", 1)[1], "the requeued job did not restore the hpc ckpt"
    assert "Traceback" not in out


# deselected by default (as before this session): it takes ~7 s but once hung in a fresh-clone CI run with
# the submitit local job's two DDP ranks idle (load 0) until the test's 500 s limit; cause not yet found
@pytest.mark.slow
def test_local_launcher_runs_ddp_tasks(jets, tmp_path):
    """hydra/launcher=local (submitit's local executor): the two DDP ranks are submitit tasks, not Lightning children."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "pipelines/train.py", "-m", "hydra/launcher=local", *DDP,
                          f"paths.data_dir={jets}", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1", "seed=1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    logs = _job_logs(sweep, tail=10**6)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs
