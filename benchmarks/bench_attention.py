"""Peak memory and time of attention vs sequence length L, per kind and per alignment score, and log-log slopes.

    python benchmarks/bench_attention.py [--lengths 256 … 16384] [--variants …] [--threads 1] [--device cpu|cuda]
                                         [--json F]

Variants (inference, fp32, batch 1, 8 heads of width 16 = model width 128, the last L/8 keys padded):

* one attention call on given q, k, v (B, H, L, d):
  - ``naive``: softmax(QKᵀ/√d)V written out — the (B, H, L, L) scores and weights are materialised;
  - ``sdpa_bias_mask``: the core's fused SDPA with an additive per-head bias (B, H, L, L) carrying the −∞ key mask
    (ParT's path); the bias is an *input* (built once per forward, shared by the layers), reported as ``input_mb``;
  - the kinds of :func:`physics_tf.nn.efficient.efficient_attention` with their default options: ``full`` (the
    core's SDPA with a key mask, the light-curve transformer's path), ``lsh`` (4 hash rounds, buckets of 32),
    ``sparse_strided`` and ``sparse_fixed`` (blocks of √L), ``window`` (windows of 16);
* ``latent``: a whole :class:`physics_tf.nn.efficient.LatentEncoder` (width 128, 8 heads, 64 latents, depth 1) on
  (1, L, 128) tokens;
* ``score_<s>``: a whole ``MultiheadAttention(128, 8, score=s)`` layer (projections included) on (1, L, 128), for
  the six alignment scores (``location`` with max_len = L);
* ``auger_window`` / ``auger_perceiver``: the Auger wing's temporal encoders (whole encoder) on one trace of L
  samples.

Where memory gets silly the O(L²) variants stop (:data:`MAX_LENGTH`): naive, sdpa_bias_mask and the explicit-logit
scores (``location``; ``additive`` builds (B, H, L, L, a) and stops earlier); the fused dot scores stop at 4096
for time (their memory is linear, their time quadratic, like ``full``, which goes on to the end).

Memory on a CPU: each variant runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (every buffer larger
than 64 KiB is its own mapping, returned to the OS when freed, so the resident set follows the live tensors), its
lengths shortest first, after one warm-up call at the shortest. After building a point's inputs the process reads
its current RSS, resets its peak RSS (``/proc/self/clear_refs``; where that is not allowed, every point gets its own
process), runs the call once and reports the peak (VmHWM) − that RSS: the extra memory the call needed at its peak.
On CUDA: ``max_memory_allocated`` minus the memory allocated before the call. Time: median of 3 further calls (1
when a call takes over 2 s), wall clock (``ms``) and the process's CPU time (``cpu_ms``; with one thread on a CPU
the slopes use it: other load on the machine inflates wall time, not CPU time); a call over ``--limit`` seconds
ends the variant. Slopes: least-squares fit of log(value) on log(L) over L ≥ 512 (below that, constant overheads
dominate).

JSON (``--json``, written atomically): ``{"device", "threads", "torch", "load_before", "load_after" (1-minute load
averages), "lengths", "max_length" {variant: L}, "time_slope_clock" ("cpu_ms" or "ms"), "rows": [{"variant", "L",
"peak_mb", "ms", "cpu_ms", "input_mb"}], "skipped": [{"variant", "L", "reason"}], "slopes": {variant: {"memory",
"time", "wall_time", ["memory_with_input"], "lengths"}}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("full", "lsh", "sparse_strided", "sparse_fixed", "window")  # physics_tf.nn.efficient.KINDS
SCORES = ("scaled_dot", "dot", "general", "additive", "cosine", "location")  # physics_tf.nn.scores.SCORES
VARIANTS = ("naive", "sdpa_bias_mask", *KINDS, "latent", *(f"score_{s}" for s in SCORES),
            "auger_window", "auger_perceiver")
# the longest L run per variant: O(L²) memory (naive, bias, explicit logits) or O(L²) time at a whole layer's cost
MAX_LENGTH = {"naive": 4096, "sdpa_bias_mask": 4096, "score_additive": 1024, "score_location": 4096,
              **{f"score_{s}": 4096 for s in ("scaled_dot", "dot", "general", "cosine")}}
B, H, D_HEAD = 1, 8, 16


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (VmHWM) to its current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def build(variant: str, length: int, device: str):
    """(callable running the variant once, MB of inputs counted apart)."""
    import torch

    from physics_tf.nn.attention import attention, attention_mask

    mask = torch.ones(B, length, dtype=torch.bool, device=device)
    mask[:, -length // 8:] = False  # some padding
    if variant in ("naive", "sdpa_bias_mask", *KINDS):
        q, k, v = (torch.randn(B, H, length, D_HEAD, device=device) for _ in range(3))
        if variant == "naive":
            def fn():
                w = (q @ k.transpose(-1, -2) / math.sqrt(D_HEAD)).masked_fill(~mask[:, None, None, :], float("-inf"))
                return w.softmax(-1) @ v
            return fn, 0.0
        if variant == "sdpa_bias_mask":
            am = attention_mask(mask, torch.randn(B, H, length, length, device=device))
            return (lambda: attention(q, k, v, am)), am.numel() * am.element_size() / 2**20
        from physics_tf.nn.efficient import efficient_attention

        return (lambda: efficient_attention(variant, q, k, v, mask)), 0.0
    if variant.startswith("auger_"):
        from physics_tf.auger.transformer import (
            PerceiverTemporalEncoder,
            TemporalEncoder,
        )

        enc = (TemporalEncoder() if variant == "auger_window" else PerceiverTemporalEncoder()).to(device).eval()
        trace = torch.randn(1, length, device=device)
        return (lambda: enc(trace)), 0.0
    x = torch.randn(B, length, H * D_HEAD, device=device)
    if variant == "latent":
        from physics_tf.nn.efficient import LatentEncoder

        enc = LatentEncoder(H * D_HEAD, H, num_latents=64, depth=1).to(device).eval()
        return (lambda: enc(x, mask)), 0.0
    from physics_tf.nn.attention import MultiheadAttention

    score = variant.removeprefix("score_")
    options = {"max_len": length} if score == "location" else {}
    layer = MultiheadAttention(H * D_HEAD, H, score=score, **options).to(device).eval()  # C1's score=
    am = attention_mask(mask)
    return (lambda: layer(x, attn_mask=am)), 0.0


def point(variant: str, length: int, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    cuda = device == "cuda"
    fn, inputs_mb = build(variant, length, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        else:
            before = rss_mb()
            reset_peak_rss()
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
        times, cpu = [], []
        for _ in range(1 if first > 2.0 else 3):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"variant": variant, "L": length, "peak_mb": max(peak - before, 0.0), "ms": 1e3 * statistics.median(times),
            "cpu_ms": 1e3 * statistics.median(cpu), "input_mb": inputs_mb}


def run_points(variant: str, lengths: list[int], device: str, limit_s: float) -> None:
    """Child process: the points of one variant, shortest L first, one ``RESULT {json}`` line each; a point that
    fails or a call over ``limit_s`` ends the variant (``SKIP {json}``)."""
    import gc

    import torch

    try:  # warm-up at the shortest L: one-time costs (kernel set-up, thread pools) stay out of the first point
        with torch.inference_mode():
            build(variant, lengths[0], device)[0]()
    except Exception:  # noqa: BLE001, S110 - the first point reports the error
        pass
    for length in lengths:
        try:
            row = point(variant, length, device)
        except Exception as err:  # noqa: BLE001 - e.g. a score C1 does not offer yet, out of memory: reported
            print("SKIP " + json.dumps({"variant": variant, "L": length, "reason": f"{type(err).__name__}: "
                                        f"{str(err).splitlines()[0][:200] if str(err) else ''}"}), flush=True)
            return
        print("RESULT " + json.dumps(row), flush=True)
        gc.collect()
        if row["ms"] > 1e3 * limit_s:
            if length != lengths[-1]:
                print("SKIP " + json.dumps({"variant": variant, "L": lengths[lengths.index(length) + 1],
                                            "reason": f"a call took over {limit_s:.0f} s at L = {length}"}))
            return


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def slopes_of(rows: list[dict], variants: list[str], clock: str) -> dict:
    """Per variant: slopes of memory and time (``clock``: "cpu_ms" or "ms") over L ≥ 512, and of wall time."""
    out = {}
    for variant in variants:
        pts = [r for r in rows if r["variant"] == variant and r["L"] >= 512]
        if len(pts) < 2:
            continue
        ls = [r["L"] for r in pts]
        out[variant] = {"memory": slope(ls, [r["peak_mb"] for r in pts]), "time": slope(ls, [r[clock] for r in pts]),
                        "wall_time": slope(ls, [r["ms"] for r in pts]), "lengths": ls}
        if any(r["input_mb"] for r in pts):
            out[variant]["memory_with_input"] = slope(ls, [r["peak_mb"] + r["input_mb"] for r in pts])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--limit", type=float, default=20.0, help="seconds per call after which longer L are skipped")
    p.add_argument("--json", default=None)
    p.add_argument("--points", nargs="+", metavar="VARIANT L", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.points:
        import torch

        torch.set_num_threads(a.threads)
        run_points(a.points[0], [int(x) for x in a.points[1:]], a.device, a.limit)
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    # one process per variant where the peak RSS can be reset between points, else one per point
    together = a.device == "cuda" or reset_peak_rss()
    load_before = os.getloadavg()[0]
    rows, skipped = [], []
    for variant in a.variants:
        lengths = sorted(x for x in a.lengths if x <= MAX_LENGTH.get(variant, math.inf))
        for group in [lengths] if together else [[x] for x in lengths]:
            cmd = [sys.executable, __file__, "--threads", str(a.threads), "--device", a.device, "--limit",
                   str(a.limit), "--points", variant, *map(str, group)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            done = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            rows += done
            skip = [json.loads(ln[5:]) for ln in proc.stdout.splitlines() if ln.startswith("SKIP ")]
            if not skip and len(done) < len(group):  # killed (e.g. out of memory)
                reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:300]
                skip = [{"variant": variant, "L": group[len(done)], "reason": reason}]
            if skip:
                skipped += skip
                print(f"skipped {variant} from L={skip[0]['L']}: {skip[0]['reason']}", file=sys.stderr)
                break
    # one thread on a CPU: the process's CPU time, which other load on the machine does not inflate
    clock = "cpu_ms" if a.device == "cpu" and a.threads == 1 else "ms"
    slopes = slopes_of(rows, a.variants, clock)
    print(f"device {a.device}, threads {a.threads}, load {load_before:.1f} → {os.getloadavg()[0]:.1f}; "
          "peak = extra memory of one call beyond its inputs")
    print(f"{'variant':<20}{'L':>7}{'peak MB':>10}{'wall ms':>11}{'CPU ms':>11}{'input MB':>10}")
    for r in rows:
        print(f"{r['variant']:<20}{r['L']:>7}{r['peak_mb']:>10.1f}{r['ms']:>11.2f}{r['cpu_ms']:>11.2f}"
              f"{r['input_mb']:>10.1f}")
    print(f"log-log slopes over L >= 512 (2 = quadratic, 1.5 = L√L, 1 = linear; time from {clock}):")
    for variant, s in slopes.items():
        extra = f", memory incl. the bias input {s['memory_with_input']:.2f}" if "memory_with_input" in s else ""
        print(f"  {variant:<20} memory {s['memory']:.2f}, time {s['time']:.2f} (L {s['lengths'][0]}…"
              f"{s['lengths'][-1]}){extra}")
    if a.json:
        import torch

        from physics_tf.data.atomic import atomic_path

        report = {"device": a.device, "threads": a.threads, "torch": torch.__version__, "load_before": load_before,
                  "load_after": os.getloadavg()[0], "lengths": a.lengths, "time_slope_clock": clock,
                  "max_length": {v: MAX_LENGTH[v] for v in a.variants if v in MAX_LENGTH}, "rows": rows,
                  "skipped": skipped, "slopes": slopes}
        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
