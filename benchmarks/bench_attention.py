"""Peak memory and time of one attention layer vs sequence length L, and their log-log slopes.

    python benchmarks/bench_attention.py [--lengths 128 256 512 1024 2048 4096] [--threads 1] [--json F]

Variants (inference, fp32, batch 1, 8 heads of width 16 = model width 128 unless noted):

* ``naive``: softmax(QKᵀ/√d)V written out — the (B, H, L, L) scores and weights are materialised.
* ``sdpa_bias_mask``: physics_tf's attention core as ParT uses it, fused SDPA with an additive per-head bias
  (B, H, L, L) carrying the −∞ key mask. The bias is an *input* here (built once per forward, shared by 8 layers)
  and is reported separately (``input MB``): it is O(L²) by construction.
* ``sdpa_mask``: the same core with a boolean key mask only (the light-curve transformer's path): O(L) memory.
* ``auger_window``: the Auger transformer's temporal encoder (``TemporalEncoder``: patches of 10 samples,
  attention within windows of 12 patches, 2 blocks + class-token pooling; width 64, 4 heads) on one trace of L
  samples — the whole encoder, not one layer.
* ``auger_perceiver``: the Perceiver temporal encoder (16 latents cross-attend to patches of 4 samples).

Memory method: every (variant, L) point runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (every
buffer larger than 64 KiB is its own mapping, returned to the OS when freed, so the resident set follows the live
tensors). After building the inputs the process reads its current RSS, runs the layer once, and reports
``ru_maxrss − that RSS``: the extra memory the layer needed at its peak (activations, workspaces). tracemalloc
cannot see PyTorch's allocations; the profiler's memory view reports allocations per op, not the concurrent peak.
Time: median of 3 further calls in the same process. Slopes: least-squares fit of log(value) on log(L) over
L ≥ 512 (below that, constant overheads dominate).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("naive", "sdpa_bias_mask", "sdpa_mask", "auger_window", "auger_perceiver")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def point(variant: str, length: int) -> dict:
    import torch

    from physics_tf.nn.attention import attention, attention_mask

    torch.manual_seed(0)
    B, H, d = 1, 8, 16
    inputs_mb = 0.0
    if variant in ("naive", "sdpa_bias_mask", "sdpa_mask"):
        q, k, v = (torch.randn(B, H, length, d) for _ in range(3))
        mask = torch.ones(B, length, dtype=torch.bool)
        mask[:, -length // 8:] = False  # some padding
        if variant == "naive":
            def fn():
                w = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask[:, None, None, :], float("-inf"))
                return w.softmax(-1) @ v
        elif variant == "sdpa_bias_mask":
            am = attention_mask(mask, torch.randn(B, H, length, length))
            inputs_mb = am.numel() * am.element_size() / 2**20
            fn = lambda: attention(q, k, v, am)  # noqa: E731
        else:
            am = attention_mask(mask)
            fn = lambda: attention(q, k, v, am)  # noqa: E731
    else:
        from physics_tf.auger.transformer import PerceiverTemporalEncoder, TemporalEncoder

        enc = (TemporalEncoder() if variant == "auger_window" else PerceiverTemporalEncoder()).eval()
        trace = torch.randn(1, length)
        fn = lambda: enc(trace)  # noqa: E731
    before = rss_mb()
    with torch.inference_mode():
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"variant": variant, "L": length, "peak_mb": max(peak, 0.0), "ms": 1e3 * statistics.median(times),
            "input_mb": inputs_mb}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--point", nargs=2, metavar=("VARIANT", "L"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.point:
        import torch

        torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(point(a.point[0], int(a.point[1]))))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for variant in a.variants:
        for length in a.lengths:
            cmd = [sys.executable, __file__, "--threads", str(a.threads), "--point", variant, str(length)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{variant} L={length} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(line[7:]))
    print(f"threads {a.threads}; peak = extra resident memory of one call beyond its inputs")
    print(f"{'variant':<17}{'L':>6}{'peak MB':>10}{'ms':>10}{'input MB':>10}")
    for r in rows:
        print(f"{r['variant']:<17}{r['L']:>6}{r['peak_mb']:>10.1f}{r['ms']:>10.1f}{r['input_mb']:>10.1f}")
    slopes = {}
    for variant in a.variants:
        pts = [r for r in rows if r["variant"] == variant and r["L"] >= 512]
        if len(pts) >= 2:
            slopes[variant] = {"memory": slope([r["L"] for r in pts], [r["peak_mb"] for r in pts]),
                               "time": slope([r["L"] for r in pts], [r["ms"] for r in pts])}
            if any(r["input_mb"] for r in pts):
                slopes[variant]["memory_with_input"] = slope([r["L"] for r in pts],
                                                             [r["peak_mb"] + r["input_mb"] for r in pts])
    print("log-log slopes over L >= 512 (2 = quadratic, 1 = linear):")
    for variant, s in slopes.items():
        extra = f", memory incl. the bias input {s['memory_with_input']:.2f}" if "memory_with_input" in s else ""
        print(f"  {variant:<17} memory {s['memory']:.2f}, time {s['time']:.2f}{extra}")
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "rows": rows, "slopes": slopes}, indent=1))


if __name__ == "__main__":
    main()
