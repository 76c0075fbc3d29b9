"""How close ParT inference runs to this machine's limit: dense fp32 GEMM peak vs ParT's achieved FLOP/s.

    python benchmarks/bench_flops.py [--batch 128] [--gemm 2048] [--repeats 5] [--threads N] [--device cpu|cuda]
                                     [--json F]

Peak: the best of ``--repeats`` timings of ``torch.mm`` on two (n, n) fp32 matrices (2n³ FLOPs). ParT: FLOPs of
one inference pass counted by ``torch.utils.flop_counter.FlopCounterMode`` (every mm/addmm/bmm/baddbmm, plus the
CPU flash-attention kernel, which it does not know, registered here as 4·B·H·Lq·Lk·d), divided by the median
time of that pass on the benchmark batch (pad 128, ~50 real particles). GEMM and model timings alternate in one
process, so a busy machine slows both. The counted FLOPs are the work each model does: physics_tf skips padded
particles in its token-wise layers, so it needs fewer FLOPs than weaver-core for the same jets; "useful" FLOP/s
count both models' work as weaver-core's (the padded, trimmed-to-longest count).

JSON (``--json``, written atomically): ``{"device", "threads", "batch", "gemm_n", "gemm_peak_gflops",
"gemm_median_gflops", "models": {name: {"gflop_per_batch", "seconds", "achieved_gflops", "fraction_of_peak",
"useful_gflops", "useful_fraction_of_peak" (with weaver-core)}}, "load_before", "load"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import make_batch, weaver_part  # noqa: E402

from physics_tf.data.atomic import atomic_path  # noqa: E402
from physics_tf.jets.part import ParticleTransformer  # noqa: E402


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flops(q_shape, k_shape, *args, **kwargs) -> int:
    b, h, lq, d = q_shape
    return 4 * b * h * lq * k_shape[2] * d  # QKᵀ and PV


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    dev = a.device
    x, v, mask, _ = (t.to(dev) for t in make_batch(a.batch))
    models = {"physics_tf": (ParticleTransformer(17, 10).to(dev).eval(), (x, v, mask))}
    peer = weaver_part()
    if peer is not None:
        models["weaver-core"] = (peer.to(dev).eval(), (x.transpose(1, 2).contiguous(),
                                                        v.transpose(1, 2).contiguous(), mask[:, None].float()))
    n = a.gemm
    ga, gb = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def infer(name, mode=torch.inference_mode):
        model, args = models[name]
        with mode():
            model(*args)
        sync()

    for name in models:  # warm-up (and past weaver-core's 5 untrimmed trimmer calls)
        for _ in range(6):
            infer(name)
    flops = {name: count_flops(lambda name=name: infer(name, contextlib.nullcontext)) for name in models}  # (the
    # counter's module tracker needs autograd metadata that inference_mode/no_grad tensors lack)
    gemm_times, times = [], {name: [] for name in models}
    torch.mm(ga, gb)
    for _ in range(a.repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(ga, gb)
        sync()
        gemm_times.append(time.perf_counter() - t0)
        for name in models:
            t0 = time.perf_counter()
            infer(name)
            times[name].append(time.perf_counter() - t0)
    peak = 2 * n**3 / min(gemm_times)
    result = {"device": dev, "threads": torch.get_num_threads(), "batch": a.batch, "gemm_n": n, "gemm_peak_gflops": peak / 1e9,
              "gemm_median_gflops": 2 * n**3 / statistics.median(gemm_times) / 1e9, "models": {}}
    print(f"threads {torch.get_num_threads()}: fp32 GEMM ({n}x{n}) peak {peak / 1e9:.1f} GFLOP/s "
          f"(median {result['gemm_median_gflops']:.1f})")
    ref_flops = flops.get("weaver-core")
    for name in models:
        t = statistics.median(times[name])
        achieved = flops[name] / t
        row = {"gflop_per_batch": flops[name] / 1e9, "seconds": t, "achieved_gflops": achieved / 1e9,
               "fraction_of_peak": achieved / peak}
        if ref_flops is not None:
            row["useful_gflops"] = ref_flops / t / 1e9
            row["useful_fraction_of_peak"] = ref_flops / t / peak
        result["models"][name] = row
        extra = (f"; useful (weaver-core's FLOPs) {row['useful_gflops']:.1f} GFLOP/s = "
                 f"{100 * row['useful_fraction_of_peak']:.0f} %" if ref_flops is not None else "")
        print(f"{name}: {flops[name] / 1e9:.2f} GFLOP per batch of {a.batch} in {t * 1e3:.0f} ms = "
              f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of the GEMM peak (goal 50 %){extra}")
    result["load_before"], result["load"] = load_before, os.getloadavg()[0]
    print(f"1-minute load average: {load_before:.1f} before, {result['load']:.1f} after")
    if a.json:
        with atomic_path(a.json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
