"""Auger SD models: parameters, training throughput and peak memory of the baseline (LSTM + hexagonal
convolutions) and the spatial-plus-temporal transformer; temporal attention memory vs trace length; a training
race of the two side by side (the published claim: the transformer reaches the baseline's best validation loss
in half the baseline's time); and, given two pipeline runs, the same claim from their logs. Longer than 400 lines
because the four share the model specs, batches, timers and memory probes (auger_kinds.py reuses them too).

    python benchmarks/bench_auger.py --threads 1 [--batch 32] [--steps 3] [--lengths 120 240 480 960]
    python benchmarks/bench_auger.py --threads 1 --parts race [--race-train 8000 --race-epochs 6] --json F
    python benchmarks/bench_auger.py --runs RUN_DIR_TRANSFORMER RUN_DIR_BASELINE   # adds the claim from two runs

Models are ``conf/model/*.yaml`` (``--models``): ``baseline``, ``transformer``, ``perceiver`` or
``LABEL=NAME:key=value,key=value`` (a config with overrides, e.g. ``p20=transformer:patch=20``).

Method
------
* Events come from :class:`physics_tf.auger.simulate.AugerSimulator` (9×9 stations; no files needed), batched by
  :func:`physics_tf.auger.data.to_batch` exactly as in training.
* Throughput (``throughput``): median time (:func:`timer`: the process's CPU time on a CPU, wall time on CUDA) of
  a full training step (forward, MSE loss, backward, AdamW step) over ``--steps`` repeats after one warm-up, the
  models alternating in one run (the machine may be shared: compare the ratio, not the absolute figures).
* Peak memory: each point runs in a fresh subprocess; it builds model and batch, runs a warm-up step, resets the
  process's peak RSS (``/proc/self/clear_refs``), runs the step and reports the peak (``VmHWM``) − the RSS before
  it: the extra memory of the step (activations, gradients, attention matrices). The child runs with a fixed glibc
  ``MALLOC_MMAP_THRESHOLD_`` so large tensors are ``mmap``-ed and returned when freed and the RSS peak follows
  the live tensors. On CUDA ``torch.cuda.max_memory_allocated`` is used instead.
* Temporal attention vs trace length L (``lengths``; one station encoder, 64 stations, forward + backward):
  *naive* — one attention layer over the L bins, softmax(QKᵀ/√d)V written out; *window* — the patch + windowed
  encoder; *perceiver* — the latent-array encoder. Attention-score elements (counted at
  ``scaled_dot_product_attention``; analytic L² for the naive layer), peak memory, log-log slope vs L.
* Race (``race``): ``--race-train`` simulated training events (random 180° rotation / mirror per event, as the data
  module's augmentation), ``--race-val`` validation events; every model gets the same batches in the same order,
  AdamW (lr ``--lr``, weight decay 0.01 without norms / biases, 5 % linear warm-up, cosine decay to 1 %: the tasks'
  optimiser), the same number of epochs; the models take turns step by step, so each one's clock runs under the
  same machine load. The clock is the summed CPU time of the process (``time.process_time``: with ``--threads 1``
  the wall time a quiet machine would take; other jobs on a shared machine do not count) of its training steps —
  batch preparation and validation are not counted; on CUDA the synchronised wall time.
  Validation loss (MSE of the standardised X_max) ``--race-evals`` times per epoch. The claim: the first clock
  reading at which each model's validation loss is ≤ the baseline's best, divided by the baseline's clock at its
  best.
* Claim from two runs (``--runs``): each run's ``csv/metrics.csv`` validation loss per epoch; time to the
  baseline's best = (steps needed) × (seconds per step measured here).

JSON (``--json``): ``{"command", "load_average": {"before", "after"}, "threads", "device", "torch", "batch",
"throughput": {model: {"params", "train_events_per_s", "peak_mb"}}, "speed_ratio": {model: events/s ÷ baseline's},
"lengths": {kind: [{"length", "elements", "peak_mb"}]}, "slopes": {kind: {"elements", "peak_mb"}},
"race": {"train_events", "val_events", "epochs", "batch", "lr", "target_val_loss", "models": {model: {"params",
"events_per_s", "best_val_loss", "best_val_resolution", "seconds_to_target", "steps_to_target",
"curve": [[step, seconds, val_loss, val_resolution_g_cm2], …]}}, "time_to_target_ratio": {model: its seconds ÷
the baseline's}, "events_per_s_ratio": {model: …}}}`` (the parts not run are absent).
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

from physics_tf.auger.data import augment_events, to_batch  # noqa: E402
from physics_tf.auger.simulate import AugerSimulator, SimConfig  # noqa: E402
from physics_tf.auger.transformer import PerceiverTemporalEncoder, TemporalEncoder  # noqa: E402
from physics_tf.tasks.optim import parameter_groups  # noqa: E402
from physics_tf.tasks.schedulers import build_warmup_decay_scheduler  # noqa: E402

MODELS = {"baseline": "auger_hexconv", "transformer": "auger_transformer", "perceiver": "auger_perceiver"}
INPUTS = ("traces", "times", "signals", "positions", "mask")
NORM = {"xmax": (750.0, 70.0), "lna": (2.0, 1.6)}  # the data module's default target standardisation


def load_model_cfg(name: str):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    base = [d for d in cfg.pop("defaults", []) if isinstance(d, str)]
    for parent in base:  # one level of defaults (auger_perceiver extends auger_transformer)
        cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / f"{parent}.yaml"), cfg)
    return cfg


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """``"baseline"`` or ``"LABEL=NAME:k=v,k2=v2"`` → (label, model name in MODELS, overrides)."""
    label, _, rest = spec.partition("=") if "=" in spec.split(":")[0] else (spec, "", spec)
    name, _, dots = rest.partition(":")
    if name not in MODELS:
        raise SystemExit(f"bench_auger: error: model {name!r} (in {spec!r}): expected one of {sorted(MODELS)}")
    return label, name, OmegaConf.to_container(OmegaConf.from_dotlist(dots.split(",") if dots else []))


def build(name: str, n_bins: int = 120, num_targets: int = 1, overrides: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = OmegaConf.merge(load_model_cfg(MODELS[name]), overrides or {})
    return instantiate(cfg, grid_size=9, n_bins=n_bins, num_targets=num_targets)


def simulate(n: int, n_bins: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    return AugerSimulator(SimConfig(n_bins=n_bins)).simulate(n, np.random.default_rng(seed))


def make_batch(batch: int, n_bins: int = 120, seed: int = 0, device: str = "cpu"):
    return {k: v.to(device) for k, v in to_batch(simulate(batch, n_bins, seed), ["xmax"], NORM).items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timer(device: str) -> float:
    """The process's CPU time on a CPU (with one thread the wall time of a quiet machine; a shared machine's other
    jobs do not count), the wall time on CUDA (after :func:`sync`)."""
    return time.perf_counter() if device.startswith("cuda") else time.process_time()


def train_step(net, opt, b, sched=None):
    out = net(**{k: b[k] for k in INPUTS})
    loss = (out[:, : b["y"].shape[1]] - b["y"]).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra(fn, device: str = "cpu") -> float:
    """MB of memory ``fn`` needed at its peak (see the module docstring)."""
    if device.startswith("cuda"):
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
    dev = args.device
    if args.child == "model":
        label, name, overrides = parse_spec(args.model)
        net = build(name, args.n_bins, overrides=overrides).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        b = make_batch(args.batch, args.n_bins, device=dev)
        train_step(net, opt, b)  # warm-up: optimizer state and allocator pools exist before measuring
        mb = peak_extra(lambda: (train_step(net, opt, b), sync(dev)), dev)
        print(json.dumps({"peak_mb": mb}))
        return
    enc = temporal_encoder(args.kind).to(dev)
    x = torch.rand(args.stations, args.length, device=dev)
    elements = attention_elements(args.kind, enc, x)
    enc(torch.rand(2, x.shape[1], device=dev)).sum().backward()  # warm-up: one-time set-up is not counted
    enc.zero_grad(set_to_none=True)
    mb = peak_extra(lambda: (enc(x).sum().backward(), sync(dev)), dev)
    print(json.dumps({"peak_mb": mb, "elements": elements}))


def run_child(*extra: str) -> dict:
    # a fixed mmap threshold: glibc then maps every large tensor and unmaps it when freed (no dynamic threshold
    # that would keep freed blocks on the heap), so the RSS peak follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_peak_mb(spec: str, batch: int, threads: int, device: str, n_bins: int = 120) -> float:
    return run_child("--child", "model", "--model", spec, "--batch", str(batch), "--threads", str(threads),
                     "--device", device, "--n-bins", str(n_bins))["peak_mb"]


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


# ---------------------------------------------------------------------------------------------- the race
def evaluate(net, batches, device: str) -> tuple[float, list[float]]:
    """(mean validation MSE of the standardised targets, resolution (std of the residual) per target in the
    targets' units)."""
    net.eval()
    res, sq = [], []
    with torch.no_grad():
        for b in batches:
            out = net(**{k: b[k].to(device) for k in INPUTS}).float().cpu()[:, : b["y"].shape[1]]
            res.append(out - b["y"])
    net.train()
    r = torch.cat(res)  # (N, K), standardised units
    return float(r.square().mean()), [float(r[:, k].std()) for k in range(r.shape[1])]


def race(nets: dict, train: dict, val: dict, *, targets=("xmax",), epochs: int = 6, batch: int = 64,
         lr: float = 1e-3, evals_per_epoch: int = 4, seed: int = 0, device: str = "cpu", log=print) -> dict:
    """Train ``nets`` (label → network) side by side on the same batches (module docstring, Race); returns
    {label: {"params", "events_per_s", "curve": [[step, seconds, val_loss, *val_resolution per target]], …}}."""
    n = len(train["xmax"])
    steps_per_epoch = n // batch
    total = epochs * steps_per_epoch
    scale = [NORM[t][1] for t in targets]
    val_batches = [to_batch({k: v[i: i + 256] for k, v in val.items()}, list(targets), NORM)
                   for i in range(0, len(val["xmax"]), 256)]
    opt, sched, clock, curve = {}, {}, {}, {}
    for label, net in nets.items():
        net.to(device).train()
        opt[label] = torch.optim.AdamW(parameter_groups(net, lr, 0.01), lr=lr)
        sched[label] = build_warmup_decay_scheduler(opt[label], round(0.05 * total), total, "cosine", 0.01)
        clock[label], curve[label] = 0.0, []
    rng = np.random.default_rng(seed)
    every = max(1, steps_per_epoch // evals_per_epoch)
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(steps_per_epoch):
            idx = np.sort(perm[i * batch: (i + 1) * batch])
            b = to_batch(augment_events({k: v[idx] for k, v in train.items()}, rng), list(targets), NORM)
            b = {k: v.to(device) for k, v in b.items()}
            for label, net in nets.items():  # take turns: the same load for every model
                sync(device)
                t0 = timer(device)
                train_step(net, opt[label], b, sched[label])
                sync(device)
                clock[label] += timer(device) - t0
            step += 1
            if step % every == 0 or step == total:
                for label, net in nets.items():
                    loss, resolution = evaluate(net, val_batches, device)
                    curve[label].append([step, round(clock[label], 3), loss,
                                         *(round(r * s, 3) for r, s in zip(resolution, scale))])
                log(f"  step {step}/{total}: " + ", ".join(
                    f"{lb} {c[-1][2]:.4f} ({c[-1][1]:.0f} s)" for lb, c in curve.items()))
    return {label: {"params": sum(p.numel() for p in nets[label].parameters()),
                    "events_per_s": step * batch / clock[label], "curve": curve[label]} for label in nets}


def time_to(curve: list, target: float) -> tuple[float | None, int | None]:
    """(seconds, step) of the first validation with loss ≤ target; (None, None) if never (JSON null)."""
    hit = next((row for row in curve if row[2] <= target), None)
    return (hit[1], hit[0]) if hit else (None, None)


def race_claim(result: dict, reference: str = "baseline") -> dict:
    """Adds best losses and times to the reference's best validation loss (module docstring) to ``result``."""
    target = min(row[2] for row in result[reference]["curve"])
    ref_seconds, _ = time_to(result[reference]["curve"], target)
    for r in result.values():
        best = min(r["curve"], key=lambda row: row[2])
        r["best_val_loss"], r["best_val_resolution"] = best[2], best[3]
        r["seconds_to_target"], r["steps_to_target"] = time_to(r["curve"], target)
    return {"target_val_loss": target, "models": result,
            "time_to_target_ratio": {k: None if r["seconds_to_target"] is None else r["seconds_to_target"] / ref_seconds
                                     for k, r in result.items()},
            "events_per_s_ratio": {k: r["events_per_s"] / result[reference]["events_per_s"] for k, r in result.items()}}


# ---------------------------------------------------------------------------------------------- claim from runs
def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(global step, val/loss) per validation, from the run's CSV logger."""
    files = sorted(Path(run_dir).glob("**/metrics.csv"))
    if not files:
        sys.exit(f"{run_dir}: no csv/metrics.csv (train with logger=csv)")
    rows = list(csv.DictReader(open(files[-1])))
    return [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]


def claim(runs: list[str], sec_per_step: dict[str, float]) -> None:
    curves = {"transformer": val_curve(Path(runs[0])), "baseline": val_curve(Path(runs[1]))}
    target = min(v for _, v in curves["baseline"])
    print(f"\nClaim from runs (transformer {runs[0]}, baseline {runs[1]}): target = baseline's best {target:.4f}")
    for name, curve in curves.items():
        reached = [s for s, v in curve if v <= target]
        t = reached[0] * sec_per_step[name] if reached else float("nan")
        print(f"  {name:<12} best val/loss {min(v for _, v in curve):.4f}; reaches the target at step "
              f"{reached[0] if reached else '—'} ≈ {t / 60:.1f} min at this machine's step time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["throughput", "lengths", "race"], default=["throughput", "lengths"])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="throughput / race models (module docstring)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="+", default=[120, 240, 480, 960])
    p.add_argument("--stations", type=int, default=64, help="stations per temporal-attention point")
    p.add_argument("--race-train", type=int, default=8000)
    p.add_argument("--race-val", type=int, default=1000)
    p.add_argument("--race-epochs", type=int, default=6)
    p.add_argument("--race-evals", type=int, default=4, help="validations per epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--runs", nargs=2, metavar=("TRANSFORMER_RUN", "BASELINE_RUN"))
    p.add_argument("--child", choices=["model", "temporal"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n-bins", type=int, default=120, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_auger: error: --device cuda: no CUDA device available")
    if a.child:
        return child(a)
    torch.set_num_threads(a.threads)
    dev = a.device
    specs = {parse_spec(s)[0]: s for s in a.models}
    if "baseline" not in specs:
        sys.exit("bench_auger: error: --models: the ratios need 'baseline'")
    out = {"command": " ".join(sys.argv), "load_average": {"before": [round(x, 2) for x in os.getloadavg()]},
           "threads": a.threads, "device": dev, "torch": torch.__version__, "batch": a.batch}
    if "throughput" in a.parts or a.runs:
        print(f"torch {torch.__version__}, threads {a.threads}, batch {a.batch} events of 9×9 stations × 120 bins")
        nets = {lb: build(*parse_spec(s)[1:2], overrides=parse_spec(s)[2]).to(dev) for lb, s in specs.items()}
        opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in nets.items()}
        b = make_batch(a.batch, device=dev)
        times: dict[str, list[float]] = {n: [] for n in nets}
        for n in nets:
            train_step(nets[n], opts[n], b)  # warm-up
        for _ in range(a.steps):
            for n in nets:  # alternate the models
                sync(dev)
                t0 = timer(dev)
                train_step(nets[n], opts[n], b)
                sync(dev)
                times[n].append(timer(dev) - t0)
        sec = {n: statistics.median(v) for n, v in times.items()}
        out["throughput"] = {n: {"params": sum(p.numel() for p in m.parameters()),
                                 "train_events_per_s": a.batch / sec[n],
                                 "peak_mb": model_peak_mb(specs[n], a.batch, a.threads, dev)} for n, m in nets.items()}
        out["speed_ratio"] = {n: sec["baseline"] / sec[n] for n in nets}
        print(f"\n{'model':<14}{'params':>11}{'train events/s':>16}{'× baseline':>12}{'peak MB/step':>14}")
        for n, r in out["throughput"].items():
            print(f"{n:<14}{r['params']:>11,}{r['train_events_per_s']:>16.1f}{out['speed_ratio'][n]:>12.2f}"
                  f"{r['peak_mb']:>14.0f}")
        if a.runs:
            claim(a.runs, sec)
    if "lengths" in a.parts:
        print(f"\nTemporal attention vs trace length ({a.stations} stations, forward + backward, one encoder)")
        res: dict[str, list[dict]] = {k: [] for k in ("naive", "window", "perceiver")}
        for length in a.lengths:
            for kind in res:
                r = run_child("--child", "temporal", "--kind", kind, "--length", str(length), "--stations",
                              str(a.stations), "--threads", str(a.threads), "--device", dev)
                res[kind].append({"length": length, **r})
            print(f"{length:>6}" + "".join(f"{res[k][-1]['elements']:>15,}{res[k][-1]['peak_mb']:>10.1f} MB"
                                           for k in res))
        out["lengths"] = res
        out["slopes"] = {k: {"elements": slope(a.lengths, [r["elements"] for r in rs]),
                             "peak_mb": slope(a.lengths, [r["peak_mb"] for r in rs])} for k, rs in res.items()}
        print("slopes vs L (elements, memory): " + ", ".join(
            f"{k} {s['elements']:.2f} / {s['peak_mb']:.2f}" for k, s in out["slopes"].items()))
    if "race" in a.parts:
        print(f"\nRace: {a.race_train} training events × {a.race_epochs} epochs, batch 64, {a.race_val} validation")
        train, val = simulate(a.race_train, seed=1), simulate(a.race_val, seed=2)
        nets = {lb: build(*parse_spec(s)[1:2], overrides=parse_spec(s)[2]) for lb, s in specs.items()}
        result = race(nets, train, val, epochs=a.race_epochs, lr=a.lr, evals_per_epoch=a.race_evals, device=dev)
        out["race"] = {"train_events": a.race_train, "val_events": a.race_val, "epochs": a.race_epochs,
                       "batch": 64, "lr": a.lr, **race_claim(result)}
        for n, r in out["race"]["models"].items():
            ratio = out["race"]["time_to_target_ratio"][n]
            print(f"  {n:<14} {r['events_per_s']:8.1f} events/s ({out['race']['events_per_s_ratio'][n]:.2f}×), best "
                  f"val loss {r['best_val_loss']:.4f} ({r['best_val_resolution']:.1f} g/cm²), time to the baseline's "
                  + (f"best {r['seconds_to_target']:.0f} s ({ratio:.2f}×)" if ratio is not None else "best: never"))
    out["load_average"]["after"] = [round(x, 2) for x in os.getloadavg()]
    if a.json:
        from physics_tf.data.atomic import atomic_path

        with atomic_path(a.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
