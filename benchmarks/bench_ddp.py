"""DDP scaling and bf16-mixed speed on this machine: the two ratios issue 6 asks for, measured in one run.

    python benchmarks/bench_ddp.py [--batch 32] [--pad 64] [--steps 12] [--rounds 3] [--threads 1] [--json F]

* DDP scaling = training throughput (jets/s) of 2 DDP processes (gloo) ÷ 1 process, same per-process batch and
  threads per process (default 1: each process owns one core, as each GPU owns itself on a cluster). 2.0 is
  perfect scaling; the rest is gradient all-reduce and the two processes sharing memory bandwidth.
* bf16 ÷ fp32 = training throughput under ``torch.autocast(cpu, bfloat16)`` (what ``trainer.precision=bf16-mixed``
  does on CPU) ÷ plain fp32, one process. On a CPU without bf16 units (AVX2 only) expect far below 1; on
  GPUs (and CPUs with AMX / AVX512-BF16) bf16 is the faster one.

The model is the small ParT of the demo (model=part_small: 3 + 1 layers, ~0.2 M parameters) on random padded jets
(benchmarks/bench_model.make_batch); a step is forward + backward + AdamW. The 1- and 2-process runs alternate for
``--rounds`` rounds and the medians are reported, so slow drifts of a shared machine hit both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import make_batch  # noqa: E402

from physics_tf.jets.part import ParticleTransformer  # noqa: E402

SMALL = dict(input_dim=17, num_classes=10, embed_dims=[64, 128, 64], pair_embed_dims=[32, 32], num_heads=4,
             num_layers=3, num_cls_layers=1, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ParticleTransformer(**SMALL)


def _train_steps(model, batch, steps: int, autocast: bool, barrier: bool) -> float:
    """Seconds for ``steps`` training steps (after the caller's warm-up)."""
    x, v, mask, y = batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if barrier:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x, v, mask).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if barrier:
        dist.barrier()
    return time.perf_counter() - start


def _ddp_worker(rank: int, world: int, port: int, args, out) -> None:
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        batch = make_batch(args.batch, pad=args.pad, mean_particles=args.pad / 2, seed=rank)
        _train_steps(model, batch, 2, autocast=False, barrier=True)  # warm-up
        seconds = _train_steps(model, batch, args.steps, autocast=False, barrier=True)
        if rank == 0:
            out.put(world * args.batch * args.steps / seconds)
    finally:
        dist.destroy_process_group()


def ddp_throughput(world: int, args) -> float:
    """Jets/s of ``world`` DDP processes together (each with its own per-process batch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(world, port, args, out), nprocs=world, join=True, start_method="spawn")
    return out.get()


def precision_throughput(autocast: bool, args) -> float:
    torch.set_num_threads(args.threads)
    model = _model()
    batch = make_batch(args.bf16_batch, pad=args.bf16_pad, mean_particles=args.bf16_pad / 2)
    _train_steps(model, batch, 1, autocast=autocast, barrier=False)  # warm-up
    return args.bf16_batch * args.bf16_steps / _train_steps(model, batch, args.bf16_steps, autocast, barrier=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="jets per process and step (DDP measurement)")
    p.add_argument("--pad", type=int, default=64, help="particles per jet, padded")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--bf16-batch", type=int, default=8, help="smaller: bf16 matmuls are slow on CPUs without bf16")
    p.add_argument("--bf16-pad", type=int, default=32)
    p.add_argument("--bf16-steps", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    one, two, fp32, bf16 = [], [], [], []
    for _ in range(args.rounds):
        one.append(ddp_throughput(1, args))
        two.append(ddp_throughput(2, args))
        fp32.append(precision_throughput(False, args))
        bf16.append(precision_throughput(True, args))
    med = statistics.median
    result = {
        "cpu_cores": os.cpu_count(), "threads_per_process": args.threads, "rounds": args.rounds,
        "ddp_1proc_jets_per_s": med(one), "ddp_2proc_jets_per_s": med(two), "ddp_scaling_2_over_1": med(two) / med(one),
        "fp32_jets_per_s": med(fp32), "bf16_mixed_jets_per_s": med(bf16), "bf16_over_fp32": med(bf16) / med(fp32),
        "all": {"ddp1": one, "ddp2": two, "fp32": fp32, "bf16": bf16},
    }
    print(f"DDP on CPU (gloo), small ParT, batch {args.batch}/process, pad {args.pad}, {args.threads} thread(s) per "
          f"process, {os.cpu_count()} cores, median of {args.rounds} rounds")
    print(f"  1 process : {med(one):8.1f} jets/s   (rounds: {', '.join(f'{t:.1f}' for t in one)})")
    print(f"  2 processes: {med(two):8.1f} jets/s   (rounds: {', '.join(f'{t:.1f}' for t in two)})")
    print(f"  DDP scaling ratio (2 ÷ 1): {result['ddp_scaling_2_over_1']:.2f}   (2.00 = perfect)")
    print(f"Mixed precision, one process, batch {args.bf16_batch}, pad {args.bf16_pad}:")
    print(f"  fp32      : {med(fp32):8.1f} jets/s")
    print(f"  bf16-mixed: {med(bf16):8.1f} jets/s")
    print(f"  bf16 ÷ fp32 speed ratio: {result['bf16_over_fp32']:.3f}   (below 1 on CPUs without bf16 units)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
