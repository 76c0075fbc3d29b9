"""Auger SD models: parameters, training throughput and peak memory of the baseline (LSTM + hexagonal
convolutions) and the spatial-plus-temporal transformer; temporal attention memory vs trace length; and, given
two training runs, the "seed's claim" figures (parameter ratio, training time to the same validation loss,
resolution).

    python benchmarks/bench_auger.py [--batch 32] [--steps 3] [--lengths 120 240 480 960]
    python benchmarks/bench_auger.py --runs RUN_DIR_TRANSFORMER RUN_DIR_BASELINE   # adds the claim table

Method
------
* Events come from :class:`physics_tf.auger.simulate.AugerSimulator` (9×9 stations; no files needed), batched
  by :func:`physics_tf.auger.data.to_batch` exactly as in training. Models are built from ``conf/model/*.yaml``.
* Throughput: median wall time of a full training step (forward, MSE loss, backward, AdamW step) over
  ``--steps`` repeats after one warm-up, the models alternating in one run (the machine may be shared: compare
  the ratio, not the absolute figures).
* Peak memory: each point runs in a fresh subprocess; it builds model and batch, resets the process's peak
  RSS (``/proc/self/clear_refs``), reads its resident set size (``/proc/self/statm``), runs the step, and reports
  the peak (``VmHWM``) − that RSS: the extra memory the step needed at
  its peak (activations, gradients, attention matrices), after a warm-up step so one-time library set-up is not
  counted; the child runs with a fixed glibc ``MALLOC_MMAP_THRESHOLD_`` so large tensors are ``mmap``-ed and
  returned when freed and the RSS peak follows the live tensors. On CUDA ``torch.cuda.max_memory_allocated`` is used instead.
* Temporal attention vs trace length L (one station encoder, 64 stations, forward + backward): *naive* — one
  attention layer over the L bins, softmax(QKᵀ/√d)V written out (B·H·L² scores); *window* — our patch + windowed
  encoder (:class:`~physics_tf.auger.transformer.TemporalEncoder`); *perceiver* — the latent-array
  encoder. Reported: attention-score elements (counted at ``scaled_dot_product_attention``; analytic L² for the
  naive layer), peak memory, and the log-log slope of memory vs L (2 = quadratic, 1 = linear).
* Claim (``--runs``): from each run's ``csv/metrics.csv`` the validation loss per epoch; the training time to
  reach the baseline's best validation loss is (steps needed) × (seconds per step measured here).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from physics_tf.auger.data import to_batch  # noqa: E402
from physics_tf.auger.simulate import AugerSimulator, SimConfig  # noqa: E402
from physics_tf.auger.transformer import PerceiverTemporalEncoder, TemporalEncoder  # noqa: E402

MODELS = {"baseline": "auger_hexconv", "transformer": "auger_transformer", "perceiver": "auger_perceiver"}
INPUTS = ("traces", "times", "signals", "positions", "mask")


def load_model_cfg(name: str):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    base = [d for d in cfg.pop("defaults", []) if isinstance(d, str)]
    for parent in base:  # one level of defaults (auger_perceiver extends auger_transformer)
        cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / f"{parent}.yaml"), cfg)
    return cfg


def build(name: str, n_bins: int = 120):
    torch.manual_seed(0)
    return instantiate(load_model_cfg(MODELS[name]), grid_size=9, n_bins=n_bins, num_targets=1)


def make_batch(batch: int, n_bins: int = 120, seed: int = 0):
    ev = AugerSimulator(SimConfig(n_bins=n_bins)).simulate(batch, np.random.default_rng(seed))
    return to_batch(ev, ["xmax"], {"xmax": (750.0, 70.0)})


def train_step(net, opt, b):
    out = net(**{k: b[k] for k in INPUTS})
    loss = (out[:, 0] - b["y"][:, 0]).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra(fn) -> float:
    """MB of memory ``fn`` needed at its peak (see the module docstring)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as fh:  # Linux ≥ 4.0: reset the peak RSS (VmHWM) to the current RSS
        fh.write("5")
    before = rss_bytes()
    fn()
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024
    return (hwm - before) / 2**20


# ---------------------------------------------------------------------------------------------- child points
class NaiveTemporal(torch.nn.Module):
    """One attention layer over every trace bin, scores written out: the O(L²) reference."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.embed = torch.nn.Linear(1, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        n, t = x.shape
        h = self.embed(x.unsqueeze(-1))  # (N, L, D)
        q, k, v = self.qkv(h).view(n, t, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)  # (N, H, L, L)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, self.dim)).mean(1)  # (N, D)


def temporal_encoder(kind: str):
    torch.manual_seed(0)
    if kind == "naive":
        return NaiveTemporal()
    if kind == "window":
        return TemporalEncoder(patch=10, dim=64, num_heads=4, depth=2, window=12)
    return PerceiverTemporalEncoder(patch=4, dim=64, num_heads=4, depth=2, latents=16)


def attention_elements(kind: str, enc, x) -> int:
    if kind == "naive":
        return x.shape[0] * enc.heads * x.shape[1] ** 2
    import torch.nn.functional as F

    total = [0]
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *a, **kw):
        total[0] += q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
        return sdpa(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = counting
    try:
        with torch.no_grad():
            enc(x)
    finally:
        F.scaled_dot_product_attention = sdpa
    return total[0]


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.child == "model":
        net = build(args.model)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        b = make_batch(args.batch)
        train_step(net, opt, b)  # warm-up: optimizer state and allocator pools exist before measuring
        mb = peak_extra(lambda: train_step(net, opt, b))
        print(json.dumps({"peak_mb": mb}))
        return
    enc = temporal_encoder(args.kind)
    x = torch.rand(args.stations, args.length)
    elements = attention_elements(args.kind, enc, x)

    def step():
        enc(x).sum().backward()

    enc(torch.rand(2, x.shape[1])).sum().backward()  # warm-up: one-time library set-up is not counted
    enc.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    mb = peak_extra(step)
    print(json.dumps({"peak_mb": mb, "elements": elements, "seconds": time.perf_counter() - t0}))


def run_child(*extra: str) -> dict:
    # a fixed mmap threshold: glibc then maps every large tensor and unmaps it when freed (no dynamic threshold
    # that would keep freed blocks on the heap), so the RSS peak follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


# ---------------------------------------------------------------------------------------------- claim from runs
def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(global step, val/loss) per validation, from the run's CSV logger."""
    files = sorted(Path(run_dir).glob("**/metrics.csv"))
    if not files:
        sys.exit(f"{run_dir}: no csv/metrics.csv (train with logger=csv)")
    rows = list(csv.DictReader(open(files[-1])))
    return [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]


def test_resolution(run_dir: Path) -> float:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text())["xmax"]["resolution"] if path.is_file() else float("nan")


def claim(runs: list[str], sec_per_step: dict[str, float], params: dict[str, int]) -> None:
    curves = {"transformer": val_curve(Path(runs[0])), "baseline": val_curve(Path(runs[1]))}
    target = min(v for _, v in curves["baseline"])
    print(f"\nClaim check (runs: transformer {runs[0]}, baseline {runs[1]})")
    print(f"  parameters transformer / baseline: {params['transformer'] / params['baseline']:.2f}×")
    print(f"  target = baseline's best val/loss {target:.4f}")
    for name, curve in curves.items():
        reached = [s for s, v in curve if v <= target]
        t = reached[0] * sec_per_step[name] if reached else float("nan")
        print(f"  {name:<12} best val/loss {min(v for _, v in curve):.4f}; reaches target at step "
              f"{reached[0] if reached else '—'} ≈ {t / 60:.1f} min at this machine's step time"
              + ("" if reached else " (never)"))
    print(f"  test X_max resolution: transformer {test_resolution(Path(runs[0])):.1f}, "
          f"baseline {test_resolution(Path(runs[1])):.1f} g/cm²")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="+", default=[120, 240, 480, 960])
    p.add_argument("--stations", type=int, default=64, help="stations per temporal-attention point")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--runs", nargs=2, metavar=("TRANSFORMER_RUN", "BASELINE_RUN"))
    p.add_argument("--child", choices=["model", "temporal"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {a.threads}, batch {a.batch} events of 9×9 stations × 120 bins")
    nets = {n: build(n) for n in MODELS}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in nets.items()}
    b = make_batch(a.batch)
    print(f"real stations per event: mean {b['mask'].flatten(1).sum(1).float().mean():.1f}")
    times: dict[str, list[float]] = {n: [] for n in nets}
    for n in nets:
        train_step(nets[n], opts[n], b)  # warm-up
    for _ in range(a.steps):
        for n in nets:  # alternate the models
            t0 = time.perf_counter()
            train_step(nets[n], opts[n], b)
            times[n].append(time.perf_counter() - t0)
    sec = {n: statistics.median(v) for n, v in times.items()}
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in nets.items()}
    print(f"\n{'model':<14}{'params':>11}{'train events/s':>16}{'peak MB/step':>14}")
    for n in nets:
        mem = run_child("--child", "model", "--model", n, "--batch", str(a.batch), "--threads", str(a.threads))
        print(f"{n:<14}{params[n]:>11,}{a.batch / sec[n]:>16.1f}{mem['peak_mb']:>14.0f}")
    print(f"ratios: params transformer/baseline {params['transformer'] / params['baseline']:.2f}×, "
          f"training speed transformer/baseline {sec['baseline'] / sec['transformer']:.2f}×")

    print(f"\nTemporal attention vs trace length ({a.stations} stations, forward + backward, one encoder)")
    print(f"{'L':>6}" + "".join(f"{k + ' elems':>17}{k + ' MB':>14}" for k in ("naive", "window", "perceiver")))
    res: dict[str, list[dict]] = {k: [] for k in ("naive", "window", "perceiver")}
    for length in a.lengths:
        row = f"{length:>6}"
        for kind in res:
            r = run_child("--child", "temporal", "--kind", kind, "--length", str(length), "--stations",
                          str(a.stations), "--threads", str(a.threads))
            res[kind].append(r)
            row += f"{r['elements']:>17,}{r['peak_mb']:>14.1f}"
        print(row)
    for kind, rs in res.items():
        print(f"  {kind:<10} slope vs L: attention elements {slope(a.lengths, [r['elements'] for r in rs]):.2f}, "
              f"peak memory {slope(a.lengths, [r['peak_mb'] for r in rs]):.2f}")
    last = -1
    print(f"  at L = {a.lengths[last]}: naive / window memory "
          f"{res['naive'][last]['peak_mb'] / max(res['window'][last]['peak_mb'], 1e-9):.1f}×, naive / perceiver "
          f"{res['naive'][last]['peak_mb'] / max(res['perceiver'][last]['peak_mb'], 1e-9):.1f}×")
    if a.runs:
        claim(a.runs, sec, params)


if __name__ == "__main__":
    main()
