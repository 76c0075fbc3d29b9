"""Two nodes on localhost: two processes (num_nodes=2, devices=1, DDP over gloo) train one model together.

Each "node" is started the way a cluster without SLURM starts one: with torchrun (``--nnodes=2 --node_rank=i``), or
with the environment Lightning reads (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE; plus RANK, see the README).
Both get the same explicit ``hydra.run.dir`` — each process evaluates ``${now:...}`` itself, so the default
time-stamped directory would differ between the nodes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
N_JETS, BATCH = 120, 16


class SeenJets(L.Callback):
    """Writes ``seen_rank<global rank>.json``: this rank's node rank, world size and the ids of the training jets
    it saw (the test data's first particle has ``px = 1000 + jet index``, see conftest.synth_jetclass)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.ids = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids += (batch["v"][..., 0].amax(dim=1).round() - 1000).long().tolist()  # v: (B, P, 4), px first

    def on_train_end(self, trainer, pl_module) -> None:
        info = {"global_rank": trainer.global_rank, "node_rank": trainer.node_rank, "world_size": trainer.world_size,
                "ids": self.ids}
        (self.out_dir / f"seen_rank{trainer.global_rank}.json").write_text(json.dumps(info))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nodes(launch: str, train_args: list[str], log_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    port = _free_port()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    nodes = []
    for node in (0, 1):
        if launch == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", *train_args]
            node_env = env
        else:  # what a launcher other than torchrun/SLURM exports on each node (RANK: see the module docstring)
            cmd = [sys.executable, *train_args]
            node_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
                        "WORLD_SIZE": "2", "RANK": str(node)}
        log = log_dir / f"node{node}.log"
        with open(log, "w") as fh:
            nodes.append((subprocess.Popen(cmd, cwd=ROOT, env=node_env, stdout=fh, stderr=subprocess.STDOUT), log))
    return nodes


def _wait(nodes, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc, _ in nodes]
    except subprocess.TimeoutExpired:
        for proc, _ in nodes:
            proc.kill()
        tails = "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for _, log in nodes)
        pytest.fail(f"the two nodes did not finish within {timeout:.0f} s\n{tails}")


@pytest.mark.parametrize("launch", ["torchrun", "env"])
def test_two_nodes_on_localhost_train_together(launch, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["pipelines/train.py", "experiment=jets_pfn", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
            f"paths.data_dir={data_dir}", f"data.batch_size={BATCH}", "trainer.max_epochs=1", "logger=many",
            "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}",
            "+callbacks.seen._target_=test_multinode.SeenJets", "+callbacks.seen.out_dir=${paths.output_dir}"]
    nodes = _start_nodes(launch, args, tmp_path)
    codes = _wait(nodes, timeout=300)
    logs = [log.read_text() for _, log in nodes]
    assert codes == [0, 0], "\n".join(f"--- node {i} (exit {c})\n{t[-3000:]}" for i, (c, t) in enumerate(zip(codes, logs)))
    assert "(rank 0 of 2)" in logs[0] and "(rank 1 of 2)" in logs[1]

    # both ranks trained, on disjoint shards of the same epoch
    seen = [json.loads((run_dir / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(s["global_rank"], s["node_rank"], s["world_size"]) for s in seen] == [(0, 0, 2), (1, 1, 2)]
    per_rank = N_JETS // (2 * BATCH) * BATCH  # drop_last: 3 full batches of 16 per rank
    ids = [s["ids"] for s in seen]
    assert [len(i) for i in ids] == [per_rank, per_rank]
    assert len(set(ids[0]) | set(ids[1])) == 2 * per_rank  # no jet seen twice, not within nor across ranks
    assert set(ids[0]) | set(ids[1]) <= set(range(N_JETS))

    # one run directory: the checkpoint counts the global steps of a 2-rank epoch (a single process would take 7)
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == N_JETS // (2 * BATCH) == 3
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["num_jets"] >= N_JETS  # test stage gathers both ranks
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")  # only rank 0 logs to W&B
    assert list((wandb_run / "files" / "media" / "images" / "plots").glob("roc_*.png"))  # the test report, once
